"""ControlNet units (alwayson_scripts.controlnet, as webuiapi's ControlNetUnit sends them, and
as raw JSON) on /sdapi/v1/img2img, against live servers on the tiny ControlNet models (one
ControlNet, two, one with a depth model): equal to the pipeline's control_image call with the
same lists, and what the folder's ControlNets cannot do refused by name; the extension's
/controlnet info routes."""

import base64
import io
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
webuiapi = pytest.importorskip("webuiapi")

from fastimg.serve import ServeOptions  # noqa: E402
from tests.serve.harness import live, ready  # noqa: E402

A1111 = dict(prompt="a cat", denoising_strength=0.6, steps=3, cfg_scale=5, sampler_name="Euler",
             width=90, height=68, seed=11)  # fmt: skip
PIPE_CALL = dict(strength=0.6, num_inference_steps=3, guidance_scale=5.0, scheduler="euler",
                 seed=11)  # fmt: skip


@pytest.fixture(scope="module")
def control_pipe(tiny_controlnet):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    return Img2ImgPipeline.from_engines(tiny_controlnet[1], backend="onnxruntime", precision="fp32")


@pytest.fixture(scope="module")
def api(control_pipe):
    with live(ServeOptions(), lambda: control_pipe) as (client, _):
        ready(client)
        yield webuiapi.WebUIApi(host=client.base_url.host, port=client.base_url.port)


def run(api, photo, *units):
    # (a fresh alwayson_scripts each call: webuiapi adds the units to its shared default dict)
    return api.img2img(images=[photo], controlnet_units=list(units), alwayson_scripts={}, **A1111)


def test_a_unit_runs_as_the_pipelines_control_image(api, control_pipe, photo):
    sketch = photo.transpose(0)
    unit = webuiapi.ControlNetUnit(image=sketch, weight=0.5, guidance_end=0.9)
    result = run(api, photo, unit)
    expected = control_pipe("a cat", photo, control_image=sketch, controlnet_conditioning_scale=0.5,
                            control_guidance_end=0.9, **PIPE_CALL)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")), np.asarray(expected[0]))
    assert (
        'ControlNet 0: "preprocessor: none, model: model, weight: 0.5'
        in result.info["infotexts"][0]
    )


def test_a_unit_without_an_image_takes_the_init_image(api, control_pipe, photo):
    result = run(api, photo, webuiapi.ControlNetUnit(weight=0.7))
    expected = control_pipe("a cat", photo, control_image=photo, controlnet_conditioning_scale=0.7,
                            **PIPE_CALL)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")), np.asarray(expected[0]))


def test_a_unit_with_a_mask_inpaints_steered_by_the_image_before_its_fill(api, control_pipe,
                                                                          photo):  # fmt: skip
    """A mask with a unit (A1111's defaults: blur 4, fill, only masked): the pipeline's call
    with mask_image, masked_content fill and control_image, the init image as sent."""
    from PIL import Image

    mask = Image.new("L", photo.size, 0)
    mask.paste(255, (30, 20, 60, 50))
    unit = webuiapi.ControlNetUnit(weight=0.7)
    result = api.img2img(images=[photo], mask_image=mask, alwayson_scripts={},
                         controlnet_units=[unit], **A1111)  # fmt: skip
    expected = control_pipe("a cat", photo, control_image=photo, controlnet_conditioning_scale=0.7,
                            mask_image=mask, mask_blur=4, padding_mask_crop=0, keep_unmasked=True,
                            masked_content="fill", **PIPE_CALL)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")), np.asarray(expected[0]))


def test_a_disabled_unit_asks_nothing(api, control_pipe, photo):
    result = run(api, photo, webuiapi.ControlNetUnit(image=photo.transpose(0), enabled=False))
    expected = control_pipe("a cat", photo, **PIPE_CALL)[0]
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")), np.asarray(expected))
    assert "ControlNet" not in result.info["infotexts"][0]  # (the tiny one's zero convs steer
    # nothing: the labels tell a run with a ControlNet from one without)


@pytest.mark.parametrize(
    "units,message",
    [
        ([{}, {}], "2 ControlNet units are enabled, but the engine folder holds 1 ControlNet"),
        ([{"module": "invert"}], "module 'invert' is not one fastimg runs"),
        ([{"module": "depth_midas"}], "lacks one: export it with  fastimg export MODEL"),
        ([{"model": "control_v11f1p_sd15_depth [cfd03158]"}], "is not the engines' ControlNet"),
        ([{"module": "scribble"}], "send the ControlNet unit 0's pixel_perfect true"),
        ([{}, {"enabled": False}, {"control_mode": 2}], "unit 2's 'control_mode' ('ControlNet"),
        ([{"control_mode": 1}], "'control_mode' ('My prompt is more important')"),
        ([{"module": "canny"}], "thresholds 100 and 200"),
        ([{"image": "half", "resize_mode": "Crop and Resize"}], "'Just Resize'"),
    ],
)
def test_what_the_controlnet_cannot_do_is_refused_by_name(api, photo, units, message):
    made = []
    for unit in units:
        image = photo.crop((0, 0, 45, 34)) if unit.pop("image", None) == "half" else None
        made.append(webuiapi.ControlNetUnit(image=image, **unit))
    with pytest.raises(RuntimeError) as raised:
        run(api, photo, *made)
    status, text = raised.value.args
    assert status == 422 and message in json.loads(text)["detail"]


def test_a_unit_for_engines_without_a_controlnet_is_refused(pipe, photo):
    with live(ServeOptions(), lambda: pipe) as (client, _):
        ready(client)
        api = webuiapi.WebUIApi(host=client.base_url.host, port=client.base_url.port)
        with pytest.raises(RuntimeError) as raised:
            run(api, photo, webuiapi.ControlNetUnit(image=photo))
        assert raised.value.args[0] == 422 and "has no ControlNet" in raised.value.args[1]


def b64(image) -> str:
    data = io.BytesIO()
    image.save(data, format="PNG")
    return base64.b64encode(data.getvalue()).decode("ascii")


def raw(client, photo, *units):
    """A raw A1111 JSON request with `units` as alwayson_scripts.controlnet.args."""
    payload = {**A1111, "init_images": [b64(photo)],
               "alwayson_scripts": {"ControlNet": {"args": list(units)}}}  # fmt: skip
    return client.post("/sdapi/v1/img2img", json=payload, timeout=120)


def image_of(response):
    from PIL import Image

    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["images"][0])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def multi(tiny_multi_controlnet):
    """(pipeline, client, webuiapi) of a live server on the tiny model with two ControlNets."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(tiny_multi_controlnet[1], backend="onnxruntime",
                                        precision="fp32")  # fmt: skip
    with live(ServeOptions(), lambda: pipe) as (client, _):
        ready(client)
        yield pipe, client, webuiapi.WebUIApi(host=client.base_url.host, port=client.base_url.port)


@pytest.fixture(scope="module")
def with_depth(tiny_controlnet_depth):
    """(pipeline, client, webuiapi) of a live server on tiny-controlnet with a depth model."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(tiny_controlnet_depth[1], backend="onnxruntime",
                                        precision="fp32")  # fmt: skip
    with live(ServeOptions(), lambda: pipe) as (client, _):
        ready(client)
        yield pipe, client, webuiapi.WebUIApi(host=client.base_url.host, port=client.base_url.port)


def test_enabled_units_steer_the_controlnets_in_order(multi, photo):
    """Two enabled units (a disabled one between them skipped) run as the pipeline's lists:
    the first unit's image, the init image for the second."""
    pipe, _, api = multi
    sketch = photo.transpose(0)
    units = [webuiapi.ControlNetUnit(image=sketch, weight=0.5, guidance_end=0.9),
             webuiapi.ControlNetUnit(image=photo.transpose(1), enabled=False),
             webuiapi.ControlNetUnit(weight=0.7, guidance_start=0.2)]  # fmt: skip
    result = run(api, photo, *units)
    expected = pipe("a cat", photo, control_image=[sketch, photo],
                    controlnet_conditioning_scale=[0.5, 0.7], control_guidance_start=[0.0, 0.2],
                    control_guidance_end=[0.9, 1.0], **PIPE_CALL)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")), np.asarray(expected[0]))
    infotext = result.info["infotexts"][0]
    assert "ControlNet 0: " in infotext and "ControlNet 1: " in infotext


def test_raw_units_with_modules_run_as_the_pipelines_preprocessors(multi, photo):
    """Raw JSON: a scribble unit (pixel_perfect) and a plain one, as control_preprocess
    ['scribble', 'none']."""
    pipe, client, _ = multi
    sketch = photo.transpose(0)
    units = [{"module": "scribble", "pixel_perfect": True, "weight": 0.6},
             {"image": b64(sketch), "module": "none", "guidance_end": 0.8}]  # fmt: skip
    expected = pipe("a cat", photo, control_image=[photo, sketch],
                    control_preprocess=["scribble", "none"],
                    controlnet_conditioning_scale=[0.6, 1.0], control_guidance_end=[1.0, 0.8],
                    **PIPE_CALL)  # fmt: skip
    np.testing.assert_array_equal(image_of(raw(client, photo, *units)), np.asarray(expected[0]))


@pytest.mark.parametrize(
    "units,message",
    [
        ([{}, {}, {}], "3 ControlNet units are enabled, but the engine folder holds 2 ControlNets"),
        ([{}, {"model": "control_v11f1p_sd15_depth"}], "unit 1's model"),
        ([{}, {"control_mode": "ControlNet is more important"}], "unit 1's 'control_mode'"),
        ([{"module": "depth_zoe"}], "depth-model"),
    ],
)
def test_what_the_controlnets_cannot_do_is_refused_by_name(multi, photo, units, message):
    response = raw(multi[1], photo, *units)
    assert response.status_code == 422 and message in response.json()["detail"]


def test_a_depth_unit_runs_the_folders_depth_model(with_depth, photo):
    """A depth_midas unit without an image: control_preprocess depth of the init image."""
    pipe, client, _ = with_depth
    unit = {"module": "depth_midas", "weight": 0.8, "processor_res": 512}
    expected = pipe("a cat", photo, control_image=photo, control_preprocess="depth",
                    controlnet_conditioning_scale=0.8, **PIPE_CALL)  # fmt: skip
    np.testing.assert_array_equal(image_of(raw(client, photo, unit)), np.asarray(expected[0]))


def test_a_webuiapi_depth_unit_makes_its_images_depth_map(with_depth, photo):
    """webuiapi's ControlNetUnit with module 'depth' and an image: its depth map steers."""
    pipe, _, api = with_depth
    flipped = photo.transpose(0)
    result = run(api, photo, webuiapi.ControlNetUnit(image=flipped, module="depth", weight=0.6))
    expected = pipe("a cat", photo, control_image=flipped, control_preprocess="depth",
                    controlnet_conditioning_scale=0.6, **PIPE_CALL)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")), np.asarray(expected[0]))
    assert "preprocessor: depth" in result.info["infotexts"][0]


def test_the_info_routes_list_what_the_folder_runs(api, with_depth, multi):
    _, _, depth_api = with_depth
    assert api.controlnet_version() == 2
    assert "canny" in api.controlnet_module_list()
    assert "depth_midas" not in api.controlnet_module_list()
    assert "depth_midas" in depth_api.controlnet_module_list()
    assert api.controlnet_model_list() == ["model"]
    from fastimg.serve.compat_a1111_control import controlnet_names

    names = multi[2].controlnet_model_list()
    assert len(names) == 2 and names == controlnet_names(multi[0].manifest)
    elsewhere = multi[1].post("/controlnet/detect", json={})
    assert elsewhere.status_code == 404 and "/controlnet/module_list" in elsewhere.json()["detail"]
