from pathlib import Path

import pytest

from fastimg.errors import InputError
from fastimg.settings import CallSettings
from fastimg.workflows import naming
from fastimg.workflows.jobs import Sweep, plan_sweep
from fastimg.workflows.sources import Source

FOX = CallSettings("fox")


def _sources(*names):
    return [Source(Path("in") / name) for name in names]


def test_default_names_carry_what_varies_so_a_sweep_never_collides_with_itself(tmp_path):
    sweep = Sweep(strength=(0.25, 0.5, 0.75), steps=(20, 30), seeds=(1, 2))
    jobs = naming.name_outputs(plan_sweep(_sources("a.png"), FOX, sweep), tmp_path)
    names = [job.outputs[0].name for job in jobs]
    assert len(set(names)) == len(names) == 12
    assert "a-s0.25-steps20-1.png" in names and "a-s0.75-steps30-2.png" in names
    planned = naming.check_outputs(jobs)
    assert planned.existing == []


def test_one_setting_names_strength_and_seed_and_several_images_an_index(tmp_path):
    (job,) = plan_sweep(_sources("a.png"), FOX, Sweep(strength=(0.5,), seeds=(42,)))
    (named,) = naming.name_outputs([job], tmp_path)
    assert named.outputs == (tmp_path / "a-s0.5-42.png",)
    (job,) = plan_sweep(
        _sources("a.png"), FOX.with_values(num_images_per_prompt=2), Sweep(seeds=(3,))
    )
    (named,) = naming.name_outputs([job], tmp_path, fmt="webp")
    assert [p.name for p in named.outputs] == ["a-s0.8-3-0.webp", "a-s0.8-3-1.webp"]


def test_a_name_template_is_checked_and_may_choose_its_own_suffix(tmp_path):
    jobs = plan_sweep(_sources("a.png"), FOX, Sweep(strength=(0.5,), seeds=(1,)))
    (named,) = naming.name_outputs(jobs, tmp_path, "sub/{stem}_{seed:05d}.jpg")
    assert named.outputs == (tmp_path / "sub" / "a_00001.jpg",)
    with pytest.raises(InputError, match=r"unknown field \{colour\}.*\{stem\}"):
        naming.name_outputs(jobs, tmp_path, "{stem}-{colour}")
    for bad in ("/etc/{stem}", "../{stem}", "  "):
        with pytest.raises(InputError, match="must be a file name"):
            naming.name_outputs(jobs, tmp_path, bad)


def test_a_template_that_leaves_out_what_varies_is_refused_naming_both_jobs(tmp_path):
    jobs = plan_sweep(_sources("a.png"), FOX, Sweep(strength=(0.5,), seeds=(1, 2)))
    named = naming.name_outputs(jobs, tmp_path, "{stem}-{strength}")
    with pytest.raises(InputError, match=r"two outputs would be written to .*seed 1.*seed 2"):
        naming.check_outputs(named)


def test_earlier_outputs_are_refused_unless_overwritten_or_skipped(tmp_path):
    jobs = plan_sweep(_sources("a.png"), FOX, Sweep(strength=(0.5, 0.6), seeds=(1,)))
    named = naming.name_outputs(jobs, tmp_path)
    named[0].outputs[0].write_bytes(b"earlier")
    with pytest.raises(InputError, match="already exists.*--skip-existing.*--overwrite"):
        naming.check_outputs(named)
    assert naming.check_outputs(named, skip_existing=True).existing == [named[0].outputs[0]]
    assert naming.check_outputs(named, overwrite=True).existing == []
    with pytest.raises(InputError, match="contradict"):
        naming.check_outputs(named, overwrite=True, skip_existing=True)


def test_an_input_is_never_an_output(tmp_path):
    jobs = plan_sweep([Source(tmp_path / "a.png")], FOX, Sweep(seeds=(1,)))
    with pytest.raises(InputError, match="is one of the input images"):
        naming.check_outputs(naming.name_outputs(jobs, tmp_path, "{stem}"), overwrite=True)


def test_a_single_file_output_takes_exactly_one_image(tmp_path):
    jobs = plan_sweep(_sources("a.png"), FOX, Sweep(seeds=(1, 2)))
    with pytest.raises(InputError, match="2 images would be written: pass a folder"):
        naming.name_outputs(jobs, tmp_path / "one.png", single_file=True)
