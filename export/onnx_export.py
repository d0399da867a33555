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


def component_specs(pipe) -> dict[str, ComponentSpec]:
    """I/O of the four graphs for this pipeline's dimensions."""
    hidden = pipe.text_encoder.config.hidden_size
    latent = pipe.vae.config.latent_channels
    lat = ["batch", latent, "latent_height", "latent_width"]
    img = ["batch", 3, "height", "width"]
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
                "sample": ("float32", lat),
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
    }


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

    return {
        "text_encoder": TextEncoder(pipe.text_encoder).eval(),
        "unet": UNet(pipe.unet).eval(),
        "vae_encoder": VaeEncoder(pipe.vae).eval(),
        "vae_decoder": VaeDecoder(pipe.vae).eval(),
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
    hidden = pipe.text_encoder.config.hidden_size
    length = pipe.tokenizer.model_max_length
    if name == "text_encoder":
        vocab = min(pipe.text_encoder.config.vocab_size, len(pipe.tokenizer))
        return (torch.randint(0, vocab, (batch, length), generator=g),)
    if name == "unet":
        inputs = (
            torch.randn(batch, latent, h, w, generator=g),
            torch.rand(batch, generator=g) * 999,
            torch.randn(batch, length, hidden, generator=g),
        )
        cond_dim = pipe.unet.config.get("time_cond_proj_dim")
        if cond_dim is not None:  # a guidance embedding: sines and cosines
            inputs += (torch.rand(batch, cond_dim, generator=g) * 2 - 1,)
        return inputs
    if name == "vae_encoder":
        return (torch.rand(batch, 3, h * factor, w * factor, generator=g) * 2 - 1,)
    return (torch.randn(batch, latent, h, w, generator=g),)


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


def save_model(raw: Path, dest: Path, fp16: bool) -> list[Path]:
    """Re-save a raw export as `dest` (external data in one file when large); return its files."""
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
        location=DATA_FILE,
    )
    files = [dest, dest.parent / DATA_FILE] if external else [dest]
    from fastimg.atomic import public_mode

    for path in files:  # onnx writes external data readable by its owner only
        public_mode(path)
    return files
