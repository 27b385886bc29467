//! A registration that keeps itself alive: [`Client::register_instance`] registers an
//! instance and returns a [`Registration`] whose background task heartbeats it, registers
//! it again when the registry forgot it, and which deregisters it on shutdown or drop.
//! An instance registered with active checks and no lease is kept by the cluster's
//! probes instead: its guard sends no heartbeats and only deregisters it.

use std::sync::Arc;
use std::time::Duration;

use api_spec::{codes, HeartbeatResponse, Instance, RegisterRequest, DEFAULT_INSTANCE_TTL};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use crate::handles::{backoff, jittered};
use crate::{Client, Error, Response, Result, Uuid};

/// Where a registration stands; what [`Registration::watch`] publishes.
#[derive(Debug, Clone)]
pub struct RegistrationState {
    /// The registry's answer to the latest (re-)registration; its lease and TTL updated
    /// by heartbeats. Its `checks` show their status as of that answer: the guard does
    /// not poll them (read the service for fresh ones).
    pub instance: Instance,
    /// How many times the handle registered the instance: 1, plus one for each time the
    /// registry had forgotten it (deregistered, or critical after a missed TTL).
    pub registrations: u64,
    /// Heartbeats the registry accepted (always 0 for an instance without a lease).
    pub heartbeats: u64,
    /// Failed heartbeats or registrations since the last success; 0 while all is well.
    pub consecutive_failures: u32,
    /// The most recent failure, kept after recovery (see `consecutive_failures`).
    pub last_error: Option<Arc<Error>>,
}

/// A registered instance kept alive in the background.
///
/// The task heartbeats every third of the lease's TTL (jittered). A heartbeat answered
/// `404 instance_not_found` or `instance_critical` means the registry forgot the
/// instance: the task registers it again with the same request (and so a new own lease).
/// Transport errors, 503s and other failures are retried with a backoff of at most a
/// third of the TTL, and are visible in [`state`](Self::state) and
/// [`watch`](Self::watch).
///
/// An instance registered with `checks` and neither `ttl` nor `lease` has no lease (the
/// registry answers without one): the cluster probes it, so there is nothing to renew
/// and no heartbeat task runs at all. Nothing then tells the guard that the registry
/// forgot the instance, so it does not register it again either; such an instance
/// stays registered until it is deregistered, or critical for its `deregister_after`
/// (72 h by default). The same holds from the moment a re-registration is answered
/// without a lease: the task stops there rather than heartbeat a lease that does not
/// exist.
///
/// [`shutdown`](Self::shutdown) stops the task and deregisters. Dropping the handle stops
/// the task too and deregisters in a spawned task if a tokio runtime is available;
/// without one a leased instance turns critical after its TTL, and one without a lease
/// stays registered.
#[derive(Debug)]
pub struct Registration {
    client: Client,
    service: String,
    id: String,
    state: watch::Receiver<RegistrationState>,
    /// What keeps the state published; `None` once stopped.
    keeper: Option<Keeper>,
    /// Set by [`Registration::shutdown`], which deregistered already, so that the drop
    /// that follows does not deregister a second time.
    closed: bool,
}

impl Registration {
    /// The service the instance belongs to.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The instance as last registered (lease and TTL as last renewed).
    pub fn instance(&self) -> Instance {
        self.state.borrow().instance.clone()
    }

    /// The lease currently keeping the instance alive (a re-registration gets a new one
    /// unless the request names a lease); `None` for an instance kept by its checks
    /// alone, which has no lease and is not heartbeated.
    pub fn lease(&self) -> Option<Uuid> {
        self.state.borrow().instance.lease
    }

    /// A snapshot of where the registration stands.
    pub fn state(&self) -> RegistrationState {
        self.state.borrow().clone()
    }

    /// The most recent failure, if any (see [`RegistrationState::consecutive_failures`]
    /// for whether it is still failing).
    pub fn last_error(&self) -> Option<Arc<Error>> {
        self.state.borrow().last_error.clone()
    }

    /// A receiver that sees every change: heartbeats, failures, re-registrations (none,
    /// for an instance without a lease: its receivers just wait).
    pub fn watch(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// Stops heartbeating (if it heartbeats) and deregisters the instance. An instance
    /// the registry no longer knows counts as deregistered.
    pub async fn shutdown(mut self) -> Result<()> {
        self.closed = true;
        if let Some(task) = self.keeper.take().and_then(Keeper::stop) {
            // Ends at its next await point; nothing to report.
            let _ = task.await;
        }
        deregister(&self.client, &self.service, &self.id).await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        // Stop the task first: without a runtime to deregister on, it must not go on
        // heartbeating an instance nobody holds.
        let task = self.keeper.take().and_then(Keeper::stop);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let service = std::mem::take(&mut self.service);
        let id = std::mem::take(&mut self.id);
        runtime.spawn(async move {
            if let Some(task) = task {
                let _ = task.await;
            }
            let _ = deregister(&client, &service, &id).await;
        });
    }
}

/// What a [`Registration`] runs in the background, if anything.
#[derive(Debug)]
enum Keeper {
    /// The heartbeat task, and what stops it (dropping the sender does).
    Heartbeats {
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    },
    /// An instance registered without a lease: nothing runs. The state's sender is
    /// kept so that [`Registration::watch`] receivers wait for a change that does not
    /// come, as they would for a quiet leased instance, rather than see a closed
    /// channel (which a loop on `changed()` could spin on).
    Idle {
        _state: watch::Sender<RegistrationState>,
    },
}

impl Keeper {
    /// Stops the heartbeat task, returning it so that the caller can wait for its end.
    fn stop(self) -> Option<JoinHandle<()>> {
        match self {
            Keeper::Heartbeats { stop, task } => {
                drop(stop);
                Some(task)
            }
            Keeper::Idle { .. } => None,
        }
    }
}

/// Deregisters, treating an unknown instance as done.
async fn deregister(client: &Client, service: &str, id: &str) -> Result<()> {
    match client.deregister(service, id).await {
        Ok(_) => Ok(()),
        Err(error) if error.code() == Some(codes::INSTANCE_NOT_FOUND) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Whether a heartbeat's error says the registry forgot the instance.
fn forgotten(error: &Error) -> bool {
    error.status() == Some(404)
        && matches!(
            error.code(),
            Some(codes::INSTANCE_NOT_FOUND | codes::INSTANCE_CRITICAL)
        )
}

/// The TTL of the lease to heartbeat, `None` for an instance without a lease (nothing to
/// renew). A lease shown without a TTL (which the registry does not send) is taken to
/// have the default instance TTL rather than not heartbeated.
fn lease_ttl(instance: &Instance) -> Option<Duration> {
    instance.lease?;
    Some(
        instance
            .ttl_ms
            .map_or(DEFAULT_INSTANCE_TTL, Duration::from_millis),
    )
}

/// Heartbeat period for a lease of `ttl`.
fn heartbeat_interval(ttl: Duration) -> Duration {
    jittered(ttl / 3, 0.2).max(Duration::from_millis(50))
}

/// Longest pause between retries after failures.
fn retry_cap(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// The heartbeat task.
#[derive(Debug)]
struct Heartbeater {
    client: Client,
    service: String,
    id: String,
    request: RegisterRequest,
    state: watch::Sender<RegistrationState>,
}

/// One successful step of the task.
enum Beat {
    Renewed(HeartbeatResponse),
    Registered(Box<Instance>),
}

impl Heartbeater {
    /// Heartbeats the lease of `ttl` until stopped, or until a re-registration is
    /// answered without a lease.
    async fn run(self, mut ttl: Duration, mut stop: oneshot::Receiver<()>) {
        let mut next = Instant::now() + heartbeat_interval(ttl);
        let mut failures = 0u32;
        let mut register = false;
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => return,
                () = sleep_until(next) => {}
            }
            let sent = Instant::now();
            let step = async {
                if register {
                    self.client
                        .register(&self.service, &self.id, &self.request)
                        .await
                        .map(|r: Response<Instance>| Beat::Registered(Box::new(r.value)))
                } else {
                    self.client
                        .heartbeat(&self.service, &self.id)
                        .await
                        .map(|r| Beat::Renewed(r.value))
                }
            };
            let outcome = tokio::select! {
                biased;
                _ = &mut stop => return,
                outcome = step => outcome,
            };
            match outcome {
                Ok(beat) => {
                    failures = 0;
                    register = false;
                    let mut renewing = None;
                    self.state.send_modify(|s| {
                        s.consecutive_failures = 0;
                        match beat {
                            Beat::Renewed(answer) => {
                                s.heartbeats += 1;
                                s.instance.lease = Some(answer.lease);
                                s.instance.ttl_ms = Some(answer.ttl_ms);
                            }
                            Beat::Registered(instance) => {
                                s.registrations += 1;
                                s.instance = *instance;
                            }
                        }
                        renewing = lease_ttl(&s.instance);
                    });
                    let Some(renewed) = renewing else {
                        // Registered again without a lease: the cluster's checks keep it
                        // now, and there is nothing left to heartbeat. Holding the state's
                        // sender until stopped, as an idle registration does.
                        let _ = stop.await;
                        return;
                    };
                    ttl = renewed;
                    next = sent + heartbeat_interval(ttl);
                }
                Err(error) => {
                    failures += 1;
                    if !register && forgotten(&error) {
                        // Register again at once; a failure there backs off.
                        register = true;
                        next = Instant::now();
                    } else {
                        next = Instant::now() + backoff(failures, retry_cap(ttl));
                    }
                    self.state.send_modify(|s| {
                        s.consecutive_failures = failures;
                        s.last_error = Some(Arc::new(error));
                    });
                }
            }
        }
    }
}

impl Client {
    /// Registers instance `id` of `service` with `request` and keeps it registered until
    /// the returned handle is shut down or dropped; see [`Registration`]. Must be called
    /// inside a tokio runtime (the heartbeat task is spawned on it).
    ///
    /// `request.checks` are active health checks the cluster runs against the instance.
    /// With checks and neither `ttl` nor `lease` the instance gets no lease, and the
    /// handle sends no heartbeats: it only deregisters the instance at the end. With a
    /// `ttl` or `lease` as well, the instance is heartbeated like any other and is
    /// healthy only while both its lease lives and its checks pass.
    pub async fn register_instance(
        &self,
        service: &str,
        id: &str,
        request: RegisterRequest,
    ) -> Result<Registration> {
        let instance = self.register(service, id, &request).await?.value;
        let ttl = lease_ttl(&instance);
        let (sender, state) = watch::channel(RegistrationState {
            instance,
            registrations: 1,
            heartbeats: 0,
            consecutive_failures: 0,
            last_error: None,
        });
        let keeper = match ttl {
            // No lease, no heartbeats: the state stays as registered.
            None => Keeper::Idle { _state: sender },
            Some(ttl) => {
                let (stop, stopped) = oneshot::channel();
                let heartbeater = Heartbeater {
                    client: self.clone(),
                    service: service.to_owned(),
                    id: id.to_owned(),
                    request,
                    state: sender,
                };
                let task = tokio::spawn(heartbeater.run(ttl, stopped));
                Keeper::Heartbeats { stop, task }
            }
        };
        Ok(Registration {
            client: self.clone(),
            service: service.to_owned(),
            id: id.to_owned(),
            state,
            keeper: Some(keeper),
            closed: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use api_spec::checks::{CheckDefinition, CheckStatus};

    use super::*;
    use crate::auth_test::{DEREGISTERED, HEARTBEAT, INSTANCE};
    use crate::failover_test::Canned;

    /// A check-only instance as the registry answers it: no lease, no TTL, one check
    /// not probed yet.
    const CHECKED: &str = r#"{"service":"web","id":"w1","address":"10.0.0.1","port":80,"tags":[],"meta":{},"weight":1,"status":"critical","own_lease":false,"deregister_after":"72h","deregister_after_ms":259200000,"registered_at_ms":1,"modify_index":5,"critical_since_ms":1,"checks":[{"name":"http","kind":"http","target":"http://10.0.0.1:80/health","interval":"10s","interval_ms":10000,"timeout_ms":5000,"failures_before_critical":3,"successes_before_passing":1,"status":"critical","output":"","changed_at_ms":1}]}"#;
    const FORGOTTEN: &str = r#"{"error":{"code":"instance_not_found","message":"no web/w1"}}"#;

    fn client(server: &Canned) -> Client {
        Client::builder([server.addr.as_str()])
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    fn checked_request() -> RegisterRequest {
        RegisterRequest {
            address: "10.0.0.1".into(),
            port: 80,
            tags: Vec::new(),
            meta: Default::default(),
            zone: None,
            region: None,
            weight: None,
            ttl: None,
            deregister_after: None,
            lease: None,
            checks: vec![CheckDefinition {
                name: "http".into(),
                http: Some("http://10.0.0.1:80/health".into()),
                ..CheckDefinition::default()
            }],
        }
    }

    /// The request lines `server` saw, in order.
    fn lines(server: &Canned) -> Vec<String> {
        server.seen().into_iter().map(|s| s.line).collect()
    }

    /// Waits (up to 5 s) until `server` has seen `count` requests.
    async fn until_seen(server: &Canned, count: usize) {
        let wait = async {
            while server.hits() < count {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            panic!("expected {count} requests, saw {:?}", lines(server));
        }
    }

    fn api_error(status: u16, code: &str) -> Error {
        Error::Api {
            endpoint: "127.0.0.1:1".into(),
            status,
            code: code.into(),
            message: String::new(),
            conflict: None,
        }
    }

    #[test]
    fn only_a_404_about_the_instance_means_register_again() {
        assert!(forgotten(&api_error(404, codes::INSTANCE_NOT_FOUND)));
        assert!(forgotten(&api_error(404, codes::INSTANCE_CRITICAL)));
        assert!(!forgotten(&api_error(404, codes::NOT_FOUND)));
        assert!(!forgotten(&api_error(503, codes::NO_LEADER)));
    }

    #[test]
    fn heartbeats_come_every_third_of_the_ttl() {
        let ttl = Duration::from_secs(3);
        for _ in 0..50 {
            let interval = heartbeat_interval(ttl);
            assert!(interval <= Duration::from_secs(1) && interval >= Duration::from_millis(800));
        }
        assert_eq!(
            retry_cap(Duration::from_secs(1)),
            Duration::from_secs(1) / 3
        );
    }

    #[test]
    fn only_an_instance_with_a_lease_has_a_ttl_to_heartbeat() {
        let leased: Instance = serde_json::from_str(INSTANCE).unwrap();
        assert_eq!(lease_ttl(&leased), Some(Duration::from_secs(1)));
        let checked: Instance = serde_json::from_str(CHECKED).unwrap();
        assert_eq!((checked.lease, checked.ttl_ms), (None, None));
        assert_eq!(lease_ttl(&checked), None);
        // A TTL left out next to a lease: heartbeat at the default rather than never.
        let bare = Instance {
            ttl_ms: None,
            ..leased
        };
        assert_eq!(lease_ttl(&bare), Some(DEFAULT_INSTANCE_TTL));
    }

    #[tokio::test]
    async fn an_instance_without_a_lease_is_never_heartbeated_but_is_deregistered() {
        let server = Canned::scripted(|line| {
            if line.ends_with("/heartbeat") {
                (200, HEARTBEAT)
            } else if line.starts_with("DELETE ") {
                (200, DEREGISTERED)
            } else {
                (200, CHECKED)
            }
        })
        .await;
        let registration = client(&server)
            .register_instance("web", "w1", checked_request())
            .await
            .unwrap();
        assert_eq!(registration.lease(), None);
        assert!(matches!(registration.keeper, Some(Keeper::Idle { .. })));
        let checks = registration.instance().checks;
        assert_eq!(checks.len(), 1);
        assert_eq!(
            (checks[0].name.as_str(), checks[0].status),
            ("http", CheckStatus::Critical)
        );
        // The checks went out with the registration.
        let sent: RegisterRequest = serde_json::from_str(&server.seen()[0].body).unwrap();
        assert_eq!(sent, checked_request());

        // Nothing changes and nothing is sent, however long one waits; a watcher waits
        // rather than seeing a closed channel.
        let mut watch = registration.watch();
        let changed = tokio::time::timeout(Duration::from_millis(600), watch.changed()).await;
        assert!(changed.is_err(), "{changed:?}");
        assert_eq!(lines(&server), ["PUT /v1/services/web/instances/w1"]);
        assert_eq!(registration.state().heartbeats, 0);

        registration.shutdown().await.unwrap();
        assert_eq!(
            lines(&server),
            [
                "PUT /v1/services/web/instances/w1",
                "DELETE /v1/services/web/instances/w1"
            ]
        );
    }

    #[tokio::test]
    async fn dropping_a_registration_without_a_lease_deregisters_it() {
        let server = Canned::scripted(|line| {
            if line.starts_with("DELETE ") {
                (200, DEREGISTERED)
            } else {
                (200, CHECKED)
            }
        })
        .await;
        let registration = client(&server)
            .register_instance("web", "w1", checked_request())
            .await
            .unwrap();
        drop(registration);
        until_seen(&server, 2).await;
        assert_eq!(
            lines(&server),
            [
                "PUT /v1/services/web/instances/w1",
                "DELETE /v1/services/web/instances/w1"
            ]
        );
    }

    #[tokio::test]
    async fn a_registration_answered_without_a_lease_stops_the_heartbeats() {
        // Registered with a 1 s lease; the registry then forgets the instance and
        // registers it again without one.
        let registrations = AtomicUsize::new(0);
        let server = Canned::scripted(move |line| {
            if line.ends_with("/heartbeat") {
                (404, FORGOTTEN)
            } else if line.starts_with("DELETE ") {
                (200, DEREGISTERED)
            } else if registrations.fetch_add(1, Ordering::SeqCst) == 0 {
                (200, INSTANCE)
            } else {
                (200, CHECKED)
            }
        })
        .await;
        let request = RegisterRequest {
            ttl: Some("1s".into()),
            ..checked_request()
        };
        let registration = client(&server)
            .register_instance("web", "w1", request)
            .await
            .unwrap();
        assert!(registration.lease().is_some());
        until_seen(&server, 3).await;
        // Well over three heartbeat periods of the old lease: nothing more is sent.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(
            lines(&server),
            [
                "PUT /v1/services/web/instances/w1",
                "PUT /v1/services/web/instances/w1/heartbeat",
                "PUT /v1/services/web/instances/w1",
            ]
        );
        let state = registration.state();
        assert_eq!((state.registrations, state.heartbeats), (2, 0));
        assert_eq!(state.consecutive_failures, 0);
        assert_eq!(registration.lease(), None);

        registration.shutdown().await.unwrap();
        assert_eq!(
            lines(&server).last().map(String::as_str),
            Some("DELETE /v1/services/web/instances/w1")
        );
    }
}
