"""How far a run is, per epoch: a live progress bar when stdout is a terminal, one log line per epoch when it is
not (a SLURM log, CI, `> log`). `trainer.enable_progress_bar=true` or `false` forces one or the other.

Both read only what the module already holds on the host (its per-epoch history rows, reduced once at the end
of each epoch): nothing here syncs the device. So the bar shows the round, the epoch, the step count, the
previous epoch's loss and validation accuracy and the run's ETA; the line, written once an epoch's numbers
exist, shows that epoch's. A cohort of K > 1 variants gets one line: the range of its variants' values; so
does its end-of-round line (`round_line`), which also names the variant with the best validation accuracy.
"""

from __future__ import annotations

import logging
import math
import sys
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

log = logging.getLogger("phicenter")


def wants_bar(setting) -> bool:
    """trainer.enable_progress_bar: true or false as given; null (the default) a bar when stdout is a terminal."""
    if setting is None:
        return sys.stdout.isatty()
    return bool(setting)


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def span(rows: list[dict], key: str, spec: str) -> str | None:
    """The range of `key` over `rows`, 'lo-hi' (one number where they agree); None where no row has a finite
    value."""
    values = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    if not values:
        return None
    lo, hi = min(values), max(values)
    return format(lo, spec) if lo == hi else f"{lo:{spec}}-{hi:{spec}}"


def summary(history: list[list[dict]], diverged=()) -> str:
    """The last epoch of each variant: 'loss 0.4123  val 0.9012', or for K > 1 the range over the variants."""
    rows = [h[-1] for i, h in enumerate(history) if h and i not in diverged]
    if not rows:
        return ""
    parts = [
        f"{name} {v}"
        for name, v in (("loss", span(rows, "train_loss", ".4f")), ("val", span(rows, "val_acc", ".4f")))
        if v is not None
    ]
    if len(history) > 1:
        parts.insert(0, f"{len(history) - len(diverged)} variants:")
        if diverged:
            parts.append(f"({len(diverged)} diverged)")
    return "  ".join(parts)


def round_line(finals: dict[str, dict], started: int) -> str:
    """The numbers of a round's log line. One variant: its sparsity and accuracies ('sparsity 0.590 (effective
    0.600)  val 0.9444  test 0.9361', its name first when it has one). K > 1 (`started`: the variants that
    began the round; `finals`: {name: final row} of those still alive after it): the range of each number over
    them and the name of the one with the best validation accuracy, one line of about 150 characters whatever
    K is (each variant's numbers are in its results.json and logger)."""
    rows = list(finals.values())
    if started <= 1:
        return "".join(
            f"{name + ' ' if name else ''}sparsity {f['sparsity']:.3f} (effective {f['effective_sparsity']:.3f})  "
            f"val {f['val_acc']:.4f}  test {f['test_acc']:.4f}  "
            for name, f in finals.items()
        )
    shown = [
        ("sparsity", span(rows, "sparsity", ".3f")),
        ("effective", span(rows, "effective_sparsity", ".3f")),
        ("val", span(rows, "val_acc", ".4f")),
        ("test", span(rows, "test_acc", ".4f")),
    ]
    parts = [f"{len(rows)} variants:", *(f"{k} {v}" for k, v in shown if v is not None)]
    ranked = [(f["val_acc"], n) for n, f in finals.items() if math.isfinite(f.get("val_acc") or math.nan)]
    if ranked:  # the first of the best, as the report's choice on validation
        parts.append(f"best {max(ranked, key=lambda x: x[0])[1]}")
    if len(rows) < started:
        parts.append(f"({started - len(rows)} diverged)")
    return "  ".join(parts) + "  "


def steps_per_epoch(batches) -> int:
    """Optimizer steps in one epoch of a round loop's training batches (this process's shard of them)."""
    return batches.n_batches()


class RunClock:
    """Wall time against the run's position (epochs into it), across the Trainers of its rounds: the ETA of the
    run's remaining epochs at the rate of those done so far in this process. A cohort trained after another
    (a new set of nets) starts the clock again."""

    def __init__(self):
        self.key, self.t0, self.pos0 = None, 0.0, 0.0

    def start(self, key, position: float) -> None:
        if key != self.key:
            self.key, self.t0, self.pos0 = key, time.perf_counter(), position

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def eta(self, key, position: float, total: float) -> float | None:
        self.start(key, position)
        done, elapsed = position - self.pos0, self.elapsed()
        return None if done <= 0 or elapsed <= 0 else (total - position) * elapsed / done


CLOCK = RunClock()


class Where:
    """The run's position from the cohort module: round r of 0..last, epoch e of each round's schedule (the
    module's plan: under late rewinding, rounds >= 1 train only from the rewind point on, engine.rewinding)."""

    def __init__(self, last_round: int):
        self.last = int(last_round)

    def text(self, trainer, module, epoch: int) -> str:
        phase = f" {module.phase}" if getattr(module, "phase", "") else ""
        return f"round {module.round}/{self.last}{phase}  epoch {epoch + 1}/{module.plan.epochs}"

    def _key(self, module):
        if getattr(module, "phase", "") and CLOCK.key is not None:  # a fit within the round: the run's clock
            return CLOCK.key
        return tuple(id(n) for n in module.nets)

    def start(self, trainer, module) -> None:
        CLOCK.start(self._key(module), module.plan.position(module.round, module.round_epoch))

    def eta(self, trainer, module, epoch: float) -> str:
        """The run's ETA at `epoch` epochs into the current round's schedule."""
        plan = module.plan
        return duration(CLOCK.eta(self._key(module), plan.position(module.round, epoch), plan.total(self.last)))


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, one per round: 'round 3/10  epoch 12/80' and the step count of the epoch, with the
    previous epoch's loss and val accuracy and the run's ETA beside it. No bar for the test pass."""

    def __init__(self, last_round: int):
        super().__init__(leave=False)
        self.where = Where(last_round)
        self.fraction = 0.0

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self.where.start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module):
        self.fraction = 0.0
        super().on_train_epoch_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.set_description(self.where.text(trainer, pl_module, pl_module.round_epoch))
        bar.unit, bar.total = "step", steps_per_epoch(pl_module.train_batches)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        """The bar counts optimizer steps (a Lightning batch carries a group of them, data.Batches)."""
        bar, total = self.train_progress_bar, steps_per_epoch(pl_module.train_batches)
        n = min((batch_idx + 1) * getattr(pl_module.train_batches, "group", 1), total)
        self.fraction = n / total if total else 0.0
        if not bar.disable and ((batch_idx + 1) % max(1, self.refresh_rate) == 0 or n == total):
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def get_metrics(self, trainer, pl_module):
        out = {"run ETA": self.where.eta(trainer, pl_module, pl_module.round_epoch + self.fraction)}
        last = summary(pl_module.history, pl_module.diverged)
        if last:
            out["last epoch"] = last
        return out

    def init_test_tqdm(self):
        return Tqdm(disable=True)


class EpochLines(pl.Callback):
    """One log line per epoch on the first process: 'round 3/10  epoch 12/80  loss ...  val ...' with the time
    elapsed and the run's ETA. Callbacks run before the module's own epoch-end hook, which makes the epoch's
    numbers, so each line is written as the next epoch starts, or as the fit ends."""

    def __init__(self, last_round: int):
        self.where = Where(last_round)
        self.shown: set[int] = set()

    def _epochs(self, module) -> set[int]:
        return {row["epoch"] for h in module.history for row in h}

    def on_train_start(self, trainer, pl_module):
        self.shown = self._epochs(pl_module)  # resumed mid-round: those epochs were reported before
        self.where.start(trainer, pl_module)

    def _report(self, trainer, module) -> None:
        if not trainer.is_global_zero:
            return
        for e in sorted(self._epochs(module) - self.shown):
            self.shown.add(e)
            rows = [[row for row in h if row["epoch"] == e] for h in module.history]
            log.info(
                "%s  %s  (%s elapsed, run ETA %s)",
                self.where.text(trainer, module, e),
                summary(rows, module.diverged),
                duration(CLOCK.elapsed()),
                self.where.eta(trainer, module, e + 1),
            )

    def on_train_epoch_start(self, trainer, pl_module):
        self._report(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._report(trainer, pl_module)


def callback(setting, last_round: int) -> pl.Callback:
    """The bar or the lines, for trainer.enable_progress_bar's `setting`."""
    return ProgressBar(last_round) if wants_bar(setting) else EpochLines(last_round)
