"""Data-parallel training of one run on CPU (gloo): two processes, killed and resumed, against one process."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import torch
from tests.cli import ROOT, compose_config, env, results, train

RUN = [
    "threads=1",
    "dataset=synthetic",
    "dataset.n_train=2400",
    "batch_size=10",
    "+model.hidden=[32]",
    "epochs=3",
    "prune.iterations=2",
    "round_store.enabled=false",
]
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "+trainer.strategy=ddp"]
TRAIN = 2400 - 100  # the synthetic dataset's train split (val_size 100)


def _kill_in_round_1(run_dir) -> None:
    """Both processes (the command and the worker Lightning starts) killed after round 1's first epoch."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "phicenter.train", *RUN, *DDP, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    last, deadline = run_dir / "checkpoints" / "round_001_epochs" / "last.ckpt", time.time() + 240
    try:
        while not last.exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def test_two_processes_shard_agree_resume_and_complete(tmp_path):
    """2 gloo processes: each trains on its half of every epoch's order (half the steps), both apply the same
    round boundary (equal digests of masks and signs on record), only the first writes the run's files, and a
    run killed mid-round resumes under DDP to `complete` with the sparsity schedule of one process."""
    from phicenter.engine import loop

    alone = loop.run(compose_config(*RUN), tmp_path / "alone")

    run_dir = tmp_path / "ddp"
    _kill_in_round_1(run_dir)
    killed = results(run_dir)
    assert killed["status"] == "running" and [r["round"] for r in killed["rounds"]] == [0]
    state = torch.load(run_dir / "checkpoints" / "round_001_epochs" / "last.ckpt", weights_only=True)
    epochs_done = state["epoch"] + 1
    # a process's shard: ceil(2300 / 2) samples, 115 steps an epoch (one process alone takes 230)
    assert state["global_step"] == epochs_done * math.ceil(math.ceil(TRAIN / 2) / 10) == epochs_done * 115

    proc = train(*RUN, *DDP, f"hydra.run.dir={run_dir}")
    assert "resuming round 1 from" in proc.stdout
    res = results(run_dir)
    assert res["status"] == "complete" and [r["round"] for r in res["rounds"]] == [0, 1, 2]
    assert [r["sparsity"] for r in res["rounds"]] == [r["sparsity"] for r in alone["rounds"]]
    for r in res["rounds"][1:]:
        assert len(r["rank_digests"]) == 2 and r["rank_digests"][0] == r["rank_digests"][1], r["round"]
    assert "rank_digests" not in alone["rounds"][1]
    # one writer: a single results.json, one event file per launch (the killed one's and the resumed one's)
    assert [p.name for p in run_dir.rglob("results.json")] == ["results.json"]
    assert len(list(run_dir.rglob("events.out.tfevents.*"))) == 2
    assert proc.stdout.count("round 2/2  sparsity") == 1
    assert json.loads((run_dir / "results.json").read_text())["config"]["trainer"]["strategy"] == "ddp"
