//! Layered configuration, read and validated before any port is bound.
//!
//! Layers, later wins: the defaults compiled in from `config/default.toml`,
//! `config/default.toml` on disk (if present), `config/{SWITCHBOARD_ENV}.toml`
//! (if present), the `--config FILE`, then `SWITCHBOARD__SECTION__KEY`
//! environment variables. `.env` (or `.env.test` under `SWITCHBOARD_ENV=test`)
//! is loaded into the environment first by the CLI.
//!
//! Every key is documented here and in `config/default.toml`; the README's
//! config table lists them with units. Unknown keys are errors, so a typo never
//! silently falls back to a default.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::SwitchName;

/// The defaults, compiled in so the binary runs from any directory.
const DEFAULTS_TOML: &str = include_str!("../config/default.toml");

/// Where the configuration came from, for reloads.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Directory holding `default.toml` and `{env}.toml`.
    pub config_dir: PathBuf,
    /// `SWITCHBOARD_ENV`, if set.
    pub env_name: Option<String>,
    /// The `--config FILE`, if given.
    pub file: Option<PathBuf>,
    /// Environment variables to overlay (`SWITCHBOARD__SECTION__KEY`).
    /// Passed in explicitly so tests never touch the process environment.
    pub env_vars: Vec<(String, String)>,
}

impl Sources {
    /// Sources as the CLI sees them: `./config`, the process environment.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        Self {
            config_dir: PathBuf::from("config"),
            env_name: std::env::var("SWITCHBOARD_ENV").ok(),
            file,
            env_vars: std::env::vars()
                .filter(|(k, _)| k.starts_with("SWITCHBOARD__"))
                .collect(),
        }
    }

    /// Every file a reload should watch.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.config_dir.join("default.toml")];
        if let Some(env) = &self.env_name {
            files.push(self.config_dir.join(format!("{env}.toml")));
        }
        files.extend(self.file.clone());
        files
    }
}

/// Every problem found in a configuration, one line each.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.problems.join("; "))
    }
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub ledger: LedgerConfig,
    pub forwarding: ForwardingConfig,
    pub health: HealthConfig,
    pub reconciler: ReconcilerConfig,
    pub limits: LimitsConfig,
    pub switches: Vec<SwitchConfig>,
    /// `[webhooks]` (issue 13).
    pub webhooks: WebhooksConfig,
    /// `SWITCHBOARD_ENV`, e.g. `production`, `test`.
    pub env_name: Option<String>,
}

/// `[server]`: the HTTPS listener and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTPS listener address.
    pub listen: SocketAddr,
    /// Ops listener (plain HTTP: metrics, health) address.
    pub ops_listen: SocketAddr,
    /// PEM file with the server certificate chain (leaf first).
    pub tls_cert: PathBuf,
    /// PEM file with the server private key.
    pub tls_key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Largest accepted request body, bytes.
    pub body_bytes_max: usize,
    /// A request body must arrive whole within this once its handler starts
    /// reading it, ms; past it (or past the request deadline, whichever is
    /// first: a deadline shorter than this is the body's bound too), 408.
    pub body_read_timeout_ms: u64,
    /// After answering, an HTTP/1 connection the gateway closes is first
    /// half-closed and what the client still sends is read and thrown
    /// away, so it can read the answer (a 413 to a body it keeps sending)
    /// instead of seeing a reset: at most this many bytes…
    pub linger_bytes_max: u64,
    /// …and for at most this long, ms. 0 turns lingering off.
    pub linger_timeout_ms: u64,
    /// Largest request head (HTTP/1 read buffer, HTTP/2 header list), bytes;
    /// past it, 431.
    pub header_bytes_max: usize,
    /// A client must send all request headers within this, ms.
    pub header_read_timeout_ms: u64,
    /// A client must finish the TLS handshake within this, ms.
    pub tls_handshake_timeout_ms: u64,
    /// Most connections open at once; past it the listener stops accepting.
    pub connections_max: usize,
    /// A connection with no request in flight and no traffic for this long is closed, ms.
    pub keepalive_idle_timeout_ms: u64,
    /// Every request is answered within this, ms.
    pub request_deadline_ms: u64,
    /// On SIGTERM/SIGINT, `/readyz` answers 503 while the gateway keeps
    /// serving for this long, so load balancers stop sending first, ms; then
    /// the listeners close. 0: no drain.
    pub shutdown_drain_ms: u64,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish, ms.
    pub shutdown_grace_ms: u64,
    /// The status page's charts cover this much of the recent past, one
    /// sample per second per switch, s.
    pub status_trend_s: u64,
    /// Most HTTP/2 streams at once on one connection.
    pub h2_streams_max: u32,
    /// Where a request's client address (what the per-IP limit keys on and
    /// the logs show) comes from: the TCP peer, a PROXY protocol header, or
    /// `X-Forwarded-For`; the latter two only from `trusted_proxies`.
    pub client_address: ClientAddress,
    /// The load balancers and proxies whose PROXY header or
    /// `X-Forwarded-For` is believed: addresses or CIDR prefixes.
    pub trusted_proxies: TrustedProxies,
}

/// `server.client_address`: how the gateway learns a client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAddress {
    /// The TCP peer: clients connect directly, or through an L4 balancer
    /// that keeps source addresses.
    Peer,
    /// A PROXY protocol header (v1 or v2) that a trusted proxy sends before
    /// the TLS handshake; connections from other peers are direct clients.
    ProxyProtocol,
    /// The rightmost `X-Forwarded-For` address that is not a trusted proxy,
    /// on requests whose TCP peer is a trusted proxy.
    XForwardedFor,
}

impl ClientAddress {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAddress::Peer => "peer",
            ClientAddress::ProxyProtocol => "proxy_protocol",
            ClientAddress::XForwardedFor => "x_forwarded_for",
        }
    }
}

/// `server.trusted_proxies`: a list of address prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct TrustedProxies(pub Vec<IpPrefix>);

impl TrustedProxies {
    /// `ip` is in one of the prefixes (an IPv4-mapped IPv6 address as its
    /// IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|p| p.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An IP prefix (`10.0.0.0/8`, `fd00::/8`) or one address (`10.0.0.7`,
/// which is `10.0.0.7/32`). Host bits past the prefix are refused
/// (`10.0.0.1/8` is a typo for something).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix(ipnet::IpNet);

impl IpPrefix {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for IpPrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let net = match s.parse::<ipnet::IpNet>() {
            Ok(net) => net,
            Err(_) => match s.parse::<IpAddr>() {
                Ok(ip) => ipnet::IpNet::from(ip),
                Err(_) => {
                    return Err(format!(
                        "{s:?} is not an IP address or CIDR prefix (10.0.0.0/8, fd00::/8)"
                    ));
                }
            },
        };
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has host bits set past its prefix (did you mean {}?)",
                net.trunc()
            ));
        }
        Ok(Self(net))
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl ServerConfig {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.tls_handshake_timeout_ms)
    }
    pub fn keepalive_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.keepalive_idle_timeout_ms)
    }
    pub fn request_deadline(&self) -> Duration {
        Duration::from_millis(self.request_deadline_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
    pub fn status_trend(&self) -> Duration {
        Duration::from_secs(self.status_trend_s)
    }
    pub fn shutdown_drain(&self) -> Duration {
        Duration::from_millis(self.shutdown_drain_ms)
    }
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }
    pub fn linger_timeout(&self) -> Duration {
        Duration::from_millis(self.linger_timeout_ms)
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` for development, `json` for production.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `switchboard=debug,info`. `RUST_LOG` wins when set.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// `[database]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://…`, `sqlite://PATH` or `sqlite::memory:`. Secret: may hold a password.
    pub url: SecretString,
    /// Most pooled connections (SQLite in memory always uses one).
    pub connections_max: u32,
    /// Wait for a pooled connection at most this long, ms.
    pub acquire_timeout_ms: u64,
    /// Apply `migrations/` at start-up.
    pub migrate_on_start: bool,
    /// Retries of a transaction the database aborted (deadlock, serialization, busy).
    pub conflict_retries_max: u32,
    /// One statement (lock waits included) is cancelled after this, ms
    /// (Postgres `statement_timeout`): a stuck connection fails its batch
    /// instead of stalling every batch behind it.
    pub statement_timeout_ms: u64,
}

impl DatabaseConfig {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }

    /// The URL with any password replaced, safe for logs.
    pub fn url_redacted(&self) -> String {
        redact_url(self.url.expose_secret())
    }

    /// Every setting equal, the URL compared in full (password included):
    /// `Debug` redacts it, so it cannot serve as the comparison.
    pub fn same_as(&self, other: &DatabaseConfig) -> bool {
        self.url.expose_secret() == other.url.expose_secret()
            && self.connections_max == other.connections_max
            && self.acquire_timeout_ms == other.acquire_timeout_ms
            && self.migrate_on_start == other.migrate_on_start
            && self.conflict_retries_max == other.conflict_retries_max
            && self.statement_timeout_ms == other.statement_timeout_ms
    }

    pub fn is_postgres(&self) -> bool {
        let url = self.url.expose_secret();
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url_redacted())
            .field("connections_max", &self.connections_max)
            .field("acquire_timeout_ms", &self.acquire_timeout_ms)
            .field("migrate_on_start", &self.migrate_on_start)
            .field("conflict_retries_max", &self.conflict_retries_max)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .finish()
    }
}

/// `[limits.redis]`: each wait bounded, the URL one the client speaks.
fn redis_problems(r: &RedisLimitsConfig, request_deadline_ms: u64) -> Vec<String> {
    let mut p = Vec::new();
    if let Some(url) = &r.url {
        let url = url.expose_secret();
        if url.starts_with("rediss://") {
            p.push("limits.redis.url: TLS to Redis (rediss://) is not built yet; use redis:// on a private network".into());
        } else if !url.starts_with("redis://") {
            p.push(format!(
                "limits.redis.url: must start with redis:// (got {})",
                redact_url(url)
            ));
        } else if let Err(e) = redis::Client::open(url) {
            p.push(format!("limits.redis.url: {e} (got {})", redact_url(url)));
        }
    }
    if r.timeout_ms == 0 || r.timeout_ms > REDIS_TIMEOUT_MS_MAX {
        p.push(format!(
            "limits.redis.timeout_ms: must be 1 to {REDIS_TIMEOUT_MS_MAX}"
        ));
    } else if request_deadline_ms > 0 && r.timeout_ms >= request_deadline_ms {
        p.push("limits.redis.timeout_ms: must be less than server.request_deadline_ms".into());
    }
    if r.connect_timeout_ms == 0 || r.connect_timeout_ms > REDIS_TIMEOUT_MS_MAX {
        p.push(format!(
            "limits.redis.connect_timeout_ms: must be 1 to {REDIS_TIMEOUT_MS_MAX}"
        ));
    }
    if r.backoff_ms > REDIS_BACKOFF_MS_MAX {
        p.push(format!(
            "limits.redis.backoff_ms: at most {REDIS_BACKOFF_MS_MAX}"
        ));
    }
    if r.key_prefix.len() > REDIS_KEY_PREFIX_BYTES_MAX
        || !r.key_prefix.bytes().all(|b| b.is_ascii_graphic())
    {
        p.push(format!(
            "limits.redis.key_prefix: at most {REDIS_KEY_PREFIX_BYTES_MAX} printable ASCII characters, no spaces"
        ));
    }
    if r.pipeline_max == 0 || r.pipeline_max > REDIS_PIPELINE_MAX {
        p.push(format!(
            "limits.redis.pipeline_max: must be 1 to {REDIS_PIPELINE_MAX}"
        ));
    }
    p
}

/// A shared check sits in every admitted request's path: a second is
/// already far too long.
const REDIS_TIMEOUT_MS_MAX: u64 = 5_000;
const REDIS_BACKOFF_MS_MAX: u64 = 60_000;
const REDIS_KEY_PREFIX_BYTES_MAX: usize = 64;
const REDIS_PIPELINE_MAX: usize = 65_536;

fn redact_url(url: &str) -> String {
    // scheme://user:password@host → scheme://user:***@host
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// `[auth]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Development HS256 secret. Refused when `SWITCHBOARD_ENV=production`.
    pub dev_hs256_secret: Option<SecretString>,
    /// Clock leeway for `exp` and `nbf`, seconds.
    pub leeway_s: u64,
    /// Default lifetime of tokens printed by `switchboard token`, seconds.
    pub token_ttl_s: u64,
    /// When set, the `iss` claim must equal it.
    pub issuer: Option<String>,
    /// When set, the `aud` claim must contain it.
    pub audience: Option<String>,
    /// When set, tokens living longer than this (`exp - iat`, or `exp - now`
    /// without `iat`) are refused, seconds.
    pub token_lifetime_max_s: Option<u64>,
    /// Where roles are: `roles` (a JSON array claim) or `scope` (a
    /// space-separated string claim, as OAuth 2 scopes).
    pub roles_claim: RolesClaim,
    /// Verified tokens kept (until their `exp`) so a hot client skips the
    /// signature check; 0 turns the cache off.
    pub cache_entries_max: usize,
    /// A local JWKS file (RFC 7517) of public keys, each with `kid` and `alg`.
    pub jwks_file: Option<PathBuf>,
    /// Public keys in PEM, each bound to one algorithm.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// With mTLS on (`server.client_ca`), the token's `sub` must equal the
    /// client certificate's subject common name.
    pub require_sub_match_client_cert: bool,
}

/// One `[[auth.keys]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The `kid` tokens name in their header.
    pub kid: String,
    /// `RS256`, `ES256` or `EdDSA`: the only algorithm this key verifies.
    pub algorithm: KeyAlgorithm,
    /// PEM file with the public key.
    pub public_key: PathBuf,
}

/// `auth.roles_claim`: where a token carries its roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolesClaim {
    /// `"roles": ["transact", ...]`
    Roles,
    /// `"scope": "transact auditor"` (OAuth 2 style).
    Scope,
}

/// The asymmetric algorithm an `[[auth.keys]]` key is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyAlgorithm {
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "ES256")]
    Es256,
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "dev_hs256_secret",
                &self.dev_hs256_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("leeway_s", &self.leeway_s)
            .field("token_ttl_s", &self.token_ttl_s)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("token_lifetime_max_s", &self.token_lifetime_max_s)
            .field("roles_claim", &self.roles_claim)
            .field("cache_entries_max", &self.cache_entries_max)
            .field("jwks_file", &self.jwks_file)
            .field("keys", &self.keys)
            .field(
                "require_sub_match_client_cert",
                &self.require_sub_match_client_cert,
            )
            .finish()
    }
}

/// `[limits]`: rate limits and load shedding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second one client IP may make, checked before any token
    /// is verified.
    pub per_ip_per_s: u32,
    /// Burst above `per_ip_per_s` one IP may make at once.
    pub per_ip_burst: u32,
    /// Quotas per role, by `sub`: a client gets the largest of its roles'.
    pub roles: RoleQuotas,
    /// Per-client overrides, by `sub`.
    #[serde(default)]
    pub clients: Vec<ClientQuota>,
    /// Transactions being processed at once; past it, 503 `overloaded`.
    pub transactions_in_flight_max: usize,
    /// How often idle keys are pruned from the keyed limiters, ms.
    pub prune_interval_ms: u64,
    /// The optional shared buckets in Redis, behind the local ones.
    pub redis: RedisLimitsConfig,
}

/// `[limits.redis]`: per-IP and per-client buckets shared by every replica,
/// held in Redis. The local limiters stay in front: a request they refuse
/// never reaches Redis; one they admit costs one round trip (both buckets in
/// one script).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisLimitsConfig {
    /// `redis://[user:password@]host[:port][/db]`; unset: limits are per
    /// replica. Secret: may hold a password. Restart to change.
    #[serde(default)]
    pub url: Option<SecretString>,
    /// One check (both buckets, one round trip) must answer within this, ms;
    /// past it the check counts as failed and `failure_mode` applies.
    pub timeout_ms: u64,
    /// Establishing (or re-establishing) the connection times out after
    /// this, ms. Restart to change.
    pub connect_timeout_ms: u64,
    /// What a request gets when Redis cannot answer in time.
    pub failure_mode: RedisFailureMode,
    /// After a failed check, Redis is not asked again for this long, ms:
    /// `failure_mode` applies at once, so an outage costs one timeout per
    /// backoff rather than one per request (0: ask every time).
    pub backoff_ms: u64,
    /// Prefix of every key the gateway writes, so replicas of one gateway
    /// share buckets and other users of the Redis do not collide with them.
    pub key_prefix: String,
    /// Most commands queued on the one multiplexed connection; a check
    /// that finds it full waits, within `timeout_ms`. Restart to change.
    pub pipeline_max: usize,
}

impl fmt::Debug for RedisLimitsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimitsConfig")
            .field("url", &self.url_redacted())
            .field("timeout_ms", &self.timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("failure_mode", &self.failure_mode)
            .field("backoff_ms", &self.backoff_ms)
            .field("key_prefix", &self.key_prefix)
            .field("pipeline_max", &self.pipeline_max)
            .finish()
    }
}

impl RedisLimitsConfig {
    /// The URL with any password replaced, safe for logs.
    pub fn url_redacted(&self) -> Option<String> {
        self.url.as_ref().map(|u| redact_url(u.expose_secret()))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn backoff(&self) -> Duration {
        Duration::from_millis(self.backoff_ms)
    }

    /// What only a restart changes (the connection), the URL compared in full.
    pub fn same_connection_as(&self, other: &RedisLimitsConfig) -> bool {
        self.url.as_ref().map(|u| u.expose_secret().to_owned())
            == other.url.as_ref().map(|u| u.expose_secret().to_owned())
            && self.connect_timeout_ms == other.connect_timeout_ms
            && self.pipeline_max == other.pipeline_max
    }
}

/// `limits.redis.failure_mode`: a check Redis did not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisFailureMode {
    /// Decide by the local limiters alone (per replica), as without Redis.
    Open,
    /// Refuse the request: 503 `rate_limit_unavailable`.
    Closed,
}

impl RedisFailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisFailureMode::Open => "open",
            RedisFailureMode::Closed => "closed",
        }
    }
}

/// `[limits.roles.*]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleQuotas {
    pub transact: Quota,
    pub auditor: Quota,
    pub operator: Quota,
}

/// A rate: `per_s` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub per_s: u32,
    pub burst: u32,
}

/// One `[[limits.clients]]` override.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientQuota {
    pub sub: String,
    pub per_s: u32,
    pub burst: u32,
}

/// `[ledger]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// Largest amount of one transaction, minor units.
    pub amount_max: i64,
    /// Largest opening balance of a new account, minor units.
    pub opening_balance_max: i64,
    /// Most clients named as an account's spenders.
    pub spenders_max: usize,
    /// `Retry-After` sent with `409 transaction_in_progress`, seconds.
    pub in_progress_retry_after_s: u64,
    /// Rows on a history page when the request gives no `limit`, rows.
    pub history_page_rows_default: u32,
    /// The largest `limit` a history page accepts, rows (at most
    /// [`HISTORY_PAGE_ROWS_CAP`]).
    pub history_page_rows_max: u32,
    /// Most rows of its time range a filtered history page reads, rows
    /// (`history_page_rows_max` to [`HISTORY_SCAN_ROWS_CAP`]).
    pub history_scan_rows_max: u32,
    /// Most ledger operations applied together in one database transaction.
    pub batch_max: usize,
    /// Most ledger operations waiting for their batch, per queue (reserve,
    /// finish).
    pub queue_max: usize,
    /// Longest wait for room in a full ledger queue before answering 503, ms.
    pub queue_wait_ms: u64,
    /// Batches of each queue applied at once (writer tasks per queue).
    pub writers: usize,
}

/// `[forwarding]`: how transactions reach switches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardingConfig {
    /// Establishing a switch connection (TCP connect and TLS handshake
    /// together) times out after this, ms; nothing was sent then.
    pub connect_timeout_ms: u64,
    /// One attempt (request sent → answer read) times out after this, ms.
    pub attempt_timeout_ms: u64,
    /// Most switches tried for one transaction.
    pub attempts_max: u32,
    /// Idle keep-alive connections kept per switch.
    pub pool_idle_per_switch_max: usize,
    /// An idle pooled connection is closed after this, ms.
    pub pool_idle_timeout_ms: u64,
    /// Largest switch response body read, bytes.
    pub response_bytes_max: usize,
    /// CA bundle (PEM) that `https://` switches are verified against; unset:
    /// the public web PKI roots.
    pub ca_bundle: Option<PathBuf>,
    /// Client certificate chain (PEM) presented to switches that require mTLS.
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Where a fresh transaction goes among the switches in rotation.
    pub balancing: Balancing,
    /// `least_latency`: time constant of the peak-EWMA of each switch's
    /// forward latency, ms. An idle switch's estimate decays toward zero over
    /// it, so a switch that was slow is tried again.
    pub ewma_decay_ms: u64,
    /// `least_latency`: the estimate of a switch not timed yet, ms.
    pub ewma_default_ms: u64,
    /// A switch back in rotation ramps its share up over this window, ms,
    /// starting at a tenth; 0 turns slow start off.
    pub slow_start_ms: u64,
}

/// `forwarding.balancing`: how a fresh attempt's switch is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balancing {
    /// Smooth weighted round-robin, in weight proportion.
    RoundRobin,
    /// The better of two random switches by peak-EWMA latency times
    /// outstanding attempts, divided by weight.
    LeastLatency,
}

impl Balancing {
    pub fn as_str(self) -> &'static str {
        match self {
            Balancing::RoundRobin => "round_robin",
            Balancing::LeastLatency => "least_latency",
        }
    }
}

/// `[health]`: the switch health monitor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between probe rounds, ms (jittered by up to a tenth).
    pub interval_ms: u64,
    /// One probe (`GET /health` on a fresh connection) times out after this, ms.
    pub timeout_ms: u64,
    /// Failed probes in a row that take a switch out of rotation.
    pub unhealthy_threshold: u32,
    /// Successful probes in a row that bring it back.
    pub healthy_threshold: u32,
    /// Failed forwards in a row that take a switch out at once (passive ejection).
    pub passive_failures_max: u32,
    /// Success-rate outlier detection: the window each switch's attempts are
    /// counted over, ms.
    pub outlier_interval_ms: u64,
    /// Fewest attempts in a window for its failure share to count.
    pub outlier_min_requests: u64,
    /// A switch whose failed attempts (not sent, not processed, unknown) are
    /// at least this share of a window's attempts is ejected, percent.
    pub outlier_failure_percent: u8,
    /// First ejection time, ms; each repeat ejection adds as much again.
    pub outlier_base_ejection_ms: u64,
    /// Longest ejection, ms.
    pub outlier_max_ejection_ms: u64,
    /// Most switches ejected by success rate at once, percent of the list
    /// (at least one switch may always be ejected).
    pub outlier_max_ejection_percent: u8,
    /// Fewer switches than this share in rotation is a panic: metric, log and
    /// status page say so loudly, percent. Routing still goes only to
    /// switches that are up.
    pub panic_threshold_percent: u8,
}

impl HealthConfig {
    pub fn outlier_interval(&self) -> Duration {
        Duration::from_millis(self.outlier_interval_ms)
    }
}

impl HealthConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

// ---- webhooks (issue 13) ----

/// `[webhooks]`: registered endpoints and the delivery worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Accept `http://` endpoint URLs (tests, demo). Off: only `https://`.
    pub allow_http: bool,
    /// Time between the worker's claims when nothing was due, ms.
    pub interval_ms: u64,
    /// A claimed delivery is leased to one replica for this long, ms. Must
    /// exceed `timeout_ms`.
    pub lease_ms: u64,
    /// Most deliveries claimed (and sent concurrently) at once.
    pub batch_max: u32,
    /// One POST to an endpoint (connect, send, answer) times out after this, ms.
    pub timeout_ms: u64,
    /// Most bytes of an endpoint's answer read; the rest is not waited for.
    pub response_bytes_max: usize,
    /// The first retry waits about this long, ms; each next one twice as long.
    pub retry_base_ms: u64,
    /// No wait between two attempts is longer than this, ms.
    pub retry_max_ms: u64,
    /// A delivery not done this long after its event is marked failed, ms.
    pub horizon_ms: u64,
    /// Most attempts of one delivery; then it is marked failed.
    pub attempts_max: u32,
    /// Most entries one list answer (webhooks, failed deliveries) holds.
    pub list_max: u32,
    /// Most live webhooks of one client: each final transaction of the
    /// client writes one outbox row per webhook subscribed to its state.
    pub per_client_max: u32,
    /// Most bytes of a registered URL.
    pub url_bytes_max: usize,
}

impl WebhooksConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// `[reconciler]`: finishes transactions left `reserved` or `pending`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcilerConfig {
    /// Time between passes, ms. The first pass runs at start-up.
    pub interval_ms: u64,
    /// A transaction untouched for this long is the reconciler's, ms. Must
    /// exceed `server.request_deadline_ms`, so a live request is never raced.
    pub stale_after_ms: u64,
    /// A claimed transaction is leased to one gateway for this long, ms.
    pub lease_ms: u64,
    /// Most transactions claimed in one pass.
    pub batch_max: u32,
    /// Requery of one transaction times out after this, ms.
    pub requery_timeout_ms: u64,
}

impl ForwardingConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.attempt_timeout_ms)
    }
}

/// One `[[switches]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    /// Unique name, used in metrics, logs and settlement account ids.
    pub name: SwitchName,
    /// Base URL, `http://host:port` or `https://host:port`.
    pub url: String,
    /// Share of traffic relative to the others (smooth weighted round-robin).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Most switches in the list.
pub const SWITCHES_MAX: usize = 64;

/// Transactions the reconciler resolves at once within a pass.
pub const RECONCILE_CONCURRENCY: u64 = 8;

/// Largest duration accepted where one is stored as a signed millisecond
/// count (a week).
const MS_MAX: u64 = 7 * 24 * 3600 * 1000;

/// The most rows `ledger.history_page_rows_max` may allow on one page: a
/// page is one response body, built in memory.
pub const HISTORY_PAGE_ROWS_CAP: u32 = 1000;

/// The most rows `ledger.history_scan_rows_max` may let one filtered page
/// read.
pub const HISTORY_SCAN_ROWS_CAP: u32 = 1_000_000;

/// Longest linger after an answer (`server.linger_timeout_ms`): a minute.
const LINGER_MS_MAX: u64 = 60_000;

/// Longest drain before stopping (`server.shutdown_drain_ms`): ten minutes.
const DRAIN_MS_MAX: u64 = 600_000;

impl Config {
    /// Reads every layer and validates the result.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
        let default_file = sources.config_dir.join("default.toml");
        builder = builder.add_source(config::File::from(default_file).required(false));
        if let Some(env) = &sources.env_name {
            let env_file = sources.config_dir.join(format!("{env}.toml"));
            builder = builder.add_source(config::File::from(env_file).required(false));
        }
        if let Some(file) = &sources.file {
            if !file.is_file() {
                return Err(ConfigError::one(format!(
                    "--config {}: no such file",
                    file.display()
                )));
            }
            builder = builder.add_source(config::File::from(file.as_path()).required(true));
        }
        let env_map: config::Map<String, String> = sources.env_vars.iter().cloned().collect();
        builder = builder.add_source(
            config::Environment::with_prefix("SWITCHBOARD")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env_map)),
        );
        let raw = builder
            .build()
            .map_err(|e| ConfigError::one(e.to_string()))?;
        Self::from_raw(raw, sources.env_name.clone())
    }

    /// Loads from one TOML text on top of the defaults (tests, tools).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_layers(&[text])
    }

    /// Loads TOML texts layered over the defaults, later wins.
    pub fn from_toml_layers(layers: &[&str]) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
        for text in layers {
            builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
        }
        let raw = builder
            .build()
            .map_err(|e| ConfigError::one(e.to_string()))?;
        Self::from_raw(raw, None)
    }

    fn from_raw(raw: config::Config, env_name: Option<String>) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();

        // Unknown top-level sections are typos.
        const SECTIONS: [&str; 11] = [
            "webhooks",
            "limits",
            "server",
            "log",
            "database",
            "auth",
            "ledger",
            "forwarding",
            "health",
            "reconciler",
            "switches",
        ];
        if let Ok(table) = raw
            .clone()
            .try_deserialize::<config::Map<String, config::Value>>()
        {
            for key in table.keys() {
                if !SECTIONS.contains(&key.as_str()) {
                    problems.push(format!("{key}: unknown section"));
                }
            }
        }

        // Each section on its own, so one bad section does not hide another.
        fn section<T: serde::de::DeserializeOwned>(
            raw: &config::Config,
            key: &str,
            problems: &mut Vec<String>,
        ) -> Option<T> {
            match raw.get::<T>(key) {
                Ok(v) => Some(v),
                Err(e) => {
                    problems.push(describe(key, &e));
                    None
                }
            }
        }
        let server = section::<ServerConfig>(&raw, "server", &mut problems);
        let log = section::<LogConfig>(&raw, "log", &mut problems);
        let database = section::<DatabaseConfig>(&raw, "database", &mut problems);
        let auth = section::<AuthConfig>(&raw, "auth", &mut problems);
        let ledger = section::<LedgerConfig>(&raw, "ledger", &mut problems);
        let forwarding = section::<ForwardingConfig>(&raw, "forwarding", &mut problems);
        let health = section::<HealthConfig>(&raw, "health", &mut problems);
        let reconciler = section::<ReconcilerConfig>(&raw, "reconciler", &mut problems);
        let limits = section::<LimitsConfig>(&raw, "limits", &mut problems);
        let webhooks = section::<WebhooksConfig>(&raw, "webhooks", &mut problems);
        let switches = match raw.get::<Vec<SwitchConfig>>("switches") {
            Ok(v) => Some(v),
            Err(config::ConfigError::NotFound(_)) => Some(Vec::new()),
            Err(e) => {
                problems.push(describe("switches", &e));
                None
            }
        };

        let (
            Some(server),
            Some(log),
            Some(database),
            Some(auth),
            Some(ledger),
            Some(forwarding),
            Some(health),
            Some(reconciler),
            Some(limits),
            Some(switches),
            Some(webhooks),
        ) = (
            server, log, database, auth, ledger, forwarding, health, reconciler, limits, switches,
            webhooks,
        )
        else {
            return Err(ConfigError { problems });
        };
        let config = Config {
            server,
            log,
            database,
            auth,
            ledger,
            forwarding,
            health,
            reconciler,
            limits,
            switches,
            webhooks,
            env_name,
        };
        problems.extend(config.problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Semantic checks: every one that fails is reported.
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut positive = |key: &str, value: u64| {
            if value == 0 {
                p.push(format!("{key}: must be greater than 0"));
            }
        };
        let s = &self.server;
        positive("server.body_bytes_max", s.body_bytes_max as u64);
        positive("server.body_read_timeout_ms", s.body_read_timeout_ms);
        positive("server.header_read_timeout_ms", s.header_read_timeout_ms);
        positive(
            "server.tls_handshake_timeout_ms",
            s.tls_handshake_timeout_ms,
        );
        positive("server.connections_max", s.connections_max as u64);
        positive(
            "server.keepalive_idle_timeout_ms",
            s.keepalive_idle_timeout_ms,
        );
        positive("server.request_deadline_ms", s.request_deadline_ms);
        positive("server.h2_streams_max", s.h2_streams_max as u64);
        let d = &self.database;
        positive("database.connections_max", d.connections_max as u64);
        positive("database.acquire_timeout_ms", d.acquire_timeout_ms);
        positive("database.statement_timeout_ms", d.statement_timeout_ms);
        let f = &self.forwarding;
        positive("forwarding.connect_timeout_ms", f.connect_timeout_ms);
        positive("forwarding.attempt_timeout_ms", f.attempt_timeout_ms);
        positive("forwarding.attempts_max", f.attempts_max as u64);
        positive("forwarding.response_bytes_max", f.response_bytes_max as u64);
        positive("ledger.amount_max", self.ledger.amount_max.max(0) as u64);
        positive("ledger.batch_max", self.ledger.batch_max as u64);
        positive("ledger.queue_max", self.ledger.queue_max as u64);
        positive("ledger.queue_wait_ms", self.ledger.queue_wait_ms);
        positive("ledger.writers", self.ledger.writers as u64);
        let h = &self.health;
        positive("health.interval_ms", h.interval_ms);
        positive("health.timeout_ms", h.timeout_ms);
        positive("health.unhealthy_threshold", h.unhealthy_threshold as u64);
        positive("health.healthy_threshold", h.healthy_threshold as u64);
        positive("health.passive_failures_max", h.passive_failures_max as u64);
        positive("health.outlier_interval_ms", h.outlier_interval_ms);
        positive("health.outlier_min_requests", h.outlier_min_requests);
        positive(
            "health.outlier_base_ejection_ms",
            h.outlier_base_ejection_ms,
        );
        positive("forwarding.ewma_decay_ms", f.ewma_decay_ms);
        positive("forwarding.ewma_default_ms", f.ewma_default_ms);
        let r = &self.reconciler;
        positive("reconciler.interval_ms", r.interval_ms);
        positive("reconciler.lease_ms", r.lease_ms);
        positive("reconciler.batch_max", r.batch_max as u64);
        positive("reconciler.requery_timeout_ms", r.requery_timeout_ms);
        positive("auth.token_ttl_s", self.auth.token_ttl_s);
        let w = &self.webhooks;
        positive("webhooks.interval_ms", w.interval_ms);
        positive("webhooks.lease_ms", w.lease_ms);
        positive("webhooks.batch_max", u64::from(w.batch_max));
        positive("webhooks.timeout_ms", w.timeout_ms);
        positive("webhooks.response_bytes_max", w.response_bytes_max as u64);
        positive("webhooks.retry_base_ms", w.retry_base_ms);
        positive("webhooks.retry_max_ms", w.retry_max_ms);
        positive("webhooks.horizon_ms", w.horizon_ms);
        positive("webhooks.attempts_max", u64::from(w.attempts_max));
        positive("webhooks.list_max", u64::from(w.list_max));
        positive("webhooks.per_client_max", u64::from(w.per_client_max));
        positive("webhooks.url_bytes_max", w.url_bytes_max as u64);
        if !(10..=3600).contains(&s.status_trend_s) {
            p.push("server.status_trend_s: must be 10 to 3600".into());
        }
        for (key, pct) in [
            ("health.outlier_failure_percent", h.outlier_failure_percent),
            (
                "health.outlier_max_ejection_percent",
                h.outlier_max_ejection_percent,
            ),
            ("health.panic_threshold_percent", h.panic_threshold_percent),
        ] {
            if pct > 100 {
                p.push(format!("{key}: must be at most 100"));
            }
        }
        if h.outlier_failure_percent == 0 {
            p.push("health.outlier_failure_percent: must be greater than 0".into());
        }
        if h.outlier_max_ejection_ms < h.outlier_base_ejection_ms {
            p.push(
                "health.outlier_max_ejection_ms: must be at least health.outlier_base_ejection_ms"
                    .into(),
            );
        }

        if s.listen == s.ops_listen && s.listen.port() != 0 {
            p.push("server.ops_listen: must differ from server.listen".into());
        }
        let url = d.url.expose_secret();
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            p.push(format!(
                "database.url: must start with postgres://, postgresql:// or sqlite: (got {})",
                d.url_redacted()
            ));
        }
        // Bounded waits, each: a connection slot is held while lingering,
        // and the drain delays every stop.
        for (key, value, max) in [
            (
                "server.linger_timeout_ms",
                s.linger_timeout_ms,
                LINGER_MS_MAX,
            ),
            (
                "server.shutdown_drain_ms",
                s.shutdown_drain_ms,
                DRAIN_MS_MAX,
            ),
        ] {
            if value > max {
                p.push(format!("{key}: at most {max}"));
            }
        }
        if s.linger_timeout_ms > 0 && s.linger_bytes_max == 0 {
            p.push(
                "server.linger_bytes_max: must be greater than 0 while server.linger_timeout_ms is"
                    .into(),
            );
        }
        if s.client_address != ClientAddress::Peer && s.trusted_proxies.is_empty() {
            p.push(format!(
                "server.trusted_proxies: must name the proxies in front of the gateway while server.client_address is {:?}",
                s.client_address.as_str()
            ));
        }
        if !(8192..=1 << 20).contains(&s.header_bytes_max) {
            p.push("server.header_bytes_max: must be 8192 to 1048576".into());
        }
        let l = &self.limits;
        for (key, q) in [
            (
                "limits.per_ip",
                Quota {
                    per_s: l.per_ip_per_s,
                    burst: l.per_ip_burst,
                },
            ),
            ("limits.roles.transact", l.roles.transact),
            ("limits.roles.auditor", l.roles.auditor),
            ("limits.roles.operator", l.roles.operator),
        ]
        .into_iter()
        .chain(l.clients.iter().map(|c| {
            (
                "limits.clients",
                Quota {
                    per_s: c.per_s,
                    burst: c.burst,
                },
            )
        })) {
            if q.per_s == 0 || q.burst == 0 {
                p.push(format!("{key}: per_s and burst must be greater than 0"));
            }
        }
        if l.transactions_in_flight_max == 0 {
            p.push("limits.transactions_in_flight_max: must be greater than 0".into());
        }
        if l.prune_interval_ms == 0 {
            p.push("limits.prune_interval_ms: must be greater than 0".into());
        }
        p.extend(redis_problems(&l.redis, s.request_deadline_ms));
        if let Some(max) = self.auth.token_lifetime_max_s
            && self.auth.token_ttl_s > max
        {
            p.push(format!(
                "auth.token_ttl_s: must not exceed auth.token_lifetime_max_s ({max}), or `switchboard token` prints tokens the gateway refuses"
            ));
        }
        let mut kids = std::collections::HashSet::new();
        for (i, k) in self.auth.keys.iter().enumerate() {
            if k.kid.is_empty() || !kids.insert(k.kid.as_str()) {
                p.push(format!("auth.keys[{i}].kid: must be non-empty and unique"));
            }
        }
        if f.connect_timeout_ms >= f.attempt_timeout_ms {
            p.push(
                "forwarding.connect_timeout_ms: must be less than forwarding.attempt_timeout_ms"
                    .into(),
            );
        }
        // A delivery's lease outlives its POST, so no other replica sends it
        // while one still waits for the answer.
        if self.webhooks.lease_ms <= self.webhooks.timeout_ms.saturating_mul(2) {
            p.push("webhooks.lease_ms: must exceed 2 * webhooks.timeout_ms".into());
        }
        // The reconciler must never take a transaction a live request still
        // works on: a request may run to its deadline plus one attempt, after
        // waiting for a pooled connection twice.
        let live_ms = s
            .request_deadline_ms
            .saturating_add(f.attempt_timeout_ms)
            .saturating_add(d.acquire_timeout_ms.saturating_mul(2));
        if self.reconciler.stale_after_ms <= live_ms {
            p.push(format!(
                "reconciler.stale_after_ms: must exceed server.request_deadline_ms + forwarding.attempt_timeout_ms + 2 * database.acquire_timeout_ms ({live_ms})"
            ));
        }
        // A lease must outlast the pass that holds it.
        let pass_ms = (u64::from(self.reconciler.batch_max) / RECONCILE_CONCURRENCY + 1)
            .saturating_mul(self.reconciler.requery_timeout_ms);
        if self.reconciler.lease_ms <= pass_ms {
            p.push(format!(
                "reconciler.lease_ms: must exceed one pass (batch_max / {RECONCILE_CONCURRENCY} + 1) * requery_timeout_ms ({pass_ms})"
            ));
        }
        for (key, value) in [
            ("reconciler.stale_after_ms", self.reconciler.stale_after_ms),
            ("reconciler.lease_ms", self.reconciler.lease_ms),
        ] {
            if value > MS_MAX {
                p.push(format!("{key}: at most {MS_MAX}"));
            }
        }
        if f.client_cert.is_some() != f.client_key.is_some() {
            p.push("forwarding.client_cert: client_cert and client_key go together".into());
        }
        if self.ledger.opening_balance_max < 0 {
            p.push("ledger.opening_balance_max: must not be negative".into());
        }
        let (rows_default, rows_max) = (
            self.ledger.history_page_rows_default,
            self.ledger.history_page_rows_max,
        );
        if !(1..=HISTORY_PAGE_ROWS_CAP).contains(&rows_max) {
            p.push(format!(
                "ledger.history_page_rows_max: must be 1 to {HISTORY_PAGE_ROWS_CAP}"
            ));
        }
        if !(1..=rows_max).contains(&rows_default) {
            p.push(
                "ledger.history_page_rows_default: must be 1 to ledger.history_page_rows_max"
                    .into(),
            );
        }
        if !(rows_max..=HISTORY_SCAN_ROWS_CAP).contains(&self.ledger.history_scan_rows_max) {
            p.push(format!(
                "ledger.history_scan_rows_max: must be ledger.history_page_rows_max to \
                 {HISTORY_SCAN_ROWS_CAP}"
            ));
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            p.push(format!(
                "log.level: not a valid filter: {:?}",
                self.log.level
            ));
        }
        if let Some(secret) = &self.auth.dev_hs256_secret {
            if self.env_name.as_deref() == Some("production") {
                p.push("auth.dev_hs256_secret: refused when SWITCHBOARD_ENV=production".into());
            } else if secret.expose_secret().len() < 32 {
                p.push("auth.dev_hs256_secret: must be at least 32 bytes".into());
            }
        }
        p.extend(switch_problems(&self.switches));
        p
    }

    /// Paths in the config are relative to the working directory; this makes
    /// them relative to `base` instead (used by tests and `demo`).
    pub fn rebase_paths(&mut self, base: &Path) {
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        rebase(&mut self.server.tls_cert);
        rebase(&mut self.server.tls_key);
        for key in &mut self.auth.keys {
            rebase(&mut key.public_key);
        }
        for path in [
            &mut self.auth.jwks_file,
            &mut self.server.client_ca,
            &mut self.forwarding.ca_bundle,
            &mut self.forwarding.client_cert,
            &mut self.forwarding.client_key,
        ]
        .into_iter()
        .flatten()
        {
            rebase(path);
        }
    }
}

/// Checks a switch list: names unique and sane, URLs well formed, weights positive.
pub fn switch_problems(switches: &[SwitchConfig]) -> Vec<String> {
    let mut p = Vec::new();
    if switches.len() > SWITCHES_MAX {
        p.push(format!("switches: at most {SWITCHES_MAX} entries"));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, sw) in switches.iter().enumerate() {
        let key = format!("switches[{i}]");
        let name = sw.name.as_str();
        let name_ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            p.push(format!(
                "{key}.name: 1 to 32 letters, digits, - or _ (got {:?})",
                sw.name
            ));
        }
        if !seen.insert(sw.name.as_str()) {
            p.push(format!("{key}.name: duplicate name {:?}", sw.name));
        }
        match sw.url.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some()
                    && uri.path_and_query().is_none_or(|pq| pq.as_str() == "/") => {}
            _ => p.push(format!(
                "{key}.url: must be http://host:port or https://host:port (got {:?})",
                sw.url
            )),
        }
        if sw.weight == 0 || sw.weight > 1000 {
            p.push(format!("{key}.weight: must be 1 to 1000"));
        }
    }
    p
}

fn describe(section: &str, e: &config::ConfigError) -> String {
    let text = e.to_string();
    if text.contains(section) {
        text
    } else {
        format!("{section}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_toml("").expect("defaults must validate");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.server.ops_listen.to_string(), "127.0.0.1:9090");
    }

    #[test]
    fn every_problem_is_reported() {
        let err = Config::from_toml(
            "[server]\nconnections_max = 0\nrequest_deadline_ms = 0\n[ledger]\nbogus = 1\n",
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("bogus"), "{all}");
        // The ledger section failed to parse; server problems are still found
        // once the sections parse, so check them on their own.
        let err = Config::from_toml("[server]\nconnections_max = 0\nrequest_deadline_ms = 0\n")
            .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{:?}", err.problems);
    }

    #[test]
    fn body_timeout_linger_and_drain_are_bounded() {
        let err =
            Config::from_toml("[server]\nlinger_timeout_ms = 60001\nshutdown_drain_ms = 600001\n")
                .unwrap_err();
        let all = err.problems.join("\n");
        for key in ["server.linger_timeout_ms", "server.shutdown_drain_ms"] {
            assert!(all.contains(key), "{key}: {all}");
        }
        let err = Config::from_toml("[server]\nbody_read_timeout_ms = 0\nlinger_bytes_max = 0\n")
            .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{:?}", err.problems);
        // No linger and no drain are fine.
        Config::from_toml(
            "[server]\nlinger_timeout_ms = 0\nlinger_bytes_max = 0\nshutdown_drain_ms = 0\n",
        )
        .expect("valid");
    }

    #[test]
    fn history_page_bounds_are_checked() {
        let problems = |toml: &str| Config::from_toml(toml).map_or_else(|e| e.problems, |_| vec![]);
        assert_eq!(
            problems("[ledger]\nhistory_page_rows_max = 1000\n"),
            Vec::<String>::new()
        );
        for (toml, key) in [
            ("history_page_rows_max = 0", "ledger.history_page_rows_max"),
            (
                "history_page_rows_max = 1001",
                "ledger.history_page_rows_max",
            ),
            (
                "history_page_rows_default = 0",
                "ledger.history_page_rows_default",
            ),
            (
                "history_page_rows_default = 201",
                "ledger.history_page_rows_default",
            ),
            (
                "history_scan_rows_max = 199",
                "ledger.history_scan_rows_max",
            ),
            (
                "history_scan_rows_max = 1000001",
                "ledger.history_scan_rows_max",
            ),
        ] {
            let found = problems(&format!("[ledger]\n{toml}\n"));
            assert!(
                found.first().is_some_and(|p| p.starts_with(key)),
                "{toml}: {found:?}"
            );
        }
    }

    #[test]
    fn client_address_and_trusted_proxies_are_checked() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.server.client_address, ClientAddress::Peer);
        assert!(c.server.trusted_proxies.is_empty());

        let c = Config::from_toml(
            "[server]\nclient_address = \"proxy_protocol\"\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"fd00::/8\", \"::1\"]\n",
        )
        .expect("valid");
        let t = &c.server.trusted_proxies;
        for (ip, trusted) in [
            ("10.200.3.4", true),
            ("::ffff:10.1.1.1", true),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("fd12::5", true),
            ("::1", true),
            ("::2", false),
            ("11.0.0.1", false),
        ] {
            assert_eq!(t.contains(ip.parse().unwrap()), trusted, "{ip}");
        }

        // A mode that needs proxies without any; a typo'd mode; host bits;
        // not an address.
        let err =
            Config::from_toml("[server]\nclient_address = \"x_forwarded_for\"\n").unwrap_err();
        assert!(
            err.problems.join("\n").contains("server.trusted_proxies"),
            "{err}"
        );
        for (bad, says) in [
            ("client_address = \"forwarded\"", "forwarded"),
            (
                "trusted_proxies = [\"10.0.0.1/8\"]",
                "did you mean 10.0.0.0/8",
            ),
            ("trusted_proxies = [\"lb.internal\"]", "not an IP address"),
        ] {
            let err = Config::from_toml(&format!("[server]\n{bad}\n")).unwrap_err();
            assert!(err.problems.join("\n").contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn redis_limits_are_off_by_default_bounded_and_their_password_redacted() {
        let c = Config::from_toml("").unwrap();
        let r = &c.limits.redis;
        assert!(r.url.is_none(), "off unless configured");
        assert_eq!(r.failure_mode, RedisFailureMode::Open);

        let c = Config::from_toml(
            "[limits.redis]\nurl = \"redis://:s3cret@cache:6380/2\"\nfailure_mode = \"closed\"\n",
        )
        .expect("valid");
        assert_eq!(c.limits.redis.failure_mode, RedisFailureMode::Closed);
        let text = format!("{c:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("redis://:***@cache:6380/2"), "{text}");

        for (bad, says) in [
            ("url = \"rediss://cache\"", "limits.redis.url: TLS"),
            (
                "url = \"http://cache\"",
                "limits.redis.url: must start with redis://",
            ),
            ("timeout_ms = 0", "limits.redis.timeout_ms"),
            ("timeout_ms = 5001", "limits.redis.timeout_ms"),
            ("connect_timeout_ms = 0", "limits.redis.connect_timeout_ms"),
            ("backoff_ms = 60001", "limits.redis.backoff_ms"),
            ("key_prefix = \"has space\"", "limits.redis.key_prefix"),
            ("pipeline_max = 0", "limits.redis.pipeline_max"),
            ("failure_mode = \"maybe\"", "maybe"),
        ] {
            let err = Config::from_toml(&format!("[limits.redis]\n{bad}\n")).unwrap_err();
            assert!(err.problems.join("\n").contains(says), "{bad}: {err}");
        }
        let err = Config::from_toml(
            "[server]\nrequest_deadline_ms = 40\n[limits.redis]\ntimeout_ms = 40\n",
        )
        .unwrap_err();
        assert!(
            err.problems
                .join("\n")
                .contains("less than server.request_deadline_ms"),
            "{err}"
        );
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = Config::from_toml(
            "[database]\nurl = \"postgres://u:hunter2@db/x\"\n[auth]\ndev_hs256_secret = \"0123456789abcdef0123456789abcdef-very-secret\"\n",
        )
        .unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("very-secret"), "{text}");
        assert!(text.contains("u:***@db"), "{text}");
    }

    #[test]
    fn switch_list_is_checked() {
        let p = switch_problems(&[
            SwitchConfig {
                name: SwitchName::parse("a").unwrap(),
                url: "http://127.0.0.1:1".into(),
                weight: 1,
            },
            SwitchConfig {
                name: SwitchName::parse("a").unwrap(),
                url: "ftp://x".into(),
                weight: 0,
            },
        ]);
        assert_eq!(p.len(), 3, "{p:?}");
    }
}
