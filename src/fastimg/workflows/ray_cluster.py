"""Joining a Ray cluster for `serve --ray` and the batch commands' `--ray` (fastimg[ray]).

Each replica or batch worker loads the engines once and holds them; this module says what one
asks of the cluster (CPUs, a GPU) and connects to it: to the cluster the user names, else to one
started here whose every server listens on 127.0.0.1.
"""

import contextlib
import os
from dataclasses import dataclass

from ..backends.registry import GPU_BACKENDS
from ..errors import InputError, require

LOOPBACK = "127.0.0.1"
# Ray gives a node 127.0.0.1 only where it takes multi-node clusters to be off (as on Windows and
# macOS); the GCS, the raylet, the workers and the agents then listen on 127.0.0.1, not on every
# interface. Usage stats would report to Ray's servers.
LOOPBACK_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def connect(address: str | None = None, log=None):
    """The ray module, joined to the cluster at `address` (else RAY_ADDRESS), else to a new
    one on this machine that listens on 127.0.0.1 alone."""
    ray = require("ray", "ray")
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        if log is not None:
            log("starting Ray on this machine, on 127.0.0.1 alone (its dashboard off)")
        start_local(ray)
    else:
        if log is not None:
            log(f"joining the Ray cluster at {address}")
        join(ray, address)
    return ray


def join(ray, address: str) -> None:
    """Join the running cluster at `address`, or say how to start one."""
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as exc:
        raise InputError(
            f"no Ray cluster answers at {address}: start one (ray start --head) or leave out "
            f"--ray-address to start Ray on this machine ({exc})"
        ) from None


def start_local(ray, num_cpus: int | None = None) -> None:
    """Start a Ray cluster of this machine alone, every server on 127.0.0.1, no dashboard."""
    with _loopback_node():
        ray.init(
            address="local",  # a new cluster, never one that `ray start` left running here
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address=LOOPBACK,
        )
    node = ray.util.get_node_ip_address()
    if node != LOOPBACK:
        ray.shutdown()
        raise InputError(
            f"Ray {ray.__version__} started on {node}, not on {LOOPBACK} alone, so other "
            "machines could reach it: start a cluster yourself (ray start --head) on a trusted "
            "network and join it with --ray-address"
        )


@contextlib.contextmanager
def _loopback_node():
    """Ray's settings, while it starts, that put this machine's node on 127.0.0.1."""
    from ray._private import ray_constants

    saved = {name: os.environ.get(name) for name in LOOPBACK_ENVIRONMENT}
    clusters = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(LOOPBACK_ENVIRONMENT)  # for the processes Ray starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # for this one, which read it when ray was imported
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class Workers:
    """What each replica or batch worker reserves on the cluster, and its CPU threads.

    `resources` are Ray's actor options; `threads` is None on a GPU, where the GPU does the work.
    """

    resources: dict
    threads: int | None

    @property
    def gpu(self) -> bool:
        """Whether each worker holds a GPU."""
        return "num_gpus" in self.resources


def place_workers(ray, backend: str, cpus: float | None, default_cpus: float = 1) -> Workers:
    """What each worker reserves: a whole GPU on the GPU backends, else CPU cores.

    A GPU each on the GPU backends (and on auto where the cluster has GPUs), with `cpus` cores
    (default 1); else `cpus` cores each (default `default_cpus`), whose count is also the threads
    of its sessions, so that workers sharing a node do not fight for cores.
    """
    if cpus is not None and cpus <= 0:
        raise InputError(f"--replica-cpus must be above 0, got {cpus}")
    if backend in GPU_BACKENDS or (backend == "auto" and cluster_has_gpus(ray)):
        return Workers({"num_cpus": cpus if cpus is not None else 1, "num_gpus": 1}, None)
    cpus = cpus if cpus is not None else default_cpus
    return Workers({"num_cpus": cpus}, max(1, int(cpus)))


def check_room(ray, workers: Workers, count: int, flags: str) -> None:
    """Refuse `count` workers that the cluster cannot hold at once.

    Ray would wait for the missing ones without a word.
    """
    have = ray.cluster_resources()
    for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        each = workers.resources.get(key, 0)
        if count * each > have.get(name, 0):
            raise InputError(
                f"{count} worker(s) reserving {each:g} {name}(s) each need {count * each:g} "
                f"{name}s, but the Ray cluster has {have.get(name, 0):g}: lower {flags}, or "
                "add nodes to the cluster"
            )


def cluster_has_gpus(ray) -> bool:
    """Whether the connected cluster offers any GPU."""
    return ray.cluster_resources().get("GPU", 0) > 0
