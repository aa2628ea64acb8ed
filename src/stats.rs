//! Counters of what the daemon did, for summaries and tests.

use std::sync::atomic::{AtomicU64, Ordering};

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
