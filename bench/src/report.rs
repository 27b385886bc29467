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
    /// The load generator's figures (rows of kind `throughput` and `ceiling`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement: Option<Measurement>,
    /// The row's headline figure in the row's `unit`, for rows that are not throughput
    /// (watch fan-out p99, failover time to recover, bytes per instance, fsyncs/s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Every figure of such a row, by name (for the JSON), and a one-line summary of them
    /// (for the table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Set when the run could not take place or broke off (setup failed, cluster died).
    pub failure: Option<String>,
}

/// One line of the results. Workloads measured on one side only (ceilings, say) leave
/// the other side empty; the ratio is then absent.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub concurrency: usize,
    /// `throughput` (ops/s of both systems, the main table), `ceiling` (this machine's
    /// limits, measured without either system: `machine` holds them), `watch-fanout`,
    /// `failover` or `memory` (each side's `value` in `unit`).
    pub kind: String,
    /// Unit of `value` and `ratio`'s operands: "ops/s", "ms", "bytes/instance", "fsyncs/s".
    pub unit: String,
    pub registry: SideResult,
    pub etcd: SideResult,
    /// Rows of kind `ceiling`: the machine's figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<SideResult>,
    /// Registry figure divided by etcd's (ops/s for throughput: above 1 the registry did
    /// more; for `ms` and `bytes/instance` rows below 1 is better for the registry).
    pub ratio: Option<f64>,
}

impl Row {
    pub fn new(workload: &str, concurrency: usize) -> Row {
        Row::of_kind(workload, concurrency, "throughput", "ops/s")
    }

    pub fn of_kind(workload: &str, concurrency: usize, kind: &str, unit: &str) -> Row {
        Row {
            workload: workload.to_owned(),
            concurrency,
            kind: kind.to_owned(),
            unit: unit.to_owned(),
            registry: SideResult::default(),
            etcd: SideResult::default(),
            machine: None,
            ratio: None,
        }
    }

    pub fn is_throughput(&self) -> bool {
        self.kind == "throughput"
    }

    /// Fills in the ratio once both sides are in.
    pub fn finish(&mut self) {
        self.ratio = if self.is_throughput() {
            match (&self.registry.measurement, &self.etcd.measurement) {
                (Some(r), Some(e)) if e.ops_per_sec > 0.0 => Some(r.ops_per_sec / e.ops_per_sec),
                _ => None,
            }
        } else {
            match (self.registry.value, self.etcd.value) {
                (Some(r), Some(e)) if e > 0.0 => Some(r / e),
                _ => None,
            }
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
    /// How etcd is driven (its grpc-gateway: an extra in-process hop).
    pub etcd_api: String,
}

/// One target of the issue, checked against the measured figures.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// What is wanted ("heartbeat-64 >= 4x etcd").
    pub target: String,
    /// What was measured, in words and figures.
    pub measured: String,
    /// `None` when a figure it needs is missing (a run failed or was not selected).
    pub pass: Option<bool>,
}

/// The JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub results: Vec<Row>,
    pub targets: Vec<TargetCheck>,
    /// Features on against off (`--extra acl-overhead`, `--extra tls-overhead`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overheads: Vec<crate::extras::Overhead>,
    /// The scale suite's steps (`--scale`; `results` is then empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<crate::scale::ScaleReport>,
}

/// The targets as text, one a line, after the table.
pub fn targets_text(targets: &[TargetCheck]) -> String {
    let mut out = String::from("\ntargets:\n");
    let width = targets.iter().map(|t| t.target.len()).max().unwrap_or(0);
    for t in targets {
        let verdict = match t.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a ",
        };
        let _ = writeln!(out, "  {verdict}  {:<width$}  {}", t.target, t.measured);
    }
    out
}

/// The rows that are not throughput: one line each with both sides' summaries.
fn other_rows(rows: &[Row]) -> String {
    let mut out = String::new();
    let others: Vec<&Row> = rows.iter().filter(|r| !r.is_throughput()).collect();
    if others.is_empty() {
        return out;
    }
    out.push_str("\nother measurements:\n");
    for row in others {
        let _ = writeln!(
            out,
            "{} (c{}, {}):",
            row.workload, row.concurrency, row.unit
        );
        let sides = [
            ("machine", row.machine.as_ref()),
            ("registry", Some(&row.registry)),
            ("etcd", Some(&row.etcd)),
        ];
        for (name, side) in sides {
            let Some(side) = side else { continue };
            let text = if let Some(failure) = &side.failure {
                format!("FAILED: {failure}")
            } else if let Some(summary) = &side.summary {
                summary.clone()
            } else if let Some(m) = &side.measurement {
                format!(
                    "{:.0} ops/s, p50 {} ms, p99 {} ms, {} errors",
                    m.ops_per_sec,
                    ms(m.p50_us),
                    ms(m.p99_us),
                    m.errors
                )
            } else {
                continue;
            };
            let _ = writeln!(out, "  {name:<8}  {text}");
        }
        if let Some(ratio) = row.ratio {
            let _ = writeln!(out, "  {:<8}  {ratio:.2}", "reg/etcd");
        }
    }
    out
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
    for row in rows.iter().filter(|r| r.is_throughput()) {
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
    for row in rows.iter().filter(|r| r.is_throughput()) {
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
    out.push_str(&other_rows(rows));
    out
}

fn find<'a>(rows: &'a [Row], workload: &str, concurrency: usize) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.workload == workload && r.concurrency == concurrency)
}

fn ops(side: &SideResult) -> Option<f64> {
    side.measurement.as_ref().map(|m| m.ops_per_sec)
}

/// `name` registry ops/s at least `factor` times etcd's.
fn times_etcd(rows: &[Row], workload: &str, concurrency: usize, factor: f64) -> TargetCheck {
    let row = find(rows, workload, concurrency);
    let (r, e) = (
        row.and_then(|r| ops(&r.registry)),
        row.and_then(|r| ops(&r.etcd)),
    );
    let target = format!("{workload}-{concurrency} >= {factor}x etcd");
    match (r, e) {
        (Some(r), Some(e)) if e > 0.0 => TargetCheck {
            target,
            measured: format!("{:.2}x ({r:.0} vs {e:.0} ops/s)", r / e),
            pass: Some(r >= factor * e),
        },
        _ => missing(target),
    }
}

fn missing(target: String) -> TargetCheck {
    TargetCheck {
        target,
        measured: "not measured".to_owned(),
        pass: None,
    }
}

/// Registry ops/s of `workload`-`concurrency` at least half the axum ceiling.
fn share_of_ceiling(rows: &[Row], workload: &str, concurrency: usize) -> TargetCheck {
    let target = format!("{workload}-{concurrency} >= 50% of the axum ceiling");
    let r = find(rows, workload, concurrency).and_then(|r| ops(&r.registry));
    let c = find(rows, "axum-ceiling", 64)
        .and_then(|r| r.machine.as_ref())
        .and_then(|m| m.value);
    match (r, c) {
        (Some(r), Some(c)) if c > 0.0 => TargetCheck {
            target,
            measured: format!("{:.0}% ({r:.0} of {c:.0} ops/s)", 100.0 * r / c),
            pass: Some(r >= 0.5 * c),
        },
        _ => missing(target),
    }
}

/// The issues' targets, checked against `rows` (issue 15 raised heartbeat-64 to 5x,
/// register-64 to 3x and resolve-linearizable-64 to 4x etcd).
pub fn check_targets(rows: &[Row]) -> Vec<TargetCheck> {
    let mut out = vec![
        times_etcd(rows, "heartbeat", 64, 5.0),
        share_of_ceiling(rows, "heartbeat", 64),
        times_etcd(rows, "register", 64, 3.0),
        times_etcd(rows, "resolve-linearizable", 64, 4.0),
        share_of_ceiling(rows, "resolve-stale", 64),
        times_etcd(rows, "lock-uncontended", 16, 3.0),
    ];
    // Contended locks: 3x etcd's throughput and a lower p99.
    let mut contended = times_etcd(rows, "lock-contended", 16, 3.0);
    contended.target = "lock-contended-16 >= 3x etcd, p99 below etcd's".to_owned();
    let p99 = find(rows, "lock-contended", 16).and_then(|r| {
        Some((
            r.registry.measurement.as_ref()?.p99_us,
            r.etcd.measurement.as_ref()?.p99_us,
        ))
    });
    if let (Some(pass), Some((r, e))) = (contended.pass, p99) {
        contended.measured = format!("{}; p99 {} vs {} ms", contended.measured, ms(r), ms(e));
        contended.pass = Some(pass && r < e);
    }
    out.push(contended);
    let target = "watch fan-out: 1,000 registry watchers all notified, p99 < 100 ms".to_owned();
    out.push(
        match find(rows, "watch-fanout", 1000).and_then(|r| r.registry.value) {
            Some(p99) => TargetCheck {
                target,
                measured: format!("p99 {p99:.1} ms"),
                pass: Some(p99 < 100.0),
            },
            None => missing(target),
        },
    );
    let target =
        "failover: registry recovers no slower than etcd, 0 acknowledged writes lost".to_owned();
    let failover = find(rows, "failover", 16);
    let lost = |side: &SideResult| side.details.as_ref().and_then(|d| d["lost"].as_u64());
    out.push(
        match failover.and_then(|r| {
            Some((
                r.registry.value?,
                r.etcd.value?,
                lost(&r.registry)?,
                lost(&r.etcd)?,
            ))
        }) {
            Some((r, e, rl, el)) => TargetCheck {
                target,
                measured: format!("{r:.0} ms vs etcd {e:.0} ms; lost: registry {rl}, etcd {el}"),
                pass: Some(r <= e && rl == 0),
            },
            None => missing(target),
        },
    );
    let target = "memory: <= 1 KiB per registered instance (leader RSS)".to_owned();
    out.push(
        match find(rows, "memory", 64).and_then(|r| r.registry.value) {
            Some(b) => TargetCheck {
                target,
                measured: format!("{b:.0} bytes per instance"),
                pass: Some(b <= 1024.0),
            },
            None => missing(target),
        },
    );
    out
}

/// Adds to the ceiling rows how the registry compares with them: heartbeat-64 and
/// resolve-stale-64 as a share of the HTTP+JSON ceiling, register-64 writes per fsync
/// (what batching buys). Also into their `details` for the JSON.
pub fn annotate_ceilings(rows: &mut [Row]) {
    let reg = |rows: &[Row], w: &str, c: usize| find(rows, w, c).and_then(|r| ops(&r.registry));
    let heartbeat = reg(rows, "heartbeat", 64);
    let stale = reg(rows, "resolve-stale", 64);
    let register = reg(rows, "register", 64);
    let etcd_register = find(rows, "register", 64).and_then(|r| ops(&r.etcd));
    for row in rows.iter_mut().filter(|r| r.kind == "ceiling") {
        let Some(machine) = row.machine.as_mut() else {
            continue;
        };
        let Some(value) = machine.value.filter(|v| *v > 0.0) else {
            continue;
        };
        let mut notes = Vec::new();
        let mut details = serde_json::Map::new();
        if row.workload == "axum-ceiling" {
            for (name, figure) in [("heartbeat-64", heartbeat), ("resolve-stale-64", stale)] {
                if let Some(f) = figure {
                    notes.push(format!(
                        "registry {name} {f:.0} ops/s = {:.0}%",
                        100.0 * f / value
                    ));
                    details.insert(format!("registry_{name}_share"), (f / value).into());
                }
            }
        } else if row.workload == "axum-ceiling-service" {
            if let Some(f) = stale {
                notes.push(format!(
                    "registry resolve-stale-64 {f:.0} ops/s = {:.0}% of this same-size ceiling",
                    100.0 * f / value
                ));
                details.insert(
                    "registry_resolve-stale-64_share".to_owned(),
                    (f / value).into(),
                );
            }
        } else if row.workload == "fsync" {
            for (name, figure) in [("registry", register), ("etcd", etcd_register)] {
                if let Some(f) = figure {
                    notes.push(format!(
                        "{name} register-64 {f:.0} writes/s = {:.1} writes per fsync",
                        f / value
                    ));
                    details.insert(
                        format!("{name}_register_64_writes_per_fsync"),
                        (f / value).into(),
                    );
                }
            }
        }
        if notes.is_empty() {
            continue;
        }
        let base = machine
            .summary
            .clone()
            .unwrap_or_else(|| match &machine.measurement {
                Some(m) => format!(
                    "{:.0} ops/s, p50 {} ms, p99 {} ms, {} errors",
                    m.ops_per_sec,
                    ms(m.p50_us),
                    ms(m.p99_us),
                    m.errors
                ),
                None => format!("{value:.0}"),
            });
        machine.summary = Some(format!("{base}; {}", notes.join("; ")));
        let mut all = match machine.details.take() {
            Some(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        all.extend(details);
        machine.details = Some(serde_json::Value::Object(all));
    }
}
