-- Closed incidents, and whether the credential broker has revoked their
-- leases yet (0: not yet; the closer retries until it has). Times are
-- Unix seconds.
CREATE TABLE closed_incidents (
    incident_ref        TEXT    PRIMARY KEY,
    closed_at           BIGINT  NOT NULL,
    reason              TEXT    NOT NULL,
    leases_revoked_at   BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX closed_incidents_pending ON closed_incidents (leases_revoked_at);
