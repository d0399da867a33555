"""A depth model for control_preprocess depth: transformers' DPTForDepthEstimation (Intel/dpt-large,
what diffusers' depth ControlNet examples run through pipeline("depth-estimation")) exported as
the engine folder's `depth` component and verified against PyTorch like the others, with the
manifest's `depth` entry saying how its input is made (DPTImageProcessor's size, mean and std).
`fastimg make-model tiny-depth` writes a random-weight one for tests.

Only processors that resize to one fixed size (keep_aspect_ratio false, DPT's default) are
taken, so the graph has one input shape on every backend.
"""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np

from fastimg.errors import EngineError, InputError

from . import onnx_export, verify
from .loading import quiet_hub_logging

COMPONENT = "depth"
INPUT, OUTPUT = "pixel_values", "predicted_depth"
# A DPT of the real layout (4 ViT layers read by the neck, a fusion stage, the depth head), tiny.
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "image_size": 64,
    "patch_size": 16,
    "backbone_out_indices": [0, 1, 2, 3],
    "neck_hidden_sizes": [8, 16, 32, 64],
    "fusion_hidden_size": 16,
    "head_hidden_size": 8,
}
RESAMPLE = {3: "bicubic", 2: "bilinear"}  # PIL's numbers, as preprocessor_config.json has them


def load_depth_model(source: str):
    """(DPTForDepthEstimation, its DPTImageProcessor's settings) from a folder or hub id."""
    from fastimg.errors import require

    require("transformers", "export")
    import transformers
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    quiet_hub_logging()
    path = Path(source)
    if path.exists():
        try:
            kind = json.loads((path / "config.json").read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind != "dpt":
            raise InputError(
                f"{source} is not a DPT depth model folder (its config.json names "
                f"{kind or 'no model_type dpt'}): pass a folder written by "
                "DPTForDepthEstimation.save_pretrained, or a hub id such as Intel/dpt-large"
            )
    elif path.suffix or source.startswith((".", "/", "~")):
        raise InputError(f"depth model {source} does not exist: check the path")
    try:
        model = transformers.DPTForDepthEstimation.from_pretrained(source).eval()
        processor = DPTImageProcessorPil.from_pretrained(source)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise InputError(
            f"the depth model {source} cannot be loaded ({first}): pass a DPT depth model "
            "(DPTForDepthEstimation) folder or hub id, e.g. Intel/dpt-large"
        ) from None
    return model, _preprocess_entry(processor, source)


def _preprocess_entry(processor, source: str) -> dict:
    """How the runtime makes the model's input, as DPTImageProcessor makes it."""
    if processor.keep_aspect_ratio or processor.do_pad or not processor.do_resize:
        raise InputError(
            f"the depth model {source} resizes its input keeping the aspect ratio or padding it; "
            "fastimg takes depth models whose processor resizes to one fixed size (DPT's "
            "default, as Intel/dpt-large's): pass one of those"
        )
    resample = RESAMPLE.get(int(processor.resample))
    if resample is None:
        raise InputError(f"the depth model {source} resizes with PIL filter "
                         f"{processor.resample}: fastimg takes bicubic or bilinear")  # fmt: skip
    size = processor.size
    return {
        "size": [int(size["height"]), int(size["width"])],
        "resample": resample,
        "rescale_factor": float(processor.rescale_factor) if processor.do_rescale else 1.0,
        "mean": [float(v) for v in processor.image_mean] if processor.do_normalize else [0.0] * 3,
        "std": [float(v) for v in processor.image_std] if processor.do_normalize else [1.0] * 3,
    }


def export_depth(source: str, staging: Path, log, cuda_fp16: bool = False) -> tuple[dict, dict]:
    """Export the depth model `source` into `staging`/depth, verified against PyTorch (and in
    fp16 for ONNX Runtime CUDA too, with `cuda_fp16`): (its component entry, the manifest's
    `depth` entry)."""
    import torch

    from .engine_writer import add_cuda_fp16_graph, file_entries

    log(f"loading the depth model {source}")
    model, preprocess = load_depth_model(source)
    height, width = preprocess["size"]
    shape = [1, 3, height, width]

    class Depth(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).predicted_depth

    module = Depth(model).eval()
    log(f"exporting {COMPONENT} (fp32)")
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(*shape, generator=generator)
    with torch.no_grad():
        expected = module(sample)
    scratch = staging / ".raw"
    scratch.mkdir(parents=True, exist_ok=True)
    raw = scratch / "model.onnx"
    # (the tracer's warnings concern its internals, not the user, as for the other components)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (sample,), str(raw), input_names=[INPUT], output_names=[OUTPUT],
                          opset_version=onnx_export.OPSET, do_constant_folding=True,
                          dynamo=False)  # fmt: skip
    dest = staging / COMPONENT / "model.onnx"
    files = onnx_export.save_model(raw, dest, fp16=False)
    shutil.rmtree(scratch)
    reference = verify.Reference(COMPONENT, [([sample.numpy()], [expected.numpy()])])
    parity = verify.compare(reference, dest)
    parity["shapes"] = [shape]
    parity["tolerance"] = verify.TOLERANCE["fp32"]
    log(f"  {COMPONENT}: max abs error {parity['max_abs_error']:.3g}, relative "
        f"{parity['max_rel_error']:.3g}")  # fmt: skip
    if not parity["max_rel_error"] <= parity["tolerance"]:
        raise EngineError(
            f"the depth model exported to ONNX differs from PyTorch: relative error "
            f"{parity['max_rel_error']:.3g} exceeds {parity['tolerance']:g}; no engine was written"
        )
    out_shape = [1, *expected.shape[1:]]
    component = {
        "path": f"{COMPONENT}/model.onnx",
        "precision": "fp32",
        "files": file_entries(staging, files),
        "inputs": {INPUT: {"dtype": "float32", "shape": shape}},
        "outputs": {OUTPUT: {"dtype": "float32", "shape": out_shape}},
        "parity": parity,
    }
    if cuda_fp16:
        add_cuda_fp16_graph(None, COMPONENT, reference, dest, component, staging, log)
    return component, {"component": COMPONENT, "source": str(source), **preprocess}


def write_random_depth(out: Path, seed: int = 0) -> Path:
    """A random-weight DPTForDepthEstimation of the TINY layout and its processor (64 x 64,
    DPT's defaults otherwise) in folder `out`."""
    import torch
    import transformers
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    torch.manual_seed(seed)
    model = transformers.DPTForDepthEstimation(transformers.DPTConfig(**TINY)).eval()
    with torch.no_grad():  # a head whose output varies over the image (ReLU'd random weights
        for parameter in model.head.parameters():  # can be flat zeros)
            parameter.add_(torch.from_numpy(np.full(parameter.shape, 0.05, np.float32)))
    model.save_pretrained(out)
    size = TINY["image_size"]
    DPTImageProcessorPil(size={"height": size, "width": size}).save_pretrained(out)
    return out
