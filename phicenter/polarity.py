"""Polarity relative to phi_center, and the diagnostics that say what phi did."""
from __future__ import annotations

import torch


def signs(reference: torch.Tensor, phi: float) -> torch.Tensor:
    """+1 where reference > phi, -1 where reference < phi, +1 on a tie (reference == phi).

    Float +-1 of the reference's shape and dtype (float32 for integer input).
    """
    dtype = reference.dtype if reference.is_floating_point() else torch.float32
    one = torch.ones((), dtype=dtype, device=reference.device)
    return torch.where(reference < phi, -one, one).expand(reference.shape).clone()


def dead_zone(reference: torch.Tensor, phi: float) -> torch.Tensor:
    """Bool mask of entries strictly between 0 and phi: exactly those whose sign phi can change.

    (A reference exactly at 0 with phi > 0 also flips, by the tie rule; `flipped_by_phi` counts it.)
    """
    lo, hi = (0.0, phi) if phi >= 0 else (phi, 0.0)
    return (reference > lo) & (reference < hi)


def critical_phi(reference: torch.Tensor) -> tuple[float | None, float | None]:
    """Smallest phi > 0 and largest phi < 0 that change at least one entry's sign.

    Raising phi from 0 flips an entry when phi passes its value r >= 0 (it flips for any phi > r),
    so the positive critical value is the smallest r >= 0 -- reported as the infimum r itself
    (any phi strictly above it flips). Lowering phi below 0 flips an entry r < 0 once phi <= r,
    so the negative critical value is the largest r < 0. None when no entry lies on that side.
    """
    flat = reference.detach().flatten()
    nonneg = flat[flat >= 0]
    neg = flat[flat < 0]
    pos = float(nonneg.min()) if nonneg.numel() else None
    negv = float(neg.max()) if neg.numel() else None
    return pos, negv


def flip_fractions(reference: torch.Tensor, phi: float, new_sign: torch.Tensor,
                   theta0: torch.Tensor, survivors: torch.Tensor) -> dict[str, float | int]:
    """Per-layer counts over survivors: signs phi changed, and new signs that differ from theta0's."""
    n = int(survivors.sum())
    by_phi = (signs(reference, phi) != signs(reference, 0.0)) & survivors
    vs_init = (new_sign != signs(theta0, 0.0)) & survivors
    zone = dead_zone(reference, phi) & survivors
    return {
        "survivors": n,
        "flipped_by_phi_count": int(by_phi.sum()),
        "flipped_vs_init_count": int(vs_init.sum()),
        "dead_zone_count": int(zone.sum()),
    }
