-- Imports that carry what their sources say.
--
-- When the source system created the credential (an access key's creation,
-- a ServiceAccount's creationTimestamp), where the source says: the stale
-- and long-lived-secret reports count from it for a credential never used
-- or never rotated, so both are right on the day of import.
ALTER TABLE identities ADD COLUMN source_created_at_ns BIGINT;

-- The source system whose import granted an entitlement ('' for one
-- granted through GrantEntitlement): a re-import of that source withdraws
-- what it no longer names, and never touches what an operator granted.
ALTER TABLE entitlements ADD COLUMN imported_from TEXT NOT NULL DEFAULT '';
