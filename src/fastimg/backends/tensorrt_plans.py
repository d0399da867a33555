"""Which TensorRT plans of an engine folder fit this machine, by engine key.

A plan runs only on the TensorRT release and GPU architecture it was built with, for the
shapes of its profile and in its precision, and it is what the builder made of one graph at
one optimization level: all of these make up its key, and the manifest lists the plans under
those keys. A request picks its plan set by size, batch and precision. Nothing here imports
TensorRT, so it is tested without a GPU.
"""

from dataclasses import dataclass

from ..engine_folder.manifest import Manifest
from ..engine_folder.profiles import Profile
from ..errors import EngineError

PRECISIONS = ("fp16", "fp32")


def trt_release(version: str) -> str:
    """'10.13.0.35' -> '10.13.0': TensorRT runs plans only from the release that built them."""
    return ".".join(version.split(".")[:3])


def engine_key(
    trt_version: str,
    capability: str,
    profile: Profile,
    precision: str,
    vae_precision: str,
    opt_level: int = 3,
    graph: str = "",
) -> str:
    """The name a set of plans is stored and looked up under (`graph`: the ONNX files' digest)."""
    sm = capability.replace(".", "")
    return (
        f"trt{trt_release(trt_version)}_sm{sm}_{precision}_vae{vae_precision}_o{opt_level}"
        f"_g{graph[:10]}_{profile.key()}"
    )


class NoFittingPlans(EngineError):
    """Plans exist for this TensorRT and GPU, but none for the request's size or precision."""


@dataclass(frozen=True)
class PlanSet:
    """The plans of one key: paths per component, their profile and precisions."""

    key: str
    paths: dict
    profile: Profile
    precision: str
    vae_precision: str


def find_plans(
    manifest: Manifest,
    trt_version: str,
    capability: str,
    height: int | None = None,
    width: int | None = None,
    batch: int = 1,
    precision: str | None = None,
) -> PlanSet:
    """The plan set built for this TensorRT and GPU whose profile admits the request.

    `height`/`width` None: any size; `precision` None: any precision. Raises EngineError
    (NoFittingPlans where only the size or precision is wrong) naming what was found and the
    `fastimg build` command that fixes it.
    """
    sets = manifest.plan_sets
    here = f"TensorRT {trt_release(trt_version)} on a GPU of compute capability {capability}"
    build = f"fastimg build {manifest.folder}"
    if not sets:
        raise EngineError(f"{manifest.folder} has no TensorRT engines: build them with  {build}")
    graph = manifest.graph_digest()
    current = {k: e for k, e in sets.items() if e.get("graph_sha256") == graph}
    if not current:
        lacking = [c for c in manifest.runtime_components
                   if any(c not in e["components"] for e in sets.values())]  # fmt: skip
        if lacking:
            raise EngineError(
                f"the TensorRT engines in {manifest.folder} have no plans for "
                f"{', '.join(lacking)} (built by a fastimg that did not build them): rebuild "
                f"with  {build} --rebuild"
            )
        raise EngineError(
            f"the TensorRT engines in {manifest.folder} were built from other graphs than the "
            f"ONNX files there now (exported again since?): rebuild with  {build} --rebuild"
        )
    matching = {
        key: entry
        for key, entry in current.items()
        if trt_release(entry["tensorrt"]) == trt_release(trt_version)
        and entry["compute_capability"] == capability
    }
    if not matching:
        found = "; ".join(
            f"TensorRT {trt_release(e['tensorrt'])} on compute capability {e['compute_capability']}"
            for e in current.values()
        )
        raise EngineError(
            f"the TensorRT engines in {manifest.folder} were built for {found}, not for {here}; "
            f"TensorRT cannot run them here: rebuild with  {build}"
        )
    if precision is not None:
        built = sorted({e["precision"] for e in matching.values()})
        matching = {k: e for k, e in matching.items() if e["precision"] == precision}
        if not matching:
            raise NoFittingPlans(
                f"the TensorRT engines in {manifest.folder} are {', '.join(built)}, not "
                f"{precision}: build {precision} ones with  {build} --precision {precision}"
            )
    for key, entry in matching.items():
        profile = Profile.from_dict(entry["profile"])
        if height is None or profile.admits(height, width, batch):
            return PlanSet(
                key,
                {c: manifest.folder / p["path"] for c, p in entry["components"].items()},
                profile,
                entry["precision"],
                entry["vae_precision"],
            )
    ranges = "; ".join(f"{Profile.from_dict(e['profile']).key()}" for e in matching.values())
    raise NoFittingPlans(
        f"a {width}x{height} image, {batch} per call, is outside every TensorRT profile built "
        f"in {manifest.folder} ({ranges}): build one that covers it, e.g.  {build} "
        f"--height {height} --width {width}"
    )
