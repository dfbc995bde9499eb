//! The status page (`GET /` on the ops listener): its numbers agree with
//! `/metrics` and `GET /v1/switches`, it is self-contained, and a real
//! browser (Debian's headless Chromium) renders the same values.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use switchboard::devtools::sim::{Mode, SimHandle};

use crate::harness::{self, Options, TestGateway, eventually, metric, spawn_gateway_with};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Fast probes, so a downed sim shows within a second.
const FAST_HEALTH: &str = "[health]\ninterval_ms = 150\ntimeout_ms = 150\nunhealthy_threshold = 2\nhealthy_threshold = 2\n";

fn debit(id: &str, amount: i64) -> Value {
    harness::debit(id, "status-acct", amount)
}

/// Three sims, three committed debits, one refused for funds, one refusal
/// for a missing role, then sim-2 down until the page shows it DOWN.
async fn busy_gateway() -> (Vec<SimHandle>, TestGateway) {
    let sims = harness::spawn_sims(3).await;
    let gw = spawn_gateway_with(Options {
        switches: harness::switch_list(&sims),
        layers: vec![FAST_HEALTH.into()],
        ..Options::default()
    })
    .await;
    gw.account("status-acct", "alice", "EUR", 100).await;
    let token = gw.token("alice", &["transact"]);
    for i in 0..3 {
        let r = gw
            .post("/v1/transactions", &token, &debit(&format!("st-{i}"), 10))
            .await;
        assert_eq!(r.status, 201, "debit {i}: {:?}", r.json);
    }
    let r = gw
        .post("/v1/transactions", &token, &debit("st-big", 1000))
        .await;
    assert_eq!(r.code(), "insufficient_funds", "{:?}", r.json);
    let r = gw.get("/v1/switches", &token).await;
    assert_eq!(r.status, 403, "a transact token may not list switches");

    sims[1].set_faults(Mode::Down, None, None);
    eventually(Duration::from_secs(10), "the page shows sim-2 DOWN", || {
        let gw = &gw;
        async move {
            let html = gw.ops_get("/").await.1;
            html.contains("data-switch=")
                && text(row(&html, "sim-2"), "class=\"status\">") == "DOWN"
        }
    })
    .await;
    // The charts sample once a second: wait until the three commits are drawn.
    eventually(
        Duration::from_secs(10),
        "the charts show the commits",
        || {
            let gw = &gw;
            async move {
                let html = gw.ops_get("/").await.1;
                ["sim-1", "sim-2", "sim-3"]
                    .iter()
                    .map(|s| chart_total(&html, s, "committed"))
                    .sum::<i64>()
                    == 3
            }
        },
    )
    .await;
    // The unfinished-transactions gauge is sampled by the reconciler's
    // passes: wait until a pass saw none in flight, so the page and
    // `/metrics`, read moments apart, show the same settled value.
    eventually(
        Duration::from_secs(10),
        "the unfinished gauge settles",
        || {
            let gw = &gw;
            async move { gw.metric("switchboard_transactions_unfinished").await == 0.0 }
        },
    )
    .await;
    (sims, gw)
}

/// The text right after `marker` (up to the next tag).
fn text<'a>(html: &'a str, marker: &str) -> &'a str {
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not on the page:\n{html}"))
        + marker.len();
    let rest = &html[start..];
    rest[..rest.find('<').unwrap_or(rest.len())].trim()
}

fn number(html: &str, marker: &str) -> i64 {
    let t = text(html, marker);
    t.parse()
        .unwrap_or_else(|_| panic!("{marker:?}: {t:?} is not a number"))
}

/// One switch's `<tr data-switch="name" ...>...</tr>`.
fn row<'a>(html: &'a str, name: &str) -> &'a str {
    let marker = format!("<tr data-switch=\"{name}\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no row for {name}:\n{html}"));
    let rest = &html[start..];
    &rest[..rest.find("</tr>").expect("the row ends")]
}

/// What one switch's chart says it drew in all (`data-total`), checked
/// against the sum of its bars (`data-v`).
fn chart_total(html: &str, switch: &str, chart: &str) -> i64 {
    let start = html
        .find(&format!("data-trend=\"{switch}\""))
        .unwrap_or_else(|| panic!("no charts for {switch}:\n{html}"));
    let rest = &html[start..];
    let rest = &rest[rest
        .find(&format!("data-total=\"{chart}\""))
        .unwrap_or_else(|| panic!("no {chart} chart for {switch}"))..];
    let total = number(rest, "\">");
    let svg = &rest[..rest.find("</svg>").expect("the chart ends")];
    let bars: i64 = svg
        .match_indices("data-v=\"")
        .map(|(i, m)| {
            let v = &svg[i + m.len()..];
            v[..v.find('"').unwrap()].parse::<i64>().unwrap()
        })
        .sum();
    assert_eq!(
        bars, total,
        "{switch} {chart}: the bars add up to the caption"
    );
    total
}

/// Every `data-{attr}="label">N` on the page.
fn labelled(html: &str, attr: &str) -> Vec<(String, i64)> {
    let marker = format!("data-{attr}=\"");
    html.match_indices(&marker)
        .map(|(i, _)| {
            let rest = &html[i + marker.len()..];
            let label = &rest[..rest.find('"').expect("attribute ends")];
            (label.to_owned(), number(rest, "\">"))
        })
        .collect()
}

/// Asserts that every number on `html` (the page as served, or as a browser
/// rendered it) equals its metric or its field of `GET /v1/switches`.
async fn assert_agrees(gw: &TestGateway, html: &str, what: &str) {
    let metrics = gw.ops_get("/metrics").await.1;
    let op = gw.token("status-operator", &["operator"]);
    let listed = gw.get("/v1/switches", &op).await;
    assert_eq!(listed.status, 200);
    let switches = listed.json["switches"].as_array().expect("switches");

    assert!(
        html.contains(r#"<meta http-equiv="refresh" content="2">"#),
        "{what}: refresh meta"
    );
    assert!(
        !html.to_ascii_lowercase().contains("<script"),
        "{what}: no script"
    );
    assert_eq!(
        text(html, "id=\"version\">"),
        env!("CARGO_PKG_VERSION"),
        "{what}"
    );
    // Nothing is fetched from elsewhere: the only URLs are the switches'.
    let urls: Vec<&str> = switches
        .iter()
        .map(|s| s["url"].as_str().expect("url"))
        .collect();
    for scheme in ["http://", "https://"] {
        for (i, _) in html.match_indices(scheme) {
            assert!(
                urls.iter().any(|u| html[i..].starts_with(u)),
                "{what}: a URL that is not a switch's: {}",
                &html[i..(i + 80).min(html.len())]
            );
        }
    }

    let outcomes = labelled(html, "outcome");
    assert!(
        outcomes.len() >= 10,
        "{what}: every known outcome is listed"
    );
    for (outcome, n) in &outcomes {
        let sample = format!("switchboard_transactions_total{{outcome=\"{outcome}\"}}");
        assert_eq!(*n as f64, metric(&metrics, &sample), "{what}: {sample}");
    }
    assert_eq!(
        number(html, "data-outcome=\"committed\">"),
        3,
        "{what}: committed"
    );
    assert_eq!(
        number(html, "data-outcome=\"insufficient_funds\">"),
        1,
        "{what}"
    );
    for (reason, n) in labelled(html, "reason") {
        let sample = format!("switchboard_requests_denied_total{{reason=\"{reason}\"}}");
        assert_eq!(n as f64, metric(&metrics, &sample), "{what}: {sample}");
    }
    assert_eq!(
        number(html, "data-reason=\"missing_role\">"),
        1,
        "{what}: missing_role"
    );
    for (id, sample) in [
        ("unfinished", "switchboard_transactions_unfinished"),
        (
            "transactions-in-flight",
            "switchboard_transactions_in_flight",
        ),
        ("connections-open", "switchboard_connections_open"),
    ] {
        let shown = number(html, &format!("id=\"{id}\">"));
        assert_eq!(shown as f64, metric(&metrics, sample), "{what}: {sample}");
    }

    assert_eq!(
        html.matches("<tr data-switch=").count(),
        switches.len(),
        "{what}: one row per switch"
    );
    let mut approved = 0;
    for s in switches {
        let name = s["name"].as_str().expect("name");
        let r = row(html, name);
        let flag = |k: &str| s[k].as_bool().expect("a boolean field");
        let expected = if !flag("probed") {
            "UNPROBED"
        } else if flag("ejected") {
            "EJECTED"
        } else if flag("healthy") {
            "UP"
        } else {
            "DOWN"
        };
        if name == "sim-2" {
            assert_eq!(expected, "DOWN", "{what}: sim-2 is down: {s}");
        }
        assert_eq!(
            text(r, "class=\"status\">"),
            expected,
            "{what}: {name} status"
        );
        assert_eq!(
            text(r, "class=\"url\">"),
            s["url"].as_str().unwrap(),
            "{what}: {name}"
        );
        for (class, field) in [
            ("approved", "approved"),
            ("declined", "declined"),
            ("failed", "failed"),
            ("weight", "weight"),
            ("in-flight", "inFlight"),
        ] {
            let shown = number(r, &format!(" {class}\">"));
            assert_eq!(Some(shown), s[field].as_i64(), "{what}: {name} {field}");
        }
        approved += s["approved"].as_i64().unwrap();
        // The chart of the last minutes: every approval here was recent.
        assert_eq!(
            Some(chart_total(html, name, "committed")),
            s["approved"].as_i64(),
            "{what}: {name} committed chart"
        );
        let forwards = |result: &str| {
            metric(
                &metrics,
                &format!(
                    "switchboard_switch_forwards_total{{switch=\"{name}\",result=\"{result}\"}}"
                ),
            )
        };
        assert_eq!(
            chart_total(html, name, "errors") as f64,
            forwards("not_sent") + forwards("not_processed") + forwards("unknown"),
            "{what}: {name} errors chart"
        );
    }
    assert_eq!(approved, 3, "{what}: the switches approved every commit");
    assert_eq!(
        text(html, "id=\"verdict\" class=\"ready\">"),
        "Ready: taking transactions",
        "{what}: two switches are up"
    );
    let by_age: i64 = labelled(html, "age").iter().map(|(_, n)| n).sum();
    assert_eq!(
        by_age as f64,
        metric(&metrics, "switchboard_transactions_unfinished"),
        "{what}: unfinished by age"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_metrics_and_the_switch_list_say() {
    let (_sims, gw) = busy_gateway().await;
    let resp = reqwest::get(format!("http://{}/", gw.ops))
        .await
        .expect("GET /");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/html"),
        "content type {content_type}"
    );
    let html = resp.text().await.expect("body");
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert_agrees(&gw, &html, "served page").await;
}

/// Runs headless Chromium with `args` then `url`, killed after 30 s; its
/// stdout. Every request it would send anywhere but loopback goes to a proxy
/// that is not there (`127.0.0.1:9`): nothing leaves the machine.
pub(crate) async fn chromium(args: &[&str], url: &str) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: scripts/test.sh installs it (apt-get install -y chromium)"
    );
    let profile = tempfile::tempdir().expect("profile dir");
    let child = tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--proxy-server=127.0.0.1:9",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("chromium {args:?} took over 30 s (killed)"))
        .expect("chromium ran");
    assert!(
        out.status.success(),
        "chromium {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 DOM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_renders_the_status_page() {
    let (_sims, gw) = busy_gateway().await;
    let url = format!("http://{}/", gw.ops);

    let dom = chromium(&["--dump-dom"], &url).await;
    assert!(dom.contains("<table id=\"switches\">"), "{dom}");
    assert_agrees(&gw, &dom, "Chromium's DOM").await;

    let png: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    std::fs::create_dir_all(png.parent().unwrap()).expect("target dir");
    let _ = std::fs::remove_file(&png);
    chromium(
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
        ],
        &url,
    )
    .await;
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert!(
        bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG ({} bytes)",
        png.display(),
        bytes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_headline_says_why_the_gateway_is_not_ready() {
    let sims = harness::spawn_sims(2).await;
    let gw = spawn_gateway_with(Options {
        switches: harness::switch_list(&sims),
        layers: vec![FAST_HEALTH.into()],
        ..Options::default()
    })
    .await;
    assert_eq!(
        text(&gw.ops_get("/").await.1, "id=\"verdict\" class=\"ready\">"),
        "Ready: taking transactions"
    );
    for s in &sims {
        s.set_faults(Mode::Down, None, None);
    }
    eventually(
        Duration::from_secs(10),
        "the headline says not ready",
        || {
            let gw = &gw;
            async move {
                gw.ops_get("/")
                    .await
                    .1
                    .contains("id=\"verdict\" class=\"not-ready\">Not ready: no healthy switch<")
            }
        },
    )
    .await;
    assert_eq!(
        gw.ops_get("/readyz").await.0,
        503,
        "the same verdict as /readyz"
    );
}
