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
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::schema::{
    AdditionalProperties, AllOfBuilder, Discriminator, ObjectBuilder, OneOfBuilder, Ref, Schema,
    Type,
};

use crate::domain::{
    AccountId, Amount, Currency, Movement, Spenders, TransactionId, TransactionRequest,
};
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
pub(super) async fn read_json<T: DeserializeOwned + BodyFields>(
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
                tracing::debug!(error = %e, "request body not read");
                ApiError::InvalidRequest("body: could not be read to its end".into())
            }
        })?
        .to_bytes();
    parse_json(&bytes)
}

/// The fields of a request body, for errors in the API's own words: what
/// each field must be when its JSON has the wrong type or value.
pub trait BodyFields {
    /// Every field the body accepts, as the API spells it.
    const FIELDS: &'static [&'static str];
    /// What `field` must be ("must be a string"); `None` for no such field.
    fn expects(field: &str) -> Option<&'static str>;
}

/// Parses JSON into `T`. A refusal names the field and says what is wrong in
/// the API's words (`amount: must be an integer number of minor units`), or
/// says where the JSON itself breaks; never a Rust type or parser internals.
pub fn parse_json<T: DeserializeOwned + BodyFields>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::InvalidRequest(describe::<T>(&path, e.inner()))
    })?;
    // One JSON document and nothing after it: trailing bytes would otherwise
    // be ignored, and a second document silently dropped.
    de.end()
        .map_err(|e| ApiError::InvalidRequest(describe::<T>(".", &e)))?;
    Ok(value)
}

/// A serde_json error at `path` ("." for the whole body), in the API's words.
fn describe<T: BodyFields>(path: &str, e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let (line, column) = (e.line(), e.column());
    // serde_json's own text, without the position it appends.
    let text = e.to_string();
    let text = text
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&text);
    match e.classify() {
        Category::Io => "body: could not be read".into(),
        Category::Eof => {
            format!("body is not valid JSON (ends early at line {line}, column {column})")
        }
        Category::Syntax => format!(
            "body is not valid JSON ({} at line {line}, column {column})",
            syntax_words(text)
        ),
        Category::Data => data_words::<T>(path, text),
    }
}

/// serde_json's syntax errors (a fixed set), as a person would say them.
fn syntax_words(text: &str) -> &'static str {
    match text {
        "expected `:`" => "a ':' was expected",
        "expected `,` or `]`" => "a ',' or ']' was expected",
        "expected `,` or `}`" => "a ',' or '}' was expected",
        "expected ident" => "true, false or null was expected",
        "expected value" => "a value was expected",
        "expected `\"`" => "a quoted key was expected",
        "invalid escape" => "a string has an invalid escape",
        "invalid number" => "a number is malformed",
        "number out of range" => "a number is too large",
        "invalid unicode code point" => "a string has an invalid character",
        "key must be a string" => "an object key is not a string",
        "lone leading surrogate in hex escape" => "a string has an unpaired \\u escape",
        "trailing comma" => "a comma before the closing bracket",
        "trailing characters" => "something follows the JSON value",
        "unexpected end of hex escape" => "a \\u escape ends early",
        "recursion limit exceeded" => "nested too deeply",
        t if t.starts_with("control character") => "a string holds an unescaped control character",
        _ => "malformed",
    }
}

/// A value of the wrong shape at `path`: the field and what it must be.
fn data_words<T: BodyFields>(path: &str, text: &str) -> String {
    // The field serde names in backticks, for missing, unknown and
    // duplicate fields (`missing field `amount``).
    let named = || text.split('`').nth(1).unwrap_or_default().to_owned();
    if text.starts_with("missing field") {
        return format!("{}: is required", named());
    }
    if text.starts_with("unknown field") {
        return format!(
            "{}: is not a field of this request (its fields are {})",
            named(),
            T::FIELDS.join(", ")
        );
    }
    if text.starts_with("duplicate field") {
        return format!("{}: appears more than once", named());
    }
    let field = path.split(['.', '[']).next().unwrap_or_default();
    if field.is_empty() {
        return "body: must be a JSON object".into();
    }
    match T::expects(field) {
        Some(what) => format!("{field}: {what}"),
        None => format!("{field}: has the wrong type"),
    }
}

const STRING: &str = "must be a string";
const MINOR_UNITS: &str = "must be an integer number of minor units";
const CLIENT_LIST: &str = "must be a list of client ids, or [\"*\"] for any client";

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

#[derive(Debug)]
enum TxKindBody {
    Debit,
    Credit,
    Transfer,
}

// By hand, from a string: a derived enum makes serde_json call a number
// there a syntax error ("expected value") instead of a wrong type.
impl<'de> Deserialize<'de> for TxKindBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const KINDS: &[&str] = &["debit", "credit", "transfer"];
        let kind = String::deserialize(d)?;
        match kind.as_str() {
            "debit" => Ok(TxKindBody::Debit),
            "credit" => Ok(TxKindBody::Credit),
            "transfer" => Ok(TxKindBody::Transfer),
            _ => Err(serde::de::Error::unknown_variant(&kind, KINDS)),
        }
    }
}

impl BodyFields for TransactionBody {
    const FIELDS: &'static [&'static str] = &[
        "transactionId",
        "type",
        "accountId",
        "from",
        "to",
        "amount",
        "currency",
        "metadata",
    ];
    fn expects(field: &str) -> Option<&'static str> {
        Some(match field {
            "transactionId" | "accountId" | "from" | "to" | "currency" => STRING,
            "type" => "must be one of debit, credit, transfer",
            "amount" => MINOR_UNITS,
            "metadata" => "must be an object",
            _ => return None,
        })
    }
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

/// The schema of [`TransactionBody`] (`TransactionRequest`), by hand: the
/// struct is flat (every field of every type, as serde reads it), while the
/// document says which fields go with which `type`, as [`TransactionBody::parse`]
/// decides. A unit test checks its fields against [`BodyFields::FIELDS`].
impl utoipa::PartialSchema for TransactionBody {
    fn schema() -> RefOr<Schema> {
        let schema = |name: &str| format!("#/components/schemas/{name}");
        OneOfBuilder::new()
            .item(Ref::from_schema_name("DebitOrCreditRequest"))
            .item(Ref::from_schema_name("TransferRequest"))
            .description(Some(
                "One transaction. Unknown fields are refused (400); `accountId` is for `debit`/`credit`, `from` and `to` for `transfer`.",
            ))
            .discriminator(Some(Discriminator::with_mapping(
                "type",
                [
                    ("debit", schema("DebitOrCreditRequest")),
                    ("credit", schema("DebitOrCreditRequest")),
                    ("transfer", schema("TransferRequest")),
                ],
            )))
            .into()
    }
}

impl ToSchema for TransactionBody {
    fn name() -> std::borrow::Cow<'static, str> {
        "TransactionRequest".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        use utoipa::PartialSchema;
        let request = |description: &str, kinds: &[&str], accounts: &[&str]| {
            let mut o = ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(description))
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                .property("transactionId", Ref::from_schema_name("TransactionId"))
                .required("transactionId")
                .property(
                    "type",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(kinds.iter().copied())),
                )
                .required("type");
            for account in accounts {
                o = o
                    .property(*account, Ref::from_schema_name("AccountId"))
                    .required(*account);
            }
            o.property("amount", Ref::from_schema_name("Amount"))
                .required("amount")
                .property("currency", Ref::from_schema_name("Currency"))
                .required("currency")
                .property("metadata", Ref::from_schema_name("Metadata"))
                .build()
                .into()
        };
        schemas.extend([
            (
                "DebitOrCreditRequest".to_owned(),
                request(
                    "`debit`: money leaves `accountId` (which the caller must own) for the switch's settlement account. `credit`: money arrives in `accountId` (the caller's) from it.",
                    &["debit", "credit"],
                    &["accountId"],
                ),
            ),
            (
                "TransferRequest".to_owned(),
                request(
                    "`transfer`: money moves from `from` (which the caller must own) to `to` (anyone's customer account in the same currency; must differ from `from`).",
                    &["transfer"],
                    &["from", "to"],
                ),
            ),
            ("TransactionId".to_owned(), TransactionId::schema()),
            ("AccountId".to_owned(), AccountId::schema()),
            ("Amount".to_owned(), Amount::schema()),
            ("Currency".to_owned(), Currency::schema()),
            ("Metadata".to_owned(), metadata_schema()),
        ]);
    }
}

/// `metadata`: any JSON object, bounded by [`METADATA_BYTES_MAX`].
fn metadata_schema() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
        .description(Some(format!(
            "Free-form client data, at most {METADATA_BYTES_MAX} bytes as JSON; stored, returned and sent to the switch as given. Part of the idempotency fingerprint (key order does not matter)."
        )))
        .examples([serde_json::json!({"orderId": "A-1001"})])
        .into()
}

/// An account id in a field other than `accountId`, named as such in errors.
fn parse_field(field: &'static str, raw: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(raw).map_err(|e| ApiError::InvalidRequest(format!("{field}: {}", e.message)))
}

/// `POST /v1/accounts` as sent. Its schema (`AccountRequest`) is derived
/// from these fields; the rules are the parsers' in `handlers::post_account`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = AccountRequest, description = "A new customer account.")]
pub(super) struct AccountBody {
    #[schema(schema_with = new_account_id)]
    pub(super) account_id: String,
    /// The client (token `sub`) that owns it: 1 to 128 bytes of UTF-8, no
    /// control characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$",
        example = "alice"
    )]
    pub(super) owner: String,
    #[schema(value_type = Currency)]
    pub(super) currency: String,
    /// Minor units, moved in from the currency's equity account; at most
    /// `ledger.opening_balance_max` (default 1000000000000).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64, default = 0, format = Int64)]
    pub(super) opening_balance: i64,
    #[serde(default)]
    #[schema(value_type = Spenders)]
    pub(super) spenders: Vec<String>,
}

/// `accountId` of a new account: an [`AccountId`] outside the reserved
/// prefixes (utoipa's model has no `not`: it goes in as an extension, which
/// serializes as the keyword itself).
fn new_account_id() -> RefOr<Schema> {
    AllOfBuilder::new()
        .item(Ref::from_schema_name("AccountId"))
        .description(Some(
            "The new account's id; the `settlement:` and `equity:` prefixes are reserved.",
        ))
        .extensions(Some(Extensions::from_iter([(
            "not",
            serde_json::json!({"type": "string", "pattern": "^(settlement|equity):"}),
        )])))
        .into()
}

impl BodyFields for AccountBody {
    const FIELDS: &'static [&'static str] = &[
        "accountId",
        "owner",
        "currency",
        "openingBalance",
        "spenders",
    ];
    fn expects(field: &str) -> Option<&'static str> {
        Some(match field {
            "accountId" | "owner" | "currency" => STRING,
            "openingBalance" => MINOR_UNITS,
            "spenders" => CLIENT_LIST,
            _ => return None,
        })
    }
}

/// `PATCH /v1/accounts/{id}`: who besides the owner may spend from it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = AccountPatch, description = "The account's new spenders.")]
pub(super) struct AccountPatchBody {
    #[schema(value_type = Spenders)]
    pub(super) spenders: Vec<String>,
}

impl BodyFields for AccountPatchBody {
    const FIELDS: &'static [&'static str] = &["spenders"];
    fn expects(field: &str) -> Option<&'static str> {
        (field == "spenders").then_some(CLIENT_LIST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::PartialSchema;

    /// The properties of a schema and, through `oneOf`, of its options.
    fn properties(name: &str, schemas: &[(String, RefOr<Schema>)]) -> Vec<String> {
        let (_, schema) = schemas
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no schema {name}"));
        let json = serde_json::to_value(schema).unwrap();
        json["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_documented_fields_are_the_fields_read() {
        let mut schemas = Vec::new();
        TransactionBody::schemas(&mut schemas);
        let mut documented: Vec<String> = ["DebitOrCreditRequest", "TransferRequest"]
            .iter()
            .flat_map(|n| properties(n, &schemas))
            .collect();
        documented.sort();
        documented.dedup();
        let mut read: Vec<String> = TransactionBody::FIELDS
            .iter()
            .map(|f| f.to_string())
            .collect();
        read.sort();
        assert_eq!(
            documented, read,
            "TransactionRequest vs TransactionBody::FIELDS"
        );
        for (name, fields, schema) in [
            ("AccountRequest", AccountBody::FIELDS, AccountBody::schema()),
            (
                "AccountPatch",
                AccountPatchBody::FIELDS,
                AccountPatchBody::schema(),
            ),
        ] {
            let schemas = vec![(name.to_owned(), schema)];
            let mut fields = fields.to_vec();
            fields.sort_unstable();
            assert_eq!(properties(name, &schemas), fields, "{name} vs FIELDS");
        }
    }

    /// Words of the implementation that must never reach a client.
    pub(crate) const RUST_WORDS: &[&str] = include!("rust_words.in");

    fn message<T: DeserializeOwned + BodyFields + std::fmt::Debug>(body: &str) -> String {
        match parse_json::<T>(body.as_bytes()) {
            Ok(v) => panic!("{body} parsed: {v:?}"),
            Err(ApiError::InvalidRequest(m)) => m,
            Err(e) => panic!("{body}: {e:?}"),
        }
    }

    fn assert_plain(body: &str, got: &str) {
        let words: Vec<&str> = got
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .collect();
        for bad in RUST_WORDS {
            let found = if bad.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                words.contains(bad)
            } else {
                got.contains(bad)
            };
            assert!(!found, "{body}: message {got:?} contains {bad:?}");
        }
    }

    const OK: &str =
        r#""transactionId":"t1","type":"debit","accountId":"a1","amount":5,"currency":"EUR""#;

    #[test]
    fn every_transaction_body_error_is_in_the_api_words() {
        let cases: Vec<(String, &str)> = vec![
            // Malformed JSON.
            (
                format!("{{{OK}"),
                "body is not valid JSON (ends early at line 1, column ",
            ),
            (
                "".into(),
                "body is not valid JSON (ends early at line 1, column 0)",
            ),
            (
                "{\"transactionId\" \"t\"}".into(),
                "body is not valid JSON (a ':' was expected at line 1, column 18)",
            ),
            (
                "{'a':1}".into(),
                "body is not valid JSON (an object key is not a string at line 1, column 2)",
            ),
            (
                "{\"amount\":01}".into(),
                "body is not valid JSON (a number is malformed at line 1, column 12)",
            ),
            (
                "{\"amount\":tru}".into(),
                "body is not valid JSON (true, false or null was expected",
            ),
            (
                "{\"amount\":5 \"currency\":\"EUR\"}".into(),
                "body is not valid JSON (a ',' or '}' was expected at line 1, column 13)",
            ),
            (
                "{\"amount\":}".into(),
                "body is not valid JSON (a value was expected at line 1, column 11)",
            ),
            (
                format!("{{{OK},}}"),
                "body is not valid JSON (a comma before the closing bracket",
            ),
            (
                format!("{{{OK}}} x"),
                "body is not valid JSON (something follows the JSON value",
            ),
            (
                format!("{{{OK}}}{{{OK}}}"),
                "body is not valid JSON (something follows the JSON value",
            ),
            (
                "{\"transactionId\":\"a\\x\"}".into(),
                "body is not valid JSON (a string has an invalid escape",
            ),
            // The whole body of the wrong shape.
            ("null".into(), "body: must be a JSON object"),
            ("[]".into(), "body: must be a JSON object"),
            ("\"x\"".into(), "body: must be a JSON object"),
            // Wrong type, per field.
            (
                OK.replace("\"t1\"", "1").pipe_obj(),
                "transactionId: must be a string",
            ),
            (
                OK.replace("\"debit\"", "\"refund\"").pipe_obj(),
                "type: must be one of debit, credit, transfer",
            ),
            (
                OK.replace("\"debit\"", "3").pipe_obj(),
                "type: must be one of debit, credit, transfer",
            ),
            (
                OK.replace("\"a1\"", "true").pipe_obj(),
                "accountId: must be a string",
            ),
            (
                OK.replace("\"amount\":5", "\"amount\":\"5\"").pipe_obj(),
                "amount: must be an integer number of minor units",
            ),
            (
                OK.replace("\"amount\":5", "\"amount\":1.5").pipe_obj(),
                "amount: must be an integer number of minor units",
            ),
            (
                OK.replace("\"amount\":5", "\"amount\":null").pipe_obj(),
                "amount: must be an integer number of minor units",
            ),
            (
                OK.replace("\"amount\":5", "\"amount\":9223372036854775808")
                    .pipe_obj(),
                "amount: must be an integer number of minor units",
            ),
            (
                OK.replace("\"amount\":5", "\"amount\":1e400").pipe_obj(),
                "body is not valid JSON (a number is too large",
            ),
            (
                OK.replace("\"EUR\"", "[\"EUR\"]").pipe_obj(),
                "currency: must be a string",
            ),
            (format!("{{{OK},\"from\":{{}}}}"), "from: must be a string"),
            (format!("{{{OK},\"to\":7}}"), "to: must be a string"),
            // Unknown, missing and repeated fields.
            (
                format!("{{{OK},\"fee\":1}}"),
                "fee: is not a field of this request (its fields are transactionId, type, accountId, from, to, amount, currency, metadata)",
            ),
            (
                OK.replace("\"transactionId\":\"t1\",", "").pipe_obj(),
                "transactionId: is required",
            ),
            (
                OK.replace(",\"amount\":5", "").pipe_obj(),
                "amount: is required",
            ),
            (
                OK.replace(",\"currency\":\"EUR\"", "").pipe_obj(),
                "currency: is required",
            ),
            (
                OK.replace("\"type\":\"debit\",", "").pipe_obj(),
                "type: is required",
            ),
            (
                format!("{{{OK},\"amount\":6}}"),
                "amount: appears more than once",
            ),
        ];
        let mut wrong = Vec::new();
        for (body, want) in cases {
            let got = message::<TransactionBody>(&body);
            if !got.starts_with(want) {
                wrong.push(format!("{body}: got {got:?}, want {want:?}"));
            }
            assert_plain(&body, &got);
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn every_account_body_error_is_in_the_api_words() {
        let ok = r#""accountId":"a1","owner":"o","currency":"EUR","openingBalance":5"#;
        for (body, want) in [
            (format!("{{{ok}"), "body is not valid JSON (ends early"),
            (
                ok.replace("5", "\"5\"").pipe_obj(),
                "openingBalance: must be an integer number of minor units",
            ),
            (
                ok.replace("\"o\"", "1").pipe_obj(),
                "owner: must be a string",
            ),
            (
                ok.replace(",\"owner\":\"o\"", "").pipe_obj(),
                "owner: is required",
            ),
            (
                format!("{{{ok},\"kind\":\"x\"}}"),
                "kind: is not a field of this request (its fields are accountId, owner, currency, openingBalance, spenders)",
            ),
            (
                format!("{{{ok},\"spenders\":\"bob\"}}"),
                "spenders: must be a list of client ids, or [\"*\"] for any client",
            ),
        ] {
            let got = message::<AccountBody>(&body);
            assert!(got.starts_with(want), "{body}: got {got:?}, want {want:?}");
            assert_plain(&body, &got);
        }
    }

    trait PipeObj {
        fn pipe_obj(self) -> String;
    }
    impl PipeObj for String {
        fn pipe_obj(self) -> String {
            format!("{{{self}}}")
        }
    }
}
