"""The error on the linear path between two networks, on plain modules: the measurement behind the error barrier
(Frankle et al. 2020's instability analysis; docs/method.md, "Instability analysis"). Plain torch: the barrier
command (phicenter.analysis.barrier) and the engine's instability copies (engine.instability) both use it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from phicenter.method import pruning


def effective_state(state: dict) -> dict[str, torch.Tensor]:
    """A phicenter net's state dict as the plain net's: a masked weight already holds its effective value
    (a pruned entry at its fill), so its mask and fill go; a state saved while masks were parametrizations is
    read in today's names first (pruning.upgrade_state). Every other entry is kept."""
    state = pruning.upgrade_state(state)
    return {k: v for k, v in state.items() if not k.endswith((pruning.MASK, pruning.FILL))}


def interpolate(a: dict, b: dict, alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b for every floating tensor; other tensors (BatchNorm's batch counter) from a."""
    return {k: torch.lerp(v, b[k].to(v.dtype), alpha) if v.is_floating_point() else v.clone() for k, v in a.items()}


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


@torch.no_grad()
def error(net: nn.Module, batches) -> float:
    """Share of misclassified examples over the batches of (x, y), in eval mode."""
    net.eval()
    wrong = total = 0
    for x, y in batches:
        wrong += int((net(x).argmax(1) != y).sum())
        total += len(y)
    if total == 0:
        raise ValueError("no examples to measure the error on")
    return wrong / total


class First:
    """The first n batches (None: all), counted as they are drawn."""

    def __init__(self, batches, n: int | None):
        self.batches, self.n, self.drawn = batches, n, 0

    def __iter__(self):
        self.drawn = 0
        for b in self.batches:
            if self.n is not None and self.drawn >= self.n:
                return
            self.drawn += 1
            yield b


@dataclass
class LinearPath:
    alphas: list[float]
    errors: list[float]
    bn_batches: int  # training batches the BatchNorm statistics were recomputed on (0: no BatchNorm)

    @property
    def ends(self) -> float:
        return (self.errors[0] + self.errors[-1]) / 2

    @property
    def barrier(self) -> float:
        return max(self.errors) - self.ends

    @property
    def worst_alpha(self) -> float:
        return self.alphas[max(range(len(self.errors)), key=self.errors.__getitem__)]

    def record(self) -> dict:
        return {
            "alphas": self.alphas,
            "errors": self.errors,
            "barrier": self.barrier,
            "ends_mean": self.ends,
            "max_error": max(self.errors),
            "worst_alpha": self.worst_alpha,
            "bn_batches": self.bn_batches,
        }


def grid(n: int) -> list[float]:
    """n evenly spaced alphas from 0 to 1, both ends included."""
    if n < 2:
        raise ValueError(f"a linear path needs at least 2 alphas (both ends), got {n}")
    return [i / (n - 1) for i in range(n)]


def linear_path(
    net: nn.Module, a: dict, b: dict, alphas, eval_batches, bn_batches=None, bn_count: int | None = None
) -> LinearPath:
    """The error of (1 - alpha) a + alpha b on `eval_batches` for each alpha. a and b are plain state dicts of
    `net`'s architecture (effective_state). With BatchNorm, each interpolated net's running statistics are
    reset and recomputed as exact averages over the first `bn_count` batches of `bn_batches` (None: all), in
    train mode (torch.optim.swa_utils.update_bn); without BatchNorm nothing is recomputed."""
    bn = has_batchnorm(net)
    if bn and bn_batches is None:
        raise ValueError("the net has BatchNorm: give training batches to recompute its statistics on")
    errors, used = [], 0
    for alpha in alphas:
        net.load_state_dict(interpolate(a, b, float(alpha)))
        if bn:
            seen = First(bn_batches, bn_count)
            torch.optim.swa_utils.update_bn(seen, net)
            used = seen.drawn
        errors.append(error(net, eval_batches))
    return LinearPath([float(x) for x in alphas], errors, used)
