//! DESIGN.md §3 under faults: concurrent clients doing get / put / CAS /
//! delete on a few keys of a 3- and a 5-member cluster, each member in a
//! network namespace of its own, while members are killed with `kill -9` and
//! restarted, lose what they had not fsync'd in a power cut (one member, the
//! leader included, or all at once; back at once or after a while), are
//! frozen past the election timeout, cut off by network partitions, and
//! removed and added back. Then every key's history must be
//! linearizable and every acknowledged write of a unique key present on
//! every member.
//!
//! The seed is printed; `KV_FAULT_SEED=N` replays the same fault choices and
//! `KV_FAULT_SECS` makes the run longer (the soak in the README).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use kv_client::{Client, ErrorCode, PutOptions};
use kv_tests::linearizability::{check, Event, Op};
use kv_tests::net::Net;
use kv_tests::{Kvd, Mount};

const KEYS: [&str; 3] = ["lin/a", "lin/b", "lin/c"];

/// A small deterministic generator (xorshift), so a seed replays a run.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type History = Arc<Mutex<Vec<(usize, Event)>>>;
/// Unique keys whose put was acknowledged.
type Acked = Arc<Mutex<Vec<String>>>;

/// How a write ended.
enum Outcome {
    /// Acknowledged.
    Done,
    /// Its compare failed (412): it wrote nothing.
    Refused,
    /// Refused outright (503 and the like) on its first try: nothing was
    /// written (DESIGN.md §4).
    NotApplied,
    /// No answer settled it.
    Unknown,
}

/// Whether an error answer says that nothing was written (DESIGN.md §4):
/// a refusal such as `unavailable`, not `unknown_outcome` or `internal`.
fn wrote_nothing(e: &kv_client::Error) -> bool {
    e.code().is_some_and(|c| !matches!(c, ErrorCode::UnknownOutcome | ErrorCode::Internal))
}

/// A put that, when its outcome is unknown (a timeout, a broken connection,
/// a 504, a 503 after a try that may have applied), is sent again with the
/// same request id until an answer settles it (DESIGN.md §4), for at most
/// 20 s: the history then has few operations of unknown outcome, and the
/// linearizability search stays small.
async fn write(client: &Client, key: &str, value: &str, mut opts: PutOptions) -> Outcome {
    opts.request_id = Some(client.new_request_id());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut first = true;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), client.put(key, value.to_owned(), &opts)).await {
            Ok(Ok(_)) => return Outcome::Done,
            Ok(Err(e)) if e.is(&ErrorCode::CompareFailed) => return Outcome::Refused,
            Ok(Err(e)) if first && wrote_nothing(&e) => return Outcome::NotApplied,
            _ => {}
        }
        first = false;
        if Instant::now() > deadline {
            return Outcome::Unknown;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One client: operations one at a time until `stop`, each recorded with
/// its invocation and completion (none when the outcome is unknown).
async fn client_loop(
    id: usize,
    client: Client,
    seed: u64,
    start: Instant,
    stop: Instant,
    history: History,
    acked: Acked,
) {
    let mut rng = Rng(seed | 1);
    let now = || start.elapsed().as_nanos() as u64;
    let mut n = 0u64;
    while Instant::now() < stop {
        n += 1;
        let k = rng.below(KEYS.len() as u64) as usize;
        let key = KEYS[k];
        let invoked = now();
        if rng.below(8) == 0 {
            // A put of a key of its own: it must survive whatever comes.
            let key = format!("ack/c{id}-{n}");
            let r = tokio::time::timeout(Duration::from_secs(5), client.put(&key, "x", &PutOptions::default())).await;
            if matches!(r, Ok(Ok(_))) {
                acked.lock().expect("acked").push(key);
            }
            continue;
        }
        let (op, completed) = match rng.below(10) {
            0..=3 => match tokio::time::timeout(Duration::from_secs(5), client.get(key)).await {
                Ok(Ok(v)) => (Op::Read(v.map(|v| String::from_utf8_lossy(&v.value).into_owned())), Some(now())),
                // A failed read changed nothing: leave it out.
                _ => continue,
            },
            4..=6 => {
                let value = format!("c{id}-{n}");
                match write(&client, key, &value, PutOptions::default()).await {
                    Outcome::Done => (Op::Write(value), Some(now())),
                    Outcome::Refused | Outcome::NotApplied => continue,
                    Outcome::Unknown => (Op::Write(value), None),
                }
            }
            7..=8 => {
                // Compare-and-set over what a read just returned.
                let Ok(Ok(cur)) = tokio::time::timeout(Duration::from_secs(5), client.get(key)).await else { continue };
                history.lock().expect("history").push((
                    k,
                    Event {
                        op: Op::Read(cur.as_ref().map(|v| String::from_utf8_lossy(&v.value).into_owned())),
                        invoked,
                        completed: Some(now()),
                    },
                ));
                let invoked = now();
                let value = format!("c{id}-{n}");
                let opts = match &cur {
                    Some(v) => PutOptions { if_match: Some(v.meta.mod_revision), ..Default::default() },
                    None => PutOptions { create_only: true, ..Default::default() },
                };
                let expected = cur.map(|v| String::from_utf8_lossy(&v.value).into_owned());
                let (ok, done) = match write(&client, key, &value, opts).await {
                    Outcome::Done => (true, Some(now())),
                    Outcome::Refused => (false, Some(now())),
                    Outcome::NotApplied => continue,
                    Outcome::Unknown => (true, None),
                };
                history
                    .lock()
                    .expect("history")
                    .push((k, Event { op: Op::Cas { expected, new: value, ok }, invoked, completed: done }));
                continue;
            }
            _ => {
                let r = tokio::time::timeout(Duration::from_secs(5), client.delete(key, false, None)).await;
                match r {
                    Ok(Ok(_)) => (Op::Delete, Some(now())),
                    // Not found: a delete of an absent key is a read of "absent".
                    Ok(Err(e)) if e.is(&ErrorCode::NotFound) => (Op::Read(None), Some(now())),
                    Ok(Err(e)) if wrote_nothing(&e) => continue,
                    _ => (Op::Delete, None),
                }
            }
        };
        history.lock().expect("history").push((k, Event { op, invoked, completed }));
    }
}

async fn leader_of(nodes: &[Kvd]) -> Option<usize> {
    for n in nodes.iter().filter(|n| n.running()) {
        if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(2), n.client().cluster()).await {
            return info.leader.and_then(|l| nodes.iter().position(|n| n.id == l));
        }
    }
    None
}

/// Whether `id` is in the membership, as the members report it.
async fn is_member(nodes: &[Kvd], id: u64) -> bool {
    for _ in 0..50 {
        if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(2), client_of(nodes).cluster()).await {
            return info.members.iter().any(|m| m.id == id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// A client for every member.
fn client_of(nodes: &[Kvd]) -> Client {
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    Client::new(&urls).expect("client")
}

/// Seed from the environment, or from the clock (printed either way).
fn seed() -> u64 {
    std::env::var("KV_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| (kv_client::clock::now_ns() as u64).max(7))
}

fn secs(default: u64) -> u64 {
    std::env::var("KV_FAULT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

const EXTRA: [&str; 6] = ["--election-timeout-ms", "300", "--heartbeat-ms", "50", "--request-timeout-ms", "3000"];
/// For power cuts: an election timeout that a member cut off and started
/// again at once comes back within (a restart of kvd takes a few hundred
/// ms), so that a leader can come back before anyone else is elected.
const LEASED: [&str; 6] = ["--election-timeout-ms", "1500", "--heartbeat-ms", "100", "--request-timeout-ms", "3000"];

/// Starts `size` members, one per namespace of `net` (or on loopback).
async fn cluster(net: Option<&Net>, size: usize, extra: &[&str]) -> Vec<Kvd> {
    let mut nodes = vec![match net {
        Some(net) => Kvd::bootstrap_in(net, 0, extra),
        None => Kvd::bootstrap(extra),
    }];
    for i in 1..size {
        let id = i as u64 + 1;
        let mut n = match net {
            Some(net) => Kvd::empty_in(net, i, id, extra),
            None => Kvd::empty(id, extra),
        };
        nodes[0].client().add_member(&n.add_request()).await.expect("add member");
        n.wait_ready();
        nodes.push(n);
    }
    nodes
}

/// A kind of fault [`inject`] knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `kill -9` of one member, started again after a while.
    Kill,
    /// SIGSTOP of one member past the election timeout.
    Pause,
    /// The leader alone, or with a minority, on one side of a partition.
    Partition,
    /// Messages from the leader to one member lost, not the replies.
    OneWay,
    /// A follower removed and wiped (added back at the next turn).
    Membership,
    /// A power cut of one member, the leader or another.
    PowerCut,
    /// A power cut of every member at once.
    PowerCutAll,
}

use Fault::*;

/// Every kind of fault.
const ALL_FAULTS: [Fault; 7] = [Kill, Pause, Partition, OneWay, Membership, PowerCut, PowerCutAll];
/// The power cuts.
const POWER_CUTS: [Fault; 2] = [PowerCut, PowerCutAll];

/// One fault of the `kinds` given, chosen by `rng`, injected and undone;
/// returns what it was.
async fn inject(
    rng: &mut Rng,
    kinds: &[Fault],
    net: &mut Net,
    nodes: &mut [Kvd],
    removed: &mut Option<usize>,
) -> Option<String> {
    let size = nodes.len();
    let l = leader_of(nodes).await?;
    let pause = |rng: &mut Rng| Duration::from_millis(700 + rng.below(800));
    // A member taken out earlier comes back first.
    if let Some(r) = removed.take() {
        let add = nodes[r].add_request();
        let res = tokio::time::timeout(Duration::from_secs(20), client_of(nodes).add_member(&add)).await;
        return Some(match res {
            Ok(Ok(_)) => format!("add node {} back", nodes[r].id),
            other => {
                *removed = Some(r);
                format!("adding node {} back failed: {other:?}", nodes[r].id)
            }
        });
    }
    let other = (l + 1 + rng.below(size as u64 - 1) as usize) % size;
    let victim = if rng.below(2) == 0 { l } else { other };
    Some(match kinds[rng.below(kinds.len() as u64) as usize] {
        Kill => {
            nodes[victim].kill9();
            tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))).await;
            nodes[victim].start_again();
            format!("kill -9 node {} (leader: {})", nodes[victim].id, victim == l)
        }
        Pause => {
            nodes[victim].pause();
            tokio::time::sleep(pause(rng)).await;
            nodes[victim].resume();
            format!("pause node {} (leader: {})", nodes[victim].id, victim == l)
        }
        Partition => {
            // The leader alone on one side, or with a minority.
            let mut side = vec![l];
            while side.len() < (size - 1) / 2 && rng.below(2) == 0 {
                let o = (l + 1 + rng.below(size as u64 - 1) as usize) % size;
                if !side.contains(&o) {
                    side.push(o);
                }
            }
            net.partition(&side);
            tokio::time::sleep(pause(rng)).await;
            net.heal();
            let ids: Vec<u64> = side.iter().map(|&i| nodes[i].id).collect();
            format!("partition {ids:?} (with the leader) from the rest")
        }
        OneWay => {
            net.cut_one_way(l, other);
            tokio::time::sleep(pause(rng)).await;
            net.heal();
            format!("drop leader {} -> node {}", nodes[l].id, nodes[other].id)
        }
        Membership => {
            let res =
                tokio::time::timeout(Duration::from_secs(10), client_of(nodes).remove_member(nodes[other].id)).await;
            // NOTE: a remove that timed out may still have happened.
            let gone = matches!(res, Ok(Ok(_))) || !is_member(nodes, nodes[other].id).await;
            match res {
                _ if gone => {
                    nodes[other].kill9();
                    nodes[other].wipe();
                    nodes[other].start_again();
                    *removed = Some(other);
                    format!("remove node {} and wipe it", nodes[other].id)
                }
                r => format!("removing node {} failed: {r:?}", nodes[other].id),
            }
        }
        PowerCut => power_cut(rng, &mut nodes[victim..=victim], victim == l).await,
        PowerCutAll => power_cut(rng, nodes, true).await,
    })
}

/// A power cut of `nodes` at once (tests/failsync): each loses what it had
/// not fsync'd; they come back at once (within the followers' lease) or
/// after a while.
async fn power_cut(rng: &mut Rng, nodes: &mut [Kvd], leader: bool) -> String {
    // NOTE: fjall writes its journal out just before each fsync, so a cut at
    // a random instant rarely finds anything unsynced; a disk that stalled a
    // moment before the cut leaves the writes of that moment in the page
    // cache, where the cut takes them (the sequence of issue 19).
    let stalled = Duration::from_millis(rng.below(300));
    for n in nodes.iter() {
        n.stall_fsync(true);
    }
    tokio::time::sleep(stalled).await;
    let mut lost = Vec::new();
    for n in nodes.iter_mut() {
        lost.push((n.id, n.power_cut().bytes));
    }
    let wait = if rng.below(2) == 0 { rng.below(50) } else { 300 + rng.below(1200) };
    tokio::time::sleep(Duration::from_millis(wait)).await;
    for n in nodes.iter_mut() {
        n.start_again();
    }
    format!(
        "power cut of (node, unsynced bytes lost) {lost:?} (leader among them: {leader}) after a {} ms fsync stall, \
         back after {wait} ms",
        stalled.as_millis()
    )
}

/// After a power cut: once every member is ready again, every write
/// acknowledged so far is there (a linearizable list through any member).
async fn acked_writes_survived(nodes: &[Kvd], acked: &Acked, seed: u64) {
    let deadline = Instant::now() + kv_tests::READY_TIMEOUT;
    for n in nodes {
        let url = format!("{}/health/ready", n.url);
        while kv_tests::http_status(&url, None) != Some(200) {
            assert!(Instant::now() < deadline, "node {} not ready in time after a power cut", n.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let before = acked.lock().expect("acked").clone();
    let opts = kv_client::ListOptions { recursive: true, ..Default::default() };
    let listed = client_of(nodes).list("ack", &opts).await.expect("list ack/ after a power cut");
    let have: std::collections::HashSet<&str> = listed.entries.iter().map(|e| e.key.as_str()).collect();
    let lost: Vec<&String> = before.iter().filter(|k| !have.contains(k.as_str())).collect();
    assert!(lost.is_empty(), "acknowledged writes lost in a power cut (seed {seed}): {lost:?}");
}

/// Runs clients against a `size`-member cluster under faults, then checks
/// the histories and the acknowledged writes.
async fn run(size: usize, default_secs: u64, kinds: &[Fault], extra: &[&str]) {
    let seed = seed();
    let secs = secs(default_secs);
    println!("fault injection {kinds:?}, {size} members, seed {seed} ({secs} s); replay with KV_FAULT_SEED={seed}");
    let mut net = Net::new(size);
    let mut nodes = cluster(Some(&net), size, extra).await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let history: History = Arc::default();
    let acked: Acked = Arc::default();
    let start = Instant::now();
    let stop = start + Duration::from_secs(secs);
    let mut rng = Rng(seed | 1);
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let mut order = urls.clone();
            order.rotate_left(i % urls.len());
            let c = Client::new(&order).expect("client");
            tokio::spawn(client_loop(i, c, rng.next(), start, stop, history.clone(), acked.clone()))
        })
        .collect();

    // Faults, one after another, until the clients stop.
    let mut faults = Vec::new();
    let mut removed = None;
    while Instant::now() + Duration::from_secs(2) < stop {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(500))).await;
        faults.extend(inject(&mut rng, kinds, &mut net, &mut nodes, &mut removed).await);
        // NOTE: only where every fault is a power cut: a member removed in a
        // mixed run is not ready until it is added back.
        if kinds == POWER_CUTS {
            acked_writes_survived(&nodes, &acked, seed).await;
        }
    }
    for c in clients {
        c.await.expect("client task");
    }
    if let Some(r) = removed {
        client_of(&nodes).add_member(&nodes[r].add_request()).await.expect("add the removed member back");
    }
    for n in nodes.iter_mut() {
        n.wait_ready();
    }
    let h = history.lock().expect("history").clone();
    let known = h.iter().filter(|(_, e)| e.completed.is_some()).count();
    println!("faults: {faults:#?}\n{} operations, {known} with a known outcome", h.len());
    assert!(known > 50, "too few operations completed: {known}");
    for (k, key) in KEYS.iter().enumerate() {
        let mut events: Vec<Event> = h.iter().filter(|(i, _)| *i == k).map(|(_, e)| e.clone()).collect();
        events.sort_by_key(|e| e.invoked);
        assert!(check(None, &events), "history of {key} is not linearizable (seed {seed}): {events:#?}");
    }

    // Every acknowledged unique write, on every member, by a linearizable
    // list through that member.
    let acked = acked.lock().expect("acked").clone();
    assert!(!acked.is_empty(), "no unique write was acknowledged");
    let opts = kv_client::ListOptions { recursive: true, ..Default::default() };
    for n in &nodes {
        let listed = n.client().list("ack", &opts).await.expect("list ack/");
        assert!(!listed.more, "more acknowledged keys than one page holds");
        let have: std::collections::HashSet<&str> = listed.entries.iter().map(|e| e.key.as_str()).collect();
        let lost: Vec<&String> = acked.iter().filter(|k| !have.contains(k.as_str())).collect();
        assert!(lost.is_empty(), "node {} lost acknowledged writes (seed {seed}): {lost:?}", n.id);
    }
    println!("{} acknowledged unique writes present on all {size} members", acked.len());
}

#[tokio::test]
async fn three_members_under_kills_pauses_partitions_and_membership_changes() {
    run(3, 10, &ALL_FAULTS, &EXTRA).await;
}

#[tokio::test]
async fn three_members_under_power_cuts() {
    run(3, 10, &POWER_CUTS, &LEASED).await;
}

#[tokio::test]
async fn five_members_under_power_cuts() {
    run(5, 10, &POWER_CUTS, &LEASED).await;
}

#[tokio::test]
async fn five_members_under_kills_pauses_partitions_and_membership_changes() {
    run(5, 10, &ALL_FAULTS, &EXTRA).await;
}

/// Creates `path` with `data` the way a program does (open, write, close)
/// and reports what `close()` said, which std's `drop` would swallow.
fn write_and_close(path: &Path, data: &str) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data.as_bytes())?;
    kv_tests::close_checked(f)
}

/// What one writer saw: file number → whether its `close()` returned 0.
type Closes = Vec<(u64, bool)>;

/// Writes `w{m}/f{n}` files and rewrites `w{m}/counter` with `n`, one after
/// another, until `stop`.
fn mount_writer(dir: &Path, m: usize, stop: &AtomicBool) -> Closes {
    let mut closes = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let ok = write_and_close(&dir.join(format!("w{m}/f{n}")), &format!("{m}-{n}\n")).is_ok();
        closes.push((n, ok));
        let _ = write_and_close(&dir.join(format!("w{m}/counter")), &n.to_string());
    }
    closes
}

/// Reads the other writer's counter through this mount until `stop`; the
/// value must never go back, and never be empty: the counter always holds a
/// number (DESIGN.md §6, what a reader gets). Returns how many reads were
/// made.
///
/// IMPORTANT: an empty read is a failure. Other tests of this process fork
/// children all the time, and a child holds copies of the writer's
/// descriptors until it execs; closing the copy of a counter just opened
/// with O_TRUNC sends a FLUSH of the still empty buffer, which must publish
/// nothing (only the last close of a handle commits), and readers must not
/// see the file empty in between, unlike a local file between the O_TRUNC
/// and the write.
///
/// NOTE: the writer rewrites its counter one value after another and the
/// only fault is `kill -9`, so a write whose `close()` failed is either
/// lost with its leader or committed before the next one: a smaller value
/// after a larger one can only be a stale view.
fn counter_reader(dir: &Path, other: usize, stop: &AtomicBool) -> usize {
    let path = dir.join(format!("w{other}/counter"));
    let (mut seen, mut reads) = (0u64, 0);
    while !stop.load(Ordering::Relaxed) {
        if let Ok(text) = std::fs::read_to_string(&path) {
            assert!(!text.is_empty(), "{} read the counter empty after {reads} reads (last {seen})", dir.display());
            let v: u64 = text.trim().parse().unwrap_or_else(|_| panic!("counter holds {text:?}"));
            assert!(v >= seen, "{} showed counter {v} after {seen}", dir.display());
            seen = v;
            reads += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    reads
}

#[test]
fn mounts_keep_what_close_acknowledged_while_the_leader_is_killed() {
    let seed = seed();
    let secs = secs(10);
    println!("mount faults, seed {seed} ({secs} s); replay with KV_FAULT_SEED={seed}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut nodes = rt.block_on(cluster(None, 3, &EXTRA));
    let url = |i: usize| nodes[i].url.clone();
    let mounts = [
        Mount::start(&format!("{}/mt", url(0)), &[&format!("endpoints={}+{}", url(1), url(2))]),
        Mount::start(&format!("{}/mt", url(1)), &[&format!("endpoints={}+{}", url(2), url(0))]),
    ];
    for (m, mount) in mounts.iter().enumerate() {
        mount.sh_ok(&format!("mkdir w{m} && echo 0 > w{m}/counter"));
    }
    let stop = &AtomicBool::new(false);
    let mut rng = Rng(seed | 1);
    let mut kills = Vec::new();
    let (closes, reads) = std::thread::scope(|s| {
        let writers: Vec<_> =
            mounts.iter().enumerate().map(|(m, mt)| s.spawn(move || mount_writer(&mt.dir, m, stop))).collect();
        let readers: Vec<_> =
            mounts.iter().enumerate().map(|(m, mt)| s.spawn(move || counter_reader(&mt.dir, 1 - m, stop))).collect();
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() + Duration::from_secs(2) < end {
            std::thread::sleep(Duration::from_millis(800 + rng.below(700)));
            let Some(l) = rt.block_on(leader_of(&nodes)) else { continue };
            nodes[l].kill9();
            kills.push(nodes[l].id);
            std::thread::sleep(Duration::from_millis(400 + rng.below(1000)));
            nodes[l].start_again();
        }
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        stop.store(true, Ordering::Relaxed);
        let closes: Vec<Closes> = writers.into_iter().map(|w| w.join().expect("writer")).collect();
        let reads: Vec<usize> = readers.into_iter().map(|r| r.join().expect("reader")).collect();
        (closes, reads)
    });
    for n in nodes.iter_mut() {
        n.wait_ready();
    }
    println!("leaders killed: {kills:?}; counter reads per mount: {reads:?}");

    let opts = kv_client::ListOptions { recursive: true, values: true, ..Default::default() };
    let listed = rt.block_on(client_of(&nodes).list("mt", &opts)).expect("list");
    let stored: std::collections::HashMap<&str, &str> =
        listed.entries.iter().map(|e| (e.key.as_str(), e.value.as_deref().unwrap_or(""))).collect();
    for (m, closes) in closes.iter().enumerate() {
        let failed = closes.iter().filter(|(_, ok)| !ok).count();
        println!("mount {m}: {} files, {failed} close() or open() failures", closes.len());
        assert!(closes.len() > 20, "mount {m} wrote too little: {}", closes.len());
        for &(n, ok) in closes {
            let key = format!("mt/w{m}/f{n}");
            let want = format!("{m}-{n}\n");
            match stored.get(key.as_str()) {
                Some(v) => assert!(
                    *v == want || (!ok && v.is_empty()),
                    "{key} holds {v:?}, not {want:?} (close returned 0: {ok})"
                ),
                None => assert!(!ok, "{key}: close() returned 0 but the file is gone (seed {seed})"),
            }
        }
        let attempted = closes.len() as u64;
        for k in stored.keys().filter(|k| k.starts_with(&format!("mt/w{m}/f"))) {
            let n: u64 = k.rsplit('f').next().and_then(|n| n.parse().ok()).unwrap_or(0);
            assert!((1..=attempted).contains(&n), "{k} was never written");
        }
    }
}
