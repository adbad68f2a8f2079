//! Free space on the data dir's filesystem.
//!
//! A full disk is not a storage failure: the node keeps serving reads and
//! refuses writes (`507 no_space`) while the filesystem has less than
//! `min_free_space` available, then takes them again once space is freed.
//! The reserve is checked before a write is proposed (on the member that
//! received it and on the leader) and before a follower appends replicated
//! entries, so fjall itself never meets `ENOSPC` in normal operation: when
//! it does (a reserve set too small), the write error stops the node.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often free space is measured.
const INTERVAL: Duration = Duration::from_millis(500);

/// Free space of the data dir's filesystem, measured in the background.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    /// Writes are refused below this many available bytes.
    pub reserve: u64,
    free: AtomicU64,
    /// Size of the filesystem.
    size: AtomicU64,
    low: AtomicBool,
    /// Writes refused for lack of space.
    pub refused: AtomicU64,
}

/// Bytes available to an unprivileged writer on the filesystem of `dir`,
/// and its size.
fn space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let s = rustix::fs::statvfs(dir)?;
    Ok((s.f_bavail.saturating_mul(s.f_frsize), s.f_blocks.saturating_mul(s.f_frsize)))
}

impl Disk {
    /// Measures once; call [`Disk::watch`] to keep measuring.
    pub fn new(dir: &Path, reserve: u64) -> Disk {
        let d = Disk {
            dir: dir.to_owned(),
            reserve,
            free: AtomicU64::new(u64::MAX),
            size: AtomicU64::new(0),
            low: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        };
        d.measure();
        d
    }

    fn measure(&self) {
        let (free, size) = match space(&self.dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.dir.display(), "cannot measure free disk space");
                return;
            }
        };
        self.free.store(free, Ordering::Relaxed);
        self.size.store(size, Ordering::Relaxed);
        let low = free < self.reserve;
        if self.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::error!(
                    free_bytes = free,
                    reserve_bytes = self.reserve,
                    "disk nearly full: refusing writes until space is freed"
                );
            } else {
                tracing::info!(free_bytes = free, "disk space freed: taking writes again");
            }
        }
    }

    /// Measures every [`INTERVAL`] for the life of the process.
    pub fn watch(self: &std::sync::Arc<Self>) {
        let d = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(INTERVAL).await;
                let m = d.clone();
                // NOTE: statvfs can block on a sick filesystem; keep it off the workers.
                let _ = tokio::task::spawn_blocking(move || m.measure()).await;
            }
        });
    }

    /// Bytes available at the last measurement.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// The size of the filesystem at the last measurement.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Whether free space is below the reserve.
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// `Err` with the reason when writes must be refused; counts refusals.
    pub fn check(&self, node: u64) -> Result<(), String> {
        if !self.is_low() {
            return Ok(());
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(format!(
            "node {node} is out of disk space ({} MiB free, below the reserve of {} MiB set by --min-free-space): \
             writes are refused until space is freed; reads go on",
            self.free() >> 20,
            self.reserve >> 20
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_above_the_free_space_refuses_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (free, size) = space(dir.path()).expect("statvfs");
        assert!(free > 0 && size >= free);
        let ok = Disk::new(dir.path(), 0);
        assert!(ok.check(1).is_ok());
        assert_eq!(ok.size(), size);
        let full = Disk::new(dir.path(), u64::MAX);
        let e = full.check(7).expect_err("refused");
        assert!(e.contains("node 7 is out of disk space"), "{e}");
        assert_eq!(full.refused.load(Ordering::Relaxed), 1);
    }
}
