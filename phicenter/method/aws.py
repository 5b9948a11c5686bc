"""AWS, "A Winning Sign" (Oh, Baik & Lee, 2025), in plain torch: while stage 1 trains, every batch moves each
normalisation layer towards the identity, gamma' = alpha + (1 - alpha) * gamma and beta' = (1 - alpha) * beta,
with one alpha ~ U(0, 1) per batch; the layers' own parameters are what the optimizer updates (the gradient
flows through the interpolation) and evaluation uses them as they are. See docs/method.md, "sign_transfer".
"""

from __future__ import annotations

import torch
from torch import nn

from phicenter.method import seeding

# normalisation layers: BatchNorm (and InstanceNorm) through _NormBase, LayerNorm, GroupNorm
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def affine_names(net: nn.Module) -> dict[str, str]:
    """{parameter name: "gamma" or "beta"} of every normalisation layer's affine parameters (layers without
    them are left alone)."""
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, NORMS):
            prefix = f"{name}." if name else ""
            if getattr(m, "weight", None) is not None:
                out[prefix + "weight"] = "gamma"
            if getattr(m, "bias", None) is not None:
                out[prefix + "bias"] = "beta"
    return out


def towards_identity(
    params: dict[str, torch.Tensor], names: dict[str, str], alpha, on: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The interpolated tensors of `names` (affine_names) from `params`: alpha + (1 - alpha) * gamma and
    (1 - alpha) * beta. `alpha` is a number; with `on` (a bool tensor [K]) the params are stacked along dim 0
    (K variants) and only the variants where `on` holds are moved, the others returned exactly as they are."""
    out = {}
    for name, kind in names.items():
        p = params[name]
        moved = alpha + (1.0 - alpha) * p if kind == "gamma" else (1.0 - alpha) * p
        if on is not None:
            moved = torch.where(on.to(p.device).view(-1, *([1] * (p.dim() - 1))), moved, p)
        out[name] = moved
    return out


def forward(net: nn.Module, x: torch.Tensor, alpha: float, names: dict[str, str] | None = None) -> torch.Tensor:
    """net(x) with its normalisation layers moved towards the identity by alpha (the net's own parameters are
    left untouched; gradients reach them through the interpolation)."""
    names = affine_names(net) if names is None else names
    params = dict(net.named_parameters())
    return torch.func.functional_call(net, towards_identity(params, names, alpha), (x,))


class Alphas:
    """alpha of batch i of epoch e of round r: the i-th draw of U(0, 1) from a generator seeded by
    (seed, "aws", r, e). Reproducible from the seed, the same in every process, and the same after resuming
    from an epoch checkpoint (each epoch restarts its generator)."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.g: torch.Generator | None = None

    def start(self, round_index: int, epoch: int) -> None:
        self.g = seeding.generator(self.seed, "aws", int(round_index), int(epoch))

    def next(self) -> float:
        if self.g is None:
            raise RuntimeError("Alphas.start(round, epoch) must be called before the epoch's first batch")
        return float(torch.rand((), generator=self.g, dtype=torch.float64))
