-- The Responses API's responses (ingress/openai/response_store.py). A response is a turn:
-- its events are the session's durable log, translated again whenever it is fetched or
-- streamed; the row holds what the log does not: who may see it, the request's fields the
-- response object echoes (`head`), and, once the turn ended, its events (so the response
-- outlives the session's log) and its status. `cancelled` is written by the cancel call
-- itself, so it holds even while the log cannot be read.
CREATE TABLE responses (
    id          text PRIMARY KEY,
    tenant      text NOT NULL,
    principal   text NOT NULL,
    session_id  text NOT NULL,
    turn_id     text NOT NULL,
    head        jsonb NOT NULL,
    status      text NOT NULL
                CHECK (status IN ('queued', 'in_progress', 'completed', 'failed',
                                  'incomplete', 'cancelled')),
    -- the turn's events [{"type", "data", "id"}] up to the one that ended it; NULL while
    -- it runs
    events      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX responses_expires_idx ON responses (expires_at);
