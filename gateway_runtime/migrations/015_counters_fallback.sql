-- Counters that must outlive a Redis outage or restart.
--
-- Daily token budgets: Postgres is their ledger (adapters/budgets.py says why). One row
-- per (tenant, persona, UTC day); each step is one function call, one statement.
CREATE TABLE budget_counters (
    tenant    text   NOT NULL,
    persona   text   NOT NULL,
    day       date   NOT NULL,
    used      bigint NOT NULL DEFAULT 0,
    reserved  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, persona, day)
);

-- One row per turn that reserved or settled: what makes both steps once per turn.
CREATE TABLE budget_holds (
    turn_id     text   PRIMARY KEY,
    tenant      text   NOT NULL,
    persona     text   NOT NULL,
    day         date   NOT NULL,
    amount      bigint NOT NULL,
    actual      bigint,
    settled_at  timestamptz
);
CREATE INDEX budget_holds_day_idx ON budget_holds (day);

-- Hold p_estimate tokens for the turn if used + reserved + p_estimate <= p_budget. The
-- upsert's row lock serialises concurrent turns of a bucket, and its WHERE is evaluated
-- on the latest row, so N concurrent reservations never exceed the budget. A repeat of
-- the turn returns its first hold (used and reserved are then 0: not looked up).
CREATE FUNCTION budget_reserve(
    p_turn text, p_tenant text, p_persona text, p_day date, p_estimate bigint,
    p_budget bigint, OUT granted boolean, OUT amount bigint, OUT used bigint,
    OUT reserved bigint
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    granted := true;
    used := 0;
    reserved := 0;
    SELECT h.amount INTO amount FROM budget_holds h WHERE h.turn_id = p_turn;
    IF FOUND THEN
        RETURN;
    END IF;
    INSERT INTO budget_counters AS b (tenant, persona, day, reserved)
    SELECT p_tenant, p_persona, p_day, p_estimate WHERE p_estimate <= p_budget
    ON CONFLICT (tenant, persona, day) DO UPDATE SET reserved = b.reserved + EXCLUDED.reserved
        WHERE b.used + b.reserved + EXCLUDED.reserved <= p_budget
    RETURNING b.used, b.reserved INTO used, reserved;
    IF NOT FOUND THEN
        granted := false;
        amount := 0;
        SELECT b.used, b.reserved INTO used, reserved FROM budget_counters b
        WHERE b.tenant = p_tenant AND b.persona = p_persona AND b.day = p_day;
        used := coalesce(used, 0);
        reserved := coalesce(reserved, 0);
        RETURN;
    END IF;
    INSERT INTO budget_holds (turn_id, tenant, persona, day, amount)
    VALUES (p_turn, p_tenant, p_persona, p_day, p_estimate)
    ON CONFLICT (turn_id) DO NOTHING;
    IF NOT FOUND THEN
        -- The same turn reserved concurrently and won: give this hold back, return that one.
        UPDATE budget_counters b SET reserved = b.reserved - p_estimate
        WHERE b.tenant = p_tenant AND b.persona = p_persona AND b.day = p_day;
        SELECT h.amount INTO amount FROM budget_holds h WHERE h.turn_id = p_turn;
        used := 0;
        reserved := 0;
        RETURN;
    END IF;
    amount := p_estimate;
END $$;

-- Release the turn's hold and count its actual usage, in the day it reserved in; once
-- per turn. A turn that held nothing is counted in p_day. False: settled before.
CREATE FUNCTION budget_settle(
    p_turn text, p_tenant text, p_persona text, p_day date, p_actual bigint
) RETURNS boolean LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    h budget_holds%ROWTYPE;
BEGIN
    UPDATE budget_holds SET settled_at = now(), actual = p_actual
    WHERE turn_id = p_turn AND settled_at IS NULL
    RETURNING * INTO h;
    IF NOT FOUND THEN
        INSERT INTO budget_holds (turn_id, tenant, persona, day, amount, actual, settled_at)
        VALUES (p_turn, p_tenant, p_persona, p_day, 0, p_actual, now())
        ON CONFLICT (turn_id) DO NOTHING
        RETURNING * INTO h;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
    END IF;
    INSERT INTO budget_counters AS b (tenant, persona, day, used)
    VALUES (h.tenant, h.persona, h.day, p_actual)
    ON CONFLICT (tenant, persona, day)
    DO UPDATE SET used = b.used + p_actual, reserved = b.reserved - h.amount;
    RETURN true;
END $$;

-- Rate limits: the requests admitted in the last minute, per counter (`<ns>:rl:<limit>:
-- <who>`, as in Redis). Rows come from two writers: the ingress copies what Redis
-- admitted (write-behind, within RATE_FLUSH_S), and admits here itself while Redis is
-- unavailable. ingress/ratelimit.py explains the switch and the way back.
CREATE TABLE rate_admissions (
    counter  text   NOT NULL,
    at_ms    bigint NOT NULL,
    member   text   NOT NULL,  -- '<request id>:<cost>', the member of the Redis log
    cost     bigint NOT NULL,
    PRIMARY KEY (counter, at_ms, member)
);

-- The Postgres twin of the Redis admission script: lock the request's counters (in name
-- order, so requests sharing counters cannot deadlock), sum each one's window, and admit
-- only if every counter has room. Returns the refused counter's index (1-based, 0 when
-- admitted) and the ms until enough of its window expires (-1: never fits); admitted:
-- wait_ms is the admission time (ms since the epoch).
CREATE FUNCTION rate_admit(
    p_counters text[], p_limits bigint[], p_costs bigint[], p_member text, p_window_ms bigint,
    OUT admitted boolean, OUT wait_ms bigint, OUT refused integer
) LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    v_counter text;
    i integer;
    total bigint;
    w bigint;
    need bigint;
    freed bigint;
    e record;
BEGIN
    FOR v_counter IN SELECT DISTINCT x FROM unnest(p_counters) AS x ORDER BY x LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(v_counter, 0));
    END LOOP;
    admitted := true;
    wait_ms := 0;
    refused := 0;
    FOR i IN 1 .. array_length(p_counters, 1) LOOP
        SELECT coalesce(sum(r.cost), 0) INTO total FROM rate_admissions r
        WHERE r.counter = p_counters[i] AND r.at_ms > now_ms - p_window_ms;
        IF total + p_costs[i] > p_limits[i] THEN
            w := -1;
            IF p_costs[i] <= p_limits[i] THEN
                need := total + p_costs[i] - p_limits[i];
                freed := 0;
                FOR e IN SELECT r.at_ms, r.cost FROM rate_admissions r
                         WHERE r.counter = p_counters[i] AND r.at_ms > now_ms - p_window_ms
                         ORDER BY r.at_ms LOOP
                    freed := freed + e.cost;
                    IF freed >= need THEN
                        w := e.at_ms + p_window_ms - now_ms;
                        EXIT;
                    END IF;
                END LOOP;
            END IF;
            IF refused = 0 OR w < 0 OR (wait_ms >= 0 AND w > wait_ms) THEN
                refused := i;
                wait_ms := w;
            END IF;
        END IF;
    END LOOP;
    IF refused > 0 THEN
        admitted := false;
        RETURN;
    END IF;
    INSERT INTO rate_admissions (counter, at_ms, member, cost)
    SELECT u.c, now_ms, p_member || ':' || u.k, u.k FROM unnest(p_counters, p_costs) AS u(c, k)
    ON CONFLICT DO NOTHING;
    wait_ms := now_ms;
END $$;
