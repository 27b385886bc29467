//! Access control on real 3-node clusters (separate processes, real RocksDB): a revoke
//! takes effect on every node once acknowledged; tokens and lease owners survive a
//! full-cluster restart and reach a new member through a snapshot install. (`regctl`'s
//! token commands are tried in `regctl.rs`.)
//!
//! The clusters open `cluster:read` to callers without a token so the harness can watch
//! them as it watches any cluster; everything else needs a token.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use api_spec::acl::{CreateTokenRequest, Rule, TokenCreated};
use registry_client::{Client, Consistency};
use tests::{must_pass, wait_until, Cluster};

const BOOT: &str = "bootstrap-secret-for-cluster-tests";
const ACL: [&str; 7] = [
    "--acl",
    "--acl-anonymous",
    "cluster:read",
    "--acl-bootstrap-token",
    BOOT,
    "--cluster-secret",
    "cluster-tests-peer-secret",
];
const TIMEOUT: Duration = Duration::from_secs(20);

fn client(cluster: &Cluster, id: u64, secret: &str) -> Result<Client> {
    Ok(Client::builder([cluster.addr(id)]).token(secret).build()?)
}

async fn make_token(admin: &Client, rules: &[&str]) -> Result<TokenCreated> {
    let request = CreateTokenRequest {
        description: format!("cluster test {rules:?}"),
        rules: rules
            .iter()
            .map(|r| r.parse::<Rule>().map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?,
        ..Default::default()
    };
    Ok(admin.acl_create_token(&request).await?.value)
}

/// Waits until the configured bootstrap token works on every node.
async fn bootstrapped(cluster: &Cluster) -> Result<()> {
    for id in cluster.ids() {
        let admin = client(cluster, id, BOOT)?;
        wait_until(TIMEOUT, "the bootstrap token to work", || async {
            Ok(admin.acl_token_self().await?)
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_revoke_takes_effect_on_every_node_once_acknowledged() {
    let cluster = Cluster::start(3, &ACL).await.expect("start the cluster");
    must_pass(async {
        bootstrapped(&cluster).await?;
        let admin = client(&cluster, 1, BOOT)?;
        let reader = make_token(&admin, &["service:read"]).await?;
        // A token made through one node works at once on every node (a node that has not
        // applied it yet catches up before it refuses).
        for id in cluster.ids() {
            client(&cluster, id, &reader.secret)?
                .services(Default::default())
                .await?;
        }
        let revoked = client(&cluster, 2, BOOT)?
            .acl_revoke_token(reader.token.accessor)
            .await?
            .value;
        ensure!(
            revoked.revoked && revoked.unconfirmed_members.is_empty(),
            "{revoked:?}"
        );
        for id in cluster.ids() {
            let err = client(&cluster, id, &reader.secret)?
                .services(Default::default())
                .await
                .err()
                .with_context(|| format!("node {id} still accepts the revoked token"))?;
            ensure!(err.is_unauthenticated(), "node {id}: {err:?}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn tokens_and_lease_owners_survive_a_full_restart_and_a_snapshot_install() {
    let mut args = ACL.to_vec();
    args.extend(["--snapshot-every", "20"]);
    let mut cluster = Cluster::start(3, &args).await.expect("start the cluster");
    must_pass(async {
        bootstrapped(&cluster).await?;
        let admin = client(&cluster, 1, BOOT)?;
        let writer = make_token(&admin, &["service:write", "service:read"]).await?;
        let other = make_token(&admin, &["service:write"]).await?;
        let doomed = make_token(&admin, &["service:read"]).await?;
        admin.acl_revoke_token(doomed.token.accessor).await?;
        let lease = client(&cluster, 1, &writer.secret)?
            .create_lease(Duration::from_secs(3600))
            .await?
            .value
            .lease;
        // Enough writes for every node to take a snapshot past the tokens.
        let writes = client(&cluster, 1, &writer.secret)?;
        for n in 0..60 {
            writes.keepalive(lease).await?;
            writes
                .register(
                    "web",
                    &format!("i{n}"),
                    &api_spec::RegisterRequest {
                        address: "127.0.0.1".into(),
                        port: 8000 + n,
                        tags: vec![],
                        meta: Default::default(),
                        zone: None,
                        region: None,
                        weight: None,
                        ttl: Some("1h".into()),
                        deregister_after: None,
                        lease: None,
                        checks: Vec::new(),
                    },
                )
                .await?;
        }

        cluster.stop_all().await?;
        cluster.restart_all().await?;
        for id in cluster.ids() {
            let tokens = (&writer, &other, &doomed);
            wait_until(TIMEOUT, "ACL state after the restart", || {
                acl_state_holds(&cluster, id, tokens, lease)
            })
            .await?;
        }

        // A new member catches up from a snapshot (the log before it is purged) and
        // knows the same tokens and owners.
        let leader = cluster.leader_id().await?;
        let purged = cluster.status(leader).await?.purged_index;
        ensure!(
            purged.is_some_and(|p| p > 0),
            "the leader kept its whole log ({purged:?}): a new member would not need a snapshot"
        );
        cluster.start_joining(4, leader).await?;
        cluster.wait_caught_up(4, leader, TIMEOUT).await?;
        let snapshot = cluster.status(4).await?.snapshot_index;
        ensure!(snapshot.is_some(), "node 4 has no snapshot");
        let tokens = (&writer, &other, &doomed);
        wait_until(TIMEOUT, "ACL state on the new member", || {
            acl_state_holds(&cluster, 4, tokens, lease)
        })
        .await?;
        Ok(())
    })
    .await;
}

/// On node `id`: `writer` works and owns `lease`, `other` may not keep it alive, and the
/// revoked `doomed` is refused.
async fn acl_state_holds(
    cluster: &Cluster,
    id: u64,
    (writer, other, doomed): (&TokenCreated, &TokenCreated, &TokenCreated),
    lease: uuid::Uuid,
) -> Result<()> {
    let w = client(cluster, id, &writer.secret)?;
    let who = w.acl_token_self().await?.value;
    ensure!(who.accessor == writer.token.accessor, "node {id}: {who:?}");
    w.get_lease(lease, Consistency::Linearizable).await?;
    let refused = client(cluster, id, &doomed.secret)?
        .services(Default::default())
        .await;
    ensure!(
        refused.as_ref().is_err_and(|e| e.is_unauthenticated()),
        "node {id}: the revoked token after a restart: {refused:?}"
    );
    let stolen = client(cluster, id, &other.secret)?.keepalive(lease).await;
    ensure!(
        stolen.as_ref().is_err_and(|e| e.is_permission_denied()),
        "node {id}: another token kept the lease alive: {stolen:?}"
    );
    Ok(())
}
