"""Running a small OpenVINO graph in fp32, for the tests of the graph rewrites."""

import numpy as np


def run_f32(model, feeds) -> list[np.ndarray]:
    """Every output of `model` compiled for the CPU in fp32, on `feeds`."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feeds)
    return [result[port] for port in compiled.outputs]
