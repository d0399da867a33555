"""What every bench record says about where it was made: the machine and the versions."""

import json
import platform

RUNTIME_PACKAGES = ("fastimg", "onnxruntime", "openvino", "numpy")


def machine() -> dict:
    """The CPU (model, cores, vector features), memory and GPUs, as records name them."""
    from fastimg.machine import machine_record

    return machine_record()


def versions(*packages: str) -> dict:
    """Python's version and each installed package's, of fastimg's runtime and `packages`."""
    from fastimg.machine import package_version

    wanted = dict.fromkeys((*RUNTIME_PACKAGES, *packages))
    found = {p: v for p in wanted if (v := package_version(p)) is not None}
    return {"python": platform.python_version(), **found}


def save(record: dict, path) -> None:
    """Write `record` to `path` as indented JSON, one line at the end."""
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
