"""TensorBoard: the run's events in `<run>/tb/`, written here (TensorBoard's record format, through
phicenter.io), not by a Lightning logger, so a write that fails is met where it happens."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from phicenter.io import AppendFile
from phicenter.loggers.base import Sink
from phicenter.loggers.options import TensorBoardOptions

FOLDER = "tb"


class EventFile:
    """One TensorBoard events file (`events.out.tfevents.<time>.<host>.<pid>.<n>`, one per launch), written
    through phicenter.io: each event is appended whole at once, so a write that fails raises where it is made
    and leaves the file ending on a whole record."""

    _count = itertools.count()

    def __init__(self, folder: Path):
        import socket

        from tensorboard.summary.writer.record_writer import RecordWriter

        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(self._count)}"
        self.file = AppendFile(Path(folder) / name)
        self.records = RecordWriter(self.file)
        self._write(file_version="brain.Event:2")

    def _write(self, step: int = 0, **fields) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self.records.write(Event(wall_time=time.time(), step=step, **fields).SerializeToString())

    def scalars(self, values: dict, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._write(
            step,
            summary=Summary(
                value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items() if v is not None]
            ),
        )

    def hparams(self, params: dict, metrics: dict) -> None:
        """The hparams plugin's three summaries (experiment, session start and end)."""
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(params, metrics):
            self._write(0, summary=summary)

    def close(self) -> None:
        self.file.close()


class TensorBoard(Sink):
    """`tensorboard --logdir <run or multirun folder>`: every run under its folder's name."""

    key = "tensorboard"
    Options = TensorBoardOptions

    def __init__(self, folder: Path, options: TensorBoardOptions, name: str, params: dict):
        super().__init__(folder, options, name, params)
        self.events = EventFile(self.folder / FOLDER)

    def scalars(self, values: dict, step: int) -> None:
        self.events.scalars(values, step)

    def hparams(self, params: dict, metrics: dict) -> None:
        self.events.hparams(params, metrics)

    def close(self, status: str) -> None:
        self.events.close()

    @classmethod
    def readers(cls, folder: Path, shown: str, options: TensorBoardOptions) -> list[str]:
        return [f"tensorboard --logdir {shown}"]
