//! Postgres stopped in the middle of a load and started again, under the real
//! gateway process. The shared test server is never touched: the test starts
//! a throwaway cluster of its own (`initdb` + `pg_ctl`, found as
//! scripts/test.sh finds them) on a free port, in a temporary directory that
//! a guard stops and removes however the test ends.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::devtools::sim::SimHandle;
use switchboard::domain::{
    AccountId, Currency, ReleaseReason, SwitchName, TransactionId, TxStatus,
};

use crate::harness::{self, GatewayProcess, eventually};

/// Short deadlines and a fast reconciler (resilience's), so the outage
/// shows and heals within seconds.
use crate::resilience::FAST;

const ACCOUNT: &str = "pgr-acct";
const OWNER: &str = "pgr-client";
const OPENING: i64 = 1_000_000;
const CLIENTS: usize = 32;
/// Outage length: Postgres is down this long.
const DOWN_FOR: Duration = Duration::from_secs(2);

// ---- a throwaway cluster ----

/// A Postgres cluster of the test's own, stopped (immediately) and its
/// directory removed on drop.
pub(crate) struct Cluster {
    bin: PathBuf,
    port: u16,
    /// Run the Postgres binaries as the `postgres` OS user (we are root).
    as_postgres: bool,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `initdb` into a fresh temporary directory, then `pg_ctl start`.
    pub(crate) async fn start_new() -> Cluster {
        let bin = pg_bin().unwrap_or_else(|| {
            panic!(
                "no initdb/pg_ctl/postgres on PATH or under /usr/lib/postgresql/*/bin: \
                 install PostgreSQL (Debian/Ubuntu: apt-get install postgresql) \
                 or run scripts/test.sh, which installs it as root"
            )
        });
        let as_postgres = is_root();
        // Under /tmp, not TMPDIR: the postgres user must reach it.
        let dir = tempfile::Builder::new()
            .prefix("switchboard-pg-restart.")
            .tempdir_in("/tmp")
            .expect("temp dir for the cluster");
        if as_postgres {
            let out = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .output()
                .expect("run chown");
            assert!(
                out.status.success(),
                "chown postgres: {} (initdb refuses to run as root, and there may be no \
                 `postgres` user: create one, or run scripts/test.sh): {}",
                dir.path().display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cluster = Cluster {
            bin,
            port: harness::free_port(),
            as_postgres,
            dir,
        };
        let data = cluster.data();
        let out = cluster.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.start().await;
        cluster
    }

    /// A Postgres binary as the cluster's owner, from `/` (our working
    /// directory need not be readable by it).
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.current_dir("/");
        cmd
    }

    fn run(&self, tool: &str, args: &[&str]) -> std::process::Output {
        self.command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"))
    }

    async fn start(&self) {
        let (data, log, sockets) = (
            self.data(),
            self.dir.path().join("postgres.log"),
            self.dir.path().to_owned(),
        );
        // fsync off is safe here: an immediate stop kills processes, not the
        // kernel, so WAL already written survives. synchronous_commit stays
        // on: off, an acknowledged commit still in WAL buffers would be lost
        // with the processes, and the ledger would rightly forget it.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100 \
             -c fsync=off -c full_page_writes=off",
            self.port,
            sockets.display()
        );
        let mut cmd = tokio::process::Command::from(self.command("pg_ctl"));
        cmd.args([
            "-D",
            path_str(&data),
            "-l",
            path_str(&log),
            "-w",
            "-t",
            "60",
        ])
        .args(["-o", &options, "start"]);
        let out = cmd.output().await.expect("run pg_ctl start");
        if !out.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "pg_ctl start failed: {}\n{}\npostgres.log:\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// `pg_ctl stop -m immediate`: every backend killed, no checkpoint.
    async fn stop_immediate(&self) {
        let data = self.data();
        let mut cmd = tokio::process::Command::from(self.command("pg_ctl"));
        cmd.args(["-D", path_str(&data), "-m", "immediate", "-w", "stop"]);
        let out = cmd.output().await.expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Best effort (it may be stopped already); the TempDir field then
        // removes the directory.
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", path_str(&data), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The directory with `initdb`, `pg_ctl` and `postgres`: beside `initdb` on
/// PATH (symlinks resolved), else the highest /usr/lib/postgresql/*/bin.
fn pg_bin() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|t| dir.join(t).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let (initdb, pg_ctl) = (dir.join("initdb"), dir.join("pg_ctl"));
            if initdb.is_file()
                && pg_ctl.is_file()
                && let Some(real) = std::fs::canonicalize(&initdb)
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_owned))
                    .filter(|d| complete(d))
            {
                return Some(real);
            }
        }
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let bin = entry.path().join("bin");
        let version = entry
            .file_name()
            .to_string_lossy()
            .split('.')
            .next()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        if complete(&bin) && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

// ---- the load ----

/// When a request was sent, relative to the outage.
const BEFORE: u8 = 0;
const DOWN: u8 = 1;
const AFTER: u8 = 2;

#[derive(Debug, Clone)]
struct Sent {
    id: String,
    phase: u8,
    /// Status and error code, or the transport error.
    answer: Result<(u16, String), String>,
}

struct Load {
    client: reqwest::Client,
    url: String,
    token: String,
    stop: AtomicBool,
    phase: AtomicU8,
    next: AtomicU64,
    sent: Mutex<Vec<Sent>>,
}

impl Load {
    fn answered(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    async fn send(&self, id: String) -> Sent {
        let phase = self.phase.load(Ordering::Acquire);
        let body = harness::debit(&id, ACCOUNT, 1);
        let answer = match self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
        {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                        Ok(v) => Ok((status, v["error"]["code"].as_str().unwrap_or("").to_owned())),
                        Err(_) => Err(format!(
                            "status {status}, body not JSON: {}",
                            String::from_utf8_lossy(&bytes)
                        )),
                    },
                    Err(e) => Err(format!("status {status}, body: {e}")),
                }
            }
            Err(e) => Err(format!("transport: {e}")),
        };
        let sent = Sent { id, phase, answer };
        self.sent.lock().unwrap().push(sent.clone());
        sent
    }

    async fn worker(self: Arc<Self>) {
        while !self.stop.load(Ordering::Acquire) {
            let n = self.next.fetch_add(1, Ordering::AcqRel);
            self.send(format!("pgr-{n}")).await;
        }
    }
}

/// What a client may see while the ledger goes away and comes back.
fn acceptable(answer: &Result<(u16, String), String>) -> bool {
    match answer {
        Ok((201 | 202, _)) => true,
        Ok((422, code)) => code == "insufficient_funds",
        // Any 503 with a JSON error body (ledger_unavailable, overloaded, …).
        Ok((503, code)) => !code.is_empty(),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_load_and_restarted_loses_nothing_and_runs_nothing_twice() {
    let started = Instant::now();
    // Declared first, dropped last: the gateway dies before its database.
    let cluster = Cluster::start_new().await;
    let url = cluster.url();
    let sims = harness::spawn_sims(2).await;
    let switches = harness::switch_list(&sims);
    let gw_dir = tempfile::tempdir().expect("gateway dir");
    let mut gw = GatewayProcess::start(gw_dir.path(), &url, FAST, &switches).await;
    let gateway_log =
        || std::fs::read_to_string(gw_dir.path().join("gateway.log")).unwrap_or_default();

    let auth = harness::test_auth();
    let client = harness::https_client();
    gw.account(ACCOUNT, OWNER, "EUR", OPENING).await;

    let load = Arc::new(Load {
        client: client.clone(),
        url: format!("{}/v1/transactions", gw.base()),
        token: auth.sign(OWNER, &["transact"], 600).unwrap(),
        stop: AtomicBool::new(false),
        phase: AtomicU8::new(BEFORE),
        next: AtomicU64::new(0),
        sent: Mutex::new(Vec::new()),
    });
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(load.clone().worker()))
        .collect();
    eventually(Duration::from_secs(60), "load under way", || async {
        load.answered() >= 100
    })
    .await;

    // The outage.
    load.phase.store(DOWN, Ordering::Release);
    cluster.stop_immediate().await;
    let down_at = load.answered();
    tokio::time::sleep(DOWN_FOR).await;
    cluster.start().await;
    load.phase.store(AFTER, Ordering::Release);
    let outage_answers = load.answered() - down_at;

    // Back without a restart: a fresh transaction commits, within a bound.
    let recovered = Instant::now();
    let mut probes = 0;
    eventually(
        Duration::from_secs(30),
        "a fresh transaction commits after Postgres is back",
        || {
            probes += 1;
            let (load, id) = (load.clone(), format!("probe-{probes}"));
            async move { matches!(load.send(id).await.answer, Ok((201, _))) }
        },
    )
    .await;
    let recovery = recovered.elapsed();
    // Keep the load going on the recovered ledger a while.
    let back_at = load.answered();
    eventually(
        Duration::from_secs(60),
        "load after the restart",
        || async { load.answered() >= back_at + 150 },
    )
    .await;
    load.stop.store(true, Ordering::Release);
    for w in workers {
        w.await.expect("load worker");
    }
    assert!(
        gw.child.try_wait().expect("gateway status").is_none(),
        "the gateway process exited; its log:\n{}",
        gateway_log()
    );

    let sent = load.sent.lock().unwrap().clone();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for s in &sent {
        let key = match &s.answer {
            Ok((status, code)) => format!("{status} {code}"),
            Err(e) => format!("error {e}"),
        };
        *tally.entry(key).or_default() += 1;
    }
    let bad: Vec<&Sent> = sent.iter().filter(|s| !acceptable(&s.answer)).collect();
    assert!(
        bad.is_empty(),
        "answers other than 201/202/422 insufficient_funds/503 JSON: {:?} (all: {tally:?})",
        &bad[..bad.len().min(10)]
    );
    let during: Vec<&Sent> = sent.iter().filter(|s| s.phase == DOWN).collect();
    assert!(
        during
            .iter()
            .any(|s| matches!(s.answer, Ok((503 | 202, _)))),
        "the outage showed to no client ({} answers during it): {tally:?}",
        during.len()
    );

    // Everything in flight finishes: the reconciler resolves what the
    // outage left reserved or pending.
    let ledger = harness::ledger_at(&url).await;
    eventually(
        Duration::from_secs(90),
        "no reserved/pending transaction left",
        || async { ledger.count_unfinished().await.is_ok_and(|n| n == 0) },
    )
    .await;

    // The ledger, the clients' answers and the sims agree.
    let mut committed = BTreeSet::new();
    for s in &sent {
        let row = ledger
            .transactions_with_id(&TransactionId::parse(&s.id).unwrap(), 1)
            .await
            .unwrap()
            .pop();
        match (&s.answer, &row) {
            (Ok((201, _)), Some(r)) => assert_eq!(r.status, TxStatus::Committed, "{}", s.id),
            (Ok((201, _)), None) => panic!("{} answered 201 but is not in the ledger", s.id),
            (Ok((422, _)), r) => assert_eq!(
                r.as_ref().map(|r| (r.status, r.reason)),
                Some((TxStatus::Declined, Some(ReleaseReason::InsufficientFunds))),
                "{}",
                s.id
            ),
            _ => {}
        }
        let key = row
            .as_ref()
            .map(|r| r.gateway_ref.as_str())
            .unwrap_or_default();
        let at = approved_at(&sims, key);
        assert!(at.len() <= 1, "{} approved by {} switches", s.id, at.len());
        match row {
            Some(r) if r.status == TxStatus::Committed => {
                assert!(committed.insert(s.id.clone()), "{} sent twice", s.id);
                assert_eq!(at.len(), 1, "{} committed but approved by no switch", s.id);
                let (sim, reference) = &at[0];
                assert_eq!(
                    r.switch.as_ref().map(SwitchName::as_str),
                    Some(sim.as_str()),
                    "{}",
                    s.id
                );
                assert_eq!(r.switch_reference.as_ref(), Some(reference), "{}", s.id);
            }
            Some(r) => {
                assert!(r.status.is_final(), "{}: {r:?}", s.id);
                assert!(
                    at.is_empty(),
                    "{} is {:?} but approved at {at:?}",
                    s.id,
                    r.status
                );
            }
            None => assert!(
                at.is_empty(),
                "{} is not in the ledger but approved at {at:?}",
                s.id
            ),
        }
    }
    let mut approved = 0;
    for sim in &sims {
        let stats = sim.stats().await;
        assert_eq!(stats.duplicates, 0, "{} saw a transaction twice", sim.name);
        approved += stats.approved;
    }
    assert_eq!(
        approved,
        committed.len() as u64,
        "the sims approved exactly the committed transactions"
    );
    let account = ledger
        .account(&AccountId::parse(ACCOUNT).unwrap())
        .await
        .unwrap()
        .expect("the account");
    assert_eq!(
        account.balance,
        OPENING - committed.len() as i64,
        "balance = opening - committed debits of 1"
    );
    let eur = Currency::parse("EUR").unwrap();
    assert_eq!(
        ledger.balance_sum(&eur).await.unwrap(),
        0,
        "money is conserved"
    );
    ledger.close().await;

    gw.kill();
    println!(
        "pg restart: {} requests ({} during the outage), {} committed, recovered in {recovery:?} \
         after restart, {:?} in all; answers: {tally:?}",
        sent.len(),
        outage_answers,
        committed.len(),
        started.elapsed()
    );
}

/// (sim, reference) of each sim that approved the transaction it knows as
/// `key` (its gateway reference).
fn approved_at(sims: &[SimHandle], key: &str) -> Vec<(String, String)> {
    sims.iter()
        .filter_map(|s| {
            let o = s.outcome(key)?;
            (o.status == "approved").then(|| (s.name.clone(), o.reference.unwrap_or_default()))
        })
        .collect()
}
