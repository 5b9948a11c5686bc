"""The method's options, declared once: the pruning schedule (`prune.*`), the survivors' magnitude (`reinit.*`),
what IMP takes (IMPConfig, made of them), and each re-initialisation strategy's options: what `strategy.KEY=...`
may be, its default, and the attributes the Strategy reads (phicenter.method.strategies). The command line checks
a run's options against the same declarations (phicenter.config) before any work starts.

A new option is one field here (type, default, range: see phicenter.spec); a new strategy is one dataclass
(or a shared one) in STRATEGY_OPTIONS, its class in strategies.py and its file in conf/strategy/.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Annotated, Literal

from phicenter.spec import NonNegInt, OpenUnit, PosInt, Positive, Range, Unit, check_value, declared

frozen = dataclass(frozen=True, kw_only=True)
PhiScale = Literal["absolute", "layer_std"]
Magnitude = Literal["init_std", "init_abs_mean"] | Positive
HalfOpenUnit = Annotated[float, Range("(0, 1]")]


@frozen
class Prune:
    iterations: NonNegInt = 10  # prunings (round boundaries): a run has rounds 0..iterations
    base: OpenUnit = 0.8  # each pruning keeps `base` of the surviving weights
    scope: Literal["layer", "global"] = "layer"
    output_base: HalfOpenUnit | None = None  # 1: the output layer is never pruned
    conv_base: HalfOpenUnit | None = None  # convolutions' own base; null: base
    method: Literal["magnitude", "structured"] = "magnitude"


@frozen
class Reinit:
    magnitude: Magnitude = "init_std"


# IMPConfig's fields as the config names them (for messages)
IMP_KEYS = {k: f"prune.{k}" for k in ("base", "output_base", "conv_base", "scope", "method")} | {
    "magnitude": "reinit.magnitude"
}


@frozen
class IMPConfig:
    """What IMP takes: phi and its scale, the seed, and the `prune` and `reinit` settings it uses, each default
    the declared one. Checked against these declarations when made (ValueError names the key)."""

    phi: float = 0.0
    phi_scale: PhiScale = "absolute"
    base: OpenUnit = Prune.base
    output_base: HalfOpenUnit | None = Prune.output_base
    conv_base: HalfOpenUnit | None = Prune.conv_base
    scope: Literal["layer", "global"] = Prune.scope
    method: Literal["magnitude", "structured"] = Prune.method
    magnitude: Magnitude = Reinit.magnitude
    seed: NonNegInt = 0

    def __post_init__(self):
        hints = declared(IMPConfig)
        for f in fields(self):
            check_value(IMP_KEYS.get(f.name, f.name), getattr(self, f.name), hints[f.name][0])


def trains(default):
    """Declares a strategy option that changes how a round trains, not only the state the round boundary makes
    (engine.reuse puts such an option in the round key whenever its value is not this default, which must
    train as the strategy would without the option)."""
    return field(default=default, metadata={"trains": True})


@dataclass(frozen=True, kw_only=True)
class StrategyOptions:
    """What every strategy takes."""

    name: str  # strategy=NAME: the name that picked these options
    pruned_fill: Literal["zero", "trained"] = "zero"  # trained: frozen at the value of the round it was pruned
    # biases and BatchNorm back to theta0 (or kept trained). False for the paper's four strategies alike, so
    # that they differ only in where the signs come from (docs/method.md, "Non-prunable parameters")
    rewind_other: bool = False


@dataclass(frozen=True, kw_only=True)
class RewindOtherOptions(StrategyOptions):
    """Baselines whose references rewind the whole network (lth, random_mask, sign_rewind)."""

    rewind_other: bool = True


@dataclass(frozen=True, kw_only=True)
class StandardOptions(StrategyOptions):
    pruned_fill: Literal["zero", "trained"] = "trained"  # "Standard (Full)"; zero: the other reading


@dataclass(frozen=True, kw_only=True)
class GradualOptions(StrategyOptions):
    trained_fraction: Unit = 0.7  # probability that a weight references the trained value (else theta0)


@dataclass(frozen=True, kw_only=True)
class SignTransferOptions(StrategyOptions):
    aws: bool = trains(False)  # stage 1 trained with AWS (normalisation layers moved towards identity)
    transfer_seed: NonNegInt | None = None  # the transfer's initialisation and data order; null: seed + 1
    transfer_epochs: PosInt | None = None  # the transfer's epochs; null: the run's `epochs` (Oh et al.: 100)
    # the transfer's LR schedule (its milestones: fractions of transfer_epochs); null: the run's `schedule`
    transfer_schedule: Literal["none", "multistep", "cosine"] | None = None


STRATEGY_OPTIONS: dict[str, type[StrategyOptions]] = {
    "mask0": StrategyOptions,
    "mask1": StrategyOptions,
    "gradual": GradualOptions,
    "standard": StandardOptions,
    "lth": RewindOtherOptions,
    "random": StrategyOptions,
    "random_mask": RewindOtherOptions,
    "lrr": StrategyOptions,
    "sign_transfer": SignTransferOptions,
    "sign_rewind": RewindOtherOptions,
}


def training_options(strategy: Mapping) -> dict:
    """{"strategy.KEY": value} for the options of a strategy config node (name and values) that shape training
    (declared with `trains`) and are set away from their default: what the round key adds for the strategy."""
    cls = STRATEGY_OPTIONS.get(strategy.get("name"))
    if cls is None:
        return {}
    return {
        f"strategy.{f.name}": strategy[f.name]
        for f in fields(cls)
        if f.metadata.get("trains") and f.name in strategy and strategy[f.name] != f.default
    }
