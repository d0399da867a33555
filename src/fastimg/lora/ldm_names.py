"""kohya's SDXL LoRAs name UNet modules as the original (LDM/SGM) UNet does: input_blocks,
middle_block, output_blocks. These turn such a name (underscored, as kohya writes it) into the
diffusers module path the exported graph has, underscored too, as diffusers'
_maybe_map_sgm_blocks_to_diffusers and _convert_unet_lora_key do."""

import re

# A resnet's layers: the LDM name -> diffusers'.
RESNET_LAYERS = (
    ("in_layers_2", "conv1"),
    ("out_layers_3", "conv2"),
    ("emb_layers_1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
)
# Modules outside the blocks.
OUTSIDE = (
    ("input_blocks_0_0", "conv_in"),
    ("out_2", "conv_out"),
    ("time_embed_0", "time_embedding_linear_1"),
    ("time_embed_2", "time_embedding_linear_2"),
    ("label_emb_0_0", "add_embedding_linear_1"),
    ("label_emb_0_2", "add_embedding_linear_2"),
)
LDM_PREFIXES = ("input_blocks_", "middle_block_", "output_blocks_", "out_2", "time_embed_",
                "label_emb_")  # fmt: skip


def is_ldm_name(name: str) -> bool:
    """Whether an underscored UNet module name is in the LDM spelling."""
    return name.startswith(LDM_PREFIXES)


def to_diffusers(name: str, layers_per_block: int) -> str:
    """diffusers' underscored module path for an underscored LDM one."""
    for ldm, ours in OUTSIDE:
        if name == ldm:
            return ours
    per_block = layers_per_block + 1  # its layers, then a down- or upsampler
    found = re.match(r"(input_blocks|output_blocks)_(\d+)_(\d+)_(.+)$", name)
    if found:
        kind, index, rest = found.group(1), int(found.group(2)), found.group(4)
        inner = "resnets" if found.group(3) == "0" else "attentions"
        if kind == "input_blocks":
            block, position = divmod(index - 1, per_block)
            if rest == "op":
                return f"down_blocks_{block}_downsamplers_0_conv"
            return f"down_blocks_{block}_{inner}_{position}_{_resnet(rest)}"
        block, position = divmod(index, per_block)
        if rest == "conv":
            return f"up_blocks_{block}_upsamplers_0_conv"
        return f"up_blocks_{block}_{inner}_{position}_{_resnet(rest)}"
    found = re.match(r"middle_block_(\d)_(.+)$", name)
    if found:
        where = {"0": "resnets_0", "1": "attentions_0", "2": "resnets_1"}[found.group(1)]
        return f"mid_block_{where}_{_resnet(found.group(2))}"
    return name


def _resnet(rest: str) -> str:
    """A resnet layer's diffusers name (other modules keep theirs)."""
    for ldm, ours in RESNET_LAYERS:
        if rest == ldm:
            return ours
    return rest


def layers_per_block(modules) -> int:
    """The UNet's layers per down block, counted from its first down block's resnets."""
    found = {m.group(1) for p in modules if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", p))}
    return max(len(found), 1)
