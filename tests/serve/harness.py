"""A live uvicorn server (in a thread) on the tiny model, and what the serve tests share.

Where a test needs a run to stay busy, the pipeline is the tiny one held at its first step on
an Event (Gated), so that queueing, deadlines and disconnects are decided by the test, not by
timing.
"""

import contextlib
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image

from fastimg.serve import ServeOptions, create_app
from fastimg.serve.server import Server, uvicorn_config

SETTINGS = {"prompt": "a cat", "strength": "0.6", "steps": "3", "guidance": "5", "seed": "11"}
CALL = dict(strength=0.6, num_inference_steps=3, guidance_scale=5.0, seed=11)


@contextlib.contextmanager
def live(options: ServeOptions, load=None):
    """A server on a free loopback port, in a thread; yields (client, service)."""
    app = create_app(options, load)
    config = uvicorn_config(app, "127.0.0.1", 0, options, log_level="warning")
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

    def call_many(self, calls, callback=None, should_stop=None):
        self.batches.append([call["prompt"] for call in calls])
        self.prompts += self.batches[-1]
        held = self._held(callback, self.batch_entered, self.batch_release)
        return self.pipe.call_many(calls, held, should_stop)

    def _held(self, callback, entered: threading.Event, release: threading.Event):
        def held(step, total):
            self.steps.append(step)
            if step == 1:
                entered.set()
                assert release.wait(60)
            if callback is not None:
                callback(step, total)

        return held


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


def raw_request(client, picture, **fields) -> socket.socket:
    """A socket that has sent a whole img2img request (to be closed before the answer)."""
    request = client.build_request("POST", "/v1/img2img", **multipart(picture, **fields))
    body = request.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    sock = socket.create_connection((client.base_url.host, client.base_url.port))
    sock.sendall(f"POST /v1/img2img HTTP/1.1\r\n{head}\r\n".encode() + body)
    return sock
