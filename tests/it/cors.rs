//! CORS: configured origins get the headers (preflights answered without credentials),
//! others get none; without configuration there is no CORS at all.

use crate::kit::Server;

fn config(dir: &std::path::Path, body: &str) -> String {
    let path = dir.join("cors.toml");
    std::fs::write(&path, body).expect("write the config");
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn configured_origins_get_cors_headers_and_others_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config(
        dir.path(),
        "[cors]\nallowed_origins = [\"https://app.example.com\"]\n\
         [auth]\nmode = \"required\"\n[[auth.tokens]]\ntoken = \"reader-123\"\nsubscribe = [\">\"]\n",
    );
    let server = Server::start(&["--config", &file]).await;
    let client = server.client();
    // A preflight carries no credentials and is answered anyway.
    let preflight = client
        .request(reqwest::Method::OPTIONS, server.url("/v1/topics/a/sse"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization,last-event-id",
        )
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let allowed = |r: &reqwest::Response| {
        r.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        allowed(&preflight).as_deref(),
        Some("https://app.example.com")
    );
    let headers = preflight
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("last-event-id"),
        "{headers}"
    );

    let read = |origin: &'static str| {
        client
            .get(server.url("/v1/topics/a/messages"))
            .header("origin", origin)
            .bearer_auth("reader-123")
            .send()
    };
    let ok = read("https://app.example.com").await.expect("read");
    assert_eq!(ok.status(), 200);
    assert_eq!(allowed(&ok).as_deref(), Some("https://app.example.com"));
    let other = read("https://evil.example").await.expect("read");
    assert_eq!(
        allowed(&other),
        None,
        "an unlisted origin gets no CORS header"
    );
}

#[tokio::test]
async fn without_configuration_there_is_no_cors() {
    let server = Server::start(&[]).await;
    let response = server
        .client()
        .get(server.url("/v1/topics"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("list");
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
