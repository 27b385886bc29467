//! Token handlers (`/v1/acl/...`): check input, call one `App` method, map the result.

use api_spec::acl::{CreateTokenRequest, RevokeTokenResponse, TokenCreated, TokenInfo, TokenList};
use axum::extract::{Path, RawQuery};
use axum::response::Response;
use uuid::Uuid;

use super::auth::Acting;
use super::error::{ApiError, Json};
use super::query::{self, Blocking};
use super::views::indexed;
use crate::app::TokenSpec;
use crate::replicated::acl::TokenRecord;

fn token_info(record: TokenRecord) -> TokenInfo {
    TokenInfo {
        accessor: record.accessor,
        description: record.description,
        rules: record.rules.to_vec(),
        management: record.management,
        create_index: record.create_index,
        created_at_ms: record.created_at_ms,
        expires_at_ms: record.expires_at_ms,
    }
}

fn created(secret: String, record: TokenRecord) -> Response {
    let index = record.create_index;
    let token = token_info(record);
    indexed(index, TokenCreated { secret, token })
}

pub async fn bootstrap(Acting(app): Acting) -> Result<Response, ApiError> {
    let (secret, record) = app.bootstrap_acl().await?;
    Ok(created(secret, record))
}

pub async fn create_token(
    Acting(app): Acting,
    Json(req): Json<CreateTokenRequest>,
) -> Result<Response, ApiError> {
    let ttl = api_spec::rules::create_token(&req)?;
    let spec = TokenSpec {
        description: req.description,
        rules: req.rules,
        management: req.management,
        ttl,
    };
    let (secret, record) = app.create_token(spec).await?;
    Ok(created(secret, record))
}

pub async fn list_tokens(
    Acting(app): Acting,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = query::parse(raw, Blocking::No, &[], query::none)?;
    let (index, tokens) = app.tokens(query.consistency()).await?;
    let tokens = tokens.into_iter().map(token_info).collect();
    Ok(indexed(index, TokenList { tokens }))
}

pub async fn own_token(Acting(app): Acting) -> Result<Response, ApiError> {
    let record = app.own_token()?;
    Ok(indexed(app.state().applied_index(), token_info(record)))
}

pub async fn revoke_token(
    Acting(app): Acting,
    Path(accessor): Path<String>,
) -> Result<Response, ApiError> {
    let accessor = Uuid::parse_str(&accessor).map_err(|_| {
        ApiError::invalid_argument(format!("{accessor:?} is not a token accessor (a UUID)"))
    })?;
    let (index, record, unconfirmed_members) = app.revoke_token(accessor).await?;
    Ok(indexed(
        index,
        RevokeTokenResponse {
            accessor: record.accessor,
            revoked: true,
            unconfirmed_members,
        },
    ))
}
