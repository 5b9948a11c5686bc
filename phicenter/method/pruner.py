"""The method on any nn.Module, in plain torch: `Pruner(model, strategy=..., phi=...)`, then one `next_round()`
after each round of training. The Lightning callback (phicenter.engine.boundary.PhiCenterPruning) and the round
loop drive the same IMP underneath.

    pruner = Pruner(model, strategy="mask0", phi=5e-4)
    for r in range(pruner.iterations + 1):
        if r:
            pruner.next_round()          # prune, re-sign at phi, reinitialise; optimizer: make a fresh one
        train(model, on_step=pruner.hold)  # after loss.backward(): pruner.hold(optimizer) steps it
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable

import torch
from torch import nn

from phicenter.method import polarity, pruning, strategies, units
from phicenter.method.imp import IMP
from phicenter.method.options import IMPConfig

Selection = None | Callable[[str, nn.Module], bool] | Iterable[str]


def select_layers(model: nn.Module, parameters: Selection) -> list[str] | None:
    """The names of the Conv/Linear layers whose weights are pruned: every one (None), those a predicate
    `(module name, module) -> bool` accepts, or those named (a module name, its `.weight`, or a glob of
    either). A name that matches no prunable weight is a ValueError."""
    if parameters is None:
        return None
    layers = pruning.prunable_layers(model)
    if callable(parameters):
        chosen = [n for n, m in layers.items() if parameters(n, m)]
    else:
        if isinstance(parameters, str):
            parameters = [parameters]
        patterns = [p.removesuffix(".weight") for p in parameters]
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in layers):
                raise ValueError(
                    f"parameters: {p!r} names no Conv or Linear weight of {type(model).__name__} "
                    f"(it has {', '.join(list(layers)[:6])}{', ...' if len(layers) > 6 else ''})"
                )
        chosen = [n for n in layers if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        raise ValueError(f"parameters selects no Conv or Linear weight of {type(model).__name__}")
    return chosen


def make_imp(
    model: nn.Module,
    strategy: str = "mask0",
    phi: float = 0.0,
    *,
    base: float = 0.8,
    scope: str = "layer",
    method: str = "magnitude",
    phi_scale: str = "absolute",
    magnitude="init_std",
    output_base: float | None = None,
    conv_base: float | None = None,
    parameters: Selection = None,
    seed: int = 0,
    strategy_options: dict | None = None,
) -> IMP:
    """The IMP of `model` at its current state (theta0), every option checked (ValueError, one line)."""
    if not isinstance(strategy, str) or strategy not in strategies.STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choices: {', '.join(sorted(strategies.STRATEGIES))}")
    if strategies.STRATEGIES[strategy].transfers:
        raise ValueError(
            f"strategy {strategy} trains a second network at every round (the transfer); it runs in phicenter's "
            f"own engine: python -m phicenter.train strategy={strategy}"
        )
    cfg = IMPConfig(
        phi=phi,
        phi_scale=phi_scale,
        base=base,
        output_base=output_base,
        conv_base=conv_base,
        scope=scope,
        method=method,
        magnitude=magnitude,
        seed=seed,
    )
    chosen = strategies.STRATEGIES[strategy](**(strategy_options or {}))
    return IMP(model, chosen, cfg, layers=select_layers(model, parameters))


class Pruner:
    """IMP on one nn.Module, with its round count: round 0 is the dense network as given; each
    `next_round()` is one round boundary (docs/method.md). Between boundaries, `hold(optimizer)` steps the
    optimizer with the masks held: dead weights get no gradient and stay at their fill."""

    def __init__(self, model: nn.Module, strategy: str = "mask0", phi: float = 0.0, *, iterations: int = 10, **kw):
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
        self.imp = make_imp(model, strategy, phi, **kw)
        self.iterations, self.round, self.diagnostics = iterations, 0, None

    @property
    def model(self) -> nn.Module:
        return self.imp.model

    def next_round(self) -> dict:
        """The next round boundary: prune the trained weights, re-sign the survivors relative to phi,
        reinitialise them. Returns the boundary's diagnostics (flips, dead zone, per layer) and the
        sparsities it left."""
        if self.round >= self.iterations:
            raise ValueError(f"all {self.iterations} iterations are done (round {self.round})")
        self.round += 1
        self.diagnostics = self.imp.advance(self.round)
        return {**self.diagnostics, **self.sparsities()}

    def hold(self, optimizer: torch.optim.Optimizer) -> None:
        """One optimizer step that leaves every dead weight at its fill (call it instead of optimizer.step())."""
        pruning.zero_dead_grads(self.model)
        optimizer.step()
        if pruning.step_can_move_dead(optimizer):
            pruning.reapply_masks(self.model)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Each pruned weight's mask, by parameter name (bool, True = alive)."""
        return {f"{n}.weight": pruning.mask_of(m).mask for n, m in self.imp.layers.items()}

    def signs(self) -> dict[str, torch.Tensor]:
        """Each pruned weight's signs now: +1 or -1 where alive, 0 where pruned."""
        return {
            f"{n}.weight": polarity.signs(m.weight.detach(), 0.0) * pruning.mask_of(m).mask
            for n, m in self.imp.layers.items()
        }

    def sparsities(self) -> dict:
        """The pruned share of the selected weights, and the share that can no longer change the output
        (effective_sparsity; None where the model's graph cannot be read with torch.fx)."""
        total, _ = pruning.sparsity(self.imp.layers)
        try:
            effective = units.effective_sparsity(self.model, self.imp.wiring, list(self.imp.layers))[0]
        except ValueError:
            effective = None
        return {"sparsity": total, "effective_sparsity": effective}

    def state_dict(self) -> dict:
        """theta0, the rewind point and the round: with the model's own state_dict (which holds the masks),
        all a resumed run needs."""
        return {"round": self.round, "theta0": self.imp.theta0, "rewind": self.imp._rewind}

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        self.imp.set_theta0(state["theta0"])
        self.imp.set_rewind(state["rewind"])
