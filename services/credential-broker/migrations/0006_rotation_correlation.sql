-- A rotation's correlation id, for the records of its revocation and
-- confirmation, which may come after the overlap.
ALTER TABLE rotations ADD COLUMN correlation_id TEXT NOT NULL DEFAULT '';
