"""How many processes `python -m pytest` runs the tests in (pyproject's -n auto)."""

import os
import re
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import conftest

ROOT = Path(__file__).parents[1]


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


def test_the_tests_run_in_parallel_as_typed():
    pyproject = (ROOT / "pyproject.toml").read_text()
    (addopts,) = re.findall(r"^addopts = (.*)$", pyproject, re.M)  # what `python -m pytest` adds
    assert "-n auto" in addopts and "not slow" in addopts
    assert any(r.startswith("pytest-xdist") and 'extra == "dev"' in r for r in requires("fastimg"))


def test_the_tests_run_without_xdist_too():
    """bench/gpu_check.sh runs them in one process where xdist is not installed: the
    conftest's xdist hook is optional there."""
    command = [sys.executable, "-m", "pytest", "-o", "addopts=-m 'not slow'", "-p", "no:xdist",
               "-p", "no:cacheprovider", "-q", "--co", "tests/test_parallel_tests.py"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "INTERNALERROR" not in result.stdout and "7 tests collected" in result.stdout


class _Factory:
    """What built_once asks of tmp_path_factory, for one xdist process's base folder."""

    def __init__(self, base):
        self.base = base
        base.mkdir(parents=True)

    def getbasetemp(self):
        return self.base

    def mktemp(self, name):
        path = self.base / name
        path.mkdir()
        return path


def test_a_fixture_is_built_by_one_process_and_its_engines_copied_for_each(tmp_path, monkeypatch):
    calls = []

    def tiny_thing(tmp_path_factory):
        calls.append(tmp_path_factory)
        root = tmp_path_factory.mktemp("label")
        (root / "model").mkdir()
        (root / "engines").mkdir()
        (root / "engines" / "manifest.json").write_text("{}")
        return root / "model", root / "engines"

    built = conftest.built_once(tiny_thing)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    model0, engines0 = built(_Factory(tmp_path / "popen-gw0"))
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    model1, engines1 = built(_Factory(tmp_path / "popen-gw1"))
    assert len(calls) == 1  # the second process read what the first built
    assert model0 == model1 and model0.is_relative_to(tmp_path / "built-once")
    assert engines0 != engines1 and engines0.is_relative_to(tmp_path / "popen-gw0")
    assert (engines1 / "manifest.json").read_text() == "{}"  # a copy of its own for each
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    built(_Factory(tmp_path / "alone"))
    assert len(calls) == 2  # without xdist: the fixture as written
