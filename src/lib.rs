//! Wiring shared by the `grassroots` binary and the integration tests: start a node with its
//! gateway ([`launch`]), start a whole federation on one machine ([`federation`]), and the
//! demo's tree and data ([`demo`]).

pub mod demo;
pub mod federation;
pub mod launch;
