"""dataset=mnist1d: MNIST-1D generated here from the mnist1d package (nothing downloaded), its difficulty
settings declared options, the arrays cached by recipe."""

from __future__ import annotations

import random
import socket

import numpy as np
import pytest
import torch

from phicenter import data
from phicenter.data import cache, mnist1d_reader
from phicenter.data.errors import DataError

TINY = {"num_samples": 200, "max_translation": 20}


@pytest.fixture
def offline(monkeypatch):
    """No network: every socket connection fails."""

    def refuse(*a, **k):
        raise OSError("network blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_generated_offline_as_uint8_signals(tmp_path, offline):
    raw = data.DATASETS["mnist1d"](tmp_path, **TINY)
    assert raw["x_train"].shape == (160, 1, 1, 40) and raw["x_test"].shape == (40, 1, 1, 40)
    assert raw["x_train"].dtype == torch.uint8 and raw["y_train"].dtype == torch.int64
    both = torch.cat([raw["x_train"], raw["x_test"]])
    assert int(both.min()) == 0 and int(both.max()) == 255  # the joint [min, max] onto 0..255
    assert set(raw["y_train"].tolist()) | set(raw["y_test"].tolist()) == set(range(10))
    # the float signals it encodes: make_dataset's, to within half a step
    floats = mnist1d_reader.generate(**TINY)
    lo, hi = min(floats["x"].min(), floats["x_test"].min()), max(floats["x"].max(), floats["x_test"].max())
    back = raw["x_train"].view(160, 40).double().numpy() / 255 * (hi - lo) + lo
    assert np.abs(back - floats["x"]).max() <= 0.5 / 255 * (hi - lo) + 1e-9
    assert raw["y_train"].tolist() == floats["y"].tolist()


def test_settings_shape_the_data_and_the_global_rngs_are_left_alone(tmp_path):
    np.random.seed(7)
    random.seed(7)
    before = np.random.get_state()[1].copy(), random.getstate()
    a = data.DATASETS["mnist1d"](tmp_path, **TINY)
    assert np.array_equal(np.random.get_state()[1], before[0]) and random.getstate() == before[1]
    same = data.DATASETS["mnist1d"](tmp_path / "other", **TINY)
    assert torch.equal(a["x_train"], same["x_train"]) and torch.equal(a["y_test"], same["y_test"])
    for change in ({"corr_noise_scale": 0.5}, {"seed": 1}, {"shear_scale": 0.0}, {"iid_noise_scale": 0.2}):
        other = data.DATASETS["mnist1d"](tmp_path, **TINY, **change)
        assert not torch.equal(a["x_train"], other["x_train"]), change


def test_cached_by_recipe(tmp_path, monkeypatch):
    first = data.DATASETS["mnist1d"](tmp_path, **TINY)
    files = sorted(p.name for p in (tmp_path / cache.CACHE_DIR).iterdir())
    assert len(files) == 1 and files[0].startswith("mnist1d-")

    def fail(**options):
        raise AssertionError("generated again")

    monkeypatch.setattr(mnist1d_reader, "generate", fail)
    again = data.DATASETS["mnist1d"](tmp_path, **TINY)  # from the cache
    assert torch.equal(first["x_train"], again["x_train"])
    with pytest.raises(AssertionError, match="generated again"):  # another recipe is another file
        data.DATASETS["mnist1d"](tmp_path, **TINY, corr_noise_scale=0.1)


def test_splits_and_a_split_left_empty(tmp_path):
    s = data.load("mnist1d", tmp_path, val_size=30, **TINY)
    assert s.input_shape == (1, 1, 40) and s.num_classes == 10
    assert (len(s.x_train), len(s.x_val), len(s.x_test)) == (130, 30, 40)
    with pytest.raises(DataError, match="dataset.num_samples=5 with train_split=0.8 leaves a split empty"):
        data.DATASETS["mnist1d"](tmp_path, num_samples=5)


def test_difficulty_settings_are_declared_and_in_the_round_key():
    """Every difficulty setting is a checked option, and shapes training (so it is in the round key)."""
    from tests.cli import compose_config

    from phicenter.config import ConfigError, settings
    from phicenter.config.keys import shapes_training

    s = settings(compose_config("dataset=mnist1d", "dataset.corr_noise_scale=0.5", "dataset.seed=3"))
    assert (s.dataset.corr_noise_scale, s.dataset.seed, s.dataset.num_samples) == (0.5, 3, 5000)
    for key in ("corr_noise_scale", "iid_noise_scale", "shear_scale", "max_translation", "num_samples", "seed"):
        assert shapes_training(f"dataset.{key}"), key
    with pytest.raises(ConfigError, match="dataset.corr_noise_scale"):
        settings(compose_config("dataset=mnist1d", "dataset.corr_noise_scale=-1"))
