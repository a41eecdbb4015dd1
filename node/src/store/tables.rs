//! redb table definitions. Names carry a version; a layout change means a new name or table
//! and a numbered migration (`load.rs`). `docs/storage.md` describes each.

use grassroots_schema::{DocKind, UnitId};
use redb::TableDefinition;

/// The first key of a unit's rows of one record kind in [`VIEW_RECORDS`]: `kind|tree key`.
pub(super) fn records_key(kind: DocKind, unit: &UnitId) -> String {
    format!("{}|{}", kind.as_str(), unit.tree_key())
}

/// The rows of a two-part key whose first part is `first`. Second parts (record ids in hex,
/// doc ids, `unit|record`) all sort between "" and "~".
pub(super) fn rows_of(first: &str) -> std::ops::Range<(&str, &str)> {
    (first, "")..(first, "~")
}

/// Layout version written in [`META`] under `"layout"`.
/// 1: first layout; 2: [`DOC_STATE`]; 3: [`VIEW_ROLLUPS`]; 4: [`VIEW_RECORDS`],
/// [`VIEW_REFS`] and roll-up tallies; 5: views written again (stamps checked on reading);
/// 6: views written again (member categories, which a node of an earlier build took in
/// from a peer without counting them); 7: views written again (secretaries' terms, age,
/// education and concurrent posts, meeting attendance, disclosures by year in the roll-up
/// tallies); 8: views written again (appraisal results and outcomes, disclosures of
/// sensitive items in the tallies; members by year of joining); 9: views written again (an
/// appraisal's kind and rating read by authority, a report changed below its acceptance
/// read as not reviewed); 10: views written again (secretaries' terms by date, a director
/// who is also secretary counted, training hours of trainings only); 11: [`FEED`] and
/// [`FEED_AT`], filled by writing the views again; 12: [`VIEW_ORDER`], filled from
/// [`VIEW_MEMBERS`]; 13: record entries in [`VIEW_ORDER`], filled from [`VIEW_RECORDS`];
/// 14: [`VIEW_ROLLUPS`] in its own row format, from [`VIEW_ROLLUPS_JSON`].
pub const LAYOUT: u64 = 14;

/// `"layout"` -> layout version; [`TAKE_BACK_UNTIL`] -> until when (Unix milliseconds) the
/// node takes back from its children changes made in its name or above it (set by a restore
/// and by `grassroots store take-back`), absent if never; [`FEED_EPOCH`] and [`FEED_NEXT`]
/// (since layout 11).
pub const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta-1");

/// The [`META`] key of the end of the window in which a node takes back what it lost.
pub const TAKE_BACK_UNTIL: &str = "take-back-until-ms";

/// The [`META`] key of the record feed's epoch: a random number drawn when its positions
/// began. A rebuild of the views or a restore starts a new epoch, and a reader's position
/// from an earlier one no longer means anything here.
pub const FEED_EPOCH: &str = "feed-epoch";

/// The [`META`] key of the record feed's next position.
pub const FEED_NEXT: &str = "feed-next";

/// `"unit"` -> the unit whose node this store belongs to, written at its first open (by
/// this build, at the first open of an older store); a store is opened only for it.
pub const OWNER: TableDefinition<'_, &str, &str> = TableDefinition::new("owner-1");

/// doc id -> the peer that sent it: a register taken whole from a peer and stored as it came,
/// which automerge has not loaded yet (a row is removed once it has). At open, each is
/// loaded: one that does not load is emptied, the others' views written again. Since
/// layout 14 of this build; a store without the table has no such rows.
pub const UNREAD: TableDefinition<'_, &str, &str> = TableDefinition::new("unread-1");

/// doc id (`kind:unit`) -> audience (wire encoding). One row per hosted document.
pub const DOCS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("docs-1");

/// doc id -> persistence state as committed: next change-row sequence (`u64` BE), change rows
/// and changes since the snapshot (`u32` BE each), bytes of change rows since the snapshot
/// (`u64` BE), then the heads (32-byte change hashes,
/// concatenated). Start-up reads only this (no document, no change row). Since layout 2.
pub const DOC_STATE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("doc-state-1");

/// doc id -> `Automerge::save()` of the last compaction.
pub const SNAPSHOTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshots-1");

/// (doc id, sequence) -> concatenated raw changes appended by one commit since the snapshot.
pub const CHANGES: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("changes-1");

/// (peer unit, doc id) -> `sync::State::encode()` saved when the link ended.
pub const SYNC_STATES: TableDefinition<'_, (&str, &str), &[u8]> =
    TableDefinition::new("sync-states-1");

/// SHA-256 of a token -> `"unit role"`.
pub const USERS: TableDefinition<'_, &[u8], &str> = TableDefinition::new("users-1");

/// (unit tree key `c01/k01/`, record id) -> member JSON. The members view.
pub const VIEW_MEMBERS: TableDefinition<'_, (&str, &str), &[u8]> =
    TableDefinition::new("view-members-1");

/// unit tree key -> unit profile JSON. The units view.
pub const VIEW_UNITS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("view-units-1");

/// unit tree key -> [`grassroots_schema::Rollup`] in the row format of `store/rollup.rs`
/// (each part behind its length, so a reader passes over the parts it does not need):
/// counts over the records of the unit's whole subtree, adjusted by deltas in the commit
/// that changes a view row. No row for a subtree without counts. The view since layout 3,
/// this table and row format since 14.
pub const VIEW_ROLLUPS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("view-rollups-2");

/// [`VIEW_ROLLUPS`] as layouts 3 to 13 kept it: the same rows as JSON. Layout 14 writes its
/// rows into [`VIEW_ROLLUPS`] and deletes it.
pub const VIEW_ROLLUPS_JSON: TableDefinition<'_, &str, &[u8]> =
    TableDefinition::new("view-rollups-1");

/// unit path -> when a change authored by that unit last arrived or was made here (ms since
/// the Unix epoch). Freshness for "last heard from".
pub const HEARD: TableDefinition<'_, &str, u64> = TableDefinition::new("heard-1");

/// (`kind|unit tree key`, record id) -> [`grassroots_schema::Record`] JSON. The view of every
/// record kind but members, e.g. `("meetings|c01/k01/t01/v01/", "0123456789abcdef")`.
/// Since layout 4.
pub const VIEW_RECORDS: TableDefinition<'_, (&str, &str), &[u8]> =
    TableDefinition::new("view-records-1");

/// (referred record `kind:unit#record`, `referring unit tree key|record`) -> empty. What
/// refers to each record: a directive's report-backs (its receipts), a fund programme's
/// disbursements. Since layout 4.
pub const VIEW_REFS: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("view-refs-1");

/// Position -> record (`kind:unit#record`, `-` before it when the record was deleted): the
/// record feed, each record once, at the position of the last commit that wrote or removed
/// its view row here (local or synced). Since layout 11.
pub const FEED: TableDefinition<'_, u64, &str> = TableDefinition::new("feed-1");

/// Record (`kind:unit#record`) -> its position in [`FEED`]. Since layout 11.
pub const FEED_AT: TableDefinition<'_, &str, u64> = TableDefinition::new("feed-at-1");

/// (section, sort key, unit tree key, record id) -> empty. The sorted index of the node's
/// own subtree's listings, at a city or a county node only (empty at the others;
/// `store/order.rs`): one entry per member and per field a member listing is ordered by
/// (sections `name`, `birthYear`, `joinedOn`), and one per record of the other kinds by its
/// kind's period field (section `kind|field`, or `kind|field|none` with an empty key for a
/// record without a value); the sort key that field's value as [`crate::store::SortKey`]
/// writes it, e.g. `("name", "Li Wei", "c01/k01/t01/v01/", "0123456789abcdef")`,
/// `("meetings|heldOn", "2026-03-01", "c01/k01/t01/v01/", "0123456789abcdef")`. Written with
/// the view rows, in the same commit. Since layout 12 (records since 13).
pub const VIEW_ORDER: TableDefinition<'_, (&str, &str, &str, &str), &[u8]> =
    TableDefinition::new("view-order-1");

/// Name -> secret bytes of this store: [`FEED_KEY`]. Since layout 11.
pub const SECRETS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("secrets-1");

/// The [`SECRETS`] key of the 32-byte key that seals feed cursors (ChaCha20-Poly1305).
pub const FEED_KEY: &str = "feed-cursor-key";
