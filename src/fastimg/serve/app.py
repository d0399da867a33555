"""The HTTP API: one Img2ImgPipeline, loaded once, behind admission, on uvicorn.

    GET  /v1/health    200 {"status": "ready"} once the engines are loaded, else 503
    GET  /v1/info      model, backend, precision, sizes and samplers accepted
    POST /v1/img2img   multipart (file `image` + fields) or JSON (`image` as base64)
    GET  /metrics      Prometheus text
    GET  /             the web page (static/; served without a key: it holds no secrets)
    WS   /v1/stream    webcam frames in, transformed JPEGs out; the newest frame wins

A request is read within the upload limit, its fields checked as the CLI checks them (422),
its image header checked against the pixel limit (413), then it waits for a run slot (429
when the queue is full, 504 past its deadline) and runs in a worker thread, never on the
event loop. A client that goes away is dropped from the queue, or stopped at the next step.
"""

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import re
import secrets
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import Counter
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocketDisconnect
from uvicorn.server import HANDLED_SIGNALS

from ..backends.registry import serve_batch
from ..cli.batch import FORMATS, GUIDANCE, SEED, STEPS, STRENGTH, Pair
from ..diffusion.schedules import SAMPLERS, default_sampler
from ..errors import EngineError, FastImgError, InputError
from ..media.images import MAX_PIXELS, load_image
from ..media.labels import save_image
from ..settings import BY_KEY, MAX_IMAGES, SEED_LIMIT, from_fields
from ..workflows import runner
from ..workflows.jobs import Job
from ..workflows.sources import Source
from .admission import (
    Admission,
    Busy,
    Closed,
    Expired,
    TooLarge,
    authorized,
    check_length,
    check_pixels,
    limited,
)
from .metrics import Metrics
from .stream import Stream, open_stream, retrieve

log = logging.getLogger("fastimg")

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
# The request fields, each checked by the CLI's own type for its option.
NUMBERS = {
    "strength": STRENGTH,
    "steps": STEPS,
    "guidance": GUIDANCE,
    "seed": SEED,
    "num_images": click.IntRange(1, MAX_IMAGES),
    "quality": click.IntRange(1, 100),
}
CHOICES = {"sampler": click.Choice(SAMPLERS), "format": click.Choice(FORMATS, case_sensitive=False)}
TEXTS = ("prompt", "negative_prompt")
# SDXL folders only (StableDiffusionXLImg2ImgPipeline's names, checked as `fastimg transform`
# checks its --prompt-2 ... options): texts, HEIGHTxWIDTH or [h, w] pairs, and scores.
SDXL_TEXTS = ("prompt_2", "negative_prompt_2")
SDXL_PAIRS = ("original_size", "crops_coords_top_left", "target_size")
SDXL_SCORES = {"aesthetic_score": click.FLOAT, "negative_aesthetic_score": click.FLOAT}
SDXL_FIELDS = (*SDXL_TEXTS, *SDXL_PAIRS, *SDXL_SCORES)
FIELDS = ("image", *TEXTS, *NUMBERS, *CHOICES, *SDXL_FIELDS)
MAX_FIELD_BYTES = 1 << 20  # a text field of a multipart body (prompts are 20,000 chars at most)
MAX_SETTINGS_HEADER = 8192  # clients refuse response headers much beyond this
SHORT_PROMPT = 200  # characters of a prompt kept when the settings header would be too long
UNSAFE_NAME_CHARS = re.compile(r"[^\w.-]")
STATIC = Path(__file__).parent / "static"
# The page's resources come from this server only (it must work offline, too).
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
               "connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'")  # fmt: skip
# The stream's settings: the transform's fields less those of one request's output.
STREAM_FIELDS = (*TEXTS, "strength", "steps", "guidance", "seed", "sampler", "quality",
                 *SDXL_FIELDS)  # fmt: skip


@dataclass(frozen=True)
class ServeOptions:
    """How `fastimg serve` runs: the engines and their options, and the admission limits."""

    engines: Path | None = None
    backend: str = "auto"
    precision: str = "auto"
    device: int | None = None
    shapes: str = "dynamic"
    workers: int = 1  # requests running at once (the pipeline's max_concurrency)
    max_batch: int | None = None  # requests per engine run (None: the backend's serve_batch)
    threads: int | None = None  # CPU threads of the pipeline (None: every core here)
    max_queue: int = 16  # requests waiting beyond those
    timeout: float = 300.0  # seconds from arrival to response, at most
    max_upload_bytes: int = 20 << 20
    max_pixels: int = MAX_PIXELS
    api_key: str | None = None
    cors: tuple[str, ...] = ()


class Refusal(Exception):
    """A request answered with an error status and {"detail": message}."""

    def __init__(self, status: int, message: str, outcome: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.outcome, self.headers = status, outcome or str(status), headers

    def response(self) -> Response:
        return JSONResponse({"detail": str(self)}, status_code=self.status, headers=self.headers)


class Aborted(Exception):
    """Raised between engine steps to stop a run whose client left or whose deadline passed."""


@dataclass(frozen=True)
class Upload:
    """A checked request: its job, the image bytes, and how to encode the result."""

    job: Job
    sampler: str
    data: bytes
    name: str
    source: str | None  # the uploaded file's name, labelled into the outputs
    fmt: str
    quality: int | None
    size: tuple[int, int] | None = None  # (width, height) from the image's header

    @property
    def batch_key(self) -> tuple | None:
        """What requests run in one batch share (their prompts, seeds and images differ);
        None for a request that runs alone (several images, or a size not known yet)."""
        call = self.job.call
        if self.size is None or call.num_images_per_prompt != 1:
            return None
        return (self.size, self.sampler, call.num_inference_steps, call.strength,
                call.guidance_scale)  # fmt: skip


@dataclass
class Entry:
    """A request admitted to a run: its upload, its stop flag, and where its Result goes."""

    upload: Upload
    abort: threading.Event
    result: asyncio.Future


@dataclass(frozen=True)
class Result:
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
        self.streams: set[Stream] = set()
        self.frames = Counter(
            "fastimg_stream_frames",
            "Frames received on /v1/stream by outcome (ok, dropped, error, busy)",
            ["outcome"],
            registry=self.metrics.registry,
        )

    def _load_engines(self):
        from ..diffusion.pipeline import Img2ImgPipeline

        o = self.options
        pipe = Img2ImgPipeline.from_engines(
            o.engines,
            backend=o.backend,
            precision=o.precision,
            threads=o.threads,
            max_concurrency=o.workers,
            device=o.device,
            shapes=o.shapes,
        )
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

    # --- a request -----------------------------------------------------------------------------

    async def img2img(self, request: Request) -> Response:
        arrived = time.monotonic()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.timeout
        try:
            if self.state != "ready" or self.admission.closed:
                raise Refusal(503, self._unavailable())
            upload = await self._read(request)
            size = await asyncio.to_thread(self._check_image, upload)
            upload = dataclasses.replace(upload, size=size)
            result = await self._run(request, upload, deadline)
        except Refusal as exc:
            self.metrics.count(exc.outcome)
            return exc.response()
        except TooLarge as exc:
            return self._refuse(413, str(exc))
        except InputError as exc:
            return self._refuse(422, str(exc))
        except Busy as exc:
            return self._refuse(429, str(exc), headers={"Retry-After": str(exc.retry_after)})
        except Closed as exc:
            return self._refuse(503, str(exc))
        except Expired:
            message = f"no result within the server's deadline of {self.options.timeout:g} s"
            return self._refuse(504, f"{message}: try again later", "timeout")
        except (ClientDisconnect, _Gone):
            self.metrics.count("disconnected")
            return Response(status_code=499)  # nobody is there to read it
        except FastImgError as exc:
            return self._refuse(500, str(exc), "error")
        except Exception as exc:
            log.exception("img2img request failed")
            return self._refuse(500, f"internal error: {type(exc).__name__}: {exc}", "error")
        self.metrics.count("ok")
        self.metrics.images.inc(len(result.encoded))
        self.metrics.latency.observe(time.monotonic() - arrived)
        return _respond(result, upload.fmt)

    def _refuse(self, status: int, message: str, outcome=None, headers=None) -> Response:
        refusal = Refusal(status, message, outcome, headers)
        self.metrics.count(refusal.outcome)
        return refusal.response()

    def _unavailable(self) -> str:
        if self.state == "loading":
            return "the engines are still loading: retry when /v1/health says ready"
        if self.state == "failed":
            return f"the engines could not be loaded: {self.error}"
        return "the server is shutting down: send the request to another instance"

    async def _read(self, request: Request) -> Upload:
        """The request's fields and image, read within the upload limit and checked."""
        limit = self.options.max_upload_bytes
        check_length(request.headers.get("content-length"), limit)
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        body = limited(request.stream(), limit)
        if kind == "multipart/form-data":
            fields, data, source = await _read_multipart(request, body)
        elif kind == "application/json":
            fields, data, source = _read_json(b"".join([chunk async for chunk in body]))
        else:
            raise Refusal(
                415,
                "send multipart/form-data (the file `image` and the fields) or "
                "application/json (`image` as base64 and the fields)",
            )
        return self._upload(fields, data, source)

    def _upload(self, fields: dict, data: bytes, source: str | None) -> Upload:
        unknown = [key for key in fields if key not in FIELDS]
        if unknown:
            raise InputError(f"unknown field {unknown[0]!r}: the fields are {', '.join(FIELDS)}")
        values = {key: _convert(key, value) for key, value in fields.items() if value is not None}
        if "prompt" not in values:
            raise InputError("prompt is required: what the image should become")
        values.setdefault("seed", secrets.randbelow(SEED_LIMIT))
        values["negative_prompt"] = values.get("negative_prompt") or None
        name = _safe_name(source)
        call = from_fields({k: v for k, v in values.items() if k in BY_KEY}, parse=False)
        job = Job(Source(Path(name)), call)
        (checked,) = runner.check_jobs(self.pipe.manifest, [job])
        sampler = checked.sampler
        fmt = values.get("format", "png").lower()
        source = name if source else None
        return Upload(job, sampler, data, name, source, fmt, values.get("quality"))

    def _check_image(self, upload: Upload) -> tuple[int, int] | None:
        """The image's (width, height) from its header: over the pixel limit, refused (413); a
        file that is no image is refused as the CLI refuses it (422). Nothing is decoded."""
        size = check_pixels(upload.data, upload.name, self.options.max_pixels)
        if size is None:
            with _scratch() as folder:
                _load(folder, upload, self.options.max_pixels)  # raises the loader's message
        return size

    async def _run(self, request: Request, upload: Upload, deadline: float) -> Result:
        """Wait for a slot and run, while watching for the client to leave."""
        abort = threading.Event()
        gone = asyncio.ensure_future(_disconnected(request))
        work = asyncio.ensure_future(self._admit_and_run(upload, abort, deadline))
        work.add_done_callback(retrieve)  # its error may come after nobody awaits it
        try:
            await asyncio.wait({gone, work}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                return work.result()
            raise _Gone()
        finally:
            gone.cancel()
            abort.set()  # a run still going (client gone, deadline passed) stops at its next step
            if not work.done():
                work.cancel()  # a queued request leaves the queue without running
                await asyncio.wait({work})

    async def _admit_and_run(self, upload: Upload, abort: threading.Event, deadline: float):
        """Wait for a slot, then run with the waiters that can share the run (same batch key,
        up to max_batch in all); or ride in the run of the holder that took this request."""
        loop = asyncio.get_running_loop()
        queued = time.monotonic()
        entry = Entry(upload, abort, loop.create_future())
        entry.result.add_done_callback(retrieve)  # (its client may be gone by then)
        key = upload.batch_key if self.max_batch > 1 else None
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

        def callback(step: int, total: int) -> None:
            if all(entry.abort.is_set() for entry in entries):
                raise Aborted()

        outcomes: list = [None] * len(entries)
        with _scratch() as folder:
            ready = []
            for k, entry in enumerate(entries):
                try:
                    if entry.abort.is_set():
                        raise Aborted()
                    ready.append((k, _load(folder / str(k), entry.upload, self.options.max_pixels)))
                except (Aborted, InputError) as exc:
                    outcomes[k] = exc
            for k, results in self._transform(entries, ready, callback):
                if isinstance(results, BaseException):
                    outcomes[k] = results
                    continue
                upload = entries[k].upload
                outcomes[k] = _encode(folder / str(k), upload, results)
        return outcomes

    def _transform(self, entries: list[Entry], ready: list, callback):
        """(index, images or error) of each decoded request: one batched run, or, when the
        batch is refused as a whole (one request's input), each request alone."""
        jobs = [(entries[k].upload.job, image, entries[k].upload.sampler) for k, image in ready]
        if not jobs:
            return []
        self.metrics.batch.observe(len(jobs))
        if len(jobs) > 1:
            try:
                made = runner.transform_many(self.pipe, jobs, callback)
                return [(k, images) for (k, _), images in zip(ready, made, strict=True)]
            except InputError:
                pass
        done = []
        for (k, _), job in zip(ready, jobs, strict=True):
            try:
                done.append((k, runner.transform(self.pipe, *job, callback)))
            except (Aborted, InputError) as exc:
                if len(jobs) == 1:
                    raise
                done.append((k, exc))
        return done

    # --- a stream ------------------------------------------------------------------------------

    async def stream(self, websocket: WebSocket) -> None:
        """/v1/stream: the protocol and its refusals are in fastimg.serve.stream."""
        await open_stream(self, websocket)

    def _stream_settings(self, message: dict) -> Upload:
        """The stream's first message checked as a request's fields are: an Upload to fill
        with each frame."""
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        try:
            fields = json.loads(message.get("text") or "")
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            raise InputError('send the settings first, as a JSON text message: {"prompt": ...}')
        unknown = [key for key in fields if key not in STREAM_FIELDS]
        if unknown:
            raise InputError(f"unknown setting {unknown[0]!r}: the settings are "
                             f"{', '.join(STREAM_FIELDS)}")  # fmt: skip
        return self._upload({**fields, "format": "jpeg"}, b"", None)

    # --- the other endpoints -------------------------------------------------------------------

    def health(self) -> JSONResponse:
        if self.state == "ready" and not self.admission.closed:
            return JSONResponse({"status": "ready"})
        body = {"status": self.state}
        if self.error:
            body["detail"] = self.error
        return JSONResponse(body, status_code=503)

    def info(self) -> JSONResponse:
        if self.pipe is None:
            return JSONResponse({"detail": self._unavailable()}, status_code=503)
        pipe, o = self.pipe, self.options
        manifest = pipe.manifest
        return JSONResponse(
            {
                "model": pipe.model_info.get("fastimg:model"),
                "model_hash": pipe.model_info.get("fastimg:model_hash"),
                "family": manifest.data.get("model_family"),
                "backend": pipe.backend,
                "precision": pipe.precision,
                "exact": pipe.exact,
                "max_side": pipe.max_side,
                "size_multiple": manifest.vae_scale_factor,
                "max_pixels": o.max_pixels,
                "max_upload_bytes": o.max_upload_bytes,
                "max_images": MAX_IMAGES,
                "sdxl_fields": list(SDXL_FIELDS) if manifest.text_conditioning else [],
                "samplers": list(SAMPLERS),
                "default_sampler": default_sampler(manifest.scheduler) or "ddim",
                "formats": list(FORMATS),
                "workers": o.workers,
                "max_queue": o.max_queue,
                "timeout": o.timeout,
            }
        )

    def render_metrics(self) -> Response:
        content, media_type = self.metrics.render()
        return Response(content, media_type=media_type)


class _Gone(Exception):
    """The client disconnected before its result was ready."""


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body is read by then: only that can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read_multipart(request: Request, body) -> tuple[dict, bytes, str | None]:
    parser = MultiPartParser(
        request.headers,
        body,
        max_files=1,
        max_fields=len(FIELDS),
        max_part_size=MAX_FIELD_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise Refusal(400, f"the multipart body cannot be read: {exc.message}") from None
    try:
        fields, upload = {}, None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "image":
                    raise InputError(f"the file goes in the field 'image', not {key!r}")
                upload = value
            elif key == "image":
                raise InputError("the field 'image' must be a file (the picture), not text")
            elif key in fields:
                raise InputError(f"the field {key!r} is given twice: give it once")
            else:
                fields[key] = value
        if upload is None:
            raise InputError("no image: send the picture as the file field 'image'")
        return fields, await upload.read(), upload.filename or None
    finally:
        await form.close()


def _read_json(raw: bytes) -> tuple[dict, bytes, None]:
    try:
        fields = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Refusal(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise InputError('the JSON body must be an object: {"image": base64, "prompt": ...}')
    image = fields.pop("image", None)
    if not isinstance(image, str) or not image:
        raise InputError("no image: send the picture as base64 text in the field 'image'")
    if image.startswith("data:"):  # a data URL, as a browser's FileReader makes it
        image = image.partition(",")[2]
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("the field 'image' is not valid base64") from None
    return fields, data, None


def _convert(key: str, value):
    """A field's value checked by the CLI's type for it (same ranges, same messages)."""
    if key in TEXTS or key in SDXL_TEXTS:
        if not isinstance(value, str):
            raise InputError(f"Invalid value for {key!r}: {value!r} is not text.")
        return value
    if key in SDXL_PAIRS:
        if (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            value = f"{value[0]}x{value[1]}"  # (JSON: [height, width])
        if not isinstance(value, str):
            raise InputError(f"Invalid value for {key!r}: {value!r} is not HEIGHTxWIDTH.")
        try:
            return Pair().convert(value, None, None)
        except click.BadParameter as exc:
            raise InputError(f"Invalid value for {key!r}: {exc.message}") from None
    kind = NUMBERS.get(key) or CHOICES.get(key) or SDXL_SCORES[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        what = "text" if key in CHOICES else "a number"
        raise InputError(f"Invalid value for {key!r}: {value!r} is not {what}.")
    if isinstance(kind, click.IntRange) and isinstance(value, float):
        if not value.is_integer():
            raise InputError(f"Invalid value for {key!r}: {value!r} is not a valid integer.")
        value = int(value)
    try:
        converted = kind.convert(value, None, None)
    except click.BadParameter as exc:
        raise InputError(f"Invalid value for {key!r}: {exc.message}") from None
    if isinstance(converted, float) and not math.isfinite(converted):
        raise InputError(f"Invalid value for {key!r}: {value!r} is not a finite number.")
    return converted


def _safe_name(filename: str | None) -> str:
    """A file name for an upload: its base name in safe characters, or `upload`."""
    name = UNSAFE_NAME_CHARS.sub("_", Path(filename or "").name).lstrip(".")[:100]
    return name or "upload"


@contextlib.contextmanager
def _scratch():
    """A private folder for one request's files, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fastimg-serve-") as folder:
        yield Path(folder)


def _encode(folder: Path, upload: Upload, results: list) -> Result:
    """The images encoded in the upload's format, with their labels, and their settings."""
    source = {"fastimg:source": upload.source} if upload.source else {}
    encoded = []
    for k, result in enumerate(results):
        path = folder / "out" / f"{k}{SUFFIXES[upload.fmt]}"
        save_image(result, path, {**result.info, **source}, upload.fmt, upload.quality)
        encoded.append(path.read_bytes())
    settings = {k: v for k, v in results[0].info.items() if k.startswith("fastimg:")}
    settings.pop("fastimg:index", None)
    return Result({**settings, **source}, encoded)


def _load(folder: Path, upload: Upload, max_pixels: int):
    """The upload decoded as `fastimg transform` decodes a file (load_image), its messages
    naming the upload rather than the scratch folder."""
    path = folder / "in" / upload.name
    path.parent.mkdir(parents=True)
    path.write_bytes(upload.data)
    try:
        return load_image(path, max_pixels=max_pixels)
    except InputError as exc:
        raise InputError(str(exc).replace(f"{path.parent}{os.sep}", "")) from None


def _respond(result: Result, fmt: str) -> Response:
    seed = result.settings.get("fastimg:seed")
    headers = {"X-Fastimg-Seed": str(seed), "X-Fastimg-Settings": _settings_header(result.settings)}
    if len(result.encoded) == 1:
        return Response(result.encoded[0], media_type=MEDIA_TYPES[fmt], headers=headers)
    images = [
        {"data": base64.b64encode(data).decode("ascii"), "format": fmt, "seed": seed, "index": k}
        for k, data in enumerate(result.encoded)
    ]
    return JSONResponse({"images": images, "settings": result.settings}, headers=headers)


def _settings_header(settings: dict) -> str:
    """The settings as ASCII JSON; prompts are shortened when the header would be too long
    (the images carry them whole)."""
    text = json.dumps(settings, ensure_ascii=True, separators=(",", ":"))
    if len(text) <= MAX_SETTINGS_HEADER:
        return text
    short = dict(settings)
    for key in ("fastimg:prompt", "fastimg:negative_prompt"):
        if len(str(short.get(key, ""))) > SHORT_PROMPT:
            short[key] = str(short[key])[:SHORT_PROMPT] + "..."
    short["fastimg:shortened"] = True
    text = json.dumps(short, ensure_ascii=True, separators=(",", ":"))
    if len(text) <= MAX_SETTINGS_HEADER:
        return text
    return json.dumps({"fastimg:seed": settings.get("fastimg:seed"), "fastimg:shortened": True})


# --- the app -----------------------------------------------------------------------------------


def create_app(options: ServeOptions, load=None, wait_for_engines: bool = False) -> FastAPI:
    """The FastAPI app; `load` (for tests) returns a pipeline in place of loading the engines.

    The engines load in the background once the app starts (the lifespan), so that health can
    say "loading" meanwhile; with `wait_for_engines` (a Ray Serve replica, which takes traffic
    once its start-up ends) the start-up waits for them and fails if they cannot be loaded.
    `app.state.service` is the Service.
    """
    service = Service(options, load)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.loop = asyncio.get_running_loop()
        loading = asyncio.ensure_future(service.load())
        if wait_for_engines:
            await loading
            if service.state == "failed":
                raise EngineError(f"the engines could not be loaded: {service.error}")
        try:
            yield
        finally:
            service.stop()
            loading.cancel()
            await asyncio.to_thread(service.executor.shutdown, True)  # running jobs end

    async def authorize(request: Request) -> None:
        key = options.api_key
        if key and not authorized(request.headers.get("authorization"), key):
            if request.url.path == "/v1/img2img":
                service.metrics.count("401")
            raise HTTPException(
                401,
                "missing or wrong API key: send the header  Authorization: Bearer KEY",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app = FastAPI(
        title="fastimg",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service
    if options.cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(options.cors),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Fastimg-Seed", "X-Fastimg-Settings", "Retry-After"],
        )
    guarded = [Depends(authorize)]

    @app.get("/v1/health")
    async def health() -> Response:
        return service.health()

    @app.get("/v1/info", dependencies=guarded)
    async def info() -> Response:
        return service.info()

    @app.post("/v1/img2img", dependencies=guarded)
    async def img2img(request: Request) -> Response:
        return await service.img2img(request)

    @app.get("/metrics", dependencies=guarded)
    async def metrics() -> Response:
        return service.render_metrics()

    @app.websocket("/v1/stream")
    async def stream(websocket: WebSocket) -> None:
        await service.stream(websocket)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    return app


class Server(uvicorn.Server):
    """uvicorn's server, whose SIGTERM (or SIGINT) also stops admission at once, and which
    exits normally after a graceful stop (uvicorn raises the signal again once stopped, which
    would end the process by the signal)."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig, frame) -> None:
        self.service.stop_soon()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def run_server(options: ServeOptions, host: str, port: int, load=None) -> None:
    """Run the API on host:port until SIGTERM or SIGINT; the engines load once it is up.

    On a signal it stops admitting, lets running requests finish, and returns. Engines that
    cannot be loaded stop the server with an EngineError.
    """
    app = create_app(options, load)
    service = app.state.service
    config = uvicorn.Config(app, host=host, port=port, log_level="info", server_header=False)
    server = Server(config, service)
    service.on_failure = lambda message: setattr(server, "should_exit", True)
    server.run()
    if service.state == "failed":
        raise EngineError(f"the engines could not be loaded: {service.error}")
