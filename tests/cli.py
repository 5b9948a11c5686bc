"""Run the real CLI in a subprocess, one CPU thread each, outputs under a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FAST = ["threads=1", "epochs=2", "prune.iterations=2"]
# A CIFAR-shaped experiment on 60 generated 3x8x8 images of 5 classes, in batches of 10 (its dataset overrides)
TINY_IMAGES = [
    "dataset=synthetic",
    "dataset.shape=[3,8,8]",
    "dataset.n_train=40",
    "dataset.val_size=10",
    "dataset.n_test=10",
    "dataset.num_classes=5",
    "batch_size=10",
]


def compose_config(*overrides: str, hydra: bool = False):
    """The config `python -m phicenter.train OVERRIDES` would run, composed from conf/ in this process
    (hydra=True: with the hydra node, for what Hydra itself derives, such as job folder names)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def bare_trainer(epochs: int, **kw):
    """A Lightning Trainer on the CPU with nothing of its own around the fit (no logger, checkpoints, progress bar,
    summary or sanity check): what a test fits a module with directly, outside the round loop."""
    import pytorch_lightning as pl

    defaults = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "accelerator": "cpu",
    }
    return pl.Trainer(max_epochs=epochs, **{**defaults, **kw})


def env() -> dict:
    """The subprocess's environment: one thread, no data folder of the caller's, and the session's round
    store (tests/conftest.py), never the default one under outputs/."""
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.pop("PHICENTER_DATA_DIR", None)
    assert e.get("PHICENTER_ROUND_STORE"), "tests/conftest.py sets the round store of the session"
    return e


def train(
    *args: str, multirun: bool = False, timeout: float = 300, check: bool = True, cwd=None, **popen
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "phicenter.train", *(["-m"] if multirun else []), *args]
    proc = subprocess.run(cmd, cwd=cwd or ROOT, env=env(), capture_output=True, text=True, timeout=timeout, **popen)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def start(*args: str, cwd=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "phicenter.train", *args]
    return subprocess.Popen(
        cmd, cwd=cwd or ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def accuracies(res: dict) -> list[tuple]:
    return [(r["round"], r["sparsity"], r["train_loss"], r["val_acc"], r["test_acc"]) for r in res["rounds"]]
