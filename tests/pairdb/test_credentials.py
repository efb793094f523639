"""pairdb.credentials: where `pairdb` commands and programs find their API key and the cluster's CA."""

from __future__ import annotations

from pathlib import Path

import pytest

from pairdb import credentials
from pairdb.security import certs
from pairdb.security.tls import TlsError, TlsFiles


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("PAIRDB_API_KEY", "PAIRDB_API_KEY_FILE", "PAIRDB_TLS_CA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_nothing_found_means_no_key_and_plaintext(here: Path) -> None:
    assert credentials.found() == {"api_key": None, "tls": None}


def test_pairdb_devs_directory_is_found_from_where_it_ran(here: Path) -> None:
    certs.create_ca(here / ".pairdb" / "certs")
    (here / ".pairdb" / "admin.key").write_text("pdb_key\n")
    assert credentials.found() == {"api_key": "pdb_key", "tls": TlsFiles(Path(".pairdb/certs/ca.crt"))}


def test_the_environment_beats_the_dev_directory(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (here / ".pairdb").mkdir()
    (here / ".pairdb" / "admin.key").write_text("pdb_dev\n")
    (here / "ops.key").write_text("pdb_file\n")
    monkeypatch.setenv("PAIRDB_API_KEY_FILE", str(here / "ops.key"))
    assert credentials.api_key() == "pdb_file"
    assert credentials.api_key(here / ".pairdb" / "admin.key") == "pdb_dev"  # an explicit path first
    monkeypatch.setenv("PAIRDB_API_KEY", "pdb_env")
    assert credentials.api_key() == "pdb_env"
    certs.create_ca(here / "other")
    monkeypatch.setenv("PAIRDB_TLS_CA", str(here / "other" / "ca.crt"))
    assert credentials.tls() == TlsFiles(here / "other" / "ca.crt")


def test_a_named_file_that_cannot_be_read_is_a_clear_error(here: Path) -> None:
    with pytest.raises(credentials.CredentialsError, match="cannot read the API key file"):
        credentials.api_key(here / "absent.key")
    with pytest.raises(TlsError, match="does not exist"):
        credentials.tls(here / "absent.crt")
