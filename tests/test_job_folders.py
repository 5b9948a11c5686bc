"""A multirun job's folder stays inside its sweep folder whatever its overrides' values hold (`/`, `..`): its
name is Hydra's override_dirname made one folder name (conf/config.yaml's hydra.sweep.subdir,
hydra_plugins/phicenter_resolvers.job_folder), resolved where the jobs are launched and, under a submitit
launcher (as on a SLURM node), again in the job's own process. Ordinary names stay as they were, so a sweep
launched again resumes into its folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.cli import compose_config, results, train

from hydra_plugins.phicenter_resolvers import job_folder
from phicenter.analysis import runs, sweep


def _npz(path: Path) -> None:
    import numpy as np

    g = np.random.default_rng(0)
    y = g.integers(0, 3, 90)
    x = (y[:, None, None] * 80 + g.integers(0, 40, (90, 6, 6))).astype(np.uint8)
    path.parent.mkdir(parents=True)
    np.savez(path, x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:])


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=local"]], ids=["basic", "submitit_local"])
def test_a_path_with_dotdot_keeps_the_job_inside_the_sweep(tmp_path, launcher):
    """dataset.path=../../../data/d.npz once made the folders `dataset.path=..`, `..`, `..`, `data`: the job
    landed beside the sweep folder, not in it. Now it is one folder in the sweep, which the summary and the
    report find."""
    work, data = tmp_path / "a" / "b" / "c", tmp_path / "data" / "d.npz"
    multirun = work / "sweep"
    work.mkdir(parents=True)
    _npz(data)
    overrides = ["dataset=npz", "dataset.path=../../../data/d.npz", "dataset.val_size=10", "epochs=1"]
    run = ["threads=1", "prune.iterations=1", "round_store.enabled=false", f"hydra.sweep.dir={multirun}"]
    train(*overrides, *run, *launcher, multirun=True, cwd=work)
    name = "dataset.path=..%2F..%2F..%2Fdata%2Fd.npz,dataset.val_size=10,dataset=npz,epochs=1,prune.iterations=1"
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(multirun)]
    assert outside == [data]
    assert [p.parent.relative_to(multirun).as_posix() for p in multirun.rglob("results.json")] == [name]
    assert results(multirun / name)["status"] == "complete"
    assert [j["job"] for j in sweep.summarize(multirun)["complete"]] == [name]
    assert [j["job"] for j in json.loads((multirun / "sweep_summary.json").read_text())["complete"]] == [name]
    assert [(r.path.parent, r.status) for r in runs.load([multirun])] == [(multirun / name, "complete")]


@pytest.mark.parametrize(
    "overrides, folder",
    [
        (["phi=0.0005", "strategy=mask0"], "phi=0.0005,strategy=mask0"),  # as before: a sweep resumes there
        (["phi=0.0005", "strategy=mask1", "threads=2"], "phi=0.0005,strategy=mask1"),  # execution keys left out
        (["dataset=npz", "dataset.path=/data/d.npz"], "dataset.path=%2Fdata%2Fd.npz,dataset=npz"),
        (["dataset=npz", "dataset.path=..\\d.npz"], "dataset.path=..%5Cd.npz,dataset=npz"),
        ([], ""),  # no overrides: the sweep folder itself, as Hydra has it
    ],
)
def test_job_folder_names(overrides, folder):
    assert str(compose_config(*overrides, hydra=True).hydra.sweep.subdir) == folder


def test_a_name_is_one_folder_that_is_neither_dot_nor_hidden():
    for name in ("..", ".", "../..", ".hidden=1", "a/../../b", "x\\..\\y"):
        safe = job_folder(name)
        assert "/" not in safe and "\\" not in safe and not safe.startswith("."), safe
    assert job_folder("../x") == "%2E.%2Fx"
