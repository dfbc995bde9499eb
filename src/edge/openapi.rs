//! The OpenAPI document of the client API, generated from the code (utoipa):
//! the paths and roles from [`ROUTES`], one operation per [`Endpoint`] (an
//! exhaustive `match`: a new endpoint does not compile until it is
//! documented here), the schemas derived from the types the handlers
//! serialize and parse (`TransactionView`, `AccountView`, `SwitchesView`,
//! `ErrorBody`, the request bodies, the domain types), and the error
//! examples from [`ApiError`] itself.
//!
//! Served by the ops listener at `GET /openapi.json` (and rendered at
//! `GET /docs`); `docs/openapi.json` is a copy of [`document_json`] for
//! readers of the repository, checked by `tests/it/openapi.rs`.

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{
    ComponentsBuilder, KnownFormat, ObjectBuilder, Ref, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ContentBuilder, Header, InfoBuilder, OpenApi, OpenApiBuilder, Paths, RefOr, Required, Response,
    ResponseBuilder, ServerBuilder,
};

use crate::domain::Role;
use crate::edge::body::{AccountBody, AccountPatchBody, TransactionBody};
use crate::edge::error::{ApiError, ErrorBody, Unauthenticated};
use crate::edge::handlers::{AccountView, SwitchesView};
use crate::edge::routes::{Endpoint, ROUTES, Route};
use crate::edge::webhooks::{DeliveriesView, DeliveryView, WebhookBody, WebhookView, WebhooksView};
use crate::transactions::{PendingView, TransactionView};

/// The document, built once.
static DOCUMENT_JSON: LazyLock<String> = LazyLock::new(|| {
    let mut text = serde_json::to_string_pretty(&document_value()).unwrap_or_default();
    text.push('\n');
    text
});

/// The document as served and as `docs/openapi.json` holds it: pretty JSON
/// with a final newline.
pub fn document_json() -> &'static str {
    &DOCUMENT_JSON
}

/// The document as utoipa builds it.
pub fn document() -> OpenApi {
    let mut paths = Paths::new();
    for route in ROUTES {
        paths.add_path_operation(
            route.path,
            vec![http_method(&route.method)],
            operation(route),
        );
    }
    let mut schemas = Vec::new();
    collect::<ErrorBody>(&mut schemas);
    collect::<TransactionBody>(&mut schemas);
    collect::<TransactionView>(&mut schemas);
    collect::<PendingView>(&mut schemas);
    collect::<crate::edge::history::TransactionPage>(&mut schemas);
    collect::<crate::edge::history::PostingPage>(&mut schemas);
    collect::<AccountBody>(&mut schemas);
    collect::<AccountPatchBody>(&mut schemas);
    collect::<AccountView>(&mut schemas);
    collect::<SwitchesView>(&mut schemas);
    // ---- webhooks (issue 13) ----
    collect::<WebhookBody>(&mut schemas);
    collect::<WebhookView>(&mut schemas);
    collect::<WebhooksView>(&mut schemas);
    collect::<DeliveryView>(&mut schemas);
    collect::<DeliveriesView>(&mut schemas);
    let mut components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT with `sub` (the client id), `exp` and the roles (`roles` array, or `scope` string when `auth.roles_claim = \"scope\"`). Signed by a configured key (RS256, ES256, EdDSA) or, in development, the HS256 `auth.dev_hs256_secret` (`switchboard token`).",
                    ))
                    .build(),
            ),
        );
    for (name, response) in shared_responses() {
        components = components.response(name, response);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Switchboard client API")
                .version("1")
                .description(Some(DESCRIPTION)),
        )
        .servers(Some([ServerBuilder::new()
            .url("https://127.0.0.1:8443")
            .description(Some("The default `server.listen`."))
            .build()]))
        .security(Some([bearer()]))
        .tags(Some(
            ["transactions", "accounts", "switches", "webhooks"]
                .map(|t| TagBuilder::new().name(t).build()),
        ))
        .paths(paths)
        .components(Some(components.build()))
        .build()
}

/// [`document`] as JSON, with what utoipa's model cannot say added.
fn document_value() -> Value {
    let mut doc = serde_json::to_value(document()).unwrap_or_default();
    require_always_sent_headers(&mut doc);
    unwrap_doc_comments(&mut doc);
    doc
}

const DESCRIPTION: &str = "The HTTPS client API of Switchboard, a load-balancing transaction gateway. JSON in and out, camelCase.

Every operation needs a bearer JWT (`Authorization: Bearer <token>`) carrying one of the operation's roles (listed in its description and in `x-roles`): `transact`, `auditor` or `operator`.

Errors are always `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}` (schema `Error`); never a stack trace, never a 5xx for bad input. A path called with a method it does not have answers 405 `method_not_allowed` with `Allow` (`#/components/responses/MethodNotAllowed`); an unknown path answers 404 `not_found`. Every answer carries `X-Request-Id`.

Checks run in this order: per-IP rate limit (429), `Host` (an HTTP/1.1 request needs exactly one, `host[:port]`; else 400), route (404/405), token (401), role (403), per-client rate limit (429), body (413/415/400; 408 when it does not arrive whole within `server.body_read_timeout_ms`), then the operation.

A client that keeps sending a body the gateway has already refused (413, 408, or any answer given before the body was read) still reads the answer: over HTTP/1.1 the gateway closes its side after answering and reads and discards what still arrives (up to `server.linger_bytes_max` bytes, for `server.linger_timeout_ms`) before it closes the connection.

This document is generated from the gateway's code (its routes, types and errors), served by the ops listener at `GET /openapi.json` and rendered there at `GET /docs`.";

/// `T`'s schema under its name, and every schema it refers to.
fn collect<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
}

fn http_method(m: &Method) -> HttpMethod {
    match *m {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::PATCH => HttpMethod::Patch,
        Method::DELETE => HttpMethod::Delete,
        Method::HEAD => HttpMethod::Head,
        Method::OPTIONS => HttpMethod::Options,
        _ => HttpMethod::Trace,
    }
}

fn bearer() -> SecurityRequirement {
    SecurityRequirement::new("bearerAuth", Vec::<String>::new())
}

// --- operations -----------------------------------------------------------------

/// What one endpoint documents of itself; [`operation`] adds what every
/// route shares (roles, security, the checks before the handler).
struct Doc {
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    description: &'static str,
    /// The `{id}` path parameter's description and example, if the path has one.
    path_id: Option<(&'static str, &'static str)>,
    /// Optional query parameters.
    query: Vec<Query>,
    request: Option<utoipa::openapi::request_body::RequestBody>,
    responses: Vec<(u16, RefOr<Response>)>,
}

/// **The** operation of each endpoint. To document a new route: add its
/// `Endpoint` arm here (the `match` does not compile without it), with its
/// success answers and the errors its handler can give beyond the shared
/// ones; the route's path, method and roles come from [`ROUTES`].
fn endpoint_doc(endpoint: Endpoint) -> Doc {
    match endpoint {
        Endpoint::PostTransaction => post_transaction(),
        Endpoint::ListTransactions => list_transactions(),
        Endpoint::GetPostings => get_postings(),
        Endpoint::GetTransaction => Doc {
            id: "transactions_get",
            tag: "transactions",
            summary: "Read a transaction",
            description: "Status, switch, attempts and timestamps. Ids are per client: a `transact` caller reads its own transaction with this id (naming another client in `clientId` answers 404, as a missing id does); an `auditor` reads any client's, naming the client in `clientId` when several clients used the id (else 400 `invalid_request`). Any other query parameter is a 400.",
            path_id: Some((
                "The `transactionId`. A malformed id answers 404, as a missing one does.",
                "tx-2024-0001",
            )),
            query: vec![Query::new(
                "clientId",
                "Whose transaction: needed by an auditor when several clients used the id.",
                string().into(),
                json!("alice"),
            )],
            request: None,
            responses: vec![
                (200, ok::<TransactionView>("The transaction.", committed_example(), &[])),
                (
                    400,
                    errors(
                        "`invalid_request`: an unknown query parameter, a malformed `clientId`, or (an auditor) an id several clients used without `clientId`.",
                        &[ApiError::InvalidRequest(
                            "clientId: several clients used this transactionId; name one with ?clientId=".into(),
                        )],
                        &[],
                    ),
                ),
                (404, shared("NotFound")),
                (500, shared("Internal")),
                (503, shared("LedgerUnavailable")),
            ],
        },
        Endpoint::PostAccount => Doc {
            id: "accounts_create",
            tag: "accounts",
            summary: "Create an account",
            description: "Creates a customer account; a positive `openingBalance` is moved in from the currency's equity account, so the currency's balances still sum to zero.",
            path_id: None,
            query: vec![],
            request: Some(request::<AccountBody>(&[(
                    "account",
                    "A customer account with an opening balance",
                    json!({"accountId": "carol-eur", "owner": "carol", "currency": "EUR", "openingBalance": 10000}),
                )],
            )),
            responses: [
                vec![
                    (201, ok::<AccountView>("Created.", account_example(&[]), &[])),
                    (
                        409,
                        errors(
                            "`account_exists`: an account with this id exists (or the id is a system account's).",
                            &[ApiError::AccountExists],
                            &[],
                        ),
                    ),
                    (500, shared("Internal")),
                    (503, shared("LedgerUnavailable")),
                ],
                body_errors(),
            ]
            .concat(),
        },
        Endpoint::GetAccount => Doc {
            id: "accounts_get",
            tag: "accounts",
            summary: "Read an account",
            description: "A `transact` caller sees accounts it owns, and the balance of accounts it is a spender of (without their `spenders`); another's answers 404. An `auditor` sees all, settlement accounts included.",
            path_id: Some(ACCOUNT_ID_PATH),
            query: vec![],
            request: None,
            responses: vec![
                (200, ok::<AccountView>("The account and its balance.", account_example(&[]), &[])),
                (404, shared("NotFound")),
                (500, shared("Internal")),
                (503, shared("LedgerUnavailable")),
            ],
        },
        Endpoint::PatchAccount => Doc {
            id: "accounts_patch",
            tag: "accounts",
            summary: "Change who may spend from an account",
            description: "Replaces the account's `spenders`: the clients besides its owner that may debit it or transfer from it (`[\"*\"]`: any client with the `transact` role; `[]`: the owner alone). The owner can always debit; a spender reads the account's balance but not its spenders. Debits stay atomic and guarded: a shared stock is never oversold.",
            path_id: Some(ACCOUNT_ID_PATH),
            query: vec![],
            request: Some(request::<AccountPatchBody>(&[(
                "spenders",
                "Two clients besides the owner",
                json!({"spenders": ["bob", "carol"]}),
            )])),
            responses: [
                vec![
                    (
                        200,
                        ok::<AccountView>(
                            "The account with its new spenders.",
                            account_example(&["bob", "carol"]),
                            &[],
                        ),
                    ),
                    (404, shared("NotFound")),
                    (500, shared("Internal")),
                    (503, shared("LedgerUnavailable")),
                ],
                body_errors(),
            ]
            .concat(),
        },
        Endpoint::GetSwitches => Doc {
            id: "switches_list",
            tag: "switches",
            summary: "List the switches",
            description: "Each upstream switch: health, last probe, latency, balancing (EWMA latency, score, success rate, slow start, traffic share), in-flight and outcome counts; the balancing mode and whether the table is in panic.",
            path_id: None,
            query: vec![],
            request: None,
            responses: vec![(
                200,
                ok::<SwitchesView>("Every configured switch.", switches_example(), &[]),
            )],
        },
        // ---- webhooks (issue 13) ----
        Endpoint::PostWebhook => Doc {
            id: "webhooks_create",
            tag: "webhooks",
            summary: "Register a webhook",
            description: "Registers an endpoint for one client's events: every transaction of `client` that reaches a final state named in `events` is POSTed to `url` as `{\"id\": \"evt_…\", \"type\", \"createdAt\", \"data\": <the transaction as GET /v1/transactions/{id} shows it>}`, signed in `Switchboard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + \".\" + raw body)>`. At least once: deduplicate by the event `id`. The answer holds the signing `secret`, shown only here. `url` must be `https://` (`http://` only when `webhooks.allow_http` is on).",
            path_id: None,
            query: vec![],
            request: Some(request::<WebhookBody>(&[(
                "webhook",
                "Alice's committed and declined transactions",
                json!({"client": "alice", "url": "https://hooks.example.com/switchboard", "events": ["transaction.committed", "transaction.declined"]}),
            )])),
            responses: [
                vec![
                    (201, ok::<WebhookView>("Registered; `secret` is shown this once.", webhook_example(true), &[])),
                    (500, shared("Internal")),
                    (503, shared("LedgerUnavailable")),
                ],
                body_errors(),
            ]
            .concat(),
        },
        Endpoint::GetWebhooks => Doc {
            id: "webhooks_list",
            tag: "webhooks",
            summary: "List the webhooks",
            description: "The live webhooks, oldest first, at most `webhooks.list_max`; without their secrets.",
            path_id: None,
            query: vec![],
            request: None,
            responses: vec![
                (200, ok::<WebhooksView>("The webhooks.", json!({"data": [webhook_example(false)]}), &[])),
                (500, shared("Internal")),
                (503, shared("LedgerUnavailable")),
            ],
        },
        Endpoint::DeleteWebhook => Doc {
            id: "webhooks_delete",
            tag: "webhooks",
            summary: "Delete a webhook",
            description: "No event is queued for it from now on; deliveries still queued end as failed. Answers the webhook as it was.",
            path_id: Some(WEBHOOK_ID_PATH),
            query: vec![],
            request: None,
            responses: vec![
                (200, ok::<WebhookView>("Deleted.", webhook_example(false), &[])),
                (404, shared("NotFound")),
                (500, shared("Internal")),
                (503, shared("LedgerUnavailable")),
            ],
        },
        Endpoint::GetFailedDeliveries => Doc {
            id: "webhooks_failed",
            tag: "webhooks",
            summary: "List a webhook's failed deliveries",
            description: "Deliveries that ran out of retries (`webhooks.attempts_max`, or `webhooks.horizon_ms` after the event), newest first, at most `webhooks.list_max`.",
            path_id: Some(WEBHOOK_ID_PATH),
            query: vec![],
            request: None,
            responses: vec![
                (200, ok::<DeliveriesView>("The failed deliveries.", json!({"data": [delivery_example("failed")]}), &[])),
                (404, shared("NotFound")),
                (500, shared("Internal")),
                (503, shared("LedgerUnavailable")),
            ],
        },
        Endpoint::PostRedelivery => Doc {
            id: "webhooks_redeliver",
            tag: "webhooks",
            summary: "Redeliver a failed delivery",
            description: "Queues a failed delivery again, due now, with its attempts and retry horizon counted afresh. The event keeps its id.",
            path_id: Some((
                "The `deliveryId` of a failed delivery. Any other answers 404.",
                "wh_0123456789abcdef01234567.3f2a9c0d1e8b4a5f6c7d8e9fa0b1c2d3",
            )),
            query: vec![],
            request: None,
            responses: vec![
                (202, ok::<DeliveryView>("Queued again.", delivery_example("pending"), &[])),
                (404, shared("NotFound")),
                (500, shared("Internal")),
                (503, shared("LedgerUnavailable")),
            ],
        },
    }
}

/// An optional query parameter of an operation.
struct Query {
    name: &'static str,
    description: String,
    schema: RefOr<Schema>,
    example: Option<Value>,
}

impl Query {
    fn new(name: &'static str, description: &str, schema: RefOr<Schema>, example: Value) -> Self {
        Self {
            name,
            description: description.to_owned(),
            schema,
            example: Some(example),
        }
    }
}

/// `limit` and `cursor`, which every history listing takes; the bounds
/// stated are the defaults' (`config/default.toml`).
fn page_params() -> Vec<Query> {
    let (rows_default, rows_max) = crate::config::Config::from_toml("")
        .map(|c| {
            (
                c.ledger.history_page_rows_default,
                c.ledger.history_page_rows_max,
            )
        })
        .unwrap_or((1, crate::config::HISTORY_PAGE_ROWS_CAP));
    vec![
        Query::new(
            "limit",
            &format!(
                "Most rows on the page: 1 to `ledger.history_page_rows_max` ({rows_max} by default); absent, `ledger.history_page_rows_default` ({rows_default})."
            ),
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(rows_max))
                .into(),
            json!(rows_default),
        ),
        Query {
            name: "cursor",
            description: "The `nextCursor` of the previous page, as it came (opaque); absent for the first page. A cursor this API did not give out, or another listing's, answers 400.".to_owned(),
            schema: string().min_length(Some(1)).max_length(Some(256)).into(),
            example: None,
        },
    ]
}

/// The 400 of a listing's query parameters.
fn bad_parameter() -> (u16, RefOr<Response>) {
    (
        400,
        errors(
            "`invalid_request`: a query parameter is unknown, repeated or malformed (the message names it), `to` is not after `from`, or the cursor is not one this listing gave out.",
            &[ApiError::InvalidRequest(
                "limit: must be an integer from 1 to 200".into(),
            )],
            &[],
        ),
    )
}

fn list_transactions() -> Doc {
    let mut query = vec![
        Query::new(
            "accountId",
            "Only transactions with this account as source or destination (`accountId`, `from` or `to`). A filter no index serves: see the operation's description.",
            schema_ref::<crate::domain::AccountId>(),
            json!("alice-eur"),
        ),
        Query::new(
            "status",
            "Only transactions in this status. A filter no index serves: see the operation's description.",
            schema_ref::<crate::domain::TxStatus>(),
            json!("committed"),
        ),
        Query::new(
            "from",
            "Only transactions created at or after this instant (RFC 3339, with a time zone).",
            string()
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                .into(),
            json!("2025-01-01T00:00:00Z"),
        ),
        Query::new(
            "to",
            "Only transactions created before this instant (RFC 3339, with a time zone); later than `from`.",
            string()
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                .into(),
            json!("2025-02-01T00:00:00Z"),
        ),
    ];
    query.extend(page_params());
    Doc {
        id: "transactions_list",
        tag: "transactions",
        summary: "List transactions",
        description: "A page of transactions, newest first (by creation time, then reference), each as `GET /v1/transactions/{id}` shows it without `attemptLog`. A `transact` caller lists the transactions it submitted (a filter by `accountId` too: never another client's); an `auditor` lists every client's.\n\nKeyset pages: pass `nextCursor` back as `cursor` until it is `null`. A cursor is a position in that order, not an offset, so a transaction created while a client pages never moves a row from one page to another: every row that was there when paging began is served exactly once.\n\n`from`, `to` and the cursor narrow a range the ledger's indexes keep in order. `accountId` and `status` filter the rows of that range; so that a page's work stays bounded however rare they are, a filtered page reads at most `ledger.history_scan_rows_max` rows (10,000 by default) of the range, and may then come back short, even empty, with a `nextCursor` to go on from.",
        path_id: None,
        query,
        request: None,
        responses: vec![
            (
                200,
                ok::<crate::edge::history::TransactionPage>(
                    "A page of transactions.",
                    json!({"data": [committed_example()], "nextCursor": "dHgxfDE3MzU3MzI4MDAxMjN8NWMxZjBlOWE3YjNkNDJjNjhlMGYxYTJiM2M0ZDVlNmY"}),
                    &[],
                ),
            ),
            bad_parameter(),
            (500, shared("Internal")),
            (503, shared("LedgerUnavailable")),
        ],
    }
}

fn get_postings() -> Doc {
    Doc {
        id: "accounts_postings",
        tag: "accounts",
        summary: "An account's statement",
        description: "A page of the account's postings, newest first: every completed movement of its money (commits and the opening balance; held money is not posted until it is committed). Its owner's and auditors' only: a spender of the account reads its balance (`GET /v1/accounts/{id}`) but not its history, and to anyone but the owner and auditors the account answers 404, as a missing one does.\n\nKeyset pages: pass `nextCursor` back as `cursor` until it is `null`.",
        path_id: Some(ACCOUNT_ID_PATH),
        query: page_params(),
        request: None,
        responses: vec![
            (
                200,
                ok::<crate::edge::history::PostingPage>(
                    "A page of postings.",
                    json!({"data": [
                        {"gatewayRef": "5c1f0e9a7b3d42c68e0f1a2b3c4d5e6f", "amount": -2500, "createdAt": "2025-01-01T12:00:00.15Z"},
                        {"gatewayRef": null, "amount": 10000, "createdAt": "2025-01-01T11:00:00Z"}
                    ], "nextCursor": null}),
                    &[],
                ),
            ),
            bad_parameter(),
            (404, shared("NotFound")),
            (500, shared("Internal")),
            (503, shared("LedgerUnavailable")),
        ],
    }
}

// ---- webhooks (issue 13) ----

const WEBHOOK_ID_PATH: (&str, &str) = (
    "The `webhookId`. An unknown or deleted one answers 404.",
    "wh_0123456789abcdef01234567",
);

fn webhook_example(with_secret: bool) -> Value {
    let mut v = json!({
        "webhookId": "wh_0123456789abcdef01234567",
        "client": "alice",
        "url": "https://hooks.example.com/switchboard",
        "events": ["transaction.committed", "transaction.declined"],
        "createdAt": "2024-05-01T12:00:00.000Z",
    });
    if with_secret {
        v["secret"] = json!("whsec_5f0c6d2b8e7a4c1d9b3e2f1a0c9d8e7f");
    }
    v
}

fn delivery_example(status: &str) -> Value {
    let mut v = json!({
        "deliveryId": "wh_0123456789abcdef01234567.3f2a9c0d1e8b4a5f6c7d8e9fa0b1c2d3",
        "webhookId": "wh_0123456789abcdef01234567",
        "eventId": "evt_3f2a9c0d1e8b4a5f6c7d8e9fa0b1c2d3",
        "type": "transaction.committed",
        "gatewayRef": "3f2a9c0d1e8b4a5f6c7d8e9fa0b1c2d3",
        "status": status,
        "attempts": if status == "failed" { 30 } else { 0 },
        "createdAt": "2024-05-01T12:00:00.000Z",
    });
    if status == "failed" {
        v["lastError"] = json!("answered 503");
    }
    v
}

const ACCOUNT_ID_PATH: (&str, &str) = (
    "The `accountId`. A malformed id answers 404, as a missing one does.",
    "alice-eur",
);

fn post_transaction() -> Doc {
    Doc {
        id: "transactions_create",
        tag: "transactions",
        summary: "Post a transaction",
        description: "Records the transaction in the ledger keyed by the client and its `transactionId` (ids are per client: another client's use of the same id is another transaction and plays no part here; reserving the amount from the source account), forwards it to a healthy switch, and answers with the outcome. The same `transactionId` with the same payload is idempotent: a finished one answers its stored response again (`Idempotent-Replayed: true`), one in flight answers 409; with another payload, 422 `transaction_id_reused`.",
        path_id: None,
        query: vec![],
        request: Some(request::<TransactionBody>(&[
            (
                "debit",
                "Debit a customer account",
                json!({"transactionId": "tx-2024-0001", "type": "debit", "accountId": "alice-eur", "amount": 2500, "currency": "EUR", "metadata": {"orderId": "A-1001"}}),
            ),
            (
                "credit",
                "Credit a customer account",
                json!({"transactionId": "tx-2024-0002", "type": "credit", "accountId": "alice-eur", "amount": 1000, "currency": "EUR"}),
            ),
            (
                "transfer",
                "Transfer between customer accounts",
                json!({"transactionId": "tx-2024-0003", "type": "transfer", "from": "alice-eur", "to": "bob-eur", "amount": 500, "currency": "EUR"}),
            ),
        ])),
        responses: [
            vec![
                (
                    201,
                    ok::<TransactionView>(
                        "Committed: the switch approved it and the ledger moved the money. A replay of a finished request gets the same body with `Idempotent-Replayed: true`.",
                        committed_example(),
                        &[("Idempotent-Replayed", idempotent_replayed())],
                    ),
                ),
                (202, pending()),
                (
                    404,
                    errors(
                        "`not_found`: an account named in the request does not exist, is not a customer account, or (`accountId`, `from`) is not the caller's. Nothing is stored.",
                        &[ApiError::NotFound],
                        &[],
                    ),
                ),
                (
                    409,
                    errors(
                        "`transaction_in_progress`: the same `transactionId` with the same payload is still being processed; retry after `Retry-After`.",
                        &[ApiError::TransactionInProgress {
                            retry_after: Duration::from_secs(1),
                        }],
                        &[("Retry-After", retry_after(ALWAYS_SENT))],
                    ),
                ),
                (
                    422,
                    errors(
                        "Refused for good; the transaction is final. `insufficient_funds` (stored: a replay answers the same), `declined_by_switch` (stored), `transaction_id_reused` (the id was used before with another payload or by another client), `currency_mismatch` (an account is in another currency; nothing stored). Stored answers replayed carry `Idempotent-Replayed: true`.",
                        &[
                            ApiError::InsufficientFunds,
                            ApiError::DeclinedBySwitch,
                            ApiError::TransactionIdReused,
                            ApiError::CurrencyMismatch {
                                account: "alice-eur".into(),
                                currency: "USD".into(),
                            },
                        ],
                        &[("Idempotent-Replayed", idempotent_replayed())],
                    ),
                ),
                (500, shared("Internal")),
                (
                    503,
                    errors(
                        "Not processed; nothing moved. `no_switch_available` (no healthy switch, or every switch tried refused it before processing; stored when a reservation was released, and replayed with `Idempotent-Replayed: true`), `ledger_unavailable`, `overloaded` (too many transactions in flight; with `Retry-After`), `rate_limit_unavailable` (the shared rate limits in Redis did not answer and `limits.redis.failure_mode` is `closed`; with `Retry-After`).",
                        &[
                            ApiError::NoSwitchAvailable,
                            ApiError::LedgerUnavailable,
                            ApiError::Overloaded,
                            ApiError::RateLimitUnavailable,
                        ],
                        &[
                            (
                                "Retry-After",
                                retry_after(
                                    "On `overloaded` and `rate_limit_unavailable`: seconds to wait.",
                                ),
                            ),
                            ("Idempotent-Replayed", idempotent_replayed()),
                        ],
                    ),
                ),
            ],
            body_errors(),
        ]
        .concat(),
    }
}

/// The answers of reading a body (`read_json`), beside its own 400.
fn body_errors() -> Vec<(u16, RefOr<Response>)> {
    vec![
        (400, shared("InvalidRequest")),
        (408, shared("RequestTimeout")),
        (413, shared("PayloadTooLarge")),
        (415, shared("UnsupportedMediaType")),
    ]
}

/// `endpoint_doc` with what every route shares: its roles (`x-roles` and the
/// description's last line), bearer security, `X-Request-Id`, and the
/// answers of the checks before the handler: 400 for `Host` (or the body's),
/// 401 and 403 when the route needs a role, 429 and the deadline's 504.
fn operation(route: &Route) -> Operation {
    let doc = endpoint_doc(route.endpoint);
    let roles: Vec<&str> = route.roles.iter().map(|r| r.as_str()).collect();
    let mut responses = doc.responses;
    let mut add = |status: u16, response: RefOr<Response>| {
        if !responses.iter().any(|(s, _)| *s == status) {
            responses.push((status, response));
        }
    };
    add(400, shared("BadHost"));
    if !route.roles.is_empty() {
        add(401, shared("Unauthorized"));
        add(403, shared("Forbidden"));
    }
    add(429, shared("RateLimited"));
    // Every route passes the shared limits (where no other 503 is listed).
    add(503, shared("RateLimitUnavailable"));
    add(504, shared("DeadlineExceeded"));
    responses.sort_by_key(|(status, _)| *status);

    let mut op = OperationBuilder::new()
        .operation_id(Some(doc.id))
        .summary(Some(doc.summary))
        .description(Some(format!("{}\n\nRoles: {}.", doc.description, roles_words(route.roles))))
        .tag(doc.tag)
        .security(bearer())
        .parameter(
            ParameterBuilder::new()
                .name("X-Request-Id")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "Echoed back when it is 1 to 128 visible ASCII characters (`[!-~]`); any other value is ignored and the gateway makes one.",
                ))
                .schema(Some(string()))
                .example(Some(json!("req-7f3a"))),
        )
        .request_body(doc.request)
        .extensions(Some(Extensions::from_iter([("x-roles", json!(roles))])));
    if let Some((description, example)) = doc.path_id {
        op = op.parameter(
            ParameterBuilder::new()
                .name("id")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(description))
                .schema(Some(string()))
                .example(Some(json!(example))),
        );
    }
    for q in doc.query {
        op = op.parameter(
            ParameterBuilder::new()
                .name(q.name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(q.description))
                .schema(Some(q.schema))
                .example(q.example),
        );
    }
    for (status, response) in responses {
        op = op.response(status.to_string(), response);
    }
    op.build()
}

/// `transact` or `auditor`.
fn roles_words(roles: &[Role]) -> String {
    let named: Vec<String> = roles.iter().map(|r| format!("`{}`", r.as_str())).collect();
    match named.as_slice() {
        [] => "none".into(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

// --- bodies and answers ---------------------------------------------------------

fn json_content(schema: impl Into<RefOr<Schema>>) -> ContentBuilder {
    ContentBuilder::new().schema(Some(schema))
}

fn schema_ref<T: ToSchema>() -> RefOr<Schema> {
    Ref::from_schema_name(T::name()).into()
}

fn request<T: ToSchema>(
    examples: &[(&str, &str, Value)],
) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .description(Some(
            "`Content-Type: application/json` (or none). At most `server.body_bytes_max` bytes.",
        ))
        .required(Some(Required::True))
        .content(
            "application/json",
            json_content(schema_ref::<T>())
                .examples_from_iter(examples.iter().map(|(name, summary, value)| {
                    (
                        *name,
                        ExampleBuilder::new()
                            .summary(*summary)
                            .value(Some(value.clone())),
                    )
                }))
                .build(),
        )
        .build()
}

/// A success answer with a body of `T`, `X-Request-Id` and `headers`.
fn ok<T: ToSchema>(
    description: &str,
    example: Value,
    headers: &[(&str, Header)],
) -> RefOr<Response> {
    with_headers(ResponseBuilder::new().description(description), headers)
        .content(
            "application/json",
            json_content(schema_ref::<T>())
                .example(Some(example))
                .build(),
        )
        .build()
        .into()
}

/// 202: the outcome is not known yet.
fn pending() -> RefOr<Response> {
    let schema = utoipa::openapi::schema::OneOfBuilder::new()
        .item(schema_ref::<TransactionView>())
        .item(schema_ref::<PendingView>());
    with_headers(
        ResponseBuilder::new().description(
            "Pending: the outcome is not known yet (the switch did not answer in time). The reconciler finishes it; poll `Location`.",
        ),
        &[("Location", location())],
    )
    .content(
        "application/json",
        json_content(schema)
            .example(Some(json!({"transactionId": "tx-2024-0001", "status": "pending"})))
            .build(),
    )
    .build()
    .into()
}

/// An error answer: the `Error` schema, and an example of each of `errors`
/// as the code renders it.
fn errors(description: &str, errors: &[ApiError], headers: &[(&str, Header)]) -> RefOr<Response> {
    error_response(
        description,
        errors
            .iter()
            .map(|e| (Cow::Borrowed(e.code()), None, example(e)))
            .collect(),
        headers,
    )
    .into()
}

fn error_response(
    description: &str,
    examples: Vec<(Cow<'_, str>, Option<&str>, Value)>,
    headers: &[(&str, Header)],
) -> Response {
    let content = json_content(schema_ref::<ErrorBody>());
    let content = match examples.as_slice() {
        [(_, None, value)] => content.example(Some(value.clone())),
        _ => content.examples_from_iter(examples.into_iter().map(|(name, summary, value)| {
            let summary = summary.map_or_else(|| format!("`{name}`"), str::to_owned);
            (
                name,
                ExampleBuilder::new().summary(summary).value(Some(value)),
            )
        })),
    };
    with_headers(ResponseBuilder::new().description(description), headers)
        .content("application/json", content.build())
        .build()
}

/// The body the code sends for `e`.
fn example(e: &ApiError) -> Value {
    serde_json::to_value(e.body()).unwrap_or_default()
}

fn shared(name: &str) -> RefOr<Response> {
    Ref::from_response_name(name).into()
}

/// `#/components/responses`: the answers of the checks every route shares
/// and of the parts several handlers call.
fn shared_responses() -> Vec<(&'static str, Response)> {
    let invalid = |message: &str| example(&ApiError::InvalidRequest(message.into()));
    let unauthorized = |why: Unauthenticated| example(&ApiError::Unauthorized(why));
    let one = |e: ApiError| vec![(Cow::Borrowed(e.code()), None, example(&e))];
    const HOST: &str = "Host: an HTTP/1.1 request needs a Host header";
    vec![
        (
            "InvalidRequest",
            error_response(
                "`invalid_request`: the body is not JSON (the message says where it breaks: `body is not valid JSON (ends early at line 1, column 38)`), is not a JSON object, has an unknown, missing or repeated field, a field of the wrong type, or a field that breaks a rule. The message names the field and says what it must be, in the API's words (`amount: must be an integer number of minor units`, `currency: is required`, `fee: is not a field of this request (its fields are ...)`). Also an HTTP/1.1 request without exactly one valid `Host` header (RFC 9112).",
                vec![
                    (
                        "field".into(),
                        Some("a field of the wrong type"),
                        invalid("amount: must be an integer number of minor units"),
                    ),
                    (
                        "missing".into(),
                        Some("a required field left out"),
                        invalid("currency: is required"),
                    ),
                    (
                        "json".into(),
                        Some("malformed JSON"),
                        invalid("body is not valid JSON (ends early at line 1, column 38)"),
                    ),
                    (
                        "host".into(),
                        Some("An HTTP/1.1 request without Host"),
                        invalid(HOST),
                    ),
                ],
                &[],
            ),
        ),
        (
            "BadHost",
            error_response(
                "`invalid_request`: an HTTP/1.1 request without exactly one `Host` header, or one that is not `host[:port]` (RFC 9112 §3.2).",
                vec![("invalid_request".into(), None, invalid(HOST))],
                &[],
            ),
        ),
        (
            "Unauthorized",
            error_response(
                "`unauthorized`: no bearer token, or one that does not verify. The message and `WWW-Authenticate`'s `error_description` say which of: a bearer token is required (none sent), the bearer token has expired, the bearer token is not valid yet, the bearer token is invalid (signature, key, algorithm or claims: which one is not said), the token's subject does not match the client certificate (mTLS).",
                vec![
                    (
                        "missing".into(),
                        Some("no token"),
                        unauthorized(Unauthenticated::Missing),
                    ),
                    (
                        "expired".into(),
                        Some("an expired token"),
                        unauthorized(Unauthenticated::Expired),
                    ),
                    (
                        "invalid".into(),
                        Some("a token that does not verify"),
                        unauthorized(Unauthenticated::Invalid),
                    ),
                ],
                &[("WWW-Authenticate", www_authenticate())],
            ),
        ),
        (
            "Forbidden",
            error_response(
                "`forbidden`: the token is valid but carries none of the roles this operation needs.",
                one(ApiError::Forbidden(crate::edge::api::MISSING_ROLE)),
                &[("WWW-Authenticate", www_authenticate())],
            ),
        ),
        (
            "NotFound",
            error_response(
                "`not_found`: no such resource, or one the caller may not see (another client's account or transaction answers exactly like a missing one).",
                one(ApiError::NotFound),
                &[],
            ),
        ),
        (
            "MethodNotAllowed",
            error_response(
                "`method_not_allowed`: the path exists but not with this method; `Allow` names the method it has.",
                one(ApiError::MethodNotAllowed {
                    allow: "GET".into(),
                }),
                &[("Allow", header(string(), "The method this path accepts."))],
            ),
        ),
        (
            "PayloadTooLarge",
            error_response(
                "`payload_too_large`: the body is larger than `server.body_bytes_max` (default 65536 bytes), by `Content-Length` or as read.",
                one(ApiError::PayloadTooLarge { limit_bytes: 65536 }),
                &[],
            ),
        ),
        (
            "RequestTimeout",
            error_response(
                "`request_timeout`: the body did not arrive whole within `server.body_read_timeout_ms` (default 5000 ms) of the gateway starting to read it, or before the request deadline; a client too slow to send is refused with this 4xx, never a 504.",
                one(ApiError::RequestTimeout),
                &[],
            ),
        ),
        (
            "UnsupportedMediaType",
            error_response(
                "`unsupported_media_type`: a `Content-Type` other than `application/json` was sent (none at all is taken as JSON).",
                one(ApiError::UnsupportedMediaType),
                &[],
            ),
        ),
        (
            "RateLimited",
            error_response(
                "`rate_limited`: the per-IP limit (checked before the token) or the caller's per-client quota is spent.",
                one(ApiError::RateLimited {
                    limit: 20,
                    remaining: 0,
                    reset_s: 1,
                    retry_after_s: 1,
                }),
                &[
                    ("Retry-After", retry_after(ALWAYS_SENT)),
                    (
                        "RateLimit-Limit",
                        header(
                            count(),
                            &format!(
                                "Requests the caller may make in a window (its burst). {ALWAYS_SENT}"
                            ),
                        ),
                    ),
                    (
                        "RateLimit-Remaining",
                        header(count(), &format!("Requests left now. {ALWAYS_SENT}")),
                    ),
                    (
                        "RateLimit-Reset",
                        header(
                            count(),
                            &format!("Seconds until the quota is whole again. {ALWAYS_SENT}"),
                        ),
                    ),
                ],
            ),
        ),
        (
            "Internal",
            error_response(
                "`internal`: a fault of the gateway (never caused by bad input); the transaction, if any, is left to the reconciler.",
                one(ApiError::Internal),
                &[],
            ),
        ),
        (
            "LedgerUnavailable",
            error_response(
                "`ledger_unavailable`: the ledger database could not be reached in time (`database.acquire_timeout_ms`); `rate_limit_unavailable`: the shared rate limits in Redis did not answer and `limits.redis.failure_mode` is `closed` (with `Retry-After`).",
                [
                    one(ApiError::LedgerUnavailable),
                    one(ApiError::RateLimitUnavailable),
                ]
                .concat(),
                &[(
                    "Retry-After",
                    retry_after("On `rate_limit_unavailable`: seconds to wait."),
                )],
            ),
        ),
        (
            "RateLimitUnavailable",
            error_response(
                "`rate_limit_unavailable`: the shared rate limits in Redis did not answer and `limits.redis.failure_mode` is `closed`.",
                one(ApiError::RateLimitUnavailable),
                &[("Retry-After", retry_after(ALWAYS_SENT))],
            ),
        ),
        (
            "DeadlineExceeded",
            error_response(
                "`deadline_exceeded`: the request did not finish within `server.request_deadline_ms` (a last resort: transactions answer 202 first).",
                one(ApiError::DeadlineExceeded),
                &[],
            ),
        ),
    ]
}

// --- headers --------------------------------------------------------------------

/// Ends the description of a header every answer of its response carries;
/// [`require_always_sent_headers`] marks those `required`.
const ALWAYS_SENT: &str = "Always sent with this answer.";

/// `X-Request-Id`, then `headers`.
fn with_headers(mut response: ResponseBuilder, headers: &[(&str, Header)]) -> ResponseBuilder {
    response = response.header(
        "X-Request-Id",
        header(
            string(),
            "The request's id: the client's `X-Request-Id` when it is 1 to 128 visible ASCII characters, else a new UUID. Also in the gateway's logs.",
        ),
    );
    for (name, h) in headers {
        response = response.header(*name, h.clone());
    }
    response
}

fn header(schema: impl Into<RefOr<Schema>>, description: &str) -> Header {
    let mut h = Header::new(schema);
    h.description = Some(description.to_owned());
    h
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn count() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
}

fn retry_after(description: &str) -> Header {
    header(
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1)),
        &format!("Seconds to wait before retrying. {description}"),
    )
}

fn location() -> Header {
    header(
        string().pattern(Some("^/v1/transactions/[A-Za-z0-9._:-]{1,64}$")),
        &format!(
            "Where to poll the transaction: `/v1/transactions/{{transactionId}}`. {ALWAYS_SENT}"
        ),
    )
}

fn idempotent_replayed() -> Header {
    header(
        string().enum_values(Some(["true"])),
        "`true` when this is the stored answer of an earlier request with the same `transactionId` and payload; absent otherwise.",
    )
}

fn www_authenticate() -> Header {
    let challenges: Vec<String> = [
        Unauthenticated::Missing,
        Unauthenticated::Expired,
        Unauthenticated::Invalid,
    ]
    .iter()
    .map(|why| format!("`{}`", why.challenge()))
    .collect();
    header(
        string()
            .pattern(Some(
                r#"^Bearer realm="switchboard"(, error="(invalid_token|insufficient_scope)", error_description="[^"]*")?$"#,
            ))
            .examples(challenges.iter().map(|c| c.trim_matches('`').to_owned())),
        &format!(
            "The bearer challenge of RFC 6750. Without a token (or with another scheme): `Bearer realm=\"switchboard\"`, no error code (RFC 6750 §3.1). With a token that does not verify: `error=\"invalid_token\"` and an `error_description` saying only whether it has expired, is not valid yet, or is invalid (never which key, claim or check failed), the same words as the body's `message`. On a 403: `error=\"insufficient_scope\"`. For example: {}.",
            challenges.join(", ")
        ),
    )
}

/// utoipa 5's `Header` has no `required`: headers whose description says
/// they are always sent get it here, in the JSON.
fn require_always_sent_headers(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(headers)) = map.get_mut("headers") {
                for h in headers.values_mut() {
                    let always = h["description"]
                        .as_str()
                        .is_some_and(|d| d.ends_with(ALWAYS_SENT));
                    if always {
                        h["required"] = Value::Bool(true);
                    }
                }
            }
            map.values_mut().for_each(require_always_sent_headers);
        }
        Value::Array(items) => items.iter_mut().for_each(require_always_sent_headers),
        _ => {}
    }
}

/// A description from a doc comment keeps the comment's line breaks; in
/// Markdown a single break is a space, so it is one here too (paragraph
/// breaks stay).
fn unwrap_doc_comments(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(d)) = map.get_mut("description") {
                *d = d
                    .split("\n\n")
                    .map(|paragraph| paragraph.replace('\n', " "))
                    .collect::<Vec<_>>()
                    .join("\n\n");
            }
            map.values_mut().for_each(unwrap_doc_comments);
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_doc_comments),
        _ => {}
    }
}

// --- examples of answers --------------------------------------------------------

fn committed_example() -> Value {
    json!({
        "transactionId": "tx-2024-0001",
        "clientId": "alice",
        "gatewayRef": "5c1f0e9a7b3d42c68e0f1a2b3c4d5e6f",
        "status": "committed",
        "type": "debit",
        "amount": 2500,
        "currency": "EUR",
        "accountId": "alice-eur",
        "switch": "sim-1",
        "switchReference": "sim-1-1",
        "attempts": 1,
        "metadata": {"orderId": "A-1001"},
        "createdAt": "2025-01-01T12:00:00.123Z",
        "updatedAt": "2025-01-01T12:00:00.150Z"
    })
}

fn account_example(spenders: &[&str]) -> Value {
    json!({
        "accountId": "alice-eur",
        "owner": "alice",
        "currency": "EUR",
        "balance": 10000,
        "kind": "customer",
        "spenders": spenders
    })
}

fn switches_example() -> Value {
    json!({
        "switches": [{
            "name": "sim-1",
            "url": "http://127.0.0.1:9001/",
            "weight": 1,
            "healthy": true,
            "probed": true,
            "lastProbeAt": "2025-01-01T12:00:00.000Z",
            "lastProbeOk": true,
            "lastProbeLatencyMs": 0.412,
            "consecutiveForwardFailures": 0,
            "ejected": false,
            "outlierEjected": false,
            "outlierEjections": 0,
            "balancing": {
                "latencyEwmaMs": 2.4,
                "score": 0.0048,
                "successRate": 1.0,
                "slowStartShare": 1.0,
                "trafficShare": 0.5,
                "picked": 1204
            },
            "inFlight": 0,
            "approved": 42,
            "declined": 1,
            "failed": 0
        }],
        "balancing": "round_robin",
        "panic": false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_one_operation_and_every_reference_resolves() {
        let doc = document_value();
        for route in ROUTES {
            let method = route.method.as_str().to_ascii_lowercase();
            assert!(
                doc["paths"][route.path][&method].is_object(),
                "{} {}",
                route.method,
                route.path
            );
        }
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            assert!(doc.pointer(pointer).is_some(), "dangling {r}");
        }
    }
}
