-- The outbox also carries capsule run records (SQLite): the step of a
-- capsule run that ends the run writes its record in the transaction of
-- its billing event (`ExecuteCapsuleStep`). SQLite cannot change a CHECK
-- constraint in place, so the table is rebuilt under its name, every row
-- and its `seq` kept.

ALTER TABLE outbox RENAME TO outbox_v1;

CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY,
    kind            TEXT   NOT NULL CHECK (kind IN ('billing', 'audit', 'capsule_run')),
    event_id        TEXT   NOT NULL,
    payload         BLOB  NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT   NOT NULL DEFAULT '',
    mac_key_id      TEXT   NOT NULL,
    mac             BLOB  NOT NULL
);

INSERT INTO outbox (seq, kind, event_id, payload, created_at, attempts, next_attempt_at, last_error, mac_key_id, mac)
    SELECT seq, kind, event_id, payload, created_at, attempts, next_attempt_at, last_error, mac_key_id, mac
    FROM outbox_v1;

DROP TABLE outbox_v1;
