"""A call far larger than the ones before gives its scratch memory back as it runs (the
backends keep their largest run's memory otherwise): the rule, the calls it picks, and what each
backend does inside it."""

import gc

import numpy as np
import pytest
from PIL import Image

from fastimg.backends.pool import Pool
from fastimg.backends.scratch import giving_back_scratch, scratch_given_back
from fastimg.backends.select import installed
from fastimg.diffusion import engine_set
from fastimg.diffusion.pipeline import Img2ImgPipeline

BACKENDS = [
    "onnxruntime",
    pytest.param(
        "openvino",
        marks=pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]"),
    ),
]


def spied(pipe) -> list:
    """Record, for each engine run, (component, its first input's shape, given back?)."""
    runs = []

    class Spy:
        def __init__(self, name, session):
            self.name, self.session = name, session
            self.input_names, self.output_names = session.input_names, session.output_names

        def run(self, feeds):
            first = next(iter(feeds.values()))
            runs.append((self.name, tuple(first.shape), scratch_given_back()))
            return self.session.run(feeds)

        def __getattr__(self, name):
            return getattr(self.session, name)

    pipe.engines.wrap_sessions(Spy)
    return runs


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_a_call_far_above_the_ones_before_gives_its_scratch_back(tiny, backend, monkeypatch):
    # (the floor at the small calls' side: the big call need only be far above those, the
    # floor's own part is test_the_rule_follows_the_recent_calls_and_a_floor's)
    monkeypatch.setattr(engine_set, "FLOOR_SIDE", 64)
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend=backend, precision="fp32")
    runs = spied(pipe)
    small, big = Image.new("RGB", (64, 64), "gray"), Image.new("RGB", (256, 256), "gray")
    job = dict(num_inference_steps=2, strength=1.0, seed=0)
    for _ in range(3):
        pipe("a", image=small, **job)
    assert runs and not any(given for *_, given in runs)  # alike calls keep their memory
    runs.clear()
    pipe("b", image=big, num_images_per_prompt=2, **job)  # 2 x 16 times the pixels
    assert {name for name, *_ in runs} == {"text_encoder", "vae_encoder", "unet", "vae_decoder"}
    assert all(given for *_, given in runs)  # every run of the call, each component
    runs.clear()
    pipe("a", image=small, **job)
    assert runs and not any(given for *_, given in runs)  # and only that call
    assert not scratch_given_back()  # nothing leaks out of the call's context


def test_the_rule_follows_the_recent_calls_and_a_floor(tiny, monkeypatch):
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime", precision="fp32")
    engines, floor = pipe.engines.primary(), 1000
    monkeypatch.setattr(engine_set.memory, "peak_bytes", lambda *a, **k: floor)
    factor = engine_set.OUTLIER_FACTOR
    gives_back = pipe.engines.gives_back
    assert not gives_back(engines, 0)  # nothing estimated (plan sets): nothing to give
    assert not gives_back(engines, factor * floor)  # a first call: against the floor
    pipe.engines._recent.clear()
    assert gives_back(engines, factor * floor + 1)
    assert not gives_back(engines, floor)
    # The recent calls' median (2500.5), above the floor, is the measure now.
    assert not gives_back(engines, factor * floor + 1)
    for _ in range(engine_set.RECENT_CALLS):  # a workload of large calls becomes the norm
        gives_back(engines, 10 * floor)
    assert not gives_back(engines, factor * 10 * floor)
    assert gives_back(engines, factor * 10 * floor + 1)


def test_onnx_runtime_shrinks_its_arena_after_a_run_that_gives_back(tiny, monkeypatch):
    from fastimg.backends.onnxruntime import OnnxRuntimeSession

    session = OnnxRuntimeSession(tiny[1] / "vae_decoder" / "model.onnx", threads=1)
    seen = []
    inner = session._session

    class Recorder:
        def run(self, names, feeds, options=None):
            seen.append(options)
            return inner.run(names, feeds, options)

    session._session = Recorder()
    latents = {session.input_names[0]: np.zeros((1, 4, 8, 8), np.float32)}
    plain = session.run(latents)
    with giving_back_scratch():
        shrunk = session.run(latents)
    assert seen[0] is None
    assert seen[1].get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    assert all(np.array_equal(plain[k], shrunk[k]) for k in plain)  # the same outputs


def test_onnx_runtime_loads_its_session_anew_after_a_call_that_gives_back(tiny, monkeypatch):
    from fastimg.backends.onnxruntime import OnnxRuntimeSession
    from fastimg.errors import EngineError

    session = OnnxRuntimeSession(tiny[1] / "vae_decoder" / "model.onnx", threads=1)
    latents = {session.input_names[0]: np.ones((1, 4, 8, 8), np.float32)}
    expected = session.run(latents)[session.output_names[0]]
    held = session._session
    with giving_back_scratch():
        session.run(latents)
        session.run(latents)
        assert session._session is held  # not between the runs of the call
    renewed = session._session
    assert renewed is not held and renewed is not None
    np.testing.assert_array_equal(session.run(latents)[session.output_names[0]], expected)
    with session._slots:  # a caller runs on it: it stays
        session.give_back()
    assert session._session is renewed
    monkeypatch.setattr(session, "_load", lambda: (_ for _ in ()).throw(EngineError("no")))
    session.give_back()
    assert session._session is None  # let go before the load that failed
    monkeypatch.undo()
    np.testing.assert_array_equal(session.run(latents)[session.output_names[0]], expected)


@pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]")
def test_openvino_releases_its_requests_memory_after_a_run_that_gives_back(tiny):
    from fastimg.backends.openvino import OpenVinoSession

    session = OpenVinoSession(tiny[1] / "vae_decoder" / "model.onnx", threads=1)
    released = []
    pool = session._requests
    real = pool._release
    pool._release = lambda: (released.append(True), real())
    latents = {session.input_names[0]: np.zeros((1, 4, 8, 8), np.float32)}
    session.run(latents)
    assert released == []
    with giving_back_scratch():
        session.run(latents)
    assert released == [True]
    session.run(latents)  # the compiled model still runs after its memory was released
    gc.collect()


def test_a_pool_releases_only_while_no_worker_is_lent():
    released = []
    pool = Pool(object, 2, release=lambda: released.append(True))
    with pool.lend():
        assert not pool.release_if_idle()  # a caller is running on a worker
    assert pool.release_if_idle() and released == [True]
    assert not Pool(object, 1).release_if_idle()  # nothing to release with
