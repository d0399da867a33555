"""LoRAs fused into the weights before export, as diffusers' load_lora_weights + fuse_lora do.

`--lora FILE_OR_ID[:SCALE]` names a .safetensors file (or a hub id) and the scale to fuse it at
(1.0 by default). Every LoRA is checked before any export work: a file that is not there, one
whose keys match no layer of the model, or one made for another architecture (its shapes do
not fit) is refused with the reason.
"""

import hashlib
from pathlib import Path

from fastimg.errors import InputError
from fastimg.lora.files import parse_lora_spec

LORA_SUFFIXES = (".safetensors", ".bin", ".pt")


def check_sources(specs: list[str]) -> list[tuple[str, float]]:
    """The parsed --lora values; a local path that is not a file is refused before loading."""
    loras = []
    for spec in specs:
        source, scale = parse_lora_spec(spec)  # (the runtime's --lora parser: one syntax)
        path = Path(source)
        looks_local = path.suffix in LORA_SUFFIXES or source.startswith((".", "/", "~"))
        if path.exists() and not path.is_file():
            raise InputError(f"LoRA {source} is a folder: pass its .safetensors file")
        if looks_local and not path.is_file():
            raise InputError(f"LoRA file {source} does not exist: check the path")
        loras.append((source, scale))
    return loras


def fuse_loras(pipe, loras: list[tuple[str, float]], log=print) -> list[dict]:
    """Fuse each LoRA into `pipe`'s UNet and text encoder; the manifest's records of them."""
    records = []
    for k, (source, scale) in enumerate(loras):
        name = f"lora{k}"
        log(f"fusing the LoRA {source} at scale {scale}")
        try:
            pipe.load_lora_weights(source, adapter_name=name)
        except Exception as exc:  # diffusers and peft raise ValueError, RuntimeError, OSError...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise InputError(
                f"the LoRA {source} does not fit this model ({first}): it was made for another "
                "architecture, or is not a LoRA"
            ) from None
        components = sorted(c for c, names in pipe.get_list_adapters().items() if name in names)
        if not components:
            raise InputError(
                f"the LoRA {source} matched no layer of this model's UNet or text encoder: its "
                "keys are for another kind of model"
            )
        pipe.fuse_lora(components=components, lora_scale=scale, adapter_names=[name])
        records.append(
            {
                "name": Path(source).name if Path(source).is_file() else source,
                "source": source,
                "sha256": _digest(source),
                "scale": scale,
                "components": components,
            }
        )
    if loras:
        pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go
    return records


def _digest(source: str) -> str:
    """SHA-256 of a local LoRA file; of its tensors (sorted by name) for a hub id."""
    path = Path(source)
    if path.is_file():
        from fastimg.engine_folder.integrity import sha256

        return sha256(path)
    from diffusers import StableDiffusionPipeline

    state, _ = StableDiffusionPipeline.lora_state_dict(source)
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()
