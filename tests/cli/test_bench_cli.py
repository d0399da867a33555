import json

import pytest
from click.testing import CliRunner

from fastimg.cli import cli

pytest.importorskip("diffusers")


def test_bench_command_writes_its_record(tiny, tmp_path):
    model, engines = tiny
    args = ["bench", "--model", str(model), "--engines", str(engines), "--size", "64"]
    args += ["--backend", "onnxruntime:fp32", "--warmup", "0", "--repeats", "1"]
    args += ["--no-cold-start", "-o", str(tmp_path / "run")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["command"].startswith("fastimg bench")
    assert "fastimg onnxruntime fp32" in data["sides"]
    assert (tmp_path / "run.png").is_file()
    assert "speedup" in result.output


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--backend", "openvino:int4"], "unknown precision"),
        (["--backend", "tensorflow"], "unknown backend"),
        (["--steps", "2", "--strength", "0.2"], "zero denoising steps"),
    ],
)
def test_bench_refuses_bad_settings(tiny, tmp_path, extra, message):
    model, engines = tiny
    args = ["bench", "--model", str(model), "--engines", str(engines), "--size", "64"]
    result = CliRunner().invoke(cli, [*args, "--no-cold-start", "-o", str(tmp_path / "r"), *extra])
    assert result.exit_code == 1
    assert message in result.output
    assert not (tmp_path / "r.json").exists()


def test_bench_controlnet_random_builds_exports_and_measures_it(tiny, tmp_path, monkeypatch):
    from fastimg.engine_folder.manifest import load_manifest

    model, _ = tiny
    monkeypatch.chdir(tmp_path)
    args = ["bench", "--model", str(model), "--size", "64", "--controlnet", "random",
            "--backend", "onnxruntime:fp32", "--warmup", "0", "--repeats", "1",
            "--no-cold-start", "-o", str(tmp_path / "run")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    # a random ControlNet of the model's UNet, and engines exported with it
    assert (tmp_path / "models" / "model-controlnet" / "config.json").is_file()
    manifest = load_manifest(tmp_path / "engines" / "model-controlnet-random")
    assert manifest.control_components == ("controlnet", "unet_control")
    data = json.loads((tmp_path / "run.json").read_text())
    ours = data["sides"]["fastimg onnxruntime fp32"]
    assert ours["vs_diffusers"]["psnr_db"] >= 40.0
    assert ours["stages_median_seconds"]["controlnet"] > 0
    assert data["job"]["controlnet"].endswith("model-controlnet")
    assert "fastimg onnxruntime fp32: the ControlNet took" in result.output
    assert (tmp_path / "run.png").is_file()
    peer = CliRunner().invoke(cli, [*args[:-1], str(tmp_path / "p"), "--peer",
                                    "optimum-intel=/nonexistent/python"])  # fmt: skip
    assert peer.exit_code == 1 and "a peer runs no ControlNet" in peer.output


def test_bench_stream_writes_fps_latency_and_skips(tiny, tmp_path):
    model, engines = tiny
    args = ["bench", "--stream", "--model", str(model), "--engines", str(engines), "--size", "64"]
    args += ["--backend", "onnxruntime:fp32", "--warmup", "1", "--frames", "8", "--steps", "4"]
    args += ["--strength", "0.75", "--sampler", "euler", "--stream-batch", "--similarity", "0.98"]
    result = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "stream")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "stream.json").read_text())
    assert data["command"].startswith("fastimg bench")
    assert data["stream_options"] == {"stream_batch": True, "similarity": 0.98, "max_skip": 10}
    ours, theirs = data["sides"]["fastimg stream onnxruntime fp32"], data["sides"]["diffusers"]
    assert ours["skipped"] == 2  # the clip's two still frames, identical to the one before
    assert theirs["skipped"] == 0 and ours["speedup_vs_diffusers"] > 0
    # the same backend with every option off ran in the same run: the options' own gain
    off = data["sides"]["fastimg stream onnxruntime fp32 (options off)"]
    assert off["skipped"] == 0 and "speedup_vs_options_off" not in off
    assert ours["speedup_vs_options_off"] == pytest.approx(ours["fps"] / off["fps"])
    db = off["psnr_first_frame_vs_diffusers_db"]  # all off: each frame is the single call
    assert db == "inf" or db >= 40
    for side in (ours, off, theirs):
        lat = side["latency_seconds"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] and side["fps"] > 0
    assert "lat p50" in result.output


def test_bench_stream_all_off_gives_diffusers_images(tiny, tmp_path):
    model, engines = tiny
    args = ["bench", "--stream", "--model", str(model), "--engines", str(engines), "--size", "64"]
    args += ["--backend", "onnxruntime:fp32", "--warmup", "0", "--frames", "2"]
    result = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "stream")])
    assert result.exit_code == 0, result.output
    ours = json.loads((tmp_path / "stream.json").read_text())["sides"]
    db = ours["fastimg stream onnxruntime fp32"]["psnr_first_frame_vs_diffusers_db"]
    assert db == "inf" or db >= 40


def test_bench_stream_measures_openvino_static_shapes_as_a_side_of_its_own(tiny, tmp_path):
    pytest.importorskip("openvino")
    model, engines = tiny
    args = ["bench", "--stream", "--model", str(model), "--engines", str(engines), "--size", "64"]
    args += ["--backend", "openvino:fp32", "--backend", "openvino:fp32:static", "--no-diffusers"]
    args += ["--warmup", "0", "--frames", "2"]
    result = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "stream")])
    assert result.exit_code == 0, result.output
    sides = json.loads((tmp_path / "stream.json").read_text())["sides"]
    assert set(sides) == {"fastimg stream openvino fp32", "fastimg stream openvino fp32 static"}
    assert all(side["fps"] > 0 for side in sides.values())
