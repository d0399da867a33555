"""The export's collections skip the libraries' objects and still free what the export made."""

import gc
import sys
import weakref

import pytest

from fastimg_export.heap import libraries_frozen

pytest.importorskip("torch")


class _Cycle:
    """An object in a reference cycle: only the collector frees it."""

    def __init__(self):
        self.me = self


def test_the_libraries_are_imported_and_left_out_of_every_pass_until_the_block_ends():
    before = _Cycle()
    with libraries_frozen():
        assert "torch" in sys.modules and "diffusers" in sys.modules
        assert gc.get_freeze_count() > 100_000  # (torch and diffusers alone: half a million)
        gone = weakref.ref(before)
        del before
        gc.collect()
        assert gone() is not None  # frozen: kept until the block ends
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None


def test_what_the_block_makes_is_collected_as_before():
    pytest.importorskip("nncf")
    with libraries_frozen(int8=True):
        assert "openvino" in sys.modules and "nncf" in sys.modules
        made = _Cycle()
        gone = weakref.ref(made)
        del made
        gc.collect()
        assert gone() is None


def test_a_block_that_raises_thaws_the_heap():
    with pytest.raises(RuntimeError), libraries_frozen():
        raise RuntimeError("the export failed")
    assert gc.get_freeze_count() == 0
