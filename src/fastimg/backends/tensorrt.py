"""TensorRT plans on one CUDA stream, with nothing between the engines but CuPy buffers.

Each plan is deserialized once. Every execution context draws its activations from one block
sized for the largest engine: the engines of a plan set run one at a time (a lock), on one
stream, so they can share it. Input and output buffers are allocated per input shape and bound
by address, for the most recent few shapes only (an LRU: each shape holds device memory and,
where the profile is static, a CUDA graph of the engine's launch, captured on a private stream
so that other threads' work on the shared stream never lands in it). Calls from several threads
are safe: each run copies its feeds in, launches and copies its outputs out under the lock, all
in the shared stream's order. Written against TensorRT 10.1+/11.x's name-based I/O API.
"""

import threading
from collections import OrderedDict

import numpy as np

from ..errors import EngineError, require
from .tensorrt_plans import PlanSet

# Input shapes kept bound per engine; older ones are freed (their buffers and CUDA graph).
MAX_SHAPES = 4


class _Slot:
    """Buffers bound for one set of input shapes, and the CUDA graph replaying them."""

    def __init__(self, inputs: dict, outputs: dict):
        self.inputs, self.outputs, self.graph, self.runs = inputs, outputs, None, 0


class TensorRTEngines:
    """The engines of a plan set (one per component), their shared stream, activation memory
    and lock."""

    def __init__(self, plans: PlanSet, device: int = 0):
        self.trt = trt = require("tensorrt", "tensorrt")
        self.cp = cp = require("cupy", "gpu")
        self.plans, self.device_id = plans, device
        self.lock = threading.Lock()
        self.logger = trt.Logger(trt.Logger.WARNING)
        with cp.cuda.Device(device):
            runtime = trt.Runtime(self.logger)
            self.engines = {}
            for component, path in plans.paths.items():
                engine = runtime.deserialize_cuda_engine(path.read_bytes())
                if engine is None:
                    raise EngineError(
                        f"TensorRT could not load {path} (built by another TensorRT version or "
                        f"for another GPU?): rebuild with  fastimg build {path.parents[2]} "
                        "--rebuild"
                    )
                self.engines[component] = engine
            self.stream = cp.cuda.Stream(non_blocking=True)
            self.capture_stream = cp.cuda.Stream(non_blocking=True)
            size = max(engine.device_memory_size_v2 for engine in self.engines.values())
            self.activations = cp.cuda.alloc(max(size, 1))
        self.activation_bytes = size

    def session(self, component: str) -> "TensorRTSession":
        """A session for one component, sharing this set's stream, memory and lock."""
        return TensorRTSession(self, self.engines[component], self.plans.profile.static)


class TensorRTSession:
    """One engine: run(feeds) copies feeds into bound buffers, launches, returns copies."""

    device = "cuda"

    def __init__(self, shared: TensorRTEngines, engine, use_graphs: bool):
        trt, self.cp = shared.trt, shared.cp
        self.shared, self.engine, self.use_graphs = shared, engine, use_graphs
        self.stream, self.device_id = shared.stream, shared.device_id
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        with self.cp.cuda.Device(self.device_id):
            self.context = engine.create_execution_context(strategy)
            self.context.set_device_memory(shared.activations.ptr, shared.activation_bytes)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        # Inputs of fixed shape (a ControlNet's conditioning_scale) take no shape at run time.
        self.dynamic = {n for n in self.input_names if -1 in tuple(engine.get_tensor_shape(n))}
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: trt.nptype(engine.get_tensor_dtype(n)) for n in names}
        self.signature = {
            n: (np.dtype(self.dtypes[n]).name, len(engine.get_tensor_shape(n))) for n in names
        }
        self._slots: OrderedDict[tuple, _Slot] = OrderedDict()
        self._bound: tuple | None = None

    def _slot(self, signature: tuple) -> _Slot:
        slot = self._slots.get(signature)
        if slot is None:
            cp = self.cp
            for name, shape in signature:
                if name in self.dynamic and not self.context.set_input_shape(name, shape):
                    self._bound = None
                    raise EngineError(
                        f"input {name} of shape {shape} is outside this engine's profile: "
                        "build engines for this size with  fastimg build"
                    )
            inputs = {n: cp.empty(s, self.dtypes[n]) for n, s in signature}
            outputs = {
                n: cp.empty(tuple(self.context.get_tensor_shape(n)), self.dtypes[n])
                for n in self.output_names
            }
            slot = self._slots[signature] = _Slot(inputs, outputs)
            self._bound = None
            while len(self._slots) > MAX_SHAPES:
                self._slots.popitem(last=False)  # its buffers and graph are freed with it
        self._slots.move_to_end(signature)
        if self._bound != signature:
            for name, shape in signature:
                if name in self.dynamic:
                    self.context.set_input_shape(name, shape)
            for name, array in {**slot.inputs, **slot.outputs}.items():
                self.context.set_tensor_address(name, array.data.ptr)
            self._bound = signature
        return slot

    def run(self, feeds: dict) -> dict:
        """Run the engine on `feeds` (NumPy or CuPy arrays) on the shared stream."""
        cp = self.cp
        signature = tuple((n, tuple(feeds[n].shape)) for n in self.input_names)
        with self.shared.lock, cp.cuda.Device(self.device_id), self.stream:
            slot = self._slot(signature)
            for name in self.input_names:
                slot.inputs[name][...] = cp.asarray(feeds[name], dtype=self.dtypes[name])
            if slot.graph is not None:
                slot.graph.launch(self.stream)
            else:
                self._execute(slot)
            return {n: array.copy() for n, array in slot.outputs.items()}

    def _execute(self, slot: _Slot) -> None:
        if not self.context.execute_async_v3(self.stream.ptr):
            raise EngineError("TensorRT failed to run an engine (see its log above)")
        slot.runs += 1
        # The first run lets TensorRT finish its deferred setup; the second is captured, on a
        # stream no other code uses, after the first has finished.
        if self.use_graphs and slot.runs == 1:
            self.stream.synchronize()
            capture = self.shared.capture_stream
            capture.begin_capture()
            try:
                self.context.execute_async_v3(capture.ptr)
            finally:
                slot.graph = capture.end_capture()
