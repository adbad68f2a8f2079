//! What a reader sees while others change files, and how changes from
//! elsewhere reach a mount: whole revisions, invalidations, and a watch
//! that never skips (resume, re-list, paged load).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;

use super::*;
use kv_client::TxnOp;

use crate::cluster::Batch;
use crate::sync::MountWatch as Watch;

/// `MountWatch::run` of a mount on a thread of its own.
struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

fn start(m: &Mount) -> Running {
    start_watch(watch(m, None))
}

/// The watch side of mount `m`, writing `status_file` if given.
fn watch(m: &Mount, status_file: Option<std::path::PathBuf>) -> Watch {
    Watch {
        core: m.core.clone(),
        prefix: PREFIX.into(),
        status: Mutex::default(),
        status_file,
        lkg_file: None,
        liveness: Mutex::default(),
        revision_due: Default::default(),
    }
}

fn start_watch(w: Watch) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || w.run(&|| s.load(Ordering::SeqCst)));
    Running { stop, thread }
}

impl Running {
    /// Stops the watch: it returns at the end of its stream.
    fn stop(self, fake: &FakeCluster) {
        self.stop.store(true, Ordering::SeqCst);
        // NOTE: again until it returns: a stream opened after one
        // end_streams does not see it.
        until("the watch stops", || {
            fake.end_streams();
            self.thread.is_finished()
        });
        self.thread.join().expect("the watch thread panicked");
    }
}

/// Every batch after `after` up to the fake's revision.
fn batches(fake: &FakeCluster, after: u64) -> Vec<Batch> {
    let mut w = fake.watch(PREFIX, after).expect("watch");
    let mut out: Vec<Batch> = Vec::new();
    while out.last().map_or(after, |b| b.revision) < fake.revision() {
        out.push(w.next().expect("next").expect("a batch"));
    }
    out
}

fn rename(m: &Mount, from: &str, to: &str) -> Result<(), Errno> {
    m.core.rename(ROOT, OsStr::new(from), ROOT, OsStr::new(to), RenameMode::default())
}

// ---- The status file ----

#[test]
fn the_status_file_shows_the_last_revision_of_a_burst_of_writes() {
    // (it is rewritten at most once per gap: the burst's last revision is
    // written at the end of the gap, not dropped)
    let fake = fake();
    let m = mount(fake.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("m.status");
    let w = Arc::new(watch(&m, Some(file.clone())));
    let shower = w.clone();
    std::thread::spawn(move || shower.show_revisions());
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let runner = w.clone();
    let thread = std::thread::spawn(move || runner.run(&|| s.load(Ordering::SeqCst)));
    let shown = || -> u64 {
        let json: serde_json::Value =
            std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        json["revision"].as_u64().unwrap_or(0)
    };
    for round in 0..3 {
        for i in 0..40 {
            put(&fake, &format!("f{i}"), &format!("{round}"));
        }
        let last = fake.revision();
        until("the status file shows the burst's last revision", || shown() == last);
        assert_eq!(m.cat("f39"), Ok(format!("{round}").into_bytes()), "shown before it was applied");
    }
    Running { stop, thread }.stop(&fake);
}

#[test]
fn a_last_known_good_copy_that_could_not_be_saved_is_saved_later() {
    let fake = fake();
    put(&fake, "f", "1");
    let m = mount(fake.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    // (a directory where a file is: the save fails)
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").expect("write");
    let mut w = watch(&m, None);
    w.lkg_file = Some(blocker.join("m.json"));
    m.core.dirty.store(true, Ordering::SeqCst);
    assert!(w.save_lkg().is_some(), "a save was tried");
    assert!(m.core.dirty.load(Ordering::SeqCst), "the change is still to be saved");
    std::fs::remove_file(&blocker).expect("remove");
    assert!(w.save_lkg().is_some());
    assert!(!m.core.dirty.load(Ordering::SeqCst));
    let (_, saved) = crate::sync::load_lkg(&blocker.join("m.json"), path_of).expect("the copy");
    assert_eq!(saved.get("f").map(|n| n.value.as_slice()), Some(b"1".as_slice()));
    assert!(w.save_lkg().is_none(), "nothing changed since");
}

#[test]
fn the_last_known_good_copy_waits_a_hundred_times_its_save_between_a_second_and_a_minute() {
    use crate::sync::lkg_gap;
    assert_eq!(lkg_gap(Duration::from_millis(2)), Duration::from_secs(1));
    assert_eq!(lkg_gap(Duration::from_millis(25)), Duration::from_millis(2500));
    assert_eq!(lkg_gap(Duration::from_secs(30)), Duration::from_secs(60));
}

// ---- Readers keep one version ----

#[test]
fn a_reader_opened_before_a_change_elsewhere_reads_the_old_version_whole() {
    let fake = fake();
    put(&fake, "f", "1234567");
    let (a, b) = (mount(fake.clone()), mount(fake.clone()));
    let (old, fh) = a.open("f", libc::O_RDONLY);
    assert_eq!(a.core.read(old, fh, 0, 2, true), Ok(b"12".to_vec()));
    b.echo("f", "99").expect("echo on b");
    catch_up(&a.core, &fake);
    assert_eq!(a.core.read(old, fh, 2, 100, true), Ok(b"34567".to_vec()), "a mix of two versions");
    let new = a.ino("f").expect("lookup");
    assert_ne!(new, old, "a new lookup gets the new version's inode");
    assert_eq!(a.cat("f"), Ok(b"99".to_vec()));
    // The detached inode shows its version, to getattr and the page cache.
    assert_eq!(a.core.getattr(old).map(|a| a.size), Ok(7));
    assert_eq!(a.pages(old), Ok(b"1234567".to_vec()));
    assert_eq!(a.core.getattr(new).map(|a| a.size), Ok(2));
    a.core.release(fh);
    a.core.forget(old, 1);
    assert_eq!(a.core.getattr(old).map(|a| a.size), Err(Errno::ENOENT), "kept after the kernel forgot it");
}

#[test]
fn a_reader_on_the_writer_s_mount_keeps_its_version_and_the_next_open_reads_the_new_one() {
    let fake = fake();
    put(&fake, "f", "1234567");
    let a = mount(fake.clone());
    let (old, rfh) = a.open("f", libc::O_RDONLY);
    let (_, wfh) = a.open("f", libc::O_WRONLY | libc::O_TRUNC);
    a.core.write(wfh, 0, b"99", Some(SHELL)).expect("write");
    assert_eq!(a.read(old, rfh), b"1234567".to_vec(), "a reader sees a writer's buffer");
    assert_eq!(a.core.flush(wfh, SHELL), Ok(()));
    a.core.release(wfh);
    assert_eq!(a.read(old, rfh), b"1234567".to_vec());
    assert_eq!(a.pages(old), Ok(b"1234567".to_vec()));
    catch_up(&a.core, &fake);
    assert_eq!(a.cat("f"), Ok(b"99".to_vec()), "the writer's mount still reads the old value");
    a.core.release(rfh);
}

#[test]
fn a_reader_of_a_file_deleted_elsewhere_reads_it_to_its_end() {
    let fake = fake();
    put(&fake, "f", "1234567");
    let a = mount(fake.clone());
    let (old, fh) = a.open("f", libc::O_RDONLY);
    assert_eq!(a.core.read(old, fh, 0, 3, true), Ok(b"123".to_vec()));
    fake.delete(&key("f")).expect("delete");
    catch_up(&a.core, &fake);
    assert_eq!(a.ino("f"), Err(Errno::ENOENT));
    assert_eq!(a.core.read(old, fh, 3, 100, true), Ok(b"4567".to_vec()));
    assert_eq!(a.pages(old), Ok(b"1234567".to_vec()));
    a.core.release(fh);
}

// ---- Rename elsewhere: one revision, one step ----

#[test]
fn a_rename_elsewhere_applied_as_one_batch_never_hides_the_target() {
    let fake = fake();
    put(&fake, "f", "old");
    put(&fake, "tmp", "new");
    let (a, b) = (mount(fake.clone()), mount(fake.clone()));
    let (old, fh) = a.open("f", libc::O_RDONLY);
    rename(&b, "tmp", "f").expect("mv -f tmp f on b");
    let list = batches(&fake, a.core.cursor());
    assert_eq!(list.len(), 1, "a rename is one revision: {list:?}");
    assert_eq!(a.cat("f"), Ok(b"old".to_vec()), "before");
    a.core.apply(&list[0]);
    assert_eq!(a.cat("f"), Ok(b"new".to_vec()), "after");
    assert_eq!(a.ino("tmp"), Err(Errno::ENOENT));
    assert_eq!(a.read(old, fh), b"old".to_vec(), "the replaced file's reader goes on reading it");
    assert_eq!(a.pages(old), Ok(b"old".to_vec()));
    a.core.release(fh);
}

#[test]
fn a_revision_that_writes_a_key_twice_leaves_what_its_last_write_left() {
    let fake = fake();
    put(&fake, "f", "1");
    let a = mount(fake.clone());
    let put_then_delete = TxnRequest {
        success: vec![TxnOp::put(key("f"), "2"), TxnOp::Delete { key: key("f"), recursive: false }],
        ..TxnRequest::default()
    };
    assert!(fake.txn(&put_then_delete).expect("txn").succeeded);
    assert_eq!(stored(&fake, "f"), None);
    catch_up(&a.core, &fake);
    assert_eq!(a.ino("f"), Err(Errno::ENOENT), "the mount shows what the cluster holds");
    let delete_then_put = TxnRequest {
        success: vec![TxnOp::Delete { key: key("g"), recursive: false }, TxnOp::put(key("g"), "3")],
        ..TxnRequest::default()
    };
    assert!(fake.txn(&delete_then_put).expect("txn").succeeded);
    catch_up(&a.core, &fake);
    assert_eq!(a.cat("g"), Ok(b"3".to_vec()));
}

#[test]
fn readers_of_a_name_never_miss_it_while_renames_elsewhere_replace_it() {
    const N: usize = 40;
    let fake = fake();
    put(&fake, "f", "v-start");
    let (a, b) = (mount(fake.clone()), mount(fake.clone()));
    for i in 0..N {
        b.echo("tmp", &format!("v{i}")).expect("echo on b");
        rename(&b, "tmp", "f").expect("rename on b");
    }
    let list = batches(&fake, a.core.cursor());
    let done = Arc::new(AtomicBool::new(false));
    let (core, d) = (a.core.clone(), done.clone());
    let reader = std::thread::spawn(move || {
        let m = Mount { core, sent: Sent::default() };
        let mut reads = 0;
        while !d.load(Ordering::SeqCst) || reads == 0 {
            match m.cat("f") {
                Ok(v) if v.starts_with(b"v") => reads += 1,
                other => return Err(format!("read {reads}: {other:?}")),
            }
        }
        Ok(reads)
    });
    for batch in &list {
        a.core.apply(batch);
        std::thread::yield_now();
    }
    done.store(true, Ordering::SeqCst);
    let reads = reader.join().expect("reader");
    assert!(reads.is_ok(), "a reader missed the name: {reads:?}");
    assert_eq!(a.cat("f"), Ok(format!("v{}", N - 1).into_bytes()));
}

#[test]
fn a_rename_over_a_file_on_this_mount_keeps_the_target_s_reader_on_its_version() {
    let fake = fake();
    put(&fake, "f", "old");
    let a = mount(fake.clone());
    a.echo("tmp", "new").expect("echo");
    let (old, fh) = a.open("f", libc::O_RDONLY);
    rename(&a, "tmp", "f").expect("rename");
    assert_eq!(a.cat("f"), Ok(b"new".to_vec()));
    catch_up(&a.core, &fake);
    assert_eq!(a.cat("f"), Ok(b"new".to_vec()), "the watch bringing the rename back");
    assert_eq!((a.read(old, fh), a.pages(old)), (b"old".to_vec(), Ok(b"old".to_vec())));
    a.core.release(fh);
}

// ---- Invalidations ----

#[test]
fn a_change_elsewhere_makes_the_kernel_forget_the_name_before_it_is_shown() {
    let fake = fake();
    put(&fake, "f", "1");
    let a = mount(fake.clone());
    a.ino("f").expect("lookup");
    a.sent.take();
    put(&fake, "f", "2");
    put(&fake, "new", "x");
    catch_up(&a.core, &fake);
    let sent = a.sent.take();
    let f = sent.iter().position(|i| *i == (true, Inval::Entry(ROOT, "f".into())));
    assert!(f.is_some(), "the watch waits for the kernel to forget `f`: {sent:?}");
    assert!(sent.contains(&(false, Inval::Entry(ROOT, "new".into()))), "{sent:?}");
    assert_eq!(a.cat("f"), Ok(b"2".to_vec()));
    assert!(a.core.lookup(ROOT, OsStr::new("f")).expect("f").keep, "once shown, the kernel keeps it");
}

/// What a reader found at a path: content and mode.
type Found = Result<(Vec<u8>, u16), Errno>;

/// A cached name: its inode, and its mode if that is cached too.
type Name = (u64, Option<u16>);

/// The kernel's caches, as far as a reader can tell: names (to inodes) and
/// attributes, each kept only when kvfs lets it. Told to forget, it takes
/// the invalidations one at a time in the order `order` gives them, and
/// after each a reader reads every path of `paths` once.
struct Kernel {
    core: std::sync::OnceLock<std::sync::Weak<Core>>,
    paths: Vec<&'static str>,
    reversed: bool,
    /// (parent, name) -> (inode, its mode if kept).
    names: Mutex<std::collections::HashMap<(u64, String), Name>>,
    passes: Mutex<Vec<Vec<Found>>>,
}

impl Kernel {
    fn core(&self) -> Arc<Core> {
        self.core.get().and_then(|w| w.upgrade()).expect("the mount")
    }

    /// What `cat` and `stat` of `path` find: walks it name by name.
    fn read(&self, path: &str) -> Found {
        let core = self.core();
        let mut names = self.names.lock().expect("names");
        let (mut ino, mut perm) = (ROOT, None);
        for name in path.split('/') {
            let cached = names.get(&(ino, name.to_owned())).copied();
            let (next, kept) = match cached {
                Some(c) => c,
                None => {
                    let t = core.lookup(ino, OsStr::new(name))?;
                    let kept = t.keep.then_some(t.attr.perm);
                    if t.keep {
                        names.insert((ino, name.to_owned()), (t.attr.ino.0, kept));
                    }
                    (t.attr.ino.0, Some(t.attr.perm))
                }
            };
            (ino, perm) = (next, kept);
        }
        let perm = match perm {
            Some(p) => p,
            None => core.getattr_told(ino)?.attr.perm,
        };
        let fh = core.open(ino, libc::O_RDONLY)?;
        let data = core.read(ino, fh, 0, 1 << 20, true);
        core.release(fh);
        Ok((data?, perm))
    }

    fn take(&self, list: Vec<Inval>) {
        let mut list = list;
        if self.reversed {
            list.reverse();
        }
        for i in list {
            {
                let mut names = self.names.lock().expect("names");
                match i {
                    Inval::Entry(parent, name) => {
                        names.remove(&(parent, name));
                    }
                    Inval::Attrs(ino) | Inval::Inode(ino) => {
                        for v in names.values_mut().filter(|v| v.0 == ino) {
                            v.1 = None;
                        }
                    }
                }
            }
            let pass = self.paths.iter().map(|p| self.read(p)).collect();
            self.passes.lock().expect("passes").push(pass);
        }
    }
}

impl Invalidate for Arc<Kernel> {
    fn send(&self, list: Vec<Inval>) {
        self.take(list);
    }
    fn send_and_wait(&self, list: Vec<Inval>, _bound: Duration) -> bool {
        self.take(list);
        true
    }
}

#[test]
fn a_reader_sees_a_revision_of_many_changes_whole_whatever_the_order_the_kernel_forgets_in() {
    // (Brought by the watch, and by a re-list after compaction.)
    for (reversed, relist) in [(false, false), (true, false), (false, true), (true, true)] {
        let fake = fake();
        for n in ["a", "b", "c", "d/x", "h/1", "h/2"] {
            put(&fake, n, "1");
        }
        // (`h` is not looked up before the change: the kernel has no inode
        // of it yet.)
        let paths = vec!["a", "b", "c", "d/x", "e/y", "h/1", "h/2"];
        let kernel = Arc::new(Kernel {
            core: Default::default(),
            paths: paths.clone(),
            reversed,
            names: Mutex::default(),
            passes: Mutex::default(),
        });
        let (cursor, entries) = crate::sync::load(fake.as_ref(), PREFIX, path_of).expect("load");
        let opts = Options { prefix: PREFIX.into(), ..Options::default() };
        let core = Arc::new(Core::new(fake.clone(), opts, loaded(entries, cursor), Box::new(kernel.clone())));
        kernel.core.set(Arc::downgrade(&core)).expect("once");
        let mut first: Vec<_> = paths[..5].iter().map(|p| kernel.read(p)).collect();
        first.extend([Ok((b"1".to_vec(), 0o644)), Ok((b"1".to_vec(), 0o644))]);
        // One revision: a new version, a chmod, a delete, a file in a new
        // directory and one in a directory that goes.
        let mut chmod = TxnOp::put(key("b"), "1");
        if let TxnOp::Put { mode, .. } = &mut chmod {
            *mode = Some(0o600);
        }
        let txn = TxnRequest {
            success: vec![
                TxnOp::put(key("a"), "2"),
                chmod,
                TxnOp::Delete { key: key("c"), recursive: false },
                TxnOp::Delete { key: key("d/x"), recursive: false },
                TxnOp::put(key("e/y"), "2"),
                TxnOp::put(key("h/1"), "2"),
                TxnOp::put(key("h/2"), "2"),
            ],
            ..TxnRequest::default()
        };
        assert!(fake.txn(&txn).expect("txn").succeeded);
        if relist {
            let (cursor, fresh) = crate::sync::load(fake.as_ref(), PREFIX, path_of).expect("load");
            core.relist(fresh, cursor);
        } else {
            let mut w = fake.watch(PREFIX, core.cursor()).expect("watch");
            core.apply_and_show(&w.next().expect("next").expect("a batch"), WAIT);
        }
        let last: Vec<_> = paths.iter().map(|p| kernel.read(p)).collect();
        let file = |v: &str, m: u16| Ok((v.as_bytes().to_vec(), m));
        let gone = || Err(Errno::ENOENT);
        let one = file("1", 0o644);
        assert_eq!(first, [one.clone(), one.clone(), one.clone(), one.clone(), gone(), one.clone(), one]);
        let two = file("2", 0o644);
        assert_eq!(last, [two.clone(), file("1", 0o600), gone(), gone(), two.clone(), two.clone(), two]);
        let passes = kernel.passes.lock().expect("passes").clone();
        assert!(passes.len() >= 5, "{passes:?}");
        for (i, pass) in passes.iter().enumerate() {
            assert!(
                *pass == first || *pass == last,
                "reversed {reversed}, relist {relist}, pass {i} of {}: {pass:?}",
                passes.len()
            );
        }
    }
}

// ---- The watch never skips ----

#[test]
fn the_watch_resumes_from_its_own_cursor_when_this_mount_wrote_meanwhile() {
    let fake = fake();
    put(&fake, "f", "1");
    let a = mount(fake.clone());
    let w = start(&a);
    put(&fake, "seen", "1");
    until("the watch brings `seen`", || a.ino("seen").is_ok());
    w.stop(&fake);
    // Disconnected: someone else writes, then this mount writes.
    let cursor = a.core.cursor();
    put(&fake, "theirs", "1");
    a.echo("f", "mine").expect("echo");
    assert_eq!(a.core.cursor(), cursor, "an own write moved the cursor past another's event");
    let w = start(&a);
    until("the watch brings `theirs`", || a.cat("theirs") == Ok(b"1".to_vec()));
    // And a stream that ends resumes by itself.
    fake.end_streams();
    put(&fake, "after", "1");
    until("the watch brings `after`", || a.cat("after") == Ok(b"1".to_vec()));
    assert_eq!(a.cat("f"), Ok(b"mine".to_vec()));
    w.stop(&fake);
}

#[test]
fn after_compaction_a_relist_brings_the_state_and_the_watch_goes_on() {
    let fake = fake();
    put(&fake, "f", "1");
    put(&fake, "g", "1");
    let a = mount(fake.clone());
    let (old, fh) = a.open("f", libc::O_RDONLY);
    let w = start(&a);
    w.stop(&fake);
    put(&fake, "f", "2");
    fake.delete(&key("g")).expect("delete");
    put(&fake, "h", "1");
    let compacted = fake.revision();
    fake.compact(compacted);
    let w = start(&a);
    until("the re-list brings the state", || {
        a.cat("f") == Ok(b"2".to_vec()) && a.ino("g") == Err(Errno::ENOENT) && a.cat("h").is_ok()
    });
    until("a watch is up again after the re-list", || a.core.connected.load(Ordering::SeqCst));
    assert!(a.core.cursor() >= compacted, "the re-list did not move the cursor past the compaction");
    put(&fake, "later", "1");
    until("the watch goes on after the re-list", || a.cat("later").is_ok());
    assert_eq!(a.read(old, fh), b"1".to_vec(), "a reader keeps its version across a re-list");
    a.core.release(fh);
    w.stop(&fake);
}

#[test]
fn a_load_of_several_pages_watches_from_the_first_page_s_revision() {
    // sync::PAGE is 10,000 entries: one more makes two pages.
    let fake = fake();
    for i in 0..=10_000 {
        put(&fake, &format!("k{i:05}"), "0");
    }
    let first = fake.revision();
    let hooked = Hooked::new(fake.clone());
    // Between the pages: a change to a key of the first page, and a delete.
    let f2 = fake.clone();
    *hooked.after_page.lock().expect("hook") = Some(Box::new(move || {
        put(&f2, "k00000", "changed");
        f2.delete(&key("k00001")).expect("delete");
    }));
    let (cursor, entries) = crate::sync::load(hooked.as_ref(), PREFIX, path_of).expect("load");
    assert_eq!(entries.len(), 10_001, "both pages loaded");
    assert_eq!(cursor, first, "the cursor is the lowest page revision");
    let a = mount_with(fake.clone(), entries, cursor);
    catch_up(&a.core, &fake);
    assert_eq!(a.cat("k00000"), Ok(b"changed".to_vec()), "a change between pages was lost");
    assert_eq!(a.ino("k00001"), Err(Errno::ENOENT));
    assert_eq!(a.cat("k10000"), Ok(b"0".to_vec()));
}

/// A mount over a listing loaded by the test.
fn mount_with(
    cluster: Arc<dyn Cluster>,
    entries: std::collections::BTreeMap<String, crate::tree::TreeNode>,
    cursor: u64,
) -> Mount {
    let sent = Sent::default();
    let opts = Options { prefix: PREFIX.into(), ..Options::default() };
    let core = Core::new(cluster, opts, loaded(entries, cursor), Box::new(sent.clone()));
    Mount { core: Arc::new(core), sent }
}
