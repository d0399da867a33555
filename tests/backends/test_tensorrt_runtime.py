"""The TensorRT runtime's own logic against stand-ins for TensorRT and CuPy (no GPU here).

The stand-in engine doubles its input; "device" arrays are NumPy arrays whose address is their
pointer, so binding by address, shape slots, CUDA-graph capture and the lock are exercised as
fastimg drives them. That TensorRT itself runs the plans is verified only on a GPU.
"""

import threading
import time
import types

import numpy as np
import pytest

from fastimg.backends import tensorrt


class DeviceArray(np.ndarray):
    """A NumPy array with CuPy's `.data.ptr`."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)


class FakeCuPy:
    def __init__(self):
        self.arrays = {}  # address -> array, what TensorRT would reach through a pointer
        fake = self

        class Stream:
            def __init__(self, non_blocking=False):
                self.ptr, self.capturing, self.log = id(self), None, []

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def synchronize(self):
                pass

            def begin_capture(self):
                self.capturing = []

            def end_capture(self):
                steps, self.capturing = self.capturing, None
                return types.SimpleNamespace(launch=lambda stream: [s() for s in steps])

        class Device:
            def __init__(self, index):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        self.cuda = types.SimpleNamespace(
            Stream=Stream, Device=Device, alloc=lambda size: types.SimpleNamespace(ptr=1)
        )
        self.freed = 0

        def empty(shape, dtype):
            array = np.empty(shape, dtype).view(DeviceArray)
            fake.arrays[array.ctypes.data] = array
            return array

        self.empty = empty
        self.asarray = lambda a, dtype=None: np.asarray(a, dtype=dtype)


class FakeContext:
    def __init__(self, cp, streams):
        self.cp, self.streams, self.shapes, self.addresses = cp, streams, {}, {}
        self.executions = []

    def set_device_memory(self, ptr, size):
        pass

    def set_input_shape(self, name, shape):
        if shape[-1] > 64:  # the profile's limit
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shapes["x"]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream_ptr):
        time.sleep(0.001)  # TensorRT releases the GIL while it launches
        x = self.cp.arrays[self.addresses["x"]]
        y = self.cp.arrays[self.addresses["y"]]

        def step():
            y[...] = 2 * x

        stream = self.streams[stream_ptr]
        if stream.capturing is not None:
            stream.capturing.append(step)
        else:
            step()
        self.executions.append(stream_ptr)
        return True


class FakeEngine:
    num_io_tensors = 2

    def __init__(self, cp, streams):
        self.context = FakeContext(cp, streams)

    def get_tensor_name(self, i):
        return ("x", "y")[i]

    def get_tensor_mode(self, name):
        return "in" if name == "x" else "out"

    def get_tensor_dtype(self, name):
        return np.float32

    def get_tensor_shape(self, name):
        return (-1, -1)  # dynamic, as the profile allows

    def create_execution_context(self, strategy):
        return self.context


FAKE_TRT = types.SimpleNamespace(
    ExecutionContextAllocationStrategy=types.SimpleNamespace(USER_MANAGED=1),
    TensorIOMode=types.SimpleNamespace(INPUT="in"),
    nptype=lambda dtype: dtype,
)


def session(static: bool):
    cp = FakeCuPy()
    stream, capture = cp.cuda.Stream(), cp.cuda.Stream()
    streams = {stream.ptr: stream, capture.ptr: capture}
    shared = types.SimpleNamespace(
        trt=FAKE_TRT,
        cp=cp,
        lock=threading.Lock(),
        stream=stream,
        capture_stream=capture,
        device_id=0,
        activations=types.SimpleNamespace(ptr=1),
        activation_bytes=1,
    )
    engine = FakeEngine(cp, streams)
    return tensorrt.TensorRTSession(shared, engine, use_graphs=static), engine.context, shared


def test_outputs_are_computed_and_copied_out_of_the_bound_buffers():
    run, _, _ = session(static=False)
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    first = run.run({"x": x})["y"]
    second = run.run({"x": x + 1})["y"]
    np.testing.assert_array_equal(first, 2 * x)  # not overwritten by the second run
    np.testing.assert_array_equal(second, 2 * (x + 1))


def test_only_the_most_recent_shapes_keep_device_buffers():
    run, context, _ = session(static=False)
    for side in range(1, 3 * tensorrt.MAX_SHAPES):
        x = np.full((1, side), side, np.float32)
        np.testing.assert_array_equal(run.run({"x": x})["y"], 2 * x)
        assert len(run._slots) <= tensorrt.MAX_SHAPES
    # A shape evicted long ago is bound again and still right.
    x = np.ones((1, 1), np.float32)
    np.testing.assert_array_equal(run.run({"x": x})["y"], 2 * x)
    assert context.shapes["x"] == (1, 1)


def test_a_shape_outside_the_profile_is_refused_and_leaves_the_session_usable():
    from fastimg.errors import EngineError

    run, _, _ = session(static=False)
    with pytest.raises(EngineError, match="outside this engine's profile"):
        run.run({"x": np.ones((1, 100), np.float32)})
    x = np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(run.run({"x": x})["y"], 2 * x)


def test_static_profiles_replay_a_graph_captured_on_a_private_stream():
    run, context, shared = session(static=True)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    for k in range(4):
        np.testing.assert_array_equal(run.run({"x": x + k})["y"], 2 * (x + k))
    # One real run on the shared stream, one capture on the private one, then replays only.
    assert context.executions == [shared.stream.ptr, shared.capture_stream.ptr]


def test_threads_sharing_a_session_each_get_their_own_result():
    run, _, _ = session(static=True)
    errors = []

    def work(k):
        for j in range(20):
            x = np.full((1, 1 + (k + j) % 6), k * 100 + j, np.float32)
            y = run.run({"x": x})["y"]
            if not np.array_equal(y, 2 * x):
                errors.append((k, j))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_the_session_describes_its_graph_for_the_manifest_check():
    run, _, _ = session(static=False)
    assert run.signature == {"x": ("float32", 2), "y": ("float32", 2)}
