//! `dnsload`: DNS queries per second against one `registry-server` for a 10-instance
//! service. It starts the server itself (on 127.0.0.1, with `--dns-listen`), registers the
//! instances, then for each of A and SRV runs `--clients` UDP clients for `--seconds`,
//! each with one question in flight (raw packets, no resolver library), and prints the
//! answers per second and latency percentiles. Every answer is checked: its id, NOERROR,
//! ten records, no TC.
//!
//! Use a release server (the harness takes `target/release/registry-server` next to a
//! release `dnsload`, or `$REGISTRY_SERVER_BIN`):
//!
//! ```sh
//! cargo build --release -p registry-server && cargo run --release -p tests --bin dnsload
//! ```

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use api_spec::RegisterRequest;
use clap::Parser;
use tests::{free_port, Cluster};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// The service's size.
const INSTANCES: u8 = 10;
/// How long one question may wait for its answer before it counts as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// RR types, as on the wire.
const TYPE_A: u16 = 1;
const TYPE_SRV: u16 = 33;

#[derive(Debug, Parser)]
#[command(about = "DNS queries per second for a 10-instance service")]
struct Args {
    /// How long each question type is measured.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent UDP clients, one question in flight each.
    #[arg(long, default_value_t = 16)]
    clients: usize,
}

/// What the clients of one run saw.
#[derive(Debug, Default)]
struct Tally {
    answers: u64,
    lost: u64,
    latencies_us: Vec<u32>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let cluster = Cluster::start_single(&["--dns-listen", &listen]).await?;
    let client = cluster.client_for(1);
    for i in 1..=INSTANCES {
        let request = RegisterRequest {
            address: format!("127.0.0.{i}"),
            port: 8000 + u16::from(i),
            tags: Vec::new(),
            meta: Default::default(),
            zone: None,
            region: None,
            weight: None,
            ttl: Some("1h".into()),
            deregister_after: None,
            lease: None,
            checks: Vec::new(),
        };
        client
            .register("ten", &format!("ten-{i}"), &request)
            .await?;
    }
    println!(
        "dnsload: {} clients for {}s per type, service of {INSTANCES} instances, server {listen}",
        args.clients, args.seconds
    );
    for (label, qtype) in [("A", TYPE_A), ("SRV", TYPE_SRV)] {
        let tally = run(&listen, qtype, &args).await?;
        report(label, &tally, args.seconds);
    }
    Ok(())
}

/// Runs `args.clients` clients asking `ten.service.registry.` for `qtype`.
async fn run(server: &str, qtype: u16, args: &Args) -> Result<Tally> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let ids = Arc::new(AtomicU16::new(0));
    let clients: Vec<_> = (0..args.clients)
        .map(|_| tokio::spawn(client(server.to_owned(), qtype, deadline, ids.clone())))
        .collect();
    let mut total = Tally::default();
    for client in clients {
        let tally = client.await??;
        total.answers += tally.answers;
        total.lost += tally.lost;
        total.latencies_us.extend(tally.latencies_us);
    }
    Ok(total)
}

/// One client: a question, its answer, the next question, until `deadline`.
async fn client(
    server: String,
    qtype: u16,
    deadline: Instant,
    ids: Arc<AtomicU16>,
) -> Result<Tally> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(&server).await?;
    let mut tally = Tally::default();
    let mut buffer = vec![0u8; 4096];
    while Instant::now() < deadline {
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let asked = Instant::now();
        socket
            .send(&question(id, "ten.service.registry.", qtype)?)
            .await?;
        match tokio::time::timeout(ANSWER_TIMEOUT, socket.recv(&mut buffer)).await {
            Ok(received) => {
                check(&buffer[..received?], id)?;
                tally.answers += 1;
                let us = asked.elapsed().as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Err(_) => tally.lost += 1,
        }
    }
    Ok(tally)
}

/// A query packet: header with RD and one question, no EDNS.
fn question(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>> {
    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00]); // RD
    packet.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QDCOUNT 1
    for label in name.trim_end_matches('.').split('.') {
        packet.push(u8::try_from(label.len()).context("label too long")?);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes()); // class IN
    Ok(packet)
}

/// Fails unless `answer` answers question `id` with NOERROR, every instance, no TC.
fn check(answer: &[u8], id: u16) -> Result<()> {
    ensure!(answer.len() >= 12, "a {}-byte answer", answer.len());
    let got = u16::from_be_bytes([answer[0], answer[1]]);
    let (flags, rcode) = (answer[2], answer[3] & 0x0f);
    let count = u16::from_be_bytes([answer[6], answer[7]]);
    if got != id || flags & 0x80 == 0 || flags & 0x02 != 0 || rcode != 0 {
        bail!("answer {got} to question {id}: flags {flags:#04x}, rcode {rcode}");
    }
    ensure!(
        count == u16::from(INSTANCES),
        "{count} answers, not {INSTANCES}"
    );
    Ok(())
}

fn report(label: &str, tally: &Tally, seconds: u64) {
    let mut latencies = tally.latencies_us.clone();
    latencies.sort_unstable();
    let at = |share: f64| {
        let index = ((latencies.len() as f64 - 1.0) * share).round() as usize;
        latencies.get(index).copied().unwrap_or(0)
    };
    println!(
        "== {label}: {:.0} answers/s ({} answers, {} lost), latency p50 {}us p99 {}us",
        tally.answers as f64 / seconds.max(1) as f64,
        tally.answers,
        tally.lost,
        at(0.50),
        at(0.99)
    );
}
