"""Which of the UNet's int8 graphs the export keeps when both methods were written (auto),
and of unet_control's and the ControlNets' where they were quantized by both (int8_control).

Each method's graph is measured alone, as int8_choice measures the other components: its speed
against the UNet's default path and the image's PSNR against fp32's, the methods' graphs and the
default path timed in one run, in turn (int8_choice.time_graphs), so that neither method's ratio
carries a load or a default-path timing the other's did not. The faster among those at
or above the PSNR bound is kept; full int8 replaces the hybrid only where it is at least
`min_speedup` times the hybrid's speed (closer is the noise of a few runs, and the hybrid is the
more accurate as a rule); where neither reaches the bound, the hybrid is kept (--int8 asks for
an int8 UNet). The other's figures stay in the manifest, its files are deleted.
"""

import copy
from pathlib import Path

from fastimg.backends.registry import INT8_VARIANT
from fastimg.engine_folder.integrity import sha256

from .quantize import HYBRID_INT8, INT8_FILE


def choose_method(
    figures: dict[str, dict], min_psnr_db: float, min_speedup: float
) -> tuple[str, dict[str, str]]:
    """The UNet method kept among `figures` (method -> {'speed', 'image'} as measured alone),
    and why each method was kept or not."""

    def described(method: str) -> str:
        speed, psnr = figures[method]["speed"]["speed_ratio"], figures[method]["image"]["psnr_db"]
        return f"{method}: {speed:.2f}x the default path's speed, image {psnr:.1f} dB from fp32's"

    def ratio(method: str) -> float:
        return figures[method]["speed"]["speed_ratio"]

    passing = [m for m in figures if figures[m]["image"]["psnr_db"] >= min_psnr_db]
    if not passing:
        chosen = HYBRID_INT8 if HYBRID_INT8 in figures else next(iter(figures))
        why = f"no method reached the {min_psnr_db:g} dB bound; {chosen} kept"
        return chosen, {m: f"{'kept' if m == chosen else 'not kept'}: {why} ({described(m)})"
                        for m in figures}  # fmt: skip
    chosen = max(passing, key=ratio)
    if chosen != HYBRID_INT8 and HYBRID_INT8 in passing:
        if ratio(chosen) < min_speedup * ratio(HYBRID_INT8):
            chosen = HYBRID_INT8  # within the noise: the more accurate one
    reasons = {}
    for method in figures:
        if method == chosen:
            reasons[method] = (
                f"kept: the fastest at or above {min_psnr_db:g} dB ({described(method)})"
            )
        elif method not in passing:
            reasons[method] = (
                f"not kept: image under the {min_psnr_db:g} dB bound ({described(method)})"
            )
        elif ratio(method) > ratio(chosen):
            reasons[method] = (
                f"not kept: under {min_speedup:g}x the speed of {chosen}, whose image is closer "
                f"({described(method)})"
            )
        else:
            reasons[method] = f"not kept: slower than {chosen} ({described(method)})"
    return chosen, reasons


def candidates(data: dict, name: str = "unet") -> list[dict]:
    """Component `name`'s int8 variants written to be measured (its variant first), or []
    where one method was written."""
    variant = data["components"][name].get("variants", {}).get(INT8_VARIANT)
    if variant is None or not variant.get("candidates"):
        return []
    return [{k: v for k, v in variant.items() if k != "candidates"}, *variant["candidates"]]


def with_variant(data: dict, name: str, variant: dict) -> dict:
    """A copy of the manifest `data` whose component `name` has `variant` as its int8 variant."""
    data = copy.copy(data)
    data["components"] = {**data["components"], name: copy.deepcopy(data["components"][name])}
    data["components"][name]["variants"][INT8_VARIANT] = variant
    return data


def keep_method(
    folder: Path, data: dict, chosen: str, measured: dict, reasons: dict, name: str = "unet"
) -> None:
    """Make component `name`'s `chosen` method's graph its int8 variant, at NAME/INT8_FILE;
    record the others' figures (`measured`, `reasons`) in its 'int8_alternatives' and delete
    their files."""
    entry = data["components"][name]
    written = candidates(data, name)
    kept = next(v for v in written if v["quantization"]["method"] == chosen)
    alternatives = []
    for variant in written:
        method = variant["quantization"]["method"]
        variant["quantization"].update(measured[method], reason=reasons[method])
        if variant is kept:
            continue
        alternatives.append({**variant["quantization"], "chosen": False})
        for rel in (variant["path"], variant["weights"]):
            entry["files"].pop(rel, None)
            (folder / rel).unlink(missing_ok=True)
    if kept["path"] != f"{name}/{INT8_FILE}":
        renamed = {"path": f"{name}/{INT8_FILE}", "weights": f"{name}/{Path(INT8_FILE).stem}.bin"}
        for key, rel in renamed.items():
            entry["files"].pop(kept[key])
            (folder / kept[key]).replace(folder / rel)
            target = folder / rel
            entry["files"][rel] = {"bytes": target.stat().st_size, "sha256": sha256(target)}
        kept = {**kept, **renamed}
    entry["variants"][INT8_VARIANT] = kept
    entry["int8_alternatives"] = alternatives
