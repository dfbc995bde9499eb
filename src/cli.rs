//! The `switchboard` command line: the one part that knows both the
//! gateway (`serve`, `migrate`, `token`) and the development tools (`demo`,
//! `sim`, `certs`), so that neither needs the other.
//!
//! Exit codes: 0 on success, 64 on bad usage or configuration (as sysexits'
//! `EX_USAGE`), 1 with a one-line reason on any other failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::app::{self, Application};
use crate::config::{Config, ConfigError, Sources};
use crate::devtools::certs::CertPaths;
use crate::devtools::sim::{Mode, Sim, SimOptions, SimTls};
use crate::domain::{ClientId, Role};
use crate::edge::Authenticator;
use crate::ledger::Ledger;

pub const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "A load-balancing transaction gateway"
)]
pub struct Cli {
    /// A TOML file layered over config/default.toml and config/{SWITCHBOARD_ENV}.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve,
    /// Gateway + embedded SQLite ledger + three simulated switches on 127.0.0.1:9001-9003.
    Demo,
    /// Run a simulated switch.
    Sim(SimArgs),
    /// Print a JWT signed with the configured development key.
    ///
    /// The token is signed with auth.dev_hs256_secret (HS256, no kid) and
    /// lives --ttl-s seconds (default auth.token_ttl_s). The gateway checks
    /// exp and nbf with auth.leeway_s of clock leeway (default 60 s), so a
    /// token is still accepted up to that long after it expires.
    Token {
        /// The token's subject (`sub`): the client id the gateway sees,
        /// e.g. the owner of the accounts it may move money out of.
        #[arg(long, value_name = "CLIENT")]
        sub: String,
        /// Comma-separated roles: transact, auditor, operator. Required; pass
        /// --roles '' for a token with no roles.
        #[arg(long, value_name = "R1,R2", value_delimiter = ',')]
        roles: Option<Vec<String>>,
        /// Lifetime in seconds (default: auth.token_ttl_s).
        #[arg(long, value_name = "SECONDS")]
        ttl_s: Option<u64>,
    },
    /// Apply migrations/ to database.url.
    Migrate,
    /// Write a development CA, server and client certificate.
    ///
    /// The server certificate covers localhost, 127.0.0.1 and ::1, plus every
    /// --san; the CA (ca.pem) is what clients trust.
    Certs {
        /// Directory to write ca.pem, server.pem, client.pem and their keys into.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// Another DNS name or IP address for the server certificate, e.g. a
        /// compose service name (repeatable).
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
    },
}

// `switchboard sim`'s options (a plain comment: a doc comment would
// replace the subcommand's help).
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on (plain HTTP unless --tls-cert is given).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// The switch's name: in its answers, `/stats` and logs (the gateway's
    /// [[switches]] name for it, by convention).
    #[arg(long)]
    name: String,
    /// healthy, decline, slow, down, error, flaky or hang-after-receive.
    #[arg(long, default_value = "healthy")]
    mode: String,
    /// Delay added to each transaction's answer in `slow` mode, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    latency_ms: u64,
    /// Share of requests failing in `flaky` mode, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.5)]
    fail_rate: f64,
    /// Remember processed transactions in this file across restarts.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS); needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
    fn other(message: impl std::fmt::Display) -> Self {
        Self {
            code: 1,
            message: message.to_string(),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::usage(e.to_string())
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    load_dotenv();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("switchboard: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// `.env`, or `.env.test` under `SWITCHBOARD_ENV=test`; never overrides the
/// real environment.
fn load_dotenv() {
    let file = match std::env::var("SWITCHBOARD_ENV").as_deref() {
        Ok("test") => ".env.test",
        _ => ".env",
    };
    let _ = dotenvy::from_filename(file);
}

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    let config = Config::load(&Sources::from_process(cli.config.clone()))?;
    crate::app::telemetry::init(&config.log);
    Ok(config)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Serve => serve(&cli).await,
        Command::Demo => {
            let config = load_config(&cli)?;
            crate::devtools::demo::run(config)
                .await
                .map_err(Failure::other)
        }
        Command::Sim(args) => {
            // The sim needs no gateway config, but logging and `--config` are shared.
            load_config(&cli)?;
            sim(args).await
        }
        Command::Token { sub, roles, ttl_s } => {
            let roles = roles.as_deref().ok_or_else(|| {
                Failure::usage(
                    "--roles is required: e.g. --roles transact, or --roles operator,auditor \
                     (roles: transact, auditor, operator); --roles '' makes a token with no roles",
                )
            })?;
            token(&load_config(&cli)?, sub, roles, *ttl_s)
        }
        Command::Migrate => migrate(&load_config(&cli)?).await,
        Command::Certs { dir, force, sans } => certs(dir, *force, sans),
    }
}

/// `switchboard serve`: the gateway until SIGTERM or SIGINT, reloading its
/// config on change.
async fn serve(cli: &Cli) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let sources = Sources::from_process(cli.config.clone());
    let app = Application::build_with_sources(config, Some(sources))
        .await
        .map_err(Failure::other)?;
    let shutdown = app::cancel_on_signal();
    app.run(shutdown).await;
    Ok(())
}

async fn sim(args: &SimArgs) -> Result<(), Failure> {
    let sim = Sim::bind(args.listen, args.options()?)
        .await
        .map_err(Failure::other)?;
    let shutdown = app::cancel_on_signal();
    sim.run(shutdown).await.map_err(Failure::other)
}

impl SimArgs {
    fn options(&self) -> Result<SimOptions, Failure> {
        let mode = self.mode.parse::<Mode>().map_err(Failure::usage)?;
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err(Failure::usage("--fail-rate must be between 0.0 and 1.0"));
        }
        let mut opts = SimOptions::new(self.name.clone());
        opts.mode = mode;
        opts.latency_ms = self.latency_ms;
        opts.fail_rate = self.fail_rate;
        opts.state_file = self.state.clone();
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            opts.tls = Some(SimTls {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.client_ca.clone(),
            });
        }
        Ok(opts)
    }
}

/// `switchboard token`: a JWT signed with the development secret.
fn token(config: &Config, sub: &str, roles: &[String], ttl_s: Option<u64>) -> Result<(), Failure> {
    if config.auth.dev_hs256_secret.is_none() {
        return Err(Failure::usage(
            "auth.dev_hs256_secret is not set: set it in config or SWITCHBOARD__AUTH__DEV_HS256_SECRET",
        ));
    }
    // `--roles ''`: no roles, asked for explicitly.
    let roles: Vec<&str> = roles
        .iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .collect();
    for r in &roles {
        if Role::parse(r).is_none() {
            return Err(Failure::usage(format!(
                "unknown role {r:?}: use transact, auditor or operator"
            )));
        }
    }
    ClientId::parse(sub).map_err(|e| Failure::usage(format!("--sub: {}", e.message)))?;
    let token = Authenticator::new(&config.auth)
        .map_err(|e| Failure::usage(e.to_string()))?
        .sign(sub, &roles, ttl_s.unwrap_or(config.auth.token_ttl_s))
        .map_err(Failure::other)?;
    println!("{token}");
    Ok(())
}

/// `switchboard migrate`.
async fn migrate(config: &Config) -> Result<(), Failure> {
    let ledger = Ledger::connect(&config.database)
        .await
        .map_err(Failure::other)?;
    ledger.migrate().await.map_err(Failure::other)?;
    ledger.close().await;
    println!("migrations applied to {}", config.database.url_redacted());
    Ok(())
}

/// `switchboard certs`.
fn certs(dir: &Path, force: bool, sans: &[String]) -> Result<(), Failure> {
    for san in sans {
        crate::devtools::certs::check_san(san)
            .map_err(|e| Failure::usage(format!("--san: {e}")))?;
    }
    let paths = CertPaths::new(dir);
    if !force && paths.server_cert().exists() {
        return Err(Failure::usage(format!(
            "{} exists; pass --force to replace the certificates",
            paths.server_cert().display()
        )));
    }
    crate::devtools::certs::generate_with(dir, sans).map_err(Failure::other)?;
    println!(
        "wrote a development CA, server and client certificate to {} (server names: {})",
        dir.display(),
        crate::devtools::certs::server_names(sans).join(", ")
    );
    Ok(())
}
