"""What a run records: its results.json skeleton, one entry per round, and its TensorBoard events (epoch, round,
per-layer and hparams), on one step axis across rounds: the global epoch index. The events are written here
(TensorBoard's record format, through phicenter.io), not by a Lightning logger, so a write that fails is met
where it happens."""
from __future__ import annotations

import itertools
import math
import os
import time
from pathlib import Path

from phicenter.config import hparams
from phicenter.io import AppendFile
from phicenter.method.pruning import sparsity
from phicenter.method.units import effective_sparsity

ROUND_TAGS = ("val_acc", "test_acc", "sparsity", "effective_sparsity", "flipped_by_phi", "flipped_vs_init",
              "dead_zone")
TRANSFER_TAGS = ("val_acc", "test_acc", "flipped_by_phi", "flipped_vs_init", "dead_zone")   # sign_transfer
LAYER_TAGS = ("sparsity", "effective_sparsity", "flipped_by_phi", "flipped_vs_init", "dead_zone")
INSTABILITY_TAGS = ("barrier", "val_acc", "test_acc")   # instability.enabled: the round's copy and the barrier


def skeleton(resolved: dict, cfg, splits, net, rounds: list, cohort: list[str] | None = None) -> dict:
    """results.json before its first round is trained (a resumed run keeps the rounds it has); `threads`: the
    torch CPU threads of this launch (its timing fields depend on them)."""
    from phicenter.models import parameter_counts

    import torch

    out = {"config": resolved, "rounds": rounds, "final": rounds[-1] if rounds else None, "status": "running",
           "device": None, "threads": torch.get_num_threads(),
           "precision": str(cfg.trainer.get("precision", "32-true")), "init": cfg.model.init,
           "model_parameters": parameter_counts(net),
           "data": {"train": len(splits.y_train), "val": len(splits.y_val), "test": len(splits.y_test),
                    "input_shape": list(splits.input_shape), "num_classes": splits.num_classes}}
    if cohort:
        out["packed"] = {"variants": cohort, "impl": None}
    from phicenter.engine import transfer

    if transfer.transfers(cfg):
        out["transfer_seed"] = transfer.transfer_seed(cfg)
    return out


def round_entry(r: int, imp, diagnostics: dict | None, history: list[dict], test: tuple[float, float],
                seconds: float, seconds_packed: float | None = None, key: str | None = None,
                reused_from: str | None = None) -> dict:
    """One round of results.json: the last epoch's metrics, the test split, the pruned and the effective
    sparsity of the trained net (method.units), the round boundary's diagnostics, the round's key and where its
    training came from (`reused_from`: null when this run trained it, else the run folder that did;
    engine.reuse)."""
    last = history[-1]
    total_sp, layer_sp = sparsity(imp.layers)
    total_eff, layer_eff = effective_sparsity(imp.model, imp.wiring)
    diag = diagnostics or {}
    entry = {
        "round": r, "sparsity": total_sp, "effective_sparsity": total_eff,
        "train_loss": last["train_loss"], "train_acc": last["train_acc"],
        "val_acc": last.get("val_acc", math.nan), "test_acc": test[1], "test_loss": test[0],
        "flipped_by_phi": diag.get("flipped_by_phi"), "flipped_vs_init": diag.get("flipped_vs_init"),
        "dead_zone": diag.get("dead_zone"), "dead_zone_count": diag.get("dead_zone_count"),
        "seconds": seconds, "round_key": key, "reused_from": reused_from,
        "layers": {n: {"sparsity": layer_sp[n], "effective_sparsity": layer_eff[n],
                       **diag.get("layers", {}).get(n, {})} for n in imp.layers},
        "epochs": history,
    }
    if seconds_packed is not None:
        entry["seconds_packed"] = seconds_packed
    if diag.get("rank_digests"):   # data-parallel: each process's digest of its masks and signs (all equal)
        entry["rank_digests"] = diag["rank_digests"]
    return entry


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

        self._write(step, summary=Summary(value=[Summary.Value(tag=k, simple_value=float(v))
                                                 for k, v in values.items() if v is not None]))

    def hparams(self, params: dict, metrics: dict) -> None:
        """The hparams plugin's three summaries (experiment, session start and end), and the metrics."""
        from torch.utils.tensorboard.summary import hparams

        self.scalars(metrics, step=0)
        for summary in hparams(params, metrics):
            self._write(0, summary=summary)

    def close(self) -> None:
        self.file.close()


class Recorder:
    """One run's TensorBoard events (`tb/`); a no-op on every rank but the first of a data-parallel run."""

    def __init__(self, run_dir, enabled: bool = True):
        self.events = EventFile(Path(run_dir) / "tb") if enabled else None

    def epoch(self, row: dict, step: int, tag: str = "epoch") -> None:
        if self.events is not None:
            self.events.scalars({f"{tag}/{k}": v for k, v in row.items() if k not in ("round", "epoch")}
                                | {f"{tag}/round": row["round"]}, step=step)

    def round(self, entry: dict, step: int) -> None:
        if self.events is None:
            return
        per_layer = {f"layer/{n}/{k}": v for n, d in entry["layers"].items() for k, v in d.items()
                     if k in LAYER_TAGS and v is not None}
        moved = entry.get("transfer") or {}   # sign_transfer: the transferred network of this level
        transfer = {f"transfer/{k}": moved[k] for k in TRANSFER_TAGS if moved.get(k) is not None}
        copy = entry.get("instability") or {}   # instability.enabled: the round's copy and the barrier
        stability = {f"instability/{k}": copy[k] for k in INSTABILITY_TAGS if copy.get(k) is not None}
        self.events.scalars({f"round/{k}": entry[k] for k in ROUND_TAGS if entry.get(k) is not None} | per_layer
                            | transfer | stability, step=step)

    def hparams(self, resolved: dict, final: dict) -> None:
        if self.events is not None:
            self.events.hparams(hparams(resolved), {"final/val_acc": final["val_acc"],
                                                    "final/test_acc": final["test_acc"]})

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None
