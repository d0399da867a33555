"""An export running in another process, for tests of what happens around it."""

import subprocess
import sys
from pathlib import Path


def start_export(model, out, until: str) -> subprocess.Popen:
    """Export `model` to `out` in a new process; return once it prints a line starting `until`."""
    code = (
        "from fastimg_export.engine_writer import export_engines\n"
        f"export_engines({str(model)!r}, {str(out)!r}, log=lambda m: print(m, flush=True))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    for line in proc.stdout:
        if line.startswith(until):
            break
    return proc
