"""The export's memory figure: what the process holds, apart from the files it maps."""

import mmap
import sys
import threading
import time

import numpy as np
import pytest

from fastimg_export import memory_watch
from fastimg_export.memory_watch import PeakWatch, anonymous_bytes, peak_resident_bytes

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@linux
def test_the_peak_counts_memory_held_in_the_block_but_not_a_mapped_file(tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\1" * (256 * 2**20))
    before = anonymous_bytes()
    with PeakWatch(interval=0.02) as watch:
        sampled = threading.Event()
        record = watch._record

        def record_and_say():
            record()
            sampled.set()

        def sample_taken_from_now_on():
            for _ in range(2):  # the second sample began after this call: no race with load
                sampled.clear()
                assert sampled.wait(30)

        watch._record = record_and_say
        with open(weights, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            assert sum(m[i] for i in range(0, len(m), 4096)) == len(m) // 4096  # all touched
            sample_taken_from_now_on()
        held = np.ones(200 * 2**20, dtype=np.uint8)  # 200 MiB of the process's own
        sample_taken_from_now_on()
        del held
    assert watch.peak >= before + 190 * 2**20
    assert watch.peak < before + 400 * 2**20  # the 256 MiB mapped file is not in it
    assert peak_resident_bytes() >= watch.peak
    assert "GiB held by the process (sampled)" in watch.describe()


def test_without_proc_only_the_resident_peak_is_told(monkeypatch, tmp_path):
    monkeypatch.setattr(memory_watch, "STATUS", tmp_path / "absent")
    assert anonymous_bytes() is None
    with PeakWatch(interval=0.01) as watch:
        time.sleep(0.03)
    assert watch.peak is None
    assert watch.describe().endswith("GiB resident with mapped files")
    assert "held" not in watch.describe()
