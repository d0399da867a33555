"""A call that gives its scratch memory back: which sessions give back and when, and the
process's memory after such a call on each CPU backend."""

import json
import subprocess
import sys

import pytest

from fastimg.backends.scratch import (
    give_back_after_the_call,
    giving_back_scratch,
    scratch_given_back,
)
from fastimg.backends.select import installed


class Session:
    def __init__(self, gave: list):
        self.gave = gave

    def give_back(self):
        self.gave.append(self)


def test_each_session_that_asked_gives_back_once_as_the_call_ends():
    gave = []
    first, second = Session(gave), Session(gave)
    give_back_after_the_call(first)  # outside a call that gives back: nothing to do
    with giving_back_scratch():
        assert scratch_given_back()
        for session in (first, second, first, first):  # e.g. the UNet, once per step
            give_back_after_the_call(session)
        assert gave == []  # not while the call runs
    assert gave == [first, second]
    assert not scratch_given_back()


def test_a_call_that_fails_gives_back_too_and_one_that_keeps_gives_nothing():
    gave = []
    with pytest.raises(KeyError), giving_back_scratch():
        give_back_after_the_call(Session(gave))
        raise KeyError("cancelled")
    assert len(gave) == 1
    with giving_back_scratch(False):
        assert not scratch_given_back()
        give_back_after_the_call(Session(gave))
    assert len(gave) == 1


# In a fresh process: the tiny engines' VAE decoder, used for a while on 64 px images, then
# one run of two 1024 px images that gives its memory back (as a call far larger than the
# ones before does in the pipeline), then 64 px again; the RSS before, at the peak and after.
RSS_SCRIPT = """
import json, sys
import numpy as np
from fastimg.backends.scratch import giving_back_scratch
from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.machine import return_freed_memory

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024

pipe = Img2ImgPipeline.from_engines(sys.argv[1], backend=sys.argv[2])
small = np.zeros((1, 4, 8, 8), np.float32)
for _ in range(5):
    pipe.decode(small)
return_freed_memory()
before = status("VmRSS")
with giving_back_scratch():
    pipe.decode(np.zeros((2, 4, 128, 128), np.float32))
return_freed_memory()
pipe.decode(small)  # (the engines still run)
return_freed_memory()
print(json.dumps({"before": before, "peak": status("VmHWM"), "after": status("VmRSS")}))
"""


@pytest.mark.parametrize(
    "backend",
    [
        "onnxruntime",
        pytest.param(
            "openvino",
            marks=pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]"),
        ),
    ],
)
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_the_memory_of_a_far_larger_run_goes_back_to_the_system(tiny, backend):
    result = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(tiny[1]), backend],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    mib = json.loads(result.stdout.splitlines()[-1])
    assert mib["peak"] > mib["before"] + 100  # the run was far larger than the ones before
    # What stays is within issue 25's 10 % (OpenVINO kept 30 % here before its model was
    # compiled anew; 1024 px x 8 images through the whole pipeline kept 2.5x).
    assert mib["after"] <= 1.10 * mib["before"], mib
