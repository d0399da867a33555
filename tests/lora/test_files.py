"""LoRA files read without torch: every format's keys placed, other adapter kinds refused."""

import json
import struct

import numpy as np
import pytest

from fastimg.errors import InputError
from fastimg.lora.files import parse_lora_spec, read_lora, read_safetensors

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def write(path, tensors: dict, metadata: dict | None = None):
    safetensors_numpy.save_file(tensors, str(path), metadata=metadata)
    return path


def pair(rank=2, width_in=8, width_out=6, seed=0):
    rng = np.random.default_rng(seed)
    down = rng.standard_normal((rank, width_in)).astype(np.float32)
    return down, rng.standard_normal((width_out, rank)).astype(np.float32)


def test_a_peft_file_is_read_by_model_and_module(tmp_path):
    down, up = pair()
    path = write(
        tmp_path / "a.safetensors",
        {"unet.mid_block.attn1.to_q.lora_A.weight": down,
         "unet.mid_block.attn1.to_q.lora_B.weight": up},
        {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 4, "unet.r": 2})},
    )  # fmt: skip
    lora = read_lora(path)
    layer = lora.layers["unet"]["mid_block.attn1.to_q"]
    assert lora.dotted and lora.models == ["unet"]
    np.testing.assert_array_equal(layer.down, down)
    assert layer.rank == 2 and layer.factor == 2.0  # lora_alpha 4 / rank 2
    assert lora.nbytes == down.nbytes + up.nbytes


def test_a_kohya_file_keeps_its_alphas(tmp_path):
    down, up = pair(rank=4)
    path = write(
        tmp_path / "k.safetensors",
        {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": down,
         "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": up,
         "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": np.array(1.0, np.float32)},
    )  # fmt: skip
    lora = read_lora(path)
    assert not lora.dotted
    (layer,) = lora.layers["text_encoder"].values()
    assert layer.factor == 0.25


def test_bf16_tensors_are_widened(tmp_path):
    down, up = pair()
    raw = {"unet.x.lora_A.weight": down, "unet.x.lora_B.weight": up}
    header, blob = {}, b""
    for name, array in raw.items():
        bits = (array.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(array.shape),
                        "data_offsets": [len(blob), len(blob) + len(bits)]}  # fmt: skip
        blob += bits
    text = json.dumps(header).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob)
    tensors, _ = read_safetensors(path)
    np.testing.assert_allclose(tensors["unet.x.lora_A.weight"], down, rtol=1e-2)


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("lora_unet_x.hada_w1_a", "LoHa"),
        ("lora_unet_x.lokr_w1", "LoKr"),
        ("unet.x.lora_magnitude_vector", "DoRA"),
        ("lora_unet_x.dora_scale", "DoRA"),
    ],
)
def test_other_adapter_kinds_are_refused_by_name(tmp_path, key, kind):
    path = write(tmp_path / "o.safetensors", {key: np.zeros((2, 2), np.float32)})
    with pytest.raises(InputError, match=kind):
        read_lora(path)


def test_files_that_are_no_lora_are_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_lora(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(InputError, match="is not a .safetensors file"):
        read_lora(junk)
    other = write(tmp_path / "w.safetensors", {"conv.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(InputError, match="keys fastimg cannot place"):
        read_lora(other)
    lonely = write(tmp_path / "l.safetensors", {"unet.x.lora_A.weight": np.zeros((2, 2), "f4")})
    with pytest.raises(InputError, match="no lora_B.weight"):
        read_lora(lonely)


def test_a_lora_spec_takes_an_optional_scale():
    assert parse_lora_spec("style.safetensors") == ("style.safetensors", 1.0)
    assert parse_lora_spec("a/b.safetensors:0.6") == ("a/b.safetensors", 0.6)
    with pytest.raises(InputError, match="is not a number"):
        parse_lora_spec("style.safetensors:strong")
    with pytest.raises(InputError, match="between -10 and 10"):
        parse_lora_spec("style.safetensors:11")


def test_the_short_hash_is_a1111s_hash_of_the_tensors_not_the_metadata(tmp_path):
    import hashlib

    down, up = pair()
    tensors = {"unet.mid_block.attn1.to_q.lora_A.weight": down,
               "unet.mid_block.attn1.to_q.lora_B.weight": up}  # fmt: skip
    first = read_lora(write(tmp_path / "a.safetensors", tensors, {"ss_output_name": "a"}))
    renamed = read_lora(write(tmp_path / "b.safetensors", tensors, {"ss_output_name": "bb"}))
    data = (tmp_path / "a.safetensors").read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    assert first.short_hash == hashlib.sha256(data[8 + header :]).hexdigest()[:12]
    assert renamed.short_hash == first.short_hash  # the same weights under other metadata
    other = read_lora(
        write(tmp_path / "c.safetensors", dict(zip(tensors, pair(seed=1), strict=True)))
    )
    assert other.short_hash != first.short_hash
