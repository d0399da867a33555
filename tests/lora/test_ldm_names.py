"""kohya's LDM spelling of SDXL UNet modules, mapped as diffusers maps it."""

import pytest

from fastimg.lora.ldm_names import is_ldm_name, layers_per_block, to_diffusers


@pytest.mark.parametrize(
    ("ldm", "diffusers"),
    [
        ("input_blocks_4_1_transformer_blocks_0_attn1_to_q",
         "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"),
        ("input_blocks_8_1_proj_in", "down_blocks_2_attentions_1_proj_in"),
        ("input_blocks_1_0_in_layers_2", "down_blocks_0_resnets_0_conv1"),
        ("input_blocks_2_0_emb_layers_1", "down_blocks_0_resnets_1_time_emb_proj"),
        ("input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
        ("input_blocks_0_0", "conv_in"),
        ("middle_block_1_transformer_blocks_3_attn2_to_k",
         "mid_block_attentions_0_transformer_blocks_3_attn2_to_k"),
        ("middle_block_2_out_layers_3", "mid_block_resnets_1_conv2"),
        ("output_blocks_5_1_transformer_blocks_0_ff_net_2",
         "up_blocks_1_attentions_2_transformer_blocks_0_ff_net_2"),
        ("output_blocks_0_0_skip_connection", "up_blocks_0_resnets_0_conv_shortcut"),
        ("out_2", "conv_out"),
        ("label_emb_0_0", "add_embedding_linear_1"),
    ],
)  # fmt: skip
def test_sdxl_names_map_as_diffusers_maps_them(ldm, diffusers):
    assert is_ldm_name(ldm)
    assert to_diffusers(ldm, layers_per_block=2) == diffusers


def test_the_blocks_follow_the_layers_per_block():
    assert to_diffusers("input_blocks_5_1_proj_out", 1) == "down_blocks_2_attentions_0_proj_out"
    assert to_diffusers("output_blocks_3_1_proj_out", 1) == "up_blocks_1_attentions_1_proj_out"
    modules = ["down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.1.conv2", "conv_in"]
    assert layers_per_block(modules) == 2
    assert not is_ldm_name("down_blocks_0_attentions_0_proj_in")
