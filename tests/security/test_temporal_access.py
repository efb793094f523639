"""How pairdb's processes reach Temporal: plaintext on a dev server, TLS with a CA and client pair,
or the system's roots with an API key (which never travels in plaintext)."""

from __future__ import annotations

from pathlib import Path

from temporalio.service import TLSConfig

from pairdb.security import certs
from pairdb.security.roles import Role
from pairdb.security.temporal_access import TemporalAccess
from pairdb.security.tls import TlsFiles


def test_by_default_temporal_is_reached_as_a_dev_server_is() -> None:
    assert TemporalAccess().connect_options() == {}


def test_a_ca_and_a_client_pair_make_a_tls_config(tmp_path: Path) -> None:
    certs.create_ca(tmp_path)
    issued = certs.create_cert(tmp_path, "worker", Role.WORKER)
    options = TemporalAccess(TlsFiles(tmp_path / "ca.crt", issued.cert, issued.key)).connect_options()
    tls = options["tls"]
    assert isinstance(tls, TLSConfig)
    assert tls.server_root_ca_cert == (tmp_path / "ca.crt").read_bytes()
    assert (tls.client_cert, tls.client_private_key) == (issued.cert.read_bytes(), issued.key.read_bytes())


def test_an_api_key_always_goes_over_tls() -> None:
    assert TemporalAccess(api_key="tk").connect_options() == {"tls": True, "api_key": "tk"}
    assert TemporalAccess(system_tls=True).connect_options() == {"tls": True}
