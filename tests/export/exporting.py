import subprocess
import sys
from pathlib import Path


def start_export(model, out, until: str, hang: bool = False) -> subprocess.Popen:
    """Export `model` to `out` in a new process; return once it prints a line starting `until`
    (with `hang`, the export then stops right there, inside its log call, until it is killed:
    no race with how fast the rest of the export runs)."""
    code = (
        "import time\n"
        "from fastimg_export.engine_writer import export_engines\n"
        "def log(message):\n"
        "    print(message, flush=True)\n"
        f"    if {hang!r} and message.startswith({until!r}):\n"
        "        time.sleep(3600)\n"
        f"export_engines({str(model)!r}, {str(out)!r}, log=log)\n"
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
