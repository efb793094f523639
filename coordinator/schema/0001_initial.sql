-- pairdb metadata, version 1: tenants, nodes and their ring tokens, migrations,
-- the dual-write registry epoch and the coordinators' leases.

CREATE TABLE tenants (
    tenant_id          text PRIMARY KEY,
    replication_factor integer NOT NULL CHECK (replication_factor BETWEEN 1 AND 7),
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE nodes (
    node_id       text PRIMARY KEY,
    host          text NOT NULL,
    port          integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    -- joining: receives dual writes and the copy; active: in the ring;
    -- leaving: being removed; removed: out of the ring for good.
    status        text NOT NULL CHECK (status IN ('joining', 'active', 'leaving', 'removed')),
    virtual_nodes integer NOT NULL CHECK (virtual_nodes > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (host, port)
);

-- A token is an unsigned 64-bit ring position stored as (token - 2^63) in a bigint.
CREATE TABLE ring_tokens (
    token   bigint PRIMARY KEY,
    node_id text NOT NULL REFERENCES nodes (node_id) ON DELETE CASCADE
);
CREATE INDEX ring_tokens_node ON ring_tokens (node_id);

CREATE TABLE migrations (
    migration_id  text PRIMARY KEY,
    type          text NOT NULL CHECK (type IN ('node_addition', 'node_removal')),
    node_id       text NOT NULL,
    host          text NOT NULL,
    port          integer NOT NULL,
    virtual_nodes integer NOT NULL,
    workflow_id   text NOT NULL,
    -- queued, dual_write, data_copy, cutover, cleanup, done, cancelling, rolling_back
    phase         text NOT NULL,
    status        text NOT NULL
                  CHECK (status IN ('queued', 'in_progress', 'completed', 'failed', 'cancelled', 'rolled_back')),
    progress      jsonb NOT NULL DEFAULT '{}'::jsonb,
    error         text,
    started_by    text NOT NULL DEFAULT '',
    request_id    text NOT NULL DEFAULT '',
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    estimated_completion timestamptz
);
-- A node has at most one unfinished migration.
CREATE UNIQUE INDEX migrations_one_open_per_node ON migrations (node_id)
    WHERE status IN ('queued', 'in_progress');
-- Ring changes run one at a time: at most one migration is in progress.
CREATE UNIQUE INDEX migrations_one_in_progress ON migrations ((true)) WHERE status = 'in_progress';

-- The data copy's plan and checkpoints: one row per range the joining node gains.
CREATE TABLE copy_ranges (
    migration_id text NOT NULL REFERENCES migrations (migration_id) ON DELETE CASCADE,
    range_index  integer NOT NULL,
    start_token  bigint NOT NULL,  -- exclusive, stored as token - 2^63
    end_token    bigint NOT NULL,  -- inclusive
    sources      text[] NOT NULL,  -- old replicas to stream from, preferred first
    keys_estimate bigint NOT NULL DEFAULT 0,
    copied       boolean NOT NULL DEFAULT false,
    verified     boolean NOT NULL DEFAULT false,
    copies       integer NOT NULL DEFAULT 0,  -- times the range was copied (resume must not redo)
    keys         bigint NOT NULL DEFAULT 0,
    bytes        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (migration_id, range_index)
);

-- One row: the topology epoch. Every change to the ring, the tenants or an
-- in-flight migration's phase bumps it in the same transaction and NOTIFYs.
CREATE TABLE registry (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch     bigint NOT NULL
);
INSERT INTO registry (singleton, epoch) VALUES (true, 1);

-- Each coordinator's lease and the epoch it has applied; barriers wait on it.
CREATE TABLE coordinators (
    coordinator_id   text PRIMARY KEY,
    -- Tie-breaker in write versions: unique per coordinator, kept across restarts.
    origin           integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    address          text NOT NULL,
    applied_epoch    bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now()
);
