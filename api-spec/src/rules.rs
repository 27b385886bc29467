//! What the server accepts from a client, in one place: the limits as constants, the
//! shapes as JSON Schema (ECMA-262) patterns, and pure checks that accept exactly what
//! the patterns match. The server checks its input with these functions
//! (`registry-server/src/validate.rs`); the OpenAPI document (`openapi.rs`) writes the
//! same constants and patterns into its schemas; the tests below check, on fixed and on
//! random samples, that each pattern and its check agree.
//!
//! Patterns use only what ECMA-262 and the `regex` crate read alike: anchors, classes,
//! `(?:...)`, alternation and counted repetition, with `\uXXXX` escapes.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use crate::{
    InstanceStatus, MAX_CANDIDATE_LEN, MAX_DEREGISTER_AFTER, MAX_HOLDER_LEN, MAX_LEASE_TTL,
    MAX_LOCK_DELAY, MAX_LOCK_WAIT, MIN_LEASE_TTL,
};

/// Longest service name, instance id, lock or election name, tag, zone, region or meta
/// key, in characters.
pub const MAX_NAME_LEN: usize = 128;
/// Most tags on one instance.
pub const MAX_TAGS: usize = 64;
/// Most meta pairs on one instance.
pub const MAX_META: usize = 64;
/// Longest meta value, in characters (an empty value is allowed).
pub const MAX_META_VALUE_LEN: usize = 512;
/// Largest instance weight (0 means "no traffic").
pub const MAX_WEIGHT: u32 = 1000;
/// An instance's weight when the registration gives none.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Smallest port an instance may register (0 is nobody's port).
pub const MIN_PORT: u16 = 1;
/// Longest `address`: the longest DNS name.
pub const MAX_ADDRESS_LEN: usize = 253;
/// Smallest node id (0 means "none" to openraft's tooling).
pub const MIN_NODE_ID: u64 = 1;

/// Service, lock and election names, meta keys, zones and regions: letters, digits,
/// `.`, `_`, `-`, starting with a letter or digit ([`MAX_NAME_LEN`] at most).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]*$";

/// Instance ids: a name that may also hold `:` and `@` (so `host:port` works).
pub const INSTANCE_ID_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._:@-]*$";

/// Free text (tags, meta values, holders): anything without control characters
/// (Unicode category Cc: U+0000 to U+001F and U+007F to U+009F).
pub const TEXT_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// An instance's `address`: a DNS host name (dot-separated labels of letters, digits and
/// `-`, 1 to 63 characters each, not starting or ending with `-`; dotted IPv4 addresses
/// are such names), or an IPv6 address in hex form (without an embedded IPv4 part or a
/// zone), [`MAX_ADDRESS_LEN`] characters at most.
pub const ADDRESS_PATTERN: &str = concat!(
    "^(?:",
    // A host name: labels joined by dots.
    "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
    // IPv6: eight groups, or fewer around one `::`.
    "|(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}",
    "|(?:[0-9A-Fa-f]{1,4}:){1,7}:",
    "|(?:[0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}",
    "|(?:[0-9A-Fa-f]{1,4}:){1,5}(?::[0-9A-Fa-f]{1,4}){1,2}",
    "|(?:[0-9A-Fa-f]{1,4}:){1,4}(?::[0-9A-Fa-f]{1,4}){1,3}",
    "|(?:[0-9A-Fa-f]{1,4}:){1,3}(?::[0-9A-Fa-f]{1,4}){1,4}",
    "|(?:[0-9A-Fa-f]{1,4}:){1,2}(?::[0-9A-Fa-f]{1,4}){1,5}",
    "|[0-9A-Fa-f]{1,4}:(?::[0-9A-Fa-f]{1,4}){1,6}",
    "|:(?:(?::[0-9A-Fa-f]{1,4}){1,7}|:)",
    ")$"
);

/// A TCP or gRPC check's target as the document describes it: a host name (labels as in
/// [`ADDRESS_PATTERN`]) and a port 1 to 65535. [`host_port`] also takes an IPv6 address
/// in brackets.
pub const HOST_PORT_PATTERN: &str = concat!(
    "^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
    ":(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
);

/// An HTTP check's URL as the document describes it: `http` or `https`, a host name whose
/// labels start with a letter (or a dotted IPv4 address), an optional port, path and
/// query. The server takes any `http(s)` URL without user info; this is the part a
/// pattern can say safely.
pub const CHECK_URL_PATTERN: &str = concat!(
    "^https?://(?:",
    "[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\\.[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
    "|(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
    ")(?::[1-9][0-9]{0,3})?(?:/[A-Za-z0-9._~/-]*)?(?:\\?[A-Za-z0-9._~=&-]*)?$"
);

/// An HTTP header name: a token (RFC 9110).
pub const HEADER_NAME_PATTERN: &str = "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$";

/// An HTTP header value: printable ASCII and spaces.
pub const HEADER_VALUE_PATTERN: &str = "^[ -~]*$";

/// The unit names a duration may use (humantime's), longest first.
pub const DURATION_UNITS: [&str; 40] = [
    "nanos", "nsec", "ns", "usec", "us", "µs", "millis", "msec", "ms", "seconds", "second", "secs",
    "sec", "s", "minutes", "minute", "mins", "min", "m", "hours", "hour", "hrs", "hr", "h", "days",
    "day", "d", "weeks", "week", "wks", "wk", "w", "months", "month", "M", "years", "year", "yrs",
    "yr", "y",
];

/// A duration: whole numbers each followed by a unit, optionally one space between
/// them: `"15s"`, `"500ms"`, `"1m30s"`, `"1m 30s"` (what [`crate::format_duration`]
/// writes). No bare numbers, signs, fractions or other spaces.
pub const DURATION_PATTERN: &str = concat!(
    "^[0-9]+(?:nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)",
    "(?: ?[0-9]+(?:nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y))*$"
);

/// A cluster member's address: `host:port`, with anything but nothing before the last
/// `:` and a port number after it (an optional `+` and leading zeros are read too).
pub const MEMBER_ADDR_PATTERN: &str = concat!(
    "^[\\s\\S]+:\\+?0*(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}",
    "|[1-5][0-9]{4}|[0-9]{1,4})$"
);

/// What a string field's schema says: its pattern and its length in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StringRule {
    pub pattern: Option<&'static str>,
    pub min_length: usize,
    pub max_length: Option<usize>,
}

/// Service, lock and election names, meta keys, zones, regions ([`NAME_PATTERN`]).
pub const NAME: StringRule = StringRule {
    pattern: Some(NAME_PATTERN),
    min_length: 1,
    max_length: Some(MAX_NAME_LEN),
};
/// Instance ids ([`INSTANCE_ID_PATTERN`]).
pub const INSTANCE_ID: StringRule = StringRule {
    pattern: Some(INSTANCE_ID_PATTERN),
    min_length: 1,
    max_length: Some(MAX_NAME_LEN),
};
/// A Consul check id of a service instance: `service:<instance id>`.
pub const CHECK_ID: StringRule = StringRule {
    pattern: Some("^service:[A-Za-z0-9][A-Za-z0-9._:@-]*$"),
    min_length: 9,
    max_length: Some(MAX_NAME_LEN + 8),
};
/// An instance's `address` ([`ADDRESS_PATTERN`]).
pub const ADDRESS: StringRule = StringRule {
    pattern: Some(ADDRESS_PATTERN),
    min_length: 1,
    max_length: Some(MAX_ADDRESS_LEN),
};
/// One of an instance's tags.
pub const TAG: StringRule = StringRule {
    pattern: Some(TEXT_PATTERN),
    min_length: 1,
    max_length: Some(MAX_NAME_LEN),
};
/// A meta value.
pub const META_VALUE: StringRule = StringRule {
    pattern: Some(TEXT_PATTERN),
    min_length: 0,
    max_length: Some(MAX_META_VALUE_LEN),
};
/// An acquire's `holder`.
pub const HOLDER: StringRule = StringRule {
    pattern: Some(TEXT_PATTERN),
    min_length: 0,
    max_length: Some(MAX_HOLDER_LEN),
};
/// An election value: any characters.
pub const CANDIDATE: StringRule = StringRule {
    pattern: None,
    min_length: 1,
    max_length: Some(MAX_CANDIDATE_LEN),
};
/// A duration string ([`DURATION_PATTERN`]); its range is per field ([`DurationRange`]).
pub const DURATION: StringRule = StringRule {
    pattern: Some(DURATION_PATTERN),
    min_length: 2,
    max_length: None,
};
/// A cluster member's `addr` ([`MEMBER_ADDR_PATTERN`]).
pub const MEMBER_ADDR: StringRule = StringRule {
    pattern: Some(MEMBER_ADDR_PATTERN),
    min_length: 3,
    max_length: None,
};

/// An ACL rule's `prefix`: the start of a name ([`NAME_PATTERN`]), or empty for all.
pub const ACL_PREFIX_PATTERN: &str = "^(?:[A-Za-z0-9][A-Za-z0-9._-]*)?$";
/// An ACL rule's `prefix` ([`ACL_PREFIX_PATTERN`]).
pub const ACL_PREFIX: StringRule = StringRule {
    pattern: Some(ACL_PREFIX_PATTERN),
    min_length: 0,
    max_length: Some(MAX_NAME_LEN),
};
/// A token's `description`.
pub const DESCRIPTION: StringRule = StringRule {
    pattern: Some(TEXT_PATTERN),
    min_length: 0,
    max_length: Some(crate::acl::MAX_DESCRIPTION_LEN),
};

/// The range a duration field accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Duration,
    /// `None`: no upper bound beyond what a duration can hold.
    pub max: Option<Duration>,
}

/// A lease's `ttl` (leases, instances' own leases, locks' and candidacies' own leases).
pub const LEASE_TTL: DurationRange = DurationRange {
    min: MIN_LEASE_TTL,
    max: Some(MAX_LEASE_TTL),
};
/// An instance's `deregister_after`.
pub const DEREGISTER_AFTER: DurationRange = DurationRange {
    min: Duration::ZERO,
    max: Some(MAX_DEREGISTER_AFTER),
};
/// The `wait` of an acquire or campaign.
pub const LOCK_WAIT: DurationRange = DurationRange {
    min: Duration::ZERO,
    max: Some(MAX_LOCK_WAIT),
};
/// A token's `ttl`.
pub const TOKEN_TTL: DurationRange = DurationRange {
    min: crate::acl::MIN_TOKEN_TTL,
    max: Some(crate::acl::MAX_TOKEN_TTL),
};
/// An acquire's `lock_delay`.
pub const LOCK_DELAY: DurationRange = DurationRange {
    min: Duration::ZERO,
    max: Some(MAX_LOCK_DELAY),
};
/// A blocking query's `wait`: any length; the server caps it at
/// [`crate::MAX_BLOCKING_WAIT`] rather than refusing it.
pub const BLOCKING_WAIT: DurationRange = DurationRange {
    min: Duration::ZERO,
    max: None,
};

/// Why input was refused; each is a 400 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// A field's value is not acceptable (`invalid_argument`).
    Argument(String),
    /// A duration could not be read or is out of range (`invalid_duration`).
    Duration(String),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Argument(m) | Invalid::Duration(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Invalid {}

fn arg(message: impl Into<String>) -> Invalid {
    Invalid::Argument(message.into())
}

/// Letters, digits and `extra`, starting with a letter or digit, 1 to [`MAX_NAME_LEN`]
/// long ([`NAME_PATTERN`], [`INSTANCE_ID_PATTERN`]).
fn name(what: &str, value: &str, extra: &[char]) -> Result<(), Invalid> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || extra.contains(&c);
    if value.is_empty() || value.chars().count() > MAX_NAME_LEN {
        return Err(arg(format!(
            "{what} must be 1 to {MAX_NAME_LEN} characters long"
        )));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) || !value.chars().all(allowed) {
        let extra: String = extra.iter().collect();
        return Err(arg(format!(
            "{what} {value:?} may only contain letters, digits and {extra:?}, and must start with a letter or digit"
        )));
    }
    Ok(())
}

const NAME_EXTRA: [char; 3] = ['.', '_', '-'];

/// A service name ([`NAME_PATTERN`]).
pub fn service_name(value: &str) -> Result<(), Invalid> {
    name("service name", value, &NAME_EXTRA)
}

/// An instance id ([`INSTANCE_ID_PATTERN`]).
pub fn instance_id(value: &str) -> Result<(), Invalid> {
    name("instance id", value, &['.', '_', '-', ':', '@'])
}

/// A lock or election name: the rule of service names ([`NAME_PATTERN`]).
pub fn lock_name(value: &str) -> Result<(), Invalid> {
    name("name", value, &NAME_EXTRA)
}

/// A meta key ([`NAME_PATTERN`]).
pub fn meta_key(value: &str) -> Result<(), Invalid> {
    name("meta key", value, &NAME_EXTRA)
}

/// A zone ([`NAME_PATTERN`]).
pub fn zone(value: &str) -> Result<(), Invalid> {
    name("zone", value, &NAME_EXTRA)
}

/// A region ([`NAME_PATTERN`]).
pub fn region(value: &str) -> Result<(), Invalid> {
    name("region", value, &NAME_EXTRA)
}

/// A DNS host name as [`ADDRESS_PATTERN`] allows it.
fn is_host_name(value: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    value.split('.').all(label_ok)
}

/// An instance's address ([`ADDRESS_PATTERN`], [`MAX_ADDRESS_LEN`]).
pub fn address(value: &str) -> Result<(), Invalid> {
    let ipv6 = || !value.contains('.') && value.parse::<Ipv6Addr>().is_ok();
    if value.is_empty() || value.len() > MAX_ADDRESS_LEN || !(is_host_name(value) || ipv6()) {
        return Err(arg(format!(
            "address {value:?} is neither a host name nor an IPv6 address (at most {MAX_ADDRESS_LEN} characters)"
        )));
    }
    Ok(())
}

/// An instance's port: [`MIN_PORT`] to 65535.
pub fn port(value: u16) -> Result<(), Invalid> {
    if value < MIN_PORT {
        return Err(arg(format!("port must be between {MIN_PORT} and 65535")));
    }
    Ok(())
}

/// Free text ([`TEXT_PATTERN`]) of `min..=max` characters.
fn text(what: &str, value: &str, min: usize, max: usize) -> Result<(), Invalid> {
    let len = value.chars().count();
    if len < min || len > max {
        return Err(arg(format!(
            "{what} must be {min} to {max} characters long"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(arg(format!("{what} {value:?} contains control characters")));
    }
    Ok(())
}

/// An instance's tags: at most [`MAX_TAGS`], each 1 to [`MAX_NAME_LEN`] characters of
/// [`TEXT_PATTERN`].
pub fn tags(tags: &[String]) -> Result<(), Invalid> {
    if tags.len() > MAX_TAGS {
        return Err(arg(format!("at most {MAX_TAGS} tags")));
    }
    tags.iter()
        .try_for_each(|tag| text("tag", tag, 1, MAX_NAME_LEN))
}

/// An instance's meta: at most [`MAX_META`] pairs; keys are names ([`NAME_PATTERN`]),
/// values 0 to [`MAX_META_VALUE_LEN`] characters of [`TEXT_PATTERN`].
pub fn meta(meta: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if meta.len() > MAX_META {
        return Err(arg(format!("at most {MAX_META} meta pairs")));
    }
    for (key, value) in meta {
        meta_key(key)?;
        text(
            &format!("meta value of {key:?}"),
            value,
            0,
            MAX_META_VALUE_LEN,
        )?;
    }
    Ok(())
}

/// An instance's weight: 0 to [`MAX_WEIGHT`].
pub fn weight(value: u32) -> Result<(), Invalid> {
    if value > MAX_WEIGHT {
        return Err(arg(format!("weight must be between 0 and {MAX_WEIGHT}")));
    }
    Ok(())
}

/// An acquire's `holder`: 0 to [`MAX_HOLDER_LEN`] characters of [`TEXT_PATTERN`].
pub fn holder(value: &str) -> Result<(), Invalid> {
    text("holder", value, 0, MAX_HOLDER_LEN)
}

/// An election value (a candidate or a proclaimed value): 1 to [`MAX_CANDIDATE_LEN`]
/// characters, any characters.
pub fn candidate(value: &str) -> Result<(), Invalid> {
    let len = value.chars().count();
    if len == 0 || len > MAX_CANDIDATE_LEN {
        return Err(arg(format!(
            "candidate must be 1 to {MAX_CANDIDATE_LEN} characters long"
        )));
    }
    Ok(())
}

/// The statuses an instance may set itself to; `critical` is the registry's call.
pub const SETTABLE_STATUSES: [InstanceStatus; 2] =
    [InstanceStatus::Passing, InstanceStatus::Draining];

/// A status change: `true` to drain, `false` to pass again; `critical` is refused.
pub fn settable_status(status: InstanceStatus) -> Result<bool, Invalid> {
    match status {
        InstanceStatus::Passing => Ok(false),
        InstanceStatus::Draining => Ok(true),
        InstanceStatus::Critical => Err(arg(
            "status may be set to `passing` or `draining`; `critical` follows from the lease",
        )),
    }
}

/// Whether a request names an existing `lease`, asks for one of its own with `ttl`, or
/// (where `ttl_required`) must do one of the two. Never both.
pub fn lease_or_ttl(lease: bool, ttl: bool, one_required: bool) -> Result<(), Invalid> {
    match (lease, ttl) {
        (true, true) => Err(arg(
            "give either `lease` (an existing lease) or `ttl` (for a lease of its own), not both",
        )),
        (false, false) if one_required => Err(arg(
            "give `ttl` (e.g. \"15s\") for a lease of the request's own, or `lease` for an existing one",
        )),
        _ => Ok(()),
    }
}

/// A check's `interval`.
pub const CHECK_INTERVAL: DurationRange = DurationRange {
    min: crate::checks::MIN_CHECK_INTERVAL,
    max: Some(crate::checks::MAX_CHECK_INTERVAL),
};

/// An HTTP check's `expect_status`: a class (`2xx`) or one code (`204`).
pub const EXPECT_STATUS_PATTERN: &str = "^[1-5](?:xx|[0-9][0-9])$";

/// What an HTTP check's answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExpectStatus {
    /// Any code of this hundred (2 for `2xx`).
    Class(u16),
    Code(u16),
}

impl ExpectStatus {
    pub fn matches(self, code: u16) -> bool {
        match self {
            ExpectStatus::Class(class) => code / 100 == class,
            ExpectStatus::Code(want) => code == want,
        }
    }
}

/// A check's `expect_status` ([`EXPECT_STATUS_PATTERN`]); `None` is `2xx`.
pub fn expect_status(value: Option<&str>) -> Result<ExpectStatus, Invalid> {
    let Some(text) = value else {
        return Ok(ExpectStatus::Class(2));
    };
    let bad = || {
        arg(format!(
            "expect_status {text:?} must be a class such as \"2xx\" or a code such as \"204\""
        ))
    };
    let bytes = text.as_bytes();
    if bytes.len() != 3 || !(b'1'..=b'5').contains(&bytes[0]) {
        return Err(bad());
    }
    let first = u16::from(bytes[0] - b'0');
    match &bytes[1..] {
        b"xx" => Ok(ExpectStatus::Class(first)),
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => Ok(ExpectStatus::Code(
            first * 100 + u16::from(a - b'0') * 10 + u16::from(b - b'0'),
        )),
        _ => Err(bad()),
    }
}

/// A check's `failures_before_critical` or `successes_before_passing`: 1 to
/// [`crate::checks::MAX_THRESHOLD`].
pub fn check_threshold(what: &str, value: u32) -> Result<(), Invalid> {
    let max = crate::checks::MAX_THRESHOLD;
    if value == 0 || value > max {
        return Err(arg(format!("{what} must be 1 to {max}, not {value}")));
    }
    Ok(())
}

/// An HTTP check's `method`: one of [`crate::checks::CHECK_METHODS`].
pub fn check_method(value: &str) -> Result<(), Invalid> {
    if crate::checks::CHECK_METHODS.contains(&value) {
        return Ok(());
    }
    Err(arg(format!(
        "method {value:?} must be one of {}",
        crate::checks::CHECK_METHODS.join(", ")
    )))
}

/// A TCP or gRPC check's target: `host:port`, the host an [`address`] (an IPv6 one in
/// brackets) and the port 1 to 65535. Returns the host (without brackets) and the port.
pub fn host_port<'a>(what: &str, value: &'a str) -> Result<(&'a str, u16), Invalid> {
    let bad = || {
        arg(format!(
            "{what} {value:?} must be host:port, e.g. \"10.0.0.7:8080\""
        ))
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    address(host).map_err(|_| bad())?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port < MIN_PORT {
        return Err(bad());
    }
    Ok((host, port))
}

/// A check's HTTP headers: at most [`crate::checks::MAX_CHECK_HEADERS`] names, each a
/// token ([`HEADER_NAME_PATTERN`]) with at most as many values of printable ASCII
/// ([`HEADER_VALUE_PATTERN`]).
pub fn check_headers(headers: &BTreeMap<String, Vec<String>>) -> Result<(), Invalid> {
    let max = crate::checks::MAX_CHECK_HEADERS;
    if headers.len() > max {
        return Err(arg(format!("a check may send at most {max} headers")));
    }
    for (name, values) in headers {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(token) {
            return Err(arg(format!("header name {name:?} is not an HTTP token")));
        }
        if values.len() > max {
            return Err(arg(format!(
                "header {name:?} may have at most {max} values"
            )));
        }
        for value in values {
            let long = value.len() > crate::checks::MAX_CHECK_HEADER_VALUE_LEN;
            if long || !value.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
                return Err(arg(format!(
                    "header {name:?}: values are at most {} characters of printable ASCII",
                    crate::checks::MAX_CHECK_HEADER_VALUE_LEN
                )));
            }
        }
    }
    Ok(())
}

/// A cluster member's node id: at least [`MIN_NODE_ID`].
pub fn member_id(id: u64) -> Result<(), Invalid> {
    if id < MIN_NODE_ID {
        return Err(arg("id: node ids start at 1"));
    }
    Ok(())
}

/// A cluster member's address ([`MEMBER_ADDR_PATTERN`]).
pub fn member_addr(addr: &str) -> Result<(), Invalid> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(arg(format!("addr: {addr:?} is not host:port")));
    };
    if host.is_empty() {
        return Err(arg(format!("addr: {addr:?} has no host")));
    }
    if port.parse::<u16>().is_err() {
        return Err(arg(format!("addr: {addr:?} has no valid port")));
    }
    Ok(())
}

/// An ACL rule's `prefix` ([`ACL_PREFIX_PATTERN`]). (On resources without names, such
/// as `cluster`, only `""` grants anything; another prefix is accepted and matches
/// nothing.)
pub fn acl_rule(rule: &crate::acl::Rule) -> Result<(), Invalid> {
    if rule.prefix.is_empty() {
        return Ok(());
    }
    name("rules: prefix", &rule.prefix, &NAME_EXTRA)
}

/// A token's description ([`TEXT_PATTERN`], at most [`crate::acl::MAX_DESCRIPTION_LEN`])
/// and rules (at most [`crate::acl::MAX_RULES`], each [`acl_rule`]); answers its TTL.
pub fn create_token(req: &crate::acl::CreateTokenRequest) -> Result<Option<Duration>, Invalid> {
    use crate::acl::{MAX_DESCRIPTION_LEN, MAX_RULES};
    text("description", &req.description, 0, MAX_DESCRIPTION_LEN)?;
    if req.rules.len() > MAX_RULES {
        return Err(arg(format!(
            "rules: at most {MAX_RULES}, not {}",
            req.rules.len()
        )));
    }
    req.rules.iter().try_for_each(acl_rule)?;
    req.ttl
        .as_deref()
        .map(|ttl| duration("ttl", ttl, TOKEN_TTL))
        .transpose()
}

/// A secret set from outside (`REGISTRY_ACL_BOOTSTRAP_TOKEN`): printable ASCII without
/// spaces, [`crate::acl::MIN_SECRET_LEN`] to [`crate::acl::MAX_SECRET_LEN`] long.
pub fn secret(value: &str) -> Result<(), Invalid> {
    use crate::acl::{MAX_SECRET_LEN, MIN_SECRET_LEN};
    if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&value.len()) {
        return Err(arg(format!(
            "a token secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} characters long"
        )));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(arg(
            "a token secret may only hold printable ASCII characters, without spaces",
        ));
    }
    Ok(())
}

/// `true` when `text` is written as [`DURATION_PATTERN`] says: `<digits><unit>` groups,
/// optionally one space between groups.
pub fn is_duration_syntax(text: &str) -> bool {
    let mut rest = text;
    loop {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let letters = rest.len() - rest.trim_start_matches(|c: char| c.is_alphabetic()).len();
        if !DURATION_UNITS.contains(&&rest[..letters]) {
            return false;
        }
        rest = &rest[letters..];
        if rest.is_empty() {
            return true;
        }
        rest = rest.strip_prefix(' ').unwrap_or(rest);
    }
}

/// Reads a duration field and checks it is within `range`.
pub fn duration(what: &str, text: &str, range: DurationRange) -> Result<Duration, Invalid> {
    let value =
        crate::parse_duration(text).map_err(|e| Invalid::Duration(format!("{what}: {e}")))?;
    let too_long = range.max.is_some_and(|max| value > max);
    if value < range.min || too_long {
        let max = range
            .max
            .map_or("no limit".to_owned(), crate::format_duration);
        return Err(Invalid::Duration(format!(
            "{what} {text:?} is out of range: it must be between {} and {max}",
            crate::format_duration(range.min),
        )));
    }
    Ok(value)
}

#[cfg(test)]
#[path = "rules_test.rs"]
mod tests;
