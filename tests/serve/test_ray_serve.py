"""`fastimg serve --ray`: the app as Ray Serve replicas on a local Ray cluster (127.0.0.1),
two replicas on the tiny model; a replica killed while requests run loses none of them."""

import io
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from fastimg.errors import InputError
from fastimg.serve import ServeOptions
from fastimg.serve.ray_app import (
    PROXY_ROUNDS,
    Replicas,
    default_replicas,
    deployment_options,
)

KEY = "ray-test-key"
FIELDS = {"prompt": "a fox", "strength": "0.5", "steps": "4", "seed": "7"}


def test_replicas_are_a_count_or_an_autoscaling_range():
    assert Replicas.parse("2") == Replicas(2, 2)
    assert Replicas.parse("1-4") == Replicas(1, 4)
    for bad in ("0", "3-1", "two", "1-", "-2"):
        with pytest.raises(InputError, match="--replicas"):
            Replicas.parse(bad)


def test_a_fixed_count_is_num_replicas_and_a_range_autoscales_on_queue_length():
    options = ServeOptions(engines=None, workers=2, max_queue=8, timeout=30.0)
    fixed = deployment_options(options, Replicas(3, 3), {"num_cpus": 2})
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2}
    # one request more than a replica admits reaches it, so its own 429 answers first
    assert fixed["max_ongoing_requests"] == 2 + 8 + 1
    # the proxy queues rounds of that for all replicas while it asks them how busy they are
    assert fixed["max_queued_requests"] == PROXY_ROUNDS * 3 * (2 + 8 + 1)
    assert fixed["graceful_shutdown_timeout_s"] == 30.0
    scaled = deployment_options(options, Replicas(1, 4), {"num_cpus": 1, "num_gpus": 1})
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 2,
    }


class _Cluster:
    """What the code asks of a connected ray module: the cluster's resources."""

    def __init__(self, **resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


def test_the_default_is_one_replica_per_gpu_else_per_replica_cpus():
    assert default_replicas(_Cluster(CPU=32.0, GPU=4.0), gpus=True, cpus=1) == Replicas(4, 4)
    assert default_replicas(_Cluster(CPU=32.0), gpus=False, cpus=8) == Replicas(4, 4)
    assert default_replicas(_Cluster(CPU=2.0), gpus=False, cpus=8) == Replicas(1, 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny, ray_cluster):
    """Two replicas of the tiny model behind Ray's proxy on a local cluster; its URL."""
    pytest.importorskip("ray.serve")
    from fastimg.serve.ray_app import Placement, deploy, undeploy

    options = ServeOptions(
        engines=tiny[1], backend="onnxruntime", precision="fp32", threads=1, api_key=KEY
    )
    yield deploy(options, "127.0.0.1", _free_port(), Placement(Replicas(2, 2), cpus=1))
    undeploy()


def _png(color=(200, 40, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, "PNG")
    return buffer.getvalue()


def _transform(url: str, attempts: int = 1):
    """POST one img2img request; a batch client retries what a dying replica dropped."""
    import httpx

    for attempt in range(attempts):
        try:
            response = httpx.post(
                f"{url}/v1/img2img",
                files={"image": ("in.png", _png(), "image/png")},
                data=FIELDS,
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=120,
            )
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise
        else:
            if response.status_code < 500 or attempt == attempts - 1:
                return response
        time.sleep(min(0.25 * 2**attempt, 4.0))  # back off while Ray replaces the replica


def _pixels(response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def _replica_states() -> dict:
    from ray import serve

    return serve.status().applications["fastimg"].deployments["fastimg"].replica_states


def test_the_replicas_serve_the_api_with_its_key(served):
    import httpx

    assert httpx.get(f"{served}/v1/health").json() == {"status": "ready"}
    assert httpx.get(f"{served}/v1/info").status_code == 401  # the key travels through Ray
    info = httpx.get(f"{served}/v1/info", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert info["backend"] == "onnxruntime" and info["precision"] == "fp32"
    assert _replica_states() == {"RUNNING": 2}
    response = _transform(served)
    assert response.status_code == 200 and response.headers["x-fastimg-seed"] == "7"
    assert _pixels(response).shape == (64, 64, 3)


def test_the_replicas_and_ray_listen_on_loopback_alone(served):
    import os

    from tests.workflows.test_ray_cluster import (
        descendants,
        listeners,
        need_ss,
        outside_loopback,
    )

    need_ss()
    found = listeners(descendants(os.getpid()) | {os.getpid()})
    assert any(address.endswith(f":{served.rsplit(':', 1)[1]}") for address, _ in found)
    assert not outside_loopback(found), outside_loopback(found)


def test_a_replica_killed_while_requests_run_loses_none(served):
    import ray

    reference = _pixels(_transform(served))
    results: dict[int, object] = {}

    def client(i: int) -> None:
        results[i] = _transform(served, attempts=8)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    end = time.monotonic() + 120
    while not results and time.monotonic() < end:  # requests are running on both replicas
        time.sleep(0.05)
    replicas = [
        actor
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == "serve" and "REPLICA" in actor["name"].upper()
    ]
    assert len(replicas) == 2, replicas
    ray.kill(ray.get_actor(replicas[0]["name"], namespace="serve"))
    for thread in threads:
        thread.join(240)
    assert sorted(results) == list(range(6))  # every request answered exactly once
    for response in results.values():
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(_pixels(response), reference)
    end = time.monotonic() + 120
    while _replica_states() != {"RUNNING": 2}:  # Ray Serve replaced the killed replica
        assert time.monotonic() < end, _replica_states()
        time.sleep(0.5)


def test_workers_reserve_a_gpu_or_their_cores_and_run_on_those_cores():
    from fastimg.workflows.ray_cluster import place_workers

    gpu = place_workers(_Cluster(CPU=8.0, GPU=2.0), "onnxruntime-cuda", None, default_cpus=8)
    assert gpu.resources == {"num_cpus": 1, "num_gpus": 1} and gpu.threads is None and gpu.gpu
    auto = place_workers(_Cluster(CPU=8.0, GPU=2.0), "auto", 2)
    assert auto.resources == {"num_cpus": 2, "num_gpus": 1}
    cpu = place_workers(_Cluster(CPU=8.0, GPU=2.0), "openvino", None, default_cpus=4)
    assert cpu.resources == {"num_cpus": 4} and cpu.threads == 4 and not cpu.gpu
    assert place_workers(_Cluster(CPU=8.0), "auto", 0.5).threads == 1
    with pytest.raises(InputError, match="--replica-cpus must be above 0"):
        place_workers(_Cluster(CPU=8.0), "auto", 0)


def test_more_workers_than_the_cluster_holds_are_refused_not_left_waiting():
    from fastimg.workflows.ray_cluster import Workers, check_room

    cpus_8 = Workers({"num_cpus": 8}, 8)
    check_room(_Cluster(CPU=16.0), cpus_8, 2, "--replicas")
    with pytest.raises(InputError) as refused:
        check_room(_Cluster(CPU=2.0), cpus_8, 2, "--replicas or --replica-cpus")
    message = str(refused.value)
    assert "need 16 CPUs, but the Ray cluster has 2" in message
    assert "lower --replicas or --replica-cpus" in message
    with pytest.raises(InputError, match="need 3 GPUs, but the Ray cluster has 2"):
        check_room(_Cluster(CPU=16.0, GPU=2.0), Workers({"num_cpus": 1, "num_gpus": 1}, None), 3,
                   "--replicas")  # fmt: skip
