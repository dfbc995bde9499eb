//! Property tests, in-process: the request-parsing edge
//! (`parse_json::<TransactionBody>` then `.parse`) and token verification.
//! Bounded to 256 cases each so the file runs in seconds.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};
use switchboard::domain::{Movement, TransactionRequest};
use switchboard::edge::ApiError;
use switchboard::edge::Authenticator;
use switchboard::edge::{TransactionBody, parse_json};

use crate::harness;

/// `ledger.amount_max`'s default, as the gateway parses with it.
const AMOUNT_MAX: i64 = 100_000_000_000;
const METADATA_BYTES_MAX: usize = 4096;
const FIELDS: &[&str] = &[
    "transactionId",
    "type",
    "accountId",
    "from",
    "to",
    "amount",
    "currency",
    "metadata",
];

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // Failures print their minimal input; no regression files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn parse(bytes: &[u8]) -> Result<TransactionRequest, ApiError> {
    parse_json::<TransactionBody>(bytes)?.parse(AMOUNT_MAX)
}

// --- the domain rules, restated independently ---------------------------------

fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn is_currency(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// Every accepted request obeys the rules of docs/design.md and domain.rs.
fn check_domain_rules(req: &TransactionRequest) -> Result<(), TestCaseError> {
    prop_assert!(is_id(req.id.as_str()), "id {:?}", req.id);
    let amount = req.amount.minor_units();
    prop_assert!((1..=AMOUNT_MAX).contains(&amount), "amount {amount}");
    prop_assert!(
        is_currency(req.currency.as_str()),
        "currency {:?}",
        req.currency
    );
    match &req.movement {
        Movement::Debit { account } | Movement::Credit { account } => {
            prop_assert!(is_id(account.as_str()), "account {account}");
        }
        Movement::Transfer { from, to } => {
            prop_assert!(is_id(from.as_str()) && is_id(to.as_str()));
            prop_assert_ne!(from, to);
        }
    }
    if let Some(m) = &req.metadata {
        prop_assert!(m.is_object(), "metadata {m}");
        prop_assert!(m.to_string().len() <= METADATA_BYTES_MAX);
    }
    Ok(())
}

/// Whether the gateway must accept `body`, by the documented rules.
fn must_accept(body: &Map<String, Value>) -> bool {
    if body.keys().any(|k| !FIELDS.contains(&k.as_str())) {
        return false;
    }
    // A required string, an optional (absent or null) string, or a wrong type.
    let required = |k: &str| body.get(k).and_then(Value::as_str);
    let optional = |k: &str| match body.get(k) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s.as_str())),
        Some(_) => None,
    };
    let (Some(account), Some(from), Some(to)) =
        (optional("accountId"), optional("from"), optional("to"))
    else {
        return false;
    };
    let id_ok = required("transactionId").is_some_and(is_id);
    let movement_ok = match required("type") {
        Some("debit" | "credit") => from.is_none() && to.is_none() && account.is_some_and(is_id),
        Some("transfer") => {
            account.is_none() && from.is_some_and(is_id) && to.is_some_and(is_id) && from != to
        }
        _ => false,
    };
    let amount_ok = body
        .get("amount")
        .and_then(Value::as_i64)
        .is_some_and(|a| (1..=AMOUNT_MAX).contains(&a));
    let currency_ok = required("currency").is_some_and(is_currency);
    let metadata_ok = match body.get("metadata") {
        None | Some(Value::Null) => true,
        Some(m @ Value::Object(_)) => m.to_string().len() <= METADATA_BYTES_MAX,
        Some(_) => false,
    };
    id_ok && movement_ok && amount_ok && currency_ok && metadata_ok
}

// --- strategies ------------------------------------------------------------------

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(arb_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELDS).prop_map(str::to_owned),
        1 => "\\PC{0,8}",
    ]
}

fn valid_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,64}"
}

/// Mostly right, sometimes subtly wrong, sometimes the wrong type.
fn id_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        16 => valid_id().prop_map(Value::from),
        1 => "[A-Za-z0-9._:-]{65,70}".prop_map(Value::from),
        1 => Just(Value::from("")),
        2 => "\\PC{0,10}".prop_map(Value::from),
        1 => "[a-z]{1,5}[ \u{0}\u{200f}/é😀][a-z]{0,5}".prop_map(Value::from),
        1 => arb_json(),
    ]
}

fn account_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        12 => prop::sample::select(&["alice-eur", "bob-eur", "a", "x:y.z_1-2"][..]).prop_map(Value::from),
        1 => id_value(),
    ]
}

fn amount_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        16 => (1..=AMOUNT_MAX).prop_map(Value::from),
        2 => prop::sample::select(&[0, -1, AMOUNT_MAX, AMOUNT_MAX + 1, i64::MAX, i64::MIN][..])
            .prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::from),
        1 => prop::sample::select(&[1.0, 0.5, 1e3, -0.0, 1e300][..]).prop_map(Value::from),
        1 => (1..1000i64).prop_map(|n| Value::from(n.to_string())),
        1 => arb_json(),
    ]
}

fn currency_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        16 => prop::sample::select(&["EUR", "USD", "JPY"][..]).prop_map(Value::from),
        2 => "[A-Za-z]{2,4}".prop_map(Value::from),
        1 => "\\PC{0,4}".prop_map(Value::from),
        1 => arb_json(),
    ]
}

fn metadata_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => prop::collection::btree_map("[a-z]{1,6}", arb_json(), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => (4000usize..4200).prop_map(|n| json!({ "pad": "x".repeat(n) })),
        1 => Just(Value::Null),
        1 => arb_json(),
    ]
}

fn kind_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        16 => prop::sample::select(&["debit", "credit", "transfer"][..]).prop_map(Value::from),
        1 => prop::sample::select(&["Debit", "refund", "", "transfer "][..]).prop_map(Value::from),
        1 => arb_json(),
    ]
}

/// A body near the valid ones: each field present or not, mostly well formed,
/// the account fields mostly those of its `type` (about half are valid).
fn near_valid_body() -> impl Strategy<Value = Map<String, Value>> {
    kind_value()
        .prop_flat_map(|kind| {
            let transfer = kind == "transfer";
            let (p_account, p_from_to) = if transfer { (0.05, 0.97) } else { (0.97, 0.05) };
            (
                Just(kind),
                prop::option::weighted(0.97, id_value()),
                prop::option::weighted(p_account, account_value()),
                prop::option::weighted(p_from_to, account_value()),
                prop::option::weighted(p_from_to, account_value()),
                prop::option::weighted(0.97, amount_value()),
                prop::option::weighted(0.97, currency_value()),
                prop::option::weighted(0.4, metadata_value()),
                prop::option::weighted(0.03, ("\\PC{1,8}", arb_json())),
            )
        })
        .prop_map(
            |(kind, id, account, from, to, amount, currency, metadata, extra)| {
                let mut body = Map::new();
                body.insert("type".into(), kind);
                for (k, v) in [
                    ("transactionId", id),
                    ("accountId", account),
                    ("from", from),
                    ("to", to),
                    ("amount", amount),
                    ("currency", currency),
                    ("metadata", metadata),
                ] {
                    if let Some(v) = v {
                        body.insert(k.into(), v);
                    }
                }
                if let Some((k, v)) = extra {
                    body.insert(k, v);
                }
                body
            },
        )
}

/// JSON text of `v` with every object's keys in reverse sorted order.
fn reversed_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let parts: Vec<String> = m
                .iter()
                .rev()
                .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), reversed_json(v)))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(reversed_json).collect();
            format!("[{}]", parts.join(","))
        }
        other => other.to_string(),
    }
}

fn debit(id: &str, amount: i64, metadata: &Value) -> Value {
    harness::with_metadata(harness::debit(id, "alice-eur", amount), metadata.clone())
}

fn small_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-z]{1,6}", arb_json(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
        .prop_filter("within the metadata limit", |m| {
            m.to_string().len() <= METADATA_BYTES_MAX
        })
}

/// The oracle test below means something only if its bodies are often
/// valid and often not.
#[test]
fn near_valid_bodies_are_both_valid_and_invalid() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = near_valid_body();
    let valid = (0..256)
        .filter(|_| must_accept(&strategy.new_tree(&mut runner).expect("a body").current()))
        .count();
    assert!((64..=224).contains(&valid), "{valid} of 256 bodies valid");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parsing_arbitrary_bytes_never_panics_and_refuses_with_400(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        match parse(&bytes) {
            Ok(req) => check_domain_rules(&req)?,
            Err(e) => prop_assert_eq!(e.code(), "invalid_request"),
        }
    }

    #[test]
    fn parsing_arbitrary_json_never_panics_and_accepts_only_valid_requests(v in arb_json()) {
        let bytes = serde_json::to_vec(&v).expect("serialize");
        match parse(&bytes) {
            Ok(req) => check_domain_rules(&req)?,
            Err(e) => prop_assert_eq!(e.code(), "invalid_request"),
        }
    }

    #[test]
    fn mangled_json_never_panics(
        v in arb_json(),
        cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = serde_json::to_vec(&v).expect("serialize");
        for (at, byte) in cuts {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Ok(req) = parse(&bytes) {
            check_domain_rules(&req)?;
        }
    }

    #[test]
    fn a_body_is_accepted_exactly_when_it_obeys_the_rules(body in near_valid_body()) {
        let bytes = serde_json::to_vec(&body).expect("serialize");
        let expected = must_accept(&body);

        match parse(&bytes) {
            Ok(req) => {
                prop_assert!(expected, "accepted a body the rules refuse: {:?}", body);
                check_domain_rules(&req)?;
                // And it is the request that was sent.
                prop_assert_eq!(Some(req.id.as_str()), body["transactionId"].as_str());
                prop_assert_eq!(Some(req.amount.minor_units()), body["amount"].as_i64());
                prop_assert_eq!(Some(req.currency.as_str()), body["currency"].as_str());
                prop_assert_eq!(req.movement.kind().as_str(), body["type"].as_str().unwrap_or_default());
                match &req.movement {
                    Movement::Debit { account } | Movement::Credit { account } => {
                        prop_assert_eq!(Some(account.as_str()), body["accountId"].as_str());
                    }
                    Movement::Transfer { from, to } => {
                        prop_assert_eq!(Some(from.as_str()), body["from"].as_str());
                        prop_assert_eq!(Some(to.as_str()), body["to"].as_str());
                    }
                }
                // As serde_json reads it back: without its `float_roundtrip`
                // feature a float may come back one ULP off (reported).
                let metadata = body
                    .get("metadata")
                    .filter(|m| !m.is_null())
                    .map(|m| serde_json::from_str::<Value>(&m.to_string()).expect("JSON"));
                prop_assert_eq!(req.metadata, metadata);
            }
            Err(e) => {
                prop_assert!(!expected, "refused a valid body ({}): {:?}", e, body);
                prop_assert_eq!(e.code(), "invalid_request");
                prop_assert_eq!(e.status().as_u16(), 400);
            }
        }
    }

    #[test]
    fn only_whitespace_may_follow_the_body(
        id in valid_id(),
        amount in 1..=AMOUNT_MAX,
        space in "[ \t\r\n]{0,4}",
        trailer in "[^ \t\r\n]\\PC{0,16}",
    ) {
        let body = harness::debit(&id, "a", amount).to_string();
        let spaced = format!("{body}{space}");
        prop_assert!(parse(spaced.as_bytes()).is_ok(), "refused trailing whitespace");
        // `{...} x`, `{...}{...}`: one request must be one JSON value, or a
        // second reader of the same bytes could see another request.
        let with_trailer = format!("{body}{space}{trailer}");
        let parsed = parse(with_trailer.as_bytes());
        prop_assert!(parsed.is_err(), "accepted trailing bytes: {:?}", with_trailer);
    }

    #[test]
    fn the_fingerprint_ignores_key_order_and_the_id(
        id_a in valid_id(),
        id_b in valid_id(),
        amount in 1..=AMOUNT_MAX,
        metadata in small_object(),
    ) {
        let body = debit(&id_a, amount, &metadata);
        let sorted = parse(body.to_string().as_bytes()).expect("valid");
        let reversed = parse(reversed_json(&body).as_bytes()).expect("valid, reversed");
        prop_assert_eq!(&sorted, &reversed);
        prop_assert_eq!(sorted.fingerprint(), reversed.fingerprint());
        let other_id = parse(debit(&id_b, amount, &metadata).to_string().as_bytes()).expect("valid");
        prop_assert_eq!(sorted.fingerprint(), other_id.fingerprint());
    }

    #[test]
    fn the_fingerprint_changes_with_the_payload(
        a in 1..=AMOUNT_MAX,
        b in 1..=AMOUNT_MAX,
        metadata in small_object(),
    ) {
        prop_assume!(a != b);
        let fa = parse(debit("t", a, &metadata).to_string().as_bytes()).expect("valid").fingerprint();
        let fb = parse(debit("t", b, &metadata).to_string().as_bytes()).expect("valid").fingerprint();
        prop_assert_ne!(&fa, &fb, "amounts {} and {}", a, b);
        let mut credit = debit("t", a, &metadata);
        credit["type"] = json!("credit");
        let fc = parse(credit.to_string().as_bytes()).expect("valid").fingerprint();
        prop_assert_ne!(&fa, &fc, "debit and credit");
        let mut usd = debit("t", a, &metadata);
        usd["currency"] = json!("USD");
        let fu = parse(usd.to_string().as_bytes()).expect("valid").fingerprint();
        prop_assert_ne!(&fa, &fu, "EUR and USD");
        let mut more = metadata.clone();
        more["zz-extra"] = json!(1);
        let fm = parse(debit("t", a, &more).to_string().as_bytes()).expect("valid").fingerprint();
        prop_assert_ne!(&fa, &fm, "metadata");
    }
}

// --- tokens --------------------------------------------------------------------------

fn auth() -> &'static Authenticator {
    static AUTH: std::sync::OnceLock<Authenticator> = std::sync::OnceLock::new();
    AUTH.get_or_init(harness::test_auth)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An authenticator with another development secret.
fn other_auth(secret: &str) -> Authenticator {
    let secret = format!("[auth]\ndev_hs256_secret = \"{secret}\"\n");
    let config = harness::test_config("sqlite::memory:", &[&secret]);
    Authenticator::new(&config.auth).expect("auth")
}

fn roles() -> impl Strategy<Value = Vec<&'static str>> {
    prop::sample::subsequence(&["transact", "auditor", "operator"][..], 1..=3)
}

const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

#[test]
fn a_genuine_token_verifies() {
    // Without this the properties below could pass by refusing everything.
    let token = auth().sign("alice", &["transact"], 3600).expect("sign");
    let who = auth()
        .verify(Some(&format!("Bearer {token}")))
        .expect("a genuine token");
    assert_eq!(who.client.as_str(), "alice");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_strings_are_never_tokens(s in "\\PC{0,300}") {
        let header = format!("Bearer {s}");
        prop_assert!(auth().verify(Some(&header)).is_err());
        prop_assert!(auth().verify(Some(&s)).is_err());
    }

    #[test]
    fn arbitrary_header_bytes_never_verify(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let header = format!("Bearer {}", String::from_utf8_lossy(&bytes));
        prop_assert!(auth().verify(Some(&header)).is_err());
    }

    #[test]
    fn jwt_shaped_forgeries_are_refused(
        alg in prop::sample::select(&["HS256", "none", "None", "HS512", "RS256", "ES256", "EdDSA", ""][..]),
        kid in prop::option::of("[a-z0-9]{1,8}"),
        sub in "[a-z]{1,12}",
        roles in roles(),
        signature in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let claims = json!({"sub": sub, "exp": 4_102_444_800u64, "iat": 1_700_000_000u64, "roles": roles});
        let body = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        for token in [format!("{body}.{}", b64(&signature)), format!("{body}."), body.clone()] {
            prop_assert!(
                auth().verify(Some(&format!("Bearer {token}"))).is_err(),
                "accepted a forged token {}", token
            );
        }
    }

    #[test]
    fn tokens_signed_with_another_secret_are_refused(
        secret in "[a-f0-9]{32,64}",
        sub in "[a-z]{1,12}",
        roles in roles(),
    ) {
        prop_assume!(secret != harness::SECRET);
        let token = other_auth(&secret).sign(&sub, &roles, 3600).expect("sign");
        let header = format!("Bearer {token}");
        prop_assert!(auth().verify(Some(&header)).is_err());
    }

    #[test]
    fn a_tampered_token_is_refused(
        sub in "[a-z]{1,12}",
        roles in roles(),
        at in any::<prop::sample::Index>(),
        with in prop::sample::select(BASE64URL),
    ) {
        let token = auth().sign(&sub, &roles, 3600).expect("sign");
        // The genuine one verifies, as these roles.
        let who = auth().verify(Some(&format!("Bearer {token}"))).expect("genuine");
        prop_assert_eq!(who.client.as_str(), sub.as_str());
        let mut bytes = token.into_bytes();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != b'.' && bytes[i] != with);
        bytes[i] = with;
        let tampered = String::from_utf8(bytes).expect("ASCII");
        prop_assert!(
            auth().verify(Some(&format!("Bearer {tampered}"))).is_err(),
            "accepted a token changed at byte {}", i
        );
    }
}
