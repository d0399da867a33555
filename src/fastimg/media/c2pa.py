"""C2PA Content Credentials: a manifest signed with the user's certificate, and reading it back.

The manifest says that fastimg created the image from a trained model (IPTC's digital source
type trainedAlgorithmicMedia), with the settings it used. Certificate and key are checked when
they are loaded, before any image work: what c2pa-python would refuse only at signing time (a
key that does not match, an expired certificate, a certificate profile C2PA forbids) is an
InputError there. c2pa-python (the `fastimg[c2pa]` extra) is imported only when used.
"""

import datetime as dt
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, OutputError, require
from .formats import FORMAT_NAMES
from .vocabulary import (
    SETTING_PREFIX,
    TRAINED_ALGORITHMIC_MEDIA,
    encodable_text,
    fastimg_items,
    version,
)

MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
SUFFIXES = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
# The extended key usages C2PA accepts for claim signing (C2PA 2.x §14.5.1; c2pa-rs's
# sdk/src/crypto/cose/valid_eku_oids.cfg, and C2PA's own c2pa-kp-claimSigning). c2pa-rs
# 0.91 takes emailProtection, timeStamping and OCSPSigning by itself; the others only when its
# `trust.trust_config` setting lists them, which is done here so that certificates issued for
# C2PA are not refused.
C2PA_EKUS = (
    "1.3.6.1.5.5.7.3.4",  # id-kp-emailProtection
    "1.3.6.1.5.5.7.3.36",  # id-kp-documentSigning
    "1.3.6.1.5.5.7.3.8",  # id-kp-timeStamping
    "1.3.6.1.5.5.7.3.9",  # id-kp-OCSPSigning
    "1.3.6.1.4.1.311.76.59.1.9",  # Microsoft C2PA signing
    "1.3.6.1.4.1.62558.2.1",  # c2pa-kp-claimSigning
)
CERTIFICATE_NEEDS = (
    "C2PA signs with an end-entity certificate (not a CA) that has the digitalSignature key "
    "usage and an extended key usage such as emailProtection or documentSigning, first in the "
    "file and followed by the CA certificates that issued it"
)
SUPPORTED_KEYS = (
    "EC P-256, P-384 or P-521 (es256, es384, es512), Ed25519 (ed25519) "
    "or RSA of 2048 bits or more (ps256)"
)
EC_ALGORITHMS = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}


@dataclass(frozen=True)
class C2paSigner:
    """What signing needs: the certificate chain (leaf first), the key and its algorithm."""

    cert_path: Path
    key_path: Path
    chain_pem: bytes  # the certificates as read, written again as PEM, leaf first
    key_pem: bytes = field(repr=False)  # the key as unencrypted PKCS#8 PEM, what c2pa reads
    alg: str  # es256, es384, es512, ed25519 or ps256
    tsa_url: str | None = None  # an RFC 3161 time-stamp authority; None signs offline


# --- loading the certificate and key -----------------------------------------------------------


def load_signer(cert_path, key_path, tsa_url: str | None = None) -> C2paSigner:
    """Read and check a PEM certificate chain and its private key; InputError when unusable."""
    require("c2pa", "c2pa")
    cert_path, key_path = Path(cert_path), Path(key_path)
    chain = _load_chain(cert_path)
    key = _load_key(key_path)
    alg = _algorithm(key, key_path)
    _check_key_matches(key, chain, cert_path, key_path)
    _check_validity(chain[0], cert_path)
    _check_not_ca(chain[0], cert_path)
    if tsa_url is not None and not tsa_url.startswith(("http://", "https://")):
        raise InputError(f"the time-stamp authority {tsa_url!r} is not an http(s) URL")
    signer = C2paSigner(cert_path, key_path, _pem(chain), _pkcs8(key), alg, tsa_url)
    _check_sdk_accepts(signer)
    return signer


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"the C2PA {what} {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"the C2PA {what} {path} is a folder, not a PEM file") from None
    except OSError as exc:
        raise InputError(f"cannot read the C2PA {what} {path}: {exc.strerror or exc}") from None


def _load_chain(path: Path) -> list:
    """The certificates of a PEM file, in its order."""
    from cryptography import x509

    data = _read_pem(path, "certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InputError(
            f"the C2PA certificate {path} is not a PEM certificate chain (no readable "
            "'-----BEGIN CERTIFICATE-----' block): pass the signing certificate then its CAs, "
            "as PEM"
        ) from None


def _load_key(path: Path):
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read_pem(path, "key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying it needs a password
        raise InputError(
            f"the C2PA key {path} is encrypted: pass it unencrypted "
            f"(openssl pkey -in {path} -out plain-key.pem)"
        ) from None
    except UnsupportedAlgorithm:
        raise InputError(
            f"the C2PA key {path} is of a kind C2PA cannot sign with; use {SUPPORTED_KEYS}"
        ) from None
    except ValueError:
        raise InputError(f"the C2PA key {path} is not a PEM private key") from None


def _algorithm(key, path: Path) -> str:
    """The C2PA signing algorithm for `key`'s type."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in EC_ALGORITHMS:
        return EC_ALGORITHMS[key.curve.name]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return "ps256"  # C2PA allows RSA only as RSASSA-PSS
    if isinstance(key, rsa.RSAPrivateKey):
        kind = f"an RSA key of {key.key_size} bits"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        kind = f"an EC key on curve {key.curve.name}"
    else:
        kind = f"a {type(key).__name__.removesuffix('PrivateKey').lstrip('_')} key"
    raise InputError(f"the C2PA key {path} is {kind}; C2PA signs with {SUPPORTED_KEYS}")


def _public_der(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_key_matches(key, chain: list, cert_path: Path, key_path: Path) -> None:
    """The key must be the leaf certificate's (the first in the file)."""
    mine = _public_der(key.public_key())
    if _public_der(chain[0].public_key()) == mine:
        return
    if any(_public_der(cert.public_key()) == mine for cert in chain[1:]):
        raise InputError(
            f"the C2PA certificate {cert_path} lists the certificate of the key {key_path} "
            "after another: put the signing certificate first, then the CAs that issued it"
        )
    raise InputError(
        f"the C2PA key {key_path} does not match the certificate {cert_path}: "
        "pass the key made with that certificate"
    )


def _check_validity(cert, path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    if now > cert.not_valid_after_utc:
        raise InputError(
            f"the C2PA certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} "
            "UTC: renew it, or pass a certificate that is valid now"
        )
    if now < cert.not_valid_before_utc:
        raise InputError(
            f"the C2PA certificate {path} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: pass one that is valid now"
        )


def _check_not_ca(cert, path: Path) -> None:
    from cryptography import x509

    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return
    if is_ca:
        raise InputError(f"the C2PA certificate {path} is a CA certificate: {CERTIFICATE_NEEDS}")


def _pem(chain: list) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain)


def _pkcs8(key) -> bytes:
    """`key` as unencrypted PKCS#8 PEM: c2pa refuses e.g. OpenSSL's 'EC PRIVATE KEY' files."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_sdk_accepts(signer: C2paSigner) -> None:
    """Sign a tiny image, so that what the SDK refuses (its certificate profile) is known now."""
    from PIL import Image

    c2pa = require("c2pa", "c2pa")
    probe = io.BytesIO()
    Image.new("RGB", (8, 8)).save(probe, format="PNG")
    try:
        _sdk_sign(signer, probe.getvalue(), "image/png", _manifest({}, "probe.png"))
    except c2pa.C2paError as exc:
        needs = CERTIFICATE_NEEDS
        if signer.tsa_url:
            needs += f", and a time-stamp authority that answers at {signer.tsa_url}"
        message = f"the C2PA certificate {signer.cert_path} cannot sign: {exc}; {needs}"
        raise InputError(message) from None


# --- signing -----------------------------------------------------------------------------------


def sign_image(
    signer: C2paSigner, data: bytes, fmt: str, settings: dict, title: str | None = None
) -> bytes:
    """`data` (a PNG, JPEG or WebP file, `fmt` as Pillow names it) with a signed C2PA manifest."""
    c2pa = require("c2pa", "c2pa")
    mime = MIME_TYPES.get(fmt.upper())
    if mime is None:
        raise InputError(f"C2PA credentials are written to PNG, JPEG or WebP, not {fmt}")
    manifest = _manifest(settings, title or f"image.{SUFFIXES[fmt.upper()]}")
    try:
        return _sdk_sign(signer, data, mime, manifest)
    except c2pa.C2paError as exc:
        raise OutputError(f"cannot sign the image with C2PA credentials: {exc}") from None


def _sdk_sign(signer: C2paSigner, data: bytes, mime: str, manifest: dict) -> bytes:
    """The signed file; c2pa.C2paError when the SDK refuses."""
    c2pa = require("c2pa", "c2pa")
    info = c2pa.C2paSignerInfo(signer.alg, signer.chain_pem, signer.key_pem, signer.tsa_url)
    signed = io.BytesIO()
    with (
        _sdk_context(thumbnail=False) as context,
        c2pa.Signer.from_info(info) as sdk_signer,
        c2pa.Builder(manifest, context) as builder,
    ):
        builder.sign(sdk_signer, mime, io.BytesIO(data), signed)
    return signed.getvalue()


def _manifest(settings: dict, title: str) -> dict:
    """The manifest definition: generator, title, and the c2pa.created action."""
    fastimg = {"name": "fastimg", "version": version()}
    created = {
        "action": "c2pa.created",
        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
        "softwareAgent": fastimg,
    }
    own = {k[len(SETTING_PREFIX) :]: _json_value(v) for k, v in fastimg_items(settings)}
    if own:
        created["parameters"] = {"fastimg": own}
    return {
        "claim_generator_info": [fastimg],
        "title": encodable_text(title),
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [created]}}],
    }


def _json_value(value):
    """`value` as JSON holds it: numbers and text as they are, anything else as text."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return encodable_text(value)


def _sdk_context(thumbnail: bool = True, anchors: bytes | None = None):
    """A c2pa Context that accepts C2PA's EKUs and trusts `anchors` (PEM CA certificates)."""
    c2pa = require("c2pa", "c2pa")
    settings = {"trust": {"trust_config": "\n".join(C2PA_EKUS) + "\n"}}
    if not thumbnail:  # c2pa's thumbnail is a second copy of the image: up to megabytes more
        settings["builder"] = {"thumbnail": {"enabled": False}}
    if anchors:
        settings["trust"]["user_anchors"] = anchors.decode("ascii")
    return c2pa.Context.from_dict(settings)


# --- reading -----------------------------------------------------------------------------------


def read_manifest(
    source: str | Path | bytes, fmt: str | None = None, trust_anchors: str | Path | None = None
) -> dict | None:
    """The active C2PA manifest's summary and c2pa's validation of it; None when there is none."""
    # Only the CAs in `trust_anchors` (a PEM file) are trusted: without it a good signature
    # reads as Valid, with the one failure signingCredential.untrusted.
    c2pa = require("c2pa", "c2pa")
    name, data = ("the image", source) if isinstance(source, bytes) else _read_image(source)
    mime = _mime(data, fmt)
    anchors = _read_anchors(Path(trust_anchors)) if trust_anchors is not None else None
    try:
        with _sdk_context(anchors=anchors) as context:
            reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, context)
            if reader is None:
                return None
            with reader:
                store = json.loads(reader.json())
    except c2pa.C2paError as exc:
        raise InputError(f"cannot read the C2PA manifest of {name}: {exc}") from None
    return _manifest_summary(store)


def _read_image(path) -> tuple[str, bytes]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist or is not a file")
    try:
        return str(path), path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from None


def _mime(data: bytes, fmt: str | None) -> str | None:
    """The MIME type by `fmt`, else by the file's signature; None lets c2pa detect it."""
    if fmt:
        chosen = FORMAT_NAMES.get(fmt.lower())
        if chosen is None:
            raise InputError(f"C2PA credentials are read from PNG, JPEG or WebP, not {fmt}")
        return MIME_TYPES[chosen]
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _read_anchors(path: Path) -> bytes:
    """The CA certificates of a PEM file, as PEM."""
    from cryptography import x509

    data = _read_pem(path, "trust anchors file")
    try:
        return _pem(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise InputError(f"the C2PA trust anchors file {path} holds no PEM certificate") from None


def _manifest_summary(store: dict) -> dict:
    """What the active manifest says, and what c2pa's validation found."""
    manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
    results = (store.get("validation_results") or {}).get("activeManifest") or {}
    codes = {
        kind: [s["code"] for s in results.get(kind, [])]
        for kind in ("success", "informational", "failure")
    }
    failures = codes["failure"]
    signature = manifest.get("signature_info") or {}
    return {
        "claim_generator": _generator(manifest),
        "title": manifest.get("title"),
        "digital_source_type": _source_type(manifest),
        "signer": signature.get("common_name"),
        # c2pa's signature_info "issuer": the signer's organization (its certificate's O=)
        "organization": signature.get("issuer"),
        "algorithm": signature.get("alg"),
        "signed_at": signature.get("time"),  # only with a time-stamp authority
        # c2pa's verdict: Invalid (a failure), Valid (signature and hashes good, but the
        # certificate not on a trust list), Trusted (valid and issued by a trusted CA).
        "validation_state": store.get("validation_state"),
        "signature_valid": "claimSignature.validated" in codes["success"]
        and not any(c.startswith("claimSignature.") for c in failures),
        "hashes_match": not any(
            c.startswith("assertion.") and c.endswith(".mismatch") for c in failures
        ),
        "trusted": "signingCredential.trusted" in codes["success"],
        "failures": failures,
        "codes": codes,
    }


def _generator(manifest: dict) -> str | None:
    """The claim generator as 'name version' (C2PA 2 claims), or the v1 claim's string."""
    for info in manifest.get("claim_generator_info") or []:
        if info.get("name"):
            return " ".join(str(info[k]) for k in ("name", "version") if info.get(k))
    return manifest.get("claim_generator")


def _source_type(manifest: dict) -> str | None:
    """The digitalSourceType of the manifest's actions (its c2pa.created action's first)."""
    actions = [
        action
        for assertion in manifest.get("assertions") or []
        if str(assertion.get("label", "")).startswith("c2pa.actions")
        for action in (assertion.get("data") or {}).get("actions") or []
    ]
    actions.sort(key=lambda action: action.get("action") != "c2pa.created")
    return next((a["digitalSourceType"] for a in actions if a.get("digitalSourceType")), None)
