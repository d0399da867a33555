"""The HTTP API through httpx against a live uvicorn server (in a thread) on the tiny model.

Where a test needs a run to stay busy, the pipeline is the tiny one held at its first step on
an Event (Gated), so that queueing, deadlines and disconnects are decided by the test, not by
timing.
"""

import base64
import contextlib
import functools
import io
import json
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from fastimg.errors import EngineError  # noqa: E402
from fastimg.media.images import load_image  # noqa: E402
from fastimg.media.label_reader import read_labels  # noqa: E402
from fastimg.media.vocabulary import TRAINED_ALGORITHMIC_MEDIA  # noqa: E402
from fastimg.serve import ServeOptions, create_app, run_server  # noqa: E402
from fastimg.serve.app import MAX_SETTINGS_HEADER, Server, _settings_header  # noqa: E402

SETTINGS = {"prompt": "a cat", "strength": "0.6", "steps": "3", "guidance": "5", "seed": "11"}
CALL = dict(strength=0.6, num_inference_steps=3, guidance_scale=5.0, seed=11)


@contextlib.contextmanager
def live(options: ServeOptions, load=None):
    """A server on a free loopback port, in a thread; yields (client, service)."""
    app = create_app(options, load)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = Server(config, app.state.service)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive())
    assert server.started, "the server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client, app.state.service
    finally:
        server.should_exit = True
        thread.join(30)


def wait_for(condition, timeout: float = 30.0) -> None:
    """Wait until `condition()` holds (it is state another thread changes)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for the server")
        time.sleep(0.01)


def ready(client) -> None:
    wait_for(lambda: client.get("/v1/health").status_code == 200)


def count(service, outcome: str) -> float:
    return service.metrics.registry.get_sample_value("fastimg_requests_total", {"outcome": outcome})


def multipart(picture, **fields):
    return dict(files={"image": (picture.name, picture.read_bytes(), "image/png")},
                data={**SETTINGS, **fields})  # fmt: skip


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


class Gated:
    """The tiny pipeline, each run held at its first step until `release` is set."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.entered = threading.Event()
        self.release = threading.Event()
        self.prompts: list[str] = []
        self.batches: list[list[str]] = []  # the prompts of each batched run
        self.batch_entered = threading.Event()
        self.batch_release = threading.Event()  # batched runs are held only while it is clear
        self.batch_release.set()
        self.steps: list[int] = []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, prompt, image, callback=None, **settings):
        self.prompts.append(prompt)
        held = self._held(callback, self.entered, self.release)
        return self.pipe(prompt, image, callback=held, **settings)

    def call_many(self, calls, callback=None):
        self.batches.append([call["prompt"] for call in calls])
        self.prompts += self.batches[-1]
        held = self._held(callback, self.batch_entered, self.batch_release)
        return self.pipe.call_many(calls, held)

    def _held(self, callback, entered: threading.Event, release: threading.Event):
        def held(step, total):
            self.steps.append(step)
            if step == 1:
                entered.set()
                assert release.wait(60)
            if callback is not None:
                callback(step, total)

        return held


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


def test_the_server_stops_with_the_reason_when_the_engines_cannot_load():
    def load():
        raise EngineError("engine unet.onnx is damaged")

    with pytest.raises(EngineError, match="could not be loaded: engine unet.onnx is damaged"):
        run_server(ServeOptions(), "127.0.0.1", 0, load=load)


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
    header = _settings_header(settings)
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


# --- admission ---------------------------------------------------------------------------------


@contextlib.contextmanager
def gated_server(pipe, **options):
    gated = Gated(pipe)
    try:
        with live(ServeOptions(**options), lambda: gated) as (client, service):
            ready(client)
            with ThreadPoolExecutor(4) as pool:
                yield client, service, gated, pool
                gated.release.set()  # (before the pool waits for the requests)
    finally:
        gated.release.set()


def test_a_full_queue_is_answered_429_with_retry_after(pipe, picture):
    with gated_server(pipe, workers=1, max_queue=1) as (client, service, gated, pool):
        first = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="first"))
        assert gated.entered.wait(30)
        second = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="second"))
        wait_for(lambda: service.admission.waiting == 1)
        third = client.post("/v1/img2img", **multipart(picture, prompt="third"))
        assert third.status_code == 429
        assert int(third.headers["retry-after"]) >= 1
        gated.release.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert gated.prompts == ["first", "second"]
        assert count(service, "429") == 1 and count(service, "ok") == 2


def test_requests_past_their_deadline_are_answered_504(pipe, picture):
    with gated_server(pipe, workers=1, max_queue=2, timeout=2.0) as (client, service, gated, pool):
        running = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="runs"))
        wait_for(lambda: service.admission.running == 1)
        queued = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="waits"))
        assert running.result().status_code == 504
        assert queued.result().status_code == 504
        assert "deadline" in queued.result().json()["detail"]
        gated.release.set()
        wait_for(lambda: service.admission.running == 0)
        assert "waits" not in gated.prompts  # the queued one never ran
        assert gated.steps in ([], [1])  # and the running one stopped at its next step
        assert count(service, "timeout") == 2


def raw_request(client, picture, **fields) -> socket.socket:
    """A socket that has sent a whole img2img request (to be closed before the answer)."""
    request = client.build_request("POST", "/v1/img2img", **multipart(picture, **fields))
    body = request.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    sock = socket.create_connection((client.base_url.host, client.base_url.port))
    sock.sendall(f"POST /v1/img2img HTTP/1.1\r\n{head}\r\n".encode() + body)
    return sock


def test_a_client_that_leaves_the_queue_is_never_run(pipe, picture):
    with gated_server(pipe, workers=1, max_queue=2) as (client, service, gated, pool):
        first = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="first"))
        assert gated.entered.wait(30)
        leaver = raw_request(client, picture, prompt="leaver")
        wait_for(lambda: service.admission.waiting == 1)
        leaver.close()
        wait_for(lambda: count(service, "disconnected") == 1)
        assert service.admission.waiting == 0
        gated.release.set()
        assert first.result().status_code == 200
        wait_for(lambda: service.admission.running == 0)
        assert gated.prompts == ["first"]


def test_a_client_that_leaves_while_running_stops_the_run_at_the_next_step(pipe, picture):
    with gated_server(pipe, workers=1, max_queue=2) as (client, service, gated, pool):
        leaver = raw_request(client, picture, prompt="leaver", steps="4", strength="1")
        assert gated.entered.wait(30)
        leaver.close()
        wait_for(lambda: count(service, "disconnected") == 1)
        gated.release.set()
        wait_for(lambda: service.admission.running == 0)
        assert gated.steps == [1]  # of 4
        after = client.post("/v1/img2img", **multipart(picture))  # the slot is free again
        assert after.status_code == 200


def test_stopping_turns_away_the_queue_and_newcomers_but_finishes_what_runs(pipe, picture):
    with gated_server(pipe, workers=1, max_queue=2) as (client, service, gated, pool):
        running = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="runs"))
        assert gated.entered.wait(30)
        queued = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="waits"))
        wait_for(lambda: service.admission.waiting == 1)
        service.stop_soon()  # what SIGTERM does first
        assert queued.result().status_code == 503
        late = client.post("/v1/img2img", **multipart(picture))
        assert late.status_code == 503 and "shutting down" in late.json()["detail"]
        assert client.get("/v1/health").json() == {"status": "stopping"}
        gated.release.set()
        assert running.result().status_code == 200
        assert gated.prompts == ["runs"]


def test_queued_requests_of_one_shape_run_as_one_batch_each_as_if_alone(pipe, picture, tmp_path):
    wide = tmp_path / "wide.png"
    Image.open(picture).resize((96, 64)).save(wide)
    options = dict(workers=1, max_queue=8, max_batch=3)
    with (
        gated_server(pipe, **options) as (client, service, gated, _),
        ThreadPoolExecutor(8) as pool,
    ):
        post = functools.partial(client.post, "/v1/img2img")
        first = pool.submit(post, **multipart(picture, prompt="first"))
        assert gated.entered.wait(30)
        queued = {}
        for k, (prompt, image) in enumerate([("a", picture), ("b", picture), ("wide", wide),
                                             ("c", picture), ("d", picture)]):  # fmt: skip
            queued[prompt] = pool.submit(post, **multipart(image, prompt=prompt, seed=str(k)))
            wait_for(lambda k=k: service.admission.waiting == k + 1)
        gated.release.set()
        assert first.result().status_code == 200
        answers = {prompt: future.result() for prompt, future in queued.items()}
        # "a" got the slot and took the next two of its shape; "wide" and "d" ran after it.
        assert gated.batches[0] == ["a", "b", "c"]
        assert gated.prompts == ["first", "a", "b", "c", "wide", "d"]
        for k, (prompt, response) in enumerate(answers.items()):
            assert response.status_code == 200, response.text
            image = load_image(wide if prompt == "wide" else picture)
            expected = pipe(prompt, image, **{**CALL, "seed": k})[0]
            np.testing.assert_array_equal(decoded(response.content), np.asarray(expected))
            assert json.loads(response.headers["x-fastimg-settings"])["fastimg:prompt"] == prompt
        batches = service.metrics.registry.get_sample_value("fastimg_batch_requests_sum")
        assert batches == 1 + 3 + 1 + 1  # first, [a, b, c], wide, d


def test_a_rider_whose_client_leaves_does_not_stop_the_batch(pipe, picture):
    with gated_server(pipe, workers=1, max_queue=4, max_batch=4) as (client, service, gated, pool):
        gated.batch_release.clear()
        first = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="first"))
        assert gated.entered.wait(30)
        stays = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="stays"))
        wait_for(lambda: service.admission.waiting == 1)
        leaver = raw_request(client, picture, prompt="leaver")
        wait_for(lambda: service.admission.waiting == 2)
        gated.release.set()
        assert first.result().status_code == 200
        assert gated.batch_entered.wait(30) and gated.batches == [["stays", "leaver"]]
        leaver.close()  # while the batch it rides in is held at its first step
        wait_for(lambda: count(service, "disconnected") == 1)
        gated.batch_release.set()
        response = stays.result()
        assert response.status_code == 200
        expected = pipe("stays", load_image(picture), **CALL)[0]
        np.testing.assert_array_equal(decoded(response.content), np.asarray(expected))


def test_batching_is_on_by_default_only_where_it_was_measured_to_pay(pipe):
    class OnOpenVINO(Gated):
        backend = "openvino"

    for options, loaded, expected in ((ServeOptions(), lambda: OnOpenVINO(pipe), 4),
                                      (ServeOptions(), lambda: pipe, 1),  # ONNX Runtime
                                      (ServeOptions(max_batch=2), lambda: pipe, 2)):  # fmt: skip
        with live(options, loaded) as (client, service):
            ready(client)
            assert service.max_batch == expected


def test_batching_is_off_with_max_batch_1(pipe, picture):
    with gated_server(pipe, workers=1, max_queue=4, max_batch=1) as (client, service, gated, pool):
        first = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="first"))
        assert gated.entered.wait(30)
        rest = []
        for k, prompt in enumerate("ab"):
            rest.append(
                pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt=prompt))
            )
            wait_for(lambda k=k: service.admission.waiting == k + 1)
        gated.release.set()
        assert [f.result().status_code for f in (first, *rest)] == [200] * 3
        assert gated.batches == [] and gated.prompts == ["first", "a", "b"]


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
