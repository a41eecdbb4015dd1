//! Roll-ups: per-unit counts over a whole subtree, from which the seed's indicators are
//! computed for any year without touching a record. A store keeps one [`Rollup`] per unit
//! (its subtree's totals) and adjusts it by signed deltas as records change, so a city-wide
//! indicator is one row and each child's figure is one row more.
//!
//! Counts are keyed by stable values (birth year, join year, storage names of enums) rather
//! than by derived categories ("under 35"), which depend on the year asked about.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::entities::{MeetingKind, SECRETARY, Secretary};
use crate::records::{Member, MemberCategory, MemberStatus};

/// Age below which a member counts as young in the seed's targets.
pub const YOUNG_UNDER: i64 = 35;
/// Age from which a member counts as elderly ("ageing members").
pub const ELDERLY_FROM: i64 = 60;

/// Counts over the members of a subtree. Every map omits zero counts, so two roll-ups of the
/// same members are equal whatever order the records came and went in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollup {
    /// Members.
    pub members: i64,
    /// Members by status storage name.
    pub by_status: BTreeMap<String, i64>,
    /// Members by gender storage name.
    pub by_gender: BTreeMap<String, i64>,
    /// Members by education storage name.
    pub by_education: BTreeMap<String, i64>,
    /// Members by birth year.
    pub by_birth_year: BTreeMap<i64, i64>,
    /// Members with higher education, by join year, then birth year ("new members under 35
    /// with higher education" for any year).
    pub higher_by_joined: BTreeMap<i64, BTreeMap<i64, i64>>,
    /// Members by join year, as `[all, young (under 35 that year), women]` (the yearly
    /// figure of party building). Numbers, not tally keys: a row of a city's roll-up holds
    /// one entry per year since the oldest member joined.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_joined_year: BTreeMap<i64, [i64; 3]>,
    /// Counts (and sums) from the other record kinds and from village profiles, keyed by
    /// `what/stable value` (see `EntitySpec::tallies` and `UnitProfile::tallies`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tallies: BTreeMap<String, i64>,
}

/// Add `by` to a count. Wrapping, not checked: a sum that adds and later subtracts the same
/// values must come back to where it was whatever the order (validated values keep real
/// sums far from the limits).
fn bump<K: Ord + Clone>(map: &mut BTreeMap<K, i64>, key: &K, by: i64) {
    // The key is copied only when it is new: a sum over many rows mostly meets keys it holds.
    match map.get_mut(key) {
        Some(v) => {
            *v = v.wrapping_add(by);
            if *v == 0 {
                map.remove(key);
            }
        }
        None if by != 0 => {
            map.insert(key.clone(), by);
        }
        None => {}
    }
}

/// Add `delta` to a year's `[all, young, women]` counts, dropping the year at zero.
fn bump_joined(map: &mut BTreeMap<i64, [i64; 3]>, year: i64, delta: [i64; 3]) {
    let v = map.entry(year).or_default();
    for (c, d) in v.iter_mut().zip(delta) {
        *c = c.wrapping_add(d);
    }
    if *v == [0; 3] {
        map.remove(&year);
    }
}

/// The tally of members in category `c` (of one status when given).
fn category_key(c: MemberCategory, status: Option<MemberStatus>) -> String {
    match status {
        None => format!("member-category/{}", c.as_str()),
        Some(s) => format!("member-category/{}/{}", c.as_str(), s.as_str()),
    }
}

/// The year of a `YYYY-MM-DD` date.
fn year_of(date: &str) -> Option<i64> {
    date.get(..4)?.parse().ok()
}

impl Rollup {
    /// Count `m` once more (`sign` 1) or once less (`sign` -1).
    pub fn count(&mut self, m: &Member, sign: i64) {
        self.members += sign;
        bump(&mut self.by_status, &m.status.as_str().to_owned(), sign);
        bump(&mut self.by_gender, &m.gender.as_str().to_owned(), sign);
        bump(
            &mut self.by_education,
            &m.education.as_str().to_owned(),
            sign,
        );
        bump(&mut self.by_birth_year, &m.birth_year, sign);
        for c in &m.categories {
            bump(&mut self.tallies, &category_key(*c, None), sign);
            bump(&mut self.tallies, &category_key(*c, Some(m.status)), sign);
        }
        // Members who joined in a year (party building's yearly figure), and of those the
        // young (under 35 that year) and the women.
        if let Some(joined) = year_of(&m.joined_on) {
            let delta = [
                sign,
                if joined - m.birth_year < YOUNG_UNDER {
                    sign
                } else {
                    0
                },
                if m.gender == crate::records::Gender::Female {
                    sign
                } else {
                    0
                },
            ];
            bump_joined(&mut self.by_joined_year, joined, delta);
        }
        if m.education.is_higher()
            && let Some(joined) = year_of(&m.joined_on)
        {
            let by_birth = self.higher_by_joined.entry(joined).or_default();
            bump(by_birth, &m.birth_year, sign);
            if by_birth.is_empty() {
                self.higher_by_joined.remove(&joined);
            }
        }
    }

    /// The secretaries in office on `day` (`YYYY-MM-DD`), each with how many the roll-up
    /// counts alike.
    pub fn secretaries_on<'a>(
        &'a self,
        day: &'a str,
    ) -> impl Iterator<Item = (Secretary, i64)> + 'a {
        self.tallies_under(SECRETARY)
            .filter(|(_, n)| *n > 0)
            .filter_map(move |(key, n)| Secretary::in_office(key, day).map(|s| (s, n)))
    }

    /// Activists (stages ACTIVIST and DEVELOPMENT_TARGET).
    pub fn activists(&self) -> i64 {
        self.tally("talent/activist") + self.tally("talent/development_target")
    }

    /// Meetings of `kind` held in `quarter` (`YYYYQn`).
    pub fn meetings(&self, quarter: &str, kind: MeetingKind) -> i64 {
        self.tally(&format!("meetings/{quarter}/{}", kind.as_str()))
    }

    /// The routine meetings ("three sessions and one lesson") held in `year`, all kinds.
    pub fn routine_meetings_in(&self, year: i64) -> i64 {
        // One range of the tallies (`meetings/<year>Q<n>/<kind>`), not a key made for each
        // quarter and kind: a balance over a city's villages asks it of 5,000 roll-ups.
        self.tallies_under(&format!("meetings/{year}Q"))
            .filter(|(rest, _)| {
                rest.split_once('/').is_some_and(|(q, kind)| {
                    matches!(q, "1" | "2" | "3" | "4")
                        && MeetingKind::ROUTINE.iter().any(|k| k.as_str() == kind)
                })
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Hours of training held in `year`.
    pub fn training_hours(&self, year: i64) -> i64 {
        self.tally(&format!("training_hours/{year}"))
    }

    /// Disclosures published in `year`, of one category or (`None`) of all.
    pub fn disclosures_in(&self, year: i64, category: Option<&str>) -> i64 {
        match category {
            Some(c) => self.tally(&format!("disclosures_in/{year}/{c}")),
            None => self
                .tallies_under(&format!("disclosures_in/{year}/"))
                .map(|(_, n)| n)
                .sum(),
        }
    }

    /// Members who joined in `year`: `[all, young (under 35 that year), women]`.
    pub fn joined(&self, year: i64) -> [i64; 3] {
        self.by_joined_year.get(&year).copied().unwrap_or_default()
    }

    /// Members in category `c` (of `status` only, when given).
    pub fn in_category(&self, c: MemberCategory, status: Option<MemberStatus>) -> i64 {
        self.tallies
            .get(&category_key(c, status))
            .copied()
            .unwrap_or(0)
    }

    /// Add `tallies` once more (`sign` 1) or once less (`sign` -1).
    pub fn count_tallies(&mut self, tallies: &[(String, i64)], sign: i64) {
        for (k, v) in tallies {
            bump(&mut self.tallies, k, sign.wrapping_mul(*v));
        }
    }

    /// One tally (0 when absent).
    pub fn tally(&self, key: &str) -> i64 {
        self.tallies.get(key).copied().unwrap_or(0)
    }

    /// The tallies whose key starts with `prefix`, with the rest of the key.
    pub fn tallies_under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, i64)> {
        self.tallies
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .map_while(move |(k, v)| k.strip_prefix(prefix).map(|rest| (rest, *v)))
    }

    /// Add `other` times `sign` to this roll-up.
    pub fn merge(&mut self, other: &Rollup, sign: i64) {
        for (k, v) in &other.tallies {
            bump(&mut self.tallies, k, sign.wrapping_mul(*v));
        }
        self.members = self.members.wrapping_add(sign.wrapping_mul(other.members));
        for (k, v) in &other.by_status {
            bump(&mut self.by_status, k, sign.wrapping_mul(*v));
        }
        for (k, v) in &other.by_gender {
            bump(&mut self.by_gender, k, sign.wrapping_mul(*v));
        }
        for (k, v) in &other.by_education {
            bump(&mut self.by_education, k, sign.wrapping_mul(*v));
        }
        for (k, v) in &other.by_birth_year {
            bump(&mut self.by_birth_year, k, sign.wrapping_mul(*v));
        }
        for (joined, counts) in &other.by_joined_year {
            let delta = counts.map(|c| sign.wrapping_mul(c));
            bump_joined(&mut self.by_joined_year, *joined, delta);
        }
        for (joined, births) in &other.higher_by_joined {
            let mine = self.higher_by_joined.entry(*joined).or_default();
            for (b, v) in births {
                bump(mine, b, sign.wrapping_mul(*v));
            }
            if mine.is_empty() {
                self.higher_by_joined.remove(joined);
            }
        }
    }

    /// Whether it counts nothing.
    pub fn is_empty(&self) -> bool {
        *self == Rollup::default()
    }

    /// Members younger than [`YOUNG_UNDER`] in `year`.
    pub fn young(&self, year: i64) -> i64 {
        self.by_birth_year
            .range(year - YOUNG_UNDER + 1..)
            .map(|(_, n)| n)
            .sum()
    }

    /// Members aged [`ELDERLY_FROM`] or more in `year`.
    pub fn elderly(&self, year: i64) -> i64 {
        self.by_birth_year
            .range(..=year - ELDERLY_FROM)
            .map(|(_, n)| n)
            .sum()
    }

    /// Members with higher education.
    pub fn higher_education(&self) -> i64 {
        crate::records::Education::ALL
            .iter()
            .filter(|e| e.is_higher())
            .filter_map(|e| self.by_education.get(e.as_str()))
            .sum()
    }

    /// Members who joined in `year`, younger than [`YOUNG_UNDER`] then, with higher
    /// education (the seed's target: at least one per village a year).
    pub fn new_young_higher(&self, year: i64) -> i64 {
        self.higher_by_joined
            .get(&year)
            .map(|b| b.range(year - YOUNG_UNDER + 1..).map(|(_, n)| n).sum())
            .unwrap_or(0)
    }
}

/// The parts of a roll-up a reader needs. The store reads a row for those only and passes
/// over the rest: a target report over a city reads 5,000 rows and needs a few tallies of
/// each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// `members`.
    pub members: bool,
    /// `by_status`.
    pub by_status: bool,
    /// `by_gender`.
    pub by_gender: bool,
    /// `by_education`.
    pub by_education: bool,
    /// `by_birth_year`.
    pub by_birth_year: bool,
    /// `by_joined_year`.
    pub by_joined_year: bool,
    /// Of the members with higher education, those who joined in these years.
    pub higher_joined: Vec<i64>,
    /// The tallies whose key starts with one of these.
    pub tallies: Vec<String>,
}

impl Selection {
    /// The tallies whose keys start with one of `prefixes`, and nothing else.
    pub fn of_tallies(prefixes: impl IntoIterator<Item = String>) -> Selection {
        Selection {
            tallies: prefixes.into_iter().collect(),
            ..Selection::default()
        }
    }

    /// Everything `other` selects as well.
    pub fn add(&mut self, other: &Selection) {
        self.members |= other.members;
        self.by_status |= other.by_status;
        self.by_gender |= other.by_gender;
        self.by_education |= other.by_education;
        self.by_birth_year |= other.by_birth_year;
        self.by_joined_year |= other.by_joined_year;
        self.higher_joined.extend(&other.higher_joined);
        self.tallies.extend(other.tallies.iter().cloned());
    }

    /// Whether it keeps the tally keyed `key`.
    pub fn keeps_tally(&self, key: &str) -> bool {
        self.tallies.iter().any(|p| key.starts_with(p.as_str()))
    }
}

impl Rollup {
    /// Only the parts `sel` names: what the store's reading of this roll-up's row for `sel`
    /// gives.
    pub fn selected(&self, sel: &Selection) -> Rollup {
        fn kept<T: Clone + Default>(yes: bool, v: &T) -> T {
            if yes { v.clone() } else { T::default() }
        }
        Rollup {
            members: kept(sel.members, &self.members),
            by_status: kept(sel.by_status, &self.by_status),
            by_gender: kept(sel.by_gender, &self.by_gender),
            by_education: kept(sel.by_education, &self.by_education),
            by_birth_year: kept(sel.by_birth_year, &self.by_birth_year),
            by_joined_year: kept(sel.by_joined_year, &self.by_joined_year),
            higher_by_joined: self
                .higher_by_joined
                .iter()
                .filter(|(y, _)| sel.higher_joined.contains(y))
                .map(|(y, b)| (*y, b.clone()))
                .collect(),
            tallies: self
                .tallies
                .iter()
                .filter(|(k, _)| sel.keeps_tally(k))
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Education, Gender, MemberId, MemberStatus, RecordId};

    fn m(i: u64, birth: i64, edu: Education, joined: &str) -> Member {
        Member {
            id: MemberId {
                unit: "c01/k01/t01/v01".parse().unwrap(),
                record: RecordId::from_u64(i),
            },
            name: format!("M{i}"),
            birth_year: birth,
            gender: Gender::Female,
            education: edu,
            joined_on: joined.into(),
            status: MemberStatus::Full,
            phone: None,
            id_number: None,
            categories: Vec::new(),
            created: None,
            changed: None,
        }
    }

    #[test]
    fn counts_give_the_indicators_for_any_year() {
        let mut r = Rollup::default();
        r.count(&m(1, 1995, Education::Bachelor, "2026-03-01"), 1);
        r.count(&m(2, 1960, Education::Primary, "1990-01-01"), 1);
        r.count(&m(3, 1980, Education::College, "2026-05-01"), 1);
        assert_eq!(r.members, 3);
        assert_eq!(r.young(2026), 1, "born 1995 is 31 in 2026");
        assert_eq!(r.young(2031), 0, "and 36 in 2031");
        assert_eq!(r.elderly(2026), 1);
        assert_eq!(r.higher_education(), 2);
        assert_eq!(r.new_young_higher(2026), 1, "the 1980 member is too old");
        assert_eq!(r.new_young_higher(2025), 0);
    }

    /// The routine meetings of a year are the meetings of the four routine kinds in its four
    /// quarters, and nothing else under those keys.
    #[test]
    fn routine_meetings_are_the_four_kinds_in_the_four_quarters() {
        let mut r = Rollup::default();
        let mut want = 0;
        for (q, n) in [("1", 1), ("2", 2), ("4", 4), ("5", 50), ("12", 60)] {
            for kind in MeetingKind::ROUTINE {
                r.count_tallies(&[(format!("meetings/2026Q{q}/{}", kind.as_str()), n)], 1);
                if q.len() == 1 && q != "5" {
                    want += n;
                }
            }
            r.count_tallies(&[(format!("meetings/2026Q{q}/study_session"), 100)], 1);
            r.count_tallies(&[(format!("meetings/2026Q{q}/group_meeting/x"), 100)], 1);
        }
        r.count_tallies(&[("meetings/2025Q1/group_meeting".into(), 1000)], 1);
        r.count_tallies(&[("attendance/2026Q1/group_meeting".into(), 1000)], 1);
        let formatted: i64 = (1..=4)
            .flat_map(|q| MeetingKind::ROUTINE.map(|k| r.meetings(&format!("2026Q{q}"), k)))
            .sum();
        assert_eq!(r.routine_meetings_in(2026), want);
        assert_eq!(formatted, want);
        assert_eq!(r.routine_meetings_in(2025), 1000);
    }

    #[test]
    fn removing_what_was_added_leaves_nothing_in_any_order() {
        let ms: Vec<Member> = (0..20)
            .map(|i| {
                let edu = Education::ALL[i as usize % Education::ALL.len()];
                m(i, 1950 + i as i64 * 3, edu, &format!("{}-01-01", 2000 + i))
            })
            .collect();
        let mut a = Rollup::default();
        let mut b = Rollup::default();
        for x in &ms {
            a.count(x, 1);
        }
        for x in ms.iter().rev() {
            b.count(x, 1);
        }
        assert_eq!(a, b);
        let mut delta = Rollup::default();
        delta.merge(&a, -1);
        b.merge(&delta, 1);
        assert!(b.is_empty(), "{b:?}");
        for x in &ms {
            a.count(x, -1);
        }
        assert!(a.is_empty(), "{a:?}");
        let json = serde_json::to_string(&ms.iter().fold(Rollup::default(), |mut r, x| {
            r.count(x, 1);
            r
        }))
        .unwrap();
        let back: Rollup = serde_json::from_str(&json).unwrap();
        assert_eq!(back.members, 20);
    }
}
