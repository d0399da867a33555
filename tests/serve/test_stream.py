"""The frame stream (WebSocket /v1/stream) through the `websockets` client against a live
server on the tiny model; where a run must stay busy, the pipeline is held at its first step
(Gated), so that which frames are dropped is decided by the test, not by timing."""

import base64
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
websockets = pytest.importorskip("websockets")

from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from fastimg.media.images import psnr  # noqa: E402
from fastimg.serve import ServeOptions  # noqa: E402
from tests.serve.harness import Gated, decoded, live, ready, wait_for  # noqa: E402
from tests.stream.conftest import CountingSession  # noqa: E402

SETTINGS = {"prompt": "a cat", "strength": 0.6, "steps": 3, "guidance": 5, "seed": 11}


@pytest.fixture
def frames(photo):
    """Four different frames (PNG bytes) of the same size."""
    pixels = np.asarray(photo)
    variants = [pixels, pixels[::-1], pixels[:, ::-1], 255 - pixels]
    return [png(Image.fromarray(np.ascontiguousarray(v))) for v in variants]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def open_stream(client, key: str | None = None, origin: str | None = None, headers=None):
    """A WebSocket to the server of `client` (httpx), offering the key as the page does."""
    url = f"ws://{client.base_url.host}:{client.base_url.port}/v1/stream"
    protocols = ["fastimg"]
    if key is not None:
        token = base64.urlsafe_b64encode(key.encode()).rstrip(b"=").decode()
        protocols.append(f"fastimg.key.{token}")
    return connect(url, subprotocols=protocols, origin=origin, max_size=None, proxy=None,
                   open_timeout=30, additional_headers=headers)  # fmt: skip


def message(ws) -> dict:
    text = ws.recv(timeout=60)
    assert isinstance(text, str), "expected a JSON text message"
    return json.loads(text)


def result(ws) -> tuple[dict, bytes]:
    """The next result: its JSON message and the JPEG after it."""
    meta = message(ws)
    assert meta["type"] == "result", meta
    jpeg = ws.recv(timeout=60)
    assert isinstance(jpeg, bytes) and jpeg[:3] == b"\xff\xd8\xff"  # a JPEG
    return meta, jpeg


def closed_with(ws) -> int:
    """The close code the server sent (after any messages still to come)."""
    with pytest.raises(ConnectionClosed):
        while True:
            ws.recv(timeout=30)
    return ws.close_code


def frame_count(service, outcome: str) -> float:
    sample = {"outcome": outcome}
    return service.metrics.registry.get_sample_value("fastimg_stream_frames_total", sample) or 0


def started(settings=SETTINGS, **kwargs):
    """A connected stream that has sent `settings` and been told it is ready."""
    ws = open_stream(**kwargs)
    ws.send(json.dumps(settings))
    assert message(ws)["type"] == "ready"
    return ws


def test_each_frame_comes_back_as_the_http_apis_jpeg(pipe, frames):
    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        with started(client=client) as ws:
            assert ws.subprotocol == "fastimg"
            for k, frame in enumerate(frames[:2], 1):
                ws.send(frame)
                meta, jpeg = result(ws)
                assert meta["frame"] == k and meta["dropped"] == 0 and meta["ms"] > 0
                fields = {key: str(value) for key, value in SETTINGS.items()}
                http = client.post(
                    "/v1/img2img",
                    files={"image": ("frame.png", frame, "image/png")},
                    data={**fields, "format": "jpeg"},
                )
                assert http.status_code == 200, http.text
                np.testing.assert_array_equal(decoded(jpeg), decoded(http.content))
                with Image.open(io.BytesIO(jpeg)) as image:
                    assert image.format == "JPEG" and image.size == (88, 64)  # 90x68 to /8
        assert frame_count(service, "ok") == 2


def test_the_newest_frame_wins_and_the_others_are_dropped(pipe, frames):
    gated = Gated(pipe)
    try:
        with live(ServeOptions(), lambda: gated) as (client, service):
            ready(client)
            with started(client=client) as ws:
                ws.send(frames[0])
                assert gated.entered.wait(30)  # frame 1 is held at its first step
                for frame in frames[1:]:
                    ws.send(frame)
                (stream,) = service.streams
                wait_for(lambda: stream.received == 4)
                gated.release.set()
                first, _ = result(ws)
                newest, jpeg = result(ws)
                assert (first["frame"], first["received"], first["dropped"]) == (1, 4, 2)
                assert (newest["frame"], newest["received"], newest["dropped"]) == (4, 4, 2)
                assert len(gated.prompts) == 2  # frames 2 and 3 never ran
                expected = client.post(
                    "/v1/img2img",
                    files={"image": ("frame.png", frames[3], "image/png")},
                    data={**{k: str(v) for k, v in SETTINGS.items()}, "format": "jpeg"},
                )
                np.testing.assert_array_equal(decoded(jpeg), decoded(expected.content))
            assert frame_count(service, "dropped") == 2
    finally:
        gated.release.set()


@pytest.mark.parametrize(
    "first,detail",
    [
        ("not json", "send the settings first"),
        (b"\x89PNG", "send the settings first"),
        ({"prompt": "a cat", "strength": 1.5}, "Invalid value for 'strength'"),
        ({"prompt": "a cat", "num_images": 2}, "unknown setting 'num_images'"),
        ({"strength": 0.5}, "prompt is required"),
        ({"prompt": "a cat", "strength": 0.1, "steps": 4}, "runs zero denoising steps"),
    ],
)
def test_bad_settings_are_named_then_closed_with_1008(pipe, first, detail):
    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        with open_stream(client) as ws:
            ws.send(json.dumps(first) if isinstance(first, dict) else first)
            error = message(ws)
            assert error["type"] == "error" and detail in error["detail"]
            assert closed_with(ws) == 1008


def test_with_an_api_key_the_stream_needs_it_before_the_handshake_completes(pipe, frames):
    with live(ServeOptions(api_key="s3cret ü"), lambda: pipe) as (client, service):
        ready(client)
        for key in (None, "wrong", "s3cret"):
            with pytest.raises(InvalidStatus) as refused:
                open_stream(client, key)
            assert refused.value.response.status_code == 403
        with started(client=client, key="s3cret ü") as ws:
            ws.send(frames[0])
            assert result(ws)[0]["frame"] == 1
        assert client.get("/").status_code == 200  # the page needs no key: it holds none


def test_a_stream_takes_the_key_as_a_bearer_header_too(pipe, frames):
    with live(ServeOptions(api_key="s3cret"), lambda: pipe) as (client, service):
        ready(client)
        with started(client=client, headers={"Authorization": "Bearer s3cret"}) as ws:
            ws.send(frames[0])
            assert result(ws)[0]["frame"] == 1
        with pytest.raises(InvalidStatus):
            open_stream(client, headers={"Authorization": "Bearer wrong"})


def test_streams_take_run_slots_from_the_same_admission(pipe, frames):
    gated = Gated(pipe)
    upload = {"image": ("in.png", frames[0], "image/png")}
    fields = {k: str(v) for k, v in SETTINGS.items()}
    try:
        with live(ServeOptions(workers=1, max_queue=0), lambda: gated) as (client, service):
            ready(client)
            with started(client=client) as ws:
                ws.send(frames[0])
                assert gated.entered.wait(30)
                assert service.admission.running == 1
                busy = client.post("/v1/img2img", files=upload, data=fields)
                assert busy.status_code == 429  # the one worker runs the stream's frame
                gated.release.set()
                assert result(ws)[0]["frame"] == 1
                wait_for(lambda: service.admission.running == 0)
                assert client.post("/v1/img2img", files=upload, data=fields).status_code == 200
    finally:
        gated.release.set()


def test_stopping_finishes_the_running_frame_then_closes_with_1001(pipe, frames):
    gated = Gated(pipe)
    try:
        with live(ServeOptions(), lambda: gated) as (client, service):
            ready(client)
            with started(client=client) as ws:
                ws.send(frames[0])
                assert gated.entered.wait(30)
                service.stop_soon()  # what SIGTERM does first
                wait_for(lambda: service.admission.closed)
                gated.release.set()
                assert result(ws)[0]["frame"] == 1  # what runs finishes
                error = message(ws)
                assert error["type"] == "error" and "shutting down" in error["detail"]
                assert closed_with(ws) == 1001
            with open_stream(client) as late:
                assert "shutting down" in message(late)["detail"]
                assert closed_with(late) == 1001
    finally:
        gated.release.set()


def test_a_frame_that_is_no_image_is_named_and_the_stream_goes_on(pipe, frames):
    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        with started(client=client) as ws:
            ws.send(b"just text")
            error = message(ws)
            assert error["type"] == "error" and error["frame"] == 1
            assert "frame-1 is not an image" in error["detail"]
            ws.send(frames[0])
            assert result(ws)[0]["frame"] == 2


def test_while_the_engines_load_the_stream_is_closed_with_1013(pipe):
    loaded = threading.Event()

    def load():
        assert loaded.wait(60)
        return pipe

    with live(ServeOptions(), load) as (client, service):
        try:
            with open_stream(client) as ws:
                assert "still loading" in message(ws)["detail"]
                assert closed_with(ws) == 1013
        finally:
            loaded.set()


def test_only_this_servers_page_and_the_cors_origins_may_open_a_stream(pipe):
    cors = ("https://app.example",)
    with live(ServeOptions(cors=cors), lambda: pipe) as (client, service):
        ready(client)
        own = f"http://{client.base_url.host}:{client.base_url.port}"
        for origin in (own, "https://app.example", None):
            with started(client=client, origin=origin):
                pass
        with pytest.raises(InvalidStatus) as refused:  # before the handshake completes
            open_stream(client, origin="https://evil.example")
        assert refused.value.response.status_code == 403
        assert b"pages from https://evil.example may not" in refused.value.response.body


def test_a_stream_that_sends_no_settings_is_closed(pipe):
    with live(ServeOptions(stream_settings_seconds=0.5), lambda: pipe) as (client, service):
        ready(client)
        with open_stream(client) as ws:
            assert "no settings within 0.5 s" in message(ws)["detail"]
            assert closed_with(ws) == 1008
        wait_for(lambda: service.stream_clients == {})  # its count is given back


def test_open_streams_are_capped_per_client_and_in_all(pipe):
    options = ServeOptions(max_streams=3, max_streams_per_client=2)
    with live(options, lambda: pipe) as (client, service):
        ready(client)
        with started(client=client), started(client=client):
            with open_stream(client) as third:
                assert "2 streams from 127.0.0.1 are open" in message(third)["detail"]
                assert closed_with(third) == 1013
        wait_for(lambda: not service.stream_clients)  # (the server saw the two close)
        with started(client=client):  # room again
            pass
        service.stream_clients["192.0.2.7"] = 3  # (others' sockets, as they would count)
        with open_stream(client) as fourth:
            assert "3 streams are open, the most this server takes" in message(fourth)["detail"]
            assert closed_with(fourth) == 1013


def test_a_frame_over_the_cost_budget_is_refused_and_the_stream_goes_on(pipe, frames):
    with live(ServeOptions(max_megapixel_steps=0.001), lambda: pipe) as (client, service):
        ready(client)
        with started(client=client) as ws:
            ws.send(frames[0])
            error = message(ws)
            assert error["type"] == "error" and "megapixel-steps" in error["detail"]


BATCHED = {**SETTINGS, "strength": 0.5, "steps": 4, "sampler": "euler", "stream_batch": True}


def test_stream_options_run_the_stream_engine_with_its_batch(pipe, frames):
    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        ws = open_stream(client)
        with ws:
            ws.send(json.dumps(BATCHED))
            hello = message(ws)
            assert hello["type"] == "ready" and hello["settings"]["stream_batch"] is True
            ws.send(frames[0])  # two steps run: the first frame comes out with the second
            assert message(ws) == {"type": "pending", "frame": 1, "received": 1, "dropped": 0}
            ws.send(frames[1])
            meta, jpeg = result(ws)
            assert meta["frame"] == 1 and meta["skipped"] is False
            ws.send(frames[2])
            assert result(ws)[0]["frame"] == 2
        fields = {k: str(v) for k, v in BATCHED.items() if k != "stream_batch"}
        http = client.post("/v1/img2img", files={"image": ("f.png", frames[0], "image/png")},
                           data={**fields, "format": "jpeg"})  # fmt: skip
        assert http.status_code == 200, http.text
        assert psnr(decoded(jpeg), decoded(http.content)) >= 35  # the single call, later


def test_a_frame_the_similarity_filter_skips_sends_the_last_output_again(pipe, frames):
    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        with started({**SETTINGS, "similarity": 0.5}, client=client) as ws:
            ws.send(frames[0])
            first, jpeg = result(ws)
            ws.send(frames[0])
            again, jpeg_again = result(ws)
    assert (first["frame"], first["skipped"]) == (1, False)
    assert (again["frame"], again["skipped"]) == (2, True) and jpeg_again == jpeg


@pytest.mark.parametrize(
    "options,detail",
    [
        ({"rcfg": "half"}, "rcfg must be one of"),
        ({"stream_batch": "yes"}, "stream_batch must be a JSON bool"),
        ({"stream_batch": True, "sampler": "dpmpp_2m"}, "--sampler lcm"),
        ({"feedback": 1.5}, "feedback must be in [0, 1)"),
        ({"feedback": 0.2, "lora_scales": "none"}, "leave out lora_scales and vae_tile_size"),
        ({"similarity": 0.9, "vae_tile_size": 64}, "leave out lora_scales and vae_tile_size"),
    ],
)
def test_bad_stream_options_are_named_then_closed_with_1008(pipe, options, detail):
    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        with open_stream(client) as ws:
            ws.send(json.dumps({**SETTINGS, **options}))
            error = message(ws)
            assert error["type"] == "error" and detail in error["detail"]
            assert closed_with(ws) == 1008


def http_jpeg(client, frame: bytes, settings: dict) -> bytes:
    """The HTTP API's JPEG of `frame` with `settings` (the single call)."""
    fields = {key: str(value) for key, value in settings.items()}
    http = client.post("/v1/img2img", files={"image": ("f.png", frame, "image/png")},
                       data={**fields, "format": "jpeg"})  # fmt: skip
    assert http.status_code == 200, http.text
    return http.content


CHANGE = {"prompt": "a dog in the rain", "seed": 5, "strength": 0.7, "guidance": 3}


@pytest.mark.parametrize("options", [{}, {"feedback": 0.0}], ids=["single-calls", "engine"])
def test_a_settings_change_mid_stream_applies_from_the_next_frame(pipe, frames, options):
    change = {**CHANGE, "prompt": f"{CHANGE['prompt']} {sorted(options)}"}  # (not cached yet)
    text = CountingSession(pipe.sessions["text_encoder"])
    pipe.sessions["text_encoder"], original = text, pipe.sessions["text_encoder"]
    loads = []
    try:
        with live(ServeOptions(), lambda: loads.append(1) or pipe) as (client, service):
            ready(client)
            with started({**SETTINGS, **options}, client=client) as ws:
                ws.send(frames[0])
                _, before = result(ws)
                ws.send(json.dumps(change))
                updated = message(ws)
                assert updated["type"] == "updated"
                assert updated["settings"]["prompt"] == change["prompt"]
                assert updated["settings"]["seed"] == 5
                calls = text.calls
                ws.send(frames[0])
                meta, after = result(ws)
                assert meta["frame"] == 2
                ws.send(frames[0])
                result(ws)
                if options:  # the engine encodes the new prompt once, not per frame
                    assert text.calls - calls == 1
            pipe.sessions["text_encoder"] = original
            single_before = http_jpeg(client, frames[0], SETTINGS)
            single_after = http_jpeg(client, frames[0], {**SETTINGS, **change})
    finally:
        pipe.sessions["text_encoder"] = original
    assert loads == [1]  # nothing reloaded
    assert psnr(decoded(before), decoded(single_before)) >= 35
    assert psnr(decoded(after), decoded(single_after)) >= 35
    assert psnr(decoded(after), decoded(before)) < 30  # (the change shows)


@pytest.mark.parametrize(
    "change,detail",
    [
        ({"steps": 8}, "'steps' cannot change while a stream runs"),
        ({"strength": 3}, "the change was refused, the settings stay"),
        ([1, 2], "settings changes as a JSON object"),
    ],
)
def test_a_bad_change_is_named_and_the_stream_goes_on_unchanged(pipe, frames, change, detail):
    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        with started(client=client) as ws:
            ws.send(json.dumps(change))
            error = message(ws)
            assert error["type"] == "error" and detail in error["detail"]
            ws.send(frames[0])
            _, jpeg = result(ws)
            np.testing.assert_array_equal(
                decoded(jpeg), decoded(http_jpeg(client, frames[0], SETTINGS))
            )


@pytest.fixture(scope="module")
def control_pipe(tiny_controlnet):
    """The tiny model with a ControlNet on ONNX Runtime fp32."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    return Img2ImgPipeline.from_engines(tiny_controlnet[1], backend="onnxruntime", precision="fp32")


@pytest.mark.parametrize("options", [{}, {"feedback": 0.0}], ids=["single-calls", "engine"])
@pytest.mark.parametrize("given", ["control_image", "control_preprocess"])
def test_a_streams_control_steers_each_frame_as_the_single_call(
    control_pipe, frames, options, given
):
    controlled = {**SETTINGS, "control_scale": 1.5}
    if given == "control_image":  # sent once, base64, for every frame
        sent = {"control_image": base64.b64encode(frames[3]).decode()}
    else:  # made from each frame
        sent = {"control_preprocess": "canny"}
    with live(ServeOptions(), lambda: control_pipe) as (client, service):
        ready(client)
        with started({**controlled, **sent, **options}, client=client) as ws:
            jpegs = []
            for frame in frames[:2]:
                ws.send(frame)
                jpegs.append(result(ws)[1])
        for frame, jpeg in zip(frames[:2], jpegs, strict=True):
            files = {"image": ("f.png", frame, "image/png")}
            if given == "control_image":
                files["control_image"] = ("c.png", frames[3], "image/png")
            fields = {key: str(value) for key, value in {**controlled, **sent}.items()
                      if key != "control_image"}  # fmt: skip
            http = client.post("/v1/img2img", files=files, data={**fields, "format": "jpeg"})
            assert http.status_code == 200, http.text
            plain = http_jpeg(client, frame, SETTINGS)
            np.testing.assert_array_equal(decoded(jpeg), decoded(http.content))
            assert psnr(decoded(jpeg), decoded(plain)) < 40  # (the control shows)


def test_a_control_with_the_stream_batch_steers_each_frame(control_pipe, frames):
    settings = {**BATCHED, "sampler": "lcm", "control_preprocess": "canny", "guidance": 0}
    with live(ServeOptions(), lambda: control_pipe) as (client, service):
        ready(client)
        with started(settings, client=client) as ws:
            for frame in frames[:4]:
                ws.send(frame)
                meta = message(ws)
                if meta["type"] == "pending":
                    continue
                assert meta["type"] == "result", meta
                jpeg = ws.recv(timeout=60)
                fields = {k: str(v) for k, v in settings.items() if k != "stream_batch"}
                files = {"image": ("f.png", frames[meta["frame"] - 1], "image/png")}
                http = client.post("/v1/img2img", files=files, data={**fields, "format": "jpeg"})
                assert http.status_code == 200, http.text
                assert psnr(decoded(jpeg), decoded(http.content)) >= 35  # (JPEG both)


@pytest.mark.parametrize("options", [{}, {"stream_batch": True}], ids=["single", "batch"])
def test_a_streams_mask_repaints_each_frame_as_the_http_masked_call(pipe, frames, options):
    picture = np.zeros(decoded(frames[0]).shape[:2], dtype=np.uint8)
    picture[: picture.shape[0] // 2] = 255
    mask = png(Image.fromarray(picture))
    settings = {**SETTINGS, "sampler": "euler", "mask": base64.b64encode(mask).decode(),
                "mask_invert": True, **options}  # fmt: skip
    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        with started(settings, client=client) as ws:
            ws.send(frames[0])
            first = message(ws)
            if first["type"] == "pending":
                ws.send(frames[1])
                first = message(ws)
            assert first["type"] == "result" and first["frame"] == 1, first
            jpeg = ws.recv(timeout=60)
        fields = {k: str(v).lower() if isinstance(v, bool) else str(v)
                  for k, v in settings.items() if k not in ("mask", *options)}  # fmt: skip
        files = {"image": ("f.png", frames[0], "image/png"), "mask": ("m.png", mask, "image/png")}
        http = client.post("/v1/img2img", files=files, data={**fields, "format": "jpeg"})
        assert http.status_code == 200, http.text
        assert psnr(decoded(jpeg), decoded(http.content)) >= 35  # (JPEG both)
        plain = http_jpeg(client, frames[0], {**SETTINGS, "sampler": "euler"})
        assert psnr(decoded(jpeg), decoded(plain)) < 35  # (the mask shows)
