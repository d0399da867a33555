"""`fastimg doctor`: what this machine offers fastimg, and whether each backend computes right.

The check runs fixed img2img jobs (one, and one with control images where the folder has
ControlNets) on every backend that can run here, each backend in a fresh process, and compares
each image with the CPU reference (ONNX Runtime, fp32) -- the way to verify a GPU install.
A backend that can also compile each call's exact shapes (`--shapes static`: OpenVINO, with the
graphs the export wrote for them; ONNX Runtime CUDA's CUDA graphs) is checked that way too.
"""

import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..backends.registry import BACKENDS, INT8_VARIANT, describe
from ..backends.select import SUPPORTED, exported_in_fp16, unavailable
from ..machine import cpu_summary, module_version, package_version

# What every other backend's image is compared with: the exact path on the CPU (a folder
# exported in fp16, which has no fp32 graphs: its fp16 graphs on the CPU).
REFERENCE = ("onnxruntime", "fp32")
# PSNR a backend must reach against the CPU reference on the check job: fp32 is the same
# arithmetic in another order; bf16 (bf16 products, fp32 sums) measured 39.4 dB on this job at
# 128 px and 44-47 dB on the parity tests' (tiny model, AVX-512 BF16); fp16 keeps 3 more bits
# of mantissa than bf16. A broken engine gives noise, far below either.
MIN_PSNR = {"fp32": 40.0, "bf16": 35.0, "fp16": 35.0}
# int8's loss depends on the weights quantized: the export records the int8 images' PSNR on
# its own job; on the doctor's job and this CPU's kernels it may be 2x the RMS error (6 dB).
INT8_MARGIN_DB = 6.02
INT8_UNRECORDED_DB = 30.0  # folders exported before the record: a working quantization
# Each check runs in its own interpreter, so a native crash (a segfault inside an engine) is
# reported as a failed row instead of ending the doctor; this is its entry point.
WORKER = "from fastimg.workflows.doctor import worker; worker()"
CHECK_TIMEOUT_S = 1800
CHECK_SIZE = (128, 128)  # height, width of the check job, where the engines take it
# The check jobs a row runs: the standard ones, or for int8 the export's own image check, whose
# PSNR its record gives (on another job the same graphs are further from fp32, or nearer: the
# tiny int8 model measured 36.8 dB at export and 29.7 dB on the standard job).
STANDARD, INT8_RECORD = "standard", "int8-record"
RECORDED_CALL = ("prompt", "strength", "num_inference_steps", "guidance_scale", "seed")


def machine_report() -> list[tuple[str, str]]:
    """(label, value) lines describing the machine as fastimg sees it."""
    from ..gpu import gpus

    rows = [
        ("fastimg", package_version("fastimg") or "?"),
        ("python", f"{platform.python_version()} on {platform.system()} {platform.machine()}"),
        ("cpu", cpu_summary()),
    ]
    found = gpus()
    if found:
        for gpu in found:
            rows.append(
                (
                    f"gpu {gpu.index}",
                    f"{gpu.name}, compute capability {gpu.compute_capability}, "
                    f"{gpu.memory_mib} MiB, driver {gpu.driver}",
                )
            )
    else:
        rows.append(("gpu", "none visible (no nvidia-smi, or no device)"))
    rows.append(("cuda runtime", _cuda_runtime()))
    for module in ("cupy", "tensorrt", "openvino"):
        rows.append((module, module_version(module) or "not installed"))
    for package in ("onnxruntime", "onnxruntime-gpu"):  # one module, two distributions
        rows.append((package, package_version(package) or "not installed"))
    rows.append(("onnxruntime providers", _ort_providers()))
    for backend in BACKENDS:
        reason = unavailable(backend)
        state = "ready" if reason is None else f"unavailable: {reason}"
        rows.append((f"backend {backend}", f"{state} ({', '.join(SUPPORTED[backend])})"))
    return rows


def _cuda_runtime() -> str:
    try:
        import cupy

        v = cupy.cuda.runtime.runtimeGetVersion()
        return f"{v // 1000}.{v % 1000 // 10} (through CuPy)"
    except Exception:  # no cupy or no driver
        return "unknown (CuPy not installed or no driver)"


def _ort_providers() -> str:
    import onnxruntime

    return ", ".join(onnxruntime.get_available_providers())


def check_jobs(manifest, height: int, width: int, jobs: str = STANDARD) -> dict[str, dict]:
    """The fixed jobs a backend runs, by label: small, guided, a few DDIM steps; "plain"
    (with a mask where the folder's UNet inpaints), and "control" beside it where the folder
    has ControlNets (the input as the control image of each, or the folder's depth model's
    map of it), so every engine a call can run is checked. `jobs` INT8_RECORD: the int8
    export's image check as its record gives it (its size, the input's edges as the control
    image), in place of the standard call."""
    from PIL import Image

    from ..media.control_images import edges
    from ..media.images import EXAMPLE_IMAGE, load_image

    recorded = _int8_job(manifest) if jobs == INT8_RECORD else None
    if recorded is not None:
        height = width = recorded["size"]
    image = load_image(EXAMPLE_IMAGE).resize((width, height))
    if recorded is not None:  # (the folder's own scheduler, as the export ran it)
        plain = {"image": image, **{key: recorded[key] for key in RECORDED_CALL}}
    else:
        plain = dict(
            prompt="a watercolor house",
            image=image,
            strength=0.5,
            num_inference_steps=4,
            guidance_scale=7.5,
            seed=0,
            scheduler="ddim",
        )
    if manifest.inpainting:  # (it refuses a call without a mask): its middle repainted
        mask = Image.new("L", (width, height), 0)
        mask.paste(255, (width // 4, height // 4, width * 3 // 4, height * 3 // 4))
        plain["mask_image"] = mask
    checks = {"plain": plain}
    if manifest.control:
        count = len(manifest.control["controlnets"])
        if recorded is None and manifest.depth_components:
            checks["control"] = {**plain, "control_preprocess": "depth"}
        else:  # (the export's check gave every ControlNet the input's edges)
            hint = image if recorded is None else edges(image)
            checks["control"] = {**plain, "control_image": hint if count == 1 else [hint] * count}
    return checks


def job_set(manifest, precision: str) -> str:
    """The check jobs a row in `precision` runs: int8 runs the export's image check where its
    record says what that was (the PSNR it is held to is that job's), else STANDARD."""
    return INT8_RECORD if precision == "int8" and _int8_job(manifest) is not None else STANDARD


def _int8_record(manifest, job: str = "plain", shapes: str = "dynamic") -> dict | None:
    """The export's record of the int8 image (its PSNR from fp32 and the job it was measured
    on) that check job `job` with `shapes` is held to: the mix's with a control image for
    "control", with static shapes for "static" (each where kept), else the mix's own; for a
    folder exported with an int8 UNet only, the UNet's; None where there is none."""
    mix = manifest.data.get("int8") or {}
    if job == "control" and mix.get("control_image") is not None:
        return mix["control_image"]
    if shapes == "static" and mix.get("static_image") is not None:
        return mix["static_image"]
    if mix:  # the mix of int8 graphs --precision int8 runs
        return mix["image"]
    return (manifest.variant("unet", INT8_VARIANT).get("quantization") or {}).get("image")


def _int8_job(manifest) -> dict | None:
    """The job of the int8 records min_psnr holds a folder to (one job for all of them)."""
    return (_int8_record(manifest) or {}).get("job")


def _image_path(out: Path, label: str) -> Path:
    """Where the worker writes job `label`'s image, beside `out`."""
    return out.with_name(f"{out.stem}-{label}.png")


def worker() -> None:
    """Run the check jobs once each on one backend, in its own process.

    argv: engines, backend, precision, device, height, width, out, shapes, jobs (check_jobs').
    """
    from ..diffusion.pipeline import Img2ImgPipeline

    engines, backend, precision, device, height, width, out, shapes, jobs = sys.argv[1:10]
    pipe = Img2ImgPipeline.from_engines(
        engines,
        backend=backend,
        precision=precision,
        device=int(device) if device else None,
        shapes=shapes,
    )
    seconds, ran, plan_set = {}, None, None
    for label, job in check_jobs(pipe.manifest, int(height), int(width), jobs).items():
        pipe(**job)  # the first call compiles and warms up
        start = time.perf_counter()
        (image,) = pipe(**job)
        seconds[label] = time.perf_counter() - start
        image.save(_image_path(Path(out), label))
        ran = ran or image.info["fastimg:precision"]
        plan_set = plan_set or image.info.get("fastimg:plan_set")
    report = {"seconds": seconds["plain"], "job_seconds": seconds, "ran": ran, "plan_set": plan_set}
    print(json.dumps(report), flush=True)


def run_isolated(
    engines,
    backend: str,
    precision: str,
    device: int | None,
    size: tuple[int, int],
    out: Path,
    shapes: str = "dynamic",
    jobs: str = STANDARD,
) -> dict:
    """Run the check jobs on one backend in a fresh interpreter; its report, or why it failed."""
    command = [sys.executable, "-c", WORKER, str(engines), backend, precision]
    command += ["" if device is None else str(device), *map(str, size), str(out), shapes, jobs]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {CHECK_TIMEOUT_S} s"}
    if proc.returncode < 0:
        try:
            name = f"{signal.Signals(-proc.returncode).name} (signal {-proc.returncode})"
        except ValueError:  # a real-time signal has no name
            name = f"signal {-proc.returncode}"
        return {"error": f"crashed with {name}{_last_line(proc)}"}
    if proc.returncode != 0:
        return {"error": f"exited with code {proc.returncode}{_last_line(proc)}"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"printed no report{_last_line(proc)}"}


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
    return f": {lines[-1].strip()[:300]}" if lines else ""


def check_size(manifest, backend: str, precision: str, device: int | None) -> tuple[int, int]:
    """The check job's size on a backend: CHECK_SIZE, or for TensorRT a size its plans take."""
    if not describe(backend).plan_sets:
        return CHECK_SIZE
    from ..backends.select import tensorrt_plans_here
    from ..engine_folder.profiles import Profile

    plans = tensorrt_plans_here(manifest, device, precision=precision)
    profile: Profile = plans.profile
    if profile.admits(*CHECK_SIZE, 1):
        return CHECK_SIZE
    return profile.height[1], profile.width[1]  # the profile's optimum


def min_psnr(manifest, precision: str, job: str = "plain", shapes: str = "dynamic") -> float:
    """The PSNR against the CPU fp32 reference that a backend must reach in `precision` on
    check job `job` with `shapes`: int8 its record's (_int8_record) less INT8_MARGIN_DB."""
    if precision != "int8":
        return MIN_PSNR[precision]
    recorded = (_int8_record(manifest, job, shapes) or {}).get("psnr_db")
    return INT8_UNRECORDED_DB if recorded is None else recorded - INT8_MARGIN_DB


def check(engines, device: int | None = None, log=print) -> list[dict]:
    """Run the check jobs on each runnable backend/precision; compare with the CPU reference."""
    from PIL import Image

    from ..engine_folder.manifest import load_manifest
    from ..errors import EngineError

    manifest = load_manifest(engines)
    rows, references = [], {}
    with tempfile.TemporaryDirectory(prefix="fastimg-doctor-") as scratch:
        cpu_reference = (REFERENCE[0], "fp16" if exported_in_fp16(manifest) else REFERENCE[1])
        named = "{} ({})".format(*cpu_reference)

        def reference(size: tuple[int, int], jobs: str = STANDARD) -> dict:
            """The CPU reference images of check jobs `jobs` at `size` (onnxruntime, the
            folder's own graphs) by check job, computed once each."""
            if (size, jobs) not in references:
                png = Path(scratch) / f"reference-{size[0]}x{size[1]}-{jobs}.png"
                which = f"at {size[1]}x{size[0]}"
                which = which if jobs == STANDARD else "on the int8 export's image check"
                log(f"computing the reference on {named} {which}")
                report = run_isolated(engines, *cpu_reference, None, size, png, "dynamic", jobs)
                if "error" in report:
                    raise EngineError(f"the CPU reference on {named} failed: {report['error']}")
                references[size, jobs] = {  # (by the check jobs the worker ran: job_seconds')
                    label: Image.open(_image_path(png, label)).convert("RGB")
                    for label in report["job_seconds"]
                }
            return references[size, jobs]

        reference(CHECK_SIZE)
        for backend in BACKENDS:
            for precision in SUPPORTED[backend]:
                if backend == REFERENCE[0]:
                    continue
                row = {"backend": backend, "precision": precision}
                reason = unavailable(backend, manifest, device=device, precision=precision)
                if reason is not None:
                    rows.append({**row, "status": "skipped", "detail": reason})
                    continue
                size = check_size(manifest, backend, precision, device)
                jobs = job_set(manifest, precision)
                for shapes in (
                    ("dynamic", "static") if describe(backend).static_shapes else ("dynamic",)
                ):
                    row = {**row, "shapes": shapes}
                    how = "" if shapes == "dynamic" else ", static shapes"
                    log(f"checking {backend} ({precision}{how})")
                    out = Path(scratch) / f"{backend}-{precision}-{shapes}.png"
                    report = run_isolated(
                        engines, backend, precision, device, size, out, shapes, jobs
                    )
                    if "error" in report:
                        rows.append({**row, "status": "failed", "detail": report["error"]})
                        continue
                    expected = reference(size, jobs)
                    compared = _compare(manifest, precision, report, expected, out, shapes)
                    rows.append({**row, **compared})
    return rows


def row_label(row: dict) -> str:
    """'openvino int8', 'openvino int8, static shapes': which check a row reports."""
    static = ", static shapes" if row.get("shapes") == "static" else ""
    return f"{row['backend']} {row['precision']}{static}"


def _compare(
    manifest, precision: str, report: dict, expected: dict, out: Path, shapes: str = "dynamic"
) -> dict:
    """A row's verdict: each check job's image (beside `out`) against its reference in
    `expected`; "ok" only where every job reaches its bound."""
    from PIL import Image

    from ..media.images import psnr

    scores, diffs, notes, ok = {}, {}, [], True
    for label, reference in expected.items():
        got = Image.open(_image_path(out, label)).convert("RGB")
        needed = min_psnr(manifest, precision, label, shapes)
        scores[label] = psnr(reference, got)
        diffs[label] = int(np.abs(np.asarray(reference, int) - np.asarray(got, int)).max())
        ok = ok and scores[label] >= needed
        named = "" if label == "plain" else f"with {label}: "
        notes.append(f"{named}PSNR {scores[label]:.1f} dB (needs {needed:.0f}), max difference "
                     f"{diffs[label]}")  # fmt: skip
    height, width = next(iter(expected.values())).size[::-1]
    plan = f", plans {report['plan_set']}" if report.get("plan_set") else ""
    if report.get("ran", precision) != precision:
        plan += f"; ran as {report['ran']} (no native {precision} here)"
    return {
        "status": "ok" if ok else "wrong",
        "psnr_db": min(scores.values()),
        "max_pixel_diff": max(diffs.values()),
        "job_psnr_db": scores,
        "seconds": report["seconds"],
        "plan_set": report.get("plan_set"),
        "ran": report.get("ran"),
        "detail": f"{'; '.join(notes)}, {report['seconds']:.2f} s at {width}x{height}{plan}",
    }
