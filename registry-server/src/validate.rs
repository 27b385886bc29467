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
use crate::replicated::checks::{CheckSpec, Probe};
use crate::replicated::intern::{self, Place};
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
    let checks = checks(&req.checks)?;
    rules::lease_or_ttl(req.lease.is_some(), req.ttl.is_some(), false)?;
    let unleased = !checks.is_empty() && req.lease.is_none() && req.ttl.is_none();
    let deregister_after = match &req.deregister_after {
        Some(text) => rules::duration("deregister_after", text, rules::DEREGISTER_AFTER)?,
        None if unleased => api_spec::checks::DEFAULT_CHECKED_DEREGISTER_AFTER,
        None => DEFAULT_DEREGISTER_AFTER,
    };
    let binding = match (req.lease, &req.ttl) {
        (Some(lease), _) => Binding::Existing(lease),
        (None, None) if unleased => Binding::Unleased,
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
        address: req.address.into(),
        port: req.port,
        tags: intern::tags(req.tags),
        meta: intern::meta(req.meta),
        place: Place::new(req.zone.map(Into::into), req.region.map(Into::into)),
        weight,
        deregister_after_ms: millis(deregister_after),
        checks: checks.into(),
    };
    Ok((spec, binding))
}

/// Checks a registration's `checks` and turns them into what the catalog stores.
pub fn checks(defs: &[api_spec::checks::CheckDefinition]) -> Result<Vec<CheckSpec>, Invalid> {
    use api_spec::checks::MAX_CHECKS;
    if defs.len() > MAX_CHECKS {
        return Err(Invalid::Argument(format!(
            "an instance may have at most {MAX_CHECKS} checks, not {}",
            defs.len()
        )));
    }
    let mut specs: Vec<CheckSpec> = Vec::with_capacity(defs.len());
    for def in defs {
        let spec = check(def).map_err(|e| match e {
            Invalid::Argument(m) => Invalid::Argument(format!("check {:?}: {m}", def.name)),
            Invalid::Duration(m) => Invalid::Duration(format!("check {:?}: {m}", def.name)),
        })?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(Invalid::Argument(format!(
                "two checks are named {:?}: check names must be unique",
                spec.name
            )));
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// One check definition: a name, exactly one of `http`, `tcp` and `grpc` (with only its
/// own options), interval, timeout and thresholds in range.
fn check(def: &api_spec::checks::CheckDefinition) -> Result<CheckSpec, Invalid> {
    use api_spec::checks::{
        DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT, DEFAULT_FAILURES_BEFORE_CRITICAL,
        DEFAULT_SUCCESSES_BEFORE_PASSING, MIN_CHECK_TIMEOUT,
    };
    let arg = |m: &str| Invalid::Argument(m.to_owned());
    rules::service_name(&def.name).map_err(|_| {
        Invalid::Argument(format!(
            "name {:?} must be 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-', starting with a letter or digit",
            def.name
        ))
    })?;
    let http_only = def.method.is_some() || !def.header.is_empty() || def.expect_status.is_some();
    let probe = match (&def.http, &def.tcp, &def.grpc) {
        (Some(url), None, None) => {
            let method = def.method.clone().unwrap_or_else(|| "GET".to_owned());
            rules::check_method(&method)?;
            rules::check_headers(&def.header)?;
            let headers = def
                .header
                .iter()
                .flat_map(|(name, values)| values.iter().map(move |v| (name.clone(), v.clone())))
                .collect();
            Probe::Http {
                url: http_url(url)?,
                method,
                headers,
                expect: rules::expect_status(def.expect_status.as_deref())?,
            }
        }
        (None, Some(target), None) if !http_only => {
            let (host, port) = rules::host_port("tcp", target)?;
            Probe::Tcp {
                host: host.to_owned(),
                port,
            }
        }
        (None, None, Some(target)) if !http_only => {
            let (host, port) = rules::host_port("grpc", target)?;
            Probe::Grpc {
                host: host.to_owned(),
                port,
                service: def.grpc_service.clone().unwrap_or_default(),
            }
        }
        (None, None, None) => return Err(arg("give one of `http`, `tcp` or `grpc`")),
        (None, _, _) if http_only => {
            return Err(arg(
                "`method`, `header` and `expect_status` belong to `http` checks",
            ))
        }
        _ => return Err(arg("give only one of `http`, `tcp` or `grpc`")),
    };
    if def.grpc_service.is_some() && def.grpc.is_none() {
        return Err(arg("`grpc_service` belongs to `grpc` checks"));
    }
    if let Some(service) = &def.grpc_service {
        if service.chars().count() > 256 || service.chars().any(char::is_control) {
            return Err(arg(
                "grpc_service must be at most 256 characters without control characters",
            ));
        }
    }
    let interval = match &def.interval {
        Some(text) => rules::duration("interval", text, rules::CHECK_INTERVAL)?,
        None => DEFAULT_CHECK_INTERVAL,
    };
    let timeout = match &def.timeout {
        Some(text) => duration(
            "timeout",
            text,
            MIN_CHECK_TIMEOUT,
            api_spec::checks::MAX_CHECK_TIMEOUT,
        )?,
        None => DEFAULT_CHECK_TIMEOUT.min(interval),
    };
    let failures = def
        .failures_before_critical
        .unwrap_or(DEFAULT_FAILURES_BEFORE_CRITICAL);
    rules::check_threshold("failures_before_critical", failures)?;
    let successes = def
        .successes_before_passing
        .unwrap_or(DEFAULT_SUCCESSES_BEFORE_PASSING);
    rules::check_threshold("successes_before_passing", successes)?;
    Ok(CheckSpec {
        name: def.name.clone(),
        probe,
        interval_ms: millis(interval),
        timeout_ms: millis(timeout),
        failures_before_critical: failures,
        successes_before_passing: successes,
    })
}

/// An HTTP check's URL: `http` or `https`, a host, no user info; kept in its normal form
/// (so the host the probe connects to is the host the target check compares).
fn http_url(text: &str) -> Result<String, Invalid> {
    let max = api_spec::checks::MAX_CHECK_URL_LEN;
    let bad = |why: &str| Invalid::Argument(format!("http {text:?} {why}"));
    if text.len() > max {
        return Err(bad(&format!("is longer than {max} bytes")));
    }
    let url = reqwest::Url::parse(text).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must start with http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "must not hold a user name or password (send an Authorization header)",
        ));
    }
    Ok(url.into())
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
            rules::tags(&spec.tags.iter().map(|t| t.to_string()).collect::<Vec<_>>())?;
            rules::meta(
                &spec
                    .meta
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )?;
            spec.zone().map_or(Ok(()), rules::zone)?;
            spec.region().map_or(Ok(()), rules::region)?;
            rules::weight(spec.weight)?;
            in_range(
                "deregister_after",
                spec.deregister_after_ms,
                rules::DEREGISTER_AFTER,
            )?;
            checks_again(&spec.checks)?;
            match binding {
                Binding::Own { ttl_ms, .. } => ttl(*ttl_ms),
                Binding::Existing(_) => Ok(()),
                Binding::Unleased if spec.checks.is_empty() => Err(Invalid::Argument(
                    "an instance without checks needs a lease: give `ttl` or `lease`".into(),
                )),
                Binding::Unleased => Ok(()),
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
        | Command::Owned { .. }
        | Command::InTerm { .. }
        | Command::CheckResults { .. }
        | Command::SetProbers { .. } => Ok(()),
    }
}

/// Checks validated check specs again: each must be what [`checks`] makes of the
/// definition it stands for.
fn checks_again(specs: &[CheckSpec]) -> Result<(), Invalid> {
    let defs: Vec<api_spec::checks::CheckDefinition> = specs.iter().map(definition).collect();
    if checks(&defs)? == specs {
        Ok(())
    } else {
        Err(Invalid::Argument(
            "a check is not in the form the rules make of it".into(),
        ))
    }
}

/// The definition a check spec was made from (durations in milliseconds).
fn definition(spec: &CheckSpec) -> api_spec::checks::CheckDefinition {
    let mut def = api_spec::checks::CheckDefinition {
        name: spec.name.clone(),
        interval: Some(format!("{}ms", spec.interval_ms)),
        timeout: Some(format!("{}ms", spec.timeout_ms)),
        failures_before_critical: Some(spec.failures_before_critical),
        successes_before_passing: Some(spec.successes_before_passing),
        ..Default::default()
    };
    match &spec.probe {
        Probe::Http {
            url,
            method,
            headers,
            expect,
        } => {
            def.http = Some(url.clone());
            def.method = Some(method.clone());
            for (name, value) in headers {
                def.header
                    .entry(name.clone())
                    .or_default()
                    .push(value.clone());
            }
            def.expect_status = Some(match expect {
                rules::ExpectStatus::Class(class) => format!("{class}xx"),
                rules::ExpectStatus::Code(code) => code.to_string(),
            });
        }
        Probe::Tcp { .. } => def.tcp = Some(spec.probe.target()),
        Probe::Grpc { service, .. } => {
            def.grpc = Some(spec.probe.target());
            def.grpc_service = Some(service.clone());
        }
    }
    def
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
            checks: Vec::new(),
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
