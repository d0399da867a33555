import sys
import types

import pytest

from fastimg import gpu
from fastimg.errors import EngineError, MissingDependencyError


def test_nvidia_smi_output_is_parsed():
    out = "0, NVIDIA H100 80GB HBM3, 9.0, 81559, 570.86.15\n1, NVIDIA L4, 8.9, [N/A], 570.86.15\n"
    found = gpu.parse_nvidia_smi(out)
    assert [g.name for g in found] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert found[0].compute_capability == "9.0" and found[0].memory_mib == 81559
    assert found[1].memory_mib == 0 and found[1].driver == "570.86.15"
    assert gpu.parse_nvidia_smi("No devices were found\n") == []


def fake_cupy(devices: list[tuple[str, int, int]], current: int = 0):
    """A `cupy` whose CUDA runtime sees `devices` (name, major, minor), as after
    CUDA_VISIBLE_DEVICES, with `current` the current device."""
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: len(devices),
        getDevice=lambda: current,
        getDeviceProperties=lambda i: {
            "name": devices[i][0].encode(),
            "major": devices[i][1],
            "minor": devices[i][2],
        },
    )
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


@pytest.fixture
def visible(monkeypatch):
    """Install a fake CuPy seeing the given devices; nvidia-smi lists a different machine."""

    def install(devices, current=0):
        monkeypatch.setitem(sys.modules, "cupy", fake_cupy(devices, current))
        smi = gpu.parse_nvidia_smi("0, NVIDIA T4, 7.5, 15360, 570\n1, NVIDIA L4, 8.9, 23034, 570\n")
        monkeypatch.setattr(gpu, "gpus", lambda: smi)

    return install


def test_the_capability_is_the_cuda_runtimes_current_device_not_nvidia_smis_first(visible):
    # CUDA_VISIBLE_DEVICES=1 on a T4 + L4 machine: the runtime sees only the L4, as device 0.
    visible([("NVIDIA L4", 8, 9)])
    assert gpu.compute_capability() == "8.9"
    visible([("NVIDIA T4", 7, 5), ("NVIDIA H100", 9, 0)], current=1)
    assert gpu.device_properties() == ("NVIDIA H100", "9.0")
    assert gpu.compute_capability(0) == "7.5"


def test_a_device_that_is_not_there_is_refused_naming_those_that_are(visible):
    visible([("NVIDIA L4", 8, 9), ("NVIDIA L4", 8, 9)])
    with pytest.raises(EngineError, match=r"no CUDA device 5.*sees 2 \(0 to 1"):
        gpu.compute_capability(5)


def test_without_a_gpu_the_capability_error_points_to_the_cpu_backends(visible):
    visible([])
    with pytest.raises(EngineError, match="--backend openvino or onnxruntime"):
        gpu.compute_capability()


def test_without_cupy_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(MissingDependencyError, match=r"fastimg\[gpu\]"):
        gpu.compute_capability()
