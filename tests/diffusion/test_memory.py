"""Activation memory: estimated from the manifest, large batches in chunks, refusals in numbers."""

import sys

import numpy as np
import pytest

from fastimg import machine
from fastimg.diffusion import memory
from fastimg.diffusion.engine_set import fused_components
from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.engine_folder.manifest import Manifest
from fastimg.errors import InputError
from tests.manifests import SHA, complete

GiB = 2**30


def manifest(**models) -> Manifest:
    return Manifest.from_data(None, complete(memory=models))


SD15_LIKE = manifest(
    vae_encoder={"per_pixel": 3072, "per_token_pair": 8},
    vae_decoder={"per_pixel": 6144, "per_token_pair": 8},
    unet={"per_pixel": 600, "per_token_pair": 8},
)


def test_the_estimate_grows_with_pixels_and_with_the_square_of_the_tokens():
    at_512 = memory.call_bytes(SD15_LIKE, "vae_decoder", 512, 512, 1)
    assert at_512 == 6144 * 512 * 512 + 8 * 4096**2
    assert memory.call_bytes(SD15_LIKE, "vae_decoder", 512, 512, 3) == 3 * at_512
    at_2048 = memory.call_bytes(SD15_LIKE, "vae_decoder", 2048, 2048, 1)
    assert at_2048 > 16 * at_512  # the attention term takes over
    assert memory.call_bytes(manifest(), "unet", 512, 512, 1) is None  # no model, no estimate


def test_a_large_batch_runs_in_chunks_that_fit():
    free = 8 * GiB  # 6.4 GiB for activations: the decoder's 1.6 GiB per image fits three times
    assert memory.images_per_call(SD15_LIKE, 512, 512, 64, True, free) == 3
    assert memory.images_per_call(SD15_LIKE, 256, 256, 64, True, free) == 8  # the cap
    assert memory.images_per_call(SD15_LIKE, 512, 512, 2, True, free) == 2
    assert memory.images_per_call(SD15_LIKE, 512, 512, 64, True, None) == 8  # unknown: capped


def test_a_call_that_cannot_fit_is_refused_with_the_numbers():
    with pytest.raises(InputError) as error:
        memory.images_per_call(SD15_LIKE, 2048, 2048, 1, True, 16 * GiB)
    message = str(error.value)  # the UNet's two (guided) score matrices dominate at 2048
    assert "2048x2048 image needs about 68.7 GiB for the unet (estimated)" in message
    assert "12.8 GiB are free" in message and "--size 1216" in message
    fused = frozenset({"unet", "vae_decoder", "vae_encoder"})  # no score matrices held whole
    with pytest.raises(InputError, match="needs about 24.0 GiB for the vae_decoder"):
        memory.images_per_call(SD15_LIKE, 2048, 2048, 1, True, 16 * GiB, fused)


def test_the_largest_side_follows_the_memory_free():
    small, large = memory.largest_side(SD15_LIKE, 4 * GiB), memory.largest_side(SD15_LIKE, 64 * GiB)
    assert small % 64 == 0 and small < large
    assert max(memory.needs(SD15_LIKE, small, small, 1, True).values()) <= 4 * GiB * memory.SHARE
    bigger = small + memory.SIDE_STEP
    assert max(memory.needs(SD15_LIKE, bigger, bigger, 1, True).values()) > 4 * GiB * 0.8


class BatchRecorder:
    """Wraps a session and records the batch of every call."""

    def __init__(self, session, batches):
        self.session, self.batches = session, batches
        self.input_names, self.output_names = session.input_names, session.output_names

    def run(self, feeds):
        self.batches.append(next(iter(feeds.values())).shape[0])
        return self.session.run(feeds)


def test_a_large_batch_needs_no_more_than_a_small_one_and_gives_the_same_images(
    tiny, photo, monkeypatch
):
    job = dict(prompt="a cat", image=photo, strength=0.5, num_inference_steps=4, seed=5)
    whole = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")(
        num_images_per_prompt=6, **job
    )
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    unet, decoder = [], []
    pipe.sessions["unet"] = BatchRecorder(pipe.sessions["unet"], unet)
    pipe.sessions["vae_decoder"] = BatchRecorder(pipe.sessions["vae_decoder"], decoder)
    per_image = memory.needs(pipe.manifest, 64, 88, 1, True)
    two_images = max(memory.needs(pipe.manifest, 64, 88, 2, True).values())
    monkeypatch.setattr(machine, "free_bytes", lambda device="cpu": int(two_images / memory.SHARE))
    assert per_image  # the exported tiny engines carry a memory model
    chunked = pipe(num_images_per_prompt=6, **job)
    assert max(unet) == 4 and max(decoder) == 2  # two images (under guidance: four) per call
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), atol=1)


def test_an_image_that_cannot_fit_is_refused_before_anything_runs(tiny, photo, monkeypatch):
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    calls = []
    pipe.sessions["vae_encoder"] = BatchRecorder(pipe.sessions["vae_encoder"], calls)
    monkeypatch.setattr(machine, "free_bytes", lambda device="cpu": 1000)
    with pytest.raises(InputError, match="88x64 image needs about .* GiB for the .* are free"):
        pipe("a cat", photo, strength=0.5, num_inference_steps=4, seed=5)
    assert calls == []


def test_the_longest_side_comes_from_the_memory_free(tiny, monkeypatch):
    roomy = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    monkeypatch.setattr(machine, "free_bytes", lambda device="cpu": 64 * 2**20)
    tight = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    assert tight.max_side < roomy.max_side and tight.max_side % 64 == 0


def test_scratch_counts_for_openvino_only_and_nothing_fitting_leaves_the_side_open():
    model = {"per_pixel": 100, "per_token_pair": 0, "weights_factor": 0.5}
    files = {"unet/model.onnx": {"bytes": 2 * GiB, "sha256": SHA}}
    data = complete({"unet": {"files": files}}, memory={"unet": model})
    tiny = Manifest.from_data(None, data)
    plain = memory.call_bytes(tiny, "unet", 64, 64, 1)
    assert memory.call_bytes(tiny, "unet", 64, 64, 1, scratch="openvino") == plain + GiB
    assert memory.largest_side(tiny, int(0.5 * GiB), scratch="openvino") is None  # 1 GiB
    assert memory.largest_side(tiny, int(0.5 * GiB)) > 64
    with pytest.raises(InputError, match="free some memory first"):
        memory.images_per_call(tiny, 64, 64, 1, False, int(0.5 * GiB), scratch="openvino")


def test_scratch_follows_the_weights_of_the_graph_that_runs():
    model = {"per_pixel": 100, "per_token_pair": 0, "weights_factor": 0.5}
    files = {
        "unet/model.onnx": {"bytes": 1 * GiB, "sha256": SHA},
        "unet/model.onnx_data": {"bytes": 9 * GiB, "sha256": SHA},
        "unet/model.mha.onnx": {"bytes": 2**20, "sha256": SHA},
        "unet/model.int8.xml": {"bytes": 2**20, "sha256": SHA},
        "unet/model.int8.bin": {"bytes": 2 * GiB, "sha256": SHA},
    }
    variants = {
        "onnxruntime": {"path": "unet/model.mha.onnx"},
        "openvino-int8": {"path": "unet/model.int8.xml", "weights": "unet/model.int8.bin"},
    }
    unet = {"files": files, "variants": variants}
    manifest = Manifest.from_data(None, complete({"unet": unet}, memory={"unet": model}))
    assert memory.weight_bytes(manifest, "unet") == 10 * GiB  # the fp32 graph only
    assert memory.weight_bytes(manifest, "unet", "openvino") == 10 * GiB
    assert memory.weight_bytes(manifest, "unet", "openvino-int8") == 2 * GiB + 2**20
    plain = memory.call_bytes(manifest, "unet", 64, 64, 1)
    fp32 = memory.call_bytes(manifest, "unet", 64, 64, 1, scratch="openvino")
    int8 = memory.call_bytes(manifest, "unet", 64, 64, 1, scratch="openvino-int8")
    assert fp32 == plain + 5 * GiB and int8 == plain + GiB + 2**19
    # OpenVINO's static-shapes graph (GroupNorms rewritten) reads the standard graph's weights
    files["unet/model.ov.onnx"] = {"bytes": 2**20, "sha256": SHA}
    variants["openvino-static"] = {"path": "unet/model.ov.onnx", "data": ["unet/model.onnx_data"]}
    manifest = Manifest.from_data(None, complete({"unet": unet}, memory={"unet": model}))
    assert memory.weight_bytes(manifest, "unet", "openvino-static") == 9 * GiB + 2**20
    assert memory.weight_bytes(manifest, "unet") == 10 * GiB  # (not the rewritten graph's)


def test_winograd_graphs_are_estimated_with_their_larger_activations():
    model = {"per_pixel": 100, "per_token_pair": 8}
    winograd = {"convolutions": 3, "extra_bytes": 1, "activation_factor": 1.8}
    decoder = {"files": {}, "variants": {"onnxruntime": {"path": "x", "winograd": winograd}}}
    data = complete({"vae_decoder": decoder}, memory={"vae_decoder": model})
    manifest = Manifest.from_data(None, data)
    scores = 8 * 64**2
    assert memory.call_bytes(manifest, "vae_decoder", 64, 64, 1) == 100 * 64 * 64 + scores
    for other in ("openvino", "onnxruntime-cuda", None):
        assert memory.call_bytes(manifest, "vae_decoder", 64, 64, 1, variant=other) == (
            100 * 64 * 64 + scores
        )
    on_winograd = memory.call_bytes(manifest, "vae_decoder", 64, 64, 2, variant="onnxruntime")
    assert on_winograd == int(2 * (180 * 64 * 64 + scores))
    # A refusal on these graphs names OpenVINO, whose standard graphs hold less.
    tight = int(memory.call_bytes(manifest, "vae_decoder", 512, 512, 1) / memory.SHARE) + 1
    memory.images_per_call(manifest, 512, 512, 1, False, tight)  # fits on the standard graph
    with pytest.raises(InputError, match=r"--backend openvino \(about 1.8x less here\)"):
        memory.images_per_call(manifest, 512, 512, 1, False, tight, variant="onnxruntime")


def test_the_pipeline_checks_a_winograd_call_against_its_own_estimate(
    tiny_winograd, photo, monkeypatch
):
    pipe = Img2ImgPipeline.from_engines(tiny_winograd[1], backend="onnxruntime")
    fused = fused_components(pipe.manifest, "onnxruntime")
    standard = memory.peak_bytes(pipe.manifest, 64, 64, 1, True, fused)
    winograd = memory.peak_bytes(pipe.manifest, 64, 64, 1, True, fused, variant="onnxruntime")
    assert winograd > standard
    between = int((standard + winograd) / 2 / memory.SHARE)
    monkeypatch.setattr(machine, "free_bytes", lambda device="cpu": between)
    job = dict(prompt="a cat", image=photo.resize((64, 64)), strength=0.5, seed=1)
    with pytest.raises(InputError, match="GiB are free"):
        pipe(**job, num_inference_steps=2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_memory_freed_by_the_process_counts_as_free_again():
    import ctypes

    from fastimg_export.memory_watch import anonymous_bytes

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 * 1024) for _ in range(4096)]  # 256 MiB on the heap (< 128 KiB)
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)
    for block in blocks[:-1]:  # the last one pins the top of the heap
        libc.free(block)
    held = anonymous_bytes()
    machine.return_freed_memory()  # hands the freed blocks back, to be counted as free
    assert anonymous_bytes() < held - 200 * 2**20
    libc.free(blocks[-1])


def test_a_call_hands_back_freed_memory_only_where_the_memory_free_falls_short(
    tiny, photo, monkeypatch
):
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    one = memory.peak_bytes(
        pipe.manifest, 64, 88, 1, True, fused_components(pipe.manifest, "onnxruntime")
    )
    free, handed_back = [int(one / memory.SHARE) // 2], []

    def hand_back():
        handed_back.append(True)
        free[0] = int(one / memory.SHARE) + 1  # what the process had freed, counted now

    monkeypatch.setattr(machine, "free_bytes", lambda device="cpu": free[0])
    monkeypatch.setattr(machine, "return_freed_memory", hand_back)
    job = dict(prompt="a cat", image=photo, strength=0.5, num_inference_steps=2, seed=5)
    (first,) = pipe(**job)  # short at first: the freed memory handed back, then it fits
    assert handed_back == [True]
    (again,) = pipe(**job)  # fits at once: nothing to hand back (malloc_trim costs milliseconds)
    assert handed_back == [True]
    assert np.array_equal(np.asarray(first), np.asarray(again))


def test_memory_the_engines_kept_from_an_earlier_call_is_theirs_to_reuse(tiny, photo, monkeypatch):
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    fused = fused_components(pipe.manifest, "onnxruntime")
    one = memory.peak_bytes(pipe.manifest, 64, 88, 1, True, fused)
    two = memory.peak_bytes(pipe.manifest, 64, 88, 2, True, fused)
    free = [int(one / memory.SHARE) + 1]
    monkeypatch.setattr(machine, "free_bytes", lambda device="cpu": free[0])
    job = dict(prompt="a cat", image=photo, strength=0.5, num_inference_steps=4, seed=5)
    (first,) = pipe(**job)
    free[0] -= one  # the engines hold on to that call's memory (OpenVINO does, and arenas)
    (again,) = pipe(**job)  # the same call fits in what they kept
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert two > one
    with pytest.raises(InputError, match="GiB"):  # more than they kept is checked as ever
        pipe(num_images_per_prompt=2, **{**job, "image": photo.resize((200, 150))})


def _with_control(**models) -> Manifest:
    """SD15_LIKE with a ControlNet and the UNet taking its residuals (`models`: their memory)."""
    from tests.manifests import component

    residual = {"down_block_res_0": {"dtype": "float32", "shape": [1]}}
    data = complete(
        components={
            "controlnet": component("controlnet", outputs=residual),
            "unet_control": component("unet_control", inputs=residual),
        },
        memory={**SD15_LIKE.data["memory"], **models},
        control={
            "controlnets": [{"component": "controlnet"}],
            "unet": "unet_control",
            "residuals": ["down_block_res_0"],
        },  # fmt: skip
    )
    return Manifest.from_data(None, data)


def test_a_controlnet_folders_estimate_counts_the_controlnet_and_the_unet_taking_it():
    controlled = _with_control(
        controlnet={"per_pixel": 700, "per_token_pair": 8},
        unet_control={"per_pixel": 650, "per_token_pair": 8},
    )
    plain = memory.needs(SD15_LIKE, 512, 512, 2, True)
    got = memory.needs(controlled, 512, 512, 2, True)
    assert set(got) == {*plain, "controlnet", "unet_control"}
    # batched as the UNet is: 2 images, doubled under CFG
    assert got["controlnet"] == memory.call_bytes(controlled, "controlnet", 512, 512, 4)
    assert got["unet_control"] == 4 * (650 * 512 * 512 + 8 * 4096**2) > got["unet"]
    # a ControlNet whose coefficient is the largest sets the peak (a 2048 px call: refused
    # with its name), and fewer images fit per call than in the plain folder
    heavy = _with_control(controlnet={"per_pixel": 20_000, "per_token_pair": 8})
    with pytest.raises(InputError, match="for the controlnet"):
        memory.images_per_call(heavy, 1024, 1024, 1, True, 16 * GiB)
    assert memory.images_per_call(heavy, 512, 512, 64, True, 32 * GiB) < memory.images_per_call(
        SD15_LIKE, 512, 512, 64, True, 32 * GiB
    )


def test_a_controlnet_folder_without_their_coefficients_counts_them_as_the_unet():
    older = _with_control()  # exported before the control components had coefficients
    got = memory.needs(older, 512, 512, 1, True)
    assert got["controlnet"] == got["unet_control"] == got["unet"]


def test_memory_names_only_components():
    from fastimg.errors import ManifestError

    with pytest.raises(ManifestError, match="memory names controlnet"):
        manifest(controlnet={"per_pixel": 1, "per_token_pair": 0})


def test_the_export_records_the_control_components_coefficients(tiny_controlnet):
    from fastimg.engine_folder.manifest import load_manifest

    folder = load_manifest(tiny_controlnet[1])
    unet, controlnet = folder.memory_model("unet"), folder.memory_model("controlnet")
    unet_control = folder.memory_model("unet_control")
    assert controlnet is not None and unet_control is not None
    # the UNet taking residuals holds them too; the ControlNet its conditioning embedding
    assert unet_control.per_pixel > unet.per_pixel
    assert unet_control.per_token_pair == unet.per_token_pair
    assert controlnet.per_pixel > 0 and controlnet.weights_factor == unet.weights_factor
    needs = memory.needs(folder, 256, 256, 1, True)
    assert {"controlnet", "unet_control"} <= set(needs)
