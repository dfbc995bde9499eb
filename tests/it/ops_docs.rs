//! The operations runbook (`docs/operations.md`) and the alert rules
//! (`ops/alerts.yml`) against the code: promtool accepts the rules and they
//! fire as intended; every metric they name is one a live gateway exports,
//! and every metric it exports is documented with its type and labels; every
//! config key the runbook cites exists; every runbook link lands on a section.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use switchboard::devtools::sim::Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{self, Options, eventually, spawn_gateway_with};

const PREFIX: &str = "switchboard_";

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_file(relative)).unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

// --- promtool -------------------------------------------------------------------

/// Runs `promtool ARGS`; a missing promtool is a failure, never a skip.
fn promtool(args: &[&str]) -> (bool, String) {
    let out = match Command::new("promtool").args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: run scripts/test.sh (it installs it), or \
             install it yourself (Debian/Ubuntu: apt-get install prometheus, which \
             provides /usr/bin/promtool)"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let path = repo_file("ops/alerts.yml");
    let (ok, text) = promtool(&["check", "rules", path.to_str().expect("utf-8 path")]);
    assert!(ok, "promtool check rules ops/alerts.yml:\n{text}");
}

/// promtool unit tests of the rules: which alerts fire (the `ALERTS` series)
/// in each scenario. Series are sampled every 15 s; `a+bxN` is a counter
/// growing by `b` per sample.
const RULE_TESTS: &str = r#"
rule_files:
  - RULES
evaluation_interval: 15s
tests:
  # One switch down for 2 minutes: only that switch's alert.
  - interval: 15s
    input_series:
      - series: 'switchboard_switch_up{job="sb",instance="gw-1",switch="sim-1"}'
        values: '0x12'
      - series: 'switchboard_switch_up{job="sb",instance="gw-1",switch="sim-2"}'
        values: '1x12'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 2m
        exp_samples:
          - labels: 'ALERTS{alertname="SwitchboardSwitchDown",alertstate="firing",severity="warning",job="sb",instance="gw-1",switch="sim-1"}'
            value: 1
      - expr: ALERTS{alertstate="firing"}
        eval_time: 45s
        exp_samples: []

  # Every switch down: both switch alerts and the all-down one.
  - interval: 15s
    input_series:
      - series: 'switchboard_switch_up{job="sb",instance="gw-1",switch="sim-1"}'
        values: '0x12'
      - series: 'switchboard_switch_up{job="sb",instance="gw-1",switch="sim-2"}'
        values: '0x12'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 2m
        exp_samples:
          - labels: 'ALERTS{alertname="SwitchboardSwitchDown",alertstate="firing",severity="warning",job="sb",instance="gw-1",switch="sim-1"}'
            value: 1
          - labels: 'ALERTS{alertname="SwitchboardSwitchDown",alertstate="firing",severity="warning",job="sb",instance="gw-1",switch="sim-2"}'
            value: 1
          - labels: 'ALERTS{alertname="SwitchboardAllSwitchesDown",alertstate="firing",severity="critical",job="sb",instance="gw-1"}'
            value: 1

  # 503s on reads: only the ledger causes those.
  - interval: 15s
    input_series:
      - series: 'switchboard_http_requests_total{job="sb",instance="gw-1",route="/v1/accounts/{id}",status="503"}'
        values: '0+5x20'
      - series: 'switchboard_http_requests_total{job="sb",instance="gw-1",route="/v1/accounts/{id}",status="200"}'
        values: '0+100x20'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 3m
        exp_samples:
          - labels: 'ALERTS{alertname="SwitchboardLedgerUnavailable",alertstate="firing",severity="critical",job="sb",instance="gw-1"}'
            value: 1

  # 503s on POST /v1/transactions explained by no_switch: not the ledger.
  - interval: 15s
    input_series:
      - series: 'switchboard_http_requests_total{job="sb",instance="gw-1",route="/v1/transactions",status="503"}'
        values: '0+5x20'
      - series: 'switchboard_http_requests_total{job="sb",instance="gw-1",route="/v1/transactions",status="201"}'
        values: '0+100x20'
      - series: 'switchboard_transactions_total{job="sb",instance="gw-1",outcome="no_switch"}'
        values: '0+5x20'
      - series: 'switchboard_transactions_total{job="sb",instance="gw-1",outcome="committed"}'
        values: '0+100x20'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 4m
        exp_samples: []

  # 503s on POST /v1/transactions with no other 503 outcome: the ledger.
  - interval: 15s
    input_series:
      - series: 'switchboard_http_requests_total{job="sb",instance="gw-1",route="/v1/transactions",status="503"}'
        values: '0+5x20'
      - series: 'switchboard_http_requests_total{job="sb",instance="gw-1",route="/v1/transactions",status="201"}'
        values: '0+100x20'
      - series: 'switchboard_transactions_total{job="sb",instance="gw-1",outcome="committed"}'
        values: '0+100x20'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 4m
        exp_samples:
          - labels: 'ALERTS{alertname="SwitchboardLedgerUnavailable",alertstate="firing",severity="critical",job="sb",instance="gw-1"}'
            value: 1

  # Redis unreachable, failing closed: 503s on reads, which are not the
  # ledger's; then failing open on another replica.
  - interval: 15s
    input_series:
      - series: 'switchboard_http_requests_total{job="sb",instance="gw-1",route="/v1/accounts/{id}",status="503"}'
        values: '0+5x20'
      - series: 'switchboard_rate_limit_fallbacks_total{job="sb",instance="gw-1",mode="closed",reason="backoff"}'
        values: '0+5x20'
      - series: 'switchboard_rate_limit_fallbacks_total{job="sb",instance="gw-2",mode="open",reason="timeout"}'
        values: '0+1x20'
      - series: 'switchboard_rate_limit_fallbacks_total{job="sb",instance="gw-2",mode="open",reason="error"}'
        values: '0x20'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 3m
        exp_samples:
          - labels: 'ALERTS{alertname="SwitchboardRateLimiterUnavailable",alertstate="firing",severity="critical",job="sb",instance="gw-1"}'
            value: 1
          - labels: 'ALERTS{alertname="SwitchboardRateLimitsNotShared",alertstate="firing",severity="warning",job="sb",instance="gw-2"}'
            value: 1

  # Half the answers are 500s for 7 minutes.
  - interval: 15s
    input_series:
      - series: 'switchboard_http_requests_total{job="sb",instance="gw-1",route="/v1/transactions",status="500"}'
        values: '0+10x40'
      - series: 'switchboard_http_requests_total{job="sb",instance="gw-1",route="/v1/transactions",status="201"}'
        values: '0+10x40'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 7m
        exp_samples:
          - labels: 'ALERTS{alertname="SwitchboardHighErrorRate",alertstate="firing",severity="critical",job="sb",instance="gw-1"}'
            value: 1

  # 80 refusals/s by the per-client limit for 12 minutes; shedding too.
  - interval: 15s
    input_series:
      - series: 'switchboard_requests_denied_total{job="sb",instance="gw-1",reason="rate_limited_client"}'
        values: '0+1200x60'
      - series: 'switchboard_requests_denied_total{job="sb",instance="gw-1",reason="expired"}'
        values: '0+1200x60'
      - series: 'switchboard_transactions_total{job="sb",instance="gw-1",outcome="overloaded"}'
        values: '0+3x60'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 12m
        exp_samples:
          - labels: 'ALERTS{alertname="SwitchboardRateLimitSurge",alertstate="firing",severity="warning",job="sb",instance="gw-1",reason="rate_limited_client"}'
            value: 1
          - labels: 'ALERTS{alertname="SwitchboardLoadShedding",alertstate="firing",severity="warning",job="sb",instance="gw-1"}'
            value: 1

  # A rejected reload fires at once.
  - interval: 15s
    input_series:
      - series: 'switchboard_config_reloads_total{job="sb",instance="gw-1",result="rejected"}'
        values: '0 0 0 1 1 1'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 1m
        exp_samples:
          - labels: 'ALERTS{alertname="SwitchboardConfigReloadRejected",alertstate="firing",severity="warning",job="sb",instance="gw-1"}'
            value: 1

  # Unfinished transactions above the threshold and rising on two replicas
  # (one ledger-wide count), with the reconciler finding unknown outcomes
  # and failing on some rows.
  - interval: 15s
    input_series:
      - series: 'switchboard_transactions_unfinished{job="sb",instance="gw-1"}'
        values: '60+1x200'
      - series: 'switchboard_transactions_unfinished{job="sb",instance="gw-2"}'
        values: '60+1x200'
      - series: 'switchboard_reconciler_outcomes_total{job="sb",instance="gw-1",outcome="still_unknown"}'
        values: '0+2x200'
      - series: 'switchboard_reconciler_outcomes_total{job="sb",instance="gw-1",outcome="error"}'
        values: '0+1x200'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 45m
        exp_samples:
          - labels: 'ALERTS{alertname="SwitchboardUnfinishedTransactionsGrowing",alertstate="firing",severity="warning",job="sb"}'
            value: 1
          - labels: 'ALERTS{alertname="SwitchboardTransactionsStillUnknown",alertstate="firing",severity="warning",job="sb"}'
            value: 1
          - labels: 'ALERTS{alertname="SwitchboardReconcilerErrors",alertstate="firing",severity="warning",job="sb",instance="gw-1"}'
            value: 1

  # Every reserve takes about 2 s.
  - interval: 15s
    input_series:
      - series: 'switchboard_ledger_reserve_duration_seconds_bucket{job="sb",instance="gw-1",le="1"}'
        values: '0x40'
      - series: 'switchboard_ledger_reserve_duration_seconds_bucket{job="sb",instance="gw-1",le="2.5"}'
        values: '0+10x40'
      - series: 'switchboard_ledger_reserve_duration_seconds_bucket{job="sb",instance="gw-1",le="+Inf"}'
        values: '0+10x40'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 8m
        exp_samples:
          - labels: 'ALERTS{alertname="SwitchboardLedgerSlow",alertstate="firing",severity="warning",job="sb",instance="gw-1"}'
            value: 1

  # Webhooks (issue 13): a backlog above the threshold and rising on two
  # replicas (one ledger-wide count), and deliveries running out of retries.
  - interval: 15s
    input_series:
      - series: 'switchboard_webhook_backlog{job="sb",instance="gw-1"}'
        values: '1100+5x200'
      - series: 'switchboard_webhook_backlog{job="sb",instance="gw-2"}'
        values: '1100+5x200'
      - series: 'switchboard_webhook_deliveries_total{job="sb",instance="gw-1",outcome="failed"}'
        values: '0+1x200'
    promql_expr_test:
      - expr: ALERTS{alertstate="firing"}
        eval_time: 35m
        exp_samples:
          - labels: 'ALERTS{alertname="SwitchboardWebhookBacklogGrowing",alertstate="firing",severity="warning",job="sb"}'
            value: 1
          - labels: 'ALERTS{alertname="SwitchboardWebhookDeliveriesFailing",alertstate="firing",severity="warning",job="sb"}'
            value: 1
      - expr: ALERTS{alertstate="firing"}
        eval_time: 3m
        exp_samples: []
"#;

#[test]
fn the_alert_rules_fire_in_their_scenarios() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tests = dir.path().join("alerts_test.yml");
    let rules = repo_file("ops/alerts.yml");
    std::fs::write(
        &tests,
        RULE_TESTS.replace("RULES", rules.to_str().expect("utf-8 path")),
    )
    .expect("write the rule tests");
    let (ok, text) = promtool(&["test", "rules", tests.to_str().expect("utf-8 path")]);
    assert!(ok, "promtool test rules:\n{text}");
}

// --- alert rules: shape and links -----------------------------------------------

/// The rules file split per alert: (name, the alert's lines).
fn alerts(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert:") {
            out.push((name.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// GitHub's anchor of a heading: lower case, spaces to hyphens, other
/// punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Lines of a Markdown document outside fenced code blocks.
fn prose_lines(markdown: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push(line);
        }
    }
    out
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    prose_lines(markdown)
        .into_iter()
        .filter_map(|l| {
            let hashes = l.chars().take_while(|&c| c == '#').count();
            (hashes > 0 && l[hashes..].starts_with(' ')).then(|| slug(&l[hashes..]))
        })
        .collect()
}

#[test]
fn every_alert_has_a_duration_severity_annotations_and_a_runbook_section() {
    let rules = read("ops/alerts.yml");
    let doc = read("docs/operations.md");
    let sections = anchors(&doc);
    let list = alerts(&rules);
    assert!(
        list.len() >= 8,
        "too few alerts in ops/alerts.yml: {list:?}"
    );
    for (name, body) in &list {
        for field in [
            "expr:",
            "for:",
            "labels:",
            "annotations:",
            "summary:",
            "description:",
        ] {
            assert!(body.contains(field), "alert {name} has no `{field}`");
        }
        let severity = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("severity:"))
            .map(str::trim);
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "alert {name}: severity must be warning or critical, got {severity:?}"
        );
        let runbook = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("alert {name} has no runbook"));
        let anchor = runbook
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| {
                panic!("alert {name}: runbook {runbook:?} is not docs/operations.md#…")
            });
        assert!(
            sections.contains(anchor),
            "alert {name}: docs/operations.md has no section #{anchor}; sections: {sections:?}"
        );
    }
    // The runbook's own links to its sections land too.
    for link in doc.split("](#").skip(1) {
        let anchor = link.split(')').next().unwrap_or_default();
        assert!(
            sections.contains(anchor),
            "docs/operations.md links to #{anchor}, which is no section of it"
        );
    }
}

// --- config keys ------------------------------------------------------------------

/// Every key of `config/default.toml`, commented-out examples included
/// (`# client_ca = …` under `[server]` is `server.client_ca`), with the
/// tables themselves (`limits.roles.transact`, `auth.keys`).
fn default_toml_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut real_section = String::new();
    let mut commented_section = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        let (commented, body) = match trimmed.strip_prefix('#') {
            Some(rest) => (true, rest.trim()),
            None => (false, trimmed),
        };
        if body.starts_with('[') && body.ends_with(']') {
            let name = body
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
            keys.insert(name.clone());
            if !commented {
                real_section = name.clone();
            }
            commented_section = name;
            continue;
        }
        let Some((key, _)) = body.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let section = if commented {
            &commented_section
        } else {
            &real_section
        };
        keys.insert(format!("{section}.{key}"));
    }
    keys
}

/// Backticked spans of the README's tables (the configuration table among them).
fn readme_table_spans(readme: &str) -> BTreeSet<String> {
    prose_lines(readme)
        .into_iter()
        .filter(|l| l.starts_with('|'))
        .flat_map(|l| l.split('`').skip(1).step_by(2).map(str::to_owned))
        .collect()
}

/// `section.key` spans whose first part is a config section.
fn cited_keys(doc: &str, sections: &BTreeSet<String>) -> BTreeSet<String> {
    doc.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| {
            let mut parts = span.split('.');
            let first = parts.next().unwrap_or_default();
            span.contains('.')
                && sections.contains(first)
                && span.split('.').all(|p| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_config_key_the_runbook_cites_exists() {
    let defaults = default_toml_keys(&read("config/default.toml"));
    let readme = readme_table_spans(&read("README.md"));
    // Sanity: the parser sees plain, nested and commented-out keys.
    for key in [
        "server.listen",
        "limits.roles.transact.per_s",
        "server.client_ca",
        "auth.jwks_file",
    ] {
        assert!(
            defaults.contains(key),
            "config/default.toml parser misses {key}"
        );
    }
    let sections: BTreeSet<String> = defaults
        .iter()
        .map(|k| k.split('.').next().unwrap_or_default().to_owned())
        .collect();
    let doc = read("docs/operations.md");
    let cited = cited_keys(&doc, &sections);
    assert!(
        cited.len() >= 30,
        "the runbook should cite config keys: found only {cited:?}"
    );
    let unknown: Vec<&String> = cited
        .iter()
        .filter(|k| !defaults.contains(*k) && !readme.contains(*k))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/operations.md cites config keys that are neither in config/default.toml \
         nor in the README's config table: {unknown:?}"
    );
}

// --- metrics ------------------------------------------------------------------------

/// Every `switchboard_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(PREFIX) {
        let preceded_by_word = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        if !preceded_by_word && name.len() > PREFIX.len() && !name.ends_with('_') {
            names.insert(name.to_owned());
        }
        rest = &tail[end.max(1)..];
    }
    names
}

/// One exported metric family: its type and the label names of its samples.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
}

/// The families of a Prometheus text exposition.
fn families(exposition: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            out.entry(name.to_owned()).or_default().kind = kind.to_owned();
        }
    }
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let series = line.split_whitespace().next().unwrap_or_default();
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = base_name(name, &out);
        let Some(family) = family.and_then(|f| out.get_mut(&f)) else {
            continue;
        };
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let label = pair.split('=').next().unwrap_or_default();
            if label != "le" && label != "quantile" {
                family.labels.insert(label.to_owned());
            }
        }
    }
    out
}

/// The family a sample or a name in the docs belongs to: itself, or a
/// histogram's `_bucket`, `_sum` and `_count` series.
fn base_name<T>(name: &str, families: &BTreeMap<String, T>) -> Option<String> {
    if families.contains_key(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .filter(|base| families.contains_key(*base))
        .map(str::to_owned)
}

/// Fast timeouts, so that every labelled family shows up within seconds:
/// the reconciler takes a transaction 3 s after it was left pending, the
/// housekeeping gauges refresh every 200 ms, and a half-sent request head
/// is cut after 300 ms. Probes run once (at start-up), so the switch stays
/// in rotation whatever mode the test puts it in.
const FAST: &str = r#"
[server]
request_deadline_ms = 1000
header_read_timeout_ms = 300
[forwarding]
connect_timeout_ms = 200
attempt_timeout_ms = 500
[database]
acquire_timeout_ms = 500
[health]
interval_ms = 600000
outlier_interval_ms = 200
outlier_min_requests = 3
outlier_failure_percent = 100
[reconciler]
interval_ms = 200
stale_after_ms = 3000
requery_timeout_ms = 500
[limits]
prune_interval_ms = 200
"#;

fn debit(id: &str) -> serde_json::Value {
    harness::debit(id, "ops-docs", 10)
}

fn debit_n(i: usize) -> serde_json::Value {
    debit(&format!("ops-outlier-{i}"))
}

/// Drives a gateway through everything that makes a labelled series appear
/// (a commit, a switch error with a requery and a retry, a pending
/// transaction the reconciler finishes, a denial, a reload, a failed TLS
/// handshake, a header timeout) and returns its `/metrics`.
async fn exposition_with_every_family() -> String {
    let sims = harness::spawn_sims(1).await;
    let sim = &sims[0];
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gateway.toml");
    let config = format!(
        "{FAST}\n{}",
        harness::switches_toml(&harness::switch_list(&sims))
    );
    std::fs::write(&file, &config).expect("write the config file");
    let gw = spawn_gateway_with(Options {
        config_file: Some(file.clone()),
        ..Options::default()
    })
    .await;
    gw.account("ops-docs", "ops-client", "EUR", 1_000).await;
    let client = gw.token("ops-client", &["transact"]);

    // Committed: forwards, latencies, the ledger histogram.
    let r = gw.post("/v1/transactions", &client, &debit("ops-1")).await;
    assert_eq!(r.status, 201, "{:?}", r.json);

    // Denied: no token (401), and the wrong role (403).
    let r = gw.get("/v1/switches", "").await;
    assert_eq!(r.status, 401, "{:?}", r.json);
    let r = gw.get("/v1/switches", &client).await;
    assert_eq!(r.status, 403, "{:?}", r.json);

    // A 500 from the switch: unknown outcome, a requery answering 404, a
    // retry with nowhere to go.
    sim.set_faults(Mode::Error, None, None);
    let r = gw.post("/v1/transactions", &client, &debit("ops-2")).await;
    assert_eq!(r.status, 503, "{:?}", r.json);

    // Received but never answered: pending, until the reconciler asks again.
    sim.set_faults(Mode::HangAfterReceive, None, None);
    let r = gw.post("/v1/transactions", &client, &debit("ops-3")).await;
    assert_eq!(r.status, 202, "{:?}", r.json);
    sim.set_faults(Mode::Healthy, None, None);

    // A reload.
    std::fs::write(&file, format!("{config}\n# touched\n")).expect("rewrite the config file");

    // Plain text on the TLS port: a failed handshake.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect to the TLS port");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut sink)).await;

    // Half a request head on the ops port: cut after header_read_timeout_ms.
    let mut tcp = tokio::net::TcpStream::connect(gw.ops)
        .await
        .expect("connect to the ops port");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut sink)).await;

    // Last, as it ejects the only switch: failures enough for a window of
    // their own, an outlier.
    // On a loaded machine one round's failures may straddle two windows of
    // fewer than `outlier_min_requests`: another round, until one is judged
    // (at most 10 rounds).
    sim.set_faults(Mode::Error, None, None);
    for round in 0..10 {
        let bodies: Vec<_> = (round * 6..round * 6 + 6).map(debit_n).collect();
        let failing = bodies
            .iter()
            .map(|b| gw.post("/v1/transactions", &client, b));
        for r in futures_util::future::join_all(failing).await {
            assert_eq!(r.status, 503, "{:?}", r.json);
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (_, metrics) = gw.ops_get("/metrics").await;
        if metrics.contains("switchboard_switch_outlier_ejections_total{switch=\"sim-1\"} 1") {
            break;
        }
    }

    for sample in [
        "switchboard_switch_outlier_ejections_total{switch=\"sim-1\"}",
        "switchboard_switch_success_ratio{switch=\"sim-1\"}",
        "switchboard_reconciler_outcomes_total{outcome=\"committed\"}",
        "switchboard_config_reloads_total{result=\"ok\"}",
        "switchboard_tls_handshake_failures_total{reason=\"error\"}",
        "switchboard_connections_closed_total{reason=\"header_timeout\"}",
        "switchboard_rate_limiter_keys{limiter=\"ip\"}",
    ] {
        eventually(Duration::from_secs(30), sample, || async {
            gw.ops_get("/metrics")
                .await
                .1
                .lines()
                .any(|l| l.starts_with(sample))
        })
        .await;
    }
    let (status, text) = gw.ops_get("/metrics").await;
    assert_eq!(status, 200);
    text
}

/// The metrics table of the runbook: name → (type, label names).
fn documented_table(doc: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    prose_lines(doc)
        .into_iter()
        .filter(|l| l.starts_with(&format!("| `{PREFIX}")))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_owned();
            let kind = cells.get(2).copied().unwrap_or_default().to_owned();
            let labels = cells
                .get(3)
                .copied()
                .unwrap_or_default()
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            (name, (kind, labels))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_runbook_and_alerts_is_exported_and_every_export_documented() {
    let exposition = exposition_with_every_family().await;
    let exported: BTreeMap<String, Family> = families(&exposition)
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX))
        .collect();
    assert!(exported.len() >= 20, "too few families: {exported:?}");

    let doc = read("docs/operations.md");
    let rules = read("ops/alerts.yml");
    for (file, text) in [("docs/operations.md", &doc), ("ops/alerts.yml", &rules)] {
        let missing: Vec<String> = metric_names(text)
            .into_iter()
            .filter(|n| base_name(n, &exported).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics the gateway does not export: {missing:?}\nexported: {:?}",
            exported.keys().collect::<Vec<_>>()
        );
    }

    let table = documented_table(&doc);
    for (name, family) in &exported {
        let Some((kind, labels)) = table.get(name) else {
            panic!("{name} is exported but has no row in the metrics table of docs/operations.md");
        };
        assert_eq!(
            kind, &family.kind,
            "docs/operations.md gives {name} the wrong type"
        );
        assert_eq!(
            labels, &family.labels,
            "docs/operations.md lists the wrong labels for {name}"
        );
    }
}
