-- A closure's correlation id, carried to the broker's revocations of the
-- incident's leases (retried until the broker has them).
ALTER TABLE closed_incidents ADD COLUMN correlation_id TEXT NOT NULL DEFAULT '';
