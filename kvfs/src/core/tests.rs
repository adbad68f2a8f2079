//! The core's rules over [`FakeCluster`], without FUSE or kvd: what a
//! writer publishes (this file), what a reader sees and how changes from
//! elsewhere arrive ([`readers`]).
//!
//! A "mount" is a [`Core`] loaded from the fake, as kvfs starts one; "from
//! elsewhere" is a second mount or a direct call on the fake. Changes reach a
//! mount through [`Core::apply`] of the fake's watch batches ([`catch_up`]),
//! or through [`crate::sync::MountWatch::run`] on a thread.

mod readers;
mod review;

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuser::Errno;
use kv_client::{Attrs, PutOptions, TxnRequest, TxnResponse};

use super::{loaded, Core, Inval, Invalidate, Options, RenameMode, SetAttr};
use crate::cluster::{Cluster, Events, Failure, Page};
use crate::fake::FakeCluster;
use crate::handles::{Caller, MAX_BUFFER};
use crate::inodes::ROOT;

const PREFIX: &str = "app";
/// Lock owners: the shell that opened a file, and a child it forked.
const SHELL: u64 = 7;
const CHILD: u64 = 8;
const WAIT: Duration = Duration::from_secs(10);

/// The invalidations a mount sent, and whether the sender waited for them.
#[derive(Default, Clone)]
struct Sent(Arc<Mutex<Vec<(bool, Inval)>>>);

impl Invalidate for Sent {
    fn send(&self, list: Vec<Inval>) {
        self.0.lock().expect("sent").extend(list.into_iter().map(|i| (false, i)));
    }
    fn send_and_wait(&self, list: Vec<Inval>, _bound: Duration) -> bool {
        self.0.lock().expect("sent").extend(list.into_iter().map(|i| (true, i)));
        true
    }
}

impl Sent {
    fn take(&self) -> Vec<(bool, Inval)> {
        std::mem::take(&mut *self.0.lock().expect("sent"))
    }
}

/// A mount of [`PREFIX`]: its core and what it told the kernel to forget.
struct Mount {
    core: Arc<Core>,
    sent: Sent,
}

fn path_of(key: &str) -> Option<String> {
    key.strip_prefix(PREFIX)?.strip_prefix('/').map(str::to_owned)
}

fn key(name: &str) -> String {
    format!("{PREFIX}/{name}")
}

/// A new mount of [`PREFIX`], loaded from `cluster` as kvfs starts one.
fn mount(cluster: Arc<dyn Cluster>) -> Mount {
    mount_mapped(cluster, super::AttrMap::default())
}

/// [`mount`] with `-o uid=, gid=, umask=, fmode=, dmode=` as `map` says.
fn mount_mapped(cluster: Arc<dyn Cluster>, map: super::AttrMap) -> Mount {
    let (cursor, entries) = crate::sync::load(cluster.as_ref(), PREFIX, path_of).expect("load");
    let sent = Sent::default();
    let opts = Options { prefix: PREFIX.into(), attr_map: map, ..Options::default() };
    let core = Core::new(cluster, opts, loaded(entries, cursor), Box::new(sent.clone()));
    Mount { core: Arc::new(core), sent }
}

/// `name` with `value`, `mode` and owner `uid`:`gid`, from elsewhere.
fn put_owned(fake: &FakeCluster, name: &str, value: &str, (mode, uid, gid): (u32, u32, u32)) {
    let attrs = Attrs { mode: Some(mode), uid: Some(uid), gid: Some(gid), ..Attrs::default() };
    fake.put(&key(name), value.as_bytes().to_vec(), &PutOptions { attrs, ..PutOptions::default() }).expect("put");
}

fn fake() -> Arc<FakeCluster> {
    Arc::new(FakeCluster::new())
}

/// A write from elsewhere (another client of the cluster).
fn put(fake: &FakeCluster, name: &str, value: &str) -> u64 {
    fake.put(&key(name), value.as_bytes().to_vec(), &PutOptions::default()).expect("put")
}

/// What the cluster holds at `name`.
fn stored(fake: &FakeCluster, name: &str) -> Option<Vec<u8>> {
    fake.get(&key(name)).and_then(|e| e.value_bytes())
}

/// Applies every revision the mount has not seen, one whole batch at a time.
fn catch_up(core: &Core, fake: &FakeCluster) {
    let mut w = fake.watch(PREFIX, core.cursor()).expect("watch");
    while core.cursor() < fake.revision() {
        let b = w.next().expect("next").expect("a batch");
        core.apply(&b);
    }
}

/// Polls `f` until it holds, at most [`WAIT`].
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Mount {
    fn ino(&self, name: &str) -> Result<u64, Errno> {
        self.core.lookup(ROOT, OsStr::new(name)).map(|a| a.attr.ino.0)
    }

    /// LOOKUP then OPEN: (inode, handle).
    fn open(&self, name: &str, flags: i32) -> (u64, u64) {
        let ino = self.ino(name).expect("lookup");
        (ino, self.core.open(ino, flags).expect("open"))
    }

    /// open(O_CREAT) as the kernel does it: CREATE, and for a name that
    /// exists a fresh LOOKUP and OPEN (the kernel sends CREATE only for a
    /// name it found none of; ESTALE makes it walk again): (inode, handle).
    fn create(&self, name: &str, flags: i32) -> Result<(u64, u64), Errno> {
        let flags = flags | libc::O_CREAT | libc::O_WRONLY;
        match self.core.create(ROOT, OsStr::new(name), 0o644, flags, 0, 0) {
            Err(e) if e == super::names::CREATED_ELSEWHERE => {
                let ino = self.ino(name)?;
                Ok((ino, self.core.open(ino, flags & !libc::O_CREAT)?))
            }
            r => r.map(|(a, fh)| (a.ino.0, fh)),
        }
    }

    /// `who` opens `name` with O_TRUNC and writes `data`: (inode, handle).
    fn writer_as(&self, name: &str, who: Caller, data: &[u8]) -> (u64, u64) {
        let ino = self.ino(name).expect("lookup");
        let fh = self.core.open_as(ino, libc::O_WRONLY | libc::O_TRUNC, who).expect("open");
        self.core.write(fh, 0, data, Some(SHELL)).expect("write");
        (ino, fh)
    }

    /// A read(2) of the whole handle.
    fn read(&self, ino: u64, fh: u64) -> Vec<u8> {
        self.core.read(ino, fh, 0, 4 << 20, true).expect("read")
    }

    /// A page-cache fill of the whole inode.
    fn pages(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        self.core.read(ino, 0, 0, 4 << 20, false)
    }

    /// `cat name`: a new lookup, open, read, close.
    fn cat(&self, name: &str) -> Result<Vec<u8>, Errno> {
        let ino = self.ino(name)?;
        let fh = self.core.open(ino, libc::O_RDONLY)?;
        let data = self.core.read(ino, fh, 0, 4 << 20, true);
        self.core.release(fh);
        self.core.forget(ino, 1);
        data
    }

    /// `printf value > name` by one process: open (or create), write, close.
    fn echo(&self, name: &str, value: &str) -> Result<(), Errno> {
        let (_, fh) = self.create(name, libc::O_TRUNC)?;
        self.core.write(fh, 0, value.as_bytes(), Some(SHELL))?;
        let r = self.core.flush(fh, SHELL);
        self.core.release(fh);
        r
    }
}

/// A cluster that runs a hook right after a put, transaction or delete is
/// applied, a probe answered or a page listed: another writer, or the
/// watch, winning a race at that moment.
struct Hooked {
    fake: Arc<FakeCluster>,
    after_put: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    after_txn: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    after_delete: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    after_probe: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    after_page: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Hooked {
    fn new(fake: Arc<FakeCluster>) -> Arc<Hooked> {
        Arc::new(Hooked {
            fake,
            after_put: Mutex::default(),
            after_txn: Mutex::default(),
            after_delete: Mutex::default(),
            after_probe: Mutex::default(),
            after_page: Mutex::default(),
        })
    }

    fn run(hook: &Mutex<Option<Box<dyn FnOnce() + Send>>>) {
        let h = hook.lock().expect("hook").take();
        if let Some(h) = h {
            h();
        }
    }
}

impl Cluster for Hooked {
    fn put(&self, key: &str, value: Vec<u8>, opts: &PutOptions) -> Result<u64, Failure> {
        let r = self.fake.put(key, value, opts);
        Self::run(&self.after_put);
        r
    }
    fn txn(&self, txn: &TxnRequest) -> Result<TxnResponse, Failure> {
        let r = self.fake.txn(txn);
        Self::run(&self.after_txn);
        r
    }
    fn delete(&self, key: &str) -> Result<u64, Failure> {
        let r = self.fake.delete(key);
        Self::run(&self.after_delete);
        r
    }
    fn probe(&self) -> Result<(), Failure> {
        let r = self.fake.probe();
        Self::run(&self.after_probe);
        r
    }
    fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, Failure> {
        let r = self.fake.list_page(prefix, after, limit);
        Self::run(&self.after_page);
        r
    }
    fn watch(&self, prefix: &str, after: u64) -> Result<Box<dyn Events>, Failure> {
        self.fake.watch(prefix, after)
    }
}

// ---- What one close publishes ----

#[test]
fn a_truncating_open_then_flush_before_any_write_publishes_nothing() {
    let fake = fake();
    put(&fake, "f", "1\n");
    let a = mount(fake.clone());
    let rev = fake.revision();
    let (_, fh) = a.open("f", libc::O_WRONLY | libc::O_TRUNC);
    assert_eq!(a.core.flush(fh, SHELL), Ok(()), "the shell's close after dup2");
    assert_eq!((fake.revision(), stored(&fake, "f")), (rev, Some(b"1\n".to_vec())), "no empty revision");
    a.core.write(fh, 0, b"2\n", Some(SHELL)).expect("write");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    assert_eq!((fake.revision(), stored(&fake, "f")), (rev + 1, Some(b"2\n".to_vec())), "one revision");
    a.core.release(fh);
    assert_eq!(fake.revision(), rev + 1, "release publishes nothing more");
}

/// Whose close makes the mount wait for a RELEASE: the opener's last
/// descriptor, not a copy another process inherited, and not one of
/// several the closer still holds; and what waits: the file's next LOOKUP
/// and OPEN, not a GETATTR, which no LOOKUP came before (a holder's).
#[test]
fn only_the_opener_s_last_descriptor_makes_the_next_step_wait_for_the_release() {
    let fake = fake();
    put(&fake, "f", "1");
    let a = mount(fake.clone());
    let ino = a.ino("f").expect("lookup");
    let opener = Caller { pid: 41, ..Caller::default() };
    let fh = a.core.open_as(ino, libc::O_WRONLY | libc::O_TRUNC, opener).expect("open O_TRUNC");
    let waited = |a: &Mount| a.core.handles().expect("handles").publishing_at_release(Instant::now());
    a.core.flush_by(fh, SHELL, &|o| o == 42, &|_| false).expect("a child's exit");
    assert!(waited(&a).is_empty(), "a copy inherited by another process");
    a.core.flush_by(fh, SHELL, &|o| o == 41, &|p| p == "f").expect("the shell's close after dup2");
    assert!(waited(&a).is_empty(), "the closer holds another descriptor");
    a.core.flush_by(fh, SHELL, &|o| o == 41, &|_| false).expect("the last close");
    assert_eq!(waited(&a), vec![(fh, ino)]);
    // A GETATTR does not wait (it is answered at once); the RELEASE, on
    // another thread, ends the wait of the next OPEN, which reads what it
    // published.
    assert_eq!(a.core.getattr(ino).expect("getattr").size, 1);
    let core = a.core.clone();
    let release = std::thread::spawn(move || core.release(fh));
    assert_eq!(a.cat("f").expect("cat"), b"", "the next step read what the close left");
    release.join().expect("release");
    assert!(waited(&a).is_empty());
}

#[test]
fn a_flush_from_another_owner_publishes_nothing() {
    let fake = fake();
    put(&fake, "f", "1");
    let a = mount(fake.clone());
    let rev = fake.revision();
    let (_, fh) = a.open("f", libc::O_WRONLY | libc::O_TRUNC);
    a.core.write(fh, 0, b"parent", Some(SHELL)).expect("write");
    assert_eq!(a.core.flush(fh, CHILD), Ok(()), "a forked child that wrote nothing exits");
    assert_eq!(fake.revision(), rev, "the child's close published the parent's half-written buffer");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    assert_eq!((fake.revision(), stored(&fake, "f")), (rev + 1, Some(b"parent".to_vec())));
    a.core.release(fh);
    assert_eq!(fake.revision(), rev + 1);
}

#[test]
fn a_truncate_only_handle_publishes_the_empty_value_at_release() {
    let fake = fake();
    put(&fake, "f", "1");
    put(&fake, "g", "1");
    let a = mount(fake.clone());
    let rev = fake.revision();
    // `: > f`
    let (_, fh) = a.open("f", libc::O_WRONLY | libc::O_TRUNC);
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    assert_eq!(fake.revision(), rev);
    a.core.release(fh);
    assert_eq!((fake.revision(), stored(&fake, "f")), (rev + 1, Some(vec![])));
    // ftruncate(fd, 0) on a handle opened without O_TRUNC.
    let (ino, fh) = a.open("g", libc::O_WRONLY);
    a.core.setattr(ino, Some(fh), SetAttr { size: Some(0), ..SetAttr::default() }).expect("ftruncate");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    assert_eq!((fake.revision(), stored(&fake, "g")), (rev + 2, Some(vec![])));
}

#[test]
fn a_created_file_publishes_nothing_before_its_first_write_and_one_revision_after() {
    let fake = fake();
    let a = mount(fake.clone());
    let (_, fh) = a.create("new", libc::O_TRUNC).expect("create");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    assert_eq!((fake.revision(), stored(&fake, "new")), (0, None), "no empty first revision");
    assert!(a.ino("new").is_ok(), "the creating mount sees the name at once");
    a.core.write(fh, 0, b"hello\n", Some(SHELL)).expect("write");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    assert_eq!((fake.revision(), stored(&fake, "new")), (1, Some(b"hello\n".to_vec())));
    let e = fake.get(&key("new")).expect("entry");
    assert_eq!((e.meta.version, e.meta.mode & 0o7777), (1, 0o644), "created with its mode in one put");
}

#[test]
fn a_created_file_closed_without_a_write_publishes_it_empty_once() {
    let fake = fake();
    let a = mount(fake.clone());
    let (_, fh) = a.create("touched", 0).expect("create");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    assert_eq!((fake.revision(), stored(&fake, "touched")), (1, Some(vec![])));
}

#[test]
fn a_chmod_of_a_created_file_before_its_first_commit_is_carried_by_it() {
    let fake = fake();
    let a = mount(fake.clone());
    let (ino, fh) = a.create("new", libc::O_TRUNC).expect("create");
    a.core.write(fh, 0, b"secret", Some(SHELL)).expect("write");
    a.core.setattr(ino, Some(fh), SetAttr { mode: Some(0o600), ..SetAttr::default() }).expect("fchmod");
    assert_eq!(fake.revision(), 0);
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    let e = fake.get(&key("new")).expect("entry");
    assert_eq!((fake.revision(), e.meta.mode & 0o7777), (1, 0o600));
}

#[test]
fn a_close_waits_for_the_kernel_to_forget_the_name_it_wrote() {
    let fake = fake();
    put(&fake, "f", "1");
    let a = mount(fake.clone());
    let (_, fh) = a.open("f", libc::O_WRONLY | libc::O_TRUNC);
    a.sent.take();
    a.core.write(fh, 0, b"2", Some(SHELL)).expect("write");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    let sent = a.sent.take();
    assert!(sent.contains(&(true, Inval::Entry(ROOT, "f".into()))), "waited for the name: {sent:?}");
    assert_eq!(a.cat("f"), Ok(b"2".to_vec()), "the next open on this mount reads what close() stored");
}

// ---- A failure leaves the old value, and is never applied later ----

#[test]
fn a_write_over_max_buffer_leaves_the_old_value_and_close_reports_it() {
    let fake = fake();
    put(&fake, "f", "old");
    let a = mount(fake.clone());
    let rev = fake.revision();
    let (ino, fh) = a.open("f", libc::O_WRONLY | libc::O_TRUNC);
    a.core.write(fh, 0, b"part", Some(SHELL)).expect("write");
    assert_eq!(a.core.write(fh, MAX_BUFFER as u64, b"x", Some(SHELL)), Err(Errno::EFBIG));
    assert_eq!(a.core.flush(fh, SHELL), Err(Errno::EFBIG), "close() reports the failed write");
    a.core.release(fh);
    assert_eq!((fake.revision(), stored(&fake, "f")), (rev, Some(b"old".to_vec())), "the old value stays");
    assert_eq!(a.pages(ino), Ok(b"old".to_vec()), "no unstored bytes in the page cache");
    assert_eq!(a.core.getattr(ino).map(|a| a.size), Ok(3));
    assert_eq!(a.cat("f"), Ok(b"old".to_vec()));
}

#[test]
fn a_commit_refused_too_large_is_reported_at_close_and_never_applied_later() {
    let fake = fake();
    put(&fake, "f", "old");
    let a = mount(fake.clone());
    let rev = fake.revision();
    let (ino, fh) = a.open("f", libc::O_WRONLY | libc::O_TRUNC);
    a.core.write(fh, 0, b"too large", Some(SHELL)).expect("write");
    fake.set_max_value(4);
    assert_eq!(a.core.flush(fh, SHELL), Err(Errno::EFBIG));
    fake.set_max_value(1 << 20);
    assert_eq!(a.core.flush(fh, SHELL), Err(Errno::EFBIG), "every later close reports it");
    assert_eq!(a.core.write(fh, 0, b"x", Some(SHELL)), Err(Errno::EFBIG));
    a.core.release(fh);
    assert_eq!((fake.revision(), stored(&fake, "f")), (rev, Some(b"old".to_vec())), "release retried it");
    assert_eq!(a.pages(ino), Ok(b"old".to_vec()), "no unstored bytes in the page cache");
    assert_eq!(a.cat("f"), Ok(b"old".to_vec()));
}

#[test]
fn a_lost_answer_at_close_is_not_retried_at_release() {
    let fake = fake();
    put(&fake, "f", "old");
    let a = mount(fake.clone());
    let rev = fake.revision();
    let (_, fh) = a.open("f", libc::O_WRONLY | libc::O_TRUNC);
    a.core.write(fh, 0, b"new", Some(SHELL)).expect("write");
    fake.fail_after_apply(1);
    assert_eq!(a.core.flush(fh, SHELL), Err(Errno::EIO), "the outcome is unknown");
    a.core.release(fh);
    assert_eq!(fake.revision(), rev + 1, "written once, by the put whose answer was lost");
    catch_up(&a.core, &fake);
    assert_eq!(a.cat("f"), Ok(b"new".to_vec()), "the mount converges to what the cluster holds");
}

#[test]
fn an_in_place_edit_whose_base_changed_elsewhere_fails_with_eio() {
    let fake = fake();
    put(&fake, "f", "base");
    let a = mount(fake.clone());
    let (_, fh) = a.open("f", libc::O_WRONLY);
    a.core.write(fh, 0, b"B", Some(SHELL)).expect("write");
    put(&fake, "f", "remote");
    catch_up(&a.core, &fake);
    let rev = fake.revision();
    assert_eq!(a.core.flush(fh, SHELL), Err(Errno::EIO));
    a.core.release(fh);
    assert_eq!((fake.revision(), stored(&fake, "f")), (rev, Some(b"remote".to_vec())));
    assert_eq!(a.cat("f"), Ok(b"remote".to_vec()));
}

// ---- Exclusive creates, O_TRUNC, rename and chmod of open files ----

#[test]
fn o_excl_creates_of_one_name_on_two_mounts_let_exactly_one_open_succeed() {
    // Neither mount knows of the other's file: the cluster decides, at open.
    let fake = fake();
    let (a, b) = (mount(fake.clone()), mount(fake.clone()));
    let (_, fa) = a.create("lock", libc::O_EXCL).expect("create on a");
    assert_eq!(b.core.create(ROOT, OsStr::new("lock"), 0o644, libc::O_EXCL, 0, 0).map(|_| ()), Err(Errno::EEXIST));
    a.core.write(fa, 0, b"a", Some(SHELL)).expect("write");
    assert_eq!(a.core.flush(fa, SHELL), Ok(()));
    a.core.release(fa);
    assert_eq!((fake.revision(), stored(&fake, "lock")), (2, Some(b"a".to_vec())));
    catch_up(&b.core, &fake);
    assert_eq!(b.cat("lock"), Ok(b"a".to_vec()));
}

#[test]
fn o_excl_creates_without_a_write_on_two_mounts_let_exactly_one_open_succeed() {
    // A lock file: open(O_CREAT|O_EXCL) then close(); the loser's open fails.
    let fake = fake();
    let (a, b) = (mount(fake.clone()), mount(fake.clone()));
    let (_, fa) = a.create("lock", libc::O_EXCL).expect("create on a");
    assert_eq!(b.core.create(ROOT, OsStr::new("lock"), 0o644, libc::O_EXCL, 0, 0).map(|_| ()), Err(Errno::EEXIST));
    assert_eq!(a.core.flush(fa, SHELL), Ok(()));
    a.core.release(fa);
    assert_eq!((fake.revision(), stored(&fake, "lock")), (1, Some(Vec::new())), "created once, empty");
}

#[test]
fn an_o_trunc_handle_stays_last_writer_wins_after_its_first_commit() {
    let fake = fake();
    put(&fake, "f", "old");
    let a = mount(fake.clone());
    let (_, fh) = a.open("f", libc::O_WRONLY | libc::O_TRUNC);
    a.core.write(fh, 0, b"1", Some(SHELL)).expect("write");
    assert_eq!(a.core.fsync(fh), Ok(()));
    assert_eq!(stored(&fake, "f"), Some(b"1".to_vec()));
    put(&fake, "f", "elsewhere");
    catch_up(&a.core, &fake);
    a.core.write(fh, 0, b"mine", Some(SHELL)).expect("write");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()), "turned into compare-and-set after the fsync");
    a.core.release(fh);
    assert_eq!(stored(&fake, "f"), Some(b"mine".to_vec()));
    assert_eq!(a.cat("f"), Ok(b"mine".to_vec()));
}

#[test]
fn a_file_renamed_with_pending_writes_keeps_them_at_its_new_name() {
    // Log rotation: the writer goes on writing, then closes.
    let fake = fake();
    put(&fake, "log", "a");
    let a = mount(fake.clone());
    let (_, fh) = a.open("log", libc::O_WRONLY | libc::O_APPEND);
    a.core.write(fh, 0, b"b", Some(SHELL)).expect("write");
    a.core.rename(ROOT, OsStr::new("log"), ROOT, OsStr::new("log.1"), RenameMode::default()).expect("rename");
    catch_up(&a.core, &fake);
    a.core.write(fh, 0, b"c", Some(SHELL)).expect("write");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()), "close() failed with EIO after the rename");
    a.core.release(fh);
    assert_eq!((stored(&fake, "log"), stored(&fake, "log.1")), (None, Some(b"abc".to_vec())));
    assert_eq!(a.cat("log.1"), Ok(b"abc".to_vec()));
}

#[test]
fn a_file_renamed_with_pending_writes_keeps_them_when_the_watch_brings_the_rename_first() {
    let fake = fake();
    put(&fake, "log", "a");
    let hooked = Hooked::new(fake.clone());
    let a = mount(hooked.clone());
    let (_, fh) = a.open("log", libc::O_WRONLY | libc::O_APPEND);
    a.core.write(fh, 0, b"b", Some(SHELL)).expect("write");
    let (core, f2) = (a.core.clone(), fake.clone());
    *hooked.after_txn.lock().expect("hook") = Some(Box::new(move || catch_up(&core, &f2)));
    a.core.rename(ROOT, OsStr::new("log"), ROOT, OsStr::new("log.1"), RenameMode::default()).expect("rename");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    assert_eq!((stored(&fake, "log"), stored(&fake, "log.1")), (None, Some(b"ab".to_vec())));
    assert_eq!((a.ino("log"), a.cat("log.1")), (Err(Errno::ENOENT), Ok(b"ab".to_vec())));
}

#[test]
fn a_chmod_of_a_file_with_pending_writes_keeps_them() {
    let fake = fake();
    put(&fake, "f", "conf");
    let a = mount(fake.clone());
    let (ino, fh) = a.open("f", libc::O_WRONLY);
    a.core.write(fh, 0, b"CONF", Some(SHELL)).expect("write");
    a.core.setattr(ino, Some(fh), SetAttr { mode: Some(0o600), ..SetAttr::default() }).expect("fchmod");
    catch_up(&a.core, &fake);
    assert_eq!(a.core.flush(fh, SHELL), Ok(()), "close() failed over the mount's own chmod");
    a.core.release(fh);
    let e = fake.get(&key("f")).expect("entry");
    assert_eq!((e.value_bytes(), e.meta.mode & 0o7777), (Some(b"CONF".to_vec()), 0o600));
}

// ---- A commit racing the watch ----

#[test]
fn a_commit_never_overwrites_a_newer_value_the_watch_brought_meanwhile() {
    let fake = fake();
    put(&fake, "f", "old");
    let hooked = Hooked::new(fake.clone());
    let a = mount(hooked.clone());
    let (_, fh) = a.open("f", libc::O_WRONLY | libc::O_TRUNC);
    a.core.write(fh, 0, b"mine", Some(SHELL)).expect("write");
    // Right after this mount's put: another writer, and the watch brings both.
    let (core, f2) = (a.core.clone(), fake.clone());
    *hooked.after_put.lock().expect("hook") = Some(Box::new(move || {
        put(&f2, "f", "newer");
        catch_up(&core, &f2);
    }));
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    assert_eq!(stored(&fake, "f"), Some(b"newer".to_vec()));
    assert_eq!(a.cat("f"), Ok(b"newer".to_vec()), "the writer's mount serves the older value");
    catch_up(&a.core, &fake);
    assert_eq!(a.cat("f"), Ok(b"newer".to_vec()));
}

#[test]
fn the_watch_bringing_this_mount_s_own_write_first_does_not_lose_it() {
    let fake = fake();
    put(&fake, "f", "old");
    let hooked = Hooked::new(fake.clone());
    let a = mount(hooked.clone());
    let (_, fh) = a.open("f", libc::O_WRONLY | libc::O_TRUNC);
    a.core.write(fh, 0, b"mine", Some(SHELL)).expect("write");
    let (core, f2) = (a.core.clone(), fake.clone());
    *hooked.after_put.lock().expect("hook") = Some(Box::new(move || catch_up(&core, &f2)));
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    assert_eq!(a.cat("f"), Ok(b"mine".to_vec()));
    // The same handle writes on, and closes again.
    a.core.write(fh, 4, b"+", Some(SHELL)).expect("write");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    catch_up(&a.core, &fake);
    assert_eq!((stored(&fake, "f"), a.cat("f")), (Some(b"mine+".to_vec()), Ok(b"mine+".to_vec())));
}

#[test]
fn the_attrs_a_put_leaves_out_stay_as_they_were() {
    // A guard for the tests above: an in-place commit does not reset a mode.
    let fake = fake();
    let opts = PutOptions { attrs: Attrs { mode: Some(0o640), ..Attrs::default() }, ..PutOptions::default() };
    fake.put(&key("f"), b"1".to_vec(), &opts).expect("put");
    let a = mount(fake.clone());
    a.echo("f", "2").expect("echo");
    assert_eq!(fake.get(&key("f")).map(|e| e.meta.mode & 0o7777), Some(0o640));
}

#[test]
fn a_setgid_directory_hands_its_group_down() {
    let fake = fake();
    let dir = Attrs {
        kind: Some(kv_client::Kind::Dir),
        mode: Some(0o2775),
        uid: Some(0),
        gid: Some(4711),
        ..Attrs::default()
    };
    fake.put(&key("shared"), Vec::new(), &PutOptions { attrs: dir, ..PutOptions::default() }).expect("put");
    let plain =
        Attrs { kind: Some(kv_client::Kind::Dir), mode: Some(0o777), uid: Some(0), gid: Some(0), ..Attrs::default() };
    fake.put(&key("plain"), Vec::new(), &PutOptions { attrs: plain, ..PutOptions::default() }).expect("put");
    let m = mount(fake.clone());
    let shared = m.ino("shared").expect("shared");
    let plain = m.ino("plain").expect("plain");
    let meta = |name: &str| fake.get(&key(name)).expect(name).meta;

    // A file made by uid 1000, gid 1000.
    let (_, fh) = m.core.create(shared, OsStr::new("f"), 0o640, libc::O_CREAT | libc::O_WRONLY, 1000, 1000).expect("f");
    m.core.write(fh, 0, b"x", Some(SHELL)).expect("write");
    m.core.flush(fh, SHELL).expect("flush");
    m.core.release(fh);
    let f = meta("shared/f");
    assert_eq!((f.uid, f.gid, f.mode & 0o7777), (1000, 4711, 0o640));
    // A directory takes the group and the setgid bit.
    m.core.new_child(shared, OsStr::new("d"), kv_client::Kind::Dir, 0o755, Vec::new(), (1000, 1000)).expect("mkdir");
    let d = meta("shared/d");
    assert_eq!((d.uid, d.gid, d.mode & 0o7777), (1000, 4711, 0o2755));
    // Without setgid, the creator's group.
    m.core.new_child(plain, OsStr::new("d"), kv_client::Kind::Dir, 0o755, Vec::new(), (1000, 1000)).expect("mkdir");
    let d = meta("plain/d");
    assert_eq!((d.uid, d.gid, d.mode & 0o7777), (1000, 1000, 0o755));
}

#[test]
fn the_attribute_map_changes_what_is_shown_and_not_what_is_stored() {
    use super::AttrMap;
    let fake = fake();
    put_owned(&fake, "f", "x", (0o664, 0, 0));
    fake.put(&key("d/g"), b"y".to_vec(), &PutOptions::default()).expect("put");
    fake.put(
        &key("l"),
        b"f".to_vec(),
        &PutOptions {
            attrs: Attrs { kind: Some(kv_client::Kind::Symlink), ..Attrs::default() },
            ..PutOptions::default()
        },
    )
    .expect("put");
    let shown = |map: AttrMap| {
        let core = mount_mapped(fake.clone(), map).core;
        ["f", "d", "l"].map(|n| {
            let a = core.lookup(ROOT, OsStr::new(n)).expect(n);
            (a.attr.uid, a.attr.gid, a.attr.perm)
        })
    };
    assert_eq!(shown(AttrMap::default()), [(0, 0, 0o664), (0, 0, 0o755), (0, 0, 0o777)]);
    let ids = AttrMap { uid: Some(998), gid: Some(997), umask: 0o027, ..AttrMap::default() };
    assert_eq!(shown(ids), [(998, 997, 0o640), (998, 997, 0o750), (998, 997, 0o777)]);
    let fixed = AttrMap { fmode: Some(0o600), dmode: Some(0o700), umask: 0o077, ..AttrMap::default() };
    assert_eq!(shown(fixed), [(0, 0, 0o600), (0, 0, 0o700), (0, 0, 0o777)]);
    let f = fake.get(&key("f")).expect("f").meta;
    assert_eq!((f.uid, f.gid, f.mode & 0o7777), (0, 0, 0o664));
}

#[test]
fn an_old_version_whose_mode_or_owner_changed_opens_no_writer_and_takes_no_chmod() {
    let fake = fake();
    put_owned(&fake, "f", "mine", (0o666, 1000, 1000));
    let a = mount(fake.clone());
    // A user holds the file (the kernel let them in by this version's
    // mode), one handle writing.
    let old = a.ino("f").expect("lookup");
    let user = Caller::held(1000, vec![1000]);
    let wfh = a.core.open_as(old, libc::O_WRONLY | libc::O_TRUNC, user).expect("open");
    a.core.write(wfh, 0, b"overwritten", Some(SHELL)).expect("write");
    // Root replaces it elsewhere with a secret of its own.
    put_owned(&fake, "f", "secret", (0o600, 0, 0));
    catch_up(&a.core, &fake);
    // Through the old inode (fchmod on a held fd, /proc/self/fd/N opened
    // again for writing, the writer's close): nothing reaches root's file.
    // (No lookup of the name meanwhile: the old inode is the only one.)
    let chmod = SetAttr { mode: Some(0o666), ..SetAttr::default() };
    assert_eq!(a.core.setattr(old, None, chmod).map(|_| ()), Err(Errno::ESTALE));
    let truncate = SetAttr { size: Some(0), ..SetAttr::default() };
    assert_eq!(a.core.setattr(old, None, truncate).map(|_| ()), Err(Errno::ESTALE));
    assert_eq!(a.core.open(old, libc::O_RDWR), Err(Errno::ESTALE));
    assert_eq!(a.core.flush(wfh, SHELL), Err(Errno::EACCES));
    a.core.release(wfh);
    let e = fake.get(&key("f")).expect("f");
    assert_eq!((e.value_bytes(), e.meta.mode & 0o7777, e.meta.uid), (Some(b"secret".to_vec()), 0o600, 0));

    // A content change that keeps mode and owner lets them on as before.
    let newer = a.ino("f").expect("lookup");
    put(&fake, "f", "secret 2");
    catch_up(&a.core, &fake);
    let fh = a.core.open(newer, libc::O_RDWR).expect("same mode and owner: opened");
    assert_eq!(a.read(newer, fh), b"secret 2".to_vec());
    a.core.release(fh);
    a.core.setattr(newer, None, SetAttr { mode: Some(0o640), ..SetAttr::default() }).expect("chmod");
    assert_eq!(fake.get(&key("f")).map(|e| e.meta.mode & 0o7777), Some(0o640));
}

#[test]
fn the_root_takes_no_chmod_and_a_mapped_owner_or_mode_is_not_stored() {
    use super::AttrMap;
    let fake = fake();
    fake.put(&key("f"), b"x".to_vec(), &PutOptions::default()).expect("put");
    let dir = Attrs { kind: Some(kv_client::Kind::Dir), uid: Some(7), gid: Some(8), ..Attrs::default() };
    fake.put(&key("d"), Vec::new(), &PutOptions { attrs: dir, ..PutOptions::default() }).expect("put");
    fake.put(&key("d/g"), b"y".to_vec(), &PutOptions::default()).expect("put");
    let a = mount(fake.clone());
    let chmod = |mode| SetAttr { mode: Some(mode), ..SetAttr::default() };
    assert_eq!(a.core.setattr(ROOT, None, chmod(0o700)).map(|_| ()), Err(Errno::EPERM));
    // What it shows already (`cp -a src/. mnt/`): accepted.
    let same = SetAttr { mode: Some(0o755), uid: Some(0), gid: Some(0), ..SetAttr::default() };
    assert_eq!(a.core.setattr(ROOT, None, same).map(|a| a.perm), Ok(0o755));

    let with = |map: AttrMap| mount_mapped(fake.clone(), map).core;
    let meta = |k: &str| {
        let m = fake.get(&key(k)).expect(k).meta;
        (m.mode & 0o7777, m.uid, m.gid)
    };
    let core = with(AttrMap { uid: Some(998), gid: Some(997), fmode: Some(0o640), ..AttrMap::default() });
    let f = core.lookup(ROOT, OsStr::new("f")).expect("f").attr.ino.0;
    let d = core.lookup(ROOT, OsStr::new("d")).expect("d").attr.ino.0;
    // `cp -p` by the shown owner: chown to what is shown, chmod of a file
    // whose mode is fixed: accepted, nothing stored.
    let cp = SetAttr {
        who: Caller { uid: 998, ..Caller::default() },
        mode: Some(0o600),
        uid: Some(998),
        gid: Some(997),
        ..SetAttr::default()
    };
    let shown = core.setattr(f, None, cp).expect("setattr");
    assert_eq!((shown.uid, shown.gid, shown.perm), (998, 997, 0o640));
    assert_eq!(meta("f"), (0o644, 0, 0));
    // A directory's mode is not fixed here, but only root changes it for
    // every host.
    let chmod_by = |caller, mode| SetAttr {
        who: Caller { uid: caller, ..Caller::default() },
        mode: Some(mode),
        ..SetAttr::default()
    };
    assert_eq!(core.setattr(d, None, chmod_by(998, 0o777)).map(|_| ()), Err(Errno::EPERM));
    // Taking bits away is the shown owner's; adding them, root's.
    core.setattr(d, None, chmod_by(998, 0o700)).expect("chmod go-rx");
    assert_eq!(meta("d"), (0o700, 7, 8));
    core.setattr(d, None, chmod_by(0, 0o750)).expect("chmod by root");
    assert_eq!(meta("d"), (0o750, 7, 8));
    // The root: a chown is what the mapping shows, so nothing to refuse.
    let chown = SetAttr { uid: Some(5), gid: Some(5), ..SetAttr::default() };
    assert_eq!(core.setattr(ROOT, None, chown).map(|a| a.uid), Ok(998));
    // A new entry takes its directory's stored owner, not the caller's
    // number on this host.
    core.new_child(d, OsStr::new("sub"), kv_client::Kind::Dir, 0o755, Vec::new(), (998, 997)).expect("mkdir");
    assert_eq!(meta("d/sub"), (0o755, 7, 8));

    // umask= hides bits this host may not clear: `chmod u+x` keeps g+r.
    let core = with(AttrMap { umask: 0o077, ..AttrMap::default() });
    let d = core.lookup(ROOT, OsStr::new("d")).expect("d").attr.ino.0;
    let g = core.lookup(d, OsStr::new("g")).expect("g").attr.ino.0;
    assert_eq!(core.getattr(g).map(|a| a.perm), Ok(0o600));
    assert_eq!(core.setattr(g, None, chmod(0o700)).map(|a| a.perm), Ok(0o700));
    assert_eq!(meta("d/g"), (0o744, 0, 0));
}

#[test]
fn a_device_number_goes_to_the_kernel_and_back_unchanged() {
    use super::{device_value_of, kind_of_mode, rdev_of};
    use kv_client::Kind;
    // The kernel's new_encode_dev of 1:3 and of 259:70000.
    assert_eq!(rdev_of(Kind::Char, b"1:3"), 0x103);
    assert_eq!(rdev_of(Kind::Block, b"259:70000"), (70000 & 0xff) | (259 << 8) | ((70000 & !0xff) << 12));
    assert_eq!(rdev_of(Kind::File, b"1:3"), 0, "only devices have numbers");
    for (major, minor) in [(0, 0), (1, 3), (8, 255), (8, 256), (4095, 1_048_575), (259, 70000), (4095, 0)] {
        let value = kv_client::device_value(major, minor);
        assert_eq!(device_value_of(rdev_of(Kind::Char, &value)), value, "{major}:{minor}");
    }
    for mode in [libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR, libc::S_IFBLK, libc::S_IFREG] {
        assert!(kind_of_mode(mode | 0o644).is_some(), "{mode:o}");
    }
    assert_eq!(kind_of_mode(libc::S_IFDIR | 0o755), None);
}

/// Creates `f` on a mount of `fake` and releases it (the kernel's RELEASE
/// after close(2) has returned, which publishes its first version); `op`
/// runs in another thread right after the put of that version, before the
/// mount took it in, and is given up to a second to finish first. Returns
/// the mount and what `op` answered.
fn during_first_publication(
    fake: &Arc<FakeCluster>,
    op: impl FnOnce(&Core) -> Result<(), Errno> + Send + 'static,
) -> (Mount, Result<(), Errno>) {
    let hooked = Hooked::new(fake.clone());
    let a = mount(hooked.clone());
    let (_, fh) = a.create("f", 0).expect("create");
    let core = a.core.clone();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let running = Arc::new(Mutex::new(None));
    let slot = running.clone();
    *hooked.after_put.lock().expect("hook") = Some(Box::new(move || {
        let t = std::thread::spawn(move || {
            let r = op(&core);
            let _ = done_tx.send(());
            r
        });
        let _ = done_rx.recv_timeout(Duration::from_secs(1));
        *slot.lock().expect("slot") = Some(t);
    }));
    a.core.release(fh);
    let t = running.lock().expect("slot").take().expect("the hook ran");
    let r = t.join().expect("op");
    (a, r)
}

#[test]
fn an_unlink_while_a_created_file_s_first_version_is_published_removes_it_in_the_cluster() {
    // `touch f; rm f`, rm while the RELEASE of the touch publishes.
    let fake = fake();
    let (a, r) = during_first_publication(&fake, |core| core.unlink(ROOT, OsStr::new("f"), false));
    assert_eq!(r, Ok(()));
    assert_eq!(stored(&fake, "f"), None, "the name came back in the cluster");
    catch_up(&a.core, &fake);
    assert_eq!(a.ino("f"), Err(Errno::ENOENT));
}

#[test]
fn a_directory_takes_the_revision_of_this_mount_s_write_only_from_the_version_it_holds() {
    let fake = fake();
    let a = mount(fake.clone());
    let d = a.core.new_child(ROOT, OsStr::new("d"), kv_client::Kind::Dir, 0o755, Vec::new(), (0, 0)).expect("mkdir");
    let d = d.ino.0;
    // A name made in d here: d takes this write's time and revision at once.
    let f = a.core.new_child(d, OsStr::new("f"), kv_client::Kind::Dir, 0o755, Vec::new(), (0, 0)).expect("mkdir f");
    let stored = |k: &str| fake.get(&key(k)).expect("stored").meta;
    let shown = a.core.getattr(d).expect("getattr");
    assert_eq!(shown.mtime, kv_client::clock::system_time(stored("d").mtime_ns), "the cluster's time, at once");
    assert_eq!(stored("d").mod_revision, stored("d/f").mod_revision);
    assert!(f.ino.0 != d);
    // A name made in d elsewhere, which this mount has not seen yet: the
    // next write here must not take d past it, or a rename of d, compared
    // on d's revision, would delete d/g unseen.
    put(&fake, "d/g", "theirs");
    a.core.new_child(d, OsStr::new("h"), kv_client::Kind::Dir, 0o755, Vec::new(), (0, 0)).expect("mkdir h");
    let moved = a.core.rename(ROOT, OsStr::new("d"), ROOT, OsStr::new("e"), RenameMode::default());
    assert_eq!(moved, Err(Errno::EIO), "a rename over an unseen version of d");
    assert!(fake.get(&key("d/g")).is_some(), "d/g was deleted unseen");
    catch_up(&a.core, &fake);
    a.core.rename(ROOT, OsStr::new("d"), ROOT, OsStr::new("e"), RenameMode::default()).expect("rename once seen");
    assert_eq!(stored("e/g").size, 6, "moved with the rest");
}

#[test]
fn a_rename_while_a_created_file_s_first_version_is_published_moves_it() {
    // `touch f; mv f g`, mv while the RELEASE of the touch publishes.
    let fake = fake();
    let (_a, r) = during_first_publication(&fake, |core| {
        core.rename(ROOT, OsStr::new("f"), ROOT, OsStr::new("g"), RenameMode::default())
    });
    assert_eq!(r, Ok(()));
    assert_eq!((stored(&fake, "f"), stored(&fake, "g")), (None, Some(Vec::new())));
}

#[test]
fn a_mount_takes_the_cluster_s_own_attributes_of_a_write_it_made_once_the_watch_brings_it() {
    // A cluster whose answers say no time (an older kvd: `Hooked` answers
    // puts by revision alone): the mount shows its own clock's time until
    // the watch brings the cluster's record of the same revision.
    let fake = fake();
    let a = mount(Hooked::new(fake.clone()));
    let f = a.core.new_child(ROOT, OsStr::new("p"), kv_client::Kind::Fifo, 0o644, Vec::new(), (0, 0)).expect("mkfifo");
    catch_up(&a.core, &fake);
    let stored = fake.get(&key("p")).expect("stored").meta;
    let shown = a.core.getattr(f.ino.0).expect("getattr");
    let t = |ns: Option<i64>| kv_client::clock::system_time(ns.expect("a time"));
    assert_eq!(
        (shown.mtime, shown.ctime, shown.atime),
        (t(Some(stored.mtime_ns)), t(stored.ctime_ns), t(stored.atime_ns)),
        "the cluster's times"
    );
}

#[test]
fn a_truncation_made_at_an_open_gives_way_only_to_content_written_after_the_open() {
    let fake = fake();
    let (a, b) = (mount(fake.clone()), mount(fake.clone()));
    a.echo("f", "old").expect("echo on a");
    catch_up(&b.core, &fake);
    // Written on a while b's descriptor that truncated f is open: kept.
    let (_, fh) = b.open("f", libc::O_WRONLY | libc::O_TRUNC);
    a.echo("f", "after").expect("echo on a");
    catch_up(&b.core, &fake);
    assert_eq!(b.core.flush(fh, SHELL), Ok(()));
    b.core.release(fh);
    assert_eq!(stored(&fake, "f").as_deref(), Some(b"after".as_slice()), "a write after the truncating open");
    // Written on a well before b's open, which b's watch brings late (a
    // reconnect): the truncation came after it.
    a.echo("f", "before").expect("echo on a");
    std::thread::sleep(Duration::from_nanos(super::SUPERSEDE_SKEW_NS as u64) + Duration::from_millis(100));
    let (_, fh) = b.open("f", libc::O_WRONLY | libc::O_TRUNC);
    catch_up(&b.core, &fake);
    assert_eq!(b.core.flush(fh, SHELL), Ok(()));
    b.core.release(fh);
    assert_eq!(stored(&fake, "f"), Some(Vec::new()), "a truncation after a write its mount saw late");
}
