import numpy as np
import pytest
from PIL import Image

from fastimg.diffusion.checks import resolve_sampler
from fastimg.errors import InputError
from fastimg.settings import CallSettings
from fastimg.workflows import runner
from fastimg.workflows.jobs import Job
from fastimg.workflows.naming import check_outputs
from fastimg.workflows.sources import Source


@pytest.fixture
def pipe(tiny):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    return Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")


def _job(path, out, **settings):
    settings = {"strength": 0.5, "num_inference_steps": 4, "guidance_scale": 3.0, "seed": 1,
                **settings}  # fmt: skip
    return Job(Source(path), CallSettings("a red fox", **settings), outputs=(out,))


def _plan(pipe, jobs, skip_existing=False):
    return runner.plan(pipe.manifest, check_outputs(jobs, skip_existing=skip_existing))


def test_run_writes_what_the_pipeline_makes_and_reports_progress(pipe, photo, tmp_path):
    photo.save(tmp_path / "in.png")
    jobs = [
        _job(tmp_path / "in.png", tmp_path / "o" / "a.png"),
        _job(tmp_path / "in.png", tmp_path / "o" / "b.jpg", strength=0.75),
    ]
    events = []
    report = runner.run(pipe, _plan(pipe, jobs), callback=events.append)
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
    report = runner.run(pipe, _plan(pipe, jobs))
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
    report = runner.run(pipe, _plan(pipe, jobs, skip_existing=True))
    assert report.skipped == [tmp_path / "a.png"] and report.written == [tmp_path / "b.png"]
    assert (tmp_path / "a.png").read_bytes() == before

    (tmp_path / "b.png").rename(tmp_path / "a.png")  # made with seed 2, not this job's seed 1
    report = runner.run(pipe, _plan(pipe, jobs, skip_existing=True))
    ((job, reason),) = report.failed
    assert job is jobs[0] and "was made with seed '2', not 1" in reason


def test_a_job_that_cannot_run_is_refused_before_any_work(pipe, photo, tmp_path):
    photo.save(tmp_path / "in.png")
    jobs = [
        _job(tmp_path / "in.png", tmp_path / "a.png"),
        _job(tmp_path / "in.png", tmp_path / "b.png", strength=0.1),  # 4 x 0.1: no step
    ]
    with pytest.raises(InputError, match=r"in.png \(strength 0.1, seed 1\): .*zero denoising"):
        runner.run(pipe, _plan(pipe, jobs))
    assert not (tmp_path / "a.png").exists()


def test_plan_checks_every_job_once_and_run_takes_them_as_checked(
    pipe, photo, tmp_path, monkeypatch
):
    photo.save(tmp_path / "in.png")
    jobs = [
        _job(tmp_path / "in.png", tmp_path / "a.png"),
        _job(tmp_path / "in.png", tmp_path / "b.png", seed=2, scheduler="euler"),
    ]
    batch = _plan(pipe, jobs)
    own = resolve_sampler(pipe.manifest, None)  # the model's own scheduler
    assert [(c.job, c.sampler, c.steps) for c in batch.jobs] == [
        (jobs[0], own, 2), (jobs[1], "euler", 2)
    ]  # fmt: skip
    assert batch.existing == ()

    def checked_again(*args):
        raise AssertionError("run checked the jobs again")

    monkeypatch.setattr(runner, "check_jobs", checked_again)
    report = runner.run(pipe, batch)
    assert report.written == [tmp_path / "a.png", tmp_path / "b.png"]


def test_a_seed_out_of_range_is_refused_naming_its_job(pipe, tmp_path):
    jobs = [_job(tmp_path / "in.png", tmp_path / "a.png"),
            _job(tmp_path / "in.png", tmp_path / "b.png", seed=2**32)]  # fmt: skip
    with pytest.raises(InputError, match=r"in.png \(strength 0.5, seed 4294967296\): seed"):
        runner.check_jobs(pipe.manifest, jobs)
