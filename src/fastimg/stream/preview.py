"""A live preview of a stream in the browser: an MJPEG stream (multipart/x-mixed-replace, which
every browser shows in an <img>) served on 127.0.0.1 with a one-image page.

    /             the page
    /stream.mjpg  the outputs as they come, each part with X-Input-Frame and X-Input-Time
    /frame.jpg    the newest output

Only the newest output is held; a slow viewer skips outputs, it never queues them.
"""

import io
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..errors import OutputError

BOUNDARY = "fastimg-frame"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>fastimg stream</title>
<style>body{margin:0;background:#111;display:grid;place-items:center;height:100vh}
img{max-width:100vw;max-height:100vh}</style></head>
<body><img src="/stream.mjpg" alt="fastimg stream"></body></html>
"""


class PreviewSink:
    """The preview server (started at once, on `port`; 0 picks a free one, see `url`)."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.jpeg: bytes | None = None
        self.headers: dict = {}
        self.number = 0
        self.closed = False
        self.changed = threading.Condition()
        handler = type("Handler", (_Handler,), {"sink": self})
        try:
            self.server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise OutputError(
                f"--preview {port}: cannot serve on {host}:{port} ({exc.strerror}): pick another "
                "port, or 0 for a free one"
            ) from None
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="fastimg-preview")  # fmt: skip
        self.thread.start()

    def write(self, image, tag, skipped: bool) -> None:
        """Show the output (viewers get it at their next frame)."""
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
        with self.changed:
            self.jpeg, self.number = buffer.getvalue(), self.number + 1
            self.headers = {"X-Input-Frame": str(tag.index), "X-Input-Time": f"{tag.time:.3f}"}
            self.changed.notify_all()

    def newest(self, after: int, timeout: float = 1.0):
        """(number, jpeg, headers) of an output newer than `after`, or None when there is none
        yet after `timeout` s; raises EOFError once closed."""
        with self.changed:
            self.changed.wait_for(lambda: self.closed or self.number > after, timeout)
            if self.closed:
                raise EOFError
            if self.number <= after:
                return None
            return self.number, self.jpeg, self.headers

    def close(self) -> None:
        """Stop serving; viewers' streams end."""
        with self.changed:
            if self.closed:
                return
            self.closed = True
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    sink: PreviewSink

    def do_GET(self):  # noqa: N802 (http.server's name)
        path = self.path.split("?")[0]
        if path == "/":
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", PAGE.encode())
        elif path == "/frame.jpg":
            try:
                newest = self.sink.newest(0, timeout=0)
            except EOFError:
                newest = None
            if newest is None:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"no output yet\n")
            else:
                self._send(HTTPStatus.OK, "image/jpeg", newest[1], newest[2])
        elif path == "/stream.mjpg":
            self._stream()
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

    def _send(self, status, kind: str, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        seen = 0
        try:
            while True:
                newest = self.sink.newest(seen)
                if newest is None:
                    continue
                seen, jpeg, headers = newest
                part = [f"--{BOUNDARY}", "Content-Type: image/jpeg",
                        f"Content-Length: {len(jpeg)}"]  # fmt: skip
                part += [f"{name}: {value}" for name, value in headers.items()]
                self.wfile.write(("\r\n".join(part) + "\r\n\r\n").encode() + jpeg + b"\r\n")
                self.wfile.flush()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        """Requests are not logged (the terminal is the stream's)."""
