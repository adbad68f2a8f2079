//! `kvctl token create|list|revoke`: bearer tokens (DESIGN.md §10).

use kv_client::{Client, TokenSpec};

use crate::output::{self, Format};
use crate::Failure;

/// Tokens.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once, alone on the last line.
    #[command(after_help = "Examples:\n  kvctl token create web --read app/web\n  \
        kvctl token create deploy --write app\n  kvctl token create ops --admin")]
    Create {
        /// Unique name (A-Z a-z 0-9 . _ -), shown in logs instead of the secret.
        name: String,
        /// A prefix it may read (repeatable; "" for everything).
        #[arg(long = "read", value_name = "PREFIX")]
        read: Vec<String>,
        /// A prefix it may read and write (repeatable).
        #[arg(long = "write", value_name = "PREFIX")]
        write: Vec<String>,
        /// Everything, plus membership, snapshots and tokens.
        #[arg(long)]
        admin: bool,
    },
    /// List tokens: names and rights, never secrets.
    List,
    /// Revoke a token on every member at once.
    Revoke {
        /// Its name.
        name: String,
    },
}

fn prefixes(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.iter().map(|p| if p.is_empty() { "(all)" } else { p }).collect::<Vec<_>>().join(",")
    }
}

pub async fn run(client: &Client, cmd: TokenCommand, fmt: Format) -> Result<(), Failure> {
    match cmd {
        TokenCommand::Create { name, read, write, admin } => {
            if read.is_empty() && write.is_empty() && !admin {
                return Err(Failure::Usage("give at least one of --read, --write and --admin".into()));
            }
            let t = client.create_token(&TokenSpec { name, read, write, admin }).await?;
            match fmt {
                Format::Json => output::json(&t)?,
                Format::Table => {
                    let g = &t.info.grants;
                    eprintln!(
                        "created token {} (read: {}, write: {}, admin: {}); store it now, it is not shown again:",
                        t.info.name,
                        prefixes(&g.read),
                        prefixes(&g.write),
                        if g.admin { "yes" } else { "no" }
                    );
                    println!("{}", t.token);
                }
            }
        }
        TokenCommand::List => {
            let list = client.list_tokens().await?;
            match fmt {
                Format::Json => output::json(&list)?,
                Format::Table => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|t| {
                            vec![
                                t.name.clone(),
                                prefixes(&t.grants.read),
                                prefixes(&t.grants.write),
                                if t.grants.admin { "yes" } else { "no" }.into(),
                                crate::output::time_ns(t.created_ns),
                            ]
                        })
                        .collect();
                    output::table(&["NAME", "READ", "WRITE", "ADMIN", "CREATED"], &rows)?;
                }
            }
        }
        TokenCommand::Revoke { name } => {
            client.revoke_token(&name).await?;
            match fmt {
                Format::Json => output::json(&serde_json::json!({"revoked": name}))?,
                Format::Table => println!("revoked token {name}"),
            }
        }
    }
    Ok(())
}
