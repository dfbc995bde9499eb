//! A client's address behind a load balancer (`server.client_address`,
//! `server.trusted_proxies`): the PROXY protocol header a trusted proxy
//! sends before the TLS handshake, and `X-Forwarded-For` from a trusted
//! proxy. Parsing the PROXY header is the `ppp` crate's; what is believed,
//! and the bounds on reading it, are here.
//!
//! Neither is believed from any other peer: a PROXY header from an
//! untrusted peer is read as the start of a TLS handshake (which fails), and
//! its `X-Forwarded-For` is ignored.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::config::TrustedProxies;

/// Largest PROXY header read. v1 is at most 107 bytes by the spec; v2 is
/// 16 bytes and a length of up to 64 KiB, of which the addresses take at
/// most 216 (Unix sockets) and the rest is TLVs (a balancer's connection
/// id, TLS details). 4 KiB leaves room for any TLVs balancers send today
/// and bounds what an odd header can make a connection hold.
pub(crate) const PROXY_HEADER_BYTES_MAX: usize = 4096;

/// Longest v1 header, by the spec, `\r\n` included.
const V1_BYTES_MAX: usize = 107;

/// Why a PROXY header was refused; the label of
/// `switchboard_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyHeaderError {
    /// Not a PROXY header, a broken one, or one past
    /// [`PROXY_HEADER_BYTES_MAX`].
    Malformed,
    /// The peer closed (or the read failed) before the header was whole.
    Closed,
}

impl ProxyHeaderError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            ProxyHeaderError::Malformed => "proxy_header_malformed",
            ProxyHeaderError::Closed => "proxy_header_closed",
        }
    }
}

/// The client a PROXY header names, and what was read past it.
#[derive(Debug)]
pub(crate) struct ProxyHeader {
    /// The source address; `None` when the header names none (v2 `LOCAL`,
    /// a balancer's own health check; v1 `UNKNOWN`; v2 `UNSPEC` or Unix
    /// sockets): the connection is the peer's own.
    pub client: Option<IpAddr>,
    /// Bytes after the header (the start of the TLS handshake), to be read
    /// again first.
    pub rest: Vec<u8>,
}

/// Reads one PROXY header (v1 or v2) from the start of `io`. The caller
/// bounds it in time.
pub(crate) async fn read_proxy_header<IO>(io: &mut IO) -> Result<ProxyHeader, ProxyHeaderError>
where
    IO: AsyncRead + Unpin,
{
    // v1 and v2 with IPv4 or IPv6 addresses fit in the first read's room.
    let mut buf = Vec::with_capacity(256);
    loop {
        let room = PROXY_HEADER_BYTES_MAX - buf.len();
        if room == 0 {
            return Err(ProxyHeaderError::Malformed);
        }
        let n = (&mut *io)
            .take(room as u64)
            .read_buf(&mut buf)
            .await
            .map_err(|_| ProxyHeaderError::Closed)?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        if let Some(header) = parse(&buf)? {
            return Ok(header);
        }
    }
}

/// `None` while the header is incomplete.
fn parse(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    // A v2 header says its length in its 16 bytes: refuse a long one before
    // waiting for it.
    if buf.len() >= 16 && buf.starts_with(ppp::v2::PROTOCOL_PREFIX) {
        let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > PROXY_HEADER_BYTES_MAX {
            return Err(ProxyHeaderError::Malformed);
        }
    }
    // A v1 header is one line: ppp takes some cut lines (an address cut
    // short) for broken ones, so wait for the line's end, as the spec says.
    let n = buf.len().min(6);
    let v1_prefix = buf[..n] == b"PROXY "[..n];
    if v1_prefix && !buf.contains(&b'\n') && buf.len() < V1_BYTES_MAX {
        return Ok(None);
    }
    let header = HeaderResult::parse(buf);
    if header.is_incomplete() {
        return Ok(None);
    }
    let (client, len) = match header {
        HeaderResult::V1(Ok(h)) => {
            let client = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some(IpAddr::V4(a.source_address)),
                ppp::v1::Addresses::Tcp6(a) => Some(IpAddr::V6(a.source_address)),
                ppp::v1::Addresses::Unknown => None,
            };
            (client, h.header.len())
        }
        HeaderResult::V2(Ok(h)) => {
            let client = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => Some(IpAddr::V4(a.source_address)),
                (_, ppp::v2::Addresses::IPv6(a)) => Some(IpAddr::V6(a.source_address)),
                (_, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => None,
            };
            (client, h.len())
        }
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => {
            return Err(ProxyHeaderError::Malformed);
        }
    };
    Ok(Some(ProxyHeader {
        client,
        rest: buf[len..].to_vec(),
    }))
}

/// The client named by `X-Forwarded-For` on a request whose TCP peer is a
/// trusted proxy: walking the addresses right to left (each proxy appends
/// the peer it saw), the first that is not a trusted proxy. If every one is
/// trusted, the leftmost. `None` (keep the peer) without the header, or when
/// an entry the walk reaches is not an IP address.
pub(crate) fn forwarded_for(headers: &HeaderMap, trusted: &TrustedProxies) -> Option<IpAddr> {
    let mut leftmost = None;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let value = value.to_str().ok()?;
        for entry in value.rsplit(',') {
            let ip = parse_entry(entry.trim())?;
            if !trusted.contains(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
    }
    leftmost
}

/// `192.0.2.1`, `2001:db8::1`, and with a port as some proxies write them:
/// `192.0.2.1:443`, `[2001:db8::1]:443`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

/// A stream that first yields bytes already read from it.
pub(crate) struct Prefixed<IO> {
    /// Empty once read (or from the start, without a PROXY header).
    prefix: Vec<u8>,
    at: usize,
    inner: IO,
}

impl<IO> Prefixed<IO> {
    pub(crate) fn new(inner: IO, prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn xff(values: &[&str], list: &[&str]) -> Option<IpAddr> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        forwarded_for(&headers, &trusted(list))
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn forwarded_for_takes_the_rightmost_untrusted_address() {
        let t = ["10.0.0.0/8", "fd00::/8"];
        assert_eq!(xff(&["203.0.113.7"], &t), ip("203.0.113.7"));
        assert_eq!(
            xff(&["198.51.100.1, 203.0.113.7, 10.0.0.2"], &t),
            ip("203.0.113.7"),
            "a client-supplied leftmost entry is not believed"
        );
        // Several headers are one list, in order.
        assert_eq!(
            xff(&["198.51.100.1", "203.0.113.7,10.1.1.1", "fd00::1"], &t),
            ip("203.0.113.7")
        );
        assert_eq!(xff(&["2001:db8::5, fd00::1"], &t), ip("2001:db8::5"));
        assert_eq!(
            xff(&["[2001:db8::5]:443, 192.0.2.1:8080"], &t),
            ip("192.0.2.1")
        );
        // Every entry trusted: the leftmost.
        assert_eq!(xff(&["10.0.0.9, 10.0.0.8"], &t), ip("10.0.0.9"));
        // A trusted IPv4-mapped address is trusted.
        assert_eq!(xff(&["192.0.2.3, ::ffff:10.0.0.1"], &t), ip("192.0.2.3"));
    }

    #[test]
    fn malformed_forwarded_for_keeps_the_peer() {
        let t = ["10.0.0.0/8"];
        assert_eq!(xff(&[], &t), None);
        for bad in [
            "",
            "unknown",
            "203.0.113.7, ",
            "203.0.113.7 10.0.0.1",
            "300.1.1.1",
        ] {
            assert_eq!(xff(&[bad], &t), None, "{bad:?}");
        }
        // Garbage left of the answer is never reached.
        assert_eq!(xff(&["garbage, 203.0.113.7"], &t), ip("203.0.113.7"));
    }

    fn v2(command: ppp::v2::Command, src: &str, dst: &str, tlv: usize) -> Vec<u8> {
        let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let mut b = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | command,
            ppp::v2::Protocol::Stream,
            (src, dst),
        );
        if tlv > 0 {
            b = b.write_tlv(ppp::v2::Type::NoOp, &vec![0u8; tlv]).unwrap();
        }
        b.build().unwrap()
    }

    fn parsed(bytes: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
        parse(bytes)
    }

    #[test]
    fn v1_and_v2_headers_name_their_source_and_keep_what_follows() {
        let mut v1 = b"PROXY TCP4 192.0.2.1 10.0.0.1 5555 443\r\n".to_vec();
        v1.extend_from_slice(b"\x16\x03\x01");
        let h = parsed(&v1).unwrap().unwrap();
        assert_eq!(h.client, ip("192.0.2.1"));
        assert_eq!(h.rest, b"\x16\x03\x01");

        let h = parsed(b"PROXY TCP6 2001:db8::1 ::1 5555 443\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.client, h.rest.len()), (ip("2001:db8::1"), 0));
        let h = parsed(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!(h.client, None);

        let mut bytes = v2(ppp::v2::Command::Proxy, "[2001:db8::7]:1", "[::1]:443", 100);
        bytes.extend_from_slice(b"hello");
        let h = parsed(&bytes).unwrap().unwrap();
        assert_eq!(
            (h.client, h.rest.as_slice()),
            (ip("2001:db8::7"), &b"hello"[..])
        );
        let local = v2(ppp::v2::Command::Local, "192.0.2.9:1", "10.0.0.1:443", 0);
        assert_eq!(parsed(&local).unwrap().unwrap().client, None, "LOCAL");
    }

    #[test]
    fn partial_headers_wait_and_bad_ones_are_refused() {
        let v1 = b"PROXY TCP4 192.0.2.1 10.0.0.1 5555 443\r\n";
        let v2 = v2(ppp::v2::Command::Proxy, "192.0.2.1:1", "10.0.0.1:443", 0);
        for cut in 1..v1.len() {
            assert!(parsed(&v1[..cut]).unwrap().is_none(), "v1 cut at {cut}");
        }
        for cut in 1..v2.len() {
            assert!(parsed(&v2[..cut]).unwrap().is_none(), "v2 cut at {cut}");
        }
        let too_long = v2_with_len(PROXY_HEADER_BYTES_MAX - 15);
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"GET / HTTP/1.1\r\n",
            b"PROXY TCP4 bogus 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 10.0.0.1 5555 443 extra\r\n",
            &too_long,
        ] {
            assert_eq!(
                parsed(bad).err(),
                Some(ProxyHeaderError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long_v1 = b"PROXY TCP4 ".to_vec();
        long_v1.resize(200, b'1');
        assert_eq!(parsed(&long_v1).err(), Some(ProxyHeaderError::Malformed));
    }

    fn v2_with_len(len: usize) -> Vec<u8> {
        let mut b = ppp::v2::PROTOCOL_PREFIX.to_vec();
        b.extend_from_slice(&[0x21, 0x11]);
        b.extend_from_slice(&(len as u16).to_be_bytes());
        b
    }

    #[tokio::test]
    async fn read_stops_at_the_header_and_the_rest_is_read_again() {
        let mut bytes = b"PROXY TCP4 192.0.2.1 10.0.0.1 5555 443\r\n".to_vec();
        bytes.extend_from_slice(b"tls bytes");
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // One byte at a time: the header arrives in pieces.
            for b in bytes {
                client.write_all(&[b]).await.unwrap();
            }
        });
        let h = read_proxy_header(&mut server).await.unwrap();
        assert_eq!(h.client, ip("192.0.2.1"));
        let mut rest = Prefixed::new(server, h.rest);
        let mut text = String::new();
        rest.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "tls bytes");

        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert_eq!(
            read_proxy_header(&mut server).await.err(),
            Some(ProxyHeaderError::Closed)
        );
    }
}
