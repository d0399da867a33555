import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fastimg.errors import InputError, MissingDependencyError
from fastimg.media import control_images
from fastimg.settings import CONTROL_PREPROCESSORS, MODEL_PREPROCESSORS


def _rectangle(mode: str = "RGB") -> Image.Image:
    """A dark gray rectangle (rows 20-59, columns 30-89) on light paper, 120 x 80."""
    image = Image.new(mode, (120, 80), "white")
    ImageDraw.Draw(image).rectangle((30, 20, 89, 59), fill=(40, 40, 40) if mode == "RGB" else 40)
    return image


def test_the_preprocessors_are_the_settings_choices():
    # (depth is a model's: fastimg.diffusion.depth runs the engine folder's)
    assert (*control_images.PREPROCESSORS, *MODEL_PREPROCESSORS) == CONTROL_PREPROCESSORS


def test_canny_finds_the_edges_of_a_rectangle():
    pytest.importorskip("cv2")
    edges = control_images.canny(_rectangle())
    assert edges.mode == "RGB" and edges.size == (120, 80)
    pixels = np.asarray(edges)
    assert set(np.unique(pixels)) <= {0, 255}
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    lit = pixels[..., 0] == 255
    rows, cols = np.nonzero(lit)
    # Edges on the rectangle's border (a pixel either side of it), nothing inside or outside.
    assert 19 <= rows.min() <= 20 and 59 <= rows.max() <= 60
    assert 29 <= cols.min() <= 30 and 89 <= cols.max() <= 90
    assert not lit[25:55, 35:85].any()
    assert lit[20:60, 29:31].any(axis=1).all()  # the left side, every row of it
    assert lit[19:21, 30:90].any(axis=0).all()  # the top, every column


def test_canny_of_a_flat_image_is_black_and_takes_any_mode():
    pytest.importorskip("cv2")
    for image in (Image.new("L", (40, 24), 200), Image.new("RGBA", (40, 24), (9, 9, 9, 0))):
        edges = control_images.canny(image)
        assert edges.mode == "RGB" and edges.size == (40, 24)
        assert not np.asarray(edges).any()


def test_canny_without_opencv_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if not installed: importing it fails
    with pytest.raises(MissingDependencyError, match=r"fastimg\[controlnet\]"):
        control_images.preprocess(_rectangle(), "canny")


def test_scribble_inverts_and_thresholds_a_sketch():
    image = Image.new("RGB", (10, 4), "white")
    pixels = np.asarray(image).copy()
    pixels[1, 2] = (0, 0, 0)  # a black stroke
    pixels[2, 5] = (126, 200, 255)  # a dark blue one: its darkest channel is below 127
    pixels[3, 7] = (127, 127, 127)  # light enough to be paper
    scribble = control_images.scribble(Image.fromarray(pixels))
    assert scribble.mode == "RGB" and scribble.size == (10, 4)
    out = np.asarray(scribble)
    expected = np.zeros((4, 10), dtype=np.uint8)
    expected[1, 2] = expected[2, 5] = 255
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], expected)


def test_scribble_of_a_drawn_rectangle_is_white_on_black():
    out = np.asarray(control_images.scribble(_rectangle("L")))
    assert out.shape == (80, 120, 3) and set(np.unique(out)) == {0, 255}
    assert (out[20:60, 30:90] == 255).all() and out.sum() == 40 * 60 * 3 * 255


def test_preprocess_none_is_the_image_as_given_and_unknown_names_are_refused():
    image = _rectangle()
    assert control_images.preprocess(image, None) is image
    with pytest.raises(InputError, match="unknown control preprocessor 'blur': choose one of"):
        control_images.preprocess(image, "blur")


def test_a_call_with_canny_is_refused_before_any_work_without_opencv(
    tiny_controlnet, photo, tmp_path, monkeypatch
):
    from click.testing import CliRunner

    from fastimg.cli.main import cli

    monkeypatch.setitem(sys.modules, "cv2", None)
    control_images.check_available("scribble")  # needs nothing
    photo.save(tmp_path / "in.png")
    args = ["transform", str(tmp_path / "in.png"), "--engines", str(tiny_controlnet[1]),
            "--prompt", "a fox", "--control-preprocess", "canny",
            "-o", str(tmp_path / "o.png")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "cv2 is not installed: install it with  pip install 'fastimg[controlnet]'" in (
        result.output
    )
    assert not (tmp_path / "o.png").exists()
