//! Active health checks at run time, on every server: [`probe`] runs one probe (HTTP,
//! TCP, gRPC health), [`schedule`] keeps the checks this server owns, when each is due
//! and what its probes add up to. What a check is and who owns it is replicated state
//! (`crate::replicated::checks`); the loop that ties these together, the second opinion
//! before a critical transition and the leader's prober set are `crate::app::checks`.
//!
//! **Invariant:** probes are never written to the log; only transitions are, and only
//! when a check's threshold of consecutive results is reached.

use std::time::Duration;

use crate::replicated::checks::Probe;

pub mod probe;
pub mod schedule;

/// Runs one probe of `probe`, bounded by `timeout`.
pub async fn run(probes: &probe::Probes, probe: &Probe, timeout: Duration) -> probe::ProbeOutcome {
    match probe {
        Probe::Http {
            url,
            method,
            headers,
            expect,
        } => probes.http(url, method, headers, *expect, timeout).await,
        Probe::Tcp { host, port } => probes.tcp(host, *port, timeout).await,
        Probe::Grpc {
            host,
            port,
            service,
        } => probes.grpc(host, *port, service, timeout).await,
    }
}
