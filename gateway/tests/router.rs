//! The gateway through `Router::oneshot`: routes, limits, error codes, the SDL snapshot.

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use grassroots_gateway::{GatewayOptions, build_schema, router, router_with};
use grassroots_node::auth::{new_token, token_hash};
use grassroots_schema::{Role, UnitId};
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;
use common::{Fixture, fixture, store_for, token_for};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn post(f: &Fixture, token: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
    post_with(f, GatewayOptions::default(), token, body).await
}

async fn post_with(
    f: &Fixture,
    options: GatewayOptions,
    token: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = Request::post("/graphql").header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = router_with(f.backend.clone(), options)
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn query(f: &Fixture, token: Option<&str>, q: &str) -> Value {
    post(
        f,
        token,
        serde_json::to_vec(&json!({ "query": q })).unwrap(),
    )
    .await
    .1
}

/// What async-graphql works out before anything runs, and would work out for ever or wrap
/// on: fragments spreading others three at a time (3^29 visits in 1.5 KB, done
/// synchronously, where no timeout cuts them; also built on an unknown fragment, or on
/// fields of many directives), fragments spreading each other, a chain of
/// fragments five thousand long, and page sizes multiplied past 2^64 (a panic in a debug
/// build, a wrapped sum passing the limit in a release one). Each is refused with its code;
/// a query spreading fragments within the limits runs. (Run on a worker of its own: the
/// bomb would hold a thread it runs on.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_spread_out_and_pages_multiplied_are_refused_before_they_run() {
    let f = fixture().await;
    let admin = token_for(&f, "c01/k01", Role::Admin).await;
    let ask = |token: Option<String>, q: String| {
        let backend = f.backend.clone();
        async move {
            let body = serde_json::to_vec(&json!({ "query": q })).unwrap();
            let mut req =
                Request::post("/graphql").header(header::CONTENT_TYPE, "application/json");
            if let Some(t) = token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let answer = tokio::spawn(async move {
                let resp = router(backend)
                    .oneshot(req.body(Body::from(body)).unwrap())
                    .await
                    .unwrap();
                let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null)
            });
            tokio::time::timeout(std::time::Duration::from_secs(20), answer)
                .await
                .expect("answered within 20 s")
                .expect("answered, not panicked")
        }
    };
    let mut bomb = "fragment F0 on Unit { id }\n".to_owned();
    for i in 1..30 {
        let p = i - 1;
        bomb.push_str(&format!(
            "fragment F{i} on Unit {{ ...F{p} ...F{p} ...F{p} }}\n"
        ));
    }
    bomb.push_str("{ nodeUnit { ...F29 } }");
    let r = ask(None, bomb.clone()).await;
    assert_eq!(code(&r), "QUERY_TOO_COMPLEX", "{r}");
    // The same built on a fragment it does not define (which async-graphql walks past).
    let r = ask(
        None,
        bomb.replace("F0 on Unit { id }", "F0 on Unit { ...Missing }"),
    )
    .await;
    assert_eq!(code(&r), "GRAPHQL_VALIDATION_FAILED", "{r}");
    // Few fields, each with a thousand directives, spread ten times: walked at each spread.
    let flags = "@include(if: true) ".repeat(1_000);
    let many = format!(
        "fragment D on Unit {{ id {flags} }} fragment T on Unit {{ {} }} {{ nodeUnit {{ ...T }} }}",
        "...D ".repeat(10)
    );
    let r = ask(None, many).await;
    assert_eq!(code(&r), "QUERY_TOO_COMPLEX", "{r}");
    let cycle = "fragment A on Unit { ...B ...B } fragment B on Unit { ...A ...A } \
                 { nodeUnit { ...A } }";
    let r = ask(None, cycle.to_owned()).await;
    assert_eq!(code(&r), "GRAPHQL_VALIDATION_FAILED", "{r}");
    let mut chain: String = (0..5_000)
        .map(|i| format!("fragment F{i} on Unit {{ ...F{} }}\n", i + 1))
        .collect();
    chain.push_str("fragment F5000 on Unit { id }\n{ nodeUnit { ...F0 } }");
    let r = ask(None, chain).await;
    assert_eq!(code(&r), "QUERY_TOO_DEEP", "{r}");
    // 100 x 1,000 units a level, four levels.
    let mut pages = "id".to_owned();
    for _ in 0..4 {
        pages = format!(
            "directiveReceipts(first: 100) {{ nodes {{ missing(first: 1000) {{ {pages} }} }} }}"
        );
    }
    let r = ask(Some(admin.clone()), format!("{{ nodeUnit {{ {pages} }} }}")).await;
    assert_eq!(code(&r), "QUERY_TOO_COMPLEX", "{r}");
    // Within the limits, fragments spread several times run.
    let fine = "fragment U on Unit { id name } fragment P on Unit { ...U parent { ...U } } \
                { nodeUnit { ...P children { ...P } } }";
    let r = ask(None, fine.to_owned()).await;
    assert!(r.get("errors").is_none(), "{r}");
    assert_eq!(r["data"]["nodeUnit"]["id"], "c01/k01", "{r}");
}

#[tokio::test]
async fn graphiql_and_assets_are_served_without_a_cdn() {
    let f = fixture().await;
    let resp = router(f.backend.clone())
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html =
        String::from_utf8(to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
    assert!(html.contains("/assets/graphiql.min.js"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "page loads something remote"
    );
    for asset in [
        "graphiql.min.js",
        "graphiql.min.css",
        "react.production.min.js",
        "react-dom.production.min.js",
    ] {
        let resp = router(f.backend.clone())
            .oneshot(
                Request::get(format!("/assets/{asset}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{asset}");
        assert!(to_bytes(resp.into_body(), 4 << 20).await.unwrap().len() > 1000);
    }
    let resp = router(f.backend.clone())
        .oneshot(Request::get("/assets/nope.js").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = router(f.backend.clone())
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_requests_get_codes_not_crashes() {
    let f = fixture().await;
    let (status, body) = post(&f, None, b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let (status, _) = post(&f, None, vec![b' '; 300 * 1024]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, body) = post(
        &f,
        Some("grt_forged"),
        serde_json::to_vec(&json!({"query": "{ me { role } }"})).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    let r = query(&f, None, "{ nodeUnit { nmae } }").await;
    assert!(r["errors"][0]["message"].as_str().unwrap().contains("nmae"));
    assert!(
        !r.to_string().contains("Did you mean"),
        "suggestions leak the schema: {r}"
    );
    let deep = format!(
        "{{ nodeUnit {} id {} }}",
        "{ parent ".repeat(20),
        "}".repeat(20)
    );
    let r = query(&f, None, &deep).await;
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nested too deep"),
        "{r}"
    );
}

fn code(r: &Value) -> &str {
    r["errors"][0]["extensions"]["code"].as_str().unwrap_or("")
}

/// Each limit of the gateway refuses what goes over it with its documented code, and none
/// of them answers with data.
#[tokio::test]
async fn each_limit_is_refused_with_its_code() {
    let f = fixture().await;
    let admin = token_for(&f, "c01/k01", Role::Admin).await;
    let body = |q: &str| serde_json::to_vec(&json!({ "query": q })).unwrap();

    // Depth: 20 nested parents is over the limit of 16.
    let deep = format!(
        "{{ nodeUnit {} id {} }}",
        "{ parent ".repeat(20),
        "}".repeat(20)
    );
    let r = query(&f, None, &deep).await;
    assert_eq!(code(&r), "QUERY_TOO_DEEP", "{r}");
    assert!(r["data"].is_null(), "{r}");
    // Nesting far past any limit, within the body limit: the parser recurses per level, and
    // must refuse it, not overflow the stack and abort the node.
    for (before, open) in [
        ("{ nodeUnit ", "{a"),
        ("{ unit(id: ", "["),
        ("{ unit(id: ", "{a:"),
    ] {
        let text = format!("{before}{}", open.repeat(60_000));
        let r = query(&f, None, &text).await;
        let message = r["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{open}: an error, got {r}");
        assert!(r["data"].is_null(), "{open}");
    }
    // Closed, so that the parser would get through it and build it level by level: refused
    // before it is parsed. Brackets in strings and comments do not count.
    let closed = format!(
        "{{ unit(id: {}{}) {{ id }} }}",
        "[".repeat(60_000),
        "]".repeat(60_000)
    );
    let r = query(&f, None, &closed).await;
    assert_eq!(code(&r), "GRAPHQL_PARSE_FAILED", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nests brackets deeper than 64"),
        "{r}"
    );
    let quoted = format!(
        "{{ unit(id: \"{}\") {{ id }} # {}\n }}",
        "[".repeat(100),
        "{".repeat(100)
    );
    let r = query(&f, None, &quoted).await;
    assert!(
        !r.to_string().contains("nests brackets deeper"),
        "brackets in a string or a comment counted: {r}"
    );
    let r = query(&f, None, "{ nodeUnit { id } }").await;
    assert!(r.get("errors").is_none(), "still answering: {r}");

    // Complexity: an alias flood over the largest page. One alias is fine; 200 of them
    // multiply the page size past the limit.
    let one = "{ nodeUnit { members(first: 100) { nodes { name } } } }";
    let r = query(&f, Some(&admin), one).await;
    assert!(r.get("errors").is_none(), "{r}");
    let flood: String = (0..200)
        .map(|i| format!("a{i}: members(first: 100) {{ nodes {{ name birthYear }} }} "))
        .collect();
    let r = query(&f, Some(&admin), &format!("{{ nodeUnit {{ {flood} }} }}")).await;
    assert_eq!(code(&r), "QUERY_TOO_COMPLEX", "{r}");
    assert!(r["data"].is_null(), "{r}");
    // Without a token the limit is lower: what a token may ask, anyone may not.
    let some: String = (0..30)
        .map(|i| format!("a{i}: members(first: 100) {{ nodes {{ name }} }} "))
        .collect();
    let some = format!("{{ nodeUnit {{ {some} }} }}");
    let r = query(&f, Some(&admin), &some).await;
    assert!(r.get("errors").is_none(), "with a token: {r}");
    let r = query(&f, None, &some).await;
    assert_eq!(code(&r), "QUERY_TOO_COMPLEX", "without one: {r}");
    // The subtree-wide figures read a row per unit: a flood of them is refused too.
    for field in ["balance(figure: MEMBERS) { mean }", "targets { met }"] {
        let r = query(&f, Some(&admin), &format!("{{ nodeUnit {{ {field} }} }}")).await;
        assert!(r.get("errors").is_none(), "{field}: {r}");
        let flood: String = (0..250).map(|i| format!("a{i}: {field} ")).collect();
        let r = query(&f, Some(&admin), &format!("{{ nodeUnit {{ {flood} }} }}")).await;
        assert_eq!(code(&r), "QUERY_TOO_COMPLEX", "{field}: {r}");
        assert!(r["data"].is_null(), "{field}: {r}");
    }

    // Units reached back and forth through `children` and `parent` multiply by the fan-out
    // at each level, which static complexity cannot see: 30 townships, four levels down,
    // would be 810,000 units. A tree read down is fine.
    for i in 0..30 {
        f.backend
            .store
            .set_unit_details(
                format!("c01/k01/t{i:02}").parse().unwrap(),
                grassroots_schema::UnitDetails {
                    name: Some(format!("Township {i}")),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let r = query(&f, None, "{ nodeUnit { children { id parent { id } } } }").await;
    assert_eq!(
        r["data"]["nodeUnit"]["children"].as_array().map(Vec::len),
        Some(30),
        "{r}"
    );
    let back_and_forth = "{ nodeUnit { children { parent { children { parent { children { \
        parent { children { id } } } } } } } } }";
    let r = query(&f, None, back_and_forth).await;
    assert_eq!(code(&r), "QUERY_TOO_COMPLEX", "{r}");
    // Refused while it runs, and refused whole: no part of the tree it reached, one error.
    assert!(r["data"].is_null(), "{r}");
    assert_eq!(r["errors"].as_array().map(Vec::len), Some(1), "{r}");

    // One operation per request: a JSON batch is refused whole.
    let batch = serde_json::to_vec(
        &json!([{ "query": "{ me { role } }" }, { "query": "{ me { role } }" }]),
    )
    .unwrap();
    let (status, r) = post(&f, None, batch).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&r), "BATCH_NOT_SUPPORTED", "{r}");
    assert!(r["data"].is_null(), "{r}");
    // Two operations in one document need an operation name, and only that one runs.
    let two = "query A { me { role } } query B { nodeUnit { id } }";
    let r = query(&f, None, two).await;
    assert_eq!(code(&r), "GRAPHQL_VALIDATION_FAILED", "{r}");
    let (_, r) = post(
        &f,
        None,
        serde_json::to_vec(&json!({ "query": two, "operationName": "B" })).unwrap(),
    )
    .await;
    assert_eq!(r["data"], json!({ "nodeUnit": { "id": "c01/k01" } }), "{r}");

    // Body size: over 256 KiB, even when it is a valid query padded with spaces.
    let big = body(&format!("{{ me {{ role }} {} }}", " ".repeat(300 * 1024)));
    let (status, r) = post(&f, None, big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(&r), "PAYLOAD_TOO_LARGE", "{r}");

    // A body that is not declared JSON (what a cross-site form can send) is refused.
    let resp = router(f.backend.clone())
        .oneshot(
            Request::post("/graphql")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(body("{ me { role } }")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Syntax, and fields the schema does not have (no suggestions).
    let r = query(&f, None, "{ nodeUnit { id ").await;
    assert_eq!(code(&r), "GRAPHQL_PARSE_FAILED", "{r}");
    let r = query(&f, None, "{ nodeUnit { nmae } }").await;
    assert_eq!(code(&r), "GRAPHQL_VALIDATION_FAILED", "{r}");
    assert!(!r.to_string().contains("Did you mean"), "{r}");
    // The same bad query again (the parsed-query cache must not change the answer).
    let r = query(&f, None, "{ nodeUnit { id ").await;
    assert_eq!(code(&r), "GRAPHQL_PARSE_FAILED", "{r}");

    // Introspection: on by default (GraphiQL needs it), refused when switched off.
    let intro = body("{ __schema { queryType { name } } }");
    let (_, r) = post(&f, None, intro.clone()).await;
    assert_eq!(r["data"]["__schema"]["queryType"]["name"], "Query", "{r}");
    let off = GatewayOptions {
        introspection: false,
        ..GatewayOptions::default()
    };
    let (_, r) = post_with(&f, off, None, intro).await;
    assert_eq!(code(&r), "INTROSPECTION_DISABLED", "{r}");
    let hidden =
        "{ ...F } fragment F on Query { ... on Query { __type(name: \"Unit\") { name } } }";
    let (_, r) = post_with(&f, off, None, body(hidden)).await;
    assert_eq!(code(&r), "INTROSPECTION_DISABLED", "{r}");
    let (_, r) = post_with(&f, off, None, body("{ __typename nodeUnit { id } }")).await;
    assert_eq!(r["data"]["__typename"], "Query", "{r}");
    assert_eq!(r["data"]["nodeUnit"]["id"], "c01/k01", "{r}");
}

#[tokio::test]
async fn page_size_is_capped_and_roles_apply() {
    let f = fixture().await;
    let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
    let r = query(
        &f,
        Some(&viewer),
        "{ nodeUnit { members(first: 101) { totalCount } } }",
    )
    .await;
    assert_eq!(
        r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{r}"
    );
    let r = query(
        &f,
        Some(&viewer),
        "{ nodeUnit { members(first: 100) { totalCount } } }",
    )
    .await;
    assert_eq!(r["data"]["nodeUnit"]["members"]["totalCount"], 0, "{r}");
    let r = query(&f, Some(&viewer), "{ me { role unit { id level } } }").await;
    assert_eq!(
        r["data"]["me"],
        json!({ "role": "VIEWER", "unit": { "id": "c01/k01", "level": "COUNTY" } })
    );
    let r = query(&f, None, "{ me { role unit { id } } }").await;
    assert_eq!(r["data"]["me"], json!({ "role": null, "unit": null }));
}

#[tokio::test]
async fn indicators_come_from_the_rollups_and_follow_visibility() {
    use grassroots_schema::{Education, Gender, MemberStatus, NewMember};
    let f = fixture().await;
    let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
    let outsider = token_for(&f, "c01/k02", Role::Admin).await;
    let store = &f.backend.store;
    // County: 2 members; its township: 3, one young with a bachelor's who joined in 2026.
    let m = |birth: i64, edu: Education, joined: &str| NewMember {
        name: "Someone".into(),
        birth_year: birth,
        gender: Gender::Female,
        education: edu,
        joined_on: joined.into(),
        status: MemberStatus::Full,
        phone: None,
        id_number: None,
        categories: Vec::new(),
    };
    let (county, township): (UnitId, UnitId) =
        ("c01/k01".parse().unwrap(), "c01/k01/t01".parse().unwrap());
    for (unit, member) in [
        (&county, m(1950, Education::Primary, "1980-01-01")),
        (&county, m(1970, Education::College, "2000-01-01")),
        (&township, m(1999, Education::Bachelor, "2026-04-01")),
        (&township, m(1960, Education::SeniorSecondary, "1990-01-01")),
        (&township, m(1985, Education::Primary, "2026-04-01")),
    ] {
        store.create_member(unit.clone(), member).await.unwrap();
    }
    let q = r#"{ nodeUnit { indicators(year: 2026) { members under35 aged60Plus higherEducation
        newYoungHigherEducation under35Share byEducation { education count } } } }"#;
    let r = query(&f, Some(&viewer), q).await;
    let ind = &r["data"]["nodeUnit"]["indicators"];
    assert_eq!(ind["members"], 5, "{r}");
    assert_eq!(ind["under35"], 1, "{r}");
    assert_eq!(ind["aged60Plus"], 2, "{r}");
    assert_eq!(ind["higherEducation"], 2, "{r}");
    assert_eq!(ind["newYoungHigherEducation"], 1, "{r}");
    assert_eq!(ind["byEducation"].as_array().unwrap().len(), 7, "{r}");
    assert!(
        (ind["under35Share"].as_f64().unwrap() - 0.2).abs() < 1e-9,
        "{r}"
    );
    // The township's own row counts only its three members.
    assert_eq!(f.backend.reader.rollup(&township).unwrap().members, 3);
    // Another county's admin and anonymous callers see no figures.
    for token in [Some(outsider.as_str()), None] {
        let r = query(&f, token, "{ nodeUnit { indicators { members } } }").await;
        assert_eq!(r["data"]["nodeUnit"]["indicators"], Value::Null, "{r}");
    }
    let r = query(
        &f,
        Some(&viewer),
        "{ nodeUnit { indicators(year: 3000) { members } } }",
    )
    .await;
    assert_eq!(
        r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{r}"
    );
}

/// The published SDL is reviewed like code: this fails when the schema drifts from
/// `schema/schema.graphql`. Regenerate with `UPDATE_SDL=1 cargo test -p grassroots-gateway`.
#[tokio::test]
async fn sdl_snapshot_is_current() {
    let f = fixture().await;
    let sdl = build_schema(f.backend.clone()).sdl();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/schema.graphql");
    if std::env::var_os("UPDATE_SDL").is_some() {
        std::fs::write(&path, &sdl).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == sdl,
        "schema/schema.graphql is stale: rerun with UPDATE_SDL=1 and review the diff"
    );
}

/// The seed's target "1 new member a year per village, under 35 with higher education":
/// met or missed over the subtree, with the villages that miss it, from the roll-ups.
#[tokio::test]
async fn targets_name_the_villages_that_miss_them() {
    use grassroots_schema::{Education, Gender, MemberStatus, NewMember};
    let f = fixture().await;
    let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
    let outsider = token_for(&f, "c01/k02", Role::Admin).await;
    let m = |birth: i64, edu: Education, joined: &str| NewMember {
        name: "Someone".into(),
        birth_year: birth,
        gender: Gender::Male,
        education: edu,
        joined_on: joined.into(),
        status: MemberStatus::Probationary,
        phone: None,
        id_number: None,
        categories: Vec::new(),
    };
    // v01 meets it; v02 only has an old recruit, t02/v01 a young one without a degree, and
    // the county's own member is not a village's.
    for (unit, member) in [
        ("c01/k01/t01/v01", m(2000, Education::College, "2026-03-01")),
        (
            "c01/k01/t01/v02",
            m(1990, Education::Bachelor, "2026-03-01"),
        ),
        (
            "c01/k01/t02/v01",
            m(2001, Education::SeniorSecondary, "2026-03-01"),
        ),
        ("c01/k01", m(2002, Education::Bachelor, "2026-03-01")),
    ] {
        let unit: UnitId = unit.parse().unwrap();
        f.backend.store.create_member(unit, member).await.unwrap();
    }
    let q = r#"{ nodeUnit { targets(year: 2026) { target met units missingCount
        missing(first: 1) { id parent { id } } } } }"#;
    let r = query(&f, Some(&viewer), q).await;
    let t = &r["data"]["nodeUnit"]["targets"][0];
    assert_eq!(t["target"], "NEW_YOUNG_HIGHER_EDUCATED_MEMBER", "{r}");
    assert_eq!(t["units"], 3, "{r}");
    assert_eq!(t["met"], false, "{r}");
    assert_eq!(t["missingCount"], 2, "{r}");
    assert_eq!(
        t["missing"],
        json!([{ "id": "c01/k01/t01/v02", "parent": null }]),
        "{r}"
    );
    // The next page starts after the last village shown.
    let q = r#"{ nodeUnit { targets(year: 2026) {
        missing(first: 100, after: "c01/k01/t01/v02") { id } } } }"#;
    let r = query(&f, Some(&viewer), q).await;
    assert_eq!(
        r["data"]["nodeUnit"]["targets"][0]["missing"],
        json!([{ "id": "c01/k01/t02/v01" }]),
        "{r}"
    );
    // In 2025 nobody joined: every village misses it.
    let r = query(
        &f,
        Some(&viewer),
        "{ nodeUnit { targets(year: 2025) { missingCount } } }",
    )
    .await;
    assert_eq!(
        r["data"]["nodeUnit"]["targets"][0]["missingCount"], 3,
        "{r}"
    );
    // Same visibility as the member figures.
    for token in [Some(outsider.as_str()), None] {
        let r = query(&f, token, "{ nodeUnit { targets { met } } }").await;
        assert_eq!(r["data"]["nodeUnit"]["targets"], Value::Null, "{r}");
    }
    let r = query(
        &f,
        Some(&viewer),
        "{ nodeUnit { targets { missing(first: 101) { id } } } }",
    )
    .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
}

/// The scheduled reports (quarterly, half-year, annual) are targets per county, township
/// and village: one report for each period that has ended, by its own period.
#[tokio::test]
async fn scheduled_reports_are_targets_for_every_period_ended() {
    use grassroots_schema::{DocKind, Value as V};
    let f = fixture().await;
    let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
    let file = |unit: &str, kind: &str, period: &str| {
        let fields = [
            ("kind", V::Text(kind.into())),
            ("period", V::Text(period.into())),
            ("submittedOn", V::Text("2026-01-10".into())),
            ("body", V::Text("...".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let unit: UnitId = unit.parse().unwrap();
        let store = f.backend.store.clone();
        async move {
            store
                .create_record(DocKind::Reports, unit, fields, None, None)
                .await
                .unwrap();
        }
    };
    // v01 files everything for 2025; v02 misses its fourth quarter (a December report is a
    // month's, not the quarter's) and its second half.
    for q in ["2025Q1", "2025Q2", "2025Q3", "2025Q4"] {
        file("c01/k01/t01/v01", "quarterly_analysis", q).await;
    }
    for h in ["2025H1", "2025H2"] {
        file("c01/k01/t01/v01", "half_year_self_examination", h).await;
    }
    file("c01/k01/t01/v01", "annual_assessment", "2025").await;
    for q in ["2025Q1", "2025Q2", "2025Q3", "2025-12"] {
        file("c01/k01/t01/v02", "quarterly_analysis", q).await;
    }
    file("c01/k01/t01/v02", "half_year_self_examination", "2025H1").await;
    file("c01/k01/t01/v02", "annual_assessment", "2025").await;
    let q = r#"{ nodeUnit { targets(year: 2025) { target description met missing { id } } } }"#;
    let r = query(&f, Some(&viewer), q).await;
    let targets = r["data"]["nodeUnit"]["targets"].as_array().unwrap();
    let missing = |target: &str| -> Vec<String> {
        let t = targets
            .iter()
            .find(|t| t["target"] == target)
            .unwrap_or_else(|| panic!("no {target}: {r}"));
        assert_eq!(t["met"], false, "{t}");
        t["missing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // The county files its own too: none here.
    let (quarterly, half, annual) = (
        missing("QUARTERLY_ANALYSIS"),
        missing("HALF_YEAR_SELF_EXAMINATION"),
        missing("ANNUAL_ASSESSMENT"),
    );
    assert!(
        quarterly.contains(&"c01/k01/t01/v02".to_owned()),
        "{quarterly:?}"
    );
    assert!(half.contains(&"c01/k01/t01/v02".to_owned()), "{half:?}");
    assert!(
        !annual.contains(&"c01/k01/t01/v02".to_owned()),
        "{annual:?}"
    );
    for list in [&quarterly, &half, &annual] {
        assert!(list.contains(&"c01/k01".to_owned()), "{list:?}");
        assert!(!list.contains(&"c01/k01/t01/v01".to_owned()), "{list:?}");
    }
    let d = targets
        .iter()
        .find(|t| t["target"] == "QUARTERLY_ANALYSIS")
        .unwrap();
    assert!(
        d["description"]
            .as_str()
            .unwrap()
            .contains("2025Q1, 2025Q2, 2025Q3, 2025Q4"),
        "{d}"
    );
}

/// The secretaries in office in a year are counted by age, education and concurrent post,
/// and villages without a reserve cadre miss the successors target.
#[tokio::test]
async fn secretaries_are_counted_by_age_and_villages_without_a_successor_named() {
    use grassroots_schema::{DocKind, Value as V};
    let f = fixture().await;
    let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
    let add = |kind: DocKind, unit: &str, pairs: Vec<(&str, V)>| {
        let fields = pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let unit: UnitId = unit.parse().unwrap();
        let store = f.backend.store.clone();
        async move {
            store
                .create_record(kind, unit, fields, None, None)
                .await
                .unwrap();
        }
    };
    let t = |s: &str| V::Text(s.into());
    let post = |post: &str, start: &str, more: Vec<(&'static str, V)>| {
        let mut p = vec![
            ("post", t(post)),
            ("holder", t("Someone")),
            ("selection", t("direct_election")),
            ("termStart", t(start)),
        ];
        p.extend(more);
        p
    };
    // v01: 68 in 2026, college, also director; v02: 36, no education given; t02/v01: a term
    // that ended in 2024 and one without a birth year; a deputy is not a secretary.
    let v01 = post(
        "secretary",
        "2021-01-01",
        vec![
            ("birthYear", V::Int(1958)),
            ("education", t("college")),
            ("concurrentPost", t("director")),
        ],
    );
    add(DocKind::Posts, "c01/k01/t01/v01", v01).await;
    let v02 = post("secretary", "2024-03-01", vec![("birthYear", V::Int(1990))]);
    add(DocKind::Posts, "c01/k01/t01/v02", v02).await;
    let ended = post(
        "secretary",
        "2019-01-01",
        vec![("termEnd", t("2024-12-31")), ("birthYear", V::Int(1950))],
    );
    add(DocKind::Posts, "c01/k01/t02/v01", ended).await;
    add(
        DocKind::Posts,
        "c01/k01/t02/v01",
        post("secretary", "2025-01-01", vec![]),
    )
    .await;
    let deputy = post(
        "deputy_secretary",
        "2021-01-01",
        vec![("birthYear", V::Int(1999))],
    );
    add(DocKind::Posts, "c01/k01/t01/v01", deputy).await;
    let reserve = vec![
        ("name", t("Liu Yang")),
        ("stage", t("reserve_cadre")),
        ("since", t("2025-05-01")),
    ];
    add(DocKind::Activists, "c01/k01/t01/v01", reserve).await;
    let q = r#"{ nodeUnit { indicators(year: 2026) { reserveCadres secretaries { total under35
        aged35To49 aged50To59 aged60OrOver ageUnknown meanAge higherEducated alsoDirector
        alsoDirectorShare } } targets(year: 2026) { target missing { id } } } }"#;
    let r = query(&f, Some(&viewer), q).await;
    let n = &r["data"]["nodeUnit"];
    assert_eq!(
        n["indicators"]["secretaries"],
        json!({ "total": 3, "under35": 0, "aged35To49": 1, "aged50To59": 0, "aged60OrOver": 1,
            "ageUnknown": 1, "meanAge": 52.0, "higherEducated": 1, "alsoDirector": 1,
            "alsoDirectorShare": 1.0 / 3.0 }),
        "{r}"
    );
    assert_eq!(n["indicators"]["reserveCadres"], 1, "{r}");
    let successors = n["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "SECRETARY_SUCCESSORS")
        .unwrap();
    assert_eq!(
        successors["missing"],
        json!([{ "id": "c01/k01/t01/v02" }, { "id": "c01/k01/t02/v01" }]),
        "{r}"
    );
    // In 2023 the ended term was still running, and v02's had not begun.
    let r = query(
        &f,
        Some(&viewer),
        "{ nodeUnit { indicators(year: 2023) { secretaries { total aged60OrOver } } } }",
    )
    .await;
    assert_eq!(
        r["data"]["nodeUnit"]["indicators"]["secretaries"],
        json!({ "total": 2, "aged60OrOver": 2 }),
        "{r}"
    );
    // A handover within 2025 leaves one secretary at its end, not two in the year; a
    // director recorded as also secretary is one, and also director.
    let before = post(
        "secretary",
        "2020-01-01",
        vec![("termEnd", t("2025-03-31")), ("birthYear", V::Int(1955))],
    );
    add(DocKind::Posts, "c01/k01/t01/v03", before).await;
    let after = post("secretary", "2025-04-01", vec![("birthYear", V::Int(1995))]);
    add(DocKind::Posts, "c01/k01/t01/v03", after).await;
    let director = post(
        "director",
        "2022-01-01",
        vec![
            ("concurrentPost", t("secretary")),
            ("birthYear", V::Int(1980)),
        ],
    );
    add(DocKind::Posts, "c01/k01/t02/v02", director).await;
    let r = query(
        &f,
        Some(&viewer),
        "{ nodeUnit { indicators(year: 2025) { secretaries { total under35 aged60OrOver
            alsoDirector } } } }",
    )
    .await;
    // v01 (68, director), v02, t02/v01's second term, v03's new one (30), t02/v02's director.
    assert_eq!(
        r["data"]["nodeUnit"]["indicators"]["secretaries"],
        json!({ "total": 5, "under35": 1, "aged60OrOver": 1, "alsoDirector": 2 }),
        "{r}"
    );
}

/// Members who joined in a year are counted, with the young (under 35 when they joined) and
/// the women among them, and compared across villages.
#[tokio::test]
async fn new_members_are_counted_by_the_year_they_joined() {
    use grassroots_schema::{Education, Gender, MemberStatus, NewMember};
    let f = fixture().await;
    let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
    let m = |birth: i64, gender: Gender, joined: &str| NewMember {
        name: "Someone".into(),
        birth_year: birth,
        gender,
        education: Education::SeniorSecondary,
        joined_on: joined.into(),
        status: MemberStatus::Probationary,
        phone: None,
        id_number: None,
        categories: Vec::new(),
    };
    let mut made = Vec::new();
    for (unit, member) in [
        ("c01/k01/t01/v01", m(1995, Gender::Female, "2025-07-01")),
        ("c01/k01/t01/v01", m(1980, Gender::Male, "2025-03-01")),
        // 35 in the year it joined: not young.
        ("c01/k01/t01/v02", m(1990, Gender::Male, "2025-01-10")),
        ("c01/k01/t01/v02", m(2000, Gender::Female, "2024-12-31")),
    ] {
        let unit: UnitId = unit.parse().unwrap();
        made.push(
            f.backend
                .store
                .create_member(unit, member)
                .await
                .unwrap()
                .id,
        );
    }
    // A member moved to 2023 by a correction and then back, and one removed: counted as
    // they stand.
    for joined in ["2023-05-01", "2024-12-31"] {
        let patch = grassroots_schema::MemberPatch {
            joined_on: Some(joined.into()),
            ..Default::default()
        };
        f.backend
            .store
            .update_member(made[3].clone(), patch)
            .await
            .unwrap();
    }
    let extra = f
        .backend
        .store
        .create_member(
            "c01/k01/t01/v02".parse().unwrap(),
            m(1999, Gender::Male, "2025-02-02"),
        )
        .await
        .unwrap();
    f.backend.store.delete_member(extra.id).await.unwrap();
    let q =
        "{ nodeUnit { indicators(year: 2025) { newMembers newMembersUnder35 newMembersWomen } } }";
    let r = query(&f, Some(&viewer), q).await;
    assert_eq!(
        r["data"]["nodeUnit"]["indicators"],
        json!({ "newMembers": 3, "newMembersUnder35": 1, "newMembersWomen": 1 }),
        "{r}"
    );
    let r = query(
        &f,
        Some(&viewer),
        "{ nodeUnit { indicators(year: 2024) { newMembers newMembersUnder35 newMembersWomen } } }",
    )
    .await;
    assert_eq!(
        r["data"]["nodeUnit"]["indicators"],
        json!({ "newMembers": 1, "newMembersUnder35": 1, "newMembersWomen": 1 }),
        "{r}"
    );
    assert_eq!(
        f.backend.store.verify_views().await.unwrap(),
        Vec::<String>::new()
    );
    // Compared across the villages (no profiles here: by the roll-ups the store holds).
    f.backend
        .store
        .set_unit_details(
            "c01/k01/t01/v01".parse().unwrap(),
            grassroots_schema::UnitDetails {
                name: Some("Liujia".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    f.backend
        .store
        .set_unit_details(
            "c01/k01/t01/v02".parse().unwrap(),
            grassroots_schema::UnitDetails {
                name: Some("Zhangwan".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = query(
        &f,
        Some(&viewer),
        "{ nodeUnit { balance(figure: NEW_MEMBERS, year: 2025, ends: 1) { units min max
            lowest { unit { name } } } } }",
    )
    .await;
    assert_eq!(
        r["data"]["nodeUnit"]["balance"],
        json!({ "units": 2, "min": 1.0, "max": 2.0, "lowest": [{ "unit": { "name": "Zhangwan" } }] }),
        "{r}"
    );
    // A village with no member yet is not compared on a share (it would count as 0), and a
    // township holding no village not on a count per village (it would count whole).
    f.backend
        .store
        .set_unit_details(
            "c01/k01/t01/v03".parse().unwrap(),
            grassroots_schema::UnitDetails {
                name: Some("Empty".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let compared = |figure: &str, level: &str| {
        format!(
            "{{ nodeUnit {{ balance(figure: {figure}, level: {level}, year: 2025) {{ units
                lowest {{ unit {{ name }} }} }} }} }}"
        )
    };
    let r = query(&f, Some(&viewer), &compared("UNDER_35_SHARE", "VILLAGE")).await;
    assert_eq!(r["data"]["nodeUnit"]["balance"]["units"], 2, "{r}");
    let r = query(&f, Some(&viewer), &compared("MEMBERS", "VILLAGE")).await;
    assert_eq!(r["data"]["nodeUnit"]["balance"]["units"], 3, "a count: {r}");
    // Over many units (each row read for the figure's parts alone): the same figures, with
    // 70 villages more that hold no member.
    let figures = |figure: &str| {
        format!(
            "{{ nodeUnit {{ balance(figure: {figure}, level: VILLAGE, year: 2025, ends: 1) {{
                units min max mean lowest {{ unit {{ name }} }} }} }} }}"
        )
    };
    let few: Vec<serde_json::Value> = {
        let mut out = Vec::new();
        for figure in ["MEMBERS", "NEW_MEMBERS", "UNDER_35_SHARE"] {
            out.push(
                query(&f, Some(&viewer), &figures(figure)).await["data"]["nodeUnit"]["balance"]
                    .clone(),
            );
        }
        out
    };
    for n in 10..80 {
        f.backend
            .store
            .set_unit_details(
                format!("c01/k01/t03/v{n}").parse().unwrap(),
                grassroots_schema::UnitDetails {
                    name: Some(format!("Added {n}")),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    for (figure, few) in ["MEMBERS", "NEW_MEMBERS", "UNDER_35_SHARE"]
        .into_iter()
        .zip(few)
    {
        let r = query(&f, Some(&viewer), &figures(figure)).await;
        let many = &r["data"]["nodeUnit"]["balance"];
        assert_eq!(many["max"], few["max"], "{figure}: {r}");
        if figure == "UNDER_35_SHARE" {
            // A share of no member is not compared.
            assert_eq!(many, &few, "{figure}: {r}");
        } else {
            assert_eq!(many["units"], 73, "{figure}: {r}");
            assert_eq!(many["min"], 0.0, "{figure}: {r}");
            let mean = few["mean"].as_f64().unwrap() * 3.0 / 73.0;
            assert!(
                (many["mean"].as_f64().unwrap() - mean).abs() < 1e-9,
                "{figure}: {r}"
            );
            assert_eq!(many["lowest"][0]["unit"]["name"], "Empty", "{figure}: {r}");
        }
    }
    // Targets of a year not begun are refused: with no period ended, each would read met.
    let r = query(
        &f,
        Some(&viewer),
        "{ nodeUnit { targets(year: 2199) { target met } } }",
    )
    .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    for (township, name) in [("c01/k01/t01", "Riverside"), ("c01/k01/t02", "No villages")] {
        f.backend
            .store
            .set_unit_details(
                township.parse().unwrap(),
                grassroots_schema::UnitDetails {
                    name: Some(name.into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let r = query(&f, Some(&viewer), &compared("MEMBERS", "TOWNSHIP")).await;
    assert_eq!(
        r["data"]["nodeUnit"]["balance"],
        json!({ "units": 1, "lowest": [{ "unit": { "name": "Riverside" } }] }),
        "{r}"
    );
}

/// Every member record carries who created and who last changed it (unit and role) and
/// when, written into the record, and the view rows agree with the document.
#[tokio::test]
async fn records_carry_who_wrote_them_and_when() {
    let f = fixture().await;
    let clerk = token_for(&f, "c01/k01/t01", Role::Clerk).await;
    // A named user; the clerk's token has no name and is labelled from its hash.
    let supervisor = new_token().unwrap();
    f.backend
        .store
        .add_named_user(
            token_hash(&supervisor),
            "c01/k01".parse().unwrap(),
            Role::Supervisor,
            Some("Chen Jing".into()),
        )
        .await
        .unwrap();
    let create = r#"mutation { createMember(input: { unit: "c01/k01/t01", name: "Zhao Min",
        birthYear: 1992, gender: FEMALE, education: COLLEGE, joinedOn: "2021-06-01" }) {
        id created { unit role user at } changed { unit } } }"#;
    let r = query(&f, Some(&clerk), create).await;
    let m = &r["data"]["createMember"];
    assert_eq!(m["created"]["unit"], "c01/k01/t01", "{r}");
    assert_eq!(m["created"]["role"], "CLERK", "{r}");
    let label = format!("user-{}", &hex(&token_hash(&clerk))[..8]);
    assert_eq!(m["created"]["user"], label.as_str(), "{r}");
    assert!(
        m["created"]["at"]
            .as_str()
            .is_some_and(|a| a.starts_with("20")),
        "{r}"
    );
    assert_eq!(m["changed"], Value::Null, "{r}");
    let id = m["id"].as_str().unwrap().to_owned();

    let update = format!(
        r#"mutation {{ updateMember(id: "{id}", input: {{ name: "Zhao Min (corrected)" }}) {{
        name created {{ unit role }} changed {{ unit role user at }} }} }}"#
    );
    let r = query(&f, Some(&supervisor), &update).await;
    let m = &r["data"]["updateMember"];
    assert_eq!(m["name"], "Zhao Min (corrected)", "{r}");
    assert_eq!(
        m["created"],
        json!({ "unit": "c01/k01/t01", "role": "CLERK" }),
        "{r}"
    );
    assert_eq!(m["changed"]["unit"], "c01/k01", "{r}");
    assert_eq!(m["changed"]["role"], "SUPERVISOR", "{r}");
    assert_eq!(m["changed"]["user"], "Chen Jing", "{r}");

    // Read back from the view, and the view equals what the document holds.
    let r = query(
        &f,
        Some(&supervisor),
        &format!(r#"{{ member(id: "{id}") {{ created {{ role }} changed {{ role user }} }} }}"#),
    )
    .await;
    assert_eq!(
        r["data"]["member"],
        json!({ "created": { "role": "CLERK" },
            "changed": { "role": "SUPERVISOR", "user": "Chen Jing" } }),
        "{r}"
    );
    assert_eq!(
        f.backend.store.verify_views().await.unwrap(),
        Vec::<String>::new()
    );

    // Sensitive fields are checked like the others and refused whole when malformed.
    for (field, value) in [
        ("phone", "call me"),
        ("idNumber", "1101 0519"),
        ("phone", "+"),
    ] {
        let bad = format!(
            r#"mutation {{ createMember(input: {{ unit: "c01/k01/t01", name: "X",
            birthYear: 1990, gender: MALE, education: PRIMARY, joinedOn: "2020-01-01",
            {field}: "{value}" }}) {{ id }} }}"#
        );
        let r = query(&f, Some(&clerk), &bad).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{field} {value:?}: {r}");
    }
}

/// A create sent again with its `requestId` (its answer lost) answers the record the first
/// made and makes no other, for members and the other kinds; a bad key is refused.
#[tokio::test]
async fn a_create_sent_again_with_its_request_id_makes_one_record() {
    let f = fixture().await;
    let clerk = token_for(&f, "c01/k01", Role::Clerk).await;
    let member = |key: &str| {
        format!(
            r#"mutation {{ createMember(requestId: "{key}", input: {{ unit: "c01/k01",
            name: "Zhao Min", birthYear: 1992, gender: FEMALE, education: COLLEGE,
            joinedOn: "2021-06-01" }}) {{ id name }} }}"#
        )
    };
    let count = r#"{ unit(id: "c01/k01") { members { totalCount } meetings { totalCount } } }"#;
    let first = query(&f, Some(&clerk), &member("phone-7f3a-0001")).await;
    let again = query(&f, Some(&clerk), &member("phone-7f3a-0001")).await;
    assert!(first["data"]["createMember"]["id"].is_string(), "{first}");
    assert_eq!(first["data"], again["data"]);
    let other = query(&f, Some(&clerk), &member("phone-7f3a-0002")).await;
    assert_ne!(
        other["data"]["createMember"]["id"],
        first["data"]["createMember"]["id"]
    );
    let meeting = r#"mutation { createMeeting(requestId: "m1", input: { unit: "c01/k01",
        kind: GROUP_MEETING, heldOn: "2026-03-02", attendance: 12, hours: 2 }) { id } }"#;
    let m1 = query(&f, Some(&clerk), meeting).await;
    let m2 = query(&f, Some(&clerk), meeting).await;
    assert!(m1["data"]["createMeeting"]["id"].is_string(), "{m1}");
    assert_eq!(m1["data"], m2["data"]);
    let r = query(&f, Some(&clerk), count).await;
    assert_eq!(r["data"]["unit"]["members"]["totalCount"], 2, "{r}");
    assert_eq!(r["data"]["unit"]["meetings"]["totalCount"], 1, "{r}");
    // Training hours are a training's: the group meeting's two hours are not counted.
    let training = r#"mutation { createMeeting(input: { unit: "c01/k01", kind: TRAINING,
        heldOn: "2026-03-09", attendance: 20, hours: 3 }) { id } }"#;
    let r = query(&f, Some(&clerk), training).await;
    assert!(r["data"]["createMeeting"]["id"].is_string(), "{r}");
    let hours = "{ nodeUnit { indicators(year: 2026) { trainingHours } } }";
    let r = query(&f, Some(&clerk), hours).await;
    assert_eq!(
        r["data"]["nodeUnit"]["indicators"]["trainingHours"], 3,
        "{r}"
    );
    for bad in [String::new(), "x".repeat(65), "a\\u0007b".into()] {
        let r = query(&f, Some(&clerk), &member(&bad)).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{bad:?}: {r}");
    }
    let r = query(&f, Some(&clerk), count).await;
    assert_eq!(r["data"]["unit"]["members"]["totalCount"], 2, "{r}");
}

/// A township's supervisor moves a member between two of its villages; a village's clerk
/// may not move one to another village.
#[tokio::test]
async fn a_member_is_moved_by_a_supervisor_of_both_registers() {
    let f = fixture().await;
    // The village it goes to is registered (named from above); an unknown one is refused.
    f.backend
        .store
        .set_unit_details(
            "c01/k01/t01/v02".parse().unwrap(),
            grassroots_schema::UnitDetails {
                name: Some("Zhangwan Village".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let township = token_for(&f, "c01/k01/t01", Role::Supervisor).await;
    let village = token_for(&f, "c01/k01/t01/v01", Role::Clerk).await;
    let create = |name: &str| {
        format!(
            r#"mutation {{ createMember(input: {{ unit: "c01/k01/t01/v01", name: "{name}",
            birthYear: 1992, gender: FEMALE, education: COLLEGE, joinedOn: "2021-06-01",
            phone: "13800000000", idNumber: "110101199203070021" }}) {{ id }} }}"#
        )
    };
    let r = query(&f, Some(&village), &create("Zhao Min")).await;
    let id = r["data"]["createMember"]["id"].as_str().unwrap().to_owned();
    let transfer = |to: &str| {
        format!(
            r#"mutation {{ transferMember(id: "{id}", toUnit: "{to}") {{ id name unit {{ id }}
            created {{ unit }} }} }}"#
        )
    };
    let r = query(&f, Some(&village), &transfer("c01/k01/t01/v02")).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    // Into the supervisor's own unit, where it would read the identity and phone numbers
    // only the village reads, the member goes without them.
    let r = query(&f, Some(&village), &create("Qian Li")).await;
    let other = r["data"]["createMember"]["id"].as_str().unwrap().to_owned();
    let r = query(
        &f,
        Some(&township),
        &format!(
            r#"mutation {{ transferMember(id: "{other}", toUnit: "c01/k01/t01") {{ id phone idNumber }} }}"#
        ),
    )
    .await;
    let up = &r["data"]["transferMember"];
    assert_eq!(
        (&up["phone"], &up["idNumber"]),
        (&Value::Null, &Value::Null),
        "{r}"
    );
    let held: grassroots_schema::MemberId = up["id"].as_str().unwrap().parse().unwrap();
    let held = f.backend.reader.member(&held).unwrap().unwrap();
    assert_eq!((held.phone, held.id_number), (None, None));
    let r = query(&f, Some(&township), &transfer("c01/k01/t01/v09")).await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");
    let r = query(&f, Some(&township), &transfer("c01/k01/t01/v02")).await;
    let moved = &r["data"]["transferMember"];
    assert_eq!(moved["name"], "Zhao Min", "{r}");
    // Between two villages they go with it (only the village it goes to reads them).
    let made: grassroots_schema::MemberId = moved["id"].as_str().unwrap().parse().unwrap();
    let made = f.backend.reader.member(&made).unwrap().unwrap();
    assert_eq!(made.phone.as_deref(), Some("13800000000"));
    assert_eq!(moved["unit"]["id"], "c01/k01/t01/v02", "{r}");
    assert_eq!(moved["created"]["unit"], "c01/k01/t01", "{r}");
    let r = query(
        &f,
        Some(&township),
        &format!(r#"{{ member(id: "{id}") {{ id }} }}"#),
    )
    .await;
    assert_eq!(r["data"]["member"], Value::Null, "{r}");
    // Again: the member is no longer there.
    let r = query(&f, Some(&township), &transfer("c01/k01/t01/v02")).await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");
}

/// A member is found by part of the name, and listings filter by education, gender and birth
/// years, counted from the rows.
#[tokio::test]
async fn members_are_found_by_name_and_filtered_by_what_they_are() {
    use grassroots_schema::{Education, Gender, MemberStatus, NewMember};
    let f = fixture().await;
    let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
    let m = |name: &str, birth: i64, gender: Gender, education: Education| NewMember {
        name: name.into(),
        birth_year: birth,
        gender,
        education,
        joined_on: "2010-01-01".into(),
        status: MemberStatus::Full,
        phone: None,
        id_number: None,
        categories: Vec::new(),
    };
    for (unit, member) in [
        (
            "c01/k01",
            m("Zhang Wei", 1950, Gender::Male, Education::Primary),
        ),
        (
            "c01/k01/t01",
            m("Li Zhangmei", 1990, Gender::Female, Education::Bachelor),
        ),
        (
            "c01/k01/t01/v01",
            m("Wang Fang", 1962, Gender::Female, Education::Primary),
        ),
        (
            "c01/k01/t02/v01",
            m("Zhao Lei", 2001, Gender::Male, Education::College),
        ),
    ] {
        let unit: UnitId = unit.parse().unwrap();
        f.backend.store.create_member(unit, member).await.unwrap();
    }
    let names = |args: &'static str| {
        let (f, viewer) = (&f, viewer.clone());
        async move {
            let q = format!(
                "{{ nodeUnit {{ members(subtree: true, {args}) {{ totalCount nodes {{ name }} }} }} }}"
            );
            let r = query(f, Some(&viewer), &q).await;
            let m = &r["data"]["nodeUnit"]["members"];
            let names: Vec<String> = m["nodes"]
                .as_array()
                .unwrap_or_else(|| panic!("{r}"))
                .iter()
                .map(|n| n["name"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(m["totalCount"].as_u64(), Some(names.len() as u64), "{r}");
            names
        }
    };
    assert_eq!(
        names(r#"nameContains: "ZHANG""#).await,
        ["Zhang Wei", "Li Zhangmei"]
    );
    assert_eq!(names("gender: FEMALE, bornTo: 1970").await, ["Wang Fang"]);
    assert_eq!(
        names("education: PRIMARY").await,
        ["Zhang Wei", "Wang Fang"]
    );
    assert_eq!(names("bornFrom: 1990").await, ["Li Zhangmei", "Zhao Lei"]);
    assert_eq!(
        names(r#"nameContains: "zhao", education: BACHELOR"#).await,
        Vec::<String>::new()
    );
    let r = query(
        &f,
        Some(&viewer),
        r#"{ nodeUnit { members(nameContains: " ") { totalCount } } }"#,
    )
    .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
}

/// `members(status:)` lists and counts only members of that status, over a unit or its
/// subtree, page by page.
#[tokio::test]
async fn members_filter_by_status() {
    use grassroots_schema::{Education, Gender, MemberStatus, NewMember};
    let f = fixture().await;
    let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
    let m = |status| NewMember {
        name: "Someone".into(),
        birth_year: 1980,
        gender: Gender::Male,
        education: Education::Primary,
        joined_on: "2010-01-01".into(),
        status,
        phone: None,
        id_number: None,
        categories: Vec::new(),
    };
    for (unit, status) in [
        ("c01/k01", MemberStatus::Probationary),
        ("c01/k01", MemberStatus::Full),
        ("c01/k01/t01", MemberStatus::Probationary),
        ("c01/k01/t01", MemberStatus::Probationary),
        ("c01/k01/t02/v01", MemberStatus::Full),
    ] {
        let unit: UnitId = unit.parse().unwrap();
        f.backend
            .store
            .create_member(unit, m(status))
            .await
            .unwrap();
    }
    let count = |q: &'static str| {
        let (f, viewer) = (&f, viewer.clone());
        async move {
            let r = query(f, Some(&viewer), q).await;
            r["data"]["nodeUnit"]["members"]["totalCount"]
                .as_u64()
                .unwrap_or(u64::MAX)
        }
    };
    assert_eq!(
        count("{ nodeUnit { members(status: PROBATIONARY) { totalCount } } }").await,
        1
    );
    assert_eq!(
        count("{ nodeUnit { members(status: FULL) { totalCount } } }").await,
        1
    );
    assert_eq!(
        count("{ nodeUnit { members(subtree: true, status: PROBATIONARY) { totalCount } } }").await,
        3
    );
    assert_eq!(
        count("{ nodeUnit { members(subtree: true, status: FULL) { totalCount } } }").await,
        2
    );
    // Pages of one: three probationary members, then no more.
    let mut after: Option<String> = None;
    let mut seen = 0;
    loop {
        let cursor = after
            .as_ref()
            .map_or(String::new(), |c| format!(r#", after: "{c}""#));
        let q = format!(
            "{{ nodeUnit {{ members(subtree: true, status: PROBATIONARY, first: 1{cursor}) {{
            pageInfo {{ hasNextPage endCursor }} nodes {{ status }} }} }} }}"
        );
        let r = query(&f, Some(&viewer), &q).await;
        let page = &r["data"]["nodeUnit"]["members"];
        for n in page["nodes"].as_array().unwrap() {
            assert_eq!(n["status"], "PROBATIONARY", "{r}");
            seen += 1;
        }
        if page["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = page["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_of_the_node_backs_it_up() {
    let f = fixture().await;
    let q = "mutation { backupStore { file bytes documents tookMs } }";
    assert_eq!(code(&query(&f, None, q).await), "UNAUTHENTICATED");
    for (unit, role) in [("c01/k01", Role::Supervisor), ("c01/k01/t01", Role::Admin)] {
        let token = token_for(&f, unit, role).await;
        assert_eq!(
            code(&query(&f, Some(&token), q).await),
            "FORBIDDEN",
            "{unit} {role}"
        );
    }
    let dir = f.backend.reader.backup_dir().unwrap().to_owned();
    assert!(!dir.exists(), "a refused backup wrote something");
    let admin = token_for(&f, "c01/k01", Role::Admin).await;
    // A backup that cannot be written says why, and the node goes on; its users see the
    // failure until a backup works.
    let state = "{ backups { folder last { file bytes } lastError { message } } }";
    std::fs::write(&dir, b"a file where the folder goes").unwrap();
    let r = query(&f, Some(&admin), q).await;
    assert_eq!(code(&r), "BACKUP_FAILED", "{r}");
    let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
    let s = query(&f, Some(&viewer), state).await;
    assert!(
        s["data"]["backups"]["lastError"]["message"].is_string(),
        "{s}"
    );
    assert!(s["data"]["backups"]["last"].is_null(), "{s}");
    let below = token_for(&f, "c01/k01/t01", Role::Admin).await;
    assert_eq!(code(&query(&f, Some(&below), state).await), "FORBIDDEN");
    std::fs::remove_file(&dir).unwrap();
    let r = query(&f, Some(&admin), q).await;
    let b = &r["data"]["backupStore"];
    let file = std::path::PathBuf::from(b["file"].as_str().unwrap_or_default());
    assert_eq!(file.parent(), Some(dir.as_path()), "{r}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        b["bytes"].as_u64().unwrap()
    );
    assert!(b["documents"].as_u64() >= Some(1), "{r}");
    let s = query(&f, Some(&viewer), state).await;
    assert_eq!(s["data"]["backups"]["last"]["file"], b["file"], "{s}");
    assert!(s["data"]["backups"]["lastError"].is_null(), "{s}");
    // Names are to the millisecond: a second backup right after is another file.
    let r = query(&f, Some(&admin), q).await;
    let second = r["data"]["backupStore"]["file"]
        .as_str()
        .unwrap_or_default();
    assert!(!second.is_empty() && second != b["file"], "{r}");
    assert!(file.exists());
    f.shutdown().await;
}

/// A node told to take back from its children what was made in its name (after a restore
/// or a lost disk) says until when, to users of its unit; one never told says null.
#[tokio::test]
async fn the_take_back_window_is_shown_to_the_nodes_users() {
    let q = "{ backups { takeBackUntil } }";
    let until = grassroots_node::status::now_ms() + 3_600_000;
    for (window, want) in [(None, None), (Some(until), Some(until))] {
        let f = common::store_taking_back("c01/k01", window).await;
        let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
        let r = query(&f, Some(&viewer), q).await;
        let shown = r["data"]["backups"]["takeBackUntil"]
            .as_str()
            .map(str::to_owned);
        assert_eq!(shown.is_some(), want.is_some(), "{r}");
        if let (Some(shown), Some(want)) = (shown, want) {
            // RFC 3339 to the millisecond: the same instant.
            let secs = (want / 1000) as i64;
            let day = grassroots_schema::civil_from_days(secs.div_euclid(86_400));
            let in_day = secs.rem_euclid(86_400);
            let expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                day.0,
                day.1,
                day.2,
                in_day / 3600,
                in_day / 60 % 60,
                in_day % 60,
                want % 1000
            );
            assert_eq!(shown, expected);
        }
        f.shutdown().await;
    }
}

/// Categories through GraphQL: set at creation, read back, replaced and cleared by an
/// update, and counted over the subtree in the indicators, views equal to a rebuild.
#[tokio::test]
async fn member_categories_are_written_read_and_counted() {
    let f = fixture().await;
    let clerk = token_for(&f, "c01/k01", Role::Clerk).await;
    let create = "mutation($u: ID!, $c: [MemberCategory!]) { createMember(input: { unit: $u, name: \"Li Wei\", birthYear: 1980, gender: MALE, education: PRIMARY, joinedOn: \"2001-07-01\", categories: $c }) { id categories } }";
    let new = |unit: &str, cats: Value| {
        let (f, clerk) = (&f, clerk.clone());
        let body = json!({ "query": create, "variables": { "u": unit, "c": cats } });
        async move {
            post(f, Some(&clerk), serde_json::to_vec(&body).unwrap())
                .await
                .1
        }
    };
    let r = new("c01/k01", json!(["IN_DIFFICULTY", "FLOATING", "FLOATING"])).await;
    assert_eq!(
        r["data"]["createMember"]["categories"],
        json!(["FLOATING", "IN_DIFFICULTY"]),
        "{r}"
    );
    let a = r["data"]["createMember"]["id"].as_str().unwrap().to_owned();
    let supervisor = token_for(&f, "c01/k01", Role::Supervisor).await;
    for (unit, cats) in [
        ("c01/k01/t01", json!(["FLOATING"])),
        ("c01/k01/t01", json!(null)),
    ] {
        let body = json!({ "query": create, "variables": { "u": unit, "c": cats } });
        let r = post(&f, Some(&supervisor), serde_json::to_vec(&body).unwrap())
            .await
            .1;
        assert!(r["data"]["createMember"]["id"].is_string(), "{r}");
    }
    let indicators = || async {
        let r = query(
            &f,
            Some(&clerk),
            "{ nodeUnit { indicators { members floating inDifficulty } } }",
        )
        .await;
        r["data"]["nodeUnit"]["indicators"].clone()
    };
    assert_eq!(
        indicators().await,
        json!({ "members": 3, "floating": 2, "inDifficulty": 1 })
    );
    let update = "mutation($id: ID!, $c: [MemberCategory!]) { updateMember(id: $id, input: { categories: $c }) { categories } }";
    for (cats, want, floating, difficulty) in [
        (json!(["IN_DIFFICULTY"]), json!(["IN_DIFFICULTY"]), 1, 1),
        (json!(null), json!([]), 1, 0),
    ] {
        let body = json!({ "query": update, "variables": { "id": a, "c": cats } });
        let r = post(&f, Some(&clerk), serde_json::to_vec(&body).unwrap())
            .await
            .1;
        assert_eq!(r["data"]["updateMember"]["categories"], want, "{r}");
        assert_eq!(
            indicators().await,
            json!({ "members": 3, "floating": floating, "inDifficulty": difficulty })
        );
    }
    // Leaving categories out of an update leaves them.
    let body = json!({ "query": update, "variables": { "id": a, "c": ["FLOATING"] } });
    post(&f, Some(&clerk), serde_json::to_vec(&body).unwrap()).await;
    let r = query(
        &f,
        Some(&clerk),
        &format!(
            "mutation {{ updateMember(id: \"{a}\", input: {{ name: \"Li Wei Jr\" }}) {{ name categories }} }}"
        ),
    )
    .await;
    assert_eq!(
        r["data"]["updateMember"],
        json!({ "name": "Li Wei Jr", "categories": ["FLOATING"] }),
        "{r}"
    );

    // Listings filter by category (and status), counted from the roll-ups over a subtree.
    let listed = |args: &str| {
        let (f, clerk) = (&f, clerk.clone());
        let q = format!(
            "{{ nodeUnit {{ members({args}) {{ totalCount edges {{ node {{ name }} }} }} }} }}"
        );
        async move {
            let r = query(f, Some(&clerk), &q).await;
            let m = &r["data"]["nodeUnit"]["members"];
            let names = m["edges"].as_array().map_or(0, Vec::len);
            (m["totalCount"].as_u64().unwrap_or(u64::MAX), names as u64)
        }
    };
    assert_eq!(listed("subtree: true, category: FLOATING").await, (2, 2));
    assert_eq!(listed("category: FLOATING").await, (1, 1));
    assert_eq!(
        listed("subtree: true, category: IN_DIFFICULTY").await,
        (0, 0)
    );
    assert_eq!(
        listed("subtree: true, category: FLOATING, status: FULL").await,
        (0, 0)
    );
    let body = json!({ "query": "mutation($id: ID!) { updateMember(id: $id, input: { status: FULL }) { id } }", "variables": { "id": a } });
    post(&f, Some(&clerk), serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(
        listed("subtree: true, category: FLOATING, status: FULL").await,
        (1, 1)
    );
    assert_eq!(
        listed("subtree: true, category: FLOATING, status: PROBATIONARY").await,
        (1, 1)
    );
    assert_eq!(listed("category: FLOATING, status: FULL").await, (1, 1));
    assert!(f.backend.store.verify_views().await.unwrap().is_empty());
    f.shutdown().await;
}

/// A disk that fills up, below redb: writes fit until `full` is set.
#[derive(Debug, Default)]
struct Filling {
    bytes: std::sync::Mutex<Vec<u8>>,
    full: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Default)]
struct FillingDisk(std::sync::Arc<Filling>);

impl redb::StorageBackend for FillingDisk {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.bytes.lock().unwrap().len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let b = self.0.bytes.lock().unwrap();
        let start = offset as usize;
        out.copy_from_slice(&b[start..start + out.len()]);
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut b = self.0.bytes.lock().unwrap();
        if len > b.len() as u64 && self.0.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        b.resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        if self.0.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if self.0.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        let mut b = self.0.bytes.lock().unwrap();
        let end = offset as usize + data.len();
        if b.len() < end {
            b.resize(end, 0);
        }
        b[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

/// A full disk through the gateway: the write is answered `NOT_STORED` with the reason, and
/// `/healthz` turns to 503, with the reason for a user of the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_not_stored_and_unhealthy() {
    let disk = FillingDisk::default();
    let db = redb::Database::builder()
        .create_with_backend(disk.clone())
        .unwrap();
    let unit: UnitId = "c01/k01".parse().unwrap();
    let (store, reader, thread) = grassroots_node::store::open_database(
        db,
        unit.clone(),
        grassroots_node::store::StoreOptions::default(),
    )
    .unwrap();
    store
        .set_profile("Dongping County".into(), vec![])
        .await
        .unwrap();
    let token = new_token().unwrap();
    store
        .add_user(token_hash(&token), unit.clone(), Role::Clerk)
        .await
        .unwrap();
    let app = router(grassroots_gateway::Backend {
        node_unit: unit,
        store,
        reader,
        own_nodes: Vec::new(),
    });
    let health = |app: axum::Router, token: Option<String>| async move {
        let mut request = Request::get("/healthz");
        if let Some(t) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = app
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    assert_eq!(health(app.clone(), None).await.0, StatusCode::OK);
    disk.0.full.store(true, std::sync::atomic::Ordering::SeqCst);
    let create = json!({ "query": "mutation { createMember(input: { unit: \"c01/k01\", name: \"Li\", birthYear: 1980, gender: MALE, education: PRIMARY, joinedOn: \"2001-07-01\" }) { id } }" });
    let resp = app
        .clone()
        .oneshot(
            Request::post("/graphql")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::from(serde_json::to_vec(&create).unwrap()))
                .unwrap(),
        )
        .await
        .unwrap();
    let r: Value =
        serde_json::from_slice(&to_bytes(resp.into_body(), 1 << 16).await.unwrap()).unwrap();
    assert_eq!(code(&r), "NOT_STORED", "{r}");
    let message = r["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("the disk is full"), "{r}");
    // Why, to a user of the node; to a monitor without a token, only that it fails.
    let (status, body) = health(app.clone(), Some(token)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "failing", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("the disk is full")
    );
    let (status, body) = health(app, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body, json!({ "status": "failing", "unit": "c01/k01" }));
    thread.shutdown().await;
}

/// The server itself: a client that does not finish its request's headers in time is
/// disconnected, while another is answered; a stop ends the server.
#[tokio::test]
async fn a_client_slow_with_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let f = fixture().await;
    let options = GatewayOptions {
        header_timeout: std::time::Duration::from_millis(500),
        ..GatewayOptions::default()
    };
    let (addr, server) = Serving::start(&f, options).await;
    // Half a request line, then nothing.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /graphql HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Meanwhile a whole request is answered.
    let body = r#"{"query":"{ __typename }"}"#;
    let mut quick = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    quick.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    quick.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"Query\""), "{answer}");
    // The slow one is closed once its time is up (a 408 or nothing, then the end).
    closed_after(&mut slow, started).await;
    server.stop().await;
}

/// A client that stops reading its answers (here GraphiQL's script asked for thirty times
/// in one go, some 30 MB) is disconnected once a write has waited `write_stall`, rather
/// than holding its connection until TCP gives up.
#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let f = fixture().await;
    let options = GatewayOptions {
        write_stall: std::time::Duration::from_millis(300),
        ..GatewayOptions::default()
    };
    let (addr, server) = Serving::start(&f, options).await;
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let asked = 30;
    let request = "GET /assets/graphiql.min.js HTTP/1.1\r\nHost: x\r\n\r\n".repeat(asked);
    stalled.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    // Read what came before the server gave up: the stream then ends.
    let (mut got, mut buf) = (0usize, vec![0u8; 1 << 16]);
    let ended = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), stalled.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got += n,
            Err(_) => break false,
        }
    };
    assert!(ended, "the connection stayed open ({got} bytes read)");
    assert!(got < asked * 1_000_000, "every answer came: {got} bytes");
    // Others are answered meanwhile.
    let mut quick = tokio::net::TcpStream::connect(addr).await.unwrap();
    quick
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    quick.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop().await;
}

/// A client whose headers are in but whose body trickles is answered `TIMEOUT` (408) once
/// the body's time is up, and its connection does not stay held.
#[tokio::test]
async fn a_client_slow_with_its_body_is_answered_timeout() {
    use tokio::io::AsyncWriteExt as _;
    let f = fixture().await;
    let options = GatewayOptions {
        body_timeout: std::time::Duration::from_millis(500),
        ..GatewayOptions::default()
    };
    let (addr, server) = Serving::start(&f, options).await;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\"",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let answer = closed_after(&mut slow, started).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("TIMEOUT"), "{answer}");
    server.stop().await;
}

/// A kept-alive connection left idle after its answer is closed once the header time is up:
/// idle connections do not pile up towards the bound.
#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    use tokio::io::AsyncWriteExt as _;
    let f = fixture().await;
    let options = GatewayOptions {
        header_timeout: std::time::Duration::from_millis(500),
        ..GatewayOptions::default()
    };
    let (addr, server) = Serving::start(&f, options).await;
    let body = r#"{"query":"{ __typename }"}"#;
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let answer = closed_after(&mut client, started).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop().await;
}

/// The gateway served on a loopback port, for the tests of the server itself.
struct Serving {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Serving {
    async fn start(f: &Fixture, options: GatewayOptions) -> (std::net::SocketAddr, Serving) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(grassroots_gateway::http::serve_with(
            listener,
            f.backend.clone(),
            options,
            async {
                let _ = stopped.await;
            },
        ));
        (addr, Serving { stop, task })
    }

    /// Stops the server and waits until it has.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), self.task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}

/// Tokens for a unit under a child that runs its own node are made at that node, not here
/// (where one would read the personal details that unit keeps from the levels above); a
/// token made before is still listed and revoked here.
#[tokio::test]
async fn no_token_is_made_here_for_a_child_with_its_own_node() {
    let mut f = fixture().await;
    let admin = token_for(&f, "c01/k01", Role::Admin).await;
    let create = |unit: &str| {
        format!(
            "mutation {{ createUserToken(input: {{ unit: \"{unit}\", role: CLERK,
                name: \"Wang Li\" }}) {{ unit }} }}"
        )
    };
    // Made while the village had no node of its own.
    let r = query(&f, Some(&admin), &create("c01/k01/t01/v01")).await;
    assert!(r["errors"].is_null(), "{r}");
    f.backend.own_nodes = vec!["c01/k01/t01".parse().unwrap()];
    for unit in ["c01/k01/t01", "c01/k01/t01/v01"] {
        let r = query(&f, Some(&admin), &create(unit)).await;
        assert_eq!(code(&r), "FORBIDDEN", "{unit}: {r}");
        assert!(
            r["errors"][0]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("runs its own node"),
            "{r}"
        );
    }
    let r = query(&f, Some(&admin), &create("c01/k01/t02/v01")).await;
    assert!(r["errors"].is_null(), "a hosted village: {r}");
    let r = query(
        &f,
        Some(&admin),
        "{ users(unit: \"c01/k01/t01/v01\") { name } }",
    )
    .await;
    assert_eq!(r["data"]["users"], json!([{ "name": "Wang Li" }]), "{r}");
    let r = query(
        &f,
        Some(&admin),
        "mutation { revokeUserTokens(name: \"Wang Li\", unit: \"c01/k01/t01/v01\") }",
    )
    .await;
    assert_eq!(r["data"]["revokeUserTokens"], 1, "{r}");
}

/// A supervisor above a unit reads its members' phone and identity numbers as null: sending
/// back the form it read would clear them, so it may not write them; its other edits go
/// through, and the unit's own clerk writes them.
#[tokio::test]
async fn sensitive_fields_are_written_only_by_those_who_read_them() {
    let f = fixture().await;
    let clerk = token_for(&f, "c01/k01/t01/v01", Role::Clerk).await;
    let above = token_for(&f, "c01/k01/t01", Role::Supervisor).await;
    let r = query(
        &f,
        Some(&clerk),
        r#"mutation { createMember(input: { unit: "c01/k01/t01/v01", name: "Li Wei",
            birthYear: 1980, gender: MALE, education: PRIMARY, joinedOn: "2001-07-01",
            phone: "138 0000 3333" }) { id } }"#,
    )
    .await;
    let id = r["data"]["createMember"]["id"].as_str().unwrap().to_owned();
    let update = |input: &str| {
        format!(r#"mutation {{ updateMember(id: "{id}", input: {{ {input} }}) {{ name phone }} }}"#)
    };
    let r = query(&f, Some(&above), &update("phone: null")).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = query(&f, Some(&above), &update(r#"name: "Li Wei (corrected)""#)).await;
    assert_eq!(
        r["data"]["updateMember"]["name"], "Li Wei (corrected)",
        "{r}"
    );
    let r = query(&f, Some(&clerk), &update(r#"phone: "138 0000 4444""#)).await;
    assert_eq!(r["data"]["updateMember"]["phone"], "138 0000 4444", "{r}");
}

/// A listing's period is refused where it would silently answer otherwise: a day (the
/// filter works by months), and a quarter of kinds filed under a year (nothing would fall
/// within it).
#[tokio::test]
async fn a_period_the_filter_cannot_honour_is_refused() {
    let f = fixture().await;
    let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
    for (listing, period, ok) in [
        ("meetings", "2026-03", true),
        ("meetings", "2026Q1", true),
        ("meetings", "2026-03-15", false),
        ("appraisals", "2026", true),
        ("appraisals", "2026Q1", false),
        ("fundProgrammes", "2026H1", false),
    ] {
        let q = format!("{{ nodeUnit {{ {listing}(period: \"{period}\") {{ totalCount }} }} }}");
        let r = query(&f, Some(&viewer), &q).await;
        if ok {
            assert!(r.get("errors").is_none(), "{listing} {period}: {r}");
        } else {
            assert_eq!(code(&r), "BAD_USER_INPUT", "{listing} {period}: {r}");
        }
    }
}

/// What `stream` received until the server closed it, which must be within 5 s and not
/// before 400 ms from `started` (the tests' timeouts are 500 ms).
async fn closed_after(stream: &mut tokio::net::TcpStream, started: std::time::Instant) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut got),
    )
    .await;
    assert!(read.is_ok(), "still open after 5 s");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(400),
        "closed before its time: {took:?}"
    );
    got
}

/// A child the unit registered whose own profile has not arrived (enrolled, never linked)
/// is known all the same: listed among the children, found by id, named by its id, with
/// its sync state to read. A unit no held profile registers is not.
#[tokio::test]
async fn a_registered_child_is_known_before_its_profile_arrives() {
    let f = store_for("c01/k01/t01").await;
    let kids: Vec<UnitId> = ["c01/k01/t01/v01", "c01/k01/t01/v02"]
        .iter()
        .map(|u| u.parse().unwrap())
        .collect();
    f.backend
        .store
        .set_profile("Qingshui Township".into(), kids)
        .await
        .unwrap();
    let viewer = token_for(&f, "c01/k01/t01", Role::Viewer).await;
    let r = query(
        &f,
        Some(&viewer),
        r#"{ unit(id: "c01/k01/t01") { children { id name level } } }"#,
    )
    .await;
    assert_eq!(
        r["data"]["unit"]["children"],
        json!([
            { "id": "c01/k01/t01/v01", "name": "c01/k01/t01/v01", "level": "VILLAGE" },
            { "id": "c01/k01/t01/v02", "name": "c01/k01/t01/v02", "level": "VILLAGE" },
        ]),
        "{r}"
    );
    let r = query(
        &f,
        Some(&viewer),
        r#"{ a: unit(id: "c01/k01/t01/v02") { id sync { stale link { connected } } }
             b: unit(id: "c01/k01/t01/v03") { id } }"#,
    )
    .await;
    assert_eq!(r["data"]["a"]["id"], "c01/k01/t01/v02", "{r}");
    assert_eq!(r["data"]["a"]["sync"]["stale"], true, "{r}");
    assert!(r["data"]["b"].is_null(), "not registered: {r}");
}
