import shutil

import pytest

from fastimg.backends.tensorrt_plans import NoFittingPlans, engine_key, find_plans, trt_release
from fastimg.engine_folder.manifest import load_manifest
from fastimg.engine_folder.profiles import Profile
from fastimg.errors import EngineError
from tests.plan_sets import write_plan_sets

STATIC = Profile((512, 512, 512), (512, 512, 512))
DYNAMIC = Profile((256, 512, 768), (256, 512, 768), (1, 1, 2))


def test_the_key_holds_everything_that_changes_the_plans():
    key = engine_key("10.13.0.35", "8.9", STATIC, "fp16", "fp32", 3, "abcdef0123456789")
    assert key == "trt10.13.0_sm89_fp16_vaefp32_o3_gabcdef0123_h512_w512_b1"
    assert engine_key("10.13.0.36", "8.9", STATIC, "fp16", "fp32", 3, "abcdef0123") == key
    others = [
        engine_key("10.13.1", "8.9", STATIC, "fp16", "fp32", 3, "abcdef0123"),  # another release
        engine_key("10.13.0", "9.0", STATIC, "fp16", "fp32", 3, "abcdef0123"),
        engine_key("10.13.0", "8.9", DYNAMIC, "fp16", "fp32", 3, "abcdef0123"),
        engine_key("10.13.0", "8.9", STATIC, "fp32", "fp32", 3, "abcdef0123"),
        engine_key("10.13.0", "8.9", STATIC, "fp16", "fp16", 3, "abcdef0123"),
        engine_key("10.13.0", "8.9", STATIC, "fp16", "fp32", 5, "abcdef0123"),  # --opt-level
        engine_key("10.13.0", "8.9", STATIC, "fp16", "fp32", 3, "99cdef0123"),  # another graph
    ]
    assert key not in others and len(set(others)) == len(others)
    assert trt_release("11.4.1.2") == "11.4.1"


@pytest.fixture
def manifest_with_plans(tiny, tmp_path):
    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    combos = [(STATIC, "8.9", "fp16"), (DYNAMIC, "8.9", "fp16"), (STATIC, "9.0", "fp16")]
    combos += [(Profile((256,) * 3, (256,) * 3), "8.9", "fp32")]
    write_plan_sets(engines, combos)
    return load_manifest(engines)


def test_plans_for_this_gpu_and_size_are_found(manifest_with_plans):
    plans = find_plans(manifest_with_plans, "10.13.0.35", "8.9", 512, 512, 1)
    assert plans.key.startswith("trt10.13.0_sm89") and plans.profile.admits(512, 512, 1)
    assert plans.paths["unet"].name == "unet.plan" and plans.paths["unet"].is_file()
    wide = find_plans(manifest_with_plans, "10.13.0", "8.9", 256, 768, 2)
    assert wide.profile == DYNAMIC
    assert find_plans(manifest_with_plans, "10.13.0", "9.0").key.startswith("trt10.13.0_sm90")


def test_the_plan_set_follows_the_size_batch_and_precision_asked_for(manifest_with_plans):
    def key(*request, **options):
        return find_plans(manifest_with_plans, "10.13.0", "8.9", *request, **options).key

    assert "_fp32_" in key(256, 256, 1, precision="fp32")
    assert "_fp16_" in key(256, 256, 1, precision="fp16")  # the dynamic fp16 set covers 256
    assert "h256-512-768" in key(256, 256, 2, precision="fp16")
    plans = find_plans(manifest_with_plans, "10.13.0", "8.9", 256, 256, 1, precision="fp32")
    assert plans.precision == "fp32" and plans.profile.admits(256, 256, 1)
    with pytest.raises(NoFittingPlans, match="outside every TensorRT profile"):
        key(512, 512, 1, precision="fp32")  # fp32 plans exist only for 256
    with pytest.raises(NoFittingPlans, match="not bf16"):
        key(precision="bf16")


def test_plans_for_another_tensorrt_or_gpu_are_refused_with_the_fix(manifest_with_plans):
    with pytest.raises(EngineError, match=r"built for TensorRT 10.13.0.*not for TensorRT 10.13.2"):
        find_plans(manifest_with_plans, "10.13.2", "8.9")
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
    assert result.output.count("tensorrt        trt10.13.0_") == 4
    assert "compute capability 9.0, fp16 (VAE fp32)" in result.output


def test_plans_built_from_other_graphs_are_never_loaded(manifest_with_plans):
    import json

    folder = manifest_with_plans.folder
    data = json.loads((folder / "manifest.json").read_text())
    for entry in data["tensorrt"]["engines"].values():
        entry["graph_sha256"] = "0" * 64  # as after a re-export with other weights
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineError, match="built from other graphs.*--rebuild"):
        find_plans(load_manifest(folder), "10.13.0", "8.9", 512, 512, 1)
