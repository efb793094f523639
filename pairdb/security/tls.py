"""TLS for pairdb's gRPC hops: server and channel credentials that follow certificate rotation,
and who the peer of a mutually authenticated call is.

Servers reload their certificate pair on the next handshake after the files
change (grpc's dynamic server credentials ask on every new connection); a pair
caught mid-rotation (new key, old certificate) is skipped until it matches.
Channels cannot swap credentials, so a ChannelTls tells its users, by a version
number, when to build new channels; established connections are not cut.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from pairdb.security.roles import Principal, Role

log = structlog.get_logger()

# How often a channel's files are looked at for a rotation.
_CHANNEL_RECHECK_SECONDS = 5.0
_NOT_YET = "TLS files changed but cannot be loaded yet; keeping the current ones"


class TlsError(Exception):
    """TLS is misconfigured; the message says which file or option and how to fix it."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The CA that signs every certificate of the cluster, and this process's own pair (clients: optional)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_options(
        cls, ca: str | Path | None, cert: str | Path | None, key: str | Path | None
    ) -> TlsFiles | None:
        """From --tls-ca/--tls-cert/--tls-key: None when none is given; a clear error when half is."""
        if not ca and not cert and not key:
            return None
        if not ca:
            raise TlsError("--tls-cert/--tls-key need --tls-ca: the cluster CA's certificate (ca.crt)")
        if bool(cert) != bool(key):
            raise TlsError("--tls-cert and --tls-key go together: a certificate and its private key")
        files = cls(Path(ca), Path(cert) if cert else None, Path(key) if key else None)
        for path in (files.ca, files.cert, files.key):
            if path is not None and not path.is_file():
                raise TlsError(f"TLS file {path} does not exist (pairdb cert create-... makes them)")
        return files

    def stamp(self) -> tuple[float, ...]:
        """Changes whenever one of the files does."""
        return tuple(os.stat(p).st_mtime_ns for p in (self.ca, self.cert, self.key) if p is not None)

    def read(self) -> tuple[bytes, bytes | None, bytes | None]:
        ca = self.ca.read_bytes()
        cert = self.cert.read_bytes() if self.cert else None
        key = self.key.read_bytes() if self.key else None
        if cert is not None and key is not None and not _pair_matches(cert, key):
            raise TlsError(f"{self.key} is not the private key of {self.cert} (mid-rotation?)")
        return ca, cert, key


def _pair_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError:
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    return bool(cert.public_key().public_bytes(pem, spki) == key.public_key().public_bytes(pem, spki))


class ServerTls:
    """A server's credentials: its pair, and the CA its clients' certificates must come from.

    require_client_cert: mutual TLS (storage nodes); otherwise a client certificate
    is optional but, when sent, must be the CA's (coordinators: admin certificates).
    """

    def __init__(self, files: TlsFiles, *, require_client_cert: bool) -> None:
        if files.cert is None or files.key is None:
            raise TlsError("a TLS server needs --tls-cert and --tls-key besides --tls-ca")
        self.files = files
        self.require_client_cert = require_client_cert
        self._stamp = files.stamp()
        self._initial = self._configuration()

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch, require_client_authentication=self.require_client_cert
        )

    def _configuration(self) -> Any:
        ca, cert, key = self.files.read()
        assert cert is not None and key is not None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def _fetch(self) -> Any:
        """Called by grpc before each handshake: a new configuration when the files changed, else None."""
        try:
            stamp = self.files.stamp()
            if stamp == self._stamp:
                return None
            configuration = self._configuration()
        except (OSError, TlsError) as exc:
            log.warning(_NOT_YET, error=str(exc))
            return None
        self._stamp = stamp
        log.info("TLS certificate reloaded", cert=str(self.files.cert))
        return configuration


class ChannelTls:
    """A client's credentials for channels to TLS servers; `version` moves when the files rotate."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.version = 0
        self._stamp = files.stamp()
        self._checked = time.monotonic()
        self._credentials = self._load()

    def _load(self) -> grpc.ChannelCredentials:
        ca, cert, key = self.files.read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def credentials(self) -> grpc.ChannelCredentials:
        self.refresh()
        return self._credentials

    def refresh(self) -> int:
        """Look at the files at most every few seconds; reload them when they changed. The version."""
        now = time.monotonic()
        if now - self._checked < _CHANNEL_RECHECK_SECONDS:
            return self.version
        self._checked = now
        try:
            stamp = self.files.stamp()
            if stamp != self._stamp:
                self._credentials = self._load()
                self._stamp = stamp
                self.version += 1
                log.info("TLS client certificate reloaded", cert=str(self.files.cert))
        except (OSError, TlsError) as exc:
            log.warning(_NOT_YET, error=str(exc))
        return self.version


def secure_channel(
    address: str, tls: ChannelTls, options: list[tuple[str, Any]], *, server_name: str | None = None
) -> grpc.aio.Channel:
    """A channel to address over TLS. server_name: the name the server's certificate must carry
    (a storage node's id), whatever host the address names (a proxy, a NAT)."""
    if server_name:
        options = [*options, ("grpc.ssl_target_name_override", server_name)]
    return grpc.aio.secure_channel(address, tls.credentials(), options=options)


# Principals by the peer certificate's PEM: parsing one costs far more than a call.
_PEERS: OrderedDict[bytes, Principal | None] = OrderedDict()
_PEERS_MAX = 1024


def peer_principal(context: Any) -> Principal | None:
    """Who the peer's certificate (already verified against the CA by the handshake) says it is.

    None without a certificate, or for one whose subject names no pairdb role.
    """
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return None
    pem: bytes = pems[0]
    if pem in _PEERS:
        _PEERS.move_to_end(pem)
        return _PEERS[pem]
    principal = principal_of(pem)
    _PEERS[pem] = principal
    if len(_PEERS) > _PEERS_MAX:
        _PEERS.popitem(last=False)
    return principal


def principal_of(pem: bytes) -> Principal | None:
    try:
        subject = x509.load_pem_x509_certificate(pem).subject
    except ValueError:
        return None
    units = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        role = Role(str(units[0].value)) if units else None
    except ValueError:
        role = None
    if role is None or role.tenant_scoped or not names:
        return None
    return Principal(str(names[0].value), role)
