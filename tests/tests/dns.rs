//! The DNS interface (`--dns-listen`) against a real server, queried with Debian's `dig`
//! (package dnsutils) on 127.0.0.1: A, AAAA and SRV (both forms, with the additional
//! section), tags, zones, NXDOMAIN and empty answers with the SOA, REFUSED, an instance
//! that turns critical dropping out, truncation over UDP with the whole answer over TCP
//! or a larger EDNS buffer, ACLs, and a port in use at start-up.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use api_spec::{InstanceStatus, RegisterRequest};
use registry_client::Client;
use tests::{free_port, must_pass, wait_until, Cluster};

/// How long a condition may take to show in DNS answers.
const TIMEOUT: Duration = Duration::from_secs(20);

/// A TTL no test outlives.
const LONG_TTL: &str = "1h";

/// A single server answering DNS on a free port, with `extra` flags.
async fn start(extra: &[&str]) -> Result<(Cluster, u16)> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--dns-listen", listen.as_str()];
    args.extend_from_slice(extra);
    Ok((Cluster::start_single(&args).await?, port))
}

fn instance(address: &str, port: u16) -> RegisterRequest {
    RegisterRequest {
        address: address.into(),
        port,
        tags: Vec::new(),
        meta: Default::default(),
        zone: None,
        region: None,
        weight: None,
        ttl: Some(LONG_TTL.into()),
        deregister_after: None,
        lease: None,
        checks: Vec::new(),
    }
}

async fn register(
    client: &Client,
    service: &str,
    id: &str,
    request: RegisterRequest,
) -> Result<()> {
    client
        .register(service, id, &request)
        .await
        .with_context(|| format!("register {service}/{id}"))?;
    Ok(())
}

/// One record of dig's output: `name ttl class type data…`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rr {
    name: String,
    ttl: u32,
    rtype: String,
    data: String,
}

/// What `dig` printed about one answer.
#[derive(Debug, Clone, Default)]
struct Dig {
    status: String,
    /// The header flags (`qr`, `aa`, `tc`, …).
    flags: BTreeSet<String>,
    answers: Vec<Rr>,
    authority: Vec<Rr>,
    additional: Vec<Rr>,
    /// dig's `MSG SIZE  rcvd`.
    size: usize,
    /// Whether the answer came over TCP.
    tcp: bool,
}

impl Dig {
    fn data(&self) -> BTreeSet<String> {
        self.answers.iter().map(|rr| rr.data.clone()).collect()
    }

    fn truncated(&self) -> bool {
        self.flags.contains("tc")
    }
}

/// Asks the server on `port` with `dig`, always at 127.0.0.1, one try, and reads the answer.
async fn dig(port: u16, args: &[&str]) -> Result<Dig> {
    let output = tokio::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .await
        .context("run dig (package dnsutils; scripts/install-deps.sh installs it)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(output.status.success(), "dig {args:?} failed: {text}");
    parse_dig(&text).with_context(|| format!("dig {args:?} printed:\n{text}"))
}

fn parse_dig(text: &str) -> Result<Dig> {
    let mut dig = Dig::default();
    let mut section = None;
    for line in text.lines() {
        if let Some(header) = line.strip_prefix(";; ->>HEADER<<- ") {
            let status = header
                .split(", ")
                .find_map(|part| part.strip_prefix("status: "))
                .context("no status")?;
            dig.status = status.to_owned();
        } else if let Some(flags) = line.strip_prefix(";; flags: ") {
            let flags = flags.split(';').next().unwrap_or_default();
            dig.flags = flags.split_whitespace().map(str::to_owned).collect();
        } else if let Some(size) = line.strip_prefix(";; MSG SIZE  rcvd: ") {
            dig.size = size.trim().parse()?;
        } else if line.starts_with(";; SERVER: ") {
            dig.tcp = line.ends_with("(TCP)");
        } else if line.starts_with(";; ANSWER SECTION:") {
            section = Some(0);
        } else if line.starts_with(";; AUTHORITY SECTION:") {
            section = Some(1);
        } else if line.starts_with(";; ADDITIONAL SECTION:") {
            section = Some(2);
        } else if line.trim().is_empty() {
            // A blank line ends a section.
            section = None;
        } else if line.starts_with(';') {
            // Comments, and the question section's lines.
        } else if let Some(section) = section {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, ttl, _class, rtype, data @ ..] = fields.as_slice() else {
                bail!("cannot read record {line:?}");
            };
            let rr = Rr {
                name: name.to_ascii_lowercase(),
                ttl: ttl.parse()?,
                rtype: (*rtype).to_owned(),
                data: data.join(" "),
            };
            [&mut dig.answers, &mut dig.authority, &mut dig.additional][section].push(rr);
        }
    }
    ensure!(!dig.status.is_empty(), "no answer header");
    Ok(dig)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn a_and_aaaa_answer_the_passing_instances() {
    let (cluster, port) = start(&["--dns-ttl", "3s"]).await.unwrap();
    must_pass(async {
        let client = cluster.client_for(1);
        register(&client, "web", "web-1", instance("127.0.0.1", 8081)).await?;
        register(&client, "web", "web-2", instance("127.0.0.2", 8082)).await?;
        register(&client, "web", "web-6", instance("::1", 8086)).await?;
        // A host name has no address of its own to give: it is only an SRV target.
        register(&client, "web", "web-h", instance("localhost", 8087)).await?;

        let a = dig(port, &["web.service.registry", "A"]).await?;
        assert_eq!(a.status, "NOERROR");
        assert!(a.flags.contains("aa"), "authoritative: {:?}", a.flags);
        assert_eq!(a.data(), set(&["127.0.0.1", "127.0.0.2"]));
        assert!(a.answers.iter().all(|rr| rr.ttl == 3), "--dns-ttl: {a:?}");

        let aaaa = dig(port, &["web.service.registry", "AAAA"]).await?;
        assert_eq!(aaaa.data(), set(&["::1"]));

        // Names are case-insensitive, and the trailing dot is optional.
        let shouted = dig(port, &["WEB.Service.REGISTRY.", "A"]).await?;
        assert_eq!(shouted.data(), set(&["127.0.0.1", "127.0.0.2"]));

        // Shuffled: each instance comes first sometimes.
        wait_until(TIMEOUT, "both instances to come first", || async {
            let mut firsts = BTreeSet::new();
            for _ in 0..20 {
                let a = dig(port, &["web.service.registry", "A"]).await?;
                firsts.insert(a.answers[0].data.clone());
            }
            ensure!(firsts.len() == 2, "first were only {firsts:?}");
            Ok(())
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn srv_answers_in_both_forms_with_the_targets_addresses() {
    let (cluster, port) = start(&[]).await.unwrap();
    must_pass(async {
        let client = cluster.client_for(1);
        let heavy = RegisterRequest {
            weight: Some(10),
            ..instance("127.0.0.1", 8081)
        };
        register(&client, "api", "api-1", heavy).await?;
        register(&client, "api", "api-2", instance("127.0.0.2", 8082)).await?;
        register(&client, "api", "api-6", instance("::1", 8086)).await?;
        register(&client, "api", "api-h", instance("localhost", 8087)).await?;

        let expected = set(&[
            "1 10 8081 7f000001.addr.registry.",
            "1 1 8082 7f000002.addr.registry.",
            "1 1 8086 00000000000000000000000000000001.addr.registry.",
            "1 1 8087 localhost.",
        ]);
        for name in ["api.service.registry", "_api._tcp.service.registry"] {
            let srv = dig(port, &[name, "SRV"]).await?;
            assert_eq!(srv.status, "NOERROR", "{name}");
            assert_eq!(srv.data(), expected, "{name}");
            let additional: BTreeSet<(String, String)> = srv
                .additional
                .iter()
                .map(|rr| (rr.name.clone(), rr.data.clone()))
                .collect();
            let want: BTreeSet<(String, String)> = [
                ("7f000001.addr.registry.", "127.0.0.1"),
                ("7f000002.addr.registry.", "127.0.0.2"),
                ("00000000000000000000000000000001.addr.registry.", "::1"),
            ]
            .iter()
            .map(|(n, d)| ((*n).to_owned(), (*d).to_owned()))
            .collect();
            assert_eq!(additional, want, "{name}: the IP targets' addresses");
        }
        // The targets resolve on their own too.
        let target = dig(port, &["7f000002.addr.registry", "A"]).await?;
        assert_eq!(target.data(), set(&["127.0.0.2"]));
        let target = dig(
            port,
            &["00000000000000000000000000000001.addr.registry", "AAAA"],
        )
        .await?;
        assert_eq!(target.data(), set(&["::1"]));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn tags_filter_and_zones_are_preferred_with_a_fallback() {
    let (cluster, port) = start(&[]).await.unwrap();
    must_pass(async {
        let client = cluster.client_for(1);
        let placed = |address: &str, zone: &str, tags: &[&str]| RegisterRequest {
            zone: Some(zone.into()),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            ..instance(address, 80)
        };
        register(
            &client,
            "db",
            "db-1",
            placed("127.0.0.1", "eu-1", &["primary"]),
        )
        .await?;
        register(
            &client,
            "db",
            "db-2",
            placed("127.0.0.2", "eu-1", &["replica"]),
        )
        .await?;
        register(
            &client,
            "db",
            "db-3",
            placed("127.0.0.3", "us-1", &["Replica"]),
        )
        .await?;

        let replicas = dig(port, &["replica.db.service.registry", "A"]).await?;
        assert_eq!(replicas.data(), set(&["127.0.0.2", "127.0.0.3"]));
        let none = dig(port, &["canary.db.service.registry", "A"]).await?;
        assert_eq!(none.status, "NOERROR", "a known service: {none:?}");
        assert!(none.answers.is_empty() && none.authority.len() == 1);

        let eu = dig(port, &["db.service.eu-1.zone.registry", "A"]).await?;
        assert_eq!(eu.data(), set(&["127.0.0.1", "127.0.0.2"]));
        let us = dig(port, &["db.service.US-1.zone.registry", "A"]).await?;
        assert_eq!(us.data(), set(&["127.0.0.3"]));
        // No instance in the zone: all of them.
        let mars = dig(port, &["db.service.mars.zone.registry", "A"]).await?;
        assert_eq!(mars.data(), set(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]));
        // Tag and zone together: the tag first, then the zone among those.
        let eu_replica = dig(port, &["replica.db.service.eu-1.zone.registry", "A"]).await?;
        assert_eq!(eu_replica.data(), set(&["127.0.0.2"]));
        let srv = dig(port, &["_db._tcp.service.us-1.zone.registry", "SRV"]).await?;
        assert_eq!(srv.data(), set(&["1 1 80 7f000003.addr.registry."]));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn unknown_names_are_nxdomain_and_empty_services_noerror_both_with_the_soa() {
    let (cluster, port) = start(&["--dns-domain", "disco.test", "--dns-ttl", "5s"])
        .await
        .unwrap();
    must_pass(async {
        let client = cluster.client_for(1);
        register(&client, "web", "web-1", instance("127.0.0.1", 80)).await?;
        client
            .set_status("web", "web-1", InstanceStatus::Draining)
            .await?;

        for name in [
            "nope.service.disco.test",
            "web.node.disco.test",
            "a.b.web.service.disco.test",
        ] {
            let unknown = dig(port, &[name, "A"]).await?;
            assert_eq!(unknown.status, "NXDOMAIN", "{name}");
            assert!(unknown.answers.is_empty(), "{name}");
            let [soa] = unknown.authority.as_slice() else {
                bail!("{name}: no single SOA: {unknown:?}");
            };
            assert_eq!(
                (soa.name.as_str(), soa.rtype.as_str()),
                ("disco.test.", "SOA")
            );
            assert!(soa.data.ends_with(" 5"), "minimum = --dns-ttl: {soa:?}");
        }
        // The service exists, its one instance is draining: no answer, but no NXDOMAIN.
        let empty = dig(port, &["web.service.disco.test", "A"]).await?;
        assert_eq!(empty.status, "NOERROR");
        assert!(empty.answers.is_empty());
        assert_eq!(empty.authority.len(), 1, "the SOA: {empty:?}");

        let apex = dig(port, &["disco.test", "SOA"]).await?;
        assert_eq!(apex.answers.len(), 1);
        assert_eq!(apex.answers[0].rtype, "SOA");

        // Outside the domain (the default one included): not this server's business.
        for name in ["example.com", "web.service.registry"] {
            let outside = dig(port, &[name, "A"]).await?;
            assert_eq!(outside.status, "REFUSED", "{name}");
            assert!(!outside.flags.contains("aa"), "{name}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn an_instance_that_turns_critical_drops_out_of_the_answers() {
    let (cluster, port) = start(&[]).await.unwrap();
    must_pass(async {
        let client = cluster.client_for(1);
        register(&client, "jobs", "steady", instance("127.0.0.1", 80)).await?;
        let fleeting = RegisterRequest {
            ttl: Some("1s".into()),
            ..instance("127.0.0.2", 80)
        };
        register(&client, "jobs", "fleeting", fleeting).await?;
        let both = dig(port, &["jobs.service.registry", "A"]).await?;
        assert_eq!(both.data(), set(&["127.0.0.1", "127.0.0.2"]));

        // No heartbeat: its lease ends within a second or two and it turns critical.
        wait_until(TIMEOUT, "the critical instance to drop out", || async {
            let a = dig(port, &["jobs.service.registry", "A"]).await?;
            ensure!(a.data() == set(&["127.0.0.1"]), "answers {:?}", a.data());
            let srv = dig(port, &["jobs.service.registry", "SRV"]).await?;
            ensure!(srv.answers.len() == 1, "SRV answers {:?}", srv.data());
            Ok(())
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp_or_with_edns() {
    let (cluster, port) = start(&[]).await.unwrap();
    must_pass(async {
        let client = cluster.client_for(1);
        const N: u16 = 40;
        for i in 1..=N {
            let address = format!("127.0.1.{i}");
            register(
                &client,
                "big",
                &format!("big-{i}"),
                instance(&address, 9000 + i),
            )
            .await?;
        }
        let all: BTreeSet<String> = (1..=N).map(|i| format!("127.0.1.{i}")).collect();

        // 40 A records do not fit in 512 bytes: TC, and as many as fit.
        let udp = dig(port, &["big.service.registry", "A", "+noedns", "+ignore"]).await?;
        assert!(udp.truncated(), "TC: {:?}", udp.flags);
        assert!(!udp.tcp);
        assert!(udp.size <= 512, "{} bytes", udp.size);
        assert!(
            !udp.answers.is_empty() && udp.answers.len() < usize::from(N),
            "{} answers",
            udp.answers.len()
        );
        assert!(udp.data().is_subset(&all));

        // The same question over TCP: the whole answer.
        let tcp = dig(port, &["big.service.registry", "A", "+noedns", "+tcp"]).await?;
        assert!(tcp.tcp && !tcp.truncated(), "{:?}", tcp.flags);
        assert_eq!(tcp.data(), all);
        // dig on its own retries a truncated answer over TCP.
        let retried = dig(port, &["big.service.registry", "A", "+noedns"]).await?;
        assert!(retried.tcp && !retried.truncated());
        assert_eq!(retried.data(), all);

        // A 4096-byte EDNS buffer holds it over UDP.
        let edns = dig(
            port,
            &["big.service.registry", "A", "+bufsize=4096", "+ignore"],
        )
        .await?;
        assert!(!edns.tcp && !edns.truncated(), "{:?}", edns.flags);
        assert!(edns.size > 512, "{} bytes", edns.size);
        assert_eq!(edns.data(), all);

        // SRV with its additional section over 1232 bytes (dig's default EDNS buffer):
        // the additional records give way first, TC only once the answers do not fit.
        let srv = dig(port, &["big.service.registry", "SRV", "+ignore"]).await?;
        assert!(
            srv.truncated() && srv.size <= 1232,
            "{:?}, {} bytes",
            srv.flags,
            srv.size
        );
        assert!(srv.additional.is_empty());
        let srv = dig(port, &["big.service.registry", "SRV", "+tcp"]).await?;
        assert!(!srv.truncated());
        assert_eq!(srv.answers.len(), usize::from(N));
        assert_eq!(srv.additional.len(), usize::from(N));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn with_acls_dns_answers_what_anonymous_callers_may_read() {
    const BOOT: &str = "bootstrap-secret-for-dns-tests";
    let (cluster, port) = start(&[
        "--acl",
        "--acl-anonymous",
        "service:read:web,cluster:read",
        "--acl-bootstrap-token",
        BOOT,
    ])
    .await
    .unwrap();
    must_pass(async {
        let admin = Client::builder([cluster.addr(1)]).token(BOOT).build()?;
        wait_until(
            TIMEOUT,
            "the ACL bootstrap and the registrations",
            || async {
                register(&admin, "web", "web-1", instance("127.0.0.1", 80)).await?;
                register(&admin, "secret", "secret-1", instance("127.0.0.2", 80)).await
            },
        )
        .await?;

        let web = dig(port, &["web.service.registry", "A"]).await?;
        assert_eq!(web.data(), set(&["127.0.0.1"]));
        // Registered, but not readable without a token: as if it did not exist.
        let secret = dig(port, &["secret.service.registry", "A"]).await?;
        assert_eq!(secret.status, "NXDOMAIN");
        assert!(secret.answers.is_empty());
        Ok(())
    })
    .await;
}

#[test]
fn a_dns_port_in_use_stops_the_start_with_a_line_naming_the_flag() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let stderr = tests::start_up_failure(
        &dir.path().join("data"),
        &["--dns-listen".to_owned(), addr.clone()],
    )
    .unwrap();
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("registry-server: error: "), "{stderr}");
    assert!(
        last.contains("--dns-listen") && last.contains(&addr),
        "{stderr}"
    );
}
