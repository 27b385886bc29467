//! Each pattern (with its lengths) and its check agree: on hand-picked samples, and on
//! thousands of seeded mutations of them.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use regex::Regex;

use super::*;

/// What the document allows for `rule`.
fn schema_allows(rule: &StringRule, re: Option<&Regex>, s: &str) -> bool {
    let len = s.chars().count();
    len >= rule.min_length
        && rule.max_length.is_none_or(|max| len <= max)
        && re.is_none_or(|re| re.is_match(s))
}

/// Characters mutations draw from: the interesting ones for every rule.
const ALPHABET: &[char] = &[
    'a', 'Z', '0', '9', 'f', 'F', 'g', '.', '_', '-', ':', '@', ' ', '/', '\u{0}', '\n', '\u{7f}',
    '\u{9f}', '\u{a0}', 'é', '日', '😀', 's', 'm', 'h', 'd', 'M', 'µ', '+', '%',
];

fn mutate(rng: &mut StdRng, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for _ in 0..rng.random_range(1..=3) {
        let c = ALPHABET[rng.random_range(0..ALPHABET.len())];
        let at = rng.random_range(0..=chars.len());
        match rng.random_range(0..4) {
            0 if at < chars.len() => chars[at] = c,
            1 if at < chars.len() => {
                chars.remove(at);
            }
            2 => {
                // Repeat a piece, to reach the length limits.
                let piece = chars[..at].to_vec();
                chars.extend(piece.iter().cycle().take(rng.random_range(0..300)));
            }
            _ => chars.insert(at, c),
        }
    }
    chars.into_iter().collect()
}

/// Asserts `rule` and `check` agree on `samples` and on mutations of them, and that both
/// answers occur (so the comparison means something).
fn agree(rule: StringRule, check: impl Fn(&str) -> bool, samples: &[&str]) {
    let re = rule.pattern.map(|p| Regex::new(p).unwrap());
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let (mut accepted, mut refused) = (0, 0);
    let mut test = |s: &str| {
        let expected = schema_allows(&rule, re.as_ref(), s);
        assert_eq!(
            check(s),
            expected,
            "{s:?}: the check says {}, the schema {expected}",
            !expected
        );
        if expected {
            accepted += 1
        } else {
            refused += 1
        }
    };
    for sample in samples {
        test(sample);
    }
    for _ in 0..4000 {
        let base = samples[rng.random_range(0..samples.len())];
        test(&mutate(&mut rng, base));
    }
    assert!(
        accepted > 20 && refused > 20,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn names_follow_their_pattern() {
    let samples = [
        "web-api.v2_x",
        "a",
        "9",
        "",
        "-web",
        "web api",
        "web/api",
        "é",
        &"a".repeat(128),
        &"a".repeat(129),
    ];
    agree(NAME, |s| service_name(s).is_ok(), &samples);
    agree(NAME, |s| lock_name(s).is_ok(), &samples);
    agree(NAME, |s| meta_key(s).is_ok(), &samples);
    agree(NAME, |s| zone(s).is_ok() && region(s).is_ok(), &samples);
    agree(
        INSTANCE_ID,
        |s| instance_id(s).is_ok(),
        &[
            "10.0.0.1:8080",
            "web@host-1",
            "a\u{0}b",
            ":x",
            "x:",
            &"b".repeat(128),
        ],
    );
}

#[test]
fn acl_prefixes_and_descriptions_follow_their_patterns() {
    let rule = |prefix: &str| crate::acl::Rule {
        resource: crate::acl::Resource::Service,
        prefix: prefix.to_owned(),
        access: crate::acl::Access::Read,
    };
    agree(
        ACL_PREFIX,
        |s| acl_rule(&rule(s)).is_ok(),
        &[
            "",
            "web",
            "web-",
            "a.b_c",
            "-x",
            "a b",
            "é",
            &"p".repeat(128),
            &"p".repeat(129),
        ],
    );
    let token = |description: &str| crate::acl::CreateTokenRequest {
        description: description.to_owned(),
        ..Default::default()
    };
    agree(
        DESCRIPTION,
        |s| create_token(&token(s)).is_ok(),
        &[
            "",
            "ci deploys",
            "a\u{7}b",
            "tab\there",
            &"d".repeat(256),
            &"d".repeat(257),
        ],
    );
}

#[test]
fn a_rule_reads_as_it_is_written() {
    use crate::acl::{Access, Resource, Rule};
    let rule: Rule = "service:write:web".parse().unwrap();
    assert_eq!(
        rule,
        Rule {
            resource: Resource::Service,
            prefix: "web".into(),
            access: Access::Write
        }
    );
    assert_eq!(rule.to_string(), "service:write:web");
    let all: Rule = "cluster:read".parse().unwrap();
    assert_eq!(
        (all.prefix.as_str(), all.to_string()),
        ("", "cluster:read".to_owned())
    );
    for bad in [
        "service",
        "services:read",
        "service:admin",
        "service:read:-x",
        "",
    ] {
        assert!(bad.parse::<Rule>().is_err(), "{bad:?} was read");
    }
}

#[test]
fn addresses_follow_their_pattern() {
    let samples = [
        "10.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "1::8",
        "1:2:3:4:5:6:7:8:9",
        "1::2::3",
        "12345::",
        "::ffff:10.0.0.1",
        "fe80::1%eth0",
        "api.example.internal",
        "localhost",
        "a-b.c",
        "",
        "http://x",
        "a b",
        "-a.b",
        "a-.b",
        "a..b",
        "a.b.",
        "x:80",
        &"a".repeat(63),
        &"a".repeat(64),
        &["a".repeat(63).as_str(); 4].join("."),
        &["b".repeat(62).as_str(); 4].join("."),
    ];
    agree(ADDRESS, |s| address(s).is_ok(), &samples);
}

#[test]
fn free_text_follows_its_pattern() {
    let samples = [
        "v1",
        "a b/c é 日",
        "",
        "x\u{0}",
        "tab\there",
        "\u{85}",
        "\u{a0}",
    ];
    agree(TAG, |s| tags(&[s.to_owned()]).is_ok(), &samples);
    let meta_value = |s: &str| meta(&BTreeMap::from([("k".to_owned(), s.to_owned())])).is_ok();
    agree(META_VALUE, meta_value, &samples);
    agree(HOLDER, |s| holder(s).is_ok(), &samples);
    agree(
        CANDIDATE,
        |s| candidate(s).is_ok(),
        &[
            "10.0.0.1:80",
            "",
            "\u{0}",
            &"é".repeat(4096),
            &"é".repeat(4097),
        ],
    );
}

#[test]
fn durations_follow_their_pattern() {
    let samples = [
        "15s", "500ms", "1m30s", "1m 30s", "2h 37min", "7days", "1µs", "0s", "15", "", " 2m",
        "2m ", "1m  30s", "1.5s", "-5s", "15 s", "5 ", "soon", "1xs",
    ];
    agree(DURATION, is_duration_syntax, &samples);
    // What the pattern allows, humantime reads (short of overflow).
    let re = Regex::new(DURATION_PATTERN).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut read = 0;
    for _ in 0..2000 {
        let base = samples[rng.random_range(0..8)];
        let s = mutate(&mut rng, base);
        if re.is_match(&s) && s.len() < 12 {
            assert!(crate::parse_duration(&s).is_ok(), "{s:?}");
            read += 1;
        }
    }
    assert!(read > 50, "only {read} durations read");
    // `format_duration` writes what the pattern allows.
    for ms in [
        0,
        1,
        999,
        1000,
        1500,
        61_000,
        3_600_000,
        90_061_001,
        7 * 86_400_000,
    ] {
        let text = crate::format_duration(Duration::from_millis(ms));
        assert!(re.is_match(&text), "{text:?}");
    }
}

#[test]
fn member_addresses_follow_their_pattern() {
    agree(
        MEMBER_ADDR,
        |s| member_addr(s).is_ok(),
        &[
            "10.0.0.1:7000",
            "node-1:0",
            "x:65535",
            "x:65536",
            "x:+80",
            "x:0080",
            "[::1]:80",
            ":80",
            "x:",
            "x",
            "a\nb:1",
        ],
    );
}

#[test]
fn ranges_and_numbers() {
    assert!(duration("ttl", "1s", LEASE_TTL).is_ok());
    assert!(duration("ttl", "24h", LEASE_TTL).is_ok());
    assert!(matches!(
        duration("ttl", "999ms", LEASE_TTL),
        Err(Invalid::Duration(_))
    ));
    assert!(matches!(
        duration("ttl", "24h 1ms", LEASE_TTL),
        Err(Invalid::Duration(_))
    ));
    assert!(duration("wait", "100days", BLOCKING_WAIT).is_ok());
    assert!(port(0).is_err() && port(1).is_ok() && port(u16::MAX).is_ok());
    assert!(weight(MAX_WEIGHT).is_ok() && weight(MAX_WEIGHT + 1).is_err());
    assert!(tags(&vec!["x".to_owned(); MAX_TAGS]).is_ok());
    assert!(tags(&vec!["x".to_owned(); MAX_TAGS + 1]).is_err());
    let pairs = |n: usize| (0..n).map(|i| (format!("k{i}"), String::new())).collect();
    assert!(meta(&pairs(MAX_META)).is_ok() && meta(&pairs(MAX_META + 1)).is_err());
    assert_eq!(settable_status(InstanceStatus::Draining), Ok(true));
    assert!(settable_status(InstanceStatus::Critical).is_err());
    assert!(lease_or_ttl(true, true, false).is_err());
    assert!(lease_or_ttl(false, false, true).is_err());
    assert!(lease_or_ttl(false, false, false).is_ok());
    assert!(member_id(0).is_err() && member_id(1).is_ok());
}
