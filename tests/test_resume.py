"""Never lose a run: kill and resume, relaunch of finished runs and grids, failures isolated, bad checkpoints."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from tests.cli import accuracies, results, start, train

BASE = ["threads=1", "epochs=4", "prune.iterations=2", "round_store.enabled=false"]  # every round trained
COHORT = ["pack=true", "phi=[0,0.02,-0.02]"]  # K = 3; the variant checked is VARIANT
VARIANT = "phi=0.02,strategy=mask0"


def run_args(k: int) -> list[str]:
    return BASE + (COHORT if k == 3 else [])


def folder(job_dir: Path, k: int) -> Path:
    """The folder of the run checked: the job folder itself alone, a variant's in a cohort."""
    return job_dir / VARIANT if k == 3 else job_dir


def epoch_checkpoints(job_dir: Path, k: int, r: int) -> Path:
    """The cohort's epoch checkpoints of round r (the run's own folder alone; per cohort under the job's)."""
    if k == 1:
        return job_dir / "checkpoints" / f"round_{r:03d}_epochs"
    found = list((job_dir / "checkpoints").glob(f"cohort_*/round_{r:03d}_epochs"))
    return found[0] if found else job_dir / "checkpoints" / "cohort_?" / f"round_{r:03d}_epochs"


@pytest.fixture(scope="module", params=[1, 3], ids=["K=1", "K=3"])
def reference(request, tmp_path_factory):
    """The same config, never interrupted."""
    k = request.param
    d = tmp_path_factory.mktemp("reference")
    train(*run_args(k), f"hydra.run.dir={d}")
    res = results(folder(d, k))
    res["dir"], res["k"] = d, k
    return res


def _kill_mid_round(run_dir: Path, sig, k: int) -> dict:
    proc = start(*run_args(k), f"hydra.run.dir={run_dir}")
    deadline = time.time() + 240
    while not (epoch_checkpoints(run_dir, k, 1) / "last.ckpt").exists():
        assert proc.poll() is None, f"run ended before it could be killed:\n{proc.stdout.read()}"
        assert time.time() < deadline
        time.sleep(0.002)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    res = results(folder(run_dir, k))
    assert res["status"] != "complete" and len(res["rounds"]) < 3, "the kill came too late to test anything"
    return res


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_to_identical_results(tmp_path, reference, sig):
    k = reference["k"]
    killed = _kill_mid_round(tmp_path, sig, k)
    if sig == signal.SIGTERM:  # a scheduler's SIGTERM is recorded; SIGKILL leaves the last written state
        assert killed["status"] in ("interrupted", "running")
    proc = train(*run_args(k), f"hydra.run.dir={tmp_path}")
    assert "resuming" in proc.stderr + proc.stdout
    res = results(folder(tmp_path, k))
    assert res["status"] == "complete"
    assert accuracies(res) == accuracies(reference)  # to the last digit
    assert [e["train_loss"] for r in res["rounds"] for e in r["epochs"]] == [
        e["train_loss"] for r in reference["rounds"] for e in r["epochs"]
    ]


def test_finished_run_does_no_work(reference):
    run_dir, k = reference["dir"], reference["k"]
    before = (folder(run_dir, k) / "results.json").read_bytes()
    proc = train(*run_args(k), f"hydra.run.dir={run_dir}")
    assert "already complete; nothing to do" in proc.stderr + proc.stdout
    assert "round 0/" not in proc.stderr + proc.stdout
    assert (folder(run_dir, k) / "results.json").read_bytes() == before


def test_relaunch_under_another_config_is_refused(reference):
    """Resuming continues the run on record: a changed setting is one line, exit 2, and nothing touched."""
    run_dir, k = reference["dir"], reference["k"]
    before = (folder(run_dir, k) / "results.json").read_bytes()
    proc = train(*run_args(k), "optim.lr=2e-3", "seed=3", f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("phicenter train: error: ") and "another configuration" in err[0], err
    assert "optim.lr: 0.0012 -> 0.002" in err[0] and "seed: 0 -> 3" in err[0]
    assert (folder(run_dir, k) / "results.json").read_bytes() == before
    # how it runs may change: threads, progress bar, checkpoint policy
    proc = train(
        *run_args(k),
        "threads=2",
        "trainer.enable_progress_bar=true",
        "checkpoint.keep_all=true",
        f"hydra.run.dir={run_dir}",
    )
    assert "already complete; nothing to do" in proc.stderr + proc.stdout


def test_config_changes_ignores_execution_keys_and_new_keys():
    from phicenter.config import config_changes

    before = {
        "seed": 0,
        "optim": {"name": "adam", "lr": 1e-3},
        "threads": 1,
        "checkpoint": {"keep_all": False},
        "trainer": {"precision": "32-true", "devices": 1},
    }
    now = {
        "seed": 0,
        "optim": {"name": "adam", "lr": 1e-3, "fused": True},
        "threads": 4,
        "checkpoint": {"keep_all": True},
        "trainer": {"precision": "bf16-mixed", "devices": 2},
    }
    assert config_changes(before, now) == ["trainer.precision: '32-true' -> 'bf16-mixed'"]
    assert config_changes(before, before) == []
    added = dict(before, optim={"name": "adam", "lr": 1e-3, "momentum": 0.9})
    assert config_changes(before, added) == ["optim.momentum: (absent) -> 0.9"]
    assert config_changes(added, before) == ["optim.momentum: 0.9 -> (absent)"]


@pytest.mark.parametrize("k", [1, 3])
def test_resume_false_starts_over_without_the_old_checkpoints(tmp_path, k):
    """resume=false replaces the run in the folder: none of its checkpoints can be resumed later."""
    from tests.cli import compose_config

    from phicenter.engine import rundir as res
    from phicenter.engine.cohort import make_variants, single
    from phicenter.engine.loop import train

    def cohort(*extra):
        c = compose_config(
            "dataset=synthetic",
            "dataset.n_train=120",
            "dataset.n_test=40",
            "dataset.val_size=40",
            "epochs=1",
            "threads=1",
            *extra,
        )
        return single(c) if k == 1 else make_variants(c, [0.0, 0.02, -0.02])

    train(cohort("prune.iterations=2"), tmp_path)
    d = folder(tmp_path, k)
    assert res.latest_round(d)["round"] == 2
    train(cohort("prune.iterations=0", "optim.lr=0.01", "resume=false"), tmp_path)
    assert res.latest_round(d)["round"] == 0
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["round_000.pt"]
    assert res.read_json(d / "results.json")["config"]["optim"]["lr"] == 0.01


def test_multirun_over_an_unnamed_key_is_refused(tmp_path):
    """Sweeping a key that job folder names leave out would put several jobs in one folder."""
    proc = train("compile=true,false", "epochs=1", f"hydra.sweep.dir={tmp_path / 'sweep'}", multirun=True, check=False)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "sweeps compile" in err[0], proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_failure_record_holds_the_resolved_config(tmp_path):
    """What train.py records for a run that failed before its first results.json is the config a relaunch
    compares against: resolved, phi a number."""
    from tests.cli import compose_config

    from phicenter.train import _recorded

    cfg = compose_config("phi=5e-4")
    rec = _recorded(cfg)
    assert rec["phi"] == 5e-4 and "${" not in json.dumps(rec)


def test_truncated_checkpoint_falls_back(tmp_path, reference):
    k = reference["k"]
    _kill_mid_round(tmp_path, signal.SIGKILL, k)
    last = epoch_checkpoints(tmp_path, k, 1) / "last.ckpt"
    if last.exists():
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    rounds = sorted((folder(tmp_path, k) / "checkpoints").glob("round_*.pt"))
    proc = train(*run_args(k), f"hydra.run.dir={tmp_path}")
    if last.exists() or rounds:
        assert "unreadable" in proc.stderr + proc.stdout or not last.exists()
    assert accuracies(results(folder(tmp_path, k))) == accuracies(reference)


def test_truncated_round_checkpoint_falls_back_to_previous_round(tmp_path, reference):
    """In a cohort, the variant that falls back a round trains it alone, then the others go on."""
    k = reference["k"]
    proc = train(*run_args(k), "fault.fail_round=2", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 1
    failed = results(folder(tmp_path, k))
    assert failed["status"] == "failed" and "injected fault at round 2" in failed["error"]
    assert len(failed["rounds"]) == 2  # rounds 0 and 1 completed before the fault, and are kept
    newest = sorted((folder(tmp_path, k) / "checkpoints").glob("round_*.pt"))[-1]
    assert newest.name == "round_001.pt"
    newest.write_bytes(b"garbage")
    proc = train(*run_args(k), f"hydra.run.dir={tmp_path}")
    assert "round_001.pt is unreadable" in proc.stderr + proc.stdout
    assert accuracies(results(folder(tmp_path, k))) == accuracies(reference)


def test_multirun_failures_isolated_and_relaunch_skips_finished(tmp_path):
    args = ["fault.fail_round=null,1", "threads=1", "epochs=1", "prune.iterations=2", f"hydra.sweep.dir={tmp_path}"]
    proc = train(*args, multirun=True)
    failed = results(tmp_path / "epochs=1,fault.fail_round=1,prune.iterations=2")
    ok = results(tmp_path / "epochs=1,fault.fail_round=null,prune.iterations=2")
    assert ok["status"] == "complete" and len(ok["rounds"]) == 3
    assert failed["status"] == "failed" and "injected fault at round 1" in failed["error"]
    assert len(failed["rounds"]) == 1  # round 0 completed before the fault, and is kept
    summary = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert [j["job"] for j in summary["failed"]] == ["epochs=1,fault.fail_round=1,prune.iterations=2"]
    assert "1 complete, 1 failed" in proc.stderr + proc.stdout
    # relaunch the same grid: the finished job does nothing, the other runs again from its checkpoint
    proc = train(*args, multirun=True)
    assert proc.stderr.count("already complete; nothing to do") + proc.stdout.count("already complete") >= 1


@pytest.mark.parametrize("k", [1, 3])
def test_diverged_run_is_marked(tmp_path, k):
    proc = train(
        "threads=1",
        "epochs=1",
        "prune.iterations=1",
        "optim.name=sgd",
        "optim.lr=1e20",
        *(COHORT if k == 3 else []),
        f"hydra.run.dir={tmp_path}",
        check=False,
    )
    assert proc.returncode == 1
    for d in [tmp_path / f"phi={p},strategy=mask0" for p in (0.0, 0.02, -0.02)] if k == 3 else [tmp_path]:
        res = results(d)
        assert res["status"] == "diverged" and "loss became" in res["error"]


def test_local_launcher_runs_grid_in_parallel_processes(tmp_path):
    train(
        "hydra/launcher=local",
        "strategy=mask0,mask1",
        "phi=0,5e-5",
        "epochs=1",
        "prune.iterations=1",
        f"hydra.sweep.dir={tmp_path}",
        multirun=True,
        timeout=600,
    )
    found = sorted(p.parent.name for p in tmp_path.glob("*/results.json"))
    assert len(found) == 4
    assert all(results(tmp_path / f)["status"] == "complete" for f in found)
    assert list((tmp_path / ".submitit").glob("*/*_log.out"))  # really went through submitit


def test_slurm_preset_composes_with_every_field(tmp_path):
    sets = {
        "partition": "gpu",
        "account": "proj",
        "qos": "high",
        "constraint": "a100",
        "gpus_per_node": 2,
        "tasks_per_node": 2,
        "cpus_per_task": 16,
        "mem_gb": 64,
        "timeout_min": 30,
        "array_parallelism": 8,
        "max_num_timeout": 3,
    }
    proc = train(
        "hydra/launcher=slurm",
        *[f"hydra.launcher.{k}={v}" for k, v in sets.items()],
        "hydra.launcher.setup=[module load cuda,source .venv/bin/activate]",
        "trainer.devices=2",
        "--cfg",
        "hydra",
    )
    import yaml

    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    for k, v in sets.items():
        assert launcher[k] == v
    assert launcher["setup"] == ["module load cuda", "source .venv/bin/activate"]
