//! TLS on the listener: a self-signed development certificate that clients can trust from
//! the data directory, HTTP/2 by ALPN, HTTP/1.1 still served, and unreadable key files.

use std::process::Stdio;
use std::time::Duration;

use plexus_client::{PublishOptions, ReadOptions, Transport};
use reqwest::{StatusCode, Version};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use tokio::time::timeout;

use crate::kit::cli::curl;
use crate::kit::clients::{message, next_item};
use crate::kit::{Server, eventually, install_crypto_provider, messages, seqs};

/// The certificate PEM that `--tls-self-signed` wrote for clients to trust.
fn self_signed_pem(server: &Server) -> Vec<u8> {
    let path = server.data_dir().join("tls").join("self-signed.pem");
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `https://localhost:PORT`: the name the development certificate is made for.
fn localhost(server: &Server) -> String {
    format!("https://localhost:{}", server.port())
}

/// A reqwest client that trusts `pem`; `http1` forces HTTP/1.1 (no `h2` in ALPN).
fn trusting(pem: &[u8], http1: bool) -> reqwest::Client {
    install_crypto_provider();
    let cert = reqwest::Certificate::from_pem(pem).expect("the written PEM is a certificate");
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(cert)
        .timeout(Duration::from_secs(120));
    if http1 {
        builder = builder.http1_only();
    }
    builder.build().expect("build a TLS reqwest client")
}

async fn tls_server() -> Server {
    let server = Server::start(&["--tls-self-signed"]).await;
    assert!(
        server.base().starts_with("https://"),
        "with TLS the listening line says https://, got {}",
        server.base()
    );
    server
}

#[tokio::test]
async fn self_signed_tls_negotiates_http2_by_alpn() {
    let server = tls_server().await;
    let base = localhost(&server);
    let client = trusting(&self_signed_pem(&server), false);

    let resp = client
        .post(format!("{base}/v1/topics/tls.h2/messages"))
        .body("secret")
        .send()
        .await
        .expect("publish over TLS");
    assert_eq!(
        resp.version(),
        Version::HTTP_2,
        "ALPN chose h2 for the publish"
    );
    assert_eq!(resp.status(), StatusCode::CREATED);
    let ack: Value = resp.json().await.expect("publish answer is JSON");
    assert_eq!(ack["seq"], 1, "{ack}");

    let resp = client
        .get(format!("{base}/v1/topics/tls.h2/messages?since=all"))
        .send()
        .await
        .expect("poll over TLS");
    assert_eq!(
        resp.version(),
        Version::HTTP_2,
        "ALPN chose h2 for the poll"
    );
    assert_eq!(resp.status(), StatusCode::OK);
    let page: Value = resp.json().await.expect("poll answer is JSON");
    assert_eq!(seqs(&page), vec![1], "{page}");
    assert_eq!(messages(&page)[0]["data"], "secret", "{page}");
}

#[tokio::test]
async fn self_signed_tls_still_serves_http1() {
    let server = tls_server().await;
    let base = localhost(&server);
    let client = trusting(&self_signed_pem(&server), true);

    let resp = client
        .post(format!("{base}/v1/topics/tls.h1/messages"))
        .body("old-school")
        .send()
        .await
        .expect("HTTP/1.1 publish over TLS");
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(resp.status(), StatusCode::CREATED);

    let resp = client
        .get(format!("{base}/v1/topics/tls.h1/messages?since=all"))
        .send()
        .await
        .expect("HTTP/1.1 poll over TLS");
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(resp.status(), StatusCode::OK);
    let page: Value = resp.json().await.expect("poll answer is JSON");
    assert_eq!(messages(&page)[0]["data"], "old-school", "{page}");
}

#[tokio::test]
async fn the_fingerprint_line_names_the_written_certificate() {
    let server = tls_server().await;
    let pem = self_signed_pem(&server);
    let der = CertificateDer::from_pem_slice(&pem).expect("the written PEM holds a certificate");
    let expected = ring::digest::digest(&ring::digest::SHA256, der.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");

    let prefix = "tls: self-signed certificate, SHA-256 fingerprint ";
    let printed = eventually("the fingerprint line on stdout", || async {
        server
            .stdout_lines()
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            // The fingerprint is the first word; a note may follow it.
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
    })
    .await;
    assert_eq!(
        printed,
        expected,
        "the printed fingerprint is the SHA-256 of the certificate in tls/self-signed.pem; stdout: {:?}",
        server.stdout_lines()
    );
}

#[tokio::test]
async fn curl_trusting_the_written_certificate_gets_http2() {
    let server = tls_server().await;
    let path = server.data_dir().join("tls").join("self-signed.pem");
    let cacert = path.to_str().expect("the data dir path is UTF-8");
    let base = localhost(&server);

    let published = curl(
        &["--cacert", cacert, "-X", "POST", "--data-binary", "by-curl"],
        &format!("{base}/v1/topics/tls.curl/messages"),
    )
    .await;
    assert_eq!(published.status, 201, "{}", published.body);
    assert_eq!(published.version, "2", "curl negotiated h2 by ALPN");

    // The certificate also names 127.0.0.1.
    let read = curl(
        &["--cacert", cacert],
        &format!(
            "https://127.0.0.1:{}/v1/topics/tls.curl/messages?since=all",
            server.port()
        ),
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.version, "2");
    assert_eq!(
        messages(&read.json())[0]["data"],
        "by-curl",
        "{}",
        read.body
    );
}

#[tokio::test]
async fn plain_http_is_not_served_on_a_tls_port() {
    let server = tls_server().await;
    install_crypto_provider();
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build a plain client");
    let answer = plain
        .post(format!(
            "http://127.0.0.1:{}/v1/topics/tls.plain/messages",
            server.port()
        ))
        .body("in the clear")
        .send()
        .await;
    if let Ok(resp) = answer {
        assert!(
            !resp.status().is_success(),
            "a cleartext publish on the TLS port was accepted: {}",
            resp.status()
        );
    }
    // Nothing was stored.
    let client = trusting(&self_signed_pem(&server), false);
    let resp = client
        .get(format!("{}/v1/topics/tls.plain", localhost(&server)))
        .send()
        .await
        .expect("topic info over TLS");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_client_trusting_the_written_certificate_publishes_reads_and_subscribes() {
    let server = tls_server().await;
    install_crypto_provider();
    let pem = self_signed_pem(&server);
    let client = plexus_client::Client::builder(&localhost(&server))
        .add_root_certificate_pem(&pem)
        .expect("the written PEM is accepted")
        .build()
        .expect("build a TLS plexus client");

    let ack = client
        .publish("tls.client", "x", &PublishOptions::default())
        .await
        .expect("publish over TLS");
    assert_eq!(ack.seq, 1);
    let page = client
        .read(
            "tls.client",
            &ReadOptions {
                since: Some("all".into()),
                ..Default::default()
            },
        )
        .await
        .expect("read over TLS");
    assert_eq!(page.messages.len(), 1, "{page:?}");
    assert_eq!(page.messages[0].data.as_deref(), Some("x"));

    let mut sub = client
        .subscribe("tls.client", Some("all"), Transport::Sse)
        .await
        .expect("SSE over TLS");
    assert_eq!(
        message(next_item(&mut sub, "TLS SSE").await, "TLS SSE"),
        (1, "x".into())
    );
    client
        .publish("tls.client", "y", &PublishOptions::default())
        .await
        .expect("second publish over TLS");
    assert_eq!(
        message(next_item(&mut sub, "TLS SSE").await, "TLS SSE"),
        (2, "y".into())
    );

    // A client that does not trust the certificate is refused.
    let stranger = plexus_client::Client::new(&localhost(&server)).expect("build a client");
    assert!(
        stranger
            .publish("tls.client", "z", &PublishOptions::default())
            .await
            .is_err(),
        "an untrusted certificate must fail the TLS handshake"
    );
}

#[tokio::test]
async fn unreadable_certificate_files_stop_the_server_with_their_name() {
    let dir = tempfile::tempdir().expect("create a data directory");
    let mut cmd = crate::kit::cli::plexus();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args([
            "--tls-cert",
            "/nonexistent/plexus-cert.pem",
            "--tls-key",
            "/nonexistent/plexus-key.pem",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = timeout(
        Duration::from_secs(30),
        cmd.spawn().expect("spawn plexus").wait_with_output(),
    )
    .await
    .expect("plexus serve with missing certificate files must exit, not serve")
    .expect("wait for plexus");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "exit status {}; stdout {stdout:?}; stderr {stderr:?}",
        output.status
    );
    assert!(
        stderr.contains("/nonexistent/plexus-cert.pem"),
        "stderr names the missing file: {stderr:?}"
    );
    assert!(
        !stdout.contains("listening on"),
        "it never listened: {stdout:?}"
    );
}
