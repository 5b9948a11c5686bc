"""What the command line checks before any work: its overrides (`check_argv`, before Hydra runs them), each
job's config (`check_job`, as a job starts), and every job of a multirun (`check_sweep`, before the first one
starts). A refusal is a ConfigError in one line; Hydra's own errors are worded the same way, with the nearest
valid names (phicenter.config.names).

How a multirun's jobs are known before launch: SweepSummary.on_multirun_start (a Hydra callback, run before the
sweeper) receives the multirun's config; its jobs are the sweeper's own split of hydra.sweeper.params and the
command line's overrides (BasicSweeper.split_arguments for the basic sweeper; phicenter's Optuna sweeper: its
fixed overrides with each bound or choice of its search space), and each job's config is composed by Hydra's own
config loader (`load_sweep_config`, what every launcher composes a job with). So the check sees the very config
each job will get, whatever the launcher, with no sweeper or launcher of phicenter's own to keep in step with
Hydra's. No torch is imported.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

from phicenter import CONF_DIR
from phicenter.config import ConfigError, check_launch
from phicenter.config.names import group_options, several_values, unknown_key, unknown_option
from phicenter.engine import rundir as results

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA = "hydra_plugins.phicenter_sweeper.OptunaSweeper"
MULTIRUN_FLAGS = ("-m", "--multirun")


class JobRefused(ConfigError):
    """A multirun's job that would be refused: `job` (its overrides that tell it from the others), `why`."""

    def __init__(self, job: str, why: str):
        super().__init__(f"job {job}: {why}")
        self.job, self.why = job, why


# ------------------------------------------------------------------ one job


def check_data_parallel(cfg, multirun: bool, under_slurm: bool) -> None:
    """Lightning's DDP starts its worker processes by running this command line again; in a multirun that
    would be the whole multirun, in each worker. Under SLURM, SLURM starts them (one task per device)."""
    strategy = str(cfg.trainer.get("strategy") or "")
    if multirun and strategy.startswith("ddp") and "spawn" not in strategy and cfg.trainer.get("devices") != 1:
        if not under_slurm:
            raise ConfigError(
                f"trainer.strategy={strategy} with trainer.devices={cfg.trainer.get('devices')} cannot "
                "run inside a multirun here (its workers would relaunch the whole multirun); run each "
                "job on its own (no -m), or under hydra/launcher=slurm"
            )


def check_job(cfg, run_dir: Path | None, multirun: bool, under_slurm: bool | None = None) -> None:
    """A job's config (without its hydra node) through every check a launch gets before torch is imported:
    phicenter.config.check_launch (every setting, the loggers, the run already in run_dir) and the multirun's
    data-parallel rule. under_slurm None: this process is a SLURM job (submitit says so)."""
    if under_slurm is None:
        under_slurm = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
    previous = results.RunFolder(run_dir).read_checked if run_dir is not None else (lambda: None)
    check_launch(cfg, previous, run_dir)
    check_data_parallel(cfg, multirun, under_slurm)


# ------------------------------------------------------------------ Hydra's errors, in one line


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def hydra_error(e: BaseException, lines: list[str], present=None) -> str:
    """One line for an error Hydra raised composing `lines`: a group option that is not there, a key the
    config does not hold (`present(key)`: whether the config without the plain-key overrides holds it), else
    the first line of Hydra's message."""
    from hydra.errors import MissingConfigException

    if isinstance(e, MissingConfigException) and "/" in str(e.missing_cfg_file or ""):
        group, _, value = str(e.missing_cfg_file).rpartition("/")
        if group_options(group) is not None:
            return unknown_option(group, value)
        return f"{group} has no option {value}; options: {', '.join(e.options or [])}"
    found = re.match(r"Could not override '([^']+)'", str(e))
    if found and present is not None and not present(found.group(1)):
        key = found.group(1)
        value = next((line.partition("=")[2] for line in lines if line.partition("=")[0] == key), "...")
        return unknown_key(key, value)
    return _first_line(e)


# ------------------------------------------------------------------ the command line's overrides


def _values(o) -> list:
    """The values an override gives its key (each of a choice sweep; a list's elements each)."""
    values = list(o.sweep_iterator()) if o.is_choice_sweep() else [] if o.is_sweep_override() else [o.value()]
    return [x for v in values for x in (v if isinstance(v, list) else [v])]


def _check_groups(overrides) -> None:
    """`strategy=mask2`, `-m strategy=mask0,mask2`: an option no conf/ group file has."""
    for o in overrides:
        if o.is_hydra_override() or o.is_delete():
            continue
        options = group_options(o.key_or_group)
        for value in _values(o) if options is not None else []:
            if value is not None and str(value) not in options:
                raise ConfigError(unknown_option(o.key_or_group, value))


def _has(cfg, key: str) -> bool:
    from omegaconf import OmegaConf

    absent = object()
    return OmegaConf.select(cfg, key, default=absent, throw_on_missing=False) is not absent


def _held(compose, lines: list[str], key: str) -> bool:
    """Whether the config composed from `lines` holds key (True when it does not compose: say no more)."""
    try:
        return _has(compose(lines), key)
    except Exception:
        return True


def _composer():
    """compose(lines): conf/config.yaml with the overrides, as Hydra composes a multirun's own config (sweeps
    not applied), in a Hydra of its own that it clears again."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    def compose(lines: list[str]):
        try:
            hydra = Hydra.create_main_hydra2("train", create_config_search_path(f"file://{CONF_DIR}"))
            return hydra.compose_config("config", lines, run_mode=RunMode.MULTIRUN, with_log_configuration=False)
        finally:
            GlobalHydra.instance().clear()

    return compose


def check_argv(argv: list[str]) -> None:
    """The command line's overrides, before Hydra runs them: ConfigError in one line for an override Hydra
    cannot parse, a group option or key the config does not have (with the nearest names), or several values
    without -m. A command line with any other flag (--cfg, --help, --config-dir, ...) is left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in argv):
        return
    lines = [a for a in argv if a not in MULTIRUN_FLAGS]
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except Exception as e:
        raise ConfigError(_first_line(e)) from None
    _check_groups(overrides)
    compose = _composer()
    try:
        cfg = compose(lines)
    except Exception as e:
        plain = [o.input_line for o in overrides if o.is_hydra_override() or group_options(o.key_or_group) is not None]
        raise ConfigError(hydra_error(e, lines, lambda key: _held(compose, plain, key))) from None
    task = [o for o in overrides if not o.is_hydra_override()]
    swept = [o for o in task if o.is_sweep_override()]
    if swept and not any(a in MULTIRUN_FLAGS for a in argv) and str(cfg.hydra.mode) != "RunMode.MULTIRUN":
        raise ConfigError(several_values(swept[0].input_line))
    for o in swept:
        if group_options(o.key_or_group) is None and not o.is_add() and not _has(cfg, o.key_or_group):
            raise ConfigError(unknown_key(o.key_or_group, o.input_line.partition("=")[2]))


# ------------------------------------------------------------------ every job of a multirun


def _basic_jobs(config, loader) -> list[list[str]]:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    lines = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(lines)
    return BasicSweeper.split_arguments(overrides, None)[0]


def _optuna_jobs(config, loader) -> list[list[str]]:
    """The Optuna search's fixed overrides with its search space's first point, then each other bound or
    choice of one parameter at a time: every value the search may give a parameter alone, as far as a bound
    stands for those between."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.phicenter_sweeper import element

    params = config.hydra.sweeper.get("params") or {}
    lines = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    named = {}
    for o in OverridesParser.create(config_loader=loader).parse_overrides(lines):
        named.pop(o.get_key_element().lstrip("+~"), None)
        named[o.get_key_element().lstrip("+~")] = o
    fixed = [o.input_line for o in named.values() if not o.is_sweep_override()]
    points = {}
    for o in named.values():
        if o.is_choice_sweep():
            values = list(o.sweep_iterator())
        elif o.is_range_sweep():
            values = list(o.sweep_iterator())
            values = values[:1] + values[-1:] if len(values) > 1 else values
        elif o.is_interval_sweep():
            values = [o.value().start, o.value().end]
        else:
            continue
        points[o.get_key_element()] = [f"{o.get_key_element()}={element(v)}" for v in values]
    first = {k: v[0] for k, v in points.items() if v}
    jobs = [fixed + list(first.values())]
    for key, values in points.items():
        jobs += [fixed + list({**first, key: v}.values()) for v in values[1:]]
    return jobs


def sweep_jobs(config, loader) -> list[list[str]] | None:
    """Each job's overrides, as the multirun's sweeper will launch them (None: a sweeper this check does not
    know, or a sweep it cannot split: the sweeper says so itself)."""
    target = str(config.hydra.sweeper.get("_target_") or "")
    try:
        if target == BASIC:
            return _basic_jobs(config, loader)
        if target == OPTUNA:
            return _optuna_jobs(config, loader)
    except Exception:
        return None
    return None


def _named(job: list[str], jobs: list[list[str]]) -> str:
    """A job by the overrides that tell it from the others (all of them, for a multirun of one job)."""
    varying = [o for o in job if sum(o in other for other in jobs) < len(jobs)]
    return ",".join(varying or job) or "(no overrides)"


def _task_and_folder(job_cfg):
    """A composed job's config as its job function gets it (no hydra node), and its folder (None: not known)."""
    from omegaconf import open_dict, read_write

    try:
        folder = Path(str(job_cfg.hydra.sweep.dir)) / str(job_cfg.hydra.sweep.subdir)
    except Exception:
        folder = None
    task = copy.deepcopy(job_cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task, folder


def check_sweep(config) -> None:
    """Every job of a multirun composed and checked (check_job) before any starts: JobRefused, `job
    phi=abc: ...`, for the first that would be refused. A job whose config fails otherwise (an interpolation)
    is left to fail as it starts, where its run records it."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    loader = GlobalHydra.instance().config_loader()
    jobs = sweep_jobs(config, loader)
    slurm = "slurm" in str(config.hydra.launcher.get("_target_") or "").lower()
    for job in jobs or []:
        try:
            task, folder = _task_and_folder(loader.load_sweep_config(config, list(job)))
            check_job(task, folder, multirun=True, under_slurm=slurm)
        except ConfigError as e:
            raise JobRefused(_named(job, jobs), str(e)) from None
        except HydraException as e:
            raise JobRefused(_named(job, jobs), hydra_error(e, job)) from None
        except Exception:
            continue
