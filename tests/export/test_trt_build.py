"""The TensorRT build flow against a stand-in `tensorrt` module (no GPU or TensorRT here).

It checks what fastimg itself decides: the shapes given to each profile, the precision of the
graph each plan is parsed from, the timing cache, the key, the manifest entries, atomicity and
the rebuild rules. That TensorRT really builds and runs the plans is verified only on a GPU.
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from fastimg.backends.tensorrt_plans import find_plans
from fastimg.engine_folder.manifest import Manifest, load_manifest
from fastimg.engine_folder.profiles import Profile
from fastimg.errors import EngineError, InputError

pytest.importorskip("onnx")


class FakeTensorRT(types.ModuleType):
    """Records what the builder is asked to do; 'plans' are the parsed file's name and shapes."""

    def __init__(self, fail_on=None, hang_on=None):
        super().__init__("tensorrt")
        self.__version__ = "10.13.0.35"
        self.fail_on, self.hang_on, self.parsed, self.built = fail_on, hang_on, [], []
        trt = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        class IProgressMonitor:
            def __init__(self):
                pass

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return self.data + b"+"

        class Config:
            builder_optimization_level = None
            progress_monitor = None

            def __init__(self):
                self.profiles = []

            def create_timing_cache(self, data):
                return Cache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache

            def add_optimization_profile(self, profile):
                self.profiles.append(profile)

        class Profile_:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, low, opt, high):
                self.shapes[name] = (low, opt, high)

        class Network:
            pass

        class Parser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                trt.parsed.append(path)
                self.network.path = path
                return True

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                assert flags == 1 << 3  # strongly typed
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile_()

            def build_serialized_network(self, network, config):
                config.progress_monitor.phase_start("Building", None, 1)
                config.progress_monitor.phase_finish("Building")
                if trt.fail_on and trt.fail_on in str(network.path):
                    return None
                if trt.hang_on and trt.hang_on in str(network.path):
                    print("building", trt.hang_on, flush=True)
                    time.sleep(600)
                # (None: no profile, as for a graph of fixed shapes)
                trt.built.append(
                    (network.path, (config.profiles or [None])[0] and config.profiles[0].shapes)
                )
                return f"plan of {network.path}".encode()

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 3

        self.Logger, self.IProgressMonitor, self.Builder = Logger, IProgressMonitor, Builder
        self.OnnxParser = Parser
        self.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag


@pytest.fixture
def engines(tiny, tmp_path, monkeypatch):
    from fastimg_export import trt_build

    monkeypatch.setattr(trt_build, "device_properties", lambda device=None: ("NVIDIA L4", "8.9"))
    return shutil.copytree(tiny[1], tmp_path / "engines")


def build(engines, fake, monkeypatch, **kwargs):
    from fastimg_export.trt_build import build_engines

    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    profile = kwargs.pop("profile", Profile((256, 256, 512), (256, 256, 512), (1, 1, 2)))
    return build_engines(engines, profile, log=lambda m: None, **kwargs)


def test_build_lists_verified_plans_under_their_key(engines, monkeypatch):
    fake = FakeTensorRT()
    saved = os.umask(0o022)
    try:
        key = build(engines, fake, monkeypatch)
    finally:
        os.umask(saved)
    assert stat.S_IMODE((engines / "tensorrt" / key).stat().st_mode) == 0o755  # not mkdtemp's
    assert stat.S_IMODE((engines / "manifest.json").stat().st_mode) == 0o644  # kept
    graph = load_manifest(engines).graph_digest()
    assert key == f"trt10.13.0_sm89_fp16_vaefp32_o3_g{graph[:10]}_h256-256-512_w256-256-512_b1-1-2"
    manifest = load_manifest(engines, full_check=True)  # plan hashes are in the manifest
    plans = find_plans(manifest, "10.13.0.35", "8.9", 384, 256, 2)
    assert sorted(plans.paths) == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    assert plans.paths["unet"].read_bytes().startswith(b"plan of")
    shapes = dict((path.split("/")[-2], s) for path, s in fake.built)
    assert shapes["unet"]["sample"] == ((1, 4, 32, 32), (2, 4, 32, 32), (4, 4, 64, 64))
    (cache,) = (engines / "tensorrt").glob("timing_*.cache")
    assert cache.name.startswith("timing_trt10.13.0_sm89_gpu") and cache.read_bytes() == b"+"


def test_fp16_plans_parse_an_fp16_copy_and_the_vae_stays_fp32(engines, monkeypatch):
    import onnx

    fake = FakeTensorRT()
    build(engines, fake, monkeypatch)
    by_component = {p.split("/")[-2]: p for p in map(str, fake.parsed)}
    assert by_component["vae_decoder"] == str(engines / "vae_decoder" / "model.onnx")
    assert by_component["unet"] != str(engines / "unet" / "model.onnx")  # converted copy
    entry = load_manifest(engines).data["tensorrt"]["engines"]
    (only,) = entry.values()
    assert only["components"]["unet"]["precision"] == "fp16"
    assert only["components"]["vae_decoder"]["precision"] == "fp32"
    assert onnx.load(str(engines / "unet" / "model.onnx")).graph.initializer[0].data_type == 1


def test_an_existing_build_is_kept_unless_rebuild(engines, monkeypatch):
    fake = FakeTensorRT()
    key = build(engines, fake, monkeypatch, precision="fp32")
    again = FakeTensorRT()
    assert build(engines, again, monkeypatch, precision="fp32") == key and again.built == []
    assert build(engines, again, monkeypatch, precision="fp32", rebuild=True) == key
    assert len(again.built) == 4


def test_another_opt_level_or_graph_builds_new_plans_instead_of_returning_the_old(
    engines, monkeypatch
):
    first = build(engines, FakeTensorRT(), monkeypatch, opt_level=3)
    fake = FakeTensorRT()
    second = build(engines, fake, monkeypatch, opt_level=5)
    assert second != first and len(fake.built) == 4
    entries = load_manifest(engines).data["tensorrt"]["engines"]
    assert entries[second]["builder_optimization_level"] == 5
    assert entries[first]["builder_optimization_level"] == 3
    # Another graph in the same folder (a re-export with other weights) is another key too.
    data = json.loads((engines / "manifest.json").read_text())
    entry = data["components"]["unet"]["files"]["unet/model.onnx"]
    entry["sha256"] = "0" * 64
    assert Manifest.from_data(engines, data).graph_digest() != load_manifest(engines).graph_digest()


def test_a_failed_build_leaves_the_folder_as_it_was(engines, monkeypatch):
    before = (engines / "manifest.json").read_text()
    with pytest.raises(EngineError, match="could not build"):
        build(engines, FakeTensorRT(fail_on="unet"), monkeypatch)
    assert (engines / "manifest.json").read_text() == before
    assert [p.name for p in (engines / "tensorrt").iterdir() if p.is_dir()] == []


@pytest.mark.parametrize(
    "profile,message",
    [
        (Profile((252, 252, 252), (256, 256, 256)), "multiple of 8"),
        (Profile((512, 512, 4096), (256, 256, 256)), "between 64 and 2048"),
        (Profile((256, 256, 256), (256, 256, 256), (1, 1, 64)), "more than fastimg builds"),
    ],
)
def test_profiles_the_engines_cannot_take_are_refused(engines, monkeypatch, profile, message):
    with pytest.raises(InputError, match=message):
        build(engines, FakeTensorRT(), monkeypatch, profile=profile)


def test_without_tensorrt_the_error_names_the_extra(engines, monkeypatch):
    from fastimg.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    from fastimg_export.trt_build import build_engines

    with pytest.raises(MissingDependencyError, match=r"fastimg\[tensorrt\]"):
        build_engines(engines, Profile((256,) * 3, (256,) * 3), log=lambda m: None)
    data = json.loads((engines / "manifest.json").read_text())
    assert "tensorrt" not in data


def test_a_killed_build_leaves_the_folder_as_it_was_and_is_swept(engines, monkeypatch):
    before = (engines / "manifest.json").read_text()
    code = (
        "import sys\n"
        "from tests.export.test_trt_build import FakeTensorRT\n"
        "sys.modules['tensorrt'] = FakeTensorRT(hang_on='vae_encoder')\n"
        "from fastimg_export import trt_build\n"
        "from fastimg.engine_folder.profiles import Profile\n"
        "trt_build.device_properties = lambda device=None: ('NVIDIA L4', '8.9')\n"
        f"trt_build.build_engines({str(engines)!r}, Profile((256,) * 3, (256,) * 3))\n"
    )
    root = Path(__file__).parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True
    )
    for line in proc.stdout:
        if line.startswith("building vae_encoder"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (engines / "manifest.json").read_text() == before
    partial = [p for p in (engines / "tensorrt").iterdir() if p.is_dir()]
    assert len(partial) == 1 and partial[0].name.startswith(".trt10.13.0_")
    assert (partial[0] / "unet.plan").is_file()  # killed half-way through the four plans
    with pytest.raises(EngineError, match="no TensorRT engines"):
        find_plans(load_manifest(engines), "10.13.0", "8.9")
    build(engines, FakeTensorRT(), monkeypatch, profile=Profile((256,) * 3, (256,) * 3))
    dirs = [p.name for p in (engines / "tensorrt").iterdir() if p.is_dir()]
    assert len(dirs) == 1 and dirs[0].startswith("trt10.13.0_sm89_fp16_vaefp32_o3_g")
    assert dirs[0].endswith("_h256_w256_b1")  # the leftover was swept


@pytest.mark.parametrize("layout", ["tiny_sdxl", "tiny_sdxl_refiner"])
def test_sdxl_plans_cover_each_text_encoder_and_the_added_conditioning(
    layout, request, tmp_path, monkeypatch
):
    from fastimg_export import trt_build

    monkeypatch.setattr(trt_build, "device_properties", lambda device=None: ("NVIDIA L4", "8.9"))
    engines = shutil.copytree(request.getfixturevalue(layout)[1], tmp_path / "engines")
    manifest = load_manifest(engines)
    fake = FakeTensorRT()
    profile = Profile((64, 64, 128), (64, 64, 128), (1, 1, 2))
    build(engines, fake, monkeypatch, profile=profile)
    shapes = {path.split("/")[-2]: s for path, s in fake.built}
    assert sorted(shapes) == sorted(manifest.component_names)
    for encoder in manifest.text_encoders:
        assert shapes[encoder] == {"input_ids": ((1, 77), (2, 77), (2, 77))}
    unet_inputs = manifest.components["unet"]["inputs"]
    pooled = unet_inputs["text_embeds"]["shape"][-1]
    time_ids = unet_inputs["time_ids"]["shape"][-1]
    assert time_ids == (5 if layout == "tiny_sdxl_refiner" else 6)
    assert shapes["unet"]["text_embeds"] == ((1, pooled), (2, pooled), (4, pooled))
    assert shapes["unet"]["time_ids"] == ((1, time_ids), (2, time_ids), (4, time_ids))
    width = unet_inputs["encoder_hidden_states"]["shape"][-1]
    assert shapes["unet"]["encoder_hidden_states"][2] == (4, 77, width)
    plans = find_plans(load_manifest(engines, full_check=True), "10.13.0", "8.9", 128, 64, 2)
    assert sorted(plans.paths) == sorted(manifest.component_names)
    entry = next(iter(load_manifest(engines).data["tensorrt"]["engines"].values()))
    assert entry["components"]["vae_decoder"]["precision"] == "fp32"


def test_fp16_vae_plans_are_refused_for_a_vae_that_overflows_in_fp16(
    tiny_sdxl, tmp_path, monkeypatch
):
    engines = shutil.copytree(tiny_sdxl[1], tmp_path / "engines")
    assert load_manifest(engines).data["vae"]["overflows_in_fp16"] is True
    fake = FakeTensorRT()
    with pytest.raises(InputError, match="overflows in fp16.*--vae-precision fp32.*fp16-fix"):
        build(engines, fake, monkeypatch, vae_precision="fp16")
    assert fake.built == [] and not (engines / "tensorrt").exists()


def test_a_plan_set_missing_a_component_of_the_folder_is_refused(tiny_sdxl, tmp_path):
    from fastimg.errors import ManifestError
    from tests.plan_sets import write_plan_sets

    engines = shutil.copytree(tiny_sdxl[1], tmp_path / "engines")
    write_plan_sets(engines, [(Profile((64,) * 3, (64,) * 3), "8.9", "fp16")])
    data = json.loads((engines / "manifest.json").read_text())
    (entry,) = data["tensorrt"]["engines"].values()
    assert "text_encoder_2" in entry["components"]
    del entry["components"]["text_encoder_2"]
    (engines / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="has plans for .* not for .*text_encoder_2"):
        load_manifest(engines)


def test_a_controlnet_folders_plan_set_holds_its_controlnet_residual_unet_and_depth_model(
    tiny_controlnet_depth, tmp_path, monkeypatch
):
    from fastimg.engine_folder.profiles import input_shapes
    from fastimg_export import trt_build

    monkeypatch.setattr(trt_build, "device_properties", lambda device=None: ("NVIDIA L4", "8.9"))
    engines = shutil.copytree(tiny_controlnet_depth[1], tmp_path / "engines")
    manifest = load_manifest(engines)
    fake = FakeTensorRT()
    profile = Profile((64, 64, 128), (64, 64, 128), (1, 1, 2))
    key = build(engines, fake, monkeypatch, profile=profile)
    shapes = {path.split("/")[-2]: s for path, s in fake.built}
    assert sorted(shapes) == sorted(manifest.runtime_components)
    assert {"controlnet", "unet_control", "depth"} <= set(shapes)
    full = input_shapes(profile, manifest)
    # Inputs of fixed shape are left out of the profile; a graph of fixed shapes gets none.
    assert shapes["controlnet"] == {k: v for k, v in full["controlnet"].items()
                                    if k != "conditioning_scale"}  # fmt: skip
    assert shapes["unet_control"] == full["unet_control"] and shapes["depth"] is None
    plans = find_plans(load_manifest(engines, full_check=True), "10.13.0", "8.9", 128, 64, 2)
    assert plans.key == key and sorted(plans.paths) == sorted(manifest.runtime_components)
    entry = load_manifest(engines).data["tensorrt"]["engines"][key]
    assert {entry["components"][c]["precision"] for c in ("controlnet", "unet_control")} == {"fp16"}
    # The key's graph digest covers the ControlNet: another ControlNet is another key.
    data = json.loads((engines / "manifest.json").read_text())
    files = data["components"]["controlnet"]["files"]
    files[min(files)]["sha256"] = "0" * 64
    assert Manifest.from_data(engines, data).graph_digest() != manifest.graph_digest()


def test_a_plan_set_built_without_the_controlnets_is_refused_by_name_not_the_folder(
    tiny_controlnet, tmp_path
):
    """Plans an earlier fastimg built of a ControlNet folder (the four components only): the
    folder still loads (the CPU backends run it), and TensorRT names the plans to rebuild."""
    from tests.plan_sets import write_plan_sets

    engines = shutil.copytree(tiny_controlnet[1], tmp_path / "engines")
    write_plan_sets(engines, [(Profile((64,) * 3, (64,) * 3), "8.9", "fp16")])
    data = json.loads((engines / "manifest.json").read_text())
    manifest = Manifest.from_data(engines, data)
    (entry,) = data["tensorrt"]["engines"].values()
    for name in manifest.control_components:
        del entry["components"][name]
    entry["graph_sha256"] = manifest.graph_digest(manifest.component_names)
    (engines / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineError, match=r"no plans for controlnet, unet_control .*--rebuild"):
        find_plans(load_manifest(engines), "10.13.0", "8.9")


def test_the_fp16_graphs_parsed_for_controlnet_residual_unet_and_depth_plans_compute_alike(
    tiny_controlnet_depth, tmp_path
):
    """What fp16 plans are built from (trt_build's fp16 copies, float32 I/O kept) runs on ONNX
    Runtime's CPU within 1% of the fp32 graph, at the profile's largest shapes."""
    import numpy as np
    import onnxruntime as ort

    from fastimg.engine_folder.profiles import input_shapes
    from fastimg_export.trt_build import _source_onnx

    manifest = load_manifest(tiny_controlnet_depth[1])
    shapes = input_shapes(Profile((64,) * 3, (88,) * 3), manifest)
    for component in ("controlnet", "unet_control", "depth"):
        fp16 = _source_onnx(manifest, component, "fp16", tmp_path)
        assert fp16 != manifest.path(component)
        rng = np.random.default_rng(0)
        feeds = {n: rng.standard_normal(s[2]).astype(np.float32)
                 for n, s in shapes[component].items()}  # fmt: skip
        for name, value in (("timestep", 500), ("conditioning_scale", 1)):
            if name in feeds:
                feeds[name] = np.full(feeds[name].shape, value, np.float32)
        exact = ort.InferenceSession(str(manifest.path(component))).run(None, feeds)
        half = ort.InferenceSession(str(fp16)).run(None, feeds)
        for a, b in zip(exact, half, strict=True):
            assert b.dtype == np.float32 and b.shape == a.shape
            assert np.abs(a - b).max() <= 1e-2 * np.abs(a).max(), component


def test_a_plan_set_naming_a_component_the_folder_lacks_is_refused(tiny, tmp_path):
    from fastimg.errors import ManifestError
    from tests.plan_sets import write_plan_sets

    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    write_plan_sets(engines, [(Profile((64,) * 3, (64,) * 3), "8.9", "fp16")])
    data = json.loads((engines / "manifest.json").read_text())
    (entry,) = data["tensorrt"]["engines"].values()
    entry["components"]["controlnet"] = entry["components"]["unet"]  # no ControlNet here
    (engines / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="has plans for controlnet, .* not for text_encoder"):
        load_manifest(engines)
