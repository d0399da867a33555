import numpy as np
import pytest
from PIL import Image

from fastimg.media.grid import contact_sheet

ROWS = ["seed 1", "seed 2"]
COLUMNS = ["0.25", "0.5", "0.75"]


def solid(rgb, size=(64, 64)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def colour(r: int, c: int) -> tuple[int, int, int]:
    """A distinct colour per cell, far from white, grey and black."""
    return (40 + 60 * r, 200 - 50 * c, 90 + 30 * c)


def sweep(rows=ROWS, columns=COLUMNS, size=(64, 64)):
    return {
        (row, column): solid(colour(r, c), size)
        for r, row in enumerate(rows)
        for c, column in enumerate(columns)
    }


def box_of(sheet: Image.Image, rgb) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom) of the pixels exactly `rgb`."""
    ys, xs = np.nonzero((np.asarray(sheet) == rgb).all(axis=-1))
    assert len(xs), f"colour {rgb} not on the sheet"
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def is_dark(region: np.ndarray) -> bool:
    return bool((region.max(axis=-1) < 128).any())


def test_output_is_rgb_on_white_and_grows_by_one_cell_per_row_and_column():
    sheet = contact_sheet(sweep(), ROWS, COLUMNS, cell_size=64)
    assert sheet.mode == "RGB"
    assert sheet.getpixel((0, 0)) == (255, 255, 255)
    wider = contact_sheet(sweep(columns=COLUMNS + ["1.0"]), ROWS, COLUMNS + ["1.0"], cell_size=64)
    taller = contact_sheet(sweep(rows=ROWS + ["seed 3"]), ROWS + ["seed 3"], COLUMNS, cell_size=64)
    step_x, step_y = wider.width - sheet.width, taller.height - sheet.height
    assert wider.height == sheet.height and taller.width == sheet.width
    assert 64 < step_x < 64 * 1.25 and 64 < step_y < 64 * 1.6
    assert 3 * 64 < sheet.width < 4 * step_x + 64 and 2 * 64 < sheet.height < 3 * step_y
    bigger = contact_sheet(sweep(), ROWS, COLUMNS, cell_size=128)
    assert bigger.width > 3 * 128 and bigger.height > 2 * 128


def test_each_image_is_drawn_whole_at_its_row_and_column():
    sheet = contact_sheet(sweep(), ROWS, COLUMNS, cell_size=64)
    boxes = {(r, c): box_of(sheet, colour(r, c)) for r in range(2) for c in range(3)}
    for (r, c), (left, top, right, bottom) in boxes.items():
        assert (right - left, bottom - top) == (64, 64)
        assert top == boxes[r, 0][1] and left == boxes[0, c][0]
        if c:
            assert left >= boxes[r, c - 1][2]
        if r:
            assert top >= boxes[r - 1, c][3]


def test_captions_are_drawn_under_each_cell_and_headers_around_the_grid():
    sheet = contact_sheet(sweep(), ROWS, COLUMNS, title="strength sweep", cell_size=64)
    pixels = np.asarray(sheet)
    first = box_of(sheet, colour(0, 0))
    for r in range(2):
        for c in range(3):
            left, top, right, bottom = box_of(sheet, colour(r, c))
            assert is_dark(pixels[bottom : bottom + 12, left:right]), (r, c)
    left, top, _, _ = first
    assert is_dark(pixels[:top, left:])  # title and column headers
    assert is_dark(pixels[top : top + 64, :left])  # row header


def test_headers_are_left_out_for_a_single_unnamed_row_or_column():
    named = contact_sheet(sweep(rows=["seed 1"]), ["seed 1"], COLUMNS, cell_size=64)
    unnamed = contact_sheet(sweep(rows=[""]), [""], COLUMNS, cell_size=64)
    assert unnamed.width < named.width and unnamed.height == named.height
    single = contact_sheet({("", ""): solid((10, 200, 10))}, [""], [""], cell_size=64)
    left, top, right, bottom = box_of(single, (10, 200, 10))
    assert (right - left, bottom - top) == (64, 64)
    assert single.width < 64 * 1.25 and single.height < 64 * 1.5


def test_missing_and_failed_cells_are_grey_boxes_with_a_caption():
    cells = sweep()
    del cells["seed 1", "0.5"]
    cells["seed 2", "0.75"] = None
    sheet = contact_sheet(cells, ROWS, COLUMNS, cell_size=64)
    pixels = np.asarray(sheet)
    for r, c in [(0, 1), (1, 2)]:
        left, top = box_of(sheet, colour(1 - r, c))[0], box_of(sheet, colour(r, 0))[1]
        corner = pixels[top + 2 : top + 12, left + 2 : left + 12]
        assert (corner == corner[0, 0]).all()
        grey = corner[0, 0]
        assert grey[0] == grey[1] == grey[2] and 100 < grey[0] < 250
        assert is_dark(pixels[top : top + 64, left : left + 64])  # "missing" / "failed"


def test_unicode_control_characters_and_long_labels_do_not_crash_and_stay_in_their_cell():
    rows = ["猫 " * 40, "\ud800 lone surrogate\nnew line\t\x00"]
    columns = ["😀 emoji", "\u202eright to left", "x" * 500]
    sheet = contact_sheet(sweep(rows, columns), rows, columns, title="ß ∑ 日本 " * 50, cell_size=64)
    assert sheet.width < 4 * 64 * 1.25  # the row header is at most one cell wide
    for r in range(2):
        for c in range(3):
            left, top, right, bottom = box_of(sheet, colour(r, c))
            assert (right - left, bottom - top) == (64, 64)


def test_non_square_images_keep_their_aspect_and_are_centred():
    cells = {
        ("", "wide"): solid((200, 30, 30), (200, 100)),
        ("", "tall"): solid((30, 30, 200), (90, 300)),
        ("", "small"): solid((30, 200, 30), (16, 8)),
    }
    sheet = contact_sheet(cells, [""], ["wide", "tall", "small"], cell_size=64)
    wide, tall, small = (box_of(sheet, image.getpixel((0, 0))) for image in cells.values())
    assert (wide[2] - wide[0], wide[3] - wide[1]) == (64, 32)
    assert (tall[2] - tall[0], tall[3] - tall[1]) == (19, 64)
    assert (small[2] - small[0], small[3] - small[1]) == (64, 32)
    assert wide[1] - tall[1] == 16  # vertically centred in the row's 64 px box
    assert small[1] == wide[1]


def test_transparent_and_other_modes_are_drawn_over_white():
    clear = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    grey = Image.new("L", (64, 64), 77)
    sheet = contact_sheet({("", "a"): clear, ("", "b"): grey}, [""], ["a", "b"], cell_size=64)
    assert sheet.mode == "RGB"
    assert not (np.asarray(sheet) == (255, 0, 0)).all(axis=-1).any()
    assert (np.asarray(sheet) == 77).all(axis=-1).sum() >= 64 * 64


@pytest.mark.parametrize(
    "rows,columns,cell_size,message",
    [
        ([str(i) for i in range(65)], ["a"], 64, "at most 64 rows"),
        (["a"], [str(i) for i in range(65)], 64, "64 columns"),
        ([], ["a"], 64, "at least one row"),
        (["a"], ["a"], 4, "cell_size"),
    ],
)
def test_limits_are_refused_with_a_clear_message(rows, columns, cell_size, message):
    with pytest.raises(ValueError, match=message):
        contact_sheet({}, rows, columns, cell_size=cell_size)


def test_cells_outside_the_grid_are_refused():
    with pytest.raises(ValueError, match="outside the listed rows and columns"):
        contact_sheet({("a", "z"): solid((1, 2, 3))}, ["a"], ["b"])


def test_sixty_four_by_sixty_four_is_allowed():
    rows = [str(i) for i in range(64)]
    sheet = contact_sheet({}, rows, rows, cell_size=16)
    assert sheet.width > 64 * 16 and sheet.height > 64 * 16
