//! What the DNS interface (`crate::dns`) reads: one service's passing instances, from
//! this node's memory.

use api_spec::acl::{Access, Resource};
use api_spec::InstanceStatus;

use super::App;
use crate::replicated::catalog::InstanceSpec;

impl App {
    /// The passing instances of the service called `name`, ignoring ASCII case (DNS names
    /// are case-insensitive, so services whose names differ only in case answer as one),
    /// each turned into a `T` by `view`, which may leave it out (`None`).
    ///
    /// `None` when no such service exists that this handle's caller may read
    /// (`service:read`). The server's own handle acts for the anonymous caller, so with
    /// ACLs on, DNS sees what `--acl-anonymous` allows, and a service it may not read is
    /// as unknown as one that does not exist.
    ///
    /// A stale read: this node's memory, no round trip to the leader (a DNS answer is
    /// cached for its TTL anyway). `view` runs under the state's read lock, so the caller
    /// copies only what it keeps. Finding the name takes one pass over the service names,
    /// since the catalog's own lookups are case-sensitive.
    pub fn passing_instances<T>(
        &self,
        name: &str,
        mut view: impl FnMut(&InstanceSpec) -> Option<T>,
    ) -> Option<Vec<T>> {
        let state = self.inner.state.read();
        let mut found: Option<Vec<T>> = None;
        let services = state.app.catalog.services().filter(|(service, _)| {
            service.eq_ignore_ascii_case(name)
                && self.permits(Resource::Service, service, Access::Read)
        });
        for (_, entry) in services {
            let passing = entry
                .instances
                .values()
                .filter(|record| record.status == InstanceStatus::Passing)
                .filter_map(|record| view(&record.spec));
            found.get_or_insert_with(Vec::new).extend(passing);
        }
        found
    }
}
