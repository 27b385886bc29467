//! Errors as HTTP answers: every failure becomes `{"error": {"code", "message"}}` with a
//! fitting status and a stable code from `api_spec::codes`; 5xx details go to the log.

use api_spec::{codes, ElectionInfo, ErrorBody, ErrorDetail, LockInfo};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::views;
use crate::app::AppError;
use crate::validate::Invalid;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The lock the error is about, shown with `lock_held` and `token_mismatch`.
    pub lock: Option<Box<LockInfo>>,
    /// The election the error is about, shown with `election_held` and `token_mismatch`.
    pub election: Option<Box<ElectionInfo>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            lock: None,
            election: None,
        }
    }

    /// Adds the lock's or election's current state to the answer.
    fn with_state_of(self, key: &locks::Key, state: &locks::LockState) -> Self {
        match key.kind {
            // Only an acquire or release gets here, and those need write access.
            locks::Kind::Lock => self.with_lock(views::lock_info(&key.name, state, true)),
            locks::Kind::Election => self.with_election(views::election_info(&key.name, state)),
        }
    }

    /// Adds the lock's current state to the answer.
    pub fn with_lock(mut self, lock: LockInfo) -> Self {
        self.lock = Some(Box::new(lock));
        self
    }

    /// Adds the election's current state to the answer.
    pub fn with_election(mut self, election: ElectionInfo) -> Self {
        self.election = Some(Box::new(election));
        self
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, codes::INVALID_ARGUMENT, message)
    }

    pub fn invalid_duration(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, codes::INVALID_DURATION, message)
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        let message = e.to_string();
        let held_code = |key: &locks::Key| match key.kind {
            locks::Kind::Lock => codes::LOCK_HELD,
            locks::Kind::Election => codes::ELECTION_HELD,
        };
        let (status, code) = match e {
            AppError::NoLeader | AppError::NotLeader { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, codes::NO_LEADER)
            }
            AppError::LeaseNotFound(_) | AppError::LeaseExpired(_) => {
                (StatusCode::NOT_FOUND, codes::LEASE_NOT_FOUND)
            }
            AppError::InstanceNotFound => (StatusCode::NOT_FOUND, codes::INSTANCE_NOT_FOUND),
            // A heartbeat's answer; a status change answers 409 instead (see its handler).
            AppError::InstanceCritical => (StatusCode::NOT_FOUND, codes::INSTANCE_CRITICAL),
            AppError::InstanceUnleased => (StatusCode::CONFLICT, codes::INSTANCE_UNLEASED),
            AppError::MemberNotFound(_) => (StatusCode::NOT_FOUND, codes::MEMBER_NOT_FOUND),
            AppError::MembershipConflict(_) => (StatusCode::CONFLICT, codes::MEMBERSHIP_CONFLICT),
            AppError::LockHeld { key, state } => {
                let e = ApiError::new(StatusCode::CONFLICT, held_code(&key), message);
                return e.with_state_of(&key, &state);
            }
            AppError::TokenMismatch { key, state } => {
                let e = ApiError::new(StatusCode::CONFLICT, codes::TOKEN_MISMATCH, message);
                return e.with_state_of(&key, &state);
            }
            AppError::QueueFull(_) => (StatusCode::TOO_MANY_REQUESTS, codes::QUEUE_FULL),
            AppError::Unavailable(_) | AppError::Timeout(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE)
            }
            AppError::Invalid(_) => (StatusCode::BAD_REQUEST, codes::INVALID_ARGUMENT),
            AppError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, codes::OVERLOADED),
            AppError::TooManyWaiters(_) => (StatusCode::TOO_MANY_REQUESTS, codes::TOO_MANY_WAITERS),
            AppError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, codes::UNAUTHENTICATED),
            // A caller without a token is told to bring one; an internal command is
            // refused to everyone alike.
            AppError::Denied(ref denied)
                if denied.anonymous && denied.need != crate::replicated::acl::Need::Internal =>
            {
                (StatusCode::UNAUTHORIZED, codes::UNAUTHENTICATED)
            }
            AppError::Denied(_) => (StatusCode::FORBIDDEN, codes::PERMISSION_DENIED),
            AppError::AclDisabled => (StatusCode::BAD_REQUEST, codes::ACL_DISABLED),
            AppError::AclBootstrapped => (StatusCode::CONFLICT, codes::ACL_BOOTSTRAPPED),
            AppError::TokenNotFound(_) => (StatusCode::NOT_FOUND, codes::TOKEN_NOT_FOUND),
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL),
        };
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(code = self.code, error = %self.message, "request failed");
            "internal error; see the server log".to_owned()
        } else {
            // 503s are expected during elections and restarts: worth a debug line only.
            tracing::debug!(status = %self.status, code = self.code, error = %self.message, "request refused");
            self.message
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message,
            },
            lock: self.lock.map(|l| *l),
            election: self.election.map(|e| *e),
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        match e {
            Invalid::Argument(m) => ApiError::invalid_argument(m),
            Invalid::Duration(m) => ApiError::invalid_duration(m),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::PAYLOAD_TOO_LARGE,
                rejection.body_text(),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                codes::INVALID_JSON,
                rejection.body_text(),
            )
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::invalid_argument(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::invalid_argument(rejection.body_text())
    }
}

/// A JSON request body. Its rejections are JSON errors too, and it reads the body as
/// JSON whatever the content type says, as Consul and etcd's gateway do: `curl -d '{..}'`
/// without `-H 'content-type: application/json'` just works. A body that is not JSON
/// at all is 415 unless it claimed to be JSON (then 400 `invalid_json`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let claims_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime_type::Essence>().ok())
            .is_some_and(|m| m.is_json());
        let body = Bytes::from_request(req, state).await?;
        parse_json(&body, claims_json).map(Json)
    }
}

fn parse_json<T: DeserializeOwned>(body: &[u8], claims_json: bool) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let not_json = matches!(
            e.classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        );
        if not_json && !claims_json {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                codes::UNSUPPORTED_MEDIA_TYPE,
                "expected a JSON body (`Content-Type: application/json`)",
            )
        } else if not_json {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                codes::INVALID_JSON,
                format!("the body is not valid JSON: {e}"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                codes::INVALID_JSON,
                format!("the JSON body does not fit this request: {e}"),
            )
        }
    })
}

/// The essence of a `Content-Type` (`type/subtype`, parameters dropped).
mod mime_type {
    #[derive(Debug)]
    pub struct Essence(String);

    impl std::str::FromStr for Essence {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let essence = s
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if essence.contains('/') {
                Ok(Essence(essence))
            } else {
                Err(())
            }
        }
    }

    impl Essence {
        /// `application/json` or any `+json` type.
        pub fn is_json(&self) -> bool {
            self.0 == "application/json" || self.0.ends_with("+json")
        }
    }
}

/// Answer for paths no route matches.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "no such route")
}

/// Answer for a known path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ttl {
        #[allow(dead_code)]
        ttl: String,
    }

    #[test]
    fn json_is_read_whatever_the_content_type() {
        assert!(parse_json::<Ttl>(br#"{"ttl":"5s"}"#, false).is_ok());
        assert!(parse_json::<Ttl>(br#"{"ttl":"5s"}"#, true).is_ok());
    }

    #[test]
    fn a_body_that_is_not_json_is_415_unless_it_claimed_to_be() {
        let e = parse_json::<Ttl>(b"ttl=5s", false).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                codes::UNSUPPORTED_MEDIA_TYPE
            )
        );
        let e = parse_json::<Ttl>(b"", false).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = parse_json::<Ttl>(br#"{"ttl":"#, true).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, codes::INVALID_JSON)
        );
        // JSON of the wrong shape is 400 whatever the content type.
        let e = parse_json::<Ttl>(br#"{"tll":"5s"}"#, false).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, codes::INVALID_JSON)
        );
    }

    #[test]
    fn content_type_essence() {
        let is_json = |s: &str| s.parse::<mime_type::Essence>().is_ok_and(|m| m.is_json());
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("json"));
    }
}
