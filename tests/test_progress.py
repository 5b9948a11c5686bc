"""Progress a person can follow: a live bar on a terminal, one log line per epoch elsewhere, "job i of N" in a
multirun, and where the results are at the end."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf, open_dict
from tests.cli import FAST, ROOT, env, train

EPOCH_LINE = re.compile(r"round (\d+)/2  epoch (\d+)/2  (.*)\(\S+ elapsed, run ETA \S+\)")


def test_summary_and_duration():
    from phicenter.engine.progress import duration, summary

    one = [[{"epoch": 0, "train_loss": 0.5, "val_acc": 0.9}]]
    assert summary(one) == "loss 0.5000  val 0.9000"
    three = one + [[{"epoch": 0, "train_loss": 0.25, "val_acc": 0.8}], [{"epoch": 0, "train_loss": 9.0}]]
    assert summary(three, diverged={2}) == "2 variants:  loss 0.2500-0.5000  val 0.8000-0.9000  (1 diverged)"
    assert summary([[]]) == ""
    assert duration(3725.4) == "1:02:05" and duration(None) == "?"


def test_the_round_line_of_a_cohort_is_one_short_summary(caplog):
    """K > 1: the range of each number over the variants and the best variant's name, whatever K is (the Table 1
    grid's 22 variants: one line well under 200 characters); one variant: its numbers, as before."""
    from phicenter.engine.loop import _log_round

    def member(phi, strategy, val, alive=True):
        final = {"sparsity": 0.36, "effective_sparsity": 0.36 + phi, "val_acc": val, "test_acc": val - 0.01}
        variant = SimpleNamespace(name=f"phi={phi!r},strategy={strategy}" if strategy else "")
        prune = SimpleNamespace(iterations=10)
        return SimpleNamespace(
            variant=variant, record={"final": final}, alive=alive, settings=SimpleNamespace(prune=prune)
        )

    phis = [-1e-3, -5e-4, -1e-4, -5e-5, -1e-5, 0.0, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3]
    grid = [member(p, s, 0.9 + i / 1000) for s in ("random_mask", "mask1") for i, p in enumerate(phis)]
    grid[3].alive = False
    outcomes = [SimpleNamespace(reused_from=None)] * 20 + [SimpleNamespace(reused_from="x")] * 2
    with caplog.at_level(logging.INFO, logger="phicenter"):
        _log_round(grid, outcomes, 2, 12.34)
        _log_round(grid[:1], outcomes[:1], 2, 1.5)
    many, one = (r.getMessage() for r in caplog.records)
    assert many == (
        "round 2/10  21 variants:  sparsity 0.360  effective 0.359-0.361  val 0.9000-0.9100  test 0.8900-0.9000  "
        "best phi=0.001,strategy=random_mask  (1 diverged)  (12.3s, 2 of 22 reused)"
    )
    assert len(many) < 200
    assert one == (
        "round 2/10  phi=-0.001,strategy=random_mask sparsity 0.360 (effective 0.359)  val 0.9000  test 0.8900  (1.5s)"
    )


@pytest.mark.parametrize(
    "setting, terminal, bar", [(None, True, True), (None, False, False), (True, False, True), (False, True, False)]
)
def test_the_setting_forces_either_way(monkeypatch, setting, terminal, bar):
    """trainer.enable_progress_bar: null picks by the terminal; true and false force the bar or the lines."""
    from phicenter.engine import build
    from phicenter.engine.progress import EpochLines, ProgressBar

    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    cfg = OmegaConf.create(
        {"trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": setting}, "prune": {"iterations": 3}}
    )
    trainer = build.make_trainer(cfg, [], 2, progress=True)
    kinds = {type(c) for c in trainer.callbacks}
    assert (ProgressBar in kinds, EpochLines in kinds, trainer.progress_bar_callback is not None) == (bar, not bar, bar)
    assert build.make_trainer(cfg, [], 2).progress_bar_callback is None  # the bench's and the probe's trainers


def test_one_line_per_epoch_without_a_terminal_and_the_multirun_around_it(tmp_path):
    """Not a terminal (a log file, SLURM, CI): one line per epoch, all K variants of a cohort in it; a multirun
    says which job of how many runs, and ends on the sweep summary's counts and the commands that read it."""
    proc = train(
        *FAST,
        "round_store.enabled=false",
        "pack=true",
        "phi=[0,0.02]",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path}",
        multirun=True,
    )
    out = proc.stdout
    lines = [m.groups() for m in EPOCH_LINE.finditer(out)]
    assert [(r, e) for r, e, _ in lines] == [(str(r), str(e)) for _ in range(2) for r in range(3) for e in (1, 2)]
    # the range over the variants (one number where they agree: round 0, trained alike)
    assert all(re.fullmatch(r"2 variants:  loss [\d.]+(-[\d.]+)?  val [\d.]+(-[\d.]+)?\s*", s) for _, _, s in lines)
    assert any("-" in s for _, _, s in lines)
    # each round's line: the variants' ranges and the best of them, not each variant's numbers
    ends = re.findall(r"round (\d)/2  (2 variants:  sparsity \S+  effective \S+  val \S+  test \S+  best \S+)  \(", out)
    assert [r for r, _ in ends] == ["0", "1", "2"] * 2 and all("best phi=" in e for _, e in ends), ends
    assert "job 1 of 2: " in out and "job 2 of 2: " in out and "job 3" not in out
    assert "multirun finished: 4 complete" in out
    assert f"{sys.executable} -m tensorboard.main --logdir {tmp_path}" in out
    assert f"{sys.executable} -m phicenter.report {tmp_path}" in out
    assert "it/s" not in out and "\r" not in out  # no bar


def run_in_terminal(*args: str, columns: int = 160) -> str:
    """The CLI with stdout and stderr on a pseudo-terminal of `columns` columns; what it showed there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "phicenter.train", *args],
        cwd=ROOT,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the other side closed: the command (and any child) is done
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_live_bar_on_a_terminal(tmp_path):
    """On a terminal: a live bar per round (round, epoch, steps, the previous epoch's loss and val accuracy,
    the run's ETA) instead of the lines; at the end, where the results are and how to read them."""
    shown = run_in_terminal(
        *FAST,
        "round_store.enabled=false",
        "dataset=synthetic",
        "dataset.n_train=900",
        "batch_size=20",
        f"hydra.run.dir={tmp_path}",
    )
    states = shown.replace("\r\n", "\n").replace("\r", "\n").splitlines()
    bars = [s for s in states if re.match(r"round \d/2  epoch \d/2: ", s)]
    assert {s[:20] for s in bars} == {f"round {r}/2  epoch {e}/2" for r in range(3) for e in (1, 2)}
    assert any(
        re.search(r" 40/40 \[.*step/s, run ETA=\d+:\d\d:\d\d, last epoch=loss [\d.]+  val [\d.]+\]", s) for s in bars
    ), bars[-3:]
    assert not EPOCH_LINE.search(shown)
    assert "round 2/2  sparsity" in shown and f"{sys.executable} -m tensorboard.main --logdir {tmp_path}" in shown
    assert f"{sys.executable} -m phicenter.report {tmp_path}" in shown


def test_count_jobs_of_a_multirun():
    """Experiment-declared sweeps, overridden key by key by the command line; Optuna: its n_trials."""
    from tests.cli import compose_config

    from phicenter.analysis.sweep import count_jobs

    def jobs(overrides, command_line=()):
        cfg = compose_config(*overrides, hydra=True)
        with open_dict(cfg):
            cfg.hydra.overrides.task = [*overrides, *command_line]
        return count_jobs(cfg)

    assert jobs(["experiment=mnist_fc_lot"]) == 44
    assert jobs(["experiment=mnist_fc_lot"], ["strategy=mask0,mask1", "seed=0,1,2"]) == 66
    assert jobs([], ["phi=0,0.1", "seed=range(3)"]) == 6
    assert jobs(["hparams_search=phi_optuna"]) == 20
