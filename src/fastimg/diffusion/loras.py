"""LoRAs at run time on loaded engines: each adapted graph gets a branched twin, built once
beside the original with a branch at every layer a LoRA can adapt. A pipeline that never loads
a LoRA runs its plain graphs; once a LoRA loads (or `prepare` is called), the twin replaces the
plain graph for every call (with no LoRA active its branches are fed zeros), so the weights are
held once, not twice, and every later LoRA is a new feed, not a new graph."""

import dataclasses
import threading

from ..backends import component_options, load_session
from ..backends.checked import CheckedSession
from ..backends.registry import describe
from ..errors import InputError
from ..lora.adapters import GRAPHS, Adapters, match_layers, model_of, zero_feeds
from ..lora.graph import find_targets, load_graph, variant_key, write_branched_graph


class LoraSession:
    """A component's session that runs its branched graph with the active LoRAs' projections
    (zeros where none adapts a layer); the plain graph only until the twin is loaded."""

    def __init__(self, plain, component: str, adapters: Adapters):
        self.plain, self.component, self.adapters = plain, component, adapters
        self.input_names, self.output_names = plain.input_names, plain.output_names
        for attribute in ("device", "stream", "precision"):
            if hasattr(plain, attribute):
                setattr(self, attribute, getattr(plain, attribute))
        self.branched, self.zeros = None, {}
        self.order: list = []
        self.matched: dict[str, dict] = {}  # LoRA name -> its layers by module path

    def run(self, feeds: dict) -> dict:
        """Run the branched graph with the active LoRAs' projections (the plain one before it
        is loaded)."""
        if self.branched is None:
            return self.plain.run(feeds)
        extra = self.adapters.feeds(model_of(self.component), self.order, self.matched)
        return self.branched.run({**feeds, **(extra or self.zeros)})

    def replace_graph(self, order: list, branched) -> None:
        """Run `branched` (its branches at the targets `order`) from now on, and let the plain
        graph's weights go."""
        self.order, self.branched, self.zeros = order, branched, zero_feeds(order)
        self.plain = None


class PipelineLoras:
    """The LoRAs of one pipeline: loading one reads and checks it against every graph it
    adapts, and builds a graph's branched twin the first time a LoRA adapts it."""

    def __init__(self, engine_set):
        self.engine_set, self.manifest = engine_set, engine_set.manifest
        self.adapters = Adapters()
        self._lock = threading.Lock()
        self._targets: dict[str, dict] = {}

    def load(self, path, name: str | None = None, scale: float = 1.0) -> str:
        """Load the LoRA file at `path` as `name` at `scale`; its name."""
        self._check_backend()
        with self._lock:
            name = self.adapters.load(path, name, scale)
            try:
                self._attach(name)
            except Exception:
                self.adapters.unload(name)
                raise
        return name

    def _check_backend(self) -> None:
        backend, precision = self.engine_set.backend, self.engine_set.precision
        if describe(backend).plan_sets or describe(backend).gpu:
            raise InputError(
                f"LoRAs at run time are not available on {backend} yet: fuse the LoRA at "
                "export (fastimg export MODEL --lora FILE), or run on onnxruntime or openvino"
            )
        if "int8" in precision:
            raise InputError(
                "LoRAs at run time do not apply to the int8 UNet: load the engines in fp32 or "
                "bf16, or fuse the LoRA at export (fastimg export MODEL --lora FILE --int8)"
            )

    def _attach(self, name: str) -> None:
        """Match the LoRA to each graph it adapts and make sure each twin covers it."""
        lora = self.adapters.loras[name]
        engines = self.engine_set.default()
        unknown = [m for m in lora.models if not any(c in engines.sessions for c in GRAPHS[m])]
        if unknown:
            raise InputError(
                f"the LoRA {lora.path.name} adapts {', '.join(unknown)}, which this engine "
                "folder does not have: it was made for another architecture"
            )
        matched = {  # (every key checked before a twin is compiled)
            component: match_layers(lora, model_of(component), self._graph_targets(component))
            for component in engines.sessions
            if model_of(component) in lora.models
        }
        for component, layers in matched.items():
            self._twin(engines, component, {name: layers}).matched[name] = layers

    def hashes(self, loras: tuple) -> dict:
        """The label of a call's LoRAs' A1111 hashes ("Lora hashes": 'name: hash, ...')."""
        known = [(name, self.adapters.loras.get(name)) for name, _ in loras]
        text = ", ".join(f"{name}: {lora.short_hash}" for name, lora in known if lora)
        return {"fastimg:lora_hashes": text} if text else {}

    def prepare(self) -> None:
        """Load now the twin of every graph a LoRA can adapt, so that loading a LoRA later takes
        milliseconds (its file read and checked), not the seconds of compiling a twin."""
        self._check_backend()
        with self._lock:
            engines = self.engine_set.default()
            for component in list(engines.sessions):
                if model_of(component) is not None:
                    self._twin(engines, component)

    def _twin(self, engines, component: str, adding: dict | None = None) -> LoraSession:
        """The component's session, running its twin branched at every layer a LoRA can adapt
        (one twin per graph, whatever LoRAs come later; on OpenVINO, rebuilt when a LoRA
        `adding` adapts wider convolutions than its fixed ranks take)."""
        session = engines.sessions[component]
        if not isinstance(session, LoraSession):
            session = engines.sessions[component] = LoraSession(session, component, self.adapters)
        ranks = self._fixed_ranks(component, {**session.matched, **(adding or {})})
        held = {t.module: t.rank for t in session.order if t.rank is not None}
        if session.branched is None or any(r > held.get(m, 0) for m, r in ranks.items()):
            ranks = {m: max(r, held.get(m, 0)) for m, r in ranks.items()}
            targets = self._graph_targets(component)
            order = [targets[m] for m in sorted(self._branchable(component))]
            order += [dataclasses.replace(targets[m], rank=r) for m, r in sorted(ranks.items())]
            session.replace_graph(order, self._branched(component, order))
        return session

    def _branchable(self, component: str) -> dict:
        """The layers of the component's graph branched whatever LoRAs come: OpenVINO compiles
        no convolution whose weights' shape is not fixed, so there the linear layers and the
        1x1 convolutions (branched as MatMuls); a wider one only once a LoRA adapts it, at a
        fixed rank (_fixed_ranks)."""
        targets = self._graph_targets(component)
        if self.engine_set.backend != "openvino":
            return targets
        return {m: t for m, t in targets.items() if t.op == "MatMul" or t.pointwise}

    def _fixed_ranks(self, component: str, matched: dict) -> dict[str, int]:
        """Per layer outside _branchable, the ranks of all `matched` LoRAs adapting it summed
        (any mix of them active at once fits)."""
        branchable, ranks = self._branchable(component), {}
        for layers in matched.values():
            for module, layer in layers.items():
                if module not in branchable:
                    ranks[module] = ranks.get(module, 0) + layer.rank
        return ranks

    def _graph_targets(self, component: str) -> dict:
        if component not in self._targets:
            self._targets[component] = find_targets(load_graph(self.manifest.path(component)))
        return self._targets[component]

    def _branched(self, component: str, order: list):
        """The twin of `component` branched at the targets `order`, written beside it, loaded
        and checked."""
        source = self.manifest.path(component)
        key = variant_key(self.manifest.graph_digest((component,)), [t.spelled for t in order])
        path = source.with_name(f"{source.stem}.lora-{key}.onnx")
        try:
            if not path.is_file():  # (named by its source and branches: one written is the same)
                write_branched_graph(load_graph(source), order, path)
        except OSError as exc:
            raise InputError(
                f"cannot write the LoRA graph beside {source} ({exc.strerror}): run-time LoRAs "
                "need the engine folder writable"
            ) from None
        spec = self.manifest.components[component]
        inputs = dict(spec["inputs"])
        for index, target in enumerate(order):
            for name, shape in zip(target.input_names(index), target.input_shapes(index),
                                   strict=True):  # fmt: skip
                inputs[name] = {"dtype": "float32", "shape": shape}
        options, backend = self.engine_set.options, self.engine_set.backend
        # (dynamic shapes even where the plain graph's are static: the branches' ranks change
        # with the LoRAs, and a compile per rank would make switching cost seconds)
        load = component_options(
            backend,
            self.manifest,
            component,
            self.engine_set.precision,
            threads=options.get("threads"),
            max_concurrency=options.get("max_concurrency", 1),
            graph=key,
            inputs=inputs,
        )
        session = load_session(self.engine_set.backend, path, load)
        return CheckedSession(
            session,
            component,
            {**spec, "inputs": inputs},
            self.manifest.vae_scale_factor,
            self.engine_set.backend,
        )
