-- Approval requests and their reviews, grants, and break-glass post-action
-- reviews. Times are Unix seconds; lists of names are newline-joined.
CREATE TABLE approval_requests (
    id                   TEXT    PRIMARY KEY,
    principal            TEXT    NOT NULL,
    principal_issuer     TEXT    NOT NULL,
    action               TEXT    NOT NULL,
    resource_id          TEXT    NOT NULL,
    incident_ref         TEXT    NOT NULL,
    requester            TEXT    NOT NULL,
    reason               TEXT    NOT NULL,
    approvals_required   BIGINT  NOT NULL,
    approver             TEXT    NOT NULL,
    suggested_reviewers  TEXT    NOT NULL,
    window_start         BIGINT  NOT NULL,
    window_end           BIGINT  NOT NULL,
    claim_by             BIGINT  NOT NULL,
    policy_set_version   BIGINT  NOT NULL,
    decision_id          TEXT    NOT NULL,
    correlation_id       TEXT    NOT NULL,
    state                TEXT    NOT NULL,
    created_at           BIGINT  NOT NULL,
    expires_at           BIGINT  NOT NULL,
    decided_at           BIGINT  NOT NULL DEFAULT 0,
    grant_id             TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX approval_requests_by_state ON approval_requests (state, expires_at);
CREATE INDEX approval_requests_by_match ON approval_requests (principal, action, resource_id, state);
CREATE INDEX approval_requests_by_incident ON approval_requests (incident_ref, state);

CREATE TABLE approval_reviews (
    request_id       TEXT    NOT NULL REFERENCES approval_requests (id),
    reviewer         TEXT    NOT NULL,
    reviewer_issuer  TEXT    NOT NULL,
    carried_by       TEXT    NOT NULL,
    verdict          TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    at               BIGINT  NOT NULL,
    PRIMARY KEY (request_id, reviewer)
);

CREATE TABLE grants (
    id                   TEXT    PRIMARY KEY,
    principal            TEXT    NOT NULL,
    action               TEXT    NOT NULL,
    resource_id          TEXT    NOT NULL,
    incident_ref         TEXT    NOT NULL,
    approval_request_id  TEXT    NOT NULL,
    approvers            TEXT    NOT NULL,
    break_glass          BOOLEAN NOT NULL,
    window_start         BIGINT  NOT NULL,
    window_end           BIGINT  NOT NULL,
    claim_by             BIGINT  NOT NULL,
    single_use           BOOLEAN NOT NULL,
    state                TEXT    NOT NULL,
    claimed_at           BIGINT  NOT NULL DEFAULT 0,
    ended_at             BIGINT  NOT NULL DEFAULT 0,
    end_reason           TEXT    NOT NULL DEFAULT '',
    created_at           BIGINT  NOT NULL,
    correlation_id       TEXT    NOT NULL
);
CREATE INDEX grants_by_match ON grants (principal, action, resource_id, state);
CREATE INDEX grants_by_incident ON grants (incident_ref, state);

CREATE TABLE post_action_reviews (
    id               TEXT    PRIMARY KEY,
    grant_id         TEXT    NOT NULL REFERENCES grants (id),
    principal        TEXT    NOT NULL,
    action           TEXT    NOT NULL,
    resource_id      TEXT    NOT NULL,
    incident_ref     TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    assignees        TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    due_at           BIGINT  NOT NULL,
    flagged_at       BIGINT  NOT NULL DEFAULT 0,
    completed_by     TEXT    NOT NULL DEFAULT '',
    completion_note  TEXT    NOT NULL DEFAULT '',
    completed_at     BIGINT  NOT NULL DEFAULT 0,
    created_at       BIGINT  NOT NULL
);
CREATE INDEX post_action_reviews_by_state ON post_action_reviews (state, due_at);
