-- 004_api_schema.sql — upstream (Supabase): the sync's RPC entry points in the API schema the
-- clinic is configured with, when that is not `public`.  Installed by `init --upstream` (or
-- pasted from `init --print-upstream-sql`) after 001–003; idempotent; one transaction.
--
-- Why: PostgREST resolves `POST /rest/v1/rpc/<fn>` in the schema the request's
-- `Content-Profile` names, and the service sends `[supabase] schema` as the profile of every
-- request (its tables live there).  The sync functions live in `public` (001–003), so with
-- another schema PostgREST looked for `<schema>.centrovision_sync_apply` and answered PGRST202.
--
-- Installs:
--   centrovision_sync.expose_api(p_schema text) RETURNS integer
--     For every function of `public` named in its list — the RPCs the service calls
--     (src/upstream/rest.rs): centrovision_sync_apply, _version, _bucket_hashes, _row_hashes,
--     _changes, _conflicts, _conflict_count, _prune, _row_versions — creates, in p_schema, an
--     entry point of the same name, arguments (names, types, defaults), result and volatility
--     whose body only calls the public one: `SELECT public.<fn>($1, ...)`.  Entry points are
--     SECURITY INVOKER with search_path = '': they add no privilege; the public function (and
--     its SECURITY DEFINER checks) decides as before, so there is one implementation of the
--     apply and the feed.  EXECUTE: revoked from PUBLIC, anon and authenticated (Supabase's
--     default privileges grant it to them), granted to service_role.  Entry points whose public
--     function is gone or changed its signature (a contract upgrade) are dropped first.
--     Returns the number of entry points; 0 for p_schema = 'public' (nothing to do).  Refuses
--     pg_* schemas, information_schema and centrovision_sync (42501), and a schema that does
--     not exist (3F000).  Called by the per-project statements of `init --upstream` /
--     `init --print-upstream-sql` as `SELECT centrovision_sync.expose_api('<schema>')`, in the
--     installer's transaction, after the contract version function exists; then asks PostgREST
--     to reload its schema cache.
--   The schema must also be listed in the project's Settings → API → Exposed schemas, and
--   service_role needs USAGE on it and privileges on its tables (Supabase's guide for custom
--   schemas); that is the project's configuration, not done here.

BEGIN;

CREATE OR REPLACE FUNCTION centrovision_sync.expose_api(p_schema text)
RETURNS integer LANGUAGE plpgsql VOLATILE SET search_path = ''
AS $fn$
DECLARE
  v_names text[] := ARRAY[
    'centrovision_sync_apply', 'centrovision_sync_version', 'centrovision_sync_bucket_hashes',
    'centrovision_sync_row_hashes', 'centrovision_sync_changes', 'centrovision_sync_conflicts',
    'centrovision_sync_conflict_count', 'centrovision_sync_prune', 'centrovision_sync_row_versions'];
  v_ns   oid;
  v_n    integer := 0;
  r      record;
  v_fn   text;
  v_role text;
BEGIN
  IF p_schema = 'public' THEN
    RETURN 0;
  END IF;
  IF p_schema IS NULL OR p_schema LIKE 'pg\_%' OR p_schema IN ('information_schema', 'centrovision_sync') THEN
    RAISE EXCEPTION USING ERRCODE = '42501',
      MESSAGE = pg_catalog.format('centrovision-sync entry points cannot go into schema %s', coalesce(p_schema, 'NULL'));
  END IF;
  SELECT n.oid INTO v_ns FROM pg_catalog.pg_namespace n WHERE n.nspname = p_schema;
  IF v_ns IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '3F000',
      MESSAGE = pg_catalog.format('schema %I ([supabase] schema) does not exist upstream', p_schema),
      HINT = 'create it (it holds the synced tables), or set [supabase] schema to the schema that does';
  END IF;

  -- Entry points left from an older contract: no public function with that signature any more.
  FOR r IN
    SELECT p.oid::pg_catalog.regprocedure AS sig
    FROM pg_catalog.pg_proc p
    WHERE p.pronamespace = v_ns AND p.proname = ANY (v_names)
      AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_proc q
        WHERE q.pronamespace = 'public'::pg_catalog.regnamespace AND q.proname = p.proname
          AND q.proargtypes = p.proargtypes AND q.prorettype = p.prorettype
          AND q.proretset = p.proretset AND q.prokind = 'f')
  LOOP
    EXECUTE pg_catalog.format('DROP FUNCTION %s', r.sig);
  END LOOP;

  FOR r IN
    SELECT p.proname::text AS name, p.pronargs AS nargs,
           pg_catalog.pg_get_function_arguments(p.oid) AS args,
           pg_catalog.pg_get_function_identity_arguments(p.oid) AS ident,
           pg_catalog.pg_get_function_result(p.oid) AS result,
           CASE p.provolatile WHEN 'i' THEN 'IMMUTABLE' WHEN 's' THEN 'STABLE' ELSE 'VOLATILE' END AS volatility
    FROM pg_catalog.pg_proc p
    WHERE p.pronamespace = 'public'::pg_catalog.regnamespace AND p.proname = ANY (v_names) AND p.prokind = 'f'
    ORDER BY p.proname, p.oid
  LOOP
    EXECUTE pg_catalog.format(
      'CREATE OR REPLACE FUNCTION %I.%I(%s) RETURNS %s LANGUAGE sql %s SECURITY INVOKER SET search_path = '''' '
      'AS $entry$ SELECT public.%I(%s) $entry$',
      p_schema, r.name, r.args, r.result, r.volatility, r.name,
      (SELECT coalesce(pg_catalog.string_agg('$' || g, ', ' ORDER BY g), '')
         FROM pg_catalog.generate_series(1, r.nargs) AS g));
    v_fn := pg_catalog.format('%I.%I(%s)', p_schema, r.name, r.ident);
    EXECUTE pg_catalog.format('COMMENT ON FUNCTION %s IS %L', v_fn,
      'centrovision-sync: entry point for PostgREST profile ' || p_schema || ', calls public.' || r.name);
    EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_fn);
    FOREACH v_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
      IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM %I', v_fn, v_role);
      END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
      EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO service_role', v_fn);
    END IF;
    v_n := v_n + 1;
  END LOOP;
  PERFORM pg_catalog.pg_notify('pgrst', 'reload schema');
  RETURN v_n;
END
$fn$;

COMMENT ON FUNCTION centrovision_sync.expose_api(text) IS
  'centrovision-sync: RPC entry points in a non-public API schema (see sql/upstream/004_api_schema.sql)';
REVOKE EXECUTE ON FUNCTION centrovision_sync.expose_api(text) FROM PUBLIC;

COMMIT;
