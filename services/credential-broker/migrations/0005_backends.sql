-- External credential backends: which backend holds a lease's credential,
-- its secret sealed under the key-encryption key (so a rotation can prove,
-- by logging in, that the old one is refused; wiped once it is revoked),
-- and how far each backend has followed the revocation log.
ALTER TABLE leases ADD COLUMN backend TEXT NOT NULL DEFAULT '';
ALTER TABLE leases ADD COLUMN sealed_secret {{BLOB;|BYTEA;}}
CREATE TABLE backend_cursors (
    backend   TEXT    PRIMARY KEY,
    sequence  BIGINT  NOT NULL
);
