//! Local directory trees: read one to publish, write one out (export, and
//! the staging directory of `apply --check`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use kv_client::{validate_key, Kind};

use crate::diff::{Local, Node, Tree};

/// Reads the tree under `root` as the entries of `prefix` would hold it:
/// files with their content, symlinks with their target (never followed),
/// devices with their number, directories, FIFOs and sockets; modes
/// always, owners only with `owners`. Refuses, naming the path, what cannot
/// be published: a name that is not a valid key, a file over `max_value`
/// bytes.
pub fn read_local(root: &Path, prefix: &str, owners: bool, max_value: u64) -> anyhow::Result<Local> {
    let meta = std::fs::metadata(root).map_err(|e| match e.raw_os_error() {
        Some(40) => anyhow!("{}: a symlink loop (too many levels of symbolic links)", root.display()),
        _ if e.kind() == std::io::ErrorKind::NotFound => anyhow!("{}: no such directory", root.display()),
        _ => anyhow!("{}: {e}", root.display()),
    })?;
    if !meta.is_dir() {
        bail!("{}: not a directory", root.display());
    }
    let mut local = Local::default();
    walk(root, "", prefix, owners, max_value, &mut local)?;
    Ok(local)
}

fn walk(dir: &Path, rel: &str, prefix: &str, owners: bool, max_value: u64, out: &mut Local) -> anyhow::Result<bool> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    names.sort();
    for name in &names {
        let path = dir.join(name);
        let name = name
            .to_str()
            .ok_or_else(|| anyhow!("{}: the name is not UTF-8, so it is not a valid key", path.display()))?;
        let rel = if rel.is_empty() { name.to_owned() } else { format!("{rel}/{name}") };
        let key = if prefix.is_empty() { rel.clone() } else { format!("{prefix}/{rel}") };
        validate_key(&key).map_err(|e| anyhow!("{}: not a valid key: {e}", path.display()))?;
        let m = std::fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let owner = owners.then_some((m.uid(), m.gid()));
        let mode = m.mode() & 0o7777;
        let ft = m.file_type();
        let node = if ft.is_dir() {
            let has_children = walk(&path, &rel, prefix, owners, max_value, out)?;
            if has_children && mode == Kind::Dir.default_mode() && owner.is_none_or(|o| o == (0, 0)) {
                out.plain_dirs.insert(rel.clone());
            }
            Node { kind: Kind::Dir, mode, owner, value: Vec::new() }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).with_context(|| format!("reading {}", path.display()))?;
            Node {
                kind: Kind::Symlink,
                mode: Kind::Symlink.default_mode(),
                owner,
                value: target.as_os_str().as_bytes().to_vec(),
            }
        } else if ft.is_file() {
            if m.len() > max_value {
                bail!(
                    "{}: {} bytes, over the cluster's value limit of {max_value} bytes (kvd --max-value-size)",
                    path.display(),
                    m.len()
                );
            }
            let value = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            Node { kind: Kind::File, mode, owner, value }
        } else {
            use std::os::unix::fs::FileTypeExt;
            let (kind, value) = if ft.is_fifo() {
                (Kind::Fifo, Vec::new())
            } else if ft.is_socket() {
                (Kind::Socket, Vec::new())
            } else {
                let kind = if ft.is_char_device() { Kind::Char } else { Kind::Block };
                let dev = m.rdev();
                let (major, minor) = (libc::major(dev), libc::minor(dev));
                if major > kv_client::MAX_MAJOR || minor > kv_client::MAX_MINOR {
                    bail!("{}: device {major}:{minor} is beyond the numbers a mount can show", path.display());
                }
                (kind, kv_client::device_value(major, minor))
            };
            Node { kind, mode, owner, value }
        };
        out.tree.insert(rel, node);
    }
    Ok(!names.is_empty())
}

/// Makes a FIFO, socket or device node at `path` with `node`'s mode.
#[allow(unsafe_code)]
fn make_node(path: &Path, node: &Node) -> std::io::Result<()> {
    let (kind_bits, dev) = match node.kind {
        Kind::Fifo => (libc::S_IFIFO, 0),
        Kind::Socket => (libc::S_IFSOCK, 0),
        Kind::Char | Kind::Block => {
            let (major, minor) = kv_client::device_number(&node.value).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "the device number is not MAJOR:MINOR")
            })?;
            (if node.kind == Kind::Char { libc::S_IFCHR } else { libc::S_IFBLK }, libc::makedev(major, minor))
        }
        _ => return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a node kind")),
    };
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    if unsafe { libc::mknod(c.as_ptr(), kind_bits | (node.mode & 0o7777), dev) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode & 0o7777))
}

/// Writes `tree` under `root` (which exists): directories, files with their
/// content, symlinks with their target, every mode as given (whatever the
/// umask), owners with `owners`. Directories that only hold entries get
/// mode 0755; a directory's own mode is set last, so a read-only one is
/// filled first. With `replace`, whatever is in the way is removed first.
pub fn write_tree(root: &Path, tree: &Tree, owners: bool, replace: bool) -> anyhow::Result<()> {
    // NOTE: only root makes devices; refused before anything is written.
    let devices: Vec<&String> = tree.iter().filter(|(_, n)| n.kind.is_device()).map(|(p, _)| p).collect();
    if !devices.is_empty() && std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0) != 0 {
        let shown: Vec<&str> = devices.iter().take(3).map(|p| p.as_str()).collect();
        bail!(
            "{} device{} ({}{}): only root makes devices; nothing was written to {}",
            devices.len(),
            if devices.len() == 1 { "" } else { "s" },
            shown.join(", "),
            if devices.len() > 3 { ", ..." } else { "" },
            root.display()
        );
    }
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    let mut made = std::collections::BTreeSet::new();
    for (rel, node) in tree {
        let path = root.join(rel);
        let ctx = || format!("writing {}", path.display());
        // Every directory on the way, as an implied directory shows it.
        let mut at = root.to_path_buf();
        for seg in Path::new(rel).parent().into_iter().flat_map(Path::components) {
            at.push(seg);
            if made.insert(at.clone()) {
                make_dir(&at, replace).with_context(ctx)?;
                dirs.push((at.clone(), Kind::Dir.default_mode()));
            }
        }
        if replace {
            clear(&path, node.kind == Kind::Dir).with_context(ctx)?;
        }
        match node.kind {
            Kind::Dir => {
                if made.insert(path.clone()) {
                    make_dir(&path, replace).with_context(ctx)?;
                }
                dirs.retain(|(p, _)| *p != path);
                dirs.push((path.clone(), node.mode));
            }
            Kind::File => {
                std::fs::write(&path, &node.value).with_context(ctx)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(node.mode & 0o7777))
                    .with_context(ctx)?;
            }
            Kind::Symlink => std::os::unix::fs::symlink(OsStr::from_bytes(&node.value), &path).with_context(ctx)?,
            Kind::Fifo | Kind::Socket | Kind::Char | Kind::Block => make_node(&path, node).with_context(ctx)?,
        }
        if let (true, Some((uid, gid))) = (owners, node.owner) {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).with_context(ctx)?;
        }
    }
    // Deepest first: a directory's mode may take away the right to write in it.
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (path, mode) in dirs {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Makes a directory; one already there is fine when `replace`.
fn make_dir(path: &Path, replace: bool) -> std::io::Result<()> {
    if replace {
        clear(path, true)?;
        if path.is_dir() && !path.is_symlink() {
            return Ok(());
        }
    }
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

/// Removes what is at `path`, unless it is a directory and a directory goes
/// there.
fn clear(path: &Path, for_dir: bool) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() && for_dir => Ok(()),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    }
}

/// A fresh private directory (mode 0700) in the temp dir, removed with all
/// it holds when dropped.
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    /// Makes one.
    pub fn new() -> anyhow::Result<Staging> {
        let base = std::env::temp_dir();
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        for i in 0..100u128 {
            let path = base.join(format!("kvctl-apply-{}-{:x}", std::process::id(), nanos + i));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let s = Staging { path };
                    std::fs::set_permissions(&s.path, std::fs::Permissions::from_mode(0o700))
                        .with_context(|| format!("making {} private", s.path.display()))?;
                    return Ok(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("making a staging directory in {}", base.display())),
            }
        }
        bail!("could not make a staging directory in {}", base.display())
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // NOTE: a read-only directory inside would keep its entries.
        fn writable(dir: &Path) {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    writable(&e.path());
                }
            }
        }
        writable(&self.path);
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("kvctl: could not remove the staging directory {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_written_reads_back_the_same() {
        let tmp = Staging::new().expect("staging");
        let mut t = Tree::new();
        let file = |v: &[u8], mode| Node { kind: Kind::File, mode, owner: None, value: v.to_vec() };
        t.insert("a/b/c.conf".into(), file(b"c\n", 0o600));
        t.insert("ro".into(), Node { kind: Kind::Dir, mode: 0o555, owner: None, value: vec![] });
        t.insert("ro/x".into(), file(b"x", 0o644));
        t.insert("empty".into(), Node { kind: Kind::Dir, mode: 0o750, owner: None, value: vec![] });
        t.insert("link".into(), Node { kind: Kind::Symlink, mode: 0o777, owner: None, value: b"a/b/c.conf".to_vec() });
        t.insert("bin".into(), file(&[0, 0xff], 0o4755));
        let root = tmp.path().join("out");
        std::fs::create_dir(&root).expect("root");
        write_tree(&root, &t, false, false).expect("write");
        let back = read_local(&root, "app", false, 1 << 20).expect("read");
        let mut want = t.clone();
        for d in ["a", "a/b"] {
            want.insert(d.into(), Node { kind: Kind::Dir, mode: 0o755, owner: None, value: vec![] });
        }
        assert_eq!(back.tree, want);
        assert_eq!(back.plain_dirs.iter().collect::<Vec<_>>(), ["a", "a/b"]);
        assert!(write_tree(&root, &t, false, false).is_err(), "nothing is replaced without asking");
        write_tree(&root, &t, false, true).expect("replace");
        assert_eq!(read_local(&root, "app", false, 1 << 20).expect("read").tree, want);
        let staged = tmp.path().to_path_buf();
        drop(tmp);
        assert!(!staged.exists(), "the staging directory goes, read-only parts included");
    }

    #[test]
    fn what_cannot_be_published_is_named() {
        let tmp = Staging::new().expect("staging");
        let err = |p: &Path, max| read_local(p, "app", false, max).expect_err("refused").to_string();
        assert!(err(&tmp.path().join("missing"), 10).contains("no such directory"));
        std::fs::write(tmp.path().join("big"), b"0123456789x").expect("big");
        assert!(err(tmp.path(), 10).contains("over the cluster's value limit of 10 bytes"));
        assert!(err(&tmp.path().join("big"), 10).contains("not a directory"));
        std::fs::remove_file(tmp.path().join("big")).expect("rm");
        std::os::unix::fs::symlink("loop", tmp.path().join("loop")).expect("symlink");
        assert!(err(&tmp.path().join("loop"), 10).contains("symlink loop"));
        assert!(read_local(tmp.path(), "app", false, 10).is_ok(), "a symlink inside is stored, not followed");
        let odd = tmp.path().join(OsStr::from_bytes(b"\xff.conf"));
        std::fs::write(&odd, b"x").expect("odd name");
        assert!(err(tmp.path(), 10).contains("not UTF-8"));
        std::fs::remove_file(&odd).expect("rm");
        assert!(read_local(tmp.path(), "a//b", false, 10)
            .expect_err("bad prefix")
            .to_string()
            .contains("not a valid key"));
    }
}
