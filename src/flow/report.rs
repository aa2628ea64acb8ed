//! What a push did, blob by blob, rebuilt from its flow log: the
//! existence check and who answered it, the mount attempt, how the bytes
//! were uploaded, how long that took, and how it ended. Then the manifests
//! pushed, and the errors with the registry's own error codes.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use super::record::FlowRecord;
use crate::registry::route::{query_value, Route};
use crate::stats::human_bytes;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub repositories: Vec<RepositoryReport>,
    pub manifests: Vec<ManifestPush>,
    pub errors: Vec<ErrorEntry>,
}

#[derive(Debug, Serialize)]
pub struct RepositoryReport {
    pub host: String,
    pub repository: String,
    pub blobs: Vec<BlobReport>,
}

#[derive(Debug, Default, Serialize)]
pub struct BlobReport {
    pub digest: String,
    /// From the registry's HEAD answer, or the bytes uploaded.
    pub size: Option<u64>,
    /// The first existence check: `404 faked`, `200`, `404`.
    pub check: Option<String>,
    /// `stripped`, `mounted`, or `refused` (the registry answered 202).
    pub mount: Option<String>,
    /// `monolithic` (body in POST or PUT), `chunked` (PATCH with
    /// Content-Range) or `streamed` (one PATCH without it).
    pub upload: Option<String>,
    /// Completed uploads of this blob.
    pub uploads: u32,
    pub bytes_uploaded: u64,
    pub duration_ms: f64,
    /// The status that ended it: the upload's, the mount's or the check's.
    pub status: Option<u16>,
}

impl BlobReport {
    /// MiB per second over the upload's requests.
    pub fn throughput(&self) -> Option<f64> {
        (self.bytes_uploaded > 0 && self.duration_ms > 0.0)
            .then(|| self.bytes_uploaded as f64 / (1 << 20) as f64 / (self.duration_ms / 1000.0))
    }
}

#[derive(Debug, Serialize)]
pub struct ManifestPush {
    pub host: String,
    pub repository: String,
    pub reference: String,
    pub digest: Option<String>,
    pub size: u64,
    pub status: u16,
}

#[derive(Debug, Serialize)]
pub struct ErrorEntry {
    pub method: String,
    pub url: String,
    pub status: u16,
    /// The registry's error code (`MANIFEST_BLOB_UNKNOWN`, ...) or, for a
    /// failure regproxy answered itself, its reason.
    pub code: Option<String>,
    pub message: Option<String>,
}

/// An upload session between its POST and its closing PUT.
#[derive(Debug, Default)]
struct Session {
    patches: u32,
    ranged: bool,
    bytes: u64,
    duration_ms: f64,
}

#[derive(Default)]
struct Builder {
    report: Report,
    /// (host, repository) → index in `report.repositories`.
    repositories: HashMap<(String, String), usize>,
    sessions: HashMap<(String, String), Session>,
}

impl Report {
    pub fn from_records(records: &[FlowRecord]) -> Report {
        let mut ordered: Vec<&FlowRecord> = records.iter().collect();
        ordered.sort_by_key(|r| time_key(&r.time));
        let mut builder = Builder::default();
        for record in ordered {
            builder.add(record);
        }
        builder.report
    }
}

impl Builder {
    fn add(&mut self, record: &FlowRecord) {
        self.note_error(record);
        match Route::parse(&record.path) {
            Route::Blob { name, digest } if record.method == "HEAD" => {
                self.existence_check(record, &name, &digest)
            }
            Route::UploadStart { name } if record.method == "POST" => {
                self.upload_start(record, &name)
            }
            Route::UploadSession { session, .. } if record.method == "PATCH" => self
                .sessions
                .entry((record.host.clone(), session))
                .or_default()
                .add_chunk(record),
            Route::UploadSession { name, session } if record.method == "PUT" => {
                self.upload_end(record, &name, &session)
            }
            Route::Manifest { name, reference } if record.method == "PUT" => {
                self.report.manifests.push(ManifestPush {
                    host: record.host.clone(),
                    repository: name,
                    reference,
                    digest: record
                        .response_header("docker-content-digest")
                        .map(str::to_owned),
                    size: record.bytes_up,
                    status: record.status,
                })
            }
            _ => {}
        }
    }

    fn existence_check(&mut self, record: &FlowRecord, name: &str, digest: &str) {
        // A check of a blob this daemon saw uploaded is the client
        // verifying its own upload, not deciding whether to upload.
        if record.action.starts_with("pass (") {
            return;
        }
        let blob = self.blob(&record.host, name, digest);
        if blob.check.is_some() {
            return;
        }
        blob.check = Some(match record.action.as_str() {
            "fake-404" => "404 faked".to_owned(),
            _ => record.status.to_string(),
        });
        if record.status == 200 {
            blob.size = record
                .response_header("content-length")
                .and_then(|v| v.parse().ok());
        }
        blob.status.get_or_insert(record.status);
    }

    fn upload_start(&mut self, record: &FlowRecord, name: &str) {
        let query = record.query.as_deref().unwrap_or("");
        if let Some(digest) = query_value(query, "mount") {
            let mount = match (record.action.as_str(), record.status) {
                ("mount-stripped", _) => "stripped",
                (_, 201) => "mounted",
                _ => "refused",
            };
            let blob = self.blob(&record.host, name, &digest);
            blob.mount = Some(mount.to_owned());
            if record.status == 201 {
                blob.status = Some(201);
            }
        }
        if let (Some(digest), 201) = (query_value(query, "digest"), record.status) {
            let blob = self.blob(&record.host, name, &digest);
            blob.finish_upload("monolithic", record.bytes_up, record.duration_ms, 201);
            return;
        }
        let session = record
            .response_header("location")
            .and_then(session_of_location);
        if let Some(session) = session {
            let started = Session {
                duration_ms: record.duration_ms,
                ..Session::default()
            };
            self.sessions
                .insert((record.host.clone(), session), started);
        }
    }

    fn upload_end(&mut self, record: &FlowRecord, name: &str, session_id: &str) {
        let session = self
            .sessions
            .remove(&(record.host.clone(), session_id.to_owned()))
            .unwrap_or_default();
        let Some(digest) = record
            .query
            .as_deref()
            .and_then(|q| query_value(q, "digest"))
        else {
            return;
        };
        let shape = match (session.patches, session.ranged) {
            (0, _) => "monolithic",
            (_, true) => "chunked",
            (1, false) => "streamed",
            (_, false) => "chunked",
        };
        let bytes = session.bytes + record.bytes_up;
        let duration = session.duration_ms + record.duration_ms;
        let blob = self.blob(&record.host, name, &digest);
        blob.finish_upload(shape, bytes, duration, record.status);
    }

    fn note_error(&mut self, record: &FlowRecord) {
        if !is_error(record) {
            return;
        }
        let registry_error = record
            .response_body
            .as_deref()
            .and_then(first_registry_error);
        let (code, message) = match (registry_error, &record.error) {
            (Some((code, message)), _) => (Some(code), message),
            (None, Some(error)) => (None, Some(error.clone())),
            (None, None) => (None, None),
        };
        self.report.errors.push(ErrorEntry {
            method: record.method.clone(),
            url: record.url(),
            status: record.status,
            code,
            message,
        });
    }

    fn blob(&mut self, host: &str, repository: &str, digest: &str) -> &mut BlobReport {
        let key = (host.to_owned(), repository.to_owned());
        let next = self.report.repositories.len();
        let index = *self.repositories.entry(key).or_insert(next);
        if index == next {
            self.report.repositories.push(RepositoryReport {
                host: host.to_owned(),
                repository: repository.to_owned(),
                blobs: Vec::new(),
            });
        }
        let blobs = &mut self.report.repositories[index].blobs;
        match blobs.iter().position(|b| b.digest == digest) {
            Some(at) => &mut blobs[at],
            None => {
                blobs.push(BlobReport {
                    digest: digest.to_owned(),
                    ..BlobReport::default()
                });
                blobs.last_mut().expect("just pushed")
            }
        }
    }
}

impl Session {
    fn add_chunk(&mut self, record: &FlowRecord) {
        self.patches += 1;
        self.ranged |= record.request_header("content-range").is_some();
        self.bytes += record.bytes_up;
        self.duration_ms += record.duration_ms;
    }
}

impl BlobReport {
    fn finish_upload(&mut self, shape: &str, bytes: u64, duration_ms: f64, status: u16) {
        self.upload = Some(shape.to_owned());
        self.bytes_uploaded += bytes;
        self.duration_ms += duration_ms;
        self.status = Some(status);
        if status == 201 {
            self.uploads += 1;
            self.size.get_or_insert(bytes);
        }
    }
}

/// Failures worth a reader's attention. Not the protocol's ordinary
/// answers: a 404 to an existence check, or the 401 that asks a client
/// without credentials to fetch a token.
fn is_error(record: &FlowRecord) -> bool {
    if record.error.is_some() || record.status == 0 {
        return true;
    }
    let existence_check = record.method == "HEAD" && record.status == 404;
    let challenge = record.status == 401 && record.request_header("authorization").is_none();
    record.status >= 400 && !existence_check && !challenge
}

/// `(code, message)` of the first entry of a registry error body:
/// `{"errors":[{"code":"...","message":"..."}]}`.
fn first_registry_error(body: &str) -> Option<(String, Option<String>)> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let first = value.get("errors")?.get(0)?;
    let code = first.get("code")?.as_str()?.to_owned();
    let message = first
        .get("message")
        .and_then(|m| m.as_str())
        .map(str::to_owned);
    Some((code, message))
}

/// The upload session named by a `Location` header, absolute or relative.
fn session_of_location(location: &str) -> Option<String> {
    let path = match location.split_once("://") {
        Some((_, rest)) => &rest[rest.find('/')?..],
        None => location,
    };
    let path = path.split('?').next().unwrap_or(path);
    match Route::parse(path) {
        Route::UploadSession { session, .. } => Some(session),
        _ => None,
    }
}

/// Sorts RFC 3339 times whose fractions differ in length.
fn time_key(time: &str) -> String {
    let time = time.trim_end_matches('Z');
    let (seconds, fraction) = time.split_once('.').unwrap_or((time, ""));
    format!("{seconds}.{fraction:0<9}")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for repository in &self.repositories {
            writeln!(f, "{} {}", repository.host, repository.repository)?;
            let header = [
                "BLOB", "SIZE", "CHECK", "MOUNT", "UPLOAD", "UPLOADS", "BYTES UP", "TIME", "RATE",
                "STATUS",
            ];
            let rows: Vec<Vec<String>> = repository.blobs.iter().map(blob_row).collect();
            write_table(f, &header, &rows)?;
            writeln!(f)?;
        }
        writeln!(f, "Manifests pushed")?;
        let rows: Vec<Vec<String>> = self
            .manifests
            .iter()
            .map(|m| {
                vec![
                    format!("{}/{}:{}", m.host, m.repository, m.reference),
                    m.digest
                        .as_deref()
                        .map(short_digest)
                        .unwrap_or_else(|| "-".into()),
                    human_bytes(m.size),
                    m.status.to_string(),
                ]
            })
            .collect();
        write_table(f, &["MANIFEST", "DIGEST", "SIZE", "STATUS"], &rows)?;
        writeln!(f)?;
        writeln!(f, "Errors")?;
        let rows: Vec<Vec<String>> = self
            .errors
            .iter()
            .map(|e| {
                vec![
                    e.status.to_string(),
                    e.code.clone().unwrap_or_else(|| "-".into()),
                    format!("{} {}", e.method, e.url),
                    e.message.clone().unwrap_or_default(),
                ]
            })
            .collect();
        write_table(f, &["STATUS", "CODE", "REQUEST", "MESSAGE"], &rows)
    }
}

fn blob_row(blob: &BlobReport) -> Vec<String> {
    let dash = || "-".to_owned();
    vec![
        short_digest(&blob.digest),
        blob.size.map(human_bytes).unwrap_or_else(dash),
        blob.check.clone().unwrap_or_else(dash),
        blob.mount.clone().unwrap_or_else(dash),
        blob.upload.clone().unwrap_or_else(dash),
        blob.uploads.to_string(),
        human_bytes(blob.bytes_uploaded),
        if blob.duration_ms > 0.0 {
            format!("{:.2} s", blob.duration_ms / 1000.0)
        } else {
            dash()
        },
        blob.throughput()
            .map(|t| format!("{}/s", human_bytes((t * (1 << 20) as f64) as u64)))
            .unwrap_or_else(dash),
        blob.status.map(|s| s.to_string()).unwrap_or_else(dash),
    ]
}

/// `sha256:02bf5a3d9004`: enough to tell blobs apart in a table.
fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) => format!("{algorithm}:{}", &hex[..hex.len().min(12)]),
        None => digest.to_owned(),
    }
}

fn write_table(f: &mut fmt::Formatter<'_>, header: &[&str], rows: &[Vec<String>]) -> fmt::Result {
    if rows.is_empty() {
        return writeln!(f, "  (none)");
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("  {}", padded.join("  ").trim_end())
    };
    writeln!(f, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(f, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::record::Header;

    const DIGEST: &str = "sha256:02bf5a3d9004aadfeff230f5ef195b517a5f9c86a49d99c5bad6aac787091658";

    fn record(time: &str, method: &str, path: &str, status: u16) -> FlowRecord {
        FlowRecord {
            time: format!("2026-12-03T16:00:00.{time}Z"),
            client: "127.0.0.1:1".into(),
            method: method.into(),
            scheme: "https".into(),
            host: "registry.test:443".into(),
            path: path.into(),
            query: None,
            status,
            request_headers: vec![],
            response_headers: vec![],
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 10.0,
            ttfb_ms: None,
            http_version: "HTTP/1.1".into(),
            tls_intercepted: true,
            action: "pass".into(),
            registry: None,
            request_body: None,
            response_body: None,
            error: None,
        }
    }

    fn header(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }

    /// skopeo's sequence in skip mode: faked HEAD, POST, one PATCH, PUT.
    fn skopeo_push() -> Vec<FlowRecord> {
        let mut head = record("1", "HEAD", &format!("/v2/team/app/blobs/{DIGEST}"), 404);
        head.action = "fake-404".into();
        let mut post = record("2", "POST", "/v2/team/app/blobs/uploads/", 202);
        post.response_headers = vec![header(
            "Location",
            "https://registry.test/v2/team/app/blobs/uploads/u1?_state=x",
        )];
        let mut patch = record("3", "PATCH", "/v2/team/app/blobs/uploads/u1", 202);
        patch.bytes_up = 3 << 20;
        patch.duration_ms = 1000.0;
        let mut put = record("4", "PUT", "/v2/team/app/blobs/uploads/u1", 201);
        put.query = Some(format!("_state=y&digest={}", DIGEST.replace(':', "%3A")));
        let mut manifest = record("5", "PUT", "/v2/team/app/manifests/1", 201);
        manifest.bytes_up = 734;
        manifest.response_headers = vec![header("Docker-Content-Digest", DIGEST)];
        vec![put, manifest, patch, post, head]
    }

    #[test]
    fn streamed_upload_after_a_faked_check() {
        let report = Report::from_records(&skopeo_push());
        let blob = &report.repositories[0].blobs[0];
        assert_eq!(blob.digest, DIGEST);
        assert_eq!(blob.check.as_deref(), Some("404 faked"));
        assert_eq!(blob.upload.as_deref(), Some("streamed"));
        assert_eq!(blob.uploads, 1);
        assert_eq!(blob.bytes_uploaded, 3 << 20);
        assert_eq!(blob.size, Some(3 << 20));
        assert_eq!(blob.status, Some(201));
        assert!(blob.throughput().unwrap() > 2.9);
        assert_eq!(report.manifests[0].reference, "1");
        assert!(report.errors.is_empty());
    }

    #[test]
    fn stripped_mount_and_chunked_upload() {
        let mut post = record("1", "POST", "/v2/team/app/blobs/uploads/", 202);
        post.query = Some(format!("mount={DIGEST}&from=team/base"));
        post.action = "mount-stripped".into();
        post.response_headers = vec![header("location", "/v2/team/app/blobs/uploads/u2")];
        let mut patch = record("2", "PATCH", "/v2/team/app/blobs/uploads/u2", 202);
        patch.request_headers = vec![header("Content-Range", "0-99")];
        patch.bytes_up = 100;
        let mut put = record("3", "PUT", "/v2/team/app/blobs/uploads/u2", 201);
        put.query = Some(format!("digest={DIGEST}"));
        let report = Report::from_records(&[post, patch, put]);
        let blob = &report.repositories[0].blobs[0];
        assert_eq!(blob.mount.as_deref(), Some("stripped"));
        assert_eq!(blob.upload.as_deref(), Some("chunked"));
    }

    #[test]
    fn registry_error_code_is_reported() {
        let mut put = record("1", "PUT", "/v2/team/app/manifests/1", 400);
        put.response_body = Some(
            r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#
                .into(),
        );
        let mut challenge = record("2", "GET", "/v2/", 401);
        challenge.response_headers = vec![header("www-authenticate", "Basic realm=x")];
        let head = record("3", "HEAD", &format!("/v2/team/app/blobs/{DIGEST}"), 404);
        let report = Report::from_records(&[put, challenge, head]);
        assert_eq!(report.errors.len(), 1);
        assert_eq!(
            report.errors[0].code.as_deref(),
            Some("MANIFEST_BLOB_UNKNOWN")
        );
        assert!(report.to_string().contains("MANIFEST_BLOB_UNKNOWN"));
    }

    #[test]
    fn table_lists_blobs_manifests_and_errors() {
        let text = Report::from_records(&skopeo_push()).to_string();
        assert!(text.contains("registry.test:443 team/app"), "{text}");
        assert!(text.contains("sha256:02bf5a3d9004"), "{text}");
        assert!(text.contains("404 faked"), "{text}");
        assert!(text.contains("registry.test:443/team/app:1"), "{text}");
        assert!(text.contains("Errors\n  (none)"), "{text}");
    }

    #[test]
    fn times_sort_whatever_their_precision() {
        assert!(time_key("2026-12-03T16:00:00.5Z") < time_key("2026-12-03T16:00:00.51Z"));
        assert!(time_key("2026-12-03T16:00:00Z") < time_key("2026-12-03T16:00:00.1Z"));
    }
}
