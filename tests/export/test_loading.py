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
    ],
)
def test_unsupported_layouts_are_refused_with_the_reason(unet, sdxl, vae, message):
    from fastimg_export.loading import check_supported

    with pytest.raises(InputError, match=message):
        check_supported(_fake(unet, sdxl, vae))
