//! The HTTPS client of the load tool.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub(crate) type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Keep-alive HTTP/1.1 over TLS, trusting `roots`, from `local_ip` if given.
pub(crate) fn client(
    roots: rustls::RootCertStore,
    local_ip: Option<std::net::IpAddr>,
    idle_max: usize,
) -> HttpsClient {
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_local_address(local_ip);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle_max)
        .build(https)
}

pub(crate) async fn post(
    client: &HttpsClient,
    base: &str,
    path: &str,
    token: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(StatusCode, String, Option<serde_json::Value>)> {
    send(
        client,
        Method::POST,
        base,
        path,
        token,
        Bytes::from(body.to_string()),
    )
    .await
}

pub(crate) async fn get(
    client: &HttpsClient,
    base: &str,
    path: &str,
    token: &str,
) -> anyhow::Result<(StatusCode, String, Option<serde_json::Value>)> {
    send(client, Method::GET, base, path, token, Bytes::new()).await
}

async fn send(
    client: &HttpsClient,
    method: Method,
    base: &str,
    path: &str,
    token: &str,
    body: Bytes,
) -> anyhow::Result<(StatusCode, String, Option<serde_json::Value>)> {
    let req = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await??;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).ok();
    Ok((status, text, json))
}
