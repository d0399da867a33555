"""A batch spread over a local Ray cluster with Ray Data gives what runner.run gives in-process."""

import os
import signal
import threading

import numpy as np
import pytest
from PIL import Image

from fastimg.errors import InputError
from fastimg.settings import CallSettings
from fastimg.workflows import runner
from fastimg.workflows.jobs import Sweep, plan_sweep
from fastimg.workflows.naming import check_outputs, name_outputs
from fastimg.workflows.sources import Source

ray = pytest.importorskip("ray")

SETTINGS = {"quality": None, "metadata": True, "extra_info": {"fastimg:engines": "tiny"}}


def _plan(picture, out, strengths=(0.5, 0.75), seeds=(1, 2, 3), skip_existing=False):
    sweep = Sweep(strength=strengths, guidance=(3.0,), steps=(4,), seeds=seeds)
    jobs = plan_sweep([Source(picture)], CallSettings("a red fox"), sweep)
    return check_outputs(name_outputs(jobs, out), skip_existing=skip_existing)


def _checked(engines, planned):
    """`planned` checked on the driver from the engines' manifest, as the CLI does."""
    from fastimg.engine_folder.manifest import load_manifest

    return runner.plan(load_manifest(engines), planned)


def _load(engines):
    return {"folder": engines, "backend": "auto", "precision": "fp32"}


def _reference(engines, planned):
    """Each output's pixels, made in-process by runner.run."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(engines, precision="fp32")
    report = runner.run(pipe, runner.plan(pipe.manifest, planned), **SETTINGS)
    assert not report.failed
    return {path.name: np.asarray(Image.open(path)) for path in report.written}


def _check_outputs(out, expected):
    """`out` holds exactly the expected images (no temporaries), each with the same pixels."""
    assert sorted(os.listdir(out)) == sorted(expected)
    for name, pixels in expected.items():
        assert np.array_equal(np.asarray(Image.open(out / name)), pixels), name


def test_ray_workers_write_each_output_once_with_runner_run_pixels(
    ray_cluster, tiny, square, tmp_path
):
    from fastimg.workflows.ray_batch import run_on_ray

    expected = _reference(tiny[1], _plan(square, tmp_path / "local"))
    planned = _plan(square, tmp_path / "ray")
    written = []
    report = run_on_ray(
        _checked(tiny[1], planned), _load(tiny[1]), workers=2, on_written=written.append,
        keep_images=True, **SETTINGS
    )  # fmt: skip
    assert not report.failed and not report.skipped
    assert report.written == [path for job in planned.jobs for path in job.outputs]
    assert sorted(written) == sorted(report.written)  # each reported once, as it was written
    assert set(report.images) == set(report.written)  # thumbnails for the sheets, with labels
    assert all("fastimg:seed" in image.info for image in report.images.values())
    _check_outputs(tmp_path / "ray", expected)


def test_existing_outputs_are_kept_on_the_driver(ray_cluster, tiny, square, tmp_path):
    from fastimg.workflows.ray_batch import run_on_ray

    out = tmp_path / "out"
    first = _plan(square, out, strengths=(0.5,), seeds=(5, 6))
    run_on_ray(_checked(tiny[1], first), _load(tiny[1]), workers=1, **SETTINGS)
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _plan(square, out, strengths=(0.5,), seeds=(5, 6, 7), skip_existing=True)
    report = run_on_ray(_checked(tiny[1], again), _load(tiny[1]), workers=2, **SETTINGS)
    assert sorted(report.skipped) == sorted(stamps)
    assert [p.name for p in report.written] == ["square-s0.5-7.png"]
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())


def test_a_killed_worker_loses_nothing(ray_cluster, tiny, square, tmp_path, monkeypatch):
    """A worker is killed in the middle of a job, forced: the first try of job 0 says which
    process runs it and waits there, before any of its work, until it is killed."""
    from fastimg.workflows import ray_batch

    expected = _reference(tiny[1], _plan(square, tmp_path / "local", seeds=(1, 2, 3, 4)))
    out = tmp_path / "ray"
    planned = _plan(square, out, seeds=(1, 2, 3, 4))
    held = tmp_path / "held"  # holds the PID of job 0's first try, once it has begun
    held.mkdir()

    class HeldWorker(ray_batch.BatchWorker):  # (a local class: Ray ships it by value)
        def run(self, index):
            import os
            import time

            first_try = held / "pid"
            if index == 0 and not first_try.exists():
                (held / "pid.tmp").write_text(str(os.getpid()))
                os.replace(held / "pid.tmp", first_try)
                deadline = time.monotonic() + 300  # (only where the test never kills it)
                while time.monotonic() < deadline:
                    time.sleep(0.05)
            return super().run(index)

    monkeypatch.setattr(ray_batch, "BatchWorker", HeldWorker)
    killed, stop = [], threading.Event()

    def kill_the_first_try():
        while not stop.is_set():
            if (held / "pid").exists():
                pid = int((held / "pid").read_text())
                job_0_done = any(path.exists() for path in planned.jobs[0].outputs)
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, job_0_done))
                return
            stop.wait(0.01)

    killer = threading.Thread(target=kill_the_first_try)
    killer.start()
    try:
        report = ray_batch.run_on_ray(
            _checked(tiny[1], planned), _load(tiny[1]), workers=2, **SETTINGS
        )
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1 and killed[0][0] != os.getpid()
    assert killed[0][1] is False  # killed before job 0 had written anything: it ran again
    assert not report.failed
    assert sorted(report.written) == sorted(p for job in planned.jobs for p in job.outputs)
    _check_outputs(out, expected)  # job 0's image too, from its second try, and no temporaries


def test_an_impossible_job_is_refused_on_the_driver_before_ray_starts(
    ray_cluster, tiny, square, tmp_path, monkeypatch
):
    from fastimg.workflows import ray_batch
    from fastimg.workflows import ray_cluster as cluster_module

    def no_cluster(*args, **kwargs):
        raise AssertionError("Ray was reached before every job was checked")

    monkeypatch.setattr(cluster_module, "connect", no_cluster)
    planned = _plan(square, tmp_path / "out", strengths=(0.5, 0.1), seeds=(1,))
    with pytest.raises(InputError, match="zero denoising steps") as refused:
        ray_batch.run_on_ray(_checked(tiny[1], planned), _load(tiny[1]), workers=2, **SETTINGS)
    assert "strength 0.1" in str(refused.value)  # the job is named
    assert not (tmp_path / "out").exists()


def test_jobs_checked_from_the_manifest_alone_plan_as_the_pipeline(tiny):
    from fastimg.diffusion.checks import plan_for, resolve_sampler
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.engine_folder.manifest import load_manifest

    pipe = Img2ImgPipeline.from_engines(tiny[1], precision="fp32")
    manifest = load_manifest(tiny[1])
    sampler = resolve_sampler(manifest, None)
    ours, theirs = plan_for(manifest, sampler, 10, 0.3), pipe.plan(sampler, 10, 0.3)
    assert ours.steps == theirs.steps == 3
    assert np.array_equal(ours.timesteps, theirs.timesteps)
    jobs = plan_sweep([Source(tiny[1] / "x.png")], CallSettings("a fox"),
                      Sweep(strength=(0.3, 1.0), steps=(4, 10)))  # fmt: skip
    assert runner.check_jobs(manifest, jobs) == runner.check_jobs(pipe.manifest, jobs)


def test_a_ray_batch_loads_and_verifies_the_manifest_once_on_the_driver(
    tiny, square, tmp_path, monkeypatch
):
    from fastimg.cli.batch import _ray_runner
    from fastimg.engine_folder import manifest as manifest_module
    from fastimg.workflows import ray_cluster as cluster_module

    class Reached(Exception):
        pass

    def no_cluster(*args, **kwargs):
        raise Reached

    verified = []
    original = manifest_module.verify_files
    monkeypatch.setattr(
        manifest_module, "verify_files", lambda *a, **k: verified.append(a[0]) or original(*a, **k)
    )
    monkeypatch.setattr(cluster_module, "connect", no_cluster)
    planned = _plan(square, tmp_path / "out")
    settings = {"ray_workers": 2, "replica_cpus": None, "ray_address": None}
    run = _ray_runner(planned, _load(tiny[1]), None, settings)
    with pytest.raises(Reached):  # every job checked, the cluster next
        run(**SETTINGS)
    assert verified == [tiny[1]]
