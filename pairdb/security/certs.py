"""The cluster's certificate authority and the certificates it signs (`pairdb cert ...`).

One CA per cluster. Every certificate names its holder in the subject's common
name and its role in the subject's organizational unit (roles.py): a storage node
lets in only certificates of this CA whose role is coordinator or worker, and
coordinators and workers reach a storage node only if its certificate is this
CA's, with role storage-node, issued for that node's id. So a node without a
certificate from the cluster's CA cannot join, and a stolen client certificate
cannot pose as a node. Keys are ECDSA P-256: small, and fast to handshake.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pairdb.security.roles import CLUSTER_ROLES, Role

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_DAYS = 10 * 365
CERT_DAYS = 2 * 365
ORGANIZATION = "pairdb"


class CertError(Exception):
    """A certificate cannot be made or read; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Issued:
    cert: Path
    key: Path


def cert_paths(certs_dir: Path, name: str) -> Issued:
    return Issued(certs_dir / f"{name}.crt", certs_dir / f"{name}.key")


def create_ca(certs_dir: Path, *, common_name: str = "pairdb cluster CA", days: int = CA_DAYS) -> Issued:
    """A new CA in certs_dir (ca.crt, ca.key 0600); refuses to replace one (every certificate hangs on it)."""
    issued = Issued(certs_dir / CA_CERT, certs_dir / CA_KEY)
    if issued.cert.exists() or issued.key.exists():
        raise CertError(f"{issued.cert} already exists: a new CA would orphan every certificate it signed")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(issued, cert, key)
    return issued


def create_cert(
    certs_dir: Path,
    name: str,
    role: Role,
    *,
    hosts: tuple[str, ...] = (),
    days: int = CERT_DAYS,
    overwrite: bool = False,
) -> Issued:
    """A certificate for name with role, signed by certs_dir's CA: <name>.crt and <name>.key (0600).

    A cluster process's certificate serves and dials (both key usages) and lists
    its name and hosts as subject alternative names; a client's only dials.
    overwrite: re-issue (rotation); running servers pick the new files up.
    """
    if not name or "/" in name or name.startswith("."):
        raise CertError(f"certificate name {name!r} must be a plain name (a node id, a user)")
    ca_cert, ca_key = _load_ca(certs_dir)
    issued = cert_paths(certs_dir, name)
    if not overwrite and (issued.cert.exists() or issued.key.exists()):
        raise CertError(f"{issued.cert} already exists (re-issue it with --overwrite)")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if role in CLUSTER_ROLES:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(h) for h in dict.fromkeys((name, *hosts))]),
            critical=False,
        )
    cert = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False).sign(ca_key, hashes.SHA256())
    _write(issued, cert, key)
    return issued


def describe(path: Path) -> str:
    """One line about a certificate: subject, role, names, expiry (for `pairdb cert show`)."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        alt = ", ".join(str(n.value) for n in names)
    except x509.ExtensionNotFound:
        alt = "-"
    return (
        f"{path}: {cert.subject.rfc4514_string()}  names: {alt}  expires {cert.not_valid_after_utc:%Y-%m-%d}"
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _load_ca(certs_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = certs_dir / CA_CERT, certs_dir / CA_KEY
    if not cert_path.is_file() or not key_path.is_file():
        raise CertError(
            f"no CA in {certs_dir}: make one with `pairdb cert create-ca --certs-dir {certs_dir}`"
        )
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path} is not an ECDSA key made by `pairdb cert create-ca`")
    return x509.load_pem_x509_certificate(cert_path.read_bytes()), key


def _write(issued: Issued, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    issued.cert.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Written beside, then renamed: a server reloading mid-rotation reads the old pair or the new one.
    # Certificates are no secret, but like every file pairdb writes they are its user's alone.
    for path, data, mode in (
        (issued.key, key_pem, 0o600),
        (issued.cert, cert.public_bytes(serialization.Encoding.PEM), 0o600),
    ):
        partial = path.with_name(path.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(partial, mode)
        os.replace(partial, path)
