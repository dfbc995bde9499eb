//! Bearer-token authentication and roles.
//!
//! First cut: HS256 tokens signed with the development secret
//! (`auth.dev_hs256_secret`). `exp` and `sub` are required; the algorithm is
//! pinned, so `alg: none` or any other algorithm is refused.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;
use crate::domain::{ClientId, Role};

/// Longest token accepted, bytes: anything larger is refused before parsing.
const TOKEN_BYTES_MAX: usize = 8 * 1024;

/// Who is calling, after a verified token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub client: ClientId,
    pub roles: Vec<Role>,
}

impl Principal {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Why a token was refused. The client sees only `401 unauthorized`; the
/// reason goes to the logs.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("token too large")]
    TooLarge,
    #[error("no verification key is configured")]
    NoKey,
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Clone)]
pub struct Authenticator {
    hs256: Option<(EncodingKey, DecodingKey)>,
    validation: Validation,
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig) -> Self {
        let hs256 = cfg.dev_hs256_secret.as_ref().map(|s| {
            let bytes = s.expose_secret().as_bytes();
            (
                EncodingKey::from_secret(bytes),
                DecodingKey::from_secret(bytes),
            )
        });
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = cfg.leeway_s;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { hs256, validation }
    }

    /// Verifies an `Authorization` header value.
    pub fn verify(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        if token.len() > TOKEN_BYTES_MAX {
            return Err(AuthError::TooLarge);
        }
        let (_, key) = self.hs256.as_ref().ok_or(AuthError::NoKey)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let client =
            ClientId::parse(&data.claims.sub).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let roles = data
            .claims
            .roles
            .iter()
            .filter_map(|r| Role::parse(r))
            .collect();
        Ok(Principal { client, roles })
    }

    /// Signs a development token (`switchboard token`, tests, `demo`).
    pub fn sign(&self, sub: &str, roles: &[&str], ttl_s: u64) -> Result<String, AuthError> {
        let (key, _) = self.hs256.as_ref().ok_or(AuthError::NoKey)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: sub.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            exp: now + ttl_s,
            iat: Some(now),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }
}
