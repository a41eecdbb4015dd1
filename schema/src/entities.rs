//! Every record kind besides members and unit profiles, described by data: the fields of each
//! kind with their types, which are required, which are sensitive and which only a
//! supervisor writes. One generic path stores, validates, views and rolls up all of them; the
//! gateway gives each kind its own typed GraphQL object over the same description.
//!
//! A record is a map of scalar fields (text, integer, boolean), so concurrent edits of
//! different fields merge, as they do for members.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{DocKind, MemberId, RecordRef, UnitId};
use crate::level::Level;
use crate::records::{Education, RecordError, Stamp, validate_date};

string_enum!(
    /// Where someone stands in the talent pipeline.
    TalentStage {
        Applicant = "applicant",
        Activist = "activist",
        /// An activist chosen for development into a member.
        DevelopmentTarget = "development_target",
        /// A reserve cadre: a successor for a village post.
        ReserveCadre = "reserve_cadre",
    }
);

string_enum!(
    /// The background the seed looks for in activists and reserve cadres.
    TalentBackground {
        ReturningMigrant = "returning_migrant",
        CollegeGraduate = "college_graduate",
        Veteran = "veteran",
        CooperativeHead = "cooperative_head",
        RichExpert = "rich_expert",
        Other = "other",
    }
);

string_enum!(
    /// A village cadre post.
    PostKind {
        Secretary = "secretary",
        /// Director of the villagers' committee.
        Director = "director",
        DeputySecretary = "deputy_secretary",
        CommitteeMember = "committee_member",
        Other = "other",
    }
);

string_enum!(
    /// How a cadre was selected.
    Selection {
        DirectElection = "direct_election",
        /// "Two pushes, one choice".
        TwoPushesOneChoice = "two_pushes_one_choice",
        OpenSelection = "open_selection",
        Appointment = "appointment",
    }
);

string_enum!(
    /// A meeting or activity. The first four are the routine "three sessions and one lesson".
    MeetingKind {
        BranchGeneralMeeting = "branch_general_meeting",
        BranchCommitteeMeeting = "branch_committee_meeting",
        GroupMeeting = "group_meeting",
        PartyLecture = "party_lecture",
        ThemeActivity = "theme_activity",
        HeartToHeartTalk = "heart_to_heart_talk",
        Training = "training",
        /// A committee studying rural organisation work (the seed: the city once a year,
        /// counties and townships twice).
        StudySession = "study_session",
    }
);

impl MeetingKind {
    /// The routine "three sessions and one lesson".
    pub const ROUTINE: [MeetingKind; 4] = [
        MeetingKind::BranchGeneralMeeting,
        MeetingKind::BranchCommitteeMeeting,
        MeetingKind::GroupMeeting,
        MeetingKind::PartyLecture,
    ];
}

string_enum!(
    /// How a training was given.
    TrainingMode {
        DistanceEducation = "distance_education",
        RotationTraining = "rotation_training",
        OnSite = "on_site",
    }
);

string_enum!(
    /// What an appraisal is.
    AppraisalKind {
        /// The annual democratic appraisal of members.
        DemocraticAppraisal = "democratic_appraisal",
        /// Performance appraisal of a cadre by the level above.
        CadrePerformance = "cadre_performance",
        VillagersQuestioning = "villagers_questioning",
        /// A secretary reporting to the level above.
        Debriefing = "debriefing",
    }
);

/// Whether an appraisal of `kind` is rated by the level above its unit: a cadre's
/// performance appraisal, a secretary's debriefing (DOMAIN.md: "performance appraisal of
/// cadres by the level above"; "a secretary reports to the level above").
pub fn rated_above(kind: &str) -> bool {
    kind == AppraisalKind::CadrePerformance.as_str() || kind == AppraisalKind::Debriefing.as_str()
}

string_enum!(
    /// The result of an appraisal (supervisory).
    AppraisalResult {
        Excellent = "excellent",
        Competent = "competent",
        BasicallyCompetent = "basically_competent",
        Incompetent = "incompetent",
    }
);

string_enum!(
    /// What followed an appraisal (supervisory).
    AppraisalOutcome {
        NoAction = "no_action",
        Adjustment = "adjustment",
        Recall = "recall",
    }
);

string_enum!(
    /// Kind of project.
    ProjectCategory {
        Agriculture = "agriculture",
        Infrastructure = "infrastructure",
        Industry = "industry",
        Environment = "environment",
        Other = "other",
    }
);

string_enum!(
    /// Where a project stands.
    ProjectStatus {
        Planned = "planned",
        InProgress = "in_progress",
        Completed = "completed",
        Suspended = "suspended",
    }
);

string_enum!(
    /// The "three capitals".
    AssetCategory { Funds = "funds", Assets = "assets", Resources = "resources" }
);

string_enum!(
    /// Categories of public disclosure, as the seed's city publishes them.
    DisclosureCategory {
        Funds = "funds",
        AgricultureProjects = "agriculture_projects",
        ThreeCapitals = "three_capitals",
        VillageActivities = "village_activities",
        PartyAffairs = "party_affairs",
        CadreResponsibility = "cadre_responsibility",
    }
);

string_enum!(
    /// The sensitive items the seed says must be disclosed truthfully.
    SensitiveItem {
        CollectiveIncome = "collective_income",
        Debt = "debt",
        Investment = "investment",
        CadrePay = "cadre_pay",
        Hospitality = "hospitality",
    }
);

string_enum!(
    /// Where a complaint stands (set by the handling unit).
    ComplaintStatus {
        Open = "open",
        /// Passed to a higher level to handle.
        Escalated = "escalated",
        /// Answered with feedback.
        Handled = "handled",
        Closed = "closed",
    }
);

impl ComplaintStatus {
    /// Whether the complaint still waits for handling.
    pub fn is_open(self) -> bool {
        matches!(self, ComplaintStatus::Open | ComplaintStatus::Escalated)
    }
}

string_enum!(
    /// What a report is.
    ReportKind {
        QuarterlyAnalysis = "quarterly_analysis",
        HalfYearSelfExamination = "half_year_self_examination",
        AnnualAssessment = "annual_assessment",
        Debriefing = "debriefing",
        /// The report-back a directive asks for; names the directive.
        ReportBack = "report_back",
    }
);

string_enum!(
    /// The level above's review of a report (supervisory).
    ReportReview { Accepted = "accepted", Returned = "returned" }
);

string_enum!(
    /// Organisations of the "1 + X" model a village may have.
    Organisation {
        PartyBranch = "party_branch",
        VillagersCommittee = "villagers_committee",
        CollectiveEconomic = "collective_economic",
        FarmersCooperative = "farmers_cooperative",
    }
);

string_enum!(
    /// Service functions of an activity place.
    ServiceFunction {
        ActivityCentre = "activity_centre",
        Deliberation = "deliberation",
        ConvenienceService = "convenience_service",
        EducationTraining = "education_training",
        Culture = "culture",
    }
);

string_enum!(
    /// How a disbursement reached its recipient. The seed wants money paid point to point;
    /// payment in kind is one of the failures to catch.
    DisbursementMethod {
        BankTransfer = "bank_transfer",
        Cash = "cash",
        InKind = "in_kind",
    }
);

string_enum!(
    /// Where a disbursement stands.
    DisbursementStatus {
        Planned = "planned",
        Paid = "paid",
        Delayed = "delayed",
        Returned = "returned",
    }
);

/// Levels a directive can be addressed to.
const ADDRESSABLE: &[&str] = &["county", "township", "village"];

/// A field's value. Stored in automerge as the matching scalar and in the views as JSON (a
/// JSON boolean, integer, string or null).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// Text (also dates, enum storage names, unit ids and record references).
    Text(String),
    /// In an update only: clear this optional field. Never stored: a cleared field is
    /// absent from the record.
    Null,
}

/// Read by the JSON type it finds, as `#[serde(untagged)]` would read it, but without trying
/// each variant in turn: that made (and formatted) an error for every variant tried before
/// the right one, most of the cost of reading a record row (a text field tried as a boolean
/// and as an integer first).
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl serde::de::Visitor<'_> for ValueVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a boolean, an integer, a string or null")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Text(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Text(v))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

impl Value {
    /// The text, if this is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// A record's fields by storage name.
pub type Fields = BTreeMap<String, Value>;

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Text of 1 to `max` characters (trimmed).
    Text {
        /// Most characters.
        max: usize,
    },
    /// An integer in a range.
    Int {
        /// Least value.
        min: i64,
        /// Greatest value.
        max: i64,
    },
    /// `YYYY-MM-DD`.
    Date,
    /// One of these storage names.
    Choice(&'static [&'static str]),
    /// True or false.
    Bool,
    /// A unit id: the record's own unit or one of its ancestors (who handles it).
    UnitUp,
    /// A record of `kind` owned by a unit above the record's unit (or by the record's unit
    /// too, unless `strict`), written `unit#record`.
    UpRef {
        /// The kind referred to.
        kind: DocKind,
        /// Whether the referred record must be owned strictly above.
        strict: bool,
    },
    /// A personal identity number (the members' rule).
    IdNumber,
    /// A period: `YYYY`, `YYYYHn`, `YYYYQn`, `YYYY-MM` or `YYYY-MM-DD`.
    Period,
    /// A phone number (the members' rule).
    Phone,
}

/// Who may read or write a field beyond the record itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Whoever reads or writes the record.
    Plain,
    /// Read only by the owning unit's clerks and above, and the handling unit's.
    Sensitive,
    /// Written only by supervisors of the owning unit or above (for a complaint, of the unit
    /// handling it or above): results and handling.
    Supervisory,
    /// Written only by supervisors of a unit above the owning one: reviews of what the unit
    /// submitted.
    Review,
}

/// One field of a record kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// Storage and GraphQL name (camelCase).
    pub name: &'static str,
    /// What it holds.
    pub ty: FieldType,
    /// Whether a new record must have it.
    pub required: bool,
    /// Who may read or write it.
    pub access: Access,
}

/// A record kind: its document kind, its GraphQL type name and its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntitySpec {
    /// The document kind holding its records (one document per unit).
    pub kind: DocKind,
    /// GraphQL type name.
    pub type_name: &'static str,
    /// Every field.
    pub fields: &'static [FieldSpec],
    /// The field the `period` filter looks at.
    pub period_field: &'static str,
}

const fn f(name: &'static str, ty: FieldType, required: bool, access: Access) -> FieldSpec {
    FieldSpec {
        name,
        ty,
        required,
        access,
    }
}

/// The longest name-like text (one line).
pub const NAME_MAX: usize = 100;
const NAME: FieldType = FieldType::Text { max: NAME_MAX };
const NOTE: FieldType = FieldType::Text { max: 2_000 };
const BODY: FieldType = FieldType::Text { max: 20_000 };
const YEAR: FieldType = FieldType::Int {
    min: 1900,
    max: 2200,
};
const COUNT: FieldType = FieldType::Int {
    min: 0,
    max: 1_000_000,
};
const MONEY: FieldType = FieldType::Int {
    min: 0,
    max: 1_000_000_000_000,
};
use Access::{Plain, Review, Sensitive, Supervisory};
use FieldType::{Bool, Choice, Date, IdNumber, Phone, UnitUp, UpRef};

/// Every record kind but members and profiles.
pub const ENTITIES: &[EntitySpec] = &[
    EntitySpec {
        kind: DocKind::Activists,
        type_name: "Activist",
        period_field: "since",
        fields: &[
            f("name", NAME, true, Plain),
            f("stage", Choice(TalentStage::NAMES), true, Plain),
            f("background", Choice(TalentBackground::NAMES), false, Plain),
            f("birthYear", YEAR, false, Plain),
            f("education", Choice(Education::NAMES), false, Plain),
            f("since", Date, true, Plain),
            f("phone", Phone, false, Sensitive),
        ],
    },
    EntitySpec {
        kind: DocKind::Posts,
        type_name: "CadrePost",
        period_field: "termStart",
        fields: &[
            f("post", Choice(PostKind::NAMES), true, Plain),
            f("holder", NAME, true, Plain),
            f("selection", Choice(Selection::NAMES), true, Plain),
            f("termStart", Date, true, Plain),
            f("termEnd", Date, false, Plain),
            f("basicSalary", MONEY, false, Plain),
            f("reward", MONEY, false, Plain),
            f("concurrentPost", Choice(PostKind::NAMES), false, Plain),
            f("birthYear", YEAR, false, Plain),
            f("education", Choice(Education::NAMES), false, Plain),
        ],
    },
    EntitySpec {
        kind: DocKind::Meetings,
        type_name: "Meeting",
        period_field: "heldOn",
        fields: &[
            f("kind", Choice(MeetingKind::NAMES), true, Plain),
            f("heldOn", Date, true, Plain),
            f("attendance", COUNT, true, Plain),
            f("hours", FieldType::Int { min: 0, max: 1_000 }, false, Plain),
            f("trainingMode", Choice(TrainingMode::NAMES), false, Plain),
            f("theme", NAME, false, Plain),
            f("summary", NOTE, false, Plain),
        ],
    },
    EntitySpec {
        kind: DocKind::Appraisals,
        type_name: "Appraisal",
        period_field: "year",
        fields: &[
            f("kind", Choice(AppraisalKind::NAMES), true, Plain),
            f("year", YEAR, true, Plain),
            f("subject", NAME, true, Plain),
            f("heldOn", Date, false, Plain),
            f("result", Choice(AppraisalResult::NAMES), false, Supervisory),
            f(
                "outcome",
                Choice(AppraisalOutcome::NAMES),
                false,
                Supervisory,
            ),
            f("remarks", NOTE, false, Supervisory),
        ],
    },
    EntitySpec {
        kind: DocKind::Projects,
        type_name: "Project",
        period_field: "startedOn",
        fields: &[
            f("name", NAME, true, Plain),
            f("category", Choice(ProjectCategory::NAMES), true, Plain),
            f("status", Choice(ProjectStatus::NAMES), true, Plain),
            f("startedOn", Date, true, Plain),
            f("budget", MONEY, false, Plain),
            f("summary", NOTE, false, Plain),
        ],
    },
    EntitySpec {
        kind: DocKind::Assets,
        type_name: "CollectiveAsset",
        period_field: "recordedOn",
        fields: &[
            f("name", NAME, true, Plain),
            f("category", Choice(AssetCategory::NAMES), true, Plain),
            f("value", MONEY, true, Plain),
            f("recordedOn", Date, true, Plain),
            f("managedBy", NAME, false, Plain),
        ],
    },
    EntitySpec {
        kind: DocKind::Disclosures,
        type_name: "Disclosure",
        period_field: "publishedOn",
        fields: &[
            f("title", NAME, true, Plain),
            f("category", Choice(DisclosureCategory::NAMES), true, Plain),
            f("publishedOn", Date, true, Plain),
            f("body", BODY, true, Plain),
            f("item", Choice(SensitiveItem::NAMES), false, Plain),
        ],
    },
    EntitySpec {
        kind: DocKind::Complaints,
        type_name: "Complaint",
        period_field: "filedOn",
        fields: &[
            f("subject", NAME, true, Plain),
            f("body", BODY, true, Plain),
            f("filedOn", Date, true, Plain),
            f("dueOn", Date, true, Plain),
            f("complainant", NAME, false, Sensitive),
            f("complainantPhone", Phone, false, Sensitive),
            f("status", Choice(ComplaintStatus::NAMES), false, Supervisory),
            f("handler", UnitUp, false, Supervisory),
            f("response", NOTE, false, Supervisory),
            f("respondedOn", Date, false, Supervisory),
        ],
    },
    EntitySpec {
        kind: DocKind::Directives,
        type_name: "Directive",
        period_field: "issuedOn",
        fields: &[
            f("title", NAME, true, Plain),
            f("body", BODY, true, Plain),
            f("issuedOn", Date, true, Plain),
            f("toLevel", Choice(ADDRESSABLE), false, Plain),
            f("deadline", Date, false, Plain),
            f("reportBack", Bool, false, Plain),
        ],
    },
    EntitySpec {
        kind: DocKind::Reports,
        type_name: "Report",
        period_field: "submittedOn",
        fields: &[
            f("kind", Choice(ReportKind::NAMES), true, Plain),
            f("period", FieldType::Period, true, Plain),
            f("submittedOn", Date, true, Plain),
            f("body", BODY, true, Plain),
            f(
                "directive",
                UpRef {
                    kind: DocKind::Directives,
                    strict: true,
                },
                false,
                Plain,
            ),
            f("review", Choice(ReportReview::NAMES), false, Review),
            f("reviewComment", NOTE, false, Review),
        ],
    },
    EntitySpec {
        kind: DocKind::Funds,
        type_name: "FundProgramme",
        period_field: "year",
        fields: &[
            f("name", NAME, true, Plain),
            f("year", YEAR, true, Plain),
            f("total", MONEY, true, Plain),
            f("perRecipient", MONEY, false, Plain),
            f("purpose", NOTE, false, Plain),
        ],
    },
    EntitySpec {
        kind: DocKind::Disbursements,
        type_name: "Disbursement",
        period_field: "paidOn",
        fields: &[
            f(
                "programme",
                UpRef {
                    kind: DocKind::Funds,
                    strict: false,
                },
                true,
                Plain,
            ),
            f("recipient", NAME, true, Plain),
            f("recipientIdNumber", IdNumber, false, Sensitive),
            f("amount", MONEY, true, Plain),
            f("method", Choice(DisbursementMethod::NAMES), true, Plain),
            f("status", Choice(DisbursementStatus::NAMES), true, Plain),
            f("paidOn", Date, false, Plain),
            f("published", Bool, false, Plain),
        ],
    },
];

/// The prefix of a secretary post's tally: `secretary/<term start date>/<term end date or
/// open>/<birth year or ->/<education or ->/<1 if also director>`. Dates in full: a handover
/// within a year leaves one secretary in office on any day, not two in the year.
pub(crate) const SECRETARY: &str = "secretary/";

/// A secretary counted in a roll-up, from a SECRETARY post's tally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secretary {
    /// The holder's year of birth, if recorded.
    pub birth_year: Option<i64>,
    /// The holder's education, if recorded.
    pub education: Option<Education>,
    /// Whether also director of the villagers' committee.
    pub also_director: bool,
}

impl Secretary {
    /// The secretary a tally key (after [`SECRETARY`]) names, if the post is held on `day`
    /// (`YYYY-MM-DD`: a term begun by then and not ended before it; ISO dates compare as
    /// text).
    pub(crate) fn in_office(key: &str, day: &str) -> Option<Secretary> {
        let parts: Vec<&str> = key.split('/').collect();
        let [start, end, born, education, director] = parts[..] else {
            return None;
        };
        let date = |d: &str| d.len() == 10;
        let held = date(start) && start <= day && (end == "open" || (date(end) && end >= day));
        held.then(|| Secretary {
            birth_year: born.parse().ok(),
            education: Education::parse(education),
            also_director: director == "1",
        })
    }
}

/// The handler a write of a complaint of `owner` names: the unit its `handler` field names,
/// `owner` for a null (handed back), `None` when it names none.
pub fn handler_in(owner: &UnitId, fields: &Fields) -> Option<UnitId> {
    match fields.get("handler")? {
        Value::Null => Some(owner.clone()),
        Value::Text(h) => h.parse().ok(),
        _ => None,
    }
}

/// Whether a complaint's `fields` name a status past waiting (handled, closed).
fn names_an_answer(fields: &Fields) -> bool {
    fields
        .get("status")
        .and_then(Value::as_text)
        .and_then(ComplaintStatus::parse)
        .is_some_and(|s| !s.is_open())
}

/// The status a complaint of `owner` waits in while `handler` has it: escalated above its
/// owner, open with it.
fn waiting_status(owner: &UnitId, handler: &UnitId) -> Value {
    let status = if handler == owner {
        ComplaintStatus::Open
    } else {
        ComplaintStatus::Escalated
    };
    Value::Text(status.as_str().into())
}

/// The description of a record kind, or `None` for members and profiles.
pub fn entity(kind: DocKind) -> Option<&'static EntitySpec> {
    ENTITIES.iter().find(|e| e.kind == kind)
}

/// A record of one of the [`ENTITIES`] as the views and the gateway see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Kind, owning unit and record.
    #[serde(with = "ref_str")]
    pub id: RecordRef,
    /// Its fields, as stored.
    pub fields: Fields,
    /// Who created it and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Stamp>,
    /// Who last changed it and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Stamp>,
}

impl Record {
    /// A text field.
    pub fn text(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_text)
    }

    /// An integer field.
    pub fn int(&self, field: &str) -> Option<i64> {
        self.fields.get(field).and_then(Value::as_int)
    }

    /// The level a directive is addressed to (`None`: every descendant of its issuer).
    pub fn to_level(&self) -> Option<Level> {
        self.text("toLevel").and_then(|l| l.parse().ok())
    }

    /// The unit handling a complaint: its `handler`, else the unit it was filed at.
    pub fn handler(&self) -> UnitId {
        self.text("handler")
            .and_then(|u| u.parse().ok())
            .unwrap_or_else(|| self.id.unit.clone())
    }

    /// [`Self::handler`] when it is on the line above the unit the complaint was filed at
    /// (as every handler written through a check is), else that unit.
    pub fn handler_in_line(&self) -> UnitId {
        Some(self.handler())
            .filter(|h| self.id.unit.is_in_subtree_of(h))
            .unwrap_or_else(|| self.id.unit.clone())
    }

    /// Whether anyone may read it: a published disbursement.
    pub fn is_published(&self) -> bool {
        self.id.kind == DocKind::Disbursements
            && self.fields.get("published") == Some(&Value::Bool(true))
    }

    /// The record it refers to (a report-back's directive, a disbursement's programme), as
    /// `kind:unit#record`, from its description's reference field.
    pub fn refers_to(&self) -> Option<String> {
        let spec = entity(self.id.kind)?;
        spec.fields.iter().find_map(|f| match f.ty {
            FieldType::UpRef { kind, .. } => self
                .text(f.name)
                .map(|target| format!("{}:{target}", kind.as_str())),
            _ => None,
        })
    }
}

/// Why a record's fields were refused.
fn bad(field: &str, why: impl Into<String>) -> RecordError {
    RecordError::BadField {
        field: field.to_owned(),
        why: why.into(),
    }
}

impl EntitySpec {
    /// The spec of a field.
    pub fn field(&self, name: &str) -> Option<&'static FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Check the fields of a new record (`new`) or of an update, for a record of `owner`:
    /// every field known and well-formed, and a new record has every required one.
    pub fn validate(&self, owner: &UnitId, fields: &Fields, new: bool) -> Result<(), RecordError> {
        for (name, value) in fields {
            let spec = self
                .field(name)
                .ok_or_else(|| bad(name, format!("{} has no such field", self.type_name)))?;
            match value {
                Value::Null if new => return Err(bad(name, "a new record leaves it out instead")),
                Value::Null if spec.required => {
                    return Err(bad(name, "is required and cannot be cleared"));
                }
                // A complaint is always open, handled or escalated.
                Value::Null if self.with_defaults(owner, Fields::new()).contains_key(name) => {
                    return Err(bad(name, "has a default and cannot be cleared"));
                }
                Value::Null => {}
                _ => check_value(spec, owner, value)?,
            }
        }
        if new
            && let Some(missing) = self
                .fields
                .iter()
                .find(|f| f.required && !fields.contains_key(f.name))
        {
            return Err(bad(missing.name, "is required"));
        }
        Ok(())
    }

    /// Check what a write brings in text: no control characters (line breaks allowed in
    /// prose, notes and bodies) and no bidirectional overrides, which would act on a
    /// terminal or reorder what is shown around them. Checked on writes only, not on what
    /// is read: a record an older build stored with a tab still reads.
    pub fn check_text(&self, fields: &Fields) -> Result<(), RecordError> {
        for (name, value) in fields {
            let (Some(spec), Value::Text(t)) = (self.field(name), value) else {
                continue;
            };
            let lines = matches!(spec.ty, FieldType::Text { max } if max > NAME_MAX);
            if !crate::records::plain_text(t.trim(), lines) {
                return Err(bad(
                    name,
                    "must not hold control characters or bidirectional overrides",
                ));
            }
        }
        Ok(())
    }

    /// Why writing `field` of a record of this kind takes a unit strictly above the record's
    /// owner, if it does (a complaint's handling, which the unit handling it decides, aside).
    /// `exists`: the record is there already; `held` reads its values as they stand,
    /// `written` as they are after the write.
    /// - A review field, always.
    /// - An appraisal's supervisory fields (result, outcome, remarks) when, after the write,
    ///   it is one the level above rates ([`rated_above`]): a unit does not rate its own
    ///   cadres' performance or its secretary's debriefing.
    /// - The kind of an existing appraisal, changed from or to one of those (else a unit
    ///   could rate its own as a democratic appraisal and then change the kind).
    /// - Any field of an existing report accepted above: what was signed off stays so.
    /// - Any field of an existing appraisal rated from above that holds its result: the
    ///   rating stays with the person and year it was given for.
    /// - Any field but the handling of an existing complaint no longer open (escalated,
    ///   handled or closed) or handed up: what the handling answered stays what it answered,
    ///   and the unit handling it does not move its own due date (the caller then needs to
    ///   be strictly above the unit handling it, not only above the owner).
    pub fn above_only(
        &self,
        field: &str,
        owner: &UnitId,
        exists: bool,
        held: &dyn Fn(&str) -> Option<String>,
        written: &dyn Fn(&str) -> Option<String>,
    ) -> Option<&'static str> {
        let access = self.field(field)?.access;
        let rated = |v: Option<String>| v.as_deref().is_some_and(rated_above);
        match self.kind {
            _ if access == Access::Review => Some("reviews come from above"),
            DocKind::Appraisals if access == Access::Supervisory && rated(written("kind")) => {
                Some("a cadre's performance appraisal and a debriefing are rated from above")
            }
            DocKind::Appraisals
                if field == "kind"
                    && exists
                    && held("kind") != written("kind")
                    && (rated(held("kind")) || rated(written("kind"))) =>
            {
                Some("an appraisal rated from above keeps its kind, and no other takes it")
            }
            DocKind::Reports
                if exists && held("review").as_deref() == Some(ReportReview::Accepted.as_str()) =>
            {
                Some("a report accepted above is changed only from above")
            }
            DocKind::Appraisals if exists && rated(held("kind")) && held("result").is_some() => {
                Some("an appraisal rated from above is changed only from above")
            }
            DocKind::Complaints
                if exists
                    && access != Access::Supervisory
                    && (held("status").is_some_and(|s| s != ComplaintStatus::Open.as_str())
                        || held("handler").is_some_and(|h| h != owner.as_str())) =>
            {
                Some("a complaint escalated or answered is changed only from above its handler")
            }
            _ => None,
        }
    }

    /// The field whose authority replacing or deleting an existing record takes, for kinds
    /// with fields decided above the writer: a review, a complaint's status, an appraisal's
    /// result.
    pub fn record_guard(&self) -> Option<&'static FieldSpec> {
        self.decided_above().next().or_else(|| {
            (self.kind == DocKind::Appraisals)
                .then(|| self.field("result"))
                .flatten()
        })
    }

    /// The fields whose concurrent values resolve by authority (the unit highest on the line
    /// wins), not by automerge's op order: those decided above ([`Self::decided_above`]),
    /// and an appraisal's kind and rating, so that a unit writing from older heads cannot
    /// outrank its parent's rating, or a kind that made the rating the parent's, by op order.
    pub fn by_authority(&self) -> impl Iterator<Item = &'static FieldSpec> + '_ {
        let handled = matches!(self.kind, DocKind::Complaints | DocKind::Appraisals);
        let appraisals = self.kind == DocKind::Appraisals;
        self.fields.iter().filter(move |f| {
            f.access == Access::Review
                || (handled && f.access == Access::Supervisory)
                || (appraisals && f.name == "kind")
        })
    }

    /// The fields only units above their writer may overrule, and only by authority: review
    /// fields, and a complaint's supervisory fields (the unit handling it decides them).
    /// Concurrent values of these resolve by authority, not by automerge's op order.
    pub fn decided_above(&self) -> impl Iterator<Item = &'static FieldSpec> + '_ {
        let complaints = self.kind == DocKind::Complaints;
        self.fields.iter().filter(move |f| {
            f.access == Access::Review || (complaints && f.access == Access::Supervisory)
        })
    }

    /// The access classes of the fields a write names.
    pub fn accesses<'a>(&'a self, fields: &'a Fields) -> impl Iterator<Item = Access> + 'a {
        fields
            .keys()
            .filter_map(|k| self.field(k).map(|f| f.access))
    }

    /// The fields a new record of `owner` starts with besides those given: a complaint
    /// without a status, or with a waiting one, is open, or escalated when it is filed with a
    /// handler above its owner (the waiting status follows the handler: a complaint handed
    /// up and marked open would look its unit's to change).
    pub fn with_defaults(&self, owner: &UnitId, mut fields: Fields) -> Fields {
        if self.kind == DocKind::Complaints && !names_an_answer(&fields) {
            let handler = handler_in(owner, &fields).unwrap_or_else(|| owner.clone());
            fields.insert("status".into(), waiting_status(owner, &handler));
        }
        fields
    }

    /// The fields an update of a record of `owner`, handled now by `handler`, writes instead
    /// of those given: a complaint's handler named as it is now is left out (naming it
    /// decides nothing, and written it would outrank by authority a handover or an answer
    /// made concurrently below); a handler that changes (a null: back to its owner) without
    /// a status named brings the waiting status that goes with it, escalated when handled
    /// above its owner, open when back with its owner, so a close made concurrently below
    /// loses to the handover by authority instead of standing beside the new handler; a
    /// waiting status named is the one that goes with the handler after the write.
    pub fn with_update_defaults(
        &self,
        owner: &UnitId,
        handler: &UnitId,
        mut fields: Fields,
    ) -> Fields {
        if self.kind != DocKind::Complaints {
            return fields;
        }
        let after = match handler_in(owner, &fields) {
            Some(new) if &new == handler => {
                fields.remove("handler");
                handler.clone()
            }
            Some(new) => new,
            None => handler.clone(),
        };
        // A waiting status named follows the handler too, handed over or not.
        let waits = fields.contains_key("status") && !names_an_answer(&fields);
        if (&after != handler && !names_an_answer(&fields)) || waits {
            fields.insert("status".into(), waiting_status(owner, &after));
        }
        fields
    }

    /// What the record adds to its unit's roll-up (and every ancestor's): counts keyed by
    /// stable values, so they can be subtracted when the record changes.
    pub fn tallies(&self, r: &Record) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        let text = |k: &str| r.text(k).unwrap_or("");
        match self.kind {
            DocKind::Activists => out.push((format!("talent/{}", text("stage")), 1)),
            DocKind::Posts => {
                out.push((format!("posts/{}", text("post")), 1));
                let (secretary, director) =
                    (PostKind::Secretary.as_str(), PostKind::Director.as_str());
                let concurrent = r.text("concurrentPost");
                // A secretary, recorded as such or as a director who is also secretary.
                let holds = text("post") == secretary
                    || (text("post") == director && concurrent == Some(secretary));
                if holds {
                    // The days it is held (to the term's end, or open), who holds it (born,
                    // education) and whether also director: the ageing of secretaries, their
                    // education and concurrent posts, for any day.
                    let end = r.text("termEnd").unwrap_or("open");
                    let start = text("termStart");
                    let born = r.int("birthYear").map_or("-".to_owned(), |y| y.to_string());
                    let edu = r.text("education").unwrap_or("-");
                    let director =
                        u8::from(text("post") == director || concurrent == Some(director));
                    out.push((
                        format!("{SECRETARY}{start}/{end}/{born}/{edu}/{director}"),
                        1,
                    ));
                }
            }
            DocKind::Meetings => {
                let held = text("heldOn");
                if let Some(q) = quarter_of(held) {
                    out.push((format!("meetings/{q}/{}", text("kind")), 1));
                    let attendance = r.int("attendance").unwrap_or(0);
                    out.push((format!("attendance/{q}/{}", text("kind")), attendance));
                }
                // Hours of training only: another meeting's length is not training held.
                if let (Some(h), Some(y), true) = (
                    r.int("hours"),
                    held.get(..4),
                    text("kind") == MeetingKind::Training.as_str(),
                ) {
                    out.push((format!("training_hours/{y}"), h));
                }
            }
            DocKind::Appraisals => {
                let (year, kind) = (r.int("year").unwrap_or(0), text("kind"));
                out.push((format!("appraisals/{year}/{kind}"), 1));
                if let Some(result) = r.text("result") {
                    out.push((format!("appraisals_rated/{year}/{kind}"), 1));
                    out.push((format!("appraisal_result/{year}/{result}"), 1));
                }
                if let Some(outcome) = r.text("outcome") {
                    out.push((format!("appraisal_outcome/{year}/{outcome}"), 1));
                }
            }
            DocKind::Projects => out.push((format!("projects/{}", text("status")), 1)),
            DocKind::Assets => {
                let c = text("category");
                out.push((format!("assets/{c}"), 1));
                out.push((format!("asset_value/{c}"), r.int("value").unwrap_or(0)));
            }
            DocKind::Disclosures => {
                let category = text("category");
                out.push((format!("disclosures/{category}"), 1));
                let year = text("publishedOn").get(..4).unwrap_or("");
                out.push((format!("disclosures_in/{year}/{category}"), 1));
                if let Some(item) = r.text("item") {
                    out.push((format!("disclosed_item/{year}/{item}"), 1));
                }
            }
            DocKind::Complaints => {
                let open = ComplaintStatus::parse(r.text("status").unwrap_or("open"))
                    .is_none_or(ComplaintStatus::is_open);
                out.push(("complaints".into(), 1));
                if open {
                    out.push((format!("complaints_open/{}", text("dueOn")), 1));
                }
                if let (Some(filed), Some(answered)) = (
                    days_since_epoch(text("filedOn")),
                    r.text("respondedOn").and_then(days_since_epoch),
                ) {
                    out.push(("complaints_answered".into(), 1));
                    out.push(("complaint_response_days".into(), (answered - filed).max(0)));
                }
            }
            DocKind::Directives => {
                out.push((
                    format!("directives/{}", text("issuedOn").get(..4).unwrap_or("")),
                    1,
                ));
            }
            DocKind::Reports => {
                let (kind, period) = (text("kind"), text("period"));
                out.push((format!("reports/{kind}/{period}"), 1));
                if r.text("review").is_some() {
                    out.push((format!("reports_reviewed/{kind}/{period}"), 1));
                }
            }
            DocKind::Funds => {
                let year = r.int("year").unwrap_or(0);
                out.push((format!("funds/{year}"), r.int("total").unwrap_or(0)));
            }
            DocKind::Disbursements => {
                out.push((format!("disbursements/{}", text("status")), 1));
                if text("status") == "paid"
                    && let Some(y) = r.text("paidOn").and_then(|d| d.get(..4))
                {
                    out.push((format!("disbursed/{y}"), r.int("amount").unwrap_or(0)));
                }
                if text("method") == "in_kind" {
                    out.push(("disbursements_in_kind".into(), 1));
                }
            }
            DocKind::Profile | DocKind::Members => {}
        }
        out
    }
}

fn check_value(spec: &FieldSpec, owner: &UnitId, value: &Value) -> Result<(), RecordError> {
    let name = spec.name;
    let text = || value.as_text().ok_or_else(|| bad(name, "must be text"));
    match spec.ty {
        FieldType::Text { max } => {
            let n = text()?.trim().chars().count();
            if n == 0 || n > max {
                return Err(bad(name, format!("must be 1-{max} characters")));
            }
        }
        FieldType::Int { min, max } => {
            let v = value
                .as_int()
                .ok_or_else(|| bad(name, "must be an integer"))?;
            if !(min..=max).contains(&v) {
                return Err(bad(name, format!("must be between {min} and {max}")));
            }
        }
        FieldType::Date => validate_date(text()?).map_err(|e| bad(name, e.to_string()))?,
        FieldType::Choice(names) => {
            let t = text()?;
            if !names.contains(&t) {
                return Err(bad(name, format!("must be one of {}", names.join(", "))));
            }
        }
        FieldType::Bool => {
            if !matches!(value, Value::Bool(_)) {
                return Err(bad(name, "must be true or false"));
            }
        }
        FieldType::UnitUp => {
            let u: UnitId = text()?.parse().map_err(|e| bad(name, format!("{e}")))?;
            if !owner.is_in_subtree_of(&u) {
                return Err(bad(name, format!("must be {owner} or a unit above it")));
            }
        }
        FieldType::UpRef { kind, strict } => {
            let d: MemberId = text()?.parse().map_err(|e| bad(name, format!("{e}")))?;
            let above = if strict {
                d.unit.is_ancestor_of(owner)
            } else {
                owner.is_in_subtree_of(&d.unit)
            };
            if !above {
                let whose = if strict { "above" } else { "at or above" };
                return Err(bad(
                    name,
                    format!("must name {} of a unit {whose} {owner}", kind.as_str()),
                ));
            }
        }
        FieldType::IdNumber => {
            crate::records::validate_id_number(text()?).map_err(|e| bad(name, e.to_string()))?
        }
        FieldType::Period => {
            if period_months(text()?).is_none() {
                return Err(bad(
                    name,
                    "must be YYYY, YYYYHn, YYYYQn, YYYY-MM or YYYY-MM-DD",
                ));
            }
        }
        FieldType::Phone => {
            crate::records::validate_phone(text()?).map_err(|e| bad(name, e.to_string()))?
        }
    }
    Ok(())
}

/// `YYYYQn` of a `YYYY-MM-DD` date.
pub fn quarter_of(date: &str) -> Option<String> {
    let month: u32 = date.get(5..7)?.parse().ok()?;
    let year = date.get(..4)?;
    (1..=12)
        .contains(&month)
        .then(|| format!("{year}Q{}", (month - 1) / 3 + 1))
}

/// Days from 1970-01-01 to a `YYYY-MM-DD` date (Howard Hinnant's algorithm).
pub fn days_since_epoch(date: &str) -> Option<i64> {
    validate_date(date).ok()?;
    let y: i64 = date.get(..4)?.parse().ok()?;
    let m: i64 = date.get(5..7)?.parse().ok()?;
    let d: i64 = date.get(8..10)?.parse().ok()?;
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// (year, month, day) of a count of days since 1970-01-01, the inverse of
/// [`days_since_epoch`] (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The months (counted from year 0) a period covers: `YYYY`, `YYYYHn`, `YYYYQn`, `YYYY-MM`
/// or `YYYY-MM-DD`.
pub fn period_months(p: &str) -> Option<(i64, i64)> {
    let year: i64 = p.get(..4)?.parse().ok()?;
    let base = year * 12;
    let rest = &p[4..];
    let n = |s: &str| s.parse::<i64>().ok();
    match rest.as_bytes().first() {
        None => Some((base, base + 11)),
        Some(b'H') => match n(&rest[1..])? {
            h @ 1..=2 => Some((base + (h - 1) * 6, base + h * 6 - 1)),
            _ => None,
        },
        Some(b'Q') => match n(&rest[1..])? {
            q @ 1..=4 => Some((base + (q - 1) * 3, base + q * 3 - 1)),
            _ => None,
        },
        Some(b'-') => {
            let m = n(rest.get(1..3)?)?;
            if !(1..=12).contains(&m) || !(rest.len() == 3 || validate_date(p).is_ok()) {
                return None;
            }
            Some((base + m - 1, base + m - 1))
        }
        _ => None,
    }
}

/// Whether a record's period value (a date, a year or a period like `2026Q3`) lies within
/// the period `p`.
pub fn in_period(p: (i64, i64), value: &Value) -> bool {
    let have = match value {
        Value::Int(y) => y.checked_mul(12).map(|m| (m, m + 11)),
        Value::Text(t) => period_months(t),
        Value::Bool(_) | Value::Null => None,
    };
    have.is_some_and(|(a, b)| p.0 <= a && b <= p.1)
}

mod ref_str {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::ids::RecordRef;

    pub fn serialize<S: Serializer>(id: &RecordRef, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RecordRef, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value reads from JSON as the derived untagged reading did, errors included.
    #[test]
    fn values_read_as_the_untagged_reading_did() {
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(untagged)]
        enum Untagged {
            Bool(bool),
            Int(i64),
            Text(String),
            Null,
        }
        for json in [
            "true",
            "false",
            "0",
            "-5",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "1.5",
            "1e3",
            "\"text\"",
            "\"\"",
            "\"a\\u00e9\\\"b\"",
            "null",
            "[]",
            "{}",
            "[1]",
        ] {
            let ours = serde_json::from_str::<Value>(json).ok();
            let derived = serde_json::from_str::<Untagged>(json)
                .ok()
                .map(|u| match u {
                    Untagged::Bool(b) => Value::Bool(b),
                    Untagged::Int(i) => Value::Int(i),
                    Untagged::Text(t) => Value::Text(t),
                    Untagged::Null => Value::Null,
                });
            assert_eq!(ours, derived, "{json}");
            if let Some(v) = ours {
                assert_eq!(
                    serde_json::to_string(&v).unwrap(),
                    serde_json::to_string(
                        &serde_json::from_str::<serde_json::Value>(json).unwrap()
                    )
                    .unwrap(),
                    "{json}"
                );
            }
        }
    }

    fn u(s: &str) -> UnitId {
        s.parse().unwrap()
    }

    fn fields(pairs: &[(&str, Value)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    /// A meeting's required fields, valid.
    fn a_lecture() -> Fields {
        fields(&[
            ("kind", t("party_lecture")),
            ("heldOn", t("2026-03-02")),
            ("attendance", Value::Int(23)),
        ])
    }

    #[test]
    fn every_kind_but_members_and_profiles_is_described_once() {
        for kind in DocKind::ALL {
            let n = ENTITIES.iter().filter(|e| e.kind == kind).count();
            let expected = usize::from(!matches!(kind, DocKind::Members | DocKind::Profile));
            assert_eq!(n, expected, "{kind:?}");
        }
        for e in ENTITIES {
            assert!(e.field(e.period_field).is_some(), "{}", e.type_name);
        }
    }

    #[test]
    fn validation_names_the_field() {
        let meetings = entity(DocKind::Meetings).unwrap();
        let v = u("c01/k01/t01/v01");
        let ok = a_lecture();
        assert!(meetings.validate(&v, &ok, true).is_ok());
        let mut missing = ok.clone();
        missing.remove("attendance");
        assert!(meetings.validate(&v, &missing, true).is_err());
        assert!(meetings.validate(&v, &missing, false).is_ok(), "an update");
        for (k, val) in [
            ("kind", t("picnic")),
            ("heldOn", t("2026-02-30")),
            ("attendance", Value::Int(-1)),
            ("attendance", t("many")),
            ("nonsense", t("x")),
        ] {
            let mut f = ok.clone();
            f.insert(k.into(), val);
            let e = meetings.validate(&v, &f, true).unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
        }
    }

    /// Text that would act on a terminal or reorder what is shown around it is refused:
    /// control characters (line breaks allowed in prose) and bidirectional overrides.
    #[test]
    fn text_holds_no_control_characters_or_bidi_overrides() {
        let meetings = entity(DocKind::Meetings).unwrap();
        let v = u("c01/k01/t01/v01");
        let ok = a_lecture();
        let with_summary = |s: &str| {
            let mut f = ok.clone();
            f.insert("summary".into(), t(s));
            meetings.validate(&v, &f, true)?;
            meetings.check_text(&f)
        };
        assert!(with_summary("Studied the plan.\nAgreed on three steps.").is_ok());
        for bad in ["\u{1b}]0;owned\u{7}", "a\u{0}b", "evil \u{202E}txt.exe"] {
            let e = with_summary(bad).unwrap_err();
            assert!(e.to_string().contains("summary"), "{e}");
        }
        // Read back (validation without the write's text check), a record an older build
        // stored with a tab in a one-line field still reads.
        let mut old = ok.clone();
        old.insert("theme".into(), t("Study\tsession"));
        assert!(meetings.validate(&v, &old, true).is_ok());
        assert!(meetings.check_text(&old).is_err());
        assert!(crate::records::plain_text("Linhe County", false));
        assert!(!crate::records::plain_text("Line\nbreak", false));
        assert!(!crate::records::plain_text("\u{1b}[2J", true));
        assert!(!crate::records::plain_text("x\u{2066}y", true));
    }

    #[test]
    fn an_update_clears_only_optional_fields_without_a_default() {
        let complaints = entity(DocKind::Complaints).unwrap();
        let v = u("c01/k01/t01/v01");
        let clear = |k: &str| fields(&[(k, Value::Null)]);
        assert!(
            complaints
                .validate(&v, &clear("complainantPhone"), false)
                .is_ok()
        );
        for (k, new, why) in [
            ("complainantPhone", true, "a new record"),
            ("subject", false, "required"),
            ("status", false, "default"),
        ] {
            let e = complaints.validate(&v, &clear(k), new).unwrap_err();
            assert!(e.to_string().contains(k), "{why}: {e}");
        }
    }

    #[test]
    fn handing_a_complaint_over_writes_its_status() {
        let complaints = entity(DocKind::Complaints).unwrap();
        let v = u("c01/k01/t01/v01");
        let with = |now: &str, f: &[(&str, Value)]| {
            complaints.with_update_defaults(&v, &u(now), fields(f))
        };
        let status_with = |now: &str, f: &[(&str, Value)]| with(now, f).get("status").cloned();
        let status = |f: &[(&str, Value)]| status_with("c01/k01/t01/v01", f);
        assert_eq!(status(&[("handler", t("c01/k01"))]), Some(t("escalated")));
        // Named as it is, the handler is left out and nothing is added.
        for (now, named) in [
            ("c01/k01/t01/v01", t("c01/k01/t01/v01")),
            ("c01/k01/t01/v01", Value::Null),
            ("c01/k01", t("c01/k01")),
        ] {
            let out = with(now, &[("handler", named.clone()), ("response", t("Noted"))]);
            assert_eq!(out, fields(&[("response", t("Noted"))]), "{now} {named:?}");
        }
        // Back to its owner: open again; handed on: escalated.
        assert_eq!(
            status_with("c01/k01", &[("handler", Value::Null)]),
            Some(t("open"))
        );
        assert_eq!(
            status_with("c01/k01", &[("handler", t("c01/k01/t01/v01"))]),
            Some(t("open"))
        );
        assert_eq!(
            status_with("c01/k01", &[("handler", t("c01"))]),
            Some(t("escalated"))
        );
        // A status given stands; no handler named, no status added; other kinds untouched.
        assert_eq!(
            status(&[("handler", t("c01/k01")), ("status", t("handled"))]),
            Some(t("handled"))
        );
        assert_eq!(status(&[("response", t("Noted"))]), None);
        let reports = entity(DocKind::Reports).unwrap();
        let f = fields(&[("handler", t("c01/k01"))]);
        assert_eq!(reports.with_update_defaults(&v, &v, f.clone()), f);
        // Filed: open, or escalated when filed with a handler above.
        let filed = |f: &[(&str, Value)]| {
            complaints
                .with_defaults(&v, fields(f))
                .get("status")
                .cloned()
        };
        assert_eq!(filed(&[]), Some(t("open")));
        assert_eq!(filed(&[("handler", t("c01/k01/t01/v01"))]), Some(t("open")));
        assert_eq!(filed(&[("handler", t("c01/k01"))]), Some(t("escalated")));
        // A waiting status named follows the handler: handed up and marked open would look
        // like its unit's to change.
        assert_eq!(
            filed(&[("handler", t("c01/k01")), ("status", t("open"))]),
            Some(t("escalated"))
        );
        assert_eq!(
            status(&[("handler", t("c01/k01")), ("status", t("open"))]),
            Some(t("escalated"))
        );
        assert_eq!(
            status_with("c01/k01", &[("status", t("open"))]),
            Some(t("escalated"))
        );
        assert_eq!(
            status_with(
                "c01/k01",
                &[("handler", Value::Null), ("status", t("escalated"))]
            ),
            Some(t("open"))
        );
    }

    #[test]
    fn handlers_and_directives_must_be_above_the_record() {
        let complaints = entity(DocKind::Complaints).unwrap();
        let v = u("c01/k01/t01/v01");
        for (handler, ok) in [
            ("c01/k01", true),
            ("c01/k01/t01/v01", true),
            ("c01/k02", false),
            ("c01/k01/t01/v02", false),
        ] {
            let f = fields(&[("handler", t(handler))]);
            assert_eq!(complaints.validate(&v, &f, false).is_ok(), ok, "{handler}");
        }
        let reports = entity(DocKind::Reports).unwrap();
        for (directive, ok) in [
            ("c01/k01#00000000000000aa", true),
            ("c01/k01/t01/v01#00000000000000aa", false),
            ("c01/k02#00000000000000aa", false),
            ("c01/k01", false),
        ] {
            let f = fields(&[("directive", t(directive))]);
            assert_eq!(reports.validate(&v, &f, false).is_ok(), ok, "{directive}");
        }
    }

    #[test]
    fn periods_contain_dates_years_and_periods() {
        let q1 = period_months("2026Q1").unwrap();
        assert!(in_period(q1, &t("2026-03-31")));
        assert!(!in_period(q1, &t("2026-04-01")));
        assert!(in_period(q1, &t("2026Q1")));
        assert!(
            !in_period(q1, &Value::Int(2026)),
            "a year is not within a quarter"
        );
        let y = period_months("2026").unwrap();
        assert!(in_period(y, &Value::Int(2026)));
        assert!(in_period(y, &t("2026H2")));
        assert!(in_period(
            period_months("2026-03").unwrap(),
            &t("2026-03-09")
        ));
        for bad in ["2026Q5", "2026H0", "26", "2026-13", "2026-02-30", "2026X"] {
            assert!(period_months(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn dates_count_days() {
        assert_eq!(days_since_epoch("1970-01-01"), Some(0));
        assert_eq!(days_since_epoch("2000-03-01"), Some(11_017));
        assert_eq!(
            days_since_epoch("2026-03-01").unwrap() - days_since_epoch("2026-02-01").unwrap(),
            28
        );
        assert_eq!(quarter_of("2026-11-26").as_deref(), Some("2026Q4"));
    }
}
