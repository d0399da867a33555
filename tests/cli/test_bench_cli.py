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
