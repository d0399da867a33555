import pytest

from fastimg.errors import InputError
from fastimg.settings import BY_KEY, from_fields


@pytest.mark.parametrize(
    "key,raw,value",
    [
        ("control_scale", "0.5;1.25", (0.5, 1.25)),
        ("control_scale", [0.5, "1.25"], (0.5, 1.25)),  # (JSON: a list)
        ("control_scale", " 0.7 ", 0.7),
        ("control_scale", [0.7], 0.7),  # one value: that value
        ("control_start", "0; 0.3", (0.0, 0.3)),
        ("control_end", "1;0.9;0.5", (1.0, 0.9, 0.5)),
        ("control_preprocess", "scribble;none", ("scribble", None)),
        ("control_preprocess", ["none", "canny"], (None, "canny")),
    ],
)
def test_control_settings_take_one_value_per_controlnet(key, raw, value):
    assert BY_KEY[key].parse(raw) == value


@pytest.mark.parametrize(
    "key,raw,message",
    [
        ("control_scale", "0.5;", "'0.5;' has an empty value: give one value for all"),
        ("control_scale", [], r"\[\] has an empty value"),
        ("control_scale", [[1.0]], "has an empty value"),
        ("control_scale", "0.5;-1", "-1.0 is not in the range 0<=x"),
        ("control_end", "1;x", "'x' is not a valid float"),
        ("control_preprocess", "canny;blur", "'blur' is not one of 'canny', 'scribble'"),
        ("strength", "0.5;0.6", "'0.5;0.6' is not a valid float"),  # (not a ControlNet's)
    ],
)
def test_bad_lists_are_refused_with_the_value_named(key, raw, message):
    with pytest.raises(InputError, match=message):
        BY_KEY[key].parse(raw)


def test_from_fields_carries_the_lists_by_diffusers_names():
    lists = {"control_scale": "1;0.5", "control_preprocess": "none;canny"}
    call = from_fields({"prompt": "p", **lists})
    assert call.controlnet_conditioning_scale == (1.0, 0.5)
    assert call.control_preprocess == (None, "canny")
