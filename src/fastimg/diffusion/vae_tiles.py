"""Tiled VAE decoding: the decoder run on overlapping latent tiles of one shape, blended
linearly across each overlap into the whole image (diffusers' AutoencoderKL.tiled_decode: a
quarter of a tile overlapped, a linear blend; here the tiles are spread evenly so that the
last one ends at the edge and every tile has the same shape).

A KL decoder's GroupNorm and its middle block's attention see one tile rather than the whole
image, so a tiled image differs from the whole one, the more the smaller the tiles (the bounds
measured are the README's, "Tiled VAE decoding"); TAESD has neither, and its tiles differ from
the whole only where a seam lies within a layer's reach.
"""

import math

import numpy as np

from ..engine_folder.manifest import Manifest
from ..errors import InputError
from ..settings import VAE_MIN_TILE

OVERLAP = 0.25  # of a tile, as diffusers' tile_overlap_factor


def check_tile_size(manifest: Manifest, size: int | None) -> None:
    """Refuse a vae_tile_size that is not a whole multiple of the VAE's scale factor."""
    factor = manifest.vae_scale_factor
    if size is not None and size % factor:
        lower = max(VAE_MIN_TILE, size // factor * factor)
        raise InputError(
            f"vae_tile_size must be a multiple of {factor} pixels (the VAE's scale factor), "
            f"got {size}: use {lower} or {lower + factor}"
        )


def tile_starts(length: int, tile: int) -> list[int]:
    """Where the tiles along a side of `length` latents begin: as few as overlap by at least
    OVERLAP of a `tile`, spread evenly from one edge to the other (one when it fits)."""
    if length <= tile:
        return [0]
    stride = tile - math.ceil(tile * OVERLAP)
    count = math.ceil((length - tile) / stride) + 1
    return [round(k * (length - tile) / (count - 1)) for k in range(count)]


def blend_weights(starts: list[int], tile: int, length: int) -> np.ndarray:
    """Each tile's weight along one side (tiles x `tile`): a linear ramp across each overlap
    with a neighbour, 1 elsewhere, normalized so that every position's weights sum to 1."""
    weights = np.zeros((len(starts), length), np.float64)
    position = np.arange(length) + 0.5
    for k, start in enumerate(starts):
        w = np.ones(length)
        if k > 0:
            w = np.minimum(w, (position - start) / (starts[k - 1] + tile - start))
        if k < len(starts) - 1:
            w = np.minimum(w, (start + tile - position) / (start + tile - starts[k + 1]))
        inside = (position > start) & (position < start + tile)
        weights[k] = np.where(inside, np.clip(w, 0.0, 1.0), 0.0)
    weights /= weights.sum(axis=0)
    return np.stack([weights[k, s : s + tile] for k, s in enumerate(starts)]).astype(np.float32)


def decode_tiled(session, latents, tile_size: int | None, factor: int, xp=np):
    """The decoder's `sample` for `latents` (NCHW, unscaled), run whole, or on tiles of
    `tile_size` pixels (`factor` pixels a latent) where the image is larger than one."""
    height, width = latents.shape[2:]
    tile = (tile_size or 0) // factor
    if not tile or (height <= tile and width <= tile):
        return session.run({"latent_sample": latents})["sample"]
    tile_h, tile_w = min(tile, height), min(tile, width)
    rows, cols = tile_starts(height, tile_h), tile_starts(width, tile_w)
    weight_h = blend_weights([r * factor for r in rows], tile_h * factor, height * factor)
    weight_w = blend_weights([c * factor for c in cols], tile_w * factor, width * factor)
    out = None
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            part = latents[:, :, top : top + tile_h, left : left + tile_w]
            pixels = session.run({"latent_sample": xp.ascontiguousarray(part)})["sample"]
            if out is None:
                out = xp.zeros((*pixels.shape[:2], height * factor, width * factor), np.float32)
            weight = xp.asarray(np.outer(weight_h[i], weight_w[j]))
            y, x = top * factor, left * factor
            out[:, :, y : y + tile_h * factor, x : x + tile_w * factor] += pixels * weight
    return out
