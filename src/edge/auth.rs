//! Bearer-token authentication and roles (RFC 8725, JWT best current practice).
//!
//! Keys come from config only (`[[auth.keys]]` PEM files and `auth.jwks_file`),
//! loaded once by [`Authenticator::new`]; nothing in a token (`jku`, `x5u`,
//! `jwk`) ever makes us fetch or trust a key. Each key is bound to exactly one
//! algorithm (RS256, ES256 or EdDSA), and a token's `alg` must equal the bound
//! algorithm of the key its `kid` names, so `alg: none`, RS/HS confusion and
//! ES/RS swaps cannot verify.
//!
//! The development HS256 secret (`auth.dev_hs256_secret`) verifies only tokens
//! whose header has **no** `kid`: a token naming a `kid` is verified by that
//! key or refused (`unknown_kid`), never by the secret. That keeps the two key
//! spaces apart, and it is what `sign` (the CLI, `demo`, tests) produces.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, KeyAlgorithm, RolesClaim};
use crate::domain::{ClientId, Role};

/// Longest token accepted, bytes: anything larger is refused before parsing.
const TOKEN_BYTES_MAX: usize = 8 * 1024;

/// RSA moduli accepted, bytes: RFC 7518 §3.3 asks for at least 2048 bits, and
/// the verifier (aws-lc `RSA_PKCS1_2048_8192_SHA256`) takes at most 8192.
const RSA_MODULUS_BYTES: std::ops::RangeInclusive<usize> = 256..=1024;

/// Who is calling, after a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub client: ClientId,
    pub roles: Vec<Role>,
}

impl Principal {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Why a token was refused, or why the keys could not be loaded. The client
/// sees only `401 unauthorized`; [`AuthError::reason`] goes to metrics and
/// audit logs. No variant carries token bytes or key material.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("token too large")]
    TooLarge,
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("token names an unknown key id")]
    UnknownKid,
    #[error("token algorithm not allowed for its key")]
    Algorithm,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong or missing issuer")]
    Issuer,
    #[error("wrong or missing audience")]
    Audience,
    #[error("token lifetime exceeds auth.token_lifetime_max_s")]
    Lifetime,
    #[error("invalid claims: {0}")]
    Claims(&'static str),
    #[error("no verification key is configured for this token")]
    NoKey,
    /// A configured key could not be loaded (start-up / reload failure).
    #[error("auth key file {file}{}: {problem}", kid.as_deref().map(|k| format!(" (kid {k:?})")).unwrap_or_default())]
    KeyFile {
        file: String,
        kid: Option<String>,
        problem: String,
    },
}

impl AuthError {
    /// A bounded label for metrics and audit logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLarge => "too_large",
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::Algorithm => "algorithm",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Issuer => "issuer",
            AuthError::Audience => "audience",
            AuthError::Lifetime => "lifetime",
            AuthError::Claims(_) => "claims",
            // A key that failed to load is, to a token, a missing key.
            AuthError::NoKey | AuthError::KeyFile { .. } => "no_key",
        }
    }

    fn key_file(file: &Path, kid: Option<&str>, problem: impl Into<String>) -> Self {
        AuthError::KeyFile {
            file: file.display().to_string(),
            kid: kid.map(str::to_owned),
            problem: problem.into(),
        }
    }
}

/// One verification key, bound to exactly one algorithm, with the validation
/// rules for that algorithm precomputed (a `Validation` holds hash sets:
/// building one per request would cost more than the cache saves).
struct VerifyKey {
    alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

struct DevSecret {
    encoding: EncodingKey,
    verify: VerifyKey,
}

struct Inner {
    keys: HashMap<String, VerifyKey>,
    dev: Option<DevSecret>,
    roles_claim: RolesClaim,
    leeway_s: u64,
    lifetime_max_s: Option<u64>,
    issuer: Option<String>,
    audience: Option<String>,
    cache: Option<TokenCache>,
}

/// Verifies bearer tokens. Cheap to clone and share (one `Arc`); rebuilt, with
/// an empty cache, whenever the config is reloaded, so a removed key stops
/// working at once.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Authenticator>();
};

/// The parts of the JOSE header we act on. `jku`, `x5u`, `jwk` are ignored:
/// keys come from config only.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// RFC 7515 §4.1.11: extensions we do not understand must be refused.
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// Claims as raw JSON, so a wrongly typed claim is our `claims` error (401)
/// after the standard checks rather than a decoding failure.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    iat: Option<Value>,
    #[serde(default)]
    roles: Option<Value>,
    #[serde(default)]
    scope: Option<Value>,
}

impl Authenticator {
    /// Loads every configured key now; a bad file is an error naming the file
    /// and kid, which the caller turns into a start-up (or reload) failure.
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthError> {
        let mut base = Validation::new(Algorithm::HS256);
        base.leeway = cfg.leeway_s;
        base.validate_exp = true;
        base.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &cfg.issuer {
            base.set_issuer(&[iss]);
            required.push("iss");
        }
        // Without a configured audience `aud` is not ours to judge (the crate
        // would otherwise refuse every token that carries one).
        base.validate_aud = cfg.audience.is_some();
        if let Some(aud) = &cfg.audience {
            base.set_audience(&[aud]);
            required.push("aud");
        }
        base.set_required_spec_claims(&required);
        let bound = |alg: Algorithm, key: DecodingKey| {
            let mut validation = base.clone();
            validation.algorithms = vec![alg];
            VerifyKey {
                alg,
                key,
                validation,
            }
        };

        let mut keys = HashMap::new();
        for k in &cfg.keys {
            let alg = bound_algorithm(k.algorithm);
            let key = load_pem(&k.public_key, &k.kid, alg)?;
            if keys.insert(k.kid.clone(), bound(alg, key)).is_some() {
                return Err(AuthError::key_file(
                    &k.public_key,
                    Some(&k.kid),
                    "duplicate kid",
                ));
            }
        }
        if let Some(path) = &cfg.jwks_file {
            for (kid, alg, key) in load_jwks(path)? {
                if keys.contains_key(&kid) {
                    return Err(AuthError::key_file(path, Some(&kid), "duplicate kid"));
                }
                keys.insert(kid, bound(alg, key));
            }
        }

        let dev = cfg.dev_hs256_secret.as_ref().map(|s| {
            let bytes = s.expose_secret().as_bytes();
            DevSecret {
                encoding: EncodingKey::from_secret(bytes),
                verify: bound(Algorithm::HS256, DecodingKey::from_secret(bytes)),
            }
        });
        let cache = (cfg.cache_entries_max > 0).then(|| TokenCache::new(cfg.cache_entries_max));
        Ok(Self {
            inner: Arc::new(Inner {
                keys,
                dev,
                roles_claim: cfg.roles_claim,
                leeway_s: cfg.leeway_s,
                lifetime_max_s: cfg.token_lifetime_max_s,
                issuer: cfg.issuer.clone(),
                audience: cfg.audience.clone(),
                cache,
            }),
        })
    }

    /// Verifies an `Authorization` header value, answering from the cache
    /// when this exact token was verified before and has not expired.
    pub fn verify(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let token = bearer(authorization)?;
        let Some(cache) = &self.inner.cache else {
            return self.verify_token(token).map(|(p, _)| p);
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now_s();
        if let Some(p) = cache.get(&digest, now, self.inner.leeway_s) {
            return Ok(p);
        }
        let (principal, exp) = self.verify_token(token)?;
        cache.insert(digest, principal.clone(), exp);
        Ok(principal)
    }

    /// As [`verify`](Self::verify), always checking the signature.
    pub fn verify_uncached(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        self.verify_token(bearer(authorization)?).map(|(p, _)| p)
    }

    /// Verified tokens held in the cache (for a gauge).
    pub fn cache_len(&self) -> usize {
        self.inner.cache.as_ref().map_or(0, TokenCache::len)
    }

    /// Full verification; returns the principal and the token's `exp`.
    fn verify_token(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        let inner = &*self.inner;
        let header = jose_header(token)?;
        let alg = parse_alg(&header.alg)
            .or((header.alg == "HS256").then_some(Algorithm::HS256))
            .ok_or(AuthError::Algorithm)?;
        let key = match header.kid.as_deref() {
            Some(kid) => inner.keys.get(kid).ok_or(AuthError::UnknownKid)?,
            None => &inner.dev.as_ref().ok_or(AuthError::NoKey)?.verify,
        };
        // The one algorithm this key is for; the crate checks it again.
        if alg != key.alg {
            return Err(AuthError::Algorithm);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(from_jwt)?
            .claims;

        let sub = claims.sub.as_ref().and_then(Value::as_str);
        let client = sub
            .and_then(|s| ClientId::parse(s).ok())
            .ok_or(AuthError::Claims("sub must be a valid client id"))?;
        let exp = claims
            .exp
            .as_ref()
            .and_then(numeric_date)
            .ok_or(AuthError::Claims("exp must be a number"))?;
        if let Some(max) = inner.lifetime_max_s {
            let iat = match &claims.iat {
                None => None,
                Some(v) => Some(numeric_date(v).ok_or(AuthError::Claims("iat must be a number"))?),
            };
            // With `iat`, the declared lifetime counts; either way a token may
            // not outlive `max` from now (beyond clock leeway), whatever `iat` says.
            let too_long = match iat {
                Some(iat) => {
                    exp.saturating_sub(iat) > max
                        || exp.saturating_sub(now_s()) > max.saturating_add(inner.leeway_s)
                }
                None => exp.saturating_sub(now_s()) > max,
            };
            if too_long {
                return Err(AuthError::Lifetime);
            }
        }
        let roles = roles(&claims, inner.roles_claim)?;
        Ok((Principal { client, roles }, exp))
    }

    /// Signs a development token (`switchboard token`, tests, `demo`) with the
    /// HS256 secret, carrying the configured issuer and audience and the roles
    /// in the configured claim, so this gateway accepts it.
    pub fn sign(&self, sub: &str, roles: &[&str], ttl_s: u64) -> Result<String, AuthError> {
        let inner = &*self.inner;
        let dev = inner.dev.as_ref().ok_or(AuthError::NoKey)?;
        let now = now_s();
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), sub.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), now.saturating_add(ttl_s).into());
        match inner.roles_claim {
            RolesClaim::Roles => claims.insert("roles".into(), roles.into()),
            RolesClaim::Scope => claims.insert("scope".into(), roles.join(" ").into()),
        };
        if let Some(iss) = &inner.issuer {
            claims.insert("iss".into(), iss.as_str().into());
        }
        if let Some(aud) = &inner.audience {
            claims.insert("aud".into(), aud.as_str().into());
        }
        // HS256 signing fails only with an unusable key.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &dev.encoding)
            .map_err(|_| AuthError::NoKey)
    }
}

/// The token from `Bearer <token>` (scheme case-insensitive, RFC 7235), bounded.
fn bearer(authorization: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization.ok_or(AuthError::Missing)?;
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)?;
    if token.len() > TOKEN_BYTES_MAX {
        return Err(AuthError::TooLarge);
    }
    Ok(token)
}

/// Decodes just the JOSE header (compact JWS: exactly three parts).
fn jose_header(token: &str) -> Result<JoseHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    let header: JoseHeader = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    if header.crit.is_some() {
        return Err(AuthError::Malformed);
    }
    Ok(header)
}

/// The algorithm of a configured key.
fn bound_algorithm(alg: KeyAlgorithm) -> Algorithm {
    match alg {
        KeyAlgorithm::Rs256 => Algorithm::RS256,
        KeyAlgorithm::Es256 => Algorithm::ES256,
        KeyAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

/// The asymmetric algorithms a key may be bound to, by their JOSE name
/// (a token's header, a JWKS entry).
fn parse_alg(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

fn from_jwt(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::Algorithm,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::Issuer,
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "iss" => AuthError::Issuer,
            "aud" => AuthError::Audience,
            "exp" => AuthError::Claims("exp is required"),
            "sub" => AuthError::Claims("sub must be a valid client id"),
            _ => AuthError::Claims("a required claim is missing"),
        },
        ErrorKind::InvalidClaimFormat(_) => AuthError::Claims("exp and nbf must be numbers"),
        ErrorKind::InvalidSubject => AuthError::Claims("sub must be a valid client id"),
        _ => AuthError::Malformed,
    }
}

/// A JSON NumericDate as whole seconds, as the crate reads `exp` (RFC 7519 §2).
fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f.round() as u64)
    })
}

/// Roles from the configured claim; unknown role names are ignored, a claim
/// of the wrong type refuses the token.
fn roles(claims: &Claims, from: RolesClaim) -> Result<Vec<Role>, AuthError> {
    let mut roles = Vec::new();
    let mut add = |name: &str| {
        if let Some(r) = Role::parse(name)
            && !roles.contains(&r)
        {
            roles.push(r);
        }
    };
    match from {
        RolesClaim::Roles => match &claims.roles {
            None => {}
            Some(Value::Array(items)) => {
                for item in items {
                    add(item
                        .as_str()
                        .ok_or(AuthError::Claims("roles must be an array of strings"))?);
                }
            }
            Some(_) => return Err(AuthError::Claims("roles must be an array of strings")),
        },
        RolesClaim::Scope => match &claims.scope {
            None => {}
            Some(Value::String(s)) => s.split(' ').for_each(add),
            Some(_) => return Err(AuthError::Claims("scope must be a space-separated string")),
        },
    }
    Ok(roles)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads one `[[auth.keys]]` PEM public key for `alg`, checking it is usable.
fn load_pem(path: &Path, kid: &str, alg: Algorithm) -> Result<DecodingKey, AuthError> {
    let err = |problem: &str| AuthError::key_file(path, Some(kid), problem);
    let pem = std::fs::read(path).map_err(|e| err(&format!("cannot read: {}", e.kind())))?;
    // A private key here is a deployment mistake worth stopping for.
    if pem.windows(16).any(|w| w == b"PRIVATE KEY-----") {
        return Err(err("holds a private key; give the public key"));
    }
    let parsed = match alg {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
        _ => DecodingKey::from_ed_pem(&pem),
    };
    let key = parsed.map_err(|_| err(&format!("not a PEM public key for {alg:?}")))?;
    // Re-deriving the JWK parameters parses the key with the crypto provider
    // and tells us its size or curve.
    let jwk = Jwk::from_decoding_key(&key, Some(alg))
        .map_err(|_| err(&format!("not a usable public key for {alg:?}")))?;
    check_jwk_matches(&jwk, alg).map_err(err)?;
    Ok(key)
}

/// Reads the JWKS file: every key needs `kid` and `alg` (RS256, ES256 or
/// EdDSA) matching its type.
fn load_jwks(path: &Path) -> Result<Vec<(String, Algorithm, DecodingKey)>, AuthError> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let bytes = std::fs::read(path)
        .map_err(|e| AuthError::key_file(path, None, format!("cannot read: {}", e.kind())))?;
    // Only the position of a JSON error: its message could quote key material.
    let set: Set = serde_json::from_slice(&bytes).map_err(|e| {
        AuthError::key_file(
            path,
            None,
            format!(
                "not a JWKS document (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    let mut out = Vec::with_capacity(set.keys.len());
    for (i, raw) in set.keys.into_iter().enumerate() {
        let kid = raw.get("kid").and_then(Value::as_str).map(str::to_owned);
        let Some(kid) = kid.filter(|k| !k.is_empty()) else {
            return Err(AuthError::key_file(
                path,
                None,
                format!("key #{i} has no kid"),
            ));
        };
        let err = |problem: &str| AuthError::key_file(path, Some(&kid), problem);
        let alg = raw
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| err("no alg (RS256, ES256 or EdDSA required)"))?;
        let alg = parse_alg(alg).ok_or_else(|| err("alg must be RS256, ES256 or EdDSA"))?;
        if raw.get("use").is_some_and(|u| u != "sig") {
            return Err(err("use must be \"sig\""));
        }
        let jwk: Jwk = serde_json::from_value(raw).map_err(|_| err("not a valid JWK"))?;
        check_jwk_matches(&jwk, alg).map_err(err)?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| err("not a valid JWK"))?;
        out.push((kid, alg, key));
    }
    Ok(out)
}

/// The key's type, curve and size fit the one algorithm it is bound to.
fn check_jwk_matches(jwk: &Jwk, alg: Algorithm) -> Result<(), &'static str> {
    let len = |b64: &str| URL_SAFE_NO_PAD.decode(b64).map(|b| b.len()).unwrap_or(0);
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(p), Algorithm::RS256) => {
            let n = URL_SAFE_NO_PAD
                .decode(&p.n)
                .map_err(|_| "bad RSA modulus")?;
            let significant = n.iter().skip_while(|b| **b == 0).count();
            if !RSA_MODULUS_BYTES.contains(&significant) || len(&p.e) == 0 {
                return Err("RSA key must be 2048 to 8192 bits");
            }
            Ok(())
        }
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => {
            if p.curve != EllipticCurve::P256 || len(&p.x) != 32 || len(&p.y) != 32 {
                return Err("ES256 needs a P-256 key");
            }
            Ok(())
        }
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            if p.curve != EllipticCurve::Ed25519 || len(&p.x) != 32 {
                return Err("EdDSA needs an Ed25519 key");
            }
            Ok(())
        }
        _ => Err("key type does not match its algorithm"),
    }
}

/// The verified-token cache.
///
/// A small sharded map with FIFO eviction rather than a cache crate: entries
/// are only ever added after a full verification and all live about as long
/// as the issuer's token lifetime, so insertion order is close to expiry
/// order and FIFO gives what LRU would, at O(1) and one short mutex hold per
/// request. Keys are SHA-256 digests (the raw token is never stored); a hit
/// counts only while `now < exp + leeway`, so time-dependent checks hold on
/// the cached path too. Expired entries are not served and age out first.
struct TokenCache {
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<[u8; 32], Cached>,
    /// Insertion order; always exactly the keys of `map`.
    order: VecDeque<[u8; 32]>,
}

struct Cached {
    principal: Principal,
    exp: u64,
}

impl TokenCache {
    fn new(entries_max: usize) -> Self {
        // Shards only pay when there are many entries; total stays <= max.
        let shards = if entries_max >= 1024 { 8 } else { 1 };
        Self {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            shard_cap: entries_max / shards,
        }
    }

    fn shard(&self, digest: &[u8; 32]) -> std::sync::MutexGuard<'_, Shard> {
        let i = usize::from(digest[0]) % self.shards.len();
        // Nothing panics while a shard is held; a poisoned one is still sound.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, digest: &[u8; 32], now: u64, leeway_s: u64) -> Option<Principal> {
        let shard = self.shard(digest);
        let hit = shard.map.get(digest)?;
        (now < hit.exp.saturating_add(leeway_s)).then(|| hit.principal.clone())
    }

    fn insert(&self, digest: [u8; 32], principal: Principal, exp: u64) {
        let mut shard = self.shard(&digest);
        let entry = Cached { principal, exp };
        if let Some(old) = shard.map.get_mut(&digest) {
            *old = entry; // keeps its place in `order`
            return;
        }
        while shard.map.len() >= self.shard_cap {
            let Some(oldest) = shard.order.pop_front() else {
                break;
            };
            shard.map.remove(&oldest);
        }
        shard.map.insert(digest, entry);
        shard.order.push_back(digest);
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    const SECRET: &str = "unit-secret-0123456789abcdef0123456789abcdef";

    fn config(auth: &str) -> AuthConfig {
        Config::from_toml(&format!("[auth]\n{auth}"))
            .unwrap_or_else(|e| panic!("config: {e}"))
            .auth
    }

    fn dev(extra: &str) -> Authenticator {
        Authenticator::new(&config(&format!(
            "dev_hs256_secret = \"{SECRET}\"\n{extra}"
        )))
        .expect("authenticator")
    }

    fn hs256(header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign")
    }

    fn claims(patch: Value) -> Value {
        let now = now_s();
        let mut c = json!({"sub": "alice", "roles": ["auditor"], "iat": now, "exp": now + 600});
        for (k, v) in patch.as_object().expect("object") {
            match v {
                Value::Null => c.as_object_mut().map(|m| m.remove(k)),
                v => c.as_object_mut().map(|m| m.insert(k.clone(), v.clone())),
            };
        }
        c
    }

    fn reason(auth: &Authenticator, token: &str) -> &'static str {
        match auth.verify_uncached(Some(&format!("Bearer {token}"))) {
            Ok(p) => panic!("accepted: {p:?}"),
            Err(e) => e.reason(),
        }
    }

    #[test]
    fn signed_dev_tokens_verify_with_roles_issuer_and_audience() {
        let auth = dev("issuer = \"iss\"\naudience = \"aud\"");
        let token = auth
            .sign("alice", &["transact", "bogus", "transact"], 60)
            .expect("sign");
        let p = auth
            .verify(Some(&format!("bearer {token}")))
            .expect("verify");
        assert_eq!(p.client.as_str(), "alice");
        assert_eq!(p.roles, vec![Role::Transact]);

        let scope = dev("roles_claim = \"scope\"");
        let token = scope
            .sign("bob", &["auditor", "operator"], 60)
            .expect("sign");
        let p = scope
            .verify_uncached(Some(&format!("Bearer {token}")))
            .expect("verify");
        assert_eq!(p.roles, vec![Role::Auditor, Role::Operator]);
    }

    #[test]
    fn refusals_have_bounded_reasons_and_never_echo_the_token() {
        let auth = dev("token_lifetime_max_s = 3600\nissuer = \"iss\"");
        let iss = |p: Value| {
            let mut c = claims(p);
            c["iss"] = c.get("iss").cloned().unwrap_or(json!("iss"));
            c
        };
        let h = || Header::new(Algorithm::HS256);
        let now = now_s();
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(iss(json!({})).to_string())
        );
        let mut with_kid = h();
        with_kid.kid = Some("nope".into());
        let mut crit = h();
        crit.crit = Some(vec!["b64".into()]);
        let cases: Vec<(&str, String)> = vec![
            ("malformed", "not-a-jwt".into()),
            ("malformed", "a.b.c.d".into()),
            ("algorithm", none),
            ("unknown_kid", hs256(with_kid, &iss(json!({})))),
            ("malformed", hs256(crit, &iss(json!({})))),
            ("expired", hs256(h(), &iss(json!({"exp": now - 120})))),
            ("not_yet_valid", hs256(h(), &iss(json!({"nbf": now + 600})))),
            ("issuer", hs256(h(), &iss(json!({"iss": "other"})))),
            ("issuer", hs256(h(), &claims(json!({})))),
            ("lifetime", hs256(h(), &iss(json!({"exp": now + 4000})))),
            (
                "lifetime",
                hs256(h(), &iss(json!({"iat": null, "exp": now + 4000}))),
            ),
            (
                "lifetime",
                hs256(h(), &iss(json!({"iat": now + 3000, "exp": now + 4000}))),
            ),
            ("claims", hs256(h(), &iss(json!({"iat": "yesterday"})))),
            ("claims", hs256(h(), &iss(json!({"sub": null})))),
            ("claims", hs256(h(), &iss(json!({"sub": 42})))),
            ("claims", hs256(h(), &iss(json!({"sub": ""})))),
            ("claims", hs256(h(), &iss(json!({"exp": null})))),
            ("claims", hs256(h(), &iss(json!({"roles": "auditor"})))),
            ("claims", hs256(h(), &iss(json!({"roles": [1]})))),
            ("claims", hs256(h(), &iss(json!({"exp": "soon"})))),
        ];
        for (want, token) in &cases {
            let got = reason(&auth, token);
            assert_eq!(got, *want, "token {token}");
            let shown = auth
                .verify_uncached(Some(&format!("Bearer {token}")))
                .expect_err("refused")
                .to_string();
            assert!(
                !shown.contains(token.as_str()) && shown.len() < 80,
                "{shown}"
            );
        }
        // The signature is checked with the secret, not skipped.
        let forged = jsonwebtoken::encode(&h(), &iss(json!({})), &EncodingKey::from_secret(b"x"))
            .expect("sign");
        assert_eq!(reason(&auth, &forged), "bad_signature");
        assert_eq!(auth.verify(None).expect_err("none").reason(), "missing");
        assert_eq!(
            auth.verify(Some("Basic abc")).expect_err("basic").reason(),
            "missing"
        );
        let big = format!("Bearer {}", "a".repeat(TOKEN_BYTES_MAX + 1));
        assert_eq!(
            auth.verify(Some(&big)).expect_err("big").reason(),
            "too_large"
        );
    }

    #[test]
    fn without_a_dev_secret_kidless_tokens_have_no_key() {
        let auth = Authenticator::new(&config("")).expect("authenticator");
        let token = hs256(Header::new(Algorithm::HS256), &claims(json!({})));
        assert_eq!(reason(&auth, &token), "no_key");
        assert_eq!(
            auth.sign("a", &[], 1).expect_err("no secret").reason(),
            "no_key"
        );
    }

    #[test]
    fn the_cache_serves_verified_tokens_only_until_they_expire() {
        let auth = dev("cache_entries_max = 2\nleeway_s = 0");
        let a = auth.sign("a", &["auditor"], 60).expect("sign");
        let header = format!("Bearer {a}");
        assert_eq!(auth.cache_len(), 0);
        let first = auth.verify(Some(&header)).expect("verify");
        assert_eq!(auth.cache_len(), 1);
        assert_eq!(auth.verify(Some(&header)).expect("cached"), first);
        assert_eq!(auth.cache_len(), 1);
        // Refusals are never cached; the bound holds.
        assert!(auth.verify(Some("Bearer x.y.z")).is_err());
        for sub in ["b", "c", "d"] {
            let t = auth.sign(sub, &[], 60).expect("sign");
            auth.verify(Some(&format!("Bearer {t}"))).expect("verify");
        }
        assert_eq!(auth.cache_len(), 2);

        let cache = TokenCache::new(2);
        let p = first.clone();
        cache.insert([1; 32], p.clone(), 100);
        assert_eq!(cache.get(&[1; 32], 99, 0), Some(p.clone()));
        assert_eq!(cache.get(&[1; 32], 100, 0), None);
        assert_eq!(cache.get(&[1; 32], 104, 5), Some(p.clone()));
        assert_eq!(cache.get(&[1; 32], 105, 5), None);
        // FIFO eviction: the oldest goes first.
        cache.insert([2; 32], p.clone(), 200);
        cache.insert([3; 32], p.clone(), 300);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&[1; 32], 0, 0), None);
        assert!(cache.get(&[3; 32], 0, 0).is_some());
    }

    #[test]
    fn key_files_are_checked_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p.display().to_string()
        };
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
        let ec_pub = write("ec.pem", &ec.public_key_pem());
        let ec_priv = write("ec-private.pem", &ec.serialize_pem());
        let key = |kid: &str, alg: &str, path: &str| {
            format!(
                "[[auth.keys]]\nkid = \"{kid}\"\nalgorithm = \"{alg}\"\npublic_key = \"{path}\"\n"
            )
        };
        let load = |toml: String| Authenticator::new(&config(&toml)).map(|_| ());
        load(key("ec", "ES256", &ec_pub)).expect("a good key loads");

        let bad = [
            (key("k1", "RS256", &ec_pub), "k1"),
            (key("k2", "EdDSA", &ec_pub), "k2"),
            (key("k3", "ES256", &ec_priv), "private key"),
            (
                key(
                    "k4",
                    "ES256",
                    &dir.path().join("missing.pem").display().to_string(),
                ),
                "k4",
            ),
        ];
        for (toml, needle) in bad {
            let e = load(toml).expect_err("refused").to_string();
            assert!(
                e.contains(needle) && e.contains(dir.path().to_str().unwrap_or("")),
                "{e}"
            );
            assert!(!e.contains("BEGIN"), "{e}");
        }

        let jwk = |v: Value| write("jwks.json", &json!({"keys": [v]}).to_string());
        let mut good = serde_json::to_value(
            Jwk::from_decoding_key(
                &DecodingKey::from_ec_pem(ec.public_key_pem().as_bytes()).expect("pem"),
                Some(Algorithm::ES256),
            )
            .expect("jwk"),
        )
        .expect("json");
        good["kid"] = json!("j1");
        let jwks = |v: Value| load(format!("jwks_file = \"{}\"", jwk(v)));
        jwks(good.clone()).expect("a good JWKS loads");
        let variants = [
            ("kid", Value::Null, "no kid"),
            ("alg", Value::Null, "no alg"),
            ("alg", json!("HS256"), "alg must be"),
            ("alg", json!("RS256"), "does not match"),
            ("use", json!("enc"), "use"),
        ];
        for (field, value, needle) in variants {
            let mut v = good.clone();
            match value {
                Value::Null => v.as_object_mut().map(|m| m.remove(field)),
                value => v.as_object_mut().map(|m| m.insert(field.into(), value)),
            };
            let e = jwks(v).expect_err("refused").to_string();
            assert!(
                e.contains(needle) && e.contains("jwks.json"),
                "{field}: {e}"
            );
        }
        let secret_json = write(
            "broken.json",
            r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0LXZhbHVl"}], }"#,
        );
        let e = load(format!("jwks_file = \"{secret_json}\""))
            .expect_err("refused")
            .to_string();
        assert!(!e.contains("c2VjcmV0"), "{e}");
        // A kid in both places is ambiguous.
        let both = format!(
            "jwks_file = \"{}\"\n{}",
            jwk(good),
            key("j1", "ES256", &ec_pub)
        );
        assert!(
            load(both)
                .expect_err("dup")
                .to_string()
                .contains("duplicate kid")
        );
    }
}
