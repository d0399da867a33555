"""The mask prepared as StableDiffusionInpaintPipeline prepares it, and the checks of a call
with a mask."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fastimg.diffusion import masks
from fastimg.engine_folder.manifest import Manifest
from fastimg.errors import InputError
from fastimg.media import images
from fastimg.settings import CallSettings
from tests.manifests import SPEC, complete, component


def _mask(seed: int = 0, size=(90, 68), mode="L") -> Image.Image:
    rng = np.random.default_rng(seed)
    values = (rng.random((size[1], size[0])) * 255).astype(np.uint8)
    return Image.fromarray(values).convert(mode)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "1"])
def test_binarize_is_diffusers_mask_processor(mode):
    torch = pytest.importorskip("torch")
    from diffusers.image_processor import VaeImageProcessor

    image = _mask(mode=mode)
    processor = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True,
                                  do_convert_grayscale=True)  # fmt: skip
    expected = processor.preprocess(image, height=64, width=88)[0, 0].numpy()
    got = masks.binarize(image, 64, 88)
    assert got.dtype == np.float32 and set(np.unique(got)) <= {0.0, 1.0}
    assert np.array_equal(got, expected)
    down = torch.nn.functional.interpolate(torch.from_numpy(got)[None, None], size=(8, 11))
    assert np.array_equal(masks.to_latent_size(got[None, None], 8, 11), down.numpy())


def test_to_latent_size_is_torch_nearest_for_any_size():
    torch = pytest.importorskip("torch")
    mask = (np.random.default_rng(1).random((1, 1, 37, 53)) > 0.5).astype(np.float32)
    for size in [(5, 7), (9, 13), (37, 53)]:
        down = torch.nn.functional.interpolate(torch.from_numpy(mask), size=size).numpy()
        assert np.array_equal(masks.to_latent_size(mask, *size), down)


def test_invert_swaps_repainted_and_kept():
    image = _mask(2)
    plain = masks.binarize(image, 64, 88)
    inverted = masks.binarize(image, 64, 88, invert=True)
    values = np.asarray(image.resize((88, 64), Image.LANCZOS), np.float32) / 255
    undecided = values == 0.5  # (exactly 0.5 is repainted either way, as diffusers binarizes)
    assert np.array_equal(inverted[~undecided], 1 - plain[~undecided])


def test_prepare_mask_blacks_out_the_repainted_region_and_refuses_an_empty_mask():
    pixels = np.full((1, 3, 64, 88), 0.5, np.float32)
    white = np.zeros((68, 90), np.uint8)
    white[:34] = 255
    mask = masks.prepare_mask(CallSettings("x", mask_image=Image.fromarray(white)), pixels, 8)
    assert mask.pixels.shape == (1, 1, 64, 88) and mask.latent.shape == (1, 1, 8, 11)
    assert np.all(mask.masked_pixels[..., :30, :] == 0)
    assert np.all(mask.masked_pixels[..., 34:, :] == 0.5)
    empty = CallSettings("x", mask_image=Image.new("L", (90, 68)))
    with pytest.raises(InputError, match="the mask is empty"):
        masks.prepare_mask(empty, pixels, 8)
    with pytest.raises(InputError, match="mask_image must be a PIL image or a path"):
        masks.prepare_mask(CallSettings("x", mask_image=3), pixels, 8)


def test_a_mask_file_that_is_not_an_image_is_an_input_error(tmp_path):
    path = tmp_path / "mask.png"
    path.write_text("not an image")
    pixels = np.zeros((1, 3, 64, 88), np.float32)
    with pytest.raises(InputError, match="mask.png"):
        masks.prepare_mask(CallSettings("x", mask_image=str(path)), pixels, 8)


def _manifest(channels: int | None = None) -> Manifest:
    unet = {"inputs": {"sample": {"dtype": "float32", "shape": [1]}}}
    fields = {} if channels is None else {"unet_in_channels": channels}
    return Manifest.from_data(None, complete({"unet": unet}, **fields))


def test_checks_of_a_call_with_or_without_a_mask():
    mask = Image.new("L", (8, 8), 255)
    masks.check_settings(_manifest(), CallSettings("x"))
    masks.check_settings(_manifest(), CallSettings("x", mask_image=mask))  # plain: fine
    masks.check_settings(_manifest(9), CallSettings("x", mask_image=mask))
    with pytest.raises(InputError, match="inpainting UNet, which needs a mask"):
        masks.check_settings(_manifest(9), CallSettings("x"))
    with pytest.raises(InputError, match="no mask was given"):
        masks.check_settings(_manifest(), CallSettings("x", mask_invert=True))
    with pytest.raises(InputError, match="cannot take a mask"):
        masks.check_settings(_manifest(7), CallSettings("x", mask_image=mask))
    masks.check_settings(_manifest(), CallSettings("x", mask_image=mask, control_image=mask))
    xl = {"text_encoders": ["text_encoder", "text_encoder_2"], "pooled": "text_encoder_2"}
    unet = {"inputs": {"sample": {"dtype": "float32", "shape": [1]}}}
    tokenizer_2 = {"path": "tokenizer_2/tokenizer.json", "max_length": 77, "pad_id": 0}
    sdxl = Manifest.from_data(None, complete({"unet": unet, "text_encoder_2": component(
        "text_encoder_2")}, text_conditioning=xl, tokenizer_2=tokenizer_2))  # fmt: skip
    masks.check_settings(sdxl, CallSettings("x", mask_image=mask))  # SDXL inpaints too
    lcm = {"inputs": {"sample": unet["inputs"]["sample"], "timestep_cond": SPEC}}
    masks.check_settings(Manifest.from_data(None, complete({"unet": lcm})),
                         CallSettings("x", mask_image=mask))  # an LCM too  # fmt: skip


def test_transform_with_a_mask_end_to_end(tiny_inpaint, photo, tmp_path):
    from click.testing import CliRunner

    from fastimg.cli.main import cli

    photo.save(tmp_path / "in.png")
    white = np.zeros((68, 90), np.uint8)
    white[10:50, 30:80] = 255
    Image.fromarray(white).save(tmp_path / "mask.png")
    Image.new("L", (90, 68)).save(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("not an image")
    base = ["transform", str(tmp_path / "in.png"), "--engines", str(tiny_inpaint[1]),
            "--prompt", "a fox", "--steps", "4", "--seed", "1"]  # fmt: skip

    def run(*more, out="out.png"):
        return CliRunner().invoke(cli, [*base, *more, "-o", str(tmp_path / out)])

    info = CliRunner().invoke(cli, ["info", str(tiny_inpaint[1])])
    assert "the UNet takes a mask (9 channels)" in info.output
    result = run("--mask", str(tmp_path / "mask.png"))
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out.png").info["fastimg:mask"] == "given"
    result = run("--mask", str(tmp_path / "mask.png"), "--mask-invert", out="inv.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "inv.png").info["fastimg:mask"] == "inverted"
    for content in ("latent_noise", "latent_nothing", "fill"):
        result = run("--mask", str(tmp_path / "mask.png"), "--strength", "0.7",
                     "--masked-content", content, out=f"{content}.png")  # fmt: skip
        assert result.exit_code == 0, result.output
        made = Image.open(tmp_path / f"{content}.png")
        assert made.info["fastimg:masked_content"] == content
    result = run("--mask", str(tmp_path / "mask.png"), "--strength", "0.7", out="orig.png")
    assert result.exit_code == 0, result.output
    original = np.asarray(Image.open(tmp_path / "orig.png"))
    for content in ("latent_noise", "latent_nothing", "fill"):
        assert not np.array_equal(np.asarray(Image.open(tmp_path / f"{content}.png")), original)
    result = run("--mask", str(tmp_path / "mask.png"), "--masked-content", "noise", out="x.png")
    assert result.exit_code == 2 and "'noise' is not one of 'original', 'fill'" in result.output
    for more, message in [
        ((), "needs a mask"),
        (("--mask", str(tmp_path / "empty.png")), "the mask is empty"),
        (("--mask", str(tmp_path / "text.png")), "text.png is not an image"),
    ]:
        result = run(*more, out="bad.png")
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "bad.png").exists()


def test_the_only_masked_steps_are_diffusers_image_processor():
    """crop_region, resize_and_fill and apply_overlay against VaeImageProcessor's own, on
    masks whose boxes hit each edge and both aspect-ratio branches."""
    pytest.importorskip("torch")
    from diffusers.image_processor import VaeImageProcessor

    from fastimg.diffusion import inpaint_area

    processor = VaeImageProcessor(vae_scale_factor=8)
    rng = np.random.default_rng(3)
    image = Image.fromarray((rng.random((68, 90, 3)) * 255).astype(np.uint8))
    boxes = [(24, 44, 50, 70), (0, 10, 0, 90), (30, 68, 85, 90), (5, 60, 40, 45), (33, 34, 2, 3)]
    for (top, bottom, left, right), pad, (w, h) in zip(
        boxes, [4, 0, 16, 3, 100], [(88, 64), (64, 88), (64, 64), (88, 64), (40, 96)],
        strict=True,
    ):  # fmt: skip
        values = np.zeros((68, 90), np.uint8)
        values[top:bottom, left:right] = 200
        mask = Image.fromarray(values).filter(ImageFilter.GaussianBlur(2))
        crop = inpaint_area.crop_region(mask, w, h, pad)
        assert crop == processor.get_crop_region(mask, w, h, pad=pad)
        for picture in (image, mask):
            expected = processor._resize_and_fill(picture.crop(crop), w, h)
            got = inpaint_area.resize_and_fill(picture.crop(crop), w, h)
            assert np.array_equal(np.asarray(got), np.asarray(expected))
        made = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
        for box in (crop, None):
            made_here = made if box else made.resize(image.size)
            expected = processor.apply_overlay(mask, image, made_here, box)
            got = inpaint_area.apply_overlay(mask, image, made_here, box)
            assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_blur_only_masked_and_keep_unmasked_in_the_prepared_mask():
    pixels = np.linspace(-1, 1, 3 * 64 * 88, dtype=np.float32).reshape(1, 3, 64, 88)
    white = np.zeros((64, 88), np.uint8)
    white[20:40, 30:50] = 255
    given = Image.fromarray(white)
    plain = masks.prepare_mask(CallSettings("x", mask_image=given), pixels, 8)
    assert (
        plain.overlay is None
        and plain.image_pixels is pixels
        and plain.tags == (("fastimg:mask", "given"),)
    )
    blurred = masks.prepare_mask(CallSettings("x", mask_image=given, mask_blur=6), pixels, 8)
    assert not np.array_equal(blurred.pixels, plain.pixels)  # the seam moves, binarized
    assert blurred.labels() == {"fastimg:mask": "given", "fastimg:mask_blur": 6}
    kept = masks.prepare_mask(CallSettings("x", mask_image=given, keep_unmasked=True), pixels, 8)
    gray, original, crop = kept.overlay
    assert crop is None and np.array_equal(np.asarray(gray), white)
    assert np.array_equal(np.asarray(original), images.to_uint8(pixels)[0])
    only = CallSettings("x", mask_image=given, padding_mask_crop=2, mask_invert=False)
    cropped = masks.prepare_mask(only, pixels, 8)
    assert cropped.overlay[2] == (24, 18, 57, 42)  # the 24 x 24 padded box, widened to 88:64
    assert cropped.image_pixels.shape == pixels.shape
    assert not np.array_equal(cropped.image_pixels, pixels)
    assert cropped.pixels.mean() > 2 * plain.pixels.mean()  # the block fills more of the crop
    inverted = masks.prepare_mask(only.with_values(mask_invert=True), pixels, 8)
    assert inverted.overlay[2] == (0, 0, 88, 64)  # all but the block: the whole image
    assert np.array_equal(np.asarray(inverted.overlay[0]), 255 - white)


def test_checks_of_the_mask_settings():
    mask = Image.new("L", (8, 8), 255)
    shaping = [
        ("mask_blur", "--mask-blur PX"),
        ("padding_mask_crop", "--inpaint-area masked"),
        ("keep_unmasked", "--keep-unmasked"),
    ]
    for name, option in shaping:
        value = True if name == "keep_unmasked" else 4
        with pytest.raises(InputError, match=f"{name} \\({option}\\) shapes a mask, but no"):
            masks.check_settings(_manifest(), CallSettings("x", **{name: value}))
    masks.check_settings(_manifest(), CallSettings("x", mask_blur=0))  # (no blur: nothing given)
    for name, option in [("mask_blur", "--mask-blur"), ("padding_mask_crop", "--mask-padding")]:
        for value in (-1, 10**30):
            with pytest.raises(InputError, match=f"{name} \\({option}\\) is a number of pixels"):
                masks.check_settings(
                    _manifest(), CallSettings("x", mask_image=mask, **{name: value})
                )
    with pytest.raises(InputError, match="keep_unmasked must be True or False"):
        masks.check_settings(_manifest(), CallSettings("x", mask_image=mask, keep_unmasked=1))


def test_transform_only_masked_with_a_blurred_mask(tiny_inpaint, photo, tmp_path):
    from click.testing import CliRunner

    from fastimg.cli.main import cli

    photo.save(tmp_path / "in.png")
    white = np.zeros((68, 90), np.uint8)
    white[24:44, 50:70] = 255
    Image.fromarray(white).save(tmp_path / "mask.png")
    base = ["transform", str(tmp_path / "in.png"), "--engines", str(tiny_inpaint[1]),
            "--prompt", "a fox", "--steps", "4", "--seed", "1", "--mask",
            str(tmp_path / "mask.png")]  # fmt: skip

    def run(*more, out="out.png"):
        return CliRunner().invoke(cli, [*base, *more, "-o", str(tmp_path / out)])

    result = run("--inpaint-area", "masked", "--mask-blur", "3")
    assert result.exit_code == 0, result.output
    out = Image.open(tmp_path / "out.png")
    assert out.size == photo.size  # pasted back over the original, not the engine's 88 x 64
    assert out.info["fastimg:mask_padding"] == "32" and out.info["fastimg:mask_blur"] == "3"
    assert np.array_equal(np.asarray(out.convert("RGB"))[:, :12], np.asarray(photo)[:, :12])
    photo.crop((0, 0, 88, 64)).save(tmp_path / "in88.png")
    Image.fromarray(white[:64, :88]).save(tmp_path / "mask88.png")
    base[1], base[-1] = str(tmp_path / "in88.png"), str(tmp_path / "mask88.png")
    result = run("--keep-unmasked", out="kept.png")
    assert result.exit_code == 0, result.output
    kept = np.asarray(Image.open(tmp_path / "kept.png").convert("RGB"))
    outside = white[:64, :88] == 0
    assert np.array_equal(kept[outside], np.asarray(photo)[:64, :88][outside])
    assert not np.array_equal(kept[~outside], np.asarray(photo)[:64, :88][~outside])
    for more, message in [
        (("--mask-padding", "8"), "--mask-padding pads the region that --inpaint-area masked"),
        (("--mask-blur", "-3"), "mask_blur (--mask-blur) is a number of pixels, 0 or more"),
        (("--inpaint-area", "masked", "--mask-padding", "-1"), "padding_mask_crop (--mask-pad"),
    ]:
        result = run(*more, out="bad.png")
        assert result.exit_code == 1 and message in result.output, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and "Traceback" not in result.output
        assert not (tmp_path / "bad.png").exists()


def test_a_job_file_with_a_mask_column_runs(tiny_inpaint, photo, tmp_path):
    from click.testing import CliRunner

    from fastimg.cli.main import cli

    photo.crop((0, 0, 88, 64)).save(tmp_path / "in.png")
    white = np.zeros((64, 88), np.uint8)
    white[10:40, 20:60] = 255
    Image.fromarray(white).save(tmp_path / "mask.png")
    (tmp_path / "jobs.csv").write_text(
        "image,prompt,mask,keep_unmasked,mask_blur,seed,steps\n"
        "in.png,a fox,mask.png,true,2,1,3\n"
        "in.png,a fox,,,,1,3\n"
    )
    out = tmp_path / "out"
    args = ["run", str(tmp_path / "jobs.csv"), "--engines", str(tiny_inpaint[1]), "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "needs a mask" in result.output, result.output  # row 2
    assert not out.exists()  # every row is checked before any runs
    (tmp_path / "jobs.csv").write_text(
        "image,prompt,mask,keep_unmasked,mask_blur,masked_content,seed,steps\n"
        "in.png,a fox,mask.png,true,2,latent_nothing,1,3\n"
    )
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (made,) = out.iterdir()
    image = Image.open(made)
    assert (image.info["fastimg:keep_unmasked"], image.info["fastimg:mask_blur"]) == ("True", "2")
    assert image.info["fastimg:masked_content"] == "latent_nothing"
    soft = np.asarray(Image.fromarray(white).filter(ImageFilter.GaussianBlur(2))) == 0
    assert np.array_equal(np.asarray(image.convert("RGB"))[soft], np.asarray(photo)[:64, :88][soft])


@pytest.mark.parametrize(
    "more,message",
    [
        (("--inpaint-area", "masked"), "padding_mask_crop (--inpaint-area masked) shapes a mask"),
        (("--keep-unmasked",), "keep_unmasked (--keep-unmasked) shapes a mask, but no mask"),
        (("--mask-blur", "4"), "mask_blur (--mask-blur PX) shapes a mask, but no mask was given"),
        (("--masked-content", "fill"), "masked_content (--masked-content) shapes a mask, but no"),
        (("--mask-padding", "8"), "--mask-padding pads the region that --inpaint-area masked"),
    ],
)
def test_mask_options_without_a_mask_are_one_line_and_exit_1(tiny, photo, tmp_path, more, message):
    from click.testing import CliRunner

    from fastimg.cli.main import cli

    photo.save(tmp_path / "in.png")
    args = ["transform", str(tmp_path / "in.png"), "--engines", str(tiny[1]), "--prompt", "a fox",
            "--steps", "2", *more, "-o", str(tmp_path / "out.png")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and message in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and ("pass one" in errors[0] or "add --inpaint-area" in errors[0])
    assert not (tmp_path / "out.png").exists()


def test_only_masked_with_a_mask_of_another_size_is_resized_to_the_original():
    """diffusers wants the mask at the image's size for padding_mask_crop (its apply_overlay
    pastes through it); fastimg resizes a mask of another size to the original's first."""
    image = Image.fromarray((np.random.default_rng(5).random((68, 90, 3)) * 255).astype(np.uint8))
    pixels = images.to_pixels(image, 8)
    half = np.zeros((34, 45), np.uint8)
    half[10:20, 20:30] = 255
    settings = CallSettings("x", mask_image=Image.fromarray(half), padding_mask_crop=4)
    mask = masks.prepare_mask(settings, pixels, 8, image)
    gray, original, crop = mask.overlay
    assert gray.size == original.size == image.size and np.array_equal(original, image)
    x1, y1, x2, y2 = crop
    assert x1 <= 40 - 4 and y1 <= 20 - 4 and x2 >= 60 + 4 and y2 >= 40 + 4  # the block, padded
    assert mask.pixels.shape == (1, 1, 64, 88) and mask.image_pixels.shape == pixels.shape
    made = Image.new("RGB", (88, 64), (255, 0, 0))
    out = np.asarray(mask.finish(made))
    assert out.shape == (68, 90, 3)
    assert np.array_equal(out[:10], np.asarray(image)[:10])  # far from the block: the original
    assert (out[25:35, 45:55] == (255, 0, 0)).all()  # inside it: the result


def test_a_mask_and_a_control_image_through_the_cli_and_a_job_file(tiny_controlnet, photo,
                                                                   tmp_path):  # fmt: skip
    """--mask with --control-image (and the mask and control_image columns of a job file) is
    the Python call with mask_image and control_image."""
    from click.testing import CliRunner

    from fastimg import Img2ImgPipeline
    from fastimg.cli.main import cli

    photo.save(tmp_path / "in.png")
    white = np.zeros((68, 90), np.uint8)
    white[10:50, 30:80] = 255
    Image.fromarray(white).save(tmp_path / "mask.png")
    photo.transpose(0).save(tmp_path / "sketch.png")
    out = tmp_path / "out.png"
    args = ["transform", str(tmp_path / "in.png"), "--engines", str(tiny_controlnet[1]),
            "--prompt", "a fox", "--steps", "3", "--seed", "1", "--mask",
            str(tmp_path / "mask.png"), "--control-image", str(tmp_path / "sketch.png"),
            "--control-scale", "0.5", "--inpaint-area", "masked", "--backend", "onnxruntime",
            "--precision", "fp32", "-o", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    pipe = Img2ImgPipeline.from_engines(tiny_controlnet[1], backend="onnxruntime",
                                        precision="fp32")  # fmt: skip
    call = dict(prompt="a fox", num_inference_steps=3, seed=1, controlnet_conditioning_scale=0.5,
                padding_mask_crop=32)  # fmt: skip
    expected = pipe(image=photo, mask_image=Image.fromarray(white),
                    control_image=photo.transpose(0), **call)[0]  # fmt: skip
    made = Image.open(out)
    assert np.array_equal(np.asarray(made.convert("RGB")), np.asarray(expected))
    assert made.info["fastimg:mask"] == "given" and made.info["fastimg:control_scale"] == "0.5"
    call.pop("controlnet_conditioning_scale")
    without = pipe(image=photo, mask_image=Image.fromarray(white), **call)[0]
    assert not np.array_equal(np.asarray(without), np.asarray(expected))

    (tmp_path / "jobs.csv").write_text(
        "image,prompt,mask,control_image,control_scale,mask_padding,seed,steps\n"
        "in.png,a fox,mask.png,sketch.png,0.5,32,1,3\n"
    )
    folder = tmp_path / "jobs"
    args = ["run", str(tmp_path / "jobs.csv"), "--engines", str(tiny_controlnet[1]), "-o",
            str(folder), "--backend", "onnxruntime", "--precision", "fp32"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (job,) = folder.iterdir()
    assert np.array_equal(np.asarray(Image.open(job).convert("RGB")), np.asarray(expected))
