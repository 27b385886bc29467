//! A registration that keeps itself alive: [`Client::register_instance`] registers an
//! instance and returns a [`Registration`] whose background task heartbeats it, registers
//! it again when the registry forgot it, and which deregisters it on shutdown or drop.

use std::sync::Arc;
use std::time::Duration;

use api_spec::{codes, HeartbeatResponse, Instance, RegisterRequest};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use crate::handles::{backoff, jittered};
use crate::{Client, Error, Response, Result, Uuid};

/// Where a registration stands; what [`Registration::watch`] publishes.
#[derive(Debug, Clone)]
pub struct RegistrationState {
    /// The registry's answer to the latest (re-)registration; its lease and TTL updated
    /// by heartbeats.
    pub instance: Instance,
    /// How many times the handle registered the instance: 1, plus one for each time the
    /// registry had forgotten it (deregistered, or critical after a missed TTL).
    pub registrations: u64,
    /// Heartbeats the registry accepted.
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
/// [`shutdown`](Self::shutdown) stops the task and deregisters. Dropping the handle stops
/// the task too and deregisters in a spawned task if a tokio runtime is available;
/// without one the instance turns critical after its TTL.
#[derive(Debug)]
pub struct Registration {
    client: Client,
    service: String,
    id: String,
    state: watch::Receiver<RegistrationState>,
    /// Dropping it stops the heartbeat task. `None` once shut down.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
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
    /// unless the request names a lease).
    pub fn lease(&self) -> Uuid {
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

    /// A receiver that sees every change: heartbeats, failures, re-registrations.
    pub fn watch(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// Stops heartbeating and deregisters the instance. An instance the registry no
    /// longer knows counts as deregistered.
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop = None;
        if let Some(task) = self.task.take() {
            // Ends at its next await point; nothing to report.
            let _ = task.await;
        }
        deregister(&self.client, &self.service, &self.id).await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.stop.take().is_none() {
            return; // shut down already
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let service = std::mem::take(&mut self.service);
        let id = std::mem::take(&mut self.id);
        let task = self.task.take();
        runtime.spawn(async move {
            if let Some(task) = task {
                let _ = task.await;
            }
            let _ = deregister(&client, &service, &id).await;
        });
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
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut ttl = Duration::from_millis(self.state.borrow().instance.ttl_ms);
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
                    self.state.send_modify(|s| {
                        s.consecutive_failures = 0;
                        match beat {
                            Beat::Renewed(answer) => {
                                s.heartbeats += 1;
                                s.instance.lease = answer.lease;
                                s.instance.ttl_ms = answer.ttl_ms;
                            }
                            Beat::Registered(instance) => {
                                s.registrations += 1;
                                s.instance = *instance;
                            }
                        }
                        ttl = Duration::from_millis(s.instance.ttl_ms);
                    });
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
    pub async fn register_instance(
        &self,
        service: &str,
        id: &str,
        request: RegisterRequest,
    ) -> Result<Registration> {
        let instance = self.register(service, id, &request).await?.value;
        let (sender, state) = watch::channel(RegistrationState {
            instance,
            registrations: 1,
            heartbeats: 0,
            consecutive_failures: 0,
            last_error: None,
        });
        let (stop, stopped) = oneshot::channel();
        let heartbeater = Heartbeater {
            client: self.clone(),
            service: service.to_owned(),
            id: id.to_owned(),
            request,
            state: sender,
        };
        let task = tokio::spawn(heartbeater.run(stopped));
        Ok(Registration {
            client: self.clone(),
            service: service.to_owned(),
            id: id.to_owned(),
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
