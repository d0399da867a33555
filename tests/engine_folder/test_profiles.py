import pytest

from fastimg.engine_folder.manifest import load_manifest
from fastimg.engine_folder.profiles import Profile, input_shapes, parse_range
from fastimg.errors import InputError


@pytest.mark.parametrize(
    "text,expected",
    [
        ("512", (512, 512, 512)),
        ("256-768", (256, 256, 768)),
        ("256:512:768", (256, 512, 768)),
        (" 64 ", (64, 64, 64)),
    ],
)
def test_ranges_parse(text, expected):
    assert parse_range(text, 8) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "must be N"),
        ("a-b", "must be N"),
        ("1-2-3-4", "must be N"),
        ("768-256", "min <= opt <= max"),
        ("0", "min <= opt <= max"),
        ("256:128:512", "min <= opt <= max"),
        ("500", "multiple of 8"),
    ],
)
def test_bad_ranges_are_refused(text, message):
    with pytest.raises(InputError, match=message):
        parse_range(text, 8, "--height")


def test_static_and_dynamic_profiles():
    static = Profile((512, 512, 512), (512, 512, 512))
    assert static.static and static.key() == "h512_w512_b1"
    dynamic = Profile((256, 512, 768), (512, 512, 512), (1, 1, 4))
    assert not dynamic.static and dynamic.key() == "h256-512-768_w512_b1-1-4"
    assert Profile.from_dict(dynamic.to_dict()) == dynamic
    assert dynamic.admits(768, 512, 4) and not dynamic.admits(800, 512, 1)
    assert not dynamic.admits(512, 520, 1) and not dynamic.admits(512, 512, 5)


def test_input_shapes_follow_how_the_pipeline_calls_each_engine(tiny):
    manifest = load_manifest(tiny[1])
    shapes = input_shapes(Profile((256, 256, 512), (384, 384, 384), (1, 2, 3)), manifest)
    assert shapes["text_encoder"]["input_ids"] == ((1, 77), (2, 77), (2, 77))
    assert shapes["vae_encoder"]["sample"] == ((1, 3, 256, 384), (1, 3, 256, 384), (1, 3, 512, 384))
    unet = shapes["unet"]
    assert unet["sample"] == ((1, 4, 32, 48), (4, 4, 32, 48), (6, 4, 64, 48))  # CFG doubles
    assert unet["timestep"] == ((1,), (4,), (6,))
    assert unet["encoder_hidden_states"][2] == (6, 77, 32)
    assert shapes["vae_decoder"]["latent_sample"][2] == (3, 4, 64, 48)


def test_an_sdxl_inpainting_unets_profile_takes_its_9_channels(tiny_sdxl_inpaint):
    """The GPU backends' profiles give an inpainting UNet its sample's 9 channels (latents,
    mask, masked image latents) beside SDXL's rows of added conditioning; the decoder 4."""
    manifest = load_manifest(tiny_sdxl_inpaint[1])
    shapes = input_shapes(Profile((256, 256, 512), (384, 384, 384), (1, 2, 3)), manifest)
    unet = shapes["unet"]
    assert unet["sample"] == ((1, 9, 32, 48), (4, 9, 32, 48), (6, 9, 64, 48))
    assert [s[0] for s in unet["time_ids"]] == [1, 4, 6] and "text_embeds" in unet
    assert shapes["vae_decoder"]["latent_sample"][2] == (3, 4, 64, 48)
