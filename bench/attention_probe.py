"""How fast OpenVINO runs one self-attention call on this CPU: the MatMul-Softmax-MatMul the
export writes against OpenVINO's ScaledDotProductAttention op, per head size, at a precision.
sd15's UNet spends most of its attention time at its 64x64 latent level (4096 tokens, 8 heads
of 40 channels); this says what a kernel there can give.

    python -m fastimg_bench.attention_probe [--tokens 4096] [--heads 8] [--head-dims 40]
        [--precision bf16] [--repeats 5] [--ov-config KEY=VALUE ...] [-o FILE.json]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import ov_config


def attention_model(form: str, heads: int, tokens: int, head_dim: int):
    """One attention call as an openvino.Model: 'exported' (scaled Q times K transposed,
    Softmax, times V: the exported graph's form) or 'sdpa' (the ScaledDotProductAttention op)."""
    import openvino as ov
    import openvino.opset13 as ops

    q, k, v = (ops.parameter([1, heads, tokens, head_dim], ov.Type.f32, name=n) for n in "qkv")
    if form == "sdpa":
        out = ops.scaled_dot_product_attention(q, k, v, causal=False)
    else:
        scale = ops.constant(np.float32(head_dim**-0.5))
        scores = ops.matmul(ops.multiply(q, scale), k, False, True)
        out = ops.matmul(ops.softmax(scores, -1), v, False, False)
    return ov.Model([out], [q, k, v], form)


def measure(
    form: str, heads: int, tokens: int, head_dim: int, precision: str, repeats: int,
    extra: dict | None = None,
):  # fmt: skip
    """(median seconds of one call, its GFLOP/s (the two products), the precision OpenVINO
    compiled and the kernels it ran; the call's output), compiled with `extra` properties."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": precision, "PERF_COUNT": True, **(extra or {})}
    compiled = ov.Core().compile_model(
        attention_model(form, heads, tokens, head_dim), "CPU", config
    )
    request = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, heads, tokens, head_dim), dtype=np.float32) for n in "qkv"}
    request.infer(feeds)  # the first call allocates
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer(feeds)
        seconds.append(time.perf_counter() - start)
    median = float(np.median(seconds))
    gflop = 2 * 2 * heads * tokens * tokens * head_dim / 1e9
    kernels = sorted(
        {f"{i.node_type} ({i.exec_type})" for i in request.profiling_info
         if i.status == i.Status.EXECUTED}
    )  # fmt: skip
    output = request.get_output_tensor(0).data.copy()
    return {
        "median_seconds": round(median, 5),
        "gflop": gflop,
        "gflop_per_s": round(gflop / median, 1),
        "compiled_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
        "kernels": kernels,
    }, output


def parser() -> argparse.ArgumentParser:
    """The command line this module takes."""
    parser = argparse.ArgumentParser(
        prog="python -m fastimg_bench.attention_probe", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dims", default="40", help="comma-separated, e.g. 32,40,48,64")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "f32"))
    parser.add_argument("--repeats", type=int, default=5)
    ov_config.add_option(parser)
    parser.add_argument("-o", "--out", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print (and write) each form's timing per head size."""
    from fastimg.machine import cpu_summary

    from .record import save

    args = parser().parse_args(argv)
    extra = ov_config.parse(args.ov_config)
    rows = []
    for head_dim in (int(d) for d in args.head_dims.split(",")):
        outputs = {}
        for form in ("exported", "sdpa"):
            row, outputs[form] = measure(
                form, args.heads, args.tokens, head_dim, args.precision, args.repeats, extra
            )
            rows.append({"form": form, "head_dim": head_dim, **row})
            print(
                f"{form:<9} {args.heads} heads x {head_dim}, {args.tokens} tokens, "
                f"{row['compiled_precision']}: {1000 * row['median_seconds']:.1f} ms, "
                f"{row['gflop_per_s']:.0f} GFLOP/s  {', '.join(row['kernels'])}"
            )
        scale = np.abs(outputs["exported"]).max()
        rows[-1]["max_relative_difference_to_exported"] = float(
            np.abs(outputs["sdpa"] - outputs["exported"]).max() / scale
        )
    result = {"cpu": cpu_summary(), "tokens": args.tokens, "heads": args.heads,
              "precision": args.precision, "repeats": args.repeats, "ov_config": extra,
              "rows": rows}  # fmt: skip
    if args.out:
        save(result, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
