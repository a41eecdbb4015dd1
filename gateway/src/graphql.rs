//! The GraphQL schema: types, queries, mutations. Every read and write decision calls the
//! rules in `grassroots_schema`; nothing here decides visibility on its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{
    Context, Enum, ID, InputObject, MaybeUndefined, Object, Result, Schema, SimpleObject,
    Subscription,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use grassroots_node::store::Writer;
use grassroots_node::{MemberCursor, StoreHandle, StoreReader};
use grassroots_schema as gs;
use grassroots_schema::{
    Caller, DocId, DocKind, DocMeta, MemberId, UnitId, can_read, can_read_sensitive, can_write,
};
use tokio::sync::broadcast::error::RecvError;

use crate::entities::{
    self as en, ActivistGql, AppraisalGql, AssetCategoryGql, CadrePostGql, CollectiveAssetGql,
    ComplaintGql, DirectiveGql, DisclosureCategoryGql, DisclosureGql, ListArgs, MeetingGql,
    MeetingKindGql, OrganisationGql, ProjectGql, ProjectStatusGql, RecordConnection, ReportGql,
    ServiceFunctionGql,
};
use crate::error::{Code, error, from_store, from_write, internal};
use grassroots_node::store::MemberOrder;

/// Largest page a list returns.
pub const MAX_PAGE: i32 = 100;
/// What a listing over a whole subtree adds to a query's complexity: its count and filters
/// read every row of the subtree's range, so a query holds at most 200 of them.
pub const SUBTREE_SCAN: usize = 50;

/// Page size when `first` is not given.
pub const DEFAULT_PAGE: i32 = 20;

/// What resolvers need: the node's unit and its store.
#[derive(Clone, Debug)]
pub struct Backend {
    /// The unit this node serves.
    pub node_unit: UnitId,
    /// Writes.
    pub store: StoreHandle,
    /// Reads of the views.
    pub reader: StoreReader,
    /// The children that run nodes of their own (`children` in node.toml): users of their
    /// subtrees are made at those nodes, not here, where a token for one of their units
    /// would read personal details that unit keeps from the levels above.
    pub own_nodes: Vec<UnitId>,
}

/// The user a request's token was issued to (request data beside the [`Caller`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(pub String);

/// The hash of a WebSocket connection's token, so a long-lived subscription can see that it
/// was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

/// The schema type served at `/graphql`.
pub type GatewaySchema = Schema<Query, Mutation, SubscriptionRoot>;

/// Build the schema with its limits, introspection on.
pub fn build_schema(backend: Backend) -> GatewaySchema {
    build_schema_with(backend, true)
}

/// Build the schema with its limits; without `introspection`, `__schema` and `__type`
/// answer nothing over any transport (HTTP also refuses them with a code).
pub fn build_schema_with(backend: Backend, introspection: bool) -> GatewaySchema {
    build_schema_limited(backend, introspection, MAX_COMPLEXITY)
}

/// A list field's complexity: `page` items of `child` each, and `extra`. Saturating, and
/// never past one more than [`MAX_COMPLEXITY`]: page sizes multiply level after level
/// (100^10 passes 2^64), and async-graphql adds the fields of a selection unchecked (a
/// wrapped sum would pass the limit; in a debug build it panics).
pub(crate) fn list_cost(page: usize, child: usize, extra: usize) -> usize {
    page.saturating_mul(child)
        .saturating_add(extra)
        .min(MAX_COMPLEXITY + 1)
}

/// Most complexity of an operation (a list field counts its page size times its selection).
pub const MAX_COMPLEXITY: usize = 10_000;

/// Most complexity of an operation sent without a token: a public page reads a few
/// listings; anyone can send such requests, and some listings of public records read every
/// row of a kind in the subtree to find the published ones.
pub const MAX_ANONYMOUS_COMPLEXITY: usize = 2_000;

/// [`build_schema_with`] with a complexity limit of `complexity`.
pub fn build_schema_limited(
    backend: Backend,
    introspection: bool,
    complexity: usize,
) -> GatewaySchema {
    let builder = Schema::build(Query, Mutation::default(), SubscriptionRoot);
    let builder = if introspection {
        builder
    } else {
        builder.disable_introspection()
    };
    builder
        .data(backend)
        .limit_depth(16)
        .limit_complexity(complexity)
        .limit_recursive_depth(32)
        .disable_suggestions()
        .finish()
}

pub(crate) fn caller<'a>(ctx: &'a Context<'_>) -> &'a Caller {
    ctx.data_opt::<Caller>().unwrap_or(&Caller::Anonymous)
}

pub(crate) fn backend<'a>(ctx: &'a Context<'_>) -> Result<&'a Backend> {
    ctx.data::<Backend>()
        .map_err(|_| internal("backend missing from schema data"))
}

/// A create's `requestId`, checked: 1 to 64 characters, none of them control characters.
pub(crate) fn request_key(key: Option<&str>) -> Result<Option<&str>> {
    match key {
        Some(k) if k.is_empty() || k.chars().count() > 64 || k.chars().any(char::is_control) => {
            Err(error(
                Code::BadUserInput,
                "requestId: 1 to 64 characters, no control characters",
            ))
        }
        k => Ok(k),
    }
}

/// Whether the caller may read `unit`'s members, and so its figures (indicators, targets,
/// balance).
fn reads_members(ctx: &Context<'_>, unit: &UnitId) -> bool {
    can_read(
        caller(ctx),
        &DocMeta::new(DocId::new(DocKind::Members, unit.clone())),
    )
}

fn parse_member(id: &ID) -> Result<MemberId> {
    id.parse::<MemberId>()
        .map_err(|e| error(Code::BadUserInput, format!("member id: {e}")))
}

pub(crate) fn parse_unit(id: &ID) -> Result<UnitId> {
    id.parse::<UnitId>()
        .map_err(|e| error(Code::BadUserInput, format!("unit id: {e}")))
}

macro_rules! mirror_enum {
    ($(#[$m:meta])* $name:ident = $src:path { $($(#[$vm:meta])* $v:ident),+ $(,)? }) => {
        #[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
        $(#[$m])*
        pub enum $name { $($(#[$vm])* $v),+ }
        impl From<$src> for $name {
            fn from(v: $src) -> Self {
                use $src as S;
                match v { $(S::$v => $name::$v),+ }
            }
        }
        impl From<$name> for $src {
            fn from(v: $name) -> Self {
                use $src as S;
                match v { $($name::$v => S::$v),+ }
            }
        }
    };
}

mirror_enum!(
    /// Administrative level.
    #[graphql(name = "Level")]
    LevelGql = gs::Level { City, County, Township, Village }
);
mirror_enum!(
    /// What a token allows at its unit.
    #[graphql(name = "Role")]
    RoleGql = gs::Role {
        /// Reads the unit's subtree.
        Viewer,
        /// Also writes the unit's own records.
        Clerk,
        /// Also corrects and acts on the subtree's records.
        Supervisor,
        /// Also manages users and child nodes.
        Admin,
    }
);
mirror_enum!(
    /// Gender.
    #[graphql(name = "Gender")]
    GenderGql = gs::Gender { Male, Female }
);
mirror_enum!(
    /// Highest education completed. COLLEGE and above count as higher education.
    #[graphql(name = "Education")]
    EducationGql = gs::Education { Primary, JuniorSecondary, SeniorSecondary, Vocational, College, Bachelor, Postgraduate }
);
mirror_enum!(
    /// Membership status.
    #[graphql(name = "MemberStatus")]
    MemberStatusGql = gs::MemberStatus { Probationary, Full }
);

mirror_enum!(
    /// A category a member may be in (any number of them).
    #[graphql(name = "MemberCategory")]
    MemberCategoryGql = gs::MemberCategory {
        /// Working away from home (a floating or migrant member, with a mobile activity card).
        Floating,
        /// In difficulty (old age, illness, poverty): whom the branch's care visits are for.
        InDifficulty,
    }
);

/// RFC 3339 UTC time of a millisecond Unix timestamp.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = gs::civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The state of this node's link to a neighbouring unit.
#[derive(SimpleObject)]
pub struct LinkState {
    /// Whether the link is up now.
    connected: bool,
    /// SHA-256 fingerprint of the certificate the peer presented (what a revocation names).
    certificate_fingerprint: String,
    /// The sync protocol version the current (or last) connection ran at: the newest both
    /// ends speak. Null if the link has not been up since this node started.
    protocol: Option<u8>,
    /// The peer's software and its version, as it named them when the link came up (null
    /// likewise): during a rollout, which neighbours still run an older release.
    software: Option<String>,
    /// When it last came up; null if it has not since this node started.
    since: Option<String>,
    /// When it went down (null while up): for a link not up since this node started, the
    /// start or its first failed dial.
    down_since: Option<String>,
    /// Dials that failed since the link was last up: to the parent, this node's; from a
    /// child, those this node refused once the child's certificate was checked (revoked, a
    /// release that speaks no protocol version in common, a bad hello).
    failed_dials: u32,
    /// Why the last failed dial failed (unreachable, timed out, refused, revoked, protocol
    /// versions apart, ...).
    last_error: Option<String>,
    /// When the last frame arrived; null if none yet.
    last_frame_at: Option<String>,
    /// Frame bytes received on the current (or last) connection.
    bytes_in: u64,
    /// Frame bytes sent on the current (or last) connection.
    bytes_out: u64,
    /// Documents being reconciled now (this side's count).
    docs_in_flight: usize,
    /// Documents waiting for reconciliation.
    docs_queued: usize,
    /// Documents the peer offered for units that no profile on this node registers yet:
    /// not taken until a profile registers the unit (for a unit with no node of its own,
    /// name it from a level above).
    docs_unregistered: usize,
    /// Messages from this peer refused since the node started.
    rejected: u64,
    /// Until when this node refuses the child's links, having closed them twice within an
    /// hour for what it sent (refused messages, frames that do not decode); null when it
    /// does not.
    kept_off_until: Option<String>,
}

/// Freshness and sync state of a unit's data, as this node sees it.
#[derive(SimpleObject)]
pub struct UnitSync {
    /// When a change authored by the unit last reached (or was made at) this node; null if
    /// never.
    last_heard_from: Option<String>,
    /// True when nothing was heard from the unit for more than a day.
    stale: bool,
    /// This node's link to the unit: only for its parent and its children.
    link: Option<LinkState>,
}

/// The node's status, fetched from the store at most once per request however many units
/// a query asks `sync` of.
pub type StatusOnce = tokio::sync::OnceCell<grassroots_node::NodeStatus>;

/// Units one operation may reach through `children` and `parent`: four times the whole tree
/// of a large city (about 5,300 units), so `grassroots status` of any node fits, while a
/// query going back and forth between the two (`children { parent { children ... } }`, each
/// level multiplying by the fan-out, which static complexity cannot see) is stopped.
pub const MAX_UNITS: usize = 20_000;

/// What an operation has reached of [`MAX_UNITS`] (request data, one per operation).
#[derive(Debug, Default)]
pub struct UnitBudget(std::sync::atomic::AtomicUsize);

/// Count `n` units reached by the operation; an error once past [`MAX_UNITS`].
fn reach_units(ctx: &Context<'_>, n: usize) -> Result<()> {
    let Some(budget) = ctx.data_opt::<UnitBudget>() else {
        return Ok(());
    };
    let reached = budget
        .0
        .fetch_add(n, std::sync::atomic::Ordering::Relaxed)
        .saturating_add(n);
    if reached > MAX_UNITS {
        return Err(error(
            Code::TooComplex,
            format!("a query may reach at most {MAX_UNITS} units through `children` and `parent`"),
        ));
    }
    Ok(())
}

/// How long without news before a unit's figures are called stale.
const STALE_AFTER_MS: u64 = 24 * 3600 * 1000;

/// An administrative unit (city, county, township or village). Unit profiles are public.
#[derive(async_graphql::MergedObject)]
pub struct Unit(UnitCore, UnitRecords);

/// A unit's own fields (merged with its record listings into [`Unit`]).
pub struct UnitCore {
    id: UnitId,
    profile: Option<gs::UnitProfile>,
    /// The roll-up, when the parent's `children` read its children's in one batch.
    rollup: Option<Arc<gs::Rollup>>,
}

impl Unit {
    fn new(id: UnitId, profile: Option<gs::UnitProfile>, rollup: Option<Arc<gs::Rollup>>) -> Unit {
        Unit(
            UnitCore {
                id: id.clone(),
                profile,
                rollup,
            },
            UnitRecords(id),
        )
    }

    /// The unit if this node knows it: its profile is held, or it is in this node's subtree
    /// and a held profile registers it as a child (a village enrolled whose own profile has
    /// not arrived yet: its parent's staff still look up its link and failed dials). A
    /// sibling holds its parent's profile too, and learns nothing of the other children.
    fn load(b: &Backend, id: UnitId) -> Result<Option<Unit>> {
        if let Some(p) = b.reader.unit(&id).map_err(internal)? {
            return Ok(Some(Unit::new(id, Some(p), None)));
        }
        if !id.is_in_subtree_of(&b.node_unit) {
            return Ok(None);
        }
        let registered = match id.parent() {
            Some(parent) => b
                .reader
                .unit(&parent)
                .map_err(internal)?
                .is_some_and(|p| p.children.contains(&id)),
            None => false,
        };
        Ok(registered.then(|| Unit::new(id, None, None)))
    }

    pub(crate) fn known(b: &Backend, id: UnitId) -> Result<Unit> {
        let profile = b.reader.unit(&id).map_err(internal)?;
        Ok(Unit::new(id, profile, None))
    }

    /// [`Unit::known`] through the request's [`ProfileCache`], which a listing fills for
    /// its whole page in one read.
    pub(crate) fn cached(ctx: &Context<'_>, id: UnitId) -> Result<Unit> {
        let b = backend(ctx)?;
        let Some(cache) = ctx.data_opt::<ProfileCache>() else {
            return Unit::known(b, id);
        };
        let hit = cache.0.lock().ok().and_then(|c| c.get(&id).cloned());
        let profile = match hit {
            Some(p) => p,
            None => {
                let p = b.reader.unit(&id).map_err(internal)?;
                if let Ok(mut c) = cache.0.lock() {
                    c.insert(id.clone(), p.clone());
                }
                p
            }
        };
        Ok(Unit::new(id, profile, None))
    }
}

/// Unit profiles read during one request: a page of records asking for their `unit` reads
/// the page's units in one batch (like a DataLoader) instead of one lookup per record.
#[derive(Default, Debug)]
pub struct ProfileCache(std::sync::Mutex<HashMap<UnitId, Option<gs::UnitProfile>>>);

impl ProfileCache {
    /// Read the profiles of `ids` not cached yet, in one read transaction, when the
    /// selection asks for items' units.
    pub(crate) fn prefetch<'a>(
        ctx: &Context<'_>,
        ids: impl Iterator<Item = &'a UnitId>,
    ) -> Result<()> {
        let Some(cache) = ctx.data_opt::<ProfileCache>() else {
            return Ok(());
        };
        if !ctx
            .look_ahead()
            .field("edges")
            .field("node")
            .field("unit")
            .exists()
        {
            return Ok(());
        }
        let missing: Vec<UnitId> = match cache.0.lock() {
            Ok(c) => {
                let mut m: Vec<UnitId> = ids.filter(|u| !c.contains_key(*u)).cloned().collect();
                m.sort();
                m.dedup();
                m
            }
            Err(_) => return Ok(()),
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut found = backend(ctx)?.reader.units(&missing).map_err(internal)?;
        if let Ok(mut c) = cache.0.lock() {
            for id in missing {
                let p = found.remove(&id);
                c.insert(id, p);
            }
        }
        Ok(())
    }
}

/// Figures over a unit's whole subtree, from the roll-up view (one row, however large the
/// subtree): never computed by scanning records. Member figures are computed with the
/// object; the others when asked for.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Indicators {
    #[graphql(skip)]
    rollup: Arc<gs::Rollup>,
    /// The year the age-based figures refer to.
    year: i64,
    /// Members.
    members: i64,
    /// Probationary members.
    probationary: i64,
    /// Women.
    women: i64,
    /// Members younger than 35 in `year`.
    under35: i64,
    /// `under35 / members` (0 when there are no members).
    under35_share: f64,
    /// Members aged 60 or more in `year` (the seed's "ageing members").
    aged60_plus: i64,
    /// `aged60Plus / members`.
    aged60_plus_share: f64,
    /// Members with higher education (college or above).
    higher_education: i64,
    /// `higherEducation / members`.
    higher_education_share: f64,
    /// Members by highest education, every level listed.
    by_education: Vec<EducationCount>,
    /// Members who joined in `year`, younger than 35 then, with higher education (the seed's
    /// target: at least one a year per village).
    new_young_higher_education: i64,
    /// Floating (migrant) members, working away from home.
    floating: i64,
    /// Members in difficulty.
    in_difficulty: i64,
}

/// A count of members with one education level.
#[derive(SimpleObject)]
pub struct EducationCount {
    /// Highest education completed.
    education: EducationGql,
    /// Members.
    count: i64,
}

pub(crate) fn share(part: i64, whole: i64) -> f64 {
    if whole <= 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl Indicators {
    fn from_rollup(rollup: Arc<gs::Rollup>, year: i64) -> Indicators {
        let r = &*rollup;
        let count =
            |m: &std::collections::BTreeMap<String, i64>, k: &str| m.get(k).copied().unwrap_or(0);
        let higher = r.higher_education();
        Indicators {
            rollup: rollup.clone(),
            year,
            members: r.members,
            probationary: count(&r.by_status, gs::MemberStatus::Probationary.as_str()),
            women: count(&r.by_gender, gs::Gender::Female.as_str()),
            under35: r.young(year),
            under35_share: share(r.young(year), r.members),
            aged60_plus: r.elderly(year),
            aged60_plus_share: share(r.elderly(year), r.members),
            higher_education: higher,
            higher_education_share: share(higher, r.members),
            by_education: gs::Education::ALL
                .iter()
                .map(|e| EducationCount {
                    education: (*e).into(),
                    count: count(&r.by_education, e.as_str()),
                })
                .collect(),
            new_young_higher_education: r.new_young_higher(year),
            floating: r.in_category(gs::MemberCategory::Floating, None),
            in_difficulty: r.in_category(gs::MemberCategory::InDifficulty, None),
        }
    }
}

/// Villages of a subtree with one organisation.
#[derive(SimpleObject)]
pub struct OrganisationCoverage {
    /// The organisation.
    organisation: OrganisationGql,
    /// Villages that have it.
    villages: i64,
    /// `villages / Indicators.villages`.
    share: f64,
}

/// Routine meetings of one kind held in one quarter.
#[derive(SimpleObject)]
pub struct QuarterMeetings {
    /// `YYYYQn`.
    quarter: String,
    /// Which routine meeting.
    kind: MeetingKindGql,
    /// How many were held in the subtree.
    count: i64,
    /// People attending them, summed over the meetings.
    attendance: i64,
    /// `attendance / count` (0 when none was held).
    mean_attendance: f64,
}

/// Items and total value of one of the three capitals.
#[derive(SimpleObject)]
pub struct AssetTotal {
    /// Funds, assets or resources.
    category: AssetCategoryGql,
    /// Items recorded.
    items: i64,
    /// Their total value (yuan).
    value: i64,
}

/// Appraisals of a year with one result.
#[derive(SimpleObject)]
pub struct AppraisalResultCount {
    /// The result.
    result: en::AppraisalResultGql,
    /// How many (of every kind of appraisal).
    count: i64,
}

/// Appraisals of a year followed by one outcome.
#[derive(SimpleObject)]
pub struct AppraisalOutcomeCount {
    /// The outcome.
    outcome: en::AppraisalOutcomeGql,
    /// How many.
    count: i64,
}

/// Disclosures of a year about one sensitive item.
#[derive(SimpleObject)]
pub struct SensitiveDisclosureCount {
    /// The item.
    item: en::SensitiveItemGql,
    /// Disclosures about it published in the year.
    count: i64,
}

/// Disbursements with one status.
#[derive(SimpleObject)]
pub struct DisbursementCount {
    /// The status.
    status: en::DisbursementStatusGql,
    /// How many.
    count: i64,
}

/// Disclosures of one category.
#[derive(SimpleObject)]
pub struct DisclosureCount {
    /// The category.
    category: DisclosureCategoryGql,
    /// Items published (all years).
    count: i64,
    /// Items published in the indicators' `year`: a unit that stopped publishing shows.
    in_year: i64,
}

/// A subtree's secretaries in office in a year (see `Indicators.secretaries`).
#[derive(SimpleObject, Default)]
pub struct SecretaryFigures {
    /// Secretaries in office: a term that started by the year and had not ended before it.
    total: i64,
    /// Aged under 35 in the year (of those whose birth year is recorded).
    under35: i64,
    /// Aged 35 to 49.
    aged35_to49: i64,
    /// Aged 50 to 59.
    aged50_to59: i64,
    /// Aged 60 or over.
    aged60_or_over: i64,
    /// Whose birth year is not recorded.
    age_unknown: i64,
    /// Mean age of those whose birth year is recorded (0 if none).
    mean_age: f64,
    /// With higher education (college or above).
    higher_educated: i64,
    /// Also director of the villagers' committee.
    also_director: i64,
    /// `alsoDirector / total`.
    also_director_share: f64,
}

impl SecretaryFigures {
    /// The secretaries in office at the end of `year`, or today for the year in progress
    /// (one a handover replaced during the year is not counted beside the one who took
    /// over), by their age reached in `year`.
    fn of(rollup: &gs::Rollup, year: i64) -> SecretaryFigures {
        let mut s = SecretaryFigures::default();
        let (mut ages, mut aged) = (0i64, 0i64);
        use gs::rollup::{ELDERLY_FROM, YOUNG_UNDER};
        let day = if year == this_year() {
            today()
        } else {
            format!("{year:04}-12-31")
        };
        for (sec, n) in rollup.secretaries_on(&day) {
            s.total += n;
            match sec.birth_year {
                Some(b) => {
                    let age = year - b;
                    *match age {
                        ..YOUNG_UNDER => &mut s.under35,
                        YOUNG_UNDER..50 => &mut s.aged35_to49,
                        50..ELDERLY_FROM => &mut s.aged50_to59,
                        _ => &mut s.aged60_or_over,
                    } += n;
                    ages += age * n;
                    aged += n;
                }
                None => s.age_unknown += n,
            }
            if sec.education.is_some_and(gs::Education::is_higher) {
                s.higher_educated += n;
            }
            if sec.also_director {
                s.also_director += n;
            }
        }
        s.mean_age = mean(ages, aged);
        s.also_director_share = share(s.also_director, s.total);
        s
    }
}

/// The mean of a sum over a count (0 when there is nothing to count).
fn mean(sum: i64, count: i64) -> f64 {
    share(sum, count)
}

#[async_graphql::ComplexObject]
impl Indicators {
    /// Villages of the subtree whose profile this node holds.
    async fn villages(&self) -> i64 {
        self.rollup.tally("villages")
    }

    /// Activists (stage ACTIVIST or DEVELOPMENT_TARGET); the seed asks for at least 3 per
    /// village.
    async fn activists(&self) -> i64 {
        self.rollup.activists()
    }

    /// Applicants for membership.
    async fn applicants(&self) -> i64 {
        self.rollup.tally("talent/applicant")
    }

    /// Reserve cadres (successors for village posts).
    async fn reserve_cadres(&self) -> i64 {
        self.rollup.tally("talent/reserve_cadre")
    }

    /// Cadre posts recorded.
    async fn cadre_posts(&self) -> i64 {
        self.rollup.tallies_under("posts/").map(|(_, n)| n).sum()
    }

    /// The subtree's secretaries (SECRETARY cadre posts) in office in `year`: how old, how
    /// educated, how many are also director (the seed's ageing and successor weaknesses;
    /// with `reserveCadres` and the `SECRETARY_SUCCESSORS` target).
    async fn secretaries(&self) -> SecretaryFigures {
        SecretaryFigures::of(&self.rollup, self.year)
    }

    /// Villages with each organisation of the "1 + X" model.
    async fn organisation_coverage(&self) -> Vec<OrganisationCoverage> {
        let villages = self.rollup.tally("villages");
        gs::entities::Organisation::ALL
            .iter()
            .map(|o| {
                let n = self.rollup.tally(&format!("org/{}", o.as_str()));
                OrganisationCoverage {
                    organisation: (*o).into(),
                    villages: n,
                    share: share(n, villages),
                }
            })
            .collect()
    }

    /// Villages with an activity place.
    async fn villages_with_activity_place(&self) -> i64 {
        self.rollup.tally("place")
    }

    /// `villagesWithActivityPlace / villages`.
    async fn activity_place_coverage(&self) -> f64 {
        share(self.rollup.tally("place"), self.rollup.tally("villages"))
    }

    /// The routine "three sessions and one lesson" held in each quarter of `year`.
    async fn routine_meetings(&self) -> Vec<QuarterMeetings> {
        let mut out = Vec::new();
        for q in 1..=4 {
            let quarter = format!("{}Q{q}", self.year);
            for k in gs::entities::MeetingKind::ROUTINE {
                let count = self.rollup.meetings(&quarter, k);
                let attendance = self
                    .rollup
                    .tally(&format!("attendance/{quarter}/{}", k.as_str()));
                out.push(QuarterMeetings {
                    count,
                    attendance,
                    mean_attendance: mean(attendance, count),
                    quarter: quarter.clone(),
                    kind: k.into(),
                });
            }
        }
        out
    }

    /// Hours of training held in `year`.
    async fn training_hours(&self) -> i64 {
        self.rollup.training_hours(self.year)
    }

    /// Members who joined in `year` (party building's yearly figure).
    async fn new_members(&self) -> i64 {
        self.rollup.joined(self.year)[0]
    }

    /// Of those, the members under 35 when they joined.
    async fn new_members_under35(&self) -> i64 {
        self.rollup.joined(self.year)[1]
    }

    /// Of those, the women.
    async fn new_members_women(&self) -> i64 {
        self.rollup.joined(self.year)[2]
    }

    /// Appraisals for `year` by result (every kind: members' and cadres'): how many cadres
    /// were found incompetent.
    async fn appraisal_results(&self) -> Vec<AppraisalResultCount> {
        gs::entities::AppraisalResult::ALL
            .iter()
            .map(|r| AppraisalResultCount {
                result: (*r).into(),
                count: self
                    .rollup
                    .tally(&format!("appraisal_result/{}/{}", self.year, r.as_str())),
            })
            .collect()
    }

    /// Appraisals for `year` by what followed them: adjustments and recalls.
    async fn appraisal_outcomes(&self) -> Vec<AppraisalOutcomeCount> {
        gs::entities::AppraisalOutcome::ALL
            .iter()
            .map(|o| AppraisalOutcomeCount {
                outcome: (*o).into(),
                count: self.rollup.tally(&format!(
                    "appraisal_outcome/{}/{}",
                    self.year,
                    o.as_str()
                )),
            })
            .collect()
    }

    /// Democratic appraisals of members held for `year`.
    async fn appraisals_held(&self) -> i64 {
        self.rollup
            .tally(&format!("appraisals/{}/democratic_appraisal", self.year))
    }

    /// Of those, appraisals with a result.
    async fn appraisals_completed(&self) -> i64 {
        self.rollup.tally(&format!(
            "appraisals_rated/{}/democratic_appraisal",
            self.year
        ))
    }

    /// `appraisalsCompleted / appraisalsHeld`.
    async fn appraisal_completion(&self) -> f64 {
        let y = self.year;
        share(
            self.rollup
                .tally(&format!("appraisals_rated/{y}/democratic_appraisal")),
            self.rollup
                .tally(&format!("appraisals/{y}/democratic_appraisal")),
        )
    }

    /// Complaints filed in the subtree, all time.
    async fn complaints(&self) -> i64 {
        self.rollup.tally("complaints")
    }

    /// Complaints waiting for handling (open or escalated).
    async fn complaints_open(&self) -> i64 {
        self.rollup
            .tallies_under("complaints_open/")
            .map(|(_, n)| n)
            .sum()
    }

    /// Open complaints past their due date (today, UTC).
    async fn complaints_overdue(&self) -> i64 {
        let today = today();
        self.rollup
            .tallies_under("complaints_open/")
            .filter(|(due, _)| *due < today.as_str())
            .map(|(_, n)| n)
            .sum()
    }

    /// Complaints answered.
    async fn complaints_answered(&self) -> i64 {
        self.rollup.tally("complaints_answered")
    }

    /// Mean days from filing to answer, over the complaints answered.
    async fn mean_response_days(&self) -> f64 {
        mean(
            self.rollup.tally("complaint_response_days"),
            self.rollup.tally("complaints_answered"),
        )
    }

    /// Directives issued in the subtree in `year`.
    async fn directives_issued(&self) -> i64 {
        self.rollup.tally(&format!("directives/{}", self.year))
    }

    /// Reports for a period of `year` submitted in the subtree.
    async fn reports_submitted(&self) -> i64 {
        self.reports("reports/")
    }

    /// Of those, reports the level above has reviewed.
    async fn reports_reviewed(&self) -> i64 {
        self.reports("reports_reviewed/")
    }

    /// Projects by status.
    async fn projects(&self, status: Option<ProjectStatusGql>) -> i64 {
        match status {
            Some(s) => {
                let s = gs::entities::ProjectStatus::from(s);
                self.rollup.tally(&format!("projects/{}", s.as_str()))
            }
            None => self.rollup.tallies_under("projects/").map(|(_, n)| n).sum(),
        }
    }

    /// Collective assets by category.
    async fn assets(&self) -> Vec<AssetTotal> {
        gs::entities::AssetCategory::ALL
            .iter()
            .map(|c| AssetTotal {
                category: (*c).into(),
                items: self.rollup.tally(&format!("assets/{}", c.as_str())),
                value: self.rollup.tally(&format!("asset_value/{}", c.as_str())),
            })
            .collect()
    }

    /// Total of the fund programmes for `year` run in the subtree (yuan).
    async fn funds_allocated(&self) -> i64 {
        self.rollup.tally(&format!("funds/{}", self.year))
    }

    /// Total paid out in `year` in the subtree (yuan).
    async fn funds_disbursed(&self) -> i64 {
        self.rollup.tally(&format!("disbursed/{}", self.year))
    }

    /// Disbursements by status (all years): DELAYED and RETURNED ones are what whole-process
    /// tracking looks for.
    async fn disbursements(&self) -> Vec<DisbursementCount> {
        gs::entities::DisbursementStatus::ALL
            .iter()
            .map(|s| DisbursementCount {
                status: (*s).into(),
                count: self.rollup.tally(&format!("disbursements/{}", s.as_str())),
            })
            .collect()
    }

    /// Disbursements in kind instead of money, whatever their status (planned, paid,
    /// delayed or returned; all years).
    async fn disbursements_in_kind(&self) -> i64 {
        self.rollup.tally("disbursements_in_kind")
    }

    /// Disclosures published in `year` about each sensitive item (collective income, debt,
    /// investment, cadre pay, hospitality), which the seed says must be disclosed truthfully.
    async fn sensitive_disclosures(&self) -> Vec<SensitiveDisclosureCount> {
        gs::entities::SensitiveItem::ALL
            .iter()
            .map(|i| SensitiveDisclosureCount {
                item: (*i).into(),
                count: self
                    .rollup
                    .tally(&format!("disclosed_item/{}/{}", self.year, i.as_str())),
            })
            .collect()
    }

    /// Public disclosures by category.
    async fn disclosures(&self) -> Vec<DisclosureCount> {
        gs::entities::DisclosureCategory::ALL
            .iter()
            .map(|c| DisclosureCount {
                category: (*c).into(),
                count: self.rollup.tally(&format!("disclosures/{}", c.as_str())),
                in_year: self.rollup.disclosures_in(self.year, Some(c.as_str())),
            })
            .collect()
    }
}

impl Indicators {
    /// Reports (under `prefix`) whose period lies in `year`.
    fn reports(&self, prefix: &str) -> i64 {
        let year = gs::entities::period_months(&self.year.to_string());
        self.rollup
            .tallies_under(prefix)
            .filter(|(key, _)| {
                let period = key.split_once('/').map_or("", |(_, p)| p);
                year.is_some_and(|y| {
                    gs::entities::in_period(y, &gs::Value::Text(period.to_owned()))
                })
            })
            .map(|(_, n)| n)
            .sum()
    }
}

/// What a change notification names: one of a unit's documents.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum RecordKind {
    /// A unit's member register.
    Members,
    /// A unit's profile (name, children, organisations, activity place, revoked
    /// certificates).
    Profile,
    /// Activists and reserve cadres.
    Activists,
    /// Cadre posts.
    Posts,
    /// Meetings, activities and training.
    Meetings,
    /// Appraisals.
    Appraisals,
    /// Projects.
    Projects,
    /// Collective assets.
    Assets,
    /// Public disclosures.
    Disclosures,
    /// Complaints.
    Complaints,
    /// Directives the unit issued.
    Directives,
    /// Reports the unit submitted.
    Reports,
    /// Fund programmes the unit runs.
    Funds,
    /// Disbursements paid at the unit.
    Disbursements,
}

impl RecordKind {
    /// The GraphQL name of a document kind (`None` for a kind added after this build).
    fn of(k: DocKind) -> Option<RecordKind> {
        Some(match k {
            DocKind::Members => RecordKind::Members,
            DocKind::Profile => RecordKind::Profile,
            DocKind::Activists => RecordKind::Activists,
            DocKind::Posts => RecordKind::Posts,
            DocKind::Meetings => RecordKind::Meetings,
            DocKind::Appraisals => RecordKind::Appraisals,
            DocKind::Projects => RecordKind::Projects,
            DocKind::Assets => RecordKind::Assets,
            DocKind::Disclosures => RecordKind::Disclosures,
            DocKind::Complaints => RecordKind::Complaints,
            DocKind::Directives => RecordKind::Directives,
            DocKind::Reports => RecordKind::Reports,
            DocKind::Funds => RecordKind::Funds,
            DocKind::Disbursements => RecordKind::Disbursements,
            _ => return None,
        })
    }
}

/// What a member listing is ordered by.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(name = "MemberOrder")]
pub enum MemberOrderGql {
    /// Name, by character code (not by pinyin).
    Name,
    /// Year of birth.
    BirthYear,
    /// Date of joining.
    JoinedOn,
}

/// A change stored on this node.
#[derive(SimpleObject)]
pub struct Change {
    /// The unit whose records changed.
    unit: ID,
    /// Which of its records.
    kind: RecordKind,
    /// When this node stored the change (RFC 3339, UTC).
    at: String,
    /// Notifications this subscriber missed just before this one because it read too
    /// slowly; when not 0, re-query everything shown. Counted over every change the node
    /// stored, so told as a number only to a user of the node's unit or above (who may
    /// read them all); to anyone else 1 stands for some: the count would tell how busy
    /// the parts of the tree they may not read are.
    missed: i64,
}

/// Live notifications (WebSocket at `/graphql/ws`, `graphql-transport-ws` or `graphql-ws`).
pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// Changes stored on this node (made here or received from a peer) to records of
    /// `unit`'s subtree (default: this node's unit) that the caller may read. A notification
    /// says what changed, not the new values: re-query what you show, or read `recordFeed`
    /// from your last cursor for the records themselves.
    async fn changes(
        &self,
        ctx: &Context<'_>,
        unit: Option<ID>,
    ) -> Result<impl futures_util::Stream<Item = Change> + use<>> {
        let b = backend(ctx)?;
        let root = match unit {
            Some(id) => parse_unit(&id)?,
            None => b.node_unit.clone(),
        };
        let who = caller(ctx).clone();
        let counted =
            matches!(&who, Caller::User { unit, .. } if b.node_unit.is_in_subtree_of(unit));
        let rx = b.store.subscribe();
        // A connection's token is checked again at every notification: revoking it ends the
        // subscription.
        let token = ctx.data_opt::<TokenHash>().copied();
        let reader = b.reader.clone();
        Ok(futures_util::stream::unfold(
            (rx, root, who),
            move |(mut rx, root, who)| {
                let reader = reader.clone();
                async move {
                    let mut missed = 0i64;
                    loop {
                        match rx.recv().await {
                            Ok(_)
                                if token
                                    .is_some_and(|t| !matches!(reader.user(&t.0), Ok(Some(_)))) =>
                            {
                                return None;
                            }
                            Ok(c) => {
                                let Some(kind) = RecordKind::of(c.doc.kind) else {
                                    continue;
                                };
                                let meta = DocMeta::new(c.doc.clone());
                                if !c.doc.owner.is_in_subtree_of(&root) || !can_read(&who, &meta) {
                                    continue;
                                }
                                let change = Change {
                                    unit: ID(c.doc.owner.to_string()),
                                    kind,
                                    at: rfc3339(c.at_ms),
                                    missed: if counted { missed } else { missed.min(1) },
                                };
                                return Some((change, (rx, root, who)));
                            }
                            Err(RecvError::Lagged(n)) => {
                                missed =
                                    missed.saturating_add(i64::try_from(n).unwrap_or(i64::MAX));
                            }
                            Err(RecvError::Closed) => return None,
                        }
                    }
                }
            },
        ))
    }
}

/// A reference year from a query argument (this year when absent).
fn parse_year(year: Option<i32>) -> Result<i64> {
    match year {
        Some(y) if (1900..=2200).contains(&y) => Ok(i64::from(y)),
        Some(y) => Err(error(
            Code::BadUserInput,
            format!("year must be between 1900 and 2200, got {y}"),
        )),
        None => Ok(this_year()),
    }
}

/// A page of `unit`'s own records of `T` for a report on each (receipts, fund tracking): for
/// callers who may read the unit's members (its own and those above it).
fn own_records<T: en::EntityType>(
    ctx: &Context<'_>,
    unit: &UnitId,
    first: Option<i32>,
    after: Option<String>,
    period: Option<String>,
    filters: &[(&str, Option<gs::Value>)],
) -> Result<en::RecordConnection<T>> {
    if let Some(e) = en::refuse_read(caller(ctx), DocKind::Members, unit) {
        return Err(e);
    }
    let args = ListArgs {
        first,
        after,
        subtree: false,
        level: None,
        period,
        order_by: None,
        descending: false,
    };
    en::list::<T>(ctx, unit, args, filters)
}

/// An empty connection paged as `page` is (its page flags and total), to hold a report on
/// each of its records.
fn paged_like<T: async_graphql::OutputType, N: async_graphql::OutputType>(
    page: &en::RecordConnection<T>,
) -> Connection<String, N, ConnectionTotal, EmptyFields> {
    connection(
        page.has_previous_page,
        page.has_next_page,
        page.additional_fields.total_count,
        std::iter::empty(),
    )
}

/// How the units a directive addresses have reported back.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct DirectiveReceipts {
    /// The directive.
    directive: DirectiveGql,
    /// Units it addresses that this node knows.
    addressed: i64,
    /// Of those, units that filed a REPORT_BACK report naming it.
    received: i64,
    /// `received / addressed` (the directive receipt rate).
    rate: f64,
    /// Whether its deadline (if it has one) is before today (UTC).
    past_deadline: bool,
    #[graphql(skip)]
    missing: Vec<UnitId>,
}

#[async_graphql::ComplexObject]
impl DirectiveReceipts {
    /// The units it addresses that have not reported back, in tree order, at most `first`
    /// (default 100): whom to ask. `addressed - received` is how many there are in all.
    #[graphql(
        complexity = "list_cost(first.unwrap_or(100).clamp(0, 1000) as usize, child_complexity, 0)"
    )]
    async fn missing(&self, ctx: &Context<'_>, first: Option<i32>) -> Result<Vec<Unit>> {
        let first = usize::try_from(first.unwrap_or(100).clamp(0, 1000)).unwrap_or(0);
        self.missing
            .iter()
            .take(first)
            .map(|u| Unit::cached(ctx, u.clone()))
            .collect()
    }
}

/// How a fund programme's money reached its recipients, from its disbursements (status PAID)
/// anywhere below: interception shows as recipients paid less than it promised each,
/// misappropriation as more paid out than its total.
#[derive(SimpleObject)]
pub struct FundTracking {
    /// The programme.
    programme: en::FundProgrammeGql,
    /// People paid under it (by identity number, else by name, within the unit that paid
    /// them; instalments to one person count once).
    recipients: i64,
    /// What they were paid in all (yuan).
    paid: i64,
    /// `recipients x perRecipient` (null when the programme names no amount per recipient).
    expected: Option<i64>,
    /// Recipients paid less than `perRecipient` in all (null likewise).
    short_paid: Option<i64>,
    /// What those were not paid, summed per recipient (null likewise): a recipient paid
    /// more does not make up for one paid less.
    shortfall: Option<i64>,
    /// Whether more was paid out than the programme's total.
    over_total: bool,
}

impl FundTracking {
    /// The tracking of programme `p` from its disbursements.
    fn of(p: gs::Record, disbursements: &[gs::Record]) -> FundTracking {
        let mut per: HashMap<String, i64> = HashMap::new();
        for d in disbursements
            .iter()
            .filter(|d| d.text("status") == Some("paid"))
        {
            // Identity numbers are sensitive: only grouped by here, never shown, and only
            // within the unit that paid: a caller who may read this (a unit above the
            // payers) could otherwise pay a guessed number itself and see from the count
            // whether someone below was paid under it.
            let who = match d.text("recipientIdNumber") {
                Some(id) => format!("{}/id:{id}", d.id.unit),
                None => format!(
                    "{}/name:{}",
                    d.id.unit,
                    d.text("recipient").unwrap_or_default()
                ),
            };
            let paid = per.entry(who).or_default();
            *paid = paid.saturating_add(d.int("amount").unwrap_or(0));
        }
        let paid = per.values().fold(0i64, |a, v| a.saturating_add(*v));
        let recipients = per.len() as i64;
        let each = p.int("perRecipient");
        let short = each.map(|e| per.values().filter(|v| **v < e).count() as i64);
        let shortfall = each.map(|e| {
            per.values()
                .fold(0i64, |a, v| a.saturating_add(e.saturating_sub(*v).max(0)))
        });
        FundTracking {
            recipients,
            paid,
            expected: each.map(|e| e.saturating_mul(recipients)),
            short_paid: short,
            shortfall,
            over_total: p.int("total").is_some_and(|t| paid > t),
            programme: en::FundProgrammeGql::from(p),
        }
    }
}

/// A target the seed sets.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum TargetKind {
    /// At least 1 new member a year per village who is under 35 with higher education.
    NewYoungHigherEducatedMember,
    /// At least 3 activists in each village.
    ActivistsPerVillage,
    /// Every village has its party branch, its villagers' committee and an activity place.
    VillageOrganisationsAndPlace,
    /// Every village holds the routine "three sessions and one lesson" in each quarter.
    RoutineMeetings,
    /// Every village holds its annual democratic appraisal of members, with a result.
    AnnualAppraisal,
    /// The city studies rural organisation work at least once a year, counties and
    /// townships at least twice.
    StudySessions,
    /// County, township and village secretaries debrief to the level above every year.
    Debriefing,
    /// Counties, townships and villages file a quarterly analysis for every quarter ended.
    QuarterlyAnalysis,
    /// Counties, townships and villages file a half-year self-examination for every half
    /// ended.
    HalfYearSelfExamination,
    /// Counties, townships and villages file an annual assessment once the year has ended.
    AnnualAssessment,
    /// Every village has a reserve cadre, a successor for its secretary (the seed names
    /// missing successors as a weakness the numbers must expose).
    SecretarySuccessors,
}

/// Activists a village needs (the seed's target).
const ACTIVISTS_PER_VILLAGE: i64 = 3;

/// Periods of `year` `months` long that have ended by now, as `YYYY<mark>n` (quarters:
/// 3 and `Q`, halves: 6 and `H`; the year itself: 12 and no mark).
fn ended_periods(year: i64, months: i64, mark: &str) -> Vec<String> {
    ended_periods_by(&today(), year, months, mark)
}

/// [`ended_periods`] as of the day `now` (`YYYY-MM-DD`).
fn ended_periods_by(now: &str, year: i64, months: i64, mark: &str) -> Vec<String> {
    let this_year = now
        .get(..4)
        .and_then(|y| y.parse::<i64>().ok())
        .unwrap_or(1970);
    let month = now
        .get(5..7)
        .and_then(|m| m.parse::<i64>().ok())
        .unwrap_or(1);
    let ended = match year.cmp(&this_year) {
        std::cmp::Ordering::Less => 12 / months,
        std::cmp::Ordering::Equal => (month - 1) / months,
        std::cmp::Ordering::Greater => 0,
    };
    (1..=ended)
        .map(|n| {
            if months == 12 {
                year.to_string()
            } else {
                format!("{year}{mark}{n}")
            }
        })
        .collect()
}

/// Quarters of `year` that have ended by now (`YYYYQn`).
fn ended_quarters(year: i64) -> Vec<String> {
    ended_periods(year, 3, "Q")
}

/// Whether a unit's own reports of `kind` include one for each of `periods` (a report counts
/// for the period its own period spans: `2026Q1`, not a month of it).
fn filed_for_each(r: &gs::Rollup, kind: &str, periods: &[String]) -> bool {
    let spans = |p: &str| gs::entities::period_months(p);
    let filed: Vec<(i64, i64)> = r
        .tallies_under(&format!("reports/{kind}/"))
        .filter(|(_, n)| *n > 0)
        .filter_map(|(p, _)| spans(p))
        .collect();
    periods
        .iter()
        .all(|p| spans(p).is_some_and(|want| filed.contains(&want)))
}

/// The levels that report to the level above.
const REPORTING: &[gs::Level] = &[gs::Level::County, gs::Level::Township, gs::Level::Village];

/// Whether one unit (at a level), by the counts of its own records, meets a target.
type Meets = Box<dyn Fn(gs::Level, &gs::Rollup) -> bool>;

/// One of the seed's targets, for a year.
struct SeedTarget {
    kind: TargetKind,
    /// The target as the seed states it.
    description: String,
    /// The levels it applies to.
    levels: &'static [gs::Level],
    /// What `meets` reads of a unit's counts: the report reads only these parts of each
    /// unit's roll-up (a test checks that each target judges the same on them alone).
    reads: gs::Selection,
    meets: Meets,
}

/// The levels of villages.
const VILLAGES: &[gs::Level] = &[gs::Level::Village];

/// Each target, as the seed states it, the levels it applies to, and whether one unit's own
/// counts meet it in `year`.
fn seed_targets(year: i64) -> Vec<SeedTarget> {
    let quarters = ended_quarters(year);
    let routine: Vec<String> = quarters
        .iter()
        .flat_map(|q| {
            gs::entities::MeetingKind::ROUTINE
                .iter()
                .map(move |k| format!("meetings/{q}/{}", k.as_str()))
        })
        .collect();
    let appraisal = format!("appraisals_rated/{year}/democratic_appraisal");
    let studies: Vec<String> = (1..=4)
        .map(|q| format!("meetings/{year}Q{q}/study_session"))
        .collect();
    let year_months = gs::entities::period_months(&year.to_string());
    vec![
        SeedTarget {
            kind: TargetKind::NewYoungHigherEducatedMember,
            description: "Each village develops at least 1 new member a year who is under 35 \
                          with higher education."
                .into(),
            levels: VILLAGES,
            reads: gs::Selection {
                higher_joined: vec![year],
                ..gs::Selection::default()
            },
            meets: Box::new(move |_, r: &gs::Rollup| r.new_young_higher(year) >= 1),
        },
        SeedTarget {
            kind: TargetKind::ActivistsPerVillage,
            description: format!("At least {ACTIVISTS_PER_VILLAGE} activists in each village."),
            levels: VILLAGES,
            reads: gs::Selection::of_tallies(["talent/".into()]),
            meets: Box::new(|_, r: &gs::Rollup| r.activists() >= ACTIVISTS_PER_VILLAGE),
        },
        SeedTarget {
            kind: TargetKind::VillageOrganisationsAndPlace,
            description: "Full coverage: every village has its party branch, its villagers' \
                          committee and an activity place."
                .into(),
            levels: VILLAGES,
            reads: gs::Selection::of_tallies(["org/".into(), "place".into()]),
            meets: Box::new(|_, r: &gs::Rollup| {
                r.tally("org/party_branch") > 0
                    && r.tally("org/villagers_committee") > 0
                    && r.tally("place") > 0
            }),
        },
        SeedTarget {
            kind: TargetKind::StudySessions,
            description: "The city studies rural organisation work at least once a year; \
                          counties and townships at least twice (STUDY_SESSION meetings)."
                .into(),
            levels: &[gs::Level::City, gs::Level::County, gs::Level::Township],
            reads: gs::Selection::of_tallies(studies.clone()),
            meets: Box::new(move |level, r: &gs::Rollup| {
                let held: i64 = studies.iter().map(|k| r.tally(k)).sum();
                held >= if level == gs::Level::City { 1 } else { 2 }
            }),
        },
        SeedTarget {
            kind: TargetKind::Debriefing,
            description: "County, township and village secretaries debrief to the level above \
                          every year (a DEBRIEFING report for a period of the year)."
                .into(),
            levels: REPORTING,
            reads: gs::Selection::of_tallies(["reports/debriefing/".into()]),
            meets: Box::new(move |_, r: &gs::Rollup| {
                r.tallies_under("reports/debriefing/").any(|(period, n)| {
                    n > 0
                        && year_months.is_some_and(|y| {
                            gs::entities::in_period(y, &gs::Value::Text(period.to_owned()))
                        })
                })
            }),
        },
        SeedTarget {
            kind: TargetKind::RoutineMeetings,
            description: format!(
                "Each village holds a branch general meeting, a branch committee meeting, a \
                 group meeting and a party lecture in every quarter ({} of {year} ended so far).",
                quarters.len()
            ),
            levels: VILLAGES,
            reads: gs::Selection::of_tallies(routine.clone()),
            meets: Box::new(move |_, r: &gs::Rollup| routine.iter().all(|k| r.tally(k) > 0)),
        },
        SeedTarget {
            kind: TargetKind::AnnualAppraisal,
            description: "Each village holds its democratic appraisal of members once a year, \
                          with a result."
                .into(),
            levels: VILLAGES,
            reads: gs::Selection::of_tallies([appraisal.clone()]),
            meets: Box::new(move |_, r: &gs::Rollup| r.tally(&appraisal) > 0),
        },
        SeedTarget {
            kind: TargetKind::SecretarySuccessors,
            description: "Every village has a reserve cadre (an activist at stage RESERVE_CADRE) \
                          to succeed its secretary: missing successors are a weakness the seed \
                          names."
                .into(),
            levels: VILLAGES,
            reads: gs::Selection::of_tallies(["talent/reserve_cadre".into()]),
            meets: Box::new(|_, r: &gs::Rollup| r.tally("talent/reserve_cadre") > 0),
        },
        scheduled_report(
            TargetKind::QuarterlyAnalysis,
            "a quarterly analysis for every quarter",
            "quarterly_analysis",
            quarters.clone(),
            year,
        ),
        scheduled_report(
            TargetKind::HalfYearSelfExamination,
            "a half-year self-examination for every half",
            "half_year_self_examination",
            ended_periods(year, 6, "H"),
            year,
        ),
        scheduled_report(
            TargetKind::AnnualAssessment,
            "an annual assessment for the year, once",
            "annual_assessment",
            ended_periods(year, 12, ""),
            year,
        ),
    ]
}

/// A target of a report each county, township and village files to the level above for
/// every period of `year` that has ended.
fn scheduled_report(
    kind: TargetKind,
    what: &str,
    report: &'static str,
    periods: Vec<String>,
    year: i64,
) -> SeedTarget {
    let description = format!(
        "Each county, township and village files {what} of {year} that has ended ({}), \
         reported to the level above.",
        if periods.is_empty() {
            "none yet".to_owned()
        } else {
            periods.join(", ")
        }
    );
    SeedTarget {
        kind,
        description,
        levels: REPORTING,
        reads: gs::Selection::of_tallies([format!("reports/{report}/")]),
        meets: Box::new(move |_, r: &gs::Rollup| filed_for_each(r, report, &periods)),
    }
}

/// How a unit's subtree stands against one of the seed's targets.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Target {
    /// Which target.
    target: TargetKind,
    /// The target as the seed states it.
    description: String,
    /// The year it is measured for.
    year: i64,
    /// The levels it applies to.
    levels: Vec<LevelGql>,
    /// Units checked: every unit of the subtree at those levels that this node knows.
    units: i64,
    /// True when every unit checked meets it (false when there is none to check).
    met: bool,
    /// Units that miss it.
    missing_count: i64,
    #[graphql(skip)]
    missing_ids: Vec<UnitId>,
}

#[async_graphql::ComplexObject]
impl Target {
    /// Units that miss the target, in id order (so grouped by county and township; each
    /// has its `parent`). At most 100 a page.
    #[graphql(
        complexity = "list_cost(first.unwrap_or(DEFAULT_PAGE).clamp(0, MAX_PAGE) as usize, child_complexity, 1)"
    )]
    async fn missing(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size, at most 100 (default 20).")] first: Option<i32>,
        #[graphql(desc = "Id of the last unit of the previous page.")] after: Option<ID>,
    ) -> Result<Vec<Unit>> {
        let b = backend(ctx)?;
        let first = page_size(first)?;
        let after = after.as_ref().map(parse_unit).transpose()?;
        let mut out = Vec::new();
        for id in self
            .missing_ids
            .iter()
            .filter(|v| after.as_ref().is_none_or(|a| *v > a))
            .take(first)
        {
            let profile = b.reader.unit(id).map_err(internal)?;
            out.push(Unit::new(id.clone(), profile, None));
        }
        Ok(out)
    }
}

/// Minutes east of UTC of the day the units keep (`utc_offset_minutes` in node.toml): what
/// "today" is for overdue complaints, deadlines, the default year and the periods ended.
static UTC_OFFSET_MINUTES: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Set the offset of the units' day from UTC, in minutes (480 for China); at most a day.
pub fn set_utc_offset_minutes(minutes: i32) {
    UTC_OFFSET_MINUTES.store(
        minutes.clamp(-1440, 1440),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Today's date, `YYYY-MM-DD`, in the units' day ([`set_utc_offset_minutes`]; UTC unless
/// set).
fn today() -> String {
    let offset = UTC_OFFSET_MINUTES.load(std::sync::atomic::Ordering::Relaxed);
    day_at(grassroots_node::status::now_ms(), offset)
}

/// The date, `YYYY-MM-DD`, at the instant `ms` (Unix milliseconds) `offset` minutes east of
/// UTC.
fn day_at(ms: u64, offset: i32) -> String {
    let mut day = rfc3339(ms.saturating_add_signed(i64::from(offset) * 60_000));
    day.truncate(10);
    day
}

/// The current calendar year, in the units' day.
fn this_year() -> i64 {
    today()
        .get(..4)
        .and_then(|y| y.parse().ok())
        .unwrap_or(1970)
}

/// Extra fields of a connection.
#[derive(SimpleObject)]
pub struct ConnectionTotal {
    /// Items in the whole list, all pages.
    pub(crate) total_count: usize,
}

/// A page of members.
pub type MemberConnection = Connection<String, MemberGql, ConnectionTotal, EmptyFields>;

/// A page as a connection: whether it started after a cursor, whether more follow, the
/// whole listing's count, and its edges (cursor, node).
pub(crate) fn connection<N: async_graphql::OutputType>(
    after: bool,
    has_next: bool,
    total: usize,
    edges: impl IntoIterator<Item = (String, N)>,
) -> Connection<String, N, ConnectionTotal, EmptyFields> {
    let mut conn =
        Connection::with_additional_fields(after, has_next, ConnectionTotal { total_count: total });
    conn.edges
        .extend(edges.into_iter().map(|(c, n)| Edge::new(c, n)));
    conn
}

pub(crate) fn encode_cursor(c: &MemberCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", c.tree_key, c.record))
}

pub(crate) fn decode_cursor(s: &str) -> Result<MemberCursor> {
    let bad = || error(Code::BadUserInput, "invalid cursor");
    let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    if text.starts_with('[') {
        // An ordered listing's (`entities::encode_ordered`).
        return Err(error(
            Code::BadUserInput,
            "invalid cursor: a cursor of an ordered listing is for that ordering only",
        ));
    }
    // The record id is last; a record listing's first key (`kind|tree key`) has a '|' too.
    let (tree_key, record) = text.rsplit_once('|').ok_or_else(bad)?;
    Ok(MemberCursor {
        tree_key: tree_key.to_owned(),
        record: record.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            super::rfc3339(1_795_000_000_000),
            "2026-11-18T11:06:40.000Z"
        );
    }

    /// The units' day: 2026-11-27 16:30 UTC is already the 28th in China (+480), still the
    /// 27th in UTC and west of it.
    #[test]
    fn today_is_the_units_day() {
        let at = 1_795_797_000_000; // 2026-11-27T16:30:00Z
        assert_eq!(super::rfc3339(at), "2026-11-27T16:30:00.000Z");
        assert_eq!(super::day_at(at, 0), "2026-11-27");
        assert_eq!(super::day_at(at, 480), "2026-11-28");
        assert_eq!(super::day_at(at, -300), "2026-11-27");
        assert_eq!(super::day_at(0, -60), "1970-01-01");
    }

    /// Each target judges a unit the same on the parts of its counts it says it reads as on
    /// the whole: the report reads only those. Counts that meet every target, then the same
    /// less each count in turn, so that a count a target needs and does not name is missed.
    #[test]
    fn a_target_reads_only_what_it_names() {
        use grassroots_schema as gs;
        let year = 2025;
        let mut good = gs::Rollup {
            members: 40,
            ..Default::default()
        };
        good.by_birth_year.insert(2000, 40);
        good.by_joined_year.insert(year, [1, 1, 0]);
        good.higher_by_joined
            .insert(year, std::collections::BTreeMap::from([(2000, 1)]));
        good.higher_by_joined
            .insert(year - 1, std::collections::BTreeMap::from([(1999, 1)]));
        let mut keys: Vec<(String, i64)> = vec![
            ("talent/activist".into(), 2),
            ("talent/development_target".into(), 1),
            ("talent/reserve_cadre".into(), 1),
            ("org/party_branch".into(), 1),
            ("org/villagers_committee".into(), 1),
            ("place".into(), 1),
            (format!("appraisals_rated/{year}/democratic_appraisal"), 1),
            (format!("reports/debriefing/{year}"), 1),
            (format!("reports/annual_assessment/{year}"), 1),
            (format!("meetings/{}Q1/study_session", year - 1), 3),
        ];
        for h in 1..=2 {
            keys.push((format!("reports/half_year_self_examination/{year}H{h}"), 1));
        }
        for q in 1..=4 {
            keys.push((format!("reports/quarterly_analysis/{year}Q{q}"), 1));
            keys.push((format!("meetings/{year}Q{q}/study_session"), 1));
            for k in gs::entities::MeetingKind::ROUTINE {
                keys.push((format!("meetings/{year}Q{q}/{}", k.as_str()), 1));
            }
        }
        good.count_tallies(&keys, 1);
        let mut variants = vec![good.clone()];
        for (k, v) in &keys {
            let mut less = good.clone();
            less.count_tallies(&[(k.clone(), *v)], -1);
            variants.push(less);
        }
        let mut less = good.clone();
        less.higher_by_joined.clear();
        variants.push(less);
        for t in super::seed_targets(year) {
            for level in t.levels {
                assert!((t.meets)(*level, &good), "{:?} at {level:?}", t.kind);
                for r in &variants {
                    assert_eq!(
                        (t.meets)(*level, &r.selected(&t.reads)),
                        (t.meets)(*level, r),
                        "{:?} at {level:?}",
                        t.kind
                    );
                }
            }
        }
    }

    /// The periods a target counts: those ended by the day, none of a year to come.
    #[test]
    fn ended_periods_are_those_over_by_the_day() {
        let ended = |now: &str, year: i64, months: i64, mark: &str| {
            super::ended_periods_by(now, year, months, mark)
        };
        let may = "2026-05-15";
        assert_eq!(ended(may, 2026, 3, "Q"), ["2026Q1"]);
        assert!(ended(may, 2026, 6, "H").is_empty());
        assert!(ended(may, 2026, 12, "").is_empty());
        assert!(ended(may, 2027, 3, "Q").is_empty());
        assert_eq!(ended(may, 2025, 6, "H"), ["2025H1", "2025H2"]);
        assert_eq!(ended(may, 2025, 12, ""), ["2025"]);
        assert_eq!(ended("2026-07-01", 2026, 6, "H"), ["2026H1"]);
        assert_eq!(
            ended("2026-12-31", 2026, 3, "Q"),
            ["2026Q1", "2026Q2", "2026Q3"]
        );
    }
}

pub(crate) fn page_size(first: Option<i32>) -> Result<usize> {
    match first.unwrap_or(DEFAULT_PAGE) {
        n if (0..=MAX_PAGE).contains(&n) => Ok(n as usize),
        n => Err(error(
            Code::BadUserInput,
            format!("first must be between 0 and {MAX_PAGE}, got {n}"),
        )),
    }
}

#[Object]
impl UnitCore {
    /// Path of the unit from the root, e.g. `c01/k02/t03/v07`.
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }

    /// Display name; the id until the unit's profile has reached this node.
    async fn name(&self) -> String {
        self.profile
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_else(|| self.id.to_string())
    }

    /// Administrative level.
    async fn level(&self) -> LevelGql {
        self.id.level().into()
    }

    /// Fingerprints of certificates this unit's CA issued and then revoked. Public, so any
    /// node can refuse them.
    async fn revoked_certificates(&self) -> Vec<String> {
        self.profile
            .as_ref()
            .map(|p| p.revoked.clone())
            .unwrap_or_default()
    }

    /// Organisations present (the "1 + X" model). Public, like the rest of the profile.
    async fn organisations(&self) -> Vec<OrganisationGql> {
        self.profile
            .as_ref()
            .map(|p| p.organisations.iter().map(|o| (*o).into()).collect())
            .unwrap_or_default()
    }

    /// Whether the unit has an activity place.
    async fn activity_place(&self) -> bool {
        self.profile.as_ref().is_some_and(|p| p.activity_place)
    }

    /// Service functions its activity place offers.
    async fn functions(&self) -> Vec<ServiceFunctionGql> {
        self.profile
            .as_ref()
            .map(|p| p.functions.iter().map(|f| (*f).into()).collect())
            .unwrap_or_default()
    }

    /// The unit above; null at the root or when not known here.
    async fn parent(&self, ctx: &Context<'_>) -> Result<Option<Unit>> {
        match self.id.parent() {
            Some(p) => {
                reach_units(ctx, 1)?;
                Unit::load(backend(ctx)?, p)
            }
            None => Ok(None),
        }
    }

    /// The units directly below that this node knows: those whose profiles it holds, and,
    /// within this node's subtree, those this unit registered whose profiles have not
    /// reached it yet (enrolled, never linked: their name is their id).
    async fn children(&self, ctx: &Context<'_>) -> Result<Vec<Unit>> {
        let b = backend(ctx)?;
        let mut children: Vec<(UnitId, Option<gs::UnitProfile>)> = b
            .reader
            .children(&self.id)
            .map_err(internal)?
            .into_iter()
            .map(|p| (p.id.clone(), Some(p)))
            .collect();
        // Children this unit registered whose own profiles have not arrived (enrolled,
        // never linked): listed too, by id, so that a tree shows them; only within this
        // node's subtree (see `Unit::load`).
        if let Some(p) = self
            .profile
            .as_ref()
            .filter(|_| self.id.is_in_subtree_of(&b.node_unit))
        {
            let held: std::collections::HashSet<&UnitId> =
                children.iter().map(|(id, _)| id).collect();
            let missing: Vec<UnitId> = p
                .children
                .iter()
                .filter(|c| c.parent().as_ref() == Some(&self.id) && !held.contains(c))
                .cloned()
                .collect();
            children.extend(missing.into_iter().map(|id| (id, None)));
            children.sort_by_cached_key(|(id, _)| id.tree_key());
        }
        reach_units(ctx, children.len())?;
        // A tree query asking every child's figures reads their roll-ups in one batch
        // (one read transaction) rather than one lookup per child.
        let mut rollups = if ctx.look_ahead().field("indicators").exists() {
            let ids: Vec<UnitId> = children.iter().map(|(id, _)| id.clone()).collect();
            b.reader.rollups(&ids).map_err(internal)?
        } else {
            HashMap::new()
        };
        Ok(children
            .into_iter()
            .map(|(id, p)| {
                let rollup = rollups.remove(&id);
                Unit::new(id, p, rollup)
            })
            .collect())
    }

    /// Freshness and link state; null for callers who may not read the unit's internal
    /// data (the node's own link to its parent is shown to the node's users).
    async fn sync(&self, ctx: &Context<'_>) -> Result<Option<UnitSync>> {
        let b = backend(ctx)?;
        let who = caller(ctx);
        let doc = DocMeta::new(DocId::new(DocKind::Members, self.id.clone()));
        // The link to the parent is this node's own state: its users may see it.
        let own_parent_link = b.node_unit.parent().as_ref() == Some(&self.id)
            && matches!(who, Caller::User { unit, .. } if b.node_unit.is_in_subtree_of(unit));
        if !can_read(who, &doc) && !own_parent_link {
            return Ok(None);
        }
        let status = ctx
            .data_opt::<StatusOnce>()
            .ok_or_else(|| internal("status cache missing from request data"))?
            .get_or_try_init(|| b.store.status())
            .await
            .map_err(internal)?
            .clone();
        let heard = status
            .heard
            .iter()
            .find(|(u, _)| u == &self.id)
            .map(|(_, t)| *t);
        let now = grassroots_node::status::now_ms();
        let link = status
            .links
            .into_iter()
            .find(|l| l.peer == self.id)
            .map(|l| LinkState {
                connected: l.connected,
                certificate_fingerprint: l.fingerprint,
                protocol: (l.protocol > 0).then_some(l.protocol),
                software: (!l.software.is_empty()).then_some(l.software),
                since: (l.since_ms > 0).then(|| rfc3339(l.since_ms)),
                down_since: (!l.connected && l.down_since_ms > 0).then(|| rfc3339(l.down_since_ms)),
                failed_dials: l.failed_dials,
                last_error: l.last_error,
                last_frame_at: (l.last_frame_ms > 0).then(|| rfc3339(l.last_frame_ms)),
                bytes_in: l.bytes_in,
                bytes_out: l.bytes_out,
                docs_in_flight: l.docs_in_flight,
                docs_queued: l.docs_queued,
                docs_unregistered: l.docs_unregistered,
                rejected: l.rejected,
                kept_off_until: (l.kept_off_until_ms > now).then(|| rfc3339(l.kept_off_until_ms)),
            });
        Ok(Some(UnitSync {
            last_heard_from: heard.map(rfc3339),
            stale: heard.is_none_or(|t| now.saturating_sub(t) > STALE_AFTER_MS),
            link,
        }))
    }

    /// Member figures over this unit's whole subtree, as this node holds it; null for
    /// callers who may not read the unit's members. `year` (default: this year) sets the
    /// reference for ages and new members.
    async fn indicators(&self, ctx: &Context<'_>, year: Option<i32>) -> Result<Option<Indicators>> {
        let b = backend(ctx)?;
        if !reads_members(ctx, &self.id) {
            return Ok(None);
        }
        let year = parse_year(year)?;
        let rollup = match &self.rollup {
            Some(r) => r.clone(),
            None => b.reader.rollup(&self.id).map_err(internal)?,
        };
        Ok(Some(Indicators::from_rollup(rollup, year)))
    }

    /// How evenly `figure` is spread over the units of this subtree at `level` (default:
    /// villages): the lowest and highest `ends` (default 5, at most 100) named, with the
    /// mean and spread. Counts are compared per village above the village level. "Unbalanced
    /// work across branches" is a weakness the seed says the numbers must expose. Same
    /// visibility as `indicators`.
    #[graphql(
        complexity = "list_cost(2 * ends.unwrap_or(5).clamp(0, 100) as usize, child_complexity, SUBTREE_SCAN)"
    )]
    async fn balance(
        &self,
        ctx: &Context<'_>,
        figure: crate::balance::BalanceFigure,
        level: Option<LevelGql>,
        year: Option<i32>,
        ends: Option<i32>,
    ) -> Result<Option<crate::balance::Balance>> {
        let b = backend(ctx)?;
        if !reads_members(ctx, &self.id) {
            return Ok(None);
        }
        let year = parse_year(year)?;
        let ends = match ends.unwrap_or(5) {
            e @ 0..=100 => e as usize,
            e => {
                return Err(error(
                    Code::BadUserInput,
                    format!("ends must be between 0 and 100, got {e}"),
                ));
            }
        };
        let level: gs::Level = level.map_or(gs::Level::Village, Into::into);
        let ids = b
            .reader
            .units_below(&self.id, Some(level))
            .map_err(internal)?;
        // Each row read for the figure's parts alone, past the cache of decoded rows (which
        // a comparison of a city's 5,000 villages would empty).
        let units = b
            .reader
            .rollups_selected(&ids, &figure.reads(year))
            .map_err(internal)?;
        Ok(Some(crate::balance::Balance::of(
            figure, units, level, year, ends,
        )))
    }

    /// The seed's targets, each met or missed by this unit's subtree, with the units that
    /// miss it ("which villages have fewer than 3 activists, by township"). Each is checked
    /// on every unit of the subtree at the levels it applies to, against that unit's own
    /// records. Same visibility as `indicators`. A year not begun is refused (every target
    /// of periods none of which has ended would read as met). In the year in progress,
    /// meetings and reports are judged on the periods ended so far, the yearly targets on
    /// what is recorded so far; the activists, reserve cadres and organisations are judged
    /// as they stand today, whatever the year.
    #[graphql(complexity = "SUBTREE_SCAN + child_complexity")]
    async fn targets(&self, ctx: &Context<'_>, year: Option<i32>) -> Result<Option<Vec<Target>>> {
        let b = backend(ctx)?;
        if !reads_members(ctx, &self.id) {
            return Ok(None);
        }
        let year = parse_year(year)?;
        if year > this_year() {
            return Err(error(
                Code::BadUserInput,
                format!("targets of {year}: the year has not begun"),
            ));
        }
        let targets = seed_targets(year);
        let mut reads = gs::Selection::default();
        for t in &targets {
            reads.add(&t.reads);
        }
        let units = b.reader.units_own(&self.id, &reads).map_err(internal)?;
        Ok(Some(
            targets
                .into_iter()
                .map(|t| {
                    let checked: Vec<&(UnitId, gs::Rollup)> = units
                        .iter()
                        .filter(|(u, _)| t.levels.contains(&u.level()))
                        .collect();
                    let missing: Vec<UnitId> = checked
                        .iter()
                        .filter(|(u, own)| !(t.meets)(u.level(), own))
                        .map(|(u, _)| u.clone())
                        .collect();
                    Target {
                        target: t.kind,
                        description: t.description,
                        year,
                        levels: t.levels.iter().map(|l| (*l).into()).collect(),
                        units: checked.len() as i64,
                        met: missing.is_empty() && !checked.is_empty(),
                        missing_count: missing.len() as i64,
                        missing_ids: missing,
                    }
                })
                .collect(),
        ))
    }

    /// Fund programmes of the units above this one, which it pays out: for callers of this
    /// unit or above it. The highest issuer's first, each issuer's in id order: `first` of
    /// them (at most and by default 100) after the programme `after` names.
    #[graphql(
        complexity = "list_cost(first.unwrap_or(MAX_PAGE).clamp(0, MAX_PAGE) as usize, child_complexity, SUBTREE_SCAN)"
    )]
    async fn fund_programmes_above(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<ID>,
    ) -> Result<Vec<en::FundProgrammeGql>> {
        en::addressed(ctx, &self.id, first, after.as_ref())
    }

    /// How the units each directive of this unit that asks for report-backs (`reportBack`)
    /// addresses have reported back, a page of directives at a time: for the unit's own
    /// callers and those above it.
    #[graphql(
        complexity = "list_cost(first.unwrap_or(DEFAULT_PAGE).clamp(0, MAX_PAGE) as usize, child_complexity.saturating_add(5), 1)"
    )]
    async fn directive_receipts(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size, at most 100 (default 20).")] first: Option<i32>,
        #[graphql(desc = "Cursor of the last item of the previous page.")] after: Option<String>,
        #[graphql(desc = "Only directives issued within this period.")] period: Option<String>,
    ) -> Result<Connection<String, DirectiveReceipts, ConnectionTotal, EmptyFields>> {
        let b = backend(ctx)?;
        // Only the directives that ask for report-backs: the others have none to receive,
        // and every unit they address would read as missing.
        let asking = [("reportBack", Some(gs::Value::Bool(true)))];
        let page = own_records::<DirectiveGql>(ctx, &self.id, first, after, period, &asking)?;
        let today = today();
        let mut conn = paged_like(&page);
        for edge in page.edges {
            let d = edge.node.0;
            let level = d.to_level();
            let addressed = b.reader.units_below(&d.id.unit, level).map_err(internal)?;
            // Only report-backs from the units it addresses count.
            let reported: HashSet<UnitId> = b
                .reader
                .referring_units(&d.id)
                .map_err(internal)?
                .into_iter()
                .filter(|u| gs::addressed_to(&d, u))
                .collect();
            let received = addressed.iter().filter(|u| reported.contains(u)).count();
            let missing: Vec<UnitId> = addressed
                .iter()
                .filter(|u| !reported.contains(u))
                .cloned()
                .collect();
            let past_deadline = d.text("deadline").is_some_and(|due| due < today.as_str());
            conn.edges.push(Edge::new(
                edge.cursor,
                DirectiveReceipts {
                    addressed: addressed.len() as i64,
                    received: received as i64,
                    rate: share(received as i64, addressed.len() as i64),
                    past_deadline,
                    missing,
                    directive: DirectiveGql(d),
                },
            ));
        }
        Ok(conn)
    }

    /// How the money of each fund programme this unit runs reached its recipients, a page of
    /// programmes at a time (each reads its disbursements): for the unit's own callers and
    /// those above it.
    #[graphql(
        complexity = "list_cost(first.unwrap_or(DEFAULT_PAGE).clamp(0, MAX_PAGE) as usize, child_complexity.saturating_add(SUBTREE_SCAN), 1)"
    )]
    async fn fund_tracking(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size, at most 100 (default 20).")] first: Option<i32>,
        #[graphql(desc = "Cursor of the last item of the previous page.")] after: Option<String>,
        #[graphql(desc = "Only programmes of this period (their `year`).")] period: Option<String>,
    ) -> Result<Connection<String, FundTracking, ConnectionTotal, EmptyFields>> {
        let b = backend(ctx)?;
        let page = own_records::<en::FundProgrammeGql>(ctx, &self.id, first, after, period, &[])?;
        let mut conn = paged_like(&page);
        for edge in page.edges {
            let p = edge.node.0;
            let paid = b
                .reader
                .referring_records(&p.id, DocKind::Disbursements)
                .map_err(internal)?;
            conn.edges
                .push(Edge::new(edge.cursor, FundTracking::of(p, &paid)));
        }
        Ok(conn)
    }

    /// Directives addressed to this unit by the units above it, the highest issuer's first,
    /// each issuer's in id order: for callers of this unit or above it. `first` of them (at
    /// most and by default 100) after the directive `after` names.
    #[graphql(
        complexity = "list_cost(first.unwrap_or(MAX_PAGE).clamp(0, MAX_PAGE) as usize, child_complexity, SUBTREE_SCAN)"
    )]
    async fn directives_received(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<ID>,
    ) -> Result<Vec<DirectiveGql>> {
        en::addressed(ctx, &self.id, first, after.as_ref())
    }

    /// Party members of this unit (or of its whole subtree with `subtree: true`), in
    /// (unit, record) order. Needs a token whose unit is this unit or above it.
    #[graphql(
        complexity = "list_cost(first.unwrap_or(DEFAULT_PAGE).clamp(0, MAX_PAGE) as usize, child_complexity, if subtree || order_by.is_some() { SUBTREE_SCAN } else { 1 })"
    )]
    // One argument per filter, as GraphQL takes them.
    #[allow(clippy::too_many_arguments)]
    async fn members(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size, at most 100 (default 20).")] first: Option<i32>,
        #[graphql(desc = "Cursor of the last item of the previous page.")] after: Option<String>,
        #[graphql(default = false, desc = "Include every unit below this one.")] subtree: bool,
        #[graphql(desc = "Only members with this status (`totalCount` counts those too).")]
        status: Option<MemberStatusGql>,
        #[graphql(
            desc = "Only members in this category (`totalCount` counts those too): who is in difficulty, for the care visits."
        )]
        category: Option<MemberCategoryGql>,
        #[graphql(
            desc = "Only members whose name contains this, ignoring case (1 to 64 characters). With this or the filters below, a subtree's `totalCount` is counted from its rows, not read from its roll-up."
        )]
        name_contains: Option<String>,
        #[graphql(desc = "Only members of this education.")] education: Option<EducationGql>,
        #[graphql(desc = "Only members of this gender.")] gender: Option<GenderGql>,
        #[graphql(desc = "Only members born in or after this year.")] born_from: Option<i32>,
        #[graphql(desc = "Only members born in or before this year.")] born_to: Option<i32>,
        #[graphql(
            desc = "Order by this, then by unit and record. An ordered listing reads every member of its range for each page, and its cursors are for that ordering and direction only."
        )]
        order_by: Option<MemberOrderGql>,
        #[graphql(desc = "With `orderBy`: greatest (latest) first.")] descending: Option<bool>,
    ) -> Result<MemberConnection> {
        let descending = direction(order_by.is_some(), descending)?;
        let b = backend(ctx)?;
        let who = caller(ctx);
        if let Some(e) = en::refuse_read(who, DocKind::Members, &self.id) {
            return Err(e);
        }
        let first = page_size(first)?;
        let filter = grassroots_node::store::MemberFilter {
            status: status.map(Into::into),
            category: category.map(Into::into),
            name: match name_contains {
                Some(n) if n.trim().is_empty() || n.chars().count() > 64 => {
                    return Err(error(
                        Code::BadUserInput,
                        "nameContains: 1 to 64 characters",
                    ));
                }
                n => n.map(|n| n.trim().to_lowercase()),
            },
            education: education.map(Into::into),
            gender: gender.map(Into::into),
            born_from: born_from.map(i64::from),
            born_to: born_to.map(i64::from),
        };
        if let Some(by) = order_by {
            let of = en::ordering(DocKind::Members, &format!("{by:?}"), descending);
            let after = after
                .as_deref()
                .map(|a| en::decode_ordered(&of, a))
                .transpose()?;
            let by = match by {
                MemberOrderGql::Name => MemberOrder::Name,
                MemberOrderGql::BirthYear => MemberOrder::BirthYear,
                MemberOrderGql::JoinedOn => MemberOrder::JoinedOn,
            };
            let page = b
                .reader
                .members_ordered(
                    &self.id,
                    subtree,
                    filter,
                    by,
                    descending,
                    after.as_ref(),
                    first,
                    ctx.look_ahead().field("totalCount").exists(),
                )
                .map_err(from_store)?;
            ProfileCache::prefetch(ctx, page.items.iter().map(|(_, m)| &m.id.unit))?;
            let edges = page
                .items
                .into_iter()
                .map(|(c, m)| (en::encode_ordered(&of, &c), MemberGql(m)));
            return Ok(connection(
                after.is_some(),
                page.has_next,
                page.total,
                edges,
            ));
        }
        let after = after.as_deref().map(decode_cursor).transpose()?;
        let page = b
            .reader
            .members_with(
                &self.id,
                subtree,
                filter,
                after.as_ref(),
                first,
                ctx.look_ahead().field("totalCount").exists(),
            )
            .map_err(internal)?;
        ProfileCache::prefetch(ctx, page.items.iter().map(|(_, m)| &m.id.unit))?;
        let edges = page
            .items
            .into_iter()
            .map(|(c, m)| (encode_cursor(&c), MemberGql(m)));
        Ok(connection(
            after.is_some(),
            page.has_next,
            page.total,
            edges,
        ))
    }
}

/// The record listings of a unit, one per kind: the same arguments and the same path
/// (`entities::list`), generated from the table below. Merged into [`Unit`].
macro_rules! unit_listings {
    ($( $(#[$m:meta])* $name:ident: $gql:ty { $( $farg:ident: $fty:ty = $key:literal, $fdesc:literal; )* } )+) => {
        /// A unit's record listings (its fields are `Unit`'s).
        pub struct UnitRecords(UnitId);

        #[Object]
        impl UnitRecords {
            $(
                $(#[$m])*
                #[graphql(
                    complexity = "list_cost(first.unwrap_or(DEFAULT_PAGE).clamp(0, MAX_PAGE) as usize, child_complexity, if subtree || order_by.is_some() { SUBTREE_SCAN } else { 1 })"
                )]
                #[allow(clippy::too_many_arguments)]
                async fn $name(
                    &self,
                    ctx: &Context<'_>,
                    #[graphql(desc = "Page size, at most 100 (default 20).")] first: Option<i32>,
                    #[graphql(desc = "Cursor of the last item of the previous page.")] after: Option<String>,
                    #[graphql(default = false, desc = "Include every unit below this one.")] subtree: bool,
                    #[graphql(desc = "Only records of units at this level.")] level: Option<LevelGql>,
                    #[graphql(desc = "Only records within this period (YYYY, YYYYHn, YYYYQn or YYYY-MM), by the date each kind is filed under: an activist's `since`, a post's `termStart`, a meeting's `heldOn`, an appraisal's and a fund programme's `year` (a year only), a project's `startedOn`, an asset's `recordedOn`, a disclosure's `publishedOn`, a complaint's `filedOn`, a directive's `issuedOn`, a report's `submittedOn` (not the period it reports on), a disbursement's `paidOn` (one without it is left out).")]
                    period: Option<String>,
                    #[graphql(desc = "Order by this field of the record (its name as in the type, e.g. `heldOn`): a date, number, flag, choice or short text, not a sensitive one; then by unit and record. Records without it come last, an unset flag counts as false; text sorts by character code (not by pinyin) and a choice by its name. An ordered listing reads every record of its range for each page, and its cursors are for that ordering and direction only.")]
                    order_by: Option<String>,
                    #[graphql(desc = "With `orderBy`: greatest (latest) first.")]
                    descending: Option<bool>,
                    $( #[graphql(desc = $fdesc)] $farg: Option<$fty>, )*
                ) -> Result<RecordConnection<$gql>> {
                    let descending = direction(order_by.is_some(), descending)?;
                    let args = ListArgs { first, after, subtree, level, period, order_by, descending };
                    en::list(ctx, &self.0, args, &[$( ($key, $farg.map(en::FieldValue::into_value)) ),*])
                }
            )+
        }
    };
}

/// A listing's `descending`: only with `orderBy`, which it reverses (the stored order has no
/// other direction; taking it silently would hand back pages in an order not asked for).
fn direction(ordered: bool, descending: Option<bool>) -> Result<bool> {
    match descending {
        Some(true) if !ordered => Err(error(Code::BadUserInput, "descending: only with orderBy")),
        d => Ok(d.unwrap_or(false)),
    }
}

unit_listings! {
    /// Activists, applicants and reserve cadres of this unit (or its subtree).
    activists: ActivistGql {
        stage: en::TalentStageGql = "stage", "Only this stage.";
    }
    /// Cadre posts of this unit (or its subtree).
    cadre_posts: CadrePostGql {
        post: en::PostKindGql = "post", "Only this post.";
    }
    /// Meetings, activities and training of this unit (or its subtree); `period` looks at `heldOn`.
    meetings: MeetingGql {
        kind: MeetingKindGql = "kind", "Only this kind.";
    }
    /// Appraisals of this unit (or its subtree); `period` looks at `year`.
    appraisals: AppraisalGql {
        kind: en::AppraisalKindGql = "kind", "Only this kind.";
    }
    /// Projects of this unit (or its subtree); `period` looks at `startedOn`.
    projects: ProjectGql {
        category: en::ProjectCategoryGql = "category", "Only this category.";
        status: ProjectStatusGql = "status", "Only this status.";
    }
    /// Collective assets of this unit (or its subtree).
    assets: CollectiveAssetGql {
        category: AssetCategoryGql = "category", "Only this category.";
    }
    /// Public disclosures of this unit (or its subtree): readable without a token.
    disclosures: DisclosureGql {
        category: DisclosureCategoryGql = "category", "Only this category.";
    }
    /// Complaints filed at this unit (or its subtree); `period` looks at `filedOn`.
    complaints: ComplaintGql {
        status: en::ComplaintStatusGql = "status", "Only this status (new complaints are OPEN).";
    }
    /// Directives this unit (or its subtree) issued, those the caller may read.
    directives: DirectiveGql {
    }
    /// Reports this unit (or its subtree) submitted; `period` looks at `submittedOn`.
    reports: ReportGql {
        kind: en::ReportKindGql = "kind", "Only this kind.";
    }
    /// Fund programmes this unit (or its subtree) runs; `period` looks at `year`.
    fund_programmes: en::FundProgrammeGql {
    }
    /// Disbursements paid at this unit (or its subtree); `period` looks at `paidOn`. Anyone reads the published ones; the rest follow the unit's visibility.
    disbursements: en::DisbursementGql {
        status: en::DisbursementStatusGql = "status", "Only this status.";
        method: en::DisbursementMethodGql = "method", "Only this method.";
        programme: ID = "programme", "Only those of this programme (`unit#record`).";
        published: bool = "published", "Only published (true) or unpublished (false) ones.";
    }
}

#[derive(Debug)]
pub struct MemberGql(gs::Member);

#[Object(name = "Member")]
impl MemberGql {
    /// `unit#record`, stable for the member's life.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Full name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Year of birth.
    async fn birth_year(&self) -> i64 {
        self.0.birth_year
    }
    /// The categories the member is in.
    async fn categories(&self) -> Vec<MemberCategoryGql> {
        self.0.categories.iter().map(|c| (*c).into()).collect()
    }
    /// Gender.
    async fn gender(&self) -> GenderGql {
        self.0.gender.into()
    }
    /// Highest education.
    async fn education(&self) -> EducationGql {
        self.0.education.into()
    }
    /// Date joined, `YYYY-MM-DD`.
    async fn joined_on(&self) -> &str {
        &self.0.joined_on
    }
    /// Probationary or full.
    async fn status(&self) -> MemberStatusGql {
        self.0.status.into()
    }
    /// The unit whose register holds the member.
    async fn unit(&self, ctx: &Context<'_>) -> Result<Unit> {
        Unit::cached(ctx, self.0.id.unit.clone())
    }
    /// Phone number: null unless the caller is a clerk (or above) of the member's own unit.
    async fn phone(&self, ctx: &Context<'_>) -> Option<&str> {
        can_read_sensitive(caller(ctx), &self.0.id.unit)
            .then_some(self.0.phone.as_deref())
            .flatten()
    }
    /// Personal identity number: null unless the caller is a clerk (or above) of the
    /// member's own unit.
    async fn id_number(&self, ctx: &Context<'_>) -> Option<&str> {
        can_read_sensitive(caller(ctx), &self.0.id.unit)
            .then_some(self.0.id_number.as_deref())
            .flatten()
    }
    /// Who created the record and when; null for records made without a caller (generated
    /// data, or written before records were stamped).
    async fn created(&self) -> Option<StampGql> {
        StampGql::of(&self.0.created, &self.0.id.unit)
    }
    /// Who last updated the record and when; null if never updated through the gateway.
    async fn changed(&self) -> Option<StampGql> {
        StampGql::of(&self.0.changed, &self.0.id.unit)
    }
}

/// Who wrote a record and when. Written into the record, so every level sees the same;
/// with the unit whose record it is, which decides who sees the writer's name.
pub struct StampGql(pub gs::Stamp, pub UnitId);

impl StampGql {
    /// The stamp of a record of `owner`, if it has one.
    pub fn of(stamp: &Option<gs::Stamp>, owner: &UnitId) -> Option<StampGql> {
        stamp.clone().map(|s| StampGql(s, owner.clone()))
    }
}

#[Object(name = "Stamp")]
impl StampGql {
    /// When the node that took the write stored it (RFC 3339, UTC).
    async fn at(&self) -> String {
        rfc3339(u64::try_from(self.0.at_ms).unwrap_or(0))
    }
    /// The writer's unit.
    async fn unit(&self) -> ID {
        ID(self.0.unit.to_string())
    }
    /// The writer's role there.
    async fn role(&self) -> RoleGql {
        self.0.role.into()
    }
    /// The user the writer's token was issued to (`grassroots user add --name`, else a
    /// label from the token); null on records written before users were named, and for
    /// callers not of the record's unit or the writer's or above them: staff names are not
    /// shown to the public, nor to another line reading a published record or a unit below
    /// reading what was addressed to it.
    async fn user(&self, ctx: &Context<'_>) -> Option<&str> {
        match caller(ctx) {
            Caller::User { unit, .. }
                if self.1.is_in_subtree_of(unit) || self.0.unit.is_in_subtree_of(unit) =>
            {
                self.0.user.as_deref()
            }
            _ => None,
        }
    }
}

/// Who the caller is.
pub struct Me {
    caller: Caller,
}

#[Object]
impl Me {
    /// The token's role; null for anonymous callers.
    async fn role(&self) -> Option<RoleGql> {
        match &self.caller {
            Caller::Anonymous => None,
            Caller::User { role, .. } => Some((*role).into()),
        }
    }
    /// The token's unit; null for anonymous callers.
    async fn unit(&self, ctx: &Context<'_>) -> Result<Option<Unit>> {
        match &self.caller {
            Caller::Anonymous => Ok(None),
            Caller::User { unit, .. } => Ok(Some(Unit::known(backend(ctx)?, unit.clone())?)),
        }
    }
}

/// Read operations.
pub struct Query;

#[Object]
impl Query {
    /// The caller, as the token identifies them.
    async fn me(&self, ctx: &Context<'_>) -> Me {
        Me {
            caller: caller(ctx).clone(),
        }
    }

    /// The users (tokens) of `unit` (default: the caller's) and the units below it that this
    /// node holds, by unit and name: an admin there or above. A token itself is never shown
    /// again; `revokeUserTokens(name)` revokes by the names listed here.
    async fn users(&self, ctx: &Context<'_>, unit: Option<ID>) -> Result<Vec<UserEntry>> {
        let b = backend(ctx)?;
        let within = users_unit(ctx, b, unit)?;
        Ok(b.reader
            .users_within(&within)
            .map_err(internal)?
            .into_iter()
            .map(|u| UserEntry {
                unit: ID(u.unit.to_string()),
                role: u.role.into(),
                name: u.name,
            })
            .collect())
    }

    /// How this node's backups went: the newest and the last failure (a full disk, a folder
    /// it may not write); for users of this node's unit.
    async fn backups(&self, ctx: &Context<'_>) -> Result<BackupState> {
        let b = backend(ctx)?;
        authorise_node_user(ctx, b, gs::Role::Viewer, "see its backups")?;
        let log = b.reader.backup_log();
        let take_back = b.store.status().await.map_err(internal)?.take_back_until_ms;
        Ok(BackupState {
            take_back_until: take_back.map(rfc3339),
            folder: b.reader.backup_dir().map(|d| d.display().to_string()),
            last: log.last.map(|(at, file, bytes)| BackupFile {
                at: rfc3339(at),
                file: file.display().to_string(),
                bytes,
            }),
            last_error: log.last_error.map(|(at, message)| BackupError {
                at: rfc3339(at),
                message,
            }),
        })
    }

    /// The unit this node serves.
    async fn node_unit(&self, ctx: &Context<'_>) -> Result<Unit> {
        let b = backend(ctx)?;
        Unit::known(b, b.node_unit.clone())
    }

    /// A unit by id; null when this node does not know it (holds neither its profile nor,
    /// for a unit of its subtree, a profile that registers it).
    async fn unit(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Unit>> {
        Unit::load(backend(ctx)?, parse_unit(&id)?)
    }

    /// A record of any kind but members by id (`kind:unit#record`); null when not held here
    /// or not visible to the caller.
    async fn record(&self, ctx: &Context<'_>, id: ID) -> Result<Option<AnyRecord>> {
        let r: gs::RecordRef = id
            .parse()
            .map_err(|e| error(Code::BadUserInput, format!("record id: {e}")))?;
        if matches!(r.kind, DocKind::Members | DocKind::Profile) {
            return Err(error(
                Code::BadUserInput,
                "members are read with `member(id)`, units with `unit(id)`",
            ));
        }
        let record = backend(ctx)?.reader.record(&r).map_err(internal)?;
        Ok(record
            .filter(|r| gs::can_read_record(caller(ctx), r))
            .and_then(AnyRecord::of))
    }

    /// The record feed, for keeping a copy up to date: records of every kind (members
    /// included; not unit profiles, which `unit` reads) that this node stored, changed or
    /// deleted after `after` (the `cursor` of an
    /// earlier answer; none: from the start), oldest first. Made here or received from a
    /// peer alike: a record made offline at a village a week ago comes after what the city
    /// stored yesterday. Each record is listed at its last change (one changed while you
    /// page comes again later). Listed are the records of the units and kinds whose records
    /// the caller may read (as the `changes` subscription tells of them), in `unit`'s
    /// subtree when given; one deleted, or not readable by the caller (a directive now for
    /// another level, or never for the caller's), is listed as `deleted`, by its id only:
    /// drop it from your copy. Published records of units whose other
    /// records the caller may not read (disbursements of another line) are not in the feed;
    /// list them with `published: true`. A page looks at no more than 10,000 changes, so it
    /// can hold fewer than `first` entries (even none) while `hasMore` is true: go on from
    /// its `cursor`, which is sealed and opens only at this node.
    #[graphql(
        complexity = "list_cost(first.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE) as usize, child_complexity, SUBTREE_SCAN)"
    )]
    async fn record_feed(
        &self,
        ctx: &Context<'_>,
        unit: Option<ID>,
        after: Option<String>,
        first: Option<i32>,
    ) -> Result<RecordFeed> {
        let first = match page_size(first)? {
            0 => return Err(error(Code::BadUserInput, "first must be at least 1")),
            n => n,
        };
        let root = unit.as_ref().map(parse_unit).transpose()?;
        let from = after
            .map(|a| a.parse::<grassroots_node::store::FeedCursor>())
            .transpose()
            .map_err(|e| error(Code::BadUserInput, e))?;
        let b = backend(ctx)?;
        let who = caller(ctx);
        let page = b
            .reader
            .feed(from.as_ref(), root.as_ref(), first, FEED_SCAN, |e, rows| {
                let r = &e.record;
                // Judged by the document first, as the subscription is. A record of it the
                // caller may not read is listed as gone, by its id only: a directive moved
                // to another level must leave a copy, and the caller cannot tell it from one
                // never addressed to it (whose ids and changes it learns, as a unit below
                // holds that document anyway).
                if !can_read(who, &DocMeta::new(DocId::new(r.kind, r.unit.clone()))) {
                    return Ok(None);
                }
                if e.deleted {
                    return Ok(Some(FeedItem::Gone));
                }
                let read = match r.kind {
                    DocKind::Members => {
                        let id = MemberId {
                            unit: r.unit.clone(),
                            record: r.record,
                        };
                        rows.member(&id)
                            .map(|m| m.map(|m| FeedItem::Member(MemberGql(m))))
                    }
                    _ => rows.record(r).map(|rec| {
                        rec.filter(|rec| gs::can_read_record(who, rec))
                            .and_then(AnyRecord::of)
                            .map(FeedItem::Record)
                    }),
                };
                match read {
                    Ok(item) => Ok(Some(item.unwrap_or(FeedItem::Gone))),
                    // A row that does not decode is passed over (and named), not allowed to
                    // stop every page at this position for good.
                    Err(grassroots_node::StoreError::Corrupt(why)) => {
                        tracing::error!(record = %r, "a record in the feed does not read: {why}");
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            })
            .map_err(internal)?;
        Ok(RecordFeed {
            entries: page
                .entries
                .into_iter()
                .filter_map(|(e, item)| {
                    let kind = RecordKind::of(e.record.kind)?;
                    let id = match e.record.kind {
                        DocKind::Members => MemberId {
                            unit: e.record.unit.clone(),
                            record: e.record.record,
                        }
                        .to_string(),
                        _ => e.record.to_string(),
                    };
                    let (member, record, deleted) = match item {
                        FeedItem::Member(m) => (Some(m), None, false),
                        FeedItem::Record(r) => (None, Some(r), false),
                        FeedItem::Gone => (None, None, true),
                    };
                    Some(FeedEntry {
                        id: ID(id),
                        kind,
                        unit: ID(e.record.unit.to_string()),
                        deleted,
                        member,
                        record,
                    })
                })
                .collect(),
            cursor: page.next.to_string(),
            has_more: page.more,
            reset: page.reset,
        })
    }

    /// A member by id; null when not held here or not visible to the caller.
    async fn member(&self, ctx: &Context<'_>, id: ID) -> Result<Option<MemberGql>> {
        let id = parse_member(&id)?;
        let doc = DocMeta::new(DocId::new(DocKind::Members, id.unit.clone()));
        if !can_read(caller(ctx), &doc) {
            return Ok(None);
        }
        Ok(backend(ctx)?
            .reader
            .member(&id)
            .map_err(internal)?
            .map(MemberGql))
    }
}

/// Changes a page of the record feed looks at, at most.
const FEED_SCAN: usize = 10_000;

/// What the feed found of one entry.
enum FeedItem {
    Member(MemberGql),
    Record(AnyRecord),
    Gone,
}

/// One page of the record feed.
#[derive(SimpleObject)]
pub struct RecordFeed {
    /// Records changed, oldest change first.
    entries: Vec<FeedEntry>,
    /// Where the next page starts: pass it as `after`. Keep it between pages and across
    /// days; a copy is up to date with this node once `hasMore` is false. Sealed: it does not
    /// count the node's other writes, and opens only at this node.
    cursor: String,
    /// An entry for the caller follows `cursor`, or the page stopped at its bound of
    /// changes looked at before it knew (its entries may then be fewer than `first`). Not
    /// set by changes the caller may not see: the feed does not tell of them.
    has_more: bool,
    /// The `after` given belongs to an earlier life of this node's store (its views were
    /// rebuilt, or it was restored from a backup) or is not this node's: this page starts
    /// the feed again from its beginning, and a copy should be made again from it (records
    /// it holds that are not listed by the time `hasMore` is false are gone).
    reset: bool,
}

/// A record changed at this node.
#[derive(SimpleObject)]
pub struct FeedEntry {
    /// The record's id (a member's `unit#record`, another record's `kind:unit#record`).
    id: ID,
    /// Its kind.
    kind: RecordKind,
    /// The unit whose record it is.
    unit: ID,
    /// The record was deleted, or the caller may not read it: drop it from a copy.
    deleted: bool,
    /// The member as it is now (kind `MEMBERS`, not deleted).
    member: Option<MemberGql>,
    /// The record as it is now (the other kinds, not deleted).
    record: Option<AnyRecord>,
}

/// A record of one of the kinds besides members.
#[derive(async_graphql::Union)]
pub enum AnyRecord {
    /// An activist or reserve cadre.
    Activist(ActivistGql),
    /// A cadre post.
    CadrePost(CadrePostGql),
    /// A meeting.
    Meeting(MeetingGql),
    /// An appraisal.
    Appraisal(AppraisalGql),
    /// A project.
    Project(ProjectGql),
    /// A collective asset.
    CollectiveAsset(CollectiveAssetGql),
    /// A public disclosure.
    Disclosure(DisclosureGql),
    /// A complaint.
    Complaint(ComplaintGql),
    /// A directive.
    Directive(DirectiveGql),
    /// A report.
    Report(ReportGql),
    /// A fund programme.
    FundProgramme(en::FundProgrammeGql),
    /// A disbursement.
    Disbursement(en::DisbursementGql),
}

impl AnyRecord {
    /// A record as its kind's GraphQL type (none for members and profiles).
    fn of(r: gs::Record) -> Option<AnyRecord> {
        Some(match r.id.kind {
            DocKind::Activists => AnyRecord::Activist(r.into()),
            DocKind::Posts => AnyRecord::CadrePost(r.into()),
            DocKind::Meetings => AnyRecord::Meeting(r.into()),
            DocKind::Appraisals => AnyRecord::Appraisal(r.into()),
            DocKind::Projects => AnyRecord::Project(r.into()),
            DocKind::Assets => AnyRecord::CollectiveAsset(r.into()),
            DocKind::Disclosures => AnyRecord::Disclosure(r.into()),
            DocKind::Complaints => AnyRecord::Complaint(r.into()),
            DocKind::Directives => AnyRecord::Directive(r.into()),
            DocKind::Reports => AnyRecord::Report(r.into()),
            DocKind::Funds => AnyRecord::FundProgramme(r.into()),
            DocKind::Disbursements => AnyRecord::Disbursement(r.into()),
            _ => return None,
        })
    }
}

/// A change to a unit's profile; omitted parts stay.
#[derive(InputObject)]
pub struct UpdateUnitInput {
    /// Display name. Naming a unit below that this node does not know yet registers it (a
    /// village without a node of its own, whose records the level above keeps).
    name: Option<String>,
    /// Organisations present (replaces the set).
    organisations: Option<Vec<OrganisationGql>>,
    /// Whether the unit has an activity place.
    activity_place: Option<bool>,
    /// Service functions offered (replaces the set).
    functions: Option<Vec<ServiceFunctionGql>>,
}

/// A new member.
#[derive(InputObject)]
pub struct CreateMemberInput {
    /// The unit whose register gets the member.
    unit: ID,
    /// Full name.
    name: String,
    /// Year of birth.
    birth_year: i64,
    /// Gender.
    gender: GenderGql,
    /// Highest education.
    education: EducationGql,
    /// Date joined, `YYYY-MM-DD`.
    joined_on: String,
    /// Probationary (default) or full.
    #[graphql(default_with = "MemberStatusGql::Probationary")]
    status: MemberStatusGql,
    /// Phone number (sensitive: read back only by the owning unit's clerks and above).
    phone: Option<String>,
    /// Personal identity number (sensitive, like `phone`).
    id_number: Option<String>,
    /// The categories the member is in (none when omitted or null).
    categories: Option<Vec<MemberCategoryGql>>,
}

/// Fields to change; omitted fields stay as they are and merge with concurrent edits.
/// `null` clears `phone` or `idNumber`; the other fields cannot be cleared.
#[derive(InputObject, Default)]
pub struct UpdateMemberInput {
    /// Full name.
    name: MaybeUndefined<String>,
    /// Year of birth.
    birth_year: MaybeUndefined<i64>,
    /// Gender.
    gender: MaybeUndefined<GenderGql>,
    /// Highest education.
    education: MaybeUndefined<EducationGql>,
    /// Date joined, `YYYY-MM-DD`.
    joined_on: MaybeUndefined<String>,
    /// Probationary or full.
    status: MaybeUndefined<MemberStatusGql>,
    /// Phone number.
    phone: MaybeUndefined<String>,
    /// Personal identity number.
    id_number: MaybeUndefined<String>,
    /// The categories the member is in from now on (the others are cleared); `null` or `[]`
    /// clears them all.
    categories: MaybeUndefined<Vec<MemberCategoryGql>>,
}

/// A required field of an update: omitted leaves it, `null` is refused.
fn required<T>(name: &str, v: MaybeUndefined<T>) -> Result<Option<T>> {
    match v {
        MaybeUndefined::Undefined => Ok(None),
        MaybeUndefined::Null => Err(error(
            Code::BadUserInput,
            format!("{name} is required and cannot be cleared"),
        )),
        MaybeUndefined::Value(v) => Ok(Some(v)),
    }
}

/// Revoke a child's certificate.
#[derive(InputObject)]
pub struct RevokeCertificateInput {
    /// The child unit whose certificate is revoked.
    unit: ID,
    /// SHA-256 fingerprint of the certificate (hex), as `grassroots pki issue` printed it or
    /// `unit { sync { link { certificateFingerprint } } }` shows it.
    fingerprint: String,
}

/// A user of this node: who a token was issued to.
#[derive(SimpleObject)]
pub struct UserEntry {
    /// The unit the token acts for.
    unit: ID,
    /// Its role there.
    role: RoleGql,
    /// Who it was issued to (`user-` and 8 hex digits for a token made without a name).
    name: String,
}

/// How a node's backups went.
#[derive(SimpleObject)]
pub struct BackupState {
    /// Where they are written, on the node's machine.
    folder: Option<String>,
    /// The newest (at start, the newest file found in the folder).
    last: Option<BackupFile>,
    /// The last failure since the node started, if no backup has worked since.
    last_error: Option<BackupError>,
    /// Until when this node takes back from its children changes made in its unit's name or
    /// above it, which it otherwise refuses from them as forgeries (set for 14 days by a
    /// restore, or by `grassroots store take-back` after a lost disk); null when it does not.
    take_back_until: Option<String>,
}

/// A backup file.
#[derive(SimpleObject)]
pub struct BackupFile {
    /// When it was written.
    at: String,
    /// Where.
    file: String,
    /// Its size.
    bytes: u64,
}

/// A backup that failed.
#[derive(SimpleObject)]
pub struct BackupError {
    /// When.
    at: String,
    /// Why.
    message: String,
}

/// A backup just written.
#[derive(SimpleObject)]
pub struct StoreBackup {
    /// The file, on the node's machine.
    file: String,
    /// Its size.
    bytes: u64,
    /// Documents it holds.
    documents: u64,
    /// Time taken to write it (ms).
    took_ms: u64,
}

/// A recorded revocation.
#[derive(SimpleObject)]
pub struct RevokeCertificatePayload {
    /// The child unit.
    unit: ID,
    /// The revoked fingerprint.
    fingerprint: String,
}

/// Check the caller may write records of `owner` here; returns who its writes are by.
pub(crate) fn authorise_write(ctx: &Context<'_>, b: &Backend, owner: &UnitId) -> Result<Writer> {
    let who = caller(ctx);
    let Caller::User { unit, role } = who else {
        return Err(error(Code::Unauthenticated, "writes need a token"));
    };
    if !can_write(who, owner) {
        return Err(error(
            Code::Forbidden,
            format!("your role and unit do not allow writing records of {owner}"),
        ));
    }
    if !owner.is_in_subtree_of(&b.node_unit) {
        return Err(error(
            Code::Forbidden,
            format!("this node ({}) does not hold {owner}", b.node_unit),
        ));
    }
    let user = ctx
        .data_opt::<UserName>()
        .map_or_else(|| "unknown".to_owned(), |u| u.0.clone());
    Ok(Writer {
        unit: unit.clone(),
        role: *role,
        user,
    })
}

/// Check the caller is a user of this node's own unit with at least `role`, for an
/// operation on the node itself (`what`, as in "only an admin of this node's unit may ...").
fn authorise_node_user(ctx: &Context<'_>, b: &Backend, role: gs::Role, what: &str) -> Result<()> {
    match caller(ctx) {
        Caller::Anonymous => Err(error(
            Code::Unauthenticated,
            format!("a token is needed to {what}"),
        )),
        Caller::User { unit, role: r } if *r >= role && *unit == b.node_unit => Ok(()),
        Caller::User { .. } => Err(error(
            Code::Forbidden,
            format!("only a user of this node's unit with the {role} role or above may {what}"),
        )),
    }
}

/// The unit whose users an operation manages (`unit`, or the caller's own), checked.
fn users_unit(ctx: &Context<'_>, b: &Backend, unit: Option<ID>) -> Result<UnitId> {
    let within = match (unit, caller(ctx)) {
        (Some(u), _) => parse_unit(&u)?,
        (None, Caller::User { unit, .. }) => unit.clone(),
        (None, Caller::Anonymous) => {
            return Err(error(Code::Unauthenticated, "managing users needs a token"));
        }
    };
    authorise_users(ctx, b, &within)?;
    Ok(within)
}

/// Check the caller may manage the users of `unit` here.
fn authorise_users(ctx: &Context<'_>, b: &Backend, unit: &UnitId) -> Result<()> {
    let who = caller(ctx);
    if matches!(who, Caller::Anonymous) {
        return Err(error(Code::Unauthenticated, "managing users needs a token"));
    }
    if !gs::can_manage_users(who, unit) {
        return Err(error(
            Code::Forbidden,
            format!("only an admin of {unit} or of a unit above it manages its users"),
        ));
    }
    if !unit.is_in_subtree_of(&b.node_unit) {
        return Err(error(
            Code::Forbidden,
            format!("this node ({}) does not serve {unit}", b.node_unit),
        ));
    }
    Ok(())
}

/// Refuse making a token here for a unit under a child that runs its own node: its users
/// are made there. (Listing and revoking such tokens, made before, stay allowed.)
fn refuse_own_node(b: &Backend, unit: &UnitId) -> Result<()> {
    match b.own_nodes.iter().find(|c| unit.is_in_subtree_of(c)) {
        Some(child) => Err(error(
            Code::Forbidden,
            format!("{child} runs its own node: tokens for {unit} are made there"),
        )),
        None => Ok(()),
    }
}

/// A new user's token.
#[derive(InputObject)]
pub struct CreateUserTokenInput {
    /// The unit the token acts for.
    unit: ID,
    /// What it allows there.
    role: RoleGql,
    /// Who it is for: named in the records they write (1-60 characters).
    name: String,
}

/// A token, shown once.
#[derive(SimpleObject)]
pub struct UserToken {
    /// The bearer token (`Authorization: Bearer ...`); not stored in clear.
    token: String,
    /// The unit it acts for.
    unit: ID,
    /// Its role.
    role: RoleGql,
    /// Its user.
    name: String,
}

/// Write operations. Each returns once the change is durable on this node.
#[derive(async_graphql::MergedObject, Default)]
pub struct Mutation(MutationCore, RecordMutations);

/// The writes besides those of records of a kind (merged into [`Mutation`]).
#[derive(Default)]
pub struct MutationCore;

#[Object]
impl MutationCore {
    /// Revoke a child's certificate: an admin of this node's unit, at this node, for one of
    /// its children. The revocation travels in this unit's profile to every descendant; the
    /// child's live link is dropped and its redials are refused.
    async fn revoke_certificate(
        &self,
        ctx: &Context<'_>,
        input: RevokeCertificateInput,
    ) -> Result<RevokeCertificatePayload> {
        let b = backend(ctx)?;
        let unit = parse_unit(&input.unit)?;
        authorise_node_user(
            ctx,
            b,
            gs::Role::Admin,
            "revoke its children's certificates",
        )?;
        let fingerprint = input.fingerprint.trim().to_lowercase();
        b.store
            .revoke(unit.clone(), fingerprint.clone())
            .await
            .map_err(from_write)?;
        Ok(RevokeCertificatePayload {
            unit: ID(unit.to_string()),
            fingerprint,
        })
    }

    /// Copy this node's whole store into a backup file in its backup folder (node.toml's
    /// `backup_dir`, or `backups/` in its data folder), consistent as of the moment it
    /// starts, while the node keeps working: an admin of this node's unit. One backup is
    /// written into a folder at a time (another is refused with `BACKUP_FAILED` meanwhile);
    /// the folder is then pruned to node.toml's `backups_kept`.
    async fn backup_store(&self, ctx: &Context<'_>) -> Result<StoreBackup> {
        let b = backend(ctx)?;
        authorise_node_user(ctx, b, gs::Role::Admin, "back up its store")?;
        let reader = b.reader.clone();
        let info =
            tokio::task::spawn_blocking(move || reader.backup(grassroots_node::status::now_ms()))
                .await
                .map_err(internal)?
                .map_err(|e| {
                    tracing::warn!("backup failed: {e}");
                    error(Code::BackupFailed, format!("backup failed: {e}"))
                })?;
        tracing::info!(file = %info.path.display(), bytes = info.bytes, "store backed up on request");
        Ok(StoreBackup {
            file: info.path.display().to_string(),
            bytes: info.bytes,
            documents: info.documents,
            took_ms: info.took_ms,
        })
    }

    /// Add a member to a unit's register: a clerk of that unit, or a supervisor above it.
    /// `requestId`, a key the client chooses (1 to 64 characters), makes a retry harmless:
    /// the same create repeated with it by the same user makes nothing more and answers the
    /// member the first made, as it is now (if it was removed since, it is made again).
    async fn create_member(
        &self,
        ctx: &Context<'_>,
        input: CreateMemberInput,
        request_id: Option<String>,
    ) -> Result<MemberGql> {
        let b = backend(ctx)?;
        let request = request_key(request_id.as_deref())?;
        let unit = parse_unit(&input.unit)?;
        let by = authorise_write(ctx, b, &unit)?;
        let member = gs::NewMember {
            name: input.name,
            birth_year: input.birth_year,
            gender: input.gender.into(),
            education: input.education.into(),
            joined_on: input.joined_on,
            status: input.status.into(),
            phone: input.phone,
            id_number: input.id_number,
            categories: input
                .categories
                .unwrap_or_default()
                .into_iter()
                .map(Into::into)
                .collect(),
        };
        b.store
            .create_member_by(unit, member, Some(by), request)
            .await
            .map(MemberGql)
            .map_err(from_write)
    }

    /// Remove a member from the register (left, moved away, died): the owning unit's
    /// clerk, or a supervisor above it. Returns the record as it was; the removal travels
    /// like any change.
    async fn delete_member(&self, ctx: &Context<'_>, id: ID) -> Result<MemberGql> {
        let b = backend(ctx)?;
        let id = parse_member(&id)?;
        authorise_write(ctx, b, &id.unit)?;
        b.store
            .delete_member(id)
            .await
            .map(MemberGql)
            .map_err(from_write)
    }

    /// Move a member to another unit's register (a member who moved from one village to
    /// another): for a caller who may write both registers (a township's supervisor moving
    /// a member between two of its villages). The member is made there with the same fields
    /// and a new id, and removed here, in one commit; returns the member as made. Made
    /// without its identity and phone numbers in a unit where the caller would read them
    /// when it cannot where the member is (its own unit, for a supervisor above): a move
    /// must not be a way to read them. The new unit enters them again.
    async fn transfer_member(&self, ctx: &Context<'_>, id: ID, to_unit: ID) -> Result<MemberGql> {
        let b = backend(ctx)?;
        let id = parse_member(&id)?;
        let to = parse_unit(&to_unit)?;
        authorise_write(ctx, b, &id.unit)?;
        let by = authorise_write(ctx, b, &to)?;
        let who = caller(ctx);
        let moved = if can_read_sensitive(who, &to) && !can_read_sensitive(who, &id.unit) {
            b.store
                .transfer_member_without_sensitive(id, to, Some(by))
                .await
        } else {
            b.store.transfer_member(id, to, Some(by)).await
        };
        moved.map(MemberGql).map_err(from_write)
    }

    /// Change a member's fields: the owning unit's clerk, or a supervisor above it (a
    /// township correcting a village's record).
    async fn update_member(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateMemberInput,
    ) -> Result<MemberGql> {
        let b = backend(ctx)?;
        let id = parse_member(&id)?;
        let by = authorise_write(ctx, b, &id.unit)?;
        // A caller who reads these as null (they are not for it) would otherwise clear them
        // by sending back the form it read.
        let names_sensitive = !input.phone.is_undefined() || !input.id_number.is_undefined();
        if names_sensitive && !can_read_sensitive(caller(ctx), &id.unit) {
            return Err(error(
                Code::Forbidden,
                format!(
                    "phone and idNumber of {}'s members are changed by its clerks and above, \
                     who read them: leave them out",
                    id.unit
                ),
            ));
        }
        let patch = gs::MemberPatch {
            name: required("name", input.name)?,
            birth_year: required("birthYear", input.birth_year)?,
            gender: required("gender", input.gender)?.map(Into::into),
            education: required("education", input.education)?.map(Into::into),
            joined_on: required("joinedOn", input.joined_on)?,
            status: required("status", input.status)?.map(Into::into),
            // Omitted leaves a field (`None`), `null` clears it (`Some(None)`).
            phone: input.phone.into(),
            id_number: input.id_number.into(),
            categories: match input.categories {
                MaybeUndefined::Undefined => None,
                MaybeUndefined::Null => Some(Vec::new()),
                MaybeUndefined::Value(c) => Some(c.into_iter().map(Into::into).collect()),
            },
        };
        b.store
            .update_member_by(id, patch, Some(by))
            .await
            .map(MemberGql)
            .map_err(from_write)
    }

    /// Create a token for a user of a unit: an admin of that unit or of one above it (held
    /// by this node). The token is shown once, here; it is stored hashed.
    async fn create_user_token(
        &self,
        ctx: &Context<'_>,
        input: CreateUserTokenInput,
    ) -> Result<UserToken> {
        let b = backend(ctx)?;
        let unit = parse_unit(&input.unit)?;
        authorise_users(ctx, b, &unit)?;
        refuse_own_node(b, &unit)?;
        let name = input.name.trim().to_owned();
        let token = grassroots_node::auth::new_token().map_err(internal)?;
        b.store
            .add_named_user(
                grassroots_node::auth::token_hash(&token),
                unit.clone(),
                input.role.into(),
                Some(name.clone()),
            )
            .await
            .map_err(|e| match e {
                grassroots_node::StoreError::Invalid(r) => error(Code::BadUserInput, r.to_string()),
                other => from_store(other),
            })?;
        Ok(UserToken {
            token,
            unit: ID(unit.to_string()),
            role: input.role,
            name,
        })
    }

    /// Revoke every token of a user bound to `unit` (default: the caller's unit) or a unit
    /// below it: an admin there or above. Returns how many were revoked; they stop working
    /// at once.
    async fn revoke_user_tokens(
        &self,
        ctx: &Context<'_>,
        name: String,
        unit: Option<ID>,
    ) -> Result<i64> {
        let b = backend(ctx)?;
        let within = users_unit(ctx, b, unit)?;
        let n = b
            .store
            .remove_users(name.trim().to_owned(), within)
            .await
            .map_err(from_store)?;
        Ok(n as i64)
    }

    /// Set a unit's name, organisations and activity place: a clerk of the unit, or a
    /// supervisor above it (who can also register a unit below that has no node).
    async fn update_unit(&self, ctx: &Context<'_>, id: ID, input: UpdateUnitInput) -> Result<Unit> {
        let b = backend(ctx)?;
        let unit = parse_unit(&id)?;
        authorise_write(ctx, b, &unit)?;
        let details = gs::UnitDetails {
            name: input.name,
            organisations: input
                .organisations
                .map(|o| o.into_iter().map(Into::into).collect()),
            activity_place: input.activity_place,
            functions: input
                .functions
                .map(|f| f.into_iter().map(Into::into).collect()),
        };
        let profile = b
            .store
            .set_unit_details(unit.clone(), details)
            .await
            .map_err(from_write)?;
        Ok(Unit::new(unit, Some(profile), None))
    }
}

/// Create and update of every record kind, generated from the table below: one rule path
/// (`entities::create`, `entities::update`) for all. Merged into [`Mutation`].
macro_rules! record_mutations {
    ($( $what:literal by $who:literal: $gql:ident, $create:ident($cin:ident), $update:ident($uin:ident) $(, $delete:ident)?; )+) => {
        /// The record writes (their fields are `Mutation`'s).
        #[derive(Default)]
        pub struct RecordMutations;

        #[Object]
        impl RecordMutations {
            $(
                #[doc = concat!("Add ", $what, ": ", $who, " (fields only supervisors write need a supervisor). `requestId` makes a retry harmless, as for `createMember`.")]
                async fn $create(&self, ctx: &Context<'_>, input: en::$cin, request_id: Option<String>) -> Result<en::$gql> {
                    en::$gql::create(ctx, input, request_id.as_deref()).await
                }

                #[doc = concat!("Change fields of ", $what, " (same rule as creating one).")]
                async fn $update(&self, ctx: &Context<'_>, id: ID, input: en::$uin) -> Result<en::$gql> {
                    en::$gql::update(ctx, &id, input).await
                }

                $(
                    #[doc = concat!("Remove ", $what, " (same rule as writing every field of it, supervisory ones included, judged against it as it is); returns it as it was. The removal travels like any change.")]
                    async fn $delete(&self, ctx: &Context<'_>, id: ID) -> Result<en::$gql> {
                        en::$gql::delete(ctx, &id).await
                    }
                )?
            )+
        }
    };
}

// Complaints, reports and appraisals are not removed: they are what the levels above hold a
// unit to account by, and a removal concurrent with a decision above (an escalation, a
// review, an appraisal made one rated from above) would be refused at the hop that holds the
// decision, holding the document back there.
record_mutations! {
    "an activist, applicant or reserve cadre" by "a clerk of the unit, or a supervisor above it": ActivistGql, create_activist(CreateActivistInput), update_activist(UpdateActivistInput), delete_activist;
    "a cadre post" by "a clerk of the unit, or a supervisor above it": CadrePostGql, create_cadre_post(CreateCadrePostInput), update_cadre_post(UpdateCadrePostInput), delete_cadre_post;
    "a meeting, activity or training" by "a clerk of the unit, or a supervisor above it": MeetingGql, create_meeting(CreateMeetingInput), update_meeting(UpdateMeetingInput), delete_meeting;
    "an appraisal" by "a clerk of the unit, or a supervisor above it": AppraisalGql, create_appraisal(CreateAppraisalInput), update_appraisal(UpdateAppraisalInput);
    "a project" by "a clerk of the unit, or a supervisor above it": ProjectGql, create_project(CreateProjectInput), update_project(UpdateProjectInput), delete_project;
    "a collective asset" by "a clerk of the unit, or a supervisor above it": CollectiveAssetGql, create_collective_asset(CreateCollectiveAssetInput), update_collective_asset(UpdateCollectiveAssetInput), delete_collective_asset;
    "a public disclosure" by "a clerk of the unit, or a supervisor above it": DisclosureGql, create_disclosure(CreateDisclosureInput), update_disclosure(UpdateDisclosureInput), delete_disclosure;
    "a complaint" by "a clerk of the unit, or a supervisor above it": ComplaintGql, create_complaint(CreateComplaintInput), update_complaint(UpdateComplaintInput);
    "a directive" by "a supervisor or admin of the unit or above it (it acts on the subtree; not a clerk)": DirectiveGql, create_directive(CreateDirectiveInput), update_directive(UpdateDirectiveInput), delete_directive;
    "a report" by "a clerk of the unit, or a supervisor above it": ReportGql, create_report(CreateReportInput), update_report(UpdateReportInput);
    "a fund programme" by "a supervisor or admin of the unit or above it (it acts on the subtree; not a clerk)": FundProgrammeGql, create_fund_programme(CreateFundProgrammeInput), update_fund_programme(UpdateFundProgrammeInput), delete_fund_programme;
    "a disbursement" by "a clerk of the unit, or a supervisor above it": DisbursementGql, create_disbursement(CreateDisbursementInput), update_disbursement(UpdateDisbursementInput), delete_disbursement;
}
