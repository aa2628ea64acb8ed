//! Counters of what the daemon did, for summaries and tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Stats {
    /// Requests seen, intercepted or absolute-form (not `CONNECT`s).
    pub requests: AtomicU64,
    /// Blob existence checks answered 404 by regproxy itself.
    pub heads_answered_not_found: AtomicU64,
    /// Cross-repository mounts turned into plain upload sessions.
    pub mounts_stripped: AtomicU64,
    /// Blob uploads the registry completed (201 with a digest).
    pub blobs_uploaded: AtomicU64,
    /// Request body bytes sent to upload endpoints: the layer bytes that
    /// reached the registry.
    pub upload_bytes: AtomicU64,
    /// Exchanges (and tunnels) not finished yet, and when the last one
    /// finished: what the shutdown drain waits on.
    in_flight: AtomicU64,
    last_finished: Mutex<Option<Instant>>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub heads_answered_not_found: u64,
    pub mounts_stripped: u64,
    pub blobs_uploaded: u64,
    pub upload_bytes: u64,
}

impl Stats {
    pub fn exchange_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn exchange_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        *self.last_finished.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether an exchange is in flight, or finished less than `quiet` ago.
    pub fn busy_within(&self, quiet: Duration) -> bool {
        let last = *self.last_finished.lock().unwrap_or_else(|e| e.into_inner());
        self.in_flight() > 0 || last.is_some_and(|t| t.elapsed() < quiet)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            requests: get(&self.requests),
            heads_answered_not_found: get(&self.heads_answered_not_found),
            mounts_stripped: get(&self.mounts_stripped),
            blobs_uploaded: get(&self.blobs_uploaded),
            upload_bytes: get(&self.upload_bytes),
        }
    }
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl std::fmt::Display for StatsSnapshot {
    /// One line for a human: what regproxy did during a push.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} request{}, {} HEADs answered 404, {} mounts stripped, \
             {} blobs uploaded ({})",
            self.requests,
            if self.requests == 1 { "" } else { "s" },
            self.heads_answered_not_found,
            self.mounts_stripped,
            self.blobs_uploaded,
            human_bytes(self.upload_bytes),
        )
    }
}

/// `1.5 MiB`, `812 B`: sizes as people read them.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_bytes(812), "812 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
    }

    #[test]
    fn summary_names_every_counter() {
        let stats = StatsSnapshot {
            requests: 9,
            heads_answered_not_found: 3,
            mounts_stripped: 1,
            blobs_uploaded: 3,
            upload_bytes: 2048,
        };
        assert_eq!(
            stats.to_string(),
            "9 requests, 3 HEADs answered 404, 1 mounts stripped, 3 blobs uploaded (2.0 KiB)"
        );
    }
}
