"""fastimg_bench.rewrite_probe: a graph for static or dynamic shapes as read against rewritten."""

import json

import pytest

pytest.importorskip("openvino")

from fastimg_bench import rewrite_probe  # noqa: E402


def test_the_probe_times_both_graphs_in_turn_and_compares_their_outputs(tiny, tmp_path, capsys):
    out = tmp_path / "probe.json"
    args = [str(tiny[1]), "--size", "64", "--precision", "fp32", "--repeats", "2", "-o", str(out)]
    assert rewrite_probe.main(args) == 0
    record = json.loads(out.read_text())
    assert record["command"].endswith(" ".join(args)) and record["machine"]["cores"] >= 1
    (row,) = record["rows"]
    assert row["component"] == "unet" and row["graph"].startswith("unet/")
    assert all(len(row["seconds"][label]) == 2 for label in ("as read", "rewritten"))
    assert row["speed_ratio"] > 0
    assert row["relative_rms_difference"] < 1e-5  # in fp32 the same function, to rounding
    assert set(row["relative_rms_error_vs_fp32"]) == {"as read", "rewritten"}
    assert max(row["relative_rms_error_vs_fp32"].values()) < 1e-5
    assert "unet fp32 static 64: as read" in capsys.readouterr().out


def _probed(engines, out, *options: str) -> dict:
    """The probe's record of `engines` at 64 px, 2 repeats, with `options`."""
    assert rewrite_probe.main([str(engines), "--size", "64", "--repeats", "2", *options,
                               "-o", str(out)]) == 0  # fmt: skip
    return json.loads(out.read_text())


def test_the_upsamplings_are_probed_with_the_projections_split_on_both_sides(tiny, tmp_path):
    record = _probed(tiny[1], tmp_path / "probe.json", "--component", "vae_decoder",
                     "--component", "unet", "--precision", "bf16",
                     "--rewrite", "upsampled-convolutions")  # fmt: skip
    assert record["rewrite"] == "upsampled-convolutions"
    assert [row["component"] for row in record["rows"]] == ["vae_decoder", "unet"]
    for row in record["rows"]:
        errors = row["relative_rms_error_vs_fp32"]
        # bf16 rounds otherwise once per phase's summed kernel: no further from fp32 (a CPU
        # without bf16 compiles fp32: the rewrite then adds rounding only, under 1e-5)
        assert errors["rewritten"] < min(1.5 * errors["as read"] + 1e-5, 0.1)


def test_the_probe_compiles_the_graph_for_dynamic_shapes_where_asked(tiny, tmp_path, capsys):
    options = ["--precision", "fp32", "--rewrite", "upsampled-convolutions", "--shapes", "dynamic"]
    # at 72 px the UNet's skips are odd: its upsamplings' edges corrected
    record = _probed(tiny[1], tmp_path / "probe.json", "--component", "vae_decoder",
                     "--component", "unet", *options, "--size", "72")  # fmt: skip
    assert record["shapes"] == "dynamic"
    graphs = [row["graph"] for row in record["rows"]]
    assert graphs == ["vae_decoder/model.onnx", "unet/model.onnx"]
    # (a UNet's upsamplings, to its skips' sizes, run per phase cropped: the same function)
    assert all(row["relative_rms_difference"] < 1e-5 for row in record["rows"])
    assert "vae_decoder fp32 dynamic 72: as read" in capsys.readouterr().out


def test_an_int8_probe_for_dynamic_shapes_is_refused_before_any_work(tiny, capsys):
    with pytest.raises(SystemExit):
        rewrite_probe.main([str(tiny[1]), "--precision", "int8", "--shapes", "dynamic"])
    assert "--shapes dynamic probes float graphs" in capsys.readouterr().err


def test_a_graph_with_nothing_to_rewrite_is_refused_by_name(tiny):
    with pytest.raises(SystemExit, match="has nothing that --rewrite projection-slices rewrites"):
        rewrite_probe.main([str(tiny[1]), "--component", "vae_decoder", "--size", "64"])


def test_the_int8_probe_quantizes_the_graph_as_read_and_rewritten(tiny, tmp_path, capsys):
    pytest.importorskip("nncf")
    out = tmp_path / "probe.json"
    args = [str(tiny[1]), "--size", "64", "--precision", "int8", "--int8-method", "full",
            "--calibration-size", "64", "--calibration-calls", "2", "--repeats", "2",
            "-o", str(out)]  # fmt: skip
    assert rewrite_probe.main(args) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["graph"] == "unet/model.onnx"  # the graph the export quantizes
    assert row["int8_method"] == "full-int8"
    assert row["calibration"] == {"size": 64, "calls": 2}
    assert all(len(row["seconds"][label]) == 2 for label in ("as read", "rewritten"))
    assert 0 < row["relative_rms_difference"] < 0.3  # two quantizations: int8 rounding each
    assert "unet int8 static 64: as read" in capsys.readouterr().out


def test_the_int8_probe_quantizes_a_vae_decoder_as_the_export_does(tiny, tmp_path):
    pytest.importorskip("nncf")
    out = tmp_path / "probe.json"
    args = [str(tiny[1]), "--component", "vae_decoder", "--size", "64", "--precision", "int8",
            "--rewrite", "upsampled-convolutions", "--calibration-size", "64",
            "--calibration-calls", "2", "--repeats", "2", "-o", str(out)]  # fmt: skip
    assert rewrite_probe.main(args) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["graph"] == "vae_decoder/model.onnx" and row["int8_method"] == "full-int8"
    assert 0 < row["relative_rms_difference"] < 0.5  # two quantizations: int8 rounding each
    assert all(0 < error < 0.5 for error in row["relative_rms_error_vs_fp32"].values())


def test_the_probe_pads_attention_heads_over_the_graph_the_runtime_runs(tiny, tmp_path):
    out = tmp_path / "probe.json"
    args = [str(tiny[1]), "--size", "64", "--precision", "fp32", "--rewrite", "attention-heads",
            "--head-width", "16", "--repeats", "2", "-o", str(out)]  # fmt: skip
    assert rewrite_probe.main(args) == 0
    record = json.loads(out.read_text())
    assert record["rewrite"] == "attention-heads" and record["head_width"] == 16
    (row,) = record["rows"]
    assert row["relative_rms_difference"] < 1e-5  # zeros added to both sides of each product


def test_padding_heads_of_an_int8_graph_is_refused_before_any_work(tiny, capsys):
    with pytest.raises(SystemExit) as exit_info:
        rewrite_probe.main([str(tiny[1]), "--precision", "int8", "--rewrite", "attention-heads"])
    assert exit_info.value.code == 2
    assert "--rewrite attention-heads rewrites float graphs" in capsys.readouterr().err
