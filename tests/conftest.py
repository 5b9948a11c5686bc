"""Shared test setup: one CPU thread, so timings are stable on a small shared machine; the round store in a
temporary folder of the session (the default one lies under outputs/), carried to the command-line
subprocesses by the environment (tests/cli.py)."""

import os

import pytest
import torch
from tests.cli import compose_config

STORE_ENV = "PHICENTER_ROUND_STORE"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _round_store(tmp_path_factory):
    before = os.environ.get(STORE_ENV)
    os.environ[STORE_ENV] = str(tmp_path_factory.mktemp("round_store"))
    yield os.environ[STORE_ENV]
    if before is None:
        os.environ.pop(STORE_ENV, None)
    else:
        os.environ[STORE_ENV] = before


@pytest.fixture
def compose():
    """compose(*overrides): the config the command line would run with these overrides (tests.cli)."""
    return compose_config
