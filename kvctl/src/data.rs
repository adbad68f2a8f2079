//! Data commands: get, put, del, ls.

use std::io::{Read, Write};

use anyhow::Context;
use kv_client::{Client, ListOptions, ListResponse, PutOptions};

use crate::output::{self, Format};
use crate::Failure;

/// `kvctl get KEY`
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  kvctl get app/db/url > url.txt\n  kvctl get app/nginx.conf --rev 41")]
pub struct GetArgs {
    /// The key.
    key: String,
    /// Let the member answer from its own state (may be stale).
    #[arg(long, conflicts_with = "rev")]
    stale: bool,
    /// The value as it was at this past revision (see `kvctl history`).
    #[arg(long, value_name = "REV")]
    rev: Option<u64>,
}

/// `kvctl put KEY [VALUE|-]`
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  kvctl put app/port 8080\n  kvctl put app/cert.pem - < cert.pem\n  \
                  kvctl put app/db.password - --mode 0640 --gid \"$(getent group app | cut -d: -f3)\" < pw")]
pub struct PutArgs {
    /// The key.
    key: String,
    /// The value; `-` or nothing reads it from stdin (binary-safe).
    value: Option<String>,
    /// Only write if the key's mod revision is this.
    #[arg(long, value_name = "REV")]
    if_revision: Option<u64>,
    /// Only write if the key does not exist yet.
    #[arg(long)]
    create_only: bool,
    /// Permission bits, in octal, that a kvfs mount enforces (default: the
    /// key's current mode, 0644 for a new key).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    mode: Option<u32>,
    /// Owner's numeric user id (default: the key's current one, 0 for a new key).
    #[arg(long, value_name = "UID")]
    uid: Option<u32>,
    /// Owner's numeric group id (default: the key's current one, 0 for a new key).
    #[arg(long, value_name = "GID")]
    gid: Option<u32>,
}

/// Octal permission bits, at most 7777.
fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("{s:?} is not octal permission bits (0000 to 7777), e.g. 0640")),
    }
}

/// `kvctl del KEY [--recursive]`
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  kvctl del app/old-flag\n  kvctl del app/legacy --recursive")]
pub struct DelArgs {
    /// The key (or prefix with --recursive).
    key: String,
    /// Delete the key and everything below it, atomically.
    #[arg(short, long)]
    recursive: bool,
}

/// `kvctl ls [PREFIX]`
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  kvctl ls app\n  kvctl ls -r -o json")]
pub struct LsArgs {
    /// Prefix to list (default: the whole keyspace).
    #[arg(default_value = "")]
    prefix: String,
    /// Everything below the prefix, not just direct children.
    #[arg(short, long)]
    recursive: bool,
    /// Let the member answer from its own state (may be stale).
    #[arg(long, conflicts_with = "rev")]
    stale: bool,
    /// The prefix as it was at this past revision.
    #[arg(long, value_name = "REV")]
    rev: Option<u64>,
}

pub async fn get(client: &Client, a: GetArgs) -> Result<(), Failure> {
    let value = match a.rev {
        Some(rev) => client.get_at(&a.key, rev).await?,
        None => client.get_opts(&a.key, a.stale).await?,
    };
    match value {
        Some(v) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&v.value).context("writing to stdout")?;
            out.flush().context("writing to stdout")?;
            Ok(())
        }
        None => match a.rev {
            Some(rev) => Err(anyhow::anyhow!("key {:?} did not exist at revision {rev}", a.key).into()),
            None => Err(anyhow::anyhow!("key {:?} not found", a.key).into()),
        },
    }
}

pub async fn put(client: &Client, a: PutArgs, fmt: Format) -> Result<(), Failure> {
    let value = match a.value.as_deref() {
        None | Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("reading the value from stdin")?;
            buf
        }
        Some(v) => v.as_bytes().to_vec(),
    };
    let attrs = kv_client::Attrs { mode: a.mode, uid: a.uid, gid: a.gid, ..Default::default() };
    let opts = PutOptions { attrs, if_match: a.if_revision, create_only: a.create_only, ..PutOptions::default() };
    let r = client.put(&a.key, value, &opts).await?;
    match fmt {
        Format::Json => output::json(&r)?,
        Format::Table => println!("OK revision {}", r.revision),
    }
    Ok(())
}

pub async fn del(client: &Client, a: DelArgs, fmt: Format) -> Result<(), Failure> {
    let r = client.delete(&a.key, a.recursive, None).await?;
    match fmt {
        Format::Json => output::json(&r)?,
        Format::Table => {
            let n: u64 = r.results.iter().filter_map(|x| x.deleted).sum();
            println!("deleted {n} revision {}", r.revision);
        }
    }
    Ok(())
}

pub async fn ls(client: &Client, a: LsArgs, fmt: Format) -> Result<(), Failure> {
    let opts = ListOptions { recursive: a.recursive, stale: a.stale, rev: a.rev, ..ListOptions::default() };
    let ListResponse { revision, entries, .. } = client.list_all(&a.prefix, &opts).await?;
    match fmt {
        Format::Json => output::json(&serde_json::json!({"revision": revision, "entries": entries}))?,
        Format::Table => {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.meta.kind.as_str().to_owned(),
                        format!("{:04o}", e.meta.mode),
                        e.meta.size.to_string(),
                        e.meta.mod_revision.to_string(),
                        e.key.clone(),
                    ]
                })
                .collect();
            output::table(&["KIND", "MODE", "SIZE", "REV", "KEY"], &rows)?;
        }
    }
    Ok(())
}
