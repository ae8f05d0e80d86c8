-- Policy set versions and their activation history. The active version is
-- the latest activation's.
CREATE TABLE policy_sets (
    version        BIGINT PRIMARY KEY,
    policies       TEXT   NOT NULL,
    description    TEXT   NOT NULL,
    policy_ids     TEXT   NOT NULL,
    uploaded_by    TEXT   NOT NULL,
    created_at_ns  BIGINT NOT NULL
);

CREATE TABLE activations (
    seq            {{INTEGER PRIMARY KEY AUTOINCREMENT,|BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,}}
    version        BIGINT  NOT NULL,
    previous       BIGINT  NOT NULL,
    activated_by   TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    at_ns          BIGINT  NOT NULL
);
