"""A call's LoRAs and scales: given by name (a dict or NAME:SCALE,...), the others off."""

import numpy as np
import pytest

from fastimg.errors import InputError
from fastimg.lora.adapters import Adapters, label_of
from fastimg.lora.files import LoraFile, LoraLayer


def adapters(tmp_path, *names):
    loaded = Adapters()
    for name in names:
        lora = LoraFile(tmp_path / f"{name}.safetensors")
        lora.layers["unet"] = {"x": LoraLayer(np.ones((1, 2), "f4"), np.ones((2, 1), "f4"), 1.0)}
        loaded.loras[name], loaded.scales[name] = lora, 0.5
    return loaded


def test_a_calls_loras_are_its_own_or_the_loaded_scales(tmp_path):
    loaded = adapters(tmp_path, "ink", "oil")
    assert loaded.for_call(None) == (("ink", 0.5), ("oil", 0.5))
    assert loaded.for_call({"oil": 0.8}) == (("oil", 0.8),)
    assert loaded.for_call("oil:0.8, ink") == (("ink", 1.0), ("oil", 0.8))
    assert loaded.for_call("ink:0") == () == loaded.for_call({})
    with loaded.using((("oil", 0.3),)):
        assert loaded.active == {"oil": 0.3}
    assert loaded.active == {"ink": 0.5, "oil": 0.5}
    assert label_of((("ink", 1.0), ("oil", 0.25))) == "ink:1, oil:0.25"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("cubism:1", "no LoRA named 'cubism' is loaded (loaded: ink)"),
        ("ink:loud", "is not a number"),
        ({"ink": 11}, "between -10 and 10"),
        ({"ink": "x"}, "is not a number"),
    ],
)
def test_a_bad_call_names_what_is_wrong(tmp_path, given, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        adapters(tmp_path, "ink").for_call(given)
