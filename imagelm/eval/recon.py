"""Tokenizer quality over a held-out set: PSNR, SSIM, rFID (FID of reconstructions against the
originals), codebook usage and perplexity."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from imagelm.data.batches import to_uint8_chw


def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two uint8 batches [B, 3, H, W] -> [B] (peak 255)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()  # [size]


def ssim_uint8(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) of two uint8 batches [B, 3, H, W] -> [B].

    Gaussian window 11 / sigma 1.5 (shrunk to the image for images under 11 pixels), K1 0.01,
    K2 0.03, peak 255, valid positions only, averaged over positions and the three channels.
    """
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"SSIM needs two batches of the same shape [B, C, H, W], got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    size = min(window, a.shape[-2], a.shape[-1])
    g = _gaussian_window(size, sigma)
    c = a.shape[1]
    kernel_h = g.view(1, 1, size, 1).repeat(c, 1, 1, 1)   # separable: a column, then a row
    kernel_w = g.view(1, 1, 1, size).repeat(c, 1, 1, 1)

    def blur(x):
        return F.conv2d(F.conv2d(x, kernel_h, groups=c), kernel_w, groups=c)

    x, y = a.double(), b.double()
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).float()


@torch.no_grad()
def evaluate_tokenizer(tokenizer, dataset, num_images: int | None = None, batch_size: int = 128,
                       device: str | torch.device = "cpu", progress: bool = True, feature_net=None) -> dict:
    """Reconstruct `num_images` of `dataset` (all by default) and measure the tokenizer.

    Returns {"psnr": mean dB over images (on uint8 pixels), "ssim": mean SSIM (uint8 pixels),
    "usage": fraction of the codebook (VQ) or of the 2^D codes (BAE) used at least once,
    "perplexity": exp(entropy of code frequencies), "images": count}, plus "rfid" (FID of
    reconstructions vs originals) when a `feature_net` (imagelm.eval.features.FeatureNet) is given,
    and "bit_balance" ([D] fraction of 1s per bit) for binary tokenizers.
    """
    from imagelm.tokenizers.bae import code_ids
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    ids, bit_sums = [], None
    psnrs, ssims, originals, recons = [], [], [], []
    for start in tqdm(range(0, n, batch_size), desc="reconstruct", disable=not progress, leave=False):
        x = torch.stack([dataset[i][0] for i in range(start, min(n, start + batch_size))]).to(device)
        codes = tokenizer.encode(x)
        recon = tokenizer.decode(codes)
        a, b = to_uint8_chw(x.float().cpu()), to_uint8_chw(recon.float().cpu())
        psnrs.append(psnr_uint8(a, b))
        ssims.append(ssim_uint8(a, b))
        ids.append(code_ids(codes.cpu()))
        if codes.dim() == 4:  # binary codes [B, h, w, D]: count the 1s of each bit
            sums = codes.reshape(-1, codes.shape[-1]).long().sum(0).cpu()
            bit_sums = sums if bit_sums is None else bit_sums + sums
        if feature_net is not None:
            originals.append(feature_net(a.permute(0, 2, 3, 1).numpy())[0])
            recons.append(feature_net(b.permute(0, 2, 3, 1).numpy())[0])
    counts = torch.unique(torch.cat(ids), return_counts=True)[1]  # occurrences of each code seen
    freq = counts.float() / counts.sum()
    entropy = -(freq * freq.log()).sum().item()
    metrics = {"psnr": torch.cat(psnrs).mean().item(), "ssim": torch.cat(ssims).mean().item(),
               "usage": len(counts) / tokenizer.vocab_size, "perplexity": math.exp(entropy), "images": n}
    if bit_sums is not None:
        metrics["bit_balance"] = (bit_sums.float() / counts.sum()).tolist()
    if feature_net is not None:
        from imagelm.eval.fid import fid
        metrics["rfid"] = fid(np.concatenate(originals), np.concatenate(recons))
    return metrics


@torch.no_grad()
def reconstruction_grid(tokenizer, images: torch.Tensor) -> torch.Tensor:
    """images [B, 3, H, W] in [-1, 1] -> [2B, 3, H, W]: each original followed by its reconstruction
    (float32, CPU), for a grid of side-by-side pairs."""
    device = next(tokenizer.parameters()).device
    x = images.to(device)
    recon = tokenizer.decode(tokenizer.encode(x))
    return torch.stack([x, recon], dim=1).flatten(0, 1).float().cpu()


def save_reconstructions(tokenizer, images: torch.Tensor, path, nrow: int = 8):
    """Write originals and reconstructions side by side (`nrow` images a row, pairs adjacent) -> path."""
    from imagelm.data.transforms import save_grid
    return save_grid(reconstruction_grid(tokenizer, images), path, nrow=nrow)


def reconstruct(tokenizer, data: str, out, num: int = 1000, split: str = "test", seed: int = 0) -> dict:
    """`imagelm reconstruct`: the metrics of `evaluate_tokenizer` over `num` images of data set `data`
    (a built-in one's `split`, or a folder) at the tokenizer's size, and out/reconstructions.png (the
    first 16: original | reconstruction) -> the metrics and "grid" (its path)."""
    from pathlib import Path

    from imagelm.data import build_dataset
    dataset = build_dataset(data, image_size=tokenizer.config.image_size, split=split, seed=seed)
    metrics = evaluate_tokenizer(tokenizer, dataset, num, device=next(tokenizer.parameters()).device)
    n_show = min(16, len(dataset))
    grid = save_reconstructions(tokenizer, torch.stack([dataset[i][0] for i in range(n_show)]),
                                Path(out) / "reconstructions.png")
    return {**metrics, "grid": grid}
