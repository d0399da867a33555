"""TensorRT plan sets are chosen per call, by size, batch and precision (stand-in engines).

TensorRT cannot run here, so the plan set's engines are ONNX Runtime sessions labelled with
the plan set: what is tested is which set the pipeline picks, loads and reports.
"""

import logging
import shutil

import numpy as np
import pytest

from fastimg import gpu
from fastimg.backends import select
from fastimg.backends.tensorrt_plans import find_plans
from fastimg.diffusion import engine_set
from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.engine_folder.profiles import Profile, input_shapes
from fastimg.errors import EngineError
from tests.plan_sets import write_plan_sets

SETS = {
    "A": (Profile((64,) * 3, (88,) * 3), "fp16"),
    "B": (Profile((64, 64, 128), (64, 64, 128), (1, 1, 2)), "fp16"),
    "C": (Profile((64,) * 3, (88,) * 3), "fp32"),
    "D": (Profile((136,) * 3, (136,) * 3), "fp16"),
}


@pytest.fixture
def plans(tiny, tmp_path, monkeypatch):
    """An engine folder with plan sets A-D for TensorRT 10.13.0 on sm 8.9, and a fake TensorRT
    loader; returns (folder, name -> key, keys loaded so far)."""
    return _with_plan_sets(tiny[1], tmp_path, monkeypatch)


def _with_plan_sets(source, tmp_path, monkeypatch):
    engines = shutil.copytree(source, tmp_path / "engines")
    written = write_plan_sets(engines, [(p, "8.9", x) for p, x in SETS.values()])
    keys = dict(zip(SETS, written, strict=True))

    real_unavailable, real_load = select.unavailable, engine_set.load_engines
    monkeypatch.setattr(
        select,
        "unavailable",
        lambda b, *a, **k: None if b == "tensorrt" else real_unavailable(b, *a, **k),
    )
    monkeypatch.setattr(gpu, "current_device", lambda device=None: 0)
    monkeypatch.setattr(
        select,
        "tensorrt_plans_here",
        lambda manifest, device=None, **request: find_plans(manifest, "10.13.0", "8.9", **request),
    )
    loaded = []

    def load(backend, manifest, components, precision, plans=None, **options):
        if backend != "tensorrt":
            return real_load(backend, manifest, components, precision, **options)
        loaded.append(plans.key)
        stand_in = real_load("onnxruntime", manifest, components, "fp32", **options)
        stand_in.backend, stand_in.precision, stand_in.plan_set = (
            "tensorrt",
            plans.precision,
            plans.key,
        )
        limits = input_shapes(plans.profile, manifest)
        for name, session in stand_in.sessions.items():
            stand_in.sessions[name] = WithinProfile(session, name, limits[name])
        return stand_in

    monkeypatch.setattr(engine_set, "load_engines", load)
    return engines, keys, loaded


class WithinProfile:
    """A stand-in engine that fails a call TensorRT would refuse: a feed outside the shapes
    its plan was built for (profiles.input_shapes)."""

    def __init__(self, session, name: str, limits: dict):
        self._session, self._name, self._limits = session, name, limits
        self.runs = 0

    def __getattr__(self, attribute):
        return getattr(self._session, attribute)

    def run(self, feeds):
        for input_name, (low, _, high) in self._limits.items():
            shape = tuple(feeds[input_name].shape)
            inside = all(a <= v <= b for a, v, b in zip(low, shape, high, strict=True))
            assert inside, f"{self._name}.{input_name} {shape} is outside {low}..{high}"
        self.runs += 1
        return self._session.run(feeds)


JOB = dict(prompt="a cat", strength=0.5, num_inference_steps=4, seed=3)


def test_batched_calls_keep_every_engine_within_its_plan_profile(plans, photo):
    engines, keys, loaded = plans
    pipe = Img2ImgPipeline.from_engines(engines)
    calls = [
        {**JOB, "image": photo.resize((120, 120)), "seed": seed, "guidance_scale": 4.0}
        for seed in (1, 2)
    ]
    results = pipe.call_many(calls)  # two requests, one image each: set B (batch 1-2)
    assert [im.info["fastimg:plan_set"] for (im,) in results] == [keys["B"]] * 2
    for call, (image,) in zip(calls, results, strict=True):
        (alone,) = pipe(**call)
        assert np.array_equal(np.asarray(image), np.asarray(alone))


def test_an_sdxl_folder_runs_its_plan_set_with_both_text_encoders(tiny_sdxl, tmp_path, photo):
    with pytest.MonkeyPatch.context() as monkeypatch:
        engines, keys, loaded = _with_plan_sets(tiny_sdxl[1], tmp_path, monkeypatch)
        pipe = Img2ImgPipeline.from_engines(engines)
        job = {**JOB, "prompt_2": "an etching", "guidance_scale": 3.0}
        (image,) = pipe(image=photo, **job)
        assert image.info["fastimg:plan_set"] == keys["A"] and loaded == [keys["A"]]
        sessions = pipe.engines._loaded[keys["A"]].sessions
        assert set(sessions) == {
            "text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder"
        }  # fmt: skip
        # Every engine of the plan set ran the call (each within its profile's shapes).
        assert all(session.runs > 0 for session in sessions.values())


def test_auto_picks_fp16_plans_and_loads_nothing_before_the_first_call(plans):
    engines, keys, loaded = plans
    pipe = Img2ImgPipeline.from_engines(engines)
    assert (pipe.backend, pipe.precision, loaded) == ("tensorrt", "fp16", [])


def test_each_call_runs_the_plan_set_that_fits_its_size_and_batch(plans, photo):
    engines, keys, loaded = plans
    pipe = Img2ImgPipeline.from_engines(engines)
    (small,) = pipe(image=photo, **JOB)  # 90x68 -> 88x64: the static set A
    assert small.info["fastimg:plan_set"] == keys["A"]
    pair = pipe(image=photo, num_images_per_prompt=2, **JOB)  # batch 2: only B takes it
    assert {im.info["fastimg:plan_set"] for im in pair} == {keys["B"]}
    (square,) = pipe(image=photo.resize((120, 120)), **JOB)
    assert square.info["fastimg:plan_set"] == keys["B"]
    (big,) = pipe(image=photo.resize((136, 136)), **JOB)
    assert big.info["fastimg:plan_set"] == keys["D"]
    assert loaded[:2] == [keys["A"], keys["B"]]


def test_loaded_plan_sets_are_bounded_and_reused(plans, photo):
    engines, keys, loaded = plans
    pipe = Img2ImgPipeline.from_engines(engines)
    pipe(image=photo, **JOB)  # A
    pipe(image=photo, num_images_per_prompt=2, **JOB)  # B
    pipe(image=photo.resize((120, 120)), **JOB)  # B again: nothing loaded
    assert loaded == [keys["A"], keys["B"]]
    (image,) = pipe(image=photo.resize((136, 136)), **JOB)  # D: A, the oldest, is let go
    assert image.info["fastimg:plan_set"] == keys["D"]
    assert list(pipe.engines._loaded) == [keys["B"], keys["D"]]
    pipe(image=photo, **JOB)
    assert loaded == [keys["A"], keys["B"], keys["D"], keys["A"]]
    assert len(pipe.engines._loaded) == engine_set.MAX_PLAN_SETS


def test_precision_picks_among_the_plan_sets(plans, photo):
    engines, keys, loaded = plans
    pipe = Img2ImgPipeline.from_engines(engines, backend="tensorrt", precision="fp32")
    (image,) = pipe(image=photo, **JOB)
    assert image.info["fastimg:plan_set"] == keys["C"] and pipe.precision == "fp32"
    with pytest.raises(EngineError, match="outside every TensorRT profile.*fastimg build"):
        pipe(image=photo.resize((120, 120)), **JOB)


def test_auto_passes_over_tensorrt_for_a_call_no_plan_fits(plans, photo, caplog):
    engines, keys, loaded = plans
    logger = logging.getLogger("fastimg")
    logger.addHandler(caplog.handler)
    try:
        pipe = Img2ImgPipeline.from_engines(engines)
        (image,) = pipe(image=photo.resize((256, 256)), **JOB)
    finally:
        logger.removeHandler(caplog.handler)
    # the next backend in auto's order: onnxruntime-cuda where a GPU is usable (H200 run)
    assert image.info["fastimg:backend"] in ("openvino", "onnxruntime", "onnxruntime-cuda")
    assert "fastimg:plan_set" not in image.info
    assert "tensorrt passed over for 256x256" in caplog.text and "fastimg build" in caplog.text
    assert loaded == []
    explicit = Img2ImgPipeline.from_engines(engines, backend="tensorrt")
    with pytest.raises(EngineError, match="256x256.*outside every TensorRT profile"):
        explicit(image=photo.resize((256, 256)), **JOB)


def test_the_fallback_keeps_the_precision_asked_for(plans, photo, monkeypatch):
    engines, keys, loaded = plans
    asked = []
    real = engine_set.resolve
    monkeypatch.setattr(engine_set, "resolve", lambda *a, **k: asked.append(a[:2]) or real(*a, **k))
    monkeypatch.setattr(select, "cpu_supports_bf16", lambda: True)
    pipe = Img2ImgPipeline.from_engines(engines, precision="fp32")  # the exact path
    assert (pipe.backend, pipe.precision) == ("tensorrt", "fp32")
    (image,) = pipe(image=photo.resize((256, 256)), **JOB)
    assert asked[-1] == ("auto", "fp32")  # not "auto": that would pick bf16 on this CPU
    assert image.info["fastimg:precision"] == "fp32"


CONTROL_JOB = dict(JOB, guidance_scale=4.0, controlnet_conditioning_scale=0.8)


@pytest.mark.parametrize(
    "layout", ["tiny_controlnet_depth", "tiny_multi_controlnet", "tiny_sdxl_controlnet"]
)
def test_a_controlnet_call_runs_every_controlnet_and_the_residual_unet_on_the_plan_set(
    layout, request, tmp_path, photo, control_image
):
    """The plan set holds the ControlNets and the UNet taking their residuals; each runs within
    its plan's profile, and the image is the one the CPU backend makes of the same feeds."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        engines, keys, loaded = _with_plan_sets(
            request.getfixturevalue(layout)[1], tmp_path, monkeypatch
        )
        pipe = Img2ImgPipeline.from_engines(engines)
        manifest = pipe.manifest
        names = [c["component"] for c in manifest.control["controlnets"]]
        job = {**CONTROL_JOB, "control_image": [control_image] * len(names)}
        (image,) = pipe(image=photo, **job)
        assert image.info["fastimg:plan_set"] == keys["A"]
        sessions = pipe.engines._loaded[keys["A"]].sessions
        assert set(sessions) == set(manifest.runtime_components)
        assert all(sessions[name].runs > 0 for name in (*names, manifest.control["unet"]))
        cpu = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
        (expected,) = cpu(image=photo, **job)
        assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_control_preprocess_depth_runs_the_plan_sets_depth_model_on_the_first_call(
    tiny_controlnet_depth, tmp_path, photo
):
    """No plan set is loaded before the first call: the depth model runs on the one that fits
    the image (the call's), within its fixed-size profile."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        engines, keys, loaded = _with_plan_sets(tiny_controlnet_depth[1], tmp_path, monkeypatch)
        pipe = Img2ImgPipeline.from_engines(engines)
        (image,) = pipe(image=photo, control_preprocess="depth", **CONTROL_JOB)
        assert image.info["fastimg:plan_set"] == keys["A"] and loaded == [keys["A"]]
        assert pipe.engines._loaded[keys["A"]].sessions["depth"].runs == 1
        cpu = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
        (expected,) = cpu(image=photo, control_preprocess="depth", **CONTROL_JOB)
        assert np.array_equal(np.asarray(image), np.asarray(expected))


@pytest.mark.parametrize("layout", ["tiny_inpaint", "tiny_inpaint_controlnet"])
def test_an_inpainting_unets_9_channel_sample_runs_within_the_plan_profile(
    layout, request, tmp_path, photo, control_image
):
    from PIL import Image

    mask = np.zeros((68, 90), np.uint8)
    mask[10:50, 30:80] = 255
    with pytest.MonkeyPatch.context() as monkeypatch:
        engines, keys, loaded = _with_plan_sets(
            request.getfixturevalue(layout)[1], tmp_path, monkeypatch
        )
        pipe = Img2ImgPipeline.from_engines(engines)
        job = {**JOB, "guidance_scale": 4.0, "mask_image": Image.fromarray(mask)}
        if pipe.manifest.control:
            job["control_image"] = control_image
        (image,) = pipe(image=photo, **job)
        assert image.info["fastimg:plan_set"] == keys["A"]
        sessions = pipe.engines._loaded[keys["A"]].sessions
        ran = "unet_control" if pipe.manifest.control else "unet"
        assert pipe.manifest.unet_in_channels == 9 and sessions[ran].runs > 0
        cpu = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
        (expected,) = cpu(image=photo, **job)
        assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_a_fallback_from_a_folder_exported_in_fp16_is_not_asked_for_fp32():
    """Such a folder has no fp32 graphs for ONNX Runtime to fall back on: auto picks its
    precision (fp16 there); any other folder keeps the precision asked for."""
    from tests.manifests import exported_in

    half, full = exported_in("fp16"), exported_in("fp32")
    assert engine_set.fallback_precision("fp32", half) == "auto"
    assert engine_set.fallback_precision("fp32", full) == "fp32"
    assert engine_set.fallback_precision("auto", half) == "auto"
