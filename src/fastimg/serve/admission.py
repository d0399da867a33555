"""Admission: what a request must pass before it costs an engine run.

A bounded queue in front of `workers` concurrent runs (beyond it, Busy with an estimate of
when to retry), a deadline per request while it waits, upload and pixel limits checked before
anything is decoded, and the bearer key. Everything here runs on the event loop except
`check_pixels`, which reads an image header.
"""

import asyncio
import contextlib
import hmac
import io
import ipaddress
import math
import warnings
from collections import deque
from collections.abc import AsyncIterator

from PIL import Image, UnidentifiedImageError

from ..errors import InputError

# Until a run has been timed, Retry-After assumes one takes this long.
FIRST_GUESS_SECONDS = 5.0
SMOOTHING = 0.2  # weight of the newest run in the moving average of run times


class Busy(Exception):
    """The queue is full: try again in `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy (queue full): retry in about {retry_after} s")
        self.retry_after = retry_after


class Closed(Exception):
    """The server is shutting down and admits nothing more."""

    def __init__(self):
        super().__init__("the server is shutting down: send the request to another instance")


class Expired(Exception):
    """The request's deadline passed before its result was ready."""


class TooLarge(Exception):
    """An upload over the size limit, or an image over the pixel limit (HTTP 413)."""


class SlowUpload(Exception):
    """An upload that came slower than the server takes (HTTP 408)."""


class Admission:
    """At most `workers` requests run at once and at most `max_queue` wait, in arrival order.

    `acquire` returns when the caller holds a run slot; `release` passes the slot to the
    oldest waiter still there. A waiter whose deadline passes, or whose task is cancelled
    (its client went away), leaves the queue without ever running. `close` admits nothing
    more and turns every waiter away; slots already held finish normally. A slot holder may
    `take` waiters that can share its run (the same batch key): they leave the queue and
    their `acquire` returns False, meaning they run in the holder's slot.
    """

    def __init__(self, workers: int, max_queue: int):
        if workers < 1 or max_queue < 0:
            raise ValueError(f"workers must be >= 1 and max_queue >= 0, got {workers}, {max_queue}")
        self.workers, self.max_queue = workers, max_queue
        self.running = 0
        self.uploading = 0  # requests whose bodies are still arriving
        self.closed = False
        self._waiting: deque[asyncio.Future] = deque()
        self._riders: dict[asyncio.Future, tuple] = {}  # a waiter's (batch key, payload)
        self._run_seconds: float | None = None

    @property
    def waiting(self) -> int:
        """Requests in the queue now."""
        return len(self._waiting)

    @contextlib.contextmanager
    def upload(self):
        """Hold a place while a request's body arrives: uploads count against the slots and the
        queue, so clients cannot make the server hold more bodies than it would ever queue
        (429 at once beyond that, before a byte of the body is read)."""
        if self.closed:
            raise Closed()
        if self.running + self.waiting + self.uploading >= self.workers + self.max_queue:
            raise Busy(self.retry_after())
        self.uploading += 1
        try:
            yield
        finally:
            self.uploading -= 1

    async def acquire(self, deadline: float, key=None, payload=None) -> bool:
        """Take a run slot (True), waiting in the queue until `deadline` (the loop's clock) at
        most; False when a slot holder took this waiter (`payload`) into its run instead.
        Waiters with a `key` other than None may be taken by holders of the same key."""
        if self.closed:
            raise Closed()
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:  # (spent reading a slow upload)
            raise Expired()
        if self.running < self.workers and not self._waiting:
            self.running += 1
            return True
        if len(self._waiting) >= self.max_queue:
            raise Busy(self.retry_after())
        ticket = loop.create_future()
        self._waiting.append(ticket)
        if key is not None:
            self._riders[ticket] = (key, payload)
        timer = loop.call_at(deadline, self._expire, ticket)
        try:
            return await ticket
        except BaseException:  # expired, cancelled (the client left), or turned away by close()
            self._leave(ticket)
            raise
        finally:
            timer.cancel()
            self._riders.pop(ticket, None)

    def take(self, key, limit: int) -> list:
        """The payloads of up to `limit` waiters with batch `key`, oldest first, taken out of
        the queue to run in the caller's slot."""
        taken = []
        for ticket in list(self._waiting):
            if len(taken) >= limit:
                break
            rider = self._riders.get(ticket)
            if rider is None or rider[0] != key or ticket.done():
                continue
            self._waiting.remove(ticket)
            ticket.set_result(False)
            taken.append(rider[1])
        return taken

    def _expire(self, ticket: asyncio.Future) -> None:
        if not ticket.done():
            ticket.set_exception(Expired())

    def _leave(self, ticket: asyncio.Future) -> None:
        """Take `ticket` out of the queue; a slot it was handed meanwhile passes on."""
        if ticket in self._waiting:
            self._waiting.remove(ticket)
        if ticket.done() and not ticket.cancelled() and ticket.exception() is None:
            if ticket.result():  # (a slot, not a seat in another's run)
                self.release()

    def release(self) -> None:
        """Give the slot back: to the oldest waiter, else to the pool."""
        while self._waiting:
            ticket = self._waiting.popleft()
            if not ticket.done():
                ticket.set_result(True)  # the slot passes on: running stays the same
                return
        self.running -= 1

    def observe(self, seconds: float) -> None:
        """Record how long a run took (for Retry-After)."""
        previous = self._run_seconds
        self._run_seconds = seconds if previous is None else (
            SMOOTHING * seconds + (1 - SMOOTHING) * previous
        )  # fmt: skip

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on by one run per waiter (at least 1)."""
        per_run = FIRST_GUESS_SECONDS if self._run_seconds is None else self._run_seconds
        return max(1, math.ceil(per_run * (self.waiting + 1) / self.workers))

    def close(self) -> None:
        """Admit nothing more; every waiter is turned away with Closed."""
        self.closed = True
        while self._waiting:
            ticket = self._waiting.popleft()
            if not ticket.done():
                ticket.set_exception(Closed())


# --- limits ------------------------------------------------------------------------------------


def check_length(content_length: str | None, limit: int) -> None:
    """Refuse a body whose declared length is over `limit` bytes, before reading any of it."""
    if content_length is None:
        return
    try:
        length = int(content_length)
    except ValueError:
        return  # the server itself rejects a malformed Content-Length
    if length > limit:
        raise TooLarge(_over(length, limit))


async def limited(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """`chunks` as they arrive, refusing the body once more than `limit` bytes have come."""
    seen = 0
    async for chunk in chunks:
        seen += len(chunk)
        if seen > limit:
            raise TooLarge(_over(seen, limit, at_least=True))
        yield chunk


async def paced(
    chunks: AsyncIterator[bytes], rate: float, grace: float, deadline: float
) -> AsyncIterator[bytes]:
    """`chunks` as they arrive, dropped (SlowUpload) where, after `grace` seconds, fewer than
    `rate` bytes a second on average have come, and (Expired) at the loop time `deadline`: a
    client sending a byte now and then (slowloris) holds no upload slot for long."""
    loop = asyncio.get_running_loop()
    start, seen, iterator = loop.time(), 0, chunks.__aiter__()
    while True:
        due = min(start + grace + seen / rate, deadline)
        try:
            chunk = await asyncio.wait_for(iterator.__anext__(), max(due - loop.time(), 0.001))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            if due >= deadline:
                raise Expired() from None
            raise SlowUpload(
                f"the upload came slower than {rate / 1024:.0f} KiB/s ({seen} bytes in "
                f"{loop.time() - start:.0f} s): send it faster, or a smaller image"
            ) from None
        seen += len(chunk)
        yield chunk


def _over(size: int, limit: int, at_least: bool = False) -> str:
    more = "at least " if at_least else ""
    return (
        f"the request body is {more}{size} bytes, over the limit of {limit} bytes "
        f"({limit / 2**20:.1f} MB): send a smaller image"
    )


def check_pixels(data: bytes, name: str, max_pixels: int) -> tuple[int, int] | None:
    """Refuse an image over `max_pixels` from its header, before decoding it. Returns its
    (width, height), or None when the header cannot be read (a file that is not an image is
    for the loader to name)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked here
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
    except Image.DecompressionBombError as exc:
        raise TooLarge(
            f"image {name} is over the limit of {max_pixels / 1e6:.1f} megapixels ({exc}): "
            "downscale it first"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return None
    if width * height > max_pixels:
        raise TooLarge(
            f"image {name} is {width}x{height}, over the limit of {max_pixels / 1e6:.1f} "
            "megapixels this server takes: downscale it first"
        )
    return width, height


# --- who may ask -------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_api_key(api_key: str) -> None:
    """Refuse a key no client could send: HTTP carries header values as Latin-1 and the token is
    read without surrounding spaces, so only visible ASCII characters can ever match."""
    if not (api_key and api_key.isascii() and api_key.isprintable() and " " not in api_key):
        raise InputError(
            "the API key must be printable ASCII without spaces (a client's Authorization header "
            'could never match it): make one with  python -c "import secrets; '
            'print(secrets.token_urlsafe())"'
        )


def authorized(header: str | None, api_key: str) -> bool:
    """Whether an Authorization header carries `api_key` as its bearer token (compared in
    constant time)."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("utf-8"), api_key.encode("utf-8"))
