"""GPU backends against the CPU output on the tiny model (marked gpu: skipped without a GPU).

Each test exports the tiny model (session fixture), runs img2img on a GPU backend and compares
the image with ONNX Runtime fp32 on the CPU for the same seed.
"""

import pytest

from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.media.images import psnr

pytestmark = pytest.mark.gpu

JOB = dict(prompt="a red fox", strength=0.6, num_inference_steps=8, guidance_scale=5.0, seed=4)


@pytest.fixture(scope="module")
def reference(tiny, photo_module):
    """The CPU image (ONNX Runtime fp32) for the job with a given sampler, computed once each."""
    cpu = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime", precision="fp32")
    images = {}

    def image(sampler: str):
        if sampler not in images:
            images[sampler] = cpu(image=photo_module, **{**JOB, "scheduler": sampler})[0]
        return images[sampler]

    return image


@pytest.fixture(scope="module")
def photo_module():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray((np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1))) * 255).astype("u1"))


def _require(backend: str, tiny):
    from fastimg.backends.select import unavailable
    from fastimg.engine_folder.manifest import load_manifest

    reason = unavailable(backend, load_manifest(tiny[1]))
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


@pytest.mark.parametrize("sampler", ["ddim", "euler_a", "dpmpp_2m"])
def test_onnxruntime_cuda_matches_the_cpu(tiny, reference, photo_module, sampler):
    _require("onnxruntime-cuda", tiny)
    gpu = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime-cuda", device=0)
    assert gpu.device == "cuda:0"
    got = gpu(image=photo_module, **{**JOB, "scheduler": sampler})[0]
    assert got.info["fastimg:backend"] == "onnxruntime-cuda"
    assert psnr(reference(sampler), got) >= 40.0


@pytest.mark.parametrize("sampler", ["ddim", "euler_a"])
def test_onnxruntime_cuda_runs_export_cuda_fp16_graphs_close_to_the_cpu(
    tiny_cuda_fp16, photo_module, sampler
):
    _require("onnxruntime-cuda", tiny_cuda_fp16)
    engines = tiny_cuda_fp16[1]
    cpu = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    gpu = Img2ImgPipeline.from_engines(engines, backend="onnxruntime-cuda", device=0)
    assert gpu.precision == "fp16"  # the folder's fp16 graphs are ONNX Runtime CUDA's default
    call = {**JOB, "scheduler": sampler}
    got = gpu(image=photo_module, **call)[0]
    assert got.info["fastimg:backend"] == "onnxruntime-cuda"
    assert got.info["fastimg:precision"] == "fp16"
    value = psnr(cpu(image=photo_module, **call)[0], got)
    print(f"onnxruntime-cuda fp16 {sampler}: {value:.1f} dB")
    assert value >= 35.0  # fp16's bound (the doctor's); fp32 on the GPU reaches 40


@pytest.mark.parametrize("precision,min_psnr", [("fp32", 40.0), ("fp16", 35.0)])
def test_onnxruntime_cuda_replays_static_shapes_from_cuda_graphs(
    tiny_cuda_fp16, reference, photo_module, precision, min_psnr
):
    _require("onnxruntime-cuda", tiny_cuda_fp16)
    gpu = Img2ImgPipeline.from_engines(
        tiny_cuda_fp16[1], backend="onnxruntime-cuda", precision=precision, device=0,
        shapes="static",
    )  # fmt: skip
    images = [gpu(image=photo_module, **{**JOB, "scheduler": "ddim"})[0] for _ in range(2)]
    unet = gpu.engines_for(64, 64, 1).sessions["unet"].session
    print(f"onnxruntime-cuda {precision} static: UNet graph {unet._graph is not None}, "
          f"{psnr(reference('ddim'), images[1]):.1f} dB")  # fmt: skip
    assert unet._graph is not None  # the UNet's calls replayed from a captured CUDA graph
    for image in images:  # the first call captures, the second replays
        assert psnr(reference("ddim"), image) >= min_psnr


@pytest.mark.parametrize("precision,min_psnr", [("fp32", 35.0), ("fp16", 25.0)])
@pytest.mark.parametrize("static", [True, False])
def test_tensorrt_builds_and_matches_the_cpu(
    tiny, tmp_path, reference, photo_module, static, precision, min_psnr
):
    pytest.importorskip("tensorrt")
    import shutil

    from fastimg.engine_folder.profiles import Profile
    from fastimg_export.trt_build import build_engines

    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    size = (64, 64, 64) if static else (64, 64, 128)
    key = build_engines(engines, Profile(size, size), precision=precision, log=print)
    _require("tensorrt", (None, engines))
    pipe = Img2ImgPipeline.from_engines(engines, backend="tensorrt", precision=precision)
    job = {**JOB, "scheduler": "ddim"}
    first = pipe(image=photo_module, **job)[0]
    again = pipe(image=photo_module, **job)[0]  # replayed from CUDA graphs when static
    assert first.info["fastimg:plan_set"] == key and first.info["fastimg:precision"] == precision
    assert psnr(reference("ddim"), first) >= min_psnr
    assert psnr(first, again) == float("inf")


@pytest.mark.parametrize("precision,min_psnr", [("fp32", 35.0), ("fp16", 25.0)])
@pytest.mark.parametrize("layout", ["tiny_sdxl", "tiny_sdxl_refiner"])
def test_tensorrt_builds_sdxl_plans_that_match_the_cpu(
    layout, precision, min_psnr, request, tmp_path, photo_module
):
    pytest.importorskip("tensorrt")
    import shutil

    from fastimg.engine_folder.profiles import Profile
    from fastimg_export.trt_build import build_engines

    engines = shutil.copytree(request.getfixturevalue(layout)[1], tmp_path / "engines")
    profile = Profile((64, 64, 128), (64, 64, 128), (1, 1, 2))  # dynamic, batched
    key = build_engines(engines, profile, precision=precision, log=print)
    _require("tensorrt", (None, engines))
    job = {**JOB, "scheduler": "euler_a", "negative_prompt": "blurry"}
    if layout == "tiny_sdxl":
        job["prompt_2"] = "an etching"
    cpu = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    gpu = Img2ImgPipeline.from_engines(engines, backend="tensorrt", precision=precision)
    (ours,), (reference,) = gpu(image=photo_module, **job), cpu(image=photo_module, **job)
    assert ours.info["fastimg:plan_set"] == key
    assert psnr(reference, ours) >= min_psnr
    calls = [{**job, "image": photo_module, "seed": seed} for seed in (5, 6)]
    for (batched,), call in zip(gpu.call_many(calls), calls, strict=True):  # two per call
        assert psnr(cpu(**call)[0], batched) >= min_psnr


# ControlNets, masks and the depth model on the GPU backends (issues 26, 27): each folder kind
# against ONNX Runtime fp32 on the CPU, same call.
def _mask():
    """The photo's size (90 x 68): a white block to repaint, black elsewhere."""
    import numpy as np
    from PIL import Image

    values = np.zeros((68, 90), np.uint8)
    values[10:50, 30:80] = 255
    return Image.fromarray(values)


def _call(kind: str, control_image) -> dict:
    """The call's control and mask arguments for each folder kind."""
    control = {"control_image": control_image, "controlnet_conditioning_scale": 1.2}
    return {
        "controlnet": control,
        "multi": {
            "control_image": [control_image] * 2,
            "controlnet_conditioning_scale": [0.8, 1.3],
        },
        "depth": {"control_preprocess": "depth"},
        "mask": {"mask_image": _mask()},
        "mask+controlnet": {**control, "mask_image": _mask()},
    }[kind]


GPU_CASES = [
    ("tiny_controlnet", "controlnet"),
    ("tiny_multi_controlnet", "multi"),
    ("tiny_sdxl_controlnet", "controlnet"),
    ("tiny_controlnet_depth", "depth"),
    ("tiny", "mask"),  # a plain 4-channel UNet: the kept region put back after each step
    ("tiny_inpaint", "mask"),  # the 9-channel inpainting UNet
    ("tiny_inpaint_controlnet", "mask+controlnet"),
]


@pytest.mark.parametrize("layout,kind", GPU_CASES)
def test_onnxruntime_cuda_runs_controlnets_masks_and_depth_as_the_cpu(
    layout, kind, request, photo, control_image
):
    folder = request.getfixturevalue(layout)
    _require("onnxruntime-cuda", folder)
    job = {**JOB, "scheduler": "euler_a", **_call(kind, control_image)}
    cpu = Img2ImgPipeline.from_engines(folder[1], backend="onnxruntime", precision="fp32")
    gpu = Img2ImgPipeline.from_engines(folder[1], backend="onnxruntime-cuda", device=0)
    (expected,), (got,) = cpu(image=photo, **job), gpu(image=photo, **job)
    assert got.info["fastimg:backend"] == "onnxruntime-cuda"
    print(f"onnxruntime-cuda {layout} {kind}: {psnr(expected, got):.1f} dB")
    assert psnr(expected, got) >= 40.0
    if kind != "mask":  # the ControlNets steered it
        plain = {k: v for k, v in job.items() if not k.startswith("control")}
        (unsteered,) = gpu(image=photo, **plain)
        assert "fastimg:control_scale" in got.info and psnr(got, unsteered) < 40.0


@pytest.mark.parametrize("precision,min_psnr", [("fp32", 35.0), ("fp16", 25.0)])
@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize(
    "layout,kind",
    [("tiny_controlnet_depth", "depth"), ("tiny_multi_controlnet", "multi"),
     ("tiny_inpaint_controlnet", "mask+controlnet")],
)  # fmt: skip
def test_tensorrt_plan_sets_run_controlnets_masks_and_depth_as_the_cpu(
    layout, kind, static, precision, min_psnr, request, tmp_path, photo, control_image
):
    """The plan set holds every ControlNet, the residual UNet and the depth model; a static
    profile replays each from its CUDA graph (the second call is the same image)."""
    pytest.importorskip("tensorrt")
    import shutil

    from fastimg.engine_folder.manifest import load_manifest
    from fastimg.engine_folder.profiles import Profile
    from fastimg_export.trt_build import build_engines

    engines = shutil.copytree(request.getfixturevalue(layout)[1], tmp_path / "engines")
    height, width = (64, 64, 64), ((88, 88, 88) if static else (64, 88, 128))
    key = build_engines(engines, Profile(height, width), precision=precision, log=print)
    _require("tensorrt", (None, engines))
    manifest = load_manifest(engines)
    plans = manifest.plan_sets[key]["components"]
    assert sorted(plans) == sorted(manifest.runtime_components)
    job = {**JOB, "scheduler": "ddim", **_call(kind, control_image)}
    cpu = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    gpu = Img2ImgPipeline.from_engines(engines, backend="tensorrt", precision=precision)
    (expected,) = cpu(image=photo, **job)
    (first,), (again,) = gpu(image=photo, **job), gpu(image=photo, **job)
    assert first.info["fastimg:plan_set"] == key
    print(f"tensorrt {precision} {layout} {kind}: {psnr(expected, first):.1f} dB")
    assert psnr(expected, first) >= min_psnr
    assert psnr(first, again) == float("inf")
