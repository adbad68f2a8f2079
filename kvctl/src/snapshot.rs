//! `kvctl snapshot save FILE`.

use std::io::Write;

use anyhow::Context;
use kv_client::Client;

use crate::output::{self, Format};
use crate::Failure;

/// Snapshots.
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Save a consistent, checksummed snapshot of the whole keyspace to FILE
    /// (restore it with `kvd restore`).
    #[command(
        after_help = "Example:\n  kvctl snapshot save backup.snap\n  kvd restore --snapshot backup.snap --data-dir /var/lib/kvd-new --id 1 ..."
    )]
    Save {
        /// Where to write it.
        file: std::path::PathBuf,
    },
}

pub async fn run(client: &Client, cmd: SnapshotCommand, fmt: Format) -> Result<(), Failure> {
    let SnapshotCommand::Save { file } = cmd;
    let resp = client.send_stream(kv_client::Method::GET, "/v1/snapshot", |r| r).await?;
    let resp = kv_client::Error::check(resp).await.map_err(|e| anyhow::anyhow!("snapshot refused: {e}"))?;
    let revision = resp
        .headers()
        .get(kv_client::header::REVISION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let tmp = file.with_extension("part");
    let mut out = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut resp = resp;
    let mut bytes = 0u64;
    // NOTE: a large snapshot takes as long as it takes; a member that stops
    // sending one fails it after the request timeout.
    let quiet = client.request_timeout();
    loop {
        let next = tokio::time::timeout(quiet, resp.chunk()).await.map_err(|_| {
            anyhow::anyhow!("snapshot download failed: the member sent nothing for {} s", quiet.as_secs_f64())
        })?;
        let Some(chunk) = next.map_err(|e| anyhow::anyhow!("snapshot download failed: {e}"))? else { break };
        out.write_all(&chunk).with_context(|| format!("writing {}", tmp.display()))?;
        bytes += chunk.len() as u64;
    }
    out.sync_all().context("fsync of the snapshot")?;
    std::fs::rename(&tmp, &file).with_context(|| format!("cannot create {}", file.display()))?;
    match fmt {
        Format::Json => output::json(&serde_json::json!({"file": file, "revision": revision, "bytes": bytes}))?,
        Format::Table => println!("saved snapshot at revision {revision} ({bytes} bytes) to {}", file.display()),
    }
    Ok(())
}
