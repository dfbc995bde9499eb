//! Hostile input at the edge: bodies and headers crafted to crash, confuse or
//! exhaust the parser. Each is refused with a 4xx JSON error (headers: a 4xx
//! or a closed connection), nothing reaches the ledger or a switch, and the
//! gateway goes on serving.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::harness::{self, Options, Reply, TestGateway, spawn_gateway_with};

const BALANCE: i64 = 10_000;

struct Setup {
    gw: TestGateway,
    sims: Vec<switchboard::devtools::sim::SimHandle>,
    token: String,
}

async fn setup() -> Setup {
    setup_with(&[]).await
}

/// [`setup`] with config `layers` over the test config.
async fn setup_with(layers: &[&str]) -> Setup {
    let sims = harness::spawn_sims(1).await;
    let gw = spawn_gateway_with(Options {
        switches: harness::switch_list(&sims),
        layers: layers.iter().map(|l| l.to_string()).collect(),
        ..Default::default()
    })
    .await;
    gw.account("alice-eur", "alice", "EUR", BALANCE).await;
    let token = gw.token("alice", &["transact"]);
    Setup { gw, sims, token }
}

/// POSTs raw bytes to `/v1/transactions`; `content_type: None` sends none.
async fn post_raw(
    gw: &TestGateway,
    token: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Reply {
    let mut req = gw
        .client
        .post(format!("{}/v1/transactions", gw.base))
        .bearer_auth(token)
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.expect("send");
    harness::read(resp).await
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn path_segment(raw: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A debit of `amount` (raw JSON text) with transaction id `id` (raw JSON text).
fn debit_text(id_json: &str, amount_json: &str) -> String {
    format!(
        r#"{{"transactionId":{id_json},"type":"debit","accountId":"alice-eur","amount":{amount_json},"currency":"EUR"}}"#
    )
}

fn assert_refused(r: &Reply, what: &str, status: u16, code: &str) {
    assert!(
        (400..500).contains(&r.status),
        "{what}: expected a 4xx, got {} {}",
        r.status,
        r.json
    );
    assert!(
        r.json["error"]["code"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{what}: no error.code in {}",
        r.json
    );
    assert!(
        r.json["error"]["message"].is_string(),
        "{what}: no error.message in {}",
        r.json
    );
    assert_eq!((r.status, r.code()), (status, code), "{what}: {}", r.json);
}

/// Nothing moved, nothing stored under any id used, nothing forwarded.
async fn assert_untouched(s: &Setup, ids: &[String]) {
    assert_eq!(
        s.gw.balance("alice-eur").await,
        BALANCE,
        "the balance moved"
    );
    let auditor = s.gw.token("auditor", &["auditor"]);
    for id in ids {
        let path = format!("/v1/transactions/{}", path_segment(id));
        for token in [&s.token, &auditor] {
            let r = s.gw.get(&path, token).await;
            assert_eq!(r.status, 404, "GET {path}: {}", r.json);
            assert_eq!(r.code(), "not_found");
        }
    }
    let stats = s.sims[0].stats().await;
    assert_eq!(stats.received, 0, "a hostile request reached the switch");
}

/// (what, content type, body, expected status, expected code, the
/// transaction ids it names).
type Case<'a> = (
    &'a str,
    Option<&'a str>,
    Vec<u8>,
    u16,
    &'a str,
    Vec<&'a str>,
);

#[tokio::test]
async fn hostile_bodies_get_4xx_json_and_leave_the_ledger_alone() {
    let s = setup().await;
    let gw = &s.gw;
    let json_ct = Some("application/json");

    let deep_array = "[".repeat(10_000).into_bytes();
    let deep_metadata = format!(
        r#"{{"transactionId":"h-deep-meta","type":"debit","accountId":"alice-eur","amount":1,"currency":"EUR","metadata":{}1{}}}"#,
        r#"{"a":"#.repeat(10_000),
        "}".repeat(10_000)
    );
    assert!(
        deep_metadata.len() < 65_536,
        "must stay under the body limit"
    );
    let bad_utf8 = {
        let mut b = br#"{"transactionId":"h-utf8-"#.to_vec();
        b.extend([0xff, 0xfe, 0xc3]);
        b.extend(br#"","type":"debit","accountId":"alice-eur","amount":1,"currency":"EUR"}"#);
        b
    };
    let with_bom = {
        let mut b = vec![0xef, 0xbb, 0xbf];
        b.extend(debit_text(r#""h-bom""#, "1").into_bytes());
        b
    };
    let raw_nul = debit_text("\"h-nul-raw\0x\"", "1");

    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            json_ct,
            br#"{"transactionId": "h-malformed", "type": "debit","#.to_vec(),
            400,
            "invalid_request",
            vec!["h-malformed"],
        ),
        ("10,000 [", json_ct, deep_array, 400, "invalid_request", vec![]),
        (
            "10,000 nested objects in metadata",
            json_ct,
            deep_metadata.into_bytes(),
            400,
            "invalid_request",
            vec!["h-deep-meta"],
        ),
        (
            "duplicate amount",
            json_ct,
            br#"{"transactionId":"h-dup","type":"debit","accountId":"alice-eur","amount":1,"amount":9000,"currency":"EUR"}"#.to_vec(),
            400,
            "invalid_request",
            vec!["h-dup"],
        ),
        (
            "duplicate transactionId",
            json_ct,
            br#"{"transactionId":"h-dup-a","transactionId":"h-dup-b","type":"debit","accountId":"alice-eur","amount":1,"currency":"EUR"}"#.to_vec(),
            400,
            "invalid_request",
            vec!["h-dup-a", "h-dup-b"],
        ),
        (
            "amount as a string",
            json_ct,
            debit_text(r#""h-str-amount""#, r#""100""#).into_bytes(),
            400,
            "invalid_request",
            vec!["h-str-amount"],
        ),
        (
            "transactionId as a number",
            json_ct,
            debit_text("12345", "1").into_bytes(),
            400,
            "invalid_request",
            vec!["12345"],
        ),
        (
            "amount 2^63",
            json_ct,
            debit_text(r#""h-2p63""#, "9223372036854775808").into_bytes(),
            400,
            "invalid_request",
            vec!["h-2p63"],
        ),
        (
            "amount -2^63",
            json_ct,
            debit_text(r#""h-m2p63""#, "-9223372036854775808").into_bytes(),
            400,
            "invalid_request",
            vec!["h-m2p63"],
        ),
        (
            "amount 10^400",
            json_ct,
            debit_text(r#""h-huge""#, &format!("1{}", "0".repeat(400))).into_bytes(),
            400,
            "invalid_request",
            vec!["h-huge"],
        ),
        (
            "amount -0",
            json_ct,
            debit_text(r#""h-neg-zero""#, "-0").into_bytes(),
            400,
            "invalid_request",
            vec!["h-neg-zero"],
        ),
        (
            "amount 1e3",
            json_ct,
            debit_text(r#""h-exp""#, "1e3").into_bytes(),
            400,
            "invalid_request",
            vec!["h-exp"],
        ),
        (
            "amount 1.0",
            json_ct,
            debit_text(r#""h-float""#, "1.0").into_bytes(),
            400,
            "invalid_request",
            vec!["h-float"],
        ),
        (
            "amount NaN",
            json_ct,
            debit_text(r#""h-nan""#, "NaN").into_bytes(),
            400,
            "invalid_request",
            vec!["h-nan"],
        ),
        (
            "amount Infinity",
            json_ct,
            debit_text(r#""h-inf""#, "Infinity").into_bytes(),
            400,
            "invalid_request",
            vec!["h-inf"],
        ),
        (
            "amount 0x10",
            json_ct,
            debit_text(r#""h-hex""#, "0x10").into_bytes(),
            400,
            "invalid_request",
            vec!["h-hex"],
        ),
        (
            "id with ü",
            json_ct,
            debit_text(r#""tx-ü""#, "1").into_bytes(),
            400,
            "invalid_request",
            vec!["tx-ü"],
        ),
        (
            "id with an emoji",
            json_ct,
            debit_text(r#""tx-💸""#, "1").into_bytes(),
            400,
            "invalid_request",
            vec!["tx-💸"],
        ),
        (
            "id with a right-to-left mark",
            json_ct,
            debit_text(r#""tx-\u200f1""#, "1").into_bytes(),
            400,
            "invalid_request",
            vec!["tx-\u{200f}1"],
        ),
        (
            "id of 65 characters",
            json_ct,
            debit_text(&format!("\"{}\"", "x".repeat(65)), "1").into_bytes(),
            400,
            "invalid_request",
            vec![],
        ),
        (
            "id with an escaped null byte",
            json_ct,
            debit_text(r#""h-nul\u0000x""#, "1").into_bytes(),
            400,
            "invalid_request",
            vec!["h-nul\0x", "h-nul"],
        ),
        (
            "id with a raw null byte",
            json_ct,
            raw_nul.into_bytes(),
            400,
            "invalid_request",
            vec!["h-nul-raw\0x", "h-nul-raw"],
        ),
        (
            "accountId with a right-to-left mark",
            json_ct,
            br#"{"transactionId":"h-rtl-acct","type":"debit","accountId":"alice-eur\u200f","amount":1,"currency":"EUR"}"#.to_vec(),
            400,
            "invalid_request",
            vec!["h-rtl-acct"],
        ),
        (
            "lowercase currency",
            json_ct,
            br#"{"transactionId":"h-eur","type":"debit","accountId":"alice-eur","amount":1,"currency":"eur"}"#.to_vec(),
            400,
            "invalid_request",
            vec!["h-eur"],
        ),
        (
            "an unknown field",
            json_ct,
            br#"{"transactionId":"h-extra","type":"debit","accountId":"alice-eur","amount":1,"currency":"EUR","admin":true}"#.to_vec(),
            400,
            "invalid_request",
            vec!["h-extra"],
        ),
        (
            "transfer to itself",
            json_ct,
            br#"{"transactionId":"h-self","type":"transfer","from":"alice-eur","to":"alice-eur","amount":1,"currency":"EUR"}"#.to_vec(),
            400,
            "invalid_request",
            vec!["h-self"],
        ),
        (
            "metadata that is not an object",
            json_ct,
            br#"{"transactionId":"h-meta","type":"debit","accountId":"alice-eur","amount":1,"currency":"EUR","metadata":[1]}"#.to_vec(),
            400,
            "invalid_request",
            vec!["h-meta"],
        ),
        (
            "invalid UTF-8",
            json_ct,
            bad_utf8,
            400,
            "invalid_request",
            vec!["h-utf8-"],
        ),
        (
            "a byte-order mark",
            json_ct,
            with_bom,
            400,
            "invalid_request",
            vec!["h-bom"],
        ),
        (
            "trailing garbage",
            json_ct,
            format!("{} x", debit_text(r#""h-trailing""#, "1")).into_bytes(),
            400,
            "invalid_request",
            vec!["h-trailing"],
        ),
        (
            "two JSON documents",
            json_ct,
            format!(
                "{}{}",
                debit_text(r#""h-two-a""#, "1"),
                debit_text(r#""h-two-b""#, "1")
            )
            .into_bytes(),
            400,
            "invalid_request",
            vec!["h-two-a", "h-two-b"],
        ),
        (
            "text/plain",
            Some("text/plain"),
            debit_text(r#""h-text""#, "1").into_bytes(),
            415,
            "unsupported_media_type",
            vec!["h-text"],
        ),
        (
            "form-encoded",
            Some("application/x-www-form-urlencoded"),
            b"transactionId=h-form&type=debit&accountId=alice-eur&amount=1&currency=EUR".to_vec(),
            415,
            "unsupported_media_type",
            vec!["h-form"],
        ),
        ("an empty body", json_ct, Vec::new(), 400, "invalid_request", vec![]),
        ("an empty body, no type", None, Vec::new(), 400, "invalid_request", vec![]),
        ("whitespace only", json_ct, b" \n\t ".to_vec(), 400, "invalid_request", vec![]),
        ("a JSON array", json_ct, br#"["h-array"]"#.to_vec(), 400, "invalid_request", vec!["h-array"]),
        ("a JSON string", json_ct, br#""h-string""#.to_vec(), 400, "invalid_request", vec!["h-string"]),
        ("a JSON number", json_ct, b"1".to_vec(), 400, "invalid_request", vec![]),
        ("JSON null", json_ct, b"null".to_vec(), 400, "invalid_request", vec![]),
        ("JSON true", json_ct, b"true".to_vec(), 400, "invalid_request", vec![]),
    ];

    let mut ids = Vec::new();
    for (what, ct, body, status, code, names) in cases {
        let r = post_raw(gw, &s.token, ct, body).await;
        assert_refused(&r, what, status, code);
        ids.extend(names.into_iter().map(str::to_owned));
    }
    ids.push("x".repeat(65));

    // A content type that is not even text.
    let resp = gw
        .client
        .post(format!("{}/v1/transactions", gw.base))
        .bearer_auth(&s.token)
        .header(
            "content-type",
            reqwest::header::HeaderValue::from_bytes(b"application/json; charset=\xe9\xff")
                .expect("obs-text is a valid header value"),
        )
        .body(debit_text(r#""h-ct-junk""#, "1"))
        .send()
        .await
        .expect("send");
    let r = harness::read(resp).await;
    assert_refused(
        &r,
        "a non-UTF-8 content type",
        415,
        "unsupported_media_type",
    );
    ids.push("h-ct-junk".into());

    // 10 MB with a Content-Length: refused from the header.
    let r = post_raw(gw, &s.token, json_ct, big_body("h-10mb", 10 << 20)).await;
    assert_refused(&r, "10 MB with Content-Length", 413, "payload_too_large");
    ids.push("h-10mb".into());

    assert_untouched(&s, &ids).await;
    // And the gateway still does its job.
    let ok = gw
        .post(
            "/v1/transactions",
            &s.token,
            &harness::debit("h-after", "alice-eur", 1),
        )
        .await;
    assert_eq!(ok.status, 201, "{}", ok.json);
}

/// A valid-looking debit padded in metadata to about `size` bytes.
fn big_body(id: &str, size: usize) -> Vec<u8> {
    let pad = "x".repeat(size);
    harness::with_metadata(harness::debit(id, "alice-eur", 1), json!({"pad": pad}))
        .to_string()
        .into_bytes()
}

// --- raw HTTP/1.1 over TLS ---------------------------------------------------------

fn connector() -> TlsConnector {
    switchboard::edge::tls::install_crypto_provider();
    let roots = switchboard::edge::tls::root_store(&harness::certs().ca_cert()).expect("CA");
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls(gw: &TestGateway) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    connector()
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake")
}

/// What came back on a raw connection: the bytes read until a whole answer
/// arrived or the server closed the connection (cleanly or not).
struct RawAnswer {
    bytes: Vec<u8>,
}

impl RawAnswer {
    fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        let line = text.lines().next()?;
        let rest = line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
        rest.get(..3)?.parse().ok()
    }

    fn body_json(&self) -> Option<Value> {
        let at = self.bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        serde_json::from_slice(&self.bytes[at + 4..]).ok()
    }

    fn describe(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        text.chars().take(400).collect()
    }

    /// A 4xx, or a connection closed with no answer; never anything else.
    fn assert_refused(&self, what: &str) {
        eprintln!("{what}: {:?}", self.status());
        match self.status() {
            None => assert!(
                self.bytes.is_empty(),
                "{what}: not HTTP: {}",
                self.describe()
            ),
            Some(status) => {
                assert!(
                    (400..500).contains(&status),
                    "{what}: expected a 4xx or a closed connection, got {}",
                    self.describe()
                );
            }
        }
    }
}

/// Sends `head` then `body` (concurrently with reading, so an early answer
/// is not lost to a reset), and reads until the server closes.
async fn exchange(gw: &TestGateway, head: Vec<u8>, body: Option<(Vec<u8>, usize)>) -> RawAnswer {
    let stream = tls(gw).await;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        if wr.write_all(&head).await.is_err() {
            return;
        }
        if let Some((chunk, times)) = body {
            for _ in 0..times {
                if wr.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        }
        let _ = wr.flush().await;
    });
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                bytes.extend_from_slice(&buf[..n]);
                if answer_complete(&bytes) {
                    break;
                }
            }
            Err(_) => panic!(
                "no answer and no close within 10 s; got so far: {}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
    writer.abort();
    RawAnswer { bytes }
}

/// A whole response with a `Content-Length` body has arrived.
fn answer_complete(bytes: &[u8]) -> bool {
    let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..at]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| bytes.len() >= at + 4 + len)
}

async fn still_serves(s: &Setup, what: &str) {
    let r = s.gw.get("/v1/accounts/alice-eur", &s.token).await;
    assert_eq!(r.status, 200, "after {what}: {}", r.json);
    assert_eq!(r.json["balance"], BALANCE, "after {what}");
}

#[tokio::test]
async fn a_streamed_10_mb_body_gets_413() {
    let s = setup().await;
    let head = format!(
        "POST /v1/transactions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        s.token
    );
    let mut head = head.into_bytes();
    let opening = br#"{"transactionId":"h-stream","type":"debit","accountId":"alice-eur","amount":1,"currency":"EUR","metadata":{"pad":""#;
    head.extend(format!("{:x}\r\n", opening.len()).as_bytes());
    head.extend(opening);
    head.extend(b"\r\n");
    let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
    chunk.extend(std::iter::repeat_n(b'x', 64 * 1024));
    chunk.extend(b"\r\n");
    // 160 chunks of 64 KiB: 10 MiB, never finished.
    let answer = exchange(&s.gw, head, Some((chunk, 160))).await;
    assert_eq!(answer.status(), Some(413), "{}", answer.describe());
    let body = answer.body_json().expect("a JSON body");
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert_untouched(&s, &["h-stream".to_owned()]).await;
    still_serves(&s, "a streamed 10 MB body").await;
}

#[tokio::test]
async fn hostile_headers_are_refused_and_the_gateway_goes_on() {
    let s = setup().await;
    let request = |extra: &str| {
        format!(
            "GET /v1/accounts/alice-eur HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n"
        )
        .into_bytes()
    };

    // A sane raw request works (the helper itself is right).
    let ok = exchange(
        &s.gw,
        request(&format!("Authorization: Bearer {}\r\n", s.token)),
        None,
    )
    .await;
    assert_eq!(ok.status(), Some(200), "{}", ok.describe());
    assert_eq!(ok.body_json().expect("JSON")["balance"], BALANCE);

    // A 100 KB Authorization header.
    let huge_auth = format!("Authorization: Bearer {}\r\n", "A".repeat(100 * 1024));
    let answer = exchange(&s.gw, request(&huge_auth), None).await;
    answer.assert_refused("a 100 KB Authorization header (HTTP/1.1)");
    still_serves(&s, "a 100 KB Authorization header").await;

    // A token just under the 64 KiB header buffer: read, then refused as a token.
    let big_auth = format!("Authorization: Bearer {}\r\n", "A".repeat(32 * 1024));
    let answer = exchange(&s.gw, request(&big_auth), None).await;
    assert_eq!(answer.status(), Some(401), "{}", answer.describe());
    assert_eq!(
        answer.body_json().expect("JSON")["error"]["code"],
        "unauthorized"
    );

    // The same over HTTP/2 (reqwest negotiates it): a 4xx or a reset stream.
    let h2 =
        s.gw.client
            .get(format!("{}/v1/accounts/alice-eur", s.gw.base))
            .header(
                "authorization",
                format!("Bearer {}", "A".repeat(100 * 1024)),
            )
            .send()
            .await;
    if let Ok(resp) = h2 {
        let status = resp.status().as_u16();
        assert!(
            (400..500).contains(&status),
            "HTTP/2 100 KB header: {status}"
        );
    }
    still_serves(&s, "a 100 KB Authorization header over HTTP/2").await;

    // A header line without a colon.
    let answer = exchange(&s.gw, request("NoColonHere\r\n"), None).await;
    answer.assert_refused("a header line without a colon");
    assert!(
        answer.status().is_some() || answer.bytes.is_empty(),
        "{}",
        answer.describe()
    );
    still_serves(&s, "a header line without a colon").await;

    // Header names and values that are not tokens.
    for (what, line) in [
        ("a space in a header name", "Bad Name: x\r\n"),
        ("a NUL in a header value", "X-Nul: a\0b\r\n"),
        ("obsolete line folding", "X-Fold: a\r\n b\r\n"),
    ] {
        let answer = exchange(&s.gw, request(line), None).await;
        // hyper may accept some of these as harmless; without a token it is 401.
        match answer.status() {
            Some(401) | None => {}
            Some(status) => assert!((400..500).contains(&status), "{what}: {status}"),
        }
        still_serves(&s, what).await;
    }

    // 10,000 headers.
    let many: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = exchange(
        &s.gw,
        request(&format!("Authorization: Bearer {}\r\n{many}", s.token)),
        None,
    )
    .await;
    answer.assert_refused("10,000 headers");
    still_serves(&s, "10,000 headers").await;

    // 200 small headers (over httparse's default of 100, under the buffer).
    let some: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = exchange(
        &s.gw,
        request(&format!("Authorization: Bearer {}\r\n{some}", s.token)),
        None,
    )
    .await;
    answer.assert_refused("200 headers");
    still_serves(&s, "200 headers").await;

    // A request line of 100 KB.
    let long_path = format!(
        "GET /v1/accounts/{} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let answer = exchange(&s.gw, long_path.into_bytes(), None).await;
    answer.assert_refused("a 100 KB request line");

    // Conflicting framing: Content-Length and chunked (request smuggling).
    let smuggle = format!(
        "POST /v1/transactions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\n",
        s.token
    );
    let answer = exchange(&s.gw, smuggle.into_bytes(), None).await;
    answer.assert_refused("Content-Length with chunked");

    // Two Content-Lengths that disagree.
    let body = debit_text(r#""h-two-cl""#, "1");
    let two_cl = format!(
        "POST /v1/transactions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nContent-Length: 5\r\n\r\n{body}",
        s.token,
        body.len()
    );
    let answer = exchange(&s.gw, two_cl.into_bytes(), None).await;
    answer.assert_refused("two different Content-Lengths");

    assert_untouched(&s, &["h-two-cl".to_owned()]).await;
    still_serves(&s, "all of the above").await;
}

// --- clumsy clients: slow bodies, bodies that keep coming, no Host ----------------

/// The head of a `POST /v1/transactions` with `framing` (a `Content-Length`
/// or `Transfer-Encoding` line and anything else to add).
fn post_head(token: &str, framing: &str) -> Vec<u8> {
    format!(
        "POST /v1/transactions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{framing}\r\n"
    )
    .into_bytes()
}

/// One chunk of a chunked body.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut c = format!("{:x}\r\n", data.len()).into_bytes();
    c.extend(data);
    c.extend(b"\r\n");
    c
}

/// Writes `head`, then `parts` one after another with `pause` between
/// them, while reading; returns the answer and how long it took from the
/// head's last byte.
async fn trickle(
    gw: &TestGateway,
    head: Vec<u8>,
    parts: Vec<Vec<u8>>,
    pause: Duration,
) -> (RawAnswer, Duration) {
    let stream = tls(gw).await;
    let (mut rd, mut wr) = tokio::io::split(stream);
    wr.write_all(&head).await.expect("write the head");
    wr.flush().await.expect("flush");
    let started = tokio::time::Instant::now();
    let writer = tokio::spawn(async move {
        for part in parts {
            tokio::time::sleep(pause).await;
            if wr.write_all(&part).await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
        // Then nothing more, with the connection left open.
        std::future::pending::<()>().await;
    });
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                bytes.extend_from_slice(&buf[..n]);
                if answer_complete(&bytes) {
                    break;
                }
            }
            Err(_) => panic!("no answer within 15 s: {}", String::from_utf8_lossy(&bytes)),
        }
    }
    writer.abort();
    (RawAnswer { bytes }, started.elapsed())
}

#[tokio::test]
async fn a_body_that_arrives_too_slowly_gets_408_not_a_5xx() {
    // The deadline (3 s, then 504 one second later) is far from the body
    // timeout (600 ms): a 408 at the body timeout is the body timeout's.
    let s =
        setup_with(&["[server]\nbody_read_timeout_ms = 600\nrequest_deadline_ms = 3000\n"]).await;
    let body = debit_text(r#""h-slow""#, "1").into_bytes();

    // A Content-Length body that stops a third of the way in.
    let head = post_head(&s.token, &format!("Content-Length: {}\r\n", body.len()));
    let third = body[..body.len() / 3].to_vec();
    let (answer, took) = trickle(&s.gw, head, vec![third], Duration::from_millis(50)).await;
    assert_eq!(
        answer.status(),
        Some(408),
        "a stalled body: {}",
        answer.describe()
    );
    let json = answer.body_json().expect("a JSON body");
    assert_eq!(json["error"]["code"], "request_timeout", "{json}");
    assert!(json["error"]["message"].is_string(), "{json}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(2500),
        "a stalled body answered after {took:?}"
    );

    // A chunked body that never stops coming, one byte every 100 ms: the
    // timeout is for the whole body, not between bytes.
    let head = post_head(&s.token, "Transfer-Encoding: chunked\r\n");
    let drip: Vec<Vec<u8>> = body.iter().map(|b| chunk(&[*b])).collect();
    let (answer, took) = trickle(&s.gw, head, drip, Duration::from_millis(100)).await;
    assert_eq!(
        answer.status(),
        Some(408),
        "a trickled body: {}",
        answer.describe()
    );
    assert_eq!(
        answer.body_json().expect("JSON")["error"]["code"],
        "request_timeout"
    );
    assert!(
        took < Duration::from_millis(2500),
        "a trickled body answered after {took:?}"
    );

    assert_untouched(&s, &["h-slow".to_owned()]).await;
    // Counted as the client's error, not as a 5xx.
    let m = s.gw.ops_get("/metrics").await.1;
    let count = |status: &str| {
        harness::metric(
            &m,
            &format!(
                "switchboard_http_requests_total{{route=\"/v1/transactions\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!((count("408"), count("504")), (2.0, 0.0), "{m}");
    still_serves(&s, "slow bodies").await;
}

/// Writes `head` and then `chunk` `times` over, all of it before reading a
/// byte, then reads until the server closes: what a client that sends its
/// whole request first does (Python's `http.client`, and so `requests`).
/// Such a client treats a failed write as the end: a server that closes
/// with the body unread (a reset: "broken pipe") loses it the answer.
async fn send_all_then_read(
    gw: &TestGateway,
    head: Vec<u8>,
    chunk: Vec<u8>,
    times: usize,
) -> RawAnswer {
    let mut stream = tls(gw).await;
    let send = async {
        stream.write_all(&head).await?;
        for _ in 0..times {
            stream.write_all(&chunk).await?;
        }
        stream.flush().await
    };
    // A server that stops reading without closing would block the writes.
    match tokio::time::timeout(Duration::from_secs(30), send).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!(
            "the gateway closed before the client had sent its body ({e}): a client that \
             sends first never reads the answer"
        ),
        Err(_) => panic!("the server neither read the body nor closed within 30 s"),
    }
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut bytes));
    match read.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("reading the answer ended with: {e}"),
        Err(_) => panic!("no close within 15 s: {}", String::from_utf8_lossy(&bytes)),
    }
    RawAnswer { bytes }
}

#[tokio::test]
async fn a_client_that_sends_all_of_a_10_mb_body_first_still_reads_its_413() {
    let s = setup().await;
    let pad = vec![b'x'; 64 * 1024];

    // Content-Length: refused from the header, the body never read.
    let size = 160 * pad.len();
    let head = post_head(&s.token, &format!("Content-Length: {size}\r\n"));
    let answer = send_all_then_read(&s.gw, head, pad.clone(), 160).await;
    assert_eq!(
        answer.status(),
        Some(413),
        "10 MB with Content-Length: {}",
        answer.describe()
    );
    assert_eq!(
        answer.body_json().expect("a JSON body")["error"]["code"],
        "payload_too_large"
    );

    // Chunked: refused once the limit is crossed, mid-body.
    let mut head = post_head(&s.token, "Transfer-Encoding: chunked\r\n");
    head.extend(chunk(
        br#"{"transactionId":"h-all-first","type":"debit","accountId":"alice-eur","amount":1,"currency":"EUR","metadata":{"pad":""#,
    ));
    let answer = send_all_then_read(&s.gw, head, chunk(&pad), 160).await;
    assert_eq!(
        answer.status(),
        Some(413),
        "10 MB chunked: {}",
        answer.describe()
    );
    assert_eq!(
        answer.body_json().expect("a JSON body")["error"]["code"],
        "payload_too_large"
    );

    assert_untouched(&s, &["h-all-first".to_owned()]).await;
    still_serves(&s, "10 MB bodies sent whole").await;
}

#[tokio::test]
async fn lingering_is_bounded_by_bytes_and_time() {
    // 256 KiB and 1 s: a client that sends more, or for longer, is cut off.
    let s = setup_with(&["[server]\nlinger_bytes_max = 262144\nlinger_timeout_ms = 1000\n"]).await;
    let closed = "switchboard_connections_closed_total{reason=\"linger_bytes\"}";
    let before = s.gw.metric(closed).await;
    let head = post_head(&s.token, &format!("Content-Length: {}\r\n", 10 << 20));
    let answer = exchange(&s.gw, head, Some((vec![b'x'; 64 * 1024], 160))).await;
    assert_eq!(answer.status(), Some(413), "{}", answer.describe());
    harness::eventually(Duration::from_secs(5), "cut off after 256 KiB", || async {
        s.gw.metric(closed).await > before
    })
    .await;

    // One that keeps the connection open, sending nothing more and never
    // closing: closed at the timeout.
    let timed_out = "switchboard_connections_closed_total{reason=\"linger_timeout\"}";
    let before = s.gw.metric(timed_out).await;
    let mut stream = tls(&s.gw).await;
    let head = post_head(&s.token, &format!("Content-Length: {}\r\n", 1 << 20));
    stream.write_all(&head).await.expect("write the head");
    stream.flush().await.expect("flush");
    let started = tokio::time::Instant::now();
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !answer_complete(&bytes) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed before answering");
        bytes.extend_from_slice(&buf[..n]);
    }
    let answer = RawAnswer { bytes };
    assert_eq!(answer.status(), Some(413), "{}", answer.describe());
    harness::eventually(Duration::from_secs(5), "cut off after 1 s", || async {
        s.gw.metric(timed_out).await > before
    })
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "cut off after {took:?}"
    );
    drop(stream);
    still_serves(&s, "lingering").await;
}

#[tokio::test]
async fn an_http_1_1_request_without_one_valid_host_gets_400() {
    let s = setup().await;
    let auth = format!("Authorization: Bearer {}\r\n", s.token);
    let get = |version: &str, hosts: &str| {
        format!("GET /v1/accounts/alice-eur {version}\r\n{hosts}{auth}Connection: close\r\n\r\n")
            .into_bytes()
    };
    for (what, request) in [
        ("no Host", get("HTTP/1.1", "")),
        (
            "two Hosts",
            get("HTTP/1.1", "Host: localhost\r\nHost: other\r\n"),
        ),
        (
            "a Host with userinfo",
            get("HTTP/1.1", "Host: user@localhost\r\n"),
        ),
        (
            "a Host with a path",
            get("HTTP/1.1", "Host: localhost/x\r\n"),
        ),
        (
            "HTTP/1.0, two Hosts",
            get("HTTP/1.0", "Host: a\r\nHost: b\r\n"),
        ),
    ] {
        let answer = exchange(&s.gw, request, None).await;
        assert_eq!(answer.status(), Some(400), "{what}: {}", answer.describe());
        let json = answer.body_json().expect("a JSON body");
        assert_eq!(json["error"]["code"], "invalid_request", "{what}: {json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("Host")),
            "{what}: {json}"
        );
    }
    // What RFC 9112 allows: HTTP/1.0 without Host, an empty Host, a port.
    for (what, request) in [
        ("HTTP/1.0 without Host", get("HTTP/1.0", "")),
        ("an empty Host", get("HTTP/1.1", "Host: \r\n")),
        (
            "a Host with a port",
            get("HTTP/1.1", "Host: localhost:8443\r\n"),
        ),
    ] {
        let answer = exchange(&s.gw, request, None).await;
        let status = answer.status();
        assert_eq!(status, Some(200), "{what}: {}", answer.describe());
    }
    // The ops listener follows the same rule.
    let mut tcp = TcpStream::connect(s.gw.ops).await.expect("connect to ops");
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut bytes))
        .await
        .expect("an answer")
        .expect("read");
    let answer = RawAnswer { bytes };
    assert_eq!(answer.status(), Some(400), "ops: {}", answer.describe());
    assert_eq!(
        answer.body_json().expect("JSON")["error"]["code"],
        "invalid_request"
    );
    still_serves(&s, "requests without Host").await;
}
