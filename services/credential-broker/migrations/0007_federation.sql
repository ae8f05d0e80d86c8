-- Trust-domain federation: the bundles of foreign trust domains as last
-- fetched from their bundle endpoints (or installed from the operator's
-- out-of-band copy), and the sequence numbers this trust domain's own
-- bundle has been published under.
CREATE TABLE federated_bundles (
    trust_domain  TEXT PRIMARY KEY,
    document      TEXT NOT NULL,
    sequence      BIGINT NOT NULL,
    fetched_at_ns BIGINT NOT NULL
);

CREATE TABLE bundle_publications (
    sequence        BIGINT PRIMARY KEY,
    digest          TEXT NOT NULL,
    published_at_ns BIGINT NOT NULL
);
