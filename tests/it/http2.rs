//! HTTP/2 in cleartext (h2c, prior knowledge) on the same port as HTTP/1.1: curl, reqwest and
//! the plexus client, and many streams multiplexed on one connection.

use futures_util::future::join_all;
use plexus_client::{PublishOptions, ReadOptions, Transport};
use reqwest::{StatusCode, Version};
use serde_json::Value;
use tokio::time::timeout;

use crate::kit::cli::curl;
use crate::kit::clients::{READ_TIMEOUT, h2c_reqwest, message, next_item};
use crate::kit::{Server, eventually, install_crypto_provider, messages, seqs};

/// A plexus client in HTTP/2 prior-knowledge mode.
pub fn h2c_plexus(server: &Server) -> plexus_client::Client {
    install_crypto_provider();
    plexus_client::Client::builder(server.base())
        .http2_prior_knowledge()
        .build()
        .expect("build an h2c plexus client")
}

#[tokio::test]
async fn curl_speaks_h2c_with_prior_knowledge_and_http1_on_the_same_port() {
    let server = Server::start(&[]).await;
    let publish_url = server.url("/v1/topics/h2c.curl/messages");
    let read_url = server.url("/v1/topics/h2c.curl/messages?since=all");

    let published = curl(
        &[
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "--data-binary",
            "over-h2",
        ],
        &publish_url,
    )
    .await;
    assert_eq!(published.status, 201, "h2c publish: {}", published.body);
    assert_eq!(published.version, "2", "the publish went over HTTP/2");
    assert_eq!(published.json()["seq"], 1, "{}", published.body);

    let read = curl(&["--http2-prior-knowledge"], &read_url).await;
    assert_eq!(read.status, 200, "h2c short poll: {}", read.body);
    assert_eq!(read.version, "2", "the poll went over HTTP/2");
    let page = read.json();
    assert_eq!(seqs(&page), vec![1], "{page}");
    assert_eq!(messages(&page)[0]["data"], "over-h2", "{page}");

    // HTTP/1.1 on the very same port.
    let published = curl(
        &["--http1.1", "-X", "POST", "--data-binary", "over-h1"],
        &publish_url,
    )
    .await;
    assert_eq!(
        published.status, 201,
        "HTTP/1.1 publish: {}",
        published.body
    );
    assert_eq!(published.version, "1.1", "the publish went over HTTP/1.1");
    assert_eq!(published.json()["seq"], 2, "{}", published.body);

    let read = curl(&["--http1.1"], &read_url).await;
    assert_eq!(read.status, 200, "HTTP/1.1 short poll: {}", read.body);
    assert_eq!(read.version, "1.1");
    let page = read.json();
    assert_eq!(seqs(&page), vec![1, 2], "{page}");
    assert_eq!(messages(&page)[1]["data"], "over-h1", "{page}");
}

/// h2c is by prior knowledge only (hyper's server does not implement the upgrade): a
/// request offering `Upgrade: h2c` is answered in HTTP/1.1, and answered correctly.
#[tokio::test]
async fn an_h2c_upgrade_offer_is_answered_in_http1() {
    let server = Server::start(&[]).await;
    server.publish("h2c.upgrade", "hello").await;
    let read = curl(
        &["--http2"],
        &server.url("/v1/topics/h2c.upgrade/messages?since=all"),
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.version, "1.1", "Upgrade: h2c is not taken up");
    assert_eq!(seqs(&read.json()), vec![1], "{}", read.body);
}

#[tokio::test]
async fn reqwest_with_prior_knowledge_publishes_and_polls_over_http2() {
    let server = Server::start(&[]).await;
    let client = h2c_reqwest();

    let resp = client
        .post(server.url("/v1/topics/h2c.reqwest/messages"))
        .body("one")
        .send()
        .await
        .expect("h2c publish");
    assert_eq!(
        resp.version(),
        Version::HTTP_2,
        "publish answered over HTTP/2"
    );
    assert_eq!(resp.status(), StatusCode::CREATED);
    let ack: Value = resp.json().await.expect("publish answer is JSON");
    assert_eq!(ack["seq"], 1, "{ack}");

    let resp = client
        .get(server.url("/v1/topics/h2c.reqwest/messages?since=all"))
        .send()
        .await
        .expect("h2c short poll");
    assert_eq!(resp.version(), Version::HTTP_2, "poll answered over HTTP/2");
    assert_eq!(resp.status(), StatusCode::OK);
    let page: Value = resp.json().await.expect("poll answer is JSON");
    assert_eq!(seqs(&page), vec![1], "{page}");
    assert_eq!(messages(&page)[0]["data"], "one", "{page}");

    // A long poll answered by a publish on another stream of the same connection.
    let poll = client
        .get(server.url("/v1/topics/h2c.reqwest/messages?since=1&wait=30"))
        .send();
    // Whether the publish lands before or while the poll waits, the poll answers with it.
    let publish = client
        .post(server.url("/v1/topics/h2c.reqwest/messages"))
        .body("two")
        .send();
    let (poll, publish) = tokio::join!(poll, publish);
    let publish = publish.expect("second h2c publish");
    assert_eq!(publish.status(), StatusCode::CREATED);
    assert_eq!(publish.version(), Version::HTTP_2);
    let poll = poll.expect("h2c long poll");
    assert_eq!(poll.version(), Version::HTTP_2);
    let page: Value = poll.json().await.expect("long poll answer is JSON");
    assert_eq!(seqs(&page), vec![2], "{page}");
}

#[tokio::test]
async fn the_client_in_http2_mode_publishes_reads_and_subscribes_on_one_connection() {
    let server = Server::start(&[]).await;
    let control = h2c_reqwest();
    let client = h2c_plexus(&server);
    let before = server.connections_accepted(&control).await;

    let first = client
        .publish("h2c.client", "a", &PublishOptions::default())
        .await
        .expect("h2c publish");
    assert_eq!((first.topic.as_str(), first.seq), ("h2c.client", 1));
    let page = client
        .read(
            "h2c.client",
            &ReadOptions {
                since: Some("all".into()),
                ..Default::default()
            },
        )
        .await
        .expect("h2c read");
    assert_eq!(page.messages.len(), 1, "{page:?}");
    assert_eq!(page.messages[0].data.as_deref(), Some("a"));

    // An open SSE stream and publishes side by side: over HTTP/1.1 this takes two
    // connections, over HTTP/2 one.
    let mut sub = client
        .subscribe("h2c.client", Some("all"), Transport::Sse)
        .await
        .expect("h2c SSE subscribe");
    assert_eq!(
        message(next_item(&mut sub, "SSE").await, "SSE"),
        (1, "a".into())
    );
    for data in ["b", "c"] {
        client
            .publish("h2c.client", data, &PublishOptions::default())
            .await
            .expect("h2c publish while subscribed");
    }
    assert_eq!(
        message(next_item(&mut sub, "SSE").await, "SSE"),
        (2, "b".into())
    );
    assert_eq!(
        message(next_item(&mut sub, "SSE").await, "SSE"),
        (3, "c".into())
    );

    let after = server.connections_accepted(&control).await;
    assert_eq!(
        after - before,
        1,
        "the plexus client in HTTP/2 mode used one connection for a stream and its requests"
    );
}

/// 500 SSE streams on one HTTP/2 connection (hyper's default of 200 concurrent streams would
/// stall the 201st), each receiving every message in order.
#[tokio::test]
async fn five_hundred_sse_streams_share_one_http2_connection() {
    const STREAMS: usize = 500;
    const MESSAGES: u64 = 10;
    let topic = "h2c.many";
    let server = Server::start(&[]).await;
    let control = h2c_reqwest();
    let client = h2c_plexus(&server);
    let before = server.connections_accepted(&control).await;

    // The topic exists (for its info) and the client's connection is open before the burst.
    let seed = client
        .publish(topic, "seed", &PublishOptions::default())
        .await
        .expect("seed publish");
    assert_eq!(seed.seq, 1);

    let subs = join_all((0..STREAMS).map(|_| {
        let client = client.clone();
        async move {
            timeout(
                READ_TIMEOUT,
                client.subscribe(topic, Some("1"), Transport::Sse),
            )
            .await
            .expect("subscribe within the deadline")
            .expect("SSE subscribe over HTTP/2")
        }
    }))
    .await;
    assert_eq!(subs.len(), STREAMS);

    eventually("500 subscribers on the topic", || async {
        let resp = control
            .get(server.url(&format!("/v1/topics/{topic}")))
            .send()
            .await
            .expect("topic info");
        let status = resp.status();
        let info: Value = resp.json().await.expect("topic info is JSON");
        assert_eq!(status, StatusCode::OK, "{info}");
        (info["subscribers"] == STREAMS).then_some(())
    })
    .await;

    for i in 1..=MESSAGES {
        let ack = client
            .publish(topic, format!("m{i}"), &PublishOptions::default())
            .await
            .expect("publish to the many");
        assert_eq!(ack.seq, i + 1);
    }

    let received = join_all(subs.into_iter().enumerate().map(|(n, mut sub)| async move {
        let mut got = Vec::new();
        for _ in 0..MESSAGES {
            got.push(message(
                next_item(&mut sub, &format!("stream {n}")).await,
                &format!("stream {n}"),
            ));
        }
        got
    }))
    .await;
    let expected: Vec<(u64, String)> = (1..=MESSAGES).map(|i| (i + 1, format!("m{i}"))).collect();
    for (n, got) in received.iter().enumerate() {
        assert_eq!(got, &expected, "stream {n} received every message in order");
    }

    let after = server.connections_accepted(&control).await;
    assert_eq!(
        after - before,
        1,
        "500 streams and 11 publishes went over the client's one connection"
    );
}

#[tokio::test]
async fn the_client_publishes_a_batch_all_or_nothing_over_http2() {
    let server = Server::start(&[]).await;
    let client = h2c_plexus(&server);
    let results = client
        .publish_batch(&[
            plexus_client::BatchItem::text("batch.a", "one"),
            plexus_client::BatchItem::text("batch.b", "two"),
            plexus_client::BatchItem::text("batch.a", "three"),
        ])
        .await
        .expect("batch publish");
    let got: Vec<(&str, u64)> = results.iter().map(|p| (p.topic.as_str(), p.seq)).collect();
    assert_eq!(got, vec![("batch.a", 1), ("batch.b", 1), ("batch.a", 2)]);
    // One bad item refuses the whole batch, as a problem the client returns.
    let err = client
        .publish_batch(&[
            plexus_client::BatchItem::text("batch.a", "four"),
            plexus_client::BatchItem::text("bad topic", "five"),
        ])
        .await
        .expect_err("a bad topic refuses the batch");
    match err {
        plexus_client::Error::Problem(p) => assert_eq!(p.status, 400, "{p:?}"),
        other => panic!("expected a 400 problem, got {other}"),
    }
    let page = client
        .read(
            "batch.a",
            &ReadOptions {
                since: Some("all".into()),
                ..Default::default()
            },
        )
        .await
        .expect("read back");
    assert_eq!(
        page.messages.len(),
        2,
        "nothing of the refused batch was stored"
    );
}

/// A WebSocket over HTTP/2 (RFC 8441): an extended CONNECT with `:protocol websocket` is
/// answered `200`, and the stream then carries the socket both ways: a subscribe's answer, and
/// the messages published to the topic, small and large.
#[tokio::test]
async fn a_websocket_rides_an_http2_stream_by_extended_connect() {
    use futures_util::SinkExt;
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let server = Server::start(&[]).await;
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("an HTTP/2 connection");
    tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(hyper::Method::CONNECT)
        .uri(server.url("/v1/ws"))
        .header("sec-websocket-version", "13")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = timeout(READ_TIMEOUT, send.send_request(request))
        .await
        .expect("an answer")
        .expect("the CONNECT is answered");
    assert_eq!(response.status(), 200, "{:?}", response.headers());
    let upgraded = hyper::upgrade::on(&mut response).await.expect("upgraded");
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    ws.send(Message::text(
        r#"{"op":"subscribe","id":1,"topic":"h2.ws"}"#.to_string(),
    ))
    .await
    .unwrap();
    let ok = read_text(&mut ws).await;
    assert_eq!(
        (ok["op"].as_str(), ok["id"].as_u64()),
        (Some("ok"), Some(1)),
        "{ok}"
    );
    let bodies = ["small".to_string(), "w".repeat(70_000)];
    for body in &bodies {
        server.publish("h2.ws", body.clone()).await;
    }
    for (seq, body) in bodies.iter().enumerate() {
        let m = read_text(&mut ws).await;
        assert_eq!(m["op"], "message", "{m}");
        assert_eq!(m["seq"].as_u64(), Some(seq as u64 + 1), "{m}");
        assert_eq!(m["data"].as_str(), Some(body.as_str()));
    }
}

/// The next text frame of a WebSocket as JSON, skipping pings.
async fn read_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    loop {
        let frame = timeout(READ_TIMEOUT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a frame");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("a JSON frame");
        }
    }
}
