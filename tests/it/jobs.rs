//! Jobs over HTTP (docs/API.md, "Jobs"): the lifecycle of one job
//! from submit to result, `Prefer: wait`, status long polls, idempotent submits, the events on
//! `_jobs.{id}` (short poll and SSE), and every error a worker or a client can meet.
//!
//! The helpers at the top speak the jobs API and are shared with `jobs_workers.rs` and
//! `jobs_cli.rs`. Nothing waits on a timer: a lease that runs out is observed through a
//! claim that waits for the job, or through the job's status.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::kit::clients::Sse;
use crate::kit::{Engine, Server, b64_encode, enc, eventually, expect_problem, into_json, payload};

/// The job's `id`.
pub fn id(job: &Value) -> String {
    job["id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("job has no non-empty string `id`: {job}"))
        .to_string()
}

/// The claim's `lease` token.
pub fn lease(job: &Value) -> String {
    job["lease"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("claimed job has no non-empty string `lease`: {job}"))
        .to_string()
}

/// The job's `attempts`.
pub fn attempts(job: &Value) -> u64 {
    job["attempts"]
        .as_u64()
        .unwrap_or_else(|| panic!("job has no numeric `attempts`: {job}"))
}

/// Asserts the fields every job JSON has, and its queue and state.
pub fn assert_job(job: &Value, queue: &str, state: &str) {
    id(job);
    assert_eq!(job["queue"], json!(queue), "job `queue`: {job}");
    assert_eq!(job["state"], json!(state), "job `state`: {job}");
    attempts(job);
    assert!(
        job["max_attempts"].as_u64().is_some_and(|n| n >= 1),
        "job has no positive `max_attempts`: {job}"
    );
    for field in ["created", "updated"] {
        millis(&job[field]);
    }
    let has_text = job.get("payload").is_some_and(Value::is_string);
    let has_b64 = job.get("payload_base64").is_some_and(Value::is_string);
    assert!(
        has_text != has_b64,
        "job must have exactly one of string `payload` / `payload_base64`: {job}"
    );
}

/// Milliseconds since the epoch of an RFC 3339 time (`YYYY-MM-DDTHH:MM:SS[.f…](Z|±HH:MM)`).
pub fn millis(t: &Value) -> i64 {
    let s = t
        .as_str()
        .unwrap_or_else(|| panic!("time is not a string: {t}"));
    parse_rfc3339(s).unwrap_or_else(|| panic!("{s:?} is not an RFC 3339 time"))
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        ms = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * (rest[1..3].parse::<i64>().ok()? * 60 + rest[4..6].parse::<i64>().ok()?)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// `POST /v1/queues/{queue}/jobs{query}` (`query` empty or starting with `?`).
pub async fn submit_raw(
    server: &Server,
    queue: &str,
    query: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> Response {
    let mut req = server
        .client()
        .post(server.url(&format!("/v1/queues/{queue}/jobs{query}")))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("send POST /v1/queues/{queue}/jobs")
}

/// Asserts a `202` submit answer: `Location: /v1/jobs/{id}` and a queued job; the job.
pub async fn accepted(resp: Response, queue: &str, what: &str) -> Value {
    let (status, headers, job) = into_json(resp).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{what}: {job}");
    assert_job(&job, queue, "queued");
    let location = headers
        .get("location")
        .map(|v| v.to_str().expect("Location is ASCII").to_string());
    assert_eq!(
        location,
        Some(format!("/v1/jobs/{}", id(&job))),
        "{what}: Location names the job's status URL: {job}"
    );
    job
}

/// Submits `body` to `queue` (`query` for `max_attempts`), asserting `202`; the job.
pub async fn submit_q(
    server: &Server,
    queue: &str,
    query: &str,
    body: impl Into<reqwest::Body>,
) -> Value {
    let resp = submit_raw(server, queue, query, body, &[]).await;
    accepted(resp, queue, &format!("submit to {queue}{query}")).await
}

/// Submits `body` to `queue`, asserting `202`; the job.
pub async fn submit(server: &Server, queue: &str, body: impl Into<reqwest::Body>) -> Value {
    submit_q(server, queue, "", body).await
}

/// `POST /v1/queues/{queue}/claim?{query}`; the raw response.
pub async fn claim_raw(server: &Server, queue: &str, query: &str) -> Response {
    server
        .client()
        .post(server.url(&format!("/v1/queues/{queue}/claim?{query}")))
        .send()
        .await
        .expect("send POST /v1/queues/{queue}/claim")
}

/// A claim: `Some(job)` on `200` (a running job with its lease), `None` on `204`.
pub async fn try_claim(server: &Server, queue: &str, query: &str) -> Option<Value> {
    let resp = claim_raw(server, queue, query).await;
    let (status, _, body) = into_json(resp).await;
    match status {
        StatusCode::OK => {
            assert_job(&body, queue, "running");
            lease(&body);
            millis(&body["lease_until"]);
            Some(body)
        }
        StatusCode::NO_CONTENT => {
            assert_eq!(body, Value::Null, "claim on {queue}: a 204 has no body");
            None
        }
        other => panic!("claim on {queue}?{query}: expected 200 or 204, got {other}: {body}"),
    }
}

/// A claim that waits up to 30 s for a job, with a lease of `lease_secs`; panics on `204`.
pub async fn claim(server: &Server, queue: &str, lease_secs: &str) -> Value {
    try_claim(server, queue, &format!("wait=30&lease={lease_secs}"))
        .await
        .unwrap_or_else(|| panic!("claim on {queue} (wait=30) found no job"))
}

/// `POST /v1/jobs/{id}/{action}` with `?lease=TOKEN` when given; the raw response.
pub async fn act_raw(
    server: &Server,
    job_id: &str,
    action: &str,
    token: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Response {
    let query = token.map_or(String::new(), |t| format!("?lease={}", enc(t)));
    server
        .client()
        .post(server.url(&format!("/v1/jobs/{job_id}/{action}{query}")))
        .body(body)
        .send()
        .await
        .expect("send a worker call")
}

/// A worker call with the claim's own lease, asserting `200`; the job JSON.
pub async fn act(server: &Server, claimed: &Value, action: &str, body: &str) -> Value {
    let job_id = id(claimed);
    let token = lease(claimed);
    let resp = act_raw(server, &job_id, action, Some(&token), body.to_string()).await;
    let (status, _, job) = into_json(resp).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "POST /v1/jobs/{job_id}/{action} with the current lease: {job}"
    );
    assert_eq!(job["id"], json!(job_id), "{action} answers the job: {job}");
    job
}

/// `complete` with `result`, asserting a succeeded job holding it.
pub async fn complete(server: &Server, claimed: &Value, result: &str) -> Value {
    let job = act(server, claimed, "complete", result).await;
    assert_eq!(job["state"], json!("succeeded"), "after complete: {job}");
    assert_eq!(job["result"], json!(result), "after complete: {job}");
    job
}

/// `GET /v1/jobs/{id}{query}`, asserting `200`; the job.
pub async fn status(server: &Server, job_id: &str, query: &str) -> Value {
    let path = format!("/v1/jobs/{job_id}{query}");
    let (status, _, job) = server.get_json(&path).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {job}");
    assert_eq!(job["id"], json!(job_id), "GET {path}: {job}");
    job
}

/// Polls the job's status (each poll a long poll) until `done` holds; the job.
pub async fn status_until(server: &Server, job_id: &str, what: &str, done: fn(&Value) -> bool) {
    eventually(what, || async {
        let job = status(server, job_id, "?wait=5").await;
        done(&job).then_some(())
    })
    .await;
}

/// Every envelope of `_jobs.{id}`, oldest first.
pub async fn events(server: &Server, job_id: &str) -> Vec<Value> {
    server.read_all(&format!("_jobs.{job_id}")).await
}

/// The `event` names of envelopes.
pub fn names(envs: &[Value]) -> Vec<String> {
    envs.iter()
        .map(|e| {
            e["event"]
                .as_str()
                .unwrap_or_else(|| panic!("a job event has no `event` name: {e}"))
                .to_string()
        })
        .collect()
}

/// An envelope's payload parsed as JSON (a job event's job).
pub fn data_json(env: &Value) -> Value {
    let bytes = payload(env);
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {env}"))
}

/// A job id that is not stored: `real` with its last character changed to another of its
/// kind, so that it has the shape of a real id.
pub fn unknown_id(real: &str) -> String {
    let mut chars: Vec<char> = real.chars().collect();
    let last = chars.last_mut().expect("a job id is not empty");
    *last = match *last {
        '0' => '1',
        c if c.is_ascii_digit() => '0',
        'a' => 'b',
        c if c.is_ascii_lowercase() => 'a',
        'A' => 'B',
        c if c.is_ascii_uppercase() => 'A',
        '-' => '_',
        _ => '-',
    };
    chars.into_iter().collect()
}

async fn lifecycle(engine: Engine) {
    let server = Server::start_on(engine, &[]).await;
    let job = submit(&server, "work.q", "hello").await;
    let job_id = id(&job);
    assert_eq!(attempts(&job), 0, "{engine:?}: a new job: {job}");
    assert_eq!(
        job["max_attempts"],
        json!(5),
        "{engine:?}: the default: {job}"
    );
    assert_eq!(job["payload"], json!("hello"), "{engine:?}: {job}");
    assert!(
        job.get("result").is_none_or(Value::is_null) && job.get("error").is_none_or(Value::is_null),
        "{engine:?}: a new job has no result or error: {job}"
    );
    assert_eq!(
        status(&server, &job_id, "").await["state"],
        json!("queued"),
        "{engine:?}"
    );

    let claimed = claim(&server, "work.q", "60").await;
    assert_eq!(claimed["id"], json!(job_id), "{engine:?}: {claimed}");
    assert_eq!(attempts(&claimed), 1, "{engine:?}: {claimed}");
    assert_eq!(claimed["payload"], json!("hello"), "{engine:?}: {claimed}");

    let beat = act(&server, &claimed, "heartbeat", "").await;
    assert_eq!(beat["state"], json!("running"), "{engine:?}: {beat}");
    assert_eq!(
        attempts(&beat),
        1,
        "{engine:?}: a heartbeat is no claim: {beat}"
    );

    let resp = act_raw(&server, &job_id, "progress", Some(&lease(&claimed)), "50%").await;
    let code = resp.status();
    let body = resp.text().await.expect("read the progress answer");
    assert!(
        code == StatusCode::OK || code == StatusCode::NO_CONTENT,
        "{engine:?}: progress with the current lease: {code} {body}"
    );

    let done = complete(&server, &claimed, "done").await;
    assert_eq!(attempts(&done), 1, "{engine:?}: {done}");

    let shown = status(&server, &job_id, "").await;
    assert_job(&shown, "work.q", "succeeded");
    assert_eq!(shown["result"], json!("done"), "{engine:?}: {shown}");
    assert_eq!(shown["payload"], json!("hello"), "{engine:?}: {shown}");
    assert_eq!(attempts(&shown), 1, "{engine:?}: {shown}");
    assert!(
        millis(&shown["updated"]) >= millis(&shown["created"]),
        "{engine:?}: updated is not before created: {shown}"
    );

    let envs = events(&server, &job_id).await;
    assert_eq!(
        names(&envs),
        ["queued", "running", "progress", "succeeded"],
        "{engine:?}: the events of _jobs.{job_id}: {envs:?}"
    );
    let queued = data_json(&envs[0]);
    assert_eq!(queued["id"], json!(job_id), "{engine:?}: {queued}");
    assert_eq!(queued["state"], json!("queued"), "{engine:?}: {queued}");
    let running = data_json(&envs[1]);
    assert_eq!(running["state"], json!("running"), "{engine:?}: {running}");
    assert_eq!(attempts(&running), 1, "{engine:?}: {running}");
    assert_eq!(
        payload(&envs[2]),
        b"50%",
        "{engine:?}: progress body: {:?}",
        envs[2]
    );
    let succeeded = data_json(&envs[3]);
    assert_eq!(
        succeeded["state"],
        json!("succeeded"),
        "{engine:?}: {succeeded}"
    );
    assert_eq!(
        succeeded["result"],
        json!("done"),
        "{engine:?}: {succeeded}"
    );
    assert!(
        succeeded.get("lease").is_none_or(Value::is_null),
        "{engine:?}: a lease token is for the worker, not for every reader: {succeeded}"
    );

    assert_eq!(
        try_claim(&server, "work.q", "wait=0").await,
        None,
        "{engine:?}: nothing is left to claim"
    );
}

#[tokio::test]
async fn jobs_lifecycle_submit_claim_heartbeat_progress_complete_sqlite() {
    lifecycle(Engine::Sqlite).await;
}

#[tokio::test]
async fn jobs_lifecycle_submit_claim_heartbeat_progress_complete_memory() {
    lifecycle(Engine::Memory).await;
}

#[tokio::test]
async fn jobs_lifecycle_submit_claim_heartbeat_progress_complete_redis() {
    lifecycle(Engine::Redis).await;
}

#[tokio::test]
async fn jobs_binary_payload_and_result_are_base64() {
    let server = Server::start(&[]).await;
    let raw: &[u8] = b"\xff\x00\xfebin";
    let job = submit(&server, "bin", raw.to_vec()).await;
    assert_eq!(job["payload_base64"], json!(b64_encode(raw)), "{job}");
    let claimed = claim(&server, "bin", "60").await;
    assert_eq!(
        claimed["payload_base64"],
        json!(b64_encode(raw)),
        "{claimed}"
    );
    let resp = act_raw(
        &server,
        &id(&claimed),
        "complete",
        Some(&lease(&claimed)),
        b"\x00\x01\xff".to_vec(),
    )
    .await;
    let (code, _, done) = into_json(resp).await;
    assert_eq!(code, StatusCode::OK, "{done}");
    assert_eq!(done["state"], json!("succeeded"), "{done}");
    assert_eq!(
        done["result_base64"],
        json!(b64_encode(b"\x00\x01\xff")),
        "{done}"
    );
    assert!(done.get("result").is_none_or(Value::is_null), "{done}");
}

#[tokio::test]
async fn jobs_prefer_wait_answers_200_when_a_worker_finishes_in_time() {
    let server = Server::start(&[]).await;
    let worker = async {
        let claimed = claim(&server, "sync", "60").await;
        assert_eq!(claimed["payload"], json!("question"), "{claimed}");
        complete(&server, &claimed, "answer").await
    };
    let submitter = submit_raw(&server, "sync", "", "question", &[("Prefer", "wait=30")]);
    let (done, resp) = tokio::join!(worker, submitter);
    let (code, _, job) = into_json(resp).await;
    assert_eq!(
        code,
        StatusCode::OK,
        "Prefer: wait=30 and a worker that completed the job ({done}): {job}"
    );
    assert_job(&job, "sync", "succeeded");
    assert_eq!(job["id"], done["id"], "{job}");
    assert_eq!(job["result"], json!("answer"), "{job}");
}

#[tokio::test]
async fn jobs_prefer_wait_answers_200_for_a_dead_job() {
    let server = Server::start(&[]).await;
    let worker = async {
        let claimed = claim(&server, "sync", "60").await;
        act(&server, &claimed, "fail", "cannot").await
    };
    let submitter = submit_raw(
        &server,
        "sync",
        "?max_attempts=1",
        "question",
        &[("Prefer", "wait=30")],
    );
    let (failed, resp) = tokio::join!(worker, submitter);
    assert_eq!(failed["state"], json!("dead"), "max_attempts=1: {failed}");
    let (code, _, job) = into_json(resp).await;
    assert_eq!(
        code,
        StatusCode::OK,
        "a job that died within the wait: {job}"
    );
    assert_job(&job, "sync", "dead");
    assert!(
        job["error"].as_str().is_some_and(|e| e.contains("cannot")),
        "{job}"
    );
}

#[tokio::test]
async fn jobs_prefer_wait_answers_202_when_no_worker_comes() {
    let server = Server::start(&[]).await;
    let resp = submit_raw(&server, "lonely", "", "q", &[("Prefer", "wait=1")]).await;
    let job = accepted(resp, "lonely", "Prefer: wait=1 without a worker").await;
    assert_eq!(
        status(&server, &id(&job), "").await["state"],
        json!("queued")
    );
}

#[tokio::test]
async fn jobs_status_wait_returns_when_the_state_changes() {
    let server = Server::start(&[]).await;
    let job = submit(&server, "watched", "p").await;
    let job_id = id(&job);

    // Without a change, a status long poll answers the unchanged job at its timeout.
    let same = status(&server, &job_id, "?wait=1").await;
    assert_eq!(same["state"], json!("queued"), "{same}");

    let watcher = status(&server, &job_id, "?wait=30");
    let worker = async {
        let claimed = claim(&server, "watched", "60").await;
        complete(&server, &claimed, "r").await
    };
    let (seen, _) = tokio::join!(watcher, worker);
    assert!(
        matches!(seen["state"].as_str(), Some("running" | "succeeded")),
        "a status long poll answers a changed job: {seen}"
    );
}

#[tokio::test]
async fn jobs_idempotent_submit_replays_the_first_job() {
    let server = Server::start(&[]).await;
    let key = [("Idempotency-Key", "order-7")];
    let first = accepted(
        submit_raw(&server, "idem", "", "same", &key).await,
        "idem",
        "first submit with a key",
    )
    .await;
    let resp = submit_raw(&server, "idem", "", "same", &key).await;
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().expect("header is ASCII").to_string());
    let again = accepted(resp, "idem", "the same key and payload again").await;
    assert_eq!(
        again["id"], first["id"],
        "a replay answers the first job: {again}"
    );
    assert_eq!(
        replayed.as_deref(),
        Some("true"),
        "Idempotent-Replayed header"
    );

    let other = submit_raw(&server, "idem", "", "different", &key).await;
    expect_problem(other, 409, "the same key with another payload").await;

    // Keys are scoped to the queue.
    let elsewhere = submit_raw(&server, "idem2", "", "same", &key).await;
    let elsewhere = accepted(elsewhere, "idem2", "the same key on another queue").await;
    assert_ne!(elsewhere["id"], first["id"], "{elsewhere}");

    let claimed = claim(&server, "idem", "60").await;
    assert_eq!(claimed["id"], first["id"], "{claimed}");
    assert_eq!(
        try_claim(&server, "idem", "wait=0").await,
        None,
        "one job was stored for the key"
    );
}

#[tokio::test]
async fn jobs_events_over_sse() {
    let server = Server::start(&[]).await;
    let job = submit(&server, "followed", "payload").await;
    let job_id = id(&job);
    let path = format!("/v1/topics/_jobs.{job_id}/sse?since=all");
    let mut sse = Sse::open(&server, &path, &[]).await;
    let raw_path = format!("/v1/topics/_jobs.{job_id}/sse?since=all&raw=1");
    let mut raw = Sse::open(&server, &raw_path, &[]).await;

    let first = sse.events(1).await;
    assert_eq!(first[0].event.as_deref(), Some("queued"), "{first:?}");
    let env = first[0].json();
    assert_eq!(env["topic"], json!(format!("_jobs.{job_id}")), "{env}");
    assert_eq!(env["event"], json!("queued"), "{env}");
    let queued = data_json(&env);
    assert_job(&queued, "followed", "queued");
    assert_eq!(queued["id"], json!(job_id), "{queued}");

    let claimed = claim(&server, "followed", "60").await;
    complete(&server, &claimed, "finished").await;

    let rest = sse.events(2).await;
    let names: Vec<_> = rest.iter().map(|f| f.event.clone()).collect();
    assert_eq!(
        names,
        [Some("running".to_string()), Some("succeeded".to_string())],
        "{rest:?}"
    );
    let running = data_json(&rest[0].json());
    assert_job(&running, "followed", "running");
    assert_eq!(attempts(&running), 1, "{running}");
    let succeeded = data_json(&rest[1].json());
    assert_job(&succeeded, "followed", "succeeded");
    assert_eq!(succeeded["result"], json!("finished"), "{succeeded}");

    // raw=1: the job JSON itself is the data.
    let frames = raw.events(3).await;
    let states: Vec<Value> = frames.iter().map(|f| f.json()["state"].clone()).collect();
    assert_eq!(
        states,
        [json!("queued"), json!("running"), json!("succeeded")],
        "{frames:?}"
    );
    assert_eq!(frames[2].event.as_deref(), Some("succeeded"), "{frames:?}");
}

#[tokio::test]
async fn jobs_stale_leases_are_409() {
    let server = Server::start(&[]).await;

    // An older claim's token, after the job was claimed again.
    let job = submit(&server, "stale", "p").await;
    let old = claim(&server, "stale", "0.5").await;
    let current = claim(&server, "stale", "60").await;
    assert_eq!(current["id"], job["id"], "{current}");
    assert_eq!(attempts(&current), 2, "{current}");
    assert_ne!(lease(&current), lease(&old), "each claim has its own token");
    for action in ["heartbeat", "progress", "complete", "fail"] {
        let resp = act_raw(&server, &id(&old), action, Some(&lease(&old)), "x").await;
        expect_problem(resp, 409, &format!("{action} with an older claim's token")).await;
    }
    let still = status(&server, &id(&job), "").await;
    assert_eq!(
        still["state"],
        json!("running"),
        "stale calls change nothing: {still}"
    );
    assert_eq!(attempts(&still), 2, "{still}");
    act(&server, &current, "heartbeat", "").await;

    // A lease that ran out, with nobody holding the job since.
    let lapsed_job = submit(&server, "lapsed", "p").await;
    let lapsed = claim(&server, "lapsed", "0.5").await;
    status_until(
        &server,
        &id(&lapsed_job),
        "a lapsed lease to requeue the job",
        |j| j["state"] == "queued",
    )
    .await;
    for action in ["heartbeat", "progress", "complete", "fail"] {
        let resp = act_raw(&server, &id(&lapsed), action, Some(&lease(&lapsed)), "x").await;
        expect_problem(resp, 409, &format!("{action} with a lease that ran out")).await;
    }
    let back = status(&server, &id(&lapsed_job), "").await;
    assert_eq!(back["state"], json!("queued"), "{back}");
    assert!(back.get("result").is_none_or(Value::is_null), "{back}");
}

#[tokio::test]
async fn jobs_unknown_ids_are_404() {
    let server = Server::start(&[]).await;
    let job = submit(&server, "q", "p").await;
    let missing = unknown_id(&id(&job));
    for path in [
        format!("/v1/jobs/{missing}"),
        format!("/v1/jobs/{missing}?wait=1"),
    ] {
        let resp = server.get(&path, &[]).await;
        expect_problem(resp, 404, &format!("GET {path}")).await;
    }
    for action in ["heartbeat", "progress", "complete", "fail"] {
        let resp = act_raw(&server, &missing, action, Some("some-token"), "x").await;
        expect_problem(resp, 404, &format!("{action} on an unknown job {missing}")).await;
    }
}

#[tokio::test]
async fn jobs_bad_input_is_400_or_413_and_changes_nothing() {
    let server = Server::start(&["--max-message-bytes", "1024"]).await;
    let post = |path: String, body: Vec<u8>| {
        let req = server.client().post(server.url(&path)).body(body);
        async move { req.send().await.expect("send POST") }
    };

    for (path, what) in [
        ("/v1/queues/a..b/jobs", "a bad queue name"),
        ("/v1/queues/a$b/jobs", "a bad queue name"),
        ("/v1/queues/q/jobs?max_attempts=0", "max_attempts=0"),
        (
            "/v1/queues/q/jobs?max_attempts=abc",
            "a non-number max_attempts",
        ),
        (
            "/v1/queues/q/jobs?max_attempts=-1",
            "a negative max_attempts",
        ),
        (
            "/v1/queues/a..b/claim?wait=0",
            "a claim on a bad queue name",
        ),
        ("/v1/queues/q/claim?lease=abc", "a non-number lease"),
        ("/v1/queues/q/claim?wait=abc", "a non-number wait"),
    ] {
        let resp = post(path.to_string(), b"p".to_vec()).await;
        expect_problem(resp, 400, &format!("POST {path} ({what})")).await;
    }
    let resp = post("/v1/queues/q/jobs".to_string(), vec![b'x'; 2048]).await;
    expect_problem(resp, 413, "a payload over --max-message-bytes").await;
    assert_eq!(
        try_claim(&server, "q", "wait=0").await,
        None,
        "bad submits stored no job"
    );

    let job = submit(&server, "q", "p").await;
    let claimed = claim(&server, "q", "60").await;
    for action in ["heartbeat", "progress", "complete", "fail"] {
        let resp = act_raw(&server, &id(&job), action, None, "x").await;
        expect_problem(resp, 400, &format!("{action} without a lease")).await;
    }
    let resp = server
        .get(&format!("/v1/jobs/{}?wait=abc", id(&job)), &[])
        .await;
    expect_problem(resp, 400, "a status with a non-number wait").await;
    let still = status(&server, &id(&job), "").await;
    assert_eq!(still["state"], json!("running"), "{still}");
    assert_eq!(attempts(&still), 1, "{still}");
    complete(&server, &claimed, "ok").await;
}
