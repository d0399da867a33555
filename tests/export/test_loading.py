from pathlib import Path

import pytest

from fastimg.errors import InputError

pytest.importorskip("torch")
from fastimg_export.loading import load_pipeline  # noqa: E402


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(InputError, match="model_index.json"):
        load_pipeline(str(tmp_path))


def test_missing_checkpoint_file_is_reported(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_pipeline(str(tmp_path / "model.safetensors"))


def test_unreachable_hub_id_names_the_cause_and_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="hub model .*network access"):
        load_pipeline("fastimg-tests/no-such-model")


def test_local_folder_loads(tiny):
    pipe = load_pipeline(str(tiny[0]))
    assert pipe.safety_checker is None


def test_single_file_checkpoint_that_cannot_be_converted(tmp_path, monkeypatch):
    import safetensors.torch
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"model.diffusion_model.x": torch.zeros(2)}, str(path))
    with pytest.raises(InputError, match="could not load the checkpoint .*model.safetensors"):
        load_pipeline(str(path))


def test_sdxl_folder_loads_as_the_xl_img2img_pipeline_without_watermark(tiny_sdxl_refiner):
    pipe = load_pipeline(str(tiny_sdxl_refiner[0]))
    assert type(pipe).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert pipe.watermark is None and pipe.text_encoder is None


def _fake(unet: dict, sdxl: bool, vae: dict | None = None):
    from types import SimpleNamespace

    parts = dict(unet=SimpleNamespace(config=unet), vae=SimpleNamespace(config=vae or {}))
    if sdxl:
        parts["text_encoder_2"] = object()
    return SimpleNamespace(**parts)


@pytest.mark.parametrize(
    "unet,sdxl,vae,message",
    [
        ({"addition_embed_type": "text_time"}, False, None, "not an SDXL one"),
        ({"addition_embed_type": "text_image"}, True, None, "'text_image' added conditioning"),
        (
            {"addition_embed_type": "text_time", "time_cond_proj_dim": 256},
            True,
            None,
            "LCM-distilled",
        ),
        ({"addition_embed_type": "text_time"}, True, {"latents_mean": [0.0] * 4}, "latents_mean"),
        ({"in_channels": 7, "out_channels": 4}, False, None, "takes 7 input channels"),
    ],
)
def test_unsupported_layouts_are_refused_with_the_reason(unet, sdxl, vae, message):
    from fastimg_export.loading import check_supported

    with pytest.raises(InputError, match=message):
        check_supported(_fake(unet, sdxl, vae))


def test_a_tiny_vae_of_another_family_is_refused_by_its_hub_id():
    from types import SimpleNamespace as Fake

    from fastimg_export.loading import check_vae_fits

    vae = Fake(config=Fake(latent_channels=4))
    sd = Fake(unet=Fake(config=Fake(in_channels=4)))
    xl = Fake(unet=Fake(config=Fake(in_channels=4)), text_encoder_2=None)
    check_vae_fits(sd, vae, "madebyollin/taesd")
    check_vae_fits(xl, vae, "madebyollin/taesdxl")
    check_vae_fits(xl, vae, "someone/their-own-vae")  # unknown ids are judged by shape only
    with pytest.raises(InputError, match="this SDXL model's.*use madebyollin/taesdxl"):
        check_vae_fits(xl, vae, "madebyollin/taesd")
    with pytest.raises(InputError, match="this SD 1.x/2.x model's.*use madebyollin/taesd$"):
        check_vae_fits(sd, vae, "madebyollin/TAESDXL")


@pytest.mark.parametrize(
    "key,chosen",
    [
        ("conditioner.embedders.1.model.ln_final.weight", "StableDiffusionXLImg2ImgPipeline"),
        ("cond_stage_model.transformer.text_model.final_layer_norm.weight",
         "StableDiffusionImg2ImgPipeline"),
    ],
)  # fmt: skip
def test_a_single_file_sdxl_checkpoint_loads_as_sdxl(tmp_path, monkeypatch, key, chosen):
    import diffusers
    import safetensors.torch
    import torch

    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({key: torch.zeros(2)}, str(path))
    for name in ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionImg2ImgPipeline"):

        def loading(checkpoint, name=name, **options):
            raise ValueError(f"{name} asked to load {Path(checkpoint).name}")

        monkeypatch.setattr(getattr(diffusers, name), "from_single_file", loading)
    with pytest.raises(InputError, match=f"{chosen} asked to load model.safetensors"):
        load_pipeline(str(path))


def _write_index(folder: Path, **components) -> Path:
    import json

    index = {
        "_class_name": "StableDiffusionControlNetImg2ImgPipeline",
        "_diffusers_version": "0.30.0",
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        **components,
    }
    folder.mkdir(exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize(
    "component,library,message",
    [
        ("image_encoder", "transformers", "image_encoder .*IP-Adapter"),
        ("prior", "diffusers", "prior .*export a pipeline without it"),
    ],
)
def test_a_component_the_export_would_drop_is_refused_by_name(
    tmp_path, component, library, message
):
    folder = _write_index(tmp_path / "model", **{component: [library, "SomeModel"]})
    with pytest.raises(InputError, match=message):
        load_pipeline(str(folder))


def test_null_components_and_config_values_are_not_components(tmp_path):
    from fastimg_export.loading import check_components

    check_components({"image_encoder": [None, None], "requires_safety_checker": True,
                      "force_zeros_for_empty_prompt": ["not", "a", "pair"]})  # fmt: skip


def test_an_inpainting_index_loads_as_the_inpaint_pipeline_sdxl_too():
    from fastimg_export.loading import pipeline_class

    cls, options = pipeline_class({"_class_name": "StableDiffusionInpaintPipeline"})
    assert cls.__name__ == "StableDiffusionInpaintPipeline"
    assert options["safety_checker"] is None
    cls, options = pipeline_class({"_class_name": "StableDiffusionXLInpaintPipeline"})
    assert cls.__name__ == "StableDiffusionXLInpaintPipeline"
    assert options == {"add_watermarker": False}
