//! Regressions from a review of the core: an own change racing the watch
//! (the tree never goes back past the cursor), a re-list over own writes,
//! commits of created files, renames and chmods over writers and their
//! older versions, and a create racing the watch.

use std::thread::JoinHandle;

use super::*;
use crate::sync::load;

fn rename(m: &Mount, from: &str, to: &str) -> Result<(), Errno> {
    m.core.rename(ROOT, OsStr::new(from), ROOT, OsStr::new(to), RenameMode::default())
}

fn unlink(m: &Mount, name: &str) -> Result<(), Errno> {
    m.core.unlink(ROOT, OsStr::new(name), false)
}

/// Applies the fake's batches up to revision `rev` only (the watch behind
/// the cluster).
fn apply_through(core: &Core, fake: &FakeCluster, rev: u64) {
    let mut w = fake.watch(PREFIX, core.cursor()).expect("watch");
    while core.cursor() < rev {
        let b = w.next().expect("next").expect("a batch");
        core.apply(&b);
    }
}

fn hook(slot: &Mutex<Option<Box<dyn FnOnce() + Send>>>, f: impl FnOnce() + Send + 'static) {
    *slot.lock().expect("hook") = Some(Box::new(f));
}

/// Runs `f` on a thread and gives it a while to finish: a call that must
/// wait for a lock the caller holds is still running when this returns.
fn started<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let t = std::thread::spawn(f);
    let deadline = Instant::now() + Duration::from_millis(300);
    while !t.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    t
}

type Slot<T> = Arc<Mutex<Option<T>>>;

// ---- An own change never brings back what the watch applied after it ----

/// A mount of `f` = "old" over a [`Hooked`] cluster.
fn hooked_with_f() -> (Arc<FakeCluster>, Arc<Hooked>, Mount) {
    let fake = fake();
    put(&fake, "f", "old");
    let hooked = Hooked::new(fake.clone());
    let a = mount(hooked.clone());
    (fake, hooked, a)
}

/// Another mount deletes `f`, and the watch brings this mount's change and
/// that delete, before this mount's change updates its state.
fn deleted_elsewhere(a: &Mount, fake: &Arc<FakeCluster>) -> impl FnOnce() + Send + 'static {
    let (core, f2) = (a.core.clone(), fake.clone());
    move || {
        f2.delete(&key("f")).expect("delete elsewhere");
        catch_up(&core, &f2);
    }
}

#[test]
fn an_own_commit_never_brings_back_a_key_the_watch_deleted_after_it() {
    let (fake, hooked, a) = hooked_with_f();
    let (_, fh) = a.open("f", libc::O_WRONLY | libc::O_TRUNC);
    a.core.write(fh, 0, b"mine", Some(SHELL)).expect("write");
    hook(&hooked.after_put, deleted_elsewhere(&a, &fake));
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    assert_eq!(stored(&fake, "f"), None);
    assert_eq!(a.ino("f"), Err(Errno::ENOENT), "the commit brought back a key deleted after it");
    catch_up(&a.core, &fake);
    assert_eq!(a.ino("f"), Err(Errno::ENOENT));
}

#[test]
fn an_own_truncate_never_brings_back_a_key_the_watch_deleted_after_it() {
    let (fake, hooked, a) = hooked_with_f();
    let ino = a.ino("f").expect("lookup");
    hook(&hooked.after_put, deleted_elsewhere(&a, &fake));
    a.core.setattr(ino, None, SetAttr { size: Some(1), ..SetAttr::default() }).expect("truncate");
    assert_eq!(stored(&fake, "f"), None);
    assert_eq!(a.ino("f"), Err(Errno::ENOENT), "the truncate brought back a key deleted after it");
}

#[test]
fn an_own_chmod_never_brings_back_a_key_the_watch_deleted_after_it() {
    let (fake, hooked, a) = hooked_with_f();
    let ino = a.ino("f").expect("lookup");
    hook(&hooked.after_txn, deleted_elsewhere(&a, &fake));
    a.core.setattr(ino, None, SetAttr { mode: Some(0o600), ..SetAttr::default() }).expect("chmod");
    assert_eq!(stored(&fake, "f"), None);
    assert_eq!(a.ino("f"), Err(Errno::ENOENT), "the chmod brought back a key deleted after it");
}

#[test]
fn an_unlink_keeps_the_name_created_again_elsewhere_that_the_watch_brought_meanwhile() {
    let (fake, hooked, a) = hooked_with_f();
    // Right after this mount's delete: another mount creates `f` again, and
    // the watch brings both.
    let (core, f2) = (a.core.clone(), fake.clone());
    hook(&hooked.after_delete, move || {
        put(&f2, "f", "new");
        catch_up(&core, &f2);
    });
    assert_eq!(unlink(&a, "f"), Ok(()));
    assert_eq!(a.cat("f"), Ok(b"new".to_vec()), "the unlink removed the file created after it");
    catch_up(&a.core, &fake);
    assert_eq!(a.cat("f"), Ok(b"new".to_vec()));
}

// ---- A re-list keeps this mount's writes made after the listing ----

#[test]
fn a_relist_keeps_a_delete_made_here_after_the_listing_was_read() {
    let fake = fake();
    put(&fake, "f", "1");
    put(&fake, "g", "1");
    let a = mount(fake.clone());
    let (cursor, fresh) = load(fake.as_ref(), PREFIX, path_of).expect("listing");
    assert_eq!(unlink(&a, "f"), Ok(()));
    a.core.relist(fresh, cursor);
    assert_eq!(a.ino("f"), Err(Errno::ENOENT), "the re-list brought back a key deleted here after it");
    catch_up(&a.core, &fake);
    assert_eq!((a.ino("f"), a.cat("g")), (Err(Errno::ENOENT), Ok(b"1".to_vec())));
}

#[test]
fn a_relist_keeps_a_file_created_here_after_the_listing_was_read_and_its_writer_publishes() {
    let fake = fake();
    put(&fake, "g", "1");
    let a = mount(fake.clone());
    let (cursor, fresh) = load(fake.as_ref(), PREFIX, path_of).expect("listing");
    let (_, fh) = a.create("new", libc::O_TRUNC).expect("create");
    a.core.write(fh, 0, b"1", Some(SHELL)).expect("write");
    assert_eq!(a.core.fsync(fh), Ok(()));
    assert_eq!(stored(&fake, "new"), Some(b"1".to_vec()));
    a.core.relist(fresh, cursor);
    assert_eq!(a.cat("new"), Ok(b"1".to_vec()), "the re-list dropped a file committed here after it");
    a.core.write(fh, 1, b"2", Some(SHELL)).expect("write");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    assert_eq!(stored(&fake, "new"), Some(b"12".to_vec()), "the writer's later commit was dropped");
    catch_up(&a.core, &fake);
    assert_eq!(a.cat("new"), Ok(b"12".to_vec()));
}

// ---- Commits of files created here ----

#[test]
fn a_commit_of_a_created_file_never_changes_another_version_s_inode_in_place() {
    let fake = fake();
    let hooked = Hooked::new(fake.clone());
    let a = mount(hooked.clone());
    let (_, fh) = a.create("f", libc::O_TRUNC).expect("create");
    a.core.write(fh, 0, b"mine", Some(SHELL)).expect("write");
    let theirs = put(&fake, "f", "theirs");
    // During this mount's put: the watch brings the other mount's file
    // (not this put yet), and a lookup here attaches a second inode to it.
    let other: Slot<u64> = Arc::default();
    let (core, f2, o) = (a.core.clone(), fake.clone(), other.clone());
    hook(&hooked.after_put, move || {
        apply_through(&core, &f2, theirs);
        let ino = core.lookup(ROOT, OsStr::new("f")).expect("lookup").attr.ino.0;
        *o.lock().expect("other") = Some(ino);
    });
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    let other = other.lock().expect("other").expect("the hook ran");
    assert_eq!(a.pages(other), Ok(b"theirs".to_vec()), "the other version's inode changed content in place");
    assert_eq!(a.core.getattr(other).map(|a| a.size), Ok(6));
    assert_eq!(stored(&fake, "f"), Some(b"mine".to_vec()), "the commit reached the cluster");
    assert_eq!(a.cat("f"), Ok(b"mine".to_vec()));
}

#[test]
fn a_rename_over_a_file_created_here_detaches_it_and_its_close_does_not_overwrite_the_target() {
    let fake = fake();
    put(&fake, "src", "new");
    let a = mount(fake.clone());
    let (created, fh) = a.create("f", libc::O_TRUNC).expect("create");
    a.core.write(fh, 0, b"draft", Some(SHELL)).expect("write");
    assert_eq!(rename(&a, "src", "f"), Ok(()));
    assert_ne!(a.ino("f"), Ok(created), "the replaced created file's inode still names `f`");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    assert_eq!(stored(&fake, "f"), Some(b"new".to_vec()), "the replaced file's close overwrote the target");
    catch_up(&a.core, &fake);
    assert_eq!(a.cat("f"), Ok(b"new".to_vec()));
}

#[test]
fn a_delete_elsewhere_of_a_name_created_here_does_not_stop_its_close_from_publishing() {
    let fake = fake();
    put(&fake, "f", "old");
    let a = mount(fake.clone());
    // `rm -f f; cmd > f` here while another mount's `rm f` is on its way.
    fake.delete(&key("f")).expect("delete elsewhere");
    assert_eq!(unlink(&a, "f"), Ok(()), "already gone in the cluster");
    let (_, fh) = a.create("f", libc::O_TRUNC).expect("create");
    a.core.write(fh, 0, b"mine", Some(SHELL)).expect("write");
    catch_up(&a.core, &fake);
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    assert_eq!(stored(&fake, "f"), Some(b"mine".to_vec()), "the created file's close published nothing");
    catch_up(&a.core, &fake);
    assert_eq!(a.cat("f"), Ok(b"mine".to_vec()));
}

// ---- A rename or chmod holds the writers' commits and rebases them ----

#[test]
fn a_close_during_a_rename_of_its_file_waits_for_it_and_publishes_at_the_new_name() {
    let fake = fake();
    put(&fake, "log", "a");
    let hooked = Hooked::new(fake.clone());
    let a = mount(hooked.clone());
    let (_, fh) = a.open("log", libc::O_WRONLY | libc::O_APPEND);
    a.core.write(fh, 0, b"b", Some(SHELL)).expect("write");
    // While the rename's transaction is answered: the writer closes.
    let close: Slot<(bool, JoinHandle<Result<(), Errno>>)> = Arc::default();
    let (core, c) = (a.core.clone(), close.clone());
    hook(&hooked.after_txn, move || {
        let t = started(move || core.flush(fh, SHELL));
        *c.lock().expect("close") = Some((t.is_finished(), t));
    });
    assert_eq!(rename(&a, "log", "log.1"), Ok(()));
    let (early, t) = close.lock().expect("close").take().expect("the hook ran");
    assert_eq!(t.join().expect("the close panicked"), Ok(()), "the close racing the rename failed");
    assert!(!early, "the close did not wait for the rename");
    a.core.release(fh);
    assert_eq!((stored(&fake, "log"), stored(&fake, "log.1")), (None, Some(b"ab".to_vec())));
}

#[test]
fn a_rename_during_a_close_of_its_file_moves_the_written_data() {
    let fake = fake();
    put(&fake, "log", "a");
    let hooked = Hooked::new(fake.clone());
    let a = mount(hooked.clone());
    let (_, fh) = a.open("log", libc::O_WRONLY | libc::O_APPEND);
    a.core.write(fh, 0, b"b", Some(SHELL)).expect("write");
    // While the close's put is answered: `mv log log.1`.
    let mv: Slot<JoinHandle<Result<(), Errno>>> = Arc::default();
    let (core, m) = (a.core.clone(), mv.clone());
    hook(&hooked.after_put, move || {
        let t = started(move || core.rename(ROOT, OsStr::new("log"), ROOT, OsStr::new("log.1"), RenameMode::default()));
        *m.lock().expect("mv") = Some(t);
    });
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    let t = mv.lock().expect("mv").take().expect("the hook ran");
    assert_eq!(t.join().expect("the rename panicked"), Ok(()), "the rename racing the close failed");
    a.core.release(fh);
    assert_eq!((stored(&fake, "log"), stored(&fake, "log.1")), (None, Some(b"ab".to_vec())));
}

/// `f` changed through this mount's other handle while inode `old` stays
/// held; a writer opened through `old` then edits the new version with a
/// pending write. Returns (old, the writer's handle).
fn writer_on_an_older_version(a: &Mount) -> (u64, u64) {
    let old = a.ino("f").expect("lookup");
    a.echo("f", "v2").expect("echo");
    assert_ne!(a.ino("f"), Ok(old), "the written file's old inode was not detached");
    let fh = a.core.open(old, libc::O_WRONLY).expect("open through the old inode");
    a.core.write(fh, 0, b"V", Some(SHELL)).expect("write");
    (old, fh)
}

#[test]
fn a_chmod_rebases_a_writer_on_an_older_version_of_the_file_held_open() {
    let fake = fake();
    put(&fake, "f", "v1");
    let a = mount(fake.clone());
    let (_, fh) = writer_on_an_older_version(&a);
    let ino = a.ino("f").expect("lookup");
    a.core.setattr(ino, None, SetAttr { mode: Some(0o600), ..SetAttr::default() }).expect("chmod");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()), "close() failed over the mount's own chmod");
    a.core.release(fh);
    let e = fake.get(&key("f")).expect("entry");
    assert_eq!((e.value_bytes(), e.meta.mode & 0o7777), (Some(b"V2".to_vec()), 0o600));
}

#[test]
fn a_rename_rebases_a_writer_on_an_older_version_of_the_file_held_open() {
    let fake = fake();
    put(&fake, "f", "v1");
    let a = mount(fake.clone());
    let (_, fh) = writer_on_an_older_version(&a);
    assert_eq!(rename(&a, "f", "g"), Ok(()));
    assert_eq!(a.core.flush(fh, SHELL), Ok(()), "close() failed over the mount's own rename");
    a.core.release(fh);
    assert_eq!((stored(&fake, "f"), stored(&fake, "g")), (None, Some(b"V2".to_vec())));
}

// ---- A writer's size; a create racing the watch ----

#[test]
fn getattr_through_a_writer_s_handle_reports_its_buffer_s_size() {
    let fake = fake();
    put(&fake, "f", "12345");
    let a = mount(fake.clone());
    let (ino, fh) = a.open("f", libc::O_WRONLY);
    a.core.write(fh, 5, b"678", Some(SHELL)).expect("write");
    assert_eq!(a.core.getattr_fh(ino, fh).map(|a| a.attr.size), Ok(8), "the writer's own size");
    assert_eq!(a.core.getattr(ino).map(|a| a.size), Ok(5), "others see the stored value's");
    let (_, rfh) = a.open("f", libc::O_RDONLY);
    assert_eq!(a.core.getattr_fh(ino, rfh).map(|a| a.attr.size), Ok(5), "a reader's handle");
    a.core.release(rfh);
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
}

#[test]
fn a_create_racing_the_watch_bringing_the_name_is_sent_back_to_a_fresh_lookup() {
    let fake = fake();
    let hooked = Hooked::new(fake.clone());
    let a = mount(hooked.clone());
    // The watch is down: the create probes the cluster, and the watch
    // brings the name from elsewhere meanwhile.
    a.core.connected.store(false, std::sync::atomic::Ordering::SeqCst);
    let (core, f2) = (a.core.clone(), fake.clone());
    hook(&hooked.after_probe, move || {
        put(&f2, "f", "theirs");
        catch_up(&core, &f2);
    });
    // Never opened by CREATE, where the kernel checks no mode: the kernel
    // walks again, and opens it the usual way.
    let flags = libc::O_CREAT | libc::O_RDWR;
    let r = a.core.create(ROOT, OsStr::new("f"), 0o644, flags, 0, 0).map(|(_, fh)| fh);
    assert_eq!(r, Err(Errno::ESTALE));
    assert_eq!(stored(&fake, "f"), Some(b"theirs".to_vec()));
    let (ino, fh) = a.create("f", 0).expect("create");
    assert_eq!(a.read(ino, fh), b"theirs".to_vec(), "the create replaced the file with an empty one");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    assert_eq!((stored(&fake, "f"), a.cat("f")), (Some(b"theirs".to_vec()), Ok(b"theirs".to_vec())));
}

#[test]
fn a_writer_other_than_root_puts_only_over_the_version_it_was_checked_against() {
    let nobody = Caller::held(65534, vec![65534]);
    for (theirs, want) in [((0o600, 0, 0), ("secret", Err(Errno::EACCES))), ((0o666, 0, 0), ("pwn", Ok(())))] {
        let fake = fake();
        let hooked = Hooked::new(fake.clone());
        put_owned(&fake, "f", "mine", (0o666, 0, 0));
        let a = mount(hooked.clone());
        let (_, fh) = a.writer_as("f", nobody.clone(), b"pwn");
        // Root's version is in the cluster; this mount has not seen it yet,
        // and does once the close's put fails over it.
        put_owned(&fake, "f", "secret", theirs);
        let (core, f2) = (a.core.clone(), fake.clone());
        hook(&hooked.after_put, move || catch_up(&core, &f2));
        assert_eq!(a.core.flush(fh, SHELL), want.1, "over {theirs:?}");
        a.core.release(fh);
        assert_eq!(stored(&fake, "f"), Some(want.0.as_bytes().to_vec()), "over {theirs:?}");
    }
}

#[test]
fn a_group_member_s_writer_is_held_to_the_owner_s_chmod_only_where_it_takes_their_write() {
    let member = Caller::held(1000, vec![1000, 50]);
    let cases = [(0o775, Ok(())), (0o644, Err(Errno::EACCES))];
    for ((chmod, want), fsync) in cases.iter().flat_map(|c| [(*c, true), (*c, false)]) {
        let fake = fake();
        put_owned(&fake, "f", "", (0o664, 0, 50));
        let a = mount(fake.clone());
        let (_, fh) = a.writer_as("f", member.clone(), b"a");
        // (an fsync leaves the writer on an older version of the file)
        if fsync {
            assert_eq!(a.core.fsync(fh), Ok(()));
        }
        // The owner (root) chmods the file through this mount meanwhile.
        let now = a.ino("f").expect("lookup");
        a.core.setattr(now, None, SetAttr { mode: Some(chmod), ..SetAttr::default() }).expect("chmod");
        a.core.write(fh, 1, b"b", Some(SHELL)).expect("write");
        assert_eq!(a.core.flush(fh, SHELL), want, "after chmod {chmod:o}");
        a.core.release(fh);
        let want_value: &[u8] = match (want.is_ok(), fsync) {
            (true, _) => b"ab",
            (false, true) => b"a",
            (false, false) => b"",
        };
        assert_eq!(stored(&fake, "f"), Some(want_value.to_vec()), "after chmod {chmod:o}, fsync {fsync}");
    }
}

#[test]
fn a_file_created_here_over_a_version_that_won_elsewhere_keeps_its_owner() {
    let nobody = Caller::held(65534, vec![65534]);
    let fake = fake();
    let hooked = Hooked::new(fake.clone());
    let a = mount(hooked.clone());
    let flags = libc::O_CREAT | libc::O_WRONLY;
    let (attr, fh) = a.core.create_as(ROOT, OsStr::new("s"), 0o644, flags, nobody).expect("create");
    assert_eq!(attr.uid, 65534);
    a.core.write(fh, 0, b"mine", Some(SHELL)).expect("write");
    // Alice's file, which everyone may write, won the name meanwhile.
    put_owned(&fake, "s", "alice's", (0o666, 1001, 1001));
    let (core, f2) = (a.core.clone(), fake.clone());
    hook(&hooked.after_put, move || catch_up(&core, &f2));
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    let e = fake.get(&key("s")).expect("s");
    assert_eq!((e.value_bytes(), e.meta.mode & 0o7777, e.meta.uid), (Some(b"mine".to_vec()), 0o666, 1001));
    // And this mount shows it so.
    let shown = a.core.lookup(ROOT, OsStr::new("s")).expect("s");
    assert_eq!((shown.attr.perm, shown.attr.uid), (0o666, 1001));
}

#[test]
fn a_touch_by_the_writer_does_not_make_root_s_lockdown_theirs() {
    let user = Caller::held(1000, vec![1000]);
    let fake = fake();
    put_owned(&fake, "f", "v", (0o644, 1000, 1000));
    let a = mount(fake.clone());
    let (ino, fh) = a.writer_as("f", user, b"mine");
    // Root takes the file over elsewhere (attributes only: the same inode).
    put_owned(&fake, "f", "v", (0o600, 0, 0));
    catch_up(&a.core, &fake);
    assert_eq!(a.ino("f"), Ok(ino));
    // The writer's touch (utimensat through the mount, checked by the
    // kernel against what it had cached) changes no mode or owner.
    let touch = SetAttr { who: Caller::held(1000, vec![1000]), mtime: Some(1), ..SetAttr::default() };
    let _ = a.core.setattr(ino, Some(fh), touch);
    assert_eq!(a.core.flush(fh, SHELL), Err(Errno::EACCES));
    a.core.release(fh);
    assert_eq!(stored(&fake, "f"), Some(b"v".to_vec()));
}

#[test]
fn a_user_s_own_chmod_through_its_writer_holds_it_to_what_they_made_it_and_an_unheld_user_is_not_held() {
    let user = Caller::held(1000, vec![1000]);
    let fake = fake();
    put_owned(&fake, "f", "", (0o644, 1000, 1000));
    let a = mount(fake.clone());
    // `cp -p` of a 0444 file over one's own: write, fchmod, close.
    let (ino, fh) = a.writer_as("f", user.clone(), b"copy");
    let chmod = SetAttr { who: Caller::held(1000, vec![1000]), mode: Some(0o444), ..SetAttr::default() };
    a.core.setattr(ino, Some(fh), chmod).expect("fchmod");
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    assert_eq!(stored(&fake, "f"), Some(b"copy".to_vec()));

    // On a mount without mode checks the token decides, not kvfs.
    let unheld = Caller { held: false, ..user };
    put_owned(&fake, "g", "", (0o666, 0, 0));
    catch_up(&a.core, &fake);
    let (_, fh) = a.writer_as("g", unheld, b"x");
    put_owned(&fake, "g", "root's", (0o600, 0, 0));
    catch_up(&a.core, &fake);
    assert_eq!(a.core.flush(fh, SHELL), Ok(()));
    a.core.release(fh);
    assert_eq!(stored(&fake, "g"), Some(b"x".to_vec()));
}

#[test]
fn a_former_owner_s_chmod_or_chown_of_root_s_lockdown_is_refused() {
    let fake = fake();
    put_owned(&fake, "f", "v", (0o644, 1000, 1000));
    put_owned(&fake, "s", "v", (0o4755, 0, 0));
    let a = mount(fake.clone());
    let ino = a.ino("f").expect("lookup");
    // Root takes the file over elsewhere; the kernel may still have the
    // old owner cached when the former owner's chmod comes.
    put_owned(&fake, "f", "v", (0o600, 0, 0));
    catch_up(&a.core, &fake);
    let by_user =
        |mode, uid, gid| SetAttr { who: Caller::held(1000, vec![1000]), mode, uid, gid, ..SetAttr::default() };
    for a_ in [by_user(Some(0o666), None, None), by_user(None, None, Some(1000)), by_user(None, Some(1000), None)] {
        assert_eq!(a.core.setattr(ino, None, a_.clone()).map(|_| ()), Err(Errno::EPERM), "{a_:?}");
    }
    assert_eq!(fake.get(&key("f")).map(|e| (e.meta.mode & 0o7777, e.meta.uid, e.meta.gid)), Some((0o600, 0, 0)));
    // The kernel's own clearing of set-id bits on a write by another user.
    let s = a.ino("s").expect("lookup");
    a.core.setattr(s, None, by_user(Some(0o755), None, None)).expect("kill suid");
    assert_eq!(fake.get(&key("s")).map(|e| e.meta.mode & 0o7777), Some(0o755));
    // (and nothing more than that)
    assert_eq!(a.core.setattr(s, None, by_user(Some(0o777), None, None)).map(|_| ()), Err(Errno::EPERM));
}
