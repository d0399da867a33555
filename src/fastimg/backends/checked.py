"""Engines held to the graph I/O their manifest declares.

At load, each graph's input and output names (and, where the backend says, element types and
ranks) must be those of the manifest; at every run, each output must have the declared name,
element type and shape, its symbolic dimensions (batch, height, latent_height, ...) bound from
the inputs -- a check of shapes, not values, so it costs nothing. A failure inside the engine
itself becomes an EngineError naming the component, instead of the backend's own traceback.
"""

from ..errors import EngineError, FastImgError

# ONNX Runtime and OpenVINO spell element types their own way.
DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(double)": "float64",
    "f32": "float32",
    "f16": "float16",
    "bf16": "bfloat16",
    "i64": "int64",
    "i32": "int32",
    "f64": "float64",
}
# Pixel and latent dimensions are tied by the VAE's scale factor.
SCALED = (("height", "latent_height"), ("width", "latent_width"))


class CheckedSession:
    """A session of `component` whose I/O must match the manifest's `spec`."""

    def __init__(self, session, component: str, spec: dict, factor: int, backend: str):
        self.session, self.component, self.spec = session, component, spec
        self.factor, self.backend = factor, backend
        self.input_names, self.output_names = session.input_names, session.output_names
        for attribute in ("device", "stream", "precision"):
            if hasattr(session, attribute):
                setattr(self, attribute, getattr(session, attribute))
        self._check_graph()

    def _fail(self, problem: str) -> EngineError:
        return EngineError(
            f"the {self.component} engine {problem}: the engine folder does not hold the graph "
            "its manifest describes; export it again with  fastimg export MODEL -o FOLDER"
        )

    def _check_graph(self) -> None:
        for side, names in (("inputs", self.input_names), ("outputs", self.output_names)):
            declared = self.spec[side]
            if sorted(names) != sorted(declared):
                raise self._fail(
                    f"has {side} {', '.join(sorted(names)) or 'none'}, the manifest declares "
                    f"{', '.join(sorted(declared))}"
                )
        for name, (dtype, rank) in getattr(self.session, "signature", {}).items():
            want = {**self.spec["inputs"], **self.spec["outputs"]}[name]
            dtype = DTYPES.get(dtype, dtype)
            if dtype != want["dtype"]:
                raise self._fail(f"takes or gives {name} as {dtype}, not {want['dtype']}")
            if rank is not None and rank != len(want["shape"]):
                raise self._fail(f"has {name} with {rank} dimensions, not {len(want['shape'])}")

    def run(self, feeds: dict) -> dict:
        """Run the engine; its outputs are checked against the declared names, types, shapes."""
        try:
            outputs = self.session.run(feeds)
        except FastImgError:
            raise
        except MemoryError:
            raise EngineError(
                f"the {self.component} engine ran out of memory on {self.backend} for inputs of "
                f"shape {_shapes(feeds)}: use a smaller image or fewer images per call"
            ) from None
        except Exception as exc:  # each backend raises its own untyped errors
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
            raise EngineError(
                f"the {self.component} engine failed on {self.backend} for inputs of shape "
                f"{_shapes(feeds)}: {first}"
            ) from None
        bound = self._bind(feeds)
        for name, want in self.spec["outputs"].items():
            if name not in outputs:
                raise self._fail(f"returned no {name}")
            array = outputs[name]
            if str(array.dtype) != want["dtype"]:
                raise self._fail(f"returned {name} as {array.dtype}, not {want['dtype']}")
            expected = [bound.get(d, d) if isinstance(d, str) else d for d in want["shape"]]
            shape = list(array.shape)
            if len(shape) != len(expected) or any(
                isinstance(e, int) and e != s for e, s in zip(expected, shape, strict=False)
            ):
                raise self._fail(f"returned {name} of shape {shape}, not {_render(expected)}")
        return outputs

    def _bind(self, feeds: dict) -> dict[str, int]:
        """Values of the symbolic dimensions, read off the inputs (and the VAE's scale)."""
        bound: dict[str, int] = {}
        for name, want in self.spec["inputs"].items():
            if name in feeds:
                for dim, size in zip(want["shape"], feeds[name].shape, strict=False):
                    if isinstance(dim, str):
                        bound.setdefault(dim, int(size))
        for pixels, latents in SCALED:
            if pixels in bound and latents not in bound:
                bound[latents] = bound[pixels] // self.factor
            elif latents in bound and pixels not in bound:
                bound[pixels] = bound[latents] * self.factor
        return bound


def _shapes(feeds: dict) -> str:
    return ", ".join(f"{name} {list(array.shape)}" for name, array in feeds.items())


def _render(shape: list) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
