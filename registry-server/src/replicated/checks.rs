//! Active health checks in the replicated state: what each check probes ([`CheckSpec`]),
//! what the log last heard about it ([`CheckState`]), and who probes it ([`owner`]).
//!
//! Probes are not replicated: the server that owns a check runs them and proposes a
//! [`CheckResult`] only when a threshold flips the check's status. Ownership is
//! rendezvous hashing over the prober set the leader keeps in the state
//! ([`crate::replicated::state::AppState::probers`]): every server computes the same owner
//! from the same applied state, and a server joining or leaving moves only the checks whose
//! highest score it had or now has, about 1/N of them.

use api_spec::checks::{CheckKind, CheckStatus};
use api_spec::rules::ExpectStatus;
use serde::{Deserialize, Serialize};

use crate::replicated::catalog::InstanceKey;

/// What one probe does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    Http {
        url: String,
        method: String,
        headers: Vec<(String, String)>,
        expect: ExpectStatus,
    },
    Tcp {
        host: String,
        port: u16,
    },
    Grpc {
        host: String,
        port: u16,
        service: String,
    },
}

impl Probe {
    pub fn kind(&self) -> CheckKind {
        match self {
            Probe::Http { .. } => CheckKind::Http,
            Probe::Tcp { .. } => CheckKind::Tcp,
            Probe::Grpc { .. } => CheckKind::Grpc,
        }
    }

    /// The host it probes: the URL's host (without brackets), or the `host` of
    /// `host:port`.
    pub fn host(&self) -> &str {
        match self {
            Probe::Http { url, .. } => url_host(url),
            Probe::Tcp { host, .. } | Probe::Grpc { host, .. } => host,
        }
    }

    /// Whether it probes `address` (an instance's own address): the same IP address, or
    /// the same host name in any case.
    pub fn targets(&self, address: &str) -> bool {
        same_host(self.host(), address)
    }

    /// The URL or `host:port` it probes, as the view shows it.
    pub fn target(&self) -> String {
        match self {
            Probe::Http { url, .. } => url.clone(),
            Probe::Tcp { host, port } | Probe::Grpc { host, port, .. } => {
                if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                }
            }
        }
    }
}

/// The host of an `http://` or `https://` URL (brackets of an IPv6 host removed); the
/// URL was validated, so anything else yields an empty host, which targets nothing.
pub fn url_host(url: &str) -> &str {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or("");
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // No user info is accepted by validation; drop it anyway so it cannot hide a host.
    let host_port = authority.rsplit('@').next().unwrap_or("");
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    host_port.split(':').next().unwrap_or("")
}

/// Two hosts are the same: equal IP addresses however written, or equal names ignoring
/// case and a trailing dot.
pub fn same_host(a: &str, b: &str) -> bool {
    match (
        a.parse::<core::net::IpAddr>(),
        b.parse::<core::net::IpAddr>(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        (Err(_), Err(_)) => {
            let trim = |h: &str| h.trim_end_matches('.').to_ascii_lowercase();
            !a.is_empty() && trim(a) == trim(b)
        }
        _ => false,
    }
}

/// One check of a registration, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub name: String,
    pub probe: Probe,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub failures_before_critical: u32,
    pub successes_before_passing: u32,
}

/// What the log knows about a check: its status since the last transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckState {
    pub status: CheckStatus,
    /// What the probe that made the transition saw (cut to
    /// [`api_spec::checks::MAX_CHECK_OUTPUT`] bytes by the prober).
    pub output: String,
    /// Replicated time of the transition (ms since the epoch).
    pub changed_at_ms: u64,
}

impl CheckState {
    /// The output of a check that was never probed.
    pub const NOT_PROBED: &'static str = "not probed yet";

    /// A new check: critical until its first probe passes.
    pub fn new(now_ms: u64) -> Self {
        Self {
            status: CheckStatus::Critical,
            output: Self::NOT_PROBED.to_owned(),
            changed_at_ms: now_ms,
        }
    }
}

/// A transition a prober saw: the check `check` of the instance `key`, as defined by the
/// registration applied at `generation` (a result for an older definition is dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub key: InstanceKey,
    pub check: String,
    pub generation: u64,
    pub status: CheckStatus,
    pub output: String,
}

/// A stable 64-bit hash (FNV-1a, then a SplitMix64 finish for the avalanche FNV lacks).
/// Fixed by this code, not by the Rust release: servers built by different compilers must
/// pick the same owners.
fn stable_hash(parts: &[&[u8]], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn score(node: u64, key: &InstanceKey, check: &str) -> u64 {
    stable_hash(
        &[key.0.as_bytes(), key.1.as_bytes(), check.as_bytes()],
        node,
    )
}

/// The probers of one check, best first: rendezvous (highest random weight) hashing of
/// the check against each prober. The first owns the check; the second confirms a
/// critical transition.
pub fn ranked(probers: &[u64], key: &InstanceKey, check: &str) -> Vec<u64> {
    let mut scored: Vec<(u64, u64)> = probers
        .iter()
        .map(|&node| (score(node, key, check), node))
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().map(|(_, node)| node).collect()
}

/// The prober that owns a check, if there is any prober.
pub fn owner(probers: &[u64], key: &InstanceKey, check: &str) -> Option<u64> {
    probers
        .iter()
        .map(|&node| (score(node, key, check), node))
        .max()
        .map(|(_, node)| node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> InstanceKey {
        (format!("svc-{}", i % 37).into(), format!("i-{i}").into())
    }

    #[test]
    fn owners_spread_evenly_and_agree_with_the_ranking() {
        let probers = [1, 2, 3];
        let mut counts = [0usize; 4];
        for i in 0..9_000 {
            let owner = owner(&probers, &key(i), "http").unwrap();
            assert_eq!(ranked(&probers, &key(i), "http")[0], owner);
            counts[owner as usize] += 1;
        }
        for n in &counts[1..] {
            assert!((2_700..3_300).contains(n), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn a_member_leaving_or_joining_moves_only_its_share() {
        let before = [1, 2, 3];
        let after = [1, 2];
        let joined = [1, 2, 3, 4];
        let (mut moved, mut moved_on_join) = (0, 0);
        for i in 0..9_000 {
            let (a, b) = (owner(&before, &key(i), "c"), owner(&after, &key(i), "c"));
            if a != b {
                assert_eq!(a, Some(3), "only node 3's checks move when it leaves");
                moved += 1;
            }
            let c = owner(&joined, &key(i), "c");
            if c != a {
                assert_eq!(c, Some(4), "a joining node only takes checks");
                moved_on_join += 1;
            }
        }
        assert!((2_700..3_300).contains(&moved), "moved {moved}");
        assert!(
            (1_950..2_550).contains(&moved_on_join),
            "moved {moved_on_join}"
        );
    }

    #[test]
    fn no_prober_no_owner_and_the_hash_is_fixed() {
        assert_eq!(owner(&[], &key(1), "c"), None);
        // Pinned: a change of this value changes who owns what in a mixed-version cluster.
        assert_ne!(
            stable_hash(&[b"ab", b"c"], 1),
            stable_hash(&[b"a", b"bc"], 1)
        );
        assert_eq!(
            stable_hash(&[b"web", b"1", b"http"], 1),
            10_514_729_359_412_924_788
        );
    }
}
