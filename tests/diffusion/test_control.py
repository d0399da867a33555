import json

import numpy as np
import pytest
from PIL import Image

from fastimg.diffusion.control import check_settings, keep
from fastimg.engine_folder.manifest import Manifest, load_manifest
from fastimg.errors import InputError
from fastimg.settings import CallSettings


def test_keep_is_diffusers_controlnet_keep():
    # diffusers: 1.0 - float(i / len(timesteps) < s or (i + 1) / len(timesteps) > e)
    assert keep(5, 0.2, 0.7) == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert keep(4, 0.0, 1.0) == [1.0] * 4


def _without_control(engines, tmp_path) -> Manifest:
    data = json.loads((engines / "manifest.json").read_text())
    data.pop("control")
    return Manifest.from_data(tmp_path, data)


@pytest.mark.parametrize(
    "values,message",
    [
        ({"controlnet_conditioning_scale": 0.5}, "control_scale steer a ControlNet, but no"),
        (
            {"control_image": "x.png", "control_guidance_start": 0.5, "control_guidance_end": 0.5},
            "must be below",
        ),  # fmt: skip
    ],
)
def test_control_settings_that_cannot_apply_are_refused(tiny_controlnet, values, message):
    manifest = load_manifest(tiny_controlnet[1])
    with pytest.raises(InputError, match=message):
        check_settings(manifest, CallSettings(prompt="p", **values))


def test_a_control_image_for_a_folder_without_controlnet_is_refused(tiny_controlnet, tmp_path):
    manifest = _without_control(tiny_controlnet[1], tmp_path)
    with pytest.raises(InputError, match="has no ControlNet: export the model with"):
        check_settings(manifest, CallSettings(prompt="p", control_image="x.png"))
    check_settings(manifest, CallSettings(prompt="p"))  # no control: the plain call


def test_transform_takes_a_control_image(tiny_controlnet, photo, tmp_path):
    from click.testing import CliRunner

    from fastimg.cli.main import cli

    photo.save(tmp_path / "in.png")
    photo.transpose(0).save(tmp_path / "control.png")
    args = ["transform", str(tmp_path / "in.png"), "--engines", str(tiny_controlnet[1]),
            "--prompt", "a fox", "--steps", "4", "--seed", "1", "--control-image",
            str(tmp_path / "control.png"), "--control-scale", "0.5", "--control-end", "0.8",
            "-o", str(tmp_path / "out.png")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.png").is_file()
    wrong = [a if a != "0.8" else "0.0" for a in args]
    wrong[-1] = str(tmp_path / "out2.png")
    result = CliRunner().invoke(cli, wrong)
    assert result.exit_code == 1 and "must be below" in result.output


def test_control_preprocess_without_a_control_image_steers_from_the_input(
    tiny_controlnet, tmp_path
):
    manifest = load_manifest(tiny_controlnet[1])
    check_settings(manifest, CallSettings(prompt="p", control_preprocess="scribble",
                                          controlnet_conditioning_scale=0.5))  # fmt: skip
    without = _without_control(tiny_controlnet[1], tmp_path)
    with pytest.raises(InputError, match="control_preprocess was given, but the engine folder"):
        check_settings(without, CallSettings(prompt="p", control_preprocess="scribble"))


def test_prepare_control_makes_the_control_image_at_the_init_images_size(photo):
    from fastimg.diffusion.control import prepare_control
    from fastimg.media.control_images import scribble

    call = CallSettings(prompt="p", control_preprocess="scribble")
    control = prepare_control(call, 64, 88, photo)  # from the init image, resized first
    expected = np.asarray(scribble(photo.resize((88, 64), resample=Image.LANCZOS)))
    (pixels,) = control.pixels  # one ControlNet's: 1 x 3 x H x W
    np.testing.assert_array_equal(pixels[0].transpose(1, 2, 0) * 255, expected)
    assert control.preprocessor == ("scribble",) and control.key == ((0.8,), (0.0,), (1.0,))
    assert prepare_control(CallSettings(prompt="p"), 64, 88, photo) is None
    given = prepare_control(call.with_values(control_image=photo.transpose(0)), 64, 88, photo)
    assert not np.array_equal(given.pixels[0], pixels)  # the control image, not the init


def test_only_masked_cuts_the_control_image_as_diffusers_control_image_processor(photo):
    """With an inpainting call's padding_mask_crop box, the control image is cropped to it and
    fills the engine's size (VaeImageProcessor.preprocess with crops_coords, resize_mode fill);
    one of another size is brought to the init image's size first."""
    pytest.importorskip("torch")
    from diffusers.image_processor import VaeImageProcessor

    from fastimg.diffusion.control import prepare_control

    processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False)
    sketch = photo.transpose(0)
    for box in [(24, 18, 57, 42), (0, 10, 90, 60), (40, 0, 60, 68)]:
        call = CallSettings(prompt="p", control_image=sketch)
        (pixels,) = prepare_control(call, 64, 88, photo, crop=box).pixels
        expected = processor.preprocess(sketch, height=64, width=88, crops_coords=box,
                                        resize_mode="fill")  # fmt: skip
        np.testing.assert_allclose(pixels, expected.numpy(), atol=1e-6)
        half = call.with_values(control_image=sketch.resize((45, 34), Image.LANCZOS))
        (scaled,) = prepare_control(half, 64, 88, photo, crop=box).pixels
        at_photo = sketch.resize((45, 34), Image.LANCZOS).resize(photo.size, Image.LANCZOS)
        expected = processor.preprocess(at_photo, height=64, width=88, crops_coords=box,
                                        resize_mode="fill")  # fmt: skip
        np.testing.assert_allclose(scaled, expected.numpy(), atol=1e-6)
    uncut = prepare_control(CallSettings(prompt="p", control_image=sketch), 64, 88, photo)
    assert not np.array_equal(uncut.pixels[0], pixels)


def test_a_preprocessed_control_is_the_preprocessed_image_given(tiny_controlnet, photo):
    from fastimg import Img2ImgPipeline
    from fastimg.media.control_images import scribble

    pipe = Img2ImgPipeline.from_engines(tiny_controlnet[1], backend="onnxruntime")
    common = {"prompt": "a fox", "image": photo, "num_inference_steps": 3, "seed": 3}
    made = pipe(**common, control_preprocess="scribble")[0]
    sized = photo.resize((88, 64), resample=Image.LANCZOS)  # the init image's pixels
    given = pipe(**common, control_image=scribble(sized))[0]
    plain = pipe(**common)[0]
    np.testing.assert_array_equal(np.asarray(made), np.asarray(given))
    assert not np.array_equal(np.asarray(made), np.asarray(plain))
    assert made.info["fastimg:control_preprocess"] == "scribble"
    assert made.info["fastimg:control_scale"] == 0.8 and "fastimg:control_end" in made.info
    assert "fastimg:control_scale" not in plain.info


def test_transform_makes_the_control_image_and_labels_it(tiny_controlnet, photo, tmp_path):
    from click.testing import CliRunner

    from fastimg.cli.main import cli
    from fastimg.media.label_reader import read_labels

    photo.save(tmp_path / "in.png")
    args = ["transform", str(tmp_path / "in.png"), "--engines", str(tiny_controlnet[1]),
            "--prompt", "a fox", "--steps", "3", "--seed", "1", "--control-preprocess",
            "scribble", "--control-end", "0.5", "-o", str(tmp_path / "out.png")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    labels = read_labels(tmp_path / "out.png")
    # the ControlNet's name: its source's (here the pipeline folder's, "model")
    assert labels["fastimg"]["fastimg:control_model"] == "model"
    expected = 'ControlNet 0: "preprocessor: scribble, model: model, weight: 0.8, starting/ending:'
    assert f'{expected} (0, 0.5)"' in labels["parameters"]
    assert labels["fastimg"]["fastimg:control_preprocess"] == "scribble"
    result = CliRunner().invoke(cli, [*args[:-1], str(tmp_path / "x.png"), "--control-preprocess",
                                      "sketch"])  # fmt: skip
    assert result.exit_code == 2 and "'sketch' is not one of 'canny', 'scribble'" in result.output


def test_transform_with_canny(tiny_controlnet, photo, tmp_path):
    pytest.importorskip("cv2")
    from click.testing import CliRunner

    from fastimg.cli.main import cli

    photo.save(tmp_path / "in.png")
    photo.transpose(0).save(tmp_path / "control.png")
    args = ["transform", str(tmp_path / "in.png"), "--engines", str(tiny_controlnet[1]),
            "--prompt", "a fox", "--steps", "3", "--seed", "1", "--control-image",
            str(tmp_path / "control.png"), "--control-preprocess", "canny",
            "-o", str(tmp_path / "out.png")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out.png") as image:
        assert "preprocessor: canny" in image.info["parameters"]


def test_run_takes_control_image_and_preprocess_columns(tiny_controlnet, photo, tmp_path):
    from click.testing import CliRunner

    from fastimg.cli.main import cli
    from fastimg.media.label_reader import read_labels

    (tmp_path / "sketches").mkdir()
    photo.save(tmp_path / "in.png")
    photo.transpose(0).save(tmp_path / "sketches" / "c.png")
    (tmp_path / "jobs.csv").write_text(
        "image,prompt,seed,steps,control_image,control_preprocess,control_scale,output\n"
        "in.png,a fox,1,3,sketches/c.png,scribble,0.5,given.png\n"
        "in.png,a fox,1,3,,scribble,,own.png\n"
        "in.png,a fox,1,3,,,,plain.png\n"
    )
    out = tmp_path / "out"
    args = ["run", str(tmp_path / "jobs.csv"), "--engines", str(tiny_controlnet[1]), "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    given, own, plain = (read_labels(out / n) for n in ("given.png", "own.png", "plain.png"))
    assert "weight: 0.5" in given["parameters"] and "weight: 0.8" in own["parameters"]
    assert "ControlNet" not in plain["parameters"]
    pixels = [np.asarray(Image.open(out / n)) for n in ("given.png", "own.png", "plain.png")]
    assert not np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[1], pixels[2])


def _lines_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    on = (rng.random((64, 88)) > 0.85).astype(np.uint8) * 255
    return Image.fromarray(np.stack([on] * 3, axis=-1))


def test_transform_takes_a_control_image_per_controlnet(tiny_multi_controlnet, photo, tmp_path):
    from click.testing import CliRunner

    from fastimg.cli.main import cli
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.media.label_reader import read_labels

    photo.save(tmp_path / "in.png")
    for k in (1, 2, 3):
        _lines_image(k).save(tmp_path / f"c{k}.png")
    base = ["transform", str(tmp_path / "in.png"), "--engines", str(tiny_multi_controlnet[1]),
            "--prompt", "a fox", "--steps", "3", "--seed", "1", "--backend", "onnxruntime",
            "--precision", "fp32"]  # fmt: skip
    two = ["--control-image", str(tmp_path / "c1.png"), "--control-image", str(tmp_path / "c2.png")]
    args = [*base, *two, "--control-scale", "0.5", "--control-scale", "1.5", "--control-end",
            "0.5", "-o", str(tmp_path / "out.png")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    labels = read_labels(tmp_path / "out.png")
    assert labels["fastimg"]["fastimg:control_scale"] == "[0.5, 1.5]"
    assert labels["fastimg"]["fastimg:control_end"] == "[0.5, 0.5]"  # one value for both
    assert 'ControlNet 0: "preprocessor: none, model: model, weight: 0.5, starting/ending: (0, ' \
        '0.5)"' in labels["parameters"]  # fmt: skip
    assert 'ControlNet 1: "preprocessor: none, model: model, weight: 1.5' in labels["parameters"]
    # the same as the Python API's call with diffusers' lists
    pipe = Img2ImgPipeline.from_engines(tiny_multi_controlnet[1], backend="onnxruntime",
                                        precision="fp32")  # fmt: skip
    (expected,) = pipe("a fox", Image.open(tmp_path / "in.png"), num_inference_steps=3, seed=1,
                       control_image=[_lines_image(1), _lines_image(2)],
                       controlnet_conditioning_scale=[0.5, 1.5], control_guidance_end=0.5,
                       strength=0.8)  # fmt: skip
    with Image.open(tmp_path / "out.png") as made:
        assert np.array_equal(np.asarray(made.convert("RGB")), np.asarray(expected))

    three = [*two, "--control-image", str(tmp_path / "c3.png")]
    result = CliRunner().invoke(cli, [*base, *three, "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    # one line naming the problem and the fix (after the engines' "running on" line)
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "3 control images were given, but the engine folder" in line
    assert "has 2 ControlNets (controlnet, controlnet_1): give at most 2" in line
    result = CliRunner().invoke(cli, [*base, *two[:2], "--control-scale", "0.5", "--control-scale",
                                      "1", "-o", str(tmp_path / "x.png")])  # fmt: skip
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "control_scale has 2 values for 1 control image: give one value for all" in line
    assert not (tmp_path / "x.png").exists()


def test_several_control_images_are_checked_against_the_controlnets(
    tiny_controlnet, tiny_multi_controlnet
):
    one, two = load_manifest(tiny_controlnet[1]), load_manifest(tiny_multi_controlnet[1])
    images = ["a.png", "b.png"]
    with pytest.raises(InputError, match="2 control images were given, but .* has 1 ControlNet "):
        check_settings(one, CallSettings(prompt="p", control_image=tuple(images)))
    check_settings(two, CallSettings(prompt="p", control_image=tuple(images)))
    check_settings(two, CallSettings(prompt="p", control_image="a.png"))  # the first alone
    with pytest.raises(InputError, match=r"control_guidance_start \(0.5\) must be below"):
        check_settings(two, CallSettings(prompt="p", control_image=tuple(images),
                                         control_guidance_start=(0.0, 0.5),
                                         control_guidance_end=(1.0, 0.5)))  # fmt: skip
    with pytest.raises(InputError, match="control_end has 3 values for 2 control images"):
        check_settings(two, CallSettings(prompt="p", control_image=tuple(images),
                                         control_guidance_end=(1.0, 0.5, 0.7)))  # fmt: skip


def test_a_preprocessor_per_controlnet_makes_the_controlnets_past_the_images_from_the_init(
    photo, tiny_multi_controlnet
):
    from fastimg.diffusion.control import controlnets_used, prepare_control
    from fastimg.media.control_images import scribble

    sketch = photo.transpose(0)
    made = scribble(photo.resize((88, 64), resample=Image.LANCZOS))
    both = CallSettings(prompt="p", control_preprocess=(None, "scribble"))
    assert controlnets_used(both) == 2
    control = prepare_control(both, 64, 88, photo)  # no image: both from the init image
    assert control.preprocessor == (None, "scribble") and len(control.pixels) == 2
    resized = np.asarray(photo.resize((88, 64), resample=Image.LANCZOS), dtype=np.float32) / 255
    np.testing.assert_allclose(control.pixels[0][0].transpose(1, 2, 0), resized)
    np.testing.assert_array_equal(control.pixels[1][0].transpose(1, 2, 0) * 255, made)
    given = prepare_control(both.with_values(control_image=sketch), 64, 88, photo)
    assert not np.array_equal(given.pixels[0], control.pixels[0])  # the sketch, as given
    np.testing.assert_array_equal(given.pixels[1], control.pixels[1])  # the init's scribble
    assert control.labels()["fastimg:control_preprocess"] == ["none", "scribble"]
    two = load_manifest(tiny_multi_controlnet[1])
    check_settings(two, both)
    three = both.with_values(control_preprocess=("scribble",) * 3)
    with pytest.raises(InputError, match="3 control preprocessors were given, but .* has 2"):
        check_settings(two, three)
    with pytest.raises(InputError, match="control_preprocess has 2 values for 3 control images"):
        prepare_control(both.with_values(control_image=(sketch,) * 3), 64, 88, photo)


def test_run_takes_a_list_of_control_images_per_row(tiny_multi_controlnet, photo, tmp_path):
    from click.testing import CliRunner

    from fastimg.cli.main import cli
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.media.label_reader import read_labels

    photo.save(tmp_path / "in.png")
    _lines_image(1).save(tmp_path / "c1.png")
    (tmp_path / "jobs.csv").write_text(
        "image,prompt,seed,steps,control_image,control_preprocess,control_scale,output\n"
        "in.png,a fox,1,3,c1.png;in.png,none;scribble,0.5;1.5,two.png\n"
        "in.png,a fox,1,3,c1.png,,0.5,one.png\n"
    )
    out = tmp_path / "out"
    args = ["run", str(tmp_path / "jobs.csv"), "--engines", str(tiny_multi_controlnet[1]),
            "-o", str(out), "--backend", "onnxruntime", "--precision", "fp32"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    labels = read_labels(out / "two.png")
    assert labels["fastimg"]["fastimg:control_scale"] == "[0.5, 1.5]"
    assert 'ControlNet 1: "preprocessor: scribble, model: model, weight: 1.5' in \
        labels["parameters"]  # fmt: skip
    pipe = Img2ImgPipeline.from_engines(tiny_multi_controlnet[1], backend="onnxruntime",
                                        precision="fp32")  # fmt: skip
    (expected,) = pipe("a fox", photo, num_inference_steps=3, seed=1, strength=0.8,
                       control_image=[_lines_image(1)], control_preprocess=["none", "scribble"],
                       controlnet_conditioning_scale=[0.5, 1.5])  # fmt: skip
    two, one = (np.asarray(Image.open(out / n).convert("RGB")) for n in ("two.png", "one.png"))
    assert np.array_equal(two, np.asarray(expected))
    assert not np.array_equal(two, one)


def test_a_preprocessor_none_is_the_image_as_given():
    from fastimg.diffusion.checks import check_values

    assert check_values(CallSettings(prompt="p", control_preprocess="none")).control_preprocess \
        is None  # fmt: skip
    both = check_values(CallSettings(prompt="p", control_preprocess=["none", "scribble"]))
    assert both.control_preprocess == (None, "scribble")
    with pytest.raises(InputError, match="must be one value or a flat list"):
        check_values(CallSettings(prompt="p", controlnet_conditioning_scale=[[0.5], 1.0]))
    with pytest.raises(InputError, match="unknown control_preprocess 'blur'"):
        check_values(CallSettings(prompt="p", control_preprocess=["blur"]))
