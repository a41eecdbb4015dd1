//! Record types and their validation. These serde derives are the storage model of the views.

use serde::{Deserialize, Serialize};

use crate::entities::{Organisation, ServiceFunction};
use crate::ids::{MemberId, UnitId};
use crate::level::Level;
use crate::rules::Role;

string_enum!(
    /// Gender as recorded in the member register.
    Gender { Male = "male", Female = "female" }
);

string_enum!(
    /// Highest education completed; the seed tracks "low education" as a weakness.
    Education {
        Primary = "primary",
        JuniorSecondary = "junior_secondary",
        SeniorSecondary = "senior_secondary",
        Vocational = "vocational",
        /// Three-year college (dazhuan): counts as higher education.
        College = "college",
        Bachelor = "bachelor",
        Postgraduate = "postgraduate",
    }
);

impl Education {
    /// Whether this counts as higher education for the seed's targets.
    pub fn is_higher(self) -> bool {
        matches!(
            self,
            Education::College | Education::Bachelor | Education::Postgraduate
        )
    }
}

string_enum!(
    /// Membership status.
    MemberStatus { Probationary = "probationary", Full = "full" }
);

string_enum!(
    /// A category a member may be in (any number of them): who needs the branch's
    /// particular attention.
    MemberCategory {
        /// Working away from home (a floating or migrant member, with a mobile activity
        /// card): takes part in the branch's life from afar.
        Floating = "floating",
        /// In difficulty (old age, illness, poverty): the branch's care visits are for them.
        InDifficulty = "in_difficulty",
    }
);

impl MemberCategory {
    /// The record field holding whether a member is in this category (`true` or absent):
    /// one field per category, so concurrent changes to different categories merge.
    pub fn field(self) -> &'static str {
        match self {
            MemberCategory::Floating => "floating",
            MemberCategory::InDifficulty => "inDifficulty",
        }
    }
}

/// Categories as a set without repeats, in the order of [`MemberCategory::ALL`] (the order
/// a record read from its document has them in).
pub fn category_set(c: Vec<MemberCategory>) -> Vec<MemberCategory> {
    MemberCategory::ALL
        .iter()
        .copied()
        .filter(|x| c.contains(x))
        .collect()
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A name is empty or too long.
    #[error("name must be 1-100 characters")]
    BadName,
    /// A birth year outside the plausible range.
    #[error("birth year {0} is outside 1900-2100")]
    BadBirthYear(i64),
    /// A date is not `YYYY-MM-DD`.
    #[error("date {0:?} is not a valid YYYY-MM-DD date")]
    BadDate(String),
    /// A phone number with other than digits, spaces, `+`, `-`, or of the wrong length.
    #[error("phone must be 3-20 characters of digits, spaces, '+' and '-'")]
    BadPhone,
    /// An identity number with other than letters and digits, or of the wrong length.
    #[error("identity number must be 4-32 letters and digits")]
    BadIdNumber,
    /// A field of a record is unknown, missing or malformed.
    #[error("{field}: {why}")]
    BadField {
        /// The field's name.
        field: String,
        /// What is wrong with it.
        why: String,
    },
}

/// A party member as the views and the gateway see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Owning unit and record.
    #[serde(with = "member_id_str")]
    pub id: MemberId,
    /// Full name.
    pub name: String,
    /// Year of birth.
    pub birth_year: i64,
    /// Gender.
    pub gender: Gender,
    /// Highest education.
    pub education: Education,
    /// Date joined, `YYYY-MM-DD`.
    pub joined_on: String,
    /// Probationary or full.
    pub status: MemberStatus,
    /// Phone number: sensitive, shown only to the owning unit's clerks and above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Personal identity number: sensitive, like `phone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_number: Option<String>,
    /// The categories the member is in, in the order of [`MemberCategory::ALL`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<MemberCategory>,
    /// Who created the record and when (absent on records written without a caller, such
    /// as generated data or records older than stamps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Stamp>,
    /// Who last changed it through an update and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Stamp>,
}

/// Who wrote a record and when: the unit and role of the token that made the write, and
/// the time the node that took it stored it. Written into the record itself, so it travels
/// with the record to every level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    /// The writer's unit.
    #[serde(with = "unit_id_str")]
    pub unit: UnitId,
    /// The writer's role there.
    #[serde(with = "role_str")]
    pub role: Role,
    /// The user the writer's token was issued to (its name, or a label from the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Stamp {
    /// `"<unit> <role>[ <user>]"`, the form stored in a document.
    pub fn by(&self) -> String {
        match &self.user {
            Some(u) => format!("{} {} {u}", self.unit, self.role.as_str()),
            None => format!("{} {}", self.unit, self.role.as_str()),
        }
    }

    /// A stamp from its stored form, or `None` if it does not parse.
    pub fn parse(at_ms: i64, by: &str) -> Option<Stamp> {
        let (unit, rest) = by.split_once(' ')?;
        let (role, user) = match rest.split_once(' ') {
            Some((r, u)) => (r, Some(u.to_owned())),
            None => (rest, None),
        };
        Some(Stamp {
            at_ms,
            unit: unit.parse().ok()?,
            role: role.parse().ok()?,
            user,
        })
    }
}

/// The fields of a new member, validated by [`NewMember::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMember {
    /// Full name.
    pub name: String,
    /// Year of birth.
    pub birth_year: i64,
    /// Gender.
    pub gender: Gender,
    /// Highest education.
    pub education: Education,
    /// Date joined, `YYYY-MM-DD`.
    pub joined_on: String,
    /// Probationary or full.
    pub status: MemberStatus,
    /// Phone number (sensitive).
    pub phone: Option<String>,
    /// Personal identity number (sensitive).
    pub id_number: Option<String>,
    /// Categories (floating, in difficulty).
    pub categories: Vec<MemberCategory>,
}

impl Member {
    /// Its fields as a new record's (another register's, for a member who moved).
    pub fn into_new(self) -> NewMember {
        NewMember {
            name: self.name,
            birth_year: self.birth_year,
            gender: self.gender,
            education: self.education,
            joined_on: self.joined_on,
            status: self.status,
            phone: self.phone,
            id_number: self.id_number,
            categories: self.categories,
        }
    }
}

impl NewMember {
    /// Check every field.
    pub fn validate(&self) -> Result<(), RecordError> {
        validate_name(&self.name)?;
        validate_birth_year(self.birth_year)?;
        validate_date(&self.joined_on)?;
        validate_sensitive(self.phone.as_deref(), self.id_number.as_deref())
    }
}

/// A partial update: `None` leaves a field as it is. Each field merges on its own, so a
/// township's correction of a name and a village's change of education both survive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberPatch {
    /// New name.
    pub name: Option<String>,
    /// New birth year.
    pub birth_year: Option<i64>,
    /// New gender.
    pub gender: Option<Gender>,
    /// New education.
    pub education: Option<Education>,
    /// New join date.
    pub joined_on: Option<String>,
    /// New status.
    pub status: Option<MemberStatus>,
    /// New phone number; `Some(None)` clears it.
    pub phone: Option<Option<String>>,
    /// New identity number; `Some(None)` clears it.
    pub id_number: Option<Option<String>>,
    /// The categories the member is in from now on (the others are cleared); `None`
    /// leaves them as they are.
    pub categories: Option<Vec<MemberCategory>>,
}

impl MemberPatch {
    /// Check every field present.
    pub fn validate(&self) -> Result<(), RecordError> {
        if let Some(n) = &self.name {
            validate_name(n)?;
        }
        if let Some(y) = self.birth_year {
            validate_birth_year(y)?;
        }
        if let Some(d) = &self.joined_on {
            validate_date(d)?;
        }
        validate_sensitive(
            self.phone.as_ref().and_then(Option::as_deref),
            self.id_number.as_ref().and_then(Option::as_deref),
        )
    }
}

fn validate_sensitive(phone: Option<&str>, id_number: Option<&str>) -> Result<(), RecordError> {
    if let Some(p) = phone {
        validate_phone(p)?;
    }
    if let Some(n) = id_number {
        validate_id_number(n)?;
    }
    Ok(())
}

/// 4-32 ASCII letters and digits.
pub fn validate_id_number(n: &str) -> Result<(), RecordError> {
    let ok = (4..=32).contains(&n.len()) && n.bytes().all(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(RecordError::BadIdNumber)
    }
}

/// A user's name on a token: 1-60 characters, no control characters.
pub fn validate_user_name(name: &str) -> Result<(), RecordError> {
    let n = name.trim().chars().count();
    if n == 0 || n > 60 || name.chars().any(char::is_control) {
        return Err(RecordError::BadField {
            field: "user name".into(),
            why: "must be 1-60 characters without control characters".into(),
        });
    }
    Ok(())
}

/// 3-20 characters of digits, spaces, `+` and `-`, with at least one digit.
pub fn validate_phone(p: &str) -> Result<(), RecordError> {
    let ok = (3..=20).contains(&p.chars().count())
        && p.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-'))
        && p.chars().any(|c| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(RecordError::BadPhone)
    }
}

fn validate_name(name: &str) -> Result<(), RecordError> {
    let n = name.trim().chars().count();
    if n == 0 || n > 100 || !plain_text(name.trim(), false) {
        return Err(RecordError::BadName);
    }
    Ok(())
}

/// Whether `text` holds no character that would act on a terminal or reorder what is shown
/// around it rather than be read: control characters (line breaks and tabs allowed where
/// `lines`, in notes and bodies) and the bidirectional embedding, override and isolate
/// marks. Names and notes are shown to operators in `grassroots status` and to readers up
/// the tree; a unit's name holding an escape sequence would run in the city's terminal.
pub fn plain_text(text: &str, lines: bool) -> bool {
    text.chars().all(|c| plain_char(c, lines))
}

/// Whether `c` may stand in [`plain_text`].
pub fn plain_char(c: char, lines: bool) -> bool {
    let control = c.is_control() && !(lines && matches!(c, '\n' | '\r' | '\t'));
    let bidi = matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    !control && !bidi
}

fn validate_birth_year(y: i64) -> Result<(), RecordError> {
    if !(1900..=2100).contains(&y) {
        return Err(RecordError::BadBirthYear(y));
    }
    Ok(())
}

/// `YYYY-MM-DD` with a real month and day (leap years included).
pub fn validate_date(d: &str) -> Result<(), RecordError> {
    let bad = || RecordError::BadDate(d.to_owned());
    let b = d.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, RecordError> {
        let s = &d[r];
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (y, m, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if y < 1900 || day == 0 || day > days {
        return Err(bad());
    }
    Ok(())
}

/// A unit as the views know it, from its profile document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitProfile {
    /// The unit.
    #[serde(with = "unit_id_str")]
    pub id: UnitId,
    /// Display name ("Qingshui Village").
    pub name: String,
    /// Registered child units: the only units that may link to it from below.
    #[serde(with = "unit_ids_str")]
    pub children: Vec<UnitId>,
    /// SHA-256 fingerprints (hex) of certificates this unit's CA issued and revoked.
    #[serde(default)]
    pub revoked: Vec<String>,
    /// Organisations present (the "1 + X" model), in storage-name order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organisations: Vec<Organisation>,
    /// Whether the unit has an activity place.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub activity_place: bool,
    /// Service functions its activity place offers, in storage-name order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<ServiceFunction>,
}

impl UnitDetails {
    /// Check the name, if given.
    pub fn validate(&self) -> Result<(), RecordError> {
        self.name.as_deref().map_or(Ok(()), validate_name)
    }
}

impl UnitProfile {
    /// The level, from the id.
    pub fn level(&self) -> Level {
        self.id.level()
    }

    /// What a village's profile adds to the roll-ups (coverage of organisations and
    /// activity places); nothing for other levels.
    pub fn tallies(&self) -> Vec<(String, i64)> {
        if self.level() != Level::Village {
            return Vec::new();
        }
        let mut out = vec![("villages".to_owned(), 1)];
        out.extend(
            self.organisations
                .iter()
                .map(|o| (format!("org/{}", o.as_str()), 1)),
        );
        if self.activity_place {
            out.push(("place".to_owned(), 1));
        }
        out.extend(
            self.functions
                .iter()
                .map(|f| (format!("function/{}", f.as_str()), 1)),
        );
        out
    }
}

/// A change to a unit's profile by its users or a level above: `None` leaves a part as it
/// is. A level above can also register a unit that has no node (yet) by giving its name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitDetails {
    /// Display name.
    pub name: Option<String>,
    /// Organisations present (replaces the set).
    pub organisations: Option<Vec<Organisation>>,
    /// Whether there is an activity place.
    pub activity_place: Option<bool>,
    /// Service functions offered (replaces the set).
    pub functions: Option<Vec<ServiceFunction>>,
}

mod member_id_str {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::ids::MemberId;

    pub fn serialize<S: Serializer>(id: &MemberId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MemberId, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

mod role_str {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::rules::Role;

    pub fn serialize<S: Serializer>(r: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.as_str())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

mod unit_id_str {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::ids::UnitId;

    pub fn serialize<S: Serializer>(id: &UnitId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<UnitId, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

mod unit_ids_str {
    use serde::{Deserialize, Deserializer, Serializer, de::Error, ser::SerializeSeq};

    use crate::ids::UnitId;

    pub fn serialize<S: Serializer>(ids: &[UnitId], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(ids.len()))?;
        for id in ids {
            seq.serialize_element(id.as_str())?;
        }
        seq.end()
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<UnitId>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|s| s.parse().map_err(D::Error::custom))
            .collect()
    }
}

/// Text fields trimmed, as they are stored, validated and judged.
pub fn trimmed(mut fields: crate::entities::Fields) -> crate::entities::Fields {
    for v in fields.values_mut() {
        if let crate::entities::Value::Text(t) = v {
            let trimmed = t.trim();
            if trimmed.len() != t.len() {
                *t = trimmed.to_owned();
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_checked() {
        for ok in ["2024-02-29", "1999-12-31", "2000-02-29"] {
            assert!(validate_date(ok).is_ok(), "{ok}");
        }
        for bad in [
            "2023-02-29",
            "1900-02-29",
            "2024-13-01",
            "2024-00-10",
            "24-01-01",
            "2024/01/01",
            "2024-01-32",
            "abcd-ef-gh",
        ] {
            assert!(validate_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn new_member_validation() {
        let mut m = NewMember {
            name: "Li Wei".into(),
            birth_year: 1990,
            gender: Gender::Male,
            education: Education::Bachelor,
            joined_on: "2015-07-01".into(),
            status: MemberStatus::Full,
            phone: None,
            id_number: None,
            categories: Vec::new(),
        };
        assert!(m.validate().is_ok());
        m.name = "  ".into();
        assert_eq!(m.validate(), Err(RecordError::BadName));
        m.name = "Li".into();
        m.birth_year = 1800;
        assert_eq!(m.validate(), Err(RecordError::BadBirthYear(1800)));
    }

    #[test]
    fn enums_round_trip() {
        for e in Education::ALL {
            assert_eq!(Education::parse(e.as_str()), Some(*e));
        }
        assert!(Education::College.is_higher());
        assert!(!Education::Vocational.is_higher());
    }
}
