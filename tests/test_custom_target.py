"""model=custom and dataset=custom: a user's own package, by dotted path (`_target_`), trained from the command line
at tiny scale; its source file in the round key; bad targets refused in one line; its ticket loads wherever
the package imports, and says in one line where it does not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from tests import cli
from tests.cli import compose_config

from phicenter import config, targets, ticket
from phicenter.spec import ConfigError

PKG = "phct_userpkg"  # a name no installed package has
NETS = '''import math
from torch import nn


def make_net(in_shape, num_classes, width=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), width), nn.ReLU(), nn.Linear(width, num_classes))


class Aliased(nn.Module):
    """Reads its weight through a plain list, around its parameters: a stack cannot swap it."""

    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(math.prod(in_shape), num_classes)
        self._w = [self.fc.weight]

    def forward(self, x):
        return nn.functional.linear(x.flatten(1), self._w[0], self.fc.bias)


def not_a_net(in_shape, num_classes):
    return 3
'''
DATA = """import numpy as np


def load(n=60, seed=0):
    g = np.random.default_rng(seed)

    def split(k):
        return g.integers(0, 256, (k, 1, 6, 6), dtype=np.uint8), g.integers(0, 3, k)

    (x, y), (xt, yt) = split(n), split(20)
    return {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}


def not_arrays():
    return [1, 2, 3]
"""


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    """The user's package in a folder of its own, on PYTHONPATH (for the command line) and sys.path (here)."""
    root = tmp_path / "src"
    (root / PKG).mkdir(parents=True)
    (root / PKG / "__init__.py").write_text("")
    (root / PKG / "nets.py").write_text(NETS)
    (root / PKG / "data.py").write_text(DATA)
    monkeypatch.setenv("PYTHONPATH", str(root))
    monkeypatch.syspath_prepend(str(root))
    yield root / PKG
    for name in [m for m in sys.modules if m == PKG or m.startswith(PKG + ".")]:
        del sys.modules[name]


def tiny(folder: Path, model: str = "make_net", *more: str) -> list[str]:
    return [
        "model=custom",
        f"model._target_={PKG}.nets.{model}",
        "dataset=custom",
        f"dataset._target_={PKG}.data.load",
        "dataset.val_size=10",
        "batch_size=10",
        "epochs=1",
        "prune.iterations=2",
        "threads=1",
        "logger=[]",
        f"round_store.dir={folder.parent / 'store'}",
        f"hydra.run.dir={folder}",
        *more,
    ]


def _keys(run: Path) -> list[str]:
    return [r["round_key"] for r in cli.results(run)["rounds"]]


def test_a_run_and_its_ticket(pkg, tmp_path, monkeypatch):
    """A run of the user's model and data completes with its target and keywords on record; its ticket records
    them and loads back here, and refuses in one line where the package cannot be imported."""
    from phicenter import export

    run = tmp_path / "run"
    cli.train(*tiny(run, "make_net", "+model.width=8"))
    res = cli.results(run)
    assert res["status"] == "complete" and len(res["rounds"]) == 3
    assert res["config"]["model"] == {**res["config"]["model"], "_target_": f"{PKG}.nets.make_net", "width": 8}

    assert export.main([str(run)]) == 0
    file = run / "tickets" / "round_002.safetensors"
    meta = ticket.read(file).meta
    assert meta["model"] == "custom" and meta["model_options"] == {"_target_": f"{PKG}.nets.make_net", "width": 8}
    net = ticket.load(file)
    assert [m.out_features for m in net if isinstance(m, torch.nn.Linear)] == [8, 3]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(pkg.parent)])
    for name in [m for m in sys.modules if m == PKG or m.startswith(PKG + ".")]:
        del sys.modules[name]
    with pytest.raises(ticket.TicketError) as err:
        ticket.load(file)
    assert f"no module {PKG!r} can be imported" in str(err.value) and "\n" not in str(err.value)


def test_the_round_key_holds_the_targets_source(pkg, tmp_path):
    """The round key's header names each target and hashes its module's source file: an edit of the user's
    model code (a comment, even) gives every round a new key; the built-in models' keys hold nothing more."""
    from phicenter.engine.build import load_data
    from phicenter.engine.reuse import RoundKeys

    cfg = compose_config(*tiny(tmp_path / "run")[:-1])
    splits = load_data(cfg)

    def header():
        return json.loads(RoundKeys(cfg, splits, "cpu").header)

    before = header()
    assert before["targets"]["model"]["path"] == f"{PKG}.nets.make_net"
    assert before["targets"]["dataset"]["path"] == f"{PKG}.data.load"
    assert header() == before
    (pkg / "nets.py").write_text(NETS + "# an edit that changes nothing computed\n")
    after = header()
    assert after["targets"]["model"]["source"] != before["targets"]["model"]["source"]
    assert after["targets"]["dataset"] == before["targets"]["dataset"]
    assert targets.in_round_key({"model.name": "fc_lot", "dataset.name": "digits"}) == {}


@pytest.mark.parametrize(
    "target,message",
    [
        ("nope_pkg_x.nets.f", "no module 'nope_pkg_x' can be imported"),
        (f"{PKG}.nets.missing", f"{PKG}.nets has no missing"),
        (f"{PKG}.nets.math", "is a module, not a callable"),
        ("make_net", "must be a dotted path to a callable"),
    ],
)
def test_a_target_that_cannot_be_called_is_refused_before_any_work(pkg, tmp_path, target, message):
    cfg = compose_config("model=custom", f"model._target_={target}")
    with pytest.raises(ConfigError) as err:
        config.check_launch(cfg, lambda: None, tmp_path / "run")
    assert str(err.value).startswith(f"model._target_={target}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "model,more,message",
    [
        ("not_a_net", (), f"model._target_={PKG}.nets.not_a_net: returned 'int', not a torch.nn.Module"),
        ("Aliased", ("pack=true", "phi=[0,5e-4]"), f"model._target_={PKG}.nets.Aliased cannot be trained in a cohort"),
    ],
    ids=["model returns an int", "cannot be stacked"],
)
def test_a_model_that_cannot_be_trained_exits_2_in_one_line(pkg, tmp_path, model, more, message):
    run = tmp_path / "run"
    proc = cli.train(*tiny(run, model, *more), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("phicenter train: error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert not run.exists()


@pytest.mark.parametrize(
    "target,options,message",
    [
        ("not_arrays", {}, "returned 'list', not a mapping of arrays"),
        ("load", {"bogus": 1}, "calling it failed (TypeError: "),
        ("load", {"n": 0}, "x_train has no images"),
    ],
)
def test_data_a_target_cannot_give_is_one_line(pkg, tmp_path, target, options, message):
    from phicenter import data

    with pytest.raises(data.DataError) as err:
        data.load("custom", tmp_path, _target_=f"{PKG}.data.{target}", val_size=0, **options)
    assert str(err.value).startswith(f"dataset._target_={PKG}.data.{target}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_cohort_of_a_custom_model(pkg, tmp_path):
    """pack=true: two phis trained as one stacked module, each variant its own complete run."""
    job = tmp_path / "packed"
    cli.train(*tiny(job, "make_net", "pack=true", "phi=[0,5e-4]"))
    summary = json.loads((job / "pack.json").read_text())
    assert set(summary["variants"].values()) == {"complete"} and len(summary["variants"]) == 2
