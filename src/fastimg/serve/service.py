"""The Service: one Img2ImgPipeline, loaded once, and what outlives one request around it.

It loads the engines in a thread, admits checked requests through Admission (a bounded queue
in front of `workers` run slots), batches queued requests that can share a run (same image size
and settings, up to `max_batch`), runs them in worker threads, never on the event loop, and
hands each request its encoded images (decoded from and encoded to memory).
"""

import asyncio
import dataclasses
import functools
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from prometheus_client import Counter

from ..backends.registry import serve_batch
from ..diffusion.schedules import runtime_sampler
from ..engine_folder.manifest import Manifest, load_manifest
from ..errors import Cancelled, InputError
from ..media.images import MAX_PIXELS, check_sides, decode_image
from ..media.labels import encode_image
from ..settings import CONTROL_PREPROCESSORS, FORMATS, MAX_IMAGES, MODEL_PREPROCESSORS, SAMPLERS
from ..workflows import runner
from ..workflows.jobs import setting_labels
from .admission import Admission, Closed, Expired, check_pixels
from .metrics import Metrics
from .requests import SDXL_FIELDS, Body, ImageRequest, check_body, check_stream_settings

log = logging.getLogger("fastimg")


@dataclass(frozen=True)
class ServeOptions:
    """How `fastimg serve` runs: the engines and their options, and the admission limits."""

    engines: Path | None = None
    manifest: Manifest | None = None  # the engines' manifest, where this process loaded it
    backend: str = "auto"
    precision: str = "auto"
    device: int | None = None
    shapes: str = "dynamic"
    loras: tuple[str, ...] = ()  # 'FILE[:SCALE]' each, loaded with the engines
    workers: int = 1  # requests running at once (the pipeline's max_concurrency)
    max_batch: int | None = None  # requests per engine run (None: the backend's serve_batch)
    threads: int | None = None  # CPU threads of the pipeline (None: every core here)
    max_queue: int = 16  # requests waiting beyond those
    timeout: float = 300.0  # seconds from arrival to response, at most
    max_upload_bytes: int = 20 << 20
    max_pixels: int = MAX_PIXELS
    api_key: str | None = None
    cors: tuple[str, ...] = ()
    max_connections: int = 256  # sockets open at once (beyond them: 503)
    max_connections_per_client: int = 32  # of them from one client address
    head_seconds: float = 10.0  # a request's head (line and headers) must come within this
    body_bytes_per_second: float = 16_384  # an upload slower than this on average is dropped
    # What one request may ask for: megapixels x images x (UNet steps + 2 VAE passes), and
    # the raw bytes of its images (a 1024 px, 8-image request took 5 GB and 33 s on 2 cores).
    # 256 takes SDXL at 1024 px, 4 images, the default 50 steps at strength 0.8 (176).
    max_megapixel_steps: float = 256.0
    max_response_bytes: int = 64 << 20
    max_streams: int = 16  # /v1/stream connections open at once, in all
    max_streams_per_client: int = 4  # of them from one client address
    stream_settings_seconds: float = 10.0  # a stream's settings must come within this
    bind_host: str | None = None  # the address it listens on (None: loopback)
    allow_hosts: tuple[str, ...] = ()  # Host names it answers to beyond loopback ones


class Aborted(Exception):
    """Raised between engine steps to stop a run whose client left or whose deadline passed."""


@dataclass
class Entry:
    """A request admitted to a run: the request, its stop flag, and where its Result goes."""

    request: ImageRequest
    abort: threading.Event
    result: asyncio.Future


@dataclass(frozen=True)
class Result:
    """A request's images, encoded, and the settings they were made with (fastimg:* labels)."""

    settings: dict
    encoded: list[bytes]


class Service:
    """The pipeline and everything around it that outlives one request."""

    def __init__(self, options: ServeOptions, load=None):
        if load is None and options.engines is None:
            raise ValueError("ServeOptions.engines names no engine folder, and no loader was given")
        self.options = options
        self.admission = Admission(options.workers, options.max_queue)
        self.metrics = Metrics(self.admission)
        self.executor = ThreadPoolExecutor(options.workers, thread_name_prefix="fastimg-serve")
        self.state, self.error = "loading", None
        self.pipe = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_failure = None  # called with the message when the engines cannot be loaded
        self._load = load or self._load_engines
        self.max_batch = options.max_batch or 1  # (None: set by the backend once loaded)
        self.last_step: tuple[int, int] | None = None  # (UNet step, of total) of the newest run
        self.streams: set = set()  # the running /v1/stream connections (each has `stop()`)
        self.stream_clients: dict[str, int] = {}  # open stream sockets per client address
        self.frames = Counter(
            "fastimg_stream_frames",
            "Frames received on /v1/stream by outcome (ok, dropped, error, busy)",
            ["outcome"],
            registry=self.metrics.registry,
        )

    def _load_engines(self):
        from ..diffusion.pipeline import Img2ImgPipeline
        from ..lora.files import parse_lora_spec

        o = self.options
        pipe = Img2ImgPipeline(
            o.manifest or load_manifest(o.engines),
            backend=o.backend,
            precision=o.precision,
            threads=o.threads,
            max_concurrency=o.workers,
            device=o.device,
            shapes=o.shapes,
        )
        for path, scale in map(parse_lora_spec, o.loras):
            pipe.load_lora(path, scale=scale)
        if pipe.device == "cpu":  # (a GPU run returns before the device is done: untimed)
            pipe.wrap_sessions(self.metrics.timed)
        return pipe

    async def load(self) -> None:
        """Load the engines in a thread; the server answers (health: loading) meanwhile."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            pipe = await loop.run_in_executor(None, self._load)
        except Exception as exc:
            self.state, self.error = "failed", str(exc) or type(exc).__name__
            log.error("the engines could not be loaded: %s", self.error)
            if self.on_failure is not None:
                self.on_failure(self.error)
            return
        self.pipe = pipe
        if self.options.max_batch is None:
            self.max_batch = serve_batch(getattr(pipe, "backend", None))
        if self.state == "loading":
            self.state = "ready"
        log.info(
            "engines loaded in %.1f s: %s on %s (%s); ready",
            time.monotonic() - started,
            pipe.model_info.get("fastimg:model"),
            pipe.backend,
            pipe.precision,
        )

    def stop(self) -> None:
        """Admit nothing more: new requests get 503, queued ones too; running ones finish."""
        if self.state != "failed":
            self.state = "stopping"
        self.admission.close()
        for stream in list(self.streams):
            stream.stop()

    def stop_soon(self) -> None:
        """`stop` on the event loop (from a signal handler, or another thread)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.stop)

    @property
    def accepting(self) -> bool:
        """Whether requests are admitted now (the engines are loaded and it is not stopping)."""
        return self.state == "ready" and not self.admission.closed

    def unavailable_reason(self) -> str:
        """Why requests are not admitted now (loading, failed, or shutting down)."""
        if self.state == "loading":
            return "the engines are still loading: retry when /v1/health says ready"
        if self.state == "failed":
            return f"the engines could not be loaded: {self.error}"
        return "the server is shutting down: send the request to another instance"

    # --- a request -----------------------------------------------------------------------------

    def check_request(self, body: Body) -> ImageRequest:
        """A body's fields checked against the loaded engines (InputError: 422), its outputs'
        labels included."""
        return self._labels_fit(check_body(body, self.pipe.manifest))

    def stream_request(self, message: dict) -> ImageRequest:
        """A stream's first message checked as a request's fields are: an ImageRequest to fill
        with each frame."""
        return self._labels_fit(check_stream_settings(message, self.pipe.manifest))

    def stream_engine(self, template: ImageRequest, options: dict):
        """The StreamEngine of a stream whose settings ask for StreamDiffusion's options
        (`options`: stream_batch, rcfg, similarity, max_skip, feedback); InputError where the
        settings or the options cannot run so."""
        from ..stream.engine import StreamEngine, StreamSettings, call_control, call_mask

        call = template.job.call
        given = (call.lora_scales, call.vae_tile_size)
        if any(value is not None for value in given):
            raise InputError(
                "the stream options (stream_batch, rcfg, similarity, max_skip, feedback) run "
                "with the loaded LoRAs' scales and whole VAE decoding: leave out lora_scales and "
                "vae_tile_size, or the options"
            )
        decoded = self._job(template).call  # (its control images and mask, once)
        settings = StreamSettings.from_call(
            call, template.sampler, control=call_control(decoded), mask=call_mask(decoded),
            **options,
        )  # fmt: skip
        return StreamEngine(self.pipe, settings)

    async def push_frame(self, engine, lock: threading.Lock, request: ImageRequest, tag,
                         deadline: float):  # fmt: skip
        """Push one stream frame into its StreamEngine once a run slot is free (the HTTP
        requests' admission): (the StreamFrame that came out, its Result), or None while the
        stream batch fills. Busy, Closed or Expired as admit_and_run."""
        loop = asyncio.get_running_loop()
        await self.admission.acquire(deadline)
        started = time.monotonic()

        def work():
            image = decode_image(request.data, request.name, self.options.max_pixels)
            with lock:  # (a frame that outlived its deadline may still run)
                out = engine.push(image, tag)
            return None if out is None else (out, _encode(request, [out.image]))

        try:
            running = loop.run_in_executor(self.executor, work)
        except BaseException:
            self.admission.release()
            raise

        def finished(future: asyncio.Future) -> None:
            self.admission.release()
            if not future.cancelled() and future.exception() is None:
                self.admission.observe(time.monotonic() - started)

        running.add_done_callback(finished)
        try:
            return await asyncio.wait_for(asyncio.shield(running), deadline - loop.time())
        except asyncio.TimeoutError:
            raise Expired() from None

    def _labels_fit(self, request: ImageRequest) -> ImageRequest:
        """`request`, refused before it runs where its outputs could not carry their labels (a
        JPEG's metadata holds 64 KiB: a prompt of 20,000 '<' escapes past it), by encoding a
        small image with the labels its images will have."""
        call = request.job.call
        labels = {
            **setting_labels(call, request.sampler),
            "fastimg:backend": self.pipe.backend,
            "fastimg:precision": self.pipe.precision,
            **self.pipe.model_info,
            "fastimg:index": call.num_images_per_prompt - 1,
            **({"fastimg:source": request.source} if request.source else {}),
        }
        encode_image(Image.new("RGB", (8, 8)), labels, request.fmt, request.quality)
        return request

    def image_size(self, request: ImageRequest) -> tuple[int, int] | None:
        """The image's (width, height) from its header: over the pixel limit, refused (413); a
        file that is no image is refused as the CLI refuses it (422). Nothing is decoded but a
        file whose header Pillow cannot read, for the loader's message."""
        pictures = [("control_image", data) for data in request.controls]
        for field, data in (*pictures, ("mask", request.mask)):
            if data is not None:  # resized to the image's size: only the pixel limit
                name = f"{field} of {request.name}"
                if check_pixels(data, name, self.options.max_pixels) is None:
                    decode_image(data, name, self.options.max_pixels)
        size = check_pixels(request.data, request.name, self.options.max_pixels)
        if size is None:
            decode_image(request.data, request.name, self.options.max_pixels)
        elif self.pipe is not None:  # sides these engines cannot take: refused before decoding
            multiple, pipe = self.pipe.manifest.vae_scale_factor, self.pipe
            limit = pipe.engines.side_limit(
                pipe.device, request.job.call.vae_tile_size, pipe.max_side
            )
            width, height = check_sides(size, multiple, *limit)
            self._check_cost(request, width, height)
        return size

    def _check_cost(self, request: ImageRequest, width: int, height: int) -> None:
        """Refuse (422, with the numbers) a request over the server's budget of megapixel-steps
        or of response bytes, before it waits for a slot."""
        o, images = self.options, request.job.call.num_images_per_prompt
        passes = request.unet_steps + 2
        cost = width * height / 1e6 * images * passes
        if cost > o.max_megapixel_steps:
            raise InputError(
                f"this request costs {cost:.1f} megapixel-steps ({width}x{height} px x {images} "
                f"image(s) x ({request.unet_steps} UNet steps + 2 VAE passes)), over the "
                f"{o.max_megapixel_steps:g} this server takes (--max-megapixel-steps): ask for "
                "fewer images or steps, or a smaller image"
            )
        raw = width * height * 3 * images
        if raw > o.max_response_bytes:
            raise InputError(
                f"{images} image(s) of {width}x{height} px make up to {raw / 2**20:.0f} MiB, over "
                f"the {o.max_response_bytes / 2**20:.0f} MiB a response may hold "
                "(--max-response-mb): ask for fewer images, or a smaller one"
            )

    async def admit_and_run(self, request: ImageRequest, abort: threading.Event, deadline: float):
        """Wait for a slot, then run with the waiters that can share the run (same batch key,
        up to max_batch in all); or ride in the run of the holder that took this request.
        Returns the request's Result; Busy, Closed, Expired or the run's error otherwise."""
        loop = asyncio.get_running_loop()
        queued = time.monotonic()
        entry = Entry(request, abort, loop.create_future())
        entry.result.add_done_callback(retrieve)  # (its client may be gone by then)
        key = request.batch_key if self.max_batch > 1 else None
        holds = await self.admission.acquire(deadline, key, entry)
        started = time.monotonic()
        self.metrics.queue_wait.observe(started - queued)
        if holds:
            entries = [entry]
            if key is not None:
                entries += self.admission.take(key, self.max_batch - 1)
            try:
                running = loop.run_in_executor(self.executor, self._work, entries)
            except BaseException as exc:  # (the executor is shut down)
                self.admission.release()
                for rider in entries[1:]:
                    rider.result.set_exception(Closed() if isinstance(exc, RuntimeError) else exc)
                raise
            # The slot is held until the thread is done, even when nobody awaits it any more.
            running.add_done_callback(functools.partial(self._finished, started, entries))
        try:
            return await asyncio.wait_for(asyncio.shield(entry.result), deadline - loop.time())
        except asyncio.TimeoutError:  # (the caller stops the run)
            raise Expired() from None

    def _finished(self, started: float, entries: list[Entry], running: asyncio.Future) -> None:
        """Free the slot and hand each request of the run its Result or error."""
        self.admission.release()
        error = asyncio.CancelledError() if running.cancelled() else running.exception()
        if error is None:
            self.admission.observe(time.monotonic() - started)
        outcomes = [error] * len(entries) if error is not None else running.result()
        for entry, outcome in zip(entries, outcomes, strict=True):
            if entry.result.done():
                continue
            if isinstance(outcome, BaseException):
                entry.result.set_exception(outcome)
            else:
                entry.result.set_result(outcome)

    def _work(self, entries: list[Entry]) -> list:
        """Decode, run (as one batch when there are several) and encode, in a worker thread;
        each entry's Result, or the error that ended it."""

        def nobody_waits() -> bool:
            """Whether every request of the run has gone (its client left, its deadline passed)."""
            return all(entry.abort.is_set() for entry in entries)

        def callback(step: int, total: int) -> None:
            """Stop the run between UNet steps once no request of it is waiting any more."""
            self.last_step = (step, total)  # (the newest run's, for A1111's /progress)
            if nobody_waits():
                raise Aborted()

        outcomes: list = [None] * len(entries)
        decoded = []
        for k, entry in enumerate(entries):
            try:
                if entry.abort.is_set():
                    raise Aborted()
                request = entry.request
                image = decode_image(request.data, request.name, self.options.max_pixels)
                decoded.append((k, image, self._job(request)))
            except (Aborted, InputError) as exc:
                outcomes[k] = exc
        for k, results in self._transform(entries, decoded, callback, nobody_waits):
            if isinstance(results, BaseException):
                outcomes[k] = results
                continue
            if entries[k].abort.is_set():  # gone: its images are not encoded
                outcomes[k] = Aborted()
                continue
            try:  # one request's output that cannot be written fails that request alone
                outcomes[k] = _encode(entries[k].request, results)
            except InputError as exc:
                outcomes[k] = exc
        return outcomes

    def _job(self, request: ImageRequest):
        """The request's job, its control images and mask (if any) decoded within the pixel
        limit."""
        pictures, where = {}, f"of {request.name}"
        if request.controls:
            made = tuple(decode_image(data, f"control_image {where}", self.options.max_pixels)
                         for data in request.controls)  # fmt: skip
            pictures["control_image"] = made[0] if len(made) == 1 else made
        if request.mask is not None:
            pictures["mask_image"] = decode_image(request.mask, f"mask {where}",
                                                  self.options.max_pixels)  # fmt: skip
        if not pictures:
            return request.job
        return dataclasses.replace(request.job, call=request.job.call.with_values(**pictures))

    def _transform(self, entries: list[Entry], decoded: list, callback, should_stop):
        """(index, images or error) of each decoded request: one batched run, or, when the
        batch is refused as a whole (one request's input), each request alone."""
        jobs = [(job, image, entries[k].request.sampler) for k, image, job in decoded]
        if not jobs:
            return []
        self.metrics.batch.observe(len(jobs))
        if len(jobs) > 1:
            try:
                made = runner.transform_many(self.pipe, jobs, callback, should_stop)
                return [(k, images) for (k, *_), images in zip(decoded, made, strict=True)]
            except Cancelled:
                return [(k, Aborted()) for k, *_ in decoded]
            except InputError:
                pass
        done = []
        for (k, *_), job in zip(decoded, jobs, strict=True):
            try:
                done.append((k, runner.transform(self.pipe, *job, callback, should_stop)))
            except (Aborted, Cancelled, InputError) as exc:
                if len(jobs) == 1:
                    raise
                done.append((k, exc))
        return done

    # --- what the engines are ------------------------------------------------------------------

    def info(self) -> dict:
        """/v1/info: the model, backend, limits and the settings accepted (engines loaded)."""
        pipe, o = self.pipe, self.options
        manifest = pipe.manifest
        return {
            "model": pipe.model_info.get("fastimg:model"),
            "model_hash": pipe.model_info.get("fastimg:model_hash"),
            "family": manifest.model_family,
            "backend": pipe.backend,
            "precision": pipe.precision,
            "exact": pipe.exact,
            "max_side": pipe.max_side,
            "size_multiple": manifest.vae_scale_factor,
            "max_pixels": o.max_pixels,
            "max_upload_bytes": o.max_upload_bytes,
            "max_images": MAX_IMAGES,
            "sdxl_fields": list(SDXL_FIELDS) if manifest.text_conditioning else [],
            # ControlNets, in the order control images go to them (none: no control fields)
            "controlnets": controlnet_names(manifest),
            "control_preprocessors": control_preprocessors(manifest),
            "samplers": list(SAMPLERS),
            "default_sampler": runtime_sampler(manifest.scheduler),
            "formats": list(FORMATS),
            "workers": o.workers,
            "max_queue": o.max_queue,
            "timeout": o.timeout,
            "loras": dict(pipe.loras.adapters.scales),  # preloaded (serve --lora): lora_scales
        }


def control_preprocessors(manifest: Manifest) -> list[str]:
    """The preprocessors a request may name ([]: no ControlNet; depth: with a depth model)."""
    if not manifest.control:
        return []
    return [p for p in CONTROL_PREPROCESSORS if p not in MODEL_PREPROCESSORS or manifest.depth]


def controlnet_names(manifest: Manifest) -> list[str]:
    """The engine folder's ControlNets by component name, in ControlNet order ([]: none)."""
    return [c["component"] for c in (manifest.control or {}).get("controlnets", [])]


def _encode(request: ImageRequest, images: list) -> Result:
    """The images encoded in the request's format, with their labels, and their settings."""
    source = {"fastimg:source": request.source} if request.source else {}
    encoded = [
        encode_image(image, {**image.info, **source}, request.fmt, request.quality)
        for image in images
    ]
    settings = {k: v for k, v in images[0].info.items() if k.startswith("fastimg:")}
    settings.pop("fastimg:index", None)
    return Result({**settings, **source}, encoded)


def internal_error(what: str) -> str:
    """The message a client gets for a failure that is fastimg's own: an id to quote, with the
    traceback logged under it here (the client learns nothing of the server's internals). Call
    it while handling the exception."""
    incident = secrets.token_hex(4)
    log.exception("%s failed (incident %s)", what, incident)
    return f"internal error (incident {incident}): the server's log has the details"


def retrieve(task: asyncio.Future) -> None:
    """Consume a finished task's exception (one that no one awaits would be logged)."""
    if not task.cancelled():
        task.exception()
