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


def test_onnxruntime_on_cuda_runs_the_standard_graphs_the_cpu_its_fused_ones(tiny):
    from fastimg.backends import graph_variant
    from fastimg.engine_folder.manifest import load_manifest

    manifest = load_manifest(tiny[1])
    standard = manifest.folder / "unet" / "model.onnx"
    assert manifest.path("unet", graph_variant("onnxruntime-cuda", "fp32")) == standard
    assert manifest.path("unet", graph_variant("tensorrt", "fp16")) == standard
    fused = manifest.path("unet", graph_variant("onnxruntime", "fp32"))
    assert fused != standard and fused.is_file()  # attention fused (and Winograd) for the CPU


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_onnxruntime_cuda_in_fp16_loads_the_fp16_graphs(tiny_cuda_fp16, precision, monkeypatch):
    import fastimg.backends as backends
    from fastimg.engine_folder.manifest import load_manifest

    manifest = load_manifest(tiny_cuda_fp16[1])
    opened = {}

    class StandIn:
        def __init__(self, path, provider, device, shapes):
            opened[path.parent.name] = path.name

    monkeypatch.setattr(onnxruntime_gpu, "OnnxRuntimeCudaSession", StandIn)
    monkeypatch.setattr(backends, "_checked", lambda session, *args: session)
    names = manifest.component_names
    engines = backends.load_engines("onnxruntime-cuda", manifest, names, precision)
    wanted = "model.fp16.onnx" if precision == "fp16" else "model.onnx"
    assert opened == dict.fromkeys(manifest.component_names, wanted)
    assert engines.label == f"onnxruntime-cuda {precision}" and engines.device == "cuda"


@pytest.mark.parametrize("layout,vae_fp16", [("tiny_sdxl", False), ("tiny", True)])
def test_the_tensorrt_provider_keeps_a_vae_that_overflows_in_fp16_in_fp32(
    layout, vae_fp16, request, monkeypatch
):
    import fastimg.backends as backends
    from fastimg.engine_folder.manifest import load_manifest

    manifest = load_manifest(request.getfixturevalue(layout)[1])
    made, keyed = {}, {}

    class StandIn:
        def __init__(self, path, provider, cache_dir, device, fp16):
            made[path.parent.name] = fp16

    def cache(backend, manifest, name, precision, options, label=""):
        keyed[name] = dict(options)

    monkeypatch.setattr(onnxruntime_gpu, "OnnxRuntimeCudaSession", StandIn)
    monkeypatch.setattr(backends, "_checked", lambda session, *args: session)
    monkeypatch.setattr(backends, "compiled_cache", cache)
    backends.load_engines("onnxruntime-tensorrt", manifest, manifest.component_names, "fp16")
    for name in manifest.component_names:
        fp16 = vae_fp16 or not name.startswith("vae")
        assert made[name] is fp16
        assert ("fp16" in keyed[name]) is not fp16  # another engine, another cache key
