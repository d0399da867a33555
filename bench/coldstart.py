"""Cold start: a fresh process that loads one side and makes one image; its peak memory.

Run by the harness as  python -m fastimg_bench.coldstart SPEC_JSON ; prints one JSON line.
"""

import time

_STARTED = time.time()

import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402


def _peak_rss_mb() -> float:
    # Linux carries ru_maxrss across fork+exec (it would report the harness' own peak), so the
    # process' own high-water mark comes from /proc where there is one.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def child(spec: dict) -> dict:
    """Load the side `spec` names, make one image, report times since process start."""
    from .contenders import (
        DIFFUSERS,
        DiffusersSide,
        FastimgSide,
        parse_backend,
        parse_diffusers,
        parse_shapes,
    )
    from .job import BenchJob

    job = BenchJob(**spec["job"])
    if spec.get("uncached"):  # nothing compiled is read or kept: the first run on a machine
        import fastimg.backends

        fastimg.backends.compiled_cache = lambda *args, **kwargs: None
    if spec["side"].startswith(DIFFUSERS):
        side = DiffusersSide(spec["model"], job, *parse_diffusers(spec["side"]))
    else:
        backend = parse_backend(spec["side"])
        side = FastimgSide(spec["engines"], job, *backend, shapes=parse_shapes(spec["side"]))
    loaded = time.time()
    side.once()
    done = time.time()
    return {
        "done": done,
        "interpreter_to_main_seconds": _STARTED,
        "load_seconds": loaded - _STARTED,
        "first_image_seconds": done - loaded,
        "peak_rss_mb": _peak_rss_mb(),
    }


def measure(side: str, job, model: str, engines: str, uncached: bool = False) -> dict:
    """Run a cold start in a fresh interpreter; seconds from spawn to first image, peak RSS
    (`uncached`: with no compiled model read from or written to the engines' caches)."""
    spec = {
        "side": side,
        "job": job.to_dict(),
        "model": model,
        "engines": engines,
        "uncached": uncached,
    }
    spawned = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "fastimg_bench.coldstart", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cold start of {side} failed:\n{proc.stderr[-2000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["interpreter_to_main_seconds"] -= spawned
    report["seconds"] = report.pop("done") - spawned
    return report


def import_seconds(repeats: int = 5) -> float:
    """Median seconds to import the runtime (pipeline and ONNX Runtime) in a fresh interpreter."""
    code = (
        "import time; t = time.perf_counter(); import fastimg.diffusion.pipeline, onnxruntime; "
        "print(time.perf_counter() - t)"
    )
    times = sorted(
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
        for _ in range(repeats)
    )
    return times[len(times) // 2]


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
