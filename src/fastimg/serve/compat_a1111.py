"""A1111's API (stable-diffusion-webui's /sdapi/v1), spoken by Krita and Photoshop plugins,
chat bots and the `webuiapi` client, over the same Service as /v1/img2img.

    POST /sdapi/v1/img2img     JSON as A1111 takes it (compat_a1111_fields; a mask,
                               ControlNet units: compat_a1111_control); answers
                               {"images": [base64 PNG], "parameters": {...}, "info": "JSON"}
    GET  /sdapi/v1/samplers    A1111's names of the samplers fastimg runs
    GET  /sdapi/v1/schedulers  the schedulers those take
    GET  /sdapi/v1/sd-models   the one model the server runs
    GET  /sdapi/v1/options     what clients read (the model); POST: only what it already is
    GET  /sdapi/v1/progress    A1111's progress shape: the requests running and waiting, the
                               newest run's UNet step
    POST /sdapi/v1/interrupt   stops the A1111 requests in flight at their next step; each
                               answers with the images it had finished
    GET  /sdapi/v1/scripts     none (clients probe it for extensions)
    GET  /sdapi/v1/loras: the LoRAs serve --lora loaded (prompts name them: <lora:NAME:SCALE>)
    GET  /sdapi/v1/upscalers, sd-vae, embeddings, ...: empty (fastimg has none)
    any other /sdapi/v1 route  404 naming those above (txt2img, upscalers... are not served)
    GET  /controlnet/version, model_list, module_list: the ControlNet extension's info routes
                               (the folder's ControlNets; the modules a unit may send here);
                               its others (detect, ...) 404 naming these

An img2img request passes the same admission, deadline, metrics, key and labels as
/v1/img2img (app.answer); its images are /v1/img2img's with the same settings and seed.
"""

import asyncio
import base64
import dataclasses
import json
import threading
import time

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from ..errors import InputError
from ..media.labels import parameters_text
from ..media.vocabulary import version
from .admission import (
    Expired,
    SlowUpload,
    TooLarge,
    authorized,
    check_length,
    check_pixels,
    limited,
    paced,
)
from .compat_a1111_control import (
    API_VERSION,
    SCRIPT,
    check_unit_size,
    check_units,
    controlnet_names,
    module_list,
    unit_fields,
    unit_image,
)
from .compat_a1111_fields import (
    A1111_NAMES,
    A1111Request,
    a1111_message,
    decode_base64,
    read_request,
    sampler_list,
)
from .compat_images import a1111_mask, image_size, resized
from .requests import Body, Refusal
from .service import Service

A1111_IMG2IMG = "/sdapi/v1/img2img"
PREFIX = "/sdapi/v1"
OPTIONS_BYTES = 64 << 10  # the most a POST /sdapi/v1/options body may hold
# Listings plugins read at start-up of what fastimg has none of (upscalers, VAEs apart from the
# engines' own, hypernetworks, LoRA files, embeddings, styles, face restorers), in A1111's shapes.
NONE_HERE = {"upscalers": [], "latent-upscale-modes": [], "sd-vae": [], "hypernetworks": [],
             "face-restorers": [], "realesrgan-models": [], "prompt-styles": [],
             "embeddings": {"loaded": {}, "skipped": {}}}  # fmt: skip


def add_a1111_routes(app: FastAPI, service: Service, answer) -> None:
    """The /sdapi/v1 routes on `app`, behind the server's key; img2img through `answer`."""
    guarded = [Depends(_authorize(service))]
    interrupts: set[threading.Event] = set()  # the stop flags of A1111 requests in flight

    @app.post(A1111_IMG2IMG, dependencies=guarded)
    async def img2img(request: Request) -> Response:
        """A1111's img2img: one image in, batch_size x n_iter out (each with its own seed)."""

        async def work(deadline: float, run):
            """The A1111 request read, checked and run: its response and its images."""
            o = service.options
            with service.admission.upload():
                pace = (o.body_bytes_per_second, o.head_seconds, deadline)
                payload = await _read_json(request, o.max_upload_bytes, pace)
            try:
                read = read_request(payload, model_title(service),
                                    o.workers + o.max_queue)  # fmt: skip
                checked = await asyncio.to_thread(_checked, service, read)
            except InputError as exc:
                raise InputError(a1111_message(str(exc))) from None
            interrupt = threading.Event()
            interrupts.add(interrupt)
            try:
                results = await run(checked, interrupt)
            finally:
                interrupts.discard(interrupt)
            done = [result for result in results if result is not None]
            encoded = [result.encoded[0] for result in done]
            return JSONResponse(_answer(service, read, done, encoded)), encoded

        return await answer(service, request, work)

    @app.get(f"{PREFIX}/samplers", dependencies=guarded)
    async def samplers() -> Response:
        """A1111's names of the samplers fastimg runs."""
        return JSONResponse(sampler_list())

    @app.get(f"{PREFIX}/schedulers", dependencies=guarded)
    async def schedulers() -> Response:
        """The schedulers the samplers take (automatic: each sampler's own)."""
        return JSONResponse([
            {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1,
             "need_inner_model": False},
            {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0,
             "need_inner_model": False},
        ])  # fmt: skip

    @app.get(f"{PREFIX}/sd-models", dependencies=guarded)
    async def sd_models() -> Response:
        """The one model this server runs, as A1111 lists a checkpoint."""
        if service.pipe is None:
            return _unavailable(service)
        name, short, sha = _model(service)
        return JSONResponse([{"title": model_title(service), "model_name": name, "hash": short,
                              "sha256": sha, "filename": str(service.options.engines or name),
                              "config": None}])  # fmt: skip

    @app.get(f"{PREFIX}/options", dependencies=guarded)
    async def options() -> Response:
        """The options clients read: the model, the output format, the etas the samplers run."""
        if service.pipe is None:
            return _unavailable(service)
        return JSONResponse(_options(service))

    @app.post(f"{PREFIX}/options", dependencies=guarded)
    async def set_options(request: Request) -> Response:
        """Options can only be set to what they are (one model, loaded once): 422 otherwise."""
        if service.pipe is None:
            return _unavailable(service)
        o = service.options
        deadline = asyncio.get_running_loop().time() + min(o.timeout, o.head_seconds)
        try:  # (a small body, read at the server's least upload rate)
            pace = (o.body_bytes_per_second, o.head_seconds, deadline)
            wanted = await _read_json(request, OPTIONS_BYTES, pace)
        except Refusal as exc:
            return exc.response()
        except TooLarge as exc:
            return Refusal(413, str(exc)).response()
        except (SlowUpload, Expired):
            return Refusal(408, "the options came too slowly: send them at once").response()
        current = _options(service)
        for key, value in (wanted if isinstance(wanted, dict) else {"": wanted}).items():
            if current.get(key, object()) != value and not (
                key == "sd_model_checkpoint" and value == _model(service)[0]
            ):
                return Refusal(422, f"option {key!r} cannot be set to {value!r} on fastimg: "
                               f"it runs {current.get(key)!r}").response()  # fmt: skip
        return JSONResponse(None)

    @app.get(f"{PREFIX}/progress", dependencies=guarded)
    async def progress() -> Response:
        """A1111's progress shape: the requests running or waiting, and the UNet step of the
        newest run (progress: its fraction of the steps; no ETA, no preview image)."""
        admission = service.admission
        jobs = admission.running + admission.waiting
        step, steps = (service.last_step or (0, 0)) if admission.running else (0, 0)
        state = {"skipped": False, "interrupted": False, "stopping_generation": False,
                 "job": "img2img" if jobs else "", "job_count": jobs,
                 "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "job_no": 0,
                 "sampling_step": step, "sampling_steps": steps}  # fmt: skip
        return JSONResponse({"progress": step / steps if steps else 0.0, "eta_relative": 0.0,
                             "state": state, "current_image": None, "textinfo": None})  # fmt: skip

    @app.post(f"{PREFIX}/interrupt", dependencies=guarded)
    async def interrupt() -> Response:
        """Stop the A1111 requests in flight at their next step."""
        for flag in list(interrupts):
            flag.set()
        return JSONResponse(None)

    @app.get(f"{PREFIX}/scripts", dependencies=guarded)
    async def scripts() -> Response:
        """No scripts (clients look here for extensions such as ControlNet)."""
        return JSONResponse({"txt2img": [], "img2img": []})

    for path, empty in NONE_HERE.items():
        _add_empty_listing(app, path, empty, guarded)

    @app.get(f"{PREFIX}/loras", dependencies=guarded)
    async def loras() -> Response:
        """The LoRAs the server loaded (serve --lora), which prompts name as <lora:NAME:SCALE>."""
        pipe = service.pipe
        loaded = {} if pipe is None else pipe.loras.adapters.loras
        listed = [{"name": name, "alias": name, "path": lora.path.name, "metadata": {}}
                  for name, lora in sorted(loaded.items())]  # fmt: skip
        return JSONResponse(listed)

    _add_controlnet_routes(app, service, guarded)
    served = sorted(route.path for route in app.routes if route.path.startswith(PREFIX))

    @app.api_route(PREFIX + "/{rest:path}", methods=["GET", "POST"], dependencies=guarded)
    async def elsewhere(rest: str) -> Response:
        """Any other A1111 route (txt2img, upscalers...): 404 naming the ones served."""
        return Refusal(404, f"fastimg does not serve {PREFIX}/{rest}: it transforms images "
                       f"(img2img); it serves {', '.join(served)}").response()  # fmt: skip


def _add_controlnet_routes(app: FastAPI, service: Service, guarded: list) -> None:
    """The ControlNet extension's info routes, as its clients read them."""

    @app.get(f"/{SCRIPT}/version", dependencies=guarded)
    async def controlnet_version() -> Response:
        """The extension's API version the units are read in."""
        return JSONResponse({"version": API_VERSION})

    @app.get(f"/{SCRIPT}/model_list", dependencies=guarded)
    async def controlnet_models() -> Response:
        """The engine folder's ControlNets, in the order the enabled units steer them."""
        if service.pipe is None:
            return _unavailable(service)
        return JSONResponse({"model_list": controlnet_names(service.pipe.manifest)})

    @app.get(f"/{SCRIPT}/module_list", dependencies=guarded)
    async def controlnet_modules() -> Response:
        """The modules a unit may send (the depth ones where the folder has a depth model)."""
        if service.pipe is None:
            return _unavailable(service)
        return JSONResponse({"module_list": module_list(service.pipe.manifest)})

    served = sorted(route.path for route in app.routes if route.path.startswith(f"/{SCRIPT}/"))

    @app.api_route(f"/{SCRIPT}/{{rest:path}}", methods=["GET", "POST"], dependencies=guarded)
    async def controlnet_elsewhere(rest: str) -> Response:
        """Any other route of the extension (detect, settings...): 404 naming the ones served."""
        return Refusal(404, f"fastimg does not serve /{SCRIPT}/{rest}: its ControlNets run as "
                       "units of /sdapi/v1/img2img; it serves "
                       f"{', '.join(served)}").response()  # fmt: skip


def _add_empty_listing(app: FastAPI, path: str, empty, guarded: list) -> None:
    """GET /sdapi/v1/`path`: the empty listing of something fastimg has none of."""

    async def listing() -> Response:
        """None here: an empty listing in A1111's shape."""
        return JSONResponse(empty)

    app.add_api_route(f"{PREFIX}/{path}", listing, methods=["GET"], dependencies=guarded)


def _authorize(service: Service):
    """The routes' guard: 401 without the server's key, as a bearer token or as the password of
    HTTP Basic (A1111's --api-auth, which plugins and webuiapi send; any user name)."""

    async def authorize(request: Request) -> None:
        """401 without the key (when the server has one); counted for img2img."""
        key, header = service.options.api_key, request.headers.get("authorization")
        if not key or authorized(header, key) or _basic(header, key):
            return
        if request.url.path == A1111_IMG2IMG:
            service.metrics.count("401")
        raise HTTPException(
            401,
            "missing or wrong API key: send  Authorization: Bearer KEY, or the key as the "
            "password of the A1111 server's user (--api-auth; any user name)",
            headers={"WWW-Authenticate": 'Basic realm="fastimg"'},
        )

    return authorize


def _basic(header: str | None, key: str) -> bool:
    """Whether an Authorization header is HTTP Basic with `key` as its password."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")[2]
    except (ValueError, UnicodeDecodeError):
        return False
    return authorized(f"Bearer {password}", key)


def model_title(service: Service) -> str:
    """The model as A1111 titles a checkpoint: 'name [hash]'."""
    name, short, _ = _model(service)
    return f"{name} [{short}]"


def _model(service: Service) -> tuple[str, str, str]:
    """(name, short hash, long hash) of the model the server runs."""
    info = service.pipe.model_info
    long = service.pipe.manifest.graph_digest(("unet",))
    return str(info.get("fastimg:model")), str(info.get("fastimg:model_hash")), long


def _options(service: Service) -> dict:
    """The A1111 options that say what this server does."""
    return {"sd_model_checkpoint": model_title(service), "sd_checkpoint_hash": _model(service)[2],
            "samples_format": "png", "eta_ddim": 0.0, "eta_ancestral": 1.0,
            "img2img_fix_steps": False, "upscaler_for_img2img": None,
            "CLIP_stop_at_last_layers": 1}  # fmt: skip


def _unavailable(service: Service) -> Response:
    """503 with why the engines are not there (loading, failed, stopping)."""
    return JSONResponse({"detail": service.unavailable_reason()}, status_code=503)


async def _read_json(request: Request, limit: int, pace):
    """The JSON body, read within the upload limit at the server's least rate."""
    check_length(request.headers.get("content-length"), limit)
    raw = b"".join([chunk async for chunk in limited(paced(request.stream(), *pace), limit)])
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Refusal(400, f"the body is not valid JSON: {exc}") from None


def _checked(service: Service, read: A1111Request) -> list:
    """The request's image resized as A1111 does, and one checked fastimg request per image
    (each with its own seed), within the server's limits for all of them together."""
    data = resized(read.data, read.size, read.resize_mode, service.options.max_pixels)
    mask = None
    if read.mask is not None:
        mask = a1111_mask(read.mask, read.size, read.resize_mode, service.options.max_pixels)
    fields, control = read.fields, None
    if read.control:
        control = _controls(service, read.control, data)  # (the image as sent: unfilled)
        fields = {**fields, **unit_fields(read.control)}
    first = service.check_request(Body(fields, data, None, control))
    size = service.image_size(first)
    first = dataclasses.replace(first, size=size)
    if mask is not None:  # (size None: a masked request runs alone, never batched)
        call = first.job.call.with_values(mask_image=mask, mask_invert=read.mask_invert,
                                          **read.mask_call)  # fmt: skip
        first = dataclasses.replace(_with_call(first, call), size=None)
    if len(read.seeds) > 1:  # the cost and response bytes of all of them
        call = first.job.call.with_values(num_images_per_prompt=len(read.seeds))
        service.image_size(_with_call(first, call))
    return [first] + [_with_call(first, first.job.call.with_values(seed=s)) for s in read.seeds[1:]]


def _controls(service: Service, units: tuple, data: bytes) -> bytes | tuple[bytes, ...]:
    """The ControlNet units' images (the init image's for a unit without one), one per
    ControlNet in order, checked against the image and the engines' ControlNets."""
    check_units(units, service.pipe.manifest)
    controls = []
    for unit in units:
        control = unit_image(unit, decode_base64) or data
        name = f"the ControlNet unit {unit.index}'s image"
        control_size = check_pixels(control, name, service.options.max_pixels)
        if control_size is None:
            raise InputError(f"{name} is not an image: send a PNG or JPEG as base64")
        check_unit_size(unit, control_size, image_size(data))
        controls.append(control)
    return controls[0] if len(controls) == 1 else tuple(controls)


def _with_call(request, call):
    """`request` with its job's call settings replaced."""
    return dataclasses.replace(request, job=dataclasses.replace(request.job, call=call))


def _answer(service: Service, read: A1111Request, results: list, encoded: list) -> dict:
    """A1111's answer: the images (base64 PNG), the request's parameters, and `info` (a JSON
    string: the seeds, prompts and infotexts)."""
    width, height = read.size
    settings = [result.settings for result in results]
    infotexts = [
        parameters_text(s, image_size(data)) for s, data in zip(settings, encoded, strict=True)
    ]
    seeds = [s["fastimg:seed"] for s in settings] or read.seeds
    prompt, negative = read.given.get("prompt", ""), read.given.get("negative_prompt", "")
    first = settings[0] if settings else {}
    info = {
        "prompt": prompt, "all_prompts": [prompt] * len(seeds),
        "negative_prompt": negative, "all_negative_prompts": [negative] * len(seeds),
        "seed": seeds[0], "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(seeds),
        "subseed_strength": 0, "width": width, "height": height,
        "sampler_name": A1111_NAMES.get(first.get("fastimg:scheduler")),
        "cfg_scale": read.given.get("cfg_scale"), "steps": read.given.get("steps"),
        "batch_size": read.given.get("batch_size"), "restore_faces": False,
        "face_restoration_model": None, "sd_model_name": first.get("fastimg:model"),
        "sd_model_hash": first.get("fastimg:model_hash"),
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": read.given.get("denoising_strength"),
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": infotexts,
        "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1,
        "is_using_inpainting_conditioning": service.pipe.manifest.inpainting,
        "version": f"fastimg {version()}",
        "interrupted": len(results) < len(read.seeds),
    }  # fmt: skip
    images = [base64.b64encode(data).decode("ascii") for data in encoded]
    return {"images": images if read.send_images else [], "parameters": read.given,
            "info": json.dumps(info)}  # fmt: skip
