"""A stream frame's ControlNet and mask on the stage path: every frame in flight is one row of
the UNet batch at its own step, so each row gets its own frame's control image and mask.

ControlNet: each ControlNet runs once per UNet call over the rows it steers at that step, one
row per frame-stage with its frame's control image; a row's scale is its frame's
controlnet_conditioning_scale x diffusers' controlnet_keep at the row's step index (the
control_guidance_start..end window), and rows outside their window get zero residuals (the
ControlNet does not run on them). The ControlNet runs at scale 1 and each row is multiplied by
its own scale after (the graph takes one scale; diffusers multiplies the residuals by it
likewise). Every UNet row gets its frame's residuals, the negative rows of plain CFG and of
RCFG "onetime" too, as diffusers feeds the ControlNet both halves of its CFG batch and
StreamDiffusion's ControlNet forks feed it their whole UNet batch (RCFG "self" has no
negative row).

Mask: each frame in flight has its own MaskRun (diffusion.masks): an inpainting UNet's row is
[latents, mask, masked image latents], a plain UNet's kept region is put back after each of its
frame's steps with that step's noise.
"""

import numpy as np

from ..diffusion.control import CONTROLNET_INPUTS, Control, keep
from ..errors import EngineError


def row_scales(controls: list[Control | None], stages: list[int], steps: int) -> list[list]:
    """Per ControlNet, each row's scale x controlnet_keep at the row's step (0 for a row
    without a control, or past its frame's ControlNets)."""
    count = max((len(c.pixels) for c in controls if c is not None), default=0)
    scales = []
    for k in range(count):
        per_row = []
        for control, stage in zip(controls, stages, strict=True):
            if control is None or k >= len(control.pixels):
                per_row.append(0.0)
                continue
            kept = keep(steps, control.start[k], control.end[k])[stage]
            per_row.append(control.scale[k] * kept)
        scales.append(per_row)
    return scales


def control_session(engines, manifest, controls: list, stages: list[int], steps: int, feeds,
                    plain):  # fmt: skip
    """The UNet session for a batch of rows (row r: `controls[r]` at step `stages[r]`), with
    the ControlNets' residuals added to `feeds`; `plain` where no row is steered."""
    scales = row_scales(controls, stages, steps)
    if not any(any(row) for row in scales):
        return plain
    spec = manifest.control
    names = [c["component"] for c in spec["controlnets"]][: len(scales)]
    missing = [n for n in (*names, spec["unet"]) if n not in engines.sessions]
    if missing:
        raise EngineError(
            f"the {engines.backend} backend has not loaded {', '.join(missing)}: it does not "
            "run ControlNets yet; run with --backend onnxruntime or openvino"
        )
    xp = engines.xp
    inputs = {name: feeds[name] for name in CONTROLNET_INPUTS if name in feeds}
    # (an inpainting UNet takes [latents, mask, masked image]; a ControlNet the latents)
    inputs["sample"] = inputs["sample"][:, : manifest.latent_channels]
    one = xp.asarray(np.ones(1, dtype=np.float32))
    summed = None
    for k, (name, per_row) in enumerate(zip(names, scales, strict=True)):
        rows = [r for r, scale in enumerate(per_row) if scale != 0]
        if not rows:
            continue
        picked = xp.asarray(np.array(rows))
        cond = xp.asarray(np.concatenate([controls[r].pixels[k] for r in rows]))
        taken = {key: value[picked] for key, value in inputs.items()}
        out = engines.sessions[name].run({**taken, "controlnet_cond": cond,
                                          "conditioning_scale": one})  # fmt: skip
        scale = xp.asarray(np.array([per_row[r] for r in rows], dtype=np.float32))
        full = {}
        for key, value in out.items():
            spread = xp.zeros((len(per_row), *value.shape[1:]), dtype=value.dtype)
            spread[picked] = value * scale.reshape(-1, *([1] * (value.ndim - 1)))
            full[key] = spread
        summed = full if summed is None else {key: summed[key] + v for key, v in full.items()}
    feeds.update(summed)
    return engines.sessions[spec["unet"]]
