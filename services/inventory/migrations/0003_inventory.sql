-- Inventory: identities and everything known about them. Times are
-- nanoseconds since the Unix epoch. The same statements run on PostgreSQL
-- (see {{../postgres), |../sqlite), }}so columns use types both engines read alike.

CREATE TABLE identities (
    id                        TEXT    PRIMARY KEY,
    kind                      TEXT    NOT NULL,
    display_name              TEXT    NOT NULL,
    source_system             TEXT    NOT NULL,
    external_id               TEXT    NOT NULL,
    environment               TEXT    NOT NULL,
    business_service          TEXT    NOT NULL,
    workload                  TEXT    NOT NULL,
    classification            TEXT    NOT NULL,
    purpose                   TEXT    NOT NULL,
    business_owner            TEXT    NOT NULL,
    business_owner_kind       TEXT    NOT NULL,
    business_owner_contact    TEXT    NOT NULL,
    technical_owner           TEXT    NOT NULL,
    technical_owner_kind      TEXT    NOT NULL,
    technical_owner_contact   TEXT    NOT NULL,
    unowned                   BIGINT  NOT NULL,
    -- unowned, or an owner marked departed: the orphaned report.
    orphaned                  BIGINT  NOT NULL,
    state                     TEXT    NOT NULL,
    spiffe_id                 TEXT    NOT NULL,
    labels                    TEXT    NOT NULL,
    created_at_ns             BIGINT  NOT NULL,
    updated_at_ns             BIGINT  NOT NULL,
    state_changed_at_ns       BIGINT  NOT NULL,
    expires_at_ns             BIGINT,
    last_rotated_at_ns        BIGINT,
    last_used_at_ns           BIGINT,
    -- Report keys kept with each write so every posture report is an
    -- index range: last use (or creation), last rotation (or creation),
    -- the oldest activity of any granted entitlement, distinct consumers.
    active_at_ns              BIGINT  NOT NULL,
    rotated_at_ns             BIGINT  NOT NULL,
    entitlement_idle_since_ns BIGINT,
    consumer_count            BIGINT  NOT NULL,
    signal_score              BIGINT  NOT NULL,
    signal_summary            TEXT    NOT NULL,
    version                   BIGINT  NOT NULL,
    UNIQUE (source_system, external_id)
);
CREATE INDEX identities_kind ON identities (kind, id);
CREATE INDEX identities_state ON identities (state, id);
CREATE INDEX identities_environment ON identities (environment, id);
CREATE INDEX identities_service ON identities (business_service, id);
CREATE INDEX identities_business_owner ON identities (business_owner, id);
CREATE INDEX identities_technical_owner ON identities (technical_owner, id);
CREATE INDEX identities_orphaned ON identities (id) WHERE orphaned = 1;
CREATE INDEX identities_active ON identities (active_at_ns, id);
CREATE INDEX identities_rotated ON identities (rotated_at_ns, id);
CREATE INDEX identities_expires ON identities (expires_at_ns, id) WHERE expires_at_ns IS NOT NULL;
CREATE INDEX identities_no_expiry ON identities (id) WHERE expires_at_ns IS NULL;
CREATE INDEX identities_idle ON identities (entitlement_idle_since_ns, id) WHERE entitlement_idle_since_ns IS NOT NULL;
CREATE INDEX identities_shared ON identities (consumer_count, id) WHERE consumer_count > 1;

CREATE TABLE identity_labels (
    identity_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (identity_id, key)
);
CREATE INDEX identity_labels_key ON identity_labels (key, value, identity_id);

CREATE TABLE transitions (
    id            TEXT   PRIMARY KEY,
    identity_id   TEXT   NOT NULL,
    from_state    TEXT   NOT NULL,
    to_state      TEXT   NOT NULL,
    actor         TEXT   NOT NULL,
    reason        TEXT   NOT NULL,
    incident_ref  TEXT   NOT NULL,
    reversible    BIGINT NOT NULL,
    at_ns         BIGINT NOT NULL
);
CREATE INDEX transitions_identity ON transitions (identity_id, id);

CREATE TABLE signals (
    id             TEXT   PRIMARY KEY,
    identity_id    TEXT   NOT NULL,
    kind           TEXT   NOT NULL,
    severity       TEXT   NOT NULL,
    source         TEXT   NOT NULL,
    observed_at_ns BIGINT NOT NULL,
    evidence_ref   TEXT   NOT NULL,
    summary        TEXT   NOT NULL,
    status         TEXT   NOT NULL,
    resolution     TEXT   NOT NULL,
    resolved_at_ns BIGINT,
    reported_by    TEXT   NOT NULL
);
CREATE INDEX signals_identity ON signals (identity_id, id);

CREATE TABLE entitlements (
    identity_id     TEXT   NOT NULL,
    system          TEXT   NOT NULL,
    permission      TEXT   NOT NULL,
    resource        TEXT   NOT NULL,
    granted         BIGINT NOT NULL,
    granted_at_ns   BIGINT,
    last_used_at_ns BIGINT,
    use_count       BIGINT NOT NULL,
    PRIMARY KEY (identity_id, system, permission, resource)
{{) WITHOUT ROWID;|);}}

CREATE TABLE identity_consumers (
    identity_id   TEXT   NOT NULL,
    consumer      TEXT   NOT NULL,
    first_seen_ns BIGINT NOT NULL,
    last_seen_ns  BIGINT NOT NULL,
    uses          BIGINT NOT NULL,
    PRIMARY KEY (identity_id, consumer)
{{) WITHOUT ROWID;|);}}

CREATE TABLE owners (
    name          TEXT   PRIMARY KEY,
    departed      BIGINT NOT NULL,
    reason        TEXT   NOT NULL,
    updated_at_ns BIGINT NOT NULL
);

CREATE TABLE registration_entries (
    id            TEXT   PRIMARY KEY,
    spiffe_id     TEXT   NOT NULL,
    parent_id     TEXT   NOT NULL,
    selectors     TEXT   NOT NULL,
    x509_ttl      BIGINT NOT NULL,
    jwt_ttl       BIGINT NOT NULL,
    identity_id   TEXT   NOT NULL,
    created_at_ns BIGINT NOT NULL,
    UNIQUE (parent_id, spiffe_id, selectors)
);
CREATE INDEX registration_entries_identity ON registration_entries (identity_id, id);

CREATE TABLE registration_selectors (
    selector TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    PRIMARY KEY (selector, entry_id)
);

CREATE TABLE review_campaigns (
    id            TEXT   PRIMARY KEY,
    name          TEXT   NOT NULL,
    filter        TEXT   NOT NULL,
    deadline_ns   BIGINT NOT NULL,
    state         TEXT   NOT NULL,
    created_by    TEXT   NOT NULL,
    created_at_ns BIGINT NOT NULL
);
CREATE INDEX review_campaigns_open ON review_campaigns (deadline_ns) WHERE state = 'open';

CREATE TABLE review_items (
    campaign_id       TEXT   NOT NULL,
    identity_id       TEXT   NOT NULL,
    display_name      TEXT   NOT NULL,
    owners            TEXT   NOT NULL,
    decision          TEXT   NOT NULL,
    reviewer          TEXT   NOT NULL,
    reason            TEXT   NOT NULL,
    new_expires_at_ns BIGINT,
    decided_at_ns     BIGINT,
    PRIMARY KEY (campaign_id, identity_id)
);
CREATE INDEX review_items_decision ON review_items (campaign_id, decision, identity_id);
