"""Each distinct round trained once (phicenter/engine/reuse.py, roundstore.py): the round key, the store, the
cohort's representatives, and what results.json says of it. Every store here is a fresh temporary folder, and
so is the key that signs its entries (what the store trusts: tests/test_store_trust.py)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.cli import ROOT, compose_config, env
from tests.faults import counted, die_at_validation

from phicenter.engine import build, loop, storetrust
from phicenter.engine import rundir as results
from phicenter.engine.cohort import make_variants
from phicenter.engine.reuse import RoundKeys
from phicenter.engine.roundstore import Entry, RoundStore
from phicenter.method import pruning

# digits, one epoch a round: mask0 and standard at |phi| <= 1e-3 re-sign nothing (docs/method.md)
FAST = ["epochs=1", "prune.iterations=2", "threads=1"]
GRID = [(s, p) for s in ("mask0", "standard", "mask1", "gradual") for p in (0.0, 1e-3)]


@pytest.fixture(autouse=True, scope="module")
def _key_file(tmp_path_factory):
    """The store's key in a temporary folder (the default one lies in the home folder)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(storetrust.KEY_ENV, str(tmp_path_factory.mktemp("key") / "round_store.key"))
        yield


def store_args(store: Path | None) -> list[str]:
    return ["round_store.enabled=false"] if store is None else [f"round_store.dir={store}"]


def comparable(path: Path) -> dict:
    """results.json less the timing fields, the reuse record and the round store (its setting, what it did)."""
    res = results.read_json(path)
    res["config"].pop("round_store")
    res.pop("round_store", None)
    for r in res["rounds"] + [res["final"]]:
        for k in ("seconds", "seconds_packed", "reused_from"):
            r.pop(k, None)
    res.pop("cohort", None)  # which variants shared a cohort, and the forward that trained it
    return res


def metrics(path: Path) -> list:
    """What a round trained: its metrics and epoch history (not phi's diagnostics, which differ by phi)."""
    return [
        (r["round"], r["sparsity"], r["train_loss"], r["val_acc"], r["test_acc"], r["epochs"])
        for r in results.read_json(path)["rounds"]
    ]


def rounds_reused(path: Path) -> list:
    return [r["reused_from"] for r in results.read_json(path)["rounds"]]


# ---------------------------------------------------------------- the key


def _key(*overrides: str, r: int = 1, edit=None) -> str:
    cfg = compose_config(
        "dataset=synthetic", "dataset.n_train=120", "dataset.n_test=40", "dataset.val_size=40", *overrides
    )
    splits = build.load_data(cfg)
    net = build.build_model(cfg, splits)
    build.build_imp(cfg, net)
    if edit is not None:
        with torch.no_grad():
            edit(net)
    return RoundKeys(cfg, splits, "cpu")(net, r)


def test_key_follows_what_is_trained_and_nothing_else():
    base = _key()
    training = [
        "optim.lr=0.002",
        "epochs=3",
        "batch_size=32",
        "seed=1",
        "trainer.precision=bf16-mixed",
        "schedule.name=cosine",
        "dataset.val_size=30",
        "dataset.augment=true",
        "dataset.split_seed=1",
        "dataset.noise=30",
        "+model.hidden=[20,10]",
        "rewind.epoch=1",
        "rewind.step=3",
        "+trainer.gradient_clip_val=1.0",
    ]
    for o in training:
        assert _key(o) != base, o
    assert _key(r=2) != base
    assert (
        RoundKeys(
            compose_config("dataset=synthetic"), build.load_data(compose_config("dataset=synthetic")), "cuda"
        ).header
        != RoundKeys(
            compose_config("dataset=synthetic"), build.load_data(compose_config("dataset=synthetic")), "cpu"
        ).header
    )
    state_edits = {
        "a weight": lambda n: pruning.raw_weight(n.fc1).view(-1)[0].add_(1e-7),
        "a mask bit": lambda n: pruning.mask_of(n.fc2).mask.view(-1)[3].logical_not_(),
        "a fill": lambda n: pruning.mask_of(n.out).fill.view(-1)[0].add_(1.0),
        "a bias": lambda n: n.out.bias.view(-1)[0].add_(1e-7),
    }
    for what, edit in state_edits.items():
        assert _key(edit=edit) != base, what
    # the execution settings that leave a round's bits alone (those that do not: tests/test_round_key.py)
    execution = [
        "data_dir=/elsewhere",
        "trainer.enable_progress_bar=true",
        "checkpoint.keep_all=true",
        "checkpoint.every_n_epochs=2",
        "resume=false",
        "trainer.accelerator=cpu",
        "round_store.dir=/x",
        "round_store.enabled=false",
        "pack_chunk=2",
        # phi and the strategy act only through the state at the round's start
        "phi=0.5",
        "strategy=mask1",
        "prune.base=0.5",
        "reinit.magnitude=0.1",
        "phi_scale=layer_std",
        "strategy=random_mask",
        "prune.conv_base=0.9",
    ]
    for o in execution:
        assert _key(o) == base, o


def _boundary_key(*overrides: str) -> str:
    """Round 1's key, after the round boundary (prune + reinit) of a net left at theta0."""
    cfg = compose_config(
        "dataset=synthetic", "dataset.n_train=120", "dataset.n_test=40", "dataset.val_size=40", *overrides
    )
    splits = build.load_data(cfg)
    net = build.build_model(cfg, splits)
    build.build_imp(cfg, net).advance(1)
    return RoundKeys(cfg, splits, "cpu")(net, 1)


def test_the_mask_a_boundary_makes_is_in_the_key():
    """prune.* and the strategy are out of the settings the key holds, and in it through the state the boundary
    made: the convolutions' own rate, and a random mask against lth's magnitude mask, give other round-1 keys."""
    assert _boundary_key("model=conv2", "prune.conv_base=0.9") != _boundary_key("model=conv2")
    assert _boundary_key("model=conv2", "prune.conv_base=0.8") == _boundary_key("model=conv2")  # = prune.base
    assert _boundary_key("strategy=random_mask") != _boundary_key("strategy=lth")


# ---------------------------------------------------------------- store on vs off


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The 4 x 2 grid run by run, store off and on (a fresh store), and as one cohort with the store on."""
    out = tmp_path_factory.mktemp("grid")
    for side, store in (("off", None), ("on", out / "store")):
        for s, p in GRID:
            loop.run(compose_config(f"strategy={s}", f"phi={p}", *FAST, *store_args(store)), out / side / f"{s}_{p}")
    base = compose_config(*FAST, *store_args(out / "cohort_store"))
    variants = [
        v
        for s in ("mask0", "standard", "mask1", "gradual")
        for v in make_variants(compose_config(*FAST, f"strategy={s}", *store_args(out / "cohort_store")), [0.0, 1e-3])
    ]
    assert base.round_store.enabled
    loop.train(variants, out / "cohort")
    return out, variants


def test_store_on_and_off_give_the_same_results(grid):
    out, variants = grid
    for s, p in GRID:
        name = f"{s}_{p}"
        assert comparable(out / "on" / name / results.RESULTS) == comparable(out / "off" / name / results.RESULTS)
        a = torch.load(results.checkpoint_path(out / "on" / name, 2), weights_only=True)["model"]
        b = torch.load(results.checkpoint_path(out / "off" / name, 2), weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in b), name
    for v, (s, p) in zip(variants, GRID):
        assert comparable(out / "cohort" / v.name / results.RESULTS) == comparable(
            out / "off" / f"{s}_{p}" / results.RESULTS
        ), v.name


def test_each_distinct_round_is_trained_once(grid):
    out, variants = grid
    off = [rounds_reused(out / "off" / f"{s}_{p}" / results.RESULTS) for s, p in GRID]
    assert all(r is None for rs in off for r in rs)  # store off: every round trained
    on = {(s, p): rounds_reused(out / "on" / f"{s}_{p}" / results.RESULTS) for s, p in GRID}
    first = str((out / "on" / "mask0_0.0").resolve())
    assert on[("mask0", 0.0)] == [None, None, None]
    assert all(on[c][0] == first for c in GRID[1:])  # round 0: the same dense training for all eight
    for s in ("mask0", "standard"):  # phi = 1e-3 re-signs nothing: the phi = 0 run, round after round
        assert on[(s, 1e-3)] == [first, *[str((out / "on" / f"{s}_0.0").resolve())] * 2]
    for s in ("mask1", "gradual"):  # theta0 in the reference: phi moves signs, the rounds are their own
        assert on[(s, 1e-3)][1:] == [None, None]
    keys = {
        r["round_key"] for s, p in GRID for r in results.read_json(out / "on" / f"{s}_{p}" / results.RESULTS)["rounds"]
    }
    trained = sum(r is None for rs in on.values() for r in rs)
    assert trained == len(keys) == RoundStore(out / "store").usage()["entries"] == 1 + 2 * 2 + 4 * 2
    # in one cohort: the same; its variants reuse the representative's folder
    in_cohort = {v.name: rounds_reused(out / "cohort" / v.name / results.RESULTS) for v in variants}
    assert sum(r is None for rs in in_cohort.values() for r in rs) == len(keys)
    rep = str((out / "cohort" / variants[0].name).resolve())
    assert all(rs[0] == rep for name, rs in in_cohort.items() if name != variants[0].name)
    assert in_cohort[variants[1].name] == [rep, rep, rep]


def test_a_later_grid_reuses_an_earlier_ones_rounds(grid, tmp_path):
    """A new phi for mask0 in a later launch: all its rounds come from the store (it re-signs nothing)."""
    out, _ = grid
    loop.run(compose_config("strategy=mask0", "phi=-5e-5", *FAST, *store_args(out / "store")), tmp_path / "later")
    assert all(r is not None for r in rounds_reused(tmp_path / "later" / results.RESULTS))
    assert metrics(tmp_path / "later" / results.RESULTS) == metrics(out / "off" / "mask0_0.0" / results.RESULTS)


# ---------------------------------------------------------------- the store itself


def test_corrupt_entry_is_reported_ignored_and_retrained(tmp_path, caplog):
    store = tmp_path / "store"
    cfg = compose_config("strategy=mask1", "phi=0.01", *FAST, *store_args(store))
    loop.run(cfg, tmp_path / "first")
    key = results.read_json(tmp_path / "first" / results.RESULTS)["rounds"][1]["round_key"]
    state = RoundStore(store).path(key) / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="phicenter"):
        loop.run(cfg, tmp_path / "second")
    assert "fails its checksum" in caplog.text and "trained again" in caplog.text
    first = str((tmp_path / "first").resolve())
    assert rounds_reused(tmp_path / "second" / results.RESULTS) == [first, None, first]
    assert comparable(tmp_path / "second" / results.RESULTS) == comparable(tmp_path / "first" / results.RESULTS)
    entry = RoundStore(store).get(key)
    assert entry is not None and entry.first_run == str((tmp_path / "second").resolve())


def _publish(root: str, barrier, results_queue) -> None:
    entry = Entry(
        "ab" + "0" * 62,
        0,
        f"run-{multiprocessing.current_process().pid}",
        {"w": torch.arange(1000.0)},
        [{"round": 0, "epoch": 0, "train_loss": 1.0, "train_acc": 0.5}],
        (0.5, 0.9),
    )
    barrier.wait()
    results_queue.put(RoundStore(root).put(entry))


def test_two_jobs_publishing_one_key_leave_one_valid_entry(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_publish, args=(str(tmp_path), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(queue.get(timeout=5) for _ in procs) == [False, True]
    store = RoundStore(tmp_path)
    entry = store.get("ab" + "0" * 62)
    assert entry is not None and torch.equal(entry.model["w"], torch.arange(1000.0)) and entry.test == (0.5, 0.9)
    assert [p.name for p in (tmp_path / "ab").iterdir()] == ["ab" + "0" * 62]  # no temporary folder left
    assert store.usage()["entries"] == 1


def test_a_half_written_entry_is_never_read(tmp_path):
    key = "cd" + "1" * 62
    half = tmp_path / "cd" / f".{key}.x.tmp"  # what a job still writing has
    half.mkdir(parents=True)
    (half / "state.pt").write_bytes(b"partial")
    store = RoundStore(tmp_path)
    assert store.get(key) is None and store.usage()["entries"] == 0 and half.exists()


def test_concurrent_jobs_of_a_multirun_share_the_store(tmp_path):
    """submitit's local launcher: two jobs in parallel processes that share every round (mask0 at phi 0 and
    1e-4); both finish, every key has one valid entry, and the multirun's end counts rounds and the store."""
    store, sweep = tmp_path / "store", tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "phicenter.train",
        "-m",
        "hydra/launcher=local",
        "phi=0,1e-4",
        *FAST,
        f"round_store.dir={store}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(sweep.glob("*/results.json"))
    assert len(runs) == 2
    assert metrics(runs[0]) == metrics(runs[1])
    keys = [r["round_key"] for r in results.read_json(runs[0])["rounds"]]
    assert keys == [r["round_key"] for r in results.read_json(runs[1])["rounds"]]
    for key in keys:
        assert RoundStore(store).get(key) is not None
    assert not [p for p in store.glob("*/*") if p.name.startswith(".")]  # no temporary folder left
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    jobs = summary["complete"]
    assert sum(j["rounds_trained"] + j["rounds_reused"] for j in jobs) == 6
    assert f"round store {store}: 3 rounds" in proc.stderr + proc.stdout


# ---------------------------------------------------------------- resume with representatives


def test_killed_cohort_resumes_mid_round_with_its_representatives(tmp_path, monkeypatch):
    """A cohort whose variants share round 0 (one representative) and then part, killed mid-round 1 and
    relaunched: it resumes from the epoch checkpoint of the same representatives, to the results of a
    cohort that trained every variant itself; no epoch is trained twice."""
    extra = ["epochs=4", "prune.iterations=1", "threads=1", "strategy=mask1"]
    loop.train(make_variants(compose_config(*extra, "round_store.enabled=false"), [0.0, 0.02]), tmp_path / "ref")
    vs = make_variants(compose_config(*extra, f"round_store.dir={tmp_path / 'store'}"), [0.0, 0.02])
    calls = die_at_validation(monkeypatch, 7)  # round 0: 4 epochs; round 1: after epochs 0 and 1, then this one
    with pytest.raises(loop.CohortFailed):
        loop.train(vs, tmp_path / "run")
    assert list((tmp_path / "run" / "checkpoints").glob("cohort_*/round_001_epochs/last.ckpt"))
    counted(monkeypatch, calls)
    again = loop.train(vs, tmp_path / "run")
    assert calls["n"] == 2  # validation after epochs 2 and 3 of round 1
    for v in vs:
        assert (
            comparable(tmp_path / "run" / v.name / results.RESULTS)["rounds"]
            == comparable(tmp_path / "ref" / v.name / results.RESULTS)["rounds"]
        )
        assert again[v.name]["status"] == "complete"
    assert rounds_reused(tmp_path / "run" / vs[1].name / results.RESULTS)[0] == str(
        (tmp_path / "run" / vs[0].name).resolve()
    )
    assert not list((tmp_path / "run" / "checkpoints").glob("cohort_*"))


# ---------------------------------------------------------------- the summary and the report


def test_report_counts_trained_and_reused_rounds(grid, tmp_path):
    from phicenter.analysis import report

    out, _ = grid
    assert report.main([str(out / "on"), "--out", str(tmp_path / "rep")]) == 0
    assert "Rounds: 13 trained, 11 reused" in (tmp_path / "rep" / "report.md").read_text()
    import csv

    with open(tmp_path / "rep" / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(int(r["rounds_trained"]) for r in rows) == 13 and sum(int(r["rounds_reused"]) for r in rows) == 11


def test_bench_row_reports_both_sides(tmp_path):
    """phicenter.bench.rounds on a small grid: trained rounds off and on, the ratio, identical results."""
    from phicenter.bench.rounds import round_store_grid, table

    res = round_store_grid(epochs=1, iterations=1, strategies=("mask0", "mask1"), phis=(0.0, 1e-3), workdir=tmp_path)
    assert res["rounds_total"] == res["rounds_trained_off"] == 8
    assert res["rounds_trained_on"] == res["distinct_keys"] == res["store"]["entries"] == 1 + 1 + 2
    assert res["identical_results"] and res["round_store_wall_ratio"] > 0
    assert "wall-time ratio" in table(res)
