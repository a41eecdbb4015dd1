//! Identifiers. A unit id is its path from the root, so tree relations need no lookup.

use std::fmt;
use std::str::FromStr;

use crate::level::Level;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// A unit path segment is empty, too long or has characters outside `[a-z0-9-]`.
    #[error(
        "invalid unit label {0:?}: use 1-30 characters of a-z, 0-9 and '-', not starting with '-'"
    )]
    BadLabel(String),
    /// A unit path is deeper than the four levels.
    #[error("unit path {0:?} is deeper than the four levels (city/county/township/village)")]
    TooDeep(String),
    /// A document id is not `kind:unit`.
    #[error("invalid document id {0:?}: expected KIND:UNIT")]
    BadDocId(String),
    /// The document kind is not one this version knows.
    #[error("unknown document kind {0:?}")]
    UnknownKind(String),
    /// A record id is not 16 lower-case hex digits.
    #[error("invalid record id {0:?}: expected 16 lower-case hex digits")]
    BadRecordId(String),
    /// A member id is not `unit#record`.
    #[error("invalid member id {0:?}: expected UNIT#RECORD")]
    BadMemberId(String),
    /// A record reference is not `kind:unit#record`.
    #[error("invalid record id {0:?}: expected KIND:UNIT#RECORD")]
    BadRecordRef(String),
    /// The level name is unknown.
    #[error("unknown level {0:?}")]
    UnknownLevel(String),
    /// A DNS name does not belong to this deployment or does not map to a unit.
    #[error("dns name {name:?} is not a unit of deployment {deployment:?}")]
    BadDnsName { name: String, deployment: String },
    /// An automerge actor id does not carry a unit.
    #[error("actor id does not name a unit")]
    BadActor,
}

const MAX_LABEL: usize = 30;

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL
        && !label.starts_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A unit of the tree, named by its path from the root: `c01`, `c01/k02`, `c01/k02/t03/v07`.
///
/// The depth of the path is the unit's [`Level`]. Each label is a valid DNS label, so the unit
/// also has a DNS form (leaf first) used in certificates: `v07.t03.k02.c01.<deployment>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitId(String);

impl UnitId {
    /// The labels from the root down.
    pub fn labels(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.0.split('/')
    }

    /// The path form, `c01/k02`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The level, from the depth of the path.
    pub fn level(&self) -> Level {
        // Depth is checked at construction to be 1..=4.
        Level::from_depth(self.depth()).unwrap_or(Level::Village)
    }

    fn depth(&self) -> usize {
        self.0.split('/').count()
    }

    /// The parent unit, `None` for the root.
    pub fn parent(&self) -> Option<UnitId> {
        self.0.rfind('/').map(|i| UnitId(self.0[..i].to_owned()))
    }

    /// This unit, then its parent, and so on up to the root.
    pub fn line(&self) -> impl Iterator<Item = UnitId> + use<> {
        std::iter::successors(Some(self.clone()), UnitId::parent)
    }

    /// The root (city) of this unit's tree.
    pub fn root(&self) -> UnitId {
        UnitId(self.0.split('/').next().unwrap_or_default().to_owned())
    }

    /// The child of this unit with the given label.
    pub fn child(&self, label: &str) -> Result<UnitId, IdError> {
        format!("{}/{}", self.0, label).parse()
    }

    /// True when `self` is a strict ancestor of `other`.
    pub fn is_ancestor_of(&self, other: &UnitId) -> bool {
        other.0.len() > self.0.len()
            && other.0.starts_with(&self.0)
            && other.0.as_bytes()[self.0.len()] == b'/'
    }

    /// True when `self` is `other` or a descendant of it.
    pub fn is_in_subtree_of(&self, other: &UnitId) -> bool {
        self == other || other.is_ancestor_of(self)
    }

    /// The key under which this unit's subtree sorts contiguously: `c01/k02/`.
    /// Every descendant's key starts with it.
    pub fn tree_key(&self) -> String {
        format!("{}/", self.0)
    }

    /// The DNS form used in certificates: labels leaf first, then the deployment domain.
    pub fn dns_name(&self, deployment: &str) -> String {
        let mut labels: Vec<&str> = self.labels().rev().collect();
        labels.push(deployment);
        labels.join(".")
    }

    /// Parse the DNS form back, checking it belongs to `deployment`.
    pub fn from_dns_name(name: &str, deployment: &str) -> Result<UnitId, IdError> {
        let bad = || IdError::BadDnsName {
            name: name.to_owned(),
            deployment: deployment.to_owned(),
        };
        let head = name
            .strip_suffix(deployment)
            .and_then(|h| h.strip_suffix('.'))
            .ok_or_else(bad)?;
        let path: Vec<&str> = head.split('.').rev().collect();
        path.join("/").parse().map_err(|_| bad())
    }
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for UnitId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut depth = 0;
        for label in s.split('/') {
            if !valid_label(label) {
                return Err(IdError::BadLabel(label.to_owned()));
            }
            depth += 1;
        }
        if depth > Level::Village.depth() {
            return Err(IdError::TooDeep(s.to_owned()));
        }
        Ok(UnitId(s.to_owned()))
    }
}

/// What a document holds. Documents are coarse: a few per unit, one per item that needs its
/// own audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DocKind {
    /// The unit's profile: name, registered children, organisations and activity place.
    /// Addressed to all descendants.
    Profile,
    /// The unit's party members, keyed by record id.
    Members,
    /// Activists, applicants and reserve cadres: the talent pipeline.
    Activists,
    /// Cadre posts and who holds them.
    Posts,
    /// Meetings, activities and training.
    Meetings,
    /// Appraisals, questioning and debriefings.
    Appraisals,
    /// Projects.
    Projects,
    /// Collective assets ("three capitals").
    Assets,
    /// Public disclosures: readable by anyone.
    Disclosures,
    /// Complaints and reports from citizens filed at the unit.
    Complaints,
    /// Directives, plans and notices the unit issues downward. Addressed to all
    /// descendants; each record names the level it is for.
    Directives,
    /// Reports the unit submits upward (and its report-backs on directives).
    Reports,
    /// Fund programmes the unit runs (subsidies for farmers). Addressed to all descendants,
    /// which pay them out.
    Funds,
    /// Payments of fund programmes to recipients, point to point; published ones are
    /// readable by anyone.
    Disbursements,
}

impl DocKind {
    /// Every kind this version knows.
    pub const ALL: [DocKind; 14] = [
        DocKind::Profile,
        DocKind::Members,
        DocKind::Activists,
        DocKind::Posts,
        DocKind::Meetings,
        DocKind::Appraisals,
        DocKind::Projects,
        DocKind::Assets,
        DocKind::Disclosures,
        DocKind::Complaints,
        DocKind::Directives,
        DocKind::Reports,
        DocKind::Funds,
        DocKind::Disbursements,
    ];

    /// Wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Profile => "profile",
            DocKind::Members => "members",
            DocKind::Activists => "activists",
            DocKind::Posts => "posts",
            DocKind::Meetings => "meetings",
            DocKind::Appraisals => "appraisals",
            DocKind::Projects => "projects",
            DocKind::Assets => "assets",
            DocKind::Disclosures => "disclosures",
            DocKind::Complaints => "complaints",
            DocKind::Directives => "directives",
            DocKind::Reports => "reports",
            DocKind::Funds => "funds",
            DocKind::Disbursements => "disbursements",
        }
    }

    /// Whether anyone, without logging in, may read documents of this kind. Unit profiles are
    /// the public organisation chart that public disclosures hang from.
    pub fn is_public(self) -> bool {
        matches!(self, DocKind::Profile | DocKind::Disclosures)
    }

    /// Whether some records of this kind are public (published disbursements) though the
    /// kind is not: readers are checked record by record.
    pub fn has_public_records(self) -> bool {
        matches!(self, DocKind::Disbursements)
    }
}

impl FromStr for DocKind {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DocKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| IdError::UnknownKind(s.to_owned()))
    }
}

/// A document: its kind and its owner unit, fixed at creation. Written `members:c01/k02`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocId {
    /// What the document holds.
    pub kind: DocKind,
    /// The unit that owns it; only it and its ancestors may author changes (rule 2).
    pub owner: UnitId,
}

impl DocId {
    /// The document of `kind` owned by `owner`.
    pub fn new(kind: DocKind, owner: UnitId) -> Self {
        DocId { kind, owner }
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.owner)
    }
}

impl FromStr for DocId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, owner) = s
            .split_once(':')
            .ok_or_else(|| IdError::BadDocId(s.to_owned()))?;
        Ok(DocId {
            kind: kind.parse()?,
            owner: owner.parse()?,
        })
    }
}

/// A record inside a document: 64 random bits, written as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(u64);

impl RecordId {
    /// A record id from raw bits (the caller supplies the randomness).
    pub fn from_u64(bits: u64) -> Self {
        RecordId(bits)
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for RecordId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(IdError::BadRecordId(s.to_owned()));
        }
        u64::from_str_radix(s, 16)
            .map(RecordId)
            .map_err(|_| IdError::BadRecordId(s.to_owned()))
    }
}

/// A member: the owning unit and the record id, written `c01/k02/t03/v07#0123456789abcdef`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId {
    /// The unit whose members document holds the record.
    pub unit: UnitId,
    /// The record within that document.
    pub record: RecordId,
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.unit, self.record)
    }
}

impl FromStr for MemberId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (unit, record) = s
            .split_once('#')
            .ok_or_else(|| IdError::BadMemberId(s.to_owned()))?;
        Ok(MemberId {
            unit: unit.parse()?,
            record: record.parse()?,
        })
    }
}

/// A record of any kind but members: its document (kind and owner) and its id there,
/// written `meetings:c01/k02/t03/v07#0123456789abcdef`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordRef {
    /// The kind of record (the document kind).
    pub kind: DocKind,
    /// The unit whose document holds it.
    pub unit: UnitId,
    /// The record within that document.
    pub record: RecordId,
}

impl RecordRef {
    /// The document holding the record.
    pub fn doc(&self) -> DocId {
        DocId::new(self.kind, self.unit.clone())
    }
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}#{}", self.kind.as_str(), self.unit, self.record)
    }
}

impl FromStr for RecordRef {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdError::BadRecordRef(s.to_owned());
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let (unit, record) = rest.split_once('#').ok_or_else(bad)?;
        Ok(RecordRef {
            kind: kind.parse()?,
            unit: unit.parse()?,
            record: record.parse()?,
        })
    }
}

/// The authoring unit encoded in an automerge actor id: the unit's path, a 0xff separator
/// (never valid UTF-8, so never part of a path), then an instance nonce that makes every
/// process start a fresh actor.
pub struct ActorTag;

impl ActorTag {
    const SEPARATOR: u8 = 0xff;

    /// Actor id bytes for `unit` with a per-instance `nonce`.
    pub fn encode(unit: &UnitId, nonce: [u8; 8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(unit.as_str().len() + 9);
        out.extend_from_slice(unit.as_str().as_bytes());
        out.push(Self::SEPARATOR);
        out.extend_from_slice(&nonce);
        out
    }

    /// The unit that authored a change, from its actor id bytes.
    pub fn unit_of(actor: &[u8]) -> Result<UnitId, IdError> {
        let sep = actor
            .iter()
            .position(|&b| b == Self::SEPARATOR)
            .ok_or(IdError::BadActor)?;
        let path = std::str::from_utf8(&actor[..sep]).map_err(|_| IdError::BadActor)?;
        path.parse().map_err(|_| IdError::BadActor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UnitId {
        s.parse().unwrap()
    }

    #[test]
    fn unit_paths_parse_and_reject() {
        assert_eq!(u("c01/k02/t03/v07").level(), Level::Village);
        assert_eq!(u("c01").level(), Level::City);
        for bad in [
            "",
            "c01/",
            "/c01",
            "C01",
            "c01//k1",
            "-x",
            "c01/k02/t03/v07/x",
            "a b",
        ] {
            assert!(bad.parse::<UnitId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ancestry_is_by_whole_labels() {
        assert!(u("c01").is_ancestor_of(&u("c01/k02")));
        assert!(u("c01").is_ancestor_of(&u("c01/k02/t03")));
        assert!(
            !u("c01/k0").is_ancestor_of(&u("c01/k02")),
            "prefix of a label is not an ancestor"
        );
        assert!(!u("c01").is_ancestor_of(&u("c01")));
        assert!(u("c01").is_in_subtree_of(&u("c01")));
        assert_eq!(u("c01/k02/t03").parent(), Some(u("c01/k02")));
        assert_eq!(u("c01").parent(), None);
        assert_eq!(u("c01/k02/t03").root(), u("c01"));
    }

    #[test]
    fn dns_form_round_trips_and_checks_deployment() {
        let v = u("c01/k02/t03/v07");
        let dns = v.dns_name("demo.grassroots");
        assert_eq!(dns, "v07.t03.k02.c01.demo.grassroots");
        assert_eq!(UnitId::from_dns_name(&dns, "demo.grassroots").unwrap(), v);
        assert!(UnitId::from_dns_name(&dns, "other.grassroots").is_err());
        assert!(UnitId::from_dns_name("demo.grassroots", "demo.grassroots").is_err());
    }

    #[test]
    fn doc_member_and_record_ids_round_trip() {
        let d: DocId = "members:c01/k02".parse().unwrap();
        assert_eq!(d.to_string(), "members:c01/k02");
        assert!("nope:c01".parse::<DocId>().is_err());
        assert!("members".parse::<DocId>().is_err());
        let m: MemberId = "c01/k02#00000000000000ff".parse().unwrap();
        assert_eq!(m.record, RecordId::from_u64(255));
        assert_eq!(m.to_string(), "c01/k02#00000000000000ff");
        assert!("c01/k02#FF".parse::<MemberId>().is_err());
    }

    #[test]
    fn actor_tag_names_the_unit() {
        let unit = u("c01/k02/t03");
        let actor = ActorTag::encode(&unit, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(ActorTag::unit_of(&actor).unwrap(), unit);
        assert!(ActorTag::unit_of(b"random actor").is_err());
        assert!(ActorTag::unit_of(&[0xff, 1, 2]).is_err());
    }
}
