//! The one place errors become client-visible: a stable `extensions.code`, internal detail
//! logged once and never sent.

use async_graphql::ErrorExtensions;
use grassroots_node::WriteError;

/// Error codes, stable across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// No or an unknown token where one is needed.
    Unauthenticated,
    /// The caller's role or unit does not allow it.
    Forbidden,
    /// The input is invalid.
    BadUserInput,
    /// The target does not exist here.
    NotFound,
    /// Something failed inside; details are in the node's log.
    Internal,
    /// The query ran out of time.
    Timeout,
}

impl Code {
    /// The `extensions.code` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::BadUserInput => "BAD_USER_INPUT",
            Code::NotFound => "NOT_FOUND",
            Code::Internal => "INTERNAL",
            Code::Timeout => "TIMEOUT",
        }
    }
}

/// A client-visible error with its code.
pub fn error(code: Code, message: impl Into<String>) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, e| e.set("code", code.as_str()))
}

/// Log the detail of an internal failure and return a bland error.
pub fn internal(detail: impl std::fmt::Display) -> async_graphql::Error {
    tracing::error!("internal error answering a query: {detail}");
    error(Code::Internal, "internal error")
}

/// Map a store write failure.
pub fn from_write(e: WriteError) -> async_graphql::Error {
    match e {
        WriteError::Invalid(r) => error(Code::BadUserInput, r.to_string()),
        WriteError::NotFound(id) => error(Code::NotFound, format!("no member {id}")),
        WriteError::Refused(r) => error(Code::Forbidden, r.detail),
        e @ (WriteError::NotAChild(_) | WriteError::BadFingerprint) => {
            error(Code::BadUserInput, e.to_string())
        }
        other => internal(other),
    }
}
