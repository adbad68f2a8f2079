//! `kvctl bench put|get`: load from concurrent clients, with throughput and
//! latency percentiles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_client::{Client, PutOptions};
use serde::Serialize;

use crate::output::{self, Format};
use crate::Failure;

/// Benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Durable puts of distinct keys.
    #[command(after_help = "Example:\n  kvctl bench put --clients 64 --count 10000")]
    Put(BenchArgs),
    /// Gets (linearizable unless --stale) of keys written first.
    #[command(after_help = "Example:\n  kvctl bench get --clients 64 --count 20000")]
    Get(BenchArgs),
}

/// Load shape.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests in total.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Key size in bytes.
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Distinct keys for get (written before measuring).
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Key prefix.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Gets answered from the member's own state.
    #[arg(long)]
    stale: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    op: &'static str,
    clients: usize,
    count: usize,
    errors: usize,
    seconds: f64,
    ops_per_sec: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn key(prefix: &str, i: usize, size: usize) -> String {
    format!("{prefix}/{i:0w$}", w = size.saturating_sub(prefix.len() + 1).max(1))
}

pub async fn run(client: Client, cmd: BenchCommand, fmt: Format) -> Result<(), Failure> {
    let (op, a) = match cmd {
        BenchCommand::Put(a) => ("put", a),
        BenchCommand::Get(a) => ("get", a),
    };
    if a.clients == 0 || a.count == 0 || a.keys == 0 {
        return Err(Failure::Usage("--clients, --count and --keys must be positive".into()));
    }
    let client = Arc::new(client);
    let value = vec![b'x'; a.value_size];
    if op == "get" {
        for i in 0..a.keys {
            client.put(&key(&a.prefix, i, a.key_size), value.clone(), &PutOptions::default()).await?;
        }
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let (client, a, value) = (client.clone(), a.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut i = c;
            while i < a.count {
                let t = Instant::now();
                let ok = if op == "put" {
                    client.put(&key(&a.prefix, i, a.key_size), value.clone(), &PutOptions::default()).await.is_ok()
                } else {
                    matches!(client.get_opts(&key(&a.prefix, i % a.keys, a.key_size), a.stale).await, Ok(Some(_)))
                };
                lat.push(t.elapsed());
                errors += usize::from(!ok);
                i += a.clients;
            }
            (lat, errors)
        }));
    }
    let mut lat: Vec<Duration> = Vec::with_capacity(a.count);
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.map_err(|e| anyhow::anyhow!("bench client failed: {e}"))?;
        lat.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    let r = Report {
        op,
        clients: a.clients,
        count: a.count,
        errors,
        seconds: secs,
        ops_per_sec: a.count as f64 / secs,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: lat.last().map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0),
    };
    match fmt {
        Format::Json => output::json(&r)?,
        Format::Table => output::table(
            &["OP", "CLIENTS", "COUNT", "ERRORS", "OPS/S", "P50 ms", "P90 ms", "P99 ms", "MAX ms"],
            &[vec![
                r.op.into(),
                r.clients.to_string(),
                r.count.to_string(),
                r.errors.to_string(),
                format!("{:.0}", r.ops_per_sec),
                format!("{:.2}", r.p50_ms),
                format!("{:.2}", r.p90_ms),
                format!("{:.2}", r.p99_ms),
                format!("{:.2}", r.max_ms),
            ]],
        )?,
    }
    if errors > 0 {
        return Err(anyhow::anyhow!("{errors} of {} requests failed", a.count).into());
    }
    Ok(())
}
