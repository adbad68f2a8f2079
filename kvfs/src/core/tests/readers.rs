//! What a reader sees while others change files, and how changes from
//! elsewhere reach a mount: whole revisions, invalidations, and a watch
//! that never skips (resume, re-list, paged load).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;

use super::*;
use crate::cluster::Batch;
use crate::sync::MountWatch as Watch;

/// `MountWatch::run` of a mount on a thread of its own.
struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

fn start(m: &Mount) -> Running {
    let w = Watch {
        core: m.core.clone(),
        prefix: PREFIX.into(),
        status: Mutex::default(),
        status_file: None,
        lkg_file: None,
        liveness: Mutex::default(),
    };
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
fn a_change_elsewhere_makes_the_kernel_forget_the_name() {
    let fake = fake();
    put(&fake, "f", "1");
    let a = mount(fake.clone());
    a.ino("f").expect("lookup");
    a.sent.take();
    put(&fake, "f", "2");
    put(&fake, "new", "x");
    catch_up(&a.core, &fake);
    let sent = a.sent.take();
    for name in ["f", "new"] {
        assert!(sent.contains(&(false, Inval::Entry(ROOT, name.into()))), "{name}: {sent:?}");
    }
    assert!(sent.iter().all(|(waited, _)| !waited), "the watch never waits for the kernel: {sent:?}");
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
