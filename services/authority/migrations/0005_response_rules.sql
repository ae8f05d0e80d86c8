-- Response rule sets, versioned like policy sets; the signals the
-- responder has handled (at most once each) and the actions it took.
CREATE TABLE rule_sets (
    version        BIGINT PRIMARY KEY,
    policies       TEXT   NOT NULL,
    description    TEXT   NOT NULL,
    policy_ids     TEXT   NOT NULL,
    uploaded_by    TEXT   NOT NULL,
    created_at_ns  BIGINT NOT NULL
);

CREATE TABLE rule_activations (
    seq            {{INTEGER PRIMARY KEY AUTOINCREMENT,|BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,}}
    version        BIGINT  NOT NULL,
    previous       BIGINT  NOT NULL,
    activated_by   TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    at_ns          BIGINT  NOT NULL
);

-- One row per signal the responder has handled, matched or not.
CREATE TABLE response_signals (
    signal_id      TEXT    PRIMARY KEY,
    identity_id    TEXT    NOT NULL,
    rule_version   BIGINT  NOT NULL,
    handled_at     BIGINT  NOT NULL
);

CREATE TABLE response_actions (
    id                   TEXT    PRIMARY KEY,
    signal_id            TEXT    NOT NULL,
    identity_id          TEXT    NOT NULL,
    rule_id              TEXT    NOT NULL,
    rule_version         BIGINT  NOT NULL,
    action               TEXT    NOT NULL,
    outcome              TEXT    NOT NULL,
    detail               TEXT    NOT NULL,
    approval_request_id  TEXT    NOT NULL,
    at                   BIGINT  NOT NULL
);
CREATE INDEX response_actions_by_signal ON response_actions (signal_id);
CREATE INDEX response_actions_by_identity ON response_actions (identity_id, id);

-- Where the responder is in inventory's signal feed.
CREATE TABLE response_cursor (
    name      TEXT PRIMARY KEY,
    after_id  TEXT NOT NULL
);
