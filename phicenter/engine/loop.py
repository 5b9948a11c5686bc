"""The round loop, the one engine: round 0 trains theta0 dense; rounds 1..N prune, re-sign, reinit and retrain.

The unit trained is a cohort (engine.cohort): K variants that share theta0 and the data order. A single run
is a cohort of one. `train_cohort` is a short loop over rounds, and each round (`play_round`) takes named steps
(`Rounds`): the boundary (the PhiCenterPruning callback does every variant's with the unchanged method, before the
fit); the round store's plan (engine.reuse: a variant whose round key is in the store takes its round from
there, and variants with equal keys train as one); the fit, one fresh Lightning fit of the cohort's module
(engine.fit: a fresh optimizer and schedule; under late rewinding a round >= 1 fits from the rewind point on,
engine.rewinding); the store's take and publish; the sign transfer (engine.transfer) and the instability copy
(engine.instability), which do nothing for a run without them; the record. Every completed round is
checkpointed in each variant's folder and every epoch in the cohort's, so a relaunch in the same folder resumes
where it stopped.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch
from omegaconf import DictConfig

from phicenter import data, loggers
from phicenter.config import config_digest, hparams, recorded_config
from phicenter.engine import build, records, rewinding, transfer
from phicenter.engine.boundary import PhiCenterPruning
from phicenter.engine.callbacks import RewindPoint
from phicenter.engine.cohort import PACK_SUMMARY, Variant, check_variants, single
from phicenter.engine.fit import clear, fit_round
from phicenter.engine.halving import FINISHED, halve
from phicenter.engine.halving import summary as halving_summary
from phicenter.engine.instability import Instability
from phicenter.engine.member import Member, close_members, is_oom, open_member, record_failure
from phicenter.engine.module import CohortModule
from phicenter.engine.reuse import Reuse
from phicenter.engine.rundir import CKPT_DIR, RunFolder, is_writer, locked
from phicenter.io import write_json
from phicenter.method import seeding

log = logging.getLogger("phicenter")


class CohortFailed(RuntimeError):
    """Some variants failed or diverged (each one's results.json says how); the others completed."""

    def __init__(self, message: str, statuses: dict[str, str]):
        super().__init__(message)
        self.statuses = statuses


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train every round of one configuration into run_dir; returns the results dict (also results.json)."""
    return train(single(cfg), run_dir)[""]


def train(
    variants: list[Variant],
    job_dir: str | Path,
    chunk: int | None = None,
    impl: str = "auto",
    on_start: Callable[[], None] | None = None,
    halving: bool = False,
) -> dict:
    """Train the variants as cohorts of at most `chunk` (None: all), each into job_dir/<variant.name>; with
    `halving`, as one cohort that loses half its variants after each round (engine.halving).
    Returns {name: results dict}. Complete variants are skipped; the others resume from their last completed
    epoch. Raises CohortFailed, after every variant has been tried, when some failed. Each variant's folder is
    locked while the job works in it (rundir.locked: FolderBusy when another process works there). `on_start`
    is called once every folder has passed its checks, before any work."""
    with ExitStack() as held:
        for var in variants if is_writer() else ():
            held.enter_context(locked(Path(job_dir) / var.name))
        return _train(variants, Path(job_dir), chunk, impl, on_start, halving)


def _train(variants: list[Variant], job_dir: Path, chunk: int | None, impl: str, on_start, halving=False) -> dict:
    t_start = time.perf_counter()
    check_variants(variants)
    s0 = variants[0].settings
    build.arm_write_fault(s0)
    if chunk is not None and (isinstance(chunk, bool) or int(chunk) < 1):
        from phicenter.config import ConfigError

        raise ConfigError(f"pack_chunk must be a positive integer or null, got {chunk!r}")
    if halving and chunk is not None:
        from phicenter.config import ConfigError

        raise ConfigError("pack_halving=true trains every variant in one cohort; leave pack_chunk null")
    done, pending = {}, []
    for i, var in enumerate(variants):  # before any work: every folder must hold its own configuration
        folder, resume = RunFolder(job_dir / var.name), var.settings.resume
        if resume:
            resolved = recorded_config(var.cfg, var.settings.phi)
            prev = folder.check_resume(resolved, config_digest(resolved))
        else:
            prev = folder.read()
        if resume and prev and prev.get("status") in FINISHED:
            log.info("run in %s is already %s; nothing to do", folder.path, prev["status"])
            done[var.name] = prev
        else:
            pending.append(i)
    if on_start is not None:
        on_start()
    if s0.threads:
        torch.set_num_threads(s0.threads)
    if pending:
        splits = build.load_data(s0)
        if rewinding.active(s0):  # the rewind point must lie inside round 0: checked before any work
            rewinding.plan(s0, splits, build.make_trainer(s0, [], 1).world_size)
        if s0.dry_run:
            return {variants[pending[0]].name: dry_run(variants, pending, job_dir, splits)}
        size = int(chunk) if chunk else len(pending)
        queue = [pending[i : i + size] for i in range(0, len(pending), size)]
        _train_queue(variants, queue, job_dir, splits, impl, done, halving)
    statuses = {v.name: (done.get(v.name) or {}).get("status", "missing") for v in variants}
    if len(variants) > 1 and is_writer():
        summary = {"variants": statuses, "chunk": chunk, "seconds": time.perf_counter() - t_start}
        if halving:
            summary["halving"] = halving_summary(done)
            log.info("successive halving: %s", summary["halving"])
        write_json(job_dir / PACK_SUMMARY, summary)
    bad = {n: s for n, s in statuses.items() if s not in FINISHED}
    if bad:
        raise CohortFailed(
            f"{len(bad)} of {len(variants)} runs did not complete: "
            + ", ".join(f"{n or job_dir} ({s})" for n, s in bad.items()),
            statuses,
        )
    return {v.name: done[v.name] for v in variants}


def _train_queue(variants, queue: list[list[int]], job_dir: Path, splits, impl: str, done: dict, halving=False):
    while queue:
        group = queue.pop(0)
        members = {i: open_member(variants[i], job_dir, splits, len(variants) > 1) for i in group}
        for i, m in list(members.items()):
            if isinstance(m, dict):  # complete
                done[variants[i].name] = members.pop(i)
        if not members:
            continue
        # variants resumed from different rounds cannot share a cohort: the earliest go now, the rest later
        start = min(m.start for m in members.values())
        now = [i for i, m in members.items() if m.start == start]
        if len(now) < len(members):
            queue.insert(0, [i for i in members if i not in now])
        cohort = [members[i] for i in now]
        del members
        try:
            train_cohort(cohort, start, splits, job_dir, impl, halving=halving)
        except Exception as e:
            if is_oom(e) and len(cohort) > 1:
                half = (len(now) + 1) // 2
                log.warning(
                    "out of memory with %d variants in one cohort; retrying in cohorts of %d from "
                    "their last completed round",
                    len(cohort),
                    half,
                )
                close_members(cohort)
                cohort = None
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                queue[:0] = [now[:half], now[half:]]
                continue
            record_failure(cohort, e)  # (a SIGTERM is a SystemExit: phicenter.train records it)
        finally:
            if cohort is not None:
                close_members(cohort)
        for m in cohort:
            done[m.variant.name] = m.record


def epochs_dir(job_dir: Path, cohort: list[Member], r: int) -> Path:
    """The cohort's epoch checkpoints: in the run's own folder for a single run, else under the job folder,
    named by the cohort's members (a relaunch of the same cohort finds them)."""
    if len(cohort) == 1 and cohort[0].folder.path == job_dir:
        return job_dir / CKPT_DIR / f"round_{r:03d}_epochs"
    names = "\n".join(m.variant.name for m in cohort)
    return job_dir / CKPT_DIR / f"cohort_{hashlib.sha1(names.encode()).hexdigest()[:10]}" / f"round_{r:03d}_epochs"


def _module(cohort: list[Member], impl: str, device) -> CohortModule:
    nets, s = [m.net for m in cohort], cohort[0].settings
    return CohortModule(
        nets,
        s.optim,
        s.schedule,
        impl=impl,
        device=device,
        recorders=[m.recorder for m in cohort],
        aws=transfer.AWSTraining.of(cohort, nets),
    )


class Rounds:
    """What the rounds of one cohort share, and the steps each round takes: the boundary, the round store's
    plan, take and publish (engine.reuse), the fit (engine.fit), the sign transfer (engine.transfer) and the
    instability copy (engine.instability), the last two doing nothing for a run that does not use them."""

    def __init__(self, members: list[Member], splits, job_dir: Path, impl: str):
        cfg, s = members[0].variant.cfg, members[0].settings
        self.s, self.job_dir, self.impl = s, job_dir, impl
        self.loaders = data.loaders(s, splits, s.batch_size, s.seed, group=data.STEPS_PER_CALL)
        probe = build.make_trainer(s, [], s.epochs)  # the device, and whether this run is one process
        self.device = probe.strategy.root_device
        self.plan = rewinding.plan(s, splits, probe.world_size)
        self.reuse = Reuse(cfg, splits, self.device.type, world_size=probe.world_size, impl=impl, log=log.warning)
        self.transfer = transfer.Transfer(splits, self.loaders, job_dir, impl, self.device, epochs_dir)
        self.copies = Instability(
            cfg, splits, self.loaders, self.plan, self.device, impl, self.reuse, job_dir, epochs_dir
        )
        self.module: CohortModule | None = None

    def boundary(self, alive: list[Member], r: int) -> PhiCenterPruning:
        """Round r's seed and every variant's round boundary, done before the fit: the round key is taken on
        the state after it (engine.reuse)."""
        build.fault_point(self.s, r)
        torch.manual_seed(seeding.derive(self.s.seed, "round", r))  # anything random in training: (seed, round)
        cb = PhiCenterPruning.for_round([m.imp for m in alive], r)
        cb.apply()
        return cb

    def fit(self, trained: list[Member], cb: PhiCenterPruning, r: int) -> None:
        """One fit of the members that train round r; the module is rebuilt when the members trained change.
        Round 0 under late rewinding also takes each variant's rewind point (RewindPoint)."""
        s = trained[0].settings
        callbacks = [cb]
        if r == 0 and self.plan.step:
            callbacks.append(RewindPoint([m.imp for m in trained], [m.folder for m in trained], self.plan.step))
        if self.module is None or self.module.nets != [m.net for m in trained]:
            self.module = _module(trained, self.impl, self.device)
        else:
            self.module.gather()  # the boundary changed the members' nets
        folder, digests = epochs_dir(self.job_dir, trained, r), [m.folder.digest for m in trained]
        fit_round(self.module, s, r, self.loaders, self.device, folder, digests, s.epochs, self.plan, callbacks)

    def clear(self, alive: list[Member], trained: list[Member], r: int) -> None:
        """Round r's epoch checkpoints, once it is recorded (with nothing trained: what an earlier launch left
        of it), and its copies'."""
        if is_writer():
            clear(epochs_dir(self.job_dir, trained or alive, r))
        self.copies.clear(alive, r)


def train_cohort(
    members: list[Member],
    start: int,
    splits,
    job_dir: Path,
    impl: str = "auto",
    last_round: int | None = None,
    halving: bool = False,
) -> CohortModule | None:
    """Rounds start..last_round (default: prune.iterations) of one cohort, into its members' folders; returns
    the module of the last fit (None: nothing trained). With `halving`, the worse half of the live variants
    stop after each round (engine.halving)."""
    s = members[0].settings
    last_round = s.prune.iterations if last_round is None else last_round
    for m in members:
        m.recorder = records.Recorder(
            m.folder.path, enabled=is_writer(), loggers=loggers.selected(m.settings), params=hparams(m.resolved)
        )
    rounds = Rounds(members, splits, job_dir, impl)
    for r in range(start, last_round + 1):
        alive = [m for m in members if m.alive]
        if not alive:
            break
        play_round(rounds, alive, r)
        if halving:
            halve([m for m in alive if m.alive], r, last_round)
    for m in members:
        if m.alive and m.record.get("final") is not None and last_round == s.prune.iterations:
            m.record["status"] = "complete"
            m.folder.write(m.record)
            m.recorder.hparams(m.resolved, m.record["final"])
    return rounds.module


def play_round(c: Rounds, alive: list[Member], r: int) -> None:
    """Round r of the live variants: the boundary; the round store's plan (one representative per distinct
    round key not in the store trains); the fit; each variant takes its round, and what trained here is
    published; the transfer; the record (the round's seconds count the transfer, not the instability copy)."""
    t0 = time.perf_counter()
    cb = c.boundary(alive, r)
    trained, sources = c.reuse.plan(alive, r)
    starts = c.copies.starts(alive, r)  # what each copy starts from, before the round trains
    if trained:
        c.fit(trained, cb, r)
    outcomes = c.reuse.take(alive, sources, trained, c.module, r, c.s.epochs)
    c.reuse.publish(alive, outcomes, r)
    extra = {"transfer": c.transfer.stage_two(alive, outcomes, r)}
    seconds = time.perf_counter() - t0
    extra["instability"] = c.copies.measure(alive, outcomes, starts, r)
    impl = c.module.impl if trained else None
    record_round(alive, outcomes, cb, r, seconds, str(c.device), impl, extra)
    c.clear(alive, trained, r)


def record_round(
    alive: list[Member],
    outcomes: list,
    cb: PhiCenterPruning,
    r: int,
    seconds: float,
    device: str,
    impl: str | None,
    extra: dict[str, dict] | None = None,
) -> None:
    """Each variant's round record, TensorBoard events and round checkpoint. `impl`: the module that trained
    this round (None: every variant took its round from the store); `extra`: {entry field: {variant index:
    its record}} of the optional steps (`transfer`: engine.transfer; `instability`: engine.instability)."""
    s = alive[0].settings
    in_cohort = len(alive) > 1 or records.cohort_of(alive[0].record) is not None
    for i, (m, out) in enumerate(zip(alive, outcomes)):
        if out.diverged is not None:
            m.fail("diverged", f"Diverged: {out.diverged}")
            continue
        entry = records.round_entry(
            r,
            m.imp,
            cb.diagnostics[i] if cb.diagnostics else None,
            out.history,
            out.test,
            seconds / len(alive),
            seconds if in_cohort else None,
            key=out.key,
            reused_from=out.reused_from,
        )
        for field, by_index in (extra or {}).items():
            if i in by_index:
                entry[field] = by_index[i]
        m.rounds.append(entry)
        m.recorder.round(entry, step=(r + 1) * s.epochs - 1)
        m.record.update(final=entry, device=device)
        if in_cohort:
            records.set_cohort(m.record, [a.variant.name for a in alive], impl)
        m.folder.save_round(
            r, {"round": r, "model": m.net.state_dict(), "rounds": m.rounds}, keep_all=s.checkpoint.keep_all
        )
        m.folder.write(m.record)
    _log_round(alive, outcomes, r, seconds)


def _log_round(alive: list[Member], outcomes: list, r: int, seconds: float) -> None:
    """The round's one log line: the live variant's sparsity and accuracies (K > 1: their ranges and the best
    variant, engine.progress.round_line), the time, what was reused."""
    from phicenter.engine.progress import round_line

    reused = sum(o.reused_from is not None for o in outcomes)
    log.info(
        "round %d/%d  %s(%.1fs%s)",
        r,
        alive[0].settings.prune.iterations,
        round_line({m.variant.name: m.record["final"] for m in alive if m.alive}, len(alive)),
        seconds,
        f", {reused} of {len(alive)} reused" if reused else "",
    )


def dry_run(variants: list[Variant], pending: list[int], job_dir: Path, splits) -> dict:
    """`dry_run=phi`: round 0 is the same for every variant of a cohort, so it is trained once (the first
    variant); then, for each (strategy, phi), count the survivors phi would re-sign at round 1. The grid is
    dry_run_grid, else the cohort's own phi x strategy (K > 1), else the paper's."""
    from phicenter.method import dryrun

    first = open_member(variants[pending[0]], job_dir, splits, len(variants) > 1)
    if isinstance(first, dict):  # complete: its trained round 0 is in its round checkpoints
        raise RuntimeError(f"dry_run=phi needs a folder whose run has not completed; {job_dir} has")
    if first.start == 0:
        train_cohort([first], 0, splits, job_dir, last_round=0)
        close_members([first])
    grid = variants[0].settings.dry_run_grid
    own = len(variants) > 1
    phis = grid.phis or (sorted({v.settings.phi for v in variants}) if own else dryrun.PAPER_PHIS)
    names = grid.strategies or (
        list(dict.fromkeys(x.settings.strategy.name for x in variants)) if own else dryrun.PAPER_STRATEGIES
    )
    rows = dryrun.phi_table(first.imp, phis=phis, strategy_names=names)
    print(dryrun.format_table(rows), flush=True)
    out = dict(first.record, status="dry_run", dry_run={"round": 1, "rows": rows})
    if is_writer():
        write_json(job_dir / "dry_run.json", out)
    first.folder.write(out)
    return out
