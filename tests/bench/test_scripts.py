"""The device and AMX scripts under bench/: each parses, and each dry run in a header sets
only variables its script (or the shared setup it sources) reads."""

import re
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(BENCH.glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_it_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def dry_run(text: str) -> str | None:
    """The dry run in a script's header comment: the text after "dry run elsewhere...:" and
    the comment lines that follow it, up to the first line of code; None without one."""
    lines = text.splitlines()
    start = next(
        (i for i, ln in enumerate(lines) if ln.startswith("#") and "dry run elsewhere" in ln), None
    )
    if start is None:
        return None
    comment = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("# "))
    return " ".join(comment).partition(":")[2]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_its_dry_run_sets_only_what_it_reads(script):
    text = script.read_text()
    command = dry_run(text)
    if command is None:
        pytest.skip("no dry run in its header")
    assert f"bash bench/{script.name}" in command  # it runs itself
    command = command.partition(f"bash bench/{script.name}")[0]
    names = re.findall(r"\b([A-Z][A-Z_0-9]+)=", command)
    read = text + (BENCH / "device_setup.sh").read_text()
    assert names and all(re.search(rf"\${{?{name}\b", read) for name in names), names
