//! The nemesis: a schedule of faults drawn from a seed, and the code that injects them
//! into a [`FaultCluster`] and heals them.
//!
//! A schedule is a list of [`Step`]s: inject one fault, hold it, heal it, rest. The
//! schedule is a pure function of the seed and the cluster size, so a failing run is
//! reproduced by running the same seed again (`FAULT_SEED=<seed>`). Faults that target
//! "the leader" pick it when they are injected, which depends on timing; the printed
//! schedule and the run log say which node it was.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use anyhow::Result;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use rand::{Rng as _, SeedableRng as _};

use super::FaultCluster;

/// One kind of fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Cut `minority` off from the other nodes, both directions.
    Partition { minority: Vec<u64> },
    /// Cut the current leader off from every other node, both directions.
    IsolateLeader,
    /// The current leader's messages to the others are lost; theirs still reach it (and
    /// so do the answers to its own requests that got through before).
    LeaderCannotSend,
    /// Traffic from `from` to `to` is lost; the other direction still works.
    OneWay { from: u64, to: u64 },
    /// Every link delays every byte by this much in each direction.
    Delay { by: Duration },
    /// SIGKILL a node; it is restarted (same data dir) when the fault heals.
    Kill { node: u64 },
    /// SIGKILL the current leader; restarted when the fault heals.
    KillLeader,
    /// SIGSTOP a node; SIGCONT when the fault heals.
    Pause { node: u64 },
    /// SIGSTOP the current leader (the fault behind stale reads from a paused leader).
    PauseLeader,
    /// SIGKILL every node at once (a power cut); all restart when the fault heals.
    RestartAll,
}

impl Fault {
    /// A short name for counting faults by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Partition { .. } => "partition",
            Fault::IsolateLeader => "isolate-leader",
            Fault::LeaderCannotSend => "leader-cannot-send",
            Fault::OneWay { .. } => "one-way",
            Fault::Delay { .. } => "delay",
            Fault::Kill { .. } => "kill",
            Fault::KillLeader => "kill-leader",
            Fault::Pause { .. } => "pause",
            Fault::PauseLeader => "pause-leader",
            Fault::RestartAll => "restart-all",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition { minority } => write!(f, "partition {minority:?} from the rest"),
            Fault::OneWay { from, to } => write!(f, "lose traffic {from} -> {to}"),
            Fault::Delay { by } => write!(f, "delay every link by {by:?}"),
            Fault::Kill { node } => write!(f, "SIGKILL node {node}"),
            Fault::Pause { node } => write!(f, "SIGSTOP node {node}"),
            other => f.write_str(other.kind()),
        }
    }
}

/// One or two faults at once, how long they last, and the calm after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub faults: Vec<Fault>,
    pub hold: Duration,
    pub rest: Duration,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults: Vec<String> = self.faults.iter().map(ToString::to_string).collect();
        write!(
            f,
            "{} for {} ms, then {} ms healed",
            faults.join(" + "),
            self.hold.as_millis(),
            self.rest.as_millis()
        )
    }
}

/// Draws a schedule of about `length` for a cluster of `nodes` nodes from `seed`.
pub fn schedule(seed: u64, nodes: u64, length: Duration) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids: Vec<u64> = (1..=nodes).collect();
    let mut steps = Vec::new();
    let mut total = Duration::ZERO;
    while total < length {
        let mut faults = vec![draw(&mut rng, &ids)];
        // A quarter of the steps combine two faults (a partition while a node is
        // down, a pause during delays, ...); a whole-cluster restart stays alone.
        if faults[0] != Fault::RestartAll && rng.random_bool(0.25) {
            let second = draw(&mut rng, &ids);
            if second != Fault::RestartAll {
                faults.push(second);
            }
        }
        // Some faults outlast an election timeout (1 s to 2 s in the harness), some not:
        // both sides of that line hide different bugs.
        let hold = Duration::from_millis(rng.random_range(300..=4_000));
        let rest = Duration::from_millis(rng.random_range(500..=2_000));
        total += hold + rest;
        steps.push(Step { faults, hold, rest });
    }
    steps
}

/// Draws one fault.
fn draw(rng: &mut StdRng, ids: &[u64]) -> Fault {
    match rng.random_range(0..10) {
        0 => {
            let mut shuffled = ids.to_vec();
            shuffled.shuffle(rng);
            let size = rng.random_range(1..=(ids.len() - 1) / 2);
            let mut minority = shuffled[..size].to_vec();
            minority.sort_unstable();
            Fault::Partition { minority }
        }
        1 => Fault::IsolateLeader,
        2 => Fault::LeaderCannotSend,
        3 => {
            let from = *ids.choose(rng).expect("a cluster has nodes");
            let others: Vec<u64> = ids.iter().copied().filter(|&i| i != from).collect();
            let to = *others.choose(rng).expect("a cluster has two nodes");
            Fault::OneWay { from, to }
        }
        4 => Fault::Delay {
            by: Duration::from_millis(rng.random_range(20..=250)),
        },
        5 => Fault::Kill {
            node: *ids.choose(rng).expect("a cluster has nodes"),
        },
        6 => Fault::KillLeader,
        7 => Fault::Pause {
            node: *ids.choose(rng).expect("a cluster has nodes"),
        },
        8 => Fault::PauseLeader,
        _ => Fault::RestartAll,
    }
}

/// What the nemesis did: faults injected, by kind.
#[derive(Debug, Clone, Default)]
pub struct FaultCounts(pub BTreeMap<&'static str, usize>);

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, n)| format!("{k} {n}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// How to undo an injected fault.
enum Undo {
    Nothing,
    Heal,
    Restart(u64),
    Resume(u64),
    RestartAll,
}

/// Runs `steps` against `cluster`, logging each action with its time, and leaves the
/// cluster healed (links passing, every node running and resumed).
pub async fn run(cluster: &FaultCluster, steps: &[Step]) -> Result<FaultCounts> {
    let mut counts = FaultCounts::default();
    for step in steps {
        let mut undo = Vec::new();
        for fault in &step.faults {
            undo.push(inject(cluster, fault).await?);
            *counts.0.entry(fault.kind()).or_default() += 1;
        }
        tokio::time::sleep(step.hold).await;
        for undo in undo.into_iter().rev() {
            heal(cluster, undo).await?;
        }
        cluster.log("healed".to_owned());
        tokio::time::sleep(step.rest).await;
    }
    Ok(counts)
}

async fn inject(cluster: &FaultCluster, fault: &Fault) -> Result<Undo> {
    let links = &cluster.links;
    let nodes = &cluster.nodes;
    let undo = match fault {
        Fault::Partition { minority } => {
            let rest: Vec<u64> = nodes
                .ids()
                .into_iter()
                .filter(|id| !minority.contains(id))
                .collect();
            links.partition(&[minority.clone(), rest])?;
            Undo::Heal
        }
        Fault::IsolateLeader => {
            let leader = cluster.current_leader().await;
            links.isolate(leader);
            Undo::Heal
        }
        Fault::LeaderCannotSend => {
            let leader = cluster.current_leader().await;
            for to in nodes.ids().into_iter().filter(|&id| id != leader) {
                links.cut_one_way(leader, to);
            }
            Undo::Heal
        }
        Fault::OneWay { from, to } => {
            links.cut_one_way(*from, *to);
            Undo::Heal
        }
        Fault::Delay { by } => {
            links.delay_all(*by);
            Undo::Heal
        }
        // A node the step's other fault already took down is left as it is.
        Fault::Kill { node } | Fault::Pause { node } if !nodes.is_running(*node) => Undo::Nothing,
        Fault::Kill { node } => {
            nodes.kill(*node).await?;
            Undo::Restart(*node)
        }
        Fault::KillLeader => {
            let leader = cluster.current_leader().await;
            nodes.kill(leader).await?;
            Undo::Restart(leader)
        }
        Fault::Pause { node } => {
            nodes.pause(*node)?;
            Undo::Resume(*node)
        }
        Fault::PauseLeader => {
            let leader = cluster.current_leader().await;
            nodes.pause(leader)?;
            Undo::Resume(leader)
        }
        Fault::RestartAll => {
            nodes.kill_all().await?;
            Undo::RestartAll
        }
    };
    cluster.log(format!("fault: {fault}; links: {}", links.describe()));
    Ok(undo)
}

async fn heal(cluster: &FaultCluster, undo: Undo) -> Result<()> {
    match undo {
        Undo::Nothing => {}
        Undo::Heal => cluster.links.heal(),
        Undo::Restart(node) => cluster.nodes.restart(node).await?,
        Undo::Resume(node) => cluster.nodes.resume(node)?,
        Undo::RestartAll => {
            for id in cluster.nodes.ids() {
                if !cluster.nodes.is_running(id) {
                    cluster.nodes.restart(id).await?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_draws_the_same_schedule() {
        let a = schedule(42, 3, Duration::from_secs(60));
        let b = schedule(42, 3, Duration::from_secs(60));
        assert_eq!(a, b);
        assert_ne!(a, schedule(43, 3, Duration::from_secs(60)));
    }

    #[test]
    fn schedules_cover_their_length_with_valid_faults() {
        for seed in 0..200 {
            for nodes in [3, 5] {
                let steps = schedule(seed, nodes, Duration::from_secs(30));
                let total: Duration = steps.iter().map(|s| s.hold + s.rest).sum();
                assert!(total >= Duration::from_secs(30), "seed {seed}: {total:?}");
                for fault in steps.iter().flat_map(|s| &s.faults) {
                    match fault {
                        Fault::Partition { minority } => {
                            assert!(!minority.is_empty());
                            assert!((minority.len() as u64) * 2 < nodes, "{minority:?}");
                        }
                        Fault::OneWay { from, to } => assert_ne!(from, to),
                        Fault::Kill { node } | Fault::Pause { node } => {
                            assert!((1..=nodes).contains(node))
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    #[test]
    fn schedules_mix_every_kind_of_fault() {
        let mut kinds = std::collections::BTreeSet::new();
        let mut combined = false;
        for seed in 0..50 {
            for step in schedule(seed, 3, Duration::from_secs(30)) {
                kinds.extend(step.faults.iter().map(Fault::kind));
                combined |= step.faults.len() == 2;
            }
        }
        assert_eq!(kinds.len(), 10, "{kinds:?}");
        assert!(combined, "no step combined two faults");
    }
}
