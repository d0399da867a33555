"""Check an exported graph against the PyTorch module it came from, on random inputs."""

from pathlib import Path

import numpy as np

from . import onnx_export

# Largest allowed max|onnx - torch| / max|torch| over all outputs.
TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2}

# A batch and latent size other than the traced ones, so dynamic axes are exercised too.
CHECK_SHAPES = [(onnx_export.TRACE_BATCH, onnx_export.TRACE_LATENT), (1, (8, 10))]


def compare(pipe, name: str, module, model_path: Path) -> dict:
    """Errors of the ONNX graph at `model_path` against `module` over CHECK_SHAPES."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    max_abs = max_rel = 0.0
    for batch, latent_hw in CHECK_SHAPES:
        inputs = onnx_export.sample_inputs(pipe, name, batch, latent_hw, seed=1)
        with torch.no_grad():
            expected = module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})
        for ref, out in zip(expected, got, strict=True):
            ref = ref.numpy()
            if out.shape != ref.shape:
                raise RuntimeError(f"{name}: ONNX output {out.shape} != torch {ref.shape}")
            err = float(np.abs(out.astype(np.float64) - ref).max())
            max_abs = max(max_abs, err)
            max_rel = max(max_rel, err / max(float(np.abs(ref).max()), 1e-12))
    return {
        "max_abs_error": max_abs,
        "max_rel_error": max_rel,
        "shapes": [[b, *hw] for b, hw in CHECK_SHAPES],
    }
