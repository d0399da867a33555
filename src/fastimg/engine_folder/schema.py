"""The one schema an engine folder's manifest.json (and the scheduler config in it) must pass.

Engine folders are untrusted input: every field the runtime reads has a type and bounds here,
checked once when the folder loads, so that a hostile or damaged manifest ends in one line
naming the field instead of a traceback, an allocation of gigabytes or a file read outside the
folder. Fields the runtime does not read may be anything (they are only displayed).
"""

import json
import math
import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from ..errors import ManifestError
from .layout import (
    COMPONENTS,
    FORMAT,
    FORMAT_VERSION,
    TEXT_ENCODERS,
    TOKENIZER_OF,
)

MAX_FILES = 10_000
MAX_FILE_BYTES = 2**40  # 1 TiB
MAX_TRAIN_TIMESTEPS = 10_000
MAX_TOKENS = 1024
MAX_SIDE = 16_384


def _relative_path(text: str) -> str:
    """A path inside the engine folder, written relative to it with '/'."""
    if "\\" in text or "\0" in text:
        raise ValueError("must use '/' separators and no NUL characters")
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).drive:
        raise ValueError("must be relative to the engine folder, not absolute")
    if ".." in PurePosixPath(text).parts:
        raise ValueError("must not contain '..' (it would leave the engine folder)")
    return text


RelPath = Annotated[
    str, StringConstraints(min_length=1, max_length=1024), AfterValidator(_relative_path)
]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Text = Annotated[str, StringConstraints(max_length=4096)]
Precision = Literal["fp32", "fp16", "bf16"]


class _Strict(BaseModel):
    """Types as JSON gives them (no "1000" for 1000, no true for 1), finite numbers only."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow", frozen=True)


class FileEntry(_Strict):
    """A file of the folder: its size and SHA-256."""

    bytes: Annotated[int, Field(ge=0, le=MAX_FILE_BYTES)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


Files = Annotated[dict[RelPath, FileEntry], Field(max_length=MAX_FILES)]
Dim = int | Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


class TensorSpec(_Strict):
    """One graph input or output: element type and shape (numbers or symbolic names)."""

    dtype: Literal["float32", "float16", "bfloat16", "int64", "int32"]
    shape: Annotated[list[Annotated[Dim, Field()]], Field(min_length=0, max_length=8)]

    @model_validator(mode="after")
    def _dims_positive(self):
        if any(isinstance(d, int) and not 1 <= d <= 1_000_000 for d in self.shape):
            raise ValueError("numeric dimensions must lie between 1 and 1000000")
        return self


Error = Annotated[float, Field(ge=0, le=1e6)]


class LayerError(_Strict):
    """One layer of a quantized graph and the relative RMS error of its output."""

    name: Annotated[str, StringConstraints(max_length=256)]
    relative_rms_error: Error


class QuantizationError(_Strict):
    """What quantization cost: the graph's output error and its layers' errors."""

    output_relative_rms_error: Error
    layers: Annotated[int, Field(ge=0, le=1_000_000)]
    median_relative_rms_error: Error
    max_relative_rms_error: Error
    worst_layers: Annotated[list[LayerError], Field(max_length=100)] = []


class CheckJob(_Strict):
    """The img2img call a quantized variant's images were compared on (diffusers' names)."""

    prompt: Annotated[str, StringConstraints(max_length=1000)]
    size: Annotated[int, Field(ge=8, le=16_384)]
    strength: Annotated[float, Field(gt=0, le=1)]
    num_inference_steps: Annotated[int, Field(ge=1, le=1000)]
    guidance_scale: Annotated[float, Field(ge=0, le=100)]
    seed: Annotated[int, Field(ge=0, lt=2**32)]


class ImageError(_Strict):
    """How far the images of a quantized variant are from fp32's on one job, on the CPU the
    export ran on (OpenVINO compiles other int8 kernels on other CPUs)."""

    psnr_db: Annotated[float, Field(ge=0, le=1000)]
    job: CheckJob
    measured_on: Annotated[str, StringConstraints(max_length=256)]


class Speed(_Strict):
    """A quantized graph's speed alone against its component's default path, measured at
    export on the CPU the image was measured on."""

    int8_seconds: Annotated[float, Field(gt=0, le=1e6)]
    default_seconds: Annotated[float, Field(gt=0, le=1e6)]
    speed_ratio: Annotated[float, Field(gt=0, le=1e6)]  # default_seconds / int8_seconds
    default_path: Annotated[str, StringConstraints(max_length=256)]
    runs: Annotated[int, Field(ge=1, le=10_000)]


LayerName = Annotated[str, StringConstraints(max_length=256)]


class FloatAttempt(_Strict):
    """One quantization of a graph with some layers left in float, and what it measured."""

    float_layers: Annotated[list[LayerName], Field(max_length=256)]
    psnr_db: Annotated[float, Field(ge=0, le=1000)]
    speed_ratio: Annotated[float, Field(gt=0, le=1e6)]


class Quantization(_Strict):
    """How a quantized variant was made, what it cost and whether it was chosen (folders
    exported before the choice was measured have no speed, chosen or reason)."""

    method: Annotated[str, StringConstraints(max_length=64)]
    error: QuantizationError
    image: ImageError | None = None  # (folders exported before it was measured have none)
    speed: Speed | None = None
    chosen: bool | None = None
    reason: Annotated[str, StringConstraints(max_length=1000)] | None = None
    smooth_quant_alpha: Annotated[float, Field(ge=0, le=1)] | None = None  # (full-int8 UNet)
    # Layers left in float where full int8 lost too much, and each attempt's figures.
    float_layers: Annotated[list[LayerName], Field(max_length=256)] = []
    attempts: Annotated[list[FloatAttempt], Field(max_length=16)] = []


class Int8Mix(_Strict):
    """The int8 graphs --precision int8 runs (the others run at the default precision), the
    bounds they were chosen by, and the mix's image against fp32's."""

    components: Annotated[list[Name], Field(min_length=1, max_length=16)]
    image: ImageError
    default_path_image: ImageError | None = None
    # With ControlNets: the mix's and the default path's images on the job with a control image.
    control_image: ImageError | None = None
    control_default_path_image: ImageError | None = None
    # The mix with static shapes (--shapes static or auto), its int8 graphs for them included.
    static_image: ImageError | None = None
    min_speedup: Annotated[float, Field(gt=0, le=100)]
    min_psnr_db: Annotated[float, Field(ge=0, le=1000)]


class Winograd(_Strict):
    """The convolutions a graph computes in Winograd form, and the memory their transformed
    filters take beyond the files' weights once loaded."""

    convolutions: Annotated[int, Field(ge=0, le=100_000)]
    extra_bytes: Annotated[int, Field(ge=0, le=MAX_FILE_BYTES)]
    activation_factor: Annotated[float, Field(ge=1, le=100)] = 1.0  # see fastimg.diffusion.memory


class Variant(_Strict):
    """Another graph file of a component that one backend (or precision) loads instead."""

    path: RelPath
    weights: RelPath | None = None  # an OpenVINO IR's .bin, opened with its .xml
    # the external data it reads that is the standard graph's (its weights, not copied)
    data: Annotated[list[RelPath], Field(max_length=64)] = []
    quantization: Quantization | None = None
    winograd: Winograd | None = None


class Component(_Strict):
    """One exported model: its graph file, the files that make it up, its inputs and outputs."""

    path: RelPath
    precision: Precision | None = None
    files: Files
    inputs: Annotated[dict[Name, TensorSpec], Field(min_length=1, max_length=16)]
    outputs: Annotated[dict[Name, TensorSpec], Field(min_length=1, max_length=16)]
    variants: Annotated[dict[Name, Variant], Field(max_length=8)] = {}
    # An int8 graph measured at export and dropped (its file deleted): the figures and why.
    int8_dropped: Quantization | None = None
    # The same for the int8 graph for static shapes (quantized from OpenVINO's GroupNorm graph).
    int8_static_dropped: Quantization | None = None
    # Other int8 methods measured at export and not kept (their files deleted): why.
    int8_alternatives: Annotated[list[Quantization], Field(max_length=4)] = []
    vocab_size: Annotated[int, Field(ge=1, le=10_000_000)] | None = None  # text encoders

    @model_validator(mode="after")
    def _static_int8_beside_int8(self):
        if "openvino-int8-static" in self.variants and "openvino-int8" not in self.variants:
            raise ValueError("an int8 graph for static shapes without its int8 graph")
        return self


class Tokenizer(_Strict):
    """The tokenizer file and how prompts are padded and cut."""

    path: RelPath
    max_length: Annotated[int, Field(ge=1, le=MAX_TOKENS)]
    pad_id: Annotated[int, Field(ge=0, le=10_000_000)]
    files: Files = {}


class TextConditioning(_Strict):
    """SDXL: which text encoders exist (states concatenated in this order), which gives the
    pooled embedding, and the pipeline config flags diffusers reads for the negative prompt
    and the UNet's time ids."""

    text_encoders: Annotated[
        list[Literal[TEXT_ENCODERS]],  # type: ignore[valid-type]
        Field(min_length=1, max_length=2),
    ]
    pooled: Literal["text_encoder_2"]
    force_zeros_for_empty_prompt: bool = False
    requires_aesthetics_score: bool = False

    @model_validator(mode="after")
    def _pooled_present(self):
        if len(set(self.text_encoders)) != len(self.text_encoders):
            raise ValueError("text_encoders names an encoder twice")
        if self.pooled not in self.text_encoders:
            raise ValueError(f"the pooled encoder {self.pooled} is not among text_encoders")
        return self


class Shapes(_Strict):
    """Size limits of the engines."""

    max_side: Annotated[int, Field(ge=64, le=MAX_SIDE)] | None = None


Positive = Annotated[float, Field(gt=0, le=1e6)]
Unit = Annotated[float, Field(gt=0, lt=1)]


class Scheduler(_Strict):
    """The scheduler config fields the samplers read, each bounded; others pass through."""

    num_train_timesteps: Annotated[int, Field(ge=2, le=MAX_TRAIN_TIMESTEPS)] = 1000
    beta_start: Unit = 0.0001
    beta_end: Unit = 0.02
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    trained_betas: Annotated[list[Unit], Field(max_length=MAX_TRAIN_TIMESTEPS)] | None = None
    steps_offset: Annotated[int, Field(ge=0)] = 0
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    timestep_spacing: Literal["linspace", "leading", "trailing"] | None = None
    clip_sample: bool | None = None
    clip_sample_range: Positive | None = None
    set_alpha_to_one: bool | None = None
    original_inference_steps: Annotated[int, Field(ge=1)] | None = None
    timestep_scaling: Positive | None = None
    sigma_min: Positive | None = None
    sigma_max: Positive | None = None
    use_karras_sigmas: bool | None = None
    solver_order: Annotated[int, Field(ge=1, le=3)] | None = None
    lower_order_final: bool | None = None
    euler_at_final: bool | None = None

    @model_validator(mode="after")
    def _consistent(self):
        n = self.num_train_timesteps
        if self.beta_end < self.beta_start:
            raise ValueError(f"beta_end {self.beta_end} is below beta_start {self.beta_start}")
        if self.trained_betas is not None and len(self.trained_betas) != n:
            raise ValueError(
                f"trained_betas has {len(self.trained_betas)} values for {n} train timesteps"
            )
        if self.steps_offset >= n:
            raise ValueError(f"steps_offset {self.steps_offset} is not below {n} timesteps")
        if self.original_inference_steps is not None and self.original_inference_steps > n:
            raise ValueError(f"original_inference_steps is more than the {n} timesteps")
        return self


Range = Annotated[list[Annotated[int, Field(ge=1, le=MAX_SIDE)]], Field(min_length=3, max_length=3)]


class Profile(_Strict):
    """A TensorRT profile: (min, opt, max) of height, width and batch."""

    height: Range
    width: Range
    batch: Range


class PlanComponent(_Strict):
    """One TensorRT plan file."""

    path: RelPath
    precision: Precision | None = None
    files: Files


class PlanSet(_Strict):
    """The plans (one per component) built for one TensorRT release, GPU, precision and
    profile."""

    tensorrt: Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+){0,3}$")]
    compute_capability: Annotated[str, StringConstraints(pattern=r"^\d{1,2}\.\d{1,2}$")]
    precision: Literal["fp16", "fp32"]
    vae_precision: Literal["fp16", "fp32"]
    profile: Profile
    # (which components: EngineManifest checks them against the folder's)
    components: Annotated[dict[Name, PlanComponent], Field(max_length=64)]
    graph_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None


class TensorRT(_Strict):
    """Every plan set built in the folder, by key."""

    engines: Annotated[dict[Name, PlanSet], Field(max_length=256)] = {}


class MemoryModel(_Strict):
    """Activation bytes of one call: per image pixel, and per pair of latent tokens."""

    per_pixel: Annotated[float, Field(ge=0, le=1e9)]
    per_token_pair: Annotated[float, Field(ge=0, le=1e6)]
    weights_factor: Annotated[float, Field(ge=0, le=100)] = 0.0


class Vae(_Strict):
    """Which autoencoder the engines hold: SD's KL VAE or a tiny one (TAESD)."""

    kind: Literal["kl", "tiny"] = "kl"
    source: Text | None = None
    overflows_in_fp16: bool | None = None  # SDXL's VAE (force_upcast): kept fp32


class Lora(_Strict):
    """A LoRA fused into the weights at export."""

    name: Text
    source: Text
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    scale: Annotated[float, Field(ge=-10, le=10)]


MAX_CONTROLNETS = 8  # ControlNets one folder may hold (their residuals are summed)


class ControlNet(_Strict):
    """One exported ControlNet: its component and where it came from."""

    component: Name
    source: Text | None = None
    conditioning_channels: Annotated[int, Field(ge=1, le=16)] = 3


class Control(_Strict):
    """The ControlNets of the folder, the UNet component that takes their residuals (beside
    the plain UNet), and the residuals' names: each ControlNet's outputs, that UNet's inputs."""

    controlnets: Annotated[list[ControlNet], Field(min_length=1, max_length=MAX_CONTROLNETS)]
    unet: Name
    residuals: Annotated[list[Name], Field(min_length=1, max_length=64)]


class Depth(_Strict):
    """The depth model of control_preprocess depth: its component and how its input is made
    (DPTImageProcessor's fixed size, resampling filter, rescale factor, mean and std)."""

    component: Name
    source: Text | None = None
    size: Annotated[list[Annotated[int, Field(ge=8, le=4096)]], Field(min_length=2, max_length=2)]
    resample: Literal["bicubic", "bilinear"] = "bicubic"
    rescale_factor: Annotated[float, Field(gt=0, le=1)] = 1 / 255
    mean: Annotated[list[Annotated[float, Field(ge=-10, le=10)]], Field(min_length=3, max_length=3)]
    std: Annotated[list[Annotated[float, Field(gt=0, le=10)]], Field(min_length=3, max_length=3)]


class EngineManifest(_Strict):
    """manifest.json as the runtime reads it."""

    format: Literal[FORMAT]  # type: ignore[valid-type]
    format_version: Annotated[int, Field(ge=1)]
    kind: Text | None = None
    model_family: Text | None = None
    source: Text | None = None
    created: Text | None = None
    precision: Literal["fp32", "fp16"] = "fp32"
    vae_scale_factor: Annotated[int, Field(ge=1, le=64)]
    vae_scaling_factor: Annotated[float, Field(gt=0, le=100)]
    latent_channels: Annotated[int, Field(ge=1, le=64)] = 4
    # The UNet's sample channels: 2 * latent_channels + 1 for an inpainting UNet (latents,
    # mask, masked image latents); folders written before it have none (latent_channels).
    unet_in_channels: Annotated[int, Field(ge=1, le=129)] | None = None
    vae: Vae = Vae()
    loras: Annotated[list[Lora], Field(max_length=64)] = []
    shapes: Shapes = Shapes()
    tokenizer: Tokenizer
    tokenizer_2: Tokenizer | None = None
    text_conditioning: TextConditioning | None = None
    scheduler: Scheduler
    components: dict[Name, Component]
    files: Files = {}
    tools: dict[Name, Text] = {}
    tensorrt: TensorRT = TensorRT()
    # per component (SD's four; a ControlNet folder's ControlNets and unet_control too)
    memory: Annotated[dict[Name, MemoryModel], Field(max_length=64)] = {}
    control: Control | None = None  # (folders without a ControlNet have none)
    depth: Depth | None = None  # (exported with --depth-model only)
    int8: Int8Mix | None = None  # (exported with --int8 after the choice was measured only)

    @model_validator(mode="after")
    def _memory_of_components(self):
        for name in self.memory:
            if name not in self.components:
                raise ValueError(f"memory names {name}, which is not one of the components")
        return self

    @model_validator(mode="after")
    def _int8_mix_is_the_variants(self):
        if self.int8 is None:
            return self
        variants = {n for n, c in self.components.items() if "openvino-int8" in c.variants}
        if set(self.int8.components) != variants:
            raise ValueError("int8.components are not the components with an int8 variant")
        return self

    @model_validator(mode="after")
    def _depth_is_a_component(self):
        if self.depth is not None:
            name = self.depth.component
            if name not in self.components or name in COMPONENTS:
                raise ValueError(f"depth names {name}, which is not a depth component")
        return self

    @model_validator(mode="after")
    def _control_complete(self):
        if self.control is None:
            return self
        unet = self.control.unet
        for name in (unet, *(c.component for c in self.control.controlnets)):
            if name not in self.components or name in COMPONENTS:
                raise ValueError(f"control names {name}, which is not a control component")
        residuals = set(self.control.residuals)
        for c in self.control.controlnets:
            if set(self.components[c.component].outputs) != residuals:
                raise ValueError(f"{c.component}'s outputs are not control.residuals")
        if not residuals <= set(self.components[unet].inputs):
            raise ValueError(f"{unet} does not take every one of control.residuals")
        return self

    @model_validator(mode="after")
    def _complete(self):
        encoders = ("text_encoder",)
        if self.text_conditioning is not None:
            encoders = tuple(self.text_conditioning.text_encoders)
        missing = [c for c in (*encoders, *COMPONENTS[1:]) if c not in self.components]
        if missing:
            raise ValueError(f"components lacks {', '.join(missing)}")
        needed = {*encoders, *COMPONENTS[1:]}
        # A plan set may also hold the ControlNets, their UNet and the depth model (one built
        # before fastimg built those has none: its graph digest no longer matches the folder's).
        extras = set()
        if self.control is not None:
            extras |= {self.control.unet, *(c.component for c in self.control.controlnets)}
        if self.depth is not None:
            extras.add(self.depth.component)
        for key, plans in self.tensorrt.engines.items():
            if not needed <= set(plans.components) <= needed | extras:
                wanted = ", ".join(sorted(needed))
                if extras:
                    wanted += f" (and {', '.join(sorted(extras))})"
                raise ValueError(
                    f"the TensorRT plan set {key} has plans for "
                    f"{', '.join(sorted(plans.components))}, not for {wanted} "
                    "(build it again with  fastimg build FOLDER --rebuild, or remove "
                    "tensorrt.engines."
                    f"{key} from the manifest)"
                )
        tokenizers = {TOKENIZER_OF[e] for e in encoders}
        if "tokenizer_2" in tokenizers and self.tokenizer_2 is None:
            raise ValueError("text_encoder_2 is listed, but tokenizer_2 is missing")
        factor = self.vae_scale_factor
        if factor & (factor - 1):
            raise ValueError(f"vae_scale_factor {factor} is not a power of two")
        return self


def validate(data: Any, where: str, fix: str) -> EngineManifest:
    """The manifest as checked data; a ManifestError naming the first bad field otherwise."""
    if isinstance(data, dict):
        version = data.get("format_version")
        if (
            data.get("format") == FORMAT
            and isinstance(version, int)
            and not isinstance(version, bool)
            and version > FORMAT_VERSION
        ):
            raise ManifestError(
                f"{where} has format version {version}, newer than this fastimg reads "
                f"({FORMAT_VERSION}): upgrade fastimg, or {fix}"
            )
    try:
        return EngineManifest.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise ManifestError(
            f"{where}: {_describe(errors[0])}"
            + (f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else "")
            + f": {fix}"
        ) from None
    except RecursionError:
        raise ManifestError(f"{where} is nested too deeply to be a manifest: {fix}") from None


def serialise(data: dict, where: str, fix: str) -> str:
    """manifest.json's text for `data`, written from the checked model (keys as given, no
    NaN), so that nothing writes a manifest the runtime would refuse; a ManifestError else."""
    model = validate(data, where, fix)
    fields = model.model_dump(mode="json", exclude_unset=True)
    return json.dumps(fields, indent=2, allow_nan=False)


def _describe(error: dict) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "the top level"
    value = error.get("input")
    shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    if isinstance(value, float) and not math.isfinite(value):
        shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    message = re.sub(r"^Value error, ", "", error["msg"])
    if error["type"] == "missing":
        return f"field {field} is missing"
    return f"field {field} is invalid: {message} (it is {shown})"
