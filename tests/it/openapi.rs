//! `GET /openapi.json`: the description covers every route, and anyone may read it.
//! (`scripts/schemathesis` checks the description against the server's behaviour.)

use reqwest::StatusCode;
use serde_json::Value;

use crate::kit::Server;

/// Every route of the router, with its methods, as the description names them.
const ROUTES: [(&str, &[&str]); 23] = [
    ("/v1/topics/{topics}/messages", &["get", "post"]),
    ("/v1/publish", &["post"]),
    ("/v1/topics/{topics}/sse", &["get"]),
    ("/v1/topics/{topics}/stream", &["get"]),
    ("/v1/ws", &["get"]),
    ("/v1/topics", &["get"]),
    ("/v1/topics/{topic}", &["get", "delete"]),
    ("/v1/queues/{queue}/jobs", &["post"]),
    ("/v1/queues/{queue}/claim", &["post"]),
    ("/v1/jobs/{id}", &["get"]),
    ("/v1/jobs/{id}/{action}", &["post"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
    ("/openapi.json", &["get"]),
    ("/v1/consumers", &["get"]),
    ("/v1/consumers/{name}", &["get", "put", "delete"]),
    ("/v1/consumers/{name}/{action}", &["post"]),
    ("/v1/webhooks", &["get", "post"]),
    ("/v1/webhooks/{id}", &["get", "delete"]),
    ("/v1/webhooks/{id}/{action}", &["post"]),
    ("/v1/me", &["get"]),
    ("/v1/jobs/{id}/retry", &["post"]),
];

async fn description(server: &Server) -> Value {
    let response = server.get("/openapi.json", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let text = response.text().await.expect("read the body");
    serde_json::from_str(&text).expect("/openapi.json is JSON")
}

#[tokio::test]
async fn describes_every_route() {
    let server = Server::start(&[]).await;
    let doc = description(&server).await;
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "openapi: {version:?}");

    let paths = doc["paths"].as_object().expect("paths is an object");
    for (path, methods) in ROUTES {
        for method in methods {
            let op = &paths
                .get(path)
                .unwrap_or_else(|| panic!("{path} is not described"))[method];
            assert!(op.is_object(), "{method} {path} is not described");
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
        }
    }

    // Errors are problem+json with the Problem schema.
    let problem = &doc["components"]["schemas"]["Problem"]["properties"];
    for field in ["type", "title", "status", "detail"] {
        assert!(problem.get(field).is_some(), "Problem lacks {field}");
    }
    let not_found = &paths["/v1/jobs/{id}"]["get"]["responses"]["404"]["content"];
    assert!(
        not_found.get("application/problem+json").is_some(),
        "{not_found}"
    );
    // The security it declares follows `--auth`: regression.rs,
    // `openapi_declares_security_only_when_auth_is_required`.
}

#[tokio::test]
async fn is_readable_without_credentials() {
    let server = Server::start(&[
        "--auth",
        "required",
        "--jwt-secret",
        "openapi-test-secret-of-at-least-32-bytes",
    ])
    .await;
    let doc = description(&server).await;
    assert!(doc["paths"].is_object());
    // The API itself still needs credentials.
    let (status, _, _) = server.get_json("/v1/topics").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
