//! The dashboard: a single-page app under `web/`, embedded in the binary at build time (no
//! Node, no download, nothing fetched at run time), served at `/` and `/ui/…` with a strict
//! Content-Security-Policy and an ETag. It is one more client of the public API
//! (docs/API.md §13); the one route added for it, `GET /v1/me` (what the caller's credential
//! may do, so the page can hide what the server would refuse anyway), is in `admin.rs`.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;

/// No inline script or style, nothing from another origin, no framing; `connect-src 'self'`
/// also covers the same origin's `ws:`/`wss:` (CSP Level 3).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The page's files: the path under `/ui/`, its content type, its bytes.
const ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/app.js"),
    ),
    (
        "live.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/live.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/app.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("../../web/icon.svg"),
    ),
];

const INDEX: &[u8] = include_bytes!("../../web/index.html");

/// Whether `path` is one of the page's files, served to anyone: they hold no data, and the
/// page must load to ask for a token.
pub(super) fn is_page(path: &str) -> bool {
    path == "/"
        || path
            .strip_prefix("/ui/")
            .is_some_and(|f| asset(f).is_some())
}

fn asset(name: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, ty, bytes)| (*ty, *bytes))
}

/// The page's routes; they need no state, so this file sits at the bottom of `http/` beside
/// `error` (the credential check asks it which paths are the page's).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{file}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&headers, "text/html; charset=utf-8", INDEX)
}

async fn file(headers: HeaderMap, Path(name): Path<String>) -> Result<Response, ApiError> {
    let (ty, bytes) =
        asset(&name).ok_or_else(|| ApiError::not_found(format!("no file /ui/{name}")))?;
    Ok(serve(&headers, ty, bytes))
}

/// FNV-1a 64 of the bytes: the files change only with the binary, so a strong validator that
/// needs no crate and no state.
fn etag(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

fn serve(headers: &HeaderMap, ty: &'static str, bytes: &'static [u8]) -> Response {
    let tag = etag(bytes);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(ty))],
            bytes,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    // Revalidate each load (a 304 costs a few bytes): a new binary's page is seen at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(tag) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, tag);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_paths() {
        assert!(is_page("/"));
        assert!(is_page("/ui/app.js"));
        assert!(!is_page("/ui/nope.js"));
        assert!(!is_page("/ui/"));
        assert!(!is_page("/v1/topics"));
    }

    #[test]
    fn etags_are_quoted_and_follow_the_bytes() {
        assert_eq!(etag(b"a"), etag(b"a"));
        assert_ne!(etag(b"a"), etag(b"b"));
        assert!(etag(b"a").starts_with('"') && etag(b"a").ends_with('"'));
    }
}
