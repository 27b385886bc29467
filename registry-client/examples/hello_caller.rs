//! `hello_caller`: calls `GET /hello` on the instances of a service found through the
//! client's discovery cache (see the `hello_service` example for the other side).
//!
//! Each call asks [`Client::resolve`] for an endpoint: the first resolve fetches the
//! service and starts a background watch that keeps the list current; every later one is
//! answered from memory (balanced by smooth weighted round robin, the default policy). How
//! each call went is fed back with [`Client::report`], so an instance that fails twice in
//! a row is ejected from rotation for a while (passive health checking), and a failed call
//! is tried again on another instance, up to three attempts.
//!
//! ```text
//! cargo run -p registry-client --example hello_caller -- --name hello --calls 10
//! call 1: hello from hello-1 (instance hello-1 at 127.0.0.1:41235, tier any)
//! call 2: hello from hello-2 (instance hello-2 at 127.0.0.1:38021, tier any)
//! …
//! ```
//!
//! Flags (each also read from the environment variable in brackets):
//! - `--registry HOST:PORT[,HOST:PORT…]` (`REGISTRY`, default `127.0.0.1:7400`);
//! - `--name NAME` (`SERVICE_NAME`, default `hello`): the service to call;
//! - `--calls N` (`CALLS`, default 10): how many calls to make;
//! - `--zone ZONE` (`ZONE`, optional): the caller's zone, preferred when it has
//!   healthy instances.
//!
//! Prints one line per answered call on stdout, failures on stderr. Exits 0 when every
//! call was answered, 1 otherwise.

use std::error::Error as _;
use std::process::ExitCode;
use std::time::Duration;

use registry_client::locality::{Locality, LocalityPolicy};
use registry_client::outlier::{Outcome, OutlierConfig};
use registry_client::Client;

const USAGE: &str = "usage: hello_caller [--registry HOST:PORT[,…]] [--name NAME] [--calls N] \
                     [--zone ZONE]";

/// Attempts per call (the first and up to two retries on other instances).
const ATTEMPTS: usize = 3;

#[derive(Debug)]
struct Args {
    registry: Vec<String>,
    name: String,
    calls: usize,
    zone: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut registry = env("REGISTRY").unwrap_or_else(|| "127.0.0.1:7400".to_owned());
    let mut name = env("SERVICE_NAME").unwrap_or_else(|| "hello".to_owned());
    let mut calls = env("CALLS").unwrap_or_else(|| "10".to_owned());
    let mut zone = env("ZONE");
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--registry" => registry = value,
            "--name" => name = value,
            "--calls" => calls = value,
            "--zone" => zone = Some(value),
            _ => return Err(format!("unknown flag {flag:?}\n{USAGE}")),
        }
    }
    let calls = calls
        .parse()
        .map_err(|_| format!("--calls: not a number: {calls:?}"))?;
    Ok(Args {
        registry: registry.split(',').map(str::to_owned).collect(),
        name,
        calls,
        zone,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("hello_caller: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Makes the calls; `Ok(false)` when some call got no answer.
async fn run(args: Args) -> Result<bool, String> {
    let here = Locality {
        zone: args.zone.clone(),
        region: None,
    };
    let mut builder = Client::builder(&args.registry);
    // A registry with ACLs on needs a token that may read the service.
    if let Ok(token) = std::env::var(api_spec::acl::TOKEN_ENV) {
        builder = builder.token(token);
    }
    let client = builder
        .timeout(Duration::from_secs(5))
        .locality(here, LocalityPolicy::default())
        .outlier_detection(OutlierConfig {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            ..OutlierConfig::default()
        })
        .build()
        .map_err(|e| e.to_string())?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;

    let mut unanswered = 0;
    for call in 1..=args.calls {
        let mut answered = false;
        for attempt in 1..=ATTEMPTS {
            // From the cache: no request to the registry after the first call.
            let resolved = match client.resolve(&args.name).await {
                Ok(resolved) => resolved,
                Err(e) => {
                    eprintln!("call {call}: cannot resolve {}: {e}", args.name);
                    break;
                }
            };
            let instance = &resolved.instance;
            let host = if instance.address.contains(':') {
                format!("[{}]", instance.address)
            } else {
                instance.address.clone()
            };
            let url = format!("http://{host}:{}/hello", instance.port);
            // `resolved.in_flight` counts this call as outstanding on the instance (for
            // the least-outstanding balancer) until `resolved` is dropped.
            let answer = match http.get(&url).send().await {
                Ok(response) if response.status().is_success() => {
                    response.text().await.map_err(|e| e.to_string())
                }
                Ok(response) => Err(format!("answered {}", response.status())),
                Err(e) => Err(with_causes(&e)),
            };
            match answer {
                Ok(body) => {
                    client.report(&args.name, &instance.id, Outcome::Success);
                    println!(
                        "call {call}: {} (instance {} at {host}:{}, tier {})",
                        body.trim(),
                        instance.id,
                        instance.port,
                        resolved.tier
                    );
                    answered = true;
                    break;
                }
                Err(e) => {
                    client.report(&args.name, &instance.id, Outcome::Failure);
                    eprintln!(
                        "call {call}, attempt {attempt}: {} at {url} failed: {e}",
                        instance.id
                    );
                }
            }
        }
        if !answered {
            unanswered += 1;
        }
    }
    if unanswered > 0 {
        eprintln!("{unanswered} of {} calls got no answer", args.calls);
    }
    Ok(unanswered == 0)
}

/// `error` with its causes (`error sending request: … : Connection refused`): reqwest's
/// own message leaves out why the request failed.
fn with_causes(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
