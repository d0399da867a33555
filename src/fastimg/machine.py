"""What this machine is, as fastimg needs to know it: CPU model and features, cores, packages."""

import functools
import hashlib
import os
import platform

CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def package_version(package: str) -> str | None:
    """The installed version of a distribution, or None."""
    from importlib.metadata import PackageNotFoundError, version  # (slow to import: 20 ms)

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def module_version(module: str) -> str | None:
    """The version of the distribution that provides an importable module (cupy from
    cupy-cuda13x, say) with that distribution's name where it differs, or None."""
    from importlib.metadata import packages_distributions

    for dist in packages_distributions().get(module, []):
        found = package_version(dist)
        if found is not None:
            return found if dist == module else f"{found} ({dist})"
    return package_version(module)


@functools.cache
def cpu_info() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and feature flags (from /proc/cpuinfo where there is one)."""
    name, flags = platform.processor() or "unknown CPU", ()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().splitlines()
        name = next((ln.split(":", 1)[1].strip() for ln in info if "model name" in ln), name)
        flags = tuple(
            next((ln.split(":", 1)[1].split() for ln in info if ln.startswith("flags")), [])
        )
    except OSError:
        pass
    return name, flags


def cpu_identity() -> str:
    """The CPU model and a digest of its feature flags: what compiled CPU kernels depend on."""
    name, flags = cpu_info()
    digest = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:12]
    return f"{name} {platform.machine()} flags:{digest}"


def available_cores() -> int:
    """Cores this process may run on (affinity- and container-aware where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_summary() -> str:
    """CPU model, cores available and the vector features that matter for inference."""
    name, flags = cpu_info()
    features = ", ".join(f for f in CPU_FEATURES if f in flags) or "none detected"
    return f"{name}, {available_cores()} cores available; {features}"


def machine_record() -> dict:
    """The machine as benchmark records name it: the CPU's model, the cores used, its
    instruction sets, and the GPUs where there are any."""
    from .gpu import gpus

    name, flags = cpu_info()
    record = {
        "cpu": name,
        "cores": available_cores(),
        "features": [f for f in CPU_FEATURES if f in flags],
    }
    found = gpus()
    if found:
        record["gpus"] = [
            f"{g.name}, compute capability {g.compute_capability}, {g.memory_mib} MiB, "
            f"driver {g.driver}"
            for g in found
        ]
    return record


def free_bytes(device: str = "cpu") -> int | None:
    """Memory free for activations now: MemAvailable on Linux (what this process has freed
    counts once handed back: return_freed_memory), the GPU's free memory on CUDA; None where
    it cannot be known."""
    if device.startswith("cuda"):
        try:
            import cupy

            return int(cupy.cuda.runtime.memGetInfo()[0])
        except Exception:  # no CuPy or no driver: nothing to go by
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def return_freed_memory() -> None:
    """Hand the memory this process has freed back to the system. glibc keeps freed heap
    pages for reuse, so after engines are dropped (ONNX Runtime's SDXL: 7.5 of its 14.5 GiB)
    the system sees them as taken until malloc_trim; elsewhere this does nothing."""
    import ctypes
    import ctypes.util

    global _trim
    if _trim is None:
        name = ctypes.util.find_library("c")
        try:
            _trim = getattr(ctypes.CDLL(name), "malloc_trim", False) if name else False
        except OSError:
            _trim = False
    if _trim:
        _trim(0)


_trim = None  # glibc's malloc_trim once looked up; False where there is none
