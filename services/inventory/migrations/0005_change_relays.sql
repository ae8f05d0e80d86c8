-- Inventory replicas on one PostgreSQL database relay each other's
-- identity changes (ADR 0023). One row per replica: until when (the
-- database's clock, in milliseconds) the facts-cache leases it granted may
-- still be live. Unused on SQLite, which has one process.
CREATE TABLE change_relays (
    replica          TEXT    PRIMARY KEY,
    leases_until_ms  BIGINT  NOT NULL
);
