"""A stand-in for optimum-intel's OVStableDiffusionImg2ImgPipeline, over diffusers' own
pipeline, for testing the bench's peer worker and harness where optimum-intel is not installed.

It keeps optimum-intel's surface that the worker uses: from_pretrained(export=, compile=,
ov_config=), save_pretrained, reshape, compile, the four parts with forward methods, and the
UNet's OpenVINO model (inputs, reshape) and compiled request (get_property). Like
optimum-intel, an export goes to a TemporaryDirectory that lives as long as the process
(optimum-intel's pipeline holds it; here a module list does), removed only on the way out.
"""

import json
import os
import tempfile
import time
from pathlib import Path

import diffusers

CALLS = os.environ.get("STAND_IN_PEER_LOG")  # each call appended here as a JSON line
# Seconds an export waits once its temporary folder holds the model (to interrupt it there).
EXPORT_SECONDS = float(os.environ.get("STAND_IN_EXPORT_SECONDS", "0"))
_EXPORTS = []  # the export folders, alive until the interpreter ends


def _record(**what) -> None:
    if CALLS:
        with open(CALLS, "a") as f:
            f.write(json.dumps(what) + "\n")


class _Port:
    def __init__(self, name, shape):
        self.name, self.shape = name, list(shape)

    def get_any_name(self):
        return self.name

    def get_partial_shape(self):
        return _Shape(self.shape)


class _Shape(list):
    @property
    def rank(self):
        return _Rank(len(self))


class _Rank:
    def __init__(self, length):
        self.length = length

    def get_length(self):
        return self.length


class _UnetModel:
    """The UNet's 'OpenVINO model': ports whose shapes reshape() sets (and records)."""

    def __init__(self):
        self.inputs = [
            _Port("sample", [-1, 4, -1, -1]),
            _Port("timestep", [1]),
            _Port("encoder_hidden_states", [-1, 77, -1]),
        ]

    def reshape(self, shapes):
        for port, shape in shapes.items():
            port.shape = list(shape)
        _record(unet_shapes={p.name: p.shape for p in self.inputs})


class _Request:
    def __init__(self, hint):
        self.hint = hint

    def get_property(self, name):
        import openvino

        assert name == "INFERENCE_PRECISION_HINT"
        return openvino.Type.bf16 if self.hint == "bf16" else openvino.Type.f32


class OVStableDiffusionImg2ImgPipeline:
    """diffusers' StableDiffusionImg2ImgPipeline behind optimum-intel's surface."""

    def __init__(self, pipe, ov_config):
        self._pipe, self.ov_config = pipe, ov_config
        self.text_encoder = pipe.text_encoder
        self.unet = pipe.unet
        self.unet.model, self.unet.request = _UnetModel(), None
        self.vae_encoder, self.vae_decoder = pipe.vae.encoder, pipe.vae.decoder

    @classmethod
    def from_pretrained(cls, path, export=False, compile=True, ov_config=None):
        if os.environ.get("STAND_IN_FAIL"):
            raise RuntimeError("the stand-in refuses to load")
        if not export and not (Path(path) / "openvino_model.txt").is_file():
            raise FileNotFoundError(f"{path} holds no exported model")
        _record(load=str(path), export=export, ov_config=ov_config or {})
        pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(
            path, safety_checker=None, requires_safety_checker=False
        )
        if export:
            folder = tempfile.TemporaryDirectory()
            _EXPORTS.append(folder)
            pipe.save_pretrained(folder.name)
            _record(export_folder=folder.name, pid=os.getpid())
            time.sleep(EXPORT_SECONDS)
            pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(
                folder.name, safety_checker=None, requires_safety_checker=False
            )
        return cls(pipe, ov_config or {})

    def save_pretrained(self, folder):
        self._pipe.save_pretrained(folder)
        (Path(folder) / "openvino_model.txt").write_text("a stand-in export\n")

    def reshape(self, batch_size, height, width, num_images_per_prompt=-1):
        _record(reshape=[batch_size, height, width, num_images_per_prompt])
        images = batch_size * num_images_per_prompt
        shapes = {p: list(p.shape) for p in self.unet.model.inputs}
        for port in self.unet.model.inputs:
            if port.name != "timestep":
                shapes[port][0] = 2 * images  # optimum-intel always doubles for guidance
        self.unet.model.reshape(shapes)

    def compile(self):
        hint = self.ov_config.get("INFERENCE_PRECISION_HINT", "f32")
        self.unet.request = _Request(hint)

    @property
    def scheduler(self):
        return self._pipe.scheduler

    @scheduler.setter
    def scheduler(self, value):
        self._pipe.scheduler = value

    def set_progress_bar_config(self, **options):
        self._pipe.set_progress_bar_config(**options)

    def __call__(self, **kwargs):
        image, generator = kwargs["image"], kwargs.get("generator")
        settings = {k: v for k, v in kwargs.items() if isinstance(v, int | float | str)}
        seed = generator.initial_seed() if generator is not None else None
        _record(call={**settings, "image_size": list(image.size), "seed": seed,
                      "scheduler": type(self._pipe.scheduler).__name__})  # fmt: skip
        return self._pipe(**kwargs)
