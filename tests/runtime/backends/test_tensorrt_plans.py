import json
import shutil

import pytest

from fastimg.backends.tensorrt_plans import engine_key, find_plans, trt_major_minor
from fastimg.errors import EngineError
from fastimg.manifest import load_manifest
from fastimg.profiles import Profile

STATIC = Profile((512, 512, 512), (512, 512, 512))
DYNAMIC = Profile((256, 512, 768), (256, 512, 768), (1, 1, 2))


def test_the_key_holds_version_gpu_precision_and_profile():
    key = engine_key("10.13.0.35", "8.9", STATIC, "fp16", "fp32")
    assert key == "trt10.13_sm89_fp16_vaefp32_h512_w512_b1"
    assert engine_key("10.13.3", "8.9", STATIC, "fp16", "fp32") == key  # same minor release
    for other in (
        engine_key("10.14.0", "8.9", STATIC, "fp16", "fp32"),
        engine_key("10.13.0", "9.0", STATIC, "fp16", "fp32"),
        engine_key("10.13.0", "8.9", DYNAMIC, "fp16", "fp32"),
        engine_key("10.13.0", "8.9", STATIC, "fp32", "fp32"),
        engine_key("10.13.0", "8.9", STATIC, "fp16", "fp16"),
    ):
        assert other != key
    assert trt_major_minor("11.4.1.2") == "11.4"


@pytest.fixture
def manifest_with_plans(tiny, tmp_path):
    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    data = json.loads((engines / "manifest.json").read_text())
    sets = {}
    for profile, capability in ((STATIC, "8.9"), (DYNAMIC, "8.9"), (STATIC, "9.0")):
        key = engine_key("10.13.0", capability, profile, "fp16", "fp32")
        components = {}
        for component in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
            rel = f"tensorrt/{key}/{component}.plan"
            (engines / rel).parent.mkdir(parents=True, exist_ok=True)
            (engines / rel).write_bytes(b"plan")
            components[component] = {"path": rel, "files": {rel: {"bytes": 4}}}
        sets[key] = {
            "tensorrt": "10.13.0",
            "compute_capability": capability,
            "precision": "fp16",
            "vae_precision": "fp32",
            "profile": profile.to_dict(),
            "components": components,
        }
    data["tensorrt"] = {"engines": sets}
    (engines / "manifest.json").write_text(json.dumps(data))
    return load_manifest(engines)


def test_plans_for_this_gpu_and_size_are_found(manifest_with_plans):
    plans = find_plans(manifest_with_plans, "10.13.2", "8.9", 512, 512, 1)
    assert plans.key.startswith("trt10.13_sm89") and plans.profile.admits(512, 512, 1)
    assert plans.paths["unet"].name == "unet.plan" and plans.paths["unet"].is_file()
    wide = find_plans(manifest_with_plans, "10.13.2", "8.9", 256, 768, 2)
    assert wide.profile == DYNAMIC
    assert find_plans(manifest_with_plans, "10.13.0", "9.0").key.startswith("trt10.13_sm90")


def test_plans_for_another_tensorrt_or_gpu_are_refused_with_the_fix(manifest_with_plans):
    with pytest.raises(EngineError, match=r"built for TensorRT 10.13.*not for TensorRT 10.14"):
        find_plans(manifest_with_plans, "10.14.0", "8.9")
    with pytest.raises(EngineError, match="compute capability 8.6.*fastimg build"):
        find_plans(manifest_with_plans, "10.13.0", "8.6")


def test_a_size_outside_every_profile_names_a_build_that_covers_it(manifest_with_plans):
    with pytest.raises(EngineError, match="outside every TensorRT profile.*--height 1024"):
        find_plans(manifest_with_plans, "10.13.0", "8.9", 1024, 512, 1)


def test_no_plans_at_all(tiny):
    with pytest.raises(EngineError, match="has no TensorRT engines.*fastimg build"):
        find_plans(load_manifest(tiny[1]), "10.13.0", "8.9")


def test_plan_files_are_size_checked_like_onnx_files(manifest_with_plans):
    plan = manifest_with_plans.folder / next(
        p for p in manifest_with_plans.files if p.endswith("unet.plan")
    )
    plan.write_bytes(b"truncated?")
    with pytest.raises(EngineError, match="truncated or changed"):
        load_manifest(manifest_with_plans.folder)


def test_info_lists_the_plans(manifest_with_plans):
    from click.testing import CliRunner

    from fastimg.cli import cli

    result = CliRunner().invoke(cli, ["info", str(manifest_with_plans.folder)])
    assert result.exit_code == 0, result.output
    assert result.output.count("tensorrt        trt10.13_") == 3
    assert "compute capability 9.0, fp16 (VAE fp32)" in result.output
