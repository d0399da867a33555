"""Inpainting over HTTP and the stream on the tiny model: the mask as a second file or base64
JSON, mask_invert / keep_unmasked / mask_blur / mask_padding, and the refusals."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from fastimg.media.images import load_image  # noqa: E402
from fastimg.serve import ServeOptions  # noqa: E402
from tests.serve.harness import CALL, SETTINGS, decoded, live, multipart, ready  # noqa: E402

MAX_PIXELS = 100 * 100


@pytest.fixture(scope="module")
def server(pipe):
    with live(ServeOptions(max_pixels=MAX_PIXELS), lambda: pipe) as (client, service):
        ready(client)
        yield client, service


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _mask() -> Image.Image:
    values = np.zeros((68, 90), np.uint8)
    values[20:50, 30:70] = 255
    return Image.fromarray(values)


def test_a_mask_file_inpaints_as_the_python_call(server, pipe, picture):
    client, _ = server
    fields = {"mask_invert": "true", "keep_unmasked": "yes", "mask_blur": "2",
              "mask_padding": "8", "masked_content": "latent_noise"}  # fmt: skip
    form = multipart(picture, **fields)
    form["files"]["mask"] = ("mask.png", _png(_mask()), "image/png")
    response = client.post("/v1/img2img", **form)
    assert response.status_code == 200, response.text
    call = dict(mask_image=_mask(), mask_invert=True, keep_unmasked=True, mask_blur=2,
                padding_mask_crop=8, masked_content="latent_noise")  # fmt: skip
    expected = pipe("a cat", load_image(picture), **CALL, **call)
    np.testing.assert_array_equal(decoded(response.content), np.asarray(expected[0]))
    settings = json.loads(response.headers["x-fastimg-settings"])
    assert settings["fastimg:mask"] == "inverted" and settings["fastimg:mask_padding"] == 8
    assert settings["fastimg:masked_content"] == "latent_noise"

    as_url = "data:image/png;base64," + base64.b64encode(_png(_mask())).decode()
    image = base64.b64encode(picture.read_bytes()).decode()
    flags = {**fields, "mask_invert": True, "keep_unmasked": True, "mask_blur": 2}
    as_json = client.post("/v1/img2img", json={**SETTINGS, **flags, "image": image,
                                               "mask": as_url})  # fmt: skip
    assert as_json.status_code == 200, as_json.text
    np.testing.assert_array_equal(decoded(as_json.content), decoded(response.content))


def test_bad_masks_are_refused_as_bad_images_are(server, picture):
    client, _ = server

    def send(data, **fields):
        form = multipart(picture, **fields)
        form["files"]["mask"] = ("m.png", data, "image/png")
        return client.post("/v1/img2img", **form)

    big = send(_png(Image.new("L", (120, 100), 255)))
    assert big.status_code == 413 and "mask of in.png is 120x100, over" in big.json()["detail"]
    junk = send(b"not a picture at all")
    assert junk.status_code == 422 and "mask of in.png" in junk.json()["detail"]
    empty = send(_png(Image.new("L", (90, 68))))
    assert empty.status_code == 422 and "the mask is empty" in empty.json()["detail"]
    flag = send(_png(_mask()), keep_unmasked="perhaps")
    assert flag.status_code == 422
    assert "keep_unmasked must be true or false, got 'perhaps'" in flag.json()["detail"]
    blur = send(_png(_mask()), mask_blur="-2")
    assert (
        blur.status_code == 422
        and "mask_blur (--mask-blur) is a number of pixels" in (blur.json()["detail"])
    )
    alone = client.post("/v1/img2img", **multipart(picture, mask_invert="true"))
    assert alone.status_code == 422 and "no mask was given" in alone.json()["detail"]
    as_text = client.post("/v1/img2img", **multipart(picture, mask="m.png"))
    assert as_text.status_code == 422
    assert "the field 'mask' must be a file" in as_text.json()["detail"]
    body = {**SETTINGS, "image": base64.b64encode(picture.read_bytes()).decode()}
    for value, message in ((12, "as base64 text"), ("#$%", "'mask' is not valid base64")):
        refused = client.post("/v1/img2img", json={**body, "mask": value})
        assert refused.status_code == 422 and message in refused.json()["detail"]


def test_a_stream_inpaints_each_frame_with_its_one_mask(server, picture):
    pytest.importorskip("websockets")
    from tests.serve.test_stream import result, started

    client, _ = server
    mask = base64.b64encode(_png(_mask())).decode()
    settings = {"prompt": "a cat", "strength": 0.6, "steps": 3, "guidance": 5, "seed": 11,
                "keep_unmasked": True}  # fmt: skip
    with started({**settings, "mask": mask}, client=client) as ws:
        ws.send(picture.read_bytes())
        _, jpeg = result(ws)
    fields = {key: str(value) for key, value in settings.items()}
    files = {"image": ("f.png", picture.read_bytes(), "image/png"),
             "mask": ("m.png", _png(_mask()), "image/png")}  # fmt: skip
    http = client.post("/v1/img2img", files=files, data={**fields, "format": "jpeg"})
    assert http.status_code == 200, http.text
    np.testing.assert_array_equal(decoded(jpeg), decoded(http.content))
    del files["mask"], fields["keep_unmasked"]
    plain = client.post("/v1/img2img", files=files, data={**fields, "format": "jpeg"})
    assert not np.array_equal(decoded(plain.content), decoded(jpeg))  # the mask was used
