//! The core's one error type, and the one place each kind maps to an HTTP status.

use http::StatusCode;

use crate::filter::FilterError;
use crate::json::JsonError;
use crate::key::KeyError;

/// Which compare of a transaction failed, and why ([`Error::Compare`]; boxed, as errors travel
/// in every `Result` of the core).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareFailed {
    /// Its place in the transaction's `if` list, from 0.
    pub index: usize,
    /// The key it compared.
    pub key: String,
    /// What was found instead.
    pub why: String,
}

/// Everything an operation can be refused for. Nothing is changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The key or pattern is malformed.
    #[error("key is not valid: {0}")]
    Key(#[from] KeyError),
    /// The body is not acceptable JSON, or a patch failed.
    #[error("{0}")]
    Json(#[from] JsonError),
    /// A filter refused, or static mode has no route.
    #[error("{0}")]
    Filter(#[from] FilterError),
    /// The key does not exist.
    #[error("not found")]
    NotFound,
    /// `PUT` without `X-Revision` (AtomKV's text).
    #[error("missing revision")]
    MissingRevision,
    /// `X-Revision` is not an integer (AtomKV's text).
    #[error("invalid revision")]
    InvalidRevision,
    /// `X-Revision` is not the next revision (AtomKV's text).
    #[error("revision conflict")]
    RevisionConflict,
    /// `If-Match` / `If-None-Match` did not hold.
    #[error("precondition failed: {0}")]
    Precondition(&'static str),
    /// A transaction's compare did not hold (the first one that failed, by its place in `if`).
    #[error("precondition failed: compare {} on {}: {}; nothing was changed", .0.index, .0.key, .0.why)]
    Compare(Box<CompareFailed>),
    /// A transaction's write was refused (by its place in `then`): the whole transaction
    /// changed nothing. Status and code are the write's own refusal's.
    #[error("transaction write {index} refused, nothing was changed: {error}")]
    TxWrite {
        /// Its place in the transaction's `then` list, from 0.
        index: usize,
        /// Why it was refused.
        error: Box<Error>,
    },
    /// The target of a rename exists and overwriting was not asked for.
    #[error("key {0} already exists")]
    Exists(String),
    /// A counter operation on a value that is not an integer, or one that would overflow.
    #[error("counter: {0}")]
    Counter(String),
    /// The body is larger than the configured limit (the limit in bytes; `--max-body` natively).
    #[error("Request Entity Too Large: the body is over this server's limit of {0} bytes (stateline serve --max-body)")]
    TooLarge(usize),
    /// A query parameter or header has a bad value.
    #[error("{0}")]
    BadRequest(String),
    /// No such route.
    #[error("404 page not found")]
    NoRoute,
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A patch content type the server does not know.
    #[error("unsupported content type {0:?}")]
    UnsupportedMediaType(String),
    /// The adapter failed to make the change durable (it was rolled back): 503, as the store
    /// recovers by itself. Built with [`Error::storage`], which words it the one way clients and
    /// `/_health` see it: `storage unavailable: <what failed>; nothing was changed`.
    #[error("{0}; nothing was changed")]
    Storage(String),
    /// The server cannot take writes now (a cluster node that cannot reach its log, or is still
    /// catching up): 503 with the reason as it was found.
    #[error("{0}")]
    Unavailable(String),
    /// The request body could not be read (the connection broke, or the body was malformed at
    /// the transport level): 400, nothing was changed.
    #[error("could not read the request body")]
    BodyUnreadable,
    /// The request (reading its body included) did not finish within the server's deadline.
    #[error("ooo: server deadline reached")]
    Deadline,
    /// A connection's token does not fit the state its host keeps for it (the limit in bytes:
    /// the edge's socket attachment): 431.
    #[error("the token does not fit this connection's state ({0} bytes: the edge keeps it in the socket's hibernation attachment)")]
    TokenTooLarge(usize),
    /// An embedding program's audit hook refused the request (its reason): 401, in ooo's words.
    #[error("ooo: request is not authorized: {0}")]
    NotAuthorized(String),
    /// A token that was refused (expired, bad signature, ...): 401 with `error="invalid_token"`.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// No token where one is needed: 401 with a bare challenge (RFC 6750 §3.1: a request without
    /// credentials gets no error code).
    #[error("unauthorized: {0}")]
    NoToken(String),
    /// A valid token (or none, where none can help) that the rules do not allow: 403.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A written value does not match the rule's JSON Schema (`<key>: <violations>`).
    #[error("value does not match the schema for {0}")]
    Schema(String),
    /// A write's id (`rid`, `Idempotency-Key`) was already used by this caller for another
    /// write (see [`crate::receipts`]).
    #[error("this id (rid, Idempotency-Key) was already used for another write; nothing was changed (give each write its own id)")]
    IdempotencyKeyReused,
}

impl Error {
    /// A failed commit, worded once: `storage unavailable: <why>` (the reason may already say
    /// so).
    pub fn storage(why: &str) -> Error {
        if why.starts_with("storage unavailable") {
            Error::Storage(why.to_string())
        } else {
            Error::Storage(format!("storage unavailable: {why}"))
        }
    }

    /// Whether a write refused with this error may have been judged on a state older than the
    /// cluster's (a cluster node catches up and tries once more before it answers).
    pub fn may_be_stale(&self) -> bool {
        match self {
            Error::TxWrite { error, .. } => error.may_be_stale(),
            _ => matches!(
                self,
                Error::NotFound
                    | Error::RevisionConflict
                    | Error::Precondition(_)
                    | Error::Compare(_)
                    | Error::Exists(_)
                    | Error::Counter(_)
            ),
        }
    }

    /// Members an error adds to its problem document and its `/_ws` error object, beside
    /// `status`, `code` and `detail`: which compare or write of a transaction failed.
    pub fn members(&self) -> Option<serde_json::Value> {
        match self {
            Error::Compare(c) => {
                Some(serde_json::json!({"compare": {"index": c.index, "key": c.key}}))
            }
            Error::TxWrite { index, error } => {
                let mut m = serde_json::json!({"write": index});
                if let Some(serde_json::Value::Object(inner)) = error.members() {
                    m.as_object_mut().expect("an object").extend(inner);
                }
                Some(m)
            }
            _ => None,
        }
    }

    /// The HTTP status for this error (the only place statuses are chosen for errors).
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Key(_) | Error::Json(_) | Error::Filter(_) => StatusCode::BAD_REQUEST,
            Error::MissingRevision | Error::InvalidRevision | Error::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::NotFound | Error::NoRoute => StatusCode::NOT_FOUND,
            Error::RevisionConflict | Error::Exists(_) | Error::Counter(_) | Error::Compare(_) => {
                StatusCode::CONFLICT
            }
            Error::TxWrite { error, .. } => error.status(),
            Error::Precondition(_) => StatusCode::PRECONDITION_FAILED,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Storage(_) | Error::Unavailable(_) | Error::Deadline => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::BodyUnreadable => StatusCode::BAD_REQUEST,
            Error::TokenTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::Unauthorized(_) | Error::NoToken(_) | Error::NotAuthorized(_) => {
                StatusCode::UNAUTHORIZED
            }
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Schema(_) => StatusCode::BAD_REQUEST,
            Error::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// A short machine-readable name, used as the `type` of problem documents and in `/_ws` errors.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Key(_) => "invalid-key",
            Error::Json(_) => "invalid-json",
            Error::Filter(FilterError::RouteNotDefined(_)) => "route-not-defined",
            Error::Filter(_) => "filter",
            Error::NotFound => "not-found",
            Error::MissingRevision => "missing-revision",
            Error::InvalidRevision => "invalid-revision",
            Error::RevisionConflict => "revision-conflict",
            Error::Precondition(_) | Error::Compare(_) => "precondition-failed",
            Error::TxWrite { error, .. } => error.code(),
            Error::Exists(_) => "exists",
            Error::Counter(_) => "counter",
            Error::TooLarge(_) => "too-large",
            Error::BadRequest(_) => "bad-request",
            Error::NoRoute => "no-route",
            Error::MethodNotAllowed => "method-not-allowed",
            Error::UnsupportedMediaType(_) => "unsupported-media-type",
            // A cluster that cannot take writes reports as a store that cannot: clients treat
            // both the same way (retry later).
            Error::Storage(_) | Error::Unavailable(_) => "storage",
            Error::BodyUnreadable => "body-unreadable",
            Error::Deadline => "deadline",
            Error::TokenTooLarge(_) => "token-too-large",
            Error::Unauthorized(_) | Error::NoToken(_) | Error::NotAuthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::Schema(_) => "schema",
            Error::IdempotencyKeyReused => "idempotency-key-reused",
        }
    }
}
