//! The client's address behind a load balancer (`server.client_address`,
//! `server.trusted_proxies`), over real sockets: the per-IP limit keys on
//! the client a trusted proxy names in a PROXY header (v1 or v2) or in
//! `X-Forwarded-For`, and on the TCP peer otherwise; IPv6 clients by /64.
//!
//! The per-IP quota is one request with a second's refill, so "a second
//! request is refused" means "same bucket". Untrusted peers connect from
//! 127.0.0.2 (all of 127/8 is loopback on Linux).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use crate::harness::{Options, TestGateway, eventually, spawn_gateway_with};

const ONE_PER_SECOND: &str = "[limits]\nper_ip_per_s = 1\nper_ip_burst = 1\n";
const TRUSTED: &str = "127.0.0.1";
const UNTRUSTED: &str = "127.0.0.2";

async fn gateway(server: &str) -> TestGateway {
    spawn_gateway_with(Options {
        layers: vec![ONE_PER_SECOND.into(), format!("[server]\n{server}\n")],
        ..Options::default()
    })
    .await
}

fn connector() -> TlsConnector {
    switchboard::edge::tls::install_crypto_provider();
    let roots = switchboard::edge::tls::root_store(&crate::harness::certs().ca_cert()).expect("CA");
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn connect_from(gw: &TestGateway, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    let from: IpAddr = from.parse().expect("local address");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind the local address");
    socket.connect(gw.addr).await.expect("connect")
}

/// Connects from `from`, writes `preface` (a PROXY header, or nothing),
/// then `GET /v1/switches` over TLS, with `X-Forwarded-For: xff` if given.
/// The answer's status, or `None` when the connection was closed before one
/// (the TLS handshake failed).
async fn get(gw: &TestGateway, from: &str, preface: &[u8], xff: Option<&str>) -> Option<u16> {
    let mut tcp = connect_from(gw, from).await;
    tcp.write_all(preface).await.expect("write the preface");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls =
        match tokio::time::timeout(Duration::from_secs(30), connector().connect(name, tcp))
            .await
            .expect("handshake within 30 s")
        {
            Ok(tls) => tls,
            Err(_) => return None,
        };
    let token = gw.token("op", &["operator"]);
    let xff = xff
        .map(|v| format!("X-Forwarded-For: {v}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "GET /v1/switches HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n{xff}Connection: close\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.ok()?;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut bytes)).await;
    let text = String::from_utf8_lossy(&bytes);
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    assert!(status < 500, "never a 5xx: {text}");
    Some(status)
}

fn v1(client: &str) -> Vec<u8> {
    let family = if client.contains(':') { "TCP6" } else { "TCP4" };
    let server = if client.contains(':') {
        "::1"
    } else {
        "127.0.0.1"
    };
    format!("PROXY {family} {client} {server} 40000 8443\r\n").into_bytes()
}

fn v2(client: &str) -> Vec<u8> {
    let server = if client.contains(':') {
        "[::1]:8443"
    } else {
        "127.0.0.1:8443"
    };
    let client = if client.contains(':') {
        format!("[{client}]:40000")
    } else {
        format!("{client}:40000")
    };
    let addresses: (SocketAddr, SocketAddr) = (
        client.parse().expect("client"),
        server.parse().expect("server"),
    );
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        addresses,
    )
    // A TLV, as AWS and GCP balancers send: skipped, not refused.
    .write_tlv(ppp::v2::Type::NoOp, b"tlv")
    .expect("tlv")
    .build()
    .expect("v2 header")
}

fn v2_local() -> Vec<u8> {
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::Protocol::Unspecified,
        ppp::v2::Addresses::Unspecified,
    )
    .build()
    .expect("v2 LOCAL header")
}

fn closed(reason: &str) -> String {
    format!("switchboard_connections_closed_total{{reason=\"{reason}\"}}")
}

#[tokio::test]
async fn proxy_headers_from_a_trusted_peer_name_the_client_the_per_ip_limit_keys_on() {
    let gw = gateway(&format!(
        "client_address = \"proxy_protocol\"\ntrusted_proxies = [\"{TRUSTED}/32\", \"10.0.0.0/8\"]"
    ))
    .await;
    let at = |preface: Vec<u8>| {
        let gw = &gw;
        async move { get(gw, TRUSTED, &preface, None).await }
    };
    // One client, named by v1 and then by v2: one bucket.
    assert_eq!(at(v1("192.0.2.1")).await, Some(200));
    assert_eq!(at(v2("192.0.2.1")).await, Some(429), "v2, same client");
    // Another client: its own bucket, whichever version names it.
    assert_eq!(at(v2("192.0.2.2")).await, Some(200));
    assert_eq!(at(v1("192.0.2.2")).await, Some(429), "v1, same client");
    // v2 LOCAL (a balancer's health check) and v1 UNKNOWN are the peer's own.
    assert_eq!(at(v2_local()).await, Some(200));
    assert_eq!(
        at(b"PROXY UNKNOWN\r\n".to_vec()).await,
        Some(429),
        "the peer"
    );
    // IPv6 clients by /64: the same /64 shares, the next one does not.
    assert_eq!(at(v2("2001:db8:1:2::1")).await, Some(200));
    assert_eq!(at(v1("2001:db8:1:2:ffff::9")).await, Some(429), "same /64");
    assert_eq!(at(v2("2001:db8:1:3::1")).await, Some(200), "other /64");
    // A trusted peer must send the header: a bare TLS handshake is refused.
    assert_eq!(at(Vec::new()).await, None);
    assert_eq!(gw.metric(&closed("proxy_header_malformed")).await, 1.0);
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_peer_is_not_believed() {
    let gw = gateway(&format!(
        "client_address = \"proxy_protocol\"\ntrusted_proxies = [\"{TRUSTED}\"]"
    ))
    .await;
    let failures = "switchboard_tls_handshake_failures_total{reason=\"error\"}";
    let before = gw.metric(failures).await;
    // Read as the start of a TLS handshake, which it is not.
    for header in [v1("192.0.2.9"), v2("192.0.2.9")] {
        assert_eq!(get(&gw, UNTRUSTED, &header, None).await, None);
    }
    assert_eq!(gw.metric(failures).await, before + 2.0);
    assert_eq!(gw.metric(&closed("proxy_header_malformed")).await, 0.0);
    // Without one it is a direct client, keyed by its own address…
    assert_eq!(get(&gw, UNTRUSTED, b"", None).await, Some(200));
    assert_eq!(get(&gw, UNTRUSTED, b"", None).await, Some(429));
    // …and the client it claimed to be has spent nothing.
    assert_eq!(get(&gw, TRUSTED, &v1("192.0.2.9"), None).await, Some(200));
}

#[tokio::test]
async fn malformed_late_or_missing_proxy_headers_close_the_connection_and_are_counted() {
    let gw = gateway(&format!(
        "client_address = \"proxy_protocol\"\ntrusted_proxies = [\"{TRUSTED}\"]\ntls_handshake_timeout_ms = 400"
    ))
    .await;
    for bad in [
        &b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n"[..],
        b"PROXY TCP9 192.0.2.1 127.0.0.1 1 2\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ] {
        assert_eq!(get(&gw, TRUSTED, bad, None).await, None);
    }
    assert_eq!(gw.metric(&closed("proxy_header_malformed")).await, 3.0);

    // Nothing, or half a header, then silence: closed by the handshake timeout.
    for stall in [&b""[..], b"PROXY TCP4 192.0.2.1 127.0.0"] {
        let mut tcp = connect_from(&gw, TRUSTED).await;
        tcp.write_all(stall).await.expect("write");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("closed by the gateway within 10 s")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
    let timeouts = closed("proxy_header_timeout");
    eventually(
        Duration::from_secs(5),
        "two header timeouts counted",
        || {
            let (gw, timeouts) = (&gw, &timeouts);
            async move { gw.metric(timeouts).await == 2.0 }
        },
    )
    .await;

    // A peer that closes before its header: counted apart.
    drop(connect_from(&gw, TRUSTED).await);
    let gone = closed("proxy_header_closed");
    eventually(Duration::from_secs(5), "a closed one counted", || {
        let (gw, gone) = (&gw, &gone);
        async move { gw.metric(gone).await == 1.0 }
    })
    .await;

    assert_eq!(get(&gw, TRUSTED, &v1("192.0.2.1"), None).await, Some(200));
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_peers_rightmost_untrusted_first() {
    let gw = gateway(&format!(
        "client_address = \"x_forwarded_for\"\ntrusted_proxies = [\"{TRUSTED}\", \"10.0.0.0/8\"]"
    ))
    .await;
    let from = |peer: &'static str, xff: Option<&'static str>| {
        let gw = &gw;
        async move { get(gw, peer, b"", xff).await }
    };
    // The rightmost address that is not a trusted proxy is the client: what
    // the client itself put on the left is not believed.
    assert_eq!(
        from(TRUSTED, Some("203.0.113.7, 10.1.2.3")).await,
        Some(200)
    );
    assert_eq!(
        from(TRUSTED, Some("198.51.100.1, 203.0.113.7")).await,
        Some(429),
        "203.0.113.7 again"
    );
    assert_eq!(
        from(TRUSTED, Some("203.0.113.7, 198.51.100.9, 10.0.0.5")).await,
        Some(200),
        "198.51.100.9"
    );
    // IPv6 by /64.
    assert_eq!(from(TRUSTED, Some("2001:db8:5:5::1")).await, Some(200));
    assert_eq!(from(TRUSTED, Some("2001:db8:5:5::2")).await, Some(429));
    // Malformed, or absent: the peer, never an error.
    assert_eq!(from(TRUSTED, Some("not-an-address")).await, Some(200));
    assert_eq!(from(TRUSTED, None).await, Some(429), "the peer's bucket");

    // From an untrusted peer the header is ignored: its own address counts.
    assert_eq!(from(UNTRUSTED, Some("192.0.2.50")).await, Some(200));
    assert_eq!(from(UNTRUSTED, Some("192.0.2.51")).await, Some(429));
    // 192.0.2.51 itself was never charged.
    assert_eq!(from(TRUSTED, Some("192.0.2.51")).await, Some(200));
}
