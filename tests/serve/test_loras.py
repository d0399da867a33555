"""Run-time LoRAs behind the HTTP API: serve --lora preloads them, /v1/info lists them, and a
request picks its LoRAs and scales by name (never by path) with its lora_scales field."""

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("onnx")
pytest.importorskip("torch")

from fastimg.serve import ServeOptions  # noqa: E402
from tests.serve.harness import CALL, decoded, live, multipart, ready  # noqa: E402


@pytest.fixture(scope="module")
def styles(tmp_path_factory):
    from fastimg_export.random_models import write_random_model

    root = tmp_path_factory.mktemp("styles")
    return [write_random_model("tiny-lora", root / f"{n}.safetensors", seed=k)
            for k, n in enumerate(("ink", "oil"))]  # fmt: skip


@pytest.fixture(scope="module")
def served(tiny, styles, tmp_path_factory):
    engines = shutil.copytree(tiny[1], tmp_path_factory.mktemp("lora-serve") / "engines")
    options = ServeOptions(engines=engines, backend="onnxruntime", precision="fp32",
                           loras=(f"{styles[0]}:0.8", f"{styles[1]}:0"))  # fmt: skip
    with live(options) as (client, service):
        ready(client)
        yield client, service


def test_info_lists_the_preloaded_loras_with_their_scales(served):
    client, _ = served
    assert client.get("/v1/info").json()["loras"] == {"ink": 0.8, "oil": 0.0}


def test_a_request_picks_its_loras_by_name(served, picture):
    client, service = served
    ink = client.post("/v1/img2img", **multipart(picture))
    oil = client.post("/v1/img2img", **multipart(picture, lora_scales="oil:0.5"))
    none = client.post("/v1/img2img", **multipart(picture, lora_scales="ink:0"))
    assert ink.status_code == oil.status_code == none.status_code == 200, oil.text
    source = Image.open(picture).convert("RGB")
    pipe = service.pipe
    expected = pipe(prompt="a cat", image=source, lora_scales={"oil": 0.5}, **CALL)[0]
    assert np.array_equal(decoded(oil.content), np.asarray(expected))
    plain = pipe(prompt="a cat", image=source, lora_scales={}, **CALL)[0]
    assert np.array_equal(decoded(none.content), np.asarray(plain))
    assert not np.array_equal(decoded(ink.content), np.asarray(plain))
    with Image.open(io.BytesIO(oil.content)) as image:
        assert image.text["fastimg:loras"] == "oil:0.5"


@pytest.mark.parametrize("given", ["watercolor:1", "/etc/passwd:1", "ink:loud"])
def test_a_lora_the_server_has_not_loaded_is_a_422_naming_them(served, picture, given):
    client, _ = served
    response = client.post("/v1/img2img", **multipart(picture, lora_scales=given))
    assert response.status_code == 422
    detail = response.json()["detail"]
    wanted = "is not a number" if given.endswith("loud") else "is loaded (loaded: ink, oil)"
    assert wanted in detail, detail


def test_a1111_prompts_name_their_loras_as_a1111_does(served, photo):
    webuiapi = pytest.importorskip("webuiapi")
    from tests.serve.test_a1111 import A1111, ours

    client, _ = served
    api = webuiapi.WebUIApi(host=client.base_url.host, port=client.base_url.port)
    listed = client.get("/sdapi/v1/loras").json()
    assert [entry["name"] for entry in listed] == ["ink", "oil"]
    settings = {**A1111, "width": 90, "height": 68, "seed": 11}
    settings["prompt"] = "a cat <lora:oil:0.5>"
    tagged = api.img2img(images=[photo], **settings)
    expected = ours(client, photo, seed="11", lora_scales="oil:0.5")
    np.testing.assert_array_equal(np.asarray(tagged.image.convert("RGB")), expected)
    assert tagged.info["infotexts"][0].startswith("a cat <lora:oil:0.5>\nSteps: 3")
    settings["prompt"] = "a cat"  # no tag: no LoRA, as in A1111 (not the preloaded ink at 0.8)
    untagged = api.img2img(images=[photo], **settings)
    plain = ours(client, photo, seed="11", lora_scales="none")
    np.testing.assert_array_equal(np.asarray(untagged.image.convert("RGB")), plain)
    settings["prompt"] = "a cat <lora:cubism:1>"
    refused = client.post("/sdapi/v1/img2img", json={**settings, "init_images": [
        base64.b64encode(photo_png(photo)).decode()]})  # fmt: skip
    assert refused.status_code == 422 and "no LoRA named 'cubism'" in refused.text


def photo_png(photo) -> bytes:
    data = io.BytesIO()
    photo.save(data, format="PNG")
    return data.getvalue()


def test_a_stream_runs_each_frame_with_its_loras(served, picture):
    pytest.importorskip("websockets")
    from tests.serve.test_stream import result, started

    client, _ = served
    settings = {"prompt": "a cat", "strength": 0.6, "steps": 3, "guidance": 5, "seed": 11}
    with started({**settings, "lora_scales": "oil:0.5"}, client=client) as ws:
        ws.send(picture.read_bytes())
        _, jpeg = result(ws)
    fields = {key: str(value) for key, value in settings.items()}
    files = {"image": ("f.png", picture.read_bytes(), "image/png")}
    same = client.post("/v1/img2img", files=files,
                       data={**fields, "format": "jpeg", "lora_scales": "oil:0.5"})  # fmt: skip
    other = client.post("/v1/img2img", files=files,
                        data={**fields, "format": "jpeg", "lora_scales": "none"})  # fmt: skip
    np.testing.assert_array_equal(decoded(jpeg), decoded(same.content))
    assert not np.array_equal(decoded(jpeg), decoded(other.content))
