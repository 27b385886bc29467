//! Service commands: register (and keep heartbeating, or leave an instance to its active
//! checks), deregister, list, resolve, watch.

use std::collections::BTreeMap;
use std::time::Duration;

use api_spec::checks::{CheckDefinition, CheckInfo, CheckKind, CheckStatus};
use api_spec::{codes, Instance, InstanceStatus, RegisterRequest, ServiceInstances};
use clap::{ArgGroup, Args};
use registry_client::{Consistency, ReadOptions, ServiceQuery, Uuid};
use tokio::time::Instant;

use crate::output::{self, describe, warn, Failure};
use crate::supervise::Signals;
use crate::{duration, key_value, Context};

/// Shown at the end of `regctl register --help`.
const REGISTER_HELP: &str = "\
Active checks:
  --http-check, --tcp-check and --grpc-check (each repeatable) make the cluster probe the
  instance. Checks are named by kind in the order given: `http`, `http-2`, `http-3`, ...;
  `tcp`, `tcp-2`, ...; `grpc`, `grpc-2`, ... The --check-* options, --expect-status and
  the thresholds apply to every check given (--check-method, --check-header and
  --expect-status to the HTTP ones, --grpc-service to the gRPC ones). The registry checks
  the values and answers 400 with the reason.

  With checks and neither --ttl nor --lease the instance has no lease: it needs no
  heartbeats, so regctl registers it once, prints it and exits 0 (--heartbeat or not).
  The cluster keeps it, critical while a check fails, until `regctl deregister` (or
  --deregister-after, 72h by default, of being critical). With --ttl or --lease as well,
  it has a lease to keep alive like any other instance.

Examples:
  regctl register web web-1 --address 10.0.0.7 --port 8080 --ttl 15s --heartbeat
  regctl register web web-1 --address 10.0.0.7 --port 8080 \\
      --http-check http://10.0.0.7:8080/healthz --tcp-check 10.0.0.7:8080 \\
      --check-interval 5s --failures-before-critical 2";

#[derive(Debug, Args)]
#[command(after_help = REGISTER_HELP)]
// Any check at all: what the options that apply to every check require.
#[command(group = ArgGroup::new("checks")
    .multiple(true)
    .args(["http_checks", "tcp_checks", "grpc_checks"]))]
pub struct RegisterArgs {
    /// The service's name.
    service: String,
    /// The instance's id, unique within the service; registering it again updates it.
    id: String,
    /// Host name or IP address callers connect to.
    #[arg(long)]
    address: String,
    /// Port callers connect to.
    #[arg(long)]
    port: u16,
    /// A label callers can filter on (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// A `KEY=VALUE` pair callers can filter on (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = key_value)]
    meta: Vec<(String, String)>,
    #[arg(long)]
    zone: Option<String>,
    #[arg(long)]
    region: Option<String>,
    /// Relative share of traffic, 0 to 1000 (server default 1).
    #[arg(long)]
    weight: Option<u32>,
    /// TTL of the instance's own lease (server default 10s; with checks, no lease
    /// unless this or --lease is given).
    #[arg(long, value_parser = duration, conflicts_with = "lease")]
    ttl: Option<Duration>,
    /// How long it stays listed as critical once its lease ends or a check fails
    /// (server default 1m; 72h for an instance with checks and no lease).
    #[arg(long, value_parser = duration)]
    deregister_after: Option<Duration>,
    /// Bind it to this existing lease instead of a lease of its own.
    #[arg(long)]
    lease: Option<Uuid>,
    /// Stay in the foreground heartbeating every TTL/3 (registering again if the registry
    /// forgot the instance) until Ctrl-C or SIGTERM, then deregister. An instance with
    /// checks and no lease has nothing to heartbeat: regctl exits once it is registered.
    #[arg(long)]
    heartbeat: bool,
    #[command(flatten)]
    checks: CheckArgs,
}

/// The active checks of `regctl register`; see [`REGISTER_HELP`].
#[derive(Debug, Default, Args)]
pub struct CheckArgs {
    /// An HTTP check of this `http://` or `https://` URL, passing on the expected status
    /// (repeatable; named `http`, `http-2`, ...).
    #[arg(long = "http-check", value_name = "URL")]
    http_checks: Vec<String>,
    /// A TCP check, passing when a connection to HOST:PORT opens (repeatable; named
    /// `tcp`, `tcp-2`, ...).
    #[arg(long = "tcp-check", value_name = "HOST:PORT")]
    tcp_checks: Vec<String>,
    /// A gRPC check of the standard health service at HOST:PORT (plaintext), passing on
    /// SERVING (repeatable; named `grpc`, `grpc-2`, ...).
    #[arg(long = "grpc-check", value_name = "HOST:PORT")]
    grpc_checks: Vec<String>,
    /// The service name the gRPC checks ask about (server default "": the whole server).
    #[arg(long, value_name = "NAME", requires = "grpc_checks")]
    grpc_service: Option<String>,
    /// Time between probes of every check (server default 10s).
    #[arg(long, value_name = "DURATION", value_parser = duration, requires = "checks")]
    check_interval: Option<Duration>,
    /// How long one probe may take, at most the interval (server default: 5s or the
    /// interval, whichever is smaller).
    #[arg(long, value_name = "DURATION", value_parser = duration, requires = "checks")]
    check_timeout: Option<Duration>,
    /// HTTP method of the HTTP checks: GET (server default), HEAD, POST, PUT or OPTIONS.
    #[arg(long, value_name = "METHOD", requires = "http_checks")]
    check_method: Option<String>,
    /// A request header of the HTTP checks, `Name: value` (repeatable; a name given twice
    /// sends both values).
    #[arg(
        long = "check-header",
        value_name = "NAME: VALUE",
        value_parser = header,
        requires = "http_checks"
    )]
    check_headers: Vec<(String, String)>,
    /// The status the HTTP checks expect: a class such as 2xx (server default) or one
    /// code such as 204.
    #[arg(long, value_name = "2xx|NNN", requires = "http_checks")]
    expect_status: Option<String>,
    /// Failed probes in a row that turn a passing check critical (server default 3).
    #[arg(long, value_name = "N", requires = "checks")]
    failures_before_critical: Option<u32>,
    /// Passed probes in a row that turn a critical check passing (server default 1).
    #[arg(long, value_name = "N", requires = "checks")]
    successes_before_passing: Option<u32>,
}

impl CheckArgs {
    /// The checks as the registration sends them: HTTP, then TCP, then gRPC, each kind
    /// in the order given and named by it (`http`, `http-2`, ...).
    fn definitions(&self) -> Vec<CheckDefinition> {
        let common = CheckDefinition {
            interval: self.check_interval.map(api_spec::format_duration),
            timeout: self.check_timeout.map(api_spec::format_duration),
            failures_before_critical: self.failures_before_critical,
            successes_before_passing: self.successes_before_passing,
            ..CheckDefinition::default()
        };
        let mut header: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &self.check_headers {
            header.entry(name.clone()).or_default().push(value.clone());
        }
        let http = self.http_checks.iter().map(|url| CheckDefinition {
            http: Some(url.clone()),
            method: self.check_method.clone(),
            header: header.clone(),
            expect_status: self.expect_status.clone(),
            ..common.clone()
        });
        let tcp = self.tcp_checks.iter().map(|target| CheckDefinition {
            tcp: Some(target.clone()),
            ..common.clone()
        });
        let grpc = self.grpc_checks.iter().map(|target| CheckDefinition {
            grpc: Some(target.clone()),
            grpc_service: self.grpc_service.clone(),
            ..common.clone()
        });
        let named = |kind: &'static str| {
            move |(n, check): (usize, CheckDefinition)| CheckDefinition {
                name: check_name(kind, n),
                ..check
            }
        };
        http.enumerate()
            .map(named("http"))
            .chain(tcp.enumerate().map(named("tcp")))
            .chain(grpc.enumerate().map(named("grpc")))
            .collect()
    }
}

/// The name of the `n`th (from 0) check of `kind`: `http`, then `http-2`, `http-3`...
fn check_name(kind: &str, n: usize) -> String {
    if n == 0 {
        kind.to_owned()
    } else {
        format!("{kind}-{}", n + 1)
    }
}

/// Reads an HTTP header as `Name: value` (the value may be empty). Only the shape is
/// checked here; the registry judges the name and value.
pub fn header(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value))
            if !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok((name.to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected `Name: value`, got {text:?}")),
    }
}

/// Filters of a service read, shared by `resolve` and `watch`.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only instances with this tag (repeatable: all of them).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    #[arg(long)]
    zone: Option<String>,
    #[arg(long)]
    region: Option<String>,
    /// Only instances with this `KEY=VALUE` meta pair (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = key_value)]
    meta: Vec<(String, String)>,
    /// Every instance whatever its status (passing, draining, critical), not only the
    /// healthy ones.
    #[arg(long)]
    all: bool,
    /// Answer from the contacted server's own state, without asking the leader (faster,
    /// may lag).
    #[arg(long)]
    stale: bool,
}

impl FilterArgs {
    fn query(&self) -> ServiceQuery {
        ServiceQuery {
            tags: self.tags.clone(),
            zone: self.zone.clone(),
            region: self.region.clone(),
            meta: self.meta.clone(),
            status: self.all.then_some(None),
        }
    }

    fn consistency(&self) -> Consistency {
        if self.stale {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        }
    }
}

#[derive(Debug, Args)]
pub struct ResolveArgs {
    service: String,
    #[command(flatten)]
    filter: FilterArgs,
    /// A table with id, status, zone, weight and tags instead of bare `address:port`.
    #[arg(short, long)]
    long: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    service: String,
    #[command(flatten)]
    filter: FilterArgs,
    /// Stop after printing this many versions (the first one included).
    #[arg(long)]
    count: Option<u64>,
    /// How long the server may hold each blocking query (at most 10m).
    #[arg(long, value_parser = duration, default_value = "5m")]
    wait: Duration,
}

pub async fn register(cx: &Context, args: RegisterArgs) -> Result<u8, Failure> {
    let request = RegisterRequest {
        address: args.address,
        port: args.port,
        tags: args.tags,
        meta: args.meta.into_iter().collect::<BTreeMap<_, _>>(),
        zone: args.zone,
        region: args.region,
        weight: args.weight,
        ttl: args.ttl.map(api_spec::format_duration),
        deregister_after: args.deregister_after.map(api_spec::format_duration),
        lease: args.lease,
        checks: args.checks.definitions(),
    };
    // A check-only instance has no lease to heartbeat, so `--heartbeat` has nothing to
    // hold it for (the registry answers without a lease).
    let holds = args.heartbeat && !check_only(&request);
    // Installed before registering so a Ctrl-C right after still deregisters.
    let signals = if holds {
        Some(Signals::install()?)
    } else {
        None
    };
    let instance = cx
        .client
        .register(&args.service, &args.id, &request)
        .await?
        .value;
    print_registered(cx, &instance)?;
    if !args.heartbeat {
        return Ok(0);
    }
    if instance.lease.is_none() {
        // Checks only: there is no lease to keep alive, and the cluster keeps the
        // instance whether regctl stays or not.
        warn(no_lease_note(&instance));
        return Ok(0);
    }
    // A lease after all (a registry that gives check-only instances one): keep it.
    let mut signals = match signals {
        Some(signals) => signals,
        None => Signals::install()?,
    };
    heartbeat(
        cx,
        &args.service,
        &args.id,
        &request,
        instance,
        &mut signals,
    )
    .await
}

/// Whether `request` registers an instance without a lease: checks, and neither a TTL
/// nor a lease of its own.
fn check_only(request: &RegisterRequest) -> bool {
    !request.checks.is_empty() && request.ttl.is_none() && request.lease.is_none()
}

/// Why `--heartbeat` returns at once for an instance without a lease.
fn no_lease_note(instance: &Instance) -> String {
    format!(
        "{}/{} has no lease (it is kept by its checks): nothing to heartbeat; it stays \
         registered until `regctl deregister {} {}`",
        instance.service, instance.id, instance.service, instance.id
    )
}

fn print_registered(cx: &Context, instance: &Instance) -> Result<(), Failure> {
    if cx.json {
        return output::json(instance);
    }
    output::line(registered_line(instance))?;
    for check in &instance.checks {
        output::line(format!("  {}", check_line(check)))?;
    }
    Ok(())
}

/// `registered web/web-1 at 10.0.0.7:8080 (lease ..., ttl 10s)`, or `(no lease, kept by
/// its checks)` for an instance without one.
fn registered_line(instance: &Instance) -> String {
    let keeper = match (&instance.lease, &instance.ttl) {
        (Some(lease), Some(ttl)) => format!("lease {lease}, ttl {ttl}"),
        (Some(lease), None) => format!("lease {lease}"),
        (None, _) => "no lease, kept by its checks".to_owned(),
    };
    format!(
        "registered {}/{} at {}:{} ({keeper})",
        instance.service, instance.id, instance.address, instance.port
    )
}

fn check_status_name(status: CheckStatus) -> &'static str {
    match status {
        CheckStatus::Passing => "passing",
        CheckStatus::Critical => "critical",
    }
}

fn check_kind_name(kind: CheckKind) -> &'static str {
    match kind {
        CheckKind::Http => "http",
        CheckKind::Tcp => "tcp",
        CheckKind::Grpc => "grpc",
    }
}

/// `check http  critical  http://10.0.0.7:8080/healthz: connection refused`: a check's
/// name, status, target and last output on one line.
fn check_line(check: &CheckInfo) -> String {
    let mut text = format!(
        "check {}  {}  {}",
        output::one_line(&check.name),
        check_status_name(check.status),
        output::one_line(&check.target)
    );
    let said = output::one_line(&check.output);
    if !said.is_empty() {
        text.push_str(": ");
        text.push_str(&said);
    }
    text
}

/// `http:passing,tcp:critical`, or `-` without checks.
fn checks_summary(instance: &Instance) -> String {
    if instance.checks.is_empty() {
        return "-".to_owned();
    }
    instance
        .checks
        .iter()
        .map(|c| {
            format!(
                "{}:{}",
                output::one_line(&c.name),
                check_status_name(c.status)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Heartbeats every TTL/3 until a signal, then deregisters.
async fn heartbeat(
    cx: &Context,
    service: &str,
    id: &str,
    request: &RegisterRequest,
    mut instance: Instance,
    signals: &mut Signals,
) -> Result<u8, Failure> {
    let retry_after = Duration::from_secs(1);
    let mut next = Instant::now() + every(&instance);
    loop {
        tokio::select! {
            signal = signals.recv() => {
                match cx.client.deregister(service, id).await {
                    Ok(_) => {
                        if !cx.json {
                            output::line(format!("deregistered {service}/{id} ({signal})"))?;
                        }
                    }
                    Err(e) if e.code() == Some(codes::INSTANCE_NOT_FOUND) => {}
                    Err(e) => return Err(e.into()),
                }
                return Ok(0);
            }
            () = tokio::time::sleep_until(next) => {}
        }
        match cx.client.heartbeat(service, id).await {
            Ok(_) => next = Instant::now() + every(&instance),
            Err(e)
                if matches!(
                    e.code(),
                    Some(codes::INSTANCE_NOT_FOUND | codes::INSTANCE_CRITICAL)
                ) =>
            {
                warn(format!(
                    "{service}/{id} was forgotten ({}); registering it again",
                    describe(&e)
                ));
                match cx.client.register(service, id, request).await {
                    Ok(answer) => {
                        instance = answer.value;
                        print_registered(cx, &instance)?;
                        if instance.lease.is_none() {
                            // Registered again without a lease (the registry's call):
                            // nothing left to heartbeat.
                            warn(no_lease_note(&instance));
                            return Ok(0);
                        }
                        next = Instant::now() + every(&instance);
                    }
                    // Its lease is gone for good (`--lease` revoked): nothing to heartbeat.
                    Err(e) if e.is_lease_not_found() => return Err(e.into()),
                    Err(e) => {
                        warn(format!(
                            "registering {service}/{id} again failed, retrying: {}",
                            describe(&e)
                        ));
                        next = Instant::now() + retry_after;
                    }
                }
            }
            Err(e) => {
                warn(format!(
                    "heartbeat of {service}/{id} failed, retrying: {}",
                    describe(&e)
                ));
                next = Instant::now() + retry_after;
            }
        }
    }
}

/// The heartbeat period: a third of the instance's TTL, so two may fail in a row (the
/// default instance TTL's third for a lease shown without a TTL).
fn every(instance: &Instance) -> Duration {
    let ttl = instance
        .ttl_ms
        .map_or(api_spec::DEFAULT_INSTANCE_TTL, Duration::from_millis);
    (ttl / 3).max(Duration::from_millis(100))
}

pub async fn deregister(cx: &Context, service: &str, id: &str) -> Result<u8, Failure> {
    let answer = cx.client.deregister(service, id).await?.value;
    if cx.json {
        output::json(&answer)?;
    } else {
        output::line(format!("deregistered {}/{}", answer.service, answer.id))?;
    }
    Ok(0)
}

pub async fn services(cx: &Context) -> Result<u8, Failure> {
    let list = cx.client.services(ReadOptions::default()).await?.value;
    if cx.json {
        output::json(&list)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list
        .services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.instances.to_string(),
                s.healthy.to_string(),
            ]
        })
        .collect();
    output::table(&["SERVICE", "INSTANCES", "HEALTHY"], &rows)?;
    Ok(0)
}

pub async fn resolve(cx: &Context, args: ResolveArgs) -> Result<u8, Failure> {
    let read = ReadOptions {
        consistency: args.filter.consistency(),
        ..ReadOptions::default()
    };
    let answer = cx
        .client
        .service(&args.service, &args.filter.query(), read)
        .await?
        .value;
    if cx.json {
        output::json(&answer)?;
    } else if args.long {
        print_instance_table(&answer)?;
    } else {
        for instance in &answer.instances {
            output::line(endpoint(instance))?;
        }
    }
    if answer.instances.is_empty() {
        // So that `addr=$(regctl resolve web | head -1) || ...` notices an empty answer.
        let which = if args.filter.all { "" } else { "healthy " };
        return Err(Failure::new(format!(
            "no {which}instance of {} matches",
            args.service
        )));
    }
    Ok(0)
}

fn endpoint(instance: &Instance) -> String {
    if instance.address.contains(':') {
        // An IPv6 address needs brackets to be followed by a port.
        format!("[{}]:{}", instance.address, instance.port)
    } else {
        format!("{}:{}", instance.address, instance.port)
    }
}

fn status_name(status: InstanceStatus) -> &'static str {
    match status {
        InstanceStatus::Passing => "passing",
        InstanceStatus::Draining => "draining",
        InstanceStatus::Critical => "critical",
    }
}

/// The `--long` table; with a CHECKS column and a table of the checks below it when any
/// instance has checks (so the table of instances without any stays as it was).
fn print_instance_table(answer: &ServiceInstances) -> Result<(), Failure> {
    let with_checks = answer.instances.iter().any(|i| !i.checks.is_empty());
    let rows: Vec<Vec<String>> = answer
        .instances
        .iter()
        .map(|i| {
            let mut row = vec![
                i.id.clone(),
                endpoint(i),
                status_name(i.status).to_owned(),
                output::or_dash(i.zone.as_deref()),
                output::or_dash(i.region.as_deref()),
                i.weight.to_string(),
                i.tags.join(","),
            ];
            if with_checks {
                // Before TAGS, which may be long and is last so that it need not be padded.
                row.insert(6, checks_summary(i));
            }
            row
        })
        .collect();
    let mut header = vec![
        "ID", "ADDRESS", "STATUS", "ZONE", "REGION", "WEIGHT", "TAGS",
    ];
    if !with_checks {
        return output::table(&header, &rows);
    }
    header.insert(6, "CHECKS");
    output::table(&header, &rows)?;
    output::line("")?;
    output::table(
        &["INSTANCE", "CHECK", "KIND", "STATUS", "TARGET", "OUTPUT"],
        &check_rows(answer),
    )
}

/// One row per check of every instance, for the `--long` table of checks.
fn check_rows(answer: &ServiceInstances) -> Vec<Vec<String>> {
    answer
        .instances
        .iter()
        .flat_map(|i| {
            i.checks.iter().map(move |c| {
                let said = output::one_line(&c.output);
                vec![
                    i.id.clone(),
                    output::one_line(&c.name),
                    check_kind_name(c.kind).to_owned(),
                    check_status_name(c.status).to_owned(),
                    output::one_line(&c.target),
                    if said.is_empty() {
                        "-".to_owned()
                    } else {
                        said
                    },
                ]
            })
        })
        .collect()
}

pub async fn watch(cx: &Context, args: WatchArgs) -> Result<u8, Failure> {
    let query = args.filter.query();
    let consistency = args.filter.consistency();
    let mut printed: u64 = 0;
    let mut last: Option<ServiceInstances> = None;
    let mut index: Option<u64> = None;
    let mut backoff = Backoff::default();
    while args.count.is_none_or(|count| printed < count) {
        let read = ReadOptions {
            consistency,
            index,
            wait: index.map(|_| args.wait),
        };
        let started = Instant::now();
        let answer = match cx.client.service(&args.service, &query, read).await {
            Ok(answer) => answer,
            Err(e) if e.is_retryable() => {
                warn(format!(
                    "watch of {} failed, retrying: {}",
                    args.service,
                    describe(&e)
                ));
                backoff.wait().await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        backoff.reset();
        let previous_index = index;
        index = answer.index;
        if last.as_ref() != Some(&answer.value) {
            print_version(cx, &answer.value, answer.index)?;
            printed += 1;
            last = Some(answer.value);
        } else if answer.index <= previous_index && started.elapsed() < Duration::from_secs(1) {
            // Answered at once with nothing new (a server without the index, or one that
            // lags behind): do not spin.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(0)
}

fn print_version(
    cx: &Context,
    answer: &ServiceInstances,
    index: Option<u64>,
) -> Result<(), Failure> {
    if cx.json {
        return output::json_line(answer);
    }
    let count = answer.instances.len();
    let plural = if count == 1 { "" } else { "s" };
    output::line(format!(
        "{}: {count} instance{plural} (index {})",
        answer.service,
        output::or_dash(index)
    ))?;
    for instance in &answer.instances {
        output::line(format!(
            "  {}  {}  {}",
            endpoint(instance),
            instance.id,
            status_name(instance.status)
        ))?;
        for check in &instance.checks {
            output::line(format!("    {}", check_line(check)))?;
        }
    }
    Ok(())
}

/// Pauses between retries of a failing watch: 500 ms doubling up to 10 s.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub async fn wait(&mut self) {
        let pause = Duration::from_millis(500) * 2u32.saturating_pow(self.failures.min(5));
        self.failures += 1;
        tokio::time::sleep(pause.min(Duration::from_secs(10))).await;
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use clap::Parser;

    use super::*;
    use crate::tls_test_support::{Ca, TlsServer};
    use crate::{run, Cli, Command};

    /// A check-only instance as the registry answers it: no lease, one check probed once.
    const CHECKED: &str = r#"{"service":"web","id":"w1","address":"10.0.0.1","port":80,"tags":[],"meta":{},"weight":1,"status":"critical","own_lease":false,"deregister_after":"72h","deregister_after_ms":259200000,"registered_at_ms":1,"modify_index":5,"critical_since_ms":1,"checks":[{"name":"http","kind":"http","target":"http://10.0.0.1:80/health","interval":"10s","interval_ms":10000,"timeout_ms":5000,"failures_before_critical":3,"successes_before_passing":1,"status":"critical","output":"HTTP 503\n\u001b[1mdown","changed_at_ms":1}]}"#;
    const LEASED: &str = r#"{"service":"web","id":"w1","address":"10.0.0.1","port":80,"tags":[],"meta":{},"weight":1,"status":"passing","lease":"67e55044-10b1-426f-9247-bb680e5fe0c8","own_lease":true,"ttl":"10s","ttl_ms":10000,"deregister_after":"1m","deregister_after_ms":60000,"registered_at_ms":1,"modify_index":5}"#;

    const BASE: [&str; 7] = [
        "regctl",
        "register",
        "web",
        "w1",
        "--address",
        "10.0.0.1",
        "--port=80",
    ];

    fn parse(extra: &[&str]) -> Result<RegisterArgs, clap::Error> {
        let cli = Cli::try_parse_from(BASE.iter().chain(extra))?;
        match cli.command {
            Command::Register(args) => Ok(*args),
            other => panic!("not register: {other:?}"),
        }
    }

    fn definitions(extra: &[&str]) -> Vec<CheckDefinition> {
        parse(extra)
            .unwrap_or_else(|e| panic!("{extra:?}: {e}"))
            .checks
            .definitions()
    }

    #[test]
    fn checks_are_named_by_kind_and_get_the_options_that_apply_to_them() {
        let checks = definitions(&[
            "--tcp-check",
            "10.0.0.1:80",
            "--http-check",
            "http://10.0.0.1/a",
            "--grpc-check",
            "10.0.0.1:9000",
            "--http-check",
            "http://10.0.0.1/b",
            "--tcp-check",
            "10.0.0.1:81",
            "--http-check",
            "https://10.0.0.1/c",
            "--check-interval",
            "5s",
            "--check-timeout",
            "500ms",
            "--check-method",
            "HEAD",
            "--check-header",
            "X-Probe: regctl",
            "--check-header",
            "Accept:text/plain",
            "--check-header",
            "X-Probe:  twice ",
            "--expect-status",
            "204",
            "--grpc-service",
            "api.v1.Api",
            "--failures-before-critical",
            "2",
            "--successes-before-passing",
            "4",
        ]);
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["http", "http-2", "http-3", "tcp", "tcp-2", "grpc"]);
        let header = BTreeMap::from([
            ("Accept".to_owned(), vec!["text/plain".to_owned()]),
            (
                "X-Probe".to_owned(),
                vec!["regctl".to_owned(), "twice".to_owned()],
            ),
        ]);
        let common = CheckDefinition {
            interval: Some("5s".into()),
            timeout: Some("500ms".into()),
            failures_before_critical: Some(2),
            successes_before_passing: Some(4),
            ..CheckDefinition::default()
        };
        assert_eq!(
            checks[1],
            CheckDefinition {
                name: "http-2".into(),
                http: Some("http://10.0.0.1/b".into()),
                method: Some("HEAD".into()),
                header,
                expect_status: Some("204".into()),
                ..common.clone()
            }
        );
        assert_eq!(checks[2].http.as_deref(), Some("https://10.0.0.1/c"));
        assert_eq!(
            checks[4],
            CheckDefinition {
                name: "tcp-2".into(),
                tcp: Some("10.0.0.1:81".into()),
                ..common.clone()
            }
        );
        assert_eq!(
            checks[5],
            CheckDefinition {
                name: "grpc".into(),
                grpc: Some("10.0.0.1:9000".into()),
                grpc_service: Some("api.v1.Api".into()),
                ..common
            }
        );
    }

    #[test]
    fn without_check_flags_there_are_no_checks_and_the_defaults_are_the_servers() {
        assert!(definitions(&[]).is_empty());
        let checks = definitions(&["--tcp-check", "db:5432"]);
        assert_eq!(
            checks,
            [CheckDefinition {
                name: "tcp".into(),
                tcp: Some("db:5432".into()),
                ..CheckDefinition::default()
            }]
        );
        // Left to the registry to judge (it answers 400 with the reason).
        let checks = definitions(&["--http-check", "ftp://x", "--expect-status", "7xx"]);
        assert_eq!(checks[0].http.as_deref(), Some("ftp://x"));
        assert_eq!(checks[0].expect_status.as_deref(), Some("7xx"));
    }

    #[test]
    fn malformed_check_flags_are_usage_errors() {
        for bad in [
            &["--http-check", "http://x/", "--check-header", "no colon"][..],
            &[
                "--http-check",
                "http://x/",
                "--check-header",
                "Two Words: x",
            ],
            &["--http-check", "http://x/", "--check-header", ": x"],
            &[
                "--http-check",
                "http://x/",
                "--failures-before-critical",
                "many",
            ],
            &[
                "--http-check",
                "http://x/",
                "--successes-before-passing",
                "-1",
            ],
            &["--http-check", "http://x/", "--check-interval", "5"],
            // Check options without a check they could apply to.
            &["--check-interval", "5s"],
            &["--failures-before-critical", "2"],
            &["--tcp-check", "x:1", "--check-method", "GET"],
            &["--tcp-check", "x:1", "--expect-status", "2xx"],
            &["--http-check", "http://x/", "--grpc-service", "api"],
        ] {
            let err = parse(bad).expect_err(&format!("{bad:?} should be refused"));
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
        assert_eq!(header("X-A:"), Ok(("X-A".into(), String::new())));
        assert_eq!(header("X-A: b: c "), Ok(("X-A".into(), "b: c".into())));
    }

    #[test]
    fn a_registration_with_checks_and_no_ttl_or_lease_is_check_only() {
        let request = |extra: &[&str]| {
            let args = parse(extra).expect("valid");
            RegisterRequest {
                address: args.address,
                port: args.port,
                tags: Vec::new(),
                meta: BTreeMap::new(),
                zone: None,
                region: None,
                weight: None,
                ttl: args.ttl.map(api_spec::format_duration),
                deregister_after: None,
                lease: args.lease,
                checks: args.checks.definitions(),
            }
        };
        assert!(check_only(&request(&["--tcp-check", "x:1"])));
        assert!(!check_only(&request(&[
            "--tcp-check",
            "x:1",
            "--ttl",
            "5s"
        ])));
        assert!(!check_only(&request(&[
            "--tcp-check",
            "x:1",
            "--lease",
            "67e55044-10b1-426f-9247-bb680e5fe0c8"
        ])));
        assert!(!check_only(&request(&[])));
    }

    #[test]
    fn instances_read_with_or_without_a_lease_and_show_their_checks() {
        let leased: Instance = serde_json::from_str(LEASED).expect("an instance");
        assert_eq!(
            registered_line(&leased),
            "registered web/w1 at 10.0.0.1:80 (lease 67e55044-10b1-426f-9247-bb680e5fe0c8, \
             ttl 10s)"
        );
        assert_eq!(checks_summary(&leased), "-");

        let checked: Instance = serde_json::from_str(CHECKED).expect("an instance");
        assert_eq!(
            registered_line(&checked),
            "registered web/w1 at 10.0.0.1:80 (no lease, kept by its checks)"
        );
        // The probe's output on the same line, without its newline or escape.
        assert_eq!(
            check_line(&checked.checks[0]),
            "check http  critical  http://10.0.0.1:80/health: HTTP 503  [1mdown"
        );
        assert_eq!(checks_summary(&checked), "http:critical");
        let answer = ServiceInstances {
            service: "web".into(),
            instances: vec![leased, checked],
        };
        assert_eq!(
            check_rows(&answer),
            [[
                "w1",
                "http",
                "http",
                "critical",
                "http://10.0.0.1:80/health",
                "HTTP 503  [1mdown"
            ]]
        );
        assert!(no_lease_note(&answer.instances[1]).contains("regctl deregister web w1"));
    }

    #[test]
    fn register_heartbeat_of_a_check_only_instance_registers_once_and_exits() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = Ca::new("registry test CA");
        let cacert = dir.path().join("ca.pem");
        std::fs::write(&cacert, &ca.cert_pem).expect("written");
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let server = runtime.block_on(TlsServer::start(&ca.server(&["127.0.0.1"]), None, CHECKED));
        let endpoint = format!("https://{}", server.addr);
        let cacert = cacert.to_string_lossy().into_owned();
        let cli = Cli::try_parse_from(BASE.iter().copied().chain([
            "--endpoints",
            &endpoint,
            "--cacert",
            &cacert,
            "--http-check",
            "http://10.0.0.1:80/health",
            "--heartbeat",
        ]))
        .expect("valid command line");

        // On a thread of its own, so a regctl that stays to heartbeat fails the test
        // rather than hanging it.
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(run(cli).map_err(|f| format!("{:?}", f.message())));
        });
        let code = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("regctl register --heartbeat of a check-only instance returns");
        assert_eq!(code, Ok(0));
        let first = runtime.block_on(server.next_handshake());
        assert_eq!(
            first.request.as_deref(),
            Some("PUT /v1/services/web/instances/w1")
        );
        assert!(
            runtime.block_on(server.try_handshake()).is_none(),
            "only the registration is sent"
        );
    }
}
