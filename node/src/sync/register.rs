//! A members register read straight from its document chunk (automerge's compact form),
//! without automerge: the heads the chunk names and every member record as
//! [`crate::doc::read_members`] reads it from the loaded document.
//!
//! Why: a village that wrote offline sends its register whole, and its parent's loading it
//! into automerge (every op inserted into the op set: 13-26 ms for 1,000 households and
//! 5,000 changes) was most of the parent's time to take it. Read here, the parent stores the
//! chunk as received and writes the views from this reading; automerge loads it later, off
//! the path of the acknowledgement, which both checks the chunk (a chunk automerge will not
//! load is then taken out again) and compares its reading with this one.
//!
//! What is read: a document chunk's op columns (automerge's storage format), row by row.
//! An op is visible when it has no successor; the value of a map key is its visible op with
//! the greatest id (counter, then actor), as automerge's. Anything this reader does not
//! model (counters, marks, a column it does not know) makes it answer `None`, and the chunk
//! goes to automerge as before.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::{ChangeHash, ScalarValueRef};
use grassroots_schema::{ActorTag, Member, RecordId, UnitId};

use super::chunks::{
    Bools, COLUMN_DEFLATE, Deltas, Runs, columns, inflated, leb128, sleb128, take_bytes,
};
use crate::doc::{RecordFields, member_from};

/// A register as its document chunk holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Register {
    /// The heads the chunk names (sorted), which automerge checks when it loads it.
    pub heads: Vec<ChangeHash>,
    /// Every well-formed member record, by record.
    pub members: BTreeMap<RecordId, Member>,
}

/// Op columns of a document chunk (column id << 4 | type).
const OBJ_ACTOR: u64 = 0x01;
const OBJ_CTR: u64 = 0x02;
const KEY_ACTOR: u64 = 0x11;
const KEY_CTR: u64 = 0x13;
const KEY_STR: u64 = 0x15;
const ID_ACTOR: u64 = 0x21;
const ID_CTR: u64 = 0x23;
const INSERT: u64 = 0x34;
const ACTION: u64 = 0x42;
const VALUE_META: u64 = 0x56;
const VALUE_RAW: u64 = 0x57;
const SUCC_NUM: u64 = 0x80;
const SUCC_ACTOR: u64 = 0x81;
const SUCC_CTR: u64 = 0x83;
/// Columns of marks (expand, mark name): read past; a mark op makes the reader give up.
const MARK_COLUMNS: [u64; 2] = [0x94, 0xa5];
const KNOWN: [u64; 14] = [
    OBJ_ACTOR, OBJ_CTR, KEY_ACTOR, KEY_CTR, KEY_STR, ID_ACTOR, ID_CTR, INSERT, ACTION, VALUE_META,
    VALUE_RAW, SUCC_NUM, SUCC_ACTOR, SUCC_CTR,
];

/// The longest actor id or map key read (an actor names a unit and a nonce, a key a record
/// or a field): longer ones are left to automerge, not compared op after op.
const MAX_NAME_BYTES: usize = 256;

/// Most ops read: a register of 1,000 households and 5,000 changes has about 12,000. Past
/// this the chunk goes to automerge, under the frame's caps, rather than into this
/// reader's tables (a run-length column declares millions of ops in a few bytes; at this
/// cap the table of objects made holds some 10 MB, by arithmetic, not measured).
const MAX_OPS: usize = 1 << 18;

/// Actions (automerge's storage format).
const MAKE_MAP: u64 = 0;
const SET: u64 = 1;
/// Deletions are not stored in a document chunk (a deleted op has a successor instead).
const DELETE: u64 = 3;
const INCREMENT: u64 = 5;
const MARK: u64 = 7;
/// Value type of a counter (the low four bits of its metadata).
const VALUE_COUNTER: u64 = 8;

/// An op's id: its counter, then its actor's index in the chunk's actor list.
type OpId = (u64, usize);

/// A visible op that sets a map key, as kept for the key's winner.
struct Entry<'a> {
    id: OpId,
    /// `None`: the op makes an object.
    value: Option<ScalarValueRef<'a>>,
    make_map: bool,
}

/// The register `owner`'s members document chunk `body` (after the chunk header) holds;
/// `None` when it is not a chunk this reader models, or is malformed (automerge then takes
/// it, and refuses what is malformed). Compressed columns are inflated to at most
/// `inflate_cap` bytes each.
pub fn read(body: &[u8], owner: &UnitId, inflate_cap: u64) -> Option<Register> {
    let mut pos = 0usize;
    let n_actors = usize::try_from(leb128(body, &mut pos)?).ok()?;
    let mut actors = Vec::with_capacity(n_actors.min(1 << 14));
    for _ in 0..n_actors {
        let actor = take_bytes(body, &mut pos)?;
        // Ops are told apart by their actors, compared for each key's winner: an actor of
        // megabytes would make each comparison cost that.
        if actor.len() > MAX_NAME_BYTES {
            return None;
        }
        actors.push(actor);
    }
    let n_heads = usize::try_from(leb128(body, &mut pos)?).ok()?;
    let mut heads = Vec::with_capacity(n_heads.min(1024));
    for _ in 0..n_heads {
        let end = pos.checked_add(32)?;
        heads.push(ChangeHash::try_from(body.get(pos..end)?).ok()?);
        pos = end;
    }
    heads.sort();
    let change_cols = columns(body, &mut pos)?;
    let op_cols = columns(body, &mut pos)?;
    for &(_, len) in &change_cols {
        pos = pos.checked_add(usize::try_from(len).ok()?)?;
    }
    let mut data: HashMap<u64, Cow<'_, [u8]>> = HashMap::new();
    for &(spec, len) in &op_cols {
        let end = pos.checked_add(usize::try_from(len).ok()?)?;
        let raw = body.get(pos..end)?;
        pos = end;
        let id = spec & !COLUMN_DEFLATE;
        if MARK_COLUMNS.contains(&id) {
            continue;
        }
        if !KNOWN.contains(&id) {
            return None;
        }
        let col = if spec & COLUMN_DEFLATE != 0 {
            Cow::Owned(inflated(raw, inflate_cap)?)
        } else {
            Cow::Borrowed(raw)
        };
        data.insert(id, col);
    }
    let col = |id: u64| data.get(&id).map_or(&[][..], |c| &c[..]);
    let ops = Ops {
        obj_actor: Runs::new(col(OBJ_ACTOR)),
        obj_ctr: Runs::new(col(OBJ_CTR)),
        key_actor: Runs::new(col(KEY_ACTOR)),
        key_ctr: Deltas::new(col(KEY_CTR)),
        key_str: Runs::strings(col(KEY_STR)),
        id_actor: Runs::new(col(ID_ACTOR)),
        id_ctr: Deltas::new(col(ID_CTR)),
        insert: Bools::new(col(INSERT)),
        action: Runs::new(col(ACTION)),
        value_meta: Runs::new(col(VALUE_META)),
        value_raw: col(VALUE_RAW),
        value_pos: 0,
        succ_num: Runs::new(col(SUCC_NUM)),
        succ_actor: Runs::new(col(SUCC_ACTOR)),
        succ_ctr: Deltas::new(col(SUCC_CTR)),
    };
    let maps = winners(ops, &actors)?;
    let unit_of = |actor: usize| actors.get(actor).and_then(|a| ActorTag::unit_of(a).ok());
    let mut members = BTreeMap::new();
    for (key, entry) in maps.keys_of(None) {
        let Ok(record) = key.parse::<RecordId>() else {
            continue;
        };
        let fields = entry.make_map.then(|| {
            let fields = maps.keys_of(Some(entry.id));
            let scalars = fields
                .iter()
                .filter_map(|(k, e)| Some((Cow::Borrowed(*k), e.value.clone()?)))
                .collect();
            (RecordFields::new(scalars), fields)
        });
        let author_of = |by: &str| {
            let (_, fields) = fields.as_ref()?;
            let (_, e) = fields.iter().find(|(k, _)| *k == by)?;
            unit_of(e.id.1)
        };
        if let Some(m) = member_from(owner, record, fields.as_ref().map(|(f, _)| f), author_of) {
            members.insert(record, m);
        }
    }
    Some(Register { heads, members })
}

/// The columns of a chunk's ops, read row by row.
struct Ops<'a> {
    obj_actor: Runs<'a>,
    obj_ctr: Runs<'a>,
    key_actor: Runs<'a>,
    key_ctr: Deltas<'a>,
    key_str: Runs<'a, &'a str>,
    id_actor: Runs<'a>,
    id_ctr: Deltas<'a>,
    insert: Bools<'a>,
    action: Runs<'a>,
    value_meta: Runs<'a>,
    value_raw: &'a [u8],
    value_pos: usize,
    succ_num: Runs<'a>,
    succ_actor: Runs<'a>,
    succ_ctr: Deltas<'a>,
}

/// Each map key's winning visible op, by object and key: the keys of each object in one
/// run, where each object's ops are in a document chunk (automerge writes them by object,
/// then key, then op id).
struct Maps<'a> {
    keys: Vec<(&'a str, Entry<'a>)>,
    /// Where each object's keys are in `keys` (`None`: the root).
    objects: HashMap<Option<OpId>, std::ops::Range<usize>>,
}

impl<'a> Maps<'a> {
    fn keys_of(&self, obj: Option<OpId>) -> &[(&'a str, Entry<'a>)] {
        self.objects
            .get(&obj)
            .and_then(|r| self.keys.get(r.clone()))
            .unwrap_or_default()
    }
}

/// The winners of every map key the ops set: `None` when an object's or a key's ops are
/// not in one run (not as automerge writes a chunk; automerge then reads it).
fn winners<'a>(mut ops: Ops<'a>, actors: &[&[u8]]) -> Option<Maps<'a>> {
    let mut maps = Maps {
        keys: Vec::new(),
        objects: HashMap::new(),
    };
    // The run of ops under way: its object and key, where its object's keys began, and the
    // winner so far.
    let mut run: Option<(Option<OpId>, &'a str)> = None;
    let mut object_start = 0usize;
    let mut best: Option<Entry<'a>> = None;
    // Greater: a later counter, or the same counter by a greater actor (automerge's order),
    // the actors ranked once.
    let mut by_bytes: Vec<usize> = (0..actors.len()).collect();
    by_bytes.sort_by_key(|&i| actors[i]);
    let mut rank = vec![0usize; actors.len()];
    for (r, &i) in by_bytes.iter().enumerate() {
        rank[i] = r;
    }
    let later = |a: OpId, b: OpId| a.0.cmp(&b.0).then(rank[a.1].cmp(&rank[b.1])).is_gt();
    // Objects made, each once: records sharing one object would each read all its keys.
    let mut made: HashSet<OpId> = HashSet::new();
    let mut read = 0usize;
    while let Some(action) = ops.action.next().ok()? {
        let action = action?;
        read += 1;
        if read > MAX_OPS {
            return None;
        }
        let obj = match (
            ops.obj_actor.next_or_null().ok()?,
            ops.obj_ctr.next_or_null().ok()?,
        ) {
            (None, None) => None,
            (Some(a), Some(c)) => Some((c, usize::try_from(a).ok()?)),
            _ => return None,
        };
        let key_actor = ops.key_actor.next_or_null().ok()?;
        let key_ctr = ops.key_ctr.next_or_null().ok()?;
        let key = ops.key_str.next_or_null().ok()?;
        let id = (
            u64::try_from(ops.id_ctr.next_or_null().ok()??).ok()?,
            usize::try_from(ops.id_actor.next_or_null().ok()??).ok()?,
        );
        if id.1 >= actors.len() || obj.is_some_and(|(_, a)| a >= actors.len()) {
            return None;
        }
        let insert = ops.insert.next_or_false().ok()?;
        let meta = ops.value_meta.next_or_null().ok()?.unwrap_or(0);
        let len = usize::try_from(meta >> 4).ok()?;
        let end = ops.value_pos.checked_add(len)?;
        let raw = ops.value_raw.get(ops.value_pos..end)?;
        ops.value_pos = end;
        // Each successor is a value of the successor columns, whose values the frame's cap
        // bounds: a count past their end (2^62 in a few bytes) ends the reading there.
        let succs = ops.succ_num.next_or_null().ok()?.unwrap_or(0);
        for _ in 0..succs {
            ops.succ_actor.next().ok()??;
            ops.succ_ctr.next().ok()??;
        }
        if action == INCREMENT || action == MARK || meta & 0xf == VALUE_COUNTER {
            return None;
        }
        // Keys of list elements (no map object this reader reads holds them), and ops
        // superseded by others, name no value.
        let _ = (key_actor, key_ctr);
        if action == MAKE_MAP && !made.insert(id) {
            return None;
        }
        let Some(key) = key else { continue };
        if key.len() > MAX_NAME_BYTES {
            return None;
        }
        if run.is_none_or(|(o, k)| o != obj || k != key) {
            if let Some((o, k)) = run {
                if let Some(b) = best.take() {
                    maps.keys.push((k, b));
                }
                if o != obj {
                    maps.objects.insert(o, object_start..maps.keys.len());
                    object_start = maps.keys.len();
                    // An object met again after another: not in runs.
                    if maps.objects.contains_key(&obj) {
                        return None;
                    }
                } else if key <= k {
                    return None;
                }
            }
            run = Some((obj, key));
        }
        if insert || succs > 0 {
            continue;
        }
        let value = match action {
            SET => Some(scalar(meta & 0xf, raw)?),
            DELETE => return None,
            a if a > MARK => return None,
            _ => None,
        };
        if best.as_ref().is_none_or(|b| later(id, b.id)) {
            best = Some(Entry {
                id,
                value,
                make_map: action == MAKE_MAP,
            });
        }
    }
    if let Some((o, k)) = run {
        if let Some(b) = best.take() {
            maps.keys.push((k, b));
        }
        maps.objects.insert(o, object_start..maps.keys.len());
    }
    Some(maps)
}

/// A value from its type (the low four bits of its metadata) and bytes.
fn scalar(ty: u64, raw: &[u8]) -> Option<ScalarValueRef<'_>> {
    let int = || {
        let mut pos = 0;
        let v = sleb128(raw, &mut pos)?;
        (pos == raw.len()).then_some(v)
    };
    Some(match ty {
        0 => ScalarValueRef::Null,
        1 => ScalarValueRef::Boolean(false),
        2 => ScalarValueRef::Boolean(true),
        3 => {
            let mut pos = 0;
            let v = leb128(raw, &mut pos)?;
            (pos == raw.len()).then_some(ScalarValueRef::Uint(v))?
        }
        4 => ScalarValueRef::Int(int()?),
        5 => ScalarValueRef::F64(f64::from_le_bytes(raw.try_into().ok()?)),
        6 => ScalarValueRef::Str(Cow::Borrowed(std::str::from_utf8(raw).ok()?)),
        7 => ScalarValueRef::Bytes(Cow::Borrowed(raw)),
        9 => ScalarValueRef::Timestamp(int()?),
        // Counters are given up before; any other type automerge keeps as unknown.
        t => ScalarValueRef::Unknown {
            type_code: u8::try_from(t).ok()?,
            bytes: Cow::Borrowed(raw),
        },
    })
}

/// A document chunk (`saved`, one chunk) with its first head changed and its checksum
/// made again: its columns read as before, but automerge does not load it (the head is
/// not its own). Returns the changed head and the chunk.
#[cfg(test)]
pub(crate) fn head_flipped(saved: &[u8]) -> (ChangeHash, Vec<u8>) {
    let [(_, _, body)] = super::chunks::split_chunks(saved).unwrap()[..] else {
        panic!("one chunk");
    };
    let start = saved.len() - body.len();
    let mut pos = 0;
    for _ in 0..leb128(body, &mut pos).unwrap() {
        take_bytes(body, &mut pos).unwrap();
    }
    leb128(body, &mut pos).unwrap();
    let mut chunk = saved.to_vec();
    chunk[start + pos] ^= 0xff;
    let sum = ring::digest::digest(&ring::digest::SHA256, &chunk[8..]);
    chunk[4..8].copy_from_slice(&sum.as_ref()[..4]);
    let head = ChangeHash::try_from(&chunk[start + pos..start + pos + 32]).unwrap();
    (head, chunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::{self, MemberWrite};
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ObjType, ROOT};
    use grassroots_schema::{
        Education, Gender, MemberCategory, MemberPatch, MemberStatus, NewMember, Role, Stamp,
    };
    use proptest::prelude::*;

    fn u(s: &str) -> UnitId {
        s.parse().unwrap()
    }

    fn body(chunk: &[u8]) -> &[u8] {
        let [(kind, _, body)] = super::super::chunks::split_chunks(chunk).unwrap()[..] else {
            panic!("one chunk");
        };
        assert_eq!(kind, super::super::chunks::CHUNK_DOCUMENT);
        body
    }

    /// One step of a random history of a village's register, written on one of three
    /// replicas (two of the village's, one of its township's).
    #[derive(Debug, Clone)]
    enum Step {
        Create {
            at: usize,
            record: u64,
            n: u8,
            stamp: Option<u8>,
        },
        Update {
            at: usize,
            record: u64,
            field: u8,
            n: u8,
            stamp: Option<u8>,
        },
        Delete {
            at: usize,
            record: u64,
        },
        Raw {
            at: usize,
            record: u64,
            what: u8,
        },
        Merge {
            into: usize,
            from: usize,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        let at = 0..3usize;
        let record = 1..10u64;
        prop_oneof![
            (
                at.clone(),
                record.clone(),
                any::<u8>(),
                proptest::option::of(0..3u8)
            )
                .prop_map(|(at, record, n, stamp)| Step::Create {
                    at,
                    record,
                    n,
                    stamp
                }),
            (
                at.clone(),
                record.clone(),
                0..9u8,
                any::<u8>(),
                proptest::option::of(0..3u8)
            )
                .prop_map(|(at, record, field, n, stamp)| Step::Update {
                    at,
                    record,
                    field,
                    n,
                    stamp
                }),
            (at.clone(), record.clone()).prop_map(|(at, record)| Step::Delete { at, record }),
            (at.clone(), record, 0..8u8).prop_map(|(at, record, what)| Step::Raw {
                at,
                record,
                what
            }),
            (at.clone(), at).prop_map(|(into, from)| Step::Merge { into, from }),
        ]
    }

    fn member(n: u8) -> NewMember {
        NewMember {
            name: format!("Member {n}"),
            birth_year: 1930 + i64::from(n % 80),
            gender: [Gender::Female, Gender::Male][usize::from(n % 2)],
            education: [Education::Primary, Education::College][usize::from(n / 2 % 2)],
            joined_on: format!("20{:02}-01-01", n % 30),
            status: [MemberStatus::Full, MemberStatus::Probationary][usize::from(n / 4 % 2)],
            phone: n.is_multiple_of(3).then(|| format!("555-{n}")),
            id_number: None,
            categories: if n.is_multiple_of(5) {
                vec![MemberCategory::ALL[usize::from(n) % MemberCategory::ALL.len()]]
            } else {
                Vec::new()
            },
        }
    }

    /// A stamp: the village's own, its township's, or a unit outside both (which the
    /// readers leave out unless its writer is above it).
    fn stamp(which: u8, n: u8) -> Stamp {
        let unit = ["c01/k01/t01/v01", "c01/k01/t01", "c01/k01/t02"][usize::from(which)];
        Stamp {
            at_ms: 1_700_000_000_000 + i64::from(n),
            unit: u(unit),
            role: Role::Clerk,
            user: n.is_multiple_of(2).then(|| format!("user {n}")),
        }
    }

    fn apply(docs: &mut [Automerge], s: &Step) {
        match *s {
            Step::Create {
                at,
                record,
                n,
                stamp: st,
            } => {
                let m = member(n);
                let st = st.map(|w| stamp(w, n));
                let w = MemberWrite::Create(RecordId::from_u64(record), &m, st.as_ref());
                let _ = doc::apply_member_writes(&mut docs[at], &[w]);
            }
            Step::Update {
                at,
                record,
                field,
                n,
                stamp: st,
            } => {
                let mut p = MemberPatch::default();
                match field {
                    0 => p.name = Some(format!("Renamed {n}")),
                    1 => p.birth_year = Some(1940 + i64::from(n % 60)),
                    2 => p.gender = Some(Gender::Female),
                    3 => p.education = Some(Education::SeniorSecondary),
                    4 => p.status = Some(MemberStatus::Full),
                    5 => p.phone = Some(Some(format!("556-{n}"))),
                    6 => p.phone = Some(None),
                    7 => p.joined_on = Some(format!("19{:02}-02-02", n % 100)),
                    _ => p.id_number = Some(Some(format!("ID{n}"))),
                }
                let st = st.map(|w| stamp(w, n));
                let w = MemberWrite::Update(RecordId::from_u64(record), &p, st.as_ref());
                let _ = doc::apply_member_writes(&mut docs[at], &[w]);
            }
            Step::Delete { at, record } => {
                let w = MemberWrite::Delete(RecordId::from_u64(record));
                let _ = doc::apply_member_writes(&mut docs[at], &[w]);
            }
            Step::Raw { at, record, what } => {
                let key = RecordId::from_u64(record).to_string();
                let d = &mut docs[at];
                let obj = doc::record_obj(d, RecordId::from_u64(record));
                let mut tx = d.transaction();
                match (what, obj) {
                    (0, _) => tx.put(ROOT, "not a record", 7).map(|_| ()),
                    (1, _) => tx
                        .put(ROOT, key, "a scalar where a record goes")
                        .map(|_| ()),
                    (2, Some(o)) => tx.put(&o, "birthYear", "nineteen fifty").map(|_| ()),
                    (3, Some(o)) => tx.put(&o, "birthYear", 1950u64).map(|_| ()),
                    (4, Some(o)) => tx
                        .put(&o, "gender", automerge::ScalarValue::Null)
                        .map(|_| ()),
                    (5, Some(o)) => tx.put(&o, "extra", 2.5f64).map(|_| ()),
                    (6, Some(o)) => tx.delete(&o, "name"),
                    (7, _) => tx.put_object(ROOT, key, ObjType::Map).map(|_| ()),
                    _ => Ok(()),
                }
                .unwrap();
                tx.commit();
            }
            Step::Merge { into, from } if into != from => {
                let mut other = docs[from].clone();
                docs[into].merge(&mut other).unwrap();
            }
            Step::Merge { .. } => {}
        }
    }

    fn replicas() -> Vec<Automerge> {
        [
            ("c01/k01/t01/v01", 1u8),
            ("c01/k01/t01/v01", 2),
            ("c01/k01/t01", 3),
        ]
        .into_iter()
        .map(|(unit, n)| doc::empty(&doc::actor_for(&u(unit), [n; 8])))
        .collect()
    }

    /// What automerge's reading of the merged document gives, compared with the columns'.
    fn same_reading(d: &Automerge, owner: &UnitId) {
        let want: BTreeMap<RecordId, Member> = doc::read_members(d, owner)
            .into_iter()
            .map(|m| (m.id.record, m))
            .collect();
        let mut heads = d.get_heads();
        heads.sort();
        for saved in [d.save(), d.save_nocompress()] {
            let got = read(body(&saved), owner, 64 << 20).expect("a register it models");
            assert_eq!(got.heads, heads);
            assert_eq!(got.members, want);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Random histories on three replicas, merged in random order (concurrent edits of a
        /// field, a record removed on one side and edited on the other, malformed fields,
        /// stamps claiming units their writer does not serve): the columns read as
        /// automerge's document does.
        #[test]
        fn a_register_reads_from_its_columns_as_automerge_reads_it(
            steps in proptest::collection::vec(step(), 1..60)
        ) {
            let owner = u("c01/k01/t01/v01");
            let mut docs = replicas();
            for s in &steps {
                apply(&mut docs, s);
            }
            let mut all = docs.remove(0);
            for mut d in docs {
                all.merge(&mut d).unwrap();
            }
            same_reading(&all, &owner);
        }
    }

    /// A large register (1,000 households, 4,000 edits), whose columns automerge compresses.
    #[test]
    fn a_large_register_reads_as_automerge_reads_it() {
        let owner = u("c01/k01/t01/v01");
        let mut d = replicas().remove(0);
        for i in 0..1_000u64 {
            let m = member((i % 251) as u8);
            let st = stamp(0, (i % 7) as u8);
            let w = MemberWrite::Create(RecordId::from_u64(i + 1), &m, Some(&st));
            doc::apply_member_writes(&mut d, &[w]).unwrap();
        }
        for i in 0..4_000u64 {
            let p = MemberPatch {
                name: Some(format!("Head {} rev {i}", i % 1_000)),
                ..Default::default()
            };
            let w = MemberWrite::Update(RecordId::from_u64(i % 1_000 + 1), &p, None);
            doc::apply_member_writes(&mut d, &[w]).unwrap();
        }
        same_reading(&d, &owner);
        let saved = d.save();
        assert!(
            read(body(&saved), &owner, 1_000).is_none(),
            "a column past the cap"
        );
        assert_eq!(read(&body(&saved)[..100], &owner, 64 << 20), None);
    }

    /// The first replica's register with `n` members, made one write each.
    fn registered(n: u64) -> Automerge {
        let mut d = replicas().remove(0);
        for i in 0..n {
            let m = member(i as u8);
            let w = MemberWrite::Create(RecordId::from_u64(i + 1), &m, None);
            doc::apply_member_writes(&mut d, &[w]).unwrap();
        }
        d
    }

    /// `v` as unsigned LEB128, onto `out`.
    fn leb(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// `v` as signed LEB128, onto `out`.
    fn sleb(mut v: i64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if (v == 0 && b & 0x40 == 0) || (v == -1 && b & 0x40 != 0) {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// A document chunk `saved` (uncompressed columns) with op column `spec`'s data replaced
    /// by `data`, its lengths and checksum made again.
    fn with_op_column(saved: &[u8], spec: u64, data: &[u8]) -> Vec<u8> {
        with_op_columns(saved, &[(spec, data)])
    }

    /// [`with_op_column`] for each of `replaced`.
    fn with_op_columns(saved: &[u8], replaced: &[(u64, &[u8])]) -> Vec<u8> {
        let body = body(saved);
        let mut pos = 0;
        for _ in 0..leb128(body, &mut pos).unwrap() {
            take_bytes(body, &mut pos).unwrap();
        }
        pos += 32 * leb128(body, &mut pos).unwrap() as usize;
        let prefix = &body[..pos];
        let change_cols = columns(body, &mut pos).unwrap();
        let op_cols = columns(body, &mut pos).unwrap();
        let mut out = prefix.to_vec();
        leb(change_cols.len() as u64, &mut out);
        for &(sp, len) in &change_cols {
            leb(sp, &mut out);
            leb(len, &mut out);
        }
        let change_len: u64 = change_cols.iter().map(|c| c.1).sum();
        let change_data = &body[pos..pos + change_len as usize];
        pos += change_len as usize;
        let mut op_data = Vec::new();
        leb(op_cols.len() as u64, &mut out);
        for &(sp, len) in &op_cols {
            let col = &body[pos..pos + len as usize];
            pos += len as usize;
            let col = replaced
                .iter()
                .find(|(spec, _)| *spec == sp)
                .map_or(col, |(_, data)| *data);
            leb(sp, &mut out);
            leb(col.len() as u64, &mut out);
            op_data.extend_from_slice(col);
        }
        out.extend_from_slice(change_data);
        out.extend_from_slice(&op_data);
        out.extend_from_slice(&body[pos..]);
        let mut chunk = saved[..4].to_vec();
        let mut rest = vec![super::super::chunks::CHUNK_DOCUMENT];
        leb(out.len() as u64, &mut rest);
        rest.extend_from_slice(&out);
        let sum = ring::digest::digest(&ring::digest::SHA256, &rest);
        chunk.extend_from_slice(&sum.as_ref()[..4]);
        chunk.extend_from_slice(&rest);
        chunk
    }

    /// A successor count far past what the successor columns hold (2^62 in ten bytes) ends
    /// the reading, not a loop of 2^62 steps.
    #[test]
    fn a_successor_count_past_the_columns_is_refused_at_once() {
        let owner = u("c01/k01/t01/v01");
        let saved = registered(20).save_nocompress();
        // Rebuilt unchanged, the chunk reads as before.
        let same = with_op_column(&saved, u64::MAX, &[]);
        let want = read(body(&saved), &owner, 64 << 20);
        assert!(want.is_some());
        assert_eq!(read(body(&same), &owner, 64 << 20), want);
        // One run: a single value, 2^62.
        let huge = [0x01, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        let bad = with_op_column(&saved, SUCC_NUM, &huge);
        let (tx, rx) = std::sync::mpsc::channel();
        let chunk = bad.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read(body(&chunk), &u("c01/k01/t01/v01"), 64 << 20).is_none());
        });
        let refused = rx.recv_timeout(std::time::Duration::from_secs(20));
        assert_eq!(refused, Ok(true), "the reading ends, refusing the chunk");
    }

    /// What would make the reading cost more than the chunk's size is left to automerge:
    /// an actor or a key of more than 256 bytes (compared op after op), and two objects made
    /// with one id (each record naming it would read all its keys).
    #[test]
    fn long_names_and_repeated_object_ids_are_left_to_automerge() {
        let owner = u("c01/k01/t01/v01");
        let mut d = replicas().remove(0);
        let mut tx = d.transaction();
        tx.put_object(ROOT, "k".repeat(300), ObjType::Map).unwrap();
        tx.commit();
        assert!(
            read(body(&d.save()), &owner, 64 << 20).is_none(),
            "a long key"
        );
        let mut d = Automerge::new().with_actor(automerge::ActorId::from(vec![7u8; 300]));
        let mut tx = d.transaction();
        tx.put(ROOT, "short", 1).unwrap();
        tx.commit();
        assert!(
            read(body(&d.save()), &owner, 64 << 20).is_none(),
            "a long actor"
        );
        let saved = registered(2).save_nocompress();
        assert!(read(body(&saved), &owner, 64 << 20).is_some());
        // Every op's counter 1: a first delta of 1, then a run of zeros.
        let mut ids = vec![0x01, 0x01];
        sleb(1 << 20, &mut ids);
        ids.push(0x00);
        let same_ids = with_op_column(&saved, ID_CTR, &ids);
        assert!(
            read(body(&same_ids), &owner, 64 << 20).is_none(),
            "one id, two objects"
        );
    }

    /// A chunk of more ops than [`MAX_OPS`] is left to automerge, not read into this
    /// reader's tables: here runs of objects made at the root without a key, a few bytes
    /// for any number (read, a thousand of them make an empty register).
    #[test]
    fn a_chunk_of_too_many_ops_is_left_to_automerge() {
        let owner = u("c01/k01/t01/v01");
        let saved = registered(1).save_nocompress();
        let made = |n: usize| {
            let (mut action, mut actor, mut ctr) = (Vec::new(), Vec::new(), Vec::new());
            for (col, value) in [(&mut action, MAKE_MAP), (&mut actor, 0)] {
                sleb(n as i64, col);
                leb(value, col);
            }
            sleb(n as i64, &mut ctr);
            sleb(1, &mut ctr);
            let empty: &[u8] = &[];
            let mut cols: Vec<(u64, &[u8])> = [
                OBJ_ACTOR, OBJ_CTR, KEY_ACTOR, KEY_CTR, KEY_STR, INSERT, VALUE_META, VALUE_RAW,
                SUCC_NUM, SUCC_ACTOR, SUCC_CTR,
            ]
            .into_iter()
            .map(|c| (c, empty))
            .collect();
            cols.extend([
                (ACTION, &action[..]),
                (ID_ACTOR, &actor[..]),
                (ID_CTR, &ctr[..]),
            ]);
            read(body(&with_op_columns(&saved, &cols)), &owner, 64 << 20)
        };
        let few = made(1_000).expect("read");
        assert!(few.members.is_empty());
        assert_eq!(made(MAX_OPS), Some(few));
        assert_eq!(made(MAX_OPS + 1), None);
    }

    /// What the reader does not model is left to automerge: a counter.
    #[test]
    fn a_counter_is_left_to_automerge() {
        let owner = u("c01/k01/t01/v01");
        let mut d = replicas().remove(0);
        let mut tx = d.transaction();
        let r = tx
            .put_object(ROOT, RecordId::from_u64(1).to_string(), ObjType::Map)
            .unwrap();
        tx.put(&r, "visits", automerge::ScalarValue::counter(1))
            .unwrap();
        tx.commit();
        assert!(read(body(&d.save()), &owner, 64 << 20).is_none());
    }
}
