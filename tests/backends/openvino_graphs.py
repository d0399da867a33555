"""Running a small OpenVINO graph in fp32, for the tests of the graph rewrites."""

import numpy as np


def run_f32(model, feeds) -> list[np.ndarray]:
    """Every output of `model` compiled for the CPU in fp32, on `feeds`."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feeds)
    return [result[port] for port in compiled.outputs]


def compiled_layers(session) -> list[tuple[str, str]]:
    """(layer type, the graph's node names it runs) of each node of the model an OpenVinoSession
    holds, as OpenVINO compiled it."""
    with session._requests.lend() as request:
        runtime = request.get_compiled_model().get_runtime_model()
    return [
        (info["layerType"].astype(str), info["originalLayersNames"].astype(str))
        for info in (op.get_rt_info() for op in runtime.get_ops())
    ]
