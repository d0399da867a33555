"""The int8 UNet: written beside the fp32 graphs, its error recorded, run by --precision int8."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from fastimg.cli import cli
from fastimg.engine_folder.layout import MANIFEST
from fastimg.engine_folder.manifest import load_manifest
from fastimg.errors import EngineError, MissingDependencyError
from tests.conftest import TINY_INT8_MIN_PSNR_DB

pytest.importorskip("nncf")
pytest.importorskip("openvino")


def test_the_manifest_lists_the_int8_unet_its_files_and_its_error(tiny_int8):
    _, engines = tiny_int8
    manifest = load_manifest(engines)
    unet = manifest.components["unet"]
    variant = unet["variants"]["openvino-int8"]
    assert variant["path"] == "unet/model.int8.xml" and variant["weights"] == "unet/model.int8.bin"
    for rel in ("model.int8.xml", "model.int8.bin"):
        entry = unet["files"][f"unet/{rel}"] if f"unet/{rel}" in unet["files"] else None
        assert entry and entry["bytes"] == (engines / "unet" / rel).stat().st_size
    quantization = variant["quantization"]
    assert quantization["method"] in ("hybrid-int8", "full-int8")  # auto: one kept
    assert quantization["calibration"]["unet_calls"] > 0  # one image held out of it
    error = quantization["error"]
    assert error["layers"] > 10 and len(error["worst_layers"]) == min(20, error["layers"])
    worst = [layer["relative_rms_error"] for layer in error["worst_layers"]]
    assert worst == sorted(worst, reverse=True) and worst[0] == error["max_relative_rms_error"]
    assert 0 < error["median_relative_rms_error"] <= error["max_relative_rms_error"]
    assert 0 < error["output_relative_rms_error"] < 1
    image = quantization["image"]
    assert image["job"]["size"] == quantization["calibration"]["size"]
    assert 0 < image["psnr_db"] < 999 and "cores available" in image["measured_on"]
    assert "unet/model.int8.bin" in manifest.opened_files()


def test_the_int8_unet_runs_its_sliced_projections_as_a_matmul_per_slice(
    tiny_int8, tiny_int8_other_unet
):
    """The runtime splits GEGLU's projection only in float graphs (openvino_rewrites): the
    export splits it before quantizing, by either method, so that no int8 graph runs a
    slicing kernel there either."""
    from fastimg_export.quantize import read_unet, weighted_matmuls
    from tests.export.exporting import sliced_projections, split_projection_pairs

    methods = set()
    for _, engines in (tiny_int8, tiny_int8_other_unet):
        variant = load_manifest(engines).components["unet"]["variants"]["openvino-int8"]
        methods.add(variant["quantization"]["method"])
        projections = sliced_projections(engines / "unet" / "model.onnx")
        assert projections > 0  # the tiny UNet's transformer blocks
        assert split_projection_pairs(engines / variant["path"]) == projections
        # every layer measured, each half among them (the fp32 reference is split alike)
        reference = read_unet(engines / "unet" / "model.onnx")
        convolutions = [op for op in reference.get_ops() if op.get_type_name() == "Convolution"]
        layers = len(convolutions) + len(weighted_matmuls(reference))
        assert variant["quantization"]["error"]["layers"] == layers
    assert methods == {"hybrid-int8", "full-int8"}


def test_the_recorded_output_error_is_the_int8_graphs_as_it_runs(tiny_int8):
    """Each layer made an output too, OpenVINO runs an int8 graph otherwise (the tiny decoder's
    output error 2-3x): the output's error is measured on the graph as it is."""
    import openvino as ov

    from fastimg_export.quantize import layer_errors, relative_rms

    _, engines = tiny_int8
    core = ov.Core()
    folder = engines / "vae_decoder"
    feed = {"latent_sample": np.random.default_rng(0).standard_normal((1, 4, 8, 8), np.float32)}
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    fp32 = core.compile_model(str(folder / "model.onnx"), "CPU", f32)(feed)[0]
    int8 = core.compile_model(str(folder / "model.int8.xml"), "CPU", f32)(feed)[0]
    reference, quantized = (
        core.read_model(str(folder / n)) for n in ("model.onnx", "model.int8.xml")
    )
    error = layer_errors(reference, quantized, feed)
    assert error["output_relative_rms_error"] == pytest.approx(relative_rms(int8, fp32), rel=1e-4)
    assert error["layers"] > 10 and len(quantized.outputs) == len(reference.outputs) == 1


def rerun_check_job(engines, **pipeline_options):
    """The int8 and fp32 images of the job the export measured int8 on, and the record of
    the int8 mix's image (what --precision int8 runs)."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.media.images import EXAMPLE_IMAGE, load_image

    record = load_manifest(engines).data["int8"]["image"]
    job = dict(record["job"])
    photo = load_image(EXAMPLE_IMAGE).resize((job.pop("size"),) * 2)
    images = {}
    for precision, options in (("int8", pipeline_options), ("fp32", {})):
        pipe = Img2ImgPipeline.from_engines(engines, "openvino", precision, **options)
        (images[precision],) = pipe(image=photo, **job)
    return images["int8"], images["fp32"], record


def test_int8_runs_on_openvino_and_differs_from_fp32_within_its_recorded_error(tiny_int8):
    from fastimg.media.images import psnr

    _, engines = tiny_int8
    ours, reference, record = rerun_check_job(engines)
    assert ours.info["fastimg:precision"] == "int8"
    assert not np.array_equal(np.asarray(ours), np.asarray(reference))  # the int8 graph ran
    # The export measured this on this CPU with the same kernels: the same images again.
    assert psnr(ours, reference) == pytest.approx(record["psnr_db"], abs=0.5)
    # A working int8 mix (a broken graph gives noise, under 15 dB): the export drops int8
    # graphs until the mix reaches its bound (the tiny fixtures': TINY_INT8_MIN_PSNR_DB; the
    # tiny mix measured 30.4 dB on an AVX-512 VNNI EPYC, the hybrid UNet alone 37-41 dB on AVX2
    # and AVX-512 VNNI CPUs).
    assert record["psnr_db"] >= TINY_INT8_MIN_PSNR_DB


def test_static_shapes_keep_int8_within_its_recorded_error(tiny_int8):
    from fastimg.media.images import psnr

    _, engines = tiny_int8
    static, reference, record = rerun_check_job(engines, shapes="static")
    dynamic, _, _ = rerun_check_job(engines)
    assert static.info["fastimg:precision"] == "int8"
    # Static shapes compile OpenVINO's int8 kernels for the exact shapes, which round
    # otherwise than the dynamic graph's (VNNI/AMX tiles): their images are another int8
    # approximation of fp32's, not the dynamic one's (35-38 dB apart on AVX-512 VNNI). Each
    # stays within the recorded error, with 1.5x its RMS difference for the other kernels
    # (measured: up to 1.5 dB), so the two are at most 2.5x the recorded RMS apart.
    assert psnr(static, reference) >= record["psnr_db"] - 3.53  # 20 log10(1.5)
    assert psnr(static, dynamic) >= record["psnr_db"] - 7.96  # 20 log10(2.5)


def test_int8_is_refused_where_it_cannot_run(tiny, tiny_int8):
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.errors import InputError

    with pytest.raises(EngineError, match="no int8 graph: export them with .*--int8"):
        Img2ImgPipeline.from_engines(tiny[1], backend="openvino", precision="int8")
    with pytest.raises(InputError, match="no backend here runs int8: openvino: these engines"):
        Img2ImgPipeline.from_engines(tiny[1], precision="int8")
    with pytest.raises(InputError, match="int8 does not run on the onnxruntime backend.*openvino"):
        Img2ImgPipeline.from_engines(tiny_int8[1], backend="onnxruntime", precision="int8")


def test_a_changed_int8_weight_file_is_caught(tiny_int8, tmp_path):
    from tests.corpus import flip_a_byte

    engines = shutil.copytree(tiny_int8[1], tmp_path / "engines")
    flip_a_byte(engines / "unet" / "model.int8.bin", keep_mtime=True)
    result = CliRunner().invoke(cli, ["info", str(engines), "--verify"])
    assert result.exit_code == 1 and "model.int8.bin" in result.output


def test_int8_export_without_nncf_names_the_extra_before_any_work(tiny, tmp_path, monkeypatch):
    import sys

    from fastimg_export.engine_writer import export_engines

    monkeypatch.setitem(sys.modules, "nncf", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"fastimg\[int8\]"):
        export_engines(str(tiny[0]), tmp_path / "e", log=lambda m: None, int8_images=2)
    assert not (tmp_path / "e").exists()


def test_the_cli_exports_and_runs_int8(tiny, tmp_path, photo):
    runner = CliRunner()
    out = tmp_path / "engines"
    args = ["export", str(tiny[0]), "-o", str(out), "--int8", "--int8-images", "2"]
    result = runner.invoke(cli, [*args, "--int8-unet", "full"])  # the one method asked for
    assert result.exit_code == 0, result.output
    assert "unet (full-int8) int8: output relative RMS error" in result.output
    assert "hybrid-int8" not in result.output
    assert "vae_decoder int8: output relative RMS error" in result.output
    assert "measuring each int8 graph alone" in result.output
    assert not (out / "openvino_cache").exists()  # what measuring int8 compiled is not shipped
    assert (
        "openvino-int8"
        in json.loads((out / MANIFEST).read_text())["components"]["unet"]["variants"]
    )
    photo.save(tmp_path / "in.png")
    result = runner.invoke(
        cli,
        ["transform", str(tmp_path / "in.png"), "--engines", str(out), "--prompt", "a fox",
         "--precision", "int8", "-o", str(tmp_path / "o.png"), "--steps", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "running on openvino (int8): the fast path" in result.output
    result = runner.invoke(cli, ["info", str(out)])
    assert result.exit_code == 0
    words = " ".join(result.output.split())  # (the columns' widths follow the longest name)
    assert "openvino-int8 unet/model.int8.xml full-int8: output relative RMS error" in words


def test_an_sdxl_int8_unet_is_calibrated_with_its_added_conditioning_and_runs(
    tiny_sdxl_int8, photo
):
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.media.images import psnr

    _, engines = tiny_sdxl_int8
    variant = load_manifest(engines).components["unet"]["variants"]["openvino-int8"]
    error = variant["quantization"]["error"]
    assert variant["quantization"]["calibration"]["unet_calls"] > 0
    assert error["layers"] > 10 and 0 < error["output_relative_rms_error"] < 1
    import openvino as ov

    graph = ov.Core().read_model(engines / variant["path"])
    inputs = {port.get_any_name() for port in graph.inputs}
    assert {"text_embeds", "time_ids", "encoder_hidden_states"} <= inputs
    kwargs = dict(
        strength=0.6, num_inference_steps=4, guidance_scale=4.0, seed=3,
        prompt_2="in the style of an etching", negative_prompt="blurry",
        original_size=(96, 64), target_size=(64, 64),
    )  # fmt: skip
    image = photo.resize((64, 64))
    int8 = Img2ImgPipeline.from_engines(engines, backend="openvino", precision="int8")
    fp32 = Img2ImgPipeline.from_engines(engines, backend="openvino", precision="fp32")
    (ours,), (reference,) = int8("a red fox", image, **kwargs), fp32("a red fox", image, **kwargs)
    assert ours.info["fastimg:precision"] == "int8"
    assert not np.array_equal(np.asarray(ours), np.asarray(reference))  # the int8 graph ran
    rerun, fp32_rerun, record = rerun_check_job(engines)
    assert psnr(rerun, fp32_rerun) == pytest.approx(record["psnr_db"], abs=0.5)
    assert record["psnr_db"] >= TINY_INT8_MIN_PSNR_DB  # a working int8 mix (see above)
    (other,) = int8("a red fox", image, **{**kwargs, "original_size": (256, 256)})
    assert not np.array_equal(np.asarray(other), np.asarray(ours))  # time_ids reach the UNet


def test_the_cli_exports_and_runs_an_int8_sdxl_refiner(tmp_path, photo):
    from fastimg_export.random_models import write_random_model

    model = write_random_model("tiny-sdxl-refiner", tmp_path / "model")
    runner = CliRunner()
    out = tmp_path / "engines"
    args = ["export", str(model), "-o", str(out), "--int8-images", "2", "--int8"]
    result = runner.invoke(cli, [*args, "--int8-unet", "hybrid"])  # (auto: tiny_int8's tests)
    assert result.exit_code == 0, result.output
    assert "unet (hybrid-int8) int8: output relative RMS error" in result.output
    assert "unet (full-int8)" not in result.output
    photo.save(tmp_path / "in.png")
    result = runner.invoke(
        cli,
        ["transform", str(tmp_path / "in.png"), "--engines", str(out), "--prompt", "a fox",
         "--precision", "int8", "--aesthetic-score", "7", "-o", str(tmp_path / "o.png"),
         "--steps", "3", "--size", "64x64"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "running on openvino (int8)" in result.output and (tmp_path / "o.png").is_file()


def test_an_int8_export_frees_each_torch_model_once_its_graph_is_written(
    tiny, tmp_path, monkeypatch
):
    from fastimg_export import engine_writer

    freed, real = [], engine_writer.release_weights

    def release(pipe, remaining):
        real(pipe, remaining)
        freed.append(
            sorted(
                name
                for name in ("text_encoder", "unet", "vae")
                if getattr(pipe, name).device.type == "meta"
            )
        )

    class GraphsWritten(Exception):
        """Raised where the int8 graphs would be written: what is asked here is done."""

    def stop(*args):
        raise GraphsWritten

    monkeypatch.setattr(engine_writer, "release_weights", release)
    monkeypatch.setattr(engine_writer, "_write_int8", stop)  # (the other tests quantize)
    with pytest.raises(GraphsWritten):
        engine_writer.export_engines(
            str(tiny[0]), tmp_path / "e", log=lambda m: None, int8_images=2
        )
    assert freed[0] == ["text_encoder"]  # calibrated first, so nothing is kept for it
    assert freed[-1] == ["text_encoder", "unet", "vae"]
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.partial-*"))
