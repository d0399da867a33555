"""OpenVINO on the CPU: reads the exported ONNX, compiles once, caches the compiled model.

With static shapes the graph is compiled for each call's exact input shapes (OpenVINO then
plans its kernels and memory for those sizes): always ('static'), or from the second call of a
shape on ('auto'), so that a size seen once does not pay a compile.
"""

import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..atomic import write_atomically
from ..errors import EngineError, require
from ..machine import available_cores
from . import SHAPES
from .openvino_rewrites import rewrite
from .pool import Pool
from .scratch import give_back_after_the_call, scratch_given_back

log = logging.getLogger("fastimg")

OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def compile_config(precision: str, threads: int | None, max_concurrency: int) -> dict:
    """The properties a model is compiled with (they are part of its cache key too)."""
    config = {"INFERENCE_NUM_THREADS": threads or available_cores()}
    if precision in OV_PRECISION:  # int8: the graph's own int8, OpenVINO's default elsewhere
        config["INFERENCE_PRECISION_HINT"] = OV_PRECISION[precision]
    if max_concurrency > 1:  # one stream per concurrent request, the cores shared out
        config.update(PERFORMANCE_HINT="THROUGHPUT", PERFORMANCE_HINT_NUM_REQUESTS=max_concurrency)
    else:
        config["PERFORMANCE_HINT"] = "LATENCY"
    return config


def compiled_precision(hint) -> str:
    """'bf16' or 'fp32': what a compiled model's INFERENCE_PRECISION_HINT (an ov.Type) says."""
    return "bf16" if hint.get_type_name() == "bf16" else "fp32"


class OpenVinoSession:
    """A compiled OpenVINO model and a pool of infer requests (one per concurrent caller).

    One compiled model is held at a time (each holds its own copy of the weights): with static
    shapes a call of new shapes replaces it with one compiled for them; with 'auto' a shape's
    first call runs on the dynamic model and its second compiles it.
    """

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        precision: str = "fp32",
        cache_dir: Path | None = None,
        max_concurrency: int = 1,
        names: tuple[str, ...] = (),
        shapes: str = "dynamic",
        static_cache: Callable[[dict], Path | None] | None = None,
        dynamic_path: Path | None = None,
    ):
        ov = require("openvino", "openvino")
        if shapes not in SHAPES:
            raise ValueError(f"shapes must be one of {', '.join(SHAPES)}, got {shapes!r}")
        self._core, self._path, self._names = ov.Core(), path, names
        # What is compiled for dynamic shapes: with 'auto' OpenVINO's graph for them, where the
        # graph for exact shapes is another (a GroupNorm graph: slower compiled dynamic).
        self._dynamic_path = dynamic_path or path
        self._config = compile_config(precision, threads, max_concurrency)
        self._max_concurrency, self.shapes = max_concurrency, shapes
        self._cache_dir, self._static_cache = cache_dir, static_cache
        self._seen: Counter = Counter()
        self._usual = None  # the last ordinary run's input shapes and dtypes
        self._lock = threading.Lock()
        self._shape_key = None  # the shapes the held model was compiled for (None: dynamic)
        if shapes == "static":  # nothing compiled until the first call says the shapes
            io = self._recorded_io()
            self._requests = None
            from .select import cpu_supports_bf16

            self.precision = "bf16" if precision == "bf16" and cpu_supports_bf16() else "fp32"
        else:
            model = self._compile_dynamic()
            io = graph_io(model, names)
            # On a CPU without native bf16 OpenVINO quietly compiles f32: say what it runs.
            self.precision = compiled_precision(model.get_property("INFERENCE_PRECISION_HINT"))
            self._requests = self._pool(model)
        self.input_names = [name for name, _, _ in io["inputs"]]
        self.output_names = [name for name, _, _ in io["outputs"]]
        self.signature = {name: (dtype, rank) for name, dtype, rank in io["inputs"] + io["outputs"]}

    def _recorded_io(self) -> dict:
        """The graph's I/O (names, element types, ranks), recorded beside its compiled models
        the first time it is read, so that a later start with its shapes compiled reads no
        graph: reading the SD-Turbo text encoder (1.3 GB of weights inside its ONNX) took
        4.6 s, more than importing every component's compiled model."""
        record = None if self._cache_dir is None else self._cache_dir / f"io-{self._path.name}.json"
        if record is not None and (io := _valid_io(record)) is not None:
            return io
        io = graph_io(self._read(), self._names)
        if record is not None:
            text = json.dumps(io).encode()
            try:
                write_atomically(record, lambda f: f.write(text))
            except OSError as exc:  # a read-only folder: read the graph again next time
                log.info("%s's inputs and outputs are not recorded (%s)", self._path, exc)
        return io

    def _read(self, path: Path | None = None):
        path = path or self._path
        try:
            return self._core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises untyped RuntimeErrors
            raise EngineError(
                f"OpenVINO cannot read {path}: {exc}. Re-export the engine folder, "
                "or run with --backend onnxruntime"
            ) from None

    def _compile(self, model, cache_dir: Path | None, graph: Path):
        """`model` (read from `graph`) compiled, into `cache_dir` where one is given."""
        config = dict(self._config)
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)
        try:
            return self._core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises untyped RuntimeErrors
            if cache_dir is not None and "filesystem error" in str(exc):
                # Another process wrote the same cache entry at the same moment (Ray workers
                # starting together): compile without the cache rather than fail.
                log.info("compiling %s without its cache (%s)", graph, exc)
                return self._compile(model, None, graph)
            raise EngineError(
                f"OpenVINO cannot load {graph}: {exc}. Re-export the engine folder, "
                "or run with --backend onnxruntime"
            ) from None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the compiled model on `feeds`; outputs are copied out of the request."""
        requests = self._requests_for(feeds)
        with requests.lend() as request:
            result = request.infer(feeds)
            outputs = {name: np.array(result[name]) for name in self.output_names}
        if scratch_given_back():
            requests.release_if_idle()
            give_back_after_the_call(self)
        else:  # what the model is compiled for and warmed on after a far larger call
            self._usual = {name: (array.shape, array.dtype) for name, array in feeds.items()}
        return outputs

    def give_back(self) -> None:
        """After a call far larger than the usual: the model of the usual runs' shapes
        compiled again (from the compiled cache) with new requests and warmed on those shapes,
        unless a caller runs on the held one now.

        release_memory frees the activations only: the requests keep input and output
        tensors of the largest shapes they ran, and the compiled model its scratchpads and
        the kernels and buffers it set up per shape (a 1024 px, 8-image call on the tiny
        engines left 256 MiB behind); a model compiled anew holds none of them. Its first run
        sets up its kernels (150 ms on the tiny engines): the far larger call pays for it.
        """
        with self._lock:
            if self._requests is None or self._requests.busy():
                return
            usual = self._usual
            key = None if usual is None else tuple(sorted((n, s) for n, (s, _) in usual.items()))
            if self.shapes == "dynamic" or (self.shapes == "auto" and self._seen[key] < 2):
                key = None
            # The old model goes before the new one loads (its weights are not held twice).
            self._requests, self._shape_key = None, None
            if key is None and self.shapes == "static":
                return  # no usual shapes yet: the next call compiles its own
            try:
                if key is None:
                    compiled = self._compile_dynamic()
                else:
                    compiled = self._compile_static(dict(key))
            except EngineError as exc:  # the next call compiles what it needs
                log.warning("%s was not compiled again after giving its memory back: %s",
                            self._path, exc)  # fmt: skip
                return
            requests = self._pool(compiled)
            if usual is not None:
                with requests.lend() as request:
                    request.infer({n: np.zeros(s, d) for n, (s, d) in usual.items()})
            self._requests, self._shape_key = requests, key

    @property
    def static_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """The input shapes the held model was compiled for; None while it is the dynamic one."""
        with self._lock:
            return None if self._shape_key is None else dict(self._shape_key)

    def _requests_for(self, feeds: dict[str, np.ndarray]) -> Pool:
        """The requests of the model that runs these feeds, compiled for them if need be."""
        if self.shapes == "dynamic":
            with self._lock:
                if self._requests is None:  # its compile in give_back() failed: again
                    self._requests = self._pool(self._compile_dynamic())
                return self._requests
        key = tuple(sorted((name, tuple(array.shape)) for name, array in feeds.items()))
        with self._lock:
            if key == self._shape_key:
                return self._requests
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] += 1
            if self.shapes == "auto" and self._seen[key] < 2:  # a shape seen once: dynamic
                if self._shape_key is not None or self._requests is None:
                    # (callers still running keep their model alive until they are done)
                    self._requests, self._shape_key = None, None
                    self._requests = self._pool(self._compile_dynamic())
                return self._requests
            # The old model goes before the new one is compiled (and stays gone if that fails).
            self._requests, self._shape_key = None, None
            self._requests = self._pool(self._compile_static(dict(key)))
            self._shape_key = key
            return self._requests

    def _pool(self, compiled) -> Pool:
        return Pool(compiled.create_infer_request, self._max_concurrency, compiled.release_memory)

    def _compile_dynamic(self):
        """The graph for dynamic shapes, rewritten where the rewrite holds at every size:
        imported from its compiled blob where there is one, without reading the graph."""
        cache = self._dynamic_cache()
        if cache is not None and (compiled := self._import_cached(cache)) is not None:
            return compiled
        model = self._read(self._dynamic_path)
        rewrite(model)  # (what the compiled cache's key names: openvino_rewrites.cache_key)
        return self._compile_into(model, cache, self._dynamic_path)

    def _dynamic_cache(self) -> Path | None:
        """The folder the graph for dynamic shapes is compiled into: its own in the compiled
        cache, as a blob there is imported without OpenVINO checking which graph it holds."""
        if self._cache_dir is None:
            return None
        folder = self._cache_dir / f"dynamic-{self._dynamic_path.name}"
        try:
            folder.mkdir(exist_ok=True)
        except OSError as exc:  # a read-only folder: compiled each time
            log.info("%s will not be cached (%s)", self._dynamic_path, exc)
            return None
        return folder

    def _compile_static(self, shapes: dict[str, tuple[int, ...]]):
        ov = require("openvino", "openvino")
        cache = None
        if self._static_cache is not None:
            cache = self._static_cache({name: list(shape) for name, shape in shapes.items()})
        if cache is not None and (compiled := self._import_cached(cache)) is not None:
            return compiled
        model = self._read()
        model.reshape(
            {
                port: ov.PartialShape(list(shapes[name]))
                for port in model.inputs
                if (name := _name(port, self._names)) in shapes
            }
        )
        rewrite(model)  # (what the static cache's key names: openvino_rewrites.cache_key)
        return self._compile_into(model, cache, self._path)

    def _compile_into(self, model, cache: Path | None, graph: Path):
        """`model` compiled into `cache`, its blob then marked whole (_import_cached imports
        no other: OpenVINO writes a blob in place, and another process may be writing it)."""
        compiled = self._compile(model, cache, graph)
        if cache is not None:
            blobs = sorted(cache.glob("*.blob"), key=lambda p: p.stat().st_mtime, reverse=True)
            if blobs:  # (none where the cache could not be written: compiled without it)
                record = json.dumps({"blob": blobs[0].name, "bytes": blobs[0].stat().st_size})
                try:
                    write_atomically(cache / WHOLE_BLOB, lambda f: f.write(record.encode()))
                except OSError as exc:
                    log.info("%s's compiled blob is not marked (%s)", graph, exc)
        return compiled

    def _import_cached(self, cache: Path):
        """The model compiled into `cache` before, imported from the mapped blob; else None.

        Handing OpenVINO the rewritten graph with its CACHE_DIR would find the same blob, but only
        after reading and hashing the whole graph, whose weights then stay in memory beside the
        imported copy (10.3 instead of 7.0 GB for the sd15 UNet). The folder's key already covers
        what that hash checks (graph, shapes, options, rewrites, OpenVINO's version), so the blob
        is imported directly.
        """
        ov = require("openvino", "openvino")
        blob = _whole_blob(cache)
        if blob is None or (start := _compiled_start(blob)) is None:
            return None
        try:
            mapped = np.memmap(blob, dtype=np.uint8, mode="c", offset=start)
            compiled = self._core.import_model(
                ov.Tensor(mapped, shared_memory=True), "CPU", self._config
            )
        except Exception as exc:  # OpenVINO raises untyped RuntimeErrors
            log.info("compiling again: the cached blob %s was refused (%s)", blob, exc)
            return None
        compiled.blob = mapped  # the compiled model reads its weights from the mapping
        return compiled


# OpenVINO's cache writes this one-line header before the plugin's own exported model.
CACHE_HEADER = re.compile(
    rb'<\?xml version="1\.0"\?><compiled_blob [^>]*header_size_alignment="0"/>\n'
)


# Beside a cached blob: its name and size, written once OpenVINO has written it whole.
WHOLE_BLOB = "blob.json"


def _whole_blob(cache: Path) -> Path | None:
    """The blob in `cache` that its record marks as written whole, else None."""
    try:
        record = json.loads((cache / WHOLE_BLOB).read_text())
        blob = cache / record["blob"]
        whole = blob.parent == cache and blob.stat().st_size == record["bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return blob if whole else None


def _compiled_start(blob: Path) -> int | None:
    """Where the exported model begins in a blob of OpenVINO's cache (None: not that format)."""
    try:
        with open(blob, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    match = CACHE_HEADER.match(head)
    return match.end() if match else None


def graph_io(model, names: tuple[str, ...]) -> dict:
    """{'inputs': [[name, element type, rank], ...], 'outputs': [...]} of a model or compiled
    model, each port named by the manifest's name for it."""
    return {
        side: [
            [_name(port, names), port.get_element_type().get_type_name(), _rank(port)]
            for port in ports
        ]
        for side, ports in (("inputs", model.inputs), ("outputs", model.outputs))
    }


def _valid_io(record: Path) -> dict | None:
    """The I/O `record` holds, or None where it is missing or not what graph_io writes."""
    try:
        io = json.loads(record.read_text())
        rows = [row for side in ("inputs", "outputs") for row in io[side]]
        if all(_valid_port(*row) for row in rows):
            return io
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return None


def _valid_port(name, dtype, rank) -> bool:
    return isinstance(name, str) and isinstance(dtype, str) and (rank is None or type(rank) is int)


def _rank(port) -> int | None:
    rank = port.get_partial_shape().rank
    return rank.get_length() if rank.is_static else None


def _name(port, wanted: tuple[str, ...]) -> str:
    """The port's name among `wanted` (the manifest's I/O names), else any of its names."""
    return next((n for n in wanted if n in port.get_names()), None) or port.get_any_name()


def load_session(path: Path, options) -> OpenVinoSession:
    """The registry's loader: a compiled model with its caches, precision and shapes."""
    return OpenVinoSession(
        path,
        threads=options.threads,
        precision=options.precision,
        cache_dir=options.cache_dir,
        max_concurrency=options.max_concurrency,
        names=options.names,
        shapes=options.shapes,
        static_cache=options.static_cache,
        dynamic_path=options.dynamic_path,
    )
