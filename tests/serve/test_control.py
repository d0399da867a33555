"""ControlNet over HTTP on the tiny ControlNet model: the control image as a second file or
base64 JSON, control_preprocess, and the refusals (checked as the image is)."""

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

CONTROL = {"control_scale": "0.5", "control_preprocess": "scribble"}
MAX_PIXELS = 100 * 100  # the picture (90x68) fits, a 120x100 control image does not


@pytest.fixture(scope="module")
def control_pipe(tiny_controlnet):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    return Img2ImgPipeline.from_engines(tiny_controlnet[1], backend="onnxruntime", precision="fp32")


@pytest.fixture(scope="module")
def server(control_pipe):
    with live(ServeOptions(max_pixels=MAX_PIXELS), lambda: control_pipe) as (client, service):
        ready(client)
        yield client, service


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_a_control_image_file_steers_as_the_python_call(server, control_pipe, picture, photo):
    client, _ = server
    sketch = _png(photo.transpose(0))
    form = multipart(picture, **CONTROL)
    form["files"]["control_image"] = ("sketch.png", sketch, "image/png")
    response = client.post("/v1/img2img", **form)
    assert response.status_code == 200, response.text
    control = {"control_image": photo.transpose(0), "controlnet_conditioning_scale": 0.5,
               "control_preprocess": "scribble"}  # fmt: skip
    expected = control_pipe("a cat", load_image(picture), **CALL, **control)
    np.testing.assert_array_equal(decoded(response.content), np.asarray(expected[0]))
    settings = json.loads(response.headers["x-fastimg-settings"])
    assert settings["fastimg:control_preprocess"] == "scribble"
    assert settings["fastimg:control_scale"] == 0.5

    as_url = "data:image/png;base64," + base64.b64encode(sketch).decode()
    image = base64.b64encode(picture.read_bytes()).decode()
    body = {**SETTINGS, **CONTROL, "image": image, "control_image": as_url}
    as_json = client.post("/v1/img2img", json=body)
    assert as_json.status_code == 200, as_json.text
    np.testing.assert_array_equal(decoded(as_json.content), decoded(response.content))


def test_control_preprocess_alone_steers_from_the_image(server, control_pipe, picture):
    client, _ = server
    response = client.post("/v1/img2img", **multipart(picture, control_preprocess="scribble"))
    assert response.status_code == 200, response.text
    expected = control_pipe("a cat", load_image(picture), **CALL, control_preprocess="scribble")
    np.testing.assert_array_equal(decoded(response.content), np.asarray(expected[0]))


def test_bad_control_images_are_refused_as_bad_images_are(server, picture, photo):
    client, _ = server

    def send(name, data, **fields):
        form = multipart(picture, **fields)
        form["files"]["control_image"] = (name, data, "image/png")
        return client.post("/v1/img2img", **form)

    big = send("big.png", _png(Image.new("RGB", (120, 100))))
    assert big.status_code == 413
    assert "control_image of in.png is 120x100, over the limit" in big.json()["detail"]
    junk = send("junk.png", b"not a picture at all")
    assert junk.status_code == 422 and "control_image of in.png" in junk.json()["detail"]
    as_text = client.post("/v1/img2img", **multipart(picture, control_image="x.png"))
    assert as_text.status_code == 422
    assert "the field 'control_image' must be a file" in as_text.json()["detail"]
    body = {**SETTINGS, "image": base64.b64encode(picture.read_bytes()).decode()}
    for value, message in ((12, "as base64 text"), ("#$%", "'control_image' is not valid base64")):
        refused = client.post("/v1/img2img", json={**body, "control_image": value})
        assert refused.status_code == 422 and message in refused.json()["detail"]
    window = send("ok.png", _png(photo), control_start="0.6", control_end="0.4")
    assert window.status_code == 422 and "must be below" in window.json()["detail"]
    preprocess = client.post("/v1/img2img", **multipart(picture, control_preprocess="blur"))
    assert preprocess.status_code == 422 and "'blur' is not one of" in preprocess.json()["detail"]
    depth = client.post("/v1/img2img", **multipart(picture, control_preprocess="depth"))
    assert depth.status_code == 422  # (this folder has no depth model)
    assert "control_preprocess depth needs a depth model" in depth.json()["detail"]


def test_a_control_image_for_engines_without_controlnet_is_refused(pipe, picture, photo):
    with live(ServeOptions(), lambda: pipe) as (client, _):
        ready(client)
        form = multipart(picture)
        form["files"]["control_image"] = ("c.png", _png(photo), "image/png")
        refused = client.post("/v1/img2img", **form)
        assert refused.status_code == 422
        assert "a control image was given, but the engine folder" in refused.json()["detail"]
        assert "has no ControlNet" in refused.json()["detail"]
        alone = client.post("/v1/img2img", **multipart(picture, control_preprocess="canny"))
        assert alone.status_code == 422
        assert "control_preprocess was given" in alone.json()["detail"]


def test_a_stream_makes_each_frames_control_with_control_preprocess(server, picture):
    pytest.importorskip("websockets")
    from tests.serve.test_stream import result, started

    client, _ = server
    settings = {"prompt": "a cat", "strength": 0.6, "steps": 3, "guidance": 5, "seed": 11,
                "control_preprocess": "scribble"}  # fmt: skip
    with started(settings, client=client) as ws:
        ws.send(picture.read_bytes())
        _, jpeg = result(ws)
    fields = {key: str(value) for key, value in settings.items()}
    files = {"image": ("f.png", picture.read_bytes(), "image/png")}
    http = client.post("/v1/img2img", files=files, data={**fields, "format": "jpeg"})
    assert http.status_code == 200, http.text
    np.testing.assert_array_equal(decoded(jpeg), decoded(http.content))
    del fields["control_preprocess"]
    plain = client.post("/v1/img2img", files=files, data={**fields, "format": "jpeg"})
    assert not np.array_equal(decoded(plain.content), decoded(jpeg))  # the control steered it


def test_info_names_the_controlnets_and_the_preprocessors(server, pipe):
    client, _ = server
    info = client.get("/v1/info").json()
    assert info["controlnets"] == ["controlnet"]
    assert info["control_preprocessors"] == ["canny", "scribble"]
    with live(ServeOptions(), lambda: pipe) as (plain, _):
        ready(plain)
        info = plain.get("/v1/info").json()
        assert info["controlnets"] == [] and info["control_preprocessors"] == []


@pytest.fixture(scope="module")
def multi_pipe(tiny_multi_controlnet):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    return Img2ImgPipeline.from_engines(tiny_multi_controlnet[1], backend="onnxruntime",
                                        precision="fp32")  # fmt: skip


def test_a_control_image_per_controlnet(multi_pipe, picture, photo):
    """Repeated control_image parts (or a JSON list), in ControlNet order, with the control
    settings one each: the Python call's image; too many are refused by name."""
    sketches = [photo.transpose(0), photo.transpose(1)]
    pngs = [_png(sketch) for sketch in sketches]
    lists = {"control_scale": "0.5;1.5", "control_preprocess": "none;scribble"}
    with live(ServeOptions(max_pixels=MAX_PIXELS), lambda: multi_pipe) as (client, _):
        ready(client)
        form = multipart(picture, **lists)
        controls = [("control_image", (f"c{k}.png", p, "image/png")) for k, p in enumerate(pngs)]
        files = [("image", form["files"]["image"]), *controls]
        response = client.post("/v1/img2img", files=files, data=form["data"])
        assert response.status_code == 200, response.text
        expected = multi_pipe("a cat", load_image(picture), **CALL, control_image=sketches,
                              controlnet_conditioning_scale=[0.5, 1.5],
                              control_preprocess=[None, "scribble"])  # fmt: skip
        np.testing.assert_array_equal(decoded(response.content), np.asarray(expected[0]))
        settings = json.loads(response.headers["x-fastimg-settings"])
        assert settings["fastimg:control_scale"] == [0.5, 1.5]
        assert settings["fastimg:control_preprocess"] == ["none", "scribble"]

        image = base64.b64encode(picture.read_bytes()).decode()
        as_text = [base64.b64encode(png).decode() for png in pngs]
        body = {**SETTINGS, "image": image, "control_image": as_text, "control_scale": [0.5, 1.5],
                "control_preprocess": ["none", "scribble"]}  # fmt: skip
        as_json = client.post("/v1/img2img", json=body)
        assert as_json.status_code == 200, as_json.text
        np.testing.assert_array_equal(decoded(as_json.content), decoded(response.content))

        for changed, message in (
            ({"control_image": as_text * 2}, "4 control images were given, but the engine folder"),
            ({"control_image": []}, "the field 'control_image' is an empty list"),
            ({"control_image": [as_text[0], 3]}, "'control_image' must be the ControlNet's"),
            ({"control_scale": [0.5, 1, 2]}, "control_scale has 3 values for 2 control images"),
            ({"control_end": "1;x"}, "Invalid value for 'control_end': 'x' is not a valid"),
        ):
            refused = client.post("/v1/img2img", json={**body, **changed})
            assert refused.status_code == 422, refused.text
            assert message in refused.json()["detail"]


def test_info_lists_depth_only_where_the_folder_has_a_depth_model(
    tiny_controlnet, tiny_controlnet_depth
):
    from fastimg.engine_folder.manifest import load_manifest
    from fastimg.serve.service import control_preprocessors

    assert control_preprocessors(load_manifest(tiny_controlnet[1])) == ["canny", "scribble"]
    with_depth = load_manifest(tiny_controlnet_depth[1])
    assert control_preprocessors(with_depth) == ["canny", "scribble", "depth"]


def test_control_preprocess_depth_over_http(tiny_controlnet_depth, picture):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(tiny_controlnet_depth[1], backend="onnxruntime",
                                        precision="fp32")  # fmt: skip
    with live(ServeOptions(max_pixels=MAX_PIXELS), lambda: pipe) as (client, _):
        ready(client)
        assert client.get("/v1/info").json()["control_preprocessors"][-1] == "depth"
        response = client.post("/v1/img2img", **multipart(picture, control_preprocess="depth"))
        assert response.status_code == 200, response.text
    expected = pipe("a cat", load_image(picture), **CALL, control_preprocess="depth")
    np.testing.assert_array_equal(decoded(response.content), np.asarray(expected[0]))


def test_a_mask_part_with_a_control_image_inpaints_as_the_python_call(server, control_pipe,
                                                                      picture, photo):  # fmt: skip
    client, _ = server
    values = np.zeros((68, 90), np.uint8)
    values[20:50, 30:70] = 255
    form = multipart(picture, control_scale="0.5", mask_blur="2")
    form["files"]["control_image"] = ("sketch.png", _png(photo.transpose(0)), "image/png")
    form["files"]["mask"] = ("mask.png", _png(Image.fromarray(values)), "image/png")
    response = client.post("/v1/img2img", **form)
    assert response.status_code == 200, response.text
    call = {"control_image": photo.transpose(0), "controlnet_conditioning_scale": 0.5,
            "mask_image": Image.fromarray(values), "mask_blur": 2}  # fmt: skip
    expected = control_pipe("a cat", load_image(picture), **CALL, **call)
    np.testing.assert_array_equal(decoded(response.content), np.asarray(expected[0]))
    settings = json.loads(response.headers["x-fastimg-settings"])
    assert settings["fastimg:mask"] == "given" and settings["fastimg:control_scale"] == 0.5
