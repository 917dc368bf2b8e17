//! SigV4 as API Gateway checks it on `@connections`, before anything else: a call must be
//! signed (`AWS4-HMAC-SHA256` in `Authorization`), for this region's `execute-api`, with a
//! key the harness knows, less than five minutes from now, and with the signature the
//! harness computes for the request it received (method, path, query, the signed headers,
//! the body). Each refusal is a 403 with IAM's error type and words.
//!
//! The harness knows one key: the one its own pushes are signed with
//! ([`AwsCredentials::for_harness`](seance::push::AwsCredentials::for_harness): the
//! environment's `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, or the built-in local
//! placeholders), so functions run by `cargo lambda watch` must be given the same. A
//! session token (`X-Amz-Security-Token`) is taken as sent, not checked against anything.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use axum::http::HeaderMap;
use seance::push::AwsCredentials;

/// How far a request's `X-Amz-Date` may be from the harness's clock, as API Gateway allows.
pub const SKEW: Duration = Duration::from_secs(5 * 60);

/// Why a call is refused: API Gateway's `x-amzn-ErrorType` and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub error_type: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(error_type: &'static str, message: impl Into<String>) -> Self {
        Self {
            error_type,
            message: message.into(),
        }
    }

    fn incomplete(message: &str) -> Self {
        Self::new("IncompleteSignatureException", message)
    }

    fn invalid(message: &str) -> Self {
        Self::new("InvalidSignatureException", message)
    }
}

/// The one key the harness accepts signatures from. Its `Debug` names the key, not the
/// secret.
#[derive(Clone)]
pub struct Verifier {
    access_key_id: String,
    secret_access_key: String,
    region: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// What a request's `Authorization` header says.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

impl Verifier {
    pub fn new(access_key_id: String, secret_access_key: String, region: String) -> Self {
        Self {
            access_key_id,
            secret_access_key,
            region,
        }
    }

    /// The key the harness's own pushes sign with. Without one (an `AWS_ACCESS_KEY_ID`
    /// and no secret), no key is recognised: nothing could sign for it.
    pub fn for_harness(region: &str) -> Self {
        let (access_key_id, secret_access_key) =
            AwsCredentials::for_harness().keys().unwrap_or_default();
        Self::new(access_key_id, secret_access_key, region.to_owned())
    }

    /// Checks one request as received; `path_and_query` as it came on the wire (still
    /// percent-encoded).
    pub fn check(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), Refusal> {
        let Some(authorization) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(Refusal::new(
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            ));
        };
        let authorization = parse(authorization.as_bytes(), &self.region)?;
        if self.access_key_id.is_empty() || authorization.access_key_id != self.access_key_id {
            return Err(Refusal::new(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ));
        }
        let Some(date) = headers
            .get("x-amz-date")
            .and_then(|value| value.to_str().ok())
        else {
            return Err(Refusal::incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a \
                 'Date' header.",
            ));
        };
        let Some(signed_at) = parse_amz_date(date) else {
            return Err(Refusal::incomplete(&format!(
                "Date must be in ISO-8601 'basic format'. Got '{date}'. See \
                 http://en.wikipedia.org/wiki/ISO_8601"
            )));
        };
        if !date.starts_with(authorization.date) {
            return Err(Refusal::invalid(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of \
                 date from HTTP",
            ));
        }
        let skew = now
            .duration_since(signed_at)
            .or_else(|early| Ok::<_, ()>(early.duration()))
            .unwrap_or_default();
        if skew > SKEW {
            return Err(Refusal::invalid(&format!(
                "Signature expired: {date} is now earlier or later than 5 minutes from the \
                 harness's clock."
            )));
        }
        let expected = self.signature(
            method,
            path_and_query,
            headers,
            &authorization.signed_headers,
            body,
            signed_at,
        )?;
        if !same_in_constant_time(expected.as_bytes(), authorization.signature.as_bytes()) {
            return Err(Refusal::invalid(
                "The request signature we calculated does not match the signature you \
                 provided. Check your AWS Secret Access Key and signing method. Consult the \
                 service documentation for details.",
            ));
        }
        Ok(())
    }

    /// The signature of the request with exactly the headers it says it signed, as the
    /// SDK computes it (`aws-sigv4`, the SDK's own signer): the path encoded twice, as
    /// every service but S3 expects, and no header left out.
    fn signature(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        signed_headers: &[&str],
        body: &[u8],
        signed_at: SystemTime,
    ) -> Result<String, Refusal> {
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("localhost");
        let token = headers
            .get("x-amz-security-token")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut signed = Vec::with_capacity(signed_headers.len());
        for name in signed_headers {
            // Re-added by the signer from the date and the identity.
            if matches!(*name, "x-amz-date" | "x-amz-security-token") {
                continue;
            }
            for value in headers.get_all(*name) {
                let value = value
                    .to_str()
                    .map_err(|_| Refusal::incomplete("A signed header is not text."))?;
                signed.push((*name, value));
            }
        }
        let identity = Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            token,
            None,
            "local-dev",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.excluded_headers = None;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("execute-api")
            .time(signed_at)
            .settings(settings)
            .build()
            .map_err(|_| Refusal::incomplete("The signature could not be checked."))?
            .into();
        let uri = format!("http://{host}{path_and_query}");
        let request =
            SignableRequest::new(method, uri, signed.into_iter(), SignableBody::Bytes(body))
                .map_err(|_| {
                    Refusal::incomplete("The request could not be read for its signature.")
                })?;
        let output = sign(request, &params)
            .map_err(|_| Refusal::incomplete("The signature could not be checked."))?;
        Ok(output.signature().to_owned())
    }
}

/// The `Authorization` header's parts, held to this region's `execute-api`
/// (`Credential=KEY/DATE/REGION/SERVICE/aws4_request`, `SignedHeaders=…`, `Signature=…`).
fn parse<'a>(authorization: &'a [u8], region: &str) -> Result<Authorization<'a>, Refusal> {
    const INCOMPLETE: &str = "Authorization header requires 'Credential' parameter. \
         Authorization header requires 'Signature' parameter. Authorization header requires \
         'SignedHeaders' parameter.";
    let Ok(authorization) = std::str::from_utf8(authorization) else {
        return Err(Refusal::incomplete(INCOMPLETE));
    };
    let Some(parameters) = authorization.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err(Refusal::incomplete(INCOMPLETE));
    };
    let parameter = |name: &str| {
        parameters
            .split(',')
            .map(str::trim)
            .find_map(|p| p.strip_prefix(name))
    };
    let (Some(credential), Some(signed_headers), Some(signature)) = (
        parameter("Credential="),
        parameter("SignedHeaders="),
        parameter("Signature="),
    ) else {
        return Err(Refusal::incomplete(INCOMPLETE));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, scoped_region, service, "aws4_request"] = scope.as_slice() else {
        return Err(Refusal::incomplete(
            "Credential must have exactly 5 slash-delimited elements, e.g. \
             keyid/date/region/service/term",
        ));
    };
    if *service != "execute-api" {
        return Err(Refusal::invalid(
            "Credential should be scoped to correct service: 'execute-api'. ",
        ));
    }
    if *scoped_region != region {
        return Err(Refusal::invalid(
            "Credential should be scoped to a valid region. ",
        ));
    }
    Ok(Authorization {
        access_key_id,
        date,
        signed_headers: signed_headers.split(';').collect(),
        signature,
    })
}

/// Whether two signatures are equal, looking at every byte whatever the first difference.
fn same_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `X-Amz-Date` (`20261206T221500Z`) as a time.
fn parse_amz_date(date: &str) -> Option<SystemTime> {
    let parsed = chrono::NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ").ok()?;
    let seconds = u64::try_from(parsed.and_utc().timestamp()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGION: &str = "eu-west-1";

    fn verifier() -> Verifier {
        Verifier::new("AKIDLOCAL".into(), "local-secret".into(), REGION.into())
    }

    /// Headers for a request signed by the SDK's signer with `key`/`secret`, at `at`.
    fn signed(
        key: &str,
        secret: &str,
        region: &str,
        service: &str,
        path: &str,
        body: &[u8],
        at: SystemTime,
    ) -> HeaderMap {
        let identity = Credentials::new(key, secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(service)
            .time(at)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let content_type = [("content-type", "application/json")];
        let request = SignableRequest::new(
            "POST",
            format!("http://127.0.0.1:3000{path}"),
            content_type.into_iter(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(request, &params).unwrap().into_parts();
        let mut request = axum::http::Request::builder()
            .method("POST")
            .uri(format!("http://127.0.0.1:3000{path}"))
            .header("host", "127.0.0.1:3000")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        instructions.apply_to_request_http1x(&mut request);
        request.headers().clone()
    }

    fn refused(result: Result<(), Refusal>) -> Option<&'static str> {
        result.err().map(|refusal| refusal.error_type)
    }

    #[test]
    fn a_request_signed_for_this_api_with_its_key_passes_and_any_change_is_caught() {
        let now = SystemTime::now();
        let path = "/local/@connections/AbCdEfGhIjKlMnO%3D";
        let body = br#"{"type":"pong"}"#;
        let sign_as =
            |key: &str, secret: &str| signed(key, secret, REGION, "execute-api", path, body, now);
        let headers = sign_as("AKIDLOCAL", "local-secret");
        let check = |path: &str, headers: &HeaderMap, body: &[u8], at: SystemTime| {
            verifier().check("POST", path, headers, body, at)
        };
        assert_eq!(check(path, &headers, body, now), Ok(()));
        assert_eq!(
            check(path, &headers, body, now + Duration::from_secs(60)),
            Ok(())
        );

        let mismatch = Some("InvalidSignatureException");
        assert_eq!(refused(check(path, &headers, b"{}", now)), mismatch);
        assert_eq!(
            refused(check("/local/@connections/Other%3D", &headers, body, now)),
            mismatch
        );
        assert_eq!(
            refused(verifier().check("DELETE", path, &headers, body, now)),
            mismatch
        );
        let mut changed = headers.clone();
        changed.insert("content-type", "text/plain".parse().unwrap());
        assert_eq!(refused(check(path, &changed, body, now)), mismatch);
        let other_secret = sign_as("AKIDLOCAL", "not-it");
        assert_eq!(refused(check(path, &other_secret, body, now)), mismatch);
        assert_eq!(
            refused(check(
                path,
                &headers,
                body,
                now + SKEW + Duration::from_secs(2)
            )),
            mismatch,
            "expired"
        );
        assert_eq!(
            refused(check(
                path,
                &headers,
                body,
                now - SKEW - Duration::from_secs(2)
            )),
            mismatch,
            "from the future"
        );

        // Signed by the SDK's signer with this key and secret, for another region or
        // service: the scope is checked before any signature is computed.
        for (region, service) in [("us-east-1", "execute-api"), (REGION, "sqs")] {
            let elsewhere = signed(
                "AKIDLOCAL",
                "local-secret",
                region,
                service,
                path,
                body,
                now,
            );
            assert_eq!(
                refused(check(path, &elsewhere, body, now)),
                mismatch,
                "{region} {service}"
            );
        }

        let other_key = sign_as("AKIDOTHER", "local-secret");
        assert_eq!(
            refused(check(path, &other_key, body, now)),
            Some("UnrecognizedClientException")
        );
        let mut unsigned = headers.clone();
        unsigned.remove("authorization");
        assert_eq!(
            refused(check(path, &unsigned, body, now)),
            Some("MissingAuthenticationTokenException")
        );
        let mut undated = headers.clone();
        undated.remove("x-amz-date");
        assert_eq!(
            refused(check(path, &undated, body, now)),
            Some("IncompleteSignatureException")
        );
    }

    #[test]
    fn a_signature_s_scope_is_held_to_this_region_and_execute_api() {
        let scoped = |scope: &str| {
            format!(
                "AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host;x-amz-date, \
                 Signature=0123abcd"
            )
        };
        let check = |header: &str| parse(header.as_bytes(), REGION).err().map(|r| r.error_type);
        assert_eq!(
            check(&scoped("AKID/20261206/eu-west-1/execute-api/aws4_request")),
            None
        );
        assert_eq!(
            check(&scoped("AKID/20261206/us-east-1/execute-api/aws4_request")),
            Some("InvalidSignatureException")
        );
        assert_eq!(
            check(&scoped("AKID/20261206/eu-west-1/sqs/aws4_request")),
            Some("InvalidSignatureException")
        );
        for malformed in [
            scoped("AKID/20261206/eu-west-1/execute-api"),
            scoped("AKID/20261206/eu-west-1/execute-api/aws4_request/extra"),
            "AWS4-HMAC-SHA256 Credential=AKID/20261206/eu-west-1/execute-api/aws4_request"
                .to_owned(),
            "Basic YTpi".to_owned(),
            String::new(),
        ] {
            assert_eq!(
                check(&malformed),
                Some("IncompleteSignatureException"),
                "{malformed}"
            );
        }
        assert_eq!(
            parse(&[0xff, 0xfe], REGION).err().map(|r| r.error_type),
            Some("IncompleteSignatureException")
        );
    }

    #[test]
    fn amz_dates_parse_to_the_second() {
        let at = parse_amz_date("20261206T221500Z").unwrap();
        let seconds = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(seconds, 1_796_595_300);
        assert_eq!(parse_amz_date("2026-12-06T22:15:00Z"), None);
        assert_eq!(parse_amz_date(""), None);
    }

    #[test]
    fn the_secret_stays_out_of_debug() {
        let printed = format!("{:?}", verifier());
        assert!(printed.contains("AKIDLOCAL"));
        assert!(!printed.contains("local-secret"), "{printed}");
    }
}
