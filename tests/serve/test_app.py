"""The HTTP API's routes through httpx against a live uvicorn server (in a thread) on the tiny
model: start-up, transforms, refusals, who may ask, and metrics."""

import base64
import io
import json
import struct
import tempfile
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from fastimg.media.images import load_image  # noqa: E402
from fastimg.media.label_reader import read_labels  # noqa: E402
from fastimg.media.vocabulary import TRAINED_ALGORITHMIC_MEDIA  # noqa: E402
from fastimg.serve import ServeOptions  # noqa: E402
from fastimg.serve.app import MAX_SETTINGS_HEADER, settings_header  # noqa: E402
from tests.serve.harness import (  # noqa: E402
    CALL,
    SETTINGS,
    count,
    decoded,
    live,
    multipart,
    ready,
    wait_for,
)


@pytest.fixture(scope="module")
def server(tiny):
    """The real thing: the engines loaded by the app itself, default limits."""
    options = ServeOptions(engines=tiny[1], backend="onnxruntime", precision="fp32")
    with live(options) as (client, service):
        ready(client)
        yield client, service


# --- start-up ----------------------------------------------------------------------------------


def test_health_says_loading_until_the_engines_are_loaded(pipe, picture):
    loaded = threading.Event()

    def load():
        assert loaded.wait(60)
        return pipe

    with live(ServeOptions(), load) as (client, service):
        try:
            health = client.get("/v1/health")
            assert health.status_code == 503 and health.json() == {"status": "loading"}
            assert client.get("/v1/info").status_code == 503
            refused = client.post("/v1/img2img", **multipart(picture))
            assert refused.status_code == 503 and "loading" in refused.json()["detail"]
        finally:
            loaded.set()
        ready(client)
        assert client.get("/v1/health").json() == {"status": "ready"}


def test_engines_that_cannot_load_are_reported(tmp_path):
    def load():
        raise RuntimeError("no engines here")

    with live(ServeOptions(), load) as (client, service):
        wait_for(lambda: service.state != "loading")
        health = client.get("/v1/health")
        assert health.status_code == 503
        assert health.json() == {"status": "failed", "detail": "no engines here"}


# --- transforms --------------------------------------------------------------------------------


def test_a_multipart_request_returns_the_pipelines_image_with_its_labels(
    server, pipe, picture, tmp_path
):
    client, _ = server
    response = client.post("/v1/img2img", **multipart(picture))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    expected = pipe("a cat", load_image(picture), **CALL)[0]
    np.testing.assert_array_equal(decoded(response.content), np.asarray(expected))

    assert response.headers["x-fastimg-seed"] == "11"
    settings = json.loads(response.headers["x-fastimg-settings"])
    assert settings["fastimg:seed"] == 11 and settings["fastimg:steps"] == 3
    assert settings["fastimg:prompt"] == "a cat" and settings["fastimg:source"] == "in.png"

    saved = tmp_path / "out.png"
    saved.write_bytes(response.content)
    labels = read_labels(saved)
    assert labels["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert labels["parameters"].startswith("a cat\n") and "Seed: 11" in labels["parameters"]
    assert labels["fastimg"]["fastimg:seed"] == "11"
    assert labels["fastimg"]["fastimg:scheduler"] == settings["fastimg:scheduler"]


def test_a_json_request_with_a_random_seed_reports_the_seed_it_drew(server, pipe, picture):
    client, _ = server
    body = {
        "image": base64.b64encode(picture.read_bytes()).decode(),
        "prompt": "a dog",
        "negative_prompt": "blur",
        "strength": 0.75,
        "steps": 4,
        "guidance": 6,
        "sampler": "euler",
        "format": "webp",
        "quality": 80,
    }
    response = client.post("/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    seed = int(response.headers["x-fastimg-seed"])
    assert json.loads(response.headers["x-fastimg-settings"])["fastimg:seed"] == seed

    lossless = client.post("/v1/img2img", json={**body, "format": "png", "seed": seed})
    expected = pipe(
        "a dog",
        load_image(picture),
        strength=0.75,
        num_inference_steps=4,
        guidance_scale=6.0,
        negative_prompt="blur",
        seed=seed,
        scheduler="euler",
    )
    np.testing.assert_array_equal(decoded(lossless.content), np.asarray(expected[0]))


def test_several_images_come_back_as_json(server, pipe, picture):
    client, _ = server
    body = {"image": base64.b64encode(picture.read_bytes()).decode(), "prompt": "a cat",
            "strength": 0.6, "steps": 3, "guidance": 5, "seed": 11, "num_images": 2}  # fmt: skip
    response = client.post("/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [(i["format"], i["seed"], i["index"]) for i in answer["images"]] == [
        ("png", 11, 0),
        ("png", 11, 1),
    ]
    assert answer["settings"]["fastimg:seed"] == 11
    expected = pipe("a cat", load_image(picture), num_images_per_prompt=2, **CALL)
    for item, image in zip(answer["images"], expected, strict=True):
        np.testing.assert_array_equal(decoded(base64.b64decode(item["data"])), np.asarray(image))


def test_info_describes_the_engines(server, pipe):
    client, service = server
    info = client.get("/v1/info").json()
    assert info["backend"] == "onnxruntime" and info["precision"] == "fp32"
    assert info["exact"] is True and info["max_side"] == service.pipe.max_side  # (free memory)
    assert "euler" in info["samplers"] and info["model"] == pipe.model_info["fastimg:model"]


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"strength": "1.5"}, "Invalid value for 'strength': 1.5 is not in the range 0<x<=1"),
        ({"sampler": "nope"}, "Invalid value for 'sampler': 'nope' is not one of"),
        ({"strength": "0.1", "steps": "4"}, "runs zero denoising steps"),
        # past the trained timesteps: a 422 naming the most that fit, not a 500 IndexError
        ({"strength": "1", "steps": "1000", "sampler": "ddim"}, "use at most 999 steps"),
        ({"seed": "-1"}, "Invalid value for 'seed'"),
        ({"colour": "red"}, "unknown field 'colour'"),
        ({"prompt_2": "fur"}, "prompt_2"),  # an SDXL field on an SD 1.x folder
        ({"original_size": "big"}, "Invalid value for 'original_size'"),
    ],
)
def test_fields_are_checked_as_the_cli_checks_them(server, picture, fields, message):
    client, _ = server
    response = client.post("/v1/img2img", **multipart(picture, **fields))
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_bodies_that_are_neither_form_nor_json_are_refused(server):
    client, _ = server
    plain = client.post("/v1/img2img", content=b"hello", headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and "multipart/form-data" in plain.json()["detail"]
    broken = client.post("/v1/img2img", content=b"{", headers={"content-type": "application/json"})
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["detail"]
    no_image = client.post("/v1/img2img", json={"prompt": "a cat"})
    assert no_image.status_code == 422 and "no image" in no_image.json()["detail"]
    no_base64 = client.post("/v1/img2img", json={"prompt": "a cat", "image": "*not base64*"})
    assert no_base64.status_code == 422 and "base64" in no_base64.json()["detail"]


def test_long_prompts_are_shortened_in_the_header_only():
    settings = {"fastimg:prompt": "ü" * 20_000, "fastimg:seed": 5, "fastimg:steps": 4}
    header = settings_header(settings)
    assert header.isascii() and len(header) <= MAX_SETTINGS_HEADER
    short = json.loads(header)
    assert short["fastimg:shortened"] is True and short["fastimg:seed"] == 5
    assert short["fastimg:prompt"].startswith("ü" * 200)


def test_a_file_that_is_no_image_is_refused(server, tmp_path):
    client, service = server
    before = count(service, "422")
    notes = tmp_path / "notes.png"
    notes.write_text("just text")
    response = client.post("/v1/img2img", **multipart(notes))
    assert response.status_code == 422
    assert response.json()["detail"].startswith("notes.png is not an image format")
    assert count(service, "422") == before + 1


def test_a_jpeg_whose_labels_are_over_64_kib_is_refused_naming_no_server_path(server, picture):
    client, service = server
    runs = lambda: service.metrics.registry.get_sample_value("fastimg_batch_requests_count")  # noqa: E731
    before, ran = count(service, "422"), runs()
    long = "fox " * 5000  # 20,000 characters each: labels over a JPEG segment's 64 KiB
    fields = dict(prompt=long, negative_prompt=long, format="jpeg")
    response = client.post("/v1/img2img", **multipart(picture, **fields))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "64 KiB" in detail and "PNG or WebP" in detail
    assert tempfile.gettempdir() not in detail and "fastimg-serve" not in detail
    assert count(service, "422") == before + 1
    assert runs() == ran  # refused before it ran, not after


def test_a_request_whose_output_cannot_be_written_fails_alone_in_its_batch(server, monkeypatch):
    from fastimg.serve import service as service_module
    from fastimg.serve.requests import Body

    client, service = server
    real = service_module.encode_image

    def encode(image, settings, fmt, *args, **kwargs):
        if settings.get("fastimg:seed") == 2:  # (after the admission check: a write that fails)
            raise service_module.InputError("the disk is full")
        return real(image, settings, fmt, *args, **kwargs)

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 200)).save(buffer, format="PNG")
    request = service.check_request(Body({**SETTINGS, "seed": "1"}, buffer.getvalue(), "a.png"))
    other = service.check_request(Body({**SETTINGS, "seed": "2"}, buffer.getvalue(), "b.png"))
    monkeypatch.setattr(service_module, "encode_image", encode)
    entries = [service_module.Entry(r, threading.Event(), None) for r in (request, other)]
    first, second = service._work(entries)
    assert isinstance(second, service_module.InputError) and "disk is full" in str(second)
    assert first.encoded and first.settings["fastimg:seed"] == 1


def png_header(width: int, height: int) -> bytes:
    """A PNG claiming width x height pixels that holds none."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9_000, 100_000])  # over 64 MP; over Pillow's bomb guard
def test_a_pixel_bomb_is_refused_from_its_header(server, side):
    client, service = server
    upload = {"image": ("bomb.png", png_header(side, side), "image/png")}
    response = client.post("/v1/img2img", files=upload, data=SETTINGS)
    assert response.status_code == 413
    assert "over the limit" in response.json()["detail"]


def test_a_side_the_engines_cannot_take_is_refused_from_its_header(server, monkeypatch):
    from fastimg.serve import service as service_module

    client, service = server
    monkeypatch.setattr(service_module, "decode_image", lambda *a, **k: pytest.fail("decoded"))
    side = service.pipe.max_side + 64  # within the 64 megapixels, beyond the engines' side
    upload = {"image": ("wide.png", png_header(side, 64), "image/png")}
    response = client.post("/v1/img2img", files=upload, data=SETTINGS)
    assert response.status_code == 422
    assert f"{side}x64 pixels is larger than these engines take" in response.json()["detail"]


def test_a_side_too_large_to_decode_whole_is_taken_in_tiles(server, monkeypatch):
    from fastimg import machine

    client, service = server
    monkeypatch.setattr(machine, "free_bytes", lambda device="cpu": 32 * 2**20)
    monkeypatch.setattr(service.pipe, "max_side", 128)  # as if loaded with 32 MiB free
    tiled = service.pipe.engines.max_side(service.pipe.device, 64)
    assert tiled > 128  # the tiny decoder is what bounds the whole image at 32 MiB
    buffer = io.BytesIO()
    Image.new("RGB", (tiled, 64), (90, 140, 30)).save(buffer, format="PNG")
    upload = {"image": ("wide.png", buffer.getvalue(), "image/png")}
    whole = client.post("/v1/img2img", files=upload, data=SETTINGS)
    assert whole.status_code == 422 and "sides up to 128 px" in whole.json()["detail"]
    tiles = client.post("/v1/img2img", files=upload, data={**SETTINGS, "vae_tile_size": "64"})
    assert tiles.status_code == 200, tiles.text
    assert Image.open(io.BytesIO(tiles.content)).size == (tiled, 64)


def test_uploads_over_the_limit_are_refused(pipe, picture):
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    big = io.BytesIO()
    Image.fromarray(noise).save(big, format="PNG")
    options = ServeOptions(max_upload_bytes=10_000, max_pixels=64 * 64)
    with live(options, lambda: pipe) as (client, service):
        ready(client)
        upload = {"image": ("big.png", big.getvalue(), "image/png")}
        declared = client.post("/v1/img2img", files=upload, data=SETTINGS)
        assert declared.status_code == 413
        assert "over the limit of 10000 bytes" in declared.json()["detail"]

        request = client.build_request("POST", "/v1/img2img", files=upload, data=SETTINGS)
        body = request.read()
        chunked = client.post(  # no Content-Length: counted while it is read
            "/v1/img2img",
            content=iter([body[i : i + 4096] for i in range(0, len(body), 4096)]),
            headers={"content-type": request.headers["content-type"]},
        )
        assert chunked.status_code == 413
        assert "at least" in chunked.json()["detail"]

        small = client.post("/v1/img2img", **multipart(picture))  # 90x68: over 64x64 pixels
        assert small.status_code == 413 and "over the limit of" in small.json()["detail"]
        assert count(service, "413") == 3


def test_sdxl_fields_reach_the_pipeline_as_its_arguments(tiny_sdxl, picture):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(tiny_sdxl[1], backend="onnxruntime", precision="fp32")
    micro = dict(prompt_2="fur", negative_prompt_2="blur", original_size=(512, 384),
                 crops_coords_top_left=(8, 16), target_size=(256, 320))  # fmt: skip
    with live(ServeOptions(), lambda: pipe) as (client, _):
        ready(client)
        assert client.get("/v1/info").json()["sdxl_fields"][0] == "prompt_2"
        form = client.post("/v1/img2img", **multipart(picture, negative_prompt="ugly",
                           prompt_2="fur", negative_prompt_2="blur", original_size="512x384",
                           crops_coords_top_left="8,16", target_size="256x320"))  # fmt: skip
        assert form.status_code == 200, form.text
        as_json = {**SETTINGS, "negative_prompt": "ugly", **micro, "strength": 0.6, "steps": 3,
                   "guidance": 5, "seed": 11, "image": base64.b64encode(picture.read_bytes())
                   .decode()}  # fmt: skip
        as_json.update(original_size=[512, 384], crops_coords_top_left=[8, 16],
                       target_size=[256, 320])  # fmt: skip
        sent = client.post("/v1/img2img", json=as_json)
        assert sent.status_code == 200, sent.text
        refiner_only = client.post("/v1/img2img", **multipart(picture, aesthetic_score="7"))
        assert refiner_only.status_code == 422 and "aesthetic_score" in refiner_only.text
    expected = pipe("a cat", load_image(picture), negative_prompt="ugly", **micro, **CALL)[0]
    plain = pipe("a cat", load_image(picture), negative_prompt="ugly", **CALL)[0]
    for response in (form, sent):
        np.testing.assert_array_equal(decoded(response.content), np.asarray(expected))
    assert not np.array_equal(np.asarray(plain), np.asarray(expected))  # they changed the image


# --- who may ask -------------------------------------------------------------------------------


def test_with_an_api_key_requests_need_the_bearer_token(pipe, picture):
    with live(ServeOptions(api_key="s3cret"), lambda: pipe) as (client, service):
        ready(client)  # health needs no key
        assert client.get("/v1/info").status_code == 401
        wrong = client.get("/v1/info", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert client.post("/v1/img2img", **multipart(picture)).status_code == 401
        assert client.get("/metrics").status_code == 401
        key = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/info", headers=key).status_code == 200
        assert client.post("/v1/img2img", headers=key, **multipart(picture)).status_code == 200
        assert count(service, "401") == 1


def test_cors_headers_only_for_the_origins_given(server, pipe):
    client, _ = server
    origin = {"Origin": "https://app.example"}
    assert "access-control-allow-origin" not in client.get("/v1/health", headers=origin).headers
    with live(ServeOptions(cors=("https://app.example",)), lambda: pipe) as (client, _):
        ready(client)
        answer = client.get("/v1/health", headers=origin)
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        preflight = client.options(
            "/v1/img2img",
            headers={**origin, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 200
        other = client.get("/v1/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_metrics_count_what_happened(server, picture):
    client, service = server
    assert client.post("/v1/img2img", **multipart(picture)).status_code == 200
    text = client.get("/metrics").text
    for line in ("fastimg_requests_total{outcome=\"ok\"}", "fastimg_request_seconds_bucket",
                 "fastimg_queue_depth 0.0", "fastimg_images_total",
                 "fastimg_stage_seconds_count{stage=\"unet\"}"):  # fmt: skip
        assert line in text
    assert count(service, "ok") >= 1


def test_a_loopback_server_answers_only_to_loopback_names_and_allowed_ones(pipe):
    # DNS rebinding: a page's own name pointed at 127.0.0.1 still arrives in the Host header.
    options = ServeOptions(allow_hosts=("studio.local",))
    with live(options, lambda: pipe) as (client, service):
        ready(client)
        for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.nip.io"):
            refused = client.get("/v1/info", headers={"Host": host})
            assert refused.status_code == 403 and "--allow-host" in refused.json()["detail"]
        for host in ("localhost", "127.0.0.1:9", "[::1]:9", "studio.local:8000"):
            assert client.get("/v1/health", headers={"Host": host}).status_code == 200


def test_pages_from_elsewhere_are_refused_unless_named_with_cors(pipe, picture):
    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        before = count(service, "ok")
        evil = {"Origin": "http://evil.example"}
        response = client.post("/v1/img2img", headers=evil, **multipart(picture))
        assert response.status_code == 403 and "--cors" in response.json()["detail"]
        assert count(service, "ok") == before  # refused before it ran (no preflight stops it)
        own = {"Origin": f"http://127.0.0.1:{client.base_url.port}"}  # this server's page
        assert client.post("/v1/img2img", headers=own, **multipart(picture)).status_code == 200
    with live(ServeOptions(cors=("http://evil.example",)), lambda: pipe) as (client, _):
        ready(client)
        assert client.post("/v1/img2img", headers=evil, **multipart(picture)).status_code == 200


def test_an_internal_error_tells_the_client_an_incident_id_and_nothing_of_the_server(
    server, picture, monkeypatch, caplog
):
    from fastimg.workflows import runner

    client, service = server

    def broken(*args, **kwargs):
        raise RuntimeError("index 1000 is out of bounds in /srv/secret/schedules.py")

    monkeypatch.setattr(runner, "transform", broken)
    with caplog.at_level("ERROR", logger="fastimg"):
        response = client.post("/v1/img2img", **multipart(picture))
    assert response.status_code == 500
    detail = response.json()["detail"]
    assert "incident" in detail and "secret" not in detail and "RuntimeError" not in detail
    incident = detail.split("incident ")[1].split(")")[0]
    assert incident in caplog.text and "/srv/secret/schedules.py" in caplog.text


def test_a_request_over_the_cost_budget_is_refused_with_its_numbers_before_it_runs(pipe, picture):
    with live(ServeOptions(max_megapixel_steps=0.05), lambda: pipe) as (client, service):
        ready(client)
        runs = service.metrics.registry.get_sample_value("fastimg_batch_requests_count")
        fields = {"num_images": "8", "steps": "4", "strength": "0.5"}  # 88x64 x 8 x (2 + 2)
        response = client.post("/v1/img2img", **multipart(picture, **fields))
        assert response.status_code == 422
        assert (
            "costs 0.2 megapixel-steps (88x64 px x 8 image(s) x (2 UNet steps"
            in (response.json()["detail"])
        )
        assert service.metrics.registry.get_sample_value("fastimg_batch_requests_count") == runs
        assert client.post("/v1/img2img", **multipart(picture)).status_code == 200  # 0.03
    with live(ServeOptions(max_response_bytes=60_000), lambda: pipe) as (client, _):
        ready(client)
        response = client.post("/v1/img2img", **multipart(picture, num_images="4"))
        assert response.status_code == 422 and "a response may hold" in response.json()["detail"]
