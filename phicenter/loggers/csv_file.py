"""CSV: the run's scalars in `<run>/csv/scalars.csv`, one row per scalar (`step,tag,value,wall_time`: the
columns of TensorBoard's own CSV export, with the tag), and its hparams in `<run>/csv/hparams.json`. Rows are
appended whole, through phicenter.io; a resumed run appends to the same file."""
from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

from phicenter.io import AppendFile, write_json
from phicenter.loggers.base import Sink

FOLDER = "csv"
SCALARS = "scalars.csv"
HPARAMS = "hparams.json"
HEADER = ("step", "tag", "value", "wall_time")


def _cut_to_last_line(path: Path) -> None:
    """A file a killed process left ending inside a row: the part row cut off (rows are whole lines)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)


class Csv(Sink):
    key = "csv"

    def __init__(self, folder: Path, options: dict, name: str, params: dict):
        super().__init__(folder, options, name, params)
        path = self.folder / FOLDER / SCALARS
        _cut_to_last_line(path)
        self.file = AppendFile(path)
        if path.stat().st_size == 0:
            self._write([HEADER])

    def _write(self, rows) -> None:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        self.file.write(text.getvalue().encode())

    def scalars(self, values: dict, step: int) -> None:
        now = f"{time.time():.3f}"
        self._write([(step, k, repr(float(v)), now) for k, v in values.items() if v is not None])

    def hparams(self, params: dict, metrics: dict) -> None:
        write_json(self.folder / FOLDER / HPARAMS, {"hparams": params, "metrics": metrics})

    def close(self, status: str) -> None:
        self.file.close()
