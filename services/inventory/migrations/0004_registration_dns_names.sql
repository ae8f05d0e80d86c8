-- DNS names an entry's X.509-SVIDs carry beside their SPIFFE ID, one per
-- line (SPIRE's dns_names).
ALTER TABLE registration_entries ADD COLUMN dns_names TEXT NOT NULL DEFAULT '';
