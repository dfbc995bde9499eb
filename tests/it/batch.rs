//! A stress test of the ledger's concurrent path, on both backends, through
//! the public `Ledger` interface only: a few accounts of a few clients, and a
//! seeded random load of debits, credits, transfers both ways, overdraws,
//! concurrent twins (one id and payload submitted by two tasks at once) and
//! exact replays, each fresh reservation then committed through a switch or
//! released. Checked against a model built from the ledger's own stored rows:
//! no customer balance below zero (sampled while the load runs too), money
//! conserved per currency, every id applied at most once, every replay
//! answered with the first final answer, exactly one winner per id.
//!
//! The seed is printed; `SWITCHBOARD_BATCH_SEED=<n>` replays a plan (the
//! interleaving is up to the scheduler).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use switchboard::domain::{
    AccountId, Amount, GatewayRef, Movement, ReleaseReason, TransactionId, TransactionRequest,
    TxKind, TxStatus,
};
use switchboard::edge::RENDER;
use switchboard::ledger::{
    AccountKind, AttemptOutcome, AttemptRecord, Ledger, NewAccount, Reserved, TransactionRecord,
};
use tokio::sync::{Barrier, Semaphore, watch};

use crate::harness::{aid, cid, eur, sw};
use crate::{db, harness};

/// (account, owner, opening balance). Two accounts share a client, so a
/// client's transfers between its own accounts run too.
const ACCOUNTS: [(&str, &str, i64); 4] = [
    ("bt-a1", "bt-client-1", 5_000),
    ("bt-a2", "bt-client-1", 3_000),
    ("bt-b1", "bt-client-2", 4_000),
    ("bt-c1", "bt-client-3", 2_000),
];
const SWITCHES: [&str; 3] = ["sim-1", "sim-2", "sim-3"];
/// More than any customer balance can reach in a run.
const OVERDRAW: i64 = 1_000_000_000_000;
/// Ledger calls in flight at once.
const IN_FLIGHT: usize = 64;
/// Longest a replay waits for the first answer of its id.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_stress_postgres() {
    let (ledger, db) = db::ledger_pg().await;
    // The sampler has its own pool: queued behind the load's, it would
    // hardly ever look.
    let sampler = harness::ledger_at(db.url()).await;
    stress(&ledger, &sampler, 1_500).await;
    sampler.close().await;
    ledger.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_stress_sqlite() {
    let (ledger, dir) = db::ledger_sqlite_file().await;
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let sampler = harness::ledger_at(&url).await;
    stress(&ledger, &sampler, 1_000).await;
    sampler.close().await;
    ledger.close().await;
}

// ---- the plan ----

/// What the task that wins an id's reservation does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Attempt recorded, approved, committed through this switch.
    Commit(&'static str),
    /// Attempt recorded, declined by the switch, released.
    Decline(&'static str),
    /// Never sent: released as failed.
    Fail,
}

#[derive(Debug, Clone)]
struct Op {
    client: &'static str,
    req: TransactionRequest,
    settle: Settle,
    overdraw: bool,
}

/// How a submission relates to the first one of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The only first submission of its id.
    Single,
    /// One of two first submissions of the id, started together.
    Twin,
    /// Sent once the id has a reservation (it may be final by then).
    InFlightReplay,
    /// Sent once the id's first answer is final.
    Replay,
    /// Two replays of a final id, started together.
    ReplayTwin,
}

#[derive(Debug, Clone, Copy)]
struct Job {
    op: usize,
    role: Role,
    /// Two submissions started together (twins) or one.
    pair: bool,
}

fn plan(rng: &mut StdRng, n: usize) -> (Vec<Op>, Vec<Job>) {
    let mut ops = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("op-{i}");
        let (src, _, _) = ACCOUNTS[rng.random_range(0..ACCOUNTS.len())];
        let amount = rng.random_range(1..=300);
        let roll = rng.random_range(0..100);
        let (movement, amount, overdraw) = match roll {
            0..35 => (Movement::Debit { account: aid(src) }, amount, false),
            35..55 => (Movement::Credit { account: aid(src) }, amount, false),
            55..88 => (
                Movement::Transfer {
                    from: aid(src),
                    to: aid(other_account(rng, src)),
                },
                amount,
                false,
            ),
            88..94 => (Movement::Debit { account: aid(src) }, OVERDRAW, true),
            _ => (
                Movement::Transfer {
                    from: aid(src),
                    to: aid(other_account(rng, src)),
                },
                OVERDRAW,
                true,
            ),
        };
        let switch = SWITCHES[rng.random_range(0..SWITCHES.len())];
        let settle = match rng.random_range(0..100) {
            0..70 => Settle::Commit(switch),
            70..90 => Settle::Decline(switch),
            _ => Settle::Fail,
        };
        ops.push(Op {
            client: owner(src),
            req: TransactionRequest {
                id: TransactionId::parse(&id).unwrap(),
                movement,
                amount: Amount::parse("amount", amount, i64::MAX).unwrap(),
                currency: eur(),
                metadata: Some(json!({"op": i, "note": "batch stress"})),
            },
            settle,
            overdraw,
        });
    }

    // Jobs in a rough order: each id's first submission(s) at its own index,
    // replays of it a little later, so they run while the load does.
    let mut keyed: Vec<(usize, Job)> = Vec::new();
    for op in 0..n {
        let twins = rng.random_bool(0.12);
        keyed.push((
            op * 4,
            Job {
                op,
                role: if twins { Role::Twin } else { Role::Single },
                pair: twins,
            },
        ));
        let later = |rng: &mut StdRng| (op + rng.random_range(1..120)) * 4 + 1;
        // Later visits of the same id, each drawn in this order.
        for (p, role, pair) in [
            (0.15, Role::InFlightReplay, false),
            (0.20, Role::Replay, false),
            (0.05, Role::ReplayTwin, true),
        ] {
            if rng.random_bool(p) {
                keyed.push((later(rng), Job { op, role, pair }));
            }
        }
    }
    keyed.sort_by_key(|(key, _)| *key);
    // A little disorder among neighbours.
    for chunk in keyed.chunks_mut(8) {
        chunk.shuffle(rng);
    }
    (ops, keyed.into_iter().map(|(_, job)| job).collect())
}

fn other_account(rng: &mut StdRng, not: &str) -> &'static str {
    loop {
        let (id, _, _) = ACCOUNTS[rng.random_range(0..ACCOUNTS.len())];
        if id != not {
            return id;
        }
    }
}

fn owner(account: &str) -> &'static str {
    ACCOUNTS
        .iter()
        .find(|(id, _, _)| *id == account)
        .map(|(_, owner, _)| *owner)
        .expect("a planned account")
}

// ---- running it ----

/// Where an id is, for the replays that wait on it.
#[derive(Debug, Clone, Default)]
struct Progress {
    reserved: bool,
    last: Option<TransactionRecord>,
}

/// What one submission got.
#[derive(Debug, Clone)]
enum Got {
    /// `Fresh`, then settled: the final row the settling call returned.
    Fresh(TransactionRecord),
    /// `InsufficientFunds`: the stored declined row.
    Insufficient(TransactionRecord),
    /// `Existing`: the stored row as the ledger returned it.
    Existing(TransactionRecord),
}

#[derive(Debug, Clone)]
struct Answer {
    op: usize,
    role: Role,
    got: Got,
}

struct Run {
    ledger: Ledger,
    ops: Vec<Op>,
    progress: Vec<watch::Sender<Progress>>,
    permits: Semaphore,
}

impl Run {
    async fn wait_for(&self, op: usize, role: Role) {
        let mut rx = self.progress[op].subscribe();
        let ready = |p: &Progress| match role {
            Role::InFlightReplay => p.reserved,
            Role::Replay | Role::ReplayTwin => p.last.is_some(),
            Role::Single | Role::Twin => true,
        };
        tokio::time::timeout(WAIT_LIMIT, rx.wait_for(ready))
            .await
            .unwrap_or_else(|_| panic!("op-{op} ({role:?}): its first answer never came"))
            .expect("progress sender lives as long as the run");
    }

    /// One `reserve`, and for the winner of the id its settlement.
    async fn submit(&self, op: usize, role: Role) -> Answer {
        let plan = &self.ops[op];
        let id = &plan.req.id;
        let reserved = self
            .ledger
            .reserve(&cid(plan.client), &plan.req, RENDER)
            .await
            .unwrap_or_else(|e| panic!("reserve {id} ({role:?}): {e}"));
        let got = match reserved {
            Reserved::Fresh(row) => {
                assert_eq!(row.status, TxStatus::Reserved, "{id}: fresh row {row:?}");
                assert_eq!(row.response, None, "{id}: a fresh row has no response");
                assert_eq!(row.fingerprint, plan.req.fingerprint(), "{id}");
                self.progress[op].send_modify(|p| p.reserved = true);
                let last = self.settle(plan, &row.gateway_ref).await;
                self.progress[op].send_modify(|p| p.last = Some(last.clone()));
                Got::Fresh(last)
            }
            Reserved::InsufficientFunds(row) => {
                self.progress[op].send_modify(|p| {
                    p.reserved = true;
                    p.last = Some(row.clone());
                });
                Got::Insufficient(row)
            }
            Reserved::Existing(row) => Got::Existing(row),
        };
        Answer { op, role, got }
    }

    async fn settle(&self, plan: &Op, key: &GatewayRef) -> TransactionRecord {
        let l = &self.ledger;
        let id = &plan.req.id;
        let attempt = |switch: &'static str, outcome: AttemptOutcome| async move {
            let n = l
                .record_attempt(key, &sw(switch))
                .await
                .unwrap_or_else(|e| panic!("record_attempt {id}: {e}"));
            l.finish_attempt(key, n, outcome, None)
                .await
                .unwrap_or_else(|e| panic!("finish_attempt {id}: {e}"));
        };
        let settled = match plan.settle {
            Settle::Commit(switch) => {
                attempt(switch, AttemptOutcome::Approved).await;
                l.commit(key, &sw(switch), &format!("ref-{id}"), RENDER)
                    .await
            }
            Settle::Decline(switch) => {
                attempt(switch, AttemptOutcome::Declined).await;
                l.release(key, ReleaseReason::DeclinedBySwitch, RENDER)
                    .await
            }
            Settle::Fail => {
                l.release(key, ReleaseReason::NoSwitchAvailable, RENDER)
                    .await
            }
        };
        settled.unwrap_or_else(|e| panic!("settle {id} ({:?}): {e}", plan.settle))
    }
}

/// Reads every customer balance and the currency's sum while the load runs:
/// none may be below zero, and the sum (minus what is held) never above it.
async fn sample(ledger: Ledger, done: Arc<AtomicBool>) -> (u64, Vec<String>) {
    let (mut rounds, mut violations) = (0, Vec::new());
    while !done.load(Ordering::Acquire) {
        for (id, _, _) in ACCOUNTS {
            let account = ledger
                .account(&aid(id))
                .await
                .unwrap_or_else(|e| panic!("sample {id}: {e}"))
                .expect("account exists");
            if account.balance < 0 {
                violations.push(format!("{id} at {}", account.balance));
            }
        }
        let sum = ledger
            .balance_sum(&eur())
            .await
            .expect("sample balance_sum");
        if sum > 0 {
            violations.push(format!("EUR balances sum to {sum} > 0 (money made)"));
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (rounds, violations)
}

async fn stress(ledger: &Ledger, sampler_ledger: &Ledger, n: usize) {
    let seed = std::env::var("SWITCHBOARD_BATCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!(
        "batch stress on {}: seed {seed} (rerun with SWITCHBOARD_BATCH_SEED={seed})",
        ledger.backend_name()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let (ops, jobs) = plan(&mut rng, n);

    for (id, owner, opening) in ACCOUNTS {
        ledger
            .create_account(&NewAccount {
                id: aid(id),
                owner: cid(owner),
                currency: eur(),
                opening_balance: opening,
                spenders: Default::default(),
            })
            .await
            .unwrap_or_else(|e| panic!("create {id}: {e}"));
    }

    let run = Arc::new(Run {
        ledger: ledger.clone(),
        progress: (0..ops.len())
            .map(|_| watch::Sender::new(Progress::default()))
            .collect(),
        ops,
        permits: Semaphore::new(IN_FLIGHT),
    });
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample(sampler_ledger.clone(), done.clone()));

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for job in jobs.iter().copied() {
        let run = run.clone();
        tasks.spawn(async move {
            // Wait for the id's progress before taking a permit, so waiting
            // replays never hold up the submissions they wait for.
            run.wait_for(job.op, job.role).await;
            if job.pair {
                let _permits = run.permits.acquire_many(2).await.unwrap();
                let barrier = Arc::new(Barrier::new(2));
                let twins: Vec<_> = (0..2)
                    .map(|_| {
                        let (run, barrier) = (run.clone(), barrier.clone());
                        tokio::spawn(async move {
                            barrier.wait().await;
                            run.submit(job.op, job.role).await
                        })
                    })
                    .collect();
                let mut out = Vec::new();
                for twin in twins {
                    out.push(
                        twin.await
                            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
                    );
                }
                out
            } else {
                let _permit = run.permits.acquire().await.unwrap();
                vec![run.submit(job.op, job.role).await]
            }
        });
    }
    let mut answers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(mut got) => answers.append(&mut got),
            // One failure ends the run (and aborts the rest on drop).
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Release);
    let (rounds, violations) = sampler.await.expect("sampler");
    assert!(
        violations.is_empty(),
        "seed {seed}: seen while running: {violations:?}"
    );
    assert!(
        rounds >= 3,
        "seed {seed}: the sampler ran only {rounds} rounds"
    );

    let checking = Instant::now();
    check(ledger, &run.ops, &answers, seed).await;
    println!(
        "batch stress on {}: {} ops, {} submissions in {elapsed:?}, {rounds} sample rounds, checked in {:?}",
        ledger.backend_name(),
        run.ops.len(),
        answers.len(),
        checking.elapsed()
    );
}

// ---- the model ----

async fn check(l: &Ledger, ops: &[Op], answers: &[Answer], seed: u64) {
    let ctx = |what: &str| format!("seed {seed}: {what}");
    assert_eq!(
        l.count_unfinished().await.unwrap(),
        0,
        "{}",
        ctx("nothing is in flight once every task is done")
    );
    assert_eq!(
        l.balance_sum(&eur()).await.unwrap(),
        0,
        "{}",
        ctx("money is conserved (EUR balances sum to zero)")
    );

    // Every id's stored row and attempts, read a few at a time.
    let stored: Vec<(Option<TransactionRecord>, Vec<AttemptRecord>)> =
        futures_util::stream::iter(ops)
            .map(|op| async move {
                let row = l
                    .transaction(&cid(op.client), &op.req.id)
                    .await
                    .expect("read a transaction");
                let attempts = match &row {
                    Some(row) => l.attempts(&row.gateway_ref).await.expect("read attempts"),
                    None => Vec::new(),
                };
                (row, attempts)
            })
            .buffered(8)
            .collect()
            .await;

    let mut by_op: Vec<Vec<&Answer>> = vec![Vec::new(); ops.len()];
    for a in answers {
        by_op[a.op].push(a);
    }

    // Balances from the stored rows: opening + every committed movement.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (id, _, opening) in ACCOUNTS {
        expected.insert(id.to_owned(), opening);
        *expected
            .entry(AccountId::equity(&eur()).to_string())
            .or_default() -= opening;
    }
    let mut committed_stored = BTreeSet::new();
    let mut committed_by_us = BTreeSet::new();
    let (mut twins, mut replays, mut insufficient, mut natural_insufficient) = (0, 0, 0, 0);

    for (i, plan) in ops.iter().enumerate() {
        let id = &plan.req.id;
        let mine = &by_op[i];
        let (row, attempts) = &stored[i];
        let row = row
            .clone()
            .unwrap_or_else(|| panic!("{}", ctx(&format!("{id} was never stored"))));
        assert_eq!(row.id, *id);
        assert_eq!(
            row.client.as_str(),
            plan.client,
            "{}",
            ctx(&format!("{id} client"))
        );
        assert_eq!(
            row.fingerprint,
            plan.req.fingerprint(),
            "{}",
            ctx(&format!("{id} payload"))
        );
        assert_eq!(row.amount, plan.req.amount, "{id}");
        assert_eq!(row.kind, plan.req.movement.kind(), "{id}");
        assert_eq!(row.source.as_ref(), plan.req.movement.source(), "{id}");
        assert_eq!(
            row.destination.as_ref(),
            plan.req.movement.destination(),
            "{id}"
        );
        assert!(row.status.is_final(), "{}", ctx(&format!("{id}: {row:?}")));
        let mut bare = row.clone();
        bare.response = None;
        assert_eq!(
            row.response,
            Some(RENDER(&bare)),
            "{}",
            ctx(&format!("{id}: the stored response is the row's rendering"))
        );

        // Exactly one submission of the id reserved it (fresh or declined for
        // funds); every other one saw the stored row.
        let winners: Vec<&Answer> = mine
            .iter()
            .copied()
            .filter(|a| !matches!(a.got, Got::Existing(_)))
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "{}",
            ctx(&format!(
                "{id}: {} of {} submissions ({:?}) reserved it",
                winners.len(),
                mine.len(),
                mine.iter().map(|a| a.role).collect::<Vec<_>>()
            ))
        );
        let winner = winners[0];
        assert!(
            matches!(winner.role, Role::Single | Role::Twin),
            "{}",
            ctx(&format!(
                "{id}: a replay ({:?}) reserved it before its first submission",
                winner.role
            ))
        );
        let first_final = match &winner.got {
            Got::Fresh(last) => {
                assert!(
                    !plan.overdraw,
                    "{}",
                    ctx(&format!("{id}: an overdraw of {OVERDRAW} was reserved"))
                );
                let want = match plan.settle {
                    Settle::Commit(_) => TxStatus::Committed,
                    Settle::Decline(_) => TxStatus::Declined,
                    Settle::Fail => TxStatus::Failed,
                };
                assert_eq!(last.status, want, "{}", ctx(&format!("{id}: {last:?}")));
                if let Settle::Commit(switch) = plan.settle {
                    assert_eq!(last.switch, Some(sw(switch)), "{id}");
                    assert_eq!(
                        last.switch_reference.as_deref(),
                        Some(format!("ref-{id}").as_str()),
                        "{id}"
                    );
                    committed_by_us.insert(id.clone());
                }
                last
            }
            Got::Insufficient(declined) => {
                insufficient += 1;
                if !plan.overdraw {
                    natural_insufficient += 1;
                }
                assert_eq!(declined.status, TxStatus::Declined, "{id}");
                assert_eq!(
                    declined.reason,
                    Some(ReleaseReason::InsufficientFunds),
                    "{id}"
                );
                declined
            }
            Got::Existing(_) => unreachable!("filtered out"),
        };
        assert_eq!(
            &row,
            first_final,
            "{}",
            ctx(&format!(
                "{id}: the stored row is the first final answer, untouched since"
            ))
        );

        for a in mine.iter().filter(|a| matches!(a.got, Got::Existing(_))) {
            let Got::Existing(seen) = &a.got else {
                unreachable!()
            };
            match a.role {
                Role::Twin => twins += 1,
                _ => replays += 1,
            }
            assert_eq!(
                (&seen.id, seen.client.as_str(), &seen.fingerprint),
                (id, plan.client, &row.fingerprint),
                "{}",
                ctx(&format!("{id} ({:?}): another row", a.role))
            );
            if seen.status.is_final() || matches!(a.role, Role::Replay | Role::ReplayTwin) {
                // A replay gets the first final answer: the same row, the
                // same stored response.
                assert_eq!(
                    seen.response,
                    first_final.response,
                    "{}",
                    ctx(&format!("{id} ({:?}): replay answered differently", a.role))
                );
                assert_eq!(
                    seen,
                    first_final,
                    "{}",
                    ctx(&format!("{id} ({:?}): replay saw another row", a.role))
                );
            } else {
                // Still in flight when it looked: held, not yet answered.
                assert_eq!(
                    (seen.status, &seen.response),
                    (TxStatus::Reserved, &None),
                    "{}",
                    ctx(&format!("{id} ({:?}): in-flight row", a.role))
                );
            }
        }

        // The attempts the winner recorded, and nothing else.
        match (&winner.got, plan.settle) {
            (Got::Fresh(_), Settle::Commit(switch) | Settle::Decline(switch)) => {
                assert_eq!(attempts.len(), 1, "{}", ctx(&format!("{id}: {attempts:?}")));
                assert_eq!(attempts[0].switch.as_str(), switch, "{id}");
                let want = if row.status == TxStatus::Committed {
                    AttemptOutcome::Approved
                } else {
                    AttemptOutcome::Declined
                };
                assert_eq!(attempts[0].outcome, Some(want), "{id}");
            }
            _ => assert_eq!(attempts, &vec![], "{}", ctx(&format!("{id}: attempts"))),
        }

        if row.status == TxStatus::Committed {
            committed_stored.insert(id.clone());
            let amount = row.amount.minor_units();
            let settlement = |row: &TransactionRecord| {
                AccountId::settlement(row.switch.as_ref().expect("committed via a switch"), &eur())
                    .to_string()
            };
            match row.kind {
                TxKind::Debit => {
                    *expected.entry(acct(&row.source)).or_default() -= amount;
                    *expected.entry(settlement(&row)).or_default() += amount;
                }
                TxKind::Credit => {
                    *expected.entry(acct(&row.destination)).or_default() += amount;
                    *expected.entry(settlement(&row)).or_default() -= amount;
                }
                TxKind::Transfer => {
                    *expected.entry(acct(&row.source)).or_default() -= amount;
                    *expected.entry(acct(&row.destination)).or_default() += amount;
                }
            }
        }
    }

    assert_eq!(
        committed_stored,
        committed_by_us,
        "{}",
        ctx("the committed rows are exactly the reservations the test committed")
    );
    for (account, want) in &expected {
        let got = l
            .account(&aid(account))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{}", ctx(&format!("account {account} missing"))));
        if got.kind == AccountKind::Customer {
            assert!(got.balance >= 0, "{}", ctx(&format!("{account}: {got:?}")));
        }
        assert_eq!(
            got.balance,
            *want,
            "{}",
            ctx(&format!(
                "{account}: balance is opening + committed movements, each once"
            ))
        );
    }
    // Nothing settled through a switch the model does not know of.
    for switch in SWITCHES {
        let id = AccountId::settlement(&sw(switch), &eur());
        if !expected.contains_key(id.as_str()) {
            assert_eq!(
                l.account(&id)
                    .await
                    .unwrap()
                    .map(|a| a.balance)
                    .unwrap_or(0),
                0,
                "{}",
                ctx(&format!("{id}"))
            );
        }
    }

    // The run exercised what it is meant to.
    assert!(!committed_stored.is_empty(), "{}", ctx("nothing committed"));
    assert!(twins > 0, "{}", ctx("no twin lost a race"));
    assert!(replays > 0, "{}", ctx("no replay ran"));
    assert!(insufficient > 0, "{}", ctx("no overdraw was refused"));
    println!(
        "batch stress: {} committed, {insufficient} insufficient ({natural_insufficient} not overdraws), {twins} twins and {replays} replays answered Existing",
        committed_stored.len()
    );
}

// ---- helpers ----

fn acct(id: &Option<AccountId>) -> String {
    id.as_ref().expect("a customer account").to_string()
}
