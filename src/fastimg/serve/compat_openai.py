"""OpenAI's image edits (`client.images.edit` of every OpenAI SDK) over the same Service as
/v1/img2img, with OpenAI's bearer key and error shape.

    POST /v1/images/edits  multipart: the file `image`, `prompt`, `n`, `size` (WxH or auto),
                           `response_format` (b64_json), `output_format` (png, jpeg, webp),
                           `output_compression`, `model`, an optional `mask` (a PNG whose
                           transparent pixels are repainted); fastimg's settings (strength,
                           steps, guidance, seed, sampler, negative_prompt...) as extra fields.
                           Answers {"created", "data": [{"b64_json"}], "model", "size", ...}
    GET  /v1/models        the one model the server runs, as OpenAI lists models

Errors are {"error": {"message", "type", "param", "code"}} with the status /v1/img2img gives
(422 for a field, 401 for the key, 429 when busy...), which the SDKs raise as their own errors.
"""

import asyncio
import base64
import dataclasses
import io
import json
import re
import time
import warnings

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageOps
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ..errors import InputError
from ..media.images import MIN_SIDE
from .admission import authorized, check_length, check_pixels, limited, paced
from .compat_images import image_size, resized
from .requests import FIELDS, MAX_FIELD_BYTES, Body, Refusal
from .service import Service

OPENAI_EDITS = "/v1/images/edits"
# fastimg's fields that come as extra form fields (the others are OpenAI's own, renamed).
EXTRA_FIELDS = tuple(k for k in FIELDS if k not in ("image", "control_image", "prompt", "format",
                                                    "quality", "num_images"))  # fmt: skip
# OpenAI's fields, each to a fastimg field (None: read here).
OPENAI_FIELDS = {"prompt": "prompt", "n": "num_images", "output_format": "format",
                 "output_compression": "quality", "size": None, "response_format": None,
                 "model": None}  # fmt: skip
# OpenAI's fields at the values that change nothing here (any value: None); other values refused.
NEUTRAL = {"background": ("auto", "opaque"), "quality": ("auto",), "stream": ("false",),
           "partial_images": ("0",), "user": None, "safety_identifier": None}  # fmt: skip
TEXT_FIELDS = (*OPENAI_FIELDS, *NEUTRAL, *EXTRA_FIELDS)
FILES = ("image", "image[]", "mask")
ERROR_TYPES = {401: "invalid_request_error", 404: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 503: "server_error",
               504: "server_error"}  # fmt: skip
QUOTED = re.compile(r"'([\w\[\]]+)'")


def add_openai_routes(app: FastAPI, service: Service, answer) -> None:
    """/v1/images/edits and /v1/models on `app`; the edit runs through `answer`."""

    @app.post(OPENAI_EDITS)
    async def edits(request: Request) -> Response:
        """OpenAI's image edit: one image (and mask) in, `n` images out as base64."""
        refused = _unauthorized(service, request)
        if refused is not None:
            return refused

        async def work(deadline: float, run):
            """The edit read, checked and run: its response and its images."""
            o = service.options
            pace = (o.body_bytes_per_second, o.head_seconds, deadline)
            with service.admission.upload():
                form = await _read_form(request, o.max_upload_bytes, pace)
            _check_model(service, form.fields.get("model"))
            try:
                checked, size = await asyncio.to_thread(_checked, service, form)
            except InputError as exc:
                raise InputError(_openai_message(str(exc))) from None
            (result,) = await run([checked])
            return JSONResponse(_answer(service, checked, result, size)), result.encoded

        return openai_error(await answer(service, request, work))

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        """The one model this server runs (OpenAI's list shape)."""
        refused = _unauthorized(service, request)
        if refused is not None:
            return refused
        if service.pipe is None:
            return openai_error(Refusal(503, service.unavailable_reason()).response())
        model = {"id": _model(service), "object": "model", "created": 0, "owned_by": "fastimg"}
        return JSONResponse({"object": "list", "data": [model]})


def openai_error(response: Response) -> Response:
    """An error response ({"detail": message}) in OpenAI's shape, its status and headers kept."""
    if response.status_code < 400 or not response.body:
        return response
    message = str(json.loads(response.body).get("detail"))
    status = response.status_code
    code = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}.get(status)
    param = _param(message) if status in (400, 413, 422) else None
    kind = ERROR_TYPES.get(status, "invalid_request_error")
    error = {"message": message, "type": kind, "param": param, "code": code}
    kept = {k: v for k, v in response.headers.items() if k in ("retry-after", "www-authenticate")}
    return JSONResponse({"error": error}, status_code=status, headers=kept)


@dataclasses.dataclass(frozen=True)
class Form:
    """An edit's form: its text fields, the image's bytes and file name, the mask's bytes."""

    fields: dict
    data: bytes
    filename: str | None
    mask: bytes | None


def _unauthorized(service: Service, request: Request) -> Response | None:
    """401 in OpenAI's shape without the server's key (when it has one), counted."""
    key = service.options.api_key
    if not key or authorized(request.headers.get("authorization"), key):
        return None
    if request.url.path == OPENAI_EDITS:
        service.metrics.count("401")
    message = "missing or wrong API key: give the client the server's key (api_key=KEY)"
    headers = {"WWW-Authenticate": "Bearer"}
    return openai_error(Refusal(401, message, headers=headers).response())


def _model(service: Service) -> str:
    """The name of the model the server runs."""
    return str(service.pipe.model_info.get("fastimg:model"))


def _check_model(service: Service, model) -> None:
    """A model other than the one the server runs: 404, naming the one it runs."""
    if model not in (None, "", _model(service)):
        ours = _model(service)
        raise Refusal(404, f"the model {model!r} is not served here: this server runs {ours!r}; "
                      f"send model={ours!r} or leave it out")  # fmt: skip


async def _read_form(request: Request, limit: int, pace) -> Form:
    """The multipart form, read within the upload limit at the server's least rate."""
    check_length(request.headers.get("content-length"), limit)
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise Refusal(415, "send multipart/form-data: the file 'image', 'prompt' and the fields")
    body = limited(paced(request.stream(), *pace), limit)
    limits = dict(max_files=len(FILES), max_fields=len(TEXT_FIELDS), max_part_size=MAX_FIELD_BYTES)
    parser = MultiPartParser(request.headers, body, **limits)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise Refusal(400, f"the multipart body cannot be read: {exc.message}") from None
    try:
        fields, files = {}, {}
        for key, value in form.multi_items():
            if key in files or key in fields:
                raise InputError(f"the field {key!r} is given twice: give it once (one image)")
            if isinstance(value, UploadFile) != (key in FILES):
                what = "a file" if key in FILES else "text"
                raise InputError(f"the field {key!r} must be {what}")
            if key not in FILES and key not in TEXT_FIELDS:
                raise InputError(f"unknown field {key!r}: the fields are "
                                 f"{', '.join((*FILES[::2], *TEXT_FIELDS))}")  # fmt: skip
            (files if key in FILES else fields)[key] = value
        upload = files.get("image") or files.get("image[]")
        if upload is None or ("image" in files and "image[]" in files):
            raise InputError("send one picture as the file field 'image'")
        mask = files.get("mask")
        mask_data = None if mask is None else await mask.read()
        return Form(fields, await upload.read(), upload.filename or None, mask_data)
    finally:
        await form.close()


def _checked(service: Service, form: Form) -> tuple:
    """The edit as a checked fastimg request (resized to `size`, its mask made fastimg's: white
    repainted), and the size asked for (None: the image's own)."""
    fields = dict(form.fields)
    for key, allowed in NEUTRAL.items():
        value = fields.pop(key, None)
        if value is not None and allowed is not None and value.lower() not in allowed:
            raise InputError(f"{key}={value!r} is not supported by fastimg: send "
                             f"{' or '.join(allowed)}, or leave it out")  # fmt: skip
    response_format = fields.pop("response_format", None)
    if response_format not in (None, "b64_json"):
        raise InputError(f"response_format={response_format!r} is not supported: fastimg "
                         "answers the images themselves; send b64_json")  # fmt: skip
    fields.pop("model", None)
    size = _size(fields.pop("size", None))
    ours = {OPENAI_FIELDS.get(k) or k: v for k, v in fields.items()}
    if ours.get("format", "png") == "png":
        ours.pop("quality", None)  # (OpenAI's output_compression is for JPEG and WebP only)
    data = form.data
    if size is not None:
        data = resized(data, size, 0, service.options.max_pixels, "image")
    # the mask goes in as /v1/img2img's mask part, so that the mask's own settings (mask_blur,
    # masked_content, ...) sent as extra fields are checked with it, not refused as maskless
    mask = None if form.mask is None else _mask(form.mask, form.data, service.options.max_pixels)
    checked = service.check_request(Body(ours, data, form.filename, mask=mask))
    return dataclasses.replace(checked, size=service.image_size(checked)), size


def _size(text) -> tuple[int, int] | None:
    """OpenAI's size, WIDTHxHEIGHT (None: auto, the image's own)."""
    if text in (None, "", "auto"):
        return None
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", str(text).strip().lower())
    if match is None or min(int(match[1]), int(match[2])) < MIN_SIDE:
        raise InputError(f"size={text!r} is not a size: send WIDTHxHEIGHT such as 512x512 (each "
                         f"side at least {MIN_SIDE}), or auto for the image's own")  # fmt: skip
    return int(match[1]), int(match[2])


def _mask(data: bytes, image: bytes, max_pixels: int) -> bytes:
    """OpenAI's mask (transparent where the image is to be edited, at the image's size) as
    fastimg's, a PNG: white where it repaints, black where it keeps."""
    if check_pixels(data, "mask", max_pixels) is None:
        raise InputError("the mask is not an image: send a PNG whose transparent pixels mark "
                         "what to edit")  # fmt: skip
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as opened:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # (checked above)
            mask = ImageOps.exif_transpose(opened)
            transparent = "A" in mask.getbands() or "transparency" in mask.info
            alpha = mask.convert("RGBA").getchannel("A")
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"the mask cannot be read as an image ({exc}): send a PNG whose "
                         "transparent pixels mark what to edit") from None  # fmt: skip
    if not transparent:
        raise InputError("the mask has no transparency: send a PNG whose transparent "
                         "pixels (alpha 0) mark what to edit")  # fmt: skip
    with Image.open(io.BytesIO(image)) as source:
        wanted = ImageOps.exif_transpose(source).size
    if alpha.size != wanted:
        raise InputError(f"the mask is {alpha.width}x{alpha.height} but the image is "
                         f"{wanted[0]}x{wanted[1]}: send a mask of the image's size")  # fmt: skip
    out = io.BytesIO()
    alpha.point(lambda a: 255 if a == 0 else 0).save(out, format="PNG")
    return out.getvalue()


def _answer(service: Service, checked, result, size) -> dict:
    """OpenAI's ImagesResponse: the images as base64, the model, size and format."""
    width, height = image_size(result.encoded[0])
    return {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(data).decode("ascii")} for data in result.encoded],
        "model": _model(service),
        "size": f"{width}x{height}",
        "output_format": checked.fmt,
        "background": "opaque",
    }


def _openai_message(message: str) -> str:
    """A message of fastimg's checks with OpenAI's names for the fields it renamed."""
    for theirs, ours in OPENAI_FIELDS.items():
        if ours is not None and theirs != ours:
            message = message.replace(f"'{ours}'", f"'{theirs}'")
    return message


def _param(message: str) -> str | None:
    """The field a refusal names (OpenAI's `param`), where it names one."""
    unknown = re.match(r"unknown field '([^']+)'", message)
    if unknown:
        return unknown[1]
    for name in QUOTED.findall(message):
        if name in FILES or name in TEXT_FIELDS:
            return name
    for name in (*FILES, *TEXT_FIELDS):
        if re.match(rf"(the )?{re.escape(name)}\b", message):
            return name
    return None
