"""Loggers: where a run's scalars and hparams go besides results.json, chosen with the `logger` group
(`logger=tensorboard`, the default; `logger=[tensorboard,csv,mlflow,wandb]` for several).

engine.records emits each record once, to every sink of the run: `scalars(values, step)` (epoch, round,
per-layer and transfer scalars, on one step axis: the global epoch index), `hparams(params, metrics)` at the
end of a complete run, and `close(status)`. One class per logger, in SINKS; its options are declared in
phicenter.loggers.options (the sink's `Options`, read as attributes) and set in conf/logger/<name>.yaml. A
logger that keeps its runs elsewhere (mlflow, wandb) stores its run's id in the run folder (`loggers.json`), so
a resumed run appends to the same run rather than starting a second one.

Plain Python at import: each logger's library is imported when a run opens it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from phicenter.loggers.base import IDS, Sink
from phicenter.loggers.csv_file import Csv
from phicenter.loggers.mlflow_run import MLflow
from phicenter.loggers.options import Loggers
from phicenter.loggers.tensorboard import TensorBoard
from phicenter.loggers.wandb_run import WandB
from phicenter.spec import ConfigError, make

__all__ = ["IDS", "SINKS", "Loggers", "Sink", "check_installed", "open_sinks", "readers", "run_name", "selected"]

SINKS: dict[str, type[Sink]] = {"tensorboard": TensorBoard, "csv": Csv, "mlflow": MLflow, "wandb": WandB}

# the loggers that need an optional extra: {logger: (module, extra)}
EXTRAS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}


def selected(cfg) -> dict[str, object]:
    """The loggers a config picks, {name: its typed options}, in SINKS order; none for `logger=[]`. `cfg`: a
    run's config (raw, or typed by phicenter.config.settings), or that of a job of several variants (its phi
    and strategy lists)."""
    if dataclasses.is_dataclass(cfg):
        group = cfg.logger
    else:
        node = cfg.get("logger") if hasattr(cfg, "get") else None
        if node is not None and not isinstance(node, dict):
            from omegaconf import OmegaConf

            node = OmegaConf.to_container(node, resolve=True)
        group = None if node is None else make(Loggers, node, "logger.")
    if group is None:
        return {}
    return {k: getattr(group, k) for k in SINKS if getattr(group, k) is not None}


def _typed(name: str, options):
    """A logger's options as its sink reads them: typed (checked) from a mapping, or as given."""
    cls = SINKS[name].Options
    return options if isinstance(options, cls) else make(cls, options or {}, f"logger.{name}.")


def check_installed(names) -> None:
    """ConfigError, in one line naming the install command, for a logger whose library is missing."""
    for name in names:
        module, extra = EXTRAS.get(name, (None, None))
        if module is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"logger={name} needs the {module} package, which is not installed; install it "
                f"with: pip install 'phicenter[{extra}]'"
            )


def run_name(folder: Path) -> str:
    """A run's name in a logger: its folder, relative to the current folder when inside it."""
    folder = Path(folder).absolute()
    try:
        return str(folder.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(folder)


def readers(folder: Path, shown: str, loggers: dict[str, dict]) -> list[str]:
    """The commands that show a run's or a multirun's logged runs, one per logger that has one."""
    return [
        line
        for name, options in loggers.items()
        for line in SINKS[name].readers(Path(folder), shown, _typed(name, options))
    ]


def open_sinks(folder: Path, loggers: dict[str, dict], params: dict) -> list[Sink]:
    """One open sink per logger picked (those opened first are closed again when one fails to open)."""
    check_installed(loggers)
    out = []
    try:
        for name, options in loggers.items():
            out.append(SINKS[name](folder, _typed(name, options), run_name(folder), params))
    except BaseException:
        for sink in out:
            sink.close("failed")
        raise
    return out
