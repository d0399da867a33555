"""`fastimg serve --ray`: the same app as Ray Serve replicas, each holding its own pipeline.

Ray's proxy takes the HTTP traffic on every node and routes each request to a replica; a
replica answers it with the app `fastimg serve` runs (the same admission, limits, key, page and
stream). A replica takes traffic once its engines are loaded, reserves a GPU (GPU backends) or
its CPU cores, and is restarted by Ray if it dies or its engines fail.
"""

import dataclasses
import re
import signal
import threading
from dataclasses import dataclass

from ..errors import InputError
from ..workflows.ray_cluster import LOOPBACK, check_room, connect, place_workers
from .app import create_app
from .service import ServeOptions

APP_NAME = "fastimg"


class Replica:
    """One replica: the fastimg app over its own pipeline (Ray Serve builds it at start)."""

    def __init__(self, options: ServeOptions):
        _internal_grpc_on_loopback()  # before Ray Serve starts that server, once this returns
        self._options = options
        self._app = None

    def __serve_build_asgi_app__(self):
        self._app = create_app(self._options, wait_for_engines=True)
        return self._app

    def check_health(self) -> None:
        """Ray Serve's periodic health check: a replica whose engines failed is replaced."""
        service = self._app.state.service if self._app is not None else None
        if service is not None and service.state == "failed":
            raise RuntimeError(f"the engines could not be loaded: {service.error}")


def _internal_grpc_on_loopback() -> None:
    """On a cluster started here (its node on 127.0.0.1), have this replica's inter-deployment
    gRPC server listen on 127.0.0.1: Ray Serve puts it on every interface ([::]) whatever the
    node's address."""
    import ray
    from ray.serve._private import replica

    add_port = getattr(replica, "add_port_to_grpc_server", None)
    if add_port is None or ray.util.get_node_ip_address() != LOOPBACK:
        return
    replica.add_port_to_grpc_server = lambda server, address: add_port(
        server, address.replace("[::]:", f"{LOOPBACK}:", 1)
    )


@dataclass(frozen=True)
class Replicas:
    """How many replicas: a fixed count, or autoscaling between two on queue length."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> "Replicas":
        """'2' (fixed) or '1-4' (autoscaled between 1 and 4)."""
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", text.strip())
        if match is None:
            raise InputError(f"--replicas takes N or MIN-MAX (2, 1-4), got {text!r}")
        replicas = cls(int(match[1]), int(match[2] or match[1]))
        if not 1 <= replicas.low <= replicas.high:
            raise InputError(f"--replicas needs 1 <= MIN <= MAX, got {text!r}")
        return replicas


def default_replicas(ray, gpus: bool, cpus: float) -> Replicas:
    """One replica per GPU of the cluster, else one per `cpus` of its cores."""
    resources = ray.cluster_resources()
    count = int(resources.get("GPU", 0)) if gpus else int(resources.get("CPU", 0) // cpus)
    return Replicas(max(1, count), max(1, count))


# Rounds of what the replicas take at once that the proxy queues (see deployment_options).
PROXY_ROUNDS = 4


def deployment_options(options: ServeOptions, replicas: Replicas, resources: dict) -> dict:
    """Ray Serve's settings for the deployment: the replicas' count or autoscaling, the
    resources each reserves, and queues that leave the 429s to each replica's own admission."""
    admitted = options.workers + options.max_queue + 1
    settings = {
        "name": APP_NAME,
        "ray_actor_options": resources,
        # one more than a replica admits, so that its own queue (429 + Retry-After) speaks first
        "max_ongoing_requests": admitted,
        # a request counts as queued at the proxy until a replica is chosen for it (which asks
        # the replicas how busy they are, slower on a loaded machine): with one place, a burst
        # of four got Ray's 503 three times before any replica's admission could answer
        "max_queued_requests": PROXY_ROUNDS * replicas.high * admitted,
        "graceful_shutdown_timeout_s": options.timeout,
    }
    if replicas.low == replicas.high:
        settings["num_replicas"] = replicas.low
    else:
        settings["autoscaling_config"] = {
            "min_replicas": replicas.low,
            "max_replicas": replicas.high,
            "target_ongoing_requests": options.workers,  # running + queued per replica
        }
    return settings


@dataclass(frozen=True)
class Placement:
    """Where the replicas run: how many (None: one per GPU, else one per `cpus` cores of the
    cluster), the CPU cores each reserves (None: 1 on a GPU, else every core here), the cluster
    (None: RAY_ADDRESS, else Ray started here)."""

    replicas: Replicas | None = None
    cpus: float | None = None
    address: str | None = None


def deploy(options: ServeOptions, host: str, port: int, placement: Placement, log=print) -> str:
    """Deploy the app on the Ray cluster and return its URL once every replica is ready; the
    replicas' count and resources are decided here, and refused when the cluster cannot hold
    them."""
    ray = connect(placement.address, log)
    from ray import serve

    from ..machine import available_cores

    workers = place_workers(ray, options.backend, placement.cpus, available_cores())
    if workers.threads is not None:  # each CPU replica runs on the cores it reserved
        options = dataclasses.replace(options, threads=workers.threads)
    replicas = placement.replicas or default_replicas(
        ray, workers.gpu, workers.resources["num_cpus"]
    )
    check_room(ray, workers, replicas.low, "--replicas or --replica-cpus")
    settings = deployment_options(options, replicas, workers.resources)
    ingress = serve.deployment(**settings)(serve.ingress()(Replica))
    serve.start(http_options={"host": host, "port": port})
    count = (
        str(replicas.low)
        if replicas.low == replicas.high
        else (f"{replicas.low} to {replicas.high} (autoscaled)")
    )
    log(f"deploying {count} replica(s), each reserving {workers.resources}")
    serve.run(ingress.bind(options), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def undeploy() -> None:
    """Stop the app: replicas stop admitting, finish what runs (up to the timeout) and exit."""
    from ray import serve

    serve.delete(APP_NAME)
    serve.shutdown()


def run_on_ray(options: ServeOptions, host: str, port: int, placement: Placement, log=print):
    """Serve on Ray until SIGTERM or SIGINT, then stop gracefully."""
    connect(placement.address, log)  # first: ray.init installs signal handlers of its own
    stop = threading.Event()
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        url = deploy(options, host, port, placement, log)
        log(f"serving on {url} (Ray Serve); SIGTERM or Ctrl-C stops it")
        stop.wait()
        log("stopping: finishing the requests that run")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    undeploy()
