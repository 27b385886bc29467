//! Access control on the wire: tokens, their rules, and the bodies of the `/v1/acl`
//! routes. A token is an `accessor` (its public id, safe to log and list) and a `secret`
//! (what a caller presents, shown once when the token is made). The server stores only a
//! hash of the secret.
//!
//! A caller presents the secret as `Authorization: Bearer <secret>` or in
//! [`TOKEN_HEADER`]. With ACLs on, a request without one gets the anonymous rules the
//! server was started with (none by default: deny).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The header a token's secret may be sent in (besides `Authorization: Bearer`).
pub const TOKEN_HEADER: &str = "X-Registry-Token";

/// Environment variable `regctl` and the client's examples read a token's secret from
/// (the library itself takes it from `ClientBuilder::token`).
pub const TOKEN_ENV: &str = "REGISTRY_TOKEN";

/// Longest token `description`, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 256;
/// Most rules on one token.
pub const MAX_RULES: usize = 64;
/// Shortest secret a bootstrap may set (`REGISTRY_ACL_BOOTSTRAP_TOKEN`): guessing it must
/// be out of reach.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest secret the server reads; anything longer is not a token.
pub const MAX_SECRET_LEN: usize = 256;
/// Shortest `ttl` a token may have.
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(1);
/// Longest `ttl` a token may have (a token without `ttl` never expires).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// What a rule grants access to. Each resource's names are its own: a rule on `service`
/// with prefix `web` covers services named `web...`, not locks.
#[derive(
    utoipa::ToSchema,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Service registration (write) and discovery (read), by service name.
    Service,
    /// Locks, by lock name.
    Lock,
    /// Elections, by election name.
    Election,
    /// Every lease, whoever made it (a token always has its own leases). Names do not
    /// apply: use prefix `""`.
    Lease,
    /// Cluster status (read) and membership (write). Names do not apply.
    Cluster,
    /// Tokens: list them (read), make and revoke them (write). `acl:write` can make a
    /// management token, so it is as strong as one. Names do not apply.
    Acl,
}

impl Resource {
    pub const ALL: [Resource; 6] = [
        Resource::Service,
        Resource::Lock,
        Resource::Election,
        Resource::Lease,
        Resource::Cluster,
        Resource::Acl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Service => "service",
            Resource::Lock => "lock",
            Resource::Election => "election",
            Resource::Lease => "lease",
            Resource::Cluster => "cluster",
            Resource::Acl => "acl",
        }
    }

    /// Whether the resource's rules are matched against names (else only `""` matters).
    pub fn has_names(self) -> bool {
        matches!(
            self,
            Resource::Service | Resource::Lock | Resource::Election
        )
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much access a rule grants: `write` includes `read`.
#[derive(
    utoipa::ToSchema,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    Write,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One grant: `access` to every `resource` whose name starts with `prefix` (`""` is every
/// name).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub resource: Resource,
    /// The start of the names the rule covers; `""` (the default) covers all. Letters,
    /// digits, `.`, `_`, `-`, starting with a letter or digit, at most 128 characters.
    /// `lease`, `cluster` and `acl` have no names: there only `""` grants anything.
    #[serde(default)]
    pub prefix: String,
    pub access: Access,
}

impl Rule {
    /// Whether this rule grants `access` to `name` of `resource`.
    pub fn grants(&self, resource: Resource, name: &str, access: Access) -> bool {
        self.resource == resource && self.access >= access && name.starts_with(&self.prefix)
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.resource, self.access)?;
        if !self.prefix.is_empty() {
            write!(f, ":{}", self.prefix)?;
        }
        Ok(())
    }
}

/// Reads a rule written `resource:access[:prefix]` (e.g. `service:read`,
/// `service:write:web`), as `--acl-anonymous` and `regctl acl token create --rule` take
/// it. A prefix on `lease`, `cluster` or `acl` is refused here.
impl std::str::FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.splitn(3, ':');
        let resource = parts.next().unwrap_or_default();
        let access = parts.next().ok_or_else(|| {
            format!("{text:?} is not a rule: write resource:access[:prefix], e.g. service:read")
        })?;
        let prefix = parts.next().unwrap_or_default().to_owned();
        let resource = Resource::ALL
            .into_iter()
            .find(|r| r.as_str() == resource)
            .ok_or_else(|| {
                format!(
                    "{resource:?} is not a resource: service, lock, election, lease, cluster or acl"
                )
            })?;
        let access = match access {
            "read" => Access::Read,
            "write" => Access::Write,
            other => return Err(format!("{other:?} is not an access: read or write")),
        };
        // The API accepts a prefix on a resource without names (it grants nothing); written
        // by hand it is a mistake worth saying so.
        if !resource.has_names() && !prefix.is_empty() {
            return Err(format!(
                "{resource} has no names: write {resource}:{access}, without a prefix"
            ));
        }
        let rule = Rule {
            resource,
            prefix,
            access,
        };
        crate::rules::acl_rule(&rule).map_err(|e| e.to_string())?;
        Ok(rule)
    }
}

/// `POST /v1/acl/tokens`: make a token.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// What the token is for, for people; at most 256 characters without control
    /// characters.
    #[serde(default)]
    pub description: String,
    /// What the token may do; at most 64 rules. A token with no rules can only see
    /// itself.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// A management token may do everything; its rules are ignored.
    #[serde(default)]
    pub management: bool,
    /// How long the token lives, e.g. `"24h"`; without it the token lives until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// A token as the API shows it: everything but the secret.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The token's public id: what lists, logs and `DELETE` name.
    pub accessor: Uuid,
    pub description: String,
    pub rules: Vec<Rule>,
    pub management: bool,
    /// Raft log index of the entry that made the token.
    pub create_index: u64,
    /// When the token was made, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When the token stops working, in ms since the Unix epoch; absent for a token
    /// without `ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// `POST /v1/acl/bootstrap` and `POST /v1/acl/tokens`: the token, with its secret. This
/// is the only answer that shows the secret.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// What the caller presents: `Authorization: Bearer <secret>`.
    pub secret: String,
    #[serde(flatten)]
    pub token: TokenInfo,
}

/// `GET /v1/acl/tokens`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// `DELETE /v1/acl/tokens/{accessor}`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeTokenResponse {
    pub accessor: Uuid,
    /// Always `true`: an unknown token is a 404.
    pub revoked: bool,
    /// Members that had not confirmed applying the revoke when the answer was sent
    /// (unreachable ones). Empty when every member refuses the token already.
    pub unconfirmed_members: Vec<u64>,
}
