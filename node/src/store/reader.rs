//! [`StoreReader`]: read-only access to the query views, from any thread.
//!
//! Readers open redb read transactions (MVCC snapshots) and never block the writer; they
//! never load an automerge document.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use grassroots_schema::{
    DocKind, Education, Gender, Level, Member, MemberCategory, MemberId, MemberStatus, Record,
    RecordRef, Role, Rollup, Selection, UnitId, UnitProfile,
};
use redb::{Database, ReadableDatabase, ReadableTable};

use super::backup::BackupInfo;
use super::tables::{
    FEED, FEED_EPOCH, FEED_KEY, META, OWNER, SECRETS, USERS, VIEW_MEMBERS, VIEW_ORDER,
    VIEW_RECORDS, VIEW_REFS, VIEW_ROLLUPS, VIEW_UNITS, records_key, rows_of,
};
use super::{StoreError, db, rollup};

/// A cloneable handle for reading the views. Shares the database with the store actor,
/// which alone writes.
#[derive(Clone, Debug)]
pub struct StoreReader {
    db: Arc<Database>,
    rollups: Arc<RollupCache>,
    /// Where [`StoreReader::backup`] writes (none for a store not opened from a file).
    backups: Option<PathBuf>,
    /// The store's file (none for another storage backend).
    file: Option<PathBuf>,
    /// Backups kept in the folder (none: no pruning).
    kept: Option<usize>,
    /// How this node's backups went (shared by every clone).
    backup_log: Arc<Mutex<BackupLog>>,
}

/// The last backup written and the last that failed, as this process saw them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupLog {
    /// The newest backup: when (ms since the epoch), where, how large. At start, the newest
    /// file found in the folder.
    pub last: Option<(u64, PathBuf, u64)>,
    /// The last failure since start: when and why (cleared by a backup that works).
    pub last_error: Option<(u64, String)>,
}

/// Decoded roll-up rows, each tagged with the commit count it was read at.
///
/// A city's roll-up row holds thousands of counts; decoding it took 40 us, most of an
/// indicator query's cost. The store actor bumps `commits` after every commit that changes a
/// roll-up row, so an entry tagged with an older count is read again: an answer never
/// reflects less than what was committed before the query began.
#[derive(Debug, Default)]
pub(super) struct RollupCache {
    commits: AtomicU64,
    rows: Mutex<HashMap<UnitId, (u64, Arc<Rollup>)>>,
}

/// Roll-ups kept decoded at most (units read most: the node's own and its children's).
const ROLLUP_CACHE_UNITS: usize = 512;

impl RollupCache {
    /// Called by the store actor after each commit that changed a roll-up row.
    pub(super) fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Release);
    }
}

/// A position in a listing: the row's first key (the unit's tree key, prefixed by the kind
/// for records of the other kinds) and the record id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCursor {
    /// `c01/k01/` form of the unit.
    pub tree_key: String,
    /// Record id.
    pub record: String,
}

/// Which members a listing shows: all, or only those every given condition keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberFilter {
    /// Only members of this status.
    pub status: Option<MemberStatus>,
    /// Only members in this category.
    pub category: Option<MemberCategory>,
    /// Only members whose name contains this (case-insensitive; already lower-cased).
    pub name: Option<String>,
    /// Only members of this education.
    pub education: Option<Education>,
    /// Only members of this gender.
    pub gender: Option<Gender>,
    /// Only members born in or after this year.
    pub born_from: Option<i64>,
    /// Only members born in or before this year.
    pub born_to: Option<i64>,
}

impl MemberFilter {
    /// Whether it keeps `m`.
    fn keeps(&self, m: &Member) -> bool {
        self.status.is_none_or(|s| m.status == s)
            && self.category.is_none_or(|c| m.categories.contains(&c))
            && self.name.as_deref().is_none_or(|n| name_holds(n, &m.name))
            && self.education.is_none_or(|e| m.education == e)
            && self.gender.is_none_or(|g| m.gender == g)
            && self.born_within(m.birth_year)
    }

    /// Whether a year of birth is within its range.
    fn born_within(&self, year: i64) -> bool {
        self.born_from.is_none_or(|f| year >= f) && self.born_to.is_none_or(|t| year <= t)
    }

    /// Whether it could keep a member whose sort key in a listing ordered `by` is `key`: false
    /// when the key alone shows it drops the row (a name without the text asked for, a year
    /// of birth out of the range), so that the row need not be read.
    fn could_keep(&self, by: super::MemberOrder, key: &str) -> bool {
        match by {
            super::MemberOrder::Name => self.name.as_deref().is_none_or(|n| name_holds(n, key)),
            super::MemberOrder::BirthYear => {
                SortKey::int_of(key).is_none_or(|y| self.born_within(y))
            }
            super::MemberOrder::JoinedOn => true,
        }
    }

    /// Whether it asks more than a status and a category, which the roll-ups count.
    fn beyond_rollups(&self) -> bool {
        self.name.is_some()
            || self.education.is_some()
            || self.gender.is_some()
            || self.born_from.is_some()
            || self.born_to.is_some()
    }
}

/// Whether `name` holds `text` (already lower-cased), whatever the case of its letters.
fn name_holds(text: &str, name: &str) -> bool {
    if name.is_ascii() {
        // Without lower-casing a copy of each name (a search passes over a city's 150,000):
        // an ASCII name's lower case is ASCII, so a text of other letters is never in it.
        let (name, text) = (name.as_bytes(), text.as_bytes());
        return text.is_empty()
            || name.windows(text.len()).any(|w| {
                w.iter()
                    .zip(text)
                    .all(|(a, b)| a.to_ascii_lowercase() == *b)
            });
    }
    name.to_lowercase().contains(text)
}

/// One page of a members listing.
#[derive(Debug, Clone)]
pub struct MemberPage {
    /// The members, each with the cursor that points at it.
    pub items: Vec<(MemberCursor, Member)>,
    /// Members in the whole listing (all pages).
    pub total: usize,
    /// Whether more follow the last item.
    pub has_next: bool,
}

/// A `users-1` row: `"unit role"` or `"unit role name"`.
fn parse_user(token_hash: &[u8], s: &str) -> Result<TokenUser, StoreError> {
    let (unit, rest) = s
        .split_once(' ')
        .ok_or_else(|| StoreError::Corrupt(format!("user row {s:?}")))?;
    let (role, name) = match rest.split_once(' ') {
        Some((r, n)) => (r, n.to_owned()),
        None => {
            let hex: String = token_hash
                .iter()
                .take(4)
                .map(|b| format!("{b:02x}"))
                .collect();
            (rest, format!("user-{hex}"))
        }
    };
    let unit = unit
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("{e}")))?;
    let role = role
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("{e}")))?;
    Ok(TokenUser { unit, role, name })
}

/// The hashes of the tokens of user `name` bound to `within` or a unit below it.
pub(super) fn users_named(
    database: &Database,
    name: &str,
    within: &UnitId,
) -> Result<Vec<[u8; 32]>, StoreError> {
    let tx = database.begin_read().map_err(db)?;
    let t = tx.open_table(USERS).map_err(db)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(db)? {
        let (k, v) = row.map_err(db)?;
        let u = parse_user(k.value(), v.value())?;
        if u.name == name
            && u.unit.is_in_subtree_of(within)
            && let Ok(hash) = <[u8; 32]>::try_from(k.value())
        {
            out.push(hash);
        }
    }
    Ok(out)
}

/// What a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUser {
    /// The unit.
    pub unit: UnitId,
    /// The role there.
    pub role: Role,
    /// Who it was issued to.
    pub name: String,
}

/// Which records a listing reads: those of `kind` owned by `unit` (or anywhere in its
/// subtree when `subtree`), `first` of them after `after`, and, when `count`, how many there
/// are in all (0 otherwise: counting reads the whole range).
#[derive(Debug, Clone, Copy)]
pub struct RecordQuery<'a> {
    /// The kind.
    pub kind: DocKind,
    /// The unit.
    pub unit: &'a UnitId,
    /// Whether its whole subtree.
    pub subtree: bool,
    /// Where the page starts.
    pub after: Option<&'a MemberCursor>,
    /// Page size.
    pub first: usize,
    /// Whether to count the whole listing.
    pub count: bool,
}

/// A row's place in an ordered listing: its value of the field ordered by, as text that sorts
/// as the value does (integers offset and zero-padded), or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey(pub Option<String>);

impl SortKey {
    /// The key of `field` of `r` (a field of `spec`'s kind): text as it is (dates sort as
    /// text), integers offset and padded, flags 0 and 1 (an unset flag as false, as the
    /// listings' filters take it); none when the record has no value.
    pub fn of_field(spec: &grassroots_schema::EntitySpec, field: &str, r: &Record) -> SortKey {
        SortKey::of_value(spec, field, r.fields.get(field))
    }

    /// [`SortKey::of_field`] of a record whose `field` holds `value`.
    fn of_value(
        spec: &grassroots_schema::EntitySpec,
        field: &str,
        value: Option<&grassroots_schema::Value>,
    ) -> SortKey {
        use grassroots_schema::Value;
        let flag = spec
            .field(field)
            .is_some_and(|f| matches!(f.ty, grassroots_schema::entities::FieldType::Bool));
        match value {
            None | Some(Value::Null) if flag => SortKey(Some("0".into())),
            Some(Value::Text(t)) => SortKey(Some(t.clone())),
            Some(Value::Int(i)) => SortKey::int(*i),
            Some(Value::Bool(b)) => SortKey(Some(u8::from(*b).to_string())),
            Some(Value::Null) | None => SortKey(None),
        }
    }

    /// The key of an integer.
    pub fn int(v: i64) -> SortKey {
        SortKey(Some(format!(
            "{:020}",
            i128::from(v) - i128::from(i64::MIN)
        )))
    }

    /// The integer whose key [`SortKey::int`] made `key`, if it is one.
    pub fn int_of(key: &str) -> Option<i64> {
        let offset: i128 = key.parse().ok()?;
        i64::try_from(offset + i128::from(i64::MIN)).ok()
    }
}

/// Where a page of an ordered listing starts: just after this key and row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderedCursor {
    /// The key of the last row shown.
    pub key: SortKey,
    /// That row.
    pub at: MemberCursor,
}

impl OrderedCursor {
    /// How rows `a` and `b` compare in a listing ordered `descending` or not: rows without
    /// a value last either way; the others by (key, unit, record), that order reversed when
    /// `descending` (as the sorted index reads backwards).
    pub fn cmp_in(a: &OrderedCursor, b: &OrderedCursor, descending: bool) -> std::cmp::Ordering {
        let none = |c: &OrderedCursor| c.key.0.is_none();
        none(a).cmp(&none(b)).then_with(|| {
            let o = (
                a.key.0.as_deref(),
                a.at.tree_key.as_str(),
                a.at.record.as_str(),
            )
                .cmp(&(
                    b.key.0.as_deref(),
                    b.at.tree_key.as_str(),
                    b.at.record.as_str(),
                ));
            if descending { o.reverse() } else { o }
        })
    }
}

/// One page of an ordered listing.
#[derive(Debug, Clone)]
pub struct OrderedPage<T> {
    /// The rows, each with the cursor that points at it.
    pub items: Vec<(OrderedCursor, T)>,
    /// Whether more follow the last one.
    pub has_next: bool,
    /// Rows in the whole listing.
    pub total: usize,
}

/// A listing ordered by `key` (`descending` or not), then by (unit, record).
pub struct Order<'a, T> {
    /// Each row's key.
    pub key: &'a dyn Fn(&T) -> SortKey,
    /// Greatest first.
    pub descending: bool,
}

/// `first` rows of `lo..hi` that `wanted` keeps, in `order`, after `after`; whether more
/// follow; and how many `wanted` keeps in all. Every row of the range is read (as a counted
/// listing's are), but only the `first + 1` that come next are held.
fn ordered_page<T: serde::de::DeserializeOwned>(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    lo: (&str, &str),
    hi: (&str, &str),
    order: &Order<'_, T>,
    after: Option<&OrderedCursor>,
    first: usize,
    wanted: impl Fn(&T) -> bool,
) -> Result<OrderedPage<T>, StoreError> {
    let mut next = Leading::new(first, after, order.descending);
    let mut total = 0;
    for row in t.range::<(&str, &str)>(lo..hi).map_err(db)? {
        let (k, v) = row.map_err(db)?;
        let item: T = decode(v.value())?;
        if !wanted(&item) {
            continue;
        }
        total += 1;
        let (tk, rec) = k.value();
        let c = OrderedCursor {
            key: (order.key)(&item),
            at: MemberCursor {
                tree_key: tk.to_owned(),
                record: rec.to_owned(),
            },
        };
        next.offer(c, || Ok(item))?;
    }
    let (items, has_next) = cut(next.rows, first);
    Ok(OrderedPage {
        items,
        has_next,
        total,
    })
}

/// The rows of an ordered listing that come first after a cursor, at most `first + 1` of
/// them, in order, as the listing's rows are offered one at a time.
struct Leading<'a, T> {
    rows: Vec<(OrderedCursor, T)>,
    first: usize,
    after: Option<&'a OrderedCursor>,
    descending: bool,
}

impl<'a, T> Leading<'a, T> {
    fn new(first: usize, after: Option<&'a OrderedCursor>, descending: bool) -> Self {
        Leading {
            rows: Vec::with_capacity(first + 1),
            first,
            after,
            descending,
        }
    }

    /// Offer the row at `c`; `item` makes it, only if it is held.
    fn offer(
        &mut self,
        c: OrderedCursor,
        item: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<(), StoreError> {
        let cmp =
            |a: &OrderedCursor, b: &OrderedCursor| OrderedCursor::cmp_in(a, b, self.descending);
        if self.after.is_some_and(|a| cmp(&c, a).is_le()) {
            return Ok(());
        }
        let full = self.rows.len() > self.first;
        if full && self.rows.last().is_some_and(|(l, _)| cmp(&c, l).is_ge()) {
            return Ok(());
        }
        let at = self.rows.partition_point(|(x, _)| cmp(x, &c).is_lt());
        self.rows.insert(at, (c, item()?));
        self.rows.truncate(self.first + 1);
        Ok(())
    }
}

/// [`ordered_page`] of a record listing whose every row is kept (the caller reads them all
/// and nothing filters them), by `field` of `spec`'s kind: each row's key is read from its
/// bytes without decoding the rest ([`field_of_row`]); the bytes of the rows that enter the
/// page being made are kept (about `first x ln(rows / first)` of them), and only the page's
/// `first + 1` decoded, where reading the listing decodes every row. (A row malformed
/// elsewhere than in that field fails the listing only when it is on the page.)
fn ordered_by_field(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    (lo, hi): ((&str, &str), (&str, &str)),
    spec: &grassroots_schema::EntitySpec,
    field: &str,
    descending: bool,
    after: Option<&OrderedCursor>,
    first: usize,
) -> Result<OrderedPage<Record>, StoreError> {
    let mut next = Leading::new(first, after, descending);
    let mut total = 0;
    for row in t.range::<(&str, &str)>(lo..hi).map_err(db)? {
        let (k, v) = row.map_err(db)?;
        total += 1;
        let bytes = v.value();
        let value = field_of_row(bytes, field).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (tk, rec) = k.value();
        let c = OrderedCursor {
            key: SortKey::of_value(spec, field, value.as_ref()),
            at: MemberCursor {
                tree_key: tk.to_owned(),
                record: rec.to_owned(),
            },
        };
        next.offer(c, || Ok(bytes.to_vec()))?;
    }
    let mut rows = Vec::with_capacity(next.rows.len());
    for (c, bytes) in next.rows {
        rows.push((c, decode::<Record>(&bytes)?));
    }
    let (items, has_next) = cut(rows, first);
    Ok(OrderedPage {
        items,
        has_next,
        total,
    })
}

/// The value of `field` in a record row's bytes (its JSON: `{"id": ..., "fields": {...},
/// ...}`), the rest of the row passed over without being decoded; an error where the bytes
/// are not one JSON object.
fn field_of_row(
    bytes: &[u8],
    field: &str,
) -> Result<Option<grassroots_schema::Value>, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut row = serde_json::Deserializer::from_slice(bytes);
    let seed = At {
        key: "fields",
        seed: At {
            key: field,
            seed: std::marker::PhantomData::<grassroots_schema::Value>,
        },
    };
    let found = seed.deserialize(&mut row)?;
    row.end()?;
    Ok(found.flatten())
}

/// The value at `key` of a JSON map, read by `seed` (the last, if the key comes twice), the
/// other entries passed over undecoded.
#[derive(Clone, Copy)]
struct At<'a, S> {
    key: &'a str,
    seed: S,
}

/// Whether a map key is `.0`, compared where it lies (no copy made).
struct KeyIs<'a>(&'a str);

impl<'de> serde::de::DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

impl<'de, S: serde::de::DeserializeSeed<'de> + Copy> serde::de::DeserializeSeed<'de> for At<'_, S> {
    type Value = Option<S::Value>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: serde::de::DeserializeSeed<'de> + Copy> serde::de::Visitor<'de> for At<'_, S> {
    type Value = Option<S::Value>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a map with {:?}", self.key)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(hit) = map.next_key_seed(KeyIs(self.key))? {
            if hit {
                found = Some(map.next_value_seed(self.seed)?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A page from the `first + 1` rows read at most: the first `first`, and whether one more
/// was there.
fn cut<C, T>(mut rows: Vec<(C, T)>, first: usize) -> (Vec<(C, T)>, bool) {
    let more = rows.len() > first;
    rows.truncate(first);
    (rows, more)
}

/// Where a reader of the record feed stands: the feed's epoch and the last position read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FeedPosition {
    /// The feed's epoch (a random number drawn when its positions began); see [`FEED_EPOCH`].
    pub epoch: u64,
    /// The last position read (0: none yet).
    pub at: u64,
}

/// A [`FeedPosition`] sealed with the store's feed key ([`FEED_KEY`], ChaCha20-Poly1305 under
/// a random nonce), as a reader is given it: positions count every write at the node, which
/// a caller who may read only part of it must not learn, and a cursor opens only at the
/// store that sealed it (or a restore of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedCursor(Vec<u8>);

/// Bytes of a sealed position: nonce, epoch and position, tag.
const CURSOR_LEN: usize = ring::aead::NONCE_LEN + 16 + 16;

impl std::fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl std::str::FromStr for FeedCursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match hex::decode(s) {
            Ok(b) if b.len() == CURSOR_LEN => Ok(FeedCursor(b)),
            _ => Err(format!("{s:?} is not a feed cursor")),
        }
    }
}

/// The cipher of the store's feed key, read in `tx`.
fn feed_key(tx: &redb::ReadTransaction) -> Result<ring::aead::LessSafeKey, StoreError> {
    let secrets = tx.open_table(SECRETS).map_err(db)?;
    let key = secrets
        .get(FEED_KEY)
        .map_err(db)?
        .ok_or_else(|| StoreError::Corrupt("no feed key".into()))?;
    let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key.value())
        .map_err(|_| StoreError::Corrupt("a feed key of the wrong size".into()))?;
    Ok(ring::aead::LessSafeKey::new(key))
}

impl FeedPosition {
    fn seal(&self, key: &ring::aead::LessSafeKey) -> Result<FeedCursor, StoreError> {
        let nonce: [u8; ring::aead::NONCE_LEN] = super::random_bytes()?;
        let mut text = [self.epoch.to_le_bytes(), self.at.to_le_bytes()].concat();
        key.seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::empty(),
            &mut text,
        )
        .map_err(|_| StoreError::Corrupt("sealing a feed cursor".into()))?;
        Ok(FeedCursor([nonce.as_slice(), &text].concat()))
    }

    /// The position `cursor` holds, if it was sealed with `key`.
    fn open(cursor: &FeedCursor, key: &ring::aead::LessSafeKey) -> Option<FeedPosition> {
        let (nonce, sealed) = cursor.0.split_at(ring::aead::NONCE_LEN);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut text = sealed.to_vec();
        let plain = key
            .open_in_place(nonce, ring::aead::Aad::empty(), &mut text)
            .ok()?;
        let (epoch, at) = plain.split_at(8);
        Some(FeedPosition {
            epoch: u64::from_le_bytes(epoch.try_into().ok()?),
            at: u64::from_le_bytes(at.try_into().ok()?),
        })
    }
}

/// One entry of the record feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// Its position.
    pub at: u64,
    /// The record written or removed.
    pub record: RecordRef,
    /// Whether its row was removed (the record deleted).
    pub deleted: bool,
}

/// The view rows of a feed page's records, read in the transaction that read the page's
/// entries: one consistent view, and no transaction per entry.
pub struct FeedRows {
    members: redb::ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    records: redb::ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
}

impl FeedRows {
    /// The member `id`, if its row is there.
    pub fn member(&self, id: &MemberId) -> Result<Option<Member>, StoreError> {
        member_row(&self.members, id)
    }

    /// The record `id` of the other kinds, if its row is there.
    pub fn record(&self, id: &RecordRef) -> Result<Option<Record>, StoreError> {
        record_row(&self.records, id)
    }
}

/// The member `id`'s row in `t`, if there.
fn member_row(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    id: &MemberId,
) -> Result<Option<Member>, StoreError> {
    let key = id.unit.tree_key();
    let rec = id.record.to_string();
    match t.get((key.as_str(), rec.as_str())).map_err(db)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

/// The record `id`'s row in `t`, if there.
fn record_row(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    id: &RecordRef,
) -> Result<Option<Record>, StoreError> {
    let key = records_key(id.kind, &id.unit);
    let rec = id.record.to_string();
    match t.get((key.as_str(), rec.as_str())).map_err(db)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

/// What [`StoreReader::feed`] read.
#[derive(Debug, Clone)]
pub struct FeedPage<T> {
    /// Entries of the subtree asked for, in position order, each with what the reader's
    /// filter made of it.
    pub entries: Vec<(FeedEntry, T)>,
    /// Where the next read starts: the last position looked at (the one asked from when
    /// there was nothing past it), sealed.
    pub next: FeedCursor,
    /// Whether the feed holds entries past `next`.
    pub more: bool,
    /// The cursor asked from belonged to another epoch (a rebuild or a restore came in
    /// between) or to another store: the entries are read from the start.
    pub reset: bool,
}

/// One page of a listing of records of the other kinds.
#[derive(Debug, Clone)]
pub struct RecordPage {
    /// The records, each with the cursor that points at it.
    pub items: Vec<(MemberCursor, Record)>,
    /// Records in the whole listing (all pages).
    pub total: usize,
    /// Whether more follow the last item.
    pub has_next: bool,
}

/// `first` rows in `lo..hi` after `after` that `wanted` keeps, and whether more follow.
/// The page starts just after the cursor, never before the listing's own range (a cursor
/// from elsewhere must not open another unit's rows).
fn page<T: serde::de::DeserializeOwned>(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    lo: (&str, &str),
    hi: (&str, &str),
    after: Option<&MemberCursor>,
    first: usize,
    wanted: impl Fn(&T) -> bool,
) -> Result<(Vec<(MemberCursor, T)>, bool), StoreError> {
    Ok(page_within(t, (lo, hi), after, first, wanted, usize::MAX)?.0)
}

/// A page's rows, each with its cursor, and whether more follow.
type Page<T> = (Vec<(MemberCursor, T)>, bool);

/// [`page`], reading `budget` rows at most: with whether it read all it needed (false: the
/// budget ran out first, and the page may lack rows).
fn page_within<T: serde::de::DeserializeOwned>(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    (lo, hi): ((&str, &str), (&str, &str)),
    after: Option<&MemberCursor>,
    first: usize,
    wanted: impl Fn(&T) -> bool,
    budget: usize,
) -> Result<(Page<T>, bool), StoreError> {
    let start = match after {
        Some(a) if (a.tree_key.as_str(), a.record.as_str()) >= hi => {
            return Ok(((Vec::new(), false), true));
        }
        Some(a) if (a.tree_key.as_str(), a.record.as_str()) >= lo => {
            Bound::Excluded((a.tree_key.as_str(), a.record.as_str()))
        }
        _ => Bound::Included(lo),
    };
    let mut items = Vec::new();
    for (read, row) in t
        .range::<(&str, &str)>((start, Bound::Excluded(hi)))
        .map_err(db)?
        .enumerate()
    {
        if read == budget {
            return Ok(((items, false), false));
        }
        let (k, v) = row.map_err(db)?;
        let item: T = decode(v.value())?;
        if !wanted(&item) {
            continue;
        }
        if items.len() == first {
            return Ok(((items, true), true));
        }
        let (tk, rec) = k.value();
        let cursor = MemberCursor {
            tree_key: tk.to_owned(),
            record: rec.to_owned(),
        };
        items.push((cursor, item));
    }
    Ok(((items, false), true))
}

/// An ordered page's rows, each with its cursor, and whether more follow.
type OrderedRows<T> = (Vec<(OrderedCursor, T)>, bool);

/// What [`walk_index`]'s `fetch` makes of an entry.
enum Fetched<T> {
    /// The entry's row, for the page.
    Row(T),
    /// Passed over.
    Skip,
    /// The walk stops without a page (it read as many rows as it may): the caller reads the
    /// listing another way.
    GiveUp,
}

/// A page of rows through the sorted index, and whether more follow: `first` rows, in order, from the index's
/// `sections` (first key parts, each with whether its entries hold a value: rows without
/// one come after the others, in a section of their own) walked one after another (each
/// backwards when `descending`), from just after `after`; in the sections of values, only
/// the keys `within` (from the first, before the second) when given. `fetch` reads an
/// entry's row (by sort key, unit tree key and record), passes it over, or gives the walk
/// up (then none).
fn walk_index<T>(
    index: &impl ReadableTable<(&'static str, &'static str, &'static str, &'static str), &'static [u8]>,
    sections: &[(String, bool)],
    within: Option<(&str, &str)>,
    after: Option<&OrderedCursor>,
    descending: bool,
    first: usize,
    mut fetch: impl FnMut(&str, &str, &str) -> Result<Fetched<T>, StoreError>,
) -> Result<Option<OrderedRows<T>>, StoreError> {
    let mut items = Vec::with_capacity(first + 1);
    // The cursor's section (by whether its key holds a value); none precedes the first.
    let start = match after {
        None => Some(0),
        Some(a) => sections
            .iter()
            .position(|(_, valued)| *valued == a.key.0.is_some()),
    };
    let Some(start) = start else {
        // A cursor no section holds (a row without a value where every row has one):
        // nothing sorts after it.
        return Ok(Some((items, false)));
    };
    for (i, (name, valued)) in sections.iter().enumerate().skip(start) {
        let end = format!("{name}\0");
        let (lo, hi) = match within.filter(|_| *valued) {
            Some((from, to)) => ((name.as_str(), from, "", ""), (name.as_str(), to, "", "")),
            None => ((name.as_str(), "", "", ""), (end.as_str(), "", "", "")),
        };
        let at = after.filter(|_| i == start).map(|a| {
            (
                name.as_str(),
                a.key.0.as_deref().unwrap_or(""),
                a.at.tree_key.as_str(),
                a.at.record.as_str(),
            )
        });
        // The cursor narrows the range from its side, unless it lies outside it (then the
        // range is whole, or empty).
        let bounds = match (at, descending) {
            (None, _) => (Bound::Included(lo), Bound::Excluded(hi)),
            (Some(a), false) if a >= hi => continue,
            (Some(a), false) if a >= lo => (Bound::Excluded(a), Bound::Excluded(hi)),
            (Some(a), true) if a <= lo => continue,
            (Some(a), true) if a < hi => (Bound::Included(lo), Bound::Excluded(a)),
            (Some(_), _) => (Bound::Included(lo), Bound::Excluded(hi)),
        };
        let range = index
            .range::<(&str, &str, &str, &str)>(bounds)
            .map_err(db)?;
        let entries: Box<dyn Iterator<Item = _>> = if descending {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        for entry in entries {
            let (k, _) = entry.map_err(db)?;
            let (_, sort, tree, record) = k.value();
            let row = match fetch(sort, tree, record)? {
                Fetched::Row(row) => row,
                Fetched::Skip => continue,
                Fetched::GiveUp => return Ok(None),
            };
            let c = OrderedCursor {
                key: SortKey(valued.then(|| sort.to_owned())),
                at: MemberCursor {
                    tree_key: tree.to_owned(),
                    record: record.to_owned(),
                },
            };
            items.push((c, row));
            if items.len() > first {
                return Ok(Some(cut(items, first)));
            }
        }
    }
    Ok(Some(cut(items, first)))
}

/// Records a unit below a city or county node holds at least for its ordered listing to be
/// read through the node's sorted index (a walk that passes over the other units' entries)
/// rather than whole. (A handful in unit tests, so that their small stores take both ways.)
const WALK_BELOW: usize = if cfg!(test) { 4 } else { 2_000 };

/// Rows a walk through the sorted index reads and passes over (the listing's filter does not
/// keep them) before it gives up for reading the listing whole: about 5 ms, what a filter
/// that keeps few may cost on top of reading whole. (A handful in unit tests.)
const WALK_PASSED: usize = if cfg!(test) { 4 } else { 2_000 };

/// Other units' entries a walk of a unit below the node passes over by their keys before it
/// gives up for reading the listing whole (about 10 ms: a unit's records may all lie far
/// along the walk, old ones asked latest first). (A handful in unit tests.)
const WALK_SKIPPED: usize = if cfg!(test) { 16 } else { 100_000 };

/// What a record listing's `wanted` keeps, as far as the store may know it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// Only records whose period field lies within these months (counted from year 0, as
    /// [`grassroots_schema::entities::period_months`] counts them).
    pub period: Option<(i64, i64)>,
    /// It keeps every record of the listing within the period (every record when there is
    /// none), and no other: the caller reads them all and no other filter is set. A count is
    /// then made from keys alone.
    pub all_within: bool,
}

/// The sort keys that the values of `spec`'s period field within `months` have (from, and
/// before): a date's `YYYY-MM-DD` from the first month's `YYYY-MM` and before the month
/// after the last (as `YYYY-13` when that is December); a year's [`SortKey::int`]. None
/// for a field of another type.
fn period_keys(
    spec: &grassroots_schema::EntitySpec,
    (from, to): (i64, i64),
) -> Option<(String, String)> {
    use grassroots_schema::entities::FieldType;
    let month =
        |m: i64, next: i64| format!("{:04}-{:02}", m.div_euclid(12), m.rem_euclid(12) + 1 + next);
    match spec.field(spec.period_field)?.ty {
        FieldType::Date => Some((month(from, 0), month(to, 1))),
        FieldType::Int { .. } => Some((
            SortKey::int(from.div_euclid(12)).0?,
            SortKey::int(to.div_euclid(12).checked_add(1)?).0?,
        )),
        _ => None,
    }
}

/// The records of `spec`'s kind within the period `months`, whose period field's keys lie
/// `within` the keys given ([`period_keys`]), in the node's own subtree, as (unit tree key,
/// record) in stored order: from the sorted index, keys alone (each checked, as the
/// listing's filter checks the value).
fn period_entries(
    tx: &redb::ReadTransaction,
    spec: &grassroots_schema::EntitySpec,
    (from, to): (&str, &str),
    months: (i64, i64),
) -> Result<Vec<(String, String)>, StoreError> {
    use grassroots_schema::{Value, entities::FieldType};
    let int = spec
        .field(spec.period_field)
        .is_some_and(|f| matches!(f.ty, FieldType::Int { .. }));
    // Records with a value, the only ones within a period.
    let section = super::order::record_section(spec.kind, spec.period_field, true);
    let range = (section.as_str(), from, "", "")..(section.as_str(), to, "", "");
    entries_where(tx, range, |key| {
        let value = match int {
            true => SortKey::int_of(key).map(Value::Int),
            false => Some(Value::Text(key.to_owned())),
        };
        value.is_some_and(|v| grassroots_schema::entities::in_period(months, &v))
    })
}

/// The sorted index's entries in `range` whose sort key `keep` passes, as (unit tree key,
/// record), keys alone (no row read), in stored order: the order of the rows' table, so
/// that reading their rows goes through its pages once.
fn entries_where(
    tx: &redb::ReadTransaction,
    range: std::ops::Range<(&str, &str, &str, &str)>,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<(String, String)>, StoreError> {
    let index = tx.open_table(VIEW_ORDER).map_err(db)?;
    let mut found = Vec::new();
    for entry in index.range::<(&str, &str, &str, &str)>(range).map_err(db)? {
        let (k, _) = entry.map_err(db)?;
        let (_, key, tree, record) = k.value();
        if keep(key) {
            found.push((tree.to_owned(), record.to_owned()));
        }
    }
    found.sort();
    Ok(found)
}

/// The record row of `tree`/`record` of the kind `kind_key` (`kind|`) names, which the index
/// names.
fn indexed_record(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    kind_key: &str,
    tree: &str,
    record: &str,
) -> Result<Record, StoreError> {
    indexed_row(t, &format!("{kind_key}{tree}"), record)
}

/// Rows read at most, in stored order, by a name search that does not count before it
/// looks the names up in the sorted index instead: a common name fills a page within the
/// first rows (about a millisecond), a rare one is found in the index (about 20 ms for a
/// city's 150,000, where reading every row takes 84 ms).
/// (A handful in unit tests, so that their small stores take both ways.)
const NAME_SCAN_BUDGET: usize = if cfg!(test) { 8 } else { 2_000 };

/// The members of the node's own subtree whose name holds `name` (lower-cased), as (unit
/// tree key, record) in stored order: found in the sorted index's name section, keys alone,
/// no row read.
fn name_matches(
    tx: &redb::ReadTransaction,
    name: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let section = super::MemberOrder::Name.as_str();
    let end = format!("{section}\0");
    let range = (section, "", "", "")..(end.as_str(), "", "", "");
    entries_where(tx, range, |key| name_holds(name, key))
}

/// Whether `filter` asks the name alone (every row whose name holds the text is kept).
fn name_only(filter: &MemberFilter) -> bool {
    *filter
        == MemberFilter {
            name: filter.name.clone(),
            ..MemberFilter::default()
        }
}

/// The row of `tree`/`record` (a member's; with its kind before the unit, a record's), which
/// the index names.
fn indexed_row<T: serde::de::DeserializeOwned>(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    tree: &str,
    record: &str,
) -> Result<T, StoreError> {
    let row = t
        .get((tree, record))
        .map_err(db)?
        .ok_or_else(|| StoreError::Corrupt(format!("index entry {tree}{record}: no row")))?;
    decode(row.value())
}

/// How many of `found` (a name search's matches) `filter` keeps: all of them for the name
/// alone, otherwise each row read.
fn count_kept(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    found: &[(String, String)],
    filter: &MemberFilter,
) -> Result<usize, StoreError> {
    if name_only(filter) {
        return Ok(found.len());
    }
    let mut n = 0;
    for (tree, record) in found {
        n += usize::from(filter.keeps(&indexed_row(t, tree, record)?));
    }
    Ok(n)
}

/// The node's own subtree's members whose name holds `name` (lower-cased), and that the
/// rest of `filter` keeps, in stored (unit, record) order, `first` of them after `after`,
/// from the index's [`name_matches`]: only the rows found are read (and, for a count with
/// more than the name, all of them).
fn by_name(
    tx: &redb::ReadTransaction,
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    name: &str,
    filter: &MemberFilter,
    after: Option<&MemberCursor>,
    first: usize,
    count: bool,
) -> Result<MemberPage, StoreError> {
    let found = name_matches(tx, name)?;
    let after = after.map(|a| (a.tree_key.as_str(), a.record.as_str()));
    let mut items = Vec::new();
    for (tree, record) in &found {
        if after.is_some_and(|a| (tree.as_str(), record.as_str()) <= a) {
            continue;
        }
        let m = indexed_row(t, tree, record)?;
        if !filter.keeps(&m) {
            continue;
        }
        let cursor = MemberCursor {
            tree_key: tree.clone(),
            record: record.clone(),
        };
        items.push((cursor, m));
        if items.len() > first {
            break;
        }
    }
    let (items, has_next) = cut(items, first);
    let total = if count {
        count_kept(t, &found, filter)?
    } else {
        0
    };
    Ok(MemberPage {
        items,
        total,
        has_next,
    })
}

/// How many members of the listing `lo..hi` (of `unit`, or its `subtree`) `filter` keeps:
/// the subtree's roll-up row (read in `tx`, so it matches the rows) when the filter asks
/// only what roll-ups count; otherwise, and for a unit's own register, the rows counted,
/// and only when `count` asks (0 when it does not).
fn member_total(
    tx: &redb::ReadTransaction,
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    unit: &UnitId,
    subtree: bool,
    filter: &MemberFilter,
    (lo, hi): ((&str, &str), (&str, &str)),
    count: bool,
) -> Result<usize, StoreError> {
    if subtree && !filter.beyond_rollups() {
        usize::try_from(rollup_kept(tx, unit, filter)?).map_err(|_| {
            StoreError::Corrupt(format!("a roll-up past this machine's size at {unit}"))
        })
    } else if !count {
        Ok(0)
    } else if *filter != MemberFilter::default() {
        let mut n = 0;
        for row in t.range::<(&str, &str)>(lo..hi).map_err(db)? {
            let (_, v) = row.map_err(db)?;
            n += usize::from(filter.keeps(&decode(v.value())?));
        }
        Ok(n)
    } else {
        range_len(t, (lo, hi))
    }
}

/// The members of `unit`'s subtree that `filter` keeps, by its roll-up row, for a filter of
/// at most a status and a category.
fn rollup_kept(
    tx: &redb::ReadTransaction,
    unit: &UnitId,
    filter: &MemberFilter,
) -> Result<u64, StoreError> {
    kept_in(unit, rollup_row(tx, unit)?.as_ref(), filter)
}

/// `unit`'s roll-up row, if it has one.
fn rollup_row(tx: &redb::ReadTransaction, unit: &UnitId) -> Result<Option<Rollup>, StoreError> {
    rollup_in(&tx.open_table(VIEW_ROLLUPS).map_err(db)?, unit, None)
}

/// `unit`'s roll-up row in `t`, if it has one: only the parts `wanted` names, or all.
fn rollup_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    unit: &UnitId,
    wanted: Option<&Selection>,
) -> Result<Option<Rollup>, StoreError> {
    let key = unit.tree_key();
    let row = t.get(key.as_str()).map_err(db)?;
    row.map(|v| rollup::read(&key, v.value(), wanted))
        .transpose()
}

/// The members `filter` keeps by `unit`'s roll-up row `rollup` (none: no member).
fn kept_in(
    unit: &UnitId,
    rollup: Option<&Rollup>,
    filter: &MemberFilter,
) -> Result<u64, StoreError> {
    let n = match rollup {
        Some(rollup) => match (filter.category, filter.status) {
            (Some(c), s) => rollup.in_category(c, s),
            (None, Some(s)) => rollup.by_status.get(s.as_str()).copied().unwrap_or(0),
            (None, None) => rollup.members,
        },
        None => 0,
    };
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative roll-up at {unit}")))
}

/// Whether a subtree listing of `unit` at the node of `me` reads through the sorted index:
/// the node's own, whenever the node keeps one; a unit's below it when the filter is one
/// the roll-ups count and the walk is the cheaper ([`super::order::walk_below`]).
pub(super) fn through_index(
    tx: &redb::ReadTransaction,
    me: Option<&UnitId>,
    unit: &UnitId,
    filter: &MemberFilter,
    first: usize,
) -> Result<bool, StoreError> {
    let Some(me) = me.filter(|me| super::order::indexes(me) && unit.is_in_subtree_of(me)) else {
        return Ok(false);
    };
    if unit == me {
        return Ok(true);
    }
    if filter.beyond_rollups() {
        return Ok(false);
    }
    let held = rollup_kept(tx, me, &MemberFilter::default())?;
    // The unit's row read once for both.
    let row = rollup_row(tx, unit)?;
    let rows = kept_in(unit, row.as_ref(), &MemberFilter::default())?;
    let kept = kept_in(unit, row.as_ref(), filter)?;
    Ok(super::order::walk_below(first, held, rows, kept))
}

/// How many records of the listing `lo..hi` `wanted` keeps, every row read.
fn records_kept(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    (lo, hi): ((&str, &str), (&str, &str)),
    wanted: &dyn Fn(&Record) -> bool,
) -> Result<usize, StoreError> {
    let mut n = 0;
    for row in t.range::<(&str, &str)>(lo..hi).map_err(db)? {
        let (_, v) = row.map_err(db)?;
        n += usize::from(wanted(&decode(v.value())?));
    }
    Ok(n)
}

/// How many records of the listing `lo..hi` of `kind` `wanted` keeps. Within a period, for
/// the node's own listing (`own`: the sorted index holds it whole), from the index's
/// entries of the period: their number when `filter` says `wanted` keeps every record
/// within it, else each of their rows read. Otherwise the listing's keys counted when
/// `wanted` keeps every record (no period, nothing else), else each row read.
fn listing_size(
    tx: &redb::ReadTransaction,
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    kind: DocKind,
    own: bool,
    (lo, hi): ((&str, &str), (&str, &str)),
    filter: RecordFilter,
    wanted: &dyn Fn(&Record) -> bool,
) -> Result<usize, StoreError> {
    let indexed = match (own, filter.period, grassroots_schema::entity(kind)) {
        (true, Some(months), Some(spec)) => period_keys(spec, months).map(|w| (spec, w, months)),
        _ => None,
    };
    if let Some((spec, (from, to), months)) = indexed {
        let entries = period_entries(tx, spec, (&from, &to), months)?;
        if filter.all_within {
            return Ok(entries.len());
        }
        let kind_key = format!("{}|", kind.as_str());
        let mut n = 0;
        for (tree, record) in entries {
            n += usize::from(wanted(&indexed_record(t, &kind_key, &tree, &record)?));
        }
        return Ok(n);
    }
    if !(filter.all_within && filter.period.is_none()) {
        return records_kept(t, (lo, hi), wanted);
    }
    range_len(t, (lo, hi))
}

/// How many rows `lo..hi` holds, their keys counted (no row decoded).
fn range_len(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    (lo, hi): ((&str, &str), (&str, &str)),
) -> Result<usize, StoreError> {
    let mut n = 0;
    for row in t.range::<(&str, &str)>(lo..hi).map_err(db)? {
        row.map_err(db)?;
        n += 1;
    }
    Ok(n)
}

/// Whether a listing of `unit` (its `subtree`) is the whole of what the node of the store
/// read in `tx` holds, and that node keeps the sorted index: its listings are all there.
fn own_indexed(
    tx: &redb::ReadTransaction,
    unit: &UnitId,
    subtree: bool,
) -> Result<bool, StoreError> {
    if !(subtree && super::order::indexes(unit)) {
        return Ok(false);
    }
    let me = super::order::store_unit(&tx.open_table(OWNER).map_err(db)?)?;
    Ok(me.as_ref() == Some(unit))
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The keys a listing spans in a table keyed (`prefix` + unit tree key, record id): its
/// first key, and the key pair the range ends before. Without `subtree`, the unit's own
/// rows; with it, every row of the units below too.
fn listing(prefix: &str, unit: &UnitId, subtree: bool) -> (String, (String, &'static str)) {
    let tree = unit.tree_key();
    let key = format!("{prefix}{tree}");
    let end = if subtree {
        (format!("{prefix}{}", prefix_end(&tree)), "")
    } else {
        (key.clone(), "~")
    };
    (key, end)
}

/// The smallest string greater than every string starting with `prefix` (which ends in '/').
fn prefix_end(prefix: &str) -> String {
    // '/' + 1 == '0'; tree keys end in '/', so this bounds the whole subtree.
    let mut s = prefix.trim_end_matches('/').to_owned();
    s.push('0');
    s
}

impl StoreReader {
    pub(super) fn new(db: Arc<Database>, rollups: Arc<RollupCache>) -> Self {
        StoreReader {
            db,
            rollups,
            backups: None,
            file: None,
            kept: None,
            backup_log: Arc::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn db_for_tests(&self) -> &Database {
        &self.db
    }

    /// Backups of the store at `file` go to `backups/` beside it.
    pub(super) fn with_file(self, file: PathBuf) -> Self {
        StoreReader {
            backups: Some(super::backup::backup_dir(&file)),
            file: Some(file),
            ..self
        }
    }

    /// How this node's backups went: the newest (at start, the newest file in the folder)
    /// and the last failure since.
    pub fn backup_log(&self) -> BackupLog {
        let mut log = self
            .backup_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if log.last.is_none()
            && let (Some(dir), Ok(Some(owner))) =
                (self.backups.as_deref(), super::backup::owner_of(&self.db))
        {
            log.last = super::backup::newest_backup_file(dir, &owner);
        }
        log
    }

    /// Send [`StoreReader::backup`]'s copies to `dir` instead (another disk).
    pub fn with_backup_dir(self, dir: PathBuf) -> Self {
        StoreReader {
            backups: Some(dir),
            ..self
        }
    }

    /// The folder [`StoreReader::backup`] writes to.
    pub fn backup_dir(&self) -> Option<&Path> {
        self.backups.as_deref()
    }

    /// Keep this many backups in the folder: after each backup the oldest beyond this many
    /// are removed, and a backup that does not fit first removes the oldest (its room is the
    /// new copy's).
    pub fn with_backups_kept(self, keep: usize) -> Self {
        StoreReader {
            kept: Some(keep.max(1)),
            ..self
        }
    }

    /// Write a consistent copy of the whole store into the backup folder, named for
    /// `now_ms` ([`super::backup::backup_name`], a millisecond later if that name is taken),
    /// while writes go on; then prune the folder to the backups kept. Blocking: it reads
    /// the whole store.
    pub fn backup(&self, now_ms: u64) -> Result<BackupInfo, StoreError> {
        use super::backup::{backup_name, prune_backups};
        let dir = self.backups.as_deref().ok_or_else(|| StoreError::Io {
            what: "backing up".into(),
            source: std::io::Error::other("this store was not opened from a file"),
        })?;
        let owner = super::backup::owner_of(&self.db)?.unwrap_or_default();
        let free_name = || {
            (now_ms..now_ms.saturating_add(1000))
                .map(|ms| dir.join(backup_name(&owner, ms)))
                .find(|p| !p.exists())
                .unwrap_or_else(|| dir.join(backup_name(&owner, now_ms)))
        };
        // Rotation: when the new copy does not fit, the oldest goes first and its room is
        // the new copy's; otherwise nothing is pruned until the new copy is written, so that
        // a backup that fails (another being written, a disk error) costs none. With one
        // kept, the only copy stays until a new one is written.
        let no_room = |e: &StoreError| matches!(e, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull);
        let written = match (self.backup_to(&free_name()), self.kept.filter(|k| *k >= 2)) {
            (Err(e), Some(keep)) if no_room(&e) => prune_backups(dir, &owner, keep - 1, None)
                .and_then(|_| self.backup_to(&free_name())),
            (written, _) => written,
        };
        {
            let mut log = self.backup_log.lock().unwrap_or_else(|p| p.into_inner());
            match &written {
                Ok(info) => {
                    log.last = Some((now_ms, info.path.clone(), info.bytes));
                    log.last_error = None;
                }
                Err(e) => log.last_error = Some((now_ms, e.to_string())),
            }
        }
        let info = written?;
        if let Some(keep) = self.kept
            && let Err(e) = prune_backups(dir, &owner, keep, Some(&info.path))
        {
            tracing::warn!("old backups not pruned: {e}");
        }
        Ok(info)
    }

    /// Write a consistent copy of the whole store to `out` (which must not exist yet).
    pub fn backup_to(&self, out: &Path) -> Result<BackupInfo, StoreError> {
        super::backup::write_backup(&self.db, out, self.file.as_deref())
    }

    /// Counts over the members of `id`'s whole subtree, as this node holds them: one row,
    /// whatever the size of the subtree. Empty when it holds no member there.
    pub fn rollup(&self, id: &UnitId) -> Result<Arc<Rollup>, StoreError> {
        self.rollups(std::slice::from_ref(id))?
            .remove(id)
            .ok_or_else(|| StoreError::Corrupt(format!("roll-up of {id} not read")))
    }

    /// The roll-ups of several units, from the decoded ones still current and one read
    /// transaction for the rest (what a tree query needs for one level).
    pub fn rollups(&self, ids: &[UnitId]) -> Result<HashMap<UnitId, Arc<Rollup>>, StoreError> {
        // The count is taken before the read: a commit in between makes an entry look
        // older than it is (read again next time), never newer.
        let commits = self.rollups.commits.load(Ordering::Acquire);
        let mut out = HashMap::with_capacity(ids.len());
        if let Ok(rows) = self.rollups.rows.lock() {
            for id in ids {
                if let Some((at, r)) = rows.get(id)
                    && *at == commits
                {
                    out.insert(id.clone(), r.clone());
                }
            }
        }
        let missing: Vec<&UnitId> = ids.iter().filter(|id| !out.contains_key(*id)).collect();
        if missing.is_empty() {
            return Ok(out);
        }
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(VIEW_ROLLUPS).map_err(db)?;
        for id in missing {
            let rollup = Arc::new(rollup_in(&t, id, None)?.unwrap_or_default());
            self.remember(id, commits, &rollup);
            out.insert(id.clone(), rollup);
        }
        Ok(out)
    }

    /// The roll-ups of several units, only the parts `wanted` names, read in one
    /// transaction and not kept in the cache: for a comparison over thousands of units (a
    /// city's villages), whose rows decoded whole would take most of the time and push the
    /// rows read most out of the cache. In the order of `ids`; a unit without a row has
    /// empty counts.
    pub fn rollups_selected(
        &self,
        ids: &[UnitId],
        wanted: &Selection,
    ) -> Result<Vec<(UnitId, Rollup)>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(VIEW_ROLLUPS).map_err(db)?;
        ids.iter()
            .map(|id| {
                Ok((
                    id.clone(),
                    rollup_in(&t, id, Some(wanted))?.unwrap_or_default(),
                ))
            })
            .collect()
    }

    fn remember(&self, id: &UnitId, commits: u64, rollup: &Arc<Rollup>) {
        if let Ok(mut rows) = self.rollups.rows.lock() {
            if rows.len() >= ROLLUP_CACHE_UNITS && !rows.contains_key(id) {
                rows.clear();
            }
            rows.insert(id.clone(), (commits, rollup.clone()));
        }
    }

    /// Every unit of `id`'s subtree (`id` included) this node knows, from a profile or from
    /// records it holds there, with the counts of its own records (its roll-up less its
    /// children's; for a village, its roll-up), in id order, only the parts `wanted` names.
    /// One read transaction and two range scans however many units: what a target report
    /// over a city needs, never a lookup per unit. Each row's other parts are passed over
    /// by their length: at a city they are most of its roll-up rows' bytes.
    pub fn units_own(
        &self,
        id: &UnitId,
        wanted: &Selection,
    ) -> Result<Vec<(UnitId, Rollup)>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let start = id.tree_key();
        let end = prefix_end(&start);
        let range = (
            Bound::Included(start.as_str()),
            Bound::Excluded(end.as_str()),
        );
        let unit = |key: &str| key.trim_end_matches('/').parse::<UnitId>().ok();
        // By tree key: a unit before the units below it.
        let mut rows: std::collections::BTreeMap<String, (UnitId, Rollup)> = Default::default();
        let units = tx.open_table(VIEW_UNITS).map_err(db)?;
        for row in units.range::<&str>(range).map_err(db)? {
            let (k, _) = row.map_err(db)?;
            if let Some(u) = unit(k.value()) {
                rows.entry(u.tree_key()).or_insert((u, Rollup::default()));
            }
        }
        let rollups = tx.open_table(VIEW_ROLLUPS).map_err(db)?;
        let mut parents = Vec::new();
        for row in rollups.range::<&str>(range).map_err(db)? {
            let (k, v) = row.map_err(db)?;
            if let Some(u) = unit(k.value()) {
                parents.extend(u.parent().filter(|p| p.is_in_subtree_of(id)));
                let read = rollup::read(k.value(), v.value(), Some(wanted))?;
                rows.insert(u.tree_key(), (u, read));
            }
        }
        // The parent of a unit with counts has a row to take them from (one without a
        // roll-up row of its own counts less than nothing, as its children's are taken).
        for p in parents {
            rows.entry(p.tree_key()).or_insert((p, Rollup::default()));
        }
        let mut rows: Vec<(UnitId, Rollup)> = rows.into_values().collect();
        let at: HashMap<UnitId, usize> = rows
            .iter()
            .enumerate()
            .map(|(i, (u, _))| (u.clone(), i))
            .collect();
        // Each unit's roll-up taken from its parent's, the child's still whole: a parent
        // comes before its children, whose own are taken later.
        for i in 0..rows.len() {
            let parent = rows[i].0.parent().filter(|p| p.is_in_subtree_of(id));
            if let Some(&j) = parent.as_ref().and_then(|p| at.get(p)) {
                let (before, from) = rows.split_at_mut(i);
                if let (Some((_, parent)), Some((_, child))) = (before.get_mut(j), from.first()) {
                    parent.merge(child, -1);
                }
            }
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(rows)
    }

    /// The profile of a unit, if this node holds it.
    pub fn unit(&self, id: &UnitId) -> Result<Option<UnitProfile>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(VIEW_UNITS).map_err(db)?;
        match t.get(id.tree_key().as_str()).map_err(db)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// The profiles of several units this node holds, in one read transaction.
    pub fn units(&self, ids: &[UnitId]) -> Result<HashMap<UnitId, UnitProfile>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(VIEW_UNITS).map_err(db)?;
        let mut out = HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(v) = t.get(id.tree_key().as_str()).map_err(db)? {
                out.insert(id.clone(), decode(v.value())?);
            }
        }
        Ok(out)
    }

    /// Profiles of the known children of a unit, in id order.
    pub fn children(&self, id: &UnitId) -> Result<Vec<UnitProfile>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(VIEW_UNITS).map_err(db)?;
        let start = id.tree_key();
        let end = prefix_end(&start);
        let mut out = Vec::new();
        // One seek per child, past its whole subtree, rather than a walk over every
        // profile below: a city's children are 10, its subtree 5,000.
        let mut from = Bound::Excluded(start.clone());
        loop {
            let mut rows = t
                .range::<&str>((
                    from.as_ref().map(String::as_str),
                    Bound::Excluded(end.as_str()),
                ))
                .map_err(db)?;
            let Some(row) = rows.next() else {
                break;
            };
            let (k, v) = row.map_err(db)?;
            let key = k.value();
            let label = key
                .get(start.len()..)
                .and_then(|rest| rest.split('/').next())
                .unwrap_or_default();
            let child = format!("{start}{label}/");
            if key == child {
                out.push(decode(v.value())?);
            }
            from = Bound::Included(prefix_end(&child));
        }
        Ok(out)
    }

    /// The record feed after `from` (from its start when `None` or of another epoch): at most
    /// `first` entries of records in `root`'s subtree (anywhere when `None`) that `keep`
    /// makes something of, looking at no more than `scan` positions, so a reader who may see
    /// little of the feed still gets an answer (and a position to go on from) at bounded
    /// cost. `keep` reads the records' rows it wants from the [`FeedRows`] of the same
    /// transaction: a row shown is as it was at the entry's position or later, never older.
    /// `more` says an entry `keep` takes follows the page (or the scan ran out first), not
    /// that any entry does: a reader must not learn of writes it may not see from it. Past
    /// the entries it could not take, the position goes on to the last one looked at.
    pub fn feed<T>(
        &self,
        from: Option<&FeedCursor>,
        root: Option<&UnitId>,
        first: usize,
        scan: usize,
        mut keep: impl FnMut(&FeedEntry, &FeedRows) -> Result<Option<T>, StoreError>,
    ) -> Result<FeedPage<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let views = FeedRows {
            members: tx.open_table(VIEW_MEMBERS).map_err(db)?,
            records: tx.open_table(VIEW_RECORDS).map_err(db)?,
        };
        let key = feed_key(&tx)?;
        let epoch = tx
            .open_table(META)
            .map_err(db)?
            .get(FEED_EPOCH)
            .map_err(db)?
            .map_or(0, |v| v.value());
        let from = from.map(|c| FeedPosition::open(c, &key).filter(|p| p.epoch == epoch));
        let reset = matches!(from, Some(None));
        let feed = tx.open_table(FEED).map_err(db)?;
        // A position past the feed's end cannot be sealed here (none was), but one from an
        // epoch before a restore could be: the epoch check above refuses it.
        let mut position = FeedPosition {
            epoch,
            at: from.flatten().map_or(0, |p| p.at),
        };
        let (mut entries, mut more) = (Vec::new(), false);
        // Where the page filled, and whether an entry to take was found after it (the
        // position then stays at the page's end, for the next page to start with it).
        let (mut page_end, mut next_found) = ((first == 0).then_some(position.at), false);
        let rows = feed
            .range((Bound::Excluded(position.at), Bound::Unbounded))
            .map_err(db)?;
        let mut looked_at = position.at;
        for (looked, row) in rows.enumerate() {
            let (k, v) = row.map_err(db)?;
            if looked >= scan {
                more = true;
                break;
            }
            looked_at = k.value();
            let text = v.value();
            let (deleted, name) = match text.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, text),
            };
            // An entry that does not read is passed over (and named), not allowed to stop
            // every reader at this position for good.
            let record: RecordRef = match name.parse() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(
                        position = k.value(),
                        "a feed entry {text:?} does not read: {e}"
                    );
                    continue;
                }
            };
            if root.is_some_and(|r| !record.unit.is_in_subtree_of(r)) {
                continue;
            }
            let entry = FeedEntry {
                at: k.value(),
                record,
                deleted,
            };
            if let Some(t) = keep(&entry, &views)? {
                if page_end.is_some() {
                    (more, next_found) = (true, true);
                    break;
                }
                entries.push((entry, t));
                if entries.len() >= first {
                    page_end = Some(looked_at);
                }
            }
        }
        position.at = match page_end {
            Some(end) if next_found => end,
            _ => looked_at,
        };
        Ok(FeedPage {
            entries,
            next: position.seal(&key)?,
            more,
            reset,
        })
    }

    /// The position a feed cursor of this store holds (tests only: positions count every
    /// write, which a caller is not to learn).
    #[cfg(test)]
    pub(crate) fn feed_position(&self, cursor: &FeedCursor) -> Option<FeedPosition> {
        let tx = self.db.begin_read().ok()?;
        FeedPosition::open(cursor, &feed_key(&tx).ok()?)
    }

    /// One member, if this node holds it.
    pub fn member(&self, id: &MemberId) -> Result<Option<Member>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        member_row(&tx.open_table(VIEW_MEMBERS).map_err(db)?, id)
    }

    /// Members of `unit` (and of its whole subtree when `subtree`), in (unit, record) order,
    /// `first` of them after `after`.
    pub fn members(
        &self,
        unit: &UnitId,
        subtree: bool,
        after: Option<&MemberCursor>,
        first: usize,
    ) -> Result<MemberPage, StoreError> {
        self.members_with(unit, subtree, MemberFilter::default(), after, first, true)
    }

    /// [`members`](Self::members) with only those `filter` lets through; pages skip the
    /// other rows. A subtree's count comes from its roll-up row when the filter is at most a
    /// status and a category; otherwise the rows are counted, and only when `count` asks
    /// (the total is 0 when it does not). A name search of the node's own subtree at a city
    /// or a county node reads [`NAME_SCAN_BUDGET`] rows at most before it finds the names in
    /// the sorted index instead ([`by_name`]), and counts through the index.
    pub fn members_with(
        &self,
        unit: &UnitId,
        subtree: bool,
        filter: MemberFilter,
        after: Option<&MemberCursor>,
        first: usize,
        count: bool,
    ) -> Result<MemberPage, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(VIEW_MEMBERS).map_err(db)?;
        let (key, end) = listing("", unit, subtree);
        let (lo, hi) = ((key.as_str(), ""), (end.0.as_str(), end.1));
        if let Some(name) = filter.name.as_deref()
            && own_indexed(&tx, unit, subtree)?
        {
            // A common name fills the page within the first rows; a rare one, or a count,
            // is looked up in the index instead of reading every row.
            if !count {
                let wanted = |m: &Member| filter.keeps(m);
                let ((items, has_next), whole) =
                    page_within(&t, (lo, hi), after, first, wanted, NAME_SCAN_BUDGET)?;
                if whole {
                    return Ok(MemberPage {
                        items,
                        total: 0,
                        has_next,
                    });
                }
            }
            return by_name(&tx, &t, name, &filter, after, first, count);
        }
        let total = member_total(&tx, &t, unit, subtree, &filter, (lo, hi), count)?;
        let wanted = |m: &Member| filter.keeps(m);
        let (items, has_next) = page(&t, lo, hi, after, first, wanted)?;
        Ok(MemberPage {
            items,
            total,
            has_next,
        })
    }

    /// [`members_with`](Self::members_with) ordered `by` a field (greatest first when
    /// `descending`), ties by (unit, record), `first` of them after `after`. At a city or a
    /// county node a subtree listing reads through the sorted index
    /// ([`super::tables::VIEW_ORDER`]) when [`through_index`] says so: only the rows the page
    /// shows and those the filter passes over; other listings read every row, and count
    /// them. Through the index the count is as [`members_with`](Self::members_with) makes
    /// it (0 when `count` does not ask and the filter is beyond the roll-ups).
    #[allow(clippy::too_many_arguments)]
    pub fn members_ordered(
        &self,
        unit: &UnitId,
        subtree: bool,
        filter: MemberFilter,
        by: super::MemberOrder,
        descending: bool,
        after: Option<&OrderedCursor>,
        first: usize,
        count: bool,
    ) -> Result<OrderedPage<Member>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(VIEW_MEMBERS).map_err(db)?;
        let (key, end) = listing("", unit, subtree);
        let (lo, hi) = ((key.as_str(), ""), (end.0.as_str(), end.1));
        let me = super::order::store_unit(&tx.open_table(OWNER).map_err(db)?)?;
        let walked = if subtree && through_index(&tx, me.as_ref(), unit, &filter, first)? {
            let index = tx.open_table(VIEW_ORDER).map_err(db)?;
            // Every member has a value of each field: one section, of values.
            let sections = [(by.as_str().to_owned(), true)];
            walk_index(
                &index,
                &sections,
                None,
                after,
                descending,
                first,
                |sort, tree, record| {
                    if !tree.starts_with(&key) || !filter.could_keep(by, sort) {
                        return Ok(Fetched::Skip);
                    }
                    let m = indexed_row(&t, tree, record)?;
                    Ok(match filter.keeps(&m) {
                        true => Fetched::Row(m),
                        false => Fetched::Skip,
                    })
                },
            )?
        } else {
            None
        };
        let Some((items, has_next)) = walked else {
            let key = |m: &Member| by.key(m);
            let order = Order {
                key: &key,
                descending,
            };
            return ordered_page(&t, lo, hi, &order, after, first, |m: &Member| {
                filter.keeps(m)
            });
        };
        let total = match filter.name.as_deref() {
            // The node's own listing: its matches are in the index.
            Some(name) if count && own_indexed(&tx, unit, subtree)? => {
                count_kept(&t, &name_matches(&tx, name)?, &filter)?
            }
            _ => member_total(&tx, &t, unit, subtree, &filter, (lo, hi), count)?,
        };
        Ok(OrderedPage {
            items,
            has_next,
            total,
        })
    }

    /// [`records`](Self::records) ordered by `field` (greatest first when `descending`; its
    /// key as [`SortKey::of_field`] makes it), ties by (unit, record), after the ordered
    /// cursor `after` (`q.after`, a cursor of the stored order, is not read). `filter` says
    /// what the store may know of what `wanted` keeps.
    ///
    /// At a city or a county node, a subtree listing by the kind's period field (a meeting's
    /// date, an appraisal's year) reads through the sorted index: the node's own, and a unit
    /// below's of at least `WALK_BELOW` records when no count is asked (the walk passes
    /// over other units' entries by their keys; a smaller unit's rows are read whole
    /// sooner; a walk that has passed over `WALK_SKIPPED` other units' entries gives up).
    /// A period reads only the index's keys within it, and counts from them (from
    /// the keys alone when `filter` says `wanted` keeps every record within it). The
    /// walk reads a row per entry, so one that has passed over `WALK_PASSED` rows gives up
    /// and the listing is read whole (a filter that keeps few). Other listings read every
    /// row, and count them; through the index, the count is 0 when `q.count` does not ask.
    pub fn records_ordered(
        &self,
        q: &RecordQuery<'_>,
        (field, descending): (&str, bool),
        after: Option<&OrderedCursor>,
        filter: RecordFilter,
        wanted: &dyn Fn(&Record) -> bool,
    ) -> Result<OrderedPage<Record>, StoreError> {
        let period = filter.period;
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(VIEW_RECORDS).map_err(db)?;
        // Rows of this table carry the kind before the unit (`meetings|c01/...`), and so do
        // the cursors of its listings read whole: the index's cursors are made alike, and a
        // cursor without it (none of this listing's) is given to the reading that made it.
        let kind_key = format!("{}|", q.kind.as_str());
        let (key, end) = listing(&kind_key, q.unit, q.subtree);
        let (lo, hi) = ((key.as_str(), ""), (end.0.as_str(), end.1));
        let Some(spec) = grassroots_schema::entity(q.kind) else {
            return Err(StoreError::Corrupt(format!(
                "{} is no record kind",
                q.kind.as_str()
            )));
        };
        let after_in_index = after.map(|a| {
            a.at.tree_key
                .strip_prefix(&kind_key)
                .map(|tree| OrderedCursor {
                    key: a.key.clone(),
                    at: MemberCursor {
                        tree_key: tree.to_owned(),
                        record: a.at.record.clone(),
                    },
                })
        });
        let me = super::order::store_unit(&tx.open_table(OWNER).map_err(db)?)?;
        let own = me.as_ref() == Some(q.unit);
        // A period's keys: none when the field's values do not sort by period (then the
        // listing is read whole).
        let within = match period {
            Some(p) => period_keys(spec, p),
            None => None,
        };
        let indexed = field == spec.period_field
            && q.subtree
            && period.is_none() == within.is_none()
            && !matches!(after_in_index, Some(None))
            && super::order::held(me.as_ref(), q.unit)
            && (own
                || (!q.count
                    && t.range::<(&str, &str)>(lo..hi)
                        .map_err(db)?
                        .nth(WALK_BELOW - 1)
                        .is_some()));
        let walked = if indexed {
            let index = tx.open_table(VIEW_ORDER).map_err(db)?;
            let mut sections = super::order::record_sections(q.kind, field);
            // Records without a value are within no period.
            if within.is_some() {
                sections.retain(|(_, valued)| *valued);
            }
            let below = key.strip_prefix(&kind_key).unwrap_or_default();
            let (mut passed, mut skipped) = (0, 0);
            walk_index(
                &index,
                &sections,
                within.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                after_in_index.flatten().as_ref(),
                descending,
                q.first,
                |_, tree, record| {
                    if !tree.starts_with(below) {
                        skipped += 1;
                        return Ok(match skipped < WALK_SKIPPED {
                            true => Fetched::Skip,
                            false => Fetched::GiveUp,
                        });
                    }
                    let r = indexed_record(&t, &kind_key, tree, record)?;
                    if wanted(&r) {
                        return Ok(Fetched::Row(r));
                    }
                    passed += 1;
                    Ok(match passed < WALK_PASSED {
                        true => Fetched::Skip,
                        false => Fetched::GiveUp,
                    })
                },
            )?
        } else {
            None
        };
        let Some((mut items, has_next)) = walked else {
            if filter.all_within && period.is_none() {
                return ordered_by_field(&t, (lo, hi), spec, field, descending, after, q.first);
            }
            let sort = |r: &Record| SortKey::of_field(spec, field, r);
            let order = Order {
                key: &sort,
                descending,
            };
            return ordered_page(&t, lo, hi, &order, after, q.first, wanted);
        };
        for (c, _) in &mut items {
            c.at.tree_key.insert_str(0, &kind_key);
        }
        // Walked: the node's own listing, or a unit below's uncounted.
        let total = match q.count {
            true => listing_size(&tx, &t, q.kind, own, (lo, hi), filter, wanted)?,
            false => 0,
        };
        Ok(OrderedPage {
            items,
            has_next,
            total,
        })
    }

    /// The page `q` asks for, of the records `wanted` keeps, in (unit, record) order, and
    /// when `q.count` asks how many there are ([`listing_size`]; 0 otherwise).
    pub fn records(
        &self,
        q: &RecordQuery<'_>,
        filter: RecordFilter,
        wanted: &dyn Fn(&Record) -> bool,
    ) -> Result<RecordPage, StoreError> {
        let RecordQuery {
            kind,
            unit,
            subtree,
            after,
            first,
            count,
        } = *q;
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(VIEW_RECORDS).map_err(db)?;
        let (key, end) = listing(&format!("{}|", kind.as_str()), unit, subtree);
        let (lo, hi) = ((key.as_str(), ""), (end.0.as_str(), end.1));
        let total = if count {
            let own = own_indexed(&tx, unit, subtree)?;
            listing_size(&tx, &t, kind, own, (lo, hi), filter, wanted)?
        } else {
            0
        };
        let (items, has_next) = page(&t, lo, hi, after, first, wanted)?;
        Ok(RecordPage {
            items,
            total,
            has_next,
        })
    }

    /// One record of the other kinds, if this node holds it.
    pub fn record(&self, id: &RecordRef) -> Result<Option<Record>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        record_row(&tx.open_table(VIEW_RECORDS).map_err(db)?, id)
    }

    /// The records of `kind` owned by every unit above `unit` (directives whoever they
    /// address, fund programmes), nearest unit last.
    pub fn records_above(&self, kind: DocKind, unit: &UnitId) -> Result<Vec<Record>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(VIEW_RECORDS).map_err(db)?;
        let mut out = Vec::new();
        let above: Vec<UnitId> = unit.line().skip(1).collect();
        for a in above.iter().rev() {
            let key = records_key(kind, a);
            for row in t.range(rows_of(&key)).map_err(db)? {
                let (_, v) = row.map_err(db)?;
                out.push(decode(v.value())?);
            }
        }
        Ok(out)
    }

    /// The records of `kind` referring to `target` (`kind:unit#record`): a fund programme's
    /// disbursements, a directive's report-backs; in (unit, record) order.
    pub fn referring_records(
        &self,
        target: &RecordRef,
        kind: DocKind,
    ) -> Result<Vec<Record>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let refs = tx.open_table(VIEW_REFS).map_err(db)?;
        let records = tx.open_table(VIEW_RECORDS).map_err(db)?;
        let target = target.to_string();
        let mut out = Vec::new();
        for row in refs.range(rows_of(&target)).map_err(db)? {
            let (k, _) = row.map_err(db)?;
            let Some((unit_key, record)) = k.value().1.split_once('|') else {
                continue;
            };
            let key = format!("{}|{unit_key}", kind.as_str());
            if let Some(v) = records.get((key.as_str(), record)).map_err(db)? {
                out.push(decode(v.value())?);
            }
        }
        Ok(out)
    }

    /// Distinct units with a record referring to `target` (`kind:unit#record`): the units
    /// that reported back on a directive, or paid out of a fund programme; in id order.
    pub fn referring_units(&self, target: &RecordRef) -> Result<Vec<UnitId>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(VIEW_REFS).map_err(db)?;
        let target = target.to_string();
        let target = target.as_str();
        let mut units = std::collections::BTreeSet::new();
        for row in t.range(rows_of(target)).map_err(db)? {
            let (k, _) = row.map_err(db)?;
            if let Some((unit, _)) = k.value().1.split_once('|') {
                units.insert(unit.to_owned());
            }
        }
        units
            .into_iter()
            .map(|u| {
                u.trim_end_matches('/')
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("receipt row {u}: {e}")))
            })
            .collect()
    }

    /// Units strictly below `unit` this node knows (from their profiles), at `level` only
    /// when given, in tree order: the units a directive addresses.
    pub fn units_below(
        &self,
        unit: &UnitId,
        level: Option<Level>,
    ) -> Result<Vec<UnitId>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(VIEW_UNITS).map_err(db)?;
        let start = unit.tree_key();
        let end = prefix_end(&start);
        let mut out = Vec::new();
        for row in t
            .range::<&str>((
                Bound::Excluded(start.as_str()),
                Bound::Excluded(end.as_str()),
            ))
            .map_err(db)?
        {
            let (k, _) = row.map_err(db)?;
            let path = k.value().trim_end_matches('/');
            if level.is_none_or(|l| l.depth() == path.split('/').count()) {
                out.push(
                    path.parse()
                        .map_err(|e| StoreError::Corrupt(format!("unit row {path}: {e}")))?,
                );
            }
        }
        Ok(out)
    }

    /// Every user (token) bound to `within` or a unit below it, by unit, then name.
    pub fn users_within(&self, within: &UnitId) -> Result<Vec<TokenUser>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(USERS).map_err(db)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            let u = parse_user(k.value(), v.value())?;
            if u.unit.is_in_subtree_of(within) {
                out.push(u);
            }
        }
        out.sort_by(|a, b| (&a.unit, &a.name).cmp(&(&b.unit, &b.name)));
        Ok(out)
    }

    /// The unit, role and user a token hash is bound to. A token added without a name is
    /// labelled `user-` and the first 8 hex digits of its hash.
    pub fn user(&self, token_hash: &[u8; 32]) -> Result<Option<TokenUser>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(USERS).map_err(db)?;
        let Some(v) = t.get(token_hash.as_slice()).map_err(db)? else {
            return Ok(None);
        };
        parse_user(token_hash, v.value()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::{field_of_row, name_holds};
    use grassroots_schema::Value;

    /// One field of a record row, read from its bytes, is the field of the row decoded
    /// whole: wherever the fields lie in the row, whatever the other fields hold, escaped
    /// keys and texts included.
    #[test]
    fn a_field_read_alone_is_the_fields_value() {
        let rows = [
            r#"{"id":"meetings:c01/k01#0000000000000001","fields":{"attendance":12,"heldOn":"2026-03-01","kind":"group_meeting"}}"#,
            r#"{"fields":{"note":"{\"heldOn\": 1}","heldOn":"2026-\u00303-02","x":[1,{"a":null}]},"id":"meetings:c01#0000000000000002","created":{"by":"c01","at":"2026-03-02T00:00:00Z"}}"#,
            r#"{"id":"meetings:c01#0000000000000003","fields":{"held\u004fn":"2026-03-03","published":true}}"#,
            r#"{"id":"meetings:c01#0000000000000004","fields":{}}"#,
        ];
        for row in rows {
            let whole: serde_json::Value = serde_json::from_str(row).unwrap();
            for field in ["heldOn", "attendance", "published", "note", "missing"] {
                let alone = field_of_row(row.as_bytes(), field).unwrap();
                let want: Option<Value> = whole["fields"]
                    .get(field)
                    .map(|v| serde_json::from_value(v.clone()).unwrap());
                assert_eq!(alone, want, "{field} of {row}");
            }
        }
        for bad in [r#"{"fields":{"heldOn":"#, r#"{"fields":{}} {}"#, "[]"] {
            assert!(field_of_row(bad.as_bytes(), "heldOn").is_err(), "{bad}");
        }
    }

    /// A name holds a (lower-cased) text as its lower-cased copy would, ASCII or not.
    #[test]
    fn a_name_holds_a_text_whatever_the_case() {
        let names = [
            "Chen Jing",
            "CHEN",
            "chen",
            "Xi",
            "",
            "Zoë Chen",
            "陈静",
            "ÉLISE",
            "a-b c",
        ];
        let texts = [
            "",
            "chen",
            "en j",
            "hen jing",
            "chen jing x",
            "ë",
            "静",
            "élise",
            "-b",
            "z",
        ];
        for name in names {
            for text in texts {
                assert_eq!(
                    name_holds(text, name),
                    name.to_lowercase().contains(text),
                    "{name:?} holds {text:?}"
                );
            }
        }
    }
}
