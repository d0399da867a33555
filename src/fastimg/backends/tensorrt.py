"""TensorRT plans on one CUDA stream, with nothing between the engines but CuPy buffers.

Each plan is deserialized once. Every execution context draws its activations from one block
sized for the largest engine (the engines run one after another on the same stream, so they
can share it). Input and output buffers are allocated once per shape and bound by address;
where the profile is static, each engine's launch is captured once into a CUDA graph and
replayed. Written against TensorRT 10.x/11.x's name-based I/O API; not run on a GPU here.
"""

from ..errors import EngineError, require
from .tensorrt_plans import PlanSet


class _Slot:
    """Buffers bound for one set of input shapes, and the CUDA graph replaying them."""

    def __init__(self, inputs: dict, outputs: dict):
        self.inputs, self.outputs, self.graph, self.runs = inputs, outputs, None, 0


class TensorRTEngines:
    """The four engines of a plan set, their shared stream and activation memory."""

    def __init__(self, plans: PlanSet):
        self.trt = trt = require("tensorrt", "tensorrt")
        self.cp = cp = require("cupy", "gpu")
        self.plans = plans
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        self.engines = {}
        for component, path in plans.paths.items():
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise EngineError(
                    f"TensorRT could not load {path} (built by another TensorRT version or for "
                    f"another GPU?): rebuild with  fastimg build {path.parents[2]} --rebuild"
                )
            self.engines[component] = engine
        self.stream = cp.cuda.Stream(non_blocking=True)
        size = max(engine.device_memory_size_v2 for engine in self.engines.values())
        self.activations = cp.cuda.alloc(max(size, 1))
        self.activation_bytes = size

    def session(self, component: str) -> "TensorRTSession":
        """A session for one component, sharing this set's stream and activation memory."""
        return TensorRTSession(self, self.engines[component], self.plans.profile.static)


class TensorRTSession:
    """One engine: run(feeds) copies feeds into bound buffers, launches, returns copies."""

    device = "cuda"

    def __init__(self, shared: TensorRTEngines, engine, use_graphs: bool):
        trt, self.cp = shared.trt, shared.cp
        self.shared, self.engine, self.use_graphs = shared, engine, use_graphs
        self.stream = shared.stream
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        self.context = engine.create_execution_context(strategy)
        self.context.set_device_memory(shared.activations.ptr, shared.activation_bytes)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: trt.nptype(engine.get_tensor_dtype(n)) for n in names}
        self._slots: dict[tuple, _Slot] = {}
        self._bound: tuple | None = None

    def _slot(self, signature: tuple) -> _Slot:
        slot = self._slots.get(signature)
        if slot is None:
            cp = self.cp
            for name, shape in signature:
                if not self.context.set_input_shape(name, shape):
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
        if self._bound != signature:
            for name, shape in signature:
                self.context.set_input_shape(name, shape)
            for name, array in {**slot.inputs, **slot.outputs}.items():
                self.context.set_tensor_address(name, array.data.ptr)
            self._bound = signature
        return slot

    def run(self, feeds: dict) -> dict:
        """Run the engine on `feeds` (NumPy or CuPy arrays) on the shared stream."""
        cp = self.cp
        signature = tuple((n, tuple(feeds[n].shape)) for n in self.input_names)
        with self.stream:
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
        # The first run lets TensorRT finish its deferred setup; the second is captured.
        if self.use_graphs and slot.runs == 1:
            self.stream.begin_capture()
            try:
                self.context.execute_async_v3(self.stream.ptr)
            finally:
                slot.graph = self.stream.end_capture()
