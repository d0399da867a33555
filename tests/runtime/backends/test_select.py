import pytest

from fastimg.backends import select
from fastimg.errors import InputError, MissingDependencyError


@pytest.fixture
def only(monkeypatch):
    """Pretend only the named backend packages are installed, on a CPU with or without bf16."""

    def pretend(*packages, bf16=True):
        monkeypatch.setattr(select, "installed", lambda name: name in packages)
        monkeypatch.setattr(select, "cpu_supports_bf16", lambda: bf16)

    return pretend


def test_auto_prefers_openvino_in_bf16_where_the_cpu_has_it(only):
    only("onnxruntime", "openvino", bf16=True)
    assert select.resolve() == ("openvino", "bf16")
    only("onnxruntime", "openvino", bf16=False)
    assert select.resolve() == ("openvino", "fp32")


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
    with pytest.raises(InputError, match="--backend openvino"):
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
