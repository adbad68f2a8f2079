//! The FUSE adapter: each callback translates its arguments, calls the
//! [`Core`] and replies. No semantics live here; the kernel-facing choices
//! (open flags, capabilities, invalidation threads) do.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    BsdFileFlags, Errno, FileHandle, Filesystem, Generation, INodeNo, KernelConfig, LockOwner, Notifier, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use kv_client::{clock, Kind};

use crate::core::{Core, Inval, Invalidate, RenameMode, SetAttr, Told};
use crate::handles::{Caller, CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER};
use crate::passthrough::Answer;
use crate::tree::join;

/// What kvfs asks of the kernel; the bench's FUSE floor asks the same
/// (tests/bench/src/fusefloor.rs), so that it times nothing but kvfs.
pub mod kernel {
    use std::time::Duration;

    use fuser::{FopenFlags, InitFlags, KernelConfig};

    /// How long the kernel may keep attributes and names: long, because
    /// every change is pushed to it as an invalidation.
    pub const TTL: Duration = Duration::from_secs(3600);

    /// Threads of the FUSE session.
    pub const SESSION_THREADS: usize = 4;

    /// The capabilities asked for at INIT.
    ///
    /// open(O_TRUNC) arrives as one OPEN with O_TRUNC: the truncation stays
    /// in the new handle's buffer. (Without this capability it comes as a
    /// SETATTR with no handle, which would have to publish an empty value at
    /// once.) Listings carry attributes (READDIRPLUS); mappings work on
    /// files opened with direct I/O.
    pub const CAPABILITIES: InitFlags = InitFlags::FUSE_ATOMIC_O_TRUNC
        .union(InitFlags::FUSE_DO_READDIRPLUS)
        .union(InitFlags::FUSE_READDIRPLUS_AUTO)
        .union(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);

    /// A file's open flags (`reads`: opened for reading only).
    ///
    /// NOTE: direct I/O: each read(2) is answered from the handle's own
    /// version (a reader never sees two, whatever a writer of the same
    /// inode does to the kernel's idea of its size), writes never touch
    /// the page cache other readers use; KEEP_CACHE keeps the pages of
    /// mappings, which are filled from the inode's version. A reader's
    /// close has nothing to commit: no FLUSH.
    pub fn file_open(reads: bool) -> FopenFlags {
        let o = FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_KEEP_CACHE;
        if reads {
            o | FopenFlags::FOPEN_NOFLUSH
        } else {
            o
        }
    }

    /// A file's open flags with passthrough (`reads`: opened for reading
    /// only): the kernel refuses any other with it, KEEP_CACHE too; a
    /// writer keeps direct I/O, so its reads and writes still come here.
    pub fn file_through(reads: bool) -> FopenFlags {
        file_open(reads)
            & (FopenFlags::FOPEN_NOFLUSH | if reads { FopenFlags::empty() } else { FopenFlags::FOPEN_DIRECT_IO })
    }

    /// A directory's open flags: the kernel keeps the listing in its page
    /// cache until this mount or an invalidation says otherwise.
    pub const DIR_OPEN: FopenFlags = FopenFlags::FOPEN_CACHE_DIR.union(FopenFlags::FOPEN_KEEP_CACHE);

    /// Asks for FUSE passthrough (Linux 6.9+); whether the kernel offers it.
    pub fn ask_passthrough(config: &mut KernelConfig) -> bool {
        config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() && config.set_max_stack_depth(1).is_ok()
    }
}

use kernel::TTL;

/// Threads that carry invalidations to the kernel.
const INVAL_THREADS: usize = 4;

/// Who sends `req`: its uid and gid, the thread's other groups and its
/// capabilities over modes (from /proc). `held`: the kernel holds them to
/// the modes.
/// `opens`: it opens a file for writing, whose close needs its process (not
/// the thread the kernel names: see `flush`).
fn caller(req: &Request, held: bool, own_userns: &Option<std::path::PathBuf>, opens: bool) -> Caller {
    let proc = format!("/proc/{}", req.pid());
    let checked = req.uid() != 0 && held;
    let status = (checked || opens).then(|| read_proc(&format!("{proc}/status"))).flatten();
    let pid = status.as_deref().and_then(tgid_in).unwrap_or(req.pid());
    let mut c = Caller { uid: req.uid(), gids: vec![req.gid()], held, all_groups: true, caps: 0, pid };
    if !checked {
        // (their groups decide nothing)
        return c;
    }
    let Some(status) = status else {
        // (another pid namespace's process, or hidepid)
        c.all_groups = false;
        return c;
    };
    for l in status.lines() {
        if let Some(groups) = l.strip_prefix("Groups:") {
            c.gids.extend(groups.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
        } else if let Some(caps) = l.strip_prefix("CapEff:") {
            c.caps = u64::from_str_radix(caps.trim(), 16).unwrap_or(0) & (CAP_CHOWN | CAP_DAC_OVERRIDE | CAP_FOWNER);
        }
    }
    // IMPORTANT: capabilities count only in this mount's user namespace:
    // `unshare -r` gives any user all of them in a namespace of its own.
    if c.caps != 0 && std::fs::read_link(format!("{proc}/ns/user")).ok() != *own_userns {
        c.caps = 0;
    }
    // A service given CAP_DAC_OVERRIDE passes the kernel's checks of writes.
    if c.caps & CAP_DAC_OVERRIDE != 0 {
        c.held = false;
    }
    c
}

/// Whether this process runs as root.
#[allow(unsafe_code)]
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// The filesystem.
pub struct KvFs {
    core: Arc<Core>,
    no_open: bool,
    checks_modes: bool,
    /// This process's user namespace (/proc/self/ns/user).
    own_userns: Option<std::path::PathBuf>,
    /// Passthrough was asked for.
    passthrough: bool,
    /// Where the mount is, as /proc shows the paths of open files.
    mountpoint: Option<std::path::PathBuf>,
}

impl KvFs {
    /// A filesystem over a mount's core. `everyone`: every local user may
    /// use the mount (allow_other), as far as the kernel's mode checks let
    /// them; `checks_modes`: the kernel checks them (default_permissions).
    pub fn new(core: Arc<Core>, everyone: bool, checks_modes: bool) -> KvFs {
        // IMPORTANT: FUSE's no-open mode only where every user may use the
        // mount: where only root and the owner may, fuser turns the others
        // away by their OPENs, and lets READs that come without one through.
        let no_open = core.read_only() && everyone;
        let own_userns = std::fs::read_link("/proc/self/ns/user").ok();
        KvFs { core, no_open, checks_modes, own_userns, passthrough: false, mountpoint: None }
    }

    /// The mount point (its real path): a close by a process that still
    /// holds another descriptor of the file is told by it ([`holds`]).
    pub fn at(mut self, mountpoint: std::path::PathBuf) -> KvFs {
        self.mountpoint = Some(mountpoint);
        self
    }

    /// Asks the kernel for passthrough reads (`-o passthrough`).
    pub fn with_passthrough(mut self, on: bool) -> KvFs {
        self.passthrough = on;
        self
    }
}

/// Whether process `pid` still has a descriptor open for writing on
/// `file` (by /proc/PID/fd, whose links name what each descriptor has open,
/// and fdinfo, which gives its flags): its close of one of them, a shell's
/// `dup2` then `close`, is not its last. (A descriptor open only for
/// reading is another open of the file, not a copy of the writer's.)
fn holds(pid: u32, file: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    let want = file.as_os_str().as_bytes();
    fds.flatten().any(|fd| {
        let named = std::fs::read_link(fd.path()).is_ok_and(|t| {
            let t = t.as_os_str().as_bytes();
            // (a name the kernel was told to forget shows as deleted)
            t == want || t.strip_suffix(b" (deleted)") == Some(want)
        });
        named && !read_only(pid, &fd.file_name())
    })
}

/// The process (thread group) thread `tid` belongs to, by
/// /proc/TID/status; `None` if not known.
fn process_of(tid: u32) -> Option<u32> {
    if tid == 0 {
        return None;
    }
    tgid_in(&read_proc(&format!("/proc/{tid}/status"))?)
}

/// A /proc file whole, in one read where it fits a page (it shows a size
/// of 0, so `fs::read_to_string` starts with 32 bytes and doubles: a
/// status file took 8 reads, on every writable open and close).
fn read_proc(path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = String::with_capacity(4096);
    std::fs::File::open(path).ok()?.read_to_string(&mut s).ok()?;
    Some(s)
}

/// The `Tgid:` of a /proc status file.
fn tgid_in(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|t| t.trim().parse().ok())
}

/// Whether descriptor `fd` of process `pid` is open only for reading
/// (/proc/PID/fdinfo/FD's `flags:`, in octal); false if not known.
fn read_only(pid: u32, fd: &std::ffi::OsStr) -> bool {
    let info = read_proc(&format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy())).unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())
        .is_some_and(|f| f & libc::O_ACCMODE == libc::O_RDONLY)
}

fn ns_of(t: TimeOrNow) -> i64 {
    match t {
        TimeOrNow::Now => clock::now_ns(),
        TimeOrNow::SpecificTime(t) => clock::ns_of(t),
    }
}

/// How long the kernel may keep what it is told.
fn ttl(t: &Told) -> Duration {
    if t.keep {
        TTL
    } else {
        Duration::ZERO
    }
}

fn reply_entry(r: Result<Told, Errno>, reply: ReplyEntry) {
    match r {
        Ok(t) => reply.entry(&ttl(&t), &t.attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(r: Result<(), Errno>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// Invalidations for one notifier thread, made in order, and whom to tell
/// once all are done.
type Job = (Vec<Inval>, Option<Sender<()>>);

/// The invalidation sink of a mount: invalidations run on threads of their
/// own (never inside a FUSE callback), sharded by inode, so that a name
/// whose directory is locked by a slow operation holds up only its shard.
pub struct Invalidator {
    shards: Vec<Sender<Job>>,
    /// Handed to a notifier thread and not done yet.
    queued: Arc<AtomicU64>,
}

/// Starts the notifier threads; `notifier` gives the session's notifier
/// once the session exists (invalidations before then are moot).
pub fn invalidator(notifier: impl Fn() -> Option<Notifier> + Send + Sync + 'static) -> Invalidator {
    let notifier = Arc::new(notifier);
    let queued = Arc::new(AtomicU64::new(0));
    let mut shards: Vec<Sender<Job>> = Vec::new();
    for n in 0..INVAL_THREADS {
        let (tx, rx) = channel::<Job>();
        let notifier = notifier.clone();
        let queued = queued.clone();
        let _ = std::thread::Builder::new().name(format!("kvfs-inval-{n}")).spawn(move || {
            for (list, done) in rx {
                for i in &list {
                    if let Some(n) = notifier() {
                        let r = match i {
                            Inval::Inode(ino) => n.inval_inode(INodeNo(*ino), 0, 0),
                            // A negative offset: attributes only, pages stay.
                            Inval::Attrs(ino) => n.inval_inode(INodeNo(*ino), -1, 0),
                            Inval::Entry(parent, name) => n.inval_entry(INodeNo(*parent), OsStr::new(name)),
                        };
                        // ENOENT: the kernel had nothing cached.
                        if let Err(e) = r {
                            if e.raw_os_error() != Some(libc::ENOENT) {
                                tracing::debug!(error = %e, "invalidation failed");
                            }
                        }
                    }
                    queued.fetch_sub(1, Ordering::Relaxed);
                }
                if let Some(d) = done {
                    let _ = d.send(());
                }
            }
        });
        shards.push(tx);
    }
    Invalidator { shards, queued }
}

impl Invalidator {
    /// Hands `list` to the notifier threads, one job per thread (in the
    /// list's order within it); the number of jobs `done` hears of.
    fn queue(&self, list: Vec<Inval>, done: Option<&Sender<()>>) -> usize {
        let mut jobs: Vec<Vec<Inval>> = vec![Vec::new(); self.shards.len()];
        for i in list {
            let shard = match &i {
                Inval::Inode(ino) | Inval::Attrs(ino) => *ino as usize,
                Inval::Entry(parent, _) => *parent as usize,
            } % self.shards.len().max(1);
            if let Some(job) = jobs.get_mut(shard) {
                job.push(i);
            }
        }
        let mut n = 0;
        for (s, job) in self.shards.iter().zip(jobs).filter(|(_, j)| !j.is_empty()) {
            let len = job.len() as u64;
            // NOTE: counted before the send, so the thread's decrement
            // never comes first.
            self.queued.fetch_add(len, Ordering::Relaxed);
            if s.send((job, done.cloned())).is_ok() {
                n += 1;
            } else {
                self.queued.fetch_sub(len, Ordering::Relaxed);
            }
        }
        n
    }
}

impl Invalidate for Invalidator {
    fn send(&self, list: Vec<Inval>) {
        self.queue(list, None);
    }

    fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    fn send_and_wait(&self, list: Vec<Inval>, bound: Duration) -> bool {
        let (tx, rx) = channel();
        let n = self.queue(list, Some(&tx));
        let deadline = std::time::Instant::now() + bound;
        for _ in 0..n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if rx.recv_timeout(left).is_err() {
                tracing::debug!(bound_ms = bound.as_millis() as u64, "the kernel took long to forget a name");
                return false;
            }
        }
        true
    }
}

impl Filesystem for KvFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(kernel::CAPABILITIES);
        // NOTE: passthrough (asked for): reads of a file opened here are
        // served by the kernel from a copy of its inode's version
        // (passthrough.rs). Only root may register backing files; without
        // it, or without the kernel's support, reads come here as before.
        if self.passthrough {
            if is_root() && kernel::ask_passthrough(config) {
                self.core.enable_passthrough();
                tracing::info!("passthrough reads on");
            } else {
                tracing::warn!(
                    "passthrough asked for, but it needs root and Linux 6.9 or later; reads go through kvfs"
                );
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(self.core.lookup(parent.0, name), reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let attr = match fh {
            Some(fh) => self.core.getattr_fh(ino.0, fh.0),
            None => self.core.getattr_asked(ino.0),
        };
        match attr {
            Ok(t) => reply.attr(&ttl(&t), &t.attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let who = if mode.is_some() || uid.is_some() || gid.is_some() {
            caller(req, self.checks_modes, &self.own_userns, false)
        } else {
            Caller { uid: req.uid(), ..Caller::default() }
        };
        let a = SetAttr { who, mode, uid, gid, size, mtime: mtime.map(ns_of), atime: atime.map(ns_of) };
        match self.core.setattr(ino.0, fh.map(|f| f.0), a) {
            // (Not kept while a descriptor holds unpublished changes: see
            // Core::getattr_told.)
            Ok(a) => reply.attr(if self.core.writing(ino.0) { &Duration::ZERO } else { &TTL }, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.core.readlink(ino.0) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        // NOTE: FIFOs, sockets (a unix socket's bind) and devices are stored
        // as entries of their kind; the kernel does their I/O and never asks
        // kvfs to open them. It checked the right to make a device
        // (CAP_MKNOD) before asking.
        let Some(kind) = crate::core::kind_of_mode(mode) else {
            return reply.error(Errno::EPERM);
        };
        let value = if kind.is_device() { crate::core::device_value_of(rdev) } else { Vec::new() };
        let owner = (req.uid(), req.gid());
        reply_entry(self.core.new_child(parent.0, name, kind, mode & !umask, value, owner).map(Told::kept), reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let owner = (req.uid(), req.gid());
        reply_entry(
            self.core.new_child(parent.0, name, Kind::Dir, mode & !umask, Vec::new(), owner).map(Told::kept),
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.core.unlink(parent.0, name, false), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.core.unlink(parent.0, name, true), reply);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let owner = (req.uid(), req.gid());
        let r = match target.to_str() {
            None => Err(Errno::EINVAL),
            Some("") => Err(Errno::ENOENT),
            Some(t) => self.core.new_child(parent.0, link_name, Kind::Symlink, 0o777, t.as_bytes().to_vec(), owner),
        };
        reply_entry(r.map(Told::kept), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = RenameMode {
            noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
        };
        reply_empty(self.core.rename(parent.0, name, newparent.0, newname, mode), reply);
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EPERM);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.no_open && flags.0 & libc::O_ACCMODE == libc::O_RDONLY {
            // NOTE: FUSE's no-open mode: the kernel takes ENOSYS as success
            // and stops sending OPEN and RELEASE for this mount; reads come
            // with no handle and are served by inode, whose version never
            // changes, so the kernel's page cache of it stays right.
            return reply.error(Errno::ENOSYS);
        }
        let reads = flags.0 & libc::O_ACCMODE == libc::O_RDONLY;
        let o = kernel::file_open(reads);
        let who = if reads { Caller::default() } else { caller(req, self.checks_modes, &self.own_userns, true) };
        let fh = match self.core.open_as(ino.0, flags.0, who) {
            Ok(fh) => fh,
            Err(e) => return reply.error(e),
        };
        match self.core.passthrough_answer(ino.0, fh, |f| reply.open_backing(f)) {
            Answer::Through(id) => reply.opened_passthrough(FileHandle(fh), kernel::file_through(reads), &id),
            Answer::Plain => reply.opened(FileHandle(fh), o),
            Answer::Refuse => reply.error(Errno::EIO),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // A read(2) through a handle comes with its process's lock owner; a
        // page-cache fill (a mapping) without.
        match self.core.read(ino.0, fh.0, offset, size, lock_owner.is_some()) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.core.write(fh.0, offset, data, lock_owner.map(|o| o.0)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, req: &Request, _ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        // NOTE: close() reports what this returns. A read-only mount has
        // nothing to commit: ENOSYS tells the kernel to stop sending FLUSH.
        if self.core.read_only() {
            return reply.error(Errno::ENOSYS);
        }
        let pid = req.pid();
        // (the kernel gives a thread's id; the opener's is its process's:
        // a program may open on one thread and close on another, since gone)
        let opened = |opener: u32| opener == pid || Some(opener) == process_of(pid);
        let held = |path: &str| self.mountpoint.as_ref().is_some_and(|m| holds(pid, &m.join(path)));
        reply_empty(self.core.flush_by(fh.0, lock_owner.0, &opened, &held), reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0);
        self.core.passthrough_release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(self.core.fsync(fh.0), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // NOTE: FUSE's no-opendir mode would save two round trips per `ls`,
        // but fusermount3 then cannot tell a crashed kvfs (it opens the
        // mountpoint and unmounts only on ENOTCONN), and leaves a dead mount.
        // (Nor could fuser then turn other users away from an allow_root
        // mount: it refuses their OPENDIR, not their READDIR.)
        // The kernel keeps the listing in its page cache until this mount
        // or an invalidation (a change seen in the cluster) says otherwise.
        // While a change to the listing is under way, the kernel drops the
        // one it has and keeps none.
        let (fh, keep) = self.core.opendir(ino.0);
        reply.opened(FileHandle(fh), if keep { kernel::DIR_OPEN } else { fuser::FopenFlags::empty() });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.core.readdir(ino.0, fh.0, offset) {
            Ok(list) => {
                for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        // The listing carries each entry's attributes: `ls -l` of a directory
        // needs no LOOKUP per name.
        let (list, dir) = match (self.core.readdir(ino.0, fh.0, offset), self.core.dir_path(ino.0)) {
            (Ok(l), Ok(d)) => (l, d),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        for (i, (_, _, name)) in list.iter().enumerate().skip(offset as usize) {
            // NOTE: the kernel counts a lookup for every entry but `.` and `..`.
            let attr = match name.as_str() {
                "." => self.core.getattr_told(ino.0),
                ".." => self.core.getattr_told(list[1].0),
                _ => self.core.entry_told(&join(&dir, name)),
            };
            // An entry removed since the listing was taken is left out.
            let Ok(t) = attr else { continue };
            let attr = t.attr;
            if reply.add(attr.ino, (i + 1) as u64, name, &ttl(&t), &attr, Generation(0)) {
                if !matches!(name.as_str(), "." | "..") {
                    self.core.forget(attr.ino.0, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.core.fallocate(fh.0, offset, length, mode), reply);
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.core.entry_count();
        reply.statfs(1 << 28, 1 << 27, 1 << 27, files + (1 << 20), 1 << 20, 4096, 255, 4096);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOTSUP);
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        // NOTE: no xattrs are stored; "not supported" also tells the kernel
        // to stop asking (ls -l asks for the ACL of every file).
        reply.error(Errno::ENOTSUP);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENODATA);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.core.create_as(
            parent.0,
            name,
            mode & !umask,
            flags,
            caller(req, self.checks_modes, &self.own_userns, true),
        ) {
            Ok((a, fh)) => {
                let o = kernel::file_open(false);
                // (by the same rules as OPEN: passthrough.rs)
                match self.core.passthrough_answer(a.ino.0, fh, |f| reply.open_backing(f)) {
                    Answer::Through(id) => reply.created_passthrough(
                        &TTL,
                        &a,
                        Generation(0),
                        FileHandle(fh),
                        kernel::file_through(false),
                        &id,
                    ),
                    Answer::Plain => reply.created(&TTL, &a, Generation(0), FileHandle(fh), o),
                    // NOTE: cannot happen (a new inode has no handles to
                    // disagree with); the kernel's lookup stays counted.
                    Answer::Refuse => reply.error(Errno::EIO),
                }
            }
            Err(e) => reply.error(e),
        }
    }
}
