//! The demo federation: 1 city, 2 counties, 2 townships each, 3 villages each (19 nodes),
//! seeded with a little realistic data.

use std::path::Path;

use anyhow::Context as _;
use grassroots_schema::entities::{MeetingKind, Organisation, ServiceFunction};
use grassroots_schema::{
    DocKind, Education, Fields, Gender, MemberCategory, MemberStatus, NewMember, Role, UnitDetails,
    UnitId, Value,
};

use crate::federation::{Federation, UnitSpec};

const COUNTIES: [&str; 2] = ["Dongping County", "Xishan County"];
const TOWNSHIPS: [&str; 4] = [
    "Qingshui Township",
    "Baihe Township",
    "Shiqiao Township",
    "Longtan Township",
];
const VILLAGES: [&str; 12] = [
    "Liujia Village",
    "Zhangwan Village",
    "Taohua Village",
    "Shangba Village",
    "Xiaohe Village",
    "Huangtu Village",
    "Nanshan Village",
    "Beipo Village",
    "Yangliu Village",
    "Gaoping Village",
    "Shuikou Village",
    "Songlin Village",
];
const SURNAMES: [&str; 12] = [
    "Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu", "Xu", "Sun",
];
const GIVEN: [&str; 16] = [
    "Wei", "Fang", "Min", "Jing", "Lei", "Qiang", "Yan", "Jun", "Hua", "Ping", "Gang", "Xiu",
    "Hong", "Bo", "Lin", "Tao",
];

/// The demo's tree, root first.
pub fn tree() -> anyhow::Result<Vec<UnitSpec>> {
    let root: UnitId = "c01".parse()?;
    let mut units = vec![UnitSpec {
        id: root.clone(),
        name: "Linhe City".into(),
    }];
    for (k, county) in COUNTIES.iter().enumerate() {
        let kid = root.child(&format!("k{:02}", k + 1))?;
        units.push(UnitSpec {
            id: kid.clone(),
            name: (*county).into(),
        });
        for t in 0..2 {
            let tid = kid.child(&format!("t{:02}", t + 1))?;
            units.push(UnitSpec {
                id: tid.clone(),
                name: TOWNSHIPS[k * 2 + t].into(),
            });
            for v in 0..3 {
                let vid = tid.child(&format!("v{:02}", v + 1))?;
                units.push(UnitSpec {
                    id: vid,
                    name: VILLAGES[(k * 2 + t) * 3 + v].into(),
                });
            }
        }
    }
    Ok(units)
}

/// A small deterministic generator, so every demo run has the same people.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }

    /// A person's name: a surname, then a given name.
    fn person(&mut self) -> String {
        let surname = SURNAMES[self.next(SURNAMES.len())];
        format!("{surname} {}", GIVEN[self.next(GIVEN.len())])
    }
}

/// Realistic members for one unit: ageing, mostly secondary education, a few graduates.
pub fn members_for(unit: &UnitId, count: usize) -> Vec<NewMember> {
    let mut rng = Lcg(unit
        .as_str()
        .bytes()
        .fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b))));
    (0..count)
        .map(|_| {
            let birth_year = 1945 + rng.next(60) as i64;
            let education = match rng.next(10) {
                0 => Education::Primary,
                1..=3 => Education::JuniorSecondary,
                4..=6 => Education::SeniorSecondary,
                7 => Education::Vocational,
                8 => Education::College,
                _ => Education::Bachelor,
            };
            let joined = (birth_year + 20 + rng.next(20) as i64).min(2025);
            NewMember {
                name: rng.person(),
                birth_year,
                gender: if rng.next(3) == 0 {
                    Gender::Female
                } else {
                    Gender::Male
                },
                education,
                joined_on: format!("{joined}-{:02}-{:02}", 1 + rng.next(12), 1 + rng.next(28)),
                status: if joined >= 2025 {
                    MemberStatus::Probationary
                } else {
                    MemberStatus::Full
                },
                phone: None,
                id_number: None,
                // Roughly one member in eight works away from home, one in twelve is in
                // difficulty (more among the old).
                categories: [
                    (rng.next(8) == 0).then_some(MemberCategory::Floating),
                    (rng.next(if birth_year < 1955 { 4 } else { 16 }) == 0)
                        .then_some(MemberCategory::InDifficulty),
                ]
                .into_iter()
                .flatten()
                .collect(),
            }
        })
        .collect()
}

/// Seed every node with its own members (written at its own node, so they sync upward).
pub async fn seed(fed: &Federation) -> anyhow::Result<()> {
    // Each county's fund programme, which its villages pay out (units come root first).
    let mut programmes = std::collections::HashMap::new();
    for spec in &fed.units {
        let count = match spec.id.level() {
            grassroots_schema::Level::Village => 6,
            _ => 3,
        };
        let store = fed.node(&spec.id)?.node.store();
        for m in members_for(&spec.id, count) {
            store
                .create_member(spec.id.clone(), m)
                .await
                .with_context(|| format!("seeding {}", spec.id))?;
        }
        let county = spec
            .id
            .line()
            .find(|u| u.level() == grassroots_schema::Level::County);
        let programme = county.as_ref().and_then(|c| programmes.get(c)).cloned();
        for (kind, fields) in records_for(&spec.id, last_year(), programme.as_deref()) {
            let r = store
                .create_record(kind, spec.id.clone(), fields, None, None)
                .await
                .with_context(|| format!("seeding {} of {}", kind.as_str(), spec.id))?;
            if kind == DocKind::Funds {
                programmes.insert(spec.id.clone(), format!("{}#{}", r.id.unit, r.id.record));
            }
        }
        if spec.id.level() == grassroots_schema::Level::Village {
            store
                .set_unit_details(spec.id.clone(), village_details(&spec.id))
                .await
                .with_context(|| format!("seeding the profile of {}", spec.id))?;
        }
    }
    Ok(())
}

/// Last calendar year (UTC): the demo's meetings and appraisals are last year's, so the
/// year's targets are decided.
fn last_year() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days to a civil year is exact enough here: a year off only on New Year's Eve.
    1970 + (secs / 31_556_952) as i64 - 1
}

fn seed_rng(unit: &UnitId, salt: u64) -> Lcg {
    Lcg(unit
        .as_str()
        .bytes()
        .fold(salt, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b))))
}

/// Organisations and activity place of a village: most have all, some miss one (coverage
/// gaps the levels above must see).
fn village_details(unit: &UnitId) -> UnitDetails {
    let mut rng = seed_rng(unit, 11);
    let mut organisations = vec![Organisation::PartyBranch];
    if rng.next(4) != 0 {
        organisations.push(Organisation::VillagersCommittee);
    }
    if rng.next(2) == 0 {
        organisations.push(Organisation::FarmersCooperative);
    }
    UnitDetails {
        organisations: Some(organisations),
        activity_place: Some(rng.next(5) != 0),
        functions: Some(vec![
            ServiceFunction::ActivityCentre,
            ServiceFunction::Culture,
        ]),
        ..UnitDetails::default()
    }
}

/// A unit's records of the other kinds in `year`: villages have activists, routine
/// meetings (sometimes one skipped), an appraisal, a complaint and a disclosure; counties
/// issue a directive to their villages.
fn records_for(unit: &UnitId, year: i64, programme: Option<&str>) -> Vec<(DocKind, Fields)> {
    let mut rng = seed_rng(unit, 13);
    let text = |s: &str| Value::Text(s.to_owned());
    let f = |pairs: Vec<(&str, Value)>| -> Fields {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    };
    let mut out = Vec::new();
    // Study sessions above the villages (the city once, the others twice, a few skip one)
    // and debriefings below the city (most units).
    let studies = match unit.level() {
        grassroots_schema::Level::City => 1,
        grassroots_schema::Level::Village => 0,
        _ => 2 - usize::from(rng.next(4) == 0),
    };
    for s in 0..studies {
        out.push((
            DocKind::Meetings,
            f(vec![
                ("kind", text("study_session")),
                ("heldOn", text(&format!("{year}-0{}-20", 3 + 5 * s))),
                ("attendance", Value::Int(9)),
            ]),
        ));
    }
    if unit.level() != grassroots_schema::Level::City && rng.next(5) != 0 {
        out.push((
            DocKind::Reports,
            f(vec![
                ("kind", text("debriefing")),
                ("period", text(&year.to_string())),
                ("submittedOn", text(&format!("{year}-12-15"))),
                ("body", text("The secretary reports on the year's work.")),
            ]),
        ));
    }
    // The scheduled reports to the level above, a few left out.
    if unit.level() != grassroots_schema::Level::City {
        let periods = (1..=4)
            .map(|q| ("quarterly_analysis", format!("{year}Q{q}"), 3 * q))
            .chain((1..=2).map(|h| ("half_year_self_examination", format!("{year}H{h}"), 6 * h)))
            .chain([("annual_assessment", year.to_string(), 12)]);
        for (kind, period, month) in periods {
            if rng.next(8) == 0 {
                continue;
            }
            out.push((
                DocKind::Reports,
                f(vec![
                    ("kind", text(kind)),
                    ("period", text(&period)),
                    ("submittedOn", text(&format!("{year}-{month:02}-28"))),
                    (
                        "body",
                        text("What was done, what fell short, what comes next."),
                    ),
                ]),
            ));
        }
    }
    match unit.level() {
        grassroots_schema::Level::Village => {
            for _ in 0..1 + rng.next(5) {
                let name = rng.person();
                out.push((
                    DocKind::Activists,
                    f(vec![
                        ("name", text(&name)),
                        ("stage", text("activist")),
                        ("since", text(&format!("{year}-0{}-15", 1 + rng.next(9)))),
                    ]),
                ));
            }
            // The secretary (often past 55, a few also director) and, in most villages, a
            // reserve cadre to succeed them.
            let secretary = rng.person();
            let education = [
                "junior_secondary",
                "senior_secondary",
                "vocational",
                "college",
            ][rng.next(4)];
            let mut post = vec![
                ("post", text("secretary")),
                ("holder", text(&secretary)),
                ("selection", text("direct_election")),
                ("termStart", text(&format!("{}-01-15", year - 2))),
                ("birthYear", Value::Int(1955 + rng.next(36) as i64)),
                ("education", text(education)),
            ];
            if rng.next(3) == 0 {
                post.push(("concurrentPost", text("director")));
            }
            out.push((DocKind::Posts, f(post)));
            if rng.next(3) != 0 {
                let name = rng.person();
                out.push((
                    DocKind::Activists,
                    f(vec![
                        ("name", text(&name)),
                        ("stage", text("reserve_cadre")),
                        ("since", text(&format!("{year}-03-01"))),
                    ]),
                ));
            }
            let skip = rng.next(40);
            for (q, month) in ["02", "05", "08", "11"].into_iter().enumerate() {
                for (k, kind) in MeetingKind::ROUTINE.iter().enumerate() {
                    if skip == q * 4 + k {
                        continue;
                    }
                    out.push((
                        DocKind::Meetings,
                        f(vec![
                            ("kind", text(kind.as_str())),
                            ("heldOn", text(&format!("{year}-{month}-1{k}"))),
                            ("attendance", Value::Int(8 + rng.next(20) as i64)),
                        ]),
                    ));
                }
            }
            if rng.next(4) != 0 {
                out.push((
                    DocKind::Appraisals,
                    f(vec![
                        ("kind", text("democratic_appraisal")),
                        ("year", Value::Int(year)),
                        ("subject", text("Members of the branch")),
                        ("result", text("competent")),
                    ]),
                ));
            }
            out.push((
                DocKind::Complaints,
                f(vec![
                    ("subject", text("Irrigation channel blocked")),
                    (
                        "body",
                        text("The channel above the fields has been blocked since spring."),
                    ),
                    ("filedOn", text(&format!("{year}-10-08"))),
                    ("dueOn", text(&format!("{year}-10-22"))),
                    ("complainant", text("A villager")),
                ]),
            ));
            if let Some(p) = programme {
                for i in 0..2 + rng.next(3) {
                    let name = rng.person();
                    let in_kind = rng.next(8) == 0;
                    // Now and then a recipient gets less than promised (`fundTracking`
                    // shows the shortfall).
                    let amount = if rng.next(10) == 0 { 600 } else { 800 };
                    out.push((
                        DocKind::Disbursements,
                        f(vec![
                            ("programme", text(p)),
                            ("recipient", text(&name)),
                            ("amount", Value::Int(amount)),
                            (
                                "method",
                                text(if in_kind { "in_kind" } else { "bank_transfer" }),
                            ),
                            (
                                "status",
                                text(if i == 0 && in_kind { "delayed" } else { "paid" }),
                            ),
                            ("paidOn", text(&format!("{year}-04-1{i}"))),
                            ("published", Value::Bool(true)),
                        ]),
                    ));
                }
            }
            out.push((
                DocKind::Disclosures,
                f(vec![
                    ("title", text(&format!("Farmland subsidies {year}"))),
                    ("category", text("funds")),
                    ("publishedOn", text(&format!("{year}-06-30"))),
                    ("body", text("Recipients and amounts, paid point to point.")),
                ]),
            ));
            // Most villages publish their collective accounts; a few leave debt out.
            if rng.next(4) != 0 {
                let items: &[&str] = if rng.next(3) == 0 {
                    &["collective_income", "investment"]
                } else {
                    &["collective_income", "debt", "investment"]
                };
                for item in items {
                    out.push((
                        DocKind::Disclosures,
                        f(vec![
                            (
                                "title",
                                text(&format!("Collective accounts {year}: {item}")),
                            ),
                            ("category", text("three_capitals")),
                            ("publishedOn", text(&format!("{year}-12-20"))),
                            (
                                "body",
                                text("The year's figures, as the accounts show them."),
                            ),
                            ("item", text(item)),
                        ]),
                    ));
                }
            }
        }
        grassroots_schema::Level::County => {
            out.push((
                DocKind::Directives,
                f(vec![
                    ("title", text("Spring planting and flood prevention")),
                    (
                        "body",
                        text("Every village checks its channels and reports back."),
                    ),
                    ("issuedOn", text(&format!("{year}-03-01"))),
                    ("toLevel", text("village")),
                    ("reportBack", Value::Bool(true)),
                ]),
            ));
            out.push((
                DocKind::Funds,
                f(vec![
                    ("name", text("Farmland fertility subsidy")),
                    ("year", Value::Int(year)),
                    ("total", Value::Int(24_000)),
                    ("perRecipient", Value::Int(800)),
                ]),
            ));
        }
        _ => {}
    }
    out
}

/// `demo.json`: for each unit its id, name, level, parent, GraphQL URL and a token per role.
pub fn write_manifest(fed: &Federation, path: &Path) -> anyhow::Result<()> {
    let mut units = Vec::new();
    for spec in &fed.units {
        let mut tokens = serde_json::Map::new();
        for role in Role::ALL {
            tokens.insert(role.as_str().into(), fed.token(&spec.id, role)?.into());
        }
        units.push(serde_json::json!({
            "id": spec.id.as_str(),
            "name": spec.name,
            "level": spec.id.level().as_str(),
            "parent": spec.id.parent().map(|p| p.to_string()),
            "graphql": fed.graphql_url(&spec.id)?,
            "tokens": tokens,
        }));
    }
    let doc = serde_json::json!({ "units": units });
    // Every unit's admin token is in it: the owner's alone, as the nodes' stores are.
    write_private(path, &serde_json::to_vec_pretty(&doc)?)
}

/// Write `bytes` to `path` whole, readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    grassroots_node::files::replace(path, bytes, true, false)
        .with_context(|| format!("writing {}", path.display()))
}

/// The file that marks a folder as the demo's, written before anything else in it: a run
/// stopped before `demo.json` was written still leaves a folder the next run may clear.
pub const MARKER: &str = ".grassroots-demo";

/// Whether `dir` is a folder an earlier demo made (its marker, or, from builds before the
/// marker, `demo.json` beside the city's node folder), which a new demo may clear.
pub fn is_demo_folder(dir: &Path) -> bool {
    dir.join(MARKER).exists()
        || (dir.join("demo.json").exists() && dir.join("c01").join("pki").is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder is the demo's by its marker (or, made by a build before it, `demo.json`
    /// beside the city's node folder); any other folder holding a `demo.json` is not
    /// cleared.
    #[test]
    fn only_a_demo_folder_is_taken_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(!is_demo_folder(d));
        std::fs::write(d.join("demo.json"), "{}").unwrap();
        assert!(!is_demo_folder(d), "a demo.json alone");
        std::fs::create_dir_all(d.join("c01").join("pki")).unwrap();
        assert!(is_demo_folder(d), "an earlier build's demo");
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join(MARKER), "").unwrap();
        assert!(is_demo_folder(other.path()), "an interrupted run's");
    }

    /// The manifest holds every unit's tokens: its owner's alone.
    #[cfg(unix)]
    #[test]
    fn the_manifest_is_its_owners_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.json");
        write_private(&path, b"{}").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
