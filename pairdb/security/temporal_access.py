"""How pairdb's processes reach Temporal: TLS (the cluster's or a service's CA, optionally a
client certificate), or TLS with the system's roots and an API key (Temporal Cloud)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temporalio.service import TLSConfig

from pairdb.security.tls import TlsFiles


@dataclass(frozen=True)
class TemporalAccess:
    # The CA of the Temporal frontend's certificate, and a client pair if it asks for one.
    tls: TlsFiles | None = None
    # TLS with the system's trusted roots (no CA file).
    system_tls: bool = False
    api_key: str = ""

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for temporalio.client.Client.connect."""
        options: dict[str, Any] = {}
        if self.tls is not None:
            ca, cert, key = self.tls.read()
            options["tls"] = TLSConfig(server_root_ca_cert=ca, client_cert=cert, client_private_key=key)
        elif self.system_tls or self.api_key:
            options["tls"] = True  # an API key never travels in plaintext
        if self.api_key:
            options["api_key"] = self.api_key
        return options
