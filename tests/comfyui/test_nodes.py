import numpy as np
import pytest
from PIL import Image

from fastimg.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from fastimg.comfyui.engines import EnginesHandle
from fastimg.comfyui.nodes import Img2Img, LoadEngines, SaveImage
from fastimg.errors import EngineError, InputError
from fastimg.settings import SAMPLERS, SEED_LIMIT

from .conftest import comfy_image

CALL = {"prompt": "a red barn", "negative_prompt": "", "strength": 0.6, "steps": 4,
        "guidance": 5.0, "sampler": "euler", "seed": 42}  # fmt: skip


@pytest.fixture(scope="module")
def pictures():
    rng = np.random.default_rng(5)
    return [Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)) for _ in range(2)]


def test_the_mappings_name_the_three_nodes_as_comfyui_lists_them():
    assert NODE_DISPLAY_NAME_MAPPINGS == {
        "FastimgLoadEngines": "Load fastimg engines",
        "FastimgImg2Img": "fastimg img2img",
        "FastimgSaveImage": "Save fastimg image",
    }
    for node in NODE_CLASS_MAPPINGS.values():
        assert callable(getattr(node(), node.FUNCTION))
        assert node.CATEGORY == "fastimg"
        assert set(node.INPUT_TYPES()) <= {"required", "optional", "hidden"}
    assert SaveImage.OUTPUT_NODE is True


def test_the_seed_has_comfyuis_seed_control_and_fastimgs_range():
    seed_type, options = Img2Img.INPUT_TYPES()["required"]["seed"]
    assert seed_type == "INT" and options["control_after_generate"] is True
    assert (options["min"], options["max"]) == (0, SEED_LIMIT - 1)
    (samplers, _) = Img2Img.INPUT_TYPES()["required"]["sampler"]
    assert samplers == ["default", *SAMPLERS]


def test_img2img_gives_the_pipelines_images_and_labels_for_the_same_settings(tiny, torch, pictures):
    (handle,) = LoadEngines().load(str(tiny[1]), "onnxruntime", "fp32")
    image, labels = Img2Img().transform(handle, comfy_image(pictures, torch), **CALL)
    assert tuple(image.shape) == (2, 32, 48, 3)
    pipe = handle.pipeline()
    for index, picture in enumerate(pictures):
        (expected,) = pipe("a red barn", picture, strength=0.6, num_inference_steps=4,
                           guidance_scale=5.0, scheduler="euler", seed=42)  # fmt: skip
        got = np.clip(255.0 * image[index].numpy(), 0, 255).astype(np.uint8)
        assert np.array_equal(got, np.asarray(expected))
        assert labels[index]["fastimg:seed"] == expected.info["fastimg:seed"] == 42
        assert labels[index]["fastimg:engines"] == str(tiny[1])


def test_img2img_takes_a_mask_and_a_lora_scale_text(tiny, torch, pictures):
    (handle,) = LoadEngines().load(str(tiny[1]), "onnxruntime", "fp32")
    mask = torch.zeros((1, 32, 48))
    mask[0, :, :24] = 1.0
    image, _ = Img2Img().transform(
        handle, comfy_image(pictures[:1], torch), **CALL, mask=mask, lora_scales=""
    )
    kept = np.clip(255.0 * image[0].numpy(), 0, 255).astype(np.uint8)
    (expected,) = handle.pipeline()("a red barn", pictures[0], strength=0.6,
                                    num_inference_steps=4, guidance_scale=5.0,
                                    scheduler="euler", seed=42,
                                    mask_image=Image.fromarray(
                                        (mask[0].numpy() * 255).astype(np.uint8)))  # fmt: skip
    assert np.array_equal(kept, np.asarray(expected))


def test_a_missing_or_broken_folder_fails_validation_with_fastimgs_line(tiny, tmp_path):
    assert LoadEngines.VALIDATE_INPUTS(str(tiny[1])) is True
    message = LoadEngines.VALIDATE_INPUTS(str(tmp_path / "nowhere"))
    assert isinstance(message, str) and "does not exist" in message and "\n" not in message
    (tmp_path / "empty").mkdir()
    assert "manifest" in LoadEngines.VALIDATE_INPUTS(str(tmp_path / "empty"))


def test_values_from_other_nodes_are_left_to_the_run():
    assert LoadEngines.VALIDATE_INPUTS() is True  # ComfyUI leaves linked inputs out
    assert Img2Img.VALIDATE_INPUTS() is True


def test_an_unknown_sampler_fails_validation_with_fastimgs_line():
    assert Img2Img.VALIDATE_INPUTS("default") is True
    assert Img2Img.VALIDATE_INPUTS("euler_a") is True
    message = Img2Img.VALIDATE_INPUTS("karras_magic")
    assert "karras_magic" in message and "euler_a" in message and "\n" not in message


def test_loading_refuses_an_empty_folder_and_a_bad_backend_by_name(tiny):
    with pytest.raises(InputError, match="no engine folder"):
        LoadEngines().load("  ", "auto", "auto")
    with pytest.raises(EngineError):
        LoadEngines().load(str(tiny[1]), "openvino", "int8")


def test_is_changed_follows_the_folders_manifest(tiny):
    same = LoadEngines.IS_CHANGED(str(tiny[1]), "onnxruntime", "fp32")
    assert same == LoadEngines.IS_CHANGED(str(tiny[1]), "onnxruntime", "fp32")
    assert same != LoadEngines.IS_CHANGED(str(tiny[1]), "onnxruntime", "auto")


def test_img2img_without_an_engines_handle_says_what_to_connect(torch, pictures):
    with pytest.raises(InputError, match="Load fastimg engines"):
        Img2Img().transform("engines", comfy_image(pictures, torch), **CALL)


def test_a_server_url_must_be_http():
    with pytest.raises(InputError, match="not an http"):
        LoadEngines().load("", "auto", "auto", server_url="ftp://x")
    (handle,) = LoadEngines().load("", "auto", "auto", server_url="http://127.0.0.1:9/")
    assert handle == EnginesHandle("", "auto", "auto", (), "http://127.0.0.1:9")


def test_loras_load_with_the_engines_and_their_scales_apply_per_run(
    tiny, torch, pictures, tmp_path
):
    pytest.importorskip("onnx")
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg_export.random_models import write_random_model

    style = write_random_model("tiny-lora", tmp_path / "style.safetensors")
    (handle,) = LoadEngines().load(str(tiny[1]), "onnxruntime", "fp32", loras=f"{style}:0.8\n")
    image = comfy_image(pictures[:1], torch)
    styled, labels = Img2Img().transform(handle, image, **CALL)
    plain, _ = Img2Img().transform(handle, image, **CALL, lora_scales="none")
    assert labels[0]["fastimg:loras"] == "style:0.8"
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime", precision="fp32")
    pipe.load_lora(style, scale=0.8)
    for made, scales in ((styled, None), (plain, "none")):
        (expected,) = pipe("a red barn", pictures[0], strength=0.6, num_inference_steps=4,
                           guidance_scale=5.0, scheduler="euler", seed=42,
                           lora_scales=scales)  # fmt: skip
        as_saved = np.clip(255.0 * made[0].numpy(), 0, 255).astype(np.uint8)
        assert np.array_equal(as_saved, np.asarray(expected))
    assert not np.array_equal(styled.numpy(), plain.numpy())


def test_a_control_image_reaches_the_controlnet(tiny_controlnet, torch, pictures):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    folder = str(tiny_controlnet[1])
    (handle,) = LoadEngines().load(folder, "onnxruntime", "fp32")
    control = Image.fromarray(np.full((32, 48, 3), 200, np.uint8))
    image, labels = Img2Img().transform(
        handle, comfy_image(pictures[:1], torch), **CALL,
        control_image=comfy_image([control], torch), control_scale=0.5,
    )  # fmt: skip
    pipe = Img2ImgPipeline.from_engines(folder, backend="onnxruntime", precision="fp32")
    (expected,) = pipe("a red barn", pictures[0], strength=0.6, num_inference_steps=4,
                       guidance_scale=5.0, scheduler="euler", seed=42, control_image=control,
                       controlnet_conditioning_scale=0.5)  # fmt: skip
    as_saved = np.clip(255.0 * image[0].numpy(), 0, 255).astype(np.uint8)
    assert np.array_equal(as_saved, np.asarray(expected))
    assert labels[0]["fastimg:control_scale"] == 0.5


def test_img2img_shapes_the_mask_with_blur_and_masked_content(tiny, torch, pictures):
    (handle,) = LoadEngines().load(str(tiny[1]), "onnxruntime", "fp32")
    options = Img2Img.INPUT_TYPES()["optional"]
    assert options["masked_content"][0] == ["original", "fill", "latent_noise", "latent_nothing"]
    # saved workflows list widget values in input order: the older inputs keep their places
    assert list(options) == ["control_image", "control_scale", "mask", "lora_scales",
                             "mask_blur", "masked_content"]  # fmt: skip
    mask = torch.zeros((1, 32, 48))
    mask[0, 8:24, 12:36] = 1.0
    mask_picture = Image.fromarray((mask[0].numpy() * 255).astype(np.uint8))
    image = comfy_image(pictures[:1], torch)
    plain, _ = Img2Img().transform(handle, image, **CALL, mask=mask)
    shaped, labels = Img2Img().transform(
        handle, image, **CALL, mask=mask, mask_blur=4, masked_content="fill"
    )
    (expected,) = handle.pipeline()("a red barn", pictures[0], strength=0.6,
                                    num_inference_steps=4, guidance_scale=5.0,
                                    scheduler="euler", seed=42, mask_image=mask_picture,
                                    mask_blur=4, masked_content="fill")  # fmt: skip
    got = np.clip(255.0 * shaped[0].numpy(), 0, 255).astype(np.uint8)
    assert np.array_equal(got, np.asarray(expected))
    assert not np.array_equal(got, np.clip(255.0 * plain[0].numpy(), 0, 255).astype(np.uint8))
    assert labels[0]["fastimg:masked_content"] == "fill" and labels[0]["fastimg:mask_blur"] == 4
    unmasked, _ = Img2Img().transform(handle, image, **CALL, mask_blur=4, masked_content="fill")
    (alone,) = handle.pipeline()("a red barn", pictures[0], strength=0.6, num_inference_steps=4,
                                 guidance_scale=5.0, scheduler="euler", seed=42)  # fmt: skip
    got = np.clip(255.0 * unmasked[0].numpy(), 0, 255).astype(np.uint8)
    assert np.array_equal(got, np.asarray(alone))  # without a mask they shape nothing
