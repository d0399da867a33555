"""An img2img request read and checked: its body within the upload limit, its fields parsed as
fastimg.settings defines them (the HTTP field of each setting is its `key`), its image kept as
bytes until a worker decodes it.

The fields are the call settings (SETTINGS: a setting added there is a field here), plus the
`image`, the ControlNet's `control_image` and the inpainting `mask` (more files, or base64 in
JSON, checked and decoded as the image is), `mask_invert` and `keep_unmasked` (true or false),
and how the result is encoded (`format`, `quality`). Several ControlNets: `control_image` once
per ControlNet in their order (repeated file parts, or a JSON list of base64 texts), and the
control settings one value for all or one each (`1.0;0.5`, or a JSON list). Values arrive as
text (multipart) or JSON and are refused with the CLI's wording: "Invalid value for
'strength': 1.5 is not in the range 0<x<=1."
"""

import base64
import binascii
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.websockets import WebSocketDisconnect

from ..engine_folder.schema import MAX_CONTROLNETS
from ..errors import InputError
from ..settings import (
    BY_KEY,
    FORMAT,
    FORMATS,
    QUALITY,
    SEED_LIMIT,
    SETTINGS,
    from_fields,
    parse_flag,
)
from ..workflows import runner
from ..workflows.jobs import Job
from ..workflows.sources import Source
from .admission import check_length, limited, paced

# How the result of one request is encoded (not call settings).
OUTPUT_FIELDS = {FORMAT.key: FORMAT, QUALITY.key: QUALITY}
FILES = ("image", "control_image", "mask")  # the fields that carry an image
MAX_FILES = len(FILES) + MAX_CONTROLNETS - 1  # (control_image: one per ControlNet)
MASK_FLAGS = ("mask_invert", "keep_unmasked")  # true or false
FIELDS = ("image", *(setting.key for setting in SETTINGS), *OUTPUT_FIELDS, "control_image",
          "mask", *MASK_FLAGS)  # fmt: skip
SDXL_FIELDS = tuple(setting.key for setting in SETTINGS if setting.sdxl)
# The stream's settings: a request's fields less its images and the shape of its output (one
# JPEG per frame); its one mask and its fixed control images (base64) go with every frame.
STREAM_FIELDS = tuple(key for key in FIELDS if key not in ("image", "format", "num_images"))
MAX_FIELD_BYTES = 1 << 20  # a text field of a multipart body (prompts are 20,000 chars at most)
UNSAFE_NAME_CHARS = re.compile(r"[^\w.-]")


class Refusal(Exception):
    """A request answered with an error status and {"detail": message}."""

    def __init__(self, status: int, message: str, outcome: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.outcome, self.headers = status, outcome or str(status), headers

    def response(self) -> Response:
        """The JSON error response: {"detail": message} with the status and headers."""
        return JSONResponse({"detail": str(self)}, status_code=self.status, headers=self.headers)


@dataclass(frozen=True)
class Body:
    """A request body as sent: its fields (text or JSON values), the image's bytes, the
    uploaded file's own name (None for JSON), the control image's and the mask's bytes (None:
    none sent)."""

    fields: dict
    data: bytes
    filename: str | None
    control: bytes | tuple[bytes, ...] | None = None  # (several: one per ControlNet)
    mask: bytes | None = None


@dataclass(frozen=True)
class ImageRequest:
    """A checked request: its job, the image bytes, and how to encode the result; `control`,
    the control image's bytes (its job's control_image until a worker decodes them); `mask`,
    the mask's, likewise."""

    job: Job
    sampler: str
    data: bytes
    name: str  # a safe name for the image, used in messages
    source: str | None  # the uploaded file's name, labelled into the outputs
    fmt: str
    quality: int | None
    unet_steps: int = 0  # the UNet steps a call runs (strength x the scheduled steps)
    size: tuple[int, int] | None = None  # (width, height) from the image's header
    control: bytes | tuple[bytes, ...] | None = None
    mask: bytes | None = None

    @property
    def controls(self) -> tuple[bytes, ...]:
        """The control images' bytes, one per ControlNet in their order (() for none)."""
        return control_tuple(self.control)

    @property
    def batch_key(self) -> tuple | None:
        """What requests run in one batch share (their prompts, seeds and images differ);
        None for a request that runs alone (several images, or a size not known yet)."""
        job = self.job
        call = job.call
        if self.size is None or call.num_images_per_prompt != 1:
            return None
        control = (len(self.controls), call.control_preprocess,
                   call.controlnet_conditioning_scale, call.control_guidance_start,
                   call.control_guidance_end)  # fmt: skip
        mask = (self.mask is not None, call.padding_mask_crop is not None)
        return (self.size, self.sampler, call.num_inference_steps, call.strength,
                call.guidance_scale, control, mask)  # fmt: skip


async def read_body(request: Request, limit: int, pace=None) -> Body:
    """The request's fields and image, read within `limit` bytes: multipart/form-data (the
    file `image`) or application/json (`image` as base64); `pace` (rate, grace, deadline) drops
    an upload that comes too slowly or past the request's deadline (admission.paced)."""
    check_length(request.headers.get("content-length"), limit)
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    chunks = request.stream() if pace is None else paced(request.stream(), *pace)
    body = limited(chunks, limit)
    if kind == "multipart/form-data":
        return await _read_multipart(request, body)
    if kind == "application/json":
        return _read_json(b"".join([chunk async for chunk in body]))
    raise Refusal(
        415,
        "send multipart/form-data (the file `image` and the fields) or "
        "application/json (`image` as base64 and the fields)",
    )


def check_body(body: Body, manifest) -> ImageRequest:
    """The body's fields parsed and checked against the engines of `manifest`, as the CLI
    checks its options; a missing seed is drawn here."""
    unknown = [key for key in body.fields if key not in FIELDS]
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r}: the fields are {', '.join(FIELDS)}")
    fields = dict(body.fields)
    flags = {name: parse_flag(fields.pop(name), name) for name in MASK_FLAGS
             if fields.get(name) is not None}  # fmt: skip
    values = {key: _parse(key, value) for key, value in fields.items() if value is not None}
    if "prompt" not in values:
        raise InputError("prompt is required: what the image should become")
    fmt = values.pop(FORMAT.key, "png")
    quality = values.pop(QUALITY.key, None)
    settings = from_fields(values, parse=False).with_values(**flags)
    if settings.seed is None:
        settings = settings.with_values(seed=secrets.randbelow(SEED_LIMIT))
    settings = settings.with_values(negative_prompt=settings.negative_prompt or None)
    if body.control is not None:  # (checked as given; the worker decodes it)
        settings = settings.with_values(control_image=body.control)
    if body.mask is not None:  # (likewise)
        settings = settings.with_values(mask_image=body.mask)
    name = _safe_name(body.filename)
    job = Job(Source(Path(name)), settings)
    (checked,) = runner.check_jobs(manifest, [job])
    sampler = checked.sampler
    source = name if body.filename else None
    return ImageRequest(job, sampler, body.data, name, source, fmt, quality, checked.steps,
                        control=body.control, mask=body.mask)  # fmt: skip


def check_stream_settings(message: dict, manifest) -> ImageRequest:
    """A stream's first message (JSON text) checked as a request's fields are: an
    ImageRequest without an image, to fill with each frame."""
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    try:
        fields = json.loads(message.get("text") or "")
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        raise InputError('send the settings first, as a JSON text message: {"prompt": ...}')
    unknown = [key for key in fields if key not in STREAM_FIELDS]
    if unknown:
        raise InputError(f"unknown setting {unknown[0]!r}: the settings are "
                         f"{', '.join(STREAM_FIELDS)}")  # fmt: skip
    control = _control_field(fields.pop("control_image", None))
    mask = _image_field(fields.pop("mask", None), "mask", "the inpainting mask")
    body = Body({**fields, "format": "jpeg"}, b"", None, control, mask)
    return check_body(body, manifest)


def _parse(key: str, raw):
    """One field's value parsed by its setting (same ranges, same messages as the CLI's)."""
    if key == FORMAT.key and isinstance(raw, str) and raw.lower() in FORMATS:
        raw = raw.lower()  # (any case: PNG, png)
    return (OUTPUT_FIELDS.get(key) or BY_KEY[key]).parse(raw)


async def _read_multipart(request: Request, body) -> Body:
    parser = MultiPartParser(
        request.headers,
        body,
        max_files=MAX_FILES,
        max_fields=len(FIELDS),
        max_part_size=MAX_FIELD_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise Refusal(400, f"the multipart body cannot be read: {exc.message}") from None
    try:
        fields, uploads = {}, {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in FILES:
                    raise InputError(f"the file goes in the field 'image' (or 'control_image', "
                                     f"the ControlNet's, or 'mask'), not {key!r}")  # fmt: skip
                if key in uploads and key != "control_image":
                    raise InputError(f"the field {key!r} is given twice: give it once")
                uploads.setdefault(key, []).append(value)
            elif key in FILES:
                raise InputError(f"the field {key!r} must be a file (the picture), not text")
            elif key in fields:
                raise InputError(f"the field {key!r} is given twice: give it once")
            else:
                fields[key] = value
        if "image" not in uploads:
            raise InputError("no image: send the picture as the file field 'image'")
        (upload,) = uploads["image"]
        controls = tuple([await control.read() for control in uploads.get("control_image", [])])
        mask = uploads.get("mask")
        mask_data = None if mask is None else await mask[0].read()
        control_data = controls[0] if len(controls) == 1 else controls or None
        return Body(fields, await upload.read(), upload.filename or None, control_data, mask_data)
    finally:
        await form.close()


def _read_json(raw: bytes) -> Body:
    try:
        fields = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Refusal(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise InputError('the JSON body must be an object: {"image": base64, "prompt": ...}')
    image = fields.pop("image", None)
    if not isinstance(image, str) or not image:
        raise InputError("no image: send the picture as base64 text in the field 'image'")
    control = _control_field(fields.pop("control_image", None))
    mask = _image_field(fields.pop("mask", None), "mask", "the inpainting mask")
    return Body(fields, decode_base64(image, "image"), None, control, mask)


def _control_field(control) -> bytes | tuple[bytes, ...] | None:
    """A JSON control_image: one base64 picture, or a list of one per ControlNet."""
    if isinstance(control, list):  # one per ControlNet
        if not control:
            raise InputError("the field 'control_image' is an empty list: leave it out")
        return tuple(_image_field(c, "control_image", "the ControlNet's") for c in control)
    return _image_field(control, "control_image", "the ControlNet's")


def _image_field(value, field: str, what: str) -> bytes | None:
    """A JSON body's second picture (None: not sent), refused unless it is base64 text."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InputError(f"the field {field!r} must be {what} picture as base64 text")
    return decode_base64(value, field)


def control_tuple(control) -> tuple[bytes, ...]:
    """A request's control images as a tuple: () for none, one per ControlNet."""
    if control is None:
        return ()
    return control if isinstance(control, tuple) else (control,)


def decode_base64(text: str, field: str) -> bytes:
    """An image field's bytes: base64, or a data URL (a browser's FileReader, webuiapi)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(
            f"the field {field!r} is not valid base64: send the image's bytes as base64 text"
        ) from None


def _safe_name(filename: str | None) -> str:
    """A file name for an upload: its base name in safe characters, or `upload`."""
    name = UNSAFE_NAME_CHARS.sub("_", Path(filename or "").name).lstrip(".")[:100]
    return name or "upload"
