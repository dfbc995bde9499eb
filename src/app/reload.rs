//! Live configuration: the switch list and the per-request limits (and of
//! the shared limits in Redis everything but the connection) reload on
//! a change of a config file or on SIGHUP, without dropping connections or
//! in-flight transactions.
//!
//! A reload re-reads every layer and validates it whole; an invalid result
//! is rejected with its problems logged, and the running config is kept.
//! Settings fixed at start-up (listen addresses, TLS files, the database, log
//! format, connection-level timeouts) keep their running values; a change to
//! them is logged as needing a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Sources};
use crate::edge::{Authenticator, Limiter};
use crate::metrics::Metrics;
use crate::switches::{BalanceSettings, Switches};

/// File events are coalesced for this long before a reload.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// Pending file events kept; one is enough to trigger a reload.
const EVENTS_MAX: usize = 16;

pub struct Reloader {
    pub sources: Sources,
    pub auth: Arc<ArcSwap<Authenticator>>,
    pub limiter: Arc<Limiter>,
    pub config: Arc<ArcSwap<Config>>,
    pub switches: Arc<Switches>,
    pub metrics: Metrics,
}

impl Reloader {
    /// Re-reads and applies the configuration.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let result = Config::load(&self.sources).and_then(|new| {
            self.check_identities(&new)?;
            // Keys are part of the config: a key file that does not load
            // rejects the whole reload.
            let auth = Authenticator::new(&new.auth).map_err(|e| ConfigError {
                problems: vec![format!("auth: {e}")],
            })?;
            self.auth.store(Arc::new(auth));
            self.limiter.update(&new.limits);
            self.apply(new);
            Ok(())
        });
        match &result {
            Ok(()) => self.metrics.config_reloads.with_label_values(&["ok"]).inc(),
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::warn!(problems = ?e.problems, "configuration rejected; keeping the running one");
            }
        }
        result
    }

    /// A switch is known by its name in the ledger's attempts: the
    /// reconciler asks the switch of that name. Re-pointing a name at another
    /// URL would send its questions to a switch that never saw the
    /// transactions, so it takes a new name.
    fn check_identities(&self, new: &Config) -> Result<(), ConfigError> {
        let old = self.config.load();
        let problems: Vec<String> = new
            .switches
            .iter()
            .filter_map(|n| {
                let o = old.switches.iter().find(|o| o.name == n.name)?;
                (o.url != n.url).then(|| {
                    format!(
                        "switches: {:?} changed its URL; give the new endpoint a new name",
                        n.name
                    )
                })
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    fn apply(&self, mut new: Config) {
        let old = self.config.load_full();
        let fixed_changed = fixed_settings_changed(&old, &new);
        if fixed_changed {
            tracing::warn!(
                "listeners, TLS files, connection limits, client addressing, the database, the ledger's batching and the Redis connection (limits.redis.url, connect_timeout_ms, pipeline_max) change only on restart"
            );
        }
        // Keep what cannot change while running.
        new.server.listen = old.server.listen;
        new.server.ops_listen = old.server.ops_listen;
        new.server.tls_cert = old.server.tls_cert.clone();
        new.server.tls_key = old.server.tls_key.clone();
        new.server.client_ca = old.server.client_ca.clone();
        new.server.connections_max = old.server.connections_max;
        new.server.header_read_timeout_ms = old.server.header_read_timeout_ms;
        new.server.keepalive_idle_timeout_ms = old.server.keepalive_idle_timeout_ms;
        new.server.tls_handshake_timeout_ms = old.server.tls_handshake_timeout_ms;
        new.server.h2_streams_max = old.server.h2_streams_max;
        new.server.linger_bytes_max = old.server.linger_bytes_max;
        new.server.linger_timeout_ms = old.server.linger_timeout_ms;
        new.server.shutdown_drain_ms = old.server.shutdown_drain_ms;
        new.server.shutdown_grace_ms = old.server.shutdown_grace_ms;
        // The accept loop reads PROXY headers by these; the API must agree.
        new.server.client_address = old.server.client_address;
        new.server.trusted_proxies = old.server.trusted_proxies.clone();
        new.database = old.database.clone();
        new.ledger.batch_max = old.ledger.batch_max;
        new.ledger.queue_max = old.ledger.queue_max;
        new.ledger.queue_wait_ms = old.ledger.queue_wait_ms;
        new.ledger.writers = old.ledger.writers;
        new.log = old.log.clone();
        // The shared limits' connection is made at start; the rest of
        // `[limits.redis]` (timeout, failure mode, backoff, key prefix) is
        // read per request and applies at once.
        new.limits.redis.url = old.limits.redis.url.clone();
        new.limits.redis.connect_timeout_ms = old.limits.redis.connect_timeout_ms;
        new.limits.redis.pipeline_max = old.limits.redis.pipeline_max;

        let (added, removed) = self.switches.replace(
            &new.switches,
            new.health.passive_failures_max,
            BalanceSettings::from_config(&new.forwarding),
        );
        for name in &removed {
            let m = &self.metrics;
            for gauge in [
                &m.switch_latency_ewma,
                &m.switch_score,
                &m.switch_success_ratio,
                &m.switch_traffic_share,
            ] {
                let _ = gauge.remove_label_values(&[name.as_str()]);
            }
            let _ = m.switch_up.remove_label_values(&[name.as_str()]);
        }
        tracing::info!(
            ?added,
            ?removed,
            switches = new.switches.len(),
            "configuration reloaded"
        );
        self.config.store(Arc::new(new));
    }

    /// Watches the config files and SIGHUP until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let (tx, mut rx) = mpsc::channel::<()>(EVENTS_MAX);
        let files = self.sources.files();
        let _watcher = match watch(&files, tx) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch config files; SIGHUP still reloads");
                None
            }
        };
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hangup => tracing::info!("SIGHUP: reloading configuration"),
                Some(()) = rx.recv() => {
                    // Editors write in several steps: wait for the last one.
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    tracing::info!("config file changed: reloading");
                }
            }
            let _ = self.reload();
        }
    }
}

/// The symlink through which a Kubernetes ConfigMap or Secret volume shows its
/// files: `NAME -> ..data/NAME`, `..data -> ..<timestamp>/`. An update writes a
/// new `..<timestamp>/` and renames a new `..data` over the old one; `NAME`
/// itself is never touched, so only this name's events say it changed.
const KUBERNETES_DATA_LINK: &str = "..data";

/// Watches the directories of `files` (editors replace files by rename) and
/// sends one `()` per relevant event, dropping events while one is queued. An
/// event is relevant when it names one of the files, or the `..data` link of
/// a Kubernetes volume mounted on one of their directories.
fn watch(files: &[PathBuf], tx: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let names: Vec<PathBuf> = files.to_vec();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !matches!(
            event.kind,
            EventKind::Modify(_) | EventKind::Create(_) | EventKind::Remove(_)
        ) {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            p.file_name().is_some_and(|f| {
                f == KUBERNETES_DATA_LINK || names.iter().any(|n| Some(f) == n.file_name())
            })
        });
        if relevant {
            let _ = tx.try_send(());
        }
    })?;
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| {
            f.parent().map(|p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_owned()
                }
            })
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// Whether `new` changes a setting that is bound at start and keeps its
/// running value until a restart.
fn fixed_settings_changed(old: &Config, new: &Config) -> bool {
    let (o, n) = (&old.server, &new.server);
    n.listen != o.listen
        || n.ops_listen != o.ops_listen
        || n.tls_cert != o.tls_cert
        || n.tls_key != o.tls_key
        || n.client_ca != o.client_ca
        || n.connections_max != o.connections_max
        || n.client_address != o.client_address
        || n.trusted_proxies != o.trusted_proxies
        || !new.database.same_as(&old.database)
        || super::batching(&new.ledger) != super::batching(&old.ledger)
        || !new.limits.redis.same_connection_as(&old.limits.redis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(database: &str) -> Config {
        Config::from_toml_layers(&[database]).expect("a valid config")
    }

    #[test]
    fn a_password_change_alone_is_a_database_change() {
        let old = config("[database]\nurl = \"postgres://app:old-secret@db/ledger\"\n");
        let same = config("[database]\nurl = \"postgres://app:old-secret@db/ledger\"\n");
        let new = config("[database]\nurl = \"postgres://app:new-secret@db/ledger\"\n");
        // Debug output redacts the password: it cannot tell the two apart.
        assert_eq!(format!("{:?}", old.database), format!("{:?}", new.database));
        assert!(!fixed_settings_changed(&old, &same));
        assert!(fixed_settings_changed(&old, &new));
    }

    #[cfg(unix)]
    /// A Kubernetes ConfigMap volume as the kubelet lays it out and updates
    /// it (its atomic writer): the file is a symlink through `..data`, and an
    /// update swaps `..data` by rename without touching the file's own link.
    #[tokio::test]
    async fn a_configmap_update_by_symlink_swap_is_seen() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("temp dir");
        let mount = dir.path();
        std::fs::create_dir(mount.join("..2026_01_01_00_00_00.1")).unwrap();
        std::fs::write(
            mount.join("..2026_01_01_00_00_00.1/gateway.toml"),
            "# one\n",
        )
        .unwrap();
        symlink("..2026_01_01_00_00_00.1", mount.join("..data")).unwrap();
        symlink("..data/gateway.toml", mount.join("gateway.toml")).unwrap();

        let (tx, mut rx) = mpsc::channel(EVENTS_MAX);
        let _watcher = watch(&[mount.join("gateway.toml")], tx).expect("watch");
        tokio::time::sleep(DEBOUNCE).await;
        while rx.try_recv().is_ok() {}

        std::fs::create_dir(mount.join("..2026_01_01_00_00_01.2")).unwrap();
        std::fs::write(
            mount.join("..2026_01_01_00_00_01.2/gateway.toml"),
            "# two\n",
        )
        .unwrap();
        symlink("..2026_01_01_00_00_01.2", mount.join("..data_tmp")).unwrap();
        std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
        std::fs::remove_dir_all(mount.join("..2026_01_01_00_00_00.1")).unwrap();

        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no reload event within 10 s of the ..data swap")
            .expect("watcher alive");
        let now = std::fs::read_to_string(mount.join("gateway.toml")).unwrap();
        assert_eq!(now, "# two\n");
    }

    #[test]
    fn batching_is_fixed_at_start() {
        let old = config("");
        let new = config("[ledger]\nbatch_max = 8\n");
        assert!(fixed_settings_changed(&old, &new));
    }
}
