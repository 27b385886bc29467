//! The service catalog: registering, deregistering, draining, and discovery reads.

use api_spec::acl::{Access, Resource};
use api_spec::InstanceStatus;
use locks::Lease;

use super::{App, AppError, Block, Consistency};
use crate::replicated::catalog::{Filter, InstanceKey, InstanceRecord, InstanceSpec};
use crate::replicated::ops::{Deregister, Register, RegisterRefused, SetStatus};
use crate::replicated::state::Binding;

/// One service's counts, for `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCounts {
    pub name: String,
    pub instances: u64,
    pub healthy: u64,
}

impl App {
    /// The servers that run active checks, as this node last applied them.
    pub fn probers(&self) -> Vec<u64> {
        self.inner.state.read().app.probers.clone()
    }

    /// Registers or updates an instance.
    pub async fn register(
        &self,
        key: InstanceKey,
        spec: InstanceSpec,
        binding: Binding,
    ) -> Result<(u64, InstanceRecord, Option<Lease>), AppError> {
        match self.propose_op(Register { key, spec, binding }).await? {
            (index, Ok((record, lease))) => Ok((index, record, lease)),
            (_, Err(RegisterRefused::LeaseNotFound(id))) => Err(AppError::LeaseNotFound(id)),
            (_, Err(RegisterRefused::Catalog(e))) => Err(e.into()),
        }
    }

    /// Deregisters an instance.
    pub async fn deregister(&self, key: InstanceKey) -> Result<u64, AppError> {
        let (index, result) = self.propose_op(Deregister(key)).await?;
        result.map(|_| index).map_err(AppError::from)
    }

    /// Sets an instance `draining` (out of healthy discovery) or back to `passing`.
    pub async fn set_status(
        &self,
        key: InstanceKey,
        draining: bool,
    ) -> Result<(u64, InstanceRecord, Option<Lease>), AppError> {
        let (index, result) = self.propose_op(SetStatus { key, draining }).await?;
        let record = result?;
        let state = self.inner.state.read();
        let lease = record.lease.and_then(|id| state.app.coordinator.lease(&id));
        drop(state);
        Ok((index, record, lease))
    }

    /// Every service the caller may read, with its instance and healthy counts.
    pub async fn services(
        &self,
        consistency: Consistency,
        block: Option<Block>,
    ) -> Result<(u64, Vec<ServiceCounts>), AppError> {
        self.caller()
            .require_some(Resource::Service, Access::Read)?;
        let watch = self.inner.watches.catalog();
        self.read_index(consistency).await?;
        self.block_until(watch, block, |app| app.catalog.catalog_index())
            .await?;
        let state = self.inner.state.read();
        let services = state
            .app
            .catalog
            .services()
            .filter(|(name, _)| self.permits(Resource::Service, name, Access::Read))
            .map(|(name, service)| ServiceCounts {
                name: name.to_string(),
                instances: service.instances.len() as u64,
                healthy: service
                    .instances
                    .values()
                    .filter(|r| r.status == InstanceStatus::Passing)
                    .count() as u64,
            })
            .collect();
        Ok((state.last_applied.map_or(0, |l| l.index), services))
    }

    /// The instances that pass `filter` across every service the caller may read (or
    /// the one named `only`), each turned into a `T` by `view(service, id, record)` under
    /// the read lock, as [`App::service`] does: Prometheus and Consul discovery.
    pub async fn instances_everywhere<T>(
        &self,
        only: Option<&str>,
        filter: &Filter,
        consistency: Consistency,
        view: impl Fn(&str, &str, &InstanceRecord) -> T,
    ) -> Result<(u64, Vec<T>), AppError> {
        match only {
            Some(name) => self.require(Resource::Service, name, Access::Read)?,
            None => self
                .caller()
                .require_some(Resource::Service, Access::Read)?,
        }
        self.read_index(consistency).await?;
        let state = self.inner.state.read();
        let instances = state
            .app
            .catalog
            .services()
            .filter(|(name, _)| only.is_none_or(|only| *only == ***name))
            .filter(|(name, _)| self.permits(Resource::Service, name, Access::Read))
            .flat_map(|(name, service)| {
                service
                    .instances
                    .iter()
                    .filter(|(_, record)| filter.matches(record))
                    .map(|(id, record)| view(name, id, record))
            })
            .collect();
        Ok((state.last_applied.map_or(0, |l| l.index), instances))
    }

    /// One service's instances that pass `filter`, each turned into a `T` by `view` with
    /// the lease it is bound to (`None` once the lease has ended, or for an instance
    /// without one) and the servers that run active checks. The caller picks the
    /// form (the HTTP layer its wire view), so nothing is copied twice under the read lock.
    pub async fn service<T>(
        &self,
        name: &str,
        filter: &Filter,
        consistency: Consistency,
        block: Option<Block>,
        view: impl Fn(&str, &InstanceRecord, Option<&Lease>, &[u64]) -> T,
    ) -> Result<(u64, Vec<T>), AppError> {
        self.require(Resource::Service, name, Access::Read)?;
        let watch = self.inner.watches.service(name);
        self.read_index(consistency).await?;
        self.block_until(watch, block, |app| app.catalog.service_index(name))
            .await?;
        let state = self.inner.state.read();
        let instances = state
            .app
            .catalog
            .service(name)
            .into_iter()
            .flat_map(|s| s.instances.iter())
            .filter(|(_, record)| filter.matches(record))
            .map(|(id, record)| {
                let lease = record.lease.and_then(|l| state.app.coordinator.lease(&l));
                view(id, record, lease.as_ref(), &state.app.probers)
            })
            .collect();
        Ok((state.last_applied.map_or(0, |l| l.index), instances))
    }
}
