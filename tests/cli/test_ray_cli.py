"""`fastimg transform --ray` and `fastimg run --ray`: the batch on a local Ray cluster."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

from fastimg.cli import cli

ray = pytest.importorskip("ray")

COMMON = ["--prompt", "a red fox", "--steps", "4", "--guidance", "3", "--precision", "fp32"]


def _invoke(runner, engines, *args):
    return runner.invoke(cli, [*map(str, args), "--engines", str(engines), *COMMON])


def _same_images(left, right):
    """Both folders hold the same files, each image with the same pixels."""
    names = sorted(os.listdir(left))
    assert names == sorted(os.listdir(right))
    for name in names:
        a, b = np.asarray(Image.open(left / name)), np.asarray(Image.open(right / name))
        assert np.array_equal(a, b), name
    return names


def test_a_sweep_with_a_grid_on_ray_matches_the_local_run_and_resumes(
    runner, ray_cluster, tiny, square, tmp_path
):
    sweep = ("--strength", "0.5,0.75", "--seed", "1,2", "--grid")
    local = _invoke(runner, tiny[1], "transform", square, "-o", tmp_path / "local", *sweep)
    args = ("transform", square, "-o", tmp_path / "ray", *sweep, "--ray", "--ray-workers", "2")
    on_ray = _invoke(runner, tiny[1], *args)
    assert local.exit_code == 0 and on_ray.exit_code == 0, local.output + on_ray.output
    names = _same_images(tmp_path / "local", tmp_path / "ray")
    assert names == ["square-grid.png"] + [
        f"square-s{s}-{n}.png" for s in (0.5, 0.75) for n in (1, 2)
    ]
    assert sorted(on_ray.stdout.split()) == [str(tmp_path / "ray" / name) for name in names]

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").iterdir() if "grid" not in p.name}
    resumed = _invoke(runner, tiny[1], *args, "--skip-existing")
    assert resumed.exit_code == 0 and "kept 4 output(s)" in resumed.output, resumed.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing redone


def test_a_job_file_on_ray_writes_each_output_once_as_the_local_run(
    runner, ray_cluster, tiny, square, tmp_path
):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("image,prompt,strength,seed,output\nsquare.png,a fox,0.5,1,\n"
                    "square.png,a cat,0.75,2,cat.jpg\nsquare.png,a dog,1,3,\n")  # fmt: skip
    local = _invoke(runner, tiny[1], "run", jobs, "-o", tmp_path / "local")
    on_ray = _invoke(runner, tiny[1], "run", jobs, "-o", tmp_path / "ray", "--ray",
                     "--ray-workers", "2", "--replica-cpus", "1", "-q")  # fmt: skip
    assert local.exit_code == 0 and on_ray.exit_code == 0, local.output + on_ray.output
    names = _same_images(tmp_path / "local", tmp_path / "ray")
    assert names == ["1-square-s0.5-1.png", "3-square-s1-3.png", "cat.jpg"]
    assert len(on_ray.stdout.split()) == 3  # each output named once


def test_ray_without_ray_installed_names_the_extra(runner, tiny, square, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    result = _invoke(runner, tiny[1], "transform", square, "-o", tmp_path / "out", "--ray")
    assert result.exit_code == 1
    assert "fastimg[ray]" in result.output
    assert not (tmp_path / "out").exists()


def test_ray_options_need_ray(runner, tiny, square, tmp_path):
    result = _invoke(runner, tiny[1], "transform", square, "-o", tmp_path / "out",
                     "--ray-workers", "3")  # fmt: skip
    assert result.exit_code == 2 and "--ray-workers needs --ray" in result.output


def test_an_impossible_job_is_refused_before_any_worker_starts(
    runner, ray_cluster, tiny, square, tmp_path, monkeypatch
):
    from fastimg.workflows import ray_cluster as cluster_module

    def no_cluster(*args, **kwargs):
        raise AssertionError("Ray was reached before every job was checked")

    args = ("transform", square, "-o", tmp_path / "out", "--strength", "0.5,0.1", "--seed", "1")
    local = _invoke(runner, tiny[1], *args)
    monkeypatch.setattr(cluster_module, "connect", no_cluster)
    on_ray = _invoke(runner, tiny[1], *args, "--ray")
    assert on_ray.exit_code == local.exit_code == 1, on_ray.output
    assert "strength 0.1 x 4 steps runs zero denoising steps" in on_ray.output
    assert on_ray.output.splitlines()[-1] == local.output.splitlines()[-1]
    assert "running on" in local.output and "running on" not in on_ray.output  # nothing loaded
    assert not (tmp_path / "out").exists()


def test_c2pa_credentials_are_signed_on_the_workers(runner, ray_cluster, tiny, square, tmp_path):
    pytest.importorskip("c2pa")
    from fastimg.media.c2pa import read_manifest
    from tests.pki import make_pki

    pki = make_pki(tmp_path)
    out = tmp_path / "out"
    result = _invoke(runner, tiny[1], "transform", square, "-o", out, "--seed", "1,2",
                     "--strength", "0.5", "--c2pa-cert", pki.chain, "--c2pa-key", pki.key,
                     "--ray")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["square-s0.5-1.png", "square-s0.5-2.png"]
    for path in out.iterdir():
        manifest = read_manifest(path, trust_anchors=pki.ca)
        assert manifest["validation_state"] == "Trusted" and manifest["failures"] == []
