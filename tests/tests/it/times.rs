//! Times on a mount as POSIX has them: the ctime moves with every write of
//! an entry, the mtime with its content, a directory's times with its
//! entries, the atime only when set; every mount and the API show the same
//! nanoseconds, the writing mount at once.

use kv_tests::{Kvd, Mount};

use crate::http;
use crate::mount::eventually;

/// atime, mtime and ctime of each path in the mount, in ns, and its link
/// count.
fn times(m: &Mount, paths: &str) -> Vec<(i64, i64, i64, u64)> {
    let out = m.sh_ok(&format!(
        "python3 -c 'import os, sys\nfor p in sys.argv[1:]:\n s = os.lstat(p); print(s.st_atime_ns, s.st_mtime_ns, \
         s.st_ctime_ns, s.st_nlink)' {paths}"
    ));
    out.lines()
        .map(|l| {
            let n: Vec<i64> = l.split_whitespace().map(|w| w.parse().expect("a number")).collect();
            (n[0], n[1], n[2], n[3] as u64)
        })
        .collect()
}

/// atime, mtime and ctime of a key as the API answers them.
fn api_times(rt: &tokio::runtime::Runtime, url: &str, key: &str) -> (i64, i64, i64) {
    let r = rt.block_on(http().get(format!("{url}/v1/kv/{key}")).send()).expect("get");
    assert_eq!(r.status(), 200, "{key}");
    let h = |n: &str| -> i64 {
        r.headers().get(n).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{n}"))
    };
    (h("x-kv-atime"), h("x-kv-mtime"), h("x-kv-ctime"))
}

#[test]
fn times_move_as_posix_has_them_and_every_mount_shows_the_cluster_s() {
    let k = Kvd::bootstrap(&[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let a = Mount::start(&format!("{}/app", k.url), &[]);
    a.sh_ok("mkdir d");
    let [made] = times(&a, "d")[..] else { panic!("one") };
    assert_eq!(made.3, 2, "an empty directory's links");

    // A file made in d: d's mtime and ctime move, and the writing mount
    // shows the cluster's own at once (no wait for the watch).
    a.sh_ok("echo one > d/f");
    let [d1, f1] = times(&a, "d d/f")[..] else { panic!("two") };
    assert!(d1.1 > made.1 && d1.2 > made.2, "d's times after a create: {made:?} then {d1:?}");
    assert_eq!((d1.0, d1.1, d1.2), api_times(&rt, &k.url, "app/d"), "d as the cluster has it");
    assert_eq!((f1.0, f1.1, f1.2), api_times(&rt, &k.url, "app/d/f"), "f as the cluster has it");
    // (made, then written: the atime is when it was made)
    assert!(f1.0 <= f1.1 && f1.2 == f1.1 && f1.0 > made.1, "a new file's times: {f1:?}");

    // chmod changes the ctime only; a rewrite changes mtime and ctime, not
    // d's; touch -a sets the atime and nothing else the user set.
    a.sh_ok("chmod 600 d/f");
    let [d2, f2] = times(&a, "d d/f")[..] else { panic!("two") };
    assert!(f2.2 > f1.2 && f2.1 == f1.1 && f2.0 == f1.0, "chmod: {f1:?} then {f2:?}");
    assert_eq!(d2, d1, "a change of an entry is no change of its directory");
    a.sh_ok("echo two > d/f");
    let [d3, f3] = times(&a, "d d/f")[..] else { panic!("two") };
    assert!(f3.1 > f2.1 && f3.2 > f2.2 && f3.0 == f2.0, "a rewrite: {f2:?} then {f3:?}");
    assert_eq!(d3, d1);
    a.sh_ok("touch -a -d @1000000000.5 d/f");
    let [f4] = times(&a, "d/f")[..] else { panic!("one") };
    assert_eq!((f4.0, f4.1), (1_000_000_000_500_000_000, f3.1), "touch -a");
    assert!(f4.2 > f3.2);
    a.sh_ok("touch -m -d @4102444800.25 d/f");
    let [f5] = times(&a, "d/f")[..] else { panic!("one") };
    assert_eq!((f5.0, f5.1), (f4.0, 4_102_444_800_250_000_000), "touch -m, past 2038, to the ns");
    assert_eq!((f5.0, f5.1, f5.2), api_times(&rt, &k.url, "app/d/f"));
    // cp -a keeps the atime and the mtime.
    a.sh_ok("cp -a d/f d/copy");
    let [c] = times(&a, "d/copy")[..] else { panic!("one") };
    assert_eq!((c.0, c.1), (f5.0, f5.1), "cp -a");

    // Subdirectories count in the link count; rename and unlink move the
    // times of the directories they change.
    a.sh_ok("mkdir d/e d/e2 && mv d/f d/e/g && rm d/e/g && rmdir d/e2");
    let [d6, e6] = times(&a, "d d/e")[..] else { panic!("two") };
    assert_eq!((d6.3, e6.3), (3, 2), "links");
    assert!(d6.1 > d3.1 && e6.1 > e6.0, "{d3:?} then {d6:?}, e {e6:?}");
    assert_eq!((d6.0, d6.1, d6.2), api_times(&rt, &k.url, "app/d"));
    assert_eq!((e6.0, e6.1, e6.2), api_times(&rt, &k.url, "app/d/e"));

    // Another mount shows the same times, once its watch has them.
    let b = Mount::start(&format!("{}/app", k.url), &[]);
    eventually("the other mount shows d/e", || b.sh("stat d/e").status.success());
    assert_eq!(times(&b, "d d/e"), times(&a, "d d/e"));
}
