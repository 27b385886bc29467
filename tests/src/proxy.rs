//! Controllable TCP proxies, one per directed node-to-node link, for fault injection.
//!
//! A [`Proxy`] listens on `127.0.0.1:0` and forwards every accepted connection to one
//! target address. [`Links`] starts one proxy per ordered pair `(from, to)` of an n-node
//! cluster; node `from` is started with `--peer-via` ([`Links::peer_via_flag`]) so that
//! every connection it opens to `to` goes through proxy `(from, to)`. `to`'s responses
//! come back over the same TCP connection, so "link `(from, to)`" carries the requests
//! `from` sends and their answers, and nothing `to` initiates.
//!
//! # What a link does ([`LinkMode`])
//!
//! - **Pass**: a plain bidirectional copy. Both sockets get `TCP_NODELAY` (these links
//!   carry 100 ms Raft heartbeats). When one side shuts down writing, the proxy shuts down
//!   writing towards the other side once everything read before has been delivered.
//! - **Delay(d)**: every chunk read from one side is delivered to the other no earlier
//!   than `d` after it was read, in order, in both directions. So an echo through one
//!   delayed proxy takes at least `2 * d`. A new delay applies to bytes read after the
//!   change; bytes already held keep their deadline, and nothing overtakes them (switching
//!   Delay -> Pass never reorders: the passed bytes queue behind the held ones).
//! - **Blackhole**: a partition that drops packets, not one that resets connections.
//!   Existing connections hang: the proxy stops delivering in both directions, discards
//!   whatever it reads and what it still held, so the sender's request times out as it
//!   would behind a real partition. New connections are accepted (the listen backlog
//!   would accept them anyway) but no upstream connection is opened and nothing is
//!   forwarded. When the link leaves Blackhole (heal, or set to Pass or Delay), every
//!   connection that hung is closed on both sides: its byte stream lost data, so it
//!   cannot resume. Connections that never hung are not touched. A hung connection also
//!   ends early when its client (node `from`, which opened it) closes it, since nobody
//!   can use it again; the target closing it is not passed on (that news would not cross
//!   a partition).
//!
//! Mode changes reach existing connections at once: every connection task watches its
//! link's state through a [`tokio::sync::watch`] channel.
//!
//! # Restarts
//!
//! Each accepted connection opens its own upstream connection, with a
//! [`CONNECT_TIMEOUT`]. While the target is down that fails and the accepted connection
//! is closed straight away, so node `from` sees a connection error as it would for a
//! dead peer; the proxy keeps listening and works again once the target is back on the
//! same address.
//!
//! # Shutdown
//!
//! Dropping a [`Proxy`] (or [`Links`]) aborts its accept task, which owns the connection
//! tasks in a [`JoinSet`] (dropped, hence aborted, with it); dropping the watch sender
//! also makes every connection task return. Nothing outlives the proxy.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::future::pending;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, sleep_until, timeout, Instant};

/// How long a proxy waits for the target to accept an upstream connection. Short: on
/// loopback a live node answers at once, and a dead one should look dead promptly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Read buffer size per direction; also the largest chunk held in a delay queue.
const CHUNK_SIZE: usize = 16 * 1024;
/// How many chunks one direction holds before it stops reading (back-pressure under a
/// delay, so a fast sender cannot make the proxy buffer without bound).
const MAX_QUEUED: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// What a link does to traffic. See the module documentation for the exact semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Forward everything at once.
    Pass,
    /// Forward, each chunk held back this long in each direction (order kept).
    Delay(Duration),
    /// A partition: nothing passes, existing connections hang, and they are closed when
    /// the link leaves this mode.
    Blackhole,
}

/// Counters of one link since its proxy started, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Connections accepted from node `from`.
    pub accepted: u64,
    /// Accepted connections closed at once because the target refused or did not answer
    /// within [`CONNECT_TIMEOUT`] (node `to` down).
    pub connect_failures: u64,
    /// Bytes delivered from node `from` to node `to` (requests).
    pub bytes_to_target: u64,
    /// Bytes delivered from node `to` back to node `from` (responses).
    pub bytes_from_target: u64,
    /// Bytes read but never delivered because the link was (or became) a blackhole.
    pub bytes_dropped: u64,
    /// Connections that hung in a blackhole (open when it started, or accepted during
    /// it); each is closed when the link heals or its client gives up.
    pub cut: u64,
}

/// The live counters behind [`LinkStats`], shared by the accept and connection tasks.
#[derive(Debug, Default)]
struct Counters {
    /// See [`LinkStats::accepted`].
    accepted: AtomicU64,
    /// See [`LinkStats::connect_failures`].
    connect_failures: AtomicU64,
    /// See [`LinkStats::bytes_to_target`].
    bytes_to_target: AtomicU64,
    /// See [`LinkStats::bytes_from_target`].
    bytes_from_target: AtomicU64,
    /// See [`LinkStats::bytes_dropped`].
    bytes_dropped: AtomicU64,
    /// See [`LinkStats::cut`].
    cut: AtomicU64,
    /// Bytes read from either side, delivered or not: lets tests wait until the proxy
    /// holds what they wrote.
    received: AtomicU64,
}

/// Adds `n` to a counter. Relaxed: the counters are independent statistics.
fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What the watch channel of a link carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkState {
    /// The current mode.
    mode: LinkMode,
    /// How many times the link has left Blackhole. A hung connection remembers the value
    /// it saw and closes when it changes, even if the link was cut again before the
    /// connection task got to look (the watch channel keeps only the latest state).
    heals: u64,
}

/// One directed link's proxy: listens on `127.0.0.1:<ephemeral>` and forwards to `target`.
#[derive(Debug)]
pub struct Proxy {
    /// Where node `from` connects.
    addr: SocketAddr,
    /// Where the proxy connects: node `to`'s real address.
    target: SocketAddr,
    /// The link's state; every connection task holds a receiver.
    link: watch::Sender<LinkState>,
    /// Shared with the tasks, read by [`Proxy::stats`].
    counters: Arc<Counters>,
    /// The accept loop; it owns the connection tasks. Aborted on drop.
    accept_task: JoinHandle<()>,
}

impl Proxy {
    /// Binds `127.0.0.1:0` and starts forwarding to `target`, in [`LinkMode::Pass`]. The
    /// target need not be up yet.
    pub async fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding a proxy listener on 127.0.0.1")?;
        let addr = listener.local_addr().context("proxy listener address")?;
        let (link, watcher) = watch::channel(LinkState {
            mode: LinkMode::Pass,
            heals: 0,
        });
        let counters = Arc::new(Counters::default());
        let accept_task = tokio::spawn(accept_loop(listener, target, watcher, counters.clone()));
        Ok(Proxy {
            addr,
            target,
            link,
            counters,
            accept_task,
        })
    }

    /// The address to connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Changes what the link does, effective at once on existing connections. Leaving
    /// [`LinkMode::Blackhole`] closes every connection that hung in it. Setting the
    /// current mode again changes nothing.
    pub fn set(&self, mode: LinkMode) {
        self.link.send_if_modified(|state| {
            if state.mode == mode {
                return false;
            }
            if state.mode == LinkMode::Blackhole {
                state.heals += 1;
            }
            state.mode = mode;
            true
        });
    }

    /// What the link currently does.
    pub fn mode(&self) -> LinkMode {
        self.link.borrow().mode
    }

    /// A snapshot of the link's counters.
    pub fn stats(&self) -> LinkStats {
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        LinkStats {
            accepted: get(&c.accepted),
            connect_failures: get(&c.connect_failures),
            bytes_to_target: get(&c.bytes_to_target),
            bytes_from_target: get(&c.bytes_from_target),
            bytes_dropped: get(&c.bytes_dropped),
            cut: get(&c.cut),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection task.
        self.accept_task.abort();
    }
}

/// Accepts connections until aborted, one task each; reaps the finished ones.
async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    link: watch::Receiver<LinkState>,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    bump(&counters.accepted, 1);
                    connections.spawn(serve(client, target, link.clone(), counters.clone()));
                }
                Err(_) => sleep(ACCEPT_BACKOFF).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Which way a pump copies; decides which counter it feeds and how a hang ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From the client (node `from`) to the target (node `to`).
    ToTarget,
    /// From the target back to the client.
    FromTarget,
}

/// How one direction of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PumpEnd {
    /// The source shut down and everything, shutdown included, was delivered. The other
    /// direction may go on (half-close).
    Finished,
    /// A socket failed, or the proxy is gone: close the whole connection.
    Broken,
    /// The connection hung in a blackhole and must now be closed.
    Hung,
}

/// Serves one accepted connection until both directions end or it must be closed.
async fn serve(
    client: TcpStream,
    target: SocketAddr,
    mut link: watch::Receiver<LinkState>,
    counters: Arc<Counters>,
) {
    // Ignored: without NODELAY the proxy is slower, not wrong.
    let _ = client.set_nodelay(true);
    let state = *link.borrow_and_update();
    if state.mode == LinkMode::Blackhole {
        // Accepted into a partition: no upstream, hang until healed or abandoned.
        bump(&counters.cut, 1);
        let mut client = client;
        let mut buf = vec![0; CHUNK_SIZE];
        hang(
            &mut client,
            true,
            &mut link,
            state.heals,
            Direction::ToTarget,
            &mut buf,
            &counters,
        )
        .await;
        return;
    }
    let upstream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(_)) | Err(_) => {
            // Dropping `client` closes it: the node sees its peer as down.
            bump(&counters.connect_failures, 1);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let requests = pump(
        client_read,
        upstream_write,
        link.clone(),
        Direction::ToTarget,
        &counters,
    );
    let responses = pump(
        upstream_read,
        client_write,
        link,
        Direction::FromTarget,
        &counters,
    );
    tokio::pin!(requests, responses);
    let (mut requests_done, mut responses_done) = (false, false);
    while !(requests_done && responses_done) {
        let end = tokio::select! {
            end = &mut requests, if !requests_done => { requests_done = true; end }
            end = &mut responses, if !responses_done => { responses_done = true; end }
        };
        match end {
            PumpEnd::Finished => {}
            PumpEnd::Broken => break,
            PumpEnd::Hung => {
                bump(&counters.cut, 1);
                break;
            }
        }
    }
    // Returning drops both pumps, hence all four halves: both sockets close.
}

/// A piece of one direction's byte stream on its way through the proxy.
#[derive(Debug)]
struct Chunk {
    /// Not to be delivered before this; `None` when read in Pass mode.
    due: Option<Instant>,
    /// The bytes, or `None` for "the source shut down writing".
    data: Option<Vec<u8>>,
    /// How much of `data` has been written already.
    sent: usize,
}

/// Copies `src` to `dst`, following the link's mode, until the stream ends or must close.
async fn pump(
    mut src: OwnedReadHalf,
    mut dst: OwnedWriteHalf,
    mut link: watch::Receiver<LinkState>,
    direction: Direction,
    counters: &Counters,
) -> PumpEnd {
    let delivered = match direction {
        Direction::ToTarget => &counters.bytes_to_target,
        Direction::FromTarget => &counters.bytes_from_target,
    };
    let mut buf = vec![0; CHUNK_SIZE];
    // Chunks read but not yet being written, oldest first.
    let mut queue: VecDeque<Chunk> = VecDeque::new();
    // The chunk being written; kept apart from `queue` so that reading may append to the
    // queue while a write borrows this one.
    let mut head: Option<Chunk> = None;
    let mut src_open = true;
    let mut state = *link.borrow_and_update();
    loop {
        if state.mode == LinkMode::Blackhole {
            let lost = queue
                .iter()
                .chain(&head)
                .filter_map(|chunk| chunk.data.as_ref().map(|data| data.len() - chunk.sent))
                .sum::<usize>();
            bump(&counters.bytes_dropped, lost as u64);
            drop((queue, head));
            return hang(
                &mut src,
                src_open,
                &mut link,
                state.heals,
                direction,
                &mut buf,
                counters,
            )
            .await;
        }
        if head.is_none() {
            head = queue.pop_front();
        }
        if head.is_none() && !src_open {
            return PumpEnd::Finished;
        }
        tokio::select! {
            // Mode changes first, so a cut stops delivery before anything else happens.
            biased;
            changed = link.changed() => {
                if changed.is_err() {
                    return PumpEnd::Broken;
                }
                state = *link.borrow_and_update();
            }
            written = deliver(&mut dst, head.as_ref()) => match (written, head.as_mut()) {
                (Ok(n), Some(Chunk { data: Some(data), sent, .. })) if n > 0 => {
                    bump(delivered, n as u64);
                    *sent += n;
                    if *sent == data.len() {
                        head = None;
                    }
                }
                // The shutdown was passed on; `src_open` is false, so this direction is done.
                (Ok(_), Some(Chunk { data: None, .. })) => head = None,
                _ => return PumpEnd::Broken,
            },
            read = src.read(&mut buf), if src_open && queue.len() < MAX_QUEUED => {
                let due = match state.mode {
                    LinkMode::Delay(d) => Some(Instant::now() + d),
                    LinkMode::Pass | LinkMode::Blackhole => None,
                };
                let data = match read {
                    Ok(n) if n > 0 => {
                        bump(&counters.received, n as u64);
                        buf.get(..n).map(<[u8]>::to_vec)
                    }
                    // EOF, or a reset: either way nothing more comes from this side.
                    Ok(_) | Err(_) => {
                        src_open = false;
                        None
                    }
                };
                queue.push_back(Chunk { due, data, sent: 0 });
            }
        }
    }
}

/// Writes (part of) `chunk` once it is due, or shuts `dst` down for an end-of-stream
/// chunk. Cancel-safe: a cancelled call has written nothing. Never finishes without a
/// chunk.
async fn deliver(dst: &mut OwnedWriteHalf, chunk: Option<&Chunk>) -> io::Result<usize> {
    let Some(chunk) = chunk else {
        return pending().await;
    };
    if let Some(due) = chunk.due {
        sleep_until(due).await;
    }
    match &chunk.data {
        Some(data) => dst.write(data.get(chunk.sent..).unwrap_or_default()).await,
        None => dst.shutdown().await.map(|()| 0),
    }
}

/// Holds a connection in a blackhole: reads and discards from `src`, writes nothing,
/// until the link heals (`heals` changes) or, on the client's side, the client closes.
/// Always ends the connection.
async fn hang<R: AsyncRead + Unpin>(
    src: &mut R,
    mut src_open: bool,
    link: &mut watch::Receiver<LinkState>,
    heals: u64,
    direction: Direction,
    buf: &mut [u8],
    counters: &Counters,
) -> PumpEnd {
    loop {
        tokio::select! {
            changed = link.changed() => {
                if changed.is_err() {
                    return PumpEnd::Broken;
                }
                if link.borrow_and_update().heals != heals {
                    return PumpEnd::Hung;
                }
            }
            read = src.read(buf), if src_open => match read {
                Ok(n) if n > 0 => {
                    bump(&counters.received, n as u64);
                    bump(&counters.bytes_dropped, n as u64);
                }
                // The client gave the connection up: nobody can use it any more.
                _ if direction == Direction::ToTarget => return PumpEnd::Hung,
                // The target closed: that news would not cross a partition.
                _ => src_open = false,
            },
        }
    }
}

/// All links of a cluster: one [`Proxy`] per ordered pair of distinct nodes.
///
/// Methods that name nodes panic on an id that is not in the cluster (a bug in the
/// test), except [`Links::partition`], which takes a whole layout and returns an error.
#[derive(Debug)]
pub struct Links {
    /// Node id -> real address, as given to [`Links::start`].
    nodes: BTreeMap<u64, SocketAddr>,
    /// `(from, to)` -> the proxy node `from` uses to reach node `to`.
    proxies: BTreeMap<(u64, u64), Proxy>,
}

impl Links {
    /// Starts `n * (n - 1)` proxies, all passing. `nodes` maps node id to its real
    /// address (`127.0.0.1:port`); the nodes need not be running yet.
    pub async fn start(nodes: &BTreeMap<u64, SocketAddr>) -> Result<Links> {
        let mut proxies = BTreeMap::new();
        for &from in nodes.keys() {
            for (&to, &target) in nodes {
                if from != to {
                    let proxy = Proxy::start(target)
                        .await
                        .with_context(|| format!("starting the proxy for link {from}->{to}"))?;
                    proxies.insert((from, to), proxy);
                }
            }
        }
        Ok(Links {
            nodes: nodes.clone(),
            proxies,
        })
    }

    /// The nodes and their real addresses.
    pub fn nodes(&self) -> &BTreeMap<u64, SocketAddr> {
        &self.nodes
    }

    /// The proxy node `from` uses to reach `to`, if both exist and differ.
    pub fn proxy(&self, from: u64, to: u64) -> Option<&Proxy> {
        self.proxies.get(&(from, to))
    }

    /// Like [`Links::proxy`], for the methods that document a panic.
    fn link(&self, from: u64, to: u64) -> &Proxy {
        self.proxy(from, to)
            .unwrap_or_else(|| panic!("no link {from}->{to}: unknown node, or from == to"))
    }

    /// Panics unless `node` is in the cluster.
    fn check_node(&self, node: u64) {
        assert!(
            self.nodes.contains_key(&node),
            "node {node} is not in the cluster {:?}",
            self.nodes.keys().collect::<Vec<_>>()
        );
    }

    /// The value for node `from`'s `--peer-via` flag: `REAL=VIA,REAL=VIA,...`, one entry
    /// per other node, in node id order.
    pub fn peer_via_flag(&self, from: u64) -> String {
        self.check_node(from);
        self.nodes
            .iter()
            .filter(|(&to, _)| to != from)
            .map(|(&to, real)| format!("{real}={}", self.link(from, to).addr()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sets one link's mode (see [`Proxy::set`]).
    pub fn set(&self, from: u64, to: u64, mode: LinkMode) {
        self.link(from, to).set(mode);
    }

    /// The current mode of one link.
    pub fn mode(&self, from: u64, to: u64) -> LinkMode {
        self.link(from, to).mode()
    }

    /// Splits the cluster: every link between nodes of different groups is cut, both
    /// directions. This replaces any earlier partition: cut links inside a group are
    /// healed (set to Pass); delayed links inside a group stay delayed. The groups must
    /// cover every node exactly once and name no unknown node, else nothing changes and
    /// an error says why.
    pub fn partition(&self, groups: &[Vec<u64>]) -> Result<()> {
        let mut group_of = BTreeMap::new();
        for (i, group) in groups.iter().enumerate() {
            for &node in group {
                ensure!(
                    self.nodes.contains_key(&node),
                    "partition {groups:?} names node {node}, which is not in the cluster"
                );
                if group_of.insert(node, i).is_some() {
                    bail!("partition {groups:?} puts node {node} in more than one group");
                }
            }
        }
        let missing: Vec<u64> = self
            .nodes
            .keys()
            .copied()
            .filter(|node| !group_of.contains_key(node))
            .collect();
        ensure!(
            missing.is_empty(),
            "partition {groups:?} leaves out nodes {missing:?}; every node must be in a group"
        );
        for (&(from, to), proxy) in &self.proxies {
            if group_of.get(&from) != group_of.get(&to) {
                proxy.set(LinkMode::Blackhole);
            } else if proxy.mode() == LinkMode::Blackhole {
                proxy.set(LinkMode::Pass);
            }
        }
        Ok(())
    }

    /// Cuts only link `(from, to)`: connections `from` opens to `to` hang. `to` can still
    /// reach `from`.
    pub fn cut_one_way(&self, from: u64, to: u64) {
        self.set(from, to, LinkMode::Blackhole);
    }

    /// Cuts every link between `node` and the others, both directions. Other links are
    /// left as they are.
    pub fn isolate(&self, node: u64) {
        self.check_node(node);
        for (&(from, to), proxy) in &self.proxies {
            if from == node || to == node {
                proxy.set(LinkMode::Blackhole);
            }
        }
    }

    /// Delays link `(from, to)` by `d` each way. On a cut link this heals it (closing its
    /// hung connections).
    pub fn delay(&self, from: u64, to: u64, d: Duration) {
        self.set(from, to, LinkMode::Delay(d));
    }

    /// Delays every link that is not cut by `d`; cut links stay cut.
    pub fn delay_all(&self, d: Duration) {
        for proxy in self.proxies.values() {
            if proxy.mode() != LinkMode::Blackhole {
                proxy.set(LinkMode::Delay(d));
            }
        }
    }

    /// Sets every link back to Pass (closing the connections that hung in a cut).
    pub fn heal(&self) {
        for proxy in self.proxies.values() {
            proxy.set(LinkMode::Pass);
        }
    }

    /// Every link's counters.
    pub fn stats(&self) -> BTreeMap<(u64, u64), LinkStats> {
        self.proxies
            .iter()
            .map(|(&link, proxy)| (link, proxy.stats()))
            .collect()
    }

    /// The current state for logs, e.g. `cut 1<->2 1<->3 2->3; delay 50ms 3->1`, or
    /// `all links pass`. `a<->b` means both directions are in the same state.
    pub fn describe(&self) -> String {
        let mut cut = Vec::new();
        let mut delayed: BTreeMap<Duration, Vec<(u64, u64)>> = BTreeMap::new();
        for (&link, proxy) in &self.proxies {
            match proxy.mode() {
                LinkMode::Pass => {}
                LinkMode::Delay(d) => delayed.entry(d).or_default().push(link),
                LinkMode::Blackhole => cut.push(link),
            }
        }
        let mut parts = Vec::new();
        if !cut.is_empty() {
            parts.push(format!("cut {}", describe_links(&cut)));
        }
        for (d, links) in &delayed {
            parts.push(format!("delay {d:?} {}", describe_links(links)));
        }
        if parts.is_empty() {
            "all links pass".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

/// `a<->b` for a pair present both ways, `a->b` otherwise, space-separated.
fn describe_links(links: &[(u64, u64)]) -> String {
    let mut out = String::new();
    for &(from, to) in links {
        let both = links.contains(&(to, from));
        if both && from > to {
            continue; // Written as `to<->from` already.
        }
        let arrow = if both { "<->" } else { "->" };
        if !out.is_empty() {
            out.push(' ');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{from}{arrow}{to}");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Long enough for a passing echo on a loaded 2-core machine.
    const PASS_WAIT: Duration = Duration::from_secs(5);
    /// How long an echo that should hang is given before the test calls it hung.
    const HANG_WAIT: Duration = Duration::from_millis(300);

    /// Starts an echo server on 127.0.0.1: it echoes each connection until EOF, then shuts
    /// down writing.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(echo_on(listener));
        addr
    }

    async fn echo_on(listener: TcpListener) {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    }

    /// Writes `msg` and reads back as many bytes.
    async fn echo(stream: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        stream.write_all(msg).await?;
        let mut back = vec![0; msg.len()];
        stream.read_exact(&mut back).await?;
        Ok(back)
    }

    /// Whether one echo through `addr` completes within `wait`, on a fresh connection.
    async fn echo_passes(addr: SocketAddr, wait: Duration) -> bool {
        timeout(wait, async {
            let mut stream = TcpStream::connect(addr).await?;
            echo(&mut stream, b"ping").await
        })
        .await
        .is_ok_and(|back| back.is_ok_and(|back| back == b"ping"))
    }

    /// Whether `stream` is closed: a read ends (EOF or error) within `wait`.
    async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
        let mut buf = [0; 64];
        match timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    /// Polls until `condition` holds, failing after a few seconds.
    async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + PASS_WAIT;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            sleep(Duration::from_millis(5)).await;
        }
    }

    /// `n` big-endian u32 counters starting at `from`.
    fn counters(from: u32, n: u32) -> Vec<u8> {
        (from..from + n).flat_map(u32::to_be_bytes).collect()
    }

    #[tokio::test]
    async fn pass_forwards_bytes_both_ways_and_half_close() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(echo(&mut stream, b"hello").await.unwrap(), b"hello");
        assert_eq!(echo(&mut stream, b"again").await.unwrap(), b"again");

        // A payload bigger than one chunk, then a half-close: the echo server only shuts
        // down (and we only see EOF) if the proxy passed our shutdown on.
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (mut read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            write.write_all(&payload).await.unwrap();
            write.shutdown().await.unwrap();
            payload
        });
        let mut back = Vec::new();
        timeout(PASS_WAIT, read.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        let payload = writer.await.unwrap();
        assert!(back == payload, "echoed bytes differ from those sent");

        let stats = proxy.stats();
        assert_eq!(stats.accepted, 1);
        let total = payload.len() as u64 + 10;
        assert_eq!(
            (stats.bytes_to_target, stats.bytes_from_target),
            (total, total)
        );
        assert_eq!(stats.cut, 0);
    }

    #[tokio::test]
    async fn blackhole_hangs_connections_and_heal_closes_them() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut before = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(echo(&mut before, b"one").await.unwrap(), b"one");

        proxy.set(LinkMode::Blackhole);
        assert!(
            timeout(HANG_WAIT, echo(&mut before, b"two")).await.is_err(),
            "an existing connection's echo passed a blackhole"
        );
        let mut during = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            timeout(HANG_WAIT, echo(&mut during, b"three"))
                .await
                .is_err(),
            "a new connection's echo passed a blackhole"
        );
        assert!(!echo_passes(proxy.addr(), HANG_WAIT).await);

        proxy.set(LinkMode::Pass);
        assert!(
            closed_within(&mut before, PASS_WAIT).await,
            "hung connection stayed open"
        );
        assert!(
            closed_within(&mut during, PASS_WAIT).await,
            "hung connection stayed open"
        );
        assert!(echo_passes(proxy.addr(), PASS_WAIT).await);
        let stats = proxy.stats();
        assert_eq!(stats.cut, 3);
        assert!(stats.bytes_dropped >= 3 + 5, "{stats:?}");
    }

    #[tokio::test]
    async fn hung_connection_ends_when_its_client_leaves_not_when_its_target_does() {
        let target = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let proxy = Proxy::start(target.local_addr().unwrap()).await.unwrap();
        let mut leaving_client = TcpStream::connect(proxy.addr()).await.unwrap();
        let (mut upstream_a, _) = target.accept().await.unwrap();
        let mut staying_client = TcpStream::connect(proxy.addr()).await.unwrap();
        let (upstream_b, _) = target.accept().await.unwrap();
        // Both connections are up before the cut.
        leaving_client.write_all(b"a").await.unwrap();
        let mut byte = [0; 1];
        upstream_a.read_exact(&mut byte).await.unwrap();

        // The connection tasks see the cut before the close: they look at mode changes first.
        proxy.set(LinkMode::Blackhole);
        drop(leaving_client);
        assert!(
            closed_within(&mut upstream_a, PASS_WAIT).await,
            "a hung connection its client closed kept its upstream"
        );
        drop(upstream_b);
        assert!(
            !closed_within(&mut staying_client, HANG_WAIT).await,
            "the target closing a hung connection crossed the blackhole"
        );
        assert_eq!(proxy.stats().cut, 1);
        proxy.set(LinkMode::Pass);
        assert!(closed_within(&mut staying_client, PASS_WAIT).await);
        wait_for("the second cut connection to be counted", || {
            proxy.stats().cut == 2
        })
        .await;
    }

    #[tokio::test]
    async fn connection_not_blackholed_survives_a_heal() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        // Cut and healed before this connection existed: it must not be closed.
        proxy.set(LinkMode::Blackhole);
        proxy.set(LinkMode::Pass);
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(echo(&mut stream, b"a").await.unwrap(), b"a");
        proxy.set(LinkMode::Delay(Duration::from_millis(1)));
        proxy.set(LinkMode::Pass);
        assert_eq!(echo(&mut stream, b"b").await.unwrap(), b"b");
        assert_eq!(proxy.stats().cut, 0);
    }

    #[tokio::test]
    async fn delay_holds_each_direction_and_keeps_order() {
        let d = Duration::from_millis(100);
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.set(LinkMode::Delay(d));

        // The request and the reply are each held `d`.
        let started = Instant::now();
        assert_eq!(echo(&mut stream, b"x").await.unwrap(), b"x");
        let took = started.elapsed();
        assert!(
            took >= 2 * d,
            "echo through a {d:?} delay took only {took:?}"
        );

        // Many small writes come back whole and in order.
        let sent = counters(0, 500);
        let (mut read, mut write) = stream.into_split();
        let chunks: Vec<Vec<u8>> = sent.chunks(4).map(<[u8]>::to_vec).collect();
        let writer = tokio::spawn(async move {
            for chunk in chunks {
                write.write_all(&chunk).await.unwrap();
            }
            write
        });
        let mut back = vec![0; sent.len()];
        timeout(PASS_WAIT, read.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert!(back == sent, "bytes reordered or altered under delay");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn delay_to_pass_mid_stream_keeps_order() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.set(LinkMode::Delay(Duration::from_millis(300)));

        // Written in three parts, each read by the proxy (under the delay) before the next
        // is written, so that it holds several chunks when the delay is lifted.
        let held = counters(0, 90);
        let received = || proxy.counters.received.load(Ordering::Relaxed);
        for (i, part) in held.chunks(120).enumerate() {
            stream.write_all(part).await.unwrap();
            let until = (i * 120 + part.len()) as u64;
            wait_for("the proxy to read the delayed bytes", || {
                received() >= until
            })
            .await;
        }
        proxy.set(LinkMode::Pass);
        let passed = counters(100, 100);
        stream.write_all(&passed).await.unwrap();

        let mut back = vec![0; held.len() + passed.len()];
        timeout(PASS_WAIT, stream.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert!(
            back == [held, passed].concat(),
            "bytes passed after the switch overtook delayed ones"
        );
    }

    #[tokio::test]
    async fn upstream_down_closes_accepted_connections_until_it_returns() {
        // A port that was just free: nothing listens there.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let target = listener.local_addr().unwrap();
        drop(listener);
        let proxy = Proxy::start(target).await.unwrap();

        for _ in 0..2 {
            let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
            assert!(
                closed_within(&mut stream, Duration::from_millis(500)).await,
                "a connection to a dead target was not closed promptly"
            );
        }
        assert_eq!(proxy.stats().connect_failures, 2);

        // The "node" restarts on the same address; the proxy works again.
        tokio::spawn(echo_on(TcpListener::bind(target).await.unwrap()));
        assert!(echo_passes(proxy.addr(), PASS_WAIT).await);
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections_and_listener() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let addr = proxy.addr();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(echo(&mut stream, b"hi").await.unwrap(), b"hi");
        drop(proxy);
        assert!(closed_within(&mut stream, PASS_WAIT).await);
        let deadline = Instant::now() + PASS_WAIT;
        while TcpStream::connect(addr).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "the proxy still listens after drop"
            );
            sleep(Duration::from_millis(5)).await;
        }
    }

    /// A cluster of echo servers as nodes 1..=n, with links.
    async fn echo_cluster(n: u64) -> Links {
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            nodes.insert(id, echo_server().await);
        }
        Links::start(&nodes).await.unwrap()
    }

    /// Probes every link concurrently and asserts exactly the ones in `cut` hang.
    async fn assert_cut_exactly(links: &Links, cut: &[(u64, u64)]) {
        let mut probes = JoinSet::new();
        for (&link, proxy) in &links.proxies {
            let expect_pass = !cut.contains(&link);
            let wait = if expect_pass { PASS_WAIT } else { HANG_WAIT };
            let addr = proxy.addr();
            probes.spawn(async move { (link, expect_pass, echo_passes(addr, wait).await) });
        }
        let mut wrong = Vec::new();
        while let Some(probe) = probes.join_next().await {
            let (link, expected, passed) = probe.unwrap();
            if expected != passed {
                wrong.push((link, if passed { "passes" } else { "is cut" }));
            }
        }
        wrong.sort();
        assert!(wrong.is_empty(), "links in the wrong state: {wrong:?}");
    }

    #[tokio::test]
    async fn partition_cuts_links_between_groups_both_ways_only() {
        let links = echo_cluster(3).await;
        assert_eq!(links.proxies.len(), 6);
        assert_cut_exactly(&links, &[]).await;
        links.partition(&[vec![1], vec![2, 3]]).unwrap();
        assert_cut_exactly(&links, &[(1, 2), (2, 1), (1, 3), (3, 1)]).await;
        assert_eq!(links.describe(), "cut 1<->2 1<->3");
        // A new partition replaces the old one.
        links.partition(&[vec![1, 2], vec![3]]).unwrap();
        assert_cut_exactly(&links, &[(1, 3), (3, 1), (2, 3), (3, 2)]).await;
        links.heal();
        assert_cut_exactly(&links, &[]).await;
        assert_eq!(links.describe(), "all links pass");
    }

    #[tokio::test]
    async fn cut_one_way_and_isolate() {
        let links = echo_cluster(3).await;
        links.cut_one_way(1, 2);
        assert_eq!(links.mode(2, 1), LinkMode::Pass);
        assert_cut_exactly(&links, &[(1, 2)]).await;
        assert_eq!(links.describe(), "cut 1->2");
        links.heal();
        links.isolate(3);
        links.delay(1, 2, Duration::from_millis(5));
        assert_cut_exactly(&links, &[(1, 3), (3, 1), (2, 3), (3, 2)]).await;
        assert_eq!(links.describe(), "cut 1<->3 2<->3; delay 5ms 1->2");
        links.delay_all(Duration::from_millis(7));
        assert_eq!(links.mode(1, 3), LinkMode::Blackhole);
        assert_eq!(links.mode(2, 1), LinkMode::Delay(Duration::from_millis(7)));
    }

    #[tokio::test]
    async fn peer_via_flag_maps_every_other_node_to_its_proxy() {
        let links = echo_cluster(3).await;
        let flag = links.peer_via_flag(2);
        let entries: Vec<&str> = flag.split(',').collect();
        let expected: Vec<String> = [1, 3]
            .iter()
            .map(|&to| format!("{}={}", links.nodes()[&to], links.link(2, to).addr()))
            .collect();
        assert_eq!(entries, expected);
        assert!(flag.starts_with("127.0.0.1:"), "{flag}");
    }

    #[tokio::test]
    async fn partition_rejects_groups_that_do_not_cover_the_cluster_once() {
        let links = echo_cluster(3).await;
        for groups in [
            vec![vec![1], vec![2]],
            vec![vec![1, 2], vec![2, 3]],
            vec![vec![1], vec![2, 3, 4]],
        ] {
            assert!(links.partition(&groups).is_err(), "{groups:?} was accepted");
        }
        assert_eq!(links.describe(), "all links pass");
    }
}
