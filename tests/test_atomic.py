import os
import stat

import pytest

from fastimg.atomic import current_umask, make_staging_folder, write_atomically


@pytest.fixture
def umask():
    """Run with a given umask, restored after."""
    saved = []

    def set_mask(mask: int) -> None:
        saved.append(os.umask(mask))

    yield set_mask
    if saved:
        os.umask(saved[0])


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_new_files_and_folders_get_the_umasks_mode_not_a_private_one(
    tmp_path, umask, mask, file_mode, dir_mode
):
    umask(mask)
    assert current_umask() == mask
    written = write_atomically(tmp_path / "out.png", lambda f: f.write(b"png"))
    assert mode(written) == file_mode
    assert mode(make_staging_folder(tmp_path, ".engines.partial-")) == dir_mode


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "manifest.json"
    path.write_text("{}")
    path.chmod(0o664)
    write_atomically(path, lambda f: f.write(b'{"new": 1}'))
    assert mode(path) == 0o664 and path.read_text() == '{"new": 1}'


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomically(path, fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.png"]
