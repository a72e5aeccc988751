//! The status page (`GET /` on the `[http]` listener): one look answers "is
//! everything in Supabase?" for clinic staff and the group's IT person, who
//! should need neither psql nor a terminal.
//!
//! Rules:
//!
//! - **Rendered here, server-side**, from what `/status` already knows plus
//!   the hourly history ([`crate::store::history`]), as HTML with inline SVG
//!   charts. The page's script only swaps in a fresh render from
//!   `/api/page` every few seconds and posts `/sync`; without the script the
//!   page still reads right.
//! - **One verdict, in plain words**: in sync, behind (offline, or changes
//!   on their way), or needs attention (something a person must fix); the
//!   reason names the count and the time, e.g. "Sin internet desde las
//!   10:42 — 312 cambios guardados localmente, se enviarán al volver". An
//!   outage is normal in a clinic: it is "behind", not "attention", unless
//!   an operator alert says otherwise.
//! - **Offline-proof**: no external URL anywhere (the clinic may have no
//!   internet); CSS and script are embedded in the binary and served by it.
//! - **Every text in Spanish and English** (`[http] language`); dynamic
//!   text (table names, errors) is HTML-escaped.
//! - **Nothing runs when nobody looks**: all of it is computed per request.

mod chart;

use chrono::{DateTime, Local, Utc};
use serde::Serialize;

use crate::config::Language;
use crate::status::Status;
use crate::store::{HourSample, ParkedRow};

/// The stylesheet and the script, embedded in the binary.
pub const CSS: &str = include_str!("page.css");
pub const JS: &str = include_str!("page.js");

/// Hours of history the page charts (the longer range, 7 days).
pub const HISTORY_HOURS: i32 = 7 * 24;
/// Parked rows listed on the page (the total is always shown).
pub const PARKED_LISTED: i64 = 20;

/// The one-word answer of the banner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    InSync,
    Behind,
    Attention,
}

/// An alert as the page shows it.
#[derive(Debug, Clone)]
pub struct AlertView {
    pub key: String,
    pub since: DateTime<Utc>,
    /// The alerter's summary (English, names the fix where there is one).
    pub summary: String,
}

/// Conflicts the conflict rule decided upstream, as last read (the page
/// reads them in the background, at most once a minute, while someone
/// looks).
#[derive(Debug, Clone)]
pub struct ConflictsView {
    /// When upstream was asked.
    pub read_at: DateTime<Utc>,
    /// The conflict log's entries (within its retention), or why unknown.
    pub total: Result<i64, String>,
    /// The newest few: table, key, winner writer, loser writer, rule.
    pub latest: Vec<ConflictLine>,
}

#[derive(Debug, Clone)]
pub struct ConflictLine {
    pub decided_at: String,
    pub table: String,
    pub key: String,
    pub kept: String,
    pub lost: String,
    pub rule: String,
}

/// Everything the page is drawn from.
#[derive(Debug)]
pub struct PageInput<'a> {
    pub lang: Language,
    pub now: DateTime<Utc>,
    /// The local snapshot, or why it cannot be read.
    pub status: Result<&'a Status, String>,
    pub upstream_online: bool,
    pub upstream_since: DateTime<Utc>,
    pub alerts: &'a [AlertView],
    pub history: &'a [HourSample],
    pub parked: &'a [ParkedRow],
    pub conflicts: Option<&'a ConflictsView>,
}

/// What `/api/page` answers: the verdict in words and the rendered live
/// part of the page.
#[derive(Debug, Serialize)]
pub struct PageData {
    pub verdict: Verdict,
    pub headline: String,
    pub reasons: Vec<String>,
    pub title: String,
    pub html: String,
}

fn tr(l: Language, es: &'static str, en: &'static str) -> &'static str {
    match l {
        Language::Es => es,
        Language::En => en,
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A timestamptz text from the database (`2026-12-02 10:42:05.1+00`).
pub fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.with_timezone(&Utc));
        }
    }
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

/// A moment as the clinic reads it: the local clock time, with the date
/// when it is not today.
fn clock(l: Language, t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let (t, now) = (t.with_timezone(&Local), now.with_timezone(&Local));
    if t.date_naive() == now.date_naive() {
        t.format("%H:%M").to_string()
    } else {
        match l {
            Language::Es => t.format("%d/%m %H:%M").to_string(),
            Language::En => t.format("%Y-%m-%d %H:%M").to_string(),
        }
    }
}

/// "desde las 10:42" / "since 10:42" (or with the date).
fn since_phrase(l: Language, t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let c = clock(l, t, now);
    let today = t.with_timezone(&Local).date_naive() == now.with_timezone(&Local).date_naive();
    match (l, today) {
        (Language::Es, true) => format!("desde las {c}"),
        (Language::Es, false) => format!("desde el {c}"),
        (Language::En, _) => format!("since {c}"),
    }
}

fn ago(l: Language, secs: f64) -> String {
    let h = crate::connectivity::human(std::time::Duration::from_secs_f64(secs.max(0.0)));
    match l {
        Language::Es => format!("hace {h}"),
        Language::En => format!("{h} ago"),
    }
}

fn ts_text(l: Language, s: Option<&str>, now: DateTime<Utc>) -> String {
    match s.and_then(parse_ts) {
        Some(t) => clock(l, t, now),
        None => tr(l, "nunca", "never").to_string(),
    }
}

fn changes(l: Language, n: i64) -> String {
    match (l, n) {
        (Language::Es, 1) => "1 cambio".into(),
        (Language::Es, n) => format!("{n} cambios"),
        (Language::En, 1) => "1 change".into(),
        (Language::En, n) => format!("{n} changes"),
    }
}

/// Alerts that are the consequence of being behind, not a fault: an outage
/// alone raises them and ends them.
fn is_backlog_alert(key: &str) -> bool {
    matches!(key, "backlog" | "pending_age")
}

/// The alert's meaning and fix in the page's language (the summary, in
/// English, for alerts the page does not know).
fn alert_text(l: Language, a: &AlertView) -> (String, String) {
    let (what, fix): (&str, &str) = match a.key.as_str() {
        "backlog" => (
            tr(l, "Muchos cambios esperan ser enviados a Supabase.", "Many changes wait to be sent to Supabase."),
            tr(
                l,
                "Normal durante un corte de internet; si hay internet, revise que Supabase responda.",
                "Normal during an internet outage; if the internet works, check that Supabase answers.",
            ),
        ),
        "pending_age" => (
            tr(l, "Hay un cambio esperando desde hace mucho.", "A change has been waiting for a long time."),
            tr(l, "Revise la conexión a internet y a Supabase.", "Check the internet connection and Supabase."),
        ),
        "slot_missing" | "slot_lost" => (
            tr(
                l,
                "La captura de cambios locales se detuvo: el slot de replicación falta o se invalidó.",
                "Capture of local changes stopped: the replication slot is missing or was invalidated.",
            ),
            tr(
                l,
                "Detenga el servicio, ejecute `centrovision-sync resync` y vuelva a iniciarlo.",
                "Stop the service, run `centrovision-sync resync` and start it again.",
            ),
        ),
        "slot_lag" => (
            tr(l, "El slot retiene mucho WAL: el disco podría llenarse.", "The slot retains a lot of WAL: the disk may fill."),
            tr(l, "Revise que el servicio esté capturando (registro del servicio).", "Check that the service is capturing (its log)."),
        ),
        "upstream_rejected" => (
            tr(l, "Supabase rechaza al servicio.", "Supabase refuses the service."),
            tr(
                l,
                "Revise [supabase] service_key / db_url y que las funciones estén instaladas (`init --upstream`).",
                "Check [supabase] service_key / db_url and that the functions are installed (`init --upstream`).",
            ),
        ),
        "drift" => (
            tr(l, "La comparación diaria encontró diferencias.", "The daily comparison found differences."),
            tr(l, "Ejecute `centrovision-sync verify --repair`.", "Run `centrovision-sync verify --repair`."),
        ),
        k if k.ends_with("_failing") => (
            tr(l, "Una tarea del servicio falla una y otra vez.", "A task of the service fails again and again."),
            tr(l, "Vea el detalle abajo y el registro del servicio.", "See the detail below and the service's log."),
        ),
        _ => ("", ""),
    };
    if what.is_empty() { (a.summary.clone(), String::new()) } else { (what.to_string(), fix.to_string()) }
}

/// The verdict and its reasons, most important first.
pub fn verdict(i: &PageInput<'_>) -> (Verdict, String, Vec<String>) {
    let l = i.lang;
    let st = match &i.status {
        Ok(s) => s,
        Err(e) => {
            return (
                Verdict::Attention,
                tr(l, "Necesita atención", "Needs attention").into(),
                vec![format!("{}: {e}", tr(l, "No se puede leer la base de datos local", "The local database cannot be read"))],
            );
        }
    };
    let mut attention = Vec::new();
    match &st.slot {
        None => attention.push(
            tr(
                l,
                "La captura de cambios locales está detenida (falta el slot de replicación)",
                "Capture of local changes is stopped (the replication slot is missing)",
            )
            .to_string(),
        ),
        Some(s) if s.wal_status.as_deref() == Some("lost") => attention.push(
            tr(
                l,
                "La captura de cambios locales está detenida (el slot de replicación se invalidó)",
                "Capture of local changes is stopped (the replication slot was invalidated)",
            )
            .to_string(),
        ),
        _ => {}
    }
    if st.parked > 0 {
        attention.push(match (l, st.parked) {
            (Language::Es, 1) => "1 cambio rechazado por Supabase espera revisión".to_string(),
            (Language::Es, n) => format!("{n} cambios rechazados por Supabase esperan revisión"),
            (Language::En, 1) => "1 change rejected by Supabase waits for a look".to_string(),
            (Language::En, n) => format!("{n} changes rejected by Supabase wait for a look"),
        });
    }
    if st.parked_down > 0 {
        attention.push(match (l, st.parked_down) {
            (Language::Es, 1) => "1 fila de Supabase rechazada por la base local espera revisión (se reintenta)".to_string(),
            (Language::Es, n) => format!("{n} filas de Supabase rechazadas por la base local esperan revisión (se reintentan)"),
            (Language::En, 1) => "1 Supabase row rejected by the local database waits for a look (retried)".to_string(),
            (Language::En, n) => format!("{n} Supabase rows rejected by the local database wait for a look (retried)"),
        });
    }
    for a in i.alerts.iter().filter(|a| !is_backlog_alert(&a.key) && !a.key.starts_with("slot_missing") && a.key != "slot_lost") {
        attention.push(format!("{}: {}", tr(l, "Alerta", "Alert"), alert_text(l, a).0));
    }
    let mut behind = Vec::new();
    if !i.upstream_online {
        behind.push(match l {
            Language::Es => format!(
                "Sin internet {} — {} guardados localmente, se enviarán al volver",
                since_phrase(l, i.upstream_since, i.now),
                changes(l, st.backlog)
            ),
            Language::En => format!(
                "No internet {} — {} saved locally, they will be sent when it is back",
                since_phrase(l, i.upstream_since, i.now),
                changes(l, st.backlog)
            ),
        });
    } else if st.backlog > 0 {
        let oldest = st.oldest_pending_seconds.map(|s| format!(" ({} {})", tr(l, "el más antiguo", "the oldest"), ago(l, s)));
        behind.push(match l {
            Language::Es => format!("{} en camino a Supabase{}", changes(l, st.backlog), oldest.unwrap_or_default()),
            Language::En => format!("{} on their way to Supabase{}", changes(l, st.backlog), oldest.unwrap_or_default()),
        });
    }
    if !attention.is_empty() {
        attention.extend(behind);
        return (Verdict::Attention, tr(l, "Necesita atención", "Needs attention").into(), attention);
    }
    if !behind.is_empty() {
        return (Verdict::Behind, tr(l, "Atrasado", "Behind").into(), behind);
    }
    let last = st.tables.iter().filter_map(|t| t.last_sync_up.as_deref().and_then(parse_ts)).max();
    let mut reason = tr(l, "Todo está en Supabase: no hay cambios pendientes", "Everything is in Supabase: no changes waiting").to_string();
    if let Some(t) = last {
        reason.push_str(&match l {
            Language::Es => format!(" (último envío a las {})", clock(l, t, i.now)),
            Language::En => format!(" (last sent at {})", clock(l, t, i.now)),
        });
    }
    (Verdict::InSync, tr(l, "Sincronizado", "In sync").into(), vec![reason])
}

/// The live part of the page and its verdict.
pub fn render(i: &PageInput<'_>) -> PageData {
    let l = i.lang;
    let (v, headline, reasons) = verdict(i);
    let mut h = String::with_capacity(16 * 1024);
    let class = match v {
        Verdict::InSync => "ok",
        Verdict::Behind => "behind",
        Verdict::Attention => "attention",
    };
    h.push_str(&format!("<section id=\"banner\" class=\"banner {class}\" data-verdict=\"{}\">", verdict_key(v)));
    h.push_str(&format!("<h1>{}</h1>", esc(&headline)));
    for r in &reasons {
        h.push_str(&format!("<p class=\"reason\">{}</p>", esc(r)));
    }
    h.push_str(&format!(
        "<p class=\"updated\">{} {}</p></section>",
        tr(l, "Actualizado a las", "Updated at"),
        i.now.with_timezone(&Local).format("%H:%M:%S")
    ));
    if let Ok(st) = i.status {
        state_section(&mut h, i, st);
        charts_section(&mut h, i);
        parked_section(&mut h, i, st);
        conflicts_section(&mut h, i, st);
        alerts_section(&mut h, i);
        tables_section(&mut h, i, st);
        h.push_str(&format!(
            "<p class=\"foot\">{} <b>{}</b> · {}</p>",
            tr(l, "Clínica", "Clinic"),
            esc(&st.clinic_id),
            esc(&files_line(l, st.files.as_ref()))
        ));
    }
    let title = format!("{} — CentroVision Sync", headline);
    PageData { verdict: v, headline, reasons, title, html: h }
}

/// The study files' line: what waits to move, failures, conflicts.
fn files_line(l: Language, f: Option<&crate::store::files::FilesSummary>) -> String {
    let Some(f) = f else {
        return tr(l, "Archivos de estudios: no se espejan ([storage] no configurado).", "Study files: not mirrored (no [storage]).")
            .into();
    };
    let mut s = format!(
        "{} {} ({} MB)",
        tr(l, "Archivos de estudios esperando moverse:", "Study files waiting to move:"),
        f.pending,
        f.pending_bytes / (1024 * 1024)
    );
    if let Some(w) = f.oldest_waiting_seconds.filter(|_| f.pending > 0) {
        s.push_str(&format!(
            ", {} {}",
            tr(l, "el más antiguo espera desde hace", "the oldest for"),
            crate::connectivity::human(std::time::Duration::from_secs(w.max(0) as u64))
        ));
    }
    if f.failed > 0 {
        s.push_str(&format!(", {} {}", f.failed, tr(l, "no se pueden mover (ver estado)", "cannot move (see status)")));
    }
    if f.conflicts > 0 {
        s.push_str(&format!(
            ", {} {}",
            f.conflicts,
            tr(l, "conflictos (la versión perdedora se guardó al lado)", "conflicts (the losing version kept beside)")
        ));
    }
    s.push('.');
    s
}

fn verdict_key(v: Verdict) -> &'static str {
    match v {
        Verdict::InSync => "in_sync",
        Verdict::Behind => "behind",
        Verdict::Attention => "attention",
    }
}

fn row(h: &mut String, k: &str, v: &str, class: &str) {
    h.push_str(&format!("<tr><th>{}</th><td class=\"{class}\">{}</td></tr>", esc(k), esc(v)));
}

fn state_section(h: &mut String, i: &PageInput<'_>, st: &Status) {
    let l = i.lang;
    h.push_str(&format!("<section class=\"card\"><h2>{}</h2><table class=\"kv\">", tr(l, "Estado", "State")));
    let up = if i.upstream_online {
        format!("{} {}", tr(l, "En línea", "Online"), since_phrase(l, i.upstream_since, i.now))
    } else {
        format!("{} {}", tr(l, "Sin conexión", "Offline"), since_phrase(l, i.upstream_since, i.now))
    };
    row(h, "Supabase", &up, if i.upstream_online { "good" } else { "warn" });
    row(h, tr(l, "Base de datos local", "Local database"), tr(l, "Conectada", "Connected"), "good");
    row(
        h,
        tr(l, "Cambios en espera", "Changes waiting"),
        &match st.oldest_pending_seconds {
            Some(s) if st.backlog > 0 => format!("{} ({} {})", st.backlog, tr(l, "el más antiguo", "the oldest"), ago(l, s)),
            _ => st.backlog.to_string(),
        },
        if st.backlog > 0 { "warn" } else { "good" },
    );
    row(h, tr(l, "Cambios rechazados", "Rejected changes"), &st.parked.to_string(), if st.parked > 0 { "bad" } else { "good" });
    let up_last = st.tables.iter().filter_map(|t| t.last_sync_up.as_deref().and_then(parse_ts)).max();
    let down_last = st.tables.iter().filter_map(|t| t.last_sync_down.as_deref().and_then(parse_ts)).max();
    let fmt = |t: Option<DateTime<Utc>>| t.map_or_else(|| tr(l, "nunca", "never").to_string(), |t| clock(l, t, i.now));
    row(h, tr(l, "Último envío a Supabase", "Last sent to Supabase"), &fmt(up_last), "");
    row(h, tr(l, "Última recepción de Supabase", "Last received from Supabase"), &fmt(down_last), "");
    match &st.slot {
        Some(s) => {
            let kb = |b: Option<i64>| b.map_or("-".to_string(), |b| format!("{:.1} MB", b as f64 / (1024.0 * 1024.0)));
            let state = if s.active { tr(l, "capturando", "capturing") } else { tr(l, "sin capturar", "not capturing") };
            row(
                h,
                tr(l, "Captura (slot)", "Capture (slot)"),
                &format!(
                    "{state}; {} {}; {} {}",
                    tr(l, "retraso", "lag"),
                    kb(s.lag_bytes),
                    tr(l, "retiene", "retains"),
                    kb(s.retained_bytes)
                ),
                if s.wal_status.as_deref() == Some("lost") { "bad" } else { "" },
            );
        }
        None => row(h, tr(l, "Captura (slot)", "Capture (slot)"), tr(l, "FALTA", "MISSING"), "bad"),
    }
    h.push_str("</table></section>");
}

fn charts_section(h: &mut String, i: &PageInput<'_>) {
    let l = i.lang;
    h.push_str(&format!("<section class=\"card\"><h2>{}</h2>", tr(l, "Actividad", "Activity")));
    let day_start = i.history.len().saturating_sub(24);
    for (class, slice, label) in
        [("r24", &i.history[day_start..], tr(l, "últimas 24 h", "last 24 h")), ("r7d", i.history, tr(l, "últimos 7 días", "last 7 days"))]
    {
        h.push_str(&format!("<div class=\"{class}\">"));
        h.push_str(&format!(
            "<h3>{} — {label}</h3>{}",
            tr(l, "Filas sincronizadas por hora", "Rows synced per hour"),
            chart::rows_chart(slice, l, i.now)
        ));
        h.push_str(&format!(
            "<p class=\"legend\"><span class=\"k up\"></span>{} <span class=\"k down\"></span>{}</p>",
            tr(l, "enviadas a Supabase", "sent to Supabase"),
            tr(l, "recibidas de Supabase", "received from Supabase")
        ));
        h.push_str(&format!(
            "<h3>{} — {label}</h3>{}</div>",
            tr(l, "Cambios en espera", "Changes waiting"),
            chart::backlog_chart(slice, l, i.now)
        ));
    }
    h.push_str("</section>");
}

fn parked_section(h: &mut String, i: &PageInput<'_>, st: &Status) {
    let l = i.lang;
    h.push_str(&format!(
        "<section class=\"card\" id=\"parked\"><h2>{} ({})</h2>",
        tr(l, "Cambios rechazados", "Rejected changes"),
        st.parked
    ));
    if i.parked.is_empty() {
        h.push_str(&format!("<p>{}</p></section>", tr(l, "Ninguno.", "None.")));
        return;
    }
    h.push_str(&format!(
        "<p>{}</p><ul class=\"list\">",
        tr(
            l,
            "Supabase no aceptó estos cambios; quedan guardados aquí. Corrija la causa y use `centrovision-sync replay` o `verify --repair`.",
            "Supabase did not accept these changes; they are kept here. Fix the cause, then use `centrovision-sync replay` or `verify --repair`.",
        )
    ));
    for p in i.parked {
        h.push_str(&format!(
            "<li><b>{}</b> {} <code>{}</code> — {}<br><span class=\"err\">{}</span></li>",
            esc(&p.table),
            esc(&p.operation),
            esc(p.record_id.as_deref().unwrap_or("-")),
            esc(&ts_text(l, p.parked_at.as_deref(), i.now)),
            esc(p.error.as_deref().unwrap_or(""))
        ));
    }
    h.push_str("</ul></section>");
}

fn conflicts_section(h: &mut String, i: &PageInput<'_>, st: &Status) {
    let l = i.lang;
    h.push_str(&format!("<section class=\"card\" id=\"conflicts\"><h2>{}</h2>", tr(l, "Conflictos", "Conflicts")));
    let known = i.conflicts.map(|c| c.total.as_ref().map(|n| *n));
    match (known, st.conflicts) {
        (Some(Ok(n)), _) | (None, Some(n)) => {
            h.push_str(&format!(
                "<p>{}: <b>{n}</b>. {}</p>",
                tr(l, "Decididos por la regla de conflictos en Supabase", "Decided by the conflict rule in Supabase"),
                tr(
                    l,
                    "El cambio más reciente gana; entre dos iguales, decide el nombre del escritor. Nada se pierde: el perdedor queda en el registro de conflictos.",
                    "The later change wins; between equals, the writer's name decides. Nothing is lost: the loser stays in the conflict log.",
                )
            ));
        }
        (Some(Err(e)), _) => h.push_str(&format!("<p>{}: {}</p>", tr(l, "No se pudieron consultar", "Could not be read"), esc(e))),
        (None, None) => h.push_str(&format!("<p>{}</p>", tr(l, "Consultando a Supabase…", "Asking Supabase…"))),
    }
    if let Some(c) = i.conflicts
        && !c.latest.is_empty()
    {
        h.push_str("<ul class=\"list\">");
        for x in &c.latest {
            h.push_str(&format!(
                "<li><b>{}</b> <code>{}</code> — {}: {} · {}: {}<br><span class=\"rule\">{}: {}</span></li>",
                esc(&x.table),
                esc(&x.key),
                tr(l, "quedó", "kept"),
                esc(&x.kept),
                tr(l, "perdió", "lost"),
                esc(&x.lost),
                tr(l, "regla", "rule"),
                esc(&x.rule)
            ));
        }
        h.push_str("</ul>");
    }
    h.push_str("</section>");
}

fn alerts_section(h: &mut String, i: &PageInput<'_>) {
    let l = i.lang;
    h.push_str(&format!(
        "<section class=\"card\" id=\"alerts\"><h2>{} ({})</h2>",
        tr(l, "Alertas activas", "Active alerts"),
        i.alerts.len()
    ));
    if i.alerts.is_empty() {
        h.push_str(&format!("<p>{}</p></section>", tr(l, "Ninguna.", "None.")));
        return;
    }
    h.push_str("<ul class=\"list\">");
    for a in i.alerts {
        let (what, fix) = alert_text(l, a);
        h.push_str(&format!("<li><b>{}</b> ({})<br>{}", esc(&what), esc(&since_phrase(l, a.since, i.now)), esc(&a.summary)));
        if !fix.is_empty() {
            h.push_str(&format!("<br><span class=\"fix\">{}: {}</span>", tr(l, "Solución", "Fix"), esc(&fix)));
        }
        h.push_str("</li>");
    }
    h.push_str("</ul></section>");
}

fn tables_section(h: &mut String, i: &PageInput<'_>, st: &Status) {
    let l = i.lang;
    h.push_str(&format!(
        "<section class=\"card\"><h2>{}</h2><div class=\"scroll\"><table class=\"grid\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        tr(l, "Tablas", "Tables"),
        tr(l, "Tabla", "Table"),
        tr(l, "Último envío", "Last sent"),
        tr(l, "Última recepción", "Last received"),
        tr(l, "En espera", "Waiting"),
        tr(l, "Rechazados", "Rejected"),
    ));
    for t in &st.tables {
        let class = if t.parked > 0 {
            " class=\"bad\""
        } else if t.pending > 0 {
            " class=\"warn\""
        } else {
            ""
        };
        h.push_str(&format!(
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.table),
            esc(&ts_text(l, t.last_sync_up.as_deref(), i.now)),
            esc(&ts_text(l, t.last_sync_down.as_deref(), i.now)),
            t.pending,
            t.parked
        ));
    }
    h.push_str("</table></div></section>");
}

/// The whole page: the shell around [`render`]'s live part. `token_form`
/// is never part of it; see [`login_page`].
pub fn full_page(lang: Language, data: &PageData) -> String {
    let l = lang;
    format!(
        "<!doctype html>\n<html lang=\"{code}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><link rel=\"stylesheet\" href=\"assets/page.css\"></head>\
         <body data-verdict=\"{verdict}\"><header><span class=\"brand\">CentroVision Sync</span>\
         <button id=\"sync\" type=\"button\" data-done=\"{done}\" data-failed=\"{failed}\">{sync}</button></header>\
         <nav class=\"range\"><button type=\"button\" data-range=\"r24\" class=\"on\">24 h</button>\
         <button type=\"button\" data-range=\"r7d\">{week}</button></nav>\
         <main id=\"live\">{live}</main>\
         <p id=\"note\" data-offline=\"{offline}\"></p>\
         <script src=\"assets/page.js\"></script></body></html>\n",
        code = match l {
            Language::Es => "es",
            Language::En => "en",
        },
        title = esc(&data.title),
        verdict = verdict_key(data.verdict),
        sync = tr(l, "Sincronizar ahora", "Sync now"),
        done = tr(l, "Sincronización pedida", "Sync requested"),
        failed = tr(l, "No se pudo pedir la sincronización", "Could not request a sync"),
        week = tr(l, "7 días", "7 days"),
        offline = tr(
            l,
            "Sin respuesta del servicio; se muestra el último estado conocido.",
            "The service does not answer; showing the last known state."
        ),
        live = data.html,
    )
}

/// The token form shown instead of the page when `[http] token` is set and
/// the request carries none (or a wrong one).
pub fn login_page(lang: Language, wrong: bool) -> String {
    let l = lang;
    format!(
        "<!doctype html>\n<html lang=\"{code}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>CentroVision Sync</title><link rel=\"stylesheet\" href=\"assets/page.css\"></head>\
         <body><header><span class=\"brand\">CentroVision Sync</span></header><main><section class=\"card\">\
         <h2>{heading}</h2>{wrong}<form method=\"post\" action=\"login\">\
         <label>{label} <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">{enter}</button></form></section></main></body></html>\n",
        code = match l {
            Language::Es => "es",
            Language::En => "en",
        },
        heading = tr(l, "Acceso al estado de sincronización", "Sync status sign-in"),
        wrong = if wrong { format!("<p class=\"bad\">{}</p>", tr(l, "Token incorrecto.", "Wrong token.")) } else { String::new() },
        label = tr(l, "Token ([http] token)", "Token ([http] token)"),
        enter = tr(l, "Entrar", "Sign in"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{SlotStatus, TableStatus};

    fn status(backlog: i64, parked: i64) -> Status {
        Status {
            clinic_id: "sucursal-centro".into(),
            conflicts: None,
            tables: vec![TableStatus {
                table: "patients".into(),
                last_sync_down: None,
                last_sync_up: Some("2026-12-02 10:40:00+00".into()),
                records_synced_down: 0,
                records_synced_up: 3,
                pending: backlog,
                parked,
                last_error: None,
                parked_down: 0,
                parked_down_error: None,
                parked_down_key: None,
            }],
            backlog,
            parked,
            parked_down: 0,
            oldest_pending_seconds: (backlog > 0).then_some(90.0),
            slot: Some(SlotStatus {
                name: "s".into(),
                active: true,
                confirmed_flush_lsn: None,
                retained_bytes: Some(0),
                lag_bytes: Some(0),
                wal_status: Some("reserved".into()),
            }),
            journaled_lsn: None,
            oldest_replayable_lsn: None,
            upstream: None,
            alerts: vec![],
            push_note: None,
            files: None,
        }
    }

    fn input<'a>(st: &'a Status, online: bool, lang: Language) -> PageInput<'a> {
        PageInput {
            lang,
            now: Utc::now(),
            status: Ok(st),
            upstream_online: online,
            upstream_since: Utc::now() - chrono::Duration::minutes(5),
            alerts: &[],
            history: &[],
            parked: &[],
            conflicts: None,
        }
    }

    #[test]
    fn an_outage_with_a_backlog_is_behind_and_says_since_when_and_how_many_wait() {
        let st = status(312, 0);
        let i = input(&st, false, Language::Es);
        let (v, head, reasons) = verdict(&i);
        assert_eq!(v, Verdict::Behind);
        assert_eq!(head, "Atrasado");
        let since = i.upstream_since.with_timezone(&Local).format("%H:%M").to_string();
        assert_eq!(reasons[0], format!("Sin internet desde las {since} — 312 cambios guardados localmente, se enviarán al volver"));
        let (_, _, en) = verdict(&PageInput { lang: Language::En, ..i });
        assert!(en[0].starts_with("No internet since") && en[0].contains("312 changes saved locally"), "{en:?}");
    }

    #[test]
    fn a_parked_row_needs_attention_even_when_online() {
        let st = status(0, 1);
        let (v, _, reasons) = verdict(&input(&st, true, Language::Es));
        assert_eq!(v, Verdict::Attention);
        assert_eq!(reasons[0], "1 cambio rechazado por Supabase espera revisión");
    }

    #[test]
    fn the_page_shows_the_study_files_waiting_and_their_conflicts() {
        let mut st = status(0, 0);
        st.files = Some(crate::store::files::FilesSummary {
            pending: 3,
            pending_bytes: 5 * 1024 * 1024,
            oldest_waiting_seconds: Some(120),
            failed: 1,
            conflicts: 2,
            first_error: None,
        });
        let html = render(&input(&st, true, Language::En)).html;
        assert!(html.contains("Study files waiting to move: 3 (5 MB), the oldest for"), "{html}");
        assert!(html.contains("1 cannot move") && html.contains("2 conflicts"), "{html}");
        st.files = None;
        assert!(render(&input(&st, true, Language::En)).html.contains("Study files: not mirrored"));
    }

    #[test]
    fn nothing_waiting_and_online_is_in_sync() {
        let st = status(0, 0);
        let (v, head, reasons) = verdict(&input(&st, true, Language::En));
        assert_eq!((v, head.as_str()), (Verdict::InSync, "In sync"));
        assert!(reasons[0].starts_with("Everything is in Supabase"), "{reasons:?}");
    }

    #[test]
    fn dynamic_text_is_escaped_and_the_page_names_no_external_url() {
        let mut st = status(0, 1);
        st.tables[0].table = "<script>x</script>".into();
        let parked = [ParkedRow {
            id: 1,
            table: "services".into(),
            record_id: Some("\"><img src=x>".into()),
            operation: "INSERT".into(),
            error: Some("22P02 <b>".into()),
            parked_at: None,
        }];
        let i = PageInput { parked: &parked, ..input(&st, true, Language::Es) };
        let data = render(&i);
        let page = full_page(Language::Es, &data);
        assert!(!page.contains("<script>x") && !page.contains("<img src=x>") && page.contains("22P02 &lt;b&gt;"), "{page}");
        for text in [page.as_str(), CSS, JS, &login_page(Language::Es, true)] {
            assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"), "an external URL in the page");
        }
    }
}
