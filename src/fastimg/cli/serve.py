"""The serve command: the engines loaded once, behind an HTTP API. A thin layer over
fastimg.serve, whose dependencies (the `serve` extra) are imported only when it runs."""

from dataclasses import replace
from pathlib import Path

import click

from .batch import engine_options
from .common import PathType, domain_errors, echo_err


def _engines_as_argument(command: click.Command) -> click.Command:
    """engine_options without its --engines: serve takes the folder as its ENGINES argument."""
    command.params = [
        param
        for param in command.params
        if not (isinstance(param, click.Option) and "--engines" in param.opts)
    ]
    return command


@_engines_as_argument
@click.command("serve")
@click.argument("engines", type=PathType(path_type=Path))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback needs --api-key.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Requests running at once on the one pipeline (its max_concurrency).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 64),
    default=None,
    help="Queued requests with the same image size and settings (prompts, seeds and images "
    "may differ) run together, this many per engine run at most; each gets the image it "
    "would get alone; 1: no batching. [default: 4 on OpenVINO, measured 1.4x faster per "
    "image; 1 on ONNX Runtime, measured no faster, and on the GPU backends]",
)
@click.option(
    "--max-queue",
    type=click.IntRange(0, 10_000),
    default=16,
    show_default=True,
    help="Requests waiting beyond those; more are answered 429 with Retry-After.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds a request may wait and run before it is answered 504 (a run stops at its "
    "next step).",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(0, min_open=True),
    default=20.0,
    show_default=True,
    help="Largest request body (image and fields; base64 in JSON adds a third), in MiB.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(1),
    default=None,
    help="Refuse larger images from their header, before decoding [default: 64 megapixels].",
)
@click.option(
    "--api-key",
    envvar="FASTIMG_API_KEY",
    show_envvar=True,
    default=None,
    help="Serve only requests with  Authorization: Bearer KEY  (health aside); required "
    "beyond loopback. Prefer the environment variable: arguments are visible to other users.",
)
@click.option(
    "--max-megapixel-steps",
    type=click.FloatRange(0.01),
    default=256.0,
    show_default=True,
    help="What one request may cost: megapixels x images x (UNet steps + 2 VAE passes); "
    "more is refused (422, with the numbers) before it waits.",
)
@click.option(
    "--max-response-mb",
    type=click.FloatRange(0.1),
    default=64.0,
    show_default=True,
    help="The most one response's images may hold, uncompressed.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(8, 100_000),
    default=256,
    show_default=True,
    help="Sockets open at once (503 beyond them), an eighth of them at most from one client "
    "address; each must send its request head within --header-timeout.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(0.1, 600),
    default=10.0,
    show_default=True,
    help="Seconds a request's line and headers may take (idle and slowloris sockets are "
    "closed); an upload must then come at --min-upload-rate at least.",
)
@click.option(
    "--min-upload-rate",
    type=click.FloatRange(1, 1e9),
    default=16.0,
    show_default=True,
    help="KiB/s an upload must come at, on average, once its head is in (408 otherwise).",
)
@click.option(
    "--max-streams",
    type=click.IntRange(1, 10_000),
    default=16,
    show_default=True,
    help="/v1/stream connections open at once (4 at most from one client address); each must "
    "send its settings within 10 s.",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="Also answer requests naming this host (a name a reverse proxy or your LAN uses); "
    "repeatable. On loopback the server answers only to 127.0.0.1, ::1 and localhost, so a "
    "web page cannot reach it through a name of its own (DNS rebinding).",
)
@click.option(
    "--cors",
    multiple=True,
    metavar="ORIGIN",
    help="Let web pages from ORIGIN (https://app.example) call the API; repeatable. Off "
    "unless given.",
)
@click.option(
    "--ray",
    "on_ray",
    is_flag=True,
    help="Serve with Ray Serve: replicas on a Ray cluster, each loading the engines once "
    "(needs fastimg[ray]). Without --ray-address, Ray starts on this machine bound to "
    "127.0.0.1, its dashboard off.",
)
@click.option(
    "--replicas",
    default=None,
    metavar="N|MIN-MAX",
    help="--ray: N replicas, or MIN-MAX autoscaled on queue length [default: one per GPU "
    "on the GPU backends, else one per --replica-cpus cores of the cluster].",
)
@click.option(
    "--replica-cpus",
    type=click.IntRange(1),
    default=None,
    help="--ray: CPU cores each replica reserves and runs on [default: 1 with a GPU, else "
    "this machine's cores].",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDR",
    help="--ray: the cluster to join (host:6379, ray://host:10001, or auto for the one `ray "
    "start` runs here) [default: RAY_ADDRESS, else Ray started on this machine on 127.0.0.1]. "
    "A multi-node cluster needs a trusted network and Ray's TLS and token settings "
    "(RAY_USE_TLS, RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY, RAY_TLS_CA_CERT; "
    "RAY_AUTH_MODE=token).",
)
@engine_options
@domain_errors
def serve(engines: Path, host: str, port: int, workers: int, max_batch: int | None,
          max_queue: int, timeout: float,
          max_upload_mb: float, max_pixels: int | None, api_key: str | None,
          max_megapixel_steps: float, max_response_mb: float,
          max_connections: int, header_timeout: float, min_upload_rate: float,
          max_streams: int, allow_hosts: tuple[str, ...], cors: tuple[str, ...], on_ray: bool,
          replicas: str | None, replica_cpus: int | None, ray_address: str | None,
          backend: str, precision: str, device: int | None, shapes: str | None,
          loras: tuple[str, ...]) -> None:  # fmt: skip
    """Serve img2img on the engines in ENGINES over HTTP, loading them once.

    POST /v1/img2img takes an image (multipart file `image`, or base64 in JSON) and the
    transform's fields (prompt, negative_prompt, strength, steps, guidance, seed, sampler,
    num_images, format, quality) and returns the image with its settings and seed in the
    X-Fastimg-* headers and in its labels. GET /v1/health, /v1/info and /metrics
    (Prometheus) say how it is doing. A1111 clients (Krita and Photoshop plugins, webuiapi)
    take http://HOST:PORT as their A1111 server (/sdapi/v1); OpenAI SDKs take
    http://HOST:PORT/v1 as their base_url (images.edit). SIGTERM stops admitting, finishes
    what runs, and exits. With --ray the same API runs as Ray Serve replicas behind Ray's
    proxy on HOST:PORT.
    """
    from ..engine_folder.manifest import load_manifest
    from ..errors import InputError
    from ..serve.admission import check_api_key, is_loopback

    if api_key:
        try:
            check_api_key(api_key)
        except InputError as exc:
            raise click.BadParameter(str(exc), param_hint="--api-key / FASTIMG_API_KEY") from None
    if not api_key and not is_loopback(host):
        raise click.UsageError(
            f"--host {host} serves other machines too: pass --api-key (or set "
            "FASTIMG_API_KEY) so that only clients with the key are served, or bind 127.0.0.1"
        )
    if not on_ray and (replicas or replica_cpus or ray_address):
        raise click.UsageError("--replicas, --replica-cpus and --ray-address go with --ray")
    manifest = load_manifest(engines)  # a folder that is no engine folder fails here, first
    from ..media.images import MAX_PIXELS
    from ..serve import ServeOptions, run_server

    options = ServeOptions(
        engines=engines,
        backend=backend,
        precision=precision,
        device=device,
        shapes=shapes or "dynamic",  # requests of every size, batched together
        loras=tuple(loras),
        workers=workers,
        max_batch=max_batch,
        max_queue=max_queue,
        timeout=timeout,
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_pixels=max_pixels or MAX_PIXELS,
        api_key=api_key or None,
        cors=tuple(cors),
        max_megapixel_steps=max_megapixel_steps,
        max_response_bytes=int(max_response_mb * 2**20),
        max_connections=max_connections,
        max_connections_per_client=max(1, max_connections // 8),
        head_seconds=header_timeout,
        body_bytes_per_second=min_upload_rate * 1024,
        max_streams=max_streams,
        bind_host=host,
        allow_hosts=tuple(allow_hosts),
    )
    if on_ray:
        _serve_on_ray(options, host, port, replicas, replica_cpus, ray_address)
        return
    echo_err(f"loading {engines} once the server is up; /v1/health says ready when it is")
    run_server(replace(options, manifest=manifest), host, port)


def _serve_on_ray(options, host: str, port: int, replicas: str | None, cpus: int | None,
                  address: str | None) -> None:  # fmt: skip
    """Deploy on Ray Serve with the replicas and resources asked for (or the defaults)."""
    from ..errors import require
    from ..serve.ray_app import Placement, Replicas, run_on_ray

    require("ray", "ray")
    parsed = Replicas.parse(replicas) if replicas else None
    run_on_ray(options, host, port, Placement(parsed, cpus, address), echo_err)
