-- pairdb metadata, version 2: coordinator identity and clock ceilings, tenants' epochs.

-- Each coordinator process holds its id's lease under an incarnation of its
-- own: a second process with the same id cannot renew it (nor issue versions
-- with the same origin) while the first one's lease is live.
ALTER TABLE coordinators ADD COLUMN incarnation text NOT NULL DEFAULT '';
-- Wall milliseconds this coordinator's versions stay below until its next
-- renewal; a restarted coordinator waits for its clock to pass it, so its
-- versions never go back across a restart.
ALTER TABLE coordinators ADD COLUMN hlc_ceiling_ms bigint NOT NULL DEFAULT 0;

-- The registry epoch that created the tenant: a request is never routed for a
-- tenant by a view of the ring older than the tenant itself.
ALTER TABLE tenants ADD COLUMN created_epoch bigint NOT NULL DEFAULT 0;
