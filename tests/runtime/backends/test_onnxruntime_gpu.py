"""The ONNX Runtime GPU session refuses the CPU fallback and preloads CUDA once (fake ort)."""

import sys
import types

import pytest

from fastimg.backends import onnxruntime_gpu
from fastimg.errors import EngineError


@pytest.fixture
def fake_ort(monkeypatch):
    """An onnxruntime module whose sessions land on the providers `landed` names."""
    ort = types.SimpleNamespace(preloads=0, landed=["CUDAExecutionProvider"])

    def preload_dlls():
        ort.preloads += 1

    class Session:
        def __init__(self, path, providers):
            self.asked = providers

        def get_providers(self):
            return ort.landed

        def get_inputs(self):
            return []

        def get_outputs(self):
            return []

    ort.preload_dlls = preload_dlls
    ort.InferenceSession = Session
    ort.get_available_providers = lambda: [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    monkeypatch.setattr(onnxruntime_gpu, "require", lambda name, extra: types.SimpleNamespace())
    monkeypatch.setattr(onnxruntime_gpu, "_dlls_loaded", False)
    return ort


def test_a_session_on_the_gpu_preloads_the_cuda_libraries_once(fake_ort, tmp_path):
    onnxruntime_gpu.OnnxRuntimeCudaSession(tmp_path / "unet.onnx")
    onnxruntime_gpu.OnnxRuntimeCudaSession(tmp_path / "vae.onnx")
    assert fake_ort.preloads == 1


def test_a_session_that_fell_back_to_the_cpu_is_refused_naming_the_fix(fake_ort, tmp_path):
    fake_ort.landed = ["CPUExecutionProvider"]
    with pytest.raises(EngineError, match=r"fell back to the CPU.*onnxruntime-gpu\[cuda,cudnn\]"):
        onnxruntime_gpu.OnnxRuntimeCudaSession(tmp_path / "unet.onnx")


def test_an_onnxruntime_without_preload_dlls_still_opens_sessions(fake_ort, tmp_path):
    del fake_ort.preload_dlls
    session = onnxruntime_gpu.OnnxRuntimeCudaSession(tmp_path / "unet.onnx")
    assert session.input_names == [] and session.device_id == 0


def test_the_tensorrt_provider_landing_on_cuda_alone_is_refused_naming_tensorrt(fake_ort, tmp_path):
    fake_ort.landed = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(EngineError, match=r"TensorRT provider.*libnvinfer.*onnxruntime-cuda"):
        onnxruntime_gpu.OnnxRuntimeCudaSession(tmp_path / "unet.onnx", provider="tensorrt")


def test_tensorrt_libraries_count_as_found_from_the_wheel_or_the_loader(monkeypatch):
    import ctypes
    import importlib.util

    def no_library(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_library)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert onnxruntime_gpu.tensorrt_libraries_found() is False
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())
    assert onnxruntime_gpu.tensorrt_libraries_found() is True
    monkeypatch.setattr(ctypes, "CDLL", no_library)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert onnxruntime_gpu.tensorrt_libraries_found() is True


def test_onnxruntime_on_cuda_runs_the_standard_graphs_the_cpu_its_fused_ones():
    from fastimg.backends import INT8_VARIANT, graph_variant

    assert graph_variant("onnxruntime-cuda", "fp32") == "onnxruntime-cuda"  # no such variant
    assert graph_variant("onnxruntime", "fp32") == "onnxruntime"
    assert graph_variant("openvino", "int8") == INT8_VARIANT
    assert graph_variant("tensorrt", "fp16") == "tensorrt"
