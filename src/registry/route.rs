//! OCI distribution API paths as types. Pure parsing, no I/O.
//!
//! The proxy forwards the original bytes of every path; these types only
//! tell it what a path means, so a path that does not parse is simply
//! "not a registry route" and passes through untouched.

use percent_encoding::percent_decode_str;

/// What a request path addresses in the registry API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/` — the API version check.
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: String, digest: String },
    /// `/v2/<name>/blobs/uploads/` — opens an upload session (or mounts).
    UploadStart { name: String },
    /// `/v2/<name>/blobs/uploads/<session>` — PATCH, PUT, GET or DELETE
    /// of an open upload session.
    UploadSession { name: String, session: String },
    /// `/v2/<name>/manifests/<reference>` — a tag or a digest.
    Manifest { name: String, reference: String },
    /// `/v2/<name>/tags/list`
    Tags { name: String },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: String, digest: String },
    /// Anything else: token endpoints, health checks, other APIs.
    Other,
}

impl Route {
    /// Parses the path part of a request target (no query string).
    pub fn parse(path: &str) -> Route {
        let Some(rest) = path.strip_prefix("/v2/") else {
            return if path == "/v2" {
                Route::Base
            } else {
                Route::Other
            };
        };
        let Some(segments) = decode_segments(rest) else {
            return Route::Other;
        };
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match segments.as_slice() {
            [] | [""] => Route::Base,
            ["_catalog"] => Route::Catalog,
            [name @ .., "blobs", "uploads", ""] | [name @ .., "blobs", "uploads"] => {
                with_name(name, |name| Route::UploadStart { name })
            }
            [name @ .., "blobs", "uploads", session] => {
                with_name(name, |name| Route::UploadSession {
                    name,
                    session: session.to_string(),
                })
            }
            [name @ .., "blobs", digest] if is_digest(digest) => {
                with_name(name, |name| Route::Blob {
                    name,
                    digest: digest.to_string(),
                })
            }
            [name @ .., "manifests", reference] if is_reference(reference) => {
                with_name(name, |name| Route::Manifest {
                    name,
                    reference: reference.to_string(),
                })
            }
            [name @ .., "tags", "list"] => with_name(name, |name| Route::Tags { name }),
            [name @ .., "referrers", digest] if is_digest(digest) => {
                with_name(name, |name| Route::Referrers {
                    name,
                    digest: digest.to_string(),
                })
            }
            _ => Route::Other,
        }
    }

    /// The repository name, for routes that have one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Route::Blob { name, .. }
            | Route::UploadStart { name }
            | Route::UploadSession { name, .. }
            | Route::Manifest { name, .. }
            | Route::Tags { name }
            | Route::Referrers { name, .. } => Some(name),
            Route::Base | Route::Catalog | Route::Other => None,
        }
    }

    /// Whether requests on this route carry blob bytes towards the registry.
    pub fn is_upload(&self) -> bool {
        matches!(
            self,
            Route::UploadStart { .. } | Route::UploadSession { .. }
        )
    }
}

/// Splits on `/` first and percent-decodes each segment after, so an
/// encoded `%2F` can never invent a path component. `None` if a segment
/// is not valid UTF-8 once decoded or decodes to contain a `/`.
fn decode_segments(rest: &str) -> Option<Vec<String>> {
    rest.split('/')
        .map(|raw| {
            let decoded = percent_decode_str(raw).decode_utf8().ok()?;
            (!decoded.contains('/')).then(|| decoded.into_owned())
        })
        .collect()
}

fn with_name(components: &[&str], route: impl FnOnce(String) -> Route) -> Route {
    if is_repository_name(components) {
        route(components.join("/"))
    } else {
        Route::Other
    }
}

/// A repository name per the distribution spec: one or more components of
/// `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
pub fn is_repository_name(components: &[&str]) -> bool {
    !components.is_empty() && components.iter().all(|c| is_name_component(c))
}

fn is_name_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return false;
    }
    // Between alphanumeric runs: exactly ".", "_" or "__", or any run of "-".
    let mut separator = String::new();
    for b in bytes {
        if alnum(b) {
            let ok = matches!(separator.as_str(), "" | "." | "_" | "__")
                || separator.bytes().all(|s| s == b'-');
            if !ok {
                return false;
            }
            separator.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            separator.push(*b as char);
        } else {
            return false;
        }
    }
    true
}

/// A digest `algorithm:encoded`. Registered algorithms get their exact
/// length checked; others only the character sets of the spec.
pub fn is_digest(s: &str) -> bool {
    let Some((algorithm, encoded)) = s.split_once(':') else {
        return false;
    };
    let hex_of = |len: usize| {
        encoded.len() == len
            && encoded
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match algorithm {
        "sha256" => hex_of(64),
        "sha512" => hex_of(128),
        _ => is_digest_algorithm(algorithm) && is_digest_encoded(encoded),
    }
}

fn is_digest_algorithm(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut previous_was_separator = true;
    for b in s.bytes() {
        let separator = matches!(b, b'+' | b'.' | b'_' | b'-');
        if !(separator || alnum(b)) || (separator && previous_was_separator) {
            return false;
        }
        previous_was_separator = separator;
    }
    !previous_was_separator
}

fn is_digest_encoded(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
}

/// A manifest reference: a digest or a tag (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`).
pub fn is_reference(s: &str) -> bool {
    is_digest(s) || is_tag(s)
}

fn is_tag(s: &str) -> bool {
    let bytes = s.as_bytes();
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    bytes.len() <= 128
        && bytes.first().is_some_and(word)
        && bytes.iter().all(|b| word(b) || matches!(b, b'.' | b'-'))
}

/// Iterates `key=value` pairs of a query string, values percent-decoded
/// (`+` is left alone: registries do not use form encoding).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, String)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (
            key,
            percent_decode_str(value).decode_utf8_lossy().into_owned(),
        )
    })
}

/// The value of the first `key` parameter, if any.
pub fn query_value(query: &str, key: &str) -> Option<String> {
    query_pairs(query).find(|(k, _)| *k == key).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";

    fn sha512() -> String {
        format!("sha512:{}", "ab".repeat(64))
    }

    #[test]
    fn blob_with_multi_component_name() {
        let route = Route::parse(&format!("/v2/team/sub/app/blobs/{SHA256}"));
        assert_eq!(
            route,
            Route::Blob {
                name: "team/sub/app".into(),
                digest: SHA256.into()
            }
        );
    }

    #[test]
    fn blob_with_sha512_digest() {
        let digest = sha512();
        let route = Route::parse(&format!("/v2/app/blobs/{digest}"));
        assert_eq!(
            route,
            Route::Blob {
                name: "app".into(),
                digest
            }
        );
    }

    #[test]
    fn percent_encoded_colon_in_digest_is_decoded() {
        let encoded = SHA256.replace(':', "%3A");
        let route = Route::parse(&format!("/v2/app/blobs/{encoded}"));
        assert_eq!(
            route,
            Route::Blob {
                name: "app".into(),
                digest: SHA256.into()
            }
        );
    }

    #[test]
    fn encoded_slash_never_makes_a_component() {
        assert_eq!(
            Route::parse(&format!("/v2/a%2Fb/blobs/{SHA256}")),
            Route::Other
        );
    }

    #[test]
    fn invalid_names_are_not_routes() {
        for name in ["App", "-app", "app-", "a..b", "a___b", "a b", "a%20b", ""] {
            let path = format!("/v2/{name}/blobs/{SHA256}");
            assert_eq!(Route::parse(&path), Route::Other, "{name}");
        }
    }

    #[test]
    fn valid_name_separators() {
        for name in ["a.b", "a_b", "a__b", "a-b", "a---b", "0x/y9"] {
            let route = Route::parse(&format!("/v2/{name}/tags/list"));
            assert_eq!(route, Route::Tags { name: name.into() }, "{name}");
        }
    }

    #[test]
    fn invalid_digests_are_not_blob_routes() {
        let short = &SHA256[..SHA256.len() - 1];
        let upper = SHA256.to_uppercase().replace("SHA256", "sha256");
        for digest in [short, upper.as_str(), "sha256", ":abc", "md5:", "sha256:zz"] {
            let path = format!("/v2/app/blobs/{digest}");
            assert_eq!(Route::parse(&path), Route::Other, "{digest}");
        }
    }

    #[test]
    fn unregistered_algorithm_follows_the_grammar() {
        assert!(is_digest("blake3+x:AbC=_-"));
        assert!(!is_digest("+blake3:abc"));
        assert!(!is_digest("blake3-:abc"));
    }

    #[test]
    fn upload_start_with_and_without_trailing_slash() {
        let start = Route::UploadStart {
            name: "team/app".into(),
        };
        assert_eq!(Route::parse("/v2/team/app/blobs/uploads/"), start);
        assert_eq!(Route::parse("/v2/team/app/blobs/uploads"), start);
    }

    #[test]
    fn upload_session_is_not_a_digest() {
        let route = Route::parse("/v2/app/blobs/uploads/1f0e-42");
        assert_eq!(
            route,
            Route::UploadSession {
                name: "app".into(),
                session: "1f0e-42".into()
            }
        );
        assert!(route.is_upload());
    }

    #[test]
    fn repository_may_contain_the_word_blobs() {
        let route = Route::parse(&format!("/v2/blobs/blobs/{SHA256}"));
        assert_eq!(
            route,
            Route::Blob {
                name: "blobs".into(),
                digest: SHA256.into()
            }
        );
    }

    #[test]
    fn trailing_slash_after_digest_is_not_a_blob() {
        assert_eq!(
            Route::parse(&format!("/v2/app/blobs/{SHA256}/")),
            Route::Other
        );
    }

    #[test]
    fn manifests_by_tag_and_digest() {
        let by_tag = Route::parse("/v2/app/manifests/v1.2_rc-3");
        assert_eq!(
            by_tag,
            Route::Manifest {
                name: "app".into(),
                reference: "v1.2_rc-3".into()
            }
        );
        let by_digest = Route::parse(&format!("/v2/app/manifests/{SHA256}"));
        assert_eq!(by_digest.name(), Some("app"));
        assert_eq!(Route::parse("/v2/app/manifests/.bad"), Route::Other);
    }

    #[test]
    fn base_catalog_referrers_and_others() {
        assert_eq!(Route::parse("/v2/"), Route::Base);
        assert_eq!(Route::parse("/v2"), Route::Base);
        assert_eq!(Route::parse("/v2/_catalog"), Route::Catalog);
        assert!(matches!(
            Route::parse(&format!("/v2/app/referrers/{SHA256}")),
            Route::Referrers { .. }
        ));
        assert_eq!(Route::parse("/token"), Route::Other);
        assert_eq!(Route::parse("/v1/app/blobs/x"), Route::Other);
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let query = format!("_state=a%2Bb&digest={}", SHA256.replace(':', "%3A"));
        assert_eq!(query_value(&query, "digest").as_deref(), Some(SHA256));
        assert_eq!(query_value(&query, "_state").as_deref(), Some("a+b"));
        assert_eq!(query_value(&query, "mount"), None);
        assert_eq!(query_value("mount", "mount").as_deref(), Some(""));
    }
}
