"""What the README's opening promises about the exact and the fast path holds."""

from pathlib import Path

from fastimg.backends import select
from fastimg.pipeline import describe

README = Path(__file__).parents[1] / "README.md"


def test_the_opening_names_the_exact_path_and_the_fast_one():
    opening = README.read_text().split("\n## ")[0]
    assert "**The exact path**, `--precision fp32`" in opening
    assert "**The fast path**" in opening and "every run says which one it took" in opening


def test_the_default_is_fast_where_the_cpu_has_bf16_and_exact_where_it_has_not(monkeypatch):
    monkeypatch.setattr(select, "installed", lambda name: name in ("onnxruntime", "openvino"))
    monkeypatch.setattr(select, "gpu_present", lambda: False)
    monkeypatch.setattr(select, "cpu_supports_bf16", lambda: True)
    backend, precision = select.resolve()
    assert (backend, precision) == ("openvino", "bf16")
    assert "the fast path" in describe(backend, precision)
    monkeypatch.setattr(select, "cpu_supports_bf16", lambda: False)
    backend, precision = select.resolve()
    assert (backend, precision) == ("openvino", "fp32")
    assert "the exact path, matching diffusers" in describe(backend, precision)
