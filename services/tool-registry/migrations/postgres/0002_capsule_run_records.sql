-- The outbox also carries capsule run records (PostgreSQL): the step of a
-- capsule run that ends the run writes its record in the transaction of
-- its billing event (`ExecuteCapsuleStep`).

ALTER TABLE outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_check CHECK (kind IN ('billing', 'audit', 'capsule_run'));
