//! `switchboard demo`: the whole product on one machine with no external
//! services. An in-memory SQLite ledger, three simulated switches on
//! 127.0.0.1:9001-9003, demo accounts, development certificates if missing,
//! and a token with ready-to-paste curl lines.

use std::net::SocketAddr;
use std::path::Path;

use secrecy::SecretString;

use crate::app::{self, Application};
use crate::config::{Config, SwitchConfig};
use crate::devtools::certs::CertPaths;
use crate::devtools::sim::{self, SimHandle, SimOptions};
use crate::domain::{AccountId, ClientId, Currency, SwitchName};
use crate::edge::Authenticator;
use crate::ledger::{Ledger, NewAccount};

const SIM_PORTS: [u16; 3] = [9001, 9002, 9003];

pub(crate) async fn run(mut config: Config) -> anyhow::Result<()> {
    let certs = certificates(&mut config)?;
    config.database.url = SecretString::from("sqlite::memory:");
    // No load balancer to drain: Ctrl-C stops at once.
    config.server.shutdown_drain_ms = 0;
    if config.auth.dev_hs256_secret.is_none() {
        let secret: String = (0..48)
            .map(|_| char::from(b'a' + rand::random_range(0..26u8)))
            .collect();
        config.auth.dev_hs256_secret = Some(SecretString::from(secret));
    }
    let sims = start_sims(&mut config).await?;
    let app = Application::build(config.clone()).await?;
    open_accounts(&app.state().ledger).await?;
    print_instructions(&app, &config, &certs)?;
    let shutdown = app::cancel_on_signal();
    app.run(shutdown).await;
    for sim in sims {
        sim.shutdown().await;
    }
    Ok(())
}

/// The configured server certificate, or development ones generated beside
/// where it is configured.
fn certificates(config: &mut Config) -> anyhow::Result<CertPaths> {
    let certs = CertPaths::new(
        config
            .server
            .tls_cert
            .parent()
            .unwrap_or(Path::new("certs")),
    );
    if !config.server.tls_cert.is_file() || !config.server.tls_key.is_file() {
        crate::devtools::certs::generate(&certs.dir)?;
        config.server.tls_cert = certs.server_cert();
        config.server.tls_key = certs.server_key();
        tracing::info!(dir = %certs.dir.display(), "generated development certificates");
    }
    Ok(certs)
}

/// Three simulated switches on [`SIM_PORTS`], as the config's only switches.
async fn start_sims(config: &mut Config) -> anyhow::Result<Vec<SimHandle>> {
    let mut sims = Vec::new();
    config.switches.clear();
    for (i, port) in SIM_PORTS.into_iter().enumerate() {
        let name = format!("sim-{}", i + 1);
        let handle = sim::spawn(
            SocketAddr::from(([127, 0, 0, 1], port)),
            SimOptions::new(&name),
        )
        .await?;
        config.switches.push(SwitchConfig {
            name: SwitchName::parse(&name)?,
            url: handle.url(),
            weight: 1,
        });
        sims.push(handle);
    }
    Ok(sims)
}

/// The demo accounts: id, owner, opening balance in EUR minor units (cents).
const ACCOUNTS: [(&str, &str, i64); 2] = [("alice-eur", "alice", 10_000), ("bob-eur", "bob", 500)];

async fn open_accounts(ledger: &Ledger) -> anyhow::Result<()> {
    let eur = Currency::parse("EUR")?;
    for (id, owner, balance) in ACCOUNTS {
        ledger
            .create_account(&NewAccount {
                id: AccountId::parse(id)?,
                owner: ClientId::parse(owner)?,
                currency: eur.clone(),
                opening_balance: balance,
                spenders: Default::default(),
            })
            .await?;
    }
    Ok(())
}

/// The addresses, tokens and ready-to-paste curl lines.
fn print_instructions(app: &Application, config: &Config, certs: &CertPaths) -> anyhow::Result<()> {
    let auth = Authenticator::new(&config.auth)?;
    let ttl_s = 24 * 3600;
    let alice = auth.sign("alice", &["transact"], ttl_s)?;
    let operator = auth.sign("ops", &["operator", "auditor"], ttl_s)?;
    let base = format!("https://{}", app.https_addr());
    let ca = certs.ca_cert();
    let ca = ca.display();
    println!(
        r#"
Switchboard demo is running. Amounts are integers of minor units (cents).
  HTTPS API : {base}   (trust {ca})
  Ops       : http://{ops}/metrics  /healthz  /readyz
  Switches  : sim-1, sim-2, sim-3 on 127.0.0.1:9001-9003
  Accounts  : {accounts}

export ALICE={alice}
export OPERATOR={operator}

# Each curl prints the status code on its last line.
# Debit 25.00 EUR (2500 minor units) from alice-eur:
curl -sS -w '\n%{{http_code}}\n' --cacert {ca} -H "Authorization: Bearer $ALICE" -H 'Content-Type: application/json' \
  -d '{{"transactionId":"demo-1","type":"debit","accountId":"alice-eur","amount":2500,"currency":"EUR"}}' \
  {base}/v1/transactions

# The same again: replayed, not charged twice (header Idempotent-Replayed: true):
curl -sS -i --cacert {ca} -H "Authorization: Bearer $ALICE" -H 'Content-Type: application/json' \
  -d '{{"transactionId":"demo-1","type":"debit","accountId":"alice-eur","amount":2500,"currency":"EUR"}}' \
  {base}/v1/transactions

# Transfer to bob, then read the balance and the transaction:
curl -sS -w '\n%{{http_code}}\n' --cacert {ca} -H "Authorization: Bearer $ALICE" -H 'Content-Type: application/json' \
  -d '{{"transactionId":"demo-2","type":"transfer","from":"alice-eur","to":"bob-eur","amount":100,"currency":"EUR"}}' \
  {base}/v1/transactions
curl -sS -w '\n%{{http_code}}\n' --cacert {ca} -H "Authorization: Bearer $ALICE" {base}/v1/accounts/alice-eur
curl -sS -w '\n%{{http_code}}\n' --cacert {ca} -H "Authorization: Bearer $ALICE" {base}/v1/transactions/demo-2

# Overdraw: 422 insufficient_funds
curl -sS -w '\n%{{http_code}}\n' --cacert {ca} -H "Authorization: Bearer $ALICE" -H 'Content-Type: application/json' \
  -d '{{"transactionId":"demo-3","type":"debit","accountId":"alice-eur","amount":99999999,"currency":"EUR"}}' \
  {base}/v1/transactions

# Take a switch down and watch traffic go to the others:
curl -sS -w '\n%{{http_code}}\n' -X PUT -d '{{"mode":"down"}}' http://127.0.0.1:9001/faults
curl -sS -w '\n%{{http_code}}\n' --cacert {ca} -H "Authorization: Bearer $OPERATOR" {base}/v1/switches

Ctrl-C stops it.
"#,
        ops = app.ops_addr(),
        accounts = accounts_line(),
    );
    Ok(())
}

/// The banner's accounts, amounts in minor units as the API takes them:
/// `alice-eur: owner alice, 10000 minor units (100.00 EUR); ...`.
fn accounts_line() -> String {
    ACCOUNTS
        .iter()
        .map(|(id, owner, minor)| {
            format!(
                "{id}: owner {owner}, {minor} minor units ({}.{:02} EUR)",
                minor / 100,
                minor % 100
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_banner_shows_minor_units_and_what_they_are_worth() {
        assert_eq!(
            super::accounts_line(),
            "alice-eur: owner alice, 10000 minor units (100.00 EUR); \
             bob-eur: owner bob, 500 minor units (5.00 EUR)"
        );
    }
}
