"""`pairdb cert`: a cluster CA and the certificates it signs, each naming its holder and role."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from pairdb.cli import main
from pairdb.security import certs
from pairdb.security.roles import Principal, Role
from pairdb.security.tls import TlsError, TlsFiles, principal_of


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_cli_makes_a_ca_a_node_and_a_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "certs")
    assert main(["cert", "create-ca", "--certs-dir", d]) == 0
    assert main(["cert", "create-node", "n1", "--host", "10.0.0.5", "--host", "n1.db", "--certs-dir", d]) == 0
    assert main(["cert", "create-node", "c1", "--role", "coordinator", "--certs-dir", d]) == 0
    assert main(["cert", "create-client", "alice", "--certs-dir", d]) == 0
    assert main(["cert", "show", f"{d}/n1.crt"]) == 0
    shown = capsys.readouterr().out
    assert "OU=storage-node" in shown and "10.0.0.5" in shown and "n1.db" in shown
    root = tmp_path / "certs"
    assert _mode(root) == 0o700
    for key in ("ca.key", "n1.key", "c1.key", "alice.key"):
        assert _mode(root / key) == 0o600, key
    assert principal_of((root / "n1.crt").read_bytes()) == Principal("n1", Role.STORAGE_NODE)
    assert principal_of((root / "alice.crt").read_bytes()) == Principal("alice", Role.ADMIN)
    node = x509.load_pem_x509_certificate((root / "n1.crt").read_bytes())
    names = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # A node is checked by its id, whatever address it is reached at.
    assert "n1" in names.get_values_for_type(x509.DNSName)


def test_nothing_is_replaced_by_accident(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    assert main(["cert", "create-node", "n1", "--certs-dir", d]) == 2
    assert "pairdb cert create-ca" in capsys.readouterr().err
    assert main(["cert", "create-ca", "--certs-dir", d]) == 0
    assert main(["cert", "create-ca", "--certs-dir", d]) == 2
    assert "would orphan every certificate" in capsys.readouterr().err
    assert main(["cert", "create-node", "n1", "--certs-dir", d]) == 0
    before = (tmp_path / "n1.crt").read_bytes()
    assert main(["cert", "create-node", "n1", "--certs-dir", d]) == 2
    assert main(["cert", "create-node", "n1", "--overwrite", "--certs-dir", d]) == 0
    assert (tmp_path / "n1.crt").read_bytes() != before


def test_tls_options_come_whole_or_not_at_all(tmp_path: Path) -> None:
    assert TlsFiles.from_options(None, None, None) is None
    with pytest.raises(TlsError, match="need --tls-ca"):
        TlsFiles.from_options(None, tmp_path / "a.crt", tmp_path / "a.key")
    with pytest.raises(TlsError, match="go together"):
        TlsFiles.from_options(tmp_path / "ca.crt", tmp_path / "a.crt", None)
    with pytest.raises(TlsError, match="does not exist"):
        TlsFiles.from_options(tmp_path / "ca.crt", None, None)


def test_a_pair_caught_mid_rotation_is_not_loaded(tmp_path: Path) -> None:
    certs.create_ca(tmp_path)
    first = certs.create_cert(tmp_path, "n1", Role.STORAGE_NODE)
    old_cert = first.cert.read_bytes()
    certs.create_cert(tmp_path, "n1", Role.STORAGE_NODE, overwrite=True)
    first.cert.write_bytes(old_cert)  # new key, old certificate
    with pytest.raises(TlsError, match="not the private key"):
        TlsFiles(tmp_path / "ca.crt", first.cert, first.key).read()
