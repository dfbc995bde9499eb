//! Domain types, parsed once at the edge. Inner code takes only these.
//!
//! Each `parse` returns a [`FieldError`] naming what is wrong; the HTTP layer
//! turns it into `400 invalid_request` with the field's name.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a field was refused at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

const ID_LEN_MAX: usize = 64;

fn parse_id(field: &'static str, raw: &str) -> Result<String, FieldError> {
    if raw.is_empty() || raw.len() > ID_LEN_MAX {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {ID_LEN_MAX} characters"),
        ));
    }
    let ok = raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if !ok {
        return Err(FieldError::new(
            field,
            "may contain only letters, digits and . _ : -",
        ));
    }
    Ok(raw.to_owned())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, FieldError> {
                parse_id($field, raw).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Parsed by the same rules as at the edge (config files, stored JSON).
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// The client's key for one transaction: 1–64 characters of `[A-Za-z0-9._:-]`.
    TransactionId,
    "transactionId"
);
id_type!(
    /// A ledger account id: 1–64 characters of `[A-Za-z0-9._:-]`.
    AccountId,
    "accountId"
);

id_type!(
    /// A switch's name as configured (`switches[].name`) and as the ledger
    /// stores it with a transaction and each attempt.
    SwitchName,
    "switch"
);

/// The gateway's own reference for one transaction, unique across clients:
/// what switches know it by (`Idempotency-Key`, requeries, the reconciler)
/// and the ledger's key for its row. A client's `transactionId` is unique
/// only among that client's transactions, so two clients may use the same
/// one; their transactions get two references.
///
/// A reference is derived from the client and its id (128 bits of a SHA-256,
/// in hex): unique as the pair is, and the same again for a retry even when
/// the ledger no longer has the row (restored from a backup), so a switch
/// that deduplicates by key still answers its first outcome. Transactions
/// stored before references existed kept their old (then global)
/// `transactionId` as their reference, so what switches already recorded
/// still matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct GatewayRef(String);

impl GatewayRef {
    /// The reference of `client`'s transaction `id`.
    pub fn of(client: &ClientId, id: &TransactionId) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        // Length-prefixed, so no two pairs hash the same bytes.
        for part in [client.as_str(), id.as_str()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let digest = h.finalize();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(32);
        for byte in &digest[..16] {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        Self(hex)
    }

    /// A reference as the ledger stored it.
    pub fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    /// A reference as a client may quote it back (in a cursor): the id
    /// alphabet, which both a fresh reference (hex) and a migrated one (an
    /// old `transactionId`) are written in.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        parse_id("gatewayRef", raw).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GatewayRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AccountId {
    /// The settlement account of a switch for a currency: money outside the ledger.
    pub fn settlement(switch: &SwitchName, currency: &Currency) -> Self {
        Self(format!("settlement:{switch}:{currency}"))
    }

    /// Where opening balances come from, one per currency.
    pub fn equity(currency: &Currency) -> Self {
        Self(format!("equity:{currency}"))
    }
}

/// The caller, from the JWT `sub` claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClientId(String);

impl ClientId {
    const LEN_MAX: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        if raw.is_empty() || raw.len() > Self::LEN_MAX || raw.chars().any(char::is_control) {
            return Err(FieldError::new(
                "sub",
                format!("must be 1 to {} printable characters", Self::LEN_MAX),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who besides its owner may spend from (debit, or transfer from) an account.
/// The owner always may; `Anyone` is every client with the `transact` role.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Spenders {
    /// The owner alone.
    #[default]
    OwnerOnly,
    /// The owner and these clients.
    Clients(Vec<ClientId>),
    /// Any client (`["*"]`).
    Anyone,
}

impl Spenders {
    /// The wildcard entry: any client.
    pub const ANY: &'static str = "*";

    /// `"spenders"` as the API takes it: client ids, or `["*"]` alone; at
    /// most `max` entries; duplicates are dropped.
    pub fn parse(raw: &[String], max: usize) -> Result<Self, FieldError> {
        if raw.len() > max {
            return Err(FieldError::new(
                "spenders",
                format!("at most {max} clients (or [\"*\"] for any client)"),
            ));
        }
        if raw.iter().any(|s| s == Self::ANY) {
            if raw.len() != 1 {
                return Err(FieldError::new(
                    "spenders",
                    "\"*\" (any client) stands alone",
                ));
            }
            return Ok(Spenders::Anyone);
        }
        let mut clients = Vec::with_capacity(raw.len());
        for s in raw {
            let c = ClientId::parse(s)
                .map_err(|e| FieldError::new("spenders", format!("each {}", e.message)))?;
            if !clients.contains(&c) {
                clients.push(c);
            }
        }
        Ok(if clients.is_empty() {
            Spenders::OwnerOnly
        } else {
            Spenders::Clients(clients)
        })
    }

    /// Whether `client` is named (the owner is checked apart).
    pub fn allows(&self, client: &ClientId) -> bool {
        match self {
            Spenders::OwnerOnly => false,
            Spenders::Clients(c) => c.contains(client),
            Spenders::Anyone => true,
        }
    }

    /// The list as the API shows it (`[]` for the owner alone).
    pub fn to_list(&self) -> Vec<String> {
        match self {
            Spenders::OwnerOnly => Vec::new(),
            Spenders::Clients(c) => c.iter().map(|c| c.as_str().to_owned()).collect(),
            Spenders::Anyone => vec![Self::ANY.to_owned()],
        }
    }
}

/// A positive amount of integer minor units (cents), at most a configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Amount(i64);

impl Amount {
    pub fn parse(field: &'static str, raw: i64, max: i64) -> Result<Self, FieldError> {
        if raw <= 0 {
            return Err(FieldError::new(field, "must be a positive integer"));
        }
        if raw > max {
            return Err(FieldError::new(field, format!("must be at most {max}")));
        }
        Ok(Self(raw))
    }

    /// An amount the ledger stored (validated when it was accepted): only
    /// positivity is checked again, the configured maximum may have changed.
    pub fn stored(raw: i64) -> Option<Self> {
        (raw > 0).then_some(Self(raw))
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }
}

/// An ISO 4217 currency code: three uppercase ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Currency(String);

impl Currency {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        if raw.len() != 3 || !raw.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(FieldError::new(
                "currency",
                "must be three uppercase letters (ISO 4217)",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a transaction does with money.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Movement {
    /// Customer account → settlement account of the switch that approves it.
    Debit { account: AccountId },
    /// Settlement account of the switch → customer account.
    Credit { account: AccountId },
    /// Customer account → customer account.
    Transfer { from: AccountId, to: AccountId },
}

impl Movement {
    pub fn kind(&self) -> TxKind {
        match self {
            Movement::Debit { .. } => TxKind::Debit,
            Movement::Credit { .. } => TxKind::Credit,
            Movement::Transfer { .. } => TxKind::Transfer,
        }
    }

    /// The customer account money leaves at `reserve`, if any. A credit takes
    /// nothing from a customer: its source is a settlement account.
    pub fn source(&self) -> Option<&AccountId> {
        match self {
            Movement::Debit { account } => Some(account),
            Movement::Credit { .. } => None,
            Movement::Transfer { from, .. } => Some(from),
        }
    }

    /// The customer account money arrives in at `commit`, if any.
    pub fn destination(&self) -> Option<&AccountId> {
        match self {
            Movement::Debit { .. } => None,
            Movement::Credit { account } => Some(account),
            Movement::Transfer { to, .. } => Some(to),
        }
    }
}

/// What the transaction does: `debit`, `credit` or `transfer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = TransactionType)]
#[serde(rename_all = "lowercase")]
pub enum TxKind {
    Debit,
    Credit,
    Transfer,
}

impl TxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TxKind::Debit => "debit",
            TxKind::Credit => "credit",
            TxKind::Transfer => "transfer",
        }
    }

    pub fn from_db(raw: &str) -> Option<Self> {
        match raw {
            "debit" => Some(TxKind::Debit),
            "credit" => Some(TxKind::Credit),
            "transfer" => Some(TxKind::Transfer),
            _ => None,
        }
    }
}

/// A transaction request as the client sent it, fully parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct TransactionRequest {
    pub id: TransactionId,
    pub movement: Movement,
    pub amount: Amount,
    pub currency: Currency,
    pub metadata: Option<serde_json::Value>,
}

impl TransactionRequest {
    /// A stable digest of everything but the id: a replay with the same id and
    /// a different payload is told apart by it.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let (kind, a, b) = match &self.movement {
            Movement::Debit { account } => ("debit", account.as_str(), ""),
            Movement::Credit { account } => ("credit", account.as_str(), ""),
            Movement::Transfer { from, to } => ("transfer", from.as_str(), to.as_str()),
        };
        // serde_json writes object keys sorted (no `preserve_order`), so the
        // metadata's text is canonical.
        let metadata = self
            .metadata
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        let mut h = Sha256::new();
        for part in [
            kind,
            a,
            b,
            &self.amount.minor_units().to_string(),
            self.currency.as_str(),
            &metadata,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let digest = h.finalize();
        let mut hex = String::with_capacity(digest.len() * 2);
        for b in digest {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            hex.push(char::from(DIGITS[usize::from(b >> 4)]));
            hex.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        hex
    }
}

/// Where a transaction is in its life. `reserved` and `pending` are in flight;
/// the other three are final and never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = TransactionStatus)]
#[serde(rename_all = "lowercase")]
pub enum TxStatus {
    Reserved,
    Pending,
    Committed,
    Declined,
    Failed,
}

impl TxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TxStatus::Reserved => "reserved",
            TxStatus::Pending => "pending",
            TxStatus::Committed => "committed",
            TxStatus::Declined => "declined",
            TxStatus::Failed => "failed",
        }
    }

    pub fn from_db(raw: &str) -> Option<Self> {
        match raw {
            "reserved" => Some(TxStatus::Reserved),
            "pending" => Some(TxStatus::Pending),
            "committed" => Some(TxStatus::Committed),
            "declined" => Some(TxStatus::Declined),
            "failed" => Some(TxStatus::Failed),
            _ => None,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            TxStatus::Committed | TxStatus::Declined | TxStatus::Failed
        )
    }
}

/// Why a transaction was released, stored as its `reason`: the three
/// values docs/design.md lists. The ledger stores it as text
/// ([`ReleaseReason::as_str`]); [`ReleaseReason::parse`] reads it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(
    as = Reason,
    description = "Why it was declined or failed: `insufficient_funds` (never forwarded), `declined_by_switch`, `no_switch_available` (nothing ran)."
)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The source balance was too low at reservation; never forwarded.
    InsufficientFunds,
    /// A switch declined it (its own reason is kept with the attempt).
    DeclinedBySwitch,
    /// No switch could take it; nothing ran.
    NoSwitchAvailable,
}

impl ReleaseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::InsufficientFunds => "insufficient_funds",
            ReleaseReason::DeclinedBySwitch => "declined_by_switch",
            ReleaseReason::NoSwitchAvailable => "no_switch_available",
        }
    }

    /// A stored reason; `None` for text no release writes.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "insufficient_funds" => Some(ReleaseReason::InsufficientFunds),
            "declined_by_switch" => Some(ReleaseReason::DeclinedBySwitch),
            "no_switch_available" => Some(ReleaseReason::NoSwitchAvailable),
            _ => None,
        }
    }

    /// The final status a release for this reason stores.
    pub fn status(self) -> TxStatus {
        match self {
            ReleaseReason::InsufficientFunds | ReleaseReason::DeclinedBySwitch => {
                TxStatus::Declined
            }
            ReleaseReason::NoSwitchAvailable => TxStatus::Failed,
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Post transactions; read own accounts and transactions.
    Transact,
    /// Read every account and transaction.
    Auditor,
    /// Create accounts; see switches.
    Operator,
}

impl Role {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "transact" => Some(Role::Transact),
            "auditor" => Some(Role::Auditor),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Transact => "transact",
            Role::Auditor => "auditor",
            Role::Operator => "operator",
        }
    }
}

/// A Unix time in milliseconds as RFC 3339, UTC, to the millisecond: how
/// every timestamp is shown.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

// --- schemas (the OpenAPI document, `edge::openapi`) -------------------------
//
// The rules the parsers above apply, stated for clients. Limits that come
// from the configuration (`ledger.amount_max`, `ledger.spenders_max`) are
// stated at their defaults; tests/it/openapi.rs checks them against
// config/default.toml.

/// A string schema: the id and code rules above.
fn string_schema(
    min: usize,
    max: usize,
    pattern: &str,
    description: &str,
    example: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .description(Some(description))
        .examples([example])
        .into()
}

/// What [`parse_id`] accepts.
const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,64}$";

impl utoipa::PartialSchema for TransactionId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(
            1,
            ID_LEN_MAX,
            ID_PATTERN,
            "The client's key for one transaction (idempotency key): 1 to 64 of `[A-Za-z0-9._:-]`. Never reusable.",
            "tx-2024-0001",
        )
    }
}
impl utoipa::ToSchema for TransactionId {}

impl utoipa::PartialSchema for AccountId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(
            1,
            ID_LEN_MAX,
            ID_PATTERN,
            "A ledger account id: 1 to 64 of `[A-Za-z0-9._:-]`.",
            "alice-eur",
        )
    }
}
impl utoipa::ToSchema for AccountId {}

impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(
            3,
            3,
            "^[A-Z]{3}$",
            "ISO 4217 code: three uppercase ASCII letters.",
            "EUR",
        )
    }
}
impl utoipa::ToSchema for Currency {}

impl Amount {
    /// The default `ledger.amount_max`, as the document states it.
    pub const DOCUMENTED_MAX: i64 = 100_000_000_000;
}

impl utoipa::PartialSchema for Amount {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(1))
            .maximum(Some(Self::DOCUMENTED_MAX))
            .description(Some(
                "Positive integer of minor units (cents), at most `ledger.amount_max` (default 100000000000). Not a string, not a fraction, not in exponent notation.",
            ))
            .examples([2500])
            .into()
    }
}
impl utoipa::ToSchema for Amount {}

impl Spenders {
    /// The default `ledger.spenders_max`, as the document states it.
    pub const DOCUMENTED_MAX: usize = 100;
}

impl utoipa::PartialSchema for Spenders {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
        ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(ClientId::LEN_MAX)),
            )
            .max_items(Some(Self::DOCUMENTED_MAX))
            .description(Some(
                "Clients besides the owner that may debit the account (or transfer from it); `[\"*\"]` alone: any client with the `transact` role; `[]`: the owner alone. At most `ledger.spenders_max` entries.",
            ))
            .into()
    }
}
impl utoipa::ToSchema for Spenders {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_reasons_read_back_as_written() {
        for reason in [
            ReleaseReason::InsufficientFunds,
            ReleaseReason::DeclinedBySwitch,
            ReleaseReason::NoSwitchAvailable,
        ] {
            assert_eq!(ReleaseReason::parse(reason.as_str()), Some(reason));
            assert!(reason.status().is_final());
        }
        assert_eq!(ReleaseReason::parse("declined"), None);
    }

    #[test]
    fn transaction_id_accepts_the_documented_alphabet_only() {
        assert!(TransactionId::parse("a.B_9:-z").is_ok());
        assert!(TransactionId::parse(&"x".repeat(64)).is_ok());
        assert!(TransactionId::parse(&"x".repeat(65)).is_err());
        assert!(TransactionId::parse("").is_err());
        assert!(TransactionId::parse("a b").is_err());
        assert!(TransactionId::parse("é").is_err());
    }

    #[test]
    fn amount_is_positive_and_bounded() {
        assert!(Amount::parse("amount", 1, 10).is_ok());
        assert!(Amount::parse("amount", 0, 10).is_err());
        assert!(Amount::parse("amount", -1, 10).is_err());
        assert!(Amount::parse("amount", 11, 10).is_err());
    }

    #[test]
    fn currency_is_three_uppercase_letters() {
        assert!(Currency::parse("EUR").is_ok());
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("EURO").is_err());
    }

    #[test]
    fn a_gateway_ref_is_per_client_and_id_and_stable() {
        let r = |client: &str, id: &str| {
            GatewayRef::of(
                &ClientId::parse(client).unwrap(),
                &TransactionId::parse(id).unwrap(),
            )
        };
        assert_eq!(r("alice", "t1"), r("alice", "t1"), "a retry gets the same");
        assert_ne!(r("alice", "t1"), r("bob", "t1"), "two clients, two refs");
        assert_ne!(r("alice", "t1"), r("alice", "t2"));
        // The parts are length-prefixed: moving a character from one to the
        // other changes the ref.
        assert_ne!(r("ab", "c"), r("a", "bc"));
        let one = r("alice", "t1");
        assert_eq!(one.as_str().len(), 32);
        assert!(
            one.as_str()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn fingerprint_changes_with_payload_not_with_metadata_key_order() {
        let req = |amount, meta: serde_json::Value| TransactionRequest {
            id: TransactionId::parse("t1").unwrap(),
            movement: Movement::Debit {
                account: AccountId::parse("a").unwrap(),
            },
            amount: Amount::parse("amount", amount, 100).unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            metadata: Some(meta),
        };
        let a = req(5, serde_json::json!({"x": 1, "y": 2}));
        let b: serde_json::Value = serde_json::from_str(r#"{"y": 2, "x": 1}"#).unwrap();
        assert_eq!(a.fingerprint(), req(5, b).fingerprint());
        assert_ne!(
            a.fingerprint(),
            req(6, serde_json::json!({"x": 1, "y": 2})).fingerprint()
        );
    }
}

// ---- webhooks (issue 13) ----

/// An event a webhook subscribes to: a transaction reaching one final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[schema(as = WebhookEvent)]
pub enum WebhookEvent {
    #[serde(rename = "transaction.committed")]
    Committed,
    #[serde(rename = "transaction.declined")]
    Declined,
    #[serde(rename = "transaction.failed")]
    Failed,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 3] = [
        WebhookEvent::Committed,
        WebhookEvent::Declined,
        WebhookEvent::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Committed => "transaction.committed",
            WebhookEvent::Declined => "transaction.declined",
            WebhookEvent::Failed => "transaction.failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == raw)
    }

    /// The final status that raises it.
    pub fn status(self) -> TxStatus {
        match self {
            WebhookEvent::Committed => TxStatus::Committed,
            WebhookEvent::Declined => TxStatus::Declined,
            WebhookEvent::Failed => TxStatus::Failed,
        }
    }
}
