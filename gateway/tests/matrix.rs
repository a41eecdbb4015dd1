//! The visibility and write matrix through GraphQL, for member records: every role (and
//! anonymous) x every relation between the caller's unit and the record's unit x read,
//! create and update, each cell asserted allowed or refused; and, where the record is
//! readable, whether its sensitive fields (phone, identity number) are shown. The rules have the same matrix
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
    let dir = tempfile::tempdir().unwrap();
    let city: UnitId = "c01".parse().unwrap();
    let (store, reader, _thread) =
        grassroots_node::store::open(&dir.path().join("s.redb"), city.clone()).unwrap();
    let backend = Backend {
        node_unit: city,
        store: store.clone(),
        reader,
    };
    let member = NewMember {
        name: "Li Wei".into(),
        birth_year: 1988,
        gender: Gender::Male,
        education: Education::College,
        joined_on: "2015-05-01".into(),
        status: MemberStatus::Full,
        phone: Some("+86 138 0000 0000".into()),
        id_number: Some("11010519491231002X".into()),
    };
    let create = "mutation($u: ID!) { createMember(input: { unit: $u, name: \"New\", \
        birthYear: 1990, gender: FEMALE, education: BACHELOR, joinedOn: \"2026-01-01\" }) { id } }";
    let update =
        "mutation($id: ID!) { updateMember(id: $id, input: { name: \"Renamed\" }) { id } }";
    let read = "query($id: ID!) { member(id: $id) { id name phone idNumber } }";
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

            let r = query(&backend, t, read, json!({ "id": record })).await;
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

            let r = query(&backend, t, create, json!({ "u": other })).await;
            assert_write(&r, "createMember", may_write, t.is_some(), &cell);
            let r = query(&backend, t, update, json!({ "id": record })).await;
            assert_write(&r, "updateMember", may_write, t.is_some(), &cell);
            cells += 3;
        }
    }
    // 7 relations x (anonymous + 4 roles) x 3 operations, and the sensitive fields of every
    // record a caller may read (3 relations x 4 roles).
    assert_eq!(cells, 7 * 5 * 3 + 3 * 4);
}
