-- pairdb metadata, version 7: per-tenant limits (coordinator/quotas.py). 0 means unlimited.

-- Requests per second through each coordinator process (a batch's items count one each).
ALTER TABLE tenants ADD COLUMN max_ops_per_second bigint NOT NULL DEFAULT 0 CHECK (max_ops_per_second >= 0);
-- Bytes of live data (keys and values, once per key, not per replica) past which writes are refused.
ALTER TABLE tenants ADD COLUMN max_bytes bigint NOT NULL DEFAULT 0 CHECK (max_bytes >= 0);
