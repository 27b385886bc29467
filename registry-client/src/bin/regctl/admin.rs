//! Cluster, lease and backup commands: `cluster status|add|remove`,
//! `lease create|keepalive|revoke|get`, `snapshot save|inspect`.

use std::time::Duration;

use api_spec::{AddMemberRequest, LeaseInfo, Member, Role};
use clap::Subcommand;
use registry_client::{Consistency, Uuid};

use crate::output::{self, or_dash, Failure};
use crate::{duration, Context};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The answering server's view: leader, term, log indexes, members and their roles.
    Status,
    /// Add a server (started with --node-id ID and advertising ADDR); it becomes a voter
    /// once it has caught up, unless --learner.
    Add {
        id: u64,
        /// The new server's advertised `host:port`.
        addr: String,
        /// Keep it a learner: it replicates but does not vote.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a server from the cluster.
    Remove { id: u64 },
}

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Create a lease; prints its id.
    Create {
        /// Time to live unless kept alive (1s to 24h).
        #[arg(long, value_parser = duration, default_value = "15s")]
        ttl: Duration,
    },
    /// Restart a lease's countdown at its full TTL.
    Keepalive { id: Uuid },
    /// Revoke a lease now: what is bound to it (instances, locks, candidacies) goes too.
    Revoke { id: Uuid },
    /// Show a lease.
    Get {
        id: Uuid,
        /// Answer from the contacted server's own state (no remaining time then).
        #[arg(long)]
        stale: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a backup of the whole registry to FILE (needs `cluster:write`): the state at
    /// one index, holding every write acknowledged before the call. Restore it with
    /// `registry-server --restore FILE --data-dir EMPTY_DIR`.
    Save {
        file: std::path::PathBuf,
        /// How long the server may take to make it, on top of --timeout.
        #[arg(long, value_parser = duration, default_value = "5m")]
        wait: Duration,
    },
    /// Check a backup file and print its index, term, counts and size.
    Inspect { file: std::path::PathBuf },
}

pub async fn snapshot(cx: &Context, command: SnapshotCommand) -> Result<u8, Failure> {
    match command {
        SnapshotCommand::Save { file, wait } => {
            let bytes = cx.client.snapshot(wait).await?.value;
            let summary = checked(&bytes, &file)?;
            // Written beside the target, synced, then renamed over it: a crash never
            // leaves half a backup under the name.
            let tmp = file.with_extension("backup.tmp");
            let write = || -> std::io::Result<()> {
                use std::io::Write as _;
                let mut out = std::fs::File::create(&tmp)?;
                out.write_all(&bytes)?;
                out.sync_all()?;
                std::fs::rename(&tmp, &file)
            };
            write().map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Failure::new(format!("cannot write {}: {e}", file.display()))
            })?;
            print_summary(cx, &summary, bytes.len(), Some(&file))?;
            Ok(0)
        }
        SnapshotCommand::Inspect { file } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| Failure::new(format!("cannot read {}: {e}", file.display())))?;
            let summary = checked(&bytes, &file)?;
            print_summary(cx, &summary, bytes.len(), None)?;
            Ok(0)
        }
    }
}

fn checked(
    bytes: &[u8],
    file: &std::path::Path,
) -> Result<api_spec::backup::BackupSummary, Failure> {
    api_spec::backup::decode(bytes)
        .map(|(summary, _)| summary)
        .map_err(|e| Failure::new(format!("{} {e}", file.display())))
}

fn print_summary(
    cx: &Context,
    summary: &api_spec::backup::BackupSummary,
    size: usize,
    saved: Option<&std::path::Path>,
) -> Result<(), Failure> {
    if cx.json {
        return output::json(summary);
    }
    if let Some(file) = saved {
        output::line(format!("saved {} ({size} bytes)", file.display()))?;
    }
    output::line(format!(
        "index {}, term {}, made by node {} {}",
        summary.index,
        summary.term,
        summary.node_id,
        output::ago(summary.created_at_ms)
    ))?;
    output::line(format!(
        "{} services, {} instances, {} leases, {} locks, {} elections, {} ACL tokens; last fencing token {}",
        summary.services,
        summary.instances,
        summary.leases,
        summary.locks,
        summary.elections,
        summary.acl_tokens,
        summary.last_fencing_token
    ))?;
    output::line(format!(
        "{size} bytes (snapshot format {}, {} bytes, CRC-32 {:08x}: checked)",
        summary.snapshot_format, summary.snapshot_bytes, summary.snapshot_crc32
    ))
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Learner => "learner",
        Role::Shutdown => "shutdown",
    }
}

fn print_members(members: &[Member]) -> Result<(), Failure> {
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.addr.clone(),
                role_name(m.role).to_owned(),
                if m.voter { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    output::table(&["ID", "ADDRESS", "ROLE", "VOTER"], &rows)
}

pub async fn cluster(cx: &Context, command: ClusterCommand) -> Result<u8, Failure> {
    match command {
        ClusterCommand::Status => {
            let status = cx.client.cluster_status().await?.value;
            if cx.json {
                output::json(&status)?;
                return Ok(0);
            }
            let leader = match (status.leader, &status.leader_addr) {
                (Some(id), Some(addr)) => format!("{id} ({addr})"),
                (Some(id), None) => id.to_string(),
                (None, _) => "none known".to_owned(),
            };
            output::line(format!(
                "leader {leader}, term {}; answered by node {} ({})",
                status.term,
                status.node_id,
                role_name(status.role)
            ))?;
            output::line(format!(
                "log: last {}, committed {}, applied {}, snapshot {}, purged {}",
                status.last_log_index,
                status.commit_index,
                status.applied_index,
                or_dash(status.snapshot_index),
                or_dash(status.purged_index)
            ))?;
            if let Some(storm) = &status.expiry_storm {
                if !storm.active_services.is_empty() {
                    output::line(format!(
                        "expiry storm protection active for: {}",
                        storm.active_services.join(", ")
                    ))?;
                }
            }
            print_members(&status.members)?;
        }
        ClusterCommand::Add { id, addr, learner } => {
            let request = AddMemberRequest { id, addr, learner };
            let answer = cx.client.add_member(&request).await?.value;
            if cx.json {
                output::json(&answer)?;
                return Ok(0);
            }
            let kind = if learner { "learner" } else { "voter" };
            output::line(format!(
                "added node {id} at {} as a {kind} (index {})",
                request.addr, answer.index
            ))?;
            print_members(&answer.members)?;
        }
        ClusterCommand::Remove { id } => {
            let answer = cx.client.remove_member(id).await?.value;
            if cx.json {
                output::json(&answer)?;
                return Ok(0);
            }
            output::line(format!("removed node {id} (index {})", answer.index))?;
            print_members(&answer.members)?;
        }
    }
    Ok(0)
}

fn print_lease(lease: &LeaseInfo) -> Result<(), Failure> {
    let remaining = lease
        .remaining_ms
        .map(|ms| format!(", {} left", output::millis(ms)))
        .unwrap_or_default();
    output::line(format!(
        "lease {}: ttl {}{remaining}, granted {} (index {})",
        lease.lease,
        lease.ttl,
        output::ago(lease.granted_at_ms),
        lease.granted_index
    ))
}

pub async fn lease(cx: &Context, command: LeaseCommand) -> Result<u8, Failure> {
    match command {
        LeaseCommand::Create { ttl } => {
            let lease = cx.client.create_lease(ttl).await?.value;
            if cx.json {
                output::json(&lease)?;
            } else {
                // The bare id, for `L=$(regctl lease create --ttl 15s)`.
                output::line(lease.lease)?;
            }
        }
        LeaseCommand::Keepalive { id } => {
            let lease = cx.client.keepalive(id).await?.value;
            if cx.json {
                output::json(&lease)?;
            } else {
                print_lease(&lease)?;
            }
        }
        LeaseCommand::Revoke { id } => {
            let answer = cx.client.revoke_lease(id).await?.value;
            if cx.json {
                output::json(&answer)?;
            } else {
                output::line(format!("revoked lease {}", answer.lease))?;
            }
        }
        LeaseCommand::Get { id, stale } => {
            let consistency = if stale {
                Consistency::Stale
            } else {
                Consistency::Linearizable
            };
            let lease = cx.client.get_lease(id, consistency).await?.value;
            if cx.json {
                output::json(&lease)?;
            } else {
                print_lease(&lease)?;
            }
        }
    }
    Ok(0)
}
