"""Caches of compiled artifacts are keyed by everything that changes what was compiled."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastimg.backends.registry import describe
from fastimg.backends.select import installed
from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.engine_folder.compiled_cache import KEY_FILE, cache_key, keyed_folder

OPENVINO_CACHE = describe("openvino").cache

PARTS = {"backend": "openvino", "version": "2026.4", "precision": "fp32", "device": "cpu A"}


def test_each_part_of_the_key_makes_another_folder(tmp_path):
    folder = keyed_folder(tmp_path, "unet", PARTS)
    assert folder.parent == tmp_path and folder.name.startswith("unet-")
    assert json.loads((folder / KEY_FILE).read_text()) == PARTS
    for part, other in [
        ("version", "2026.5"),
        ("precision", "bf16"),
        ("device", "cpu B"),
        ("options", {"threads": 4}),
        ("graph", "abc"),
    ]:
        assert keyed_folder(tmp_path, "unet", {**PARTS, part: other}) != folder
    assert keyed_folder(tmp_path, "unet", dict(PARTS)) == folder  # the same key, the same folder


def test_a_folder_whose_record_disagrees_is_emptied_before_use(tmp_path):
    folder = keyed_folder(tmp_path, "unet", PARTS)
    (folder / "blob").write_bytes(b"compiled for PARTS")
    assert keyed_folder(tmp_path, "unet", PARTS) == folder
    assert (folder / "blob").exists()  # a matching record keeps what was compiled
    (folder / KEY_FILE).write_text(json.dumps({**PARTS, "precision": "bf16"}))  # foreign
    assert keyed_folder(tmp_path, "unet", PARTS) == folder
    assert not (folder / "blob").exists()
    assert json.loads((folder / KEY_FILE).read_text()) == PARTS


def test_unkeyed_blobs_of_older_versions_are_removed(tmp_path):
    (tmp_path / "1234567.blob").write_bytes(b"fp32 or bf16? nobody knows")
    keyed_folder(tmp_path, "unet", PARTS)
    assert not (tmp_path / "1234567.blob").exists()


def test_an_unwritable_cache_means_no_cache(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the folder would go")
    assert keyed_folder(blocker, "unet", PARTS) is None
    assert cache_key(PARTS) == cache_key(dict(reversed(PARTS.items())))


OPENVINO = pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]")


@OPENVINO
def test_fp32_and_bf16_compile_into_separate_folders(tmp_path, tiny, photo):
    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    shutil.rmtree(engines / OPENVINO_CACHE, ignore_errors=True)
    job = dict(prompt="a cat", image=photo, strength=0.5, num_inference_steps=4, seed=3)
    for precision in ("fp32", "bf16", "fp32"):
        Img2ImgPipeline.from_engines(engines, backend="openvino", precision=precision)(**job)
    folders = sorted(p for p in (engines / OPENVINO_CACHE).iterdir())
    records = [json.loads((f / KEY_FILE).read_text()) for f in folders]
    assert len(folders) == 8  # four components, two precisions
    for component in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        mine = [r for f, r in zip(folders, records, strict=True) if f.name.startswith(component)]
        assert sorted(r["precision"] for r in mine) == ["bf16", "fp32"]
        assert len({r["graph"] for r in mine}) == 1 and all(r["device"] for r in mine)


def _fastimg(*args: str) -> subprocess.CompletedProcess:
    code = "from fastimg.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parents[2],
    )


@OPENVINO
def test_precisions_in_sequence_across_processes_on_one_folder(tmp_path, tiny, photo):
    """The sequence that crashed (SIGSEGV) when bf16 loaded fp32 blobs from a shared cache."""
    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    shutil.rmtree(engines / OPENVINO_CACHE, ignore_errors=True)
    image = tmp_path / "in.png"
    photo.save(image)
    runs = [
        ["--precision", "fp32"],
        ["--precision", "bf16"],
        [],
        ["--precision", "fp32"],
        "doctor",
        [],
    ]
    for k, options in enumerate(runs):
        if options == "doctor":
            proc = _fastimg("doctor", "--check", str(engines))
        else:
            common = ["--prompt", "a house", "--steps", "4", "--seed", "1", "--strength", "0.5"]
            out = str(tmp_path / f"out{k}.png")
            proc = _fastimg(
                "transform", str(image), "--engines", str(engines), *common, *options, "-o", out
            )
        assert proc.returncode == 0, f"run {k} ({options}): {proc.returncode}\n{proc.stderr}"
    assert (tmp_path / "out5.png").is_file()


@OPENVINO
def test_shapes_and_precisions_in_sequence_across_processes_on_one_int8_folder(
    tmp_path, tiny_int8, photo
):
    """The static-shapes caches (imported as blobs, not rehashed by OpenVINO) hand each run
    what it compiled: int8's static-shapes graphs to int8, the GroupNorm graphs to bf16."""
    import numpy as np
    from PIL import Image

    pytest.importorskip("nncf")
    engines = shutil.copytree(tiny_int8[1], tmp_path / "engines")
    shutil.rmtree(engines / OPENVINO_CACHE, ignore_errors=True)
    image = tmp_path / "in.png"
    photo.save(image)
    runs = [
        ["--precision", "int8", "--shapes", "static"],
        ["--precision", "bf16", "--shapes", "static"],
        ["--precision", "int8"],
        ["--precision", "int8", "--shapes", "auto"],
        ["--precision", "int8", "--shapes", "static"],  # from the cache run 0 wrote
        ["--precision", "bf16", "--shapes", "static"],  # from run 1's
    ]
    common = ["--prompt", "a house", "--steps", "4", "--seed", "1", "--strength", "0.5"]
    for k, options in enumerate(runs):
        out = str(tmp_path / f"out{k}.png")
        proc = _fastimg("transform", str(image), "--engines", str(engines), *common, *options,
                        "-o", out)  # fmt: skip
        assert proc.returncode == 0, f"run {k} ({options}): {proc.returncode}\n{proc.stderr}"
    pixels = [np.asarray(Image.open(tmp_path / f"out{k}.png")) for k in range(len(runs))]
    assert np.array_equal(pixels[0], pixels[4]) and np.array_equal(pixels[1], pixels[5])
    assert not np.array_equal(pixels[0], pixels[1])  # (each its own graphs and kernels)
    assert any((engines / OPENVINO_CACHE).glob("*-static*/**/*.blob"))


def test_only_the_most_recently_used_keys_of_a_component_are_kept(tmp_path):
    import os

    from fastimg.engine_folder.compiled_cache import KEEP

    folders = []
    for k in range(KEEP + 2):
        folders.append(keyed_folder(tmp_path, "unet", {**PARTS, "graph": str(k)}))
        os.utime(folders[-1] / KEY_FILE, (k, k))  # older keys were used longer ago
    keyed_folder(tmp_path, "text_encoder", PARTS)  # another component is not counted
    current = keyed_folder(tmp_path, "unet", {**PARTS, "graph": "0"})  # used again: newest
    kept = sorted(f for f in tmp_path.glob("unet-*"))
    assert len(kept) == KEEP and current in kept
    assert folders[-1] in kept and folders[1] not in kept
    assert len(list(tmp_path.glob("text_encoder-*"))) == 1
