"""The int8 mix: each component's int8 graph measured alone, kept only where it pays, recorded
in the manifest and run by --precision int8."""

import copy
import json
import shutil

import numpy as np
import pytest

from fastimg.engine_folder.layout import MANIFEST
from fastimg.engine_folder.manifest import Manifest, load_manifest
from tests.conftest import TINY_INT8_MIN_PSNR_DB

pytest.importorskip("nncf")
pytest.importorskip("openvino")

INT8 = "openvino-int8"


@pytest.mark.parametrize(
    ("name", "speed_ratio", "psnr_db", "kept", "why"),
    [
        ("vae_decoder", 1.6, 38.0, True, "kept: 1.60x"),
        ("vae_decoder", 1.02, 38.0, False, "not 1.05x as fast"),
        ("vae_encoder", 0.5, 44.0, False, "not 1.05x as fast"),
        ("text_encoder", 3.0, 12.0, False, "under the 30 dB bound"),
        ("unet", 0.9, 36.0, True, "what --int8 asks for"),
    ],
)
def test_a_component_keeps_its_int8_graph_only_where_it_is_faster_and_close(
    name, speed_ratio, psnr_db, kept, why
):
    from fastimg_export.int8_choice import choose

    chosen, reason = choose(name, speed_ratio, psnr_db)
    assert chosen is kept and why in reason
    assert f"{speed_ratio:.2f}x" in reason and f"{psnr_db:.1f} dB" in reason


def _figures(psnr_db: float, speed_ratio: float) -> dict:
    job = {"prompt": "p", "size": 64, "strength": 0.5, "num_inference_steps": 4,
           "guidance_scale": 3.0, "seed": 0}  # fmt: skip
    speed = {"int8_seconds": 1.0, "default_seconds": speed_ratio, "speed_ratio": speed_ratio,
             "default_path": "openvino bf16", "runs": 3}  # fmt: skip
    return {"image": {"psnr_db": psnr_db, "job": job, "measured_on": "cpu"}, "speed": speed}


def test_a_component_that_loses_the_measurement_is_not_used(tiny_int8, tmp_path, monkeypatch):
    from fastimg import backends
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg_export.int8_choice import apply_choices

    engines = shutil.copytree(tiny_int8[1], tmp_path / "engines")
    data = json.loads((engines / MANIFEST).read_text())
    kept = [n for n, c in data["components"].items() if INT8 in c.get("variants", {})]
    losing = next(n for n in kept if n != "unet") if len(kept) > 1 else "unet"
    if losing == "unet":
        pytest.skip("the export kept no int8 graph besides the UNet's on this CPU")
    variant = copy.deepcopy(data["components"][losing]["variants"][INT8])
    given = {name: _figures(40.0, 2.0) for name in kept}
    given[losing] = _figures(40.0, 0.8)  # slower than its default path
    assert apply_choices(engines, data, given) == [n for n in kept if n != losing]
    entry = data["components"][losing]
    assert INT8 not in entry["variants"] and not (engines / variant["path"]).exists()
    assert variant["path"] not in entry["files"] and variant["weights"] not in entry["files"]
    dropped = entry["int8_dropped"]
    assert dropped["chosen"] is False and "0.80x" in dropped["reason"]
    assert (
        dropped["speed"]["speed_ratio"] == 0.8
        and dropped["error"] == variant["quantization"]["error"]
    )
    data["int8"] = {**tiny_int8_mix(tiny_int8), "components": [n for n in kept if n != losing]}
    (engines / MANIFEST).write_text(json.dumps(data))

    loaded, real = {}, backends.load_session

    def load_session(backend, path, options):
        loaded[path.parent.name] = path.name
        return real(backend, path, options)

    monkeypatch.setattr(backends, "load_session", load_session)
    Img2ImgPipeline.from_engines(engines, backend="openvino", precision="int8")
    assert loaded[losing] == "model.onnx"  # its default graph, at the default precision
    assert all(loaded[name] == "model.int8.xml" for name in kept if name != losing)


def tiny_int8_mix(tiny_int8) -> dict:
    return load_manifest(tiny_int8[1]).data["int8"]


def test_the_mix_is_recorded_with_each_components_figures(tiny_int8):
    engines = tiny_int8[1]
    manifest = load_manifest(engines)
    mix = manifest.data["int8"]
    with_int8 = [n for n, c in manifest.components.items() if INT8 in c.get("variants", {})]
    assert mix["components"] == with_int8 and "unet" in with_int8
    # (the tiny_int8 fixture weighs no speed, 0.001x: its timings are noise; and its bound is
    # TINY_INT8_MIN_PSNR_DB: its error moves with the CPU's kernels)
    assert mix["min_speedup"] == 0.001 and mix["min_psnr_db"] == TINY_INT8_MIN_PSNR_DB
    assert mix["image"]["psnr_db"] >= mix["min_psnr_db"]  # else a component would be dropped
    for name in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        entry = manifest.components[name]
        record = (
            entry["variants"][INT8]["quantization"] if name in with_int8 else entry["int8_dropped"]
        )
        assert record["chosen"] is (name in with_int8) and record["reason"]
        expected = {"text_encoder": ("int8-weights",), "unet": ("hybrid-int8", "full-int8")}
        assert record["method"] in expected.get(name, ("full-int8",))
        speed = record["speed"]
        assert speed["speed_ratio"] == pytest.approx(
            speed["default_seconds"] / speed["int8_seconds"], rel=1e-3
        )
        assert speed["runs"] == 3 and "openvino" in speed["default_path"]
        error = record["error"]
        assert error["layers"] > 5 and len(error["worst_layers"]) == min(20, error["layers"])
        # the int8 graph ran in the pipeline: its image differs from fp32's
        assert 0 < record["image"]["psnr_db"] < 999
        if name.startswith("vae"):
            calibration = record["calibration"]
            assert calibration["count"] == 2 and calibration["images"] == 3  # one held out
            assert "received" in calibration["inputs"]
        if name not in with_int8:
            assert not (engines / name / "model.int8.xml").exists()


def test_a_folder_with_a_unet_only_int8_record_still_loads_and_runs(
    tiny_int8, tmp_path, monkeypatch
):
    from fastimg.backends.openvino import OpenVinoSession
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.media.images import EXAMPLE_IMAGE, load_image, psnr

    engines = shutil.copytree(tiny_int8[1], tmp_path / "engines")
    data = json.loads((engines / MANIFEST).read_text())
    del data["int8"]  # as written before the mix was measured
    for name, entry in data["components"].items():
        entry.pop("int8_dropped", None)
        entry.pop("int8_alternatives", None)  # one UNet method, no layers in float
        variant = entry.get("variants", {}).get(INT8)
        if variant is None:
            continue
        if name != "unet":
            for label in (INT8, "openvino-int8-static"):  # (the latter written since)
                removed = entry["variants"].pop(label, None) or {}
                for rel in filter(None, (removed.get("path"), removed.get("weights"))):
                    del entry["files"][rel]
                    (engines / rel).unlink()
        for key in ("speed", "chosen", "reason", "smooth_quant_alpha", "float_layers", "attempts"):
            variant["quantization"].pop(key, None)
        variant["quantization"]["method"] = "hybrid-int8"
    (engines / MANIFEST).write_text(json.dumps(data))
    Manifest.from_data(engines, data)  # the schema takes it
    record = data["components"]["unet"]["variants"][INT8]["quantization"]["image"]
    job = dict(record["job"])
    photo = load_image(EXAMPLE_IMAGE).resize((job.pop("size"),) * 2)
    ran, run = set(), OpenVinoSession.run
    monkeypatch.setattr(OpenVinoSession, "run", lambda s, f: ran.add(s._path.name) or run(s, f))
    images = {}
    for precision in ("int8", "fp32"):
        pipe = Img2ImgPipeline.from_engines(engines, "openvino", precision)
        (images[precision],) = pipe(image=photo, **job)
        if precision == "int8":  # beside the int8 UNet, the exported graphs (dynamic shapes)
            assert ran == {"model.int8.xml", "model.onnx"}
    assert images["int8"].info["fastimg:precision"] == "int8"
    assert psnr(images["int8"], images["fp32"]) == pytest.approx(record["psnr_db"], abs=0.5)
    assert not np.array_equal(np.asarray(images["int8"]), np.asarray(images["fp32"]))


def _toggle_vae_decoder(data):
    data["int8"]["components"] = sorted(set(data["int8"]["components"]) ^ {"vae_decoder"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_toggle_vae_decoder, "int8.components are not the components with an int8 variant"),
        (lambda d: d["int8"]["image"].update(psnr_db=-1.0), "int8.image.psnr_db"),
        (lambda d: d["components"]["unet"]["variants"][INT8]["quantization"]["speed"].update(
            speed_ratio="fast"), "speed.speed_ratio"),
    ],
)  # fmt: skip
def test_the_schema_checks_the_int8_records_the_runtime_reads(tiny_int8, change, message):
    from fastimg.errors import ManifestError

    data = copy.deepcopy(load_manifest(tiny_int8[1]).data)
    change(data)
    with pytest.raises(ManifestError) as raised:
        Manifest.from_data(tiny_int8[1], data)
    assert all(part in str(raised.value) for part in message.split("."))
