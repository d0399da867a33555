"""--lora FILE[:SCALE] as a user types it: the LoRA applied at run time, bad ones refused."""

import shutil

import numpy as np
import pytest
from PIL import Image

from fastimg.cli import cli
from tests.cli.test_cli import transform

pytest.importorskip("onnx")


@pytest.fixture
def engines(tiny, tmp_path):
    return shutil.copytree(tiny[1], tmp_path / "engines")


@pytest.fixture(scope="module")
def style(tmp_path_factory):
    pytest.importorskip("torch")
    from fastimg_export.random_models import write_random_model

    return write_random_model("tiny-lora", tmp_path_factory.mktemp("lora") / "style.safetensors")


def test_transform_with_a_lora_is_the_python_apis_image(runner, engines, picture, style, tmp_path):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    out = tmp_path / "out.png"
    result = transform(runner, engines, picture, "-o", out, "--seed", "3", "--lora",
                       f"{style}:0.8", "--backend", "onnxruntime")  # fmt: skip
    assert result.exit_code == 0, result.output
    written = Image.open(out)
    assert written.text["fastimg:loras"] == "style:0.8"
    from fastimg.lora.files import read_lora

    hashes = f'Lora hashes: "style: {read_lora(style).short_hash}"'
    assert "<lora:style:0.8>" in written.text["parameters"] and hashes in written.text["parameters"]
    pipe = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    pipe.load_lora(style, scale=0.8)
    (expected,) = pipe(prompt="a red fox", image=Image.open(picture).convert("RGB"),
                       num_inference_steps=4, strength=0.5, seed=3)  # fmt: skip
    assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(expected))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{style}:strong", "LoRA scale 'strong'"),
        ("{missing}", "does not exist"),
        ("{picture}", "is not a .safetensors file"),
    ],
)
def test_a_bad_lora_is_one_line_and_exit_1(runner, engines, picture, style, tmp_path, spec,
                                           message):  # fmt: skip
    given = spec.format(style=style, missing=tmp_path / "gone.safetensors", picture=picture)
    out = tmp_path / "out.png"
    result = transform(runner, engines, picture, "-o", out, "--lora", given)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_an_sdxl_lora_on_an_sd1_model_is_refused(runner, engines, picture, tmp_path):
    pytest.importorskip("torch")
    from fastimg_export.random_models import write_random_model

    xl = write_random_model("tiny-sdxl-lora", tmp_path / "xl.safetensors")
    result = transform(runner, engines, picture, "-o", tmp_path / "o.png", "--lora", str(xl))
    assert result.exit_code == 1
    assert "made for another architecture" in result.output


def test_the_lora_option_is_in_every_command_that_loads_engines(runner):
    for command in (["transform"], ["run"], ["video"], ["stream"], ["serve"]):
        result = runner.invoke(cli, [*command, "--help"])
        assert "--lora FILE[:SCALE]" in result.output, command


def test_a_job_file_picks_each_rows_loras(runner, engines, picture, style, tmp_path):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(
        "image,prompt,seed,lora_scales,output\n"
        f"{picture},a fox,1,style:0.4,a.png\n"
        f"{picture},a fox,1,style:0,b.png\n"
        f"{picture},a fox,1,,c.png\n"
    )
    out = tmp_path / "out"
    result = runner.invoke(cli, ["run", str(jobs), "--engines", str(engines), "-o", str(out),
                                 "--steps", "3", "--lora", f"{style}:0.9"])  # fmt: skip
    assert result.exit_code == 0, result.output
    labels = [Image.open(out / name).text.get("fastimg:loras") for name in ("a.png", "b.png",
                                                                              "c.png")]  # fmt: skip
    assert labels == ["style:0.4", None, "style:0.9"]
    bad = tmp_path / "bad.csv"
    bad.write_text(f"image,prompt,lora_scales\n{picture},a fox,cubism:1\n")
    refused = runner.invoke(cli, ["run", str(bad), "--engines", str(engines), "-o", str(out),
                                  "--lora", str(style)])  # fmt: skip
    assert refused.exit_code != 0 and "no LoRA named 'cubism' is loaded" in refused.output
