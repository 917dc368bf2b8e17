//! Which certificates the AWS SDK's clients trust (`AWS_TLS_ROOTS`), over real TLS: a push
//! through the Management API client to an HTTPS endpoint of the test's own, whose
//! certificate comes from the test CA (`TEST_TLS_SERVER_CERT`, `TEST_TLS_SERVER_KEY`,
//! `TEST_REDIS_CA_FILE`, made by `tests/run`).
//!
//! With `system` roots and the test CA as the platform's store, the push is delivered; with
//! the built-in Amazon roots (the default) the same push is refused in the handshake, before
//! any request is sent. The platform's store is read once a process, from `SSL_CERT_FILE`
//! among others, so the scenario runs in a child process of this binary given that
//! variable; the parent only starts it and reads its verdict.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use seance::push::{AwsCredentials, ManagementApi, PushError, Pusher};
use seance::tls::AwsTlsRoots;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What the HTTPS endpoint saw of one connection.
#[derive(Debug, PartialEq)]
enum Seen {
    /// A request, by its first line.
    Request(String),
    /// A handshake that failed: the client refused the certificate.
    HandshakeFailed,
}

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run the tests with tests/run"))
}

/// An HTTPS endpoint on a free port answering every request `200` with an empty body, as
/// `@connections` answers a push; what it sees goes to the receiver.
async fn https_endpoint() -> (String, mpsc::UnboundedReceiver<Seen>) {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(env("TEST_TLS_SERVER_CERT"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(env("TEST_TLS_SERVER_KEY")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let (seen, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(socket).await else {
                    let _ = seen.send(Seen::HandshakeFailed);
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then the body their Content-Length announces.
                let body_end = loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_lowercase();
                    if let Some(head) = text.find("\r\n\r\n") {
                        let length = text[..head]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break head + 4 + length;
                    }
                };
                while request.len() < body_end {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let first_line = String::from_utf8_lossy(&request)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = seen.send(Seen::Request(first_line));
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (url, receiver)
}

fn pusher(roots: AwsTlsRoots) -> ManagementApi {
    ManagementApi::new("us-east-1", AwsCredentials::Static, roots)
}

/// The scenario, in the child process whose platform store is the test CA alone.
#[tokio::test]
#[ignore = "run by the_built_in_roots_refuse_what_the_platform_s_accept, in a child process"]
async fn child_pushes_over_tls() {
    let (endpoint, mut seen) = https_endpoint().await;

    pusher(AwsTlsRoots::System)
        .send(&endpoint, "conn-system", "{\"type\":\"pong\"}")
        .await
        .expect("a push trusting the platform's store (the test CA) is delivered");
    assert_eq!(
        seen.recv().await,
        Some(Seen::Request(
            "POST /@connections/conn-system HTTP/1.1".to_owned()
        ))
    );

    let refused = pusher(AwsTlsRoots::Amazon)
        .send(&endpoint, "conn-amazon", "{\"type\":\"pong\"}")
        .await;
    assert!(
        matches!(refused, Err(PushError::Other(_))),
        "a certificate from outside Amazon's roots must be refused: {refused:?}"
    );
    assert_eq!(seen.recv().await, Some(Seen::HandshakeFailed));
    assert!(
        seen.try_recv().is_err(),
        "nothing else reached the endpoint"
    );
}

#[test]
fn the_built_in_roots_refuse_what_the_platform_s_accept() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_pushes_over_tls",
            "--ignored",
            "--nocapture",
        ])
        .env("SSL_CERT_FILE", env("TEST_REDIS_CA_FILE"))
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran no scenario:\n{stdout}"
    );
}
