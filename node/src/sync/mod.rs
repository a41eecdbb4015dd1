//! The I/O-free sync core: documents, per-peer automerge sync states and the rules checked on
//! every incoming message. It is fed messages and returns messages to send; the store actor
//! drives it and persists what changed, the network layer only moves frames.

pub(crate) mod chunks;
mod engine;
mod fields;
pub(crate) mod register;
pub mod wire;

pub(crate) use engine::is_peers_fault;
pub use fields::check_local;

pub use engine::{
    BatchRest, Checked, CompactSource, DocEntry, DocSource, Engine, LinkProgress, MAX_IN_FLIGHT,
    MAX_INFLATED, MAX_PROFILE_ENTRIES, Rejection, Residency, Step, StoredCompact, Unread,
    UnreadOutcome, load_unread,
};

/// A `Sync` message for `doc` carrying `changes` (raw change chunks) as they are, with
/// `heads`: what a peer that skips automerge's exchange would send (tests play such peers).
#[cfg(any(test, feature = "testing"))]
pub fn carrying(
    doc: &grassroots_schema::DocId,
    heads: Vec<automerge::ChangeHash>,
    changes: Vec<u8>,
) -> wire::Msg {
    let m = automerge::sync::Message {
        heads,
        need: vec![],
        have: vec![],
        changes: changes.into(),
        flags: None,
        version: automerge::sync::MessageVersion::V1,
    };
    wire::Msg::Sync {
        doc: doc.clone(),
        data: m.encode(),
    }
}
