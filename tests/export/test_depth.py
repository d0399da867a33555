import json

import pytest

from fastimg.errors import InputError

pytest.importorskip("torch")
pytest.importorskip("transformers")
from fastimg_export import depth, random_models  # noqa: E402


def test_the_depth_model_is_a_verified_component_with_its_preprocessing(tiny_controlnet_depth):
    from fastimg.engine_folder.manifest import load_manifest

    manifest = load_manifest(tiny_controlnet_depth[1])
    entry = manifest.depth
    assert manifest.depth_components == ("depth",)
    assert entry["size"] == [64, 64] and entry["resample"] == "bicubic"
    assert entry["mean"] == entry["std"] == [0.5, 0.5, 0.5]  # DPTImageProcessor's defaults
    assert entry["source"] == str(tiny_controlnet_depth[0].parent / "depth")
    component = manifest.components["depth"]
    assert component["inputs"]["pixel_values"]["shape"] == [1, 3, 64, 64]
    assert component["parity"]["max_rel_error"] <= component["parity"]["tolerance"]
    assert "depth" not in manifest.control_components  # (not counted as a ControlNet)


def test_a_depth_entry_naming_a_missing_component_is_refused(tiny_controlnet_depth, tmp_path):
    from fastimg.engine_folder.manifest import Manifest
    from fastimg.errors import ManifestError

    data = json.loads((tiny_controlnet_depth[1] / "manifest.json").read_text())
    data["components"].pop("depth")
    with pytest.raises(ManifestError, match="depth names depth, which is not a depth component"):
        Manifest.from_data(tmp_path, data)


def test_a_depth_model_without_a_controlnet_is_refused(tmp_path):
    from click.testing import CliRunner

    from fastimg.cli.main import cli

    model = random_models.write_random_model("tiny", tmp_path / "model")
    made = CliRunner().invoke(cli, ["make-model", "tiny-depth", "-o", str(tmp_path / "dpt")])
    assert made.exit_code == 0, made.output
    args = ["export", str(model), "-o", str(tmp_path / "engines"), "--depth-model",
            str(tmp_path / "dpt")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "--depth-model makes control images for a ControlNet, and this model has none" in (
        result.output
    )
    assert not (tmp_path / "engines").exists()


def test_a_folder_that_is_no_depth_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(InputError, match="not a DPT depth model folder .*clip"):
        depth.load_depth_model(str(tmp_path))
    with pytest.raises(InputError, match="depth model ./nowhere does not exist"):
        depth.load_depth_model("./nowhere")


def test_a_processor_that_keeps_the_aspect_ratio_is_refused(tmp_path):
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    processor = DPTImageProcessorPil(keep_aspect_ratio=True, ensure_multiple_of=32)
    with pytest.raises(InputError, match="resizes its input keeping the aspect ratio"):
        depth._preprocess_entry(processor, "Intel/dpt-hybrid-midas")
    plain = depth._preprocess_entry(DPTImageProcessorPil(), "Intel/dpt-large")
    assert plain["size"] == [384, 384] and plain["rescale_factor"] == pytest.approx(1 / 255)
