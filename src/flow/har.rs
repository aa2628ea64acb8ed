//! Flow log to HTTP Archive (HAR) 1.2, the format browsers' developer
//! tools and HAR viewers open. One entry per flow record; the records are
//! already redacted, so the archive is too.

use serde_json::{json, Value};

use super::record::{FlowRecord, Header};
use crate::registry::route::query_pairs;

/// The whole archive as pretty-printed JSON.
pub fn to_har(records: &[FlowRecord]) -> String {
    let entries: Vec<Value> = records.iter().map(entry).collect();
    let har = json!({
        "log": {
            "version": "1.2",
            "creator": { "name": "regproxy", "version": env!("CARGO_PKG_VERSION") },
            "entries": entries,
        }
    });
    serde_json::to_string_pretty(&har).unwrap_or_default()
}

fn entry(record: &FlowRecord) -> Value {
    let wait = record.ttfb_ms.unwrap_or(record.duration_ms);
    let mut entry = json!({
        "startedDateTime": record.time,
        "time": record.duration_ms,
        "request": request(record),
        "response": response(record),
        "cache": {},
        "timings": {
            "send": 0,
            "wait": wait,
            "receive": (record.duration_ms - wait).max(0.0),
        },
        "comment": comment(record),
    });
    if let Some(error) = &record.error {
        entry["_error"] = json!(error);
    }
    entry
}

fn request(record: &FlowRecord) -> Value {
    let query: Vec<Value> = record
        .query
        .as_deref()
        .map(|q| {
            query_pairs(q)
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect()
        })
        .unwrap_or_default();
    let mut request = json!({
        "method": record.method,
        "url": record.url(),
        "httpVersion": record.http_version,
        "cookies": [],
        "headers": headers(&record.request_headers),
        "queryString": query,
        "headersSize": -1,
        "bodySize": record.bytes_up,
    });
    if let Some(body) = &record.request_body {
        let mime = record
            .request_header("content-type")
            .unwrap_or("application/json");
        request["postData"] = json!({ "mimeType": mime, "text": body });
    }
    request
}

fn response(record: &FlowRecord) -> Value {
    let status_text = http::StatusCode::from_u16(record.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut content = json!({
        "size": record.bytes_down,
        "mimeType": record.response_header("content-type").unwrap_or(""),
    });
    if let Some(body) = &record.response_body {
        content["text"] = json!(body);
    }
    json!({
        "status": record.status,
        "statusText": status_text,
        "httpVersion": record.http_version,
        "cookies": [],
        "headers": headers(&record.response_headers),
        "content": content,
        "redirectURL": record.response_header("location").unwrap_or(""),
        "headersSize": -1,
        "bodySize": record.bytes_down,
    })
}

fn headers(headers: &[Header]) -> Vec<Value> {
    headers
        .iter()
        .map(|h| json!({"name": h.name, "value": h.value}))
        .collect()
}

fn comment(record: &FlowRecord) -> String {
    let mut comment = format!("regproxy: {}", record.action);
    if record.tls_intercepted {
        comment.push_str(", TLS intercepted");
    }
    comment
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> FlowRecord {
        FlowRecord {
            time: "2026-12-03T16:17:09.635437Z".into(),
            client: "127.0.0.1:5000".into(),
            method: "PUT".into(),
            scheme: "https".into(),
            host: "registry.test:443".into(),
            path: "/v2/app/manifests/1".into(),
            query: Some("a=1&token=<redacted>".into()),
            status: 400,
            request_headers: vec![Header {
                name: "content-type".into(),
                value: "application/json".into(),
            }],
            response_headers: vec![Header {
                name: "location".into(),
                value: "/x".into(),
            }],
            bytes_up: 10,
            bytes_down: 20,
            duration_ms: 5.0,
            ttfb_ms: Some(3.0),
            http_version: "HTTP/2".into(),
            tls_intercepted: true,
            action: "pass".into(),
            registry: None,
            request_body: Some("{}".into()),
            response_body: Some("{\"errors\":[]}".into()),
            error: None,
        }
    }

    #[test]
    fn entry_has_the_har_fields() {
        let har: Value = serde_json::from_str(&to_har(&[record()])).unwrap();
        let entry = &har["log"]["entries"][0];
        assert_eq!(har["log"]["version"], "1.2");
        assert_eq!(
            entry["request"]["url"],
            "https://registry.test/v2/app/manifests/1?a=1&token=<redacted>"
        );
        assert_eq!(entry["request"]["queryString"][1]["value"], "<redacted>");
        assert_eq!(entry["request"]["postData"]["text"], "{}");
        assert_eq!(entry["response"]["statusText"], "Bad Request");
        assert_eq!(entry["response"]["redirectURL"], "/x");
        assert_eq!(entry["response"]["content"]["text"], "{\"errors\":[]}");
        assert_eq!(entry["timings"]["wait"], 3.0);
        assert_eq!(entry["timings"]["receive"], 2.0);
    }
}
