"""Contact sheets: a labelled grid of images, for comparing a sweep (strengths, seeds) at a glance.

Layout, top to bottom: an optional title line, a band of column headers, then one row of cells
per row label, each row with its header on the left. A cell is a `cell_size` square holding the
image scaled to fit, and a caption band under it with the cell's "row · column" label.
"""

import unicodedata
from collections.abc import Mapping

from PIL import Image, ImageDraw, ImageFont

MAX_ROWS = 64
MAX_COLUMNS = 64
MIN_CELL_SIZE = 16
MAX_CELL_SIZE = 4096

BACKGROUND = (255, 255, 255)
TEXT = (24, 24, 24)
EMPTY = (200, 200, 200)
EMPTY_TEXT = (96, 96, 96)
ELLIPSIS = "…"

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def contact_sheet(
    cells: Mapping[tuple[str, str], Image.Image | None],
    rows: list[str],
    columns: list[str],
    title: str | None = None,
    cell_size: int = 256,
) -> Image.Image:
    """A white RGB grid of `cells[(row, column)]`, captioned; None or absent cells drawn empty."""
    _check_layout(cells, rows, columns, cell_size)
    font_size = max(10, min(20, cell_size // 16))
    font = ImageFont.load_default(size=font_size)
    title_font = ImageFont.load_default(size=round(font_size * 1.4)) if title else font
    line_h = _line_height(font)
    pad = max(4, cell_size // 32)
    show_rows = any(rows)
    show_columns = any(columns)

    header_w = 0
    if show_rows:
        widest = max(font.getlength(_one_line(label, font)) for label in rows)
        header_w = min(int(widest) + 1, cell_size) + pad
    title_h = _line_height(title_font) + pad if title else 0
    header_h = line_h + pad // 2 if show_columns else 0
    caption_h = line_h + pad // 2
    width = pad + header_w + len(columns) * (cell_size + pad)
    height = pad + title_h + header_h + len(rows) * (cell_size + caption_h + pad)

    def origin(r: int, c: int) -> tuple[int, int]:
        x = pad + header_w + c * (cell_size + pad)
        return x, pad + title_h + header_h + r * (cell_size + caption_h + pad)

    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        _draw_label(draw, (pad, pad), title, title_font, width - 2 * pad)
    if show_columns:
        for c, column in enumerate(columns):
            x, y = origin(0, c)
            _draw_label(draw, (x, y - header_h), column, font, cell_size, centre=True)
    for r, row in enumerate(rows):
        if show_rows:
            y = origin(r, 0)[1] + (cell_size - line_h) // 2
            _draw_label(draw, (pad, y), row, font, header_w - pad)
        for c, column in enumerate(columns):
            x, y = origin(r, c)
            image = cells.get((row, column))
            if image is not None:
                thumb = _fit_in_cell(image, cell_size)
                offset = ((cell_size - thumb.width) // 2, (cell_size - thumb.height) // 2)
                sheet.paste(thumb, (x + offset[0], y + offset[1]))
            else:
                state = "failed" if (row, column) in cells else "missing"
                draw.rectangle((x, y, x + cell_size - 1, y + cell_size - 1), fill=EMPTY)
                centre_y = y + (cell_size - line_h) // 2
                _draw_label(
                    draw, (x, centre_y), state, font, cell_size, centre=True, fill=EMPTY_TEXT
                )
            caption = " · ".join(label for label in (row, column) if label)
            _draw_label(draw, (x, y + cell_size + pad // 4), caption, font, cell_size, centre=True)
    return sheet


def _check_layout(cells, rows: list[str], columns: list[str], cell_size: int) -> None:
    if not rows or not columns:
        raise ValueError("a contact sheet needs at least one row and one column")
    if len(rows) > MAX_ROWS or len(columns) > MAX_COLUMNS:
        raise ValueError(
            f"a contact sheet holds at most {MAX_ROWS} rows and {MAX_COLUMNS} columns, "
            f"got {len(rows)} x {len(columns)}; split the sweep into several sheets"
        )
    if not MIN_CELL_SIZE <= cell_size <= MAX_CELL_SIZE:
        raise ValueError(
            f"cell_size must be between {MIN_CELL_SIZE} and {MAX_CELL_SIZE} pixels, got {cell_size}"
        )
    stray = set(cells) - {(row, column) for row in rows for column in columns}
    if stray:
        raise ValueError(f"cells outside the listed rows and columns: {sorted(stray)[:5]}")


def _fit_in_cell(image: Image.Image, cell_size: int) -> Image.Image:
    """`image` in RGB (transparency over white), its longer side scaled to `cell_size`."""
    if image.mode != "RGB":
        if "A" in image.getbands() or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, BACKGROUND)
            image.paste(rgba, mask=rgba.getchannel("A"))
        else:
            image = image.convert("RGB")
    scale = cell_size / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def _line_height(font: Font) -> int:
    return font.getbbox("ÁÉgjy|")[3] + 2


def _one_line(text: str, font: Font) -> str:
    """`text` on one line: control characters become spaces, whitespace collapsed."""
    text = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)
    text = " ".join(text.split())
    if not isinstance(font, ImageFont.FreeTypeFont):
        # Pillow's bitmap fallback (no FreeType) only encodes Latin-1.
        text = text.encode("latin-1", "replace").decode("latin-1")
    return text


def _shorten(text: str, font: Font, width: float) -> str:
    """`text`, cut and ended with an ellipsis where it is wider than `width` pixels."""
    if font.getlength(text) <= width:
        return text
    ellipsis = ELLIPSIS if isinstance(font, ImageFont.FreeTypeFont) else "..."
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if font.getlength(text[:mid].rstrip() + ellipsis) <= width:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0 and font.getlength(ellipsis) > width:
        return ""
    return text[:lo].rstrip() + ellipsis


def _draw_label(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    text: str,
    font: Font,
    width: int,
    centre: bool = False,
    fill: tuple[int, int, int] = TEXT,
) -> None:
    text = _shorten(_one_line(text, font), font, width)
    if not text:
        return
    x, y = xy
    if centre:
        x += max(0, round((width - font.getlength(text)) / 2))
    draw.text((x, y), text, font=font, fill=fill)
