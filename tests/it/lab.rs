//! The pattern lab (docs/API.md, "The pattern lab"): `POST /v1/lab/runs` and
//! `GET /v1/lab/runs/{id}` on a real hub, their errors, progress on `_lab.{id}`, the figures
//! the lab measures for each pattern, and `plexus lab` from outside.

use std::time::Duration;

use serde_json::{Value, json};

use crate::kit::{Server, eventually, expect_problem, into_json};

async fn post_run(server: &Server, body: &Value) -> reqwest::Response {
    server
        .client()
        .post(server.url("/v1/lab/runs"))
        .json(body)
        .send()
        .await
        .expect("POST /v1/lab/runs")
}

/// Starts a run and waits until it is no longer running (at most `within`); its final view.
async fn run_to_end(server: &Server, body: &Value, within: Duration) -> Value {
    let (status, headers, started) = into_json(post_run(server, body).await).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["state"], "running", "{started}");
    let id = started["id"].as_str().expect("an id").to_owned();
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/v1/lab/runs/{id}").as_str())
    );
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (_, _, view) = server.get_json(&format!("/v1/lab/runs/{id}")).await;
        if view["state"] != "running" {
            assert_eq!(view["state"], "done", "{view}");
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run did not end within {within:?}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_lab_is_off_by_default_and_its_routes_are_404() {
    let server = Server::start(&[]).await;
    let body = json!({"patterns": ["sse"], "clients": 1});
    let problem = expect_problem(post_run(&server, &body).await, 404, "lab off").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("lab.enabled"),
        "{problem}"
    );
    expect_problem(
        server.get("/v1/lab/runs/abc", &[]).await,
        404,
        "lab off, GET",
    )
    .await;
}

#[tokio::test]
async fn bad_run_bodies_are_400_problems_and_start_nothing() {
    let server = Server::start(&["--lab-enabled"]).await;
    let bad = [
        json!({"patterns": ["carrier-pigeon"], "clients": 1}),
        json!({"patterns": ["sse", "webhook", "sse"], "clients": 1}),
        json!({"patterns": [], "clients": 1}),
        json!({"patterns": ["sse"], "clients": 0}),
        json!({"patterns": ["sse"], "clients": 501}),
        json!({"patterns": ["sse"], "clients": 1, "duration": "10 s"}),
        json!({"patterns": ["sse"], "clients": 1, "duration": "5m"}),
        json!({"patterns": ["sse"], "clients": 1, "rate": 0}),
        json!({"patterns": ["sse"], "clients": 1, "size": 5}),
        json!({"patterns": ["short-poll"], "clients": 500, "poll_interval": "10ms"}),
        json!({"patterns": ["sse"], "clients": 1, "colour": "blue"}),
        json!({"clients": 1}),
        json!("sse"),
    ];
    for body in &bad {
        let problem = expect_problem(post_run(&server, body).await, 400, &body.to_string()).await;
        assert_eq!(
            problem["type"], "urn:plexus:problem:bad-request",
            "{problem}"
        );
    }
    let resp = server
        .client()
        .post(server.url("/v1/lab/runs"))
        .body("{not json")
        .send()
        .await
        .expect("POST");
    expect_problem(resp, 400, "broken JSON").await;
    expect_problem(
        server.get("/v1/lab/runs/nope", &[]).await,
        404,
        "unknown run",
    )
    .await;
    // Nothing was started: no lab topic exists, and the hub still answers.
    let topics = server.topics().await;
    assert!(
        topics
            .iter()
            .all(|t| !t["topic"].as_str().unwrap_or("").starts_with("lab.")),
        "{topics:?}"
    );
    let (status, _, _) = server.get_json("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_run_measures_each_pattern_reports_progress_and_refuses_a_second_run_meanwhile() {
    let server = Server::start(&["--lab-enabled"]).await;
    let body = json!({
        "patterns": ["short-poll", "long-poll", "sse", "ws", "sse-h2"],
        "clients": 3, "rate": 10, "duration": "1s", "poll_interval": "100ms", "size": 64
    });
    let (status, _, started) = into_json(post_run(&server, &body).await).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("an id").to_owned();
    let busy = expect_problem(post_run(&server, &body).await, 409, "a second run").await;
    assert_eq!(busy["type"], "urn:plexus:problem:lab-busy");
    let view = eventually("the run to end", || async {
        let (_, _, v) = server.get_json(&format!("/v1/lab/runs/{id}")).await;
        (v["state"] != "running").then_some(v)
    })
    .await;
    assert_eq!(view["state"], "done", "{view}");
    for pattern in ["short-poll", "long-poll", "sse", "ws", "sse-h2"] {
        let p = &view["patterns"][pattern];
        assert_eq!(p["clients"], 3, "{pattern}: {p}");
        assert_eq!(p["deliveries"], 30, "{pattern}: {p}");
        assert_eq!(p["lost"], 0, "{pattern}: {p}");
        assert_eq!(p["connections"], 3, "{pattern}: {p}");
        for field in ["requests_per_message", "bytes_per_message", "cpu_s"] {
            assert!(p[field].as_f64().is_some(), "{pattern}.{field}: {p}");
        }
        assert!(
            p["bytes_per_message"].as_f64() > Some(64.0),
            "{pattern}: {p}"
        );
        let (p50, p99) = (&p["latency_ms"]["p50"], &p["latency_ms"]["p99"]);
        assert!(
            p50.as_f64() > Some(0.0) && p99.as_f64() >= p50.as_f64(),
            "{p}"
        );
    }
    // Progress and results went out on _lab.{id}: a start and a result per pattern, then the end.
    let notes = server.read_all(&format!("_lab.{id}")).await;
    let events: Vec<Value> = notes
        .iter()
        .map(|m| serde_json::from_str(m["data"].as_str().unwrap_or("null")).unwrap_or(Value::Null))
        .collect();
    let count = |e: &str| events.iter().filter(|v| v["event"] == e).count();
    assert_eq!(
        (count("started"), count("done"), count("finished")),
        (5, 5, 1),
        "{events:?}"
    );
    let last = events.last().expect("notes");
    assert_eq!(last["run"]["patterns"], view["patterns"]);
    // Once done, another run may start.
    let (status, _, _) = into_json(
        post_run(
            &server,
            &json!({"patterns": ["sse"], "clients": 1, "duration": "1s"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202);
}

fn figure(view: &Value, pattern: &str, field: &str) -> f64 {
    view["patterns"][pattern][field]
        .as_f64()
        .unwrap_or_else(|| panic!("{pattern}.{field} in {view}"))
}

/// The slow rate: at R = 1 msg/s and a 250 ms poll, short polling is chatty (about 4 requests
/// per message, half an interval of latency), long polling makes about one, streams none;
/// bytes order as streams < long poll < short poll; nothing is lost.
#[tokio::test]
async fn slow_rate_figures_short_poll_is_chatty_long_poll_one_request_streams_none() {
    let server = Server::start(&["--lab-enabled"]).await;
    let view = run_to_end(
        &server,
        &json!({
            "patterns": ["short-poll", "long-poll", "sse", "ws"],
            "clients": 50, "rate": 1, "duration": "10s", "poll_interval": "250ms", "size": 100
        }),
        Duration::from_secs(150),
    )
    .await;
    for pattern in ["short-poll", "long-poll", "sse", "ws"] {
        assert_eq!(figure(&view, pattern, "lost"), 0.0, "{pattern}: {view}");
        assert_eq!(
            figure(&view, pattern, "deliveries"),
            500.0,
            "{pattern}: {view}"
        );
    }
    let short = figure(&view, "short-poll", "requests_per_message");
    assert!(
        (3.2..=4.8).contains(&short),
        "short poll: {short} requests/message"
    );
    let p50 = view["patterns"]["short-poll"]["latency_ms"]["p50"]
        .as_f64()
        .unwrap_or_default();
    assert!((75.0..=175.0).contains(&p50), "short poll p50 {p50} ms");
    let long = figure(&view, "long-poll", "requests_per_message");
    assert!(
        (0.9..=1.1).contains(&long),
        "long poll: {long} requests/message"
    );
    for stream in ["sse", "ws"] {
        let r = figure(&view, stream, "requests_per_message");
        assert!(r < 0.01, "{stream}: {r} requests/message");
    }
    let bytes = |p| figure(&view, p, "bytes_per_message");
    assert!(
        bytes("sse") < bytes("long-poll")
            && bytes("ws") < bytes("long-poll")
            && bytes("long-poll") < bytes("short-poll"),
        "bytes/message: {view}"
    );
}

/// The fast rate: at R = 20 msg/s a 250 ms short poll carries about five messages, so it makes
/// fewer requests per message than a long poll, which answers about one message at a time.
#[tokio::test]
async fn fast_rate_short_polling_makes_fewer_requests_per_message_than_long_polling() {
    let server = Server::start(&["--lab-enabled"]).await;
    let view = run_to_end(
        &server,
        &json!({
            "patterns": ["short-poll", "long-poll"],
            "clients": 50, "rate": 20, "duration": "5s", "poll_interval": "250ms", "size": 100
        }),
        Duration::from_secs(90),
    )
    .await;
    let short = figure(&view, "short-poll", "requests_per_message");
    let long = figure(&view, "long-poll", "requests_per_message");
    assert!(
        short < long,
        "short {short} vs long {long} requests/message"
    );
    assert_eq!(figure(&view, "short-poll", "lost"), 0.0, "{view}");
    assert_eq!(figure(&view, "long-poll", "lost"), 0.0, "{view}");
}

/// `plexus lab` against a real hub: a row per pattern on stdout, JSON that matches it, and an
/// SVG chart that Chromium renders alone (a legend label per pattern, a screenshot with ink).
#[tokio::test]
async fn the_cli_prints_a_table_and_writes_json_and_an_svg_that_chromium_renders() {
    use crate::kit::{browser, cli};
    let server = Server::start(&[]).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let (json_path, svg_path) = (dir.path().join("lab.json"), dir.path().join("lab.svg"));
    let out = cli::run(
        cli::plexus().args([
            "lab",
            "--server",
            server.base(),
            "--patterns",
            "short-poll,long-poll,sse,ws,sse-h2",
            "--clients",
            "5",
            "--rate",
            "5",
            "--duration",
            "2s",
            "--poll-interval",
            "100ms",
            "--json",
            json_path.to_str().expect("a UTF-8 path"),
            "--svg",
            svg_path.to_str().expect("a UTF-8 path"),
        ]),
        "plexus lab",
    )
    .await;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc: Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("the JSON file")).expect("JSON");
    let patterns = ["short-poll", "long-poll", "sse", "ws", "sse-h2"];
    for pattern in patterns {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(pattern))
            .unwrap_or_else(|| panic!("no {pattern} row in\n{table}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        let p = &doc["patterns"][pattern];
        assert_eq!(p["deliveries"], 50, "{pattern}: {p}");
        assert_eq!(p["lost"], 0, "{pattern}: {p}");
        // The table shows what the JSON holds: clients, deliveries, lost, requests/message.
        assert_eq!(cells[1], p["clients"].to_string(), "{row}");
        assert_eq!(cells[2], p["deliveries"].to_string(), "{row}");
        assert_eq!(cells[3], p["lost"].to_string(), "{row}");
        let req: f64 = cells[6].parse().expect("requests/message");
        assert!(
            (req - p["requests_per_message"].as_f64().unwrap_or(-1.0)).abs() < 0.001,
            "{row}"
        );
        // From outside the hub's CPU time is not known.
        assert!(p["cpu_s"].is_null(), "{p}");
    }
    let shot = dir.path().join("lab.png");
    let result = browser::run(
        "lab-svg.js",
        server.base(),
        &[
            ("LAB_SVG", svg_path.to_str().expect("a UTF-8 path")),
            ("LAB_SHOT", shot.to_str().expect("a UTF-8 path")),
        ],
    )
    .await;
    assert_eq!(result["legend"], json!(patterns), "{result}");
    assert_eq!(result["bars"], 4 * patterns.len(), "{result}");
    assert_eq!(result["failed"], json!([]), "{result}");
    let (ink, total) = (
        result["ink"].as_u64().unwrap_or(0),
        result["total"].as_u64().unwrap_or(0),
    );
    assert!(ink > 2000 && ink < total, "{result}");
}

/// With `auth.mode = required` a run needs an admin credential (`401` without one, `403`
/// without `admin`), and an admin's run works: its clients send the caller's token.
#[tokio::test]
async fn with_auth_required_a_run_needs_admin_and_its_clients_use_the_callers_token() {
    let dir = tempfile::tempdir().expect("a config directory");
    let config = dir.path().join("plexus.toml");
    std::fs::write(
        &config,
        "[lab]\nenabled = true\n[auth]\nmode = \"required\"\n\
         [[auth.tokens]]\ntoken = \"lab-admin-token\"\npublish = [\">\"]\nsubscribe = [\">\", \"_lab.>\"]\nadmin = true\n\
         [[auth.tokens]]\ntoken = \"lab-reader-token\"\npublish = [\">\"]\nsubscribe = [\">\"]\nadmin = false\n",
    )
    .expect("write the config");
    let server = Server::start(&["--config", config.to_str().expect("UTF-8")]).await;
    let body = json!({"patterns": ["long-poll", "sse"], "clients": 2, "rate": 5, "duration": "1s"});
    let post = |token: Option<&'static str>| {
        let mut req = server.client().post(server.url("/v1/lab/runs")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    expect_problem(post(None).await.expect("POST"), 401, "no credential").await;
    expect_problem(
        post(Some("lab-reader-token")).await.expect("POST"),
        403,
        "no admin",
    )
    .await;
    let (status, _, started) = into_json(post(Some("lab-admin-token")).await.expect("POST")).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("an id").to_owned();
    let get = |token: &'static str| {
        server
            .client()
            .get(server.url(&format!("/v1/lab/runs/{id}")))
            .bearer_auth(token)
            .send()
    };
    expect_problem(
        get("lab-reader-token").await.expect("GET"),
        403,
        "GET, no admin",
    )
    .await;
    let view = eventually("the run to end", || async {
        let (_, _, v) = into_json(get("lab-admin-token").await.expect("GET")).await;
        (v["state"] != "running").then_some(v)
    })
    .await;
    assert_eq!(view["state"], "done", "{view}");
    assert_eq!(view["patterns"]["sse"]["deliveries"], 10, "{view}");
    assert_eq!(view["patterns"]["long-poll"]["lost"], 0, "{view}");
}

/// "Lab bytes are real": for SSE and short polling, the bytes per message the lab counts on
/// its sockets from the hub agree within 15 % with what Chromium's own network events count
/// for the same traffic made by a page (fetch) on the hub's origin. The comparison is of the
/// hub-to-client bytes: a browser's request heads (~480 B a fetch) are its own, not the hub's.
#[tokio::test]
async fn the_labs_byte_counts_agree_with_chromiums_network_events() {
    use crate::kit::browser;
    let server = Server::start(&["--lab-enabled"]).await;
    let (rate, duration_s, poll_ms, size) = (2, 5, 250, 100);
    let view = run_to_end(
        &server,
        &json!({
            "patterns": ["short-poll", "sse"], "clients": 1, "rate": rate,
            "duration": format!("{duration_s}s"), "poll_interval": format!("{poll_ms}ms"), "size": size
        }),
        Duration::from_secs(60),
    )
    .await;
    // The page's topics have names as long as the lab's, so the envelopes weigh the same.
    let id = view["id"].as_str().expect("an id");
    let sse_topic = format!("lab.{}-sse", "b".repeat(id.len()));
    let poll_topic = format!("lab.{}-short-poll", "b".repeat(id.len()));
    let result = browser::run(
        "lab-bytes.js",
        server.base(),
        &[
            ("SSE_TOPIC", &sse_topic),
            ("POLL_TOPIC", &poll_topic),
            ("RATE", &rate.to_string()),
            ("DURATION_MS", &(duration_s * 1000).to_string()),
            ("POLL_MS", &poll_ms.to_string()),
            ("SIZE", &size.to_string()),
        ],
    )
    .await;
    let messages = (rate * duration_s) as u64;
    assert_eq!(result["counts"]["sse"], messages, "{result}");
    assert_eq!(result["counts"]["poll"], messages, "{result}");
    for (pattern, key) in [
        ("sse", "sse_bytes_received_per_message"),
        ("short-poll", "poll_bytes_received_per_message"),
    ] {
        let lab = figure(&view, pattern, "bytes_received_per_message");
        let chromium = result[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {result}"));
        let off = (lab - chromium).abs() / chromium;
        assert!(
            off <= 0.15,
            "{pattern}: the lab counts {lab:.1} B/message, Chromium {chromium:.1} ({:.0} % apart)\nlab: {view}\nchromium: {result}",
            off * 100.0
        );
    }
}

/// The webhook pattern: the hub POSTs each message to the lab's receiver, one request per
/// delivery; the lab deletes its webhooks after the run. A hub that refuses loopback webhooks
/// (the default) fails the run with a message naming the setting, and keeps no webhook.
#[tokio::test]
async fn the_webhook_pattern_is_one_request_per_message_and_leaves_no_webhook_behind() {
    let server =
        Server::start(&["--lab-enabled", "--webhooks-allow-networks", "127.0.0.1/32"]).await;
    let view = run_to_end(
        &server,
        &json!({"patterns": ["webhook"], "clients": 3, "rate": 5, "duration": "2s"}),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(figure(&view, "webhook", "deliveries"), 30.0, "{view}");
    assert_eq!(figure(&view, "webhook", "lost"), 0.0, "{view}");
    let requests = figure(&view, "webhook", "requests_per_message");
    assert!((0.9..=1.1).contains(&requests), "{requests}: {view}");
    let (_, _, hooks) = server.get_json("/v1/webhooks").await;
    assert_eq!(hooks["webhooks"], json!([]), "{hooks}");

    let refusing = Server::start(&["--lab-enabled"]).await;
    let (status, _, started) = into_json(
        post_run(
            &refusing,
            &json!({"patterns": ["webhook"], "clients": 2, "duration": "1s"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("an id").to_owned();
    let failed = eventually("the run to fail", || async {
        let (_, _, v) = refusing.get_json(&format!("/v1/lab/runs/{id}")).await;
        (v["state"] != "running").then_some(v)
    })
    .await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or("")
            .contains("webhooks.allow_networks"),
        "{failed}"
    );
    let (_, _, hooks) = refusing.get_json("/v1/webhooks").await;
    assert_eq!(hooks["webhooks"], json!([]), "{hooks}");
}

/// A hub listening with TLS only cannot be measured (the lab counts cleartext bytes): `503`
/// `lab-unavailable`, and nothing starts.
#[tokio::test]
async fn a_tls_only_hub_answers_lab_unavailable() {
    crate::kit::install_crypto_provider();
    let server = Server::start(&["--tls-self-signed", "--lab-enabled"]).await;
    let pem = std::fs::read(server.data_dir().join("tls").join("self-signed.pem"))
        .expect("the self-signed PEM");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a certificate"))
        .build()
        .expect("a TLS client");
    let url = format!("https://localhost:{}/v1/lab/runs", server.port());
    let resp = client
        .post(&url)
        .json(&json!({"patterns": ["sse"], "clients": 1}))
        .send()
        .await
        .expect("POST over TLS");
    let problem = expect_problem(resp, 503, "TLS only").await;
    assert_eq!(
        problem["type"], "urn:plexus:problem:lab-unavailable",
        "{problem}"
    );
    // Nothing was started: a second request is refused the same way, not as busy.
    let again = client
        .post(&url)
        .json(&json!({"patterns": ["sse"], "clients": 1}))
        .send()
        .await
        .expect("POST over TLS");
    expect_problem(again, 503, "TLS only, again").await;
}

/// `plexus lab` refuses bad settings before it connects, naming the setting, and reports a
/// hub it cannot reach; each as one line on stderr and a failing exit code.
#[tokio::test]
async fn the_cli_refuses_bad_settings_and_an_unreachable_hub() {
    use crate::kit::cli;
    for (args, expect) in [
        (vec!["--clients", "0"], "clients"),
        (vec!["--patterns", "sse,carrier-pigeon"], "carrier-pigeon"),
        (vec!["--duration", "10 s"], "duration"),
        (vec!["--poll-interval", "1ms"], "poll_interval"),
        (vec!["--server", "https://127.0.0.1:9"], "http://"),
        (
            vec!["--server", "http://127.0.0.1:9", "--duration", "1s"],
            "cannot reach the hub",
        ),
    ] {
        let out = cli::run_to_failure(
            cli::plexus().arg("lab").args(&args),
            &format!("plexus lab {args:?}"),
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: no table on a failure");
    }
}
