//! The roll-up view: one [`Rollup`] per unit over its whole subtree, kept by deltas.
//!
//! Each commit notes the member, record and village profile rows it replaces (`-1`) and
//! writes (`+1`) per owning unit,
//! then adds each unit's delta to the rows of the unit and every ancestor: at most four
//! read-modify-writes per unit touched, whatever the size of the subtree.

use std::collections::BTreeMap;

use grassroots_schema::{Member, Rollup, UnitId};
use redb::{ReadableTable, Table};

use super::{StoreError, db, to_json};

/// Signed changes to the roll-ups, by the unit owning the records.
#[derive(Debug, Default)]
pub(super) struct Deltas(BTreeMap<UnitId, Rollup>);

impl Deltas {
    /// `m` appears (`sign` 1) or disappears (`sign` -1) from the members view.
    pub(super) fn note(&mut self, m: &Member, sign: i64) {
        self.0.entry(m.id.unit.clone()).or_default().count(m, sign);
    }

    /// A record's or a profile's tallies appear (`sign` 1) or disappear (`sign` -1).
    pub(super) fn note_tallies(&mut self, unit: &UnitId, tallies: &[(String, i64)], sign: i64) {
        if !tallies.is_empty() {
            self.0
                .entry(unit.clone())
                .or_default()
                .count_tallies(tallies, sign);
        }
    }

    /// Add the deltas to the stored roll-ups of their units and every ancestor; whether any
    /// row changed.
    pub(super) fn apply(self, table: &mut Table<'_, &str, &[u8]>) -> Result<bool, StoreError> {
        let mut wrote = false;
        for (unit, delta) in self.up_the_tree() {
            if delta.is_empty() {
                continue;
            }
            let key = unit.tree_key();
            let mut row = match table.get(key.as_str()).map_err(db)? {
                Some(v) => parse(&key, v.value())?,
                None => Rollup::default(),
            };
            row.merge(&delta, 1);
            wrote = true;
            if row.is_empty() {
                table.remove(key.as_str()).map_err(db)?;
            } else {
                table
                    .insert(key.as_str(), to_json(&row)?.as_slice())
                    .map_err(db)?;
            }
        }
        Ok(wrote)
    }
}

impl Deltas {
    /// Each unit's delta added to its own and every ancestor's.
    fn up_the_tree(self) -> BTreeMap<UnitId, Rollup> {
        let mut by_unit: BTreeMap<UnitId, Rollup> = BTreeMap::new();
        for (unit, delta) in self.0 {
            for u in unit.line() {
                by_unit.entry(u).or_default().merge(&delta, 1);
            }
        }
        by_unit
    }
}

fn parse(key: &str, bytes: &[u8]) -> Result<Rollup, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("roll-up {key}: {e}")))
}

/// Roll-ups computed from scratch over `members` and the `tallies` of records and profiles,
/// by unit tree key.
pub(super) fn compute<'a>(
    members: impl Iterator<Item = &'a Member>,
    tallies: impl Iterator<Item = (UnitId, Vec<(String, i64)>)>,
) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
    let mut deltas = Deltas::default();
    for m in members {
        deltas.note(m, 1);
    }
    for (unit, t) in tallies {
        deltas.note_tallies(&unit, &t, 1);
    }
    deltas
        .up_the_tree()
        .into_iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(u, r)| Ok((u.tree_key(), to_json(&r)?)))
        .collect()
}
