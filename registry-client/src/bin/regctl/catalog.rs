//! Service commands: register (and keep heartbeating), deregister, list, resolve, watch.

use std::collections::BTreeMap;
use std::time::Duration;

use api_spec::{codes, Instance, InstanceStatus, RegisterRequest, ServiceInstances};
use clap::Args;
use registry_client::{Consistency, ReadOptions, ServiceQuery, Uuid};
use tokio::time::Instant;

use crate::output::{self, describe, warn, Failure};
use crate::supervise::Signals;
use crate::{duration, key_value, Context};

#[derive(Debug, Args)]
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
    /// TTL of the instance's own lease (server default 10s).
    #[arg(long, value_parser = duration, conflicts_with = "lease")]
    ttl: Option<Duration>,
    /// How long it stays listed as critical once its lease ends (server default 1m).
    #[arg(long, value_parser = duration)]
    deregister_after: Option<Duration>,
    /// Bind it to this existing lease instead of a lease of its own.
    #[arg(long)]
    lease: Option<Uuid>,
    /// Stay in the foreground heartbeating every TTL/3 (registering again if the registry
    /// forgot the instance) until Ctrl-C or SIGTERM, then deregister.
    #[arg(long)]
    heartbeat: bool,
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
    };
    // Installed before registering so a Ctrl-C right after still deregisters.
    let mut signals = if args.heartbeat {
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
    let Some(signals) = signals.as_mut() else {
        return Ok(0);
    };
    heartbeat(cx, &args.service, &args.id, &request, instance, signals).await
}

fn print_registered(cx: &Context, instance: &Instance) -> Result<(), Failure> {
    if cx.json {
        return output::json(instance);
    }
    output::line(format!(
        "registered {}/{} at {}:{} (lease {}, ttl {})",
        instance.service,
        instance.id,
        instance.address,
        instance.port,
        instance.lease,
        instance.ttl
    ))
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

/// The heartbeat period: a third of the instance's TTL, so two may fail in a row.
fn every(instance: &Instance) -> Duration {
    (Duration::from_millis(instance.ttl_ms) / 3).max(Duration::from_millis(100))
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

fn print_instance_table(answer: &ServiceInstances) -> Result<(), Failure> {
    let rows: Vec<Vec<String>> = answer
        .instances
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                endpoint(i),
                status_name(i.status).to_owned(),
                output::or_dash(i.zone.as_deref()),
                output::or_dash(i.region.as_deref()),
                i.weight.to_string(),
                i.tags.join(","),
            ]
        })
        .collect();
    output::table(
        &[
            "ID", "ADDRESS", "STATUS", "ZONE", "REGION", "WEIGHT", "TAGS",
        ],
        &rows,
    )
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
