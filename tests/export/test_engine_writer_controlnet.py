import json

import pytest

from fastimg.errors import InputError

pytest.importorskip("torch")
from fastimg_export import loading, random_models  # noqa: E402


def test_a_controlnet_pipeline_exports_the_controlnet_and_a_unet_taking_its_residuals(
    tiny_controlnet,
):
    from fastimg.engine_folder.manifest import load_manifest

    manifest = load_manifest(tiny_controlnet[1])
    control = manifest.control
    assert manifest.control_components == ("controlnet", "unet_control")
    residuals = control["residuals"]
    assert residuals[-1] == "mid_block_res" and len(residuals) == 5  # conv_in, 2 + 1 layers
    controlnet = manifest.components["controlnet"]
    assert list(controlnet["inputs"]) == ["sample", "timestep", "encoder_hidden_states",
                                          "controlnet_cond", "conditioning_scale"]  # fmt: skip
    assert controlnet["inputs"]["controlnet_cond"]["shape"] == ["batch", 3, "height", "width"]
    assert list(controlnet["outputs"]) == residuals
    unet = manifest.components["unet_control"]
    assert list(unet["inputs"])[3:] == residuals
    for name in ("controlnet", "unet_control", "unet"):  # verified against PyTorch
        parity = manifest.components[name]["parity"]
        assert parity["max_rel_error"] <= parity["tolerance"]
    assert list(manifest.components["unet"]["inputs"]) == ["sample", "timestep",
                                                           "encoder_hidden_states"]  # fmt: skip


def test_a_folder_without_control_still_loads(tiny_controlnet, tmp_path):
    """Older folders (and folders exported without a ControlNet) have no `control`."""
    from fastimg.engine_folder.manifest import Manifest

    data = json.loads((tiny_controlnet[1] / "manifest.json").read_text())
    data.pop("control")
    for name in ("controlnet", "unet_control"):
        data["components"].pop(name)
        data["memory"].pop(name)  # (recorded since the memory estimate counts them)
    manifest = Manifest.from_data(tmp_path, data)
    assert manifest.control == {} and manifest.control_components == ()


def test_a_control_entry_naming_a_missing_component_is_refused(tiny_controlnet, tmp_path):
    from fastimg.engine_folder.manifest import Manifest
    from fastimg.errors import ManifestError

    data = json.loads((tiny_controlnet[1] / "manifest.json").read_text())
    data["components"].pop("unet_control")
    with pytest.raises(ManifestError, match="unet_control"):
        Manifest.from_data(tmp_path, data)


def _controlnet(**config):
    import diffusers

    unet = dict(random_models.ARCHITECTURES["tiny"]["unet"])
    unet.pop("up_block_types"), unet.pop("sample_size")
    return diffusers.ControlNetModel(
        **{**unet, **config}, conditioning_embedding_out_channels=(8, 16, 32, 32)
    )


@pytest.mark.parametrize(
    "config,message",
    [
        ({"cross_attention_dim": 48}, "48-wide text embeddings, but this model's UNet to 32"),
        ({"layers_per_block": 2}, "blocks .* are not this UNet's"),
        ({"global_pool_conditions": True}, "global_pool_conditions"),
        ({"in_channels": 9}, "takes 9 input channels, but a ControlNet sees the 4 latent"),
    ],
)
def test_a_controlnet_that_does_not_fit_the_unet_is_refused_by_name(config, message):
    pipe = random_models.build_pipeline("tiny")
    with pytest.raises(InputError, match=message):
        loading.add_controlnet(pipe, _controlnet(**config), "cn")


def test_a_controlnet_for_another_architecture_is_refused(tiny_sdxl_controlnet):
    pipe = random_models.build_pipeline("tiny-sdxl")
    with pytest.raises(InputError, match=r"cn is made for SD 1.x/2.x \(added conditioning None"
                                         r"\), but this is an SDXL model"):  # fmt: skip
        loading.add_controlnet(pipe, _controlnet(), "cn")
    xl = loading.load_controlnet(str(tiny_sdxl_controlnet[0]))
    plain = random_models.build_pipeline("tiny")
    with pytest.raises(InputError, match="is made for SDXL .* but this is an SD 1.x/2.x model"):
        loading.add_controlnet(plain, xl, "xl")


def test_a_folder_that_is_no_controlnet_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(InputError, match="not a ControlNet folder .*AutoencoderKL"):
        loading.load_controlnet(str(tmp_path))


def test_export_controlnet_adds_one_to_a_plain_model_or_several(
    tiny_controlnet, tiny_multi_controlnet, tmp_path
):
    from click.testing import CliRunner

    from fastimg.cli.main import cli
    from fastimg.engine_folder.manifest import load_manifest

    model = random_models.write_random_model("tiny", tmp_path / "model")
    controlnet = tiny_controlnet[0] / "controlnet"
    args = ["export", str(model), "-o", str(tmp_path / "engines"), "--controlnet", str(controlnet)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "engines")
    assert manifest.control["controlnets"][0]["source"] == str(controlnet)
    # two, in the order given: each its own component, their residuals for one UNet
    second = tiny_multi_controlnet[0] / "controlnet_1"
    two = ["export", str(model), "-o", str(tmp_path / "e2"), *args[-2:], "--controlnet",
           str(second)]  # fmt: skip
    twice = CliRunner().invoke(cli, two)
    assert twice.exit_code == 0, twice.output
    manifest = load_manifest(tmp_path / "e2")
    assert [(c["component"], c["source"]) for c in manifest.control["controlnets"]] == [
        ("controlnet", str(controlnet)), ("controlnet_1", str(second))]  # fmt: skip
    assert manifest.control_components == ("controlnet", "controlnet_1", "unet_control")
    for name in manifest.control_components:  # verified against PyTorch, memory modelled
        parity = manifest.components[name]["parity"]
        assert parity["max_rel_error"] <= parity["tolerance"]
        assert manifest.memory_model(name) is not None
    assert list(manifest.components["controlnet_1"]["outputs"]) == manifest.control["residuals"]


def test_a_multi_controlnet_pipeline_exports_each_controlnet(tiny_multi_controlnet):
    from fastimg.engine_folder.manifest import load_manifest

    model, engines = tiny_multi_controlnet
    assert json.loads((model / "model_index.json").read_text())["controlnet"][1] == (
        "MultiControlNetModel"
    )
    manifest = load_manifest(engines)
    names = [c["component"] for c in manifest.control["controlnets"]]
    assert names == ["controlnet", "controlnet_1"]
    sums = {(engines / name / "model.onnx").read_bytes() for name in ("controlnet", "controlnet_1")}
    assert len(sums) == 2  # two ControlNets, not one twice


def test_a_pipeline_index_with_other_controlnet_kinds_is_refused_by_name():
    index = {"_class_name": "StableDiffusionControlNetImg2ImgPipeline", "unet": ["d", "U"]}
    for kind in ("ControlNetModel", "MultiControlNetModel"):
        cls, _ = loading.pipeline_class({**index, "controlnet": ["diffusers", kind]})
        assert cls.__name__ == "StableDiffusionControlNetImg2ImgPipeline"
    with pytest.raises(InputError, match="has a ControlNetXSAdapter as its controlnet"):
        loading.pipeline_class({**index, "controlnet": ["diffusers", "ControlNetXSAdapter"]})


def test_an_sdxl_controlnet_takes_the_unets_added_conditioning(tiny_sdxl_controlnet, tmp_path):
    """tiny-sdxl-controlnet (a StableDiffusionXLControlNetImg2ImgPipeline folder) exports its
    ControlNet with SDXL's text_embeds and time_ids, and so does --controlnet on a plain SDXL
    base model."""
    from click.testing import CliRunner

    from fastimg.cli.main import cli
    from fastimg.engine_folder.manifest import load_manifest

    manifest = load_manifest(tiny_sdxl_controlnet[1])
    assert manifest.control_components == ("controlnet", "unet_control")
    controlnet = manifest.components["controlnet"]
    assert list(controlnet["inputs"]) == ["sample", "timestep", "encoder_hidden_states",
                                          "controlnet_cond", "conditioning_scale", "text_embeds",
                                          "time_ids"]  # fmt: skip
    unet = manifest.components["unet_control"]
    assert list(unet["inputs"])[3:5] == ["text_embeds", "time_ids"]
    assert list(unet["inputs"])[5:] == manifest.control["residuals"]
    for name in manifest.control_components:
        parity = manifest.components[name]["parity"]
        assert parity["max_rel_error"] <= parity["tolerance"]
    model = random_models.write_random_model("tiny-sdxl", tmp_path / "model")
    args = ["export", str(model), "-o", str(tmp_path / "engines"), "--controlnet",
            str(tiny_sdxl_controlnet[0] / "controlnet")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    added = load_manifest(tmp_path / "engines")
    assert added.control["controlnets"][0]["source"] == args[-1]
    assert added.components["controlnet"]["inputs"] == controlnet["inputs"]


def test_an_inpainting_controlnet_pipeline_exports_a_9_channel_unet_taking_residuals(
    tiny_inpaint_controlnet,
):
    """StableDiffusionControlNetInpaintPipeline: the UNets take [latents, mask, masked image
    latents], the ControlNet the latents alone (as diffusers feeds them), all verified."""
    from fastimg.engine_folder.manifest import load_manifest

    model, engines = tiny_inpaint_controlnet
    index = json.loads((model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionControlNetInpaintPipeline"
    cls, _ = loading.pipeline_class(index)
    assert cls.__name__ == "StableDiffusionControlNetInpaintPipeline"
    manifest = load_manifest(engines)
    assert manifest.inpainting and manifest.control_components == ("controlnet", "unet_control")
    inputs = {name: manifest.components[name]["inputs"]["sample"]["shape"][1]
              for name in ("unet", "unet_control", "controlnet")}  # fmt: skip
    assert inputs == {"unet": 9, "unet_control": 9, "controlnet": 4}
    for name in ("controlnet", "unet_control", "unet"):
        parity = manifest.components[name]["parity"]
        assert parity["max_rel_error"] <= parity["tolerance"]


def test_export_controlnet_adds_one_to_an_inpainting_model(tiny_controlnet, tmp_path):
    from click.testing import CliRunner

    from fastimg.cli.main import cli
    from fastimg.engine_folder.manifest import load_manifest

    model = random_models.write_random_model("tiny-inpaint", tmp_path / "model")
    controlnet = tiny_controlnet[0] / "controlnet"
    args = ["export", str(model), "-o", str(tmp_path / "engines"), "--controlnet", str(controlnet)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "engines")
    assert manifest.inpainting and manifest.control["controlnets"][0]["source"] == str(controlnet)
    assert manifest.components["unet_control"]["inputs"]["sample"]["shape"][1] == 9
