"""A variant while it trains (Member): opened from its run folder, resumed from its last round checkpoint, and
closed or marked failed when its cohort stops."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from phicenter.config import config_digest, recorded_config
from phicenter.engine import build, records, rewinding
from phicenter.engine.cohort import Variant
from phicenter.engine.halving import FINISHED
from phicenter.engine.module import Diverged
from phicenter.engine.rundir import RESUME_HINT, RunFolder, full_trace
from phicenter.io import WriteError

log = logging.getLogger("phicenter")


@dataclass
class Member:
    """One variant while it trains: what a run keeps between rounds."""

    variant: Variant
    folder: RunFolder
    net: torch.nn.Module
    imp: object
    resolved: dict
    record: dict
    start: int
    recorder: records.Recorder | None = None
    alive: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def settings(self):
        """The variant's typed settings (phicenter.config.settings)."""
        return self.variant.settings

    @property
    def rounds(self) -> list:
        return self.record["rounds"]

    def fail(self, status: str, error: str, trace: str | None = None, hint: str = "") -> None:
        self.record, unrecorded = self.folder.fail(self.record, status, error, trace)
        self.alive = False
        log.error("run %s %s: %s%s%s", self.folder.path, status, error, unrecorded, hint)
        if trace and full_trace():
            log.error("%s", trace)


def record_failure(cohort: list[Member], e: Exception) -> None:
    status = "diverged" if isinstance(e, Diverged) else "failed"
    hint = RESUME_HINT if isinstance(e, WriteError) else ""
    for m in cohort:
        if m.alive:
            m.fail(status, f"{type(e).__name__}: {e}", traceback.format_exc(), hint)


def close_members(cohort: list[Member]) -> None:
    for m in cohort:
        if m.recorder is not None:
            m.recorder.close(m.record.get("status", "running"))
            m.recorder = None


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e))
    )


def open_member(variant: Variant, job_dir: Path, splits, in_cohort: bool):
    """A variant ready to train: a finished run is returned as its results dict; else a Member, resumed from
    its folder's last round checkpoint when there is one."""
    cfg, s = variant.cfg, variant.settings
    resolved = recorded_config(cfg, s.phi)
    folder, resume = RunFolder(job_dir / variant.name, digest=config_digest(resolved)), s.resume
    prev = folder.read()
    if resume and prev and prev.get("status") in FINISHED:
        return prev
    net = build.build_model(s, splits)
    imp = build.build_imp(s, net)
    if in_cohort:
        build.check_stackable(s, net, splits)
    ckpt = folder.latest_round(log=log.warning) if resume else None
    rounds, start = [], 0
    if ckpt is not None:
        imp.theta0 = folder.load_theta0()
        net.load_state_dict(ckpt["model"])
        rounds, start = ckpt["rounds"], ckpt["round"] + 1
        log.info("resuming %s after round %d", folder.path, ckpt["round"])
    else:
        if not resume:
            folder.start_over()
        folder.save_theta0(imp.theta0)
    if resume and rewinding.active(s):
        imp.set_rewind(folder.load_rewind())  # None (theta0) until the run reaches the rewind point
    folder.drop_epochs_before(start)
    record = records.skeleton(resolved, s, splits, net, rounds, [variant.name] if in_cohort else None)
    if ckpt is None:  # the configuration on record from the start, so a relaunch mid-round 0 is checked too
        folder.write(record)
    return Member(variant, folder, net, imp, resolved, record, start)
