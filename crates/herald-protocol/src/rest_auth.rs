//! Signed REST requests (Pusher HTTP API, auth_version 1.0).
//!
//! The string to sign is `METHOD\nPATH\nquery`, where `query` is every query
//! parameter except `auth_signature`, keys lower-cased, sorted by key, joined
//! as `k=v` with `&`, values not URL-escaped. POST bodies are bound to the
//! signature through `body_md5`.

use md5::{Digest, Md5};

/// How far a request's `auth_timestamp` may be from the server clock.
pub const MAX_TIMESTAMP_SKEW_SECS: u64 = 600;

/// Why a REST request's signature was refused (all map to HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestAuthError {
    #[error("missing query parameter {0}")]
    MissingParam(&'static str),
    #[error("unknown auth_key")]
    UnknownKey,
    #[error("auth_timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("auth_timestamp is more than {MAX_TIMESTAMP_SKEW_SECS} s away from the server time")]
    StaleTimestamp,
    #[error("unsupported auth_version (expected 1.0)")]
    BadVersion,
    #[error("body_md5 does not match the request body")]
    BodyMd5Mismatch,
    #[error("invalid auth_signature")]
    BadSignature,
}

/// One request as it reached the server.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Decoded query parameters, in any order.
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
}

impl SignedRequest<'_> {
    fn param(&self, name: &'static str) -> Result<&str, RestAuthError> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .ok_or(RestAuthError::MissingParam(name))
    }

    /// The `auth_key` the request claims, to pick the app's secret.
    pub fn auth_key(&self) -> Result<&str, RestAuthError> {
        self.param("auth_key")
    }

    /// Verifies the request against the app's key and secret at `now_secs`.
    pub fn verify(&self, app_key: &str, secret: &str, now_secs: u64) -> Result<(), RestAuthError> {
        if self.auth_key()? != app_key {
            return Err(RestAuthError::UnknownKey);
        }
        let timestamp: u64 = self.param("auth_timestamp")?.parse().map_err(|_| RestAuthError::BadTimestamp)?;
        if timestamp.abs_diff(now_secs) > MAX_TIMESTAMP_SKEW_SECS {
            return Err(RestAuthError::StaleTimestamp);
        }
        if self.param("auth_version")? != "1.0" {
            return Err(RestAuthError::BadVersion);
        }
        let signature = self.param("auth_signature")?;
        match self.param("body_md5") {
            Ok(md5) if !md5.eq_ignore_ascii_case(&body_md5(self.body)) => return Err(RestAuthError::BodyMd5Mismatch),
            Err(_) if !self.body.is_empty() => return Err(RestAuthError::MissingParam("body_md5")),
            _ => {}
        }
        if crate::sign::verify(secret, &self.string_to_sign(), signature) {
            Ok(())
        } else {
            Err(RestAuthError::BadSignature)
        }
    }

    /// `METHOD\nPATH\nsorted lower-cased params` (without `auth_signature`).
    pub fn string_to_sign(&self) -> String {
        let mut params: Vec<(String, &str)> = self
            .query
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
            .collect();
        params.sort();
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}\n{}\n{}", self.method.to_ascii_uppercase(), self.path, query.join("&"))
    }
}

/// Hex MD5 of a request body, as `body_md5` carries it.
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// Signs a request the way a Pusher server SDK does: returns the full query
/// (with `auth_*` and `body_md5`) to append to `path`. Used by tests and tools.
pub fn sign_request(
    method: &str,
    path: &str,
    app_key: &str,
    secret: &str,
    timestamp: u64,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Vec<(String, String)> {
    let mut query: Vec<(String, String)> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    query.push(("auth_key".into(), app_key.into()));
    query.push(("auth_timestamp".into(), timestamp.to_string()));
    query.push(("auth_version".into(), "1.0".into()));
    if !body.is_empty() {
        query.push(("body_md5".into(), body_md5(body)));
    }
    let request = SignedRequest { method, path, query: &query, body };
    let signature = crate::sign::sign(secret, &request.string_to_sign());
    query.push(("auth_signature".into(), signature));
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn check(method: &str, query: &[(String, String)], body: &[u8], now: u64) -> Result<(), RestAuthError> {
        SignedRequest { method, path: "/apps/1/events", query, body }.verify("key", "secret", now)
    }

    #[test]
    fn signed_requests_verify() {
        let body = br#"{"name":"e","channel":"c","data":"{}"}"#;
        let q = sign_request("POST", "/apps/1/events", "key", "secret", NOW, &[], body);
        assert_eq!(check("POST", &q, body, NOW), Ok(()));
        let q = sign_request("GET", "/apps/1/events", "key", "secret", NOW, &[("info", "user_count")], b"");
        assert_eq!(check("GET", &q, b"", NOW + 599), Ok(()));
    }

    #[test]
    fn every_tamper_is_caught() {
        let body = br#"{"a":1}"#;
        let q = sign_request("POST", "/apps/1/events", "key", "secret", NOW, &[], body);
        assert_eq!(check("POST", &q, br#"{"a":2}"#, NOW), Err(RestAuthError::BodyMd5Mismatch));
        assert_eq!(check("POST", &q, body, NOW + 601), Err(RestAuthError::StaleTimestamp));
        assert_eq!(check("PUT", &q, body, NOW), Err(RestAuthError::BadSignature));
        let wrong = SignedRequest { method: "POST", path: "/apps/1/events", query: &q, body };
        assert_eq!(wrong.verify("key", "other", NOW), Err(RestAuthError::BadSignature));
        assert_eq!(wrong.verify("other", "secret", NOW), Err(RestAuthError::UnknownKey));
        let mut extra = q.clone();
        extra.push(("info".into(), "x".into()));
        assert_eq!(check("POST", &extra, body, NOW), Err(RestAuthError::BadSignature));
    }

    #[test]
    fn missing_params_are_named() {
        let q = vec![("auth_key".to_string(), "key".to_string())];
        assert_eq!(check("GET", &q, b"", NOW), Err(RestAuthError::MissingParam("auth_timestamp")));
        let body = b"{}";
        let mut q = sign_request("POST", "/apps/1/events", "key", "secret", NOW, &[], body);
        q.retain(|(k, _)| k != "body_md5");
        assert_eq!(check("POST", &q, body, NOW), Err(RestAuthError::MissingParam("body_md5")));
    }

    #[test]
    fn keys_are_case_insensitive_in_the_string_to_sign() {
        let q = vec![("B".to_string(), "2".to_string()), ("a".to_string(), "1".to_string())];
        let r = SignedRequest { method: "get", path: "/p", query: &q, body: b"" };
        assert_eq!(r.string_to_sign(), "GET\n/p\na=1&b=2");
    }
}
