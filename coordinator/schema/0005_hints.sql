-- pairdb metadata, version 5: hinted handoff (coordinator/hints.py, coordinator/handoff.py).

-- A write a replica missed because it could not take it then (down, unreachable,
-- too slow), kept for it until it answers again. The record as the write sent it;
-- epoch is the registry epoch the write was routed by.
CREATE TABLE hints (
    id         bigserial PRIMARY KEY,
    node_id    text NOT NULL,
    tenant_id  text NOT NULL,
    key        text NOT NULL,
    value      bytea NOT NULL,
    -- A version's hlc is an unsigned 64-bit number stored as (hlc - 2^63) in a
    -- bigint, as ring tokens are.
    hlc        bigint NOT NULL,
    origin     integer NOT NULL,
    tombstone  boolean NOT NULL,
    epoch      bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Replay takes each node's oldest hints first.
CREATE INDEX hints_node ON hints (node_id, id);

-- Each node's number of hints, changed in the transaction of every insert and
-- delete of its hints: the bound per node is checked under this row's lock
-- (exact with several coordinators flushing at once), and replay finds the
-- nodes with hints without scanning the hints.
CREATE TABLE hint_counts (
    node_id text PRIMARY KEY,
    pending bigint NOT NULL DEFAULT 0 CHECK (pending >= 0)
);
