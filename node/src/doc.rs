//! The content model inside automerge documents: how records map onto automerge maps.
//!
//! Members live at the root of their unit's members document, one map per record keyed by
//! the record id. Each field is its own map entry, so concurrent edits of different fields of
//! the same member (a township correcting a name while the village updates education) merge
//! without loss. A profile holds the unit's name and its registered children (a map used as
//! a set, so additions merge too).

use automerge::transaction::Transactable;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::{
    ActorId, Automerge, AutomergeError, Change, ChangeHash, ObjId, ObjType, PatchAction, Prop,
    ROOT, ReadDoc, ScalarValue, ScalarValueRef, Value, ValueRef, hydrate,
};
use grassroots_schema::entities::{Organisation, ServiceFunction, rated_above};
use grassroots_schema::{
    Access, ActorTag, DocKind, Education, EntitySpec, Fields, Gender, Member, MemberCategory,
    MemberId, MemberPatch, MemberStatus, NewMember, Record, RecordId, RecordRef, Stamp,
    UnitDetails, UnitId, UnitProfile, Value as FieldValue,
};

/// A failure inside automerge while writing a record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    /// automerge refused the operation.
    #[error("automerge: {0}")]
    Automerge(#[from] AutomergeError),
    /// The record to update does not exist in the document.
    #[error("no record {0}")]
    NoSuchRecord(RecordId),
}

/// A fresh actor for `unit`: the unit in the id, a random nonce per process.
pub fn actor_for(unit: &UnitId, nonce: [u8; 8]) -> ActorId {
    ActorId::from(ActorTag::encode(unit, nonce))
}

/// `doc` in automerge's compact form, without the changes it holds waiting for their
/// dependencies (automerge's `save` keeps them): what a peer sent and never completed is
/// not made durable, so a reload starts without it and the peer sends it again when it
/// can.
pub fn save(doc: &Automerge) -> Vec<u8> {
    doc.save_with_options(automerge::SaveOptions {
        deflate: true,
        retain_orphans: false,
    })
}

/// An empty document that will author changes as `actor`.
pub fn empty(actor: &ActorId) -> Automerge {
    Automerge::new().with_actor(actor.clone())
}

/// One write to a members document; several are applied in one transaction by
/// [`apply_member_writes`].
#[derive(Debug, Clone, Copy)]
pub enum MemberWrite<'a> {
    /// Add a record, stamped with its writer when there is one.
    Create(RecordId, &'a NewMember, Option<&'a Stamp>),
    /// Change the fields a patch names, stamped when there is a writer and a field.
    Update(RecordId, &'a MemberPatch, Option<&'a Stamp>),
    /// Remove a record.
    Delete(RecordId),
}

fn put_member(
    tx: &mut impl Transactable,
    record: RecordId,
    m: &NewMember,
    stamp: Option<&Stamp>,
) -> Result<(), AutomergeError> {
    // One batched insertion: automerge splices the new map's ops in two steps instead of one
    // per field, which is most of the cost of a create in a large register.
    let mut fields: HashMap<&str, hydrate::Value> = HashMap::from([
        ("name", hydrate::Value::scalar(m.name.trim())),
        ("birthYear", hydrate::Value::scalar(m.birth_year)),
        ("gender", hydrate::Value::scalar(m.gender.as_str())),
        ("education", hydrate::Value::scalar(m.education.as_str())),
        ("joinedOn", hydrate::Value::scalar(m.joined_on.as_str())),
        ("status", hydrate::Value::scalar(m.status.as_str())),
    ]);
    if let Some(v) = &m.phone {
        fields.insert(PHONE, hydrate::Value::scalar(v.as_str()));
    }
    if let Some(v) = &m.id_number {
        fields.insert(ID_NUMBER, hydrate::Value::scalar(v.as_str()));
    }
    for c in &m.categories {
        fields.insert(c.field(), hydrate::Value::scalar(true));
    }
    stamp_created(&mut fields, stamp);
    tx.batch_create_object(ROOT, record.to_string(), &fields.into(), false)?;
    Ok(())
}

/// Sensitive record fields (the gateway shows them to the owning unit's clerks and above).
const PHONE: &str = "phone";
const ID_NUMBER: &str = "idNumber";

/// Record fields holding who created and who last changed a record (see [`Stamp`]).
const CREATED_AT: &str = "createdAt";
const CREATED_BY: &str = "createdBy";
const CHANGED_AT: &str = "changedAt";
const CHANGED_BY: &str = "changedBy";

/// Add the creation stamp, if any, to a new record's fields.
fn stamp_created(fields: &mut HashMap<&str, hydrate::Value>, stamp: Option<&Stamp>) {
    if let Some(st) = stamp {
        fields.insert(CREATED_AT, hydrate::Value::scalar(st.at_ms));
        fields.insert(CREATED_BY, hydrate::Value::scalar(st.by().as_str()));
    }
}

/// Stamp a record as changed, when there is a writer and the write changes something.
fn stamp_changed(
    tx: &mut impl Transactable,
    obj: &ObjId,
    stamp: Option<&Stamp>,
    changes_something: bool,
) -> Result<(), AutomergeError> {
    if let Some(st) = stamp
        && changes_something
    {
        tx.put(obj, CHANGED_AT, st.at_ms)?;
        tx.put(obj, CHANGED_BY, st.by().as_str())?;
    }
    Ok(())
}

/// Who created and who last changed record `record`, from its map (a stamp that does not
/// parse is left out; the record still counts).
///
/// A stamp is the writing node's claim about its caller, and a node serves only the users of
/// its own subtree, so a stamp naming a unit outside the subtree of the node whose change
/// wrote it (its op's actor) is a claim no honest node makes: it is left out too, and logged.
/// Checked here, where every view and every answer reads records, rather than on each hop,
/// where a register received whole would have to be decoded change by change.
fn stamps(
    unit: &UnitId,
    record: RecordId,
    map: &impl Scalars,
    author_of: impl Fn(&str) -> Option<UnitId>,
) -> (Option<Stamp>, Option<Stamp>) {
    let stamp = |at: &str, by: &str| {
        let stamp = Stamp::parse(map.int(at)?, map.text(by)?)?;
        // Every change to a document is the owner's or from above it (rule 2, checked on
        // every hop and on local writes), so a stamp naming the owner's subtree needs no
        // look-up of its author.
        if stamp.unit.is_in_subtree_of(unit) {
            return Some(stamp);
        }
        let author = author_of(by);
        if author
            .as_ref()
            .is_some_and(|a| stamp.unit.is_in_subtree_of(a))
        {
            Some(stamp)
        } else {
            tracing::warn!(
                %unit, %record, field = by, claimed = %stamp.unit,
                author = ?author.map(|a| a.to_string()),
                "a stamp names a unit its writing node does not serve; left out"
            );
            None
        }
    };
    (stamp(CREATED_AT, CREATED_BY), stamp(CHANGED_AT, CHANGED_BY))
}

/// The scalar fields of one record's map, as its readers take them: an integer (a `Uint`
/// that fits counts) or a text; any other value, an object included, reads as absent.
trait Scalars {
    fn int(&self, key: &str) -> Option<i64>;
    fn text(&self, key: &str) -> Option<&str>;
}

impl Scalars for hydrate::Map {
    fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            hydrate::Value::Scalar(ScalarValue::Int(i)) => Some(*i),
            hydrate::Value::Scalar(ScalarValue::Uint(u)) => i64::try_from(*u).ok(),
            _ => None,
        }
    }
    fn text(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            hydrate::Value::Scalar(ScalarValue::Str(t)) => Some(t),
            _ => None,
        }
    }
}

/// One record's fields as the document holds them now (each key's winning value), read in
/// one pass over the record's map with keys and texts borrowed: the scalars only, since no
/// reader takes a field holding an object.
pub(crate) struct RecordFields<'a>(Vec<(Cow<'a, str>, ScalarValueRef<'a>)>);

impl<'a> RecordFields<'a> {
    /// Fields read elsewhere (each key's winning value, once).
    pub(crate) fn new(fields: Vec<(Cow<'a, str>, ScalarValueRef<'a>)>) -> Self {
        RecordFields(fields)
    }

    fn read(doc: &'a Automerge, obj: &ObjId) -> Self {
        RecordFields(
            doc.map_range(obj, ..)
                .filter_map(|f| match f.value {
                    ValueRef::Scalar(s) => Some((f.key, s)),
                    ValueRef::Object(_) => None,
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&ScalarValueRef<'a>> {
        // A dozen fields or so: a scan beats a map built per record.
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl Scalars for RecordFields<'_> {
    fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            ScalarValueRef::Int(i) => Some(*i),
            ScalarValueRef::Uint(u) => i64::try_from(*u).ok(),
            _ => None,
        }
    }
    fn text(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            ScalarValueRef::Str(t) => Some(t),
            _ => None,
        }
    }
}

/// The map of record `record`, if the document holds one.
pub fn record_obj(doc: &impl ReadDoc, record: RecordId) -> Option<ObjId> {
    match doc.get(ROOT, record.to_string()) {
        Ok(Some((Value::Object(ObjType::Map), obj))) => Some(obj),
        _ => None,
    }
}

/// The unit of the node whose change wrote the value of `key` in record `record`'s map.
fn stamp_author(doc: &Automerge, record: RecordId, key: &str) -> Option<UnitId> {
    let obj = record_obj(doc, record)?;
    match doc.get(&obj, key).ok()?? {
        (_, automerge::ObjId::Id(_, actor, _)) => ActorTag::unit_of(actor.to_bytes()).ok(),
        _ => None,
    }
}

fn patch_member(
    tx: &mut impl Transactable,
    obj: &ObjId,
    p: &MemberPatch,
    stamp: Option<&Stamp>,
) -> Result<(), AutomergeError> {
    stamp_changed(tx, obj, stamp, *p != MemberPatch::default())?;
    if let Some(v) = &p.name {
        tx.put(obj, "name", v.trim())?;
    }
    if let Some(v) = p.birth_year {
        tx.put(obj, "birthYear", v)?;
    }
    if let Some(v) = p.gender {
        tx.put(obj, "gender", v.as_str())?;
    }
    if let Some(v) = p.education {
        tx.put(obj, "education", v.as_str())?;
    }
    if let Some(v) = &p.joined_on {
        tx.put(obj, "joinedOn", v.as_str())?;
    }
    if let Some(v) = p.status {
        tx.put(obj, "status", v.as_str())?;
    }
    for (key, v) in [(PHONE, &p.phone), (ID_NUMBER, &p.id_number)] {
        match v {
            Some(Some(v)) => tx.put(obj, key, v.as_str())?,
            Some(None) => clear(tx, obj, key)?,
            None => {}
        }
    }
    if let Some(cats) = &p.categories {
        for c in MemberCategory::ALL {
            if cats.contains(c) {
                // Only a change is written: a category restated would outvote a concurrent
                // removal made elsewhere for nothing.
                if !matches!(tx.get(obj, c.field())?, Some((automerge::Value::Scalar(v), _)) if v.as_ref() == &ScalarValue::Boolean(true))
                {
                    tx.put(obj, c.field(), true)?;
                }
            } else {
                clear(tx, obj, c.field())?;
            }
        }
    }
    Ok(())
}

/// Remove `key` from a record's map, if it is there (a concurrent set it has not seen
/// survives the merge).
fn clear(tx: &mut impl Transactable, obj: &ObjId, key: &str) -> Result<(), AutomergeError> {
    if tx.get(obj, key)?.is_some() {
        tx.delete(obj, key)?;
    }
    Ok(())
}

/// Apply writes in order in one automerge transaction, so a batch of writers shares one
/// change (as they share one fsync). Each write has its own result: an update of a missing
/// record is `NoSuchRecord` and does not stop the others. An automerge failure rolls all of
/// them back.
pub fn apply_member_writes(
    doc: &mut Automerge,
    writes: &[MemberWrite<'_>],
) -> Result<Vec<Result<(), DocError>>, DocError> {
    in_one_change(doc, writes, |tx, w| match *w {
        MemberWrite::Create(record, m, stamp) => {
            put_member(tx, record, m, stamp)?;
            Ok(Ok(()))
        }
        MemberWrite::Update(record, p, stamp) => {
            with_record(tx, record, |tx, obj| patch_member(tx, obj, p, stamp))
        }
        MemberWrite::Delete(record) => delete_record(tx, record),
    })
}

/// Remove a record's map from the document, or answer `NoSuchRecord`. Every value under
/// that id goes (a concurrent edit inside it is lost with it; a concurrent second record
/// under the id, which no honest node makes, would stay).
fn delete_record(
    tx: &mut automerge::transaction::Transaction<'_>,
    record: RecordId,
) -> Result<Result<(), DocError>, AutomergeError> {
    let key = record.to_string();
    if tx.get(ROOT, key.as_str())?.is_none() {
        return Ok(Err(DocError::NoSuchRecord(record)));
    }
    tx.delete(ROOT, key.as_str())?;
    Ok(Ok(()))
}

/// Run `one` for each write inside one automerge transaction.
fn in_one_change<W>(
    doc: &mut Automerge,
    writes: &[W],
    one: impl Fn(
        &mut automerge::transaction::Transaction<'_>,
        &W,
    ) -> Result<Result<(), DocError>, AutomergeError>,
) -> Result<Vec<Result<(), DocError>>, DocError> {
    let results = doc
        .transact::<_, _, AutomergeError>(|tx| {
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                out.push(one(tx, w)?);
            }
            Ok(out)
        })
        .map_err(|f| DocError::Automerge(f.error))?;
    Ok(results.result)
}

/// Run `edit` on an existing record's map, or answer `NoSuchRecord`.
fn with_record(
    tx: &mut automerge::transaction::Transaction<'_>,
    record: RecordId,
    edit: impl FnOnce(
        &mut automerge::transaction::Transaction<'_>,
        &ObjId,
    ) -> Result<(), AutomergeError>,
) -> Result<Result<(), DocError>, AutomergeError> {
    match tx.get(ROOT, record.to_string())? {
        Some((Value::Object(ObjType::Map), obj)) => {
            edit(tx, &obj)?;
            Ok(Ok(()))
        }
        _ => Ok(Err(DocError::NoSuchRecord(record))),
    }
}

/// One write to a document of one of the [`grassroots_schema::ENTITIES`]; several are
/// applied in one transaction by [`apply_record_writes`].
#[derive(Debug, Clone, Copy)]
pub enum RecordWrite<'a> {
    /// Add a record with these (validated) fields.
    Create(RecordId, &'a Fields, Option<&'a Stamp>),
    /// Set the fields named, leaving the others to merge.
    Update(RecordId, &'a Fields, Option<&'a Stamp>),
    /// Remove a record.
    Delete(RecordId),
}

/// The automerge scalar of a field value (`None` for [`FieldValue::Null`], which clears).
fn scalar(v: &FieldValue) -> Option<ScalarValue> {
    match v {
        FieldValue::Bool(b) => Some(ScalarValue::Boolean(*b)),
        FieldValue::Int(i) => Some(ScalarValue::Int(*i)),
        FieldValue::Text(t) => Some(ScalarValue::Str(t.as_str().into())),
        FieldValue::Null => None,
    }
}

/// Apply record writes of `spec`'s kind in order in one automerge transaction (see
/// [`apply_member_writes`]). A `null` clears a field by deleting its key, so a value set
/// concurrently survives, except in a field that resolves by authority
/// ([`EntitySpec::by_authority`]): there it writes an explicit null, which takes part in
/// the resolution by authority ([`by_authority`]) like any value, so a clearing from above
/// wins over a value set concurrently below; and in any field of a report, whose acceptance
/// holds only while nothing below changed it ([`changed_below_since`]): a deleted key has
/// no op to tell who cleared it, an explicit null does.
pub fn apply_record_writes(
    doc: &mut Automerge,
    spec: &EntitySpec,
    writes: &[RecordWrite<'_>],
) -> Result<Vec<Result<(), DocError>>, DocError> {
    in_one_change(doc, writes, |tx, w| match *w {
        RecordWrite::Create(record, fields, stamp) => {
            let mut map: HashMap<&str, hydrate::Value> = fields
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), hydrate::Value::Scalar(scalar(v)?))))
                .collect();
            stamp_created(&mut map, stamp);
            tx.batch_create_object(ROOT, record.to_string(), &map.into(), false)?;
            Ok(Ok(()))
        }
        RecordWrite::Update(record, fields, stamp) => with_record(tx, record, |tx, obj| {
            stamp_changed(tx, obj, stamp, !fields.is_empty())?;
            for (k, v) in fields {
                match scalar(v) {
                    // A review written again must be an op of its own: automerge skips a
                    // put of the value already there, and an acceptance holds only for
                    // what its op had seen (`changed_below_since`).
                    Some(s) if spec.field(k).is_some_and(|f| f.access == Access::Review) => {
                        tx.put(obj, k.as_str(), ScalarValue::Null)?;
                        tx.put(obj, k.as_str(), s)?
                    }
                    Some(s) => tx.put(obj, k.as_str(), s)?,
                    None if spec.kind == DocKind::Reports
                        || spec.by_authority().any(|f| f.name == k) =>
                    {
                        tx.put(obj, k.as_str(), ScalarValue::Null)?
                    }
                    None => clear(tx, obj, k)?,
                }
            }
            Ok(())
        }),
        RecordWrite::Delete(record) => delete_record(tx, record),
    })
}

/// The value of a field that resolves by authority (`EntitySpec::by_authority`: a review, a
/// complaint's handling, an appraisal's kind and rating) of the record map `obj`, as of
/// `heads` (`None`: now), with concurrent values resolved by authority, not by automerge's
/// op order: the value written by the unit highest on the line wins, and among one unit's
/// values automerge's usual winner (highest counter, then actor). Otherwise a unit below
/// could win a conflict it started from old heads just by writing more ops. `None` when
/// there is no scalar value.
pub fn by_authority(
    doc: &Automerge,
    obj: &ObjId,
    key: &str,
    heads: Option<&[ChangeHash]>,
) -> Option<ScalarValue> {
    authority_winner(doc, obj, key, heads).map(|(s, _)| s)
}

/// [`by_authority`]'s value with the id of the op that wrote it.
fn authority_winner(
    doc: &Automerge,
    obj: &ObjId,
    key: &str,
    heads: Option<&[ChangeHash]>,
) -> Option<(ScalarValue, ObjId)> {
    let all = match heads {
        Some(h) => doc.get_all_at(obj, key, h),
        None => doc.get_all(obj, key),
    }
    .ok()?;
    // The writing unit's rank: higher on the line ranks higher; an actor naming no unit
    // ranks lowest.
    let rank = |actor: &ActorId| {
        ActorTag::unit_of(actor.to_bytes())
            .ok()
            .map(|u| std::cmp::Reverse(u.level()))
    };
    all.into_iter()
        .filter_map(|(v, id)| match (v, &id) {
            (Value::Scalar(s), automerge::ObjId::Id(counter, actor, _)) => Some((
                (rank(actor), *counter, actor.clone()),
                (s.into_owned(), id.clone()),
            )),
            _ => None,
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, w)| w)
}

/// Whether a described field of the report map `obj` (owned by `owner`) other than its
/// review changed after, or concurrently with, the change that wrote the review value
/// `review` (an op id), other than by a unit above the owner: what was accepted is no longer
/// what the report says. A field removed since counts as changed.
fn changed_below_since(
    doc: &Automerge,
    spec: &EntitySpec,
    obj: &ObjId,
    owner: &UnitId,
    review: &ObjId,
) -> bool {
    let Some(accepted) = doc.hash_for_opid(review) else {
        return false;
    };
    let above = |id: &ObjId| written_above(id, owner);
    // The record as the acceptance saw it, read once (one clock); a field then in conflict
    // has its other values read apart.
    let heads = [accepted];
    let then: HashMap<String, (ObjId, bool)> = doc
        .map_range_at(obj, .., &heads)
        .map(|item| {
            let id = item.id();
            (item.key.into_owned(), (id, item.conflict))
        })
        .collect();
    spec.fields
        .iter()
        .filter(|f| f.access != Access::Review)
        .any(|f| {
            let now: Vec<ObjId> = doc
                .get_all(obj, f.name)
                .unwrap_or_default()
                .into_iter()
                .map(|(_, id)| id)
                .collect();
            let then: Vec<ObjId> = match then.get(f.name) {
                None => Vec::new(),
                Some((id, false)) => vec![id.clone()],
                Some((_, true)) => doc
                    .get_all_at(obj, f.name, &heads)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(_, id)| id)
                    .collect(),
            };
            // A key gone is a raw delete: this build clears a report's fields with an
            // explicit null, which names its writer.
            now.iter().any(|id| !then.contains(id) && !above(id))
                || (now.is_empty() && !then.is_empty())
        })
}

/// A report review's value for an acceptance.
const ACCEPTED: &str = grassroots_schema::entities::ReportReview::Accepted.as_str();

/// Whether the op `id` was written by a unit strictly above `owner`.
fn written_above(id: &ObjId, owner: &UnitId) -> bool {
    match id {
        automerge::ObjId::Id(_, actor, _) => {
            ActorTag::unit_of(actor.to_bytes()).is_ok_and(|u| u.is_ancestor_of(owner))
        }
        automerge::ObjId::Root => false,
    }
}

/// A record's hydrated map with the fields that resolve by authority
/// ([`EntitySpec::by_authority`]) so resolved ([`by_authority`]) where concurrent values
/// exist; and a report's acceptance left out (the review read as null, waiting for review
/// again) when the report changed below after, or concurrently with, it
/// ([`changed_below_since`]): a unit cannot keep an acceptance for content it changed,
/// whatever heads it wrote from; and an appraisal rated from above (its kind, as resolved,
/// a cadre's performance appraisal or a debriefing) shows only the rating written from
/// above: one its unit wrote while it was of another kind, or from heads before it was made
/// one, is not the level above's.
fn resolved<'a>(
    doc: &Automerge,
    spec: &EntitySpec,
    owner: &UnitId,
    record: RecordId,
    value: &'a hydrate::Value,
) -> std::borrow::Cow<'a, hydrate::Value> {
    use std::borrow::Cow;
    let hydrate::Value::Map(map) = value else {
        return Cow::Borrowed(value);
    };
    // Only a field with concurrent values can resolve differently.
    let mut conflicted = spec
        .by_authority()
        .filter(|f| map.iter().any(|(k, v)| k == f.name && v.conflict))
        .peekable();
    // Text `key` holds (by op order; a conflict in it is resolved below anyway).
    let text = |key: &str| match map.get(key) {
        Some(hydrate::Value::Scalar(s)) => s.as_str(),
        _ => None,
    };
    let accepted = spec.kind == DocKind::Reports && text("review") == Some(ACCEPTED);
    let rated = spec.kind == DocKind::Appraisals && text("kind").is_some_and(rated_above);
    if conflicted.peek().is_none() && !accepted && !rated {
        return Cow::Borrowed(value);
    }
    let Some(obj) = record_obj(doc, record) else {
        return Cow::Borrowed(value);
    };
    let mut out = Cow::Borrowed(value);
    for f in conflicted {
        if let (Some(s), hydrate::Value::Map(map)) =
            (by_authority(doc, &obj, f.name, None), out.to_mut())
        {
            map.insert(
                f.name.to_owned(),
                hydrate::MapValue {
                    value: hydrate::Value::Scalar(s),
                    conflict: true,
                },
            );
        }
    }
    if spec.kind == DocKind::Reports
        && let Some((s, id)) = authority_winner(doc, &obj, "review", None)
        && s.as_str() == Some(ACCEPTED)
        && changed_below_since(doc, spec, &obj, owner, &id)
        && let hydrate::Value::Map(map) = out.to_mut()
    {
        map.insert(
            "review".to_owned(),
            hydrate::MapValue {
                value: hydrate::Value::Scalar(ScalarValue::Null),
                conflict: false,
            },
        );
    }
    if spec.kind == DocKind::Appraisals
        && by_authority(doc, &obj, "kind", None)
            .is_some_and(|k| k.as_str().is_some_and(rated_above))
    {
        for f in spec
            .fields
            .iter()
            .filter(|f| f.access == Access::Supervisory)
        {
            if let Some((_, id)) = authority_winner(doc, &obj, f.name, None)
                && !written_above(&id, owner)
                && let hydrate::Value::Map(map) = out.to_mut()
            {
                map.remove(f.name);
            }
        }
    }
    out
}

/// Every well-formed record of a document of `spec`'s kind owned by `unit`, in record order.
/// A record that does not fit the description is skipped and logged, never fatal.
pub fn read_records(doc: &Automerge, spec: &EntitySpec, unit: &UnitId) -> Vec<Record> {
    let mut out = Vec::new();
    for item in doc.map_range(ROOT, ..) {
        let Ok(record) = item.key.parse::<RecordId>() else {
            tracing::warn!(%unit, key = %item.key, kind = spec.kind.as_str(), "a non-record key; skipped");
            continue;
        };
        // Only a map is a record, as for a record read alone ([`record_obj`]): one read
        // whole but not alone would leave the views unlike a rebuild of them.
        let ValueRef::Object(ObjType::Map) = item.value else {
            tracing::warn!(%unit, %record, kind = spec.kind.as_str(), "a record that is no map; skipped");
            continue;
        };
        let Ok(value) = ReadDoc::hydrate(doc, item.id(), None) else {
            continue;
        };
        let value = resolved(doc, spec, unit, record, &value);
        if let Some(r) = record_from(doc, spec, unit, record, &value) {
            out.push(r);
        }
    }
    out.sort_by_key(|r| r.id.record);
    out
}

/// One record of a document of `spec`'s kind, if present and well-formed.
pub fn read_record(
    doc: &Automerge,
    spec: &EntitySpec,
    unit: &UnitId,
    record: RecordId,
) -> Option<Record> {
    let obj = record_obj(doc, record)?;
    let value = ReadDoc::hydrate(doc, &obj, None).ok()?;
    record_from(
        doc,
        spec,
        unit,
        record,
        &resolved(doc, spec, unit, record, &value),
    )
}

/// Whether record `record` of a document of `spec`'s kind owned by `unit` was present and
/// well-formed as of `heads`.
pub fn record_reads_at(
    doc: &Automerge,
    spec: &EntitySpec,
    unit: &UnitId,
    record: RecordId,
    heads: &[ChangeHash],
) -> bool {
    let Ok(Some((Value::Object(ObjType::Map), obj))) = doc.get_at(ROOT, record.to_string(), heads)
    else {
        return false;
    };
    ReadDoc::hydrate(doc, &obj, Some(heads))
        .ok()
        .is_some_and(|v| record_from(doc, spec, unit, record, &v).is_some())
}

/// A record from its map: every described field of the right type (required ones present);
/// keys it does not describe (a newer version's fields) are left out.
fn record_from(
    doc: &Automerge,
    spec: &EntitySpec,
    unit: &UnitId,
    record: RecordId,
    value: &hydrate::Value,
) -> Option<Record> {
    let parsed = (|| {
        let hydrate::Value::Map(map) = value else {
            return None;
        };
        let scalar = |key: &str| match map.get(key)? {
            hydrate::Value::Scalar(s) => Some(s),
            _ => None,
        };
        let mut fields = Fields::new();
        for f in spec.fields {
            let v = match scalar(f.name) {
                // An explicit null is how a field decided from above is cleared.
                None | Some(ScalarValue::Null) if f.required => return None,
                None | Some(ScalarValue::Null) => continue,
                Some(ScalarValue::Str(t)) => FieldValue::Text(t.to_string()),
                Some(ScalarValue::Int(i)) => FieldValue::Int(*i),
                Some(ScalarValue::Uint(u)) => FieldValue::Int(i64::try_from(*u).ok()?),
                Some(ScalarValue::Boolean(b)) => FieldValue::Bool(*b),
                Some(_) => return None,
            };
            fields.insert(f.name.to_owned(), v);
        }
        // What a peer wrote is held to the same description as a local write: a record that
        // does not validate stays in the document but out of the views.
        spec.validate(unit, &fields, true).ok()?;
        let (created, changed) = stamps(unit, record, map, |by| stamp_author(doc, record, by));
        Some(Record {
            id: RecordRef {
                kind: spec.kind,
                unit: unit.clone(),
                record,
            },
            fields,
            created,
            changed,
        })
    })();
    if parsed.is_none() {
        tracing::warn!(%unit, %record, kind = spec.kind.as_str(), "record does not fit its kind; skipped");
    }
    parsed
}

/// Add a member record.
pub fn create_member(doc: &mut Automerge, record: RecordId, m: &NewMember) -> Result<(), DocError> {
    first(apply_member_writes(
        doc,
        &[MemberWrite::Create(record, m, None)],
    )?)
}

/// Change the fields a patch names, leaving the others to merge with concurrent edits.
pub fn update_member(
    doc: &mut Automerge,
    record: RecordId,
    p: &MemberPatch,
) -> Result<(), DocError> {
    first(apply_member_writes(
        doc,
        &[MemberWrite::Update(record, p, None)],
    )?)
}

fn first(results: Vec<Result<(), DocError>>) -> Result<(), DocError> {
    results.into_iter().next().unwrap_or(Ok(()))
}

fn get_str(doc: &Automerge, obj: &ObjId, key: &str) -> Option<String> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(s), _) => match s.as_ref() {
            ScalarValue::Str(t) => Some(t.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Every well-formed member record of `unit`'s members document. A record that does not
/// parse (an authorised but buggy writer) is skipped and logged, never fatal.
pub fn read_members(doc: &Automerge, unit: &UnitId) -> Vec<Member> {
    // One pass over each record's map, not a lookup per field (25 ms for 1,000 records) nor
    // `hydrate` (7 ms: a map of owned strings built per record).
    let mut out = Vec::new();
    for item in doc.map_range(ROOT, ..) {
        let Ok(record) = item.key.parse::<RecordId>() else {
            tracing::warn!(%unit, key = %item.key, "members document has a non-record key");
            continue;
        };
        // Only a map is a record, as for a record read alone ([`record_obj`]).
        let fields = match item.value {
            ValueRef::Object(ObjType::Map) => Some(RecordFields::read(doc, &item.id())),
            _ => None,
        };
        let author_of = |by: &str| stamp_author(doc, record, by);
        if let Some(m) = member_from(unit, record, fields.as_ref(), author_of) {
            out.push(m);
        }
    }
    out.sort_by_key(|m| m.id.record);
    out
}

/// A member from its record's fields (`None`: the record is not a map), or `None` (logged)
/// if a field is missing or malformed.
pub(crate) fn member_from(
    unit: &UnitId,
    record: RecordId,
    fields: Option<&RecordFields<'_>>,
    author_of: impl Fn(&str) -> Option<UnitId>,
) -> Option<Member> {
    let member = (|| {
        let fields = fields?;
        let text = |key: &str| fields.text(key).map(str::to_owned);
        let (created, changed) = stamps(unit, record, fields, author_of);
        Some(Member {
            id: MemberId {
                unit: unit.clone(),
                record,
            },
            name: text("name")?,
            birth_year: fields.int("birthYear")?,
            gender: Gender::parse(fields.text("gender")?)?,
            education: Education::parse(fields.text("education")?)?,
            joined_on: text("joinedOn")?,
            status: MemberStatus::parse(fields.text("status")?)?,
            phone: text(PHONE),
            id_number: text(ID_NUMBER),
            // A category is in when its field is `true`; anything else a peer wrote there
            // counts as not in it.
            categories: MemberCategory::ALL
                .iter()
                .copied()
                .filter(|c| matches!(fields.get(c.field()), Some(ScalarValueRef::Boolean(true))))
                .collect(),
            created,
            changed,
        })
    })();
    if member.is_none() {
        tracing::warn!(%unit, %record, "member record is incomplete; skipped");
    }
    member
}

/// The records that changed between two sets of heads of a members document (created,
/// edited or removed), from automerge's diff rather than by reading every record.
pub fn touched_records(
    doc: &Automerge,
    before: &[ChangeHash],
    after: &[ChangeHash],
) -> BTreeSet<RecordId> {
    let mut out = BTreeSet::new();
    for patch in doc.diff(before, after) {
        // A record's own map is the first step of the path; a patch on the root itself
        // names the record in its action.
        let key = match (patch.path.first(), &patch.action) {
            (Some((_, Prop::Map(k))), _) => k.clone(),
            (None, PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key }) => key.clone(),
            _ => continue,
        };
        if let Ok(r) = key.parse() {
            out.insert(r);
        }
    }
    out
}

/// The records `changes` (new to `doc`, and in it) touched: the top-level key above every
/// object their ops name. A superset of what automerge's diff names (an op that loses a
/// conflict, or a record made and removed among them, counts too), found without walking
/// the document: the diff of a 2,000-record register between two heads walks every record,
/// and took two fifths of a busy township's store thread in a soak. `None` when an object
/// cannot be placed, or when the changes name more than [`MAX_PLACED`] objects (automerge
/// finds an op by its id by scanning its counter column, so a large catch-up is cheaper
/// as one diff); the caller then uses [`touched_records`].
pub fn records_touched_by(doc: &Automerge, changes: &[Change]) -> Option<BTreeSet<RecordId>> {
    // automerge panics on some object shapes it does not expect (a peer's bytes).
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        placed_records(doc, changes)
    }))
    .ok()
    .flatten()
}

/// Objects [`records_touched_by`] places at most before leaving it to the diff.
pub const MAX_PLACED: usize = 256;

fn placed_records(doc: &Automerge, changes: &[Change]) -> Option<BTreeSet<RecordId>> {
    use automerge::legacy::{Key, ObjectId, OpId};
    let mut out = BTreeSet::new();
    // The record each object is under, once per object.
    let mut placed: HashMap<OpId, Option<RecordId>> = HashMap::new();
    for change in changes {
        for op in change.decode().operations {
            let record = match (&op.obj, &op.key) {
                (ObjectId::Root, Key::Map(k)) => k.parse().ok(),
                (ObjectId::Root, Key::Seq(_)) => None,
                (ObjectId::Id(id), _) => match placed.get(id) {
                    Some(r) => *r,
                    None if placed.len() >= MAX_PLACED => return None,
                    None => {
                        let obj = ObjId::Id(id.0, id.1.clone(), usize::MAX);
                        // The last step up is the one from the root.
                        let top = doc.parents(&obj).ok()?.last()?;
                        let r = match (top.obj == ROOT, top.prop) {
                            (true, Prop::Map(k)) => k.parse().ok(),
                            _ => None,
                        };
                        placed.insert(id.clone(), r);
                        r
                    }
                },
            };
            if let Some(r) = record {
                out.insert(r);
            }
        }
    }
    Some(out)
}

/// One member record, if present and well-formed (an incomplete one is logged and skipped).
pub fn read_member(doc: &Automerge, unit: &UnitId, record: RecordId) -> Option<Member> {
    let obj = record_obj(doc, record)?;
    let author_of = |by: &str| stamp_author(doc, record, by);
    member_from(
        unit,
        record,
        Some(&RecordFields::read(doc, &obj)),
        author_of,
    )
}

/// Write the profile fields that differ from what the document holds; no change when equal,
/// so a restart does not grow the history.
pub fn set_profile(doc: &mut Automerge, name: &str, children: &[UnitId]) -> Result<bool, DocError> {
    let named = get_str(doc, &ROOT, "name").as_deref() == Some(name);
    let have = union_keys(doc, CHILDREN);
    let missing: Vec<&UnitId> = children
        .iter()
        .filter(|c| !have.contains(c.as_str()))
        .collect();
    if named && missing.is_empty() {
        return Ok(false);
    }
    doc.transact::<_, _, AutomergeError>(|tx| {
        if !named {
            tx.put(ROOT, "name", name)?;
        }
        let kids = set_map(tx, CHILDREN)?;
        for c in &missing {
            tx.put(&kids, c.as_str(), true)?;
        }
        Ok(())
    })
    .map_err(|f| DocError::Automerge(f.error))?;
    Ok(true)
}

/// Add `child` to the children a profile registers; no change when it is there.
pub fn register_child(doc: &mut Automerge, child: &UnitId) -> Result<bool, DocError> {
    if is_registered(doc, child) {
        return Ok(false);
    }
    doc.transact::<_, _, AutomergeError>(|tx| {
        let kids = set_map(tx, CHILDREN)?;
        tx.put(&kids, child.as_str(), true)
    })
    .map_err(|f| DocError::Automerge(f.error))?;
    Ok(true)
}

/// Whether `child` is registered in the profile `doc`.
pub fn is_registered(doc: &Automerge, child: &UnitId) -> bool {
    union_keys(doc, CHILDREN).contains(child.as_str())
}

/// Profile key of the registered children (a map used as a set).
const CHILDREN: &str = "children";

/// The visible map at `key` of the root, made when there is none. Readers of these sets
/// take every map made there concurrently ([`union_keys`]), so adding to the visible one is
/// enough.
fn set_map(tx: &mut impl Transactable, key: &str) -> Result<ObjId, AutomergeError> {
    match tx.get(ROOT, key)? {
        Some((Value::Object(ObjType::Map), m)) => Ok(m),
        _ => tx.put_object(ROOT, key, ObjType::Map),
    }
}

/// The children a profile registers, named or not yet (a level above may register a unit
/// before anything else of its profile is written).
pub fn profile_children(doc: &Automerge, unit: &UnitId) -> Vec<UnitId> {
    let mut children = Vec::new();
    let mut strays = 0usize;
    for k in union_keys(doc, CHILDREN) {
        match k.parse::<UnitId>() {
            Ok(c) if c.parent().as_ref() == Some(unit) => children.push(c),
            _ => strays += 1,
        }
    }
    // Once per read, not per entry: a profile is read again at every change of it.
    if strays > 0 {
        tracing::warn!(%unit, strays, "profile lists units that are not its children");
    }
    children
}

/// How many entries a profile's add-only sets hold: registered children and revoked
/// certificates, and the concurrent maps they are read over (what a peer's change to a
/// profile may not grow without bound).
pub fn profile_entries(doc: &Automerge) -> usize {
    [CHILDREN, "revoked"]
        .into_iter()
        .map(|k| union_keys(doc, k).len() + doc.get_all(ROOT, k).map_or(0, |v| v.len()))
        .sum()
}

/// The keys of the map at `key` of the root, over every map put there concurrently: two
/// writers that each found no map (a unit and a level above registering children, say)
/// each made one, and automerge shows only one of them. Used for the add-only sets
/// (registered children, revocations), where losing the other map would lose entries.
fn union_keys(doc: &Automerge, key: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for (v, map) in doc.get_all(ROOT, key).unwrap_or_default() {
        if matches!(v, Value::Object(ObjType::Map)) {
            keys.extend(doc.keys(&map));
        }
    }
    keys
}

/// The profile a document describes, if it has a name yet.
pub fn read_profile(doc: &Automerge, unit: &UnitId) -> Option<UnitProfile> {
    let name = get_str(doc, &ROOT, "name")?;
    let children = profile_children(doc, unit);
    let revoked = union_keys(doc, "revoked").into_iter().collect();
    let activity_place = matches!(
        doc.get(ROOT, ACTIVITY_PLACE),
        Ok(Some((Value::Scalar(s), _))) if matches!(s.as_ref(), ScalarValue::Boolean(true))
    );
    Some(UnitProfile {
        id: unit.clone(),
        name,
        children,
        revoked,
        organisations: read_set(doc, ORGANISATIONS, Organisation::parse),
        activity_place,
        functions: read_set(doc, FUNCTIONS, ServiceFunction::parse),
    })
}

/// Profile keys of the unit's organisations and activity place (maps used as sets, so
/// additions from two levels merge).
const ORGANISATIONS: &str = "organisations";
const ACTIVITY_PLACE: &str = "activityPlace";
const FUNCTIONS: &str = "functions";

/// The known values of a map-as-set, in storage-name order (unknown names are skipped).
fn read_set<T: Copy>(doc: &Automerge, key: &str, parse: impl Fn(&str) -> Option<T>) -> Vec<T> {
    union_keys(doc, key)
        .iter()
        .filter_map(|n| parse(n))
        .collect()
}

/// Change a unit's organisations and activity place: each set given is replaced (names
/// added and removed one by one, so a concurrent addition elsewhere survives). Whether
/// anything changed.
pub fn set_unit_details(doc: &mut Automerge, details: &UnitDetails) -> Result<bool, DocError> {
    let before = doc.get_heads();
    doc.transact::<_, _, AutomergeError>(|tx| {
        // Every map put at the key concurrently is read (`read_set`), so a name is removed
        // from each of them and added to the visible one.
        let mut replace = |key: &str, want: Vec<&str>| -> Result<(), AutomergeError> {
            let maps: Vec<ObjId> = tx
                .get_all(ROOT, key)?
                .into_iter()
                .filter(|(v, _)| matches!(v, Value::Object(ObjType::Map)))
                .map(|(_, m)| m)
                .collect();
            let mut have = BTreeSet::new();
            for m in &maps {
                let keys: Vec<String> = tx.keys(m).collect();
                for k in keys {
                    if want.contains(&k.as_str()) {
                        have.insert(k);
                    } else {
                        tx.delete(m, k.as_str())?;
                    }
                }
            }
            let (map, fresh) = match tx.get(ROOT, key)? {
                Some((Value::Object(ObjType::Map), m)) => (m, false),
                // A new map replaces whatever was there: every wanted name goes into it.
                _ => (tx.put_object(ROOT, key, ObjType::Map)?, true),
            };
            for w in want.iter().filter(|w| fresh || !have.contains(**w)) {
                tx.put(&map, *w, true)?;
            }
            Ok(())
        };
        if let Some(o) = &details.organisations {
            replace(ORGANISATIONS, o.iter().map(|o| o.as_str()).collect())?;
        }
        if let Some(f) = &details.functions {
            replace(FUNCTIONS, f.iter().map(|f| f.as_str()).collect())?;
        }
        if let Some(p) = details.activity_place {
            tx.put(ROOT, ACTIVITY_PLACE, p)?;
        }
        if let Some(n) = &details.name {
            tx.put(ROOT, "name", n.trim())?;
        }
        Ok(())
    })
    .map_err(|f| DocError::Automerge(f.error))?;
    Ok(doc.get_heads() != before)
}

/// Whether a profile lists any of `fingerprints` as revoked (whatever else it holds).
pub fn is_revoked(doc: &Automerge, fingerprints: &[&str]) -> bool {
    let listed = union_keys(doc, "revoked");
    fingerprints.iter().any(|f| listed.contains(*f))
}

/// The certificates a profile lists as revoked, each with the unit it names (as written:
/// the text, if any).
pub fn revocations(doc: &Automerge) -> Vec<(String, String)> {
    let mut found = BTreeMap::new();
    for (v, map) in doc.get_all(ROOT, "revoked").unwrap_or_default() {
        if !matches!(v, Value::Object(ObjType::Map)) {
            continue;
        }
        for fingerprint in doc.keys(&map) {
            let child = get_str(doc, &map, &fingerprint).unwrap_or_default();
            found.entry(fingerprint).or_insert(child);
        }
    }
    found.into_iter().collect()
}

/// Record in a profile that the certificate with `fingerprint` (issued to `child`) is
/// revoked. Revocations are never removed; re-enrolment issues a new certificate.
pub fn revoke(doc: &mut Automerge, fingerprint: &str, child: &UnitId) -> Result<(), DocError> {
    doc.transact::<_, _, AutomergeError>(|tx| {
        let map = set_map(tx, "revoked")?;
        tx.put(&map, fingerprint, child.as_str())?;
        Ok(())
    })
    .map_err(|f| DocError::Automerge(f.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync::{self, SyncDoc};

    fn unit(s: &str) -> UnitId {
        s.parse().unwrap()
    }

    fn sample() -> NewMember {
        NewMember {
            name: "Wang Fang".into(),
            birth_year: 1988,
            gender: Gender::Female,
            education: Education::SeniorSecondary,
            joined_on: "2012-07-01".into(),
            status: MemberStatus::Full,
            phone: None,
            id_number: None,
            categories: Vec::new(),
        }
    }

    fn sync_pair(a: &mut Automerge, b: &mut Automerge) {
        let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
        for _ in 0..20 {
            let m1 = a.generate_sync_message(&mut sa);
            if let Some(m) = m1.clone() {
                b.receive_sync_message(&mut sb, m).unwrap();
            }
            let m2 = b.generate_sync_message(&mut sb);
            if let Some(m) = m2.clone() {
                a.receive_sync_message(&mut sa, m).unwrap();
            }
            if m1.is_none() && m2.is_none() {
                return;
            }
        }
        panic!("sync did not settle");
    }

    #[test]
    fn a_stamp_naming_a_unit_its_writing_node_does_not_serve_is_left_out() {
        let (village, township) = (unit("c01/k01/t01/v01"), unit("c01/k01/t01"));
        let stamp = |u: &UnitId| Stamp {
            at_ms: 1_700_000_000_000,
            unit: u.clone(),
            role: grassroots_schema::Role::Supervisor,
            user: Some("Li".into()),
        };
        let rec = RecordId::from_u64(7);
        // The township's node serves the village (a village without a node of its own): a
        // stamp naming a village user, written by the township's node, stands.
        let mut d = empty(&actor_for(&township, [2; 8]));
        let honest = stamp(&village);
        apply_member_writes(
            &mut d,
            &[MemberWrite::Create(rec, &sample(), Some(&honest))],
        )
        .unwrap();
        let m = read_member(&d, &village, rec).unwrap();
        assert_eq!(m.created.as_ref(), Some(&honest));
        // The village's node claims a township supervisor changed the record: left out, in
        // every reader, while the rest of the change stands.
        let mut v = d.fork().with_actor(actor_for(&village, [1; 8]));
        let patch = MemberPatch {
            name: Some("Wang Fang (moved)".into()),
            ..Default::default()
        };
        let forged = stamp(&township);
        apply_member_writes(&mut v, &[MemberWrite::Update(rec, &patch, Some(&forged))]).unwrap();
        let m = read_member(&v, &village, rec).unwrap();
        assert_eq!(m.name, "Wang Fang (moved)");
        assert_eq!(m.changed, None);
        assert_eq!(m.created.as_ref(), Some(&honest));
        assert_eq!(read_members(&v, &village)[0].changed, None);
        // The township's node naming a township supervisor (a correction from above) stands.
        let mut t = v.fork().with_actor(actor_for(&township, [3; 8]));
        let above = Stamp {
            user: Some("Zhao".into()),
            ..stamp(&township)
        };
        let fix = MemberPatch {
            name: Some("Wang Fang".into()),
            ..Default::default()
        };
        apply_member_writes(&mut t, &[MemberWrite::Update(rec, &fix, Some(&above))]).unwrap();
        assert_eq!(read_member(&t, &village, rec).unwrap().changed, Some(above));
        // Its own unit it may name.
        let own = stamp(&village);
        apply_member_writes(&mut v, &[MemberWrite::Update(rec, &patch, Some(&own))]).unwrap();
        assert_eq!(read_member(&v, &village, rec).unwrap().changed, Some(own));
    }

    #[test]
    fn sets_made_at_once_by_two_levels_merge_and_replace_across_both() {
        use grassroots_schema::entities::Organisation as O;
        let unit: UnitId = "c01/k01/t01/v01".parse().unwrap();
        let orgs = |list: &[O]| UnitDetails {
            name: Some("Village".into()),
            organisations: Some(list.to_vec()),
            ..UnitDetails::default()
        };
        let mut a = empty(&actor_for(&unit, [1; 8]));
        let mut b = empty(&actor_for(&"c01/k01/t01".parse().unwrap(), [2; 8]));
        set_unit_details(&mut a, &orgs(&[O::PartyBranch])).unwrap();
        set_unit_details(&mut b, &orgs(&[O::VillagersCommittee])).unwrap();
        a.merge(&mut b).unwrap();
        let got = read_profile(&a, &unit).unwrap().organisations;
        assert_eq!(got.len(), 2, "{got:?}");
        // Replacing the set removes a name from whichever map holds it.
        set_unit_details(&mut a, &orgs(&[O::PartyBranch])).unwrap();
        assert_eq!(
            read_profile(&a, &unit).unwrap().organisations,
            vec![O::PartyBranch]
        );
    }

    #[test]
    fn registrations_in_maps_made_at_once_are_all_kept() {
        let unit: UnitId = "c01/k01/t01".parse().unwrap();
        let kid = |s: &str| -> UnitId { s.parse().unwrap() };
        let mut a = empty(&actor_for(&unit, [1; 8]));
        let mut b = empty(&actor_for(&"c01/k01".parse().unwrap(), [2; 8]));
        assert!(register_child(&mut a, &kid("c01/k01/t01/v01")).unwrap());
        assert!(register_child(&mut b, &kid("c01/k01/t01/v02")).unwrap());
        assert!(!register_child(&mut b, &kid("c01/k01/t01/v02")).unwrap());
        a.merge(&mut b).unwrap();
        let mut got = profile_children(&a, &unit);
        got.sort();
        assert_eq!(got, vec![kid("c01/k01/t01/v01"), kid("c01/k01/t01/v02")]);
    }

    #[test]
    fn a_clear_leaves_a_concurrent_set_it_had_not_seen() {
        let unit: UnitId = "c01/k01/t01/v01".parse().unwrap();
        let mut a = empty(&actor_for(&unit, [1; 8]));
        let rec = RecordId::from_u64(7);
        let member = NewMember {
            name: "Zhao Min".into(),
            birth_year: 1992,
            gender: Gender::Female,
            education: Education::College,
            joined_on: "2021-06-01".into(),
            status: MemberStatus::Full,
            phone: Some("139 0000 3333".into()),
            id_number: None,
            categories: Vec::new(),
        };
        create_member(&mut a, rec, &member).unwrap();
        let mut b = a.fork().with_actor(actor_for(&unit, [2; 8]));
        let clear = MemberPatch {
            phone: Some(None),
            ..MemberPatch::default()
        };
        update_member(&mut a, rec, &clear).unwrap();
        assert_eq!(read_member(&a, &unit, rec).unwrap().phone, None);
        let set = MemberPatch {
            phone: Some(Some("138 1111 2222".into())),
            ..MemberPatch::default()
        };
        update_member(&mut b, rec, &set).unwrap();
        a.merge(&mut b).unwrap();
        let merged = read_member(&a, &unit, rec).unwrap();
        assert_eq!(merged.phone.as_deref(), Some("138 1111 2222"));
        assert_eq!(merged.name, "Zhao Min");
    }

    /// Record writes of `kind` on `d` (fields as text, a year as a number, `null` a clear).
    fn record_write(d: &mut Automerge, kind: DocKind, rec: u64, create: bool, f: &[(&str, &str)]) {
        let fields: grassroots_schema::Fields = f
            .iter()
            .map(|(k, v)| {
                let v = match (*k, *v, v.parse::<i64>()) {
                    ("year", _, Ok(i)) => grassroots_schema::Value::Int(i),
                    (_, "null", _) => grassroots_schema::Value::Null,
                    _ => grassroots_schema::Value::Text((*v).into()),
                };
                (k.to_string(), v)
            })
            .collect();
        let spec = grassroots_schema::entity(kind).unwrap();
        let rec = RecordId::from_u64(rec);
        let w = if create {
            RecordWrite::Create(rec, &fields, None)
        } else {
            RecordWrite::Update(rec, &fields, None)
        };
        let r = apply_record_writes(d, spec, &[w]).unwrap();
        assert!(r.iter().all(Result::is_ok));
    }

    /// A village that changes its report from heads before its township accepted it (as a
    /// hostile one may, to pass the check against those heads) loses the acceptance: the
    /// review reads as null, waiting for review again. An edit the acceptance saw, and one
    /// from above after it, keep it.
    #[test]
    fn an_acceptance_holds_only_for_what_was_accepted() {
        let (v, t): (UnitId, UnitId) = (
            "c01/k01/t01/v01".parse().unwrap(),
            "c01/k01/t01".parse().unwrap(),
        );
        let spec = grassroots_schema::entity(DocKind::Reports).unwrap();
        let mut d = empty(&actor_for(&v, [1; 8]));
        let named = MemberId {
            unit: t.clone(),
            record: RecordId::from_u64(1),
        }
        .to_string();
        let report = [
            ("kind", "annual_assessment"),
            ("period", "2026"),
            ("submittedOn", "2026-12-01"),
            ("body", "Done"),
            ("directive", named.as_str()),
        ];
        record_write(&mut d, DocKind::Reports, 1, true, &report);
        record_write(
            &mut d,
            DocKind::Reports,
            1,
            false,
            &[("body", "Done, seen")],
        );
        let before = d.fork().with_actor(actor_for(&v, [2; 8]));
        d.set_actor(actor_for(&t, [3; 8]));
        record_write(
            &mut d,
            DocKind::Reports,
            1,
            false,
            &[("review", "accepted")],
        );
        let review = |d: &Automerge| {
            read_record(d, spec, &v, RecordId::from_u64(1))
                .unwrap()
                .text("review")
                .map(str::to_owned)
        };
        assert_eq!(review(&d).as_deref(), Some("accepted"));
        // From above, after it (a field it held cleared, then another changed): still
        // accepted.
        record_write(&mut d, DocKind::Reports, 1, false, &[("directive", "null")]);
        assert_eq!(
            review(&d).as_deref(),
            Some("accepted"),
            "cleared from above"
        );
        record_write(
            &mut d,
            DocKind::Reports,
            1,
            false,
            &[("body", "Done, corrected above")],
        );
        assert_eq!(review(&d).as_deref(), Some("accepted"));
        // From below, from heads before it.
        let mut forged = before;
        record_write(
            &mut forged,
            DocKind::Reports,
            1,
            false,
            &[("submittedOn", "2026-11-01")],
        );
        d.merge(&mut forged).unwrap();
        assert_eq!(
            review(&d),
            None,
            "accepted after a change below it never saw"
        );
        // Accepted again from above (its change sees the edit): accepted.
        record_write(
            &mut d,
            DocKind::Reports,
            1,
            false,
            &[("review", "accepted")],
        );
        assert_eq!(review(&d).as_deref(), Some("accepted"));
    }

    /// A village writing an appraisal's kind and result from heads before its township made
    /// it a cadre's performance appraisal and rated it does not win by op order.
    #[test]
    fn an_appraisals_kind_and_rating_resolve_by_authority() {
        let (v, t): (UnitId, UnitId) = (
            "c01/k01/t01/v01".parse().unwrap(),
            "c01/k01/t01".parse().unwrap(),
        );
        let spec = grassroots_schema::entity(DocKind::Appraisals).unwrap();
        let mut d = empty(&actor_for(&v, [1; 8]));
        record_write(
            &mut d,
            DocKind::Appraisals,
            1,
            true,
            &[
                ("kind", "democratic_appraisal"),
                ("year", "2026"),
                ("subject", "Secretary Wu"),
            ],
        );
        // The village writes more ops first, so its values have the higher counters and op
        // order alone would pick them.
        let mut village = d.fork().with_actor(actor_for(&v, [2; 8]));
        for day in ["2026-12-01", "2026-12-02", "2026-12-03"] {
            record_write(
                &mut village,
                DocKind::Appraisals,
                1,
                false,
                &[("heldOn", day)],
            );
        }
        d.set_actor(actor_for(&t, [3; 8]));
        record_write(
            &mut d,
            DocKind::Appraisals,
            1,
            false,
            &[("kind", "cadre_performance"), ("result", "incompetent")],
        );
        record_write(
            &mut village,
            DocKind::Appraisals,
            1,
            false,
            &[("kind", "villagers_questioning"), ("result", "excellent")],
        );
        d.merge(&mut village).unwrap();
        let r = read_record(&d, spec, &v, RecordId::from_u64(1)).unwrap();
        assert_eq!(
            (r.text("kind"), r.text("result")),
            (Some("cadre_performance"), Some("incompetent"))
        );
        // The document read whole (as the views are) resolves it the same.
        assert_eq!(read_records(&d, spec, &v), vec![r]);
    }

    /// An appraisal the village rated as a democratic appraisal, which its township then
    /// makes a cadre's performance appraisal without rating it: the village's rating is not
    /// the level above's, so none shows until the township rates it.
    #[test]
    fn a_rating_from_below_does_not_become_the_level_aboves() {
        let (v, t): (UnitId, UnitId) = (
            "c01/k01/t01/v01".parse().unwrap(),
            "c01/k01/t01".parse().unwrap(),
        );
        let spec = grassroots_schema::entity(DocKind::Appraisals).unwrap();
        let mut d = empty(&actor_for(&v, [1; 8]));
        let made = [
            ("kind", "democratic_appraisal"),
            ("year", "2026"),
            ("subject", "Secretary Wu"),
            ("result", "excellent"),
        ];
        record_write(&mut d, DocKind::Appraisals, 1, true, &made);
        let read = |d: &Automerge| read_record(d, spec, &v, RecordId::from_u64(1)).unwrap();
        assert_eq!(read(&d).text("result"), Some("excellent"));
        d.set_actor(actor_for(&t, [2; 8]));
        record_write(
            &mut d,
            DocKind::Appraisals,
            1,
            false,
            &[("kind", "debriefing")],
        );
        let r = read(&d);
        assert_eq!(
            (r.text("kind"), r.text("result")),
            (Some("debriefing"), None)
        );
        record_write(
            &mut d,
            DocKind::Appraisals,
            1,
            false,
            &[("result", "competent")],
        );
        assert_eq!(read(&d).text("result"), Some("competent"));
    }

    /// Categories are one field each: concurrent changes to different ones merge, a set
    /// without one clears it, and a value that is not `true` counts as not in it.
    #[test]
    fn member_categories_merge_one_field_each() {
        use MemberCategory as C;
        let v = unit("c01/k01/t01/v01");
        let mut a = empty(&actor_for(&v, [1; 8]));
        let rec = RecordId::from_u64(7);
        create_member(&mut a, rec, &sample()).unwrap();
        assert!(read_member(&a, &v, rec).unwrap().categories.is_empty());
        let mut b = a.fork().with_actor(actor_for(&v, [2; 8]));
        let set = |c: Vec<C>| MemberPatch {
            categories: Some(c),
            ..MemberPatch::default()
        };
        update_member(&mut a, rec, &set(vec![C::Floating])).unwrap();
        update_member(&mut b, rec, &set(vec![C::InDifficulty])).unwrap();
        a.merge(&mut b).unwrap();
        assert_eq!(
            read_member(&a, &v, rec).unwrap().categories,
            vec![C::Floating, C::InDifficulty]
        );
        update_member(&mut a, rec, &set(vec![C::InDifficulty])).unwrap();
        assert_eq!(
            read_member(&a, &v, rec).unwrap().categories,
            vec![C::InDifficulty]
        );
        // Restating a category writes nothing.
        let heads = a.get_heads();
        update_member(&mut a, rec, &set(vec![C::InDifficulty])).unwrap();
        assert_eq!(a.get_heads(), heads);
        // A peer's non-boolean value is not a category.
        let obj = match a.get(ROOT, rec.to_string()).unwrap() {
            Some((_, obj)) => obj,
            None => panic!("no record"),
        };
        let mut tx = a.transaction();
        tx.put(&obj, C::Floating.field(), "yes").unwrap();
        tx.commit();
        assert_eq!(
            read_member(&a, &v, rec).unwrap().categories,
            vec![C::InDifficulty]
        );
    }

    #[test]
    fn concurrent_field_edits_both_survive() {
        let v = unit("c01/k01/t01/v01");
        let t = unit("c01/k01/t01");
        let mut village = empty(&actor_for(&v, [1; 8]));
        let rec = RecordId::from_u64(7);
        create_member(&mut village, rec, &sample()).unwrap();
        let mut township = empty(&actor_for(&t, [2; 8]));
        sync_pair(&mut village, &mut township);
        update_member(
            &mut township,
            rec,
            &MemberPatch {
                name: Some("Wang Fang (corrected)".into()),
                ..Default::default()
            },
        )
        .unwrap();
        update_member(
            &mut village,
            rec,
            &MemberPatch {
                education: Some(Education::College),
                ..Default::default()
            },
        )
        .unwrap();
        sync_pair(&mut village, &mut township);
        for d in [&village, &township] {
            let m = &read_members(d, &v)[0];
            assert_eq!(m.name, "Wang Fang (corrected)");
            assert_eq!(m.education, Education::College);
        }
    }

    /// A record's fields read in one pass over its map are what hydrating the document
    /// gives: each key's winning value after concurrent writes, a `Uint` year, and fields
    /// or records of shapes no reader takes left out.
    #[test]
    fn members_read_from_their_maps_equal_the_hydrated_document() {
        let v = unit("c01/k01/t01/v01");
        let mut village = empty(&actor_for(&v, [1; 8]));
        let mut township = empty(&actor_for(&unit("c01/k01/t01"), [2; 8]));
        let r = RecordId::from_u64;
        for i in 0..12 {
            create_member(&mut village, r(i), &sample()).unwrap();
        }
        sync_pair(&mut village, &mut township);
        // The same fields written on both sides at once: one value wins, the same on both.
        for i in 0..12 {
            let name = |side: &str| MemberPatch {
                name: Some(format!("{side} {i}")),
                education: Some(if side == "v" {
                    Education::College
                } else {
                    Education::Primary
                }),
                ..Default::default()
            };
            update_member(&mut village, r(i), &name("v")).unwrap();
            update_member(&mut township, r(i), &name("t")).unwrap();
        }
        // Shapes a peer may write: a year as `Uint`, a name held as a text object, a
        // category set to a text, a field set and deleted, a scalar where a record's map
        // should be, a record held as a table, a key that names no record.
        let category = MemberCategory::ALL[0];
        {
            let mut tx = township.transaction();
            let five = record_obj(&tx, r(5)).unwrap();
            tx.put(&five, PHONE, "13800000000").unwrap();
            tx.commit();
            let mut tx = township.transaction();
            tx.delete(&five, PHONE).unwrap();
            // (automerge 0.12 refuses to put into a table: it stays empty.)
            tx.put_object(ROOT, r(40).to_string(), ObjType::Table)
                .unwrap();
            let one = record_obj(&tx, r(1)).unwrap();
            tx.put(&one, "birthYear", 1990_u64).unwrap();
            let two = record_obj(&tx, r(2)).unwrap();
            tx.put_object(&two, "name", ObjType::Text).unwrap();
            let three = record_obj(&tx, r(3)).unwrap();
            tx.put(&three, category.field(), "yes").unwrap();
            let four = record_obj(&tx, r(4)).unwrap();
            tx.put(&four, category.field(), true).unwrap();
            tx.put(ROOT, r(30).to_string(), "not a map").unwrap();
            tx.put(ROOT, "notes", "not a record").unwrap();
            tx.commit();
        }
        sync_pair(&mut village, &mut township);

        let hydrate::Value::Map(root) = village.hydrate(None) else {
            panic!("the root is a map");
        };
        let mut compared = 0;
        for (key, value) in root.iter() {
            let (Ok(record), hydrate::Value::Map(map)) = (key.parse(), &value.value) else {
                continue;
            };
            compared += 1;
            let Some(obj) = record_obj(&village, record) else {
                assert_eq!(record, r(40), "only the table is not a record's map");
                continue;
            };
            let mut hydrated: Vec<(String, ScalarValue)> = map
                .iter()
                .filter_map(|(k, v)| match &v.value {
                    hydrate::Value::Scalar(s) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect();
            hydrated.sort_by(|a, b| a.0.cmp(&b.0));
            let mut read: Vec<(String, ScalarValue)> = RecordFields::read(&village, &obj)
                .0
                .iter()
                .map(|(k, s)| (k.to_string(), ScalarValue::from(s)))
                .collect();
            read.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(read, hydrated, "record {record}");
        }
        // The twelve maps; the table (hydrated as a map too) is no record.
        assert_eq!(compared, 13);

        let members = read_members(&village, &v);
        assert_eq!(members, read_members(&township, &v));
        // Record 2's name is no text, record 30 no map, 40 a table, "notes" no record.
        let ids: Vec<u64> = (0..12).filter(|&i| i != 2).collect();
        assert_eq!(
            members.iter().map(|m| m.id.record).collect::<Vec<_>>(),
            ids.iter().map(|&i| r(i)).collect::<Vec<_>>()
        );
        let winner = |rec: RecordId| match village.get(record_obj(&village, rec).unwrap(), "name") {
            Ok(Some((Value::Scalar(s), _))) => s.as_str().unwrap().to_owned(),
            other => panic!("name of {rec}: {other:?}"),
        };
        for m in &members {
            assert_eq!(m.name, winner(m.id.record));
            assert_eq!(read_member(&village, &v, m.id.record).as_ref(), Some(m));
        }
        let by = |i: u64| members.iter().find(|m| m.id.record == r(i)).unwrap();
        assert_eq!(by(1).birth_year, 1990);
        assert_eq!(by(5).phone, None);
        assert!(read_member(&village, &v, r(40)).is_none());
        assert!(!by(3).categories.contains(&category));
        assert!(by(4).categories.contains(&category));
    }

    #[test]
    fn profile_is_written_once() {
        let u = unit("c01/k01");
        let mut d = empty(&actor_for(&u, [3; 8]));
        let kids = vec![unit("c01/k01/t01"), unit("c01/k01/t02")];
        assert!(set_profile(&mut d, "Eastern County", &kids).unwrap());
        assert!(
            !set_profile(&mut d, "Eastern County", &kids).unwrap(),
            "no-op rewrite"
        );
        let p = read_profile(&d, &u).unwrap();
        assert_eq!(p.name, "Eastern County");
        assert_eq!(p.children, kids);
        revoke(&mut d, "ab12", &kids[0]).unwrap();
        assert_eq!(
            read_profile(&d, &u).unwrap().revoked,
            vec!["ab12".to_string()]
        );
    }

    #[test]
    fn records_that_do_not_fit_their_kind_stay_out_of_the_views() {
        use grassroots_schema::{DocKind, Value as V, entity};
        let u = unit("c01/k01/t01/v01");
        let spec = entity(DocKind::Meetings).unwrap();
        let mut d = empty(&actor_for(&u, [5; 8]));
        let fields = |attendance: i64, kind: &str| -> Fields {
            [
                ("kind", V::Text(kind.into())),
                ("heldOn", V::Text("2026-03-01".into())),
                ("attendance", V::Int(attendance)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
        };
        // Written straight into the document, as a buggy or hostile peer could.
        let (good, negative, unknown) = (
            fields(12, "party_lecture"),
            fields(i64::MIN, "party_lecture"),
            fields(12, "picnic"),
        );
        apply_record_writes(
            &mut d,
            spec,
            &[
                RecordWrite::Create(RecordId::from_u64(1), &good, None),
                RecordWrite::Create(RecordId::from_u64(2), &negative, None),
                RecordWrite::Create(RecordId::from_u64(3), &unknown, None),
            ],
        )
        .unwrap();
        let read = read_records(&d, spec, &u);
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].id.record, RecordId::from_u64(1));
        assert!(read_record(&d, spec, &u, RecordId::from_u64(2)).is_none());
    }

    #[test]
    fn updating_a_missing_record_is_an_error() {
        let u = unit("c01");
        let mut d = empty(&actor_for(&u, [4; 8]));
        assert!(matches!(
            update_member(&mut d, RecordId::from_u64(1), &MemberPatch::default()),
            Err(DocError::NoSuchRecord(_))
        ));
    }

    #[test]
    fn a_diff_names_exactly_the_records_that_changed() {
        let u = unit("c01/k01/t01/v01");
        let mut d = empty(&actor_for(&u, [1; 8]));
        for i in 0..50 {
            create_member(&mut d, RecordId::from_u64(i), &sample()).unwrap();
        }
        let before = d.get_heads();
        assert!(touched_records(&d, &before, &before).is_empty());
        // Another replica edits one record and adds one; they arrive here by sync.
        let mut other = d.fork().with_actor(actor_for(&unit("c01/k01/t01"), [2; 8]));
        let patch = MemberPatch {
            name: Some("Renamed".into()),
            ..Default::default()
        };
        update_member(&mut other, RecordId::from_u64(7), &patch).unwrap();
        create_member(&mut other, RecordId::from_u64(99), &sample()).unwrap();
        sync_pair(&mut d, &mut other);
        let touched = touched_records(&d, &before, &d.get_heads());
        let want: BTreeSet<RecordId> = [7, 99].into_iter().map(RecordId::from_u64).collect();
        assert_eq!(touched, want);
        assert_eq!(records_touched_by(&d, &d.get_changes(&before)), Some(want));
    }

    /// After random edits from two replicas (renames, field changes, categories, removals,
    /// creates, some concurrent on one record), every record that reads differently is
    /// among those the new changes name, and so is every record automerge's diff names;
    /// none is named that no write touched.
    #[test]
    fn the_records_new_changes_touch_cover_every_record_that_reads_differently() {
        let u = unit("c01/k01/t01/v01");
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..20 {
            let mut d = empty(&actor_for(&u, [1; 8]));
            for i in 0..40 {
                create_member(&mut d, RecordId::from_u64(i), &sample()).unwrap();
            }
            let before = d.get_heads();
            let mut other = d.fork().with_actor(actor_for(&unit("c01/k01/t01"), [2; 8]));
            let mut written = BTreeSet::new();
            for _ in 0..1 + next(12) {
                let r = RecordId::from_u64(next(44));
                let target = if next(2) == 0 { &mut d } else { &mut other };
                let done = match next(5) {
                    0 => create_member(target, r, &sample()),
                    1 => first(apply_member_writes(target, &[MemberWrite::Delete(r)]).unwrap()),
                    2 => update_member(
                        target,
                        r,
                        &MemberPatch {
                            categories: Some(vec![MemberCategory::Floating]),
                            ..Default::default()
                        },
                    ),
                    _ => update_member(
                        target,
                        r,
                        &MemberPatch {
                            name: Some(format!("Name {}", next(3))),
                            birth_year: Some(1950 + next(3) as i64),
                            ..Default::default()
                        },
                    ),
                };
                if done.is_ok() {
                    written.insert(r);
                }
            }
            sync_pair(&mut d, &mut other);
            let after = d.get_heads();
            let old = d.fork_at(&before).unwrap();
            let by_ops = records_touched_by(&d, &d.get_changes(&before)).unwrap();
            let by_diff = touched_records(&d, &before, &after);
            assert!(by_diff.is_subset(&by_ops), "round {round}");
            // And nothing no write touched.
            assert!(by_ops.is_subset(&written), "round {round}");
            for i in 0..44 {
                let r = RecordId::from_u64(i);
                if read_member(&old, &u, r) != read_member(&d, &u, r) {
                    assert!(by_ops.contains(&r), "round {round}: {r:?} changed unnamed");
                }
            }
        }
    }
}
