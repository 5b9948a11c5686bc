"""What every logger is: a sink of one run's scalars and hparams (phicenter.loggers), and the run ids kept in
the run folder for the loggers that keep their runs elsewhere."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from phicenter.io import read_json, write_json

IDS = "loggers.json"  # in the run folder: {logger: {"id": ..., and where the run is kept}}


class HParams(dict):
    """A run's hparams (phicenter.config.hparams), in the order a logger shows them, and `lead`: the leading
    keys that stand for what the run's sweep varies (TensorBoard marks them so its HParams table leads with
    them). A plain dict to every logger that only stores them."""

    def __init__(self, items=(), lead: tuple[str, ...] = ()):
        super().__init__(items)
        self.lead = tuple(lead)


class Sink:
    """One logger's side of one run. `folder`: the run folder; `name`: the run's name (its folder, shown
    relative to the current folder when inside it); `params`: its hparams (phicenter.config.hparams), for the
    loggers that show them while the run trains."""

    key = ""  # the logger's name (phicenter.loggers.SINKS)
    Options: type = object  # its options (phicenter.loggers.options), typed, as `options`

    def __init__(self, folder: Path, options, name: str, params: dict):
        self.folder, self.options, self.name, self.params = Path(folder), options, name, params

    def scalars(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def hparams(self, params: dict, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self, status: str) -> None:
        """`status`: the run's results.json status (complete, failed, diverged; running when it was stopped)."""

    @classmethod
    def readers(cls, folder: Path, shown: str, options) -> list[str]:
        """The commands that show the runs of a run or multirun folder (`shown`: as the user should type it)."""
        return []

    # -------------------------------------------------------------- the run id kept in the run folder

    def stored_id(self, where: dict) -> str | None:
        """The id this logger gave the run at an earlier launch, when it was kept in the same place."""
        entry = (read_json(self.folder / IDS) or {}).get(self.key)
        if isinstance(entry, dict) and entry.get("id") and {k: entry.get(k) for k in where} == where:
            return str(entry["id"])
        return None

    def store_id(self, run_id: str, where: dict) -> None:
        ids = read_json(self.folder / IDS) or {}
        if ids.get(self.key) != dict(where, id=run_id):
            write_json(self.folder / IDS, dict(ids, **{self.key: dict(where, id=run_id)}))


def env_or(value, var: str):
    """A setting given, else the environment's, else None."""
    return value if value not in (None, "") else (os.environ.get(var) or None)


def python_command(module: str, *args: str) -> str:
    """`python -m MODULE ARGS` as a line to paste into a shell: this interpreter's own path (the shell it is
    pasted into may have no virtual environment active, or another python first on its PATH), each argument
    quoted where the shell needs it."""
    return " ".join(shlex.quote(a) for a in (sys.executable, "-m", module, *args))
