//! Development certificates: a CA, a server leaf for `localhost`,
//! `127.0.0.1` and `::1` (plus any extra names, `switchboard certs --san`,
//! e.g. a compose service name), and a client leaf for mTLS, all signed by
//! the CA.
//!
//! The server certificate is a leaf, not the CA itself: rustls clients reject
//! a CA used as an end entity (`CaUsedAsEndEntity`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// How long development certificates stay valid.
const VALIDITY_DAYS: i64 = 825;

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";
pub const CLIENT_CERT: &str = "client.pem";
pub const CLIENT_KEY: &str = "client.key";

/// The subject common name of the development client certificate.
pub const CLIENT_COMMON_NAME: &str = "switchboard-dev-client";

/// The paths written by [`generate`].
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub dir: PathBuf,
}

impl CertPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join(SERVER_CERT)
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join(SERVER_KEY)
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join(CLIENT_CERT)
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join(CLIENT_KEY)
    }
    /// True when every file is present.
    pub fn complete(&self) -> bool {
        [
            CA_CERT,
            CA_KEY,
            SERVER_CERT,
            SERVER_KEY,
            CLIENT_CERT,
            CLIENT_KEY,
        ]
        .iter()
        .all(|f| self.dir.join(f).is_file())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The names every development server certificate covers.
const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The server certificate's names: the defaults, then `extra` (deduplicated).
pub fn server_names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = SERVER_NAMES.iter().map(|n| n.to_string()).collect();
    for name in extra {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Whether `san` can name a server: an IP address, or a DNS name (labels of
/// letters, digits and `-`, optionally a leading `*.`).
pub fn check_san(san: &str) -> Result<(), String> {
    if san.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let host = san.strip_prefix("*.").unwrap_or(san);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!(
            "{san:?} is neither an IP address nor a DNS name (letters, digits, '-' and '.')"
        ));
    }
    Ok(())
}

/// Writes a fresh CA, server and client certificate into `dir`.
pub fn generate(dir: &Path) -> Result<CertPaths, CertsError> {
    generate_with(dir, &[])
}

/// Like [`generate`], the server certificate also covering `extra_names`
/// (DNS names or IP addresses, see [`check_san`]).
pub fn generate_with(dir: &Path, extra_names: &[String]) -> Result<CertPaths, CertsError> {
    fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let now = OffsetDateTime::now_utc();
    let not_before = now - Duration::days(1);
    let not_after = now + Duration::days(VALIDITY_DAYS);

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Switchboard development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |names: Vec<String>,
                common_name: &str,
                usage: ExtendedKeyUsagePurpose|
     -> Result<(String, String), CertsError> {
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_pem, server_key) = leaf(
        server_names(extra_names),
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_pem, client_key) = leaf(
        vec![CLIENT_COMMON_NAME.into()],
        CLIENT_COMMON_NAME,
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;

    let paths = CertPaths::new(dir);
    write(&paths.ca_cert(), &ca_cert.pem(), false)?;
    write(&dir.join(CA_KEY), &ca_key_pem, true)?;
    write(&paths.server_cert(), &server_pem, false)?;
    write(&paths.server_key(), &server_key, true)?;
    write(&paths.client_cert(), &client_pem, false)?;
    write(&paths.client_key(), &client_key, true)?;
    Ok(paths)
}

/// Writes atomically (temp file + rename); private keys are readable by the owner only.
fn write(path: &Path, contents: &str, private: bool) -> Result<(), CertsError> {
    let io = |source| CertsError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let _ = private;
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn san_names_are_checked() {
        for ok in [
            "gateway",
            "gateway.internal",
            "*.svc.local",
            "10.0.0.7",
            "::1",
            "a-b",
        ] {
            assert!(check_san(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "x-", "a..b", "with space", "under_score", "é.com"] {
            assert!(check_san(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            server_names(&["gateway".into(), "localhost".into()]),
            ["localhost", "127.0.0.1", "::1", "gateway"]
        );
    }
}
