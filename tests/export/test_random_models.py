import pytest

pytest.importorskip("torch")
from fastimg_export import random_models  # noqa: E402


def test_tiny_controlnet_is_a_controlnet_img2img_folder_whose_zero_convolutions_are_not_zero(
    tmp_path,
):
    import diffusers

    folder = random_models.write_random_model("tiny-controlnet", tmp_path / "model")
    pipe = diffusers.StableDiffusionControlNetImg2ImgPipeline.from_pretrained(folder)
    controlnet = pipe.controlnet
    convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
             controlnet.controlnet_cond_embedding.conv_out]  # fmt: skip
    for conv in convs:
        assert conv.weight.abs().min() > 0 and conv.bias.abs().min() > 0
    assert controlnet.config.cross_attention_dim == pipe.unet.config.cross_attention_dim


def test_tiny_inpaint_exports_a_9_channel_unet_the_manifest_names(tiny_inpaint):
    import json

    from fastimg.engine_folder.manifest import load_manifest
    from fastimg_export.loading import load_pipeline

    model, engines = tiny_inpaint
    pipe = load_pipeline(str(model))
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert pipe.unet.config.in_channels == 9
    data = json.loads((engines / "manifest.json").read_text())
    assert data["unet_in_channels"] == 9
    assert data["components"]["unet"]["inputs"]["sample"]["shape"][1] == 9
    manifest = load_manifest(engines)
    assert manifest.inpainting and manifest.unet_in_channels == 9


def test_an_int8_unet_is_refused_for_an_inpainting_model(tiny_inpaint, tmp_path):
    pytest.importorskip("nncf")
    from fastimg.errors import InputError
    from fastimg_export.engine_writer import export_engines

    with pytest.raises(InputError, match="not exported for inpainting models"):
        export_engines(str(tiny_inpaint[0]), tmp_path / "e", log=lambda m: None, int8_images=2)
    assert not (tmp_path / "e").exists()
