//! What programs reading a mount see while others write: every read is a
//! value the key held; mounts converge.
//!
//! The seed is printed; `KV_READERS_SEED=N` replays the same value sizes.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::hash::{DefaultHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kv_tests::{Kvd, Mount};

use crate::faults::Rng;

/// The files (keys under `app/`) the writers rewrite; none is ever deleted.
const KEYS: [&str; 5] = ["echo", "forked", "renamed", "big", "api"];

/// The largest value written: under kvd's default `max_value_size` (1 MiB).
const MAX_VALUE: u64 = 1_000_000;

/// Most rounds (one read of every key) one reader makes.
const ROUNDS: usize = 300;

/// A value that names itself: `KEY WRITER SEQ LEN|` repeated up to `len - 1`
/// bytes, then a newline. A prefix of one, a mix of two or an empty file is
/// none of them. `len` must leave room for the whole name.
fn value(key: &str, writer: &str, seq: u64, len: u64) -> Vec<u8> {
    let name = format!("{key} {writer} {seq} {len}|");
    let mut v: Vec<u8> = name.bytes().cycle().take(len as usize - 1).collect();
    v.push(b'\n');
    v
}

/// Whether `v` is a whole value some writer of `key` wrote (see [`value`]);
/// the API writer also writes `api` empty.
fn whole(key: &str, v: &[u8]) -> bool {
    if v.is_empty() {
        return key == "api";
    }
    let Some(bar) = v.iter().position(|&b| b == b'|') else { return false };
    let Ok(name) = std::str::from_utf8(&v[..bar]) else { return false };
    let parts: Vec<&str> = name.split(' ').collect();
    let [k, writer, seq, len] = parts[..] else { return false };
    match (seq.parse(), len.parse::<u64>()) {
        (Ok(seq), Ok(len)) => {
            k == key && len as usize == v.len() && len > bar as u64 + 1 && value(k, writer, seq, len) == v
        }
        _ => false,
    }
}

/// sh that sets `b` to [`value`]`(key, writer, $i, $n)` without its newline.
fn sh_value(key: &str, writer: &str) -> String {
    format!(
        "b=\"{key} {writer} $i $n|\"; while [ ${{#b}} -lt $n ]; do b=\"$b$b\"; done; b=$(printf \"%.$((n - 1))s\" \"$b\")"
    )
}

/// A value size up to `max`: small, medium and large ones mixed, so that
/// rewrites shrink and grow the file.
fn size(rng: &mut Rng, max: u64) -> u64 {
    let s = match rng.below(4) {
        0 => 40 + rng.below(60),
        1 => 100 + rng.below(900),
        2 => 1_000 + rng.below(15_000),
        _ => 16_000 + rng.below(max.saturating_sub(16_000).max(1)),
    };
    s.min(max)
}

/// `count` sizes up to `max`, for a sh `for` list.
fn sizes(rng: &mut Rng, count: usize, max: u64) -> String {
    (0..count).map(|_| size(rng, max).to_string()).collect::<Vec<_>>().join(" ")
}

/// A sh loop that rewrites one file `count` times with `write` (sh run with
/// `$b` set to the value without its newline) and prints how many failed.
fn sh_writer(key: &str, writer: &str, sizes: &str, write: &str) -> String {
    format!(
        "fails=0; i=0; for n in {sizes}; do i=$((i + 1)); {}; {write} || fails=$((fails + 1)); done; echo $fails",
        sh_value(key, writer)
    )
}

/// Length and hash of a value: what the history and the reads keep.
type Digest = (usize, u64);

fn digest(v: &[u8]) -> Digest {
    let mut h = DefaultHasher::new();
    h.write(v);
    (v.len(), h.finish())
}

/// What one read returned.
enum Got {
    /// Bytes: their digest, whether they are a whole value a writer wrote,
    /// and how they start (for the report).
    Bytes { digest: Digest, whole: bool, head: String },
    /// ENOENT.
    Absent,
    /// Another error.
    Failed(String),
    /// A page of an mmap lay past the file's end: the file was truncated
    /// under the map (an `O_TRUNC` rewrite on the same mount empties the
    /// inode at open, as on a local filesystem), and a program gets SIGBUS
    /// there, on any filesystem. Not judged: no bytes were returned (the
    /// other readers judge read errors).
    Shrunk,
}

/// One read: which reader, which key, what it got.
struct Read1 {
    reader: String,
    key: String,
    got: Got,
}

fn got_bytes(key: &str, v: &[u8]) -> Got {
    let head = String::from_utf8_lossy(&v[..v.len().min(40)]).into_owned();
    Got::Bytes { digest: digest(v), whole: whole(key, v), head }
}

fn got_err(e: &std::io::Error) -> Got {
    if e.kind() == std::io::ErrorKind::NotFound {
        Got::Absent
    } else {
        Got::Failed(e.to_string())
    }
}

/// open + read(2) in 4 KiB chunks to EOF + close.
fn read_chunks(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// open + mmap of the whole file (PROT_READ, MAP_SHARED); an empty file
/// cannot be mapped and is read instead.
///
/// NOTE: the map is copied out through `/proc/self/mem` (`mem`), which
/// faults its pages in as a program's loads do, but turns a page past an
/// end that moved in meanwhile into EIO instead of a SIGBUS that would kill
/// the test process.
#[allow(unsafe_code)]
fn read_mmap(path: &Path, key: &str, mem: &File) -> Got {
    use std::os::fd::AsRawFd;
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return got_err(&e),
    };
    let len = match f.metadata() {
        Ok(m) => m.len() as usize,
        Err(e) => return Got::Failed(format!("fstat: {e}")),
    };
    if len == 0 {
        return match read_chunks(path) {
            Ok(v) => got_bytes(key, &v),
            Err(e) => got_err(&e),
        };
    }
    // SAFETY: a new read-only shared mapping of an open descriptor, never
    // dereferenced here (read through /proc/self/mem), unmapped below.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        return Got::Failed(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    let mut buf = vec![0u8; len];
    let copied = mem.read_exact_at(&mut buf, p as u64);
    // SAFETY: `p` is the mapping of `len` bytes made above, unmapped once.
    unsafe { libc::munmap(p, len) };
    match copied {
        Ok(()) => got_bytes(key, &buf),
        // NOTE: reading a mapped page past the file's end fails (SIGBUS for
        // a program touching it); the size may be back by the time it is
        // asked again (a GETATTR after the truncating open's commit).
        Err(e) if e.raw_os_error() == Some(libc::EIO) => Got::Shrunk,
        Err(e) => Got::Failed(format!("reading the map: {e}")),
    }
}

/// Reads every key through `dir` in rounds, with `read`, until `stop` or
/// [`ROUNDS`].
fn rust_reader(dir: &Path, reader: &str, stop: &AtomicBool, read: impl Fn(&Path, &str) -> Got) -> Vec<Read1> {
    let mut reads = Vec::new();
    for _ in 0..ROUNDS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        for key in KEYS {
            reads.push(Read1 { reader: reader.to_owned(), key: key.to_owned(), got: read(&dir.join(key), key) });
        }
    }
    reads
}

/// A sh loop that `cat`s every key in rounds until the file `stop` exists
/// (or [`ROUNDS`]), printing for each read `R KEY ok|err LEN` and then the
/// LEN bytes cat wrote (or its error); `scratch` is a file outside the mount.
fn cat_script(scratch: &Path, stop: &Path) -> String {
    let (t, s) = (scratch.display(), stop.display());
    format!(
        "i=0; while [ $i -lt {ROUNDS} ] && [ ! -e {s} ]; do i=$((i + 1)); for k in {keys}; do \
         if cat \"$k\" > {t} 2> {t}.err; then printf 'R %s ok %s\\n' \"$k\" $(wc -c < {t}); cat {t}; \
         else printf 'R %s err %s\\n' \"$k\" $(wc -c < {t}.err); cat {t}.err; fi; done; done",
        keys = KEYS.join(" ")
    )
}

/// Parses what [`cat_script`] printed.
fn parse_cats(out: impl Read, reader: &str) -> Vec<Read1> {
    let mut r = BufReader::new(out);
    let (mut reads, mut line) = (Vec::new(), String::new());
    loop {
        line.clear();
        if r.read_line(&mut line).expect("cat reader's output") == 0 {
            return reads;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let ["R", key, outcome, len] = parts[..] else { panic!("cat reader printed {line:?}") };
        let mut v = vec![0u8; len.parse().expect("length")];
        r.read_exact(&mut v).expect("cat reader's bytes");
        let got = match outcome {
            "ok" => got_bytes(key, &v),
            _ if String::from_utf8_lossy(&v).contains("No such file") => Got::Absent,
            _ => Got::Failed(String::from_utf8_lossy(&v).trim().to_owned()),
        };
        reads.push(Read1 { reader: reader.to_owned(), key: key.to_owned(), got });
    }
}

/// Starts `sh -c script` in `dir` with its stdout piped.
fn spawn_sh(dir: &Path, script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh")
}

/// Waits for `child` within [`kv_tests::SH_TIMEOUT`]; returns its output.
fn wait(mut child: Child, what: &str) -> std::process::Output {
    let deadline = Instant::now() + kv_tests::SH_TIMEOUT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// The values each key held, as the watch reported them.
#[derive(Default)]
struct History {
    /// (key, value digest), `None` for absent.
    held: HashSet<(String, Option<Digest>)>,
    /// Events of the keys read.
    events: usize,
    /// Values the cluster held that no writer wrote whole: (key, revision,
    /// how it starts, length).
    not_whole: Vec<(String, u64, String, usize)>,
}

/// Records every change under `app/` after revision `after` until the watch
/// has gone quiet past revision `until` (0 while unknown).
fn record(client: kv_client::Client, after: u64, until: &AtomicU64) -> History {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut w = client.watch("app", Some(after)).await.expect("watch");
        let mut h = History::default();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match tokio::time::timeout(Duration::from_millis(200), w.next()).await {
                Ok(Ok(Some(ev))) => {
                    let Some(key) = ev.key.strip_prefix("app/").filter(|k| KEYS.contains(k)) else { continue };
                    h.events += 1;
                    let v = ev.entry.as_ref().map(|e| e.value_bytes().expect("a put event carries its value"));
                    if let Some(v) = &v {
                        if !whole(key, v) {
                            let head = String::from_utf8_lossy(&v[..v.len().min(40)]).into_owned();
                            h.not_whole.push((key.to_owned(), ev.revision, head, v.len()));
                        }
                    }
                    h.held.insert((key.to_owned(), v.as_deref().map(digest)));
                }
                Ok(Ok(None)) => panic!("the watch ended"),
                Ok(Err(e)) => panic!("the watch failed: {e}"),
                // Quiet: done once every revision up to `until` came.
                Err(_) => {
                    let u = until.load(Ordering::SeqCst);
                    if u != 0 && w.last_revision().is_some_and(|r| r >= u) {
                        return h;
                    }
                    assert!(Instant::now() < deadline, "the watch never reached revision {u}");
                }
            }
        }
    })
}

/// Ends the readers and the recorder when the test body leaves, by panic
/// too (a scope joins its threads before the panic goes on).
struct Finish<'a> {
    stop: &'a AtomicBool,
    stop_file: &'a Path,
    until: &'a AtomicU64,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::fs::write(self.stop_file, "");
        let _ = self.until.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Seed from `KV_READERS_SEED`, or from the clock (printed either way).
fn seed() -> u64 {
    std::env::var("KV_READERS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| (kv_client::clock::now_ns() as u64).max(7))
}

#[test]
fn every_read_through_either_mount_is_a_value_the_key_held() {
    let seed = seed();
    println!("readers and writers, seed {seed}; replay with KV_READERS_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let k = Kvd::bootstrap(&[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = k.client();
    let mut held = HashSet::new();
    let mut after = 0;
    for key in KEYS {
        let v = value(key, "init", 0, 50);
        held.insert((key.to_owned(), Some(digest(&v))));
        after = rt.block_on(client.put(&format!("app/{key}"), v, &Default::default())).expect("put").revision;
    }
    // (B reads through the kernel's passthrough, A through kvfs)
    let a = Mount::start(&format!("{}/app", k.url), &[]);
    let b = Mount::start(&format!("{}/app", k.url), &["passthrough"]);
    for m in [&a, &b] {
        crate::mount::eventually("both mounts show the keys", || KEYS.iter().all(|key| m.dir.join(key).exists()));
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let stop_file = scratch.path().join("stop");
    let mem = File::open("/proc/self/mem").expect("/proc/self/mem");

    // The writers' scripts, sizes chosen up front from the seed.
    let echo = sh_writer(
        "echo",
        "a-echo",
        &sizes(&mut rng, 120, 64_000),
        "if [ $((i % 2)) = 0 ]; then echo \"$b\" > echo; else printf '%s\\n' \"$b\" > echo; fi",
    );
    // NOTE: `(true)` is a forked child holding the file open: its exit sends
    // a FLUSH while the value lacks its newline.
    let forked = sh_writer(
        "forked",
        "a-fork",
        &sizes(&mut rng, 60, 64_000),
        "{ printf '%s' \"$b\"; (true); printf '\\n'; } > forked",
    );
    let renamed = sh_writer(
        "renamed",
        "b-mv",
        &sizes(&mut rng, 80, 64_000),
        "printf '%s\\n' \"$b\" > .tmp-mv && mv -f .tmp-mv renamed",
    );
    let big: Vec<u64> = (0..24).map(|_| 64_000 + rng.below(MAX_VALUE - 64_000)).collect();
    let renames: Vec<u64> = (0..60).map(|_| size(&mut rng, 64_000)).collect();
    // The API writes `api` (empty too), and now and then the other keys.
    let api: Vec<(&str, u64)> = (0..100)
        .map(|i| match i % 5 {
            4 => (KEYS[rng.below(KEYS.len() as u64) as usize], size(&mut rng, 64_000)),
            _ if rng.below(6) == 0 => ("api", 0),
            _ => ("api", size(&mut rng, 64_000)),
        })
        .collect();

    let stop = AtomicBool::new(false);
    let until = AtomicU64::new(0);
    let (history, reads, writer_fails) = std::thread::scope(|s| {
        let finish = Finish { stop: &stop, stop_file: &stop_file, until: &until };
        let recorder = s.spawn(|| record(k.client(), after, &until));
        // Readers first, on both mounts.
        let mut readers = Vec::new();
        let mut cats = Vec::new();
        for (name, m) in [("A", &a), ("B", &b)] {
            let (stop, mem) = (&stop, &mem);
            readers.push(s.spawn(move || {
                rust_reader(&m.dir, &format!("{name} read(4 KiB)"), stop, |p, key| match read_chunks(p) {
                    Ok(v) => got_bytes(key, &v),
                    Err(e) => got_err(&e),
                })
            }));
            readers.push(
                s.spawn(move || rust_reader(&m.dir, &format!("{name} mmap"), stop, |p, key| read_mmap(p, key, mem))),
            );
            let mut child = spawn_sh(&m.dir, &cat_script(&scratch.path().join(format!("cat-{name}")), &stop_file));
            let out = child.stdout.take().expect("stdout");
            cats.push((child, s.spawn(move || parse_cats(out, &format!("{name} cat")))));
        }
        // Then the writers.
        let shells = [("echo/printf on A", &a, echo), ("forking on A", &a, forked), ("mv -f on B", &b, renamed)]
            .map(|(what, m, script)| (what, spawn_sh(&m.dir, &script)));
        let big_writer = s.spawn(|| {
            for (i, &n) in big.iter().enumerate() {
                let (m, w) = if i % 2 == 0 { (&a, "a-big") } else { (&b, "b-big") };
                std::fs::write(m.dir.join("big"), value("big", w, i as u64 + 1, n)).expect("write big");
            }
        });
        let rename_writer = s.spawn(|| {
            for (i, &n) in renames.iter().enumerate() {
                let tmp = b.dir.join(".tmp-rs");
                std::fs::write(&tmp, value("renamed", "b-rs", i as u64 + 1, n)).expect("write the temp file");
                std::fs::rename(&tmp, b.dir.join("renamed")).expect("rename over renamed");
            }
        });
        let api_writer = s.spawn(|| {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let c = k.client();
            for (i, &(key, n)) in api.iter().enumerate() {
                let v = if n == 0 { Vec::new() } else { value(key, "api", i as u64 + 1, n) };
                rt.block_on(c.put(&format!("app/{key}"), v, &Default::default())).expect("API put");
            }
        });
        let mut fails = Vec::new();
        for (what, child) in shells {
            let out = wait(child, what);
            let n: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(u64::MAX);
            if !out.status.success() || n != 0 {
                fails.push(format!("{what}: {n} failed writes, {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        for (what, w) in [("big", big_writer), ("rename", rename_writer), ("API", api_writer)] {
            w.join().unwrap_or_else(|_| panic!("the {what} writer failed"));
        }
        // The writers are done: the history is complete at this revision.
        until.store(rt.block_on(crate::revision(&k.url)), Ordering::SeqCst);
        drop(finish);
        let mut reads: Vec<Read1> = readers.into_iter().flat_map(|r| r.join().expect("reader")).collect();
        for (child, parser) in cats {
            reads.extend(parser.join().expect("cat reader"));
            wait(child, "a cat reader");
        }
        (recorder.join().expect("recorder"), reads, fails)
    });

    // The verdict.
    let mut history = history;
    history.held.extend(held);
    let mut per_reader: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    let (mut examples, mut shown) = (Vec::new(), HashSet::new());
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &reads {
        let count = per_reader.entry(&r.reader).or_default();
        count.0 += 1;
        let wrong = match &r.got {
            Got::Bytes { digest, whole, head } => {
                let kind = if digest.0 == 0 && r.key != "api" {
                    "empty"
                } else if !whole {
                    "no whole value (a prefix, a mix)"
                } else if !history.held.contains(&(r.key.clone(), Some(*digest))) {
                    "a value the key never held"
                } else {
                    ""
                };
                (!kind.is_empty()).then(|| (kind, format!("{} bytes {head:?}", digest.0)))
            }
            Got::Absent => (!history.held.contains(&(r.key.clone(), None)))
                .then(|| ("ENOENT (the key always existed)", String::new())),
            Got::Failed(e) => Some(("failed", e.clone())),
            Got::Shrunk => {
                count.2 += 1;
                None
            }
        };
        if let Some((kind, what)) = wrong {
            count.1 += 1;
            *kinds.entry(kind).or_default() += 1;
            if shown.insert((kind, r.reader.as_str())) {
                examples.push(format!("{} read {}: {kind}: {what}", r.reader, r.key));
            }
        }
    }
    println!("{} watch events of the keys read, {} distinct values held", history.events, history.held.len());
    println!("reads per reader (all, bad, mmap past a shrunk end): {per_reader:?}");
    println!("bad reads by kind: {kinds:?}");
    // NOTE: what writers publish is the subject of other tests; printed here
    // because an empty or partial revision in the history is what readers
    // then read.
    println!(
        "{} revisions held no whole value a writer wrote, e.g. {:?}",
        history.not_whole.len(),
        history.not_whole.iter().take(5).collect::<Vec<_>>()
    );
    for (reader, (n, _, _)) in &per_reader {
        assert!(*n >= 50, "{reader} read too little to mean anything: {n} reads");
    }
    assert!(
        kinds.is_empty(),
        "{} of {} reads returned bytes that were not one value the key held ({kinds:?}), e.g.:\n{}",
        kinds.values().sum::<usize>(),
        reads.len(),
        examples.join("\n")
    );
    assert!(writer_fails.is_empty(), "writers failed: {writer_fails:?}");

    // Once the writers stop, both mounts, the writers' own included, hold
    // what the cluster holds.
    let want: Vec<(&str, Vec<u8>)> = KEYS
        .iter()
        .map(|key| {
            let v = rt.block_on(client.get(&format!("app/{key}"))).expect("get").expect("the key exists");
            (*key, v.value.to_vec())
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let differ: Vec<String> = [("A", &a), ("B", &b)]
            .iter()
            .flat_map(|(name, m)| {
                want.iter().filter_map(move |(key, v)| match std::fs::read(m.dir.join(key)) {
                    Ok(got) if got == *v => None,
                    Ok(got) => Some(format!(
                        "{name}/{key}: {} bytes {:?}, the cluster {} bytes {:?}",
                        got.len(),
                        String::from_utf8_lossy(&got[..got.len().min(40)]),
                        v.len(),
                        String::from_utf8_lossy(&v[..v.len().min(40)])
                    )),
                    Err(e) => Some(format!("{name}/{key}: {e}")),
                })
            })
            .collect();
        if differ.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the mounts never converged on the cluster's values: {differ:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_descriptor_opened_before_a_change_on_another_mount_reads_the_old_or_the_new_value_whole() {
    for opts in [&[][..], &["passthrough"]] {
        a_descriptor_opened_before_a_change_reads_a_value_whole(opts);
    }
}

fn a_descriptor_opened_before_a_change_reads_a_value_whole(b_opts: &[&str]) {
    let k = Kvd::bootstrap(&[]);
    let a = Mount::start(&format!("{}/app", k.url), &[]);
    let b = Mount::start(&format!("{}/app", k.url), b_opts);
    a.sh_ok("printf 1234567 > f");
    crate::mount::eventually("B shows 1234567", || b.sh("cat f").stdout == b"1234567");
    let mut old = File::open(b.dir.join("f")).expect("open on B");
    a.sh_ok("printf 99 > f");
    crate::mount::eventually("B shows 99 to a new open", || b.sh("cat f").stdout == b"99");
    let mut got = Vec::new();
    old.read_to_end(&mut got).expect("read the old descriptor");
    assert!(
        got == b"1234567" || got == b"99",
        "a descriptor opened on B while f held 1234567 read {:?} after A wrote 99: f never held that",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn the_writers_own_mount_reads_the_old_value_during_an_o_trunc_rewrite_and_the_new_one_after_close() {
    let k = Kvd::bootstrap(&[]);
    let a = Mount::start(&format!("{}/app", k.url), &[]);
    a.sh_ok("printf 1234567 > f");
    assert_eq!(std::fs::read(a.dir.join("f")).expect("read"), b"1234567");
    let path = a.dir.join("f");
    let mut w = std::fs::OpenOptions::new().write(true).truncate(true).open(&path).expect("open O_TRUNC");
    w.write_all(b"9").expect("write");
    let during = String::from_utf8_lossy(&std::fs::read(&path).expect("read during")).into_owned();
    w.write_all(b"9").expect("write");
    kv_tests::close_checked(w).expect("close");
    let after = String::from_utf8_lossy(&std::fs::read(&path).expect("read after close")).into_owned();
    let cluster = rt_get(&k, "app/f");
    assert_eq!(cluster, "99", "the cluster after the close");
    assert_eq!(
        during, "1234567",
        "a read on the writer's mount while the rewrite was open (nothing committed yet) got {during:?} \
         (and {after:?} after the close)"
    );
    assert_eq!(after, "99", "a read on the writer's mount after its close() returned 0");
}

/// Whether a read through `f` is answered while kvfs is stopped (only the
/// kernel can answer it then: passthrough); kvfs is let go on either way.
fn read_while_kvfs_stopped(m: &Mount, f: &File) -> bool {
    let pid = m.pid().expect("kvfs runs").to_string();
    let signal = |s: &str| assert!(Command::new("kill").args([s, &pid]).status().expect("kill").success());
    signal("-STOP");
    let (tx, rx) = std::sync::mpsc::channel();
    let f = f.try_clone().expect("dup");
    std::thread::spawn(move || {
        let mut buf = [0; 64];
        let _ = tx.send(f.read_at(&mut buf, 0).is_ok());
    });
    let answered = rx.recv_timeout(Duration::from_secs(2)).unwrap_or(false);
    signal("-CONT");
    answered
}

#[test]
fn with_passthrough_the_kernel_reads_each_descriptors_version_and_writers_still_publish() {
    let k = Kvd::bootstrap(&[]);
    let a = Mount::start(&format!("{}/app", k.url), &["passthrough"]);
    a.sh_ok("printf 1234567 > f");
    let path = a.dir.join("f");
    let reader = File::open(&path).expect("open for reading");
    let pread = |f: &File| {
        let mut buf = vec![0; 64];
        let n = f.read_at(&mut buf, 0).expect("pread");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(pread(&reader), "1234567");
    assert!(read_while_kvfs_stopped(&a, &reader), "a read waited for kvfs: it did not pass through");
    // A writer of the same inode while the reader holds it: the kernel
    // requires it to pass through too; its writes still come to kvfs.
    let mut w = std::fs::OpenOptions::new().write(true).truncate(true).open(&path).expect("open O_TRUNC");
    w.write_all(b"9").expect("write");
    let during = std::fs::read(&path).expect("read during");
    w.write_all(b"9").expect("write");
    kv_tests::close_checked(w).expect("close");
    assert_eq!(rt_get(&k, "app/f"), "99", "the cluster after the close");
    assert_eq!(String::from_utf8_lossy(&during), "1234567", "a new reader while the rewrite was open");
    assert_eq!(std::fs::read(&path).expect("read after"), b"99", "a new reader after the close");
    assert_eq!(pread(&reader), "1234567", "the descriptor opened before the rewrite");
    // And in place, without O_TRUNC, while another reader holds the new version.
    let reader2 = File::open(&path).expect("open for reading");
    let w = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open O_RDWR");
    w.write_at(b"X", 0).expect("pwrite");
    assert_eq!(pread(&w), "X9", "the writer reads its own bytes");
    kv_tests::close_checked(w).expect("close");
    assert_eq!(rt_get(&k, "app/f"), "X9");
    assert_eq!(pread(&reader2), "99", "the descriptor opened before the write");
    assert_eq!(pread(&reader), "1234567");
    assert_eq!(std::fs::read(&path).expect("read after"), b"X9");
}

#[test]
fn a_file_created_and_read_while_open_reads_the_same_with_passthrough_as_without() {
    // A created file is committed into its own inode at each close of a
    // descriptor, and a scratch file (`*~`, kept local) takes every write
    // in place, a file renamed to one too: readers in between must see
    // what they see without passthrough, and no open may fail.
    let k = Kvd::bootstrap(&[]);
    let plain = Mount::start(&format!("{}/plain", k.url), &[]);
    let through = Mount::start(&format!("{}/through", k.url), &["passthrough"]);
    let script = "exec 3>log; echo a >&3; cat log; echo b >&3; cat log; exec 4<log; echo c >&3; cat log;                   exec 3>&-; cat log; cat <&4; exec 4<&-;                   python3 -c 'import mmap,sys; f=open(\"log\",\"rb\"); m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ);                   g=open(\"log\",\"r+b\"); g.write(b\"Z\"); g.close(); print(m[:].decode(), end=\"\"); print(open(\"log\").read(), end=\"\")';                   cat log; \
                  printf 1 > x~; exec 5<x~; printf 22 > x~; cat x~; cat <&5; exec 5<&-; cat x~; \
                  printf 333 > f; exec 6<f; mv f f~; echo x >> f~; cat f~; cat <&6; exec 6<&-; cat f~";
    let want = plain.sh_ok(script);
    let got = through.sh_ok(script);
    assert!(!want.is_empty(), "the script printed nothing");
    assert_eq!(got, want, "with passthrough (left) against without (right)");
    assert_eq!(rt_get(&k, "through/log"), rt_get(&k, "plain/log"));
}

/// The key's value through the API, as text.
fn rt_get(k: &Kvd, key: &str) -> String {
    let v = tokio::runtime::Runtime::new().expect("runtime").block_on(k.client().get(key)).expect("get");
    String::from_utf8_lossy(&v.expect("the key exists").value).into_owned()
}

#[test]
fn the_checker_tells_whole_values_from_prefixes_mixes_and_empty_files() {
    let (v, w) = (value("echo", "a", 7, 300), value("echo", "b", 8, 300));
    assert!(whole("echo", &v) && whole("echo", &w));
    assert!(!whole("renamed", &v), "a value of another key");
    assert!(!whole("echo", &v[..299]) && !whole("echo", &v[..2]) && !whole("echo", b""), "a prefix");
    let mixed = [&v[..150], &w[150..]].concat();
    assert!(!whole("echo", &mixed), "a mix of two values");
    assert!(whole("api", b"") && !whole("api", b"\n"));
    assert_ne!(digest(&v), digest(&w));
}
