-- Automations that publish turns straight to Kafka. Each has its own SCRAM principal
-- (`automation-<name>`) that the broker lets write only its inbound topic; the policy
-- stage derives a turn's tenant and principal from that topic through this table, never
-- from the record. A revoked automation's row stays (revoked_at set) for audit.
CREATE TABLE automations (
    name        text PRIMARY KEY,
    tenant      text NOT NULL,
    topic       text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
