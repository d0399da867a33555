"""The engine folder's manifest.json: the one thing the runtime reads to know an engine."""

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import EngineError, ManifestError

FORMAT = "fastimg-engine"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest and the folder it describes."""

    folder: Path
    data: dict

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
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side."""
        return int(self.data["vae_scale_factor"])

    @property
    def vae_scaling_factor(self) -> float:
        """The latent scaling factor of the VAE (0.18215 for SD 1.x/2.x)."""
        return float(self.data["vae_scaling_factor"])

    def path(self, component: str, backend: str | None = None) -> Path:
        """Absolute path of a component's model file, in the backend's own variant if any."""
        entry = self.components[component]
        variant = entry.get("variants", {}).get(backend)
        return self.folder / (variant or entry)["path"]


def _fix(folder: Path) -> str:
    return f"export it again with  fastimg export MODEL -o {folder}"


def load_manifest(folder: str | Path) -> Manifest:
    """Read and check `folder/manifest.json`, and that the files it names are present and whole."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EngineError(f"engine folder {folder} does not exist: {_fix(folder)}")
    path = folder / MANIFEST
    if not path.is_file():
        raise ManifestError(
            f"{folder} has no {MANIFEST}, so it is not a fastimg engine folder "
            f"(or its export did not finish): {_fix(folder)}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} cannot be read ({exc}): {_fix(folder)}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a fastimg engine manifest: {_fix(folder)}")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ManifestError(
            f"{path} has format version {version!r}, newer than this fastimg reads "
            f"({FORMAT_VERSION}): upgrade fastimg, or {_fix(folder)}"
        )
    missing = [
        k for k in ("components", "scheduler", "tokenizer", "vae_scale_factor") if k not in data
    ]
    missing += [c for c in COMPONENTS if c not in data.get("components", {})]
    if missing:
        raise ManifestError(f"{path} lacks {', '.join(missing)}: {_fix(folder)}")
    manifest = Manifest(folder, data)
    check_files(manifest)
    return manifest


def check_files(manifest: Manifest) -> None:
    """Raise EngineError if a file the manifest names is missing or has the wrong size."""
    named = dict(manifest.data.get("files", {}))
    for entry in manifest.components.values():
        named.update(entry.get("files", {}))
    for rel, info in named.items():
        file = manifest.folder / rel
        if not file.is_file():
            raise EngineError(f"engine file {file} is missing: {_fix(manifest.folder)}")
        if file.stat().st_size != info["bytes"]:
            raise EngineError(
                f"engine file {file} is {file.stat().st_size} bytes, the manifest says "
                f"{info['bytes']}: it is truncated or changed; {_fix(manifest.folder)}"
            )
