//! The DNS interface (`--dns-listen`): the catalog's passing instances as A, AAAA and SRV
//! records under `--dns-domain`, over UDP and TCP (hickory-server).
//!
//! The names, under the domain (`registry.` by default), case-insensitive:
//!
//! | name                                   | answers                                        |
//! |----------------------------------------|------------------------------------------------|
//! | `<service>.service`                    | A / AAAA: the passing instances' IPs, shuffled; SRV: one per instance |
//! | `<tag>.<service>.service`              | the same, only instances with that tag         |
//! | `_<service>._tcp.service`              | RFC 2782's form of `<service>.service`         |
//! | any of these `.<zone>.zone` after `service` | the instances in that zone, or all of them when none is |
//! | `<hex>.addr`                           | an SRV target: the IP spelt in hex (8 digits: A, 32: AAAA) |
//! | the domain itself                      | its SOA                                        |
//!
//! Every record has the TTL `--dns-ttl`. A name under the domain that is none of these, or
//! a service that does not exist (or that the anonymous caller may not read, with ACLs),
//! is NXDOMAIN; a service with no passing instance is NOERROR without answers. Both carry
//! the SOA in the authority section. A name outside the domain is REFUSED: this server is
//! no resolver.
//!
//! Layers, pure first: [`parse`] turns a query name into a [`Lookup`]; [`Zone::answer`]
//! builds the records from the instances the app found (randomness is an input); [`fit`]
//! trims an answer to the size the transport allows; [`DnsServer`] is hickory's request
//! handler around them and the sockets, the only part that does IO.
//!
//! **Invariant:** answers come from this node's memory ([`App::passing_instances`], a
//! stale read): no Raft round trip, and no state of their own.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{DNSClass, Label, Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::net::{TcpListener, UdpSocket};

use crate::app::App;
use crate::replicated::catalog::InstanceSpec;

/// The largest UDP answer sent, whatever buffer a client advertises with EDNS.
pub const MAX_UDP_PAYLOAD: u16 = 4096;

/// The UDP answer size without EDNS (RFC 1035 §4.2.1).
const PLAIN_UDP_PAYLOAD: u16 = 512;

/// A TCP connection that sends no query for this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one TCP connection may have queued for sending (hickory's own default).
const TCP_RESPONSE_BUFFER: usize = 32;

/// The longest `--dns-domain`, so that every name this server makes under it (the
/// longest is a 32-digit `<hex>.addr` name) fits in DNS's 255 bytes.
const MAX_DOMAIN_LEN: usize = 128;

/// SOA timers (seconds). Nothing transfers this zone, so they matter only as the values
/// an SOA must carry: refresh, retry, expire.
const SOA_TIMERS: (i32, i32, i32) = (3600, 600, 86_400);

/// The SRV priority of every instance: all are equal; the weight tells them apart.
const SRV_PRIORITY: u16 = 1;

// ---------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------

/// What a name under the domain asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The domain itself.
    Apex,
    /// A service's passing instances.
    Service(ServiceQuery),
    /// The address an `<hex>.addr` name spells: the SRV target of an instance with an IP.
    Addr(IpAddr),
}

/// Which instances of a service a name asks for, lowercase (names are case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceQuery {
    pub service: String,
    /// Only instances with this tag (`<tag>.<service>.service`).
    pub tag: Option<String>,
    /// Prefer instances in this zone (`….service.<zone>.zone`), all when none is.
    pub zone: Option<String>,
}

/// Why a name is not a [`Lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not under the domain: REFUSED.
    #[error("the name is not under the domain")]
    Outside,
    /// Under the domain, but no name this server answers: NXDOMAIN.
    #[error("no such name under the domain")]
    Unknown,
}

/// Reads a query name against the grammar in this module's table. `domain` must be
/// lowercase (what [`parse_domain`] makes); `name` may have any case.
///
/// Services, tags and zones are one label each, so a service, tag or zone with a `.` in
/// its name is not reachable by DNS (nor one longer than a label's 63 bytes).
/// `_<service>._tcp` is RFC 2782's form of `<service>` (instances declare no protocol, so
/// `_udp` or any other is unknown); a tag cannot start with `_` where a service does.
pub fn parse(name: &Name, domain: &Name) -> Result<Lookup, NameError> {
    if !domain.zone_of(name) {
        return Err(NameError::Outside);
    }
    let labels: Vec<&[u8]> = name.iter().collect();
    let own = labels.len().saturating_sub(domain.iter().len());
    let labels: Vec<String> = labels[..own]
        .iter()
        .map(|label| std::str::from_utf8(label).map(str::to_ascii_lowercase))
        .collect::<Result<_, _>>()
        .map_err(|_| NameError::Unknown)?;
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    match labels.as_slice() {
        [] => Ok(Lookup::Apex),
        [hex, "addr"] => addr_of_hex(hex).map(Lookup::Addr).ok_or(NameError::Unknown),
        [rest @ .., "service", zone, "zone"] => service_query(rest, Some(zone)),
        [rest @ .., "service"] => service_query(rest, None),
        _ => Err(NameError::Unknown),
    }
}

/// The service part of a name: the labels before `service`.
fn service_query(labels: &[&str], zone: Option<&str>) -> Result<Lookup, NameError> {
    let (service, tag) = match labels {
        [service] => (*service, None),
        [service, protocol] if service.starts_with('_') && protocol.starts_with('_') => {
            if *protocol != "_tcp" {
                return Err(NameError::Unknown);
            }
            (&service[1..], None)
        }
        [tag, service] => (*service, Some(*tag)),
        _ => return Err(NameError::Unknown),
    };
    if service.is_empty() {
        return Err(NameError::Unknown);
    }
    Ok(Lookup::Service(ServiceQuery {
        service: service.to_owned(),
        tag: tag.map(str::to_owned),
        zone: zone.map(str::to_owned),
    }))
}

/// The IP an `<hex>.addr` label spells: 8 hex digits for IPv4, 32 for IPv6.
fn addr_of_hex(hex: &str) -> Option<IpAddr> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        8 => u32::from_str_radix(hex, 16)
            .ok()
            .map(|bits| IpAddr::V4(Ipv4Addr::from(bits))),
        32 => u128::from_str_radix(hex, 16)
            .ok()
            .map(|bits| IpAddr::V6(Ipv6Addr::from(bits))),
        _ => None,
    }
}

/// The `<hex>.addr` label of an IP (what [`addr_of_hex`] reads).
fn hex_of_addr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

/// Reads `--dns-domain`: letters, digits and `-` in labels of 1 to 63, at most
/// [`MAX_DOMAIN_LEN`] characters, not the root. Answers it lowercase and fully qualified
/// (a missing trailing dot is added).
pub fn parse_domain(text: &str) -> Result<Name, String> {
    let bare = text.strip_suffix('.').unwrap_or(text);
    if bare.is_empty() {
        return Err("the DNS domain must not be empty or the root".into());
    }
    if bare.len() > MAX_DOMAIN_LEN {
        return Err(format!(
            "{text:?} is longer than {MAX_DOMAIN_LEN} characters"
        ));
    }
    for label in bare.split('.') {
        let ldh = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if label.is_empty()
            || label.len() > 63
            || !ldh
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(format!(
                "{text:?} is not a DNS name: labels are 1 to 63 letters, digits and inner '-', \
                 separated by dots"
            ));
        }
    }
    Name::from_ascii(format!("{}.", bare.to_ascii_lowercase()))
        .map_err(|e| format!("{text:?} is not a DNS name: {e}"))
}

// ---------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------

/// One passing instance, as DNS answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub target: Target,
    pub port: u16,
    /// The SRV weight: the instance's weight (0 to 1000; 0 is RFC 2782's "only when
    /// nothing else is there").
    pub weight: u16,
    /// Its zone, if it has one (compared ignoring case).
    pub zone: Option<String>,
}

/// Where an instance is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An IP address: in A or AAAA answers; an SRV target `<hex>.addr.<domain>`.
    Ip(IpAddr),
    /// A host name: only an SRV target (itself); left out of A and AAAA answers, since a
    /// name can carry one CNAME, not one per instance.
    Host(Name),
}

impl Endpoint {
    /// The endpoint of an instance, if it carries `tag` (ignoring case) and its address
    /// is an IP or a DNS name.
    pub fn of(spec: &InstanceSpec, tag: Option<&str>) -> Option<Endpoint> {
        if let Some(tag) = tag {
            if !spec.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)) {
                return None;
            }
        }
        let target = match spec.address.parse::<IpAddr>() {
            Ok(ip) => Target::Ip(ip),
            Err(_) => {
                let mut host = Name::from_ascii(&spec.address).ok()?;
                host.set_fqdn(true);
                Target::Host(host)
            }
        };
        Some(Endpoint {
            target,
            port: spec.port,
            weight: u16::try_from(spec.weight).unwrap_or(u16::MAX),
            zone: spec.zone().map(str::to_owned),
        })
    }
}

/// The instances in `zone`, or all of them when none is (or no zone is asked for).
pub fn prefer_zone(endpoints: Vec<Endpoint>, zone: Option<&str>) -> Vec<Endpoint> {
    let Some(zone) = zone else { return endpoints };
    let in_zone = |e: &Endpoint| {
        e.zone
            .as_deref()
            .is_some_and(|z| z.eq_ignore_ascii_case(zone))
    };
    if endpoints.iter().any(in_zone) {
        endpoints.into_iter().filter(in_zone).collect()
    } else {
        endpoints
    }
}

/// An answer's code and records, before it is fitted to the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: ResponseCode,
    /// Whether this server is the authority for the name (every name under the domain).
    pub authoritative: bool,
    pub answers: Vec<Record>,
    /// The SOA of an answer without records: how long a resolver may cache the absence.
    pub authorities: Vec<Record>,
    /// The A and AAAA records of the SRV targets.
    pub additionals: Vec<Record>,
    /// Set by [`fit`] when answers were left out.
    pub truncated: bool,
}

impl Answer {
    /// REFUSED, for a name outside the domain: no records, not authoritative.
    fn refused() -> Self {
        Answer {
            code: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            truncated: false,
        }
    }
}

/// The zone this server is the authority for, and how it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// `--dns-domain`: lowercase, fully qualified.
    pub domain: Name,
    /// `--dns-ttl` in seconds: every record's TTL, and the SOA minimum (how long an
    /// absence may be cached).
    pub ttl: u32,
}

impl Zone {
    /// The answer to a question for `name` (as asked) and `qtype`. `instances` finds a
    /// service's passing endpoints (`None`: no such service); `serial` is the SOA serial
    /// (the applied index the answer reflects); `rng` shuffles.
    pub fn answer(
        &self,
        name: &Name,
        qtype: RecordType,
        serial: u32,
        instances: impl FnOnce(&ServiceQuery) -> Option<Vec<Endpoint>>,
        rng: &mut impl Rng,
    ) -> Answer {
        let lookup = match parse(name, &self.domain) {
            Ok(lookup) => lookup,
            Err(NameError::Outside) => return Answer::refused(),
            Err(NameError::Unknown) => return self.negative(ResponseCode::NXDomain, serial),
        };
        let (answers, additionals) = match lookup {
            Lookup::Apex if qtype == RecordType::SOA => (vec![self.soa(serial)], Vec::new()),
            Lookup::Apex => (Vec::new(), Vec::new()),
            Lookup::Addr(ip) => (
                self.address(name, ip, qtype).into_iter().collect(),
                Vec::new(),
            ),
            Lookup::Service(query) => {
                let Some(endpoints) = instances(&query) else {
                    return self.negative(ResponseCode::NXDomain, serial);
                };
                let mut endpoints = prefer_zone(endpoints, query.zone.as_deref());
                endpoints.shuffle(rng);
                self.service(name, qtype, &endpoints)
            }
        };
        if answers.is_empty() {
            return self.negative(ResponseCode::NoError, serial);
        }
        Answer {
            code: ResponseCode::NoError,
            authoritative: true,
            answers,
            authorities: Vec::new(),
            additionals,
            truncated: false,
        }
    }

    /// A service's records for `qtype`, in the order of `endpoints`: the answers, and for
    /// SRV the addresses of the targets. Duplicates (two instances on one address) are
    /// left out: a record set holds each record once.
    fn service(
        &self,
        name: &Name,
        qtype: RecordType,
        endpoints: &[Endpoint],
    ) -> (Vec<Record>, Vec<Record>) {
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        match qtype {
            RecordType::A | RecordType::AAAA => {
                let mut seen = HashSet::new();
                for endpoint in endpoints {
                    if let Target::Ip(ip) = endpoint.target {
                        if seen.insert(ip) {
                            answers.extend(self.address(name, ip, qtype));
                        }
                    }
                }
            }
            RecordType::SRV => {
                let mut seen = HashSet::new();
                let mut seen_addresses = HashSet::new();
                let unique = endpoints
                    .iter()
                    .filter(|e| seen.insert((&e.target, e.port, e.weight)));
                for endpoint in unique {
                    let target = match &endpoint.target {
                        Target::Host(host) => host.clone(),
                        Target::Ip(ip) => {
                            let Some(target) = self.addr_name(*ip) else {
                                continue;
                            };
                            if seen_addresses.insert(*ip) {
                                additionals.push(self.address_record(target.clone(), *ip));
                            }
                            target
                        }
                    };
                    let srv = SRV::new(SRV_PRIORITY, endpoint.weight, endpoint.port, target);
                    answers.push(Record::from_rdata(name.clone(), self.ttl, RData::SRV(srv)));
                }
            }
            _ => {}
        }
        (answers, additionals)
    }

    /// The A record (IPv4, for `A`) or AAAA record (IPv6, for `AAAA`) of `ip`, if the
    /// family is the one asked for.
    fn address(&self, name: &Name, ip: IpAddr, qtype: RecordType) -> Option<Record> {
        let wanted = match ip {
            IpAddr::V4(_) => RecordType::A,
            IpAddr::V6(_) => RecordType::AAAA,
        };
        (qtype == wanted).then(|| self.address_record(name.clone(), ip))
    }

    fn address_record(&self, name: Name, ip: IpAddr) -> Record {
        let data = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        Record::from_rdata(name, self.ttl, data)
    }

    /// `<hex>.addr.<domain>`: the SRV target of an instance at `ip`.
    fn addr_name(&self, ip: IpAddr) -> Option<Name> {
        let hex = Label::from_raw_bytes(hex_of_addr(ip).as_bytes()).ok()?;
        let addr = Label::from_raw_bytes(b"addr").ok()?;
        self.domain
            .prepend_label(addr)
            .ok()?
            .prepend_label(hex)
            .ok()
    }

    /// NXDOMAIN or NOERROR without answers, with the SOA in the authority section.
    fn negative(&self, code: ResponseCode, serial: u32) -> Answer {
        Answer {
            code,
            authoritative: true,
            answers: Vec::new(),
            authorities: vec![self.soa(serial)],
            additionals: Vec::new(),
            truncated: false,
        }
    }

    /// The zone's SOA: `ns.<domain>` and `hostmaster.<domain>` (names nobody resolves;
    /// an SOA needs them), the minimum (negative-caching TTL) being the TTL.
    pub fn soa(&self, serial: u32) -> Record {
        let under = |label: &str| {
            Name::from_ascii(label)
                .and_then(|name| name.append_domain(&self.domain))
                .unwrap_or_else(|_| self.domain.clone())
        };
        let (refresh, retry, expire) = SOA_TIMERS;
        let soa = SOA::new(
            under("ns"),
            under("hostmaster"),
            serial,
            refresh,
            retry,
            expire,
            self.ttl,
        );
        Record::from_rdata(self.domain.clone(), self.ttl, RData::SOA(soa))
    }
}

/// The most bytes an answer may take: over UDP 512 without EDNS (RFC 1035 §4.2.1), the
/// buffer the client advertises with EDNS (512 to [`MAX_UDP_PAYLOAD`]); over TCP 65535.
pub fn size_limit(protocol: Protocol, request_edns: Option<&Edns>) -> u16 {
    match (protocol, request_edns) {
        (Protocol::Udp, None) => PLAIN_UDP_PAYLOAD,
        (Protocol::Udp, Some(edns)) => edns.max_payload().clamp(PLAIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
        _ => u16::MAX,
    }
}

/// Trims `answer` so that the response to `queries` (with `edns`, the response's OPT
/// record) is sent whole in at most `limit` bytes. Additional records go first, as many
/// as it takes, without TC: they are a courtesy (RFC 2181 §9). If the answers do not fit
/// either, as many whole answers as fit stay, no additional record does, and TC is set:
/// the client asks again over TCP.
pub fn fit(answer: &mut Answer, queries: &Queries, edns: Option<&Edns>, limit: u16) {
    // hickory writes the OPT record last: keep room for it.
    let room = limit.saturating_sub(if edns.is_some() { OPT_LEN } else { 0 });
    let Some(written) = written_within(queries, answer, room) else {
        return;
    };
    if written.answers < answer.answers.len() || written.authorities < answer.authorities.len() {
        answer.answers.truncate(written.answers);
        answer.authorities.truncate(written.authorities);
        answer.additionals.clear();
        answer.truncated = true;
    } else {
        answer.additionals.truncate(written.additionals);
    }
}

/// The bytes of the OPT record the server answers with: root name, type, class, TTL
/// (extended code, version, flags) and an empty RDATA, for it carries no options.
const OPT_LEN: u16 = 11;

/// How many records of each section [`written_within`] found room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    answers: usize,
    authorities: usize,
    additionals: usize,
}

/// How many of `answer`'s records, section by section and in order, hickory writes
/// within `room` bytes (without OPT), or `None` when it writes them all. Only hickory's
/// own encoder can tell: its name compression is not the best possible, and it writes
/// each name in full before compressing it, so a record that would end under the limit
/// can still reach it on the way.
fn written_within(queries: &Queries, answer: &Answer, room: u16) -> Option<Written> {
    let mut bytes = Vec::with_capacity(usize::from(room.min(MAX_UDP_PAYLOAD)));
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(room);
    let emitted = MessageResponseBuilder::new(queries, None)
        .build(
            Metadata::new(0, MessageType::Response, OpCode::Query),
            &answer.answers,
            &answer.authorities,
            std::iter::empty(),
            &answer.additionals,
        )
        .destructive_emit(&mut encoder);
    match emitted {
        Ok(info) if !info.truncation => None,
        Ok(info) => Some(Written {
            answers: usize::from(info.counts().answers),
            authorities: usize::from(info.counts().authorities),
            additionals: usize::from(info.counts().additionals),
        }),
        // Not even the question fits, or too many records for a header's counts.
        Err(_) => Some(Written {
            answers: 0,
            authorities: 0,
            additionals: 0,
        }),
    }
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

/// The DNS sockets, bound at start-up before anything is served, so that a port in use
/// stops the start.
#[derive(Debug)]
pub struct DnsSockets {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl DnsSockets {
    /// Binds UDP on `addr`, then TCP on the same address and port (the port UDP got, for
    /// port 0).
    pub async fn bind(addr: &str) -> io::Result<Self> {
        let udp = UdpSocket::bind(addr).await?;
        let tcp = TcpListener::bind(udp.local_addr()?).await?;
        Ok(DnsSockets { udp, tcp })
    }

    /// The address both listen on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// The running DNS server.
pub struct DnsServer {
    server: hickory_server::Server<Handler>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer").finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Serves `zone` on `sockets` from `app`'s state. `app` should be the server's own
    /// handle, which acts for the anonymous caller. Needs a Tokio runtime.
    pub fn start(sockets: DnsSockets, app: App, zone: Zone) -> Self {
        let mut server = hickory_server::Server::new(Handler { app, zone });
        server.register_socket(sockets.udp);
        server.register_listener(sockets.tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        DnsServer { server }
    }

    /// Stops accepting queries and waits for the sockets' tasks to end.
    pub async fn stop(mut self) {
        if let Err(error) = self.server.shutdown_gracefully().await {
            tracing::warn!(%error, "the DNS server stopped with an error");
        }
    }
}

/// hickory's request handler: one question in, one answer out.
struct Handler {
    app: App,
    zone: Zone,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // A request with EDNS gets an OPT record back, advertising the UDP buffer used.
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(size_limit(Protocol::Udp, Some(asked)));
            edns.set_dnssec_ok(asked.flags().dnssec_ok);
            edns
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let sent = match question(request) {
            Ok(query) => {
                let mut answer = self.answer(query);
                let limit = size_limit(request.protocol(), request.edns.as_ref());
                fit(&mut answer, &request.queries, edns.as_ref(), limit);
                metadata.response_code = answer.code;
                metadata.authoritative = answer.authoritative;
                metadata.truncation = answer.truncated;
                let response = builder.build(
                    metadata,
                    &answer.answers,
                    &answer.authorities,
                    std::iter::empty(),
                    &answer.additionals,
                );
                response_handle.send_response(response).await
            }
            Err(code) => {
                metadata.response_code = code;
                let response = builder.error_msg(&request.metadata, code);
                response_handle.send_response(response).await
            }
        };
        sent.unwrap_or_else(|error| {
            tracing::debug!(%error, src = %request.src(), "cannot send a DNS answer");
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        })
    }
}

/// The one question of a request this server answers, or the code it refuses it with:
/// NOTIMP for anything but a query, BADVERS for EDNS past version 0, FORMERR for other
/// than one question, REFUSED for a class other than IN.
fn question(request: &Request) -> Result<&Query, ResponseCode> {
    if request.metadata.op_code != OpCode::Query {
        return Err(ResponseCode::NotImp);
    }
    if request.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
        return Err(ResponseCode::BADVERS);
    }
    let [query] = request.queries.queries() else {
        return Err(ResponseCode::FormErr);
    };
    if query.query_class() != DNSClass::IN {
        return Err(ResponseCode::Refused);
    }
    Ok(query.original())
}

impl Handler {
    /// The answer to one question, from this node's state.
    fn answer(&self, query: &Query) -> Answer {
        // The SOA serial is the applied index, cut to 32 bits: it moves when the state does.
        let serial = self.app.state().applied_index() as u32;
        let instances = |service: &ServiceQuery| {
            self.app.passing_instances(&service.service, |spec| {
                Endpoint::of(spec, service.tag.as_deref())
            })
        };
        self.zone.answer(
            query.name(),
            query.query_type(),
            serial,
            instances,
            &mut rand::rng(),
        )
    }
}

#[cfg(test)]
#[path = "dns_test.rs"]
mod tests;
