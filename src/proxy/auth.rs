//! Proxy authentication: required whenever regproxy listens beyond
//! loopback, so that it never becomes an open proxy.

use std::str::FromStr;

use base64::Engine;
use http::header::PROXY_AUTHORIZATION;
use http::HeaderMap;

/// `--proxy-auth USER:PASSWORD`. Debug output never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyCredentials {
    user: String,
    /// `base64(user:password)`, as clients send it after `Basic `.
    encoded: String,
}

impl std::fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyCredentials({}:<redacted>)", self.user)
    }
}

impl FromStr for ProxyCredentials {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim_end_matches(['\n', '\r']);
        match s.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                Ok(ProxyCredentials {
                    user: user.to_owned(),
                    encoded: base64::engine::general_purpose::STANDARD.encode(s),
                })
            }
            _ => Err("expected USER:PASSWORD, both non-empty".to_owned()),
        }
    }
}

impl ProxyCredentials {
    /// Whether the request's `Proxy-Authorization` carries these
    /// credentials. Digests are compared, not the secrets themselves, so
    /// the comparison's timing says nothing about the password.
    pub fn accepts(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(PROXY_AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some((scheme, token)) = value.trim().split_once(' ') else {
            return false;
        };
        let digest = |bytes: &[u8]| ring::digest::digest(&ring::digest::SHA256, bytes);
        scheme.eq_ignore_ascii_case("basic")
            && digest(token.trim().as_bytes()).as_ref() == digest(self.encoded.as_bytes()).as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(PROXY_AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn basic_credentials_are_accepted() {
        let credentials: ProxyCredentials = "ci:hunter2".parse().unwrap();
        // base64("ci:hunter2")
        assert!(credentials.accepts(&headers("Basic Y2k6aHVudGVyMg==")));
        assert!(credentials.accepts(&headers("basic Y2k6aHVudGVyMg==")));
    }

    #[test]
    fn wrong_or_missing_credentials_are_refused() {
        let credentials: ProxyCredentials = "ci:hunter2".parse().unwrap();
        assert!(!credentials.accepts(&headers("Basic Y2k6aHVudGVyMw==")));
        assert!(!credentials.accepts(&headers("Bearer Y2k6aHVudGVyMg==")));
        assert!(!credentials.accepts(&headers("Basic")));
        assert!(!credentials.accepts(&HeaderMap::new()));
    }

    #[test]
    fn credentials_need_user_and_password() {
        assert!("ci".parse::<ProxyCredentials>().is_err());
        assert!(":pw".parse::<ProxyCredentials>().is_err());
        assert!("ci:".parse::<ProxyCredentials>().is_err());
        assert!("ci:pw\n".parse::<ProxyCredentials>().is_ok());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let credentials: ProxyCredentials = "ci:hunter2".parse().unwrap();
        assert!(!format!("{credentials:?}").contains("hunter2"));
    }
}
