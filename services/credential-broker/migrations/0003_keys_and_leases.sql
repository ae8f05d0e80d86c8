-- The CA hierarchy and JWT signing keys, each private key sealed under the
-- key-encryption key; leases; and the revocation log. Times are Unix
-- nanoseconds; lists (audiences, scopes) are newline-joined.
CREATE TABLE authority_keys (
    id             {{INTEGER |BIGINT  }}PRIMARY KEY,
    -- root, intermediate or jwt
    kind           TEXT    NOT NULL,
    -- PEM certificate (root, intermediate) or the public JWK (jwt)
    public         TEXT    NOT NULL,
    sealed_key     {{BLOB    |BYTEA    }}NOT NULL,
    kek_id         TEXT    NOT NULL,
    not_after_ns   BIGINT  NOT NULL,
    created_at_ns  BIGINT  NOT NULL,
    -- 0 while it signs; then when it was replaced (kept for the overlap)
    retired_at_ns  BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX authority_keys_by_kind ON authority_keys (kind, retired_at_ns);

CREATE TABLE leases (
    lease_id           TEXT    PRIMARY KEY,
    identity_id        TEXT    NOT NULL,
    kind               BIGINT  NOT NULL,
    holder             TEXT    NOT NULL,
    spiffe_id          TEXT    NOT NULL,
    incident_ref       TEXT    NOT NULL,
    window_start_ns    BIGINT  NOT NULL,
    window_end_ns      BIGINT  NOT NULL,
    issued_at_ns       BIGINT  NOT NULL,
    expires_at_ns      BIGINT  NOT NULL,
    max_expires_at_ns  BIGINT  NOT NULL,
    ttl_seconds        BIGINT  NOT NULL,
    renewable          BIGINT  NOT NULL,
    state              BIGINT  NOT NULL,
    credential_ref     TEXT    NOT NULL,
    token_hash         {{BLOB,|BYTEA,}}
    audience           TEXT    NOT NULL,
    scopes             TEXT    NOT NULL,
    decision_id        TEXT    NOT NULL,
    grant_id           TEXT    NOT NULL,
    revoked_at_ns      BIGINT  NOT NULL DEFAULT 0,
    revoked_by         TEXT    NOT NULL DEFAULT '',
    revoke_reason      TEXT    NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX leases_by_token ON leases (token_hash) WHERE token_hash IS NOT NULL;
CREATE INDEX leases_expiring ON leases (expires_at_ns) WHERE state = 1;
CREATE INDEX leases_by_identity ON leases (identity_id, lease_id);
CREATE INDEX leases_by_incident ON leases (incident_ref, lease_id);
CREATE INDEX leases_by_holder ON leases (holder, lease_id);

-- One row per lease that stopped being live, in commit order.
CREATE TABLE revocations (
    sequence       BIGINT  PRIMARY KEY,
    lease_id       TEXT    NOT NULL,
    state          BIGINT  NOT NULL,
    revoked_at_ns  BIGINT  NOT NULL,
    reason         TEXT    NOT NULL
);
