//! Skip mode: what regproxy does with each request so that a client
//! uploads every layer (or every manifest) again. Pure decisions, plus the
//! small memory of what this daemon has seen pushed.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Method;

use percent_encoding::percent_decode_str;

use super::route::{is_digest, query_pairs, query_value, Route};

/// Query parameters of a cross-repository mount. A registry that honours
/// them answers 201 and the client skips the upload.
const MOUNT_PARAMS: [&str; 3] = ["mount", "from", "origin"];

/// Which existence checks regproxy answers itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkipMode {
    /// Blob HEADs get 404, mounts are stripped.
    pub layers: bool,
    /// Manifest HEADs get 404.
    pub manifests: bool,
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward unchanged.
    Pass,
    /// A HEAD that skip mode would fake, but this daemon saw that blob or
    /// manifest pushed to this repository: clients that check a blob right
    /// after uploading it (the docker daemon) fail the push on a 404.
    PassUploadedThisSession,
    /// Answer `404 Not Found` here; nothing goes upstream.
    AnswerNotFound,
    /// Forward with this query instead, the mount parameters removed, so
    /// the registry opens an ordinary upload session (202).
    StripMount { query: Option<String> },
}

impl Verdict {
    /// The word the logs use for this decision.
    pub fn action(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::PassUploadedThisSession => "pass (uploaded this session)",
            Verdict::AnswerNotFound => "fake-404",
            Verdict::StripMount { .. } => "mount-stripped",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.action())
    }
}

/// What this daemon has seen pushed to one registry, as [`decide`] asks.
pub trait PushedThisSession {
    fn blob(&self, name: &str, digest: &str) -> bool;
    fn manifest(&self, name: &str, reference: &str) -> bool;
}

/// Decides what skip mode does with a request.
pub fn decide(
    mode: SkipMode,
    method: &Method,
    route: &Route,
    query: Option<&str>,
    pushed: &impl PushedThisSession,
) -> Verdict {
    let head = method == Method::HEAD;
    match route {
        Route::Blob { name, digest } if mode.layers && head => {
            if pushed.blob(name, digest) {
                Verdict::PassUploadedThisSession
            } else {
                Verdict::AnswerNotFound
            }
        }
        Route::UploadStart { .. } if mode.layers && method == Method::POST => match query {
            Some(query) if has_mount_params(query) => Verdict::StripMount {
                query: without_mount_params(query),
            },
            _ => Verdict::Pass,
        },
        // Referrers fallback tags are an index the client reads, appends
        // to and writes back: faking their absence would drop referrers.
        Route::Manifest { reference, .. } if is_referrers_tag(reference) => Verdict::Pass,
        Route::Manifest { name, reference } if mode.manifests && head => {
            if pushed.manifest(name, reference) {
                Verdict::PassUploadedThisSession
            } else {
                Verdict::AnswerNotFound
            }
        }
        _ => Verdict::Pass,
    }
}

/// `<algorithm>-<encoded>`: the tag a client keeps the referrers index
/// under when the registry has no referrers API.
fn is_referrers_tag(reference: &str) -> bool {
    reference
        .split_once('-')
        .is_some_and(|(algorithm, encoded)| is_digest(&format!("{algorithm}:{encoded}")))
}

/// Keys are compared as the registry reads them, percent-decoded, so
/// `%6Dount=` is a mount too.
fn is_mount_key(raw: &str) -> bool {
    let key = percent_decode_str(raw).decode_utf8_lossy();
    MOUNT_PARAMS.contains(&key.as_ref())
}

fn has_mount_params(query: &str) -> bool {
    query_pairs(query).any(|(key, _)| is_mount_key(key))
}

/// The query with mount parameters removed; every other parameter keeps
/// its original bytes and order.
fn without_mount_params(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && !is_mount_key(key)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// The digest of a blob whose upload the registry just completed: the
/// final `PUT <session>?digest=` or a monolithic `POST ...?digest=`,
/// answered 201 Created.
pub fn completed_upload(
    method: &Method,
    route: &Route,
    query: Option<&str>,
    status: u16,
) -> Option<String> {
    let closes_upload = match route {
        Route::UploadSession { .. } => method == Method::PUT,
        Route::UploadStart { .. } => method == Method::POST,
        _ => false,
    };
    if !closes_upload || status != 201 {
        return None;
    }
    query.and_then(|q| query_value(q, "digest"))
}

/// The references a manifest PUT answered 201 makes known: the tag or
/// digest it was pushed by, and the digest the registry computed.
pub fn pushed_manifest<'a>(
    method: &Method,
    route: &'a Route,
    status: u16,
    digest_header: Option<&'a str>,
) -> Vec<&'a str> {
    match route {
        Route::Manifest { reference, .. } if method == Method::PUT && status == 201 => {
            let mut references = vec![reference.as_str()];
            references.extend(digest_header.filter(|d| is_digest(d)));
            references
        }
        _ => Vec::new(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Blob,
    Manifest,
}

/// How long a push is remembered. Clients check a blob right after they
/// upload it, within the same push; a later push, such as a second repair
/// through a long-running daemon, must see its existence checks faked
/// again.
pub const PUSH_MEMORY: Duration = Duration::from_secs(10 * 60);

type Key = (Kind, String, String, String);

/// Blobs and manifests this daemon saw pushed recently, per registry host
/// and repository, each forgotten [`PUSH_MEMORY`] after it was pushed.
#[derive(Debug, Default)]
pub struct SessionMemory {
    seen: Mutex<HashMap<Key, Instant>>,
}

impl SessionMemory {
    pub fn record_blob(&self, host: &str, name: &str, digest: &str) {
        self.insert(Kind::Blob, host, name, digest);
    }

    pub fn record_manifest(&self, host: &str, name: &str, reference: &str) {
        self.insert(Kind::Manifest, host, name, reference);
    }

    /// The view of one registry host that [`decide`] consults.
    pub fn at<'a>(&'a self, host: &'a str) -> impl PushedThisSession + 'a {
        HostMemory { memory: self, host }
    }

    fn insert(&self, kind: Kind, host: &str, name: &str, id: &str) {
        let key = (kind, host.to_owned(), name.to_owned(), id.to_owned());
        let now = Instant::now();
        let mut seen = self.lock();
        // Forgetting happens here, so the map never outgrows what was
        // pushed in the last few minutes.
        seen.retain(|_, pushed| now.duration_since(*pushed) < PUSH_MEMORY);
        seen.insert(key, now);
    }

    fn contains(&self, kind: Kind, host: &str, name: &str, id: &str) -> bool {
        let key = (kind, host.to_owned(), name.to_owned(), id.to_owned());
        let seen = self.lock();
        seen.get(&key)
            .is_some_and(|pushed| pushed.elapsed() < PUSH_MEMORY)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Instant>> {
        // Entries are inserted whole, so a poisoned map is still consistent.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct HostMemory<'a> {
    memory: &'a SessionMemory,
    host: &'a str,
}

impl PushedThisSession for HostMemory<'_> {
    fn blob(&self, name: &str, digest: &str) -> bool {
        self.memory.contains(Kind::Blob, self.host, name, digest)
    }

    fn manifest(&self, name: &str, reference: &str) -> bool {
        self.memory
            .contains(Kind::Manifest, self.host, name, reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";
    const LAYERS: SkipMode = SkipMode {
        layers: true,
        manifests: false,
    };
    const MANIFESTS: SkipMode = SkipMode {
        layers: false,
        manifests: true,
    };
    const OFF: SkipMode = SkipMode {
        layers: false,
        manifests: false,
    };

    fn blob() -> Route {
        Route::Blob {
            name: "team/app".into(),
            digest: DIGEST.into(),
        }
    }

    fn start() -> Route {
        Route::UploadStart {
            name: "team/app".into(),
        }
    }

    fn manifest(reference: &str) -> Route {
        Route::Manifest {
            name: "team/app".into(),
            reference: reference.into(),
        }
    }

    /// Nothing pushed yet.
    fn none() -> SessionMemory {
        SessionMemory::default()
    }

    fn decide_at(
        mode: SkipMode,
        method: Method,
        route: &Route,
        query: Option<&str>,
        memory: &SessionMemory,
    ) -> Verdict {
        decide(mode, &method, route, query, &memory.at("reg:443"))
    }

    #[test]
    fn blob_head_is_answered_not_found_in_skip_mode() {
        let verdict = decide_at(LAYERS, Method::HEAD, &blob(), None, &none());
        assert_eq!(verdict, Verdict::AnswerNotFound);
        assert_eq!(verdict.action(), "fake-404");
    }

    #[test]
    fn nothing_changes_without_skip_mode() {
        let mount = Some("mount=sha256:x&from=other");
        assert_eq!(
            decide_at(OFF, Method::HEAD, &blob(), None, &none()),
            Verdict::Pass
        );
        assert_eq!(
            decide_at(OFF, Method::POST, &start(), mount, &none()),
            Verdict::Pass
        );
        assert_eq!(
            decide_at(OFF, Method::HEAD, &manifest("1"), None, &none()),
            Verdict::Pass
        );
    }

    #[test]
    fn head_of_blob_uploaded_this_session_passes() {
        let memory = none();
        memory.record_blob("reg:443", "team/app", DIGEST);
        let verdict = decide_at(LAYERS, Method::HEAD, &blob(), None, &memory);
        assert_eq!(verdict, Verdict::PassUploadedThisSession);
    }

    #[test]
    fn blob_uploaded_elsewhere_is_still_faked() {
        let memory = none();
        memory.record_blob("reg:443", "team/other", DIGEST);
        memory.record_blob("reg:5000", "team/app", DIGEST);
        let verdict = decide_at(LAYERS, Method::HEAD, &blob(), None, &memory);
        assert_eq!(verdict, Verdict::AnswerNotFound);
    }

    #[test]
    fn methods_other_than_head_pass() {
        for method in [Method::GET, Method::DELETE, Method::PUT, Method::OPTIONS] {
            assert_eq!(
                decide_at(LAYERS, method, &blob(), None, &none()),
                Verdict::Pass
            );
        }
    }

    #[test]
    fn manifests_pass_in_layer_skip_mode() {
        let verdict = decide_at(LAYERS, Method::HEAD, &manifest("1"), None, &none());
        assert_eq!(verdict, Verdict::Pass);
        let session = Route::UploadSession {
            name: "app".into(),
            session: "u".into(),
        };
        let query = Some("mount=x&from=y");
        assert_eq!(
            decide_at(LAYERS, Method::PUT, &session, query, &none()),
            Verdict::Pass
        );
    }

    #[test]
    fn manifest_head_is_faked_in_manifest_skip_mode() {
        for reference in ["1", "latest", DIGEST] {
            let verdict = decide_at(MANIFESTS, Method::HEAD, &manifest(reference), None, &none());
            assert_eq!(verdict, Verdict::AnswerNotFound, "{reference}");
        }
        let get = decide_at(MANIFESTS, Method::GET, &manifest("1"), None, &none());
        assert_eq!(get, Verdict::Pass);
        let blob_head = decide_at(MANIFESTS, Method::HEAD, &blob(), None, &none());
        assert_eq!(blob_head, Verdict::Pass);
    }

    #[test]
    fn referrers_fallback_tag_passes() {
        let tag = DIGEST.replace(':', "-");
        let verdict = decide_at(MANIFESTS, Method::HEAD, &manifest(&tag), None, &none());
        assert_eq!(verdict, Verdict::Pass);
        let not_hex = decide_at(
            MANIFESTS,
            Method::HEAD,
            &manifest("sha256-zz"),
            None,
            &none(),
        );
        assert_eq!(not_hex, Verdict::AnswerNotFound);
    }

    #[test]
    fn manifest_pushed_this_session_passes() {
        let memory = none();
        let route = manifest("1");
        for reference in pushed_manifest(&Method::PUT, &route, 201, Some(DIGEST)) {
            memory.record_manifest("reg:443", "team/app", reference);
        }
        for reference in ["1", DIGEST] {
            let verdict = decide_at(MANIFESTS, Method::HEAD, &manifest(reference), None, &memory);
            assert_eq!(verdict, Verdict::PassUploadedThisSession, "{reference}");
        }
    }

    #[test]
    fn only_a_created_manifest_put_counts_as_pushed() {
        let route = manifest("1");
        assert!(pushed_manifest(&Method::PUT, &route, 400, Some(DIGEST)).is_empty());
        assert!(pushed_manifest(&Method::GET, &route, 201, Some(DIGEST)).is_empty());
        assert_eq!(
            pushed_manifest(&Method::PUT, &route, 201, Some("junk")),
            ["1"]
        );
    }

    #[test]
    fn mount_is_stripped_in_skip_mode() {
        let query = format!("mount={}&from=team%2Fbase", DIGEST.replace(':', "%3A"));
        let verdict = decide_at(LAYERS, Method::POST, &start(), Some(&query), &none());
        assert_eq!(verdict, Verdict::StripMount { query: None });
        assert_eq!(verdict.action(), "mount-stripped");
    }

    #[test]
    fn other_parameters_survive_mount_stripping() {
        let query = "from=a&x=%2F1&mount=d&origin=reg.example&y";
        let verdict = decide_at(LAYERS, Method::POST, &start(), Some(query), &none());
        assert_eq!(
            verdict,
            Verdict::StripMount {
                query: Some("x=%2F1&y".into())
            }
        );
    }

    #[test]
    fn percent_encoded_mount_keys_are_stripped_too() {
        let verdict = decide_at(
            LAYERS,
            Method::POST,
            &start(),
            Some("%6Dount=d&%66rom=a&x=1"),
            &none(),
        );
        assert_eq!(
            verdict,
            Verdict::StripMount {
                query: Some("x=1".into())
            }
        );
    }

    #[test]
    fn anonymous_mount_without_from_is_stripped_too() {
        let verdict = decide_at(LAYERS, Method::POST, &start(), Some("mount=d"), &none());
        assert_eq!(verdict, Verdict::StripMount { query: None });
    }

    #[test]
    fn plain_upload_start_passes() {
        let verdict = decide_at(LAYERS, Method::POST, &start(), Some("digest=d"), &none());
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(
            decide_at(LAYERS, Method::POST, &start(), None, &none()),
            Verdict::Pass
        );
    }

    #[test]
    fn completed_upload_needs_put_with_digest_and_201() {
        let session = Route::UploadSession {
            name: "app".into(),
            session: "u".into(),
        };
        let query = format!("_state=s&digest={}", DIGEST.replace(':', "%3A"));
        let done = completed_upload(&Method::PUT, &session, Some(&query), 201);
        assert_eq!(done.as_deref(), Some(DIGEST));
        assert_eq!(
            completed_upload(&Method::PUT, &session, Some(&query), 400),
            None
        );
        assert_eq!(
            completed_upload(&Method::PATCH, &session, Some(&query), 201),
            None
        );
        assert_eq!(
            completed_upload(&Method::PUT, &session, Some("_state=s"), 201),
            None
        );
    }

    #[test]
    fn monolithic_post_counts_as_completed_upload() {
        let query = format!("digest={DIGEST}");
        let done = completed_upload(&Method::POST, &start(), Some(&query), 201);
        assert_eq!(done.as_deref(), Some(DIGEST));
        assert_eq!(
            completed_upload(&Method::POST, &start(), Some(&query), 202),
            None
        );
    }
}
