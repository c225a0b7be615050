-- Turns the ingress accepted while Kafka would not take them: relayed to the requests
-- topic in id order once it does (ingress/outbox.py).
CREATE TABLE turn_outbox (
    id             bigserial PRIMARY KEY,
    topic          text NOT NULL,
    record_key     bytea NOT NULL,
    record_value   bytea NOT NULL,
    record_headers jsonb NOT NULL,
    -- a send to Kafka was started for it and may still land: relayed by another
    -- process only after that send has surely expired
    sent_at        timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Idempotency-Key: the turn a client's key started, so a retry answers the same turn.
CREATE TABLE idempotency_keys (
    principal      text NOT NULL,
    key            text NOT NULL,
    request_hash   text NOT NULL,
    session_id     text NOT NULL,
    event_id       text NOT NULL,
    -- reserved: the turn may not be published yet (a retry publishes it again, the
    -- policy stage admits an event_id once); accepted: published or in the outbox
    state          text NOT NULL CHECK (state IN ('reserved', 'accepted')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- The policy stage admits each turn (event_id) once: a second record of the same turn
-- (an outbox relay of a send that landed after all, an automation's double publish) is
-- dropped, while a redelivery of the same record (a crash) or a dead-letter replay runs.
CREATE TABLE turn_admissions (
    event_id      text PRIMARY KEY,
    topic         text NOT NULL,
    "partition"   integer NOT NULL,
    "offset"      bigint NOT NULL,
    -- the dead letter whose replay was admitted last (each replay is admitted once)
    replay_of     text,
    admitted_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX turn_admissions_admitted_idx ON turn_admissions (admitted_at);
