"""Hostile engine folders (tests/corpus/engines.py) end in one line naming the problem."""

import shutil

import pytest

from fastimg.cli import cli
from tests.corpus.engines import hostile_engines

CASES = hostile_engines()


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_hostile_engine_folder_is_refused_in_one_line(runner, tiny, picture, tmp_path, name):
    change, words = CASES[name]
    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    change(engines)
    out = tmp_path / "out.png"
    args = ["transform", str(picture), "--engines", str(engines), "--prompt", "a red fox"]
    args += ["--steps", "4", "--strength", "0.5", "--backend", "onnxruntime", "-o", str(out)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    # One line says it (per input for a graph that runs, once for a folder that does not load).
    assert result.output.count(words) == 1, result.output
    (line,) = [line for line in result.output.splitlines() if words in line]
    assert line.startswith(("Error: ", "error: ")) and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    "name", ["absolute component path", "files entry outside", "symlink out of the folder"]
)
def test_info_verify_is_no_oracle_for_files_outside(runner, tiny, tmp_path, name):
    change, words = CASES[name]
    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    change(engines)
    result = runner.invoke(cli, ["info", str(engines), "--verify"])
    assert result.exit_code == 1 and words in result.output
    assert "match" not in result.output
