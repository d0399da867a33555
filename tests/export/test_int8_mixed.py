"""A VAE graph whose full int8 image falls under the bound: quantized again with its worst
layers in float, more of them each time, until it passes or is no longer fast enough."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from fastimg.cli import cli
from fastimg.engine_folder.layout import MANIFEST

pytest.importorskip("nncf")
pytest.importorskip("openvino")

INT8 = "openvino-int8"
WORST = [f"layer{index}" for index in range(20)]


def _fake_attempt(psnr_by_count: dict, speed_by_count: dict, tried: list):
    def attempt(layers):
        tried.append(list(layers))
        count = len(layers)
        return {
            "image": {"psnr_db": psnr_by_count[count]},
            "speed": {"speed_ratio": speed_by_count[count]},
        }

    return attempt


@pytest.mark.parametrize(
    ("psnr", "speed", "worst", "counts"),
    [
        ({2: 27.0, 4: 31.0}, {2: 1.5, 4: 1.4}, WORST, [2, 4]),  # passes at 4
        ({2: 27.0, 4: 28.0, 8: 29.0}, {2: 1.5, 4: 1.2, 8: 1.01}, WORST, [2, 4, 8]),  # too slow at 8
        ({2: 27.0, 4: 28.0, 8: 29.0, 16: 29.5}, dict.fromkeys((2, 4, 8, 16), 1.5), WORST,
         [2, 4, 8, 16]),  # never passes: every step tried
        ({2: 27.0, 4: 28.0, 5: 29.0}, dict.fromkeys((2, 4, 5), 1.5), WORST[:5], [2, 4, 5]),
    ],
)  # fmt: skip
def test_the_float_layers_grow_until_the_image_passes_or_the_speed_is_lost(
    psnr, speed, worst, counts
):
    from fastimg_export.int8_mixed import grow_float_layers

    tried = []
    records = grow_float_layers(worst, _fake_attempt(psnr, speed, tried), 30.0, 1.05)
    assert [len(layers) for layers in tried] == counts
    assert all(layers == worst[: len(layers)] for layers in tried)  # the worst first
    assert records == [
        {"float_layers": worst[:count], "psnr_db": psnr[count], "speed_ratio": speed[count]}
        for count in counts
    ]


def _float_weights(model, name: str) -> bool:
    """Whether layer `name` of the openvino.Model takes its weights in float (no quantizer or
    int8 constant on the way)."""
    op = next(op for op in model.get_ops() if op.get_friendly_name() == name)
    node = op.input_value(1).get_node()
    while node.get_type_name() != "Constant":
        if node.get_type_name() == "FakeQuantize":
            return False
        node = node.input_value(0).get_node()
    return node.get_element_type().get_type_name() == "f32"


def test_a_vae_decoder_under_an_unreachable_bound_keeps_its_worst_layers_in_float(
    tiny_int8, tmp_path, monkeypatch
):
    import openvino as ov

    from fastimg.engine_folder.integrity import sha256
    from fastimg.engine_folder.manifest import Manifest
    from fastimg.media.images import psnr
    from fastimg_export import int8_mixed
    from fastimg_export.int8_choice import ImageCheck, time_component

    engines = shutil.copytree(tiny_int8[1], tmp_path / "engines")
    data = json.loads((engines / MANIFEST).read_text())
    data.pop("int8")  # as while the export measures
    variant = data["components"]["vae_decoder"]["variants"][INT8]
    shape = data["components"]["vae_decoder"]["inputs"]["latent_sample"]["shape"]
    size = variant["quantization"]["image"]["job"]["size"]
    rng = np.random.default_rng(0)
    latents = (1, shape[1], size // 8, size // 8)
    feeds = [{"latent_sample": rng.standard_normal(latents).astype(np.float32) * 5} for _ in "abc"]
    check = ImageCheck(engines, size, log=lambda line: None)

    def measure(data, name, graphs=""):
        check.close()
        image = check.psnr(data, (name,), name, graphs)
        return {
            "image": image,
            "speed": time_component(engines, data["components"][name], feeds[-1]),
        }

    monkeypatch.setattr(int8_mixed, "FLOAT_LAYER_STEPS", (2, 4))  # two attempts are enough here
    first = measure(data, "vae_decoder")
    last = int8_mixed.rescue(
        engines, data, "vae_decoder", feeds, measure, first, (999.0, 0.001), log=lambda line: None
    )
    quantization = variant["quantization"]
    attempts = quantization["attempts"]
    assert [len(attempt["float_layers"]) for attempt in attempts] == [0, 2, 4]  # full int8 first
    assert attempts[0]["psnr_db"] == first["image"]["psnr_db"]
    assert attempts[-1]["psnr_db"] == last["image"]["psnr_db"]
    assert quantization["float_layers"] == attempts[-1]["float_layers"]
    assert attempts[1]["float_layers"] == attempts[2]["float_layers"][:2]  # the set grows
    graph = ov.Core().read_model(str(engines / variant["path"]))
    assert all(_float_weights(graph, name) for name in quantization["float_layers"])
    layers = [
        op.get_friendly_name() for op in graph.get_ops() if op.get_type_name() == "Convolution"
    ]
    assert not all(_float_weights(graph, name) for name in layers)  # the rest is int8
    for rel in (variant["path"], variant["weights"]):  # the manifest names the new files
        assert data["components"]["vae_decoder"]["files"][rel]["sha256"] == sha256(engines / rel)
    Manifest.from_data(engines, data)  # the records are what the schema takes
    (engines / MANIFEST).write_text(json.dumps(data))
    shown = CliRunner().invoke(cli, ["info", str(engines)]).output
    assert f"4 layers in float (tried 0: {first['image']['psnr_db']:.1f} dB, 2: " in shown
    # the graph on disk is the one measured: the image again, from fresh compiles
    check.close()
    again = ImageCheck(engines, size, log=lambda line: None)
    picture = again.image(data, ("vae_decoder",), "int8")
    reference = again.image(data, (), "fp32")
    again.close()
    assert psnr(picture, reference) == pytest.approx(last["image"]["psnr_db"], abs=0.5)
