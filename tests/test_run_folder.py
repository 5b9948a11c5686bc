"""One run per folder: the folder lock, default folder names that cannot collide, the configuration digest every
checkpoint carries, and relaunches that are refused without touching the folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.cli import ROOT, env, results, start, train

from phicenter.config import ConfigError, config_digest, recorded_config
from phicenter.engine.callbacks import EpochCheckpoint
from phicenter.engine.rundir import DIGEST, LOCK, FolderBusy, locked

QUICK = ["threads=1", "epochs=1", "prune.iterations=1", "round_store.enabled=false"]


def snapshot(folder: Path) -> dict:
    """Every file under folder: its bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def test_runs_launched_together_get_folders_of_their_own(tmp_path):
    """Three runs started in the same second with the default folder: three complete runs, each its own seed."""
    procs = [start(f"seed={seed}", *QUICK, cwd=tmp_path) for seed in (1, 2, 3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    folders = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert len(folders) == 3
    records = [results(f) for f in folders]
    assert sorted(r["config"]["seed"] for r in records) == [1, 2, 3]
    assert all(r["status"] == "complete" for r in records)
    assert not any("resuming" in o for o in outs)


def test_a_folder_held_by_another_process_is_refused_untouched(tmp_path):
    """A second process on a busy folder: one line naming the holder, exit 2, and the folder as it was."""
    run = tmp_path / "run"
    train(f"hydra.run.dir={run}", *QUICK)
    with locked(run):
        before = snapshot(run)
        proc = train(f"hydra.run.dir={run}", *QUICK, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another run" in lines[0] and f"pid {os.getpid()}" in lines[0]
    assert snapshot(run) == before


def test_bad_input_on_a_busy_new_folder_leaves_it_to_its_holder(tmp_path):
    """A refusal drops the folder its launch made, but never a folder another run has just started in."""
    run = tmp_path / "run"
    with locked(run):
        (run / "train.log").write_text("")
        before = snapshot(run)
        proc = train(f"hydra.run.dir={run}", "phi=abc", *QUICK, check=False)
        assert proc.returncode == 2, proc.stderr
        assert snapshot(run) == before
    proc = train(f"hydra.run.dir={tmp_path / 'new'}", "phi=abc", *QUICK, check=False)
    assert proc.returncode == 2 and not (tmp_path / "new").exists()


def test_a_pack_jobs_variant_folder_is_locked_too(tmp_path):
    job = tmp_path / "job"
    with locked(job / "phi=0.0,strategy=mask0"):
        proc = train(f"hydra.run.dir={job}", "pack=true", "phi=[0,5e-4]", *QUICK, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "in use by another run" in proc.stderr
    assert not (job / "phi=0.0005,strategy=mask0").exists()


def test_the_lock_dies_with_its_process(tmp_path):
    """A killed run leaves its folder free for the relaunch that resumes it; within a process it is re-entrant."""
    code = f"from phicenter.engine.rundir import locked\nwith locked({str(tmp_path)!r}):\n    print('held', flush=True)"
    holder = subprocess.Popen(
        [sys.executable, "-c", code + "\n    import time; time.sleep(120)"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderBusy, match=f"pid {holder.pid}"):
        with locked(tmp_path):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locked(tmp_path) as lock, locked(tmp_path) as again:
        assert lock is again and lock.before is not None  # the file stays; the kernel's lock went with its process
    assert (tmp_path / LOCK).exists()


def test_a_relaunch_under_another_configuration_without_results_json_is_refused(tmp_path):
    """results.json gone: the round checkpoints' digest still tells the configuration apart."""
    run = tmp_path / "run"
    train(f"hydra.run.dir={run}", "threads=1", "epochs=1", "prune.iterations=2", "round_store.enabled=false")
    (run / "results.json").unlink()
    before = snapshot(run)
    proc = train(
        f"hydra.run.dir={run}", "threads=1", "epochs=1", "prune.iterations=2", "round_store.enabled=false",
        "optim.lr=0.01", check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "was trained under" in lines[0], lines
    assert snapshot(run) == before  # .hydra/config.yaml included


@pytest.mark.parametrize("content", ["{", "[]", '{"config": "x"}', '{"rounds": 5}'])
def test_an_unreadable_results_json_is_refused(tmp_path, content):
    run = tmp_path / "run"
    train(f"hydra.run.dir={run}", *QUICK)
    (run / "results.json").write_text(content)
    before = snapshot(run)
    proc = train(f"hydra.run.dir={run}", *QUICK, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a run's record" in lines[0], lines
    assert snapshot(run) == before


def test_ctrl_c_between_fits_records_interrupted(tmp_path):
    """SIGINT outside a Lightning fit (at the start of round 1) ends the run as `interrupted`, rounds kept."""
    run = tmp_path / "run"
    # Ctrl-C as a terminal delivers it: a run started where SIGINT is ignored (a shell's background job, as the
    # tests may be) inherits that, and rightly ignores it
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    proc = train(f"hydra.run.dir={run}", *QUICK, "fault.interrupt_round=1", check=False, preexec_fn=restore)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    res = results(run)
    assert res["status"] == "interrupted" and res["error"] == "Ctrl-C"
    assert [r["round"] for r in res["rounds"]] == [0]


def test_every_checkpoint_carries_its_configuration_digest(tmp_path):
    run = tmp_path / "run"
    train(f"hydra.run.dir={run}", *QUICK, "checkpoint.keep_all=true")
    res = results(run)
    digest = config_digest(res["config"])
    for path in sorted((run / "checkpoints").glob("round_*.pt")):
        assert torch.load(path, weights_only=True)[DIGEST] == digest


def test_an_epoch_checkpoint_of_another_configuration_is_refused(tmp_path):
    saver = EpochCheckpoint(tmp_path, 1, ["aaaa"])
    torch.save({DIGEST: ["bbbb"], "state_dict": {}}, saver.last)
    with pytest.raises(ConfigError, match="was trained under configuration"):
        saver.resumable(print)
    torch.save({DIGEST: ["aaaa"], "state_dict": {}}, saver.last)
    assert saver.resumable(print) == str(saver.last)


def test_the_digest_follows_what_a_relaunch_may_change(compose):
    base = config_digest(recorded_config(compose()))
    assert config_digest(recorded_config(compose("threads=3", "round_store.enabled=false"))) == base  # execution
    assert config_digest(recorded_config(compose("optim.lr=0.0012"))) == base  # the declared default, written out
    assert config_digest(recorded_config(compose("optim.lr=0.01"))) != base
    assert config_digest(recorded_config(compose("phi=5e-4"))) != base


def test_default_folder_names_are_finer_than_a_second_with_a_suffix():
    proc = subprocess.run(
        [sys.executable, "-m", "phicenter.train", "--cfg", "hydra", "--resolve"],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    import yaml

    hydra = yaml.safe_load(proc.stdout)["hydra"]
    for key in ("run", "sweep"):
        name = Path(hydra[key]["dir"]).name
        stamp, suffix = name.rsplit("_", 1)
        assert len(suffix) == 4 and int(suffix, 16) >= 0
        time.strptime(stamp.rsplit("-", 1)[0], "%Y-%m-%d_%H-%M-%S")
        assert len(stamp.rsplit("-", 1)[1]) == 6  # microseconds
    assert json.dumps(hydra["output_subdir"]) == "null"
