"""CSV: the run's scalars in `<run>/csv/scalars.csv`, one row per scalar (`step,tag,value,wall_time`: every tag
in one table, where TensorBoard's CSV export gives one per tag), and its hparams in `<run>/csv/hparams.json`.
Rows are appended whole, through phicenter.io; a resumed run appends to the same file."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from phicenter.io import AppendFile, write_json
from phicenter.loggers.base import Sink
from phicenter.loggers.options import CsvOptions

FOLDER = "csv"
SCALARS = "scalars.csv"
HPARAMS = "hparams.json"
HEADER = ("step", "tag", "value", "wall_time")


class Csv(Sink):
    key = "csv"
    Options = CsvOptions

    def __init__(self, folder: Path, options: CsvOptions, name: str, params: dict):
        super().__init__(folder, options, name, params)
        path = self.folder / FOLDER / SCALARS
        self.file = AppendFile(path, record_end=b"\n")  # rows are lines
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
