//! The wire views: how domain values (`locks`, `catalog`, `app` types) look in JSON.
//! Every answer body the public API sends is built here, from `api_spec` types.

use std::time::Duration;

use api_spec::{
    ClusterStatus, ElectionInfo, ElectionLeader, ExpiryStormStatus, LeaseInfo, LockHolder,
    LockInfo, LockWaiter, Member, ServiceSummary, INDEX_HEADER,
};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use locks::{Hold, Lease, LockState, Waiter};

use crate::app::{ClusterInfo, ServiceCounts};
use crate::replicated::catalog::InstanceRecord;

/// A JSON answer carrying the index it reflects.
pub(super) fn indexed<T: serde::Serialize>(index: u64, body: T) -> Response {
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(index));
    response
}

fn duration_text(ms: u64) -> String {
    api_spec::format_duration(Duration::from_millis(ms))
}

/// A lease; `remaining` is known only on the leader.
pub(super) fn lease_info(lease: &Lease, remaining: Option<Duration>) -> LeaseInfo {
    LeaseInfo {
        lease: lease.id,
        ttl: duration_text(lease.ttl_ms),
        ttl_ms: lease.ttl_ms,
        granted_index: lease.granted_index,
        granted_at_ms: lease.granted_at_ms,
        remaining_ms: remaining.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// An instance. `lease` is `None` once the lease has ended; the TTL is then unknown and
/// shown as 0 (and absent for an instance without a lease). `probers` say who runs its
/// checks.
pub(super) fn instance(
    service: &str,
    id: &str,
    record: &InstanceRecord,
    lease: Option<&Lease>,
    probers: &[u64],
) -> api_spec::Instance {
    let ttl_ms = record.lease.map(|_| lease.map_or(0, |l| l.ttl_ms));
    let spec = &record.spec;
    // Most instances have no checks: build the owner's key only for those that do (this
    // runs for every instance a resolve answers).
    let key = (!spec.checks.is_empty()).then(|| crate::replicated::catalog::key(service, id));
    let checks = key
        .iter()
        .flat_map(|key| spec.checks.iter().map(move |check| (key, check)))
        .zip(record.checks())
        .map(|((key, check), state)| api_spec::checks::CheckInfo {
            name: check.name.clone(),
            kind: check.probe.kind(),
            target: check.probe.target(),
            interval: duration_text(check.interval_ms),
            interval_ms: check.interval_ms,
            timeout_ms: check.timeout_ms,
            failures_before_critical: check.failures_before_critical,
            successes_before_passing: check.successes_before_passing,
            status: state.status,
            output: state.output.clone(),
            changed_at_ms: state.changed_at_ms,
            owner: crate::replicated::checks::owner(probers, key, &check.name),
        })
        .collect();
    api_spec::Instance {
        service: service.to_owned(),
        id: id.to_owned(),
        address: spec.address.to_string(),
        port: spec.port,
        tags: spec.tags.iter().map(|t| t.to_string()).collect(),
        meta: spec
            .meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        zone: spec.zone().map(str::to_owned),
        region: spec.region().map(str::to_owned),
        weight: spec.weight,
        status: record.status,
        lease: record.lease,
        own_lease: record.own_lease,
        ttl: ttl_ms.map(duration_text),
        ttl_ms,
        deregister_after: duration_text(spec.deregister_after_ms),
        deregister_after_ms: spec.deregister_after_ms,
        registered_at_ms: record.registered_at_ms,
        modify_index: record.modify_index,
        critical_since_ms: record.critical_since().map(|(ms, _)| ms),
        checks,
    }
}

/// One line of `GET /v1/services`.
pub(super) fn service_summary(counts: ServiceCounts) -> ServiceSummary {
    ServiceSummary {
        name: counts.name,
        instances: counts.instances,
        healthy: counts.healthy,
    }
}

/// A lock; its holder's token and the leases appear only where `reveal` (to a caller
/// with write access to the lock).
pub(super) fn lock_info(name: &str, state: &LockState, reveal: bool) -> LockInfo {
    let waiter = |w: &Waiter| LockWaiter {
        lease: reveal.then_some(w.lease),
        ..waiter(w)
    };
    LockInfo {
        name: name.to_owned(),
        held: state.holder.is_some(),
        holder: state.holder.as_ref().map(|h| LockHolder {
            holder: h.holder.clone(),
            token: reveal.then_some(h.token),
            lease: reveal.then_some(h.lease),
            own_lease: h.own_lease,
            lock_delay_ms: h.lock_delay_ms,
            granted_index: h.granted_index,
            granted_at_ms: h.granted_at_ms,
        }),
        waiters: state.waiters.iter().map(waiter).collect(),
        delay_until_ms: state.delay_until_ms,
        modify_index: state.modify_index,
    }
}

/// An election.
pub(super) fn election_info(name: &str, state: &LockState) -> ElectionInfo {
    ElectionInfo {
        name: name.to_owned(),
        leader: state.holder.as_ref().map(|h| leader(name, h)),
        candidates: state.waiters.iter().map(waiter).collect(),
        modify_index: state.modify_index,
    }
}

fn waiter(w: &Waiter) -> LockWaiter {
    LockWaiter {
        holder: w.holder.clone(),
        lease: Some(w.lease),
        queued_index: w.queued_index,
        queued_at_ms: w.queued_at_ms,
    }
}

/// An election's leader.
pub(super) fn leader(name: &str, hold: &Hold) -> ElectionLeader {
    ElectionLeader {
        name: name.to_owned(),
        candidate: hold.holder.clone(),
        token: hold.token,
        lease: hold.lease,
        own_lease: hold.own_lease,
        since_index: hold.granted_index,
        since_ms: hold.granted_at_ms,
    }
}

/// `GET /v1/cluster`.
pub(super) fn cluster_status(info: ClusterInfo) -> ClusterStatus {
    ClusterStatus {
        node_id: info.node_id,
        role: info.role,
        leader: info.leader,
        leader_addr: info.leader_addr,
        term: info.term,
        last_log_index: info.last_log_index,
        commit_index: info.commit_index,
        applied_index: info.applied_index,
        snapshot_index: info.snapshot_index,
        purged_index: info.purged_index,
        members: info.members.into_iter().map(member).collect(),
        expiry_storm: info.expiry_storm.map(|storm| ExpiryStormStatus {
            enabled: storm.enabled,
            active_services: storm.active,
            deferred_total: storm.deferred_total,
        }),
        limits: node_limits(info.limits),
        probers: info.probers,
    }
}

fn node_limits(l: crate::app::LimitsInfo) -> api_spec::NodeLimits {
    let n = |v: usize| v as u64;
    api_spec::NodeLimits {
        connections: n(l.connections),
        max_connections: n(l.max_connections),
        peer_connections: l.peer_connections.map(n),
        blocking_queries: n(l.blocking_queries),
        max_blocking_queries: n(l.max_blocking_queries),
        parked_waiters: n(l.parked_waiters),
        max_parked_waiters: n(l.max_parked_waiters),
        queued_writes: n(l.queued_writes),
        max_queued_writes: n(l.max_queued_writes),
    }
}

fn member(m: crate::app::MemberInfo) -> Member {
    Member {
        id: m.id,
        addr: m.addr,
        voter: m.voter,
        role: m.role,
    }
}
