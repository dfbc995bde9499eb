//! Prometheus metrics, in one explicit registry served on the ops listener.
//!
//! **Invariant:** every label is a bounded set (route template, status code,
//! switch name, outcome). Never a transaction, account or client id.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, from 1 ms to 10 s.
const LATENCY_BUCKETS_S: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of a Redis round trip, in seconds, from 100 µs to 100 ms.
const REDIS_BUCKETS_S: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// What `transactions_total{outcome}` counts, in the order the status page
/// lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOutcome {
    Committed,
    Declined,
    InsufficientFunds,
    Failed,
    Pending,
    Replayed,
    InProgress,
    Reused,
    Overloaded,
    NoSwitch,
}

impl TxOutcome {
    pub const ALL: [TxOutcome; 10] = [
        TxOutcome::Committed,
        TxOutcome::Declined,
        TxOutcome::InsufficientFunds,
        TxOutcome::Failed,
        TxOutcome::Pending,
        TxOutcome::Replayed,
        TxOutcome::InProgress,
        TxOutcome::Reused,
        TxOutcome::Overloaded,
        TxOutcome::NoSwitch,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TxOutcome::Committed => "committed",
            TxOutcome::Declined => "declined",
            TxOutcome::InsufficientFunds => "insufficient_funds",
            TxOutcome::Failed => "failed",
            TxOutcome::Pending => "pending",
            TxOutcome::Replayed => "replayed",
            TxOutcome::InProgress => "in_progress",
            TxOutcome::Reused => "reused",
            TxOutcome::Overloaded => "overloaded",
            TxOutcome::NoSwitch => "no_switch",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_in_flight: IntGauge,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
    pub transactions: IntCounterVec,
    pub forwards: IntCounterVec,
    pub forward_duration: HistogramVec,
    pub ledger_duration: Histogram,
    pub switch_up: IntGaugeVec,
    pub switch_latency_ewma: GaugeVec,
    pub switch_score: GaugeVec,
    pub switch_success_ratio: GaugeVec,
    pub switch_traffic_share: GaugeVec,
    pub switch_picks: IntCounterVec,
    pub switch_outlier_ejections: IntCounterVec,
    pub switches_panic: IntGauge,
    pub probes: IntCounterVec,
    pub retries: IntCounterVec,
    pub requeries: IntCounterVec,
    pub pending: IntGauge,
    pub reconciler: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub denied: IntCounterVec,
    pub limiter_keys: IntGaugeVec,
    pub auth_cache_entries: IntGauge,
    pub transactions_in_flight: IntGauge,
    pub redis_checks: IntCounterVec,
    pub redis_duration: Histogram,
    pub rate_limit_fallbacks: IntCounterVec,
    // ---- webhooks (issue 13) ----
    /// Delivery attempts by outcome (delivered, retry, failed, lease_lost).
    pub webhook_deliveries: IntCounterVec,
    /// Deliveries waiting to be sent, as of the worker's last look.
    pub webhook_backlog: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("switchboard".into()), None)
            .expect("a constant prefix is valid");
        let m = Metrics {
            http_requests: IntCounterVec::new(
                Opts::new("http_requests_total", "HTTPS requests answered, by route and status."),
                &["route", "status"],
            )
            .expect("valid metric"),
            http_duration: HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "HTTPS request latency, from headers read to response, by route.",
                )
                .buckets(LATENCY_BUCKETS_S.to_vec()),
                &["route"],
            )
            .expect("valid metric"),
            http_in_flight: IntGauge::new(
                "http_requests_in_flight",
                "HTTPS requests being handled now.",
            )
            .expect("valid metric"),
            connections_open: IntGauge::new(
                "connections_open",
                "Client connections open now (TLS listener).",
            )
            .expect("valid metric"),
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "connections_closed_total",
                    "Client connections closed by a limit, by reason.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            tls_handshake_failures: IntCounterVec::new(
                Opts::new(
                    "tls_handshake_failures_total",
                    "TLS handshakes that failed, by reason (error or timeout).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            transactions: IntCounterVec::new(
                Opts::new(
                    "transactions_total",
                    "Transactions answered, by outcome (committed, declined, insufficient_funds, failed, pending, replayed, in_progress, reused).",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            forwards: IntCounterVec::new(
                Opts::new(
                    "switch_forwards_total",
                    "Attempts sent to switches, by switch and result.",
                ),
                &["switch", "result"],
            )
            .expect("valid metric"),
            forward_duration: HistogramVec::new(
                HistogramOpts::new(
                    "switch_forward_duration_seconds",
                    "Latency of one attempt on a switch.",
                )
                .buckets(LATENCY_BUCKETS_S.to_vec()),
                &["switch"],
            )
            .expect("valid metric"),
            ledger_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "ledger_reserve_duration_seconds",
                    "Latency of the ledger's reserve step (one database transaction).",
                )
                .buckets(LATENCY_BUCKETS_S.to_vec()),
            )
            .expect("valid metric"),
            switch_up: IntGaugeVec::new(
                Opts::new("switch_up", "1 when the switch is in rotation by probes, else 0."),
                &["switch"],
            )
            .expect("valid metric"),
            switch_latency_ewma: GaugeVec::new(
                Opts::new(
                    "switch_latency_ewma_seconds",
                    "Peak-EWMA of the switch's forward latency (least_latency balancing), decayed to the last health round.",
                ),
                &["switch"],
            )
            .expect("valid metric"),
            switch_score: GaugeVec::new(
                Opts::new(
                    "switch_balancing_score",
                    "least_latency score at the last health round: EWMA latency (s) x (outstanding + 1) / weight / slow-start share; lower wins.",
                ),
                &["switch"],
            )
            .expect("valid metric"),
            switch_success_ratio: GaugeVec::new(
                Opts::new(
                    "switch_success_ratio",
                    "Decided (approved or declined) share of the switch's attempts in the last outlier window with enough volume.",
                ),
                &["switch"],
            )
            .expect("valid metric"),
            switch_traffic_share: GaugeVec::new(
                Opts::new(
                    "switch_traffic_share",
                    "Share of fresh attempts sent to the switch during the last health round (0 to 1).",
                ),
                &["switch"],
            )
            .expect("valid metric"),
            switch_picks: IntCounterVec::new(
                Opts::new(
                    "switch_picks_total",
                    "Fresh attempts the balancer sent to the switch (counted at each health round).",
                ),
                &["switch"],
            )
            .expect("valid metric"),
            switch_outlier_ejections: IntCounterVec::new(
                Opts::new(
                    "switch_outlier_ejections_total",
                    "Times the switch was ejected by success rate (outlier detection).",
                ),
                &["switch"],
            )
            .expect("valid metric"),
            switches_panic: IntGauge::new(
                "switches_panic",
                "1 while fewer switches than health.panic_threshold_percent of the list are in rotation.",
            )
            .expect("valid metric"),
            probes: IntCounterVec::new(
                Opts::new("switch_probes_total", "Health probes, by switch and result (ok, failed)."),
                &["switch", "result"],
            )
            .expect("valid metric"),
            retries: IntCounterVec::new(
                Opts::new(
                    "switch_retries_total",
                    "Transactions moved to another switch, by reason (not_sent, not_processed, not_found).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            requeries: IntCounterVec::new(
                Opts::new(
                    "switch_requeries_total",
                    "Requeries of unknown outcomes, by switch and result (answered, failed).",
                ),
                &["switch", "result"],
            )
            .expect("valid metric"),
            pending: IntGauge::new(
                "transactions_unfinished",
                "Transactions reserved or pending (not final), as of the reconciler's last pass.",
            )
            .expect("valid metric"),
            reconciler: IntCounterVec::new(
                Opts::new(
                    "reconciler_outcomes_total",
                    "Transactions the reconciler handled, by outcome (committed, declined, released_not_sent, released_not_found, still_unknown, error).",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            webhook_deliveries: IntCounterVec::new(
                Opts::new(
                    "webhook_deliveries_total",
                    "Webhook delivery attempts, by outcome (delivered, retry, failed, lease_lost).",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            webhook_backlog: IntGauge::new(
                "webhook_backlog",
                "Webhook deliveries waiting to be sent (pending), as of the delivery worker's last look.",
            )
            .expect("valid metric"),
            config_reloads: IntCounterVec::new(
                Opts::new("config_reloads_total", "Configuration reloads, by result (ok, rejected)."),
                &["result"],
            )
            .expect("valid metric"),
            denied: IntCounterVec::new(
                Opts::new(
                    "requests_denied_total",
                    "Requests refused by authentication, authorization or limits, by reason.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            limiter_keys: IntGaugeVec::new(
                Opts::new("rate_limiter_keys", "Keys held by the keyed rate limiters (ip, client)."),
                &["limiter"],
            )
            .expect("valid metric"),
            auth_cache_entries: IntGauge::new(
                "auth_token_cache_entries",
                "Verified tokens cached until their expiry.",
            )
            .expect("valid metric"),
            transactions_in_flight: IntGauge::new(
                "transactions_in_flight",
                "Transactions being processed now (capped by limits.transactions_in_flight_max).",
            )
            .expect("valid metric"),
            redis_checks: IntCounterVec::new(
                Opts::new(
                    "rate_limit_redis_checks_total",
                    "Shared rate-limit checks sent to Redis, by result (admitted, refused, timeout, error).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            redis_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "rate_limit_redis_duration_seconds",
                    "Round trip of a shared rate-limit check Redis answered.",
                )
                .buckets(REDIS_BUCKETS_S.to_vec()),
            )
            .expect("valid metric"),
            rate_limit_fallbacks: IntCounterVec::new(
                Opts::new(
                    "rate_limit_fallbacks_total",
                    "Requests whose shared rate-limit check Redis did not answer, by limits.redis.failure_mode (open: admitted by the local limits; closed: refused) and reason (timeout, error, backoff).",
                ),
                &["mode", "reason"],
            )
            .expect("valid metric"),
            registry,
        };
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Known label sets from the start, so alerts on them see a 0 rather
        // than no series before the first shared check.
        for result in ["admitted", "refused", "timeout", "error"] {
            m.redis_checks.with_label_values(&[result]);
        }
        for mode in ["open", "closed"] {
            for reason in ["timeout", "error", "backoff"] {
                m.rate_limit_fallbacks.with_label_values(&[mode, reason]);
            }
        }
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.http_requests.clone()),
            Box::new(m.http_duration.clone()),
            Box::new(m.http_in_flight.clone()),
            Box::new(m.connections_open.clone()),
            Box::new(m.connections_refused.clone()),
            Box::new(m.tls_handshake_failures.clone()),
            Box::new(m.transactions.clone()),
            Box::new(m.forwards.clone()),
            Box::new(m.forward_duration.clone()),
            Box::new(m.ledger_duration.clone()),
            Box::new(m.switch_up.clone()),
            Box::new(m.switch_latency_ewma.clone()),
            Box::new(m.switch_score.clone()),
            Box::new(m.switch_success_ratio.clone()),
            Box::new(m.switch_traffic_share.clone()),
            Box::new(m.switch_picks.clone()),
            Box::new(m.switch_outlier_ejections.clone()),
            Box::new(m.switches_panic.clone()),
            Box::new(m.probes.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.requeries.clone()),
            Box::new(m.pending.clone()),
            Box::new(m.reconciler.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.denied.clone()),
            Box::new(m.limiter_keys.clone()),
            Box::new(m.auth_cache_entries.clone()),
            Box::new(m.transactions_in_flight.clone()),
            Box::new(m.redis_checks.clone()),
            Box::new(m.redis_duration.clone()),
            Box::new(m.rate_limit_fallbacks.clone()),
            Box::new(m.webhook_deliveries.clone()),
            Box::new(m.webhook_backlog.clone()),
            Box::new(build_info),
        ];
        // Every outcome exported from the start (0), so a rate is defined
        // before the first delivery.
        for outcome in ["delivered", "retry", "failed", "lease_lost"] {
            m.webhook_deliveries.with_label_values(&[outcome]);
        }
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// Registers metrics another part owns (the ledger's batch metrics).
    /// A collector already registered is left as it is.
    pub fn register_all(&self, collectors: Vec<Box<dyn prometheus::core::Collector>>) {
        for c in collectors {
            if let Err(e) = self.registry.register(c) {
                tracing::debug!(error = %e, "metric not registered");
            }
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on a malformed metric, which `new` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Metrics {
    /// Counts one answered transaction.
    pub fn count_transaction(&self, outcome: TxOutcome) {
        self.transactions
            .with_label_values(&[outcome.label()])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
