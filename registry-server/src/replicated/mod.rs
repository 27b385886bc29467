//! The pure replicated core: the state every replica builds from the same log.
//! [`state::AppState`] joins the service [`catalog`] and the `locks` coordination core
//! (leases, locks, elections) and applies each command of a log entry; [`checks`] holds
//! the active checks' definitions and states and who probes each; [`ops`] pairs
//! each command with the typed answer its proposer gets; [`acl`] holds the tokens and
//! lease owners and decides what a caller may do; [`intern`] shares the strings a
//! million instances repeat.
//!
//! **Invariant:** no IO, no clock, no async, no randomness. Time and the log index are
//! inputs (the leader stamps each entry), so the same log gives the same state on every
//! replica. A test below checks the sources for what would break that.

pub mod acl;
pub mod catalog;
pub mod checks;
pub mod intern;
pub mod ops;
pub mod state;

#[cfg(test)]
mod purity {
    /// The source of every module of this folder.
    const SOURCES: [(&str, &str); 7] = [
        ("mod.rs", include_str!("mod.rs")),
        ("acl.rs", include_str!("acl.rs")),
        ("catalog.rs", include_str!("catalog.rs")),
        ("checks.rs", include_str!("checks.rs")),
        ("intern.rs", include_str!("intern.rs")),
        ("ops.rs", include_str!("ops.rs")),
        ("state.rs", include_str!("state.rs")),
    ];

    /// What a pure state machine never names: runtimes, clocks, IO, threads, randomness.
    /// Spelled in pieces so this list does not trip its own check.
    fn forbidden() -> Vec<String> {
        [
            ("tok", "io"),
            ("Inst", "ant"),
            ("System", "Time"),
            ("std::", "fs"),
            ("std::", "net"),
            ("std::", "thread"),
            ("std::", "io"),
            ("std::", "env"),
            ("std::", "process"),
            ("async ", "fn"),
            (".aw", "ait"),
            ("ra", "nd::"),
            ("rocks", "db"),
            ("open", "raft"),
            ("ax", "um"),
            ("req", "west"),
        ]
        .iter()
        .map(|(a, b)| format!("{a}{b}"))
        .collect()
    }

    #[test]
    fn the_replicated_core_does_no_io_reads_no_clock_and_has_no_async() {
        for (file, source) in SOURCES {
            for word in forbidden() {
                let lines: Vec<usize> = source
                    .lines()
                    .enumerate()
                    .filter(|(_, line)| line.contains(&word))
                    .map(|(n, _)| n + 1)
                    .collect();
                assert!(
                    lines.is_empty(),
                    "replicated/{file} names `{word}` (lines {lines:?}): the replicated core must stay pure"
                );
            }
        }
    }

    #[test]
    fn the_replicated_core_imports_nothing_else_of_the_server() {
        for (file, source) in SOURCES {
            for (n, line) in source.lines().enumerate() {
                let line = line.trim();
                if line.starts_with("use crate::") {
                    assert!(
                        line.starts_with("use crate::replicated::"),
                        "replicated/{file}:{}: `{line}` reaches outside the replicated core",
                        n + 1
                    );
                }
            }
        }
    }
}
