//! One run of an operation shared by every caller waiting for it, the way
//! linearizable reads share a read index (etcd batches them alike).
//!
//! A caller that arrives while a round runs waits for the next round, which
//! starts after it arrived, so every caller gets an answer obtained after its
//! call began. The callers drive the rounds themselves: the first one runs a
//! round for everyone queued, and when it is done (or dropped, e.g. by a
//! client's timeout) the next waiter takes over.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

enum Msg<T> {
    /// The round's answer.
    Done(T),
    /// The previous driver is gone: run the next round.
    Drive,
}

struct Queue<T> {
    /// A caller is running a round.
    running: bool,
    /// Callers waiting for the next round.
    waiting: VecDeque<oneshot::Sender<Msg<T>>>,
}

/// Shares rounds of one operation between concurrent callers.
pub struct Rounds<T> {
    queue: Mutex<Queue<T>>,
}

impl<T> Default for Rounds<T> {
    fn default() -> Self {
        Rounds { queue: Mutex::new(Queue { running: false, waiting: VecDeque::new() }) }
    }
}

impl<T: Clone> Rounds<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a caller for the next round; it drives that round if none runs.
    fn enqueue(&self, drive: bool) -> Waiter<'_, T> {
        let (tx, rx) = oneshot::channel();
        let mut q = self.lock();
        q.waiting.push_back(tx);
        let drive = drive || !std::mem::replace(&mut q.running, true);
        Waiter { rounds: self, rx, drive }
    }

    /// Lets the first live waiter drive the next round, or marks that none runs.
    fn hand_over(&self) {
        let mut q = self.lock();
        while let Some(tx) = q.waiting.pop_front() {
            if tx.send(Msg::Drive).is_ok() {
                return;
            }
        }
        q.running = false;
    }

    /// The answer of a run of `round` that started after this call did.
    pub async fn run<F, Fut>(&self, round: F) -> T
    where
        F: Fn() -> Fut,
        Fut: Future<Output = T>,
    {
        let mut waiter = self.enqueue(false);
        loop {
            if waiter.drive {
                let mut driver = Driver { rounds: self, batch: std::mem::take(&mut self.lock().waiting) };
                let answer = round().await;
                for tx in driver.batch.drain(..) {
                    let _ = tx.send(Msg::Done(answer.clone()));
                }
            }
            waiter = match (&mut waiter.rx).await {
                Ok(Msg::Done(answer)) => return answer,
                // `running` stays set: this caller now drives.
                Ok(Msg::Drive) => self.enqueue(true),
                // The round it waited for was abandoned with its driver.
                Err(_) => self.enqueue(false),
            };
        }
    }
}

/// A queued caller. Dropped (say by a client's timeout) after it was told
/// to drive, it passes that on, or no round would ever run again.
struct Waiter<'a, T: Clone> {
    rounds: &'a Rounds<T>,
    rx: oneshot::Receiver<Msg<T>>,
    drive: bool,
}

impl<T: Clone> Drop for Waiter<'_, T> {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(Msg::Drive) = self.rx.try_recv() {
            self.rounds.hand_over();
        }
    }
}

/// The caller running a round; hands the next round over when it goes.
struct Driver<'a, T: Clone> {
    rounds: &'a Rounds<T>,
    batch: VecDeque<oneshot::Sender<Msg<T>>>,
}

impl<T: Clone> Drop for Driver<'_, T> {
    fn drop(&mut self) {
        // The callers of an abandoned round see their sender dropped and queue again.
        self.batch.clear();
        self.rounds.hand_over();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::Rounds;

    /// A round that counts its starts and answers with its number.
    async fn counted(starts: &AtomicU64, pause: Duration) -> u64 {
        let n = starts.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(pause).await;
        n
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_share_rounds_that_start_after_they_call() {
        let rounds = Arc::new(Rounds::default());
        let starts = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let (rounds, starts) = (rounds.clone(), starts.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i % 8)).await;
                let before = starts.load(Ordering::SeqCst);
                let answer = rounds.run(|| counted(&starts, Duration::from_millis(5))).await;
                assert!(answer > before, "answer from round {answer}, but round {before} had started before the call");
            }));
        }
        for t in tasks {
            t.await.expect("caller");
        }
        let n = starts.load(Ordering::SeqCst);
        assert!((1..64).contains(&n), "64 callers ran {n} rounds");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_driver_or_waiter_does_not_stall_the_others() {
        let rounds = Arc::new(Rounds::default());
        let starts = Arc::new(AtomicU64::new(0));
        let pause = Duration::from_millis(50);
        // A drives and gives up mid-round; B and C wait behind it, and C
        // gives up too, possibly after being told to drive.
        let a = {
            let (rounds, starts) = (rounds.clone(), starts.clone());
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_millis(10), rounds.run(|| counted(&starts, pause))).await
            })
        };
        tokio::time::sleep(Duration::from_millis(2)).await;
        let c = {
            let (rounds, starts) = (rounds.clone(), starts.clone());
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_millis(12), rounds.run(|| counted(&starts, pause))).await
            })
        };
        let b = tokio::time::timeout(Duration::from_secs(5), rounds.run(|| counted(&starts, pause))).await;
        assert!(a.await.expect("a").is_err(), "A was meant to time out");
        assert!(c.await.expect("c").is_err(), "C was meant to time out");
        assert!(b.is_ok(), "B never got an answer after A and C gave up");
        // And the rounds still run for a newcomer.
        let d = tokio::time::timeout(Duration::from_secs(5), rounds.run(|| counted(&starts, pause))).await;
        assert!(d.is_ok(), "no round ran for a caller after the others left");
    }
}
