"""The kernel check measures every fast path OpenVINO compiles here against fp32."""

import json

import pytest

pytest.importorskip("openvino")


def test_it_measures_each_fast_path_against_fp32_and_static_shapes_against_dynamic(
    tiny_int8, tmp_path
):
    import shutil

    from fastimg_bench import kernel_check

    engines = shutil.copytree(tiny_int8[1], tmp_path / "engines")  # (OpenVINO caches in it)
    out = tmp_path / "kernels.json"
    assert kernel_check.main([str(engines), "--threads", "2", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"int8 dynamic", "int8 static", "fp32 static"} <= set(result["against_fp32"])
    assert result["recorded_int8_psnr_db"] > 0 and result["job"]["size"] > 0
    # The export recorded int8 on this CPU: the same images again.
    measured = result["against_fp32"]["int8 dynamic"]["psnr_db"]
    assert measured == pytest.approx(result["recorded_int8_psnr_db"], abs=0.5)
    assert result["static_against_dynamic"]["fp32"]["max_difference"] <= 1
