-- pairdb metadata, version 3: every ring change, not only additions.

-- A removal takes a node out (node_dead: one that cannot answer, whose data is
-- re-replicated from the survivors); a replacement gives a dead node's tokens
-- to a new node (node_id the new node, replaces the dead one); an RF change
-- moves one tenant to a new replication factor (node_id is '').
ALTER TABLE migrations DROP CONSTRAINT migrations_type_check;
ALTER TABLE migrations ADD CONSTRAINT migrations_type_check
    CHECK (type IN ('node_addition', 'node_removal', 'node_replacement', 'rf_change'));
ALTER TABLE migrations ADD COLUMN node_dead boolean NOT NULL DEFAULT false;
ALTER TABLE migrations ADD COLUMN replaces text NOT NULL DEFAULT '';
ALTER TABLE migrations ADD COLUMN tenant_id text NOT NULL DEFAULT '';
ALTER TABLE migrations ADD COLUMN replication_factor integer NOT NULL DEFAULT 0;

-- A node, or a tenant, has at most one unfinished ring change.
DROP INDEX migrations_one_open_per_node;
CREATE UNIQUE INDEX migrations_one_open_per_node ON migrations (node_id)
    WHERE status IN ('queued', 'in_progress') AND type <> 'rf_change';
CREATE UNIQUE INDEX migrations_one_open_per_replaced_node ON migrations (replaces)
    WHERE status IN ('queued', 'in_progress') AND replaces <> '';
CREATE UNIQUE INDEX migrations_one_open_per_tenant ON migrations (tenant_id)
    WHERE status IN ('queued', 'in_progress') AND type = 'rf_change';

-- The node a planned range is copied to; NULL in plans of additions made before
-- (their migration's node).
ALTER TABLE copy_ranges ADD COLUMN target text;
