"""The benchmark: diffusers against each fastimg backend on one job, in one process, alternating.

Each side is loaded once and warmed up; then every repeat runs each side once in turn, so slow
drifts of the machine (heat, other load) fall on all sides alike. Speed-ups are ratios of
medians taken in the same run. Cold start and peak memory come from fresh processes. Sides
whose weights do not fit in memory together (SDXL's on a 24 GiB machine) are measured one after
another instead, each freed before the next loads.
"""

import gc
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastimg.errors import FastImgError
from fastimg.media.images import psnr

from . import coldstart, roofline
from .contenders import (
    DIFFUSERS,
    DiffusersSide,
    FastimgSide,
    baseline_for,
    baselines,
    diffusers_name,
    parse_backend,
    parse_shapes,
)
from .job import BenchJob
from .record import machine as machine_record
from .record import versions as package_versions
from .stages import CONTROLNET, STAGES


def default_backends(manifest=None) -> list[str]:
    """Every backend/precision pair this machine can run (GPU ones where a GPU is usable), on
    `manifest`'s engine folder where it is given."""
    from fastimg.backends.select import SUPPORTED, cpu_supports_bf16, unavailable

    specs = []
    for backend in ("onnxruntime", "openvino", "onnxruntime-cuda", "tensorrt"):
        if unavailable(backend) is not None:
            continue
        for precision in SUPPORTED[backend]:
            if precision == "int8":
                continue  # only engines exported with --int8 have it: asked for by name
            if manifest is None and (backend, precision) == ("onnxruntime", "fp16"):
                continue  # only engines exported in fp16 have it
            if manifest is not None and unavailable(backend, manifest, precision=precision):
                continue  # (fp32 on engines exported in fp16, fp16 on fp32 ones)
            if precision != "bf16" or cpu_supports_bf16():
                specs.append(f"{backend}:{precision}")
                if backend == "openvino":  # its static shapes, measured beside the dynamic
                    specs.append(f"{backend}:{precision}:static")
    return specs


def check_backends(specs: list[str], manifest=None) -> list[str]:
    """The specs resolved ('auto' made concrete; on `manifest`'s engine folder where it is
    given); an unusable one raises before any loading."""
    from fastimg.backends import SHAPES
    from fastimg.backends.registry import REGISTRY, describe
    from fastimg.backends.select import resolve
    from fastimg.errors import InputError

    resolved = []
    for spec in specs:
        backend, precision = resolve(*parse_backend(spec), manifest)
        shapes = parse_shapes(spec)
        if shapes not in SHAPES:
            raise InputError(
                f"--backend {spec}: shapes {shapes!r} is not one of {', '.join(SHAPES)}"
            )
        if shapes != "dynamic" and not describe(backend).static_shapes:
            able = " and ".join(n for n, b in REGISTRY.items() if b.static_shapes)
            raise InputError(
                f"--backend {spec}: static shapes are for {able} (openvino:{precision}:{shapes})"
            )
        resolved.append(f"{backend}:{precision}" + ("" if shapes == "dynamic" else f":{shapes}"))
    return resolved


def _summary(seconds: list[float], stages: list[dict], batch: int = 1) -> dict:
    median = statistics.median(seconds)
    names = [s for s in (*STAGES, CONTROLNET, "overhead") if all(s in st for st in stages)]
    per_stage = {s: statistics.median(st[s] for st in stages) for s in names}
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
    from fastimg.engine_folder.manifest import load_manifest

    return "timestep_cond" in load_manifest(engines).components["unet"]["inputs"]


def _fidelity(image, reference) -> dict:
    diff = np.abs(np.asarray(image, dtype=int) - np.asarray(reference, dtype=int))
    return {"psnr_db": psnr(image, reference), "max_pixel_diff": int(diff.max())}


def run(
    model: str,
    engines: str,
    job: BenchJob,
    backends: list[str],
    warmup: int = 1,
    repeats: int = 3,
    cold_start: bool = True,
    log=print,
    peers: list = (),
) -> dict:
    """Benchmark `job` on diffusers, each fastimg backend and each peer (PeerSpec, a runtime in
    its own interpreter); return the full record. Sides are loaded together and alternated,
    unless their weights do not fit in memory together: then each is loaded, measured and
    freed in turn (the record says which)."""
    makers = [
        (
            lambda d=device, p=precision: DiffusersSide(model, job, d, p),
            f"diffusers from {model} ({device}, {precision})",
        )  # fmt: skip
        for device, precision in baselines(backends)
    ]
    makers += [
        (
            lambda s=spec: FastimgSide(engines, job, *parse_backend(s), shapes=parse_shapes(s)),
            f"fastimg engines {engines} on {spec}",
        )  # fmt: skip
        for spec in backends
    ]
    for peer in peers:
        from .peers.optimum_intel import SIDES

        makers.append(
            (
                lambda p=peer: SIDES[p.name](p, model, job, log=log),
                f"the peer {peer.label} ({peer.python})",
            )  # fmt: skip
        )
    together = fit_together(model, engines, len(makers))
    if not together:
        log("the sides do not fit in memory together: each is loaded, measured and freed in turn")
    collect = _alternated if together else _one_at_a_time
    measured = collect(makers, warmup, repeats, log)
    record = _summarize(measured, model, engines, job, cold_start, log)
    record["sides_loaded"] = "together, alternated" if together else "one at a time"
    if measured.failed:
        record["failed_sides"] = measured.failed
    return record


def fit_together(model: str, engines: str, sides: int) -> bool:
    """Whether every side's weights (each about the engine folder's) fit in the memory free
    now, twice over for what the runtimes copy or compile."""
    from fastimg.machine import free_bytes, return_freed_memory

    return_freed_memory()
    free = free_bytes("cpu")
    # (*.onnx* takes the graphs and their external weights, model.onnx_data)
    weights = sum(f.stat().st_size for f in Path(engines).rglob("*.onnx*") if f.is_file())
    return free is None or 2 * weights * sides <= free


@dataclass
class Measured:
    """What the runs of every side left: times, stages, images, and how to name each side."""

    seconds: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)
    first_call: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    kinds: dict = field(default_factory=dict)  # name: "diffusers", "fastimg" or "peer"
    specs: dict = field(default_factory=dict)  # name: the spec a fresh process is started with
    devices: dict = field(default_factory=dict)
    precisions: dict = field(default_factory=dict)
    peer_versions: dict = field(default_factory=dict)
    peer_memory: dict = field(default_factory=dict)
    peer_sides: list = field(default_factory=list)  # kept open for their cold starts
    flops: dict | None = None
    warmup: int = 0
    failed: dict = field(default_factory=dict)  # label: why the side could not be measured

    def drop(self, label: str, side, reason: str) -> None:
        """Forget a side that failed to load (None) or to run, saying why under `label`."""
        self.failed[label] = reason
        if side is None:
            return
        for table in (self.seconds, self.stages, self.kinds, self.specs, self.devices,
                      self.precisions, self.first_call, self.images):  # fmt: skip
            table.pop(side.name, None)

    def add(self, side, peer: bool) -> None:
        """Register `side` before its runs."""
        name = side.name
        self.seconds[name], self.stages[name] = [], []
        if peer:
            self.kinds[name] = "peer"
            self.peer_versions[name] = side.versions
            self.peer_sides.append(side)
        else:
            self.kinds[name] = "fastimg" if isinstance(side, FastimgSide) else "diffusers"
            self.specs[name] = side.spec if isinstance(side, FastimgSide) else name
        self.devices[name] = side.pipe.device if isinstance(side, FastimgSide) else side.device
        self.precisions[name] = getattr(side, "precision", "fp32")

    def warm(self, side, warmup: int, log) -> None:
        self.warmup = warmup
        for k in range(warmup):
            log(f"warm-up {k + 1}/{warmup}: {side.name}")
            _, _, stages = side.once()
            self.first_call.setdefault(side.name, stages)

    def once(self, side, label: str, log) -> None:
        self.images[side.name], took, stages = side.once()
        self.seconds[side.name].append(took)
        self.stages[side.name].append(stages)
        log(f"{label}: {side.name} {took:.2f} s")

    def count_flops(self, side, log) -> None:
        """FLOPs per stage, counted on the first side (diffusers) while it is loaded."""
        if self.flops is None:
            log("counting FLOPs per stage")
            self.flops = roofline.stage_flops(side)


def _is_peer(side) -> bool:
    return not isinstance(side, FastimgSide | DiffusersSide)


def _alternated(makers, warmup: int, repeats: int, log) -> Measured:
    """All sides loaded, warmed up, then each repeat runs every side once in turn."""
    measured, sides = Measured(), []
    try:
        for make, label in makers:
            log(f"loading {label}")
            sides.append(make())
            measured.add(sides[-1], _is_peer(sides[-1]))
        for side in sides:
            measured.warm(side, warmup, log)
        for r in range(repeats):
            for side in sides:
                measured.once(side, f"repeat {r + 1}/{repeats}", log)
        measured.count_flops(sides[0], log)
    except BaseException as exc:
        _close_peers(measured.peer_sides, now=isinstance(exc, KeyboardInterrupt))
        raise
    sides.clear()  # free every loaded model before the fresh processes load theirs
    gc.collect()
    return measured


def _one_at_a_time(makers, warmup: int, repeats: int, log) -> Measured:
    """Each side loaded, warmed up, run `repeats` times and freed before the next loads."""
    measured = Measured()
    try:
        for k, (make, label) in enumerate(makers):
            log(f"loading {label}")
            side = None
            try:
                side = make()
                measured.add(side, _is_peer(side))
                measured.warm(side, warmup, log)
                for r in range(repeats):
                    measured.once(side, f"repeat {r + 1}/{repeats}", log)
            except FastImgError as exc:  # (e.g. it does not fit in memory here): said, skipped
                if k == 0:
                    raise  # diffusers, the reference of every side
                log(f"{label} failed: {exc}")
                measured.drop(label, side, str(exc))
                side = None
                gc.collect()
                continue
            measured.count_flops(side, log)
            if _is_peer(side):
                measured.peer_memory[side.name] = side.close().get("peak_rss_mb")
            side = None
            gc.collect()
    except BaseException as exc:
        _close_peers(measured.peer_sides, now=isinstance(exc, KeyboardInterrupt))
        raise
    return measured


def _close_peers(peer_sides: list, now: bool = False) -> None:
    """End the peers' workers: asked to quit, or (`now`: Ctrl-C) stopped at once, since one
    busy exporting reads no quit for minutes."""
    for side in peer_sides:
        if now:
            side.stop()
        else:
            side.close()
        side.finish()


def _summarize(measured: Measured, model, engines, job, cold_start: bool, log) -> dict:
    """The record: each side's times against diffusers and the peers, fidelity, rooflines and
    cold starts."""
    try:
        return _record(measured, model, engines, job, cold_start, log)
    finally:
        _close_peers(measured.peer_sides)


def _record(measured: Measured, model, engines, job, cold_start: bool, log) -> dict:
    m = measured
    names = list(m.seconds)
    results = {}
    ours = [name for name in names if m.kinds[name] == "fastimg"]
    peers = [name for name in names if m.kinds[name] == "peer"]
    fp32_reference = next((name for name in ours if m.precisions[name] == "fp32"), None)
    for name in names:
        entry = _summary(m.seconds[name], m.stages[name], job.batch)
        entry["first_call_stages_seconds"] = m.first_call.get(name)
        if name != DIFFUSERS:
            entry["vs_diffusers"] = _fidelity(m.images[name], m.images[DIFFUSERS])
        if m.kinds[name] == "peer":
            entry["baseline"] = DIFFUSERS
            entry["speedup_vs_diffusers"] = (
                results[DIFFUSERS]["median_seconds"] / entry["median_seconds"]
            )
            entry["precision"] = m.precisions[name]
        if m.kinds[name] == "fastimg":
            # The speed-up is against diffusers on the same device (and GPU precision).
            baseline = diffusers_name(*baseline_for(m.specs[name]))
            entry["baseline"] = baseline
            entry["speedup_vs_diffusers"] = (
                results[baseline]["median_seconds"] / entry["median_seconds"]
            )
            if fp32_reference and name != fp32_reference:
                entry["vs_fastimg_fp32"] = _fidelity(m.images[name], m.images[fp32_reference])
        results[name] = entry
    for name in ours:
        results[name]["speedup_vs_peers"] = {
            peer: results[peer]["median_seconds"] / results[name]["median_seconds"]
            for peer in peers
        }
    log("measuring the matmul peak")
    flops = m.flops
    machine = machine_record()
    peaks = roofline.matmul_peak_gflops(machine["cores"])
    for name in names:
        if m.devices[name] != "cpu":
            continue  # the measured peaks are the CPU's
        if m.precisions[name] not in peaks:
            continue  # emulated here: no meaningful peak to compare with
        results[name]["roofline"] = roofline.efficiency(
            results[name]["stages_median_seconds"], flops, peaks[m.precisions[name]]
        )
    for side in m.peer_sides:  # each worker's own peak, then its memory is given back
        if side.name not in m.peer_memory:
            m.peer_memory[side.name] = side.close().get("peak_rss_mb")
        results[side.name]["peak_rss_mb"] = m.peer_memory[side.name]
    if cold_start:
        for name, spec in m.specs.items():
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
        for side in m.peer_sides:  # with its compiled blobs cached, then with none
            for cached, key in ((True, "cold_start"), (False, "cold_start_uncached")):
                log(f"cold start: {side.name} ({'cached' if cached else 'uncached'} compile)")
                try:
                    results[side.name][key] = side.cold_start(cached)
                except RuntimeError as exc:
                    log(f"cold start of {side.name} failed: {str(exc).splitlines()[-1]}")
                    results[side.name][key] = {"error": str(exc)[-2000:]}
    return {
        "machine": machine,
        "versions": package_versions("torch", "diffusers"),
        "model": model,
        "engines": engines,
        "job": {**job.to_dict(), "unet_calls": job.unet_calls(_distilled(engines))},
        "warmup": m.warmup,
        "repeats": max(len(v) for v in m.seconds.values()),
        "import_runtime_seconds": coldstart.import_seconds(),
        "stage_gflop": {stage: count / 1e9 for stage, count in flops.items()},
        "matmul_peak_gflop_per_s": peaks,
        "best_possible_seconds": {
            precision: sum(flops.values()) / 1e9 / peak for precision, peak in peaks.items()
        },
        "peers": m.peer_versions,
        "sides": results,
        "images": m.images,
    }
