//! Tests of the DNS interface's pure parts: the name grammar, answers, fitting answers to
//! the transport.

use std::net::IpAddr;

use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, Query};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::replicated::catalog::InstanceSpec;

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

fn zone() -> Zone {
    Zone {
        domain: parse_domain("registry").unwrap(),
        ttl: 7,
    }
}

fn lookup(text: &str) -> Result<Lookup, NameError> {
    parse(&name(text), &zone().domain)
}

fn service(service: &str, tag: Option<&str>, zone: Option<&str>) -> Result<Lookup, NameError> {
    Ok(Lookup::Service(ServiceQuery {
        service: service.into(),
        tag: tag.map(Into::into),
        zone: zone.map(Into::into),
    }))
}

fn spec(address: &str, port: u16) -> InstanceSpec {
    InstanceSpec {
        address: address.into(),
        port,
        tags: Default::default(),
        meta: Default::default(),
        place: Default::default(),
        weight: 1,
        deregister_after_ms: 60_000,
        checks: Box::default(),
    }
}

fn endpoint(address: &str, port: u16) -> Endpoint {
    Endpoint::of(&spec(address, port), None).unwrap()
}

fn in_zone(mut endpoint: Endpoint, zone: &str) -> Endpoint {
    endpoint.zone = Some(zone.into());
    endpoint
}

/// The answer of [`zone()`] to `qname`/`qtype` when the service (any name) has `found`.
fn answer(qname: &str, qtype: RecordType, found: Option<Vec<Endpoint>>) -> Answer {
    zone().answer(
        &name(qname),
        qtype,
        42,
        |_| found,
        &mut StdRng::seed_from_u64(1),
    )
}

fn ips(records: &[Record]) -> Vec<IpAddr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

fn srvs(records: &[Record]) -> Vec<(u16, u16, u16, String)> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv.priority, srv.weight, srv.port, srv.target.to_ascii())),
            _ => None,
        })
        .collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------

#[test]
fn a_service_name_asks_for_its_instances() {
    assert_eq!(lookup("web.service.registry."), service("web", None, None));
    assert_eq!(lookup("web.service.registry"), service("web", None, None));
    assert_eq!(
        lookup("api-v2.service.registry."),
        service("api-v2", None, None)
    );
}

#[test]
fn names_are_case_insensitive() {
    assert_eq!(lookup("WeB.SERVICE.Registry."), service("web", None, None));
    assert_eq!(
        lookup("V2.Web.Service.eu-1A.ZONE.registry."),
        service("web", Some("v2"), Some("eu-1a"))
    );
    assert_eq!(
        lookup("7F000001.ADDR.registry."),
        Ok(Lookup::Addr(ip("127.0.0.1")))
    );
}

#[test]
fn a_label_before_the_service_is_a_tag() {
    assert_eq!(
        lookup("v2.web.service.registry."),
        service("web", Some("v2"), None)
    );
}

#[test]
fn rfc_2782_names_are_the_service_over_tcp() {
    assert_eq!(
        lookup("_web._tcp.service.registry."),
        service("web", None, None)
    );
    assert_eq!(
        lookup("_web._tcp.service.eu.zone.registry."),
        service("web", None, Some("eu"))
    );
    // Instances declare no protocol: only _tcp is one.
    assert_eq!(
        lookup("_web._udp.service.registry."),
        Err(NameError::Unknown)
    );
    assert_eq!(lookup("_._tcp.service.registry."), Err(NameError::Unknown));
}

#[test]
fn a_zone_after_service_is_preferred() {
    assert_eq!(
        lookup("web.service.eu-1.zone.registry."),
        service("web", None, Some("eu-1"))
    );
    assert_eq!(
        lookup("v1.web.service.eu-1.zone.registry."),
        service("web", Some("v1"), Some("eu-1"))
    );
}

#[test]
fn addr_names_spell_an_ip_in_hex() {
    assert_eq!(
        lookup("0a000107.addr.registry."),
        Ok(Lookup::Addr(ip("10.0.1.7")))
    );
    assert_eq!(
        lookup("20010db8000000000000000000000001.addr.registry."),
        Ok(Lookup::Addr(ip("2001:db8::1")))
    );
    for bad in [
        "7f00000g.addr.registry.",
        "7f0001.addr.registry.",
        "addr.registry.",
        "7f000001.7f000001.addr.registry.",
    ] {
        assert_eq!(lookup(bad), Err(NameError::Unknown), "{bad}");
    }
    // u32::from_str_radix would take a sign.
    assert_eq!(addr_of_hex("+7f00001"), None);
    for ip in [ip("192.168.3.4"), ip("::ffff:1.2.3.4"), ip("fe80::1")] {
        let addr = zone().addr_name(ip).unwrap();
        assert_eq!(parse(&addr, &zone().domain), Ok(Lookup::Addr(ip)));
    }
}

#[test]
fn the_domain_itself_is_the_apex() {
    assert_eq!(lookup("registry."), Ok(Lookup::Apex));
    assert_eq!(lookup("REGISTRY"), Ok(Lookup::Apex));
}

#[test]
fn names_under_the_domain_outside_the_grammar_are_unknown() {
    for unknown in [
        "service.registry.",
        "web.registry.",
        "web.services.registry.",
        "a.b.web.service.registry.",
        "web.service.zone.registry.",
        "service.eu.zone.registry.",
        "web.service.eu.zone.extra.registry.",
        "web.node.registry.",
    ] {
        assert_eq!(lookup(unknown), Err(NameError::Unknown), "{unknown}");
    }
    // A label that is not UTF-8 names nothing here.
    let odd = Name::from_labels([&b"\xff\xfe"[..], b"service", b"registry"]).unwrap();
    assert_eq!(parse(&odd, &zone().domain), Err(NameError::Unknown));
}

#[test]
fn names_outside_the_domain_are_outside() {
    for outside in [
        "example.com.",
        "registry.example.",
        "web.service.registryx.",
        "web.service.",
        ".",
    ] {
        assert_eq!(lookup(outside), Err(NameError::Outside), "{outside}");
    }
}

#[test]
fn a_domain_of_several_labels_works_the_same() {
    let domain = parse_domain("Disco.Example.COM").unwrap();
    assert_eq!(domain.to_ascii(), "disco.example.com.");
    assert_eq!(
        parse(&name("v1.web.service.disco.example.com."), &domain),
        service("web", Some("v1"), None)
    );
    assert_eq!(
        parse(&name("web.service.example.com."), &domain),
        Err(NameError::Outside)
    );
}

#[test]
fn the_domain_flag_is_checked_and_normalised() {
    assert_eq!(parse_domain("registry").unwrap().to_ascii(), "registry.");
    assert_eq!(parse_domain("Registry.").unwrap().to_ascii(), "registry.");
    assert_eq!(
        parse_domain("dc-1.consul").unwrap().to_ascii(),
        "dc-1.consul."
    );
    for bad in [
        "",
        ".",
        "a..b",
        "-a.b",
        "a-.b",
        "a b",
        "a_b",
        "ünï",
        &"a".repeat(64),
        &"abc.".repeat(40),
    ] {
        assert!(parse_domain(bad).is_err(), "{bad:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------

#[test]
fn an_instance_becomes_an_endpoint_with_its_ip_or_host() {
    let v4 = endpoint("10.0.0.7", 80);
    assert_eq!(v4.target, Target::Ip(ip("10.0.0.7")));
    assert_eq!(endpoint("::1", 80).target, Target::Ip(ip("::1")));
    assert_eq!(
        endpoint("db.example.com", 80).target,
        Target::Host(name("db.example.com."))
    );
    let mut heavy = spec("10.0.0.7", 80);
    heavy.weight = 1000;
    assert_eq!(Endpoint::of(&heavy, None).unwrap().weight, 1000);
}

#[test]
fn a_tag_filters_instances_ignoring_case() {
    let mut tagged = spec("10.0.0.1", 80);
    tagged.tags = crate::replicated::intern::tags(["Canary", "v2"]);
    assert!(Endpoint::of(&tagged, Some("canary")).is_some());
    assert!(Endpoint::of(&tagged, Some("v2")).is_some());
    assert!(Endpoint::of(&tagged, Some("v3")).is_none());
    assert!(Endpoint::of(&spec("10.0.0.1", 80), Some("v2")).is_none());
}

#[test]
fn a_zone_is_preferred_and_all_are_the_fallback() {
    let all = vec![
        in_zone(endpoint("10.0.0.1", 80), "eu-1"),
        in_zone(endpoint("10.0.0.2", 80), "US-1"),
        endpoint("10.0.0.3", 80),
    ];
    assert_eq!(prefer_zone(all.clone(), Some("us-1")), vec![all[1].clone()]);
    assert_eq!(prefer_zone(all.clone(), Some("ap-1")), all);
    assert_eq!(prefer_zone(all.clone(), None), all);
}

#[test]
fn a_queries_answer_the_ipv4_instances() {
    let found = vec![
        endpoint("10.0.0.1", 80),
        endpoint("::1", 80),
        endpoint("db.example.com", 80),
        endpoint("10.0.0.2", 81),
    ];
    let a = answer("Web.service.registry.", RecordType::A, Some(found.clone()));
    assert_eq!(a.code, ResponseCode::NoError);
    assert!(a.authoritative);
    let mut got = ips(&a.answers);
    got.sort();
    assert_eq!(got, vec![ip("10.0.0.1"), ip("10.0.0.2")]);
    for record in &a.answers {
        assert_eq!(
            record.name.to_ascii(),
            "Web.service.registry.",
            "the name as asked"
        );
        assert_eq!(record.ttl, 7);
    }
    assert!(a.authorities.is_empty() && a.additionals.is_empty());

    let aaaa = answer("web.service.registry.", RecordType::AAAA, Some(found));
    assert_eq!(ips(&aaaa.answers), vec![ip("::1")]);
}

#[test]
fn two_instances_on_one_address_are_one_record() {
    let found = vec![endpoint("10.0.0.1", 80), endpoint("10.0.0.1", 81)];
    let a = answer("web.service.registry.", RecordType::A, Some(found.clone()));
    assert_eq!(ips(&a.answers), vec![ip("10.0.0.1")]);
    let srv = answer("web.service.registry.", RecordType::SRV, Some(found));
    assert_eq!(srv.answers.len(), 2, "two ports, two SRV records");
    assert_eq!(ips(&srv.additionals), vec![ip("10.0.0.1")], "one target");
}

#[test]
fn srv_answers_carry_weight_port_and_a_resolvable_target() {
    let mut heavy = endpoint("10.0.0.1", 8080);
    heavy.weight = 10;
    let found = vec![
        heavy,
        endpoint("::1", 8443),
        endpoint("db.example.com", 5432),
    ];
    let srv = answer("_web._tcp.service.registry.", RecordType::SRV, Some(found));
    let mut got = srvs(&srv.answers);
    got.sort();
    assert_eq!(
        got,
        vec![
            (1, 1, 5432, "db.example.com.".into()),
            (
                1,
                1,
                8443,
                "00000000000000000000000000000001.addr.registry.".into()
            ),
            (1, 10, 8080, "0a000001.addr.registry.".into()),
        ]
    );
    // Each IP target's address is in the additional section, under the target's name;
    // a host name target is the host's own business.
    let mut extra: Vec<(String, IpAddr)> = srv
        .additionals
        .iter()
        .map(|r| (r.name.to_ascii(), ips(std::slice::from_ref(r))[0]))
        .collect();
    extra.sort();
    assert_eq!(
        extra,
        vec![
            (
                "00000000000000000000000000000001.addr.registry.".into(),
                ip("::1")
            ),
            ("0a000001.addr.registry.".into(), ip("10.0.0.1")),
        ]
    );
}

#[test]
fn answers_are_shuffled() {
    let found: Vec<Endpoint> = (1..=5)
        .map(|i| endpoint(&format!("10.0.0.{i}"), 80))
        .collect();
    let firsts: std::collections::HashSet<IpAddr> = (0..64)
        .map(|seed| {
            let a = zone().answer(
                &name("web.service.registry."),
                RecordType::A,
                1,
                |_| Some(found.clone()),
                &mut StdRng::seed_from_u64(seed),
            );
            assert_eq!(a.answers.len(), 5);
            ips(&a.answers)[0]
        })
        .collect();
    assert_eq!(firsts.len(), 5, "every instance comes first sometimes");
}

#[test]
fn an_unknown_service_is_nxdomain_with_the_soa() {
    let a = answer("web.service.registry.", RecordType::A, None);
    assert_eq!(a.code, ResponseCode::NXDomain);
    assert!(a.authoritative && a.answers.is_empty());
    assert_eq!(a.authorities.len(), 1);
    let RData::SOA(soa) = &a.authorities[0].data else {
        panic!("not an SOA: {:?}", a.authorities[0]);
    };
    assert_eq!(a.authorities[0].name.to_ascii(), "registry.");
    assert_eq!((soa.serial, soa.minimum), (42, 7));
}

#[test]
fn a_name_outside_the_grammar_is_nxdomain_without_asking_the_catalog() {
    let a = zone().answer(
        &name("web.node.registry."),
        RecordType::A,
        1,
        |_| panic!("asked the catalog"),
        &mut StdRng::seed_from_u64(1),
    );
    assert_eq!(a.code, ResponseCode::NXDomain);
    assert_eq!(a.authorities.len(), 1);
}

#[test]
fn a_service_without_passing_instances_is_noerror_without_answers() {
    for (qname, qtype, found) in [
        ("web.service.registry.", RecordType::A, vec![]),
        (
            "web.service.registry.",
            RecordType::AAAA,
            vec![endpoint("10.0.0.1", 80)],
        ),
        (
            "web.service.registry.",
            RecordType::TXT,
            vec![endpoint("10.0.0.1", 80)],
        ),
        (
            "web.service.registry.",
            RecordType::A,
            vec![endpoint("db.example.com", 80)],
        ),
    ] {
        let a = answer(qname, qtype, Some(found));
        assert_eq!(a.code, ResponseCode::NoError, "{qtype}");
        assert!(a.answers.is_empty(), "{qtype}");
        assert_eq!(a.authorities.len(), 1, "{qtype}: the SOA");
    }
}

#[test]
fn a_name_outside_the_domain_is_refused() {
    let a = answer("example.com.", RecordType::A, None);
    assert_eq!(a.code, ResponseCode::Refused);
    assert!(!a.authoritative);
    assert!(a.answers.is_empty() && a.authorities.is_empty());
}

#[test]
fn the_apex_has_an_soa_and_addr_names_their_address() {
    let soa = answer("registry.", RecordType::SOA, None);
    assert_eq!(soa.code, ResponseCode::NoError);
    assert!(matches!(soa.answers[0].data, RData::SOA(_)));
    let a = answer("registry.", RecordType::A, None);
    assert!(a.answers.is_empty() && a.authorities.len() == 1);

    let addr = answer("0a000001.addr.registry.", RecordType::A, None);
    assert_eq!(ips(&addr.answers), vec![ip("10.0.0.1")]);
    let wrong_family = answer("0a000001.addr.registry.", RecordType::AAAA, None);
    assert_eq!(wrong_family.code, ResponseCode::NoError);
    assert!(wrong_family.answers.is_empty());
}

// ---------------------------------------------------------------------------------------
// Fitting to the transport
// ---------------------------------------------------------------------------------------

/// The question section of a request for `qname`/`qtype`, as the server reads it.
fn query(qname: &str, qtype: RecordType) -> Queries {
    query_of(&name(qname), qtype)
}

fn query_of(qname: &Name, qtype: RecordType) -> Queries {
    let mut message = Message::query();
    message.add_query(Query::query(qname.clone(), qtype));
    let bytes = message.to_vec().unwrap();
    let mut decoder = BinDecoder::new(&bytes);
    Header::read(&mut decoder).unwrap();
    Queries::read(&mut decoder, 1).unwrap()
}

fn many(n: u8) -> Vec<Endpoint> {
    (1..=n)
        .map(|i| endpoint(&format!("10.0.{i}.{i}"), 8000 + u16::from(i)))
        .collect()
}

/// Whether the server would send `answer` to `query` whole in `limit` bytes: what
/// hickory does with it, within that limit.
fn fits(answer: &Answer, query: &Queries, edns: Option<&Edns>, limit: u16) -> bool {
    let mut sent = Vec::new();
    let mut encoder = BinEncoder::new(&mut sent);
    encoder.set_max_size(limit);
    MessageResponseBuilder::new(query, edns)
        .build(
            Metadata::new(1, MessageType::Response, OpCode::Query),
            &answer.answers,
            &answer.authorities,
            std::iter::empty(),
            &answer.additionals,
        )
        .destructive_emit(&mut encoder)
        .is_ok_and(|header| !header.truncation)
}

#[test]
fn the_opt_record_takes_what_fit_leaves_for_it() {
    let mut edns = Edns::new();
    edns.set_max_payload(4096).set_dnssec_ok(true);
    let mut bytes = Vec::new();
    BinEncoder::new(&mut bytes)
        .emit_all(std::iter::once(&Record::from(&edns)))
        .unwrap();
    assert_eq!(bytes.len(), usize::from(OPT_LEN));
}

#[test]
fn the_size_limit_follows_the_transport_and_edns() {
    let mut edns = Edns::new();
    assert_eq!(size_limit(Protocol::Udp, None), 512);
    edns.set_max_payload(4096);
    assert_eq!(size_limit(Protocol::Udp, Some(&edns)), 4096);
    edns.set_max_payload(1232);
    assert_eq!(size_limit(Protocol::Udp, Some(&edns)), 1232);
    edns.set_max_payload(100);
    assert_eq!(size_limit(Protocol::Udp, Some(&edns)), 512);
    edns.set_max_payload(65_000);
    assert_eq!(size_limit(Protocol::Udp, Some(&edns)), MAX_UDP_PAYLOAD);
    assert_eq!(size_limit(Protocol::Tcp, None), u16::MAX);
}

#[test]
fn an_answer_that_fits_is_left_alone() {
    let q = query("web.service.registry.", RecordType::SRV);
    let mut a = answer("web.service.registry.", RecordType::SRV, Some(many(3)));
    let before = a.clone();
    fit(&mut a, &q, None, 512);
    assert_eq!(a, before);
}

#[test]
fn too_many_answers_over_plain_udp_are_cut_with_tc() {
    let q = query("web.service.registry.", RecordType::A);
    let mut a = answer("web.service.registry.", RecordType::A, Some(many(60)));
    assert!(!fits(&a, &q, None, 512));
    fit(&mut a, &q, None, 512);
    assert!(a.truncated);
    assert!(
        !a.answers.is_empty() && a.answers.len() < 60,
        "{}",
        a.answers.len()
    );
    assert!(fits(&a, &q, None, 512));
    // One more answer would not have fitted.
    let full = answer("web.service.registry.", RecordType::A, Some(many(60)));
    let mut one_more = a.clone();
    one_more.answers.push(full.answers[a.answers.len()].clone());
    assert!(!fits(&one_more, &q, None, 512));
}

#[test]
fn a_larger_edns_buffer_carries_the_whole_answer() {
    let q = query("web.service.registry.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    let mut a = answer("web.service.registry.", RecordType::A, Some(many(60)));
    fit(&mut a, &q, Some(&edns), 4096);
    assert!(!a.truncated);
    assert_eq!(a.answers.len(), 60);
}

#[test]
fn additional_records_go_first_and_without_tc() {
    let q = query("web.service.registry.", RecordType::SRV);
    // SRV targets are never compressed (RFC 2782): 10 answers fit in 512 bytes, their
    // additional records do not.
    let mut a = answer("web.service.registry.", RecordType::SRV, Some(many(10)));
    let all = a.clone();
    assert!(!fits(&a, &q, None, 512));
    let without_additionals = Answer {
        additionals: vec![],
        ..all.clone()
    };
    assert!(
        fits(&without_additionals, &q, None, 512),
        "the test needs SRV answers that fit alone"
    );
    fit(&mut a, &q, None, 512);
    assert!(!a.truncated);
    assert_eq!(a.answers, all.answers);
    assert!(a.additionals.len() < all.additionals.len());
    assert!(fits(&a, &q, None, 512));

    // With more instances the answers do not fit either: TC, no additional records.
    let mut big = answer("web.service.registry.", RecordType::SRV, Some(many(40)));
    fit(&mut big, &q, None, 512);
    assert!(big.truncated && big.additionals.is_empty() && !big.answers.is_empty());
    assert!(fits(&big, &q, None, 512));
}

#[test]
fn hickory_sends_a_fitted_answer_as_it_is() {
    // The server hands the fitted answer to hickory, which encodes it within the same
    // limit and truncates (with TC) whatever does not fit: it must find nothing to cut,
    // and a truncated answer must hold as many answers as fit.
    for qtype in [RecordType::A, RecordType::SRV] {
        for n in [1, 9, 10, 11, 30, 60, 200] {
            for (limit, with_edns) in [(512, false), (512, true), (1232, true), (4096, true)] {
                let q = query("Web.Service.Registry.", qtype);
                let mut edns = Edns::new();
                edns.set_max_payload(limit);
                let edns = with_edns.then_some(edns);
                let mut a = answer("Web.Service.Registry.", qtype, Some(many(n)));
                fit(&mut a, &q, edns.as_ref(), limit);

                let mut sent = Vec::new();
                let mut encoder = BinEncoder::new(&mut sent);
                encoder.set_max_size(limit);
                let header = MessageResponseBuilder::new(&q, edns.as_ref())
                    .build(
                        Metadata::new(1, MessageType::Response, OpCode::Query),
                        &a.answers,
                        &a.authorities,
                        std::iter::empty(),
                        &a.additionals,
                    )
                    .destructive_emit(&mut encoder)
                    .unwrap();
                let what = format!("{qtype} x{n} in {limit}");
                assert!(!header.truncation, "{what}: hickory cut it again");
                assert_eq!(header.counts().answers as usize, a.answers.len(), "{what}");
                assert_eq!(
                    header.counts().additionals as usize,
                    a.additionals.len() + usize::from(with_edns),
                    "{what}"
                );
                if a.truncated {
                    let mut one_more = a.clone();
                    let full = answer("Web.Service.Registry.", qtype, Some(many(n)));
                    one_more.answers.push(full.answers[a.answers.len()].clone());
                    assert!(
                        !fits(&one_more, &q, edns.as_ref(), limit),
                        "{what}: room for more"
                    );
                }
            }
        }
    }
}

#[test]
fn no_name_makes_a_panic() {
    // Random labels of random bytes, lengths and counts, under the domain and not.
    let mut rng = StdRng::seed_from_u64(7);
    let alphabet = b"abcdefz0189_-.*\xff\x00ADDRSERVICEZONETCP";
    for _ in 0..5_000 {
        let mut labels: Vec<Vec<u8>> = (0..rng.random_range(0..6))
            .map(|_| {
                (0..rng.random_range(1..12))
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect()
            })
            .collect();
        let words: [&[u8]; 6] = [
            b"service",
            b"zone",
            b"addr",
            b"_tcp",
            b"registry",
            b"7f000001",
        ];
        for _ in 0..rng.random_range(0..4) {
            let at = rng.random_range(0..=labels.len());
            labels.insert(at, words[rng.random_range(0..words.len())].to_vec());
        }
        if rng.random_bool(0.7) {
            labels.push(b"registry".to_vec());
        }
        let Ok(qname) = Name::from_labels(labels.iter().map(Vec::as_slice)) else {
            continue;
        };
        for qtype in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::SRV,
            RecordType::ANY,
        ] {
            let mut a = zone().answer(&qname, qtype, 1, |_| Some(many(3)), &mut rng);
            let q = query_of(&qname, qtype);
            fit(&mut a, &q, None, 512);
        }
    }
}
