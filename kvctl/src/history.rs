//! `kvctl history KEY`: a key's versions, with when and by whom.

use kv_client::Client;

use crate::output::{self, Format};
use crate::Failure;

/// `kvctl history KEY`
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  kvctl history app/nginx.conf\n  kvctl get app/nginx.conf --rev 41\n\n\
The history holds the last --history-revisions revisions of the cluster (kvd.toml: history_revisions);\n\
older versions are gone.")]
pub struct HistoryArgs {
    /// The key.
    key: String,
    /// At most this many versions, newest first.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

pub async fn run(client: &Client, a: HistoryArgs, fmt: Format) -> Result<(), Failure> {
    let h = client.history(&a.key, a.limit).await?;
    match fmt {
        Format::Json => output::json(&h)?,
        Format::Table => {
            let rows: Vec<Vec<String>> = h
                .versions
                .iter()
                .map(|v| {
                    let (kind, mode, size) = match &v.meta {
                        Some(m) => (m.kind.as_str().to_owned(), format!("{:04o}", m.mode), m.size.to_string()),
                        None => ("deleted".to_owned(), "-".to_owned(), "-".to_owned()),
                    };
                    vec![
                        v.revision.to_string(),
                        v.time_ns.map(output::time_ns).unwrap_or_else(|| "-".to_owned()),
                        v.writer.clone().unwrap_or_else(|| "-".to_owned()),
                        kind,
                        mode,
                        size,
                    ]
                })
                .collect();
            output::table(&["REV", "TIME", "WRITER", "KIND", "MODE", "SIZE"], &rows)?;
            if h.versions.is_empty() {
                eprintln!("kvctl: no version of {:?} after revision {} (the history's start)", h.key, h.compact);
            }
        }
    }
    Ok(())
}
