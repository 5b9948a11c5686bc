"""Late rewinding (docs/method.md, "Late rewinding"): where in the `epochs`-epoch schedule each round trains.

Round 0 trains the whole schedule from theta0 and passes the rewind point theta_s, the state after its s-th
optimizer step (`rewind.step=s`, or `rewind.epoch=k`: s = k epochs of steps). Every round >= 1 starts from
theta_s at step s and trains to the end of the same schedule: the rest of epoch s // steps_per_epoch from its
batch s % steps_per_epoch, then the epochs after it, with the LR schedule at that epoch (Frankle et al., 2020;
open_lth). s = 0 is no late rewinding: every round trains the whole schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from phicenter.config import ConfigError, settings


def setting(cfg) -> tuple[int, int]:
    """(rewind.epoch, rewind.step) of a config; the schema allows at most one of them non-zero."""
    rewind = settings(cfg).rewind
    return rewind.epoch, rewind.step


def active(cfg) -> bool:
    """Whether the run rewinds to a point of round 0 other than theta0."""
    return any(setting(cfg))


@dataclass(frozen=True)
class Plan:
    """The rounds of one run on the schedule: `epochs` epochs of `steps_per_epoch` optimizer steps; rounds
    >= 1 start at step `step` (0: at the start)."""

    epochs: int
    step: int = 0
    steps_per_epoch: int = 1

    @classmethod
    def of(cls, cfg, epochs: int, steps_per_epoch: int) -> Plan:
        """The plan of a config whose epochs have `steps_per_epoch` steps (this process's, data-parallel);
        ConfigError when the rewind point is not inside round 0."""
        k, s = setting(cfg)
        step = s or k * steps_per_epoch
        total = epochs * steps_per_epoch
        if step >= total:
            what = f"rewind.step={s}" if s else f"rewind.epoch={k}"
            raise ConfigError(
                f"{what} is not inside round 0 ({epochs} epochs of {steps_per_epoch} steps = {total} "
                "optimizer steps): rounds >= 1 train from the rewind point to the end of round 0's "
                "schedule"
            )
        return cls(int(epochs), int(step), int(steps_per_epoch))

    def start(self, r: int) -> tuple[int, int]:
        """(epoch, batch) where round r starts training (0-based)."""
        return (0, 0) if r == 0 else divmod(self.step, self.steps_per_epoch)

    def fit_epochs(self, r: int) -> int:
        """The epochs round r's fit runs: epochs start..epochs-1, the first one partial when it starts mid-epoch."""
        return self.epochs - self.start(r)[0]

    def steps(self, r: int) -> int:
        """Optimizer steps round r trains."""
        return self.epochs * self.steps_per_epoch - (0 if r == 0 else self.step)

    def first_batch(self, r: int, epoch: int) -> int:
        """The batch epoch `epoch` of round r starts at: the rewind point's in its epoch, else 0."""
        e, b = self.start(r)
        return b if epoch == e else 0

    def position(self, r: int, epoch: float) -> float:
        """Epochs of training the run has done at (round r, `epoch` epochs into the schedule): the rounds before
        r whole, round r from its start to `epoch` (a round >= 1 trains epochs - step/steps_per_epoch)."""
        begins = 0.0 if r == 0 else self.step / self.steps_per_epoch
        before = 0.0 if r == 0 else self.epochs + (r - 1) * (self.epochs - begins)
        return before + max(0.0, epoch - begins)

    def total(self, last_round: int) -> float:
        """Epochs of training of rounds 0..last_round."""
        return self.position(last_round + 1, self.step / self.steps_per_epoch)


def plan(cfg, splits, world: int) -> Plan:
    """The Plan of a run on `splits`, trained by `world` data-parallel processes."""
    from phicenter.data.shards import batches_per_epoch

    s = settings(cfg)
    return Plan.of(s, s.epochs, batches_per_epoch(len(splits.y_train), s.batch_size, world))
