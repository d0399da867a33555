import json

import numpy as np
import pytest
from PIL import Image

from fastimg.cli import cli
from fastimg.media.images import psnr


def transform(runner, engines, *args):
    return runner.invoke(
        cli,
        [
            "transform",
            *map(str, args),
            "--engines",
            str(engines),
            "--prompt",
            "a red fox",
            "--steps",
            "4",
            "--strength",
            "0.5",
        ],
    )


def test_transform_writes_images_with_metadata(runner, tiny, picture, tmp_path):
    out = tmp_path / "out"
    result = transform(runner, tiny[1], picture, "-o", out, "--seed", "9", "--num-images", "2")
    assert result.exit_code == 0, result.output
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["in-s0.5-9-0.png", "in-s0.5-9-1.png"]
    image = Image.open(written[0])
    assert image.size == (88, 64)
    assert image.text["fastimg:seed"] == "9" and image.text["fastimg:prompt"] == "a red fox"
    assert image.text["fastimg:scheduler"] == "ddim"


def test_same_seed_same_image_and_matches_the_python_api(runner, tiny, picture, tmp_path):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for path in (a, b):
        result = transform(
            runner,
            tiny[1],
            picture,
            "-o",
            path,
            "--seed",
            "4",
            "--scheduler",
            "euler_a",
            "--guidance",
            "3",
        )
        assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    # One image: the CLI asks for no shapes, the backend's choice for one size (OpenVINO: static).
    api = Img2ImgPipeline.from_engines(tiny[1], shapes=None)(
        "a red fox",
        Image.open(picture),
        strength=0.5,
        num_inference_steps=4,
        guidance_scale=3.0,
        seed=4,
        scheduler="euler_a",
    )[0]
    assert psnr(api, Image.open(a)) == float("inf")


def test_rgba_and_palette_inputs_work(runner, tiny, photo, tmp_path):
    photo.convert("RGBA").save(tmp_path / "rgba.png")
    photo.convert("P").save(tmp_path / "pal.png")
    result = transform(
        runner,
        tiny[1],
        tmp_path / "rgba.png",
        tmp_path / "pal.png",
        "-o",
        tmp_path / "out",
        "--seed",
        "1",
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").iterdir())) == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--strength", "0.1"], "zero denoising steps"),
        (["--strength", "0"], "0<x<=1"),
        (["--strength", "1.5"], "0<x<=1"),
        (["--steps", "0"], "1<=x<=1000"),
        (["--scheduler", "pndm"], "'pndm' is not one of"),
    ],
)
def test_bad_parameters_fail_with_a_message(runner, tiny, picture, tmp_path, args, message):
    result = runner.invoke(
        cli,
        [
            "transform",
            str(picture),
            "--engines",
            str(tiny[1]),
            "--prompt",
            "x",
            "--steps",
            "4",
            "-o",
            str(tmp_path / "o"),
            *args,
        ],
    )
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_missing_engine_folder(runner, picture, tmp_path):
    result = transform(runner, tmp_path / "no-engines", picture, "-o", tmp_path / "o")
    assert result.exit_code == 1
    assert "does not exist" in result.output and "fastimg export" in result.output


def test_unreadable_image_is_reported_and_others_still_run(runner, tiny, picture, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    result = transform(runner, tiny[1], bad, picture, "-o", tmp_path / "o", "--seed", "1")
    assert result.exit_code == 1
    assert "bad.png" in result.output and "not an image" in result.output
    assert "1 of 2 images failed" in result.output
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["in-s0.5-1.png"]


def test_existing_output_needs_overwrite_and_input_is_never_the_output(
    runner, tiny, picture, tmp_path
):
    out = tmp_path / "x.png"
    out.write_bytes(b"keep")
    result = transform(runner, tiny[1], picture, "-o", out, "--seed", "1")
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert out.read_bytes() == b"keep"
    before = picture.read_bytes()
    result = transform(runner, tiny[1], picture, "-o", picture, "--seed", "1", "--overwrite")
    assert result.exit_code == 2 and "is one of the input images" in result.output
    assert picture.read_bytes() == before


def test_info_shows_the_manifest(runner, tiny):
    result = runner.invoke(cli, ["info", str(tiny[1])])
    assert result.exit_code == 0, result.output
    for text in (
        "fastimg-engine v1",
        "DDIMScheduler",
        "sampler ddim",
        "unet/model.onnx",
        "timestep float32[batch]",
        "vs torch: rel",
    ):
        assert text in result.output


def test_info_on_a_folder_that_is_not_an_engine(runner, tmp_path):
    result = runner.invoke(cli, ["info", str(tmp_path)])
    assert result.exit_code == 1 and "no manifest.json" in result.output


def test_make_model_and_export_through_the_cli(runner, tmp_path):
    pytest.importorskip("torch")
    model, engines = tmp_path / "m", tmp_path / "e"
    result = runner.invoke(cli, ["make-model", "tiny", "-o", str(model)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["export", str(model), "-o", str(engines)])
    assert result.exit_code == 0, result.output
    assert "unet: max abs error" in result.output and (engines / "manifest.json").is_file()
    result = runner.invoke(cli, ["export", str(model), "-o", str(engines)])
    assert result.exit_code == 1 and "--overwrite" in result.output


def test_export_of_a_folder_that_is_not_a_pipeline(runner, tmp_path):
    pytest.importorskip("torch")
    result = runner.invoke(cli, ["export", str(tmp_path), "-o", str(tmp_path / "e")])
    assert result.exit_code == 1 and "model_index.json" in result.output


def test_quickstart_runs_offline_and_says_where_the_result_is(runner, tmp_path):
    pytest.importorskip("torch")
    result = runner.invoke(cli, ["quickstart", "--workdir", str(tmp_path / "qs")])
    assert result.exit_code == 0, result.output
    house = tmp_path / "qs" / "house.png"
    assert str(house) in result.output
    assert Image.open(house).size == (256, 256)


def test_a_png_output_path_with_several_images_is_refused(runner, tiny, picture, tmp_path):
    result = transform(runner, tiny[1], picture, "-o", tmp_path / "one.png", "--num-images", "2")
    assert result.exit_code == 2 and "pass a folder" in result.output
    assert not (tmp_path / "one.png").exists()


def test_inputs_with_the_same_name_are_refused_before_any_work(runner, tiny, photo, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        photo.save(tmp_path / folder / "x.png")
    result = transform(
        runner, tiny[1], tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "-o", tmp_path / "o"
    )
    assert result.exit_code == 2 and "would collide" in result.output
    assert not (tmp_path / "o").exists()


def test_cli_architectures_are_the_exporters():
    pytest.importorskip("torch")
    from fastimg.cli.engines import ARCHITECTURES
    from fastimg_export.random_models import ARCHITECTURES as PIPELINES
    from fastimg_export.random_models import CONTROLNETS, DEPTHS, INPAINTS, LORAS, VAES

    BUILT = {**PIPELINES, **VAES, **LORAS, **CONTROLNETS, **INPAINTS, **DEPTHS}

    assert ARCHITECTURES == tuple(BUILT)


@pytest.mark.parametrize("name,fmt", [("x.jpg", "JPEG"), ("x.JPEG", "JPEG"), ("x.webp", "WEBP")])
def test_an_output_file_is_written_in_the_format_its_suffix_names(
    runner, tiny, picture, tmp_path, name, fmt
):
    out = tmp_path / "out" / name
    result = transform(runner, tiny[1], picture, "-o", out, "--seed", "1")
    assert result.exit_code == 0, result.output
    assert out.is_file() and Image.open(out).format == fmt


@pytest.mark.parametrize("name", ["x.bmp", "x.tif", "x.gif"])
def test_an_output_file_in_a_format_without_labels_is_refused_not_made_a_folder(
    runner, tiny, picture, tmp_path, name
):
    out = tmp_path / "out" / name
    result = transform(runner, tiny[1], picture, "-o", out)
    assert result.exit_code == 2
    assert "PNG (.png), JPEG (.jpg, .jpeg) or WebP (.webp)" in result.output
    assert not out.exists() and not out.parent.exists()


def test_each_run_says_and_records_the_backend_and_precision(runner, tiny, picture, tmp_path):
    import os
    import stat

    saved = os.umask(0o022)
    try:
        result = transform(runner, tiny[1], picture, "-o", tmp_path / "x.png", "--seed", "1")
    finally:
        os.umask(saved)
    assert result.exit_code == 0, result.output
    image = Image.open(tmp_path / "x.png")
    backend, precision = image.text["fastimg:backend"], image.text["fastimg:precision"]
    assert f"running on {backend} ({precision})" in result.output
    path = "the exact path" if precision == "fp32" else "the fast path"
    assert path in result.output
    assert stat.S_IMODE((tmp_path / "x.png").stat().st_mode) == 0o644  # not mkstemp's 0600


def test_the_exact_path_is_named_as_such(runner, tiny, picture, tmp_path):
    result = transform(
        runner, tiny[1], picture, "-o", tmp_path / "x.png", "--precision", "fp32", "--seed", "1"
    )
    assert result.exit_code == 0, result.output
    assert "(fp32): the exact path, matching diffusers" in result.output
    assert Image.open(tmp_path / "x.png").text["fastimg:precision"] == "fp32"


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda folder, model: model / "unet", "holds a UNet2DConditionModel, not a VAE"),
        (lambda folder, model: folder, "is not a VAE folder (it has no config.json)"),
        (lambda folder, model: folder / "missing-vae", "does not exist"),
        (lambda folder, model: folder / "wide", "makes 16-channel latents"),
    ],
)
def test_a_vae_that_does_not_fit_is_refused_before_any_export_work(
    runner, tiny, tmp_path, make, message
):
    pytest.importorskip("torch")
    import diffusers

    wide = tmp_path / "wide"
    diffusers.AutoencoderTiny(latent_channels=16).save_pretrained(wide)  # another architecture
    (tmp_path / "notes.txt").write_text("not a model")
    out = tmp_path / "engines"
    vae = make(tmp_path, tiny[0])
    result = runner.invoke(cli, ["export", str(tiny[0]), "-o", str(out), "--vae", str(vae)])
    assert result.exit_code == 1 and message in result.output, result.output
    assert not out.exists() and not list(tmp_path.glob(".engines*"))


def test_make_model_writes_a_taesd_shaped_vae_folder(runner, tmp_path):
    pytest.importorskip("torch")
    result = runner.invoke(cli, ["make-model", "taesd", "-o", str(tmp_path / "taesd")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "taesd" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderTiny"
    assert config["encoder_block_out_channels"] == [64, 64, 64, 64]


def _lora(path, shapes: dict):
    import torch
    from safetensors.torch import save_file

    save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, str(path))
    return path


ATTN = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d / "missing.safetensors", "LoRA file"),
        (lambda d: d, "is a folder"),
        (
            lambda d: _lora(
                d / "other.safetensors",
                {f"{ATTN}.lora_A.weight": (4, 320), f"{ATTN}.lora_B.weight": (320, 4)},
            ),
            "does not fit this model",
        ),
        (
            lambda d: _lora(
                d / "nothing.safetensors",
                {
                    "unet.no_such_block.to_q.lora_A.weight": (4, 32),
                    "unet.no_such_block.to_q.lora_B.weight": (32, 4),
                },
            ),
            "not found in the base model",
        ),
        (lambda d: _lora(d / "weights.safetensors", {"foo": (3,)}), "or is not a LoRA"),
    ],
)
def test_a_lora_that_does_not_fit_is_refused_before_any_export_work(
    runner, tiny, tmp_path, make, message
):
    pytest.importorskip("torch")
    folder = tmp_path / "loras"
    folder.mkdir()
    out = tmp_path / "engines"
    lora = make(folder)
    result = runner.invoke(cli, ["export", str(tiny[0]), "-o", str(out), "--lora", f"{lora}:0.5"])
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".engines*"))


@pytest.mark.parametrize(
    "spec,parsed",
    [
        ("a.safetensors", ("a.safetensors", 1.0)),
        ("a.safetensors:0.8", ("a.safetensors", 0.8)),
        ("latent-consistency/lcm-lora-sdv1-5", ("latent-consistency/lcm-lora-sdv1-5", 1.0)),
        ("org/name:-0.5", ("org/name", -0.5)),
        ("C:/loras/a.safetensors", ("C:/loras/a.safetensors", 1.0)),
        ("C:\\loras\\a.safetensors:0.5", ("C:\\loras\\a.safetensors", 0.5)),
    ],
)
def test_export_and_run_time_read_lora_specs_alike(spec, parsed):
    pytest.importorskip("torch")
    from fastimg_export import lora

    assert lora.parse_lora_spec(spec) == parsed  # the export's own, the runtime's parser


def test_export_refuses_a_lora_scale_that_is_no_number(runner, tiny, tmp_path):
    pytest.importorskip("torch")
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"")
    out = tmp_path / "engines"
    result = runner.invoke(
        cli, ["export", str(tiny[0]), "-o", str(out), "--lora", f"{lora}:strong"]
    )
    assert result.exit_code != 0 and "LoRA scale 'strong'" in result.output
    assert "is not a number" in result.output and not out.exists()


def test_static_shapes_give_the_same_images_as_dynamic_ones(runner, tiny, picture, tmp_path):
    import shutil

    engines = shutil.copytree(tiny[1], tmp_path / "engines")  # its caches fill up here
    images = {}
    for shapes in ("dynamic", "static", "auto"):
        out = tmp_path / f"{shapes}.png"
        args = ["--backend", "openvino", "--precision", "fp32", "--seed", "4"]
        result = transform(runner, engines, picture, "-o", out, *args, "--shapes", shapes)
        assert result.exit_code == 0, result.output
        images[shapes] = np.asarray(Image.open(out).convert("RGB"))
    assert psnr(images["static"], images["dynamic"]) >= 60.0
    assert psnr(images["auto"], images["dynamic"]) >= 60.0
    assert list((engines / "openvino_cache").glob("unet-static-*"))
    result = transform(runner, engines, picture, "-o", tmp_path / "x.png", "--shapes", "frozen")
    assert result.exit_code == 2 and "'frozen' is not one of" in result.output


@pytest.mark.parametrize(
    ("inputs", "extra", "asked"),
    [
        (1, [], None),  # one image: the backend's choice for one size
        (2, [], "dynamic"),  # two images of their own sizes: no compile per size
        (2, ["--size", "64x64"], None),  # resized to one size
        (1, ["--guidance", "1,3"], "dynamic"),  # a UNet batch of 1, then of 2
        (1, ["--shapes", "dynamic"], "dynamic"),
        (2, ["--shapes", "static"], "static"),
    ],
)
def test_the_shapes_transform_asks_for_follow_the_image_sizes_of_the_run(
    runner, tiny, photo, tmp_path, monkeypatch, inputs, extra, asked
):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    paths = []
    for k in range(inputs):
        paths.append(tmp_path / f"in{k}.png")
        photo.resize((64 + 8 * k, 64)).save(paths[-1])
    load, asks = Img2ImgPipeline.from_engines, []
    monkeypatch.setattr(Img2ImgPipeline, "from_engines", classmethod(
        lambda cls, *a, **kw: asks.append(kw["shapes"]) or load(*a, **kw)))  # fmt: skip
    result = transform(runner, tiny[1], *paths, "-o", tmp_path / "out", "--seed", "1", *extra)
    assert result.exit_code == 0, result.output
    assert asks == [asked]


def test_one_image_runs_static_shapes_on_openvino_as_a_user_types_it(runner, tiny, picture,
                                                                      tmp_path):  # fmt: skip
    import shutil

    engines = shutil.copytree(
        tiny[1], tmp_path / "engines", ignore=shutil.ignore_patterns("openvino_cache")
    )
    result = transform(runner, engines, picture, "-o", tmp_path / "a.png", "--backend", "openvino")
    assert result.exit_code == 0, result.output
    assert list((engines / "openvino_cache").glob("unet-static-*/*.blob"))  # compiled for it
    assert "openvino compiles each image size once (static shapes" in result.stderr
    shutil.rmtree(engines / "openvino_cache")
    other = tmp_path / "other.png"
    Image.open(picture).resize((72, 64)).save(other)
    result = transform(runner, engines, picture, other, "-o", tmp_path / "two", "--backend",
                       "openvino")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not list((engines / "openvino_cache").glob("unet-static-*/*.blob"))
    assert "static shapes" not in result.stderr


@pytest.mark.parametrize("bf16", [False, True])
def test_auto_runs_winograd_graphs_on_onnxruntime_where_openvino_would_run_fp32(
    runner, tiny_winograd, picture, tmp_path, monkeypatch, bf16
):
    from fastimg.backends import select

    if not select.installed("openvino"):
        pytest.skip("needs fastimg[openvino] to have a choice")
    monkeypatch.setattr(select, "cpu_supports_bf16", lambda: bf16)
    result = transform(runner, tiny_winograd[1], picture, "-o", tmp_path / "x.png")
    assert result.exit_code == 0, result.output
    # (where the CPU really lacks bf16, OpenVINO then compiles fp32 and says so)
    expected = "running on openvino (" if bf16 else "running on onnxruntime (fp32)"
    assert expected in result.output


def test_a_scheduler_without_a_sampler_is_named_once_per_run(runner, tiny, picture, tmp_path):
    import json
    import shutil

    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    manifest = json.loads((engines / "manifest.json").read_text())
    manifest["scheduler"]["_class_name"] = "PNDMScheduler"  # sd15's, which fastimg runs as ddim
    (engines / "manifest.json").write_text(json.dumps(manifest))
    result = transform(runner, engines, picture, "-o", tmp_path / "out", "--seed", "1,2")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("the model's scheduler PNDMScheduler has no fastimg sampler") == 1
