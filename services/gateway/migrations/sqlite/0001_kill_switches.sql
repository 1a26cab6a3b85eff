-- Kill switches: the current state of each (scope, target), and every change.
CREATE TABLE kill_switches (
    scope               TEXT    NOT NULL,
    target              TEXT    NOT NULL,
    engaged             INTEGER NOT NULL CHECK (engaged IN (0, 1)),
    reason              TEXT    NOT NULL,
    set_by              TEXT    NOT NULL,
    set_at_ms           BIGINT  NOT NULL,
    retry_after_seconds INTEGER NOT NULL,
    PRIMARY KEY (scope, target)
);

CREATE TABLE kill_switch_audit (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    scope               TEXT    NOT NULL,
    target              TEXT    NOT NULL,
    engaged             INTEGER NOT NULL CHECK (engaged IN (0, 1)),
    reason              TEXT    NOT NULL,
    set_by              TEXT    NOT NULL,
    tenant              TEXT    NOT NULL,
    request_id          TEXT    NOT NULL,
    set_at_ms           BIGINT  NOT NULL
);

-- Moderation rejections, for audit.
CREATE TABLE moderation_rejections (
    decision_id TEXT   PRIMARY KEY,
    method      TEXT   NOT NULL,
    tenant      TEXT   NOT NULL,
    subject     TEXT   NOT NULL,
    request_id  TEXT   NOT NULL,
    findings    TEXT   NOT NULL,
    decided_at_ms BIGINT NOT NULL
);
