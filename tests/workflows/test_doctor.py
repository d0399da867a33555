"""What the doctor asks of each precision against the CPU fp32 reference."""

import copy

import pytest

from fastimg.engine_folder.manifest import Manifest, load_manifest
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


def test_int8_with_static_shapes_is_held_to_the_mixs_record_for_them(tiny_int8):
    pytest.importorskip("openvino")
    manifest = load_manifest(tiny_int8[1])
    static = manifest.data["int8"]["static_image"]["psnr_db"]
    assert doctor.min_psnr(manifest, "int8", shapes="static") == pytest.approx(static - 6.02)
    data = copy.deepcopy(manifest.data)
    del data["int8"]["static_image"]  # a folder exported before the record: the mix's own
    before = Manifest.from_data(tiny_int8[1], data)
    recorded = data["int8"]["image"]["psnr_db"]
    assert doctor.min_psnr(before, "int8", shapes="static") == pytest.approx(recorded - 6.02)


def test_int8_runs_the_export_s_image_check_the_bound_it_is_held_to_was_measured_on(
    tiny_int8, tiny
):
    pytest.importorskip("openvino")
    manifest = load_manifest(tiny_int8[1])
    recorded = manifest.data["int8"]["image"]["job"]
    assert doctor.job_set(manifest, "int8") == doctor.INT8_RECORD
    assert doctor.job_set(manifest, "bf16") == doctor.STANDARD
    assert doctor.job_set(load_manifest(tiny[1]), "int8") == doctor.STANDARD  # no record
    (job,) = doctor.check_jobs(manifest, 128, 128, doctor.INT8_RECORD).values()
    assert job["image"].size == (recorded["size"], recorded["size"]) and "scheduler" not in job
    assert {key: job[key] for key in doctor.RECORDED_CALL} == {
        key: recorded[key] for key in doctor.RECORDED_CALL
    }


def test_the_doctors_int8_rows_reach_the_error_the_export_recorded(tiny_int8):
    """On the export's own job, on the CPU it was measured on, each int8 row gives the image
    its record says (the standard job's guided call took the tiny model to 29.7 dB, under the
    36.8 dB record's bound)."""
    pytest.importorskip("openvino")
    manifest = load_manifest(tiny_int8[1])
    rows = {r.get("shapes"): r for r in doctor.check(tiny_int8[1], log=lambda m: None)
            if r["backend"] == "openvino" and r["precision"] == "int8"}  # fmt: skip
    for shapes, record in (("dynamic", "image"), ("static", "static_image")):
        recorded = manifest.data["int8"][record]["psnr_db"]
        assert rows[shapes]["status"] == "ok", rows[shapes]["detail"]
        assert abs(rows[shapes]["psnr_db"] - recorded) < 1.5, (rows[shapes], recorded)


def test_int8_of_a_folder_with_an_int8_unet_only_is_held_to_the_unets_record(tiny_int8):
    from fastimg.engine_folder.manifest import Manifest

    pytest.importorskip("openvino")
    data = {k: v for k, v in load_manifest(tiny_int8[1]).data.items() if k != "int8"}
    manifest = Manifest.from_data(tiny_int8[1], data)
    recorded = manifest.variant("unet", "openvino-int8")["quantization"]["image"]["psnr_db"]
    assert doctor.min_psnr(manifest, "int8") == pytest.approx(recorded - 6.02)


def test_int8_of_a_folder_exported_before_the_record_needs_a_working_quantization(tiny):
    assert doctor.min_psnr(load_manifest(tiny[1]), "int8") == doctor.INT8_UNRECORDED_DB


def test_the_check_jobs_run_every_engine_a_call_can_run(
    tiny, tiny_inpaint_controlnet, tiny_multi_controlnet, tiny_controlnet_depth
):
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.media.images import psnr

    assert list(doctor.check_jobs(load_manifest(tiny[1]), 64, 64)) == ["plain"]
    several = load_manifest(tiny_multi_controlnet[1])
    many = doctor.check_jobs(several, 64, 64)["control"]
    assert len(many["control_image"]) == len(several.control["controlnets"]) > 1
    depth = doctor.check_jobs(load_manifest(tiny_controlnet_depth[1]), 64, 64)["control"]
    assert depth["control_preprocess"] == "depth" and "control_image" not in depth
    jobs = doctor.check_jobs(load_manifest(tiny_inpaint_controlnet[1]), 64, 64)
    assert list(jobs) == ["plain", "control"]
    assert all(job["mask_image"].getextrema() == (0, 255) for job in jobs.values())
    pipe = Img2ImgPipeline.from_engines(tiny_inpaint_controlnet[1], backend="onnxruntime")
    plain, control = (pipe(**job)[0] for job in jobs.values())
    assert psnr(plain, control) < 40  # the ControlNet steered the second


def test_a_row_is_ok_only_where_every_check_job_reaches_its_bound(tiny_inpaint_controlnet):
    pytest.importorskip("openvino")
    checked = doctor.check(tiny_inpaint_controlnet[1], log=lambda m: None)
    rows = {(r["backend"], r["precision"], r.get("shapes")): r for r in checked}
    assert len(rows) == len(checked)
    for shapes in ("dynamic", "static"):  # (OpenVINO compiles the calls' exact shapes too)
        fp32 = rows["openvino", "fp32", shapes]
        assert fp32["status"] == "ok" and set(fp32["job_psnr_db"]) == {"plain", "control"}
        assert min(fp32["job_psnr_db"].values()) == fp32["psnr_db"] >= doctor.MIN_PSNR["fp32"]
        assert "with control: PSNR" in fp32["detail"]
    skipped = [r for r in checked if r["status"] == "skipped"]  # (TensorRT: not installed)
    assert skipped and all("shapes" not in r for r in skipped)  # one row where nothing ran


def test_a_check_job_under_its_bound_makes_the_row_wrong(tiny, tmp_path):
    from PIL import Image

    manifest = load_manifest(tiny[1])
    reference = Image.new("RGB", (32, 32), (100, 100, 100))
    out = tmp_path / "openvino-bf16.png"
    reference.save(tmp_path / "openvino-bf16-plain.png")
    Image.new("RGB", (32, 32), (140, 100, 100)).save(tmp_path / "openvino-bf16-control.png")
    report = {"seconds": 0.1, "ran": "bf16"}
    expected = {"plain": reference, "control": reference}
    row = doctor._compare(manifest, "bf16", report, expected, out)
    assert row["status"] == "wrong" and row["psnr_db"] == row["job_psnr_db"]["control"] < 35
    assert row["max_pixel_diff"] == 40
    assert doctor._compare(manifest, "bf16", report, {"plain": reference}, out)["status"] == "ok"


def test_a_folder_exported_in_fp16_is_checked_against_its_own_graphs_on_the_cpu(monkeypatch):
    """It has no fp32 graphs to run: the reference is ONNX Runtime running its fp16 ones."""
    from fastimg.engine_folder import manifest as manifests
    from fastimg.errors import EngineError
    from tests.manifests import exported_in

    half = exported_in("fp16")
    monkeypatch.setattr(manifests, "load_manifest", lambda folder: half)
    ran = []

    def run_isolated(engines, backend, precision, *rest):
        ran.append((backend, precision))
        return {"error": "stopped here"}

    monkeypatch.setattr(doctor, "run_isolated", run_isolated)
    said = []
    with pytest.raises(EngineError, match=r"the CPU reference on onnxruntime \(fp16\) failed"):
        doctor.check("engines", log=said.append)
    assert ran == [("onnxruntime", "fp16")] and "on onnxruntime (fp16)" in said[0]
