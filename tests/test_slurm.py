"""On a real SLURM (scripts/slurm-harness start): multiruns through hydra/launcher=slurm in which one job is
requeued, one runs into its time limit, one fails and one is cancelled. A failure or a cancel leaves the rest of
the array to go on; every job that was stopped resumes in its own folder, and a requeued or timed-out one ends
with the results of the same run never interrupted.

One scenario (the module fixture) drives both multiruns side by side, and then the second one's command
again; each test checks one part of what it left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.cli import ROOT, env, results

pytestmark = pytest.mark.slurm

HARNESS = Path(os.environ.get("PHICENTER_SLURM_DIR", "/tmp/phicenter-slurm"))
if "SLURM_CONF" not in os.environ and (HARNESS / "pids").exists():  # the harness's cluster, unless one is named
    os.environ["SLURM_CONF"] = str(HARNESS / "slurm.conf")


def _partition() -> tuple[str | None, str]:
    """The scheduler's default partition, or why there is no scheduler to talk to."""
    if shutil.which("sinfo") is None:
        return None, "sinfo not found"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return None, "sinfo did not answer"
    names = proc.stdout.split()
    if proc.returncode != 0 or not names:
        return None, f"sinfo failed: {(proc.stderr.strip().splitlines() or ['no partition'])[-1]}"
    return next((n.rstrip("*") for n in names if n.endswith("*")), names[0]), ""


PARTITION, WHY = _partition()
if PARTITION is None:
    pytest.skip(f"no SLURM scheduler reachable ({WHY}); scripts/slurm-harness start runs one", allow_module_level=True)

LAUNCHER = [
    "hydra/launcher=slurm",
    f"hydra.launcher.partition={PARTITION}",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
]
# every round trained (no round reused from another run), big enough that a job can be stopped mid-round
DATA = ["threads=1", "dataset=synthetic", "dataset.n_train=20000", "round_store.enabled=false"]
RUN = DATA + ["epochs=3", "prune.iterations=2"]  # jobs X and T; also trained once, never interrupted
GRID = RUN + ["fault.fail_round=null,1"]  # X (requeued) and F (fails)
TIMED = DATA + ["epochs=3", "prune.iterations=1,2", "hydra.launcher.timeout_min=5"]  # C (cancelled), T (time limit)
X, F = "fault.fail_round=null,prune.iterations=2", "fault.fail_round=1,prune.iterations=2"
C, T = "prune.iterations=1", "prune.iterations=2"
CHECK_PERIOD_S = 33  # slurmctld tests time limits (and sends their warning signal) every 30 s
DEADLINE_S = 900  # for the whole scenario; a hung scheduler fails the tests instead of hanging them


def _launch(args: list[str], log: Path, multirun: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "phicenter.train", *(["-m"] if multirun else []), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=log.open("w"), stderr=subprocess.STDOUT)


def _slurm(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
    return proc.stdout


def _job(sweep: Path, suffix: str) -> Path:
    return sweep / next((p.name for p in sweep.glob("*") if p.name.endswith(suffix)), f"?{suffix}")


def _job_id(job: Path) -> str:
    """The SLURM id (array_task) of the job writing into this folder, as Hydra recorded it."""
    return str(yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"])


def _log(job: Path) -> str:
    p = job / "train.log"
    return p.read_text() if p.exists() else ""


def _newest_checkpoint(job: Path) -> float:
    """mtime of the job's newest epoch or round checkpoint (0: none yet)."""
    files = [p for p in (job / "checkpoints").rglob("*") if p.suffix in (".ckpt", ".pt")]
    times = []
    for p in files:
        try:
            times.append(p.stat().st_mtime)
        except FileNotFoundError:  # replaced by the next one meanwhile
            pass
    return max(times, default=0.0)


def _until(condition, what: str, timeout: float = 300):
    """A step of a script below: wait (yielding to the others) until condition() holds."""
    end = time.time() + timeout
    while not condition():
        assert time.time() < end, f"timed out waiting until {what}"
        yield


def _requeue(grid: Path, notes: dict):
    """Job X: requeued mid-round (scontrol requeue, as a preemption would)."""
    yield from _until(lambda: _newest_checkpoint(_job(grid, X)) > 0, "job X wrote a checkpoint")
    x = _job(grid, X)
    _slurm("scontrol", "requeue", _job_id(x))
    yield from _until(lambda: results(x)["status"] != "running", "job X recorded how it stopped", 30)
    notes["X_requeued"] = results(x)


def _cancel(timed: Path):
    """Job C: cancelled mid-round (scancel)."""
    yield from _until(lambda: _newest_checkpoint(_job(timed, C)) > 0, "job C wrote a checkpoint")
    _slurm("scancel", _job_id(_job(timed, C)))


def _seconds(used: str) -> int:
    """squeue's [days-][hours:]minutes:seconds."""
    days, _, clock = used.rpartition("-")
    parts = [int(x) for x in clock.split(":")]
    return int(days or 0) * 86400 + sum(v * 60**i for i, v in enumerate(reversed(parts)))


def _time_limit(timed: Path, notes: dict):
    """Job T runs into its time limit once it has a checkpoint: the limit is lowered to the next minute that
    leaves a time-limit check period before it, so SLURM's warning (submitit's USR2, signal_delay_s before the
    limit) is due at once, and the job's process is held (SIGSTOP) for one check period, so the warning comes
    mid-run however fast this machine trains. Once submitit has requeued it, the limit is put back."""
    yield from _until(lambda: _newest_checkpoint(_job(timed, T)) > 0, "job T wrote a checkpoint")
    t = _job(timed, T)
    job_id = _job_id(t)
    raw, used = _slurm("squeue", "-h", "-j", job_id, "-o", "%A %M").split()
    limit = -(-(_seconds(used) + CHECK_PERIOD_S + 3) // 60)
    _slurm("scontrol", "update", f"JobId={job_id}", f"TimeLimit={limit}")
    rows = [line.split() for line in _slurm("scontrol", "listpids", raw).splitlines()[1:]]
    task = int(next(r[0] for r in rows if r[2:4] == ["0", "0"]))  # step 0, task 0: the training process
    os.kill(task, signal.SIGSTOP)  # slurmstepd sends SIGCONT with the warning
    held = time.time()
    try:
        yield from _until(
            lambda: time.time() > held + CHECK_PERIOD_S or "Requeued job" in _log(t), "a time-limit check went by"
        )
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have ended already
            os.kill(task, signal.SIGCONT)
    yield from _until(lambda: "Requeued job" in _log(t), "submitit requeued job T at its time limit", 60)
    yield from _until(lambda: results(t)["status"] != "running", "job T recorded how it stopped", 30)
    notes["T_stopped"] = results(t)
    _slurm("scontrol", "update", f"JobId={job_id}", "TimeLimit=5")


def _wait(proc: subprocess.Popen, what: str):
    yield from _until(lambda: proc.poll() is not None, what, DEADLINE_S)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm")
    grid, timed = base / "grid", base / "timed"
    procs = {
        "reference": _launch(RUN + [f"hydra.run.dir={base / 'reference'}"], base / "reference.log", False),
        "grid": _launch(LAUNCHER + GRID + [f"hydra.sweep.dir={grid}"], base / "grid.log", True),
        "timed": _launch(LAUNCHER + TIMED + [f"hydra.sweep.dir={timed}"], base / "timed.log", True),
    }
    notes: dict = {}

    def relaunch():
        """The second multirun's command again, in the same folder, once its first launch has ended."""
        yield from _wait(procs["timed"], "the second multirun ended")
        notes["first"] = {
            "C": results(_job(timed, C)),
            "rc": procs["timed"].returncode,
            "summary": _summary(timed),
            "log": (base / "timed.log").read_text(),
        }
        procs["relaunch"] = _launch(LAUNCHER + TIMED + [f"hydra.sweep.dir={timed}"], base / "relaunch.log", True)
        yield from _wait(procs["relaunch"], "the relaunch ended")

    scripts = [
        _requeue(grid, notes),
        _cancel(timed),
        _time_limit(timed, notes),
        relaunch(),
        _wait(procs["grid"], "the first multirun ended"),
        _wait(procs["reference"], "the reference ended"),
    ]
    try:
        while scripts:
            for s in list(scripts):
                try:
                    next(s)
                except StopIteration:
                    scripts.remove(s)
            time.sleep(0.05)
    finally:
        for s in scripts:
            s.close()  # a held job is let go
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        ours = [d.name for sweep in (grid, timed) for d in (sweep / ".submitit").glob("*") if d.name.isdigit()]
        if ours:  # nothing of this scenario left queued or running
            subprocess.run(["scancel", *ours], capture_output=True, timeout=60)
    for name in ("grid", "timed", "relaunch", "reference"):
        assert procs[name].returncode == 0, f"{name}:\n{(base / (name + '.log')).read_text()[-3000:]}"
    return {
        "grid": grid,
        "timed": timed,
        "notes": notes,
        "grid_log": (base / "grid.log").read_text(),
        "reference": results(base / "reference"),
    }


def _same_results(res: dict, ref: dict) -> None:
    """To the last digit: every round's accuracies and losses, every epoch's training loss."""
    keys = ("round", "sparsity", "train_loss", "train_acc", "val_acc", "test_acc", "test_loss")
    assert [[r[k] for k in keys] for r in res["rounds"]] == [[r[k] for k in keys] for r in ref["rounds"]]
    assert [e["train_loss"] for r in res["rounds"] for e in r["epochs"]] == [
        e["train_loss"] for r in ref["rounds"] for e in r["epochs"]
    ]


def _summary(sweep: Path) -> dict:
    """sweep_summary.json as {status: [(job folder, error), ...]}."""
    return {
        k: [(j["job"], j["error"]) for j in v]
        for k, v in json.loads((sweep / "sweep_summary.json").read_text()).items()
    }


def _resumed(log: str, after: str) -> bool:
    """The log says the run went on from a checkpoint in its folder after `after` happened."""
    return after in log and "resuming" in log[log.index(after) :]


def test_multirun_completes_with_its_summary(scenario):
    """The second multirun, relaunched once: every job complete, and the summary says so."""
    timed = scenario["timed"]
    jobs = sorted(p.parent.name for p in timed.glob("*/results.json"))
    assert [j.rsplit(",", 1)[-1] for j in jobs] == [C, T]
    for j in jobs:
        res = results(timed / j)
        assert res["status"] == "complete"
        assert len(res["rounds"]) == int(j.rsplit("=", 1)[-1]) + 1
    assert _summary(timed) == {"complete": [(j, None) for j in jobs]}
    assert list((timed / ".submitit").glob("*/*_log.out"))  # really went through SLURM


def test_time_limit_job_is_requeued_and_resumes_to_identical_results(scenario):
    t = _job(scenario["timed"], T)
    log = _log(t)
    assert "this job is timed-out" in log and "Requeued job" in log  # submitit, on SLURM's warning
    assert scenario["notes"]["T_stopped"]["status"] == "interrupted"
    assert _resumed(log, "Requeued job")
    res = results(t)
    assert res["status"] == "complete"
    _same_results(res, scenario["reference"])


def test_requeued_job_resumes_to_identical_results(scenario):
    x, notes = _job(scenario["grid"], X), scenario["notes"]
    assert notes["X_requeued"]["status"] == "interrupted" and notes["X_requeued"]["error"] == "SIGTERM"
    assert _resumed(_log(x), "run interrupted (SIGTERM)")
    res = results(x)
    assert res["status"] == "complete"
    _same_results(res, scenario["reference"])


def test_failed_job_is_recorded_and_the_array_goes_on(scenario):
    grid = scenario["grid"]
    f, x = _job(grid, F), _job(grid, X)
    res = results(f)
    assert res["status"] == "failed" and "injected fault at round 1" in res["error"] and res["traceback"]
    assert len(res["rounds"]) == 1  # round 0 completed before the fault, and is kept
    assert _summary(grid) == {"complete": [(x.name, None)], "failed": [(f.name, res["error"])]}
    assert "multirun finished: 1 complete, 1 failed" in scenario["grid_log"]


def test_cancelled_job_is_interrupted_and_a_relaunch_completes_it(scenario):
    first, timed = scenario["notes"]["first"], scenario["timed"]
    c, t = _job(timed, C), _job(timed, T)
    assert first["C"]["status"] == "interrupted" and first["C"]["error"] == "SIGTERM"
    assert len(first["C"]["rounds"]) < 2
    assert first["summary"] == {"complete": [(t.name, None)], "interrupted": [(c.name, "SIGTERM")]}
    assert "ended without a result (SLURM state CANCELLED" in first["log"]  # and the launcher went on
    assert first["rc"] == 0
    assert _resumed(_log(c), "run interrupted (SIGTERM)")
    assert results(c)["status"] == "complete"  # by the relaunch, in the same folder
