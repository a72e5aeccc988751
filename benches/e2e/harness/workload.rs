//! SQL the benchmark loads: the write workload, seeds, the specification's
//! trigger design (baseline 4b), the pgbench script (4c) and the generic
//! 23-table schema (idle down cycle).
//!
//! Row ids are `md5(<prefix> || n)::uuid`, so the workload and pgbench can
//! address "a random existing row" with an index lookup instead of
//! `ORDER BY random()`.

/// The synced sample tables (tests/it/support/centrovision_schema.sql),
/// parents first.
pub const SAMPLE_TABLES: [&str; 6] = ["branches", "patients", "services", "appointments", "invoices", "invoice_items"];

/// `CALL bench_workload(n, seed)`: at least `n` row changes (stops at the
/// first transaction that reaches it, so it may overshoot by up to 4), in
/// small transactions like a clinic's (1-5 row changes, ~1.8 on average):
///
/// | share | transaction                                 | row changes |
/// |-------|---------------------------------------------|-------------|
/// | 30 %  | new patient + first appointment             | 2 inserts   |
/// | 20 %  | appointment status/reason update            | 1 update    |
/// | 10 %  | patient phone/notes update                  | 1 update    |
/// | 20 %  | invoice with 1-4 items                      | 2-5 inserts |
/// | 12 %  | new appointment for an existing patient     | 1 insert    |
/// |  4 %  | appointment deleted                         | 0-1 delete  |
/// |  4 %  | invoice item deleted                        | 0-1 delete  |
///
/// plus 5 branches and 40 services first. Row images are ~300-800 bytes
/// (patients ~750, appointments ~450, invoices/items ~300). The number of
/// row changes made is stored in `_bench_state` (not a synced table).
pub const WORKLOAD_SQL: &str = r#"
CREATE TABLE IF NOT EXISTS _bench_state (name text PRIMARY KEY, v bigint NOT NULL);

CREATE OR REPLACE PROCEDURE bench_workload(n_changes bigint, seed float8)
LANGUAGE plpgsql AS $$
DECLARE
  made bigint := 0;
  np bigint := 0; na bigint := 0; ni bigint := 0; nit bigint := 0;
  nb constant int := 5;
  ns constant int := 40;
  r float8;
  items int;
  c int;
  p bigint;
  target uuid;
BEGIN
  PERFORM setseed(seed);
  INSERT INTO branches (id, name, address)
    SELECT md5('b' || g)::uuid, 'Sucursal ' || g,
           'Av. Insurgentes Sur ' || (1000 + g) || ', Col. Del Valle, Benito Juárez, Ciudad de México, CP 03100'
    FROM generate_series(1, nb) g;
  INSERT INTO services (id, name, price)
    SELECT md5('s' || g)::uuid, 'Servicio ' || g || ': consulta de especialidad oftalmológica', 250 + g * 37.5
    FROM generate_series(1, ns) g;
  made := nb + ns;
  COMMIT;
  WHILE made < n_changes LOOP
    r := random();
    IF r < 0.30 OR np = 0 THEN
      np := np + 1; na := na + 1;
      INSERT INTO patients (id, branch_id, full_name, birth_date, phone, tags, metadata, notes)
      VALUES (md5('p' || np)::uuid, md5('b' || (1 + np % nb))::uuid,
              'Paciente ' || np || ' ' || initcap(substr(md5(random()::text), 1, 10)) || ' ' || initcap(substr(md5(random()::text), 1, 9)),
              date '1940-01-01' + (random() * 29000)::int,
              '+52 55 ' || lpad((random() * 99999999)::int::text, 8, '0'),
              ARRAY['bench', 'aseguradora-' || (np % 7), 'riesgo-' || (np % 3)],
              jsonb_build_object(
                'insurance', jsonb_build_object('provider', 'GNP', 'plan', 'basico', 'policy', md5(random()::text)),
                'allergies', jsonb_build_array('penicilina', 'polen'),
                'emergency_contact', jsonb_build_object('name', 'Contacto ' || np, 'phone', '+52 55 1234 5678'),
                'source', 'recepcion'),
              'Antecedentes: miopía, uso de lentes desde la infancia. ' || repeat(md5(random()::text), 4));
      INSERT INTO appointments (id, branch_id, patient_id, service_id, starts_at, reason)
      VALUES (md5('a' || na)::uuid, md5('b' || (1 + np % nb))::uuid, md5('p' || np)::uuid,
              md5('s' || (1 + floor(random() * ns)::int))::uuid,
              now() + random() * interval '60 days',
              'Motivo de consulta: revisión de agudeza visual. ' || repeat(md5(random()::text), 3));
      made := made + 2;
    ELSIF r < 0.50 THEN
      -- (ids go through a variable: random() in WHERE is volatile and
      -- would make every statement a sequential scan)
      target := md5('a' || (1 + floor(random() * na)::bigint))::uuid;
      UPDATE appointments
         SET status = (ARRAY['confirmed', 'done', 'cancelled']::appointment_status[])[1 + floor(random() * 3)::int],
             reason = 'Actualizada por recepción: ' || repeat(md5(random()::text), 3)
       WHERE id = target;
      GET DIAGNOSTICS c = ROW_COUNT;
      made := made + c;
    ELSIF r < 0.60 THEN
      target := md5('p' || (1 + floor(random() * np)::bigint))::uuid;
      UPDATE patients
         SET phone = '+52 55 ' || lpad((random() * 99999999)::int::text, 8, '0'),
             notes = 'Antecedentes actualizados: ' || repeat(md5(random()::text), 4)
       WHERE id = target;
      GET DIAGNOSTICS c = ROW_COUNT;
      made := made + c;
    ELSIF r < 0.80 THEN
      ni := ni + 1;
      p := 1 + floor(random() * np)::bigint;
      items := 1 + floor(random() * 4)::int;
      INSERT INTO invoices (id, branch_id, patient_id, number, total, issued_on)
      VALUES (md5('i' || ni)::uuid, md5('b' || (1 + p % nb))::uuid, md5('p' || p)::uuid,
              'F-' || lpad(ni::text, 9, '0'), round((random() * 5000)::numeric, 2), current_date);
      INSERT INTO invoice_items (id, invoice_id, service_id, quantity, unit_price)
        SELECT md5('it' || (nit + g))::uuid, md5('i' || ni)::uuid,
               md5('s' || (1 + floor(random() * ns)::int))::uuid, 1 + floor(random() * 3)::int,
               round((100 + random() * 900)::numeric, 2)
        FROM generate_series(1, items) g;
      nit := nit + items;
      made := made + 1 + items;
    ELSIF r < 0.92 THEN
      na := na + 1;
      p := 1 + floor(random() * np)::bigint;
      INSERT INTO appointments (id, branch_id, patient_id, service_id, starts_at, reason)
      VALUES (md5('a' || na)::uuid, md5('b' || (1 + p % nb))::uuid, md5('p' || p)::uuid,
              md5('s' || (1 + floor(random() * ns)::int))::uuid,
              now() + random() * interval '60 days',
              'Seguimiento: ' || repeat(md5(random()::text), 3));
      made := made + 1;
    ELSIF r < 0.96 THEN
      target := md5('a' || (1 + floor(random() * na)::bigint))::uuid;
      DELETE FROM appointments WHERE id = target;
      GET DIAGNOSTICS c = ROW_COUNT;
      made := made + c;
    ELSE
      IF nit > 0 THEN
        target := md5('it' || (1 + floor(random() * nit)::bigint))::uuid;
        DELETE FROM invoice_items WHERE id = target;
        GET DIAGNOSTICS c = ROW_COUNT;
        made := made + c;
      END IF;
    END IF;
    COMMIT;
  END LOOP;
  INSERT INTO _bench_state (name, v) VALUES ('made', made)
    ON CONFLICT (name) DO UPDATE SET v = EXCLUDED.v;
  COMMIT;
END $$;
"#;

/// `SELECT bench_seed(patients, appointments, invoices)`: rows for pgbench
/// to update and refer to (same id scheme as the workload).
pub const SEED_SQL: &str = r#"
CREATE OR REPLACE FUNCTION bench_seed(np int, na int, ni int) RETURNS void LANGUAGE sql AS $$
  INSERT INTO branches (id, name, address)
    SELECT md5('b' || g)::uuid, 'Sucursal ' || g, 'Av. Insurgentes Sur ' || (1000 + g) FROM generate_series(1, 5) g
    ON CONFLICT DO NOTHING;
  INSERT INTO services (id, name, price)
    SELECT md5('s' || g)::uuid, 'Servicio ' || g, 250 + g * 37.5 FROM generate_series(1, 40) g
    ON CONFLICT DO NOTHING;
  INSERT INTO patients (id, branch_id, full_name, birth_date, phone, tags, metadata, notes)
    SELECT md5('p' || g)::uuid, md5('b' || (1 + g % 5))::uuid, 'Paciente ' || g, date '1940-01-01' + g % 29000,
           '+52 55 ' || lpad(g::text, 8, '0'), ARRAY['seed'], jsonb_build_object('source', 'seed', 'n', g),
           repeat(md5(g::text), 4)
    FROM generate_series(1, np) g ON CONFLICT DO NOTHING;
  INSERT INTO appointments (id, branch_id, patient_id, service_id, starts_at, reason)
    SELECT md5('a' || g)::uuid, md5('b' || (1 + g % 5))::uuid, md5('p' || (1 + g % np))::uuid,
           md5('s' || (1 + g % 40))::uuid, now() + (g % 60) * interval '1 day', repeat(md5(g::text), 3)
    FROM generate_series(1, na) g ON CONFLICT DO NOTHING;
  INSERT INTO invoices (id, branch_id, patient_id, number, total, issued_on)
    SELECT md5('i' || g)::uuid, md5('b' || (1 + g % 5))::uuid, md5('p' || (1 + g % np))::uuid,
           'F-' || lpad(g::text, 9, '0'), 100 + g % 5000, current_date
    FROM generate_series(1, ni) g ON CONFLICT DO NOTHING;
$$;
"#;

/// Rows of the pgbench seed.
pub const PGBENCH_SEED: (i32, i32, i32) = (10_000, 10_000, 10_000);

/// One pgbench transaction: what a receptionist's "register a walk-in
/// patient, confirm an appointment, bill a service" does (3 row changes).
pub const PGBENCH_SCRIPT: &str = r#"\set b random(1, 5)
\set a random(1, 10000)
\set i random(1, 10000)
\set s random(1, 40)
\set q random(1, 3)
BEGIN;
INSERT INTO patients (branch_id, full_name, birth_date, phone, tags, metadata, notes) VALUES (md5('b' || :b)::uuid, 'Paciente pgbench ' || :a || '-' || :i, date '1950-01-01' + :i, '+52 55 ' || lpad(:i::text, 8, '0'), ARRAY['pgbench', 'nuevo'], '{"insurance": {"provider": "GNP", "plan": "basico"}, "allergies": ["penicilina"], "source": "recepcion"}', 'Antecedentes: miopía, uso de lentes desde la infancia. ' || repeat(md5(:a::text), 4));
UPDATE appointments SET status = 'confirmed', reason = 'Confirmada por teléfono ' || :i || ' ' || repeat(md5(:i::text), 2) WHERE id = md5('a' || :a)::uuid;
INSERT INTO invoice_items (invoice_id, service_id, quantity, unit_price) VALUES (md5('i' || :i)::uuid, md5('s' || :s)::uuid, :q, 450.00);
END;
"#;

/// The specification's trigger design (spec section "Triggers para Detectar
/// Cambios Locales"), verbatim except that it writes to
/// `_sync_pending_trigger` (the spec's `_sync_pending` layout and indexes)
/// so it can live next to the service's own journal, plus one index the
/// spec lacks: `(id) WHERE synced = FALSE`, without which the poller's
/// "oldest unsynced first" query is quadratic in the backlog (that would
/// make the baseline a straw man).
pub fn trigger_sql(tables: &[&str]) -> String {
    let mut sql = String::from(
        r#"
CREATE TABLE IF NOT EXISTS _sync_pending_trigger (
    id SERIAL PRIMARY KEY,
    table_name VARCHAR(100) NOT NULL,
    record_id UUID NOT NULL,
    operation VARCHAR(10) NOT NULL,  -- INSERT, UPDATE, DELETE
    data JSONB,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    synced BOOLEAN DEFAULT FALSE,
    synced_at TIMESTAMPTZ,
    error TEXT,
    retry_count INTEGER DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_sync_pending_trigger_unsynced ON _sync_pending_trigger(synced) WHERE synced = FALSE;
CREATE INDEX IF NOT EXISTS idx_sync_pending_trigger_table ON _sync_pending_trigger(table_name);
CREATE INDEX IF NOT EXISTS idx_sync_pending_trigger_queue ON _sync_pending_trigger(id) WHERE synced = FALSE;

CREATE OR REPLACE FUNCTION log_local_changes()
RETURNS TRIGGER AS $$
BEGIN
    -- Solo registrar si el cambio NO vino de sync (evitar loops)
    IF current_setting('app.is_sync', true) IS DISTINCT FROM 'true' THEN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO _sync_pending_trigger (table_name, record_id, operation, data)
            VALUES (TG_TABLE_NAME, OLD.id, 'DELETE', row_to_json(OLD)::jsonb);
            RETURN OLD;
        ELSE
            INSERT INTO _sync_pending_trigger (table_name, record_id, operation, data)
            VALUES (TG_TABLE_NAME, NEW.id, TG_OP, row_to_json(NEW)::jsonb);
            RETURN NEW;
        END IF;
    END IF;
    RETURN COALESCE(NEW, OLD);
END;
$$ LANGUAGE plpgsql;
"#,
    );
    for t in tables {
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS sync_changes_{t} ON {t};\n\
             CREATE TRIGGER sync_changes_{t} AFTER INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION log_local_changes();\n"
        ));
    }
    sql
}

pub fn drop_triggers_sql(tables: &[&str]) -> String {
    tables.iter().map(|t| format!("DROP TRIGGER IF EXISTS sync_changes_{t} ON {t};\n")).collect()
}

/// The same tables the service would see, generic layout: for the idle
/// down cycle over all 23 CentroVision table names.
pub fn generic_schema(tables: &[&str]) -> String {
    let mut sql = String::from("CREATE EXTENSION IF NOT EXISTS pgcrypto;\n");
    for t in tables {
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                branch_id uuid,
                name text NOT NULL,
                details jsonb,
                notes text,
                amount numeric(12,2),
                created_at timestamptz NOT NULL DEFAULT now(),
                updated_at timestamptz NOT NULL DEFAULT now(),
                deleted_at timestamptz);\n"
        ));
    }
    sql
}

/// `rows` rows in each generic table, last changed a day ago (outside the
/// down path's re-read window, so later cycles are idle).
pub fn generic_seed(tables: &[&str], rows: usize) -> String {
    tables
        .iter()
        .map(|t| {
            format!(
                "INSERT INTO {t} (id, name, details, notes, amount, created_at, updated_at)
                 SELECT md5('{t}' || g)::uuid, '{t} ' || g, jsonb_build_object('n', g, 'k', md5(g::text)),
                        repeat(md5(g::text), 3), g % 1000, now() - interval '2 days', now() - interval '1 day' + g * interval '1 ms'
                 FROM generate_series(1, {rows}) g;\n"
            )
        })
        .collect()
}

/// Upstream rows for the initial download: `n` rows over the sample tables
/// (5 branches, 40 services, then patients and appointments half and half).
pub fn upstream_seed(n: usize) -> String {
    let rest = n.saturating_sub(45);
    let np = (rest / 2).max(1);
    let na = rest - np;
    format!(
        r#"
INSERT INTO branches (id, name, address)
  SELECT md5('b' || g)::uuid, 'Sucursal ' || g, 'Av. Insurgentes Sur ' || (1000 + g) FROM generate_series(1, 5) g;
INSERT INTO services (id, name, price)
  SELECT md5('s' || g)::uuid, 'Servicio ' || g, 250 + g * 37.5 FROM generate_series(1, 40) g;
INSERT INTO patients (id, branch_id, full_name, birth_date, phone, tags, metadata, notes)
  SELECT md5('p' || g)::uuid, md5('b' || (1 + g % 5))::uuid, 'Paciente ' || g || ' ' || initcap(substr(md5(g::text), 1, 10)),
         date '1940-01-01' + g % 29000, '+52 55 ' || lpad(g::text, 8, '0'), ARRAY['bench', 'aseguradora-' || (g % 7)],
         jsonb_build_object('insurance', jsonb_build_object('provider', 'GNP', 'plan', 'basico', 'policy', md5(g::text)),
                            'allergies', jsonb_build_array('penicilina', 'polen'), 'source', 'upstream'),
         'Antecedentes: miopía. ' || repeat(md5(g::text), 4)
  FROM generate_series(1, {np}) g;
INSERT INTO appointments (id, branch_id, patient_id, service_id, starts_at, reason)
  SELECT md5('a' || g)::uuid, md5('b' || (1 + g % 5))::uuid, md5('p' || (1 + g % {np_nonzero}))::uuid,
         md5('s' || (1 + g % 40))::uuid, now() + (g % 60) * interval '1 day',
         'Motivo de consulta: revisión. ' || repeat(md5(g::text), 3)
  FROM generate_series(1, {na}) g;
"#,
        np_nonzero = np.max(1)
    )
}
