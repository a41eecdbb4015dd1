//! The GraphQL schema: types, queries, mutations. Every read and write decision calls the
//! rules in `grassroots_schema`; nothing here decides visibility on its own.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{
    Context, Enum, ID, InputObject, Object, Result, Schema, SimpleObject, Subscription,
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

use crate::error::{Code, error, from_write, internal};

/// Largest page a list returns.
pub const MAX_PAGE: i32 = 100;
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
}

/// The schema type served at `/graphql`.
pub type GatewaySchema = Schema<Query, Mutation, SubscriptionRoot>;

/// Build the schema with its limits, introspection on.
pub fn build_schema(backend: Backend) -> GatewaySchema {
    build_schema_with(backend, true)
}

/// Build the schema with its limits; without `introspection`, `__schema` and `__type`
/// answer nothing over any transport (HTTP also refuses them with a code).
pub fn build_schema_with(backend: Backend, introspection: bool) -> GatewaySchema {
    let builder = Schema::build(Query, Mutation, SubscriptionRoot);
    let builder = if introspection {
        builder
    } else {
        builder.disable_introspection()
    };
    builder
        .data(backend)
        .limit_depth(16)
        .limit_complexity(10_000)
        .limit_recursive_depth(32)
        .disable_suggestions()
        .finish()
}

fn caller<'a>(ctx: &'a Context<'_>) -> &'a Caller {
    ctx.data_opt::<Caller>().unwrap_or(&Caller::Anonymous)
}

fn backend<'a>(ctx: &'a Context<'_>) -> Result<&'a Backend> {
    ctx.data::<Backend>()
        .map_err(|_| internal("backend missing from schema data"))
}

fn parse_unit(id: &ID) -> Result<UnitId> {
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

/// RFC 3339 UTC time of a millisecond Unix timestamp.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
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
    /// When it last came up.
    since: String,
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
    /// Messages from this peer refused since the node started.
    rejected: u64,
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

/// How long without news before a unit's figures are called stale.
const STALE_AFTER_MS: u64 = 24 * 3600 * 1000;

/// An administrative unit (city, county, township or village). Unit profiles are public.
pub struct Unit {
    id: UnitId,
    profile: Option<gs::UnitProfile>,
    /// The roll-up, when the parent's `children` read its children's in one batch.
    rollup: Option<Arc<gs::Rollup>>,
}

impl Unit {
    fn load(b: &Backend, id: UnitId) -> Result<Option<Unit>> {
        let profile = b.reader.unit(&id).map_err(internal)?;
        Ok(profile.map(|p| Unit {
            id,
            profile: Some(p),
            rollup: None,
        }))
    }

    fn known(b: &Backend, id: UnitId) -> Result<Unit> {
        let profile = b.reader.unit(&id).map_err(internal)?;
        Ok(Unit {
            id,
            profile,
            rollup: None,
        })
    }
}

/// Member figures over a unit's whole subtree, from the roll-up view (one row, however
/// large the subtree): never computed by scanning records.
#[derive(SimpleObject)]
pub struct Indicators {
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
}

/// A count of members with one education level.
#[derive(SimpleObject)]
pub struct EducationCount {
    /// Highest education completed.
    education: EducationGql,
    /// Members.
    count: i64,
}

fn share(part: i64, whole: i64) -> f64 {
    if whole <= 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl Indicators {
    fn from_rollup(r: &gs::Rollup, year: i64) -> Indicators {
        let count =
            |m: &std::collections::BTreeMap<String, i64>, k: &str| m.get(k).copied().unwrap_or(0);
        let higher = r.higher_education();
        Indicators {
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
        }
    }
}

/// The current calendar year (UTC).
/// What a change notification names.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum RecordKind {
    /// A unit's member register.
    Members,
    /// A unit's profile (name, children, revoked certificates).
    Profile,
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
    /// slowly; when not 0, re-query everything shown.
    missed: i64,
}

/// Live notifications (WebSocket at `/graphql/ws`, `graphql-transport-ws` or `graphql-ws`).
pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// Changes stored on this node (made here or received from a peer) to records of
    /// `unit`'s subtree (default: this node's unit) that the caller may read. A notification
    /// says what changed, not the new values: re-query what you show.
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
        let rx = b.store.subscribe();
        Ok(futures_util::stream::unfold(
            (rx, root, who),
            |(mut rx, root, who)| async move {
                let mut missed = 0i64;
                loop {
                    match rx.recv().await {
                        Ok(c) => {
                            let kind = match c.doc.kind {
                                DocKind::Members => RecordKind::Members,
                                DocKind::Profile => RecordKind::Profile,
                                _ => continue,
                            };
                            let meta = DocMeta::new(c.doc.clone());
                            if !c.doc.owner.is_in_subtree_of(&root) || !can_read(&who, &meta) {
                                continue;
                            }
                            let change = Change {
                                unit: ID(c.doc.owner.to_string()),
                                kind,
                                at: rfc3339(c.at_ms),
                                missed,
                            };
                            return Some((change, (rx, root, who)));
                        }
                        Err(RecvError::Lagged(n)) => {
                            missed = missed.saturating_add(i64::try_from(n).unwrap_or(i64::MAX));
                        }
                        Err(RecvError::Closed) => return None,
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

/// A target the seed sets.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum TargetKind {
    /// At least 1 new member a year per village who is under 35 with higher education.
    NewYoungHigherEducatedMember,
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
    /// Villages checked: every village of the subtree this node knows.
    villages: i64,
    /// True when every village checked meets it (false when there is none to check).
    met: bool,
    /// Villages that miss it.
    missing_count: i64,
    #[graphql(skip)]
    missing_ids: Vec<UnitId>,
}

#[async_graphql::ComplexObject]
impl Target {
    /// Villages that miss the target, in id order (so grouped by township and county; each
    /// has its `parent`). At most 100 a page.
    #[graphql(
        complexity = "first.unwrap_or(DEFAULT_PAGE).clamp(0, MAX_PAGE) as usize * child_complexity + 1"
    )]
    async fn missing(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size, at most 100 (default 20).")] first: Option<i32>,
        #[graphql(desc = "Id of the last village of the previous page.")] after: Option<ID>,
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
            out.push(Unit {
                id: id.clone(),
                profile,
                rollup: None,
            });
        }
        Ok(out)
    }
}

fn this_year() -> i64 {
    rfc3339(grassroots_node::status::now_ms())
        .get(..4)
        .and_then(|y| y.parse().ok())
        .unwrap_or(1970)
}

/// Extra fields of a connection.
#[derive(SimpleObject)]
pub struct ConnectionTotal {
    /// Items in the whole list, all pages.
    total_count: usize,
}

/// A page of members.
pub type MemberConnection = Connection<String, MemberGql, ConnectionTotal, EmptyFields>;

fn encode_cursor(c: &MemberCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", c.tree_key, c.record))
}

fn decode_cursor(s: &str) -> Result<MemberCursor> {
    let bad = || error(Code::BadUserInput, "invalid cursor");
    let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (tree_key, record) = text.split_once('|').ok_or_else(bad)?;
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
}

fn page_size(first: Option<i32>) -> Result<usize> {
    match first.unwrap_or(DEFAULT_PAGE) {
        n if (0..=MAX_PAGE).contains(&n) => Ok(n as usize),
        n => Err(error(
            Code::BadUserInput,
            format!("first must be between 0 and {MAX_PAGE}, got {n}"),
        )),
    }
}

#[Object]
impl Unit {
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

    /// The unit above; null at the root or when not known here.
    async fn parent(&self, ctx: &Context<'_>) -> Result<Option<Unit>> {
        match self.id.parent() {
            Some(p) => Unit::load(backend(ctx)?, p),
            None => Ok(None),
        }
    }

    /// The units directly below that this node knows.
    async fn children(&self, ctx: &Context<'_>) -> Result<Vec<Unit>> {
        let b = backend(ctx)?;
        let profiles = b.reader.children(&self.id).map_err(internal)?;
        // A tree query asking every child's figures reads their roll-ups in one batch
        // (one read transaction) rather than one lookup per child.
        let mut rollups = if ctx.look_ahead().field("indicators").exists() {
            let ids: Vec<UnitId> = profiles.iter().map(|p| p.id.clone()).collect();
            b.reader.rollups(&ids).map_err(internal)?
        } else {
            HashMap::new()
        };
        Ok(profiles
            .into_iter()
            .map(|p| Unit {
                id: p.id.clone(),
                rollup: rollups.remove(&p.id),
                profile: Some(p),
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
        let link = status
            .links
            .into_iter()
            .find(|l| l.peer == self.id)
            .map(|l| LinkState {
                connected: l.connected,
                certificate_fingerprint: l.fingerprint,
                since: rfc3339(l.since_ms),
                last_frame_at: (l.last_frame_ms > 0).then(|| rfc3339(l.last_frame_ms)),
                bytes_in: l.bytes_in,
                bytes_out: l.bytes_out,
                docs_in_flight: l.docs_in_flight,
                docs_queued: l.docs_queued,
                rejected: l.rejected,
            });
        let now = grassroots_node::status::now_ms();
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
        let doc = DocMeta::new(DocId::new(DocKind::Members, self.id.clone()));
        if !can_read(caller(ctx), &doc) {
            return Ok(None);
        }
        let year = parse_year(year)?;
        let rollup = match &self.rollup {
            Some(r) => r.clone(),
            None => b.reader.rollup(&self.id).map_err(internal)?,
        };
        Ok(Some(Indicators::from_rollup(&rollup, year)))
    }

    /// The seed's targets that member figures decide, each met or missed by this unit's
    /// subtree, with the villages that miss it. Same visibility as `indicators`. (The
    /// targets on activists, organisations, meetings and appraisals come with those
    /// records.)
    async fn targets(&self, ctx: &Context<'_>, year: Option<i32>) -> Result<Option<Vec<Target>>> {
        let b = backend(ctx)?;
        let doc = DocMeta::new(DocId::new(DocKind::Members, self.id.clone()));
        if !can_read(caller(ctx), &doc) {
            return Ok(None);
        }
        let year = parse_year(year)?;
        let villages = b.reader.villages(&self.id).map_err(internal)?;
        let missing: Vec<UnitId> = villages
            .iter()
            .filter(|(_, r)| r.new_young_higher(year) < 1)
            .map(|(v, _)| v.clone())
            .collect();
        Ok(Some(vec![Target {
            target: TargetKind::NewYoungHigherEducatedMember,
            description: "Each village develops at least 1 new member a year who is under 35 \
                          with higher education."
                .into(),
            year,
            villages: villages.len() as i64,
            met: missing.is_empty() && !villages.is_empty(),
            missing_count: missing.len() as i64,
            missing_ids: missing,
        }]))
    }

    /// Party members of this unit (or of its whole subtree with `subtree: true`), in
    /// (unit, record) order. Needs a token whose unit is this unit or above it.
    #[graphql(
        complexity = "first.unwrap_or(DEFAULT_PAGE).clamp(0, MAX_PAGE) as usize * child_complexity + 1"
    )]
    async fn members(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size, at most 100 (default 20).")] first: Option<i32>,
        #[graphql(desc = "Cursor of the last item of the previous page.")] after: Option<String>,
        #[graphql(default = false, desc = "Include every unit below this one.")] subtree: bool,
        #[graphql(desc = "Only members with this status (`totalCount` counts those too).")]
        status: Option<MemberStatusGql>,
    ) -> Result<MemberConnection> {
        let b = backend(ctx)?;
        let who = caller(ctx);
        let doc = DocMeta::new(DocId::new(DocKind::Members, self.id.clone()));
        if !can_read(who, &doc) {
            return Err(match who {
                Caller::Anonymous => error(
                    Code::Unauthenticated,
                    "members are not public: send a token",
                ),
                Caller::User { .. } => error(
                    Code::Forbidden,
                    format!("members of {} are outside your unit's subtree", self.id),
                ),
            });
        }
        let first = page_size(first)?;
        let after = after.as_deref().map(decode_cursor).transpose()?;
        let page = b
            .reader
            .members_with(
                &self.id,
                subtree,
                status.map(Into::into),
                after.as_ref(),
                first,
            )
            .map_err(internal)?;
        let mut conn = Connection::with_additional_fields(
            after.is_some(),
            page.has_next,
            ConnectionTotal {
                total_count: page.total,
            },
        );
        conn.edges.extend(
            page.items
                .into_iter()
                .map(|(c, m)| Edge::new(encode_cursor(&c), MemberGql(m))),
        );
        Ok(conn)
    }
}

/// A party member.
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
        Unit::known(backend(ctx)?, self.0.id.unit.clone())
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
        self.0.created.clone().map(StampGql)
    }
    /// Who last updated the record and when; null if never updated through the gateway.
    async fn changed(&self) -> Option<StampGql> {
        self.0.changed.clone().map(StampGql)
    }
}

/// Who wrote a record and when. Written into the record, so every level sees the same.
pub struct StampGql(gs::Stamp);

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

    /// The unit this node serves.
    async fn node_unit(&self, ctx: &Context<'_>) -> Result<Unit> {
        let b = backend(ctx)?;
        Unit::known(b, b.node_unit.clone())
    }

    /// A unit by id; null when this node does not know it.
    async fn unit(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Unit>> {
        Unit::load(backend(ctx)?, parse_unit(&id)?)
    }

    /// A member by id; null when not held here or not visible to the caller.
    async fn member(&self, ctx: &Context<'_>, id: ID) -> Result<Option<MemberGql>> {
        let id: MemberId = id
            .parse()
            .map_err(|e| error(Code::BadUserInput, format!("member id: {e}")))?;
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
}

/// Fields to change; omitted fields stay as they are and merge with concurrent edits.
#[derive(InputObject, Default)]
pub struct UpdateMemberInput {
    /// Full name.
    name: Option<String>,
    /// Year of birth.
    birth_year: Option<i64>,
    /// Gender.
    gender: Option<GenderGql>,
    /// Highest education.
    education: Option<EducationGql>,
    /// Date joined, `YYYY-MM-DD`.
    joined_on: Option<String>,
    /// Probationary or full.
    status: Option<MemberStatusGql>,
    /// Phone number.
    phone: Option<String>,
    /// Personal identity number.
    id_number: Option<String>,
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

/// A recorded revocation.
#[derive(SimpleObject)]
pub struct RevokeCertificatePayload {
    /// The child unit.
    unit: ID,
    /// The revoked fingerprint.
    fingerprint: String,
}

/// Check the caller may write records of `owner` here; returns who its writes are by.
fn authorise_write(ctx: &Context<'_>, b: &Backend, owner: &UnitId) -> Result<Writer> {
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
    Ok((unit.clone(), *role))
}

/// Write operations. Each returns once the change is durable on this node.
pub struct Mutation;

#[Object]
impl Mutation {
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
        match caller(ctx) {
            Caller::Anonymous => {
                return Err(error(Code::Unauthenticated, "revocation needs a token"));
            }
            Caller::User { unit: u, role } if *role == gs::Role::Admin && *u == b.node_unit => {}
            Caller::User { .. } => {
                return Err(error(
                    Code::Forbidden,
                    "only an admin of this node's unit may revoke its children's certificates",
                ));
            }
        }
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

    /// Add a member to a unit's register: a clerk of that unit, or a supervisor above it.
    async fn create_member(
        &self,
        ctx: &Context<'_>,
        input: CreateMemberInput,
    ) -> Result<MemberGql> {
        let b = backend(ctx)?;
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
        };
        b.store
            .create_member_by(unit, member, Some(by))
            .await
            .map(MemberGql)
            .map_err(from_write)
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
        let id: MemberId = id
            .parse()
            .map_err(|e| error(Code::BadUserInput, format!("member id: {e}")))?;
        let by = authorise_write(ctx, b, &id.unit)?;
        let patch = gs::MemberPatch {
            name: input.name,
            birth_year: input.birth_year,
            gender: input.gender.map(Into::into),
            education: input.education.map(Into::into),
            joined_on: input.joined_on,
            status: input.status.map(Into::into),
            phone: input.phone,
            id_number: input.id_number,
        };
        b.store
            .update_member_by(id, patch, Some(by))
            .await
            .map(MemberGql)
            .map_err(from_write)
    }
}
