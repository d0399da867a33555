"""How far OpenVINO's fast CPU paths are from fp32 on this CPU's kernels: bf16 and int8, with
dynamic and static shapes, on one img2img job (the int8 check job the export recorded, where
the folder has int8 graphs). The tests' bounds for bf16, int8 and static shapes must hold on
every CPU kind (AVX2, AVX-512 BF16/VNNI, AMX); this prints the figures they rest on.

    python -m fastimg_bench.kernel_check ENGINES [--threads N] [-o FILE.json]
"""

import argparse
import json
import sys
from pathlib import Path


def measure(engines: Path, threads: int | None = None) -> dict:
    """PSNR (dB) and largest pixel difference of each fast path against OpenVINO fp32."""
    import numpy as np

    from fastimg.backends.select import cpu_supports_bf16
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.engine_folder.manifest import load_manifest
    from fastimg.machine import cpu_summary
    from fastimg.media.images import EXAMPLE_IMAGE, load_image, psnr

    manifest = load_manifest(engines)
    int8 = manifest.variant("unet", "openvino-int8")
    # what --precision int8 runs: the export's mix of int8 graphs where it recorded one (its
    # image's PSNR), else (folders from before the mix) the int8 UNet's
    mix, unet = manifest.data.get("int8"), (int8 or {}).get("quantization") or {}
    record = mix["image"] if mix else unet.get("image")
    job = dict(record["job"]) if record else {
        "prompt": "a photo of a red fox in the snow, detailed fur", "strength": 0.5,
        "num_inference_steps": 4, "guidance_scale": 3.0, "seed": 0, "size": 64,
    }  # fmt: skip
    photo = load_image(EXAMPLE_IMAGE).resize((job.pop("size"),) * 2)
    paths = [("fp32", "dynamic"), ("fp32", "static")]
    if cpu_supports_bf16():
        paths += [("bf16", "dynamic"), ("bf16", "static")]
    if int8:
        paths += [("int8", "dynamic"), ("int8", "static")]
    images = {}
    for precision, shapes in paths:
        pipe = Img2ImgPipeline(manifest, "openvino", precision, threads=threads, shapes=shapes)
        (images[precision, shapes],) = pipe(image=photo, **job)
        del pipe

    def distance(a, b) -> dict:
        diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        return {"psnr_db": round(min(psnr(a, b), 999.0), 2), "max_difference": int(diff.max())}

    reference = images["fp32", "dynamic"]
    result = {
        "cpu": cpu_summary(),
        "threads": threads,
        "engines": str(engines),
        "job": record["job"] if record else job,
        "recorded_int8_psnr_db": record["psnr_db"] if record else None,
        "recorded_on": record["measured_on"] if record else None,
        "against_fp32": {
            f"{p} {s}": distance(image, reference)
            for (p, s), image in images.items()
            if (p, s) != ("fp32", "dynamic")
        },
        "static_against_dynamic": {
            p: distance(images[p, "static"], images[p, "dynamic"]) for p in {p for p, _ in paths}
        },
    }
    return result


def parser() -> argparse.ArgumentParser:
    """The command line this module takes."""
    parser = argparse.ArgumentParser(prog="python -m fastimg_bench.kernel_check")
    parser.add_argument("engines", type=Path, help="an engine folder (with --int8: its int8 too)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads [every core]")
    parser.add_argument("-o", "--output", type=Path, default=None, help="also write the JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measure and print (and write, with -o) the figures as JSON."""
    args = parser().parse_args(argv)
    result = measure(args.engines, args.threads)
    text = json.dumps(result, indent=1)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
