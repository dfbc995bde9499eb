//! The status page on the ops listener (`GET /`), in the spirit of HAProxy's
//! stats page: one self-contained HTML document (inline CSS, no script,
//! nothing fetched) that refreshes itself every 2 s.
//!
//! Every value sits in an element with a stable `id` or `data-` attribute
//! (`<tr data-switch="sim-1">`, `<td data-outcome="committed">`,
//! `<td data-reason="missing_role">`, `id="unfinished"`), so tests and
//! scrapers can find it. Switch rows come from [`SwitchState::view`], so the
//! page and `GET /v1/switches` agree.
//!
//! [`SwitchState::view`]: crate::switches::SwitchState::view

use std::fmt::Write;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;
use prometheus::IntCounterVec;
use prometheus::core::Collector;

use super::Readiness;
use super::trends::{self, Trends};
use crate::edge::{AppState, Body};
use crate::ledger::UNFINISHED_AGE_BOUNDS_MS;
use crate::metrics::TxOutcome;
use crate::switches::SwitchView;

/// Refusal reasons always listed, even at 0; others follow as seen.
const REASONS: &[&str] = &[
    "rate_limited_ip",
    "rate_limited_client",
    "malformed",
    "expired",
    "missing_role",
];

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#f6f6f4}\
h1{margin:0;font-size:1.5em}h2{font-size:1.1em;margin:1.4em 0 .4em}header p{margin:.2em 0;color:#555}\
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002}\
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}th{background:#e4e4e0}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
.grid{display:flex;flex-wrap:wrap;gap:2em}\
tr.up td.status{background:#2e7d32;color:#fff}tr.down td.status{background:#c62828;color:#fff}\
tr.ejected td.status,tr.outlier td.status{background:#ef6c00;color:#fff}\
p.panic{background:#c62828;color:#fff;padding:.5em;font-weight:bold}tr.unprobed td.status{background:#9e9e9e;color:#fff}\
tr.down{background:#fdecea}tr.ejected{background:#fff3e0}tr.unprobed{background:#f2f2f2}\
td.status{font-weight:bold;text-align:center}\
#verdict{font-size:1.3em;font-weight:bold;padding:.4em .7em;margin:.6em 0;display:inline-block}\
#verdict.ready{background:#2e7d32;color:#fff}#verdict.not-ready{background:#c62828;color:#fff}\
.trends{display:flex;flex-wrap:wrap;gap:1.5em}.trend h3{margin:.2em 0;font-size:1em}\
figure{margin:0 0 .4em}figcaption{font-size:.85em;color:#555}svg{border:1px solid #ccc}";

/// Escapes text for HTML element content and quoted attribute values.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A switch's state as the page shows it: UP, DOWN, EJECTED or UNPROBED.
fn switch_status(view: &SwitchView) -> &'static str {
    let h = &view.health;
    if !h.probed {
        "UNPROBED"
    } else if h.ejected {
        "EJECTED"
    } else if h.outlier_ejected {
        "OUTLIER"
    } else if h.healthy {
        "UP"
    } else {
        "DOWN"
    }
}

/// Every label value of a one-label counter and its count: the `known`
/// labels first (0 when never counted), then any other in collection order.
fn counts(vec: &IntCounterVec, known: &[&str]) -> Vec<(String, u64)> {
    let mut rows: Vec<(String, u64)> = known.iter().map(|k| (k.to_string(), 0)).collect();
    for family in vec.collect() {
        for m in family.get_metric() {
            let Some(label) = m.get_label().first() else {
                continue;
            };
            let value = m.get_counter().get_value() as u64;
            match rows.iter_mut().find(|(k, _)| k == label.value()) {
                Some(row) => row.1 = value,
                None => rows.push((label.value().to_owned(), value)),
            }
        }
    }
    rows
}

/// One two-column table of label → count, each count in `<td data-{attr}="label">`.
fn count_table(out: &mut String, title: &str, id: &str, attr: &str, rows: &[(String, u64)]) {
    let _ = write!(
        out,
        "<section><h2>{title}</h2><table id=\"{id}\"><tr><th>{attr}</th><th>count</th></tr>"
    );
    for (label, n) in rows {
        let label = escape(label);
        let _ = write!(
            out,
            "<tr><td>{label}</td><td class=\"n\" data-{attr}=\"{label}\">{n}</td></tr>"
        );
    }
    out.push_str("</table></section>");
}

/// One `<tr>` of the switch table.
fn switch_row(out: &mut String, v: &SwitchView) {
    let status = switch_status(v);
    let probe = match &v.health.last_probe_at {
        Some(at) if v.health.last_probe_ok => format!("{} ok", escape(at)),
        Some(at) => format!("{} failed", escape(at)),
        None => "never".to_owned(),
    };
    let _ = write!(
        out,
        "<tr data-switch=\"{name}\" class=\"{class}\"><td class=\"name\">{name}</td>\
         <td class=\"url\">{url}</td><td class=\"status\">{status}</td>\
         <td class=\"last-probe\">{probe}</td><td class=\"n latency\">{latency:.1} ms</td>\
         <td class=\"n in-flight\">{in_flight}</td><td class=\"n approved\">{approved}</td>\
         <td class=\"n declined\">{declined}</td><td class=\"n failed\">{failed}</td>\
         <td class=\"n weight\">{weight}</td><td class=\"n ewma\">{ewma:.1} ms</td>\
         <td class=\"n score\">{score:.4}</td><td class=\"n success\">{success}</td>\
         <td class=\"n share\">{share:.0}%</td><td class=\"n slow-start\">{ramp:.0}%</td>\
         <td class=\"n outlier-ejections\">{ejections}</td></tr>",
        name = escape(&v.name),
        url = escape(&v.url),
        class = status.to_ascii_lowercase(),
        latency = v.health.last_probe_latency_ms,
        in_flight = v.in_flight,
        approved = v.approved,
        declined = v.declined,
        failed = v.failed,
        weight = v.weight,
        ewma = v.balancing.latency_ewma_ms,
        score = v.balancing.score,
        success = v
            .balancing
            .success_rate
            .map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0)),
        share = v.balancing.traffic_share * 100.0,
        ramp = v.balancing.slow_start_share * 100.0,
        ejections = v.health.outlier_ejections,
    );
}

/// The headline: ready, or what is missing.
fn verdict(out: &mut String, r: Readiness) {
    if r.ready() {
        out.push_str("<p id=\"verdict\" class=\"ready\">Ready: taking transactions</p>");
        return;
    }
    let mut why = Vec::new();
    if !r.started {
        why.push("starting up or shutting down");
    }
    if r.draining {
        why.push("draining before a stop");
    }
    if !r.ledger {
        why.push("ledger unreachable");
    }
    if !r.switches {
        why.push("no healthy switch");
    }
    let _ = write!(
        out,
        "<p id=\"verdict\" class=\"not-ready\">Not ready: {}</p>",
        escape(&why.join(", "))
    );
}

/// Unfinished transactions by age, from the ledger now (`None`: it did not answer).
fn unfinished_table(out: &mut String, by_age: Option<&[i64]>) {
    out.push_str(
        "<section><h2>Unfinished transactions by age</h2><table id=\"unfinished-by-age\">\
         <tr><th>age</th><th>reserved or pending</th></tr>",
    );
    let label = |i: usize| {
        let secs = |ms: i64| format!("{} s", ms / 1000);
        match i {
            0 => format!("under {}", secs(UNFINISHED_AGE_BOUNDS_MS[0])),
            i if i < UNFINISHED_AGE_BOUNDS_MS.len() => format!(
                "{} to {}",
                secs(UNFINISHED_AGE_BOUNDS_MS[i - 1]),
                secs(UNFINISHED_AGE_BOUNDS_MS[i])
            ),
            _ => format!(
                "over {}",
                secs(UNFINISHED_AGE_BOUNDS_MS[UNFINISHED_AGE_BOUNDS_MS.len() - 1])
            ),
        }
    };
    for i in 0..=UNFINISHED_AGE_BOUNDS_MS.len() {
        let n = by_age
            .and_then(|c| c.get(i))
            .map_or("?".to_owned(), i64::to_string);
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"n\" data-age=\"{i}\">{n}</td></tr>",
            escape(&label(i))
        );
    }
    out.push_str("</table></section>");
}

/// The status page as one HTML document.
fn render(
    state: &AppState,
    trends: &Trends,
    readiness: Readiness,
    by_age: Option<&[i64]>,
) -> String {
    let m = &state.metrics;
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let now = crate::domain::rfc3339_ms(now_ms);
    let mut out = String::with_capacity(8192);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"2\"><title>Switchboard status</title>\
         <style>{STYLE}</style></head><body><header><h1>Switchboard \
         <span id=\"version\">{version}</span></h1><p>Status at <time id=\"now\">{now}</time>; \
         this page refreshes every 2 s.</p></header>",
        version = escape(env!("CARGO_PKG_VERSION")),
        now = escape(&now),
    );

    verdict(&mut out, readiness);
    if state.switches.in_panic() {
        out.push_str(
            "<p id=\"panic\" class=\"panic\">PANIC: fewer switches in rotation than \
             health.panic_threshold_percent; transactions go only to the switches up.</p>",
        );
    }
    let _ = write!(
        out,
        "<p id=\"balancing\">Balancing: <b>{}</b></p>",
        state.switches.balance_settings().mode.as_str()
    );
    out.push_str(
        "<section><h2>Switches</h2><table id=\"switches\"><tr><th>name</th><th>URL</th>\
         <th>status</th><th>last probe</th><th>latency</th><th>in flight</th>\
         <th>approved</th><th>declined</th><th>failed</th><th>weight</th>\
         <th>EWMA latency</th><th>score</th><th>success rate</th><th>traffic share</th>\
         <th>slow start</th><th>outlier ejections</th></tr>",
    );
    let views = state.switches.views();
    for view in &views {
        switch_row(&mut out, view);
    }
    let _ = write!(
        out,
        "</table></section><section><h2>The last {} s, per switch</h2><div class=\"trends\">",
        trends.capacity()
    );
    for view in &views {
        trends::charts(
            &mut out,
            &view.name,
            &trends.samples(&view.name),
            trends.capacity(),
        );
    }
    out.push_str("</div></section>");
    unfinished_table(&mut out, by_age);
    out.push_str("<div class=\"grid\">");

    count_table(
        &mut out,
        "Transactions by outcome",
        "transactions",
        "outcome",
        &counts(&m.transactions, &TxOutcome::ALL.map(TxOutcome::label)),
    );
    count_table(
        &mut out,
        "Refusals by reason (rate limits, authentication, roles)",
        "denied",
        "reason",
        &counts(&m.denied, REASONS),
    );
    count_table(
        &mut out,
        "Webhook deliveries by outcome (failed ones: GET /v1/webhooks/{id}/failed, then redeliver)",
        "webhook-deliveries",
        "outcome",
        &counts(
            &m.webhook_deliveries,
            &["delivered", "retry", "failed", "lease_lost"],
        ),
    );
    let _ = write!(
        out,
        "<section><h2>Now</h2><table id=\"now-table\">\
         <tr><td>unfinished transactions (reserved or pending)</td><td class=\"n\" id=\"unfinished\">{}</td></tr>\
         <tr><td>transactions in flight</td><td class=\"n\" id=\"transactions-in-flight\">{}</td></tr>\
         <tr><td>client connections open</td><td class=\"n\" id=\"connections-open\">{}</td></tr>\
         <tr><td>webhook deliveries not yet done (the outbox)</td><td class=\"n\" id=\"webhook-backlog\">{}</td></tr>\
         </table></section></div></body></html>",
        m.pending.get(),
        m.transactions_in_flight.get(),
        m.connections_open.get(),
        m.webhook_backlog.get(),
    );
    out
}

/// `GET /` on the ops listener: [`render`] as `text/html`, never cached.
pub(super) async fn response(state: &AppState, trends: &Trends) -> Response<Body> {
    let readiness = Readiness::check(state).await;
    let by_age = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.ledger.unfinished_by_age(),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let page = render(state, trends, readiness, by_age.as_deref());
    let mut resp = Response::new(Full::new(Bytes::from(page)));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_the_five_characters() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn status_precedence() {
        let v = |probed, healthy, ejected| SwitchView {
            health: crate::switches::HealthView {
                probed,
                healthy,
                ejected,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(switch_status(&v(false, false, false)), "UNPROBED");
        assert_eq!(switch_status(&v(true, true, true)), "EJECTED");
        assert_eq!(switch_status(&v(true, true, false)), "UP");
        assert_eq!(switch_status(&v(true, false, false)), "DOWN");
    }
}
