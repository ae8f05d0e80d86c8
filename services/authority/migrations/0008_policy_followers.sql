-- One row per authority replica on PostgreSQL: the last policy-set
-- activation it has seen (its seq) and until when, by the database's
-- clock in ms, it decides without looking again. An activation returns
-- once no live replica is behind it (ADR 0026). Unused on SQLite, where
-- one process serves.
CREATE TABLE policy_followers (
    replica          TEXT   PRIMARY KEY,
    seen_seq         BIGINT NOT NULL,
    decides_until_ms BIGINT NOT NULL
);
