-- pairdb metadata, version 4: anti-entropy repairs and tombstone GC.

-- How long a delete's tombstone is kept at least (Cassandra's gc_grace_seconds): a
-- replica may be down this long and still learn of the delete from a repair.
ALTER TABLE tenants ADD COLUMN gc_grace_seconds integer NOT NULL DEFAULT 864000
    CHECK (gc_grace_seconds >= 0);

-- One row per repair run (scheduled or asked for); repair_id is its workflow id.
CREATE TABLE repairs (
    repair_id     text PRIMARY KEY,
    tenant_id     text NOT NULL DEFAULT '',  -- '': every tenant
    status        text NOT NULL CHECK (status IN ('in_progress', 'completed', 'failed', 'cancelled')),
    progress      jsonb NOT NULL DEFAULT '{}'::jsonb,
    error         text,
    started_by    text NOT NULL DEFAULT '',
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    estimated_completion timestamptz
);

-- A repair's plan and checkpoints: one row per range of the ring it started on.
CREATE TABLE repair_ranges (
    repair_id     text NOT NULL REFERENCES repairs (repair_id) ON DELETE CASCADE,
    range_index   integer NOT NULL,
    start_token   bigint NOT NULL,  -- exclusive, stored as token - 2^63
    end_token     bigint NOT NULL,  -- inclusive
    keys_estimate bigint NOT NULL DEFAULT 0,
    repaired      boolean NOT NULL DEFAULT false,
    -- Every replica answered: the range's tombstones older than the repair could be purged.
    complete      boolean NOT NULL DEFAULT false,
    -- Records some replica lacked or held older, and were sent to it.
    streamed      bigint NOT NULL DEFAULT 0,
    -- Records read from the pieces that differed (narrowing down leaves the rest unread).
    scanned       bigint NOT NULL DEFAULT 0,
    purged        bigint NOT NULL DEFAULT 0,
    unreachable   text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (repair_id, range_index)
);

-- One running repair per scope (a tenant, or '' for every tenant).
CREATE UNIQUE INDEX repairs_one_running_per_scope ON repairs (tenant_id) WHERE status = 'in_progress';
