"""The instability of each round (Frankle, Dziugaite, Roy & Carbin, 2020; docs/method.md, "Instability
analysis"). With `instability.enabled`, after round r >= `instability.from_round` trains, a copy of it trains from
the same starting state with another data order (`instability.data_seed`, default seed + 1), and the error barrier
on the test split between the round's trained network and the copy is recorded in the round's entry
(`instability`). The copy is not part of the lineage: it is built, trained, measured and dropped, so the run's
rounds, keys and records are those of the run without the option. Each distinct copy is trained once: it goes to
the round store under its own key (the round's key and the data seed), and a cohort's members with one round key
share one copy.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from phicenter import data
from phicenter.config import settings
from phicenter.engine import build
from phicenter.engine.fit import clear, fit_round
from phicenter.engine.module import CohortModule
from phicenter.engine.rewinding import Plan
from phicenter.engine.roundstore import Entry
from phicenter.engine.rundir import is_writer
from phicenter.engine.transfer import AWSTraining
from phicenter.method import linear_path, pruning, seeding

log = logging.getLogger("phicenter")
TB_TAG = "instability_epoch"


def data_seed(cfg) -> int:
    """instability.data_seed, or by default seed + 1."""
    s = settings(cfg)
    return s.seed + 1 if s.instability.data_seed is None else s.instability.data_seed


def copy_key(round_key: str, seed: int) -> str:
    """The key of a round's copy: everything that fixes the round (its key) and the copy's data seed."""
    return hashlib.sha256(f"{round_key}|instability|data_seed={int(seed)}".encode()).hexdigest()


class FromRewind(Plan):
    """Round 0's copy under late rewinding trains as a round >= 1 does, from theta_s at step s to the end of the
    schedule: Frankle et al. train both copies from W_k."""

    def start(self, r: int) -> tuple[int, int]:
        return divmod(self.step, self.steps_per_epoch)


@dataclass
class Copy:
    """A round's trained copy, wherever it came from."""

    state: dict | None
    history: list
    test: tuple
    reused_from: str | None
    diverged: str | None = None
    seconds: float = 0.0


def _pp(x) -> str:
    return "—" if x is None else f"{100 * x:.2f} pp"


class Tagged:
    """A run's Recorder for the copy's fit: its epoch rows go to TensorBoard as instability_epoch/*, beside the
    round's epoch/* on the same step axis."""

    def __init__(self, recorder):
        self.recorder = recorder

    def epoch(self, row: dict, step: int) -> None:
        self.recorder.epoch(row, step, tag=TB_TAG)


class Instability:
    """The copies of one cohort's rounds and their barriers (a no-op when the option is off or in a dry run).
    `epochs_dir(job_dir, members, r)`: where the round loop keeps a round's epoch checkpoints; each copy keeps its
    own beside them, until the round is recorded, so a run killed in a copy's fit resumes that fit."""

    def __init__(self, cfg, splits, loaders, plan: Plan, device, impl: str, reuse, job_dir: Path, epochs_dir):
        s = settings(cfg)
        self.on = s.instability.enabled and not s.dry_run
        self.s, self.splits, self.plan, self.device, self.impl = s, splits, plan, device, impl
        self.eval_batches = loaders[1:]  # the round's validation and test batches: the copy scores on them too
        self.reuse, self.job_dir, self.epochs_dir = reuse, Path(job_dir), epochs_dir
        self.seed = data_seed(s) if self.on else None
        self.points, self.first = s.instability.points, s.instability.from_round
        self._batches = self._scratch = None

    def measured(self, r: int) -> bool:
        return self.on and r >= self.first

    def starts(self, members: list, r: int) -> list[dict] | None:
        """Each member's state at round r's start (after its boundary), taken before the round trains: what its
        copy starts from. Round 0 under late rewinding starts from theta_s instead, known once the round is
        trained (measure takes it then)."""
        if not self.measured(r) or (r == 0 and self.plan.step):
            return None
        return [{k: t.detach().clone() for k, t in m.net.state_dict().items()} for m in members]

    def measure(self, members: list, outcomes: list, starts: list[dict] | None, r: int) -> dict[int, dict | None]:
        """{member index: its record} for round r (None for a round before from_round); a member whose round
        diverged is left out. The members' nets hold their trained rounds."""
        if not self.on:
            return {}
        if not self.measured(r):
            return {i: None for i, o in enumerate(outcomes) if o.diverged is None}
        out, copies, paths = {}, {}, {}
        for i, (m, o) in enumerate(zip(members, outcomes)):
            if o.diverged is not None:
                continue
            key = copy_key(o.key, self.seed)
            if key not in copies:
                start = m.imp.rewind if starts is None else starts[i]
                copies[key] = self._copy(m, start, r, key)
            c = copies[key]
            if c.diverged is None and key not in paths:
                paths[key] = self._barrier(m.net.state_dict(), c.state)
            last = c.history[-1] if c.history and c.diverged is None else {}
            out[i] = {
                "data_seed": self.seed,
                "key": key,
                "reused_from": c.reused_from,
                "diverged": c.diverged,
                **(paths[key].record() if c.diverged is None else {"barrier": None}),
                "val_acc": last.get("val_acc"),
                "train_loss": last.get("train_loss"),
                "train_acc": last.get("train_acc"),
                "test_loss": c.test[0],
                "test_acc": c.test[1],
                "seconds": c.seconds,
                "epochs": c.history,
            }
            if c.reused_from is not None and m.recorder is not None:
                for row in c.history:
                    m.recorder.epoch(row, step=r * self.s.epochs + row["epoch"], tag=TB_TAG)
        log.info(
            "round %d instability (data seed %d)  %s",
            r,
            self.seed,
            "  ".join(
                f"{members[i].variant.name + ' ' if members[i].variant.name else ''}barrier {_pp(rec['barrier'])}"
                for i, rec in out.items()
            ),
        )
        return out

    def clear(self, members: list, r: int) -> None:
        """The copies' epoch checkpoints of round r, once the round is recorded."""
        if self.measured(r) and is_writer():
            for m in members:
                clear(self._folder(m, r))

    # ---------------------------------------------------------------- the copy

    def _folder(self, m, r: int) -> Path:
        folder = self.epochs_dir(self.job_dir, [m], r)
        return folder.with_name(folder.name.replace("_epochs", "_instability_epochs"))

    def _copy(self, m, start: dict, r: int, key: str) -> Copy:
        """Member m's copy of round r: from the round store, else trained here (resumed from its last epoch
        checkpoint when a kill interrupted it) and published, unless its fit was resumed (part of it may have
        been trained under another key)."""
        shared = self.reuse.shared
        entry = self.reuse.store.get(key, log.warning, like=start) if shared else None
        if entry is not None:
            return Copy(entry.model, [dict(row) for row in entry.history], tuple(entry.test), entry.first_run)
        t0 = time.perf_counter()
        s = self.s
        net = build.build_model(s, self.splits)
        pruning.attach_masks(net)
        net.load_state_dict(start)
        plan = (
            FromRewind(self.plan.epochs, self.plan.step, self.plan.steps_per_epoch)
            if r == 0 and self.plan.step
            else self.plan
        )
        train_b = data.loaders(s, self.splits, s.batch_size, self.seed, group=data.STEPS_PER_CALL)[0]
        torch.manual_seed(seeding.derive(self.seed, "round", r))  # as a run of the data seed's round r
        module = CohortModule(
            [net],
            s.optim,
            s.schedule,
            impl=self.impl,
            device=self.device,
            recorders=[None if m.recorder is None else Tagged(m.recorder)],
            aws=AWSTraining.of([m], [net], seed=self.seed),
        )
        module.phase = "instability"
        folder, batches, what = self._folder(m, r), (train_b, *self.eval_batches), f"the instability copy of round {r}"
        fitted = fit_round(
            module, s, r, batches, self.device, folder, [m.folder.digest], s.epochs, plan, what=what, apart=True
        )
        diverged = fitted.diverged or module.diverged.get(0)
        test = tuple(module.last_test[0]) if diverged is None else (None, None)
        state = {k: t.detach().to("cpu") for k, t in net.state_dict().items()}
        if shared and diverged is None and fitted.resumed_from is None and is_writer():
            self.reuse.store.put(Entry(key, r, str(m.folder.path.resolve()), state, module.history[0], test))
        return Copy(state, [dict(row) for row in module.history[0]], test, None, diverged, time.perf_counter() - t0)

    # ---------------------------------------------------------------- the barrier

    def _barrier(self, trained: dict, copy: dict) -> linear_path.LinearPath:
        """The test error on the linear path from the round's trained network to its copy (analysis.barrier:
        effective weights, BatchNorm statistics recomputed at every alpha)."""
        if self._batches is None:
            self._batches = data.path_batches(self.s, self.splits, "test", self.device)
            self._scratch = build.build_model(self.s, self.splits).to(self.device)
        eval_b, train_b = self._batches
        on = lambda s: {k: t.to(self.device) for k, t in linear_path.effective_state(s).items()}
        return linear_path.linear_path(
            self._scratch,
            on(trained),
            on(copy),
            linear_path.grid(self.points),
            eval_b,
            train_b if linear_path.has_batchnorm(self._scratch) else None,
        )
