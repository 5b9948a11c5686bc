"""The optimizer's and the LR schedule's options, declared in phicenter.spec's notation (`optim=sgd` takes
SGDOptions' keys): torch's keyword arguments and the per-round schedule the engine builds (engine.module). The
models' and datasets' options are declared beside them (phicenter.models.options, phicenter.data.options). The
schema (config.schema) checks a run's group against the declaration its name picks. Plain Python: no torch,
Hydra or OmegaConf."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from phicenter.spec import NonNegative, Positive, Range, Unit

frozen = dataclass(frozen=True, kw_only=True)

# ------------------------------------------------------------------ optimizers: torch's keyword arguments

Beta = Annotated[float, Range("[0, 1)")]


@frozen
class AdamFamily:
    name: str  # optim=NAME: the name that picked these options
    lr: NonNegative = 1e-3
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: NonNegative = 1e-8
    weight_decay: NonNegative = 0.0
    amsgrad: bool = False
    foreach: bool | None = None
    maximize: bool = False
    capturable: bool = False
    differentiable: bool = False
    fused: bool | None = None  # true: torch's fused implementation where the device has one


@frozen
class AdamOptions(AdamFamily):
    decoupled_weight_decay: bool = False


@frozen
class AdamWOptions(AdamFamily):
    weight_decay: NonNegative = 1e-2


@frozen
class SGDOptions:
    name: str  # optim=NAME: the name that picked these options
    lr: NonNegative = 1e-3
    momentum: NonNegative = 0.0
    dampening: float = 0.0
    weight_decay: NonNegative = 0.0
    nesterov: bool = False
    maximize: bool = False
    foreach: bool | None = None
    differentiable: bool = False
    fused: bool | None = None


OPTIMIZERS: dict[str, type] = {"adam": AdamOptions, "adamw": AdamWOptions, "sgd": SGDOptions}

# ------------------------------------------------------------------ LR schedules, per round


@frozen
class NoOptions:
    name: str  # schedule=NAME: the name that picked these options


@frozen
class MultiStepOptions:
    name: str  # schedule=NAME: the name that picked these options
    at: tuple[Unit, ...] = (0.5, 0.75)  # milestones, as fractions of the round's epochs
    gamma: Positive = 0.1


SCHEDULES: dict[str, type] = {"none": NoOptions, "multistep": MultiStepOptions, "cosine": NoOptions}
