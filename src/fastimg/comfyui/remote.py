"""The img2img node's other way to run: a running `fastimg serve`, called over HTTP with the
standard library (its /v1/img2img, JSON with the image as base64)."""

import base64
import io
import json
import urllib.error
import urllib.parse
import urllib.request

from PIL import Image

from ..errors import EngineError, InputError
from ..media.images import decode_image
from ..settings import CallSettings

TIMEOUT_S = 600


def check_url(url: str) -> str:
    """`url` without a trailing slash, or an error when it is not an http(s) address."""
    url = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(
            f"server_url {url!r} is not an http(s) address: give the one fastimg serve prints, "
            "such as http://127.0.0.1:8000, or leave it empty to run the engines in ComfyUI"
        )
    return url


def transform_remote(url: str, picture: Image.Image, call: CallSettings) -> list[Image.Image]:
    """The image the server at `url` makes of `picture` with `call`, its labels in `info`."""
    body = {"image": _base64_png(picture), "format": "png"}
    for name, value in call.arguments().items():
        if name == "control_image" and value is not None:
            body["control_image"] = _base64_png(value)
        elif name == "mask_image" and value is not None:
            body["mask"] = _base64_png(value)
        elif value is not None and name in FIELD_OF and value != DEFAULTS.get(name):
            body[FIELD_OF[name]] = value
    request = urllib.request.Request(
        f"{url}/v1/img2img",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            data = response.read()
    except urllib.error.HTTPError as exc:
        raise InputError(f"the fastimg server at {url} refused the image: {_detail(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EngineError(
            f"cannot reach the fastimg server at {url} ({reason}): start it with  fastimg serve "
            "--engines ENGINES, or clear server_url"
        ) from None
    image = decode_image(data, "the server's image")
    image.info = dict(Image.open(io.BytesIO(data)).info)  # the labels, as the server wrote them
    return [image]


def _base64_png(picture: Image.Image) -> str:
    encoded = io.BytesIO()
    picture.save(encoded, format="PNG")
    return base64.b64encode(encoded.getvalue()).decode("ascii")


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["detail"])
    except (ValueError, KeyError, TypeError, OSError):
        return f"HTTP {exc.code}"


def _fields() -> tuple[dict, dict]:
    from dataclasses import fields

    from ..settings import SETTINGS

    keys = {setting.name: setting.key for setting in SETTINGS}
    defaults = {f.name: f.default for f in fields(CallSettings)}
    return keys, defaults


FIELD_OF, DEFAULTS = _fields()
