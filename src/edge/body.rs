//! Request bodies: read within their limits (size, and time: a body that
//! trickles in is cut off with 408) and parsed into domain types, every
//! refusal naming the offending field.

use http::{Request, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::config::ServerConfig;
use crate::domain::{AccountId, Amount, Currency, Movement, TransactionId, TransactionRequest};
use crate::edge::error::ApiError;

/// How much of a body is read, and by when.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyLimits {
    /// `server.body_bytes_max`; past it, 413.
    pub(super) bytes_max: usize,
    /// `server.body_read_timeout_ms` from now, or the request's deadline if
    /// that comes first; past it, 408. A slow body is the client's doing:
    /// it never runs into the deadline's 504.
    pub(super) read_by: Instant,
}

impl BodyLimits {
    pub(super) fn new(server: &ServerConfig, deadline: Instant) -> Self {
        Self {
            bytes_max: server.body_bytes_max,
            read_by: deadline.min(Instant::now() + server.body_read_timeout()),
        }
    }
}

/// Reads a bounded JSON body into `T`, naming the offending field on error.
pub(super) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    limits: BodyLimits,
) -> Result<T, ApiError> {
    let limit_bytes = limits.bytes_max;
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        let media_type = ct.split(';').next().unwrap_or_default().trim();
        if media_type != "application/json" {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit_bytes as u64) {
        return Err(ApiError::PayloadTooLarge { limit_bytes });
    }
    let collect = Limited::new(req.into_body(), limit_bytes).collect();
    let bytes = tokio::time::timeout_at(limits.read_by, collect)
        .await
        .map_err(|_| ApiError::RequestTimeout)?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::PayloadTooLarge { limit_bytes }
            } else {
                ApiError::InvalidRequest(format!("could not read the body: {e}"))
            }
        })?
        .to_bytes();
    parse_json(&bytes)
}

/// Parses JSON into `T`; the error names the field (`amount: invalid type ...`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." || path.is_empty() {
            format!("body: {inner}")
        } else {
            format!("{path}: {inner}")
        };
        ApiError::InvalidRequest(message)
    })?;
    // One JSON document and nothing after it: trailing bytes would otherwise
    // be ignored, and a second document silently dropped.
    de.end()
        .map_err(|e| ApiError::InvalidRequest(format!("body: {e}")))?;
    Ok(value)
}

/// `POST /v1/transactions` as sent: parsed into [`TransactionRequest`] at once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransactionBody {
    transaction_id: String,
    #[serde(rename = "type")]
    kind: TxKindBody,
    account_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    amount: i64,
    currency: String,
    metadata: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TxKindBody {
    Debit,
    Credit,
    Transfer,
}

/// Largest `metadata` object, bytes of JSON.
const METADATA_BYTES_MAX: usize = 4096;

impl TransactionBody {
    pub fn parse(self, amount_max: i64) -> Result<TransactionRequest, ApiError> {
        let id = TransactionId::parse(&self.transaction_id)?;
        let required = |field: &'static str, v: Option<String>| {
            v.ok_or_else(|| ApiError::InvalidRequest(format!("{field}: is required for this type")))
        };
        let forbidden = |field: &'static str, v: &Option<String>| match v {
            Some(_) => Err(ApiError::InvalidRequest(format!(
                "{field}: is not allowed for this type"
            ))),
            None => Ok(()),
        };
        let movement = match self.kind {
            TxKindBody::Debit | TxKindBody::Credit => {
                forbidden("from", &self.from)?;
                forbidden("to", &self.to)?;
                let account = AccountId::parse(&required("accountId", self.account_id)?)?;
                if matches!(self.kind, TxKindBody::Debit) {
                    Movement::Debit { account }
                } else {
                    Movement::Credit { account }
                }
            }
            TxKindBody::Transfer => {
                forbidden("accountId", &self.account_id)?;
                let from = parse_field("from", &required("from", self.from)?)?;
                let to = parse_field("to", &required("to", self.to)?)?;
                if from == to {
                    return Err(ApiError::InvalidRequest("to: must differ from from".into()));
                }
                Movement::Transfer { from, to }
            }
        };
        let amount = Amount::parse("amount", self.amount, amount_max)?;
        let currency = Currency::parse(&self.currency)?;
        if let Some(m) = &self.metadata {
            if !m.is_object() {
                return Err(ApiError::InvalidRequest(
                    "metadata: must be an object".into(),
                ));
            }
            if m.to_string().len() > METADATA_BYTES_MAX {
                return Err(ApiError::InvalidRequest(format!(
                    "metadata: must be at most {METADATA_BYTES_MAX} bytes of JSON"
                )));
            }
        }
        Ok(TransactionRequest {
            id,
            movement,
            amount,
            currency,
            metadata: self.metadata,
        })
    }
}

/// An account id in a field other than `accountId`, named as such in errors.
fn parse_field(field: &'static str, raw: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(raw).map_err(|e| ApiError::InvalidRequest(format!("{field}: {}", e.message)))
}

/// `POST /v1/accounts` as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct AccountBody {
    pub(super) account_id: String,
    pub(super) owner: String,
    pub(super) currency: String,
    #[serde(default)]
    pub(super) opening_balance: i64,
}
