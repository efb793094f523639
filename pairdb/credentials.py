"""Where a client finds its credentials, the same for `pairdb` commands and programs.

The API key: env PAIRDB_API_KEY, else the file an explicit path or
PAIRDB_API_KEY_FILE names, else `.pairdb/admin.key` when it exists (what
`pairdb dev` writes in the directory it runs in). The CA to check coordinators
by: an explicit path, else PAIRDB_TLS_CA, else `.pairdb/certs/ca.crt` when it
exists; no CA means plaintext, which a coordinator accepts on loopback only.

    client = pairdb.Client(address, **pairdb.credentials.found())
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pairdb.security.tls import TlsFiles

DEV_DATA_DIR = Path(".pairdb")
DEV_ADMIN_KEY_FILE = DEV_DATA_DIR / "admin.key"
DEV_CERTS_DIR = DEV_DATA_DIR / "certs"
DEV_CA = DEV_CERTS_DIR / "ca.crt"


class CredentialsError(Exception):
    """A named credentials file cannot be read; the message names it."""


def read_key_file(path: str | os.PathLike[str]) -> str:
    """The API key kept in a file (the first line), as `pairdb init` and `pairdb dev` write it."""
    with open(path) as f:
        return f.readline().strip()


def api_key(key_file: str | os.PathLike[str] | None = None) -> str | None:
    if os.environ.get("PAIRDB_API_KEY"):
        return os.environ["PAIRDB_API_KEY"].strip()
    named = key_file or os.environ.get("PAIRDB_API_KEY_FILE")
    path = Path(named) if named else (DEV_ADMIN_KEY_FILE if DEV_ADMIN_KEY_FILE.is_file() else None)
    if path is None:
        return None
    try:
        return read_key_file(path)
    except OSError as exc:
        raise CredentialsError(f"cannot read the API key file {path}: {exc.strerror}") from None


def tls(
    ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None
) -> TlsFiles | None:
    """TlsFiles of the given paths (TlsError when half given or missing), else the found CA, else None."""
    files = TlsFiles.from_options(ca or os.environ.get("PAIRDB_TLS_CA"), cert, key)
    if files is None and DEV_CA.is_file():
        return TlsFiles(DEV_CA)
    return files


def found() -> dict[str, Any]:
    """Client keyword arguments from the environment and `.pairdb/`, as `pairdb` commands find them."""
    return {"api_key": api_key(), "tls": tls()}
