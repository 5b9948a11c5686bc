"""TensorBoard: the run's events in `<run>/tb/`, written here (TensorBoard's record format, through
phicenter.io), not by a Lightning logger, so a write that fails is met where it happens."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from phicenter.io import AppendFile
from phicenter.loggers.base import Sink, python_command
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
        """The hparams plugin's three summaries (experiment, session start and end; `hparams_summaries`)."""
        for summary in hparams_summaries(params, metrics, getattr(params, "lead", ())):
            self._write(0, summary=summary)

    def close(self) -> None:
        self.file.close()


def _typed(value) -> tuple[int, dict]:
    """An hparam's TensorBoard type and its protobuf Value's field: a bool a bool (torch's writer makes it a
    number: 0.0 or 1.0), an int or float a number, anything else its text."""
    from tensorboard.plugins.hparams import api_pb2

    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL, {"bool_value": value}
    if isinstance(value, (int, float)):
        return api_pb2.DATA_TYPE_FLOAT64, {"number_value": float(value)}
    return api_pb2.DATA_TYPE_STRING, {"string_value": str(value)}


def hparams_summaries(params: dict, metrics: dict, lead=()) -> list:
    """The hparams plugin's experiment, session start and session end summaries for one run.

    TensorBoard's HParams table orders its columns by `differs` (true first), then by name, whatever order
    they were written in: so the keys in `lead` (what the sweep varies, phicenter.config.hparams) are marked
    `differs`, and lead the table (by name among themselves); the rest follow by name. A bool is a bool (a
    true/false column with a discrete domain), not 0.0/1.0."""
    from google.protobuf.struct_pb2 import ListValue, Value
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo, SessionStartInfo

    def summary(tag: str, **data) -> Summary:
        content = HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **data).SerializeToString()
        plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content)
        return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])

    start, infos = SessionStartInfo(), []
    for name, value in params.items():
        if value is None:
            continue
        kind, field = _typed(value)
        start.hparams[name].CopyFrom(Value(**field))
        info = api_pb2.HParamInfo(name=name, type=kind, differs=name in lead)
        if kind == api_pb2.DATA_TYPE_BOOL:
            info.domain_discrete.CopyFrom(ListValue(values=[Value(bool_value=False), Value(bool_value=True)]))
        infos.append(info)
    experiment = api_pb2.Experiment(
        hparam_infos=infos, metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=k)) for k in metrics]
    )
    return [
        summary(metadata.EXPERIMENT_TAG, experiment=experiment),
        summary(metadata.SESSION_START_INFO_TAG, session_start_info=start),
        summary(metadata.SESSION_END_INFO_TAG, session_end_info=SessionEndInfo(status=api_pb2.STATUS_SUCCESS)),
    ]


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
        return [python_command("tensorboard.main", "--logdir", shown)]  # a venv's `tensorboard` is not on PATH
