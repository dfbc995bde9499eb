//! Talking to upstream switches: the pooled HTTP(S) client, the answers of the
//! switch protocol, and the round-robin balancer.
//!
//! **Invariant:** a [`ForwardError::NotSent`] is returned only when no byte of
//! the request can have reached the switch (the connection was never
//! established). Everything after that is [`ForwardError::Unknown`]: the
//! caller must ask the switch before sending the transaction anywhere else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;

use crate::config::{ForwardingConfig, SwitchConfig};

/// A switch's answer to `POST /transactions` or `GET /transactions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Approved {
        reference: String,
    },
    Declined {
        reason: String,
    },
    /// 503 `not_processed`: refused without touching it; safe to try elsewhere.
    NotProcessed,
    /// 404 on a requery: the switch never received it; safe to try elsewhere.
    NotFound,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    /// The connection was never established: nothing was sent.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request may have reached the switch; its outcome is unknown.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

#[derive(Debug, Deserialize)]
struct WireAnswer {
    status: String,
    reference: Option<String>,
    reason: Option<String>,
}

/// One upstream switch, as configured.
#[derive(Debug, Clone)]
pub struct Switch {
    pub name: String,
    pub base: Uri,
    pub weight: u32,
}

impl Switch {
    pub fn from_config(cfg: &SwitchConfig) -> Option<Self> {
        Some(Self {
            name: cfg.name.clone(),
            base: cfg.url.parse().ok()?,
            weight: cfg.weight,
        })
    }

    fn uri(&self, path: &str) -> Result<Uri, ForwardError> {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(
            path.parse()
                .map_err(|_| ForwardError::NotSent(format!("bad path {path:?}")))?,
        );
        Uri::from_parts(parts).map_err(|e| ForwardError::NotSent(e.to_string()))
    }
}

/// The pooled keep-alive client used for every switch.
#[derive(Clone)]
pub struct SwitchClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Keeps no idle connections: every probe opens a fresh one, so a probe
    /// tests what a new forward would meet.
    probe_client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    response_bytes_max: usize,
}

impl SwitchClient {
    pub fn new(cfg: &ForwardingConfig, tls: rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout()));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let probe_client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(https.clone());
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(cfg.pool_idle_timeout_ms))
            .pool_max_idle_per_host(cfg.pool_idle_per_switch_max)
            // hyper-util retries only a request it got back unsent (an idle
            // pooled connection found dead before writing), which cannot make
            // a transaction happen twice; without it a killed switch's stale
            // connections would look like unknown outcomes.
            .retry_canceled_requests(true)
            .build(https);
        Self {
            client,
            probe_client,
            response_bytes_max: cfg.response_bytes_max,
        }
    }

    /// `POST /transactions` with the transaction as JSON, answered within `timeout`.
    pub async fn forward(
        &self,
        switch: &Switch,
        transaction_id: &str,
        request_id: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Answer, ForwardError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(switch.uri("/transactions")?)
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", transaction_id)
            .header("x-request-id", request_id)
            .body(Full::new(payload))
            .map_err(|e| ForwardError::NotSent(e.to_string()))?;
        self.exchange(req, timeout).await
    }

    /// `GET /transactions/{id}`: what happened to a transaction we may have sent.
    pub async fn query(
        &self,
        switch: &Switch,
        transaction_id: &str,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Answer, ForwardError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(switch.uri(&format!("/transactions/{transaction_id}"))?)
            .header("x-request-id", request_id)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ForwardError::NotSent(e.to_string()))?;
        // A requery changes nothing on the switch, so "not sent" and "unknown"
        // both just mean "no answer" to the caller.
        self.exchange(req, timeout).await
    }

    /// `GET /health` on a fresh connection: true on 200 within `timeout`.
    pub async fn probe(&self, switch: &Switch, timeout: Duration) -> bool {
        let Ok(uri) = switch.uri("/health") else {
            return false;
        };
        let Ok(req) = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .body(Full::new(Bytes::new()))
        else {
            return false;
        };
        let work = async {
            let resp = self.probe_client.request(req).await.ok()?;
            let ok = resp.status() == StatusCode::OK;
            // Drain a bounded body so the connection closes cleanly.
            let _ = Limited::new(resp.into_body(), self.response_bytes_max)
                .collect()
                .await;
            Some(ok)
        };
        matches!(tokio::time::timeout(timeout, work).await, Ok(Some(true)))
    }

    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answer, ForwardError> {
        let is_get = req.method() == Method::GET;
        let work = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    ForwardError::NotSent(format!("connect: {}", error_chain(&e)))
                } else {
                    ForwardError::Unknown(format!("request: {}", error_chain(&e)))
                }
            })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), self.response_bytes_max)
                .collect()
                .await
                .map_err(|e| ForwardError::Unknown(format!("reading answer: {e}")))?
                .to_bytes();
            interpret(status, &body, is_get)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            // The connector's own connect timeout is shorter and reports
            // NotSent; reaching this one means the request may have left.
            Err(_) => Err(ForwardError::Unknown(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}

fn interpret(status: StatusCode, body: &[u8], is_get: bool) -> Result<Answer, ForwardError> {
    let wire: Option<WireAnswer> = serde_json::from_slice(body).ok();
    let unknown = |what: &str| {
        ForwardError::Unknown(format!(
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    };
    match (status, wire) {
        (StatusCode::OK, Some(w)) if w.status == "approved" => Ok(Answer::Approved {
            reference: w.reference.unwrap_or_default(),
        }),
        (StatusCode::OK, Some(w)) if w.status == "declined" => Ok(Answer::Declined {
            reason: w.reason.unwrap_or_else(|| "declined".into()),
        }),
        (StatusCode::SERVICE_UNAVAILABLE, Some(w)) if w.status == "not_processed" && !is_get => {
            Ok(Answer::NotProcessed)
        }
        (StatusCode::NOT_FOUND, _) if is_get => Ok(Answer::NotFound),
        _ => Err(unknown("unexpected answer")),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Live state of one switch. The health monitor is the only writer of
/// `healthy`; the request path only bumps counters and reads.
pub struct SwitchState {
    pub switch: Switch,
    weight: AtomicU32,
    healthy: AtomicBool,
    /// Set after the first probe: until then a switch is not in rotation.
    probed: AtomicBool,
    /// Consecutive failed forwards (request path).
    forward_failures: AtomicU32,
    /// Set by the request path when `forward_failures` reaches the passive
    /// limit: out of rotation at once. Only the health monitor clears it, so
    /// a late success of an older request cannot undo an ejection.
    ejected: AtomicBool,
    probe_successes: AtomicU32,
    probe_failures: AtomicU32,
    last_probe_unix_ms: AtomicI64,
    last_probe_ok: AtomicBool,
    last_probe_latency_us: AtomicU64,
    in_flight: AtomicI64,
    approved: AtomicU64,
    declined: AtomicU64,
    failed: AtomicU64,
}

/// Probe thresholds, from `[health]`.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub healthy: u32,
    pub unhealthy: u32,
    pub passive_failures: u32,
}

impl SwitchState {
    fn new(switch: Switch) -> Self {
        Self {
            weight: AtomicU32::new(switch.weight),
            switch,
            healthy: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            forward_failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            probe_successes: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            last_probe_unix_ms: AtomicI64::new(0),
            last_probe_ok: AtomicBool::new(false),
            last_probe_latency_us: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            approved: AtomicU64::new(0),
            declined: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.switch.name
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// In rotation: healthy by probes and not passively ejected.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.ejected.load(Ordering::Acquire)
    }

    /// Applies one probe result; returns the new health. Health monitor only.
    pub fn record_probe(
        &self,
        ok: bool,
        latency: Duration,
        now_unix_ms: i64,
        t: Thresholds,
    ) -> bool {
        self.last_probe_unix_ms
            .store(now_unix_ms, Ordering::Relaxed);
        self.last_probe_ok.store(ok, Ordering::Relaxed);
        self.last_probe_latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
        let first = !self.probed.swap(true, Ordering::AcqRel);
        let was_healthy = self.is_healthy();
        let mut healthy = was_healthy;
        if self.ejected.swap(false, Ordering::AcqRel) {
            // Passively ejected: out until `healthy` probes in a row bring it back.
            healthy = false;
            self.probe_successes.store(0, Ordering::Relaxed);
            self.forward_failures.store(0, Ordering::Relaxed);
        }
        if ok {
            self.probe_failures.store(0, Ordering::Relaxed);
            let successes = self.probe_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !healthy && (first || successes >= t.healthy) {
                healthy = true;
            }
        } else {
            self.probe_successes.store(0, Ordering::Relaxed);
            let failures = self.probe_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if healthy && failures >= t.unhealthy {
                healthy = false;
            }
        }
        if healthy && !was_healthy {
            self.forward_failures.store(0, Ordering::Relaxed);
        }
        self.healthy.store(healthy, Ordering::Release);
        healthy
    }

    /// Request path: an attempt begins.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Request path: how an attempt ended. Only a decided answer resets the
    /// passive-failure count.
    pub fn record_forward(&self, result: ForwardResult, passive_failures_max: u32) {
        match result {
            ForwardResult::Approved => {
                self.approved.fetch_add(1, Ordering::Relaxed);
                self.forward_failures.store(0, Ordering::Relaxed);
            }
            ForwardResult::Declined => {
                self.declined.fetch_add(1, Ordering::Relaxed);
                self.forward_failures.store(0, Ordering::Relaxed);
            }
            ForwardResult::Failed => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let failures = self.forward_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= passive_failures_max {
                    self.ejected.store(true, Ordering::Release);
                }
            }
        }
    }

    /// What `GET /v1/switches` shows.
    pub fn view(&self) -> serde_json::Value {
        let last_probe_ms = self.last_probe_unix_ms.load(Ordering::Relaxed);
        serde_json::json!({
            "name": self.switch.name,
            "url": self.switch.base.to_string(),
            "weight": self.weight(),
            "healthy": self.is_healthy(),
            "probed": self.probed.load(Ordering::Relaxed),
            "lastProbeAt": (last_probe_ms > 0).then(|| crate::domain::rfc3339_ms(last_probe_ms)),
            "lastProbeOk": self.last_probe_ok.load(Ordering::Relaxed),
            "lastProbeLatencyMs": self.last_probe_latency_us.load(Ordering::Relaxed) as f64 / 1000.0,
            "consecutiveForwardFailures": self.forward_failures.load(Ordering::Relaxed),
            "ejected": self.ejected.load(Ordering::Relaxed),
            "inFlight": self.in_flight.load(Ordering::Relaxed),
            "approved": self.approved.load(Ordering::Relaxed),
            "declined": self.declined.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardResult {
    Approved,
    Declined,
    /// Not sent, not processed, or unknown: the switch did not decide it.
    Failed,
}

/// Counts an attempt in flight until dropped.
pub struct InFlight(Arc<SwitchState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An immutable switch list with its precomputed rotation.
pub struct SwitchTable {
    pub entries: Vec<Arc<SwitchState>>,
    /// Smooth weighted round-robin order (as nginx's), one slot per unit of
    /// weight: over `sequence.len()` picks each switch comes `weight` times,
    /// interleaved.
    sequence: Vec<u16>,
}

impl SwitchTable {
    fn new(entries: Vec<Arc<SwitchState>>) -> Self {
        let weights: Vec<i64> = entries.iter().map(|e| i64::from(e.weight())).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; entries.len()];
        let mut sequence = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..current.len() {
                current[i] += weights[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            sequence.push(best as u16);
        }
        Self { entries, sequence }
    }
}

/// The live switch set: a snapshot readers load without locking, replaced
/// whole on reload.
pub struct Switches {
    table: ArcSwap<SwitchTable>,
    cursor: AtomicUsize,
    passive_failures_max: AtomicU32,
}

impl Switches {
    pub fn new(configs: &[SwitchConfig], passive_failures_max: u32) -> Self {
        let entries = configs
            .iter()
            .filter_map(Switch::from_config)
            .map(|s| Arc::new(SwitchState::new(s)))
            .collect();
        Self {
            table: ArcSwap::from_pointee(SwitchTable::new(entries)),
            cursor: AtomicUsize::new(0),
            passive_failures_max: AtomicU32::new(passive_failures_max),
        }
    }

    pub fn snapshot(&self) -> Arc<SwitchTable> {
        self.table.load_full()
    }

    pub fn passive_failures_max(&self) -> u32 {
        self.passive_failures_max.load(Ordering::Relaxed)
    }

    /// Replaces the list. A switch that stays (same name and URL) keeps its
    /// state and health; returns the names (added, removed).
    pub fn replace(
        &self,
        configs: &[SwitchConfig],
        passive_failures_max: u32,
    ) -> (Vec<String>, Vec<String>) {
        let old = self.snapshot();
        let mut added = Vec::new();
        let entries: Vec<Arc<SwitchState>> = configs
            .iter()
            .filter_map(Switch::from_config)
            .map(|s| {
                match old
                    .entries
                    .iter()
                    .find(|e| e.switch.name == s.name && e.switch.base == s.base)
                {
                    Some(kept) => {
                        kept.weight.store(s.weight, Ordering::Relaxed);
                        kept.clone()
                    }
                    None => {
                        added.push(s.name.clone());
                        Arc::new(SwitchState::new(s))
                    }
                }
            })
            .collect();
        let removed = old
            .entries
            .iter()
            .filter(|e| !entries.iter().any(|n| Arc::ptr_eq(n, e)))
            .map(|e| e.switch.name.clone())
            .collect();
        self.passive_failures_max
            .store(passive_failures_max, Ordering::Relaxed);
        self.table.store(Arc::new(SwitchTable::new(entries)));
        (added, removed)
    }

    /// Any switch in rotation now.
    pub fn any_available(&self) -> bool {
        self.snapshot().entries.iter().any(|e| e.is_available())
    }

    /// The next available switch in rotation that `allowed` accepts (not yet
    /// tried for this transaction). Lock-free: one atomic increment per slot
    /// looked at, at most one full turn of the rotation.
    pub fn pick(&self, allowed: impl Fn(&SwitchState) -> bool) -> Option<Arc<SwitchState>> {
        let table = self.snapshot();
        let len = table.sequence.len();
        if len == 0 {
            return None;
        }
        // One increment per pick, then a local scan of one full turn: with
        // concurrent pickers interleaving increments, a scan driven by the
        // shared cursor could miss the only eligible switch. Skipped slots
        // move the cursor on, so the others keep their weighted shares.
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for i in 0..len {
            let slot = start.wrapping_add(i) % len;
            let entry = &table.entries[table.sequence[slot] as usize];
            if entry.is_available() && allowed(entry) {
                if i > 0 {
                    self.cursor.fetch_add(i, Ordering::Relaxed);
                }
                return Some(entry.clone());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str, weight: u32) -> SwitchConfig {
        SwitchConfig {
            name: name.into(),
            url: format!("http://127.0.0.1:{}", 9000 + weight),
            weight,
        }
    }

    const T: Thresholds = Thresholds {
        healthy: 2,
        unhealthy: 2,
        passive_failures: 3,
    };

    fn up(switches: &Switches) {
        for e in &switches.snapshot().entries {
            e.record_probe(true, Duration::ZERO, 1, T);
        }
    }

    fn names(switches: &Switches, n: usize, allowed: impl Fn(&SwitchState) -> bool) -> String {
        (0..n)
            .map(|_| {
                switches
                    .pick(&allowed)
                    .map(|s| s.switch.name.clone())
                    .unwrap_or("-".into())
            })
            .collect()
    }

    #[test]
    fn equal_weights_rotate() {
        let s = Switches::new(&[cfg("a", 1), cfg("b", 1), cfg("c", 1)], 3);
        up(&s);
        assert_eq!(names(&s, 6, |_| true), "abcabc");
    }

    #[test]
    fn weights_are_smooth() {
        let s = Switches::new(&[cfg("a", 5), cfg("b", 1), cfg("c", 1)], 3);
        up(&s);
        assert_eq!(names(&s, 7, |_| true), "aabacaa");
    }

    #[test]
    fn unprobed_and_excluded_switches_are_skipped() {
        let s = Switches::new(&[cfg("a", 1), cfg("b", 2)], 3);
        assert!(
            s.pick(|_| true).is_none(),
            "nothing is in rotation before a probe"
        );
        up(&s);
        assert_eq!(names(&s, 4, |e| e.name() != "a"), "bbbb");
        assert!(s.pick(|_| false).is_none());
    }

    #[test]
    fn passive_ejection_is_immediate_and_only_probes_bring_it_back() {
        let s = Switches::new(&[cfg("a", 1), cfg("b", 2)], 3);
        up(&s);
        let a = s.snapshot().entries[0].clone();
        for _ in 0..3 {
            a.record_forward(ForwardResult::Failed, T.passive_failures);
        }
        assert_eq!(names(&s, 3, |_| true), "bbb");
        // A late success of a request sent before the ejection changes nothing.
        a.record_forward(ForwardResult::Approved, T.passive_failures);
        assert_eq!(names(&s, 3, |_| true), "bbb");
        assert!(
            !a.record_probe(true, Duration::ZERO, 2, T),
            "one success is not enough"
        );
        assert!(a.record_probe(true, Duration::ZERO, 3, T));
        assert!(names(&s, 3, |_| true).contains('a'));
    }

    #[test]
    fn probes_need_thresholds_in_a_row() {
        let s = Switches::new(&[cfg("a", 1)], 3);
        let a = s.snapshot().entries[0].clone();
        assert!(
            a.record_probe(true, Duration::ZERO, 1, T),
            "the first probe decides"
        );
        assert!(a.record_probe(false, Duration::ZERO, 2, T));
        assert!(
            a.record_probe(true, Duration::ZERO, 3, T),
            "a failure streak was broken"
        );
        assert!(a.record_probe(false, Duration::ZERO, 4, T));
        assert!(!a.record_probe(false, Duration::ZERO, 5, T));
        assert!(!a.record_probe(true, Duration::ZERO, 6, T));
        assert!(a.record_probe(true, Duration::ZERO, 7, T));
    }

    #[test]
    fn concurrent_picks_always_find_the_one_eligible_switch() {
        let s = Arc::new(Switches::new(&[cfg("a", 5), cfg("b", 1), cfg("c", 1)], 3));
        up(&s);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..10_000).all(|_| s.pick(|e| e.name() == "c").is_some())
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap(), "a pick missed the eligible switch");
        }
    }

    #[test]
    fn a_reload_keeps_the_state_of_switches_that_stay() {
        let s = Switches::new(&[cfg("a", 1), cfg("b", 1)], 3);
        up(&s);
        let (added, removed) = s.replace(&[cfg("b", 1), cfg("c", 1)], 3);
        assert_eq!(
            (added, removed),
            (vec!["c".to_owned()], vec!["a".to_owned()])
        );
        assert_eq!(names(&s, 2, |_| true), "bb", "c waits for its first probe");
    }

    #[test]
    fn answers_are_read_per_protocol() {
        let ok = |b: &str| interpret(StatusCode::OK, b.as_bytes(), false);
        assert_eq!(
            ok(r#"{"status":"approved","reference":"r1"}"#).unwrap(),
            Answer::Approved {
                reference: "r1".into()
            }
        );
        assert!(matches!(
            ok(r#"{"status":"declined"}"#),
            Ok(Answer::Declined { .. })
        ));
        assert_eq!(
            interpret(
                StatusCode::SERVICE_UNAVAILABLE,
                br#"{"status":"not_processed"}"#,
                false
            )
            .unwrap(),
            Answer::NotProcessed
        );
        // Any other 5xx is an unknown outcome, never a safe retry.
        assert!(matches!(
            interpret(StatusCode::INTERNAL_SERVER_ERROR, b"{}", false),
            Err(ForwardError::Unknown(_))
        ));
        assert!(matches!(
            interpret(StatusCode::SERVICE_UNAVAILABLE, b"busy", false),
            Err(ForwardError::Unknown(_))
        ));
        assert_eq!(
            interpret(StatusCode::NOT_FOUND, b"", true).unwrap(),
            Answer::NotFound
        );
    }
}
