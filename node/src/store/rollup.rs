//! The roll-up view: one [`Rollup`] per unit over its whole subtree, kept by deltas.
//!
//! Each commit notes the member, record and village profile rows it replaces (`-1`) and
//! writes (`+1`) per owning unit,
//! then adds each unit's delta to the rows of the unit and every ancestor: at most four
//! read-modify-writes per unit touched, whatever the size of the subtree. The rows have
//! their own format (below), which a reader can read in part.

use std::collections::BTreeMap;

use grassroots_schema::{Member, Rollup, Selection, UnitId};
use redb::{ReadableTable, Table, WriteTransaction};

use super::tables::{VIEW_ROLLUPS, VIEW_ROLLUPS_JSON};
use super::{StoreError, db};

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
                Some(v) => read(&key, v.value(), None)?,
                None => Rollup::default(),
            };
            row.merge(&delta, 1);
            wrote = true;
            if row.is_empty() {
                table.remove(key.as_str()).map_err(db)?;
            } else {
                table
                    .insert(key.as_str(), encode(&row).as_slice())
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
        .map(|(u, r)| Ok((u.tree_key(), encode(&r))))
        .collect()
}

/// Layout 14: each roll-up row of [`VIEW_ROLLUPS_JSON`] written into [`VIEW_ROLLUPS`] in
/// the row format below, and the old table deleted. A row that does not decode stops
/// nothing: every view is then written again from the documents (as `grassroots store
/// rebuild` does), since a unit whose row was left out would count its later changes from
/// zero.
pub(super) fn migrate_14_rows(tx: &WriteTransaction) -> Result<(), StoreError> {
    let mut spoilt = 0usize;
    {
        let old = tx.open_table(VIEW_ROLLUPS_JSON).map_err(db)?;
        let mut new = tx.open_table(VIEW_ROLLUPS).map_err(db)?;
        for row in old.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            match serde_json::from_slice::<Rollup>(v.value()) {
                Ok(r) => {
                    new.insert(k.value(), encode(&r).as_slice()).map_err(db)?;
                }
                Err(e) => {
                    spoilt += 1;
                    tracing::error!(unit = k.value(), "a roll-up row that does not decode: {e}");
                }
            }
        }
    }
    tx.delete_table(VIEW_ROLLUPS_JSON).map_err(db)?;
    super::load::rebuild_if_spoilt(tx, spoilt, "roll-up")
}

// The row format (since layout 14). A format byte, then the roll-up's parts in a fixed
// order, each as its length in bytes and its bytes, so that a reader passes over a part it
// does not need by its length alone: `members`, `by_status`, `by_gender`, `by_education`,
// `by_birth_year`, `higher_by_joined`, `by_joined_year`, `tallies`. Integers are LEB128
// varints, signed ones zigzagged; a map is its entry count, then each key and value in key
// order; a text is its length and its UTF-8 bytes. A city's 5,111 rows hold 7.4 MB as JSON,
// whose parsing was most of a target report's time even for the parts it passed over.

/// The format byte of a row.
const FORMAT: u8 = 1;

/// A roll-up as its row's bytes.
pub(super) fn encode(r: &Rollup) -> Vec<u8> {
    let mut out = vec![FORMAT];
    let mut part = Vec::new();
    let mut put = |out: &mut Vec<u8>, write: &dyn Fn(&mut Vec<u8>)| {
        part.clear();
        write(&mut part);
        varint(out, part.len() as u64);
        out.extend_from_slice(&part);
    };
    put(&mut out, &|p| int(p, r.members));
    put(&mut out, &|p| texts(p, &r.by_status));
    put(&mut out, &|p| texts(p, &r.by_gender));
    put(&mut out, &|p| texts(p, &r.by_education));
    put(&mut out, &|p| years(p, &r.by_birth_year));
    put(&mut out, &|p| {
        varint(p, r.higher_by_joined.len() as u64);
        for (joined, births) in &r.higher_by_joined {
            int(p, *joined);
            years(p, births);
        }
    });
    put(&mut out, &|p| {
        varint(p, r.by_joined_year.len() as u64);
        for (year, counts) in &r.by_joined_year {
            int(p, *year);
            for c in counts {
                int(p, *c);
            }
        }
    });
    put(&mut out, &|p| texts(p, &r.tallies));
    out
}

/// The roll-up in the row `bytes` of the unit keyed `key`: only the parts `wanted` names,
/// or (`None`) all of them.
pub(super) fn read(
    key: &str,
    bytes: &[u8],
    wanted: Option<&Selection>,
) -> Result<Rollup, StoreError> {
    decode(bytes, wanted).map_err(|e| StoreError::Corrupt(format!("roll-up {key}: {e}")))
}

fn decode(bytes: &[u8], wanted: Option<&Selection>) -> Result<Rollup, &'static str> {
    let keeps = |part: fn(&Selection) -> bool| wanted.is_none_or(part);
    let mut row = In(bytes);
    if row.byte()? != FORMAT {
        return Err("a row format this build does not know");
    }
    let mut r = Rollup::default();
    let mut p = row.part()?;
    if keeps(|s| s.members) {
        r.members = p.int()?;
        p.end()?;
    }
    let mut p = row.part()?;
    if keeps(|s| s.by_status) {
        r.by_status = p.texts(|_| true)?;
    }
    let mut p = row.part()?;
    if keeps(|s| s.by_gender) {
        r.by_gender = p.texts(|_| true)?;
    }
    let mut p = row.part()?;
    if keeps(|s| s.by_education) {
        r.by_education = p.texts(|_| true)?;
    }
    let mut p = row.part()?;
    if keeps(|s| s.by_birth_year) {
        r.by_birth_year = p.years()?;
        p.end()?;
    }
    let mut p = row.part()?;
    if keeps(|s| !s.higher_joined.is_empty()) {
        for _ in 0..p.varint()? {
            let joined = p.int()?;
            if wanted.is_none_or(|s| s.higher_joined.contains(&joined)) {
                r.higher_by_joined.insert(joined, p.years()?);
            } else {
                for _ in 0..p.varint()? {
                    p.int()?;
                    p.int()?;
                }
            }
        }
        p.end()?;
    }
    let mut p = row.part()?;
    if keeps(|s| s.by_joined_year) {
        for _ in 0..p.varint()? {
            let year = p.int()?;
            let counts = [p.int()?, p.int()?, p.int()?];
            r.by_joined_year.insert(year, counts);
        }
        p.end()?;
    }
    let mut p = row.part()?;
    if keeps(|s| !s.tallies.is_empty()) {
        r.tallies = p.texts(|key| wanted.is_none_or(|s| s.keeps_tally(key)))?;
    }
    row.end()?;
    Ok(r)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn int(out: &mut Vec<u8>, v: i64) {
    varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn texts(out: &mut Vec<u8>, map: &BTreeMap<String, i64>) {
    varint(out, map.len() as u64);
    for (k, v) in map {
        varint(out, k.len() as u64);
        out.extend_from_slice(k.as_bytes());
        int(out, *v);
    }
}

fn years(out: &mut Vec<u8>, map: &BTreeMap<i64, i64>) {
    varint(out, map.len() as u64);
    for (k, v) in map {
        int(out, *k);
        int(out, *v);
    }
}

/// The bytes of a row or a part not read yet.
struct In<'a>(&'a [u8]);

impl<'a> In<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], &'static str> {
        let n = usize::try_from(n).map_err(|_| "a length past this machine's")?;
        if n > self.0.len() {
            return Err("cut short");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            // The tenth byte holds the top bit alone.
            if shift == 63 && b > 1 {
                break;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a number too long")
    }

    fn int(&mut self) -> Result<i64, &'static str> {
        let u = self.varint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// The next part, which the caller reads or passes over.
    fn part(&mut self) -> Result<In<'a>, &'static str> {
        let n = self.varint()?;
        Ok(In(self.take(n)?))
    }

    /// A map by text, only the keys `keep` passes (each copied only then); the part read
    /// to its end.
    fn texts(
        &mut self,
        keep: impl Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, i64>, &'static str> {
        let mut out = BTreeMap::new();
        for _ in 0..self.varint()? {
            let n = self.varint()?;
            let key = std::str::from_utf8(self.take(n)?).map_err(|_| "a key not UTF-8")?;
            let v = self.int()?;
            if keep(key) {
                out.insert(key.to_owned(), v);
            }
        }
        self.end()?;
        Ok(out)
    }

    /// A map by year (of a part, or within one: not read to its end).
    fn years(&mut self) -> Result<BTreeMap<i64, i64>, &'static str> {
        let mut out = BTreeMap::new();
        for _ in 0..self.varint()? {
            let k = self.int()?;
            out.insert(k, self.int()?);
        }
        Ok(out)
    }

    fn end(&self) -> Result<(), &'static str> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("bytes past the end")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A roll-up with counts in every part: members of every education and join year, and
    /// tallies under three prefixes (one key with a quote and one not ASCII).
    fn assorted(n: u64, sign: i64) -> Rollup {
        let mut r = Rollup::default();
        for i in 0..n {
            let edu = grassroots_schema::Education::ALL[i as usize % 6];
            let m = Member {
                id: grassroots_schema::MemberId {
                    unit: "c01/k01/t01/v01".parse().unwrap(),
                    record: grassroots_schema::RecordId::from_u64(i),
                },
                name: format!("M{i}"),
                birth_year: 1950 + (i as i64 * 7) % 60,
                gender: grassroots_schema::Gender::Female,
                education: edu,
                joined_on: format!("{}-01-01", 2015 + i % 12),
                status: grassroots_schema::MemberStatus::Full,
                phone: None,
                id_number: None,
                categories: Vec::new(),
                created: None,
                changed: None,
            };
            r.count(&m, sign);
        }
        let tallies: Vec<(String, i64)> = (0..n)
            .map(|i| {
                let what =
                    ["meetings/2026Q1/", "reports/\"debriefing\"/", "talent/村/"][i as usize % 3];
                (format!("{what}{i}"), i as i64 * 1_000_000_007 + 1)
            })
            .collect();
        r.count_tallies(&tallies, sign);
        r
    }

    proptest! {
        /// A row read for a selection is the roll-up read whole, then `selected`; read
        /// whole, it is the roll-up written.
        #[test]
        fn a_row_read_for_a_selection_holds_what_it_names(
            n in 0u64..40,
            negative: bool,
            counts: [bool; 6],
            years in proptest::collection::vec(2010i64..2030, 0..4),
            prefixes in proptest::collection::vec(
                proptest::sample::select(vec!["", "meetings/", "meetings/2026Q1/1", "reports/", "talent/村", "nothing/"]),
                0..3,
            ),
        ) {
            let whole = assorted(n, if negative { -1 } else { 1 });
            let row = encode(&whole);
            prop_assert_eq!(&read("k", &row, None).unwrap(), &whole);
            let [members, by_status, by_gender, by_education, by_birth_year, by_joined_year] =
                counts;
            let sel = Selection {
                members,
                by_status,
                by_gender,
                by_education,
                by_birth_year,
                by_joined_year,
                higher_joined: years,
                tallies: prefixes.into_iter().map(str::to_owned).collect(),
            };
            prop_assert_eq!(read("k", &row, Some(&sel)).unwrap(), whole.selected(&sel));
        }

        /// Bytes that are not a row never panic the reader, whatever part they spoil (an
        /// error, or counts that differ: a byte changed within a count is another count).
        #[test]
        fn a_spoilt_row_never_panics(n in 0u64..20, at in any::<prop::sample::Index>(), to: u8) {
            let mut row = encode(&assorted(n, 1));
            let i = at.index(row.len());
            row[i] = to;
            let _ = read("k", &row, None);
            let every = Selection { tallies: vec![String::new()], ..Selection::default() };
            let _ = read("k", &row, Some(&every));
        }
    }

    /// The parts of `row` as its bytes hold them, each without its length.
    fn parts(row: &[u8]) -> Vec<Vec<u8>> {
        let mut r = In(&row[1..]);
        (0..8).map(|_| r.part().unwrap().0.to_vec()).collect()
    }

    /// A part longer than what it holds is an error, whichever part it is: each is read to
    /// its end.
    #[test]
    fn a_part_with_bytes_past_its_counts_is_an_error() {
        let row = encode(&assorted(12, 1));
        for spoilt in 0..8 {
            let mut out = vec![FORMAT];
            for (i, mut part) in parts(&row).into_iter().enumerate() {
                if i == spoilt {
                    part.push(0);
                }
                varint(&mut out, part.len() as u64);
                out.extend_from_slice(&part);
            }
            assert!(read("k", &out, None).is_err(), "part {spoilt}");
        }
    }

    #[test]
    fn a_number_past_64_bits_is_an_error() {
        let mut p = In(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        assert!(p.varint().is_err());
        let mut p = In(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(p.varint(), Ok(u64::MAX));
    }

    #[test]
    fn a_row_cut_short_or_run_on_is_an_error() {
        let row = encode(&assorted(12, 1));
        for cut in 0..row.len() {
            assert!(read("k", &row[..cut], None).is_err(), "cut at {cut}");
        }
        let mut longer = row.clone();
        longer.push(0);
        assert!(read("k", &longer, None).is_err());
        let mut other = row;
        other[0] = FORMAT + 1;
        assert!(read("k", &other, None).is_err());
    }
}
