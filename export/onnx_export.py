"""Each pipeline component as an ONNX graph with dynamic batch and spatial sizes.

I/O names follow optimum's convention; the UNet timestep is float32 of shape [batch], so
fractional (Euler, Karras) timesteps survive and one call may carry several timesteps.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

OPSET = 17
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # protobuf's limit is 2 GiB; stay clear of it
DATA_FILE = "model.onnx_data"


@dataclass(frozen=True)
class ComponentSpec:
    """Names, dtypes and symbolic shapes of one exported graph."""

    inputs: dict[str, tuple[str, list]]
    outputs: dict[str, tuple[str, list]]

    def io(self) -> dict:
        """The manifest's view: {'inputs': {name: {dtype, shape}}, 'outputs': {...}}."""
        return {
            side: {name: {"dtype": dtype, "shape": shape} for name, (dtype, shape) in specs.items()}
            for side, specs in (("inputs", self.inputs), ("outputs", self.outputs))
        }


SD_COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")


# A pipeline with ControlNets also has these graphs: each ControlNet (controlnet, controlnet_1,
# ...: see controlnets), and the UNet that takes their summed residuals (beside the plain UNet,
# so that a call without control runs the plain one).
CONTROL_UNET = "unet_control"


def component_names(pipe) -> tuple[str, ...]:
    """The graphs exported for this pipeline: SD's four (and the control graphs where it has
    a ControlNet), or SDXL's with text_encoder_2 (and no text_encoder for the refiner)."""
    control = tuple(name for name, _ in controlnets(pipe))
    control = (*control, CONTROL_UNET) if control else ()
    if not is_sdxl(pipe):
        return SD_COMPONENTS + control
    first = ("text_encoder",) if pipe.text_encoder is not None else ()
    return (*first, "text_encoder_2", "unet", "vae_encoder", "vae_decoder", *control)


def text_encoder_names(pipe) -> tuple[str, ...]:
    """The pipeline's exported text encoders: text_encoder (SD, SDXL base), text_encoder_2."""
    return tuple(name for name in component_names(pipe) if name.startswith("text_encoder"))


def is_sdxl(pipe) -> bool:
    """Whether the pipeline has SDXL's second text encoder and added conditioning."""
    return hasattr(pipe, "text_encoder_2")


def has_controlnet(pipe) -> bool:
    """Whether the pipeline carries a ControlNet to export."""
    return getattr(pipe, "controlnet", None) is not None


def controlnet_component(k: int) -> str:
    """The component name of the k-th ControlNet: controlnet, controlnet_1, ... (the folder
    names diffusers saves a MultiControlNetModel's ControlNets under)."""
    return "controlnet" if k == 0 else f"controlnet_{k}"


def controlnets(pipe) -> list[tuple[str, object]]:
    """(component name, ControlNetModel) of each ControlNet the pipeline carries, in order
    (a MultiControlNetModel's nets one by one)."""
    model = getattr(pipe, "controlnet", None)
    if model is None:
        return []
    nets = list(getattr(model, "nets", None) or [model])
    return [(controlnet_component(k), net) for k, net in enumerate(nets)]


def residual_layout(config) -> list[tuple[int, int]]:
    """(channels, level) of each down-block residual a UNet (or ControlNet) of this config
    gives and takes, the mid block's last: conv_in's, each layer's, each downsampler's."""
    blocks = list(config.block_out_channels)
    layers = config.layers_per_block
    layers = [layers] * len(blocks) if isinstance(layers, int) else list(layers)
    layout = [(blocks[0], 0)]
    for level, channels in enumerate(blocks):
        layout += [(channels, level)] * layers[level]
        if level < len(blocks) - 1:
            layout.append((channels, level + 1))
    return [*layout, (blocks[-1], len(blocks) - 1)]


def residual_names(config) -> list[str]:
    """The ONNX names of the residuals: down_block_res_0, ..., mid_block_res."""
    count = len(residual_layout(config)) - 1
    return [*(f"down_block_res_{k}" for k in range(count)), "mid_block_res"]


def _residual_specs(config) -> dict:
    """The residuals' specs: at level d, the latent sides divided by 2**d (rounded up)."""
    specs = {}
    for name, (channels, level) in zip(
        residual_names(config), residual_layout(config), strict=True
    ):
        side = "" if level == 0 else f"_div{2**level}"
        shape = ["batch", channels, f"latent_height{side}", f"latent_width{side}"]
        specs[name] = ("float32", shape)
    return specs


def component_specs(pipe) -> dict[str, ComponentSpec]:
    """I/O of the graphs for this pipeline's dimensions."""
    if is_sdxl(pipe):
        return _xl_specs(pipe)
    hidden = pipe.text_encoder.config.hidden_size
    latent = pipe.vae.config.latent_channels
    lat = ["batch", latent, "latent_height", "latent_width"]
    img = ["batch", 3, "height", "width"]
    # An inpainting UNet takes the latents, the mask and the masked image's latents.
    unet_in = ["batch", int(pipe.unet.config.in_channels), "latent_height", "latent_width"]
    return {
        "text_encoder": ComponentSpec(
            {"input_ids": ("int64", ["batch", "sequence"])},
            {
                "last_hidden_state": ("float32", ["batch", "sequence", hidden]),
                "pooler_output": ("float32", ["batch", hidden]),
            },
        ),
        "unet": ComponentSpec(
            {
                "sample": ("float32", unet_in),
                "timestep": ("float32", ["batch"]),
                "encoder_hidden_states": ("float32", ["batch", "sequence", hidden]),
                **_unet_conditioning(pipe.unet.config),
            },
            {"out_sample": ("float32", lat)},
        ),
        "vae_encoder": ComponentSpec({"sample": ("float32", img)}, _encoder_output(pipe.vae)),
        "vae_decoder": ComponentSpec(
            {"latent_sample": ("float32", lat)}, {"sample": ("float32", img)}
        ),
        **(_control_specs(pipe, lat, hidden, unet_in) if has_controlnet(pipe) else {}),
    }


def _control_specs(pipe, lat: list, hidden: int, unet_in: list, added: dict | None = None) -> dict:
    """The ControlNet (pixels 0..1 in, its scaled residuals out) and the UNet taking them
    (the latents, for an inpainting UNet also the mask and masked image: `unet_in`);
    `added`: SDXL's text_embeds and time_ids, which both take after the text."""
    text = {
        "sample": ("float32", lat),
        "timestep": ("float32", ["batch"]),
        "encoder_hidden_states": ("float32", ["batch", "sequence", hidden]),
    }
    added = added or {}
    residuals = _residual_specs(pipe.unet.config)
    controlnet = ComponentSpec(
        {
            **text,
            "controlnet_cond": ("float32", ["batch", 3, "height", "width"]),
            "conditioning_scale": ("float32", [1]),
            **added,
        },
        residuals,
    )
    unet = ComponentSpec(
        {**text, "sample": ("float32", unet_in), **added, **residuals},
        {"out_sample": ("float32", lat)},
    )
    return {**{name: controlnet for name, _ in controlnets(pipe)}, CONTROL_UNET: unet}


def _xl_specs(pipe) -> dict[str, ComponentSpec]:
    """SDXL's graphs: penultimate hidden states of each text encoder (and the second one's
    projected pooled output), a UNet with text_embeds and time_ids, the VAE's two halves."""
    latent = pipe.vae.config.latent_channels
    lat = ["batch", latent, "latent_height", "latent_width"]
    img = ["batch", 3, "height", "width"]
    width = int(pipe.unet.config.cross_attention_dim)
    specs = {}
    for name in text_encoder_names(pipe):
        encoder = getattr(pipe, name)
        outputs = {"hidden_states": ("float32", ["batch", "sequence", encoder.config.hidden_size])}
        if name == "text_encoder_2":
            outputs["text_embeds"] = ("float32", ["batch", encoder.config.projection_dim])
        specs[name] = ComponentSpec({"input_ids": ("int64", ["batch", "sequence"])}, outputs)
    added = {
        "text_embeds": ("float32", ["batch", pipe.text_encoder_2.config.projection_dim]),
        "time_ids": ("float32", ["batch", time_id_count(pipe)]),
    }
    unet_in = ["batch", int(pipe.unet.config.in_channels), "latent_height", "latent_width"]
    specs["unet"] = ComponentSpec(
        {
            "sample": ("float32", unet_in),
            "timestep": ("float32", ["batch"]),
            "encoder_hidden_states": ("float32", ["batch", "sequence", width]),
            **added,
        },
        {"out_sample": ("float32", lat)},
    )
    if has_controlnet(pipe):
        specs.update(_control_specs(pipe, lat, width, unet_in, added))
    specs["vae_encoder"] = ComponentSpec({"sample": ("float32", img)}, _encoder_output(pipe.vae))
    specs["vae_decoder"] = ComponentSpec(
        {"latent_sample": ("float32", lat)}, {"sample": ("float32", img)}
    )
    return specs


def time_id_count(pipe) -> int:
    """How many micro-conditioning values the SDXL UNet embeds: 6 (sizes and crop), or 5 for
    the refiner (aesthetic score in place of the target size), as diffusers checks per call."""
    config = pipe.unet.config
    pooled = pipe.text_encoder_2.config.projection_dim
    count, rest = divmod(
        config.projection_class_embeddings_input_dim - pooled, config.addition_time_embed_dim
    )
    expected = 5 if pipe.config.requires_aesthetics_score else 6
    if rest or count != expected:
        from fastimg.errors import InputError

        raise InputError(
            f"this SDXL UNet embeds {config.projection_class_embeddings_input_dim} added values, "
            f"not {expected} time ids of {config.addition_time_embed_dim} and a pooled "
            f"embedding of {pooled} (requires_aesthetics_score="
            f"{pipe.config.requires_aesthetics_score}): the model's config is inconsistent"
        )
    return count


def vae_kind(vae) -> str:
    """'tiny' for an AutoencoderTiny (TAESD), whose encoder gives latents directly; else 'kl'."""
    return "tiny" if type(vae).__name__ == "AutoencoderTiny" else "kl"


def _encoder_output(vae) -> dict:
    """A KL encoder's mean and log-variance moments, or a tiny encoder's latents."""
    latent = vae.config.latent_channels
    if vae_kind(vae) == "tiny":
        return {"latents": ("float32", ["batch", latent, "latent_height", "latent_width"])}
    shape = ["batch", 2 * latent, "latent_height", "latent_width"]
    return {"latent_parameters": ("float32", shape)}


def _unet_conditioning(config) -> dict:
    """The UNet's extra conditioning inputs: an LCM-distilled UNet's guidance embedding."""
    extra = {}
    if config.get("time_cond_proj_dim") is not None:
        extra["timestep_cond"] = ("float32", ["batch", int(config["time_cond_proj_dim"])])
    return extra


def torch_modules(pipe) -> dict:
    """One torch.nn.Module per component, with the exported graph's inputs and outputs."""
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            out = self.model(input_ids, return_dict=False)
            return out[0], out[1]

    class UNet(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
            return self.model(
                sample,
                timestep,
                encoder_hidden_states,
                timestep_cond=timestep_cond,
                return_dict=False,
            )[0]

    class VaeEncoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, sample):
            encoded = self.vae.encode(sample)
            return (
                encoded.latents if vae_kind(self.vae) == "tiny" else encoded.latent_dist.parameters
            )

    class VaeDecoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample):
            return self.vae.decode(latent_sample, return_dict=False)[0]

    class PenultimateTextEncoder(torch.nn.Module):
        """SDXL's text encoder: hidden_states[-2], and the projected pooled output if any."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            out = self.model(input_ids, output_hidden_states=True)
            hidden = out.hidden_states[-2]
            pooled = getattr(out, "text_embeds", None)
            return hidden if pooled is None else (hidden, pooled)

    class UNetXL(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
            added = {"text_embeds": text_embeds, "time_ids": time_ids}
            return self.model(
                sample,
                timestep,
                encoder_hidden_states,
                added_cond_kwargs=added,
                return_dict=False,
            )[0]

    class ControlNet(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, scale):
            down, mid = self.model(sample, timestep, encoder_hidden_states, controlnet_cond,
                                   conditioning_scale=scale, return_dict=False)  # fmt: skip
            return (*down, mid)

    class ControlNetXL(ControlNet):
        def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, scale,
                    text_embeds, time_ids):  # fmt: skip
            added = {"text_embeds": text_embeds, "time_ids": time_ids}
            down, mid = self.model(sample, timestep, encoder_hidden_states, controlnet_cond,
                                   conditioning_scale=scale, added_cond_kwargs=added,
                                   return_dict=False)  # fmt: skip
            return (*down, mid)

    class UNetControl(torch.nn.Module):
        def __init__(self, model, added: int = 0):
            super().__init__()
            self.model, self.added = model, added  # (SDXL: text_embeds, time_ids first)

        def forward(self, sample, timestep, encoder_hidden_states, *rest):
            added, residuals = rest[: self.added], rest[self.added :]
            conditions = {"text_embeds": added[0], "time_ids": added[1]} if added else None
            return self.model(
                sample,
                timestep,
                encoder_hidden_states,
                added_cond_kwargs=conditions,
                down_block_additional_residuals=residuals[:-1],
                mid_block_additional_residual=residuals[-1],
                return_dict=False,
            )[0]

    vae = {"vae_encoder": VaeEncoder(pipe.vae).eval(), "vae_decoder": VaeDecoder(pipe.vae).eval()}
    if has_controlnet(pipe):
        for name, net in controlnets(pipe):
            vae[name] = (ControlNetXL if is_sdxl(pipe) else ControlNet)(net).eval()
        vae[CONTROL_UNET] = UNetControl(pipe.unet, 2 if is_sdxl(pipe) else 0).eval()
    if is_sdxl(pipe):
        encoders = {
            name: PenultimateTextEncoder(getattr(pipe, name)).eval()
            for name in text_encoder_names(pipe)
        }
        return {**encoders, "unet": UNetXL(pipe.unet).eval(), **vae}
    return {
        "text_encoder": TextEncoder(pipe.text_encoder).eval(),
        "unet": UNet(pipe.unet).eval(),
        **vae,
    }


def vae_scale_factor(pipe) -> int:
    """Pixels per latent cell along each side (8 for SD)."""
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def sample_inputs(pipe, name: str, batch: int, latent_hw: tuple[int, int], seed: int = 0):
    """Random torch inputs for one component at a given batch and latent size."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, w = latent_hw
    factor = vae_scale_factor(pipe)
    latent = pipe.vae.config.latent_channels
    if is_sdxl(pipe):
        encoder, tokenizer = pipe.text_encoder_2, pipe.tokenizer_2
        if name == "text_encoder":
            encoder, tokenizer = pipe.text_encoder, pipe.tokenizer
        hidden = pipe.unet.config.cross_attention_dim
    else:
        encoder, tokenizer = pipe.text_encoder, pipe.tokenizer
        hidden = encoder.config.hidden_size
    length = tokenizer.model_max_length
    if name.startswith("text_encoder"):
        vocab = min(encoder.config.vocab_size, len(tokenizer))
        return (torch.randint(0, vocab, (batch, length), generator=g),)
    if name.startswith("controlnet") or name == CONTROL_UNET:
        return _control_inputs(pipe, name, batch, (h, w), g, length, hidden)
    if name == "unet":
        inputs = (
            torch.randn(batch, pipe.unet.config.in_channels, h, w, generator=g),
            torch.rand(batch, generator=g) * 999,
            torch.randn(batch, length, hidden, generator=g),
        )
        if is_sdxl(pipe):  # a pooled embedding, and sizes (or an aesthetic score) as time ids
            return (*inputs, *_added_inputs(pipe, batch, g))
        cond_dim = pipe.unet.config.get("time_cond_proj_dim")
        if cond_dim is not None:  # a guidance embedding: sines and cosines
            inputs += (torch.rand(batch, cond_dim, generator=g) * 2 - 1,)
        return inputs
    if name == "vae_encoder":
        return (torch.rand(batch, 3, h * factor, w * factor, generator=g) * 2 - 1,)
    return (torch.randn(batch, latent, h, w, generator=g),)


def _control_inputs(pipe, name: str, batch: int, latent_hw, g, length: int, hidden: int):
    """Random inputs of the ControlNet or of the UNet that takes its residuals."""
    import torch

    h, w = latent_hw
    factor = vae_scale_factor(pipe)
    channels = (
        pipe.unet.config.in_channels if name == CONTROL_UNET else pipe.vae.config.latent_channels
    )
    inputs = (
        torch.randn(batch, channels, h, w, generator=g),
        torch.rand(batch, generator=g) * 999,
        torch.randn(batch, length, hidden, generator=g),
    )
    added = _added_inputs(pipe, batch, g) if is_sdxl(pipe) else ()
    if name != CONTROL_UNET:  # a ControlNet
        cond = torch.rand(batch, 3, h * factor, w * factor, generator=g)
        return (*inputs, cond, torch.tensor([0.7]), *added)
    residuals = []
    for channels, level in residual_layout(pipe.unet.config):
        side_h, side_w = h, w
        for _ in range(level):
            side_h, side_w = (side_h + 1) // 2, (side_w + 1) // 2
        residuals.append(torch.randn(batch, channels, side_h, side_w, generator=g) * 0.1)
    return (*inputs, *added, *residuals)


def _added_inputs(pipe, batch: int, g) -> tuple:
    """SDXL's added conditioning: a pooled text embedding, and sizes (or an aesthetic score)
    as time ids."""
    import torch

    pooled = torch.randn(batch, pipe.text_encoder_2.config.projection_dim, generator=g)
    sizes = torch.randint(0, 1025, (batch, time_id_count(pipe)), generator=g)
    return pooled, sizes.float()


# Traced at a latent size that is not a multiple of the UNet's up-factor, so diffusers takes its
# size-forwarding upsample path and the graph works for every latent size, odd ones included.
TRACE_BATCH, TRACE_LATENT = 2, (9, 7)


def export_component(pipe, name: str, module, spec: ComponentSpec, scratch: Path) -> Path:
    """torch.onnx.export one component into `scratch`; return the raw model path."""
    import torch

    scratch.mkdir(parents=True, exist_ok=True)
    raw = scratch / "model.onnx"
    dynamic = {
        io: {i: d for i, d in enumerate(shape) if isinstance(d, str)}
        for io, (_, shape) in {**spec.inputs, **spec.outputs}.items()
    }
    # The tracer's warnings (constant folding, traced shapes) concern its internals, not the user.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            sample_inputs(pipe, name, TRACE_BATCH, TRACE_LATENT),
            str(raw),
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return raw


def save_model(raw: Path, dest: Path, fp16: bool, data_file: str = DATA_FILE) -> list[Path]:
    """Re-save a raw export as `dest` (external data in one file, `data_file` beside it, when
    large); return its files."""
    import onnx

    model = onnx.load(str(raw))
    if fp16:
        from onnxruntime.transformers.float16 import (
            DEFAULT_OP_BLOCK_LIST,
            convert_float_to_float16,
        )

        # Resize reads its roi and scales as float32 whatever the data type: it stays in float32,
        # and so do the Constant nodes that feed it.
        resize_inputs = {i for n in model.graph.node if n.op_type == "Resize" for i in n.input[1:]}
        constants = [
            n.name
            for n in model.graph.node
            if n.op_type == "Constant" and set(n.output) & resize_inputs
        ]
        model = convert_float_to_float16(
            model,
            keep_io_types=True,
            disable_shape_infer=True,
            op_block_list=[*DEFAULT_OP_BLOCK_LIST, "Resize"],
            node_block_list=constants,
        )
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    dest.parent.mkdir(parents=True, exist_ok=True)
    external = weight_bytes > EXTERNAL_DATA_THRESHOLD
    onnx.save_model(
        model,
        str(dest),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data_file,
    )
    files = [dest, dest.parent / data_file] if external else [dest]
    from fastimg.atomic import public_mode

    for path in files:  # onnx writes external data readable by its owner only
        public_mode(path)
    return files
