"""The live preview: the page, the newest output, and the MJPEG stream read by an HTTP
client, each part saying which input frame it shows."""

import io
import threading

import httpx
import pytest
from PIL import Image

from fastimg.errors import OutputError
from fastimg.stream.driver import FrameTag
from fastimg.stream.preview import BOUNDARY, PreviewSink


@pytest.fixture
def preview():
    sink = PreviewSink(0)
    yield sink
    sink.close()


def test_the_page_shows_the_mjpeg_stream(preview):
    page = httpx.get(preview.url, timeout=10)
    assert page.status_code == 200 and '<img src="/stream.mjpg"' in page.text
    assert preview.url.startswith("http://127.0.0.1:")


def test_the_newest_output_is_served_with_its_input_frame(preview):
    assert httpx.get(preview.url + "frame.jpg", timeout=10).status_code == 404
    preview.write(Image.new("RGB", (32, 16), (200, 0, 0)), FrameTag(1, 0.0), False)
    preview.write(Image.new("RGB", (32, 16), (0, 0, 200)), FrameTag(5, 0.25), False)
    reply = httpx.get(preview.url + "frame.jpg", timeout=10)
    assert reply.headers["content-type"] == "image/jpeg"
    assert reply.headers["x-input-frame"] == "5" and reply.headers["x-input-time"] == "0.250"
    image = Image.open(io.BytesIO(reply.content))
    assert image.size == (32, 16) and image.getpixel((16, 8))[2] > 150


def parts(response, count: int) -> list[tuple[dict, bytes]]:
    """The first `count` parts of a multipart/x-mixed-replace response: (headers, body)."""
    buffer, found = b"", []
    chunks = response.iter_bytes()
    while len(found) < count:
        buffer += next(chunks)
        while b"\r\n\r\n" in buffer:
            head, rest = buffer.split(b"\r\n\r\n", 1)
            lines = head.decode().strip().split("\r\n")
            assert lines[0] == f"--{BOUNDARY}"
            headers = dict(line.split(": ", 1) for line in lines[1:])
            length = int(headers["Content-Length"])
            if len(rest) < length + 2:
                break
            found.append((headers, rest[:length]))
            buffer = rest[length + 2 :]
    return found


def test_the_stream_sends_each_new_output_as_a_jpeg_part_naming_its_input_frame(preview):
    preview.write(Image.new("RGB", (32, 16), (200, 0, 0)), FrameTag(2, 0.1), False)
    with httpx.stream("GET", preview.url + "stream.mjpg", timeout=10) as response:
        assert response.headers["content-type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        green = Image.new("RGB", (32, 16), (0, 200, 0))
        later = threading.Timer(0.2, preview.write, (green, FrameTag(3, 0.2), False))
        later.start()
        got = parts(response, 2)
        later.join()
    assert [headers["X-Input-Frame"] for headers, _ in got] == ["2", "3"]
    assert [Image.open(io.BytesIO(body)).getpixel((16, 8))[1] > 150 for _, body in got] == [
        False, True]  # fmt: skip


def test_closing_the_preview_ends_the_streams_it_serves(preview):
    preview.write(Image.new("RGB", (8, 8)), FrameTag(1, 0.0), False)
    with httpx.stream("GET", preview.url + "stream.mjpg", timeout=10) as response:
        chunks = response.iter_bytes()
        next(chunks)
        threading.Timer(0.2, preview.close).start()
        rest = b"".join(chunks)  # ends once the preview closes
    assert BOUNDARY.encode() not in rest


def test_a_port_in_use_is_refused_naming_it(preview):
    port = int(preview.url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(OutputError, match=f"--preview {port}: cannot serve on 127.0.0.1:{port}"):
        PreviewSink(port)
