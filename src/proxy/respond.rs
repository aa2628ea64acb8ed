//! Every response regproxy writes itself, in one place: the faked 404,
//! and what a client sees when its request cannot be forwarded.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Response, StatusCode, Uri};

use super::body::{self, error_chain, ProxyBody};
use super::upstream::UpstreamError;

/// Skip mode's answer to an existence check: what a registry says of a
/// blob or manifest it does not have, minus the body (it answers a HEAD).
pub fn not_found() -> Response<ProxyBody> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, http::HeaderValue::from_static("0"));
    response
}

pub fn bad_request(reason: &str) -> Response<ProxyBody> {
    plain(
        StatusCode::BAD_REQUEST,
        format!("regproxy: bad request: {reason}\n"),
    )
}

/// A request sent to the proxy port that is neither `CONNECT` nor an
/// absolute-form request: most likely a client pointed at regproxy as if
/// it were the registry.
pub fn not_a_proxy_request(uri: &Uri) -> Response<ProxyBody> {
    bad_request(&format!(
        "{uri} is not a proxy request; regproxy is an HTTP proxy: \
         set HTTPS_PROXY/HTTP_PROXY to its address instead of using it as the registry"
    ))
}

/// 407: the client must send `Proxy-Authorization: Basic ...`.
pub fn proxy_auth_required() -> Response<ProxyBody> {
    let mut response = plain(
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        "regproxy: proxy authentication required\n".to_owned(),
    );
    response.headers_mut().insert(
        http::header::PROXY_AUTHENTICATE,
        http::HeaderValue::from_static("Basic realm=\"regproxy\""),
    );
    response
}

/// The client's own request body failed while it was being forwarded:
/// 400 for a malformed one, 408 for one that stopped arriving.
pub fn client_body_failed(status: StatusCode, reason: &str) -> Response<ProxyBody> {
    plain(status, format!("regproxy: {reason}\n"))
}

pub fn bad_gateway(message: String) -> Response<ProxyBody> {
    plain(StatusCode::BAD_GATEWAY, format!("regproxy: {message}\n"))
}

/// The one-line reason for a failed upstream exchange: which host, which
/// step, and the cause, e.g. `upstream registry.test:443: TLS handshake:
/// invalid peer certificate: UnknownIssuer`.
pub fn upstream_failure(host: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(upstream) = current.downcast_ref::<UpstreamError>() {
            return error_chain(upstream);
        }
        cause = current.source();
    }
    format!("upstream {host}: {}", error_chain(error))
}

fn plain(status: StatusCode, text: String) -> Response<ProxyBody> {
    let length = text.len();
    let mut response = Response::new(body::text(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, length.into());
    response
}
