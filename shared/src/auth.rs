//! The session token: an HS256 JWT exactly as the protocol's "The token" section says.

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::JwtSecret;
use crate::domain::{Participant, Role};

pub const ISSUER: &str = "seance";
pub const AUDIENCE: &str = "seance-client";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The participant id.
    pub sub: Uuid,
    /// The session id: a token opens nothing in any other session.
    pub sid: Uuid,
    /// The participant's display name.
    pub name: String,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token was given")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is malformed or wrongly signed")]
    Invalid,
    #[error("the token could not be signed")]
    Signing,
}

/// Signs and checks tokens. Built once at start-up.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    /// True when the secret was made for this process (the harness without `JWT_SECRET`).
    pub ephemeral: bool,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("ttl", &self.ttl)
            .field("ephemeral", &self.ephemeral)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    pub fn new(secret: &JwtSecret, ttl: Duration) -> Self {
        hs256::install();
        let (bytes, ephemeral) = match secret {
            JwtSecret::Configured(secret) => (secret.expose().as_bytes().to_vec(), false),
            JwtSecret::Ephemeral => (ephemeral_secret(), true),
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        // The server never sets `nbf`, but a token that carries one is held to it.
        validation.validate_nbf = true;
        Self {
            encoding: EncodingKey::from_secret(&bytes),
            decoding: DecodingKey::from_secret(&bytes),
            validation,
            ttl,
            ephemeral,
        }
    }

    pub fn issue(&self, session_id: Uuid, participant: &Participant) -> Result<String, AuthError> {
        let now = Utc::now().timestamp();
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            sub: participant.id,
            sid: session_id,
            name: participant.display_name.clone(),
            role: participant.role,
            iat: now,
            exp: now.saturating_add(ttl),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests use it to make expired or foreign tokens).
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|_| AuthError::Signing)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_at(token, Utc::now().timestamp())
    }

    /// [`verify`](Self::verify) at `now` (Unix seconds) for the check of `iat`;
    /// `jsonwebtoken` checks `exp` and `nbf` on its own clock.
    fn verify_at(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?;
        // Issued in the future: not ours (our clock issued every token we signed).
        let leeway = i64::try_from(LEEWAY_SECS).unwrap_or(0);
        if claims.iat > now.saturating_add(leeway) {
            return Err(AuthError::Invalid);
        }
        Ok(claims)
    }
}

/// jsonwebtoken's cryptography: HS256 on ring (which TLS links anyway), and nothing else.
/// The crate's own providers choose the algorithm at run time from the key and header, so
/// with them every function that checks a token linked RSA, ECDSA and EdDSA code it never
/// runs (and compiled the `rsa` crate). Any other algorithm is refused here as well as by
/// [`Validation`], which only admits HS256.
pub mod hs256 {
    use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
    use jsonwebtoken::errors::{ErrorKind, Result};
    use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
    use jsonwebtoken::signature::{self, Signer, Verifier};
    use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
    use ring::hmac;

    static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory,
        verifier_factory,
        // JWKs are never read: each helper refuses rather than panics.
        key_utils: KeyUtils {
            rsa_pub_components_from_private_key: no_components,
            rsa_pub_components_from_public_key: no_components,
            ec_pub_components_from_private_key: no_ec_components,
            ed_pub_components_from_private_key: no_ed_component,
            compute_digest: no_digest,
        },
    };

    /// Makes this jsonwebtoken's provider for the process. Idempotent; called by
    /// [`TokenKeys::new`](super::TokenKeys::new), so before any token is signed or checked.
    pub fn install() {
        // `Err` only means a provider is already installed, and only this module installs.
        let _ = PROVIDER.install_default();
    }

    /// An HMAC-SHA256 key.
    struct Hs256(hmac::Key);

    impl Hs256 {
        fn new(algorithm: Algorithm, family: AlgorithmFamily, secret: &[u8]) -> Result<Self> {
            if algorithm != Algorithm::HS256 {
                return Err(ErrorKind::InvalidAlgorithm.into());
            }
            if family != AlgorithmFamily::Hmac {
                return Err(ErrorKind::InvalidKeyFormat.into());
            }
            Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, secret)))
        }
    }

    fn signer_factory(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
        Ok(Box::new(Hs256::new(
            *algorithm,
            key.family(),
            key.as_bytes(),
        )?))
    }

    fn verifier_factory(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
        Ok(Box::new(Hs256::new(
            *algorithm,
            key.family(),
            key.try_get_as_bytes()?,
        )?))
    }

    impl Signer<Vec<u8>> for Hs256 {
        fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
            Ok(hmac::sign(&self.0, message).as_ref().to_vec())
        }
    }

    impl Verifier<Vec<u8>> for Hs256 {
        /// Constant-time comparison (ring's `verify`).
        fn verify(
            &self,
            message: &[u8],
            tag: &Vec<u8>,
        ) -> std::result::Result<(), signature::Error> {
            hmac::verify(&self.0, message, tag).map_err(|_| signature::Error::new())
        }
    }

    impl JwtSigner for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    impl JwtVerifier for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    fn no_components(_: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
        Err(ErrorKind::InvalidAlgorithm.into())
    }

    fn no_ec_components(_: &[u8], _: Algorithm) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>)> {
        Err(ErrorKind::InvalidAlgorithm.into())
    }

    fn no_ed_component(_: &[u8], _: &EllipticCurve) -> Result<Vec<u8>> {
        Err(ErrorKind::InvalidAlgorithm.into())
    }

    fn no_digest(_: &[u8], _: ThumbprintHash) -> Result<Vec<u8>> {
        Err(ErrorKind::InvalidAlgorithm.into())
    }
}

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
const LEEWAY_SECS: u64 = 5;

/// Two v4 UUIDs' OS randomness (244 bits), hex-encoded: twice the length asked of a
/// configured secret, enough for HS256, and no extra dependency.
fn ephemeral_secret() -> Vec<u8> {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()).into_bytes()
}

/// Pulls the token out of an `Authorization: Bearer <jwt>` header value.
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Invalid);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(
            &JwtSecret::Configured(Secret::new(secret)),
            Duration::from_secs(3600),
        )
    }

    fn someone() -> Participant {
        Participant {
            id: Uuid::new_v4(),
            display_name: "Ada".into(),
            role: Role::Host,
            seat: 0,
        }
    }

    const SECRET: &str = "a-test-secret-that-is-long-enough-1234";

    #[test]
    fn issued_tokens_verify_with_every_claim() {
        let keys = keys(SECRET);
        let who = someone();
        let sid = Uuid::new_v4();
        let claims = keys.verify(&keys.issue(sid, &who).unwrap()).unwrap();
        assert_eq!(claims.sub, who.id);
        assert_eq!(claims.sid, sid);
        assert_eq!(claims.name, "Ada");
        assert_eq!(claims.role, Role::Host);
        assert_eq!(claims.iss, ISSUER);
        assert_eq!(claims.aud, AUDIENCE);
        assert_eq!(claims.exp - claims.iat, 3600);
    }

    #[test]
    fn wrong_secret_expiry_and_garbage_are_refused() {
        let keys = keys(SECRET);
        let other = self::keys("another-secret-that-is-long-enough-9876");
        let token = other.issue(Uuid::new_v4(), &someone()).unwrap();
        assert_eq!(keys.verify(&token), Err(AuthError::Invalid));
        assert_eq!(keys.verify("not.a.jwt"), Err(AuthError::Invalid));
        assert_eq!(keys.verify(""), Err(AuthError::Missing));

        let now = Utc::now().timestamp();
        let mut claims = keys
            .verify(&keys.issue(Uuid::new_v4(), &someone()).unwrap())
            .unwrap();
        claims.iat = now - 7200;
        claims.exp = now - 3600;
        assert_eq!(
            keys.verify(&keys.sign(&claims).unwrap()),
            Err(AuthError::Expired)
        );

        claims.exp = now + 3600;
        claims.aud = "someone-else".into();
        assert_eq!(
            keys.verify(&keys.sign(&claims).unwrap()),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn an_ephemeral_secret_is_as_long_as_a_configured_one_must_be() {
        let secret = ephemeral_secret();
        assert!(
            secret.len() >= crate::config::MIN_JWT_SECRET_CHARS,
            "{}",
            secret.len()
        );
        assert!(secret.iter().all(u8::is_ascii_hexdigit));
    }

    #[test]
    fn a_token_issued_in_the_future_is_refused_beyond_the_leeway() {
        let keys = keys(SECRET);
        let now = Utc::now().timestamp();
        let mut claims = keys
            .verify(&keys.issue(Uuid::new_v4(), &someone()).unwrap())
            .unwrap();
        let leeway = i64::try_from(LEEWAY_SECS).unwrap();
        claims.iat = now + leeway;
        let at_the_edge = keys.sign(&claims).unwrap();
        assert_eq!(keys.verify_at(&at_the_edge, now), Ok(claims.clone()));
        claims.iat = now + leeway + 1;
        let beyond = keys.sign(&claims).unwrap();
        assert_eq!(keys.verify_at(&beyond, now), Err(AuthError::Invalid));
    }

    #[test]
    fn ephemeral_secrets_differ_per_process_start() {
        let a = TokenKeys::new(&JwtSecret::Ephemeral, Duration::from_secs(60));
        let b = TokenKeys::new(&JwtSecret::Ephemeral, Duration::from_secs(60));
        assert!(a.ephemeral);
        let token = a.issue(Uuid::new_v4(), &someone()).unwrap();
        assert!(a.verify(&token).is_ok());
        assert_eq!(b.verify(&token), Err(AuthError::Invalid));
    }

    /// RFC 7515, appendix A.1: the HS256 example's signing input, key and signature.
    #[test]
    fn hs256_matches_the_rfc_example_and_refuses_other_algorithms() {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use jsonwebtoken::crypto::{sign, verify};

        hs256::install();
        let key = URL_SAFE_NO_PAD
            .decode(
                "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
            )
            .unwrap();
        let input = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
                     eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let expected = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let encoding = EncodingKey::from_secret(&key);
        let decoding = DecodingKey::from_secret(&key);
        assert_eq!(
            sign(input.as_bytes(), &encoding, Algorithm::HS256).unwrap(),
            expected
        );
        assert!(verify(expected, input.as_bytes(), &decoding, Algorithm::HS256).unwrap());
        // One bit of the message or of the tag changed: refused.
        let altered = input.replacen("eyJp", "eyJq", 1);
        assert!(!verify(expected, altered.as_bytes(), &decoding, Algorithm::HS256).unwrap());
        let other_tag = "eBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(!verify(other_tag, input.as_bytes(), &decoding, Algorithm::HS256).unwrap());
        // Every other algorithm is refused, not computed.
        for algorithm in [
            Algorithm::HS384,
            Algorithm::HS512,
            Algorithm::RS256,
            Algorithm::ES256,
        ] {
            let err = sign(input.as_bytes(), &encoding, algorithm).unwrap_err();
            assert_eq!(err.kind(), &ErrorKind::InvalidAlgorithm, "{algorithm:?}");
            let err = verify(expected, input.as_bytes(), &decoding, algorithm).unwrap_err();
            assert_eq!(err.kind(), &ErrorKind::InvalidAlgorithm, "{algorithm:?}");
        }
    }

    #[test]
    fn bearer_header_is_parsed() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
        assert_eq!(bearer_token(Some("Basic abc")), Err(AuthError::Invalid));
        assert_eq!(bearer_token(Some("Bearer ")), Err(AuthError::Invalid));
    }
}
