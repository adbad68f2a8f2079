//! `kvctl rollback PREFIX --to REV` and `kvctl diff KEY|PREFIX REV [REV]`:
//! a prefix as it was at a past revision, from the cluster's history.

use std::collections::BTreeMap;

use kv_client::{Client, ErrorCode, Kind};

use crate::apply::{check_size, held_at, limits, transaction, unchanged_since};
use crate::diff::{self, Held, Local};
use crate::output::{self, Format};
use crate::Failure;

/// `kvctl rollback PREFIX --to REV`
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Make PREFIX equal to what it was at revision REV, in one transaction: the puts and deletes \
                  that undo every change since, with contents, modes and owners. The transaction compares that \
                  nothing under PREFIX changed after kvctl read it, so it never overwrites a change it did not \
                  show. REV must be within the cluster's history (see `kvctl history`).",
    after_help = "Examples:\n  kvctl history app/nginx/nginx.conf\n  kvctl rollback app/nginx --to 4711 --dry-run\n  \
                  kvctl rollback app/nginx --to 4711\n\n\
                  Exit status: 0 rolled back (or nothing to do), 1 failure (REV beyond the history included), \
                  2 usage, 3 conflict: PREFIX changed after it was read; nothing was written."
)]
pub struct RollbackArgs {
    /// The key prefix to roll back ("" for the whole keyspace).
    prefix: String,
    /// The revision whose state PREFIX gets back.
    #[arg(long, value_name = "REV")]
    to: u64,
    /// Print what would change (a unified diff of text contents) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Refuse (exit 3) if anything under PREFIX changed after revision N
    /// (e.g. the revision a reviewed `--dry-run` printed).
    #[arg(long, value_name = "N")]
    if_rev: Option<u64>,
}

/// `kvctl diff KEY|PREFIX REV [REV]`
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  kvctl diff app/nginx/nginx.conf 4711\n  kvctl diff app/nginx 4711 4800\n\n\
                        Without the second REV, the current state is the newer side.")]
pub struct DiffArgs {
    /// A key, or a prefix: every key below it.
    target: String,
    /// The older revision.
    from: u64,
    /// The newer revision (default: now).
    to: Option<u64>,
}

/// What `prefix` held at `rev` as a tree to make (see [`diff::plan`]).
fn as_local(held: BTreeMap<String, Held>) -> Local {
    Local { tree: held.into_iter().map(|(k, h)| (k, h.node)).collect(), plain_dirs: Default::default() }
}

pub async fn rollback(client: &Client, a: RollbackArgs, fmt: Format) -> Result<(), Failure> {
    let prefix = kv_client::normalize_prefix(&a.prefix).map_err(kv_client::Error::from)?.to_owned();
    let limits = limits(client).await;
    let (then, _) = held_at(client, &prefix, true, Some(a.to)).await?;
    let (now, listed) = held_at(client, &prefix, true, None).await?;
    let plan = diff::plan(&as_local(then), &now, true);
    let since = unchanged_since(&prefix, &now, a.if_rev, listed)?;
    let txn = transaction(&prefix, &now, &plan, since, true);
    let size = check_size(&txn, &limits)?;
    let counts = serde_json::json!({
        "added": plan.added.len(), "changed": plan.changed.len(), "removed": plan.removed.len(),
        "unchanged": plan.unchanged, "operations": size.ops, "bytes": size.bytes,
    });
    if a.dry_run || (plan.is_empty() && a.if_rev.is_none()) {
        match fmt {
            Format::Json => output::json(&serde_json::json!({"dry_run": a.dry_run, "to": a.to,
                "revision": listed, "counts": counts}))?,
            Format::Table => {
                print!("{}", diff::render(&plan, &prefix));
                if plan.is_empty() {
                    println!("nothing to roll back: {prefix:?} is as it was at revision {}", a.to);
                } else {
                    println!(
                        "dry run: {} added, {} changed, {} removed back to revision {}; nothing written (revision {listed})",
                        plan.added.len(),
                        plan.changed.len(),
                        plan.removed.len(),
                        a.to
                    );
                }
            }
        }
        return Ok(());
    }
    let r = match client.txn(&txn).await {
        Ok(r) => r,
        Err(e) if e.is(&ErrorCode::Compacted) => return Err(Failure::Conflict(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    if !r.succeeded {
        return Err(Failure::Conflict(format!(
            "{prefix:?} changed after kvctl read it at revision {listed}{}: nothing was written; run the rollback again",
            a.if_rev.map(|r| format!(" (or after --if-rev {r})")).unwrap_or_default()
        )));
    }
    match fmt {
        Format::Json => output::json(&serde_json::json!({"to": a.to, "revision": r.revision, "counts": counts}))?,
        Format::Table => println!(
            "rolled back to revision {}: {} added, {} changed, {} removed; revision {}",
            a.to,
            plan.added.len(),
            plan.changed.len(),
            plan.removed.len(),
            r.revision
        ),
    }
    Ok(())
}

pub async fn diff(client: &Client, a: DiffArgs) -> Result<(), Failure> {
    let target = kv_client::normalize_prefix(&a.target).map_err(kv_client::Error::from)?.to_owned();
    let (old, _) = held_at(client, &target, true, Some(a.from)).await?;
    let (new, _) = held_at(client, &target, true, a.to).await?;
    let mut out = String::new();
    if !target.is_empty() {
        // NOTE: the target itself, when it is a key rather than a prefix.
        let value = |v: Option<kv_client::Value>| v.filter(|v| v.meta.kind == Kind::File).map(|v| v.value.to_vec());
        let before = value(client.get_at(&target, a.from).await?);
        let after = value(match a.to {
            Some(rev) => client.get_at(&target, rev).await?,
            None => client.get(&target).await?,
        });
        if before != after {
            out.push_str(&diff::unified(&target, before.as_deref(), after.as_deref()));
        }
    }
    let plan = diff::plan(&as_local(new), &old, true);
    out.push_str(&diff::render(&plan, &target));
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::Node;

    fn held(value: &str, rev: u64) -> Held {
        Held {
            node: Node { kind: Kind::File, mode: 0o644, owner: Some((0, 0)), value: value.into() },
            mod_revision: rev,
        }
    }

    #[test]
    fn a_rollback_plan_undoes_puts_and_deletes() {
        let then = BTreeMap::from([("a".to_owned(), held("1", 1)), ("gone".to_owned(), held("x", 1))]);
        let now = BTreeMap::from([("a".to_owned(), held("2", 5)), ("new".to_owned(), held("n", 6))]);
        let plan = diff::plan(&as_local(then), &now, true);
        assert_eq!(plan.added.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["gone"]);
        assert_eq!(
            plan.changed.iter().map(|x| (x.0.as_str(), x.2.value.clone())).collect::<Vec<_>>(),
            [("a", b"1".to_vec())]
        );
        assert_eq!(plan.removed.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["new"]);
    }
}
