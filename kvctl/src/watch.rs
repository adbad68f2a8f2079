//! `kvctl watch PREFIX [--exec CMD [--wait MIN[:MAX]] [--mount DIR]]`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kv_client::{Client, EventType, Resuming};

use crate::debounce::{Debounce, Run, Wait};
use crate::mounted::Mounted;
use crate::output::Format;
use crate::Failure;

/// What `kvctl watch --help` and kvctl-watch(1) say after the options.
const AFTER_HELP: &str = "\
Examples:
  kvctl watch app
  kvctl watch app/nginx --exec 'systemctl reload nginx'
  kvctl watch app/nginx --mount /etc/app --wait 500ms --exec 'nginx -t && systemctl reload nginx'

CMD runs with sh -c, never two at once. In its environment:
  KV_REVISION  the last revision among the changes it is run for
  KV_KEYS      the changed keys, one per line, in key order
  KV_CHANGES   how many keys changed (the lines of KV_KEYS)
  KV_KEY       the changed key, and KV_EVENT its last change (put or delete):
               set when one key changed (always, without --wait)

Without --wait, CMD runs once per change. With --wait MIN[:MAX] it runs once a burst of
changes has been quiet for MIN, and at the latest MAX after the burst's first change
(MAX defaults to 4 x MIN); changes made while it runs go into the next run. A CMD that
fails (exits non-zero or cannot start) is reported on stderr with its status; with --wait
its keys go into the next run, which the next change starts or which comes after a pause
(1 s, doubling with each failure in a row up to a minute). A watch that no member reopens
(the cluster restarting, a partition) is tried again the same way; a compacted start
revision or a refused token ends kvctl.

With --mount DIR, CMD runs only once the kvfs mount at DIR serves the revision it is run
for (its status file says so), so a program reloaded by CMD reads the new files there. A
mount that does not answer within --mount-timeout counts as a failed run. kvctl refuses to
start when DIR is not a kvfs mount or shows a prefix that does not hold PREFIX.

As a service: kv-watch@NAME.service (kvctl package) runs kvctl watch from
/etc/kv/watch/NAME.conf, shell-style KEY=VALUE lines:
  PREFIX=app/nginx                   the prefix to watch (required)
  COMMAND=systemctl reload nginx     CMD (required)
  WAIT=500ms                         --wait (optional)
  MOUNT=/etc/app                     --mount (optional)
  ENDPOINTS=http://127.0.0.1:7379    --endpoints (optional)
  TOKEN_FILE=/etc/kv/watch/nginx.token  --token-file (optional)
then: systemctl enable --now kv-watch@nginx. It starts after the network and the remote
file systems (kvfs mounts with _netdev), restarts on failure, and logs to the journal.
An example is /usr/share/doc/kvctl/examples/nginx.conf.";

/// `kvctl watch`
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct WatchArgs {
    /// Prefix to watch ("" for everything).
    #[arg(default_value = "")]
    prefix: String,
    /// Start after this revision (default: now).
    #[arg(long)]
    rev: Option<u64>,
    /// Shell command to run on changes (see below).
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// Run CMD once changes have stopped for MIN, at the latest MAX after
    /// the first (500ms, 2s, ...; MAX defaults to 4 x MIN).
    #[arg(long, value_name = "MIN[:MAX]", requires = "exec", value_parser = crate::debounce::parse_wait)]
    wait: Option<Wait>,
    /// Run CMD only once the kvfs mount at DIR serves the change.
    #[arg(long, value_name = "DIR", requires = "exec")]
    mount: Option<PathBuf>,
    /// How long a run waits for the mount to serve its revision before it
    /// fails.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::parse_timeout)]
    mount_timeout: Duration,
    /// Where the mount's status file is: its -o status_dir= [default:
    /// /run/kvfs for root].
    #[arg(long, value_name = "DIR", requires = "mount")]
    status_dir: Option<PathBuf>,
    /// Show each change with the entry before it: a `prev` field with -o
    /// json, a unified diff of text values in the table.
    #[arg(long, conflicts_with = "exec")]
    prev: bool,
}

pub async fn run(client: &Client, a: WatchArgs, fmt: Format) -> Result<(), Failure> {
    let mount = match &a.mount {
        Some(dir) => Some(Mounted::find(dir, a.status_dir.as_deref(), &a.prefix)?),
        None => None,
    };
    let mut w =
        client.watch_from(&a.prefix, a.rev).on_interrupt(|e| eprintln!("kvctl: watch interrupted ({e}); reconnecting"));
    if a.prev {
        w = w.with_prev();
    }
    let Some(cmd) = a.exec else {
        loop {
            let ev = w.next().await?;
            match fmt {
                Format::Json => println!("{}", serde_json::to_string(&ev).unwrap_or_default()),
                Format::Table => {
                    println!("{} {} {}", ev.revision, kind_name(ev.kind), ev.key);
                    if a.prev {
                        let text = |e: &Option<kv_client::EntryInfo>| {
                            e.as_ref().filter(|e| e.meta.kind == kv_client::Kind::File).and_then(|e| e.value_bytes())
                        };
                        let (before, after) = (text(&ev.prev), text(&ev.entry));
                        if before != after {
                            print!("{}", crate::diff::unified(&ev.key, before.as_deref(), after.as_deref()));
                        }
                    }
                }
            }
        }
    };
    let hook = Arc::new(Hook { cmd, mount, mount_timeout: a.mount_timeout });
    match a.wait {
        None => loop {
            let ev = next_for_exec(&mut w).await?;
            let run = Run::of(&ev.key, ev.kind, ev.revision);
            let h = hook.clone();
            let r = run.clone();
            let result = tokio::task::spawn_blocking(move || h.run(&r)).await;
            if let Err(e) = result.unwrap_or_else(|e| Err(format!("the run failed: {e}"))) {
                eprintln!("kvctl: {e} for {} at revision {}", ev.key, ev.revision);
            }
        },
        Some(wait) => debounced(&mut w, hook, wait).await,
    }
}

/// Runs CMD for bursts of changes, one run at a time, while the watch goes
/// on gathering the next burst.
async fn debounced(w: &mut Resuming<'_>, hook: Arc<Hook>, wait: Wait) -> Result<(), Failure> {
    let mut d = Debounce::new(wait);
    let mut running: Option<(tokio::task::JoinHandle<Result<(), String>>, Run)> = None;
    loop {
        // NOTE: nothing is due while a run is under way; one that came due
        // meanwhile starts as soon as it ends.
        let due = if running.is_none() { d.due() } else { None };
        let finished = async {
            match running.as_mut() {
                Some((h, _)) => h.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = next_for_exec(w) => {
                let ev = ev?;
                d.change(std::time::Instant::now(), &ev.key, ev.kind, ev.revision);
            }
            _ = sleep_until(due), if due.is_some() => {
                if let Some(run) = d.take(std::time::Instant::now()) {
                    let (h, r) = (hook.clone(), run.clone());
                    running = Some((tokio::task::spawn_blocking(move || h.run(&r)), run));
                }
            }
            result = finished => {
                let result = result.unwrap_or_else(|e| Err(format!("the run failed: {e}")));
                match (result, running.take()) {
                    (Err(e), Some((_, run))) => {
                        let n = run.keys.len();
                        eprintln!(
                            "kvctl: {e} for {n} changed key{} up to revision {}; it runs again with the next \
                             change, or after a pause",
                            if n == 1 { "" } else { "s" },
                            run.revision
                        );
                        d.failed(std::time::Instant::now(), run);
                    }
                    (Ok(()), _) => d.succeeded(),
                    (Err(_), None) => {}
                }
            }
        }
    }
}

/// The next change for `--exec`: a watch that no member reopens (the
/// cluster restarting, a partition) is tried again after a pause that
/// doubles up to a minute, so a service still reloads once its cluster is
/// back; errors that another try would meet again end the watch.
async fn next_for_exec(w: &mut Resuming<'_>) -> Result<kv_client::WatchEvent, Failure> {
    let mut pause = crate::debounce::FIRST_RETRY;
    loop {
        match w.next().await {
            Ok(ev) => return Ok(ev),
            Err(e) if !transient(&e) => return Err(e.into()),
            Err(e) => {
                eprintln!("kvctl: watch interrupted ({e}); trying again in {} s", pause.as_secs());
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(crate::debounce::MAX_RETRY);
            }
        }
    }
}

/// Whether a watch error may pass: not a compacted start, a refused
/// token, or a request this side got wrong.
fn transient(e: &kv_client::Error) -> bool {
    match e.code() {
        Some(c) => !(c == &kv_client::ErrorCode::Compacted || c.is_denied() || c.is_invalid_request()),
        None => matches!(
            e,
            kv_client::Error::Unreachable(_) | kv_client::Error::Stalled { .. } | kv_client::Error::Protocol(_)
        ),
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }
}

fn kind_name(kind: EventType) -> &'static str {
    if kind == EventType::Put {
        "put"
    } else {
        "delete"
    }
}

/// CMD and what it waits for.
#[derive(Debug)]
struct Hook {
    cmd: String,
    mount: Option<Mounted>,
    mount_timeout: Duration,
}

impl Hook {
    /// Runs CMD for `run` and waits for it (blocking): once the mount, if
    /// any, serves the run's revision.
    fn run(&self, run: &Run) -> Result<(), String> {
        if let Some(m) = &self.mount {
            m.wait_for(run.revision, self.mount_timeout)?;
        }
        let keys: Vec<&str> = run.keys.keys().map(String::as_str).collect();
        let mut c = std::process::Command::new("sh");
        c.arg("-c")
            .arg(&self.cmd)
            .env("KV_REVISION", run.revision.to_string())
            .env("KV_KEYS", keys.join("\n"))
            .env("KV_CHANGES", keys.len().to_string());
        // NOTE: KV_KEY and KV_EVENT are there only for one key, so a CMD
        // written for them never acts on one key of many.
        if let [(key, kind)] = run.keys.iter().collect::<Vec<_>>()[..] {
            c.env("KV_KEY", key).env("KV_EVENT", kind_name(*kind));
        } else {
            c.env_remove("KV_KEY").env_remove("KV_EVENT");
        }
        let status = c.status().map_err(|e| format!("cannot run {:?}: {e}", self.cmd))?;
        if !status.success() {
            return Err(format!("{:?} {status}", self.cmd));
        }
        Ok(())
    }
}
