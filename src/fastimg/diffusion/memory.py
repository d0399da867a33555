"""How much memory a call's activations need, estimated from the manifest, and what fits.

The manifest's `memory` section gives, per component, coefficients recorded at export: one call
of `batch` images of H x W pixels needs about

    weights_factor * weight bytes + batch * (per_pixel * H * W + per_token_pair * T**2)

bytes beyond the loaded weights, T = (H / f) * (W / f): scratch set up per call, convolution
activations growing with the pixels, attention scores with the square of the latent tokens.
Where the backend runs attention fused (OpenVINO; ONNX Runtime on the MultiHeadAttention
variants) the scores are never held whole and the last term is left out. A ControlNet folder's
ControlNets and the UNet taking their residuals run per step at the UNet's batch and count as
components too (folders exported before they had coefficients: as the UNet). A call that cannot
fit in the memory free now is refused with the numbers before it starts; a large batch runs in
chunks of the images that fit, so it needs no more memory than a small one; and the largest
side the engines take follows from the same formula. A call decoding in tiles (vae_tile_size)
runs the VAE decoder on one tile at a time: its estimate is a tile's, plus the image it builds.
"""

from ..errors import InputError

# Of the memory free when a call starts, what its activations may use (the rest is headroom
# for the allocator's own rounding and for the process around it).
SHARE = 0.8
MAX_IMAGES_PER_CALL = 8
SIDE_STEP = 64
LARGEST_SIDE = 16_384
SUGGESTED_TILE = 512  # pixels a side: what the refusals offer (diffusers' VAE tile size)


def call_bytes(
    manifest,
    component: str,
    height: int,
    width: int,
    batch: int,
    fused: bool = False,
    scratch: str | None = None,
    variant: str | None = None,
) -> int | None:
    """Estimated activation bytes of one call of `component`; None without a memory model.

    `fused`: the backend runs attention without holding the scores; `scratch`: the graph
    variant (backends.graph_variant) in proportion to whose weights the backend sets up
    scratch memory per call (OpenVINO), None where it sets up none; `variant`: the graph
    variant the backend runs, whose Winograd convolutions hold more activations."""
    model = manifest.memory_model(component)
    if model is None:
        return None
    factor = manifest.vae_scale_factor
    tokens = (height // factor) * (width // factor)
    scores = 0 if fused else model.per_token_pair * tokens * tokens
    factor_of_weights = model.weights_factor if scratch is not None else 0.0
    held = (
        factor_of_weights * weight_bytes(manifest, component, scratch) if factor_of_weights else 0
    )
    per_pixel = model.per_pixel * activation_factor(manifest, component, variant)
    return int(held + batch * (per_pixel * height * width + scores))


def activation_factor(manifest, component: str, variant: str | None) -> float:
    """How many times the standard graph's activations the `variant` graph holds (its
    Winograd convolutions' transformed tiles); 1 for every other graph."""
    winograd = manifest.variant(component, variant).get("winograd", {})
    return float(winograd.get("activation_factor", 1.0))


def weight_bytes(manifest, component: str, variant: str | None = None) -> int:
    """Bytes of the files of the graph a backend loads for `component`: the variant's own
    (the int8 UNet) and the standard graph's data it reads (OpenVINO's graph) where the
    component has `variant`, else the standard graph's."""
    entry = manifest.components[component]
    files, variants = entry.get("files", {}), entry.get("variants", {})
    if variant in variants:
        chosen = {variants[variant].get("path"), variants[variant].get("weights")}
        chosen.update(variants[variant].get("data", []))
        return sum(files[rel]["bytes"] for rel in chosen if rel in files)
    others = {rel for v in variants.values() for rel in (v.get("path"), v.get("weights"))}
    return sum(
        item["bytes"]
        for rel, item in files.items()
        if rel not in others and not rel.endswith((".mha.onnx", ".ort.onnx"))
    )


def needs(
    manifest,
    height: int,
    width: int,
    images: int,
    cfg: bool,
    fused: frozenset = frozenset(),
    scratch: str | None = None,
    variant: str | None = None,
    *,
    tile: int | None = None,
) -> dict[str, int]:
    """Estimated bytes of each component's call when `images` images run per call (`fused`:
    the components whose attention the backend runs fused; `scratch`, `variant`: see
    call_bytes; `tile`: the decoder runs on tiles of that many pixels a side)."""
    unet_batch = images * (2 if cfg else 1)
    per_call = {"vae_encoder": 1, "unet": unet_batch, "vae_decoder": images}
    per_call.update(dict.fromkeys(manifest.control_components, unet_batch))
    estimates = {}
    for component, batch in per_call.items():
        fuses = component in fused
        h, w = (height, width) if component != "vae_decoder" else tiled(height, width, tile)
        estimate = call_bytes(manifest, component, h, w, batch, fuses, scratch, variant)
        if estimate is not None and (h, w) != (height, width):
            estimate += batch * 3 * height * width * 4  # the whole image the tiles blend into
        if estimate is None and component in manifest.control_components:
            # a ControlNet folder exported before its components had coefficients: the
            # UNet's (a ControlNet is its down half; the UNet taking residuals, the UNet)
            estimate = call_bytes(manifest, "unet", height, width, batch, fuses, scratch, variant)
        if estimate is not None:
            estimates[component] = estimate
    return estimates


def tiled(height: int, width: int, tile: int | None) -> tuple[int, int]:
    """The sides of the decoder's largest call when it decodes in tiles of `tile` pixels
    (the image's own where `tile` is None or the image fits in one)."""
    if not tile:
        return height, width
    return min(height, tile), min(width, tile)


def images_per_call(
    manifest,
    height: int,
    width: int,
    images: int,
    cfg: bool,
    free: int | None,
    fused: frozenset = frozenset(),
    scratch: str | None = None,
    variant: str | None = None,
    *,
    tile: int | None = None,
) -> int:
    """How many of `images` to run per engine call so that the call fits in `free` bytes
    (`tile`: see needs); an InputError with the numbers when not even one image fits."""
    cap = min(images, MAX_IMAGES_PER_CALL)
    one = needs(manifest, height, width, 1, cfg, fused, scratch, variant, tile=tile)
    if free is None or not one:
        return cap
    budget = free * SHARE
    component, need = max(one.items(), key=lambda item: item[1])
    if need > budget:
        side = largest_side(manifest, free, cfg, fused, scratch, variant, tile=tile)
        fix = f"use a smaller image, e.g. --size {side}" if side else "free some memory first"
        if component == "vae_decoder" and not tile:
            fix += tiles_hint(manifest, free, cfg, fused, scratch, variant, height, width)
        factor = activation_factor(manifest, component, variant)
        if factor > 1:  # ONNX Runtime's Winograd graphs: OpenVINO's standard ones hold less
            fix += f", or run it with --backend openvino (about {factor:g}x less here)"
        raise InputError(
            f"a {width}x{height} image needs about {need / 2**30:.1f} GiB for the "
            f"{component} (estimated), and {budget / 2**30:.1f} GiB are free for it here: {fix}"
        )
    fits = 1
    while (
        fits < cap
        and peak_bytes(manifest, height, width, fits + 1, cfg, fused, scratch, variant, tile=tile)
        <= budget
    ):
        fits += 1
    return fits


def largest_side(
    manifest,
    free: int | None,
    cfg: bool = True,
    fused: frozenset = frozenset(),
    scratch: str | None = None,
    variant: str | None = None,
    *,
    tile: int | None = None,
) -> int | None:
    """The longest side of a square image whose one-image call fits in `free` bytes (`tile`:
    see needs); None when it cannot be known, or not even the smallest fits now (each call
    checks again)."""
    kind = {"fused": fused, "scratch": scratch, "variant": variant, "tile": tile}
    if free is None or not needs(manifest, SIDE_STEP, SIDE_STEP, 1, cfg, **kind):
        return None
    budget = free * SHARE
    if peak_bytes(manifest, SIDE_STEP, SIDE_STEP, 1, cfg, **kind) > budget:
        return None
    side = SIDE_STEP
    while side < LARGEST_SIDE:
        bigger = side + SIDE_STEP
        if peak_bytes(manifest, bigger, bigger, 1, cfg, **kind) > budget:
            break
        side = bigger
    return side


def tiles_hint(manifest, free, cfg, fused, scratch, variant, height=0, width=0) -> str:
    """What decoding in SUGGESTED_TILE tiles would allow where the decoder is what does not
    fit: ", or decode in tiles ..." with the largest side it takes ("" where it gains nothing,
    or the `height` x `width` image would still not fit)."""
    tile = SUGGESTED_TILE - SUGGESTED_TILE % manifest.vae_scale_factor
    untiled = largest_side(manifest, free, cfg, fused, scratch, variant) or 0
    side = largest_side(manifest, free, cfg, fused, scratch, variant, tile=tile) or 0
    if side <= untiled or max(height, width) > side:
        return ""
    return (
        f", or decode the VAE in tiles, which takes sides up to {side} px here: "
        f"--vae-tile-size {tile}"
    )


def peak_bytes(
    manifest,
    height,
    width,
    images,
    cfg,
    fused=frozenset(),
    scratch=None,
    variant=None,
    *,
    tile: int | None = None,
) -> int:
    """The estimated bytes of the largest component call when `images` images run per call
    (`tile`: see needs; 0 without a memory model)."""
    estimates = needs(manifest, height, width, images, cfg, fused, scratch, variant, tile=tile)
    return max(estimates.values(), default=0)
