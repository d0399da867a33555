import subprocess
import sys
from pathlib import Path


def start_export(model, out, until: str, hang: bool = False) -> subprocess.Popen:
    """Export `model` to `out` in a new process; return once it prints a line starting `until`
    (with `hang`, the export then stops right there, inside its log call, until it is killed:
    no race with how fast the rest of the export runs)."""
    code = (
        "import time\n"
        "from fastimg_export.engine_writer import export_engines\n"
        "def log(message):\n"
        "    print(message, flush=True)\n"
        f"    if {hang!r} and message.startswith({until!r}):\n"
        "        time.sleep(3600)\n"
        f"export_engines({str(model)!r}, {str(out)!r}, log=log)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    for line in proc.stdout:
        if line.startswith(until):
            break
    return proc


def split_projection_pairs(graph_path: Path) -> int:
    """How many projections the OpenVINO graph at `graph_path` runs as a MatMul per slice
    (openvino_rewrites.split_projections' names), checking that each comes as a pair."""
    import openvino as ov

    names = [
        op.get_friendly_name()
        for op in ov.Core().read_model(str(graph_path)).get_ops()
        if op.get_type_name() == "MatMul" and "/columns_" in op.get_friendly_name()
    ]
    projections = {name.rsplit("/columns_", 1)[0] for name in names}
    assert len(names) == 2 * len(projections), names  # GEGLU's value and gate halves
    return len(projections)


def sliced_projections(onnx_path: Path) -> int:
    """How many sliced projections (GEGLU's) the float graph at `onnx_path` has."""
    import openvino as ov

    from fastimg.backends.openvino_rewrites import split_projections

    return split_projections(ov.Core().read_model(str(onnx_path)))
