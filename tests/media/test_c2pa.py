"""C2PA Content Credentials: signed with a certificate chain made here, read back with c2pa's own
Reader (and its validation), tampered with, and refused when the certificate or key is wrong."""

import io
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

c2pa = pytest.importorskip("c2pa")
pytest.importorskip("cryptography")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: E402

from fastimg.errors import InputError, MissingDependencyError, OutputError  # noqa: E402
from fastimg.media import labels  # noqa: E402
from fastimg.media.c2pa import load_signer, read_manifest, sign_image  # noqa: E402
from fastimg.media.label_reader import read_labels  # noqa: E402
from fastimg.media.vocabulary import version  # noqa: E402
from tests.pki import key_pem, make_ca, make_leaf, make_pki, pem, write_pki  # noqa: E402

TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
VERSION = version()
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")
CLAIM_SIGNING = x509.ObjectIdentifier("1.3.6.1.4.1.62558.2.1")  # c2pa-kp-claimSigning
SETTINGS = {
    "fastimg:prompt": "a red fox in the snow",
    "fastimg:seed": 1234,
    "fastimg:strength": 0.5,
    "fastimg:steps": 20,
    "fastimg:guidance": 7.5,
    "fastimg:scheduler": "euler",
    "not-ours": "left out",
}


@pytest.fixture(scope="module")
def ca():
    return make_ca()


@pytest.fixture
def pki(tmp_path, ca):
    """chain.pem (leaf, then CA), key.pem (PKCS#8) and ca.pem in tmp_path."""
    return make_pki(tmp_path, ca)


# --- images, and reading them with c2pa itself -------------------------------------------------


def encode(fmt: str, mode: str = "RGB") -> bytes:
    """A 64x48 noise image in `fmt`, as Pillow writes it."""
    channels = len(mode)
    pixels = np.random.default_rng(1).integers(0, 256, (48, 64, channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=fmt)
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGBA"))


def c2pa_read(data: bytes, fmt: str, settings: dict | None = None) -> dict:
    """The manifest store as c2pa's Reader gives it (default settings unless `settings`)."""
    if settings is None:
        with c2pa.Reader(MIME[fmt], io.BytesIO(data)) as reader:
            return json.loads(reader.json())
    with (
        c2pa.Context.from_dict(settings) as context,
        c2pa.Reader(MIME[fmt], io.BytesIO(data), None, context) as reader,
    ):
        return json.loads(reader.json())


def codes(store: dict, kind: str) -> list[str]:
    return [s["code"] for s in store["validation_results"]["activeManifest"][kind]]


def active(store: dict) -> dict:
    return store["manifests"][store["active_manifest"]]


def payload(data: bytes, fmt: str) -> tuple[int, int]:
    """Where the compressed pixels are: (start, end) of PNG IDAT, JPEG scan, WebP VP8 data."""
    if fmt == "PNG":
        pos = 8
        while True:
            length, kind = struct.unpack_from(">I4s", data, pos)
            if kind == b"IDAT":
                return pos + 8, pos + 8 + length
            pos += 12 + length
    if fmt == "JPEG":  # the segments walked from the start: a signature's bytes may hold FFDA
        pos = 2
        while data[pos + 1] != 0xDA:
            (length,) = struct.unpack_from(">H", data, pos + 2)
            pos += 2 + length
        (length,) = struct.unpack_from(">H", data, pos + 2)
        return pos + 2 + length, data.rindex(b"\xff\xd9")
    pos = 12
    while True:
        kind, length = struct.unpack_from("<4sI", data, pos)
        if kind in (b"VP8 ", b"VP8L"):
            return pos + 8, pos + 8 + length
        pos += 8 + length + (length & 1)


def tamper(data: bytes, fmt: str) -> bytes:
    """`data` with a few bytes in the middle of its pixel data changed (never into a JPEG
    marker), the length kept."""
    start, end = payload(data, fmt)
    out = bytearray(data)
    flipped, i = 0, (start + end) // 2
    while flipped < 4:
        if 0xFE not in (out[i] | 1, out[i - 1] | 1, out[i + 1] | 1):  # no 0xFE/0xFF around
            out[i] ^= 0x01
            flipped += 1
        i += 2
    return bytes(out)


def test_the_jpeg_scan_is_found_past_segments_whose_bytes_hold_its_marker():
    plain = encode("JPEG")
    segment = b"\xff\xeb" + struct.pack(">H", 8) + b"\xff\xda\xff\xff\x00\x01"  # APP11
    marked = plain[:2] + segment + plain[2:]  # (a C2PA manifest goes in APP11 segments)
    start, end = payload(plain, "JPEG")
    assert payload(marked, "JPEG") == (start + len(segment), end + len(segment))


# --- signing and reading back ------------------------------------------------------------------

CASES = [("PNG", "RGB"), ("JPEG", "RGB"), ("WEBP", "RGB"), ("WEBP", "RGBA"), ("PNG", "RGBA")]


@pytest.mark.parametrize("fmt, mode", CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_signed_image_reads_back_valid_with_c2pas_reader(pki, fmt, mode):
    signer = load_signer(pki.chain, pki.key)
    data = encode(fmt, mode)
    signed = sign_image(signer, data, fmt, SETTINGS, title="fox.png")

    store = c2pa_read(signed, fmt)  # c2pa's defaults: no CA is trusted
    manifest = active(store)
    assert manifest["claim_generator_info"][0]["name"] == "fastimg"
    assert manifest["claim_generator_info"][0]["version"] == VERSION
    assert manifest["title"] == "fox.png"
    [actions] = [a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions")]
    [created] = actions["data"]["actions"]
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"] == TRAINED
    assert created["softwareAgent"] == {"name": "fastimg", "version": VERSION}
    assert created["parameters"]["fastimg"] == {
        "prompt": "a red fox in the snow",
        "seed": 1234,
        "strength": 0.5,
        "steps": 20,
        "guidance": 7.5,
        "scheduler": "euler",
    }
    assert manifest["signature_info"]["alg"] == "Es256"
    assert manifest["signature_info"]["common_name"] == "fastimg test signer"
    assert "thumbnail" not in manifest  # no second copy of the image in the manifest
    # Signature and hashes good; the one failure is that nothing trusts the test CA.
    assert store["validation_state"] == "Valid"
    assert codes(store, "failure") == ["signingCredential.untrusted"]
    assert {"claimSignature.validated", "assertion.dataHash.match"} <= set(codes(store, "success"))

    # With the test CA as a trust anchor, c2pa's verdict is fully trusted.
    trusting = c2pa_read(signed, fmt, {"trust": {"user_anchors": pki.ca.read_text()}})
    assert trusting["validation_state"] == "Trusted"
    assert codes(trusting, "failure") == []
    assert "signingCredential.trusted" in codes(trusting, "success")

    # The pixels are those of the unsigned file, and Pillow still opens it.
    assert np.array_equal(pixels(signed), pixels(data))
    assert len(signed) - len(data) < 16_000  # the manifest, with no thumbnail, is a few KB


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_read_manifest_summarises_what_c2pa_found(pki, tmp_path, fmt):
    signed = sign_image(load_signer(pki.chain, pki.key), encode(fmt), fmt, SETTINGS)
    path = tmp_path / f"out.{fmt.lower()}"
    path.write_bytes(signed)

    summary = read_manifest(path)
    assert summary["claim_generator"] == f"fastimg {VERSION}"
    assert summary["title"] == {"PNG": "image.png", "JPEG": "image.jpg", "WEBP": "image.webp"}[fmt]
    assert summary["digital_source_type"] == TRAINED
    assert summary["signer"] == "fastimg test signer"
    assert summary["organization"] == "fastimg tests"
    assert summary["algorithm"] == "Es256"
    assert summary["validation_state"] == "Valid"
    assert summary["signature_valid"] and summary["hashes_match"]
    assert not summary["trusted"]
    assert summary["failures"] == ["signingCredential.untrusted"]

    trusted = read_manifest(signed, fmt=fmt.lower(), trust_anchors=pki.ca)
    assert trusted["validation_state"] == "Trusted"
    assert trusted["trusted"] and trusted["failures"] == []


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_tampered_pixels_break_the_data_hash(pki, fmt):
    signed = sign_image(load_signer(pki.chain, pki.key), encode(fmt), fmt, SETTINGS)
    tampered = tamper(signed, fmt)
    assert len(tampered) == len(signed) and tampered != signed

    store = c2pa_read(tampered, fmt, {"trust": {"user_anchors": pki.ca.read_text()}})
    assert store["validation_state"] == "Invalid"
    assert codes(store, "failure") == ["assertion.dataHash.mismatch"]

    summary = read_manifest(tampered, trust_anchors=pki.ca)
    assert summary["validation_state"] == "Invalid"
    assert not summary["hashes_match"]
    assert summary["signature_valid"]  # the claim itself is untouched: its signature holds
    assert summary["failures"] == ["assertion.dataHash.mismatch"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_read_manifest_is_none_without_one(tmp_path, fmt):
    assert read_manifest(encode(fmt)) is None
    path = tmp_path / "plain"
    path.write_bytes(encode(fmt))
    assert read_manifest(path, fmt=fmt) is None


def test_read_manifest_refuses_what_it_cannot_read(tmp_path, pki):
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(tmp_path / "nope.png")
    with pytest.raises(InputError, match="cannot read the C2PA manifest of the image: .*"):
        read_manifest(b"not an image at all", fmt="PNG")
    with pytest.raises(InputError, match="PNG, JPEG or WebP, not gif"):
        read_manifest(encode("PNG"), fmt="gif")
    junk = tmp_path / "anchors.pem"
    junk.write_text("not a certificate")
    with pytest.raises(InputError, match=f"trust anchors file {junk} holds no PEM certificate"):
        read_manifest(encode("PNG"), trust_anchors=junk)


@pytest.mark.parametrize("suffix", ["png", "jpg", "webp"])
def test_labels_written_by_save_image_survive_signing(pki, tmp_path, suffix):
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    path = labels.save_image(image, tmp_path / f"out.{suffix}", SETTINGS)
    fmt = labels.output_format(path)
    before = read_labels(path)
    assert before["c2pa"] is False

    path.write_bytes(sign_image(load_signer(pki.chain, pki.key), path.read_bytes(), fmt, SETTINGS))
    after = read_labels(path)
    assert after["c2pa"] is True
    assert {k: v for k, v in after.items() if k != "c2pa"} == {
        k: v for k, v in before.items() if k != "c2pa"
    }
    assert read_manifest(path)["digital_source_type"] == TRAINED


def test_settings_that_json_cannot_hold_as_they_are_are_written_as_text(pki):
    settings = {
        "fastimg:prompt": "bad \udcff bytes",
        "fastimg:guidance": math.nan,
        "fastimg:source": Path("in.png"),
        "fastimg:negative_prompt": None,
    }
    signed = sign_image(load_signer(pki.chain, pki.key), encode("PNG"), "PNG", settings)
    [actions] = active(c2pa_read(signed, "PNG"))["assertions"]
    assert actions["data"]["actions"][0]["parameters"]["fastimg"] == {
        "prompt": "bad \ufffd bytes",
        "guidance": "nan",
        "source": "in.png",
        "negative_prompt": None,
    }


def test_no_settings_no_parameters(pki):
    signed = sign_image(load_signer(pki.chain, pki.key), encode("PNG"), "png", {})
    [actions] = active(c2pa_read(signed, "PNG"))["assertions"]
    assert "parameters" not in actions["data"]["actions"][0]


# --- key types and the algorithm they give -----------------------------------------------------

KEYS = {
    "es256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "es384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "es512": lambda: ec.generate_private_key(ec.SECP521R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "ps256": lambda: rsa.generate_private_key(65537, 2048),
}


@pytest.mark.parametrize("alg", KEYS)
def test_algorithm_follows_the_key(tmp_path, ca, alg):
    key = KEYS[alg]()
    chain, key_path = write_pki(tmp_path, ca, key, make_leaf(ca, key))
    signer = load_signer(chain, key_path)
    assert signer.alg == alg
    store = c2pa_read(sign_image(signer, encode("JPEG"), "JPEG", {}), "JPEG")
    assert store["validation_state"] == "Valid"
    assert active(store)["signature_info"]["alg"] == alg.capitalize()


def test_openssl_ec_private_key_files_are_accepted(tmp_path, ca):
    # c2pa itself reads only PKCS#8 ("PRIVATE KEY"); the key is handed to it as PKCS#8.
    key = ec.generate_private_key(ec.SECP256R1())
    chain, key_path = write_pki(tmp_path, ca, key, make_leaf(ca, key))
    key_path.write_bytes(key_pem(key, serialization.PrivateFormat.TraditionalOpenSSL))
    assert key_path.read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----")
    signer = load_signer(chain, key_path)
    assert c2pa_read(sign_image(signer, encode("PNG"), "PNG", {}), "PNG")["validation_state"] == (
        "Valid"
    )


@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda: rsa.generate_private_key(65537, 1024), "an RSA key of 1024 bits"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "an EC key on curve secp256k1"),
    ],
    ids=["rsa1024", "secp256k1"],
)
def test_unsupported_keys_are_refused_naming_what_is_supported(tmp_path, ca, make, kind):
    key = make()
    chain, key_path = write_pki(tmp_path, ca, key, make_leaf(ca, key))
    with pytest.raises(InputError) as caught:
        load_signer(chain, key_path)
    assert str(caught.value) == (
        f"the C2PA key {key_path} is {kind}; C2PA signs with EC P-256, P-384 or P-521 "
        "(es256, es384, es512), Ed25519 (ed25519) or RSA of 2048 bits or more (ps256)"
    )


# --- certificates and keys that are refused, before any image work -----------------------------


def test_key_that_does_not_match_the_certificate(pki, tmp_path):
    other = tmp_path / "other-key.pem"
    other.write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(InputError) as caught:
        load_signer(pki.chain, other)
    assert str(caught.value) == (
        f"the C2PA key {other} does not match the certificate {pki.chain}: "
        "pass the key made with that certificate"
    )


def test_chain_with_the_ca_first(pki, ca):
    pki.chain.write_bytes(pem(ca[1], pki.leaf))
    with pytest.raises(InputError, match="put the signing certificate first"):
        load_signer(pki.chain, pki.key)


def test_missing_files(pki, tmp_path):
    with pytest.raises(InputError, match=f"the C2PA certificate {tmp_path / 'no.pem'} does not"):
        load_signer(tmp_path / "no.pem", pki.key)
    with pytest.raises(InputError, match=f"the C2PA key {tmp_path / 'no.pem'} does not exist"):
        load_signer(pki.chain, tmp_path / "no.pem")
    with pytest.raises(InputError, match="is a folder"):
        load_signer(tmp_path, pki.key)


def test_files_that_are_not_pem(pki, tmp_path):
    der = tmp_path / "leaf.der"
    der.write_bytes(pki.leaf.public_bytes(serialization.Encoding.DER))
    with pytest.raises(InputError, match="is not a PEM certificate chain"):
        load_signer(der, pki.key)
    with pytest.raises(InputError, match=f"the C2PA key {pki.chain} is not a PEM private key"):
        load_signer(pki.chain, pki.chain)  # a certificate where the key should be
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match="is not a PEM private key"):
        load_signer(pki.chain, text)


def test_encrypted_key(pki):
    encrypted = serialization.BestAvailableEncryption(b"secret")
    pki.key.write_bytes(key_pem(pki.leaf_key, encryption=encrypted))
    with pytest.raises(InputError, match="is encrypted: pass it unencrypted"):
        load_signer(pki.chain, pki.key)


@pytest.mark.parametrize(
    "days, message",
    [((-30, -1), "expired on"), ((1, 30), "is not valid before")],
    ids=["expired", "not-yet-valid"],
)
def test_certificate_outside_its_validity(tmp_path, ca, days, message):
    key = ec.generate_private_key(ec.SECP256R1())
    chain, key_path = write_pki(tmp_path, ca, key, make_leaf(ca, key, days=days))
    with pytest.raises(InputError, match=f"the C2PA certificate {chain} {message}"):
        load_signer(chain, key_path)


def test_ca_certificate_cannot_sign(tmp_path, ca):
    key = ec.generate_private_key(ec.SECP256R1())
    chain, key_path = write_pki(tmp_path, ca, key, make_leaf(ca, key, is_ca=True))
    with pytest.raises(InputError, match="is a CA certificate: C2PA signs with an end-entity"):
        load_signer(chain, key_path)


@pytest.mark.parametrize(
    "eku", [(), (ExtendedKeyUsageOID.SERVER_AUTH,)], ids=["no-eku", "server-auth"]
)
def test_certificate_profile_the_sdk_refuses(tmp_path, ca, eku):
    # Found by load_signer's trial signature: c2pa's own profile check, with its message.
    key = ec.generate_private_key(ec.SECP256R1())
    chain, key_path = write_pki(tmp_path, ca, key, make_leaf(ca, key, eku=eku))
    with pytest.raises(InputError) as caught:
        load_signer(chain, key_path)
    assert str(caught.value).startswith(
        f"the C2PA certificate {chain} cannot sign: Signature: the certificate is invalid; "
        "C2PA signs with an end-entity certificate (not a CA) that has the digitalSignature"
    )


@pytest.mark.parametrize("eku", [DOCUMENT_SIGNING, CLAIM_SIGNING], ids=["doc", "claim"])
def test_c2pa_ekus_beyond_email_protection(tmp_path, ca, eku):
    key = ec.generate_private_key(ec.SECP256R1())
    chain, key_path = write_pki(tmp_path, ca, key, make_leaf(ca, key, eku=(eku,)))
    signed = sign_image(load_signer(chain, key_path), encode("PNG"), "PNG", {})
    assert read_manifest(signed)["validation_state"] == "Valid"
    # c2pa-rs 0.91 with default settings accepts only emailProtection, timeStamping and
    # OCSPSigning; a validator must list the others in trust.trust_config (as ours does).
    store = c2pa_read(signed, "PNG")
    assert store["validation_state"] == "Invalid"
    assert "signingCredential.invalid" in codes(store, "failure")


def test_tsa_url_must_be_http(pki):
    with pytest.raises(InputError, match="is not an http"):
        load_signer(pki.chain, pki.key, tsa_url="ftp://tsa.example")


def test_tsa_that_does_not_answer_is_found_at_load(pki):
    url = "http://127.0.0.1:9/"  # the discard port: refused at once
    with pytest.raises(InputError) as caught:
        load_signer(pki.chain, pki.key, tsa_url=url)
    assert str(caught.value).startswith(f"the C2PA certificate {pki.chain} cannot sign: ")
    assert str(caught.value).endswith(f", and a time-stamp authority that answers at {url}")


# --- sign_image's own errors, and the optional dependency --------------------------------------


def test_sign_image_refuses_other_formats(pki):
    with pytest.raises(InputError, match="PNG, JPEG or WebP, not GIF"):
        sign_image(load_signer(pki.chain, pki.key), b"GIF89a", "GIF", {})


def test_sdk_refusal_is_an_output_error_with_its_message(pki):
    signer = load_signer(pki.chain, pki.key)
    with pytest.raises(OutputError, match="cannot sign the image with C2PA credentials: .+"):
        sign_image(signer, b"this is not a PNG file", "PNG", {})


def test_missing_c2pa_names_the_extra(pki, monkeypatch):
    monkeypatch.setitem(sys.modules, "c2pa", None)  # import c2pa now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"fastimg\[c2pa\]"):
        load_signer(pki.chain, pki.key)
    with pytest.raises(MissingDependencyError, match=r"fastimg\[c2pa\]"):
        read_manifest(encode("PNG"))


def test_import_does_not_load_c2pa():
    code = (
        "import sys, fastimg.media.c2pa; "
        "print(sorted(m for m in ('c2pa', 'cryptography') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["out.png", "out.jpg", "out.webp"])
def test_encode_image_signs_as_save_image_does(pki, tmp_path, name):
    # c2pa gives each manifest new UUIDs (and ECDSA a random nonce), so two signings of one
    # image differ in those bytes: compared are what the files carry, read back.
    signer = load_signer(pki.chain, pki.key)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    saved = labels.save_image(image, tmp_path / name, SETTINGS, signer=signer)
    encoded = labels.encode_image(image, SETTINGS, signer=signer, name=name)
    (tmp_path / f"encoded-{name}").write_bytes(encoded)
    assert read_labels(tmp_path / f"encoded-{name}") == read_labels(saved)
    assert pixels(encoded).tolist() == pixels(saved.read_bytes()).tolist()
    from_file, from_bytes = read_manifest(saved), read_manifest(encoded)
    for summary in (from_file, from_bytes):
        assert summary["signature_valid"] and summary["hashes_match"]
        assert (summary["title"], summary["digital_source_type"]) == (name, TRAINED)
    unsigned = {k: v for k, v in from_file.items() if k != "signed_at"}
    assert unsigned == {k: v for k, v in from_bytes.items() if k != "signed_at"}
