import click
import numpy as np
import pytest

from fastimg.cli.video import video
from fastimg.media import video_io
from fastimg.media.images import psnr
from tests.workflows.test_video import full_disk, leftovers, make_video, pictures, probe

pytest.importorskip("av")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """12 frames at 8 fps with AAC audio; frames 6 to 8 repeat frame 5."""
    return make_video(tmp_path_factory.mktemp("clip") / "in.mp4", pictures(12, static=(5, 6, 7)))


def _video(runner, engines, *args):
    group = click.Group()  # as the fastimg command group will hold it
    group.add_command(video)
    return runner.invoke(
        group,
        ["video", *map(str, args), "--engines", str(engines), "--backend", "onnxruntime",
         "--prompt", "a red fox", "--steps", "2", "--guidance", "3"],
    )  # fmt: skip


def _refused(result, code: int) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output


def test_a_video_is_written_and_its_path_printed(runner, tiny, clip, tmp_path):
    out = tmp_path / "out.mp4"
    result = _video(runner, tiny[1], clip, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    assert "12 frames" in result.stderr and "9 transformed, 3 reused" in result.stderr
    assert "audio: copied (aac)" in result.stderr
    got = probe(out)
    assert got["frames"] == 12 and got["rate"] == 8 and got["audio"] == "aac"
    assert got["metadata"]["comment"].startswith("a red fox")


def test_no_audio_and_no_metadata_leave_them_out(runner, tiny, clip, tmp_path):
    out = tmp_path / "out.mkv"
    result = _video(runner, tiny[1], clip, "-o", out, "--no-audio", "--no-metadata", "-q")
    assert result.exit_code == 0, result.output
    # -q: no progress and no summary (what runs it is still said, as by every command)
    assert [line for line in result.stderr.splitlines() if "running on" not in line] == []
    got = probe(out)
    assert got["audio"] is None and "comment" not in got["metadata"]


def test_an_existing_output_is_refused_and_left_as_it_was(runner, tiny, clip, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an earlier video")
    result = _video(runner, tiny[1], clip, "-o", out)
    _refused(result, 2)
    assert "already exists: pass --overwrite" in result.stderr
    assert out.read_bytes() == b"an earlier video"


def test_resume_needs_frames_kept_as_files(runner, tiny, clip, tmp_path):
    result = _video(runner, tiny[1], clip, "-o", tmp_path / "out.mp4", "--resume")
    _refused(result, 2)
    assert "--frames-dir" in result.stderr


def test_a_folder_output_resumes(runner, tiny, clip, tmp_path):
    out = tmp_path / "frames"
    assert _video(runner, tiny[1], clip, "-o", out).exit_code == 0
    (out / "frame-000012.png").unlink()
    again = _video(runner, tiny[1], clip, "-o", out)
    _refused(again, 2)
    assert "--resume" in again.stderr
    resumed = _video(runner, tiny[1], clip, "-o", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "1 transformed, 0 reused" in resumed.stderr and "11 kept" in resumed.stderr
    assert len(list(out.iterdir())) == 12


def test_a_file_that_is_not_a_video_is_refused_clearly(runner, tiny, tmp_path):
    source = tmp_path / "notes.mp4"
    source.write_text("not a video")
    result = _video(runner, tiny[1], source, "-o", tmp_path / "out.mp4")
    _refused(result, 2)
    assert f"{source} cannot be read as a video" in result.stderr
    assert not (tmp_path / "out.mp4").exists()


def test_a_full_disk_is_an_error_that_leaves_no_file(runner, tiny, clip, tmp_path, monkeypatch):
    full_disk(monkeypatch)
    out = tmp_path / "out.mp4"
    result = _video(runner, tiny[1], clip, "-o", out)
    _refused(result, 1)
    assert f"cannot write {out}: no space left on device" in result.stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_missing_encoder_is_named(runner, tiny, clip, tmp_path, monkeypatch):
    monkeypatch.setitem(video_io.VIDEO_FORMATS, ".mp4", ("mp4", "no-such-encoder", "aac"))
    result = _video(runner, tiny[1], clip, "-o", tmp_path / "out.mp4")
    _refused(result, 1)
    assert "no no-such-encoder encoder for .mp4: write .mov" in result.stderr


def test_fps_is_for_frame_folders(runner, tiny, clip, tmp_path):
    result = _video(runner, tiny[1], clip, "-o", tmp_path / "out.mp4", "--fps", "30")
    _refused(result, 2)
    assert "keeps its own frame rate" in result.stderr


def test_help_says_why_the_seed_is_fixed(runner):
    result = runner.invoke(video, ["--help"])
    assert result.exit_code == 0
    assert "same noise" in result.output and "--reuse-threshold" in result.output


def test_a_prompt_given_twice_is_refused(runner, tiny, clip, tmp_path):
    result = _video(runner, tiny[1], clip, "-o", tmp_path / "o.mp4", "--prompt", "a dog")
    _refused(result, 2)
    assert "--prompt was given 2 times" in result.output
    assert not (tmp_path / "o.mp4").exists()


def test_sdxl_settings_are_refused_on_an_sd_folder(runner, tiny, clip, tmp_path):
    result = _video(runner, tiny[1], clip, "-o", tmp_path / "o.mp4", "--prompt-2", "fur")
    _refused(result, 1)
    assert "prompt_2 is an SDXL argument" in result.output
    assert not (tmp_path / "o.mp4").exists()


def test_sdxl_settings_reach_every_frame_of_an_sdxl_video(runner, tiny_sdxl, clip, tmp_path):
    import numpy as np
    from PIL import Image

    firsts = []
    for name, extra in (("plain", ()), ("sized", ("--original-size", "96x64"))):
        out = tmp_path / name
        result = _video(runner, tiny_sdxl[1], clip, "-o", out, "--reuse-threshold", "0", *extra)
        assert result.exit_code == 0, result.output
        firsts.append(np.asarray(Image.open(out / "frame-000001.png")))
    assert not np.array_equal(*firsts)  # the size reached the UNet's time_ids


def test_control_preprocess_makes_each_frames_control(runner, tiny_controlnet, tmp_path):
    from PIL import Image

    clip = make_video(tmp_path / "in.mp4", pictures(3), audio_seconds=0)
    out = tmp_path / "frames"
    common = [clip, "-o", out, "--reuse-threshold", "0", "--seed", "5"]
    result = _video(runner, tiny_controlnet[1], *common, "--control-preprocess", "scribble")
    assert result.exit_code == 0, result.output
    with Image.open(out / "frame-000002.png") as frame:
        assert frame.info["fastimg:control_preprocess"] == "scribble"
        assert 'ControlNet 0: "preprocessor: scribble' in frame.info["parameters"]
    (out / "frame-000003.png").unlink()
    other = _video(runner, tiny_controlnet[1], *common, "--resume", "--control-preprocess",
                   "scribble", "--control-scale", "0.3")  # fmt: skip
    _refused(other, 1)
    assert "was made with control_scale '0.8', but this run uses '0.3'" in other.output


def test_a_mask_and_a_controlnet_steer_every_frame(runner, tiny_controlnet, tmp_path):
    """--mask with --control-preprocess: each frame repainted inside the mask only (kept
    outside with --keep-unmasked), steered by its own scribble."""
    import numpy as np
    from PIL import Image

    clip = make_video(tmp_path / "in.mp4", pictures(2), audio_seconds=0)
    values = np.zeros((64, 64), np.uint8)
    values[16:48, 16:48] = 255
    Image.fromarray(values).save(tmp_path / "mask.png")
    out = tmp_path / "frames"
    result = _video(runner, tiny_controlnet[1], clip, "-o", out, "--reuse-threshold", "0",
                    "--seed", "5", "--mask", tmp_path / "mask.png", "--keep-unmasked",
                    "--control-preprocess", "scribble")  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("frame-000001.png", "frame-000002.png"):
        with Image.open(out / name) as frame:
            assert frame.info["fastimg:mask"] == "given"
            assert frame.info["fastimg:control_preprocess"] == "scribble"


def test_a_mask_folder_gives_each_frame_its_mask(runner, tiny, tmp_path):
    """--mask DIR: the frames' masks in name order; with --keep-unmasked each output frame is
    its input outside its own mask, and a static frame with a new mask is not reused."""
    import numpy as np
    from PIL import Image

    frames, masks = tmp_path / "in", tmp_path / "masks"
    masks.mkdir()
    inputs = _frame_folder(frames, 3, static=(1, 2))  # three times the same picture
    height, width = inputs[0].shape[:2]
    for i, left in enumerate((0, width // 3, 2 * width // 3), start=1):
        values = np.zeros((height, width), np.uint8)
        values[:, left : left + width // 3] = 255
        Image.fromarray(values).save(masks / f"m{i}.png")
    out = tmp_path / "out"
    result = _video(runner, tiny[1], frames, "-o", out, "--mask", masks, "--keep-unmasked",
                    "--seed", "5")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 transformed, 0 reused" in result.stderr
    for i in range(1, 4):
        made = np.asarray(Image.open(out / f"frame-{i:06d}.png").convert("RGB"))
        outside = np.asarray(Image.open(masks / f"m{i}.png")) == 0
        assert np.array_equal(made[outside], inputs[i - 1][outside])
        assert not np.array_equal(made[~outside], inputs[i - 1][~outside])
    one = _video(runner, tiny[1], frames, "-o", tmp_path / "one", "--mask", masks / "m2.png",
                 "--inpaint-area", "masked", "--seed", "5")  # fmt: skip
    assert one.exit_code == 0 and "1 transformed, 2 reused" in one.stderr, one.output
    with Image.open(tmp_path / "one" / "frame-000001.png") as frame:
        assert frame.info["fastimg:mask"] == "given" and frame.info["fastimg:mask_padding"] == "32"
    (masks / "m3.png").unlink()
    short = _video(runner, tiny[1], frames, "-o", tmp_path / "short", "--mask", masks)
    _refused(short, 1)
    assert f"the mask folder {masks} holds 2 masks for 3 frames" in short.stderr
    padding = _video(runner, tiny[1], frames, "-o", tmp_path / "p", "--mask-padding", "8")
    _refused(padding, 1)
    assert "--mask-padding pads the region that --inpaint-area masked" in padding.stderr


def test_a_lora_reaches_every_frame_and_lora_scales_choose_among_them(runner, tiny, tmp_path):
    import shutil

    import numpy as np
    from PIL import Image

    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    from fastimg_export.random_models import write_random_model

    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    style = write_random_model("tiny-lora", tmp_path / "ink.safetensors")
    clip = make_video(tmp_path / "in.mp4", pictures(3), audio_seconds=0)
    frames = {}
    for name, extra in (("plain", ()), ("ink", ("--lora", f"{style}:0.7")),
                        ("off", ("--lora", str(style), "--lora-scales", "none"))):  # fmt: skip
        out = tmp_path / name
        result = _video(runner, engines, clip, "-o", out, "--reuse-threshold", "0", "--seed", "5",
                        *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
        with Image.open(out / "frame-000003.png") as frame:
            frames[name] = (np.asarray(frame.convert("RGB"), np.int16), frame.info)
    assert frames["ink"][1]["fastimg:loras"] == "ink:0.7"
    assert "<lora:ink:0.7>" in frames["ink"][1]["parameters"]
    assert "fastimg:loras" not in frames["off"][1]
    assert np.abs(frames["ink"][0] - frames["plain"][0]).max() > 1
    assert np.abs(frames["off"][0] - frames["plain"][0]).max() <= 1  # (the twin's zero branches)


def test_several_controlnets_steer_every_frame(runner, tiny_multi_controlnet, tmp_path):
    """--control-image for the first ControlNet, the second made from each frame by its own
    --control-preprocess: each frame is the Python call's on that frame."""
    import numpy as np
    from PIL import Image

    from fastimg.diffusion.pipeline import Img2ImgPipeline

    frames = tmp_path / "in"
    inputs = _frame_folder(frames, 2)
    sketch = tmp_path / "sketch.png"
    Image.fromarray(255 - inputs[0]).save(sketch)
    out = tmp_path / "out"
    result = _video(runner, tiny_multi_controlnet[1], frames, "-o", out, "--reuse-threshold", "0",
                    "--seed", "5", "--control-image", sketch, "--control-preprocess", "none",
                    "--control-preprocess", "scribble", "--control-scale", "0.5",
                    "--control-scale", "1.5")  # fmt: skip
    assert result.exit_code == 0, result.output
    pipe = Img2ImgPipeline.from_engines(tiny_multi_controlnet[1], backend="onnxruntime")
    for i, picture in enumerate(inputs, start=1):
        (expected,) = pipe("a red fox", Image.fromarray(picture), strength=0.5, seed=5,
                           num_inference_steps=2, guidance_scale=3,
                           control_image=[Image.open(sketch)],
                           control_preprocess=[None, "scribble"],
                           controlnet_conditioning_scale=[0.5, 1.5])  # fmt: skip
        with Image.open(out / f"frame-{i:06d}.png") as frame:
            assert np.array_equal(np.asarray(frame.convert("RGB")), np.asarray(expected))
            assert frame.info["fastimg:control_preprocess"] == "['none', 'scribble']"
            assert 'ControlNet 1: "preprocessor: scribble' in frame.info["parameters"]
    three = _video(runner, tiny_multi_controlnet[1], frames, "-o", tmp_path / "x",
                   *["--control-preprocess", "scribble"] * 3)  # fmt: skip
    _refused(three, 1)
    assert "3 control preprocessors were given, but the engine folder" in three.stderr


def test_control_preprocess_depth_maps_each_frame(runner, tiny_controlnet_depth, tmp_path):
    """--control-preprocess depth: each frame's depth map, made by the folder's depth model."""
    import numpy as np
    from PIL import Image

    from fastimg.diffusion.pipeline import Img2ImgPipeline

    frames = tmp_path / "in"
    inputs = _frame_folder(frames, 2)
    out = tmp_path / "out"
    result = _video(runner, tiny_controlnet_depth[1], frames, "-o", out, "--reuse-threshold",
                    "0", "--seed", "5", "--control-preprocess", "depth")  # fmt: skip
    assert result.exit_code == 0, result.output
    pipe = Img2ImgPipeline.from_engines(tiny_controlnet_depth[1], backend="onnxruntime")
    for i, picture in enumerate(inputs, start=1):
        (expected,) = pipe("a red fox", Image.fromarray(picture), strength=0.5, seed=5,
                           num_inference_steps=2, guidance_scale=3,
                           control_preprocess="depth")  # fmt: skip
        with Image.open(out / f"frame-{i:06d}.png") as frame:
            assert np.array_equal(np.asarray(frame.convert("RGB")), np.asarray(expected))
            assert frame.info["fastimg:control_preprocess"] == "depth"


@pytest.fixture(scope="module")
def still_frames(tmp_path_factory):
    """Six PNG frames; frames 3 and 4 repeat frame 2 exactly."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("still")
    for k, pixels in enumerate(pictures(6, static=(2, 3)), 1):
        Image.fromarray(pixels).save(folder / f"f{k}.png")
    return folder


def _frame_folder(folder, count: int, **kinds) -> list:
    """`folder` made with `count` PNG frames f1.png, f2.png, ... of pictures(count, **kinds);
    their pixels."""
    from PIL import Image

    folder.mkdir()
    inputs = pictures(count, **kinds)
    for i, picture in enumerate(inputs, start=1):
        Image.fromarray(picture).save(folder / f"f{i}.png")
    return inputs


def _frames_of(folder):
    from PIL import Image

    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("frame-*.png"))]


def test_stream_batch_writes_every_frame_as_the_single_calls_do(runner, tiny, clip, tmp_path):
    base = ["--scheduler", "euler", "--strength", "0.75", "--steps", "4", "--no-audio"]
    group = click.Group()
    group.add_command(video)
    common = ["--engines", str(tiny[1]), "--backend", "onnxruntime", "--prompt", "a red fox"]
    alone = runner.invoke(group, ["video", str(clip), "-o", str(tmp_path / "alone"), *common,
                                  *base, "--reuse-threshold", "0"])  # fmt: skip
    assert alone.exit_code == 0, alone.output
    batched = runner.invoke(group, ["video", str(clip), "-o", str(tmp_path / "batch"), *common,
                                    *base, "--stream-batch"])  # fmt: skip
    assert batched.exit_code == 0, batched.output
    assert "12 frames" in batched.stderr and "12 transformed, 0 reused" in batched.stderr
    got, expected = _frames_of(tmp_path / "batch"), _frames_of(tmp_path / "alone")
    assert len(got) == len(expected) == 12
    assert min(psnr(a, b) for a, b in zip(got, expected, strict=True)) >= 40


def test_the_similarity_filter_reuses_repeated_frames(runner, tiny, still_frames, tmp_path):
    out = tmp_path / "out"
    result = _video(runner, tiny[1], still_frames, "-o", out, "--similarity", "0.98")
    assert result.exit_code == 0, result.output
    assert "6 frames" in result.stderr and "4 transformed, 2 reused" in result.stderr
    frames = _frames_of(out)
    assert (frames[2] == frames[1]).all() and (frames[3] == frames[1]).all()


def test_stream_options_refuse_resume_and_a_mask_folder(runner, tiny, clip, tmp_path):
    result = _video(runner, tiny[1], clip, "-o", tmp_path / "out", "--feedback", "0.2",
                    "--resume")  # fmt: skip
    _refused(result, 1)
    assert "leave out --resume, or the options" in result.stderr
    masks = tmp_path / "masks"
    _frame_folder(masks, 12)
    result = _video(runner, tiny[1], clip, "-o", tmp_path / "out", "--feedback", "0.2",
                    "--mask", masks)  # fmt: skip
    _refused(result, 1)
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert "is a folder, a mask per frame, but the stream options" in line
    assert "run one mask for every frame: pass one mask file" in line


def test_the_stream_batch_repaints_every_frame_with_one_mask(runner, tiny, tmp_path):
    """--stream-batch with --mask FILE: each frame as the frame-by-frame masked run makes it."""
    import numpy as np
    from PIL import Image

    frames = tmp_path / "in"
    _frame_folder(frames, 3)
    values = np.zeros((64, 64), np.uint8)
    values[16:48, 8:40] = 255
    Image.fromarray(values).save(tmp_path / "mask.png")
    base = ["--seed", "5", "--mask", tmp_path / "mask.png", "--scheduler", "euler",
            "--strength", "0.75", "--steps", "4"]  # fmt: skip
    alone = _video(runner, tiny[1], frames, "-o", tmp_path / "alone", *base,
                   "--reuse-threshold", "0")  # fmt: skip
    assert alone.exit_code == 0, alone.output
    batched = _video(runner, tiny[1], frames, "-o", tmp_path / "batch", *base, "--stream-batch")
    assert batched.exit_code == 0, batched.output
    got, expected = _frames_of(tmp_path / "batch"), _frames_of(tmp_path / "alone")
    assert len(got) == len(expected) == 3
    assert min(psnr(a, b) for a, b in zip(got, expected, strict=True)) >= 40
    with Image.open(tmp_path / "batch" / "frame-000001.png") as frame:
        assert frame.info["fastimg:mask"] == "given"


def test_the_stream_options_keep_the_controlnets_control(runner, tiny_controlnet, tmp_path):
    """--similarity runs the frames through the stream engine: each still carries its
    --control-preprocess control (the engine is built from the call's control settings)."""
    from PIL import Image

    from fastimg.diffusion.pipeline import Img2ImgPipeline

    frames = tmp_path / "in"
    inputs = _frame_folder(frames, 2)
    out = tmp_path / "out"
    result = _video(runner, tiny_controlnet[1], frames, "-o", out, "--seed", "5",
                    "--similarity", "0.999", "--control-preprocess", "scribble")  # fmt: skip
    assert result.exit_code == 0, result.output
    pipe = Img2ImgPipeline.from_engines(tiny_controlnet[1], backend="onnxruntime")
    for i, picture in enumerate(inputs, start=1):
        (expected,) = pipe("a red fox", Image.fromarray(picture), strength=0.5, seed=5,
                           num_inference_steps=2, guidance_scale=3,
                           control_preprocess="scribble")  # fmt: skip
        (plain,) = pipe("a red fox", Image.fromarray(picture), strength=0.5, seed=5,
                        num_inference_steps=2, guidance_scale=3)  # fmt: skip
        with Image.open(out / f"frame-{i:06d}.png") as frame:
            got = frame.convert("RGB")
        assert psnr(got, expected) >= 40 > psnr(got, plain)


def test_stream_options_refuse_vae_tiles_by_name(runner, tiny, clip, tmp_path):
    result = _video(runner, tiny[1], clip, "-o", tmp_path / "out", "--similarity", "0.98",
                    "--vae-tile-size", "64")  # fmt: skip
    _refused(result, 1)
    assert "leave out --vae-tile-size" in result.stderr


def test_a_video_asks_for_the_shapes_of_one_image_size(runner, tiny, clip, tmp_path, monkeypatch):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    load, asks = Img2ImgPipeline.from_engines, []
    monkeypatch.setattr(Img2ImgPipeline, "from_engines", classmethod(
        lambda cls, *a, **kw: asks.append(kw["shapes"]) or load(*a, **kw)))  # fmt: skip
    result = _video(runner, tiny[1], clip, "-o", tmp_path / "out.mp4")
    assert result.exit_code == 0, result.output
    assert asks == [None]  # every frame one size: the backend's choice (OpenVINO: static)
