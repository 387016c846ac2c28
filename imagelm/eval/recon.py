"""Tokenizer quality: PSNR of reconstructions and codebook usage over a held-out set."""
from __future__ import annotations

import math

import torch
from tqdm import tqdm

from imagelm.data.batches import to_uint8_chw


def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two uint8 batches [B, 3, H, W] -> [B] (peak 255)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))


@torch.no_grad()
def evaluate_tokenizer(tokenizer, dataset, num_images: int | None = None, batch_size: int = 128,
                       device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Reconstruct `num_images` of `dataset` (all by default) and measure the tokenizer.

    Returns {"psnr": mean dB over images (on uint8 pixels), "usage": fraction of codebook entries
    used at least once, "perplexity": exp(entropy of code frequencies), "images": count}.
    """
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    counts = torch.zeros(tokenizer.vocab_size, dtype=torch.long)
    psnrs = []
    for start in tqdm(range(0, n, batch_size), desc="reconstruct", disable=not progress, leave=False):
        x = torch.stack([dataset[i][0] for i in range(start, min(n, start + batch_size))]).to(device)
        codes = tokenizer.encode(x)
        recon = tokenizer.decode(codes)
        psnrs.append(psnr_uint8(to_uint8_chw(x.float().cpu()), to_uint8_chw(recon.float().cpu())))
        counts += torch.bincount(codes.flatten().cpu(), minlength=tokenizer.vocab_size)
    freq = counts.float() / counts.sum()
    entropy = -(freq[freq > 0] * freq[freq > 0].log()).sum().item()
    return {"psnr": torch.cat(psnrs).mean().item(), "usage": (counts > 0).float().mean().item(),
            "perplexity": math.exp(entropy), "images": n}
