"""Shared test setup: one CPU thread, so timings are stable on a small shared machine; the round store and its
key file in a temporary folder of the session (the defaults lie under outputs/ and the home folder), carried to
the command-line subprocesses by the environment (tests/cli.py)."""

import os

import pytest
import torch
from tests.cli import compose_config

STORE_ENV = "PHICENTER_ROUND_STORE"
KEY_ENV = "PHICENTER_ROUND_STORE_KEY"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _round_store(tmp_path_factory):
    before = {name: os.environ.get(name) for name in (STORE_ENV, KEY_ENV)}
    os.environ[STORE_ENV] = str(tmp_path_factory.mktemp("round_store"))
    os.environ[KEY_ENV] = str(tmp_path_factory.mktemp("round_store_key") / "round_store.key")
    yield os.environ[STORE_ENV]
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def compose():
    """compose(*overrides): the config the command line would run with these overrides (tests.cli)."""
    return compose_config
