//! Skip mode: what regproxy does with each request so that a client
//! uploads every layer again. Pure decisions plus the small memory of what
//! this daemon has seen uploaded.

use std::collections::HashSet;
use std::fmt;
use std::sync::Mutex;

use http::Method;

use super::route::{query_pairs, query_value, Route};

/// Query parameters of a cross-repository mount. A registry that honours
/// them answers 201 and the client skips the upload.
const MOUNT_PARAMS: [&str; 3] = ["mount", "from", "origin"];

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward unchanged.
    Pass,
    /// A blob HEAD that skip mode would fake, but this daemon saw the blob
    /// uploaded to this repository: clients that check a blob right after
    /// uploading it (the docker daemon) fail the push on a 404.
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

/// Decides what skip mode does with a request. `uploaded(name, digest)`
/// says whether this daemon saw that blob uploaded to that repository.
pub fn decide(
    skip_existing_layers: bool,
    method: &Method,
    route: &Route,
    query: Option<&str>,
    uploaded: impl Fn(&str, &str) -> bool,
) -> Verdict {
    if !skip_existing_layers {
        return Verdict::Pass;
    }
    match route {
        Route::Blob { name, digest } if method == Method::HEAD => {
            if uploaded(name, digest) {
                Verdict::PassUploadedThisSession
            } else {
                Verdict::AnswerNotFound
            }
        }
        Route::UploadStart { .. } if method == Method::POST => match query {
            Some(query) if has_mount_params(query) => Verdict::StripMount {
                query: without_mount_params(query),
            },
            _ => Verdict::Pass,
        },
        _ => Verdict::Pass,
    }
}

fn has_mount_params(query: &str) -> bool {
    query_pairs(query).any(|(key, _)| MOUNT_PARAMS.contains(&key))
}

/// The query with mount parameters removed; every other parameter keeps
/// its original bytes and order.
fn without_mount_params(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && !MOUNT_PARAMS.contains(&key)
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

/// Blobs this daemon saw uploaded, per registry host and repository.
/// Lives as long as the daemon: a restart forgets, which only means the
/// next post-upload HEAD of a forgotten blob is faked again.
#[derive(Debug, Default)]
pub struct UploadedBlobs {
    seen: Mutex<HashSet<(String, String, String)>>,
}

impl UploadedBlobs {
    pub fn record(&self, host: &str, name: &str, digest: &str) {
        let key = (host.to_owned(), name.to_owned(), digest.to_owned());
        self.lock().insert(key);
    }

    pub fn contains(&self, host: &str, name: &str, digest: &str) -> bool {
        let key = (host.to_owned(), name.to_owned(), digest.to_owned());
        self.lock().contains(&key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String, String)>> {
        // A panic while holding this lock cannot leave the set half-written
        // (insert is atomic from our side), so a poisoned lock is still good.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";

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

    fn never(_: &str, _: &str) -> bool {
        false
    }

    #[test]
    fn blob_head_is_answered_not_found_in_skip_mode() {
        let verdict = decide(true, &Method::HEAD, &blob(), None, never);
        assert_eq!(verdict, Verdict::AnswerNotFound);
        assert_eq!(verdict.action(), "fake-404");
    }

    #[test]
    fn nothing_changes_without_skip_mode() {
        let mount = Some("mount=sha256:x&from=other");
        assert_eq!(
            decide(false, &Method::HEAD, &blob(), None, never),
            Verdict::Pass
        );
        assert_eq!(
            decide(false, &Method::POST, &start(), mount, never),
            Verdict::Pass
        );
    }

    #[test]
    fn head_of_blob_uploaded_this_session_passes() {
        let uploaded = |name: &str, digest: &str| name == "team/app" && digest == DIGEST;
        let verdict = decide(true, &Method::HEAD, &blob(), None, uploaded);
        assert_eq!(verdict, Verdict::PassUploadedThisSession);
    }

    #[test]
    fn methods_other_than_head_pass() {
        for method in [Method::GET, Method::DELETE, Method::PUT, Method::OPTIONS] {
            assert_eq!(decide(true, &method, &blob(), None, never), Verdict::Pass);
        }
    }

    #[test]
    fn manifest_and_session_routes_pass() {
        let manifest = Route::Manifest {
            name: "app".into(),
            reference: "1".into(),
        };
        assert_eq!(
            decide(true, &Method::HEAD, &manifest, None, never),
            Verdict::Pass
        );
        let session = Route::UploadSession {
            name: "app".into(),
            session: "u".into(),
        };
        let query = Some("mount=x&from=y");
        assert_eq!(
            decide(true, &Method::PUT, &session, query, never),
            Verdict::Pass
        );
    }

    #[test]
    fn mount_is_stripped_in_skip_mode() {
        let query = format!("mount={}&from=team%2Fbase", DIGEST.replace(':', "%3A"));
        let verdict = decide(true, &Method::POST, &start(), Some(&query), never);
        assert_eq!(verdict, Verdict::StripMount { query: None });
    }

    #[test]
    fn other_parameters_survive_mount_stripping() {
        let query = "from=a&x=%2F1&mount=d&origin=reg.example&y";
        let verdict = decide(true, &Method::POST, &start(), Some(query), never);
        assert_eq!(
            verdict,
            Verdict::StripMount {
                query: Some("x=%2F1&y".into())
            }
        );
    }

    #[test]
    fn anonymous_mount_without_from_is_stripped_too() {
        let verdict = decide(true, &Method::POST, &start(), Some("mount=d"), never);
        assert_eq!(verdict, Verdict::StripMount { query: None });
    }

    #[test]
    fn plain_upload_start_passes() {
        let verdict = decide(true, &Method::POST, &start(), Some("digest=d"), never);
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(
            decide(true, &Method::POST, &start(), None, never),
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

    #[test]
    fn uploaded_blobs_are_kept_per_host_and_repository() {
        let blobs = UploadedBlobs::default();
        blobs.record("reg:443", "app", DIGEST);
        assert!(blobs.contains("reg:443", "app", DIGEST));
        assert!(!blobs.contains("reg:443", "other", DIGEST));
        assert!(!blobs.contains("reg:5000", "app", DIGEST));
    }
}
