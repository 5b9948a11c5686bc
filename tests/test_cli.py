"""The real command line: quickstart, multiruns, MNIST from disk, bad input."""

from __future__ import annotations

import pytest
from tests.cli import FAST, SHARED_DATA, results, train


def test_quickstart_default_runs_all_rounds(tmp_path):
    proc = train("threads=1", f"hydra.run.dir={tmp_path}")
    res = results(tmp_path)
    assert res["status"] == "complete"
    assert [r["round"] for r in res["rounds"]] == list(range(11))
    assert res["final"] == res["rounds"][-1]
    assert res["config"]["dataset"]["name"] == "digits" and res["config"]["model"]["name"] == "fc_lot"
    assert res["init"] == "glorot_normal" and res["device"] == "cpu"  # the quickstart takes fc_lot's reference init
    # 10 rounds at base 0.8, per layer round() of the counts: 1 - 0.8^10 = 0.8926 overall
    assert res["final"]["sparsity"] == pytest.approx(1 - 0.8**10, abs=2e-3)
    for r in res["rounds"]:
        assert 0.0 <= r["val_acc"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0
        assert set(r) >= {
            "round",
            "sparsity",
            "effective_sparsity",
            "train_loss",
            "val_acc",
            "test_acc",
            "flipped_by_phi",
            "flipped_vs_init",
            "seconds",
        }
        assert r["effective_sparsity"] >= r["sparsity"] - 1e-12  # mask0: nothing pruned acts any more
    assert res["rounds"][0]["flipped_by_phi"] is None and res["rounds"][1]["flipped_vs_init"] > 0
    assert res["final"]["test_acc"] > 0.5  # digits is learnable even at 89 % sparsity
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "theta0.pt").exists()
    assert "round 10/10" in proc.stderr + proc.stdout


def test_threads_unset_is_one_thread(tmp_path):
    """`threads` unset and no launcher's cpus_per_task: one torch thread, not torch's default of every core (on
    a small net more threads are slower: docs/benchmarks.md, "Threads"); `threads=N` is N."""
    import subprocess
    import sys

    from tests.cli import ROOT, env

    base = [sys.executable, "-m", "phicenter.train", "epochs=1", "prune.iterations=0", "round_store.enabled=false"]
    free = {k: v for k, v in env().items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    for extra, want in (([], 1), (["threads=2"], 2)):
        out = tmp_path / str(want)
        subprocess.run(
            [*base, *extra, f"hydra.run.dir={out}"], cwd=ROOT, env=free, check=True, capture_output=True, timeout=300
        )
        assert results(out)["threads"] == want, extra


@pytest.mark.parametrize("k", [1, 3])
def test_tensorboard_has_continuous_steps_and_hparams(tmp_path, k):
    """A run alone and a variant of a cohort write the same events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cohort = ["pack=true", "phi=[0,0.02,-0.02]"] if k == 3 else []
    train(*FAST, *cohort, f"hydra.run.dir={tmp_path}")
    acc = EventAccumulator(str(tmp_path / ("phi=0.02,strategy=mask0" if k == 3 else "") / "tb"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("epoch/train_loss")]
    assert steps == list(range(6))  # 3 rounds x 2 epochs on one axis
    assert [e.step for e in acc.Scalars("round/test_acc")] == [1, 3, 5]
    assert "round/flipped_by_phi" in acc.Tags()["scalars"]
    assert {
        "layer/fc1/dead_zone",
        "layer/out/flipped_vs_init",
        "layer/fc2/sparsity",
        "round/effective_sparsity",
        "layer/fc1/effective_sparsity",
    } <= set(acc.Tags()["scalars"])
    assert "_hparams_/session_start_info" in acc.Tags()["tensors"] or acc.summary_metadata


def test_signature_multirun_writes_six_results(tmp_path):
    train("strategy=mask0,mask1", "phi=-1e-3,0,5e-5", *FAST, f"hydra.sweep.dir={tmp_path}", multirun=True)
    found = sorted(p.parent.name for p in tmp_path.glob("*/results.json"))
    # job folders are named from their overrides (all of them, sorted), e.g. epochs=2,phi=0,...,strategy=mask0
    assert found == sorted(
        f"epochs=2,phi={p},prune.iterations=2,strategy={s}"
        for s in ("mask0", "mask1")
        for p in ("-0.001", "0", "5e-05")
    )
    for name in found:
        res = results(tmp_path / name)
        assert res["status"] == "complete" and len(res["rounds"]) == 3
        assert isinstance(res["config"]["phi"], float)  # phi=0 given as an integer is 0.0


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="no MNIST in ../shared/data")
def test_mnist_through_torchvision(tmp_path):
    train(
        "dataset=mnist",
        "dataset.download=false",
        f"data_dir={SHARED_DATA}",
        "threads=2",
        "epochs=1",
        "prune.iterations=1",
        "batch_size=600",
        f"hydra.run.dir={tmp_path}",
    )
    res = results(tmp_path)
    assert res["data"] == {"train": 55000, "val": 5000, "test": 10000, "input_shape": [1, 28, 28], "num_classes": 10}
    assert res["final"]["test_acc"] > 0.9


BAD = [
    ("phi=abc", "phi must be a number"),
    ("phi=nan", "phi must be a finite number"),
    ("phi=inf", "phi must be a finite number"),
    ("prune.base=1.5", "prune.base must be in (0, 1)"),
    ("prune.base=0", "prune.base must be in (0, 1)"),
    ("prune.output_base=1.5", "prune.output_base must be in (0, 1]"),
    ("prune.iterations=-1", "prune.iterations must be >= 0"),
    ("epochs=0", "epochs must be >= 1"),
    ("batch_size=0", "batch_size must be >= 1"),
    ("strategy=gradual strategy.trained_fraction=1.5", "strategy.trained_fraction must be in [0, 1]"),
    ("phi_scale=bogus", "phi_scale must be absolute or layer_std"),
    ("prune.scope=bogus", "prune.scope must be layer or global"),
    ("reinit.magnitude=-1", "reinit.magnitude must be"),
    ("dataset=npz dataset.path=/nonexistent/data.npz", "no file at /nonexistent/data.npz"),
    ("dataset=mnist dataset.download=false data_dir=/nonexistent", "MNIST: not found"),
    ("dry_run=bogus", "dry_run must be phi"),
    ("optim.name=lbfgs", "optim.name must be adam, adamw or sgd, got 'lbfgs'"),
    ("schedule.name=foo", "schedule.name must be none, multistep or cosine"),
    ("trainer.precision=bogus", "trainer.precision must be 64, 32, 16, 64-true"),
]


# the rest, and every other key, are checked in-process by tests/test_config.py
CLI_BAD = {
    "optim.name=lbfgs",
    "prune.base=1.5",
    "strategy=lrr rewind.epoch=1",
    "dataset=npz dataset.path=/nonexistent/data.npz",
    "dataset=mnist dataset.download=false data_dir=/nonexistent",
}


@pytest.mark.parametrize("args,message", [b for b in BAD if b[0] in CLI_BAD])
def test_bad_input_one_line_nonzero_exit_nothing_left(tmp_path, args, message):
    run_dir = tmp_path / "run"
    proc = train(*args.split(), "threads=1", f"hydra.run.dir={run_dir}", check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("phicenter train: error:") and message in lines[0], proc.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize("args,message", [b for b in BAD if b[0] not in CLI_BAD])
def test_bad_input_rejected_before_any_work(tmp_path, args, message):
    """The check the CLI runs first, before importing torch (phicenter.config.check_launch), in-process."""
    from tests.cli import compose_config

    from phicenter.config import ConfigError, check_launch

    cfg = compose_config(*args.split())
    with pytest.raises(ConfigError) as err:
        check_launch(cfg, lambda: None, tmp_path / "run")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def _npz(path, **arrays):
    import numpy as np

    base = {
        "x_train": np.zeros((10, 4, 4), np.uint8),
        "y_train": np.zeros(10, np.int64),
        "x_test": np.zeros((5, 4, 4), np.uint8),
        "y_test": np.zeros(5, np.int64),
    }
    np.savez(path, **{k: v for k, v in {**base, **arrays}.items() if v is not None})


BAD_NPZ = {
    "not an npz": (lambda f: f.write_text("x_train,y_train\n1,2\n"), "is not an .npz file (the zip of arrays"),
    "no y_test": (lambda f: _npz(f, y_test=None), "missing key(s) y_test (expected x_train, y_train, x_test"),
    "lengths": (
        lambda f: _npz(f, y_train=__import__("numpy").zeros(9, "int64")),
        "x_train has 10 images but y_train has 9 labels",
    ),
}


@pytest.mark.parametrize("case", BAD_NPZ)
def test_bad_npz_one_line_exit_2_no_folder(tmp_path, case):
    """dataset=npz with a file that cannot be the data: one line naming the file, exit 2, no run folder."""
    make, message = BAD_NPZ[case]
    f, run_dir = tmp_path / "data.npz", tmp_path / "run"
    make(f)
    proc = train("dataset=npz", f"dataset.path={f}", "threads=1", f"hydra.run.dir={run_dir}", check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"phicenter train: error: dataset.path: {f}"), proc.stderr
    assert message in lines[0], lines[0]
    assert not run_dir.exists()


def test_npz_missing_key(tmp_path):
    import numpy as np

    from phicenter import data

    f = tmp_path / "d.npz"
    np.savez(
        f, x_train=np.zeros((10, 4, 4), np.uint8), y_train=np.zeros(10, np.int64), x_test=np.zeros((5, 4, 4), np.uint8)
    )
    with pytest.raises(data.DataError, match="missing key.s. y_test"):
        data.load("npz", tmp_path, path=str(f), val_size=2)


def test_npz_dataset_trains(tmp_path):
    import numpy as np

    g = np.random.default_rng(0)
    y = g.integers(0, 3, 300)
    x = (y[:, None, None] * 80 + g.integers(0, 40, (300, 6, 6))).astype(np.uint8)
    f = tmp_path / "d.npz"
    np.savez(f, x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    # 150 training images are 3 steps an epoch: 5 epochs a round, so that the final accuracy says the data was read
    # right rather than how lucky 6 steps were (2 epochs ended at 74 % or 99 % depending on the init)
    train(
        "dataset=npz",
        f"dataset.path={f}",
        "dataset.val_size=50",
        "threads=1",
        "epochs=5",
        "prune.iterations=2",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    res = results(tmp_path / "run")
    assert res["data"]["num_classes"] == 3 and res["final"]["test_acc"] > 0.9


def test_unknown_strategy_lists_choices():
    """Hydra's own error, listing the choices (what the CLI prints)."""
    from hydra.errors import MissingConfigException
    from tests.cli import compose_config

    with pytest.raises(MissingConfigException) as err:
        compose_config("strategy=bogus")
    assert "Could not find 'strategy/bogus'" in str(err.value)
    assert {"mask0", "mask1", "gradual", "standard", "lth", "random"} <= set(err.value.options)


def test_conv_model_through_cli(tmp_path):
    train(
        "model=conv2",
        "dataset=synthetic",
        "dataset.shape=[3,8,8]",
        "dataset.n_train=120",
        "dataset.n_test=40",
        "dataset.val_size=20",
        "threads=1",
        "epochs=1",
        "prune.iterations=1",
        "batch_size=32",
        f"hydra.run.dir={tmp_path}",
    )
    res = results(tmp_path)
    assert res["status"] == "complete" and res["final"]["sparsity"] == pytest.approx(0.2, abs=1e-3)
