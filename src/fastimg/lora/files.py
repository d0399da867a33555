"""LoRA files read without torch: diffusers/PEFT and kohya (A1111) .safetensors, each layer's
low-rank pair and its alpha, keyed by the model it adapts and that model's module path.

Formats that are not plain low-rank pairs (LoHa, LoKr, DoRA, OFT, full weight differences) are
refused naming what they are, never half applied.
"""

import functools
import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

# safetensors' element types as NumPy reads them (bf16 is widened by hand).
DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}
# Keys that mark adapter kinds other than a LoRA's low-rank pair, and what each is called.
OTHER_KINDS = {
    "hada_w1": "a LoHa (LyCORIS)",
    "lokr_w1": "a LoKr (LyCORIS)",
    "dora_scale": "a DoRA",
    "lora_magnitude_vector": "a DoRA",
    "oft_": "an OFT",
    "boft_": "a BOFT",
    ".diff": "a full weight difference (LyCORIS 'full')",
    "ia3_": "an IA3",
}
# The models a LoRA adapts, by key prefix: diffusers/PEFT first, then kohya's.
PREFIXES = (
    ("unet.", "unet"),
    ("text_encoder_2.", "text_encoder_2"),
    ("text_encoder.", "text_encoder"),
    ("lora_unet_", "unet"),
    ("lora_te2_", "text_encoder_2"),
    ("lora_te1_", "text_encoder"),
    ("lora_te_", "text_encoder"),
)
# Each layer's pair, in the spellings of each format (down = A, up = B).
PAIR_SUFFIXES = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora_down.weight", ".lora_up.weight"),
    (".lora.down.weight", ".lora.up.weight"),
)
MAX_SCALE = 10.0


@dataclass
class LoraLayer:
    """One adapted layer: delta W = (alpha / rank) * up @ down (flattened over a kernel)."""

    down: np.ndarray  # [rank, in] or [rank, in, kh, kw]
    up: np.ndarray  # [out, rank] or [out, rank, 1, 1]
    alpha: float

    @property
    def rank(self) -> int:
        """The layer's rank (rows of its down projection)."""
        return int(self.down.shape[0])

    @property
    def factor(self) -> float:
        """alpha / rank: how much of up @ down one unit of scale adds."""
        return self.alpha / self.rank


@dataclass
class LoraFile:
    """A LoRA's layers by model ('unet', 'text_encoder', 'text_encoder_2') and module path;
    kohya files name modules with underscores (`dotted` False): matched against the graph."""

    path: Path
    layers: dict[str, dict[str, LoraLayer]] = field(default_factory=dict)
    dotted: bool = True

    @property
    def models(self) -> list[str]:
        """The models this LoRA adapts."""
        return sorted(self.layers)

    @functools.cached_property
    def short_hash(self) -> str:
        """A1111's hash of a LoRA (sd-webui-additional-networks' "addnet" hash: the SHA-256 of
        the file after its JSON header), its first 12 hex digits as "Lora hashes" writes them."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as file:
            header = int.from_bytes(file.read(8), "little")
            file.seek(8 + header)
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()[:12]

    @property
    def nbytes(self) -> int:
        """Bytes its arrays hold."""
        return sum(
            layer.down.nbytes + layer.up.nbytes
            for layers in self.layers.values()
            for layer in layers.values()
        )


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor of a .safetensors file as a NumPy array, and the file's metadata."""
    try:
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if not 2 <= length <= 100 * 2**20:
                raise ValueError("no safetensors header")
            header = json.loads(file.read(length))
            data = file.read()
    except (OSError, ValueError, struct.error) as exc:
        raise InputError(f"{path} is not a .safetensors file ({exc}): pass a LoRA file") from None
    metadata = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, entry in header.items():
        kind = entry.get("dtype")
        if kind not in DTYPES:
            raise InputError(f"{path}: tensor {name} is {kind}, which a LoRA does not hold")
        start, end = entry["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=DTYPES[kind]).reshape(entry["shape"])
        if kind == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = array.astype(np.float32)
    return tensors, metadata


def read_lora(path: str | Path) -> LoraFile:
    """The LoRA in a .safetensors file, every key accounted for (InputError otherwise)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"LoRA file {path} does not exist: check the path")
    if path.suffix != ".safetensors":
        raise InputError(f"{path} is not a .safetensors file: run-time LoRAs are read from one")
    tensors, metadata = read_safetensors(path)
    for marker, kind in OTHER_KINDS.items():
        found = next((key for key in tensors if marker in key), None)
        if found:
            raise InputError(
                f"{path} is {kind} ({found}), not a LoRA: only low-rank LoRAs (diffusers/PEFT "
                "or kohya) are applied at run time"
            )
    lora = LoraFile(path, dotted=not any(key.startswith("lora_") for key in tensors))
    alphas = _alphas(tensors, metadata)
    used = set(alphas["keys"])
    for key in tensors:
        for down_suffix, up_suffix in PAIR_SUFFIXES:
            if not key.endswith(down_suffix):
                continue
            stem = key[: -len(down_suffix)]
            up_key = stem + up_suffix
            if up_key not in tensors:
                raise InputError(f"{path}: {key} has no {up_suffix[1:]} beside it: not a LoRA")
            model, module = _split_model(stem, path)
            down, up = tensors[key], tensors[up_key]
            _check_pair(path, stem, down, up)
            alpha = alphas["by_stem"].get(stem, alphas["default"].get(model))
            lora.layers.setdefault(model, {})[module] = LoraLayer(
                down, up, float(alpha) if alpha is not None else float(down.shape[0])
            )
            used.update((key, up_key))
    left = sorted(set(tensors) - used)
    if left:
        raise InputError(
            f"{path} has keys fastimg cannot place ({', '.join(left[:3])}"
            f"{', ...' if len(left) > 3 else ''}): not a LoRA it knows"
        )
    if not lora.layers:
        raise InputError(f"{path} holds no LoRA layers: not a LoRA")
    return lora


def _alphas(tensors: dict, metadata: dict) -> dict:
    """kohya's per-layer `.alpha` tensors and diffusers' per-model `lora_alpha` metadata
    (PEFT scales every layer by lora_alpha / its rank)."""
    by_stem = {key[: -len(".alpha")]: float(tensors[key].reshape(-1)[0]) for key in tensors
               if key.endswith(".alpha")}  # fmt: skip
    default = {}
    try:
        config = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except ValueError:
        config = {}
    for prefix, model in PREFIXES[:3]:
        if config.get(prefix + "alpha_pattern") or config.get(prefix + "rank_pattern"):
            raise InputError(
                f"its {model} metadata sets alpha or rank patterns, which fastimg does not "
                "apply yet: fuse this LoRA at export (fastimg export --lora FILE)"
            )
        if config.get(prefix + "lora_alpha") is not None:
            default[model] = float(config[prefix + "lora_alpha"])
    return {
        "by_stem": by_stem,
        "default": default,
        "keys": [key for key in tensors if key.endswith(".alpha")],
    }


def _split_model(stem: str, path: Path) -> tuple[str, str]:
    """('unet', 'down_blocks.0...to_q') from a key's stem, whatever the format."""
    for prefix, model in PREFIXES:
        if stem.startswith(prefix):
            return model, stem[len(prefix) :]
    raise InputError(
        f"{path}: {stem} adapts no model fastimg knows (unet, text_encoder, text_encoder_2)"
    )


def _check_pair(path: Path, stem: str, down: np.ndarray, up: np.ndarray) -> None:
    """The down and up projections of one layer fit each other."""
    if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]:
        raise InputError(
            f"{path}: {stem} has projections of shapes {list(down.shape)} and "
            f"{list(up.shape)}, which do not form a LoRA"
        )
    if down.ndim == 4 and up.shape[2:] != (1, 1):
        raise InputError(f"{path}: {stem} has an up projection with a {up.shape[2:]} kernel")


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """'FILE[:SCALE]' as (file, scale); the scale is 1.0 unless given."""
    source, sep, value = spec.rpartition(":")
    if not sep or not source or "/" in value or "\\" in value:
        return spec, 1.0
    try:
        scale = float(value)
    except ValueError:
        raise InputError(
            f"LoRA scale {value!r} in {spec!r} is not a number: write FILE:SCALE, e.g. {source}:0.8"
        ) from None
    if not -MAX_SCALE <= scale <= MAX_SCALE:
        raise InputError(f"LoRA scale {scale} in {spec!r} must lie between -10 and 10")
    return source, scale
