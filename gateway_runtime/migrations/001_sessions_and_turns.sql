-- Sessions, their transcript and the turns that produced it.
-- Every write of the persistence stage is keyed by the turn's event_id, so a turn that
-- is processed twice (redelivery, DLQ replay) is stored once.
CREATE TABLE sessions (
    session_id   text PRIMARY KEY,
    tenant       text NOT NULL,
    persona_id   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE turns (
    turn_id            text PRIMARY KEY,
    session_id         text NOT NULL REFERENCES sessions(session_id),
    tenant             text NOT NULL,
    principal          text NOT NULL,
    status             text NOT NULL,
    model              text NOT NULL DEFAULT '',
    prompt_tokens      integer NOT NULL DEFAULT 0,
    completion_tokens  integer NOT NULL DEFAULT 0,
    cost_usd           double precision,
    error_code         text,
    error_message      text,
    requested_at       timestamptz NOT NULL,
    completed_at       timestamptz NOT NULL
);
CREATE INDEX turns_session_idx ON turns (session_id, requested_at);

CREATE TABLE messages (
    id          bigserial PRIMARY KEY,
    session_id  text NOT NULL REFERENCES sessions(session_id),
    turn_id     text NOT NULL,
    role        text NOT NULL,
    content     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (turn_id, role)
);
CREATE INDEX messages_session_idx ON messages (session_id, id);
