-- The fallback event log: client-visible events published while Redis was unavailable.
CREATE TABLE session_events (
    id          bigserial PRIMARY KEY,
    session_id  text NOT NULL,
    turn_id     text NOT NULL,
    type        text NOT NULL,
    payload     text NOT NULL,
    ts_ms       bigint NOT NULL,
    once_key    text UNIQUE
);
CREATE INDEX session_events_session_idx ON session_events (session_id, id);
