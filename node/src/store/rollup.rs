//! The roll-up view: one [`Rollup`] per unit over its whole subtree, kept by deltas.
//!
//! Each commit notes the member rows it replaces (`-1`) and writes (`+1`) per owning unit,
//! then adds each unit's delta to the rows of the unit and every ancestor: at most four
//! read-modify-writes per unit touched, whatever the size of the subtree.

use std::collections::BTreeMap;

use grassroots_schema::{Member, Rollup, UnitId};
use redb::{ReadableTable, Table, WriteTransaction};

use super::tables::{VIEW_MEMBERS, VIEW_ROLLUPS};
use super::{StoreError, db, to_json};

/// Signed changes to the roll-ups, by the unit owning the records.
#[derive(Debug, Default)]
pub(super) struct Deltas(BTreeMap<UnitId, Rollup>);

impl Deltas {
    /// `m` appears (`sign` 1) or disappears (`sign` -1) from the members view.
    pub(super) fn note(&mut self, m: &Member, sign: i64) {
        self.0.entry(m.id.unit.clone()).or_default().count(m, sign);
    }

    /// Add the deltas to the stored roll-ups of their units and every ancestor; whether any
    /// row changed.
    pub(super) fn apply(self, table: &mut Table<'_, &str, &[u8]>) -> Result<bool, StoreError> {
        let mut wrote = false;
        let mut by_unit: BTreeMap<UnitId, Rollup> = BTreeMap::new();
        for (unit, delta) in self.0 {
            let mut at = Some(unit);
            while let Some(u) = at {
                at = u.parent();
                by_unit.entry(u).or_default().merge(&delta, 1);
            }
        }
        for (unit, delta) in by_unit {
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

fn parse(key: &str, bytes: &[u8]) -> Result<Rollup, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("roll-up {key}: {e}")))
}

/// Roll-ups computed from scratch over `members`, by unit tree key.
pub(super) fn compute<'a>(
    members: impl Iterator<Item = &'a Member>,
) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
    let mut by_unit: BTreeMap<UnitId, Rollup> = BTreeMap::new();
    for m in members {
        let mut at = Some(m.id.unit.clone());
        while let Some(u) = at {
            at = u.parent();
            by_unit.entry(u).or_default().count(m, 1);
        }
    }
    by_unit
        .into_iter()
        .map(|(u, r)| Ok((u.tree_key(), to_json(&r)?)))
        .collect()
}

/// Layout 3: the roll-up table, computed from the members view.
pub(super) fn migrate_3_rollups(tx: &WriteTransaction) -> Result<(), StoreError> {
    let mut members = Vec::new();
    for row in tx
        .open_table(VIEW_MEMBERS)
        .map_err(db)?
        .iter()
        .map_err(db)?
    {
        let (k, v) = row.map_err(db)?;
        let m: Member = serde_json::from_slice(v.value()).map_err(|e| {
            StoreError::Corrupt(format!("member row {}{}: {e}", k.value().0, k.value().1))
        })?;
        members.push(m);
    }
    let mut table = tx.open_table(VIEW_ROLLUPS).map_err(db)?;
    table.retain(|_, _| false).map_err(db)?;
    for (key, json) in compute(members.iter())? {
        table.insert(key.as_str(), json.as_slice()).map_err(db)?;
    }
    Ok(())
}
