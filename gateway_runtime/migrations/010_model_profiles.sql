-- Model profiles: which model serves a role in a deployment mode, and its fallbacks.
CREATE TABLE model_profiles (
    role                text NOT NULL,
    deployment_mode     text NOT NULL,
    model               text NOT NULL,
    base_url            text,
    api_path            text,
    temperature         double precision NOT NULL DEFAULT 0.7,
    max_tokens          integer NOT NULL DEFAULT 256,
    kwargs              jsonb NOT NULL DEFAULT '{}'::jsonb,
    fallbacks           text[] NOT NULL DEFAULT '{}',   -- roles of the same deployment mode
    cost_per_1k_tokens  double precision,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role, deployment_mode)
);
