//! TLS for every client this process opens (PostgreSQL, Redis, the AWS SDK's Management API
//! and SQS clients, the model and voice APIs): rustls on ring, one crypto provider for all.
//! With ring alone, AWS-LC is not linked at all: its C code and tables were about 2 MB of
//! every function (README, "Sizes and cold starts, measured"). What that gives up: rustls
//! offers the post-quantum hybrid key exchange (X25519MLKEM768) only on AWS-LC; on ring the
//! handshakes use X25519 or the NIST curves, TLS 1.3 or 1.2.

use std::sync::OnceLock;

use aws_sdk_apigatewaymanagement::config::{HttpClient, RuntimeComponents, SharedHttpClient};
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{HttpConnectorSettings, SharedHttpConnector};

/// Makes ring the process's default rustls provider, which the Redis client and `reqwest`
/// take; call it before building either. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Which root certificates the AWS SDK's clients (the Management API's pushes, SQS) trust:
/// `AWS_TLS_ROOTS`, `amazon` (the default) or `system`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AwsTlsRoots {
    /// The five roots of Amazon Trust Services, built in ([`AMAZON_TRUST_SERVICES_PEM`]):
    /// every AWS endpoint these clients call (`execute-api`, `sqs`) and every ACM
    /// certificate of a custom domain chains to one of them. Parsing five certificates
    /// instead of reading and parsing the platform's 140-odd is most of a `ws-message`
    /// cold start's first push (README, "Sizes and cold starts, measured").
    #[default]
    Amazon,
    /// The platform's store, read from disk when a client first connects: for an endpoint
    /// whose certificate comes from elsewhere (a custom domain with an imported
    /// certificate, an SQS-speaking server of one's own over TLS).
    System,
}

impl std::str::FromStr for AwsTlsRoots {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "amazon" => Ok(Self::Amazon),
            "system" => Ok(Self::System),
            other => Err(format!("`{other}` is neither amazon nor system")),
        }
    }
}

/// Amazon Trust Services' roots (Amazon Root CA 1–4 and the Starfield Services Root G2 that
/// cross-signs them), as Debian's `ca-certificates` ships them; each with its SHA-256
/// fingerprint, to check against <https://www.amazontrust.com/repository/>.
pub const AMAZON_TRUST_SERVICES_PEM: &str = include_str!("../certs/amazon-trust-services.pem");

/// The HTTP client under every AWS SDK client of the process: hyper over rustls on ring,
/// trusting `roots`. One per choice of roots, so the SDK clients share its connection pools.
/// Building it does no I/O; the roots are parsed (and, for the system's, read) when an SDK
/// client first connects, once for each connector the client builds (see
/// [`ConnectorOnFirstRequest`]).
pub fn aws_http_client(roots: AwsTlsRoots) -> SharedHttpClient {
    static AMAZON: OnceLock<SharedHttpClient> = OnceLock::new();
    static SYSTEM: OnceLock<SharedHttpClient> = OnceLock::new();
    let client = match roots {
        AwsTlsRoots::Amazon => &AMAZON,
        AwsTlsRoots::System => &SYSTEM,
    };
    client
        .get_or_init(|| {
            // Built once per choice: the store copies the PEM.
            let trust_store = match roots {
                AwsTlsRoots::Amazon => {
                    TrustStore::empty().with_pem_certificate(AMAZON_TRUST_SERVICES_PEM.as_bytes())
                }
                AwsTlsRoots::System => TrustStore::default(),
            };
            let hyper = aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .tls_context(
                    TlsContext::builder()
                        .with_trust_store(trust_store)
                        .build()
                        // Infallible in this release (it only stores the trust store); were
                        // it to fail, the platform's roots are a safe place to land.
                        .unwrap_or_default(),
                )
                .build_https();
            SharedHttpClient::new(ConnectorOnFirstRequest(hyper))
        })
        .clone()
}

/// An SDK HTTP client whose connectors are built only when a request needs one.
///
/// The SDK's hyper client, asked to check a new SDK client's configuration, builds a TLS
/// connector (parsing every root) and throws it away, so that a platform store is read
/// when the client is built rather than at its first request; the first request then
/// builds its own. Our clients are built when they are first needed, for that very request
/// (the Management API's per endpoint, at a push), so the check only parsed the roots
/// twice in a cold function's first event (README, "Sizes and cold starts, measured").
/// Everything else is the inner client's: its connectors, cached by their settings, and
/// its metadata.
#[derive(Debug)]
struct ConnectorOnFirstRequest<C>(C);

impl<C: HttpClient> HttpClient for ConnectorOnFirstRequest<C> {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    // `validate_base_client_config` keeps the trait's default, which checks nothing and
    // builds nothing.

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
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

    /// The built-in roots parse (as the SDK parses them, which panics on a bad one) into
    /// exactly Amazon's five, each self-signed and each one the platform itself trusts.
    #[test]
    fn the_built_in_roots_are_amazon_trust_services_five() {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let ders = CertificateDer::pem_slice_iter(AMAZON_TRUST_SERVICES_PEM.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("the built-in PEM parses");
        assert_eq!(ders.len(), 5);
        let mut store = rustls::RootCertStore::empty();
        let (added, refused) = store.add_parsable_certificates(ders.iter().cloned());
        assert_eq!((added, refused), (5, 0));
        for (der, name) in ders.iter().zip([
            "Amazon Root CA 1",
            "Amazon Root CA 2",
            "Amazon Root CA 3",
            "Amazon Root CA 4",
            "Starfield Services Root Certificate Authority - G2",
        ]) {
            let bytes = der.as_ref();
            assert!(
                bytes.windows(name.len()).any(|w| w == name.as_bytes()),
                "{name} is not among the built-in roots"
            );
        }
        let platform = rustls_native_certs::load_native_certs().certs;
        assert!(
            !platform.is_empty(),
            "this machine has no root store to compare with"
        );
        for der in &ders {
            assert!(
                platform.contains(der),
                "a built-in root is not in the platform's store"
            );
        }
    }

    /// Counts what the SDK asks of an HTTP client; its connector refuses every request.
    #[derive(Debug, Clone, Default)]
    struct Counting {
        checks: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        connectors: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    #[derive(Debug)]
    struct Refusing;

    impl aws_smithy_runtime_api::client::http::HttpConnector for Refusing {
        fn call(
            &self,
            _request: aws_sdk_apigatewaymanagement::config::http::HttpRequest,
        ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
            aws_smithy_runtime_api::client::http::HttpConnectorFuture::ready(Err(
                aws_smithy_runtime_api::client::result::ConnectorError::other(
                    "this test sends nothing".into(),
                    None,
                ),
            ))
        }
    }

    impl HttpClient for Counting {
        fn http_connector(
            &self,
            _settings: &HttpConnectorSettings,
            _components: &RuntimeComponents,
        ) -> SharedHttpConnector {
            self.connectors
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            SharedHttpConnector::new(Refusing)
        }

        fn validate_base_client_config(
            &self,
            _components: &aws_sdk_apigatewaymanagement::config::RuntimeComponentsBuilder,
            _cfg: &aws_sdk_apigatewaymanagement::config::ConfigBag,
        ) -> Result<(), aws_sdk_apigatewaymanagement::error::BoxError> {
            self.checks
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    /// Builds a Management API client on `http`, as a push does, and sends one push
    /// (which the connector refuses); how many checks and connectors that asked for.
    async fn checks_and_connectors(http: SharedHttpClient, counting: &Counting) -> (usize, usize) {
        use aws_sdk_apigatewaymanagement::config::{BehaviorVersion, Credentials, Region};
        let config = aws_sdk_apigatewaymanagement::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new(
                "AKIDTEST",
                "not-a-secret",
                None,
                None,
                "test",
            ))
            .endpoint_url("https://example.execute-api.eu-west-1.amazonaws.com/prod")
            .build();
        let client = aws_sdk_apigatewaymanagement::Client::from_conf(config);
        let checks = counting.checks.load(std::sync::atomic::Ordering::SeqCst);
        let sent = client
            .post_to_connection()
            .connection_id("c1")
            .data(aws_sdk_apigatewaymanagement::primitives::Blob::new("{}"))
            .send()
            .await;
        assert!(sent.is_err(), "the test's connector refuses every request");
        let connectors = counting
            .connectors
            .load(std::sync::atomic::Ordering::SeqCst);
        (checks, connectors)
    }

    /// The SDK checks a new client's HTTP client (the hyper client builds and throws away a
    /// connector then, parsing the roots); ours skips that check and still gives the
    /// request its connector.
    #[tokio::test]
    async fn a_new_sdk_client_builds_no_connector_before_its_first_request() {
        let bare = Counting::default();
        let (checks, connectors) =
            checks_and_connectors(SharedHttpClient::new(bare.clone()), &bare).await;
        assert_eq!(
            checks, 1,
            "the SDK checks its HTTP client when a client is built"
        );
        assert!(connectors >= 1);

        let wrapped = Counting::default();
        let (checks, connectors) = checks_and_connectors(
            SharedHttpClient::new(ConnectorOnFirstRequest(wrapped.clone())),
            &wrapped,
        )
        .await;
        assert_eq!(checks, 0, "nothing is built for the check");
        assert!(connectors >= 1, "the request still gets its connector");
    }

    #[test]
    fn roots_parse_from_their_names_only() {
        assert_eq!("amazon".parse(), Ok(AwsTlsRoots::Amazon));
        assert_eq!("system".parse(), Ok(AwsTlsRoots::System));
        assert!("Amazon".parse::<AwsTlsRoots>().is_err());
        assert!("".parse::<AwsTlsRoots>().is_err());
        assert_eq!(AwsTlsRoots::default(), AwsTlsRoots::Amazon);
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
