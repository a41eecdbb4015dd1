//! Field-level authority that a change's unit decides (rule 3's supervisory and review
//! fields, as far as a unit can be told from a change).
//!
//! Rule 2 (a change's author is the owner or above) is checked on every change before any is
//! applied. Three kinds of record need more, and which record a change touched and who handled
//! it then are only known against the document, so peer changes are checked on the copy the
//! message was applied to, before the copy is adopted ([`check`]):
//! - a report's review fields only from a unit strictly above the owner, and once the report
//!   is accepted (as of the change's dependencies) any of its fields (an appraisal rated
//!   from above that holds its result, and a complaint no longer open, are closed likewise
//!   by [`check_local`] and the gateway, not here: see `watched`);
//! - an appraisal's result, outcome and remarks only from strictly above when, as of the
//!   change itself, it is a cadre's performance appraisal or a debriefing, and its kind moved
//!   into or out of those likewise (`EntitySpec::above_only`, which the gateway applies too);
//! - a complaint's supervisory fields (status, handler, response, respondedOn) only from the
//!   unit handling it as of the change's dependencies, or above, and the handler only ever
//!   names the owner or a unit above it: once a village escalates a complaint, the village
//!   no longer closes it;
//! - replacing or deleting an existing record of those kinds (no honest writer does either)
//!   needs the same authority (an appraisal's rating's, a report's review's, a complaint's
//!   status's), judged against every record under the id as of the change's
//!   dependencies and as this node held them, or a review or an escalation could be erased
//!   by rewriting the record whole; and a second record under an existing id is refused.
//!
//! A change judged by its dependencies may still be concurrent with a decision above it, so
//! the values of these fields are read by authority ([`crate::doc::by_authority`]), never by
//! automerge's op order, which the writer controls.
//!
//! A change names a unit, not a user: that a supervisor, not a clerk, wrote it is the
//! gateway's check at the node that took the write. The same rules are checked on local
//! writes as the store applies them ([`check_local`]), against the document the change will
//! be built on, so a write is refused at once rather than accepted here and refused by the
//! parent (which would stop every later change of the document from travelling up).

use std::collections::HashMap;

use automerge::legacy::{Key, OpType};
use automerge::{Automerge, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use grassroots_schema::entities::ComplaintStatus;
use grassroots_schema::{
    Access, ActorTag, DocKind, DocMeta, EntitySpec, Fields, RecordId, UnitId, entity,
};

use super::engine::Rejection;
use super::wire::RejectReason;
use crate::doc;

/// The record field that names the unit handling a complaint.
const HANDLER: &str = "handler";

/// The description of `meta`'s kind, when its records have fields a change's author alone
/// does not authorise.
fn guarded(meta: &DocMeta) -> Option<&'static EntitySpec> {
    entity(meta.id.kind).filter(|spec| spec.record_guard().is_some())
}

/// Whether `meta`'s document has no field guarded beyond rule 2 (so [`check`] passes any
/// change to it).
pub(super) fn unguarded(meta: &DocMeta) -> bool {
    guarded(meta).is_none()
}

/// Whether an op setting field `name` of a record of `spec`'s kind may need more than rule 2
/// (so [`check`] looks the record up): the fields that resolve by authority (those decided
/// above, a complaint's handler among them, an appraisal's kind and rating), and any field
/// of a report (an accepted one is closed).
fn watched(spec: &EntitySpec, name: &str) -> bool {
    // Not the plain fields of a rated appraisal or an answered complaint: closed to their
    // unit where writes are taken (`check_local`, the gateway), they are not refused here,
    // since a history an older build made, which let such edits through, would otherwise
    // hold its document back on the link for good.
    spec.kind == DocKind::Reports || spec.by_authority().any(|f| f.name == name)
}

/// A field's value in the record map `obj` as of `heads` (`None`: now), as text; concurrent
/// values resolved by authority ([`doc::by_authority`]).
fn text_at(
    doc: &Automerge,
    obj: &ObjId,
    key: &str,
    heads: Option<&[ChangeHash]>,
) -> Option<String> {
    match doc::by_authority(doc, obj, key, heads)? {
        ScalarValue::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

/// What one check reads of a document, with the handlers it looked up.
struct Reader<'a> {
    doc: &'a Automerge,
    spec: &'static EntitySpec,
    owner: &'a UnitId,
    /// Handler per (record map, heads): a change setting several supervisory fields of one
    /// record looks it up once.
    handlers: HashMap<(ObjId, Vec<ChangeHash>), UnitId>,
}

impl Reader<'_> {
    /// The unit handling the complaint whose map is `obj`, as of `heads`: the owner while the
    /// record did not exist yet or names no valid handler (one on the owner's line).
    fn handler(&mut self, obj: &ObjId, heads: &[ChangeHash]) -> UnitId {
        let key = (obj.clone(), heads.to_vec());
        if let Some(h) = self.handlers.get(&key) {
            return h.clone();
        }
        let h = doc::by_authority(self.doc, obj, HANDLER, Some(heads))
            .and_then(|s| valid_handler(self.owner, &s))
            .unwrap_or_else(|| self.owner.clone());
        self.handlers.insert(key, h.clone());
        h
    }

    /// Why `author` may not write field `name` of the record map `obj`, if it may not: the
    /// record as the writer saw it is read as of `heads` (the change's dependencies), and as
    /// written as of `after` (the change itself).
    fn refusal(
        &mut self,
        author: &UnitId,
        obj: &ObjId,
        name: &str,
        heads: &[ChangeHash],
        after: &[ChangeHash],
    ) -> Option<String> {
        let owner = self.owner;
        let complaint = self.spec.kind == DocKind::Complaints;
        if complaint && self.spec.field(name)?.access == Access::Supervisory {
            // Judged against the unit handling it before the change and, for what only the
            // handling unit says (an answer, a status past waiting), the one the change
            // hands it to: a complaint is not handed up already answered in its name.
            let waiting = name == "status"
                && text_at(self.doc, obj, "status", Some(after))
                    .as_deref()
                    .and_then(ComplaintStatus::parse)
                    .is_some_and(ComplaintStatus::is_open);
            let mut judges = vec![self.handler(obj, heads)];
            if name != HANDLER && !waiting {
                judges.push(self.handler(obj, after));
            }
            return judges
                .into_iter()
                .find(|h| !h.is_in_subtree_of(author))
                .map(|h| format!("{author} may not set {name} of a complaint handled by {h}"));
        }
        let doc = self.doc;
        let exists = doc.length_at(obj, heads) > 0;
        let held = |k: &str| text_at(doc, obj, k, Some(heads));
        let written = |k: &str| text_at(doc, obj, k, Some(after));
        let why = self.spec.above_only(name, owner, exists, &held, &written)?;
        // A complaint no longer with its unit: from above the unit handling it.
        let closer = if complaint {
            self.handler(obj, heads)
        } else {
            owner.clone()
        };
        (!author.is_ancestor_of(&closer))
            .then(|| format!("{author} may not set {name} of a record of {owner}: {why}"))
    }

    /// Why `author` may not replace or delete the existing record map `obj` (as of `heads`),
    /// if it may not: it needs the authority the record's guarded field needs.
    fn refusal_whole(
        &mut self,
        author: &UnitId,
        obj: &ObjId,
        heads: &[ChangeHash],
    ) -> Option<String> {
        let guarded = self.spec.record_guard()?;
        self.refusal(author, obj, guarded.name, heads, heads)
            .map(|why| format!("replacing or deleting a record: {why}"))
    }
}

/// The handler a value names, if it is a unit at or above `owner`.
fn valid_handler(owner: &UnitId, value: &ScalarValue) -> Option<UnitId> {
    match value {
        ScalarValue::Str(s) => s
            .parse::<UnitId>()
            .ok()
            .filter(|h| owner.is_in_subtree_of(h)),
        _ => None,
    }
}

/// Check every change `candidate` holds beyond `before` (a peer's, just applied to this
/// copy) against the field-level authority of its author's unit.
pub fn check(
    candidate: &Automerge,
    before: &[ChangeHash],
    meta: &DocMeta,
) -> Result<(), Rejection> {
    let Some(spec) = guarded(meta) else {
        return Ok(());
    };
    let refuse = |reason, detail: String| Err(Rejection::new(reason, Some(&meta.id), detail));
    let mut reader = Reader {
        doc: candidate,
        spec,
        owner: meta.owner(),
        handlers: HashMap::new(),
    };
    // The record maps the changes wrote into (legacy object ids).
    let mut touched = std::collections::BTreeSet::new();
    for change in candidate.get_changes(before) {
        let Ok(author) = ActorTag::unit_of(change.actor_id().to_bytes()) else {
            return refuse(
                RejectReason::Unauthorised,
                "a change's actor does not name a unit".into(),
            );
        };
        let deps = change.deps().to_vec();
        let itself = [change.hash()];
        for op in change.decode().operations {
            let Key::Map(name) = &op.key else {
                continue;
            };
            // Most ops set a record's plain field, which nothing here guards: skip them
            // before turning the op's object into a document id (a string round trip).
            if !matches!(op.obj, automerge::legacy::ObjectId::Root) {
                touched.insert(op.obj.to_string());
                if !watched(spec, name) {
                    continue;
                }
            }
            let Ok((obj, _)) = candidate.import(&op.obj.to_string()) else {
                continue;
            };
            if obj == ROOT {
                // A record put or deleted whole: fine when new, guarded when it existed,
                // judged against every record under that id as of the change's
                // dependencies and as this node held them before the message (no honest
                // writer deletes or replaces a record, so a change made from older heads
                // gets no benefit of the doubt here).
                for heads in [deps.as_slice(), before] {
                    for (v, old) in candidate
                        .get_all_at(ROOT, name.as_str(), heads)
                        .unwrap_or_default()
                    {
                        if matches!(v, Value::Object(ObjType::Map))
                            && let Some(why) = reader.refusal_whole(&author, &old, heads)
                        {
                            return refuse(RejectReason::Unauthorised, why);
                        }
                    }
                }
                // A second record under an id, made concurrently with the first (from heads
                // before it): automerge would show whichever has the higher op id. Counted
                // over what this node held and the change itself, so the later of the two
                // to arrive is refused. Honest ids are random and never made twice.
                // Two new records under one id in a single message are refused too.
                let mut seen = before.to_vec();
                seen.push(change.hash());
                let count = |heads: Option<&[ChangeHash]>| {
                    match heads {
                        Some(h) => candidate.get_all_at(ROOT, name.as_str(), h),
                        None => candidate.get_all(ROOT, name.as_str()),
                    }
                    .map_or(0, |v| v.len())
                };
                let now = count(None);
                if !matches!(op.action, OpType::Delete)
                    && (count(Some(&seen)) > 1 || (now > 1 && now > count(Some(before))))
                {
                    return refuse(
                        RejectReason::Unauthorised,
                        format!("a second record under the id {name}"),
                    );
                }
                continue;
            }
            // A null handler hands the complaint back to its owner.
            if name == HANDLER
                && spec.kind == DocKind::Complaints
                && let OpType::Put(v) = &op.action
                && !matches!(v, ScalarValue::Null)
                && valid_handler(reader.owner, v).is_none()
            {
                return refuse(
                    RejectReason::Malformed,
                    format!(
                        "a complaint handler must be {} or a unit above it",
                        reader.owner
                    ),
                );
            }
            if let Some(why) = reader.refusal(&author, &obj, name, &deps, &itself) {
                return refuse(RejectReason::Unauthorised, why);
            }
        }
    }
    // Nor may they leave a record that read before them unreadable (a year as text, a
    // required field removed): every view leaves out such a record, and with it a decision
    // from above it holds (a rating, a review, a complaint's handling).
    for o in touched {
        let Ok((obj, _)) = candidate.import(&o) else {
            continue;
        };
        let record = candidate
            .parents(&obj)
            .ok()
            .and_then(|mut p| p.next())
            .and_then(|p| match p.prop {
                automerge::Prop::Map(key) => key.parse::<RecordId>().ok(),
                automerge::Prop::Seq(_) => None,
            });
        // A record removed whole is `refusal_whole`'s to judge (an edit and then a removal
        // in one message leave the map behind, unseen).
        if let Some(record) = record
            && doc::record_obj(candidate, record).is_some()
            && doc::record_reads_at(candidate, spec, reader.owner, record, before)
            && doc::read_record(candidate, spec, reader.owner, record).is_none()
        {
            return refuse(
                RejectReason::Malformed,
                format!(
                    "a change leaves the record {record} no longer readable as a {}",
                    spec.type_name
                ),
            );
        }
    }
    Ok(())
}

/// Check that this node (`me`) may write `fields` (with the values written) of record
/// `record` of `meta`'s document as it is now (`doc`; a record not there yet is created),
/// after the values the writes before it in the same change set in the record (`earlier`):
/// what a parent will check of the change the writes make together.
pub fn check_local(
    doc: &Automerge,
    meta: &DocMeta,
    me: &UnitId,
    record: RecordId,
    fields: &Fields,
    earlier: Option<&Fields>,
) -> Result<(), String> {
    let Some(spec) = guarded(meta) else {
        return Ok(());
    };
    let obj = doc::record_obj(doc, record);
    let owner = meta.owner();
    let heads = doc.get_heads();
    let mut reader = Reader {
        doc,
        spec,
        owner,
        handlers: HashMap::new(),
    };
    let exists = earlier.is_some() || obj.is_some();
    let held = |k: &str| match earlier.and_then(|f| f.get(k)) {
        Some(v) => v.as_text().map(str::to_owned),
        None => obj.as_ref().and_then(|o| text_at(doc, o, k, None)),
    };
    let written = |k: &str| match fields.get(k) {
        Some(v) => v.as_text().map(str::to_owned),
        None => held(k),
    };
    let complaint = spec.kind == DocKind::Complaints;
    // The unit handling a complaint before the batch's change (its owner while new), as the
    // parent will read it from the change's dependencies; and what the batch writes of the
    // record, this write last, as the parent will read the change itself.
    let handling = match obj.as_ref() {
        Some(o) if complaint => reader.handler(o, &heads),
        _ => owner.clone(),
    };
    let mut all = earlier.cloned().unwrap_or_default();
    all.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    let supervisory = |name: &str| {
        complaint
            && spec
                .field(name)
                .is_some_and(|f| f.access == Access::Supervisory)
    };
    // A complaint's handling over everything the batch writes of the record: an answer
    // written before a handover in the same change is judged against the new handler too,
    // as the parent will judge the change.
    for name in all.keys().filter(|n| supervisory(n)) {
        let handed = grassroots_schema::handed_to(owner, name, &all);
        if let Some(h) = Some(&handling)
            .into_iter()
            .chain(handed.as_ref())
            .find(|h| !h.is_in_subtree_of(me))
        {
            return Err(format!(
                "{me} may not set {name} of a complaint handled by {h}"
            ));
        }
    }
    for name in fields.keys() {
        let name = name.as_str();
        if supervisory(name) {
            continue;
        }
        if let Some(why) = spec.above_only(name, owner, exists, &held, &written)
            && !me.is_ancestor_of(&handling)
        {
            return Err(format!(
                "{me} may not set {name} of a record of {owner}: {why}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::{self, RecordWrite};
    use grassroots_schema::{DocId, Fields, Value as V};

    fn u(s: &str) -> UnitId {
        s.parse().unwrap()
    }

    /// Fields written, as text.
    fn set(fields: &[(&str, &str)]) -> Fields {
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), V::Text(v.to_string())))
            .collect()
    }

    fn write(
        doc: &mut Automerge,
        kind: DocKind,
        record: u64,
        create: bool,
        fields: &[(&str, &str)],
    ) {
        // Text, but a year as a number (as the gateway writes it).
        let fields: Fields = fields
            .iter()
            .map(|(k, v)| match (*k, v.parse::<i64>()) {
                ("year", Ok(y)) => (k.to_string(), V::Int(y)),
                _ => (k.to_string(), V::Text(v.to_string())),
            })
            .collect();
        let rec = RecordId::from_u64(record);
        let w = if create {
            RecordWrite::Create(rec, &fields, None)
        } else {
            RecordWrite::Update(rec, &fields, None)
        };
        let spec = grassroots_schema::entity(kind).unwrap();
        let results = doc::apply_record_writes(doc, spec, &[w]).unwrap();
        assert!(results.iter().all(Result::is_ok));
    }

    /// Whether a change made on `d` by `unit` (by `edit`) passes [`check`] at a node
    /// holding `d`.
    fn passes(
        d: &Automerge,
        meta: &DocMeta,
        unit: &str,
        edit: impl FnOnce(&mut Automerge),
    ) -> bool {
        let mut copy = d.fork();
        copy.set_actor(doc::actor_for(&u(unit), [3; 8]));
        edit(&mut copy);
        check(&copy, &d.get_heads(), meta).is_ok()
    }

    #[test]
    fn ratings_and_accepted_reports_come_from_above_over_sync() {
        let (v, t) = ("c01/k01/t01/v01", "c01/k01/t01");
        let meta = DocMeta::new(DocId::new(DocKind::Appraisals, u(v)));
        let mut d = doc::empty(&doc::actor_for(&u(v), [1; 8]));
        let (rated, democratic) = (1, 2);
        let subject = ("subject", "Secretary Wu");
        write(
            &mut d,
            DocKind::Appraisals,
            rated,
            true,
            &[("kind", "cadre_performance"), ("year", "2026"), subject],
        );
        write(
            &mut d,
            DocKind::Appraisals,
            democratic,
            true,
            &[("kind", "democratic_appraisal"), ("year", "2026"), subject],
        );
        let set = |rec, f: &'static [(&'static str, &'static str)]| {
            move |d: &mut Automerge| write(d, DocKind::Appraisals, rec, false, f)
        };
        let excellent: &[(&str, &str)] = &[("result", "excellent")];
        assert!(
            !passes(&d, &meta, v, set(rated, excellent)),
            "a village rates its cadre"
        );
        assert!(
            passes(&d, &meta, t, set(rated, excellent)),
            "its township rates it"
        );
        assert!(
            passes(&d, &meta, v, set(democratic, excellent)),
            "democratic appraisal"
        );
        // Made rated with its result in one change, or made rated after the result.
        let made = |d: &mut Automerge| {
            write(
                d,
                DocKind::Appraisals,
                3,
                true,
                &[
                    ("kind", "debriefing"),
                    ("year", "2026"),
                    subject,
                    ("result", "competent"),
                ],
            );
        };
        assert!(!passes(&d, &meta, v, made));
        assert!(!passes(
            &d,
            &meta,
            v,
            set(democratic, &[("kind", "cadre_performance")])
        ));
        assert!(!passes(
            &d,
            &meta,
            v,
            set(rated, &[("kind", "democratic_appraisal")])
        ));
        assert!(passes(
            &d,
            &meta,
            t,
            set(democratic, &[("kind", "cadre_performance")])
        ));
        // Removing a rated appraisal takes the rating's authority.
        let remove = |d: &mut Automerge| {
            let spec = grassroots_schema::entity(DocKind::Appraisals).unwrap();
            let w = [RecordWrite::Delete(RecordId::from_u64(rated))];
            doc::apply_record_writes(d, spec, &w).unwrap();
        };
        assert!(!passes(&d, &meta, v, remove));
        assert!(passes(&d, &meta, t, remove));
        // Nor does a change leave it unreadable (a year as text), which would drop it, and
        // its rating, out of every view; one that keeps it readable passes.
        assert!(!passes(&d, &meta, v, set(rated, &[("year", "soon")])));
        assert!(passes(
            &d,
            &meta,
            v,
            set(rated, &[("heldOn", "2026-12-01")])
        ));
        // An edit and then a removal of a record it may remove, in one message.
        let edit_then_remove = |d: &mut Automerge| {
            write(
                d,
                DocKind::Appraisals,
                democratic,
                false,
                &[("heldOn", "2026-12-01")],
            );
            let spec = grassroots_schema::entity(DocKind::Appraisals).unwrap();
            let w = [RecordWrite::Delete(RecordId::from_u64(democratic))];
            doc::apply_record_writes(d, spec, &w).unwrap();
        };
        assert!(passes(&d, &meta, v, edit_then_remove));
        // Once the township has rated it, the rating stays with the person and year it was
        // given for: the village's node no longer moves it to someone else. (Not refused at
        // sync: a history an older build made would hold the document back for good.)
        let mut rated_doc = d.fork();
        rated_doc.set_actor(doc::actor_for(&u(t), [2; 8]));
        set(rated, excellent)(&mut rated_doc);
        let elsewhere = [(
            "subject".to_owned(),
            grassroots_schema::Value::Text("Someone Else".into()),
        )]
        .into_iter()
        .collect::<Fields>();
        let rec = RecordId::from_u64(rated);
        assert!(
            check_local(&d, &meta, &u(v), rec, &elsewhere, None).is_ok(),
            "not rated yet"
        );
        let e = check_local(&rated_doc, &meta, &u(v), rec, &elsewhere, None).unwrap_err();
        assert!(e.contains("changed only from above"), "{e}");
        assert!(check_local(&rated_doc, &meta, &u(t), rec, &elsewhere, None).is_ok());
        assert!(passes(
            &rated_doc,
            &meta,
            v,
            set(rated, &[("subject", "Someone Else")])
        ));

        // A complaint filed and handed up in one change says no more than that: an answer,
        // or a status past waiting, is the handling unit's.
        let complaints = DocMeta::new(DocId::new(DocKind::Complaints, u(v)));
        let c = doc::empty(&doc::actor_for(&u(v), [1; 8]));
        let file = |more: &[(&'static str, &'static str)]| {
            let mut f = vec![
                ("subject", "Road"),
                ("body", "Potholes"),
                ("filedOn", "2026-01-02"),
                ("dueOn", "2026-02-01"),
            ];
            f.extend_from_slice(more);
            move |d: &mut Automerge| write(d, DocKind::Complaints, 7, true, &f)
        };
        let handed_up = [("handler", t), ("status", "escalated")];
        let answered = [
            ("handler", t),
            ("status", "closed"),
            ("response", "Resolved by the township"),
        ];
        assert!(passes(&c, &complaints, v, file(&handed_up)), "handed up");
        assert!(
            !passes(&c, &complaints, v, file(&answered)),
            "filed answered"
        );
        assert!(
            passes(&c, &complaints, t, file(&answered)),
            "by the township"
        );
        // The same in a later change: handed up and answered at once by the village.
        let mut filed = c.fork();
        file(&[])(&mut filed);
        let answer = |more: &'static [(&'static str, &'static str)]| {
            move |d: &mut Automerge| write(d, DocKind::Complaints, 7, false, more)
        };
        let answered_later: &[(&str, &str)] = &[
            ("handler", "c01/k01/t01"),
            ("status", "closed"),
            ("response", "Resolved by the township"),
        ];
        assert!(!passes(&filed, &complaints, v, answer(answered_later)));
        assert!(passes(&filed, &complaints, t, answer(answered_later)));
        assert!(passes(
            &filed,
            &complaints,
            v,
            answer(&[("handler", "c01/k01/t01"), ("status", "escalated")])
        ));

        let meta = DocMeta::new(DocId::new(DocKind::Reports, u(v)));
        let mut r = doc::empty(&doc::actor_for(&u(v), [1; 8]));
        let report: &[(&str, &str)] = &[
            ("kind", "annual_assessment"),
            ("period", "2026"),
            ("submittedOn", "2026-12-01"),
            ("body", "Done"),
        ];
        write(&mut r, DocKind::Reports, 1, true, report);
        let revise =
            |d: &mut Automerge| write(d, DocKind::Reports, 1, false, &[("body", "Revised")]);
        assert!(passes(&r, &meta, v, revise), "not reviewed yet");
        r.set_actor(doc::actor_for(&u(t), [2; 8]));
        write(
            &mut r,
            DocKind::Reports,
            1,
            false,
            &[("review", "accepted")],
        );
        assert!(!passes(&r, &meta, v, revise), "accepted");
        assert!(passes(&r, &meta, t, revise), "from above");
        write(
            &mut r,
            DocKind::Reports,
            1,
            false,
            &[("review", "returned")],
        );
        assert!(passes(&r, &meta, v, revise), "returned");
    }

    #[test]
    fn a_local_write_is_held_to_what_the_parent_will_check() {
        let (village, township) = (u("c01/k01/t01/v01"), u("c01/k01/t01"));
        let meta = DocMeta::new(DocId::new(DocKind::Complaints, village.clone()));
        let mut d = doc::empty(&doc::actor_for(&village, [1; 8]));
        write(
            &mut d,
            DocKind::Complaints,
            1,
            true,
            &[("subject", "Road"), ("status", "OPEN")],
        );
        let rec = RecordId::from_u64(1);
        // Handled by the village: its node may answer it.
        assert!(check_local(&d, &meta, &village, rec, &set(&[("status", "OPEN")]), None).is_ok());
        write(
            &mut d,
            DocKind::Complaints,
            1,
            false,
            &[("handler", "c01/k01/t01"), ("status", "escalated")],
        );
        let e = check_local(
            &d,
            &meta,
            &village,
            rec,
            &set(&[("subject", "Road"), ("status", "OPEN")]),
            None,
        )
        .unwrap_err();
        assert!(e.contains("handled by c01/k01/t01"), "{e}");
        // Handed up, its plain fields (the dates the figures of overdue complaints and
        // response times are read from) are changed from above the handling unit: not by
        // the village, nor by the township that would move its own due date.
        let e = check_local(
            &d,
            &meta,
            &village,
            rec,
            &set(&[("dueOn", "2027-01-01")]),
            None,
        )
        .unwrap_err();
        assert!(e.contains("changed only from above"), "{e}");
        let later = set(&[("dueOn", "2027-01-01")]);
        let e = check_local(&d, &meta, &township, rec, &later, None).unwrap_err();
        assert!(e.contains("changed only from above"), "{e}");
        assert!(check_local(&d, &meta, &u("c01/k01"), rec, &later, None).is_ok());
        assert!(check_local(&d, &meta, &township, rec, &set(&[("status", "OPEN")]), None).is_ok());
        // Handed up and answered in one write, or after a write of the same change handed
        // it up: the answer is the township's.
        let open = RecordId::from_u64(3);
        write(&mut d, DocKind::Complaints, 3, true, &[("subject", "Well")]);
        let answered_up = set(&[
            ("handler", "c01/k01/t01"),
            ("status", "closed"),
            ("response", "Done above"),
        ]);
        let e = check_local(&d, &meta, &village, open, &answered_up, None).unwrap_err();
        assert!(e.contains("handled by c01/k01/t01"), "{e}");
        let up = set(&[("handler", "c01/k01/t01")]);
        let answer = set(&[("status", "closed"), ("response", "Done above")]);
        let e = check_local(&d, &meta, &village, open, &answer, Some(&up)).unwrap_err();
        assert!(e.contains("handled by c01/k01/t01"), "{e}");
        // Answered, then handed up by a later write of the same change: the answer too.
        let up_waiting = set(&[("handler", "c01/k01/t01"), ("status", "escalated")]);
        let e = check_local(&d, &meta, &village, open, &up_waiting, Some(&answer)).unwrap_err();
        assert!(e.contains("handled by c01/k01/t01"), "{e}");
        assert!(check_local(&d, &meta, &village, open, &answer, None).is_ok());
        // A new record (no such id yet) is the owner's to fill, but for what only a unit
        // above that it names as handler says.
        let new = RecordId::from_u64(2);
        assert!(check_local(&d, &meta, &village, new, &set(&[("status", "OPEN")]), None).is_ok());
        let handed = set(&[("handler", "c01/k01/t01"), ("status", "escalated")]);
        assert!(check_local(&d, &meta, &village, new, &handed, None).is_ok());
        let e = check_local(&d, &meta, &village, new, &answered_up, None).unwrap_err();
        assert!(e.contains("handled by c01/k01/t01"), "{e}");

        let reports = DocMeta::new(DocId::new(DocKind::Reports, village.clone()));
        let mut r = doc::empty(&doc::actor_for(&village, [1; 8]));
        write(&mut r, DocKind::Reports, 1, true, &[("body", "Done")]);
        assert!(
            check_local(
                &r,
                &reports,
                &village,
                rec,
                &set(&[("review", "accepted")]),
                None
            )
            .is_err()
        );
        assert!(
            check_local(
                &r,
                &reports,
                &township,
                rec,
                &set(&[("review", "accepted")]),
                None
            )
            .is_ok()
        );
        // Creates are held to it too: a report made with its review, a debriefing made
        // with its result; and an accepted report is changed only from above.
        let new = RecordId::from_u64(2);
        let review = set(&[("body", "Done"), ("review", "accepted")]);
        assert!(check_local(&r, &reports, &village, new, &review, None).is_err());
        write(
            &mut r,
            DocKind::Reports,
            1,
            false,
            &[("review", "accepted")],
        );
        let body = set(&[("body", "Revised")]);
        let e = check_local(&r, &reports, &village, rec, &body, None).unwrap_err();
        assert!(e.contains("accepted above"), "{e}");
        assert!(check_local(&r, &reports, &township, rec, &body, None).is_ok());
        let appraisals = DocMeta::new(DocId::new(DocKind::Appraisals, village.clone()));
        let a = doc::empty(&doc::actor_for(&village, [1; 8]));
        let rated = set(&[("kind", "debriefing"), ("result", "excellent")]);
        assert!(check_local(&a, &appraisals, &village, new, &rated, None).is_err());
        assert!(check_local(&a, &appraisals, &township, new, &rated, None).is_ok());
        // After an earlier write of the same change made it a debriefing, a result is
        // judged as the parent will judge the one change both make.
        let made = set(&[("kind", "debriefing"), ("year", "2026")]);
        let result = set(&[("result", "excellent")]);
        assert!(check_local(&a, &appraisals, &village, new, &result, None).is_ok());
        let e = check_local(&a, &appraisals, &village, new, &result, Some(&made));
        assert!(e.is_err_and(|e| e.contains("rated from above")));
        let democratic = set(&[("kind", "democratic_appraisal"), ("result", "excellent")]);
        assert!(check_local(&a, &appraisals, &village, new, &democratic, None).is_ok());
    }
}
