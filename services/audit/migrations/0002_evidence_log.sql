-- The evidence log: one row per leaf, in index order. `leaf` holds the
-- canonical leaf bytes (docs/evidence-encoding.md); the other columns are
-- copies of its fields for Query.
CREATE TABLE entries (
    idx            {{INTEGER |BIGINT }}PRIMARY KEY,
    record_id      TEXT    NOT NULL UNIQUE,
    leaf           TEXT    NOT NULL,
    leaf_hash      {{BLOB    |BYTEA   }}NOT NULL,
    time_ns        {{INTEGER |BIGINT  }}NOT NULL,
    incident_ref   TEXT    NOT NULL,
    nhi_id         TEXT    NOT NULL,
    workload       TEXT    NOT NULL,
    human_subject  TEXT    NOT NULL,
    action         TEXT    NOT NULL,
    correlation_id TEXT    NOT NULL
);
CREATE INDEX entries_leaf_hash ON entries (leaf_hash);
CREATE INDEX entries_incident ON entries (incident_ref, idx) WHERE incident_ref <> '';
CREATE INDEX entries_nhi ON entries (nhi_id, idx) WHERE nhi_id <> '';
CREATE INDEX entries_correlation ON entries (correlation_id, idx) WHERE correlation_id <> '';
CREATE INDEX entries_action ON entries (action, idx);
CREATE INDEX entries_workload ON entries (workload, idx);
CREATE INDEX entries_human ON entries (human_subject, idx) WHERE human_subject <> '';
CREATE INDEX entries_time ON entries (time_ns);

-- Signed checkpoints, as published.
CREATE TABLE checkpoints (
    tree_size     {{INTEGER |BIGINT }}PRIMARY KEY,
    root_hash     {{BLOB    |BYTEA   }}NOT NULL,
    note          TEXT    NOT NULL,
    created_at_ns {{INTEGER |BIGINT  }}NOT NULL
);
