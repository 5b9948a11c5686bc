"""python -m phicenter.analysis.halving: a search's survivors against the grid, on results built by hand."""

from __future__ import annotations

import json

import pytest

from phicenter.analysis import halving

DATASET = {"name": "mnist1d", "corr_noise_scale": 0.25}


def _run(folder, phi, seed, val, test):
    folder.mkdir(parents=True)
    config = {
        "phi": phi,
        "seed": seed,
        "dataset": DATASET,
        "model": {"name": "conv1d"},
        "strategy": {"name": "mask1"},
        "prune": {"iterations": 3},
    }
    final = {"round": 3, "val_acc": val, "test_acc": test}
    (folder / "results.json").write_text(
        json.dumps({"status": "complete", "config": config, "final": final, "rounds": [{"round": r} for r in range(4)]})
    )


@pytest.fixture
def grid_and_search(tmp_path):
    # seed 0: best phi 1e-3 (0.80); seed 1: 0 and -1e-3 tie at 0.70 ... pooled: 1e-3 (0.75)
    vals = {0: {0.0: 0.70, 1e-3: 0.80, -1e-3: 0.60}, 1: {0.0: 0.70, 1e-3: 0.70, -1e-3: 0.65}}
    for seed, by_phi in vals.items():
        for phi, v in by_phi.items():
            _run(tmp_path / "grid" / f"seed={seed}" / f"phi={phi}", phi, seed, v, v - 0.05)
    for seed, survivor in ((0, 1e-3), (1, 0.0)):
        job = tmp_path / "search" / f"seed={seed}"
        _run(job / f"phi={survivor}", survivor, seed, vals[seed][survivor], vals[seed][survivor] - 0.05)
        pack = {"halving": {"survivor": f"phi={survivor}", "phi": survivor, "rounds_trained": 5, "rounds_grid": 9}}
        (job / "pack.json").write_text(json.dumps(pack))
    return tmp_path / "grid", tmp_path / "search"


def test_each_survivor_against_its_seed_and_the_pooled_phi_star(grid_and_search):
    rows = sorted(halving.compare(*grid_and_search), key=lambda r: r["seed"])
    assert [(r["seed"], r["best_on_seed"], r["is_phi_star"]) for r in rows] == [(0, True, True), (1, True, False)]
    assert rows[1]["val_loss"] == 0.0 and rows[0]["test_loss"] == pytest.approx(0.0)
    line = halving.summary(rows)
    assert "in 2 (100 %)" in line and "phi* in 1 (50 %)" in line and "10 of the grid's 18 (56 %)" in line


def test_the_command(grid_and_search, tmp_path, capsys):
    assert halving.main([str(p) for p in grid_and_search] + ["--out", str(tmp_path / "h.json")]) == 0
    assert "2 searches" in capsys.readouterr().out
    assert json.loads((tmp_path / "h.json").read_text())["rows"][0]["strategy"] == "mask1"
    assert halving.main([str(tmp_path / "nope"), str(tmp_path)]) == 2
