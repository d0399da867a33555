"""Where run-time LoRAs are refused by name: the GPU backends' plans and the int8 UNet."""

from types import SimpleNamespace

import pytest

from fastimg.diffusion.loras import PipelineLoras
from fastimg.errors import InputError


@pytest.mark.parametrize(
    ("backend", "precision", "message"),
    [
        ("tensorrt", "fp16", "not available on tensorrt yet: fuse the LoRA at export"),
        ("onnxruntime-cuda", "fp16", "not available on onnxruntime-cuda yet"),
        ("openvino", "int8", "do not apply to the int8 UNet"),
    ],
)
def test_a_lora_is_refused_where_it_cannot_run(backend, precision, message, tmp_path):
    engines = SimpleNamespace(manifest=None, backend=backend, precision=precision)
    with pytest.raises(InputError, match=message):
        PipelineLoras(engines).load(tmp_path / "style.safetensors")
