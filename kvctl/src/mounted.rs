//! `kvctl watch --mount DIR`: the kvfs mount at DIR, and waiting until it
//! serves a revision, read from its status file (kvfs(8), FILES).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// How often the status file is read while waiting.
const POLL: Duration = Duration::from_millis(20);

/// What kvctl reads of a mount's status file.
#[derive(Debug, serde::Deserialize)]
struct Status {
    revision: u64,
    /// Missing from the files of a kvfs older than `--mount`.
    prefix: Option<String>,
}

/// A kvfs mount that shows the watched prefix.
#[derive(Debug, Clone)]
pub struct Mounted {
    /// The mount point, as given.
    pub dir: PathBuf,
    status_file: PathBuf,
}

impl Mounted {
    /// The kvfs mount at `dir`, whose status file is in `status_dir` (kvfs's
    /// default when `None`); it must show every key under `prefix`.
    pub fn find(dir: &Path, status_dir: Option<&Path>, prefix: &str) -> anyhow::Result<Mounted> {
        let real = std::fs::canonicalize(dir).with_context(|| format!("--mount {}", dir.display()))?;
        let fstype = mount_type(&real)?;
        if fstype.as_deref() != Some("fuse.kvfs") {
            let what = fstype.map_or_else(|| "not a mount point".to_owned(), |t| format!("a {t} mount"));
            bail!("--mount {}: not a kvfs mount ({what})", dir.display());
        }
        let status_dir = status_dir.map_or_else(kv_client::mounts::default_status_dir, Path::to_path_buf);
        let status_file = kv_client::mounts::status_file(&status_dir, &real);
        let status = read(&status_file).with_context(|| {
            format!(
                "--mount {}: cannot read its status file (a mount made with -o status_dir=DIR needs --status-dir DIR)",
                dir.display()
            )
        })?;
        let shown = status.prefix.ok_or_else(|| {
            anyhow!("--mount {}: its status file names no prefix (kvfs is older than kvctl)", dir.display())
        })?;
        let (shown, watched) = (shown.trim_matches('/'), prefix.trim_matches('/'));
        if !kv_client::key_in_prefix(watched, shown) {
            bail!(
                "--mount {}: it shows the keys under {shown:?}, which do not hold every key under {watched:?}",
                dir.display()
            );
        }
        Ok(Mounted { dir: dir.to_owned(), status_file })
    }

    /// Waits (blocking, polling the status file) until the mount serves
    /// `revision`, at most `timeout`.
    pub fn wait_for(&self, revision: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = read(&self.status_file);
            if matches!(&seen, Ok(s) if s.revision >= revision) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let serves = match seen {
                    Ok(s) => format!("it serves revision {}", s.revision),
                    Err(e) => format!("{e:#}"),
                };
                return Err(format!(
                    "the mount at {} did not serve revision {revision} within {timeout:?} ({serves})",
                    self.dir.display()
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

fn read(path: &Path) -> anyhow::Result<Status> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a kvfs status file", path.display()))
}

/// The type of the file system mounted at `dir` (a real path), if `dir`
/// is a mount point; the last one mounted there wins.
fn mount_type(dir: &Path) -> anyhow::Result<Option<String>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let want = dir.display().to_string();
    // NOTE: mountinfo escapes spaces and the like as \ooo.
    let want = want.replace('\\', "\\134").replace(' ', "\\040").replace('\t', "\\011").replace('\n', "\\012");
    Ok(info
        .lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .find_map(|l| l.split_once(" - ").and_then(|(_, rest)| rest.split(' ').next()).map(str::to_owned)))
}
