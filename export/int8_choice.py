"""Which int8 graphs `--precision int8` runs: each component's is kept only where it pays.

At export every int8 graph is measured alone on this CPU: its speed against the component's
default path, and the final image's PSNR against fp32's when only that component is int8. A
component keeps its int8 file where it is at least MIN_SPEEDUP times as fast and its image at
least MIN_PSNR_DB from fp32's; otherwise the file is deleted and the manifest says why, with
the figures. The UNet's int8 (what --int8 asks for) is always kept, its figures recorded too,
and so is unet_control's (the same UNet taking ControlNet residuals: --precision int8 runs the
UNet in int8 with a control image as without one). The ControlNets and unet_control are
measured on CHECK_JOB with a control image (int8_control.check_call). Where the UNet's two
methods were measured (--int8-unet auto), it keeps one first (int8_unet_method); where it keeps
full int8, unet_control and the ControlNets are quantized by it too and each keeps the method
its own figures choose, by the same rule.

The default path compared against is the component's fp32 graph on OpenVINO compiled with the
runtime's --precision int8 settings, i.e. at OpenVINO's default precision (bf16 on a CPU with
bf16, else fp32): that is what --precision int8 runs a component without an int8 graph in, and
what the default CPU path (openvino, precision auto) runs on a bf16 CPU, so a kept int8 graph
beats what would run in its place.
"""

import gc
import shutil
import statistics
import time
from pathlib import Path

from fastimg.backends.registry import INT8_STATIC_VARIANT, INT8_VARIANT
from fastimg.errors import require

from . import int8_mixed
from . import int8_unet_method as unet_method
from .calibration import CALIBRATION_PROMPTS, Feeds
from .int8_control import check_call, uses_control, write_candidate

MIN_SPEEDUP = 1.05  # within 5 % is the noise of a few runs; int8 costs image quality
MIN_PSNR_DB = 30.0  # a working int8 graph gives 37-45 dB on the tiny test model; noise < 15
ALWAYS_KEPT = ("unet", "unet_control")
WARMUP, TIMED_RUNS = 1, 3
IDENTICAL_DB = 999.0  # recorded where the images are equal (PSNR infinite)
# The img2img call whose images int8 and fp32 are compared on at export (CFG on, two UNet
# steps), at the model's native size; recorded in the manifest with the PSNR it gave.
CHECK_JOB = {
    "prompt": CALIBRATION_PROMPTS[1],
    "strength": 0.5,
    "num_inference_steps": 4,
    "guidance_scale": 3.0,
    "seed": 0,
}


def choose(name: str, speed_ratio: float, psnr_db: float) -> tuple[bool, str]:
    """Whether component `name`'s int8 graph is kept, given its measured speed ratio (its
    default path's seconds over int8's) and its image's PSNR against fp32, and why."""
    figures = f"{speed_ratio:.2f}x its default path's speed, image {psnr_db:.1f} dB from fp32's"
    if name in ALWAYS_KEPT:
        return True, f"kept: the UNet's int8 is what --int8 asks for ({figures})"
    if psnr_db < MIN_PSNR_DB:
        return False, f"dropped: image under the {MIN_PSNR_DB:g} dB bound ({figures})"
    if speed_ratio < MIN_SPEEDUP:
        return False, f"dropped: not {MIN_SPEEDUP:g}x as fast as its default path ({figures})"
    return True, f"kept: {figures}"


def apply_choices(folder: Path, data: dict, measured: dict[str, dict]) -> list[str]:
    """Record each measured component's figures (`measured`: name -> {'speed', 'image'}) and
    choice in the manifest `data`; a dropped component's int8 variant leaves `data` (its
    record moves to the component's 'int8_dropped') and its files are deleted from
    `folder`. The kept components' names."""
    kept = []
    for name, figures in measured.items():
        entry = data["components"][name]
        variant = entry["variants"][INT8_VARIANT]
        quantization = variant["quantization"]
        quantization["image"] = figures["image"]
        quantization["speed"] = figures["speed"]
        chosen, reason = choose(name, figures["speed"]["speed_ratio"], figures["image"]["psnr_db"])
        quantization["chosen"], quantization["reason"] = chosen, reason
        if chosen:
            kept.append(name)
        else:
            drop(folder, data, name, reason)
    return kept


def drop(
    folder: Path, data: dict, name: str, reason: str, variant_name: str = INT8_VARIANT
) -> None:
    """Move component `name`'s int8 variant record (`variant_name`'s) to its 'int8_dropped'
    (its 'int8_static_dropped') as not chosen, with `reason`, and delete its files from
    `folder`; the int8 graph takes the one for static shapes quantized from it along."""
    entry = data["components"][name]
    variant = entry["variants"].pop(variant_name)
    record = "int8_static_dropped" if variant_name == INT8_STATIC_VARIANT else "int8_dropped"
    entry[record] = {**variant["quantization"], "chosen": False, "reason": reason}
    remove_files(folder, entry, variant)
    if variant_name == INT8_VARIANT and INT8_STATIC_VARIANT in entry["variants"]:
        remove_files(folder, entry, entry["variants"].pop(INT8_STATIC_VARIANT))


def remove_files(folder: Path, entry: dict, variant: dict) -> None:
    """Delete a variant's files from `folder` and from its component's `entry`."""
    for rel in (variant["path"], variant["weights"]):
        entry["files"].pop(rel, None)
        (folder / rel).unlink(missing_ok=True)


def alternated_seconds(requests: dict, feed: dict, warmup: int, runs: int) -> dict:
    """Seconds of each of `runs` runs of every infer request in `requests` on `feed`, taken in
    turn (so that a change in the machine's load falls on all), after `warmup` runs each."""
    for request in requests.values():
        for _ in range(warmup):
            request.infer(feed)
    seconds = {label: [] for label in requests}
    for _ in range(runs):
        for label, request in requests.items():
            started = time.perf_counter()
            request.infer(feed)
            seconds[label].append(time.perf_counter() - started)
    return seconds


def time_component(folder: Path, entry: dict, feed: dict) -> dict:
    """Seconds of one run of a component's int8 graph and of its default path (see the
    module's doc) on `feed`, each compiled as the runtime compiles --precision int8; after
    WARMUP runs each, TIMED_RUNS of each taken in turn (so that a change in the machine's
    load falls on both), the median of each."""
    return time_graphs(folder, entry, {"int8": entry["variants"][INT8_VARIANT]}, feed)["int8"]


def time_graphs(folder: Path, entry: dict, variants: dict[str, dict], feed: dict) -> dict:
    """time_component's record for each of a component's int8 `variants` (label -> variant
    entry), all timed in one run, in turn with each other and with the default path: two
    methods' graphs are compared on the same load, and against the same default path."""
    ov = require("openvino", "int8")
    from fastimg.backends.openvino import compile_config, compiled_precision

    config = compile_config("int8", None, 1)
    paths = {"default": entry["path"], **{k: v["path"] for k, v in variants.items()}}
    compiled = {
        k: ov.Core().compile_model(str(folder / rel), "CPU", config) for k, rel in paths.items()
    }
    precision = compiled_precision(compiled["default"].get_property("INFERENCE_PRECISION_HINT"))
    requests = {k: model.create_infer_request() for k, model in compiled.items()}
    runs = alternated_seconds(requests, feed, WARMUP, TIMED_RUNS)
    del requests, compiled
    gc.collect()
    seconds = {k: statistics.median(v) for k, v in runs.items()}
    return {
        label: {
            "int8_seconds": seconds[label],
            "default_seconds": seconds["default"],
            "speed_ratio": round(seconds["default"] / seconds[label], 4),
            "default_path": f"openvino {precision} (OpenVINO's default here)",
            "runs": TIMED_RUNS,
            "warmup": WARMUP,
            "input_shapes": {k: [int(d) for d in v.shape] for k, v in feed.items()},
            "all_seconds": {
                "int8": [round(x, 5) for x in runs[label]],
                "default": [round(x, 5) for x in runs["default"]],
            },
        }
        for label in variants
    }


def only(data: dict, names: tuple[str, ...]) -> dict:
    """A copy of the manifest `data` with int8 variants (and their files) for `names` only,
    its record of the mix (where it has one) naming those of them the mix has, if any."""
    components = {}
    for name, entry in data["components"].items():
        variants = dict(entry.get("variants", {}))
        files = dict(entry["files"])
        for label in (INT8_VARIANT, INT8_STATIC_VARIANT):
            variant = variants.get(label)
            if variant is not None and name not in names:
                del variants[label]
                for rel in (variant["path"], variant.get("weights")):
                    files.pop(rel, None)
        components[name] = {**entry, "variants": variants, "files": files}
    copy = {**data, "components": components}
    mix = data.get("int8")
    if mix is not None:
        copy.pop("int8")
        if kept := [name for name in mix["components"] if name in names]:
            copy["int8"] = {**mix, "components": kept}
    return copy


class ImageCheck:
    """Images of CHECK_JOB at `size` on OpenVINO from the engine folder `folder` with int8
    graphs for some components only, each compared with fp32's (computed once), compiled for
    `shapes` (the runtime's --shapes); what was compiled is removed by close() (it is keyed to
    this machine)."""

    def __init__(self, folder: Path, size: int, log=print, shapes: str = "dynamic"):
        from fastimg.media.images import EXAMPLE_IMAGE, load_image

        self.folder, self.size, self.log, self.shapes = folder, size, log, shapes
        self.photo = load_image(EXAMPLE_IMAGE).resize((size, size))
        self.reference = None
        self.records: dict[tuple, dict] = {}
        self.call: dict = {}  # more arguments of the call (a control image), self.job says which
        self.job: dict = {}

    def image(self, data: dict, names: tuple, precision: str):
        """The image with int8 graphs for `names` only, the others in `precision`."""
        from fastimg.diffusion.pipeline import Img2ImgPipeline
        from fastimg.engine_folder.manifest import Manifest

        manifest = Manifest.from_data(self.folder, only(data, names))
        pipe = Img2ImgPipeline(
            manifest, backend="openvino", precision=precision, shapes=self.shapes
        )
        (picture,) = pipe(image=self.photo, **self.call, **CHECK_JOB)
        del pipe
        gc.collect()
        return picture

    def psnr(self, data: dict, names: tuple, label: str, graphs: str = "") -> dict:
        """The record of the image with int8 graphs for `names` (none: the default path,
        precision auto) against fp32's; measured once per set of names and `graphs` (what
        tells apart other int8 graphs for the same names)."""
        from fastimg.machine import cpu_summary
        from fastimg.media.images import psnr

        key = (tuple(sorted(names)), graphs)
        if key not in self.records:
            if self.reference is None:
                self.reference = self.image(data, (), "fp32")
            picture = self.image(data, names, "int8" if names else "auto")
            measured = min(psnr(picture, self.reference), IDENTICAL_DB)
            self.records[key] = {
                "psnr_db": round(measured, 2),
                "job": {**CHECK_JOB, "size": self.size, **self.job},
                "measured_on": cpu_summary()[:256],
            }
        size = f"{self.size}x{self.size}"
        self.log(f"  {label}: image {self.records[key]['psnr_db']:.1f} dB from fp32's ({size})")
        return self.records[key]

    def close(self) -> None:
        """Remove what the runs compiled from the folder (also once an int8 file changed)."""
        from fastimg.backends.registry import describe

        shutil.rmtree(self.folder / describe("openvino").cache, ignore_errors=True)


def _choose_method(folder: Path, data: dict, name: str, measure, check, feed) -> tuple[dict, str]:
    """Measure each of component `name`'s int8 graphs alone (int8_unet_method; their speeds
    in one run, on `feed`), keep one: its figures and why it was kept."""
    written = {v["quantization"]["method"]: v for v in unet_method.candidates(data, name)}
    speeds = time_graphs(folder, data["components"][name], written, feed)
    measured = {}
    for method, variant in written.items():
        with_it = unet_method.with_variant(data, name, variant)
        measured[method] = measure(with_it, name, method, speeds[method])
    chosen, reasons = unet_method.choose_method(measured, MIN_PSNR_DB, MIN_SPEEDUP)
    unet_method.keep_method(folder, data, chosen, measured, reasons, name)
    check.close()  # the kept graph may have moved to the path another was compiled from
    return measured[chosen], reasons[chosen]


def _follow_unet(folder: Path, data: dict, name: str, feeds: Feeds, log) -> None:
    """Where the UNet kept another int8 method than control component `name` was quantized
    by, quantize it by the UNet's too (int8_control.write_candidate), to measure both."""
    method = data["components"]["unet"]["variants"][INT8_VARIANT]["quantization"]["method"]
    if data["components"][name]["variants"][INT8_VARIANT]["quantization"]["method"] == method:
        return
    log(f"  {name}: the UNet kept {method}: quantizing it by {method} too, to measure both")
    write_candidate(folder, data, name, feeds, method, log)


def select_int8(folder: Path, data: dict, feeds: dict[str, Feeds], size: int, log=print) -> None:
    """Measure each int8 graph of the complete engine folder `folder` (manifest `data`, its
    held-out calibration inputs the last of `feeds`), keep the ones that pay (apply_choices)
    and record in data['int8'] the chosen mix and its image's PSNR against fp32."""
    quantized = tuple(
        n for n, e in data["components"].items() if INT8_VARIANT in e.get("variants", {})
    )
    log(f"measuring each int8 graph alone ({', '.join(quantized)}) against its default path")
    check, control = ImageCheck(folder, size, log), None
    if "control" in data:  # the ControlNets' graphs run only with a control image
        control = ImageCheck(folder, size, log)
        control.call, control.job = check_call(data, control.photo)
    try:
        default = check.psnr(data, (), "default path")

        def measure(data: dict, name: str, graphs: str = "", speed=None) -> dict:
            label = f"{name} int8 alone" + (f" ({graphs})" if graphs else "")
            on = control if control is not None and uses_control(name) else check
            image = on.psnr(data, (name,), label, graphs)
            if speed is None:  # (else timed already, beside the other graphs of `name`)
                speed = time_component(folder, data["components"][name], feeds[name][-1])
            log(
                f"  {label}: int8 {speed['int8_seconds']:.3f} s, {speed['default_path']} "
                f"{speed['default_seconds']:.3f} s ({speed['speed_ratio']:.2f}x)"
            )
            return {"speed": speed, "image": image}

        measured, methods = {}, {}  # methods: why a method was kept, where two were measured
        unet_chose = bool(unet_method.candidates(data))  # auto: the UNet's method is measured
        for name in sorted(quantized, key=lambda n: n != "unet"):  # the UNet's choice first
            if unet_chose and uses_control(name):
                _follow_unet(folder, data, name, feeds[name], log)
            if unet_method.candidates(data, name):
                measured[name], methods[name] = _choose_method(
                    folder, data, name, measure, check, feeds[name][-1]
                )
                continue
            measured[name] = measure(data, name)
            figures = measured[name]
            if (
                int8_mixed.rescuable(name)
                and figures["image"]["psnr_db"] < MIN_PSNR_DB
                and figures["speed"]["speed_ratio"] >= MIN_SPEEDUP
            ):

                def measure_again(data: dict, name: str, graphs: str) -> dict:
                    check.close()  # the int8 file changed: nothing compiled from it is kept
                    return measure(data, name, graphs)

                bounds = (MIN_PSNR_DB, MIN_SPEEDUP)
                measured[name] = int8_mixed.rescue(
                    folder, data, name, feeds[name], measure_again, figures, bounds, log
                )
                check.close()
        measured = {name: measured[name] for name in quantized}  # the manifest's order
        kept = apply_choices(folder, data, measured)
        for name, why in methods.items():  # why this method, besides why int8 is kept
            entry = data["components"][name]
            record = entry.get("int8_dropped") or entry["variants"][INT8_VARIANT]["quantization"]
            record["reason" if name in ALWAYS_KEPT else "method_reason"] = why
        for name in quantized:
            entry = data["components"][name]
            record = entry.get("int8_dropped") or entry["variants"][INT8_VARIANT]["quantization"]
            log(f"  {name}: {record['reason']}")
        plain = [name for name in kept if not uses_control(name)]  # what the plain job runs
        mix = _within_bound(check, folder, data, kept, plain, measured, "int8 mix", log)
        if control is not None:
            with_control = {
                "control_image": _within_bound(
                    control, folder, data, kept, kept, measured, "int8 mix with control", log
                ),
                "control_default_path_image": control.psnr(data, (), "default path with control"),
            }
            mix = check.psnr(data, tuple(kept), "int8 mix")  # (the same, unless one was dropped)
    finally:
        check.close()
    data["int8"] = {
        "components": kept,
        "image": mix,
        "default_path_image": default,
        "min_speedup": MIN_SPEEDUP,
        "min_psnr_db": MIN_PSNR_DB,
        "compared_against": __doc__.split("\n\n")[2].replace("\n", " ")[:1000],
        **(with_control if control is not None else {}),
    }


def _within_bound(check, folder, data: dict, kept: list, runs: list, measured, label, log) -> dict:
    """The image record of the int8 mix `kept` on `check`'s job; errors add up: while it is
    under the bound, the least accurate droppable component of those the job `runs` is
    dropped (from `kept` and `runs` too)."""
    mix = check.psnr(data, tuple(kept), label)
    while mix["psnr_db"] < MIN_PSNR_DB and any(n not in ALWAYS_KEPT for n in runs):
        worst = min(
            (n for n in runs if n not in ALWAYS_KEPT),
            key=lambda n: measured[n]["image"]["psnr_db"],
        )
        reason = f"dropped: the mix with it gave {mix['psnr_db']:.1f} dB, under {MIN_PSNR_DB:g}"
        drop(folder, data, worst, reason)
        kept.remove(worst)
        if runs is not kept:
            runs.remove(worst)
        log(f"  {worst}: {reason}")
        mix = check.psnr(data, tuple(kept), label)
    return mix
