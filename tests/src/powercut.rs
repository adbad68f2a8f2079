//! The harness's side of the power-cut fault (the recorder is in
//! tests/failsync): after the process is dead, take back every byte it wrote
//! to a file of its data dir after that file's last completed fsync, by
//! zeroing it, as a power cut does to what sat in the page cache. Metadata
//! (creates, renames, sizes) is kept, as in Jepsen's LazyFS.

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One file's writes and fsyncs, by line number in the log.
#[derive(Default)]
struct FileLog {
    /// (offset, len), by write sequence number.
    writes: HashMap<u64, (u64, u64)>,
    /// Line of the `B` of the last fsync that succeeded.
    synced_at: Option<usize>,
}

/// What [`apply`] took back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// Files with at least one byte zeroed.
    pub files: usize,
    /// Bytes zeroed.
    pub bytes: u64,
}

/// Parses the recorder's log into the ranges, per `(dev, ino)`, that were
/// not durable when the process died.
fn lost_ranges(log: &str) -> HashMap<(u64, u64), Vec<(u64, u64)>> {
    let mut files: HashMap<(u64, u64), FileLog> = HashMap::new();
    // seq → line of a write's return, and file and line of an fsync begun.
    let mut done: HashMap<u64, usize> = HashMap::new();
    let mut begun_sync: HashMap<u64, ((u64, u64), usize)> = HashMap::new();
    for (line, text) in log.lines().enumerate() {
        let f: Vec<u64> = text.split(' ').skip(1).filter_map(|n| n.parse().ok()).collect();
        match (text.as_bytes().first(), f.as_slice()) {
            (Some(b'W'), [seq, dev, ino, off, len]) => {
                files.entry((*dev, *ino)).or_default().writes.insert(*seq, (*off, *len));
            }
            (Some(b'D'), [seq]) => {
                done.insert(*seq, line);
            }
            (Some(b'B'), [seq, dev, ino]) => {
                begun_sync.insert(*seq, ((*dev, *ino), line));
            }
            (Some(b'S'), [seq]) => {
                if let Some((file, at)) = begun_sync.get(seq) {
                    let f = files.entry(*file).or_default();
                    f.synced_at = f.synced_at.max(Some(*at));
                }
            }
            // NOTE: the last line may be cut short by the kill.
            _ => {}
        }
    }
    files
        .into_iter()
        .map(|(file, f)| {
            let lost = f
                .writes
                .iter()
                .filter(|(seq, _)| match (done.get(seq), f.synced_at) {
                    (Some(d), Some(s)) => *d > s,
                    _ => true,
                })
                .map(|(_, r)| *r)
                .collect();
            (file, lost)
        })
        .collect()
}

/// Zeroes, in every regular file under `dir`, what the log at `log` says was
/// written and not yet durable. The process that wrote the log must be dead.
pub fn apply(log: &Path, dir: &Path) -> std::io::Result<Cut> {
    let text = match std::fs::read_to_string(log) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Cut::default()),
        Err(e) => return Err(e),
    };
    let lost = lost_ranges(&text);
    let mut cut = Cut::default();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                stack.push(e.path());
                continue;
            }
            let Some(ranges) = lost.get(&(meta.dev(), meta.ino())).filter(|_| meta.is_file()) else { continue };
            let mut file = std::fs::OpenOptions::new().write(true).open(e.path())?;
            let mut zeroed = 0;
            for &(off, len) in ranges {
                let end = (off + len).min(meta.len());
                if end > off {
                    file.seek(SeekFrom::Start(off))?;
                    file.write_all(&vec![0; (end - off) as usize])?;
                    zeroed += end - off;
                }
            }
            if zeroed > 0 {
                file.sync_all()?;
                cut.files += 1;
                cut.bytes += zeroed;
            }
        }
    }
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_durable_only_if_it_returned_before_a_successful_fsync_began() {
        let log = "\
W 0 1 7 0 10
D 0
B 1 1 7
W 2 1 7 10 5
D 2
S 1
W 3 1 7 15 5
D 3
B 4 1 7
W 5 1 9 0 3
";
        let lost = lost_ranges(log);
        let mut of7 = lost[&(1, 7)].clone();
        of7.sort();
        // Write 2 returned after fsync 1 began; 3's fsync never succeeded.
        assert_eq!(of7, vec![(10, 5), (15, 5)]);
        // Write 5 never returned, on a file never synced.
        assert_eq!(lost[&(1, 9)], vec![(0, 3)]);
    }

    #[test]
    fn a_file_that_was_never_synced_loses_everything_written_to_it() {
        let lost = lost_ranges("W 0 2 3 0 4\nD 0\nB 1 2 3\n");
        assert_eq!(lost[&(2, 3)], vec![(0, 4)]);
    }
}
