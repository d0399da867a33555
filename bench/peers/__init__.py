"""Peers: other img2img runtimes measured as sides of the bench, each in its own interpreter.

A peer cannot share fastimg's virtual environment (optimum-intel caps transformers and
diffusers below what fastimg's bench uses), so it runs as a worker process of the interpreter
the user names, driven one job at a time by the harness. bench/peers/README.md gives the recipe
for each peer's virtual environment.
"""

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fastimg.errors import InputError

PEERS = ("optimum-intel",)
PRECISIONS = ("default", "fp32", "bf16")  # default: what the peer itself picks on this CPU
RECIPE = "bench/peers/README.md"
# What the peer's interpreter must import, and the versions it reports.
PROBE = (
    "import json, importlib.metadata as m; import optimum.intel, diffusers, openvino, torch; "
    "print(json.dumps({p: m.version(p) for p in "
    "('optimum-intel', 'diffusers', 'transformers', 'openvino', 'torch')}))"
)


@dataclass(frozen=True)
class PeerSpec:
    """A peer as the user asked for it: NAME[:PRECISION]=PYTHON."""

    name: str
    precision: str
    python: str

    @property
    def label(self) -> str:
        """'optimum-intel' or 'optimum-intel:fp32': the part before the interpreter."""
        return self.name if self.precision == "default" else f"{self.name}:{self.precision}"


def parse_peer(text: str) -> PeerSpec:
    """'optimum-intel:fp32=/venv/bin/python' -> PeerSpec; an InputError saying the form."""
    form = f"write --peer NAME[:PRECISION]=PYTHON, NAME one of {', '.join(PEERS)}"
    head, sep, python = text.partition("=")
    if not sep or not python.strip():
        raise InputError(f"--peer {text!r} names no interpreter: {form}")
    name, _, precision = head.partition(":")
    if name not in PEERS:
        raise InputError(f"--peer {text!r}: no peer called {name!r}: {form}")
    precision = precision or "default"
    if precision not in PRECISIONS:
        raise InputError(
            f"--peer {text!r}: precision {precision!r} is not one of {', '.join(PRECISIONS)}"
        )
    return PeerSpec(name, precision, python.strip())


@functools.cache  # one probe per interpreter and run (a failure raises, so is not kept)
def check_interpreter(spec: PeerSpec, timeout: float = 300.0) -> dict:
    """The peer interpreter's package versions; an InputError naming what is wrong with it
    (missing, not runnable, or without the peer's packages) and where the recipe is."""
    python = Path(spec.python).expanduser()
    fix = f"make its virtual environment as {RECIPE} shows"
    if not python.exists():
        raise InputError(f"the {spec.name} interpreter {python} does not exist: {fix}")
    if python.is_dir() or not python.stat().st_mode & 0o111:
        raise InputError(f"the {spec.name} interpreter {python} is not an executable: {fix}")
    try:
        probe = subprocess.run(
            [str(python), "-c", PROBE], capture_output=True, text=True, timeout=timeout
        )
    except OSError as exc:
        raise InputError(f"the {spec.name} interpreter {python} cannot run: {exc}; {fix}") from None
    except subprocess.TimeoutExpired:
        raise InputError(
            f"the {spec.name} interpreter {python} did not import its packages within "
            f"{timeout:.0f} s; {fix}"
        ) from None
    if probe.returncode != 0:
        lines = (probe.stderr or probe.stdout).strip().splitlines()
        last = lines[-1] if lines else f"exit code {probe.returncode}"
        raise InputError(
            f"the {spec.name} interpreter {python} cannot import its packages ({last}); {fix}"
        )
    import json

    try:
        return json.loads(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise InputError(
            f"the {spec.name} interpreter {python} answered the version probe with "
            f"{probe.stdout.strip()[:200]!r}; {fix}"
        ) from None
