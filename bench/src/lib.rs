//! Benchmarks the registry against etcd: the same closed-loop load generator (`load`),
//! the same workloads over each system's HTTP+JSON API (`workloads`), three-node clusters
//! of local processes (`systems`), and a table plus JSON of the results (`report`); and
//! the scale suite (`scale`: a cluster filled with a million instances, many parked
//! blocking queries, learners). `scripts/bench.sh` builds and runs it; `src/main.rs` is
//! the command line.

pub mod certs;
pub mod checks;
pub mod extras;
pub mod load;
pub mod report;
pub mod scale;
pub mod scale_filled;
pub mod scale_learners;
pub mod scale_watch;
pub mod systems;
pub mod workloads;
