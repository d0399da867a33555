import logging
from pathlib import Path

import pytest

from fastimg.errors import InputError
from fastimg.workflows.sources import Source, collect_sources


def test_a_folder_gives_its_images_by_content_and_notes_the_rest(tmp_path, photo, caplog):
    photo.save(tmp_path / "b.png")
    photo.save(tmp_path / "a-no-suffix", format="JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.png").write_text("not an image either")
    (tmp_path / "sub").mkdir()
    photo.save(tmp_path / "sub" / "c.webp")
    with caplog.at_level(logging.INFO, logger="fastimg"):
        sources = collect_sources([tmp_path])
    assert sources == [Source(tmp_path / "a-no-suffix"), Source(tmp_path / "b.png")]
    assert "skipped 2 file(s)" in caplog.text and "notes.txt" in caplog.text


def test_recursive_folders_keep_their_subfolders_and_skip_hidden_ones(tmp_path, photo):
    for relative in ("a.png", "sub/a.png", "sub/deeper/b.png", ".cache/c.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        photo.save(tmp_path / relative)
    sources = collect_sources([tmp_path], recursive=True)
    assert sources == [
        Source(tmp_path / "a.png", Path(".")),
        Source(tmp_path / "sub" / "a.png", Path("sub")),
        Source(tmp_path / "sub" / "deeper" / "b.png", Path("sub/deeper")),
    ]


def test_files_are_taken_as_given_and_an_empty_folder_is_refused(tmp_path):
    assert collect_sources([tmp_path / "later.png"]) == [Source(tmp_path / "later.png")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no image files .*--recursive"):
        collect_sources([tmp_path / "empty"])
