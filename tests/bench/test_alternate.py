"""The alternating bench: calls taken in turn, medians and ratios, the record."""

import json

import pytest

from fastimg_bench import alternate


def test_calls_are_taken_in_turn_after_each_ones_warm_up():
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    measured = alternate.alternate(calls, warmup=2, rounds=3, log=lambda line: None)
    assert order == ["a", "a", "b", "b", "a", "b", "a", "b", "a", "b"]
    assert [len(v) for v in measured["seconds"].values()] == [3, 3]
    assert len(measured["load_average_1min"]) == 3


def test_the_summary_gives_medians_and_speed_against_the_first():
    sides = alternate.summary({"ref": [2.0, 4.0, 3.0], "other": [1.0, 1.5, 9.0]})
    assert sides["ref"] == {"median_seconds": 3.0, "speed_vs_first": 1.0}
    assert sides["other"] == {"median_seconds": 1.5, "speed_vs_first": 2.0}


def test_the_command_records_both_backends_of_the_tiny_engines(tiny, tmp_path, capsys):
    out = tmp_path / "ab.json"
    pytest.importorskip("openvino")
    args = [str(tiny[1]), "--backend", "onnxruntime:fp32", "--backend", "openvino:fp32:static"]
    args += ["--size", "64", "--steps", "2", "--warmup", "1", "--rounds", "2", "-o", str(out)]
    assert alternate.main(args) == 0
    record = json.loads(out.read_text())
    assert set(record["sides"]) == {"onnxruntime:fp32:dynamic", "openvino:fp32:static"}
    assert record["command"].startswith("python -m fastimg_bench.alternate ")
    assert all(len(v) == 2 and min(v) > 0 for v in record["seconds"].values())
    assert record["sides"]["onnxruntime:fp32:dynamic"]["speed_vs_first"] == 1.0
    assert "round 2/2" in capsys.readouterr().out


def test_one_backend_is_refused(tiny, capsys):
    assert alternate.main([str(tiny[1]), "--backend", "onnxruntime:fp32"]) == 2
    assert "at least two" in capsys.readouterr().err
