"""When phi can and cannot matter: dead-zone occupancy, inactive phi, and the dry run."""

from __future__ import annotations

import json

import pytest
from tests.cli import FAST, accuracies, results, train


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    d = tmp_path_factory.mktemp("grid")
    train("strategy=mask0,standard,mask1", "phi=0,5e-4", *FAST, f"hydra.sweep.dir={d}", multirun=True)
    return {
        (r["config"]["strategy"]["name"], r["config"]["phi"]): r
        for r in (results(p.parent) for p in d.glob("*/results.json"))
    }


def test_paired_runs_share_round0(grid):
    """Same seed, different strategy and phi: the dense round 0 is identical, so a grid is paired."""
    assert len(grid) == 6
    assert len({tuple(accuracies(r)[0]) for r in grid.values()}) == 1


@pytest.mark.parametrize("strategy", ["mask0", "standard"])
def test_trained_reference_makes_small_phi_inactive(grid, strategy):
    """Survivors are the largest |trained| weights, so none lies in (0, 5e-4): phi decides no sign."""
    zero, small = grid[(strategy, 0.0)], grid[(strategy, 5e-4)]
    assert accuracies(small) == accuracies(zero)  # bit-identical
    for r in small["rounds"][1:]:
        assert r["dead_zone_count"] == 0 and r["flipped_by_phi"] == 0.0
        for layer in r["layers"].values():
            crit = layer["critical_phi_pos"]
            assert crit is None or crit > 5e-4


def test_init_reference_is_moved_by_phi_above_its_critical_value(grid):
    zero, small = grid[("mask1", 0.0)], grid[("mask1", 5e-4)]
    r1 = small["rounds"][1]
    assert min(l["critical_phi_pos"] for l in r1["layers"].values() if l["critical_phi_pos"] is not None) < 5e-4
    assert r1["dead_zone_count"] > 0 and r1["flipped_by_phi"] > 0
    assert accuracies(small)[1:] != accuracies(zero)[1:]


@pytest.mark.parametrize("k", [1, 4])
def test_dry_run_counts_match_full_run_round_one(grid, tmp_path, k):
    """K = 1: the grid is dry_run_grid; K = 4 (pack=true): the cohort's own phi x strategy grid."""
    grid_args = (
        ["dry_run_grid.phis=[0,5e-4]", "dry_run_grid.strategies=[mask0,mask1]"]
        if k == 1
        else ["pack=true", "phi=[0,5e-4]", "strategy=[mask0,mask1]"]
    )
    proc = train("dry_run=phi", *grid_args, *FAST, f"hydra.run.dir={tmp_path}")
    assert "re-signed by phi" in proc.stdout
    dry = json.loads((tmp_path / "dry_run.json").read_text())
    assert dry["status"] == "dry_run" and len(dry["rounds"]) == 1  # round 0 only was trained
    rows = {(r["strategy"], r["phi"]): r for r in dry["dry_run"]["rows"]}
    assert set(rows) == {(s, p) for s in ("mask0", "mask1") for p in (0.0, 5e-4)}
    for key in (("mask0", 5e-4), ("mask1", 5e-4), ("mask1", 0.0)):
        full = grid[key]["rounds"][1]
        assert rows[key]["dead_zone_count"] == full["dead_zone_count"]
        assert rows[key]["flipped_by_phi"] == full["flipped_by_phi"]
        for name, layer in full["layers"].items():
            assert rows[key]["layers"][name]["dead_zone_count"] == layer["dead_zone_count"]
    assert rows[("mask0", 5e-4)]["dead_zone_count"] == 0 and rows[("mask1", 5e-4)]["dead_zone_count"] > 0
