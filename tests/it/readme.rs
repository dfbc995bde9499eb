//! Every `curl` line of README.md, run as written against the real
//! `switchboard demo`.
//!
//! The demo runs as a child process in a fresh temporary directory (so it
//! writes its own `certs/` there) on its fixed ports: 8443, 9090 and
//! 9001-9003. No other test may use them. Each curl command of the README's
//! fenced code blocks (continuation lines joined) runs with `bash -c` in that
//! directory, with `ALICE` and `OPERATOR` set from the demo's `export` lines
//! and `--max-time 10` appended. Each must show its own status code, as a
//! reader sees it: `-w '\n%{http_code}\n'` (the last line) or `-i` (the
//! status line). It must exit 0 and answer the status of the `# → NNN`
//! comment on the line after it (any 2xx without one), and every backticked
//! fragment in that comment must appear in its output (case-insensitively, so
//! header names match over HTTP/2 too).
//!
//! The demo's banner is checked too: amounts in minor units, with what they
//! are worth.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The demo's fixed ports.
const PORTS: [u16; 5] = [8443, 9090, 9001, 9002, 9003];
const READY_URL: &str = "http://127.0.0.1:9090/readyz";
/// How a README curl line prints its status code.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shows {
    /// `-w '\n%{http_code}\n'`: the code is the last line.
    WriteOut,
    /// `-i`: the first line is the status line.
    Headers,
}

impl Shows {
    fn of(command: &str) -> Option<Shows> {
        if command.contains(r"-w '\n%{http_code}\n'") {
            Some(Shows::WriteOut)
        } else if command.split_whitespace().any(|w| w == "-i") {
            Some(Shows::Headers)
        } else {
            None
        }
    }

    /// The status code in `stdout`, where this way of showing it puts it.
    fn status(self, stdout: &str) -> Option<u16> {
        let line = match self {
            Shows::WriteOut => stdout.lines().rev().find(|l| !l.trim().is_empty())?,
            Shows::Headers => stdout
                .lines()
                .find(|l| l.starts_with("HTTP/"))?
                .split_whitespace()
                .nth(1)?,
        };
        line.trim().parse().ok().filter(|_| line.trim().len() == 3)
    }
}

/// The demo process; killed (and reaped) when dropped, panics included.
struct Demo {
    child: Child,
    log: PathBuf,
}

impl Demo {
    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One curl command of the README.
#[derive(Debug)]
struct Example {
    /// 1-based line of README.md where it starts.
    line: usize,
    command: String,
    /// The expected status, from `# → NNN`.
    status: Option<u16>,
    /// Backticked fragments of that comment: must appear in the output.
    fragments: Vec<String>,
}

/// The curl commands in README.md's fenced code blocks.
fn examples(readme: &str) -> Vec<Example> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut fenced = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            i += 1;
            continue;
        }
        if !fenced || !line.trim_start().starts_with("curl ") {
            i += 1;
            continue;
        }
        let start = i;
        let mut command = String::new();
        loop {
            let part = lines[i].trim();
            match part.strip_suffix('\\') {
                Some(head) if i + 1 < lines.len() => {
                    command.push_str(head.trim_end());
                    command.push(' ');
                    i += 1;
                }
                _ => {
                    command.push_str(part);
                    i += 1;
                    break;
                }
            }
        }
        let comment = lines
            .get(i)
            .map(|l| l.trim())
            .and_then(|l| l.strip_prefix("# →").or_else(|| l.strip_prefix("# ->")));
        let status = comment.map(|c| {
            c.split(|ch: char| !ch.is_ascii_digit())
                .find(|s| !s.is_empty())
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or_else(|| {
                    panic!("README.md:{}: `# →` must be followed by a status", i + 1)
                })
        });
        let fragments = comment
            .map(|c| c.split('`').skip(1).step_by(2).map(str::to_owned).collect())
            .unwrap_or_default();
        out.push(Example {
            line: start + 1,
            command,
            status,
            fragments,
        });
    }
    out
}

/// Shell operators outside quotes: a README curl line must be one command,
/// or the appended options would go to the wrong one.
fn shell_operator(command: &str) -> Option<char> {
    let (mut single, mut double) = (false, false);
    for c in command.chars() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '|' | ';' | '&' | '>' | '<' | '#' | '`' if !single && !double => return Some(c),
            _ => {}
        }
    }
    None
}

fn ports_free() {
    for port in PORTS {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            panic!(
                "port {port} is taken ({e}): this test runs `switchboard demo`, which needs \
                 127.0.0.1 ports {PORTS:?}; stop whatever holds it (a demo left running?)"
            );
        }
    }
}

/// Starts the demo in `dir`; returns it, the value of each `export NAME=`,
/// and the banner's `Accounts` line.
fn start_demo(dir: &Path) -> (Demo, String, String, String) {
    let log = dir.join("demo.log");
    let stderr = std::fs::File::create(&log).expect("demo log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.arg("demo")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    // The demo's defaults, not the test environment's.
    for (key, _) in std::env::vars() {
        if key.starts_with("SWITCHBOARD") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd.spawn().expect("start switchboard demo");
    let stdout = child.stdout.take().expect("demo stdout");
    let demo = Demo { child, log };

    // Read stdout on a thread (and keep draining it, so the demo never
    // blocks on a full pipe); hand the lines over until both exports came.
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut alice, mut operator, mut accounts) = (None, None, None);
    while alice.is_none() || operator.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(v) = line.trim().strip_prefix("Accounts") {
                    accounts = Some(v.trim_start_matches([' ', ':']).to_owned());
                }
                if let Some(v) = line.trim().strip_prefix("export ALICE=") {
                    alice = Some(v.trim().to_owned());
                }
                if let Some(v) = line.trim().strip_prefix("export OPERATOR=") {
                    operator = Some(v.trim().to_owned());
                }
            }
            Err(_) => panic!(
                "the demo printed no `export ALICE=` and `export OPERATOR=` lines within 60 s; \
                 its log:\n{}",
                demo.log()
            ),
        }
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});
    (
        demo,
        alice.unwrap_or_default(),
        operator.unwrap_or_default(),
        accounts.unwrap_or_default(),
    )
}

async fn wait_ready(demo: &mut Demo) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if reqwest::get(READY_URL)
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        let exited = demo.child.try_wait().ok().flatten();
        if exited.is_some() || tokio::time::Instant::now() > deadline {
            panic!(
                "the demo is not ready at {READY_URL} (exit: {exited:?}); its log:\n{}",
                demo.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_curl_line_in_the_readme_works_against_the_demo() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let examples = examples(&readme);
    assert!(
        !examples.is_empty(),
        "README.md has no curl line in a fenced code block"
    );
    for ex in &examples {
        if let Some(op) = shell_operator(&ex.command) {
            panic!(
                "README.md:{}: a curl line must be a single command (found {op:?} outside quotes): {}",
                ex.line, ex.command
            );
        }
        assert!(
            Shows::of(&ex.command).is_some(),
            "README.md:{}: a curl line must show its status code to the reader \
             (-w '\\n%{{http_code}}\\n' or -i): {}",
            ex.line,
            ex.command
        );
    }

    ports_free();
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut demo, alice, operator, accounts) = start_demo(dir.path());
    assert_eq!(
        accounts,
        "alice-eur: owner alice, 10000 minor units (100.00 EUR); \
         bob-eur: owner bob, 500 minor units (5.00 EUR)",
        "the demo banner's accounts"
    );
    wait_ready(&mut demo).await;

    for (n, ex) in examples.iter().enumerate() {
        let shows = Shows::of(&ex.command).expect("checked above");
        let script = format!("{} --max-time 10", ex.command);
        let out = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .env("ALICE", &alice)
            .env("OPERATOR", &operator)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run bash");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let context = || {
            format!(
                "README.md:{} (curl line {} of {}):\n  {}\nexit: {}\nstdout:\n{stdout}\nstderr:\n{stderr}\ndemo log (tail):\n{}",
                ex.line,
                n + 1,
                examples.len(),
                ex.command,
                out.status,
                demo.log()
            )
        };
        assert!(out.status.success(), "curl failed: {}", context());
        let status = shows
            .status(&stdout)
            .unwrap_or_else(|| panic!("no HTTP status where {shows:?} shows it: {}", context()));
        match ex.status {
            Some(expected) => assert_eq!(
                status,
                expected,
                "the README says {expected}: {}",
                context()
            ),
            None => assert!(
                (200..300).contains(&status),
                "no `# →` comment, so a 2xx is expected: {}",
                context()
            ),
        }
        let lower = stdout.to_lowercase();
        for fragment in &ex.fragments {
            assert!(
                lower.contains(&fragment.to_lowercase()),
                "the README promises `{fragment}` in the output: {}",
                context()
            );
        }
    }
    eprintln!(
        "ran {} curl lines of README.md against the demo",
        examples.len()
    );
}
