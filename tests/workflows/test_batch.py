from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastimg.errors import InputError
from fastimg.settings import CallSettings
from fastimg.workflows import batch
from fastimg.workflows.batch import Job, Sweep
from fastimg.workflows.sources import Source

FOX = CallSettings("fox")


def _sources(*names):
    return [Source(Path("in") / name) for name in names]


def test_a_sweep_is_every_combination_per_input_with_one_random_seed_per_input():
    jobs = batch.plan_sweep(
        _sources("a.png", "b.png"), FOX, Sweep(strength=(0.25, 0.5), guidance=(3.0, 7.5))
    )
    assert len(jobs) == 8
    assert [job.source.path.name for job in jobs] == ["a.png"] * 4 + ["b.png"] * 4
    assert {(j.call.strength, j.call.guidance_scale) for j in jobs[:4]} == {
        (0.25, 3.0), (0.25, 7.5), (0.5, 3.0), (0.5, 7.5)
    }  # fmt: skip
    assert len({job.call.seed for job in jobs[:4]}) == 1  # like compared with like
    assert all(0 <= job.call.seed < 2**32 for job in jobs)


def test_variant_seeds_count_on_from_the_first_and_wrap():
    assert batch.variant_seeds(7, 3) == (7, 8, 9)
    assert batch.variant_seeds(2**32 - 1, 2) == (2**32 - 1, 0)


def test_default_names_carry_what_varies_so_a_sweep_never_collides_with_itself(tmp_path):
    sweep = Sweep(strength=(0.25, 0.5, 0.75), steps=(20, 30), seeds=(1, 2))
    jobs = batch.name_outputs(batch.plan_sweep(_sources("a.png"), FOX, sweep), tmp_path)
    names = [job.outputs[0].name for job in jobs]
    assert len(set(names)) == len(names) == 12
    assert "a-s0.25-steps20-1.png" in names and "a-s0.75-steps30-2.png" in names
    planned = batch.check_outputs(jobs)
    assert planned.existing == []


def test_one_setting_names_strength_and_seed_and_several_images_an_index(tmp_path):
    (job,) = batch.plan_sweep(_sources("a.png"), FOX, Sweep(strength=(0.5,), seeds=(42,)))
    (named,) = batch.name_outputs([job], tmp_path)
    assert named.outputs == (tmp_path / "a-s0.5-42.png",)
    (job,) = batch.plan_sweep(
        _sources("a.png"), FOX.with_values(num_images_per_prompt=2), Sweep(seeds=(3,))
    )
    (named,) = batch.name_outputs([job], tmp_path, fmt="webp")
    assert [p.name for p in named.outputs] == ["a-s0.8-3-0.webp", "a-s0.8-3-1.webp"]


def test_a_name_template_is_checked_and_may_choose_its_own_suffix(tmp_path):
    jobs = batch.plan_sweep(_sources("a.png"), FOX, Sweep(strength=(0.5,), seeds=(1,)))
    (named,) = batch.name_outputs(jobs, tmp_path, "sub/{stem}_{seed:05d}.jpg")
    assert named.outputs == (tmp_path / "sub" / "a_00001.jpg",)
    with pytest.raises(InputError, match=r"unknown field \{colour\}.*\{stem\}"):
        batch.name_outputs(jobs, tmp_path, "{stem}-{colour}")
    for bad in ("/etc/{stem}", "../{stem}", "  "):
        with pytest.raises(InputError, match="must be a file name"):
            batch.name_outputs(jobs, tmp_path, bad)


def test_a_template_that_leaves_out_what_varies_is_refused_naming_both_jobs(tmp_path):
    jobs = batch.plan_sweep(_sources("a.png"), FOX, Sweep(strength=(0.5,), seeds=(1, 2)))
    named = batch.name_outputs(jobs, tmp_path, "{stem}-{strength}")
    with pytest.raises(InputError, match=r"two outputs would be written to .*seed 1.*seed 2"):
        batch.check_outputs(named)


def test_earlier_outputs_are_refused_unless_overwritten_or_skipped(tmp_path):
    jobs = batch.plan_sweep(_sources("a.png"), FOX, Sweep(strength=(0.5, 0.6), seeds=(1,)))
    named = batch.name_outputs(jobs, tmp_path)
    named[0].outputs[0].write_bytes(b"earlier")
    with pytest.raises(InputError, match="already exists.*--skip-existing.*--overwrite"):
        batch.check_outputs(named)
    assert batch.check_outputs(named, skip_existing=True).existing == [named[0].outputs[0]]
    assert batch.check_outputs(named, overwrite=True).existing == []
    with pytest.raises(InputError, match="contradict"):
        batch.check_outputs(named, overwrite=True, skip_existing=True)


def test_an_input_is_never_an_output(tmp_path):
    jobs = batch.plan_sweep([Source(tmp_path / "a.png")], FOX, Sweep(seeds=(1,)))
    with pytest.raises(InputError, match="is one of the input images"):
        batch.check_outputs(batch.name_outputs(jobs, tmp_path, "{stem}"), overwrite=True)


def test_inputs_of_one_name_from_two_folders_are_refused():
    with pytest.raises(InputError, match="several inputs are named x"):
        batch.plan_sweep([Source(Path("a/x.png")), Source(Path("b/x.png"))], FOX)
    kept_apart = [Source(Path("a/x.png"), Path("a")), Source(Path("b/x.png"), Path("b"))]
    assert len(batch.plan_sweep(kept_apart, FOX)) == 2


def test_a_single_file_output_takes_exactly_one_image(tmp_path):
    jobs = batch.plan_sweep(_sources("a.png"), FOX, Sweep(seeds=(1, 2)))
    with pytest.raises(InputError, match="2 images would be written: pass a folder"):
        batch.name_outputs(jobs, tmp_path / "one.png", single_file=True)


def test_the_sheet_layout_puts_the_first_swept_setting_across():
    jobs = batch.plan_sweep(_sources("a.png"), FOX, Sweep(strength=(0.25, 0.5), seeds=(1, 2)))
    jobs = batch.name_outputs(jobs, Path("out"))
    rows, columns, places = batch.sheet_layout(jobs)
    assert columns == ["strength 0.25", "strength 0.5"]
    assert rows == ["seed 1", "seed 2"]
    assert places[Path("out/a-s0.5-2.png")] == ("seed 2", "strength 0.5")


@pytest.fixture
def pipe(tiny):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    return Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")


def _job(path, out, **settings):
    settings = {"strength": 0.5, "num_inference_steps": 4, "guidance_scale": 3.0, "seed": 1,
                **settings}  # fmt: skip
    return Job(Source(path), CallSettings("a red fox", **settings), outputs=(out,))


def test_run_jobs_writes_what_the_pipeline_makes_and_reports_progress(pipe, photo, tmp_path):
    photo.save(tmp_path / "in.png")
    jobs = [
        _job(tmp_path / "in.png", tmp_path / "o" / "a.png"),
        _job(tmp_path / "in.png", tmp_path / "o" / "b.jpg", strength=0.75),
    ]
    events = []
    report = batch.run_jobs(pipe, batch.check_outputs(jobs), callback=events.append)
    assert report.written == [job.outputs[0] for job in jobs] and not report.failed
    (direct,) = pipe("a red fox", photo, strength=0.5, num_inference_steps=4,
                     guidance_scale=3.0, seed=1)  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "a.png")), np.asarray(direct))
    assert Image.open(tmp_path / "o" / "b.jpg").format == "JPEG"
    assert events[-1].done == 2 and events[-1].total == 2
    assert any(event.step == 2 and event.steps == 2 for event in events)  # 4 steps x 0.5


def test_a_failing_job_is_reported_and_the_rest_are_written(pipe, photo, tmp_path):
    photo.save(tmp_path / "in.png")
    (tmp_path / "bad.png").write_text("not an image")
    jobs = [
        _job(tmp_path / "bad.png", tmp_path / "o" / "bad.png"),
        _job(tmp_path / "in.png", tmp_path / "o" / "in.png"),
    ]
    report = batch.run_jobs(pipe, batch.check_outputs(jobs))
    assert report.written == [tmp_path / "o" / "in.png"]
    ((job, reason),) = report.failed
    assert job is jobs[0] and "not an image" in reason
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["in.png"]


def test_skipped_jobs_are_not_run_again(pipe, photo, tmp_path):
    photo.save(tmp_path / "in.png")
    jobs = [_job(tmp_path / "in.png", tmp_path / "a.png"), _job(tmp_path / "in.png",
            tmp_path / "b.png", seed=2)]  # fmt: skip
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")  # finished earlier, without labels
    before = (tmp_path / "a.png").read_bytes()
    report = batch.run_jobs(pipe, batch.check_outputs(jobs, skip_existing=True))
    assert report.skipped == [tmp_path / "a.png"] and report.written == [tmp_path / "b.png"]
    assert (tmp_path / "a.png").read_bytes() == before

    (tmp_path / "b.png").rename(tmp_path / "a.png")  # made with seed 2, not this job's seed 1
    report = batch.run_jobs(pipe, batch.check_outputs(jobs, skip_existing=True))
    ((job, reason),) = report.failed
    assert job is jobs[0] and "was made with seed '2', not 1" in reason


def test_a_job_that_cannot_run_is_refused_before_any_work(pipe, photo, tmp_path):
    photo.save(tmp_path / "in.png")
    jobs = [
        _job(tmp_path / "in.png", tmp_path / "a.png"),
        _job(tmp_path / "in.png", tmp_path / "b.png", strength=0.1),  # 4 x 0.1: no step
    ]
    with pytest.raises(InputError, match=r"in.png \(strength 0.1, seed 1\): .*zero denoising"):
        batch.run_jobs(pipe, batch.check_outputs(jobs))
    assert not (tmp_path / "a.png").exists()
