"""Each logger's options (conf/logger/<name>.yaml), declared beside the loggers, and the `logger` group that
picks any of them (`logger=[tensorboard,mlflow]`). The sinks read them as attributes. Plain Python."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

frozen = dataclass(frozen=True, kw_only=True)


@frozen
class TensorBoardOptions:
    """<run>/tb/ (no options)."""


@frozen
class CsvOptions:
    """<run>/csv/scalars.csv and hparams.json (no options)."""


@frozen
class MlflowOptions:
    # a folder, sqlite:///FILE or http://HOST:PORT; conf: $MLFLOW_TRACKING_URI, else this; null: MLflow's default
    tracking_uri: str | None = "sqlite:///outputs/mlflow.db"
    experiment: str = "phicenter"  # the MLflow experiment the runs go into
    run_name: str | None = None  # null: the run folder


WandbMode = Literal["online", "offline", "disabled"]


@frozen
class WandbOptions:
    project: str = "phicenter"
    entity: str | None = None  # null: wandb's default (your user, or $WANDB_ENTITY)
    group: str | None = None  # runs shown together (null: none)
    mode: WandbMode | None = None  # null: $WANDB_MODE, else online


@frozen
class Loggers:
    """The `logger` group: one key per logger picked (`logger=[tensorboard,csv]`), each with its options.
    An execution setting (phicenter.config.keys.EXECUTION_KEYS): in no round key, job folder name or
    TensorBoard hparam, and a relaunch may change it."""

    tensorboard: TensorBoardOptions | None = None
    csv: CsvOptions | None = None
    mlflow: MlflowOptions | None = None
    wandb: WandbOptions | None = None
