"""The LoRAs loaded into a pipeline, their scales, and the projections they feed a branched
graph: several LoRAs at once are one branch of their summed ranks, a scale is folded into the
up projection, so switching LoRAs or scales costs a few concatenations and no recompile."""

import contextlib
import contextvars
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import InputError
from .files import MAX_SCALE, LoraFile, LoraLayer, read_lora
from .graph import Target
from .ldm_names import is_ldm_name, layers_per_block, to_diffusers

FEEDS_KEPT = 8  # the projections of this many (graph, LoRAs and scales) are kept built
# The LoRAs and scales of the call running in this context (None: the loaded ones' scales).
_CALL: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("lora_call", default=None)
# The graphs each LoRA model adapts (the ControlNet folders' UNet graph too).
GRAPHS = {
    "unet": ("unet", "unet_control"),
    "text_encoder": ("text_encoder",),
    "text_encoder_2": ("text_encoder_2",),
}


def model_of(component: str) -> str | None:
    """The LoRA model ('unet', 'text_encoder', ...) a component's graph belongs to."""
    return next((model for model, graphs in GRAPHS.items() if component in graphs), None)


def _plain(path: str, dotted: bool) -> str:
    """A module path as both sides spell it (CLIP's text_model prefix dropped)."""
    path = path.removeprefix("text_model.").removeprefix("text_model_")
    return path if dotted else path.replace(".", "_")


def match_layers(lora: LoraFile, model: str, targets: dict[str, Target]) -> dict[str, LoraLayer]:
    """The LoRA's layers for `model` by the graph's module paths; a layer that matches no layer
    of the graph, or whose shape does not fit it, is refused by name."""
    index = {_plain(module, lora.dotted): module for module in targets}
    last = max((_encoder_layer(m) for m in targets), default=-1)
    per_block = layers_per_block(targets)
    matched, unmatched = {}, []
    for module, layer in lora.layers.get(model, {}).items():
        name = _plain(module, lora.dotted)
        if model == "unet" and not lora.dotted and is_ldm_name(name):  # kohya's SDXL spelling
            name = to_diffusers(name, per_block)
        found = index.get(name)
        if found is None and model != "unet" and _encoder_layer(module) > last >= 0:
            continue  # a text encoder layer after the one whose states the graph gives
        if found is None:
            unmatched.append(module)
            continue
        matched[found] = _fitted(lora.path, module, layer, targets[found])
    if unmatched:
        raise InputError(
            f"the LoRA {lora.path.name} adapts {model} layers this model does not have "
            f"({', '.join(unmatched[:3])}{', ...' if len(unmatched) > 3 else ''}): it was made "
            "for another architecture or base model"
        )
    return matched


def _encoder_layer(module: str) -> int:
    """N of a text encoder's `encoder.layers.N.` module (-1 for any other module)."""
    found = re.search(r"layers[._](\d+)[._]", module)
    return int(found.group(1)) if found else -1


def _fitted(path: Path, module: str, layer: LoraLayer, target: Target) -> LoraLayer:
    """The layer in the shapes its graph layer takes (a 1x1 conv's pair made 4-D)."""
    down, up = layer.down, layer.up
    if target.op == "Conv" and down.ndim == 2:
        down, up = down[:, :, None, None], up[:, :, None, None]
    if target.op == "MatMul" and down.ndim == 4 and down.shape[2:] == (1, 1):
        down, up = down[:, :, 0, 0], up[:, :, 0, 0]
    want_down = (target.width_in, *target.kernel)
    if tuple(down.shape[1:]) != want_down or up.shape[0] != target.width_out:
        raise InputError(
            f"the LoRA {path.name} has {module} of shape {list(up.shape[:1])}x"
            f"{list(down.shape[1:])}, the model's layer is {target.width_out}x{list(want_down)}: "
            "it was made for another architecture or base model"
        )
    return LoraLayer(np.ascontiguousarray(down), np.ascontiguousarray(up), layer.alpha)


class Adapters:
    """LoRAs by name with their scales; the feeds of each branched graph, built for each set of
    active LoRAs and scales and kept for the next calls with the same."""

    def __init__(self):
        self._lock = threading.Lock()
        self.loras: dict[str, LoraFile] = {}
        self.scales: dict[str, float] = {}
        self._feeds: OrderedDict[tuple, dict | None] = OrderedDict()

    def load(self, path: str | Path, name: str | None = None, scale: float = 1.0) -> str:
        """Read a LoRA file under `name` (default: the file's stem) at `scale`; its name."""
        lora = read_lora(path)
        name = name or lora.path.stem
        with self._lock:
            self.loras[name] = lora
            self.scales[name] = _checked_scale(scale, name)
            self._feeds.clear()  # a LoRA loaded again under a name has new projections
        return name

    def unload(self, name: str) -> None:
        """Forget the LoRA `name`."""
        with self._lock:
            self._known(name)
            del self.loras[name], self.scales[name]

    def set_scales(self, scales: dict[str, float]) -> None:
        """Set the named LoRAs' scales (0 turns one off); the others keep theirs."""
        with self._lock:
            for name in scales:
                self._known(name)
            for name, scale in scales.items():
                self.scales[name] = _checked_scale(scale, name)

    def _known(self, name: str) -> None:
        if name not in self.loras:
            loaded = ", ".join(sorted(self.loras)) or "none"
            raise InputError(f"no LoRA named {name!r} is loaded (loaded: {loaded})")

    @property
    def active(self) -> dict[str, float]:
        """The LoRAs whose scale is not 0, with their scales: the running call's, else the
        loaded ones'."""
        call = _CALL.get()
        scales = dict(call) if call is not None else self.scales
        return {name: s for name, s in scales.items() if s != 0.0 and name in self.loras}

    def for_call(self, given: "str | dict | None") -> tuple:
        """A call's LoRAs and scales: `given` ({name: scale} or 'NAME:SCALE,...', the others
        off; 'none': no LoRA), else the loaded ones' scales now; as sorted (name, scale)
        pairs."""
        if given is None:
            with self._lock:
                return tuple(sorted(self.active.items()))
        if isinstance(given, str):
            parts = [] if given.strip() == "none" else given.split(",")
            given = dict(_pair(part, self) for part in parts if part.strip())
        for name in given:
            self._known(name)
        chosen = {name: _checked_scale(scale, name) for name, scale in given.items()}
        return tuple(sorted((n, s) for n, s in chosen.items() if s != 0.0))

    @contextlib.contextmanager
    def using(self, loras: tuple):
        """Run what is inside with the LoRAs and scales `loras` (for_call's)."""
        token = _CALL.set(loras)
        try:
            yield
        finally:
            _CALL.reset(token)

    def state(self) -> tuple:
        """The active LoRAs and scales, as a cache key of what they change."""
        with self._lock:
            return tuple(sorted((n, str(self.loras[n].path), s) for n, s in self.active.items()))

    def feeds(self, model: str, order: list[Target], matched: dict) -> dict | None:
        """The projections of the active LoRAs for a graph branched at `order` (None when none
        of them adapts `model`): `matched[name]` is each LoRA's layers by module path."""
        with self._lock:
            active = self.active
            key = (model, tuple(order), tuple(sorted(active.items())),
                   tuple(id(self.loras[n]) for n in sorted(active)))  # fmt: skip
            if key in self._feeds:
                self._feeds.move_to_end(key)
                return self._feeds[key]
            feeds = self._feeds[key] = self._build(order, matched, active)
            while len(self._feeds) > FEEDS_KEPT:
                self._feeds.popitem(last=False)
            return feeds

    def _build(self, order: list[Target], matched: dict, scales: dict) -> dict | None:
        active = [(matched[n], s) for n, s in scales.items() if matched.get(n)]
        if not active:
            return None
        feeds = {}
        for index, target in enumerate(order):
            downs, ups = [], []
            for layers, scale in active:
                layer = layers.get(target.module)
                if layer is None:
                    continue
                gain = np.float32(scale * layer.factor)
                if target.op == "MatMul":
                    downs.append(layer.down.T)
                    ups.append(gain * layer.up.T)
                else:
                    downs.append(layer.down)
                    ups.append(gain * layer.up)
            down_name, up_name = target.input_names(index)
            if not downs:  # a rank-1 branch of zeros: this layer unchanged
                downs, ups = _zero_pair(target)
            axis_down, axis_up = (1, 0) if target.op == "MatMul" else (0, 1)
            down = np.concatenate(downs, axis=axis_down)
            up = np.concatenate(ups, axis=axis_up)
            if target.rank is not None:  # a fixed rank: the rest of it zeros
                down, up = _padded(down, axis_down, target.rank), _padded(up, axis_up, target.rank)
            feeds[down_name] = np.ascontiguousarray(down)
            feeds[up_name] = np.ascontiguousarray(up)
        return feeds


def _pair(part: str, adapters: Adapters) -> tuple[str, float]:
    """('name', scale) of one 'NAME:SCALE' (or 'NAME', at 1) of a call's LoRAs."""
    name, sep, scale = part.strip().rpartition(":")
    if not sep:
        return part.strip(), 1.0
    try:
        return name, float(scale)
    except ValueError:
        raise InputError(
            f"LoRA scale {scale!r} of {name!r} is not a number: write NAME:SCALE, e.g. {name}:0.8"
        ) from None


def label_of(loras: tuple) -> str:
    """'name:scale, ...' of a call's LoRAs (the fastimg:loras label)."""
    return ", ".join(f"{name}:{scale:g}" for name, scale in loras)


def zero_feeds(order: list[Target]) -> dict:
    """Projections of zeros for every branch (rank 1, or its fixed rank): the graph computes the
    plain model."""
    feeds = {}
    for index, target in enumerate(order):
        (down,), (up,) = _zero_pair(target)
        feeds.update(zip(target.input_names(index), (down, up), strict=True))
    return feeds


def _zero_pair(target: Target) -> tuple[list, list]:
    rank = target.rank or 1
    if target.op == "MatMul":
        return [np.zeros((target.width_in, rank), np.float32)], [
            np.zeros((rank, target.width_out), np.float32)
        ]
    return [np.zeros((rank, target.width_in, *target.kernel), np.float32)], [
        np.zeros((target.width_out, rank, 1, 1), np.float32)
    ]


def _padded(array: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """`array` with zeros appended along `axis` up to `rank`."""
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, rank - array.shape[axis])
    return np.pad(array, widths)


def _checked_scale(scale, name: str) -> float:
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise InputError(f"the scale of LoRA {name!r} ({scale!r}) is not a number") from None
    if not -MAX_SCALE <= value <= MAX_SCALE:
        raise InputError(f"the scale of LoRA {name!r} ({value}) must lie between -10 and 10")
    return value
