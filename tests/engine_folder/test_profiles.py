import numpy as np
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


def _feeds(shapes: dict, which: int) -> dict:
    """Random float32 feeds of a component's min (0), opt (1) or max (2) profile shapes."""
    rng = np.random.default_rng(which)
    return {name: rng.standard_normal(s[which]).astype(np.float32) for name, s in shapes.items()}


def test_a_controlnet_folders_profiles_are_the_shapes_its_graphs_take_and_give(
    tiny_controlnet_depth,
):
    """Each ControlNet's residuals at the profile's sizes (72 px: 9 latent cells, halved to 5)
    are the shapes the residual UNet's profile takes; the depth model keeps its fixed size."""
    import onnxruntime as ort

    manifest = load_manifest(tiny_controlnet_depth[1])
    profile = Profile((72, 72, 80), (88, 88, 88), (1, 1, 2))
    shapes = input_shapes(profile, manifest)
    controlnet, unet = shapes["controlnet"], shapes["unet_control"]
    assert controlnet["controlnet_cond"] == ((1, 3, 72, 88), (2, 3, 72, 88), (4, 3, 80, 88))
    assert controlnet["conditioning_scale"] == ((1,),) * 3
    for name in ("sample", "timestep", "encoder_hidden_states"):
        assert controlnet[name] == unet[name] == shapes["unet"][name]
    net = ort.InferenceSession(str(manifest.path("controlnet")))
    names = [o.name for o in net.get_outputs()]
    for which in range(3):  # min, opt, max
        feeds = _feeds(controlnet, which)
        feeds["conditioning_scale"] = np.ones(1, np.float32)
        residuals = dict(zip(names, net.run(None, feeds), strict=True))
        assert set(residuals) == set(manifest.control["residuals"])
        for name, array in residuals.items():
            assert array.shape == unet[name][which], name
        assert min(unet["mid_block_res"][which][2:]) < min(feeds["sample"].shape[2:])
    size = tuple(manifest.depth["size"])
    assert shapes["depth"] == {"pixel_values": ((1, 3, *size),) * 3}


@pytest.mark.parametrize(
    "layout", ["tiny_multi_controlnet", "tiny_sdxl_controlnet", "tiny_inpaint_controlnet"]
)
def test_every_controlnet_sees_the_latents_and_the_residual_unet_the_unets_rows(layout, request):
    """Several ControlNets each get a profile; SDXL's take the added conditioning a row per
    UNet image; under an inpainting UNet the ControlNet sees the 4 latent channels and the
    residual UNet the 9-channel sample."""
    manifest = load_manifest(request.getfixturevalue(layout)[1])
    shapes = input_shapes(Profile((64, 64, 128), (64, 64, 128), (1, 1, 2)), manifest)
    unet = shapes["unet"]
    names = [c["component"] for c in manifest.control["controlnets"]]
    assert set(shapes) == set(manifest.runtime_components) and len(names) >= 1
    for name in names:
        net = shapes[name]
        latents = tuple((s[0], manifest.latent_channels, *s[2:]) for s in unet["sample"])
        assert net["sample"] == latents
        assert [s[0] for s in net["controlnet_cond"]] == [s[0] for s in unet["sample"]]
        for extra in ("text_embeds", "time_ids"):
            assert (extra in net) == (extra in unet) == bool(manifest.text_conditioning)
            if extra in net:
                assert net[extra] == shapes["unet_control"][extra] == unet[extra]
    assert shapes["unet_control"]["sample"] == unet["sample"]
    assert unet["sample"][0][1] == manifest.unet_in_channels


def test_a_dimension_fastimg_cannot_size_is_refused_naming_it(tiny_controlnet):
    import json

    from fastimg.engine_folder.manifest import Manifest
    from fastimg.errors import ManifestError

    data = json.loads((tiny_controlnet[1] / "manifest.json").read_text())
    data["components"]["controlnet"]["inputs"]["controlnet_cond"]["shape"][2] = "frames"
    manifest = Manifest.from_data(tiny_controlnet[1], data)
    with pytest.raises(ManifestError, match="controlnet's input controlnet_cond.*'frames'"):
        input_shapes(Profile((64,) * 3, (64,) * 3), manifest)
