"""The int8 bench record: each component's figures as the export measured them."""

import json

import pytest

pytest.importorskip("nncf")


def test_the_record_lists_each_quantized_component_and_the_mix(tiny_int8, tmp_path):
    from fastimg_bench import int8_components

    out = tmp_path / "int8.json"
    command = "fastimg export tiny -o engines --int8"
    assert int8_components.main([str(tiny_int8[1]), "-o", str(out), "--command", command]) == 0
    record = json.loads(out.read_text())
    assert record["command"] == command and "cores available" in record["cpu"]
    assert set(record["components"]) == {"text_encoder", "unet", "vae_encoder", "vae_decoder"}
    for name, figures in record["components"].items():
        assert figures["speed"]["speed_ratio"] > 0 and 0 < figures["image_psnr_db_alone"] < 999
        assert figures["chosen"] is (name in record["mix"]["components"])
    (other,) = record["components"]["unet"]["other_methods"]  # --int8-unet auto: both measured
    assert {other["method"], record["components"]["unet"]["method"]} == {"hybrid-int8", "full-int8"}
    assert other["speed"]["speed_ratio"] > 0 and other["reason"].startswith("not kept")
