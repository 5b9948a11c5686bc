"""hparams_search=phi_optuna: phi = sign * |phi| from two Optuna parameters, a few real trials through the CLI;
hydra/sweeper=optuna (hydra_plugins/phicenter_sweeper): its search spaces, its overrides, its sqlite study."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from tests.cli import compose_config

from hydra_plugins.phicenter_sweeper import Rounded, distribution, element, phi_of, rounded
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
        assert c["phi_abs"] == float(f"{c['phi_abs']:.3g}")  # drawn, then rounded before the job ran
    # short job folder names, each the phi its run trained
    for job in sweep.glob("*/results.json"):
        c = json.loads(job.read_text())["config"]
        assert f",phi_abs={c['phi_abs']!r},phi_sign={c['phi_sign']}," in f",{job.parent.name},"
        assert len(repr(c["phi_abs"])) <= len("1.23e-05"), job.parent.name
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"phi_sign", "phi_abs"}
    vals = [r["final"]["val_acc"] for r in runs]
    assert math.isclose(best["best_value"], max(vals))  # the study maximised what train returns
    assert best["best_phi"] == float(f"{best['best_params']['phi_sign']}{best['best_params']['phi_abs']}")
    said = proc.stdout + proc.stderr
    assert f"best phi = {best['best_phi']:.2e} (val {best['best_value']:.4f})" in said
    assert "{'phi_sign'" not in said

    out = tmp_path / "rep"
    assert report.main([str(sweep), "--out", str(out)]) == 0  # the report reads a search like any grid
    assert (out / "report.md").exists()


def _parse(line: str):
    return OverridesParser.create().parse_override(line)


@pytest.mark.parametrize(
    "line,expected",
    [
        ('s=choice("-", "+")', CategoricalDistribution(["-", "+"])),
        ("s=a,1,null,true", CategoricalDistribution(["a", 1, None, True])),
        ("x=interval(1e-6, 0.1)", FloatDistribution(1e-6, 0.1)),
        ("x=tag(log, interval(1e-6, 0.1))", FloatDistribution(1e-6, 0.1, log=True)),
        ("n=int(interval(2, 9))", IntDistribution(2, 9)),
        ("n=tag(log, int(interval(1, 64)))", IntDistribution(1, 64, log=True)),
        ("n=range(1, 10, 2)", IntDistribution(1, 9, step=2)),  # range's stop is left out, as Hydra's
        ("x=range(0.0, 1.0, 0.25)", FloatDistribution(0.0, 0.75, step=0.25)),
    ],
)
def test_search_space_from_the_override_grammar(line, expected):
    assert distribution(_parse(line)) == expected


@pytest.mark.parametrize(
    "value", ["-", "+", "b c", "x=y", "1", "null", "true", "[1]", "it's", 3, -2.5e-07, 0.1, None, True]
)
def test_a_drawn_value_reads_back_the_same(value):
    """What a job's override says is what the trial drew: a string that would read as another type is quoted."""
    parsed = _parse(f"k={element(value)}").value()
    assert parsed == value and type(parsed) is type(value)


def test_plain_strings_stay_unquoted():
    """Job folder names (hydra.job.override_dirname) read `phi_sign=-`, as before."""
    assert (element("-"), element("+"), element(1e-05)) == ("-", "+", "1e-05")


def test_draws_are_rounded_before_the_trial_records_them():
    """The sampler's draws from a continuous range, to 3 significant digits, in the study's own record; steps,
    ints and choices as drawn; a rounding that would leave the range keeps the draw."""
    space = {
        "a": FloatDistribution(1e-6, 0.1, log=True),
        "b": FloatDistribution(0.0, 1.0),
        "s": FloatDistribution(0.0, 1.0, step=0.125),
        "n": IntDistribution(1, 1000),
        "c": CategoricalDistribution(["-", "+"]),
    }
    study = optuna.create_study(sampler=Rounded(optuna.samplers.RandomSampler(seed=0), 3))
    for _ in range(20):
        trial = study.ask(space)
        study.tell(trial, 0.0)
    for t in study.trials:
        assert t.params["a"] == float(f"{t.params['a']:.3g}") and t.params["b"] == float(f"{t.params['b']:.3g}")
        assert t.params["s"] % 0.125 == 0 and isinstance(t.params["n"], int) and t.params["c"] in ("-", "+")
    assert rounded(0.0012345678, FloatDistribution(1e-6, 0.1, log=True), 3) == 0.00123
    assert rounded(0.12355, FloatDistribution(0.0, 0.1236), 3) == 0.12355  # 0.124 would leave the range
    assert rounded(0.0012345678, FloatDistribution(1e-6, 0.1, log=True), None) == 0.0012345678
    assert phi_of({"phi_sign": "-", "phi_abs": 0.0017}) == -0.0017 and phi_of({"x": 1.0}) is None


APP = """
import hydra

@hydra.main(version_base=None, config_path=".", config_name="cfg")
def main(cfg):
    return -((cfg.x - 0.25) ** 2)

main()
"""

CFG = """
defaults:
  - override hydra/sweeper: optuna
  - override hydra/sweeper/sampler: random
x: 0.0
hydra:
  mode: MULTIRUN
  sweeper:
    direction: maximize
    study_name: tiny
    n_trials: 2
    n_jobs: 2
    sampler: {seed: 0}
    params: {x: "interval(0, 1)"}
"""


def _tiny_search(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "cfg.yaml").write_text(CFG)
    cmd = [sys.executable, "app.py", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_a_stopped_search_resumes_from_its_sqlite_study(tmp_path):
    """The study lives in the sqlite file: the same command again runs only the trials it lacks, first the one a
    stopped search left running, under its own number and overrides (so its job folder is the same)."""
    db = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="tiny", storage=db, direction="maximize")
    stopped = study.ask({"x": FloatDistribution(0, 1)})
    stopped.set_user_attr("overrides", [f"x={stopped.params['x']!r}"])

    proc = _tiny_search(tmp_path, f"hydra.sweeper.storage={db}", "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = optuna.load_study(study_name="tiny", storage=db).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[0].params == stopped.params and trials[0].value == pytest.approx(-((stopped.params["x"] - 0.25) ** 2))
    assert {p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()} == {"0", "1", "2"}

    proc = _tiny_search(tmp_path, f"hydra.sweeper.storage={db}", "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(optuna.load_study(study_name="tiny", storage=db).trials) == 3  # nothing left to run
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(t.value for t in trials) and best["n_complete"] == 3


def test_phi_search_keeps_its_study_in_sqlite(tmp_path):
    """hparams_search=phi_optuna with a storage: the study and its trials are in the file, each trial's value the
    accuracy its run recorded; the same command with a larger n_trials adds trials, not drawing the first again."""
    sweep, db = tmp_path / "search", f"sqlite:///{tmp_path / 's.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PHICENTER_DATA_DIR": str(tmp_path / "data")}
    cmd = [sys.executable, "-m", "phicenter.train", "-m", search_override(), "epochs=1", "prune.iterations=1"]
    cmd += ["threads=1", "round_store.enabled=false", f"hydra.sweep.dir={sweep}", f"hydra.sweeper.storage={db}"]
    for n in (2, 3):
        proc = subprocess.run([*cmd, f"hydra.sweeper.n_trials={n}"], cwd=REPO, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]

    study = optuna.load_study(study_name="phi_search", storage=db)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert len({(t.params["phi_sign"], t.params["phi_abs"]) for t in study.trials}) == 3
    runs = {
        json.loads(p.read_text())["config"]["phi_abs"]: json.loads(p.read_text()) for p in sweep.glob("*/results.json")
    }
    assert len(runs) == 3
    for t in study.trials:
        assert t.value == runs[t.params["phi_abs"]]["final"]["val_acc"]
