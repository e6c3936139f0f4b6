//! The one error type of the HTTP layer and its single mapping to status, code and JSON body.

use actix::MailboxError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use callfs_actors::ActorError;
use serde::Serialize;
use serde_json::json;

use crate::path::PathError;

/// Body of the cross-server `409` (api.md §8.3): the error shape plus where the file lives.
#[derive(Debug, Clone, Serialize)]
pub struct CrossServerConflict {
    pub existing_path: String,
    pub instance_id: String,
    pub backend_type: String,
    pub suggestion: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid API key")]
    AuthenticationFailed,
    #[error("{0}")]
    PermissionDenied(String),
    #[error("file or directory not found")]
    FileNotFound,
    #[error("no route matches the request")]
    RouteNotFound,
    #[error("unknown download link")]
    LinkNotFound,
    /// `410` with its specific code (`LINK_EXPIRED`, `LINK_USED`, `LINK_INVALID`).
    #[error("{1}")]
    LinkGone(&'static str, &'static str),
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("request body stalled")]
    RequestTimeout,
    #[error("{0}")]
    AlreadyExists(String),
    #[error("the path already exists on another node")]
    CrossServerConflict(Box<CrossServerConflict>),
    #[error("an ancestor of the path is a file")]
    NotADirectory,
    #[error("the directory is not empty")]
    DirectoryNotEmpty,
    #[error("the path is locked by another operation; retry")]
    ResourceLocked,
    #[error("upload exceeds the configured size limit")]
    PayloadTooLarge,
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable(u64),
    #[error("Rate limit exceeded")]
    RateLimited(u64),
    #[error("request line and headers exceed the configured limit")]
    HeaderTooLarge,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("{0}")]
    PeerUnavailable(String),
    #[error("{0}")]
    PeerError(String),
    #[error("peer did not answer in time")]
    PeerTimeout,
    #[error("metadata store unavailable: {0}")]
    MetadataUnavailable(String),
    #[error("storage backend unavailable: {0}")]
    BackendUnavailable(String),
    #[error("insufficient storage")]
    InsufficientStorage,
    #[error("{0}")]
    ResourceChanged(String),
    #[error("the node is handling as many uploads as it can; retry")]
    Saturated,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            BadRequest(_) => "BAD_REQUEST",
            AuthenticationFailed => "AUTHENTICATION_FAILED",
            PermissionDenied(_) => "PERMISSION_DENIED",
            FileNotFound => "FILE_NOT_FOUND",
            RouteNotFound => "NOT_FOUND",
            LinkNotFound => "LINK_NOT_FOUND",
            LinkGone(code, _) => code,
            MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            RequestTimeout => "REQUEST_TIMEOUT",
            AlreadyExists(_) | CrossServerConflict(_) => "FILE_ALREADY_EXISTS",
            NotADirectory => "NOT_A_DIRECTORY",
            DirectoryNotEmpty => "DIRECTORY_NOT_EMPTY",
            ResourceLocked => "RESOURCE_LOCKED",
            PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            RangeNotSatisfiable(_) => "RANGE_NOT_SATISFIABLE",
            RateLimited(_) => "RATE_LIMIT_EXCEEDED",
            HeaderTooLarge => "REQUEST_HEADER_TOO_LARGE",
            Internal(_) => "INTERNAL_ERROR",
            Storage(_) => "STORAGE_ERROR",
            PeerUnavailable(_) => "PEER_UNAVAILABLE",
            PeerError(_) => "PEER_ERROR",
            PeerTimeout => "PEER_TIMEOUT",
            MetadataUnavailable(_) => "METADATA_UNAVAILABLE",
            BackendUnavailable(_) => "BACKEND_UNAVAILABLE",
            InsufficientStorage => "INSUFFICIENT_STORAGE",
            ResourceChanged(_) => "RESOURCE_CHANGED",
            Saturated => "SERVER_BUSY",
        }
    }

    /// The client-facing message: internal details stay in the log.
    fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal server error".to_string(),
            ApiError::Storage(_) => "storage error".to_string(),
            ApiError::MetadataUnavailable(_) => "metadata store unavailable".to_string(),
            ApiError::BackendUnavailable(_) => "storage backend unavailable".to_string(),
            other => other.to_string(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        use ApiError::*;
        match self {
            BadRequest(_) => StatusCode::BAD_REQUEST,
            AuthenticationFailed => StatusCode::UNAUTHORIZED,
            PermissionDenied(_) => StatusCode::FORBIDDEN,
            FileNotFound | RouteNotFound | LinkNotFound => StatusCode::NOT_FOUND,
            LinkGone(..) => StatusCode::GONE,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            AlreadyExists(_)
            | CrossServerConflict(_)
            | NotADirectory
            | DirectoryNotEmpty
            | ResourceLocked
            | ResourceChanged(_) => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Internal(_) | Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            PeerUnavailable(_) | PeerError(_) => StatusCode::BAD_GATEWAY,
            PeerTimeout => StatusCode::GATEWAY_TIMEOUT,
            MetadataUnavailable(_) | BackendUnavailable(_) | Saturated => StatusCode::SERVICE_UNAVAILABLE,
            InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::AuthenticationFailed => {
                res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"callfs\"")));
            }
            ApiError::MethodNotAllowed(allow) => {
                res.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
            }
            ApiError::RangeNotSatisfiable(size) => {
                res.insert_header((header::CONTENT_RANGE, format!("bytes */{size}")));
            }
            ApiError::RateLimited(seconds) => {
                res.insert_header((header::RETRY_AFTER, seconds.to_string()));
            }
            ApiError::ResourceLocked
            | ApiError::ResourceChanged(_)
            | ApiError::Saturated
            | ApiError::MetadataUnavailable(_)
            | ApiError::BackendUnavailable(_) => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            _ => {}
        }
        let body = match self {
            ApiError::CrossServerConflict(conflict) => {
                let mut body = serde_json::to_value(conflict.as_ref()).unwrap_or_else(|_| json!({}));
                body["code"] = json!(self.code());
                body["message"] = json!(self.public_message());
                body["error"] = json!("resource exists on another node");
                body
            }
            _ => json!({"code": self.code(), "message": self.public_message()}),
        };
        res.content_type("application/json").body(body.to_string())
    }
}

impl From<ActorError> for ApiError {
    fn from(err: ActorError) -> Self {
        match err {
            ActorError::NotFound => ApiError::FileNotFound,
            ActorError::AlreadyExists => ApiError::AlreadyExists("the path already exists".into()),
            ActorError::NotADirectory => ApiError::NotADirectory,
            ActorError::DirectoryNotEmpty => ApiError::DirectoryNotEmpty,
            ActorError::IsADirectory => ApiError::BadRequest("the path is a directory".into()),
            ActorError::Locked => ApiError::ResourceLocked,
            ActorError::LeaseLost => ApiError::Internal("path lock lease lost".into()),
            ActorError::Changed => ApiError::ResourceChanged("the file changed during the operation; retry".into()),
            ActorError::InvalidInput(msg) => ApiError::BadRequest(msg),
            ActorError::OutsideRoot => ApiError::PermissionDenied("path resolves outside the storage root".into()),
            ActorError::InsufficientStorage => ApiError::InsufficientStorage,
            ActorError::Storage(msg) => ApiError::Storage(msg),
            ActorError::StorageTimeout => ApiError::BackendUnavailable("storage call timed out".into()),
            ActorError::BackendUnavailable(msg) => ApiError::BackendUnavailable(msg),
            ActorError::MetadataUnavailable(msg) => ApiError::MetadataUnavailable(msg),
            ActorError::Metadata(msg) => ApiError::Internal(msg),
            ActorError::UploadAborted(msg) => ApiError::BadRequest(format!("upload aborted: {msg}")),
            ActorError::TooLarge => ApiError::PayloadTooLarge,
            ActorError::Internal(msg) => ApiError::Internal(msg),
            ActorError::PeerUnavailable(msg) => ApiError::PeerUnavailable(msg),
            ActorError::PeerTimeout => ApiError::PeerTimeout,
            ActorError::PeerError(msg) => ApiError::PeerError(msg),
        }
    }
}

impl From<MailboxError> for ApiError {
    fn from(err: MailboxError) -> Self {
        ApiError::Internal(format!("actor mailbox: {err}"))
    }
}

impl From<PathError> for ApiError {
    fn from(err: PathError) -> Self {
        ApiError::BadRequest(format!("invalid path: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body_of(err: ApiError) -> (u16, serde_json::Value, HttpResponse) {
        let res = err.error_response();
        let status = res.status().as_u16();
        let bytes = res.into_body().try_into_bytes().unwrap_or_default();
        let res = err.error_response();
        (status, serde_json::from_slice(&bytes).unwrap(), res)
    }

    #[test]
    fn errors_are_two_string_fields() {
        let (status, body, _) = body_of(ApiError::FileNotFound);
        assert_eq!(status, 404);
        assert_eq!(body, json!({"code": "FILE_NOT_FOUND", "message": "file or directory not found"}));
    }

    #[test]
    fn internal_details_never_reach_the_client() {
        let (status, body, _) = body_of(ApiError::Internal("connection to db.internal refused".into()));
        assert_eq!(status, 500);
        assert_eq!(body["message"], "internal server error");
    }

    #[test]
    fn unauthorized_carries_www_authenticate() {
        let (_, body, res) = body_of(ApiError::AuthenticationFailed);
        assert_eq!(body["code"], "AUTHENTICATION_FAILED");
        assert_eq!(res.headers().get("www-authenticate").unwrap(), "Bearer realm=\"callfs\"");
    }

    #[test]
    fn cross_server_conflict_is_a_superset() {
        let conflict = CrossServerConflict {
            existing_path: "/a".into(),
            instance_id: "node-2".into(),
            backend_type: "localfs".into(),
            suggestion: "The file exists on another node; use PUT to update it.",
            update_url: Some("http://n2/v1/files/a".into()),
        };
        let (status, body, _) = body_of(ApiError::CrossServerConflict(Box::new(conflict)));
        assert_eq!(status, 409);
        assert_eq!(body["code"], "FILE_ALREADY_EXISTS");
        assert_eq!(body["instance_id"], "node-2");
        assert_eq!(body["error"], "resource exists on another node");
    }
}
