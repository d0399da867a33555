"""The engines a pipeline runs on: one set loaded up front, or, for a backend of prebuilt plan
sets (TensorRT), the set that fits each call's shape (a few kept loaded, least recently used
dropped first), with `auto`'s fallback for a call that no plan set fits.

It also answers what the memory estimate needs of the engines that run a call: which
components run attention fused, which graph keeps per-call scratch memory, which graph
variant runs, and what earlier calls left with the engines (theirs to reuse); and whether a
call is so far above the ones before it that it gives its scratch memory back as it runs.
"""

import logging
import statistics
import threading
from collections import OrderedDict, deque
from collections.abc import Callable

from .. import machine
from ..backends import Engines, graph_variant, load_engines, select
from ..backends.registry import BACKENDS, describe
from ..backends.select import exported_in_fp16, resolve
from ..engine_folder.manifest import DEFAULT_MAX_SIDE, Manifest
from ..errors import EngineError, InputError
from . import memory
from .arrays import namespace

log = logging.getLogger("fastimg")

# Plan sets kept loaded at once (each holds its engines and activation memory).
MAX_PLAN_SETS = 2
# A call holding more than OUTLIER_FACTOR times the median of the last RECENT_CALLS calls'
# memory (and than OUTLIER_FACTOR one-image calls of FLOOR_SIDE px) gives its scratch back.
OUTLIER_FACTOR, RECENT_CALLS, FLOOR_SIDE = 4, 16, 512


def describe_run(backend: str, precision: str, fp16_export: bool = False) -> str:
    """What a run on this backend and precision promises, in one line (`fp16_export`: the
    folder was exported in fp16, so it has no exact path)."""
    if precision == "fp32" and not fp16_export:
        return f"running on {backend} (fp32): the exact path, matching diffusers"
    if not fp16_export:
        return (
            f"running on {backend} ({precision}): the fast path, close to but not exactly "
            "diffusers' output (--precision fp32 is the exact path)"
        )
    arithmetic = "fp32 arithmetic on fp16 weights" if precision == "fp32" else "the fast path"
    return (
        f"running on {backend} ({precision}): {arithmetic}, close to but not exactly diffusers' "
        "output (engines exported in fp16 have no exact path: export without --precision fp16)"
    )


def fallback_precision(asked: str, manifest: Manifest) -> str:
    """The precision a fallback backend is asked for: the one asked of the pipeline, so that
    an exact (fp32) pipeline stays exact; 'auto' where that was fp32 on a folder exported in
    fp16, which has no fp32 graphs for ONNX Runtime to fall back on."""
    return "auto" if asked == "fp32" and exported_in_fp16(manifest) else asked


def fused_components(manifest: Manifest, backend: str) -> frozenset:
    """The components `backend` runs with attention fused (never holding the scores): those
    it fuses itself, or those whose variant graph for it has fused attention."""
    kind = describe(backend).fused_attention
    if kind == "all":
        return frozenset(manifest.components)
    if kind == "none":
        return frozenset()
    return frozenset(
        c for c in manifest.components if manifest.variant(c, backend).get("fused_attention")
    )


def estimate_kind(manifest: Manifest, backend: str, precision: str) -> dict:
    """What the memory estimate needs to know of a backend: the components it runs with
    attention fused, the graph whose weights it keeps per-call scratch for (None: none), and
    the graph variant it runs (memory.call_bytes' fused, scratch and variant)."""
    variant = graph_variant(backend, precision)
    return {
        "fused": fused_components(manifest, backend),
        "scratch": variant if describe(backend).per_call_scratch else None,
        "variant": variant,
    }


class EngineSet:
    """The loaded engines of one engine folder on one resolved backend and precision."""

    def __init__(
        self,
        manifest: Manifest,
        backend: str,
        precision: str,
        options: dict,
        shapes: str,
        auto: bool,
        asked_precision: str,
    ):
        self.manifest, self.backend, self.precision = manifest, backend, precision
        if shapes is None:  # a run of one image size that asked for none: the backend's choice
            shapes = describe(backend).one_size_shapes
            if shapes == "static":  # (its first run of a size is the slower for it: say why)
                log.info(
                    "%s compiles each image size once (static shapes, kept in the engines' "
                    "compiled cache; --shapes dynamic compiles one graph for every size)",
                    backend,
                )
        self.options, self.shapes = options, shapes
        if shapes != "dynamic" and not describe(backend).static_shapes:
            log.warning(
                "shapes %r does nothing on %s, which runs every shape on one compiled graph "
                "(%s compile each call's exact shapes)",
                shapes,
                backend,
                " and ".join(n for n in BACKENDS if describe(n).static_shapes),
            )
        self._auto, self._asked_precision = auto, asked_precision
        self._lock = threading.Lock()  # the loaded engines and what calls left with them
        self._loading = threading.Lock()  # one plan set loads at a time, outside self._lock
        # Per loaded engines, the estimated bytes of the largest call that ran on them: the
        # backends keep that memory for the next call (OpenVINO's scratch, ONNX Runtime's
        # arena), so it is no longer free, yet theirs to reuse.
        self._kept: dict[str, int] = {}
        self._recent: dict[str, deque] = {}  # per loaded engines, the last calls' bytes
        self._loaded: OrderedDict[str | None, Engines] = OrderedDict()
        self._fallback: Engines | None = None
        self._wrap: Callable[[str, object], object] | None = None
        if not describe(backend).plan_sets:  # plan sets load as calls need them
            engines = self._loaded[None] = self._load(backend, precision)
            if engines.precision != precision:
                log.warning(
                    "%s was asked for, but %s compiled %s on this machine (the CPU has no "
                    "native %s)",
                    precision,
                    backend,
                    engines.precision,
                    precision,
                )
                self.precision = engines.precision

    def primary(self) -> Engines | None:
        """The engines loaded most recently (None before a plan-set backend's first call)."""
        with self._lock:
            return next(reversed(self._loaded.values()), None)

    def default(self) -> Engines:
        """The engines a stage method runs on when it is given none."""
        engines = self.primary()
        if engines is None:
            raise EngineError(
                "no TensorRT plan set is loaded before the first call: call the pipeline, or "
                "pass engines=pipe.engines_for(height, width, batch) to the stage methods"
            )
        return engines

    def wrap_sessions(self, wrap: Callable[[str, object], object]) -> None:
        """Replace every session, now and as plan sets load, by wrap(component, session)."""
        self._wrap = wrap
        for engines in (*self._loaded.values(), self._fallback):
            if engines is not None:
                engines.sessions = {n: wrap(n, s) for n, s in engines.sessions.items()}

    def _load(self, backend: str, precision: str, plans=None) -> Engines:
        engines = load_engines(
            backend,
            self.manifest,
            self.manifest.runtime_components,  # (a plan set holds a plan for each)
            precision,
            plans=plans,
            shapes=self.shapes,
            **self.options,
        )
        engines.xp = namespace(engines.device)
        if self._wrap is not None:
            engines.sessions = {n: self._wrap(n, s) for n, s in engines.sessions.items()}
        return engines

    def for_call(self, height: int, width: int, batch: int) -> Engines:
        """The engines that run a call of `batch` images of height x width pixels."""
        if not describe(self.backend).plan_sets:
            return self._loaded[None]
        try:
            plans = select.tensorrt_plans_here(
                self.manifest,
                self.options["device"],
                height=height,
                width=width,
                batch=batch,
                precision=self.precision,
            )
        except EngineError as exc:
            if not self._auto:
                raise
            return self._fallback_engines(f"{width}x{height}, {batch} per call: {exc}")
        with self._loading:
            with self._lock:
                engines = self._loaded.get(plans.key)
            if engines is None:
                engines = self._load(self.backend, self.precision, plans)
            with self._lock:
                self._loaded[plans.key] = engines
                self._loaded.move_to_end(plans.key)
                while len(self._loaded) > MAX_PLAN_SETS:
                    self._loaded.popitem(last=False)
            return engines

    def _fallback_engines(self, reason: str) -> Engines:
        with self._loading:
            if self._fallback is None:
                backend, precision = resolve(
                    "auto",
                    fallback_precision(self._asked_precision, self.manifest),
                    self.manifest,
                    self.options["device"],
                    exclude=(self.backend,),
                )
                self._fallback = self._load(backend, precision)
        log.warning(
            "%s passed over for %s; running on %s", self.backend, reason, self._fallback.label
        )
        return self._fallback

    # --- memory ---------------------------------------------------------------------------------

    def max_side(self, device: str, tile: int | None = None) -> int:
        """The longest image side these engines take here: what the manifest states, bounded
        by what one image's activations can have of the memory free now (plan sets bound
        their own sizes; `tile`: the decoder runs on tiles of that many pixels)."""
        stated = self.manifest.max_side
        fits = None
        if not describe(self.backend).plan_sets:
            machine.return_freed_memory()
            fits = memory.largest_side(
                self.manifest,
                machine.free_bytes(device),
                **estimate_kind(self.manifest, self.backend, self.precision),
                tile=tile,
            )
        sides = [side for side in (stated, fits) if side is not None]
        return min(sides) if sides else DEFAULT_MAX_SIDE

    def side_limit(self, device: str, tile: int | None, untiled: int) -> tuple[int, Callable]:
        """(the longest side a call decoding in `tile`-pixel tiles takes here, or `untiled`,
        the side taken at load, for whole decoding; what a refusal of a larger image adds:
        for whole decoding, how tiles would help where the decoder is what bounds the side).
        Tiles never lower the side: a side taken whole at load is taken in tiles too."""
        if tile:  # (memory free now is less than at load by what the engines hold since)
            return max(untiled, self.max_side(device, tile)), str
        stated = self.manifest.max_side
        if describe(self.backend).plan_sets or (stated is not None and stated <= untiled):
            return untiled, str  # (tiles cannot lift a bound the memory does not set)

        def hint() -> str:
            machine.return_freed_memory()
            free = machine.free_bytes(device)
            kind = estimate_kind(self.manifest, self.backend, self.precision)
            return memory.tiles_hint(self.manifest, free, True, **kind, height=untiled + 1)

        return untiled, hint

    def images_per_call(self, engines: Engines, request, total: int) -> tuple[int, int]:
        """(images per engine call, bytes that call holds) for `total` images of `request`'s
        size, guidance and VAE tiling on `engines`, refused with the numbers when one image
        cannot fit in the memory free."""
        if describe(engines.backend).plan_sets:  # (their activation memory is set at load)
            return total, 0
        height, width = request.pixels.shape[2:]
        kind = estimate_kind(self.manifest, engines.backend, engines.precision)
        kind["tile"] = request.vae_tile_size

        def fitting() -> int:
            free = machine.free_bytes(engines.device)
            if free is not None:  # what earlier calls left with the engines is theirs to reuse
                with self._lock:
                    free += self._kept.get(engines.label, 0)
            return memory.images_per_call(
                self.manifest, height, width, total, request.cfg, free, **kind
            )

        try:
            chunk = fitting()
        except InputError:
            chunk = 0
        if chunk < min(total, memory.MAX_IMAGES_PER_CALL):
            # What this process freed counts once handed back: malloc_trim, milliseconds a
            # call (and the next call's pages faulted in again), so only where it may matter.
            machine.return_freed_memory()
            chunk = fitting()
        held = memory.peak_bytes(self.manifest, height, width, chunk, request.cfg, **kind)
        return chunk, held

    def gives_back(self, engines: Engines, held: int) -> bool:
        """Whether a call holding `held` bytes on `engines` is an outlier that gives its
        scratch memory back as it runs: above OUTLIER_FACTOR times both the recent calls'
        median and a one-image FLOOR_SIDE px call (with CFG)."""
        if held <= 0:  # plan sets: their activation memory is fixed at load
            return False
        kind = estimate_kind(self.manifest, engines.backend, engines.precision)
        floor = memory.peak_bytes(
            self.manifest, FLOOR_SIDE, FLOOR_SIDE, 1, True,
            kind["fused"], kind["scratch"], kind["variant"],
        )  # fmt: skip
        with self._lock:
            recent = self._recent.setdefault(engines.label, deque(maxlen=RECENT_CALLS))
            typical = max(statistics.median(recent), floor) if recent else floor
            recent.append(held)
        return held > OUTLIER_FACTOR * typical

    def settle(self, engines: Engines, held: int, given_back: bool) -> None:
        """After a call that held `held` bytes on `engines`: what it gave back goes back to
        the system; else the backend keeps it for the next call (and the estimate counts it
        as theirs to reuse)."""
        if given_back:
            machine.return_freed_memory()
            return
        with self._lock:
            self._kept[engines.label] = max(self._kept.get(engines.label, 0), held)
