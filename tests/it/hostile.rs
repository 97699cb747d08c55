//! Hostile input (docs/API.md: invalid input never changes stored state; the limits): hundreds of
//! malformed requests over raw TCP, over reqwest and over WebSockets. Afterwards the hub is
//! healthy, serves a normal publish and read, and every topic holds exactly what was published
//! on purpose.
//!
//! Every answer is judged the same way: never a 5xx; a 4xx with a body is
//! `application/problem+json` with a matching `status`; hostile input that must be refused
//! gets a 4xx or a closed connection. hyper refuses some requests itself (an unparsable head,
//! a broken body): it may answer a bodiless 400/413/414/431 or just close the connection.
//! Which requests ended how is printed at the end (`--nocapture`).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::kit::clients::Ws;
use crate::kit::{DEADLINE, Server, eventually};

/// How long an exchange may take to answer or close before it counts as hung. Incomplete
/// heads are cut by the server's `--header-timeout 2s` well before.
const HANG: Duration = Duration::from_secs(20);
/// After a complete answer, how long to wait for further (pipelined) answers.
const MORE: Duration = Duration::from_millis(300);
/// Exchanges run at once.
const PARALLEL: usize = 32;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    /// Must be refused: a 4xx or a closed connection.
    Reject,
    /// May be served or refused, but never a 5xx.
    Any,
}

/// A hostile request as raw bytes.
struct RawCase {
    name: String,
    bytes: Vec<u8>,
    /// Shut down the write side after sending (for bodies that never complete).
    half_close: bool,
    expect: Expect,
}

fn raw(name: impl Into<String>, bytes: impl Into<Vec<u8>>, expect: Expect) -> RawCase {
    RawCase {
        name: name.into(),
        bytes: bytes.into(),
        half_close: false,
        expect,
    }
}

fn raw_half(name: impl Into<String>, bytes: impl Into<Vec<u8>>, expect: Expect) -> RawCase {
    RawCase {
        half_close: true,
        ..raw(name, bytes, expect)
    }
}

/// `METHOD target HTTP/1.1` with a Host, `Connection: close`, `headers` (raw bytes) and a
/// `Content-Length` body when `body` is not empty.
fn request(method: &[u8], target: &[u8], headers: &[&[u8]], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: plexus\r\nConnection: close\r\n");
    for h in headers {
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A request with a hand-written head tail (`rest` follows the Host line) and body bytes.
fn request_with(method: &str, target: &str, rest: &str, body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("{method} {target} HTTP/1.1\r\nHost: plexus\r\nConnection: close\r\n{rest}\r\n")
            .into_bytes();
    out.extend_from_slice(body);
    out
}

/// One parsed answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// How one exchange ended.
#[derive(Debug)]
struct Outcome {
    answers: Vec<Answer>,
    /// Bytes after the last complete answer (a partial or unparsable one).
    leftover: Vec<u8>,
    /// Neither an answer nor a close within `HANG`.
    hung: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one response at the start of `buf`: the answer and its length, or `None` if it is
/// not complete. A stream (SSE, NDJSON) or a `101` counts as complete at its head.
fn parse_answer(buf: &[u8], eof: bool) -> Option<(Answer, usize)> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = BTreeMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let content_type = headers.get("content-type").cloned().unwrap_or_default();
    let answer = |body: Vec<u8>| Answer {
        status,
        content_type: content_type.clone(),
        body,
    };
    let streaming = content_type.starts_with("text/event-stream")
        || content_type.starts_with("application/x-ndjson");
    if (100..200).contains(&status)
        || (streaming && status == 200)
        || status == 204
        || status == 304
    {
        return Some((answer(Vec::new()), head_end));
    }
    if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().ok()?;
        let end = head_end + len;
        return (buf.len() >= end).then(|| (answer(buf[head_end..end].to_vec()), end));
    }
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        let mut at = head_end;
        let mut body = Vec::new();
        loop {
            let line_end = at + find(&buf[at..], b"\r\n")?;
            let size_text = String::from_utf8_lossy(&buf[at..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                let end = at + find(&buf[at..], b"\r\n")? + 2;
                return Some((answer(body), end));
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    }
    // Delimited by the close.
    eof.then(|| (answer(buf[head_end..].to_vec()), buf.len()))
}

/// Sends `case` on a new connection and reads what comes back.
async fn exchange(server: &Server, case: &RawCase) -> Outcome {
    let mut stream = TcpStream::connect(server.addr())
        .await
        .expect("connect to the server");
    // The server may close before all is written (a huge head): that is an outcome too.
    let _ = stream.write_all(&case.bytes).await;
    if case.half_close {
        let _ = stream.shutdown().await;
    }
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut eof = false;
    let mut last_answer_at = None;
    loop {
        let complete = count_answers(&buf, false) > 0;
        if complete && last_answer_at.is_none() {
            last_answer_at = Some(Instant::now());
        }
        let wait = match last_answer_at {
            Some(at) => MORE.saturating_sub(at.elapsed()),
            None => HANG.saturating_sub(started.elapsed()),
        };
        match timeout(wait, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                eof = true;
                break;
            }
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                last_answer_at = None;
            }
            Err(_) => break,
        }
    }
    let mut answers = Vec::new();
    let mut at = 0;
    while let Some((answer, len)) = parse_answer(&buf[at..], eof) {
        let stop = answer.status == 101
            || (answer.status == 200 && answer.content_type.contains("stream"))
            || answer.content_type.starts_with("application/x-ndjson");
        answers.push(answer);
        at += len;
        if stop || len == 0 {
            at = buf.len();
            break;
        }
    }
    Outcome {
        hung: !eof && answers.is_empty(),
        leftover: buf[at..].to_vec(),
        answers,
    }
}

fn count_answers(buf: &[u8], eof: bool) -> usize {
    let mut n = 0;
    let mut at = 0;
    while let Some((answer, len)) = parse_answer(&buf[at..], eof) {
        n += 1;
        at += len;
        if answer.status == 101 || answer.content_type.contains("stream") || len == 0 {
            break;
        }
    }
    n
}

/// The rules every answer must keep; the violations found.
fn judge(name: &str, expect: Expect, answer: &Answer, first: bool) -> Vec<String> {
    let mut bad = Vec::new();
    let body = String::from_utf8_lossy(&answer.body);
    let shown: String = body.chars().take(300).collect();
    if answer.status >= 500 {
        bad.push(format!("{name}: answered {} {shown:?}", answer.status));
    }
    if (400..500).contains(&answer.status) && !answer.body.is_empty() {
        if !answer.content_type.starts_with("application/problem+json") {
            bad.push(format!(
                "{name}: {} with Content-Type {:?}, not application/problem+json: {shown:?}",
                answer.status, answer.content_type
            ));
        } else {
            match serde_json::from_slice::<Value>(&answer.body) {
                Ok(v) if v["status"] == json!(answer.status) && v["type"].is_string() => {}
                Ok(v) => bad.push(format!(
                    "{name}: problem body does not match its status {}: {v}",
                    answer.status
                )),
                Err(e) => bad.push(format!("{name}: problem body is not JSON ({e}): {shown:?}")),
            }
        }
    }
    if first && expect == Expect::Reject && answer.status < 400 {
        bad.push(format!(
            "{name}: hostile input was accepted with {}: {shown:?}",
            answer.status
        ));
    }
    for secret in ["root:x:", "SQLite format 3"] {
        if body.contains(secret) {
            bad.push(format!("{name}: the answer leaks {secret:?}"));
        }
    }
    bad
}

/// What the exchanges did, for the report at the end.
#[derive(Default)]
struct Tally {
    violations: Vec<String>,
    by_status: BTreeMap<String, usize>,
    closed_without_answer: Vec<String>,
    total: usize,
}

impl Tally {
    fn record_raw(&mut self, case: &RawCase, outcome: &Outcome) {
        self.total += 1;
        if outcome.hung {
            self.violations.push(format!(
                "{}: neither an answer nor a close within {HANG:?}",
                case.name
            ));
            return;
        }
        if outcome.answers.is_empty() {
            self.closed_without_answer.push(case.name.clone());
            *self.by_status.entry("closed".into()).or_default() += 1;
            // After an HTTP/2 preface the server answers in HTTP/2 frames (h2c).
            if !outcome.leftover.is_empty() && !case.bytes.starts_with(b"PRI * HTTP/2.0") {
                let text = String::from_utf8_lossy(&outcome.leftover);
                if !text.starts_with("HTTP/1.1 4") && !text.starts_with("HTTP/1.0 4") {
                    self.violations.push(format!(
                        "{}: unparsable answer {:?}",
                        case.name,
                        text.chars().take(200).collect::<String>()
                    ));
                }
            }
        }
        let finals = outcome.answers.iter().filter(|a| a.status != 100);
        for (i, answer) in finals.enumerate() {
            *self.by_status.entry(answer.status.to_string()).or_default() += 1;
            self.violations
                .extend(judge(&case.name, case.expect, answer, i == 0));
        }
    }

    fn record(&mut self, name: &str, expect: Expect, answer: &Answer) {
        self.total += 1;
        *self.by_status.entry(answer.status.to_string()).or_default() += 1;
        self.violations.extend(judge(name, expect, answer, true));
    }
}

/// Runs the raw cases, `PARALLEL` at a time.
async fn run_raw(server: &Server, cases: Vec<RawCase>, tally: &mut Tally) {
    let outcomes: Vec<(RawCase, Outcome)> = stream::iter(cases)
        .map(|case| async move {
            let outcome = exchange(server, &case).await;
            (case, outcome)
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    for (case, outcome) in &outcomes {
        tally.record_raw(case, outcome);
    }
}

/// A deterministic byte generator (xorshift), so a failure can be replayed.
struct Noise(u64);

impl Noise {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 24) as u8
            })
            .collect()
    }
}

const PATHS: [&str; 8] = [
    "/v1/topics/h.a/messages",
    "/v1/publish",
    "/v1/topics",
    "/v1/topics/h.a",
    "/healthz",
    "/v1/ws",
    "/v1/queues/h.q/jobs",
    "/v1/jobs/x/complete",
];

fn method_cases() -> Vec<RawCase> {
    let long_method = "X".repeat(10_000);
    let methods: Vec<&[u8]> = vec![
        b"BREW",
        b"GET\x00",
        b"G\x7fT",
        b"get",
        b"PUT",
        b"PATCH",
        b"TRACE",
        b"PROPFIND",
        b"M-SEARCH",
        b"GET(",
        b"\x16\x03\x01\x02\x00",
        b"\xc3\xa9GET",
        long_method.as_bytes(),
    ];
    let mut out = Vec::new();
    for m in &methods {
        for p in PATHS {
            let name = format!(
                "method {:?} on {p}",
                String::from_utf8_lossy(&m[..m.len().min(12)])
            );
            out.push(raw(
                name,
                request(m, p.as_bytes(), &[], b""),
                Expect::Reject,
            ));
        }
    }
    // A body with a bad method: never a publish.
    out.push(raw(
        "BREW with a body",
        request(b"BREW", b"/v1/topics/h.a/messages", &[], b"tea"),
        Expect::Reject,
    ));
    out.push(raw(
        "CONNECT in origin form",
        request(b"CONNECT", b"/v1/topics", &[], b""),
        Expect::Reject,
    ));
    out
}

fn garbage_cases() -> Vec<RawCase> {
    let mut out = vec![
        raw("request line with a 4th word", &b"GET /v1/topics HTTP/1.1 extra\r\nHost: p\r\n\r\n"[..], Expect::Reject),
        raw("a bare GET", &b"GET\r\n\r\n"[..], Expect::Reject),
        raw("HTTP/0.9 style", &b"GET /v1/topics\r\n\r\n"[..], Expect::Reject),
        raw("double spaces", &b"GET  /v1/topics  HTTP/1.1\r\nHost: p\r\n\r\n"[..], Expect::Any),
        raw("a tab in the request line", &b"GET\t/v1/topics\tHTTP/1.1\r\nHost: p\r\n\r\n"[..], Expect::Any),
        raw("header without a colon", &b"GET /v1/topics HTTP/1.1\r\nHost\r\n\r\n"[..], Expect::Reject),
        raw("header with an empty name", &b"GET /v1/topics HTTP/1.1\r\n: x\r\n\r\n"[..], Expect::Reject),
        raw("header name with a space", &b"GET /v1/topics HTTP/1.1\r\nBad Header: x\r\n\r\n"[..], Expect::Reject),
        raw("space before the colon", &b"GET /v1/topics HTTP/1.1\r\nHost : p\r\n\r\n"[..], Expect::Reject),
        raw("obs-fold", &b"GET /v1/topics HTTP/1.1\r\nHost: p\r\nX: a\r\n folded\r\n\r\n"[..], Expect::Any),
        raw("bare LF line ends", &b"GET /v1/topics HTTP/1.1\nHost: p\nConnection: close\n\n"[..], Expect::Any),
        raw("bare CR line ends", &b"GET /v1/topics HTTP/1.1\rHost: p\r\r"[..], Expect::Reject),
        raw("HTTP/9.9", &b"GET /v1/topics HTTP/9.9\r\nHost: p\r\n\r\n"[..], Expect::Reject),
        raw("HTTP/1.1x", &b"GET /v1/topics HTTP/1.1x\r\nHost: p\r\n\r\n"[..], Expect::Reject),
        raw("FTP/1.0", &b"GET /v1/topics FTP/1.0\r\nHost: p\r\n\r\n"[..], Expect::Reject),
        raw("HTTP/2.0 in a 1.1 request line", &b"GET /v1/topics HTTP/2.0\r\nHost: p\r\n\r\n"[..], Expect::Reject),
        raw("blank lines only", &b"\r\n\r\n\r\n\r\n"[..], Expect::Reject),
        raw("relative path", &b"GET ../../etc/passwd HTTP/1.1\r\nHost: p\r\n\r\n"[..], Expect::Reject),
        raw("asterisk form", &b"GET * HTTP/1.1\r\nHost: p\r\n\r\n"[..], Expect::Reject),
        raw("absolute form, other host", &b"GET http://evil.example/v1/topics HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"[..], Expect::Any),
        raw("authority form on GET", &b"GET evil.example:80 HTTP/1.1\r\nHost: p\r\n\r\n"[..], Expect::Reject),
        raw("two Host headers", &b"GET /v1/topics HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"[..], Expect::Any),
        raw("HTTP/1.0 without Host", &b"GET /v1/topics HTTP/1.0\r\n\r\n"[..], Expect::Any),
        raw("h2 preface then garbage", &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..], Expect::Reject),
        raw("TLS client hello on a clear port", &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"[..], Expect::Reject),
        raw("a lone CRLF then a valid request", &b"\r\nGET /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"[..], Expect::Any),
        raw("Expect: 100-continue never followed", &b"POST /v1/topics/h.a/messages HTTP/1.1\r\nHost: p\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"[..], Expect::Reject),
        raw("Upgrade: h2c on a batch", &b"POST /v1/publish HTTP/1.1\r\nHost: p\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: !!!\r\nContent-Length: 0\r\n\r\n"[..], Expect::Reject),
    ];
    // `Expect: 100-continue` without a body ever coming: the client gives up by closing.
    if let Some(last) = out.iter_mut().find(|c| c.name.starts_with("Expect")) {
        last.half_close = true;
    }
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    for (i, n) in [16, 64, 256, 1024, 4096, 16_384].iter().enumerate() {
        for j in 0..4 {
            out.push(raw(
                format!("random bytes #{i}.{j} ({n} bytes)"),
                noise.bytes(*n),
                Expect::Reject,
            ));
        }
    }
    for j in 0..8 {
        let mut bytes = b"GET /v1/topics HTTP/1.1\r\nHost: p\r\n".to_vec();
        bytes.extend(noise.bytes(200));
        bytes.extend_from_slice(b"\r\n\r\n");
        out.push(raw(
            format!("GET with random header bytes #{j}"),
            bytes,
            Expect::Any,
        ));
    }
    out
}

fn huge_cases() -> Vec<RawCase> {
    let kb100 = "a".repeat(100 * 1024);
    let mb1 = "b".repeat(1024 * 1024);
    let many: String = (0..2000)
        .map(|i| format!("X-H{i}: {}\r\n", "v".repeat(50)))
        .collect();
    vec![
        raw(
            "100 KB header value",
            request_with("GET", "/v1/topics", &format!("X-Big: {kb100}\r\n"), b""),
            Expect::Any,
        ),
        raw(
            "1 MB header value",
            request_with("GET", "/v1/topics", &format!("X-Big: {mb1}\r\n"), b""),
            Expect::Reject,
        ),
        raw(
            "100 KB header name",
            request_with("GET", "/v1/topics", &format!("{kb100}: x\r\n"), b""),
            Expect::Any,
        ),
        raw(
            "2,000 headers",
            request_with("GET", "/v1/topics", &many, b""),
            Expect::Reject,
        ),
        raw(
            "100 KB cookie on a bad batch",
            request_with(
                "POST",
                "/v1/publish",
                &format!("Cookie: {kb100}\r\nContent-Length: 1\r\n"),
                b"x",
            ),
            Expect::Reject,
        ),
        raw(
            "100 KB URI",
            request(
                b"GET",
                format!("/v1/topics/h.a/messages?x={kb100}").as_bytes(),
                &[],
                b"",
            ),
            Expect::Any,
        ),
        raw(
            "1 MB URI",
            request(b"GET", format!("/v1/topics?x={mb1}").as_bytes(), &[], b""),
            Expect::Reject,
        ),
        raw(
            "100 KB Authorization",
            request_with(
                "GET",
                "/v1/topics",
                &format!("Authorization: Bearer {kb100}\r\n"),
                b"",
            ),
            Expect::Any,
        ),
    ]
}

fn utf8_cases() -> Vec<RawCase> {
    let reject = Expect::Reject;
    vec![
        raw(
            "raw 0xFF in the topic",
            request(b"GET", b"/v1/topics/\xff\xfe/messages", &[], b""),
            reject,
        ),
        raw(
            "raw 0xFF in a publish path",
            request(b"POST", b"/v1/topics/h.\xff/messages", &[], b"x"),
            reject,
        ),
        raw(
            "raw 0xFF in the query",
            request(b"GET", b"/v1/topics/h.a/messages?since=\xff", &[], b""),
            reject,
        ),
        raw(
            "%FF%FE topic",
            request(b"GET", b"/v1/topics/%FF%FE/messages", &[], b""),
            reject,
        ),
        raw(
            "%FF topic on publish",
            request(b"POST", b"/v1/topics/h.%FF/messages", &[], b"x"),
            reject,
        ),
        raw(
            "%C3%28 since",
            request(b"GET", b"/v1/topics/h.a/messages?since=%C3%28", &[], b""),
            reject,
        ),
        raw(
            "%FF limit",
            request(b"GET", b"/v1/topics/h.a/messages?limit=%FF", &[], b""),
            reject,
        ),
        raw(
            "%80 wait",
            request(b"GET", b"/v1/topics/h.a/messages?wait=%80", &[], b""),
            reject,
        ),
        raw(
            "%FF query key",
            request(b"GET", b"/v1/topics/h.a/messages?%FF=1", &[], b""),
            Expect::Any,
        ),
        raw(
            "%FF in a WS topic",
            request(b"GET", b"/v1/ws?topic=%FF", &[], b""),
            reject,
        ),
        raw(
            "%FF queue",
            request(b"POST", b"/v1/queues/%FF/jobs", &[], b"x"),
            reject,
        ),
        raw(
            "%FF job id",
            request(b"GET", b"/v1/jobs/%FF", &[], b""),
            reject,
        ),
        raw(
            "%FF lease",
            request(b"POST", b"/v1/jobs/x/complete?lease=%FF", &[], b"x"),
            reject,
        ),
        raw(
            "%FF max_attempts",
            request(b"POST", b"/v1/queues/h.q/jobs?max_attempts=%FF", &[], b"x"),
            reject,
        ),
        raw(
            "0xFF Plexus-Event",
            request(
                b"POST",
                b"/v1/topics/h.a/messages",
                &[b"Plexus-Event: \xff\xfe"],
                b"x",
            ),
            reject,
        ),
        raw(
            "0xFF Idempotency-Key",
            request(
                b"POST",
                b"/v1/topics/h.a/messages",
                &[b"Idempotency-Key: \xff\xfe"],
                b"x",
            ),
            reject,
        ),
        raw(
            "0xFF Idempotency-Key on a job",
            request(
                b"POST",
                b"/v1/queues/h.q/jobs",
                &[b"Idempotency-Key: \xff"],
                b"x",
            ),
            reject,
        ),
        raw(
            "0xFF Last-Event-ID",
            request(
                b"GET",
                b"/v1/topics/h.a/sse",
                &[b"Last-Event-ID: \xff"],
                b"",
            ),
            reject,
        ),
        raw(
            "0xFF Authorization",
            request(
                b"GET",
                b"/v1/topics",
                &[b"Authorization: Bearer \xff\xfe"],
                b"",
            ),
            Expect::Any,
        ),
        raw(
            "0xFF Prefer",
            request(
                b"GET",
                b"/v1/topics/h.a/messages",
                &[b"Prefer: wait=\xff"],
                b"",
            ),
            Expect::Any,
        ),
        raw(
            "0xFF Content-Type on a bad batch",
            request(b"POST", b"/v1/publish", &[b"Content-Type: \xff"], b"[{"),
            reject,
        ),
        raw(
            "0xFF X-Forwarded-For",
            request(b"GET", b"/v1/topics", &[b"X-Forwarded-For: \xff"], b""),
            Expect::Any,
        ),
        raw(
            "invalid UTF-8 JSON batch",
            request(
                b"POST",
                b"/v1/publish",
                &[b"Content-Type: application/json"],
                b"[{\"topic\":\"h.a\",\"data\":\"\xff\xfe\"}]",
            ),
            reject,
        ),
        raw(
            "invalid UTF-8 NDJSON batch",
            request(
                b"POST",
                b"/v1/publish",
                &[b"Content-Type: application/x-ndjson"],
                b"{\"topic\":\"h.a\",\"data\":\"ok\"}\n{\"topic\":\"h.a\",\"data\":\"\xc3\x28\"}\n",
            ),
            reject,
        ),
        raw(
            "invalid UTF-8 topic in a batch",
            request(
                b"POST",
                b"/v1/publish",
                &[b"Content-Type: application/json"],
                b"[{\"topic\":\"h.\xff\",\"data\":\"x\"}]",
            ),
            reject,
        ),
        raw(
            "overlong UTF-8 in a batch",
            request(
                b"POST",
                b"/v1/publish",
                &[b"Content-Type: application/json"],
                b"[{\"topic\":\"h.a\",\"data\":\"\xc0\xaf\"}]",
            ),
            reject,
        ),
        raw(
            "UTF-16 BOM batch",
            request(
                b"POST",
                b"/v1/publish",
                &[b"Content-Type: application/json"],
                b"\xff\xfe[\x00]\x00",
            ),
            reject,
        ),
    ]
}

fn nul_cases() -> Vec<RawCase> {
    let reject = Expect::Reject;
    vec![
        raw(
            "NUL in the path",
            request(b"GET", b"/v1/topics/h\x00a/messages", &[], b""),
            reject,
        ),
        raw(
            "NUL in a header value",
            request(b"GET", b"/v1/topics", &[b"X-Nul: a\x00b"], b""),
            reject,
        ),
        raw(
            "NUL in a header name",
            request(b"GET", b"/v1/topics", &[b"X-\x00: a"], b""),
            reject,
        ),
        raw(
            "NUL in Plexus-Event",
            request(
                b"POST",
                b"/v1/topics/h.a/messages",
                &[b"Plexus-Event: a\x00"],
                b"x",
            ),
            reject,
        ),
        raw(
            "%00 in the topic",
            request(b"GET", b"/v1/topics/h.a%00/messages", &[], b""),
            reject,
        ),
        raw(
            "%00 in a publish topic",
            request(b"POST", b"/v1/topics/h.a%00/messages", &[], b"x"),
            reject,
        ),
        raw(
            "%00 in since",
            request(b"GET", b"/v1/topics/h.a/messages?since=1%00", &[], b""),
            reject,
        ),
        raw(
            "%00 in wait",
            request(b"GET", b"/v1/topics/h.a/messages?wait=%00", &[], b""),
            reject,
        ),
        raw("1,000 NUL bytes", vec![0u8; 1000], reject),
        raw(
            "NUL before the method",
            request(b"\x00GET", b"/v1/topics", &[], b""),
            reject,
        ),
        raw(
            "NUL bytes as a batch",
            request(
                b"POST",
                b"/v1/publish",
                &[b"Content-Type: application/json"],
                b"[\x00\x00]",
            ),
            reject,
        ),
        raw(
            "\\u0000 topic in a batch",
            request(
                b"POST",
                b"/v1/publish",
                &[b"Content-Type: application/json"],
                br#"[{"topic":"h.a\u0000","data":"x"}]"#,
            ),
            reject,
        ),
        raw(
            "\\u0000 event in a batch",
            request(
                b"POST",
                b"/v1/publish",
                &[b"Content-Type: application/json"],
                br#"[{"topic":"h.a","data":"x","event":"e\u0000"}]"#,
            ),
            reject,
        ),
    ]
}

/// Wrong `Content-Length` and broken chunked bodies. Nothing here may store a message.
fn framing_cases() -> Vec<RawCase> {
    let reject = Expect::Reject;
    let publish = "/v1/topics/h.a/messages";
    let batch = "/v1/publish";
    let json_ct = "Content-Type: application/json\r\n";
    let good = br#"[{"topic":"h.a","data":"smuggled"}]"#;
    let mut out = vec![
        raw_half(
            "Content-Length 100, 10 bytes sent",
            request_with("POST", publish, "Content-Length: 100\r\n", b"0123456789"),
            reject,
        ),
        raw_half(
            "Content-Length 100, nothing sent",
            request_with("POST", publish, "Content-Length: 100\r\n", b""),
            reject,
        ),
        raw_half(
            "batch: Content-Length 1000, a full JSON body sent",
            request_with(
                "POST",
                batch,
                &format!("{json_ct}Content-Length: 1000\r\n"),
                good,
            ),
            reject,
        ),
        raw(
            "batch: Content-Length cuts the JSON",
            request_with(
                "POST",
                batch,
                &format!("{json_ct}Content-Length: 10\r\n"),
                good,
            ),
            reject,
        ),
        raw(
            "Content-Length -1",
            request_with("POST", publish, "Content-Length: -1\r\n", b"x"),
            reject,
        ),
        raw(
            "Content-Length abc",
            request_with("POST", publish, "Content-Length: abc\r\n", b"x"),
            reject,
        ),
        raw(
            "Content-Length 1e3",
            request_with("POST", publish, "Content-Length: 1e3\r\n", b"x"),
            reject,
        ),
        raw(
            "Content-Length +1",
            request_with("POST", publish, "Content-Length: +1\r\n", b"x"),
            reject,
        ),
        raw(
            "Content-Length 0x1",
            request_with("POST", publish, "Content-Length: 0x1\r\n", b"x"),
            reject,
        ),
        raw(
            "Content-Length overflow",
            request_with(
                "POST",
                publish,
                "Content-Length: 99999999999999999999999\r\n",
                b"x",
            ),
            reject,
        ),
        raw(
            "two different Content-Lengths",
            request_with(
                "POST",
                publish,
                "Content-Length: 1\r\nContent-Length: 2\r\n",
                b"xy",
            ),
            reject,
        ),
        raw(
            "Content-Length list",
            request_with("POST", publish, "Content-Length: 1, 2\r\n", b"xy"),
            reject,
        ),
        raw_half(
            "Content-Length 1 TiB",
            request_with("POST", publish, "Content-Length: 1099511627776\r\n", b"x"),
            reject,
        ),
        raw_half(
            "Content-Length 1 TiB on a batch",
            request_with(
                "POST",
                batch,
                &format!("{json_ct}Content-Length: 1099511627776\r\n"),
                b"[",
            ),
            reject,
        ),
        raw_half(
            "Content-Length 1 TiB on a job",
            request_with(
                "POST",
                "/v1/queues/h.q/jobs",
                "Content-Length: 1099511627776\r\n",
                b"x",
            ),
            reject,
        ),
        raw(
            "Content-Length and chunked",
            request_with(
                "POST",
                batch,
                &format!("{json_ct}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            reject,
        ),
    ];
    // Broken chunked bodies, on the single publish (where a cut body must never be stored)
    // and on the batch.
    let chunked: Vec<(&str, &[u8], bool)> = vec![
        ("chunk size zz", b"zz\r\nhello\r\n0\r\n\r\n", false),
        ("chunk without its CRLF", b"5\r\nhelloXX0\r\n\r\n", false),
        ("chunk cut short", b"10\r\nhello", true),
        ("no last chunk", b"5\r\nhello\r\n", true),
        ("chunk size overflow", b"ffffffffffffffffffff\r\nx", true),
        ("negative chunk size", b"-5\r\nhello\r\n0\r\n\r\n", false),
        (
            "chunk size with spaces",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            false,
        ),
        ("LF-only chunk lines", b"5\nhello\n0\n\n", true),
        (
            "chunk longer than its size",
            b"2\r\nhello\r\n0\r\n\r\n",
            false,
        ),
        ("huge chunk size", b"7fffffffffffffff\r\nx", true),
        (
            "newline in a chunk extension",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            false,
        ),
    ];
    for (name, body, half) in chunked {
        for path in [publish, batch] {
            let case_name = format!("{name} on {path}");
            let bytes = request_with("POST", path, "Transfer-Encoding: chunked\r\n", body);
            out.push(if half {
                raw_half(case_name, bytes, reject)
            } else {
                raw(case_name, bytes, reject)
            });
        }
    }
    // Transfer-Encoding variants on the batch with a body that is not JSON: even if one is
    // taken as chunked, nothing is stored.
    for te in [
        "gzip, chunked",
        "chunked, gzip",
        "chunkedx",
        "chunked\r\nTransfer-Encoding: chunked",
        " chunked",
        "identity",
        "\x0bchunked",
    ] {
        out.push(raw(
            format!("Transfer-Encoding {te:?}"),
            request_with(
                "POST",
                batch,
                &format!("{json_ct}Transfer-Encoding: {te}\r\n"),
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            reject,
        ));
    }
    out
}

/// `..` and encoded variants: never a file, never a 5xx.
fn traversal_cases() -> Vec<RawCase> {
    let mut out = Vec::new();
    for (target, expect) in [
        ("/../../../../etc/passwd", Expect::Reject),
        ("/v1/topics/../healthz", Expect::Any),
        ("/v1/../healthz", Expect::Any),
        ("/v1/topics/h.a/../../../healthz", Expect::Any),
        ("/v1/topics/%2e%2e/messages", Expect::Reject),
        ("/v1/topics/%2E%2E/messages", Expect::Reject),
        ("/v1/topics/..%2f..%2fetc%2fpasswd/messages", Expect::Reject),
        (
            "/v1/topics/%2e%2e%2f%2e%2e%2fplexus.db/messages",
            Expect::Reject,
        ),
        ("/v1/topics/h.a%2f..%2f..%2fdata/messages", Expect::Reject),
        ("/%2e%2e/%2e%2e/etc/passwd", Expect::Reject),
        ("//etc/passwd", Expect::Reject),
        ("/v1/topics/%252e%252e/messages", Expect::Reject),
        ("/v1/topics/..\\..\\windows/messages", Expect::Reject),
        ("/v1/topics/....//....//etc/passwd", Expect::Reject),
        ("/v1/queues/../../etc/jobs", Expect::Reject),
        ("/v1/jobs/..%2f..%2fetc%2fpasswd", Expect::Reject),
        ("/v1/jobs/../../../../etc/passwd", Expect::Reject),
        ("/v1/topics/h.a/messages/..", Expect::Reject),
        ("/v1/topics/h.a/messages/", Expect::Any),
        ("/./v1/./topics", Expect::Any),
        ("/v1/topics/h.a/messages;jsessionid=1", Expect::Reject),
        ("/v1/topics/h.a/messages#frag", Expect::Any),
    ] {
        out.push(raw(
            format!("GET {target}"),
            request(b"GET", target.as_bytes(), &[], b""),
            expect,
        ));
        if target.contains('#') {
            continue;
        }
        out.push(raw(
            format!("POST {target}"),
            request(b"POST", target.as_bytes(), &[], b"x"),
            Expect::Reject,
        ));
    }
    out
}

/// A request built with reqwest: `method path` with `headers` and `body`.
struct HttpCase {
    name: String,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    expect: Expect,
}

fn http(
    method: Method,
    path: impl Into<String>,
    body: impl Into<Vec<u8>>,
    expect: Expect,
) -> HttpCase {
    let path = path.into();
    let body: Vec<u8> = body.into();
    let mut name = format!("{method} {}", path.chars().take(120).collect::<String>());
    if body.len() > 1024 {
        name = format!("{name} ({} bytes)", body.len());
    }
    HttpCase {
        name,
        method,
        path,
        headers: Vec::new(),
        body,
        expect,
    }
}

impl HttpCase {
    fn header(mut self, k: &'static str, v: impl Into<String>) -> HttpCase {
        let v = v.into();
        self.name = format!(
            "{} [{k}: {}]",
            self.name,
            v.chars().take(60).collect::<String>()
        );
        self.headers.push((k, v));
        self
    }
}

fn batch_bodies() -> Vec<(String, String)> {
    let deep = "[".repeat(100_000);
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"topic":"h.a","data":i.to_string()}))
        .collect();
    let good_then_bad = r#"[{"topic":"h.a","data":"x"},{"topic":"h.a"}]"#;
    let mut out: Vec<(String, String)> = [
        "",
        "[",
        "]",
        "{",
        "[{",
        r#"[{"topic":"h.a""#,
        r#"[{"topic":"h.a","data":"x""#,
        r#"[{"topic":"h.a","data":"x"}"#,
        r#"[{"topic":"h.a","data":"x"},"#,
        r#"[{"topic":"h.a","data":"x"}] trailing"#,
        "{}",
        "[]",
        "null",
        "true",
        "42",
        r#""a string""#,
        "[1,2,3]",
        "[null]",
        "[[]]",
        r#"[{"topic":"h.a","data":1}]"#,
        r#"[{"topic":"h.a","data":null}]"#,
        r#"[{"topic":"h.a","data":{"nested":true}}]"#,
        r#"[{"topic":"h.a","data":"x","data_base64":"eA=="}]"#,
        r#"[{"topic":"h.a"}]"#,
        r#"[{"data":"x"}]"#,
        r#"[{"topic":"","data":"x"}]"#,
        r#"[{"topic":"bad topic","data":"x"}]"#,
        r#"[{"topic":"h..a","data":"x"}]"#,
        r#"[{"topic":"_jobs.x","data":"x"}]"#,
        r#"[{"topic":"h.*","data":"x"}]"#,
        r#"[{"topic":"h.>","data":"x"}]"#,
        r#"[{"topic":42,"data":"x"}]"#,
        r#"[{"topic":["h.a"],"data":"x"}]"#,
        r#"[{"topic":"h.a","data_base64":"!!!"}]"#,
        r#"[{"topic":"h.a","data_base64":"eA"}]"#,
        r#"[{"topic":"h.a","data_base64":42}]"#,
        r#"[{"topic":"h.a","data":"x","event":"bad event"}]"#,
        r#"[{"topic":"h.a","data":"x","event":""}]"#,
        r#"[{"topic":"h.a","data":"x","event":42}]"#,
        r#"[{"topic":"h.a","data":"x","idempotency_key":42}]"#,
        r#"[{"topic":"h.a","data":"x","idempotency_key":{}}]"#,
        r#"[{"topic":"h.a","data":"x","unknown":1}, {"topic":"h.a"}]"#,
        r#"[{"topic":"h.a","data":"x"},{"topic":"h.b","data":"y","data_base64":"eQ=="}]"#,
        r#"[{"topic":"h.a","data":"\ud800"}]"#,
        r#"[{"topic":"h.a","data":"x",}]"#,
        r#"[{'topic':'h.a','data':'x'}]"#,
        r#"[{"topic":"h.a","data":"x"} {"topic":"h.a","data":"y"}]"#,
        r#"[{"topic":"h.a","data":1e999}]"#,
        r#"[{"topic":"h.a","topic":"h.b","data":"x"},{"topic":"h.a"}]"#,
        good_then_bad,
    ]
    .iter()
    .map(|b| ("application/json".to_string(), b.to_string()))
    .collect();
    out.push(("application/json".into(), deep.clone()));
    out.push(("application/json".into(), Value::Array(many).to_string()));
    out.push((
        "application/json".into(),
        format!(r#"[{{"topic":"{}","data":"x"}}]"#, "t".repeat(100_000)),
    ));
    // NDJSON: one bad line spoils the batch.
    for body in [
        "{\"topic\":\"h.a\",\"data\":\"x\"}\n{",
        "{\"topic\":\"h.a\",\"data\":\"x\"}\n[1]\n",
        "{\"topic\":\"h.a\",\"data\":\"x\"}\n{\"topic\":\"h.a\"}\n",
        "not json\n",
        "\n\n\n",
        "[{\"topic\":\"h.a\",\"data\":\"x\"}]\n{\"topic\":\"h.a\"}",
        "{\"topic\":\"h.a\",\"data\":\"x\"}\r\n{\"topic\":\"bad topic\",\"data\":\"y\"}\r\n",
    ] {
        out.push(("application/x-ndjson".into(), body.to_string()));
    }
    out.push(("application/x-ndjson".into(), deep));
    // Content types that do not fit the body.
    for ct in [
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin1",
        "",
    ] {
        out.push((ct.to_string(), "<a>not json</a>".to_string()));
    }
    out
}

fn http_cases() -> Vec<HttpCase> {
    let reject = Expect::Reject;
    let any = Expect::Any;
    let mut out = Vec::new();
    for (ct, body) in batch_bodies() {
        let mut case = http(Method::POST, "/v1/publish", body.clone(), reject);
        case.name = format!(
            "batch [{ct}] {:?}",
            body.chars().take(80).collect::<String>()
        );
        if !ct.is_empty() {
            case.headers.push(("content-type", ct));
        }
        out.push(case);
    }
    // Absurd since, limit and wait values on every read.
    let sinces = [
        "99999999999999999999999",
        "-1",
        "18446744073709551616",
        "18446744073709551615",
        "h.a:99999999999999999999",
        "h.a:18446744073709551615",
        "9999999999999d",
        "99999999999999999999s",
        "-5m",
        "0000-00-00T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "1970-01-01T00:00:00Z",
        "%FF",
        ",,,",
        ":",
        "h.a:",
        ":5",
        "all,now",
        "NaN",
        "1e10",
        "0x10",
        "1.5e3",
        "h.a:1:2",
    ];
    let long_since = "9".repeat(10_000);
    for since in sinces.iter().copied().chain([long_since.as_str()]) {
        for path in [
            "/v1/topics/h.a/messages",
            "/v1/topics/h.a,h.b/messages",
            "/v1/topics/h.a/sse",
            "/v1/topics/h.a/stream",
        ] {
            out.push(http(Method::GET, format!("{path}?since={since}"), "", any));
        }
        out.push(http(Method::GET, "/v1/topics/h.a/sse", "", any).header("last-event-id", since));
    }
    for limit in [
        "0",
        "-1",
        "1e9",
        "18446744073709551616",
        "4294967296",
        "",
        "NaN",
        "%20",
        "1,2",
        "0x10",
    ] {
        out.push(http(
            Method::GET,
            format!("/v1/topics/h.a/messages?limit={limit}"),
            "",
            any,
        ));
    }
    for wait in [
        "99999999999",
        "1e309",
        "NaN",
        "inf",
        "-0",
        "18446744073709551616",
        "-1",
        "1s",
        "0.5",
        "%20",
        "1,2",
    ] {
        out.push(http(
            Method::GET,
            format!("/v1/topics/h.a/messages?since=all&wait={wait}"),
            "",
            any,
        ));
        out.push(http(
            Method::GET,
            format!("/v1/jobs/unknown?wait={wait}"),
            "",
            any,
        ));
        out.push(http(
            Method::POST,
            format!("/v1/queues/h.q/claim?wait={wait}&lease=-1"),
            "",
            reject,
        ));
        out.push(
            http(Method::GET, "/v1/topics/h.a/messages?since=all", "", any)
                .header("prefer", format!("wait={wait}")),
        );
    }
    for prefer in [
        "garbage",
        "wait",
        "wait=",
        "wait=;",
        "respond-async, wait=99999999999999999999",
    ] {
        out.push(
            http(Method::GET, "/v1/topics/h.a/messages?since=all", "", any)
                .header("prefer", prefer),
        );
    }
    for lease in ["-1", "99999999999999999999", "abc", "1e9", ""] {
        out.push(http(
            Method::POST,
            format!("/v1/queues/h.q/claim?wait=0&lease={lease}"),
            "",
            any,
        ));
        out.push(http(
            Method::POST,
            format!("/v1/jobs/nope/heartbeat?lease={lease}"),
            "",
            reject,
        ));
        out.push(http(
            Method::POST,
            format!("/v1/jobs/nope/complete?lease={lease}"),
            "r",
            reject,
        ));
    }
    for max in ["-1", "abc", "1.5", "99999999999999999999999"] {
        out.push(http(
            Method::POST,
            format!("/v1/queues/h.q/jobs?max_attempts={max}"),
            "job",
            reject,
        ));
    }
    // Very long topic names and lists.
    let lists = [
        "t".repeat(201),
        "t".repeat(1000),
        "t".repeat(10_000),
        "t".repeat(60_000),
        vec!["a"; 1000].join("."),
        (0..65)
            .map(|i| format!("h.l{i}"))
            .collect::<Vec<_>>()
            .join(","),
        (0..5000)
            .map(|i| format!("h.l{i}"))
            .collect::<Vec<_>>()
            .join(","),
        vec!["h.a"; 100].join(","),
        "h.a,".to_string(),
        ",h.a".to_string(),
        "grüße".to_string(),
        "h.a%20".to_string(),
        "h.a%0D%0AX-Injected:%201".to_string(),
    ];
    for t in &lists {
        // The same topic 100 times is one topic to read, not 100: it may be served.
        let read = if t.starts_with("h.a,h.a") {
            any
        } else {
            reject
        };
        out.push(http(
            Method::GET,
            format!("/v1/topics/{t}/messages"),
            "",
            read,
        ));
        out.push(http(Method::GET, format!("/v1/topics/{t}/sse"), "", read));
        out.push(http(
            Method::GET,
            format!("/v1/topics/{t}/stream"),
            "",
            read,
        ));
        out.push(http(Method::GET, format!("/v1/topics/{t}"), "", reject));
        out.push(http(Method::DELETE, format!("/v1/topics/{t}"), "", reject));
        out.push(http(
            Method::POST,
            format!("/v1/topics/{t}/messages"),
            "x",
            reject,
        ));
        out.push(http(
            Method::POST,
            format!("/v1/queues/{t}/jobs"),
            "x",
            reject,
        ));
        out.push(http(
            Method::POST,
            format!("/v1/queues/{t}/claim?wait=0"),
            "",
            reject,
        ));
        out.push(http(Method::GET, format!("/v1/ws?topic={t}"), "", reject));
    }
    // Bad headers on a publish, each of which must refuse it.
    for (k, v) in [
        ("plexus-event", "has space".to_string()),
        ("plexus-event", "e".repeat(65)),
        ("plexus-event", "".to_string()),
        ("plexus-event", "a\tb".to_string()),
    ] {
        out.push(http(Method::POST, "/v1/topics/h.a/messages", "x", reject).header(k, v));
    }
    // Reserved topics and wrong methods.
    out.push(http(
        Method::POST,
        "/v1/topics/_jobs.x/messages",
        "x",
        reject,
    ));
    out.push(http(Method::POST, "/v1/topics/_x/messages", "x", reject));
    out.push(http(Method::PUT, "/v1/topics/h.a/messages", "x", reject));
    out.push(http(Method::PATCH, "/v1/topics/h.a", "x", reject));
    out.push(http(Method::DELETE, "/v1/topics/h.a/messages", "", reject));
    out.push(http(Method::DELETE, "/v1/publish", "", reject));
    out.push(http(Method::POST, "/v1/topics", "x", reject));
    out.push(http(Method::POST, "/healthz", "x", reject));
    out.push(http(Method::POST, "/metrics", "x", reject));
    // Payloads over the limit (`--max-message-bytes 65536`).
    out.push(http(
        Method::POST,
        "/v1/topics/h.a/messages",
        vec![b'x'; 65_537],
        reject,
    ));
    out.push(http(
        Method::POST,
        "/v1/queues/h.q/jobs",
        vec![b'x'; 65_537],
        reject,
    ));
    out.push(http(
        Method::POST,
        "/v1/topics/h.a/messages",
        vec![b'x'; 8 << 20],
        reject,
    ));
    let big = format!(r#"[{{"topic":"h.a","data":"{}"}}]"#, "x".repeat(65_537));
    out.push(
        http(Method::POST, "/v1/publish", big, reject).header("content-type", "application/json"),
    );
    out.push(
        http(Method::POST, "/v1/publish", vec![b'['; 8 << 20], reject)
            .header("content-type", "application/json"),
    );
    // WebSocket upgrades gone wrong (a plain request to /v1/ws is not an upgrade).
    for (k, v) in [
        ("upgrade", "websocket"),
        ("sec-websocket-version", "99"),
        ("sec-websocket-key", "not base64"),
    ] {
        out.push(
            http(Method::GET, "/v1/ws", "", reject)
                .header("connection", "Upgrade")
                .header(k, v),
        );
    }
    out.push(
        http(Method::GET, "/v1/ws", "", reject)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "12")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    );
    out.push(http(Method::POST, "/v1/ws", "x", reject));
    out
}

/// Sends one reqwest case; the answer (a stream's body is not read).
async fn send_http(server: &Server, case: &HttpCase) -> Option<Answer> {
    let mut req = server
        .client()
        .request(case.method.clone(), server.url(&case.path))
        .body(case.body.clone());
    for (k, v) in &case.headers {
        req = req.header(*k, v.as_str());
    }
    // A connection the server closes on purpose (hyper refusing the request) is an outcome.
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let streaming = content_type.contains("event-stream") || content_type.contains("ndjson");
    let body = if streaming && status == 200 {
        Vec::new()
    } else {
        timeout(HANG, resp.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_vec())
            .unwrap_or_default()
    };
    Some(Answer {
        status,
        content_type,
        body,
    })
}

async fn run_http(server: &Server, cases: Vec<HttpCase>, tally: &mut Tally) {
    let results: Vec<(HttpCase, Option<Answer>)> = stream::iter(cases)
        .map(|case| async move {
            let answer = timeout(HANG, send_http(server, &case)).await;
            (case, answer)
        })
        .buffer_unordered(PARALLEL)
        .map(|(case, answer)| match answer {
            Ok(a) => (case, a),
            Err(_) => (case, None),
        })
        .collect()
        .await;
    for (case, answer) in &results {
        match answer {
            Some(a) => tally.record(&case.name, case.expect, a),
            None => {
                tally.total += 1;
                *tally.by_status.entry("closed".into()).or_default() += 1;
                tally.closed_without_answer.push(case.name.clone());
            }
        }
    }
}

/// Bad frames on a real WebSocket: each gets `error` frames only (a 4xx status), and the
/// socket stays open, as the probe after each one shows.
async fn bad_ws_frames(server: &Server, tally: &mut Tally) {
    let deep = "[".repeat(100_000);
    let texts: Vec<String> = [
        "{",
        "[]",
        "null",
        "42",
        "\"a string\"",
        "",
        "{}",
        r#"{"op":"nope","id":1}"#,
        r#"{"op":42,"id":1}"#,
        r#"{"op":"subscribe","id":2}"#,
        r#"{"op":"subscribe","id":3,"topic":"bad topic"}"#,
        r#"{"op":"subscribe","id":4,"topic":"h.a","since":"garbage"}"#,
        r#"{"op":"subscribe","id":5,"topic":"h.a","slow":"nope"}"#,
        r#"{"op":"subscribe","id":6,"topic":"h.a,h.b","since":"7"}"#,
        r#"{"op":"subscribe","id":7,"topic":"h.a","since":"99999999999999999999999"}"#,
        r#"{"op":"subscribe","id":8,"topic":["h.a"]}"#,
        r#"{"op":"publish","id":9,"topic":"h.a"}"#,
        r#"{"op":"publish","id":10,"topic":"_jobs.x","data":"x"}"#,
        r#"{"op":"publish","id":11,"topic":"h.a","data":"x","data_base64":"eA=="}"#,
        r#"{"op":"publish","id":12,"topic":"h.a","data_base64":"!!!"}"#,
        r#"{"op":"publish","id":13,"topic":"h.a","data":"x","event":"bad event"}"#,
        r#"{"op":"publish","id":14,"topic":"bad topic","data":"x"}"#,
        r#"{"op":"publish","id":15,"topic":"h.a","data":42}"#,
        r#"{"op":"publish","id":16,"topic":"h.*","data":"x"}"#,
        r#"{"op":"unsubscribe","id":17,"topic":"bad topic"}"#,
        r#"{"op":"publish","id":{"x":1},"topic":"bad topic","data":"x"}"#,
        r#"{"op":"publish","id":1e400,"topic":"bad topic","data":"x"}"#,
        r#"{"op":"subscribe","id":18,"topic":"h.a\u0000"}"#,
        r#"{"op":"publish","id":19,"topic":"h.a","data":"x"} trailing"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        deep,
        format!(
            r#"{{"op":"publish","id":20,"topic":"h.a","data":"{}"}}"#,
            "x".repeat(65_537)
        ),
        format!(
            r#"{{"op":"subscribe","id":21,"topic":"{}"}}"#,
            "t".repeat(10_000)
        ),
    ])
    .collect();
    let mut ws = Ws::connect(server, "").await;
    for (i, text) in texts.iter().enumerate() {
        let name = format!("WS frame {:?}", text.chars().take(60).collect::<String>());
        ws.send_raw(WsMessage::text(text.clone())).await;
        if !check_probe(&mut ws, 1000 + i as u64, &name, tally).await {
            ws = Ws::connect(server, "").await;
        }
    }
    for (i, bytes) in [vec![0xffu8, 0xfe], b"{".to_vec(), Vec::new()]
        .into_iter()
        .enumerate()
    {
        let name = format!("WS binary frame #{i}");
        ws.send_raw(WsMessage::binary(bytes)).await;
        if !check_probe(&mut ws, 2000 + i as u64, &name, tally).await {
            ws = Ws::connect(server, "").await;
        }
    }
    ws.send_raw(WsMessage::Ping(vec![7u8; 125].into())).await;
    if !check_probe(&mut ws, 3000, "WS ping with 125 bytes", tally).await {
        ws = Ws::connect(server, "").await;
    }
    ws.send_raw(WsMessage::Pong(vec![1u8; 10].into())).await;
    check_probe(&mut ws, 3001, "WS unsolicited pong", tally).await;

    // A frame over the WebSocket limit (4 × max_message_bytes): an error frame or a close.
    let mut big = Ws::connect(server, "").await;
    big.send_raw(WsMessage::text("x".repeat(300_000))).await;
    tally.total += 1;
    match timeout(DEADLINE, big.try_recv()).await {
        Err(_) => tally
            .violations
            .push("a WS frame over the limit: no error frame and no close".into()),
        Ok(None) => tally
            .closed_without_answer
            .push("a WS frame over the limit (socket closed)".into()),
        Ok(Some(frame)) => {
            let status = frame["status"].as_u64().unwrap_or(0);
            if frame["op"] != json!("error") || !(400..500).contains(&status) {
                tally
                    .violations
                    .push(format!("a WS frame over the limit answered {frame}"));
            }
        }
    }
}

/// Sends an unknown-op probe with `id` and reads up to its answer: every frame before it
/// must be a 4xx `error`, and the probe must be answered (the socket lives on). `false` if
/// the socket was closed.
async fn check_probe(ws: &mut Ws, id: u64, name: &str, tally: &mut Tally) -> bool {
    tally.total += 1;
    ws.send(json!({"op":"probe","id":id})).await;
    loop {
        let Some(frame) = ws.try_recv().await else {
            tally.violations.push(format!(
                "{name}: the WebSocket was closed instead of an error frame"
            ));
            return false;
        };
        let status = frame["status"].as_u64().unwrap_or(0);
        if frame["op"] != json!("error") || !(400..500).contains(&status) {
            tally.violations.push(format!(
                "{name}: answered {frame} (expected 4xx error frames only)"
            ));
        }
        if frame["id"] == json!(id) {
            *tally.by_status.entry(format!("ws-{status}")).or_default() += 1;
            return true;
        }
    }
}

/// A client→server WebSocket frame: `fin`, `rsv` bits, `opcode`, masked with `mask` (or
/// unmasked), with a chosen length field.
fn ws_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65_536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Malformed frames below tungstenite's client, over a hand-made handshake: the server
/// must close the connection (a protocol error), and stay healthy.
async fn raw_ws_frames(server: &Server, tally: &mut Tally) {
    const KEY: [u8; 4] = [1, 2, 3, 4];
    let mut huge_len = vec![0x81u8, 0xff];
    huge_len.extend_from_slice(&u64::MAX.to_be_bytes()[..]);
    huge_len.extend_from_slice(&KEY);
    let mut len_7fff = vec![0x81u8, 0xff];
    len_7fff.extend_from_slice(&(i64::MAX as u64).to_be_bytes());
    len_7fff.extend_from_slice(&KEY);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "an unmasked text frame",
            ws_frame(0x81, br#"{"op":"nope","id":1}"#, None),
        ),
        (
            "RSV1 set without an extension",
            ws_frame(0xc1, b"{}", Some(KEY)),
        ),
        ("RSV2 and RSV3 set", ws_frame(0xb1, b"{}", Some(KEY))),
        ("reserved opcode 0x3", ws_frame(0x83, b"{}", Some(KEY))),
        (
            "reserved control opcode 0xB",
            ws_frame(0x8b, b"", Some(KEY)),
        ),
        (
            "invalid UTF-8 text",
            ws_frame(0x81, b"\xff\xfe\xfd", Some(KEY)),
        ),
        (
            "overlong UTF-8 text",
            ws_frame(0x81, b"\xc0\xaf", Some(KEY)),
        ),
        ("fragmented ping", ws_frame(0x09, b"p", Some(KEY))),
        (
            "ping over 125 bytes",
            ws_frame(0x89, &[0u8; 200], Some(KEY)),
        ),
        (
            "continuation without a start",
            ws_frame(0x80, b"x", Some(KEY)),
        ),
        (
            "text inside an unfinished text",
            [
                ws_frame(0x01, b"{", Some(KEY)),
                ws_frame(0x81, b"}", Some(KEY)),
            ]
            .concat(),
        ),
        (
            "close with code 999",
            ws_frame(0x88, &999u16.to_be_bytes(), Some(KEY)),
        ),
        ("close with a 1-byte body", ws_frame(0x88, b"x", Some(KEY))),
        (
            "close with invalid UTF-8 reason",
            ws_frame(0x88, &[0x03, 0xe8, 0xff], Some(KEY)),
        ),
        ("64-bit length u64::MAX", huge_len),
        ("64-bit length i64::MAX", len_7fff),
        ("garbage after the handshake", Noise(42).bytes(512)),
    ];
    for (name, bytes) in cases {
        tally.total += 1;
        let name = format!("raw WS: {name}");
        let mut stream = TcpStream::connect(server.addr())
            .await
            .expect("connect to the server");
        let handshake = "GET /v1/ws HTTP/1.1\r\nHost: plexus\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        stream
            .write_all(handshake.as_bytes())
            .await
            .expect("write the handshake");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while find(&head, b"\r\n\r\n").is_none() {
            match timeout(DEADLINE, stream.read(&mut byte)).await {
                Ok(Ok(1)) => head.push(byte[0]),
                _ => panic!(
                    "{name}: no handshake answer: {:?}",
                    String::from_utf8_lossy(&head)
                ),
            }
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{name}: handshake answered {:?}",
            String::from_utf8_lossy(&head)
        );
        let _ = stream.write_all(&bytes).await;
        let closed = timeout(DEADLINE, async {
            let mut buf = vec![0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if closed.is_err() {
            tally.violations.push(format!(
                "{name}: the connection is still open {DEADLINE:?} after a protocol error"
            ));
        } else {
            *tally.by_status.entry("ws-closed".into()).or_default() += 1;
        }
    }
}

#[tokio::test]
async fn hostile_input_leaves_the_hub_healthy_and_its_data_unchanged() {
    let server = Server::start(&[
        "--header-timeout",
        "2s",
        "--max-wait",
        "1s",
        "--max-message-bytes",
        "65536",
    ])
    .await;
    server.publish_n("h.a", 3, "a").await;
    server.publish_n("h.b", 2, "b").await;
    let topics = ["h.a", "h.b"];
    let before = server.snapshot(&topics).await;

    let mut tally = Tally::default();
    let mut raw_cases = method_cases();
    raw_cases.extend(garbage_cases());
    raw_cases.extend(huge_cases());
    raw_cases.extend(utf8_cases());
    raw_cases.extend(nul_cases());
    raw_cases.extend(framing_cases());
    raw_cases.extend(traversal_cases());
    run_raw(&server, raw_cases, &mut tally).await;
    run_http(&server, http_cases(), &mut tally).await;
    bad_ws_frames(&server, &mut tally).await;
    raw_ws_frames(&server, &mut tally).await;

    eprintln!(
        "hostile: {} requests/frames; outcomes {:?}",
        tally.total, tally.by_status
    );
    eprintln!(
        "hostile: closed without an answer ({}):\n  {}",
        tally.closed_without_answer.len(),
        tally.closed_without_answer.join("\n  ")
    );
    assert!(tally.total >= 300, "only {} hostile inputs", tally.total);

    // The hub is alive and well.
    let resp = server.get("/healthz", &[]).await;
    assert_eq!(resp.status(), reqwest::StatusCode::OK, "GET /healthz after");
    assert!(
        !server.stderr().contains("panicked"),
        "the server panicked:\n{}",
        server.stderr()
    );
    // Nothing changed (subscriber counts settle once the hostile sockets are gone).
    let mut last = Value::Null;
    let same = timeout(DEADLINE, async {
        loop {
            last = server.snapshot(&topics).await;
            if last == before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let violations = tally.violations.join("\n  ");
    assert!(
        same.is_ok(),
        "hostile input changed the stored state:\nbefore {before:#}\nafter {last:#}\n\
         violations ({}):\n  {violations}",
        tally.violations.len()
    );
    assert!(
        tally.violations.is_empty(),
        "{} of {} hostile inputs were mishandled:\n  {violations}",
        tally.violations.len(),
        tally.total
    );
    // A normal publish and read still work.
    let published = server.publish("h.a", "after").await;
    assert_eq!(published["seq"], json!(4), "{published}");
    let page = server.read("h.a", "since=3").await;
    assert_eq!(page["messages"][0]["data"], json!("after"), "{page}");
    eventually("the topic list to show h.a's new message", || async {
        let list = server.topics().await;
        list.iter()
            .any(|t| t["topic"] == json!("h.a") && t["last_seq"] == json!(4))
            .then_some(())
    })
    .await;
}
