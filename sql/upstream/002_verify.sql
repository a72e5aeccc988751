-- 002: hashes for `centrovision-sync verify`, computed inside the database
-- so whole tables never travel. Installed upstream (like 001) and locally by
-- `init`, so both sides hash the same way.
--
-- centrovision_sync_bucket_hashes(s, t, pk, cols, buckets) -> jsonb
--   {"cols": [columns actually hashed = requested ∩ existing, sorted by byte],
--    "scheme": 2, "buckets": [[bucket, row_count, xor_of_row_hashes], ...]}
--   A row's bucket is abs(hashtext(pk::text)) % buckets; a row's hash is
--   hashtextextended(row text, 0), the row text being the record of the hashed
--   columns in byte order of their names (json and json[] cast to jsonb, so
--   both sides render them canonically), with TimeZone, DateStyle, float and
--   interval output pinned so both sides render values alike. XOR is
--   order-free. "scheme" names this way of hashing: the service compares only
--   hashes of one scheme (1 was md5 of a jsonb object, about 2.3x slower: a
--   1M-row table did not fit Supabase's 8 s statement timeout).
-- centrovision_sync_row_hashes(s, t, pk, cols, buckets, wanted) -> jsonb
--   [[id, row_hash, updated_at], ...] for the rows of the wanted buckets:
--   the drill-down into buckets that differ.
-- Both return a single jsonb value so PostgREST's max-rows cap never
-- truncates them.
-- Security: SECURITY DEFINER (search_path = '', every name qualified),
-- EXECUTE for service_role only. They read ONLY a table this project syncs:
-- upstream, one registered in centrovision_sync.synced_table
-- (003_row_state.sql, filled by `init --upstream`); anything else (auth.users,
-- an unlisted table) raises 42501 naming it and the fix. A database without
-- that registry (the clinic's own, where `init` installs this file) hashes
-- only a table the calling role may SELECT itself.
-- (The contract version function is generated from upstream::CONTRACT_VERSION,
-- the one definition of the version: see `init --print-upstream-sql`.)
BEGIN;


-- Pins the output settings that shape a row's text (for the rest of the
-- calling transaction), then returns the columns hashed and the expression.
CREATE OR REPLACE FUNCTION public.centrovision_sync_hash_expr(s text, t text, cols text[], OUT used text[], OUT expr text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    allowed boolean;
BEGIN
    -- Only a table this project syncs (see the header).
    IF pg_catalog.to_regclass('centrovision_sync.synced_table') IS NOT NULL THEN
        SELECT EXISTS (SELECT 1 FROM centrovision_sync.synced_table st
                       WHERE st.schema_name = s AND st.table_name = t) INTO allowed;
    ELSE
        allowed := pg_catalog.has_table_privilege(
            coalesce(nullif(pg_catalog.current_setting('role'), 'none'), pg_catalog.session_user()::text),
            pg_catalog.format('%I.%I', s, t), 'SELECT');
    END IF;
    IF NOT allowed THEN
        RAISE EXCEPTION USING
            ERRCODE = '42501',
            MESSAGE = pg_catalog.format('centrovision sync verify: %I.%I is not a table this project syncs', s, t),
            HINT = 'if it should be synced, add it to [sync] tables in config.toml (its schema is [supabase] schema) and run `centrovision-sync init --upstream`, or paste `init --print-upstream-sql` into the Supabase SQL editor';
    END IF;
    PERFORM pg_catalog.set_config('TimeZone', 'UTC', true);
    PERFORM pg_catalog.set_config('extra_float_digits', '1', true);
    PERFORM pg_catalog.set_config('IntervalStyle', 'postgres', true);
    PERFORM pg_catalog.set_config('DateStyle', 'ISO, MDY', true);
    PERFORM pg_catalog.set_config('bytea_output', 'hex', true);
    PERFORM pg_catalog.set_config('lc_monetary', 'C', true);
    -- The hashed columns in byte order of their names (the service sorts them the same way).
    SELECT coalesce(array_agg(a.attname::text ORDER BY a.attname::text COLLATE "C"), '{}'),
           'ROW(' || string_agg(pg_catalog.format('x.%I', a.attname) || CASE a.atttypid
                                  WHEN 'pg_catalog.json'::pg_catalog.regtype THEN '::pg_catalog.jsonb'
                                  WHEN 'pg_catalog.json[]'::pg_catalog.regtype THEN '::pg_catalog.jsonb[]'
                                  ELSE '' END,
                                ', ' ORDER BY a.attname::text COLLATE "C") || ')::text'
    INTO used, expr
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = pg_catalog.format('%I.%I', s, t)::regclass
      AND a.attnum > 0 AND NOT a.attisdropped AND a.attname::text = ANY(cols);
    expr := coalesce(expr, '''''');
END $$;

CREATE OR REPLACE FUNCTION public.centrovision_sync_bucket_hashes(s text, t text, pk text, cols text[], buckets integer)
RETURNS jsonb LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    h record;
    result jsonb;
BEGIN
    h := public.centrovision_sync_hash_expr(s, t, cols);
    EXECUTE pg_catalog.format(
        'SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(b, n, hx) ORDER BY b), ''[]'') FROM (
           SELECT (abs(pg_catalog.hashtext(x.%1$I::text)) %% %2$s)::int AS b, count(*) AS n,
                  pg_catalog.bit_xor(pg_catalog.hashtextextended(%3$s, 0)) AS hx
           FROM %4$I.%5$I x GROUP BY 1) q',
        pk, greatest(buckets, 1), h.expr, s, t)
    INTO result;
    RETURN pg_catalog.jsonb_build_object('cols', to_jsonb(h.used), 'scheme', 2, 'buckets', result);
END $$;

CREATE OR REPLACE FUNCTION public.centrovision_sync_row_hashes(s text, t text, pk text, cols text[], buckets integer, wanted integer[])
RETURNS jsonb LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    h record;
    result jsonb;
BEGIN
    h := public.centrovision_sync_hash_expr(s, t, cols);
    EXECUTE pg_catalog.format(
        'SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(x.%1$I::text,
                    pg_catalog.hashtextextended(%3$s, 0)::text, x.updated_at)), ''[]'')
         FROM %4$I.%5$I x WHERE (abs(pg_catalog.hashtext(x.%1$I::text)) %% %2$s)::int = ANY($1)',
        pk, greatest(buckets, 1), h.expr, s, t)
    INTO result USING wanted;
    RETURN result;
END $$;

DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'public.centrovision_sync_hash_expr(text, text, text[])',
        'public.centrovision_sync_bucket_hashes(text, text, text, text[], integer)',
        'public.centrovision_sync_row_hashes(text, text, text, text[], integer, integer[])'] LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM anon', f);
        END IF;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM authenticated', f);
        END IF;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO service_role', f);
        END IF;
    END LOOP;
END $$;

NOTIFY pgrst, 'reload schema';
COMMIT;
