//! Client input checked against `api_spec::rules` (the rules the OpenAPI document
//! states), and registrations, acquires and campaigns turned into the catalog's and the
//! coordinator's types. Every failure is a message for a 400 answer. The rules
//! themselves live in `api_spec::rules`; this file only applies them.

use std::time::Duration;

use api_spec::rules::{self, DurationRange};
use api_spec::{
    AcquireRequest, CampaignRequest, RegisterRequest, DEFAULT_DEREGISTER_AFTER,
    DEFAULT_INSTANCE_TTL, DEFAULT_LOCK_DELAY,
};
use locks::LeaseId;

use crate::app::AcquireSpec;
use crate::replicated::acl::AclCommand;
use crate::replicated::catalog::InstanceSpec;
use crate::replicated::state::{Binding, Command};

pub use api_spec::rules::{
    address, candidate, instance_id, lock_name, service_name, Invalid, MAX_META,
    MAX_META_VALUE_LEN, MAX_NAME_LEN, MAX_TAGS, MAX_WEIGHT,
};

/// Parses a duration field and checks it is within `min..=max`.
pub fn duration(what: &str, text: &str, min: Duration, max: Duration) -> Result<Duration, Invalid> {
    rules::duration(
        what,
        text,
        DurationRange {
            min,
            max: Some(max),
        },
    )
}

/// Checks a registration and turns it into what the catalog stores and the lease to bind.
/// `new_lease` is the id to use if the instance needs a lease of its own.
pub fn registration(
    req: RegisterRequest,
    new_lease: LeaseId,
) -> Result<(InstanceSpec, Binding), Invalid> {
    rules::address(&req.address)?;
    rules::port(req.port)?;
    rules::tags(&req.tags)?;
    rules::meta(&req.meta)?;
    if let Some(zone) = &req.zone {
        rules::zone(zone)?;
    }
    if let Some(region) = &req.region {
        rules::region(region)?;
    }
    let weight = req.weight.unwrap_or(rules::DEFAULT_WEIGHT);
    rules::weight(weight)?;
    let deregister_after = match &req.deregister_after {
        Some(text) => rules::duration("deregister_after", text, rules::DEREGISTER_AFTER)?,
        None => DEFAULT_DEREGISTER_AFTER,
    };
    rules::lease_or_ttl(req.lease.is_some(), req.ttl.is_some(), false)?;
    let binding = match (req.lease, &req.ttl) {
        (Some(lease), _) => Binding::Existing(lease),
        (None, ttl) => {
            let ttl = match ttl {
                Some(text) => rules::duration("ttl", text, rules::LEASE_TTL)?,
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

/// The lease an acquire or campaign binds to: `lease` or `ttl`, exactly one.
/// `new_lease` is the id of the lease made for it if `ttl` is given.
fn lock_binding(
    lease: Option<LeaseId>,
    ttl: Option<&str>,
    new_lease: LeaseId,
) -> Result<locks::Binding, Invalid> {
    rules::lease_or_ttl(lease.is_some(), ttl.is_some(), true)?;
    match (lease, ttl) {
        (Some(lease), _) => Ok(locks::Binding::Existing(lease)),
        (None, ttl) => Ok(locks::Binding::Own {
            id: new_lease,
            ttl_ms: millis(rules::duration(
                "ttl",
                ttl.unwrap_or_default(),
                rules::LEASE_TTL,
            )?),
        }),
    }
}

fn lock_wait(wait: Option<&str>) -> Result<Duration, Invalid> {
    wait.map_or(Ok(Duration::ZERO), |text| {
        rules::duration("wait", text, rules::LOCK_WAIT)
    })
}

/// Checks an acquire of the lock `name`.
pub fn acquire(
    name: &str,
    req: AcquireRequest,
    new_lease: LeaseId,
) -> Result<AcquireSpec, Invalid> {
    rules::lock_name(name)?;
    let holder = req.holder.unwrap_or_default();
    rules::holder(&holder)?;
    let lock_delay = match &req.lock_delay {
        Some(text) => rules::duration("lock_delay", text, rules::LOCK_DELAY)?,
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

/// Checks a campaign in the election `name`. Elections have no lock-delay: a leader
/// whose lease expired is followed at once (its token tells the old from the new).
pub fn campaign(
    name: &str,
    req: CampaignRequest,
    new_lease: LeaseId,
) -> Result<AcquireSpec, Invalid> {
    rules::lock_name(name)?;
    rules::candidate(&req.candidate)?;
    Ok(AcquireSpec {
        key: locks::Key::election(name),
        binding: lock_binding(req.lease, req.ttl.as_deref(), new_lease)?,
        holder: req.candidate,
        wait: lock_wait(req.wait.as_deref())?,
        lock_delay_ms: 0,
    })
}

/// Checks a command again as the rules above would have made it: what the leader does
/// with a command another node sends, before proposing it. (Which commands a request may
/// send at all, and whether its caller may, is `replicated::acl`'s decision.)
pub fn command(command: &Command) -> Result<(), Invalid> {
    let ttl = |ms: u64| in_range("ttl", ms, rules::LEASE_TTL);
    let lock_name = |key: &locks::Key| rules::lock_name(&key.name);
    match command {
        Command::Coordinate(cmd) => match cmd {
            locks::Command::GrantLease { ttl_ms, .. } => ttl(*ttl_ms),
            locks::Command::Acquire(acquire) => {
                lock_name(&acquire.key)?;
                match acquire.key.kind {
                    locks::Kind::Lock => rules::holder(&acquire.holder)?,
                    locks::Kind::Election => rules::candidate(&acquire.holder)?,
                }
                in_range("lock_delay", acquire.lock_delay_ms, rules::LOCK_DELAY)?;
                match acquire.binding {
                    locks::Binding::Own { ttl_ms, .. } => ttl(ttl_ms),
                    locks::Binding::Existing(_) => Ok(()),
                }
            }
            locks::Command::Release { key, .. } | locks::Command::Withdraw { key, .. } => {
                lock_name(key)
            }
            locks::Command::Proclaim { key, holder, .. } => {
                lock_name(key)?;
                rules::candidate(holder)
            }
            locks::Command::RevokeLease { .. }
            | locks::Command::ExpireLeases { .. }
            | locks::Command::GrantDelayed { .. } => Ok(()),
        },
        Command::Register { key, spec, binding } => {
            rules::service_name(&key.0)?;
            rules::instance_id(&key.1)?;
            rules::address(&spec.address)?;
            rules::port(spec.port)?;
            rules::tags(&spec.tags)?;
            rules::meta(&spec.meta)?;
            spec.zone.as_deref().map_or(Ok(()), rules::zone)?;
            spec.region.as_deref().map_or(Ok(()), rules::region)?;
            rules::weight(spec.weight)?;
            in_range(
                "deregister_after",
                spec.deregister_after_ms,
                rules::DEREGISTER_AFTER,
            )?;
            match binding {
                Binding::Own { ttl_ms, .. } => ttl(*ttl_ms),
                Binding::Existing(_) => Ok(()),
            }
        }
        Command::Deregister { key } | Command::SetStatus { key, .. } => {
            rules::service_name(&key.0)?;
            rules::instance_id(&key.1)
        }
        Command::Acl(AclCommand::CreateToken(new) | AclCommand::Bootstrap(new)) => {
            let request = api_spec::acl::CreateTokenRequest {
                description: new.description.clone(),
                rules: new.rules.clone(),
                management: new.management,
                ttl: None,
            };
            rules::create_token(&request)?;
            new.ttl_ms
                .map_or(Ok(()), |ms| in_range("ttl", ms, rules::TOKEN_TTL))
        }
        Command::Acl(AclCommand::RevokeToken(_) | AclCommand::Purge(_))
        | Command::Reap { .. }
        | Command::Owned { .. } => Ok(()),
    }
}

/// A duration in milliseconds within `range`.
fn in_range(what: &str, ms: u64, range: DurationRange) -> Result<(), Invalid> {
    let value = Duration::from_millis(ms);
    if value < range.min || range.max.is_some_and(|max| value > max) {
        return Err(Invalid::Duration(format!(
            "{what} of {ms}ms is out of range"
        )));
    }
    Ok(())
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
