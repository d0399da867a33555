"""SDXL exports: the manifest names both encoders, both tokenizers and the added conditioning."""

import pytest

from fastimg.engine_folder.manifest import load_manifest

pytest.importorskip("torch")
from fastimg_export import onnx_export, random_models  # noqa: E402


def test_base_manifest_names_the_second_encoder_and_the_added_conditioning(tiny_sdxl):
    manifest = load_manifest(tiny_sdxl[1])
    data = manifest.data
    assert data["model_family"] == "sdxl"
    assert data["text_conditioning"] == {
        "text_encoders": ["text_encoder", "text_encoder_2"],
        "pooled": "text_encoder_2",
        "force_zeros_for_empty_prompt": True,
        "requires_aesthetics_score": False,
    }
    assert data["tokenizer"]["pad_id"] != data["tokenizer_2"]["pad_id"]  # "!" pads the second
    assert data["vae_scaling_factor"] == pytest.approx(0.13025)
    components = manifest.components
    assert list(components) == [
        "text_encoder",
        "text_encoder_2",
        "unet",
        "vae_encoder",
        "vae_decoder",
    ]
    assert list(components["text_encoder"]["outputs"]) == ["hidden_states"]
    assert list(components["text_encoder_2"]["outputs"]) == ["hidden_states", "text_embeds"]
    unet = components["unet"]["inputs"]
    assert unet["encoder_hidden_states"]["shape"] == ["batch", "sequence", 80]
    assert unet["text_embeds"] == {"dtype": "float32", "shape": ["batch", 40]}
    assert unet["time_ids"] == {"dtype": "float32", "shape": ["batch", 6]}
    for entry in components.values():
        assert entry["parity"]["max_rel_error"] <= 1e-3
    assert {"tokenizer/tokenizer.json", "tokenizer_2/tokenizer.json"} <= set(manifest.files)


def test_refiner_manifest_has_only_the_second_encoder(tiny_sdxl_refiner):
    data = load_manifest(tiny_sdxl_refiner[1]).data
    assert data["model_family"] == "sdxl-refiner"
    assert "text_encoder" not in data["components"]
    assert data["text_conditioning"]["text_encoders"] == ["text_encoder_2"]
    assert data["text_conditioning"]["requires_aesthetics_score"] is True
    assert data["text_conditioning"]["force_zeros_for_empty_prompt"] is False
    assert data["tokenizer"] == data["tokenizer_2"]
    unet = data["components"]["unet"]["inputs"]
    assert unet["encoder_hidden_states"]["shape"][-1] == 48
    assert unet["time_ids"]["shape"] == ["batch", 5]


@pytest.mark.parametrize("arch", sorted(random_models.XL_ARCHITECTURES))
def test_sdxl_layouts_add_up_as_diffusers_checks(arch):
    spec = random_models.XL_ARCHITECTURES[arch]
    unet, text_2 = spec["unet"], spec["text_2"]
    ids = 5 if spec.get("requires_aesthetics_score") else 6
    pooled = text_2["projection_dim"]
    added = unet["addition_time_embed_dim"] * ids + pooled
    assert unet["projection_class_embeddings_input_dim"] == added
    width = text_2["hidden_size"] + (spec["text"]["hidden_size"] if spec.get("text") else 0)
    assert unet["cross_attention_dim"] == width


def test_component_names_follow_the_layout():
    assert onnx_export.component_names(object()) == onnx_export.SD_COMPONENTS


def test_fp16_export_keeps_the_sdxl_vae_in_fp32(tiny_sdxl_refiner, tmp_path, photo):
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg_export.engine_writer import export_engines

    said = []
    folder = export_engines(
        str(tiny_sdxl_refiner[0]), tmp_path / "fp16", precision="fp16", log=said.append
    )
    assert any(line.startswith("exporting vae_decoder (fp32: this VAE overflows in fp16")
               and "sdxl-vae-fp16-fix" in line for line in said)  # fmt: skip
    assert "exporting unet (fp16)" in said
    components = load_manifest(folder).components
    assert {n: c["precision"] for n, c in components.items()} == {
        "text_encoder_2": "fp16",
        "unet": "fp16",
        "vae_encoder": "fp32",  # force_upcast: SDXL's VAE overflows in fp16
        "vae_decoder": "fp32",
    }
    assert components["vae_decoder"]["parity"]["tolerance"] == 1e-3
    from click.testing import CliRunner

    from fastimg.cli.main import cli

    info = CliRunner().invoke(cli, ["info", str(folder)]).output.splitlines()
    named = {line.split()[0]: line for line in info if line.startswith("  ") and "vs torch" in line}
    assert named["vae_decoder"].endswith(", in fp32") and named["unet"].endswith("(limit 0.03)")
    pipe = Img2ImgPipeline.from_engines(folder, backend="onnxruntime")
    assert pipe.precision == "fp16"  # the folder's own graphs: it has no fp32 UNet
    assert pipe("a cat", photo, strength=0.5, num_inference_steps=2, seed=1)[0].size == (88, 64)


def test_an_sdxl_inpainting_pipeline_exports_a_9_channel_unet(tiny_sdxl_inpaint, photo, tmp_path):
    """StableDiffusionXLInpaintPipeline: the UNet takes [latents, mask, masked image latents]
    beside SDXL's added conditioning, verified; it runs with a mask and refuses to run without."""
    import json

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from fastimg.cli.main import cli

    model, engines = tiny_sdxl_inpaint
    index = json.loads((model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLInpaintPipeline"
    manifest = load_manifest(engines)
    assert manifest.data["model_family"] == "sdxl" and manifest.inpainting
    unet = manifest.components["unet"]
    assert unet["inputs"]["sample"]["shape"][1] == 9 and "time_ids" in unet["inputs"]
    assert unet["parity"]["max_rel_error"] <= unet["parity"]["tolerance"]
    photo.save(tmp_path / "in.png")
    white = np.zeros((68, 90), np.uint8)
    white[10:50, 30:80] = 255
    Image.fromarray(white).save(tmp_path / "mask.png")
    base = ["transform", str(tmp_path / "in.png"), "--engines", str(engines), "--prompt", "a fox",
            "--steps", "2", "--seed", "1", "-o"]  # fmt: skip
    result = CliRunner().invoke(cli, [*base, str(tmp_path / "out.png"), "--mask",
                                      str(tmp_path / "mask.png")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out.png").info["fastimg:mask"] == "given"
    result = CliRunner().invoke(cli, [*base, str(tmp_path / "bad.png")])
    assert result.exit_code == 1 and "holds an inpainting UNet, which needs a mask" in result.output
    assert not (tmp_path / "bad.png").exists()
