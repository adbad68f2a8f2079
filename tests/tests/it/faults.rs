//! DESIGN.md §3 under faults: concurrent clients doing get / put / CAS /
//! delete on a few keys of a three-member cluster while the leader is killed
//! with `kill -9` and restarted and a follower is frozen past the election
//! timeout; then every key's history must be linearizable.
//!
//! The seed is printed; `KV_FAULT_SEED=N` replays the same choices and
//! `KV_FAULT_SECS` makes the run longer (a soak).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_client::{Client, PutOptions};
use kv_tests::linearizability::{check, Event, Op};
use kv_tests::Kvd;

const KEYS: [&str; 3] = ["lin/a", "lin/b", "lin/c"];

/// A small deterministic generator (xorshift), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type History = Arc<Mutex<Vec<(usize, Event)>>>;

/// One client: operations one at a time until `stop`, each recorded with
/// its invocation and completion (none when the outcome is unknown).
async fn client_loop(id: usize, client: Client, seed: u64, start: Instant, stop: Instant, history: History) {
    let mut rng = Rng(seed | 1);
    let now = || start.elapsed().as_nanos() as u64;
    let mut n = 0u64;
    while Instant::now() < stop {
        n += 1;
        let k = rng.below(KEYS.len() as u64) as usize;
        let key = KEYS[k];
        let invoked = now();
        let (op, completed) = match rng.below(10) {
            0..=3 => match tokio::time::timeout(Duration::from_secs(5), client.get(key)).await {
                Ok(Ok(v)) => (Op::Read(v.map(|v| String::from_utf8_lossy(&v.value).into_owned())), Some(now())),
                // A failed read changed nothing: leave it out.
                _ => continue,
            },
            4..=6 => {
                let value = format!("c{id}-{n}");
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.put(key, value.clone(), &PutOptions::default()),
                )
                .await;
                (Op::Write(value), matches!(r, Ok(Ok(_))).then(now))
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
                let r = tokio::time::timeout(Duration::from_secs(5), client.put(key, value.clone(), &opts)).await;
                let (ok, done) = match r {
                    Ok(Ok(_)) => (true, Some(now())),
                    Ok(Err(e)) if e.status() == Some(412) => (false, Some(now())),
                    _ => (true, None),
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
                    Ok(Err(e)) if e.status() == Some(404) => (Op::Read(None), Some(now())),
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

#[tokio::test]
async fn histories_under_kills_and_pauses_are_linearizable() {
    let seed: u64 = std::env::var("KV_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7)
    });
    let secs: u64 = std::env::var("KV_FAULT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    println!("fault injection seed {seed} ({secs} s); replay with KV_FAULT_SEED={seed}");
    let extra = ["--election-timeout-ms", "300", "--heartbeat-ms", "50", "--request-timeout-ms", "3000"];
    let first = Kvd::bootstrap(&extra);
    let mut nodes = vec![first];
    for id in [2, 3] {
        let mut n = Kvd::empty(id, &extra);
        let add =
            kv_client::AddMember { id, peer_url: n.peer_url.clone(), client_url: Some(n.url.clone()), learner: false };
        nodes[0].client().add_member(&add).await.expect("add member");
        n.wait_ready();
        nodes.push(n);
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let history: History = Arc::default();
    let start = Instant::now();
    let stop = start + Duration::from_secs(secs);
    let mut rng = Rng(seed | 1);
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let mut order = urls.clone();
            order.rotate_left(i % urls.len());
            let c = Client::new(&order).expect("client");
            tokio::spawn(client_loop(i, c, rng.next(), start, stop, history.clone()))
        })
        .collect();

    // Faults, one after another, until the clients stop.
    let mut faults = Vec::new();
    while Instant::now() + Duration::from_secs(2) < stop {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(500))).await;
        let Some(l) = leader_of(&nodes).await else { continue };
        if rng.below(2) == 0 {
            faults.push(format!("kill -9 leader {}", nodes[l].id));
            nodes[l].kill9();
            tokio::time::sleep(Duration::from_millis(300 + rng.below(700))).await;
            nodes[l].start_again();
        } else {
            let f = (l + 1 + rng.below(2) as usize) % nodes.len();
            faults.push(format!("pause node {} for >election timeout", nodes[f].id));
            nodes[f].pause();
            tokio::time::sleep(Duration::from_millis(700 + rng.below(500))).await;
            nodes[f].resume();
        }
    }
    for c in clients {
        c.await.expect("client task");
    }
    let h = history.lock().expect("history").clone();
    let known = h.iter().filter(|(_, e)| e.completed.is_some()).count();
    println!("faults: {faults:?}; {} operations, {known} with a known outcome", h.len());
    assert!(known > 50, "too few operations completed: {known}");
    for (k, key) in KEYS.iter().enumerate() {
        let mut events: Vec<Event> = h.iter().filter(|(i, _)| *i == k).map(|(_, e)| e.clone()).collect();
        events.sort_by_key(|e| e.invoked);
        assert!(check(None, &events), "history of {key} is not linearizable (seed {seed}): {events:#?}");
    }
}
