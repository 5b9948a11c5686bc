"""Every experiment composes with the settings of its recipe, and the new ones train a round at tiny size."""

from __future__ import annotations

import pytest
from tests.cli import ROOT, compose_config

# experiment: (dataset, model, augment, normalize)
RECIPES = {
    "mnist_fc_lot": ("mnist", "fc_lot", False, "dataset"),
    "quickstart": ("digits", "fc_lot", False, "dataset"),
    "cifar10_conv2": ("cifar10", "conv2", False, "dataset"),  # Frankle & Carbin: no augmentation
    "cifar10_conv4": ("cifar10", "conv4", False, "dataset"),
    "cifar10_conv6": ("cifar10", "conv6", False, "dataset"),
    "cifar10_vgg16": ("cifar10", "vgg16", True, "dataset"),
    "cifar100_vgg16_pretrained": ("cifar100", "vgg16_pretrained", True, "imagenet"),
    "cifar10_resnet20": ("cifar10", "resnet20", True, "dataset"),
    "cifar100_resnet18": ("cifar100", "resnet18", True, "dataset"),
    "complexity_gradient": ("mnist1d", "conv1d", False, "dataset"),
    # reference experiments (tests/test_reference_experiments.py checks their recipes and trains each one)
    "lth_lenet300_mnist": ("mnist", "fc_lot", False, "dataset"),
    "lth_conv2_cifar10": ("cifar10", "conv2", False, "dataset"),
    "lth_conv4_cifar10": ("cifar10", "conv4", False, "dataset"),
    "lth_conv6_cifar10": ("cifar10", "conv6", False, "dataset"),
    "zhou_lenet300_mnist": ("mnist", "fc_lot", False, "dataset"),
    "zhou_conv2_cifar10": ("cifar10", "conv2", False, "dataset"),
    "zhou_conv4_cifar10": ("cifar10", "conv4", False, "dataset"),
    "zhou_conv6_cifar10": ("cifar10", "conv6", False, "dataset"),
    "lmc_resnet20_cifar10": ("cifar10", "resnet20", True, "dataset"),
    "lmc_vgg16_cifar10": ("cifar10", "vgg16", True, "dataset"),
    "renda_lrr_resnet20_cifar10": ("cifar10", "resnet20", True, "dataset"),
    "oh_sign_transfer_resnet20_cifar10": ("cifar10", "resnet20", True, "dataset"),
}
REWIND = {"lmc_resnet20_cifar10": 2000, "lmc_vgg16_cifar10": 1000}  # rewind.step; every other experiment: theta0


def test_every_experiment_is_listed():
    assert {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")} == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_experiment_composes_with_its_recipe(name):
    cfg = compose_config(f"experiment={name}")
    dataset, model, augment, normalize = RECIPES[name]
    assert (cfg.dataset.name, cfg.model.name) == (dataset, model)
    assert cfg.dataset.augment is augment and cfg.dataset.normalize == normalize
    assert cfg.prune.method == "magnitude" and (cfg.rewind.step, cfg.rewind.epoch) == (REWIND.get(name, 0), 0)


@pytest.mark.parametrize("name", ["cifar10_resnet20", "cifar100_resnet18"])
def test_resnet_recipes(name):
    cfg = compose_config(f"experiment={name}")
    assert (cfg.epochs, cfg.batch_size, cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (
        160,
        128,
        "sgd",
        0.1,
        0.9,
        1e-4,
    )
    assert cfg.schedule.name == "multistep" and list(cfg.schedule.at) == [0.5, 0.75]
    assert (cfg.prune.iterations, cfg.prune.base) == (10, 0.8) and cfg.model.init == "kaiming_normal"


def test_vgg16_pretrained_defaults():
    cfg = compose_config("experiment=cifar100_vgg16_pretrained")
    assert cfg.model.batch_norm is False and cfg.model.verify_weights is True and cfg.model.weights_path is None


@pytest.mark.parametrize(
    "name, shape, extra",
    [
        ("cifar10_resnet20", "[3,8,8]", ["strategy=sign_transfer", "prune.method=structured"]),
        ("cifar100_resnet18", "[3,8,8]", ["strategy=lrr"]),
        ("cifar100_vgg16_pretrained", "[3,32,32]", ["model.pretrained=false"]),
    ],
)
def test_new_experiment_trains_one_round(tmp_path, name, shape, extra):
    from phicenter.engine.loop import run

    cfg = compose_config(
        f"experiment={name}",
        "dataset=synthetic",
        f"dataset.shape={shape}",
        "dataset.n_train=40",
        "dataset.val_size=10",
        "dataset.n_test=10",
        "dataset.num_classes=5",
        "batch_size=10",
        "epochs=1",
        "prune.iterations=0",
        "threads=1",
        *extra,
    )
    res = run(cfg, tmp_path)
    assert res["status"] == "complete" and [r["round"] for r in res["rounds"]] == [0]
    assert res["config"]["dataset"]["augment"] is True
    assert res["config"]["model"]["name"] == RECIPES[name][1]


def test_the_paper_grid_is_written_once():
    """Every experiment that sweeps the paper's four strategies sweeps its eleven phi values, as
    phicenter.method.paper lists them (the dry run's table, the bench and the report read that list)."""
    from omegaconf import OmegaConf

    from phicenter.method import paper

    swept = 0
    for path in sorted((ROOT / "conf" / "experiment").glob("*.yaml")):
        params = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params") or {}
        if str(params.get("strategy")) == ",".join(paper.STRATEGIES):
            assert tuple(float(p) for p in str(params["phi"]).split(",")) == paper.PHIS, path.name
            swept += 1
    assert swept >= 8
