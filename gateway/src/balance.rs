//! How evenly a figure is spread over the units of a subtree at one level: "unbalanced work
//! across branches", a weakness the seed says the numbers must expose. Each unit's value
//! comes from its subtree's roll-up row, read in one batch, so the cost is one row per unit
//! compared.

use async_graphql::{Context, Enum, Result, SimpleObject};
use grassroots_schema as gs;
use grassroots_schema::UnitId;

use crate::graphql::{Unit, share};

/// A figure to compare across units.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum BalanceFigure {
    /// Members, per village.
    Members,
    /// Members who joined in the year, per village.
    NewMembers,
    /// Share of members under 35 in the year.
    Under35Share,
    /// Share of members aged 60 or over in the year.
    Aged60PlusShare,
    /// Share of members with higher education.
    HigherEducationShare,
    /// Activists (stages ACTIVIST and DEVELOPMENT_TARGET), per village.
    Activists,
    /// Routine meetings ("three sessions and one lesson") held in the year, per village.
    RoutineMeetings,
    /// Hours of training held in the year, per village.
    TrainingHours,
    /// Public disclosures published in the year, per village.
    Disclosures,
}

impl BalanceFigure {
    /// What [`value`](Self::value) reads of a roll-up in `year`: a comparison over many
    /// units reads only these parts of each unit's row (a test checks that each figure comes
    /// out the same from them alone).
    pub fn reads(self, year: i64) -> gs::Selection {
        let none = gs::Selection::default();
        let tallies = |prefix: String| gs::Selection::of_tallies([prefix]);
        let mut reads = match self {
            BalanceFigure::Members => gs::Selection {
                members: true,
                ..none
            },
            BalanceFigure::NewMembers => gs::Selection {
                by_joined_year: true,
                ..none
            },
            BalanceFigure::Under35Share | BalanceFigure::Aged60PlusShare => gs::Selection {
                members: true,
                by_birth_year: true,
                ..none
            },
            BalanceFigure::HigherEducationShare => gs::Selection {
                members: true,
                by_education: true,
                ..none
            },
            BalanceFigure::Activists => tallies("talent/".into()),
            BalanceFigure::RoutineMeetings => tallies(format!("meetings/{year}Q")),
            BalanceFigure::TrainingHours => tallies(format!("training_hours/{year}")),
            BalanceFigure::Disclosures => tallies(format!("disclosures_in/{year}/")),
        };
        // A count per village, above the villages.
        reads.tallies.push("villages".into());
        reads
    }

    /// Its value for a unit whose subtree's roll-up is `r`; none for a unit with nothing to
    /// compare (a share of no members, a count per village of a unit holding no village),
    /// which would otherwise enter the figures as a 0 or as a count not per village.
    fn value(self, r: &gs::Rollup, year: i64, level: gs::Level) -> Option<f64> {
        let of_members = |part: i64| (r.members > 0).then(|| share(part, r.members));
        let count = match self {
            BalanceFigure::Members => r.members,
            BalanceFigure::NewMembers => r.joined(year)[0],
            BalanceFigure::Under35Share => return of_members(r.young(year)),
            BalanceFigure::Aged60PlusShare => return of_members(r.elderly(year)),
            BalanceFigure::HigherEducationShare => return of_members(r.higher_education()),
            BalanceFigure::Activists => r.activists(),
            BalanceFigure::RoutineMeetings => r.routine_meetings_in(year),
            BalanceFigure::TrainingHours => r.training_hours(year),
            BalanceFigure::Disclosures => r.disclosures_in(year, None),
        };
        // A count, compared per village (a share returned above as it is): a village is one
        // village; a unit above counts the villages it holds.
        let villages = if level == gs::Level::Village {
            1
        } else {
            r.tally("villages")
        };
        (villages > 0).then(|| share(count, villages))
    }
}

/// One unit's value of the figure compared.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct UnitValue {
    #[graphql(skip)]
    unit: UnitId,
    /// Its value.
    value: f64,
}

#[async_graphql::ComplexObject]
impl UnitValue {
    /// The unit.
    async fn unit(&self, ctx: &Context<'_>) -> Result<Unit> {
        Unit::cached(ctx, self.unit.clone())
    }
}

/// How a figure is spread over the units of a subtree at one level.
#[derive(SimpleObject)]
pub struct Balance {
    /// The figure.
    figure: BalanceFigure,
    /// Units compared: every unit of the subtree at the level that this node knows and that
    /// has something to compare (members, for a share; villages, for a count per village).
    units: i64,
    /// The lowest value.
    min: f64,
    /// The highest value.
    max: f64,
    /// The mean.
    mean: f64,
    /// The standard deviation.
    std_dev: f64,
    /// `stdDev / mean` (0 when the mean is 0): how uneven, comparable across figures.
    variation: f64,
    /// The units with the lowest values, lowest first (ties by id): those that lag, but for
    /// `AGED_60_PLUS_SHARE`, where the highest are.
    lowest: Vec<UnitValue>,
    /// The units with the highest values, highest first.
    highest: Vec<UnitValue>,
}

impl Balance {
    /// `figure` over `units` (each with its subtree's roll-up) at `level` in `year`, with
    /// the `ends` lowest and highest named.
    pub fn of(
        figure: BalanceFigure,
        units: Vec<(UnitId, gs::Rollup)>,
        level: gs::Level,
        year: i64,
        ends: usize,
    ) -> Balance {
        let mut values: Vec<(UnitId, f64)> = units
            .into_iter()
            .filter_map(|(u, r)| figure.value(&r, year, level).map(|v| (u, v)))
            .collect();
        values.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        let n = values.len();
        let mean = if n > 0 {
            values.iter().map(|(_, v)| v).sum::<f64>() / n as f64
        } else {
            0.0
        };
        let std_dev = if n > 0 {
            (values.iter().map(|(_, v)| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt()
        } else {
            0.0
        };
        let named = |(u, v): &(UnitId, f64)| UnitValue {
            unit: u.clone(),
            value: *v,
        };
        Balance {
            figure,
            units: n as i64,
            min: values.first().map_or(0.0, |(_, v)| *v),
            max: values.last().map_or(0.0, |(_, v)| *v),
            mean,
            std_dev,
            variation: if mean > 0.0 { std_dev / mean } else { 0.0 },
            lowest: values.iter().take(ends).map(named).collect(),
            highest: values.iter().rev().take(ends).map(named).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BalanceFigure;
    use grassroots_schema as gs;
    use std::collections::BTreeMap;

    /// Each figure comes out the same from the parts of a roll-up it says it reads as from
    /// the whole, at a village and above: a comparison over many units reads only those.
    #[test]
    fn a_figure_reads_only_what_it_names() {
        let year = 2025;
        let mut r = gs::Rollup {
            members: 10,
            by_birth_year: BTreeMap::from([(1950, 3), (2000, 7)]),
            by_education: BTreeMap::from([
                (gs::Education::Bachelor.as_str().to_owned(), 4),
                (gs::Education::Primary.as_str().to_owned(), 6),
            ]),
            by_status: BTreeMap::from([("full".to_owned(), 10)]),
            by_joined_year: BTreeMap::from([(year, [2, 1, 1]), (year - 1, [8, 0, 0])]),
            higher_by_joined: BTreeMap::from([(year, BTreeMap::from([(2000, 1)]))]),
            ..Default::default()
        };
        let mut tallies = vec![
            ("talent/activist".to_owned(), 3),
            ("talent/development_target".to_owned(), 1),
            (format!("training_hours/{year}"), 5),
            (format!("training_hours/{}", year - 1), 50),
            (format!("disclosures_in/{year}/finance"), 2),
            (format!("disclosures_in/{}/finance", year - 1), 20),
            ("villages".to_owned(), 2),
        ];
        for (q, kind) in gs::entities::MeetingKind::ROUTINE.iter().enumerate() {
            tallies.push((format!("meetings/{year}Q{}/{}", q + 1, kind.as_str()), 2));
            tallies.push((format!("meetings/{}Q1/{}", year - 1, kind.as_str()), 9));
        }
        r.count_tallies(&tallies, 1);
        let figures = [
            BalanceFigure::Members,
            BalanceFigure::NewMembers,
            BalanceFigure::Under35Share,
            BalanceFigure::Aged60PlusShare,
            BalanceFigure::HigherEducationShare,
            BalanceFigure::Activists,
            BalanceFigure::RoutineMeetings,
            BalanceFigure::TrainingHours,
            BalanceFigure::Disclosures,
        ];
        for figure in figures {
            for level in [gs::Level::Village, gs::Level::Township] {
                let whole = figure.value(&r, year, level);
                assert!(whole.is_some_and(|v| v > 0.0), "{figure:?}: {whole:?}");
                let read = figure.value(&r.selected(&figure.reads(year)), year, level);
                assert_eq!(read, whole, "{figure:?} at {level:?}");
            }
        }
    }
}
