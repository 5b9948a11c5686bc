"""The reference experiments (conf/experiment/, each with its paper's recipe and published figures): each one's
recipe as its paper or public code gives it, its reference block well formed and out of every round key and
folder name, and one tiny training of each on small data in its dataset's on-disk format."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf
from tests.cli import ROOT, compose_config
from tests.test_data import fake_cifar10, fake_mnist

from phicenter import config

# name: (strategies swept, epochs, batch, optimizer, lr, iterations, base, output_base, scope, init)
FC = "lth,random,random_mask"  # Frankle & Carbin: winning tickets against both baselines
RECIPES = {
    "lth_lenet300_mnist": (FC, 55, 60, "adam", 1.2e-3, 18, 0.8, 0.9, "layer", "glorot_normal"),
    "lth_conv2_cifar10": (FC, 27, 60, "adam", 2e-4, 18, 0.8, 0.9, "layer", "glorot_normal"),
    "lth_conv4_cifar10": (FC, 34, 60, "adam", 3e-4, 22, 0.8, 0.9, "layer", "glorot_normal"),
    "lth_conv6_cifar10": (FC, 40, 60, "adam", 3e-4, 22, 0.8, 0.9, "layer", "glorot_normal"),
    "zhou_lenet300_mnist": ("mask1,lth", 55, 60, "adam", 1.2e-3, 18, 0.8, 0.9, "layer", "glorot_normal"),
    "zhou_conv2_cifar10": ("mask1,lth", 27, 60, "adam", 2e-4, 18, 0.8, 0.9, "layer", "glorot_normal"),
    "zhou_conv4_cifar10": ("mask1,lth", 34, 60, "adam", 3e-4, 22, 0.8, 0.9, "layer", "glorot_normal"),
    "zhou_conv6_cifar10": ("mask1,lth", 40, 60, "adam", 3e-4, 22, 0.8, 0.9, "layer", "glorot_normal"),
    "lmc_resnet20_cifar10": ("lth", 160, 128, "sgd", 0.1, 10, 0.8, None, "global", "kaiming_normal"),
    "lmc_vgg16_cifar10": ("lth", 160, 128, "sgd", 0.1, 20, 0.8, 1.0, "global", "kaiming_normal"),
    "renda_lrr_resnet20_cifar10": ("lrr", 182, 128, "sgd", 0.1, 10, 0.8, None, "global", "kaiming_normal"),
    "oh_sign_transfer_resnet20_cifar10": (
        "sign_transfer",
        10,
        128,
        "sgd",
        0.1,
        15,
        0.8,
        1.0,
        "global",
        "kaiming_normal",
    ),
}
# Frankle & Carbin's Figure 2: convolutions at 10 % a round (Conv-2/4) or 15 % (Conv-6), fc layers at 20 %
CONV_BASE = {"conv2": 0.9, "conv4": 0.9, "conv6": 0.85}


def test_every_experiment_with_a_reference_is_listed():
    with_reference = {
        p.stem
        for p in (ROOT / "conf" / "experiment").glob("*.yaml")
        if compose_config(f"experiment={p.stem}").get("reference") is not None
    }
    assert with_reference == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_and_reference(name):
    swept, epochs, batch, opt, lr, iters, base, out_base, scope, init = RECIPES[name]
    cfg = compose_config(f"experiment={name}", hydra=True)
    params = cfg.hydra.sweeper.params
    assert str(params.get("strategy", cfg.strategy.name)) == swept and cfg.strategy.name == swept.split(",")[0]
    assert float(params.phi) == 0.0
    assert (cfg.epochs, cfg.batch_size, cfg.optim.name, cfg.optim.lr) == (epochs, batch, opt, lr)
    assert (cfg.prune.iterations, cfg.prune.base, cfg.prune.output_base, cfg.prune.scope) == (
        iters,
        base,
        out_base,
        scope,
    )
    assert cfg.model.init == init and cfg.phi == 0.0
    arch = name.split("_")[1]
    assert cfg.prune.conv_base == CONV_BASE.get(arch)
    ref = config.check(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))["reference"]
    assert ref["source"] and ref["metric"] and ref["spread"] and ref["curves"]
    for curve in ref["curves"]:
        assert curve["strategy"] in swept.split(",") or curve.get("match"), curve["label"]
        for p in curve.get("points", []):
            assert 0 < p["remaining"] <= 100 and 0 <= p["accuracy"] <= 100
    if not any(c.get("points") for c in ref["curves"]):
        assert ref.get("missing"), "an experiment without published points says what is missing"


def test_sgd_recipes():
    for name, k in (("lmc_resnet20_cifar10", 2000), ("lmc_vgg16_cifar10", 1000)):
        lmc = compose_config(f"experiment={name}", hydra=True)
        assert (lmc.optim.momentum, lmc.optim.weight_decay, list(lmc.schedule.at)) == (0.9, 1e-4, [0.5, 0.75])
        assert (lmc.rewind.step, lmc.rewind.epoch, str(lmc.hydra.sweeper.params["rewind.step"])) == (k, 0, f"0,{k}")
        assert lmc.model.batchnorm_init == "uniform"  # open_lth's gamma ~ U(0, 1)
    renda = compose_config("experiment=renda_lrr_resnet20_cifar10")
    assert (renda.optim.weight_decay, list(renda.schedule.at), renda.dataset.augment) == (2e-4, [0.5, 0.75], True)
    oh = compose_config("experiment=oh_sign_transfer_resnet20_cifar10", hydra=True)
    assert (oh.optim.weight_decay, oh.schedule.name, oh.strategy.transfer_seed) == (5e-4, "none", None)
    assert str(oh.hydra.sweeper.params["strategy.aws"]) == "true,false"
    for aws in ("true", "false"):  # each job of the sweep is a valid config
        job = compose_config(
            "experiment=oh_sign_transfer_resnet20_cifar10", "strategy=sign_transfer", f"strategy.aws={aws}"
        )
        assert config.check(job)["strategy"]["aws"] is (aws == "true")


def test_zhou_experiments_are_frankle_and_carbins_recipe_with_other_strategies():
    for arch in ("lenet300_mnist", "conv2_cifar10", "conv4_cifar10", "conv6_cifar10"):
        lth = config.recorded_config(compose_config(f"experiment=lth_{arch}", "strategy=lth"))
        zhou = config.recorded_config(compose_config(f"experiment=zhou_{arch}", "strategy=lth"))
        assert lth.pop("reference")["source"] != zhou.pop("reference")["source"]
        assert zhou == lth  # one training: the round store trains it once for both
        assert compose_config(f"experiment=zhou_{arch}").reinit.magnitude == "init_std"


def test_zhou_signed_constant_is_their_codes_iterative_np_std_of_theta0():
    """Zhou et al.'s code (train_lottery.py --exp signed_constant) sets every weight of a layer to
    np.std(initial weights) * np.sign(initial weights), level after level of an iterative run: mask1 at phi = 0,
    c = init_std (population std, numpy's ddof=0), biases back to their init, more than one round."""
    import numpy as np
    import torch

    from phicenter.method.imp import layer_constant

    theta0 = torch.randn(300, 100, generator=torch.Generator().manual_seed(0))
    assert layer_constant(theta0, "init_std") == pytest.approx(float(np.std(theta0.numpy())), rel=1e-6)
    for arch in ("lenet300_mnist", "conv2_cifar10", "conv4_cifar10", "conv6_cifar10"):
        s = config.settings(compose_config(f"experiment=zhou_{arch}"))
        assert (s.strategy.name, s.phi, s.reinit.magnitude, s.strategy.rewind_other) == ("mask1", 0.0, "init_std", True)
        assert s.prune.iterations > 1


def test_reference_is_in_no_round_key_folder_name_or_same_run_check():
    from phicenter.engine.reuse import training_settings

    cfg = compose_config("experiment=renda_lrr_resnet20_cifar10")
    other = compose_config("experiment=renda_lrr_resnet20_cifar10", "reference.source=another paper")
    assert training_settings(cfg) == training_settings(other)
    assert not any(k.startswith("reference") for k in training_settings(cfg))
    assert config.config_changes(config.recorded_config(cfg), config.recorded_config(other)) == []
    assert "reference.source" in config.folder_name_excluded()
    assert "reference" not in config.hparams(config.recorded_config(cfg))
    assert not any(k.startswith("reference") for k in config.hparams(config.recorded_config(cfg)))


def test_a_malformed_reference_is_refused_in_one_line():
    bad = [
        ("reference.curves.0.strategy=nope", "reference.curves[0].strategy must be mask0, mask1"),
        ("reference.curves.0.matching_remaining=0", "reference.curves[0].matching_remaining must be in (0, 100]"),
        (
            "+reference.curves.0.points=[{remaining:50,accuracy:101}]",
            "reference.curves[0].points[0].accuracy must be in [0, 100], got 101",
        ),
        ("+reference.curves.0.bogus=1", "unknown key reference.curves[0].bogus: reference.curves[0] has no option"),
    ]
    for override, message in bad:
        cfg = compose_config("experiment=lth_lenet300_mnist", override)
        with pytest.raises(config.ConfigError) as err:
            config.check(cfg)
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


TINY = [
    "epochs=1",
    "batch_size=4",
    "eval_batch_size=4",
    "prune.iterations=1",
    "threads=1",
    "dataset.download=false",
    "dataset.val_size=4",
]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_reference_experiment_trains_a_tiny_round(tmp_path, name):
    """On a few images written in the dataset's own on-disk format (MNIST's idx files, CIFAR-10's pickled
    batches), each experiment trains its dense round and one pruning round with its own recipe otherwise."""
    from phicenter.engine.loop import run

    if "mnist" in name:
        fake_mnist(tmp_path / "data", n_train=16, n_test=6)
    else:
        fake_cifar10(tmp_path / "data", per_batch=4, n_test=6)
    extra = {"lmc": ["rewind.step=3", "epochs=2"], "oh": ["strategy.aws=true"]}.get(name.split("_")[0], [])
    cfg = compose_config(f"experiment={name}", f"data_dir={tmp_path / 'data'}", *TINY, *extra)
    res = run(cfg, tmp_path / "run")
    assert res["status"] == "complete" and [r["round"] for r in res["rounds"]] == [0, 1]
    assert res["config"]["reference"]["source"] == cfg.reference.source
    assert res["rounds"][1]["sparsity"] > 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "complete"


def test_bench_estimates_the_reference_experiments_apart_from_the_paper_grid(tmp_path):
    """`python -m phicenter.bench --reference`: each reference experiment's GPU-hours (its sweep, one seed), out of
    the paper grid's sum; without the flag they are not run at all (the GPU check stays as short as it was)."""
    from argparse import Namespace

    from phicenter.bench.gpu import bench_gpu, reference_experiments

    assert reference_experiments() == set(RECIPES)
    args = {
        "gpu_experiments": ["mnist_fc_lot", "lth_lenet300_mnist"],
        "data_dir": None,
        "workdir": tmp_path,
        "precision": "32-true",
        "compile": False,
        "peak_tflops": 1.0,
    }
    sizes = {"gpu_images": 120, "repeats": 1}
    res = bench_gpu(sizes, Namespace(reference=True, **args), "cpu")
    row, paper = res["rows"]["lth_lenet300_mnist"], res["rows"]["mnist_fc_lot"]
    assert row["reference"] and not paper["reference"]
    assert (row["runs"], row["rounds"], row["epochs_per_round"]) == (3, 19, 55)  # lth, random, random_mask
    assert res["reference_hours_est"] == row["grid_hours_est"] and res["grid_hours_est"] == paper["grid_hours_est"]
    res = bench_gpu(sizes, Namespace(reference=False, **args), "cpu")
    assert set(res["rows"]) == {"mnist_fc_lot"} and res["reference_hours_est"] is None


def test_the_gpu_hours_of_sign_transfer_count_its_transfers():
    """Oh et al.'s runs (2: AWS or not): 16 rounds of 10 epochs, and a 100-epoch transfer at each of the 15
    levels; at 1 000 images/s, 45 000 training images, 5 000 validation and 10 000 test images."""
    from types import SimpleNamespace

    from phicenter.bench.gpu import _grid_hours

    case = SimpleNamespace(dataset="cifar10", n=120)
    fit = lambda epochs: epochs * (45_000 + 5_000 / 3) / 1000 + (10_000 / 3) / 1000
    runs, rounds, epochs, hours = _grid_hours("oh_sign_transfer_resnet20_cifar10", case, 1000.0)
    assert (runs, rounds, epochs) == (2, 16, 10)
    assert hours == pytest.approx(2 * (16 * fit(10) + 15 * fit(100)) / 3600)
    runs, rounds, epochs, hours = _grid_hours("renda_lrr_resnet20_cifar10", case, 1000.0)
    assert hours == pytest.approx(runs * rounds * fit(epochs) / 3600)  # no transfer: the rounds alone
