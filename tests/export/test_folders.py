import os

import pytest

from fastimg.errors import InputError
from fastimg_export import folders
from tests.export.exporting import start_export


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    out = tmp_path / "engines"
    with folders.writer_lock(out) as lock:
        assert lock.exists()
        with pytest.raises(InputError, match="another fastimg process is writing"):
            with folders.writer_lock(out):
                pass
    assert not lock.exists()  # released and removed
    with folders.writer_lock(out):  # free again
        pass


def test_the_folder_is_exchanged_in_one_step_never_missing(tmp_path, monkeypatch):
    out, staging = tmp_path / "engines", tmp_path / ".engines.partial"
    for folder, text in ((out, "old"), (staging, "new")):
        folder.mkdir()
        (folder / "manifest.json").write_text(text)

    def no_rename(*args):
        raise AssertionError("a rename would leave a moment without the folder")

    monkeypatch.setattr(os, "rename", no_rename)
    (tmp_path / "probe-a").mkdir()
    (tmp_path / "probe-b").mkdir()
    if not folders.exchange(tmp_path / "probe-a", tmp_path / "probe-b"):
        pytest.skip("this system cannot exchange two paths atomically")
    folders.replace_folder(staging, out)
    assert (out / "manifest.json").read_text() == "new" and not staging.exists()


def test_without_an_atomic_exchange_the_old_folder_is_set_aside_and_restored_on_failure(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(folders, "exchange", lambda a, b: False)
    out, staging = tmp_path / "engines", tmp_path / ".engines.partial"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    staging.mkdir()
    (staging / "manifest.json").write_text("new")
    folders.replace_folder(staging, out)
    assert (out / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engines"]


def test_two_exports_to_one_new_folder_do_not_both_succeed(tiny, tmp_path):
    from fastimg_export.engine_writer import export_engines

    model, _ = tiny
    out = tmp_path / "engines"
    first = start_export(model, out, until="exporting")
    with pytest.raises(InputError, match="another fastimg process is writing"):
        export_engines(str(model), out, log=lambda m: None)
    assert first.wait(timeout=600) == 0
    assert (out / "manifest.json").is_file()
    with pytest.raises(InputError, match="already holds engines: pass --overwrite"):
        export_engines(str(model), out, log=lambda m: None)
