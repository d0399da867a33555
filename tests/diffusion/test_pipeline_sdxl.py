"""SDXL engine folders in the runtime: manifest, prompt encoding shapes, and refusals of
arguments that do not fit the folder's model family."""

import numpy as np
import pytest

from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.engine_folder.manifest import load_manifest
from fastimg.engine_folder.schema import validate
from fastimg.errors import InputError, ManifestError

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def base(tiny_sdxl):
    return Img2ImgPipeline.from_engines(tiny_sdxl[1], backend="onnxruntime", precision="fp32")


@pytest.fixture(scope="module")
def refiner(tiny_sdxl_refiner):
    folder = tiny_sdxl_refiner[1]
    return Img2ImgPipeline.from_engines(folder, backend="onnxruntime", precision="fp32")


def test_text_is_both_encoders_states_and_the_pooled_embedding(base):
    text = base.encode_text("a cat", "a dog", cfg=True, prompt_2="x", negative_prompt_2="y")
    assert text["encoder_hidden_states"].shape == (2, 77, 32 + 48)
    assert text["text_embeds"].shape == (2, 40)
    zeros = base.encode_text("a cat", None, cfg=True)  # force_zeros_for_empty_prompt
    assert not zeros["encoder_hidden_states"][0].any() and not zeros["text_embeds"][0].any()
    assert zeros["encoder_hidden_states"][1].any()
    alone = base.encode_text("a cat", None, cfg=False)
    np.testing.assert_array_equal(alone["text_embeds"][0], zeros["text_embeds"][1])


def test_refiner_encodes_with_its_one_encoder(refiner):
    text = refiner.encode_text("a cat", None, cfg=True)  # no force_zeros: "" is encoded
    assert text["encoder_hidden_states"].shape == (2, 77, 48)
    assert text["encoder_hidden_states"][0].any() and text["text_embeds"][0].any()


def test_sd_folder_refuses_sdxl_arguments(tiny, photo):
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime", precision="fp32")
    with pytest.raises(InputError, match="prompt_2, target_size are SDXL arguments.*SD 1.x"):
        pipe("a cat", photo, prompt_2="x", target_size=(64, 64), num_inference_steps=2)


def test_base_refuses_aesthetic_scores_and_refiner_the_target_size(base, refiner, photo):
    with pytest.raises(InputError, match="aesthetic_score does not apply to SDXL base"):
        base("a cat", photo, aesthetic_score=7.0, num_inference_steps=2)
    with pytest.raises(InputError, match="target_size does not apply to the SDXL refiner"):
        refiner("a cat", photo, target_size=(64, 64), num_inference_steps=2)


@pytest.mark.parametrize("size", [(64,), (0, 64), "64x64", (64.5, 64)])
def test_bad_sizes_are_refused(base, photo, size):
    with pytest.raises(InputError, match="original_size must be (two|a) whole number"):
        base("a cat", photo, original_size=size, num_inference_steps=2)


def test_manifest_listing_text_encoder_2_needs_tokenizer_2(tiny_sdxl):
    data = dict(load_manifest(tiny_sdxl[1]).data)
    del data["tokenizer_2"]
    with pytest.raises(ManifestError, match="tokenizer_2 is missing"):
        validate(data, "manifest.json", "fix")
    data = dict(load_manifest(tiny_sdxl[1]).data)
    data["components"] = {k: v for k, v in data["components"].items() if k != "text_encoder_2"}
    with pytest.raises(ManifestError, match="components lacks text_encoder_2"):
        validate(data, "manifest.json", "fix")
