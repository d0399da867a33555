"""Joining a Ray cluster for `serve --ray` and the batch commands' `--ray` (fastimg[ray]).

Each replica or batch worker loads the engines once and holds them; this module says what one
asks of the cluster (CPUs, a GPU) and connects to it.
"""

import os

from .errors import InputError, require

GPU_BACKENDS = ("tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt")


def connect(address: str | None = None, log=None):
    """Connect to the Ray cluster at `address` (else RAY_ADDRESS, else start one here); return
    the ray module."""
    ray = require("ray", "ray")
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    if log is not None:
        log(f"joining the Ray cluster at {address}" if address else "starting Ray on this machine")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as exc:
        raise InputError(
            f"no Ray cluster answers at {address}: start one (ray start --head) or leave out "
            f"--ray-address to start Ray on this machine ({exc})"
        ) from None
    return ray


def worker_resources(backend: str, cpus: float | None, gpu_present: bool) -> dict:
    """What one replica or worker reserves: a whole GPU on the GPU backends (and on auto where
    the cluster has GPUs), else `cpus` CPU cores (default 1)."""
    if cpus is not None and cpus <= 0:
        raise InputError(f"--replica-cpus must be above 0, got {cpus}")
    wants_gpu = backend in GPU_BACKENDS or (backend == "auto" and gpu_present)
    if wants_gpu:
        return {"num_cpus": cpus if cpus is not None else 1, "num_gpus": 1}
    return {"num_cpus": cpus if cpus is not None else 1}


def cluster_has_gpus(ray) -> bool:
    """Whether the connected cluster offers any GPU."""
    return ray.cluster_resources().get("GPU", 0) > 0
