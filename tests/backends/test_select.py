import pytest

from fastimg.backends import select
from fastimg.errors import EngineError, InputError, MissingDependencyError
from tests.manifests import exported_in


@pytest.fixture
def only(monkeypatch):
    """Pretend only the named backend packages are installed, on a CPU with or without bf16."""

    def pretend(*packages, bf16=True, gpu=False):
        monkeypatch.setattr(select, "installed", lambda name: name in packages)
        monkeypatch.setattr(select, "cpu_supports_bf16", lambda: bf16)
        monkeypatch.setattr(select, "gpu_present", lambda: gpu)

    return pretend


@pytest.fixture
def ready(monkeypatch):
    """Pretend exactly the named backends can run (the others say why not)."""

    def pretend(*backends, bf16=True):
        monkeypatch.setattr(
            select, "unavailable", lambda b, *args: None if b in backends else "not here"
        )
        monkeypatch.setattr(select, "cpu_supports_bf16", lambda: bf16)
        monkeypatch.setattr(select, "gpu_present", lambda: True)

    return pretend


def test_auto_prefers_tensorrt_then_onnxruntime_cuda_then_the_cpu(ready):
    ready("tensorrt", "onnxruntime-cuda", "openvino", "onnxruntime")
    assert select.resolve() == ("tensorrt", "fp16")
    ready("onnxruntime-cuda", "openvino", "onnxruntime")
    assert select.resolve() == ("onnxruntime-cuda", "fp32")
    ready("openvino", "onnxruntime")
    assert select.resolve() == ("openvino", "bf16")


def test_auto_says_why_it_passed_over_the_gpu(ready, caplog):
    import logging

    logger = logging.getLogger("fastimg")
    logger.addHandler(caplog.handler)
    try:
        ready("onnxruntime")
        assert select.resolve() == ("onnxruntime", "fp32")
    finally:
        logger.removeHandler(caplog.handler)
    assert "tensorrt: not here" in caplog.text and "onnxruntime-cuda: not here" in caplog.text


def test_auto_with_a_precision_picks_a_backend_that_runs_it(ready):
    ready("tensorrt", "openvino", "onnxruntime")
    assert select.resolve("auto", "bf16") == ("openvino", "bf16")
    assert select.resolve("auto", "fp16") == ("tensorrt", "fp16")
    ready("openvino")
    with pytest.raises(InputError, match="no backend here runs fp16"):
        select.resolve("auto", "fp16")


def test_gpu_backends_without_cupy_or_gpu_say_what_is_missing(only):
    only("onnxruntime", "tensorrt")
    with pytest.raises(MissingDependencyError, match=r"CuPy.*fastimg\[gpu\]"):
        select.resolve("tensorrt")
    only("onnxruntime", "cupy", "tensorrt", gpu=False)
    with pytest.raises(EngineError, match="no CUDA GPU is visible"):
        select.resolve("tensorrt")
    only("onnxruntime", "cupy", gpu=True)
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        select.resolve("tensorrt")


def test_auto_prefers_openvino_in_bf16_where_the_cpu_has_it(only):
    only("onnxruntime", "openvino", bf16=True)
    assert select.resolve() == ("openvino", "bf16")
    only("onnxruntime", "openvino", bf16=False)
    assert select.resolve() == ("openvino", "fp32")


def with_winograd(convolutions: int):
    from fastimg.engine_folder.manifest import Manifest
    from tests.manifests import complete

    variant = {"path": "unet/model.ort.onnx"}
    if convolutions:
        variant["winograd"] = {"convolutions": convolutions, "extra_bytes": 1}
    unet = {"path": "unet/model.onnx", "variants": {"onnxruntime": variant}}
    return Manifest.from_data(None, complete({"unet": unet}))


def test_auto_prefers_onnxruntime_for_fp32_where_its_graphs_have_winograd_convolutions(only):
    faster, plain = with_winograd(18), with_winograd(0)
    only("onnxruntime", "openvino", bf16=False)
    assert select.resolve(manifest=faster) == ("onnxruntime", "fp32")
    assert select.resolve(manifest=plain) == ("openvino", "fp32")
    assert select.resolve("auto", "fp32", manifest=faster) == ("onnxruntime", "fp32")
    assert select.resolve("openvino", "auto", manifest=faster) == ("openvino", "fp32")
    only("onnxruntime", "openvino", bf16=True)  # bf16 on OpenVINO stays the CPU's default
    assert select.resolve(manifest=faster) == ("openvino", "bf16")
    assert select.resolve("auto", "fp32", manifest=faster) == ("onnxruntime", "fp32")
    assert select.resolve("auto", "bf16", manifest=faster) == ("openvino", "bf16")


def test_auto_falls_back_to_onnxruntime_fp32(only):
    only("onnxruntime")
    assert select.resolve() == ("onnxruntime", "fp32")
    assert select.resolve("auto", "fp32") == ("onnxruntime", "fp32")


def test_explicit_choices_are_kept(only):
    only("onnxruntime", "openvino")
    assert select.resolve("onnxruntime", "auto") == ("onnxruntime", "fp32")
    assert select.resolve("openvino", "fp32") == ("openvino", "fp32")


def test_missing_backend_names_the_extra(only):
    only("onnxruntime")
    with pytest.raises(MissingDependencyError, match=r"fastimg\[openvino\]"):
        select.resolve("openvino")


def test_bf16_needs_openvino(only):
    only("onnxruntime", "openvino")
    with pytest.raises(InputError, match="--backend openvino"):
        select.resolve("onnxruntime", "bf16")
    only("onnxruntime")
    with pytest.raises(InputError, match="no backend here runs bf16"):
        select.resolve("auto", "bf16")


@pytest.mark.parametrize("backend,precision", [("tensorflow", "auto"), ("auto", "int4")])
def test_unknown_names_are_refused(backend, precision):
    with pytest.raises(InputError, match="choose one of"):
        select.resolve(backend, precision)


def test_bf16_detection_agrees_with_the_cpu_flags():
    pytest.importorskip("openvino")
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    if "amx_bf16" in flags or "avx512_bf16" in flags:
        assert select.cpu_supports_bf16()
    elif "avx512f" not in flags:
        assert not select.cpu_supports_bf16()


def test_a_cuda_device_that_is_not_there_is_named_with_those_that_are(only, monkeypatch):
    import sys

    from tests.test_gpu import fake_cupy

    only("onnxruntime", "cupy", "tensorrt", gpu=True)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy([("NVIDIA L4", 8, 9)]))
    with pytest.raises(EngineError, match=r"no CUDA device 5.*sees 1"):
        select.resolve("tensorrt", device=5)


def test_onnxruntime_tensorrt_without_tensorrts_libraries_says_so(only, monkeypatch):
    from fastimg.backends import onnxruntime_gpu

    only("onnxruntime", "cupy", gpu=True)
    monkeypatch.setattr(
        onnxruntime_gpu, "cuda_providers", lambda: ["TensorrtExecutionProvider", "CUDA"]
    )
    monkeypatch.setattr(onnxruntime_gpu, "tensorrt_libraries_found", lambda: False)
    assert "libnvinfer.so.10" in select.unavailable("onnxruntime-tensorrt")
    monkeypatch.setattr(onnxruntime_gpu, "tensorrt_libraries_found", lambda: True)
    assert select.unavailable("onnxruntime-tensorrt") is None


def test_onnxruntime_cuda_runs_fp16_where_the_folder_has_fp16_graphs(
    only, monkeypatch, tiny, tiny_cuda_fp16
):
    from fastimg.backends import onnxruntime_gpu
    from fastimg.engine_folder.manifest import load_manifest

    only("onnxruntime", "cupy", gpu=True)
    monkeypatch.setattr(onnxruntime_gpu, "cuda_providers", lambda: ["CUDAExecutionProvider"])
    with_fp16, without = load_manifest(tiny_cuda_fp16[1]), load_manifest(tiny[1])
    # By default fp16 where export --cuda-fp16 wrote its graphs, fp32 where it did not.
    assert select.resolve("onnxruntime-cuda", manifest=with_fp16) == ("onnxruntime-cuda", "fp16")
    assert select.resolve("onnxruntime-cuda", manifest=without) == ("onnxruntime-cuda", "fp32")
    assert select.resolve("onnxruntime-cuda", "fp32", with_fp16) == ("onnxruntime-cuda", "fp32")
    with pytest.raises(EngineError, match=r"no fp16 graphs for the GPU.*--cuda-fp16"):
        select.resolve("onnxruntime-cuda", "fp16", without)
    # auto asked for fp16 finds it on ONNX Runtime CUDA when TensorRT is not there.
    assert select.resolve("auto", "fp16", with_fp16) == ("onnxruntime-cuda", "fp16")
    with pytest.raises(InputError, match="onnxruntime-cuda: these engines have no fp16 graphs"):
        select.resolve("auto", "fp16", without)
    with pytest.raises(EngineError, match=r"add --backend onnxruntime-cuda \(or tensorrt\)"):
        select.resolve("onnxruntime", "fp16", without)


def test_a_folder_exported_in_fp16_runs_and_is_named_fp16_on_onnxruntime(only, monkeypatch):
    from fastimg.backends import onnxruntime_gpu

    half, full = exported_in("fp16"), exported_in("fp32")
    only("onnxruntime")
    assert select.resolve("onnxruntime", manifest=half) == ("onnxruntime", "fp16")
    assert select.resolve(manifest=half) == ("onnxruntime", "fp16")
    assert select.resolve("auto", "fp16", half) == ("onnxruntime", "fp16")
    assert select.resolve(manifest=full) == ("onnxruntime", "fp32")
    # It has no fp32 graphs: fp32 is refused with the fix, never run under fp32's name.
    for backend in ("onnxruntime", "auto"):
        with pytest.raises((EngineError, InputError), match=r"exported in fp16.*no fp32 graphs"):
            select.resolve(backend, "fp32", half)
    with pytest.raises(EngineError, match=r"fp16 on the CPU runs only engines exported in fp16"):
        select.resolve("onnxruntime", "fp16", full)
    only("onnxruntime", "cupy", gpu=True)
    monkeypatch.setattr(onnxruntime_gpu, "cuda_providers", lambda: ["CUDAExecutionProvider"])
    assert select.resolve("onnxruntime-cuda", manifest=half) == ("onnxruntime-cuda", "fp16")
    with pytest.raises(EngineError, match=r"exported in fp16.*no fp32 graphs"):
        select.resolve("onnxruntime-cuda", "fp32", half)


def test_onnxruntimes_tensorrt_provider_builds_fp16_from_fp32_graphs(only, monkeypatch):
    from fastimg.backends import onnxruntime_gpu

    only("onnxruntime", "cupy", gpu=True)
    monkeypatch.setattr(onnxruntime_gpu, "cuda_providers", lambda: ["TensorrtExecutionProvider"])
    monkeypatch.setattr(onnxruntime_gpu, "tensorrt_libraries_found", lambda: True)
    full = exported_in("fp32")  # no --cuda-fp16 graphs, which TensorRT does not need
    assert select.unavailable("onnxruntime-tensorrt", full, precision="fp16") is None
    assert select.resolve("onnxruntime-tensorrt", "fp16", full) == ("onnxruntime-tensorrt", "fp16")


def test_fp16_on_the_cpu_is_never_auto_s_choice_without_a_folder_exported_in_fp16(ready):
    ready("openvino", "onnxruntime")
    with pytest.raises(InputError, match="no backend here runs fp16"):
        select.resolve("auto", "fp16")
    with pytest.raises(InputError, match="no backend here runs fp16"):
        select.resolve("auto", "fp16", exported_in("fp32"))
    assert select.resolve("auto", "fp16", exported_in("fp16")) == ("onnxruntime", "fp16")
