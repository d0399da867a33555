"""optimum-intel's OVStableDiffusionImg2ImgPipeline as a bench side, run in the peer's own
interpreter (it cannot share one with fastimg's diffusers): python optimum_intel_worker.py SPEC.

SPEC (JSON) names the diffusers model, the folder of its OpenVINO IR (exported on first use),
the size and images per call, whether the job uses classifier-free guidance, the precision
('default': optimum-intel's own choice), whether to compile static shapes, the scheduler (class
and config) and an OpenVINO CACHE_DIR or null.
Then each line on stdin is a JSON request ({"run": {...}} or {"quit": true}) and each reply one
JSON line on stdout. This file imports only the peer's own packages and the standard library.

The harness gives the worker a temp folder of its own in the peer cache (TMPDIR, and
FASTIMG_PEER_TEMP to say so): the worker empties it once an export is saved and on the way
out, on a quit, SIGTERM or the end of its parent.
"""

import time

STARTED = time.time()

import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

STAGES = ("text_encoder", "vae_encoder", "unet", "vae_decoder")
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def peak_rss_mb() -> float:
    """This process' peak resident memory (VmHWM), MiB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**10
    return float("nan")


def load(spec: dict, log):
    """The pipeline, exported to OpenVINO IR on first use, reshaped and compiled as `spec` says."""
    import diffusers
    from optimum.intel import OVStableDiffusionImg2ImgPipeline

    ov_config = {}
    if spec["precision"] != "default":
        ov_config["INFERENCE_PRECISION_HINT"] = OV_PRECISION[spec["precision"]]
    if spec.get("cache_dir"):
        ov_config["CACHE_DIR"] = spec["cache_dir"]
    ir = Path(spec["ir"])
    if not (ir / "model_index.json").is_file():
        log(f"exporting {spec['model']} to OpenVINO IR in {ir}")
        staging = ir.with_name(ir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)  # left by an export that was killed
        exported = OVStableDiffusionImg2ImgPipeline.from_pretrained(
            spec["model"], export=True, compile=False
        )
        exported.save_pretrained(staging)
        os.replace(staging, ir)
        # optimum-intel exports to a TemporaryDirectory the pipeline keeps until it is
        # collected, or until exit: gigabytes in the temp folder while the IR is compiled.
        del exported
        gc.collect()
        empty_temp_folder()
    pipe = OVStableDiffusionImg2ImgPipeline.from_pretrained(
        str(ir), compile=False, ov_config=ov_config
    )
    if spec["static"]:
        pipe.reshape(
            batch_size=1,
            height=spec["size"],
            width=spec["size"],
            num_images_per_prompt=spec["batch"],
        )
        if not spec["cfg"]:
            unbatch_guidance(pipe.unet.model, spec["batch"])
    pipe.compile()
    scheduler = spec["scheduler"]
    pipe.scheduler = getattr(diffusers, scheduler["class"]).from_config(scheduler["config"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def empty_temp_folder() -> None:
    """Remove what this process left in its own temp folder (TMPDIR, given by the harness)."""
    own = os.environ.get("FASTIMG_PEER_TEMP")
    if not own or os.path.realpath(own) != os.path.realpath(tempfile.gettempdir()):
        return  # a temp folder the harness did not make for this worker alone
    for entry in Path(own).iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def exit_cleanly_on_signals() -> None:
    """SIGTERM, and the end of the harness that started this process, end it through
    SystemExit, so that temporary folders are removed on the way out."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def unbatch_guidance(unet, images: int) -> None:
    """Give a statically reshaped UNet the batch of a job without classifier-free guidance:
    optimum-intel's reshape always doubles it for the unconditional half."""
    shapes = {}
    for port in unet.inputs:
        shape = port.get_partial_shape()
        if port.get_any_name() in ("sample", "encoder_hidden_states") and shape.rank.get_length():
            shape[0] = images
        shapes[port] = shape
    unet.reshape(shapes)


def time_stages(pipe, calls: dict) -> None:
    """Record the seconds of every component call in `calls` (stage -> list)."""
    parts = {
        "text_encoder": pipe.text_encoder,
        "vae_encoder": pipe.vae_encoder,
        "unet": pipe.unet,
        "vae_decoder": pipe.vae_decoder,
    }
    for stage, part in parts.items():
        forward = part.forward

        def timed(*args, _forward=forward, _stage=stage, **kwargs):
            start = time.perf_counter()
            try:
                return _forward(*args, **kwargs)
            finally:
                calls[_stage].append(time.perf_counter() - start)

        part.forward = timed


def compiled_precision(pipe) -> str:
    """'bf16' or 'fp32': what OpenVINO compiled the UNet in."""
    hint = pipe.unet.request.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type
    return "bf16" if hint.get_type_name() == "bf16" else "fp32"


def run_once(pipe, request: dict, calls: dict) -> dict:
    """Make one job's images, write the first to request['out']; seconds and stages."""
    import torch
    from PIL import Image

    for stage in STAGES:
        calls[stage] = []
    image = Image.open(request["image"]).convert("RGB")
    start = time.perf_counter()
    result = pipe(
        prompt=request["prompt"],
        image=image,
        strength=request["strength"],
        num_inference_steps=request["steps"],
        guidance_scale=request["guidance"],
        num_images_per_prompt=request["batch"],
        generator=torch.Generator("cpu").manual_seed(request["seed"]),
    ).images[0]
    seconds = time.perf_counter() - start
    result.save(request["out"])
    stages = {stage: sum(calls[stage]) for stage in STAGES}
    stages["unet_calls"] = list(calls["unet"])
    stages["overhead"] = seconds - sum(stages[s] for s in STAGES)
    return {"seconds": seconds, "stages": stages}


def main() -> None:
    """Load as argv[1] says, then answer requests on stdin, one JSON line each."""
    spec = json.loads(sys.argv[1])
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # whatever the libraries print must not mix with the replies
    # OpenVINO's telemetry forks from a thread; a child forked while this thread waits on
    # sys.stdin would hang forever closing it (the lock is held), so requests come another way.
    requests = os.fdopen(os.dup(sys.stdin.fileno()), "r")
    sys.stdin = open(os.devnull)

    def log(text: str) -> None:
        print(f"[optimum-intel] {text}", file=sys.stderr, flush=True)

    exit_cleanly_on_signals()
    try:
        serve(spec, replies, requests, log)
    finally:
        empty_temp_folder()


def serve(spec: dict, replies, requests, log) -> None:
    """Load the pipeline, say it is ready, then answer requests until a quit or end of input."""
    try:
        pipe = load(spec, log)
    except Exception as exc:  # reported to the harness as one line, then the process ends
        replies.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        sys.exit(1)
    calls = {stage: [] for stage in STAGES}
    time_stages(pipe, calls)
    replies.write(
        json.dumps(
            {
                "ready": True,
                "started": STARTED,
                "loaded": time.time(),
                "precision": compiled_precision(pipe),
                "versions": versions(),
            }
        )
        + "\n"
    )
    for line in requests:
        request = json.loads(line)
        if "quit" in request:
            replies.write(json.dumps({"peak_rss_mb": peak_rss_mb()}) + "\n")
            return
        try:
            reply = run_once(pipe, request["run"], calls)
            reply["done"] = time.time()
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")


def versions() -> dict:
    """The peer's package versions, for the record."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("optimum-intel", "optimum", "openvino", "diffusers", "transformers", "torch"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


if __name__ == "__main__":
    main()
