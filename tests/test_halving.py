"""Successive halving over a pack's variants (pack_halving=true, hparams_search=phi_halving): who stops, by hand;
a real `pack=true` job; its relaunch; the refusals."""

from __future__ import annotations

import json
from types import SimpleNamespace

from omegaconf import OmegaConf
from tests.cli import ROOT, results, train

from phicenter.engine.halving import HALVED, halve, summary


def _members(accs):
    written = []
    out = [
        SimpleNamespace(
            variant=SimpleNamespace(name=f"v{i}"),
            record={"final": {"val_acc": a}, "status": "running"},
            alive=True,
            folder=SimpleNamespace(write=written.append),
        )
        for i, a in enumerate(accs)
    ]
    return out, written


def test_the_worse_half_stops_ties_to_the_later_variant():
    ms, written = _members([0.5, 0.9, 0.7, 0.7, 0.1])
    stopped = halve(ms, 1, last=3)
    assert [m.variant.name for m in stopped] == ["v0", "v4"]  # 5 -> 3 go on: 0.9, 0.7 (v2), 0.7 (v3)
    assert [m.alive for m in ms] == [False, True, True, True, False]
    assert ms[0].record["status"] == HALVED and ms[0].record["halved"]["round"] == 1
    assert ms[0].record["halved"]["best"] == "v1" and len(written) == 2
    ms, _ = _members([0.5, 0.6, 0.6])
    assert [m.variant.name for m in halve(ms, 1, last=3)] == ["v0"]  # 3 -> 2
    ms, _ = _members([0.6, 0.6])
    assert [m.variant.name for m in halve(ms, 2, last=3)] == ["v1"]  # a tie: the job's order decides


def test_round_0_stops_nobody_and_the_last_round_keeps_the_best_only():
    ms, _ = _members([0.1, 0.9, 0.5, 0.3])
    assert halve(ms, 0, last=3) == []
    assert sorted(m.variant.name for m in halve(ms, 3, last=3)) == ["v0", "v2", "v3"]


def test_the_summary_counts_rounds_where_phi_acts():
    rounds = lambda n: [{"round": r} for r in range(n + 1)]
    records = {
        "a": {"status": "complete", "config": {"phi": 5e-4}, "final": {"val_acc": 0.8}, "rounds": rounds(4)},
        "b": {"status": HALVED, "halved": {"round": 2}, "rounds": rounds(2)},
        "c": {"status": HALVED, "halved": {"round": 1}, "rounds": rounds(1)},
    }
    s = summary(records)
    assert s == {"survivor": "a", "phi": 5e-4, "stopped": {"b": 2, "c": 1}, "rounds_trained": 7, "rounds_grid": 12}


ARGS = [
    "dataset=synthetic",
    "dataset.shape=[1,6,6]",
    "dataset.n_train=120",
    "dataset.val_size=30",
    "dataset.n_test=30",
    "batch_size=20",
    "epochs=1",
    "prune.iterations=3",
    "threads=1",
    "round_store.enabled=false",
]


def test_a_halving_job_and_its_relaunch(tmp_path):
    run = tmp_path / "run"
    phis = "phi=[0,5e-4,-5e-4,1e-3,-1e-3]"
    train(*ARGS, "pack=true", "pack_halving=true", phis, f"hydra.run.dir={run}")
    pack = json.loads((run / "pack.json").read_text())
    statuses = sorted(pack["variants"].values())
    assert statuses == ["complete", HALVED, HALVED, HALVED, HALVED]
    h = pack["halving"]
    assert h["rounds_trained"] == 5 + 3 + 2 and h["rounds_grid"] == 15  # 5 -> 3 -> 2 -> 1
    survivor = results(run / h["survivor"])
    assert survivor["status"] == "complete" and len(survivor["rounds"]) == 4
    # the survivor trained as it would alone: its rounds are the grid's
    alone = tmp_path / "alone"
    train(*ARGS, f"phi={h['phi']}", f"hydra.run.dir={alone}")
    assert [e["val_acc"] for e in results(alone)["rounds"]] == [e["val_acc"] for e in survivor["rounds"]]
    again = train(*ARGS, "pack=true", "pack_halving=true", phis, f"hydra.run.dir={run}")
    assert (again.stdout + again.stderr).count("nothing to do") == 5


def test_halving_needs_one_whole_pack(tmp_path):
    for extra in (["pack_halving=true"], ["pack=true", "pack_halving=true", "phi=[0,1e-3]", "pack_chunk=1"]):
        p = train(*ARGS, *extra, f"hydra.run.dir={tmp_path / 'x'}", check=False)
        assert p.returncode == 2, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and "pack_halving=true" in p.stderr


def test_the_search_config_spans_the_papers_phis():
    from phicenter.method import paper

    c = OmegaConf.load(ROOT / "conf" / "hparams_search" / "phi_halving.yaml")
    assert c.pack and c.pack_halving and tuple(c.phi) == paper.PHIS
