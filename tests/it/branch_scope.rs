//! Branch scoping (`[sync] branch_ids`, src/scope.rs): three branches
//! upstream; clinic A serves b1, clinic B b2, clinic C b1 and b2. Each ends
//! with exactly the rows of its scope — checked against an SQL oracle of the
//! scope on the upstream database — plus the parents of another branch its
//! rows refer to; a row that moves follows its branch with its children;
//! nothing of another branch crosses the network (REST: the stand-in's log of
//! answers); rows of another branch written at a clinic are held back; a row
//! a clinic moves to another branch itself leaves it once upstream has it,
//! even when the service restarts between the delivery and the removal;
//! `drop-branch-rows --yes` refuses while a change is unconfirmed or not
//! even captured yet (made while the service was stopped); `verify
//! --repair` and `init --upload-existing` at a scoped server touch only its
//! branches' rows.

use crate::support;
use support::TestDb;
use support::sync::{Mode, Pair};

const B: [&str; 3] =
    ["00000000-0000-0000-0000-0000000000b1", "00000000-0000-0000-0000-0000000000b2", "00000000-0000-0000-0000-0000000000b3"];
const SERVICE: &str = "00000000-0000-0000-0000-00000000005e";
/// A patient of b2 with an appointment at b1 (seen at two branches).
const CROSS_PATIENT: &str = "00000000-0000-0000-0001-0000000000ff";
/// An invoice of b1 that moves to b2, with its two items.
const MOVING_INVOICE: &str = "00000000-0000-0000-0003-0000000000ee";

/// The id of row `n` of kind `kind` (1 patients, 2 appointments, 3 invoices,
/// 4 invoice items) of branch `b` (1..=3).
fn id(kind: u32, b: usize, n: u32) -> String {
    format!("00000000-0000-0000-{kind:04}-{b:04}{n:08}")
}

async fn exec(db: &TestDb, sql: &str) {
    db.connect().await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Rows written upstream by the cloud app: per branch 4 patients, their
/// appointments and invoices with two items each; a shared service; the
/// cross-branch patient; the invoice that will move.
fn seed_sql() -> String {
    let mut s = String::from("BEGIN;\n");
    for (i, b) in B.iter().enumerate() {
        s.push_str(&format!("INSERT INTO branches (id, name) VALUES ('{b}', 'branch {}');\n", i + 1));
    }
    s.push_str(&format!("INSERT INTO services (id, name, price) VALUES ('{SERVICE}', 'consulta', 10);\n"));
    for (i, b) in B.iter().enumerate() {
        let bi = i + 1;
        for n in 1..=4u32 {
            let (p, a, inv) = (id(1, bi, n), id(2, bi, n), id(3, bi, n));
            s.push_str(&format!(
                "INSERT INTO patients (id, branch_id, full_name) VALUES ('{p}', '{b}', 'patient {bi}-{n}');
                 INSERT INTO appointments (id, branch_id, patient_id, service_id, starts_at) VALUES ('{a}', '{b}', '{p}', '{SERVICE}', now());
                 INSERT INTO invoices (id, branch_id, patient_id, number, total) VALUES ('{inv}', '{b}', '{p}', 'F-{bi}-{n}', 20);
                 INSERT INTO invoice_items (id, invoice_id, service_id, quantity, unit_price) VALUES
                   ('{}', '{inv}', '{SERVICE}', 1, 10), ('{}', '{inv}', '{SERVICE}', 1, 10);\n",
                id(4, bi, n * 2),
                id(4, bi, n * 2 + 1)
            ));
        }
    }
    s.push_str(&format!(
        "INSERT INTO patients (id, branch_id, full_name) VALUES ('{CROSS_PATIENT}', '{b2}', 'seen at two branches');
         INSERT INTO appointments (id, branch_id, patient_id, starts_at) VALUES ('{}', '{b1}', '{CROSS_PATIENT}', now());
         INSERT INTO invoices (id, branch_id, patient_id, number) VALUES ('{MOVING_INVOICE}', '{b1}', '{}', 'F-move');
         INSERT INTO invoice_items (id, invoice_id, quantity) VALUES ('{}', '{MOVING_INVOICE}', 1), ('{}', '{MOVING_INVOICE}', 2);
         COMMIT;",
        id(2, 1, 99),
        id(1, 1, 1),
        id(4, 1, 98),
        id(4, 1, 99),
        b1 = B[0],
        b2 = B[1]
    ));
    s
}

/// The upstream rows a server of `branches` must hold, table by table (the
/// scope's oracle): shared tables whole; rows of its branches; items of its
/// invoices; and the patients its appointments and invoices refer to.
fn oracle_sql(table: &str, branches: &[&str]) -> String {
    let set = format!("ARRAY[{}]::uuid[]", branches.iter().map(|b| format!("'{b}'")).collect::<Vec<_>>().join(", "));
    let filter = match table {
        "branches" | "services" => "true".to_string(),
        "appointments" | "invoices" => format!("t.branch_id = ANY({set})"),
        "invoice_items" => format!("t.invoice_id IN (SELECT id FROM invoices WHERE branch_id = ANY({set}))"),
        "patients" => format!(
            "t.branch_id = ANY({set})
             OR t.id IN (SELECT patient_id FROM appointments WHERE branch_id = ANY({set}))
             OR t.id IN (SELECT patient_id FROM invoices WHERE branch_id = ANY({set}))"
        ),
        other => panic!("no oracle for {other}"),
    };
    format!("SELECT coalesce(jsonb_agg(to_jsonb(t.*) ORDER BY id), '[]')::text FROM {table} t WHERE {filter}")
}

/// Every synced table of `clinic` holds exactly the oracle's rows, value
/// for value.
async fn assert_holds_its_scope(who: &str, clinic: &Pair, branches: &[&str]) {
    let up = clinic.upstream.connect().await;
    for t in &clinic.tables {
        let want: String = up.query_one(&oracle_sql(t, branches), &[]).await.unwrap_or_else(|e| panic!("oracle {t}: {e}")).get(0);
        let have = Pair::rows(&clinic.local, t).await;
        if have != want {
            panic!("clinic {who} (branches {branches:?}): table {t} is not its scope:\n{}", support::sync::diff_rows(&have, &want));
        }
    }
}

async fn clinic(hint: &str, first: Option<&Pair>, mode: Mode, clinic_id: &str, branches: &[&str]) -> Pair {
    let mut p = match first {
        None => Pair::new(hint, mode).await,
        Some(f) => Pair::joining(hint, f).await,
    };
    // Small pages: some hold only other branches' versions, which the feed leaves out.
    p.batch_size = 7;
    let list = branches.iter().map(|b| format!("\"{b}\"")).collect::<Vec<_>>().join(", ");
    p.sync_extra.push_str(&format!("clinic_id = \"{clinic_id}\"\nbranch_ids = [{list}]\n"));
    p.write_config();
    p.init().await;
    p
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    support::sync::count(db, sql).await
}

/// Ids of the rows of branches other than `mine` that must never reach a
/// clinic of `mine` through the feed.
fn foreign_ids(mine: &[usize]) -> Vec<String> {
    let mut v = Vec::new();
    for b in (1..=3).filter(|b| !mine.contains(b)) {
        for n in 1..=4u32 {
            v.extend([id(1, b, n), id(2, b, n), id(3, b, n), id(4, b, n * 2), id(4, b, n * 2 + 1)]);
        }
    }
    v
}

/// In REST mode: what the stand-in answered `clinic` contains no id of
/// `foreign` (the feed's answers) and, of table reads, only `allowed`.
fn assert_nothing_foreign_returned(who: &str, clinic: &Pair, foreign: &[String], allowed: &[&str]) {
    if !clinic.mode.is_rest() {
        return;
    }
    let log = clinic.standin().response_log("/rest/v1/");
    assert!(log.iter().any(|(p, _)| p.contains("centrovision_sync_changes")), "clinic {who}: the feed was read");
    for (path, body) in &log {
        for f in foreign {
            if body.contains(f.as_str()) && (path.contains("/rpc/") || !allowed.contains(&f.as_str())) {
                panic!("clinic {who}: upstream returned row {f} of another branch in the answer to {path}");
            }
        }
    }
}

async fn each_clinic_holds_exactly_its_branches_and_a_moved_invoice_follows_its_branch(mode: Mode) {
    let a = clinic("bs_a", None, mode, "clinic-a", &[B[0]]).await;
    let mut b = clinic("bs_b", Some(&a), mode, "clinic-b", &[B[1]]).await;
    let c = clinic("bs_c", Some(&a), mode, "clinic-c", &[B[0], B[1]]).await;
    for p in [&a, &b, &c] {
        if mode.is_rest() {
            p.standin().log_responses();
        }
    }
    exec(&a.upstream, &seed_sql()).await;

    // 1. First download: each clinic gets its branches, the shared tables and
    //    the parents of another branch its rows refer to.
    // (The clinics are independent: they sync side by side.)
    tokio::join!(a.once(), b.once(), c.once());
    assert_holds_its_scope("A", &a, &[B[0]]).await;
    assert_holds_its_scope("B", &b, &[B[1]]).await;
    assert_holds_its_scope("C", &c, &[B[0], B[1]]).await;
    assert_eq!(
        count(&a.local, &format!("SELECT count(*) FROM patients WHERE id = '{CROSS_PATIENT}'")).await,
        1,
        "the patient of b2 seen at b1 arrived at A as a parent"
    );
    assert_nothing_foreign_returned("A", &a, &foreign_ids(&[1]), &[CROSS_PATIENT]);
    assert_nothing_foreign_returned("B", &b, &foreign_ids(&[2]), &[]);
    assert_nothing_foreign_returned("C", &c, &foreign_ids(&[1, 2]), &[]);

    // 2. The cloud app moves an invoice from b1 to b2: it leaves A with its
    //    items, arrives at B with them, and stays at C.
    exec(&a.upstream, &format!("UPDATE invoices SET branch_id = '{}' WHERE id = '{MOVING_INVOICE}'", B[1])).await;
    a.once().await;
    tokio::join!(b.once(), c.once());
    a.once().await;
    let items = format!("SELECT count(*) FROM invoice_items WHERE invoice_id = '{MOVING_INVOICE}'");
    assert_eq!(count(&a.local, &items).await, 0, "the moved invoice's items left A");
    assert_eq!(count(&b.local, &items).await, 2, "the moved invoice's items arrived at B with it");
    assert_holds_its_scope("A", &a, &[B[0]]).await;
    assert_holds_its_scope("B", &b, &[B[1]]).await;
    assert_holds_its_scope("C", &c, &[B[0], B[1]]).await;
    // A's removal was local only (under the replication origin, not captured):
    // nothing was deleted upstream, though A synced again after it.
    assert_eq!(count(&a.upstream, &items).await, 2, "A's local removal was not sent upstream as a delete");
    assert_eq!(count(&a.upstream, &format!("SELECT count(*) FROM invoices WHERE id = '{MOVING_INVOICE}'")).await, 1);
    assert_nothing_foreign_returned("A", &a, &foreign_ids(&[1]), &[CROSS_PATIENT]);

    // 3. Up: A writes a patient of b1, a patient and an invoice with an item
    //    of b3 by mistake, then edits the b3 patient, and moves one of its
    //    appointments and one of its invoices to b2. The b1 patient and the
    //    moves go up (B gets the appointment, the invoice and its items) and
    //    the moved rows leave A, the invoice with its items; the b3 rows are
    //    held back, parked, listed by status.
    let (mine, wrong, wrong_inv, wrong_item, moved) = (id(1, 1, 50), id(1, 3, 50), id(3, 3, 50), id(4, 3, 50), id(2, 1, 2));
    let moved_inv = id(3, 1, 3);
    exec(
        &a.local,
        &format!(
            "INSERT INTO patients (id, branch_id, full_name) VALUES ('{mine}', '{b1}', 'new at b1'), ('{wrong}', '{b3}', 'typed at the wrong branch');
             INSERT INTO invoices (id, branch_id, patient_id, number) VALUES ('{wrong_inv}', '{b3}', '{wrong}', 'F-wrong');
             INSERT INTO invoice_items (id, invoice_id, quantity) VALUES ('{wrong_item}', '{wrong_inv}', 1);
             UPDATE patients SET full_name = 'edited' WHERE id = '{wrong}';
             UPDATE appointments SET branch_id = '{b2}' WHERE id = '{moved}';
             UPDATE invoices SET branch_id = '{b2}' WHERE id = '{moved_inv}';",
            b1 = B[0],
            b2 = B[1],
            b3 = B[2]
        ),
    )
    .await;
    // A dies right after the journal settled the batch that delivered the
    // moves, before its down step: the next run (a restart) still removes
    // them, because the pusher noted them in the journal with the batch
    // (in a table it creates itself when an upgrade skipped `init`).
    exec(&a.local.journal(), "DROP TABLE _sync_moved_away").await;
    let crashed = a.exec(&["once"], &[("CENTROVISION_SYNC_CRASH_AT", "push.after_journal_marks")]).await;
    assert!(!crashed.status.success(), "the crash point stopped A after delivering the moves");
    let up_has = |t: &str, k: &str| format!("SELECT count(*) FROM {t} WHERE id = '{k}'");
    assert_eq!(count(&a.local, &up_has("invoices", &moved_inv)).await, 1, "the crash came before A removed its moved invoice");
    a.once().await;
    b.once().await;
    assert_eq!(count(&a.upstream, &up_has("patients", &mine)).await, 1, "A's patient of b1 went up");
    assert_eq!(count(&a.upstream, &up_has("patients", &wrong)).await, 0, "A's patient of b3 was not sent");
    assert_eq!(count(&a.upstream, &up_has("invoices", &wrong_inv)).await, 0, "A's invoice of b3 was not sent");
    assert_eq!(count(&a.upstream, &up_has("invoice_items", &wrong_item)).await, 0, "its item (b3 through the invoice) was not sent");
    assert_eq!(
        count(&b.local, &format!("SELECT count(*) FROM appointments WHERE id = '{moved}' AND branch_id = '{}'", B[1])).await,
        1,
        "the appointment A moved to b2 arrived at B"
    );
    let moved_items = format!("SELECT count(*) FROM invoice_items WHERE invoice_id = '{moved_inv}'");
    assert_eq!(
        count(&b.local, &format!("SELECT count(*) FROM invoices WHERE id = '{moved_inv}' AND branch_id = '{}'", B[1])).await,
        1,
        "the invoice A moved to b2 arrived at B"
    );
    assert_eq!(count(&b.local, &moved_items).await, 2, "with its items");
    assert_eq!(count(&a.local, &up_has("appointments", &moved)).await, 0, "the appointment A moved to b2 left A");
    assert_eq!(count(&a.local, &up_has("invoices", &moved_inv)).await, 0, "the invoice A moved to b2 left A");
    assert_eq!(count(&a.local, &moved_items).await, 0, "its items left A with it");
    assert_eq!(count(&a.upstream, &moved_items).await, 2, "A's removal of its moved rows was not sent upstream as deletes");
    let status = a.ok(&["status", "--json"]).await;
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert!(st["parked"].as_i64().unwrap_or(0) >= 4, "status counts the held-back changes as parked: {}", st["parked"]);
    assert!(
        st["tables"].to_string().contains("outside this server's [sync] branch_ids"),
        "status says why they were not sent: {}",
        st["tables"]
    );
    assert_eq!(st["branch_scope"]["tables"]["invoice_items"], "via invoice_id → invoices", "status prints each table's scope");

    // 4. B takes over b3 and gives up b2: b3's rows are downloaded; b2's stay
    //    until `drop-branch-rows --yes`, which removes them locally only, and
    //    refuses while a change of a b2 row is not confirmed upstream (B dies
    //    between the upstream apply and the journal's mark), naming the fix.
    // 5. Meanwhile `verify --repair` at A (b1) compares only b1's rows: other
    //    branches' rows upstream are neither downloaded nor deleted, A's
    //    held-back b3 rows are not uploaded, and A ends with its scope plus
    //    those rows; `init --upload-existing` journals only A's scope.
    let b2_invoices = format!("SELECT count(*) FROM invoices WHERE branch_id = '{}'", B[1]);
    let at_b = async {
        b.sync_extra = b.sync_extra.replace(B[1], B[2]);
        b.write_config();
        exec(&b.local, &format!("UPDATE invoices SET total = 21 WHERE id = '{}'", id(3, 2, 1))).await;
        let crashed = b.exec(&["once"], &[("CENTROVISION_SYNC_CRASH_AT", "push.after_upstream_apply")]).await;
        assert!(!crashed.status.success(), "the crash point stopped B before the journal marked the change");
        let refused = b.exec(&["drop-branch-rows", "--yes"], &[]).await;
        let said = format!("{}{}", String::from_utf8_lossy(&refused.stdout), String::from_utf8_lossy(&refused.stderr));
        assert!(!refused.status.success(), "drop-branch-rows --yes refuses while a change of the dropped branch is unsent:\n{said}");
        assert!(said.contains("not synced yet") && said.contains("let the service send them"), "the refusal names the fix:\n{said}");
        assert_eq!(count(&b.local, &b2_invoices).await, 6, "the refusal removed nothing");
        b.once().await;
        assert!(count(&b.local, &b2_invoices).await > 0, "b2's rows stay until the removal is confirmed");
        // An edit while the service is stopped is in the slot, not yet in
        // the journal: drop-branch-rows --yes captures it first and refuses.
        let left = count(&b.local, &b2_invoices).await;
        exec(&b.local, &format!("UPDATE invoices SET total = 22 WHERE id = '{}'", id(3, 2, 2))).await;
        let refused = b.exec(&["drop-branch-rows", "--yes"], &[]).await;
        let said = format!("{}{}", String::from_utf8_lossy(&refused.stdout), String::from_utf8_lossy(&refused.stderr));
        assert!(
            !refused.status.success(),
            "drop-branch-rows --yes refuses while an uncaptured change of the dropped branch waits:\n{said}"
        );
        assert!(said.contains("not synced yet") && said.contains("let the service send them"), "the refusal names the fix:\n{said}");
        assert_eq!(count(&b.local, &b2_invoices).await, left, "the refusal removed nothing");
        b.once().await;
        let out = b.ok(&["drop-branch-rows"]).await;
        assert!(String::from_utf8_lossy(&out.stdout).contains("run again with --yes"), "without --yes nothing is removed");
        assert!(count(&b.local, &b2_invoices).await > 0, "without --yes nothing is removed");
        b.ok(&["drop-branch-rows", "--yes"]).await;
        b.once().await;
        assert_holds_its_scope("B after the change", &b, &[B[2]]).await;
        assert_eq!(count(&b.upstream, &b2_invoices).await, 6, "B's removal deleted nothing upstream");
    };
    let at_a = async {
        let per_branch = "SELECT count(*) FROM invoices i JOIN invoice_items t ON t.invoice_id = i.id";
        let before = (count(&a.upstream, "SELECT count(*) FROM invoices").await, count(&a.upstream, per_branch).await);
        let repaired = a.exec(&["verify", "--repair", "--json"], &[]).await;
        let said = format!("{}{}", String::from_utf8_lossy(&repaired.stdout), String::from_utf8_lossy(&repaired.stderr));
        assert!(repaired.status.success(), "verify --repair at a scoped server ends equal:\n{said}");
        assert_eq!(
            (count(&a.upstream, "SELECT count(*) FROM invoices").await, count(&a.upstream, per_branch).await),
            before,
            "the repair deleted no upstream row of another branch"
        );
        assert_eq!(count(&a.upstream, &up_has("invoices", &wrong_inv)).await, 0, "the repair did not upload A's invoice of b3");
        assert_eq!(
            count(&a.local, &format!("SELECT count(*) FROM invoices WHERE branch_id <> '{}'", B[0])).await,
            1,
            "the repair downloaded no invoice of another branch (only A's held-back b3 invoice is here)"
        );
        exec(
            &a.local,
            &format!(
                "DELETE FROM invoice_items WHERE id = '{wrong_item}'; DELETE FROM invoices WHERE id = '{wrong_inv}';
                 DELETE FROM patients WHERE id = '{wrong}'"
            ),
        )
        .await;
        assert_holds_its_scope("A after verify --repair", &a, &[B[0]]).await;
        // `init --upload-existing` journals A's rows but not the patient of
        // b2 it holds as a parent.
        let mut here = 0;
        for t in &a.tables {
            here += count(&a.local, &format!("SELECT count(*) FROM {t}")).await;
        }
        let out = a.ok(&["init", "--upload-existing"]).await;
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(&format!("journaled {} existing rows", here - 1)),
            "init --upload-existing journals the {} rows of b1 and the shared tables, not the parent of b2:\n{said}",
            here - 1
        );
    };
    tokio::join!(at_b, at_a);
}

crate::both_modes!(each_clinic_holds_exactly_its_branches_and_a_moved_invoice_follows_its_branch);
