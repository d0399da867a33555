"""What the doctor asks of each precision against the CPU fp32 reference."""

import pytest

from fastimg.engine_folder.manifest import load_manifest
from fastimg.workflows import doctor


def test_bf16_and_fp16_must_stay_close_to_fp32(tiny):
    manifest = load_manifest(tiny[1])
    assert doctor.min_psnr(manifest, "bf16") == 35.0
    assert doctor.min_psnr(manifest, "fp16") == 35.0
    assert doctor.min_psnr(manifest, "fp32") == 40.0


def test_int8_is_held_to_the_error_its_export_recorded(tiny_int8):
    pytest.importorskip("openvino")
    manifest = load_manifest(tiny_int8[1])
    recorded = manifest.data["int8"]["image"]["psnr_db"]  # the mix --precision int8 runs
    assert doctor.min_psnr(manifest, "int8") == pytest.approx(recorded - 6.02)


def test_int8_of_a_folder_with_an_int8_unet_only_is_held_to_the_unets_record(tiny_int8):
    from fastimg.engine_folder.manifest import Manifest

    pytest.importorskip("openvino")
    data = {k: v for k, v in load_manifest(tiny_int8[1]).data.items() if k != "int8"}
    manifest = Manifest.from_data(tiny_int8[1], data)
    recorded = manifest.variant("unet", "openvino-int8")["quantization"]["image"]["psnr_db"]
    assert doctor.min_psnr(manifest, "int8") == pytest.approx(recorded - 6.02)


def test_int8_of_a_folder_exported_before_the_record_needs_a_working_quantization(tiny):
    assert doctor.min_psnr(load_manifest(tiny[1]), "int8") == doctor.INT8_UNRECORDED_DB
