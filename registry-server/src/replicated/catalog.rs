//! The service catalog: registered instances, their health and their indexes, as a pure
//! synchronous state machine (no IO, no clock, no async; time and log index are inputs).
//!
//! Instances are bound to leases (`locks`). The catalog does not own leases: it is told
//! when one ends ([`Catalog::lease_ended`]) and turns the instances bound to it
//! `critical`; [`crate::state::AppState`] wires the two together. Critical instances are
//! queued by the time they are due to be deregistered (`deregister_after` after turning
//! critical), so the leader finds the due ones without scanning.

use std::collections::BTreeSet;
use std::sync::Arc;

use api_spec::checks::CheckStatus;
use api_spec::InstanceStatus;
use compact_str::CompactString;
use locks::LeaseId;
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize};

use crate::replicated::checks::{CheckResult, CheckSpec, CheckState};
use crate::replicated::intern::{self, meta_get, Interner, Meta, Name, Place, Tags};

/// (service, instance id). The catalog's own copies share the strings of its maps.
pub type InstanceKey = (Name, Name);

/// A key from a service name and an instance id.
pub fn key(service: &str, id: &str) -> InstanceKey {
    (service.into(), id.into())
}

/// What a registration says about an instance (validated by the HTTP layer).
///
/// Stored compactly (a million instances are a million of these): the address inline,
/// zone and region as one shared [`Place`]. It serializes field by field as it always
/// did ([`StoredSpec`]), so neither the log nor snapshots changed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "StoredSpec")]
pub struct InstanceSpec {
    /// An IP address or host name; up to 24 bytes are held inline, without an allocation.
    pub address: CompactString,
    pub port: u16,
    pub tags: Tags,
    /// Sorted by key ([`crate::replicated::intern::meta`]).
    pub meta: Meta,
    pub place: Place,
    pub weight: u32,
    pub deregister_after_ms: u64,
    /// Active checks the cluster runs against it (empty for most instances: no
    /// allocation).
    pub checks: Box<[CheckSpec]>,
}

impl InstanceSpec {
    pub fn zone(&self) -> Option<&str> {
        self.place.zone().map(|z| &**z)
    }

    pub fn region(&self) -> Option<&str> {
        self.place.region().map(|r| &**r)
    }
}

/// [`InstanceSpec`] as the log and snapshots hold it. A decode shares its strings
/// through the [`intern::decoding`] table.
#[derive(Deserialize)]
struct StoredSpec {
    address: CompactString,
    port: u16,
    #[serde(deserialize_with = "intern::decode::tags")]
    tags: Tags,
    #[serde(deserialize_with = "intern::decode::meta")]
    meta: Meta,
    zone: Option<Name>,
    region: Option<Name>,
    weight: u32,
    deregister_after_ms: u64,
    checks: Box<[CheckSpec]>,
}

impl From<StoredSpec> for InstanceSpec {
    fn from(s: StoredSpec) -> Self {
        Self {
            address: s.address,
            port: s.port,
            tags: s.tags,
            meta: s.meta,
            place: intern::decode::place(s.zone, s.region),
            weight: s.weight,
            deregister_after_ms: s.deregister_after_ms,
            checks: s.checks,
        }
    }
}

impl Serialize for InstanceSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("StoredSpec", 9)?;
        s.serialize_field("address", &self.address)?;
        s.serialize_field("port", &self.port)?;
        s.serialize_field("tags", &self.tags)?;
        s.serialize_field("meta", &self.meta)?;
        s.serialize_field("zone", &self.place.zone())?;
        s.serialize_field("region", &self.place.region())?;
        s.serialize_field("weight", &self.weight)?;
        s.serialize_field("deregister_after_ms", &self.deregister_after_ms)?;
        s.serialize_field("checks", &self.checks)?;
        s.end()
    }
}

/// A registered instance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "StoredRecord")]
pub struct InstanceRecord {
    pub spec: InstanceSpec,
    /// The worst of its lease, its checks and its own drain request: `Critical` once the
    /// lease ended or while a check is critical, else `Draining` if it asked to drain,
    /// else `Passing` ([`InstanceRecord::worst`]). Stored, so filters read one field.
    pub status: InstanceStatus,
    /// The lease keeping it registered; `None` for an instance kept by its checks alone.
    pub lease: Option<LeaseId>,
    /// The lease was made for this instance: it is revoked when the instance goes.
    pub own_lease: bool,
    /// Its lease ended (only a new registration revives it).
    pub lease_ended: bool,
    /// It asked to be taken out of discovery.
    pub draining: bool,
    /// Its checks' states; `None` for an instance without checks, most of them, so they
    /// pay one word for it ([`InstanceRecord::checks`]).
    probed: Option<Box<Probed>>,
    pub registered_at_ms: u64,
    pub modify_index: u64,
    /// When (leader's wall clock, ms) and at which index it turned critical; boxed, as
    /// few instances are critical at once ([`InstanceRecord::critical_since`]).
    critical: Option<Box<(u64, u64)>>,
}

/// What the log last heard about an instance's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probed {
    /// One per `spec.checks`, in the same order.
    states: Box<[CheckState]>,
    /// Index of the registration that defined its checks as they are: a prober's result
    /// for another definition is dropped ([`CheckResult::generation`]).
    index: u64,
}

/// [`InstanceRecord`] as the log and snapshots hold it.
#[derive(Deserialize)]
struct StoredRecord {
    spec: InstanceSpec,
    status: InstanceStatus,
    lease: Option<LeaseId>,
    own_lease: bool,
    lease_ended: bool,
    draining: bool,
    checks: Box<[CheckState]>,
    checks_index: u64,
    registered_at_ms: u64,
    modify_index: u64,
    critical_since: Option<(u64, u64)>,
}

impl From<StoredRecord> for InstanceRecord {
    fn from(s: StoredRecord) -> Self {
        Self {
            spec: s.spec,
            status: s.status,
            lease: s.lease,
            own_lease: s.own_lease,
            lease_ended: s.lease_ended,
            draining: s.draining,
            probed: probed(s.checks, s.checks_index),
            registered_at_ms: s.registered_at_ms,
            modify_index: s.modify_index,
            critical: s.critical_since.map(Box::new),
        }
    }
}

impl Serialize for InstanceRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("StoredRecord", 11)?;
        s.serialize_field("spec", &self.spec)?;
        s.serialize_field("status", &self.status)?;
        s.serialize_field("lease", &self.lease)?;
        s.serialize_field("own_lease", &self.own_lease)?;
        s.serialize_field("lease_ended", &self.lease_ended)?;
        s.serialize_field("draining", &self.draining)?;
        s.serialize_field("checks", self.checks())?;
        s.serialize_field("checks_index", &self.checks_index())?;
        s.serialize_field("registered_at_ms", &self.registered_at_ms)?;
        s.serialize_field("modify_index", &self.modify_index)?;
        s.serialize_field("critical_since", &self.critical_since())?;
        s.end()
    }
}

/// The checks' states of an instance, `None` when it has none.
fn probed(states: Box<[CheckState]>, index: u64) -> Option<Box<Probed>> {
    (!states.is_empty()).then(|| Box::new(Probed { states, index }))
}

/// The longest `deregister_after` (ms), [`api_spec::MAX_DEREGISTER_AFTER`]. The HTTP
/// layer refuses longer ones; one that reaches the catalog anyway counts as this.
pub const MAX_DEREGISTER_AFTER_MS: u64 = api_spec::MAX_DEREGISTER_AFTER.as_millis() as u64;

impl InstanceRecord {
    /// What the log last heard about each of `spec.checks`, in the same order.
    pub fn checks(&self) -> &[CheckState] {
        self.probed.as_ref().map_or(&[], |p| &p.states)
    }

    /// Index of the registration that defined its checks as they are (0 without
    /// checks): a prober's result for another definition is dropped
    /// ([`CheckResult::generation`]).
    pub fn checks_index(&self) -> u64 {
        self.probed.as_ref().map_or(0, |p| p.index)
    }

    /// When (leader's wall clock, ms) and at which index it turned critical.
    pub fn critical_since(&self) -> Option<(u64, u64)> {
        self.critical.as_deref().copied()
    }

    /// The status its lease, checks and drain request add up to.
    fn worst(&self) -> InstanceStatus {
        let failing = self
            .checks()
            .iter()
            .any(|c| c.status == CheckStatus::Critical);
        if self.lease_ended || failing {
            InstanceStatus::Critical
        } else if self.draining {
            InstanceStatus::Draining
        } else {
            InstanceStatus::Passing
        }
    }

    /// When a critical instance is due to be deregistered (its key in the reap queue):
    /// `deregister_after` (at most [`MAX_DEREGISTER_AFTER_MS`]) after it turned critical.
    fn reap_at(&self) -> Option<u64> {
        let (since_ms, _) = self.critical_since()?;
        let after = self.spec.deregister_after_ms.min(MAX_DEREGISTER_AFTER_MS);
        Some(since_ms.saturating_add(after))
    }
}

/// One service's instances. Each record is shared (`Arc`): a clone of the map, the one
/// a snapshot encodes, copies pointers, and a change after it copies one record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub instances: imbl::OrdMap<Name, Arc<InstanceRecord>>,
    /// Log index of the last change to any of its instances.
    pub modify_index: u64,
}

/// The instances one lease keeps alive. Nearly every lease keeps exactly one (an
/// instance's own lease), so that case is stored inline rather than in a B-tree node,
/// which costs about half a kilobyte per lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Bound {
    One(InstanceKey),
    Many(BTreeSet<InstanceKey>),
}

impl Bound {
    /// Records that `lease` keeps `key` alive.
    fn bind(by_lease: &mut imbl::OrdMap<LeaseId, Bound>, lease: LeaseId, key: InstanceKey) {
        match by_lease.get_mut(&lease) {
            Some(bound) => bound.insert(key),
            None => {
                by_lease.insert(lease, Bound::One(key));
            }
        }
    }

    fn insert(&mut self, key: InstanceKey) {
        match self {
            Bound::One(one) if *one == key => {}
            Bound::One(one) => *self = Bound::Many(BTreeSet::from([one.clone(), key])),
            Bound::Many(set) => {
                set.insert(key);
            }
        }
    }

    /// Removes `key`; `true` when no instance is left.
    fn remove(&mut self, key: &InstanceKey) -> bool {
        match self {
            Bound::One(one) => one == key,
            Bound::Many(set) => {
                set.remove(key);
                set.is_empty()
            }
        }
    }

    fn keys(&self) -> Box<dyn Iterator<Item = &InstanceKey> + '_> {
        match self {
            Bound::One(one) => Box::new(std::iter::once(one)),
            Bound::Many(set) => Box::new(set.iter()),
        }
    }

    fn into_keys(self) -> Vec<InstanceKey> {
        match self {
            Bound::One(one) => vec![one],
            Bound::Many(set) => set.into_iter().collect(),
        }
    }
}

/// The catalog. Every map is persistent (`imbl`): cloning the catalog, which a snapshot
/// does, is O(1), and the clone is encoded while applies go on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    services: imbl::OrdMap<Name, ServiceEntry>,
    /// Which instances each lease keeps alive. This and the next two are derived from
    /// `services`: a snapshot holds them empty (the layout is unchanged: an empty map), and
    /// [`Catalog::rebuild`] derives them again, sharing the services map's strings.
    #[serde(serialize_with = "empty")]
    by_lease: imbl::OrdMap<LeaseId, Bound>,
    /// Critical instances by the time (ms) they are due to be deregistered.
    #[serde(serialize_with = "empty")]
    reap_queue: imbl::OrdSet<(u64, InstanceKey)>,
    /// The instances with active checks: what probers walk, without scanning the rest.
    #[serde(serialize_with = "empty")]
    checked: imbl::OrdSet<InstanceKey>,
    /// Log index of the last change anywhere in the catalog: the index of
    /// `GET /v1/services`, and of any service that does not exist (so a watcher of a
    /// service that was just removed is woken by its removal).
    catalog_index: u64,
    /// This node's shared copies of repeated strings (not replicated: a decoded catalog
    /// shares them through the table decoding used, [`Catalog::rebuild`]).
    #[serde(skip)]
    interner: Interner,
    /// Instances by status (passing, draining, critical): kept as they change, so the
    /// metrics never walk the catalog. Counted again by [`Catalog::rebuild`].
    #[serde(skip)]
    by_status: [usize; 3],
}

/// Serializes a derived collection as an empty one (see [`Catalog`]'s fields).
fn empty<T, S: serde::Serializer>(_: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_seq(Some(0))?.end()
}

fn slot(status: InstanceStatus) -> usize {
    match status {
        InstanceStatus::Passing => 0,
        InstanceStatus::Draining => 1,
        InstanceStatus::Critical => 2,
    }
}

/// Why a catalog command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogError {
    InstanceNotFound,
    /// The instance's lease has ended; it must register again.
    InstanceCritical,
}

impl Catalog {
    /// Registers or updates an instance bound to `lease` (none: kept by its checks).
    /// Returns the lease the instance was bound to before, if it was another one of its
    /// own (the caller revokes it).
    pub fn upsert(
        &mut self,
        key: InstanceKey,
        spec: InstanceSpec,
        lease: Option<LeaseId>,
        own_lease: bool,
        index: u64,
        now_ms: u64,
    ) -> Option<LeaseId> {
        let key = self.shared_key(key);
        let spec = self.intern_spec(spec);
        let mut record = InstanceRecord {
            probed: probed(
                spec.checks
                    .iter()
                    .map(|_| CheckState::new(now_ms))
                    .collect(),
                index,
            ),
            spec,
            status: InstanceStatus::Passing,
            lease,
            own_lease,
            lease_ended: false,
            draining: false,
            registered_at_ms: now_ms,
            modify_index: index,
            critical: None,
        };
        let mut replaced_own_lease = None;
        let mut earlier_episode = None;
        if let Some(old) = self.take(&key) {
            record.registered_at_ms = old.registered_at_ms;
            // Re-registering on the same lease does not undo a drain request.
            record.draining = old.draining && old.lease == lease;
            if old.lease != lease {
                if let Some(old_lease) = old.lease {
                    self.unbind(&key, old_lease);
                    if old.own_lease {
                        replaced_own_lease = Some(old_lease);
                    }
                }
            }
            // Checks defined as before keep what the log knows about them, so a
            // re-registration neither resets them to "not probed yet" nor writes a
            // transition; results in flight for them still apply.
            if old.spec.checks == record.spec.checks {
                record.probed = old.probed.clone();
            }
            earlier_episode = old.critical.clone();
        }
        if let Some(lease) = lease {
            Bound::bind(&mut self.by_lease, lease, key.clone());
        }
        if record.spec.checks.is_empty() {
            self.checked.remove(&key);
        } else {
            self.checked.insert(key.clone());
        }
        record.status = record.worst();
        if record.status == InstanceStatus::Critical {
            // Still critical (a check still failing): the same episode, the same reap.
            record.critical = earlier_episode.or(Some(Box::new((now_ms, index))));
        }
        if let Some(at) = record.reap_at() {
            self.reap_queue.insert((at, key.clone()));
        }
        self.by_status[slot(record.status)] += 1;
        let service = self.services.entry(key.0.clone()).or_default();
        service.instances.insert(key.1, Arc::new(record));
        service.modify_index = index;
        self.catalog_index = index;
        replaced_own_lease
    }

    /// The key with the strings the catalog already holds for it: the service's shared
    /// name, and the instance's id as its map holds it (a new id is used as given).
    fn shared_key(&mut self, (service, id): InstanceKey) -> InstanceKey {
        let service = match self.services.get_key_value(&*service) {
            Some((name, _)) => name.clone(),
            None => self.interner.name(&service),
        };
        let id = self
            .services
            .get(&*service)
            .and_then(|s| s.instances.get_key_value(&*id))
            .map_or(id, |(id, _)| id.clone());
        (service, id)
    }

    /// The spec with its repeated strings shared.
    fn intern_spec(&mut self, spec: InstanceSpec) -> InstanceSpec {
        let interner = &mut self.interner;
        interner.maybe_purge();
        InstanceSpec {
            tags: interner.tags(&spec.tags),
            meta: interner.meta(&spec.meta),
            place: interner.place(&spec.place),
            ..spec
        }
    }

    /// After a decode ([`intern::decoding`]): keeps the table the decode shared the
    /// instances' strings through, and derives what a snapshot leaves out — which
    /// instances each lease keeps, the reap queue, the checked instances, the status
    /// counts — from the records, with keys that share the services map's strings.
    /// One pass, O(instances).
    pub fn rebuild(&mut self, mut interner: Interner) {
        let mut by_lease: imbl::OrdMap<LeaseId, Bound> = imbl::OrdMap::new();
        let mut reap_queue = imbl::OrdSet::new();
        let mut checked = imbl::OrdSet::new();
        let mut by_status = [0; 3];
        for (name, service) in self.services.iter() {
            interner.name(name);
            for (id, record) in service.instances.iter() {
                let key: InstanceKey = (name.clone(), id.clone());
                // A lease that ended no longer keeps anything (`lease_ended` took it out).
                if let Some(lease) = record.lease.filter(|_| !record.lease_ended) {
                    Bound::bind(&mut by_lease, lease, key.clone());
                }
                if let Some(at) = record.reap_at() {
                    reap_queue.insert((at, key.clone()));
                }
                if !record.spec.checks.is_empty() {
                    checked.insert(key);
                }
                by_status[slot(record.status)] += 1;
            }
        }
        self.by_lease = by_lease;
        self.reap_queue = reap_queue;
        self.checked = checked;
        self.by_status = by_status;
        self.interner = interner;
    }

    /// Distinct shared strings and lists this node holds.
    pub fn interned(&self) -> usize {
        self.interner.len()
    }

    /// How many instances have `status`.
    pub fn status_count(&self, status: InstanceStatus) -> usize {
        self.by_status[slot(status)]
    }

    /// How many services have instances.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Takes an instance out of the services map and the reap queue (not out of its
    /// lease's bound set), leaving an empty service in place for the caller to refill.
    fn take(&mut self, key: &InstanceKey) -> Option<Arc<InstanceRecord>> {
        let old = self.services.get_mut(&*key.0)?.instances.remove(&*key.1)?;
        self.by_status[slot(old.status)] -= 1;
        if let Some(at) = old.reap_at() {
            self.reap_queue.remove(&(at, key.clone()));
        }
        Some(old)
    }

    /// Removes an instance. Returns it (the caller revokes its own lease).
    pub fn remove(
        &mut self,
        key: &InstanceKey,
        index: u64,
    ) -> Result<InstanceRecord, CatalogError> {
        let service = self
            .services
            .get_mut(&*key.0)
            .ok_or(CatalogError::InstanceNotFound)?;
        let record = service
            .instances
            .remove(&*key.1)
            .ok_or(CatalogError::InstanceNotFound)?;
        self.by_status[slot(record.status)] -= 1;
        service.modify_index = index;
        if service.instances.is_empty() {
            self.services.remove(&*key.0);
        }
        if let Some(lease) = record.lease {
            self.unbind(key, lease);
        }
        if let Some(at) = record.reap_at() {
            self.reap_queue.remove(&(at, key.clone()));
        }
        self.checked.remove(key);
        self.catalog_index = index;
        Ok(Arc::unwrap_or_clone(record))
    }

    /// Sets or clears an instance's drain request. An instance whose lease ended cannot
    /// be revived this way; one that is critical because of a check may drain (it shows
    /// once the check passes again).
    pub fn set_status(
        &mut self,
        key: &InstanceKey,
        draining: bool,
        index: u64,
        now_ms: u64,
    ) -> Result<InstanceRecord, CatalogError> {
        let record = self.instance(key).ok_or(CatalogError::InstanceNotFound)?;
        if record.lease_ended {
            return Err(CatalogError::InstanceCritical);
        }
        if record.draining != draining {
            self.settle(key, index, now_ms, |r| r.draining = draining);
        }
        self.instance(key)
            .cloned()
            .ok_or(CatalogError::InstanceNotFound)
    }

    /// Changes an existing instance with `change`, then brings its status, its critical
    /// episode and its place in the reap queue in line, and stamps the change at `index`.
    fn settle(
        &mut self,
        key: &InstanceKey,
        index: u64,
        now_ms: u64,
        change: impl FnOnce(&mut InstanceRecord),
    ) -> bool {
        let Some(service) = self.services.get_mut(&*key.0) else {
            return false;
        };
        let Some(record) = service.instances.get_mut(&*key.1) else {
            return false;
        };
        // A record a snapshot still holds is copied here; otherwise changed in place.
        let record = Arc::make_mut(record);
        let reap_before = record.reap_at();
        let status_before = record.status;
        change(record);
        record.status = record.worst();
        self.by_status[slot(status_before)] -= 1;
        self.by_status[slot(record.status)] += 1;
        match (record.status == InstanceStatus::Critical, &record.critical) {
            (true, None) => record.critical = Some(Box::new((now_ms, index))),
            (false, Some(_)) => record.critical = None,
            _ => {}
        }
        let reap_after = record.reap_at();
        record.modify_index = index;
        service.modify_index = index;
        self.catalog_index = index;
        if reap_before != reap_after {
            // The queue's copy of the key, so its strings stay shared.
            let key = self.shared_key(key.clone());
            if let Some(at) = reap_before {
                self.reap_queue.remove(&(at, key.clone()));
            }
            if let Some(at) = reap_after {
                self.reap_queue.insert((at, key));
            }
        }
        true
    }

    /// Applies probers' results: each changes its check's status (and output and time)
    /// unless the instance is gone, the check was redefined since ([`CheckResult::
    /// generation`]), or the check already has that status (the first result of a check
    /// never probed is taken anyway, for its output). Returns the services that
    /// changed.
    pub fn check_results(
        &mut self,
        results: Vec<CheckResult>,
        index: u64,
        now_ms: u64,
    ) -> Vec<Name> {
        let mut changed = Vec::new();
        for result in results {
            let Some(record) = self.instance(&result.key) else {
                continue;
            };
            if record.checks_index() != result.generation {
                continue;
            }
            let Some(at) = record
                .spec
                .checks
                .iter()
                .position(|c| c.name == result.check)
            else {
                continue;
            };
            let logged = &record.checks()[at];
            let first = logged.output == CheckState::NOT_PROBED;
            if logged.status == result.status && !first {
                continue;
            }
            let state = CheckState {
                status: result.status,
                output: result.output,
                changed_at_ms: now_ms,
            };
            self.settle(&result.key, index, now_ms, |r| {
                if let Some(probed) = &mut r.probed {
                    probed.states[at] = state;
                }
            });
            changed.push(result.key.0);
        }
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// A lease ended: every instance bound to it turns critical and is queued for
    /// deregistration. Returns the services that changed.
    pub fn lease_ended(&mut self, lease: &LeaseId, index: u64, now_ms: u64) -> Vec<Name> {
        let Some(bound) = self.by_lease.remove(lease) else {
            return Vec::new();
        };
        let mut changed = Vec::new();
        for key in bound.into_keys() {
            if self.settle(&key, index, now_ms, |r| r.lease_ended = true) {
                changed.push(key.0);
            }
        }
        changed.dedup();
        changed
    }

    /// Critical instances due for deregistration at `now_ms`, oldest first, with the index
    /// at which each turned critical (so a reap can tell it is still the same episode).
    pub fn due_reaps(&self, now_ms: u64, limit: usize) -> Vec<(InstanceKey, u64)> {
        self.reap_queue
            .iter()
            .take_while(|(due, _)| *due <= now_ms)
            .filter_map(|(_, key)| {
                let record = self.instance(key)?;
                Some((key.clone(), record.critical_since()?.1))
            })
            .take(limit)
            .collect()
    }

    /// Deregisters a critical instance whose `deregister_after` passed, unless it was
    /// registered again since it turned critical at `critical_index`.
    pub fn reap(
        &mut self,
        key: &InstanceKey,
        critical_index: u64,
        index: u64,
    ) -> Option<InstanceRecord> {
        let record = self.instance(key)?;
        if record.status != InstanceStatus::Critical
            || record.critical_since().map(|(_, i)| i) != Some(critical_index)
        {
            return None;
        }
        self.remove(key, index).ok()
    }

    fn unbind(&mut self, key: &InstanceKey, lease: LeaseId) {
        if self
            .by_lease
            .get_mut(&lease)
            .is_some_and(|bound| bound.remove(key))
        {
            self.by_lease.remove(&lease);
        }
    }

    pub fn instance(&self, key: &InstanceKey) -> Option<&InstanceRecord> {
        self.services
            .get(&*key.0)?
            .instances
            .get(&*key.1)
            .map(|r| &**r)
    }

    pub fn service(&self, name: &str) -> Option<&ServiceEntry> {
        self.services.get(name)
    }

    pub fn services(&self) -> impl Iterator<Item = (&Name, &ServiceEntry)> {
        self.services.iter()
    }

    /// The index a blocking query on `name` waits to move past.
    pub fn service_index(&self, name: &str) -> u64 {
        self.services
            .get(name)
            .map_or(self.catalog_index, |s| s.modify_index)
    }

    /// The index of `GET /v1/services`.
    pub fn catalog_index(&self) -> u64 {
        self.catalog_index
    }

    /// The instances that have active checks.
    pub fn checked(&self) -> impl Iterator<Item = &InstanceKey> {
        self.checked.iter()
    }

    /// The instances a lease keeps alive.
    pub fn bound_to(&self, lease: &LeaseId) -> impl Iterator<Item = &InstanceKey> {
        self.by_lease.get(lease).into_iter().flat_map(Bound::keys)
    }

    /// How many instances a service has, whatever their status.
    pub fn instance_count(&self, name: &str) -> usize {
        self.services.get(name).map_or(0, |s| s.instances.len())
    }
}

/// A plain instance for tests of this crate.
#[cfg(test)]
pub(crate) fn test_spec() -> InstanceSpec {
    InstanceSpec {
        address: "10.0.0.1".into(),
        port: 80,
        tags: Tags::default(),
        meta: Meta::default(),
        place: Place::default(),
        weight: 1,
        deregister_after_ms: 60_000,
        checks: Box::default(),
    }
}

/// Which instances of a service a discovery query wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Every one of these tags must be present.
    pub tags: Vec<String>,
    pub zone: Option<String>,
    pub region: Option<String>,
    /// Every one of these meta pairs must be present with this value.
    pub meta: Vec<(String, String)>,
    /// `None` for any status; by default only `passing` (healthy discovery).
    pub status: Option<InstanceStatus>,
}

impl Filter {
    /// Healthy instances only, no other condition.
    pub fn healthy() -> Self {
        Self {
            status: Some(InstanceStatus::Passing),
            ..Self::default()
        }
    }

    pub fn matches(&self, record: &InstanceRecord) -> bool {
        let spec = &record.spec;
        self.status.is_none_or(|s| s == record.status)
            && self
                .tags
                .iter()
                .all(|t| spec.tags.iter().any(|s| **s == **t))
            && self.zone.as_deref().is_none_or(|z| spec.zone() == Some(z))
            && self
                .region
                .as_deref()
                .is_none_or(|r| spec.region() == Some(r))
            && self
                .meta
                .iter()
                .all(|(k, v)| meta_get(&spec.meta, k) == Some(v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str, i: &str) -> InstanceKey {
        super::key(s, i)
    }

    fn spec(port: u16) -> InstanceSpec {
        InstanceSpec {
            port,
            ..test_spec()
        }
    }

    fn lease(n: u128) -> LeaseId {
        LeaseId::from_u128(n)
    }

    #[test]
    fn status_counts_follow_every_change_and_a_decoded_catalog_counts_again() {
        let mut c = Catalog::default();
        let counts = |c: &Catalog| {
            [
                InstanceStatus::Passing,
                InstanceStatus::Draining,
                InstanceStatus::Critical,
            ]
            .map(|s| c.status_count(s))
        };
        for i in 0..4 {
            c.upsert(
                key("a", &i.to_string()),
                spec(80),
                Some(lease(i)),
                true,
                1,
                0,
            );
        }
        c.upsert(key("a", "0"), spec(81), Some(lease(0)), true, 2, 0);
        assert_eq!(counts(&c), [4, 0, 0]);
        c.set_status(&key("a", "1"), true, 3, 0).unwrap();
        c.lease_ended(&lease(2), 4, 0);
        assert_eq!(counts(&c), [2, 1, 1]);
        c.remove(&key("a", "3"), 5).unwrap();
        assert_eq!(counts(&c), [1, 1, 1]);
        let bytes = bincode::serialize(&c).unwrap();
        let (decoded, interner) = intern::decoding(|| bincode::deserialize::<Catalog>(&bytes));
        let mut decoded = decoded.unwrap();
        decoded.rebuild(interner);
        assert_eq!(counts(&decoded), [1, 1, 1]);
        assert_eq!(decoded, c);
    }

    #[test]
    fn register_is_an_idempotent_upsert_that_keeps_registration_time() {
        let mut c = Catalog::default();
        assert_eq!(
            c.upsert(key("a", "1"), spec(80), Some(lease(1)), true, 5, 1_000),
            None
        );
        assert_eq!(
            c.upsert(key("a", "1"), spec(81), Some(lease(1)), true, 6, 2_000),
            None
        );
        let r = c.instance(&key("a", "1")).unwrap();
        assert_eq!(
            (r.spec.port, r.registered_at_ms, r.modify_index),
            (81, 1_000, 6)
        );
        assert_eq!(c.service_index("a"), 6);
        assert_eq!(c.instance_count("a"), 1);
    }

    #[test]
    fn rebinding_to_another_lease_reports_the_old_own_lease() {
        let mut c = Catalog::default();
        c.upsert(key("a", "1"), spec(80), Some(lease(1)), true, 1, 0);
        assert_eq!(
            c.upsert(key("a", "1"), spec(80), Some(lease(2)), false, 2, 0),
            Some(lease(1))
        );
        assert_eq!(c.bound_to(&lease(1)).count(), 0);
        assert_eq!(c.bound_to(&lease(2)).count(), 1);
        // The old lease ending no longer touches the instance.
        assert!(c.lease_ended(&lease(1), 3, 0).is_empty());
        assert_eq!(
            c.instance(&key("a", "1")).unwrap().status,
            InstanceStatus::Passing
        );
    }

    #[test]
    fn lease_end_turns_bound_instances_critical_and_queues_them() {
        let mut c = Catalog::default();
        c.upsert(key("a", "1"), spec(80), Some(lease(1)), false, 1, 0);
        c.upsert(key("a", "2"), spec(80), Some(lease(1)), false, 2, 0);
        c.upsert(key("b", "1"), spec(80), Some(lease(2)), false, 3, 0);
        assert_eq!(c.lease_ended(&lease(1), 4, 10_000), vec![Name::from("a")]);
        assert_eq!(
            c.instance(&key("a", "1")).unwrap().status,
            InstanceStatus::Critical
        );
        assert_eq!(
            c.instance(&key("b", "1")).unwrap().status,
            InstanceStatus::Passing
        );
        assert_eq!(c.service_index("a"), 4);
        assert_eq!(c.service_index("b"), 3, "other services keep their index");
        assert!(c.due_reaps(69_999, 10).is_empty());
        let due = c.due_reaps(70_000, 10);
        assert_eq!(due, vec![(key("a", "1"), 4), (key("a", "2"), 4)]);
        assert!(c.reap(&key("a", "1"), 4, 5).is_some());
        assert!(c.reap(&key("a", "2"), 4, 6).is_some());
        assert!(c.service("a").is_none(), "an empty service disappears");
        assert_eq!(
            c.service_index("a"),
            6,
            "a missing service reports the catalog index"
        );
    }

    #[test]
    fn a_deregister_after_beyond_the_maximum_is_cut_to_it() {
        let mut c = Catalog::default();
        let long = InstanceSpec {
            deregister_after_ms: u64::MAX,
            ..spec(80)
        };
        c.upsert(key("a", "1"), long, Some(lease(1)), true, 1, 0);
        c.lease_ended(&lease(1), 2, 1_000);
        let due = 1_000 + MAX_DEREGISTER_AFTER_MS;
        assert!(c.due_reaps(due - 1, 10).is_empty());
        assert_eq!(c.due_reaps(due, 10), vec![(key("a", "1"), 2)]);
        assert!(c.reap(&key("a", "1"), 2, 3).is_some());
        assert!(
            c.reap_queue.is_empty(),
            "removed under the same clamped key"
        );
    }

    #[test]
    fn reregistering_a_critical_instance_revives_it_and_cancels_its_reap() {
        let mut c = Catalog::default();
        c.upsert(key("a", "1"), spec(80), Some(lease(1)), true, 1, 0);
        c.lease_ended(&lease(1), 2, 0);
        c.upsert(key("a", "1"), spec(80), Some(lease(2)), true, 3, 0);
        assert_eq!(
            c.instance(&key("a", "1")).unwrap().status,
            InstanceStatus::Passing
        );
        assert!(c.due_reaps(u64::MAX, 10).is_empty());
        assert!(
            c.reap(&key("a", "1"), 2, 4).is_none(),
            "a stale reap changes nothing"
        );
        assert!(c.instance(&key("a", "1")).is_some());
    }

    #[test]
    fn drain_and_back_and_critical_cannot_be_revived_by_status() {
        let mut c = Catalog::default();
        c.upsert(key("a", "1"), spec(80), Some(lease(1)), true, 1, 0);
        assert_eq!(
            c.set_status(&key("a", "1"), true, 2, 0).unwrap().status,
            InstanceStatus::Draining
        );
        // Re-registering on the same lease keeps the drain.
        c.upsert(key("a", "1"), spec(80), Some(lease(1)), true, 3, 0);
        assert_eq!(
            c.instance(&key("a", "1")).unwrap().status,
            InstanceStatus::Draining
        );
        assert_eq!(
            c.set_status(&key("a", "1"), false, 4, 0).unwrap().status,
            InstanceStatus::Passing
        );
        c.lease_ended(&lease(1), 5, 0);
        assert_eq!(
            c.set_status(&key("a", "1"), false, 6, 0),
            Err(CatalogError::InstanceCritical)
        );
        assert_eq!(
            c.set_status(&key("a", "9"), false, 6, 0),
            Err(CatalogError::InstanceNotFound)
        );
    }

    #[test]
    fn remove_unbinds_and_reports_not_found_twice() {
        let mut c = Catalog::default();
        c.upsert(key("a", "1"), spec(80), Some(lease(1)), true, 1, 0);
        let gone = c.remove(&key("a", "1"), 2).unwrap();
        assert!(gone.own_lease);
        assert_eq!(c.bound_to(&lease(1)).count(), 0);
        assert_eq!(
            c.remove(&key("a", "1"), 3),
            Err(CatalogError::InstanceNotFound)
        );
        assert_eq!(c.catalog_index(), 2);
    }

    #[test]
    fn filters_combine_tags_zone_region_meta_and_status() {
        let mut c = Catalog::default();
        let mut s1 = spec(80);
        s1.tags = crate::replicated::intern::tags(["v2", "canary"]);
        s1.place = Place::new(Some("eu-1a".into()), Some("eu".into()));
        s1.meta = crate::replicated::intern::meta([("team", "web")]);
        c.upsert(key("a", "1"), s1, Some(lease(1)), true, 1, 0);
        c.upsert(key("a", "2"), spec(80), Some(lease(2)), true, 2, 0);
        let pick = |c: &Catalog, f: Filter| -> Vec<String> {
            let service = c.service("a").unwrap();
            service
                .instances
                .iter()
                .filter(|(_, r)| f.matches(r))
                .map(|(i, _)| i.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(pick(&c, Filter::healthy()), vec!["1", "2"]);
        assert_eq!(
            pick(
                &c,
                Filter {
                    tags: vec!["v2".into()],
                    ..Filter::healthy()
                }
            ),
            vec!["1"]
        );
        assert_eq!(
            pick(
                &c,
                Filter {
                    tags: vec!["v2".into(), "x".into()],
                    ..Filter::healthy()
                }
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            pick(
                &c,
                Filter {
                    zone: Some("eu-1a".into()),
                    ..Filter::healthy()
                }
            ),
            vec!["1"]
        );
        assert_eq!(
            pick(
                &c,
                Filter {
                    region: Some("us".into()),
                    ..Filter::healthy()
                }
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            pick(
                &c,
                Filter {
                    meta: vec![("team".into(), "web".into())],
                    ..Filter::healthy()
                }
            ),
            vec!["1"]
        );
        c.lease_ended(&lease(2), 3, 0);
        assert_eq!(pick(&c, Filter::healthy()), vec!["1"]);
        assert_eq!(pick(&c, Filter::default()), vec!["1", "2"]);
        assert_eq!(
            pick(
                &c,
                Filter {
                    status: Some(InstanceStatus::Critical),
                    ..Filter::default()
                }
            ),
            vec!["2"]
        );
    }

    #[test]
    fn a_lease_keeps_one_or_many_instances() {
        let mut c = Catalog::default();
        c.upsert(key("a", "1"), spec(80), Some(lease(1)), false, 1, 0);
        assert!(matches!(c.by_lease.get(&lease(1)), Some(Bound::One(_))));
        c.upsert(key("a", "2"), spec(80), Some(lease(1)), false, 2, 0);
        c.upsert(key("b", "1"), spec(80), Some(lease(1)), false, 3, 0);
        assert_eq!(c.bound_to(&lease(1)).count(), 3);
        c.remove(&key("a", "2"), 4).unwrap();
        assert_eq!(
            c.bound_to(&lease(1)).cloned().collect::<Vec<_>>(),
            vec![key("a", "1"), key("b", "1")]
        );
        c.remove(&key("a", "1"), 5).unwrap();
        c.remove(&key("b", "1"), 6).unwrap();
        assert!(c.by_lease.is_empty());
        // Removing a key a single-instance lease does not hold changes nothing.
        c.upsert(key("a", "1"), spec(80), Some(lease(2)), false, 7, 0);
        let mut bound = c.by_lease[&lease(2)].clone();
        assert!(!bound.remove(&key("z", "9")));
        assert_eq!(bound.keys().count(), 1);
    }

    fn checked_spec(names: &[&str]) -> InstanceSpec {
        use crate::replicated::checks::Probe;
        InstanceSpec {
            checks: names
                .iter()
                .map(|name| CheckSpec {
                    name: (*name).to_owned(),
                    probe: Probe::Tcp {
                        host: "10.0.0.1".into(),
                        port: 80,
                    },
                    interval_ms: 1_000,
                    timeout_ms: 500,
                    failures_before_critical: 1,
                    successes_before_passing: 1,
                })
                .collect(),
            deregister_after_ms: 10_000,
            ..spec(80)
        }
    }

    fn result(k: &InstanceKey, check: &str, generation: u64, status: CheckStatus) -> CheckResult {
        CheckResult {
            key: k.clone(),
            check: check.into(),
            generation,
            status,
            output: format!("{status:?}"),
        }
    }

    #[test]
    fn checks_start_critical_and_their_results_decide_the_status() {
        let mut c = Catalog::default();
        let k = key("db", "1");
        c.upsert(k.clone(), checked_spec(&["a", "b"]), None, false, 1, 1_000);
        let r = c.instance(&k).unwrap();
        assert_eq!(
            (r.status, r.lease, r.checks_index()),
            (InstanceStatus::Critical, None, 1)
        );
        assert_eq!(r.checks()[0].output, CheckState::NOT_PROBED);
        assert_eq!(c.checked().collect::<Vec<_>>(), vec![&k]);
        // Never probed counts as critical, so its reap is due from registration.
        assert_eq!(c.due_reaps(11_000, 10), vec![(k.clone(), 1)]);

        let pass = |check| result(&k, check, 1, CheckStatus::Passing);
        assert_eq!(
            c.check_results(vec![pass("a")], 2, 2_000),
            vec![Name::from("db")]
        );
        assert_eq!(
            c.instance(&k).unwrap().status,
            InstanceStatus::Critical,
            "b is not probed yet"
        );
        c.check_results(vec![pass("b")], 3, 3_000);
        let r = c.instance(&k).unwrap();
        assert_eq!(
            (r.status, r.critical_since(), r.modify_index),
            (InstanceStatus::Passing, None, 3)
        );
        assert_eq!(r.checks()[1].changed_at_ms, 3_000);
        assert!(c.due_reaps(u64::MAX, 10).is_empty(), "passing: no reap");

        // The same status again, an old generation, an unknown check: nothing changes.
        assert!(c.check_results(vec![pass("a")], 4, 4_000).is_empty());
        let stale = result(&k, "a", 0, CheckStatus::Critical);
        let unknown = result(&k, "zz", 1, CheckStatus::Critical);
        assert!(c.check_results(vec![stale, unknown], 5, 5_000).is_empty());
        assert_eq!(c.service_index("db"), 3);

        // One critical check makes the instance critical and queues its reap.
        c.check_results(vec![result(&k, "b", 1, CheckStatus::Critical)], 6, 6_000);
        let r = c.instance(&k).unwrap();
        assert_eq!(
            (r.status, r.critical_since()),
            (InstanceStatus::Critical, Some((6_000, 6)))
        );
        assert_eq!(c.due_reaps(16_000, 10), vec![(k.clone(), 6)]);
        // Draining while critical is allowed and shows once the check passes again.
        assert_eq!(
            c.set_status(&k, true, 7, 7_000).unwrap().status,
            InstanceStatus::Critical
        );
        c.check_results(vec![result(&k, "b", 1, CheckStatus::Passing)], 8, 8_000);
        assert_eq!(c.instance(&k).unwrap().status, InstanceStatus::Draining);
        assert!(c.due_reaps(u64::MAX, 10).is_empty());
        assert!(c.reap(&k, 6, 9).is_none(), "the critical episode ended");
    }

    #[test]
    fn reregistering_keeps_unchanged_checks_and_resets_redefined_ones() {
        let mut c = Catalog::default();
        let k = key("db", "1");
        c.upsert(k.clone(), checked_spec(&["a"]), None, false, 1, 0);
        c.check_results(vec![result(&k, "a", 1, CheckStatus::Passing)], 2, 0);
        // The same definition again: still passing, same generation, no reap queued.
        c.upsert(k.clone(), checked_spec(&["a"]), None, false, 3, 0);
        let r = c.instance(&k).unwrap();
        assert_eq!((r.status, r.checks_index()), (InstanceStatus::Passing, 1));
        // A new definition starts again from "not probed".
        c.upsert(k.clone(), checked_spec(&["a", "b"]), None, false, 4, 0);
        let r = c.instance(&k).unwrap();
        assert_eq!((r.status, r.checks_index()), (InstanceStatus::Critical, 4));
        // Registering it without checks, on a lease, leaves the checked set.
        c.upsert(k.clone(), spec(80), Some(lease(1)), true, 5, 0);
        assert_eq!(c.checked().count(), 0);
        assert_eq!(c.instance(&k).unwrap().status, InstanceStatus::Passing);
        assert!(c.due_reaps(u64::MAX, 10).is_empty());
        // And removing an instance with checks takes it out of the checked set.
        c.upsert(k.clone(), checked_spec(&["a"]), None, false, 6, 0);
        c.remove(&k, 7).unwrap();
        assert_eq!(c.checked().count(), 0);
    }

    #[test]
    fn a_lease_and_checks_together_give_the_worse_status() {
        let mut c = Catalog::default();
        let k = key("web", "1");
        c.upsert(k.clone(), checked_spec(&["a"]), Some(lease(1)), true, 1, 0);
        c.check_results(vec![result(&k, "a", 1, CheckStatus::Passing)], 2, 0);
        assert_eq!(c.instance(&k).unwrap().status, InstanceStatus::Passing);
        c.lease_ended(&lease(1), 3, 100);
        let r = c.instance(&k).unwrap();
        assert_eq!((r.status, r.lease_ended), (InstanceStatus::Critical, true));
        // Its checks passing does not revive an ended lease.
        assert!(
            c.check_results(vec![result(&k, "a", 1, CheckStatus::Critical)], 4, 0)
                .len()
                == 1
        );
        c.check_results(vec![result(&k, "a", 1, CheckStatus::Passing)], 5, 0);
        assert_eq!(c.instance(&k).unwrap().status, InstanceStatus::Critical);
        assert_eq!(
            c.set_status(&k, true, 6, 0),
            Err(CatalogError::InstanceCritical)
        );
    }
}
#[cfg(test)]
mod size {
    use super::*;

    /// A million instances are a million of these: growing one by a word is 8 MB. The
    /// record, behind its `Arc` (two counts, 16 bytes), fits jemalloc's 160-byte size
    /// class; at 152 bytes it took a 192-byte one, 32 MB more at a million.
    #[test]
    fn an_instance_record_stays_within_144_bytes() {
        assert!(
            std::mem::size_of::<InstanceRecord>() <= 144,
            "InstanceRecord is {} bytes",
            std::mem::size_of::<InstanceRecord>()
        );
        assert_eq!(std::mem::size_of::<Bound>(), 32);
    }
}

#[cfg(test)]
mod format {
    use std::collections::BTreeMap;

    use super::*;
    use crate::replicated::checks::Probe;

    /// The record as it was declared before it was made compact, with plain types: what
    /// the log and every snapshot written so far hold.
    #[derive(Debug, Serialize, Deserialize)]
    struct PlainSpec {
        address: String,
        port: u16,
        tags: Vec<String>,
        meta: BTreeMap<String, String>,
        zone: Option<String>,
        region: Option<String>,
        weight: u32,
        deregister_after_ms: u64,
        checks: Vec<CheckSpec>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct PlainRecord {
        spec: PlainSpec,
        status: InstanceStatus,
        lease: Option<LeaseId>,
        own_lease: bool,
        lease_ended: bool,
        draining: bool,
        checks: Vec<CheckState>,
        checks_index: u64,
        registered_at_ms: u64,
        modify_index: u64,
        critical_since: Option<(u64, u64)>,
    }

    fn plain(zone: Option<&str>, checks: usize, critical: Option<(u64, u64)>) -> PlainRecord {
        PlainRecord {
            spec: PlainSpec {
                address: "a-host-name-longer-than-24-bytes.example".into(),
                port: 8080,
                tags: vec!["v1".into(), "primary".into()],
                meta: BTreeMap::from([("version".into(), "1.4".into())]),
                zone: zone.map(Into::into),
                region: Some("eu".into()),
                weight: 3,
                deregister_after_ms: 60_000,
                checks: (0..checks)
                    .map(|n| CheckSpec {
                        name: format!("check-{n}"),
                        probe: Probe::Tcp {
                            host: "127.0.0.1".into(),
                            port: 80,
                        },
                        interval_ms: 1_000,
                        timeout_ms: 500,
                        failures_before_critical: 1,
                        successes_before_passing: 1,
                    })
                    .collect(),
            },
            status: InstanceStatus::Critical,
            lease: Some(LeaseId::from_u128(7)),
            own_lease: true,
            lease_ended: true,
            draining: false,
            checks: (0..checks).map(|n| CheckState::new(n as u64)).collect(),
            // An instance without checks has none to tell apart: it is stored as 0.
            checks_index: if checks > 0 { 41 } else { 0 },
            registered_at_ms: 1_000,
            modify_index: 42,
            critical_since: critical,
        }
    }

    /// Decoding what the plain declaration wrote and encoding it again gives the same
    /// bytes, with and without checks, a zone and a critical episode; and the decoded
    /// record reads as the plain one did.
    #[test]
    fn the_compact_record_encodes_as_the_plain_one() {
        for (zone, checks, critical) in [
            (None, 0, None),
            (Some("zone-a"), 2, Some((5_000, 40))),
            (Some("zone-b"), 1, None),
        ] {
            let before = plain(zone, checks, critical);
            let bytes = bincode::serialize(&before).unwrap();
            let record: InstanceRecord = bincode::deserialize(&bytes).unwrap();
            assert_eq!(bincode::serialize(&record).unwrap(), bytes);
            assert_eq!(record.spec.zone(), zone);
            assert_eq!(record.spec.region(), Some("eu"));
            assert_eq!(&*record.spec.address, before.spec.address);
            assert_eq!(record.checks(), &before.checks[..]);
            assert_eq!(record.checks_index(), before.checks_index);
            assert_eq!(record.critical_since(), critical);
            let back: PlainRecord = bincode::deserialize(&bytes).unwrap();
            assert_eq!(back.spec.meta, before.spec.meta);
        }
    }
}
