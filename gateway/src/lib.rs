//! The GraphQL gateway of a grassroots node.
//!
//! Every node serves `/graphql` (async-graphql on axum) answering from its local views, so a
//! village's gateway works offline. A bearer token binds a caller to a unit and a role; the
//! visibility and write rules of `grassroots_schema` decide what the caller reads and writes.
//! GraphiQL is served at `/` with its assets embedded (no CDN), and `/healthz` for probes.
//!
//! Reading order: [`error`] (the client-visible error codes), [`graphql`] (schema), [`http`]
//! (router, auth, assets).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod balance;
pub mod entities;
pub mod error;
pub mod graphql;
pub mod http;

pub use graphql::{
    Backend, GatewaySchema, build_schema, build_schema_with, set_utc_offset_minutes,
};
pub use http::{GatewayOptions, router, router_with, serve, serve_with};
