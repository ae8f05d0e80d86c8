-- Rotations: the new lease, the old ones, and whether their revocation was
-- confirmed. Times are Unix nanoseconds; lease ids are newline-joined.
CREATE TABLE rotations (
    rotation_id      TEXT    PRIMARY KEY,
    identity_id      TEXT    NOT NULL,
    kind             BIGINT  NOT NULL,
    new_lease_id     TEXT    NOT NULL,
    old_lease_ids    TEXT    NOT NULL,
    -- 1 overlap, 2 confirmed, 3 failed
    state            BIGINT  NOT NULL,
    revoke_at_ns     BIGINT  NOT NULL,
    confirmed_at_ns  BIGINT  NOT NULL DEFAULT 0,
    detail           TEXT    NOT NULL DEFAULT '',
    incident_ref     TEXT    NOT NULL,
    actor            TEXT    NOT NULL,
    created_at_ns    BIGINT  NOT NULL
);
CREATE INDEX rotations_due ON rotations (state, revoke_at_ns);
