"""Request fields: derived from fastimg.settings, parsed from text or JSON with the CLI's
wording, and turned into a checked ImageRequest (against the tiny model's engines)."""

import json

import pytest

pytest.importorskip("fastapi")

from fastimg.errors import InputError  # noqa: E402
from fastimg.serve.requests import (  # noqa: E402
    FIELDS,
    SDXL_FIELDS,
    STREAM_FIELDS,
    Body,
    check_body,
    check_stream_settings,
)
from fastimg.settings import BY_KEY, SEED_LIMIT, SETTINGS  # noqa: E402


@pytest.fixture(scope="module")
def manifest(pipe):
    return pipe.manifest


def checked(manifest, filename=None, **fields):
    return check_body(Body({"prompt": "a cat", **fields}, b"image", filename), manifest)


def test_the_fields_are_the_settings_plus_the_images_and_its_encoding():
    # a new setting is a field
    assert set(FIELDS) == {"image", "control_image", "mask", "mask_invert", "keep_unmasked",
                           "format", "quality", *BY_KEY}  # fmt: skip
    assert SDXL_FIELDS == tuple(setting.key for setting in SETTINGS if setting.sdxl)
    assert SDXL_FIELDS[0] == "prompt_2"
    assert set(STREAM_FIELDS) == set(FIELDS) - {"image", "format", "num_images"}


def test_text_fields_become_the_job_and_its_encoding(manifest):
    request = checked(
        manifest,
        "../my photo.png",
        negative_prompt="",
        strength="0.5",
        steps="4",
        guidance="6",
        seed="7",
        sampler="euler",
        num_images="2",
        format="WEBP",
        quality="80",
    )
    call = request.job.call
    assert (call.prompt, call.negative_prompt, call.strength, call.num_inference_steps) == (
        "a cat",
        None,
        0.5,
        4,
    )
    assert (call.guidance_scale, call.seed, call.scheduler, call.num_images_per_prompt) == (
        6.0,
        7,
        "euler",
        2,
    )
    assert request.sampler == "euler" and request.data == b"image"
    assert (request.fmt, request.quality) == ("webp", 80)  # the format in any case
    assert request.name == request.source == "my_photo.png"
    assert request.batch_key is None  # (several images; no size yet)


def test_json_values_and_defaults(manifest):
    request = checked(manifest, strength=0.75, steps=4.0, seed=None, quality=None)
    call = request.job.call
    assert call.strength == 0.75 and call.num_inference_steps == 4
    assert 0 <= call.seed < SEED_LIMIT  # drawn when not given
    assert (request.fmt, request.quality, request.source, request.name) == (
        "png",
        None,
        None,
        "upload",
    )


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"strength": "1.5"}, "Invalid value for 'strength': 1.5 is not in the range 0<x<=1."),
        ({"steps": 2.5}, "Invalid value for 'steps': 2.5 is not a valid integer."),
        ({"seed": True}, "Invalid value for 'seed': True is not a number."),
        ({"guidance": "nan"}, "Invalid value for 'guidance': 'nan' is not a finite number."),
        ({"format": "gif"}, "Invalid value for 'format': 'gif' is not one of 'png', 'jpeg'"),
        ({"quality": "0"}, "Invalid value for 'quality': 0 is not in the range 1<=x<=100."),
        ({"prompt": 5}, "Invalid value for 'prompt': 5 is not text."),
        ({"original_size": 512}, "Invalid value for 'original_size': 512 is not HEIGHTxWIDTH."),
        ({"colour": "red"}, "unknown field 'colour': the fields are image, prompt,"),
        ({"prompt": None}, "prompt is required"),
        ({"strength": "0.1", "steps": "4"}, "runs zero denoising steps"),
    ],
)
def test_fields_are_refused_as_the_cli_refuses_them(manifest, fields, message):
    with pytest.raises(InputError) as refused:
        checked(manifest, **fields)
    assert message in str(refused.value)


def test_a_streams_settings_are_a_request_without_its_image(manifest):
    message = {"type": "websocket.receive", "text": json.dumps({"prompt": "a cat", "seed": 3})}
    template = check_stream_settings(message, manifest)
    assert (template.job.call.prompt, template.job.call.seed, template.fmt) == ("a cat", 3, "jpeg")
    assert template.data == b""
    with pytest.raises(InputError, match="unknown setting 'num_images'"):
        text = json.dumps({"prompt": "a cat", "num_images": 2})
        check_stream_settings({"type": "websocket.receive", "text": text}, manifest)
    with pytest.raises(InputError, match="send the settings first"):
        check_stream_settings({"type": "websocket.receive", "bytes": b"frame"}, manifest)
