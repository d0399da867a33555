"""fastimg_bench.layers: one call's inputs for any component, and its profile per layer type."""

import pytest

from fastimg.engine_folder.manifest import load_manifest
from fastimg_bench import layers


def test_the_unet_taking_control_gets_each_residual_at_its_level(tiny_controlnet):
    manifest = load_manifest(tiny_controlnet[1])
    feeds = layers.feeds_for(manifest, "unet_control", 64, 1)
    latent = 64 // manifest.vae_scale_factor
    assert feeds["sample"].shape[2:] == (latent, latent)
    sides = {}
    for name, spec in manifest.components["unet_control"]["inputs"].items():
        if name.startswith(("down_block_res", "mid_block_res")):
            height = spec["shape"][2]  # latent_height, or latent_height_divK further down
            divisor = int(height.split("_div")[1]) if "_div" in height else 1
            assert feeds[name].shape[2:] == (latent // divisor,) * 2
            sides[name] = divisor
    assert max(sides.values()) > 1 and sides["down_block_res_0"] == 1


def test_a_profile_counts_the_layers_of_one_call(tiny_controlnet, capsys):
    pytest.importorskip("openvino")
    assert layers.main([str(tiny_controlnet[1]), "controlnet", "64", "fp32", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("controlnet 64x64 batch 1 fp32 dynamic:") and "slowest layers:" in out


def test_a_static_profile_runs_the_graph_the_runtime_compiles_for_static_shapes(tiny, capsys):
    pytest.importorskip("openvino")
    argv = [str(tiny[1]), "unet", "64", "fp32", "--shapes", "static", "--top", "400"]
    assert layers.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("unet 64x64 batch 1 fp32 static:")
    # GEGLU's projections split, as openvino_rewrites splits them
    assert "ff/net.0/proj/Add/columns_" in out


def test_a_profile_compiles_with_the_properties_it_is_given(tiny_controlnet, capsys):
    pytest.importorskip("openvino")
    argv = [str(tiny_controlnet[1]), "controlnet", "64", "fp32", "--top", "3"]
    assert layers.main([*argv, "--ov-config", "SNIPPETS_MODE=DISABLE"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("controlnet 64x64 batch 1 fp32 dynamic SNIPPETS_MODE=DISABLE:")
    assert "Subgraph" not in out  # no snippet subgraphs were made


def test_a_residual_of_an_odd_latent_side_is_rounded_up_as_the_unet_rounds(tiny_controlnet):
    manifest = load_manifest(tiny_controlnet[1])
    feeds = layers.feeds_for(manifest, "unet_control", 9 * manifest.vae_scale_factor, 1)
    divisors = []
    for name, spec in manifest.components["unet_control"]["inputs"].items():
        height = spec["shape"][2] if len(spec["shape"]) > 2 else None
        if isinstance(height, str) and "_div" in height:
            divisors.append(int(height.split("_div")[1]))
            assert feeds[name].shape[2] == -(-9 // divisors[-1])  # 9 / 2 -> 5, as a conv rounds
    assert divisors and max(divisors) > 1


def _peer_like_unet(path, timestep_name="timestep"):
    """An IR of the UNet's inputs in another graph's names and types (an int64 timestep, as a
    converter may write it), its output the sample doubled plus the timestep: `path`."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    sample = ops.parameter([-1, 4, -1, -1], np.float32, name="sample")
    timestep = ops.parameter([-1], np.int64, name=timestep_name)
    context = ops.parameter([-1, -1, 32], np.float32, name="encoder_hidden_states")
    shift = ops.reshape(ops.convert(timestep, np.float32), ops.constant([-1, 1, 1, 1]), False)
    mean = ops.reduce_mean(context, ops.constant([1, 2]), False)
    out = ops.add(ops.add(ops.multiply(sample, ops.constant(np.float32(2))), shift),
                  ops.reshape(mean, ops.constant([-1, 1, 1, 1]), False))  # fmt: skip
    ov.save_model(ov.Model([out], [sample, timestep, context]), str(path))
    return path


def test_another_graph_of_the_component_runs_on_the_same_inputs_as_it_is(tiny, tmp_path, capsys):
    pytest.importorskip("openvino")
    graph = _peer_like_unet(tmp_path / "openvino_model.xml")
    argv = [str(tiny[1]), "unet", "64", "fp32", "--shapes", "static", "--graph", str(graph)]
    assert layers.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"unet ({graph}) 64x64 batch 1 fp32 static:")
    assert "slowest layers:" in out


def test_a_graph_with_an_input_the_component_lacks_is_refused_by_name(tiny, tmp_path):
    pytest.importorskip("openvino")
    graph = _peer_like_unet(tmp_path / "other.xml", timestep_name="t")
    with pytest.raises(SystemExit, match="the graph's input t is not one of the component's"):
        layers.main([str(tiny[1]), "unet", "64", "fp32", "--graph", str(graph)])
