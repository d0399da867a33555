"""OpenAI's /v1/images/edits through the real `openai` client against a live server on the tiny
model: its images equal /v1/img2img's with the same settings, masks, sizes, and its errors."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from fastimg.media.images import load_image  # noqa: E402
from fastimg.media.label_reader import read_labels  # noqa: E402
from fastimg.media.vocabulary import TRAINED_ALGORITHMIC_MEDIA  # noqa: E402
from fastimg.serve import ServeOptions  # noqa: E402
from tests.serve.harness import CALL, count, decoded, live, ready  # noqa: E402

EXTRA = {"strength": 0.6, "steps": 3, "guidance": 5, "seed": 11}  # fastimg's, as extra fields
OURS = {"prompt": "a cat", "strength": "0.6", "steps": "3", "guidance": "5", "seed": "11"}


def client_of(http, api_key="unused"):
    """The openai client on the live server (no retries: each answer is the server's first)."""
    base_url = f"http://{http.base_url.host}:{http.base_url.port}/v1"
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)


@pytest.fixture(scope="module")
def server(tiny):
    """A live server on the tiny model (the engines loaded by the app) and an openai client."""
    options = ServeOptions(engines=tiny[1], backend="onnxruntime", precision="fp32")
    with live(options) as (http, service):
        ready(http)
        yield http, service, client_of(http)


def png(image: Image.Image) -> bytes:
    data = io.BytesIO()
    image.save(data, format="PNG")
    return data.getvalue()


def images_of(answer) -> list[np.ndarray]:
    return [decoded(base64.b64decode(item.b64_json)) for item in answer.data]


def test_images_edit_equals_v1_img2img(server, picture, pipe, tmp_path):
    http, service, client = server
    answer = client.images.edit(
        image=("in.png", picture.read_bytes(), "image/png"),
        prompt="a cat",
        n=2,
        response_format="b64_json",
        extra_body=EXTRA,
    )
    files = {"image": ("in.png", picture.read_bytes(), "image/png")}
    ours = http.post("/v1/img2img", files=files, data={**OURS, "num_images": "2"}).json()
    expected = [decoded(base64.b64decode(item["data"])) for item in ours["images"]]
    for got, want in zip(images_of(answer), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert answer.model_extra["model"] == pipe.model_info["fastimg:model"]
    assert answer.size == "88x64" and answer.output_format == "png"

    saved = tmp_path / "edit.png"
    saved.write_bytes(base64.b64decode(answer.data[0].b64_json))
    labels = read_labels(saved)
    assert labels["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert labels["fastimg"]["fastimg:seed"] == "11"
    assert labels["fastimg"]["fastimg:source"] == "in.png"


def test_size_resizes_the_image_first(server, photo):
    http, _, client = server
    answer = client.images.edit(image=("in.png", png(photo), "image/png"), prompt="a cat",
                                size="48x64", extra_body=EXTRA)  # fmt: skip
    files = {"image": ("in.png", png(photo.resize((48, 64), Image.LANCZOS)), "image/png")}
    ours = http.post("/v1/img2img", files=files, data=OURS)
    (got,) = images_of(answer)
    assert got.shape == (64, 48, 3)
    np.testing.assert_array_equal(got, decoded(ours.content))


def test_a_mask_repaints_where_it_is_transparent(server, picture, pipe):
    _, _, client = server
    image = load_image(picture)
    mask = Image.new("RGBA", image.size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, image.width // 2, image.height))  # the left half: edited
    answer = client.images.edit(image=("in.png", picture.read_bytes(), "image/png"),
                                mask=("mask.png", png(mask), "image/png"), prompt="a cat",
                                extra_body=EXTRA)  # fmt: skip
    ours = Image.new("L", image.size, 0)
    ours.paste(255, (0, 0, image.width // 2, image.height))  # white: repainted
    expected = pipe("a cat", image, mask_image=ours, **CALL)[0]
    (got,) = images_of(answer)
    np.testing.assert_array_equal(got, np.asarray(expected))
    unmasked = pipe("a cat", image, **CALL)[0]
    assert not np.array_equal(got, np.asarray(unmasked))


def test_a_masks_own_settings_come_as_extra_fields(server, picture, pipe):
    _, _, client = server
    image = load_image(picture)
    mask = Image.new("RGBA", image.size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, image.width // 2, image.height))
    extra = {**EXTRA, "mask_blur": 4, "masked_content": "latent_noise"}
    answer = client.images.edit(image=("in.png", picture.read_bytes(), "image/png"),
                                mask=("mask.png", png(mask), "image/png"), prompt="a cat",
                                extra_body=extra)  # fmt: skip
    ours = Image.new("L", image.size, 0)
    ours.paste(255, (0, 0, image.width // 2, image.height))
    expected = pipe("a cat", image, mask_image=ours, mask_blur=4, masked_content="latent_noise",
                    **CALL)[0]  # fmt: skip
    (got,) = images_of(answer)
    np.testing.assert_array_equal(got, np.asarray(expected))
    plain = pipe("a cat", image, mask_image=ours, **CALL)[0]
    assert not np.array_equal(got, np.asarray(plain))  # the settings were used, not dropped


def test_models_lists_what_the_server_runs(server, pipe):
    _, _, client = server
    assert [model.id for model in client.models.list()] == [pipe.model_info["fastimg:model"]]


@pytest.mark.parametrize(
    "fields,param,message",
    [
        ({"extra_body": {"strength": 1.5}}, "strength", "Invalid value for 'strength'"),
        ({"n": 0}, "n", "Invalid value for 'n'"),
        ({"response_format": "url"}, "response_format", "send b64_json"),
        ({"size": "big"}, "size", "size='big' is not a size"),
        ({"background": "transparent"}, "background", "background='transparent'"),
        ({"extra_body": {"colour": "red"}}, "colour", "unknown field 'colour'"),
    ],
)
def test_refusals_are_raised_as_the_clients_own_error(server, picture, fields, param, message):
    _, service, client = server
    refused = count(service, "422") or 0
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.images.edit(image=("in.png", picture.read_bytes(), "image/png"), prompt="a cat",
                           **fields)  # fmt: skip
    error = raised.value.body
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert message in error["message"] and error["code"] is None
    assert count(service, "422") == refused + 1


def test_a_mask_without_transparency_is_refused(server, picture):
    _, _, client = server
    opaque = png(Image.new("RGB", load_image(picture).size))
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.images.edit(image=("in.png", picture.read_bytes(), "image/png"), prompt="a cat",
                           mask=("mask.png", opaque, "image/png"))  # fmt: skip
    assert raised.value.body["param"] == "mask" and "no transparency" in raised.value.message


def test_a_mask_that_cannot_be_read_is_refused(server, picture):
    _, _, client = server
    truncated = png(Image.new("RGBA", load_image(picture).size))[:80]
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.images.edit(image=("in.png", picture.read_bytes(), "image/png"), prompt="a cat",
                           mask=("mask.png", truncated, "image/png"))  # fmt: skip
    assert raised.value.body["param"] == "mask" and "cannot be read" in raised.value.message


def test_another_model_is_not_found(server, picture, pipe):
    _, _, client = server
    with pytest.raises(openai.NotFoundError) as raised:
        client.images.edit(image=("in.png", picture.read_bytes(), "image/png"), prompt="a cat",
                           model="gpt-image-1")  # fmt: skip
    assert raised.value.body["code"] == "model_not_found"
    assert repr(pipe.model_info["fastimg:model"]) in raised.value.body["message"]


def test_the_bearer_key(pipe, picture):
    with live(ServeOptions(api_key="s3cret"), lambda: pipe) as (http, service):
        ready(http)
        image = ("in.png", picture.read_bytes(), "image/png")
        with pytest.raises(openai.AuthenticationError) as raised:
            client_of(http, "wrong").images.edit(image=image, prompt="a cat", extra_body=EXTRA)
        assert raised.value.body["code"] == "invalid_api_key" and count(service, "401") == 1
        with pytest.raises(openai.AuthenticationError):
            client_of(http, "wrong").models.list()
        answer = client_of(http, "s3cret").images.edit(image=image, prompt="a cat",
                                                       extra_body=EXTRA)  # fmt: skip
        assert len(answer.data) == 1


def test_while_the_engines_load_both_apis_answer_503(pipe, picture):
    import threading

    loaded = threading.Event()

    def load():
        assert loaded.wait(60)
        return pipe

    with live(ServeOptions(), load) as (http, service):
        try:
            with pytest.raises(openai.InternalServerError) as raised:
                client_of(http).images.edit(image=("in.png", picture.read_bytes(), "image/png"),
                                            prompt="a cat")  # fmt: skip
            assert raised.value.status_code == 503
            assert raised.value.body["type"] == "server_error"
            assert "loading" in raised.value.body["message"]
            a1111 = http.post("/sdapi/v1/img2img", json={"init_images": ["x"]})
            assert a1111.status_code == 503 and "loading" in a1111.json()["detail"]
            assert http.get("/sdapi/v1/sd-models").status_code == 503
            assert count(service, "503") == 2
        finally:
            loaded.set()
