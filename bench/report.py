"""A benchmark record as a terminal table, a JSON file and a PNG chart."""

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .stages import CONTROLNET, STAGES

COLOURS = {
    "text_encoder": (120, 170, 220),
    "vae_encoder": (90, 180, 120),
    "unet": (230, 150, 60),
    "vae_decoder": (170, 110, 200),
    CONTROLNET: (220, 90, 90),  # (a job with a ControlNet only)
    "overhead": (150, 150, 150),
}


def _fmt(value, pattern: str, missing: str = "-") -> str:
    return missing if value is None else pattern.format(value)


def table(record: dict) -> str:
    """The readable summary: one row per side, stages in seconds, ratios against diffusers."""
    job = record["job"]
    head = (
        f"{Path(record['model']).name} {job['size']}x{job['size']}, {job['sampler']}, "
        f"{job['steps']} steps at strength {job['strength']} ({job['unet_calls']} UNet calls), "
        f"guidance {job['guidance']}, seed {job['seed']}, {job.get('batch', 1)} image(s) per "
        f"call, VAE {Path(job['vae']).name if job.get('vae') else 'the model own'}; "
        f"{record['machine']['cores']} cores, "
        f"median of {record['repeats']} after {record['warmup']} warm-up"
    )
    columns = (
        f"{'side':<34}{'median s':>9}{'min-max':>14}{'img/s':>7}{'speedup':>8}"
        f"{'text':>7}{'vae enc':>8}{'unet':>7}{'vae dec':>8}{'ovh %':>7}"
        f"{'cold s':>8}{'RSS MB':>8}{'PSNR dB':>8}{'maxdiff':>8}{'vs fp32':>8}"
    )
    rows = [head, columns]
    for name, s in record["sides"].items():
        st = s["stages_median_seconds"]
        cold = s.get("cold_start") or {}
        fid = s.get("vs_diffusers") or {}
        rows.append(
            f"{name:<34}{s['median_seconds']:>9.2f}"
            f"{s['min_seconds']:>7.2f}-{s['max_seconds']:<6.2f}{s['images_per_second']:>7.3f}"
            f"{_fmt(s.get('speedup_vs_diffusers'), '{:.2f}x'):>8}"
            f"{st['text_encoder']:>7.2f}{st['vae_encoder']:>8.2f}{st['unet']:>7.2f}"
            f"{st['vae_decoder']:>8.2f}{100 * s['overhead_fraction']:>7.2f}"
            f"{_fmt(cold.get('seconds'), '{:.1f}'):>8}{_fmt(cold.get('peak_rss_mb'), '{:.0f}'):>8}"
            f"{_fmt(fid.get('psnr_db'), '{:.1f}'):>8}{_fmt(fid.get('max_pixel_diff'), '{}'):>8}"
            f"{_fmt((s.get('vs_fastimg_fp32') or {}).get('psnr_db'), '{:.1f}'):>8}"
        )
    for name, s in record["sides"].items():  # (the table's columns have no room for it)
        if CONTROLNET in s["stages_median_seconds"]:
            rows.append(
                f"{name}: the ControlNet took {s['stages_median_seconds'][CONTROLNET]:.2f} s"
            )
    rows += _peer_rows(record)
    for label, reason in (record.get("failed_sides") or {}).items():
        rows.append(f"not measured: {label}: {reason}")
    if record.get("sides_loaded") == "one at a time":
        rows.append("the sides did not fit in memory together: each ran alone, one after another")
    rows.append(f"importing the runtime: {record['import_runtime_seconds']:.3f} s")
    if "stage_gflop" in record:
        rows += _roofline_rows(record)
    return "\n".join(rows)


def _peer_rows(record: dict) -> list[str]:
    """fastimg against each peer (ratio of medians), and the peers' cold starts uncached."""
    rows = []
    for name, side in record["sides"].items():
        for peer, ratio in (side.get("speedup_vs_peers") or {}).items():
            rows.append(f"{name} is {ratio:.2f}x {peer}")
    for name, side in record["sides"].items():
        uncached = side.get("cold_start_uncached")
        if uncached and "seconds" in uncached:
            rows.append(f"{name}: cold start {uncached['seconds']:.1f} s with nothing compiled")
    return rows


def _roofline_rows(record: dict) -> list[str]:
    peaks = record["matmul_peak_gflop_per_s"]
    gflop = record["stage_gflop"]
    rows = [
        "",
        "matmul peak here: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
        + "; stage GFLOP: "
        + ", ".join(f"{k} {v:.0f}" for k, v in gflop.items()),
        f"{'GFLOP/s (share of peak)':<34}" + "".join(f"{stage:>18}" for stage in STAGES),
    ]
    for name, side in record["sides"].items():
        if "roofline" not in side:
            continue
        cells = []
        for stage in STAGES:
            r = side["roofline"][stage]
            rate, share = r["gflop_per_s"], r["fraction_of_peak"]
            cells.append("-" if rate is None else f"{rate:.0f} ({100 * share:.0f}%)")
        rows.append(f"{name:<34}" + "".join(f"{c:>18}" for c in cells))
    best = record["best_possible_seconds"]
    ref = record["sides"]["diffusers"]["median_seconds"]
    rows.append(
        "at 100% of the peak the job would take "
        + ", ".join(f"{s:.2f} s in {k} ({ref / s:.2f}x diffusers)" for k, s in best.items())
    )
    return rows


def chart(record: dict, path: Path) -> None:
    """Horizontal bars per side, split into stages, labelled with seconds and speed-up."""
    sides = record["sides"]
    longest = max(s["median_seconds"] for s in sides.values())
    width, left, bar_h, gap, top = 1000, 230, 34, 18, 60
    height = top + len(sides) * (bar_h + gap) + 60
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    job = record["job"]
    draw.text(
        (10, 10),
        f"{Path(record['model']).name} img2img {job['size']}x{job['size']}, {job['steps']} steps "
        f"x strength {job['strength']}, guidance {job['guidance']}: median seconds per image "
        "(lower is better)",
        fill="black",
        font=font,
    )
    scale = (width - left - 140) / longest
    for row, (name, s) in enumerate(sides.items()):
        y = top + row * (bar_h + gap)
        draw.text((10, y + bar_h // 3), name, fill="black", font=font)
        x = left
        for stage in (*STAGES, CONTROLNET, "overhead"):
            w = max(0.0, s["stages_median_seconds"].get(stage, 0.0)) * scale
            draw.rectangle([x, y, x + w, y + bar_h], fill=COLOURS[stage])
            x += w
        label = f"{s['median_seconds']:.2f} s"
        if "speedup_vs_diffusers" in s:
            label += f"  {s['speedup_vs_diffusers']:.2f}x"
        draw.text((x + 8, y + bar_h // 3), label, fill="black", font=font)
    y = height - 35
    x = 10
    controlled = any(CONTROLNET in s["stages_median_seconds"] for s in sides.values())
    for stage, colour in COLOURS.items():
        if stage == CONTROLNET and not controlled:
            continue
        draw.rectangle([x, y, x + 14, y + 14], fill=colour)
        draw.text((x + 20, y + 2), stage.replace("_", " "), fill="black", font=font)
        x += 140
    img.save(path)


def save(record: dict, stem: Path, command: str, images: bool = False) -> list[Path]:
    """Write STEM.json (with the command) and STEM.png (chart); each side's image if asked."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path = stem.parent / f"{stem.name}.json"
    png_path = stem.parent / f"{stem.name}.png"
    data = {"command": command, **{k: v for k, v in record.items() if k != "images"}}
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    chart(record, png_path)
    written = [json_path, png_path]
    for name, image in record["images"].items() if images else ():
        written.append(stem.parent / f"{stem.name}.{name.replace(' ', '-')}.png")
        image.save(written[-1])
    return written
