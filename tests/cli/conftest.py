import pytest
from click.testing import CliRunner


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def picture(tmp_path, photo):
    """The shared test photo saved as in.png."""
    path = tmp_path / "in.png"
    photo.save(path)
    return path
