//! One request on its way to the registry: where it goes, what skip mode
//! does with it, and the response streamed back.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{self, Metered, ProxyBody};
use super::exchange::{Direction, Exchange, ExchangeStart};
use super::respond;
use super::socket::{LowWater, UploadBatching};
use super::Proxy;
use crate::registry::route::Route;
use crate::registry::skip::{self, Verdict};
use crate::stats::bump;

/// Where the requests of an intercepted tunnel go: the `CONNECT` target,
/// whatever the request line or `:authority` inside the tunnel says.
#[derive(Debug, Clone)]
pub struct Target {
    pub scheme: Scheme,
    pub authority: Authority,
    /// The client connection's low-water mark, when a request body may
    /// batch its reads (an HTTP/1.1 tunnel).
    pub low_water: Option<LowWater>,
}

/// Headers that belong to one connection, never forwarded. `Expect` is
/// answered by regproxy's own server side, which sends `100 Continue`
/// as soon as the upstream request starts reading the body.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Forwards one request. `tunnel` is the `CONNECT` target for requests
/// inside an intercepted tunnel, `None` for absolute-form requests.
pub async fn forward(
    proxy: Arc<Proxy>,
    client: SocketAddr,
    tunnel: Option<Target>,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let intercepted = tunnel.as_ref().is_some_and(|t| t.scheme == Scheme::HTTPS);
    let in_tunnel = tunnel.is_some();
    if in_tunnel && request.method() == Method::CONNECT {
        // The registry has no use for it, and regproxy does not nest tunnels.
        return respond::bad_request("CONNECT inside a tunnel; send requests for the registry");
    }
    let Some((target, path_and_query)) = destination(tunnel, request.uri()) else {
        return respond::not_a_proxy_request(request.uri());
    };
    if let Some(problem) = (!in_tunnel).then(|| target_problem(&target)).flatten() {
        return respond::bad_request(problem);
    }
    let host = target.authority.as_str().to_ascii_lowercase();
    let route = Route::parse(path_and_query.path());
    let memory = proxy.memory.at(&host);
    let verdict = skip::decide(
        proxy.skip,
        request.method(),
        &route,
        path_and_query.query(),
        &memory,
    );
    bump(&proxy.stats.requests);
    let start = ExchangeStart {
        client,
        method: request.method().clone(),
        scheme: target.scheme.to_string(),
        host: host.clone(),
        path: path_and_query.path().to_owned(),
        query: path_and_query.query().map(str::to_owned),
        version: request.version(),
        tls_intercepted: intercepted,
        route,
        action: verdict.action(),
    };
    let exchange = Exchange::begin(
        start,
        request.headers(),
        proxy.stats.clone(),
        proxy.flow_log.clone(),
    );

    let response = match verdict {
        Verdict::AnswerNotFound => {
            bump(&proxy.stats.heads_answered_not_found);
            respond::not_found()
        }
        Verdict::StripMount { query } => {
            bump(&proxy.stats.mounts_stripped);
            let path_and_query = with_query(&path_and_query, query.as_deref());
            send_upstream(&proxy, target, path_and_query, request, &exchange).await
        }
        Verdict::Pass | Verdict::PassUploadedThisSession => {
            send_upstream(&proxy, target, path_and_query, request, &exchange).await
        }
    };
    exchange.responded(response.status().as_u16(), response.headers());
    response
}

/// Sends the request to the registry and streams its response back,
/// remembering what the registry accepted. Failures become a 502 that
/// names the host and the reason.
async fn send_upstream(
    proxy: &Proxy,
    target: Target,
    path_and_query: PathAndQuery,
    request: Request<Incoming>,
    exchange: &Arc<Exchange>,
) -> Response<ProxyBody> {
    let host = exchange.host();
    let mut parts = http::uri::Parts::default();
    let Target {
        scheme,
        authority,
        low_water,
    } = target;
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path_and_query.clone());
    let Ok(uri) = Uri::from_parts(parts) else {
        return respond::bad_request("request target does not form a valid URI");
    };

    let upstream_request = upstream_request(request, uri, low_water, exchange);
    let response = match send(proxy, upstream_request).await {
        Ok(response) => response,
        Err(error) => return failed_upstream(host, &*error, exchange),
    };

    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        let message = format!("upstream {host}: switched protocols, which regproxy does not relay");
        exchange.fail(message.clone());
        return respond::bad_gateway(message);
    }
    let (mut parts, body) = response.into_parts();
    remember_pushes(proxy, &path_and_query, exchange, &parts);
    strip_hop_by_hop(&mut parts.headers);
    let body = Metered::new(body, exchange.clone(), Direction::Down).boxed();
    Response::from_parts(parts, body)
}

/// The answer to a request that could not be forwarded. A request body
/// that was malformed or stopped arriving fails the upstream request too;
/// that is the client's doing, not the registry's, and gets a 4xx.
fn failed_upstream(
    host: &str,
    error: &(dyn std::error::Error + 'static),
    exchange: &Exchange,
) -> Response<ProxyBody> {
    if let Some((status, reason)) = exchange.client_fault() {
        return respond::client_body_failed(status, &reason);
    }
    let message = respond::upstream_failure(host, error);
    tracing::warn!("{message}");
    exchange.fail(message.clone());
    respond::bad_gateway(message)
}

/// The target and the path to request there, or `None` for a request that
/// is neither inside a tunnel nor in absolute form.
fn destination(tunnel: Option<Target>, uri: &Uri) -> Option<(Target, PathAndQuery)> {
    let path_and_query = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let target = match tunnel {
        Some(target) => target,
        None => Target {
            scheme: uri.scheme().cloned()?,
            authority: uri.authority().cloned()?,
            low_water: None,
        },
    };
    Some((target, path_and_query))
}

/// What is wrong with an absolute-form target, if anything. A port the
/// URI parser could not read would otherwise fall back to the scheme's
/// default and send the request somewhere the client never named.
fn target_problem(target: &Target) -> Option<&'static str> {
    let authority = &target.authority;
    if target.scheme != Scheme::HTTP && target.scheme != Scheme::HTTPS {
        return Some("only http and https URLs can be proxied");
    }
    if authority.as_str().contains('@') {
        return Some("credentials in the URL are not forwarded; send them in a header");
    }
    if authority.host().is_empty() {
        return Some("the URL has no host");
    }
    // The URI parser drops a port it cannot read, so look at the text.
    let after_host = authority
        .as_str()
        .rsplit_once(authority.host())
        .map_or("", |(_, rest)| rest);
    let port_ok = match after_host.strip_prefix(':') {
        Some(port) => port.parse::<u16>().is_ok_and(|p| p != 0),
        None => after_host.is_empty(),
    };
    if !port_ok {
        return Some("the URL's port is not a valid port number");
    }
    None
}

fn with_query(path_and_query: &PathAndQuery, query: Option<&str>) -> PathAndQuery {
    let path = path_and_query.path();
    let rebuilt = match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    // The path came from a valid PathAndQuery and the query is a subset of
    // its parameters, so this parses; fall back to the original otherwise.
    rebuilt.parse().unwrap_or_else(|_| path_and_query.clone())
}

fn upstream_request(
    request: Request<Incoming>,
    uri: Uri,
    low_water: Option<LowWater>,
    exchange: &Arc<Exchange>,
) -> Request<ProxyBody> {
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::EXPECT);
    parts.uri = uri;
    // Upstream connections speak HTTP/1.1 whatever the client spoke.
    parts.version = Version::HTTP_11;
    let batching = low_water
        .zip(body.size_hint().exact())
        .map(|(mark, length)| UploadBatching::new(mark, length));
    let body = Metered::new(body, exchange.clone(), Direction::Up)
        .batching(batching)
        .boxed();
    Request::from_parts(parts, body)
}

/// Sends a request upstream. A request without a body that fails on a
/// pooled connection the registry had closed is sent once more on a new
/// one; a request with a body never is, since an upload chunk sent twice
/// corrupts the blob.
async fn send(
    proxy: &Proxy,
    request: Request<ProxyBody>,
) -> Result<Response<Incoming>, body::BoxError> {
    let retry = can_resend(&request).then(|| clone_head(&request));
    match proxy.upstream.request(request).await {
        Ok(response) => Ok(response),
        Err(error) if error.is_connect() => Err(error.into()),
        Err(error) => match retry {
            Some(again) => {
                tracing::debug!("resending {} after: {error}", again.uri());
                Ok(proxy.upstream.request(again).await?)
            }
            None => Err(error.into()),
        },
    }
}

fn can_resend(request: &Request<ProxyBody>) -> bool {
    matches!(*request.method(), Method::GET | Method::HEAD) && request.body().is_end_stream()
}

fn clone_head(request: &Request<ProxyBody>) -> Request<ProxyBody> {
    let mut copy = Request::new(body::empty());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Remembers blobs and manifests the registry just accepted, so skip
/// mode lets their next existence check through.
fn remember_pushes(
    proxy: &Proxy,
    path_and_query: &PathAndQuery,
    exchange: &Exchange,
    response: &http::response::Parts,
) {
    let (host, route) = (exchange.host(), exchange.route());
    let Some(name) = route.name() else { return };
    let (method, status) = (exchange.method(), response.status.as_u16());
    if let Some(digest) = skip::completed_upload(method, route, path_and_query.query(), status) {
        bump(&proxy.stats.blobs_uploaded);
        proxy.memory.record_blob(host, name, &digest);
        tracing::debug!(%host, repository = name, %digest, "blob upload completed");
    }
    let digest = response
        .headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok());
    for reference in skip::pushed_manifest(method, route, status, digest) {
        proxy.memory.record_manifest(host, name, reference);
    }
}

/// Removes hop-by-hop headers, including any the `Connection` header
/// names for this hop only.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "close, X-Trace".parse().unwrap());
        headers.insert("x-trace", "1".parse().unwrap());
        headers.insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn tunnel_target_wins_over_the_request_line() {
        let tunnel = Target {
            scheme: Scheme::HTTPS,
            authority: "registry.test:443".parse().unwrap(),
            low_water: None,
        };
        let uri: Uri = "https://elsewhere.test/v2/?x=%2F".parse().unwrap();
        let (target, pq) = destination(Some(tunnel), &uri).unwrap();
        assert_eq!(target.authority.as_str(), "registry.test:443");
        assert_eq!(pq.as_str(), "/v2/?x=%2F");
    }

    #[test]
    fn origin_form_outside_a_tunnel_has_no_destination() {
        assert!(destination(None, &"/v2/".parse().unwrap()).is_none());
        let (target, _) = destination(None, &"http://r.test:5000/v2/".parse().unwrap()).unwrap();
        assert_eq!(target.authority.as_str(), "r.test:5000");
    }

    #[test]
    fn bad_absolute_targets_are_named() {
        let target = |uri: &str| {
            let uri: Uri = uri.parse().unwrap();
            destination(None, &uri).map(|(t, _)| target_problem(&t))
        };
        assert_eq!(target("http://r.test:5000/v2/"), Some(None));
        assert!(target("http://127.0.0.1:65616/v2/")
            .unwrap()
            .unwrap()
            .contains("port"));
        assert!(target("http://r.test:0/")
            .unwrap()
            .unwrap()
            .contains("port"));
        assert!(target("http://a:b@r.test/")
            .unwrap()
            .unwrap()
            .contains("credentials"));
        assert!(target("ftp://r.test/").unwrap().unwrap().contains("http"));
    }

    #[test]
    fn stripped_query_keeps_the_path_bytes() {
        let pq = PathAndQuery::from_static("/v2/a/blobs/uploads/?mount=x&from=y");
        assert_eq!(with_query(&pq, None).as_str(), "/v2/a/blobs/uploads/");
        assert_eq!(
            with_query(&pq, Some("k=%2F")).as_str(),
            "/v2/a/blobs/uploads/?k=%2F"
        );
    }
}
