"""The engines handle the Load node passes on, and the pipelines loaded once per handle: a
queue run that names the same folder, backend, precision and LoRAs reuses the loaded engines.
The last MAX_LOADED pipelines used stay loaded; an older one is let go (its memory with it)."""

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..engine_folder.layout import MANIFEST

MAX_LOADED = 2  # a model and the one being switched to; each may hold gigabytes
_LOADED: OrderedDict[tuple, object] = OrderedDict()
_LOCK = threading.Lock()


@dataclass(frozen=True)
class EnginesHandle:
    """What the img2img node runs: engines in-process (`folder`) or a fastimg server (`url`)."""

    folder: str = ""
    backend: str = "auto"
    precision: str = "auto"
    loras: tuple[str, ...] = ()
    url: str = ""

    def key(self) -> tuple:
        """What names one loaded pipeline: the resolved folder and its manifest's time, the
        backend, the precision and the LoRAs (a re-exported folder loads anew)."""
        folder = Path(self.folder).expanduser().resolve()
        try:
            stamp = (folder / MANIFEST).stat().st_mtime_ns
        except OSError:
            stamp = None
        return (str(folder), stamp, self.backend, self.precision, self.loras)

    def pipeline(self):
        """The Img2ImgPipeline of these engines, loaded on first use and kept after."""
        from ..diffusion.pipeline import Img2ImgPipeline

        key = self.key()
        with _LOCK:  # one load per key, even when two queue runs ask at once
            pipe = _LOADED.get(key)
            if pipe is not None:
                _LOADED.move_to_end(key)
            else:  # room first, so that no more than MAX_LOADED are ever held here
                for old in [k for k in _LOADED if k[0] == key[0] and k[1] != key[1]]:
                    del _LOADED[old]  # the folder was re-exported: its old engines go
                while len(_LOADED) >= MAX_LOADED:
                    _LOADED.popitem(last=False)
                pipe = Img2ImgPipeline.from_engines(
                    Path(self.folder).expanduser(),
                    backend=self.backend,
                    precision=self.precision,
                    loras=self.loras,
                )
                _LOADED[key] = pipe
            return pipe


def parse_loras(text: str) -> tuple[str, ...]:
    """The 'FILE[:SCALE]' LoRA specs of a text box, one a line."""
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def loaded_count() -> int:
    """How many pipelines are loaded (the tests see the cache through it)."""
    return len(_LOADED)


def forget_all() -> None:
    """Drop every loaded pipeline."""
    with _LOCK:
        _LOADED.clear()
