//! One request and its response, as the log, the counters and the flow
//! log see it. Shared by both bodies while they stream; the log line and
//! the flow record are written when the last of them is dropped, so they
//! carry the final byte counts and duration.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, StatusCode, Version};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::flow::record::{FlowRecord, Header, RegistryMeaning};
use crate::flow::writer::FlowLog;
use crate::redact::{redact, Field};
use crate::registry::route::Route;
use crate::stats::Stats;

/// JSON bodies up to this size are kept in the flow log: manifests and
/// registry error bodies, which say why a push failed. Larger ones, and
/// every layer, are only counted.
const BODY_CAPTURE_LIMIT: usize = 64 << 10;

/// What is known of an exchange when its request arrives.
pub struct ExchangeStart {
    pub client: SocketAddr,
    pub method: Method,
    pub scheme: String,
    pub host: String,
    pub path: String,
    pub query: Option<String>,
    pub version: Version,
    pub tls_intercepted: bool,
    pub route: Route,
    pub action: &'static str,
}

/// Which way bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to registry.
    Up,
    /// Registry to client.
    Down,
}

pub struct Exchange {
    start: ExchangeStart,
    started: Instant,
    started_at: OffsetDateTime,
    status: AtomicU16,
    /// Microseconds from the request to the response head; 0 until then.
    ttfb_micros: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    error: Mutex<Option<String>>,
    /// The status owed to the client when its own request body broke the
    /// exchange (malformed, or it stopped sending); 0 otherwise.
    client_fault: AtomicU16,
    stats: Arc<Stats>,
    flow: Option<FlowCapture>,
}

/// What only the flow log needs, kept only when there is one.
struct FlowCapture {
    log: Arc<FlowLog>,
    request_headers: Vec<Header>,
    response_headers: Mutex<Vec<Header>>,
    request_body: Mutex<BodyCapture>,
    response_body: Mutex<BodyCapture>,
}

#[derive(Default)]
struct BodyCapture {
    wanted: bool,
    bytes: Vec<u8>,
    too_large: bool,
}

impl Exchange {
    pub fn begin(
        start: ExchangeStart,
        request_headers: &HeaderMap,
        stats: Arc<Stats>,
        flow_log: Option<Arc<FlowLog>>,
    ) -> Arc<Self> {
        let flow = flow_log.map(|log| FlowCapture {
            log,
            request_headers: redacted_headers(request_headers),
            response_headers: Mutex::default(),
            request_body: Mutex::new(BodyCapture {
                wanted: is_json(request_headers),
                ..Default::default()
            }),
            response_body: Mutex::default(),
        });
        stats.exchange_started();
        Arc::new(Self {
            start,
            started: Instant::now(),
            started_at: OffsetDateTime::now_utc(),
            status: AtomicU16::new(0),
            ttfb_micros: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            error: Mutex::new(None),
            client_fault: AtomicU16::new(0),
            stats,
            flow,
        })
    }

    pub fn method(&self) -> &Method {
        &self.start.method
    }

    /// The registry `host:port`, lowercased.
    pub fn host(&self) -> &str {
        &self.start.host
    }

    pub fn route(&self) -> &Route {
        &self.start.route
    }

    /// The response head is known: regproxy's own, or the registry's.
    pub fn responded(&self, status: u16, headers: &HeaderMap) {
        self.status.store(status, Ordering::Relaxed);
        let micros = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.ttfb_micros.store(micros.max(1), Ordering::Relaxed);
        if let Some(flow) = &self.flow {
            *lock(&flow.response_headers) = redacted_headers(headers);
            lock(&flow.response_body).wanted = is_json(headers);
        }
    }

    pub fn fail(&self, error: String) {
        lock(&self.error).get_or_insert(error);
    }

    /// The client's request body failed: the exchange is the client's
    /// fault, answered with `status` rather than blamed on the registry.
    pub fn fail_by_client(&self, status: StatusCode, error: String) {
        self.client_fault.store(status.as_u16(), Ordering::Relaxed);
        self.fail(error);
    }

    /// What went wrong, if anything has yet.
    pub fn failure(&self) -> Option<String> {
        lock(&self.error).clone()
    }

    /// The status and reason owed to the client, if its body failed.
    pub fn client_fault(&self) -> Option<(StatusCode, String)> {
        let status = StatusCode::from_u16(self.client_fault.load(Ordering::Relaxed)).ok()?;
        Some((status, self.failure().unwrap_or_default()))
    }

    /// Counts bytes that passed, and keeps them if they belong to a small
    /// JSON body the flow log wants.
    pub fn passed(&self, direction: Direction, data: &[u8]) {
        self.count(direction, data.len() as u64);
        let Some(flow) = &self.flow else { return };
        let capture = match direction {
            Direction::Up => &flow.request_body,
            Direction::Down => &flow.response_body,
        };
        let mut capture = lock(capture);
        if !capture.wanted || capture.too_large {
            return;
        }
        if capture.bytes.len() + data.len() > BODY_CAPTURE_LIMIT {
            capture.too_large = true;
            capture.bytes = Vec::new();
        } else {
            capture.bytes.extend_from_slice(data);
        }
    }

    /// Counts bytes that passed without being seen, through a tunnel.
    pub fn count(&self, direction: Direction, bytes: u64) {
        let counter = match direction {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    fn log_line(&mut self, error: Option<&str>) {
        let start = &self.start;
        tracing::info!(
            target: "regproxy::exchange",
            client = %start.client,
            status = *self.status.get_mut(),
            up = *self.up.get_mut(),
            down = *self.down.get_mut(),
            ms = (self.started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0,
            action = start.action,
            error,
            "{} {}{}",
            start.method,
            start.host,
            start.path,
        );
    }

    fn record(&mut self, flow: &FlowCapture, error: Option<String>) -> FlowRecord {
        let start = &self.start;
        let ttfb = *self.ttfb_micros.get_mut();
        FlowRecord {
            time: self.started_at.format(&Rfc3339).unwrap_or_default(),
            client: start.client.to_string(),
            method: start.method.to_string(),
            scheme: start.scheme.clone(),
            host: start.host.clone(),
            path: start.path.clone(),
            query: start.query.as_deref().and_then(|q| redact(Field::Query(q))),
            status: *self.status.get_mut(),
            request_headers: flow.request_headers.clone(),
            response_headers: lock(&flow.response_headers).clone(),
            bytes_up: *self.up.get_mut(),
            bytes_down: *self.down.get_mut(),
            duration_ms: millis(self.started.elapsed()),
            ttfb_ms: (ttfb > 0).then(|| millis(Duration::from_micros(ttfb))),
            http_version: version_name(start.version).to_owned(),
            tls_intercepted: start.tls_intercepted,
            action: start.action.to_owned(),
            registry: RegistryMeaning::of(&start.route),
            request_body: lock(&flow.request_body).json(),
            response_body: lock(&flow.response_body).json(),
            error,
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.start.route.is_upload() {
            self.stats
                .upload_bytes
                .fetch_add(*self.up.get_mut(), Ordering::Relaxed);
        }
        self.stats.exchange_finished();
        let error = lock(&self.error).take();
        self.log_line(error.as_deref());
        if let Some(flow) = self.flow.take() {
            let record = self.record(&flow, error);
            flow.log.append(&record);
        }
    }
}

impl BodyCapture {
    /// The captured body, redacted; nothing if it was too large, empty,
    /// or not valid JSON.
    fn json(&self) -> Option<String> {
        if !self.wanted || self.too_large || self.bytes.is_empty() {
            return None;
        }
        let text = std::str::from_utf8(&self.bytes).ok()?;
        redact(Field::JsonBody(text))
    }
}

fn redacted_headers(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes());
            Header {
                name: name.as_str().to_owned(),
                value: redact(Field::Header(name.as_str(), &value)).unwrap_or_default(),
            }
        })
        .collect()
}

/// Manifests, indexes, registry errors and token responses are all JSON
/// (`application/json`, `application/vnd.oci.image.manifest.v1+json`, ...).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json") || t.contains("prettyjws"))
}

pub fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// Locks a mutex whose data stays consistent even if a holder panicked:
/// every write here replaces or appends whole values.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
