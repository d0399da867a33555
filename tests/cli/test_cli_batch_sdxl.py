"""fastimg transform's SDXL options: passed to the pipeline as its keyword arguments, and
refused (before anything runs) for a folder they do not fit."""

import numpy as np
import pytest
from PIL import Image

from fastimg.cli import cli
from fastimg.diffusion.pipeline import Img2ImgPipeline

pytest.importorskip("torch")


def _transform(runner, engines, *args):
    return runner.invoke(
        cli,
        ["transform", *map(str, args), "--engines", str(engines), "--prompt", "a red fox",
         "--steps", "4", "--strength", "0.5", "--guidance", "5", "--backend", "onnxruntime",
         "--precision", "fp32"],
    )  # fmt: skip


def test_refiner_options_reach_the_pipeline(runner, tiny_sdxl_refiner, picture, tmp_path):
    out = tmp_path / "out.png"
    sdxl = ("--aesthetic-score", "8", "--negative-aesthetic-score", "1.5",
            "--original-size", "256x384", "--crops-coords-top-left", "8,16")  # fmt: skip
    result = _transform(runner, tiny_sdxl_refiner[1], picture, "-o", out, "--seed", "4", *sdxl)
    assert result.exit_code == 0, result.output
    pipe = Img2ImgPipeline.from_engines(
        tiny_sdxl_refiner[1], backend="onnxruntime", precision="fp32"
    )
    settings = dict(strength=0.5, num_inference_steps=4, guidance_scale=5.0, seed=4)
    expected = pipe("a red fox", picture, **settings, aesthetic_score=8.0,
                    negative_aesthetic_score=1.5, original_size=(256, 384),
                    crops_coords_top_left=(8, 16))[0]  # fmt: skip
    plain = pipe("a red fox", picture, **settings)[0]
    written = np.asarray(Image.open(out))
    np.testing.assert_array_equal(written, np.asarray(expected))
    assert not np.array_equal(written, np.asarray(plain))


def test_sdxl_options_on_an_sd_folder_are_refused_before_work(runner, tiny, picture, tmp_path):
    out = tmp_path / "out.png"
    result = _transform(runner, tiny[1], picture, "-o", out, "--prompt-2", "a cat")
    assert result.exit_code != 0
    assert "prompt_2 is an SDXL argument" in result.output
    assert "SD 1.x/2.x layout" in result.output
    assert not out.exists()


def test_the_base_refuses_the_refiners_option(runner, tiny_sdxl, picture, tmp_path):
    result = _transform(runner, tiny_sdxl[1], picture, "-o", tmp_path / "o.png",
                        "--aesthetic-score", "7")  # fmt: skip
    assert result.exit_code != 0 and "does not apply to SDXL base" in result.output


@pytest.mark.parametrize("size", ["1024", "axb", "1x2x3", "-1x5"])
def test_a_size_must_be_two_whole_numbers(runner, tiny_sdxl, picture, tmp_path, size):
    result = _transform(runner, tiny_sdxl[1], picture, "-o", tmp_path / "o.png",
                        "--original-size", size)  # fmt: skip
    assert result.exit_code == 2 and "--original-size" in result.output
