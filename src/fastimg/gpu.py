"""What CUDA GPU this machine has, asked of nvidia-smi or CuPy; never imports torch.

The list for reports comes from nvidia-smi (every GPU in the machine); the device a run uses and
its compute capability come from the CUDA runtime, which honours CUDA_VISIBLE_DEVICES.
"""

import functools
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    """One CUDA device as the driver reports it."""

    index: int
    name: str
    compute_capability: str  # "8.9"
    memory_mib: int
    driver: str


def _from_nvidia_smi() -> list[Gpu]:
    if shutil.which("nvidia-smi") is None:
        return []
    query = "index,name,compute_cap,memory.total,driver_version"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(out)


def parse_nvidia_smi(out: str) -> list[Gpu]:
    """GPUs from nvidia-smi's CSV (index, name, compute_cap, memory MiB, driver)."""
    gpus = []
    for line in out.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 5 or not fields[0].isdigit():
            continue
        index, name, capability, memory, driver = fields
        gpus.append(
            Gpu(
                int(index),
                name,
                capability,
                int(float(memory)) if memory[:1].isdigit() else 0,
                driver,
            )
        )
    return gpus


def _from_cupy() -> list[Gpu]:
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        driver = cupy.cuda.runtime.driverGetVersion()
    except Exception:  # no cupy, no driver, no device
        return []
    gpus = []
    for index in range(count):
        props = cupy.cuda.runtime.getDeviceProperties(index)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        gpus.append(
            Gpu(
                index,
                name,
                f"{props['major']}.{props['minor']}",
                int(props["totalGlobalMem"]) // 2**20,
                f"CUDA driver API {driver // 1000}.{driver % 1000 // 10}",
            )
        )
    return gpus


@functools.cache
def gpus() -> list[Gpu]:
    """The CUDA GPUs here (empty without a driver or device); asked once per process."""
    return _from_nvidia_smi() or _from_cupy()


def current_device(device: int | None = None) -> int:
    """The CUDA device to run on: `device`, else the runtime's current one (after
    CUDA_VISIBLE_DEVICES); raises EngineError naming the devices there are."""
    from .errors import EngineError, require

    cupy = require("cupy", "gpu")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # CuPy raises its own CUDARuntimeError without a driver or device
        count = 0
    if count == 0:
        raise EngineError(
            "no CUDA GPU is visible here (the CUDA runtime finds none): TensorRT and the CUDA "
            "backends need one; use --backend openvino or onnxruntime on the CPU"
        )
    if device is None:
        return int(cupy.cuda.runtime.getDevice())
    if not (isinstance(device, int) and 0 <= device < count):
        raise EngineError(
            f"there is no CUDA device {device!r} here: this process sees {count} "
            f"(0 to {count - 1}, after CUDA_VISIBLE_DEVICES); pass --device with one of them"
        )
    return device


def device_properties(device: int | None = None) -> tuple[str, str]:
    """(name, compute capability like '9.0') of the CUDA device fastimg runs on."""
    index = current_device(device)
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(index)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return name, f"{props['major']}.{props['minor']}"


def compute_capability(device: int | None = None) -> str:
    """Compute capability of the CUDA device fastimg runs on, asked of the CUDA runtime (which
    honours CUDA_VISIBLE_DEVICES, unlike nvidia-smi); raises EngineError without one."""
    return device_properties(device)[1]
