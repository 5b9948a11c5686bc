"""Faults on purpose: kill a cohort mid-round from inside (the n-th validation of a process raises, as a crash
there would), and make a write fail through phicenter.io (the in-process form of `fault.write=...`)."""

from __future__ import annotations

import contextlib

from phicenter import io
from phicenter.engine import module as cohort_module


@contextlib.contextmanager
def failing_writes(spec: str):
    """Within the block, the writes `spec` names fail (phicenter.io.parse_fault: `N[+]:ERRNO[:MATCH]`)."""
    io.inject(spec)
    try:
        yield
    finally:
        io.inject(None)


def die_at_validation(monkeypatch, n: int) -> dict:
    """The n-th end of a validation epoch raises; returns the counter, which counted() then reuses."""
    calls = {"n": 0}
    real = cohort_module.CohortModule.on_validation_epoch_end

    def dies(self):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("killed")
        return real(self)

    monkeypatch.setattr(cohort_module.CohortModule, "on_validation_epoch_end", dies)
    calls["real"] = real
    return calls


def counted(monkeypatch, calls: dict) -> None:
    """From now on only count the validations (to show which epochs a relaunch trains again)."""
    calls["n"] = 0
    real = calls["real"]

    def count(self):
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(cohort_module.CohortModule, "on_validation_epoch_end", count)
