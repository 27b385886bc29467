//! Unit tests of the coordination core: plain values in, outcomes and state out.

use super::*;
use std::collections::BTreeMap;

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

fn ticket(n: u128) -> Ticket {
    Uuid::from_u128(n)
}

fn acquire_with(key: &Key, ticket_n: u128, binding: Binding, wait: bool, delay: u64) -> Command {
    Command::Acquire(Acquire {
        key: key.clone(),
        ticket: ticket(ticket_n),
        binding,
        holder: format!("t{ticket_n}"),
        wait,
        lock_delay_ms: delay,
    })
}

/// An acquire with a lease of its own (TTL 5 s, lock-delay 1 s).
fn acquire_own(key: &Key, ticket_n: u128, lease: u128, wait: bool) -> Command {
    let binding = Binding::Own {
        id: id(lease),
        ttl_ms: 5_000,
    };
    acquire_with(key, ticket_n, binding, wait, 1_000)
}

/// An acquire on an existing lease with the given lock-delay.
fn acquire_delay(key: &Key, ticket_n: u128, lease: u128, wait: bool, delay: u64) -> Command {
    acquire_with(key, ticket_n, Binding::Existing(id(lease)), wait, delay)
}

fn release(key: &Key, token: u64) -> Command {
    Command::Release {
        key: key.clone(),
        token,
    }
}

fn withdraw(key: &Key, ticket_n: u128, release_if_granted: bool) -> Command {
    Command::Withdraw {
        key: key.clone(),
        ticket: ticket(ticket_n),
        release_if_granted,
    }
}

fn proclaim(key: &Key, token: u64, text: &str) -> Command {
    Command::Proclaim {
        key: key.clone(),
        token,
        holder: text.to_owned(),
    }
}

fn revoke(n: u128) -> Command {
    Command::RevokeLease { id: id(n) }
}

fn expire(ns: &[u128]) -> Command {
    Command::ExpireLeases {
        ids: ns.iter().map(|&n| id(n)).collect(),
    }
}

fn grant_delayed(keys: &[&Key]) -> Command {
    Command::GrantDelayed {
        keys: keys.iter().map(|&k| k.clone()).collect(),
    }
}

fn granted(out: Outcome) -> Hold {
    match out {
        Outcome::Granted(hold) => hold,
        other => panic!("expected Granted, got {other:?}"),
    }
}

fn holder<'c>(c: &'c Coordinator, key: &Key) -> Option<&'c Hold> {
    c.lock(key).and_then(|l| l.holder.as_ref())
}

/// The tickets waiting for `key`, first in line first.
fn waiting(c: &Coordinator, key: &Key) -> Vec<Ticket> {
    c.lock(key)
        .map(|l| l.waiters.iter().map(|w| w.ticket).collect())
        .unwrap_or_default()
}

fn key_set<const N: usize>(keys: [&Key; N]) -> BTreeSet<Key> {
    keys.into_iter().cloned().collect()
}

/// Which keys the lease is recorded as holding or waiting for (internal index).
fn bound_to(c: &Coordinator, lease: u128) -> BTreeSet<Key> {
    c.bound.get(&id(lease)).cloned().unwrap_or_default()
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
    assert_eq!(out, Outcome::LeaseGranted(lease));
    assert_eq!(fx.granted, vec![lease]);
    assert_eq!(c.lease(&id(1)), Some(lease));
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

// ---------------------------------------------------------------------------------------
// Leases
// ---------------------------------------------------------------------------------------

#[test]
fn expire_returns_only_the_leases_that_still_exist() {
    let mut c = Coordinator::default();
    for n in 1..=3 {
        grant(&mut c, n, 1_000, n as u64);
    }
    apply(&mut c, revoke(2), 4, 0);
    let l1 = c.lease(&id(1)).unwrap();
    let l3 = c.lease(&id(3)).unwrap();
    let (out, fx) = apply(&mut c, expire(&[1, 2, 9, 3, 1]), 5, 0);
    assert_eq!(out, Outcome::LeasesExpired(vec![l1, l3]));
    assert_eq!(fx.ended, vec![id(1), id(3)], "each ended lease once");
    assert!(fx.granted.is_empty() && fx.changed.is_empty() && fx.woken.is_empty());
    assert_eq!(c.lease_count(), 0);
}

#[test]
fn expire_of_only_unknown_ids_changes_nothing() {
    let mut c = Coordinator::default();
    grant(&mut c, 1, 1_000, 1);
    let before = c.clone();
    let (out, fx) = apply(&mut c, expire(&[7, 8]), 2, 0);
    assert_eq!(out, Outcome::LeasesExpired(vec![]));
    assert_eq!(fx, Effects::default());
    assert_eq!(c, before);
    let (out, fx) = apply(&mut c, expire(&[]), 3, 0);
    assert_eq!(out, Outcome::LeasesExpired(vec![]));
    assert_eq!(fx, Effects::default());
    assert_eq!(c, before);
}

#[test]
fn revoke_of_unknown_lease_is_not_found_and_changes_nothing() {
    let mut c = Coordinator::default();
    grant(&mut c, 1, 1_000, 1);
    let before = c.clone();
    let (out, fx) = apply(&mut c, revoke(2), 2, 0);
    assert_eq!(out, Outcome::LeaseNotFound(id(2)));
    assert_eq!(fx, Effects::default());
    assert_eq!(c, before);
}

#[test]
fn leases_lists_live_leases_in_id_order() {
    let mut c = Coordinator::default();
    for n in [3, 1, 2] {
        grant(&mut c, n, 1_000, n as u64);
    }
    apply(&mut c, revoke(2), 4, 0);
    let ids: Vec<LeaseId> = c.leases().map(|l| l.id).collect();
    assert_eq!(ids, vec![id(1), id(3)]);
    assert_eq!(c.lease_count(), 2);
}

#[test]
fn lease_commands_without_locks_leave_lock_indexes_alone() {
    let mut c = Coordinator::default();
    grant(&mut c, 1, 1_000, 1);
    grant(&mut c, 2, 1_000, 2);
    apply(&mut c, revoke(1), 3, 0);
    apply(&mut c, expire(&[2]), 4, 0);
    assert_eq!(c.kind_index(Kind::Lock), 0);
    assert_eq!(c.kind_index(Kind::Election), 0);
    assert_eq!(c.last_token(), 0);
}

#[test]
fn regrant_after_revoke_is_a_new_lease() {
    let mut c = Coordinator::default();
    grant(&mut c, 1, 1_000, 1);
    apply(&mut c, revoke(1), 2, 0);
    let (out, fx) = apply(
        &mut c,
        Command::GrantLease {
            id: id(1),
            ttl_ms: 2_000,
        },
        3,
        30,
    );
    let lease = Lease {
        id: id(1),
        ttl_ms: 2_000,
        granted_index: 3,
        granted_at_ms: 30,
    };
    assert_eq!(out, Outcome::LeaseGranted(lease));
    assert_eq!(fx.granted, vec![lease]);
}

// ---------------------------------------------------------------------------------------
// Acquire
// ---------------------------------------------------------------------------------------

#[test]
fn acquire_on_a_free_lock_grants_with_the_entry_index_as_token() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    let (out, fx) = apply(&mut c, acquire(&key, 11, 1, false), 4, 2_000);
    let hold = Hold {
        ticket: ticket(11),
        token: 4,
        lease: id(1),
        own_lease: false,
        holder: "t11".to_owned(),
        lock_delay_ms: 1_000,
        granted_index: 4,
        granted_at_ms: 2_000,
    };
    assert_eq!(out, Outcome::Granted(hold.clone()));
    assert_eq!(
        c.lock(&key),
        Some(&LockState {
            holder: Some(hold),
            waiters: Default::default(),
            delay_until_ms: None,
            modify_index: 4,
        })
    );
    assert_eq!(fx.changed, key_set([&key]));
    assert!(fx.granted.is_empty() && fx.ended.is_empty() && fx.woken.is_empty());
    assert_eq!(c.last_token(), 4);
    assert_eq!(c.lock_index(&key), 4);
    assert_eq!(c.kind_index(Kind::Lock), 4);
    assert_eq!(c.kind_index(Kind::Election), 0);
    assert_eq!(bound_to(&c, 1), key_set([&key]));
}

#[test]
fn acquire_that_may_wait_on_a_free_lock_is_granted_at_once() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    let hold = granted(apply(&mut c, acquire(&key, 11, 1, true), 2, 0).0);
    assert_eq!((hold.ticket, hold.token), (ticket(11), 2));
    assert!(waiting(&c, &key).is_empty());
}

#[test]
fn acquire_with_own_lease_on_a_free_lock_grants_the_lease_and_the_lock() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    let (out, fx) = apply(&mut c, acquire_own(&key, 11, 21, false), 3, 300);
    let hold = granted(out);
    assert_eq!((hold.lease, hold.own_lease, hold.token), (id(21), true, 3));
    let lease = Lease {
        id: id(21),
        ttl_ms: 5_000,
        granted_index: 3,
        granted_at_ms: 300,
    };
    assert_eq!(fx.granted, vec![lease]);
    assert_eq!(c.lease(&id(21)), Some(lease));
    assert_eq!(bound_to(&c, 21), key_set([&key]));
}

#[test]
fn acquire_without_waiting_on_a_held_lock_is_busy_and_changes_nothing() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    grant(&mut c, 2, 5_000, 2);
    apply(&mut c, acquire(&key, 11, 1, false), 3, 0);
    let before = c.clone();
    let (out, fx) = apply(&mut c, acquire(&key, 12, 2, false), 4, 0);
    assert_eq!(out, Outcome::Busy(before.lock(&key).cloned().unwrap()));
    assert_eq!(fx, Effects::default());
    assert_eq!(c, before);
    assert_eq!(c.lock_index(&key), 3, "a refused acquire is no change");
}

#[test]
fn busy_acquire_with_own_lease_grants_no_lease() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    apply(&mut c, acquire(&key, 11, 1, false), 2, 0);
    let before = c.clone();
    let (out, fx) = apply(&mut c, acquire_own(&key, 12, 22, false), 3, 0);
    assert_eq!(out, Outcome::Busy(before.lock(&key).cloned().unwrap()));
    assert_eq!(fx, Effects::default());
    assert_eq!(c.lease(&id(22)), None);
    assert_eq!(c, before);
}

#[test]
fn acquire_that_waits_on_a_held_lock_is_queued_in_arrival_order() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    for n in 1..=3 {
        grant(&mut c, n, 5_000, n as u64);
    }
    apply(&mut c, acquire(&key, 11, 1, false), 4, 0);
    let (out, fx) = apply(&mut c, acquire(&key, 12, 2, true), 5, 500);
    assert_eq!(out, Outcome::Queued { position: 0 });
    assert_eq!(fx.changed, key_set([&key]));
    assert!(fx.woken.is_empty() && fx.granted.is_empty());
    assert_eq!(
        apply(&mut c, acquire(&key, 13, 3, true), 6, 600).0,
        Outcome::Queued { position: 1 }
    );
    let (out, fx) = apply(&mut c, acquire_own(&key, 14, 24, true), 7, 700);
    assert_eq!(out, Outcome::Queued { position: 2 });
    assert_eq!(
        fx.granted.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![id(24)],
        "a queued own-lease request gets its lease"
    );
    let lock = c.lock(&key).unwrap();
    assert_eq!(
        lock.waiters.front(),
        Some(&Waiter {
            ticket: ticket(12),
            lease: id(2),
            own_lease: false,
            holder: "t12".to_owned(),
            lock_delay_ms: 1_000,
            queued_index: 5,
            queued_at_ms: 500,
        })
    );
    assert!(lock.waiters.back().unwrap().own_lease);
    assert_eq!(waiting(&c, &key), vec![ticket(12), ticket(13), ticket(14)]);
    assert_eq!(lock.modify_index, 7);
    assert_eq!(c.last_token(), 4, "queueing hands out no token");
    assert_eq!(holder(&c, &key).unwrap().ticket, ticket(11));
}

#[test]
fn queue_full_at_max_waiters_refuses_without_granting_a_lease() {
    const LEASE: u128 = 1_000_000;
    const TICKET: u128 = 2_000_000;
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    let max = MAX_WAITERS as u128;
    for n in 0..=max + 1 {
        grant(&mut c, LEASE + n, 5_000, 1);
    }
    granted(apply(&mut c, acquire(&key, TICKET, LEASE, false), 2, 0).0);
    for n in 1..=max {
        let (out, _) = apply(&mut c, acquire(&key, TICKET + n, LEASE + n, true), 3, 0);
        assert_eq!(
            out,
            Outcome::Queued {
                position: n as usize - 1
            }
        );
    }
    assert_eq!(c.lock(&key).unwrap().waiters.len(), MAX_WAITERS);
    let before = c.clone();
    let newcomer = acquire(&key, TICKET + max + 1, LEASE + max + 1, true);
    let (out, fx) = apply(&mut c, newcomer.clone(), 4, 0);
    assert_eq!(out, Outcome::QueueFull);
    assert_eq!(fx, Effects::default());
    assert_eq!(c, before);
    let (out, fx) = apply(&mut c, acquire_own(&key, TICKET + max + 2, 7, true), 4, 0);
    assert_eq!(out, Outcome::QueueFull);
    assert_eq!(fx, Effects::default());
    assert_eq!(c.lease(&id(7)), None, "no lease for a refused request");
    assert_eq!(c, before);
    // Not waiting, a full queue answers Busy as any held lock does.
    let (out, _) = apply(
        &mut c,
        acquire(&key, TICKET + max + 3, LEASE + max + 1, false),
        4,
        0,
    );
    assert!(matches!(out, Outcome::Busy(_)), "{out:?}");
    // One place frees up: the newcomer gets the last place.
    apply(&mut c, release(&key, 2), 5, 0);
    assert_eq!(
        apply(&mut c, newcomer, 6, 0).0,
        Outcome::Queued {
            position: MAX_WAITERS - 1
        }
    );
}

#[test]
fn acquire_with_unknown_existing_lease_is_lease_not_found() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    // On a free lock.
    let (out, fx) = apply(&mut c, acquire(&key, 11, 9, true), 1, 0);
    assert_eq!(out, Outcome::LeaseNotFound(id(9)));
    assert_eq!(fx, Effects::default());
    assert_eq!(c, Coordinator::default());
    // On a held lock, waiting or not.
    grant(&mut c, 1, 5_000, 2);
    apply(&mut c, acquire(&key, 12, 1, false), 3, 0);
    let before = c.clone();
    for wait in [false, true] {
        let (out, fx) = apply(&mut c, acquire(&key, 13, 9, wait), 4, 0);
        assert_eq!(out, Outcome::LeaseNotFound(id(9)));
        assert_eq!(fx, Effects::default());
        assert_eq!(c, before);
    }
}

#[test]
fn acquire_with_unknown_lease_after_a_passed_delay_grants_nobody() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    grant(&mut c, 2, 5_000, 2);
    apply(&mut c, acquire(&key, 11, 1, false), 3, 0);
    apply(&mut c, acquire(&key, 12, 2, true), 4, 0);
    apply(&mut c, expire(&[1]), 5, 10_000);
    let before = c.clone();
    let (out, fx) = apply(&mut c, acquire(&key, 13, 9, true), 6, 20_000);
    assert_eq!(out, Outcome::LeaseNotFound(id(9)));
    assert_eq!(fx, Effects::default());
    assert_eq!(c, before);
}

#[test]
fn retried_acquire_of_a_granted_ticket_returns_the_same_grant() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    let first = granted(apply(&mut c, acquire(&key, 11, 1, false), 2, 0).0);
    let before = c.clone();
    for wait in [false, true] {
        let mut retry = acquire(&key, 11, 1, wait);
        if let Command::Acquire(a) = &mut retry {
            a.holder = "changed".to_owned();
        }
        let (out, fx) = apply(&mut c, retry, 5, 900);
        assert_eq!(out, Outcome::Granted(first.clone()));
        assert_eq!(fx, Effects::default());
        assert_eq!(c, before);
    }
}

#[test]
fn retried_own_lease_acquire_returns_the_same_grant_without_a_second_lease() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    let first = granted(apply(&mut c, acquire_own(&key, 11, 21, false), 1, 0).0);
    let before = c.clone();
    let (out, fx) = apply(&mut c, acquire_own(&key, 11, 21, false), 2, 0);
    assert_eq!(out, Outcome::Granted(first));
    assert_eq!(fx, Effects::default());
    assert_eq!(c, before);
}

#[test]
fn retried_acquire_of_a_queued_ticket_keeps_its_place_and_never_queues_twice() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    for n in 1..=3 {
        grant(&mut c, n, 5_000, n as u64);
    }
    apply(&mut c, acquire(&key, 11, 1, false), 4, 0);
    apply(&mut c, acquire(&key, 12, 2, true), 5, 0);
    apply(&mut c, acquire_own(&key, 13, 23, true), 6, 0);
    let before = c.clone();
    let (out, fx) = apply(&mut c, acquire(&key, 12, 2, true), 7, 0);
    assert_eq!(out, Outcome::Queued { position: 0 });
    assert_eq!(fx, Effects::default());
    let (out, fx) = apply(&mut c, acquire_own(&key, 13, 23, true), 7, 0);
    assert_eq!(out, Outcome::Queued { position: 1 });
    assert_eq!(fx, Effects::default(), "no second own lease");
    assert_eq!(c, before);
    // After the one ahead leaves, the retry reports the new place.
    apply(&mut c, withdraw(&key, 12, false), 8, 0);
    let (out, _) = apply(&mut c, acquire_own(&key, 13, 23, true), 9, 0);
    assert_eq!(out, Outcome::Queued { position: 0 });
    assert_eq!(waiting(&c, &key), vec![ticket(13)]);
}

#[test]
fn retried_acquire_after_being_granted_from_the_queue_returns_that_grant() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    grant(&mut c, 2, 5_000, 2);
    apply(&mut c, acquire(&key, 11, 1, false), 3, 0);
    apply(&mut c, acquire(&key, 12, 2, true), 4, 0);
    apply(&mut c, release(&key, 3), 5, 0);
    let hold = holder(&c, &key).cloned().unwrap();
    assert_eq!((hold.ticket, hold.token), (ticket(12), 5));
    let before = c.clone();
    let (out, fx) = apply(&mut c, acquire(&key, 12, 2, true), 6, 0);
    assert_eq!(out, Outcome::Granted(hold));
    assert_eq!(fx, Effects::default());
    assert_eq!(c, before);
}

#[test]
fn same_lease_acquiring_again_takes_over_the_hold_with_the_same_token() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    let first = granted(apply(&mut c, acquire(&key, 11, 1, false), 2, 20).0);
    let (out, fx) = apply(&mut c, acquire(&key, 12, 1, false), 5, 50);
    let hold = granted(out);
    assert_eq!(
        hold,
        Hold {
            ticket: ticket(12),
            holder: "t12".to_owned(),
            ..first.clone()
        },
        "same token, same grant index; new ticket and text"
    );
    assert_eq!(holder(&c, &key), Some(&hold));
    assert_eq!(c.last_token(), 2, "no new token");
    assert_eq!(c.lock(&key).unwrap().modify_index, 5);
    assert_eq!(fx.changed, key_set([&key]));
    assert_eq!(fx.woken, vec![ticket(11)], "the replaced request is woken");
    assert!(fx.granted.is_empty() && fx.ended.is_empty());
    // The old ticket no longer holds: withdrawing it changes nothing.
    let before = c.clone();
    assert_eq!(
        apply(&mut c, withdraw(&key, 11, true), 6, 0).0,
        Outcome::Withdrawn
    );
    assert_eq!(c, before);
    // The token still releases.
    assert_eq!(
        apply(&mut c, release(&key, first.token), 7, 0).0,
        Outcome::Released(hold)
    );
}

#[test]
fn same_lease_acquiring_again_takes_over_its_queue_place() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    for n in 1..=3 {
        grant(&mut c, n, 5_000, n as u64);
    }
    apply(&mut c, acquire(&key, 11, 1, false), 4, 0);
    apply(&mut c, acquire(&key, 12, 2, true), 5, 0);
    apply(&mut c, acquire(&key, 13, 3, true), 6, 0);
    let (out, fx) = apply(&mut c, acquire(&key, 22, 2, true), 7, 70);
    assert_eq!(out, Outcome::Queued { position: 0 });
    assert_eq!(fx.changed, key_set([&key]));
    let lock = c.lock(&key).unwrap();
    assert_eq!(waiting(&c, &key), vec![ticket(22), ticket(13)]);
    let w = lock.waiters.front().unwrap();
    assert_eq!((w.lease, w.holder.as_str()), (id(2), "t22"));
    assert_eq!(
        (w.queued_index, w.queued_at_ms),
        (5, 0),
        "the place keeps its age"
    );
    assert_eq!(lock.modify_index, 7);
    // The new ticket is what gets granted.
    apply(&mut c, release(&key, 4), 8, 0);
    assert_eq!(holder(&c, &key).unwrap().ticket, ticket(22));
}

#[test]
fn own_lease_acquire_never_takes_over_another_request() {
    // An own lease is new by construction; another request of the same client on an
    // existing lease is not affected by it.
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    apply(&mut c, acquire(&key, 11, 1, false), 2, 0);
    let (out, _) = apply(&mut c, acquire_own(&key, 12, 22, true), 3, 0);
    assert_eq!(out, Outcome::Queued { position: 0 });
    assert_eq!(holder(&c, &key).unwrap().ticket, ticket(11));
}

// ---------------------------------------------------------------------------------------
// Release
// ---------------------------------------------------------------------------------------

#[test]
fn release_without_waiters_frees_the_lock() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    let hold = granted(apply(&mut c, acquire(&key, 11, 1, false), 2, 0).0);
    let (out, fx) = apply(&mut c, release(&key, hold.token), 3, 0);
    assert_eq!(out, Outcome::Released(hold));
    assert_eq!(c.lock(&key), None);
    assert_eq!(c.lock_index(&key), 3);
    assert_eq!(fx.changed, key_set([&key]));
    assert!(fx.woken.is_empty() && fx.ended.is_empty());
    assert!(c.lease(&id(1)).is_some(), "an existing lease survives");
    assert!(bound_to(&c, 1).is_empty());
}

#[test]
fn release_grants_the_next_waiter_with_a_higher_token() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    grant(&mut c, 2, 5_000, 2);
    let first = granted(apply(&mut c, acquire(&key, 11, 1, false), 3, 0).0);
    apply(&mut c, acquire(&key, 12, 2, true), 4, 0);
    let (out, fx) = apply(&mut c, release(&key, first.token), 10, 777);
    assert_eq!(out, Outcome::Released(first.clone()));
    assert_eq!(fx.woken, vec![ticket(12)]);
    assert_eq!(fx.handed, vec![id(2)], "its lease gets a fresh countdown");
    assert_eq!(fx.changed, key_set([&key]));
    let next = holder(&c, &key).cloned().unwrap();
    assert_eq!(
        next,
        Hold {
            ticket: ticket(12),
            token: 10,
            lease: id(2),
            own_lease: false,
            holder: "t12".to_owned(),
            lock_delay_ms: 1_000,
            granted_index: 10,
            granted_at_ms: 777,
        }
    );
    assert!(next.token > first.token);
    assert!(waiting(&c, &key).is_empty());
    assert_eq!(c.lock(&key).unwrap().modify_index, 10);
    assert_eq!(bound_to(&c, 1), BTreeSet::new());
    assert_eq!(bound_to(&c, 2), key_set([&key]));
}

#[test]
fn release_with_wrong_token_is_token_mismatch_and_changes_nothing() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    grant(&mut c, 2, 5_000, 2);
    let old = granted(apply(&mut c, acquire(&key, 11, 1, false), 3, 0).0);
    apply(&mut c, release(&key, old.token), 4, 0);
    apply(&mut c, acquire(&key, 12, 2, false), 5, 0);
    apply(&mut c, acquire(&key, 13, 1, true), 6, 0);
    let before = c.clone();
    for token in [old.token, 6, 0, u64::MAX] {
        let (out, fx) = apply(&mut c, release(&key, token), 7, 0);
        assert_eq!(
            out,
            Outcome::TokenMismatch(before.lock(&key).cloned().unwrap())
        );
        assert_eq!(fx, Effects::default());
        assert_eq!(c, before);
    }
    // On a free lock the mismatch carries an empty state.
    let free = Key::lock("free");
    let (out, fx) = apply(&mut c, release(&free, 5), 8, 0);
    assert_eq!(out, Outcome::TokenMismatch(LockState::default()));
    assert_eq!(fx, Effects::default());
    assert_eq!(c, before);
}

#[test]
fn release_of_own_lease_hold_revokes_that_lease() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 2, 5_000, 1);
    let hold = granted(apply(&mut c, acquire_own(&key, 11, 21, false), 2, 0).0);
    apply(&mut c, acquire(&key, 12, 2, true), 3, 0);
    let (out, fx) = apply(&mut c, release(&key, hold.token), 4, 0);
    assert_eq!(out, Outcome::Released(hold));
    assert_eq!(fx.ended, vec![id(21)]);
    assert_eq!(fx.woken, vec![ticket(12)]);
    assert_eq!(c.lease(&id(21)), None);
    assert!(bound_to(&c, 21).is_empty());
    assert_eq!(
        holder(&c, &key).map(|h| (h.lease, h.token)),
        Some((id(2), 4))
    );
}

#[test]
fn release_of_existing_lease_hold_keeps_the_lease_and_its_other_locks() {
    let mut c = Coordinator::default();
    let (a, b) = (Key::lock("a"), Key::lock("b"));
    grant(&mut c, 1, 5_000, 1);
    let hold = granted(apply(&mut c, acquire(&a, 11, 1, false), 2, 0).0);
    apply(&mut c, acquire(&b, 12, 1, false), 3, 0);
    let (_, fx) = apply(&mut c, release(&a, hold.token), 4, 0);
    assert!(fx.ended.is_empty());
    assert!(c.lease(&id(1)).is_some());
    assert_eq!(holder(&c, &b).unwrap().lease, id(1));
    assert_eq!(bound_to(&c, 1), key_set([&b]));
    assert_eq!(fx.changed, key_set([&a]));
}

#[test]
fn releasing_an_own_lease_also_releases_what_it_holds_elsewhere() {
    // A client may reuse a lock's own lease for another lock: "revoked when the lock is
    // released" then ends the other hold too.
    let mut c = Coordinator::default();
    let (a, b) = (Key::lock("a"), Key::lock("b"));
    let hold = granted(apply(&mut c, acquire_own(&a, 11, 21, false), 1, 0).0);
    granted(apply(&mut c, acquire(&b, 12, 21, false), 2, 0).0);
    let (_, fx) = apply(&mut c, release(&a, hold.token), 3, 0);
    assert_eq!(fx.ended, vec![id(21)]);
    assert_eq!(c.lock(&a), None);
    assert_eq!(c.lock(&b), None, "no lock-delay: the lease was revoked");
    assert_eq!(fx.changed, key_set([&a, &b]));
}

#[test]
fn fifo_order_holds_over_many_waiters_and_releases() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    const N: u128 = 25;
    for n in 1..=N {
        grant(&mut c, n, 5_000, 1);
    }
    let mut token = granted(apply(&mut c, acquire(&key, 101, 1, false), 2, 0).0).token;
    // Arrival order is not lease order.
    let order: Vec<u128> = (2..=N).rev().collect();
    for (i, &n) in order.iter().enumerate() {
        let (out, _) = apply(&mut c, acquire(&key, 100 + n, n, true), 3 + i as u64, 0);
        assert_eq!(out, Outcome::Queued { position: i });
    }
    let mut index = 100;
    for &n in &order {
        index += 1;
        let (out, fx) = apply(&mut c, release(&key, token), index, 0);
        assert!(matches!(out, Outcome::Released(_)), "{out:?}");
        assert_eq!(fx.woken, vec![ticket(100 + n)]);
        let hold = holder(&c, &key).cloned().unwrap();
        assert_eq!(hold.lease, id(n));
        assert!(hold.token > token);
        token = hold.token;
    }
    apply(&mut c, release(&key, token), index + 1, 0);
    assert_eq!(c.lock(&key), None);
}

// ---------------------------------------------------------------------------------------
// The end of a holder's lease: revoke, expiry and lock-delay
// ---------------------------------------------------------------------------------------

/// Lease 1 holds `key` (lock-delay 1 s, granted at 3), leases 2 and 3 wait (tickets 12, 13).
fn held_with_two_waiters(key: &Key) -> Coordinator {
    let mut c = Coordinator::default();
    for n in 1..=4 {
        grant(&mut c, n, 5_000, 1);
    }
    granted(apply(&mut c, acquire(key, 11, 1, false), 3, 0).0);
    apply(&mut c, acquire(key, 12, 2, true), 4, 0);
    apply(&mut c, acquire(key, 13, 3, true), 5, 0);
    c
}

#[test]
fn revoking_a_holders_lease_releases_without_lock_delay() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    let (out, fx) = apply(&mut c, revoke(1), 6, 10_000);
    assert!(matches!(out, Outcome::LeaseRevoked(l) if l.id == id(1)));
    assert_eq!(fx.ended, vec![id(1)]);
    assert_eq!(fx.woken, vec![ticket(12)]);
    assert_eq!(fx.changed, key_set([&key]));
    let lock = c.lock(&key).unwrap();
    assert_eq!(lock.delay_until_ms, None);
    assert_eq!(
        lock.holder.as_ref().map(|h| (h.ticket, h.token)),
        Some((ticket(12), 6))
    );
    assert_eq!(waiting(&c, &key), vec![ticket(13)]);
}

#[test]
fn expiry_of_a_holders_lease_starts_lock_delay_without_granting() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    let (out, fx) = apply(&mut c, expire(&[1]), 6, 10_000);
    assert!(matches!(out, Outcome::LeasesExpired(ref ls) if ls.len() == 1));
    assert_eq!(fx.ended, vec![id(1)]);
    assert!(fx.woken.is_empty());
    assert_eq!(fx.changed, key_set([&key]));
    let lock = c.lock(&key).unwrap();
    assert_eq!(lock.holder, None);
    assert_eq!(lock.delay_until_ms, Some(11_000));
    assert_eq!(lock.modify_index, 6);
    assert_eq!(waiting(&c, &key), vec![ticket(12), ticket(13)]);
    assert_eq!(c.last_token(), 3);
}

#[test]
fn a_lock_delay_beyond_the_maximum_is_cut_to_it() {
    let key = Key::lock("a");
    let mut c = Coordinator::default();
    grant(&mut c, 1, 1_000, 1);
    apply(&mut c, acquire_delay(&key, 11, 1, false, u64::MAX), 2, 0);
    apply(&mut c, expire(&[1]), 3, 10_000);
    let lock = c.lock(&key).unwrap();
    assert_eq!(lock.delay_until_ms, Some(10_000 + MAX_LOCK_DELAY_MS));
}

#[test]
fn lock_delay_comes_from_the_expiring_holders_request() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    grant(&mut c, 2, 5_000, 2);
    apply(&mut c, acquire_delay(&key, 11, 1, false, 250), 3, 0);
    apply(&mut c, acquire_delay(&key, 12, 2, true, 9_000), 4, 0);
    apply(&mut c, expire(&[1]), 5, 1_000);
    assert_eq!(c.lock(&key).unwrap().delay_until_ms, Some(1_250));
}

#[test]
fn grant_delayed_before_the_delay_passed_does_nothing() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    apply(&mut c, expire(&[1]), 6, 10_000);
    let before = c.clone();
    let (out, fx) = apply(&mut c, grant_delayed(&[&key]), 7, 10_999);
    assert_eq!(out, Outcome::DelaysEnded(vec![]));
    assert_eq!(fx, Effects::default());
    assert_eq!(c, before);
}

#[test]
fn grant_delayed_at_the_delay_end_grants_the_first_waiter() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    apply(&mut c, expire(&[1]), 6, 10_000);
    let (out, fx) = apply(&mut c, grant_delayed(&[&key, &key]), 7, 11_000);
    assert_eq!(out, Outcome::DelaysEnded(vec![key.clone()]), "listed once");
    assert_eq!(fx.woken, vec![ticket(12)]);
    let lock = c.lock(&key).unwrap();
    assert_eq!(lock.delay_until_ms, None);
    assert_eq!(
        lock.holder
            .as_ref()
            .map(|h| (h.ticket, h.token, h.granted_at_ms)),
        Some((ticket(12), 7, 11_000))
    );
    assert_eq!(waiting(&c, &key), vec![ticket(13)]);
}

#[test]
fn grant_delayed_ignores_held_free_and_undelayed_locks() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    let before = c.clone();
    let (out, fx) = apply(
        &mut c,
        grant_delayed(&[&key, &Key::lock("free"), &Key::election("a")]),
        6,
        u64::MAX,
    );
    assert_eq!(out, Outcome::DelaysEnded(vec![]));
    assert_eq!(fx, Effects::default());
    assert_eq!(c, before);
}

#[test]
fn grant_delayed_forgets_the_delay_of_a_lock_nobody_waits_for() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    apply(&mut c, acquire(&key, 11, 1, false), 2, 0);
    apply(&mut c, expire(&[1]), 3, 10_000);
    let lock = c.lock(&key).unwrap();
    assert!(lock.holder.is_none() && lock.waiters.is_empty());
    assert_eq!(
        lock.delay_until_ms,
        Some(11_000),
        "the delay keeps the entry"
    );
    let (out, fx) = apply(&mut c, grant_delayed(&[&key]), 4, 12_000);
    assert_eq!(out, Outcome::DelaysEnded(vec![key.clone()]));
    assert!(fx.woken.is_empty());
    assert_eq!(fx.changed, key_set([&key]));
    assert_eq!(c.lock(&key), None);
    assert_eq!(c.lock_index(&key), 4);
}

#[test]
fn acquire_during_lock_delay_is_busy_or_queued_last() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    apply(&mut c, expire(&[1]), 6, 10_000);
    let before = c.clone();
    let (out, fx) = apply(&mut c, acquire(&key, 14, 4, false), 7, 10_999);
    assert_eq!(out, Outcome::Busy(before.lock(&key).cloned().unwrap()));
    assert_eq!(fx, Effects::default());
    assert_eq!(c, before);
    let (out, fx) = apply(&mut c, acquire(&key, 14, 4, true), 7, 10_999);
    assert_eq!(out, Outcome::Queued { position: 2 });
    assert!(fx.woken.is_empty());
    assert_eq!(c.lock(&key).unwrap().holder, None);
}

#[test]
fn acquire_during_lock_delay_without_waiters_is_busy() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    grant(&mut c, 2, 5_000, 2);
    apply(&mut c, acquire(&key, 11, 1, false), 3, 0);
    apply(&mut c, expire(&[1]), 4, 10_000);
    let before = c.clone();
    let (out, _) = apply(&mut c, acquire_own(&key, 12, 22, false), 5, 10_500);
    assert!(matches!(out, Outcome::Busy(ref s) if s.delay_until_ms == Some(11_000)));
    assert_eq!(c, before);
    // A waiting request is queued first in line and granted when the delay ends.
    assert_eq!(
        apply(&mut c, acquire(&key, 13, 2, true), 6, 10_500).0,
        Outcome::Queued { position: 0 }
    );
    let (_, fx) = apply(&mut c, grant_delayed(&[&key]), 7, 11_000);
    assert_eq!(fx.woken, vec![ticket(13)]);
}

#[test]
fn waiting_acquire_after_the_delay_passed_serves_queued_waiters_first() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    apply(&mut c, expire(&[1]), 6, 10_000);
    // No GrantDelayed yet: the newcomer's entry grants the first waiter and queues it last.
    let (out, fx) = apply(&mut c, acquire(&key, 14, 4, true), 7, 11_000);
    assert_eq!(out, Outcome::Queued { position: 1 });
    assert_eq!(fx.woken, vec![ticket(12)]);
    assert_eq!(fx.changed, key_set([&key]));
    let lock = c.lock(&key).unwrap();
    assert_eq!(lock.delay_until_ms, None);
    assert_eq!(
        lock.holder.as_ref().map(|h| (h.ticket, h.token)),
        Some((ticket(12), 7))
    );
    assert_eq!(waiting(&c, &key), vec![ticket(13), ticket(14)]);
}

#[test]
fn non_waiting_acquire_after_the_delay_passed_is_busy_behind_the_granted_waiter() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    apply(&mut c, expire(&[1]), 6, 10_000);
    let (out, fx) = apply(&mut c, acquire_own(&key, 14, 24, false), 7, 11_000);
    let Outcome::Busy(state) = out else {
        panic!("{out:?}")
    };
    assert_eq!(Some(&state), c.lock(&key));
    assert_eq!(
        state.holder.as_ref().map(|h| (h.ticket, h.token)),
        Some((ticket(12), 7))
    );
    assert_eq!(state.modify_index, 7, "the grant is recorded at this entry");
    assert_eq!(c.kind_index(Kind::Lock), 7);
    assert_eq!(fx.woken, vec![ticket(12)]);
    assert_eq!(fx.changed, key_set([&key]));
    assert!(
        fx.granted.is_empty(),
        "no own lease for the refused request"
    );
    assert_eq!(c.lease(&id(24)), None);
}

#[test]
fn acquire_after_the_delay_passed_on_a_lock_without_waiters_is_granted() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    grant(&mut c, 2, 5_000, 2);
    apply(&mut c, acquire(&key, 11, 1, false), 3, 0);
    apply(&mut c, expire(&[1]), 4, 10_000);
    let hold = granted(apply(&mut c, acquire(&key, 12, 2, false), 5, 11_000).0);
    assert_eq!(hold.token, 5);
    assert_eq!(c.lock(&key).unwrap().delay_until_ms, None);
    assert!(c.delays_due(u64::MAX, 10).is_empty());
}

#[test]
fn zero_lock_delay_expiry_grants_the_next_waiter_at_once() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 1, 5_000, 1);
    grant(&mut c, 2, 5_000, 2);
    apply(&mut c, acquire_delay(&key, 11, 1, false, 0), 3, 0);
    apply(&mut c, acquire(&key, 12, 2, true), 4, 0);
    let (_, fx) = apply(&mut c, expire(&[1]), 5, 10_000);
    assert_eq!(fx.woken, vec![ticket(12)]);
    let lock = c.lock(&key).unwrap();
    assert_eq!(lock.delay_until_ms, None);
    assert_eq!(lock.holder.as_ref().map(|h| h.token), Some(5));
    // Without waiters the lock is simply free.
    let hold = holder(&c, &key).cloned().unwrap();
    assert_eq!(hold.lock_delay_ms, 1_000);
    apply(&mut c, release(&key, hold.token), 6, 0);
    apply(&mut c, acquire_delay(&key, 13, 2, false, 0), 7, 0);
    apply(&mut c, expire(&[2]), 8, 20_000);
    assert_eq!(c.lock(&key), None);
    assert_eq!(c.lock_index(&key), 8);
}

#[test]
fn expiry_of_an_own_lease_holder_starts_lock_delay_and_ends_the_lease_once() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    apply(&mut c, acquire_own(&key, 11, 21, false), 1, 0);
    let (out, fx) = apply(&mut c, expire(&[21]), 2, 5_000);
    assert!(matches!(out, Outcome::LeasesExpired(ref ls) if ls.len() == 1));
    assert_eq!(fx.ended, vec![id(21)]);
    assert_eq!(c.lock(&key).unwrap().delay_until_ms, Some(6_000));
}

#[test]
fn a_waiters_lease_ending_removes_it_from_the_queue() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    apply(&mut c, acquire(&key, 14, 4, true), 6, 0);
    let holder_before = holder(&c, &key).cloned();
    let (_, fx) = apply(&mut c, revoke(3), 7, 0);
    assert_eq!(fx.woken, vec![ticket(13)]);
    assert_eq!(fx.ended, vec![id(3)]);
    assert_eq!(fx.changed, key_set([&key]));
    assert_eq!(waiting(&c, &key), vec![ticket(12), ticket(14)]);
    assert_eq!(holder(&c, &key).cloned(), holder_before);
    let lock = c.lock(&key).unwrap();
    assert_eq!((lock.delay_until_ms, lock.modify_index), (None, 7));
    // Expiry of a waiter's lease: the same, and no lock-delay.
    let (_, fx) = apply(&mut c, expire(&[2]), 8, 0);
    assert_eq!(fx.woken, vec![ticket(12)]);
    assert_eq!(waiting(&c, &key), vec![ticket(14)]);
    assert_eq!(holder(&c, &key).cloned(), holder_before);
    assert_eq!(c.lock(&key).unwrap().delay_until_ms, None);
    assert_eq!(c.last_token(), 3);
}

#[test]
fn the_last_waiter_leaving_a_delayed_lock_keeps_the_delay() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    apply(&mut c, expire(&[1]), 6, 10_000);
    apply(&mut c, revoke(2), 7, 10_100);
    apply(&mut c, revoke(3), 8, 10_200);
    let lock = c.lock(&key).unwrap();
    assert!(lock.waiters.is_empty() && lock.holder.is_none());
    assert_eq!(lock.delay_until_ms, Some(11_000));
    assert_eq!(c.delays_due(11_000, 10), vec![key]);
}

#[test]
fn expiry_of_a_lease_bound_to_several_locks_releases_all_of_them() {
    let mut c = Coordinator::default();
    let (a, b, d) = (Key::lock("a"), Key::lock("b"), Key::lock("d"));
    let e = Key::election("a");
    for n in 1..=3 {
        grant(&mut c, n, 5_000, 1);
    }
    apply(&mut c, acquire(&a, 11, 1, false), 2, 0);
    apply(&mut c, acquire(&b, 12, 1, false), 3, 0);
    apply(&mut c, acquire(&e, 13, 1, false), 4, 0);
    apply(&mut c, acquire(&d, 21, 2, false), 5, 0);
    apply(&mut c, acquire(&d, 14, 1, true), 6, 0);
    apply(&mut c, acquire(&a, 31, 3, true), 7, 0);
    assert_eq!(bound_to(&c, 1), key_set([&a, &b, &d, &e]));
    let (_, fx) = apply(&mut c, expire(&[1]), 8, 5_000);
    assert_eq!(fx.ended, vec![id(1)]);
    assert_eq!(fx.woken, vec![ticket(14)], "only the dropped waiter");
    assert_eq!(fx.changed, key_set([&a, &b, &d, &e]));
    for key in [&a, &b, &e] {
        let lock = c.lock(key).unwrap();
        assert_eq!(lock.holder, None, "{key:?}");
        assert_eq!(lock.delay_until_ms, Some(6_000), "{key:?}");
    }
    assert_eq!(waiting(&c, &a), vec![ticket(31)]);
    assert_eq!(waiting(&c, &d), Vec::<Ticket>::new());
    assert_eq!(holder(&c, &d).unwrap().ticket, ticket(21));
    assert!(bound_to(&c, 1).is_empty());
    assert_eq!(c.kind_index(Kind::Lock), 8);
    assert_eq!(c.kind_index(Kind::Election), 8);
}

#[test]
fn revoke_of_a_lease_holding_several_locks_grants_each_with_increasing_tokens() {
    let mut c = Coordinator::default();
    let (a, b) = (Key::lock("a"), Key::lock("b"));
    for n in 1..=3 {
        grant(&mut c, n, 5_000, 1);
    }
    apply(&mut c, acquire(&a, 11, 1, false), 2, 0);
    apply(&mut c, acquire(&b, 12, 1, false), 3, 0);
    apply(&mut c, acquire(&a, 21, 2, true), 4, 0);
    apply(&mut c, acquire(&b, 31, 3, true), 5, 0);
    let (_, fx) = apply(&mut c, revoke(1), 10, 0);
    assert_eq!(fx.woken, vec![ticket(21), ticket(31)]);
    assert_eq!(holder(&c, &a).map(|h| h.token), Some(10));
    assert_eq!(holder(&c, &b).map(|h| h.token), Some(11));
    assert_eq!(c.last_token(), 11);
}

#[test]
fn expiry_of_holder_and_next_waiter_in_one_entry_leaves_a_delay() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    // Lease 1 (holder) and lease 2 (first waiter) expire together: 2 never holds.
    let (_, fx) = apply(&mut c, expire(&[1, 2]), 6, 10_000);
    assert_eq!(fx.ended, vec![id(1), id(2)]);
    assert_eq!(fx.woken, vec![ticket(12)]);
    assert_eq!(c.lock(&key).unwrap().holder, None);
    assert_eq!(waiting(&c, &key), vec![ticket(13)]);
    assert_eq!(c.last_token(), 3);
}

// ---------------------------------------------------------------------------------------
// Withdraw
// ---------------------------------------------------------------------------------------

#[test]
fn withdraw_removes_a_queued_waiter_and_keeps_its_existing_lease() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    let (out, fx) = apply(&mut c, withdraw(&key, 12, false), 6, 0);
    assert_eq!(out, Outcome::Withdrawn);
    assert_eq!(waiting(&c, &key), vec![ticket(13)]);
    assert_eq!(holder(&c, &key).unwrap().ticket, ticket(11));
    assert!(c.lease(&id(2)).is_some());
    assert!(bound_to(&c, 2).is_empty());
    assert_eq!(fx.changed, key_set([&key]));
    assert!(fx.woken.is_empty() && fx.ended.is_empty());
    assert_eq!(c.lock(&key).unwrap().modify_index, 6);
    // The one behind moved up.
    assert_eq!(
        apply(&mut c, acquire(&key, 13, 3, true), 7, 0).0,
        Outcome::Queued { position: 0 }
    );
}

#[test]
fn withdraw_of_a_queued_own_lease_request_revokes_its_lease() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    apply(&mut c, acquire_own(&key, 14, 24, true), 6, 0);
    let (out, fx) = apply(&mut c, withdraw(&key, 14, true), 7, 0);
    assert_eq!(out, Outcome::Withdrawn);
    assert_eq!(fx.ended, vec![id(24)]);
    assert_eq!(c.lease(&id(24)), None);
    assert!(bound_to(&c, 24).is_empty());
    assert_eq!(waiting(&c, &key), vec![ticket(12), ticket(13)]);
}

#[test]
fn withdraw_of_a_granted_ticket_without_release_keeps_the_grant() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    let before = c.clone();
    let (out, fx) = apply(&mut c, withdraw(&key, 11, false), 6, 0);
    assert_eq!(
        out,
        Outcome::Granted(holder(&before, &key).cloned().unwrap())
    );
    assert_eq!(fx, Effects::default());
    assert_eq!(c, before);
}

#[test]
fn withdraw_of_a_granted_ticket_with_release_releases_and_grants_the_next() {
    let mut c = Coordinator::default();
    let key = Key::lock("a");
    grant(&mut c, 2, 5_000, 1);
    let hold = granted(apply(&mut c, acquire_own(&key, 11, 21, false), 2, 0).0);
    apply(&mut c, acquire(&key, 12, 2, true), 3, 0);
    let (out, fx) = apply(&mut c, withdraw(&key, 11, true), 4, 10_000);
    assert_eq!(out, Outcome::Released(hold));
    assert_eq!(fx.woken, vec![ticket(12)]);
    assert_eq!(fx.ended, vec![id(21)]);
    let lock = c.lock(&key).unwrap();
    assert_eq!(lock.delay_until_ms, None, "a withdrawal is no expiry");
    assert_eq!(
        lock.holder.as_ref().map(|h| (h.ticket, h.token)),
        Some((ticket(12), 4))
    );
}

#[test]
fn withdraw_of_an_unknown_ticket_is_a_noop() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    let before = c.clone();
    for (k, t) in [(&key, 99), (&Key::lock("b"), 12), (&Key::election("a"), 11)] {
        for release_if_granted in [false, true] {
            let (out, fx) = apply(&mut c, withdraw(k, t, release_if_granted), 6, 0);
            assert_eq!(out, Outcome::Withdrawn);
            assert_eq!(fx, Effects::default());
            assert_eq!(c, before);
        }
    }
}

#[test]
fn withdraw_of_the_first_waiter_after_the_delay_passed_grants_the_next() {
    let key = Key::lock("a");
    let mut c = held_with_two_waiters(&key);
    apply(&mut c, expire(&[1]), 6, 10_000);
    // Before the delay ends, the next waiter only moves up.
    let mut early = c.clone();
    let (_, fx) = apply(&mut early, withdraw(&key, 12, false), 7, 10_500);
    assert!(fx.woken.is_empty());
    assert_eq!(early.lock(&key).unwrap().holder, None);
    assert_eq!(early.lock(&key).unwrap().delay_until_ms, Some(11_000));
    assert_eq!(waiting(&early, &key), vec![ticket(13)]);
    // After it, the next waiter is granted in the same entry.
    let (_, fx) = apply(&mut c, withdraw(&key, 12, false), 7, 11_000);
    assert_eq!(fx.woken, vec![ticket(13)]);
    let lock = c.lock(&key).unwrap();
    assert_eq!(lock.delay_until_ms, None);
    assert_eq!(
        lock.holder.as_ref().map(|h| (h.ticket, h.token)),
        Some((ticket(13), 7))
    );
}

// ---------------------------------------------------------------------------------------
// Proclaim
// ---------------------------------------------------------------------------------------

#[test]
fn proclaim_with_the_holders_token_changes_its_text() {
    let key = Key::election("leader");
    let mut c = Coordinator::default();
    grant(&mut c, 1, 5_000, 1);
    let hold = granted(apply(&mut c, acquire(&key, 11, 1, false), 2, 0).0);
    let (out, fx) = apply(&mut c, proclaim(&key, hold.token, "10.0.0.7:80"), 5, 0);
    let expected = Hold {
        holder: "10.0.0.7:80".to_owned(),
        ..hold.clone()
    };
    assert_eq!(out, Outcome::Proclaimed(expected.clone()));
    assert_eq!(holder(&c, &key), Some(&expected));
    assert_eq!(fx.changed, key_set([&key]));
    assert_eq!(c.lock(&key).unwrap().modify_index, 5);
    assert_eq!(c.kind_index(Kind::Election), 5);
    assert_eq!(c.last_token(), hold.token, "no new token");
}

#[test]
fn proclaim_with_a_wrong_token_is_token_mismatch() {
    let key = Key::election("leader");
    let mut c = held_with_two_waiters(&key);
    let before = c.clone();
    let (out, fx) = apply(&mut c, proclaim(&key, 4, "x"), 6, 0);
    assert_eq!(
        out,
        Outcome::TokenMismatch(before.lock(&key).cloned().unwrap())
    );
    assert_eq!(fx, Effects::default());
    assert_eq!(c, before);
    let (out, _) = apply(&mut c, proclaim(&Key::election("none"), 3, "x"), 6, 0);
    assert_eq!(out, Outcome::TokenMismatch(LockState::default()));
    // The same name as a lock is another lock: the election's token does not fit it.
    let (out, _) = apply(&mut c, proclaim(&Key::lock("leader"), 3, "x"), 6, 0);
    assert_eq!(out, Outcome::TokenMismatch(LockState::default()));
    assert_eq!(c, before);
}

// ---------------------------------------------------------------------------------------
// Elections, indexes, effects, tokens
// ---------------------------------------------------------------------------------------

#[test]
fn elections_and_locks_with_the_same_name_are_separate() {
    let mut c = Coordinator::default();
    let (lock, election) = (Key::lock("a"), Key::election("a"));
    grant(&mut c, 1, 5_000, 1);
    grant(&mut c, 2, 5_000, 2);
    let l = granted(apply(&mut c, acquire(&lock, 11, 1, false), 3, 0).0);
    let e = granted(apply(&mut c, acquire(&election, 12, 2, false), 4, 0).0);
    assert_eq!((l.token, e.token), (3, 4));
    let locks: Vec<&Key> = c.locks(Kind::Lock).map(|(k, _)| k).collect();
    let elections: Vec<&Key> = c.locks(Kind::Election).map(|(k, _)| k).collect();
    assert_eq!(locks, vec![&lock]);
    assert_eq!(elections, vec![&election]);
    assert_eq!(
        (c.kind_index(Kind::Lock), c.kind_index(Kind::Election)),
        (3, 4)
    );
    // Releasing the lock leaves the election alone.
    let (_, fx) = apply(&mut c, release(&lock, l.token), 5, 0);
    assert_eq!(fx.changed, key_set([&lock]));
    assert_eq!(c.lock(&lock), None);
    assert_eq!(holder(&c, &election), Some(&e));
    assert_eq!(
        (c.kind_index(Kind::Lock), c.kind_index(Kind::Election)),
        (5, 4)
    );
    // The election's token does not release the lock's name.
    assert_eq!(
        apply(&mut c, release(&lock, e.token), 6, 0).0,
        Outcome::TokenMismatch(LockState::default())
    );
}

#[test]
fn free_lock_has_no_entry_and_its_index_is_at_least_when_it_became_free() {
    let mut c = Coordinator::default();
    let (a, b) = (Key::lock("a"), Key::lock("b"));
    assert_eq!(c.lock(&a), None);
    assert_eq!(c.lock_index(&a), 0);
    grant(&mut c, 1, 5_000, 1);
    let hold = granted(apply(&mut c, acquire(&a, 11, 1, false), 2, 0).0);
    assert_eq!(c.lock_index(&a), 2);
    apply(&mut c, release(&a, hold.token), 3, 0);
    assert_eq!(c.lock(&a), None);
    assert_eq!(c.locks(Kind::Lock).count(), 0);
    assert_eq!(c.lock_index(&a), 3);
    // A change to another lock moves a free lock's index on (never back).
    apply(&mut c, acquire(&b, 12, 1, false), 9, 0);
    assert_eq!(c.lock_index(&a), 9);
    assert_eq!(c.lock_index(&b), 9);
    // An election change does not.
    apply(&mut c, acquire(&Key::election("a"), 13, 1, false), 12, 0);
    assert_eq!(c.lock_index(&a), 9);
    assert_eq!(c.lock_index(&Key::election("other")), 12);
    // A held lock reports its own last change.
    apply(&mut c, acquire(&Key::lock("c"), 14, 1, false), 13, 0);
    assert_eq!(c.lock_index(&b), 9);
    assert_eq!(c.kind_index(Kind::Lock), 13);
}

#[test]
fn effects_list_exactly_what_changed() {
    let mut c = Coordinator::default();
    let (a, b) = (Key::lock("a"), Key::lock("b"));
    let (_, fx) = apply(
        &mut c,
        Command::GrantLease {
            id: id(1),
            ttl_ms: 5_000,
        },
        1,
        0,
    );
    assert!(fx.changed.is_empty() && fx.ended.is_empty() && fx.woken.is_empty());
    grant(&mut c, 2, 5_000, 2);
    let (_, fx) = apply(&mut c, acquire(&a, 11, 1, false), 3, 0);
    assert_eq!(fx.changed, key_set([&a]));
    let (_, fx) = apply(&mut c, acquire(&b, 12, 1, false), 4, 0);
    assert_eq!(fx.changed, key_set([&b]));
    let (_, fx) = apply(&mut c, acquire(&a, 21, 2, false), 5, 0);
    assert!(fx.changed.is_empty(), "busy: nothing changed");
    let (_, fx) = apply(&mut c, acquire(&a, 22, 2, true), 6, 0);
    assert_eq!(fx.changed, key_set([&a]));
    let (_, fx) = apply(&mut c, revoke(1), 7, 0);
    assert_eq!(fx.changed, key_set([&a, &b]));
    assert_eq!(fx.ended, vec![id(1)]);
    assert_eq!(fx.woken, vec![ticket(22)]);
    assert!(fx.granted.is_empty());
    let (_, fx) = apply(&mut c, grant_delayed(&[&a, &b]), 8, u64::MAX);
    assert_eq!(fx, Effects::default());
}

#[test]
fn effects_accumulate_over_an_entry_sharing_one_effects_value() {
    let mut c = Coordinator::default();
    let (a, b) = (Key::lock("a"), Key::lock("b"));
    let mut fx = Effects::default();
    c.apply(acquire_own(&a, 11, 21, false), 5, 0, &mut fx);
    c.apply(acquire_own(&b, 12, 22, false), 5, 0, &mut fx);
    c.apply(revoke(21), 5, 0, &mut fx);
    assert_eq!(
        fx.granted.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![id(21), id(22)]
    );
    assert_eq!(fx.ended, vec![id(21)]);
    assert_eq!(fx.changed, key_set([&a, &b]));
    assert_eq!(holder(&c, &b).map(|h| h.token), Some(6));
}

#[test]
fn tokens_strictly_increase_over_grants_of_all_kinds_in_one_entry() {
    let mut c = Coordinator::default();
    let (a, b, e) = (Key::lock("a"), Key::lock("b"), Key::election("a"));
    for n in 1..=4 {
        grant(&mut c, n, 5_000, 1);
    }
    let mut fx = Effects::default();
    let mut tokens = Vec::new();
    tokens.push(granted(c.apply(acquire(&a, 11, 1, false), 10, 0, &mut fx)).token);
    tokens.push(granted(c.apply(acquire(&b, 12, 2, false), 10, 0, &mut fx)).token);
    tokens.push(granted(c.apply(acquire(&e, 13, 3, false), 10, 0, &mut fx)).token);
    c.apply(acquire(&a, 14, 4, true), 10, 0, &mut fx);
    c.apply(release(&a, tokens[0]), 10, 0, &mut fx);
    tokens.push(holder(&c, &a).unwrap().token);
    assert_eq!(tokens, vec![10, 11, 12, 13]);
    assert_eq!(c.last_token(), 13);
    // An entry whose index the overflow already used continues after it…
    c.apply(release(&a, 13), 12, 0, &mut fx);
    let t = granted(c.apply(acquire(&a, 15, 1, false), 12, 0, &mut fx)).token;
    assert_eq!(t, 14);
    // …and a later index is used as is again.
    c.apply(release(&a, t), 20, 0, &mut fx);
    let t = granted(c.apply(acquire(&a, 16, 1, false), 20, 0, &mut fx)).token;
    assert_eq!(t, 20);
}

#[test]
fn delays_due_lists_unheld_locks_past_their_delay_in_key_order_up_to_max() {
    let mut c = Coordinator::default();
    let keys: Vec<Key> = ["d", "a", "c", "b"].into_iter().map(Key::lock).collect();
    let delays = [100, 300, 200, 400];
    for (n, (key, delay)) in keys.iter().zip(delays).enumerate() {
        let n = n as u128 + 1;
        grant(&mut c, n, 5_000, 1);
        apply(&mut c, acquire_delay(key, 10 + n, n, false, delay), 2, 0);
    }
    grant(&mut c, 9, 5_000, 3);
    apply(&mut c, acquire(&Key::lock("held"), 19, 9, false), 4, 0);
    apply(&mut c, expire(&[1, 2, 3, 4]), 5, 1_000);
    assert!(c.delays_due(1_099, 10).is_empty());
    assert_eq!(c.delays_due(1_100, 10), vec![Key::lock("d")]);
    assert_eq!(
        c.delays_due(1_300, 10),
        vec![Key::lock("a"), Key::lock("c"), Key::lock("d")]
    );
    assert_eq!(c.delays_due(2_000, 2), vec![Key::lock("a"), Key::lock("b")]);
    assert_eq!(c.delays_due(2_000, 10).len(), 4);
}

// ---------------------------------------------------------------------------------------
// Randomized command sequences
// ---------------------------------------------------------------------------------------
//
// serde_json is not a dependency of this crate, so the snapshot round trip of the
// Coordinator is not checked here.

/// xorshift64: a tiny deterministic generator, so any failure reproduces from its seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Leases 1..=POOL are granted and ended by lease commands; own leases get fresh ids.
const POOL: usize = 6;
const UNKNOWN_LEASE: u128 = 99;
const FIRST_OWN_LEASE: u128 = 1_000;
const FIRST_TICKET: u128 = 1_000_000;

/// Makes random commands that look at the current state only to find right tokens.
#[derive(Debug)]
struct Gen {
    rng: Rng,
    keys: Vec<Key>,
    /// Own-lease ids made so far (a client may name them as existing leases later).
    own_ids: Vec<u128>,
    next_own: u128,
    next_ticket: u128,
    /// Every acquire made so far, for retries and withdrawals.
    acquires: Vec<Acquire>,
}

impl Gen {
    fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            keys: vec![
                Key::lock("a"),
                Key::lock("b"),
                Key::lock("c"),
                Key::election("a"),
            ],
            own_ids: Vec::new(),
            next_own: FIRST_OWN_LEASE,
            next_ticket: FIRST_TICKET,
            acquires: Vec::new(),
        }
    }

    fn some_lease(&mut self) -> u128 {
        match self.rng.below(100) {
            0..=79 => 1 + self.rng.below(POOL) as u128,
            80..=94 if !self.own_ids.is_empty() => *self.rng.pick(&self.own_ids),
            _ => UNKNOWN_LEASE,
        }
    }

    fn some_token(&mut self, c: &Coordinator, key: &Key) -> u64 {
        match (holder(c, key), self.rng.below(100)) {
            (Some(h), 0..=69) => h.token,
            (_, 70..=79) => 0,
            _ => self.rng.below(c.last_token() as usize + 2) as u64,
        }
    }

    fn fresh_acquire(&mut self, key: Key) -> Command {
        let ticket_n = self.next_ticket;
        self.next_ticket += 1;
        let binding = if self.rng.chance(30) {
            let n = self.next_own;
            self.next_own += 1;
            self.own_ids.push(n);
            Binding::Own {
                id: id(n),
                ttl_ms: 1_000,
            }
        } else {
            Binding::Existing(id(self.some_lease()))
        };
        let acquire = Acquire {
            key,
            ticket: ticket(ticket_n),
            binding,
            holder: format!("h{ticket_n}"),
            wait: self.rng.chance(60),
            lock_delay_ms: *self.rng.pick(&[0, 0, 200, 500, 1_500]),
        };
        self.acquires.push(acquire.clone());
        Command::Acquire(acquire)
    }

    fn command(&mut self, c: &Coordinator, now_ms: u64) -> Command {
        let key = self.rng.pick(&self.keys).clone();
        match self.rng.below(100) {
            0..=9 => Command::GrantLease {
                id: id(1 + self.rng.below(POOL) as u128),
                ttl_ms: 1_000,
            },
            10..=13 => Command::RevokeLease {
                id: id(self.some_lease()),
            },
            14..=19 => {
                let n = self.rng.below(4);
                Command::ExpireLeases {
                    ids: (0..n).map(|_| id(self.some_lease())).collect(),
                }
            }
            20..=49 => self.fresh_acquire(key),
            50..=54 if !self.acquires.is_empty() => {
                // A retried proposal, usually of a recent request.
                let recent = self.acquires.len().saturating_sub(4);
                let i = if self.rng.chance(80) {
                    recent + self.rng.below(self.acquires.len() - recent)
                } else {
                    self.rng.below(self.acquires.len())
                };
                Command::Acquire(self.acquires[i].clone())
            }
            50..=69 => Command::Release {
                token: self.some_token(c, &key),
                key,
            },
            70..=81 => {
                let (key, ticket_n) = match self.acquires.len() {
                    0 => (key, 7),
                    n if self.rng.chance(85) => {
                        let a = &self.acquires[self.rng.below(n)];
                        let key = if self.rng.chance(90) {
                            a.key.clone()
                        } else {
                            key
                        };
                        (key, a.ticket.as_u128())
                    }
                    _ => (key, 7),
                };
                withdraw(&key, ticket_n, self.rng.chance(50))
            }
            82..=87 => {
                let text = format!("p{}", self.rng.below(5));
                Command::Proclaim {
                    token: self.some_token(c, &key),
                    key,
                    holder: text,
                }
            }
            _ => {
                let keys = if self.rng.chance(50) {
                    c.delays_due(now_ms, 10)
                } else {
                    let n = self.rng.below(4);
                    (0..n).map(|_| self.rng.pick(&self.keys).clone()).collect()
                };
                Command::GrantDelayed { keys }
            }
        }
    }
}

/// Checks what must hold of any reachable state, including the internal lease index.
fn check_invariants(c: &Coordinator) {
    let mut bound: BTreeMap<LeaseId, BTreeSet<Key>> = BTreeMap::new();
    let mut tickets = BTreeSet::new();
    let mut tokens = BTreeSet::new();
    for (key, lock) in &c.locks {
        assert!(!lock.is_free(), "a free lock keeps an entry: {key:?}");
        assert_eq!(c.lock(key), Some(lock));
        assert_eq!(c.lock_index(key), lock.modify_index);
        assert!(lock.modify_index <= c.kind_index(key.kind), "{key:?}");
        let mut leases = BTreeSet::new();
        match &lock.holder {
            Some(h) => {
                assert!(c.lease(&h.lease).is_some(), "{key:?} held on a dead lease");
                assert!(h.token <= c.last_token());
                assert!(tokens.insert(h.token), "token {} held twice", h.token);
                assert!(tickets.insert(h.ticket), "ticket {} twice", h.ticket);
                assert_eq!(lock.delay_until_ms, None, "{key:?} held during a delay");
                leases.insert(h.lease);
            }
            None => assert!(
                lock.waiters.is_empty() || lock.delay_until_ms.is_some(),
                "{key:?} has waiters but nobody holds it and nothing delays it"
            ),
        }
        for w in &lock.waiters {
            assert!(
                c.lease(&w.lease).is_some(),
                "{key:?} waiter on a dead lease"
            );
            assert!(leases.insert(w.lease), "{key:?}: lease {} twice", w.lease);
            assert!(tickets.insert(w.ticket), "ticket {} twice", w.ticket);
        }
        for lease in leases {
            bound.entry(lease).or_default().insert(key.clone());
        }
    }
    assert_eq!(
        c.bound,
        imbl::OrdMap::from(bound),
        "lease index out of step with the locks"
    );
    for kind in [Kind::Lock, Kind::Election] {
        assert!(c.locks(kind).all(|(k, _)| k.kind == kind));
    }
    assert_eq!(
        c.locks(Kind::Lock).count() + c.locks(Kind::Election).count(),
        c.locks.len()
    );
    assert_eq!(c.lease_count(), c.leases().count());
}

/// What the random test carries from one apply to the next.
#[derive(Debug, Default)]
struct History {
    /// The entry at which each key last became free.
    freed_at: BTreeMap<Key, u64>,
    /// Every token seen granted so far, in grant order.
    grants: Vec<u64>,
    /// How often each outcome, and some situations worth reaching, occurred.
    seen: BTreeMap<&'static str, usize>,
}

fn outcome_name(out: &Outcome) -> &'static str {
    match out {
        Outcome::LeaseGranted(_) => "LeaseGranted",
        Outcome::LeaseRevoked(_) => "LeaseRevoked",
        Outcome::LeasesExpired(_) => "LeasesExpired",
        Outcome::LeaseNotFound(_) => "LeaseNotFound",
        Outcome::Granted(_) => "Granted",
        Outcome::Queued { .. } => "Queued",
        Outcome::Busy(_) => "Busy",
        Outcome::QueueFull => "QueueFull",
        Outcome::Released(_) => "Released",
        Outcome::TokenMismatch(_) => "TokenMismatch",
        Outcome::Withdrawn => "Withdrawn",
        Outcome::Proclaimed(_) => "Proclaimed",
        Outcome::DelaysEnded(_) => "DelaysEnded",
    }
}

fn waiting_tickets(c: &Coordinator) -> BTreeSet<Ticket> {
    c.locks
        .values()
        .flat_map(|l| l.waiters.iter().map(|w| w.ticket))
        .collect()
}

/// Checks one apply: the state it left, its outcome and its effects against the state
/// before it.
#[allow(clippy::too_many_arguments)]
fn check_step(
    before: &Coordinator,
    after: &Coordinator,
    cmd: &Command,
    out: &Outcome,
    fx: &Effects,
    index: u64,
    now_ms: u64,
    h: &mut History,
) {
    check_invariants(after);
    *h.seen.entry(outcome_name(out)).or_default() += 1;

    // Fencing tokens: every grant made by this apply is above every earlier one.
    assert!(after.last_token() >= before.last_token());
    let mut new_tokens = Vec::new();
    for (key, lock) in &after.locks {
        let Some(hold) = &lock.holder else { continue };
        let old = before.lock(key).and_then(|l| l.holder.as_ref());
        if old.map(|o| o.token) != Some(hold.token) {
            let delayed = before.lock(key).and_then(|l| l.delay_until_ms);
            assert!(
                delayed.is_none_or(|t| t <= now_ms),
                "{key:?} granted during its lock-delay"
            );
            assert!(hold.token > before.last_token(), "{key:?}: token went back");
            assert!(hold.token >= index);
            assert_eq!(hold.granted_index, index);
            assert_eq!(hold.granted_at_ms, now_ms);
            new_tokens.push(hold.token);
        }
    }
    new_tokens.sort_unstable();
    if let (Some(&last), Some(&first)) = (h.grants.last(), new_tokens.first()) {
        assert!(first > last, "token {first} granted after {last}");
    }
    h.grants.extend(&new_tokens);
    let granted_now = matches!(out, Outcome::Granted(g) if g.token > before.last_token());
    if fx.woken.is_empty() && !granted_now {
        assert_eq!(
            after.last_token(),
            before.last_token(),
            "a token without a grant"
        );
    }
    if !fx.woken.is_empty() {
        *h.seen.entry("granted or dropped from a queue").or_default() += 1;
    }

    // Leases granted and ended are exactly the ones reported.
    let mut granted: Vec<Lease> = after
        .leases()
        .filter(|l| before.lease(&l.id).is_none())
        .collect();
    let mut reported = fx.granted.clone();
    granted.sort_by_key(|l| l.id);
    reported.sort_by_key(|l| l.id);
    assert_eq!(reported, granted);
    let ended: BTreeSet<LeaseId> = before
        .leases()
        .filter(|l| after.lease(&l.id).is_none())
        .map(|l| l.id)
        .collect();
    assert_eq!(fx.ended.len(), ended.len(), "a lease reported ended twice");
    assert_eq!(fx.ended.iter().copied().collect::<BTreeSet<_>>(), ended);

    // Changed keys: every change is reported and stamped; unreported keys are untouched.
    let unstamped = |l: Option<&LockState>| {
        l.map(|l| LockState {
            modify_index: 0,
            ..l.clone()
        })
    };
    let keys: BTreeSet<&Key> = before.locks.keys().chain(after.locks.keys()).collect();
    for key in &fx.changed {
        assert!(
            keys.contains(key),
            "{key:?} reported changed but never had an entry"
        );
        assert_eq!(after.kind_index(key.kind), index);
    }
    for key in keys {
        let (b, a) = (before.lock(key), after.lock(key));
        if fx.changed.contains(key) {
            if let Some(a) = a {
                assert_eq!(a.modify_index, index);
            }
        } else {
            assert_eq!(b, a, "{key:?} changed without being reported");
        }
        if unstamped(b) != unstamped(a) {
            assert!(fx.changed.contains(key));
        }
        if b.is_some() && a.is_none() {
            h.freed_at.insert(key.clone(), index);
        }
        if a.is_some_and(|a| a.delay_until_ms.is_some()) {
            *h.seen.entry("in lock-delay").or_default() += 1;
        }
    }
    for kind in [Kind::Lock, Kind::Election] {
        assert!(after.kind_index(kind) >= before.kind_index(kind));
    }
    for (key, &at) in &h.freed_at {
        if after.lock(key).is_none() {
            assert!(after.lock_index(key) >= at, "{key:?} freed at {at}");
        }
    }

    // FIFO: survivors keep their order, a newcomer only joins at the end, and a waiter
    // granted from the queue had nobody still waiting ahead of it.
    for (key, a) in &after.locks {
        let Some(b) = before.lock(key) else { continue };
        let was: Vec<LeaseId> = b.waiters.iter().map(|w| w.lease).collect();
        let now: Vec<LeaseId> = a.waiters.iter().map(|w| w.lease).collect();
        let survivors: Vec<usize> = now
            .iter()
            .filter_map(|l| was.iter().position(|x| x == l))
            .collect();
        assert!(
            survivors.windows(2).all(|w| w[0] < w[1]),
            "{key:?} reordered"
        );
        assert!(now.len() - survivors.len() <= 1, "{key:?}: two newcomers");
        assert!(
            now.iter().take(survivors.len()).all(|l| was.contains(l)),
            "{key:?}: a newcomer ahead of earlier waiters"
        );
        if let Some(hold) = &a.holder {
            let fresh = b.holder.as_ref().map(|o| o.token) != Some(hold.token);
            if let Some(p) = was.iter().position(|l| *l == hold.lease).filter(|_| fresh) {
                assert!(
                    was[..p].iter().all(|l| !now.contains(l)),
                    "{key:?}: granted past an earlier waiter"
                );
            }
        }
    }

    // Woken: exactly the waiters that left a queue other than by their own withdrawal,
    // and holders whose hold another request of their lease took over.
    let mut gone: BTreeSet<Ticket> = waiting_tickets(before)
        .difference(&waiting_tickets(after))
        .copied()
        .collect();
    match cmd {
        Command::Withdraw { ticket, .. } => {
            gone.remove(ticket);
        }
        Command::Acquire(a) => {
            // A request of a lease that holds or waits takes that hold or place over; the
            // request it replaces is woken (to find itself gone).
            let lease = match &a.binding {
                Binding::Existing(lease) => Some(*lease),
                Binding::Own { id, .. } if before.lease(id).is_some() => Some(*id),
                Binding::Own { .. } => None,
            };
            let retried = before.lock(&a.key).is_some_and(|l| {
                l.holder.as_ref().is_some_and(|h| h.ticket == a.ticket)
                    || l.waiters.iter().any(|w| w.ticket == a.ticket)
            });
            if let (Some(lease), Some(lock), false) = (lease, before.lock(&a.key), retried) {
                if let Some(hold) = lock.holder.as_ref().filter(|h| h.lease == lease) {
                    gone.insert(hold.ticket);
                    *h.seen.entry("hold taken over").or_default() += 1;
                } else if lock
                    .waiters
                    .iter()
                    .any(|w| w.lease == lease && gone.contains(&w.ticket))
                {
                    *h.seen.entry("place taken over").or_default() += 1;
                }
            }
        }
        _ => {}
    }
    let woken: BTreeSet<Ticket> = fx.woken.iter().copied().collect();
    assert_eq!(woken.len(), fx.woken.len(), "a ticket woken twice");
    assert_eq!(woken, gone);

    check_outcome(before, after, cmd, out, fx, now_ms, h);
}

/// The outcome agrees with the command and the state it left.
fn check_outcome(
    before: &Coordinator,
    after: &Coordinator,
    cmd: &Command,
    out: &Outcome,
    fx: &Effects,
    now_ms: u64,
    h: &mut History,
) {
    let unchanged = || {
        assert_eq!(before, after, "{cmd:?} -> {out:?} changed the state");
        assert_eq!(fx, &Effects::default());
    };
    match (cmd, out) {
        (Command::GrantLease { id, ttl_ms }, Outcome::LeaseGranted(l)) => {
            assert_eq!(after.lease(id).as_ref(), Some(l));
            match before.lease(id) {
                Some(old) => {
                    assert_eq!(&old, l);
                    unchanged();
                }
                None => assert_eq!(l.ttl_ms, *ttl_ms),
            }
        }
        (Command::RevokeLease { id }, Outcome::LeaseRevoked(l)) => {
            assert_eq!(before.lease(id).as_ref(), Some(l));
            assert_eq!(after.lease(id), None);
        }
        (Command::RevokeLease { id }, Outcome::LeaseNotFound(x)) => {
            assert_eq!(id, x);
            unchanged();
        }
        (Command::ExpireLeases { ids }, Outcome::LeasesExpired(ls)) => {
            let mut expected: Vec<Lease> = Vec::new();
            for id in ids {
                if let Some(l) = before.lease(id).filter(|l| !expected.contains(l)) {
                    expected.push(l);
                }
            }
            assert_eq!(ls, &expected);
            assert!(ids.iter().all(|id| after.lease(id).is_none()));
        }
        (Command::Acquire(a), Outcome::Granted(hold)) => {
            assert_eq!(hold.ticket, a.ticket);
            assert_eq!(holder(after, &a.key), Some(hold));
            assert!(after.lease(&hold.lease).is_some());
            if let Binding::Own { id, .. } = &a.binding {
                if hold.token > before.last_token() {
                    *h.seen.entry("own lease granted").or_default() += 1;
                    assert_eq!(hold.lease, *id);
                    assert!(hold.own_lease);
                }
            }
        }
        (Command::Acquire(a), Outcome::Queued { position }) => {
            let w = &after.lock(&a.key).unwrap().waiters[*position];
            assert_eq!(w.ticket, a.ticket);
        }
        (Command::Acquire(a), Outcome::Busy(state)) => {
            assert!(!a.wait, "a waiting request is never Busy");
            assert_eq!(after.lock(&a.key), Some(state));
            assert!(fx.granted.is_empty());
            assert!(before.leases().eq(after.leases()));
            assert_eq!(waiting_tickets(before), {
                let mut w = waiting_tickets(after);
                w.extend(&fx.woken);
                w
            });
        }
        (Command::Acquire(a), Outcome::LeaseNotFound(x)) => {
            assert_eq!(a.binding, Binding::Existing(*x));
            assert!(before.lease(x).is_none());
            unchanged();
        }
        (Command::Release { key, token }, Outcome::Released(hold)) => {
            assert_eq!(holder(before, key), Some(hold));
            assert_eq!(hold.token, *token);
            assert_ne!(holder(after, key).map(|h| h.token), Some(*token));
            if hold.own_lease {
                assert!(fx.ended.contains(&hold.lease));
            }
        }
        (Command::Release { key, token }, Outcome::TokenMismatch(state))
        | (Command::Proclaim { key, token, .. }, Outcome::TokenMismatch(state)) => {
            assert_ne!(holder(before, key).map(|h| h.token), Some(*token));
            assert_eq!(before.lock(key).cloned().unwrap_or_default(), *state);
            unchanged();
        }
        (
            Command::Withdraw {
                key,
                ticket,
                release_if_granted,
            },
            out,
        ) => match out {
            Outcome::Granted(hold) => {
                assert!(!release_if_granted);
                assert_eq!(hold.ticket, *ticket);
                assert_eq!(holder(before, key), Some(hold));
                unchanged();
            }
            Outcome::Released(hold) => {
                assert!(release_if_granted);
                assert_eq!(hold.ticket, *ticket);
                assert_eq!(holder(before, key), Some(hold));
                if hold.own_lease {
                    assert!(fx.ended.contains(&hold.lease));
                }
                *h.seen.entry("withdrawn grant released").or_default() += 1;
            }
            Outcome::Withdrawn => {
                assert_ne!(holder(after, key).map(|h| h.ticket), Some(*ticket));
                assert!(!waiting(after, key).contains(ticket));
                let left = before
                    .lock(key)
                    .and_then(|l| l.waiters.iter().find(|w| w.ticket == *ticket));
                if let Some(w) = left.filter(|w| w.own_lease) {
                    assert!(
                        fx.ended.contains(&w.lease),
                        "own lease outlives its request"
                    );
                }
            }
            other => panic!("withdraw answered {other:?}"),
        },
        (
            Command::Proclaim {
                key,
                token,
                holder: text,
            },
            Outcome::Proclaimed(hold),
        ) => {
            assert_eq!((hold.token, &hold.holder), (*token, text));
            assert_eq!(holder(after, key), Some(hold));
        }
        (Command::GrantDelayed { keys }, Outcome::DelaysEnded(ended)) => {
            let due = before.delays_due(now_ms, usize::MAX);
            let expected: Vec<&Key> = due.iter().filter(|k| keys.contains(k)).collect();
            let mut ended_sorted: Vec<&Key> = ended.iter().collect();
            ended_sorted.sort();
            assert_eq!(ended_sorted, expected);
            for key in ended {
                assert!(after.lock(key).is_none_or(|l| l.delay_until_ms.is_none()));
            }
            for key in keys {
                let stuck = after.lock(key).is_some_and(|l| {
                    l.holder.is_none() && l.delay_until_ms.is_some_and(|t| t <= now_ms)
                });
                assert!(!stuck, "{key:?} still delayed after GrantDelayed");
            }
        }
        (cmd, out) => panic!("{cmd:?} answered {out:?}"),
    }
}

/// One random sequence: applies and checks every command, then replays the log on a
/// fresh coordinator and requires the very same outcomes, effects and state.
fn run_random_sequence(seed: u64, entries: usize, h: &mut History) {
    let mut gen = Gen::new(seed);
    let mut c = Coordinator::default();
    let mut log = Vec::new();
    let (mut index, mut now_ms) = (0, 1_000_000);
    h.freed_at.clear();
    h.grants.clear();
    for _ in 0..entries {
        // Other entries (catalog writes, blanks) take indexes in between.
        index += 1 + gen.rng.below(3) as u64;
        now_ms += gen.rng.below(700) as u64;
        let batch = if gen.rng.chance(20) {
            *h.seen.entry("entry with several commands").or_default() += 1;
            2 + gen.rng.below(3)
        } else {
            1
        };
        for _ in 0..batch {
            let cmd = gen.command(&c, now_ms);
            let before = c.clone();
            let mut fx = Effects::default();
            let out = c.apply(cmd.clone(), index, now_ms, &mut fx);
            check_step(&before, &c, &cmd, &out, &fx, index, now_ms, h);
            log.push((cmd, index, now_ms, out, fx));
        }
    }
    let mut replay = Coordinator::default();
    for (cmd, index, now_ms, out, fx) in log {
        let mut again = Effects::default();
        assert_eq!(replay.apply(cmd, index, now_ms, &mut again), out);
        assert_eq!(again, fx);
    }
    assert_eq!(replay, c, "seed {seed}: replay differs");
}

#[test]
fn random_command_sequences_keep_every_invariant() {
    let mut h = History::default();
    for seed in 1..=3_000 {
        let mut one = History {
            seen: std::mem::take(&mut h.seen),
            ..History::default()
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_random_sequence(seed, 60, &mut one)
        }));
        if let Err(e) = result {
            eprintln!("random sequence failed with seed {seed}");
            std::panic::resume_unwind(e);
        }
        h.seen = one.seen;
    }
    // The generator reaches every outcome and situation the checks are about.
    for (what, at_least) in [
        ("LeaseGranted", 1_000),
        ("LeaseRevoked", 1_000),
        ("LeasesExpired", 1_000),
        ("LeaseNotFound", 1_000),
        ("Granted", 1_000),
        ("Queued", 1_000),
        ("Busy", 1_000),
        ("Released", 1_000),
        ("TokenMismatch", 1_000),
        ("Withdrawn", 1_000),
        ("Proclaimed", 1_000),
        ("DelaysEnded", 1_000),
        ("granted or dropped from a queue", 1_000),
        ("in lock-delay", 1_000),
        ("place taken over", 10),
        ("own lease granted", 1_000),
        ("withdrawn grant released", 100),
        ("entry with several commands", 1_000),
    ] {
        let n = h.seen.get(what).copied().unwrap_or(0);
        assert!(n >= at_least, "{what} occurred {n} times: {:?}", h.seen);
    }
}

// Regressions: a retried own-lease acquire after another request of that lease took
// its hold over used to bind the lease twice (hold and waiter), and a release then handed
// the lock to the dead lease for good.

#[test]
fn retried_own_acquire_after_a_takeover_takes_the_hold_over_again() {
    let mut c = Coordinator::default();
    let key = Key::lock("c");
    let first = acquire_own(&key, 11, 21, true);
    granted(apply(&mut c, first.clone(), 1, 0).0);
    // Another request on the same (own) lease takes the hold over: ticket 11 -> 12.
    granted(apply(&mut c, acquire(&key, 12, 21, false), 2, 0).0);
    // The first request's proposal, retried (same ticket, same own lease id).
    let (out, _) = apply(&mut c, first, 3, 0);
    assert!(
        !matches!(out, Outcome::Queued { .. }),
        "lease 21 now holds AND waits for the same lock: {out:?}"
    );
}

#[test]
fn release_after_a_retried_own_acquire_leaves_no_dead_lease_holding() {
    let mut c = Coordinator::default();
    let key = Key::lock("c");
    let first = acquire_own(&key, 11, 21, true);
    let hold = granted(apply(&mut c, first.clone(), 1, 0).0);
    granted(apply(&mut c, acquire(&key, 12, 21, false), 2, 0).0);
    apply(&mut c, first, 3, 0);
    apply(&mut c, release(&key, hold.token), 4, 0); // revokes own lease 21
    assert_eq!(c.lease(&id(21)), None);
    // The lock was handed to the queued entry of the now-dead lease 21 (token 4); no lease
    // expiry or revoke can ever end it.
    let h = holder(&c, &key).cloned();
    assert_eq!(
        apply(&mut c, expire(&[21]), 5, 0).0,
        Outcome::LeasesExpired(vec![])
    );
    assert_eq!(
        apply(&mut c, revoke(21), 6, 0).0,
        Outcome::LeaseNotFound(id(21))
    );
    assert_eq!(h, None, "lock held by dead lease 21: {h:?}");
}

/// The leases map holds each lease's terms under its id, yet a snapshot holds whole
/// leases, id included, as it always did: a coordinator's encoding starts with that of
/// the plain map of leases, and it decodes back to the same state.
#[test]
fn leases_encode_as_whole_leases_under_their_ids() {
    let mut c = Coordinator::default();
    grant(&mut c, 1, 5_000, 3);
    grant(&mut c, 2, 9_000, 4);
    let plain: std::collections::BTreeMap<LeaseId, Lease> =
        c.leases().map(|lease| (lease.id, lease)).collect();
    assert_eq!(plain.len(), 2);
    let encoded = bincode::serialize(&c).unwrap();
    let plain = bincode::serialize(&plain).unwrap();
    assert_eq!(encoded[..plain.len()], plain[..]);
    let back: Coordinator = bincode::deserialize(&encoded).unwrap();
    assert_eq!(back, c);
    assert_eq!(
        back.lease(&id(2)).map(|l| (l.ttl_ms, l.granted_index)),
        Some((9_000, 4))
    );
}
