"""8-bit grey, RGB and RGBA images encoded as PNG in a fraction of Pillow's time.

Pillow filters every row four ways in C before deflating it: on a 512-pixel image of noise (a
random-weight model's output) that took 24 ms, more than the rest of a one-step call outside
its engines. Here each block of rows is filtered three ways at once in NumPy (None, Sub, Up),
each row keeps the filter whose bytes sum smallest as signed values (libpng's heuristic), and
zlib deflates at level 1 with run-length matching: noise in 7 ms on one core, a photograph in
about three quarters of Pillow's time and about 10 % more bytes than its level 1. Any other mode
is Pillow's.

zlib-ng deflates where it is installed (a dependency; zlib where its wheel was not had): the
same bytes as zlib, in 0.57x its time on run-length matching.

The rows are deflated in pieces of PIECE_ROWS rows, on as many threads as the process has
cores (zlib lets go of the GIL while it deflates): each piece ends on a byte boundary (a sync
flush) and the pieces make one zlib stream. Run-length matches reach one byte back, so a piece
loses nothing by not seeing the one before it. The pieces are cut by rows, not by cores, so
a file's bytes are the same on every machine.
"""

import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..machine import available_cores

try:
    from zlib_ng import zlib_ng as deflating
except ImportError:  # (an optional speed: zlib writes the same stream)
    deflating = zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {"L": 0, "RGB": 2, "RGBA": 6}
ROWS_PER_BLOCK = 64  # (bounds the filters' scratch: 3 candidates of 64 rows)
NONE, SUB, UP = 0, 1, 2
PIECE_ROWS = 4 * ROWS_PER_BLOCK  # rows deflated apart; a 512-row image is 2 pieces
ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, level 1 (what zlib writes for it)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def takes(image) -> bool:
    """Whether `image` (PIL) is in a mode this encoder writes."""
    return image.mode in COLOR_TYPES


def encode(image, pnginfo=None) -> bytes:
    """The PNG file of `image` (PIL, a mode `takes`), with the text and private chunks of
    `pnginfo` (PIL.PngImagePlugin.PngInfo) before the pixels, as Pillow writes them, and those
    it marks after_idat after them."""
    if not takes(image):
        raise ValueError(f"{image.mode} images are written by Pillow, not fastimg.media.png")
    width, height = image.size
    before, after = [], []
    for cid, data, *rest in pnginfo.chunks if pnginfo is not None else ():
        (after if rest and rest[0] else before).append(_chunk(cid, data))
    header = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[image.mode], 0, 0, 0)
    return b"".join(
        [SIGNATURE, _chunk(b"IHDR", header), *before, _chunk(b"IDAT", _deflated(image)),
         *after, _chunk(b"IEND", b"")]
    )  # fmt: skip


def _chunk(cid: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + cid
        + data
        + struct.pack(">I", zlib.crc32(data, zlib.crc32(cid)))
    )


def _deflated(image) -> bytes:
    """The image's filtered rows as one zlib stream, its pieces deflated in parallel."""
    pixels = np.asarray(image)
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = np.ascontiguousarray(pixels).reshape(pixels.shape[0], -1)
    starts = range(0, len(rows), PIECE_ROWS)
    pieces = [(rows, start, channels, start + PIECE_ROWS >= len(rows)) for start in starts]
    if len(pieces) == 1 or available_cores() == 1:
        done = [_deflated_piece(*piece) for piece in pieces]
    else:
        done = list(_threads().map(lambda piece: _deflated_piece(*piece), pieces))
    checksum = 1
    for filtered, _ in done:
        for block in filtered:
            checksum = zlib.adler32(block, checksum)
    return b"".join([ZLIB_HEADER, *(deflated for _, deflated in done)]) + struct.pack(
        ">I", checksum
    )


def _deflated_piece(rows: np.ndarray, start: int, channels: int, last: bool):
    """(the filtered blocks, their raw deflate stream) of rows[start : start + PIECE_ROWS],
    ended by a sync flush, or by the final block where `last`."""
    compressor = deflating.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    previous = rows[start - 1 : start] if start else np.zeros_like(rows[:1])
    filtered, parts = [], []
    for first in range(start, min(start + PIECE_ROWS, len(rows)), ROWS_PER_BLOCK):
        block = rows[first : min(first + ROWS_PER_BLOCK, start + PIECE_ROWS)]
        filtered.append(_filtered(block, previous, channels))
        parts.append(compressor.compress(filtered[-1]))
        previous = block[-1:]
    parts.append(compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH))
    return filtered, b"".join(parts)


def _forget_threads() -> None:
    """In a forked child: the parent's threads are not there, so the pool starts anew."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads)


def _threads() -> ThreadPoolExecutor:
    """The threads pieces are deflated on, one per core, started at the first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(available_cores(), thread_name_prefix="fastimg-png")
        return _pool


def _filtered(block: np.ndarray, previous: np.ndarray, channels: int) -> bytes:
    """`block`'s rows, each led by its filter's byte and filtered by it; `previous`: the row
    above the first (zeros above the image's first row, as PNG's filters take them)."""
    count, width = block.shape
    candidates = np.empty((3, count, width), np.uint8)
    candidates[NONE] = block
    candidates[SUB, :, :channels] = block[:, :channels]
    np.subtract(block[:, channels:], block[:, :-channels], out=candidates[SUB, :, channels:])
    np.subtract(block[:1], previous, out=candidates[UP, :1])
    np.subtract(block[1:], block[:-1], out=candidates[UP, 1:])
    cost = np.abs(candidates.view(np.int8), dtype=np.int16).sum(axis=2, dtype=np.int64)
    chosen = cost.argmin(axis=0)
    out = np.empty((count, width + 1), np.uint8)
    out[:, 0] = chosen
    out[:, 1:] = candidates[chosen, np.arange(count)]
    return out.tobytes()
