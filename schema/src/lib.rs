//! The vocabulary of grassroots: ids, levels, records and the three tree rules.
//!
//! One deployment covers one administrative tree (city > county > township > village). Every
//! unit is named by its path from the root (`c01/k02/t03/v07`), so the tree relations between
//! two units (self, parent, child, ancestor, descendant, sibling, cousin) are pure functions of
//! their ids, and so are the three rules every other crate obeys:
//!
//! 1. **scope**: which documents a node replicates and which cross a link ([`replicated_at`]);
//! 2. **authority**: which unit may author a change to a document ([`may_author`]);
//! 3. **visibility**: what a caller may read or write at a gateway ([`can_read`], [`can_write`]).
//!
//! This crate does no I/O and knows nothing of automerge, redb, QUIC or GraphQL. The serde
//! derives on [`records`] are the storage model of the query views: a compatibility promise.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

/// An enum stored by name: `ALL`, `NAMES`, `as_str`, `parse`, serde as the snake-case name.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every storage name, in the order of [`Self::ALL`].
            pub const NAMES: &'static [&'static str] = &[$($s),+];
            /// Storage name.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
            /// Parse the storage name.
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }
    };
}

pub mod entities;
mod ids;
mod level;
pub mod records;
pub mod rollup;
mod rules;

pub use entities::{
    Access, ENTITIES, EntitySpec, Fields, Record, Value, civil_from_days, days_since_epoch, entity,
};
pub use ids::{ActorTag, DocId, DocKind, IdError, MemberId, RecordId, RecordRef, UnitId};
pub use level::Level;
pub use records::{
    Education, Gender, Member, MemberCategory, MemberPatch, MemberStatus, NewMember, RecordError,
    Stamp, UnitDetails, UnitProfile, category_set,
};
pub use rollup::{Rollup, Selection};
pub use rules::{
    Audience, Caller, DocMeta, Relation, Role, UnknownRole, addressed_to, can_address,
    can_manage_users, can_read, can_read_record, can_read_record_sensitive, can_read_sensitive,
    can_supervise, can_write, can_write_fields, handed_to, hands_up_only, may_author,
    reads_every_record, relation, replicated_at,
};
