"""The CLI against hostile inputs: every failure is a message and a non-zero exit, nothing lost."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fastimg.cli import cli
from fastimg.engine_folder.manifest import load_manifest
from fastimg.media import labels
from tests.corpus import awkward_images, bad_files, flip_a_byte, write


def transform(runner, engines, *args, prompt="a red fox"):
    base = ["transform", "--engines", str(engines), "--prompt", prompt, "--steps", "2"]
    return runner.invoke(cli, [*base, "--strength", "0.5", *map(str, args)])


def test_a_batch_of_bad_files_reports_each_and_keeps_the_good_one(runner, tiny, picture, tmp_path):
    bad = write(tmp_path / "bad", bad_files())
    out = tmp_path / "out"
    result = transform(runner, tiny[1], *bad.values(), picture, "-o", out, "--seed", "3")
    assert result.exit_code == 1
    assert f"{len(bad)} of {len(bad) + 1} images failed" in result.output
    for name, (_, message) in bad_files().items():
        assert result.output.count(f"{bad[name]} (") == 1 and message in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["in-s0.5-3.png"]  # no temporary leftovers


def test_awkward_but_valid_images_all_work(runner, tiny, tmp_path):
    files = write(tmp_path / "awkward", awkward_images())
    out = tmp_path / "out"
    result = transform(runner, tiny[1], *files.values(), "-o", out, "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "first frame" in result.output
    written = {p.name: Image.open(p).size for p in out.iterdir()}
    assert len(written) == len(files)
    assert written["rotated-s0.5-3.png"] == (40, 48)  # EXIF orientation honoured
    assert written["extreme-aspect-s0.5-3.png"] == (1024, 16)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--guidance", "-1"], "x>=0"),
        (["--guidance", "nan"], "nan"),
        (["--seed", "-1"], "0<=x<=4294967295"),
        (["--seed", str(2**32)], "0<=x<=4294967295"),
        (["--num-images", "0"], "1<=x<=64"),
        (["--num-images", "65"], "1<=x<=64"),
        (["--steps", "100000"], "1<=x<=1000"),
        (["--size", "abc"], "WIDTHxHEIGHT"),
        (["--size", "0x0"], "--size"),
        (["--size", "8x8"], "--size"),
        (["--size", "20000"], "between 16 and"),
        (["--max-pixels", "0"], "x>=1"),
        (["--backend", "cuda-magic"], "is not one of"),
        (["--precision", "int4"], "is not one of"),
    ],
)
def test_parameters_outside_their_ranges_are_refused(
    runner, tiny, picture, tmp_path, args, message
):
    result = transform(runner, tiny[1], picture, "-o", tmp_path / "o", *args)
    assert result.exit_code == 2 or (result.exit_code == 1 and "error" in result.output.lower())
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        "一只在雪地里的红狐狸",
        "ثعلب أحمر في الثلج",
        "рыжая лиса на снегу 🦊❄️",
        "e\u0301\u200d\u2063 mixed\tcontrol\x00chars",
    ],
)
def test_prompts_in_any_script_work(runner, tiny, picture, tmp_path, prompt):
    result = transform(
        runner, tiny[1], picture, "-o", tmp_path / "o.png", "--seed", "1", prompt=prompt
    )
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "o.png").text["fastimg:prompt"] == prompt.replace("\x00", "\x00")


def test_a_prompt_of_undecodable_bytes_is_refused(runner, tiny, picture, tmp_path):
    result = transform(runner, tiny[1], picture, "-o", tmp_path / "o.png", prompt="fox \udcff")
    assert result.exit_code == 1 and "not valid Unicode" in result.output
    assert not (tmp_path / "o.png").exists()


def test_a_very_long_prompt_is_truncated_with_a_warning(runner, tiny, picture, tmp_path):
    prompt = "a watercolor painting of a mountain " * 300
    result = transform(runner, tiny[1], picture, "-o", tmp_path / "o.png", prompt=prompt)
    assert result.exit_code == 0, result.output
    assert "truncated" in result.output
    assert len(result.output) < 2000  # the warning quotes the prompt's start, not 10 KB


def test_a_prompt_beyond_the_limit_is_refused_before_anything_loads(
    runner, tiny, picture, tmp_path
):
    from fastimg.settings import MAX_PROMPT_CHARS

    prompt = "fox " * (MAX_PROMPT_CHARS // 4 + 1)
    result = transform(runner, tiny[1], picture, "-o", tmp_path / "o.png", prompt=prompt)
    assert result.exit_code == 1
    assert f"more than the {MAX_PROMPT_CHARS} fastimg takes" in result.output
    assert len(result.output) < 1000 and not (tmp_path / "o.png").exists()


def test_size_resizes_before_the_transform(runner, tiny, picture, tmp_path):
    result = transform(runner, tiny[1], picture, "-o", tmp_path / "a.png", "--size", "64x48")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "a.png").size == (64, 48)
    result = transform(runner, tiny[1], picture, "-o", tmp_path / "b.png", "--size", "45")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "b.png").size == (40, 32)  # 45x34, floored to multiples of 8


@pytest.mark.parametrize("stage", ["vae_encoder", "unet", "vae_decoder"])
def test_nan_is_reported_with_its_stage_and_nothing_is_saved(
    runner, tiny, picture, tmp_path, monkeypatch, stage
):
    from fastimg import backends

    real = backends.load_session

    class Poisoned:
        def __init__(self, session):
            self.session = session
            self.input_names, self.output_names = session.input_names, session.output_names

        def run(self, feeds):
            out = self.session.run(feeds)
            return {k: np.full_like(v, np.nan) for k, v in out.items()}

    def load(backend, path, options):
        session = real(backend, path, options)
        return Poisoned(session) if path.parent.name == stage else session

    monkeypatch.setattr(backends, "load_session", load)
    out = tmp_path / "o.png"
    result = transform(runner, tiny[1], picture, "-o", out)
    assert result.exit_code == 1
    where = {
        "vae_encoder": "VAE encoder",
        "unet": "UNet output at step 1",
        "vae_decoder": "decoded",
    }
    assert "NaN or Inf appeared" in result.output and where[stage] in result.output
    (line,) = [ln for ln in result.output.splitlines() if "NaN or Inf" in ln]
    precision = "fp32" if "(fp32)" in line else None
    if precision == "fp32":  # an fp32 run is not told to blame fp16 or to switch to fp32
        assert "fp16" not in line and "--precision fp32" not in line
    else:
        assert "--precision fp32" in line
    assert not out.exists() and list(tmp_path.glob(".o.png*")) == []


def test_a_failed_write_keeps_the_existing_output(runner, tiny, picture, tmp_path, monkeypatch):
    out = tmp_path / "o.png"
    out.write_bytes(b"previous result")

    def broken_save(fp, *args, **kwargs):
        fp.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(labels, "_encode_into", broken_save)  # (whichever encoder writes it)
    result = transform(runner, tiny[1], picture, "-o", out, "--overwrite")
    assert result.exit_code != 0
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "o.png"]


def test_a_full_disk_fails_that_output_and_the_batch_goes_on(
    runner, tiny, picture, tmp_path, monkeypatch
):
    import errno

    second = tmp_path / "second.png"
    Image.open(picture).save(second)
    real_save, calls = labels._encode_into, []

    def full_once(fp, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(fp, *args, **kwargs)

    monkeypatch.setattr(labels, "_encode_into", full_once)
    out = tmp_path / "out"
    result = transform(runner, tiny[1], picture, second, "-o", out, "--seed", "1")
    assert result.exit_code == 1
    assert "cannot write" in result.output and "No space left on device" in result.output
    assert "1 of 2 images failed" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["second-s0.5-1.png"]


def test_engine_folder_problems_are_reported(runner, tiny, picture, tmp_path):
    import shutil

    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    (engines / "manifest.json").write_text("{broken")
    result = transform(runner, engines, picture, "-o", tmp_path / "o")
    assert result.exit_code == 1 and "cannot be read" in result.output
    result = transform(runner, tiny[0], picture, "-o", tmp_path / "o")
    assert result.exit_code == 1 and "is a diffusers model" in result.output


def test_info_verify_rehashes_every_file(runner, tiny, tmp_path):
    import shutil

    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    result = runner.invoke(cli, ["info", str(engines), "--verify"])
    assert result.exit_code == 0 and "match" in result.output
    manifest = load_manifest(engines)
    assert f"all {len(manifest.verified)} files fastimg opens match" in result.output
    assert set(manifest.verified) == set(manifest.files)  # all listed files are opened here
    flip_a_byte(engines / "text_encoder" / "model.onnx", keep_mtime=True)
    assert runner.invoke(cli, ["info", str(engines)]).exit_code == 0  # stamp trusted
    result = runner.invoke(cli, ["info", str(engines), "--verify"])
    assert result.exit_code == 1 and "SHA-256" in result.output


@pytest.mark.parametrize("failure", [RuntimeError, MemoryError])
def test_an_engine_failing_mid_run_is_one_line_naming_the_component(
    runner, tiny, picture, tmp_path, monkeypatch, failure
):
    from fastimg.backends.onnxruntime import OnnxRuntimeSession

    real = OnnxRuntimeSession.run

    def failing(self, feeds):
        if "latent_sample" in feeds:  # the VAE decoder, after the whole denoising loop
            raise failure("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate\nmore")
        return real(self, feeds)

    monkeypatch.setattr(OnnxRuntimeSession, "run", failing)
    out = tmp_path / "o.png"
    result = transform(runner, tiny[1], picture, "-o", out, "--backend", "onnxruntime")
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = [ln for ln in result.output.splitlines() if "vae_decoder engine" in ln]
    assert "latent_sample [1, 4, 8, 11]" in line
    assert ("ran out of memory" if failure is MemoryError else "Failed to allocate") in line
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny_fp16(tmp_path_factory):
    """An engine folder of the tiny model exported whole in fp16 (export --precision fp16)."""
    pytest.importorskip("torch")
    from fastimg_export.random_models import write_random_model

    root = tmp_path_factory.mktemp("tiny-fp16")
    model = write_random_model("tiny", root / "model")
    result = CliRunner().invoke(cli, ["export", str(model), "-o", str(root / "e"),
                                      "--precision", "fp16"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "e"


def test_a_folder_exported_in_fp16_runs_as_fp16_and_refuses_fp32(
    runner, tiny_fp16, picture, tmp_path
):
    out = tmp_path / "o.png"
    refused = transform(runner, tiny_fp16, picture, "--backend", "onnxruntime",
                        "--precision", "fp32", "-o", out)  # fmt: skip
    assert refused.exit_code == 1 and not out.exists()
    (line,) = [ln for ln in refused.output.splitlines() if "exported in fp16" in ln]
    assert "no fp32 graphs" in line and "without --precision fp16" in line
    ran = transform(runner, tiny_fp16, picture, "--backend", "onnxruntime", "-o", out)
    assert ran.exit_code == 0, ran.output
    assert "running on onnxruntime (fp16)" in ran.output and "no exact path" in ran.output
    assert Image.open(out).info["fastimg:precision"] == "fp16"


@pytest.mark.parametrize("where", ["images", "engines", "control-image"])
def test_a_nul_character_in_a_path_is_a_usage_error(runner, tiny, picture, tmp_path, where):
    args = {"images": "in\x00.png", "engines": str(tiny[1]), "control-image": None}
    if where != "images":
        args["images"] = str(picture)
    if where == "engines":
        args["engines"] = "engines\x00"
    words = ["transform", args["images"], "--engines", args["engines"], "--prompt", "a fox",
             "-o", str(tmp_path / "out")]  # fmt: skip
    if where == "control-image":
        words += ["--control-image", "edges\x00.png"]
    result = runner.invoke(cli, words)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "holds a NUL character" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
