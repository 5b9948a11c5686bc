"""Re-initialisation strategies: what survivors, pruned weights and non-prunable parameters become.

A strategy is one small class registered by name, its options declared in phicenter.method.options
(STRATEGY_OPTIONS, the same declaration the command line checks), and one file in conf/strategy/. Survivors of
the phi-center strategies become signs(reference, phi) * c; see docs/method.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from phicenter.method.options import STRATEGY_OPTIONS, StrategyOptions
from phicenter.method.polarity import signs
from phicenter.spec import make

STRATEGIES: dict[str, type[Strategy]] = {}


def register(name: str):
    if name not in STRATEGY_OPTIONS:
        raise TypeError(f"strategy {name!r}: declare its options in phicenter.method.options.STRATEGY_OPTIONS")

    def wrap(cls):
        cls.name = name
        cls.Options = STRATEGY_OPTIONS[name]
        STRATEGIES[name] = cls
        return cls

    return wrap


@dataclass
class LayerView:
    """What a strategy may look at for one prunable weight tensor."""

    name: str
    trained: torch.Tensor  # effective weight at the end of the previous round
    rewind: torch.Tensor  # the rewind point theta_k (theta0 itself unless rewind.epoch = k > 0)
    c: float  # constant survivor magnitude of this layer
    phi: float  # phi in absolute units for this layer
    generator: torch.Generator  # seeded by (seed, round, layer); CPU
    fresh_init: Callable[[torch.Generator], torch.Tensor]  # a new draw of the layer's init distribution


class Strategy:
    """Base: the reference is the LayerView field named by `source` (or the subclass's own choice);
    survivors = signs(reference, phi) * c."""

    name = "?"
    uses_phi = True
    source: str | None = None  # "trained" or "rewind" (theta0, or theta_k under late rewinding)
    transfers = False  # each round's signed mask is also transferred and trained (engine.transfer)
    Options = StrategyOptions  # this strategy's declared options (set by register)

    def __init__(self, options: StrategyOptions | None = None, **values):
        """From its options, or from option values (checked against the declaration: ValueError)."""
        if options is None:
            options = make(self.Options, {"name": self.name, **values}, "strategy.", f"strategy {self.name}")
        elif values:
            raise TypeError("give the options or their values, not both")
        self.options = options

    @property
    def pruned_fill(self) -> str:
        """zero, or trained (frozen at the trained value of the round it was pruned)."""
        return self.options.pruned_fill

    @property
    def rewind_other(self) -> bool:
        """Biases and BatchNorm back to the rewind point (True) or kept trained (False)."""
        return self.options.rewind_other

    def reference(self, v: LayerView) -> torch.Tensor:
        if self.source is None:
            raise NotImplementedError(f"strategy {self.name} names no reference")
        return getattr(v, self.source)

    def survivors(self, v: LayerView, reference: torch.Tensor) -> torch.Tensor:
        return signs(reference, v.phi) * v.c

    def new_signs(self, v: LayerView, reference: torch.Tensor, survivors: torch.Tensor) -> torch.Tensor:
        """The sign each survivor was given (for the diagnostics): that of its new value, tie -> +1."""
        return signs(survivors, 0.0)

    def prune_scores(
        self, trained: dict[str, torch.Tensor], generator: Callable[[str], torch.Generator]
    ) -> dict[str, torch.Tensor]:
        """What pruning ranks, per prunable layer (the smallest |score| go first): the trained weights, i.e.
        magnitude pruning. `generator(layer)`: a CPU generator seeded by (seed, strategy, "mask", round, layer)."""
        return trained


@register("mask1")
class Mask1(Strategy):
    """Signs from the initial weights (LTH-style polarity rewinding); from theta_k under late rewinding."""

    source = "rewind"


@register("mask0")
class Mask0(Strategy):
    """Signs from the weights trained in the previous round."""

    source = "trained"


@register("gradual")
class Gradual(Strategy):
    """Each weight independently references trained (probability trained_fraction) or theta0 (theta_k)."""

    def reference(self, v):
        u = torch.rand(v.trained.shape, generator=v.generator).to(v.trained.device)
        return torch.where(u < self.options.trained_fraction, v.trained, v.rewind)


@register("standard")
class Standard(Strategy):
    """Signs from trained weights; pruned weights stay frozen at their trained values ("Standard (Full)")."""

    source = "trained"


class TakeReference(Strategy):
    """The baselines without a sign decision: survivors take their reference's values as they are."""

    uses_phi = False

    def survivors(self, v, reference):
        return reference.clone()


@register("lth")
class LotteryTicket(TakeReference):
    """Baseline: survivors rewound to their own theta0 values (Frankle & Carbin), theta_k under late rewinding."""

    source = "rewind"


@register("random")
class RandomReinit(TakeReference):
    """Baseline: survivors get a fresh draw of the layer's init distribution."""

    def reference(self, v):
        return v.fresh_init(v.generator).to(v.trained.device, v.trained.dtype)


@register("random_mask")
class RandomMask(LotteryTicket):
    """Baseline: Frankle & Carbin's randomly sampled sparse networks. Each round removes as many alive weights of
    each pool as magnitude pruning would (so, under layer scope, the same per-layer sparsity as lth's), chosen
    uniformly at random: one uniform draw per weight over the whole tensor, seeded by (seed, round, layer), the
    lowest alive ones go. The masks are nested; survivors are rewound to theta0 (theta_k), as lth's."""

    def prune_scores(self, trained, generator):
        return {n: torch.rand(w.shape, generator=generator(n)).to(w.device) for n, w in trained.items()}


@register("lrr")
class LearningRateRewinding(TakeReference):
    """Baseline: survivors keep their trained values; only the optimizer and LR schedule restart (Renda et al.,
    2020)."""

    source = "trained"


@register("sign_transfer")
class SignTransfer(LearningRateRewinding):
    """Oh, Baik & Lee (2025): stage 1 is lrr's lineage (with strategy.aws, trained with AWS: method.aws); at every
    round the engine puts the signed mask, signs(trained, phi) on the mask, on a fresh initialisation of another
    seed and trains that once (method.transfer, engine.transfer). phi acts only in the transfer."""

    transfers = True


@register("sign_rewind")
class SignRewind(Strategy):
    """A sign-preserving rewind, after Zhou et al. (2019), who keep theta0's signs: survivors = |theta_k| *
    signs(trained, phi), the learned sign (relative to phi) on the magnitude of the run's own rewind point
    (theta0, or theta_k)."""

    source = "trained"

    def survivors(self, v, reference):
        return v.rewind.abs() * signs(reference, v.phi)

    def new_signs(self, v, reference, survivors):
        return signs(reference, v.phi)  # also where |theta_k| = 0


def build(name: str, **options) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choices: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name](**options)
