"""Hostile connections on loopback: idle and slow sockets are closed, one client cannot hold
them all, and a slow upload is dropped; the server goes on answering everyone else."""

import socket
import time

import httpx
import pytest

pytest.importorskip("fastapi")

from fastimg.serve import ServeOptions  # noqa: E402
from tests.serve.harness import live, ready  # noqa: E402

FAST = dict(head_seconds=0.5, max_connections_per_client=3)


def _socket(client) -> socket.socket:
    sock = socket.create_connection((client.base_url.host, client.base_url.port), timeout=10)
    sock.settimeout(10)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (what it sent before is skipped)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if sock.recv(65536) == b"":
                return True
        except (ConnectionResetError, TimeoutError):
            return True
    return False


@pytest.fixture
def server(pipe):
    with live(ServeOptions(**FAST, body_bytes_per_second=1000), lambda: pipe) as (client, _):
        ready(client)
        yield client


def test_a_socket_that_sends_nothing_is_closed(server):
    with _socket(server) as idle:
        assert _closed_within(idle, 5)
    assert server.get("/v1/health").status_code == 200


def test_a_request_head_sent_a_line_at_a_time_is_closed(server):
    with _socket(server) as slow:
        slow.sendall(b"GET /v1/health HTTP/1.1\r\n")
        started = time.monotonic()
        for k in range(20):  # a header line every 0.1 s: 2 s, past the 0.5 s deadline
            try:
                slow.sendall(f"X-Slow-{k}: 1\r\n".encode())
            except OSError:
                break
            time.sleep(0.1)
        assert _closed_within(slow, 5) and time.monotonic() - started < 5


def test_a_slow_body_is_answered_408_and_the_server_goes_on(server, picture):
    data = picture.read_bytes()
    with _socket(server) as slow:
        slow.sendall(
            b"POST /v1/img2img HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        answer = b""
        for k in range(len(data)):  # a byte every 0.05 s: 20 B/s against the 1000 asked
            try:
                slow.sendall(data[k : k + 1])
            except OSError:
                break
            time.sleep(0.05)
            slow.settimeout(0.001)
            try:
                answer += slow.recv(65536)
            except (TimeoutError, BlockingIOError):
                pass
            if answer:
                break
        slow.settimeout(10)
        answer += slow.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408") and b"slower than" in answer
    assert server.get("/v1/health").status_code == 200


def test_one_client_cannot_hold_every_socket(pipe):
    options = ServeOptions(head_seconds=30, max_connections_per_client=3)
    with live(options, lambda: pipe) as (client, _):
        ready(client)
        client.close()  # (its pooled socket would count as one of the three)
        time.sleep(0.2)
        held = [_socket(client) for _ in range(3)]
        try:
            with _socket(client) as fourth:
                assert _closed_within(fourth, 2)  # at once: the head deadline is 30 s
            for sock in held:  # the three are served
                sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        with httpx.Client(base_url=client.base_url) as fresh:
            assert fresh.get("/v1/health").status_code == 200


def test_unfinished_uploads_hold_queue_places_and_newcomers_get_429(pipe, picture):
    options = ServeOptions(workers=1, max_queue=1, head_seconds=30, body_bytes_per_second=1)
    with live(options, lambda: pipe) as (client, service):
        ready(client)
        data = picture.read_bytes()
        head = (
            b"POST /v1/img2img HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(data) * 10}\r\n\r\n".encode()
        )
        held = [_socket(client) for _ in range(2)]
        try:
            for sock in held:  # bodies that never finish
                sock.sendall(head + data[:100])
            deadline = time.monotonic() + 10
            while service.admission.uploading < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert service.admission.uploading == 2
            refused = client.post("/v1/img2img", content=b"{}",
                                  headers={"Content-Type": "application/json"})  # fmt: skip
            assert refused.status_code == 429 and "Retry-After" in refused.headers
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        while service.admission.uploading and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.admission.uploading == 0  # places given back when the clients left


def test_stream_sockets_leave_no_count_behind_on_the_http_cap(pipe):
    from websockets.exceptions import InvalidStatus

    from tests.serve.test_stream import open_stream, started

    options = ServeOptions(head_seconds=30, max_connections_per_client=3)
    with live(options, lambda: pipe) as (client, _):
        ready(client)
        for _ in range(5):  # more than the cap, one after another
            with started(client=client):
                pass
            with pytest.raises(InvalidStatus):  # (refused handshakes count the same way)
                open_stream(client, origin="https://evil.example")
        time.sleep(0.2)
        with httpx.Client(base_url=client.base_url) as fresh:
            assert fresh.get("/v1/health").status_code == 200
