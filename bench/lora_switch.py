"""Run-time LoRAs: what loading one, switching between two and changing a scale cost, against
a re-export with the LoRA fused; the speed of calls with no LoRA active and with one; the
memory each loaded LoRA takes against its file's size. One process, one run: the ratios hold.

    python -m fastimg_bench.lora_switch ENGINES LORA_A LORA_B [--model MODEL] -o out.json
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .record import machine, versions


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**10
    return float("nan")


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def parser() -> argparse.ArgumentParser:
    """The command line of this bench."""
    p = argparse.ArgumentParser(prog="python -m fastimg_bench.lora_switch", description=__doc__)
    p.add_argument("engines", type=Path, help="an engine folder exported without a LoRA")
    p.add_argument("lora_a", type=Path)
    p.add_argument("lora_b", type=Path)
    p.add_argument("--model", help="the model folder: also time a re-export with LORA_A fused")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--strength", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--ready", action="store_true", help="compile the LoRA graphs first (lora_ready)"
    )
    p.add_argument("-o", "--output", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    """Measure, print and (with -o) write the record."""
    import numpy as np
    from PIL import Image

    from fastimg.diffusion.pipeline import Img2ImgPipeline

    args = parser().parse_args(argv)
    image = Image.fromarray(
        (np.random.default_rng(0).random((args.size, args.size, 3)) * 255).astype(np.uint8)
    )
    call = dict(prompt="a watercolor fox", image=image, strength=args.strength,
                num_inference_steps=args.steps, guidance_scale=7.5, seed=1)  # fmt: skip

    def calls() -> float:
        return statistics.median(_timed(lambda: pipe(**call)) for _ in range(args.repeats))

    pipe = Img2ImgPipeline.from_engines(args.engines, backend=args.backend,
                                        precision=args.precision)  # fmt: skip
    pipe(**call)  # warm-up
    plain = calls()
    ready = {}
    if args.ready:
        ready["prepare_twins_at_load"] = _timed(pipe.loras.prepare)
        ready["call_no_lora_on_twins"] = calls()
    rss_before = _rss_mb()
    load_a = _timed(lambda: pipe.load_lora(args.lora_a, name="a"))
    rss_a = _rss_mb()
    load_b = _timed(lambda: pipe.load_lora(args.lora_b, name="b", scale=0.0))
    rss_b = _rss_mb()
    first_with_a = _timed(lambda: pipe(**call))
    with_a = calls()
    switch = _timed(lambda: pipe.set_lora_scales({"a": 0.0, "b": 1.0}))
    first_after_switch = _timed(lambda: pipe(**call))
    rescale = _timed(lambda: pipe.set_lora_scales({"b": 0.6}))
    first_after_rescale = _timed(lambda: pipe(**call))
    pipe.set_lora_scales({"a": 0.0, "b": 0.0})
    plain_again = calls()
    record = {
        "command": "python -m fastimg_bench.lora_switch " + " ".join(sys.argv[1:] or argv or []),
        "machine": machine(),
        "versions": versions(),
        "job": {
            "size": args.size,
            "steps": args.steps,
            "strength": args.strength,
            "backend": args.backend,
            "precision": pipe.precision,
        },  # fmt: skip
        "seconds": {
            "call_no_lora": plain,
            "load_first_lora": load_a,
            "first_call_with_lora": first_with_a,
            "call_with_lora": with_a,
            "load_second_lora": load_b,
            "switch_loras": switch,
            "first_call_after_switch": first_after_switch,
            "change_scale": rescale,
            "first_call_after_scale": first_after_rescale,
            "call_no_lora_after": plain_again,
            **ready,
        },
        "ratios": {
            "with_lora_over_no_lora": with_a / plain,
            "no_lora_after_over_before": plain_again / plain,
            "first_call_after_switch_over_call": first_after_switch / with_a,
            **(
                {"no_lora_on_twins_over_plain": ready["call_no_lora_on_twins"] / plain}
                if ready
                else {}
            ),
        },
        "memory_mb": {
            "file_a": args.lora_a.stat().st_size / 2**20,
            "file_b": args.lora_b.stat().st_size / 2**20,
            "rss_added_by_first_lora_and_its_graphs": rss_a - rss_before,
            "rss_added_by_second_lora": rss_b - rss_a,
        },
    }
    if args.model:
        record["seconds"]["re_export_with_lora"] = _reexport(args.model, args.lora_a)
        record["ratios"]["re_export_over_load"] = record["seconds"]["re_export_with_lora"] / load_a
    text = json.dumps(record, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


def _reexport(model: str, lora: Path) -> float:
    """Seconds of `fastimg export MODEL --lora LORA` into a scratch folder."""
    from fastimg_export.engine_writer import export_engines

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as scratch:
        return _timed(
            lambda: export_engines(
                model, Path(scratch) / "e", log=lambda m: None, loras=[f"{lora}:1.0"]
            )  # fmt: skip
        )


if __name__ == "__main__":
    raise SystemExit(main())
