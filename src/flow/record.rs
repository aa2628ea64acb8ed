//! One exchange as the flow log keeps it. Everything here has been through
//! [`crate::redact`] before it is stored.

use serde::{Deserialize, Serialize};

use crate::registry::route::Route;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// What the path means in the registry API, when it means something.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryMeaning {
    /// `blob`, `upload-start`, `upload-session`, `manifest`, `tags`,
    /// `referrers`, `catalog` or `base`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl RegistryMeaning {
    pub fn of(route: &Route) -> Option<RegistryMeaning> {
        let meaning = |kind: &str| RegistryMeaning {
            kind: kind.to_owned(),
            repository: route.name().map(str::to_owned),
            ..RegistryMeaning::default()
        };
        Some(match route {
            Route::Base => meaning("base"),
            Route::Catalog => meaning("catalog"),
            Route::Blob { digest, .. } => RegistryMeaning {
                digest: Some(digest.clone()),
                ..meaning("blob")
            },
            Route::UploadStart { .. } => meaning("upload-start"),
            Route::UploadSession { session, .. } => RegistryMeaning {
                session: Some(session.clone()),
                ..meaning("upload-session")
            },
            Route::Manifest { reference, .. } => RegistryMeaning {
                reference: Some(reference.clone()),
                ..meaning("manifest")
            },
            Route::Tags { .. } => meaning("tags"),
            Route::Referrers { digest, .. } => RegistryMeaning {
                digest: Some(digest.clone()),
                ..meaning("referrers")
            },
            Route::Other => return None,
        })
    }
}

/// One line of the flow log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// When the request arrived, RFC 3339 in UTC.
    pub time: String,
    pub client: String,
    pub method: String,
    pub scheme: String,
    /// `host:port` of the registry.
    pub host: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// 0 when no response came (the upstream failed and the client hung
    /// up before regproxy could answer).
    pub status: u16,
    pub request_headers: Vec<Header>,
    pub response_headers: Vec<Header>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<f64>,
    /// The client's HTTP version: `HTTP/1.1` or `HTTP/2`.
    pub http_version: String,
    pub tls_intercepted: bool,
    /// What regproxy did: `pass`, `fake-404`, `mount-stripped`, ...
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryMeaning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FlowRecord {
    /// The value of the first header `name` (case-insensitive).
    pub fn response_header(&self, name: &str) -> Option<&str> {
        find(&self.response_headers, name)
    }

    pub fn request_header(&self, name: &str) -> Option<&str> {
        find(&self.request_headers, name)
    }

    /// `scheme://host/path?query`, as the client asked.
    pub fn url(&self) -> String {
        let host = match (self.scheme.as_str(), self.host.rsplit_once(':')) {
            ("https", Some((name, "443"))) | ("http", Some((name, "80"))) => name,
            _ => self.host.as_str(),
        };
        match &self.query {
            Some(query) => format!("{}://{host}{}?{query}", self.scheme, self.path),
            None => format!("{}://{host}{}", self.scheme, self.path),
        }
    }
}

fn find<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}
