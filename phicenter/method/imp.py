"""One IMP round boundary in plain torch: prune, re-sign relative to phi, reinit at constant magnitude.

Used by every execution path (Lightning callback, bench, tests). See docs/method.md, section by section.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn

from phicenter.method import polarity, pruning, seeding, units
from phicenter.method.options import IMPConfig
from phicenter.method.strategies import LayerView, Strategy


def layer_constant(theta0: torch.Tensor, magnitude) -> float:
    """The survivors' magnitude c for one layer."""
    if magnitude in ("init_std", "init_abs_mean"):
        t = theta0.float()
        c = float(t.std(correction=0) if magnitude == "init_std" else t.abs().mean())
        if not c > 0:
            raise ValueError(
                f"reinit.magnitude={magnitude} gives c = {c} for a layer whose theta0 is constant; "
                "set reinit.magnitude to a positive number"
            )
        return c
    try:
        value = float(magnitude)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"reinit.magnitude must be init_std, init_abs_mean or a positive number, got {magnitude!r}")
    return value


def layer_phi(theta0: torch.Tensor, phi: float, phi_scale: str) -> float:
    if phi_scale == "absolute":
        return float(phi)
    if phi_scale == "layer_std":
        return float(phi) * float(theta0.float().std(correction=0))
    raise ValueError(f"phi_scale must be 'absolute' or 'layer_std', got {phi_scale!r}")


class IMP:
    """Holds theta0, the rewind point, the per-layer constants and the strategy; `advance(round)` moves to the
    next round."""

    def __init__(
        self,
        model: nn.Module,
        strategy: Strategy,
        cfg: IMPConfig,
        fresh_init: Callable[[str, torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        layers: list[str] | None = None,
    ):
        """`layers`: the names of the Conv/Linear layers whose weights are pruned (None: every one)."""
        if cfg.method == "structured" and cfg.output_base is not None:
            raise ValueError(
                "prune.output_base has no effect with prune.method=structured (the output layer is "
                "not pruned); leave it null"
            )
        self.model, self.strategy, self.cfg = model, strategy, cfg
        self.layers = pruning.attach_masks(model, layers)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no Conv or Linear weight to prune")
        self.output_layer = list(self.layers)[-1]
        self.wiring = units.Wiring(model)
        if layers is not None:
            self.wiring.restrict(list(self.layers))
        if cfg.method == "structured" and self.wiring.unread:
            raise ValueError(f"prune.method=structured needs the network's graph: {self.wiring.unread}")
        if cfg.method == "structured" and not self.wiring.removable:
            raise ValueError(
                "prune.method=structured: no unit of this network can be removed ("
                + "; ".join(f"{n}: {why}" for n, why in self.wiring.kept.items())
                + ")"
            )
        self.theta0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._rewind: dict[str, torch.Tensor] | None = None
        self.fresh_init = fresh_init or _default_fresh_init
        self.constants = {n: layer_constant(self.theta0_weight(n), cfg.magnitude) for n in self.layers}
        self.phis = self.layer_phis(cfg.phi)

    def set_theta0(self, state: dict[str, torch.Tensor]) -> None:
        """theta0 as a resumed run saved it; c and phi (phi_scale=layer_std) follow it."""
        self.theta0 = {k: v.detach().clone() for k, v in state.items()}
        self.constants = {n: layer_constant(self.theta0_weight(n), self.cfg.magnitude) for n in self.layers}
        self.phis = self.layer_phis(self.cfg.phi)

    def layer_phis(self, phi: float) -> dict[str, float]:
        """phi in each layer's own units (phi_scale), from theta0."""
        return {n: layer_phi(self.theta0_weight(n), phi, self.cfg.phi_scale) for n in self.layers}

    @property
    def rewind(self) -> dict[str, torch.Tensor]:
        """The state that rewinding strategies return to: theta_k after set_rewind, else theta0 itself."""
        return self.theta0 if self._rewind is None else self._rewind

    def set_rewind(self, state_dict: dict[str, torch.Tensor] | None) -> None:
        """Late rewinding: make `state_dict` (the model's state after epoch k of round 0, theta_k) the rewind
        point of mask1, gradual's theta0 share, lth, sign_transfer's magnitudes and rewind_other. c and
        phi_scale=layer_std stay defined on theta0. None: back to theta0. The state is copied."""
        if state_dict is None:
            self._rewind = None
            return
        missing = sorted(set(self.theta0) - set(state_dict))
        extra = sorted(set(state_dict) - set(self.theta0))
        if missing or extra:
            raise ValueError(
                f"set_rewind: the state dict is not this model's (missing {missing[:3]}, unexpected {extra[:3]})"
            )
        bad = [k for k, v in self.theta0.items() if tuple(state_dict[k].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(
                f"set_rewind: shape of {bad[0]} is {tuple(state_dict[bad[0]].shape)}, "
                f"the model's is {tuple(self.theta0[bad[0]].shape)}"
            )
        self._rewind = {k: state_dict[k].detach().to(v.device, v.dtype).clone() for k, v in self.theta0.items()}

    def theta0_weight(self, name: str) -> torch.Tensor:
        return self.theta0[_weight_key(name)]

    def rewind_weight(self, name: str) -> torch.Tensor:
        return self.rewind[_weight_key(name)]

    def bases(self) -> dict[str, float]:
        """Each prunable layer's base: the output layer's (output_base), a convolution's (conv_base), else base;
        an unset one is base. The output layer's own base comes first, whatever its kind."""
        out_base = self.cfg.base if self.cfg.output_base is None else self.cfg.output_base
        conv_base = self.cfg.base if self.cfg.conv_base is None else self.cfg.conv_base
        return {
            n: out_base
            if n == self.output_layer
            else conv_base
            if isinstance(layer, nn.modules.conv._ConvNd)
            else self.cfg.base
            for n, layer in self.layers.items()
        }

    def probe(self, strategy: Strategy, phi: float) -> IMP:
        """This IMP for another strategy and phi, on a copy of the model in its current state: theta0, the rewind
        point and c are shared (read only), so its advance() is what this run's would be. For dry runs."""
        twin = copy.copy(self)
        twin.model = copy.deepcopy(self.model)
        twin.layers = {n: m for n, m in pruning.prunable_layers(twin.model).items() if n in self.layers}
        twin.strategy = strategy
        twin.cfg = dataclasses.replace(self.cfg, phi=float(phi))
        twin.phis = self.layer_phis(float(phi))
        return twin

    @torch.no_grad()
    def advance(self, round_index: int) -> dict:
        """Prune the trained weights, then reinitialise per the strategy. Returns the round's diagnostics."""
        trained = {n: l.weight.detach().clone() for n, l in self.layers.items()}
        old = {n: pruning.mask_of(l).mask.float() for n, l in self.layers.items()}
        scores = self.strategy.prune_scores(
            trained, lambda n: seeding.generator(self.cfg.seed, self.strategy.name, "mask", round_index, n)
        )
        new = self.wiring.prune_masks(
            scores, old, self.bases(), self.cfg.scope, self.cfg.method, output=self.output_layer
        )
        per_layer, totals = (
            {},
            {"survivors": 0, "flipped_by_phi_count": 0, "flipped_vs_init_count": 0, "dead_zone_count": 0},
        )
        for name, layer in self.layers.items():
            keep = new[name].bool()
            device = trained[name].device
            view = LayerView(
                name=name,
                trained=trained[name],
                rewind=self.rewind_weight(name).to(device),
                c=self.constants[name],
                phi=self.phis[name],
                generator=seeding.generator(self.cfg.seed, self.strategy.name, round_index, name),
                fresh_init=lambda g, n=name, w=trained[name]: self.fresh_init(n, w, g),
            )
            ref = self.strategy.reference(view)
            surv = self.strategy.survivors(view, ref)
            # structured: every pruned weight belongs to a removed unit or reads one; it is 0 under every strategy
            frozen = self.strategy.pruned_fill == "trained" and self.cfg.method != "structured"
            fill = trained[name] if frozen else torch.zeros_like(trained[name])
            mf = pruning.mask_of(layer)
            mf.mask.copy_(keep)
            mf.fill.copy_(fill)
            pruning.raw_weight(layer).copy_(torch.where(keep, surv, fill))  # the effective weight itself
            new_sign = self.strategy.new_signs(view, ref, surv)
            stats = polarity.flip_fractions(ref, view.phi, new_sign, view.rewind, keep)
            if not self.strategy.uses_phi:
                stats["dead_zone_count"] = 0
            crit_pos, crit_neg = polarity.critical_phi(ref[keep]) if self.strategy.uses_phi else (None, None)
            per_layer[name] = {
                "sparsity": 1.0 - stats["survivors"] / keep.numel(),
                "c": self.constants[name],
                "phi": view.phi,
                **stats,
                **_fractions(stats),
                "critical_phi_pos": crit_pos,
                "critical_phi_neg": crit_neg,
            }
            for k in totals:
                totals[k] += stats[k]
        if self.strategy.rewind_other:
            self._rewind_other()
        if self.cfg.method == "structured":
            self.wiring.silence(self.model)
        return {**_fractions(totals), **totals, "layers": per_layer}

    def _rewind_other(self):
        """Biases, BatchNorm affine parameters and running statistics back to the rewind point."""
        state = self.model.state_dict()
        prunable = {key for n in self.layers for key in pruning.state_keys(n)}
        for key, value in state.items():
            if key not in prunable:
                value.copy_(self.rewind[key])


def _weight_key(name: str) -> str:
    return pruning.state_keys(name)[0]


def _fractions(stats: dict) -> dict:
    n = max(stats["survivors"], 1)
    return {
        "flipped_by_phi": stats["flipped_by_phi_count"] / n,
        "flipped_vs_init": stats["flipped_vs_init_count"] / n,
        "dead_zone": stats["dead_zone_count"] / n,
    }


def _default_fresh_init(name: str, like: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """PyTorch's default Conv/Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    out = torch.empty(like.shape)
    nn.init.kaiming_uniform_(out, a=math.sqrt(5), generator=g)
    return out
