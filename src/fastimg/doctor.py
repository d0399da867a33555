"""`fastimg doctor`: what this machine offers fastimg, and whether each backend computes right.

The check runs one fixed img2img job on every backend that can run here and compares each
image with the CPU reference (ONNX Runtime, fp32) -- the way to verify a GPU install.
"""

import platform
import time
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from .backends import BACKENDS
from .backends.select import SUPPORTED, unavailable

CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
# PSNR a backend must reach against the CPU fp32 reference on the check job.
MIN_PSNR = {"fp32": 40.0, "bf16": 25.0, "fp16": 25.0}


def package_version(package: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def cpu_info() -> tuple[str, list[str]]:
    """The CPU's model name and feature flags (from /proc/cpuinfo where there is one)."""
    name, flags = platform.processor() or "unknown CPU", []
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().splitlines()
        name = next((ln.split(":", 1)[1].strip() for ln in info if "model name" in ln), name)
        flags = next((ln.split(":", 1)[1].split() for ln in info if ln.startswith("flags")), [])
    except OSError:
        pass
    return name, flags


def cpu_summary() -> str:
    """CPU model, cores available and the vector features that matter for inference."""
    from .backends.onnxruntime import available_cores

    name, flags = cpu_info()
    features = ", ".join(f for f in CPU_FEATURES if f in flags) or "none detected"
    return f"{name}, {available_cores()} cores available; {features}"


def machine_report() -> list[tuple[str, str]]:
    """(label, value) lines describing the machine as fastimg sees it."""
    from .gpu import gpus

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
    for package in ("cupy", "tensorrt", "onnxruntime", "onnxruntime-gpu", "openvino"):
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


def check(engines, log=print) -> list[dict]:
    """Run the check job on each runnable backend/precision; compare with the CPU reference."""
    from .cli import EXAMPLE_IMAGE
    from .images import load_image, psnr
    from .manifest import load_manifest
    from .pipeline import Img2ImgPipeline

    manifest = load_manifest(engines)
    image = load_image(EXAMPLE_IMAGE).resize((128, 128))
    job = dict(
        prompt="a watercolor house",
        image=image,
        strength=0.5,
        num_inference_steps=4,
        guidance_scale=7.5,
        seed=0,
        scheduler="ddim",
    )
    reference = Img2ImgPipeline(manifest, backend="onnxruntime", precision="fp32")(**job)[0]
    rows = []
    for backend in BACKENDS:
        for precision in SUPPORTED[backend]:
            if backend == "onnxruntime":
                continue
            reason = unavailable(backend, manifest)
            if reason is not None:
                rows.append(
                    {
                        "backend": backend,
                        "precision": precision,
                        "status": "skipped",
                        "detail": reason,
                    }
                )
                continue
            log(f"checking {backend} ({precision})")
            try:
                pipe = Img2ImgPipeline(manifest, backend=backend, precision=precision)
                pipe(**job)  # the first call compiles and warms up
                start = time.perf_counter()
                got = pipe(**job)[0]
                seconds = time.perf_counter() - start
            except Exception as exc:  # a broken install must be reported, not crash the check
                rows.append(
                    {
                        "backend": backend,
                        "precision": precision,
                        "status": "failed",
                        "detail": f"{type(exc).__name__}: {exc}",
                    }
                )
                continue
            score = psnr(reference, got)
            ok = score >= MIN_PSNR[precision]
            diff = int(np.abs(np.asarray(reference, int) - np.asarray(got, int)).max())
            rows.append(
                {
                    "backend": backend,
                    "precision": precision,
                    "status": "ok" if ok else "wrong",
                    "psnr_db": score,
                    "max_pixel_diff": diff,
                    "seconds": seconds,
                    "detail": f"PSNR {score:.1f} dB (needs {MIN_PSNR[precision]:.0f}), max "
                    f"difference {diff}, {seconds:.2f} s",
                }
            )
    return rows
