//! Checks on client input that the wire types cannot express, and the conversion of
//! registrations into the catalog's types. Every failure is a message for a 400 answer.

use std::net::IpAddr;
use std::time::Duration;

use api_spec::{
    AcquireRequest, CampaignRequest, RegisterRequest, DEFAULT_DEREGISTER_AFTER,
    DEFAULT_INSTANCE_TTL, DEFAULT_LOCK_DELAY, MAX_CANDIDATE_LEN, MAX_DEREGISTER_AFTER,
    MAX_HOLDER_LEN, MAX_LEASE_TTL, MAX_LOCK_DELAY, MAX_LOCK_WAIT, MIN_LEASE_TTL,
};
use locks::LeaseId;

use crate::app::AcquireSpec;
use crate::catalog::InstanceSpec;
use crate::state::Binding;

/// Longest service name, instance id, tag, zone, region or meta key.
pub const MAX_NAME_LEN: usize = 128;
/// Most tags on one instance.
pub const MAX_TAGS: usize = 64;
/// Most meta pairs on one instance.
pub const MAX_META: usize = 64;
/// Longest meta value.
pub const MAX_META_VALUE_LEN: usize = 512;
/// Largest instance weight.
pub const MAX_WEIGHT: u32 = 1000;

/// Why input was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// A field's value is not acceptable.
    Argument(String),
    /// A duration could not be read or is out of range.
    Duration(String),
}

fn arg(message: impl Into<String>) -> Invalid {
    Invalid::Argument(message.into())
}

/// Letters, digits and `extra`, starting with a letter or digit, 1 to [`MAX_NAME_LEN`]
/// long.
fn check_name(what: &str, value: &str, extra: &[char]) -> Result<(), Invalid> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || extra.contains(&c);
    if value.is_empty() || value.len() > MAX_NAME_LEN {
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

/// A service name: letters, digits, `.`, `_`, `-`.
pub fn service_name(value: &str) -> Result<(), Invalid> {
    check_name("service name", value, &['.', '_', '-'])
}

/// An instance id: letters, digits, `.`, `_`, `-`, `:`, `@` (ids such as `host:port`).
pub fn instance_id(value: &str) -> Result<(), Invalid> {
    check_name("instance id", value, &['.', '_', '-', ':', '@'])
}

/// An IP address, or a DNS host name (labels of letters, digits and `-`).
pub fn address(value: &str) -> Result<(), Invalid> {
    if value.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if value.is_empty() || value.len() > 253 || !value.split('.').all(label_ok) {
        return Err(arg(format!(
            "address {value:?} is neither an IP address nor a host name"
        )));
    }
    Ok(())
}

fn free_text(what: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.is_empty() || value.len() > max {
        return Err(arg(format!("{what} must be 1 to {max} characters long")));
    }
    if value.chars().any(char::is_control) {
        return Err(arg(format!("{what} {value:?} contains control characters")));
    }
    Ok(())
}

/// Parses a duration field and checks it is within `min..=max`.
pub fn duration(what: &str, text: &str, min: Duration, max: Duration) -> Result<Duration, Invalid> {
    let value =
        api_spec::parse_duration(text).map_err(|e| Invalid::Duration(format!("{what}: {e}")))?;
    if !(min..=max).contains(&value) {
        return Err(Invalid::Duration(format!(
            "{what} {text:?} is out of range: it must be between {} and {}",
            api_spec::format_duration(min),
            api_spec::format_duration(max),
        )));
    }
    Ok(value)
}

/// Checks a registration and turns it into what the catalog stores and the lease to bind.
/// `new_lease` is the id to use if the instance needs a lease of its own.
pub fn registration(
    req: RegisterRequest,
    new_lease: LeaseId,
) -> Result<(InstanceSpec, Binding), Invalid> {
    address(&req.address)?;
    if req.port == 0 {
        return Err(arg("port must be between 1 and 65535"));
    }
    if req.tags.len() > MAX_TAGS {
        return Err(arg(format!("at most {MAX_TAGS} tags")));
    }
    for tag in &req.tags {
        free_text("tag", tag, MAX_NAME_LEN)?;
    }
    if req.meta.len() > MAX_META {
        return Err(arg(format!("at most {MAX_META} meta pairs")));
    }
    for (key, value) in &req.meta {
        check_name("meta key", key, &['.', '_', '-'])?;
        if value.len() > MAX_META_VALUE_LEN || value.chars().any(char::is_control) {
            return Err(arg(format!(
                "meta value of {key:?} must be at most {MAX_META_VALUE_LEN} characters, without control characters"
            )));
        }
    }
    if let Some(zone) = &req.zone {
        check_name("zone", zone, &['.', '_', '-'])?;
    }
    if let Some(region) = &req.region {
        check_name("region", region, &['.', '_', '-'])?;
    }
    let weight = req.weight.unwrap_or(1);
    if weight > MAX_WEIGHT {
        return Err(arg(format!("weight must be between 0 and {MAX_WEIGHT}")));
    }
    let deregister_after = match &req.deregister_after {
        Some(text) => duration(
            "deregister_after",
            text,
            Duration::ZERO,
            MAX_DEREGISTER_AFTER,
        )?,
        None => DEFAULT_DEREGISTER_AFTER,
    };
    let binding = match (req.lease, &req.ttl) {
        (Some(_), Some(_)) => return Err(arg(
            "give either `lease` (an existing lease) or `ttl` (for a lease of its own), not both",
        )),
        (Some(lease), None) => Binding::Existing(lease),
        (None, ttl) => {
            let ttl = match ttl {
                Some(text) => duration("ttl", text, MIN_LEASE_TTL, MAX_LEASE_TTL)?,
                None => DEFAULT_INSTANCE_TTL,
            };
            Binding::Own {
                new_lease,
                ttl_ms: millis(ttl),
            }
        }
    };
    let spec = InstanceSpec {
        address: req.address,
        port: req.port,
        tags: req.tags,
        meta: req.meta,
        zone: req.zone,
        region: req.region,
        weight,
        deregister_after_ms: millis(deregister_after),
    };
    Ok((spec, binding))
}

/// A lock or election name: the same characters as a service name.
pub fn lock_name(value: &str) -> Result<(), Invalid> {
    check_name("name", value, &['.', '_', '-'])
}

/// The lease an acquire or campaign binds to: `lease` or `ttl`, exactly one.
/// `new_lease` is the id of the lease made for it if `ttl` is given.
fn lock_binding(
    lease: Option<LeaseId>,
    ttl: Option<&str>,
    new_lease: LeaseId,
) -> Result<locks::Binding, Invalid> {
    match (lease, ttl) {
        (Some(_), Some(_)) => Err(arg(
            "give either `lease` (an existing lease) or `ttl` (for a lease of its own), not both",
        )),
        (None, None) => Err(arg(
            "give `ttl` (e.g. \"15s\") for a lease of the request's own, or `lease` for an existing one",
        )),
        (Some(lease), None) => Ok(locks::Binding::Existing(lease)),
        (None, Some(ttl)) => Ok(locks::Binding::Own {
            id: new_lease,
            ttl_ms: millis(duration("ttl", ttl, MIN_LEASE_TTL, MAX_LEASE_TTL)?),
        }),
    }
}

fn lock_wait(wait: Option<&str>) -> Result<Duration, Invalid> {
    wait.map_or(Ok(Duration::ZERO), |text| {
        duration("wait", text, Duration::ZERO, MAX_LOCK_WAIT)
    })
}

/// Checks an acquire of the lock `name`.
pub fn acquire(
    name: &str,
    req: AcquireRequest,
    new_lease: LeaseId,
) -> Result<AcquireSpec, Invalid> {
    lock_name(name)?;
    let holder = req.holder.unwrap_or_default();
    if !holder.is_empty() {
        free_text("holder", &holder, MAX_HOLDER_LEN)?;
    }
    let lock_delay = match &req.lock_delay {
        Some(text) => duration("lock_delay", text, Duration::ZERO, MAX_LOCK_DELAY)?,
        None => DEFAULT_LOCK_DELAY,
    };
    Ok(AcquireSpec {
        key: locks::Key::lock(name),
        binding: lock_binding(req.lease, req.ttl.as_deref(), new_lease)?,
        holder,
        wait: lock_wait(req.wait.as_deref())?,
        lock_delay_ms: millis(lock_delay),
    })
}

/// Checks an election value (a candidate or a proclaimed value).
pub fn candidate(value: &str) -> Result<(), Invalid> {
    if value.is_empty() || value.len() > MAX_CANDIDATE_LEN {
        return Err(arg(format!(
            "candidate must be 1 to {MAX_CANDIDATE_LEN} bytes long"
        )));
    }
    Ok(())
}

/// Checks a campaign in the election `name`. Elections have no lock-delay: a leader
/// whose lease expired is followed at once (its token tells the old from the new).
pub fn campaign(
    name: &str,
    req: CampaignRequest,
    new_lease: LeaseId,
) -> Result<AcquireSpec, Invalid> {
    lock_name(name)?;
    candidate(&req.candidate)?;
    Ok(AcquireSpec {
        key: locks::Key::election(name),
        binding: lock_binding(req.lease, req.ttl.as_deref(), new_lease)?,
        holder: req.candidate,
        wait: lock_wait(req.wait.as_deref())?,
        lock_delay_ms: 0,
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn request() -> RegisterRequest {
        RegisterRequest {
            address: "10.0.0.7".into(),
            port: 8080,
            tags: vec!["v1".into()],
            meta: BTreeMap::from([("team".into(), "web".into())]),
            zone: Some("eu-1a".into()),
            region: Some("eu".into()),
            weight: None,
            ttl: None,
            deregister_after: None,
            lease: None,
        }
    }

    #[test]
    fn names_and_ids() {
        assert!(service_name("web-api.v2_x").is_ok());
        assert!(service_name("").is_err());
        assert!(service_name("-web").is_err());
        assert!(service_name("web api").is_err());
        assert!(service_name("web/api").is_err());
        assert!(service_name(&"a".repeat(129)).is_err());
        assert!(instance_id("10.0.0.1:8080").is_ok());
        assert!(instance_id("web@host-1").is_ok());
        assert!(instance_id("a\u{0}b").is_err());
    }

    #[test]
    fn addresses() {
        for ok in [
            "10.0.0.1",
            "::1",
            "fe80::1",
            "api.example.internal",
            "localhost",
            "a-b.c",
        ] {
            assert!(address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "http://x",
            "a b",
            "-a.b",
            "a..b",
            "x:80",
            &"a".repeat(64),
        ] {
            assert!(address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_give_an_own_lease_of_ten_seconds() {
        let lease = LeaseId::from_u128(5);
        let (spec, binding) = registration(request(), lease).unwrap();
        assert_eq!(
            binding,
            Binding::Own {
                new_lease: lease,
                ttl_ms: 10_000
            }
        );
        assert_eq!((spec.weight, spec.deregister_after_ms), (1, 60_000));
    }

    #[test]
    fn bad_registrations_are_refused() {
        let lease = LeaseId::from_u128(5);
        let with = |f: fn(&mut RegisterRequest)| {
            let mut r = request();
            f(&mut r);
            registration(r, lease)
        };
        assert!(matches!(with(|r| r.port = 0), Err(Invalid::Argument(_))));
        assert!(matches!(
            with(|r| r.ttl = Some("0s".into())),
            Err(Invalid::Duration(_))
        ));
        assert!(matches!(
            with(|r| r.ttl = Some("15".into())),
            Err(Invalid::Duration(_))
        ));
        assert!(matches!(
            with(|r| r.deregister_after = Some("30d".into())),
            Err(Invalid::Duration(_))
        ));
        assert!(matches!(
            with(|r| r.weight = Some(5000)),
            Err(Invalid::Argument(_))
        ));
        assert!(matches!(
            with(|r| r.tags = vec!["".into()]),
            Err(Invalid::Argument(_))
        ));
        assert!(matches!(
            with(|r| r.tags = vec!["x".into(); 65]),
            Err(Invalid::Argument(_))
        ));
        assert!(matches!(
            with(|r| {
                r.meta.insert("bad key".into(), "v".into());
            }),
            Err(Invalid::Argument(_))
        ));
        assert!(matches!(
            with(|r| {
                r.meta.insert("k".into(), "v".repeat(513));
            }),
            Err(Invalid::Argument(_))
        ));
        assert!(matches!(
            with(|r| r.zone = Some("eu 1".into())),
            Err(Invalid::Argument(_))
        ));
        assert!(matches!(
            with(|r| {
                r.lease = Some(LeaseId::from_u128(1));
                r.ttl = Some("5s".into());
            }),
            Err(Invalid::Argument(_))
        ));
        assert!(with(|r| r.deregister_after = Some("0s".into())).is_ok());
    }
}
