-- Registrations and identities are cached in memory by every running instance. Every change
-- to them bumps this version in the same transaction; instances that see it move forget
-- what they cached (a user removed by the CLI or by another instance is seen within 0.1 s).
CREATE TABLE directory_version (
    id INTEGER PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO directory_version (id, version) VALUES (1, 0);
