//! Who a request comes from: the token it presents (`Authorization: Bearer <secret>` or
//! `X-Registry-Token`), resolved by [`authenticate`] before the handler runs, and handed
//! to the handler as an [`Acting`] app handle. Also the audit log: each write made with a
//! token is one `registry::audit` line once it is answered.

use std::sync::Arc;

use api_spec::acl::{MAX_SECRET_LEN, TOKEN_HEADER};
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::RequestPartsExt;

use super::error::ApiError;
use crate::app::{App, AppError};
use crate::replicated::acl::Caller;

/// The secret a request presents, if any: `Authorization: Bearer` wins over the header.
/// Another `Authorization` scheme (a proxy's Basic credentials) is not a token: it is
/// ignored when `X-Registry-Token` is given, and refused when it is all there is.
/// The header Consul's clients send their token in (the Consul-compatible routes, and
/// any other, accept it).
const CONSUL_TOKEN_HEADER: &str = "x-consul-token";

fn presented_secret(headers: &HeaderMap) -> Result<Option<&str>, AppError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default());
    let bearer = authorization.and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    let header = headers
        .get(TOKEN_HEADER)
        .map(|v| {
            v.to_str()
                .map(str::trim)
                .map_err(|_| AppError::Unauthenticated(format!("{TOKEN_HEADER} is not a token")))
        })
        .transpose()?;
    let consul = headers
        .get(CONSUL_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match bearer.or(header).or(consul) {
        Some(secret) if secret.is_empty() || secret.len() > MAX_SECRET_LEN => Err(
            AppError::Unauthenticated("the presented token is not a token secret".into()),
        ),
        None if authorization.is_some() => Err(AppError::Unauthenticated(
            "the Authorization header must be `Bearer <secret>`".into(),
        )),
        other => Ok(other),
    }
}

/// Consul's `?token=` on its compatible routes (`/v1/agent`, `/v1/catalog`,
/// `/v1/health`, `/v1/status`), where its clients put it.
fn consul_query_token(uri: &axum::http::Uri) -> Option<String> {
    let consul_route = ["/v1/agent/", "/v1/catalog/", "/v1/health/", "/v1/status/"]
        .iter()
        .any(|prefix| uri.path().starts_with(prefix));
    if !consul_route {
        return None;
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query()?).ok()?;
    pairs
        .into_iter()
        .find(|(key, value)| key == "token" && !value.is_empty())
        .map(|(_, value)| value)
}

/// Resolves the request's caller and keeps it for [`Acting`]; answers 401 at once for a
/// secret the cluster does not know. Runs on every route that acts for a caller; a write
/// made with a token is logged once answered.
pub async fn authenticate(State(app): State<App>, request: Request, next: Next) -> Response {
    authenticate_then(app, request, next, true).await
}

/// [`authenticate`] without the audit line (heartbeats and keepalives).
pub async fn authenticate_quietly(
    State(app): State<App>,
    request: Request,
    next: Next,
) -> Response {
    authenticate_then(app, request, next, false).await
}

async fn authenticate_then(app: App, mut request: Request, next: Next, audited: bool) -> Response {
    let from_query = consul_query_token(request.uri());
    let presented = match presented_secret(request.headers()) {
        Ok(None) => Ok(from_query.as_deref()),
        other => other,
    };
    let caller = match presented {
        Ok(secret) => app.authenticate(secret).await,
        Err(e) => Err(e),
    };
    let caller = match caller {
        Ok(caller) => caller,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let audit = match caller.accessor() {
        Some(accessor) if audited && request.method() != Method::GET => {
            let (subject, back) = audit_subject(request).await;
            request = back;
            Some((accessor, subject))
        }
        _ => None,
    };
    request.extensions_mut().insert(caller);
    let response = next.run(request).await;
    if let Some((accessor, (method, route, name))) = audit {
        let status = response.status();
        tracing::info!(
            target: "registry::audit",
            %accessor,
            %method,
            route,
            name,
            status = status.as_u16(),
            outcome = if status.is_success() { "ok" } else { "refused" },
            "write"
        );
    }
    response
}

/// The method, the route template and the names in the path (joined by `/`); hands the
/// request back.
async fn audit_subject(request: Request) -> ((Method, String, String), Request) {
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let (mut parts, body) = request.into_parts();
    let name = parts
        .extract::<RawPathParams>()
        .await
        .map(|params| {
            params
                .iter()
                .map(|(_, value)| value.to_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default();
    ((method, route, name), Request::from_parts(parts, body))
}

/// The app handle acting for the request's caller (see [`authenticate`]).
#[derive(Debug, Clone)]
pub struct Acting(pub App);

impl FromRequestParts<App> for Acting {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Arc<Caller>>() {
            Some(caller) => Ok(Acting(app.acting_for(caller.clone()))),
            // The route was built without `authenticate`: a bug in the router.
            None => {
                tracing::error!(path = %parts.uri.path(), "route has no caller: is `authenticate` layered on it?");
                Err(StatusCode::INTERNAL_SERVER_ERROR.into_response())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(value) {
                map.append(*name, value);
            }
        }
        map
    }

    #[test]
    fn a_token_comes_from_bearer_or_the_token_header() {
        let secret = |pairs| presented_secret(&headers(pairs)).map(|s| s.map(str::to_owned));
        assert_eq!(secret(&[]), Ok(None));
        assert_eq!(
            secret(&[("authorization", "Bearer abc")]),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            secret(&[("authorization", "bearer  abc ")]),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            secret(&[("x-registry-token", "def")]),
            Ok(Some("def".into()))
        );
        assert_eq!(
            secret(&[("authorization", "Bearer abc"), ("x-registry-token", "def")]),
            Ok(Some("abc".into()))
        );
        // A proxy's Basic credentials do not hide the token header...
        assert_eq!(
            secret(&[
                ("authorization", "Basic Zm9vOmJhcg=="),
                ("x-registry-token", "def")
            ]),
            Ok(Some("def".into()))
        );
        // ...but alone they are not a token, and neither is an empty bearer.
        assert!(secret(&[("authorization", "Basic Zm9vOmJhcg==")]).is_err());
        assert!(secret(&[("authorization", "Bearer ")]).is_err());
        let long = "x".repeat(MAX_SECRET_LEN + 1);
        assert!(secret(&[("x-registry-token", &long)]).is_err());
    }
}
