"""Shared fixtures: random-weight tiny models and their exported engines, built once a session."""

import atexit
import fcntl
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Verification stamps and other per-user caches go to a throwaway folder, not ~/.cache,
# removed when the run ends.
os.environ["FASTIMG_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastimg-test-cache-")
atexit.register(shutil.rmtree, os.environ["FASTIMG_CACHE_DIR"], ignore_errors=True)


class _SharedFolders:
    """tmp_path_factory's mktemp, in one folder that every test process sees."""

    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, basename: str) -> Path:
        """ROOT/BASENAME, new."""
        path = self.root / basename
        path.mkdir(parents=True)
        return path


def built_once(fixture):
    """A session fixture of (model folder, engine folder), built by the first test process
    that asks for it and read by the others (pytest-xdist runs a session per process, which
    built each fixture once per process). The model folders are shared (read only, as the
    manifests name them); each process gets its own copy of the engine folder, in which it
    compiles and caches as before."""

    @functools.wraps(fixture)
    def wrapper(tmp_path_factory, **others):
        if not os.environ.get("PYTEST_XDIST_WORKER"):
            return fixture(tmp_path_factory, **others)
        shared = tmp_path_factory.getbasetemp().parent / "built-once" / fixture.__name__
        shared.parent.mkdir(exist_ok=True)
        with open(shared.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            record = shared.with_suffix(".json")
            if not record.exists():
                shutil.rmtree(shared, ignore_errors=True)  # what a failed build left
                model, engines = fixture(_SharedFolders(shared), **others)
                record.write_text(json.dumps([str(model), str(engines)]))
            model, engines = map(Path, json.loads(record.read_text()))
        own = tmp_path_factory.mktemp(fixture.__name__) / engines.name
        return model, shutil.copytree(engines, own, symlinks=True)

    return wrapper


def _build(
    tmp_path_factory,
    arch: str,
    precision: str = "fp32",
    vae: str | None = None,
    lora=None,
    int8_images: int = 0,
    depth: bool = False,
    int8_unet: str = "auto",
    cuda_fp16: bool = False,
):
    pytest.importorskip("torch")
    from fastimg_export.engine_writer import export_engines
    from fastimg_export.random_models import write_random_model

    label = f"{arch}-{vae or 'own'}-{lora and lora[0]}-{precision}" + ("-int8" * bool(int8_images))
    label += "-depth" * depth + "-cuda-fp16" * cuda_fp16
    root = tmp_path_factory.mktemp(label)
    model = write_random_model(arch, root / "model")
    vae_folder = None if vae is None else str(write_random_model(vae, root / vae))
    loras = []
    if lora is not None:  # (name, scale): written as root/NAME.safetensors
        name, scale = lora
        loras = [f"{write_random_model(name, root / f'{name}.safetensors')}:{scale}"]
    engines = export_engines(
        str(model),
        root / "engines",
        precision=precision,
        log=lambda m: None,
        vae=vae_folder,
        loras=loras,
        int8_images=int8_images,
        depth_model=str(write_random_model("tiny-depth", root / "depth")) if depth else None,
        int8_unet=int8_unet,
        cuda_fp16=cuda_fp16,
    )
    return model, engines


@pytest.fixture(scope="session")
@built_once
def tiny(tmp_path_factory):
    """(model folder, engine folder) of the tiny SD-1.x-style model."""
    return _build(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
@built_once
def tiny_winograd(tmp_path_factory):
    """(model folder, engine folder) of the tiny model with every 3x3 convolution of 8 to 64
    channels in Winograd form for ONNX Runtime (full-size models have them from 128)."""
    pytest.importorskip("torch")
    from fastimg_export import winograd

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(winograd, "MIN_CHANNELS", 8)
        return _build(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
@built_once
def tiny_cuda_fp16(tmp_path_factory):
    """(model folder, engine folder) of the tiny model with fp16 graphs for ONNX Runtime CUDA
    (export --cuda-fp16)."""
    return _build(tmp_path_factory, "tiny", cuda_fp16=True)


@pytest.fixture(scope="session")
@built_once
def tiny_int8(tmp_path_factory):
    """(model folder, engine folder) of the tiny model with int8 graphs for OpenVINO: every
    one is kept whatever its measured speed and from TINY_INT8_MIN_PSNR_DB, so that the tests
    see the same mix on every CPU."""
    pytest.importorskip("nncf")
    with tiny_int8_bounds():
        return _build(tmp_path_factory, "tiny", int8_images=3)


# The image bound of the tiny int8 fixtures: the tiny random model's int8 mix sits near the
# export's 30 dB (30.4 dB on an AVX-512 VNNI EPYC, the decoder alone 30.7) and moves with the
# CPU's int8 kernels, which would change the mix kept from one CPU kind to the next; a broken
# int8 graph gives noise, under 15 dB.
TINY_INT8_MIN_PSNR_DB = 20.0


def tiny_int8_bounds():
    """The export's int8 rule for the tiny fixtures: the speed not weighed (the tiny model's
    timings are noise), the image bound TINY_INT8_MIN_PSNR_DB."""
    from unittest import mock

    return mock.patch.multiple(
        "fastimg_export.int8_choice", MIN_SPEEDUP=0.001, MIN_PSNR_DB=TINY_INT8_MIN_PSNR_DB
    )


@pytest.fixture(scope="session")
@built_once
def tiny_int8_other_unet(tmp_path_factory, tiny_int8):
    """(model folder, engine folder) of the tiny model with an int8 UNet only (no other int8
    graph), by the method that tiny_int8's export measured and did not keep."""
    from unittest import mock

    from fastimg.engine_folder.manifest import load_manifest

    (other,) = load_manifest(tiny_int8[1]).components["unet"]["int8_alternatives"]
    method = {"hybrid-int8": "hybrid", "full-int8": "full"}[other["method"]]
    with mock.patch("fastimg_export.int8_components.candidates", lambda components: []):
        return _build(tmp_path_factory, "tiny", int8_images=3, int8_unet=method)


@pytest.fixture(scope="session")
@built_once
def tiny_controlnet(tmp_path_factory):
    """(model folder, engine folder) of the tiny model with a ControlNet (random zero convs)."""
    return _build(tmp_path_factory, "tiny-controlnet")


@pytest.fixture(scope="session")
@built_once
def tiny_multi_controlnet(tmp_path_factory):
    """(model folder, engine folder) of the tiny model with two ControlNets (a
    MultiControlNetModel pipeline folder: controlnet/, controlnet_1/; random zero convs)."""
    return _build(tmp_path_factory, "tiny-multi-controlnet")


@pytest.fixture(scope="session")
@built_once
def tiny_sdxl_controlnet(tmp_path_factory):
    """(model folder, engine folder) of a StableDiffusionXLControlNetImg2ImgPipeline on the
    tiny SDXL base layout (its ControlNet takes text_embeds and time_ids; random zero convs)."""
    return _build(tmp_path_factory, "tiny-sdxl-controlnet")


@pytest.fixture(scope="session")
@built_once
def tiny_controlnet_depth(tmp_path_factory):
    """(model folder, engine folder) of tiny-controlnet exported with the tiny random DPT depth
    model (make-model tiny-depth, in model/../depth) for control_preprocess depth."""
    return _build(tmp_path_factory, "tiny-controlnet", depth=True)


@pytest.fixture(scope="session")
@built_once
def tiny_inpaint(tmp_path_factory):
    """(model folder, engine folder) of the tiny StableDiffusionInpaintPipeline (9-channel
    UNet: latents, mask, masked image latents)."""
    return _build(tmp_path_factory, "tiny-inpaint")


@pytest.fixture(scope="session")
@built_once
def tiny_lcm_inpaint(tmp_path_factory):
    """(model folder, engine folder) of tiny-lcm as a 9-channel inpainting model: an
    LCM-distilled inpainting UNet (timestep_cond input) with the LCMScheduler."""
    return _build(tmp_path_factory, "tiny-lcm-inpaint")


@pytest.fixture(scope="session")
@built_once
def tiny_inpaint_controlnet(tmp_path_factory):
    """(model folder, engine folder) of the tiny StableDiffusionControlNetInpaintPipeline: the
    9-channel UNet and a ControlNet of the plain layout (it sees the 4 latent channels)."""
    return _build(tmp_path_factory, "tiny-inpaint-controlnet")


@pytest.fixture(scope="session")
@built_once
def tiny_v(tmp_path_factory):
    """(model folder, engine folder) of the tiny v-prediction, SD-2.x-style model."""
    return _build(tmp_path_factory, "tiny-v")


@pytest.fixture(scope="session")
@built_once
def tiny_lcm(tmp_path_factory):
    """(model folder, engine folder) of the tiny LCM-distilled model (timestep_cond input)."""
    return _build(tmp_path_factory, "tiny-lcm")


@pytest.fixture(scope="session")
@built_once
def tiny_taesd(tmp_path_factory):
    """(model folder, engine folder) of the tiny model exported with a TAESD-shaped tiny VAE
    (random weights) in place of its own; the VAE folder is beside the model, as `taesd`."""
    return _build(tmp_path_factory, "tiny", vae="taesd")


@pytest.fixture(scope="session")
@built_once
def tiny_lora(tmp_path_factory):
    """(model folder, engine folder) of the tiny model with tiny-lora (UNet and text encoder)
    fused at scale 0.8; the LoRA file is model/../tiny-lora.safetensors."""
    return _build(tmp_path_factory, "tiny", lora=("tiny-lora", 0.8))


@pytest.fixture(scope="session")
@built_once
def tiny_turbo(tmp_path_factory):
    """(model folder, engine folder) of the tiny SD-Turbo layout (Euler ancestral, trailing)."""
    return _build(tmp_path_factory, "tiny-turbo")


@pytest.fixture(scope="session")
@built_once
def tiny_sdxl(tmp_path_factory):
    """(model folder, engine folder) of the tiny SDXL base layout (two text encoders,
    text_time added conditioning, Euler leading)."""
    return _build(tmp_path_factory, "tiny-sdxl")


@pytest.fixture(scope="session")
@built_once
def tiny_sdxl_inpaint(tmp_path_factory):
    """(model folder, engine folder) of the tiny StableDiffusionXLInpaintPipeline (the SDXL
    base layout with a 9-channel UNet: latents, mask, masked image latents)."""
    return _build(tmp_path_factory, "tiny-sdxl-inpaint")


@pytest.fixture(scope="session")
@built_once
def tiny_sdxl_int8(tmp_path_factory):
    """(model folder, engine folder) of the tiny SDXL base with int8 graphs for OpenVINO, by
    tiny_int8's rule; the UNet by the hybrid method alone (--int8-unet auto measuring both
    methods is tiny_int8's)."""
    pytest.importorskip("nncf")
    with tiny_int8_bounds():
        return _build(tmp_path_factory, "tiny-sdxl", int8_images=3, int8_unet="hybrid")


@pytest.fixture(scope="session")
@built_once
def tiny_sdxl_refiner(tmp_path_factory):
    """(model folder, engine folder) of the tiny SDXL refiner layout (text_encoder_2 only,
    aesthetic score in the time ids)."""
    return _build(tmp_path_factory, "tiny-sdxl-refiner")


@pytest.fixture(scope="session")
@built_once
def tiny_sdxl_taesdxl(tmp_path_factory):
    """(model folder, engine folder) of the tiny SDXL base exported with a TAESDXL-shaped tiny
    VAE (written beside the model as taesdxl/)."""
    return _build(tmp_path_factory, "tiny-sdxl", vae="taesdxl")


@pytest.fixture(scope="session")
@built_once
def tiny_sdxl_lora(tmp_path_factory):
    """(model folder, engine folder) of the tiny SDXL base with tiny-sdxl-lora (UNet and both
    text encoders) fused at scale 0.7; the LoRA file is model/../tiny-sdxl-lora.safetensors."""
    return _build(tmp_path_factory, "tiny-sdxl", lora=("tiny-sdxl-lora", 0.7))


@pytest.fixture(scope="session")
@built_once
def tiny_sdxl_turbo(tmp_path_factory):
    """(model folder, engine folder) of the tiny SDXL-Turbo layout (Euler ancestral, trailing)."""
    return _build(tmp_path_factory, "tiny-sdxl-turbo")


@pytest.fixture(scope="session")
@built_once
def sd15(tmp_path_factory):
    """(model folder, engine folder) of the full-size SD 1.5 architecture (slow: about 8 GB)."""
    return _build(tmp_path_factory, "sd15")


@pytest.fixture(scope="session")
@built_once
def sd2_v(tmp_path_factory):
    """(model folder, engine folder) of the full-size SD 2.x v-prediction architecture (slow)."""
    return _build(tmp_path_factory, "sd2-v")


@pytest.fixture
def photo():
    """A deterministic non-square RGB image whose sides are not multiples of 8."""
    rng = np.random.default_rng(0)
    base = rng.random((9, 12, 3))
    big = np.kron(base, np.ones((8, 8, 1)))[:68, :90]
    return Image.fromarray((big * 255).astype(np.uint8))


@pytest.fixture(scope="session")
def control_image():
    """A deterministic edge-like image of the photo's size (floored alike to 88 x 64): the
    ControlNet tests' control image (parity, plan sets, GPU)."""
    lines = (np.random.default_rng(5).random((68, 90)) > 0.85).astype(np.uint8) * 255
    return Image.fromarray(np.stack([lines] * 3, axis=-1))


# What one test process holds at its peak (the tiny fixtures it builds, diffusers beside the
# engines, a Ray cluster): the memory each -n auto worker is given.
WORKER_GIB = 8
MAX_WORKERS = 8


@pytest.hookimpl(optionalhook=True)  # (xdist's hook: a run without xdist, -p no:xdist, has none)
def pytest_xdist_auto_num_workers(config) -> int:
    """The test processes of `-n auto` (pyproject's addopts): one per core this process may
    run on, as many as the memory holds, at most MAX_WORKERS; one where the full-size tests
    are selected (an sd15 export alone takes 13-16 GiB)."""
    selection = (config.getoption("markexpr") or "").strip()
    if "slow" in selection and selection != "not slow":
        return 1
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = len(os.sched_getaffinity(0))
    return max(1, min(cores, int(memory_gib // WORKER_GIB), MAX_WORKERS))


def cuda_gpu_present() -> bool:
    """Whether a CUDA GPU is usable from this process (through CuPy)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device: all mean no GPU here
        return False


def pytest_collection_modifyitems(config, items):
    if cuda_gpu_present():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (and CuPy); none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
@built_once
def lcm(tmp_path_factory):
    """The full-size LCM-distilled SD 1.5 architecture (slow)."""
    return _build(tmp_path_factory, "lcm")


@pytest.fixture(scope="session")
@built_once
def sd_turbo(tmp_path_factory):
    """The full-size SD-Turbo architecture (slow)."""
    return _build(tmp_path_factory, "sd-turbo")


@pytest.fixture(scope="session")
@built_once
def sd15_taesd_lora(tmp_path_factory):
    """Full-size SD 1.5 with TAESD in place of its VAE and sd15-lora fused at 1.0 (slow)."""
    return _build(tmp_path_factory, "sd15", vae="taesd", lora=("sd15-lora", 1.0))


@pytest.fixture
def picture(tmp_path, photo):
    """The shared test photo saved as in.png."""
    path = tmp_path / "in.png"
    photo.save(path)
    return path


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster (2 CPUs, 127.0.0.1) for a module; skipped without Ray."""
    ray = pytest.importorskip("ray")
    from fastimg.workflows.ray_cluster import start_local

    start_local(ray, num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def square(tmp_path):
    """A 64x64 noise image, square.png."""
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "square.png"
    Image.fromarray(pixels).save(path)
    return path
