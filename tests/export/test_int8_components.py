"""The VAE's int8 graphs: quantized from the graph the runtime compiles for static shapes."""

import pytest

from fastimg.backends.registry import INT8_STATIC_VARIANT, INT8_VARIANT, STATIC_VARIANT
from fastimg.engine_folder.manifest import load_manifest

pytest.importorskip("nncf")
ov = pytest.importorskip("openvino")


def _weights_type(conv) -> str:
    """The element type a convolution's weights are stored in (before decompression)."""
    node = conv.input_value(1).get_node()
    while node.get_type_name() != "Constant":
        node = node.input_value(0).get_node()
    return node.get_output_element_type(0).get_type_name()


def test_the_int8_vae_decoder_runs_each_upsampling_convolution_per_phase(tiny_int8):
    """The runtime runs an upsampling's convolution per output phase only in float graphs
    (openvino_upsampling): the export rewrites the decoder before quantizing it, so that its
    int8 graphs run the phases in int8 too, and measures each phase's error."""
    from fastimg_export.int8_components import read_component
    from fastimg_export.quantize import weighted_matmuls

    engines = tiny_int8[1]
    entry = load_manifest(engines).components["vae_decoder"]
    # each int8 graph and the float graph it was quantized from (static: the GroupNorm graph's)
    sources = {INT8_VARIANT: entry["path"]}
    if INT8_STATIC_VARIANT in entry["variants"]:
        sources[INT8_STATIC_VARIANT] = entry["variants"][STATIC_VARIANT]["path"]
    variants = {k: entry["variants"][k] for k in sources if k in entry["variants"]}
    if not variants:
        pytest.skip("the export kept no int8 VAE decoder on this CPU")
    exported = ov.Core().read_model(str(engines / entry["path"]))
    upsamplings = sum(op.get_type_name() == "Interpolate" for op in exported.get_ops())
    assert upsamplings > 0  # the tiny decoder's up blocks
    for label, variant in variants.items():
        graph = ov.Core().read_model(str(engines / variant["path"]))
        assert not [op for op in graph.get_ops() if op.get_type_name() == "Interpolate"]
        phases = [
            op
            for op in graph.get_ops()
            if op.get_type_name() == "Convolution" and "/phase_" in op.get_friendly_name()
        ]
        assert len(phases) == 4 * upsamplings
        assert {_weights_type(conv) for conv in phases} == {"i8"}
        # every layer measured against the float graph rewritten alike, each phase among them
        reference = read_component("vae_decoder", engines / sources[label])
        convolutions = [op for op in reference.get_ops() if op.get_type_name() == "Convolution"]
        layers = len(convolutions) + len(weighted_matmuls(reference))
        assert variant["quantization"]["error"]["layers"] == layers
