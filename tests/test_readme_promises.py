"""What the README's opening promises about the exact and the fast path holds."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastimg.backends import select
from fastimg.diffusion.engine_set import describe_run

README = Path(__file__).parents[1] / "README.md"


def test_the_readme_names_the_exact_path_and_the_fast_one_right_after_the_quick_start():
    sections = README.read_text().split("\n## ")
    assert sections[1].startswith("Quick start") and "git clone" in sections[1]
    paths = sections[2]
    assert paths.startswith("The exact path and the fast path")
    assert "**The exact path**, `--precision fp32`" in paths and "**The fast path**" in paths
    assert "Every run prints `running on BACKEND (PRECISION)`" in paths


def test_the_default_is_fast_where_the_cpu_has_bf16_and_exact_where_it_has_not(monkeypatch):
    monkeypatch.setattr(select, "installed", lambda name: name in ("onnxruntime", "openvino"))
    monkeypatch.setattr(select, "gpu_present", lambda: False)
    monkeypatch.setattr(select, "cpu_supports_bf16", lambda: True)
    backend, precision = select.resolve()
    assert (backend, precision) == ("openvino", "bf16")
    assert "the fast path" in describe_run(backend, precision)
    monkeypatch.setattr(select, "cpu_supports_bf16", lambda: False)
    backend, precision = select.resolve()
    assert (backend, precision) == ("openvino", "fp32")
    assert "the exact path, matching diffusers" in describe_run(backend, precision)


def _commands(text: str | None = None) -> list[list[str]]:
    """Every `fastimg ...` command line in the README's (or `text`'s) bash blocks, continuations
    joined."""
    import re
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text or README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            for part in re.split(r"&&|\|", line):  # (a pipeline's commands each)
                words = shlex.split(part.strip())
                if words[:1] == ["fastimg"]:
                    commands.append(words[1:])
    return commands


def test_every_option_the_readme_shows_exists():
    from fastimg.cli import cli

    commands = _commands()
    assert len(commands) >= 10
    for words in commands:
        command = cli.commands[words[0]]
        if hasattr(command, "commands"):  # a group: its subcommand has the options
            command = command.commands[words[1]]
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        used = {w.split("=")[0] for w in words[1:] if w.startswith("-") and w != "-"}  # (-: stdio)
        assert used <= known, (words, used - known)


def test_the_workflows_run_as_the_readme_types_them(tiny, photo, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from fastimg.cli import cli
    from fastimg.media.label_reader import read_labels

    workflows = README.read_text().split("## Workflows")[1].split("\n## ")[0]
    monkeypatch.chdir(tmp_path)
    photo.save("photo.jpg")
    photo.save("product.png")
    (tmp_path / "interiors" / "kitchen").mkdir(parents=True)
    photo.save("interiors/hall.png")
    photo.save("interiors/kitchen/sink.png")
    with open("jobs.csv", "w") as f:
        f.write("image,prompt,strength,seed\nphoto.jpg,a fox,0.5,1\nproduct.png,a cat,0.3,2\n")
    pytest.importorskip("c2pa")
    pytest.importorskip("av")
    from tests.pki import make_pki
    from tests.workflows.test_video import make_video, pictures

    make_pki(tmp_path)  # chain.pem, key.pem
    make_video(tmp_path / "clip.mp4", pictures(6))
    ran = 0
    for words in _commands(workflows):
        words = [str(tiny[1]) if word == "engines/sd15" else word for word in words]
        result = CliRunner().invoke(cli, words)
        assert result.exit_code == 0, (words, result.output)
        ran += 1
    assert ran == 7
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "1-photo-s0.5-1.png", "2-product-s0.3-2.png", "photo-grid.png", "photo-s0.25-42.png",
        "photo-s0.5-42.png", "photo-s0.75-42.png",
    ]  # fmt: skip
    assert len(list((tmp_path / "ab-test").glob("product-s0.8-*.webp"))) == 4
    assert (tmp_path / "restyled" / "kitchen" / "sink-s0.8-1.jpg").is_file()
    assert read_labels(tmp_path / "signed" / "photo-s0.8-42.png")["c2pa"]
    assert len(list((tmp_path / "clip-frames").iterdir())) == 6
    assert (tmp_path / "clip-painted.mp4").is_file()


def _bench_commands() -> list[tuple[str, list[str]]]:
    """Every `python -m fastimg_bench.NAME ...` the READMEs show (code blocks and inline code),
    as (NAME, words after it)."""
    import re
    import shlex

    found = []
    for readme in (README, README.parent / "bench" / "results" / "README.md"):
        text = readme.read_text()
        spans = re.findall(r"```bash\n(.*?)```", text, re.S) + re.findall(r"`([^`\n]+)`", text)
        for span in spans:
            for line in span.replace("\\\n", " ").splitlines():
                match = re.search(r"python -m fastimg_bench\.(\w+)(.*)", line)
                if match and "git checkout" not in line:  # (a record made by older code)
                    words = shlex.split(match.group(2).split("  #")[0].split(";")[0])
                    found.append((match.group(1), words))
    return found


def test_every_bench_command_the_readmes_show_exists_with_its_options():
    import importlib

    commands = _bench_commands()
    assert len(commands) >= 8
    for name, words in commands:
        module = importlib.import_module(f"fastimg_bench.{name}")
        parser = module.parser()
        known = {flag for action in parser._actions for flag in action.option_strings}
        used = {word.split("=")[0] for word in words if word.startswith("-")}
        assert used <= known, (name, words, used - known)
        needed = [a.option_strings for a in parser._actions if a.required and a.option_strings]
        assert all(set(flags) & used for flags in needed), (name, words, needed)


def test_the_lora_commands_run_as_the_readme_types_them(tiny, photo, tmp_path, monkeypatch):
    import shutil

    from click.testing import CliRunner

    from fastimg.cli import cli
    from fastimg.media.label_reader import read_labels

    pytest.importorskip("onnx")
    from fastimg_export.random_models import write_random_model

    part = README.read_text().split("## LoRAs at run time")[1].split("\n## ")[0]
    monkeypatch.chdir(tmp_path)
    photo.save("photo.jpg")
    engines = shutil.copytree(tiny[1], tmp_path / "engines" / "tiny")
    for seed, name in enumerate(("watercolor", "ink")):
        write_random_model("tiny-lora", tmp_path / "styles" / f"{name}.safetensors", seed=seed)
    labels = []
    for words in _commands(part):
        words = [str(engines) if word == "engines/sd15" else word for word in words]
        result = CliRunner().invoke(cli, words)
        assert result.exit_code == 0, (words, result.output)
        (written,) = [line for line in result.output.splitlines() if line.endswith(".png")]
        labels.append(read_labels(written)["fastimg"]["fastimg:loras"])
    assert labels == ["watercolor:0.8", "ink:0.7, watercolor:0.5"]


def test_the_mask_recipes_run_as_the_readme_types_them(
    tiny_inpaint, tiny_inpaint_controlnet, photo, tmp_path, monkeypatch
):
    """The "new sofa", "new background", "only masked", masked content and mask-with-ControlNet
    commands of the README's masks part, on the tiny inpainting models (their exports are the
    tests' own)."""
    pytest.importorskip("cv2")
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image, ImageFilter

    from fastimg.cli import cli

    part = README.read_text().split("### Masks (inpainting)")[1].split("\n## ")[0]
    monkeypatch.chdir(tmp_path)
    room = photo.crop((0, 0, 88, 64))
    room.save("room.png")
    photo.save("portrait.png")
    for name, (top, bottom, left, right) in {"sofa-mask.png": (30, 60, 10, 70),
                                             "person-mask.png": (5, 68, 30, 60),
                                             "lamp-mask.png": (8, 24, 60, 72)}.items():  # fmt: skip
        values = np.zeros((64, 88) if name != "person-mask.png" else (68, 90), np.uint8)
        values[top:bottom, left:right] = 255
        Image.fromarray(values).save(name)
    commands = [words for words in _commands(part) if words[0] == "transform"]
    assert len(commands) == 5
    folders = {"engines/sd15-inpaint": str(tiny_inpaint[1]),
               "engines/sd15-inpaint-canny": str(tiny_inpaint_controlnet[1])}  # fmt: skip
    made = []
    for words in commands:
        words = [folders.get(word, word) for word in words]
        before = set(Path("out").glob("*")) if Path("out").exists() else set()
        result = CliRunner().invoke(cli, words)
        assert result.exit_code == 0, (words, result.output)
        (new,) = set(Path("out").glob("*")) - before
        made.append(Image.open(new))
    sofa, background, lamp, shelf, steered = made
    assert shelf.info["fastimg:masked_content"] == "latent_noise"
    assert steered.info["fastimg:control_preprocess"] == "canny" and "fastimg:mask" in steered.info
    kept = np.asarray(Image.open("sofa-mask.png").filter(ImageFilter.GaussianBlur(4))) == 0
    assert np.array_equal(np.asarray(sofa.convert("RGB"))[kept], np.asarray(room)[kept])
    assert sofa.info["fastimg:keep_unmasked"] == "True" and sofa.info["fastimg:mask_blur"] == "4"
    assert background.info["fastimg:mask"] == "inverted" and background.size == (88, 64)
    assert lamp.info["fastimg:mask_padding"] == "32" and lamp.size == (88, 64)
    outside = np.asarray(Image.open("lamp-mask.png")) == 0  # (pasted back through the mask)
    assert not np.array_equal(np.asarray(lamp.convert("RGB"))[~outside], np.asarray(room)[~outside])
    assert np.array_equal(np.asarray(lamp.convert("RGB"))[outside], np.asarray(room)[outside])


def test_the_controlnet_recipes_run_as_the_readme_types_them(
    tiny_controlnet, tiny_multi_controlnet, photo, tmp_path, monkeypatch
):
    pytest.importorskip("cv2")
    from click.testing import CliRunner

    from fastimg.cli import cli
    from fastimg.media.label_reader import read_labels

    use = README.read_text().split("## Use")[1].split("\n## ")[0]
    part = use.split("- **ControlNet**")[1].split("\n- ")[0]
    assert "`tiny-controlnet`" in use.split("fastimg make-model ARCH")[1]
    monkeypatch.chdir(tmp_path)
    photo.save("room.jpg")
    sketch = np.full((64, 88, 3), 245, np.uint8)
    sketch[10:54, 20] = sketch[10, 20:70] = sketch[10:54, 70] = 30  # dark strokes on paper
    Image.fromarray(sketch).save("sketch.png")
    Image.fromarray(255 - sketch).save("edges.png")  # control images made elsewhere
    ramp = np.tile(np.linspace(0, 255, 88).astype(np.uint8), (64, 1))  # near to far
    Image.fromarray(np.stack([ramp] * 3, axis=-1)).save("depth.png")
    commands = _commands(part)
    exports = [words for words in commands if words[0] == "export"]
    transforms = [words for words in commands if words[0] == "transform"]
    assert len(exports) == len(transforms) == 3 and len(commands) == 6
    engines = {1: tiny_controlnet[1], 2: tiny_multi_controlnet[1]}  # by ControlNets exported
    made_labels = []
    for export, words in zip(exports, transforms, strict=True):
        folder = export[export.index("-o") + 1]
        controlnets = export.count("--controlnet")
        assert controlnets >= 1 and words[words.index("--engines") + 1] == folder
        assert float(words[words.index("--strength") + 1]) >= 0.85  # high strength, kept lines
        words = [str(engines[controlnets]) if word == folder else word for word in words]
        out = tmp_path / "out"
        for old in out.glob("*"):
            old.unlink()
        result = CliRunner().invoke(cli, words)
        assert result.exit_code == 0, (words, result.output)
        (made,) = out.iterdir()
        made_labels.append(read_labels(made)["fastimg"])
    assert [labels["fastimg:control_preprocess"] for labels in made_labels] == [
        "scribble", "canny", "none"]  # fmt: skip
    assert made_labels[2]["fastimg:control_scale"] == "[1.0, 0.6]"  # one per ControlNet


def test_the_comfyui_commands_run_as_the_readme_types_them(tiny, tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from fastimg.cli import cli

    section = README.read_text().split("## ComfyUI")[1].split("\n## ")[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ComfyUI" / "custom_nodes").mkdir(parents=True)
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "sd15").symlink_to(tiny[1])
    ran = []
    for words in _commands(section):
        words = [str(tmp_path) + word[1:] if word.startswith("~/") else word for word in words]
        result = CliRunner().invoke(cli, words)
        assert result.exit_code == 0, (words, result.output)
        ran.append(words[0])
    assert ran == ["comfyui", "transform"]
    nodes = tmp_path / "ComfyUI" / "custom_nodes" / "comfyui-fastimg"
    shown = section.split("$(cat ~/")[1].split(")")[0]
    workflow = json.loads((tmp_path / shown).read_text())
    assert (tmp_path / shown).parent == nodes
    assert workflow["2"]["inputs"]["engines_folder"] == str(tiny[1].resolve())
    assert workflow["3"]["inputs"]["prompt"] in section  # the transform line's settings
    assert (tmp_path / "same-as-comfyui.png").is_file()


def test_the_stream_recipes_run_as_the_readme_types_them(tiny, tmp_path, monkeypatch):
    """The webcam recipes name each OS's camera as its capture format does (here, with no
    camera, each is refused in one line); the stdin, video file and folder recipes run."""
    pytest.importorskip("av")
    import json

    from click.testing import CliRunner

    from fastimg.cli import cli
    from fastimg.stream.sources import camera_spec
    from tests.workflows.test_video import make_video, pictures

    part = README.read_text().split("## Webcam / live stream")[1].split("\n## ")[0]
    commands = _commands(part)
    assert len(commands) == 8 and all(words[0] == "stream" for words in commands)
    cameras = {"/dev/video0": ("Linux", "v4l2"), "0": ("Darwin", "avfoundation"),
               "video=Integrated Camera": ("Windows", "dshow")}  # fmt: skip
    monkeypatch.chdir(tmp_path)
    make_video(tmp_path / "clip.mp4", pictures(6), audio_seconds=0)
    Path("frames").mkdir()
    for i, values in enumerate(pictures(3, seed=1)):
        Image.fromarray(values).save(f"frames/{i}.png")
    background = np.full(pictures(1)[0].shape[:2], 255, np.uint8)
    background[8:-8, 8:-8] = 0  # (a person in the middle, kept)
    Image.fromarray(background).save("mask.png")
    refused = 0
    for words in commands:
        words = [str(tiny[1]) if word == "engines/sd-turbo-taesd" else word for word in words]
        source = words[1]
        if source in cameras:
            system, capture = cameras[source]
            assert camera_spec(source, system=system).format == capture
            if Path("/dev/video0").exists():
                continue  # (a real camera here: not streamed from in a test)
            result = CliRunner().invoke(cli, words)
            assert result.exit_code == 1 and "Traceback" not in result.output
            (line,) = result.stderr.splitlines()
            assert "does not exist" in line
            refused += 1
            continue
        size = words[words.index("--size") + 1] if "--size" in words else None
        raw = None
        if source == "-":
            width, height = map(int, size.split("x"))
            raw = np.zeros((2, height, width, 3), np.uint8).tobytes()
        result = CliRunner().invoke(cli, words, input=raw)
        assert result.exit_code == 0, (words, result.output)
    assert refused in (0, 4)
    live = {p.name for p in Path("live").iterdir()}  # (stdin is live: frame 1 may be dropped)
    assert "frame-000002.png" in live and live <= {"frame-000001.png", "frame-000002.png"}
    assert sorted(p.name for p in Path("painted").iterdir()) == [
        "frame-000001.png", "frame-000002.png", "frame-000003.png"]  # fmt: skip
    kept = [json.loads(line)["input_frame"] for line in Path("live.jsonl").read_text().splitlines()]
    assert kept and kept == sorted(set(kept)) and set(kept) <= set(range(1, 7))
    assert Path("live.mp4").is_file()
    beach = sorted(Path("beach").iterdir())
    assert len(beach) == 3 and Image.open(beach[0]).text["fastimg:mask_blur"] == "4"


def test_a_folder_exported_in_fp16_is_never_called_the_exact_path():
    for precision in ("fp32", "fp16", "bf16"):
        line = describe_run("openvino", precision, fp16_export=True)
        assert "exact path, matching" not in line and "no exact path" in line
    assert "fp32 arithmetic on fp16 weights" in describe_run("openvino", "fp32", fp16_export=True)
