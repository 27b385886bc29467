//! Unit tests of the coordination core: plain values in, outcomes and state out.

use super::*;

fn id(n: u128) -> LeaseId {
    Uuid::from_u128(n)
}

fn apply(c: &mut Coordinator, cmd: Command, index: u64, now_ms: u64) -> (Outcome, Effects) {
    let mut fx = Effects::default();
    let out = c.apply(cmd, index, now_ms, &mut fx);
    (out, fx)
}

fn grant(c: &mut Coordinator, n: u128, ttl_ms: u64, index: u64) {
    apply(c, Command::GrantLease { id: id(n), ttl_ms }, index, 0);
}

fn acquire(key: &Key, ticket: u128, lease: u128, wait: bool) -> Command {
    Command::Acquire(Acquire {
        key: key.clone(),
        ticket: Uuid::from_u128(ticket),
        binding: Binding::Existing(id(lease)),
        holder: format!("t{ticket}"),
        wait,
        lock_delay_ms: 1_000,
    })
}

#[test]
fn grant_records_index_and_stamp() {
    let mut c = Coordinator::default();
    let (out, fx) = apply(
        &mut c,
        Command::GrantLease {
            id: id(1),
            ttl_ms: 5000,
        },
        7,
        1_000,
    );
    let lease = Lease {
        id: id(1),
        ttl_ms: 5000,
        granted_index: 7,
        granted_at_ms: 1_000,
    };
    assert_eq!(out, Outcome::LeaseGranted(lease.clone()));
    assert_eq!(fx.granted, vec![lease.clone()]);
    assert_eq!(c.lease(&id(1)), Some(&lease));
    assert_eq!(c.lease_count(), 1);
}

#[test]
fn regrant_of_same_id_keeps_the_first_grant() {
    let mut c = Coordinator::default();
    grant(&mut c, 1, 5000, 7);
    let (out, fx) = apply(
        &mut c,
        Command::GrantLease {
            id: id(1),
            ttl_ms: 9000,
        },
        8,
        2_000,
    );
    match out {
        Outcome::LeaseGranted(l) => assert_eq!((l.ttl_ms, l.granted_index), (5000, 7)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        fx.granted.is_empty(),
        "no new grant to start a countdown for"
    );
    assert_eq!(c.lease_count(), 1);
}

#[test]
fn revoke_removes_and_second_revoke_is_not_found() {
    let mut c = Coordinator::default();
    grant(&mut c, 1, 5000, 1);
    let (out, fx) = apply(&mut c, Command::RevokeLease { id: id(1) }, 2, 0);
    assert!(matches!(out, Outcome::LeaseRevoked(l) if l.id == id(1)));
    assert_eq!(fx.ended, vec![id(1)]);
    let (out, _) = apply(&mut c, Command::RevokeLease { id: id(1) }, 3, 0);
    assert_eq!(out, Outcome::LeaseNotFound(id(1)));
    assert_eq!(c.lease(&id(1)), None);
}

#[test]
fn release_hands_the_lock_to_the_first_waiter_only() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    for n in 1..=3 {
        grant(&mut c, n, 5000, n as u64);
    }
    let (out, _) = apply(&mut c, acquire(&key, 11, 1, false), 4, 0);
    let Outcome::Granted(first) = out else {
        panic!("{out:?}")
    };
    assert_eq!(first.token, 4);
    assert_eq!(
        apply(&mut c, acquire(&key, 12, 2, true), 5, 0).0,
        Outcome::Queued { position: 0 }
    );
    assert_eq!(
        apply(&mut c, acquire(&key, 13, 3, true), 6, 0).0,
        Outcome::Queued { position: 1 }
    );
    let (out, fx) = apply(
        &mut c,
        Command::Release {
            key: key.clone(),
            token: 4,
        },
        7,
        0,
    );
    assert!(matches!(out, Outcome::Released(h) if h.token == 4));
    assert_eq!(
        fx.woken,
        vec![Uuid::from_u128(12)],
        "only the next waiter is woken"
    );
    let lock = c.lock(&key).unwrap();
    assert_eq!(
        lock.holder.as_ref().map(|h| (h.lease, h.token)),
        Some((id(2), 7))
    );
    assert_eq!(lock.waiters.len(), 1);
}

#[test]
fn two_grants_in_one_entry_get_increasing_tokens() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5000, 1);
    grant(&mut c, 2, 5000, 2);
    let mut fx = Effects::default();
    let Outcome::Granted(a) = c.apply(acquire(&key, 11, 1, false), 3, 0, &mut fx) else {
        panic!()
    };
    c.apply(
        Command::Release {
            key: key.clone(),
            token: a.token,
        },
        3,
        0,
        &mut fx,
    );
    let Outcome::Granted(b) = c.apply(acquire(&key, 12, 2, false), 3, 0, &mut fx) else {
        panic!()
    };
    assert_eq!((a.token, b.token), (3, 4));
    // The next entry's index is taken by the overflow: its token moves past it.
    c.apply(
        Command::Release {
            key: key.clone(),
            token: b.token,
        },
        4,
        0,
        &mut fx,
    );
    let Outcome::Granted(d) = c.apply(acquire(&key, 13, 1, false), 4, 0, &mut fx) else {
        panic!()
    };
    assert_eq!(d.token, 5);
}

#[test]
fn expiry_releases_with_lock_delay_then_grant_delayed_serves_the_waiter() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 1000, 1);
    grant(&mut c, 2, 1000, 2);
    apply(&mut c, acquire(&key, 11, 1, false), 3, 0);
    apply(&mut c, acquire(&key, 12, 2, true), 4, 0);
    let (_, fx) = apply(
        &mut c,
        Command::ExpireLeases { ids: vec![id(1)] },
        5,
        10_000,
    );
    assert!(
        fx.woken.is_empty(),
        "nobody is granted during the lock-delay"
    );
    assert_eq!(c.lock(&key).unwrap().delay_until_ms, Some(11_000));
    assert_eq!(c.delays_due(10_999, 10), Vec::<Key>::new());
    assert_eq!(c.delays_due(11_000, 10), vec![key.clone()]);
    let (out, fx) = apply(
        &mut c,
        Command::GrantDelayed {
            keys: vec![key.clone()],
        },
        6,
        11_000,
    );
    assert_eq!(out, Outcome::DelaysEnded(vec![key.clone()]));
    assert_eq!(fx.woken, vec![Uuid::from_u128(12)]);
    assert_eq!(
        c.lock(&key).unwrap().holder.as_ref().map(|h| h.token),
        Some(6)
    );
}

#[test]
fn same_commands_give_same_state() {
    let key = Key::lock("x");
    let cmds = [
        Command::GrantLease {
            id: id(5),
            ttl_ms: 1000,
        },
        Command::GrantLease {
            id: id(3),
            ttl_ms: 2000,
        },
        acquire(&key, 1, 5, false),
        acquire(&key, 2, 3, true),
        Command::ExpireLeases { ids: vec![id(5)] },
        Command::GrantDelayed {
            keys: vec![key.clone()],
        },
    ];
    let run = || {
        let mut c = Coordinator::default();
        for (i, cmd) in cmds.iter().cloned().enumerate() {
            c.apply(
                cmd,
                i as u64 + 1,
                10_000 * i as u64,
                &mut Effects::default(),
            );
        }
        c
    };
    assert_eq!(run(), run());
}
