"""Faults at the edges never cost a run. Every writer a run has is made to fail through phicenter.io
(`fault.write=N[+]:ERRNO[:MATCH]`, the same faults a full disk, a quota or a bad disk give): a run's own files
give one clear line, exit code 1 and results.json `failed` (or, when results.json cannot be written either,
the last good one, said so), never a half-written file, and the same command again ends as an uninterrupted
run; the round store and the data cache never fail a run. Last, the store under load: eight jobs at once."""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.cli import ROOT, compose_config, env, train
from tests.faults import failing_writes
from tests.test_data import fake_mnist
from tests.test_round_store import comparable

from phicenter.engine import loop
from phicenter.engine import rundir as results
from phicenter.engine.roundstore import ENTRY, STATE, RoundStore
from phicenter.io import read_json, sha256

RUN = ["threads=1", "epochs=2", "prune.iterations=1", "round_store.enabled=false"]


def temporaries(folder: Path) -> list[Path]:
    """What an interrupted atomic write would leave: a .tmp file or folder."""
    return [p for p in Path(folder).rglob("*") if p.name.endswith(".tmp")]


def error_lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line or "Traceback" in line]


def whole_records(path: Path) -> int:
    """The records of a TensorBoard events file, checking that it ends on a whole one."""
    data, pos, n = path.read_bytes(), 0, 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        pos += 12 + length + 4
        n += 1
    assert pos == len(data), f"{path} ends inside a record"
    return n


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The run never interrupted."""
    d = tmp_path_factory.mktemp("reference")
    loop.run(compose_config(*RUN), d)
    return d


def check_failed(run_dir: Path, line: str, named: str, recorded: bool) -> None:
    """One line that names the file and the cause; results.json `failed` with it, or the last good one and the
    line saying so; no temporary file; TensorBoard's events end on a whole record."""
    assert f"failed: WriteError: cannot write {run_dir}" in line and named in line and "(injected)" in line
    assert "the same command resumes the run" in line
    res = results.RunFolder(run_dir).read()
    if recorded:
        assert res["status"] == "failed" and res["error"] in line and res["traceback"]
    else:
        assert "results.json could not be written either" in line
        assert res is None or (res["status"] == "running" and f"(status running, {len(res['rounds'])} rounds)" in line)
    assert not temporaries(run_dir)
    for events in (run_dir / "tb").glob("events.out.tfevents.*"):
        whole_records(events)


# what fails -> (the write that fails, the file named, whether results.json can still record the failure)
CASES = {
    "results": ("2:ENOSPC:results.json", "results.json", True),  # the record after round 0
    "round checkpoint": ("1:EDQUOT:round_001.pt", "round_001.pt", True),
    "epoch checkpoint": ("4:EIO:last.ckpt", "last.ckpt", True),  # round 1's second epoch
    "tensorboard": ("5:ENOSPC:tfevents", "tfevents", True),  # round 0's record
    "results, for good": ("2+:ENOSPC:results.json", "results.json", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_file_that_cannot_be_written_fails_in_one_line_and_resumes(tmp_path, reference, caplog, case):
    spec, named, recorded = CASES[case]
    with caplog.at_level(logging.INFO, logger="phicenter"), failing_writes(spec):
        with pytest.raises(loop.CohortFailed):
            loop.run(compose_config(*RUN), tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    check_failed(tmp_path, lines[0], named, recorded)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="phicenter"):
        loop.run(compose_config(*RUN), tmp_path)  # the same again, the fault gone
    if case == "epoch checkpoint":  # round 1's first epoch stood
        assert "resuming round 1 from" in caplog.text
    assert comparable(tmp_path / results.RESULTS) == comparable(reference / results.RESULTS)
    assert not temporaries(tmp_path)


@pytest.mark.parametrize(
    "spec,named,recorded",
    [("1:EACCES:theta0.pt", "theta0.pt", True), ("12+:ENOSPC", "", False)],
    ids=["theta0", "a disk that fills up"],
)
def test_the_command_line_says_it_in_one_line_exits_1_and_resumes(tmp_path, reference, spec, named, recorded):
    """From the command line (`fault.write`): θ0, written before the run's first record, and a disk that fills
    up (every write from the 12th on fails); then the same command again."""
    proc = train(*RUN, f"fault.write={spec}", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1, lines
    check_failed(tmp_path, lines[0], named, recorded)
    train(*RUN, f"hydra.run.dir={tmp_path}")
    assert comparable(tmp_path / results.RESULTS) == comparable(reference / results.RESULTS)
    assert not temporaries(tmp_path)


def test_only_the_full_trace_switch_prints_the_trace(tmp_path, caplog, monkeypatch):
    for full in (False, True):
        if full:
            monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="phicenter"), failing_writes("1:EIO:round_000.pt"):
            with pytest.raises(loop.CohortFailed):
                loop.run(compose_config(*RUN, "prune.iterations=0"), tmp_path / str(full))
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 + full and ("Traceback (most recent call last)" in errors[-1]) == full


# ---------------------------------------------------------------- the round store and the data cache

FAST = ["epochs=1", "prune.iterations=2", "threads=1", "strategy=mask1", "phi=0.01"]


@pytest.fixture(scope="module")
def store_off(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("store_off") / "run"
    loop.run(compose_config(*FAST, "round_store.enabled=false"), d)
    return d


def store_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "round store" in r.getMessage()]


@pytest.mark.parametrize("spec", ["1:ENOSPC:state.pt", "2:EDQUOT:entry.json", "1+:EIO:/store/"])
def test_a_store_that_cannot_be_written_becomes_read_only(tmp_path, store_off, caplog, spec):
    store = tmp_path / "store"
    with caplog.at_level(logging.WARNING, logger="phicenter"), failing_writes(spec):
        res = loop.run(compose_config(*FAST, f"round_store.dir={store}"), tmp_path / "run")
    assert res["status"] == "complete"
    warned = store_warnings(caplog)
    assert len(warned) == 1 and "becomes read-only (cannot write" in warned[0] and "(injected)" in warned[0], warned
    assert res["round_store"]["errors"] == warned and res["round_store"]["read"] == 0
    published = res["round_store"]["published"]
    assert published == {"1:ENOSPC:state.pt": 0, "2:EDQUOT:entry.json": 1, "1+:EIO:/store/": 0}[spec]
    assert RoundStore(store).usage()["entries"] == published and not temporaries(store)
    assert comparable(tmp_path / "run" / results.RESULTS) == comparable(store_off / results.RESULTS)
    again = loop.run(compose_config(*FAST, f"round_store.dir={store}"), tmp_path / "again")  # now it can be written
    assert again["round_store"]["errors"] == [] and again["round_store"]["published"] == 3 - published
    assert comparable(tmp_path / "again" / results.RESULTS) == comparable(store_off / results.RESULTS)


def test_a_read_only_store_is_reused(tmp_path, store_off, caplog):
    """A lab's read-only store of trained rounds: every round comes from it, nothing is written to it."""
    store = tmp_path / "store"
    loop.run(compose_config(*FAST, f"round_store.dir={store}"), tmp_path / "first")
    before = sorted((p.relative_to(store), p.stat().st_mtime_ns) for p in store.rglob("*"))
    folders = [store, *[p for p in store.rglob("*") if p.is_dir()]]
    for p in folders:
        p.chmod(0o555)  # no write bit, which even root respects here (phicenter.io.writable)
    try:
        with caplog.at_level(logging.WARNING, logger="phicenter"):
            res = loop.run(compose_config(*FAST, f"round_store.dir={store}"), tmp_path / "second")
    finally:
        for p in folders:
            p.chmod(0o755)
    assert res["status"] == "complete"
    warned = store_warnings(caplog)
    assert warned == [f"round store {store} is read-only: its rounds are reused, none is published by this run"]
    assert res["round_store"] == {"dir": str(store), "read": 3, "published": 0, "rejected": 0, "errors": warned}
    assert sorted((p.relative_to(store), p.stat().st_mtime_ns) for p in store.rglob("*")) == before
    assert comparable(tmp_path / "second" / results.RESULTS) == comparable(store_off / results.RESULTS)


def test_a_store_that_cannot_be_read_is_skipped(tmp_path, store_off, caplog):
    not_a_folder = tmp_path / "store"
    not_a_folder.write_text("")
    with caplog.at_level(logging.WARNING, logger="phicenter"):
        res = loop.run(compose_config(*FAST, f"round_store.dir={not_a_folder}"), tmp_path / "run")
    warned = store_warnings(caplog)
    assert len(warned) == 1 and "cannot be read" in warned[0] and "skipped" in warned[0], warned
    assert res["status"] == "complete" and res["round_store"]["read"] == res["round_store"]["published"] == 0
    assert comparable(tmp_path / "run" / results.RESULTS) == comparable(store_off / results.RESULTS)


def test_a_data_cache_that_cannot_be_written_costs_one_warning(tmp_path, caplog):
    fake_mnist(tmp_path / "data", n_train=60, n_test=20)
    args = [
        "dataset=mnist",
        f"data_dir={tmp_path / 'data'}",
        "dataset.val_size=20",
        "epochs=1",
        "prune.iterations=1",
        "threads=1",
        "round_store.enabled=false",
    ]
    cache = tmp_path / "data" / "phicenter-cache"
    with caplog.at_level(logging.WARNING, logger="phicenter"), failing_writes("1:ENOSPC:phicenter-cache"):
        first = loop.run(compose_config(*args), tmp_path / "first")
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and f"cannot write {cache / 'mnist.pt'}" in warned[0], warned
    assert first["status"] == "complete" and not list(cache.iterdir())  # no cache, no half of one
    second = loop.run(compose_config(*args), tmp_path / "second")  # the cache is written this time
    assert (cache / "mnist.pt").is_file() and not temporaries(cache)
    assert comparable(tmp_path / "second" / results.RESULTS) == comparable(tmp_path / "first" / results.RESULTS)
    assert second["data"] == first["data"]


# ---------------------------------------------------------------- the report


def test_a_report_file_that_cannot_be_written_is_one_line_and_the_rest_stands(tmp_path, reference, capsys):
    from phicenter.analysis import report

    out = tmp_path / "report"
    assert report.main([str(reference), "--out", str(out)]) == 0
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "summary.csv").write_text("the last good one")
    capsys.readouterr()
    with failing_writes("1:ENOSPC:summary.csv"):
        assert report.main([str(reference), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"phicenter report: error: cannot write {out / 'summary.csv'}: No space left on device (injected) (ENOSPC)"
    ]
    assert (out / "summary.csv").read_text() == "the last good one" and not temporaries(out)
    assert report.main([str(reference), "--out", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == good


# ---------------------------------------------------------------- the store under load


def _entries_pass_their_checksums(store: Path) -> int:
    n = 0
    for entry in store.glob("*/*"):
        assert not entry.name.startswith("."), f"temporary or discarded folder left: {entry}"
        meta = read_json(entry / ENTRY)
        assert meta["key"] == entry.name and sha256((entry / STATE).read_bytes()) == meta["sha256"]
        assert RoundStore(store).get(entry.name) is not None
        n += 1
    return n


def _grid_at_once(tmp_path: Path, strategies: list[str], phis: list[str]) -> None:
    """The grid as jobs at once (hydra/launcher=local, one thread each) on one fresh store, each result the
    same as the same run with the store off, every entry of the store whole and checksummed."""
    store, sweep = tmp_path / "store", tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "phicenter.train",
        "-m",
        "hydra/launcher=local",
        "hydra.launcher.cpus_per_task=1",
        f"strategy={','.join(strategies)}",
        f"phi={','.join(phis)}",
        "epochs=1",
        "prune.iterations=1",
        "threads=1",
        f"round_store.dir={store}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(sweep.glob("*/results.json"))
    assert len(runs) == len(strategies) * len(phis)
    torch.set_num_threads(1)
    keys = set()
    for path in runs:
        res = read_json(path)
        assert res["status"] == "complete" and res["round_store"]["errors"] == [], path
        cfg = res["config"]
        off = tmp_path / "off" / path.parent.name
        loop.run(
            compose_config(
                f"strategy={cfg['strategy']['name']}",
                f"phi={cfg['phi']}",
                "epochs=1",
                "prune.iterations=1",
                "threads=1",
                "round_store.enabled=false",
            ),
            off,
        )
        assert comparable(path) == comparable(off / results.RESULTS), path.parent.name
        keys |= {r["round_key"] for r in res["rounds"]}
    assert _entries_pass_their_checksums(store) == len(keys)


def test_two_jobs_at_once_share_one_store(tmp_path):
    """The small form of the next (round 0 shared, the later rounds their own)."""
    _grid_at_once(tmp_path, ["mask0", "mask1"], ["1e-3"])


@pytest.mark.slow
def test_eight_jobs_at_once_share_one_store(tmp_path):
    _grid_at_once(tmp_path, ["mask0", "mask1"], ["0", "1e-3", "-1e-3", "5e-4"])


# ---------------------------------------------------------------- SLURM's signals


def test_a_sigterm_while_submitit_requeues_is_left_to_it():
    """A job held past its time limit gets SLURM's warning (SIGUSR2, submitit's requeue) and SIGTERM at once:
    the SIGTERM must not cut the requeue short (submitit exits by itself once the job is requeued)."""
    import os
    import signal

    from phicenter.train import _stop_on_sigterm

    requeued = []

    def submitit(signum, frame):  # stands for submitit's handler: the time limit's SIGTERM arrives meanwhile
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # a few bytecodes for the SIGTERM handler to run in
            pass
        requeued.append(signum)

    before = signal.signal(signal.SIGUSR2, submitit), signal.getsignal(signal.SIGTERM)
    try:
        _stop_on_sigterm(RuntimeError)
        os.kill(os.getpid(), signal.SIGUSR2)
        for _ in range(1000):
            pass
        assert requeued == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, before[0])
        signal.signal(signal.SIGTERM, before[1])
