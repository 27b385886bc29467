//! The discovery cache: one background blocking-query watch per service in use, and
//! answers from memory.
//!
//! The first [`Client::endpoints`] (or `resolve`) of a service fetches it and starts a
//! watch task that keeps the cached list current with blocking queries
//! (`GET /v1/services/{service}?status=any&index=N&wait=…`). Every later call answers from
//! the cache without touching the network. When the registry cannot be reached the last
//! good list keeps being served (stale-if-error) and [`Endpoints::age`] grows; the watch
//! reconnects with backoff and jitter. An error never empties a service's list: only an
//! answer from the registry can. A service the registry's ACLs refuse to show (401
//! `unauthenticated`, 403 `permission_denied`) before it was ever fetched fails at once
//! with that refusal, not after the timeout with [`Error::Unavailable`].
//!
//! [`Client::resolve`] picks one endpoint per call: locality (prefer the caller's zone,
//! then region, with a panic threshold; [`crate::locality`]) over the instances that are
//! passing and not ejected by passive health checks ([`crate::outlier`], fed by
//! [`Client::report`]), then the service's balancer ([`crate::balance`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use api_spec::{Instance, InstanceStatus};
use tokio::sync::watch;

use crate::api::{ReadOptions, ServiceQuery};
use crate::balance::{Balancer, InFlight, Policy};
use crate::locality::{self, Locality, LocalityPolicy, Tier};
use crate::outlier::{Outcome, OutlierConfig, OutlierDetector};
use crate::{Client, Consistency, Error, Inner, Result};

/// How long one blocking query of the watch is held by the server.
const WATCH_WAIT: Duration = Duration::from_secs(30);

/// First and longest pause between failed watch attempts (doubling, with jitter).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What the cache knows of one service.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// Every registered instance, whatever its status (filters apply on read).
    pub instances: Arc<Vec<Arc<Instance>>>,
    /// The `X-Registry-Index` of the answer they came from.
    pub index: u64,
    /// When the registry last answered the watch (or the first fetch).
    pub refreshed: Instant,
    /// The watch's last error, if its last attempt failed.
    pub error: Option<String>,
}

/// How a service's endpoints are chosen (see [`Client::configure`]).
#[derive(Debug, Clone, Default)]
pub struct ServicePolicy {
    /// The balancer.
    pub policy: Policy,
    /// Only instances passing this filter (tags, zone, region, meta) are resolved.
    pub filter: ServiceQuery,
}

/// Discovery settings of a client (see [`crate::ClientBuilder`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct DiscoveryConfig {
    pub locality: Locality,
    pub locality_policy: LocalityPolicy,
    pub outliers: OutlierConfig,
    pub policy: Policy,
}

/// One watched service: its snapshot, its balancer and passive health, and the task
/// keeping it fresh.
#[derive(Debug)]
pub(crate) struct ServiceCache {
    snapshot: RwLock<Option<Snapshot>>,
    /// The balancer and filter in force; replaced by [`Client::configure`].
    policy: RwLock<(Arc<Balancer>, Arc<ServiceQuery>)>,
    outliers: OutlierDetector,
    /// The watch's last failure if it was an ACL refusal (401 or 403); cleared by an
    /// answer. Without a snapshot, it is what callers get instead of waiting.
    refused: RwLock<Option<Error>>,
    /// Ticks on every refresh (and on failures), for `changed()` and first-load waits.
    ticks: watch::Sender<u64>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for ServiceCache {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl ServiceCache {
    pub(crate) fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies `update` and records `refused` (see [`ServiceCache::refused`]), then
    /// ticks.
    fn store(&self, refused: Option<Error>, update: impl FnOnce(&mut Option<Snapshot>)) {
        update(&mut self.snapshot.write().unwrap_or_else(|e| e.into_inner()));
        *self.refused.write().unwrap_or_else(|e| e.into_inner()) = refused;
        self.ticks.send_modify(|t| *t += 1);
    }

    /// A copy of the recorded refusal, if any.
    fn refusal(&self) -> Option<Error> {
        self.refused
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(Error::copy_api)
    }
}

/// The caches of one client, by service name.
#[derive(Debug, Default)]
pub(crate) struct Caches {
    services: Mutex<HashMap<String, Arc<ServiceCache>>>,
}

/// A service's healthy endpoints as the cache holds them.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The instances that passed the filters.
    pub instances: Vec<Instance>,
    /// The registry index the list reflects.
    pub index: u64,
    /// Time since the registry last answered for this service. A connected watch hears
    /// from it at least every 30 s (its blocking query's wait) and at every change, so an
    /// age well past that means the registry has been unreachable and the list is the
    /// last good one (`error` then says why).
    pub age: Duration,
    /// Why the last refresh failed, while it fails.
    pub error: Option<String>,
}

impl Client {
    /// The cache of `service`, started (first fetch done) if it was not.
    pub(crate) async fn cache(&self, service: &str) -> Result<Arc<ServiceCache>> {
        let cache = {
            let mut services = self
                .inner
                .caches
                .services
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match services.get(service) {
                Some(cache) => cache.clone(),
                None => {
                    let config = &self.inner.discovery;
                    let balancer = Arc::new(Balancer::new(config.policy));
                    let cache = Arc::new(ServiceCache {
                        snapshot: RwLock::new(None),
                        policy: RwLock::new((balancer, Arc::new(ServiceQuery::default()))),
                        outliers: OutlierDetector::new(config.outliers),
                        refused: RwLock::new(None),
                        ticks: watch::channel(0).0,
                        task: Mutex::new(None),
                    });
                    let task = tokio::spawn(watch_service(
                        Arc::downgrade(&self.inner),
                        Arc::downgrade(&cache),
                        service.to_owned(),
                    ));
                    *cache.task.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(task.abort_handle());
                    services.insert(service.to_owned(), cache.clone());
                    cache
                }
            }
        };
        if cache.snapshot().is_none() {
            // First use: wait for the first answer (or the watch's first failures, up to
            // the client's timeout; a refusal ends the wait, since waiting will not help).
            let mut ticks = cache.ticks.subscribe();
            let deadline = tokio::time::Instant::now() + self.inner.timeout;
            while cache.snapshot().is_none() && cache.refusal().is_none() {
                match tokio::time::timeout_at(deadline, ticks.changed()).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            if cache.snapshot().is_none() {
                if let Some(refusal) = cache.refusal() {
                    return Err(refusal);
                }
            }
        }
        Ok(cache)
    }

    /// The healthy (passing) instances of `service` that match `filter`, from the cache.
    /// The first call for a service fetches it; later calls do not touch the network.
    ///
    /// Fails only when the service was never fetched successfully: at once with the
    /// registry's answer if its ACLs refused (401 `unauthenticated`, 403
    /// `permission_denied`), else with [`Error::Unavailable`] after the client's timeout.
    /// Once it was fetched, the last good list is served whatever happens to the registry
    /// (see [`Endpoints::age`] and [`Endpoints::error`]).
    pub async fn endpoints(&self, service: &str, filter: &ServiceQuery) -> Result<Endpoints> {
        let cache = self.cache(service).await?;
        let snapshot = cache.snapshot().ok_or_else(|| Error::Unavailable {
            service: service.to_owned(),
        })?;
        let instances = snapshot
            .instances
            .iter()
            .filter(|i| i.status == InstanceStatus::Passing && matches(i, filter))
            .map(|i| Instance::clone(i))
            .collect();
        Ok(Endpoints {
            instances,
            index: snapshot.index,
            age: snapshot.refreshed.elapsed(),
            error: snapshot.error,
        })
    }

    /// Waits until the cache of `service` reflects an index past `since` (for callers
    /// that react to changes: pass the [`Endpoints::index`] they last saw).
    pub async fn changed(&self, service: &str, since: u64) -> Result<Endpoints> {
        let cache = self.cache(service).await?;
        let mut ticks = cache.ticks.subscribe();
        loop {
            // Subscribed before looking, so a refresh in between is not missed.
            ticks.borrow_and_update();
            if cache.snapshot().is_some_and(|s| s.index > since) {
                return self.endpoints(service, &ServiceQuery::default()).await;
            }
            if ticks.changed().await.is_err() {
                return Err(Error::Unavailable {
                    service: service.to_owned(),
                });
            }
        }
    }
}

/// One endpoint chosen by [`Client::resolve`].
#[derive(Debug)]
pub struct Resolved {
    pub instance: Arc<Instance>,
    /// Counts the request as in flight (for least-outstanding balancing) until dropped:
    /// keep it for the duration of the call.
    pub in_flight: InFlight,
    /// Which candidates the pick was made among (the caller's zone, region, any healthy,
    /// or all registered in panic mode).
    pub tier: Tier,
    /// Time since the registry last answered for this service.
    pub age: Duration,
}

impl Client {
    /// Picks one endpoint of `service` from the cache (see the module docs).
    pub async fn resolve(&self, service: &str) -> Result<Resolved> {
        self.resolve_by_key(service, None).await
    }

    /// Like [`Client::resolve`], with a request key for consistent hashing (the
    /// [`Policy::ConsistentHash`] balancer sends equal keys to the same endpoint).
    pub async fn resolve_by_key(&self, service: &str, key: Option<&[u8]>) -> Result<Resolved> {
        let cache = self.cache(service).await?;
        let unavailable = || Error::Unavailable {
            service: service.to_owned(),
        };
        let snapshot = cache.snapshot().ok_or_else(unavailable)?;
        let (balancer, filter) = cache
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let filtered: Vec<Arc<Instance>>;
        let instances: &[Arc<Instance>] = if *filter == ServiceQuery::default() {
            &snapshot.instances
        } else {
            filtered = snapshot
                .instances
                .iter()
                .filter(|i| matches(i, &filter))
                .cloned()
                .collect();
            &filtered
        };
        let now = Instant::now();
        let config = &self.inner.discovery;
        let selection =
            locality::select(instances, &config.locality, &config.locality_policy, |i| {
                !cache.outliers.is_ejected(&i.id, now)
            });
        let pick = balancer
            .pick(&selection.candidates, key)
            .ok_or_else(|| Error::NoEndpoint {
                service: service.to_owned(),
            })?;
        let instance = selection
            .candidates
            .get(pick.index)
            .map(|i| Arc::clone(i))
            .ok_or_else(unavailable)?;
        Ok(Resolved {
            instance,
            in_flight: pick.guard,
            tier: selection.tier,
            age: snapshot.refreshed.elapsed(),
        })
    }

    /// Reports how a call to an endpoint of `service` went, for passive health checks:
    /// after consecutive failures the endpoint is ejected from [`Client::resolve`] for a
    /// growing time, and returns by itself; never more than a set share of a service is
    /// ejected at once.
    pub fn report(&self, service: &str, instance_id: &str, outcome: Outcome) {
        let cache = self
            .inner
            .caches
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned();
        if let Some(cache) = cache {
            // The cap is a share of the endpoints that could take traffic.
            let registered = cache.snapshot().map_or(0, |s| {
                s.instances
                    .iter()
                    .filter(|i| i.status == InstanceStatus::Passing)
                    .count()
            });
            cache
                .outliers
                .report(instance_id, outcome, Instant::now(), registered);
        }
    }

    /// Sets how `service` is resolved: its balancer and filter (starts watching it).
    pub async fn configure(&self, service: &str, policy: ServicePolicy) -> Result<()> {
        let cache = self.cache(service).await?;
        *cache.policy.write().unwrap_or_else(|e| e.into_inner()) = (
            Arc::new(Balancer::new(policy.policy)),
            Arc::new(policy.filter),
        );
        Ok(())
    }
}

/// Whether `instance` passes the client-side `filter` (tags, zone, region, meta; the
/// status filter does not apply: the cache serves passing instances).
pub(crate) fn matches(instance: &Instance, filter: &ServiceQuery) -> bool {
    filter.tags.iter().all(|t| instance.tags.contains(t))
        && filter
            .zone
            .as_ref()
            .is_none_or(|z| instance.zone.as_ref() == Some(z))
        && filter
            .region
            .as_ref()
            .is_none_or(|r| instance.region.as_ref() == Some(r))
        && filter
            .meta
            .iter()
            .all(|(k, v)| instance.meta.get(k) == Some(v))
}

/// The watch task of one service: blocking queries in a loop, until the cache or the
/// client is dropped.
async fn watch_service(client: Weak<Inner>, cache: Weak<ServiceCache>, service: String) {
    let all = ServiceQuery {
        status: Some(None),
        ..ServiceQuery::default()
    };
    let mut index = 0;
    let mut failures = 0u32;
    loop {
        let Some(inner) = client.upgrade() else {
            return;
        };
        let client = Client { inner };
        let read = if index == 0 {
            ReadOptions::default()
        } else {
            ReadOptions {
                consistency: Consistency::Stale,
                ..ReadOptions::blocking(index, WATCH_WAIT)
            }
        };
        let answer = client.service(&service, &all, read).await;
        drop(client);
        let Some(cache) = cache.upgrade() else { return };
        match answer {
            Ok(response) => {
                failures = 0;
                // An index that went backwards means the registry was reset (restored,
                // or bootstrapped anew) or a lagging server answered: either way the
                // answer is what the registry says now, and waiting for the old index
                // could take forever on a reset registry. Start over from it (as
                // Consul's watches do).
                let answer_index = response.index.unwrap_or(0);
                cache.store(None, |snapshot| {
                    let instances: Vec<Arc<Instance>> =
                        response.value.instances.into_iter().map(Arc::new).collect();
                    cache
                        .outliers
                        .retain(instances.iter().map(|i| i.id.as_str()));
                    *snapshot = Some(Snapshot {
                        instances: Arc::new(instances),
                        index: answer_index,
                        refreshed: Instant::now(),
                        error: None,
                    })
                });
                index = answer_index;
            }
            Err(e) => {
                failures += 1;
                let message = e.to_string();
                let refused = (e.is_unauthenticated() || e.is_permission_denied()).then_some(e);
                cache.store(refused, |snapshot| {
                    if let Some(s) = snapshot {
                        s.error = Some(message);
                    }
                });
                drop(cache);
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

/// Pause after the `failures`-th failure in a row: doubling from [`BACKOFF_MIN`] up to
/// [`BACKOFF_MAX`], plus up to half again of random jitter.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_MIN.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(10)));
    let base = base.min(BACKOFF_MAX);
    let jitter = rand::random_range(0..=base.as_millis() as u64 / 2);
    base + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn instance(id: &str, zone: &str, tags: &[&str]) -> Instance {
        Instance {
            service: "s".into(),
            id: id.into(),
            address: "10.0.0.1".into(),
            port: 80,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            meta: BTreeMap::from([("v".to_owned(), "1".to_owned())]),
            zone: Some(zone.into()),
            region: None,
            weight: 1,
            status: InstanceStatus::Passing,
            lease: Some(uuid::Uuid::nil()),
            own_lease: true,
            ttl: Some("10s".into()),
            ttl_ms: Some(10_000),
            deregister_after: "1m".into(),
            deregister_after_ms: 60_000,
            registered_at_ms: 0,
            modify_index: 1,
            critical_since_ms: None,
            checks: Vec::new(),
        }
    }

    #[test]
    fn filters_match_tags_zone_and_meta() {
        let i = instance("a", "z1", &["blue", "v2"]);
        assert!(matches(&i, &ServiceQuery::default()));
        let tagged = ServiceQuery {
            tags: vec!["blue".into()],
            zone: Some("z1".into()),
            meta: vec![("v".into(), "1".into())],
            ..ServiceQuery::default()
        };
        assert!(matches(&i, &tagged));
        let other_zone = ServiceQuery {
            zone: Some("z2".into()),
            ..ServiceQuery::default()
        };
        assert!(!matches(&i, &other_zone));
        let missing_tag = ServiceQuery {
            tags: vec!["blue".into(), "red".into()],
            ..ServiceQuery::default()
        };
        assert!(!matches(&i, &missing_tag));
    }

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        assert!(backoff(1) >= BACKOFF_MIN && backoff(1) <= BACKOFF_MIN * 3 / 2);
        assert!(backoff(4) >= BACKOFF_MIN * 8);
        let late = backoff(30);
        assert!(late >= BACKOFF_MAX && late <= BACKOFF_MAX * 3 / 2);
    }
}
