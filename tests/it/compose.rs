//! The Docker files against the code, without a Docker engine:
//! `docker-compose.yml` (interpolated from `.env`), `docker-compose-test.yaml`
//! (from `.env.test`), the `Dockerfile` and `ops/prometheus.yml`.
//!
//! - every `${VAR}` a compose file uses is defined in its env file;
//! - every `SWITCHBOARD__*` variable a service sets is a key the gateway reads
//!   (`Config::load` takes it, alone and with the service's other variables
//!   and `--config` file), and the whole configuration of each service is valid;
//! - the gateway listens on all interfaces and publishes or exposes exactly
//!   its configured ports; the Dockerfile's `EXPOSE` and `HEALTHCHECK` agree;
//! - the gateway's `[[switches]]` are the simulated switches of the stack;
//! - everything mounted or built from the repository exists, except the
//!   generated development certificates `certs/*.pem` and `certs/*.key`
//!   (`switchboard certs` writes them; `certs/` itself must exist);
//! - services that use the database wait until it is healthy;
//! - Prometheus scrapes the gateway's ops listener;
//! - `docker-compose config` accepts both files. docker-compose must be
//!   installed (scripts/test.sh installs it): without it the test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde_norway::Value;
use switchboard::config::{Config, Sources};

/// Each compose file with the env file its `${VAR}`s come from.
const FILES: [(&str, &str); 2] = [
    ("docker-compose.yml", ".env"),
    ("docker-compose-test.yaml", ".env.test"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Fails with every problem found, one per line.
fn assert_none(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

// --- env files and interpolation ---------------------------------------------------

/// A dotenv file as compose reads it: `KEY=value` lines (optionally
/// `export KEY=value`), `#` comments, surrounding quotes dropped.
fn read_env_file(rel: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in read(rel).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            &value[1..value.len() - 1]
        } else {
            value.split(" #").next().unwrap_or(value).trim_end()
        };
        vars.insert(key.trim().to_owned(), value.to_owned());
    }
    vars
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Compose interpolation of one string: `$$`, `$NAME`, `${NAME}` and
/// `${NAME<op>word}` with op `:-` `-` `:?` `?` `:+` `+`. Every name used is
/// recorded; one the env file does not define is a problem, default or not.
struct Interpolator<'a> {
    env: &'a BTreeMap<String, String>,
    env_file: &'a str,
    used: BTreeSet<String>,
    problems: Vec<String>,
}

impl Interpolator<'_> {
    fn lookup(&mut self, name: &str, op: &str, at: &str) -> String {
        self.used.insert(name.to_owned());
        let value = self.env.get(name);
        if value.is_none() {
            self.problems.push(format!(
                "{at}: ${{{name}}} is not defined in {}",
                self.env_file
            ));
        }
        let set = value.is_some();
        let non_empty = value.is_some_and(|v| !v.is_empty());
        let value = value.cloned().unwrap_or_default();
        for (prefix, strict) in [(":-", true), ("-", false)] {
            if let Some(default) = op.strip_prefix(prefix) {
                let present = if strict { non_empty } else { set };
                return if present { value } else { default.to_owned() };
            }
        }
        for (prefix, strict) in [(":+", true), ("+", false)] {
            if let Some(alt) = op.strip_prefix(prefix) {
                let present = if strict { non_empty } else { set };
                return if present {
                    alt.to_owned()
                } else {
                    String::new()
                };
            }
        }
        if op.is_empty() || op.starts_with(":?") || op.starts_with('?') {
            return value;
        }
        self.problems
            .push(format!("{at}: unsupported interpolation ${{{name}{op}}}"));
        value
    }

    fn string(&mut self, s: &str, at: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('$') {
                out.push('$');
                rest = r;
            } else if let Some(r) = rest.strip_prefix('{') {
                let Some(end) = r.find('}') else {
                    self.problems
                        .push(format!("{at}: unterminated ${{ in {s:?}"));
                    return out;
                };
                let expr = &r[..end];
                rest = &r[end + 1..];
                let len = expr.find(|c| !is_name_char(c)).unwrap_or(expr.len());
                let (name, op) = expr.split_at(len);
                if name.is_empty() || op.contains('$') {
                    self.problems
                        .push(format!("{at}: unsupported interpolation ${{{expr}}}"));
                    continue;
                }
                let value = self.lookup(name, op, at);
                out.push_str(&value);
            } else {
                let len = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
                if len == 0 {
                    self.problems.push(format!(
                        "{at}: a lone $ in {s:?} (write $$ for a literal $)"
                    ));
                    out.push('$');
                    continue;
                }
                let (name, r) = rest.split_at(len);
                rest = r;
                let value = self.lookup(name, "", at);
                out.push_str(&value);
            }
        }
        out.push_str(rest);
        out
    }

    /// Interpolates every string value (not mapping keys), as compose does.
    fn value(&mut self, v: &mut Value, at: &str) {
        match v {
            Value::String(s) => *s = self.string(s, at),
            Value::Sequence(seq) => {
                for (i, item) in seq.iter_mut().enumerate() {
                    self.value(item, &format!("{at}[{i}]"));
                }
            }
            Value::Mapping(map) => {
                for (k, item) in map.iter_mut() {
                    let key = scalar(k).unwrap_or_default();
                    let at = if at.is_empty() {
                        key
                    } else {
                        format!("{at}.{key}")
                    };
                    self.value(item, &at);
                }
            }
            Value::Tagged(t) => self.value(&mut t.value, at),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

/// A string, number or boolean as text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .map(|seq| seq.iter().filter_map(scalar).collect())
        .unwrap_or_default()
}

// --- the Dockerfile ----------------------------------------------------------------

/// One stage of the Dockerfile: its name and instructions (continuation lines
/// joined, comments dropped), upper-cased instruction first.
struct Stage {
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn last(&self, instruction: &str) -> Option<&str> {
        self.instructions
            .iter()
            .rev()
            .find(|(i, _)| i == instruction)
            .map(|(_, args)| args.as_str())
    }
}

fn read_dockerfile(rel: &str) -> Vec<Stage> {
    let text = read(rel);
    let mut stages: Vec<Stage> = Vec::new();
    let mut logical = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            logical.push_str(part);
            logical.push(' ');
            continue;
        }
        logical.push_str(trimmed);
        let full = std::mem::take(&mut logical);
        let full = full.trim();
        if full.is_empty() {
            continue;
        }
        let (instruction, args) = full.split_once(char::is_whitespace).unwrap_or((full, ""));
        let instruction = instruction.to_ascii_uppercase();
        let args = args.trim().to_owned();
        if instruction == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [.., as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                _ => None,
            };
            stages.push(Stage {
                name,
                instructions: Vec::new(),
            });
        }
        if let Some(stage) = stages.last_mut() {
            stage.instructions.push((instruction, args));
        }
    }
    stages
}

/// `["a", "b"]` (exec form) or `a b` (shell form) as words.
fn exec_words(args: &str) -> Vec<String> {
    serde_json::from_str::<Vec<String>>(args)
        .unwrap_or_else(|_| args.split_whitespace().map(str::to_owned).collect())
}

// --- compose files -------------------------------------------------------------------

struct Compose {
    file: &'static str,
    env_file: &'static str,
    /// The interpolated document.
    doc: Value,
    used: BTreeSet<String>,
    interpolation_problems: Vec<String>,
}

impl Compose {
    fn load(file: &'static str, env_file: &'static str) -> Self {
        let mut doc: Value = serde_norway::from_str(&read(file))
            .unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
        doc.apply_merge()
            .unwrap_or_else(|e| panic!("{file}: merge keys: {e}"));
        let env = read_env_file(env_file);
        let mut interpolator = Interpolator {
            env: &env,
            env_file,
            used: BTreeSet::new(),
            problems: Vec::new(),
        };
        interpolator.value(&mut doc, "");
        let used = interpolator.used;
        let interpolation_problems = interpolator
            .problems
            .into_iter()
            .map(|p| format!("{file}: {p}"))
            .collect();
        Self {
            file,
            env_file,
            doc,
            used,
            interpolation_problems,
        }
    }

    fn all() -> Vec<Self> {
        FILES
            .iter()
            .map(|(file, env)| Self::load(file, env))
            .collect()
    }

    fn services(&self) -> Vec<Service<'_>> {
        let services = self
            .doc
            .get("services")
            .and_then(Value::as_mapping)
            .unwrap_or_else(|| panic!("{}: no services", self.file));
        services
            .iter()
            .map(|(name, def)| Service {
                compose: self,
                name: scalar(name).expect("service name"),
                def,
            })
            .collect()
    }

    fn service(&self, name: &str) -> Option<Service<'_>> {
        self.services().into_iter().find(|s| s.name == name)
    }

    fn declared_volumes(&self) -> BTreeSet<String> {
        self.doc
            .get("volumes")
            .and_then(Value::as_mapping)
            .map(|m| m.keys().filter_map(scalar).collect())
            .unwrap_or_default()
    }
}

/// One volume entry of a service.
struct Mount {
    /// Host path (bind mount, as written), volume name, or None (anonymous).
    source: Option<String>,
    target: String,
    bind: bool,
}

struct Service<'a> {
    compose: &'a Compose,
    name: String,
    def: &'a Value,
}

impl Service<'_> {
    fn label(&self) -> String {
        format!("{}: service {}", self.compose.file, self.name)
    }

    /// `environment:` as a mapping or a list of `KEY=value`.
    fn environment(&self) -> Vec<(String, String)> {
        match self.def.get("environment") {
            Some(Value::Mapping(m)) => m
                .iter()
                .map(|(k, v)| (scalar(k).unwrap_or_default(), scalar(v).unwrap_or_default()))
                .collect(),
            Some(Value::Sequence(seq)) => seq
                .iter()
                .filter_map(scalar)
                .map(|item| match item.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (item, String::new()),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The Dockerfile stage this service's image comes from: its own `build`,
    /// or that of another service of the file building the same `image`.
    fn stage(&self) -> Option<(PathBuf, Option<String>)> {
        let build = self.def.get("build").or_else(|| {
            let image = self.def.get("image").and_then(scalar)?;
            self.compose.services().into_iter().find_map(|s| {
                let same = s.def.get("image").and_then(scalar).as_deref() == Some(&image);
                s.def.get("build").filter(|_| same)
            })
        })?;
        let (context, dockerfile, target) = match build {
            Value::String(context) => (context.clone(), "Dockerfile".to_owned(), None),
            other => (
                other
                    .get("context")
                    .and_then(scalar)
                    .unwrap_or_else(|| ".".into()),
                other
                    .get("dockerfile")
                    .and_then(scalar)
                    .unwrap_or_else(|| "Dockerfile".into()),
                other.get("target").and_then(scalar),
            ),
        };
        Some((root().join(context).join(dockerfile), target))
    }

    /// Whether the container runs `switchboard` (our image's entrypoint, not
    /// overridden), and with which arguments.
    fn switchboard_args(&self) -> Option<Vec<String>> {
        let (dockerfile, target) = self.stage()?;
        if !dockerfile.starts_with(root()) || self.def.get("entrypoint").is_some() {
            return None;
        }
        let rel = dockerfile.strip_prefix(root()).ok()?.to_str()?.to_owned();
        let stages = read_dockerfile(&rel);
        let stage = match &target {
            Some(t) => stages.iter().find(|s| s.name.as_deref() == Some(t))?,
            None => stages.last()?,
        };
        let entrypoint = exec_words(stage.last("ENTRYPOINT")?);
        if entrypoint != ["switchboard"] {
            return None;
        }
        Some(match self.def.get("command") {
            Some(Value::Sequence(_)) => strings(self.def.get("command")),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => exec_words(stage.last("CMD").unwrap_or("")),
        })
    }

    /// The subcommand and the `--config` file of switchboard arguments.
    fn subcommand_and_config(args: &[String]) -> (Option<String>, Option<String>) {
        let mut config = None;
        let mut subcommand = None;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg == "--config" {
                config = it.next().cloned();
            } else if let Some(file) = arg.strip_prefix("--config=") {
                config = Some(file.to_owned());
            } else if subcommand.is_none() && !arg.starts_with('-') {
                subcommand = Some(arg.clone());
            }
        }
        (subcommand, config)
    }

    fn mounts(&self) -> Vec<Mount> {
        let Some(seq) = self.def.get("volumes").and_then(Value::as_sequence) else {
            return Vec::new();
        };
        seq.iter()
            .map(|v| match v {
                Value::Mapping(_) => {
                    let kind = v.get("type").and_then(scalar).unwrap_or_default();
                    Mount {
                        source: v.get("source").and_then(scalar),
                        target: v.get("target").and_then(scalar).unwrap_or_default(),
                        bind: kind == "bind",
                    }
                }
                other => {
                    let spec = scalar(other).unwrap_or_default();
                    let parts: Vec<&str> = spec.split(':').collect();
                    match parts.as_slice() {
                        [target] => Mount {
                            source: None,
                            target: (*target).to_owned(),
                            bind: false,
                        },
                        [source, target, ..] => Mount {
                            source: Some((*source).to_owned()),
                            target: (*target).to_owned(),
                            bind: source.starts_with(['.', '/', '~']),
                        },
                        [] => unreachable!("split yields at least one part"),
                    }
                }
            })
            .collect()
    }

    /// The repository path a container path comes from, through a bind mount
    /// of this service (the longest matching target wins).
    fn host_path(&self, container_path: &str) -> Option<PathBuf> {
        let path = Path::new(container_path);
        self.mounts()
            .into_iter()
            .filter(|m| m.bind && path.starts_with(&m.target))
            .max_by_key(|m| m.target.len())
            .and_then(|m| {
                let rest = path.strip_prefix(&m.target).ok()?;
                Some(normalize(&root().join(m.source?)).join(rest))
            })
    }

    fn published_and_exposed_ports(&self, problems: &mut Vec<String>) -> (Vec<u16>, Vec<u16>) {
        let mut published = Vec::new();
        let mut exposed = Vec::new();
        let label = self.label();
        let port = |text: &str, problems: &mut Vec<String>| -> Option<u16> {
            let text = text.split('/').next().unwrap_or(text);
            let last = text.rsplit(':').next().unwrap_or(text);
            match last.parse::<u16>() {
                Ok(p) => Some(p),
                Err(_) => {
                    problems.push(format!(
                        "{label}: cannot read the container port of {text:?}"
                    ));
                    None
                }
            }
        };
        for entry in self
            .def
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let text = match entry {
                Value::Mapping(_) => entry.get("target").and_then(scalar).unwrap_or_default(),
                other => scalar(other).unwrap_or_default(),
            };
            published.extend(port(&text, problems));
        }
        for text in strings(self.def.get("expose")) {
            exposed.extend(port(&text, problems));
        }
        (published, exposed)
    }

    /// `depends_on` as service → condition.
    fn depends_on(&self) -> BTreeMap<String, String> {
        match self.def.get("depends_on") {
            Some(Value::Sequence(seq)) => seq
                .iter()
                .filter_map(scalar)
                .map(|s| (s, "service_started".to_owned()))
                .collect(),
            Some(Value::Mapping(m)) => m
                .iter()
                .map(|(k, v)| {
                    (
                        scalar(k).unwrap_or_default(),
                        v.get("condition")
                            .and_then(scalar)
                            .unwrap_or_else(|| "service_started".into()),
                    )
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    fn has_healthcheck(&self) -> bool {
        match self.def.get("healthcheck") {
            Some(h) => {
                h.get("disable").and_then(Value::as_bool) != Some(true)
                    && strings(h.get("test")).first().map(String::as_str) != Some("NONE")
            }
            // Our image's HEALTHCHECK, when the service runs it as is.
            None => self.switchboard_args().is_some(),
        }
    }
}

/// `a/./b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The sources a service's switchboard process would load its configuration
/// from, less its variables: config/ (copied to /app/config in the image),
/// `SWITCHBOARD_ENV`, and its `--config` file, read from the repository
/// through the service's bind mounts.
fn sources(service: &Service<'_>) -> Result<Sources, String> {
    let args = service.switchboard_args().unwrap_or_default();
    let file = match Service::subcommand_and_config(&args).1 {
        Some(c) => Some(service.host_path(&c).ok_or_else(|| {
            format!(
                "{}: --config {c} is not in a directory mounted from the repository",
                service.label()
            )
        })?),
        None => None,
    };
    let env_name = service
        .environment()
        .into_iter()
        .find(|(k, _)| k == "SWITCHBOARD_ENV")
        .map(|(_, v)| v);
    Ok(Sources {
        config_dir: root().join("config"),
        env_name,
        file,
        env_vars: Vec::new(),
    })
}

fn switchboard_vars(service: &Service<'_>) -> Vec<(String, String)> {
    service
        .environment()
        .into_iter()
        .filter(|(k, _)| k.starts_with("SWITCHBOARD__"))
        .collect()
}

/// Every service running `switchboard serve`, with its loaded configuration.
fn gateways(compose: &Compose) -> Vec<(Service<'_>, Config)> {
    let mut out = Vec::new();
    for service in compose.services() {
        let Some(args) = service.switchboard_args() else {
            continue;
        };
        if Service::subcommand_and_config(&args).0.as_deref() != Some("serve") {
            continue;
        }
        let sources = Sources {
            env_vars: switchboard_vars(&service),
            ..sources(&service).unwrap_or_else(|e| panic!("{e}"))
        };
        let config = Config::load(&sources)
            .unwrap_or_else(|e| panic!("{}: the gateway's configuration: {e}", service.label()));
        out.push((service, config));
    }
    out
}

// --- the tests ---------------------------------------------------------------------------

#[test]
fn every_variable_is_defined_in_its_env_file() {
    let mut problems = Vec::new();
    for compose in Compose::all() {
        problems.extend(compose.interpolation_problems.iter().cloned());
        assert!(
            !compose.used.is_empty(),
            "{}: takes no value from {}; the check would be vacuous",
            compose.file,
            compose.env_file
        );
    }
    assert_none("compose variables", &problems);
}

#[test]
fn switchboard_variables_are_keys_the_gateway_reads() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for compose in Compose::all() {
        for service in compose.services() {
            for (name, _) in service.environment() {
                // SWITCHBOARD_SERVER__LISTEN and the like are silently ignored.
                if name.starts_with("SWITCHBOARD")
                    && name.contains("__")
                    && !name.starts_with("SWITCHBOARD__")
                {
                    problems.push(format!(
                        "{}: {name} looks like a config key but lacks the SWITCHBOARD__ prefix",
                        service.label()
                    ));
                }
            }
            let vars = switchboard_vars(&service);
            if vars.is_empty() {
                continue;
            }
            let base = match sources(&service) {
                Ok(base) => base,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            // Each variable on its own: a key the configuration does not have
            // is refused (deny_unknown_fields, unknown sections).
            for (name, value) in &vars {
                checked += 1;
                let sources = Sources {
                    env_vars: vec![(name.clone(), value.clone())],
                    ..base.clone()
                };
                if let Err(e) = Config::load(&sources) {
                    let unknown: Vec<&String> = e
                        .problems
                        .iter()
                        .filter(|p| p.contains("unknown field") || p.contains("unknown section"))
                        .collect();
                    if !unknown.is_empty() {
                        problems.push(format!(
                            "{}: {name} is not a key the gateway reads: {unknown:?}",
                            service.label()
                        ));
                    }
                }
            }
            // All of them together, with the service's --config file: valid.
            let sources = Sources {
                env_vars: vars,
                ..base
            };
            if let Err(e) = Config::load(&sources) {
                problems.push(format!("{}: {e}", service.label()));
            }
        }
    }
    assert!(checked > 0, "no SWITCHBOARD__ variable in any compose file");
    assert_none("SWITCHBOARD__ variables", &problems);
}

#[test]
fn the_gateway_publishes_and_exposes_its_configured_ports() {
    let mut problems = Vec::new();
    let stages = read_dockerfile("Dockerfile");
    let runtime = stages.last().expect("Dockerfile has stages");
    let exposed_by_image: BTreeSet<u16> = runtime
        .last("EXPOSE")
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|p| p.split('/').next()?.parse().ok())
        .collect();
    let healthcheck = runtime.last("HEALTHCHECK").unwrap_or("").to_owned();
    let mut found = 0;
    for compose in Compose::all() {
        for (service, config) in gateways(&compose) {
            found += 1;
            let label = service.label();
            let listen: SocketAddr = config.server.listen;
            let ops: SocketAddr = config.server.ops_listen;
            let ports = BTreeSet::from([listen.port(), ops.port()]);
            for addr in [listen, ops] {
                if !addr.ip().is_unspecified() {
                    problems.push(format!(
                        "{label}: listens on {addr}, unreachable from outside the container (use 0.0.0.0)"
                    ));
                }
            }
            let (published, exposed) = service.published_and_exposed_ports(&mut problems);
            for port in published.iter().chain(&exposed) {
                if !ports.contains(port) {
                    problems.push(format!(
                        "{label}: container port {port} is none of the gateway's ({listen}, {ops})"
                    ));
                }
            }
            if !published.contains(&listen.port()) {
                problems.push(format!(
                    "{label}: the HTTPS port {} is not published",
                    listen.port()
                ));
            }
            if exposed_by_image != ports {
                problems.push(format!(
                    "{label}: the Dockerfile EXPOSEs {exposed_by_image:?}, the gateway listens on {ports:?}"
                ));
            }
            if service.def.get("healthcheck").is_none()
                && !healthcheck.contains(&format!(":{}/healthz", ops.port()))
            {
                problems.push(format!(
                    "{label}: the Dockerfile HEALTHCHECK ({healthcheck}) does not ask :{}/healthz",
                    ops.port()
                ));
            }
            // TLS files must come from a mount (they are not in the image).
            let workdir = runtime.last("WORKDIR").unwrap_or("/").to_owned();
            for (key, path) in [
                ("server.tls_cert", &config.server.tls_cert),
                ("server.tls_key", &config.server.tls_key),
            ] {
                let path = Path::new(&workdir).join(path);
                if !service
                    .mounts()
                    .iter()
                    .any(|m| m.source.is_some() && path.starts_with(&m.target))
                {
                    problems.push(format!(
                        "{label}: {key} = {} is on no volume of the service",
                        path.display()
                    ));
                }
            }
        }
    }
    assert!(found > 0, "no service runs `switchboard serve`");
    assert_none("gateway ports", &problems);
}

#[test]
fn the_gateway_switches_are_the_simulated_switches_of_the_stack() {
    let compose = Compose::load(FILES[0].0, FILES[0].1);
    let mut problems = Vec::new();
    let gateways = gateways(&compose);
    assert!(!gateways.is_empty(), "{}: no gateway", compose.file);
    for (service, config) in &gateways {
        let label = service.label();
        if config.switches.is_empty() {
            problems.push(format!("{label}: no [[switches]]"));
        }
        for sw in &config.switches {
            let uri: http::Uri = sw.url.parse().expect("validated by Config::load");
            let host = uri.host().unwrap_or_default();
            let port = uri.port_u16().unwrap_or(80);
            let Some(sim) = compose.service(host) else {
                problems.push(format!(
                    "{label}: switch {} at {} is no service of the file",
                    sw.name, sw.url
                ));
                continue;
            };
            let args = sim.switchboard_args().unwrap_or_default();
            let value_of = |flag: &str| {
                args.iter()
                    .position(|a| a == flag)
                    .and_then(|i| args.get(i + 1))
                    .cloned()
            };
            if Service::subcommand_and_config(&args).0.as_deref() != Some("sim") {
                problems.push(format!(
                    "{label}: switch {}: service {host} does not run `switchboard sim`",
                    sw.name
                ));
                continue;
            }
            match value_of("--listen").and_then(|a| a.parse::<SocketAddr>().ok()) {
                Some(addr) if addr.port() == port && addr.ip().is_unspecified() => {}
                other => problems.push(format!(
                    "{label}: switch {} expects port {port}, service {host} listens on {other:?} (want 0.0.0.0:{port})",
                    sw.name
                )),
            }
            if value_of("--name").as_deref() != Some(sw.name.as_str()) {
                problems.push(format!(
                    "{label}: switch {} is named {:?} by service {host}",
                    sw.name,
                    value_of("--name")
                ));
            }
        }
    }
    assert_none("switches", &problems);
}

/// The gateway's certificate covers the name other services reach it by: the
/// `switchboard certs` a service runs (its words parsed by the real command
/// line) names every gateway service with `--san`.
#[test]
fn the_gateway_certificate_covers_its_service_name() {
    use clap::Parser;
    use switchboard::cli::{Cli, Command as Sub};
    let compose = Compose::load(FILES[0].0, FILES[0].1);
    let mut problems = Vec::new();
    let mut sans = Vec::new();
    for service in compose.services() {
        let mut words = strings(service.def.get("entrypoint"));
        words.extend(strings(service.def.get("command")));
        let text = words.join(" ");
        let Some((_, rest)) = text.split_once("switchboard certs") else {
            continue;
        };
        let args = rest
            .split_whitespace()
            .take_while(|w| !matches!(*w, "&&" | "||" | ";"));
        let argv = ["switchboard", "certs"].into_iter().chain(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Sub::Certs { sans: s, .. },
                ..
            }) => sans.extend(s),
            Ok(_) => unreachable!("parsed as certs"),
            Err(e) => problems.push(format!("{}: switchboard certs{rest}: {e}", service.label())),
        }
    }
    if sans.is_empty() && problems.is_empty() {
        problems.push(format!(
            "{}: no service runs `switchboard certs --san`",
            compose.file
        ));
    }
    for (gateway, _) in gateways(&compose) {
        if !sans.contains(&gateway.name) {
            problems.push(format!(
                "{}: its certificate does not cover {:?} (certs --san: {sans:?})",
                gateway.label(),
                gateway.name
            ));
        }
    }
    assert_none("gateway certificate names", &problems);
}

#[test]
fn everything_mounted_or_built_from_the_repository_exists() {
    let mut problems = Vec::new();
    // Generated by `switchboard certs`, git-ignored: may be missing, but the
    // directory they are written to must exist.
    let generated = |rel: &Path| {
        rel.starts_with("certs")
            && matches!(
                rel.extension().and_then(|e| e.to_str()),
                Some("pem" | "key")
            )
    };
    for compose in Compose::all() {
        let declared = compose.declared_volumes();
        for service in compose.services() {
            let label = service.label();
            for m in service.mounts() {
                let Some(source) = m.source else { continue };
                if !m.bind {
                    if !declared.contains(&source) {
                        problems.push(format!(
                            "{label}: volume {source} is not declared under top-level volumes"
                        ));
                    }
                    continue;
                }
                if source.starts_with(['/', '~']) {
                    problems.push(format!(
                        "{label}: {source} is mounted from outside the repository"
                    ));
                    continue;
                }
                let path = normalize(&root().join(&source));
                let Ok(rel) = path.strip_prefix(root()) else {
                    problems.push(format!("{label}: {source} leaves the repository"));
                    continue;
                };
                if path.exists() {
                    continue;
                }
                if generated(rel) {
                    if !root().join("certs").is_dir() {
                        problems.push(format!("{label}: {source}: no certs/ directory"));
                    }
                } else {
                    problems.push(format!("{label}: {source} does not exist"));
                }
            }
            if let Some((dockerfile, target)) = service.stage() {
                if !dockerfile.is_file() {
                    problems.push(format!("{label}: no {}", dockerfile.display()));
                } else if let Some(target) = target {
                    let rel = dockerfile
                        .strip_prefix(root())
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if !read_dockerfile(&rel)
                        .iter()
                        .any(|s| s.name.as_deref() == Some(&target))
                    {
                        problems.push(format!(
                            "{label}: build target {target} is no stage of {rel}"
                        ));
                    }
                }
            }
            for f in strings(service.def.get("env_file")) {
                if !root().join(&f).is_file() {
                    problems.push(format!("{label}: env_file {f} does not exist"));
                }
            }
        }
    }
    // What the Dockerfile copies from the repository.
    for stage in read_dockerfile("Dockerfile") {
        for (instruction, args) in &stage.instructions {
            if instruction != "COPY" || args.contains("--from=") {
                continue;
            }
            let words: Vec<&str> = args.split_whitespace().collect();
            for src in &words[..words.len().saturating_sub(1)] {
                if *src != "." && !root().join(src).exists() {
                    problems.push(format!("Dockerfile: COPY {src}: does not exist"));
                }
            }
        }
    }
    assert_none("mounts and builds", &problems);
}

#[test]
fn services_using_postgres_wait_until_it_is_healthy() {
    let mut problems = Vec::new();
    let mut found = 0;
    for compose in Compose::all() {
        for service in compose.services() {
            for (name, value) in service.environment() {
                let Some(rest) = value
                    .strip_prefix("postgres://")
                    .or_else(|| value.strip_prefix("postgresql://"))
                else {
                    continue;
                };
                let authority = rest.split('/').next().unwrap_or(rest);
                let hostport = authority.rsplit('@').next().unwrap_or(authority);
                let host = hostport.split(':').next().unwrap_or(hostport);
                let Some(db) = compose.service(host) else {
                    problems.push(format!(
                        "{}: {name} points at {host}, no service of the file",
                        service.label()
                    ));
                    continue;
                };
                found += 1;
                if !db.has_healthcheck() {
                    problems.push(format!("{}: no healthcheck", db.label()));
                }
                let condition = service.depends_on().get(host).cloned();
                if condition.as_deref() != Some("service_healthy") {
                    problems.push(format!(
                        "{}: {name} uses {host} but depends_on it with {condition:?}, not service_healthy",
                        service.label()
                    ));
                }
            }
        }
    }
    assert!(
        found >= 2,
        "expected the gateway and the tests to use postgres"
    );
    assert_none("database dependencies", &problems);
}

#[test]
fn prometheus_scrapes_the_gateway_ops_listener() {
    let compose = Compose::load(FILES[0].0, FILES[0].1);
    let gateways = gateways(&compose);
    let prom: Value =
        serde_norway::from_str(&read("ops/prometheus.yml")).expect("ops/prometheus.yml is YAML");
    let mut problems = Vec::new();
    for rule in strings(prom.get("rule_files")) {
        if !root().join("ops").join(&rule).is_file() {
            problems.push(format!(
                "ops/prometheus.yml: rule file ops/{rule} does not exist"
            ));
        }
    }
    let mut scraped = BTreeSet::new();
    for job in prom
        .get("scrape_configs")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let path = job
            .get("metrics_path")
            .and_then(scalar)
            .unwrap_or_else(|| "/metrics".into());
        for sc in job
            .get("static_configs")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            for target in strings(sc.get("targets")) {
                let Some((host, port)) = target.rsplit_once(':') else {
                    continue;
                };
                if let Some((service, config)) = gateways.iter().find(|(s, _)| s.name == host) {
                    let ops = config.server.ops_listen.port().to_string();
                    if port != ops || path != "/metrics" {
                        problems.push(format!(
                            "ops/prometheus.yml: scrapes {target}{path}, the gateway serves metrics on {host}:{ops}/metrics"
                        ));
                    } else {
                        scraped.insert(service.name.clone());
                    }
                }
            }
        }
    }
    for (service, _) in &gateways {
        if !scraped.contains(&service.name) {
            problems.push(format!(
                "ops/prometheus.yml: does not scrape {}",
                service.label()
            ));
        }
    }
    // Mounted where the image reads its configuration, rules beside it.
    let mounted: Vec<(String, String)> = compose
        .services()
        .iter()
        .flat_map(|s| s.mounts())
        .filter_map(|m| {
            Some((
                normalize(Path::new(&m.source?)).display().to_string(),
                m.target,
            ))
        })
        .collect();
    for (source, target) in [
        ("ops/prometheus.yml", "/etc/prometheus/prometheus.yml"),
        ("ops/alerts.yml", "/etc/prometheus/alerts.yml"),
    ] {
        if !mounted.iter().any(|(s, t)| s == source && t == target) {
            problems.push(format!(
                "{}: ./{source} is not mounted at {target}",
                compose.file
            ));
        }
    }
    assert_none("prometheus", &problems);
}

#[test]
fn docker_compose_accepts_both_files() {
    let mut problems = Vec::new();
    for compose in Compose::all() {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(root()).args([
            "-f",
            compose.file,
            "--env-file",
            compose.env_file,
            "config",
            "-q",
        ]);
        // The env file alone must do: the environment would win over it.
        for name in &compose.used {
            cmd.env_remove(name);
        }
        let out = match cmd.output() {
            Ok(out) => out,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "docker-compose is not installed: run scripts/test.sh, which installs it \
                 (Debian package docker-compose), or install it yourself"
            ),
            Err(e) => panic!("running docker-compose: {e}"),
        };
        if !out.status.success() {
            problems.push(format!(
                "docker-compose -f {} --env-file {} config -q: {}\n{}{}",
                compose.file,
                compose.env_file,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert_none("docker-compose config", &problems);
}
