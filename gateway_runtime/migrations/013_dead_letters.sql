-- The dead-letter index: one row per record a stage gave up on (deadletter_index keeps
-- it from the dead-letter topic), for the requeue API and the SRE CLI. The original
-- record (key, value, headers) is kept so a replay needs nothing but this row. Rows are
-- never deleted by the gateway: a discarded one stays for audit.
CREATE TABLE dead_letters (
    id                bigserial PRIMARY KEY,
    source_topic      text NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL,
    stage             text NOT NULL,
    error_type        text NOT NULL,
    error_message     text NOT NULL,
    attempts          integer NOT NULL,
    first_failed_at   timestamptz NOT NULL,
    last_failed_at    timestamptz NOT NULL,
    session_id        text,
    event_id          text,
    tenant            text,
    -- the dead letter this one is a failed replay of, if any
    replay_of         bigint REFERENCES dead_letters(id),
    record_key        bytea NOT NULL,
    record_value      bytea NOT NULL,
    -- [[name, base64 value], ...] of the original record, provenance headers removed
    record_headers    jsonb NOT NULL,
    value_omitted     text,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'replayed', 'discarded')),
    replays           integer NOT NULL DEFAULT 0,
    replayed_at       timestamptz,
    replayed_by       text,
    discarded_at      timestamptz,
    discarded_by      text,
    indexed_at        timestamptz NOT NULL DEFAULT now(),
    -- a record dead-lettered twice (a crash before the offset commit) is one row
    UNIQUE (source_topic, source_partition, source_offset)
);
CREATE INDEX dead_letters_status_idx ON dead_letters (status, id);
CREATE INDEX dead_letters_tenant_idx ON dead_letters (tenant, id);
CREATE INDEX dead_letters_session_idx ON dead_letters (session_id);
CREATE INDEX dead_letters_failed_idx ON dead_letters (last_failed_at);
