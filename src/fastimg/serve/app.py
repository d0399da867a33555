"""The HTTP API's routes: a thin layer over the Service (fastimg.serve.service).

    GET  /v1/health    200 {"status": "ready"} once the engines are loaded, else 503
    GET  /v1/info      model, backend, precision, sizes and samplers accepted
    POST /v1/img2img   multipart (file `image` + fields) or JSON (`image` as base64)
    GET  /metrics      Prometheus text
    GET  /             the web page (static/; served without a key: it holds no secrets)
    WS   /v1/stream    webcam frames in, transformed JPEGs out; the newest frame wins
    /sdapi/v1/...      A1111's API (compat_a1111): img2img, samplers, sd-models, options...
    POST /v1/images/edits  OpenAI's image edits (compat_openai); GET /v1/models

Every route first passes serve.guard (Host and Origin: 403). A request takes an upload place
(429 when uploads, waiters and runs fill the slots and the queue), is read within the upload
limit (413) at the least upload rate (408) and its deadline (504), its fields checked as the
CLI checks them (422), its image header against the pixel limit (413), the engines' sides and
the cost budget (422); then it waits for a run slot (429 when the queue is full, 504 past its
deadline) and runs in a worker thread, never on the event loop. A client that goes away is
dropped from the queue, or stopped at the next engine call.
"""

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import threading
import time
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.requests import ClientDisconnect
from starlette.staticfiles import StaticFiles

from ..errors import Cancelled, EngineError, FastImgError, InputError
from .admission import Busy, Closed, Expired, SlowUpload, TooLarge, authorized
from .compat_a1111 import add_a1111_routes
from .compat_openai import add_openai_routes
from .guard import RequestGuard, allowed_hosts
from .requests import ImageRequest, Refusal, read_body
from .service import Aborted, Result, ServeOptions, Service, internal_error, retrieve
from .stream import open_stream

log = logging.getLogger("fastimg")

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_SETTINGS_HEADER = 8192  # clients refuse response headers much beyond this
SHORT_PROMPT = 200  # characters of a prompt kept when the settings header would be too long
STATIC = Path(__file__).parent / "static"
# After a response of more than this many bytes is sent, the memory its images took (encoded,
# base64, JSON) goes back to the system, TRIM_DELAY seconds later, in a thread.
LARGE_RESPONSE, TRIM_DELAY = 4 * 2**20, 1.0
# The page's resources come from this server only (it must work offline, too).
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
               "connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'")  # fmt: skip


class ClientLeft(Exception):
    """The client disconnected before its result was ready."""


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
        """Load the engines in the background (or wait for them); stop gracefully at the end."""
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
        """401 without the API key (when there is one)."""
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
    app.add_middleware(
        RequestGuard, hosts=allowed_hosts(options.bind_host, options.allow_hosts), cors=options.cors
    )
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
        """200 {"status": "ready"} once requests are admitted, else 503 with the state."""
        if service.accepting:
            return JSONResponse({"status": "ready"})
        body = {"status": service.state}
        if service.error:
            body["detail"] = service.error
        return JSONResponse(body, status_code=503)

    @app.get("/v1/info", dependencies=guarded)
    async def info() -> Response:
        """What the engines are and what they take (503 until they are loaded)."""
        if service.pipe is None:
            return JSONResponse({"detail": service.unavailable_reason()}, status_code=503)
        return JSONResponse(service.info())

    @app.post("/v1/img2img", dependencies=guarded)
    async def img2img(request: Request) -> Response:
        """One image transformed (or several, as JSON)."""
        return await _img2img(service, request)

    @app.get("/metrics", dependencies=guarded)
    async def metrics() -> Response:
        """Prometheus text."""
        content, media_type = service.metrics.render()
        return Response(content, media_type=media_type)

    @app.websocket("/v1/stream")
    async def stream(websocket: WebSocket) -> None:
        """Frames in, transformed JPEGs out (the protocol is fastimg.serve.stream's)."""
        await open_stream(service, websocket)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        """The web page, its resources from this server only."""
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_a1111_routes(app, service, answer)
    add_openai_routes(app, service, answer)

    return app


async def _img2img(service: Service, request: Request) -> Response:
    """POST /v1/img2img: read, check, run."""

    async def work(deadline: float, run) -> tuple[Response, list[bytes]]:
        """The request read, checked and run: its response and its images."""
        o = service.options
        pace = (o.body_bytes_per_second, o.head_seconds, deadline)
        with service.admission.upload():
            body = await read_body(request, o.max_upload_bytes, pace)
        checked = service.check_request(body)
        size = await asyncio.to_thread(service.image_size, checked)
        checked = dataclasses.replace(checked, size=size)
        (result,) = await run([checked])
        return _respond(result, checked.fmt), result.encoded

    return await answer(service, request, work)


async def answer(service: Service, request: Request, work) -> Response:
    """A request answered by `work(deadline, run)` (it reads, checks and runs it with
    `run([checked, ...])` -> Results, and returns (response, images)); every refusal answered
    with its status and counted, as every route that runs the engines counts them."""
    arrived = time.monotonic()
    deadline = asyncio.get_running_loop().time() + service.options.timeout

    def refuse(status: int, message: str, outcome=None, headers=None) -> Response:
        """The refusal's response, counted under its outcome."""
        refusal = Refusal(status, message, outcome, headers)
        service.metrics.count(refusal.outcome)
        return refusal.response()

    def run(checked: list[ImageRequest], interrupt: threading.Event | None = None):
        """The checked requests run together while the client stays (ClientLeft otherwise);
        once `interrupt` is set they stop, and those stopped give None in place of a Result."""
        return _run_while_connected(service, request, checked, deadline, interrupt)

    try:
        if not service.accepting:
            raise Refusal(503, service.unavailable_reason())
        response, encoded = await work(deadline, run)
    except Refusal as exc:
        service.metrics.count(exc.outcome)
        return exc.response()
    except TooLarge as exc:
        return refuse(413, str(exc))
    except SlowUpload as exc:
        return refuse(408, str(exc), "timeout")
    except InputError as exc:
        return refuse(422, str(exc))
    except Busy as exc:
        return refuse(429, str(exc), headers={"Retry-After": str(exc.retry_after)})
    except Closed as exc:
        return refuse(503, str(exc))
    except Expired:
        message = f"no result within the server's deadline of {service.options.timeout:g} s"
        return refuse(504, f"{message}: try again later", "timeout")
    except (ClientDisconnect, ClientLeft):
        service.metrics.count("disconnected")
        return Response(status_code=499)  # nobody is there to read it
    except FastImgError as exc:
        return refuse(500, str(exc), "error")
    except Exception:
        return refuse(500, internal_error("img2img request"), "error")
    service.metrics.count("ok")
    service.metrics.images.inc(len(encoded))
    service.metrics.latency.observe(time.monotonic() - arrived)
    if sum(len(data) for data in encoded) > LARGE_RESPONSE:
        _give_back_memory_soon()
    return response


def _give_back_memory_soon() -> None:
    """Hand freed memory back to the system once a large response has been sent (glibc keeps
    it for reuse otherwise: hundreds of MB after a request of many large images)."""
    loop = asyncio.get_running_loop()
    loop.call_later(TRIM_DELAY, lambda: loop.run_in_executor(None, _give_back_memory))


def _give_back_memory() -> None:
    """Collect what reference cycles hold (a sent response can sit in one) and hand the freed
    memory back to the system."""
    import gc

    from ..machine import return_freed_memory

    gc.collect()
    return_freed_memory()


async def _run_while_connected(
    service: Service,
    request: Request,
    checked: list[ImageRequest],
    deadline: float,
    interrupt: threading.Event | None = None,
) -> list[Result | None]:
    """Wait for slots and run the requests (the service may batch them), while watching for
    the client to leave (ClientLeft); the first failure fails them all, except that once
    `interrupt` (their stop flag) is set, a request it stopped gives None."""
    abort = interrupt or threading.Event()
    left = asyncio.ensure_future(_disconnected(request))
    works = [asyncio.ensure_future(service.admit_and_run(one, abort, deadline)) for one in checked]
    for work in works:
        work.add_done_callback(retrieve)  # its error may come after nobody awaits it
    try:
        pending = set(works)
        while True:
            await asyncio.wait(pending | {left}, return_when=asyncio.FIRST_COMPLETED)
            for work in works:
                if work.done() and not _succeeded(work, interrupt):
                    work.result()  # raises its error
            pending = {work for work in works if not work.done()}
            if not pending:  # (done as the client leaves: answered, as before)
                return [None if work.exception() else work.result() for work in works]
            if left.done():
                raise ClientLeft()
    finally:
        left.cancel()
        abort.set()  # a run still going (client gone, deadline passed) stops at its next step
        unfinished = [work for work in works if not work.done()]
        for work in unfinished:
            work.cancel()  # a queued request leaves the queue without running
        if unfinished:
            await asyncio.wait(unfinished)


def _succeeded(work: asyncio.Future, interrupt: threading.Event | None) -> bool:
    """Whether a finished run gave its Result, or was stopped by `interrupt` once it was set."""
    if work.cancelled():
        return False
    error = work.exception()
    if error is None:
        return True
    return interrupt is not None and interrupt.is_set() and isinstance(error, (Aborted, Cancelled))


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body is read by then: only that can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _respond(result: Result, fmt: str) -> Response:
    """One image as the body, several as JSON; the seed and settings in headers."""
    seed = result.settings.get("fastimg:seed")
    headers = {"X-Fastimg-Seed": str(seed), "X-Fastimg-Settings": settings_header(result.settings)}
    if len(result.encoded) == 1:
        return Response(result.encoded[0], media_type=MEDIA_TYPES[fmt], headers=headers)
    images = [
        {"data": base64.b64encode(data).decode("ascii"), "format": fmt, "seed": seed, "index": k}
        for k, data in enumerate(result.encoded)
    ]
    return JSONResponse({"images": images, "settings": result.settings}, headers=headers)


def settings_header(settings: dict) -> str:
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
