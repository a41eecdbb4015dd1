//! The three rules of the tree: replication scope, write authority, visibility.
//!
//! One concept drives all three: every document has one owner unit and an optional audience
//! of the owner's descendants. Sync, store and gateway call these functions and nothing else
//! decides who gets, writes or reads what.

use std::fmt;
use std::str::FromStr;

use crate::entities::{Access, EntitySpec, Fields, Record, Value};
use crate::ids::{DocId, DocKind, UnitId};
use crate::level::Level;

/// How `other` stands to `me` in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Relation {
    /// The same unit.
    SelfUnit,
    /// `other` is my parent.
    Parent,
    /// `other` is my child.
    Child,
    /// `other` is an ancestor above my parent.
    Ancestor,
    /// `other` is a descendant below my children.
    Descendant,
    /// Same parent, different unit.
    Sibling,
    /// Same root, neither in my line nor my sibling (includes my parent's siblings).
    Cousin,
    /// Another tree altogether.
    Unrelated,
}

impl Relation {
    /// Every relation, for exhaustive tests.
    pub const ALL: [Relation; 8] = [
        Relation::SelfUnit,
        Relation::Parent,
        Relation::Child,
        Relation::Ancestor,
        Relation::Descendant,
        Relation::Sibling,
        Relation::Cousin,
        Relation::Unrelated,
    ];
}

/// The relation of `other` as seen from `me`.
pub fn relation(me: &UnitId, other: &UnitId) -> Relation {
    if me == other {
        Relation::SelfUnit
    } else if other.is_ancestor_of(me) {
        if me.parent().as_ref() == Some(other) {
            Relation::Parent
        } else {
            Relation::Ancestor
        }
    } else if me.is_ancestor_of(other) {
        if other.parent().as_ref() == Some(me) {
            Relation::Child
        } else {
            Relation::Descendant
        }
    } else if me.root() != other.root() {
        Relation::Unrelated
    } else if me.parent().is_some() && me.parent() == other.parent() {
        Relation::Sibling
    } else {
        Relation::Cousin
    }
}

/// Which descendants of the owner a document is addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Audience {
    /// Internal to the owner (and readable by its ancestors).
    None,
    /// Every descendant of the owner.
    Descendants,
    /// Descendants at one level.
    Level(Level),
    /// Listed descendants (and, for replication, the units on the path to them).
    Units(Vec<UnitId>),
}

impl Audience {
    /// Whether `unit` (a strict descendant of `owner`) is addressed.
    pub fn addresses(&self, owner: &UnitId, unit: &UnitId) -> bool {
        if !owner.is_ancestor_of(unit) {
            return false;
        }
        match self {
            Audience::None => false,
            Audience::Descendants => true,
            Audience::Level(l) => unit.level() == *l,
            Audience::Units(list) => list.contains(unit),
        }
    }

    /// Whether some unit in `subtree` (a strict descendant of `owner`) is addressed, which is
    /// what decides whether the document travels down the link to `subtree`.
    fn reaches_subtree(&self, owner: &UnitId, subtree: &UnitId) -> bool {
        if !owner.is_ancestor_of(subtree) {
            return false;
        }
        match self {
            Audience::None => false,
            Audience::Descendants => true,
            Audience::Level(l) => *l >= subtree.level(),
            Audience::Units(list) => list
                .iter()
                .any(|u| u.is_in_subtree_of(subtree) && owner.is_ancestor_of(u)),
        }
    }
}

/// What every node knows of a document besides its content: its id (kind and owner, fixed at
/// creation) and its audience (fixed at creation too).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DocMeta {
    /// Kind and owner.
    pub id: DocId,
    /// Who below the owner it is addressed to.
    pub audience: Audience,
}

impl DocMeta {
    /// Metadata for a new document; the audience a kind always has is applied here.
    pub fn new(id: DocId) -> Self {
        let audience = match id.kind {
            crate::ids::DocKind::Profile
            | crate::ids::DocKind::Directives
            | crate::ids::DocKind::Funds => Audience::Descendants,
            _ => Audience::None,
        };
        DocMeta { id, audience }
    }

    /// The owner unit.
    pub fn owner(&self) -> &UnitId {
        &self.id.owner
    }
}

/// Rule 1, replication scope: whether the node of `unit` holds `doc`. It holds everything
/// owned in its subtree and what its ancestors address to some unit of its subtree.
///
/// The scope of the link between a parent and its child `c` is exactly `replicated_at(c, ..)`:
/// nothing else crosses that link.
pub fn replicated_at(unit: &UnitId, doc: &DocMeta) -> bool {
    let owner = doc.owner();
    owner.is_in_subtree_of(unit) || doc.audience.reaches_subtree(owner, unit)
}

/// Rule 2, write authority: a change to a document owned by `owner` may be authored only by
/// the owner or one of its ancestors (supervision). Units in an audience answer in their own
/// documents.
pub fn may_author(author: &UnitId, owner: &UnitId) -> bool {
    owner.is_in_subtree_of(author)
}

/// What a token lets its holder do, bound to one unit. Ordered: each role can do what the
/// ones before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads the unit's subtree.
    Viewer,
    /// Also writes the unit's own records.
    Clerk,
    /// Also acts on the subtree: corrects, handles, signs off, appraises.
    Supervisor,
    /// Also manages users and enrols child nodes.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Clerk, Role::Supervisor, Role::Admin];

    /// Storage and CLI name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Clerk => "clerk",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected viewer, clerk, supervisor or admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// Who is asking at a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// No token: public items only.
    Anonymous,
    /// A token bound to a unit and a role.
    User {
        /// The unit the token is bound to.
        unit: UnitId,
        /// What the token allows.
        role: Role,
    },
}

/// Rule 3, visibility: a caller bound to U reads what is owned in subtree(U) and what is
/// addressed to U; anyone reads public kinds. Siblings, cousins and ancestors' internal data:
/// never.
pub fn can_read(caller: &Caller, doc: &DocMeta) -> bool {
    if doc.id.kind.is_public() {
        return true;
    }
    match caller {
        Caller::Anonymous => false,
        Caller::User { unit, .. } => {
            doc.owner().is_in_subtree_of(unit) || doc.audience.addresses(doc.owner(), unit)
        }
    }
}

/// Rule 3 for sensitive fields (identity and phone numbers) of records owned by `owner`:
/// only the owning unit's clerks, supervisors and admins, who work with the person. Viewers
/// and every other unit, ancestors included, see the record without them.
pub fn can_read_sensitive(caller: &Caller, owner: &UnitId) -> bool {
    matches!(caller, Caller::User { unit, role } if unit == owner && *role >= Role::Clerk)
}

/// Rule 3 for one record of the other kinds: the document's rule, narrowed for directives to
/// the level each is addressed to (a township relays a directive for villages but does not
/// read it; the issuer and its ancestors always read it), widened for published
/// disbursements, which anyone reads.
pub fn can_read_record(caller: &Caller, record: &Record) -> bool {
    let owner = &record.id.unit;
    if record.is_published() {
        return true;
    }
    if !can_read(caller, &DocMeta::new(record.id.doc())) {
        return false;
    }
    match (caller, record.id.kind) {
        (Caller::User { unit, .. }, DocKind::Directives) if owner.is_ancestor_of(unit) => {
            addressed_to(record, unit)
        }
        _ => true,
    }
}

/// Whether [`can_read_record`] holds for every record of `kind` owned in `unit`'s subtree,
/// whatever its fields: the kind is public, or the caller's unit is `unit` or above it (the
/// narrowing of directives is for units below their issuer). A listing for such a caller
/// may be counted without reading its rows.
pub fn reads_every_record(caller: &Caller, kind: DocKind, unit: &UnitId) -> bool {
    kind.is_public()
        || matches!(caller, Caller::User { unit: mine, .. } if unit.is_in_subtree_of(mine))
}

/// Whether a record sent down (a directive, a fund programme) is addressed to `unit`: the
/// unit is below the record's owner and, for a directive for one level, at that level.
pub fn addressed_to(record: &Record, unit: &UnitId) -> bool {
    record.id.unit.is_ancestor_of(unit) && record.to_level().is_none_or(|l| l == unit.level())
}

/// Rule 3 for sensitive fields of one record (a complainant's identity, phone numbers):
/// clerks and above at the owning unit, and for a complaint at the unit handling it.
pub fn can_read_record_sensitive(caller: &Caller, record: &Record) -> bool {
    can_read_sensitive(caller, &record.id.unit)
        || (record.id.kind == DocKind::Complaints && can_read_sensitive(caller, &record.handler()))
}

/// Rule 3 for supervisory fields (appraisal results, complaint handling, report reviews) of
/// records owned by `owner`: supervisors and admins of the owner or a unit above it. A
/// clerk, even of the owning unit, never sets them.
pub fn can_supervise(caller: &Caller, owner: &UnitId) -> bool {
    matches!(caller, Caller::User { unit, role } if *role >= Role::Supervisor && owner.is_in_subtree_of(unit))
}

/// Rule 3 for the fields a write names on a record of `owner` (`current`: the record as it
/// is, for an update): supervisory fields need a supervisor of the owner or above, and for
/// a complaint of the unit handling it now or above (once escalated, the filing unit no
/// longer closes it), and of the unit the write hands it to ([`handed_to`]); fields
/// [`EntitySpec::above_only`] names (reviews, the rating of a cadre's performance appraisal
/// or a debriefing, an accepted report, a complaint no longer with its unit) need a
/// supervisor strictly above the owner, or for a complaint above the unit handling it;
/// sensitive fields, those who read them ([`can_read_record_sensitive`]): of a record held,
/// a caller reading them as null would clear them by sending its form back; of a new one, a
/// caller who could not read back what it wrote could still learn from a count over them
/// (`fundTracking` counts recipients by identity number within the paying unit) whether a
/// number it guessed is one already there. Null or empty on a new record writes nothing. The
/// record-level rule ([`can_write`]) applies besides. Text is judged as stored: trimmed
/// ([`crate::records::trimmed`]).
pub fn can_write_fields(
    caller: &Caller,
    spec: &EntitySpec,
    owner: &UnitId,
    current: Option<&Record>,
    fields: &Fields,
) -> bool {
    let held = |k: &str| current.and_then(|r| r.text(k)).map(str::to_owned);
    let written = |k: &str| match fields.get(k) {
        Some(v) => v.as_text().map(str::to_owned),
        None => held(k),
    };
    let complaint = spec.kind == DocKind::Complaints;
    // The unit handling a complaint now: its owner while new.
    let handling = match current {
        Some(r) if complaint => r.handler_in_line(),
        _ => owner.clone(),
    };
    let above = matches!(
        caller,
        Caller::User { unit, role } if *role >= Role::Supervisor && unit.is_ancestor_of(&handling)
    );
    // A sensitive field, by a caller who reads it as null: on a record held it would clear
    // what it cannot see by sending back the form it read; on a new one it would write what
    // it may not read back. A new complaint is read as its handler once filed.
    let reader_of = match current {
        Some(_) => handling.clone(),
        None if complaint => crate::entities::handler_in(owner, fields)
            .filter(|h| owner.is_in_subtree_of(h))
            .unwrap_or_else(|| owner.clone()),
        None => owner.clone(),
    };
    let reads_sensitive =
        can_read_sensitive(caller, owner) || (complaint && can_read_sensitive(caller, &reader_of));
    let writes_nothing = |v: Option<&Value>| match v {
        Some(Value::Null) => true,
        Some(Value::Text(t)) => t.trim().is_empty(),
        _ => false,
    };
    fields.keys().all(|name| {
        let access = spec.field(name).map(|f| f.access);
        if access == Some(Access::Sensitive)
            && !reads_sensitive
            && (current.is_some() || !writes_nothing(fields.get(name)))
        {
            return false;
        }
        if spec
            .above_only(name, owner, current.is_some(), &held, &written)
            .is_some()
        {
            return above;
        }
        match access {
            Some(Access::Supervisory) if complaint => {
                can_supervise(caller, &handling)
                    && handed_to(owner, name, fields).is_none_or(|h| can_supervise(caller, &h))
            }
            Some(Access::Supervisory) => can_supervise(caller, owner),
            _ => true,
        }
    })
}

/// The unit a write of `fields` hands a complaint of `owner` to, when what it writes of
/// `name` is the new handler's to say: an answer, a status past waiting, written with the
/// handover (at filing or later) is judged against the handler it names as well as the one
/// handling it now, or a unit could hand a complaint up already answered in the name of the
/// unit above. The handover itself and the waiting status that goes with it are not.
pub fn handed_to(owner: &UnitId, name: &str, fields: &Fields) -> Option<UnitId> {
    if name == "handler" || hands_up_only(name, fields) {
        return None;
    }
    crate::entities::handler_in(owner, fields).filter(|h| owner.is_in_subtree_of(h))
}

/// Whether writing `name` of a new complaint with `fields` only hands it up: its waiting
/// status (open, escalated), which filing it with a handler above brings.
pub fn hands_up_only(name: &str, fields: &Fields) -> bool {
    name == "status"
        && fields
            .get("status")
            .and_then(|v| v.as_text())
            .and_then(crate::entities::ComplaintStatus::parse)
            .is_some_and(crate::entities::ComplaintStatus::is_open)
}

/// Rule 3 for users: an admin creates and revokes the tokens of its unit and the units
/// below it.
pub fn can_manage_users(caller: &Caller, unit: &UnitId) -> bool {
    matches!(caller, Caller::User { unit: mine, role: Role::Admin } if unit.is_in_subtree_of(mine))
}

/// Rule 3 for records addressed down the tree (directives, fund programmes): issuing,
/// changing or withdrawing one acts on the subtree, which is a supervisor's (or an admin's)
/// of the owner or above, not a clerk's. Other kinds: no further condition than
/// [`can_write`].
pub fn can_address(caller: &Caller, kind: DocKind, owner: &UnitId) -> bool {
    let addressed = kind != DocKind::Profile
        && DocMeta::new(DocId::new(kind, owner.clone())).audience != Audience::None;
    !addressed || can_supervise(caller, owner)
}

/// Rule 3 for writes of records in a document owned by `owner`: a clerk writes its own
/// unit's records, a supervisor (and an admin) also its subtree's. Viewers and anonymous
/// callers never write.
pub fn can_write(caller: &Caller, owner: &UnitId) -> bool {
    match caller {
        Caller::Anonymous => false,
        Caller::User { unit, role } => match role {
            Role::Viewer => false,
            Role::Clerk => unit == owner,
            Role::Supervisor | Role::Admin => owner.is_in_subtree_of(unit),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UnitId {
        s.parse().unwrap()
    }

    /// One (me, other) pair per relation. Four levels mean no unit has both an ancestor above
    /// its parent and a grandchild, so the centre is a township except for `Descendant`.
    fn cases() -> Vec<(Relation, UnitId, UnitId)> {
        Relation::ALL
            .into_iter()
            .map(|rel| {
                let (me, other) = match rel {
                    Relation::SelfUnit => ("c01/k01/t01", "c01/k01/t01"),
                    Relation::Parent => ("c01/k01/t01", "c01/k01"),
                    Relation::Child => ("c01/k01/t01", "c01/k01/t01/v01"),
                    Relation::Ancestor => ("c01/k01/t01", "c01"),
                    Relation::Descendant => ("c01/k01", "c01/k01/t01/v01"),
                    Relation::Sibling => ("c01/k01/t01", "c01/k01/t02"),
                    Relation::Cousin => ("c01/k01/t01", "c01/k02/t01"),
                    Relation::Unrelated => ("c01/k01/t01", "c99/k01/t01"),
                };
                (rel, u(me), u(other))
            })
            .collect()
    }

    #[test]
    fn relation_covers_every_case() {
        for (rel, me, other) in cases() {
            assert_eq!(relation(&me, &other), rel, "{rel:?}");
        }
        // A parent's sibling is a cousin, not a sibling.
        assert_eq!(relation(&u("c01/k01/t01"), &u("c01/k02")), Relation::Cousin);
        // Two roots are siblings of nothing.
        assert_eq!(relation(&u("c01"), &u("c02")), Relation::Unrelated);
    }

    #[test]
    fn scope_matrix_for_internal_documents() {
        // A document of `me` with no audience lives exactly at `me` and its ancestors.
        for (rel, me, other) in cases() {
            let doc = DocMeta::new(DocId::new(DocKind::Members, me.clone()));
            let expected = matches!(
                rel,
                Relation::SelfUnit | Relation::Parent | Relation::Ancestor
            );
            assert_eq!(replicated_at(&other, &doc), expected, "members at {rel:?}");
        }
    }

    #[test]
    fn scope_matrix_for_addressed_documents() {
        // A profile (audience: all descendants) reaches the owner's line both ways, never
        // siblings, cousins or other trees.
        for (rel, me, other) in cases() {
            let doc = DocMeta::new(DocId::new(DocKind::Profile, me.clone()));
            let expected = !matches!(
                rel,
                Relation::Sibling | Relation::Cousin | Relation::Unrelated
            );
            assert_eq!(replicated_at(&other, &doc), expected, "profile at {rel:?}");
        }
    }

    #[test]
    fn audiences_narrow_replication() {
        let county = u("c01/k01");
        let list = DocMeta {
            id: DocId::new(DocKind::Members, county.clone()),
            audience: Audience::Units(vec![u("c01/k01/t01/v02")]),
        };
        assert!(
            replicated_at(&u("c01/k01/t01"), &list),
            "path to an addressee"
        );
        assert!(replicated_at(&u("c01/k01/t01/v02"), &list));
        assert!(
            !replicated_at(&u("c01/k01/t01/v01"), &list),
            "a sibling of the addressee"
        );
        assert!(!replicated_at(&u("c01/k01/t02"), &list));
        let villages = DocMeta {
            audience: Audience::Level(Level::Village),
            ..list.clone()
        };
        assert!(replicated_at(&u("c01/k01/t02/v09"), &villages));
        assert!(
            replicated_at(&u("c01/k01/t02"), &villages),
            "relays to villages"
        );
        assert!(
            !replicated_at(&u("c01/k02/t01/v01"), &villages),
            "another county"
        );
        // An audience can never name a unit outside the owner's subtree.
        let stray = DocMeta {
            audience: Audience::Units(vec![u("c01/k02/t01")]),
            ..list
        };
        assert!(!replicated_at(&u("c01/k02/t01"), &stray));
    }

    #[test]
    fn authority_matrix() {
        // A change to a document of `me` may come from `me`, its parent, its ancestors only.
        for (rel, me, other) in cases() {
            let expected = matches!(
                rel,
                Relation::SelfUnit | Relation::Parent | Relation::Ancestor
            );
            assert_eq!(may_author(&other, &me), expected, "author {rel:?}");
        }
    }

    #[test]
    fn visibility_matrix_every_role_relation_kind() {
        // The caller is bound to `me`; the document is owned by `other`.
        for kind in DocKind::ALL {
            for (rel, me, owner) in cases() {
                let doc = DocMeta::new(DocId::new(kind, owner.clone()));
                assert_eq!(
                    can_read(&Caller::Anonymous, &doc),
                    kind.is_public(),
                    "anonymous read {kind:?} {rel:?}"
                );
                assert!(
                    !can_write(&Caller::Anonymous, &owner),
                    "anonymous write {rel:?}"
                );
                assert!(!can_read_sensitive(&Caller::Anonymous, &owner));
                let in_subtree = matches!(
                    rel,
                    Relation::SelfUnit | Relation::Child | Relation::Descendant
                );
                for role in Role::ALL {
                    let caller = Caller::User {
                        unit: me.clone(),
                        role,
                    };
                    let addressed = doc.audience == Audience::Descendants
                        && matches!(rel, Relation::Parent | Relation::Ancestor);
                    let read = kind.is_public() || in_subtree || addressed;
                    assert_eq!(
                        can_read(&caller, &doc),
                        read,
                        "{role} read {kind:?} {rel:?}"
                    );
                    let write = match role {
                        Role::Viewer => false,
                        Role::Clerk => rel == Relation::SelfUnit,
                        Role::Supervisor | Role::Admin => in_subtree,
                    };
                    assert_eq!(can_write(&caller, &owner), write, "{role} write {rel:?}");
                    let sensitive = rel == Relation::SelfUnit && role >= Role::Clerk;
                    assert_eq!(
                        can_read_sensitive(&caller, &owner),
                        sensitive,
                        "{role} sensitive {rel:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn addressed_internal_documents_are_read_by_the_addressee_only() {
        let directive = DocMeta {
            id: DocId::new(DocKind::Members, u("c01/k01")),
            audience: Audience::Level(Level::Township),
        };
        let reader = |unit: &str| Caller::User {
            unit: u(unit),
            role: Role::Viewer,
        };
        assert!(can_read(&reader("c01/k01/t01"), &directive));
        assert!(
            !can_read(&reader("c01/k01/t01/v01"), &directive),
            "not addressed"
        );
        assert!(
            !can_read(&reader("c01/k02/t01"), &directive),
            "another county"
        );
        assert!(
            can_read(&reader("c01"), &directive),
            "ancestor of the owner"
        );
    }

    fn record(kind: DocKind, owner: &str, fields: &[(&str, &str)]) -> Record {
        Record {
            id: crate::ids::RecordRef {
                kind,
                unit: u(owner),
                record: crate::ids::RecordId::from_u64(1),
            },
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), crate::entities::Value::Text((*v).into())))
                .collect(),
            created: None,
            changed: None,
        }
    }

    #[test]
    fn directives_are_read_at_the_level_they_address() {
        let to_villages = record(DocKind::Directives, "c01/k01", &[("toLevel", "village")]);
        let to_all = record(DocKind::Directives, "c01/k01", &[]);
        let at = |unit: &str| Caller::User {
            unit: u(unit),
            role: Role::Viewer,
        };
        for (unit, villages, all) in [
            ("c01/k01/t01/v01", true, true),
            ("c01/k01/t01", false, true),
            ("c01/k01", true, true),
            ("c01", true, true),
            ("c01/k02/t01/v01", false, false),
        ] {
            assert_eq!(can_read_record(&at(unit), &to_villages), villages, "{unit}");
            assert_eq!(can_read_record(&at(unit), &to_all), all, "{unit}");
        }
        assert!(!can_read_record(&Caller::Anonymous, &to_all));
        let disclosure = record(DocKind::Disclosures, "c01/k01/t01/v01", &[]);
        assert!(can_read_record(&Caller::Anonymous, &disclosure));
        let mut paid = record(DocKind::Disbursements, "c01/k01/t01/v01", &[]);
        assert!(!can_read_record(&Caller::Anonymous, &paid));
        assert!(!can_read_record(&at("c01/k01/t01/v02"), &paid), "a sibling");
        paid.fields
            .insert("published".into(), crate::entities::Value::Bool(true));
        assert!(can_read_record(&Caller::Anonymous, &paid), "published");
    }

    /// Where a caller reads every record of a listing, each record of it is readable,
    /// whoever owns it and whatever it holds; a unit's own callers read every record of
    /// its listings.
    #[test]
    fn reading_every_record_agrees_with_each_record() {
        let units = [
            "c01",
            "c01/k01",
            "c01/k01/t01",
            "c01/k01/t01/v01",
            "c01/k01/t02/v01",
            "c01/k02/t01/v01",
        ];
        let callers: Vec<Caller> = std::iter::once(Caller::Anonymous)
            .chain(units.iter().map(|unit| Caller::User {
                unit: u(unit),
                role: Role::Viewer,
            }))
            .collect();
        for kind in DocKind::ALL {
            for caller in &callers {
                for listed in units.map(u) {
                    let records: Vec<Record> = units
                        .iter()
                        .filter(|o| u(o).is_in_subtree_of(&listed))
                        .flat_map(|o| {
                            [
                                record(kind, o, &[]),
                                record(kind, o, &[("toLevel", "village")]),
                                record(kind, o, &[("toLevel", "county")]),
                            ]
                        })
                        .collect();
                    let each = records.iter().all(|r| can_read_record(caller, r));
                    let every = reads_every_record(caller, kind, &listed);
                    assert!(!every || each, "{kind:?} of {listed} for {caller:?}");
                    let own = matches!(caller, Caller::User { unit, .. } if *unit == listed);
                    assert!(every || !own || kind.is_public(), "{kind:?} of {listed}");
                }
            }
        }
    }

    #[test]
    fn a_complainant_is_known_to_the_filing_and_the_handling_unit() {
        let c = record(
            DocKind::Complaints,
            "c01/k01/t01/v01",
            &[("handler", "c01/k01")],
        );
        let at = |unit: &str, role| Caller::User {
            unit: u(unit),
            role,
        };
        assert!(can_read_record_sensitive(
            &at("c01/k01/t01/v01", Role::Clerk),
            &c
        ));
        assert!(can_read_record_sensitive(
            &at("c01/k01", Role::Supervisor),
            &c
        ));
        assert!(!can_read_record_sensitive(&at("c01/k01", Role::Viewer), &c));
        assert!(
            !can_read_record_sensitive(&at("c01/k01/t01", Role::Admin), &c),
            "in between"
        );
        assert!(
            !can_read_record_sensitive(&at("c01", Role::Admin), &c),
            "above the handler"
        );
        let meeting = record(
            DocKind::Meetings,
            "c01/k01/t01/v01",
            &[("handler", "c01/k01")],
        );
        assert!(!can_read_record_sensitive(
            &at("c01/k01", Role::Supervisor),
            &meeting
        ));
    }

    #[test]
    fn supervisory_fields_need_a_supervisor_at_or_above() {
        for (rel, me, owner) in cases() {
            for role in Role::ALL {
                let caller = Caller::User {
                    unit: me.clone(),
                    role,
                };
                let want = role >= Role::Supervisor
                    && matches!(
                        rel,
                        Relation::SelfUnit | Relation::Child | Relation::Descendant
                    );
                assert_eq!(can_supervise(&caller, &owner), want, "{role} {rel:?}");
            }
        }
        assert!(!can_supervise(&Caller::Anonymous, &u("c01")));
    }

    /// Who may write fields whose authority depends on the record: a cadre's performance
    /// appraisal and a debriefing are rated from strictly above, a democratic appraisal at
    /// the unit or above; an appraisal's kind moves into or out of the rated ones only from
    /// above; a report accepted above is changed only from above, a returned one by its unit.
    #[test]
    fn ratings_and_accepted_reports_are_decided_from_above() {
        let spec = |k| crate::entities::entity(k).unwrap();
        let (appraisals, reports) = (spec(DocKind::Appraisals), spec(DocKind::Reports));
        let fields = |f: &[(&str, &str)]| -> Fields {
            f.iter()
                .map(|(k, v)| ((*k).to_owned(), crate::entities::Value::Text((*v).into())))
                .collect()
        };
        let owner = "c01/k01/t01/v01";
        let rated = record(DocKind::Appraisals, owner, &[("kind", "cadre_performance")]);
        let democratic = record(
            DocKind::Appraisals,
            owner,
            &[("kind", "democratic_appraisal")],
        );
        let rated_with_result = record(
            DocKind::Appraisals,
            owner,
            &[("kind", "cadre_performance"), ("result", "incompetent")],
        );
        let complaints = spec(DocKind::Complaints);
        let open = record(DocKind::Complaints, owner, &[("status", "open")]);
        let escalated = record(DocKind::Complaints, owner, &[("status", "escalated")]);
        let accepted = record(DocKind::Reports, owner, &[("review", "accepted")]);
        let returned = record(DocKind::Reports, owner, &[("review", "returned")]);
        let result = fields(&[("result", "excellent")]);
        let body = fields(&[("body", "Revised")]);
        for (rel, me, owner_for) in cases() {
            for role in Role::ALL {
                let caller = Caller::User {
                    unit: me.clone(),
                    role,
                };
                let supervisor = role >= Role::Supervisor;
                let above = supervisor && matches!(rel, Relation::Child | Relation::Descendant);
                let at_or_above = supervisor
                    && matches!(
                        rel,
                        Relation::SelfUnit | Relation::Child | Relation::Descendant
                    );
                let w = |spec, current: Option<&Record>, f: &Fields| {
                    let mut current = current.cloned();
                    if let Some(c) = current.as_mut() {
                        c.id.unit = owner_for.clone();
                    }
                    can_write_fields(&caller, spec, &owner_for, current.as_ref(), f)
                };
                let cell = format!("{role} {rel:?}");
                assert_eq!(w(appraisals, Some(&rated), &result), above, "rate: {cell}");
                assert_eq!(
                    w(appraisals, Some(&democratic), &result),
                    at_or_above,
                    "democratic: {cell}"
                );
                // Made rated with its result in one write, or made rated later.
                let rated_new = fields(&[("kind", "debriefing"), ("result", "competent")]);
                assert_eq!(w(appraisals, None, &rated_new), above, "new: {cell}");
                let into = fields(&[("kind", "cadre_performance")]);
                assert_eq!(
                    w(appraisals, Some(&democratic), &into),
                    above,
                    "into: {cell}"
                );
                let back = fields(&[("kind", "democratic_appraisal")]);
                assert_eq!(w(appraisals, Some(&rated), &back), above, "out of: {cell}");
                assert!(w(appraisals, Some(&rated), &into), "unchanged kind: {cell}");
                assert_eq!(
                    w(reports, Some(&accepted), &body),
                    above,
                    "accepted: {cell}"
                );
                assert!(w(reports, Some(&returned), &body), "returned: {cell}");
                assert!(w(reports, None, &body), "new report: {cell}");
                // A rating stays with the person and year it was given for.
                let elsewhere = fields(&[("subject", "Someone Else")]);
                assert!(w(appraisals, Some(&rated), &elsewhere), "unrated: {cell}");
                assert_eq!(
                    w(appraisals, Some(&rated_with_result), &elsewhere),
                    above,
                    "rated: {cell}"
                );
                // What a complaint's handling answered stays what it answered.
                let later = fields(&[("dueOn", "2030-01-01")]);
                assert!(w(complaints, Some(&open), &later), "open: {cell}");
                assert_eq!(
                    w(complaints, Some(&escalated), &later),
                    above,
                    "escalated: {cell}"
                );
                // Handed up while still marked open: no longer its unit's either. Handled
                // at the root of its tree, which no one is above.
                let root = owner_for.as_str().split('/').next().unwrap();
                let open_above = record(
                    DocKind::Complaints,
                    owner,
                    &[("status", "open"), ("handler", root)],
                );
                assert_eq!(
                    w(complaints, Some(&open_above), &later),
                    root == owner_for.as_str(),
                    "open, handled above: {cell}"
                );
            }
        }
        // Filed and handed up in one write: the answer is the handling unit's.
        let at = |unit: &str| Caller::User {
            unit: u(unit),
            role: Role::Supervisor,
        };
        let owner = u(owner);
        let filed_up = fields(&[("handler", "c01"), ("status", "escalated")]);
        let filed_answered = fields(&[
            ("handler", "c01"),
            ("status", "closed"),
            ("response", "Done"),
        ]);
        let w = |c: &Caller, f: &Fields| can_write_fields(c, complaints, &owner, None, f);
        assert!(w(&at("c01/k01/t01/v01"), &filed_up));
        assert!(!w(&at("c01/k01/t01/v01"), &filed_answered));
        assert!(
            !w(&at("c01/k01"), &filed_answered),
            "a unit below the handler"
        );
        assert!(w(&at("c01"), &filed_answered));
        // The same later: handed up and answered in one update, by the unit handing it up,
        // or by one between; the handler a space hid, once trimmed as stored, too.
        let open = record(DocKind::Complaints, owner.as_str(), &[("status", "open")]);
        let up = |c: &Caller, f: &Fields| can_write_fields(c, complaints, &owner, Some(&open), f);
        assert!(up(&at("c01/k01/t01/v01"), &filed_up));
        assert!(!up(&at("c01/k01/t01/v01"), &filed_answered));
        assert!(!up(&at("c01/k01"), &filed_answered));
        assert!(up(&at("c01"), &filed_answered));
        let spaced = crate::records::trimmed(fields(&[
            ("handler", " c01/k01/t01"),
            ("status", "closed"),
            ("response", "Done"),
        ]));
        assert!(!w(&at("c01/k01/t01/v01"), &spaced));
        assert!(!up(&at("c01/k01/t01/v01"), &spaced));
        // Once escalated, its text and dates are changed from above the unit handling it:
        // not by that unit (which could move its own due date), nor by one it went past.
        let at_county = record(
            DocKind::Complaints,
            owner.as_str(),
            &[("status", "escalated"), ("handler", "c01/k01")],
        );
        let later = fields(&[("dueOn", "2030-01-01")]);
        let edit = |c: &Caller| can_write_fields(c, complaints, &owner, Some(&at_county), &later);
        assert!(!edit(&at("c01/k01/t01")), "a unit it went past");
        assert!(!edit(&at("c01/k01")), "the unit handling it");
        assert!(edit(&at("c01")));
        // A held record's sensitive fields are written by those who read them: the village's
        // clerks and supervisors, not a supervisor above who reads them as null (and would
        // clear them).
        let clear = fields(&[("complainant", "")]);
        let clerk = Caller::User {
            unit: owner.clone(),
            role: Role::Clerk,
        };
        let sensitive =
            |c: &Caller, r: &Record| can_write_fields(c, complaints, &owner, Some(r), &clear);
        assert!(sensitive(&clerk, &open));
        assert!(!sensitive(&at("c01/k01/t01"), &open), "a supervisor above");
        // Escalated, it is closed below the county (above); the city, above it, reads it as
        // null: the complainant stays as filed.
        assert!(!sensitive(&at("c01"), &at_county), "the city");
        // A new record's: left empty by anyone who writes the record, written only by
        // those who read them back (a supervisor above could otherwise pay a guessed
        // identity number and see from a count whether someone was paid under it).
        let new = |c: &Caller, f: &Fields| can_write_fields(c, complaints, &owner, None, f);
        assert!(new(&at("c01/k01/t01"), &clear));
        assert!(new(&at("c01/k01/t01"), &fields(&[("complainant", "  ")])));
        let named = fields(&[("complainant", "Li Si")]);
        assert!(new(&clerk, &named));
        assert!(!new(&at("c01/k01/t01"), &named), "a supervisor above");
        // Filed with the township as its handler: the township reads it, so may name them.
        let township_clerk = Caller::User {
            unit: u("c01/k01/t01"),
            role: Role::Clerk,
        };
        let handled_above = fields(&[
            ("complainant", "Li Si"),
            ("handler", "c01/k01/t01"),
            ("status", "escalated"),
        ]);
        assert!(new(&at("c01/k01/t01"), &handled_above));
        assert!(!new(&township_clerk, &named));
        let payments = spec(DocKind::Disbursements);
        let id_number = fields(&[("recipientIdNumber", "11010519491231002X")]);
        let pay = |c: &Caller| can_write_fields(c, payments, &owner, None, &id_number);
        assert!(pay(&clerk));
        assert!(!pay(&at("c01/k01")), "a county supervisor");
    }

    #[test]
    fn only_supervisors_address_the_subtree() {
        for (rel, me, owner) in cases() {
            for role in Role::ALL {
                let caller = Caller::User {
                    unit: me.clone(),
                    role,
                };
                let at_or_above = matches!(
                    rel,
                    Relation::SelfUnit | Relation::Child | Relation::Descendant
                );
                for kind in crate::ids::DocKind::ALL {
                    let addressed = matches!(kind, DocKind::Directives | DocKind::Funds);
                    let want = if addressed {
                        role >= Role::Supervisor && at_or_above
                    } else {
                        can_write(&caller, &owner)
                    };
                    assert_eq!(
                        can_write(&caller, &owner) && can_address(&caller, kind, &owner),
                        want,
                        "{role} {rel:?} {kind:?}"
                    );
                }
            }
        }
        assert!(!can_address(
            &Caller::Anonymous,
            DocKind::Directives,
            &u("c01")
        ));
    }

    #[test]
    fn only_admins_manage_users_at_or_below_them() {
        for (rel, me, other) in cases() {
            for role in Role::ALL {
                let caller = Caller::User {
                    unit: me.clone(),
                    role,
                };
                let want = role == Role::Admin
                    && matches!(
                        rel,
                        Relation::SelfUnit | Relation::Child | Relation::Descendant
                    );
                assert_eq!(can_manage_users(&caller, &other), want, "{role} {rel:?}");
            }
        }
        assert!(!can_manage_users(&Caller::Anonymous, &u("c01")));
    }

    #[test]
    fn roles_parse() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
