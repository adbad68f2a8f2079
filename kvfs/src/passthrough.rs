//! FUSE passthrough (`-o passthrough`): the kernel reads a file's bytes from
//! a sealed memory file holding its inode's version, so a read(2) costs no
//! round trip to kvfs. Bookkeeping around fuser's backing ids; fs.rs makes
//! the answers.
//!
//! IMPORTANT: the kernel's rules (fs/fuse/iomode.c): while an inode has a
//! passthrough open, every other open of it must pass through too, with
//! the same backing file, or it fails with EIO; and while it has an open
//! that does not (one that maps it), a passthrough open fails. Which open
//! the kernel counts first is not the order kvfs answered them in. So an
//! inode is answered one way for as long as kvfs has a handle open on it:
//! - **through** (a backing file) when its content came from the cluster:
//!   such an inode's content does not change (inodes.rs), and while it has
//!   such handles core detaches it rather than give it new content in
//!   place (a file renamed to a scratch name, core's commit and
//!   `own_version`): so the backing file is its version for as long as the
//!   kernel uses it. A writer passes through too, with direct I/O on top:
//!   its reads and writes still come to kvfs, only its mappings go to the
//!   backing file (what kvfs(8) says this gives up);
//! - **plainly** when it is a file created here and not yet committed, or
//!   a scratch file: those take new content in place.
//!
//! The choice is made again once no handle is open on the inode.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fuser::BackingId;

/// Backing files kept for inodes with no open handle, the least recently
/// used dropped first: a file opened again soon needs no new one.
const IDLE: usize = 256;

/// How an inode's opens are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Through,
    Plain,
}

/// An inode's state.
struct Entry {
    mode: Mode,
    /// Open handles on it (counted from the answer; the kernel's count is
    /// never above this, since it sends RELEASE after it drops its own).
    open: usize,
    /// Its backing file (`Through`): the registration with the kernel,
    /// which holds the memory file, and the version it holds.
    backing: Option<(Arc<BackingId>, Arc<Vec<u8>>)>,
    /// When it was last opened (a counter).
    used: u64,
}

#[derive(Default)]
struct Inner {
    by_ino: HashMap<u64, Entry>,
    /// The inode of every open handle counted here.
    by_fh: HashMap<u64, u64>,
    tick: u64,
}

/// The backing files of a mount.
#[derive(Default)]
pub struct Backings {
    on: AtomicBool,
    /// A failure to pass through was logged.
    warned: AtomicBool,
    /// The kernel refused a backing file for lack of privilege: no inode
    /// passes through any more (those that do keep doing so).
    refused: AtomicBool,
    inner: Mutex<Inner>,
}

/// How to answer an open.
pub enum Answer {
    /// With this backing file (held until the handle's RELEASE).
    Through(Arc<BackingId>),
    /// As without passthrough.
    Plain,
    /// With EIO, publishing nothing.
    Refuse,
}

impl Backings {
    /// Whether opens pass through (asked for and granted).
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Turns passthrough on (the kernel granted it).
    pub fn enable(&self) {
        self.on.store(true, Ordering::Relaxed);
    }

    /// How to answer OPEN (or CREATE) of `fh` on `ino`, whose version is
    /// `version`; `settled`: that content came from the cluster (not a file
    /// created here and not yet committed, nor a scratch file).
    /// `open_backing` registers a memory file with the kernel.
    pub fn answer(
        &self,
        ino: u64,
        fh: u64,
        version: &Arc<Vec<u8>>,
        settled: bool,
        open_backing: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Answer {
        let Ok(mut inner) = self.inner.lock() else { return Answer::Refuse };
        let inner = &mut *inner;
        inner.tick += 1;
        let tick = inner.tick;
        let e = inner.by_ino.entry(ino).or_insert(Entry { mode: Mode::Plain, open: 0, backing: None, used: tick });
        e.used = tick;
        if e.open == 0 {
            let through = settled && !self.refused.load(Ordering::Relaxed);
            e.mode = if through { Mode::Through } else { Mode::Plain };
        }
        if e.mode == Mode::Through {
            let same = e.backing.as_ref().is_some_and(|(_, v)| Arc::ptr_eq(v, version) || v == version);
            if !same && e.open > 0 {
                // NOTE: cannot happen while such inodes keep their content;
                // the kernel would refuse any other answer.
                tracing::error!(ino, "an inode's version changed under open passthrough handles");
                return Answer::Refuse;
            }
            if !same {
                match sealed(version).and_then(|f| open_backing(&f)) {
                    // (the kernel holds the memory file from here on)
                    Ok(id) => e.backing = Some((Arc::new(id), version.clone())),
                    Err(err) => {
                        // (no CAP_SYS_ADMIN, or out of memory or files): this
                        // inode goes without, until its handles are closed.
                        if err.raw_os_error() == Some(libc::EPERM) {
                            self.refused.store(true, Ordering::Relaxed);
                        }
                        if !self.warned.swap(true, Ordering::Relaxed) {
                            tracing::warn!(error = %err, "passthrough refused; such files are read through kvfs");
                        }
                        e.backing = None;
                        e.mode = Mode::Plain;
                    }
                }
            }
        }
        e.open += 1;
        let answer = match (&e.mode, &e.backing) {
            (Mode::Through, Some((id, _))) => Answer::Through(id.clone()),
            _ => Answer::Plain,
        };
        inner.by_fh.insert(fh, ino);
        answer
    }

    /// Whether `ino` has open handles answered with its backing file: its
    /// content must not change (core detaches it instead).
    pub fn pinned(&self, ino: u64) -> bool {
        self.on()
            && self
                .inner
                .lock()
                .map(|i| i.by_ino.get(&ino).is_some_and(|e| e.mode == Mode::Through && e.open > 0))
                .unwrap_or(true)
    }

    /// RELEASE of `fh` (or an open answered with an error).
    pub fn release(&self, fh: u64) {
        if !self.on() {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else { return };
        let Some(ino) = inner.by_fh.remove(&fh) else { return };
        let Some(e) = inner.by_ino.get_mut(&ino) else { return };
        e.open = e.open.saturating_sub(1);
        if e.open == 0 && e.mode == Mode::Plain {
            inner.by_ino.remove(&ino);
        }
        // (the idle ones are counted only when there may be too many)
        if inner.by_ino.len() <= IDLE {
            return;
        }
        let mut idle: Vec<(u64, u64)> =
            inner.by_ino.iter().filter(|(_, e)| e.open == 0).map(|(i, e)| (e.used, *i)).collect();
        if idle.len() > IDLE {
            idle.sort_unstable();
            for (_, i) in &idle[..idle.len() - IDLE] {
                inner.by_ino.remove(i);
            }
        }
    }
}

/// A memory file holding `bytes`, sealed against changes through it.
#[allow(unsafe_code)]
fn sealed(bytes: &[u8]) -> std::io::Result<File> {
    // SAFETY: the name is a valid C string; the call touches no other memory.
    let fd = unsafe {
        libc::memfd_create(c"kvfs".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | libc::MFD_NOEXEC_SEAL)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just made and is owned by nothing else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on an fd this function owns.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}
