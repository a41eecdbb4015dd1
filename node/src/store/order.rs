//! The sorted index of listings ([`VIEW_ORDER`]): a page of a city's or a county's members
//! in the order of a field, or of its records of a kind by their date (the kind's period
//! field), reads only the rows it shows instead of every row of the subtree (a city's 150,000
//! members for each page of 20).
//!
//! Only city and county nodes keep it, over their whole subtree, in one listing per field.
//! An entry's place in the index is random (the order of names is not the order members
//! arrive in), so each costs a page write at the next commit: an index per level (a city
//! node's counties each with their own) doubled a city's full sync where one costs a third.
//! A listing of a unit below the node walks the node's listing and passes over the entries
//! of other units by their keys alone, when that is cheaper than reading the listing whole
//! ([`walk_below`]): a county's or a township's at a city, not a village's. Village and
//! township nodes write no entry (writes at a village pay nothing); their listings are small
//! enough to read whole. Records get one entry each, by their period field alone; the node's
//! own listing reads them, and a large unit's below it (`reader::records_ordered`).

use grassroots_schema::{DocKind, Level, Member, Record, RecordId, UnitId, entity};
use redb::ReadableTable;

use super::reader::SortKey;
use super::tables::{OWNER, VIEW_MEMBERS, VIEW_ORDER, VIEW_RECORDS, records_key};
use super::{StoreError, db};

/// What a member listing is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberOrder {
    /// Name, by character code.
    Name,
    /// Year of birth.
    BirthYear,
    /// Date of joining (`YYYY-MM-DD` sorts as the date).
    JoinedOn,
}

impl MemberOrder {
    /// Every order, each with its own index entries.
    pub const ALL: [MemberOrder; 3] = [
        MemberOrder::Name,
        MemberOrder::BirthYear,
        MemberOrder::JoinedOn,
    ];

    /// Its name in index keys.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberOrder::Name => "name",
            MemberOrder::BirthYear => "birthYear",
            MemberOrder::JoinedOn => "joinedOn",
        }
    }

    /// A member's place in the listing.
    pub fn key(self, m: &Member) -> SortKey {
        match self {
            MemberOrder::Name => SortKey(Some(m.name.clone())),
            MemberOrder::BirthYear => SortKey::int(m.birth_year),
            MemberOrder::JoinedOn => SortKey(Some(m.joined_on.clone())),
        }
    }
}

/// Whether the node of `me` keeps the index (of its own subtree).
pub(super) fn indexes(me: &UnitId) -> bool {
    matches!(me.level(), Level::City | Level::County)
}

/// Entries the index walk passes over per row a listing read whole would decode, at most:
/// passing an entry reads its key alone (is the member in the subtree asked for?), a row
/// read whole is decoded from JSON, several times the work.
const ENTRIES_PER_ROW: u64 = 4;

/// Whether a page of `first` rows of a listing of a unit below the node is cheaper through
/// the node's index than by reading the listing whole: the walk passes over about
/// `held / kept` entries per row it shows (`held` the node's members, `kept` those of the
/// listing the filter keeps), reading whole decodes every one of the listing's `rows`.
pub(super) fn walk_below(first: usize, held: u64, rows: u64, kept: u64) -> bool {
    let shown = u64::try_from(first).unwrap_or(u64::MAX).saturating_add(1);
    kept > 0 && shown.saturating_mul(held) / kept <= rows.saturating_mul(ENTRIES_PER_ROW)
}

/// The unit whose node the store is (its [`OWNER`] row), if written yet.
pub(super) fn store_unit(
    owner: &impl ReadableTable<&'static str, &'static str>,
) -> Result<Option<UnitId>, StoreError> {
    match owner.get("unit").map_err(db)? {
        Some(v) => v
            .value()
            .parse()
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("the store's unit: {e}"))),
        None => Ok(None),
    }
}

/// A view row the index holds entries of: a member, or a record of another kind.
pub(super) trait Indexed {
    /// Its unit and record id.
    fn at(&self) -> (&UnitId, RecordId);
    /// Its entries as (first key part, sort key) when the node of `me` keeps the index and
    /// holds the row (of `unit`); the key's other parts are the unit and the record.
    fn entries(&self, me: Option<&UnitId>, unit: &UnitId) -> Vec<(String, String)>;
}

impl Indexed for Member {
    fn at(&self) -> (&UnitId, RecordId) {
        (&self.id.unit, self.id.record)
    }

    /// One entry for each order.
    fn entries(&self, me: Option<&UnitId>, unit: &UnitId) -> Vec<(String, String)> {
        if !held(me, unit) {
            return Vec::new();
        }
        // Every member has a value of each field: the key is never empty.
        MemberOrder::ALL
            .iter()
            .map(|o| (o.as_str().to_owned(), o.key(self).0.unwrap_or_default()))
            .collect()
    }
}

impl Indexed for Record {
    fn at(&self) -> (&UnitId, RecordId) {
        (&self.id.unit, self.id.record)
    }

    /// One entry, by its kind's period field (a meeting's date, an appraisal's year), in
    /// the section of records with a value or without.
    fn entries(&self, me: Option<&UnitId>, unit: &UnitId) -> Vec<(String, String)> {
        let Some(spec) = entity(self.id.kind).filter(|_| held(me, unit)) else {
            return Vec::new();
        };
        let key = SortKey::of_field(spec, spec.period_field, self).0;
        let section = record_section(self.id.kind, spec.period_field, key.is_some());
        vec![(section, key.unwrap_or_default())]
    }
}

/// Whether the node of `me` keeps the index and `unit` is in its subtree.
pub(super) fn held(me: Option<&UnitId>, unit: &UnitId) -> bool {
    me.is_some_and(|me| indexes(me) && unit.is_in_subtree_of(me))
}

/// The index sections of a record listing of `kind` ordered by `field`: records with a
/// value, then those without (which come last either way).
pub(super) fn record_sections(kind: DocKind, field: &str) -> Vec<(String, bool)> {
    vec![
        (record_section(kind, field, true), true),
        (record_section(kind, field, false), false),
    ]
}

/// The first key part of the entries of records of `kind` by `field`, with a value or
/// without.
pub(super) fn record_section(kind: DocKind, field: &str, valued: bool) -> String {
    let none = if valued { "" } else { "|none" };
    format!("{}|{field}{none}", kind.as_str())
}

/// Every index entry of `row`, as one text each (for comparing with a rebuild).
pub(super) fn texts(me: Option<&UnitId>, row: &impl Indexed) -> Vec<String> {
    let (unit, record) = row.at();
    let (tree, record) = (unit.tree_key(), record.to_string());
    row.entries(me, unit)
        .into_iter()
        .map(|(l, k)| entry_text(&l, &k, &tree, &record))
        .collect()
}

/// One index key as one text.
pub(super) fn entry_text(listing: &str, key: &str, unit: &str, record: &str) -> String {
    format!("{listing}\u{1f}{key}\u{1f}{unit}\u{1f}{record}")
}

/// The index table as written in one commit.
pub(super) type OrderTable<'t> =
    redb::Table<'t, (&'static str, &'static str, &'static str, &'static str), &'static [u8]>;

/// Move the index entries of the row of `record` of `unit` (a member's, or a record's of
/// another kind) from `old` to `now` (either may be absent): take out those `now` lacks and
/// put in those it adds; entries the two share stay as they are.
pub(super) fn update<T: Indexed>(
    table: &mut OrderTable<'_>,
    me: Option<&UnitId>,
    unit: &UnitId,
    record: &str,
    old: Option<&T>,
    now: Option<&T>,
) -> Result<(), StoreError> {
    let old = old.map(|r| r.entries(me, unit)).unwrap_or_default();
    let now = now.map(|r| r.entries(me, unit)).unwrap_or_default();
    let tree = unit.tree_key();
    let tree = tree.as_str();
    for (l, k) in old.iter().filter(|e| !now.contains(e)) {
        table
            .remove((l.as_str(), k.as_str(), tree, record))
            .map_err(db)?;
    }
    for (l, k) in now.iter().filter(|e| !old.contains(e)) {
        table
            .insert((l.as_str(), k.as_str(), tree, record), [].as_slice())
            .map_err(db)?;
    }
    Ok(())
}

/// Layout 12: the index's member entries written from the members view as it stands (no
/// document is read). A row that does not decode, or stands under another unit's key, stops
/// nothing: every view and the index are then written again from the documents (as
/// `grassroots store rebuild` does).
pub(super) fn migrate_12_fill(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    fill_from(
        tx,
        VIEW_MEMBERS,
        "member",
        |m: &Member| (m.id.unit.clone(), m.id.unit.tree_key()),
        |order, me, unit, record, m| update(order, me, unit, record, None, Some(m)),
    )
}

/// Layout 13: the index's record entries (by each kind's period field) written from the
/// records view as it stands, as layout 12 wrote the members'.
pub(super) fn migrate_13_fill(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    fill_from(
        tx,
        VIEW_RECORDS,
        "record",
        |r: &Record| (r.id.unit.clone(), records_key(r.id.kind, &r.id.unit)),
        |order, me, unit, record, r| update(order, me, unit, record, None, Some(r)),
    )
}

/// The index entries of every row of `view` (at a node that keeps the index): `place` is
/// a row's unit and the first part of the key it is stored under, which must be the row's.
/// Past a row that is not so, the views are written again from the documents.
fn fill_from<T: serde::de::DeserializeOwned>(
    tx: &redb::WriteTransaction,
    view: redb::TableDefinition<'_, (&str, &str), &[u8]>,
    what: &str,
    place: impl Fn(&T) -> (UnitId, String),
    put: impl Fn(&mut OrderTable<'_>, Option<&UnitId>, &UnitId, &str, &T) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let me = store_unit(&tx.open_table(OWNER).map_err(db)?)?;
    if !me.as_ref().is_some_and(indexes) {
        return Ok(());
    }
    let mut spoilt = 0usize;
    {
        let rows = tx.open_table(view).map_err(db)?;
        let mut order = tx.open_table(VIEW_ORDER).map_err(db)?;
        for row in redb::ReadableTable::iter(&rows).map_err(db)? {
            let (k, v) = row.map_err(db)?;
            let (first, record) = k.value();
            let at = format!("{first}{record}");
            match serde_json::from_slice::<T>(v.value()) {
                Ok(t) => match place(&t) {
                    (unit, key) if key == first => {
                        put(&mut order, me.as_ref(), &unit, record, &t)?;
                    }
                    _ => {
                        spoilt += 1;
                        tracing::error!(row = %at, "a {what} row under another unit's key");
                    }
                },
                Err(e) => {
                    spoilt += 1;
                    tracing::error!(row = %at, "a {what} row that does not decode ({e})");
                }
            }
        }
    }
    super::load::rebuild_if_spoilt(tx, spoilt, what)
}
