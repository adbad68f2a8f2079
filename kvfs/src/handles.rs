//! Open files: what a reader reads, what a writer has buffered, and when a
//! writer's buffer is published. Plain data, no I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fuser::Errno;
use kv_client::Attrs;

/// Largest file a handle buffers (the cluster refuses larger values anyway).
pub const MAX_BUFFER: usize = 64 << 20;

/// An open file.
#[derive(Debug)]
pub struct Handle {
    /// The inode it was opened on.
    pub ino: u64,
    /// Reader or writer.
    pub io: Io,
}

/// What a handle does.
// (one per open file, in one map: a reader's unused room costs nothing
// worth a box on every writer's access)
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Io {
    /// Reads one version, the one the file had at open, to its end.
    Read(Arc<Vec<u8>>),
    /// Buffers writes until a commit.
    Write(Writer),
}

/// A writable handle's buffer and its publishing rules.
///
/// IMPORTANT: one close() publishes at most one revision, and only the
/// close of the process that wrote last: a FLUSH comes on every close of
/// every descriptor (a shell's `dup2` then `close`, a forked child's exit),
/// often before anything was written. A buffer that was only truncated
/// (`: > f`, or `cmd > f` before `cmd` writes) is published at RELEASE, the
/// last close, so that `echo 2 > f` never publishes an empty revision first.
#[derive(Debug)]
pub struct Writer {
    /// The whole new content.
    pub buf: Vec<u8>,
    /// Holds something not yet published.
    pub dirty: bool,
    /// A WRITE (not only a truncation) came since the last commit.
    pub wrote: bool,
    /// An `ftruncate` came since the last commit.
    pub resized: bool,
    /// Lock owner (the process's file table) of the last WRITE; `None`
    /// when unknown (writeback of a shared mapping).
    pub last_writer: Option<u64>,
    /// Replaces the value whatever it is (opened with `O_TRUNC`, or
    /// created): last writer wins, for the handle's whole life.
    pub replace: bool,
    /// Writes go to the end.
    pub append: bool,
    /// The revision this buffer edits in place: a commit of a handle that
    /// does not replace succeeds only if the key still has it.
    pub base_rev: u64,
    /// What the open found, and when.
    pub opened: Opened,
    /// An edit opened while another descriptor held an unpublished
    /// truncation of its version: its buffer began as the empty file.
    pub holds_truncation: bool,
    /// When its content last changed (its open's truncation, a write, an
    /// ftruncate), by the clock of [`Opened::ns`].
    pub changed_ns: i64,
    /// Attributes the next commit sets (a created file's, or a chmod of a
    /// file not yet in the cluster).
    pub attrs: Attrs,
    /// Bumped by every change: a commit leaves the handle clean only if
    /// nothing changed while it ran.
    pub gen: u64,
    /// A write or commit failed: the handle publishes nothing any more, and
    /// each later close reports this.
    pub failed: Option<Errno>,
    /// Held across a commit, so commits of one handle run one at a time.
    pub commit_lock: Arc<Mutex<()>>,
    /// Who opened it.
    pub opener: Caller,
    /// The attributes (as shown) the kernel let the opener in by.
    pub checked: Option<Shown>,
    /// Until when its RELEASE is waited for: a close left it holding what
    /// only its last close publishes (the RELEASE may be on its way).
    /// Cleared by a write or a GETATTR through it (it is in use), or once
    /// it lapses.
    pub release_expected: Option<Instant>,
    /// Its RELEASE has begun (publishing it, if it holds something).
    pub releasing: bool,
}

/// What of an entry's attributes decides who may use it, as this host
/// shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown {
    /// Its kind.
    pub kind: fuser::FileType,
    /// Its permission bits.
    pub perm: u16,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

impl From<&fuser::FileAttr> for Shown {
    fn from(a: &fuser::FileAttr) -> Shown {
        Shown { kind: a.kind, perm: a.perm, uid: a.uid, gid: a.gid }
    }
}

/// The user a request comes from, as the kernel checks it: uid, and the
/// primary and supplementary gids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// User id (0: root).
    pub uid: u32,
    /// Group ids, the primary first.
    pub gids: Vec<u32>,
    /// The kernel holds this user to the modes (a mount with
    /// default_permissions); kvfs then does too, where the kernel cannot.
    pub held: bool,
    /// `gids` are all of the user's groups (false: /proc could not say).
    pub all_groups: bool,
    /// Its effective [`CAP_CHOWN`], [`CAP_DAC_OVERRIDE`] and [`CAP_FOWNER`]
    /// in this mount's user namespace.
    pub caps: u64,
    /// The process that asked (its thread group id, else the thread's id);
    /// 0 if not known.
    pub pid: u32,
}

/// capability(7)'s CAP_CHOWN, as a bit of a capability set.
pub const CAP_CHOWN: u64 = 1 << 0;
/// CAP_DAC_OVERRIDE.
pub const CAP_DAC_OVERRIDE: u64 = 1 << 1;
/// CAP_FOWNER.
pub const CAP_FOWNER: u64 = 1 << 3;

impl Caller {
    /// A user with no capabilities over modes, held to them, all of whose
    /// groups are `gids` (the primary first).
    pub fn held(uid: u32, gids: Vec<u32>) -> Caller {
        Caller { uid, gids, held: true, all_groups: true, caps: 0, pid: 0 }
    }

    /// Whether kvfs holds this user to the modes.
    pub fn is_held(&self) -> bool {
        self.held && self.uid != 0
    }

    /// Whether POSIX's rule lets this user write a file shown as `a`.
    pub fn may_write(&self, a: &Shown) -> bool {
        let bit = if !self.is_held() {
            return true;
        } else if self.uid == a.uid {
            0o200
        } else if self.gids.contains(&a.gid) {
            0o020
        } else {
            0o002
        };
        a.perm & bit != 0
    }
}

/// What a writer's open found: the content and mtime of the version it
/// opened (none for a file it made), and when (ns since the epoch, this
/// host's clock).
#[derive(Debug, Clone, Default)]
pub struct Opened {
    /// The content.
    pub value: Arc<Vec<u8>>,
    /// The mtime (kept when this mount changes only the file's attributes:
    /// `Core::rebase`).
    pub mtime: i64,
    /// When.
    pub ns: i64,
}

impl Opened {
    /// Whether a version with `value` and `mtime` was written since the
    /// open: other content, or the same content written again (its mtime);
    /// a chmod is no write.
    pub fn written_in(&self, value: &Arc<Vec<u8>>, mtime: i64) -> bool {
        *value != self.value || mtime != self.mtime
    }
}

impl Writer {
    /// A writer over `content` (empty for `O_TRUNC` and created files).
    pub fn new(content: Vec<u8>, truncated: bool, base_rev: u64) -> Writer {
        let now = kv_client::clock::now_ns();
        Writer {
            buf: content,
            dirty: truncated,
            wrote: false,
            resized: false,
            last_writer: None,
            replace: truncated,
            append: false,
            base_rev,
            opened: Opened { ns: now, ..Opened::default() },
            holds_truncation: false,
            changed_ns: now,
            attrs: Attrs::default(),
            gen: 0,
            failed: None,
            commit_lock: Arc::default(),
            opener: Caller::default(),
            checked: None,
            release_expected: None,
            releasing: false,
        }
    }

    /// Writes `data` at `offset` (at the end for `O_APPEND`).
    pub fn write(&mut self, offset: u64, data: &[u8], owner: Option<u64>) -> Result<u32, Errno> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let off = if self.append { self.buf.len() } else { usize::try_from(offset).map_err(|_| Errno::EFBIG)? };
        let end = off.saturating_add(data.len());
        if end > MAX_BUFFER {
            // NOTE: a partial copy must not replace the old value at close.
            self.failed = Some(Errno::EFBIG);
            return Err(Errno::EFBIG);
        }
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        self.buf[off..end].copy_from_slice(data);
        // A write after a time was set makes the time the commit's.
        self.attrs.mtime_ns = None;
        self.dirty = true;
        self.wrote = true;
        self.changed_ns = kv_client::clock::now_ns();
        self.release_expected = None;
        self.last_writer = owner;
        self.gen += 1;
        Ok(data.len() as u32)
    }

    /// Truncates or extends the buffer (`ftruncate`, or `O_TRUNC`).
    pub fn truncate(&mut self, size: u64) -> Result<(), Errno> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let size = usize::try_from(size).ok().filter(|s| *s <= MAX_BUFFER).ok_or(Errno::EFBIG)?;
        self.buf.resize(size, 0);
        self.replace |= size == 0;
        // (a change of size is a change of content: the commit's time)
        self.attrs.mtime_ns = None;
        self.dirty = true;
        self.resized = true;
        self.changed_ns = kv_client::clock::now_ns();
        self.gen += 1;
        Ok(())
    }

    /// Whether the close of a descriptor by `owner` publishes the buffer.
    pub fn publishes_at_flush(&self, owner: u64) -> bool {
        self.failed.is_none() && self.dirty && self.wrote && self.last_writer.is_none_or(|w| w == owner)
    }

    /// Whether the handle's only change to the content is its open's: the
    /// truncation of `O_TRUNC`, or the creation of the file (no write, no
    /// `ftruncate` since, nothing published yet; a chmod or a time set
    /// through it is no change of content).
    pub fn only_opened(&self) -> bool {
        self.failed.is_none() && self.dirty && self.replace && !self.wrote && !self.resized
    }

    /// Whether the last close (or an fsync) publishes the buffer.
    pub fn publishes_at_release(&self) -> bool {
        self.failed.is_none() && self.dirty
    }

    /// After a commit of the buffer as it was at `gen`, now stored at `rev`:
    /// clean unless it changed meanwhile; later commits edit `rev`.
    pub fn committed(&mut self, rev: u64, gen: u64) {
        self.base_rev = rev;
        if self.gen == gen {
            self.dirty = false;
            self.wrote = false;
            self.resized = false;
            self.attrs = Attrs::default();
        }
        // (it is an edit of `rev` now, whatever came since)
        self.holds_truncation = false;
    }
}

/// The open files, by handle number.
#[derive(Debug, Default)]
pub struct Handles {
    map: HashMap<u64, Handle>,
    next: u64,
    /// The latest [`Writer::release_expected`] set, and how many writers'
    /// RELEASEs are publishing them: while neither holds, no writer's is
    /// waited for (getattr asks, on every call).
    waits_until: Option<Instant>,
    releasing: usize,
}

impl Handles {
    /// Registers a handle; its number.
    pub fn open(&mut self, h: Handle) -> u64 {
        self.next += 1;
        self.map.insert(self.next, h);
        self.next
    }

    /// A handle.
    pub fn get(&self, fh: u64) -> Result<&Handle, Errno> {
        self.map.get(&fh).ok_or(Errno::EBADF)
    }

    /// A writable handle.
    pub fn writer(&mut self, fh: u64) -> Result<&mut Writer, Errno> {
        match self.map.get_mut(&fh).map(|h| &mut h.io) {
            Some(Io::Write(w)) => Ok(w),
            Some(Io::Read(_)) => Err(Errno::EBADF),
            None => Err(Errno::EBADF),
        }
    }

    /// Forgets a handle.
    pub fn close(&mut self, fh: u64) -> Option<Handle> {
        let h = self.map.remove(&fh);
        if let Some(Handle { io: Io::Write(w), .. }) = &h {
            self.releasing -= usize::from(w.releasing);
        }
        h
    }

    /// A close left writer `fh` holding what only its last close publishes:
    /// its RELEASE is waited for until `until`.
    pub fn expect_release(&mut self, fh: u64, until: Instant) {
        if let Ok(w) = self.writer(fh) {
            w.release_expected = Some(until);
            self.waits_until = self.waits_until.max(Some(until));
        }
    }

    /// Writer `fh`'s RELEASE came; whether it publishes the buffer.
    pub fn start_release(&mut self, fh: u64) -> bool {
        let Ok(w) = self.writer(fh) else { return false };
        let counted = !std::mem::replace(&mut w.releasing, true);
        let publishes = w.publishes_at_release();
        self.releasing += usize::from(counted);
        publishes
    }

    /// The writers (handle, inode) that their last close is publishing, or
    /// may be about to ([`Writer::release_expected`]); waits that have
    /// lapsed by `now` are dropped.
    pub fn publishing_at_release(&mut self, now: Instant) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if self.releasing == 0 && self.waits_until.is_none_or(|t| t <= now) {
            self.waits_until = None;
            return out;
        }
        for (fh, h) in self.map.iter_mut() {
            if let Io::Write(w) = &mut h.io {
                if w.release_expected.is_some_and(|t| t <= now) {
                    w.release_expected = None;
                }
                if w.releasing || (w.release_expected.is_some() && w.publishes_at_release()) {
                    out.push((*fh, h.ino));
                }
            }
        }
        out
    }

    /// The writers whose only change is a truncation made at their open
    /// after `ns` (see [`Writer::only_opened`]): (handle, inode).
    pub fn truncations_since(&self, ns: i64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().filter_map(move |(fh, h)| match &h.io {
            Io::Write(w) if w.only_opened() && w.opened.ns > ns => Some((*fh, h.ino)),
            _ => None,
        })
    }

    /// The writers open on inode `ino`.
    pub fn writers_on(&mut self, ino: u64) -> impl Iterator<Item = (u64, &mut Writer)> {
        self.map.iter_mut().filter(move |(_, h)| h.ino == ino).filter_map(|(fh, h)| match &mut h.io {
            Io::Write(w) => Some((*fh, w)),
            Io::Read(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_before_any_write_publishes_nothing() {
        let mut w = Writer::new(Vec::new(), true, 3);
        assert!(!w.publishes_at_flush(7), "the shell's dup2 close of an O_TRUNC handle");
        assert!(w.publishes_at_release(), "`: > f` still empties the file at the last close");
        w.write(0, b"2\n", Some(7)).expect("write");
        assert!(w.publishes_at_flush(7));
    }

    #[test]
    fn a_release_is_waited_for_until_it_comes_a_write_comes_or_the_wait_lapses() {
        let mut hs = Handles::default();
        let now = Instant::now();
        let later = now + std::time::Duration::from_millis(200);
        let fh = hs.open(Handle { ino: 5, io: Io::Write(Writer::new(Vec::new(), true, 3)) });
        let other = hs.open(Handle { ino: 6, io: Io::Read(Arc::default()) });
        assert!(hs.publishing_at_release(now).is_empty());
        hs.expect_release(fh, later);
        assert_eq!(hs.publishing_at_release(now), vec![(fh, 5)]);
        hs.writer(fh).expect("writer").write(0, b"x", Some(1)).expect("write");
        assert!(hs.publishing_at_release(now).is_empty(), "a write: the descriptor is in use");
        hs.expect_release(fh, later);
        assert!(hs.publishing_at_release(later).is_empty(), "lapsed");
        assert!(hs.start_release(fh), "the truncation is published at the last close");
        assert_eq!(hs.publishing_at_release(later), vec![(fh, 5)], "a RELEASE under way has no lapse");
        assert!(hs.close(other).is_some() && hs.close(fh).is_some());
        assert!(hs.publishing_at_release(later).is_empty());
    }

    #[test]
    fn only_the_last_writer_s_close_publishes() {
        let mut w = Writer::new(b"old".to_vec(), false, 3);
        w.write(0, b"a", Some(1)).expect("write");
        assert!(!w.publishes_at_flush(2), "a forked child that wrote nothing closes its copy");
        assert!(w.publishes_at_flush(1));
        w.write(1, b"b", None).expect("write");
        assert!(w.publishes_at_flush(2), "an unknown writer: any close publishes");
    }

    #[test]
    fn a_failed_write_publishes_nothing_ever() {
        let mut w = Writer::new(Vec::new(), true, 3);
        w.write(0, b"part", Some(1)).expect("write");
        assert_eq!(w.write(MAX_BUFFER as u64, b"x", Some(1)), Err(Errno::EFBIG));
        assert!(!w.publishes_at_flush(1) && !w.publishes_at_release());
        assert_eq!(w.write(0, b"x", Some(1)), Err(Errno::EFBIG));
    }

    #[test]
    fn a_commit_keeps_a_replacing_handle_replacing_and_a_changed_buffer_dirty() {
        let mut w = Writer::new(Vec::new(), true, 3);
        w.write(0, b"1", Some(1)).expect("write");
        let gen = w.gen;
        w.write(1, b"2", Some(1)).expect("write");
        w.committed(9, gen);
        assert!(w.dirty && w.replace);
        assert_eq!(w.base_rev, 9);
        let gen = w.gen;
        w.committed(10, gen);
        assert!(!w.dirty && w.replace);
    }
}
