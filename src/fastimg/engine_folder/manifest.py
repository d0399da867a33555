"""The engine folder's manifest.json: the one thing the runtime reads to know an engine."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import EngineError, ManifestError
from .integrity import verify_files
from .layout import COMPONENTS, FORMAT, MANIFEST, TOKENIZER_OF

if TYPE_CHECKING:
    from .schema import EngineManifest, Lora, MemoryModel

MAX_MANIFEST_BYTES = 16 * 2**20
# Dynamic ONNX engines take any size, but SD's attention memory grows with the fourth power of
# the side. Where neither the manifest nor its memory model says more, this is the limit.
DEFAULT_MAX_SIDE = 2048


@dataclass(frozen=True)
class Manifest:
    """A manifest checked against the schema, and the folder it describes."""

    folder: Path
    data: dict  # manifest.json as read: what is written back when plan sets are added
    model: EngineManifest = field(repr=False, compare=False)  # `data` as the schema checked it
    verified: tuple[str, ...] = ()  # the files checked against their SHA-256 when it loaded

    @classmethod
    def from_data(cls, folder: Path | None, data: dict) -> Manifest:
        """The manifest `data` of `folder`, checked against the schema (a ManifestError
        naming the first bad field otherwise); its files are not verified."""
        from .schema import validate  # pydantic loads only when a folder does

        return cls(folder, data, validate(data, f"the manifest of {folder}", _fix(folder)))

    @property
    def model_family(self) -> str | None:
        """The exported model's family ('sd15', 'sdxl', ...) as the export recorded it."""
        return self.model.model_family

    @property
    def source(self) -> str | None:
        """What was exported (hub repo, folder or checkpoint file), as given to the export."""
        return self.model.source

    @property
    def model_name(self) -> str:
        """The name of what was exported (a checkpoint file without its suffix, as A1111 names
        it); the folder's name where the manifest names no source."""
        name = Path(str(self.source or self.folder.resolve().name))
        return name.stem if name.suffix in (".safetensors", ".ckpt") else name.name

    @property
    def kind(self) -> str | None:
        """What the engines are ('onnx')."""
        return self.model.kind

    @property
    def created(self) -> str | None:
        """When the export wrote the folder (ISO 8601)."""
        return self.model.created

    @property
    def format_version(self) -> int:
        """The version of the manifest format the folder is written in."""
        return self.model.format_version

    @property
    def precision(self) -> str:
        """The precision the components were exported in, unless one says otherwise."""
        return self.model.precision

    def component_precision(self, component: str) -> str:
        """The precision `component`'s graph was exported in."""
        return self.model.components[component].precision or self.precision

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE's latents (4 for SD 1.x/2.x and SDXL)."""
        return self.model.latent_channels

    @property
    def unet_in_channels(self) -> int:
        """Channels of the UNet's sample input (latent_channels, or more for inpainting)."""
        return self.model.unet_in_channels or self.model.latent_channels

    @property
    def inpainting(self) -> bool:
        """Whether the UNet takes a mask and the masked image's latents beside the latents."""
        return self.unet_in_channels == 2 * self.latent_channels + 1

    @property
    def vae_kind(self) -> str:
        """'kl' (SD's VAE) or 'tiny' (TAESD)."""
        return self.model.vae.kind

    @property
    def vae_source(self) -> str | None:
        """Where the VAE came from: its own source where one replaced the model's."""
        vae = self.data.get("vae", {})
        return vae["source"] if "source" in vae else self.source

    @property
    def loras(self) -> list[Lora]:
        """The LoRAs fused into the weights at export."""
        return list(self.model.loras)

    @property
    def tools(self) -> dict[str, str]:
        """The versions of the tools that exported the folder."""
        return dict(self.model.tools)

    def memory_model(self, component: str) -> MemoryModel | None:
        """The activation memory model of `component`; None where the export recorded none."""
        return self.model.memory.get(component)

    @property
    def plan_sets(self) -> dict[str, dict]:
        """Every TensorRT plan set the folder lists, by key."""
        return self.data.get("tensorrt", {}).get("engines", {})

    @property
    def components(self) -> dict:
        """Per-component entries: path, files, inputs, outputs, parity."""
        return self.data["components"]

    @property
    def scheduler(self) -> dict:
        """The model's scheduler config as exported."""
        return self.data["scheduler"]

    @property
    def tokenizer(self) -> dict:
        """Tokenizer file and its max_length, pad_id."""
        return self.data["tokenizer"]

    @property
    def text_conditioning(self) -> dict:
        """How prompts become UNet inputs (SDXL: encoders, pooled, config flags); {} for SD."""
        return self.data.get("text_conditioning") or {}

    @property
    def text_encoders(self) -> tuple[str, ...]:
        """The text encoder components, in the order their states are concatenated."""
        return tuple(self.text_conditioning.get("text_encoders", ("text_encoder",)))

    @property
    def vae_overflows_in_fp16(self) -> bool:
        """Whether the VAE overflows in fp16 (SDXL's, whose config says force_upcast), so that
        it must run in fp32; for folders exported before the manifest said so, assumed of an
        SDXL folder's KL VAE exported in fp32."""
        vae = self.data.get("vae") or {}
        if "overflows_in_fp16" in vae:
            return bool(vae["overflows_in_fp16"])
        decoder = self.components["vae_decoder"].get("precision", self.data.get("precision"))
        return bool(self.text_conditioning) and vae.get("kind", "kl") == "kl" and decoder == "fp32"

    @property
    def component_names(self) -> tuple[str, ...]:
        """Every component the pipeline loads: the text encoders, unet, vae_encoder/decoder."""
        return (*self.text_encoders, *COMPONENTS[1:])

    @property
    def control(self) -> dict:
        """The ControlNets, the UNet that takes their residuals and the residuals' names
        ({} where the folder has no ControlNet)."""
        return self.data.get("control") or {}

    @property
    def control_components(self) -> tuple[str, ...]:
        """The ControlNet components and the UNet taking their residuals (() where none)."""
        control = self.control
        if not control:
            return ()
        return (*(c["component"] for c in control["controlnets"]), control["unet"])

    @property
    def depth(self) -> dict:
        """The depth model of control_preprocess depth ({} where the folder has none)."""
        return self.data.get("depth") or {}

    @property
    def depth_components(self) -> tuple[str, ...]:
        """The depth model's component (() where none)."""
        return (self.depth["component"],) if self.depth else ()

    @property
    def runtime_components(self) -> tuple[str, ...]:
        """Every component the runtime may run: component_names, then the ControlNets and the
        UNet taking their residuals, then the depth model (what a TensorRT plan set holds)."""
        return (*self.component_names, *self.control_components, *self.depth_components)

    def tokenizer_of(self, encoder: str) -> dict:
        """The tokenizer entry that feeds `encoder`."""
        return self.data[TOKENIZER_OF[encoder]]

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side."""
        return self.model.vae_scale_factor

    @property
    def vae_scaling_factor(self) -> float:
        """The latent scaling factor of the VAE (0.18215 for SD 1.x/2.x)."""
        return self.model.vae_scaling_factor

    @property
    def max_side(self) -> int | None:
        """The longest image side the manifest itself allows (None: no limit is stated)."""
        return self.model.shapes.max_side

    @property
    def files(self) -> dict[str, dict]:
        """Every file the manifest names (relative path -> bytes, sha256)."""
        named = dict(self.data.get("files", {}))
        named.update(self.tokenizer.get("files", {}))
        named.update(self.data.get("tokenizer_2", {}).get("files", {}))
        for entry in self.components.values():
            named.update(entry.get("files", {}))
        for plans in self.plan_sets.values():
            for entry in plans["components"].values():
                named.update(entry.get("files", {}))
        return named

    def opened_files(self) -> dict[str, str]:
        """Every file the runtime may open (relative path -> what it is), on any backend:
        component graphs and their variants, the tokenizer, TensorRT plans. The graphs' external
        data is found in the graphs themselves when they are verified."""
        opened = {self.tokenizer["path"]: "the tokenizer"}
        if "tokenizer_2" in self.data:
            opened.setdefault(self.data["tokenizer_2"]["path"], "the second tokenizer")
        for name, entry in self.components.items():
            opened.setdefault(entry["path"], f"component {name}'s graph")
            for backend, variant in entry.get("variants", {}).items():
                opened.setdefault(variant["path"], f"component {name}'s {backend} graph")
                if variant.get("weights"):
                    opened.setdefault(variant["weights"], f"component {name}'s {backend} weights")
        for key, plans in self.plan_sets.items():
            for name, entry in plans["components"].items():
                opened.setdefault(entry["path"], f"TensorRT plan set {key}'s {name}")
        return opened

    def graph_digest(self, components: tuple[str, ...] | None = None) -> str:
        """SHA-256 over the recorded hashes of the components' files (default: every one the
        runtime may run, runtime_components): which graphs these are."""
        digest = hashlib.sha256()
        for component in components or self.runtime_components:
            files = self.components[component].get("files", {})
            for rel in sorted(files):
                digest.update(f"{component}/{rel}:{files[rel].get('sha256')}\n".encode())
        return digest.hexdigest()

    def variant(self, component: str, name: str | None) -> dict:
        """A component's variant entry `name` (a backend's own graph), or {} where it has none."""
        entry = self.data.get("components", {}).get(component, {})
        return entry.get("variants", {}).get(name, {}) if name else {}

    def path(self, component: str, backend: str | None = None) -> Path:
        """Absolute path of a component's model file, in the backend's own variant if any."""
        entry = self.variant(component, backend) or self.components[component]
        return self.folder / entry["path"]


def _fix(folder: Path) -> str:
    return f"export it again with  fastimg export MODEL -o {folder}"


def _not_an_engine(folder: Path) -> str:
    """Why `folder` (without a manifest) is not an engine folder, and what to do instead."""
    if (folder / "model_index.json").is_file():
        if any((folder / part / "model.onnx").is_file() for part in ("unet", "vae_decoder")):
            return (
                f"{folder} holds ONNX files made by another tool (optimum's layout), without the "
                "verified manifest fastimg reads: export the original diffusers model with  "
                f"fastimg export MODEL -o {folder}-fastimg"
            )
        return (
            f"{folder} is a diffusers model, not an engine folder: export it first with  "
            f"fastimg export {folder} -o ENGINES  and pass --engines ENGINES"
        )
    return (
        f"{folder} has no {MANIFEST}, so it is not a fastimg engine folder "
        f"(or its export did not finish): {_fix(folder)}"
    )


def load_manifest(folder: str | Path, full_check: bool = False) -> Manifest:
    """Read `folder/manifest.json`, check it against the schema, and verify every file the
    runtime may open: inside the folder, listed, of the listed size and SHA-256.

    Hashes are checked for files not verified before (or all, with full_check).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EngineError(f"engine folder {folder} does not exist: {_fix(folder)}")
    path = folder / MANIFEST
    if not path.is_file():
        raise ManifestError(_not_an_engine(folder))
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(
                f"{path} is over {MAX_MANIFEST_BYTES // 2**20} MB, far more than any manifest: "
                f"{_fix(folder)}"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} cannot be read ({exc}): {_fix(folder)}") from None
    except RecursionError:
        raise ManifestError(
            f"{path} is nested too deeply to be a manifest: {_fix(folder)}"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a fastimg engine manifest: {_fix(folder)}")
    from .schema import validate  # pydantic loads only when a folder does

    manifest = Manifest(folder, data, validate(data, str(path), _fix(folder)))
    verified = verify_files(
        folder, manifest.files, manifest.opened_files(), _fix(folder), full=full_check
    )
    return Manifest(folder, data, manifest.model, tuple(verified))
