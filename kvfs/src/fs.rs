//! The FUSE callbacks: thin translations onto the cache ([`Tree`]), the
//! per-handle write buffers and the cluster ([`Remote`]).
//!
//! NOTE: locks are never held across a cluster call, and the tree lock and
//! the handle lock are never held together.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use kv_client::{Attrs, Compare, EntryInfo, Kind, Meta, PutOptions, TxnOp, TxnRequest};

use crate::remote::{Remote, Sync};
use crate::tree::{glob_match, join, split, Node, Tree, ROOT};

/// How long the kernel may keep attributes and names: long, because every
/// change is pushed to it as an invalidation.
const TTL: Duration = Duration::from_secs(3600);
/// Largest file a handle buffers (the cluster refuses larger values anyway).
const MAX_BUFFER: usize = 64 << 20;

/// An open file.
#[derive(Debug)]
struct Handle {
    ino: u64,
    /// Write buffer (writable handles).
    buf: Option<Vec<u8>>,
    /// The value at open (read-only handles): readers never see a mix.
    snap: Arc<Vec<u8>>,
    dirty: bool,
    /// Replaces the value whatever it is now (O_TRUNC or created).
    replace: bool,
    /// Fail if the key exists (O_EXCL).
    create_only: bool,
    append: bool,
    /// mod_revision read at open: in-place edits commit only over it.
    base_rev: u64,
    /// Attributes to write with the first commit (created files).
    attrs: Attrs,
    /// Bumped by every change to the buffer or its attributes: a commit
    /// leaves the handle clean only if nothing changed while it ran.
    gen: u64,
    /// Held across a commit: commits of one handle (a FLUSH per dup'd
    /// descriptor, fsync, RELEASE) run one after another, so the last one
    /// to land carries the newest buffer.
    commit_lock: Arc<Mutex<()>>,
}

/// One entry of a directory listing: inode, type, name.
type DirEntry = (u64, FileType, String);

/// The filesystem.
pub struct KvFs {
    tree: Arc<RwLock<Tree>>,
    sync: Arc<Sync>,
    remote: Arc<Remote>,
    handles: Mutex<HashMap<u64, Handle>>,
    /// The listing each open directory reads from: offsets index into it, so
    /// entries removed while a program walks the directory (`rm -r`, Rust's
    /// `remove_dir_all`) do not make it skip others.
    listings: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    ro: bool,
    local: Vec<String>,
    /// Directories that exist only because keys lie below them show this
    /// as their mtime.
    started_ns: i64,
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH
    }
}

fn ns_of(t: TimeOrNow) -> i64 {
    match t {
        TimeOrNow::Now => now_ns(),
        TimeOrNow::SpecificTime(t) => t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0),
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

fn new_meta(kind: Kind, mode: u32, uid: u32, gid: u32) -> Meta {
    Meta { kind, mode, uid, gid, mtime_ns: now_ns(), create_revision: 0, mod_revision: 0, version: 0, size: 0 }
}

fn attr_of(ino: u64, meta: &Meta, size: u64) -> FileAttr {
    let t = time_of(meta.mtime_ns);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: file_type(meta.kind),
        perm: (meta.mode & 0o7777) as u16,
        nlink: if meta.kind == Kind::Dir { 2 } else { 1 },
        uid: meta.uid,
        gid: meta.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// A put operation carrying a node's value and attributes.
fn put_op(key: String, n: &Node) -> TxnOp {
    let wire = EntryInfo::new(key.clone(), n.meta.clone(), (n.meta.kind != Kind::Dir).then_some(n.value.as_slice()));
    TxnOp::Put {
        key,
        value: wire.value.or_else(|| (n.meta.kind == Kind::Dir).then(String::new)),
        value_base64: wire.value_base64,
        kind: Some(n.meta.kind),
        mode: Some(n.meta.mode),
        uid: Some(n.meta.uid),
        gid: Some(n.meta.gid),
        mtime_ns: Some(n.meta.mtime_ns),
    }
}

impl KvFs {
    /// A filesystem over a loaded cache.
    pub fn new(sync: Arc<Sync>, ro: bool, local: Vec<String>) -> KvFs {
        KvFs {
            tree: sync.tree.clone(),
            remote: sync.remote.clone(),
            sync,
            handles: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            ro,
            local,
            started_ns: now_ns(),
        }
    }

    fn tree(&self) -> Result<std::sync::RwLockReadGuard<'_, Tree>, Errno> {
        self.tree.read().map_err(|_| Errno::EIO)
    }

    fn tree_mut(&self) -> Result<std::sync::RwLockWriteGuard<'_, Tree>, Errno> {
        self.tree.write().map_err(|_| Errno::EIO)
    }

    fn handles(&self) -> Result<std::sync::MutexGuard<'_, HashMap<u64, Handle>>, Errno> {
        self.handles.lock().map_err(|_| Errno::EIO)
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.ro {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Before a write is accepted into a buffer: when the watch is down, ask
    /// the cluster (within the bound) so that `echo x > f` fails at open with
    /// EIO instead of losing the data at a close() nobody checks.
    fn check_reachable(&self) -> Result<(), Errno> {
        if self.sync.status.lock().map(|s| s.connected).unwrap_or(false) {
            return Ok(());
        }
        self.remote.call("probe", async |c| c.get_json("/health/ready").await).map(|_| ())
    }

    fn is_local(&self, name: &str) -> bool {
        self.local.iter().any(|g| glob_match(g, name))
    }

    fn changed(&self) {
        self.sync.dirty.store(true, Ordering::Relaxed);
    }

    fn path(&self, ino: INodeNo) -> Result<String, Errno> {
        self.tree()?.path(ino.0).map(str::to_owned).ok_or(Errno::ENOENT)
    }

    /// The path of `name` in directory `parent`, checked as a key.
    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        if name.len() > kv_client::MAX_SEGMENT_BYTES {
            return Err(Errno::ENAMETOOLONG);
        }
        let path = join(&self.path(parent)?, name);
        kv_client::validate_key(&self.remote.key(&path)).map_err(|e| {
            if e.is_too_long() {
                Errno::ENAMETOOLONG
            } else {
                Errno::EINVAL
            }
        })?;
        Ok(path)
    }

    /// Size of the buffer of a dirty handle on `ino`, if any.
    fn buffered_size(&self, ino: u64) -> Option<u64> {
        let hs = self.handles.lock().ok()?;
        hs.values().filter(|h| h.ino == ino && h.dirty).find_map(|h| h.buf.as_ref().map(|b| b.len() as u64))
    }

    /// Attributes of `path` (inode allocated if new).
    fn attr(&self, path: &str) -> Result<FileAttr, Errno> {
        // NOTE: getattr runs on every stat; only a first lookup needs the
        // write lock, to allocate the inode.
        let known = {
            let t = self.tree()?;
            t.kind(path).ok_or(Errno::ENOENT)?;
            t.known_ino(path)
        };
        let ino = match known {
            Some(i) => i,
            None => self.tree_mut()?.ino(path),
        };
        let (meta, size) = {
            let t = self.tree()?;
            t.kind(path).ok_or(Errno::ENOENT)?;
            match t.get(path) {
                Some(n) => (n.meta.clone(), n.value.len() as u64),
                None => {
                    let mut m = new_meta(Kind::Dir, 0o755, 0, 0);
                    m.mtime_ns = self.started_ns;
                    (m, 0)
                }
            }
        };
        let size = if meta.kind == Kind::Dir { 4096 } else { self.buffered_size(ino).unwrap_or(size) };
        Ok(attr_of(ino, &meta, size))
    }

    /// Commits a handle's buffer as one put, if it holds unsaved data.
    fn commit(&self, fh: u64) -> Result<(), Errno> {
        let lock = self.handles()?.get(&fh).ok_or(Errno::EBADF)?.commit_lock.clone();
        // NOTE: a FLUSH from a forked child's copy of the descriptor can
        // commit an empty new file while the parent goes on writing; the
        // parent's own close must then wait for it and commit after it.
        let _serial = lock.lock().map_err(|_| Errno::EIO)?;
        let (ino, data, replace, create_only, base_rev, attrs, gen) = {
            let hs = self.handles()?;
            let h = hs.get(&fh).ok_or(Errno::EBADF)?;
            if !h.dirty {
                return Ok(());
            }
            let data = h.buf.clone().ok_or(Errno::EBADF)?;
            (h.ino, data, h.replace, h.create_only, h.base_rev, h.attrs.clone(), h.gen)
        };
        let path = self.tree()?.path(ino).map(str::to_owned);
        // Unlinked while open: the data goes nowhere, as on any filesystem.
        let Some(path) = path else { return Ok(()) };
        let node = self.tree()?.get(&path).cloned();
        let Some(node) = node else { return Ok(()) };
        let size = data.len() as u64;
        if node.local {
            let mut t = self.tree_mut()?;
            if let Some(n) = t.get_mut(&path) {
                n.value = Arc::new(data);
                n.meta.size = size;
                n.meta.mtime_ns = now_ns();
            }
            drop(t);
            self.mark_clean(fh, 0, gen)?;
            return Ok(());
        }
        let opts = PutOptions {
            attrs,
            if_match: (!replace && base_rev > 0).then_some(base_rev),
            create_only: create_only && node.provisional,
            request_id: None,
        };
        let key = self.remote.key(&path);
        let _own = self.sync.own_write(&path);
        // A failed compare is EIO for an in-place edit, EEXIST for O_EXCL.
        let conflict = if opts.create_only { Errno::EEXIST } else { Errno::EIO };
        let resp = self.remote.call_as("write", conflict, async |c| c.put(&key, data.clone(), &opts).await)?;
        {
            let mut t = self.tree_mut()?;
            let mut meta = node.meta.clone();
            meta.kind = Kind::File;
            meta.mod_revision = resp.revision;
            if node.provisional || meta.create_revision == 0 {
                meta.create_revision = resp.revision;
            }
            meta.version += 1;
            meta.size = size;
            meta.mtime_ns = opts.attrs.mtime_ns.unwrap_or_else(now_ns);
            t.insert(path, Node { meta, value: Arc::new(data), local: false, provisional: false });
            t.revision = t.revision.max(resp.revision);
        }
        self.changed();
        self.mark_clean(fh, resp.revision, gen)
    }

    /// A directory's entries, `.` and `..` first.
    fn list_dir(&self, ino: INodeNo) -> Result<Vec<DirEntry>, Errno> {
        let path = self.path(ino)?;
        let mut t = self.tree_mut()?;
        if t.kind(&path) != Some(Kind::Dir) {
            return Err(Errno::ENOTDIR);
        }
        let parent = if path.is_empty() { ROOT } else { t.ino(split(&path).0) };
        let mut out =
            vec![(ino.0, FileType::Directory, ".".to_owned()), (parent, FileType::Directory, "..".to_owned())];
        for (name, kind) in t.children(&path) {
            let i = t.ino(&join(&path, &name));
            out.push((i, file_type(kind), name));
        }
        Ok(out)
    }

    /// The listing a readdir of handle `fh` at `offset` reads: offset 0 (a
    /// new walk, or rewinddir) takes a fresh one, later offsets continue in
    /// the one taken then.
    fn walk(&self, ino: INodeNo, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
        if offset > 0 {
            if let Some(list) = self.listings.lock().map_err(|_| Errno::EIO)?.get(&fh) {
                return Ok(list.clone());
            }
        }
        let list = Arc::new(self.list_dir(ino)?);
        self.listings.lock().map_err(|_| Errno::EIO)?.insert(fh, list.clone());
        Ok(list)
    }

    /// After a commit of the buffer as it was at `gen`: the value now exists
    /// at `rev`. The handle stays dirty if it changed meanwhile.
    fn mark_clean(&self, fh: u64, rev: u64, gen: u64) -> Result<(), Errno> {
        let mut hs = self.handles()?;
        if let Some(h) = hs.get_mut(&fh) {
            h.replace = false;
            h.create_only = false;
            if rev > 0 {
                h.base_rev = rev;
            }
            if h.gen == gen {
                h.dirty = false;
                h.attrs = Attrs::default();
            }
        }
        Ok(())
    }

    /// Commits every dirty handle on `ino` (before a rename moves it).
    fn commit_all(&self, ino: u64) -> Result<(), Errno> {
        let fhs: Vec<u64> = self.handles()?.iter().filter(|(_, h)| h.ino == ino && h.dirty).map(|(f, _)| *f).collect();
        for fh in fhs {
            self.commit(fh)?;
        }
        Ok(())
    }

    /// Writes a whole new entry (mkdir, symlink, mknod) and caches it.
    fn create_entry(&self, path: &str, kind: Kind, value: Vec<u8>, meta: Meta) -> Result<FileAttr, Errno> {
        self.writable()?;
        if self.tree()?.kind(path).is_some() {
            return Err(Errno::EEXIST);
        }
        let opts = PutOptions {
            attrs: Attrs {
                kind: Some(kind),
                mode: Some(meta.mode),
                uid: Some(meta.uid),
                gid: Some(meta.gid),
                mtime_ns: None,
            },
            if_match: None,
            create_only: true,
            request_id: None,
        };
        let key = self.remote.key(path);
        let _own = self.sync.own_write(path);
        let resp = self.remote.call_as("create", Errno::EEXIST, async |c| c.put(&key, value.clone(), &opts).await)?;
        let mut m = meta;
        m.kind = kind;
        m.size = value.len() as u64;
        m.create_revision = resp.revision;
        m.mod_revision = resp.revision;
        m.version = 1;
        self.tree_mut()?
            .insert(path.to_owned(), Node { meta: m, value: Arc::new(value), local: false, provisional: false });
        self.changed();
        self.attr(path)
    }

    /// mkdir, mknod, symlink: a new entry owned by the caller.
    fn new_child(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        value: Vec<u8>,
    ) -> Result<FileAttr, Errno> {
        let path = self.child(parent, name)?;
        let meta = new_meta(kind, mode & 0o7777, req.uid(), req.gid());
        self.create_entry(&path, kind, value, meta)
    }

    /// chmod, chown, utimens: stored in the entry.
    fn set_attrs(
        &self,
        path: &str,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        mtime: Option<i64>,
    ) -> Result<(), Errno> {
        let mode = mode.map(|m| m & 0o7777);
        let (node, kind) = {
            let t = self.tree()?;
            (t.get(path).cloned(), t.kind(path).ok_or(Errno::ENOENT)?)
        };
        let ino = self.tree()?.known_ino(path);
        let pending = node.as_ref().is_some_and(|n| n.local || n.provisional);
        if pending || path.is_empty() {
            // Local files and files not committed yet keep the attributes
            // here; a created file's first commit carries them.
            {
                let mut t = self.tree_mut()?;
                if let Some(n) = t.get_mut(path) {
                    n.meta.mode = mode.unwrap_or(n.meta.mode);
                    n.meta.uid = uid.unwrap_or(n.meta.uid);
                    n.meta.gid = gid.unwrap_or(n.meta.gid);
                    n.meta.mtime_ns = mtime.unwrap_or(n.meta.mtime_ns);
                }
            }
            let mut hs = self.handles()?;
            for h in hs.values_mut().filter(|h| Some(h.ino) == ino && h.dirty) {
                h.gen += 1;
                h.attrs.mode = mode.or(h.attrs.mode);
                h.attrs.uid = uid.or(h.attrs.uid);
                h.attrs.gid = gid.or(h.attrs.gid);
                h.attrs.mtime_ns = mtime.or(h.attrs.mtime_ns);
            }
            return Ok(());
        }
        self.writable()?;
        let key = self.remote.key(path);
        let compare = node
            .as_ref()
            .map(|n| vec![Compare { key: key.clone(), mod_revision: Some(n.meta.mod_revision), exists: None }])
            .unwrap_or_default();
        let txn = TxnRequest {
            compare,
            success: vec![TxnOp::Put {
                key,
                value: None,
                value_base64: None,
                // An implied directory becomes an explicit one to hold them.
                kind: node.is_none().then_some(kind),
                mode,
                uid,
                gid,
                mtime_ns: mtime.or(node.as_ref().map(|n| n.meta.mtime_ns)),
            }],
            failure: vec![],
        };
        let _own = self.sync.own_write(path);
        let resp = self.remote.call("setattr", async |c| c.txn(&txn).await)?;
        if !resp.succeeded {
            return Err(Errno::EIO);
        }
        let mut t = self.tree_mut()?;
        let mut n = node.unwrap_or_else(|| Node {
            meta: new_meta(Kind::Dir, 0o755, 0, 0),
            value: Arc::default(),
            local: false,
            provisional: false,
        });
        n.meta.mode = mode.unwrap_or(n.meta.mode);
        n.meta.uid = uid.unwrap_or(n.meta.uid);
        n.meta.gid = gid.unwrap_or(n.meta.gid);
        n.meta.mtime_ns = mtime.unwrap_or(n.meta.mtime_ns);
        n.meta.mod_revision = resp.revision;
        n.meta.version += 1;
        t.insert(path.to_owned(), n);
        drop(t);
        self.changed();
        Ok(())
    }

    /// truncate(2) without an open handle: commit at once.
    fn truncate_now(&self, path: &str, size: u64) -> Result<(), Errno> {
        let node = self.tree()?.get(path).cloned().ok_or(Errno::ENOENT)?;
        if node.meta.kind != Kind::File {
            return Err(Errno::EISDIR);
        }
        if size as usize > MAX_BUFFER {
            return Err(Errno::EFBIG);
        }
        let mut v = node.value.as_ref().clone();
        v.resize(size as usize, 0);
        if node.local {
            if let Some(n) = self.tree_mut()?.get_mut(path) {
                n.meta.size = size;
                n.value = Arc::new(v);
            }
            return Ok(());
        }
        self.writable()?;
        let opts = PutOptions { if_match: Some(node.meta.mod_revision), ..Default::default() };
        let _own = self.sync.own_write(path);
        let resp = self.remote.call("truncate", async |c| c.put(&self.remote.key(path), v.clone(), &opts).await)?;
        let mut n = node;
        n.meta.size = size;
        n.meta.mod_revision = resp.revision;
        n.meta.version += 1;
        n.meta.mtime_ns = now_ns();
        n.value = Arc::new(v);
        self.tree_mut()?.insert(path.to_owned(), n);
        self.changed();
        Ok(())
    }

    fn do_unlink(&self, path: &str, dir: bool) -> Result<(), Errno> {
        let (node, kind, children) = {
            let t = self.tree()?;
            (t.get(path).cloned(), t.kind(path).ok_or(Errno::ENOENT)?, t.has_children(path))
        };
        match (dir, kind == Kind::Dir) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            (true, true) if children => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        let Some(node) = node else { return Err(Errno::ENOENT) };
        let deleted = if !node.local && !node.provisional { Some(self.delete_key(path, "delete")?) } else { None };
        let mut t = self.tree_mut()?;
        match deleted {
            Some(rev) => t.remove_at(path, rev),
            None => t.remove(path),
        };
        drop(t);
        self.changed();
        Ok(())
    }

    fn do_rename(&self, src: &str, dst: &str, flags: RenameFlags) -> Result<(), Errno> {
        if src == dst {
            return Ok(());
        }
        // NOTE: RENAME can arrive before RELEASE: commit what is buffered first.
        let ino = self.tree()?.known_ino(src);
        if let Some(ino) = ino {
            self.commit_all(ino)?;
        }
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let (src_kind, dst_kind, src_node, dst_full, src_sub, dst_sub) = {
            let t = self.tree()?;
            let sk = t.kind(src).ok_or(Errno::ENOENT)?;
            (sk, t.kind(dst), t.get(src).cloned(), t.has_children(dst), t.subtree(src), t.subtree(dst))
        };
        if dst.starts_with(&format!("{src}/")) {
            return Err(Errno::EINVAL);
        }
        if noreplace && dst_kind.is_some() {
            return Err(Errno::EEXIST);
        }
        if exchange && dst_kind.is_none() {
            return Err(Errno::ENOENT);
        }
        if !exchange {
            if let Some(dk) = dst_kind {
                match (src_kind == Kind::Dir, dk == Kind::Dir) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    (true, true) if dst_full => return Err(Errno::ENOTEMPTY),
                    _ => {}
                }
            }
        }
        let dst_local_name = src_kind != Kind::Dir && self.is_local(split(dst).1);
        let src_local = src_node.as_ref().is_some_and(|n| n.local);
        if !exchange && (src_local || dst_local_name) {
            return self.rename_local(src, dst, src_node.ok_or(Errno::ENOENT)?, src_local, dst_local_name);
        }
        self.writable()?;
        // One transaction: the source must be as this mount saw it; the
        // target is replaced (or swapped with RENAME_EXCHANGE).
        let remote_only = |sub: &[(String, Node)]| -> Vec<(String, Node)> {
            sub.iter().filter(|(_, n)| !n.local && !n.provisional).cloned().collect()
        };
        let src_sub = remote_only(&src_sub);
        let dst_sub = if dst_kind.is_some() { remote_only(&dst_sub) } else { vec![] };
        let key = |p: &str| self.remote.key(p);
        let moved = |sub: &[(String, Node)], from: &str, to: &str| -> Vec<(String, Node)> {
            sub.iter().map(|(p, n)| (format!("{to}{}", &p[from.len()..]), n.clone())).collect()
        };
        let mut compare: Vec<Compare> = src_sub
            .iter()
            .chain(if exchange { dst_sub.iter() } else { [].iter() })
            .map(|(p, n)| Compare { key: key(p), mod_revision: Some(n.meta.mod_revision), exists: None })
            .collect();
        if noreplace {
            compare.push(Compare { key: key(dst), mod_revision: None, exists: Some(false) });
        }
        let mut success = vec![TxnOp::Delete { key: key(src), recursive: src_kind == Kind::Dir }];
        if dst_kind.is_some() {
            success.push(TxnOp::Delete { key: key(dst), recursive: dst_kind == Some(Kind::Dir) });
        }
        let mut arrive = moved(&src_sub, src, dst);
        if exchange {
            arrive.extend(moved(&dst_sub, dst, src));
        }
        success.extend(arrive.iter().map(|(p, n)| put_op(key(p), n)));
        let txn = TxnRequest { compare, success, failure: vec![] };
        let _own: Vec<_> = src_sub
            .iter()
            .chain(dst_sub.iter())
            .map(|(p, _)| p.clone())
            .chain(arrive.iter().map(|(p, _)| p.clone()))
            .collect();
        let _own: Vec<_> = _own.iter().map(|p| self.sync.own_write(p)).collect();
        let resp = match self.remote.call("rename", async |c| c.txn(&txn).await) {
            // Too big for one transaction: let mv copy and delete instead.
            Err(Errno::EFBIG) => return Err(Errno::EXDEV),
            other => other?,
        };
        if !resp.succeeded {
            tracing::warn!(src, dst, "rename refused: the source changed in the cluster meanwhile");
            return Err(Errno::EIO);
        }
        let mut t = self.tree_mut()?;
        for (p, _) in src_sub.iter().chain(dst_sub.iter()) {
            t.remove_at(p, resp.revision);
        }
        for (p, mut n) in arrive {
            n.meta.create_revision = resp.revision;
            n.meta.mod_revision = resp.revision;
            n.meta.version = 1;
            t.insert(p, n);
        }
        if exchange {
            t.swap_inodes(src, dst);
        } else {
            t.move_inodes(src, dst);
        }
        t.revision = t.revision.max(resp.revision);
        drop(t);
        self.changed();
        Ok(())
    }

    /// Renames where one side is a local scratch name: local to local moves
    /// here only; local onto a real name commits the content; a real file
    /// onto a scratch name moves its content here and deletes the key.
    fn rename_local(&self, src: &str, dst: &str, node: Node, src_local: bool, dst_local: bool) -> Result<(), Errno> {
        let mut n = node;
        if src_local && !dst_local {
            self.writable()?;
            let key = self.remote.key(dst);
            let op = put_op(key, &n);
            let _own = self.sync.own_write(dst);
            let resp = self
                .remote
                .call("rename", async |c| c.txn(&TxnRequest { success: vec![op], ..Default::default() }).await)?;
            n.local = false;
            n.meta.mod_revision = resp.revision;
            n.meta.create_revision = resp.revision;
            n.meta.version = 1;
        }
        let deleted = if !src_local {
            n.local = true;
            Some(self.delete_key(src, "rename")?)
        } else {
            None
        };
        let mut t = self.tree_mut()?;
        match deleted {
            Some(rev) => t.remove_at(src, rev),
            None => t.remove(src),
        };
        t.insert(dst.to_owned(), n);
        t.move_inodes(src, dst);
        drop(t);
        self.changed();
        Ok(())
    }

    /// Deletes the key of `path` in the cluster; the revision of the delete
    /// (the tree's when the key was already gone), for [`Tree::remove_at`].
    fn delete_key(&self, path: &str, op: &'static str) -> Result<u64, Errno> {
        self.writable()?;
        let _own = self.sync.own_write(path);
        match self.remote.call(op, async |c| c.delete(&self.remote.key(path), false, None).await) {
            Ok(r) => Ok(r.revision),
            Err(Errno::ENOENT) => Ok(self.tree()?.revision),
            Err(e) => Err(e),
        }
    }

    fn open_handle(&self, ino: u64, flags: i32, writable: bool) -> Result<u64, Errno> {
        let path = self.path(INodeNo(ino))?;
        let node = self.tree()?.get(&path).cloned().ok_or(Errno::EISDIR)?;
        if node.meta.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        if writable && !node.local {
            self.writable()?;
            if !self.remote.can_write(&path) {
                return Err(Errno::EACCES);
            }
            self.check_reachable()?;
        }
        let trunc = flags & libc::O_TRUNC != 0;
        let h = Handle {
            ino,
            buf: writable.then(|| if trunc { Vec::new() } else { node.value.as_ref().clone() }),
            snap: node.value.clone(),
            dirty: writable && trunc,
            replace: writable && (trunc || node.provisional),
            create_only: false,
            append: flags & libc::O_APPEND != 0,
            base_rev: node.meta.mod_revision,
            attrs: Attrs::default(),
            gen: 0,
            commit_lock: Arc::default(),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles()?.insert(fh, h);
        Ok(fh)
    }
}

fn reply_entry(r: Result<FileAttr, Errno>, reply: ReplyEntry) {
    match r {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(r: Result<(), Errno>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for KvFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // open(O_TRUNC) arrives as one OPEN with O_TRUNC, not OPEN + SETATTR.
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        // Listings carry attributes (READDIRPLUS).
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.child(parent, name).and_then(|p| match self.attr(&p) {
            Err(Errno::ENOENT) if !self.remote.can_see(&p) => Err(Errno::EACCES),
            other => other,
        });
        reply_entry(r, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.path(ino).and_then(|p| self.attr(&p)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = (|| -> Result<FileAttr, Errno> {
            let path = self.path(ino)?;
            if let Some(size) = size {
                if size as usize > MAX_BUFFER {
                    return Err(Errno::EFBIG);
                }
                // NOTE: truncation through an open handle stays in its buffer,
                // or readers would see an empty file until the write lands.
                let in_handle = match fh {
                    Some(fh) => {
                        let mut hs = self.handles()?;
                        match hs.get_mut(&fh.0).filter(|h| h.buf.is_some()) {
                            Some(h) => {
                                if let Some(b) = h.buf.as_mut() {
                                    b.resize(size as usize, 0);
                                }
                                h.dirty = true;
                                h.gen += 1;
                                h.replace |= size == 0;
                                true
                            }
                            None => false,
                        }
                    }
                    None => false,
                };
                if !in_handle {
                    self.truncate_now(&path, size)?;
                }
            }
            if mode.is_some() || uid.is_some() || gid.is_some() || mtime.is_some() {
                self.set_attrs(&path, mode, uid, gid, mtime.map(ns_of))?;
            }
            self.attr(&path)
        })();
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self.path(ino).and_then(|p| {
            let t = self.tree()?;
            let n = t.get(&p).ok_or(Errno::ENOENT)?;
            if n.meta.kind != Kind::Symlink {
                return Err(Errno::EINVAL);
            }
            Ok(n.value.clone())
        });
        match r {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        reply_entry(self.new_child(req, parent, name, Kind::File, mode & !umask, Vec::new()), reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        reply_entry(self.new_child(req, parent, name, Kind::Dir, mode & !umask, Vec::new()), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.child(parent, name).and_then(|p| self.do_unlink(&p, false)), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.child(parent, name).and_then(|p| self.do_unlink(&p, true)), reply);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let r = target.to_str().ok_or(Errno::EINVAL).and_then(|t| {
            if t.is_empty() {
                return Err(Errno::ENOENT);
            }
            self.new_child(req, parent, link_name, Kind::Symlink, 0o777, t.as_bytes().to_vec())
        });
        reply_entry(r, reply);
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
        let r = self
            .child(parent, name)
            .and_then(|s| self.child(newparent, newname).and_then(|d| self.do_rename(&s, &d, flags)));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writable = flags.acc_mode() != OpenAccMode::O_RDONLY;
        if self.ro && !writable {
            // NOTE: FUSE's no-open mode: the kernel takes ENOSYS as success
            // and stops sending OPEN and RELEASE for this mount; reads come
            // with no handle and are served from the cache by inode.
            return reply.error(Errno::ENOSYS);
        }
        match self.open_handle(ino.0, flags.0, writable) {
            // Read-only opens keep the kernel's page cache (every change is
            // pushed to the kernel as an invalidation) and skip FLUSH on
            // close: there is nothing to commit.
            Ok(fh) if !writable => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH)
            }
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
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
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let slice = |data: &[u8]| {
            let start = (offset as usize).min(data.len());
            let end = start.saturating_add(size as usize).min(data.len());
            data[start..end].to_vec()
        };
        if fh.0 == 0 && self.ro {
            // No-open mode (see `open`): the current value, by inode.
            let value = self.path(ino).and_then(|p| {
                let t = self.tree()?;
                t.get(&p).map(|n| slice(&n.value)).ok_or(Errno::ENOENT)
            });
            return match value {
                Ok(v) => reply.data(&v),
                Err(e) => reply.error(e),
            };
        }
        let hs = match self.handles() {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Some(h) = hs.get(&fh.0) else { return reply.error(Errno::EBADF) };
        reply.data(&slice(h.buf.as_deref().unwrap_or(&h.snap)));
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
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut hs = match self.handles() {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Some(h) = hs.get_mut(&fh.0) else { return reply.error(Errno::EBADF) };
        let append = h.append;
        let Some(buf) = h.buf.as_mut() else { return reply.error(Errno::EBADF) };
        let off = if append { buf.len() } else { offset as usize };
        let end = off.saturating_add(data.len());
        if end > MAX_BUFFER {
            return reply.error(Errno::EFBIG);
        }
        if buf.len() < end {
            buf.resize(end, 0);
        }
        buf[off..end].copy_from_slice(data);
        h.dirty = true;
        h.gen += 1;
        reply.written(data.len() as u32);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // NOTE: close() reports what this returns; FLUSH may come before any
        // write and once per dup'd descriptor. A read-only mount has nothing
        // to commit: ENOSYS tells the kernel to stop sending FLUSH at all.
        if self.ro {
            return reply.error(Errno::ENOSYS);
        }
        reply_empty(self.commit(fh.0), reply);
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
        if let Err(e) = self.commit(fh.0) {
            tracing::warn!(errno = ?e, "write lost at release (close() already returned)");
        }
        let h = self.handles.lock().ok().and_then(|mut hs| hs.remove(&fh.0));
        if let Some(h) = h {
            // A created file whose first commit failed disappears again.
            if let Ok(mut t) = self.tree.write() {
                if let Some(p) = t.path(h.ino).map(str::to_owned) {
                    if t.get(&p).is_some_and(|n| n.provisional) {
                        t.remove(&p);
                        // The kernel cached the name at create: drop it, on
                        // the invalidator's thread (not inside this callback).
                        let _ = self.sync.inval_tx.send(crate::remote::invalidations(&t, &p));
                    }
                }
            }
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(self.commit(fh.0), reply);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // NOTE: FUSE's no-opendir mode would save two round trips per `ls`,
        // but fusermount3 then cannot tell a crashed kvfs (it opens the
        // mountpoint and unmounts only on ENOTCONN), and leaves a dead mount.
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        // The kernel keeps the listing in its page cache until this mount
        // or an invalidation (a change seen in the cluster) says otherwise.
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        if let Ok(mut l) = self.listings.lock() {
            l.remove(&fh.0);
        }
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.walk(ino, fh.0, offset) {
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
        let list = match self.walk(ino, fh.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let Ok(dir) = self.path(ino) else { return reply.error(Errno::ENOENT) };
        for (i, (_, _, name)) in list.iter().enumerate().skip(offset as usize) {
            let path = match name.as_str() {
                "." => dir.clone(),
                ".." => split(&dir).0.to_owned(),
                _ => join(&dir, name),
            };
            // An entry removed since the listing was taken is left out.
            let Ok(attr) = self.attr(&path) else { continue };
            if reply.add(attr.ino, (i + 1) as u64, name, &TTL, &attr, Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.tree.read().map(|t| t.remote_entries().count() as u64).unwrap_or(0);
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
        let r = (|| -> Result<(FileAttr, u64), Errno> {
            let path = self.child(parent, name)?;
            let exists = self.tree()?.kind(&path).is_some();
            if exists {
                if flags & libc::O_EXCL != 0 {
                    return Err(Errno::EEXIST);
                }
                let ino = self.tree_mut()?.ino(&path);
                let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
                let fh = self.open_handle(ino, flags, writable)?;
                return Ok((self.attr(&path)?, fh));
            }
            let local = self.is_local(split(&path).1);
            if !local {
                self.writable()?;
                self.check_reachable()?;
            }
            let meta = new_meta(Kind::File, mode & !umask & 0o7777, req.uid(), req.gid());
            let attrs =
                Attrs { kind: None, mode: Some(meta.mode), uid: Some(meta.uid), gid: Some(meta.gid), mtime_ns: None };
            let ino = {
                let mut t = self.tree_mut()?;
                t.insert(path.clone(), Node { meta, value: Arc::default(), local, provisional: !local });
                t.ino(&path)
            };
            let h = Handle {
                ino,
                buf: Some(Vec::new()),
                snap: Arc::default(),
                dirty: true,
                replace: true,
                create_only: flags & libc::O_EXCL != 0,
                append: flags & libc::O_APPEND != 0,
                base_rev: 0,
                attrs,
                gen: 0,
                commit_lock: Arc::default(),
            };
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            self.handles()?.insert(fh, h);
            Ok((self.attr(&path)?, fh))
        })();
        match r {
            Ok((a, fh)) => reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }
}
