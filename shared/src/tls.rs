//! TLS for every client this process opens (PostgreSQL, Redis, the AWS SDK's Management API
//! and SQS clients, the model and voice APIs): rustls on ring, one crypto provider for all.
//! With ring alone, AWS-LC is not linked at all: its C code and tables were about 2 MB of
//! every function (README, "Sizes and cold starts, measured"). What that gives up: rustls
//! offers the post-quantum hybrid key exchange (X25519MLKEM768) only on AWS-LC; on ring the
//! handshakes use X25519 or the NIST curves, TLS 1.3 or 1.2.

use std::sync::OnceLock;

use aws_sdk_apigatewaymanagement::config::SharedHttpClient;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

/// Makes ring the process's default rustls provider, which the Redis client and `reqwest`
/// take; call it before building either. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The HTTP client under every AWS SDK client of the process: hyper over rustls on ring.
/// One per process, so the SDK clients share its connection pools. Building it does no I/O;
/// the system's root certificates are read when an SDK client first uses it.
pub fn aws_http_client() -> SharedHttpClient {
    static CLIENT: OnceLock<SharedHttpClient> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .build_https()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What tells providers apart: their key exchange groups and cipher suites.
    fn fingerprint(provider: &rustls::crypto::CryptoProvider) -> String {
        let groups: Vec<_> = provider.kx_groups.iter().map(|g| g.name()).collect();
        let suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        format!("{groups:?} {suites:?}")
    }

    #[test]
    fn ring_is_the_process_default_once_installed() {
        install_crypto_provider();
        install_crypto_provider();
        let installed = rustls::crypto::CryptoProvider::get_default().map(|p| fingerprint(p));
        assert_eq!(
            installed,
            Some(fingerprint(&rustls::crypto::ring::default_provider()))
        );
    }
}
