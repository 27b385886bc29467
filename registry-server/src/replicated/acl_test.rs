//! Tests of the replicated ACL state and the policy, on plain values.

use api_spec::acl::{Access, Resource, Rule};
use locks::LeaseId;

use super::*;
use crate::replicated::catalog::test_spec;
use crate::replicated::state::{AppState, Effects, Outcome};

fn hash(n: u8) -> SecretHash {
    [n; 32]
}

fn new_token(n: u8, rules: Vec<Rule>) -> NewToken {
    NewToken {
        accessor: Uuid::from_u128(u128::from(n)),
        secret_hash: hash(n),
        description: format!("token {n}"),
        rules,
        management: false,
        ttl_ms: None,
    }
}

fn rule(resource: Resource, prefix: &str, access: Access) -> Rule {
    Rule {
        resource,
        prefix: prefix.to_owned(),
        access,
    }
}

fn on() -> Authority {
    Authority {
        enabled: true,
        anonymous: vec![rule(Resource::Service, "", Access::Read)].into(),
    }
}

fn caller(acl: &Acl, n: u8) -> Caller {
    on().resolve(acl, Principal::Token(Uuid::from_u128(u128::from(n))), 0)
        .expect("the token exists")
}

#[test]
fn bootstrap_works_once() {
    let mut acl = Acl::default();
    let first = acl.apply(AclCommand::Bootstrap(new_token(1, vec![])), 1, 0);
    assert!(matches!(first, AclOutcome::Created(_)));
    assert!(acl.bootstrapped());
    let second = acl.apply(AclCommand::Bootstrap(new_token(2, vec![])), 2, 0);
    assert_eq!(second, AclOutcome::AlreadyBootstrapped);
    // Revoking the bootstrap token does not open bootstrap again.
    acl.apply(AclCommand::RevokeToken(Uuid::from_u128(1)), 3, 0);
    let third = acl.apply(AclCommand::Bootstrap(new_token(3, vec![])), 4, 0);
    assert_eq!(third, AclOutcome::AlreadyBootstrapped);
}

#[test]
fn a_secret_authenticates_only_its_own_token_until_revoked() {
    let mut acl = Acl::default();
    acl.apply(AclCommand::CreateToken(new_token(1, vec![])), 1, 0);
    assert_eq!(
        acl.authenticate(&hash(1), 0).map(|t| t.accessor),
        Some(Uuid::from_u128(1))
    );
    assert!(acl.authenticate(&hash(2), 0).is_none());
    // Same lookup prefix, different hash: refused by the full comparison.
    let mut near = hash(1);
    near[31] ^= 1;
    assert!(acl.authenticate(&near, 0).is_none());
    let revoked = acl.apply(AclCommand::RevokeToken(Uuid::from_u128(1)), 2, 0);
    assert!(matches!(revoked, AclOutcome::Revoked(_)));
    assert!(acl.authenticate(&hash(1), 0).is_none());
    assert_eq!(
        acl.apply(AclCommand::RevokeToken(Uuid::from_u128(1)), 3, 0),
        AclOutcome::TokenNotFound(Uuid::from_u128(1))
    );
}

#[test]
fn a_reused_accessor_or_secret_changes_nothing() {
    let mut acl = Acl::default();
    acl.apply(AclCommand::CreateToken(new_token(1, vec![])), 1, 0);
    let before = acl.clone();
    let mut same_secret = new_token(2, vec![]);
    same_secret.secret_hash = hash(1);
    assert_eq!(
        acl.apply(AclCommand::CreateToken(same_secret), 2, 0),
        AclOutcome::Duplicate
    );
    let mut same_accessor = new_token(3, vec![]);
    same_accessor.accessor = Uuid::from_u128(1);
    assert_eq!(
        acl.apply(AclCommand::CreateToken(same_accessor), 3, 0),
        AclOutcome::Duplicate
    );
    assert_eq!(acl, before);
}

#[test]
fn a_token_expires_at_its_ttl_and_only_then_can_be_purged() {
    let mut acl = Acl::default();
    let mut short = new_token(1, vec![]);
    short.ttl_ms = Some(1_000);
    acl.apply(AclCommand::CreateToken(short), 1, 5_000);
    assert!(acl.authenticate(&hash(1), 5_999).is_some());
    assert!(acl.authenticate(&hash(1), 6_000).is_none());
    assert!(on()
        .resolve(&acl, Principal::Token(Uuid::from_u128(1)), 6_000)
        .is_none());
    // A purge proposed early (a leader's clock ahead) keeps a token still in force.
    assert_eq!(
        acl.apply(AclCommand::Purge(vec![Uuid::from_u128(1)]), 2, 5_500),
        AclOutcome::Purged(vec![])
    );
    assert_eq!(acl.expired(6_000, 10), vec![Uuid::from_u128(1)]);
    assert_eq!(
        acl.apply(AclCommand::Purge(vec![Uuid::from_u128(1)]), 3, 6_000),
        AclOutcome::Purged(vec![Uuid::from_u128(1)])
    );
    assert_eq!(acl.tokens().count(), 0);
}

#[test]
fn rules_match_by_resource_prefix_and_access() {
    let mut acl = Acl::default();
    let rules = vec![
        rule(Resource::Service, "web", Access::Write),
        rule(Resource::Lock, "", Access::Read),
    ];
    acl.apply(AclCommand::CreateToken(new_token(1, rules)), 1, 0);
    let c = caller(&acl, 1);
    assert!(c
        .require(Resource::Service, "web-api", Access::Write)
        .is_ok());
    assert!(c.require(Resource::Service, "web", Access::Read).is_ok());
    assert!(c.require(Resource::Service, "db", Access::Read).is_err());
    assert!(c.require(Resource::Lock, "anything", Access::Read).is_ok());
    assert!(c
        .require(Resource::Lock, "anything", Access::Write)
        .is_err());
    // A rule on one resource says nothing about another with the same names.
    assert!(c.require(Resource::Election, "web", Access::Read).is_err());
    let denied = c
        .require(Resource::Service, "db", Access::Write)
        .expect_err("no rule covers db");
    assert!(!denied.anonymous);
    let message = denied.to_string();
    assert!(
        message.contains("write") && message.contains("service") && message.contains("\"db\""),
        "{message}"
    );
}

#[test]
fn management_tokens_and_acls_off_permit_everything() {
    let mut acl = Acl::default();
    let mut admin = new_token(1, vec![]);
    admin.management = true;
    acl.apply(AclCommand::CreateToken(admin), 1, 0);
    assert_eq!(caller(&acl, 1).rights, Rights::All);
    let off = Authority::default();
    let anyone = off
        .resolve(&acl, Principal::Anonymous, 0)
        .expect("ACLs off: everyone is someone");
    assert!(anyone.require(Resource::Cluster, "", Access::Write).is_ok());
}

#[test]
fn the_anonymous_caller_gets_the_anonymous_rules_and_is_told_to_bring_a_token() {
    let acl = Acl::default();
    let anonymous = on()
        .resolve(&acl, Principal::Anonymous, 0)
        .expect("anonymous always resolves");
    assert!(anonymous
        .require(Resource::Service, "web", Access::Read)
        .is_ok());
    let denied = anonymous
        .require(Resource::Service, "web", Access::Write)
        .expect_err("anonymous may only read");
    assert!(denied.anonymous);
    assert!(denied.to_string().contains("token is required"));
    // An unknown accessor does not resolve at all (401, not anonymous rights).
    assert!(on()
        .resolve(&acl, Principal::Token(Uuid::from_u128(9)), 0)
        .is_none());
}

fn grant(id: u128) -> Command {
    Command::Coordinate(locks::Command::GrantLease {
        id: LeaseId::from_u128(id),
        ttl_ms: 10_000,
    })
}

#[test]
fn a_lease_belongs_to_the_token_that_made_it() {
    let mut state = AppState::default();
    let mut fx = Effects::default();
    let writer = vec![rule(Resource::Service, "", Access::Write)];
    for n in [1, 2] {
        state.apply(
            Command::Acl(AclCommand::CreateToken(new_token(n, writer.clone()))),
            u64::from(n),
            0,
            &mut fx,
        );
    }
    let owned = Command::Owned {
        owner: Uuid::from_u128(1),
        command: Box::new(grant(7)),
    };
    let outcome = state.apply(owned, 3, 0, &mut fx);
    assert!(matches!(
        outcome,
        Outcome::Coordinate(locks::Outcome::LeaseGranted(_))
    ));
    let lease = LeaseId::from_u128(7);
    assert_eq!(state.acl.lease_owner(&lease), Some(Uuid::from_u128(1)));

    let authority = on();
    let revoke = Command::Coordinate(locks::Command::RevokeLease { id: lease });
    let (one, two) = (caller(&state.acl, 1), caller(&state.acl, 2));
    assert!(authority.authorize(&state.acl, &one, &revoke).is_ok());
    let refused = authority
        .authorize(&state.acl, &two, &revoke)
        .expect_err("another token's lease");
    assert!(matches!(refused.need, Need::Lease(id, Access::Write) if id == lease));
    // Binding an instance to someone else's lease is refused the same way.
    let bind = Command::Register {
        key: ("web".into(), "1".into()),
        spec: test_spec(),
        binding: Binding::Existing(lease),
    };
    assert!(authority.authorize(&state.acl, &one, &bind).is_ok());
    assert!(authority.authorize(&state.acl, &two, &bind).is_err());

    // A token with lease:write may touch any lease.
    state.apply(
        Command::Acl(AclCommand::CreateToken(new_token(
            3,
            vec![rule(Resource::Lease, "", Access::Write)],
        ))),
        4,
        0,
        &mut fx,
    );
    let three = caller(&state.acl, 3);
    assert!(authority.authorize(&state.acl, &three, &revoke).is_ok());

    // The owner is forgotten when the lease ends.
    state.apply(revoke, 5, 0, &mut fx);
    assert_eq!(state.acl.lease_owner(&lease), None);
}

#[test]
fn anonymous_leases_are_only_the_anonymous_callers_where_it_may_write() {
    let mut state = AppState::default();
    let mut fx = Effects::default();
    state.apply(grant(7), 1, 0, &mut fx);
    let revoke = Command::Coordinate(locks::Command::RevokeLease {
        id: LeaseId::from_u128(7),
    });
    let reader = on();
    let anonymous = reader
        .resolve(&state.acl, Principal::Anonymous, 0)
        .expect("anonymous resolves");
    assert!(reader.authorize(&state.acl, &anonymous, &revoke).is_err());
    let writer = Authority {
        enabled: true,
        anonymous: vec![rule(Resource::Service, "", Access::Write)].into(),
    };
    let anonymous = writer
        .resolve(&state.acl, Principal::Anonymous, 0)
        .expect("anonymous resolves");
    assert!(writer.authorize(&state.acl, &anonymous, &revoke).is_ok());
}

#[test]
fn internal_commands_are_refused_to_every_caller_acls_on_or_off() {
    let acl = Acl::default();
    let internal = [
        Command::Coordinate(locks::Command::ExpireLeases { ids: vec![] }),
        Command::Coordinate(locks::Command::GrantDelayed { keys: vec![] }),
        Command::Reap { instances: vec![] },
        Command::Acl(AclCommand::Purge(vec![])),
        Command::Owned {
            owner: Uuid::from_u128(1),
            command: Box::new(grant(1)),
        },
    ];
    for authority in [Authority::default(), on()] {
        let anyone = Caller::unrestricted();
        for command in &internal {
            let refused = authority
                .authorize(&acl, &anyone, command)
                .expect_err("internal commands are the leader's own");
            assert_eq!(refused.need, Need::Internal, "{command:?}");
        }
    }
}

#[test]
fn token_administration_needs_acl_write_and_bootstrap_needs_nothing() {
    let mut acl = Acl::default();
    acl.apply(
        AclCommand::CreateToken(new_token(1, vec![rule(Resource::Acl, "", Access::Read)])),
        1,
        0,
    );
    let reader = caller(&acl, 1);
    let create = Command::Acl(AclCommand::CreateToken(new_token(2, vec![])));
    let revoke = Command::Acl(AclCommand::RevokeToken(Uuid::from_u128(1)));
    let bootstrap = Command::Acl(AclCommand::Bootstrap(new_token(3, vec![])));
    assert!(on().authorize(&acl, &reader, &create).is_err());
    assert!(on().authorize(&acl, &reader, &revoke).is_err());
    assert!(on().authorize(&acl, &reader, &bootstrap).is_ok());
}
