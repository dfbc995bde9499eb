//! The Kubernetes manifests in `deploy/kubernetes/` against the Kubernetes
//! schemas, a policy checker and the code, offline:
//!
//! - `kubernetes-validate --strict` accepts every manifest for the oldest and
//!   the newest Kubernetes version the manifests claim (schemas bundled in
//!   the package: nothing is fetched);
//! - `checkov` finds nothing, and every check it is told to skip carries a
//!   reason;
//! - the ConfigMap's file, loaded as the Deployment runs the gateway (the
//!   image's `config/`, the Deployment's environment, `--config` at the
//!   mounted path), is a valid configuration; its ports, TLS and key paths
//!   agree with the Deployment's ports, probes, mounts and Secrets, the
//!   Service and the NetworkPolicy; the termination grace period outlasts the
//!   gateway's drain and shutdown grace; the image is pinned to this crate's
//!   version and runs as the Dockerfile's user, locked down.
//!
//! The tools are Python packages that scripts/test.sh installs (into
//! `target/python-tools`) when missing: without them the tests fail, never
//! skip.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;
use switchboard::config::{Config, LogFormat, Sources};

const DIR: &str = "deploy/kubernetes";

/// The Kubernetes versions the manifests are validated for: the oldest they
/// claim (README.md there) and the newest the pinned kubernetes-validate
/// bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

const INSTALL_HINT: &str = "run scripts/test.sh (it installs them into target/python-tools), \
     or install them yourself: python3 -m pip install 'kubernetes-validate>=1.37,<1.38' \
     'checkov>=3.2,<4' (a virtual environment is best: checkov pins old versions of common packages)";

/// What the database URL Secret stands for when the config is loaded here.
const DATABASE_URL_PLACEHOLDER: &str = "postgres://switchboard:secret@postgres.example:5432/ledger";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every manifest file, sorted.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(DIR))
        .unwrap_or_else(|e| panic!("read {DIR}: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {DIR}");
    files
}

/// A Python tool: on PATH, else where scripts/test.sh installs it.
fn tool(name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let local = root().join("target/python-tools/bin").join(name);
    if local.is_file() {
        return local;
    }
    panic!("{name} is not installed (not on PATH, nor in target/python-tools/bin): {INSTALL_HINT}");
}

/// Runs a tool with its output captured; (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; {INSTALL_HINT}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// --- the validators ------------------------------------------------------------

#[test]
fn manifests_match_the_kubernetes_schemas() {
    let validate = tool("kubernetes-validate");
    for version in KUBERNETES_VERSIONS {
        let (ok, text) = run(Command::new(&validate)
            .args(["--strict", "--quiet", "--kubernetes-version", version])
            .args(manifest_files()));
        assert!(
            ok,
            "kubernetes-validate --strict (Kubernetes {version}) rejects {DIR}:\n{text}"
        );
    }
}

#[test]
fn checkov_finds_nothing_in_the_manifests() {
    let checkov = tool("checkov");
    let (ok, text) = run(Command::new(&checkov)
        .args(["--directory", DIR, "--framework", "kubernetes"])
        // Offline: no guidelines or severities from the vendor's API.
        .args(["--skip-download", "--compact", "--quiet"])
        .current_dir(root())
        .env("BC_SKIP_MAPPING", "TRUE"));
    assert!(
        ok,
        "checkov found problems in {DIR} (fix them, or skip the check with a checkov.io/skipN annotation giving the reason, and list it in {DIR}/README.md):\n{text}"
    );
    assert!(
        text.contains("Failed checks: 0"),
        "checkov's summary is not 'Failed checks: 0':\n{text}"
    );
}

#[test]
fn every_skipped_check_says_why_and_is_listed_in_the_readme() {
    let readme = read(&format!("{DIR}/README.md"));
    let mut skips = 0;
    for (file, doc) in documents() {
        let Some(annotations) = doc["metadata"]["annotations"].as_mapping() else {
            continue;
        };
        for (key, value) in annotations {
            let key = key.as_str().unwrap_or_default();
            if !key.starts_with("checkov.io/skip") {
                continue;
            }
            skips += 1;
            let value = value.as_str().unwrap_or_default();
            let (check, reason) = value.split_once('=').unwrap_or((value, ""));
            assert!(
                check.starts_with("CKV") && reason.trim().len() >= 20,
                "{file}: {key} must be CHECK=REASON with a real reason, got {value:?}"
            );
            assert!(
                readme.contains(check),
                "{file} skips {check}, which {DIR}/README.md does not explain"
            );
        }
    }
    assert!(skips > 0, "no checkov skips found: update this test");
}

// --- the manifests against the code ---------------------------------------------

/// Every manifest as (file name, document).
fn documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for path in manifest_files() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("read manifest");
        let doc: Value =
            serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
        docs.push((name, doc));
    }
    docs
}

/// The one document of `kind`.
fn one(docs: &[(String, Value)], kind: &str) -> Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} in {DIR}");
    found[0].clone()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn seq<'a>(v: &'a Value, what: &str) -> &'a [Value] {
    v.as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what}: expected a list, got {v:?}"))
}

/// The mount path of the volume backed by the ConfigMap or Secret `name`
/// (`source`: `configMap` or `secret`), checked not to be a subPath mount.
fn mount_of(pod: &Value, container: &Value, source: &str, name: &str) -> PathBuf {
    let name_key = if source == "secret" {
        "secretName"
    } else {
        "name"
    };
    let volume = seq(&pod["volumes"], "volumes")
        .iter()
        .find(|v| v[source][name_key].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no volume from {source} {name:?}"));
    let volume_name = str_of(&volume["name"], "volume name");
    let mount = seq(&container["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["name"].as_str() == Some(volume_name))
        .unwrap_or_else(|| panic!("volume {volume_name:?} is not mounted"));
    assert!(
        mount["subPath"].is_null(),
        "volume {volume_name:?} is mounted with subPath: the kubelet never updates those"
    );
    assert_eq!(
        mount["readOnly"].as_bool(),
        Some(true),
        "{volume_name:?} is mounted read-write"
    );
    PathBuf::from(str_of(&mount["mountPath"], "mountPath"))
}

/// The container port named `name`.
fn container_port(container: &Value, name: &str) -> u16 {
    let port = seq(&container["ports"], "ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("the container has no port named {name:?}"));
    port["containerPort"].as_u64().expect("containerPort") as u16
}

/// `server.shutdown_drain_ms` where a config layer sets it (the key is
/// newer than these manifests may be), else 0.
fn drain_ms(layers: &[&str]) -> u64 {
    let mut drain = 0;
    for text in layers {
        for line in text.lines() {
            if let Some(v) = line.trim().strip_prefix("shutdown_drain_ms")
                && let Some(n) = v.trim().strip_prefix('=')
            {
                drain = n.trim().parse().expect("shutdown_drain_ms is a number");
            }
        }
    }
    drain
}

#[test]
fn the_configmap_is_a_valid_config_as_the_deployment_runs_the_gateway() {
    let docs = documents();
    let deployment = one(&docs, "Deployment");
    let configmap = one(&docs, "ConfigMap");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = seq(&pod["containers"], "containers");
    assert_eq!(containers.len(), 1, "one container: the gateway");
    let gateway = &containers[0];

    // `switchboard --config PATH serve` (the image's entrypoint is `switchboard`).
    let args: Vec<&str> = seq(&gateway["args"], "args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    assert!(
        args.len() == 3 && args[0] == "--config" && args[2] == "serve",
        "args must be [--config, FILE, serve], got {args:?}"
    );
    let config_path = Path::new(args[1]);
    let cm_name = str_of(&configmap["metadata"]["name"], "ConfigMap name");
    let config_dir = mount_of(pod, gateway, "configMap", cm_name);
    assert_eq!(
        config_path.parent(),
        Some(config_dir.as_path()),
        "--config {} is not in the ConfigMap's mount {}",
        config_path.display(),
        config_dir.display()
    );
    let key = config_path.file_name().unwrap().to_str().unwrap();
    let toml = str_of(&configmap["data"][key], &format!("ConfigMap key {key}"));

    // The environment as the pod has it; a Secret's value is a placeholder.
    let mut env_name = None;
    let mut env_vars = Vec::new();
    let mut from_secret = BTreeMap::new();
    for var in seq(&gateway["env"], "env") {
        let name = str_of(&var["name"], "env name").to_owned();
        let value = if let Some(v) = var["value"].as_str() {
            v.to_owned()
        } else {
            let secret = &var["valueFrom"]["secretKeyRef"];
            let secret_name = str_of(
                &secret["name"],
                &format!("{name}: a value or a secretKeyRef"),
            );
            from_secret.insert(name.clone(), secret_name.to_owned());
            assert_eq!(
                name, "SWITCHBOARD__DATABASE__URL",
                "only the database URL comes from a Secret by env"
            );
            DATABASE_URL_PLACEHOLDER.to_owned()
        };
        if name == "SWITCHBOARD_ENV" {
            env_name = Some(value);
        } else if name.starts_with("SWITCHBOARD__") {
            env_vars.push((name, value));
        } else {
            panic!("unexpected environment variable {name}");
        }
    }
    assert_eq!(env_name.as_deref(), Some("production"), "SWITCHBOARD_ENV");
    assert!(
        from_secret.contains_key("SWITCHBOARD__DATABASE__URL"),
        "the database URL must come from a Secret"
    );

    // Load it as `switchboard` does in the image (WORKDIR /app, config/ copied).
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(key);
    std::fs::write(&file, toml).expect("write the ConfigMap's file");
    let sources = Sources {
        config_dir: root().join("config"),
        env_name,
        file: Some(file),
        env_vars,
    };
    let config = Config::load(&sources).unwrap_or_else(|e| {
        panic!(
            "{DIR}/configmap.yaml's {key} is not a valid gateway config:\n  {}",
            e.problems.join("\n  ")
        )
    });

    // Listeners: all interfaces, on the container's ports.
    let listens: [(&str, SocketAddr); 2] = [
        ("https", config.server.listen),
        ("ops", config.server.ops_listen),
    ];
    for (port_name, addr) in listens {
        assert!(
            addr.ip().is_unspecified(),
            "{port_name} listens on {addr}: not reachable in a pod"
        );
        assert_eq!(
            addr.port(),
            container_port(gateway, port_name),
            "the {port_name} listener and the container port disagree"
        );
    }

    // Probes on the ops listener, plain HTTP.
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &gateway[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert_eq!(get["port"].as_str(), Some("ops"), "{probe} port");
        assert_eq!(get["scheme"].as_str(), Some("HTTP"), "{probe} scheme");
    }
    // /readyz waits up to 2 s for the ledger's SELECT 1.
    assert!(
        gateway["readinessProbe"]["timeoutSeconds"].as_u64() > Some(2),
        "readinessProbe.timeoutSeconds must exceed /readyz's 2 s ledger check"
    );

    // TLS files from the kubernetes.io/tls Secret, keys from the JWT Secret.
    let tls_dir = mount_of(pod, gateway, "secret", "switchboard-tls");
    assert_eq!(
        config.server.tls_cert,
        tls_dir.join("tls.crt"),
        "server.tls_cert"
    );
    assert_eq!(
        config.server.tls_key,
        tls_dir.join("tls.key"),
        "server.tls_key"
    );
    let jwt_dir = mount_of(pod, gateway, "secret", "switchboard-jwt");
    let jwks = config
        .auth
        .jwks_file
        .as_ref()
        .expect("auth.jwks_file is set");
    assert_eq!(
        jwks.parent(),
        Some(jwt_dir.as_path()),
        "auth.jwks_file is not in the JWT Secret's mount"
    );
    for key in &config.auth.keys {
        assert!(
            key.public_key.starts_with(&jwt_dir),
            "auth.keys {:?} is not in the JWT Secret's mount",
            key.kid
        );
    }
    assert!(
        config.auth.dev_hs256_secret.is_none(),
        "no development secret in production"
    );
    assert_eq!(config.log.format, LogFormat::Json, "log.format");
    assert!(
        config.database.url_redacted().starts_with("postgres://"),
        "database.url"
    );
    assert!(!config.switches.is_empty(), "the ConfigMap lists no switch");

    // Termination: longer than the drain plus the shutdown grace.
    let grace_s = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let needed_ms =
        drain_ms(&[&read("config/default.toml"), toml]) + config.server.shutdown_grace_ms;
    assert!(
        grace_s * 1000 > needed_ms,
        "terminationGracePeriodSeconds {grace_s} s does not outlast the drain + server.shutdown_grace_ms ({needed_ms} ms)"
    );

    // The Service: the HTTPS port only, to the container's https port, over TCP.
    let service = one(&docs, "Service");
    let ports = seq(&service["spec"]["ports"], "Service ports");
    assert_eq!(ports.len(), 1, "the Service exposes the HTTPS port only");
    assert_eq!(
        ports[0]["targetPort"].as_str(),
        Some("https"),
        "Service targetPort"
    );
    assert_eq!(
        ports[0]["protocol"].as_str(),
        Some("TCP"),
        "Service protocol"
    );

    // The NetworkPolicy opens both listeners and every switch's port.
    let policy = one(&docs, "NetworkPolicy");
    let open = |direction: &str| -> Vec<u64> {
        seq(&policy["spec"][direction], direction)
            .iter()
            .flat_map(|rule| rule["ports"].as_sequence().cloned().unwrap_or_default())
            .filter_map(|p| p["port"].as_u64())
            .collect()
    };
    for (name, addr) in listens {
        assert!(
            open("ingress").contains(&u64::from(addr.port())),
            "NetworkPolicy ingress does not open the {name} port"
        );
    }
    for switch in &config.switches {
        let uri: http::Uri = switch.url.parse().expect("switch URL");
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        assert!(
            open("egress").contains(&u64::from(port)),
            "NetworkPolicy egress does not open port {port} of switch {:?}",
            switch.name.as_str()
        );
    }
}

#[test]
fn the_deployment_is_pinned_and_locked_down() {
    let docs = documents();
    let deployment = one(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let gateway = &seq(&pod["containers"], "containers")[0];

    let image = str_of(&gateway["image"], "image");
    let (_, tag) = image.rsplit_once(':').expect("the image has a tag");
    assert_eq!(
        tag,
        env!("CARGO_PKG_VERSION"),
        "the image tag must be this release's version (Cargo.toml)"
    );

    // The Dockerfile's user.
    let dockerfile = read("Dockerfile");
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the Dockerfile sets USER");
    let (uid, gid) = user.trim().split_once(':').expect("USER uid:gid");
    for ctx in [&pod["securityContext"], &gateway["securityContext"]] {
        assert_eq!(ctx["runAsNonRoot"].as_bool(), Some(true), "runAsNonRoot");
        assert_eq!(
            ctx["runAsUser"].as_u64().map(|u| u.to_string()).as_deref(),
            Some(uid),
            "runAsUser"
        );
        assert_eq!(
            ctx["runAsGroup"].as_u64().map(|u| u.to_string()).as_deref(),
            Some(gid),
            "runAsGroup"
        );
        assert_eq!(
            ctx["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault"),
            "seccompProfile"
        );
    }
    let ctx = &gateway["securityContext"];
    assert_eq!(
        ctx["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "readOnlyRootFilesystem"
    );
    assert_eq!(
        ctx["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "allowPrivilegeEscalation"
    );
    let drop: Vec<&str> = seq(&ctx["capabilities"]["drop"], "capabilities.drop")
        .iter()
        .map(|c| str_of(c, "capability"))
        .collect();
    assert_eq!(drop, ["ALL"], "capabilities.drop");
    assert!(
        ctx["capabilities"]["add"].is_null(),
        "no capability is added"
    );
    assert_eq!(
        pod["automountServiceAccountToken"].as_bool(),
        Some(false),
        "automountServiceAccountToken"
    );
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                gateway["resources"][kind][resource].is_string(),
                "resources.{kind}.{resource}"
            );
        }
    }

    // Everything in the one namespace namespace.yaml makes.
    let namespace = one(&docs, "Namespace");
    let ns = str_of(&namespace["metadata"]["name"], "namespace");
    for (file, doc) in &docs {
        if doc["kind"].as_str() != Some("Namespace") {
            assert_eq!(
                doc["metadata"]["namespace"].as_str(),
                Some(ns),
                "{file}: namespace"
            );
        }
    }

    // The PodDisruptionBudget, the HPA and the Service select the pods.
    let labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .expect("pod labels")
        .clone();
    let selects = |selector: &Value, what: &str| {
        let selector = selector
            .as_mapping()
            .unwrap_or_else(|| panic!("{what}: no selector"));
        assert!(!selector.is_empty(), "{what}: empty selector");
        for (k, v) in selector {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{what} selects {k:?}={v:?}, which the pods lack"
            );
        }
    };
    selects(&deployment["spec"]["selector"]["matchLabels"], "Deployment");
    selects(
        &one(&docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget",
    );
    selects(&one(&docs, "Service")["spec"]["selector"], "Service");
    selects(
        &one(&docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        "NetworkPolicy",
    );
    let hpa = one(&docs, "HorizontalPodAutoscaler");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(
        target["kind"].as_str(),
        Some("Deployment"),
        "HPA target kind"
    );
    assert_eq!(
        target["name"], deployment["metadata"]["name"],
        "HPA target name"
    );
    assert!(
        deployment["spec"]["replicas"].is_null(),
        "the HPA owns the replica count: no replicas in the Deployment"
    );
    let min = hpa["spec"]["minReplicas"].as_u64().expect("minReplicas");
    let unavailable = one(&docs, "PodDisruptionBudget")["spec"]["maxUnavailable"]
        .as_u64()
        .expect("maxUnavailable");
    assert!(
        min > unavailable,
        "minReplicas {min} must exceed the PodDisruptionBudget's maxUnavailable {unavailable}"
    );
}
