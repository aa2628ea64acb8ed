//! The push as a record: one JSON line per exchange in the flow log, and
//! what is made from it afterwards.
//!
//! - [`record`]: one exchange as written to the flow log;
//! - [`writer`]: appends records to the flow log file as exchanges end;
//! - [`har`]: converts a flow log to HTTP Archive 1.2;
//! - [`report`]: per-blob and per-manifest summary of a push.

pub mod har;
pub mod record;
pub mod report;
pub mod writer;

pub use record::FlowRecord;

use std::path::Path;

/// Reads a flow log. A line that does not parse (the last one, if the
/// daemon was killed while writing it) is skipped and counted.
pub fn read_flow_log(path: &Path) -> anyhow::Result<(Vec<FlowRecord>, usize)> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read flow log {}", path.display()))?;
    let mut records = Vec::new();
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(_) => skipped += 1,
        }
    }
    Ok((records, skipped))
}
