"""The TensorRT-RTX probe runs the graph on the CPU and records how far the plugin got; here,
without the plugin, that it is not installed (the GPU run is bench/gpu_stream.sh's)."""

import json

from fastimg_bench import trt_rtx_probe


def test_without_the_plugin_the_record_says_so_and_times_the_cpu(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(trt_rtx_probe, "PLUGIN", "no_such_plugin_module")
    out = tmp_path / "probe.json"
    assert (
        trt_rtx_probe.main([str(tiny[1] / "unet" / "model.onnx"), "--runs", "2", "-o", str(out)])
        == 0
    )
    record = json.loads(out.read_text())
    assert record["stage"] == "start" and "no_such_plugin_module is not installed" in record["why"]
    assert record["cpu_seconds"] > 0 and record["onnxruntime"]


def test_a_missing_graph_is_refused(tmp_path, capsys):
    assert trt_rtx_probe.main([str(tmp_path / "none.onnx")]) == 1
    assert "no ONNX graph at" in capsys.readouterr().err
