-- 002: hashes for `centrovision-sync verify`, computed inside the database
-- so whole tables never travel. Installed upstream (like 001) and locally by
-- `init`, so both sides hash the same way.
--
-- centrovision_sync_bucket_hashes(s, t, pk, cols, buckets) -> jsonb
--   {"cols": [columns actually hashed = requested ∩ existing, sorted],
--    "buckets": [[bucket, row_count, xor_of_row_hashes], ...]}
--   A row's bucket is abs(hashtext(pk::text)) % buckets; a row's hash is the
--   first 64 bits of md5 of the jsonb object of the hashed columns (jsonb
--   text is canonical: sorted keys), with TimeZone, float and interval
--   output pinned so both sides render values alike. XOR is order-free.
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
    chunk text[];
    parts text[] := '{}';
    i integer;
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
    SELECT coalesce(array_agg(a.attname::text ORDER BY a.attname::text), '{}') INTO used
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = pg_catalog.format('%I.%I', s, t)::regclass
      AND a.attnum > 0 AND NOT a.attisdropped AND a.attname::text = ANY(cols);
    -- jsonb_build_object takes at most 100 arguments: 40 columns a call.
    i := 1;
    WHILE i <= coalesce(array_length(used, 1), 0) LOOP
        chunk := used[i:i + 39];
        parts := parts || (SELECT 'pg_catalog.jsonb_build_object(' || string_agg(pg_catalog.format('%L, x.%I', c, c), ', ') || ')' FROM unnest(chunk) c);
        i := i + 40;
    END LOOP;
    expr := CASE WHEN array_length(parts, 1) IS NULL THEN '''{}''::jsonb' ELSE array_to_string(parts, ' || ') END;
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
                  pg_catalog.bit_xor((''x'' || left(pg_catalog.md5((%3$s)::text), 16))::bit(64)::bigint) AS hx
           FROM %4$I.%5$I x GROUP BY 1) q',
        pk, greatest(buckets, 1), h.expr, s, t)
    INTO result;
    RETURN pg_catalog.jsonb_build_object('cols', to_jsonb(h.used), 'buckets', result);
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
                    left(pg_catalog.md5((%3$s)::text), 16), x.updated_at)), ''[]'')
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
