"""ControlNet units (alwayson_scripts.controlnet, as webuiapi's ControlNetUnit sends them) on
/sdapi/v1/img2img, against a live server on the tiny ControlNet model: equal to the pipeline's
control_image call, and what the folder's one ControlNet cannot do refused by name."""

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
    with mask_image and control_image, the control the init image as sent, not the filled one."""
    import io

    from PIL import Image

    from fastimg.serve.compat_a1111_mask import filled

    mask = Image.new("L", photo.size, 0)
    mask.paste(255, (30, 20, 60, 50))
    unit = webuiapi.ControlNetUnit(weight=0.7)
    result = api.img2img(images=[photo], mask_image=mask, alwayson_scripts={},
                         controlnet_units=[unit], **A1111)  # fmt: skip
    data = io.BytesIO()
    photo.save(data, format="PNG")
    image = Image.open(io.BytesIO(filled(data.getvalue(), mask, 4, False)))
    expected = control_pipe("a cat", image, control_image=photo, controlnet_conditioning_scale=0.7,
                            mask_image=mask, mask_blur=4, padding_mask_crop=0, keep_unmasked=True,
                            **PIPE_CALL)  # fmt: skip
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
        ([{}, {}], "2 ControlNet units are enabled"),
        ([{"module": "depth_midas"}], "module 'depth_midas' is not one fastimg runs"),
        ([{"model": "control_v11f1p_sd15_depth [cfd03158]"}], "is not the one these engines hold"),
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
