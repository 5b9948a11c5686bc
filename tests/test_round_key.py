"""The round key (phicenter/engine/reuse.py) changes with everything that changes a round's result to the bit —
the number of processes, the threads torch uses, the fused optimizer, compile, deterministic kernels, the
evaluation batch, the training code — and stays for the execution settings that change no bit. What it holds
of the settings, the data and the state: tests/test_round_store.py."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tests.cli import ROOT, compose_config

from phicenter.config import EXECUTION_KEYS, IN_ROUND_KEY, is_execution_key
from phicenter.engine import build, loop, reuse
from phicenter.engine import rundir as results
from phicenter.engine.cohort import make_variants
from phicenter.engine.reuse import Outcome, Reuse, RoundKeys
from phicenter.engine.roundstore import RoundStore

SMALL = ["dataset=synthetic", "dataset.n_train=120", "dataset.n_test=40", "dataset.val_size=40"]
FAST = ["epochs=1", "prune.iterations=1", "threads=1"]


def parts(*overrides: str):
    cfg = compose_config(*SMALL, *overrides)
    splits = build.load_data(cfg)
    net = build.build_model(cfg, splits)
    build.build_imp(cfg, net)
    return cfg, splits, net


def key(*overrides: str, world_size: int = 1) -> str:
    cfg, splits, net = parts(*overrides)
    return RoundKeys(cfg, splits, "cpu", world_size)(net, 1)


@pytest.fixture
def threads():
    """Set torch's thread count inside a test; the session's one thread back after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def round_keys(path: Path) -> list[str]:
    return [r["round_key"] for r in results.read_json(path / results.RESULTS)["rounds"]]


def reused(path: Path) -> list:
    return [r["reused_from"] for r in results.read_json(path / results.RESULTS)["rounds"]]


# ---------------------------------------------------------------- what changes the bits is in the key


def test_number_of_processes():
    one = key()
    assert key(world_size=2) != one and key(world_size=4) not in (one, key(world_size=2))
    assert key(world_size=1) == one


def test_threads_torch_uses_not_the_setting(threads):
    threads(1)
    one = key()
    assert key("threads=2") == one  # the setting alone: the loop sets torch's count before the key is made
    threads(2)
    assert key() != one and key("threads=2") == key()
    threads(1)
    assert key() == one
    cfg, splits, net = parts()
    keys = RoundKeys(cfg, splits, "cpu")
    assert keys(net, 1) == one
    threads(2)
    assert keys(net, 1) != one  # read as each key is made


def test_fused_optimizer():
    base = key()  # conf/config.yaml: optim.fused=true
    assert key("optim.fused=false") != base
    assert key("optim.fused=null") == key("optim.fused=false")  # both: torch's default implementation


def test_compile():
    assert key("compile=true") != key() == key("compile=false")


def test_deterministic_kernels_as_the_engine_resolves_them():
    base = key()  # null: on for a CPU run
    assert key("trainer.deterministic=false") != base
    assert key("trainer.deterministic=true") == base


def test_evaluation_batch_as_the_loaders_use_it():
    base = key()  # eval_batch_size=1000
    assert key("eval_batch_size=100") != base
    assert key("eval_batch_size=10") == key("eval_batch_size=30") == key("eval_batch_size=60")  # batch_size 60
    assert key("eval_batch_size=100", "batch_size=100") == key("eval_batch_size=10", "batch_size=100")


def test_device_type():
    cfg, splits, net = parts()
    assert RoundKeys(cfg, splits, "cuda")(net, 1) != RoundKeys(cfg, splits, "cpu")(net, 1)


@pytest.mark.parametrize("library", ["torchvision", "PIL"])
def test_torchvisions_and_pillows_versions_for_the_torchvision_pipeline_only(monkeypatch, library):
    """torchvision's transforms and Pillow's images make the torchvision pipeline's batches, so their versions
    are in its keys; the fast pipeline's keys (every key before this) hold neither and do not move."""
    import importlib

    module = importlib.import_module(library)
    fast, tv = parts(), parts("dataset.pipeline=torchvision")
    before = [RoundKeys(cfg, splits, "cpu")(net, 1) for cfg, splits, net in (fast, tv)]
    assert b'"data_libraries"' in RoundKeys(*tv[:2], "cpu").header
    assert b'"data_libraries"' not in RoundKeys(*fast[:2], "cpu").header
    monkeypatch.setattr(module, "__version__", module.__version__ + ".other")
    after = [RoundKeys(cfg, splits, "cpu")(net, 1) for cfg, splits, net in (fast, tv)]
    assert after[0] == before[0] and after[1] != before[1]


def test_execution_settings_in_the_key_are_the_declared_ones():
    cfg, _, _ = parts()
    assert set(reuse.execution_in_key(cfg, "cpu", 1)) == set(IN_ROUND_KEY)
    assert all(is_execution_key(k) for k in IN_ROUND_KEY)


def test_method_md_says_for_every_execution_setting_whether_it_is_in_the_key():
    text = (ROOT / "docs" / "method.md").read_text()
    section = text[text.index("- **The round key.**") : text.index("- **The round store.**")]
    for k in EXECUTION_KEYS:
        assert re.search(rf"`{re.escape(k)}[`.=]", section), k


# ---------------------------------------------------------------- the code

PACKAGE = reuse.CODE_ROOT


def _copy(tmp_path: Path, name: str, edit=None) -> Path:
    root = tmp_path / name / "phicenter"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    if edit is not None:
        edit(root)
    return root


def _flip_first_byte(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[0] ^= 1
    path.write_bytes(bytes(b))


def test_a_changed_source_file_changes_the_key(tmp_path, monkeypatch):
    base = key()
    monkeypatch.setattr(reuse, "CODE_ROOT", _copy(tmp_path, "same"))
    assert key() == base  # the same files elsewhere: the digest is of contents and relative paths
    for name, edit in {
        "a method module": lambda r: _flip_first_byte(r / "method" / "polarity.py"),
        "the engine": lambda r: _flip_first_byte(r / "engine" / "module.py"),
        "the data": lambda r: _flip_first_byte(r / "data" / "transforms.py"),
        "the models": lambda r: _flip_first_byte(r / "models" / "nets.py"),
        "a new module": lambda r: (r / "method" / "extra.py").write_text("X = 1\n"),
    }.items():
        monkeypatch.setattr(reuse, "CODE_ROOT", _copy(tmp_path, name, edit))
        assert key() != base, name
    for name, edit in {
        "the progress bar": lambda r: _flip_first_byte(r / "engine" / "progress.py"),
        "the report": lambda r: _flip_first_byte(r / "analysis" / "report.py"),
        "the bench": lambda r: _flip_first_byte(r / "bench" / "rounds.py"),
        "the tickets": lambda r: _flip_first_byte(r / "ticket" / "encoding.py"),
        "the export": lambda r: _flip_first_byte(r / "export.py"),
        "a logger": lambda r: _flip_first_byte(r / "loggers" / "mlflow_run.py"),
    }.items():
        monkeypatch.setattr(reuse, "CODE_ROOT", _copy(tmp_path, name, edit))
        assert key() == base, name


def test_code_digest_is_read_once_per_process(tmp_path):
    root = _copy(tmp_path, "once")
    first = reuse.code_digest(root)
    _flip_first_byte(root / "models" / "nets.py")
    assert reuse.code_digest(root) == first  # what this process runs is what it read first


# ---------------------------------------------------------------- what changes no bit stays out


def test_pure_execution_settings_leave_the_key():
    base = key()
    for o in [
        "data_dir=/elsewhere",
        "checkpoint.keep_all=true",
        "checkpoint.every_n_epochs=3",
        "trainer.enable_progress_bar=true",
        "trainer.enable_progress_bar=false",
        "round_store.dir=/x",
        "round_store.enabled=false",
        "resume=false",
        "pack_chunk=2",
        "+dataset.num_workers=2",
        "fault.fail_round=3",
        "dry_run=phi",
        "threads=1",
        "logger=[]",
        "logger=[csv,mlflow,wandb]",
        "logger=wandb",
    ]:
        assert key(o) == base, o


# ---------------------------------------------------------------- the key at work


def test_a_run_at_another_thread_count_trains_its_rounds(tmp_path, threads):
    """threads=2 after a threads=1 run on one store: every round trained again (other keys); a threads=1 run
    after both reuses every round of the first."""
    store = [f"round_store.dir={tmp_path / 'store'}"]
    loop.run(compose_config(*SMALL, *FAST, *store), tmp_path / "one")
    loop.run(compose_config(*SMALL, *FAST[:-1], "threads=2", *store), tmp_path / "two")
    threads(1)
    loop.run(compose_config(*SMALL, *FAST, *store), tmp_path / "again")
    assert reused(tmp_path / "two") == [None, None]
    assert not set(round_keys(tmp_path / "two")) & set(round_keys(tmp_path / "one"))
    assert round_keys(tmp_path / "again") == round_keys(tmp_path / "one")
    assert reused(tmp_path / "again") == [str((tmp_path / "one").resolve())] * 2


def test_a_stack_that_changes_bits_trains_every_variant_and_publishes_nothing(tmp_path):
    """mask0 at phi 0 and 1e-3 share every round (1e-3 re-signs nothing). With the per-variant forward (the
    CPU's) the second takes both rounds from the first; with the batched forward, whose roundings depend on
    the stack, each trains its own and the store gets nothing."""
    for impl, entries in (("auto", 2), ("batched", 0)):
        store = tmp_path / impl / "store"
        vs = make_variants(compose_config(*SMALL, *FAST, f"round_store.dir={store}"), [0.0, 1e-3])
        loop.train(vs, tmp_path / impl / "runs", impl=impl)
        second = reused(tmp_path / impl / "runs" / vs[1].name)
        assert second == (
            [str((tmp_path / impl / "runs" / vs[0].name).resolve())] * 2 if impl == "auto" else [None, None]
        ), impl
        assert RoundStore(store).usage()["entries"] == entries, impl
    cfg, splits, _ = parts()
    assert not Reuse(cfg, splits, "cpu", impl="loop").stacked_alone
    assert Reuse(cfg, splits, "cpu", impl="vmap").stacked_alone
    assert Reuse(cfg, splits, "cuda", impl="loop").stacked_alone
    # kernels not deterministic: no run is bit-reproducible, and the key keeps such rounds apart
    assert not Reuse(compose_config(*SMALL, "trainer.deterministic=false"), splits, "cuda").stacked_alone


def test_a_data_parallel_run_neither_reads_nor_publishes(tmp_path):
    """Its ranks must decide alike, so it never reads the store; its keys hold its number of processes, so what
    it published would be read by nothing."""
    cfg, splits, net = parts(f"round_store.dir={tmp_path / 'store'}")
    member = SimpleNamespace(
        net=net,
        folder=SimpleNamespace(path=tmp_path / "run", read=lambda: None),
        imp=None,
        variant=SimpleNamespace(cfg=cfg),
        record={},
    )
    one, two = Reuse(cfg, splits, "cpu", world_size=1), Reuse(cfg, splits, "cpu", world_size=2)
    k2 = two.keys(cfg)(net, 1)
    outcome = Outcome(k2, [{"round": 1, "epoch": 0, "train_loss": 1.0, "train_acc": 0.5}], (1.0, 0.5), None)
    two.publish([member], [outcome], 1)
    assert RoundStore(tmp_path / "store").usage()["entries"] == 0
    one.publish([member], [outcome], 1)  # the store now holds the two-process key
    assert RoundStore(tmp_path / "store").get(k2) is not None
    trained, sources = two.plan([member], 1)
    assert trained == [member] and sources[0].entry is None and sources[0].key == k2


def test_a_round_resumed_under_another_key_is_not_published(tmp_path, threads, monkeypatch):
    """Killed mid-round 1 at one thread, relaunched at two: the relaunch resumes the fit from its epoch
    checkpoint, a round no key describes, and does not publish it; relaunched at one thread, it does."""
    from tests.faults import counted, die_at_validation

    base = [*SMALL, "epochs=3", "prune.iterations=1"]
    for n, entries in ((2, 1), (1, 2)):
        again, store, run = f"threads={n}", tmp_path / str(n) / "store", tmp_path / str(n) / "run"
        calls = die_at_validation(monkeypatch, 5)  # round 0: 3 epochs; round 1: after epoch 0, then this one
        with pytest.raises(loop.CohortFailed):
            loop.run(compose_config(*base, "threads=1", f"round_store.dir={store}"), run)
        assert (run / "checkpoints" / "round_001.key").is_file()
        counted(monkeypatch, calls)
        loop.run(compose_config(*base, again, f"round_store.dir={store}"), run)
        threads(1)
        assert calls["n"] == 2  # resumed after epoch 0 of round 1: epochs 1 and 2
        assert RoundStore(store).usage()["entries"] == entries, again
        assert not list((run / "checkpoints").glob("*.key"))
