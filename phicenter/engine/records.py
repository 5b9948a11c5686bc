"""What a run records: its results.json skeleton, one entry per round, and its TensorBoard events (epoch, round,
per-layer and hparams), on one step axis across rounds: the global epoch index."""
from __future__ import annotations

import math

from phicenter.config import hparams
from phicenter.method.pruning import sparsity

ROUND_TAGS = ("val_acc", "test_acc", "sparsity", "flipped_by_phi", "flipped_vs_init", "dead_zone")
LAYER_TAGS = ("sparsity", "flipped_by_phi", "flipped_vs_init", "dead_zone")


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
    return out


def round_entry(r: int, imp, diagnostics: dict | None, history: list[dict], test: tuple[float, float],
                seconds: float, seconds_packed: float | None = None, key: str | None = None,
                reused_from: str | None = None) -> dict:
    """One round of results.json: the last epoch's metrics, the test split, the round boundary's diagnostics,
    the round's key and where its training came from (`reused_from`: null when this run trained it, else the
    run folder that did; engine.reuse)."""
    last = history[-1]
    total_sp, layer_sp = sparsity(imp.layers)
    diag = diagnostics or {}
    entry = {
        "round": r, "sparsity": total_sp, "train_loss": last["train_loss"], "train_acc": last["train_acc"],
        "val_acc": last.get("val_acc", math.nan), "test_acc": test[1], "test_loss": test[0],
        "flipped_by_phi": diag.get("flipped_by_phi"), "flipped_vs_init": diag.get("flipped_vs_init"),
        "dead_zone": diag.get("dead_zone"), "dead_zone_count": diag.get("dead_zone_count"),
        "seconds": seconds, "round_key": key, "reused_from": reused_from,
        "layers": {n: {"sparsity": layer_sp[n], **diag.get("layers", {}).get(n, {})} for n in imp.layers},
        "epochs": history,
    }
    if seconds_packed is not None:
        entry["seconds_packed"] = seconds_packed
    if diag.get("rank_digests"):   # data-parallel: each process's digest of its masks and signs (all equal)
        entry["rank_digests"] = diag["rank_digests"]
    return entry


class Recorder:
    """One run's TensorBoard events; a no-op on every rank but the first of a data-parallel run."""

    def __init__(self, run_dir, enabled: bool = True):
        self.logger = None
        if enabled:
            from pytorch_lightning.loggers import TensorBoardLogger

            self.logger = TensorBoardLogger(str(run_dir), name="tb", version="", default_hp_metric=False)

    def epoch(self, row: dict, step: int) -> None:
        if self.logger is not None:
            self.logger.log_metrics({f"epoch/{k}": v for k, v in row.items() if k not in ("round", "epoch")}
                                    | {"epoch/round": row["round"]}, step=step)

    def round(self, entry: dict, step: int) -> None:
        if self.logger is None:
            return
        per_layer = {f"layer/{n}/{k}": v for n, d in entry["layers"].items() for k, v in d.items()
                     if k in LAYER_TAGS and v is not None}
        self.logger.log_metrics({f"round/{k}": entry[k] for k in ROUND_TAGS if entry[k] is not None} | per_layer,
                                step=step)

    def hparams(self, resolved: dict, final: dict) -> None:
        if self.logger is not None:
            self.logger.log_hyperparams(hparams(resolved), metrics={"final/val_acc": final["val_acc"],
                                                                    "final/test_acc": final["test_acc"]})

    def close(self, status: str) -> None:
        if self.logger is not None:
            self.logger.finalize("success" if status == "complete" else "failed")
            self.logger = None
