//! The dashboard (docs/API.md §13): the embedded page at `/` with its CSP and ETag, `GET
//! /v1/me`, the WebSocket's first-frame `auth`, and the page itself in Chromium
//! (tests/browser/dashboard*.js through kit::browser).

use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::kit::clients::Ws;
use crate::kit::{Server, browser, eventually, expect_problem, into_json};

const ADMIN: &str = "dash-admin-token";
const READER: &str = "dash-reader-token";
const PUBLISHER: &str = "dash-publisher-token";

/// A hub with `auth.mode = required` and three static tokens: an admin, a reader (subscribe
/// only) and a publisher (publish and subscribe, no admin).
async fn required_server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("create a config directory");
    let config = format!(
        "[auth]\nmode = \"required\"\n\
         \n[[auth.tokens]]\ntoken = \"{ADMIN}\"\npublish = [\">\"]\nsubscribe = [\">\"]\njobs = [\">\"]\nadmin = true\n\
         \n[[auth.tokens]]\ntoken = \"{READER}\"\npublish = []\nsubscribe = [\">\"]\njobs = []\nadmin = false\n\
         \n[[auth.tokens]]\ntoken = \"{PUBLISHER}\"\npublish = [\">\"]\nsubscribe = [\">\"]\njobs = []\nadmin = false\n"
    );
    let path: PathBuf = dir.path().join("plexus.toml");
    std::fs::write(&path, config).expect("write the config");
    let server = Server::start(&["--config", path.to_str().expect("UTF-8 path")]).await;
    (server, dir)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The page's own files, as index.html names them.
fn page_files() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let index = std::fs::read_to_string(root.join("index.html")).expect("read web/index.html");
    let mut files: Vec<String> = index
        .split('"')
        .filter(|s| s.starts_with("/ui/"))
        .map(str::to_owned)
        .collect();
    // Modules the entry point imports.
    files.push("/ui/live.js".into());
    files
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_csp_an_etag_and_under_300_kb() {
    let server = Server::start(&[]).await;
    let resp = server.get("/", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let headers = resp.headers().clone();
    let ty = headers["content-type"].to_str().unwrap_or_default();
    assert!(ty.starts_with("text/html"), "{ty}");
    let csp = headers["content-security-policy"]
        .to_str()
        .unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(
        !csp.contains("http:") && !csp.contains("https:") && !csp.contains('*'),
        "{csp}"
    );
    let etag = headers["etag"].to_str().unwrap_or_default().to_owned();
    assert!(etag.starts_with('"'), "a strong ETag: {etag}");
    let page = resp.text().await.expect("read the page");
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "no inline code"
    );
    let mut total = page.len();

    // Revalidation: the same ETag is a 304 with no body.
    let again = server.get("/", &[("if-none-match", &etag)]).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"].to_str().unwrap_or_default(), etag);

    for file in page_files() {
        let resp = server.get(&file, &[]).await;
        assert_eq!(resp.status(), StatusCode::OK, "{file}");
        assert!(
            resp.headers().contains_key("content-security-policy"),
            "{file}"
        );
        assert!(resp.headers().contains_key("etag"), "{file}");
        total += resp.bytes().await.expect("read a file").len();
    }
    assert!(total < 300 * 1024, "the page weighs {total} bytes");

    // An unknown file is a problem like every error.
    expect_problem(server.get("/ui/nope.js", &[]).await, 404, "unknown file").await;
}

#[tokio::test]
async fn with_auth_required_the_page_loads_but_no_data_without_a_token() {
    let (server, _dir) = required_server().await;
    assert_eq!(server.get("/", &[]).await.status(), StatusCode::OK);
    assert_eq!(server.get("/ui/app.js", &[]).await.status(), StatusCode::OK);
    expect_problem(server.get("/v1/me", &[]).await, 401, "me without a token").await;
    expect_problem(server.get("/v1/topics", &[]).await, 401, "topics").await;
    // A path that looks like a page file but is none still needs a credential.
    expect_problem(server.get("/ui/nope.js", &[]).await, 401, "not a page file").await;
}

#[tokio::test]
async fn me_tells_what_a_token_may_do() {
    let (server, _dir) = required_server().await;
    let me = |token: &'static str| {
        let server = &server;
        async move {
            let auth = bearer(token);
            let resp = server
                .get("/v1/me?topic=orders", &[("authorization", &auth)])
                .await;
            let (status, _, body) = into_json(resp).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    let admin = me(ADMIN).await;
    assert_eq!(admin["auth"], "required");
    assert_eq!(admin["admin"], true);
    assert_eq!(
        admin["topic"],
        json!({"topic":"orders","publish":true,"subscribe":true,"delete":true})
    );
    let reader = me(READER).await;
    assert_eq!(
        (reader["admin"].clone(), reader["topic"].clone()),
        (
            json!(false),
            json!({"topic":"orders","publish":false,"subscribe":true,"delete":false})
        )
    );
    let publisher = me(PUBLISHER).await;
    assert_eq!(publisher["topic"]["publish"], true);
    assert_eq!(publisher["topic"]["delete"], false);

    let auth = bearer(ADMIN);
    let bad = server
        .get("/v1/me?topic=no..topic", &[("authorization", &auth)])
        .await;
    expect_problem(bad, 400, "a bad topic").await;
    let twice = server
        .get("/v1/me?topic=a&topic=b", &[("authorization", &auth)])
        .await;
    expect_problem(twice, 400, "a parameter given twice").await;

    // Open mode: everything.
    let open = Server::start(&[]).await;
    let (status, _, body) = open.get_json("/v1/me?topic=_jobs.x").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["auth"], "open");
    assert_eq!(
        body["topic"]["publish"], false,
        "a reserved topic is never publishable: {body}"
    );
}

/// A WebSocket on `/v1/ws{query}` with no header at all.
async fn bare_ws(server: &Server, query: &str) -> Result<Ws, (u16, String)> {
    let url = format!("ws://{}/v1/ws{query}", server.addr());
    let request = url.into_client_request().expect("a WebSocket request");
    Ws::handshake(request).await
}

#[tokio::test]
async fn a_websocket_authenticates_by_its_first_frame() {
    let (server, _dir) = required_server().await;
    let mut ws = bare_ws(&server, "")
        .await
        .expect("the upgrade needs no header");
    let mut early = Vec::new();
    let ok = ws
        .call(json!({"op":"auth","id":"a","token":READER}), &mut early)
        .await;
    assert_eq!(ok, json!({"op":"ok","id":"a"}));
    ws.ok(
        json!({"op":"subscribe","id":1,"topic":"t","since":"0"}),
        &mut early,
    )
    .await;
    let auth = bearer(ADMIN);
    let resp = server
        .client()
        .post(server.url("/v1/topics/t/messages"))
        .header("authorization", &auth)
        .body("hello")
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let got = ws.events(1).await;
    assert_eq!(
        (got[0]["seq"].clone(), got[0]["data"].clone()),
        (json!(1), json!("hello"))
    );

    // Its rights are the token's: a reader may not publish (403), and the socket lives on.
    let denied = ws
        .call(
            json!({"op":"publish","id":2,"topic":"t","data":"x"}),
            &mut early,
        )
        .await;
    assert_eq!(
        (denied["op"].clone(), denied["status"].clone()),
        (json!("error"), json!(403))
    );
    // `auth` is accepted only as the first frame.
    let late = ws
        .call(json!({"op":"auth","id":3,"token":ADMIN}), &mut early)
        .await;
    assert_eq!(
        (late["op"].clone(), late["status"].clone()),
        (json!("error"), json!(400))
    );
    ws.ok(json!({"op":"unsubscribe","id":4,"topic":"t"}), &mut early)
        .await;
}

#[tokio::test]
async fn a_websocket_without_a_valid_first_auth_frame_gets_401_and_is_closed() {
    let (server, _dir) = required_server().await;
    // A bad token.
    let mut ws = bare_ws(&server, "").await.expect("upgrade");
    ws.send(json!({"op":"auth","id":1,"token":"not-a-token"}))
        .await;
    let refused = ws.recv().await;
    assert_eq!(
        (
            refused["op"].clone(),
            refused["id"].clone(),
            refused["status"].clone()
        ),
        (json!("error"), json!(1), json!(401)),
        "{refused}"
    );
    assert!(
        ws.try_recv().await.is_none(),
        "the socket closes after a bad token"
    );

    // Another frame first.
    let mut ws = bare_ws(&server, "").await.expect("upgrade");
    ws.send(json!({"op":"subscribe","id":1,"topic":"t"})).await;
    let refused = ws.recv().await;
    assert_eq!(refused["status"], 401, "{refused}");
    assert!(ws.try_recv().await.is_none(), "the socket closes");

    // An auth frame without a token is a bad frame, and without a credential the socket closes.
    let mut ws = bare_ws(&server, "").await.expect("upgrade");
    ws.send(json!({"op":"auth","id":1})).await;
    let refused = ws.recv().await;
    assert_eq!(refused["status"], 400, "{refused}");
    assert!(ws.try_recv().await.is_none(), "the socket closes");

    // Subscribing at connect still needs a header credential; a bad header is still 401.
    match bare_ws(&server, "?topic=t").await {
        Ok(_) => panic!("?topic= without a credential was upgraded"),
        Err((status, _)) => assert_eq!(status, 401),
    }
    let url = format!("ws://{}/v1/ws", server.addr());
    let mut request = url.into_client_request().expect("a WebSocket request");
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_static("Bearer not-a-token"),
    );
    match Ws::handshake(request).await {
        Ok(_) => panic!("a bad header credential was upgraded"),
        Err((status, _)) => assert_eq!(status, 401),
    }
}

#[tokio::test]
async fn a_header_authenticated_or_open_socket_accepts_an_auth_frame_too() {
    let (server, _dir) = required_server().await;
    let url = format!("ws://{}/v1/ws", server.addr());
    let mut request = url.into_client_request().expect("a WebSocket request");
    let auth = bearer(READER);
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&auth).expect("a header value"),
    );
    let mut ws = Ws::handshake(request).await.expect("upgrade");
    let mut early = Vec::new();
    // The frame's token replaces the header's: the publisher may publish.
    ws.ok(json!({"op":"auth","id":1,"token":PUBLISHER}), &mut early)
        .await;
    ws.ok(
        json!({"op":"publish","id":2,"topic":"t","data":"x"}),
        &mut early,
    )
    .await;

    let open = Server::start(&[]).await;
    let mut ws = Ws::connect(&open, "").await;
    ws.ok(json!({"op":"auth","id":1,"token":"anything"}), &mut early)
        .await;
    ws.ok(json!({"op":"subscribe","id":2,"topic":"t"}), &mut early)
        .await;
}

// ---- the page in Chromium ----

fn result_list(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

/// Loads clean (CSP header, no console error, nothing off loopback, < 300 KB) and the topics
/// view is right: 50 messages at 10/s show last seq 50 and a rate of 8 to 12 msg/s.
#[tokio::test]
async fn browser_the_page_loads_clean_and_topics_are_right() {
    let server = Server::start(&[]).await;
    let r = browser::run("dashboard_topics.js", server.base(), &[]).await;
    assert!(
        r["csp"]
            .as_str()
            .unwrap_or_default()
            .contains("default-src 'self'"),
        "{r}"
    );
    assert_eq!(result_list(&r, "consoleErrors"), Vec::<Value>::new(), "{r}");
    assert_eq!(result_list(&r, "offLoopback"), Vec::<Value>::new(), "{r}");
    let bytes = r["transferred"].as_u64().unwrap_or(u64::MAX);
    assert!(bytes < 300 * 1024, "transferred {bytes} bytes: {r}");
    assert_eq!(r["lastSeq"], "50", "{r}");
    let rate = r["maxRate"].as_f64().unwrap_or_default();
    assert!((8.0..=12.0).contains(&rate), "rate {rate}: {r}");
    let api = server.topic_info("dash.rate").await;
    assert_eq!(api["last_seq"], 50);
}

/// The tail over SSE, WebSocket, long poll and short poll: 1..20 in order, nothing shown while
/// paused, 21..25 after resume (none lost), replay from seq 10 (and from `10m` over SSE); and
/// the tab never holds more than one streaming connection (Chromium's own network events).
#[tokio::test]
async fn browser_the_tail_loses_nothing_over_every_transport() {
    let server = Server::start(&[]).await;
    let r = browser::run("dashboard_tail.js", server.base(), &[]).await;
    for transport in ["sse", "ws", "long-poll", "short-poll"] {
        let t = &r["results"][transport];
        for check in ["first", "pausedHeld", "resumed", "replayed", "sinceTime"] {
            assert_eq!(t[check], true, "{transport}: {check}: {}", t["shown"]);
        }
    }
    assert_eq!(r["maxOpen"], 1, "streaming connections at once: {r}");
    assert_eq!(result_list(&r, "consoleErrors"), Vec::<Value>::new(), "{r}");
}

/// `auth.mode = required` in the browser: no data before login, no `access_token` in any URL,
/// the publish form only for a token that may publish (and its message read back through the
/// API), a forged publish `403`, delete only for an admin.
#[tokio::test]
async fn browser_auth_required_hides_what_a_token_may_not_do() {
    let (server, _dir) = required_server().await;
    let auth = bearer(ADMIN);
    let first = server
        .client()
        .post(server.url("/v1/topics/dash.auth/messages"))
        .header("authorization", &auth)
        .body("first")
        .send()
        .await
        .expect("publish");
    assert_eq!(first.status(), StatusCode::CREATED);
    let env = [
        ("TOKEN_ADMIN", ADMIN),
        ("TOKEN_READER", READER),
        ("TOKEN_PUBLISHER", PUBLISHER),
    ];
    let r = browser::run("dashboard_auth.js", server.base(), &env).await;
    assert_eq!(r["dataBeforeLogin"], false, "{r}");
    assert!(
        result_list(&r, "apiBeforeLogin").iter().all(|s| s == 401),
        "every API answer before login is 401: {r}"
    );
    assert_eq!(result_list(&r, "tokenInUrl"), Vec::<Value>::new(), "{r}");
    assert!(r["urls"].as_u64().unwrap_or_default() > 0, "{r}");
    assert_eq!(r["pubRights"], json!({"form": true, "del": false}), "{r}");
    assert_eq!(
        r["readerRights"],
        json!({"form": false, "del": false}),
        "{r}"
    );
    assert_eq!(r["adminRights"], json!({"form": true, "del": true}), "{r}");
    assert_eq!(r["forged"], 403, "{r}");
    assert_eq!(result_list(&r, "consoleErrors"), Vec::<Value>::new(), "{r}");

    // The form's message, read back through the API before the admin's delete.
    let seq = r["publishedSeq"].as_u64().expect("a published seq");
    let page = &r["readBack"];
    let m = &page["messages"][0];
    assert_eq!(
        (m["seq"].as_u64(), m["data"].clone(), m["event"].clone()),
        (Some(seq), json!("from the form"), json!("created")),
        "{page}"
    );
    // The forged publish stored nothing.
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1), "{page}");

    // Then the admin deleted the messages, with two clicks.
    assert!(
        r["armed"].as_str().unwrap_or_default().contains("again"),
        "{r}"
    );
    let resp = server
        .get("/v1/topics/dash.auth", &[("authorization", &auth)])
        .await;
    let (_, _, info) = into_json(resp).await;
    assert_eq!(info["messages"], 0, "{info}");
}

/// Light and dark at 1280 and 375 px: the main text's contrast is at least 4.5:1 (computed in
/// the browser), dark really is dark, nothing scrolls sideways at 375 px, the toggle survives a
/// reload; the screenshots are written under target/ (docs/dashboard-*.png are copies).
#[tokio::test]
async fn browser_light_and_dark_are_readable_at_1280_and_375() {
    let server = Server::start(&[]).await;
    let topic = "orders.eu";
    for i in 1..=12 {
        let event = if i % 3 == 0 { "refunded" } else { "created" };
        let resp = server
            .client()
            .post(server.url(&format!("/v1/topics/{topic}/messages")))
            .header("plexus-event", event)
            .body(format!("{{\"order\":{i},\"total\":{}}}", i * 7))
            .send()
            .await
            .expect("publish");
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&shots).expect("create the screenshot directory");
    let shots_env = shots.to_str().expect("UTF-8 path");
    let r = browser::run(
        "dashboard_looks.js",
        server.base(),
        &[("SHOTS", shots_env), ("TOPIC", topic)],
    )
    .await;
    for (key, ratios) in r["contrast"].as_object().expect("contrast figures") {
        for (what, ratio) in ratios.as_object().expect("ratios") {
            if what == "backgroundLuminance" {
                continue;
            }
            let ratio = ratio.as_f64().unwrap_or_default();
            assert!(ratio >= 4.5, "{key}: {what} has contrast {ratio}: {r}");
        }
    }
    for width in [1280, 375] {
        let dark = r["contrast"][format!("dark-{width}")]["backgroundLuminance"]
            .as_f64()
            .unwrap_or(1.0);
        assert!(dark < 0.2, "dark at {width}: luminance {dark}");
    }
    for (key, overflow) in r["overflow"].as_object().expect("overflow figures") {
        assert!(
            overflow.as_i64().unwrap_or(1) <= 0,
            "{key} scrolls sideways: {r}"
        );
    }
    assert_eq!(
        r["toggle"]["before"], "light",
        "the system's theme first: {r}"
    );
    assert_eq!(
        r["toggle"]["after"], "dark",
        "the toggle survives a reload: {r}"
    );
    for shot in result_list(&r, "shots") {
        let len = std::fs::metadata(shot.as_str().unwrap_or_default())
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 1000, "{shot} is empty");
    }
    assert_eq!(result_list(&r, "consoleErrors"), Vec::<Value>::new(), "{r}");
}

/// The Connections view equals `/metrics` (by protocol: HTTP/1.1 and h2c; by transport: SSE,
/// NDJSON) with streams held by other clients; four tabs each tailing a topic over SSE stay
/// live, and an API call from one answers within a second (generous: the browser's
/// 6-connection pool is what would stall it).
#[tokio::test]
async fn browser_connections_match_metrics_and_four_tabs_stay_live() {
    let server = Server::start(&[]).await;
    server.publish("dash.conn", "x").await;
    let r = browser::run("dashboard_live.js", server.base(), &[]).await;
    assert_eq!(r["agreed"], true, "{r}");
    assert_eq!(r["shown"]["transport:sse"], 4, "{r}");
    assert_eq!(r["shown"]["transport:ndjson"], 1, "{r}");
    assert!(r["shown"]["protocol:h2c"].as_u64() >= Some(1), "{r}");
    assert_eq!(r["live"], json!([true, true, true, true]), "{r}");
    let ms = r["apiMs"].as_f64().unwrap_or(f64::MAX);
    assert!(
        ms < 1000.0,
        "an API call took {ms} ms with four tabs open: {r}"
    );
    assert_eq!(result_list(&r, "consoleErrors"), Vec::<Value>::new(), "{r}");
}

/// An idle dashboard for 60 s costs the hub under 1 % of a core and at most 1 request/s.
#[tokio::test]
async fn browser_an_idle_dashboard_costs_the_hub_almost_nothing() {
    let server = Server::start(&[]).await;
    server.publish("dash.idle", "x").await;
    let pid = server.pid().to_string();
    let r = browser::run("dashboard_idle.js", server.base(), &[("HUB_PID", &pid)]).await;
    eprintln!("idle dashboard: {r}");
    let rps = r["requestsPerSecond"].as_f64().unwrap_or(f64::MAX);
    assert!(rps <= 1.0, "{rps} requests/s: {r}");
    assert!(
        r["requests"].as_u64() > Some(0),
        "the page keeps refreshing: {r}"
    );
    let share = r["cpuShare"].as_f64().unwrap_or(f64::MAX);
    assert!(share < 0.01, "the hub spent {share} of a core: {r}");
    assert_eq!(result_list(&r, "consoleErrors"), Vec::<Value>::new(), "{r}");
}

/// `POST /v1/jobs/{id}/retry`: a dead job goes back to its queue; any other state is `409`
/// `job-not-dead`, an unknown job `404`. Returns the ids (succeeded, dead, queued) of a queue
/// set up for the Jobs view.
async fn jobs_in_every_state(server: &Server, queue: &str) -> (String, String, String) {
    let client = server.client();
    let mut ids = Vec::new();
    for i in 0..3 {
        let resp = client
            .post(server.url(&format!("/v1/queues/{queue}/jobs?max_attempts=1")))
            .body(format!("job {i}"))
            .send()
            .await
            .expect("submit");
        let (status, _, job) = into_json(resp).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        ids.push(job["id"].as_str().unwrap_or_default().to_owned());
    }
    for (action, body) in [("complete", "done"), ("fail", "the disk is full")] {
        let resp = client
            .post(server.url(&format!("/v1/queues/{queue}/claim?lease=30")))
            .send()
            .await
            .expect("claim");
        let (status, _, job) = into_json(resp).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        let lease = job["lease"].as_str().unwrap_or_default();
        let id = job["id"].as_str().unwrap_or_default();
        let resp = client
            .post(server.url(&format!("/v1/jobs/{id}/{action}?lease={lease}")))
            .body(body)
            .send()
            .await
            .expect("act");
        assert_eq!(resp.status(), StatusCode::OK);
    }
    (ids[0].clone(), ids[1].clone(), ids[2].clone())
}

#[tokio::test]
async fn retry_puts_a_dead_job_back_and_refuses_any_other() {
    let server = Server::start(&[]).await;
    let (done, dead, queued) = jobs_in_every_state(&server, "retry.q").await;
    let retry = |id: String| {
        let server = &server;
        async move {
            server
                .client()
                .post(server.url(&format!("/v1/jobs/{id}/retry")))
                .send()
                .await
                .expect("retry")
        }
    };
    expect_problem(retry(done.clone()).await, 409, "a succeeded job").await;
    expect_problem(retry(queued.clone()).await, 409, "a queued job").await;
    expect_problem(retry("0".repeat(32)).await, 404, "an unknown job").await;
    expect_problem(retry("nope".into()).await, 404, "a bad id").await;
    let (status, _, job) = into_json(retry(dead.clone()).await).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(
        (job["state"].clone(), job["attempts"].clone()),
        (json!("queued"), json!(0))
    );
    // A second retry finds it queued: nothing changes.
    expect_problem(retry(dead.clone()).await, 409, "a retried job").await;
    // It can be claimed again, and its queued state is on its topic.
    let resp = server
        .client()
        .post(server.url("/v1/queues/retry.q/claim?lease=30"))
        .send()
        .await
        .expect("claim");
    let (_, _, claimed) = into_json(resp).await;
    assert!(
        claimed["id"] == json!(queued) || claimed["id"] == json!(dead),
        "{claimed}"
    );
    let events = server.read_all(&format!("_jobs.{dead}")).await;
    let states: Vec<&str> = events.iter().filter_map(|m| m["event"].as_str()).collect();
    let at = states.iter().position(|s| *s == "dead");
    assert_eq!(
        at.and_then(|i| states.get(i + 1)),
        Some(&"queued"),
        "the retry is a queued event after the dead one: {states:?}"
    );
    let metrics = server.metrics().await;
    assert!(metrics.contains("plexus_job_transitions_total"), "counted");
}

#[tokio::test]
async fn retry_needs_the_jobs_right_on_the_queue() {
    let (server, _dir) = required_server().await;
    let admin = bearer(ADMIN);
    let resp = server
        .client()
        .post(server.url("/v1/queues/q/jobs"))
        .header("authorization", &admin)
        .body("x")
        .send()
        .await
        .expect("submit");
    let (_, _, job) = into_json(resp).await;
    let id = job["id"].as_str().unwrap_or_default();
    let reader = bearer(READER);
    let resp = server
        .client()
        .post(server.url(&format!("/v1/jobs/{id}/retry")))
        .header("authorization", &reader)
        .send()
        .await
        .expect("retry");
    expect_problem(resp, 403, "no jobs right").await;
}

/// The Jobs view equals the API: counts by state, the dead job's error, and its retry; the Lab
/// view says "lab disabled" on a hub without the lab.
#[tokio::test]
async fn browser_jobs_match_the_api_and_a_dead_job_is_retried() {
    let server = Server::start(&[]).await;
    let (_, dead, _) = jobs_in_every_state(&server, "dash.q").await;
    let r = browser::run(
        "dashboard_jobs.js",
        server.base(),
        &[("QUEUE", "dash.q"), ("DEAD_JOB", &dead)],
    )
    .await;
    assert_eq!(
        r["before"],
        json!({"queued":1,"running":0,"succeeded":1,"dead":1}),
        "{r}"
    );
    assert_eq!(r["deadError"], "the disk is full", "{r}");
    assert_eq!(
        r["after"],
        json!({"queued":2,"running":0,"succeeded":1,"dead":0}),
        "{r}"
    );
    assert_eq!(r["apiStateAfter"], "queued", "{r}");
    assert_eq!(r["lab"], "lab disabled", "{r}");
    assert_eq!(result_list(&r, "consoleErrors"), Vec::<Value>::new(), "{r}");
}

/// The Consumers view: a consumer's pending count equals the API's; a webhook shows its state,
/// its lag and its last (failed) attempt.
#[tokio::test]
async fn browser_consumers_and_webhooks_show_lag_and_attempts() {
    let server = Server::start(&[]).await;
    for i in 0..3 {
        server.publish("dash.c", format!("m{i}")).await;
    }
    let resp = server
        .client()
        .put(server.url("/v1/consumers/dash-c"))
        .json(&json!({"topics":["dash.c"]}))
        .send()
        .await
        .expect("create a consumer");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = server
        .client()
        .post(server.url("/v1/webhooks"))
        .json(&json!({"url":"http://receiver.invalid/hook","topics":["dash.c"],"since":"all"}))
        .send()
        .await
        .expect("create a webhook");
    let (status, _, hook) = into_json(resp).await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let id = hook["id"].as_str().unwrap_or_default().to_owned();
    let r = browser::run("dashboard_consumers.js", server.base(), &[("WEBHOOK", &id)]).await;
    let (_, _, api) = server.get_json("/v1/consumers/dash-c").await;
    assert_eq!(
        r["pending"], api["topics_state"]["dash.c"]["pending"],
        "{r} {api}"
    );
    assert_eq!(r["pending"], 3, "{r}");
    assert_eq!(r["hook"]["state"], "active", "{r}");
    assert!(r["hook"]["pending"].as_u64() >= Some(1), "{r}");
    assert!(
        r["hook"]["attempt"]
            .as_str()
            .unwrap_or_default()
            .starts_with("#1 try 1"),
        "{r}"
    );
    assert_eq!(result_list(&r, "consoleErrors"), Vec::<Value>::new(), "{r}");
}

/// A socket opened without a credential that never sends `auth` is not held: it gets an
/// `error` 401 and is closed (after 10 s; the test waits for the frame, not the clock).
#[tokio::test]
async fn a_websocket_that_never_authenticates_is_closed() {
    let (server, _dir) = required_server().await;
    let mut ws = bare_ws(&server, "").await.expect("upgrade");
    let refused = ws.recv().await;
    assert_eq!(
        (refused["op"].clone(), refused["status"].clone()),
        (json!("error"), json!(401)),
        "{refused}"
    );
    assert!(ws.try_recv().await.is_none(), "the socket closes");
    eventually(
        "the socket to be gone from the open-stream gauge",
        || async {
            let metrics = server.metrics().await;
            metrics
                .contains("plexus_streams_open{transport=\"ws\"} 0")
                .then_some(())
        },
    )
    .await;
}

/// The Lab view on a hub with the lab on: a run started from the form charts live and ends with
/// a table equal to the API's figures.
#[tokio::test]
async fn browser_the_lab_view_runs_and_shows_the_apis_figures() {
    let server = Server::start(&["--lab-enabled"]).await;
    let r = browser::run("dashboard_lab.js", server.base(), &[]).await;
    assert!(
        r["status"].as_str().unwrap_or_default().ends_with(": done"),
        "{r}"
    );
    assert_eq!(r["api"]["state"], "done", "{r}");
    for pattern in ["sse", "short-poll"] {
        let deliveries = &r["api"]["patterns"][pattern]["deliveries"];
        assert!(deliveries.as_u64().unwrap_or(0) > 0, "{pattern}: {r}");
        assert_eq!(&r["rows"][pattern], deliveries, "{pattern}: {r}");
    }
    assert!(r["chartLines"].as_u64().unwrap_or(0) > 0, "{r}");
    assert_eq!(result_list(&r, "consoleErrors"), Vec::<Value>::new(), "{r}");
}
