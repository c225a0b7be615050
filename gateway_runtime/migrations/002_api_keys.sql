-- API keys: only a SHA-256 of each secret is stored (the secret is shown once, at
-- creation). The secret `sk_<key_id>_<random>` names its key_id, so a lookup is by
-- primary key and the hash comparison is constant-time in the ingress.
CREATE TABLE api_keys (
    key_id        text PRIMARY KEY,
    tenant        text NOT NULL,
    label         text NOT NULL,
    scopes        text[] NOT NULL,
    secret_sha256 bytea NOT NULL,
    prefix        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant, created_at);
