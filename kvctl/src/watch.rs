//! `kvctl watch PREFIX [--exec CMD]`.

use kv_client::{Client, EventType};

use crate::output::Format;
use crate::Failure;

/// `kvctl watch`
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  kvctl watch app\n  kvctl watch app/nginx --exec 'systemctl reload nginx'\n\n\
With --exec, CMD runs once per change (never two at once) with KV_EVENT (put or delete),\nKV_KEY and KV_REVISION in its environment.")]
pub struct WatchArgs {
    /// Prefix to watch ("" for everything).
    #[arg(default_value = "")]
    prefix: String,
    /// Start after this revision (default: now).
    #[arg(long)]
    rev: Option<u64>,
    /// Shell command to run for each change.
    #[arg(long)]
    exec: Option<String>,
}

pub async fn run(client: &Client, a: WatchArgs, fmt: Format) -> Result<(), Failure> {
    let mut w =
        client.watch_from(&a.prefix, a.rev).on_interrupt(|e| eprintln!("kvctl: watch interrupted ({e}); reconnecting"));
    loop {
        let ev = w.next().await?;
        let kind = if ev.kind == EventType::Put { "put" } else { "delete" };
        match &a.exec {
            Some(cmd) => {
                let status = run_hook(cmd, kind, &ev.key, ev.revision)?;
                if !status.success() {
                    eprintln!("kvctl: {cmd:?} exited with {status} for {} at revision {}", ev.key, ev.revision);
                }
            }
            None => match fmt {
                Format::Json => println!("{}", serde_json::to_string(&ev).unwrap_or_default()),
                Format::Table => println!("{} {kind} {}", ev.revision, ev.key),
            },
        }
    }
}

/// Runs the hook for one event and waits for it (one at a time).
fn run_hook(cmd: &str, event: &str, key: &str, rev: u64) -> anyhow::Result<std::process::ExitStatus> {
    Ok(std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("KV_EVENT", event)
        .env("KV_KEY", key)
        .env("KV_REVISION", rev.to_string())
        .status()?)
}
