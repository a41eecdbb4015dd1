//! Field-level authority for changes from peers (rule 3's supervisory and review fields).
//!
//! Rule 2 (a change's author is the owner or above) is checked on every change before any is
//! applied. Two kinds of field need more, and knowing which record a change touched and who
//! handled it then needs the document, so these are checked on the copy the message was
//! applied to, before the copy is adopted:
//! - review fields (a report's review) only from a unit strictly above the owner;
//! - a complaint's supervisory fields (status, handler, response) only from the unit handling
//!   it when the change was made, or above: once a village escalates a complaint, the village
//!   no longer closes it.
//!
//! A peer's unit is all a change names: which user (clerk or supervisor) wrote it is the
//! gateway's check at the node that took the write.

use automerge::{Automerge, ChangeHash, ObjType, ReadDoc, ScalarValue, Value};
use grassroots_schema::{Access, ActorTag, DocKind, DocMeta, EntitySpec, UnitId, entity};

use super::engine::Rejection;
use super::wire::RejectReason;

/// The record field that names the unit handling a complaint.
const HANDLER: &str = "handler";

/// Whether documents of `spec`'s kind have fields a change's author alone does not authorise.
fn needs_check(spec: &EntitySpec) -> bool {
    spec.kind == DocKind::Complaints || spec.fields.iter().any(|f| f.access == Access::Review)
}

/// Check every change `candidate` holds beyond `before` against field-level authority.
pub fn check(
    candidate: &Automerge,
    before: &[ChangeHash],
    meta: &DocMeta,
) -> Result<(), Rejection> {
    let Some(spec) = entity(meta.id.kind).filter(|s| needs_check(s)) else {
        return Ok(());
    };
    let owner = meta.owner();
    let refuse = |detail: String| {
        Err(Rejection::new(
            RejectReason::Unauthorised,
            Some(&meta.id),
            detail,
        ))
    };
    for change in candidate.get_changes(before) {
        let Ok(author) = ActorTag::unit_of(change.actor_id().to_bytes()) else {
            return refuse("a change's actor does not name a unit".into());
        };
        let deps = change.deps().to_vec();
        for op in change.decode().operations {
            let automerge::legacy::Key::Map(name) = &op.key else {
                continue;
            };
            let Some(field) = spec.field(name) else {
                continue;
            };
            match field.access {
                Access::Review if !author.is_ancestor_of(owner) => {
                    return refuse(format!(
                        "{author} may not set {name} of a record of {owner}: reviews come from above"
                    ));
                }
                Access::Supervisory if spec.kind == DocKind::Complaints => {
                    let handler = handler_at(candidate, &op.obj.to_string(), &deps, owner);
                    if !handler.is_in_subtree_of(&author) {
                        return refuse(format!(
                            "{author} may not set {name} of a complaint handled by {handler}"
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The unit handling the complaint whose map is `obj`, as of `heads`: the owner while the
/// record did not exist yet or names no (valid) handler.
fn handler_at(doc: &Automerge, obj: &str, heads: &[ChangeHash], owner: &UnitId) -> UnitId {
    let Ok((obj, ObjType::Map)) = doc.import(obj) else {
        return owner.clone();
    };
    match doc.get_at(&obj, HANDLER, heads) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(u) => u.parse().unwrap_or_else(|_| owner.clone()),
            _ => owner.clone(),
        },
        _ => owner.clone(),
    }
}
