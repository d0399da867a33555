"""--vae-tile-size as a user types it: transform decodes in tiles, a job file takes the column,
and bad sizes are refused in one line before any image is written."""

import pytest
from PIL import Image

from fastimg.cli import cli
from fastimg.media.images import psnr


def transform(runner, engines, image, out, *args):
    settings = ["--steps", "4", "--strength", "0.5", "--seed", "3", "--prompt", "a red fox"]
    command = ["transform", str(image), "--engines", str(engines), *settings, "-o", str(out)]
    return runner.invoke(cli, [*command, *args])


@pytest.fixture
def wide(tmp_path):
    """A 96 x 160 input: 12 x 20 latents, two and three 64-pixel tiles a side."""
    path = tmp_path / "wide.png"
    Image.linear_gradient("L").resize((160, 96)).convert("RGB").save(path)
    return path


def test_transform_decodes_in_tiles_and_says_so_in_the_image(runner, tiny, wide, tmp_path):
    whole = transform(runner, tiny[1], wide, tmp_path / "whole.png")
    tiled = transform(runner, tiny[1], wide, tmp_path / "tiled.png", "--vae-tile-size", "64")
    assert whole.exit_code == 0 and tiled.exit_code == 0, tiled.output
    a, b = Image.open(tmp_path / "whole.png"), Image.open(tmp_path / "tiled.png")
    assert b.text["fastimg:vae_tile_size"] == "64" and "fastimg:vae_tile_size" not in a.text
    assert a.tobytes() != b.tobytes() and a.size == b.size
    assert psnr(a.convert("RGB"), b.convert("RGB")) > 10  # (64-pixel tiles of a random VAE)


def test_a_job_file_takes_the_vae_tile_size_column(runner, tiny, wide, tmp_path):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"image,prompt,steps,strength,seed,vae_tile_size\n{wide},a fox,4,0.5,3,64\n")
    result = runner.invoke(cli, ["run", str(jobs), "--engines", str(tiny[1]), "-o",
                                 str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 0, result.output
    (written,) = (tmp_path / "out").iterdir()
    assert Image.open(written).text["fastimg:vae_tile_size"] == "64"


@pytest.mark.parametrize(
    "size,message",
    [
        ("100", "vae_tile_size must be a multiple of 8 pixels (the VAE's scale factor), got 100: "
                "use 96 or 104"),
        ("32", "32 is not in the range x>=64"),
        ("big", "'big' is not a valid integer"),
    ],
)  # fmt: skip
def test_bad_tile_sizes_are_refused_in_one_line(runner, tiny, wide, tmp_path, size, message):
    result = transform(runner, tiny[1], wide, tmp_path / "o.png", "--vae-tile-size", size)
    assert result.exit_code != 0
    assert message in result.output
    assert len([line for line in result.output.splitlines() if "rror" in line]) == 1
    assert not (tmp_path / "o.png").exists()


def test_transform_help_and_the_readme_say_the_real_time_recipe_decodes_with_taesd(runner):
    from pathlib import Path

    result = runner.invoke(cli, ["transform", "--help"])
    assert result.exit_code == 0
    assert "decodes with TAESD" in result.output and "--vae-tile-size" in result.output
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    near_real_time = readme.split("## Near real time")[1].split("\n## ")[0]
    assert "The real-time recipe's VAE is TAESD" in near_real_time
