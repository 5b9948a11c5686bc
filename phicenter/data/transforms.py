"""Per-batch transforms on uint8 images: the normalisation statistics and the augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phicenter.data.options import NORMALIZE

# torchvision's ImageNet statistics, the normalisation its pretrained weights were trained with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def statistics(x: torch.Tensor, normalize: str = "dataset") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) inputs are normalised with: those of the images x ("dataset") or ImageNet's."""
    if normalize == "imagenet":
        return torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    if normalize != "dataset":
        raise ValueError(f"dataset.normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
    return channel_stats(x)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) std of uint8 images on the 0..1 scale, exactly, from a 256-bin
    histogram per channel: no float copy of the whole dataset."""
    v = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        h = torch.bincount(x[:, c].reshape(-1).cpu(), minlength=256).double()
        n = h.sum()
        m = (h * v).sum() / n
        var = (h * (v - m) ** 2).sum() / max(float(n) - 1.0, 1.0)
        means.append(m)
        stds.append(var.sqrt())
    return torch.stack(means).float(), torch.stack(stds).clamp_min(1e-6).float()


def augment_draws(n: int, g: torch.Generator, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of augmenting a batch of n images (row offsets, column offsets, then flips), from the CPU
    generator g. Drawing them alone advances g exactly as augmenting that batch would (a skipped batch)."""
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=g)
    flip = torch.rand((n, 1), generator=g) < 0.5
    return dy, dx, flip


def augment(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, for a whole uint8 batch in one gather.
    Draws come from the CPU generator g (augment_draws), so CPU and GPU runs see the same crops."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    wp = w + 2 * pad
    dy, dx, flip = (t.to(x.device) for t in augment_draws(n, g, pad))
    rows = dy + torch.arange(h, device=x.device)
    cols = dx + torch.arange(w, device=x.device)
    cols = torch.where(flip, cols.flip(1), cols)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.view(n, c, -1).gather(2, flat).view(n, c, h, w)
