"""What this machine is, as fastimg needs to know it: CPU model and features, cores, packages."""

import functools
import hashlib
import os
import platform
from importlib.metadata import PackageNotFoundError, version

CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def package_version(package: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


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
    """The CPU as benchmark records name it: its model, the cores used, its instruction sets."""
    name, flags = cpu_info()
    return {
        "cpu": name,
        "cores": available_cores(),
        "features": [f for f in CPU_FEATURES if f in flags],
    }
