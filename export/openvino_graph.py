"""The graph OpenVINO runs in fp32 and bf16: the exported one with its GroupNorms as per-channel
reductions (group_norm), written beside it and verified against PyTorch like it.

On a 2-core AMX Xeon the rewrite made sd15's VAE decoder and encoder at 512 about 9 % faster in
bf16, at the same PSNR against fp32 (bench/results/README.md, group-norm-probe). OpenVINO runs
it in fp32 and bf16, and for the components an int8 run keeps in bf16; the int8 graphs are still
quantized from the exported graph. ONNX Runtime and the GPU backends keep their own.
"""

from pathlib import Path

from . import verify
from .group_norm import reduce_group_norms

OPENVINO_GRAPH = "model.ov.onnx"


def write_openvino_graph(reference, dest: Path, tolerance: float, log) -> dict | None:
    """Write NAME/model.ov.onnx beside `dest` (NAME/model.onnx) where it has GroupNorms; its
    variant entry (path relative to NAME/), or None where there is nothing to rewrite or the
    rewritten graph does not pass (OpenVINO then runs the exported one)."""
    import onnx

    graph = onnx.load(str(dest), load_external_data=False)  # the weights stay where they are
    count = reduce_group_norms(graph, dest.parent)
    if count == 0:
        return None
    out = dest.with_name(OPENVINO_GRAPH)
    parity = verify.save_rewritten(reference, graph, out, tolerance)
    name = reference.name
    if not out.exists():
        log(
            f"  {name}: OpenVINO's rewritten graph differs from PyTorch "
            f"({parity['max_rel_error']:.3g}); OpenVINO will run the standard graph"
        )
        return None
    log(
        f"  {name}: OpenVINO's graph: GroupNorms as channel reductions {count}, relative error "
        f"{parity['max_rel_error']:.3g}"
    )
    data = sorted(
        {
            item.value
            for tensor in graph.graph.initializer
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for item in tensor.external_data
            if item.key == "location"
        }
    )
    # `data`: the exported graph's weights file it reads, named relative to NAME/ like `path`
    return {"path": out.name, "data": data, "group_norms": count, "parity": parity}
