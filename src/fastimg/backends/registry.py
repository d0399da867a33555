"""Every backend described once: what it runs on, in which precisions, what it compiles and
caches, which graphs of an engine folder it loads, and how the pipeline and the server use it.

Nothing outside fastimg.backends compares backend names: it asks the backend's description.
A new backend is one more `Backend` here and a module with its loader.
"""

from dataclasses import dataclass

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# The manifest's name for a component's int8 OpenVINO graph (what --precision int8 loads).
INT8_VARIANT = "openvino-int8"
# The manifest's name for a component's fp16 graph for the GPU (export --cuda-fp16).
CUDA_FP16_VARIANT = "cuda-fp16"
# The manifest's name for a component's graph OpenVINO compiles for each call's exact shapes
# (GroupNorms as reductions: faster there, not with dynamic shapes; export/openvino_graph.py).
STATIC_VARIANT = "openvino-static"
# The int8 graph quantized from that one, which --precision int8 runs with those shapes.
INT8_STATIC_VARIANT = "openvino-int8-static"


@dataclass(frozen=True)
class Backend:
    """One backend: its name, device, precisions and the ways it differs from the others."""

    name: str
    device: str  # "cpu", or "cuda" for the GPU backends
    precisions: tuple[str, ...]  # the first is its default
    extra: str  # the pip extra that installs it ("fastimg": always there)
    # "module:function" that loads one component's session from (path, LoadOptions); for plan
    # sets, the class that loads a PlanSet's engines (plans, device=).
    loader: str
    cache: str | None = None  # folder beside the engines where what it compiles is kept
    # How its attention runs without holding the scores: "all" (it fuses every attention
    # itself), "variant" (the fused graphs the manifest lists for it), "none".
    fused_attention: str = "none"
    per_call_scratch: bool = False  # it keeps each call's scratch memory with the weights
    static_shapes: bool = False  # it can also compile each call's exact shapes (--shapes)
    # The shapes setting of a run of one image size (a single image, a video, a stream) that
    # asks for none: OpenVINO compiles that size once (cached on disk) and runs it faster; ONNX
    # Runtime CUDA's CUDA graphs would hold the weights twice on the GPU, so they are asked for.
    one_size_shapes: str = "dynamic"
    plan_sets: bool = False  # it loads prebuilt plans per call shape (TensorRT)
    serve_batch: int = 1  # requests the server runs per engine run by default
    auto: bool = True  # `--backend auto` may choose it
    fp16_variant: str | None = None  # the manifest variant it runs in fp16, where it has one
    # Where it compiles each call's exact shapes, the variant it loads instead of another:
    # (variant, its static counterpart) pairs, variant None standing for the standard graph.
    static_graphs: tuple[tuple[str | None, str], ...] = ()

    @property
    def gpu(self) -> bool:
        """Whether it runs on a CUDA GPU."""
        return self.device == "cuda"

    def graph_variant(self, precision: str) -> str:
        """The manifest variant it runs where a component has one: the int8 UNet for OpenVINO
        int8, else its own (ONNX Runtime's fused-attention and Winograd graphs on the CPU).

        ONNX Runtime CUDA keeps the standard graphs: with the fused MultiHeadAttention graphs
        the sd15 512 job on an H200 in fp32 took 0.36 s against 0.32 s
        (bench/results/README.md)."""
        if precision == "int8" and "int8" in self.precisions:
            return INT8_VARIANT
        if precision == "fp16" and self.fp16_variant is not None:
            return self.fp16_variant
        return self.name


# In auto's order of preference: the GPU's fastest first, then the CPU's.
REGISTRY = {
    backend.name: backend
    for backend in (
        Backend(
            "tensorrt",
            "cuda",
            ("fp16", "fp32"),
            "tensorrt",
            "fastimg.backends.tensorrt:TensorRTEngines",
            plan_sets=True,
        ),
        # fp16: the graphs export --cuda-fp16 writes (a folder exported in fp16: its own), its
        # default where a folder has them (select).
        Backend(
            "onnxruntime-cuda",
            "cuda",
            ("fp32", "fp16"),
            "gpu",
            "fastimg.backends.onnxruntime_gpu:load_cuda_session",
            static_shapes=True,  # each call's exact shapes replayed from a CUDA graph
            fp16_variant=CUDA_FP16_VARIANT,
        ),
        # Requests per engine run measured to pay on OpenVINO (requests with images of their
        # own, bench/results/batching-sd15-256.json, 2-core EPYC): 1.37x (2) and 1.43x (4)
        # faster per image; ONNX Runtime 0.97x and 0.94x, so it runs them one by one, as do
        # the GPU backends (unmeasured).
        Backend(
            "openvino",
            "cpu",
            ("fp32", "bf16", "int8"),
            "openvino",
            "fastimg.backends.openvino:load_session",
            cache="openvino_cache",
            fused_attention="all",
            per_call_scratch=True,
            static_shapes=True,
            one_size_shapes="static",
            static_graphs=((INT8_VARIANT, INT8_STATIC_VARIANT), (None, STATIC_VARIANT)),
            serve_batch=4,
        ),
        # fp16: a folder exported in fp16 (export --precision fp16), which has no fp32 graphs.
        Backend(
            "onnxruntime",
            "cpu",
            ("fp32", "fp16"),
            "fastimg",
            "fastimg.backends.onnxruntime:load_session",
            fused_attention="variant",
        ),
        # ONNX Runtime's TensorRT provider compiles engines on first use (minutes): asked for,
        # never auto.
        Backend(
            "onnxruntime-tensorrt",
            "cuda",
            ("fp16",),
            "gpu",
            "fastimg.backends.onnxruntime_gpu:load_tensorrt_session",
            cache="ort_tensorrt_cache",
            auto=False,
        ),
    )
}
BACKENDS = tuple(REGISTRY)
GPU_BACKENDS = tuple(name for name, backend in REGISTRY.items() if backend.gpu)
AUTO_ORDER = tuple(name for name, backend in REGISTRY.items() if backend.auto)
BACKEND_CHOICES = ("auto", *BACKENDS)
PRECISION_CHOICES = ("auto", *PRECISIONS)


def describe(name: str) -> Backend:
    """The description of the backend called `name` (a KeyError names an unknown one)."""
    return REGISTRY[name]


def serve_batch(name: str | None) -> int:
    """Requests the server runs per engine run on backend `name` by default (1 if unknown)."""
    backend = REGISTRY.get(name)
    return backend.serve_batch if backend is not None else 1
