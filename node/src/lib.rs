//! A grassroots node: the store, the sync core, the network and the PKI of one unit.
//!
//! A node keeps its unit's documents (and what the three rules of `grassroots_schema` let it
//! replicate) as automerge documents persisted in redb. One actor owns the store and the
//! [`sync::Engine`]; writes are acknowledged only once durable. The child dials its parent
//! over QUIC with mutual TLS whose chain mirrors the tree ([`pki`]); after a hello both sides
//! run automerge's sync protocol over every document in the link's scope and then push live
//! changes. Every incoming change is checked against the authority rule before it is applied.
//!
//! Reading order: [`doc`] (content model), [`sync`] (I/O-free core and wire format),
//! [`store`] (actor, tables, views), [`pki`], [`net`], [`runtime`].

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod auth;
pub mod doc;
pub mod files;
pub mod net;
pub mod pki;
pub mod runtime;
pub mod status;
pub mod store;
pub mod sync;

pub use net::LinkConfig;
pub use pki::Identity;
pub use runtime::{BackupPolicy, Node, NodeConfig, NodeError};
pub use status::{LinkStatus, NodeStatus};
pub use store::{MemberCursor, MemberPage, StoreError, StoreHandle, StoreReader, WriteError};
