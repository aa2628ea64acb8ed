//! Appends flow records to the flow log, one line each, as each exchange
//! ends. Each line goes out in a single `write` on a file opened for
//! appending, so a daemon killed mid-push leaves only whole lines behind,
//! except at worst the one being written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::FlowRecord;

pub struct FlowLog {
    path: PathBuf,
    file: Mutex<File>,
    /// Set after the first failed write, so a full disk logs one warning,
    /// not one per exchange.
    failed: AtomicBool,
}

impl FlowLog {
    pub fn open(path: &Path) -> std::io::Result<FlowLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FlowLog {
            path: path.to_owned(),
            file: Mutex::new(file),
            failed: AtomicBool::new(false),
        })
    }

    pub fn append(&self, record: &FlowRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(error) => return self.warn(&error.to_string()),
        };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // File writes are not buffered here: the line is on disk (in the
        // page cache) before the lock is released.
        if let Err(error) = file.write_all(&line) {
            self.warn(&error.to_string());
        }
    }

    fn warn(&self, error: &str) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            tracing::warn!("flow log {}: cannot write: {error}", self.path.display());
        }
    }
}
