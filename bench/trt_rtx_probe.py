"""Does ONNX Runtime's TensorRT-RTX execution provider run here, and what does it gain? (issue 29)

The provider ships on the package index as a plugin for the plain onnxruntime (>= 1.24; not
with onnxruntime-gpu in the same environment), its TensorRT-RTX libraries bundled
(onnxruntime-ep-nv-tensorrt-rtx-cu13). It is made for RTX GPUs (Ampere and later); whether it
takes the data-centre GPU the device tool lends is what this finds out, on the smallest graph
first. For GRAPH (an engine folder's component, e.g. engines/tiny/unet/model.onnx) it
registers the plugin, lists the devices it offers, makes a session, runs GRAPH on random
inputs against ONNX Runtime's CPU provider, and times both. Whatever fails is recorded with
its message, and the record says how far it got.

    python -m fastimg_bench.trt_rtx_probe GRAPH [--runs N] [-o FILE.json]
"""

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

PLUGIN = "onnxruntime_ep_nv_tensorrt_rtx"


def random_feeds(session, seed: int = 0) -> dict:
    """Random inputs for `session`'s graph: free dimensions 1 for a batch, 77 for a sequence,
    8 for a latent side; int64 inputs (timesteps, token ids) in [0, 500)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = {"batch": 1, "sequence": 77}
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else sizes.get(d, 8) for d in arg.shape]
        if arg.type == "tensor(int64)":
            feeds[arg.name] = rng.integers(0, 500, size=shape, dtype=np.int64)
        else:
            feeds[arg.name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


def timed(session, feeds: dict, runs: int) -> tuple[list, float]:
    """The outputs of one run, and the median seconds of `runs` more."""
    import statistics

    outputs = session.run(None, feeds)
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feeds)
        seconds.append(time.perf_counter() - started)
    return outputs, statistics.median(seconds)


def probe(graph: Path, runs: int = 20) -> dict:
    """The record: how far the plugin got, its devices, its error or its speed against the CPU."""
    import numpy as np
    import onnxruntime as ort

    record = {"graph": str(graph), "onnxruntime": ort.__version__, "stage": "start"}
    cpu = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    feeds = random_feeds(cpu)
    expected, record["cpu_seconds"] = timed(cpu, feeds, runs)
    if importlib.util.find_spec(PLUGIN) is None:
        record["why"] = f"{PLUGIN} is not installed (pip install onnxruntime-ep-nv-tensorrt-rtx)"
        return record
    if not hasattr(ort, "register_execution_provider_library"):
        record["why"] = f"onnxruntime {ort.__version__} has no plugin providers (needs >= 1.24)"
        return record
    plugin = importlib.import_module(PLUGIN)
    try:
        record["stage"] = "register"
        ort.register_execution_provider_library(plugin.get_ep_name(), plugin.get_library_path())
        record["stage"] = "devices"
        devices = [d for d in ort.get_ep_devices() if d.ep_name == plugin.get_ep_name()]
        record["devices"] = [str(getattr(d, "device", d)) for d in devices]
        if not devices:
            record["why"] = "the plugin offers no device on this machine"
            return record
        record["stage"] = "session"
        options = ort.SessionOptions()
        options.add_provider_for_devices(devices, {})
        started = time.perf_counter()
        session = ort.InferenceSession(str(graph), sess_options=options)
        record["session_seconds"] = time.perf_counter() - started
        record["providers"] = session.get_providers()
        record["stage"] = "run"
        got, record["plugin_seconds"] = timed(session, feeds, runs)
    except Exception as exc:  # onnxruntime and the plugin raise their own untyped errors
        record["why"] = f"{type(exc).__name__}: {str(exc).strip()[:2000]}"
        return record
    record["stage"] = "done"
    errors = [
        float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))
        for a, b in zip(got, expected, strict=True)
    ]
    record["max_relative_error_vs_cpu"] = max(errors)
    record["speedup_vs_cpu"] = record["cpu_seconds"] / record["plugin_seconds"]
    return record


def main(argv: list[str] | None = None) -> int:
    """Probe the plugin on GRAPH; print the record and write it where -o says."""
    parser = argparse.ArgumentParser(prog="python -m fastimg_bench.trt_rtx_probe")
    parser.add_argument("graph", type=Path)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args(argv)
    if not args.graph.is_file():
        print(f"error: no ONNX graph at {args.graph}", file=sys.stderr)
        return 1
    record = probe(args.graph, args.runs)
    text = json.dumps(record, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
