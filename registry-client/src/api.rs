//! The registry's catalog, lock, election and ACL token routes, one method each: the raw
//! API the discovery cache, the handles and `regctl` are built on.

use std::time::Duration;

use api_spec::acl::{CreateTokenRequest, RevokeTokenResponse, TokenCreated, TokenInfo, TokenList};
use api_spec::{
    AcquireRequest, CampaignRequest, CampaignResponse, DeregisterResponse, ElectionInfo,
    ElectionLeader, ElectionList, HeartbeatResponse, Instance, InstanceStatus, LockGrant, LockInfo,
    LockList, ProclaimRequest, RegisterRequest, ReleaseRequest, ReleaseResponse, ServiceInstances,
    ServiceList, SetStatusRequest,
};
use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::{Client, Consistency, Response, Result, Retry, Uuid};

/// Extra time a held request gets on top of what the server may hold it for.
const HOLD_MARGIN: Duration = Duration::from_secs(5);

/// How a read is served, and whether it blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    pub consistency: Consistency,
    /// Block until the answer would reflect an index past this one (a blocking query).
    pub index: Option<u64>,
    /// How long a blocking query may be held (server default 5 m, at most 10 m).
    pub wait: Option<Duration>,
}

impl ReadOptions {
    /// A blocking read: returns when something changed past `index`, or after `wait`.
    pub fn blocking(index: u64, wait: Duration) -> Self {
        Self {
            index: Some(index),
            wait: Some(wait),
            ..Self::default()
        }
    }

    fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        if self.consistency == Consistency::Stale {
            pairs.push(("stale".to_owned(), String::new()));
        }
        if let Some(index) = self.index {
            pairs.push(("index".to_owned(), index.to_string()));
            if let Some(wait) = self.wait {
                pairs.push(("wait".to_owned(), format!("{}ms", wait.as_millis())));
            }
        }
        pairs
    }

    /// The request timeout for a read the server may hold: its wait plus the server's
    /// jitter (up to 1/16) plus a margin.
    fn timeout(&self) -> Option<Duration> {
        self.index?;
        let wait = self
            .wait
            .unwrap_or(api_spec::DEFAULT_BLOCKING_WAIT)
            .min(api_spec::MAX_BLOCKING_WAIT);
        Some(wait + wait / 16 + HOLD_MARGIN)
    }
}

/// Filters of a service read (`GET /v1/services/{service}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceQuery {
    /// Instances carrying every one of these tags.
    pub tags: Vec<String>,
    pub zone: Option<String>,
    pub region: Option<String>,
    /// `meta.KEY=VALUE` filters.
    pub meta: Vec<(String, String)>,
    /// Which statuses: `None` is the server's default (passing only); `Some(None)` any.
    pub status: Option<Option<InstanceStatus>>,
}

impl ServiceQuery {
    fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = self
            .tags
            .iter()
            .map(|t| ("tag".to_owned(), t.clone()))
            .collect();
        if let Some(zone) = &self.zone {
            pairs.push(("zone".to_owned(), zone.clone()));
        }
        if let Some(region) = &self.region {
            pairs.push(("region".to_owned(), region.clone()));
        }
        for (key, value) in &self.meta {
            pairs.push((format!("meta.{key}"), value.clone()));
        }
        if let Some(status) = self.status {
            let status = match status {
                None => "any",
                Some(InstanceStatus::Passing) => "passing",
                Some(InstanceStatus::Draining) => "draining",
                Some(InstanceStatus::Critical) => "critical",
            };
            pairs.push(("status".to_owned(), status.to_owned()));
        }
        pairs
    }
}

/// Appends `pairs` to `path` as a query string.
fn with_query(path: String, pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return path;
    }
    // Encoding a list of string pairs cannot fail.
    let query = serde_urlencoded::to_string(pairs).unwrap_or_default();
    format!("{path}?{query}")
}

/// A path segment, percent-encoded (names are validated by the server; this only keeps
/// a bad one from changing the path).
fn segment(text: &str) -> String {
    let encoded = serde_urlencoded::to_string([("", text)]).unwrap_or_default();
    encoded.trim_start_matches('=').replace('+', "%20")
}

impl Client {
    /// `GET path?query` plus `read`'s parameters: retried on any server (reads are
    /// idempotent), with a timeout long enough for a blocking query's wait.
    async fn read<T: DeserializeOwned>(
        &self,
        path: String,
        mut query: Vec<(String, String)>,
        read: ReadOptions,
    ) -> Result<Response<T>> {
        query.extend(read.pairs());
        let path = with_query(path, &query);
        self.call_with(
            Method::GET,
            &path,
            None::<&()>,
            Retry::Idempotent,
            read.timeout(),
        )
        .await
    }

    /// Registers or updates an instance (`PUT /v1/services/{service}/instances/{id}`);
    /// an idempotent upsert, so it is retried on another server after a failure.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        request: &RegisterRequest,
    ) -> Result<Response<Instance>> {
        let path = format!(
            "/v1/services/{}/instances/{}",
            segment(service),
            segment(id)
        );
        self.call(Method::PUT, &path, Some(request), Retry::Idempotent)
            .await
    }

    /// Deregisters an instance. After a retried attempt the answer may be
    /// `instance_not_found` although the first attempt worked.
    pub async fn deregister(
        &self,
        service: &str,
        id: &str,
    ) -> Result<Response<DeregisterResponse>> {
        let path = format!(
            "/v1/services/{}/instances/{}",
            segment(service),
            segment(id)
        );
        self.call(Method::DELETE, &path, None::<&()>, Retry::Idempotent)
            .await
    }

    /// Renews the instance's lease. `instance_not_found` or `instance_critical` mean the
    /// registry forgot it: register again.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<Response<HeartbeatResponse>> {
        let path = format!(
            "/v1/services/{}/instances/{}/heartbeat",
            segment(service),
            segment(id)
        );
        self.call(Method::PUT, &path, None::<&()>, Retry::Idempotent)
            .await
    }

    /// Sets an instance `draining` (out of healthy discovery) or back to `passing`.
    pub async fn set_status(
        &self,
        service: &str,
        id: &str,
        status: InstanceStatus,
    ) -> Result<Response<Instance>> {
        let path = format!(
            "/v1/services/{}/instances/{}/status",
            segment(service),
            segment(id)
        );
        let body = SetStatusRequest { status };
        self.call(Method::PUT, &path, Some(&body), Retry::Idempotent)
            .await
    }

    /// Every service with its instance counts (`GET /v1/services`).
    pub async fn services(&self, read: ReadOptions) -> Result<Response<ServiceList>> {
        self.read("/v1/services".to_owned(), Vec::new(), read).await
    }

    /// A service's instances that pass `query` (`GET /v1/services/{service}`).
    pub async fn service(
        &self,
        service: &str,
        query: &ServiceQuery,
        read: ReadOptions,
    ) -> Result<Response<ServiceInstances>> {
        let path = format!("/v1/services/{}", segment(service));
        self.read(path, query.pairs(), read).await
    }

    /// Acquires a lock (`POST /v1/locks/{name}/acquire`), waiting in line up to the
    /// request's `wait`. Not retried once sent: a retry could queue a second request.
    pub async fn acquire(
        &self,
        name: &str,
        request: &AcquireRequest,
    ) -> Result<Response<LockGrant>> {
        let path = format!("/v1/locks/{}/acquire", segment(name));
        let timeout = held_timeout(request.wait.as_deref());
        self.call_with(
            Method::POST,
            &path,
            Some(request),
            Retry::OnlyIfNotSent,
            timeout,
        )
        .await
    }

    /// Releases a lock held with `token`. After a retried attempt the answer may be
    /// `token_mismatch` although the first attempt released it.
    pub async fn release(&self, name: &str, token: u64) -> Result<Response<ReleaseResponse>> {
        let path = format!("/v1/locks/{}/release", segment(name));
        self.call(
            Method::POST,
            &path,
            Some(&ReleaseRequest { token }),
            Retry::Idempotent,
        )
        .await
    }

    /// A lock as it is (`GET /v1/locks/{name}`).
    pub async fn lock_info(&self, name: &str, read: ReadOptions) -> Result<Response<LockInfo>> {
        self.read(format!("/v1/locks/{}", segment(name)), Vec::new(), read)
            .await
    }

    /// Every lock that is held, waited for or in its lock-delay (`GET /v1/locks`).
    pub async fn locks(&self, read: ReadOptions) -> Result<Response<LockList>> {
        self.read("/v1/locks".to_owned(), Vec::new(), read).await
    }

    /// Campaigns in an election (`POST /v1/elections/{name}/campaign`), waiting up to
    /// the request's `wait` to lead. Not retried once sent.
    pub async fn campaign(
        &self,
        name: &str,
        request: &CampaignRequest,
    ) -> Result<Response<CampaignResponse>> {
        let path = format!("/v1/elections/{}/campaign", segment(name));
        let timeout = held_timeout(request.wait.as_deref());
        self.call_with(
            Method::POST,
            &path,
            Some(request),
            Retry::OnlyIfNotSent,
            timeout,
        )
        .await
    }

    /// The leader holding `token` announces a new value.
    pub async fn proclaim(
        &self,
        name: &str,
        token: u64,
        candidate: &str,
    ) -> Result<Response<ElectionLeader>> {
        let path = format!("/v1/elections/{}/proclaim", segment(name));
        let body = ProclaimRequest {
            token,
            candidate: candidate.to_owned(),
        };
        self.call(Method::POST, &path, Some(&body), Retry::Idempotent)
            .await
    }

    /// Gives up leadership held with `token`.
    pub async fn resign(&self, name: &str, token: u64) -> Result<Response<ReleaseResponse>> {
        let path = format!("/v1/elections/{}/resign", segment(name));
        self.call(
            Method::POST,
            &path,
            Some(&ReleaseRequest { token }),
            Retry::Idempotent,
        )
        .await
    }

    /// An election as it is (`GET /v1/elections/{name}`); blocking with `read.index`.
    pub async fn election(&self, name: &str, read: ReadOptions) -> Result<Response<ElectionInfo>> {
        self.read(format!("/v1/elections/{}", segment(name)), Vec::new(), read)
            .await
    }

    /// Every election with a leader or candidates (`GET /v1/elections`).
    pub async fn elections(&self, read: ReadOptions) -> Result<Response<ElectionList>> {
        self.read("/v1/elections".to_owned(), Vec::new(), read)
            .await
    }

    /// Turns a new cluster's ACLs on and makes its first management token
    /// (`POST /v1/acl/bootstrap`); needs no token. Works once: afterwards the answer is
    /// `409 acl_bootstrapped`, and `400 acl_disabled` on a server started without ACLs.
    ///
    /// The answer holds the token's secret, and nothing else ever will: keep it. Not
    /// retried once sent, since a second try would be refused; if the answer is lost the
    /// cluster is bootstrapped all the same.
    pub async fn acl_bootstrap(&self) -> Result<Response<TokenCreated>> {
        self.call(
            Method::POST,
            "/v1/acl/bootstrap",
            None::<&()>,
            Retry::OnlyIfNotSent,
        )
        .await
    }

    /// Makes a token (`POST /v1/acl/tokens`); needs `acl:write`. The answer holds the
    /// new token's secret, which no later answer shows. Not retried once sent: a retry
    /// could make a second token.
    pub async fn acl_create_token(
        &self,
        request: &CreateTokenRequest,
    ) -> Result<Response<TokenCreated>> {
        self.call(
            Method::POST,
            "/v1/acl/tokens",
            Some(request),
            Retry::OnlyIfNotSent,
        )
        .await
    }

    /// Every token, without secrets (`GET /v1/acl/tokens`); needs `acl:read`.
    pub async fn acl_list_tokens(&self) -> Result<Response<TokenList>> {
        self.call(
            Method::GET,
            "/v1/acl/tokens",
            None::<&()>,
            Retry::Idempotent,
        )
        .await
    }

    /// The token this client sends, without its secret (`GET /v1/acl/tokens/self`); any
    /// token may read itself. Without a token the answer is `401 unauthenticated`.
    pub async fn acl_token_self(&self) -> Result<Response<TokenInfo>> {
        self.call(
            Method::GET,
            "/v1/acl/tokens/self",
            None::<&()>,
            Retry::Idempotent,
        )
        .await
    }

    /// Revokes the token with this accessor (`DELETE /v1/acl/tokens/{accessor}`); needs
    /// `acl:write`. `unconfirmed_members` in the answer lists the servers that had not
    /// confirmed the revoke yet and may accept the token a little longer.
    ///
    /// Retried on another endpoint after a transport error or 503, so if the first try
    /// did take effect the answer can be `404 token_not_found` although the revoke worked.
    pub async fn acl_revoke_token(&self, accessor: Uuid) -> Result<Response<RevokeTokenResponse>> {
        let path = format!("/v1/acl/tokens/{accessor}");
        self.call(Method::DELETE, &path, None::<&()>, Retry::Idempotent)
            .await
    }
}

/// The request timeout for an acquire or campaign that may wait `wait` in line.
fn held_timeout(wait: Option<&str>) -> Option<Duration> {
    let wait = api_spec::parse_duration(wait?).ok()?;
    Some(wait.min(api_spec::MAX_LOCK_WAIT) + HOLD_MARGIN + crate::DEFAULT_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_options_become_query_pairs() {
        let read = ReadOptions {
            consistency: Consistency::Stale,
            index: Some(7),
            wait: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            with_query("/v1/locks/x".to_owned(), &read.pairs()),
            "/v1/locks/x?stale=&index=7&wait=2000ms"
        );
        assert_eq!(
            read.timeout(),
            Some(Duration::from_millis(2125) + HOLD_MARGIN)
        );
        assert_eq!(ReadOptions::default().timeout(), None);
    }

    #[test]
    fn service_filters_are_encoded() {
        let query = ServiceQuery {
            tags: vec!["a b".into()],
            zone: Some("z1".into()),
            meta: vec![("version".into(), "1&2".into())],
            status: Some(None),
            ..ServiceQuery::default()
        };
        assert_eq!(
            with_query("/v1/services/s".to_owned(), &query.pairs()),
            "/v1/services/s?tag=a+b&zone=z1&meta.version=1%262&status=any"
        );
    }

    #[test]
    fn path_segments_cannot_add_path_parts() {
        assert_eq!(segment("a/b?c"), "a%2Fb%3Fc");
        assert_eq!(segment("svc-1.x"), "svc-1.x");
    }
}
