"""The UNet's two int8 methods: both written at export, measured alone, one kept by its figures,
the other recorded; each runs under --precision int8 within its recorded error."""

import pytest
from click.testing import CliRunner

from fastimg.cli import cli
from fastimg.engine_folder.manifest import load_manifest

pytest.importorskip("nncf")
pytest.importorskip("openvino")

INT8 = "openvino-int8"
HYBRID, FULL = "hybrid-int8", "full-int8"


def _figures(speed_ratio: float, psnr_db: float) -> dict:
    return {"speed": {"speed_ratio": speed_ratio}, "image": {"psnr_db": psnr_db}}


@pytest.mark.parametrize(
    ("hybrid", "full", "kept", "why_kept", "why_not"),
    [
        ((1.10, 38.0), (1.60, 34.0), FULL, "the fastest at or above 30 dB", "slower than"),
        ((1.10, 38.0), (1.12, 34.0), HYBRID, "the fastest", "under 1.05x the speed of hybrid"),
        ((1.10, 38.0), (1.60, 24.0), HYBRID, "the fastest", "image under the 30 dB bound"),
        ((1.30, 38.0), (1.20, 34.0), HYBRID, "the fastest", "slower than hybrid-int8"),
        ((1.10, 28.0), (1.60, 31.0), FULL, "the fastest", "image under the 30 dB bound"),
        ((1.10, 28.0), (1.60, 24.0), HYBRID, "no method reached the 30 dB bound", "no method"),
    ],
)
def test_the_unet_keeps_the_faster_method_whose_image_is_close_enough(
    hybrid, full, kept, why_kept, why_not
):
    from fastimg_export.int8_unet_method import choose_method

    figures = {HYBRID: _figures(*hybrid), FULL: _figures(*full)}
    chosen, reasons = choose_method(figures, 30.0, 1.05)
    other = FULL if chosen == HYBRID else HYBRID
    assert chosen == kept
    assert reasons[chosen].startswith("kept") and why_kept in reasons[chosen]
    assert reasons[other].startswith("not kept") and why_not in reasons[other]
    for method, (speed, psnr) in ((HYBRID, hybrid), (FULL, full)):
        assert f"{method}: {speed:.2f}x" in reasons[method] and f"{psnr:.1f} dB" in reasons[method]


def test_auto_keeps_one_unet_graph_and_records_the_others_figures(tiny_int8):
    engines = tiny_int8[1]
    unet = load_manifest(engines).components["unet"]
    kept = unet["variants"][INT8]
    (other,) = unet["int8_alternatives"]
    assert {kept["quantization"]["method"], other["method"]} == {HYBRID, FULL}
    assert kept["path"] == "unet/model.int8.xml" and kept["quantization"]["chosen"] is True
    assert (
        "kept: the fastest" in kept["quantization"]["reason"]
        or "no method" in (kept["quantization"]["reason"])
    )
    assert other["chosen"] is False and other["reason"].startswith("not kept")
    assert 0 < other["image"]["psnr_db"] < 999 and other["speed"]["speed_ratio"] > 0
    # Timed in one run, in turn: the same default path's seconds under both ratios.
    ours, theirs = kept["quantization"]["speed"], other["speed"]
    assert ours["default_seconds"] == theirs["default_seconds"]
    assert ours["all_seconds"]["default"] == theirs["all_seconds"]["default"]
    assert ours["all_seconds"]["int8"] != theirs["all_seconds"]["int8"]
    assert other["error"]["layers"] > 10 and other["calibration"]["unet_calls"] > 0
    full = kept["quantization"] if kept["quantization"]["method"] == FULL else other
    assert full["smooth_quant_alpha"] == 0.95
    # the other's files are gone, from the folder and from the manifest
    on_disk = sorted(path.name for path in (engines / "unet").iterdir())
    assert on_disk == [
        "model.int8.bin", "model.int8.xml", "model.onnx", "model.ort.onnx", "model.ov.onnx"
    ]  # fmt: skip
    assert sorted(unet["files"]) == [f"unet/{name}" for name in on_disk]
    info = CliRunner().invoke(cli, ["info", str(engines)]).output
    assert "int8 (other) not kept" in " ".join(info.split())


def test_the_other_method_alone_runs_within_its_recorded_error(tiny_int8_other_unet):
    from fastimg.media.images import psnr

    from .test_quantize import rerun_check_job

    engines = tiny_int8_other_unet[1]
    unet = load_manifest(engines).components["unet"]
    assert "int8_alternatives" not in unet  # one method asked for: nothing else written
    assert load_manifest(engines).data["int8"]["components"] == ["unet"]
    ours, reference, record = rerun_check_job(engines)
    assert ours.info["fastimg:precision"] == "int8"
    assert psnr(ours, reference) == pytest.approx(record["psnr_db"], abs=0.5)
    assert record["psnr_db"] >= 25.0  # a broken graph gives noise, under 15 dB


def test_the_unet_method_is_an_export_option_and_bad_values_are_refused(tmp_path):
    help_text = CliRunner().invoke(cli, ["export", "--help"]).output
    assert "--int8-unet [auto|hybrid|full]" in help_text and "SmoothQuant" in help_text
    result = CliRunner().invoke(
        cli, ["export", "any-model", "-o", str(tmp_path / "e"), "--int8", "--int8-unet", "fast"]
    )
    assert result.exit_code == 2 and "'fast' is not one of 'auto', 'hybrid', 'full'" in (
        result.output
    )
    assert not (tmp_path / "e").exists()
