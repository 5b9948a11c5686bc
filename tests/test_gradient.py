"""The complexity gradient (phicenter.analysis.gradient): a seeded grid of fabricated results whose ϕ*, spread
and gap are known by construction; and experiment=complexity_gradient, tiny, through the CLI and the report."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from tests.cli import ROOT, compose_config, train
from tests.test_report import is_png, read_csv, round_entry

from phicenter.analysis import gradient, report

T975_DF2 = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom (tables)
LEVELS = {0.0: 0.98, 0.25: 0.80, 0.5: 0.50}  # corr_noise_scale -> dense (round 0) test accuracy
PHIS = (0.0, 1e-4, 1e-3)


def write(root: Path, noise: float, strategy: str, phi: float, seed: int, val: float, test: float) -> None:
    cfg = {
        "dataset": {"name": "mnist1d", "corr_noise_scale": noise, "val_size": 500},
        "model": {"name": "conv1d", "init": "glorot_normal"},
        "strategy": {"name": strategy, "pruned_fill": "zero"},
        "phi": phi,
        "seed": seed,
        "epochs": 1,
        "prune": {"iterations": 1, "base": 0.8},
    }
    dense = LEVELS[noise]
    rounds = [round_entry(0, dense, dense, 0), round_entry(1, val, test, 0 if phi == 0 else 5)]
    job = root / f"dataset.corr_noise_scale={noise},seed={seed}" / f"phi={phi},strategy={strategy}"
    job.mkdir(parents=True)
    data = {"config": cfg, "rounds": rounds, "final": rounds[-1], "status": "complete", "device": "cpu"}
    (job / "results.json").write_text(json.dumps(data))


# Per (noise, mask1): val per seed for each phi, and test = ZERO_TEST + the gap at each phi per seed.
ZERO_TEST = [0.70, 0.71, 0.72]
MASK1 = {
    # easy: every phi the same: phi* = 0 (ties go to phi = 0)
    0.0: {0.0: ([0.9] * 3, [0, 0, 0]), 1e-4: ([0.9] * 3, [0, 0, 0]), 1e-3: ([0.9] * 3, [0, 0, 0])},
    # medium: 1e-4 best on validation in every seed; test +1, +2, +3 points
    0.25: {0.0: ([0.8] * 3, [0, 0, 0]), 1e-4: ([0.85] * 3, [0.01, 0.02, 0.03]), 1e-3: ([0.7] * 3, [0, 0, 0])},
    # hard: 1e-3 best on the mean, but seed 2 alone prefers 1e-4; test +4, +5, +6 points at 1e-3
    0.5: {
        0.0: ([0.5] * 3, [0, 0, 0]),
        1e-4: ([0.55, 0.55, 0.65], [0.01, 0.01, 0.01]),
        1e-3: ([0.70, 0.70, 0.60], [0.04, 0.05, 0.06]),
    },
}


@pytest.fixture
def grid(tmp_path) -> Path:
    root = tmp_path / "grid"
    for noise, by_phi in MASK1.items():
        for phi, (vals, gaps) in by_phi.items():
            for seed in range(3):
                write(root, noise, "mask1", phi, seed, vals[seed], ZERO_TEST[seed] + gaps[seed])
                write(root, noise, "mask0", phi, seed, 0.6, ZERO_TEST[seed])  # phi never matters
    return root


def cells(root: Path):
    runs = report.load([root])
    report.label(runs)
    return report.select(report.group(runs), "val")


def test_levels_are_ordered_easiest_first_with_their_dense_accuracy(grid):
    ((key, lvs),) = gradient.levels(cells(grid)).items()
    assert key == ("mnist1d", "conv1d")
    assert [lv.options for lv in lvs] == ["corr_noise_scale=0.0", "corr_noise_scale=0.25", "corr_noise_scale=0.5"]
    assert [lv.dense_mean for lv in lvs] == pytest.approx([0.98, 0.80, 0.50])
    assert all(set(lv.cells) == {"mask0", "mask1"} for lv in lvs)


def test_rows_known_by_construction(grid):
    rows = gradient.gradient(cells(grid))
    assert [(r["difficulty"][len("corr_noise_scale=") :], r["strategy"]) for r in rows] == [
        (n, s) for n in ("0.0", "0.25", "0.5") for s in ("mask0", "mask1")
    ]
    mask1 = {r["difficulty"]: r for r in rows if r["strategy"] == "mask1"}
    easy, medium, hard = (mask1[f"corr_noise_scale={n}"] for n in ("0.0", "0.25", "0.5"))
    assert easy["dense_test"].startswith("98.00") and easy["phi_star"] == "0" and easy["verdict"] == "ϕ* = 0"
    assert easy["phi_star_seed_mean"] == "0" and easy["phi_star_seed_ci95"] == "0"
    # medium: phi* = 1e-4 in every seed; gap +1, +2, +3 pp: mean 2, CI t * 1 / sqrt(3), t = 2 sqrt(3)
    assert (medium["phi_star"], medium["phi_star_per_seed"]) == ("0.0001", "0:0.0001 1:0.0001 2:0.0001")
    assert medium["phi_star_seed_ci95"] == "0" and medium["n"] == 3
    assert medium["gap_pp"] == "2.00" and medium["gap_ci95_pp"] == f"{T975_DF2 / math.sqrt(3):.2f}"
    assert medium["p_paired_t"] == f"{2 * stats.t.sf(2 * math.sqrt(3), 2):.3f}"
    assert medium["test_at_zero"].startswith("71.00") and medium["test_at_phi_star"].startswith("73.00")
    assert medium["verdict"] == "not distinguishable from ϕ = 0"  # p = 0.074
    # hard: phi* = 1e-3 on the mean, seed 2 alone 1e-4; gap +4, +5, +6 pp: t = 5 sqrt(3)
    assert (hard["phi_star"], hard["phi_star_per_seed"]) == ("0.001", "0:0.001 1:0.001 2:0.0001")
    choices = np.array([1e-3, 1e-3, 1e-4])
    assert float(hard["phi_star_seed_mean"]) == pytest.approx(choices.mean(), rel=1e-3)
    assert float(hard["phi_star_seed_ci95"]) == pytest.approx(T975_DF2 * choices.std(ddof=1) / math.sqrt(3), rel=1e-3)
    assert hard["gap_pp"] == "5.00" and hard["gap_ci95_pp"] == f"{T975_DF2 / math.sqrt(3):.2f}"
    assert hard["p_paired_t"] == f"{2 * stats.t.sf(5 * math.sqrt(3), 2):.3f}"
    assert hard["verdict"] == "better than ϕ = 0"  # p = 0.013
    for r in rows:
        if r["strategy"] == "mask0":
            assert r["phi_star"] == "0" and r["verdict"] == "ϕ* = 0" and r["gap_pp"] == "0.00"


def test_figure_draws_phi_star_and_the_gap_against_dense_error(grid):
    ((caption, name, fig),) = gradient.figures(cells(grid), render=lambda f: f)
    assert name == "gradient__mnist1d__conv1d.png" and caption.startswith("mnist1d · conv1d: ")
    left, right = fig.axes[:2]
    lines = {ln.get_label(): ln for ln in left.get_lines() if not ln.get_label().startswith("_")}
    x, y = lines["mask1"].get_data()
    assert list(x) == pytest.approx([2.0, 20.0, 50.0]) and list(y) == pytest.approx([0.0, 1e-4, 1e-3])
    seed_means = [c.lines[0].get_ydata() for c in left.containers]  # the bars: per-seed choices' means
    assert list(seed_means[1]) == pytest.approx([0.0, 1e-4, 7e-4])
    assert left.get_yscale() == "symlog"
    gaps = {c.get_label(): c.lines[0] for c in right.containers}
    assert list(gaps["mask1"].get_ydata()) == pytest.approx([0.0, 2.0, 5.0])
    assert list(gaps["mask0"].get_ydata()) == pytest.approx([0.0, 0.0, 0.0])


def test_the_report_has_the_gradient_section(grid, tmp_path):
    out = tmp_path / "report"
    made = report.report([grid], out)
    assert "gradient.csv" in made["files"] and "gradient__mnist1d__conv1d.png" in made["files"]
    assert is_png(out / "gradient__mnist1d__conv1d.png")
    rows = read_csv(out / "gradient.csv")
    assert len(rows) == 6 and rows[3]["phi_star"] == "0.0001"
    md = (out / "report.md").read_text()
    assert "## The complexity gradient" in md and "![mnist1d · conv1d: ϕ* and its gain" in md
    # a grid of one difficulty has no gradient section
    one = report.report([grid / "dataset.corr_noise_scale=0.5,seed=0"], tmp_path / "one")
    assert "gradient.csv" not in one["files"]


def test_the_experiment_sweeps_four_difficulties_of_the_paper_grid():
    from phicenter.method import paper

    cfg = compose_config("experiment=complexity_gradient", hydra=True)
    params = cfg.hydra.sweeper.params
    assert len(str(params["dataset.corr_noise_scale"]).split(",")) == 4 and str(params["seed"]) == "0,1,2"
    assert str(params["strategy"]) == "[" + ",".join(paper.STRATEGIES) + "]"
    assert tuple(cfg.phi) == paper.PHIS and cfg.pack is True
    assert (cfg.prune.iterations, cfg.prune.base) == (10, 0.8)
    assert (cfg.dataset.name, cfg.model.name) == ("mnist1d", "conv1d")


TINY = [
    "experiment=complexity_gradient",
    "dataset.corr_noise_scale=0.0,0.5",
    "seed=0",
    "strategy=[mask1]",
    "phi=[0,1e-3]",
    "prune.iterations=1",
    "epochs=1",
    "dataset.num_samples=200",
    "dataset.val_size=20",
    "threads=1",
    "logger=[]",
]


def test_tiny_experiment_through_the_cli_and_the_report(tmp_path):
    """2 difficulties x 1 strategy x 2 phi x 1 seed, 1 pruning, 160 signals: trains, then reports a gradient of
    2 rows; its dry run says the job count."""
    sweep = tmp_path / "sweep"
    train(*TINY, f"hydra.sweep.dir={sweep}", f"data_dir={tmp_path / 'data'}", multirun=True, cwd=tmp_path)
    found = sorted(sweep.rglob("results.json"))
    assert len(found) == 4
    for path in found:
        res = json.loads(path.read_text())
        assert res["status"] == "complete" and len(res["rounds"]) == 2
        assert res["config"]["dataset"]["name"] == "mnist1d" and res["config"]["model"]["name"] == "conv1d"
    made = report.report([sweep], tmp_path / "report")
    assert made["used"] == 4
    rows = read_csv(tmp_path / "report" / "gradient.csv")
    assert [r["difficulty"] for r in rows] == ["corr_noise_scale=0.0", "corr_noise_scale=0.5"]
    assert all(r["strategy"] == "mask1" and r["n"] == "1" for r in rows)

    dry = train(*TINY, "dry_run=phi", f"hydra.sweep.dir={tmp_path / 'dry'}", multirun=True, cwd=tmp_path)
    log = dry.stdout + dry.stderr
    assert re.search(r"job 1 of 2\b", log) and re.search(r"job 2 of 2\b", log), log[-2000:]
    assert not list((tmp_path / "dry").rglob("results.json")) or all(
        json.loads(p.read_text())["status"] == "dry_run" for p in (tmp_path / "dry").rglob("results.json")
    )


def test_the_whole_experiment_is_48_cells_of_12_jobs():
    """4 difficulties x 3 seeds = 12 jobs, each a cohort of 11 phi x 4 strategies: 528 runs."""
    from phicenter.analysis.sweep import count_jobs

    cfg = compose_config("experiment=complexity_gradient", hydra=True)
    assert count_jobs(cfg) == 12 and len(cfg.phi) * len(str(cfg.hydra.sweeper.params.strategy).split(",")) == 44
    assert (ROOT / "conf" / "experiment" / "complexity_gradient.yaml").is_file()
