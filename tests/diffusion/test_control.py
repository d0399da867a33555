import json

import pytest

from fastimg.diffusion.control import check_settings, keep
from fastimg.engine_folder.manifest import Manifest, load_manifest
from fastimg.errors import InputError
from fastimg.settings import CallSettings


def test_keep_is_diffusers_controlnet_keep():
    # diffusers: 1.0 - float(i / len(timesteps) < s or (i + 1) / len(timesteps) > e)
    assert keep(5, 0.2, 0.7) == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert keep(4, 0.0, 1.0) == [1.0] * 4


def _without_control(engines, tmp_path) -> Manifest:
    data = json.loads((engines / "manifest.json").read_text())
    data.pop("control")
    return Manifest.from_data(tmp_path, data)


@pytest.mark.parametrize(
    "values,message",
    [
        ({"controlnet_conditioning_scale": 0.5}, "control_scale steer a ControlNet, but no"),
        (
            {"control_image": "x.png", "control_guidance_start": 0.5, "control_guidance_end": 0.5},
            "must be below",
        ),  # fmt: skip
    ],
)
def test_control_settings_that_cannot_apply_are_refused(tiny_controlnet, values, message):
    manifest = load_manifest(tiny_controlnet[1])
    with pytest.raises(InputError, match=message):
        check_settings(manifest, CallSettings(prompt="p", **values))


def test_a_control_image_for_a_folder_without_controlnet_is_refused(tiny_controlnet, tmp_path):
    manifest = _without_control(tiny_controlnet[1], tmp_path)
    with pytest.raises(InputError, match="has no ControlNet: export the model with"):
        check_settings(manifest, CallSettings(prompt="p", control_image="x.png"))
    check_settings(manifest, CallSettings(prompt="p"))  # no control: the plain call


def test_transform_takes_a_control_image(tiny_controlnet, photo, tmp_path):
    from click.testing import CliRunner

    from fastimg.cli.main import cli

    photo.save(tmp_path / "in.png")
    photo.transpose(0).save(tmp_path / "control.png")
    args = ["transform", str(tmp_path / "in.png"), "--engines", str(tiny_controlnet[1]),
            "--prompt", "a fox", "--steps", "4", "--seed", "1", "--control-image",
            str(tmp_path / "control.png"), "--control-scale", "0.5", "--control-end", "0.8",
            "-o", str(tmp_path / "out.png")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.png").is_file()
    wrong = [a if a != "0.8" else "0.0" for a in args]
    wrong[-1] = str(tmp_path / "out2.png")
    result = CliRunner().invoke(cli, wrong)
    assert result.exit_code == 1 and "must be below" in result.output
