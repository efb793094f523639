"""Who may talk to pairdb: certificates and TLS, roles, API keys (docs/security.md)."""
