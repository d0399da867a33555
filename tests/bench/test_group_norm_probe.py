"""fastimg_bench.group_norm_probe: the exported graph against its GroupNorms as reductions."""

import json

import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnx")

from fastimg_bench import group_norm_probe  # noqa: E402


def test_the_probe_times_both_graphs_in_turn_and_compares_them_with_fp32(tiny, tmp_path, capsys):
    out = tmp_path / "probe.json"
    args = [str(tiny[1]), "--component", "vae_decoder", "--component", "unet", "--size", "64"]
    args += ["--precision", "fp32", "--precision", "bf16", "--repeats", "2", "-o", str(out)]
    assert group_norm_probe.main(args) == 0
    record = json.loads(out.read_text())
    assert record["command"].endswith(" ".join(args)) and record["machine"]["cores"] >= 1
    rows = {(r["component"], r["precision"]): r for r in record["rows"]}
    assert set(rows) == {(c, p) for c in ("vae_decoder", "unet") for p in ("fp32", "bf16")}
    for row in rows.values():
        assert all(len(row["seconds"][g]) == 2 for g in ("exported", "reductions"))
        assert row["speed_ratio"] > 0
    for component in ("vae_decoder", "unet"):  # in fp32 the same function, to rounding
        assert rows[component, "fp32"]["psnr_db_vs_exported_fp32"]["reductions"] >= 90
    assert not list(tiny[1].rglob("model.group-norm-probe.onnx"))  # its graphs removed
    assert "vae_decoder bf16 static 64: exported" in capsys.readouterr().out


def test_a_graph_without_group_norms_is_refused_by_name(tiny):
    with pytest.raises(SystemExit, match="has no GroupNorm to rewrite"):
        group_norm_probe.main([str(tiny[1]), "--component", "text_encoder", "--size", "64"])
