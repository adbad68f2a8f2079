//! The mount's semantics, free of FUSE and of HTTP: what each filesystem
//! operation does to the cache, the inode and handle tables and the
//! cluster, as `Result<_, Errno>`. The FUSE adapter ([`crate::fs`]) only
//! translates; the watch ([`crate::sync`]) feeds changes in through
//! [`Core::apply`].
//!
//! NOTE: locks are never held across a cluster call. Lock order: `state`,
//! then `handles`.

mod names;
mod rename;
#[cfg(test)]
mod tests;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use fuser::{Errno, FileAttr, FileType, INodeNo};
use kv_client::clock::{self, now_ns};
use kv_client::{Kind, Meta, PutOptions};

use crate::cluster::{Cluster, Failure};
use crate::handles::{Caller, Handle, Handles, Io, Opened, Shown, Writer};
use crate::inodes::{Binding, Inodes, ROOT};
use crate::metrics::Commits;
use crate::tree::{glob_match, join, split, Tree, TreeNode};

pub use names::SetAttr;
pub use rename::RenameMode;
pub use watch::{loaded, node_of};

/// A kernel cache entry to drop.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Inval {
    /// Attributes and pages of an inode (a directory's listing).
    Inode(u64),
    /// Attributes of an inode only (its content did not change).
    Attrs(u64),
    /// A name in a directory.
    Entry(u64, String),
}

/// Where invalidations go: the FUSE adapter's notifier threads (a list in
/// tests). Called with no lock held, never from inside the kernel's
/// request for the same inode.
pub trait Invalidate: Send + Sync {
    /// Hands invalidations over and returns at once.
    fn send(&self, list: Vec<Inval>);
    /// Hands them over and waits until the kernel took them, at most
    /// `bound` (a directory another request holds locked waits for it);
    /// whether it took them all.
    fn send_and_wait(&self, list: Vec<Inval>, bound: Duration) -> bool;
    /// How many were handed over and are not done yet.
    fn queued(&self) -> u64 {
        0
    }
}

/// The invalidation sink of a mount.
pub type InvalSink = Box<dyn Invalidate>;

/// How long a close of a writer other than root waits for the watch to
/// bring the version that won over the one it was checked against.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// How long a close waits for the kernel to forget the name of the file it
/// just wrote, so that the next open on this mount finds the new version.
const OWN_INVAL_WAIT: Duration = Duration::from_millis(500);

/// How long a request on a file, or on its directory, waits for the
/// RELEASE of a descriptor whose close left it holding what only its last
/// close publishes ([`Core::after_releases`]). Past this the descriptor is
/// taken to be open still, in another process (a forked child's exit
/// closed its copy, and its parent holds the file).
const RELEASE_WAIT: Duration = Duration::from_millis(200);

/// How much earlier than a descriptor's open (by this host's clock) the
/// cluster may have taken a version that still counts as written after it
/// (see [`Core::commit`]): the clocks of hosts may disagree by this much.
const SUPERSEDE_SKEW_NS: i64 = 1_000_000_000;

/// How often [`Core::after_releases`] looks again whether a wait it waits
/// for has lapsed.
const LAPSE_CHECK: Duration = Duration::from_millis(20);

/// One entry of a directory listing: inode, type, name.
pub type DirEntry = (u64, FileType, String);

/// The cache and the inode table, under one lock: a change and the
/// inodes it detaches are one step for every reader.
#[derive(Debug, Default)]
pub struct State {
    /// Entries by path.
    pub tree: Tree,
    /// Inodes by path and number.
    pub inodes: Inodes,
    /// Paths a change from elsewhere is about to replace (names, their
    /// directories, attributes): the kernel is being told to forget them,
    /// and may not keep what it is shown of them until the change is
    /// applied (watch.rs).
    pub settling: HashSet<String>,
}

impl State {
    /// Whether the kernel may keep what it is shown of `path`: no change
    /// to it is under way ([`State::settling`]).
    pub fn settled(&self, path: &str) -> bool {
        self.settling.is_empty() || !self.settling.contains(path)
    }
}

/// What the kernel is shown of an entry or inode, and whether it may keep
/// it (`false`: a change is under way; it must ask again each time).
#[derive(Debug, Clone)]
pub struct Told {
    /// The attributes.
    pub attr: FileAttr,
    /// The kernel may keep them (and the name) for its usual time.
    pub keep: bool,
}

impl Told {
    /// `attr`, to keep: what this mount just made.
    pub fn kept(attr: FileAttr) -> Told {
        Told { attr, keep: true }
    }
}

/// How a mount behaves.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Key prefix of the mount (`""`: the whole keyspace).
    pub prefix: String,
    /// Read-only mount.
    pub ro: bool,
    /// Globs of names that stay local (editor scratch files).
    pub local: Vec<String>,
    /// How stored owners and modes are shown.
    pub attr_map: AttrMap,
}

/// How the stored owners and modes are shown on this host (`-o uid=, gid=,
/// umask=, fmode=, dmode=`), for fleets whose numeric ids differ between
/// hosts. Only what the kernel is told changes: what is stored does not,
/// and chmod and chown still store what they are given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttrMap {
    /// Every entry's owner.
    pub uid: Option<u32>,
    /// Every entry's group.
    pub gid: Option<u32>,
    /// Bits cleared from every stored mode (files and directories).
    pub umask: u32,
    /// Every file's mode (over `umask`).
    pub fmode: Option<u32>,
    /// Every directory's mode (over `umask`).
    pub dmode: Option<u32>,
}

impl AttrMap {
    /// `a` as this host shows it.
    pub fn apply(&self, a: &mut FileAttr) {
        let s = self.shown(Shown::from(&*a));
        (a.perm, a.uid, a.gid) = (s.perm, s.uid, s.gid);
    }

    /// `stored` as this host shows it. A symlink's mode means nothing and
    /// stays.
    pub fn shown(&self, stored: Shown) -> Shown {
        let fixed = match stored.kind {
            FileType::RegularFile => self.fmode,
            FileType::Directory => self.dmode,
            _ => None,
        };
        let perm = match (stored.kind, fixed) {
            (FileType::Symlink, _) => stored.perm,
            (_, Some(m)) => (m & 0o7777) as u16,
            (_, None) => stored.perm & !((self.umask & 0o777) as u16),
        };
        Shown { kind: stored.kind, perm, uid: self.uid.unwrap_or(stored.uid), gid: self.gid.unwrap_or(stored.gid) }
    }
}

/// The mount.
pub struct Core {
    cluster: Arc<dyn Cluster>,
    opts: Options,
    state: RwLock<State>,
    handles: Mutex<Handles>,
    listings: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_dir: AtomicU64,
    /// Held while a change from elsewhere is made (watch.rs).
    applying: Mutex<()>,
    inval: InvalSink,
    /// What the mount's token may read (`None`: not known, assume all).
    pub grants: RwLock<Option<kv_client::Grants>>,
    /// The watch stream is up (set by the watch).
    pub connected: AtomicBool,
    /// The cache changed since the last-known-good copy was saved.
    pub dirty: AtomicBool,
    /// The changes sent to the cluster, and how they failed.
    pub commits: Commits,
    /// Files the kernel reads from backing files (`-o passthrough`).
    backings: crate::passthrough::Backings,
    started_ns: i64,
    /// Counts the changes [`Core::after_releases`] may be waiting for: a
    /// RELEASE done, a descriptor used after a close (a write, a GETATTR
    /// through it), an fsync that published.
    released: (Mutex<u64>, std::sync::Condvar),
    /// This mount's latest commits of file content (the last
    /// [`OWN_REVS`]), by revision: when their content was made (ns, this
    /// host's clock): the commit's time, or for a truncation made at an
    /// open and published later, that open's.
    own_revs: Mutex<std::collections::BTreeMap<u64, i64>>,
}

/// How many of its own commits' revisions a mount remembers.
const OWN_REVS: usize = 1024;

/// The FUSE file type of an entry kind.
pub fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::Char => FileType::CharDevice,
        Kind::Block => FileType::BlockDevice,
    }
}

/// The entry kind of a node the kernel asks for (MKNOD's mode); `None` for
/// none kvfs stores.
pub fn kind_of_mode(mode: u32) -> Option<Kind> {
    match mode & libc::S_IFMT {
        libc::S_IFREG => Some(Kind::File),
        libc::S_IFIFO => Some(Kind::Fifo),
        libc::S_IFSOCK => Some(Kind::Socket),
        libc::S_IFCHR => Some(Kind::Char),
        libc::S_IFBLK => Some(Kind::Block),
        _ => None,
    }
}

/// The kernel's 32-bit device number (`new_encode_dev`) of a device
/// entry's value; 0 for anything else.
pub fn rdev_of(kind: Kind, value: &[u8]) -> u32 {
    match kv_client::device_number(value).filter(|_| kind.is_device()) {
        Some((major, minor)) => (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
        None => 0,
    }
}

/// The value of a device entry from the kernel's 32-bit device number.
pub fn device_value_of(rdev: u32) -> Vec<u8> {
    kv_client::device_value((rdev & 0xfff00) >> 8, (rdev & 0xff) | ((rdev >> 12) & 0xfff00))
}

/// The size an entry shows: a file's content, a symlink's target; a
/// directory shows 4096, FIFOs, sockets and devices nothing.
pub fn shown_size(kind: Kind, value: &[u8]) -> u64 {
    match kind {
        Kind::Dir => 4096,
        Kind::File | Kind::Symlink => value.len() as u64,
        Kind::Fifo | Kind::Socket | Kind::Char | Kind::Block => 0,
    }
}

/// Metadata of an entry made here, before the cluster numbers it.
pub fn new_meta(kind: Kind, mode: u32, uid: u32, gid: u32) -> Meta {
    let now = now_ns();
    Meta {
        kind,
        mode,
        uid,
        gid,
        mtime_ns: now,
        create_revision: 0,
        mod_revision: 0,
        version: 0,
        size: 0,
        atime_ns: Some(now),
        ctime_ns: Some(now),
    }
}

/// The attributes of an entry as stored (`rdev` for a device; `links` for
/// a directory, [`Tree::dir_links`]).
fn stored_attr(ino: u64, meta: &Meta, size: u64, rdev: u32, links: u32) -> FileAttr {
    let mtime = clock::system_time(meta.mtime_ns);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: clock::system_time(meta.atime()),
        mtime,
        ctime: clock::system_time(meta.ctime()),
        crtime: mtime,
        kind: file_type(meta.kind),
        perm: (meta.mode & 0o7777) as u16,
        nlink: if meta.kind == Kind::Dir { links } else { 1 },
        uid: meta.uid,
        gid: meta.gid,
        rdev,
        blksize: 4096,
        flags: 0,
    }
}

/// Path in a mount of prefix `prefix` of a full key; `None` outside it (or
/// the prefix key itself, which the root directory stands for).
pub fn path_in(prefix: &str, key: &str) -> Option<String> {
    if prefix.is_empty() {
        return Some(key.to_owned());
    }
    key.strip_prefix(prefix)?.strip_prefix('/').map(str::to_owned)
}

/// The bytes of `data` a READ of `size` at `offset` returns.
pub fn slice(data: &[u8], offset: u64, size: u32) -> Vec<u8> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    data[start..end].to_vec()
}

impl Core {
    /// A mount over `cluster` holding `state` (loaded by the caller).
    pub fn new(cluster: Arc<dyn Cluster>, opts: Options, state: State, inval: InvalSink) -> Core {
        Core {
            cluster,
            opts,
            state: RwLock::new(state),
            handles: Mutex::default(),
            listings: Mutex::default(),
            next_dir: AtomicU64::new(1),
            applying: Mutex::default(),
            inval,
            grants: RwLock::new(None),
            connected: AtomicBool::new(true),
            dirty: AtomicBool::new(false),
            commits: Commits::default(),
            backings: Default::default(),
            started_ns: now_ns(),
            released: Default::default(),
            own_revs: Default::default(),
        }
    }

    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.opts.ro
    }

    /// The cluster.
    pub fn cluster(&self) -> &dyn Cluster {
        self.cluster.as_ref()
    }

    pub(crate) fn state(&self) -> Result<RwLockReadGuard<'_, State>, Errno> {
        self.state.read().map_err(|_| Errno::EIO)
    }

    pub(crate) fn state_mut(&self) -> Result<RwLockWriteGuard<'_, State>, Errno> {
        self.state.write().map_err(|_| Errno::EIO)
    }

    fn handles(&self) -> Result<std::sync::MutexGuard<'_, Handles>, Errno> {
        self.handles.lock().map_err(|_| Errno::EIO)
    }

    fn invalidate(&self, list: Vec<Inval>) {
        if !list.is_empty() {
            self.inval.send(list);
        }
    }

    /// Kernel cache invalidations handed over and not done yet.
    pub fn invalidations_queued(&self) -> u64 {
        self.inval.queued()
    }

    fn changed(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Full key of a path in the mount.
    pub fn key(&self, path: &str) -> String {
        match (self.opts.prefix.is_empty(), path.is_empty()) {
            (true, _) => path.to_owned(),
            (false, true) => self.opts.prefix.clone(),
            (false, false) => format!("{}/{path}", self.opts.prefix),
        }
    }

    /// Path in the mount of a full key; `None` outside the mount (or the
    /// prefix key itself, which the root directory stands for).
    pub fn path_of(&self, key: &str) -> Option<String> {
        path_in(&self.opts.prefix, key)
    }

    fn granted(&self, test: impl Fn(&kv_client::Grants, &str) -> bool, path: &str) -> bool {
        match self.grants.read() {
            Ok(g) => g.as_ref().is_none_or(|g| test(g, &self.key(path))),
            Err(_) => true,
        }
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.opts.ro {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    fn is_local(&self, name: &str) -> bool {
        self.opts.local.iter().any(|g| glob_match(g, name))
    }

    /// Before a write is accepted into a buffer: when the watch is down, ask
    /// the cluster (within the bound) so that `echo x > f` fails at open with
    /// EIO instead of losing the data at a close() nobody checks.
    fn check_reachable(&self) -> Result<(), Errno> {
        if self.connected.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.cluster.probe().map_err(|f| f.errno(Errno::EIO))
    }

    /// The path of an attached inode (a directory to look names up in, or
    /// READDIRPLUS's per-name entries).
    pub fn dir_path(&self, ino: u64) -> Result<String, Errno> {
        let s = self.state()?;
        let i = s.inodes.get(ino).ok_or(Errno::ENOENT)?;
        match i.binding {
            Binding::Attached => Ok(i.path.clone()),
            Binding::Detached { .. } => Err(Errno::ENOENT),
        }
    }

    /// The path of `name` in directory `parent`, checked as a key.
    pub fn child(&self, parent: u64, name: &std::ffi::OsStr) -> Result<String, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        if name.len() > kv_client::MAX_SEGMENT_BYTES {
            return Err(Errno::ENAMETOOLONG);
        }
        let path = join(&self.dir_path(parent)?, name);
        kv_client::validate_key(&self.key(&path)).map_err(|e| {
            if e.is_too_long() {
                Errno::ENAMETOOLONG
            } else {
                Errno::EINVAL
            }
        })?;
        Ok(path)
    }

    /// Whether two versions of an entry let the same users in here (as
    /// this host shows them).
    pub(crate) fn same_access(&self, a: &Meta, b: &Meta) -> bool {
        self.shown(a) == self.shown(b)
    }

    /// What of an entry decides who may use it, as this host shows it.
    pub(crate) fn shown(&self, m: &Meta) -> Shown {
        let stored = Shown { kind: file_type(m.kind), perm: (m.mode & 0o7777) as u16, uid: m.uid, gid: m.gid };
        self.opts.attr_map.shown(stored)
    }

    /// The attributes of an entry as this host shows them.
    fn attr_of(&self, ino: u64, meta: &Meta, size: u64, links: u32) -> FileAttr {
        let mut a = stored_attr(ino, meta, size, 0, links);
        self.opts.attr_map.apply(&mut a);
        a
    }

    /// The attributes of a stored node as this host shows them (`links`
    /// for a directory).
    fn node_attr(&self, ino: u64, n: &TreeNode, links: u32) -> FileAttr {
        let (size, rdev) = (shown_size(n.meta.kind, &n.value), rdev_of(n.meta.kind, &n.value));
        let mut a = stored_attr(ino, &n.meta, size, rdev, links);
        self.opts.attr_map.apply(&mut a);
        a
    }

    /// The attributes of a directory that no entry holds (one implied by
    /// the keys below it): its times are the mount's start.
    fn implied_dir_attr(&self, ino: u64, links: u32) -> FileAttr {
        let mut m = new_meta(Kind::Dir, 0o755, 0, 0);
        m.mtime_ns = self.started_ns;
        (m.atime_ns, m.ctime_ns) = (Some(self.started_ns), Some(self.started_ns));
        self.attr_of(ino, &m, 4096, links)
    }

    /// Attributes of an attached path.
    fn path_attr(&self, s: &State, path: &str, ino: u64) -> Result<FileAttr, Errno> {
        match s.tree.get(path) {
            Some(n) => Ok(self.node_attr(ino, n, s.tree.dir_links(path))),
            None if s.tree.kind(path) == Some(Kind::Dir) => Ok(self.implied_dir_attr(ino, s.tree.dir_links(path))),
            None => Err(Errno::ENOENT),
        }
    }

    /// The entry an inode shows: the tree's for an attached inode, the
    /// frozen one for a detached inode (`None`: a directory implied by keys
    /// below it).
    fn node_of_ino(s: &State, ino: u64) -> Result<(String, Option<TreeNode>, bool), Errno> {
        let i = s.inodes.get(ino).ok_or(Errno::ENOENT)?;
        match &i.binding {
            Binding::Attached => {
                s.tree.kind(&i.path).ok_or(Errno::ENOENT)?;
                Ok((i.path.clone(), s.tree.get(&i.path).cloned(), true))
            }
            Binding::Detached { node, .. } => Ok((i.path.clone(), node.clone(), false)),
        }
    }

    /// LOOKUP and every reply that hands the kernel an inode: the path's
    /// attached inode, counted as one more lookup.
    pub fn entry(&self, path: &str) -> Result<FileAttr, Errno> {
        self.entry_told(path).map(|e| e.attr)
    }

    /// [`Core::entry`], and whether the kernel may keep it.
    pub fn entry_told(&self, path: &str) -> Result<Told, Errno> {
        let mut s = self.state_mut()?;
        if s.tree.kind(path).is_none() {
            return Err(Errno::ENOENT);
        }
        let ino = s.inodes.attach(path);
        let attr = self.path_attr(&s, path, ino)?;
        s.inodes.looked_up(ino);
        Ok(Told { attr, keep: s.settled(path) })
    }

    /// LOOKUP of `name` in `parent`; a name the token may not see is
    /// `EACCES`, not `ENOENT`.
    pub fn lookup(&self, parent: u64, name: &std::ffi::OsStr) -> Result<Told, Errno> {
        let path = self.child(parent, name)?;
        if self.releases_pending() {
            // (no lock held while it waits)
            let ino = self.state()?.inodes.attached(&path);
            if let Some(ino) = ino {
                self.after_releases(ino, true);
            }
        }
        match self.entry_told(&path) {
            Err(Errno::ENOENT) if !self.granted(|g, k| g.can_see(k), &path) => Err(Errno::EACCES),
            other => other,
        }
    }

    /// FORGET.
    pub fn forget(&self, ino: u64, n: u64) {
        if let Ok(mut s) = self.state.write() {
            s.inodes.forget(ino, n);
        }
    }

    /// GETATTR. The size is the stored value's: a writer's buffer is not a
    /// value anyone else may see (see [`Core::getattr_fh`]).
    pub fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        self.getattr_told(ino).map(|a| a.attr)
    }

    /// Whether a descriptor holds unpublished changes to inode `ino`: its
    /// size and content change when that descriptor publishes them.
    pub fn writing(&self, ino: u64) -> bool {
        self.handles.lock().map(|mut hs| hs.writers_on(ino).any(|(_, w)| w.dirty)).unwrap_or(false)
    }

    /// [`Core::getattr`], and whether the kernel may keep it.
    ///
    /// NOTE: not while a descriptor holds unpublished changes to the file:
    /// the size kept would outlast the publication, which changes the
    /// content under the same inode (a file created here), and a `stat`
    /// after `close(2)` would show the size before it.
    pub fn getattr_told(&self, ino: u64) -> Result<Told, Errno> {
        let writing = self.writing(ino);
        let s = self.state()?;
        let i = s.inodes.get(ino).ok_or(Errno::ENOENT)?;
        let (attr, settled) = match &i.binding {
            Binding::Attached => (self.path_attr(&s, &i.path, ino)?, s.settled(&i.path)),
            // NOTE: a file whose name is gone (unlinked, or replaced by a
            // rename) has no links, as fstat on a descriptor still open on
            // it shows.
            Binding::Detached { node, gone } => {
                let attr = match node {
                    Some(n) => self.node_attr(ino, n, 2),
                    None => self.implied_dir_attr(ino, 2),
                };
                (if *gone { FileAttr { nlink: 0, ..attr } } else { attr }, true)
            }
        };
        Ok(Told { attr, keep: settled && !writing })
    }

    /// GETATTR as the kernel asks it: a directory's once what its files'
    /// last closes are publishing (first versions, truncations) is in.
    /// (Not for a file's own RELEASE: a GETATTR that no LOOKUP came before is
    /// a holder's, see `expect_release`.)
    pub fn getattr_asked(&self, ino: u64) -> Result<Told, Errno> {
        self.after_releases(ino, false);
        self.getattr_told(ino)
    }

    /// GETATTR through a handle (the kernel asks so before a seek to the end
    /// or a read past its idea of the end): a writer sees the size of what
    /// it has written.
    pub fn getattr_fh(&self, ino: u64, fh: u64) -> Result<Told, Errno> {
        // (the descriptor is in use: its RELEASE is not what is coming)
        let cleared = self.handles()?.writer(fh).is_ok_and(|w| w.release_expected.take().is_some());
        if cleared {
            self.notify_released();
        }
        let mut a = self.getattr_told(ino)?;
        if let Ok(w) = self.handles()?.writer(fh) {
            if w.dirty || w.holds_truncation {
                a.attr.size = w.buf.len() as u64;
                a.attr.blocks = a.attr.size.div_ceil(512);
            }
        }
        Ok(a)
    }

    /// FALLOCATE through a writer's descriptor: mode 0 (`posix_fallocate`)
    /// makes the buffer at least `offset + length` long, with zeros, as
    /// ftruncate would; kvfs has no blocks to reserve, so the other modes
    /// (keep size, punch hole, zero range...) are not supported, and tools
    /// fall back to writing.
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
        if mode != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        let mut hs = self.handles()?;
        let w = hs.writer(fh).map_err(|_| Errno::EBADF)?;
        if end > w.buf.len() as u64 {
            w.truncate(end)?;
        }
        Ok(())
    }

    /// READLINK.
    pub fn readlink(&self, ino: u64) -> Result<Arc<Vec<u8>>, Errno> {
        let s = self.state()?;
        let (_, node, _) = Self::node_of_ino(&s, ino)?;
        let n = node.ok_or(Errno::EINVAL)?;
        if n.meta.kind != Kind::Symlink {
            return Err(Errno::EINVAL);
        }
        Ok(n.value.clone())
    }

    /// OPEN as root (tests).
    #[cfg(test)]
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64, Errno> {
        self.open_as(ino, flags, Caller::default())
    }

    /// OPEN by `opener` (the kernel has checked it against the inode's
    /// mode and owner): a reader gets the version the inode shows now,
    /// whole; a writer a buffer over the path's current value.
    pub fn open_as(&self, ino: u64, flags: i32, opener: Caller) -> Result<u64, Errno> {
        self.after_releases(ino, true);
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let (path, node) = {
            let s = self.state()?;
            let (path, node, _) = Self::node_of_ino(&s, ino)?;
            // A writer edits what the name holds now, if the name still
            // stands for this file; a reader reads the inode's version.
            let node = match (writable, s.inodes.get(ino).map(|i| &i.binding)) {
                (true, Some(Binding::Detached { gone: false, .. })) => match (node, s.tree.get(&path)) {
                    // IMPORTANT: the kernel checked the opener against this
                    // version's mode and owner, not the name's file's.
                    (Some(old), Some(now)) if !self.same_access(&old.meta, &now.meta) => return Err(Errno::ESTALE),
                    (old, now) => now.cloned().or(old),
                },
                _ => node,
            };
            (path, node)
        };
        let node = node.ok_or(Errno::EISDIR)?;
        if node.meta.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        if !writable {
            return Ok(self.handles()?.open(Handle { ino, io: Io::Read(node.value.clone()) }));
        }
        if !node.local {
            self.writable()?;
            if !self.granted(|g, k| g.can_write(k), &path) {
                return Err(Errno::EACCES);
            }
            self.check_reachable()?;
        }
        let shown = self.shown(&node.meta);
        // (The kernel checked an attribute it had cached: a version that
        // came since is checked here, where all the opener's groups are
        // known.)
        if opener.all_groups && !opener.may_write(&shown) {
            return Err(Errno::EACCES);
        }
        let trunc = flags & libc::O_TRUNC != 0;
        let content = if trunc { Vec::new() } else { node.value.as_ref().clone() };
        let mut w = Writer::new(content, trunc, node.meta.mod_revision);
        (w.opened.value, w.opened.mtime) = (node.value.clone(), node.meta.mtime_ns);
        w.replace |= node.provisional;
        w.append = flags & libc::O_APPEND != 0;
        w.checked = Some(shown);
        w.opener = opener;
        // IMPORTANT: an edit opened while another descriptor holds a
        // truncation of this file made at its open, not yet published
        // (`exec 3>f; echo x >> f`), edits the empty file, as on any
        // filesystem; in place, over this version (or over the empty
        // one once that truncation is published, which moves it there).
        // Nothing is published here. Its commits wait for that
        // truncation's. (Under one lock with the truncation's move.)
        let mut hs = self.handles()?;
        if !trunc {
            if let Some(lock) = Self::open_truncation(&mut hs, ino, &node) {
                w.buf = Vec::new();
                w.holds_truncation = true;
                w.commit_lock = lock;
            }
        }
        Ok(hs.open(Handle { ino, io: Io::Write(w) }))
    }

    /// READ. `direct`: a read(2) through the handle (answered from the
    /// handle's version or buffer); otherwise the kernel fills its page
    /// cache for the inode (a mapping, or a mount without OPEN): answered
    /// from the inode's version, which never changes.
    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32, direct: bool) -> Result<Vec<u8>, Errno> {
        if fh != 0 && direct {
            let hs = self.handles()?;
            return match &hs.get(fh)?.io {
                Io::Read(v) => Ok(slice(v, offset, size)),
                Io::Write(w) => Ok(slice(&w.buf, offset, size)),
            };
        }
        Ok(slice(&self.inode_version(ino)?, offset, size))
    }

    /// The content inode `ino` stands for: what the kernel's page cache of
    /// it holds.
    fn inode_version(&self, ino: u64) -> Result<Arc<Vec<u8>>, Errno> {
        let s = self.state()?;
        let (_, node, _) = Self::node_of_ino(&s, ino)?;
        Ok(node.ok_or(Errno::EISDIR)?.value)
    }

    /// Turns passthrough on (the kernel granted it).
    pub fn enable_passthrough(&self) {
        self.backings.enable();
    }

    /// How to answer OPEN (or CREATE) of `fh` on `ino` (passthrough.rs):
    /// plainly unless passthrough is on; `open_backing` registers a memory
    /// file with the kernel. A refused open's handle is closed here,
    /// publishing nothing.
    ///
    /// IMPORTANT: decided under the state lock, against the version the
    /// inode has: a commit that would give it new content in place checks
    /// under the same lock whether it is pinned (and detaches it if so).
    pub fn passthrough_answer(
        &self,
        ino: u64,
        fh: u64,
        open_backing: impl FnOnce(&std::fs::File) -> std::io::Result<fuser::BackingId>,
    ) -> crate::passthrough::Answer {
        use crate::passthrough::Answer;
        if !self.backings.on() {
            return Answer::Plain;
        }
        let answer = match self.state() {
            Ok(s) => match Self::node_of_ino(&s, ino) {
                // A file created here and not yet committed, and a scratch
                // file, take new content in place: answered plainly.
                Ok((_, Some(node), _)) => {
                    let settled = !node.provisional && !node.local;
                    self.backings.answer(ino, fh, &node.value, settled, open_backing)
                }
                _ => Answer::Refuse,
            },
            Err(_) => Answer::Refuse,
        };
        if matches!(answer, Answer::Refuse) {
            self.abandon(fh);
        }
        answer
    }

    /// RELEASE of `fh` for passthrough's counts.
    pub fn passthrough_release(&self, fh: u64) {
        self.backings.release(fh);
    }

    /// Closes a handle whose open the kernel never got, publishing nothing.
    fn abandon(&self, fh: u64) {
        if let Ok(mut hs) = self.handles() {
            if let Ok(w) = hs.writer(fh) {
                w.dirty = false;
                w.failed = Some(Errno::EIO);
            }
        }
        self.release(fh);
    }

    /// WRITE into a writer's buffer; `owner` is the writing process's lock
    /// owner when the kernel says.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], owner: Option<u64>) -> Result<u32, Errno> {
        let (n, waited_for) = {
            let mut hs = self.handles()?;
            let w = hs.writer(fh)?;
            let waited_for = w.release_expected.is_some();
            (w.write(offset, data, owner)?, waited_for)
        };
        if waited_for {
            // (the descriptor is in use: no RELEASE is coming now)
            self.notify_released();
        }
        Ok(n)
    }

    /// FLUSH (a close of one descriptor by `owner`): publishes the buffer if
    /// that process wrote last; reports a failure of this handle's writes.
    /// (Tests: the opener and closer are both unknown, pid 0.)
    #[cfg(test)]
    pub fn flush(&self, fh: u64, owner: u64) -> Result<(), Errno> {
        self.flush_by(fh, owner, &|opener| opener == 0, &|_| false)
    }

    /// [`Core::flush`] by a process of which `opened(pid)` says whether it
    /// is the one whose thread `pid` opened the file, and `held(path)`
    /// whether it still has another descriptor open on the file at `path`
    /// (then its RELEASE is not on its way).
    pub fn flush_by(
        &self,
        fh: u64,
        owner: u64,
        opened: &dyn Fn(u32) -> bool,
        held: &dyn Fn(&str) -> bool,
    ) -> Result<(), Errno> {
        tracing::debug!(fh, owner, "flush");
        let publish = {
            let mut hs = self.handles()?;
            match &hs.get(fh)?.io {
                Io::Read(_) => return Ok(()),
                Io::Write(_) => {}
            }
            let w = hs.writer(fh)?;
            if let Some(e) = w.failed {
                return Err(e);
            }
            w.publishes_at_flush(owner)
        };
        if publish {
            self.commit_and_show(fh)
        } else {
            self.expect_release(fh, opened, held);
            Ok(())
        }
    }

    /// After a close that left writer `fh` holding what only its last
    /// close publishes (a file truncated, or made, and not written since),
    /// by a process that holds no other descriptor of it: its RELEASE may
    /// be on its way. The program's next step on the file is held until it
    /// comes ([`Core::after_releases`]): the kernel forgets the file's name
    /// (and attributes, and for a file made here its directory's, which the
    /// first version changes), so that the step comes to kvfs as a LOOKUP.
    /// (A step through a descriptor is a holder's: no RELEASE is coming.)
    fn expect_release(&self, fh: u64, opened: &dyn Fn(u32) -> bool, held: &dyn Fn(&str) -> bool) {
        let (ino, opener) = match self.handles().map(|mut hs| {
            let ino = hs.get(fh).map(|h| h.ino).ok()?;
            hs.writer(fh).ok().filter(|w| w.publishes_at_release() && !w.wrote).map(|w| (ino, w.opener.pid))
        }) {
            Ok(Some(found)) => found,
            _ => return,
        };
        // NOTE: only the opener's close: a copy a process inherited (a
        // child's exit, which /proc shows holding nothing) leaves its
        // parent holding the file.
        if !opened(opener) {
            return;
        }
        let (path, inval) = match self.state() {
            Ok(s) => match s.inodes.get(ino).filter(|i| i.binding == Binding::Attached) {
                Some(i) => {
                    let (dir, name) = split(&i.path);
                    let made_here = s.tree.get(&i.path).is_some_and(|n| n.provisional);
                    let mut inval = vec![Inval::Attrs(ino)];
                    if let Some(d) = s.inodes.attached(dir) {
                        inval.push(Inval::Entry(d, name.to_owned()));
                        if made_here {
                            inval.push(Inval::Attrs(d));
                        }
                    }
                    (i.path.clone(), inval)
                }
                None => return,
            },
            Err(_) => return,
        };
        if held(&path) {
            return;
        }
        // NOTE: FLUSH holds no lock of the file's or its directory's. Marked
        // after (the program's next step comes after this FLUSH's answer):
        // a LOOKUP that waited on the mark would hold the directory the
        // kernel must lock to forget the name.
        self.inval.send_and_wait(inval, OWN_INVAL_WAIT);
        if let Ok(mut hs) = self.handles() {
            hs.expect_release(fh, Instant::now() + RELEASE_WAIT);
        }
    }

    /// Waits until no last close is publishing, or about to publish, into
    /// what inode `ino` shows: a directory's times (a file's first version
    /// changes them) and, if `own`, a file's content and attributes.
    ///
    /// IMPORTANT: the kernel sends RELEASE after close(2) has returned, and
    /// kvfs may take the program's next request first: `: > f; cat f` read
    /// the old content, and `: > f; echo x >> f` lost the append.
    pub(crate) fn after_releases(&self, ino: u64, own: bool) {
        // (the common case: nothing to wait for, asked on every LOOKUP,
        // OPEN, OPENDIR and GETATTR)
        if !self.releases_pending() {
            return;
        }
        let deadline = Instant::now() + CATCH_UP_WAIT;
        // (only the writers pending when it began: files made one after
        // another in a directory do not hold a `stat` of it for long)
        let mut waited: Option<Vec<u64>> = None;
        loop {
            let seen = *self.released.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let Ok(mut pending) = self.handles().map(|mut hs| hs.publishing_at_release(now)) else { return };
            if let Some(w) = &waited {
                pending.retain(|(fh, _)| w.contains(fh));
            }
            if pending.is_empty() || now >= deadline {
                return;
            }
            let relevant: Vec<u64> = match self.state() {
                Ok(s) => pending
                    .iter()
                    .filter(|(_, p)| {
                        (own && *p == ino)
                            || s.inodes.get(*p).is_some_and(|i| s.inodes.attached(split(&i.path).0) == Some(ino))
                    })
                    .map(|(fh, _)| *fh)
                    .collect(),
                Err(_) => return,
            };
            if relevant.is_empty() {
                return;
            }
            waited = Some(relevant);
            let (m, cv) = &self.released;
            let g = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // (a RELEASE ends with a notice; a mark lapses unannounced, so
            // it is looked at again at least this often)
            let _ = cv.wait_timeout_while(g, LAPSE_CHECK.min(deadline - now), |g| *g == seen);
        }
    }

    /// Whether any writer's last close is publishing, or may be about to.
    fn releases_pending(&self) -> bool {
        self.handles().is_ok_and(|mut hs| !hs.publishing_at_release(Instant::now()).is_empty())
    }

    /// Wakes [`Core::after_releases`]'s waiters.
    fn notify_released(&self) {
        let (m, cv) = &self.released;
        *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        cv.notify_all();
    }

    /// Commits, then makes the kernel forget the name's old version before
    /// returning, so that the next open on this mount reads what close()
    /// or fsync() just stored.
    fn commit_and_show(&self, fh: u64) -> Result<(), Errno> {
        let inval = self.commit(fh)?;
        if !inval.is_empty() {
            self.inval.send_and_wait(inval, OWN_INVAL_WAIT);
        }
        Ok(())
    }

    /// If a descriptor of `ino` truncated the file at its open, holds
    /// nothing else, and has not published it, and `node` (the name's
    /// version now) has not been written since (a chmod may have come): that
    /// descriptor's commit lock.
    fn open_truncation(hs: &mut Handles, ino: u64, node: &TreeNode) -> Option<Arc<Mutex<()>>> {
        if node.local || node.provisional {
            return None;
        }
        let mut truncating = hs.writers_on(ino).filter(|(_, w)| {
            w.only_opened()
                && w.base_rev > 0
                && w.base_rev <= node.meta.mod_revision
                && !w.opened.written_in(&node.value, node.meta.mtime_ns)
        });
        truncating.next().map(|(_, w)| w.commit_lock.clone())
    }

    /// Whether `node`, the name's version now, holds content written after
    /// `opened`, the open of a descriptor of version `base`. A chmod since
    /// is no write; nor is a version the watch brings late that the cluster
    /// took well before the open (a reconnect), unless this mount wrote it.
    fn written_after(&self, node: &TreeNode, base: u64, opened: &Opened) -> bool {
        if node.local
            || node.provisional
            || node.meta.mod_revision <= base
            || !opened.written_in(&node.value, node.meta.mtime_ns)
        {
            return false;
        }
        match self.own_revs.lock().ok().and_then(|r| r.get(&node.meta.mod_revision).copied()) {
            Some(made) => made > opened.ns,
            None => node.meta.ctime() >= opened.ns.saturating_sub(SUPERSEDE_SKEW_NS),
        }
    }

    /// Whether one of the inodes `others` is the file of `ino`'s name now
    /// (its inode changes with its content), one in the cluster that is
    /// still there.
    fn same_file(&self, ino: u64, others: &[u64]) -> Result<bool, Errno> {
        let s = self.state()?;
        let path = s
            .inodes
            .get(ino)
            .filter(|i| !matches!(i.binding, Binding::Detached { gone: true, .. }))
            .map(|i| &i.path)
            .filter(|p| s.tree.get(p).is_some_and(|n| !n.local));
        Ok(path.is_some_and(|p| others.iter().any(|o| s.inodes.get(*o).is_some_and(|i| i.path == *p))))
    }

    /// Remembers `rev` as a commit of file content by this mount, made at
    /// `made_ns`.
    fn wrote_own(&self, rev: u64, made_ns: i64) {
        if let Ok(mut revs) = self.own_revs.lock() {
            revs.insert(rev, made_ns);
            while revs.len() > OWN_REVS {
                revs.pop_first();
            }
        }
    }

    /// FSYNC: publishes whatever the handle holds, and reports a failure.
    pub fn fsync(&self, fh: u64) -> Result<(), Errno> {
        let publish = match &self.handles()?.get(fh)?.io {
            Io::Read(_) => return Ok(()),
            Io::Write(w) => {
                if let Some(e) = w.failed {
                    return Err(e);
                }
                w.publishes_at_release()
            }
        };
        if publish {
            let done = self.commit_and_show(fh);
            // (a RELEASE waited for has nothing left to publish)
            self.notify_released();
            done
        } else {
            Ok(())
        }
    }

    /// RELEASE (the last close): publishes what no FLUSH did (a buffer only
    /// truncated), then forgets the handle. A created file never committed
    /// disappears again.
    pub fn release(&self, fh: u64) {
        let publish = self.handles().is_ok_and(|mut hs| hs.start_release(fh));
        if publish {
            match self.commit(fh) {
                Ok(inval) => self.invalidate(inval),
                Err(e) => tracing::warn!(errno = ?e, "write lost at release (close() already returned)"),
            }
        }
        let Some(h) = self.handles.lock().ok().and_then(|mut hs| hs.close(fh)) else {
            self.notify_released();
            return;
        };
        // (a reader's close changes nothing that a waiter or the tree looks
        // at: the common RELEASE takes no state lock and wakes nobody)
        if matches!(h.io, Io::Read(_)) {
            return;
        }
        let mut inval = Vec::new();
        if let Ok(mut s) = self.state.write() {
            let path = s.inodes.get(h.ino).filter(|i| i.binding == Binding::Attached).map(|i| i.path.clone());
            if let Some(p) = path {
                let still_open =
                    self.handles.lock().map(|mut hs| hs.writers_on(h.ino).next().is_some()).unwrap_or(true);
                if !still_open && s.tree.get(&p).is_some_and(|n| n.provisional) {
                    s.tree.remove(&p);
                    s.inodes.detach(&p, None, true);
                    inval = watch::entry_invals(&s, &p);
                }
            }
        }
        self.notify_released();
        self.invalidate(inval);
    }

    /// Publishes a writer's buffer as one put, if it holds something.
    /// Returns what the kernel must forget: the name's old version.
    fn commit(&self, fh: u64) -> Result<Vec<Inval>, Errno> {
        let lock = self.handles()?.writer(fh)?.commit_lock.clone();
        let _serial = lock.lock().map_err(|_| Errno::EIO)?;
        // (when the content put was made: the last write or truncation)
        let made_ns;
        let (ino, data, opts, gen, opener, checked, only_opened) = {
            let mut hs = self.handles()?;
            let ino = hs.get(fh)?.ino;
            let w = hs.writer(fh)?;
            if let Some(e) = w.failed {
                return Err(e);
            }
            if !w.dirty {
                return Ok(vec![]);
            }
            let (began, in_place) = (w.opened.ns, !w.replace);
            let later: Vec<u64> = if in_place {
                hs.truncations_since(began).filter(|(f, _)| *f != fh).map(|(_, i)| i).collect()
            } else {
                vec![]
            };
            // IMPORTANT: an in-place edit of a file another descriptor
            // truncated at its open after the edit began (not yet published:
            // `exec 4>>f; : > f; echo y >&4`) is not put over it: the edit
            // holds content from before that truncation. Its close fails, as
            // over any version written since it began.
            if !later.is_empty() {
                drop(hs);
                if self.same_file(ino, &later)? {
                    self.handles()?.writer(fh)?.failed = Some(Errno::EIO);
                    return self.commits.count(Err(Errno::EIO));
                }
                hs = self.handles()?;
            }
            let w = hs.writer(fh)?;
            let opts = PutOptions {
                attrs: w.attrs.clone(),
                if_match: (!w.replace && w.base_rev > 0).then_some(w.base_rev),
                create_only: false,
                request_id: None,
            };
            let only_opened = w.only_opened().then(|| (w.base_rev, w.opened.clone()));
            made_ns = w.changed_ns;
            (ino, w.buf.clone(), opts, w.gen, w.opener.clone(), w.checked, only_opened)
        };
        // IMPORTANT: a writer other than root puts only over the version it
        // was checked against here: one that won in the cluster meanwhile
        // (root's secret, put over a file this user could write) is checked
        // once the watch brings it, and the put is tried again over it.
        let guarded = opener.is_held() && opts.if_match.is_none();
        let deadline = std::time::Instant::now() + CATCH_UP_WAIT;
        let (path, node, written, sent) = loop {
            let (path, node) = {
                let s = self.state()?;
                let Some(i) = s.inodes.get(ino) else { return Ok(vec![]) };
                // Deleted (or renamed over) while open: the data goes
                // nowhere, as on any filesystem.
                if matches!(i.binding, Binding::Detached { gone: true, .. }) {
                    return Ok(vec![]);
                }
                let now = s.tree.get(&i.path).cloned();
                // IMPORTANT: the kernel let this writer in by the mode and
                // owner it checked at open; a version with others (a chmod
                // or chown since, or root's secret put over the file) takes
                // only a writer they would let in.
                if let (Some(checked), Some(now)) = (&checked, &now) {
                    let shown = self.shown(&now.meta);
                    if *checked != shown && !opener.may_write(&shown) {
                        drop(s);
                        if let Ok(w) = self.handles()?.writer(fh) {
                            w.failed = Some(Errno::EACCES);
                        }
                        return self.commits.count(Err(Errno::EACCES));
                    }
                }
                (i.path.clone(), now)
            };
            let Some(node) = node else { return Ok(vec![]) };
            // IMPORTANT: a descriptor whose only change is its open's
            // truncation or creation made it then, not at its close: content
            // written since (through another descriptor, here or on another
            // mount, while this one stayed open) came after it, and is not
            // replaced by an empty file.
            if only_opened.as_ref().is_some_and(|(base, opened)| self.written_after(&node, *base, opened)) {
                self.handles()?.writer(fh)?.committed(node.meta.mod_revision, gen);
                return Ok(vec![]);
            }
            if node.local {
                break (path, node, crate::cluster::Written::default(), opts.clone());
            }
            let mut o = opts.clone();
            if node.provisional {
                // IMPORTANT: a file made here and not yet published is made
                // by this commit, with the mode and owner it was made with
                // and has shown, whichever of its descriptors publishes it
                // (`exec 3>>log; echo x >> log` under umask 077: 0600).
                o.attrs.mode = o.attrs.mode.or(Some(node.meta.mode));
                o.attrs.uid = o.attrs.uid.or(Some(node.meta.uid));
                o.attrs.gid = o.attrs.gid.or(Some(node.meta.gid));
            }
            // (a truncation made at the open, too, is put only over the
            // version looked at above: one written meanwhile, through
            // another descriptor, is looked at again, and wins)
            let conditional = guarded || only_opened.is_some();
            if conditional {
                if node.provisional {
                    o.create_only = true;
                } else {
                    o.if_match = Some(node.meta.mod_revision);
                }
            }
            if guarded && !node.provisional {
                // A created file's owner and mode are not put over someone
                // else's version: O_CREAT of an existing file keeps its owner.
                (o.attrs.mode, o.attrs.uid, o.attrs.gid) = (None, None, None);
            }
            let failure = match self.cluster.put_at(&self.key(&path), data.clone(), &o) {
                Ok(w) => {
                    self.wrote_own(w.revision, made_ns);
                    self.commits.count(Ok(()))?;
                    break (path, node, w, o);
                }
                Err(Failure::Conflict)
                    if conditional
                        && std::time::Instant::now() < deadline
                        && self.wait_for_newer(&path, &node, deadline) =>
                {
                    continue
                }
                Err(f) => f,
            };
            // IMPORTANT: a failure close() reports is never applied later.
            let e = failure.errno(Errno::EIO);
            if let Ok(w) = self.handles()?.writer(fh) {
                w.failed = Some(e);
            }
            return self.commits.count(Err(e));
        };
        let size = data.len() as u64;
        let rev = written.revision;
        let (rev, fresh) = if node.local {
            let mut n = node.clone();
            n.meta.size = size;
            n.meta.mtime_ns = now_ns();
            n.meta.ctime_ns = Some(n.meta.mtime_ns);
            n.value = Arc::new(data);
            (0, n)
        } else {
            let mut meta = node.meta.clone();
            meta.kind = Kind::File;
            meta.mod_revision = rev;
            if node.provisional || meta.create_revision == 0 {
                meta.create_revision = rev;
            }
            meta.version += 1;
            meta.size = size;
            // What was put: the version put over keeps what it left out.
            names::written_at(&mut meta, written.time_ns, true);
            meta.mtime_ns = sent.attrs.mtime_ns.unwrap_or(meta.mtime_ns);
            meta.atime_ns = sent.attrs.atime_ns.or(meta.atime_ns);
            meta.mode = sent.attrs.mode.unwrap_or(meta.mode);
            meta.uid = sent.attrs.uid.unwrap_or(meta.uid);
            meta.gid = sent.attrs.gid.unwrap_or(meta.gid);
            (rev, TreeNode { meta, value: Arc::new(data), local: false, provisional: false })
        };
        let wait = {
            let mut s = self.state_mut()?;
            // (a first version makes its name in its directory)
            self.show_touched(&mut s, &written);
            let here = s
                .inodes
                .get(ino)
                .is_some_and(|i| i.path == path && !matches!(i.binding, Binding::Detached { gone: true, .. }));
            // NOTE: a file created here, or a scratch file, whose inode the
            // name still has, had no version anyone else could read: the
            // inode takes the new content in place, and the close need not
            // wait for the kernel to forget a name.
            // (Not an inode whose passthrough handles read a backing file
            // of its version: one renamed to a scratch name.)
            let in_place =
                (node.local || node.provisional) && s.inodes.attached(&path) == Some(ino) && !self.backings.pinned(ino);
            if node.local && !here {
                // A scratch file has no revisions to order by: one deleted
                // or renamed while this commit ran stays so.
            } else if node.local || !s.tree.knows_newer(&path, rev) {
                // IMPORTANT: never over a newer value the watch brought
                // meanwhile.
                let old = s.tree.get(&path).cloned();
                s.tree.insert(path.clone(), fresh);
                if !in_place {
                    // The name's inode keeps the version it showed.
                    s.inodes.detach(&path, old, false);
                }
            } else if node.provisional {
                // The watch brought this very write first, and detached the
                // created file's inode as if someone else had written it.
                self.own_version(&mut s, ino, &path, rev);
            }
            // NOTE: in place, nothing for the kernel to forget: the writes
            // through the handle already made it ask for the attributes.
            if in_place {
                vec![]
            } else {
                watch::entry_invals(&s, &path)
            }
        };
        self.changed();
        let mut hs = self.handles()?;
        if only_opened.is_some() {
            // (the edits that joined this truncation, sharing its lock, edit
            // the empty version now, as any in-place edit of it)
            for (_, w) in hs.writers_on(ino).filter(|(_, w)| w.holds_truncation && Arc::ptr_eq(&w.commit_lock, &lock)) {
                w.base_rev = rev;
                w.holds_truncation = false;
            }
        }
        hs.writer(fh)?.committed(rev, gen);
        Ok(wait)
    }

    /// Waits (until `deadline`) for the watch to bring a version of `path`
    /// other than `seen`; whether it did.
    fn wait_for_newer(&self, path: &str, seen: &TreeNode, deadline: std::time::Instant) -> bool {
        self.wait_until(deadline, |s| match s.tree.get(path) {
            None => true,
            Some(n) => n.meta.mod_revision != seen.meta.mod_revision || n.provisional != seen.provisional,
        })
    }

    /// Waits (until `deadline`) for the mount's state (the watch, mostly)
    /// to come to hold `cond`; whether it did.
    fn wait_until(&self, deadline: std::time::Instant, cond: impl Fn(&State) -> bool) -> bool {
        loop {
            match self.state() {
                Ok(s) if cond(&s) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// After this mount wrote `path` at `rev` through inode `ino`: if the
    /// name holds that version, the inode shows it (the watch may have
    /// brought the write first, and detached the inode as if someone else
    /// had changed the file).
    /// (Not an inode whose passthrough handles read a backing file of the
    /// version it has: it stays detached.)
    pub(crate) fn own_version(&self, s: &mut State, ino: u64, path: &str, rev: u64) {
        if s.tree.get(path).is_some_and(|n| n.meta.mod_revision == rev) && !self.backings.pinned(ino) {
            s.inodes.reattach(ino, path);
        }
    }

    /// Commits every writer on `ino` that holds something (before a rename
    /// moves a file that is not in the cluster yet).
    fn commit_all(&self, ino: u64) -> Result<(), Errno> {
        let fhs: Vec<u64> = self.handles()?.writers_on(ino).filter(|(_, w)| w.dirty).map(|(f, _)| f).collect();
        for fh in fhs {
            match self.commit(fh) {
                // NOTE: not waited for: the rename that asks holds the
                // directory.
                Ok(inval) => self.invalidate(inval),
                // Its RELEASE came meanwhile (the commit lock serializes
                // the two), and published it or let it go.
                Err(Errno::EBADF) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The commit locks of the writers on `inos`, in one order (so two
    /// callers never wait for each other).
    fn writer_locks(&self, inos: impl Iterator<Item = u64>) -> Result<Vec<Arc<Mutex<()>>>, Errno> {
        let mut hs = self.handles()?;
        let mut locks: Vec<Arc<Mutex<()>>> = Vec::new();
        for ino in inos {
            locks.extend(hs.writers_on(ino).map(|(_, w)| w.commit_lock.clone()));
        }
        locks.sort_by_key(|l| Arc::as_ptr(l) as usize);
        locks.dedup_by_key(|l| Arc::as_ptr(l) as usize);
        Ok(locks)
    }

    /// After this mount changed only the attributes or the name of the file
    /// at `ino` (now at revision `to`, with mtime `mtime` if that changed):
    /// writers that edit revision `from` edit `to` instead, so their close
    /// does not fail over it (nor count it as a write since their open).
    fn rebase(&self, ino: u64, from: u64, to: u64, mtime: Option<i64>) {
        if let Ok(mut hs) = self.handles.lock() {
            for (_, w) in hs.writers_on(ino) {
                let edits = w.base_rev == from;
                // (a truncation of a version before a chmod from elsewhere:
                // this mount's touch is no write either)
                if edits || (w.only_opened() && w.base_rev < from) {
                    w.opened.mtime = mtime.unwrap_or(w.opened.mtime);
                }
                if edits {
                    w.base_rev = to;
                }
            }
        }
    }

    /// OPENDIR of `ino`: a handle whose listing is taken at the first
    /// READDIR, and whether the kernel may keep the listing (not while a
    /// change to it is under way).
    pub fn opendir(&self, ino: u64) -> (u64, bool) {
        self.after_releases(ino, false);
        let keep = self.state().map_or(true, |s| {
            s.inodes.get(ino).is_none_or(|i| !matches!(i.binding, Binding::Attached) || s.settled(&i.path))
        });
        (self.next_dir.fetch_add(1, Ordering::Relaxed), keep)
    }

    /// RELEASEDIR.
    pub fn releasedir(&self, fh: u64) {
        if let Ok(mut l) = self.listings.lock() {
            l.remove(&fh);
        }
    }

    /// A directory's entries, `.` and `..` first.
    fn list_dir(&self, ino: u64) -> Result<Vec<DirEntry>, Errno> {
        let path = self.dir_path(ino)?;
        let mut s = self.state_mut()?;
        if s.tree.kind(&path) != Some(Kind::Dir) {
            return Err(Errno::ENOTDIR);
        }
        let parent = if path.is_empty() { ROOT } else { s.inodes.attach(split(&path).0) };
        let mut out = vec![(ino, FileType::Directory, ".".to_owned()), (parent, FileType::Directory, "..".to_owned())];
        for (name, kind) in s.tree.children(&path) {
            let i = s.inodes.attach(&join(&path, &name));
            out.push((i, file_type(kind), name));
        }
        Ok(out)
    }

    /// The listing a READDIR of handle `fh` at `offset` reads: offset 0 (a
    /// new walk, or rewinddir) takes a fresh one, later offsets continue in
    /// the one taken then, so entries removed meanwhile (`rm -r`) do not
    /// make the walk skip others.
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
        if offset > 0 {
            if let Some(list) = self.listings.lock().map_err(|_| Errno::EIO)?.get(&fh) {
                return Ok(list.clone());
            }
        }
        let list = Arc::new(self.list_dir(ino)?);
        self.listings.lock().map_err(|_| Errno::EIO)?.insert(fh, list.clone());
        Ok(list)
    }

    /// How many entries came from the cluster (STATFS).
    pub fn entry_count(&self) -> u64 {
        self.state.read().map(|s| s.tree.remote_entries().count() as u64).unwrap_or(0)
    }
}
