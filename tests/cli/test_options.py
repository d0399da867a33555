"""Every call setting's command-line option comes from fastimg.settings: name, type, range."""

import click
import pytest
from click.testing import CliRunner

from fastimg import settings
from fastimg.cli import options
from fastimg.cli.batch import transform
from fastimg.cli.video import video


def _params(command: click.Command) -> dict:
    return {opt: param for param in command.params for opt in param.opts}


def _bounds(param_type) -> tuple:
    item = getattr(param_type, "item", param_type)  # a sweep's list of values
    return getattr(item, "min", None), getattr(item, "max", None)


@pytest.mark.parametrize("setting", settings.SETTINGS, ids=lambda s: s.name)
def test_transform_takes_every_setting_with_its_range(setting):
    param = _params(transform)[setting.option]
    high = setting.high if setting.high is not None else setting.cap
    if setting.kind in (settings.REAL, settings.WHOLE) and (setting.low, high) != (None, None):
        assert _bounds(param.type) == (setting.low, high)
    if setting.kind == settings.CHOICE:  # (one per ControlNet: 'none' takes its image as given)
        none = (settings.AS_GIVEN,) * setting.per_controlnet
        assert tuple(param.type.choices) == (*setting.choices, *none)


def test_video_takes_every_setting_but_the_images_per_call():
    given = _params(video)
    missing = [s.option for s in settings.SETTINGS if s.option not in given]
    assert missing == ["--num-images"]


def test_a_setting_added_to_settings_becomes_an_option_of_the_commands(monkeypatch):
    new = settings.Setting("clip_skip", settings.WHOLE, "Skip layers.", low=0, high=11)
    monkeypatch.setattr(options, "SETTINGS", (*settings.SETTINGS, new))
    monkeypatch.setitem(settings.BY_NAME, "clip_skip", new)
    seen = {}

    @click.command()
    @options.more_setting_options
    def command(**given):
        seen.update(options.pop_more_settings(given))

    runner = CliRunner()
    result = runner.invoke(command, ["--clip-skip", "2"])
    assert result.exit_code == 0, result.output
    assert seen["clip_skip"] == 2 and seen["prompt_2"] is None
    refused = runner.invoke(command, ["--clip-skip", "12"])
    assert refused.exit_code == 2 and "0<=x<=11" in refused.output
