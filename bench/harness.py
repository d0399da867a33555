"""The benchmark: diffusers against each fastimg backend on one job, in one process, alternating.

Each side is loaded once and warmed up; then every repeat runs each side once in turn, so slow
drifts of the machine (heat, other load) fall on all sides alike. Speed-ups are ratios of
medians taken in the same run. Cold start and peak memory come from fresh processes.
"""

import gc
import statistics

import numpy as np

from fastimg.images import psnr

from . import coldstart, roofline
from .job import Job
from .sides import (
    DIFFUSERS,
    DiffusersSide,
    FastimgSide,
    baseline_for,
    diffusers_name,
    parse_backend,
    parse_shapes,
)
from .stages import STAGES


def default_backends() -> list[str]:
    """Every backend/precision pair this machine can run (GPU ones where a GPU is usable)."""
    from fastimg.backends.select import SUPPORTED, cpu_supports_bf16, unavailable

    specs = []
    for backend in ("onnxruntime", "openvino", "onnxruntime-cuda", "tensorrt"):
        if unavailable(backend) is not None:
            continue
        for precision in SUPPORTED[backend]:
            if precision == "int8":
                continue  # only engines exported with --int8 have it: asked for by name
            if precision != "bf16" or cpu_supports_bf16():
                specs.append(f"{backend}:{precision}")
                if backend == "openvino":  # its static shapes, measured beside the dynamic
                    specs.append(f"{backend}:{precision}:static")
    return specs


def baselines(specs: list[str]) -> list[tuple[str, str]]:
    """The diffusers runs a benchmark of `specs` needs: the CPU fp32 one (every side's PSNR
    reference), and each GPU side's on the same GPU in its precision."""
    needed = [("cpu", "fp32")]
    for spec in specs:
        if baseline_for(spec) not in needed:
            needed.append(baseline_for(spec))
    return needed


def check_backends(specs: list[str]) -> list[str]:
    """The specs resolved ('auto' made concrete); an unusable one raises before any loading."""
    from fastimg.backends import SHAPES
    from fastimg.backends.select import resolve
    from fastimg.errors import InputError

    resolved = []
    for spec in specs:
        backend, precision = resolve(*parse_backend(spec))
        shapes = parse_shapes(spec)
        if shapes not in SHAPES:
            raise InputError(
                f"--backend {spec}: shapes {shapes!r} is not one of {', '.join(SHAPES)}"
            )
        if shapes != "dynamic" and backend != "openvino":
            raise InputError(
                f"--backend {spec}: static shapes are OpenVINO's (openvino:{precision}:{shapes})"
            )
        resolved.append(f"{backend}:{precision}" + ("" if shapes == "dynamic" else f":{shapes}"))
    return resolved


def _machine() -> dict:
    from fastimg.machine import machine_record

    return machine_record()


def _versions() -> dict:
    from fastimg.machine import package_version

    packages = ("fastimg", "torch", "diffusers", "onnxruntime", "openvino", "numpy")
    return {p: v for p in packages if (v := package_version(p)) is not None}


def _summary(seconds: list[float], stages: list[dict], batch: int = 1) -> dict:
    median = statistics.median(seconds)
    per_stage = {s: statistics.median(st[s] for st in stages) for s in (*STAGES, "overhead")}
    unet_calls = [t for st in stages for t in st["unet_calls"]]
    return {
        "seconds": seconds,
        "median_seconds": median,
        "min_seconds": min(seconds),
        "max_seconds": max(seconds),
        "images_per_second": batch / median,
        "seconds_per_image": median / batch,
        "stages_median_seconds": per_stage,
        "unet_call_median_seconds": statistics.median(unet_calls) if unet_calls else None,
        "overhead_fraction": per_stage["overhead"] / median,
    }


def _distilled(engines: str) -> bool:
    """Whether the engines' UNet is LCM-distilled (it takes a guidance embedding)."""
    from fastimg.manifest import load_manifest

    return "timestep_cond" in load_manifest(engines).components["unet"]["inputs"]


def _fidelity(image, reference) -> dict:
    diff = np.abs(np.asarray(image, dtype=int) - np.asarray(reference, dtype=int))
    return {"psnr_db": psnr(image, reference), "max_pixel_diff": int(diff.max())}


def run(
    model: str,
    engines: str,
    job: Job,
    backends: list[str],
    warmup: int = 1,
    repeats: int = 3,
    cold_start: bool = True,
    log=print,
    peers: list = (),
) -> dict:
    """Benchmark `job` on diffusers, each fastimg backend and each peer (PeerSpec, a runtime in
    its own interpreter); return the full record."""
    sides = []
    for device, precision in baselines(backends):
        log(f"loading diffusers from {model} ({device}, {precision})")
        sides.append(DiffusersSide(model, job, device, precision))
    for spec in backends:
        log(f"loading fastimg engines {engines} on {spec}")
        sides.append(FastimgSide(engines, job, *parse_backend(spec), shapes=parse_shapes(spec)))
    peer_sides = []
    try:
        for peer in peers:
            from .peers.optimum_intel import SIDES

            log(f"loading the peer {peer.label} ({peer.python})")
            peer_sides.append(SIDES[peer.name](peer, model, job, log=log))
    except BaseException:
        _close_peers(peer_sides)
        raise
    sides += peer_sides
    try:
        return _measure(sides, peer_sides, model, engines, job, warmup, repeats, cold_start, log)
    finally:
        _close_peers(peer_sides)


def _close_peers(peer_sides: list) -> None:
    for side in peer_sides:
        side.close()
        side.finish()


def _measure(sides, peer_sides, model, engines, job, warmup, repeats, cold_start, log) -> dict:
    first_call = {}
    for side in sides:
        for k in range(warmup):
            log(f"warm-up {k + 1}/{warmup}: {side.name}")
            _, _, stages = side.once()
            first_call.setdefault(side.name, stages)
    seconds = {side.name: [] for side in sides}
    stages = {side.name: [] for side in sides}
    images = {}
    for r in range(repeats):
        for side in sides:
            images[side.name], took, st = side.once()
            seconds[side.name].append(took)
            stages[side.name].append(st)
            log(f"repeat {r + 1}/{repeats}: {side.name} {took:.2f} s")
    results = {}
    ours = [s for s in sides if isinstance(s, FastimgSide)]
    fp32_reference = next((s.name for s in ours if s.precision == "fp32"), None)
    for side in sides:
        entry = _summary(seconds[side.name], stages[side.name], job.batch)
        entry["first_call_stages_seconds"] = first_call.get(side.name)
        if side.name != DIFFUSERS:
            entry["vs_diffusers"] = _fidelity(images[side.name], images[DIFFUSERS])
        if side in peer_sides:
            entry["baseline"] = DIFFUSERS
            entry["speedup_vs_diffusers"] = (
                results[DIFFUSERS]["median_seconds"] / entry["median_seconds"]
            )
            entry["precision"] = side.precision
        if isinstance(side, FastimgSide):
            # The speed-up is against diffusers on the same device (and GPU precision).
            baseline = diffusers_name(*baseline_for(side.spec))
            entry["baseline"] = baseline
            entry["speedup_vs_diffusers"] = (
                results[baseline]["median_seconds"] / entry["median_seconds"]
            )
            if fp32_reference and side.name != fp32_reference:
                entry["vs_fastimg_fp32"] = _fidelity(images[side.name], images[fp32_reference])
        results[side.name] = entry
    for side in ours:
        results[side.name]["speedup_vs_peers"] = {
            peer.name: results[peer.name]["median_seconds"] / results[side.name]["median_seconds"]
            for peer in peer_sides
        }
    log("counting FLOPs per stage and measuring the matmul peak")
    flops = roofline.stage_flops(sides[0])
    machine = _machine()
    peaks = roofline.matmul_peak_gflops(machine["cores"])
    for side in sides:
        on_gpu = (
            side.pipe.device != "cpu" if isinstance(side, FastimgSide) else side.device != "cpu"
        )
        if on_gpu:
            continue  # the measured peaks are the CPU's
        precision = getattr(side, "precision", "fp32")  # diffusers: fp32 on the CPU
        if precision not in peaks:
            continue  # emulated here: no meaningful peak to compare with
        results[side.name]["roofline"] = roofline.efficiency(
            results[side.name]["stages_median_seconds"], flops, peaks[precision]
        )
    specs = [
        (s.name, s.spec if isinstance(s, FastimgSide) else s.name)
        for s in sides
        if s not in peer_sides
    ]
    for side in peer_sides:  # each worker's own peak, then its memory is given back
        results[side.name]["peak_rss_mb"] = side.close().get("peak_rss_mb")
    sides.clear()  # free every loaded model before the fresh processes load theirs
    side = None  # noqa: F841 (the loop variable held the last side)
    gc.collect()
    if cold_start:
        for name, spec in specs:
            log(f"cold start: {name}")
            try:
                results[name]["cold_start"] = coldstart.measure(spec, job, model, engines)
            except RuntimeError as exc:  # one failed fresh process must not lose the run
                log(f"cold start of {name} failed: {str(exc).splitlines()[-1]}")
                results[name]["cold_start"] = {"error": str(exc)[-2000:]}
            if spec.startswith("openvino"):  # and once compiling everything, as on a new machine
                log(f"cold start: {name} (nothing compiled)")
                try:
                    uncached = coldstart.measure(spec, job, model, engines, uncached=True)
                    results[name]["cold_start_uncached"] = uncached
                except RuntimeError as exc:
                    results[name]["cold_start_uncached"] = {"error": str(exc)[-2000:]}
        for side in peer_sides:  # with its compiled blobs cached, then with none
            for cached, key in ((True, "cold_start"), (False, "cold_start_uncached")):
                log(f"cold start: {side.name} ({'cached' if cached else 'uncached'} compile)")
                try:
                    results[side.name][key] = side.cold_start(cached)
                except RuntimeError as exc:
                    log(f"cold start of {side.name} failed: {str(exc).splitlines()[-1]}")
                    results[side.name][key] = {"error": str(exc)[-2000:]}
    return {
        "machine": machine,
        "versions": _versions(),
        "model": model,
        "engines": engines,
        "job": {**job.to_dict(), "unet_calls": job.unet_calls(_distilled(engines))},
        "warmup": warmup,
        "repeats": repeats,
        "import_runtime_seconds": coldstart.import_seconds(),
        "stage_gflop": {stage: count / 1e9 for stage, count in flops.items()},
        "matmul_peak_gflop_per_s": peaks,
        "best_possible_seconds": {
            precision: sum(flops.values()) / 1e9 / peak for precision, peak in peaks.items()
        },
        "peers": {side.name: side.versions for side in peer_sides},
        "sides": results,
        "images": images,
    }
