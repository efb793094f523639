-- pairdb metadata, version 6: API keys and the audit log (coordinator/auth_store.py).

-- A key's secret is never stored: only its SHA-256 (security/api_keys.py).
-- tenant_id names a tenant for the tenant-scoped roles only; tenants are never
-- deleted, so a key cannot outlive its tenant and no foreign key is needed.
CREATE TABLE api_keys (
    key_id        text PRIMARY KEY,
    name          text NOT NULL DEFAULT '',
    role          text NOT NULL CHECK (role IN ('admin', 'read-write', 'read-only')),
    tenant_id     text,
    secret_sha256 text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL DEFAULT '',
    revoked_at    timestamptz,
    CHECK ((role = 'admin') = (tenant_id IS NULL))
);
-- `pairdb init` asks whether an active admin key exists.
CREATE INDEX api_keys_active_role ON api_keys (role) WHERE revoked_at IS NULL;

-- Who did what to the cluster, when, and how it ended: every admin RPC, refused ones too.
-- target holds the request's fields (never a secret: no admin request carries one).
CREATE TABLE audit_log (
    id             bigserial PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    principal      text NOT NULL,
    role           text NOT NULL,
    action         text NOT NULL,
    target         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- OK or the gRPC status code's name.
    outcome        text NOT NULL,
    message        text NOT NULL DEFAULT '',
    coordinator_id text NOT NULL DEFAULT ''
);
