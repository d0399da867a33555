"""/v1/stream: webcam frames in over a WebSocket, transformed JPEGs out; the newest frame wins.

    client: {"prompt": ..., "strength": ..., ...}  the settings, once (JSON text)
    server: {"type": "ready", "settings": {"prompt", "seed", "sampler"}}
    client: a frame (binary: JPEG, PNG or WebP), as often as it likes
    server: {"type": "result", "frame": n, "ms", "received", "dropped"}, then the
            transformed frame n as a binary JPEG message
    server: {"type": "error", "detail": ..., ["frame": n]}  a frame refused; the
            stream goes on
    client: {"prompt": ..., "seed": ...}  a change, mid-stream (JSON text): any of prompt,
            negative_prompt, seed, strength, guidance
    server: {"type": "updated", "settings": {"prompt", "seed", "strength", "guidance"}}; the
            change applies from the next frame transformed, without a warm-up

The settings are those of POST /v1/img2img but one image per frame, always JPEG (`quality`
applies; a `mask` and fixed `control_image`s come base64, once); a missing seed is drawn once,
for the whole stream. StreamDiffusion's options may come
with them (fastimg.stream.engine): "stream_batch" (true: frames at different steps share one
UNet batch, and a result is that of an earlier frame; while the batch fills, a frame taken in
is answered {"type": "pending", "frame": n, "received", "dropped"} instead), "rcfg"
("none", "self", "onetime", "full"), "similarity" (a threshold: a frame much like the last one
is skipped and the last output sent again, its result says "skipped": true), "max_skip",
"feedback" (with the control images and the mask too; not padding_mask_crop); without them
each frame is the single-image call, as before. A frame that arrives while
another is transformed waits in a slot of one: a newer frame replaces it (counted in
"dropped", the total so far, as "received" is). Each transform takes a run slot through the
same admission as the HTTP requests. With an API key, the client offers the subprotocol
fastimg.key.BASE64URL(KEY) (browsers cannot send headers; a query parameter would end up in
access logs) or sends Authorization: Bearer KEY; without it the handshake is refused (HTTP 403)
before anything is accepted. Refusals after it send an "error" message then close: 1008 for bad
settings, 1013 while the engines load, 1001 when the server is shutting down (after the frame
that runs is sent). Browsers may open it from this server's page and the --cors origins only
(serve.guard refuses the others' handshakes).
"""

import asyncio
import base64
import dataclasses
import hmac
import json
import logging
import threading
import time

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from ..errors import FastImgError, InputError
from .admission import Busy, Closed, Expired, TooLarge, authorized
from .requests import ImageRequest
from .service import Service, internal_error, retrieve

log = logging.getLogger("fastimg")

STREAM_PROTOCOL = "fastimg"  # the WebSocket subprotocol the server answers with
KEY_PROTOCOL = "fastimg.key."  # + the API key in base64url: a browser cannot send headers
# WebSocket close codes (RFC 6455, 7.4.1)
GOING_AWAY, POLICY, TRY_AGAIN = 1001, 1008, 1013
MAX_REASON_BYTES = 123  # a close frame's reason
# StreamDiffusion's options a stream's settings may carry, and the JSON types each takes.
# The settings a message may change while a stream runs (StreamEngine.update()'s).
UPDATABLE = ("prompt", "negative_prompt", "seed", "strength", "guidance")
ENGINE_OPTIONS = {"stream_batch": (bool,), "rcfg": (str,), "similarity": (int, float),
                  "max_skip": (int,), "feedback": (int, float)}  # fmt: skip


async def open_stream(service: Service, websocket: WebSocket) -> None:
    """Accept /v1/stream, check its origin, key and settings, then run it until the client
    leaves or the server stops."""
    offered = websocket.scope.get("subprotocols", [])
    key = service.options.api_key
    bearer = websocket.headers.get("authorization")
    if key and not (key_offered(offered, key) or authorized(bearer, key)):
        # Refused before the handshake completes (HTTP 403): nothing is accepted without the
        # key. (Pages from elsewhere were refused before this, by the RequestGuard.)
        await websocket.close(code=POLICY)
        return
    await websocket.accept(STREAM_PROTOCOL if STREAM_PROTOCOL in offered else None)
    client = websocket.client.host if websocket.client else "?"
    clients = service.stream_clients
    clients[client] = clients.get(client, 0) + 1
    try:
        if not service.accepting:
            code = GOING_AWAY if service.state == "stopping" else TRY_AGAIN
            await refuse_stream(websocket, code, service.unavailable_reason())
            return
        crowded = _crowded(service, client)
        if crowded:
            await refuse_stream(websocket, TRY_AGAIN, crowded)
            return
        try:
            wait = service.options.stream_settings_seconds
            first = await asyncio.wait_for(websocket.receive(), wait)
            first, options = engine_options(first)
            template = service.stream_request(first)
            engine = service.stream_engine(template, options) if options else None
        except asyncio.TimeoutError:  # (TimeoutError itself from Python 3.11 on)
            detail = f"no settings within {wait:g} s: send them first, as a JSON text message"
            await refuse_stream(websocket, POLICY, detail)
            return
        except InputError as exc:
            await refuse_stream(websocket, POLICY, str(exc))
            return
        settings = {"prompt": template.job.call.prompt, "seed": template.job.call.seed,
                    "sampler": template.sampler, **options}  # fmt: skip
        await websocket.send_json({"type": "ready", "settings": settings})
        fields = {**json.loads(first["text"]), "seed": template.job.call.seed}
        stream = Stream(service, websocket, template, engine, fields)
        service.streams.add(stream)
        if service.admission.closed:  # (stopped while the settings came)
            stream.stop()
        try:
            await stream.run()
        finally:
            service.streams.discard(stream)
    except WebSocketDisconnect:
        pass  # the client left
    finally:
        clients[client] -= 1
        if not clients[client]:
            del clients[client]


def engine_options(message: dict) -> tuple[dict, dict]:
    """The settings message less StreamDiffusion's options, and those options (checked for
    their JSON type; their values are the StreamEngine's to check)."""
    try:
        fields = json.loads(message.get("text") or "")
    except ValueError:
        return message, {}  # (stream_request says what is wrong with it)
    if not isinstance(fields, dict):
        return message, {}
    options = {key: fields.pop(key) for key in list(fields) if key in ENGINE_OPTIONS}
    for key, value in options.items():
        kinds = ENGINE_OPTIONS[key]
        wrong = isinstance(value, bool) and bool not in kinds
        if wrong or not isinstance(value, kinds) and not (key == "similarity" and value is None):
            raise InputError(f"{key} must be a JSON {kinds[0].__name__.replace('str', 'string')}"
                             f", got {value!r}")  # fmt: skip
    return {**message, "text": json.dumps(fields)}, options


def _crowded(service: Service, client: str) -> str | None:
    """Why one more stream socket is refused (this one counted already), or None."""
    options, open_now = service.options, sum(service.stream_clients.values())
    if open_now > options.max_streams:
        return f"{options.max_streams} streams are open, the most this server takes: try later"
    if service.stream_clients[client] > options.max_streams_per_client:
        return (
            f"{options.max_streams_per_client} streams from {client} are open, the most one "
            "client may have: close one first"
        )
    return None


class Stream:
    """One /v1/stream connection: a receiver keeps the newest frame in `newest`; `run`
    transforms whatever is newest each time the previous transform is done."""

    def __init__(self, service: Service, websocket: WebSocket, template: ImageRequest,
                 engine=None, fields: dict | None = None):  # fmt: skip
        self.service, self.websocket, self.template = service, websocket, template
        self.fields = fields or {}  # the settings as sent (the drawn seed in), for changes
        self.engine, self.engine_lock = engine, threading.Lock()  # (None: single calls)
        self.newest: tuple[int, bytes] | None = None
        self.received = self.dropped = 0
        self.changed = asyncio.Event()  # a frame came, the client left, or the server stops
        self.stopping = False
        self.sending = asyncio.Lock()  # a result's two messages go out together

    def stop(self) -> None:
        """End the stream: the frame that runs is sent, then it closes with 1001."""
        self.stopping = True
        self.changed.set()

    async def receive(self) -> None:
        """Take frames until the client leaves; a frame not yet taken is replaced (dropped)."""
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                await self._change(message.get("text"))
                continue
            self.received += 1
            if self.newest is not None:
                self.dropped += 1
                self.service.frames.labels("dropped").inc()
            self.newest = (self.received, data)
            self.changed.set()

    async def run(self) -> None:
        """Transform the newest frame each time the last is sent, until the client leaves or
        the stream is stopped."""
        receiver = asyncio.ensure_future(self.receive())
        receiver.add_done_callback(lambda task: self.changed.set())
        try:
            while True:
                await self.changed.wait()
                self.changed.clear()
                if receiver.done() or self.stopping:
                    break
                if self.newest is not None:
                    frame, self.newest = self.newest, None
                    if not await self._transform(*frame, receiver):
                        break
            if self.stopping and not receiver.done():
                await refuse_stream(self.websocket, GOING_AWAY, self.service.unavailable_reason())
        finally:
            receiver.cancel()
            await asyncio.wait({receiver})
            retrieve(receiver)  # (a send that failed because the client left)

    async def _transform(self, index: int, data: bytes, receiver: asyncio.Future) -> bool:
        """Transform one frame and send the result; False when the stream should end."""
        service, o = self.service, self.service.options
        if len(data) > o.max_upload_bytes:
            await self._error(f"frame {index} is {len(data)} bytes, over the limit of "
                              f"{o.max_upload_bytes} bytes: send smaller frames")  # fmt: skip
            return True
        request = dataclasses.replace(self.template, data=data, name=f"frame-{index}")
        try:  # the HTTP requests' header checks: pixels, sides and the cost budget
            size = await asyncio.to_thread(service.image_size, request)
        except (TooLarge, InputError) as exc:
            await self._error(str(exc), frame=index)
            return True
        request = dataclasses.replace(request, size=size)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        abort = threading.Event()
        deadline = loop.time() + o.timeout
        if self.engine is not None:
            run = service.push_frame(self.engine, self.engine_lock, request, index, deadline)
        else:
            run = service.admit_and_run(request, abort, deadline)
        work = asyncio.ensure_future(run)
        work.add_done_callback(retrieve)
        try:
            await asyncio.wait({work, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                return False  # the client left: the run stops at its next step
            result = work.result()
        except Closed:
            return True  # (stop() has been called: the loop closes with 1001)
        except Busy as exc:
            await self._error(str(exc), "busy", frame=index)
            return True
        except Expired:
            await self._error(f"frame {index} took longer than the server's deadline of "
                              f"{o.timeout:g} s", frame=index)  # fmt: skip
            return True
        except FastImgError as exc:
            await self._error(str(exc), frame=index)
            return True
        except Exception:
            await self._error(internal_error("stream frame"), frame=index)
            return True
        finally:
            if not work.done():
                abort.set()
                work.cancel()
                await asyncio.wait({work})
        service.frames.labels("ok").inc()
        ms = round((time.monotonic() - started) * 1000, 1)
        counts = {"received": self.received, "dropped": self.dropped}
        if self.engine is not None:
            if result is None:  # the stream batch fills: this frame comes out later
                async with self.sending:
                    await self.websocket.send_json({"type": "pending", "frame": index, **counts})
                return True
            out, result = result
            index, counts = out.tag, {**counts, "skipped": out.skipped}
        async with self.sending:
            await self.websocket.send_json({"type": "result", "frame": index, "ms": ms, **counts})
            await self.websocket.send_bytes(result.encoded[0])
        return True

    async def _change(self, text: str | None) -> None:
        """Apply a settings change from the next frame on: a new template, and on the engine
        path StreamEngine.update() between two frames (the prompt encoded once, no warm-up)."""
        try:
            changes = json.loads(text or "")
        except ValueError:
            changes = None
        if not isinstance(changes, dict) or not changes:
            await self._error("send frames as binary messages (JPEG or PNG), and settings "
                              'changes as a JSON object: {"prompt": ...}')  # fmt: skip
            return
        fixed = [key for key in changes if key not in UPDATABLE]
        if fixed:
            await self._error(f"{fixed[0]!r} cannot change while a stream runs: only "
                              f"{', '.join(UPDATABLE)} do; open a new stream for the "
                              "others")  # fmt: skip
            return
        fields = {**self.fields, **changes}
        message = {"type": "websocket.receive", "text": json.dumps(fields)}
        try:
            template = self.service.stream_request(message)
            if self.engine is not None:
                await asyncio.to_thread(self._update_engine, template, set(changes))
        except InputError as exc:
            await self._error(f"the change was refused, the settings stay: {exc}")
            return
        self.fields, self.template = fields, template
        call = template.job.call
        settings = {"prompt": call.prompt, "negative_prompt": call.negative_prompt,
                    "seed": call.seed, "strength": call.strength,
                    "guidance": call.guidance_scale}  # fmt: skip
        async with self.sending:
            await self.websocket.send_json({"type": "updated", "settings": settings})

    def _update_engine(self, template: ImageRequest, changed: set[str]) -> None:
        call = template.job.call
        values = {"prompt": call.prompt, "negative_prompt": call.negative_prompt or "",
                  "seed": call.seed, "strength": call.strength,
                  "guidance": call.guidance_scale}  # fmt: skip
        with self.engine_lock:  # (between two frames)
            self.engine.update(**{key: values[key] for key in changed})

    async def _error(self, detail: str, outcome: str = "error", **extra) -> None:
        self.service.frames.labels(outcome).inc()
        async with self.sending:
            await self.websocket.send_json({"type": "error", "detail": detail, **extra})


def key_offered(subprotocols: list[str], api_key: str) -> bool:
    """Whether a subprotocol carries `api_key` (base64url, unpadded), compared in constant
    time; a browser's WebSocket cannot send an Authorization header."""
    expected = base64.urlsafe_b64encode(api_key.encode("utf-8")).rstrip(b"=")
    found = False
    for offered in subprotocols:
        if offered.startswith(KEY_PROTOCOL):
            token = offered[len(KEY_PROTOCOL) :].encode("utf-8", "replace")
            found |= hmac.compare_digest(token, expected)
    return found


async def refuse_stream(websocket: WebSocket, code: int, detail: str) -> None:
    """An "error" message naming the problem, then the close frame with `code`."""
    await websocket.send_json({"type": "error", "detail": detail})
    reason = detail.encode("utf-8")[:MAX_REASON_BYTES].decode("utf-8", "ignore")
    await websocket.close(code, reason)
