"""ONNX Runtime CUDA with static shapes: each call's exact shapes replayed from a CUDA graph
(a session with the free dimensions fixed, buffers bound once), against a stand-in onnxruntime
whose graphs compute out = 2 * sample + timestep (the GPU run is bench/gpu_check.sh's)."""

import contextlib
import logging
import sys
import types

import numpy as np
import pytest

from fastimg.backends import onnxruntime_gpu

INPUTS = {"sample": ["batch", 4, "latent_height", "latent_width"], "timestep": ["batch"]}


class Arg(types.SimpleNamespace):
    """An onnxruntime NodeArg."""


class Value:
    """An OrtValue on the 'device': a NumPy array that stays put."""

    def __init__(self, shape, dtype):
        self.array = np.zeros(shape, dtype)


@pytest.fixture
def ort(monkeypatch):
    """A stand-in onnxruntime recording each session made (its dims and provider options) and
    each run of a bound graph; `fail` makes graph sessions fail to be made."""
    state = types.SimpleNamespace(sessions=[], runs=0, fail=None)

    class SessionOptions:
        def __init__(self):
            self.dims = {}

        def add_free_dimension_override_by_name(self, name, value):
            self.dims[name] = value

    class Binding:
        def __init__(self):
            self.inputs, self.outputs = {}, {}

        def bind_ortvalue_input(self, name, value):
            self.inputs[name] = value

        def bind_ortvalue_output(self, name, value):
            self.outputs[name] = value

    class InferenceSession:
        def __init__(self, path, options=None, providers=None):
            graph = options is not None
            if graph and state.fail:
                raise RuntimeError(state.fail)
            self.dims = options.dims if graph else None
            self.providers = providers
            state.sessions.append(self)

        def get_providers(self):
            return ["CUDAExecutionProvider"]

        def get_inputs(self):
            kinds = {"sample": "tensor(float)", "timestep": "tensor(int64)"}
            return [Arg(name=n, type=kinds[n], shape=s) for n, s in INPUTS.items()]

        def get_outputs(self):
            return [Arg(name="out_sample", type="tensor(float)", shape=INPUTS["sample"])]

        def io_binding(self):
            return Binding()

        def run_with_iobinding(self, binding):
            state.runs += 1
            sample, step = binding.inputs["sample"].array, binding.inputs["timestep"].array
            binding.outputs["out_sample"].array[...] = 2 * sample + step[:, None, None, None]

    fake = types.SimpleNamespace(
        SessionOptions=SessionOptions,
        InferenceSession=InferenceSession,
        OrtValue=types.SimpleNamespace(ortvalue_from_shape_and_type=lambda s, d, *a: Value(s, d)),
        get_available_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    cp = types.SimpleNamespace(
        asarray=np.asarray,
        dtype=np.dtype,
        cuda=types.SimpleNamespace(
            Device=lambda index: contextlib.nullcontext(),
            get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None),
        ),
    )
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    monkeypatch.setattr(onnxruntime_gpu, "require", lambda name, extra: cp)
    monkeypatch.setattr(onnxruntime_gpu, "_dlls_loaded", True)
    monkeypatch.setattr(onnxruntime_gpu, "device_view", lambda cp, value, shape, dtype: value.array)
    state.dynamic = []  # the shapes the session without a graph ran

    def run_dynamic(self, feeds):
        state.dynamic.append(feeds["sample"].shape)
        return {"out_sample": _expected(feeds)}

    monkeypatch.setattr(onnxruntime_gpu.OnnxRuntimeCudaSession, "_run", run_dynamic)
    return state


def _feeds(batch: int, side: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "sample": rng.standard_normal((batch, 4, side, side), dtype=np.float32),
        "timestep": np.full(batch, 10 * seed, dtype=np.int64),
    }


def _expected(feeds: dict) -> np.ndarray:
    return 2 * feeds["sample"] + feeds["timestep"].astype(np.float32)[:, None, None, None]


def test_auto_replays_a_shape_from_its_second_call_on_from_one_cuda_graph(ort, tmp_path):
    session = onnxruntime_gpu.OnnxRuntimeCudaSession(tmp_path / "unet.onnx", shapes="auto")
    for seed in (1, 2):  # seen once: dynamic; the second call also captures its graph
        out = session.run(_feeds(2, 8, seed))
        np.testing.assert_array_equal(out["out_sample"], _expected(_feeds(2, 8, seed)))
    assert ort.dynamic == [(2, 4, 8, 8)] * 2
    dynamic, graph = ort.sessions
    assert graph.dims == {"batch": 2, "latent_height": 8, "latent_width": 8}
    assert graph.providers == [("CUDAExecutionProvider",
                                {"device_id": 0, "enable_cuda_graph": "1"})]  # fmt: skip
    assert ort.runs == 2  # ONNX Runtime's set-up run and the capture, made at once
    for seed in (3, 4):  # then replayed: new inputs copied into the bound buffers
        out = session.run(_feeds(2, 8, seed))
        np.testing.assert_array_equal(out["out_sample"], _expected(_feeds(2, 8, seed)))
    assert ort.dynamic == [(2, 4, 8, 8)] * 2 and ort.runs == 4 and len(ort.sessions) == 2
    out["out_sample"][...] = 0  # a copy: the next replay does not write into what was returned
    assert session.run(_feeds(2, 8, 5))["out_sample"].any()


def test_another_shape_runs_dynamic_until_it_repeats_then_takes_the_graph(ort, tmp_path):
    session = onnxruntime_gpu.OnnxRuntimeCudaSession(tmp_path / "unet.onnx", shapes="auto")
    for _ in range(2):
        session.run(_feeds(2, 8, 1))
    out = session.run(_feeds(1, 6, 2))  # another shape, seen once: the graph stays
    np.testing.assert_array_equal(out["out_sample"], _expected(_feeds(1, 6, 2)))
    assert session._graph.key[0][1] == (2, 4, 8, 8)
    session.run(_feeds(1, 6, 3))  # seen twice: one graph at a time, this one now
    assert ort.sessions[-1].dims == {"batch": 1, "latent_height": 6, "latent_width": 6}
    assert session._graph.key[0][1] == (1, 4, 6, 6)


def test_static_captures_from_the_first_call_and_dynamic_never(ort, tmp_path):
    static = onnxruntime_gpu.OnnxRuntimeCudaSession(tmp_path / "unet.onnx", shapes="static")
    static.run(_feeds(1, 8, 1))
    assert static._graph is not None and len(ort.sessions) == 2
    dynamic = onnxruntime_gpu.OnnxRuntimeCudaSession(tmp_path / "unet.onnx")
    for seed in range(3):
        dynamic.run(_feeds(1, 8, seed))
    assert dynamic._graph is None and len(ort.sessions) == 3  # (its own session only)


def test_a_graph_that_cannot_be_captured_is_said_once_and_its_shape_runs_dynamic(
    ort, tmp_path, caplog
):
    ort.fail = "This session cannot use the graph capture feature: nodes on the CPU"
    session = onnxruntime_gpu.OnnxRuntimeCudaSession(tmp_path / "unet.onnx", shapes="static")
    with caplog.at_level(logging.INFO, logger="fastimg"):
        for seed in range(3):
            out = session.run(_feeds(1, 8, seed))
            np.testing.assert_array_equal(out["out_sample"], _expected(_feeds(1, 8, seed)))
    assert session._graph is None and len(ort.dynamic) == 3
    said = [r.message for r in caplog.records if "without a CUDA graph" in r.message]
    assert len(said) == 1 and "nodes on the CPU" in said[0]


def test_free_dimensions_are_read_from_the_feeds_by_name():
    args = [Arg(name=n, shape=s) for n, s in INPUTS.items()]
    assert onnxruntime_gpu.free_dimensions(args, _feeds(2, 8, 0)) == {
        "batch": 2, "latent_height": 8, "latent_width": 8}  # fmt: skip
    bad = {**_feeds(2, 8, 0), "timestep": np.zeros(3, np.int64)}
    with pytest.raises(ValueError, match="dimension batch is 2 and 3"):
        onnxruntime_gpu.free_dimensions(args, bad)
    with pytest.raises(ValueError, match="unnamed free dimension"):
        onnxruntime_gpu.free_dimensions([Arg(name="timestep", shape=[None])], _feeds(2, 8, 0))


def test_the_shapes_option_reaches_the_cuda_sessions(tiny, monkeypatch):
    import fastimg.backends as backends
    from fastimg.engine_folder.manifest import load_manifest

    manifest = load_manifest(tiny[1])
    asked = {}

    def stand_in(path, provider, device, shapes):
        asked[path.parent.name] = shapes

    monkeypatch.setattr(onnxruntime_gpu, "OnnxRuntimeCudaSession", stand_in)
    monkeypatch.setattr(backends, "_checked", lambda session, *args: session)
    names = manifest.component_names
    backends.load_engines("onnxruntime-cuda", manifest, names, "fp32", shapes="static")
    assert asked == dict.fromkeys(names, "static")
