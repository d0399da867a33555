"""The graph OpenVINO compiles for each call's exact shapes (--shapes static or auto): the
exported one with its GroupNorms as per-channel reductions (group_norm), written beside it and
verified against PyTorch like it.

On a 2-core AMX Xeon, sd15 at 512 in bf16 with static shapes, the rewrite made the VAE decoder
1.12x, the encoder 1.08x and the UNet 1.03x as fast at the same PSNR against fp32; compiled for
dynamic shapes the VAEs were 0.96-0.99x (bench/results/README.md, group-norm-probe), so dynamic
shapes keep the exported graph. It also serves the components an int8 run keeps in bf16, with
static shapes, and a kept int8 VAE graph is quantized from it again for static shapes where
that pays (int8_static).
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
