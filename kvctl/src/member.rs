//! Cluster commands: member list/add/promote/remove, status, health, leader.

use kv_client::{AddMember, Client, ClusterInfo};

use crate::output::{self, Format};
use crate::Failure;

/// `kvctl member ...`
#[derive(Debug, clap::Subcommand)]
pub enum MemberCommand {
    /// List the members.
    #[command(after_help = "Example:\n  kvctl member list")]
    List,
    /// Add a node: it joins as a learner, catches up, then becomes a voter.
    #[command(after_help = "Example:\n  kvctl member add 2 http://10.0.0.2:7380 --client-url http://10.0.0.2:7379")]
    Add {
        /// Id of the new node (non-zero, unused).
        id: u64,
        /// Its peer URL.
        peer_url: String,
        /// Its client URL.
        #[arg(long)]
        client_url: Option<String>,
        /// Keep it a learner.
        #[arg(long)]
        learner: bool,
    },
    /// Make a learner a voter.
    #[command(after_help = "Example:\n  kvctl member promote 4")]
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Remove a member (the leader too: leadership moves first).
    #[command(after_help = "Example:\n  kvctl member remove 3")]
    Remove {
        /// The member's id.
        id: u64,
    },
}

/// `kvctl leader ...`
#[derive(Debug, clap::Subcommand)]
pub enum LeaderCommand {
    /// Hand leadership to a voter.
    #[command(after_help = "Example:\n  kvctl leader transfer 2")]
    Transfer {
        /// The voter that should lead.
        id: u64,
    },
}

fn members_table(c: &ClusterInfo) -> anyhow::Result<()> {
    let rows: Vec<Vec<String>> = c
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                if m.voter { "voter" } else { "learner" }.to_owned(),
                m.status.as_ref().map(|s| s.role.clone()).unwrap_or_else(|| "unreachable".into()),
                m.peer_url.clone(),
                m.client_url.clone(),
            ]
        })
        .collect();
    output::table(&["ID", "MEMBERSHIP", "ROLE", "PEER URL", "CLIENT URL"], &rows)
}

pub async fn member(client: &Client, cmd: MemberCommand, fmt: Format) -> Result<(), Failure> {
    let info = match cmd {
        MemberCommand::List => client.cluster().await?,
        MemberCommand::Add { id, peer_url, client_url, learner } => {
            let port_hint = peer_url.rsplit(':').next().unwrap_or("7380").trim_end_matches('/');
            eprintln!(
                "adding node {id}; if it is not running yet, start it with:\n  kvd --id {id} --data-dir DIR --peer-addr HOST:{port_hint} --client-addr HOST:PORT\nwaiting for it to catch up{}...",
                if learner { "" } else { " before promoting it" }
            );
            let req = AddMember { id, peer_url, client_url, learner };
            let add = client.add_member(&req);
            tokio::pin!(add);
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
            tick.tick().await;
            loop {
                tokio::select! {
                    r = &mut add => break r?,
                    _ = tick.tick() => {
                        // Progress: how far the new node has applied.
                        if let Ok(c) = client.cluster().await {
                            let head = c.members.iter().filter_map(|m| m.status.as_ref()).map(|s| s.last_log_index).max();
                            match c.members.iter().find(|m| m.id == id).and_then(|m| m.status.as_ref()) {
                                Some(s) => eprintln!("node {id}: applied {} of {}", s.applied_index, head.unwrap_or(0)),
                                None => eprintln!("node {id}: not reachable yet"),
                            }
                        }
                    }
                }
            }
        }
        MemberCommand::Promote { id } => client.promote_member(id).await?,
        MemberCommand::Remove { id } => client.remove_member(id).await?,
    };
    match fmt {
        Format::Json => output::json(&info)?,
        Format::Table => members_table(&info)?,
    }
    Ok(())
}

pub async fn leader(client: &Client, cmd: LeaderCommand, fmt: Format) -> Result<(), Failure> {
    let LeaderCommand::Transfer { id } = cmd;
    let info = client.transfer_leader(id).await?;
    match fmt {
        Format::Json => output::json(&info)?,
        Format::Table => println!("leader is now node {}", info.leader.map(|l| l.to_string()).unwrap_or("?".into())),
    }
    Ok(())
}

fn size(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// `kvctl status`: one row per member; fails naming the members whose
/// status did not come.
pub async fn status(client: &Client, fmt: Format) -> Result<(), Failure> {
    let info = client.cluster().await?;
    // NOTE: the member asked collects every member's status at once, each
    // within a bound (a frozen one shows as unreachable).
    let unreachable: Vec<String> = info
        .members
        .iter()
        .filter(|m| m.status.is_none())
        .map(|m| format!("node {}: {}", m.id, m.error.as_deref().unwrap_or("no status")))
        .collect();
    let verdict = if unreachable.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("unreachable: {}", unreachable.join("; ")).into())
    };
    if fmt == Format::Json {
        output::json(&info)?;
        return verdict;
    }
    let rows: Vec<Vec<String>> = info
        .members
        .iter()
        .map(|m| match &m.status {
            Some(s) => vec![
                m.id.to_string(),
                m.client_url.clone(),
                m.peer_url.clone(),
                s.role.clone(),
                s.term.to_string(),
                s.commit_index.to_string(),
                s.applied_index.to_string(),
                m.lag.map(|l| l.to_string()).unwrap_or_default(),
                size(s.db_size_bytes),
                String::new(),
            ],
            None => vec![
                m.id.to_string(),
                m.client_url.clone(),
                m.peer_url.clone(),
                "unreachable".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                m.error.clone().unwrap_or_default(),
            ],
        })
        .collect();
    output::table(
        &["ID", "CLIENT URL", "PEER URL", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "DB SIZE", "ERROR"],
        &rows,
    )?;
    verdict
}

/// `kvctl health`: every member must be ready; names the ones that are not.
/// The members are asked at once, each within the request timeout, so a
/// frozen one is reported, not waited for.
pub async fn health(client: &Client, fmt: Format) -> Result<(), Failure> {
    let info = client.cluster().await?;
    let mut asks = tokio::task::JoinSet::new();
    for (i, m) in info.members.iter().enumerate() {
        let one = if m.client_url.is_empty() {
            Err("its client URL is unknown".to_owned())
        } else {
            client.with_endpoints(&[m.client_url.as_str()]).map_err(|e| e.to_string())
        };
        asks.spawn(async move {
            let verdict = match one {
                Ok(c) => c.get_json("/health/ready").await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            (i, verdict)
        });
    }
    let mut verdicts: Vec<Result<(), String>> = vec![Err("not checked".into()); info.members.len()];
    while let Some(done) = asks.join_next().await {
        let (i, verdict) = done.map_err(|e| anyhow::anyhow!("a health check failed: {e}"))?;
        verdicts[i] = verdict;
    }
    let report: Vec<(u64, String, Result<(), String>)> =
        info.members.iter().zip(verdicts).map(|(m, v)| (m.id, m.client_url.clone(), v)).collect();
    let bad: Vec<String> =
        report.iter().filter_map(|(id, _, v)| v.as_ref().err().map(|e| format!("node {id}: {e}"))).collect();
    match fmt {
        Format::Json => output::json(
            &report
                .iter()
                .map(|(id, url, v)| serde_json::json!({"id": id, "client_url": url, "healthy": v.is_ok(), "error": v.as_ref().err()}))
                .collect::<Vec<_>>(),
        )?,
        Format::Table => {
            let rows: Vec<Vec<String>> = report
                .iter()
                .map(|(id, url, v)| {
                    vec![id.to_string(), url.clone(), if v.is_ok() { "healthy" } else { "unhealthy" }.into(), v.clone().err().unwrap_or_default()]
                })
                .collect();
            output::table(&["ID", "CLIENT URL", "HEALTH", "ERROR"], &rows)?;
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("unhealthy: {}", bad.join("; ")).into())
    }
}
