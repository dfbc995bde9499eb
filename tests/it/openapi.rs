//! The OpenAPI document, generated from the code (`switchboard::edge::openapi_json`),
//! against the code: the same routes, roles and error statuses as
//! `switchboard::edge`, examples and answers that the live gateway accepts
//! and gives, the copy in `docs/openapi.json` and the one served on the ops
//! listener, the reference page at `/docs` in a real browser, and
//! schemathesis fuzzing the live gateway from the served document.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::edge::{ApiError, Unauthenticated};
use switchboard::edge::{Endpoint, ROUTES, Route};

use crate::harness::{self, Options, Reply, TestGateway, spawn_gateway_with};

/// The checked-in copy, for readers of the repository.
fn copy_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
}

/// Set to 1 to (re)write `docs/openapi.json` from the generator.
const WRITE_ENV: &str = "SWITCHBOARD_WRITE_OPENAPI";

fn doc_text() -> &'static str {
    switchboard::edge::openapi_json()
}

fn doc() -> Value {
    serde_json::from_str(doc_text()).expect("the generated document is JSON")
}

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Follows `$ref`s (`#/...`) until a value that is not one.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    for _ in 0..32 {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("only local $refs: {r}"));
                v = doc
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling $ref {r}"));
            }
            None => return v,
        }
    }
    panic!("$ref cycle");
}

/// `#/components/{kind}/{name}`.
fn component<'a>(doc: &'a Value, kind: &str, name: &str) -> &'a Value {
    doc.pointer(&format!("/components/{kind}/{name}"))
        .unwrap_or_else(|| panic!("no #/components/{kind}/{name}"))
}

fn operation<'a>(doc: &'a Value, route: &Route) -> &'a Value {
    let method = route.method.as_str().to_ascii_lowercase();
    doc["paths"][route.path]
        .get(&method)
        .unwrap_or_else(|| panic!("{} {} is not documented", route.method, route.path))
}

fn route(endpoint: Endpoint) -> &'static Route {
    ROUTES
        .iter()
        .find(|r| r.endpoint == endpoint)
        .expect("a route per endpoint")
}

/// The documented response of `op` for `status`, `$ref`s resolved.
fn response<'a>(doc: &'a Value, op: &'a Value, status: u16) -> Option<&'a Value> {
    op["responses"]
        .get(status.to_string())
        .map(|r| resolve(doc, r))
}

/// Every variant of [`ApiError`], once. The `match` makes a new variant a
/// compile error here, so this list and [`errors_of`] get revisited.
fn every_error() -> Vec<ApiError> {
    let all = vec![
        ApiError::Unauthorized(Unauthenticated::Invalid),
        ApiError::Forbidden("x"),
        ApiError::NotFound,
        ApiError::MethodNotAllowed {
            allow: "GET".into(),
        },
        ApiError::InvalidRequest("x".into()),
        ApiError::PayloadTooLarge { limit_bytes: 1 },
        ApiError::RequestTimeout,
        ApiError::UnsupportedMediaType,
        ApiError::InsufficientFunds,
        ApiError::DeclinedBySwitch,
        ApiError::TransactionIdReused,
        ApiError::CurrencyMismatch {
            account: "a".into(),
            currency: "EUR".into(),
        },
        ApiError::AccountExists,
        ApiError::TransactionInProgress {
            retry_after: Duration::from_secs(1),
        },
        ApiError::RateLimited {
            limit: 1,
            remaining: 0,
            reset_s: 1,
            retry_after_s: 1,
        },
        ApiError::Overloaded,
        ApiError::RateLimitUnavailable,
        ApiError::NoSwitchAvailable,
        ApiError::LedgerUnavailable,
        ApiError::DeadlineExceeded,
        ApiError::Internal,
    ];
    for e in &all {
        match e {
            ApiError::Unauthorized(_)
            | ApiError::Forbidden(_)
            | ApiError::NotFound
            | ApiError::MethodNotAllowed { .. }
            | ApiError::InvalidRequest(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::RequestTimeout
            | ApiError::UnsupportedMediaType
            | ApiError::InsufficientFunds
            | ApiError::DeclinedBySwitch
            | ApiError::TransactionIdReused
            | ApiError::CurrencyMismatch { .. }
            | ApiError::AccountExists
            | ApiError::TransactionInProgress { .. }
            | ApiError::RateLimited { .. }
            | ApiError::Overloaded
            | ApiError::RateLimitUnavailable
            | ApiError::NoSwitchAvailable
            | ApiError::LedgerUnavailable
            | ApiError::DeadlineExceeded
            | ApiError::Internal => {}
        }
    }
    all
}

fn error(code: &str) -> ApiError {
    every_error()
        .into_iter()
        .find(|e| e.code() == code)
        .unwrap_or_else(|| panic!("no ApiError with code {code}"))
}

/// The errors each operation can answer, read off `src/edge/`:
/// every route passes the per-IP and per-client limits (429; with the shared
/// limits in Redis failing closed, 503 `rate_limit_unavailable`), the `Host`
/// check (400), the token (401), the role (403) and the deadline backstop
/// (504); then
/// - bodies (`read_json`): 413, 415, 400, 408;
/// - ledger calls: `ledger_unavailable` (503), `internal` (500, a ledger
///   invariant broken), `not_found` where an id is looked up;
/// - `post_transaction`: the flow's refusals and outcomes.
///
/// `method_not_allowed` (405) belongs to no operation: it is what a path
/// answers to a method it has no operation for (checked separately).
fn errors_of(endpoint: Endpoint) -> Vec<&'static str> {
    let mut codes = vec![
        "invalid_request",
        "unauthorized",
        "forbidden",
        "rate_limited",
        "rate_limit_unavailable",
        "deadline_exceeded",
    ];
    codes.extend(match endpoint {
        Endpoint::PostTransaction => &[
            "payload_too_large",
            "request_timeout",
            "unsupported_media_type",
            "not_found",
            "transaction_in_progress",
            "insufficient_funds",
            "declined_by_switch",
            "transaction_id_reused",
            "currency_mismatch",
            "no_switch_available",
            "ledger_unavailable",
            "overloaded",
            "internal",
        ][..],
        Endpoint::GetTransaction | Endpoint::GetAccount | Endpoint::GetPostings => {
            &["not_found", "ledger_unavailable", "internal"][..]
        }
        Endpoint::ListTransactions => &["ledger_unavailable", "internal"][..],
        Endpoint::PostAccount => &[
            "payload_too_large",
            "request_timeout",
            "unsupported_media_type",
            "account_exists",
            "ledger_unavailable",
            "internal",
        ][..],
        Endpoint::PatchAccount => &[
            "payload_too_large",
            "request_timeout",
            "unsupported_media_type",
            "not_found",
            "ledger_unavailable",
            "internal",
        ][..],
        Endpoint::GetSwitches => &[][..],
        // ---- webhooks (issue 13) ----
        Endpoint::PostWebhook => &[
            "payload_too_large",
            "request_timeout",
            "unsupported_media_type",
            "ledger_unavailable",
            "internal",
        ][..],
        Endpoint::GetWebhooks => &["ledger_unavailable", "internal"][..],
        Endpoint::DeleteWebhook | Endpoint::GetFailedDeliveries | Endpoint::PostRedelivery => {
            &["not_found", "ledger_unavailable", "internal"][..]
        }
    });
    codes
}

/// The success statuses of each operation.
fn successes_of(endpoint: Endpoint) -> &'static [u16] {
    match endpoint {
        Endpoint::PostTransaction => &[201, 202],
        Endpoint::PostAccount => &[201],
        Endpoint::GetTransaction
        | Endpoint::ListTransactions
        | Endpoint::GetPostings
        | Endpoint::GetAccount
        | Endpoint::PatchAccount
        | Endpoint::GetSwitches => &[200],
        // ---- webhooks (issue 13) ----
        Endpoint::PostWebhook => &[201],
        Endpoint::GetWebhooks | Endpoint::DeleteWebhook | Endpoint::GetFailedDeliveries => &[200],
        Endpoint::PostRedelivery => &[202],
    }
}

/// The `error.code`s of a response's example(s).
fn example_codes(content: &Value) -> BTreeSet<String> {
    let mut values: Vec<&Value> = content.get("example").into_iter().collect();
    if let Some(examples) = content.get("examples").and_then(Value::as_object) {
        values.extend(examples.values().filter_map(|e| e.get("value")));
    }
    values
        .iter()
        .filter_map(|v| v["error"]["code"].as_str().map(str::to_owned))
        .collect()
}

fn header_names(doc: &Value, resp: &Value) -> BTreeSet<String> {
    resp.get("headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .filter(|(_, v)| !resolve(doc, v).is_null())
                .map(|(k, _)| k.to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn docs_openapi_json_is_the_generated_document() {
    if std::env::var(WRITE_ENV).as_deref() == Ok("1") {
        std::fs::write(copy_path(), doc_text()).expect("write docs/openapi.json");
    }
    let copy = std::fs::read_to_string(copy_path()).unwrap_or_default();
    assert!(
        copy == doc_text(),
        "docs/openapi.json is not what the code generates (src/edge/openapi.rs and the types \
         it derives from changed?): run `{WRITE_ENV}=1 cargo test --test it \
         openapi::docs_openapi_json_is_the_generated_document` and commit the file"
    );
}

#[test]
fn the_document_has_exactly_the_routes_of_the_code() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .filter(|k| METHODS.contains(&k.as_str()))
                .map(move |m| (m.to_ascii_uppercase(), path.clone()))
        })
        .collect();
    let code: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, code, "the document's paths vs edge::ROUTES");

    // Each route's operation is its own, documented: an id, words, a
    // success answer with a schema and an example.
    let mut ids = BTreeSet::new();
    for route in ROUTES {
        let label = format!("{} {}", route.method, route.path);
        let op = operation(&doc, route);
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(
            ids.insert(id.to_owned()),
            "{label}: operationId {id:?} twice"
        );
        for field in ["summary", "description"] {
            assert!(
                op[field].as_str().is_some_and(|s| s.len() > 10),
                "{label}: no {field}"
            );
        }
        for status in successes_of(route.endpoint) {
            let resp = response(&doc, op, *status)
                .unwrap_or_else(|| panic!("{label}: {status} undocumented"));
            let content = &resp["content"]["application/json"];
            assert!(content["schema"].is_object(), "{label} {status}: no schema");
            assert!(
                content.get("example").is_some() || content.get("examples").is_some(),
                "{label} {status}: no example"
            );
        }
    }
}

#[test]
fn every_operation_declares_bearer_security_roles_and_its_statuses() {
    let doc = doc();
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(scheme["bearerFormat"], "JWT");

    let error_schema = component(&doc, "schemas", "Error");
    let documented_codes: BTreeSet<&str> =
        error_schema["properties"]["error"]["properties"]["code"]["enum"]
            .as_array()
            .expect("Error.code enum")
            .iter()
            .filter_map(Value::as_str)
            .collect();
    let all = every_error();
    // Each body says the code and message the variant has.
    for e in &all {
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["error"]["code"], e.code(), "{e:?}");
        assert_eq!(body["error"]["message"], e.to_string(), "{e:?}");
    }
    let code_codes: BTreeSet<&str> = all.iter().map(ApiError::code).collect();
    assert_eq!(documented_codes, code_codes, "Error.code enum vs ApiError");

    for route in ROUTES {
        let label = format!("{} {}", route.method, route.path);
        let op = operation(&doc, route);
        // Security: bearer, and no anonymous alternative.
        let security = op["security"].as_array().expect("per-operation security");
        assert!(!security.is_empty(), "{label}: no security");
        for requirement in security {
            assert!(
                requirement.get("bearerAuth").is_some(),
                "{label}: a security requirement without bearerAuth: {requirement}"
            );
        }
        let roles: BTreeSet<&str> = op["x-roles"]
            .as_array()
            .expect("x-roles")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let code_roles: BTreeSet<&str> = route.roles.iter().map(|r| r.as_str()).collect();
        assert_eq!(roles, code_roles, "{label}: x-roles");
        if !route.roles.is_empty() {
            for status in [401, 403] {
                assert!(
                    response(&doc, op, status).is_some(),
                    "{label}: {status} undocumented"
                );
            }
        }

        // Exactly the statuses the code can give, each code in an example.
        let mut expected: BTreeSet<u16> = successes_of(route.endpoint).iter().copied().collect();
        let mut codes_by_status: BTreeMap<u16, BTreeSet<&str>> = BTreeMap::new();
        for code in errors_of(route.endpoint) {
            let status = error(code).status().as_u16();
            expected.insert(status);
            codes_by_status.entry(status).or_default().insert(code);
        }
        let documented: BTreeSet<u16> = op["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .map(|k| k.parse().unwrap_or_else(|_| panic!("{label}: status {k}")))
            .collect();
        assert_eq!(documented, expected, "{label}: documented statuses");
        for (status, codes) in &codes_by_status {
            let resp = response(&doc, op, *status).expect("checked above");
            let content = &resp["content"]["application/json"];
            assert_eq!(
                resolve(&doc, &content["schema"]),
                error_schema,
                "{label} {status}: not the Error schema"
            );
            let examples = example_codes(content);
            for code in codes {
                assert!(
                    examples.contains(*code),
                    "{label} {status}: no example with code {code} (has {examples:?})"
                );
            }
        }

        // The headers the code sets.
        let headers_of =
            |status: u16| header_names(&doc, response(&doc, op, status).expect("documented"));
        for status in &documented {
            assert!(
                headers_of(*status).contains("x-request-id"),
                "{label} {status}: X-Request-Id"
            );
        }
        for (status, needs) in [
            (401, &["www-authenticate"][..]),
            (
                429,
                &[
                    "retry-after",
                    "ratelimit-limit",
                    "ratelimit-remaining",
                    "ratelimit-reset",
                ][..],
            ),
        ] {
            let have = headers_of(status);
            for h in needs {
                assert!(have.contains(*h), "{label} {status}: header {h}");
            }
        }
        if route.endpoint == Endpoint::PostTransaction {
            assert!(
                headers_of(202).contains("location"),
                "{label} 202: Location"
            );
            assert!(headers_of(409).contains("retry-after"), "{label} 409");
            assert!(headers_of(503).contains("retry-after"), "{label} 503");
            for status in [201, 422, 503] {
                assert!(
                    headers_of(status).contains("idempotent-replayed"),
                    "{label} {status}: Idempotent-Replayed"
                );
            }
        }
        if matches!(
            route.endpoint,
            Endpoint::PostTransaction | Endpoint::PostAccount | Endpoint::PostWebhook
        ) {
            let body = &op["requestBody"];
            assert_eq!(body["required"], true, "{label}: requestBody.required");
            assert!(
                body["content"]["application/json"]["schema"].is_object(),
                "{label}: request schema"
            );
        }
    }

    // 405 is a path's answer to a method it lacks: documented once.
    let not_allowed = component(&doc, "responses", "MethodNotAllowed");
    assert!(header_names(&doc, not_allowed).contains("allow"));
    assert!(
        example_codes(&not_allowed["content"]["application/json"]).contains("method_not_allowed")
    );
}

#[test]
fn request_schemas_state_the_domain_rules() {
    let doc = doc();
    let schema = |name: &str| component(&doc, "schemas", name).clone();
    for id in ["TransactionId", "AccountId"] {
        assert_eq!(schema(id)["pattern"], "^[A-Za-z0-9._:-]{1,64}$", "{id}");
    }
    assert_eq!(schema("Currency")["pattern"], "^[A-Z]{3}$");
    let amount = schema("Amount");
    assert_eq!(amount["type"], "integer");
    assert_eq!(amount["minimum"], 1);
    let defaults = switchboard::config::Config::from_toml("").expect("default config");
    assert_eq!(amount["maximum"], defaults.ledger.amount_max);
    assert_eq!(
        schema("AccountRequest")["properties"]["openingBalance"]["maximum"],
        defaults.ledger.opening_balance_max
    );
    let limit = doc["paths"]["/v1/transactions"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "limit")
        .expect("a limit parameter");
    assert_eq!(limit["schema"]["minimum"], 1);
    assert_eq!(
        limit["schema"]["maximum"],
        defaults.ledger.history_page_rows_max
    );
    for name in [
        "DebitOrCreditRequest",
        "TransferRequest",
        "AccountRequest",
        "Error",
    ] {
        assert_eq!(
            schema(name)["additionalProperties"],
            false,
            "{name}: additionalProperties"
        );
    }
    assert_eq!(schema("Metadata")["type"], "object");
    assert_eq!(schema("Spenders")["maxItems"], defaults.ledger.spenders_max);
    let kinds: BTreeSet<String> = ["DebitOrCreditRequest", "TransferRequest"]
        .iter()
        .flat_map(|n| {
            schema(n)["properties"]["type"]["enum"]
                .as_array()
                .expect("type enum")
                .iter()
                .map(|v| v.as_str().expect("string").to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        kinds,
        ["credit", "debit", "transfer"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

// --- a small validator for the JSON Schema subset the document uses ----------

/// Checks `v` against `schema` (`$ref`, `type` (one or a list), `enum`,
/// `required`, `properties`, `additionalProperties: false`, `items`,
/// `oneOf`, `anyOf`, `allOf`, `not`, `minimum`/`maximum`,
/// `minLength`/`maxLength`); `pattern` is checked by the domain's own
/// parsers elsewhere. Returns the problems found, with their JSON paths.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut problems = Vec::new();
    // OpenAPI 3.1: `type` is a name or a list of names (`["string", "null"]`).
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            other => panic!("type {other}"),
        });
        if !ok {
            return vec![format!("{at}: expected {types:?}, got {v}")];
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        problems.push(format!("{at}: {v} not in {allowed:?}"));
    }
    if let Some(n) = v.as_f64() {
        if schema
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
        {
            problems.push(format!("{at}: {v} below minimum"));
        }
        if schema
            .get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m)
        {
            problems.push(format!("{at}: {v} above maximum"));
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if schema
            .get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
        {
            problems.push(format!("{at}: shorter than minLength"));
        }
        if schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            problems.push(format!("{at}: longer than maxLength"));
        }
    }
    if let Some(obj) = v.as_object() {
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for key in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(key) {
                    problems.push(format!("{at}: missing {key}"));
                }
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (key, value) in obj {
            match props.and_then(|p| p.get(key)) {
                Some(s) => problems.extend(validate(doc, s, value, &format!("{at}.{key}"))),
                None if schema["additionalProperties"] == false => {
                    problems.push(format!("{at}: undocumented property {key}"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            problems.extend(validate(doc, items, item, &format!("{at}[{i}]")));
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            problems.extend(validate(doc, s, v, at));
        }
    }
    if let Some(not) = schema.get("not") {
        // Only `not: {type: string, pattern}` is used: the reserved prefixes.
        let prefixes = not["pattern"].as_str().unwrap_or_default();
        assert_eq!(prefixes, "^(settlement|equity):", "an unexpected `not`");
        if v.as_str()
            .is_some_and(|s| s.starts_with("settlement:") || s.starts_with("equity:"))
        {
            problems.push(format!("{at}: matches `not`"));
        }
    }
    for (key, exactly_one) in [("oneOf", true), ("anyOf", false)] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let matching = options
                .iter()
                .filter(|s| validate(doc, s, v, at).is_empty())
                .count();
            let ok = if exactly_one {
                matching == 1
            } else {
                matching >= 1
            };
            if !ok {
                problems.push(format!("{at}: {matching} of the {key} options match"));
            }
        }
    }
    problems
}

/// Asserts that `reply` is documented for `endpoint` and matches the schema.
fn assert_conforms(doc: &Value, endpoint: Endpoint, reply: &Reply, what: &str) {
    let r = route(endpoint);
    let op = operation(doc, r);
    let resp = response(doc, op, reply.status).unwrap_or_else(|| {
        panic!(
            "{what}: {} {} answered {} which is not documented: {}",
            r.method, r.path, reply.status, reply.json
        )
    });
    let schema = &resp["content"]["application/json"]["schema"];
    let problems = validate(doc, schema, &reply.json, "$");
    assert!(
        problems.is_empty(),
        "{what}: {} body does not match the document: {problems:?}\n{}",
        reply.status,
        reply.json
    );
    if let Some(code) = reply.json["error"]["code"].as_str() {
        assert!(
            errors_of(endpoint).contains(&code),
            "{what}: code {code} is not in this operation's table"
        );
    }
}

fn request_examples(doc: &Value, endpoint: Endpoint) -> Vec<(String, Value)> {
    let content = &operation(doc, route(endpoint))["requestBody"]["content"]["application/json"];
    let mut out = Vec::new();
    if let Some(v) = content.get("example") {
        out.push(("example".to_owned(), v.clone()));
    }
    if let Some(examples) = content.get("examples").and_then(Value::as_object) {
        for (name, e) in examples {
            out.push((name.clone(), e["value"].clone()));
        }
    }
    out
}

/// Generous deadlines: CI runs these beside the whole suite on two cores,
/// and a 503 `ledger_unavailable` or a 504 there would be noise, not news.
const PATIENT: &str = "[server]\nrequest_deadline_ms = 60000\n[database]\nacquire_timeout_ms = 30000\n\
[reconciler]\nstale_after_ms = 180000\n";

fn bob_token(gw: &TestGateway) -> String {
    gw.token("bob", &["transact"])
}

/// The accounts the document's examples name: `alice-eur` (alice's) and `bob-eur`.
async fn example_accounts(gw: &TestGateway) {
    gw.account("alice-eur", "alice", "EUR", 10_000).await;
    gw.account("bob-eur", "bob", "EUR", 500).await;
}

#[tokio::test]
async fn the_examples_are_accepted_and_the_answers_match_the_document() {
    let doc = doc();
    let sims = harness::spawn_sims(1).await;
    let gw = spawn_gateway_with(Options {
        switches: harness::switch_list(&sims),
        layers: vec![PATIENT.into()],
        ..Default::default()
    })
    .await;
    example_accounts(&gw).await;
    let alice = gw.token("alice", &["transact"]);
    let auditor = gw.token("audit", &["auditor"]);
    let operator = gw.token("ops", &["operator"]);

    // POST /v1/accounts: its example creates an account.
    let account_examples = request_examples(&doc, Endpoint::PostAccount);
    assert!(
        !account_examples.is_empty(),
        "POST /v1/accounts has no example"
    );
    for (name, body) in &account_examples {
        let schema = &operation(&doc, route(Endpoint::PostAccount))["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(
            validate(&doc, schema, body, "$"),
            Vec::<String>::new(),
            "{name}"
        );
        let r = gw.post("/v1/accounts", &operator, body).await;
        assert_eq!(r.status, 201, "account example {name}: {}", r.json);
        assert_conforms(&doc, Endpoint::PostAccount, &r, name);
        let again = gw.post("/v1/accounts", &operator, body).await;
        assert_eq!(again.code(), "account_exists");
        assert_conforms(&doc, Endpoint::PostAccount, &again, name);
    }

    // POST /v1/transactions: every example commits, and reads back as documented.
    let tx_examples = request_examples(&doc, Endpoint::PostTransaction);
    assert!(
        tx_examples.iter().any(|(_, b)| b["type"] == "debit"),
        "POST /v1/transactions needs a debit example"
    );
    let tx_schema = &operation(&doc, route(Endpoint::PostTransaction))["requestBody"]["content"]["application/json"]
        ["schema"];
    for (name, body) in &tx_examples {
        assert_eq!(
            validate(&doc, tx_schema, body, "$"),
            Vec::<String>::new(),
            "example {name} does not match its own schema"
        );
        let r = gw.post("/v1/transactions", &alice, body).await;
        assert_eq!(r.status, 201, "transaction example {name}: {}", r.json);
        assert_eq!(r.json["status"], "committed");
        assert_eq!(r.json["transactionId"], body["transactionId"]);
        assert_conforms(&doc, Endpoint::PostTransaction, &r, name);

        let replay = gw.post("/v1/transactions", &alice, body).await;
        assert_eq!(replay.status, 201);
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        assert_conforms(&doc, Endpoint::PostTransaction, &replay, name);

        let id = body["transactionId"].as_str().expect("transactionId");
        for token in [&alice, &auditor] {
            let read = gw.get(&format!("/v1/transactions/{id}"), token).await;
            assert_eq!(read.status, 200, "{}", read.json);
            assert_conforms(&doc, Endpoint::GetTransaction, &read, name);
        }
    }
    // 2500 debited, 1000 credited, 500 transferred away.
    assert_eq!(gw.balance("alice-eur").await, 10_000 - 2500 + 1000 - 500);

    for (token, who) in [(&alice, "owner"), (&auditor, "auditor")] {
        let r = gw.get("/v1/accounts/alice-eur", token).await;
        assert_eq!(r.status, 200, "{who}");
        assert_conforms(&doc, Endpoint::GetAccount, &r, who);
    }
    let r = gw.get("/v1/switches", &operator).await;
    assert_eq!(r.status, 200);
    assert_conforms(&doc, Endpoint::GetSwitches, &r, "switches");

    // History: pages, the statement, and their refusals.
    for (token, who) in [(&alice, "owner"), (&auditor, "auditor")] {
        let r = gw.get("/v1/transactions?limit=1", token).await;
        assert_eq!(r.status, 200, "{who}: {}", r.json);
        assert!(r.json["nextCursor"].is_string(), "{who}: {}", r.json);
        assert_conforms(&doc, Endpoint::ListTransactions, &r, who);
        let next = r.json["nextCursor"].as_str().unwrap_or_default();
        let r = gw
            .get(&format!("/v1/transactions?limit=200&cursor={next}"), token)
            .await;
        assert_eq!(r.json["nextCursor"], Value::Null, "{who}: {}", r.json);
        assert_conforms(&doc, Endpoint::ListTransactions, &r, who);
        let r = gw.get("/v1/accounts/alice-eur/postings", token).await;
        assert_eq!(r.status, 200, "{who}: {}", r.json);
        assert_conforms(&doc, Endpoint::GetPostings, &r, who);
    }
    for (endpoint, path, token, status) in [
        (
            Endpoint::ListTransactions,
            "/v1/transactions?limit=0",
            &alice,
            400,
        ),
        (
            Endpoint::ListTransactions,
            "/v1/transactions?cursor=x",
            &alice,
            400,
        ),
        (
            Endpoint::ListTransactions,
            "/v1/transactions",
            &operator,
            403,
        ),
        (
            Endpoint::GetPostings,
            "/v1/accounts/alice-eur/postings?sort=1",
            &alice,
            400,
        ),
        (
            Endpoint::GetPostings,
            "/v1/accounts/alice-eur/postings",
            &bob_token(&gw),
            404,
        ),
        (
            Endpoint::GetPostings,
            "/v1/accounts/nope/postings",
            &auditor,
            404,
        ),
    ] {
        let r = gw.get(path, token).await;
        assert_eq!(r.status, status, "{path}: {}", r.json);
        assert_conforms(&doc, endpoint, &r, path);
    }

    // Refusals: each documented for its operation, with the Error schema.
    let unknown = harness::debit("tx-doc-x", "nobody", 1);
    let reused = harness::debit("tx-2024-0001", "alice-eur", 1);
    let broke = harness::debit("tx-doc-big", "bob-eur", 5001);
    let bob = gw.token("bob", &["transact"]);
    for (what, token, body, status) in [
        ("no account", &alice, &unknown, 404),
        ("id reused", &alice, &reused, 422),
        ("overdraw", &bob, &broke, 422),
        ("wrong role", &auditor, &reused, 403),
        ("bad token", &"not-a-token".to_owned(), &reused, 401),
        ("bad body", &alice, &json!({"transactionId": 1}), 400),
    ] {
        let r = gw.post("/v1/transactions", token, body).await;
        assert_eq!(r.status, status, "{what}: {}", r.json);
        assert_conforms(&doc, Endpoint::PostTransaction, &r, what);
    }
    let r = gw
        .post(
            "/v1/accounts",
            &operator,
            &json!({"accountId": "settlement:x", "owner": "o", "currency": "EUR"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_conforms(&doc, Endpoint::PostAccount, &r, "reserved prefix");
    let raw = gw
        .client
        .post(format!("{}/v1/transactions", gw.base))
        .bearer_auth(&alice)
        .header("content-type", "text/plain")
        .body(reused.to_string())
        .send()
        .await
        .expect("send");
    let r = harness::read(raw).await;
    assert_eq!(r.status, 415);
    assert_conforms(&doc, Endpoint::PostTransaction, &r, "content type");
    for (endpoint, path, token) in [
        (Endpoint::GetTransaction, "/v1/transactions/nope", &alice),
        (
            Endpoint::GetTransaction,
            "/v1/transactions/tx-2024-0001",
            &bob,
        ),
        (Endpoint::GetAccount, "/v1/accounts/bob-eur", &alice),
        (Endpoint::GetSwitches, "/v1/switches", &alice),
        (Endpoint::GetAccount, "/v1/accounts/alice-eur", &operator),
    ] {
        let r = gw.get(path, token).await;
        assert!(matches!(r.status, 403 | 404), "{path}: {}", r.status);
        assert_conforms(&doc, endpoint, &r, path);
    }
    // A documented path with another method: 405 with Allow, as documented.
    let r = gw.get("/v1/accounts", &operator).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let not_allowed = component(&doc, "responses", "MethodNotAllowed");
    let problems = validate(
        &doc,
        &not_allowed["content"]["application/json"]["schema"],
        &r.json,
        "$",
    );
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test]
async fn the_ops_listener_serves_the_document() {
    let gw = spawn_gateway_with(Options::default()).await;
    let (status, body) = gw.ops_get("/openapi.json").await;
    assert_eq!(status, 200, "GET /openapi.json on the ops listener: {body}");
    assert_eq!(
        body,
        doc_text(),
        "the ops listener must serve the generated document"
    );
}

// --- the reference page ----------------------------------------------------------

/// Every request Chromium's net log (`--log-net-log`) records starting:
/// its URL and its initiator (the origin of the page that asked for it;
/// `not an origin` for a navigation and for the browser's own requests).
fn logged_requests(net_log: &str) -> Vec<(String, String)> {
    let log: Value = serde_json::from_str(net_log).expect("the net log is JSON");
    let start = &log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"];
    assert!(
        start.is_u64(),
        "no URL_REQUEST_START_JOB in the net log's constants"
    );
    log["events"]
        .as_array()
        .expect("net log events")
        .iter()
        .filter(|e| e["type"] == *start)
        .map(|e| {
            let p = &e["params"];
            let text = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
            (text("url"), text("initiator"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_page_renders_every_operation_from_this_machine_alone() {
    let gw = spawn_gateway_with(Options::default()).await;
    let url = format!("http://{}/docs", gw.ops);

    // As served: Swagger UI's files from this listener, locked to it.
    let resp = reqwest::get(&url).await.expect("GET /docs");
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = resp.text().await.expect("page");
    for asset in [
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui.css",
        "/docs/init.js",
    ] {
        assert!(html.contains(asset), "the page loads {asset}");
        let (status, body) = gw.ops_get(asset).await;
        assert_eq!(status, 200, "{asset}");
        assert!(body.len() > 100, "{asset}: {} bytes", body.len());
    }
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "{html}"
    );

    // In a real browser: it fetches the document and draws each operation.
    let dir = tempfile::tempdir().expect("temp dir");
    let net_log = dir.path().join("net-log.json");
    let dom = crate::status_page::chromium(
        &[
            "--dump-dom",
            "--virtual-time-budget=20000",
            &format!("--log-net-log={}", net_log.display()),
            "--net-log-capture-mode=Default",
        ],
        &url,
    )
    .await;
    let doc = doc();
    for route in ROUTES {
        let op = operation(&doc, route);
        let tag = op["tags"][0].as_str().expect("a tag");
        let id = op["operationId"].as_str().expect("an operationId");
        let anchor = format!("id=\"operations-{tag}-{id}\"");
        assert!(
            dom.contains(&anchor),
            "{} {}: Swagger UI drew no {anchor}:\n{}",
            route.method,
            route.path,
            &dom[..dom.len().min(4000)]
        );
        assert!(
            dom.contains(&format!("data-path=\"{}\"", route.path)),
            "{}: path not drawn",
            route.path
        );
    }
    assert!(dom.contains("Switchboard client API"), "the title is drawn");

    // The page asked this listener for everything it drew, and nothing
    // else for anything. (Chromium's own background requests, initiated by
    // no page, went to the proxy that is not there: see `chromium`.)
    let log = std::fs::read_to_string(&net_log).expect("Chromium wrote its net log");
    let requests = logged_requests(&log);
    let origin = format!("http://{}", gw.ops);
    let by_page: Vec<&str> = requests
        .iter()
        .filter(|(_, initiator)| *initiator == origin)
        .map(|(url, _)| url.as_str())
        .collect();
    for needed in [
        "/docs/swagger-ui-bundle.js",
        "/docs/init.js",
        "/openapi.json",
    ] {
        assert!(
            by_page.contains(&format!("{origin}{needed}").as_str()),
            "the net log shows no request of the page for {needed}: {requests:?}"
        );
    }
    let elsewhere: Vec<&&str> = by_page
        .iter()
        .filter(|url| !url.starts_with(&format!("{origin}/")) && !url.starts_with("data:"))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "the page asked for something not on the ops listener: {elsewhere:?}"
    );

    let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/api-reference.png");
    let _ = std::fs::remove_file(&png);
    crate::status_page::chromium(
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,1600",
            "--virtual-time-budget=20000",
        ],
        &url,
    )
    .await;
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
}

// --- schemathesis ---------------------------------------------------------------

/// What schemathesis checks (see `schemathesis run --help`).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
missing_required_header,unsupported_method,allow_header_conformance,ignored_auth,\
ensure_resource_availability";

const INSTALL_HINT: &str = "run scripts/test.sh (it installs schemathesis) or `python3 -m pip install 'schemathesis>=4,<5'`";

/// The `schemathesis` command's version, or a failure saying how to get it.
fn schemathesis_version() -> String {
    let out = std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("schemathesis is not installed ({e}): {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "`schemathesis --version` failed ({}): {INSTALL_HINT}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test]
async fn schemathesis_finds_no_server_error() {
    let version = schemathesis_version();
    let sims = harness::spawn_sims(1).await;
    let gw = spawn_gateway_with(Options {
        switches: harness::switch_list(&sims),
        layers: vec![PATIENT.into()],
        ..Default::default()
    })
    .await;
    example_accounts(&gw).await;
    let token = gw.token("alice", &["transact", "auditor", "operator"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = harness::certs().ca_cert();
    let junit = dir.path().join("junit.xml");

    let mut cmd = tokio::process::Command::new("schemathesis");
    cmd.arg("run")
        // The document as the gateway serves it (generated), not the copy.
        .arg(format!("http://{}/openapi.json", gw.ops))
        .args(["--url", &gw.base])
        .arg("--tls-verify")
        .arg(&ca)
        .args(["--header", &format!("Authorization: Bearer {token}")])
        // No 5xx, and every answer as documented (status, content type,
        // headers, body schema, 405 with `Allow`, 401 without the token);
        // schema-invalid input refused. Not `positive_data_acceptance`: the
        // document cannot say "`to` differs from `from`" or "an id is used once".
        .args(["--checks", CHECKS])
        .args(["--max-examples", "50"])
        .args(["--workers", "2"])
        .args(["--request-timeout", "90"])
        .args(["--generation-database", "none"])
        .args(["--seed", "20240601"])
        .args(["--no-color", "--output-truncate", "true"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&junit)
        // Everything it writes (hypothesis' cache, reports) stays in the tempdir.
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("XDG_CACHE_HOME", dir.path())
        .env("NO_COLOR", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("schemathesis did not finish within 180 s")
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis ({version}) found problems (exit {}):\n{}\n{}",
        out.status,
        tail(&stdout, 200),
        tail(&stderr, 40)
    );
    // It really exercised every operation.
    let report = std::fs::read_to_string(&junit).expect("schemathesis' JUnit report");
    for route in ROUTES {
        let label = format!("name=\"{} {}\"", route.method, route.path);
        assert!(
            report.contains(&label),
            "schemathesis did not test {} {}:\n{report}\n{}",
            route.method,
            route.path,
            tail(&stdout, 40)
        );
    }
    assert!(
        report.contains("failures=\"0\"") && report.contains("errors=\"0\""),
        "{report}"
    );
    // The gateway saw the traffic and is still well.
    let (_, metrics) = gw.ops_get("/metrics").await;
    assert!(
        harness::metric(
            &metrics,
            "switchboard_http_requests_total{route=\"/v1/transactions\",status=\"400\"}"
        ) >= 1.0,
        "no 400 on POST /v1/transactions: did the fuzzing reach the gateway?"
    );
    let alice = gw.token("alice", &["transact"]);
    assert_eq!(gw.get("/v1/accounts/alice-eur", &alice).await.status, 200);
}
