//! History reads: which transactions a listing asks for ([`HistoryQuery`]),
//! an account's statement ([`StatementQuery`]), the page they answer
//! ([`Page`]) and where the next page starts ([`TransactionCursor`],
//! [`PostingCursor`]). The SQL is in `sql.rs`, with the other reads.
//!
//! Pages are keyset pages, newest first: a page holds the rows strictly
//! after its cursor's position in the order `(created_at_ms, gateway_ref)`
//! descending (transactions) or `id` descending (postings), so a row
//! inserted while a client pages (always newer than what it has read) never
//! moves another row from one page to the next: no row is served twice or
//! skipped. A cursor is opaque to clients: base64url (no padding) of a
//! versioned text, so its form can change without clients noticing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::TransactionRecord;
use crate::domain::{AccountId, ClientId, GatewayRef, TxStatus};

/// Which transactions a history read may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Those this client submitted (`transact`).
    Client(ClientId),
    /// Every client's (`auditor`).
    All,
}

/// `GET /v1/transactions`: one page of transactions, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub scope: Scope,
    /// Only those with this account as source or destination.
    pub account: Option<AccountId>,
    pub status: Option<TxStatus>,
    /// Created at or after this, unix ms.
    pub from_ms: Option<i64>,
    /// Created before this, unix ms.
    pub to_ms: Option<i64>,
    /// Where the previous page ended; `None` for the first page.
    pub after: Option<TransactionCursor>,
    /// Most rows on the page (at least 1; the edge bounds it by config).
    pub limit: u32,
    /// With `account` or `status` (filters no index serves), most rows of
    /// the range read for one page: the page may come back short, with a
    /// cursor to go on from (`ledger.history_scan_rows_max`).
    pub scan_rows_max: u32,
}

/// `GET /v1/accounts/{id}/postings`: one page of an account's postings,
/// newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementQuery {
    pub account: AccountId,
    pub after: Option<PostingCursor>,
    /// Most rows on the page (at least 1).
    pub limit: u32,
}

/// One page of a history read, and where the next one starts (`None`: this
/// was the last).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T, C> {
    pub rows: Vec<T>,
    pub next: Option<C>,
}

/// One side of a completed movement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostingRecord {
    pub id: i64,
    /// The transaction's reference; `None` for an opening balance (it has
    /// no transaction).
    pub gateway_ref: Option<GatewayRef>,
    pub account: AccountId,
    /// Minor units: positive in, negative out.
    pub amount: i64,
    pub created_at_ms: i64,
}

/// Why a cursor was refused: it is not one this API gave out (garbled,
/// tampered with, or another listing's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is not a cursor this API gave out")]
pub struct BadCursor;

/// The position of the last transaction of a page: `(created_at_ms,
/// gateway_ref)` (the reference, unique across clients, breaks ties).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionCursor {
    pub created_at_ms: i64,
    pub key: GatewayRef,
}

/// The position of the last posting of a page: its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostingCursor {
    pub id: i64,
}

/// The versioned prefixes of the cursors' text: one listing's cursor is
/// refused by the other.
const TX_V1: &str = "tx1";
const POSTING_V1: &str = "po1";
/// Between the parts of a cursor's text; the reference, which may hold
/// anything of the id alphabet, comes last.
const SEP: char = '|';

impl TransactionCursor {
    pub fn of(row: &TransactionRecord) -> Self {
        Self {
            created_at_ms: row.created_at_ms,
            key: row.gateway_ref.clone(),
        }
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{TX_V1}{SEP}{}{SEP}{}",
            self.created_at_ms, self.key
        ))
    }

    pub fn decode(raw: &str) -> Result<Self, BadCursor> {
        let text = decoded_text(raw)?;
        let mut parts = text.splitn(3, SEP);
        let (Some(TX_V1), Some(ms), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(BadCursor);
        };
        Ok(Self {
            created_at_ms: canonical_i64(ms)?,
            key: GatewayRef::parse(id).map_err(|_| BadCursor)?,
        })
    }
}

impl PostingCursor {
    pub fn of(row: &PostingRecord) -> Self {
        Self { id: row.id }
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{POSTING_V1}{SEP}{}", self.id))
    }

    pub fn decode(raw: &str) -> Result<Self, BadCursor> {
        let text = decoded_text(raw)?;
        let mut parts = text.splitn(2, SEP);
        let (Some(POSTING_V1), Some(id)) = (parts.next(), parts.next()) else {
            return Err(BadCursor);
        };
        Ok(Self {
            id: canonical_i64(id)?,
        })
    }
}

/// Longest cursor text accepted before decoding (ours are under 100).
const CURSOR_LEN_MAX: usize = 256;

fn decoded_text(raw: &str) -> Result<String, BadCursor> {
    if raw.is_empty() || raw.len() > CURSOR_LEN_MAX {
        return Err(BadCursor);
    }
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| BadCursor)?;
    String::from_utf8(bytes).map_err(|_| BadCursor)
}

/// An integer as `encode` writes it (no sign but `-`, no leading zeros), so
/// each position has exactly one cursor.
fn canonical_i64(raw: &str) -> Result<i64, BadCursor> {
    let n: i64 = raw.parse().map_err(|_| BadCursor)?;
    if n.to_string() != raw {
        return Err(BadCursor);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_as_written() {
        let tx = TransactionCursor {
            created_at_ms: 1_733_620_000_123,
            key: GatewayRef::parse("order-1042:a.b_c").unwrap(),
        };
        assert_eq!(TransactionCursor::decode(&tx.encode()), Ok(tx.clone()));
        let posting = PostingCursor { id: 42 };
        assert_eq!(PostingCursor::decode(&posting.encode()), Ok(posting));
        // Opaque: no separator or padding a client might be tempted to edit.
        assert!(
            tx.encode()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn garbled_tampered_or_foreign_cursors_are_refused() {
        let tx = TransactionCursor {
            created_at_ms: 5,
            key: GatewayRef::parse("t1").unwrap(),
        }
        .encode();
        let posting = PostingCursor { id: 7 }.encode();
        let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
        for raw in [
            String::new(),
            "!!!".into(),
            format!("{tx}="),
            "x".repeat(CURSOR_LEN_MAX + 1),
            posting.clone(),
            b64("tx1|5"),
            b64("tx2|5|t1"),
            b64("tx1|05|t1"),
            b64("tx1|+5|t1"),
            b64("tx1|5|a b"),
            b64("tx1|99999999999999999999|t1"),
            URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
        ] {
            assert_eq!(TransactionCursor::decode(&raw), Err(BadCursor), "{raw}");
        }
        for raw in [tx, b64("po1|"), b64("po1|x"), b64("po1|7|8")] {
            assert_eq!(PostingCursor::decode(&raw), Err(BadCursor), "{raw}");
        }
    }
}
