//! Operations on names and attributes: create, mkdir, symlink, unlink,
//! rename, chmod/chown/utimens and truncate by path.

use std::sync::Arc;

use fuser::{Errno, FileAttr};
use kv_client::clock::now_ns;
use kv_client::{Attrs, Compare, EntryInfo, Kind, Meta, PutOptions, TxnOp, TxnRequest};

use super::{new_meta, Core};
use crate::cluster::{Failure, Written};
use crate::handles::{Caller, Handle, Io, Writer, CAP_CHOWN, CAP_FOWNER};
use crate::tree::{split, TreeNode};

/// Shows at once a change of directory `dir`'s entries made here that the
/// cluster has not written yet (a file created here, published at its
/// close): its mtime and ctime become now. Its revision stays: the
/// cluster's write of it brings its own ([`Core::show_touched`]).
pub(super) fn touch_dir_now(s: &mut super::State, dir: &str) {
    if let Some(n) = s.tree.get_mut(dir).filter(|n| n.meta.kind == Kind::Dir && !n.local && !n.provisional) {
        written_at(&mut n.meta, None, true);
    }
}

impl Core {
    /// Shows at once what a write made here did to the directories it
    /// changed besides its keys (`w.touched`, kvd's txn::touch_parents):
    /// each that the mount holds at exactly the revision the write changed
    /// takes the write's time as its mtime and ctime, and its revision. A
    /// compare on the directory (a rename of it) then holds before the
    /// watch brings that version, which it then finds already here.
    ///
    /// IMPORTANT: only at exactly that revision: a version in between,
    /// which the watch has not brought, may hold an entry made elsewhere
    /// that a rename of the directory, compared on the later revision,
    /// would delete unseen.
    pub(super) fn show_touched(&self, s: &mut super::State, w: &Written) {
        let Some(t) = w.time_ns else { return };
        for touched in &w.touched {
            let Some(path) = self.path_of(&touched.key) else { continue };
            let Some(n) = s.tree.get_mut(&path) else { continue };
            let at = n.meta.mod_revision == touched.mod_revision_before;
            if n.meta.kind == Kind::Dir && !n.local && !n.provisional && at {
                written_at(&mut n.meta, Some(t), true);
                n.meta.mod_revision = w.revision;
                n.meta.version += 1;
            }
        }
    }
}

/// Gives metadata of an entry this mount wrote the times the cluster wrote
/// it with (`mtime`: whether the write set the mtime too); without them,
/// now.
pub(super) fn written_at(m: &mut Meta, time_ns: Option<i64>, mtime: bool) {
    let t = time_ns.unwrap_or_else(now_ns);
    m.ctime_ns = Some(t);
    if mtime {
        m.mtime_ns = t;
    }
}

/// A put operation carrying a node's value and attributes.
pub(super) fn put_op(key: String, n: &TreeNode) -> TxnOp {
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
        atime_ns: n.meta.atime_ns,
    }
}

/// What a SETATTR changes.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    /// Who asks (the default: root).
    pub who: Caller,
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New modification time (ns).
    pub mtime: Option<i64>,
    /// New access time (ns).
    pub atime: Option<i64>,
}

/// What CREATE answers for a name that exists (the kernel looked it up and
/// found none, and it came from elsewhere since).
///
/// IMPORTANT: never an open of the existing file: the kernel checks no
/// permission on a file CREATE opens (it made it, it thinks), so a user who
/// may write the directory would get any file in it. ESTALE makes the
/// kernel walk the path again, with a fresh LOOKUP, and open the file the
/// usual way, checking its mode.
pub const CREATED_ELSEWHERE: Errno = Errno::ESTALE;

impl Core {
    /// CREATE by `uid`, `gid` (with no other groups), held to the modes.
    #[cfg(test)]
    pub fn create(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> Result<(FileAttr, u64), Errno> {
        self.create_as(parent, name, mode, flags, Caller::held(uid, vec![gid]))
    }

    /// CREATE by `caller`, who owns the new file: it lives in this mount
    /// until its first commit (so `cmd > new` publishes one revision, the
    /// full one). A name that exists is [`CREATED_ELSEWHERE`].
    pub fn create_as(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(FileAttr, u64), Errno> {
        let (uid, gid) = (caller.uid, caller.gids.first().copied().unwrap_or(0));
        let path = self.child(parent, name)?;
        if self.state()?.tree.kind(&path).is_some() {
            if flags & libc::O_EXCL != 0 {
                return Err(Errno::EEXIST);
            }
            return Err(CREATED_ELSEWHERE);
        }
        let local = self.is_local(split(&path).1);
        if !local {
            self.writable()?;
            if !self.granted(|g, k| g.can_write(k), &path) {
                return Err(Errno::EACCES);
            }
            self.check_reachable()?;
        }
        let meta = self.new_entry_meta(&path, Kind::File, mode, (uid, gid))?;
        // (what the caller is checked against: the file it makes, whatever
        // the watch brings in its place meanwhile)
        let checked = self.shown(&meta);
        let made = (meta.mtime_ns, meta.atime_ns);
        let attrs = Attrs { mode: Some(meta.mode), uid: Some(meta.uid), gid: Some(meta.gid), ..Attrs::default() };
        // IMPORTANT: the empty file is created in the cluster now (the only
        // cases where a new file's first revision is empty):
        // - O_EXCL is exclusive across mounts at open(), where a lock
        //   file's creator checks it: open() fails with EEXIST if the file
        //   already exists there;
        // - a read-only descriptor can write nothing: the empty file is all
        //   this open makes, and every mount sees it from the open on, with
        //   the cluster's times. A name made elsewhere meanwhile is that
        //   file, opened once the watch brings it.
        let excl = flags & libc::O_EXCL != 0;
        let created = if (excl || flags & libc::O_ACCMODE == libc::O_RDONLY) && !local {
            let opts = PutOptions { attrs: attrs.clone(), create_only: true, ..Default::default() };
            match self.cluster.put_at(&self.key(&path), Vec::new(), &opts) {
                Err(Failure::Conflict) if !excl => {
                    // (not a failure anyone sees: the open opens that file)
                    self.commits.count(Ok(()))?;
                    let deadline = std::time::Instant::now() + super::CATCH_UP_WAIT;
                    // NOTE: if the name never comes (deleted again at once),
                    // the kernel's second lookup finds nothing, and its
                    // second CREATE makes the file.
                    self.wait_until(deadline, |s| s.tree.kind(&path).is_some());
                    return Err(CREATED_ELSEWHERE);
                }
                put => Some(self.commits.count(put.map_err(|f| f.errno(Errno::EEXIST)))?),
            }
        } else {
            None
        };
        let attr = {
            let mut s = self.state_mut()?;
            if created.is_none() && s.tree.kind(&path).is_some() {
                // The watch brought the name meanwhile: not replaced by an
                // empty file of this mount's.
                return Err(CREATED_ELSEWHERE);
            }
            let mut meta = meta;
            if let Some(w) = &created {
                (meta.create_revision, meta.mod_revision, meta.version) = (w.revision, w.revision, 1);
                written_at(&mut meta, w.time_ns, true);
                meta.atime_ns = meta.ctime_ns;
            }
            match created.as_ref().map(|w| w.revision) {
                Some(rev) if s.tree.knows_newer(&path, rev) => {
                    // The watch brought the empty file first (then it is
                    // attached as it came), or someone else's version
                    // followed it at once.
                    if s.tree.get(&path).is_none_or(|n| n.meta.mod_revision != rev) {
                        return Err(CREATED_ELSEWHERE);
                    }
                }
                _ => {
                    let provisional = created.is_none() && !local;
                    s.tree.insert(path.clone(), TreeNode { meta, value: Arc::default(), local, provisional });
                    match &created {
                        Some(w) => self.show_touched(&mut s, w),
                        None if !local => touch_dir_now(&mut s, split(&path).0),
                        None => {}
                    }
                }
            }
            // IMPORTANT: the inode the reply hands the kernel is this file's,
            // under the same lock: not a version the watch brings next.
            let ino = s.inodes.attach(&path);
            let attr = self.path_attr(&s, &path, ino)?;
            s.inodes.looked_up(ino);
            attr
        };
        let mut w = Writer::new(Vec::new(), created.is_none(), created.as_ref().map_or(0, |w| w.revision));
        // Created: replaces whatever the name holds, for the handle's life.
        w.replace = true;
        w.append = flags & libc::O_APPEND != 0;
        w.checked = Some(checked);
        w.opener = caller;
        if created.is_none() {
            // A file made and closed without a write keeps the times it was
            // made with, which stat showed meanwhile (its first version is
            // published at its last close).
            w.attrs = Attrs { mtime_ns: Some(made.0), atime_ns: made.1, ..attrs };
        }
        let fh = self.handles()?.open(Handle { ino: attr.ino.0, io: Io::Write(w) });
        Ok((attr, fh))
    }

    /// The metadata of a new entry at `path` made by `owner` (the caller's
    /// uid and gid): a setgid directory hands down its group, and to a
    /// directory its setgid bit too, as on any Unix filesystem.
    ///
    /// On a mount that shows every entry as one user's (`-o uid=`, `gid=`),
    /// the caller's number means nothing on other hosts: a new entry takes
    /// its directory's stored owner (root's for an implied directory).
    fn new_entry_meta(&self, path: &str, kind: Kind, mode: u32, owner: (u32, u32)) -> Result<Meta, Errno> {
        let (mut mode, (mut uid, mut gid)) = (mode & 0o7777, owner);
        let s = self.state()?;
        let parent = s.tree.get(split(path).0).filter(|p| p.meta.kind == Kind::Dir);
        let (puid, pgid) = parent.map_or((0, 0), |p| (p.meta.uid, p.meta.gid));
        if parent.is_some_and(|p| p.meta.mode & libc::S_ISGID != 0) {
            gid = pgid;
            if kind == Kind::Dir {
                mode |= libc::S_ISGID;
            }
        }
        let map = self.opts.attr_map;
        if map.uid.is_some() {
            uid = puid;
        }
        if map.gid.is_some() {
            gid = pgid;
        }
        Ok(new_meta(kind, mode, uid, gid))
    }

    /// mkdir, mknod, symlink: a whole new entry, written at once.
    pub fn new_child(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        kind: Kind,
        mode: u32,
        value: Vec<u8>,
        owner: (u32, u32),
    ) -> Result<FileAttr, Errno> {
        let path = self.child(parent, name)?;
        self.writable()?;
        if self.state()?.tree.kind(&path).is_some() {
            return Err(Errno::EEXIST);
        }
        let meta = self.new_entry_meta(&path, kind, mode, owner)?;
        let opts = PutOptions {
            attrs: Attrs {
                kind: Some(kind),
                mode: Some(meta.mode),
                uid: Some(meta.uid),
                gid: Some(meta.gid),
                ..Attrs::default()
            },
            if_match: None,
            create_only: true,
            request_id: None,
        };
        let w = self
            .commits
            .count(self.cluster.put_at(&self.key(&path), value.clone(), &opts).map_err(|f| f.errno(Errno::EEXIST)))?;
        let rev = w.revision;
        let mut m = meta;
        m.size = value.len() as u64;
        m.create_revision = rev;
        m.mod_revision = rev;
        m.version = 1;
        written_at(&mut m, w.time_ns, true);
        m.atime_ns = m.ctime_ns;
        {
            let mut s = self.state_mut()?;
            if !s.tree.knows_newer(&path, rev) {
                s.tree.insert(
                    path.clone(),
                    TreeNode { meta: m, value: Arc::new(value), local: false, provisional: false },
                );
            }
            self.show_touched(&mut s, &w);
        }
        self.changed();
        self.entry(&path)
    }

    /// SETATTR. A size change through a writable handle stays in its buffer;
    /// without one it is written at once.
    pub fn setattr(&self, ino: u64, fh: Option<u64>, mut a: SetAttr) -> Result<FileAttr, Errno> {
        if a.mode.is_some() || a.uid.is_some() || a.gid.is_some() {
            let shown = self.getattr(ino)?;
            // IMPORTANT: the kernel checked the owner it had cached; an owner
            // changed elsewhere since (root taking a file over) is checked
            // here: only root chowns, only the owner chmods or chgrps (a
            // mode that only clears set-id bits is the kernel's own).
            if a.who.is_held() {
                let owner = shown.uid == a.who.uid;
                let kills_setid = |m: u32| {
                    let perm = u32::from(shown.perm);
                    m & 0o7777 & !perm == 0 && (perm ^ m & 0o7777) & !0o6000 == 0
                };
                let (may_chown, fowner) = (a.who.caps & CAP_CHOWN != 0, a.who.caps & CAP_FOWNER != 0);
                let chown = a.uid.is_some_and(|u| u != shown.uid) && !may_chown;
                let chgrp = a.gid.is_some_and(|g| g != shown.gid) && !owner && !may_chown;
                let chmod =
                    a.mode.is_some_and(|m| m & 0o7777 != u32::from(shown.perm) && !kills_setid(m)) && !owner && !fowner;
                if chown || chgrp || chmod {
                    return Err(Errno::EPERM);
                }
            }
            // What `-o uid=, gid=, fmode=, dmode=` shows is not stored: a
            // chown to it (`cp -p`, `rsync -a`, `tar x` by its shown owner)
            // would store this host's number for every host.
            let map = self.opts.attr_map;
            a.uid = a.uid.filter(|_| map.uid.is_none());
            a.gid = a.gid.filter(|_| map.gid.is_none());
            let fixed = match shown.kind {
                fuser::FileType::RegularFile => map.fmode.is_some(),
                fuser::FileType::Directory => map.dmode.is_some(),
                _ => false,
            };
            a.mode = a.mode.filter(|_| !fixed);
            // NOTE: on a uid= mount the user it names owns every entry here;
            // only root adds permission bits every host sees. Taking bits
            // away (the kernel's own clearing of set-id bits on a write
            // among them), and the mode of a file made here and not yet
            // published (`install -m`, `cp -p`), are the owner's.
            if let Some(m) = a.mode.filter(|_| map.uid.is_some() && a.who.uid != 0) {
                let adds = m & 0o7777 & !u32::from(shown.perm) != 0;
                let unpublished = {
                    let s = self.state()?;
                    let path = s.inodes.get(ino).map(|i| i.path.clone()).unwrap_or_default();
                    s.tree.get(&path).is_some_and(|n| n.local || n.provisional)
                };
                if adds && !unpublished {
                    return Err(Errno::EPERM);
                }
            }
            if ino == crate::inodes::ROOT {
                // The mount's root is the prefix, which no entry stores: it
                // keeps what it shows (`cp -a src/. /etc/app` sets that).
                let same = a.mode.is_none_or(|m| m & 0o7777 == u32::from(shown.perm))
                    && a.uid.is_none_or(|u| u == shown.uid)
                    && a.gid.is_none_or(|g| g == shown.gid);
                if !same {
                    return Err(Errno::EPERM);
                }
                (a.mode, a.uid, a.gid) = (None, None, None);
            }
        }
        if let Some(size) = a.size {
            let in_handle = match fh {
                Some(fh) => match self.handles()?.writer(fh) {
                    Ok(w) => w.truncate(size).map(|_| true)?,
                    Err(_) => false,
                },
                None => false,
            };
            if !in_handle {
                self.truncate_now(ino, size)?;
            }
        }
        if a.mode.is_some() || a.uid.is_some() || a.gid.is_some() || a.mtime.is_some() || a.atime.is_some() {
            self.set_attrs(ino, a)?;
        }
        // IMPORTANT: the size the inode's version has, even through a
        // writer's descriptor (ftruncate): the kernel takes this reply's size
        // for the inode, which every reader of it shares (its page cache and
        // mappings are cut to it), so a writer's size here would show readers
        // a prefix of the published value, or a size it never had.
        self.getattr(ino)
    }

    /// The attached path of `ino` (the name a change by inode goes to), its
    /// entry and its kind, as checked.
    fn attached(&self, ino: u64) -> Result<(String, Option<TreeNode>, Kind), Errno> {
        let s = self.state()?;
        let i = s.inodes.get(ino).ok_or(Errno::ENOENT)?;
        let now = s.tree.get(&i.path);
        match &i.binding {
            crate::inodes::Binding::Attached => {}
            crate::inodes::Binding::Detached { gone: false, node } if s.inodes.attached(&i.path).is_none() => {
                // IMPORTANT: the kernel checked the caller against this
                // version's mode and owner: a change by inode goes to the
                // name's file only if it has the same.
                if let (Some(old), Some(now)) = (node, now) {
                    if !self.same_access(&old.meta, &now.meta) {
                        return Err(Errno::ESTALE);
                    }
                }
            }
            _ => return Err(Errno::ESTALE),
        }
        Ok((i.path.clone(), now.cloned(), s.tree.kind(&i.path).ok_or(Errno::ENOENT)?))
    }

    /// chmod, chown, utimens: stored in the entry.
    fn set_attrs(&self, ino: u64, a: SetAttr) -> Result<(), Errno> {
        // IMPORTANT: no commit of the file runs meanwhile. One would put
        // over the revision this change replaces, and fail; and a created
        // file's first commit, which carries the attributes it was made
        // with, would put them over these if it is under way (a RELEASE
        // comes after close(2) has returned, while the program goes on to
        // chmod or chown the file).
        // NOTE: a writer opened while this waits is not held: its commit
        // and this change then meet at the cluster's compare, and one of
        // them fails (EIO) rather than undoing the other.
        let versions = {
            let (path, _, _) = self.attached(ino)?;
            self.state()?.inodes.versions_of(&path)
        };
        let locks = self.writer_locks(versions.iter().copied())?;
        let _held = locks.iter().map(|l| l.lock().map_err(|_| Errno::EIO)).collect::<Result<Vec<_>, _>>()?;
        let (path, node, kind) = self.attached(ino)?;
        // NOTE: the bits `-o umask=` hides are this host's to keep, not to
        // clear: `chmod u+x` here leaves g+r where other hosts see it.
        let umask = self.opts.attr_map.umask & 0o777;
        let stored = node.as_ref().map_or(kind.default_mode(), |n| n.meta.mode);
        let mode = a.mode.map(|m| (m & !umask | stored & umask) & 0o7777);
        let apply = |m: &mut Meta| {
            m.mode = mode.unwrap_or(m.mode);
            m.uid = a.uid.unwrap_or(m.uid);
            m.gid = a.gid.unwrap_or(m.gid);
            m.mtime_ns = a.mtime.unwrap_or(m.mtime_ns);
            m.atime_ns = a.atime.or(m.atime_ns);
        };
        if node.as_ref().is_some_and(|n| n.local || n.provisional) || path.is_empty() {
            // Local files and files not committed yet keep the attributes
            // here; a created file's first commit carries them.
            if let Some(n) = self.state_mut()?.tree.get_mut(&path) {
                apply(&mut n.meta);
                written_at(&mut n.meta, None, false);
            }
            let after = node.as_ref().map(|n| {
                let mut m = n.meta.clone();
                apply(&mut m);
                m
            });
            let mut hs = self.handles()?;
            for (_, w) in hs.writers_on(ino).filter(|(_, w)| w.dirty) {
                w.gen += 1;
                w.attrs.mode = mode.or(w.attrs.mode);
                w.attrs.uid = a.uid.or(w.attrs.uid);
                w.attrs.gid = a.gid.or(w.attrs.gid);
                w.attrs.mtime_ns = a.mtime.or(w.attrs.mtime_ns);
                w.attrs.atime_ns = a.atime.or(w.attrs.atime_ns);
            }
            drop(hs);
            if let (Some(before), Some(after)) = (&node, &after) {
                self.recheck_writers(&path, &a, &before.meta, after)?;
            }
            return Ok(());
        }
        self.writable()?;
        let key = self.key(&path);
        let deadline = std::time::Instant::now() + super::CATCH_UP_WAIT;
        let mut node = node;
        let resp = loop {
            let compare =
                node.as_ref().map(|n| vec![Compare::key_at(key.clone(), n.meta.mod_revision)]).unwrap_or_default();
            let txn = TxnRequest {
                compare,
                success: vec![TxnOp::Put {
                    key: key.clone(),
                    value: None,
                    value_base64: None,
                    // An implied directory becomes an explicit one to hold them.
                    kind: node.is_none().then_some(kind),
                    mode,
                    uid: a.uid,
                    gid: a.gid,
                    mtime_ns: a.mtime,
                    atime_ns: a.atime,
                }],
                failure: vec![],
            };
            let seen = match self.cluster.txn(&txn) {
                Ok(r) if r.succeeded => break self.commits.count(Ok(r))?,
                Ok(_) => node.clone(),
                Err(f) => return self.commits.count(Err(f.errno(Errno::EIO))),
            };
            // NOTE: a directory's revision moves with its entries (kvd's
            // txn::touch_parents), made elsewhere too: the same directory
            // at a newer revision is changed once the watch brought it. A
            // file's revision guards its writers (rebased below), and
            // another entry under the name was not the one checked.
            let in_time = std::time::Instant::now() < deadline;
            let again = match &seen {
                Some(n) if n.meta.kind == Kind::Dir && in_time && self.wait_for_newer(&path, n, deadline) => {
                    match self.attached(ino) {
                        Ok((_, fresh, _)) => fresh
                            .filter(|f| f.meta.kind == Kind::Dir && f.meta.create_revision == n.meta.create_revision),
                        Err(e) => return self.commits.count(Err(e)),
                    }
                }
                _ => None,
            };
            match again {
                Some(fresh) => node = Some(fresh),
                None => return self.commits.count(Err(Errno::EIO)),
            }
        };
        let old_rev = node.as_ref().map(|n| n.meta.mod_revision).unwrap_or(0);
        let before = node.as_ref().map(|n| n.meta.clone());
        let mut n = node.unwrap_or_else(|| TreeNode {
            meta: new_meta(Kind::Dir, 0o755, 0, 0),
            value: Arc::default(),
            local: false,
            provisional: false,
        });
        apply(&mut n.meta);
        written_at(&mut n.meta, resp.time_ns, false);
        n.meta.mod_revision = resp.revision;
        n.meta.version += 1;
        if n.meta.create_revision == 0 {
            // (an implied directory's first entry)
            n.meta.create_revision = resp.revision;
        }
        let after = n.meta.clone();
        {
            let mut s = self.state_mut()?;
            if !s.tree.knows_newer(&path, resp.revision) {
                s.tree.insert(path.clone(), n);
            }
            // (an implied directory made explicit is a new entry in its
            // parent)
            self.show_touched(&mut s, &Written::of(&resp));
        }
        // The content did not change: writers of it go on editing it, and
        // a time set after their last write stays (`cp -p` sets it through
        // the descriptor it wrote, before its close commits).
        for v in &versions {
            self.rebase(*v, old_rev, resp.revision, Some(after.mtime_ns));
        }
        if a.mtime.is_some() || a.atime.is_some() {
            let mut hs = self.handles()?;
            for v in &versions {
                for (_, w) in hs.writers_on(*v).filter(|(_, w)| w.dirty) {
                    w.attrs.mtime_ns = a.mtime.or(w.attrs.mtime_ns);
                    w.attrs.atime_ns = a.atime.or(w.attrs.atime_ns);
                    w.gen += 1;
                }
            }
        }
        self.changed();
        if let Some(before) = &before {
            self.recheck_writers(&path, &a, before, &after)?;
        }
        Ok(())
    }

    /// After `a.who` changed the mode or owner of `path` here from
    /// `before` to `after`: if the file was theirs, their own writers of it
    /// (`cp -p`'s fchmod before its close) are held to what they made it.
    fn recheck_writers(&self, path: &str, a: &SetAttr, before: &Meta, after: &Meta) -> Result<(), Errno> {
        let by = a.who.uid;
        if a.mode.is_none() && a.uid.is_none() && a.gid.is_none() || self.shown(before).uid != by {
            return Ok(());
        }
        let shown = self.shown(after);
        let versions = self.state()?.inodes.versions_of(path);
        let mut hs = self.handles()?;
        for v in versions {
            for (_, w) in hs.writers_on(v).filter(|(_, w)| w.opener.uid == by) {
                w.checked = Some(shown);
            }
        }
        Ok(())
    }

    /// truncate(2) without an open handle: written at once.
    fn truncate_now(&self, ino: u64, size: u64) -> Result<(), Errno> {
        let (path, node, _) = self.attached(ino)?;
        let node = node.ok_or(Errno::ENOENT)?;
        if node.meta.kind != Kind::File {
            return Err(Errno::EISDIR);
        }
        let size = usize::try_from(size).ok().filter(|s| *s <= crate::handles::MAX_BUFFER).ok_or(Errno::EFBIG)?;
        // (of the empty file, if a descriptor truncated it at its open)
        let truncated = Self::open_truncation(&mut *self.handles()?, ino, &node).is_some();
        let mut v = if truncated { Vec::new() } else { node.value.as_ref().clone() };
        v.resize(size, 0);
        if node.local {
            let mut s = self.state_mut()?;
            let mut n = node.clone();
            n.meta.size = size as u64;
            n.value = Arc::new(v);
            s.tree.insert(path.clone(), n);
            s.inodes.detach(&path, Some(node), false);
            let inval = super::watch::entry_invals(&s, &path);
            drop(s);
            self.invalidate(inval);
            return Ok(());
        }
        self.writable()?;
        let opts = PutOptions { if_match: Some(node.meta.mod_revision), ..Default::default() };
        let w = self
            .commits
            .count(self.cluster.put_at(&self.key(&path), v.clone(), &opts).map_err(|f| f.errno(Errno::EIO)))?;
        let rev = w.revision;
        self.wrote_own(rev, now_ns());
        let mut n = node;
        n.meta.size = size as u64;
        n.meta.mod_revision = rev;
        n.meta.version += 1;
        written_at(&mut n.meta, w.time_ns, true);
        n.value = Arc::new(v);
        let inval = {
            let mut s = self.state_mut()?;
            if !s.tree.knows_newer(&path, rev) {
                let old = s.tree.get(&path).cloned();
                s.tree.insert(path.clone(), n);
                s.inodes.detach(&path, old, false);
            }
            super::watch::entry_invals(&s, &path)
        };
        self.changed();
        // IMPORTANT: waited for, as a close's commit is: the new size is a
        // new version, under a new inode, and the kernel still has the name
        // on the old one (whose size this SETATTR's answer gives it): a
        // `stat` right after truncate(2) showed the old size. (Forgetting
        // the name takes the directory; an unlink or rename of this file
        // that holds it waits for the file, which truncate(2) holds: then
        // this waits out its bound.)
        self.inval.send_and_wait(inval, super::OWN_INVAL_WAIT);
        Ok(())
    }

    /// unlink, rmdir.
    pub fn unlink(&self, parent: u64, name: &std::ffi::OsStr, dir: bool) -> Result<(), Errno> {
        let path = self.child(parent, name)?;
        // IMPORTANT: not while a commit of the file is under way: a created
        // file's first commit (at RELEASE, after close(2) has returned)
        // would publish it after this removed it here only, and the name
        // would come back.
        let versions = self.state()?.inodes.versions_of(&path);
        let locks = self.writer_locks(versions.iter().copied())?;
        let _held = locks.iter().map(|l| l.lock().map_err(|_| Errno::EIO)).collect::<Result<Vec<_>, _>>()?;
        let (node, kind, children) = {
            let s = self.state()?;
            (s.tree.get(&path).cloned(), s.tree.kind(&path).ok_or(Errno::ENOENT)?, s.tree.has_children(&path))
        };
        match (dir, kind == Kind::Dir) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            (true, true) if children => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        let Some(node) = node else { return Err(Errno::ENOENT) };
        let deleted = if !node.local && !node.provisional { Some(self.delete_key(&path)?) } else { None };
        let mut s = self.state_mut()?;
        // IMPORTANT: never over what the watch brought after the delete (the
        // name created again elsewhere), nor over a file the cluster's
        // version replaced while this one was only here.
        let removed = match &deleted {
            Some(Some(w)) if !s.tree.knows_newer(&path, w.revision) => s.tree.remove_at(&path, w.revision).is_some(),
            Some(Some(_)) => false,
            Some(None) => s.tree.remove(&path).is_some(),
            None if s.tree.get(&path).is_some_and(|n| n.local || n.provisional) => s.tree.remove(&path).is_some(),
            None => false,
        };
        if removed {
            s.inodes.detach(&path, Some(node), true);
        }
        if let Some(Some(w)) = &deleted {
            self.show_touched(&mut s, w);
        }
        drop(s);
        self.changed();
        Ok(())
    }

    /// Deletes the key of `path` in the cluster; the revision of the delete
    /// (`None` when the key was gone already), for the tree's record of this
    /// mount's deletes.
    pub(super) fn delete_key(&self, path: &str) -> Result<Option<Written>, Errno> {
        self.writable()?;
        self.commits.count(match self.cluster.delete_at(&self.key(path)) {
            Ok(w) => Ok(Some(w)),
            Err(crate::cluster::Failure::NotFound) => Ok(None),
            Err(f) => Err(f.errno(Errno::EIO)),
        })
    }
}
