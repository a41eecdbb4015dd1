//! The one place errors become client-visible: a stable `extensions.code`, internal detail
//! logged once and never sent.

use async_graphql::ErrorExtensions;
use grassroots_node::{StoreError, WriteError};

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
    /// The query text is not GraphQL.
    ParseFailed,
    /// The query does not fit the schema (unknown field, wrong argument, several operations
    /// and no `operationName`, ...).
    ValidationFailed,
    /// The query nests deeper than the depth limit.
    TooDeep,
    /// The query's complexity (list fields count as their page size) is over the limit.
    TooComplex,
    /// A JSON array of operations: one operation per request.
    BatchNotSupported,
    /// The request body is over the size limit.
    PayloadTooLarge,
    /// Introspection is switched off on this node.
    IntrospectionDisabled,
    /// A backup could not be written (the message says why: a full disk, permissions).
    BackupFailed,
    /// The write was not stored: the node's store cannot write now (the message says why,
    /// a full disk for one); nothing changed.
    NotStored,
    /// The write met another of the same record being stored with it (a member's transfer
    /// and another write of that member); nothing changed: ask again.
    Conflict,
    /// Too many requests without a token are running or waiting: ask again shortly.
    Busy,
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
            Code::ParseFailed => "GRAPHQL_PARSE_FAILED",
            Code::ValidationFailed => "GRAPHQL_VALIDATION_FAILED",
            Code::TooDeep => "QUERY_TOO_DEEP",
            Code::TooComplex => "QUERY_TOO_COMPLEX",
            Code::BatchNotSupported => "BATCH_NOT_SUPPORTED",
            Code::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Code::IntrospectionDisabled => "INTROSPECTION_DISABLED",
            Code::BackupFailed => "BACKUP_FAILED",
            Code::NotStored => "NOT_STORED",
            Code::Conflict => "CONFLICT",
            Code::Busy => "BUSY",
        }
    }
}

/// Give every error that has no code the code of what produced it. Errors from resolvers
/// carry theirs already; the rest come from async-graphql's validation, whose limit messages
/// are matched here (a test pins them, so an upgrade that rewords one fails loudly).
pub fn code_unlabelled(resp: &mut async_graphql::Response) {
    for e in &mut resp.errors {
        let labelled = e
            .extensions
            .as_ref()
            .is_some_and(|x| x.get("code").is_some());
        if labelled {
            continue;
        }
        let code = if e.message.starts_with("Query is nested too deep") {
            Code::TooDeep
        } else if e.message.starts_with("Query is too complex") {
            Code::TooComplex
        } else {
            Code::ValidationFailed
        };
        e.extensions
            .get_or_insert_with(Default::default)
            .set("code", code.as_str());
    }
    // A query refused for what it reached while it ran (units through `children` and
    // `parent`) is refused whole, as one refused before it ran is: not a partial tree of
    // thousands of units with a null, and an error, at every place the budget ran out.
    let too_complex = |e: &async_graphql::ServerError| {
        e.extensions
            .as_ref()
            .and_then(|x| x.get("code"))
            .is_some_and(|c| *c == async_graphql::Value::from(Code::TooComplex.as_str()))
    };
    if let Some(first) = resp.errors.iter().position(too_complex) {
        resp.data = async_graphql::Value::Null;
        let e = resp.errors.swap_remove(first);
        resp.errors = vec![e];
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

/// Map a store failure: a write not stored says why; the rest is internal.
pub fn from_store(e: StoreError) -> async_graphql::Error {
    match e {
        StoreError::NotStored(why) => error(Code::NotStored, format!("not stored: {why}")),
        other => internal(other),
    }
}

/// Map a store write failure.
pub fn from_write(e: WriteError) -> async_graphql::Error {
    match e {
        WriteError::Invalid(r) => error(Code::BadUserInput, r.to_string()),
        WriteError::NotFound(id) => error(Code::NotFound, format!("no member {id}")),
        e @ (WriteError::NoRecord(_) | WriteError::NoUnit(_)) => {
            error(Code::NotFound, e.to_string())
        }
        WriteError::Refused(r) => error(Code::Forbidden, r.detail),
        WriteError::Store(e) => from_store(e),
        e @ WriteError::NotRemovable(_) => error(Code::Forbidden, e.to_string()),
        e @ (WriteError::NotAChild(_) | WriteError::BadFingerprint) => {
            error(Code::BadUserInput, e.to_string())
        }
        e @ WriteError::InFlight(_) => error(Code::Conflict, e.to_string()),
        other => internal(other),
    }
}
