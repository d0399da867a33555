"""int8 ControlNets: the ControlNets and the UNet taking their residuals quantized at export
(calibrated on diffusers' ControlNet img2img), recorded, and run by --precision int8 with a
control image."""

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from click.testing import CliRunner

from fastimg.cli import cli
from fastimg.engine_folder.layout import MANIFEST
from fastimg.engine_folder.manifest import Manifest, load_manifest
from tests.conftest import tiny_int8_bounds
from tests.export.exporting import sliced_projections, split_projection_pairs

pytest.importorskip("nncf")
pytest.importorskip("openvino")
pytest.importorskip("torch")

INT8 = "openvino-int8"
CONTROL = ("controlnet", "unet_control")
HYBRID, FULL = "hybrid-int8", "full-int8"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model folder, engine folder, the export's output) of tiny-controlnet exported with
    --int8 as a user types it, by the tiny_int8 fixture's rule (tiny_int8_bounds), the UNet
    keeping full int8 (unet_keeps_full): the ControlNet and unet_control are quantized by
    both methods and keep one each by their own figures."""
    from fastimg_export.random_models import write_random_model

    root = tmp_path_factory.mktemp("int8-control")
    model = write_random_model("tiny-controlnet", root / "model")
    out = root / "engines"
    args = ["export", str(model), "-o", str(out), "--int8", "--int8-images", "3"]
    with tiny_int8_bounds(), unet_keeps_full():
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return model, out, result.output


@contextmanager
def unet_keeps_full():
    """The UNet's int8 method choice made full int8, as sd15's at 256 is on an AVX-512 VNNI
    CPU (the tiny UNet's timings are noise); both its graphs are still measured, and every
    other choice is the export's own."""
    from fastimg_export import int8_choice, int8_unet_method

    original = int8_choice._choose_method

    def forced(figures, *bounds):
        return FULL, {m: f"{'kept' if m == FULL else 'not kept'}: the test's" for m in figures}

    def choose(folder, data, name, *measuring):
        if name != "unet":
            return original(folder, data, name, *measuring)
        with mock.patch.object(int8_unet_method, "choose_method", forced):
            return original(folder, data, name, *measuring)

    with mock.patch.object(int8_choice, "_choose_method", choose):
        yield


@pytest.fixture()
def ran(monkeypatch):
    """The graph files (relative to the engine folder) OpenVINO sessions ran, in order."""
    from fastimg.backends.openvino import OpenVinoSession

    paths = []
    original = OpenVinoSession.run

    def run(self, feeds):
        path = Path(self._path)
        paths.append(f"{path.parent.name}/{path.name}")
        return original(self, feeds)

    monkeypatch.setattr(OpenVinoSession, "run", run)
    return paths


def _check_job(engines, record: str):
    """The photo, the control arguments and the job of the int8 mix's image record `record`."""
    from fastimg.media.images import EXAMPLE_IMAGE, load_image
    from fastimg_export.int8_control import check_call

    data = load_manifest(engines).data
    job = dict(data["int8"][record]["job"])
    job.pop("control_image", None)
    photo = load_image(EXAMPLE_IMAGE).resize((job.pop("size"),) * 2)
    call, _ = check_call(data, photo)
    return photo, call, job


def _image(engines, precision: str, manifest=None, **arguments):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    if manifest is None:
        pipe = Img2ImgPipeline.from_engines(engines, "openvino", precision)
    else:
        pipe = Img2ImgPipeline(manifest, backend="openvino", precision=precision)
    (picture,) = pipe(**arguments)
    return picture


def test_the_controlnet_and_its_unet_get_int8_graphs_calibrated_with_control(exported):
    from fastimg_export.quantize import read_unet, weighted_matmuls

    _, engines, output = exported
    assert "running 3 calibration images with control" in output
    assert "controlnet int8: output relative RMS error" in output
    assert "unet_control int8: output relative RMS error" in output
    data = json.loads((engines / MANIFEST).read_text())
    unet_calls = data["components"]["unet"]["variants"][INT8]["quantization"]["calibration"]
    for name in CONTROL:
        entry = data["components"][name]
        record = entry["variants"][INT8]["quantization"] if INT8 in entry["variants"] else None
        record = record or entry["int8_dropped"]  # (measured, and dropped with its reason)
        (other,) = entry["int8_alternatives"]  # (unet_keeps_full: both methods measured)
        # each GEGLU half measured as a layer of its own: split before quantizing, as the UNet
        reference = read_unet(engines / name / "model.onnx")
        convolutions = [op for op in reference.get_ops() if op.get_type_name() == "Convolution"]
        layers = len(convolutions) + len(weighted_matmuls(reference))
        assert record["error"]["layers"] == other["error"]["layers"] == layers
        for quantization in (record, other):
            calibration = quantization["calibration"]
            # The same images and steps as the UNet's own calibration, the ControlNet run's.
            assert calibration["calls"] == unet_calls["unet_calls"] > 0
            assert "edges" in calibration["control_images"]
            assert quantization["error"]["layers"] > 0 and quantization["error"]["worst_layers"]
            assert 0 < quantization["error"]["output_relative_rms_error"] < 0.5
            image = quantization["image"]
            assert image["job"]["control_image"].startswith("the input image's edges")
            assert quantization["speed"]["speed_ratio"] > 0 and quantization["reason"]
    unet_control = data["components"]["unet_control"]
    variant = unet_control["variants"][INT8]
    assert variant["path"] == "unet_control/model.int8.xml"
    quantization = variant["quantization"]
    assert quantization["chosen"] and quantization["reason"].startswith("kept")
    for rel in (variant["path"], variant["weights"]):
        assert rel in unet_control["files"] and (engines / rel).is_file()
    # GEGLU's projections split before quantizing, as the UNet's (unet_control's graph is kept)
    projections = sliced_projections(engines / "unet_control" / "model.onnx")
    assert projections > 0
    assert split_projection_pairs(engines / variant["path"]) == projections
    mix = data["int8"]
    assert "unet_control" in mix["components"]
    assert mix["control_image"]["psnr_db"] >= mix["min_psnr_db"]  # the bound, with control too
    assert mix["control_image"]["job"]["control_image"].startswith("the input image's edges")
    load_manifest(engines)  # the schema takes the records


def test_the_control_graphs_measure_the_method_the_unet_kept_and_keep_one(exported):
    _, engines, output = exported
    data = json.loads((engines / MANIFEST).read_text())
    assert data["components"]["unet"]["variants"][INT8]["quantization"]["method"] == FULL
    for name in CONTROL:
        assert f"{name}: the UNet kept {FULL}: quantizing it by {FULL} too" in output
        assert f"{name} ({FULL}) int8: output relative RMS error" in output
        entry = data["components"][name]
        record = entry.get("int8_dropped") or entry["variants"][INT8]["quantization"]
        (other,) = entry["int8_alternatives"]
        assert {record["method"], other["method"]} == {HYBRID, FULL}
        full = record if record["method"] == FULL else other
        assert full["smooth_quant_alpha"] == 0.95
        why = record["reason"] if name == "unet_control" else record["method_reason"]
        assert why.startswith("kept") and f"{record['method']}: " in why
        assert other["chosen"] is False and other["reason"].startswith("not kept")
        assert f"{other['method']}: " in other["reason"]
        # Both timed in one run, in turn, against the same default-path timings.
        assert record["speed"]["all_seconds"]["default"] == other["speed"]["all_seconds"]["default"]
        # One graph is left, at the int8 path, and the manifest lists what is on disk.
        on_disk = sorted(path.name for path in (engines / name).iterdir())
        assert not any(FULL in file or HYBRID in file for file in on_disk)
        assert sorted(entry["files"]) == [f"{name}/{file}" for file in on_disk]
    info = CliRunner().invoke(cli, ["info", str(engines)]).output
    assert " ".join(info.split()).count("int8 (other) not kept") == 1 + len(
        CONTROL
    )  # the UNet's and theirs


def test_control_graphs_are_quantized_again_only_where_the_unet_kept_another_method(monkeypatch):
    from fastimg_export import int8_choice

    written = []
    monkeypatch.setattr(int8_choice, "write_candidate", lambda *args: written.append(args[2]))

    def manifest(unet: str, control: str) -> dict:
        methods = {"unet": unet, "controlnet": control, "unet_control": control}
        return {"components": {n: {"variants": {INT8: {"quantization": {"method": m}}}}
                               for n, m in methods.items()}}  # fmt: skip

    for unet, control, redo in ((HYBRID, HYBRID, False), (FULL, FULL, False), (FULL, HYBRID, True)):
        written.clear()
        for name in CONTROL:
            int8_choice._follow_unet(Path(), manifest(unet, control), name, [], print)
        assert written == (list(CONTROL) if redo else [])


@pytest.mark.parametrize("choice,expected", [("auto", "hybrid-int8"), ("full", "full-int8")])
def test_auto_quantizes_the_controlnets_with_the_hybrid_method(
    choice, expected, tmp_path, monkeypatch
):
    from fastimg_export import engine_writer, int8_components, int8_control, quantize

    methods = {}

    def unet(feeds, staging, images, scale, log, chosen):
        methods["unet"] = chosen
        return {"path": "unet"}, []

    def control(name, feeds, staging, images, scale, log, method):
        methods[name] = method
        return {"path": name}, []

    monkeypatch.setattr(quantize, "write_int8_unet", unet)
    monkeypatch.setattr(int8_control, "write_int8_control", control)
    monkeypatch.setattr(int8_components, "write_int8_component", lambda name, *a: ({}, []))
    names = ("text_encoder", "unet", "controlnet", "unet_control", "vae_decoder")
    components = {name: {"files": {}} for name in names}
    feeds = dict.fromkeys(names, [])
    engine_writer._write_int8(components, feeds, tmp_path, 3, 8, print, choice)
    assert methods["controlnet"] == methods["unet_control"] == expected
    assert methods["unet"] == quantize.unet_methods(choice)  # auto: both, the hybrid first
    assert all("openvino-int8" in components[name]["variants"] for name in names)


def test_an_int8_run_with_a_control_image_runs_the_int8_control_graphs(exported, ran):
    from fastimg.media.images import psnr

    _, engines, _ = exported
    photo, call, job = _check_job(engines, "control_image")
    ours = _image(engines, "int8", image=photo, **call, **job)
    data = load_manifest(engines).data
    for name in CONTROL:
        wanted = "model.int8.xml" if name in data["int8"]["components"] else "model.onnx"
        assert f"{name}/{wanted}" in ran
    assert "unet_control/model.int8.xml" in ran
    assert not any(path.startswith("unet/") for path in ran)  # the plain UNet did not run
    assert ours.info["fastimg:precision"] == "int8"
    reference = _image(engines, "fp32", image=photo, **call, **job)
    # The export measured this on this CPU with the same kernels: the same image again.
    assert psnr(ours, reference) == pytest.approx(data["int8"]["control_image"]["psnr_db"], abs=0.5)


def test_the_cli_runs_int8_with_a_control_image(exported, tmp_path, photo, ran):
    _, engines, _ = exported
    photo.save(tmp_path / "in.png")
    photo.transpose(0).save(tmp_path / "edges.png")
    result = CliRunner().invoke(
        cli,
        ["transform", str(tmp_path / "in.png"), "--engines", str(engines), "--prompt", "a fox",
         "--precision", "int8", "--control-image", str(tmp_path / "edges.png"),
         "-o", str(tmp_path / "o.png"), "--steps", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o.png").is_file()
    assert "unet_control/model.int8.xml" in ran
    result = CliRunner().invoke(cli, ["info", str(engines)])
    assert result.exit_code == 0, result.output
    method = load_manifest(engines).components["unet_control"]["variants"][INT8]["quantization"]
    words = " ".join(result.output.split())  # (the columns' widths follow the longest name)
    assert f"openvino-int8 unet_control/model.int8.xml {method['method']}: output" in words
    assert "dB with a control image)" in result.output


def test_an_int8_run_without_a_control_image_is_unchanged(exported, ran):
    from fastimg_export.int8_choice import only

    _, engines, _ = exported
    photo, _, job = _check_job(engines, "image")
    ours = _image(engines, "int8", image=photo, **job)
    assert not any(path.split("/")[0] in CONTROL for path in ran)
    # The same image as the folder without the ControlNets' int8 graphs gives.
    data = load_manifest(engines).data
    plain = tuple(name for name in data["int8"]["components"] if name not in CONTROL)
    manifest = Manifest.from_data(engines, _without_control_int8(only(data, plain)))
    before = _image(engines, "int8", manifest, image=photo, **job)
    assert np.array_equal(np.asarray(ours), np.asarray(before))


def _without_control_int8(data: dict) -> dict:
    """The manifest `data` as an export before int8 ControlNets wrote it: no int8 records for
    the ControlNet components, no control image records in the int8 mix."""
    data = json.loads(json.dumps(data))
    for name in CONTROL:
        data["components"][name].pop("int8_dropped", None)
        data["components"][name]["variants"].pop(INT8, None)
    mix = data["int8"]
    mix["components"] = [name for name in mix["components"] if name not in CONTROL]
    mix.pop("control_image")
    mix.pop("control_default_path_image")
    return data


def test_a_folder_without_int8_controlnet_records_still_loads_and_runs(exported, tmp_path, ran):
    _, engines, _ = exported
    folder = shutil.copytree(engines, tmp_path / "engines")
    data = _without_control_int8(load_manifest(folder).data)
    for name in CONTROL:
        for rel in [r for r in data["components"][name]["files"] if "int8" in r]:
            data["components"][name]["files"].pop(rel)
            (folder / rel).unlink()
    (folder / MANIFEST).write_text(json.dumps(data))
    photo, call, job = _check_job(engines, "control_image")
    picture = _image(folder, "int8", image=photo, **call, **job)
    assert picture.info["fastimg:precision"] == "int8"
    assert "controlnet/model.onnx" in ran and "unet_control/model.onnx" in ran


def test_calibration_with_control_leaves_the_unets_own_inputs_unchanged(exported):
    import diffusers

    from fastimg_export.calibration import calibration_feeds
    from fastimg_export.engine_writer import _calibration_feeds
    from fastimg_export.loading import load_pipeline
    from fastimg_export.onnx_export import component_specs, residual_names

    model, _, _ = exported
    pipe = load_pipeline(str(model))  # the ControlNet img2img pipeline folder
    feeds = _calibration_feeds(pipe, 2, log=lambda m: None)
    plain = diffusers.StableDiffusionImg2ImgPipeline(
        **{n: getattr(pipe, n) for n in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    reference = calibration_feeds(plain, 2, log=lambda m: None)
    assert len(feeds["unet"]) == len(reference["unet"]) > 0
    for ours, theirs in zip(feeds["unet"], reference["unet"], strict=True):
        assert ours.keys() == theirs.keys() == {"sample", "timestep", "encoder_hidden_states"}
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key])
    residuals = residual_names(pipe.unet.config)
    assert len(feeds["unet_control"]) == len(feeds["controlnet"]) == len(feeds["unet"])
    specs = component_specs(pipe)
    for name in CONTROL:  # every input of the exported graph, by its name
        assert all(feed.keys() == specs[name].inputs.keys() for feed in feeds[name])
    assert set(residuals) <= feeds["unet_control"][0].keys()
    first, second = feeds["controlnet"][0], feeds["controlnet"][-1]
    assert first["conditioning_scale"].shape == (1,)
    # The first image's control image is the image itself, the second's its edges (0 or 1).
    assert len(np.unique(first["controlnet_cond"])) > 2
    assert set(np.unique(second["controlnet_cond"])) <= {0.0, 1.0}


def test_sdxl_control_calibration_feeds_every_input_of_the_exported_graphs(tmp_path):
    from fastimg_export.control_calibration import control_feeds
    from fastimg_export.loading import load_pipeline
    from fastimg_export.onnx_export import component_specs
    from fastimg_export.random_models import write_random_model

    pipe = load_pipeline(str(write_random_model("tiny-sdxl-controlnet", tmp_path / "model")))
    feeds = control_feeds(pipe, 1, log=lambda m: None)
    specs = component_specs(pipe)
    for name in CONTROL:  # SDXL's text_embeds and time_ids among them, by the graphs' names
        assert feeds[name] and all(feed.keys() == specs[name].inputs.keys() for feed in feeds[name])
        assert {"text_embeds", "time_ids"} <= feeds[name][0].keys()


def test_the_plain_mix_drops_only_graphs_its_job_runs(tmp_path):
    """A mix under the bound on the job without a control image drops the least accurate graph
    that job runs, never a ControlNet (which it does not run), however low its own figure."""
    from fastimg_export.int8_choice import _within_bound

    class Check:  # the image is under the bound while the VAE decoder's int8 is in the mix
        def psnr(self, data, names, label):
            return {"psnr_db": 25.0 if "vae_decoder" in names else 35.0}

    names = ["unet", "vae_decoder", "controlnet", "unet_control"]
    data = {"components": {n: {"files": {}, "variants": {INT8: {
        "path": f"{n}/model.int8.xml", "weights": f"{n}/model.int8.bin", "quantization": {}}}}
        for n in names}}  # fmt: skip
    measured = {n: {"image": {"psnr_db": {"controlnet": 31.0}.get(n, 33.0)}} for n in names}
    kept, plain = list(names), ["unet", "vae_decoder"]
    mix = _within_bound(Check(), tmp_path, data, kept, plain, measured, "int8 mix", print)
    assert mix["psnr_db"] == 35.0
    assert kept == ["unet", "controlnet", "unet_control"] and plain == ["unet"]
    assert "int8_dropped" in data["components"]["vae_decoder"]
    assert INT8 in data["components"]["controlnet"]["variants"]


def test_the_doctor_checks_int8_with_control_on_the_export_s_control_image(exported):
    from fastimg.media.control_images import edges
    from fastimg.workflows import doctor

    manifest = load_manifest(exported[1])
    jobs = doctor.check_jobs(manifest, 128, 128, doctor.job_set(manifest, "int8"))
    size = manifest.data["int8"]["image"]["job"]["size"]
    assert jobs["plain"]["image"].size == (size, size)
    hint = jobs["control"]["control_image"]  # (what int8_control.check_call gives the export)
    assert np.array_equal(np.asarray(hint), np.asarray(edges(jobs["plain"]["image"])))
    assert "control_image" in manifest.data["int8"]  # the record it is held to
