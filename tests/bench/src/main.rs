//! Load generator of `tests/bench.sh`. Every subcommand prints one JSON
//! object with its figures on stdout; the script makes the tables.
//!
//! - `put` / `get`: durable puts of distinct keys and linearizable gets
//!   from concurrent clients, against kv (its own client, HTTP/1.1) or etcd
//!   (its gRPC API, the way etcd's own benchmark talks to it).
//! - `fs`: the filesystem loops of DESIGN.md §8 in a directory (a mount or
//!   a tmpfs, for the ratio).
//! - `propagate`: a write through one member until a file on a mount served
//!   by another shows it.
//! - `watchers`: many watch streams while writes arrive at a fixed rate.
//! - `load`: many small keys in large transactions (for the scale figures).
//! - `fsync`, `floor`, `rtt`: the floors under the put latency (the disk's
//!   fdatasync, a bare server that fdatasyncs each request, and an empty
//!   HTTP request).
//! - `fusefloor`: the FUSE floor under the mount's read loops (see
//!   fusefloor.rs); `fs --floor` times it in turns with the mount.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

mod fusefloor;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Kv,
    Etcd,
    /// kv through a bare HTTP/1.1 writer on one kept-alive connection per
    /// client (no kv-client): what the client's own CPU costs the rows.
    KvRaw,
}

#[derive(clap::Args, Clone)]
struct Load {
    /// What the endpoints are.
    #[arg(long, value_enum)]
    target: Target,
    /// Client URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Distinct keys read by `get` (written first).
    #[arg(long, default_value_t = 1000)]
    keys: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Durable puts of distinct keys.
    Put(Load),
    /// Linearizable gets.
    Get(Load),
    /// Filesystem loops in DIR.
    Fs {
        dir: PathBuf,
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Only the reads, in DIR/fsbench-ro (left there by a run with
        /// --keep through a writable view of the same keyspace).
        #[arg(long)]
        read_only: bool,
        /// Leave the files in DIR/fsbench-ro for a --read-only run.
        #[arg(long)]
        keep: bool,
        /// Also time API puts (1 client) to this kv endpoint, in blocks
        /// taking turns with the blocks of create+write+close (its reference).
        #[arg(long)]
        put_endpoint: Option<String>,
        /// Run the read loops on REFERENCE/fsbench-ro too (left there by a
        /// run with --keep), the two taking turns round by round.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Run the read loops on FLOOR/fsbench-ro too (a `fusefloor`
        /// mount), in the same turns.
        #[arg(long)]
        floor: Option<PathBuf>,
    },
    /// Mounts the FUSE floor at DIR and serves it until it is unmounted.
    Fusefloor {
        dir: PathBuf,
        /// Bytes in each file (the `fs` loops write 100).
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Answer opens with FUSE passthrough, as kvfs -o passthrough does.
        #[arg(long)]
        passthrough: bool,
    },
    /// Write through ENDPOINT, wait until DIR/KEY (a mount of the keyspace
    /// root on another member) shows it.
    Propagate {
        #[arg(long)]
        endpoint: String,
        dir: PathBuf,
        #[arg(long, default_value_t = 300)]
        count: usize,
    },
    /// WATCHERS watch streams on one prefix, RATE writes a second for SECS.
    Watchers {
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// N free loopback ports (for etcd, which cannot report the port it bound).
    Ports { n: usize },
    /// fdatasync latency of the disk under DIR (4 KiB appends).
    Fsync {
        dir: PathBuf,
        #[arg(long, default_value_t = 500)]
        count: usize,
    },
    /// The least a durable write over the network can take here: a bare TCP
    /// server thread that appends each request's 4 KiB block to a file and
    /// fdatasyncs before it answers, taking turns with the same appends and
    /// fdatasyncs made in-process (the `fsync` subcommand's loop).
    Floor {
        dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Polls GET URL until it answers 200 (60 s at most); prints the seconds.
    Ready { url: String },
    /// Round trips of GET URL on one kept-alive connection: the floor under
    /// any request's latency (client, loopback, HTTP, server wake-ups).
    Rtt {
        url: String,
        #[arg(long, default_value_t = 5000)]
        count: usize,
    },
    /// Prints the number at PATH (dotted) in JSON.
    Field { json: String, path: String },
    /// The side-by-side table from the JSON lines in FILE.
    Table { file: PathBuf },
    /// KEYS keys of VALUE_SIZE bytes under `scale/`, in transactions.
    Load {
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        #[arg(long, default_value_t = 1_000_000)]
        keys: usize,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
    },
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn key(i: usize, size: usize) -> String {
    format!("b/{i:0w$}", w = size.saturating_sub(2).max(1))
}

/// Percentile of sorted latencies, in ms.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn summary(mut lat: Vec<Duration>, secs: f64, errors: usize) -> serde_json::Value {
    lat.sort();
    let mean = lat.iter().map(Duration::as_secs_f64).sum::<f64>() / lat.len().max(1) as f64 * 1e3;
    json!({
        "count": lat.len(), "errors": errors, "seconds": secs,
        "ops_per_sec": lat.len() as f64 / secs,
        "mean_ms": mean, "p50_ms": pct(&lat, 0.5), "p99_ms": pct(&lat, 0.99),
    })
}

/// One connection's worth of requests, for either store.
#[derive(Clone)]
enum Conn {
    Kv(Arc<kv_client::Client>),
    Etcd(etcd_client::KvClient),
    Raw(Arc<tokio::sync::Mutex<Raw>>),
}

/// A bare HTTP/1.1 client of one kv endpoint (plain http only).
struct Raw {
    io: tokio::io::BufReader<tokio::net::TcpStream>,
    host: String,
    /// Request ids: this process's, this connection's and a counter.
    /// IMPORTANT: unique across connections: a repeated id is answered from
    /// kvd's dedup record, not written again.
    id: (u32, usize, u64),
}

impl Raw {
    /// One request; whether the answer was 200.
    async fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Result<bool, Error> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        self.id.2 += 1;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nx-kv-request-id: raw-{}-{}-{}\r\ncontent-length: {}\r\n\r\n",
            self.host,
            self.id.0,
            self.id.1,
            self.id.2,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.io.get_mut().write_all(&req).await?;
        let (mut line, mut len, mut status) = (String::new(), 0usize, 0u16);
        loop {
            line.clear();
            if self.io.read_line(&mut line).await? == 0 {
                return Err("the connection closed".into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(code) = l.strip_prefix("HTTP/1.1 ") {
                status = code.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            } else if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; len];
        self.io.read_exact(&mut body).await?;
        Ok(status == 200)
    }
}

impl Conn {
    async fn new(l: &Load, i: usize) -> Result<Conn, Error> {
        let mut eps = l.endpoints.clone();
        let n = eps.len();
        eps.rotate_left(i % n);
        Ok(match l.target {
            Target::Kv => Conn::Kv(Arc::new(kv_client::Client::new(&eps)?)),
            Target::Etcd => {
                let hosts: Vec<String> = eps.iter().map(|e| e.trim_start_matches("http://").to_owned()).collect();
                Conn::Etcd(etcd_client::Client::connect(hosts, None).await?.kv_client())
            }
            Target::KvRaw => {
                let host = eps[0].strip_prefix("http://").ok_or("kv-raw speaks plain http only")?.to_owned();
                let s = tokio::net::TcpStream::connect(&host).await?;
                s.set_nodelay(true)?;
                Conn::Raw(Arc::new(tokio::sync::Mutex::new(Raw {
                    io: tokio::io::BufReader::new(s),
                    host,
                    id: (std::process::id(), i, 0),
                })))
            }
        })
    }

    async fn put(&mut self, k: String, v: Vec<u8>) -> Result<(), Error> {
        match self {
            Conn::Kv(c) => c.put(&k, v, &kv_client::PutOptions::default()).await.map(drop).map_err(Into::into),
            Conn::Etcd(c) => c.put(k, v, None).await.map(drop).map_err(Into::into),
            Conn::Raw(r) => match r.lock().await.call("PUT", &format!("/v1/kv/{k}"), &v).await? {
                true => Ok(()),
                false => Err("the put was not answered 200".into()),
            },
        }
    }

    async fn get(&mut self, k: String) -> Result<bool, Error> {
        match self {
            Conn::Kv(c) => Ok(c.get(&k).await?.is_some()),
            // NOTE: etcd's range is linearizable unless serializable is asked for.
            Conn::Etcd(c) => Ok(!c.get(k, None).await?.kvs().is_empty()),
            Conn::Raw(r) => r.lock().await.call("GET", &format!("/v1/kv/{k}"), &[]).await,
        }
    }
}

async fn load_test(l: Load, put: bool) -> Result<serde_json::Value, Error> {
    let value = vec![b'x'; l.value_size];
    if !put {
        let mut c = Conn::new(&l, 0).await?;
        for i in 0..l.keys {
            c.put(key(i, l.key_size), value.clone()).await?;
        }
    }
    let mut conns = Vec::new();
    for i in 0..l.clients {
        conns.push(Conn::new(&l, i).await?);
    }
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, mut conn)| {
            let (l, value) = (l.clone(), value.clone());
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0);
                let mut i = c;
                while i < l.count {
                    let t = Instant::now();
                    let ok = if put {
                        conn.put(key(i, l.key_size), value.clone()).await.is_ok()
                    } else {
                        matches!(conn.get(key(i % l.keys, l.key_size)).await, Ok(true))
                    };
                    lat.push(t.elapsed());
                    errors += usize::from(!ok);
                    i += l.clients;
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    Ok(summary(lat, start.elapsed().as_secs_f64(), errors))
}

/// For each of `ways` subjects, the median over `rounds` rounds of the mean
/// time of `n` calls of `f(subject)`, µs. The subjects take turns round by
/// round, so that each sees the same drift of a shared machine; a burst of
/// noise spoils a round, not the figure.
fn medians_us(
    rounds: usize,
    n: usize,
    ways: usize,
    mut f: impl FnMut(usize) -> std::io::Result<()>,
) -> Result<Vec<f64>, Error> {
    let mut means = vec![Vec::with_capacity(rounds); ways];
    for _ in 0..rounds {
        for (k, m) in means.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..n {
                f(k)?;
            }
            m.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
    }
    Ok(means.iter_mut().map(|m| median(m)).collect())
}

/// The median of `v` (sorts it).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn fs_test(
    dir: PathBuf,
    count: usize,
    read_only: bool,
    keep: bool,
    put_endpoint: Option<String>,
    reference: Option<PathBuf>,
    floor: Option<PathBuf>,
) -> Result<serde_json::Value, Error> {
    let base = dir.join("fsbench-ro");
    let data = [b'x'; 100];
    // The 1,000 entries of a directory `many`.
    let many = |d: &Path| -> Vec<PathBuf> { (0..1000).map(|i| d.join("many").join(format!("f{i:04}"))).collect() };
    let (mut create, mut create_local, mut api_put) = (json!(null), json!(null), json!(null));
    if !read_only {
        std::fs::create_dir_all(base.join("many"))?;
        // create + write + close of small files named `new-N{suffix}`, in
        // blocks of `count / BLOCKS`; with a put endpoint, each block follows
        // as many API puts, so both see the same drift of a shared machine.
        const BLOCKS: usize = 5;
        let block = count.div_ceil(BLOCKS);
        let put_client = put_endpoint.map(|e| kv_client::Client::new(&[e])).transpose()?;
        let creates = async |suffix: &str,
                             puts: Option<&kv_client::Client>|
               -> Result<(serde_json::Value, serde_json::Value), Error> {
            let (mut lat, mut put_lat) = (Vec::with_capacity(count), Vec::with_capacity(count));
            for i in 0..count {
                if let (0, Some(c)) = (i % block, puts) {
                    for j in i..(i + block).min(count) {
                        let t = Instant::now();
                        c.put(&format!("fsbench-api/{j:010}"), data.to_vec(), &kv_client::PutOptions::default())
                            .await?;
                        put_lat.push(t.elapsed());
                    }
                }
                let t = Instant::now();
                let mut f = std::fs::File::create(base.join(format!("new-{i}{suffix}")))?;
                f.write_all(&data)?;
                drop(f);
                lat.push(t.elapsed());
            }
            let puts = if put_lat.is_empty() { json!(null) } else { summary(put_lat, 1.0, 0) };
            Ok((summary(lat, 1.0, 0), puts))
        };
        (create, api_put) = creates("", put_client.as_ref()).await?;
        // The same with names a mount keeps to itself (`*~`, see kvfs(8)):
        // FUSE's own share, no put. On other filesystems, just the same loop.
        create_local = creates("~", None).await?.0;
        std::fs::write(base.join("one"), data)?;
        for p in many(&base) {
            std::fs::write(p, data)?;
        }
    }
    // The read loops, on DIR, the reference and the floor taking turns.
    let reference = reference.map(|r| r.join("fsbench-ro"));
    let floor = floor.map(|r| r.join("fsbench-ro"));
    let dirs: Vec<&Path> =
        std::iter::once(base.as_path()).chain(reference.as_deref()).chain(floor.as_deref()).collect();
    // (the index of each in the figures below)
    let (at_ref, at_floor) = (reference.as_ref().map(|_| 1), floor.as_ref().map(|_| dirs.len() - 1));
    let names: Vec<Vec<PathBuf>> = dirs.iter().map(|d| many(d)).collect();
    // open + read + close of one cached file
    let ones: Vec<PathBuf> = dirs.iter().map(|d| d.join("one")).collect();
    let mut buf = Vec::with_capacity(128);
    for (d, one) in dirs.iter().zip(&ones) {
        let _ = std::fs::read(one)?;
        let _ = std::fs::read_dir(d.join("many"))?.count();
    }
    let read_us = medians_us(20, count / 2, dirs.len(), |k| {
        buf.clear();
        std::fs::File::open(&ones[k])?.read_to_end(&mut buf).map(drop)
    })?;
    // a 1,000-entry directory: stat of every entry, and ls -l (readdir + lstat)
    let stat_us = medians_us(21, 1, dirs.len(), |k| names[k].iter().try_for_each(|p| std::fs::metadata(p).map(drop)))?;
    let ls_us = medians_us(21, 1, dirs.len(), |k| {
        for e in std::fs::read_dir(dirs[k].join("many"))? {
            std::fs::symlink_metadata(e?.path())?;
        }
        Ok(())
    })?;
    if !read_only && !keep {
        std::fs::remove_dir_all(&base)?;
    }
    Ok(json!({
        "create_write_close": create,
        "create_write_close_local": create_local,
        "api_put": api_put,
        "open_read_close_us": read_us[0],
        "stat_1000_us": stat_us[0],
        "ls_l_1000_us": ls_us[0],
        "reference": at_ref.map(|k| json!({
            "open_read_close_us": read_us[k], "stat_1000_us": stat_us[k], "ls_l_1000_us": ls_us[k],
        })),
        "floor": at_floor.map(|k| json!({
            "open_read_close_us": read_us[k], "stat_1000_us": stat_us[k], "ls_l_1000_us": ls_us[k],
        })),
    }))
}

async fn propagate(endpoint: String, dir: PathBuf, count: usize) -> Result<serde_json::Value, Error> {
    let c = kv_client::Client::new(&[endpoint])?;
    let path = dir.join("prop").join("x");
    c.put("prop/x", "0", &kv_client::PutOptions::default()).await?;
    let mut lat = Vec::with_capacity(count);
    for i in 1..=count {
        let want = i.to_string();
        c.put("prop/x", want.clone(), &kv_client::PutOptions::default()).await?;
        // NOTE: the clock starts once the write is acknowledged.
        let t = Instant::now();
        loop {
            if std::fs::read_to_string(&path).is_ok_and(|s| s == want) {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!("change {i} never showed on the mount").into());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        lat.push(t.elapsed());
    }
    Ok(summary(lat, 1.0, 0))
}

async fn watchers(endpoints: Vec<String>, n: usize, rate: u64, secs: u64) -> Result<serde_json::Value, Error> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    let total = (rate * secs) as usize;
    for i in 0..n {
        let mut eps = endpoints.clone();
        let n = eps.len();
        eps.rotate_left(i % n);
        let c = kv_client::Client::new(&eps)?;
        let mut w = c.watch("fan", None).await?;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while lat.len() < total {
                match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
                    Ok(Ok(Some(ev))) => {
                        let sent: u64 = ev.entry.and_then(|e| e.value).and_then(|v| v.parse().ok()).unwrap_or(0);
                        lat.push(start.elapsed().saturating_sub(Duration::from_micros(sent)));
                    }
                    _ => break,
                }
            }
            lat
        }));
    }
    let writer = kv_client::Client::new(&endpoints)?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for i in 0..total {
        tick.tick().await;
        let sent = start.elapsed().as_micros().to_string();
        writer.put(&format!("fan/{}", i % 100), sent, &kv_client::PutOptions::default()).await?;
    }
    let mut lat = Vec::new();
    let mut short = 0;
    for t in tasks {
        let l = t.await?;
        short += total - l.len();
        lat.extend(l);
    }
    let mut s = summary(lat, secs as f64, short);
    s["expected_events"] = json!(total * n);
    s["missing_events"] = json!(short);
    Ok(s)
}

async fn load(endpoints: Vec<String>, keys: usize, value_size: usize) -> Result<serde_json::Value, Error> {
    const PER_TXN: usize = 1000;
    let value = "v".repeat(value_size);
    let start = Instant::now();
    let clients = 16;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (endpoints, value) = (endpoints.clone(), value.clone());
            tokio::spawn(async move {
                let client = kv_client::Client::new(&endpoints)?;
                let mut b = c * PER_TXN;
                while b < keys {
                    let success = (b..(b + PER_TXN).min(keys))
                        .map(|i| kv_client::TxnOp::put(format!("scale/{i:08}"), value.clone()))
                        .collect();
                    let txn = kv_client::TxnRequest { compare: vec![], success, failure: vec![] };
                    client.txn(&txn).await?;
                    b += clients * PER_TXN;
                }
                Ok::<(), Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(json!({ "keys": keys, "raw_bytes": keys * (14 + value_size), "seconds": start.elapsed().as_secs_f64() }))
}

/// Status of a plain GET (HTTP/1.0 by hand: no client library needed).
async fn kv_http_get(url: &str) -> Result<u16, Error> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    Ok(std::str::from_utf8(&head[9..12])?.parse()?)
}

/// `count` GETs of `url` on one HTTP/1.1 connection, each timed from the
/// request's first byte to the response's last.
fn rtt(url: &str, count: usize) -> Result<serde_json::Value, Error> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::io::BufReader::new(std::net::TcpStream::connect(host)?);
    s.get_ref().set_nodelay(true)?;
    s.get_ref().set_read_timeout(Some(Duration::from_secs(5)))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut lat = Vec::with_capacity(count);
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        s.get_mut().write_all(req.as_bytes())?;
        let (mut line, mut len) = (String::new(), 0usize);
        loop {
            line.clear();
            if s.read_line(&mut line)? == 0 {
                return Err("the server closed the connection".into());
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                }
            }
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)?;
        lat.push(t.elapsed());
    }
    Ok(summary(lat, start.elapsed().as_secs_f64(), 0))
}

fn ports(n: usize) -> Result<serde_json::Value, Error> {
    let socks: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    let ports: Vec<u16> = socks.iter().map(|s| s.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?;
    Ok(json!(ports))
}

fn fsync(dir: &Path, count: usize) -> Result<serde_json::Value, Error> {
    Ok(summary(fsync_latencies(dir, count)?, 1.0, 0))
}

/// Times `count` appends of 4 KiB, each fdatasync'd, to a new file in `dir`.
fn fsync_latencies(dir: &Path, count: usize) -> std::io::Result<Vec<Duration>> {
    let path = dir.join(format!("fsync-{}", std::process::id()));
    let mut f = std::fs::File::create(&path)?;
    let block = [0u8; 4096];
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        append_synced(&mut f, &block)?;
        lat.push(t.elapsed());
    }
    std::fs::remove_file(&path)?;
    Ok(lat)
}

/// The median of `lat`, in ms (sorts it).
fn p50_ms(lat: &mut [Duration]) -> f64 {
    lat.sort();
    pct(lat, 0.5)
}

fn append_synced(f: &mut std::fs::File, block: &[u8]) -> std::io::Result<()> {
    f.write_all(block)?;
    f.sync_data()
}

/// Size of a request to the floor's server: about a kv put's (headers and
/// a 100-byte value).
const FLOOR_REQUEST: usize = 256;

/// [`Cmd::Floor`]: `rounds` rounds of `count` durable requests to a bare
/// server, each after a round of `count` fdatasyncs; the medians of the
/// rounds' p50s, and their ratio.
fn floor(dir: &Path, count: usize, rounds: usize) -> Result<serde_json::Value, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server_path = dir.join(format!("floor-server-{}", std::process::id()));
    let mut log = std::fs::File::create(&server_path)?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut req = [0u8; FLOOR_REQUEST];
        let mut block = [0u8; 4096];
        loop {
            match s.read_exact(&mut req) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            block[..FLOOR_REQUEST].copy_from_slice(&req);
            append_synced(&mut log, &block)?;
            s.write_all(b"ok")?;
        }
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (mut fsync_p50, mut server_p50) = (Vec::new(), Vec::new());
    let mut answer = [0u8; 2];
    for round in 0..rounds.max(1) {
        fsync_p50.push(p50_ms(&mut fsync_latencies(dir, count)?));
        let mut lat = Vec::with_capacity(count);
        for i in 0..count {
            let req = [(round * count + i) as u8; FLOOR_REQUEST];
            let t = Instant::now();
            s.write_all(&req)?;
            s.read_exact(&mut answer)?;
            lat.push(t.elapsed());
        }
        server_p50.push(p50_ms(&mut lat));
    }
    drop(s);
    server.join().map_err(|_| "the floor's server panicked")??;
    std::fs::remove_file(&server_path)?;
    let rounds = json!({ "fsync_p50_ms": fsync_p50, "server_p50_ms": server_p50 });
    let (f, d) = (median(&mut fsync_p50), median(&mut server_p50));
    Ok(json!({ "fsync_p50_ms": f, "server_p50_ms": d, "ratio": d / f, "rounds": rounds }))
}

/// Prints `| measure | kv | etcd | kv / etcd |` rows for every pair of
/// results with the same `row`, and `| measure | kv | reference | ratio |`
/// rows for kv-only measures that carry their reference.
fn table(file: PathBuf) -> Result<serde_json::Value, Error> {
    let text = std::fs::read_to_string(file)?;
    let rows: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    println!("| measure | kv | etcd / reference | ratio |\n| --- | ---: | ---: | ---: |");
    let mut seen = std::collections::BTreeSet::new();
    for r in &rows {
        let name = r["row"].as_str().unwrap_or("").to_owned();
        if !seen.insert(name.clone()) {
            continue;
        }
        let unit = r["unit"].as_str().unwrap_or("");
        let of = |target: &str| {
            rows.iter().find(|x| x["row"] == name && x["target"] == target).and_then(|x| x["value"].as_f64())
        };
        let (kv, other) = (of("kv"), of("etcd").or_else(|| of("reference")));
        let fmt = |v: Option<f64>| {
            v.map_or("-".to_owned(), |v| if v >= 100.0 { format!("{v:.0} {unit}") } else { format!("{v:.2} {unit}") })
        };
        let ratio = match (kv, other) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!("| {name} | {} | {} | {ratio} |", fmt(kv), fmt(other));
    }
    Ok(json!({"rows": seen.len()}))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let out = match Cli::parse().cmd {
        Cmd::Put(l) => load_test(l, true).await?,
        Cmd::Get(l) => load_test(l, false).await?,
        Cmd::Fs { dir, count, read_only, keep, put_endpoint, reference, floor } => {
            fs_test(dir, count, read_only, keep, put_endpoint, reference, floor).await?
        }
        Cmd::Fusefloor { dir, size, passthrough } => {
            fusefloor::serve(&dir, size, passthrough)?;
            return Ok(());
        }
        Cmd::Propagate { endpoint, dir, count } => propagate(endpoint, dir, count).await?,
        Cmd::Watchers { endpoints, watchers: n, rate, secs } => watchers(endpoints, n, rate, secs).await?,
        Cmd::Load { endpoints, keys, value_size } => load(endpoints, keys, value_size).await?,
        Cmd::Ports { n } => ports(n)?,
        Cmd::Fsync { dir, count } => fsync(&dir, count)?,
        Cmd::Rtt { url, count } => rtt(&url, count)?,
        Cmd::Floor { dir, count, rounds } => floor(&dir, count, rounds)?,
        Cmd::Ready { url } => {
            let t = Instant::now();
            loop {
                let ok = async { Ok::<_, Error>(kv_http_get(&url).await? == 200) };
                if ok.await.unwrap_or(false) {
                    break;
                }
                if t.elapsed() > Duration::from_secs(60) {
                    return Err(format!("{url} did not answer 200 within 60 s").into());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            println!("{}", t.elapsed().as_secs_f64());
            return Ok(());
        }
        Cmd::Field { json, path } => {
            let v: serde_json::Value = serde_json::from_str(&json)?;
            let f = path.split('.').fold(&v, |v, k| &v[k]);
            println!("{}", f.as_f64().ok_or_else(|| format!("no number at {path} in {json}"))?);
            return Ok(());
        }
        Cmd::Table { file } => {
            table(file)?;
            return Ok(());
        }
    };
    println!("{out}");
    Ok(())
}
