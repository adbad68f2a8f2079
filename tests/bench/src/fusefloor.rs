//! The FUSE floor: the least a mount can take for the read loops of `fs`.
//! A fixed in-memory tree, the one those loops read (`fsbench-ro/one` and
//! `fsbench-ro/many/f0000` .. `f0999`), served through fuser with the
//! choices kvfs makes towards the kernel: the same session settings, TTLs,
//! capabilities and open flags (kvfs/src/fs.rs, kvfs/src/main.rs). What
//! kvfs takes beyond this is what kvfs's own code costs. With
//! `passthrough`, opens are answered as kvfs answers them under
//! `-o passthrough`: the kernel reads each file from a memory file.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, KernelConfig, LockOwner,
    MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyXattr, Request, Session, SessionACL,
};

use kvfs::kernel::{self, TTL};

/// Files in `many`.
const MANY: u64 = 1000;
const ROOT: u64 = 1;
const RO: u64 = 2;
const ONE: u64 = 3;
const MANY_DIR: u64 = 4;
/// The first of `many`'s files; the rest follow.
const FIRST: u64 = 5;

struct Floor {
    /// Every file's content.
    data: Vec<u8>,
    /// The mount's time, every entry's times.
    at: SystemTime,
    /// Answer opens with passthrough (and the backing of each inode).
    passthrough: Option<Mutex<HashMap<u64, BackingId>>>,
}

impl Floor {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = match ino {
            ROOT | RO | MANY_DIR => (FileType::Directory, 0o755, 0, 2),
            ONE => (FileType::RegularFile, 0o644, self.data.len() as u64, 1),
            i if (FIRST..FIRST + MANY).contains(&i) => (FileType::RegularFile, 0o644, self.data.len() as u64, 1),
            _ => return None,
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.at,
            mtime: self.at,
            ctime: self.at,
            crtime: self.at,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn child(parent: u64, name: &str) -> Option<u64> {
        match (parent, name) {
            (ROOT, "fsbench-ro") => Some(RO),
            (RO, "one") => Some(ONE),
            (RO, "many") => Some(MANY_DIR),
            (MANY_DIR, n) => {
                let i: u64 = n.strip_prefix('f').filter(|d| d.len() == 4)?.parse().ok()?;
                (i < MANY).then_some(FIRST + i)
            }
            _ => None,
        }
    }

    /// `(ino, kind, name)` of a directory's entries, `.` and `..` first.
    fn list(ino: u64) -> Option<Vec<(u64, FileType, String)>> {
        let dot = |up: u64| vec![(ino, FileType::Directory, ".".into()), (up, FileType::Directory, "..".into())];
        Some(match ino {
            ROOT => [dot(ROOT), vec![(RO, FileType::Directory, "fsbench-ro".into())]].concat(),
            RO => [
                dot(ROOT),
                vec![(ONE, FileType::RegularFile, "one".into()), (MANY_DIR, FileType::Directory, "many".into())],
            ]
            .concat(),
            MANY_DIR => {
                let files = (0..MANY).map(|i| (FIRST + i, FileType::RegularFile, format!("f{i:04}")));
                dot(RO).into_iter().chain(files).collect()
            }
            _ => return None,
        })
    }
}

impl Filesystem for Floor {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(kernel::CAPABILITIES);
        if self.passthrough.is_some() && !kernel::ask_passthrough(config) {
            return Err(no_passthrough());
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match name.to_str().and_then(|n| Floor::child(parent.0, n)).and_then(|i| self.attr(i)) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match (self.attr(ino.0), &self.passthrough) {
            (Some(a), Some(backings)) if a.kind == FileType::RegularFile => {
                let mut backings = backings.lock().expect("backings");
                let id = match backings.entry(ino.0) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        match memory_file(&self.data).and_then(|f| reply.open_backing(&f)) {
                            Ok(id) => v.insert(id),
                            Err(_) => return reply.error(Errno::EIO),
                        }
                    }
                };
                reply.opened_passthrough(FileHandle(ino.0), kernel::file_through(true), id);
            }
            (Some(a), None) if a.kind == FileType::RegularFile => {
                reply.opened(FileHandle(ino.0), kernel::file_open(true))
            }
            (Some(_), _) => reply.error(Errno::EISDIR),
            (None, _) => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let start = (offset as usize).min(self.data.len());
        let end = start.saturating_add(size as usize).min(self.data.len());
        reply.data(&self.data[start..end]);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), kernel::DIR_OPEN);
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(list) = Floor::list(ino.0) else { return reply.error(Errno::ENOTDIR) };
        for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let Some(list) = Floor::list(ino.0) else { return reply.error(Errno::ENOTDIR) };
        for (i, (ino, _, name)) in list.iter().enumerate().skip(offset as usize) {
            let Some(attr) = self.attr(*ino) else { continue };
            if reply.add(attr.ino, (i + 1) as u64, name, &TTL, &attr, Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOTSUP);
    }
}

fn no_passthrough() -> std::io::Error {
    std::io::Error::other("the kernel offers no FUSE passthrough (Linux 6.9 or later, as root)")
}

/// A memory file holding `bytes`.
#[allow(unsafe_code)]
fn memory_file(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    // SAFETY: the name is a valid C string; the call touches no other memory.
    let fd = unsafe { libc::memfd_create(c"kvfloor".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just made and is owned by nothing else.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(bytes)?;
    Ok(f)
}

/// Mounts the floor at `dir` with files of `size` bytes and serves it until
/// it is unmounted; `passthrough`: opens are answered with it.
pub fn serve(dir: &Path, size: usize, passthrough: bool) -> std::io::Result<()> {
    let fs = Floor {
        data: vec![b'x'; size],
        at: SystemTime::now(),
        passthrough: passthrough.then(|| Mutex::new(HashMap::new())),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("kv-bench-floor".into()),
        MountOption::Subtype("kvfloor".into()),
        MountOption::AutoUnmount,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(kernel::SESSION_THREADS);
    Session::new(fs, dir, &config)?.run()
}
