from pathlib import Path

from PIL import Image

from fastimg.settings import CallSettings
from fastimg.workflows import naming, sheets
from fastimg.workflows.jobs import Sweep, plan_sweep
from fastimg.workflows.sources import Source

FOX = CallSettings("fox")


def _sources(*names):
    return [Source(Path("in") / name) for name in names]


def test_the_sheet_layout_puts_the_first_swept_setting_across():
    jobs = plan_sweep(_sources("a.png"), FOX, Sweep(strength=(0.25, 0.5), seeds=(1, 2)))
    jobs = naming.name_outputs(jobs, Path("out"))
    rows, columns, places = sheets.sheet_layout(jobs)
    assert columns == ["strength 0.25", "strength 0.5"]
    assert rows == ["seed 1", "seed 2"]
    assert places[Path("out/a-s0.5-2.png")] == ("seed 2", "strength 0.5")


def test_a_cell_is_a_thumbnail_carrying_the_labels():
    image = Image.new("RGB", (1024, 512))
    cell = sheets.cell_image(image, {"fastimg:seed": "1"})
    assert cell.size == (sheets.SHEET_CELL, sheets.SHEET_CELL // 2)
    assert cell.info == {"fastimg:seed": "1"} and image.size == (1024, 512)
