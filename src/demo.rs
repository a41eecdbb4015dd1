//! The demo federation: 1 city, 2 counties, 2 townships each, 3 villages each (19 nodes),
//! seeded with a little realistic data.

use std::path::Path;

use anyhow::Context as _;
use grassroots_schema::{Education, Gender, MemberStatus, NewMember, Role, UnitId};

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
                name: format!(
                    "{} {}",
                    SURNAMES[rng.next(SURNAMES.len())],
                    GIVEN[rng.next(GIVEN.len())]
                ),
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
            }
        })
        .collect()
}

/// Seed every node with its own members (written at its own node, so they sync upward).
pub async fn seed(fed: &Federation) -> anyhow::Result<()> {
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
    }
    Ok(())
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
    std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))
}
