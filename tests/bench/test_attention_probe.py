"""The attention probe times both forms of one attention call and checks they agree."""

import json

import pytest

pytest.importorskip("openvino")


def test_both_forms_are_timed_per_head_size_and_compute_the_same(tmp_path):
    from fastimg_bench import attention_probe

    out = tmp_path / "attention.json"
    args = ["--tokens", "64", "--heads", "2", "--head-dims", "8,16", "--precision", "f32"]
    assert attention_probe.main([*args, "--repeats", "2", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["form"], r["head_dim"]) for r in result["rows"]] == [
        ("exported", 8), ("sdpa", 8), ("exported", 16), ("sdpa", 16)
    ]  # fmt: skip
    for row in result["rows"]:
        assert row["median_seconds"] > 0 and row["kernels"]
        assert row["gflop"] == pytest.approx(4 * 2 * 64 * 64 * row["head_dim"] / 1e9, rel=1e-3)
    sdpa = [r for r in result["rows"] if r["form"] == "sdpa"]
    assert all(r["max_relative_difference_to_exported"] < 1e-4 for r in sdpa)  # f32: same math


def test_an_openvino_property_reaches_every_compile_and_the_record(tmp_path):
    from fastimg_bench import attention_probe

    out = tmp_path / "attention.json"
    args = ["--tokens", "32", "--heads", "1", "--head-dims", "8", "--precision", "f32"]
    argv = [*args, "--repeats", "1", "--ov-config", "INFERENCE_NUM_THREADS=1", "-o", str(out)]
    assert attention_probe.main(argv) == 0
    assert json.loads(out.read_text())["ov_config"] == {"INFERENCE_NUM_THREADS": "1"}
