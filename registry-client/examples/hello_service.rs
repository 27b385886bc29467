//! `hello_service`: a tiny HTTP service that registers itself with the registry.
//!
//! It listens on `127.0.0.1` on a port the OS picks, answers `GET /hello` with
//! `hello from <id>`, and registers itself as instance `<id>` of service `<name>` with
//! [`Client::register_instance`]: the returned [`registry_client::Registration`] heartbeats
//! in the background (every third of the TTL) and registers the instance again if the
//! registry ever forgets it. On SIGTERM or Ctrl-C it deregisters and exits 0, so callers
//! stop being sent to it at once rather than after its TTL.
//!
//! ```text
//! registry-server --data-dir /tmp/registry &           # listens on 127.0.0.1:7400
//! cargo run -p registry-client --example hello_service -- --name hello --id hello-1 &
//! cargo run -p registry-client --example hello_service -- --name hello --id hello-2 &
//! cargo run -p registry-client --example hello_caller -- --name hello --calls 10
//! ```
//!
//! Flags (each also read from the environment variable in brackets):
//! - `--registry HOST:PORT[,HOST:PORT…]` (`REGISTRY`, default `127.0.0.1:7400`): the
//!   registry servers; the client fails over between them.
//! - `--name NAME` (`SERVICE_NAME`, default `hello`): the service to register under.
//! - `--id ID` (`INSTANCE_ID`, default `hello-<pid>`): this instance's id.
//! - `--zone ZONE` (`ZONE`, optional): the zone to register in, for zone-aware callers.
//! - `--ttl DURATION` (`TTL`, default `5s`): the lease TTL; the instance turns critical
//!   this long after the process dies without deregistering.
//!
//! It prints one line when it serves (`<id>: serving http://127.0.0.1:PORT/hello as
//! <name>/<id>`) and one when it has deregistered. The HTTP server is a few lines of raw
//! tokio (one request per connection, `Connection: close`), to keep the example about the
//! registry rather than about a web framework.

use std::process::ExitCode;
use std::sync::Arc;

use registry_client::{Client, RegisterRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: hello_service [--registry HOST:PORT[,…]] [--name NAME] [--id ID] \
                     [--zone ZONE] [--ttl DURATION]";

/// The command line, with defaults from the environment.
#[derive(Debug)]
struct Args {
    registry: Vec<String>,
    name: String,
    id: String,
    zone: Option<String>,
    ttl: String,
}

fn parse_args() -> Result<Args, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut registry = env("REGISTRY").unwrap_or_else(|| "127.0.0.1:7400".to_owned());
    let mut name = env("SERVICE_NAME").unwrap_or_else(|| "hello".to_owned());
    let mut id = env("INSTANCE_ID").unwrap_or_else(|| format!("hello-{}", std::process::id()));
    let mut zone = env("ZONE");
    let mut ttl = env("TTL").unwrap_or_else(|| "5s".to_owned());
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
            "--id" => id = value,
            "--zone" => zone = Some(value),
            "--ttl" => ttl = value,
            _ => return Err(format!("unknown flag {flag:?}\n{USAGE}")),
        }
    }
    Ok(Args {
        registry: registry.split(',').map(str::to_owned).collect(),
        name,
        id,
        zone,
        ttl,
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
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hello_service: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    // Signal handlers first, so a SIGTERM that comes right after the registration is
    // not lost (the default action would kill the process without deregistering).
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;

    let mut builder = Client::builder(&args.registry);
    // A registry with ACLs on needs a token that may write the service.
    if let Ok(token) = std::env::var(api_spec::acl::TOKEN_ENV) {
        builder = builder.token(token);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let request = RegisterRequest {
        address: local.ip().to_string(),
        port: local.port(),
        tags: vec!["example".to_owned()],
        meta: Default::default(),
        zone: args.zone.clone(),
        region: None,
        weight: None,
        ttl: Some(args.ttl.clone()),
        deregister_after: None,
        lease: None,
        checks: Vec::new(),
    };
    let registration = client
        .register_instance(&args.name, &args.id, request)
        .await
        .map_err(|e| format!("register {}/{}: {e}", args.name, args.id))?;
    println!(
        "{}: serving http://{local}/hello as {}/{}",
        args.id, args.name, args.id
    );

    // Say when the registration runs into trouble and when it recovers.
    let mut states = registration.watch();
    let id = args.id.clone();
    tokio::spawn(async move {
        let mut failing = false;
        let mut registrations = 1;
        while states.changed().await.is_ok() {
            let state = states.borrow_and_update().clone();
            if state.registrations > registrations {
                registrations = state.registrations;
                eprintln!("{id}: the registry had forgotten this instance; registered again");
            }
            match (&state.last_error, state.consecutive_failures > 0) {
                (Some(error), true) if !failing => {
                    failing = true;
                    eprintln!("{id}: heartbeat failing (retrying): {error}");
                }
                (_, false) if failing => {
                    failing = false;
                    eprintln!("{id}: heartbeats go through again");
                }
                _ => {}
            }
        }
    });

    let id: Arc<str> = args.id.clone().into();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, id.clone()));
                }
                Err(e) => eprintln!("{id}: accept: {e}"),
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }

    println!("{}: shutting down", args.id);
    drop(listener);
    registration
        .shutdown()
        .await
        .map_err(|e| format!("deregister {}/{}: {e}", args.name, args.id))?;
    println!("{}: deregistered", args.id);
    Ok(())
}

/// Answers one HTTP/1.1 request on `stream` and closes it.
async fn serve(mut stream: TcpStream, id: Arc<str>) {
    // Read the request head (a GET has no body we care about), up to 8 KiB.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut request_line = head.lines().next().unwrap_or_default().split_whitespace();
    let (status, body) = match (request_line.next(), request_line.next()) {
        (Some("GET"), Some("/hello")) => ("200 OK", format!("hello from {id}\n")),
        (Some(_), Some("/hello")) => ("405 Method Not Allowed", "use GET\n".to_owned()),
        _ => ("404 Not Found", "try GET /hello\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
