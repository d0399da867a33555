"""fastimg stream through the command line, on the tiny engines: a frame folder with a broken
frame into frames, a video and a frame log; raw frames from stdin to stdout; a video file; the
refusals (no output, a missing camera, no pyvirtualcam, stdin without its size), and a stream
that stalls or is stopped with Ctrl-C in a real process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
from PIL import Image

from fastimg.cli.stream import stream

SIZE = (32, 24)


def frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` random frames of SIZE, in 8x8 blocks."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (count, SIZE[1] // 8, SIZE[0] // 8, 3), dtype=np.uint8)
    return list(blocks.repeat(8, axis=1).repeat(8, axis=2))


def _stream(runner, engines, *args, **kwargs):
    group = click.Group()  # as the fastimg command group will hold it
    group.add_command(stream)
    words = ["stream", *map(str, args), "--engines", str(engines), "--backend", "onnxruntime",
             "--prompt", "a red fox", "--steps", "2"]  # fmt: skip
    return runner.invoke(group, words, **kwargs)


def _one_line_error(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    return line


def test_a_frame_folder_streams_into_frames_a_video_and_a_log_past_a_broken_frame(
    runner, tiny, tmp_path
):
    pytest.importorskip("av")
    from fastimg.media.label_reader import read_labels

    source = tmp_path / "in"
    source.mkdir()
    for i, values in enumerate(frames(4), 1):
        Image.fromarray(values).save(source / f"shot{i}.png")
    whole = (source / "shot2.png").read_bytes()
    (source / "shot2.png").write_bytes(whole[:60])
    out, video, log = tmp_path / "out", tmp_path / "live.mp4", tmp_path / "frames.jsonl"
    result = _stream(runner, tiny[1], source, "-o", out, "-o", video, "--frame-log", log,
                     "--every-frame", "--fps", "10")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"frame 2 of {source} is broken (image {source / 'shot2.png'} is damaged" in (
        result.stderr
    )
    assert "4 frames read" not in result.stderr and "3 frames read, 3 transformed" in (
        result.stderr
    )
    assert "1 broken" in result.stderr and "ended: end of source" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "frame-000001.png", "frame-000003.png", "frame-000004.png"]  # fmt: skip
    labels = read_labels(out / "frame-000003.png")["fastimg"]
    assert labels["fastimg:input_frame"] == "3" and labels["fastimg:prompt"] == "a red fox"
    assert [json.loads(line)["input_frame"] for line in log.read_text().splitlines()] == [1, 3, 4]
    import av

    with av.open(str(video)) as container:
        times = [float(f.time) for f in container.decode(video=0)]
    assert times == pytest.approx([0.0, 0.2, 0.3])


def test_raw_frames_from_stdin_come_out_raw_on_stdout_and_a_short_read_is_reported(runner, tiny):
    sent = frames(3)
    data = b"".join(values.tobytes() for values in sent) + b"\0" * 50
    size = f"{SIZE[0]}x{SIZE[1]}"
    result = _stream(runner, tiny[1], "-", "--size", size, "-o", "-", "--every-frame",
                     input=data)  # fmt: skip
    assert result.exit_code == 0, result.output
    out = np.frombuffer(result.stdout_bytes, np.uint8)
    assert out.size == 3 * SIZE[0] * SIZE[1] * 3  # 3 frames of the input's size
    assert f"stdout: rgb24 frames of {size}" in result.stderr
    assert "frame 4 of stdin is broken (stdin ended mid-frame: 50 of the 2304 bytes" in (
        result.stderr
    )


def test_a_video_file_streams_and_max_frames_ends_it(runner, tiny, tmp_path):
    pytest.importorskip("av")
    from tests.workflows.test_video import make_video, pictures

    make_video(tmp_path / "clip.mp4", pictures(6), audio_seconds=0)
    result = _stream(runner, tiny[1], tmp_path / "clip.mp4", "-o", tmp_path / "out",
                     "--every-frame", "--max-frames", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "frame-000001.png", "frame-000002.png"]  # fmt: skip
    assert "ended: 2 frames read (--max-frames)" in result.stderr


def test_the_preview_is_served_while_the_stream_runs_and_its_address_printed(
    runner, tiny, tmp_path
):
    (tmp_path / "in").mkdir()
    for i, values in enumerate(frames(2)):
        Image.fromarray(values).save(tmp_path / "in" / f"{i}.png")
    result = _stream(runner, tiny[1], tmp_path / "in", "--preview", "0", "--every-frame")
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("preview: ")]
    assert line.startswith("preview: http://127.0.0.1:") and "2 outputs" in result.stderr


def test_a_preview_port_in_use_is_refused_in_one_line(runner, tmp_path):
    import socket

    (tmp_path / "in").mkdir()
    Image.fromarray(frames(1)[0]).save(tmp_path / "in" / "a.png")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_line_error(_stream(runner, tmp_path, tmp_path / "in", "--preview", port))
    assert f"--preview {port}: cannot serve on 127.0.0.1:{port}" in line


def test_engines_that_cannot_load_leave_no_output_behind(runner, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(frames(1)[0]).save(tmp_path / "in" / "a.png")
    log = tmp_path / "frames.jsonl"
    result = _stream(runner, tmp_path / "no-engines", tmp_path / "in", "-o", tmp_path / "out",
                     "--frame-log", log)  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert not log.exists() and not (tmp_path / "out").exists()


def test_a_lora_reaches_every_streamed_frame(runner, tiny, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    import shutil

    from fastimg_export.random_models import write_random_model

    style = write_random_model("tiny-lora", tmp_path / "style.safetensors")
    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    (tmp_path / "in").mkdir()
    for i, values in enumerate(frames(2)):
        Image.fromarray(values).save(tmp_path / "in" / f"{i}.png")
    result = _stream(runner, engines, tmp_path / "in", "-o", tmp_path / "out", "--every-frame",
                     "--lora", f"{style}:0.8")  # fmt: skip
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "out").iterdir())
    assert [Image.open(path).text["fastimg:loras"] for path in written] == ["style:0.8"] * 2


def test_an_output_that_is_the_source_is_refused(runner, tmp_path):
    result = _stream(runner, tmp_path, tmp_path, "-o", tmp_path / ".")
    assert result.exit_code == 2 and "is SOURCE itself: write the outputs somewhere else" in (
        result.stderr
    )


def test_a_stream_without_an_output_is_refused(runner, tmp_path):
    result = _stream(runner, tmp_path, tmp_path)
    assert result.exit_code == 2 and "the stream has no output: pass -o FOLDER" in result.stderr


def test_raw_frames_are_not_written_to_a_terminal(runner, tmp_path, monkeypatch):
    import importlib

    command = importlib.import_module("fastimg.cli.stream")  # (the module, not the command)
    monkeypatch.setattr(command, "_stdout_is_a_terminal", lambda: True)
    result = _stream(runner, tmp_path, tmp_path, "-o", "-")
    assert result.exit_code == 2 and "pipe them into a player (| ffplay" in result.stderr


def test_raw_frames_without_their_size_are_refused_in_one_line(runner, tmp_path):
    line = _one_line_error(_stream(runner, tmp_path, "-", "-o", "-", input=b""))
    assert "pass --size WIDTHxHEIGHT" in line


@pytest.mark.skipif(sys.platform != "linux", reason="the v4l2 device path is Linux's")
def test_a_missing_camera_is_refused_in_one_line_before_the_engines_load(runner, tmp_path):
    line = _one_line_error(_stream(runner, tmp_path / "no-engines", "/dev/video987", "-o", "out"))
    assert "camera /dev/video987 does not exist" in line
    assert not (tmp_path / "out").exists()


def test_the_virtual_camera_without_pyvirtualcam_is_refused_naming_the_extra(
    runner, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)
    (tmp_path / "in").mkdir()
    Image.fromarray(frames(1)[0]).save(tmp_path / "in" / "a.png")
    line = _one_line_error(_stream(runner, tmp_path, tmp_path / "in", "--virtual-camera"))
    assert "pip install 'fastimg[stream]'" in line


def test_an_output_folder_holding_frames_is_refused_without_overwrite(runner, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(frames(1)[0]).save(tmp_path / "in" / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "frame-000001.png").write_bytes(b"kept")
    line = _one_line_error(_stream(runner, tmp_path, tmp_path / "in", "-o", tmp_path / "out"))
    assert "already holds frames: pass --overwrite" in line
    assert (tmp_path / "out" / "frame-000001.png").read_bytes() == b"kept"


def _process(engines, *args, prompt=("--prompt", "a red fox")) -> subprocess.Popen:
    """fastimg stream - in its own process, Ctrl-C handled as in a terminal (a test run in the
    background inherits SIGINT ignored)."""
    root = Path(__file__).parents[2]
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from fastimg.cli import main; sys.argv[0] = 'fastimg'; main()")  # fmt: skip
    words = [sys.executable, "-c", code, "stream", "-", "--size", f"{SIZE[0]}x{SIZE[1]}",
             "--engines", str(engines), "--backend", "onnxruntime", *map(str, prompt),
             "--steps", "2", *map(str, args)]  # fmt: skip
    return subprocess.Popen(words, stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=root,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    for _ in range(600):
        if path.exists() or process.poll() is not None:
            return
        time.sleep(0.2)


def test_a_source_that_stalls_ends_the_stream_after_the_timeout_in_one_line(tiny, tmp_path):
    process = _process(tiny[1], "-o", tmp_path / "out", "--stall-timeout", "2")
    try:
        process.stdin.write(frames(1)[0].tobytes())
        process.stdin.flush()  # then nothing more, the pipe left open
        process.wait(timeout=300)
        stderr = process.stderr.read()
    finally:
        process.kill()
    stderr = stderr.decode()
    assert process.returncode == 1, stderr
    assert "Error: the source sent no frame for 2 s" in stderr and "Traceback" not in stderr
    assert (tmp_path / "out" / "frame-000001.png").is_file()


def test_ctrl_c_ends_the_stream_cleanly_with_its_outputs_whole(tiny, tmp_path):
    pytest.importorskip("av")
    out = tmp_path / "out"
    process = _process(tiny[1], "-o", out, "-o", tmp_path / "live.mp4", "--stall-timeout", "600")
    try:
        process.stdin.write(frames(1)[0].tobytes())
        process.stdin.flush()
        _wait_for(out / "frame-000001.png", process)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=300)
        stderr = process.stderr.read()
    finally:
        process.kill()
    stderr = stderr.decode()
    assert process.returncode == 0, stderr
    assert "ended: interrupted (Ctrl-C)" in stderr and "Traceback" not in stderr
    import av

    with av.open(str(tmp_path / "live.mp4")) as container:
        assert len(list(container.decode(video=0))) == 1


def test_a_prompt_file_changed_mid_stream_applies_from_the_next_frame(tiny, tmp_path):
    from fastimg.media.label_reader import read_labels

    out, prompt = tmp_path / "out", tmp_path / "prompt.txt"
    prompt.write_text("a red fox\n")
    process = _process(tiny[1], "-o", out, "--every-frame", "--stall-timeout", "600",
                       prompt=("--prompt-file", prompt))  # fmt: skip
    try:
        process.stdin.write(frames(1)[0].tobytes())
        process.stdin.flush()
        _wait_for(out / "frame-000001.png", process)
        prompt.write_text("a blue heron in the fog")  # (another size: seen as changed)
        process.stdin.write(frames(1)[0].tobytes())
        process.stdin.close()  # the source ends after frame 2
        process.wait(timeout=300)
        stderr = process.stderr.read().decode()
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "prompt: 'a blue heron in the fog' from this frame on" in stderr
    first = read_labels(out / "frame-000001.png")["fastimg"]
    second = read_labels(out / "frame-000002.png")["fastimg"]
    assert first["fastimg:prompt"] == "a red fox"
    assert second["fastimg:prompt"] == "a blue heron in the fog"


@pytest.mark.parametrize(
    "words,detail",
    [
        ([], "give the prompt as --prompt TEXT or --prompt-file FILE"),
        (["--prompt", "x", "--prompt-file", "p.txt"], "one of them"),
    ],
)
def test_the_prompt_comes_from_one_of_prompt_and_prompt_file(runner, tmp_path, words, detail):
    group = click.Group()
    group.add_command(stream)
    result = runner.invoke(
        group,
        ["stream", str(tmp_path), "-o", str(tmp_path / "o"), "--engines", str(tmp_path), *words],
    )
    assert result.exit_code == 2 and detail in result.stderr


def test_an_empty_prompt_file_is_refused_in_one_line(runner, tmp_path):
    (tmp_path / "p.txt").write_text("")
    group = click.Group()
    group.add_command(stream)
    words = ["stream", str(tmp_path), "-o", str(tmp_path / "o"), "--engines", str(tmp_path),
             "--prompt-file", str(tmp_path / "p.txt")]  # fmt: skip
    result = runner.invoke(group, words)
    assert "is empty: write the prompt in it" in _one_line_error(result)


@pytest.mark.parametrize("given", ["--control-image", "--control-preprocess"])
def test_a_control_steers_every_frame_as_the_single_call(runner, tiny_controlnet, tmp_path, given):
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.media.images import psnr

    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for i, values in enumerate(frames(3, seed=3), 1):
        Image.fromarray(values).save(source / f"shot{i}.png")
    steer = source / "shot3.png"  # (a frame too: the stream reads it as one)
    words = ["--control-image", steer] if given == "--control-image" else [given, "canny"]
    result = _stream(runner, tiny_controlnet[1], source, "-o", out, "--every-frame",
                     "--max-frames", "2", "--control-scale", "1.5", *words)  # fmt: skip
    assert result.exit_code == 0, result.output
    pipe = Img2ImgPipeline.from_engines(tiny_controlnet[1], backend="onnxruntime")
    control = {"control_image": str(steer)} if given == "--control-image" else {
        "control_preprocess": "canny"}  # fmt: skip
    for k in (1, 2):
        frame = Image.open(source / f"shot{k}.png")
        alone = pipe("a red fox", frame, strength=0.5, num_inference_steps=2, seed=0,
                     controlnet_conditioning_scale=1.5, **control)[0]  # fmt: skip
        assert psnr(Image.open(out / f"frame-{k:06d}.png"), alone) >= 40


def test_a_control_with_the_stream_batch_steers_every_frame(runner, tiny_controlnet, tmp_path):
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.media.images import psnr

    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for i, values in enumerate(frames(3, seed=4), 1):
        Image.fromarray(values).save(source / f"shot{i}.png")
    # (strength 1 on the 2 steps: both stages batched)
    words = ["--control-preprocess", "canny", "--stream-batch", "--scheduler", "lcm",
             "--every-frame", "--strength", "1.0"]  # fmt: skip
    result = _stream(runner, tiny_controlnet[1], source, "-o", out, *words)
    assert result.exit_code == 0, result.output
    pipe = Img2ImgPipeline.from_engines(tiny_controlnet[1], backend="onnxruntime")
    for k in (1, 2, 3):
        frame = Image.open(source / f"shot{k}.png")
        alone = pipe("a red fox", frame, strength=1.0, num_inference_steps=2, seed=0,
                     guidance_scale=0, scheduler="lcm", control_preprocess="canny")[0]  # fmt: skip
        assert psnr(Image.open(out / f"frame-{k:06d}.png"), alone) >= 40


def test_a_mask_repaints_every_frame_as_the_single_masked_call(runner, tiny, tmp_path):
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.media.images import psnr

    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for i, values in enumerate(frames(2, seed=5), 1):
        Image.fromarray(values).save(source / f"shot{i}.png")
    picture = np.zeros((SIZE[1], SIZE[0]), dtype=np.uint8)
    picture[4:16, 8:24] = 255
    Image.fromarray(picture).save(tmp_path / "mask.png")
    words = ["--mask", tmp_path / "mask.png", "--mask-invert", "--mask-blur", "2",
             "--stream-batch", "--scheduler", "euler", "--every-frame"]  # fmt: skip
    result = _stream(runner, tiny[1], source, "-o", out, *words)
    assert result.exit_code == 0, result.output
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    for k in (1, 2):
        frame = Image.open(source / f"shot{k}.png")
        alone = pipe("a red fox", frame, strength=0.5, num_inference_steps=2, seed=0,
                     guidance_scale=0.0, scheduler="euler", mask_image=tmp_path / "mask.png",
                     mask_invert=True, mask_blur=2)[0]  # fmt: skip
        with Image.open(out / f"frame-{k:06d}.png") as made:
            assert psnr(made, alone) >= 40
            assert made.text["fastimg:mask"] == "inverted"


def test_mask_settings_without_a_mask_are_refused_in_one_line(runner, tmp_path):
    result = _stream(runner, tmp_path, tmp_path, "-o", tmp_path / "out", "--mask-invert")
    assert "--mask-invert shape a mask, but no --mask was given" in _one_line_error(result, 2)


def test_an_empty_mask_is_refused_in_one_line_before_any_frame(runner, tiny, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(frames(1)[0]).save(tmp_path / "in" / "shot1.png")
    Image.new("L", SIZE, 0).save(tmp_path / "black.png")
    result = _stream(runner, tiny[1], tmp_path / "in", "-o", tmp_path / "out", "--mask",
                     tmp_path / "black.png")  # fmt: skip
    assert "the mask is empty" in _one_line_error(result)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(("given", "asked"), [([], None), (["--shapes", "dynamic"], "dynamic")])
def test_a_stream_asks_for_the_shapes_of_one_image_size(runner, tiny, tmp_path, monkeypatch,
                                                         given, asked):  # fmt: skip
    from PIL import Image

    from fastimg.diffusion.pipeline import Img2ImgPipeline

    (tmp_path / "in").mkdir()
    for k, frame in enumerate(frames(2)):
        Image.fromarray(frame).save(tmp_path / "in" / f"{k}.png")
    load, asks = Img2ImgPipeline.from_engines, []
    monkeypatch.setattr(Img2ImgPipeline, "from_engines", classmethod(
        lambda cls, *a, **kw: asks.append(kw["shapes"]) or load(*a, **kw)))  # fmt: skip
    result = _stream(runner, tiny[1], tmp_path / "in", "-o", tmp_path / "out", "--every-frame",
                     *given)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert asks == [asked]
