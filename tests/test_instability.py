"""instability.enabled (docs/method.md, "Instability analysis"): each round's copy, trained from the round's
starting state with another data order, and the test error barrier between the two, recorded per round; the
lineage's results exactly those of the run without the option; a copy with the run's own data order is the round
itself (barrier 0, late rewinding included); a kill in a copy's fit redoes at most that fit; a copy is trained once
and reused from the round store."""

from __future__ import annotations

import math

import pytest
from tests.cli import compose_config
from tests.faults import counted, die_at_validation

from phicenter.config import config_changes, recorded_config
from phicenter.engine import loop
from phicenter.engine.rundir import RESULTS, read_json

RUN = [
    "dataset=synthetic",
    "dataset.n_train=120",
    "dataset.n_test=40",
    "dataset.val_size=40",
    "+model.hidden=[20,10]",
    "batch_size=20",
    "optim.lr=0.01",
    "epochs=2",
    "prune.iterations=1",
    "threads=1",
    "strategy=lth",
]
OFF = ["round_store.enabled=false"]
ON = ["instability.enabled=true"]


def lineage(res: dict) -> dict:
    """results.json less the timing fields, the reuse record, the store and the option itself."""
    res = {k: v for k, v in res.items() if k != "dir"}
    res["config"] = {k: v for k, v in res["config"].items() if k not in ("instability", "round_store")}
    res.pop("round_store", None)
    res["rounds"] = [
        {k: v for k, v in r.items() if k not in ("seconds", "reused_from", "instability")} for r in res["rounds"]
    ]
    res["final"] = res["rounds"][-1]
    return res


def copies(res: dict) -> list:
    return [{k: v for k, v in r["instability"].items() if k not in ("seconds", "reused_from")} for r in res["rounds"]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("instability")
    out = {}
    for name, extra in (("off", []), ("on", ON)):
        loop.run(compose_config(*RUN, *OFF, *extra), d / name)
        out[name] = read_json(d / name / RESULTS) | {"dir": d / name}
    return out


def test_each_round_records_a_finite_barrier_and_the_lineage_is_unchanged(runs):
    on, off = runs["on"], runs["off"]
    assert on["status"] == "complete" and [r["round"] for r in on["rounds"]] == [0, 1]
    assert lineage(on) == lineage(off)
    assert all("instability" not in r for r in off["rounds"])
    assert config_changes(off["config"], on["config"]) == []  # an execution setting: a relaunch may switch it
    for r in on["rounds"]:
        c = r["instability"]
        assert c["data_seed"] == 1 and c["diverged"] is None and c["reused_from"] is None
        assert [e["epoch"] for e in c["epochs"]] == [0, 1] and all(e["round"] == r["round"] for e in c["epochs"])
        assert c["epochs"] != r["epochs"]  # another data order
        assert c["alphas"] == [i / 10 for i in range(11)] and c["bn_batches"] == 0
        # the path's ends are the round and its copy, as each was tested (no BatchNorm: nothing recomputed)
        assert c["errors"][0] == pytest.approx(1 - r["test_acc"], abs=1e-12)
        assert c["errors"][-1] == pytest.approx(1 - c["test_acc"], abs=1e-12)
        assert math.isfinite(c["barrier"])
        assert c["barrier"] == pytest.approx(max(c["errors"]) - (c["errors"][0] + c["errors"][-1]) / 2)
        assert c["barrier"] >= abs(c["errors"][0] - c["errors"][-1]) / 2 - 1e-12
    assert not list((runs["on"]["dir"] / "checkpoints").glob("*_epochs"))


def test_the_barrier_reaches_tensorboard_and_runs_csv(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tests.test_report import read_csv

    from phicenter.analysis import report

    acc = EventAccumulator(str(runs["on"]["dir"] / "tb"))
    acc.Reload()
    assert {"instability/barrier", "instability/test_acc", "instability_epoch/train_loss"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("instability/barrier")] == [1, 3]  # rounds 0 and 1, 2 epochs each
    assert [e.value for e in acc.Scalars("instability/barrier")] == pytest.approx(
        [r["instability"]["barrier"] for r in runs["on"]["rounds"]]
    )
    out = runs["on"]["dir"].parent / "report"
    report.report([runs["on"]["dir"].parent], out)
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in read_csv(out / "runs.csv")}
    assert rows["on"]["instability_barrier"] == f"{100 * runs['on']['final']['instability']['barrier']:.4f}"
    assert rows["off"]["instability_barrier"] == ""


@pytest.mark.parametrize("rewind", [[], ["rewind.step=5"]], ids=["from theta0", "rewind.step=5"])
def test_a_copy_with_the_runs_own_data_order_is_the_round_itself(tmp_path, rewind):
    """data_seed = seed: the copy trains from the round's starting state on the round's own batches, so it ends
    where the round did and the barrier is exactly 0. Under late rewinding round 0's copy starts from theta_s at
    step s (mid-epoch 1 here: 4 steps an epoch) and still ends on round 0's network."""
    res = loop.run(compose_config(*RUN, *OFF, *ON, "instability.data_seed=0", *rewind), tmp_path / "run")
    for r in res["rounds"]:
        c = r["instability"]
        assert c["barrier"] == 0.0 and c["errors"] == [c["errors"][0]] * 11
        assert (c["test_acc"], c["test_loss"]) == (r["test_acc"], r["test_loss"])
        assert {k: c["epochs"][-1][k] for k in ("val_loss", "val_acc")} == {
            k: r["epochs"][-1][k] for k in ("val_loss", "val_acc")
        }
    first = res["rounds"][0]["instability"]["epochs"]
    assert [e["epoch"] for e in first] == ([1] if rewind else [0, 1])


def test_from_round_leaves_the_earlier_rounds_unmeasured(tmp_path):
    res = loop.run(
        compose_config(*RUN, *OFF, *ON, "instability.from_round=1", "instability.points=3"), tmp_path / "run"
    )
    assert res["rounds"][0]["instability"] is None
    assert res["rounds"][1]["instability"]["alphas"] == [0.0, 0.5, 1.0]


def test_a_kill_in_the_copys_fit_redoes_at_most_that_fit(runs, tmp_path, monkeypatch):
    cfg = compose_config(*RUN, *OFF, *ON)
    calls = die_at_validation(monkeypatch, 8)  # round 0: 2, its copy: 2, round 1: 2, its copy: epoch 0, this one
    with pytest.raises(loop.CohortFailed):
        loop.run(cfg, tmp_path)
    assert (tmp_path / "checkpoints" / "round_001_instability_epochs" / "last.ckpt").exists()
    counted(monkeypatch, calls)
    res = loop.run(cfg, tmp_path)
    assert calls["n"] == 1  # round 1 resumed at its end (no epoch trained), its copy after its epoch 0
    assert lineage(res) == lineage(runs["on"]) and copies(res) == copies(runs["on"])
    assert not list((tmp_path / "checkpoints").glob("*_epochs"))


def test_a_copy_is_trained_once_and_reused_from_the_store(runs, tmp_path):
    store = [f"round_store.dir={tmp_path / 'store'}"]
    first = loop.run(compose_config(*RUN, *ON, *store), tmp_path / "a")
    second = loop.run(compose_config(*RUN, *ON, *store), tmp_path / "b")
    assert [r["instability"]["reused_from"] for r in first["rounds"]] == [None, None]
    assert [r["instability"]["reused_from"] for r in second["rounds"]] == [str((tmp_path / "a").resolve())] * 2
    assert copies(first) == copies(second) == copies(runs["on"])
    assert recorded_config(compose_config(*RUN, *ON, *store))["instability"]["enabled"] is True
