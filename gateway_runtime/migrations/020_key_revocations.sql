-- A revoked key's clean-up, until it is done: its Redis copy replaced by a revoked one,
-- the revocation announced to every ingress replica, every OpenFGA relation naming it
-- removed. The row is written by the statement that revokes the key; any ingress
-- replica retries a due row (ingress/revocation.py) until a pass that started long
-- enough after the revocation succeeds (done_at).
CREATE TABLE key_revocations (
    key_id      text PRIMARY KEY REFERENCES api_keys (key_id),
    revoked_at  timestamptz NOT NULL,
    due_at      timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text,
    done_at     timestamptz
);
CREATE INDEX key_revocations_due_idx ON key_revocations (due_at) WHERE done_at IS NULL;
