"""How many processes `python -m pytest` runs the tests in (pyproject's -n auto)."""

import os
from types import SimpleNamespace

import pytest

from tests import conftest


def config(markexpr: str) -> SimpleNamespace:
    """The part of pytest's config the hook reads."""
    return SimpleNamespace(getoption=lambda name: {"markexpr": markexpr}[name])


def test_the_quick_tests_take_a_process_per_core_as_memory_allows(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    workers = conftest.pytest_xdist_auto_num_workers(config("not slow"))
    assert 1 <= workers <= min(cores, conftest.MAX_WORKERS)
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096}.get(name, 2**20))
    assert conftest.pytest_xdist_auto_num_workers(config("not slow")) == 1  # 4 GiB: one


@pytest.mark.parametrize("selection", ["slow", "slow or not slow", "slow and not gpu"])
def test_the_full_size_tests_run_in_one_process(selection):
    assert conftest.pytest_xdist_auto_num_workers(config(selection)) == 1


def test_the_tests_run_in_parallel_as_typed(pytestconfig):
    from importlib.metadata import requires

    options = pytestconfig.getini("addopts")  # pyproject's, what `python -m pytest` runs with
    assert "-n" in options and options[options.index("-n") + 1] == "auto"
    assert any(r.startswith("pytest-xdist") and 'extra == "dev"' in r for r in requires("fastimg"))
