"""A small PKI for C2PA tests: a root CA and signing certificates as C2PA's profile wants them."""

import datetime as dt
from types import SimpleNamespace

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fastimg tests"),
        ]
    )


def _key_usage(**on) -> x509.KeyUsage:
    names = (
        "digital_signature content_commitment key_encipherment data_encipherment key_agreement "
        "key_cert_sign crl_sign encipher_only decipher_only"
    ).split()
    return x509.KeyUsage(**{n: on.get(n, False) for n in names})


def make_ca():
    """A root CA as C2PA's profile wants it: v3, keyCertSign, SKI, EC P-256."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fastimg test root CA"))
        .issuer_name(_name("fastimg test root CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now + dt.timedelta(days=400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(ca, key, eku=(ExtendedKeyUsageOID.EMAIL_PROTECTION,), days=(-1, 30), is_ca=False):
    """A signing certificate issued by `ca`: digitalSignature, the EKUs given, AKI, not a CA."""
    ca_key, ca_cert = ca
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("fastimg test signer"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_cert_sign=is_ca), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if is_ca:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


def pem(*certs) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key, form=serialization.PrivateFormat.PKCS8, encryption=None) -> bytes:
    encryption = encryption or serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, form, encryption)


def make_pki(tmp_path, ca=None):
    """chain.pem (leaf, then CA), key.pem (PKCS#8) and ca.pem in tmp_path."""
    ca = ca or make_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_leaf(ca, key)
    paths = SimpleNamespace(
        chain=tmp_path / "chain.pem", key=tmp_path / "key.pem", ca=tmp_path / "ca.pem"
    )
    paths.chain.write_bytes(pem(leaf, ca[1]))
    paths.key.write_bytes(key_pem(key))
    paths.ca.write_bytes(pem(ca[1]))
    paths.leaf, paths.leaf_key = leaf, key
    return paths


def write_pki(tmp_path, ca, key, leaf, name="x"):
    chain, key_path = tmp_path / f"{name}-chain.pem", tmp_path / f"{name}-key.pem"
    chain.write_bytes(pem(leaf, ca[1]))
    key_path.write_bytes(key_pem(key))
    return chain, key_path
