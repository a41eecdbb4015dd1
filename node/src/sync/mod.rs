//! The I/O-free sync core: documents, per-peer automerge sync states and the rules checked on
//! every incoming message. It is fed messages and returns messages to send; the store actor
//! drives it and persists what changed, the network layer only moves frames.

pub(crate) mod chunks;
mod engine;
mod fields;
pub mod wire;

pub(crate) use engine::is_peers_fault;
pub use fields::check_local;

pub use engine::{
    DocEntry, DocSource, Engine, LinkProgress, MAX_IN_FLIGHT, MAX_INFLATED, Rejection, Residency,
    Step,
};
