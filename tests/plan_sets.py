"""Stand-in TensorRT plan sets listed in an engine folder's manifest, for tests without a GPU."""

import hashlib
import json
from pathlib import Path

from fastimg.backends.tensorrt_plans import engine_key
from fastimg.engine_folder.manifest import Manifest
from fastimg.engine_folder.profiles import Profile


def write_plan_sets(
    engines: Path, sets: list[tuple[Profile, str, str]], trt: str = "10.13.0"
) -> list[str]:
    """List a plan set per (profile, compute capability, precision) in `engines`' manifest,
    with small stand-in plan files; return their keys in order."""
    data = json.loads((engines / "manifest.json").read_text())
    manifest = Manifest.from_data(engines, data)
    graph = manifest.graph_digest()
    listed, keys = {}, []
    for k, (profile, capability, precision) in enumerate(sets):
        key = engine_key(trt, capability, profile, precision, "fp32", 3, f"{k:010d}")
        components = {}
        for component in manifest.runtime_components:  # (ControlNets, depth model too)
            rel = f"tensorrt/{key}/{component}.plan"
            (engines / rel).parent.mkdir(parents=True, exist_ok=True)
            (engines / rel).write_bytes(b"plan")
            digest = hashlib.sha256(b"plan").hexdigest()
            components[component] = {"path": rel, "files": {rel: {"bytes": 4, "sha256": digest}}}
        listed[key] = {
            "tensorrt": trt,
            "compute_capability": capability,
            "precision": precision,
            "vae_precision": "fp32",
            "profile": profile.to_dict(),
            "components": components,
            "graph_sha256": graph,
        }
        keys.append(key)
    data["tensorrt"] = {"engines": listed}
    (engines / "manifest.json").write_text(json.dumps(data))
    return keys
