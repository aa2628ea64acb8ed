//! A bounded mutation fuzzer for the parsers that read what clients send:
//! registry routes, query strings, CONNECT targets, and the option parsers.
//! Any panic fails the test; invariants are checked on what parses.
//!
//! Not coverage-guided: it mutates a seed corpus at random, which is
//! enough to run on a stable toolchain in every CI run.

use std::str::FromStr;
use std::time::{Duration, Instant};

use regproxy::config::HostPattern;
use regproxy::proxy::connect::tunnel_target;
use regproxy::proxy::upstream::ResolveRule;
use regproxy::redact::{redact, Field};
use regproxy::registry::route::{is_digest, query_pairs, Route};

const SEEDS: &[&str] = &[
    "/v2/",
    "/v2/team/app/blobs/sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
    "/v2/a/b/c/blobs/uploads/",
    "/v2/app/blobs/uploads/0f5a-41?_state=abc%3D&digest=sha256%3Aff",
    "/v2/app/manifests/v1.2-rc_3",
    "/v2/app/referrers/sha512:ab",
    "/v2/_catalog?n=10&last=x",
    "registry.test:443",
    "[::1]:5000",
    "10.0.0.1:8080",
    "reg*.example.com:5000",
    "registry.test:5000:127.0.0.1",
    "mount=sha256%3Aab&from=team%2Fbase&access_token=x",
    "{\"token\":\"abc\",\"errors\":[{\"code\":\"X\"}]}",
];

/// How long the fuzzer runs; CI keeps it short.
const BUDGET: Duration = Duration::from_secs(15);
const MAX_EXECUTIONS: u64 = 2_000_000;

#[test]
fn parsers_never_panic_on_mutated_input() {
    let mut random = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    let started = Instant::now();
    let mut executions = 0u64;
    while started.elapsed() < BUDGET && executions < MAX_EXECUTIONS {
        let seed = SEEDS[(next() % SEEDS.len() as u64) as usize];
        let input = mutate(seed.as_bytes(), &mut next);
        let text = String::from_utf8_lossy(&input);
        exercise(&text);
        executions += 1;
    }
    eprintln!(
        "fuzz: {executions} executions in {:.1}s, no panic",
        started.elapsed().as_secs_f64()
    );
    assert!(executions > 10_000);
}

fn exercise(text: &str) {
    match Route::parse(text) {
        Route::Blob { name, digest } | Route::Referrers { name, digest } => {
            assert!(is_digest(&digest), "{text:?}");
            assert!(!name.is_empty() && !name.starts_with('/'), "{text:?}");
        }
        other => {
            let _ = other.name();
        }
    }
    let _ = query_pairs(text).count();
    if let Some(authority) = tunnel_target(text) {
        assert!(authority.port_u16().is_some_and(|p| p > 0), "{text:?}");
    }
    let _ = HostPattern::from_str(text).map(|p| p.matches("registry.test", 443));
    let _ = ResolveRule::from_str(text);
    if let Some(redacted) = redact(Field::Query(text)) {
        for (key, value) in query_pairs(&redacted) {
            if key.to_ascii_lowercase().contains("token") && !value.is_empty() {
                assert_eq!(value, "<redacted>", "{text:?}");
            }
        }
    }
    let _ = redact(Field::JsonBody(text));
    let _ = redact(Field::Header("authorization", text));
}

/// One to four random edits: flip, insert, delete, duplicate a span, or
/// splice in a byte that parsers treat specially.
fn mutate(seed: &[u8], next: &mut impl FnMut() -> u64) -> Vec<u8> {
    const SPECIAL: &[u8] = b"/%:?&=@[]-._*\0\xff\xc3";
    let mut data = seed.to_vec();
    for _ in 0..1 + next() % 4 {
        let at = if data.is_empty() {
            0
        } else {
            (next() % data.len() as u64) as usize
        };
        match next() % 5 {
            0 if !data.is_empty() => data[at] ^= 1 << (next() % 8),
            1 => data.insert(at, SPECIAL[(next() % SPECIAL.len() as u64) as usize]),
            2 if !data.is_empty() => {
                data.remove(at);
            }
            3 if !data.is_empty() => {
                let end = (at + 1 + (next() % 8) as usize).min(data.len());
                let span = data[at..end].to_vec();
                data.splice(at..at, span);
            }
            _ => data.insert(at, (next() % 256) as u8),
        }
    }
    data
}
