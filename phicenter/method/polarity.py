"""Polarity relative to phi_center, and the diagnostics that say what phi did."""

from __future__ import annotations

import torch


def _below(reference: torch.Tensor, phi: float) -> torch.Tensor:
    """reference < phi, exactly. `tensor < python_float` rounds phi to the tensor's dtype first, so a
    float32 weight equal to float32(phi) < phi would count as a tie; compare against the rounded value
    with <= when rounding went down. Exact for every float dtype, on every device (no float64 needed)."""
    if not reference.is_floating_point():
        reference = reference.float()
    p = float(torch.tensor(float(phi), dtype=reference.dtype))
    return reference <= p if p < phi else reference < p


def _above(reference: torch.Tensor, phi: float) -> torch.Tensor:
    """reference > phi, exactly (see _below; negation is exact)."""
    if not reference.is_floating_point():
        reference = reference.float()
    return _below(-reference, -float(phi))


def signs(reference: torch.Tensor, phi: float) -> torch.Tensor:
    """+1 where reference > phi, -1 where reference < phi, +1 on a tie (reference == phi).

    Float +-1 of the reference's shape and dtype (float32 for integer input). phi is compared exactly,
    not after rounding it to the reference's dtype.
    """
    dtype = reference.dtype if reference.is_floating_point() else torch.float32
    one = torch.ones((), dtype=dtype, device=reference.device)
    return torch.where(_below(reference, phi), -one, one).expand(reference.shape).clone()


def dead_zone(reference: torch.Tensor, phi: float) -> torch.Tensor:
    """Bool mask of entries strictly between 0 and phi: exactly those whose sign phi can change.

    (By the tie rule one boundary value flips as well: a reference exactly at 0 when phi > 0, or exactly
    at phi when phi < 0. `flipped_by_phi` counts it; the dead zone does not.)
    """
    lo, hi = (0.0, float(phi)) if phi >= 0 else (float(phi), 0.0)
    return _above(reference, lo) & _below(reference, hi)


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


def flip_fractions(
    reference: torch.Tensor, phi: float, new_sign: torch.Tensor, init: torch.Tensor, survivors: torch.Tensor
) -> dict[str, float | int]:
    """Per-layer counts over survivors: new signs that differ from the reference's sign at 0 (the signs phi
    changed; 0 for strategies whose new sign is not signs(reference, phi)), new signs that differ from those of
    `init` (the rewind point: theta0, or theta_k under late rewinding), and dead-zone occupancy."""
    n = int(survivors.sum())
    by_phi = (new_sign != signs(reference, 0.0)) & survivors
    vs_init = (new_sign != signs(init, 0.0)) & survivors
    zone = dead_zone(reference, phi) & survivors
    return {
        "survivors": n,
        "flipped_by_phi_count": int(by_phi.sum()),
        "flipped_vs_init_count": int(vs_init.sum()),
        "dead_zone_count": int(zone.sum()),
    }
