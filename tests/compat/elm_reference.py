"""ELM's sampling arithmetic, written from its code (Pepper-lll/LMforImageGeneration, llama/ar_model.py
and llama/mlm_model.py: generate_cfg, mask_by_random_topk) in its own terms (numpy float64 where it
uses numpy), independent of imagelm's: the references tests/sampling/test_conventions.py and
tests/compat/test_sample_as_originals.py compare ours with."""
import math

import numpy as np
import torch


def elm_cfg(step: int, num_iter: int, cfg_scale: float, schedule: str, scale_pow: float = 1.0) -> float:
    """The scale ELM's generate_cfg uses at `step` (its AR sampler's schedules, and its masked
    sampler's powercos), in its own arithmetic (numpy float64)."""
    ratio = 1.0 * (step + 1) / num_iter
    if schedule == "linear":
        return 1.0 + (cfg_scale - 1.0) * ratio
    if schedule == "cos":
        return 1.0 + (cfg_scale - 1.0) * np.cos(-np.pi / 2 + ratio * (np.pi / 2))
    if schedule == "log":
        return 1.0 + (cfg_scale - 1.0) * np.log1p(ratio * (np.e - 1.0)) / np.log1p(np.e - 1.0)
    if schedule == "square":
        return 1.0 + (cfg_scale - 1) * ratio ** 2
    if schedule == "square_root":
        return 1.0 + (cfg_scale - 1.0) * ((1.0 * step / num_iter) ** 0.5)
    if schedule == "powercos":
        return (cfg_scale - 1) * ((1 - np.cos((((step + 1) / num_iter) ** scale_pow) * math.pi)) * 1 / 2) + 1
    raise AssertionError(schedule)


def elm_mask_len(L: int, step: int, num_iter: int, unknown: int) -> int:
    """ELM's mask_len: floor(L * cos(pi/2 * (step+1)/num_iter)), at most unknown - 1, at least 1."""
    mask_len = np.floor(L * np.cos(math.pi / 2.0 * (1.0 * (step + 1) / num_iter)))
    return int(max(1, min(unknown - 1, mask_len)))


def elm_masking(confidence: torch.Tensor, mask_len: int) -> torch.Tensor:
    """ELM's mask_by_random_topk for one image, noise already added: confidence [L] -> masked [L]."""
    sorted_confidence, _ = torch.sort(confidence[None, :, None], axis=-2)
    cut_off = sorted_confidence[:, mask_len - 1:mask_len, :]
    return (confidence[None, :, None] <= cut_off)[0, :, 0]
