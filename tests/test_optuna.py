"""hparams_search=phi_optuna: phi = sign * |phi| from two Optuna parameters, a few real trials through the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.cli import compose_config

from phicenter.analysis import report

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def search_override() -> str:
    """`hparams_search=phi_optuna` once conf/config.yaml lists the group in its defaults, `+...` before that."""
    listed = "hparams_search" in (CONF / "config.yaml").read_text()
    return ("" if listed else "+") + "hparams_search=phi_optuna"


@pytest.mark.parametrize(
    "sign,mag,phi",
    [("-", 3e-4, -3e-4), ("+", 1e-6, 1e-6), ("+", 0.1, 0.1), ("-", 1.2345678901234e-05, -1.2345678901234e-05)],
)
def test_phi_is_sign_times_magnitude(sign, mag, phi):
    cfg = compose_config(search_override(), f"phi_sign={sign}", f"phi_abs={mag}")
    assert isinstance(cfg.phi, float) and cfg.phi == phi


def test_optuna_search_runs_through_the_cli(tmp_path):
    sweep = tmp_path / "search"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PHICENTER_DATA_DIR": str(tmp_path / "data")}
    cmd = [
        sys.executable,
        "-m",
        "phicenter.train",
        "-m",
        search_override(),
        "epochs=1",
        "prune.iterations=1",
        "threads=1",
        "hydra.sweeper.n_trials=3",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    runs = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(runs) == 3 and all(r["status"] == "complete" for r in runs)
    for r in runs:
        c = r["config"]
        assert c["phi"] == pytest.approx((-1 if c["phi_sign"] == "-" else 1) * c["phi_abs"], rel=1e-12)
        assert 1e-6 <= abs(c["phi"]) <= 0.1
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"phi_sign", "phi_abs"}
    vals = [r["final"]["val_acc"] for r in runs]
    assert math.isclose(best["best_value"], max(vals))  # the study maximised what train returns

    out = tmp_path / "rep"
    assert report.main([str(sweep), "--out", str(out)]) == 0  # the report reads a search like any grid
    assert (out / "report.md").exists()
