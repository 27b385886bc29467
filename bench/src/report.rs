//! Results: one row per (workload, concurrency) with each side's measurement, the table
//! printed at the end and the JSON document written for later comparison.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::Measurement;

/// One side's outcome for one row: a measurement, or why there is none.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SideResult {
    /// What one operation is on this side (requests and bodies).
    pub operation: String,
    pub measurement: Option<Measurement>,
    /// Set when the run could not take place or broke off (setup failed, cluster died).
    pub failure: Option<String>,
}

/// One line of the results. Workloads measured on one side only (ceilings, say) leave
/// the other side empty; the ratio is then absent.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub concurrency: usize,
    pub registry: SideResult,
    pub etcd: SideResult,
    /// Registry ops/s divided by etcd ops/s (above 1: the registry did more).
    pub ratio: Option<f64>,
}

impl Row {
    pub fn new(workload: &str, concurrency: usize) -> Row {
        Row {
            workload: workload.to_owned(),
            concurrency,
            registry: SideResult::default(),
            etcd: SideResult::default(),
            ratio: None,
        }
    }

    /// Fills in the ratio once both sides are in.
    pub fn finish(&mut self) {
        self.ratio = match (&self.registry.measurement, &self.etcd.measurement) {
            (Some(r), Some(e)) if e.ops_per_sec > 0.0 => Some(r.ops_per_sec / e.ops_per_sec),
            _ => None,
        };
    }

    /// Errors and failures of both sides, for the table's last column.
    fn problems(&self) -> String {
        let mut out = Vec::new();
        for (name, side) in [("registry", &self.registry), ("etcd", &self.etcd)] {
            if side.failure.is_some() {
                out.push(format!("{name} FAILED"));
            } else if let Some(m) = &side.measurement {
                if m.errors > 0 {
                    out.push(format!("{name} {}", m.errors));
                }
            }
        }
        if out.is_empty() {
            "0".to_owned()
        } else {
            out.join(", ")
        }
    }
}

/// Where and with what the results were measured.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    /// When the benchmark started, RFC 3339 UTC.
    pub date: String,
    pub hostname: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub registry_version: String,
    /// The workspace's commit (`git describe --always --dirty`), if known.
    pub git_commit: String,
    pub etcd_version: String,
    /// Members in each cluster.
    pub nodes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub quick: bool,
    /// "leader" (every worker talks to the leader) or "spread" (round robin over members).
    pub target: String,
    /// Both systems run on this machine with the load generator, one after the other.
    pub note: String,
}

/// The JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub results: Vec<Row>,
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn side_cells(side: &SideResult) -> [String; 3] {
    match &side.measurement {
        Some(m) if m.ops > 0 => [format!("{:.0}", m.ops_per_sec), ms(m.p50_us), ms(m.p99_us)],
        Some(_) => ["0".to_owned(), "-".to_owned(), "-".to_owned()],
        None if side.failure.is_some() => ["FAILED".to_owned(), "-".to_owned(), "-".to_owned()],
        None => ["-".to_owned(), "-".to_owned(), "-".to_owned()],
    }
}

/// The results as a text table (latencies in milliseconds), followed by the error
/// samples and failures of any run that had them.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "workload",
        "conc",
        "reg ops/s",
        "reg p50",
        "reg p99",
        "etcd ops/s",
        "etcd p50",
        "etcd p99",
        "reg/etcd",
        "errors",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    for row in rows {
        let mut line = vec![row.workload.clone(), row.concurrency.to_string()];
        line.extend(side_cells(&row.registry));
        line.extend(side_cells(&row.etcd));
        line.push(row.ratio.map_or("-".to_owned(), |r| format!("{r:.2}")));
        line.push(row.problems());
        lines.push(line);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c == 0 || c == header.len() - 1 {
                    format!("{cell:<w$}", w = widths[c])
                } else {
                    format!("{cell:>w$}", w = widths[c])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        if n == 0 {
            let total = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    out.push_str("(latencies in ms; ops/s counts successful operations only)\n");
    for row in rows {
        for (name, side) in [("registry", &row.registry), ("etcd", &row.etcd)] {
            if let Some(failure) = &side.failure {
                let _ = writeln!(
                    out,
                    "{} c{} {name} failed: {failure}",
                    row.workload, row.concurrency
                );
            }
            if let Some(m) = &side.measurement {
                for (message, count) in &m.error_samples {
                    let _ = writeln!(
                        out,
                        "{} c{} {name} error ({count}x): {message}",
                        row.workload, row.concurrency
                    );
                }
            }
        }
    }
    out
}
