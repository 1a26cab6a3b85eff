-- Submissions, their append-only review history, installations and their
-- revisions, publisher thresholds and the delivery outbox of the capsule
-- repository. Every row that carries meaning holds a MAC (`mac`,
-- `mac_key_id`) over all its meaningful columns, made with the
-- repository's keyring; a review row's MAC also covers the MAC of the row
-- before it, so that a history row deleted or rewritten is detected.

CREATE TABLE publisher_thresholds (
    publisher   TEXT   PRIMARY KEY,
    threshold   BIGINT NOT NULL CHECK (threshold >= 1),
    set_by      TEXT   NOT NULL,
    set_at      BIGINT NOT NULL,
    mac_key_id  TEXT   NOT NULL,
    mac         BYTEA  NOT NULL
);

-- Ids are 128 random bits: unique across tenants, and every read is
-- scoped by tenant as well.
CREATE TABLE submissions (
    submission_id  TEXT   PRIMARY KEY,
    tenant         TEXT   NOT NULL,
    capsule        TEXT   NOT NULL,
    version        TEXT   NOT NULL,
    bundle         BYTEA  NOT NULL,
    bundle_sha256  BYTEA  NOT NULL,
    attestation    BYTEA  NOT NULL,
    publisher      TEXT   NOT NULL,
    signer_key_ids TEXT   NOT NULL,
    submitter      TEXT   NOT NULL,
    source         TEXT   NOT NULL,
    state          TEXT   NOT NULL CHECK (state IN ('pending', 'in_review', 'approved', 'rejected', 'changes_requested')),
    review_seq     BIGINT NOT NULL,
    submitted_at   BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    mac_key_id     TEXT   NOT NULL,
    mac            BYTEA  NOT NULL,
    UNIQUE (tenant, capsule, version)
);

-- Append-only: rows are inserted with the state change they record, in
-- its transaction, and never updated nor deleted.
CREATE TABLE review_history (
    submission_id TEXT   NOT NULL REFERENCES submissions (submission_id),
    sequence      BIGINT NOT NULL CHECK (sequence >= 1),
    review_id     TEXT   NOT NULL,
    tenant        TEXT   NOT NULL,
    reviewer      TEXT   NOT NULL,
    decision      TEXT   NOT NULL,
    from_state    TEXT   NOT NULL,
    to_state      TEXT   NOT NULL,
    comment       TEXT   NOT NULL,
    reviewed_at   BIGINT NOT NULL,
    mac_key_id    TEXT   NOT NULL,
    mac           BYTEA  NOT NULL,
    PRIMARY KEY (submission_id, sequence)
);

-- One installation per tenant, environment and capsule. `revision` is the
-- latest revision written; an update or rollback moves it forward only
-- from the revision its caller saw (compare-and-set in the UPDATE itself,
-- so two replicas agree); `active_revision` is the latest INSTALLED one.
CREATE TABLE installations (
    installation_id TEXT   PRIMARY KEY,
    tenant          TEXT   NOT NULL,
    environment     TEXT   NOT NULL,
    capsule         TEXT   NOT NULL,
    revision        BIGINT NOT NULL,
    active_revision BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    created_by      TEXT   NOT NULL,
    updated_at      BIGINT NOT NULL,
    mac_key_id      TEXT   NOT NULL,
    mac             BYTEA  NOT NULL,
    UNIQUE (tenant, environment, capsule)
);

CREATE TABLE installation_revisions (
    installation_id TEXT   NOT NULL REFERENCES installations (installation_id),
    revision        BIGINT NOT NULL CHECK (revision >= 1),
    tenant          TEXT   NOT NULL,
    submission_id   TEXT   NOT NULL REFERENCES submissions (submission_id),
    version         TEXT   NOT NULL,
    action          TEXT   NOT NULL CHECK (action IN ('create', 'update', 'rollback')),
    status          TEXT   NOT NULL CHECK (status IN ('pending', 'installed', 'failed')),
    failure_reason  TEXT   NOT NULL,
    actor           TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    mac_key_id      TEXT   NOT NULL,
    mac             BYTEA  NOT NULL,
    PRIMARY KEY (installation_id, revision)
);

-- Audit events for Analytics, written in the same transaction as what they
-- record and deleted once Analytics acknowledged them.
CREATE TABLE outbox (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            TEXT   NOT NULL CHECK (kind IN ('audit')),
    event_id        TEXT   NOT NULL,
    payload         BYTEA  NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT   NOT NULL DEFAULT '',
    mac_key_id      TEXT   NOT NULL,
    mac             BYTEA  NOT NULL
);
