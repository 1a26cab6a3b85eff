-- Publisher keys, releases, content-addressed modules and the delivery
-- outbox of the tool registry. Every row that carries meaning holds a MAC
-- (`mac`, `mac_key_id`) over all its meaningful columns, made with the
-- registry's keyring; module rows are addressed by their own SHA-256.

CREATE TABLE publisher_keys (
    key_id        TEXT   PRIMARY KEY,
    name          TEXT   NOT NULL,
    public_key    BLOB  NOT NULL,
    added_at      BIGINT NOT NULL,
    added_by      TEXT   NOT NULL,
    retired_at    BIGINT,
    retired_by    TEXT   NOT NULL DEFAULT '',
    retire_reason TEXT   NOT NULL DEFAULT '',
    mac_key_id    TEXT   NOT NULL,
    mac           BLOB  NOT NULL
);

CREATE TABLE modules (
    sha256     BLOB  PRIMARY KEY,
    size       BIGINT NOT NULL,
    bytes      BLOB  NOT NULL
);

CREATE TABLE releases (
    tool              TEXT   NOT NULL,
    version           TEXT   NOT NULL,
    manifest          BLOB  NOT NULL,
    manifest_sha256   BLOB  NOT NULL,
    module_sha256     BLOB  NOT NULL REFERENCES modules (sha256),
    module_size       BIGINT NOT NULL,
    hmac_key_id       TEXT   NOT NULL,
    hmac              BLOB  NOT NULL,
    envelope          BLOB  NOT NULL,
    publisher_key_id  TEXT   NOT NULL REFERENCES publisher_keys (key_id),
    state             TEXT   NOT NULL CHECK (state IN ('active', 'revoked')),
    published_at      BIGINT NOT NULL,
    published_by      TEXT   NOT NULL,
    tenant            TEXT   NOT NULL,
    revoked_at        BIGINT,
    revoked_by        TEXT   NOT NULL DEFAULT '',
    revocation_reason TEXT   NOT NULL DEFAULT '',
    mac_key_id        TEXT   NOT NULL,
    mac               BLOB  NOT NULL,
    PRIMARY KEY (tool, version)
);

-- Events for Analytics (billing and audit), written in the same
-- transaction as what they record and deleted once Analytics acknowledged
-- them: nothing is lost while Analytics is down. A queue read in `seq`
-- order: no secondary index to maintain on the execution path (event ids
-- are 128 random bits, and Analytics is the one that holds them unique).
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY,
    kind            TEXT   NOT NULL CHECK (kind IN ('billing', 'audit')),
    event_id        TEXT   NOT NULL,
    payload         BLOB  NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT   NOT NULL DEFAULT '',
    mac_key_id      TEXT   NOT NULL,
    mac             BLOB  NOT NULL
);
