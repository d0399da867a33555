"""The TensorRT runtime's own logic against stand-ins for TensorRT and CuPy (no GPU here).

The stand-in engine doubles its input; "device" arrays are NumPy arrays whose address is their
pointer, so binding by address, shape slots, CUDA-graph capture and the lock are exercised as
fastimg drives them. That TensorRT itself runs the plans is verified only on a GPU.
"""

import threading
import types
from concurrent.futures import ThreadPoolExecutor

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
        self.on_execute = None  # called first in each launch (TensorRT releases the GIL there)

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
        if self.on_execute is not None:
            self.on_execute()
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


def session(static: bool, engine_class=None):
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
    engine = (engine_class or FakeEngine)(cp, streams)
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


class WatchedLock:
    """A lock that calls `on_contended` when a thread finds it held (and then waits for it)."""

    def __init__(self, on_contended):
        self._lock, self.on_contended, self.contended = threading.Lock(), on_contended, False

    def __enter__(self):
        if not self._lock.acquire(blocking=False):
            self.contended = True
            self.on_contended()
            self._lock.acquire()
        return self

    def __exit__(self, *exc):
        self._lock.release()


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("second_side", [4, 6], ids=["same-shape", "other-shape"])
def test_a_thread_arriving_mid_launch_waits_and_each_gets_its_own_result(static, second_side):
    """A second thread runs while the first is inside its launch, forced: the first holds there
    until the second has found the session's lock taken (or, were there no lock, has finished:
    having overwritten the first's input buffers, same shape, or rebound its tensors, other)."""
    run, context, shared = session(static=static)
    launched, go_on = threading.Event(), threading.Event()
    shared.lock = WatchedLock(on_contended=go_on.set)

    def hold_the_first_launch():
        if not launched.is_set():
            launched.set()
            assert go_on.wait(60), "the second run neither waited nor finished"

    context.on_execute = hold_the_first_launch
    first = np.arange(4, dtype=np.float32).reshape(1, 4)
    second = np.full((1, second_side), 100, np.float32)
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(run.run, {"x": first})
        assert launched.wait(60), "the first run never launched"
        b = pool.submit(run.run, {"x": second})
        b.add_done_callback(lambda _: go_on.set())
        np.testing.assert_array_equal(a.result()["y"], 2 * first)
        np.testing.assert_array_equal(b.result()["y"], 2 * second)
    assert shared.lock.contended  # the second run waited for the first
    # One launch each, in order (a static session captures after a slot's first launch, and
    # replays that graph for the same shape instead of launching).
    first_runs = [shared.stream.ptr, shared.capture_stream.ptr] if static else [shared.stream.ptr]
    second_runs = [] if static and second_side == 4 else first_runs
    assert context.executions == first_runs + second_runs


def test_the_session_describes_its_graph_for_the_manifest_check():
    run, _, _ = session(static=False)
    assert run.signature == {"x": ("float32", 2), "y": ("float32", 2)}


class ScaledEngine(FakeEngine):
    """x (dynamic) and s (fixed shape (1,), as a ControlNet's conditioning_scale) in, y out."""

    num_io_tensors = 3

    def __init__(self, cp, streams):
        super().__init__(cp, streams)
        context = self.context
        plain = context.execute_async_v3

        def execute(stream_ptr):  # y = 2 x s, read from the bound s at launch (and replay)
            assert plain(stream_ptr)
            s = context.cp.arrays[context.addresses["s"]]
            y = context.cp.arrays[context.addresses["y"]]
            step = lambda: y.__imul__(s[0])  # noqa: E731
            stream = context.streams[stream_ptr]
            stream.capturing.append(step) if stream.capturing is not None else step()
            return True

        context.execute_async_v3 = execute

    def get_tensor_name(self, i):
        return ("x", "s", "y")[i]

    def get_tensor_mode(self, name):
        return "out" if name == "y" else "in"

    def get_tensor_shape(self, name):
        return (1,) if name == "s" else (-1, -1)


@pytest.mark.parametrize("static", [False, True])
def test_an_input_of_fixed_shape_is_bound_but_given_no_shape(static):
    """TensorRT sets shapes of dynamic inputs only; a fixed-shape input (a ControlNet's scale)
    is copied into its bound buffer each run, so a replayed CUDA graph reads the new value."""
    run, context, _ = session(static=static, engine_class=ScaledEngine)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    for scale in (1.0, 0.5, 2.0):
        got = run.run({"x": x, "s": np.array([scale], np.float32)})["y"]
        np.testing.assert_array_equal(got, 2 * x * scale)
    assert run.dynamic == {"x"} and "s" not in context.shapes and "s" in context.addresses
