//! Where a kvfs mount tells about itself: the rule that names its status
//! file, in one place for kvfs (which writes the file) and for the programs
//! that read it (`kvctl watch --mount`).

use std::path::{Path, PathBuf};

/// Where the status files of root's mounts live (kvfs's `-o status_dir=`
/// default for root).
pub const SYSTEM_STATUS_DIR: &str = "/run/kvfs";

/// The status directory of a mount made by this user without
/// `-o status_dir=`: [`SYSTEM_STATUS_DIR`] for root, else
/// `$XDG_RUNTIME_DIR/kvfs`, else `~/.cache/kvfs`.
pub fn default_status_dir() -> PathBuf {
    if effective_uid() == Some(0) {
        return PathBuf::from(SYSTEM_STATUS_DIR);
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("kvfs")
}

/// The status file of the mount at `mountpoint` (an absolute path, as
/// `realpath` gives it): `<status_dir>/<escaped mountpoint>.status`, so
/// `/etc/app` has `etc-app.status`.
pub fn status_file(status_dir: &Path, mountpoint: &Path) -> PathBuf {
    status_dir.join(format!("{}.status", escape(mountpoint)))
}

/// `/etc/app` → `etc-app` (systemd-style escaping, simplified: every
/// character but ASCII letters, digits, `_` and `.` becomes `-`).
fn escape(p: &Path) -> String {
    let s = p.display().to_string();
    let s = s.trim_matches('/');
    if s.is_empty() {
        return "-".into();
    }
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' { c } else { '-' }).collect()
}

/// This process's effective user id, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_point_names_its_status_file() {
        let dir = Path::new("/run/kvfs");
        assert_eq!(status_file(dir, Path::new("/etc/app")), Path::new("/run/kvfs/etc-app.status"));
        assert_eq!(status_file(dir, Path::new("/srv/my app/")), Path::new("/run/kvfs/srv-my-app.status"));
        assert_eq!(status_file(dir, Path::new("/")), Path::new("/run/kvfs/-.status"));
        assert_eq!(status_file(dir, Path::new("/a_b/c.d")), Path::new("/run/kvfs/a_b-c.d.status"));
    }

    #[test]
    fn the_effective_uid_is_read() {
        assert!(effective_uid().is_some());
    }
}
