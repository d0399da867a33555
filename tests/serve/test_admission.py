"""The admission rules on their own: slots, the bounded queue, deadlines, limits and the key."""

import asyncio
import struct
import zlib

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from fastimg.serve.admission import (  # noqa: E402
    Admission,
    Busy,
    Closed,
    Expired,
    TooLarge,
    authorized,
    check_length,
    check_pixels,
    is_loopback,
    limited,
)

FAR = 1e9  # a deadline that never comes


def run(coroutine):
    return asyncio.run(coroutine)


async def until(condition, turns: int = 100) -> None:
    """Let the other tasks run until `condition()` holds (a bounded number of loop turns)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never came to hold")


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds none (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_slots_go_to_waiters_in_arrival_order():
    async def scenario():
        gate = Admission(workers=2, max_queue=4)
        await gate.acquire(FAR)
        await gate.acquire(FAR)
        order = []

        async def wait(name):
            await gate.acquire(FAR)
            order.append(name)

        waiters = [asyncio.ensure_future(wait(name)) for name in "abc"]
        await until(lambda: gate.waiting == 3)
        assert gate.running == 2
        gate.release()
        gate.release()
        await until(lambda: len(order) == 2)
        assert order == ["a", "b"] and (gate.running, gate.waiting) == (2, 1)
        gate.release()
        await asyncio.gather(*waiters)
        assert order == ["a", "b", "c"]
        for _ in range(2):
            gate.release()
        assert (gate.running, gate.waiting) == (0, 0)

    run(scenario())


def test_a_full_queue_is_busy_with_a_retry_estimate():
    async def scenario():
        gate = Admission(workers=1, max_queue=1)
        await gate.acquire(FAR)
        queued = asyncio.ensure_future(gate.acquire(FAR))
        await until(lambda: gate.waiting == 1)
        with pytest.raises(Busy) as busy:
            await gate.acquire(FAR)
        assert busy.value.retry_after >= 1
        gate.observe(30.0)  # runs take 30 s: one waiter ahead means about a minute
        with pytest.raises(Busy) as busy:
            await gate.acquire(FAR)
        assert busy.value.retry_after == 60
        gate.release()
        await queued
        gate.release()
        assert gate.running == 0

    run(scenario())


def test_no_queue_at_all_refuses_at_once():
    async def scenario():
        gate = Admission(workers=1, max_queue=0)
        await gate.acquire(FAR)
        with pytest.raises(Busy):
            await gate.acquire(FAR)

    run(scenario())


def test_a_waiter_past_its_deadline_leaves_the_queue():
    async def scenario():
        gate = Admission(workers=1, max_queue=2)
        await gate.acquire(FAR)
        loop = asyncio.get_running_loop()
        with pytest.raises(Expired):
            await gate.acquire(loop.time())  # due already
        assert gate.waiting == 0
        gate.release()
        assert gate.running == 0  # nothing was handed to the expired waiter

    run(scenario())


def test_a_request_already_past_its_deadline_does_not_start():
    async def scenario():
        gate = Admission(workers=1, max_queue=2)
        with pytest.raises(Expired):
            await gate.acquire(asyncio.get_running_loop().time() - 1)
        assert gate.running == 0

    run(scenario())


def test_a_cancelled_waiter_never_gets_the_slot():
    async def scenario():
        gate = Admission(workers=1, max_queue=2)
        await gate.acquire(FAR)
        gone = asyncio.ensure_future(gate.acquire(FAR))
        stays = asyncio.ensure_future(gate.acquire(FAR))
        await until(lambda: gate.waiting == 2)
        gone.cancel()  # its client disconnected
        await until(lambda: gate.waiting == 1)
        gate.release()
        await stays
        assert gone.cancelled() and gate.running == 1

    run(scenario())


def test_a_slot_handed_to_a_waiter_that_is_cancelled_at_once_passes_on():
    async def scenario():
        gate = Admission(workers=1, max_queue=2)
        await gate.acquire(FAR)
        first = asyncio.ensure_future(gate.acquire(FAR))
        second = asyncio.ensure_future(gate.acquire(FAR))
        await until(lambda: gate.waiting == 2)
        gate.release()  # the slot goes to `first` ...
        first.cancel()  # ... which is cancelled before it resumes
        with pytest.raises(asyncio.CancelledError):
            await first
        await second  # so it passes on to `second`
        assert gate.running == 1 and gate.waiting == 0

    run(scenario())


def test_close_turns_waiters_and_newcomers_away_and_lets_runs_finish():
    async def scenario():
        gate = Admission(workers=1, max_queue=2)
        await gate.acquire(FAR)
        queued = asyncio.ensure_future(gate.acquire(FAR))
        await until(lambda: gate.waiting == 1)
        gate.close()
        with pytest.raises(Closed):
            await queued
        with pytest.raises(Closed):
            await gate.acquire(FAR)
        gate.release()  # the run that held the slot finishes
        assert (gate.running, gate.waiting) == (0, 0)

    run(scenario())


def test_content_length_over_the_limit_is_refused_before_reading():
    check_length(None, 10)
    check_length("10", 10)
    check_length("not a number", 10)  # (the HTTP server refuses that itself)
    with pytest.raises(TooLarge, match="11 bytes, over the limit of 10 bytes"):
        check_length("11", 10)


def test_a_body_is_counted_while_it_is_read():
    async def chunks():
        for _ in range(5):
            yield b"x" * 4

    async def read(limit):
        return b"".join([chunk async for chunk in limited(chunks(), limit)])

    assert run(read(20)) == b"x" * 20
    with pytest.raises(TooLarge, match="at least 12 bytes"):
        run(read(10))


def test_pixels_are_checked_from_the_header():
    assert check_pixels(png_header(64, 64), "a.png", max_pixels=64 * 64)
    with pytest.raises(TooLarge, match="a.png is 65x64, over the limit"):
        check_pixels(png_header(65, 64), "a.png", max_pixels=64 * 64)
    with pytest.raises(TooLarge, match="over the limit"):  # Pillow's own bomb guard
        check_pixels(png_header(100_000, 100_000), "bomb.png", max_pixels=10**12)
    assert not check_pixels(b"not an image", "notes.txt", max_pixels=100)


@pytest.mark.parametrize(
    "host,loopback",
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
     ("example.com", False)],
)  # fmt: skip
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_the_bearer_token_must_match():
    assert authorized("Bearer s3cret", "s3cret")
    assert authorized("bearer s3cret", "s3cret")
    assert not authorized("Bearer wrong", "s3cret")
    assert not authorized("Basic s3cret", "s3cret")
    assert not authorized(None, "s3cret")
    assert not authorized("Bearer s3cret-and-more", "s3cret")
    assert not authorized("Bearer sécret", "s3cret")  # non-ASCII compares too, and differs


def test_a_slot_holder_takes_waiters_of_its_batch_key_into_its_run():
    async def scenario():
        gate = Admission(workers=1, max_queue=8)
        assert await gate.acquire(FAR, key="k", payload="holder") is True
        names = ["a", "other", "b", "plain", "c"]
        keys = {"a": "k", "other": "x", "b": "k", "plain": None, "c": "k"}
        tasks = {n: asyncio.ensure_future(gate.acquire(FAR, keys[n], n)) for n in names}
        await until(lambda: gate.waiting == 5)
        assert gate.take("k", 2) == ["a", "b"]  # oldest first, up to the limit
        assert await tasks["a"] is False and await tasks["b"] is False  # they ride along
        assert (gate.running, gate.waiting) == (1, 3)
        assert gate.take("nothing queued has this key", 4) == []
        gate.release()  # the slot goes to the oldest waiter left, whatever its key
        assert await tasks["other"] is True
        assert gate.take("k", 8) == ["c"] and await tasks["c"] is False
        gate.release()
        assert await tasks["plain"] is True  # a waiter without a key is never taken
        gate.release()
        assert (gate.running, gate.waiting) == (0, 0)

    run(scenario())


def test_a_taken_waiter_that_leaves_gives_back_no_slot():
    async def scenario():
        gate = Admission(workers=1, max_queue=2)
        await gate.acquire(FAR, "k")
        rider = asyncio.ensure_future(gate.acquire(FAR, "k", "r"))
        await until(lambda: gate.waiting == 1)
        assert gate.take("k", 1) == ["r"]
        rider.cancel()  # its client left after it was taken, before it resumed
        with pytest.raises(asyncio.CancelledError):
            await rider
        assert gate.running == 1  # still the holder's slot, not released by the rider
        gate.release()
        assert gate.running == 0

    run(scenario())


def test_uploads_in_progress_count_against_the_slots_and_the_queue():
    async def scenario():
        admission = Admission(workers=1, max_queue=1)
        with admission.upload(), admission.upload():
            with pytest.raises(Busy):  # two bodies arriving: as many as would ever run or wait
                with admission.upload():
                    pass
        assert admission.uploading == 0
        loop = asyncio.get_running_loop()
        assert await admission.acquire(loop.time() + 5)  # one running
        with admission.upload():
            with pytest.raises(Busy):
                with admission.upload():
                    pass
        admission.release()

    asyncio.run(scenario())
