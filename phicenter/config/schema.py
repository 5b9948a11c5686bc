"""The config schema: every key a run takes, with its type, default, choices and range, declared once (the
notation is phicenter.spec's). `check_tree` holds a whole resolved config to it before any work starts.

The strategy, model, dataset, optim and schedule groups are declared per name (`strategy=gradual` takes
GradualOptions' keys); each kind's options live beside its code: phicenter.method.options (strategies),
phicenter.models.options, phicenter.data.options, phicenter.loggers.options; the optimizer's and the LR
schedule's (torch's keyword arguments) in phicenter.config.groups.
Undeclared trainer keys (`+trainer.X=...`) go to Lightning's Trainer unchecked. A new option is one field in
the dataclass of its group (and, for a group with a file, the key in that conf/ file).

Plain Python (no torch, Hydra or OmegaConf), so the command line checks a config before importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal

from phicenter.config.groups import OPTIMIZERS, SCHEDULES
from phicenter.data.options import DATASET_OPTIONS
from phicenter.io import parse_fault
from phicenter.loggers.options import Loggers
from phicenter.method.options import STRATEGY_OPTIONS, IMPConfig, PhiScale, Prune, Reinit
from phicenter.models.options import MODEL_OPTIONS
from phicenter.spec import (
    ByName,
    ConfigError,
    NonNegInt,
    PosInt,
    Positive,
    Range,
    check_group,
    check_value,
    default_at,
)

frozen = dataclass(frozen=True, kw_only=True)

# ------------------------------------------------------------------ the other groups

StrategyName = Literal[tuple(STRATEGY_OPTIONS)]
# what Lightning's Trainer accepts as precision
Precision = Literal[
    64,
    32,
    16,
    "64-true",
    "64",
    "32-true",
    "32",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "16",
    "bf16",
    "transformer-engine",
    "transformer-engine-float16",
]


@frozen
class Rewind:
    """At most one non-zero; rounds >= 1 train from the rewind point to the end of round 0's schedule."""

    epoch: NonNegInt = 0  # k > 0: theta_k (after k epochs of round 0) is the rewind point
    step: NonNegInt = 0  # s > 0: theta_s (after s optimizer steps of round 0) is the rewind point


@frozen
class Trainer:
    """Lightning's Trainer arguments."""

    PASS_THROUGH = "extra"  # undeclared keys (+trainer.X=...) go to the Trainer unchecked, gathered in `extra`
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = "auto"
    devices: PosInt | Literal["auto"] | list[NonNegInt] = "auto"
    precision: Precision = "32-true"
    deterministic: bool | None = None  # null: on for CPU runs, off on GPU
    enable_progress_bar: bool | None = None  # null: a live bar when stdout is a terminal, else a line per epoch
    extra: dict = field(default_factory=dict)  # the undeclared keys, as given


@frozen
class Checkpoint:
    keep_all: bool = False
    every_n_epochs: PosInt = 1


@frozen
class DryRunGrid:
    phis: list[float] | None = None
    strategies: list[StrategyName] | None = None


@frozen
class Fault:
    fail_round: NonNegInt | None = None
    interrupt_round: NonNegInt | None = None  # a Ctrl-C (SIGINT to itself) at the start of this round
    write: str | None = None  # N[+]:ERRNO[:MATCH]: the N-th write (N+: and after) of a MATCH path fails


def parse_mode(value) -> int:
    """round_store.mode: octal digits as chmod takes them (2775, "0o2775"; YAML reads 2775 as the number with
    those digits) -> the int. ValueError, in one line, for anything else."""
    text = str(value).strip().lower().removeprefix("0o")
    if not (text.isdigit() and set(text) <= set("01234567") and len(text) <= 4):
        raise ValueError(f"must be a folder mode in octal digits, as chmod takes it (2775, 770), got {value!r}")
    return int(text, 8)


@frozen
class RoundStore:
    """The round store (engine.roundstore); who may publish to it is who holds its key (engine.storetrust)."""

    enabled: bool = True  # train each distinct round once; reuse it wherever it appears
    dir: str = "outputs/round_store"  # conf/config.yaml: $PHICENTER_ROUND_STORE, else this
    key_file: str | None = None  # signs entries; null: $PHICENTER_ROUND_STORE_KEY, else ~/.config/phicenter/...
    mode: int | str | None = None  # folders it makes: null, the store folder's permissions; or octal, 2775


@frozen
class Instability:
    """Frankle et al. (2020)'s instability of each round: a copy trained from the round's starting state with
    another data order, and the error barrier between the two (docs/method.md, "Instability analysis")."""

    enabled: bool = False
    data_seed: NonNegInt | None = None  # the copy's data order (and its fit's RNG); null: seed + 1
    points: Annotated[int, Range(">= 2")] = 11  # alphas over [0, 1], both ends included
    from_round: NonNegInt = 0  # the first round measured


# ------------------------------------------------------------------ the published figures an experiment reproduces

Percent = Annotated[float, Range("[0, 100]")]
Remaining = Annotated[float, Range("(0, 100]")]


@frozen
class PublishedPoint:
    remaining: Remaining  # weights remaining, % of the prunable weights
    accuracy: Percent  # the published test accuracy, %
    spread: tuple[Percent, Percent] | None = None  # [low, high] around it, as the paper reports it
    read_off_plot: bool = False  # read off a figure: the text, tables and released data give no number


@frozen
class PublishedCurve:
    strategy: StrategyName  # the phicenter strategy whose runs this curve is compared with
    label: str  # the paper's name for it
    match: list[str] = field(default_factory=list)  # further settings the runs must have: "rewind.epoch=2"
    points: list[PublishedPoint] = field(default_factory=list)
    matching_remaining: Remaining | None = None  # the paper: not below the dense accuracy down to this %
    below_remaining: Remaining | None = None  # the paper: below the dense accuracy from this % on
    note: str | None = None  # where the paper says so, in its words


@frozen
class Reference:
    """What an experiment is compared with (phicenter.analysis.literature). It records, and never shapes
    training: phicenter.config.keys.RECORD_ONLY_KEYS keeps it out of round keys, folder names and the
    same-run check."""

    source: str  # the paper and where its figures are (section, figure, table, data)
    metric: str  # what the published accuracy measures
    spread: str  # what the published spread is (min and max of trials, a std, ...)
    curves: list[PublishedCurve] = field(default_factory=list)
    missing: str | None = None  # what could not be verified, so is left out


@frozen
class Config:
    """The top level of conf/config.yaml (with the groups the defaults list picks)."""

    phi: float = IMPConfig.phi  # a list of numbers with pack=true
    phi_scale: PhiScale = IMPConfig.phi_scale
    seed: NonNegInt = IMPConfig.seed
    epochs: PosInt = 10
    batch_size: PosInt = 60
    eval_batch_size: PosInt = 1000  # validation and test batches (never below batch_size)
    data_dir: str = "./data"
    threads: PosInt | None = None
    compile: bool = False
    pack: bool = False
    pack_chunk: PosInt | None = None
    pack_halving: bool = False  # successive halving over the variants (engine.halving; hparams_search=phi_halving)
    resume: bool = True
    dry_run: Literal["phi", False] | None = None
    dry_run_grid: DryRunGrid = field(default_factory=DryRunGrid)
    fault: Fault = field(default_factory=Fault)
    round_store: RoundStore = field(default_factory=RoundStore)
    instability: Instability = field(default_factory=Instability)
    prune: Prune = field(default_factory=Prune)
    rewind: Rewind = field(default_factory=Rewind)
    reinit: Reinit = field(default_factory=Reinit)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    trainer: Trainer = field(default_factory=Trainer)
    strategy: Annotated[dict, ByName(STRATEGY_OPTIONS)] = field(default_factory=dict)
    model: Annotated[dict, ByName(MODEL_OPTIONS)] = field(default_factory=dict)
    dataset: Annotated[dict, ByName(DATASET_OPTIONS)] = field(default_factory=dict)
    optim: Annotated[dict, ByName(OPTIMIZERS)] = field(default_factory=dict)
    schedule: Annotated[dict, ByName(SCHEDULES)] = field(default_factory=dict)
    logger: Loggers | None = None  # null (logger=[]): no logger but results.json
    reference: Reference | None = None  # the published figures a reference experiment reproduces
    phi_sign: Literal["-", "+"] | None = None  # hparams_search=phi_optuna: phi drawn as a sign and |phi|
    phi_abs: Positive | None = None


LIST_PHI = "phi={} is a list: a list of phi values needs pack=true (or -m phi=a,b,c)"


def _phi(value):
    if isinstance(value, str):  # phi='5e-5', or decoded by a resolver
        try:
            value = float(value)
        except ValueError:
            pass
    return check_value("phi", value, float)


def check_tree(tree: Mapping, pack: bool | None = None) -> dict:
    """A resolved config (plain dicts) checked against the schema; ConfigError names the first wrong key.
    With pack=true, phi may be a list, and the strategy node (several strategies merged) is left to each
    variant's own check. Returns the config normalised (phi a float, or a list of floats)."""
    tree = dict(tree)
    pack = bool(tree.get("pack")) if pack is None else pack
    phi = tree.get("phi", 0.0)
    if isinstance(phi, (list, tuple)):
        if not pack:
            raise ConfigError(LIST_PHI.format(list(phi)))
        tree["phi"] = [_phi(p) for p in phi]
    elif "phi" in tree:
        tree["phi"] = _phi(phi)
    out = check_group(Config, tree, skip=("phi", "strategy") if pack else ("phi",))
    if out.get("pack_halving") and not pack:
        raise ConfigError("pack_halving=true needs pack=true: it halves the variants of a job")
    _check_rewind(out, pack)
    _check_parses(out, "fault", "write", parse_fault)
    _check_parses(out, "round_store", "mode", parse_mode)
    return out


def _check_parses(tree: dict, group: str, key: str, parse) -> None:
    """A setting written as text that its own parser reads (fault.write, round_store.mode): ConfigError, in one
    line, when it cannot."""
    value = (tree.get(group) or {}).get(key)
    if value is not None:
        try:
            parse(value)
        except ValueError as e:
            raise ConfigError(f"{group}.{key} {e}") from None


# Strategies whose references never rewind weights (docs/method.md, "Late rewinding"): Renda et al.'s
# learning-rate rewinding retrains the trained survivors, and Oh et al.'s sign transfer is lrr's lineage with
# transfers from a fresh initialisation. A rewind point would only shorten their rounds to T - k epochs.
NO_WEIGHT_REWIND = {
    "lrr": "learning-rate rewinding retrains the trained survivors from the start of the schedule",
    "sign_transfer": "sign transfer is lrr's lineage and transfers to a fresh initialisation",
}


def _check_rewind(c: Mapping, pack: bool = False) -> None:
    """One rewind point, inside round 0 (rewind.step is checked against round 0's steps once the data is
    known: engine.rewinding), and none for a strategy that does not rewind weights (with pack=true each
    variant's strategy is checked with the variant)."""
    rewind, epochs = c.get("rewind") or {}, c.get("epochs", Config.epochs)
    k, s = rewind.get("epoch", 0), rewind.get("step", 0)
    if k and s:
        raise ConfigError(f"rewind.epoch={k} and rewind.step={s}: the rewind point is one of them; set the other to 0")
    name = (c.get("strategy") or {}).get("name") if not pack else None
    if (k or s) and name in NO_WEIGHT_REWIND:
        what = f"rewind.step={s}" if s else f"rewind.epoch={k}"
        raise ConfigError(
            f"{what} does not apply to strategy={name}: {NO_WEIGHT_REWIND[name]}, so it never rewinds weights; "
            "leave rewind.epoch and rewind.step at 0 (weight rewinding to a late point: strategy=lth)"
        )
    if k >= epochs:
        raise ConfigError(
            f"rewind.epoch={k} is not inside round 0 (epochs={epochs}): rounds >= 1 train epochs k+1.."
            f"{epochs}, so k must be less than epochs"
        )


def default_of(tree: Mapping, key: str):
    """The declared default of a dotted key in a config like `tree` (dataclasses.MISSING: none declared)."""
    return default_at(Config, tree, key)
