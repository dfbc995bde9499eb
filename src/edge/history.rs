//! The history endpoints' edge: their query parameters, parsed into the
//! ledger's [`HistoryQuery`] and [`StatementQuery`] (every refusal a 400
//! naming the parameter), and the bodies they answer ([`TransactionPage`],
//! [`PostingPage`]).

use serde::Serialize;

use crate::config::LedgerConfig;
use crate::domain::{AccountId, GatewayRef, TxStatus, rfc3339_ms};
use crate::edge::error::ApiError;
use crate::edge::query::params;
use crate::ledger::{
    HistoryQuery, Page, PostingCursor, PostingRecord, Scope, StatementQuery, TransactionCursor,
    TransactionRecord,
};
use crate::transactions::TransactionView;

/// The parameters of `GET /v1/transactions`.
const HISTORY_PARAMS: &[&str] = &["accountId", "status", "from", "to", "limit", "cursor"];
/// The parameters of `GET /v1/accounts/{id}/postings`.
const STATEMENT_PARAMS: &[&str] = &["limit", "cursor"];

fn invalid(name: &str, what: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidRequest(format!("{name}: {what}"))
}

/// `limit`: 1 to `ledger.history_page_rows_max`, else the default.
fn limit(raw: Option<&str>, ledger: &LedgerConfig) -> Result<u32, ApiError> {
    let max = ledger.history_page_rows_max;
    let Some(raw) = raw else {
        return Ok(ledger.history_page_rows_default.min(max));
    };
    match raw.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) && !raw.starts_with('+') => Ok(n),
        _ => Err(invalid(
            "limit",
            format!("must be an integer from 1 to {max}"),
        )),
    }
}

/// `from`, `to`: an RFC 3339 timestamp, as unix ms rounded up (rows are
/// stamped to the millisecond, so "at or after" and "before" stay exact).
fn timestamp_ms(name: &str, raw: &str) -> Result<i64, ApiError> {
    let bad = || {
        invalid(
            name,
            "must be an RFC 3339 timestamp with a time zone (2026-01-05T10:00:00Z)",
        )
    };
    let t = time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad())?;
    let nanos = t.unix_timestamp_nanos();
    let ms = nanos.div_euclid(1_000_000) + i128::from(nanos.rem_euclid(1_000_000) != 0);
    i64::try_from(ms).map_err(|_| bad())
}

fn status(raw: &str) -> Result<TxStatus, ApiError> {
    TxStatus::from_db(raw).ok_or_else(|| {
        invalid(
            "status",
            "must be one of reserved, pending, committed, declined, failed",
        )
    })
}

const BAD_CURSOR: &str = "is not a cursor this API gave out (pass nextCursor as it came)";

/// `GET /v1/transactions?accountId=&status=&from=&to=&limit=&cursor=`, for a
/// caller who may see `scope`.
pub(super) fn history_query(
    query: Option<&str>,
    scope: Scope,
    ledger: &LedgerConfig,
) -> Result<HistoryQuery, ApiError> {
    let params = params(query, HISTORY_PARAMS)?;
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    };
    let account = get("accountId").map(AccountId::parse).transpose()?;
    let from_ms = get("from").map(|v| timestamp_ms("from", v)).transpose()?;
    let to_ms = get("to").map(|v| timestamp_ms("to", v)).transpose()?;
    if let (Some(from), Some(to)) = (from_ms, to_ms)
        && to <= from
    {
        return Err(invalid("to", "must be later than from"));
    }
    Ok(HistoryQuery {
        scope,
        account,
        status: get("status").map(status).transpose()?,
        from_ms,
        to_ms,
        after: get("cursor")
            .map(|c| TransactionCursor::decode(c).map_err(|_| invalid("cursor", BAD_CURSOR)))
            .transpose()?,
        limit: limit(get("limit"), ledger)?,
        scan_rows_max: ledger.history_scan_rows_max,
    })
}

/// `GET /v1/accounts/{id}/postings?limit=&cursor=`.
pub(super) fn statement_query(
    query: Option<&str>,
    account: AccountId,
    ledger: &LedgerConfig,
) -> Result<StatementQuery, ApiError> {
    let params = params(query, STATEMENT_PARAMS)?;
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    };
    Ok(StatementQuery {
        account,
        after: get("cursor")
            .map(|c| PostingCursor::decode(c).map_err(|_| invalid("cursor", BAD_CURSOR)))
            .transpose()?,
        limit: limit(get("limit"), ledger)?,
    })
}

/// The body of `GET /v1/transactions`: transactions as
/// `GET /v1/transactions/{id}` shows them (without `attemptLog`), newest
/// first, and the cursor of the next page (`null` on the last).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(
    description = "One page of transactions, newest first (by creation time, then reference), and where the next page starts."
)]
pub(crate) struct TransactionPage {
    data: Vec<TransactionView>,
    /// Pass it as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

impl TransactionPage {
    pub(super) fn new(page: &Page<TransactionRecord, TransactionCursor>) -> Self {
        Self {
            data: page.rows.iter().map(TransactionView::from).collect(),
            next_cursor: page.next.as_ref().map(TransactionCursor::encode),
        }
    }
}

/// The body of `GET /v1/accounts/{id}/postings`: the account's postings,
/// newest first, and the cursor of the next page (`null` on the last).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(
    description = "One page of an account's postings, newest first, and where the next page starts."
)]
pub(crate) struct PostingPage {
    data: Vec<PostingView>,
    /// Pass it as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// One posting as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(
    as = Posting,
    description = "One side of a completed movement of money: a commit posts two, summing to zero (the account's and the other side's); an opening balance one here and one on the currency's equity account."
)]
pub(crate) struct PostingView {
    /// The reference (`gatewayRef`) of the transaction that moved the
    /// money; `null` for the opening balance. A spender's debit of a shared
    /// account is that spender's transaction: its reference, unlike its
    /// client's `transactionId`, names it alone.
    #[schema(value_type = Option<String>)]
    gateway_ref: Option<GatewayRef>,
    /// Minor units: positive in, negative out.
    amount: i64,
    /// RFC 3339, milliseconds, UTC.
    #[schema(format = DateTime)]
    created_at: String,
}

impl PostingPage {
    pub(super) fn new(page: &Page<PostingRecord, PostingCursor>) -> Self {
        Self {
            data: page
                .rows
                .iter()
                .map(|p| PostingView {
                    gateway_ref: p.gateway_ref.clone(),
                    amount: p.amount,
                    created_at: rfc3339_ms(p.created_at_ms),
                })
                .collect(),
            next_cursor: page.next.map(|c| c.encode()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::domain::ClientId;

    fn ledger() -> LedgerConfig {
        Config::from_toml("").expect("defaults").ledger
    }

    fn refused(query: &str) -> String {
        let scope = Scope::Client(ClientId::parse("alice").unwrap());
        match history_query(Some(query), scope, &ledger()) {
            Ok(q) => panic!("{query} parsed: {q:?}"),
            Err(ApiError::InvalidRequest(m)) => m,
            Err(e) => panic!("{query}: {e:?}"),
        }
    }

    #[test]
    fn every_parameter_is_parsed_into_the_query() {
        let cursor = TransactionCursor {
            created_at_ms: 7,
            key: GatewayRef::parse("t-1").unwrap(),
        };
        let raw = format!(
            "accountId=alice-eur&status=pending&from=2026-01-05T10%3A00%3A00Z\
             &to=2026-01-05T11:00:00.0005%2B01:00&limit=3&cursor={}",
            cursor.encode()
        );
        let q = history_query(Some(&raw), Scope::All, &ledger()).unwrap();
        assert_eq!(q.account, Some(AccountId::parse("alice-eur").unwrap()));
        assert_eq!(q.status, Some(TxStatus::Pending));
        assert_eq!(q.from_ms, Some(1_767_607_200_000));
        // 11:00+01:00 is 10:00Z; half a millisecond past rounds up.
        assert_eq!(q.to_ms, Some(1_767_607_200_001));
        assert_eq!((q.limit, q.after), (3, Some(cursor)));
        let q = history_query(None, Scope::All, &ledger()).unwrap();
        assert_eq!(q.limit, ledger().history_page_rows_default);
        assert_eq!(
            (q.account, q.status, q.from_ms, q.to_ms),
            (None, None, None, None)
        );
    }

    #[test]
    fn every_bad_parameter_is_named_in_the_api_words() {
        let max = ledger().history_page_rows_max;
        for (query, message) in [
            (
                "limit=0",
                format!("limit: must be an integer from 1 to {max}"),
            ),
            (
                "limit=-1",
                format!("limit: must be an integer from 1 to {max}"),
            ),
            (
                "limit=+5",
                format!("limit: must be an integer from 1 to {max}"),
            ),
            (
                "limit=ten",
                format!("limit: must be an integer from 1 to {max}"),
            ),
            (
                &format!("limit={}", max + 1),
                format!("limit: must be an integer from 1 to {max}"),
            ),
            (
                "status=settled",
                "status: must be one of reserved, pending, committed, declined, failed".into(),
            ),
            (
                "from=yesterday",
                "from: must be an RFC 3339 timestamp with a time zone (2026-01-05T10:00:00Z)"
                    .into(),
            ),
            (
                "to=2026-01-05T10:00:00",
                "to: must be an RFC 3339 timestamp with a time zone (2026-01-05T10:00:00Z)".into(),
            ),
            (
                "from=2026-01-05T10:00:00Z&to=2026-01-05T10:00:00Z",
                "to: must be later than from".into(),
            ),
            (
                "accountId=a%20b",
                "accountId: may contain only letters, digits and . _ : -".into(),
            ),
            (
                "cursor=bm9wZQ",
                "cursor: is not a cursor this API gave out (pass nextCursor as it came)".into(),
            ),
            ("limit=1&limit=2", "limit: appears more than once".into()),
            (
                "fee=1",
                "fee: is not a parameter of this request (its parameters are accountId, \
                 status, from, to, limit, cursor)"
                    .into(),
            ),
        ] {
            assert_eq!(refused(query), message, "{query}");
        }
        // A postings cursor is not a transactions cursor.
        let posting = PostingCursor { id: 3 }.encode();
        assert!(refused(&format!("cursor={posting}")).starts_with("cursor: "));
    }

    #[test]
    fn the_statement_takes_limit_and_cursor_only() {
        let account = AccountId::parse("alice-eur").unwrap();
        let cursor = PostingCursor { id: 9 };
        let raw = format!("limit=2&cursor={}", cursor.encode());
        let q = statement_query(Some(&raw), account.clone(), &ledger()).unwrap();
        assert_eq!((q.limit, q.after), (2, Some(cursor)));
        let e = statement_query(Some("status=committed"), account, &ledger()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "status: is not a parameter of this request (its parameters are limit, cursor)"
        );
    }
}
