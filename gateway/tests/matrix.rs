//! The visibility and write matrix through GraphQL, for member records and every other
//! record kind: every role (and anonymous) x every relation between the caller's unit and
//! the record's unit x read, create, update and delete (and a supervisory update where the
//! kind has supervisory fields, whose authority a delete needs too), each cell asserted
//! allowed or refused; and, where the record is
//! readable, whether its sensitive fields are shown. The rules have the same matrix
//! as unit tests (`schema/src/rules.rs`); this one proves the gateway applies them and adds
//! no path around them.

use axum::body::{Body, to_bytes};
use axum::http::{Request, header};
use grassroots_gateway::{Backend, router};
use grassroots_node::auth::{new_token, token_hash};
use grassroots_schema::{
    Education, Gender, MemberStatus, NewMember, Relation, Role, UnitId, relation,
};
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;

async fn query(backend: &Backend, token: Option<&str>, q: &str, vars: Value) -> Value {
    let mut req = Request::post("/graphql").header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = serde_json::to_vec(&json!({ "query": q, "variables": vars })).unwrap();
    let resp = router(backend.clone())
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    serde_json::from_slice(&to_bytes(resp.into_body(), 1 << 20).await.unwrap()).unwrap()
}

fn code(r: &Value) -> &str {
    r["errors"][0]["extensions"]["code"].as_str().unwrap_or("")
}

/// A write went through exactly when allowed; a refusal says why (no token, or not allowed).
fn assert_write(r: &Value, field: &str, allowed: bool, has_token: bool, cell: &str) {
    let done = !r["data"].is_null() && !r["data"][field].is_null();
    assert_eq!(done, allowed, "{field}: {cell}: {r}");
    if !done {
        let want = if has_token {
            "FORBIDDEN"
        } else {
            "UNAUTHENTICATED"
        };
        assert_eq!(code(r), want, "{field}: {cell}: {r}");
    }
}

/// One (caller's unit, record's unit) pair per relation, all under the city whose node
/// answers (it holds every unit's records).
fn cases() -> Vec<(Relation, &'static str, &'static str)> {
    vec![
        (Relation::SelfUnit, "c01/k01/t01", "c01/k01/t01"),
        (Relation::Parent, "c01/k01/t01", "c01/k01"),
        (Relation::Child, "c01/k01/t01", "c01/k01/t01/v01"),
        (Relation::Ancestor, "c01/k01/t01", "c01"),
        (Relation::Descendant, "c01/k01", "c01/k01/t01/v01"),
        (Relation::Sibling, "c01/k01/t01", "c01/k01/t02"),
        (Relation::Cousin, "c01/k01/t01", "c01/k02/t01"),
    ]
}

#[tokio::test]
async fn every_role_relation_and_operation_on_member_records() {
    let f = common::store_for("c01").await;
    let (backend, store) = (&f.backend, &f.backend.store);
    let member = NewMember {
        name: "Li Wei".into(),
        birth_year: 1988,
        gender: Gender::Male,
        education: Education::College,
        joined_on: "2015-05-01".into(),
        status: MemberStatus::Full,
        phone: Some("+86 138 0000 0000".into()),
        id_number: Some("11010519491231002X".into()),
        categories: Vec::new(),
    };
    let create = "mutation($u: ID!) { createMember(input: { unit: $u, name: \"New\", \
        birthYear: 1990, gender: FEMALE, education: BACHELOR, joinedOn: \"2026-01-01\" }) { id } }";
    let update =
        "mutation($id: ID!) { updateMember(id: $id, input: { name: \"Renamed\" }) { id } }";
    let read = "query($id: ID!) { member(id: $id) { id name phone idNumber } }";
    let delete = "mutation($id: ID!) { deleteMember(id: $id) { id } }";
    let mut cells = 0;
    for (rel, me, other) in cases() {
        let (me_u, owner): (UnitId, UnitId) = (me.parse().unwrap(), other.parse().unwrap());
        assert_eq!(relation(&me_u, &owner), rel, "case {rel:?}");
        let record = store
            .create_member(owner.clone(), member.clone())
            .await
            .unwrap()
            .id
            .to_string();
        let in_subtree = matches!(
            rel,
            Relation::SelfUnit | Relation::Child | Relation::Descendant
        );
        let mut callers: Vec<(String, Option<String>, bool, bool, bool)> = vec![
            // (who, token, may read, may read sensitive fields, may write)
            ("anonymous".into(), None, false, false, false),
        ];
        for role in Role::ALL {
            let t = new_token().unwrap();
            store
                .add_user(token_hash(&t), me_u.clone(), role)
                .await
                .unwrap();
            let write = match role {
                Role::Viewer => false,
                Role::Clerk => rel == Relation::SelfUnit,
                Role::Supervisor | Role::Admin => in_subtree,
            };
            let sensitive = rel == Relation::SelfUnit && role >= Role::Clerk;
            callers.push((format!("{role}"), Some(t), in_subtree, sensitive, write));
        }
        for (who, token, may_read, may_see_sensitive, may_write) in callers {
            let t = token.as_deref();
            let cell = format!("{who} at {me} on {other} ({rel:?})");

            let r = query(backend, t, read, json!({ "id": record })).await;
            let seen = !r["data"]["member"].is_null();
            assert_eq!(seen, may_read, "read: {cell}: {r}");
            if seen {
                let shown = r["data"]["member"]["phone"] == "+86 138 0000 0000"
                    && r["data"]["member"]["idNumber"] == "11010519491231002X";
                let hidden = r["data"]["member"]["phone"].is_null()
                    && r["data"]["member"]["idNumber"].is_null();
                assert!(
                    if may_see_sensitive { shown } else { hidden },
                    "sensitive: {cell}: {r}"
                );
                cells += 1;
            }

            let r = query(backend, t, create, json!({ "u": other })).await;
            assert_write(&r, "createMember", may_write, t.is_some(), &cell);
            let r = query(backend, t, update, json!({ "id": record })).await;
            assert_write(&r, "updateMember", may_write, t.is_some(), &cell);
            let doomed = store
                .create_member(owner.clone(), member.clone())
                .await
                .unwrap()
                .id;
            let r = query(backend, t, delete, json!({ "id": doomed.to_string() })).await;
            assert_write(&r, "deleteMember", may_write, t.is_some(), &cell);
            assert_eq!(
                backend.reader.member(&doomed).unwrap().is_none(),
                may_write,
                "delete: {cell}"
            );
            cells += 4;
        }
    }
    // 7 relations x (anonymous + 4 roles) x 4 operations, and the sensitive fields of every
    // record a caller may read (3 relations x 4 roles).
    assert_eq!(cells, 7 * 5 * 4 + 3 * 4);
}

/// One record kind in the matrix: how to create one (as GraphQL input fields after
/// `unit: $u`), a plain field to update, a supervisory update if the kind has supervisory
/// fields, and a sensitive field with the value created, if it has one.
struct Kind {
    name: &'static str,
    create: String,
    update: &'static str,
    supervisory: Option<&'static str>,
    sensitive: Option<(&'static str, &'static str)>,
    public: bool,
    addressed_down: bool,
    /// Its supervisory fields are reviews, written only from strictly above.
    review: bool,
}

/// Every kind; disbursements are paid out of `programme` (the root's, so above every
/// unit).
fn kinds(programme: &str) -> Vec<Kind> {
    let k = |name, create: &str, update, supervisory, sensitive| Kind {
        name,
        create: create.to_owned(),
        update,
        supervisory,
        sensitive,
        public: name == "Disclosure",
        addressed_down: matches!(name, "Directive" | "FundProgramme"),
        review: name == "Report",
    };
    let disbursement = format!(
        r#"programme: "{programme}", recipient: "Li Ming", recipientIdNumber: "11010519491231002X", amount: 800, method: BANK_TRANSFER, status: PLANNED"#
    );
    vec![
        k(
            "FundProgramme",
            r#"name: "Farmland subsidy", year: 2026, total: 500000"#,
            r#"purpose: "Grain""#,
            None,
            None,
        ),
        k(
            "Disbursement",
            &disbursement,
            "status: PAID",
            None,
            Some(("recipientIdNumber", "11010519491231002X")),
        ),
        k(
            "Activist",
            r#"name: "Zhao Lei", stage: ACTIVIST, since: "2026-01-05", phone: "139 1234 5678""#,
            r#"name: "Zhao Lei (corrected)""#,
            None,
            Some(("phone", "139 1234 5678")),
        ),
        k(
            "CadrePost",
            r#"post: SECRETARY, holder: "Wu Gang", selection: DIRECT_ELECTION, termStart: "2024-01-01""#,
            r#"holder: "Wu Gang Jr""#,
            None,
            None,
        ),
        k(
            "Meeting",
            r#"kind: PARTY_LECTURE, heldOn: "2026-03-01", attendance: 18"#,
            r#"summary: "On the new rules""#,
            None,
            None,
        ),
        k(
            "Appraisal",
            r#"kind: DEMOCRATIC_APPRAISAL, year: 2026, subject: "Members of the branch""#,
            r#"heldOn: "2026-12-01""#,
            Some("result: EXCELLENT, outcome: NO_ACTION"),
            None,
        ),
        k(
            "Project",
            r#"name: "Irrigation", category: AGRICULTURE, status: PLANNED, startedOn: "2026-02-01""#,
            "status: IN_PROGRESS",
            None,
            None,
        ),
        k(
            "CollectiveAsset",
            r#"name: "Fish pond", category: RESOURCES, value: 120000, recordedOn: "2026-01-01""#,
            r#"managedBy: "Cooperative""#,
            None,
            None,
        ),
        k(
            "Disclosure",
            r#"title: "Subsidy list", category: FUNDS, publishedOn: "2026-01-10", body: "..." "#,
            r#"title: "Subsidy list (revised)""#,
            None,
            None,
        ),
        k(
            "Complaint",
            r#"subject: "Road", body: "Potholes", filedOn: "2026-01-02", dueOn: "2026-02-01", complainant: "Zhang San""#,
            r#"subject: "Road repair""#,
            // Answered but left open: an answered complaint is closed to its unit's plain
            // edits (schema's rules test that), which would make later cells depend on
            // the order the callers run in.
            Some(r#"response: "Repaired", respondedOn: "2026-01-20""#),
            Some(("complainant", "Zhang San")),
        ),
        k(
            "Directive",
            r#"title: "Spring planting", body: "...", issuedOn: "2026-02-01""#,
            r#"deadline: "2026-04-01""#,
            None,
            None,
        ),
        k(
            "Report",
            r#"kind: QUARTERLY_ANALYSIS, period: "2026Q1", submittedOn: "2026-04-02", body: "...""#,
            r#"body: "Revised""#,
            Some("review: ACCEPTED"),
            None,
        ),
    ]
}

#[tokio::test]
async fn every_role_relation_and_operation_on_every_other_record_kind() {
    let f = common::store_for("c01").await;
    let (backend, store) = (&f.backend, &f.backend.store);
    let city: UnitId = "c01".parse().unwrap();
    let admin = new_token().unwrap();
    store
        .add_user(token_hash(&admin), city, Role::Admin)
        .await
        .unwrap();
    // A token per (unit, role), made once, for the callers and the units they act on (whose
    // admins seed the records: only the owning unit's users write a sensitive field).
    let mut tokens = std::collections::HashMap::new();
    for unit in cases().into_iter().flat_map(|(_, me, other)| [me, other]) {
        for role in Role::ALL {
            if let std::collections::hash_map::Entry::Vacant(slot) = tokens.entry((unit, role)) {
                let t = new_token().unwrap();
                store
                    .add_user(token_hash(&t), unit.parse().unwrap(), role)
                    .await
                    .unwrap();
                slot.insert(t);
            }
        }
    }
    let r = query(
        backend,
        Some(&admin),
        r#"mutation { createFundProgramme(input: { unit: "c01", name: "Subsidy", year: 2026,
            total: 1000 }) { id } }"#,
        json!({}),
    )
    .await;
    let programme = r["data"]["createFundProgramme"]["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("funds:")
        .to_owned();
    let mut cells = 0;
    let mut expected = 0;
    for kind in kinds(&programme) {
        let n = kind.name;
        let create = format!(
            "mutation($u: ID!) {{ create{n}(input: {{ unit: $u, {} }}) {{ id }} }}",
            kind.create
        );
        let update = format!(
            "mutation($id: ID!) {{ update{n}(id: $id, input: {{ {} }}) {{ id }} }}",
            kind.update
        );
        let delete = format!("mutation($id: ID!) {{ delete{n}(id: $id) {{ id }} }}");
        let supervise = kind.supervisory.map(|s| {
            format!("mutation($id: ID!) {{ update{n}(id: $id, input: {{ {s} }}) {{ id }} }}")
        });
        let sensitive_field = kind.sensitive.map_or("id", |(f, _)| f);
        let read = format!(
            "query($id: ID!) {{ record(id: $id) {{ __typename ... on {n} {{ id {sensitive_field} }} }} }}"
        );
        // A create naming the kind's sensitive field is written only by those who read it.
        let creates_sensitive = kind.sensitive.is_some_and(|(f, _)| kind.create.contains(f));
        for (rel, me, other) in cases() {
            let owner_admin = tokens[&(other, Role::Admin)].clone();
            let r = query(backend, Some(&owner_admin), &create, json!({ "u": other })).await;
            let record = r["data"][format!("create{n}")]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("seed {n}: {r}"))
                .to_owned();
            let in_subtree = matches!(
                rel,
                Relation::SelfUnit | Relation::Child | Relation::Descendant
            );
            let addressed =
                kind.addressed_down && matches!(rel, Relation::Parent | Relation::Ancestor);
            let mut callers: Vec<(String, Option<String>, bool, bool, bool, bool)> = vec![
                // (who, token, read, sensitive, write, supervisory write)
                ("anonymous".into(), None, kind.public, false, false, false),
            ];
            for role in Role::ALL {
                // What is addressed down the tree (directives, fund programmes) acts on the
                // subtree: a supervisor's, not a clerk's.
                let write = match role {
                    Role::Viewer => false,
                    Role::Clerk => rel == Relation::SelfUnit && !kind.addressed_down,
                    Role::Supervisor | Role::Admin => in_subtree,
                };
                callers.push((
                    format!("{role}"),
                    Some(tokens[&(me, role)].clone()),
                    kind.public || in_subtree || addressed,
                    rel == Relation::SelfUnit && role >= Role::Clerk,
                    write,
                    role >= Role::Supervisor
                        && if kind.review {
                            matches!(rel, Relation::Child | Relation::Descendant)
                        } else {
                            in_subtree
                        },
                ));
            }
            for (who, token, may_read, may_see, may_write, may_supervise) in callers {
                let t = token.as_deref();
                let cell = format!("{n}: {who} at {me} on {other} ({rel:?})");
                let r = query(backend, t, &read, json!({ "id": record })).await;
                assert!(r["errors"].is_null(), "read: {cell}: {r}");
                let seen = !r["data"]["record"].is_null();
                assert_eq!(seen, may_read, "read: {cell}: {r}");
                cells += 1;
                expected += 1;
                if let (true, Some((field, value))) = (seen, kind.sensitive) {
                    let got = &r["data"]["record"][field];
                    if may_see {
                        assert_eq!(got, value, "sensitive: {cell}: {r}");
                    } else {
                        assert!(got.is_null(), "sensitive: {cell}: {r}");
                    }
                    cells += 1;
                }
                let may_create = may_write && (may_see || !creates_sensitive);
                let r = query(backend, t, &create, json!({ "u": other })).await;
                assert_write(&r, &format!("create{n}"), may_create, t.is_some(), &cell);
                let r = query(backend, t, &update, json!({ "id": record })).await;
                assert_write(&r, &format!("update{n}"), may_write, t.is_some(), &cell);
                cells += 2;
                expected += 2;
                if let Some(s) = &supervise {
                    let r = query(backend, t, s, json!({ "id": record })).await;
                    assert_write(&r, &format!("update{n}"), may_supervise, t.is_some(), &cell);
                    cells += 1;
                    expected += 1;
                }
                // Complaints, reports and appraisals (the kinds with supervisory fields) are
                // not removed at all (no mutation).
                if matches!(n, "Complaint" | "Report" | "Appraisal") {
                    continue;
                }
                let r = query(backend, Some(&owner_admin), &create, json!({ "u": other })).await;
                let doomed = r["data"][format!("create{n}")]["id"].clone();
                let may_delete = if supervise.is_some() {
                    may_supervise
                } else {
                    may_write
                };
                let r = query(backend, t, &delete, json!({ "id": doomed })).await;
                assert_write(&r, &format!("delete{n}"), may_delete, t.is_some(), &cell);
                let left = query(backend, Some(&admin), &read, json!({ "id": doomed })).await;
                assert_eq!(
                    left["data"]["record"].is_null(),
                    may_delete,
                    "delete: {cell}: {left}"
                );
                cells += 1;
                expected += 1;
            }
        }
    }
    // Every kind: 7 relations x (anonymous + 4 roles) x (read, create, update), a delete for
    // the 9 kinds that have one, a supervisory update for the 3 kinds that have one; the
    // sensitive field of every readable record of the 3 kinds that have one (3 relations x
    // 4 roles each).
    assert_eq!(expected, 12 * 7 * 5 * 3 + 9 * 7 * 5 + 3 * 7 * 5);
    assert_eq!(cells, expected + 3 * 3 * 4);
}

#[tokio::test]
async fn only_admins_at_or_above_manage_users() {
    let f = common::store_for("c01").await;
    let (backend, store) = (&f.backend, &f.backend.store);
    let create = "mutation($u: ID!) { createUserToken(input: { unit: $u, role: CLERK,
        name: \"Chen Jing\" }) { token name role } }";
    let revoke = "mutation($u: ID!) { revokeUserTokens(name: \"Chen Jing\", unit: $u) }";
    let me_query = "{ me { role unit { id } } }";
    let list = "query($u: ID!) { users(unit: $u) { unit role name } }";
    let mut cells = 0;
    for (rel, me, other) in cases() {
        let mut callers: Vec<(String, Option<String>, bool)> =
            vec![("anonymous".into(), None, false)];
        for role in Role::ALL {
            let t = new_token().unwrap();
            store
                .add_user(token_hash(&t), me.parse().unwrap(), role)
                .await
                .unwrap();
            let allowed = role == Role::Admin
                && matches!(
                    rel,
                    Relation::SelfUnit | Relation::Child | Relation::Descendant
                );
            callers.push((format!("{role}"), Some(t), allowed));
        }
        for (who, token, allowed) in callers {
            let t = token.as_deref();
            let cell = format!("{who} at {me} for {other} ({rel:?})");
            let r = query(backend, t, create, json!({ "u": other })).await;
            assert_write(&r, "createUserToken", allowed, t.is_some(), &cell);
            // The listing follows the same rule, and names the user just made.
            let l = query(backend, t, list, json!({ "u": other })).await;
            if allowed {
                let listed = l["data"]["users"].as_array().cloned().unwrap_or_default();
                assert!(
                    listed.iter().any(|u| u["name"] == "Chen Jing"
                        && u["unit"] == other
                        && u["role"] == "CLERK"),
                    "users: {cell}: {l}"
                );
                assert!(
                    listed
                        .iter()
                        .all(|u| u["unit"].as_str().is_some_and(|x| x.starts_with(other))),
                    "users outside {other}: {cell}: {l}"
                );
            } else {
                let want = if t.is_some() {
                    "FORBIDDEN"
                } else {
                    "UNAUTHENTICATED"
                };
                assert_eq!(code(&l), want, "users: {cell}: {l}");
            }
            let r2 = query(backend, t, revoke, json!({ "u": other })).await;
            assert_eq!(r2["errors"].is_null(), allowed, "revoke: {cell}: {r2}");
            if !allowed {
                let want = if t.is_some() {
                    "FORBIDDEN"
                } else {
                    "UNAUTHENTICATED"
                };
                assert_eq!(code(&r2), want, "revoke: {cell}: {r2}");
            }
            cells += 3;
            if allowed {
                // The token worked until it was revoked, and only then stopped.
                assert_eq!(r2["data"]["revokeUserTokens"], 1, "{cell}: {r2}");
                let token = r["data"]["createUserToken"]["token"].as_str().unwrap();
                let me_r = query(backend, Some(token), me_query, json!({})).await;
                assert_eq!(code(&me_r), "UNAUTHENTICATED", "{cell}: {me_r}");
            }
        }
    }
    assert_eq!(cells, 7 * 5 * 3);

    // A created token acts for its unit and role, and names its user in what it writes.
    let admin = new_token().unwrap();
    store
        .add_user(token_hash(&admin), "c01".parse().unwrap(), Role::Admin)
        .await
        .unwrap();
    let r = query(backend, Some(&admin), create, json!({ "u": "c01/k01" })).await;
    let token = r["data"]["createUserToken"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = query(backend, Some(&token), me_query, json!({})).await;
    assert_eq!(
        r["data"]["me"],
        json!({ "role": "CLERK", "unit": { "id": "c01/k01" } })
    );
    let r = query(
        backend,
        Some(&token),
        "mutation { createMeeting(input: { unit: \"c01/k01\", kind: STUDY_SESSION,
            heldOn: \"2026-03-01\", attendance: 7 }) { created { user } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        r["data"]["createMeeting"]["created"]["user"], "Chen Jing",
        "{r}"
    );
    // A name that is none is refused with its code, and no token is made.
    let r = query(
        backend,
        Some(&admin),
        "mutation { createUserToken(input: { unit: \"c01\", role: VIEWER, name: \"  \" }) { token } }",
        json!({}),
    )
    .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
}
