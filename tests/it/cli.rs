//! The `switchboard` command line as a new user meets it: the real binary,
//! its exit codes, its help, and what it logs.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use clap::CommandFactory;
use switchboard::devtools::sim::Mode;

use crate::harness::{self, GatewayProcess, binary, eventually};

/// The binary with `args`, in `dir`, with the harness's development secret
/// and none of the caller's SWITCHBOARD settings.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env("SWITCHBOARD__AUTH__DEV_HS256_SECRET", harness::SECRET);
    for (key, _) in std::env::vars() {
        if key.starts_with("SWITCHBOARD") {
            cmd.env_remove(key);
        }
    }
    cmd.env("SWITCHBOARD__AUTH__DEV_HS256_SECRET", harness::SECRET);
    cmd.output().expect("run switchboard")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn token_without_roles_is_a_usage_error_that_says_how_to_pass_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_in(dir.path(), &["token", "--sub", "alice"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "no token printed: {}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("--roles is required") && err.contains("--roles transact"),
        "{err}"
    );
    assert!(
        err.contains("--roles ''"),
        "says how to ask for none: {err}"
    );

    // No roles, asked for explicitly: a token with an empty role list.
    let out = run_in(dir.path(), &["token", "--sub", "alice", "--roles", ""]);
    assert!(out.status.success(), "{out:?}");
    let token = text(&out.stdout);
    let who = harness::test_auth()
        .verify(Some(&format!("Bearer {}", token.trim())))
        .expect("the token verifies");
    assert!(who.roles.is_empty(), "{who:?}");

    let out = run_in(
        dir.path(),
        &["token", "--sub", "alice", "--roles", "transact,auditor"],
    );
    assert!(out.status.success(), "{out:?}");
    let who = harness::test_auth()
        .verify(Some(&format!("Bearer {}", text(&out.stdout).trim())))
        .expect("the token verifies");
    assert_eq!(who.roles.len(), 2, "{who:?}");

    let out = run_in(dir.path(), &["token", "--sub", "alice", "--roles", "admin"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[test]
fn every_option_of_every_command_has_help() {
    let cli = switchboard::cli::Cli::command();
    let mut missing = Vec::new();
    let mut check = |cmd: &clap::Command, path: &str| {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
            }
        }
    };
    check(&cli, "switchboard");
    for sub in cli.get_subcommands() {
        assert!(
            sub.get_about().is_some(),
            "switchboard {} has no help",
            sub.get_name()
        );
        check(sub, &format!("switchboard {}", sub.get_name()));
    }
    assert!(missing.is_empty(), "options without help: {missing:?}");

    // As printed by the binary.
    let dir = tempfile::tempdir().expect("temp dir");
    let help = text(&run_in(dir.path(), &["token", "--help"]).stdout);
    assert!(
        help.contains("auth.leeway_s") && help.contains("leeway"),
        "token --help mentions the leeway: {help}"
    );
    let help = text(&run_in(dir.path(), &["sim", "--help"]).stdout);
    for option in ["--listen <ADDR>", "--name <NAME>", "--latency-ms <MS>"] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(option))
            .unwrap_or_else(|| panic!("sim --help lists {option}: {help}"));
        assert!(
            line.trim_end().len() > line.find(option).unwrap() + option.len() + 2,
            "{option} has help text: {line:?}"
        );
    }
}

/// `switchboard certs --san` (repeatable): the server certificate covers the
/// extra names, checked by a real TLS handshake with the binary serving it.
#[tokio::test]
async fn certs_san_adds_names_the_server_certificate_covers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_in(
        dir.path(),
        &[
            "certs",
            "--dir",
            "certs",
            "--san",
            "gateway",
            "--san",
            "gateway.test",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("gateway, gateway.test"),
        "{}",
        text(&out.stdout)
    );
    let bad = run_in(dir.path(), &["certs", "--dir", "c2", "--san", "not a name"]);
    assert_eq!(bad.status.code(), Some(64), "{bad:?}");
    assert!(text(&bad.stderr).contains("--san"), "{bad:?}");

    // A sim serving HTTPS with that certificate.
    let port = harness::free_port();
    let certs = dir.path().join("certs");
    let mut sim = Command::new(binary())
        .args([
            "sim",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--name",
            "san-check",
            "--tls-cert",
            certs.join("server.pem").to_str().unwrap(),
            "--tls-key",
            certs.join("server.key").to_str().unwrap(),
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the sim");
    let ca = std::fs::read(certs.join("ca.pem")).expect("ca.pem");
    let at = SocketAddr::from(([127, 0, 0, 1], port));
    let get = |name: &'static str| {
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("ca")])
            .resolve(name, at)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        async move {
            client
                .get(format!("https://{name}:{port}/health"))
                .send()
                .await
        }
    };
    let mut up = false;
    for _ in 0..100 {
        if get("localhost").await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the sim serves HTTPS for localhost");
    for name in ["gateway", "gateway.test"] {
        let r = get(name).await;
        assert!(r.as_ref().is_ok_and(|r| r.status() == 200), "{name}: {r:?}");
    }
    assert!(
        get("elsewhere.test").await.is_err(),
        "a name not asked for is not covered"
    );
    let _ = sim.kill();
    let _ = sim.wait();
}

/// Start-up says a switch is in rotation; "back in rotation" only after it
/// was out.
#[tokio::test]
async fn a_switch_is_back_in_rotation_only_after_it_was_out() {
    let sims = harness::spawn_sims(1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let gw = GatewayProcess::start(
        dir.path(),
        &db,
        "[health]\ninterval_ms = 100\n",
        &harness::switch_list(&sims),
    )
    .await;
    let log = || std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
    let lines = |what: &'static str| {
        let log = log();
        log.lines()
            .filter(|l| l.contains(what) && l.contains("sim-1"))
            .count()
    };
    eventually(Duration::from_secs(10), "logged as in rotation", || async {
        lines("switch is healthy: in rotation") == 1
    })
    .await;
    assert_eq!(lines("back in rotation"), 0, "it never left:\n{}", log());

    sims[0].set_faults(Mode::Down, None, None);
    eventually(
        Duration::from_secs(10),
        "logged as out of rotation",
        || async { lines("switch is down: out of rotation") == 1 },
    )
    .await;
    sims[0].set_faults(Mode::Healthy, None, None);
    eventually(
        Duration::from_secs(10),
        "logged as back in rotation",
        || async { lines("switch is healthy: back in rotation") == 1 },
    )
    .await;
    assert_eq!(
        lines("switch is healthy: in rotation"),
        1,
        "the first time only:\n{}",
        log()
    );
    drop(gw);
}
