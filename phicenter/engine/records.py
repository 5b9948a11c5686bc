"""What a run records: its results.json skeleton, one entry per round, and its scalars (epoch, round,
per-layer) and hparams, on one step axis across rounds: the global epoch index, for each of the run's loggers
(phicenter.loggers: TensorBoard by default)."""

from __future__ import annotations

import math
from pathlib import Path

from phicenter.config import hparams, settings
from phicenter.method.pruning import sparsity
from phicenter.method.units import effective_sparsity

ROUND_TAGS = ("val_acc", "test_acc", "sparsity", "effective_sparsity", "flipped_by_phi", "flipped_vs_init", "dead_zone")
TRANSFER_TAGS = ("val_acc", "test_acc", "flipped_by_phi", "flipped_vs_init", "dead_zone")  # sign_transfer
LAYER_TAGS = ("sparsity", "effective_sparsity", "flipped_by_phi", "flipped_vs_init", "dead_zone")
INSTABILITY_TAGS = ("barrier", "val_acc", "test_acc")  # instability.enabled: the round's copy and the barrier
COHORT = "cohort"  # results.json: the variants a run trained its last round with, and the forward's impl
EARLIER_COHORT = "packed"  # the same record, as results.json files of earlier versions name it


def cohort_of(record: dict) -> dict | None:
    """A run's cohort record ({"variants": [...], "impl": ...}), None for a run trained alone; read under its
    earlier name too."""
    return record.get(COHORT) or record.get(EARLIER_COHORT)


def set_cohort(record: dict, variants: list[str], impl: str | None) -> None:
    """The cohort a run trained this round with; `impl` None (every variant took its round from the store)
    keeps the last recorded one. A record of an earlier version is written under the current name."""
    last = cohort_of(record) or {}
    record.pop(EARLIER_COHORT, None)
    record[COHORT] = {"variants": variants, "impl": impl or last.get("impl")}


def skeleton(resolved: dict, cfg, splits, net, rounds: list, cohort: list[str] | None = None) -> dict:
    """results.json before its first round is trained (a resumed run keeps the rounds it has); `threads`: the
    torch CPU threads of this launch (its timing fields depend on them)."""
    import torch

    from phicenter.models import parameter_counts

    s = settings(cfg)
    out = {
        "config": resolved,
        "rounds": rounds,
        "final": rounds[-1] if rounds else None,
        "status": "running",
        "device": None,
        "threads": torch.get_num_threads(),
        "precision": str(s.trainer.precision),
        "init": s.model.init,
        "model_parameters": parameter_counts(net),
        "data": {
            "train": len(splits.y_train),
            "val": len(splits.y_val),
            "test": len(splits.y_test),
            "input_shape": list(splits.input_shape),
            "num_classes": splits.num_classes,
        },
    }
    if cohort:
        out[COHORT] = {"variants": cohort, "impl": None}
    from phicenter.engine import transfer

    if transfer.transfers(s):
        out["transfer_seed"] = transfer.transfer_seed(s)
    return out


def round_entry(
    r: int,
    imp,
    diagnostics: dict | None,
    history: list[dict],
    test: tuple[float, float],
    seconds: float,
    seconds_packed: float | None = None,
    key: str | None = None,
    reused_from: str | None = None,
) -> dict:
    """One round of results.json: the last epoch's metrics, the test split, the pruned and the effective
    sparsity of the trained net (method.units), the round boundary's diagnostics, the round's key and where its
    training came from (`reused_from`: null when this run trained it, else the run folder that did;
    engine.reuse)."""
    last = history[-1]
    total_sp, layer_sp = sparsity(imp.layers)
    total_eff, layer_eff = effective_sparsity(imp.model, imp.wiring)
    diag = diagnostics or {}
    entry = {
        "round": r,
        "sparsity": total_sp,
        "effective_sparsity": total_eff,
        "train_loss": last["train_loss"],
        "train_acc": last["train_acc"],
        "val_acc": last.get("val_acc", math.nan),
        "test_acc": test[1],
        "test_loss": test[0],
        "flipped_by_phi": diag.get("flipped_by_phi"),
        "flipped_vs_init": diag.get("flipped_vs_init"),
        "dead_zone": diag.get("dead_zone"),
        "dead_zone_count": diag.get("dead_zone_count"),
        "seconds": seconds,
        "round_key": key,
        "reused_from": reused_from,
        "layers": {
            n: {"sparsity": layer_sp[n], "effective_sparsity": layer_eff[n], **diag.get("layers", {}).get(n, {})}
            for n in imp.layers
        },
        "epochs": history,
    }
    if seconds_packed is not None:
        entry["seconds_packed"] = seconds_packed
    if diag.get("rank_digests"):  # data-parallel: each process's digest of its masks and signs (all equal)
        entry["rank_digests"] = diag["rank_digests"]
    return entry


class Recorder:
    """One run's scalars and hparams, emitted once to every logger the run has (phicenter.loggers; by default
    TensorBoard's `tb/`); a no-op on every rank but the first of a data-parallel run. `loggers`: {name:
    options} (phicenter.loggers.selected; None: TensorBoard alone); `params`: the run's hparams, for the
    loggers that show them while it trains."""

    def __init__(self, run_dir, enabled: bool = True, loggers: dict | None = None, params: dict | None = None):
        from phicenter.loggers import open_sinks

        loggers = {"tensorboard": {}} if loggers is None else loggers
        self.sinks = open_sinks(Path(run_dir), loggers, params or {}) if enabled else []

    def _emit(self, values: dict, step: int) -> None:
        for sink in self.sinks:
            sink.scalars(values, step)

    def epoch(self, row: dict, step: int, tag: str = "epoch") -> None:
        if self.sinks:
            self._emit(
                {f"{tag}/{k}": v for k, v in row.items() if k not in ("round", "epoch")}
                | {f"{tag}/round": row["round"]},
                step=step,
            )

    def round(self, entry: dict, step: int) -> None:
        if not self.sinks:
            return
        per_layer = {
            f"layer/{n}/{k}": v
            for n, d in entry["layers"].items()
            for k, v in d.items()
            if k in LAYER_TAGS and v is not None
        }
        moved = entry.get("transfer") or {}  # sign_transfer: the transferred network of this round
        transfer = {f"transfer/{k}": moved[k] for k in TRANSFER_TAGS if moved.get(k) is not None}
        copy = entry.get("instability") or {}  # instability.enabled: the round's copy and the barrier
        stability = {f"instability/{k}": copy[k] for k in INSTABILITY_TAGS if copy.get(k) is not None}
        self._emit(
            {f"round/{k}": entry[k] for k in ROUND_TAGS if entry.get(k) is not None} | per_layer | transfer | stability,
            step=step,
        )

    def hparams(self, resolved: dict, final: dict) -> None:
        """At the end of a complete run: the final metrics (as scalars at step 0, and beside the hparams)."""
        metrics = {"final/val_acc": final["val_acc"], "final/test_acc": final["test_acc"]}
        params = hparams(resolved)
        self._emit(metrics, step=0)
        for sink in self.sinks:
            sink.hparams(params, metrics)

    def close(self, status: str = "running") -> None:
        """`status`: how the run stands (results.json's status; running when it was stopped)."""
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close(status)
