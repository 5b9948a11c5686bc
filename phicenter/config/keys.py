"""The one list of execution settings, and what is derived from it.

An execution setting changes how a run executes, not what it trains. So a relaunch may change it and still
resume (phicenter.config.config_changes), the report never splits runs by it (phicenter.analysis.report),
the loggers' hparams leave it out (`hparams`), and job folder names leave it out (conf/config.yaml's
hydra.job.config.override_dirname.exclude_keys, pinned to `folder_name_excluded()` by tests/test_config.py).
"""

from __future__ import annotations

import typing

from phicenter.config.schema import Config
from phicenter.loggers.base import HParams
from phicenter.spec import declared, group_in

# A group's name stands for every key in it.
EXECUTION_KEYS = (
    "threads",
    "data_dir",
    "resume",
    "checkpoint",
    "compile",
    "pack",
    "pack_chunk",
    "pack_halving",
    "fault",
    "dry_run",
    "dry_run_grid",
    "trainer.enable_progress_bar",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.deterministic",
    "dataset.download",
    "dataset.num_workers",
    "eval_batch_size",
    "optim.fused",
    "round_store",
    "logger",
    "instability",
)

# (`instability` trains a copy of each round beside the run and measures it; the run's own rounds, results and
# keys stay those of the run without it: a relaunch may switch it, and the report never splits runs by it.)

# The execution settings that change a round's result to the bit: the round key holds each one's effective
# value (engine.reuse.execution_in_key: the thread count torch uses, the number of processes, ...). The others
# leave a round's bits alone; docs/method.md ("The round key") says why for each.
IN_ROUND_KEY = (
    "threads",
    "compile",
    "optim.fused",
    "trainer.deterministic",
    "trainer.accelerator",
    "trainer.devices",
    "eval_batch_size",
)

# What a run records and never acts on: the published figures a reference experiment is compared with
# (phicenter.analysis.literature). Treated as an execution setting everywhere: a relaunch may change it, and it
# is in no round key, report label, TensorBoard hparam or job folder name.
RECORD_ONLY_KEYS = ("reference",)

# Execution settings job folder names keep: a `pack=true` job's folder holds its variants' folders, and a dry run,
# a successive-halving search or an injected fault must not take the folder of the run it stands for.
NAMED_IN_FOLDERS = ("pack", "pack_halving", "dry_run", "dry_run_grid", "fault")

# Config groups chosen on the command line that are no setting of the run (folder names leave them out).
UNNAMED_GROUPS = ("hparams_search", "logger")

# The options a `pack=true` job spans its variants with; never part of a variant's own config.
PACK_KEYS = ("pack", "pack_chunk", "pack_halving")

# What hparams_search=phi_optuna draws phi from (phi itself says it all).
PHI_SEARCH_KEYS = ("phi_sign", "phi_abs")

# TensorBoard's hparams first: the settings a grid varies, then the rest in config order.
HPARAMS_FIRST = (
    ("strategy", "strategy.name"),
    ("phi", "phi"),
    ("seed", "seed"),
    ("model", "model.name"),
    ("dataset", "dataset.name"),
)


def is_execution_key(key: str) -> bool:
    return any(key == s or key.startswith(s + ".") for s in EXECUTION_KEYS + RECORD_ONLY_KEYS)


def shapes_training(key: str) -> bool:
    """Whether a dotted config key is a setting of what is trained (not of how, nor phi's search encoding)."""
    return not is_execution_key(key) and key not in PHI_SEARCH_KEYS


def _leaves(key: str, cls=Config) -> list[str]:
    """A key, or for a declared group every key in it, through nested groups: checkpoint ->
    checkpoint.keep_all, ...; logger -> logger.tensorboard, logger.mlflow.tracking_uri, ..."""
    fields = declared(cls)
    name = key.rpartition(".")[2]
    group = group_in(fields[name][0]) if name in fields else None
    if group is not None and declared(group):
        return [leaf for k in declared(group) for leaf in _leaves(f"{key}.{k}", group)]
    return [key]


def folder_name_excluded() -> list[str]:
    """The keys multirun job folder names leave out: conf/config.yaml's override_dirname.exclude_keys."""
    keys = [k for k in EXECUTION_KEYS + RECORD_ONLY_KEYS if k not in NAMED_IN_FOLDERS]
    leaves = [leaf for k in keys for leaf in (_leaves(k) if "." not in k else [k])]
    return leaves + [g for g in UNNAMED_GROUPS if g not in leaves]


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a.b": value} for every leaf of a nested dict."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _scalar(v):
    return "null" if v is None else v if isinstance(v, (bool, int, float, str)) else str(v)


# What leads a single run's hparams (a multirun's: what its sweep varies).
SINGLE_RUN_LEAD = ("phi", "strategy")


def swept_keys() -> list[str] | None:
    """The keys a multirun job's command line sets (Hydra's hydra.overrides.task: the sweep's overrides and
    the experiment's declared sweep, as this job got them); None outside a multirun job."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.override_parser.overrides_parser import OverridesParser
    except ImportError:
        return None
    if not HydraConfig.initialized() or HydraConfig.get().mode.name != "MULTIRUN":
        return None
    task = list(HydraConfig.get().overrides.task)
    return [o.key_or_group for o in OverridesParser.create().parse_overrides(task)]


def _label(key: str, out: dict) -> str | None:
    """The hparam a config key (or group, or phi's search encoding) stands for, when the run has it."""
    labels = {k: label for label, k in HPARAMS_FIRST}
    if key in PHI_SEARCH_KEYS:
        key = "phi"
    for name in (labels.get(key, key), labels.get(f"{key}.name"), f"{key}.name"):
        if name in out:
            return name
    return None


def hparams(resolved: dict, sweep: typing.Sequence[str] | None = None) -> HParams:
    """A run's resolved config as the hparams every logger receives (TensorBoard's HParams): first what the
    sweep varies (`sweep`: its keys; None: the running multirun job's, `swept_keys`; outside one phi and
    strategy), marked as the lead; then strategy, phi, seed, model and dataset, then every other setting that
    shapes training (dotted keys, in config order); execution settings left out; values plain scalars (bools
    bools, null as "null", lists as text)."""
    flat = flatten(resolved)
    out = {label: _scalar(flat.pop(key)) for label, key in HPARAMS_FIRST if key in flat}
    out.update((k, _scalar(v)) for k, v in flat.items() if shapes_training(k))
    if sweep is None:
        sweep = swept_keys()
    if sweep is None:
        sweep = SINGLE_RUN_LEAD
    lead = list(dict.fromkeys(label for label in (_label(k, out) for k in sweep) if label is not None))
    return HParams({k: out[k] for k in lead} | out, lead=lead)
