"""One pipeline shared by many threads: each call's image equals the single-threaded one."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fastimg.backends.pool import Pool
from fastimg.backends.select import installed
from fastimg.diffusion.pipeline import Img2ImgPipeline

BACKENDS = [
    pytest.param("onnxruntime", 1, id="onnxruntime"),
    pytest.param(
        "openvino",
        1,
        id="openvino",
        marks=pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]"),
    ),
    pytest.param(
        "openvino",
        2,
        id="openvino-2-requests",
        marks=pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]"),
    ),
]


@pytest.mark.parametrize("backend,concurrency", BACKENDS)
def test_eight_threads_share_one_pipeline(tiny, photo, backend, concurrency):
    pipe = Img2ImgPipeline.from_engines(
        tiny[1], backend=backend, precision="fp32", max_concurrency=concurrency
    )
    job = dict(image=photo, strength=0.6, num_inference_steps=4, guidance_scale=5.0)
    prompts = ["a cat", "a dog", "a fox"]  # the prompt cache is shared and evicts, too

    def call(k):
        seed = 100 + k
        image = pipe(prompts[k % 3], seed=seed, **job)[0]
        return seed, k % 3, np.asarray(image)

    expected = {}
    for k in range(6):  # single-threaded results, one per (prompt, seed)
        seed, p, image = call(k)
        expected[seed, p] = image
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, [k % 6 for k in range(32)]))
    assert len(results) == 32
    for seed, p, image in results:
        np.testing.assert_array_equal(image, expected[seed, p])


def test_the_pool_lends_each_worker_to_one_caller_at_a_time():
    made = []
    pool = Pool(lambda: made.append(object()) or made[-1], size=3)
    busy, peak, lock = set(), [0], threading.Lock()

    def work(_):
        with pool.lend() as worker:
            with lock:
                assert worker not in busy
                busy.add(worker)
                peak[0] = max(peak[0], len(busy))
            threading.Event().wait(0.002)
            with lock:
                busy.remove(worker)

    with ThreadPoolExecutor(max_workers=8) as executor:
        list(executor.map(work, range(64)))
    assert len(made) <= 3 and peak[0] <= 3


def test_a_worker_that_cannot_be_made_is_not_counted():
    attempts = []

    def make():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("out of memory")
        return "worker"

    pool = Pool(make, size=1)
    with pytest.raises(RuntimeError):
        with pool.lend():
            pass
    with pool.lend() as worker:
        assert worker == "worker"


def test_a_failed_worker_frees_its_place_for_a_caller_already_waiting():
    started, attempts = threading.Event(), []

    def make():
        attempts.append(1)
        if len(attempts) == 1:
            started.set()
            threading.Event().wait(0.2)  # the second caller queues up meanwhile
            raise RuntimeError("out of memory")
        return "worker"

    pool = Pool(make, size=1)

    def first():
        with pytest.raises(RuntimeError):
            with pool.lend():
                pass

    def second():
        started.wait()
        with pool.lend() as worker:
            return worker

    with ThreadPoolExecutor(max_workers=2) as executor:
        failing, waiting = executor.submit(first), executor.submit(second)
        failing.result(timeout=10)
        assert waiting.result(timeout=10) == "worker"
