"""The branched graph: the layers found by module path, and a branch of zeros changes nothing."""

import shutil

import numpy as np
import pytest

from fastimg.engine_folder.manifest import load_manifest
from fastimg.errors import InputError
from fastimg.lora.adapters import Adapters, match_layers
from fastimg.lora.files import LoraFile, LoraLayer
from fastimg.lora.graph import find_targets, load_graph, variant_key, write_branched_graph

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def test_the_unets_layers_are_found_by_module_path(tiny):
    targets = find_targets(load_graph(load_manifest(tiny[1]).path("unet")))
    q = targets["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert (q.op, q.width_in, q.width_out) == ("MatMul", 32, 32)
    proj = targets["down_blocks.0.attentions.0.proj_in"]  # SD 1.x: a 1x1 convolution
    assert (proj.op, proj.kernel) == ("Conv", (1, 1))
    assert targets["down_blocks.0.resnets.0.conv1"].kernel == (3, 3)


def test_a_branch_of_zeros_and_a_branch_of_a_lora_do_what_they_say(tiny, tmp_path):
    manifest = load_manifest(shutil.copytree(tiny[1], tmp_path / "engines"))
    source = manifest.path("unet")
    model = load_graph(source)
    modules = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
               "down_blocks.0.resnets.0.conv1"]  # fmt: skip
    path = source.with_name("model.lora-test.onnx")
    targets = find_targets(model)
    order = [targets[module] for module in modules]
    write_branched_graph(model, order, path)
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
        "timestep": np.array([500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((1, 77, 32)).astype(np.float32),
    }
    plain = ort.InferenceSession(str(source)).run(None, feeds)[0]
    branched = ort.InferenceSession(str(path))
    adapters = Adapters()
    nothing = adapters._build(order, {}, {})
    assert nothing is None  # no LoRA: the plain graph runs, not this one
    zeros = {}
    for index, target in enumerate(order):
        down, up = target.input_names(index)
        shape = (target.width_in, 1) if target.op == "MatMul" else (1, target.width_in, 3, 3)
        zeros[down] = np.ones(shape, np.float32)
        zeros[up] = np.zeros((1, target.width_out) if target.op == "MatMul"
                             else (target.width_out, 1, 1, 1), np.float32)  # fmt: skip
    np.testing.assert_allclose(branched.run(None, {**feeds, **zeros})[0], plain, atol=1e-5)
    lora = LoraFile(tmp_path / "x.safetensors")
    lora.layers["unet"] = {
        modules[0]: LoraLayer(rng.standard_normal((2, 32)).astype(np.float32),
                              rng.standard_normal((32, 2)).astype(np.float32), 2.0),
    }  # fmt: skip
    adapters.loras["x"], adapters.scales["x"] = lora, 1.0
    matched = {"x": match_layers(lora, "unet", find_targets(model))}
    changed = branched.run(None, {**feeds, **adapters._build(order, matched, {"x": 1.0})})[0]
    assert not np.allclose(changed, plain, atol=1e-3)
    assert variant_key("a", modules) == variant_key("a", modules[::-1]) != variant_key("b", modules)


def test_a_lora_of_another_architecture_is_refused_by_its_layers(tiny, tmp_path):
    targets = find_targets(load_graph(load_manifest(tiny[1]).path("unet")))
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    wide = LoraFile(tmp_path / "wide.safetensors")
    wide.layers["unet"] = {module: LoraLayer(np.zeros((2, 320), "f4"), np.zeros((320, 2), "f4"), 2)}
    with pytest.raises(InputError, match="made for another architecture"):
        match_layers(wide, "unet", targets)
    elsewhere = LoraFile(tmp_path / "elsewhere.safetensors")
    elsewhere.layers["unet"] = {"input_blocks.1.1.proj_in": wide.layers["unet"][module]}
    with pytest.raises(InputError, match="input_blocks.1.1.proj_in"):
        match_layers(elsewhere, "unet", targets)


def test_a_fixed_rank_is_padded_with_zeros_and_computes_the_same_delta(tiny, tmp_path):
    import dataclasses

    manifest = load_manifest(shutil.copytree(tiny[1], tmp_path / "engines"))
    source = manifest.path("unet")
    model = load_graph(source)
    targets = find_targets(model)
    conv, proj = "down_blocks.0.resnets.0.conv1", "down_blocks.0.attentions.0.proj_in"
    assert targets[proj].pointwise and not targets[conv].pointwise
    dynamic = [targets[proj], targets[conv]]
    fixed = [targets[proj], dataclasses.replace(targets[conv], rank=5)]
    assert fixed[1].spelled == f"{conv}@5" and dynamic[1].spelled == conv
    rng = np.random.default_rng(1)
    lora = LoraFile(tmp_path / "x.safetensors")
    lora.layers["unet"] = {
        conv: LoraLayer(rng.standard_normal((2, 32, 3, 3)).astype(np.float32),
                        rng.standard_normal((32, 2, 1, 1)).astype(np.float32), 2.0),
        proj: LoraLayer(rng.standard_normal((3, 32, 1, 1)).astype(np.float32),
                        rng.standard_normal((32, 3, 1, 1)).astype(np.float32), 3.0),
    }  # fmt: skip
    adapters = Adapters()
    adapters.loras["x"], adapters.scales["x"] = lora, 1.0
    matched = {"x": match_layers(lora, "unet", targets)}
    feeds = {
        "sample": rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
        "timestep": np.array([500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((1, 77, 32)).astype(np.float32),
    }
    outputs = []
    for name, order in (("dynamic", dynamic), ("fixed", fixed)):
        path = source.with_name(f"model.lora-{name}.onnx")
        write_branched_graph(load_graph(source), order, path)
        projections = adapters._build(order, matched, {"x": 0.7})
        outputs.append(ort.InferenceSession(str(path)).run(None, {**feeds, **projections})[0])
        if name == "fixed":
            assert projections["lora_down_1"].shape == (5, 32, 3, 3)  # rank 2, padded to 5
            assert not projections["lora_down_1"][2:].any()
    plain = ort.InferenceSession(str(source)).run(None, feeds)[0]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)
    assert not np.allclose(outputs[0], plain, atol=1e-3)
