"""The replica's own admission answers through Ray's proxy: a replica whose run slot and queue
are taken answers 429 with Retry-After, and nothing is lost."""

import io
import socket
import threading

import pytest
from PIL import Image

from fastimg.serve import ServeOptions

FIELDS = {"prompt": "a fox", "strength": "1.0", "steps": "400", "seed": "7"}  # a slow run


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 90, 160)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def one_replica(tiny, ray_cluster):
    """One replica that runs one request at a time and queues none."""
    pytest.importorskip("ray.serve")
    from fastimg.serve.ray_app import Placement, Replicas, deploy, undeploy

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = ServeOptions(
        engines=tiny[1], backend="onnxruntime", precision="fp32", threads=1, max_queue=0
    )
    yield deploy(options, "127.0.0.1", port, Placement(Replicas(1, 1), cpus=1))
    undeploy()


def test_a_busy_replica_answers_429_with_retry_after_through_ray(one_replica):
    import httpx

    responses = {}

    def post(i: int) -> None:
        responses[i] = httpx.post(
            f"{one_replica}/v1/img2img",
            files={"image": ("in.png", _png(), "image/png")},
            data=FIELDS,
            timeout=120,
        )

    threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert sorted(responses) == [0, 1, 2, 3]  # every request was answered
    statuses = sorted(r.status_code for r in responses.values())
    assert statuses.count(200) >= 1, statuses
    assert set(statuses) <= {200, 429, 503}, statuses  # 503: Ray's own queue was full
    busy = [r for r in responses.values() if r.status_code == 429]
    assert busy, statuses  # the replica's queue (0 places) turned the others away itself
    for response in busy:
        assert int(response.headers["retry-after"]) >= 1
        assert "busy" in response.json()["detail"]
