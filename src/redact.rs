//! Secrets never leave regproxy: every header, query string and JSON body
//! that reaches a log, the flow log, a HAR file or a report goes through
//! [`redact`] first.
//!
//! Credentials keep their scheme (`Bearer <redacted>`), so a reader can
//! still tell which kind of authentication a client used.

use serde_json::Value;

/// What a secret is replaced with.
pub const MARK: &str = "<redacted>";

/// Something regproxy is about to write down.
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    /// A request or response header: its name and value.
    Header(&'a str, &'a str),
    /// A URL query string, without the `?`.
    Query(&'a str),
    /// A JSON body (manifests, registry errors, token responses).
    JsonBody(&'a str),
}

/// The text to write down in place of `field`. A JSON body that does not
/// parse comes back as `None`: it cannot be checked, so it is not kept.
pub fn redact(field: Field<'_>) -> Option<String> {
    match field {
        Field::Header(name, value) => Some(header(name, value)),
        Field::Query(query) => Some(query_string(query)),
        Field::JsonBody(text) => json_body(text),
    }
}

fn header(name: &str, value: &str) -> String {
    let name = name.to_ascii_lowercase();
    if matches!(name.as_str(), "authorization" | "proxy-authorization") {
        // `Bearer abc` keeps `Bearer`; a bare credential keeps nothing.
        return match value.split_once(' ') {
            Some((scheme, _)) => format!("{scheme} {MARK}"),
            None => MARK.to_owned(),
        };
    }
    if matches!(name.as_str(), "cookie" | "set-cookie") || is_secret_name(&name) {
        return MARK.to_owned();
    }
    // Redirects to blob storage carry pre-signed URLs.
    if matches!(name.as_str(), "location" | "content-location") {
        if let Some((url, query)) = value.split_once('?') {
            return format!("{url}?{}", query_string(query));
        }
    }
    value.to_owned()
}

fn query_string(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_name(&decoded(key)) => format!("{key}={MARK}"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A body with nothing to hide comes back byte for byte: a manifest must
/// keep the bytes its digest was computed over.
fn json_body(text: &str) -> Option<String> {
    let mut value: Value = serde_json::from_str(text).ok()?;
    if redact_json(&mut value) {
        serde_json::to_string(&value).ok()
    } else {
        Some(text.to_owned())
    }
}

/// Replaces secret fields in place; says whether there were any.
fn redact_json(value: &mut Value) -> bool {
    match value {
        Value::Object(fields) => {
            let mut changed = false;
            for (key, field) in fields.iter_mut() {
                if is_secret_name(key) && !field.is_object() && !field.is_array() {
                    *field = Value::String(MARK.to_owned());
                    changed = true;
                } else {
                    changed |= redact_json(field);
                }
            }
            changed
        }
        Value::Array(items) => {
            // Every item, not just up to the first secret.
            let mut changed = false;
            for item in items {
                changed |= redact_json(item);
            }
            changed
        }
        _ => false,
    }
}

/// Names of fields, parameters and headers whose values are credentials:
/// registry tokens (`token`, `access_token`, `refresh_token`), passwords,
/// docker's `auth` and `X-Registry-Auth`, API keys, and the signatures of
/// pre-signed blob URLs (S3, GCS, Azure `sig`).
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    const EXACT: [&str; 4] = ["sig", "auth", "x-auth", "x-registry-auth"];
    const PARTS: [&str; 7] = [
        "token",
        "password",
        "secret",
        "signature",
        "credential",
        "api-key",
        "apikey",
    ];
    EXACT.contains(&name.as_str()) || PARTS.iter().any(|part| name.contains(part))
}

/// A query key as the server will read it: `%74oken` is `token`.
fn decoded(key: &str) -> String {
    percent_encoding::percent_decode_str(key)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(name: &str, value: &str) -> String {
        redact(Field::Header(name, value)).unwrap()
    }

    #[test]
    fn authorization_keeps_its_scheme() {
        assert_eq!(
            header_of("Authorization", "Bearer eyJhbGciOi.x.y"),
            "Bearer <redacted>"
        );
        assert_eq!(
            header_of("authorization", "Basic dXNlcjpwYXNz"),
            "Basic <redacted>"
        );
        assert_eq!(
            header_of("Proxy-Authorization", "Basic abc"),
            "Basic <redacted>"
        );
        assert_eq!(header_of("Authorization", "opaque"), "<redacted>");
    }

    #[test]
    fn cookies_and_token_headers_are_hidden() {
        assert_eq!(header_of("Cookie", "session=abc"), MARK);
        assert_eq!(header_of("Set-Cookie", "session=abc; Path=/"), MARK);
        assert_eq!(header_of("X-Auth-Token", "abc"), MARK);
        assert_eq!(header_of("Private-Token", "abc"), MARK);
    }

    #[test]
    fn ordinary_headers_are_kept() {
        let challenge = "Bearer realm=\"https://auth.test/token\",service=\"reg\"";
        assert_eq!(header_of("WWW-Authenticate", challenge), challenge);
        assert_eq!(
            header_of("Content-Type", "application/json"),
            "application/json"
        );
        assert_eq!(
            header_of("Docker-Content-Digest", "sha256:abc"),
            "sha256:abc"
        );
    }

    #[test]
    fn token_parameters_are_hidden_in_queries() {
        let query = "scope=repository%3Aapp%3Apush&access_token=abc&service=reg&token=t&x";
        assert_eq!(
            redact(Field::Query(query)).unwrap(),
            "scope=repository%3Aapp%3Apush&access_token=<redacted>&service=reg&token=<redacted>&x"
        );
        let presigned = "X-Amz-Credential=AK%2F1&X-Amz-Signature=ff&X-Amz-Expires=60&sig=s";
        assert_eq!(
            redact(Field::Query(presigned)).unwrap(),
            "X-Amz-Credential=<redacted>&X-Amz-Signature=<redacted>&X-Amz-Expires=60&sig=<redacted>"
        );
        assert_eq!(
            redact(Field::Query("_state=abc&digest=sha256%3A1")).unwrap(),
            "_state=abc&digest=sha256%3A1"
        );
    }

    #[test]
    fn token_response_fields_are_hidden() {
        let body = r#"{"token":"t1","access_token":"t2","refresh_token":"t3","expires_in":300}"#;
        let redacted = redact(Field::JsonBody(body)).unwrap();
        for secret in ["t1", "t2", "t3"] {
            assert!(!redacted.contains(&format!("\"{secret}\"")), "{redacted}");
        }
        assert!(redacted.contains("\"expires_in\":300"), "{redacted}");
    }

    #[test]
    fn registry_errors_and_manifests_are_kept() {
        let body = r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown","detail":"sha256:1"}]}"#;
        assert_eq!(redact(Field::JsonBody(body)).unwrap(), body);
    }

    #[test]
    fn nested_secrets_are_found() {
        let body = r#"{"auths":[{"password":"p","user":"u"}]}"#;
        assert_eq!(
            redact(Field::JsonBody(body)).unwrap(),
            r#"{"auths":[{"password":"<redacted>","user":"u"}]}"#
        );
    }

    #[test]
    fn disguised_and_redirected_secrets_are_hidden() {
        assert_eq!(
            redact(Field::Query("%74oken=x&pass%77ord=y&n=1")).unwrap(),
            "%74oken=<redacted>&pass%77ord=<redacted>&n=1"
        );
        assert_eq!(
            header_of("Location", "https://s3.test/b?X-Amz-Signature=ff&x=1"),
            "https://s3.test/b?X-Amz-Signature=<redacted>&x=1"
        );
        assert_eq!(header_of("X-Registry-Auth", "e30="), MARK);
        assert_eq!(header_of("Apikey", "k"), MARK);
        let body = r#"{"auths":{"r.test":{"auth":"dXNlcjpwYXNz"}}}"#;
        assert!(!redact(Field::JsonBody(body))
            .unwrap()
            .contains("dXNlcjpwYXNz"));
    }

    #[test]
    fn unparseable_json_is_not_kept() {
        assert_eq!(redact(Field::JsonBody("{\"token\": \"abc")), None);
    }
}
