-- The ingress claims a session on its first turn: the first INSERT wins, so a session
-- belongs to one tenant and one owner forever. `authz_written` turns true once the
-- session's OpenFGA relations (tenant, owner) are written; until then the owner's next
-- turn writes them again. Rows written before this migration have no owner.
ALTER TABLE sessions ADD COLUMN owner text;
ALTER TABLE sessions ADD COLUMN authz_written boolean NOT NULL DEFAULT false;
