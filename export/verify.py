"""Check an exported graph against the PyTorch module it came from, on random inputs."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import onnx_export

# Largest allowed max|onnx - torch| / max|torch| over all outputs.
TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2}

# A batch and latent size other than the traced ones, so dynamic axes are exercised too.
CHECK_SHAPES = [(onnx_export.TRACE_BATCH, onnx_export.TRACE_LATENT), (1, (8, 10))]


@dataclass(frozen=True)
class Reference:
    """The module's outputs on CHECK_SHAPES' inputs, kept so that its weights can be freed
    before the exported graph is loaded to be checked."""

    name: str
    cases: list  # (inputs as NumPy arrays in the graph's input order, outputs as NumPy arrays)


def reference(pipe, name: str, module) -> Reference:
    """Run `module` on random inputs of every CHECK_SHAPES entry and keep what it returned."""
    import torch

    cases = []
    for batch, latent_hw in CHECK_SHAPES:
        inputs = onnx_export.sample_inputs(pipe, name, batch, latent_hw, seed=1)
        with torch.no_grad():
            expected = module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        cases.append(([t.numpy() for t in inputs], [t.numpy() for t in expected]))
    return Reference(name, cases)


def compare(ref: Reference, model_path: Path) -> dict:
    """Errors of the ONNX graph at `model_path` against the reference outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Pre-packing copies the weights; a check run does not need it, and SDXL's UNet is 10 GB.
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    max_abs = max_rel = 0.0
    for inputs, expected in ref.cases:
        got = session.run(None, dict(zip(names, inputs, strict=True)))
        for want, out in zip(expected, got, strict=True):
            if out.shape != want.shape:
                raise RuntimeError(f"{ref.name}: ONNX output {out.shape} != torch {want.shape}")
            err = float(np.abs(out.astype(np.float64) - want).max())
            max_abs = max(max_abs, err)
            max_rel = max(max_rel, err / max(float(np.abs(want).max()), 1e-12))
    return {
        "max_abs_error": max_abs,
        "max_rel_error": max_rel,
        "shapes": [[b, *hw] for b, hw in CHECK_SHAPES],
    }


def save_rewritten(ref: Reference, graph, path: Path, tolerance: float) -> dict:
    """Save the rewritten ONNX `graph` at `path` and compare it with the reference outputs;
    where its relative error exceeds `tolerance` the file is removed again. The errors."""
    import onnx

    onnx.save(graph, str(path))
    parity = compare(ref, path)
    if not parity["max_rel_error"] <= tolerance:
        path.unlink()
    return parity
