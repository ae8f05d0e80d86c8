-- Proofs asked by leaf hash are answered from the log's in-memory tree,
-- which already holds every leaf hash (docs/adr/0013). An index on a
-- random 32-byte key cost every append a page write of its own.
DROP INDEX IF EXISTS entries_leaf_hash;
