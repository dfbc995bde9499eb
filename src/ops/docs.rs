//! `GET /docs`: the API reference page, Swagger UI rendering the generated
//! `/openapi.json`. The Swagger UI files are vendored (`vendor/swagger-ui/`)
//! and compiled in: nothing is fetched from anywhere else, at build or at
//! run time, and the page's Content-Security-Policy says so to the browser.

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;

use crate::edge::Body;

const PAGE: &str = include_str!("docs.html");
const INIT_JS: &str = include_str!("docs.js");
const BUNDLE_JS: &str = include_str!("../../vendor/swagger-ui/swagger-ui-bundle.js");
const CSS: &str = include_str!("../../vendor/swagger-ui/swagger-ui.css");

/// Everything from this listener; inline styles (Swagger UI sets element
/// styles) and `data:` images (its icons), nothing else.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The page or one of its files; `None` for another path.
pub(super) fn response(path: &str) -> Option<Response<Body>> {
    let (body, content_type) = match path {
        "/docs" | "/docs/" => (PAGE, "text/html; charset=utf-8"),
        "/docs/init.js" => (INIT_JS, "text/javascript; charset=utf-8"),
        "/docs/swagger-ui-bundle.js" => (BUNDLE_JS, "text/javascript; charset=utf-8"),
        "/docs/swagger-ui.css" => (CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(resp)
}
