-- Long-term memories of a principal within a tenant, recalled by full-text search.
CREATE TABLE memories (
    id          bigserial PRIMARY KEY,
    tenant      text NOT NULL,
    principal   text NOT NULL,
    session_id  text NOT NULL,
    turn_id     text NOT NULL UNIQUE,
    content     text NOT NULL,
    search      tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX memories_search_idx ON memories USING gin (search);
CREATE INDEX memories_owner_idx ON memories (tenant, principal, id DESC);
