//! Config delivery: `apply DIR PREFIX` publishes a directory tree as one
//! transaction; `export PREFIX DIR` writes a prefix out as files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine as _;
use kv_client::{Client, Compare, ErrorCode, Kind, Limits, ListOptions, TxnOp, TxnRequest};

use crate::diff::{self, Held, Node, Plan};
use crate::output::{self, Format};
use crate::tree;
use crate::Failure;

#[cfg(test)]
const SIZE_HELP: &str = size_help!();

/// `kvctl apply DIR PREFIX`
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Make PREFIX equal to DIR in one transaction: file contents, modes (owners with --owners), \
                  directories, symlinks (the target is the value), FIFOs, sockets and devices (the number, \
                  MAJOR:MINOR, is the value). A reader never sees half of it; \
                  unchanged files are not rewritten. The transaction compares every key it read at the \
                  revision it read it, and that nothing under PREFIX changed since, so it never overwrites \
                  a change it did not show.",
    after_help = concat!(
        "Examples:\n",
        "  kvctl apply --dry-run ./release app/nginx\n",
        "  kvctl apply --prune --check 'nginx -t -c {}/nginx.conf' ./release app/nginx\n",
        "  kvctl apply --if-rev 4711 ./release app/nginx\n\n",
        "Exit status: 0 applied (or nothing to apply), 1 failure (a failing --check included), 2 usage, ",
        "3 conflict: PREFIX changed after it was read (or after --if-rev); nothing was written.\n\n",
        size_help!()
    )
)]
pub struct ApplyArgs {
    /// The local directory to publish.
    dir: PathBuf,
    /// The key prefix it becomes ("" for the whole keyspace).
    prefix: String,
    /// Also delete keys under PREFIX that DIR lacks.
    #[arg(long)]
    prune: bool,
    /// Print what would change (a unified diff of text contents) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Refuse (exit 3) if anything under PREFIX changed after revision REV.
    #[arg(long, value_name = "REV")]
    if_rev: Option<u64>,
    /// First write the resulting PREFIX to a fresh private directory and
    /// publish only if `sh -c CMD` exits 0; `{}` in CMD is that directory.
    #[arg(long, value_name = "CMD")]
    check: Option<String>,
    /// Publish the files' owner and group ids too (default: new keys get
    /// root's, existing keys keep theirs).
    #[arg(long)]
    owners: bool,
}

/// `kvctl export PREFIX DIR`
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  kvctl export app/nginx ./release\n  \
                        kvctl export app/nginx ./release --force && kvctl apply --prune ./release app/nginx")]
pub struct ExportArgs {
    /// The key prefix to write out ("" for the whole keyspace).
    prefix: String,
    /// The directory to write it into (made if missing; must be empty).
    dir: PathBuf,
    /// Write into a directory that is not empty, replacing what is in the way.
    #[arg(long)]
    force: bool,
    /// Give the files their stored owner and group ids (needs root).
    #[arg(long)]
    owners: bool,
}

/// The size of an apply, against the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Compares and operations.
    pub ops: usize,
    /// Bytes of JSON.
    pub bytes: usize,
}

/// The answering member's limits, or kvd's defaults from a member too old to say.
pub async fn limits(client: &Client) -> Limits {
    client.node_status().await.ok().and_then(|s| s.limits).unwrap_or(Limits::DEFAULT)
}

/// What PREFIX holds, by path below it, and the revision of the listing.
async fn held(client: &Client, prefix: &str, owners: bool) -> Result<(BTreeMap<String, Held>, u64), Failure> {
    held_at(client, prefix, owners, None).await
}

/// What PREFIX held at revision `rev` (now, without one), by path below
/// it, and the revision of the listing.
pub async fn held_at(
    client: &Client,
    prefix: &str,
    owners: bool,
    rev: Option<u64>,
) -> Result<(BTreeMap<String, Held>, u64), Failure> {
    let opts = ListOptions { recursive: true, values: true, rev, ..ListOptions::default() };
    let list = client.list_all(prefix, &opts).await?;
    let mut out = BTreeMap::new();
    for e in list.entries {
        let rel = if prefix.is_empty() { e.key.clone() } else { e.key[prefix.len() + 1..].to_owned() };
        let value = e.value_bytes().with_context(|| format!("the listing of {} holds no value", e.key))?;
        let node = Node {
            kind: e.meta.kind,
            mode: e.meta.mode & 0o7777,
            owner: owners.then_some((e.meta.uid, e.meta.gid)),
            value: if e.meta.kind == Kind::Dir { Vec::new() } else { value },
        };
        out.insert(rel, Held { node, mod_revision: e.meta.mod_revision });
    }
    Ok((out, list.revision))
}

/// A value as the smaller of JSON text and base64.
fn value_fields(v: &[u8]) -> (Option<String>, Option<String>) {
    let b64 = || base64::engine::general_purpose::STANDARD.encode(v);
    match std::str::from_utf8(v) {
        Ok(s) if serde_json::to_string(s).map_or(usize::MAX, |j| j.len()) <= v.len().div_ceil(3) * 4 + 2 => {
            (Some(s.to_owned()), None)
        }
        _ => (None, Some(b64())),
    }
}

/// The revision the transaction's prefix compare holds PREFIX to: the
/// listing's, or `--if-rev` when that is older, so one compare covers both
/// (deletes included). An entry already changed after `--if-rev` is a
/// conflict before anything is sent.
pub fn unchanged_since(
    prefix: &str,
    held: &BTreeMap<String, Held>,
    if_rev: Option<u64>,
    listed: u64,
) -> Result<u64, Failure> {
    let Some(rev) = if_rev else { return Ok(listed) };
    if let Some((p, h)) = held.iter().find(|(_, h)| h.mod_revision > rev) {
        let key = if prefix.is_empty() { p.clone() } else { format!("{prefix}/{p}") };
        return Err(Failure::Conflict(format!(
            "{key:?} changed at revision {}, after --if-rev {rev}: nothing was written",
            h.mod_revision
        )));
    }
    Ok(rev.min(listed))
}

/// The transaction of a plan: a compare on every key read (at the revision
/// it was listed at) and on every key created (absent), one that nothing
/// under the prefix changed after `since`, then the puts and deletes.
pub fn transaction(prefix: &str, held: &BTreeMap<String, Held>, plan: &Plan, since: u64, owners: bool) -> TxnRequest {
    let key = |p: &str| if prefix.is_empty() { p.to_owned() } else { format!("{prefix}/{p}") };
    let mut compare = vec![Compare::prefix_unchanged(prefix, since)];
    compare.extend(held.iter().map(|(p, h)| Compare::key_at(key(p), h.mod_revision)));
    compare.extend(plan.added.iter().map(|(p, _)| Compare::key_exists(key(p), false)));
    let put = |p: &str, n: &Node| {
        let (value, value_base64) = if n.kind == Kind::Dir { (None, None) } else { value_fields(&n.value) };
        TxnOp::Put {
            key: key(p),
            value,
            value_base64,
            kind: Some(n.kind),
            mode: (n.kind != Kind::Symlink).then_some(n.mode),
            uid: n.owner.filter(|_| owners).map(|o| o.0),
            gid: n.owner.filter(|_| owners).map(|o| o.1),
            mtime_ns: None,
            atime_ns: None,
        }
    };
    let mut success: Vec<TxnOp> = plan.added.iter().map(|(p, n)| put(p, n)).collect();
    success.extend(plan.changed.iter().map(|(p, _, n)| put(p, n)));
    success.extend(plan.removed.iter().map(|(p, _)| TxnOp::Delete { key: key(p), recursive: false }));
    TxnRequest { compare, success, failure: Vec::new() }
}

/// Refuses a transaction over the limits, before it is sent.
pub fn check_size(txn: &TxnRequest, limits: &Limits) -> Result<Size, Failure> {
    let size = Size {
        ops: txn.compare.len() + txn.success.len() + txn.failure.len(),
        bytes: serde_json::to_vec(txn).map(|b| b.len()).unwrap_or(usize::MAX),
    };
    if size.ops as u64 > limits.max_txn_ops {
        return Err(anyhow::anyhow!(
            "this apply needs {} compares and operations (a compare per key under the prefix, a put and a \
             compare per new or changed entry, a delete per pruned key), over the cluster's limit of {} per \
             transaction: nothing was sent; apply the tree in parts (e.g. one subdirectory at a time)",
            size.ops,
            limits.max_txn_ops
        )
        .into());
    }
    if size.bytes as u64 > limits.max_txn_size {
        return Err(anyhow::anyhow!(
            "this apply is a transaction of {} bytes of JSON, over the cluster's limit of {} bytes \
             (kvd --max-txn-size): nothing was sent; apply the tree in parts (e.g. one subdirectory at a time)",
            size.bytes,
            limits.max_txn_size
        )
        .into());
    }
    Ok(size)
}

/// Runs `sh -c CMD` over the resulting tree written to a staging directory.
fn run_check(cmd: &str, result: &diff::Tree, owners: bool) -> Result<(), Failure> {
    let staging = tree::Staging::new()?;
    tree::write_tree(staging.path(), result, owners, false).context("writing the tree for --check")?;
    let dir = staging.path().to_str().context("the staging directory's path is not UTF-8")?;
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd.replace("{}", dir))
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running the check {cmd:?}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut err = std::io::stderr().lock();
    let _ = std::io::Write::write_all(&mut err, &out.stdout);
    let _ = std::io::Write::write_all(&mut err, &out.stderr);
    let status = match out.status.code() {
        Some(c) => format!("exit status {c}"),
        None => format!("{}", out.status),
    };
    Err(anyhow::anyhow!("the check {cmd:?} failed ({status}): nothing was written").into())
}

pub async fn apply(client: &Client, a: ApplyArgs, fmt: Format) -> Result<(), Failure> {
    let prefix = kv_client::normalize_prefix(&a.prefix).map_err(kv_client::Error::from)?.to_owned();
    let limits = limits(client).await;
    let local = tree::read_local(&a.dir, &prefix, a.owners, limits.max_value_size)?;
    let (held, listed) = held(client, &prefix, a.owners).await?;
    let plan = diff::plan(&local, &held, a.prune);
    let since = unchanged_since(&prefix, &held, a.if_rev, listed)?;
    let txn = transaction(&prefix, &held, &plan, since, a.owners);
    let size = check_size(&txn, &limits)?;
    let counts = serde_json::json!({
        "added": plan.added.len(), "changed": plan.changed.len(), "removed": plan.removed.len(),
        "unchanged": plan.unchanged, "kept": plan.kept, "operations": size.ops, "bytes": size.bytes,
    });
    if a.dry_run {
        match fmt {
            Format::Json => output::json(&serde_json::json!({"dry_run": true, "revision": listed, "counts": counts,
                "added": plan.added.iter().map(|x| &x.0).collect::<Vec<_>>(),
                "changed": plan.changed.iter().map(|x| &x.0).collect::<Vec<_>>(),
                "removed": plan.removed.iter().map(|x| &x.0).collect::<Vec<_>>()}))?,
            Format::Table => {
                print!("{}", diff::render(&plan, &prefix));
                println!(
                    "dry run: {} added, {} changed, {} removed, {} unchanged; nothing written (revision {listed})",
                    plan.added.len(),
                    plan.changed.len(),
                    plan.removed.len(),
                    plan.unchanged
                );
            }
        }
        return Ok(());
    }
    // NOTE: with --if-rev, a plan that writes nothing still has the cluster
    // check that nothing changed (a compare-only transaction takes no revision).
    if plan.is_empty() && a.if_rev.is_none() {
        match fmt {
            Format::Json => output::json(&serde_json::json!({"revision": listed, "counts": counts}))?,
            Format::Table => println!("nothing to apply: {} unchanged; revision {listed}", plan.unchanged),
        }
        return Ok(());
    }
    if let (Some(cmd), false) = (&a.check, plan.is_empty()) {
        run_check(cmd, &diff::result(&held, &plan), a.owners)?;
    }
    let r = match client.txn(&txn).await {
        Ok(r) => r,
        Err(e) if e.is(&ErrorCode::Compacted) => return Err(Failure::Conflict(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    if !r.succeeded {
        let why = match a.if_rev {
            Some(rev) => format!("after --if-rev {rev} or after kvctl read it at revision {listed}"),
            None => format!("after kvctl read it at revision {listed}"),
        };
        return Err(Failure::Conflict(format!(
            "{:?} changed {why}: nothing was written; run the apply again to see and publish over the new state",
            if prefix.is_empty() { "the keyspace" } else { prefix.as_str() }
        )));
    }
    match fmt {
        Format::Json => output::json(&serde_json::json!({"revision": r.revision, "counts": counts}))?,
        Format::Table => println!(
            "applied: {} added, {} changed, {} removed, {} unchanged; revision {}",
            plan.added.len(),
            plan.changed.len(),
            plan.removed.len(),
            plan.unchanged,
            r.revision
        ),
    }
    Ok(())
}

pub async fn export(client: &Client, a: ExportArgs, fmt: Format) -> Result<(), Failure> {
    let prefix = kv_client::normalize_prefix(&a.prefix).map_err(kv_client::Error::from)?.to_owned();
    match std::fs::read_dir(&a.dir).map(|mut d| d.next().is_some()) {
        Ok(true) if !a.force => {
            return Err(anyhow::anyhow!(
                "{} is not empty: export into an empty or new directory, or pass --force to write into it",
                a.dir.display()
            )
            .into())
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&a.dir).with_context(|| format!("making {}", a.dir.display()))?
        }
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", a.dir.display()).into()),
    }
    let (held, revision) = held(client, &prefix, true).await?;
    let tree: diff::Tree = held.into_iter().map(|(k, h)| (k, h.node)).collect();
    tree::write_tree(&a.dir, &tree, a.owners, a.force)?;
    let count = |k: Kind| tree.values().filter(|n| n.kind == k).count();
    let (files, dirs, links) = (count(Kind::File), count(Kind::Dir), count(Kind::Symlink));
    match fmt {
        Format::Json => {
            output::json(&serde_json::json!({"revision": revision, "files": files, "dirs": dirs, "symlinks": links}))?
        }
        Format::Table => println!(
            "exported {files} files, {dirs} directories, {links} symlinks into {} (revision {revision})",
            a.dir.display()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stated_size_is_the_one_in_help() {
        use clap::CommandFactory;
        let mut cmd = crate::Cli::command();
        let apply = cmd.find_subcommand_mut("apply").expect("apply");
        let help = apply.render_long_help().to_string();
        assert!(help.replace('\n', " ").contains(&SIZE_HELP.replace('\n', " ")), "{help}");
    }

    #[test]
    fn the_readme_states_the_same_size() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let words = |s: &str| s.replace('`', "").split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(words(readme).contains(&words(SIZE_HELP)), "README.md's Config delivery lost the stated size");
    }

    #[test]
    fn the_stated_size_fits_the_default_limits() {
        // 2,000 new files of 8 MiB in all, binary (base64) under a prefix.
        let prefix = "app/release";
        let mut local = diff::Local::default();
        let each = (8 << 20) / 2000;
        for i in 0..2000 {
            let value: Vec<u8> = (0..each).map(|j| ((i * 7 + j) % 251) as u8 | 0x80).collect();
            local.tree.insert(
                format!("dir{:02}/file-{i:04}.bin", i % 50),
                Node { kind: Kind::File, mode: 0o644, owner: None, value },
            );
        }
        let plan = diff::plan(&local, &BTreeMap::new(), true);
        let txn = transaction(prefix, &BTreeMap::new(), &plan, 1, false);
        let size = check_size(&txn, &Limits::DEFAULT).unwrap_or_else(|_| panic!("the stated size is refused"));
        assert!(size.ops <= 4096 && size.bytes < 16 << 20, "{size:?}");
        // One more entry than the operations allow is refused, naming the limit.
        let small = Limits { max_txn_ops: size.ops as u64 - 1, ..Limits::DEFAULT };
        match check_size(&txn, &small) {
            Err(Failure::Failed(e)) => assert!(e.to_string().contains(&format!("limit of {}", size.ops - 1)), "{e}"),
            _ => panic!("not refused"),
        }
        let small = Limits { max_txn_size: size.bytes as u64 - 1, ..Limits::DEFAULT };
        assert!(
            matches!(check_size(&txn, &small), Err(Failure::Failed(e)) if e.to_string().contains("--max-txn-size"))
        );
    }

    #[test]
    fn values_travel_as_the_smaller_of_text_and_base64() {
        assert_eq!(value_fields(b"plain text\n"), (Some("plain text\n".into()), None));
        assert_eq!(value_fields(&[0xff, 0]), (None, Some("/wA=".into())));
        let controls = vec![1u8; 30];
        assert!(value_fields(&controls).1.is_some(), "\\u0001 is 6 bytes a byte: base64 is smaller");
    }

    #[test]
    fn the_transaction_compares_what_it_read_and_the_prefix() {
        let mut held = BTreeMap::new();
        let file = |v: &str| Node { kind: Kind::File, mode: 0o644, owner: None, value: v.into() };
        held.insert("keep".to_owned(), Held { node: file("k"), mod_revision: 3 });
        held.insert("old".to_owned(), Held { node: file("o"), mod_revision: 4 });
        let mut local = diff::Local::default();
        local.tree.insert("keep".into(), file("k"));
        local.tree.insert("new".into(), file("n"));
        let plan = diff::plan(&local, &held, true);
        let t = transaction("app", &held, &plan, 9, false);
        assert_eq!(
            t.compare,
            [
                Compare::prefix_unchanged("app", 9),
                Compare::key_at("app/keep", 3),
                Compare::key_at("app/old", 4),
                Compare::key_exists("app/new", false)
            ]
        );
        assert_eq!(t.success.len(), 2, "a put of new, a delete of old; keep is not rewritten");
        assert!(matches!(&t.success[1], TxnOp::Delete { key, recursive: false } if key == "app/old"));
    }
}
