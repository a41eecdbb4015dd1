//! The seed's entities through GraphQL on one county node: coverage of organisations and
//! activity places, the talent pipeline, routine meetings, complaints handled above the
//! village, directives addressed by level with their report-backs, public disclosures; the
//! indicators and targets they feed; the views equal a rebuild afterwards.

use axum::body::{Body, to_bytes};
use axum::http::{Request, header};
use grassroots_gateway::router;
use grassroots_schema::Role;
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;
use common::{Fixture, fixture, token_for};

impl Fixture {
    async fn token(&self, unit: &str, role: Role) -> String {
        token_for(self, unit, role).await
    }

    async fn gql(&self, token: Option<&str>, q: &str, vars: Value) -> Value {
        let mut req = Request::post("/graphql").header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = serde_json::to_vec(&json!({ "query": q, "variables": vars })).unwrap();
        let resp = router(self.backend.clone())
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        serde_json::from_slice(&to_bytes(resp.into_body(), 1 << 22).await.unwrap()).unwrap()
    }

    /// A query that must succeed; its data.
    async fn ok(&self, token: Option<&str>, q: &str, vars: Value) -> Value {
        let r = self.gql(token, q, vars).await;
        assert!(r["errors"].is_null(), "{q}: {r}");
        r["data"].clone()
    }
}

fn code(r: &Value) -> &str {
    r["errors"][0]["extensions"]["code"].as_str().unwrap_or("")
}

const VILLAGES: [&str; 3] = ["c01/k01/t01/v01", "c01/k01/t01/v02", "c01/k01/t02/v01"];

#[tokio::test]
async fn the_seed_entities_feed_indicators_and_targets() {
    let f = fixture().await;
    let county = f.token("c01/k01", Role::Supervisor).await;
    let county_clerk = f.token("c01/k01", Role::Clerk).await;
    let v01 = f.token(VILLAGES[0], Role::Clerk).await;
    let v01_viewer = f.token(VILLAGES[0], Role::Viewer).await;
    let v01_supervisor = f.token(VILLAGES[0], Role::Supervisor).await;
    let township = f.token("c01/k01/t01", Role::Supervisor).await;

    // The county registers its townships and villages (none has a node yet) and what each
    // village has.
    let update_unit = "mutation($id: ID!, $i: UpdateUnitInput!) { updateUnit(id: $id, input: $i) {
        id name organisations activityPlace } }";
    for (id, name) in [
        ("c01/k01/t01", "Qingshui Township"),
        ("c01/k01/t02", "Baihe Township"),
        (VILLAGES[0], "Liujia Village"),
        (VILLAGES[1], "Zhangwan Village"),
        (VILLAGES[2], "Taohua Village"),
    ] {
        f.ok(
            Some(&county),
            update_unit,
            json!({ "id": id, "i": { "name": name } }),
        )
        .await;
    }
    let r = f
        .gql(
            Some(&county),
            update_unit,
            json!({ "id": "c01/k01/t09/v09", "i": {} }),
        )
        .await;
    assert_eq!(code(&r), "NOT_FOUND", "an unknown unit without a name: {r}");
    let d = f
        .ok(
            Some(&v01),
            update_unit,
            json!({ "id": VILLAGES[0], "i": {
                "organisations": ["PARTY_BRANCH", "VILLAGERS_COMMITTEE", "FARMERS_COOPERATIVE"],
                "activityPlace": true } }),
        )
        .await;
    assert_eq!(
        d["updateUnit"]["organisations"],
        json!(["FARMERS_COOPERATIVE", "PARTY_BRANCH", "VILLAGERS_COMMITTEE"])
    );
    f.ok(
        Some(&county),
        update_unit,
        json!({ "id": VILLAGES[1], "i": { "organisations": ["PARTY_BRANCH"] } }),
    )
    .await;
    let r = f
        .gql(
            Some(&v01),
            update_unit,
            json!({ "id": VILLAGES[1], "i": { "activityPlace": true } }),
        )
        .await;
    assert_eq!(
        code(&r),
        "FORBIDDEN",
        "a village clerk on another village: {r}"
    );

    // The talent pipeline: v01 has 3 activists, v02 one, t02/v01 an applicant only.
    let activist = "mutation($u: ID!, $s: TalentStage!) { createActivist(input: {
        unit: $u, name: \"Someone\", stage: $s, since: \"2026-02-01\" }) { id } }";
    for (u, stage) in [
        (VILLAGES[0], "ACTIVIST"),
        (VILLAGES[0], "ACTIVIST"),
        (VILLAGES[0], "DEVELOPMENT_TARGET"),
        (VILLAGES[1], "ACTIVIST"),
        (VILLAGES[2], "APPLICANT"),
        (VILLAGES[2], "RESERVE_CADRE"),
    ] {
        f.ok(Some(&county), activist, json!({ "u": u, "s": stage }))
            .await;
    }
    // How evenly: by village, and by township per village.
    let balance = "query($l: Level) { nodeUnit { balance(figure: ACTIVISTS, level: $l, year: 2026,
        ends: 1) { units min max mean stdDev lowest { unit { id name } value }
        highest { unit { id } value } } } }";
    let d = f.ok(Some(&county), balance, json!({})).await;
    let mean = 4.0 / 3.0;
    let sd = ((3.0f64 - mean).powi(2) + (1.0f64 - mean).powi(2) + mean.powi(2)) / 3.0;
    assert_eq!(
        d["nodeUnit"]["balance"],
        json!({ "units": 3, "min": 0.0, "max": 3.0, "mean": mean, "stdDev": sd.sqrt(),
            "lowest": [{ "unit": { "id": VILLAGES[2], "name": "Taohua Village" }, "value": 0.0 }],
            "highest": [{ "unit": { "id": VILLAGES[0] }, "value": 3.0 }] })
    );
    let d = f
        .ok(Some(&county), balance, json!({ "l": "TOWNSHIP" }))
        .await;
    assert_eq!(
        d["nodeUnit"]["balance"]["lowest"],
        json!([{ "unit": { "id": "c01/k01/t02", "name": "Baihe Township" }, "value": 0.0 }])
    );
    assert_eq!(
        d["nodeUnit"]["balance"]["highest"],
        json!([{ "unit": { "id": "c01/k01/t01" }, "value": 2.0 }])
    );
    let d = f.ok(Some(&v01_viewer), balance, json!({})).await;
    assert_eq!(
        d["nodeUnit"]["balance"],
        Value::Null,
        "a village reads no county figures"
    );

    // Routine meetings: v01 holds all four in every quarter of 2025, v02 skips Q4's lecture.
    let meeting = "mutation($u: ID!, $k: MeetingKind!, $d: String!) { createMeeting(input: {
        unit: $u, kind: $k, heldOn: $d, attendance: 12 }) { id } }";
    for (u, skip) in [
        (VILLAGES[0], None),
        (VILLAGES[1], Some(("11", "PARTY_LECTURE"))),
    ] {
        for month in ["02", "05", "08", "11"] {
            for kind in [
                "BRANCH_GENERAL_MEETING",
                "BRANCH_COMMITTEE_MEETING",
                "GROUP_MEETING",
                "PARTY_LECTURE",
            ] {
                if skip == Some((month, kind)) {
                    continue;
                }
                let day = format!("2025-{month}-10");
                f.ok(
                    Some(&county),
                    meeting,
                    json!({ "u": u, "k": kind, "d": day }),
                )
                .await;
            }
        }
    }
    let d = f
        .ok(
            Some(&county),
            r#"{ nodeUnit {
                q2: meetings(subtree: true, period: "2025Q2") { totalCount }
                lectures: meetings(subtree: true, period: "2025", kind: PARTY_LECTURE) { totalCount }
                villages: meetings(subtree: true, level: VILLAGE) { totalCount }
                all: meetings(subtree: true) { totalCount }
                own: meetings { totalCount } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(d["nodeUnit"]["q2"]["totalCount"], 8, "{d}");
    assert_eq!(d["nodeUnit"]["lectures"]["totalCount"], 7, "{d}");
    assert_eq!(d["nodeUnit"]["villages"]["totalCount"], 31, "{d}");
    assert_eq!(d["nodeUnit"]["all"]["totalCount"], 31, "{d}");
    assert_eq!(d["nodeUnit"]["own"]["totalCount"], 0, "{d}");
    // Pages follow each other through their cursors: every meeting once, in order.
    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let d = f
            .ok(
                Some(&county),
                "query($a: String) { nodeUnit { meetings(subtree: true, first: 7, after: $a) {
                    pageInfo { hasNextPage endCursor } edges { node { id } } } } }",
                json!({ "a": after }),
            )
            .await;
        let m = &d["nodeUnit"]["meetings"];
        seen.extend(
            m["edges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["node"]["id"].as_str().unwrap().to_owned()),
        );
        if m["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = m["pageInfo"]["endCursor"].as_str().map(str::to_owned);
        assert!(seen.len() <= 31, "paging does not end: {seen:?}");
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((seen.len(), sorted.len()), (31, 31), "{seen:?}");
    let r = f
        .gql(
            Some(&county),
            r#"{ nodeUnit { meetings(period: "2025Q5") { totalCount } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");

    // An appraisal: the village records it, only a supervisor sets the result.
    let d = f
        .ok(
            Some(&v01),
            "mutation { createAppraisal(input: { unit: \"c01/k01/t01/v01\",
                kind: DEMOCRATIC_APPRAISAL, year: 2025, subject: \"Branch members\" }) { id } }",
            json!({}),
        )
        .await;
    let appraisal = d["createAppraisal"]["id"].as_str().unwrap().to_owned();
    let rate = "mutation($id: ID!) { updateAppraisal(id: $id, input: { result: COMPETENT }) {
        result changed { unit role } } }";
    let r = f.gql(Some(&v01), rate, json!({ "id": appraisal })).await;
    assert_eq!(code(&r), "FORBIDDEN", "a clerk setting a result: {r}");
    let d = f
        .ok(Some(&township), rate, json!({ "id": appraisal }))
        .await;
    assert_eq!(
        d["updateAppraisal"],
        json!({ "result": "COMPETENT", "changed": { "unit": "c01/k01/t01", "role": "SUPERVISOR" } })
    );

    // The county studies rural work twice in 2025, one township once; v01 debriefs.
    for (unit, day) in [
        ("c01/k01", "2025-03-01"),
        ("c01/k01", "2025-09-01"),
        ("c01/k01/t01", "2025-05-01"),
    ] {
        f.ok(
            Some(&county),
            meeting,
            json!({ "u": unit, "k": "STUDY_SESSION", "d": day }),
        )
        .await;
    }
    f.ok(
        Some(&v01),
        "mutation { createReport(input: { unit: \"c01/k01/t01/v01\", kind: DEBRIEFING,
            period: \"2025\", submittedOn: \"2026-01-10\", body: \"...\" }) { id } }",
        json!({}),
    )
    .await;

    // The targets for 2025, each over the units of the levels it applies to.
    let d = f
        .ok(
            Some(&county),
            "{ nodeUnit { targets(year: 2025) { target units levels met missingCount
                missing(first: 10) { id } } } }",
            json!({}),
        )
        .await;
    let targets: std::collections::HashMap<String, Value> = d["nodeUnit"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["target"].as_str().unwrap().to_owned(), t.clone()))
        .collect();
    let missing = |t: &str| -> Vec<String> {
        targets[t]["missing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(targets["ACTIVISTS_PER_VILLAGE"]["units"], 3, "{d}");
    assert_eq!(
        targets["ACTIVISTS_PER_VILLAGE"]["levels"],
        json!(["VILLAGE"]),
        "{d}"
    );
    // The county's own two sessions count for it, not its townships' (one each at most).
    assert_eq!(targets["STUDY_SESSIONS"]["units"], 3, "{d}");
    assert_eq!(missing("STUDY_SESSIONS"), ["c01/k01/t01", "c01/k01/t02"]);
    assert_eq!(targets["DEBRIEFING"]["units"], 6, "{d}");
    assert_eq!(
        missing("DEBRIEFING"),
        [
            "c01/k01",
            "c01/k01/t01",
            VILLAGES[1],
            "c01/k01/t02",
            VILLAGES[2]
        ]
    );
    assert_eq!(missing("ACTIVISTS_PER_VILLAGE"), [VILLAGES[1], VILLAGES[2]]);
    assert_eq!(
        missing("VILLAGE_ORGANISATIONS_AND_PLACE"),
        [VILLAGES[1], VILLAGES[2]]
    );
    assert_eq!(missing("ROUTINE_MEETINGS"), [VILLAGES[1], VILLAGES[2]]);
    assert_eq!(missing("ANNUAL_APPRAISAL"), [VILLAGES[1], VILLAGES[2]]);
    assert_eq!(targets["ANNUAL_APPRAISAL"]["met"], false);

    // Complaints: filed at v01, escalated to the county, answered there.
    let d = f
        .ok(
            Some(&v01),
            "mutation { createComplaint(input: { unit: \"c01/k01/t01/v01\", subject: \"Road\",
                body: \"Potholes\", filedOn: \"2026-01-02\", dueOn: \"2026-01-20\",
                complainant: \"Zhang San\", complainantPhone: \"138 0000 1111\" }) { id } }",
            json!({}),
        )
        .await;
    let complaint = d["createComplaint"]["id"].as_str().unwrap().to_owned();
    let r = f
        .gql(
            Some(&v01),
            "mutation($id: ID!) { updateComplaint(id: $id, input: { status: HANDLED }) { id } }",
            json!({ "id": complaint }),
        )
        .await;
    assert_eq!(
        code(&r),
        "FORBIDDEN",
        "the village clerk cannot close it: {r}"
    );
    let r = f
        .gql(
            Some(&county),
            "mutation($id: ID!) { updateComplaint(id: $id, input: { handler: \"c01/k02\" }) { id } }",
            json!({ "id": complaint }),
        )
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "a handler off the line: {r}");
    // A new complaint is open; while the village handles it, its supervisor may answer it.
    let d = f
        .ok(
            Some(&county),
            "{ nodeUnit { complaints(subtree: true, status: OPEN) { totalCount } } }",
            json!({}),
        )
        .await;
    assert_eq!(d["nodeUnit"]["complaints"]["totalCount"], 1, "{d}");
    let note =
        "mutation($id: ID!) { updateComplaint(id: $id, input: { response: \"Noted\" }) { id } }";
    f.ok(Some(&v01_supervisor), note, json!({ "id": complaint }))
        .await;
    f.ok(
        Some(&county),
        "mutation($id: ID!) { updateComplaint(id: $id, input: { status: ESCALATED,
            handler: \"c01/k01\" }) { id } }",
        json!({ "id": complaint }),
    )
    .await;
    // Escalated to the county, it is no longer the village's to answer or close.
    let r = f
        .gql(Some(&v01_supervisor), note, json!({ "id": complaint }))
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "the village after escalation: {r}");
    let who = "query($id: ID!) { record(id: $id) { ... on Complaint { subject complainant
        complainantPhone handler status } } }";
    for (token, sees) in [
        (&v01, true),
        (&county_clerk, true),
        (&county, true),
        (&v01_viewer, false),
        (&township, false),
    ] {
        let d = f.ok(Some(token), who, json!({ "id": complaint })).await;
        assert_eq!(d["record"]["subject"], "Road", "{d}");
        assert_eq!(
            d["record"]["complainant"] == "Zhang San",
            sees,
            "complainant: {d}"
        );
        assert_eq!(d["record"]["complainantPhone"].is_null(), !sees, "{d}");
    }
    // Another, open and due long after today: open, not overdue.
    f.ok(
        Some(&v01),
        "mutation { createComplaint(input: { unit: \"c01/k01/t01/v01\", subject: \"Lamp\",
            body: \"Broken\", filedOn: \"2026-01-03\", dueOn: \"2999-12-31\" }) { id } }",
        json!({}),
    )
    .await;
    let figures = "{ nodeUnit { indicators(year: 2026) { complaints complaintsOpen
        complaintsOverdue complaintsAnswered meanResponseDays } } }";
    let d = f.ok(Some(&county), figures, json!({})).await;
    assert_eq!(
        d["nodeUnit"]["indicators"],
        json!({ "complaints": 2, "complaintsOpen": 2, "complaintsOverdue": 1,
            "complaintsAnswered": 0, "meanResponseDays": 0.0 })
    );
    f.ok(
        Some(&county),
        "mutation($id: ID!) { updateComplaint(id: $id, input: { status: HANDLED,
            response: \"Repaired\", respondedOn: \"2026-01-11\" }) { id } }",
        json!({ "id": complaint }),
    )
    .await;
    let d = f.ok(Some(&county), figures, json!({})).await;
    assert_eq!(
        d["nodeUnit"]["indicators"],
        json!({ "complaints": 2, "complaintsOpen": 1, "complaintsOverdue": 0,
            "complaintsAnswered": 1, "meanResponseDays": 9.0 })
    );

    // A directive to the villages, with report-backs: issued by a supervisor, not a clerk.
    let issue = "mutation { createDirective(input: { unit: \"c01/k01\", title: \"Spring planting\",
                body: \"...\", issuedOn: \"2026-02-01\", toLevel: VILLAGE, reportBack: true }) { id } }";
    let r = f.gql(Some(&county_clerk), issue, json!({})).await;
    assert_eq!(code(&r), "FORBIDDEN", "a clerk issues a directive: {r}");
    let d = f.ok(Some(&county), issue, json!({})).await;
    let directive = d["createDirective"]["id"].as_str().unwrap().to_owned();
    let target = directive.trim_start_matches("directives:").to_owned();
    let received = "query($u: ID!) { unit(id: $u) { directivesReceived { title } } }";
    let d = f
        .ok(Some(&v01), received, json!({ "u": VILLAGES[0] }))
        .await;
    assert_eq!(
        d["unit"]["directivesReceived"],
        json!([{ "title": "Spring planting" }])
    );
    let d = f
        .ok(Some(&township), received, json!({ "u": "c01/k01/t01" }))
        .await;
    assert_eq!(
        d["unit"]["directivesReceived"],
        json!([]),
        "not addressed: {d}"
    );
    let d = f
        .ok(
            Some(&township),
            "query($id: ID!) { record(id: $id) { __typename } }",
            json!({ "id": directive }),
        )
        .await;
    assert!(d["record"].is_null(), "a township does not read it: {d}");
    let report_back = "mutation($u: ID!, $d: ID!) { createReport(input: { unit: $u,
        kind: REPORT_BACK, period: \"2026Q1\", submittedOn: \"2026-03-01\", body: \"Done\",
        directive: $d }) { id } }";
    let d = f
        .ok(
            Some(&v01),
            report_back,
            json!({ "u": VILLAGES[0], "d": target }),
        )
        .await;
    let report = d["createReport"]["id"].as_str().unwrap().to_owned();
    let r = f
        .gql(
            Some(&county),
            report_back,
            json!({ "u": "c01/k01", "d": target }),
        )
        .await;
    assert_eq!(
        code(&r),
        "BAD_USER_INPUT",
        "the issuer reporting to itself: {r}"
    );
    // A township's report naming the directive is no receipt: it is not addressed.
    f.ok(
        Some(&township),
        report_back,
        json!({ "u": "c01/k01/t01", "d": target }),
    )
    .await;
    // A notice that asks for no report-back has none to receive: not listed.
    f.ok(
        Some(&county),
        "mutation { createDirective(input: { unit: \"c01/k01\", title: \"Notice\",
            body: \"...\", issuedOn: \"2026-02-02\", toLevel: VILLAGE }) { id } }",
        json!({}),
    )
    .await;
    let receipts = "{ nodeUnit { directiveReceipts { totalCount edges { node {
        directive { title } addressed received rate pastDeadline missing { id name } } } } } }";
    let d = f.ok(Some(&county), receipts, json!({})).await;
    assert_eq!(
        d["nodeUnit"]["directiveReceipts"],
        json!({ "totalCount": 1, "edges": [{ "node": { "directive": { "title": "Spring planting" },
            "addressed": 3, "received": 1, "rate": 1.0 / 3.0, "pastDeadline": false,
            "missing": [{ "id": VILLAGES[1], "name": "Zhangwan Village" },
                { "id": VILLAGES[2], "name": "Taohua Village" }] } }] })
    );
    // With a deadline gone by, and asking for one unit of those missing.
    f.ok(
        Some(&county),
        "mutation($id: ID!) { updateDirective(id: $id, input: { deadline: \"2026-03-01\" }) { id } }",
        json!({ "id": directive }),
    )
    .await;
    let d = f
        .ok(
            Some(&county),
            "{ nodeUnit { directiveReceipts { edges { node { pastDeadline missing(first: 1) { id } } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        d["nodeUnit"]["directiveReceipts"]["edges"][0]["node"],
        json!({ "pastDeadline": true, "missing": [{ "id": VILLAGES[1] }] })
    );
    // A report is reviewed from above: the village's own supervisor may not, the township may;
    // a period that is not one is refused.
    let review = "mutation($id: ID!) { updateReport(id: $id, input: { review: ACCEPTED }) { id } }";
    let r = f
        .gql(Some(&v01_supervisor), review, json!({ "id": report }))
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "reviewing its own report: {r}");
    let r = f
        .gql(
            Some(&v01),
            "mutation { createReport(input: { unit: \"c01/k01/t01/v01\", kind: DEBRIEFING,
                period: \"2026Q5\", submittedOn: \"2026-03-01\", body: \"x\" }) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    // The township reviews the report; its figures count it.
    f.ok(
        Some(&township),
        "mutation($id: ID!) { updateReport(id: $id, input: { review: ACCEPTED }) { id } }",
        json!({ "id": report }),
    )
    .await;
    let d = f
        .ok(
            Some(&county),
            "{ nodeUnit { indicators(year: 2026) { reportsSubmitted reportsReviewed directivesIssued } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        d["nodeUnit"]["indicators"],
        json!({ "reportsSubmitted": 2, "reportsReviewed": 1, "directivesIssued": 2 })
    );
    // What was accepted stays so: the village no longer changes the report; the township may.
    let revise =
        "mutation($id: ID!) { updateReport(id: $id, input: { body: \"Revised\" }) { id } }";
    let r = f
        .gql(Some(&v01_supervisor), revise, json!({ "id": report }))
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "changing an accepted report: {r}");
    f.ok(Some(&township), revise, json!({ "id": report })).await;
    // A cadre's performance appraisal is rated from above: the village records it, its own
    // supervisor may not rate it (nor make it one after rating it as a democratic appraisal),
    // the township does.
    let d = f
        .ok(
            Some(&v01_supervisor),
            "mutation { createAppraisal(input: { unit: \"c01/k01/t01/v01\", kind: CADRE_PERFORMANCE,
                year: 2026, subject: \"Secretary Wu\" }) { id } }",
            json!({}),
        )
        .await;
    let appraisal = d["createAppraisal"]["id"].as_str().unwrap().to_owned();
    let rate = "mutation($id: ID!) { updateAppraisal(id: $id, input: { result: EXCELLENT }) {
        result } }";
    let r = f
        .gql(Some(&v01_supervisor), rate, json!({ "id": appraisal }))
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "rating its own cadre: {r}");
    let r = f
        .gql(
            Some(&v01_supervisor),
            "mutation { createAppraisal(input: { unit: \"c01/k01/t01/v01\", kind: DEBRIEFING,
                year: 2026, subject: \"Secretary Wu\", result: EXCELLENT }) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(
        code(&r),
        "FORBIDDEN",
        "a debriefing rated by its own unit: {r}"
    );
    let d = f
        .ok(Some(&township), rate, json!({ "id": appraisal }))
        .await;
    assert_eq!(d["updateAppraisal"]["result"], "EXCELLENT");

    // Disclosures are public; meetings are not.
    f.ok(
        Some(&v01),
        "mutation { createDisclosure(input: { unit: \"c01/k01/t01/v01\", title: \"Subsidies 2026\",
            category: FUNDS, publishedOn: \"2026-03-01\", body: \"...\", item: COLLECTIVE_INCOME }) { id } }",
        json!({}),
    )
    .await;
    let d = f
        .ok(
            None,
            "{ unit(id: \"c01/k01\") { disclosures(subtree: true, category: FUNDS) {
                totalCount edges { node { title unit { name } } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        d["unit"]["disclosures"],
        json!({ "totalCount": 1, "edges": [{ "node": { "title": "Subsidies 2026",
            "unit": { "name": "Liujia Village" } } }] })
    );
    // Who wrote it is named to its unit and the units above, not to the public or to
    // another line reading it.
    let other_line = f.token("c01/k01/t02", Role::Viewer).await;
    let stamp = "{ unit(id: \"c01/k01/t01/v01\") { disclosures { edges { node {
        created { unit user } } } } } }";
    for (token, named) in [
        (Some(&v01), true),
        (Some(&township), true),
        (Some(&other_line), false),
        (None, false),
    ] {
        let d = f.ok(token.map(String::as_str), stamp, json!({})).await;
        let created = &d["unit"]["disclosures"]["edges"][0]["node"]["created"];
        assert_eq!(created["unit"], "c01/k01/t01/v01", "{d}");
        assert_eq!(created["user"].is_string(), named, "{token:?}: {d}");
    }
    let r = f
        .gql(
            None,
            "{ unit(id: \"c01/k01\") { meetings { totalCount } } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");

    // Coverage and pipeline figures, and their children's, from the roll-ups.
    let figures = "{ nodeUnit { indicators(year: 2025) { villages activists applicants
        reserveCadres villagesWithActivityPlace activityPlaceCoverage
        organisationCoverage { organisation villages }
        appraisalsHeld appraisalsCompleted routineMeetings { quarter kind count attendance
        meanAttendance } disclosures { category count inYear }
        appraisalResults { result count } appraisalOutcomes { outcome count } } } }";
    let before = f.ok(Some(&county), figures, json!({})).await;
    let i = &before["nodeUnit"]["indicators"];
    assert_eq!(i["villages"], 3, "{i}");
    assert_eq!(i["activists"], 4, "{i}");
    assert_eq!(i["applicants"], 1, "{i}");
    assert_eq!(i["reserveCadres"], 1, "{i}");
    assert_eq!(i["villagesWithActivityPlace"], 1, "{i}");
    assert_eq!(i["activityPlaceCoverage"], 1.0 / 3.0, "{i}");
    assert_eq!(
        i["organisationCoverage"][0],
        json!({ "organisation": "PARTY_BRANCH", "villages": 2 })
    );
    assert_eq!(
        (
            i["appraisalsHeld"].clone(),
            i["appraisalsCompleted"].clone()
        ),
        (json!(1), json!(1))
    );
    assert_eq!(
        i["routineMeetings"][15],
        json!({ "quarter": "2025Q4", "kind": "PARTY_LECTURE", "count": 1, "attendance": 12,
            "meanAttendance": 12.0 })
    );
    assert_eq!(
        i["appraisalResults"],
        json!([{ "result": "EXCELLENT", "count": 0 }, { "result": "COMPETENT", "count": 1 },
            { "result": "BASICALLY_COMPETENT", "count": 0 }, { "result": "INCOMPETENT", "count": 0 }])
    );
    assert_eq!(
        i["appraisalOutcomes"][0],
        json!({ "outcome": "NO_ACTION", "count": 0 })
    );
    // The disclosure of 2026: counted in all years, not in 2025's.
    assert_eq!(
        i["disclosures"][0],
        json!({ "category": "FUNDS", "count": 1, "inYear": 0 }),
        "{i}"
    );
    let d = f
        .ok(
            Some(&county),
            "{ nodeUnit { indicators(year: 2026) { disclosures { category inYear }
                sensitiveDisclosures { item count } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        d["nodeUnit"]["indicators"]["disclosures"][0],
        json!({ "category": "FUNDS", "inYear": 1 })
    );
    assert_eq!(
        d["nodeUnit"]["indicators"]["sensitiveDisclosures"],
        json!([{ "item": "COLLECTIVE_INCOME", "count": 1 }, { "item": "DEBT", "count": 0 },
            { "item": "INVESTMENT", "count": 0 }, { "item": "CADRE_PAY", "count": 0 },
            { "item": "HOSPITALITY", "count": 0 }])
    );

    // The incrementally kept views equal a rebuild from the documents.
    assert_eq!(
        f.backend.store.verify_views().await.unwrap(),
        Vec::<String>::new()
    );
    f.backend.store.rebuild_views().await.unwrap();
    assert_eq!(f.ok(Some(&county), figures, json!({})).await, before);
}

#[tokio::test]
async fn fund_programmes_are_paid_point_to_point_and_published() {
    let f = fixture().await;
    let county = f.token("c01/k01", Role::Clerk).await;
    let v01 = f.token(VILLAGES[0], Role::Clerk).await;
    let supervisor = f.token("c01/k01", Role::Supervisor).await;
    f.ok(
        Some(&supervisor),
        "mutation { updateUnit(id: \"c01/k01/t01/v01\", input: { name: \"Liujia\" }) { id } }",
        json!({}),
    )
    .await;
    let d = f
        .ok(
            Some(&supervisor),
            "mutation { createFundProgramme(input: { unit: \"c01/k01\", name: \"Farmland subsidy\",
                year: 2026, total: 300000, perRecipient: 800 }) { id } }",
            json!({}),
        )
        .await;
    let programme = d["createFundProgramme"]["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("funds:")
        .to_owned();
    // The village sees the programme it pays out.
    let d = f
        .ok(
            Some(&v01),
            "query($u: ID!) { unit(id: $u) { fundProgrammesAbove { name total } } }",
            json!({ "u": VILLAGES[0] }),
        )
        .await;
    assert_eq!(
        d["unit"]["fundProgrammesAbove"],
        json!([{ "name": "Farmland subsidy", "total": 300000 }])
    );
    let pay = "mutation($p: ID!, $r: String!, $m: DisbursementMethod!, $s: DisbursementStatus!,
        $pub: Boolean) { createDisbursement(input: { unit: \"c01/k01/t01/v01\", programme: $p,
        recipient: $r, recipientIdNumber: \"11010519491231002X\", amount: 800, method: $m,
        status: $s, paidOn: \"2026-04-02\", published: $pub }) { id } }";
    for (recipient, method, status, published) in [
        ("Li Ming", "BANK_TRANSFER", "PAID", true),
        ("Wang Hua", "BANK_TRANSFER", "PAID", false),
        ("Zhao Qiang", "IN_KIND", "DELAYED", false),
    ] {
        f.ok(
            Some(&v01),
            pay,
            json!({ "p": programme, "r": recipient, "m": method, "s": status, "pub": published }),
        )
        .await;
    }
    let r = f
        .gql(
            Some(&v01),
            pay,
            json!({ "p": "c01/k02#00000000000000aa", "r": "X", "m": "CASH", "s": "PAID" }),
        )
        .await;
    assert_eq!(
        code(&r),
        "BAD_USER_INPUT",
        "another county's programme: {r}"
    );

    // Anyone reads the published payment, without the recipient's identity number.
    let list = "query($p: ID) { unit(id: \"c01/k01\") { disbursements(subtree: true,
        programme: $p) { totalCount edges { node { recipient amount recipientIdNumber } } } } }";
    let d = f.ok(None, list, json!({ "p": programme })).await;
    assert_eq!(
        d["unit"]["disbursements"],
        json!({ "totalCount": 1, "edges": [{ "node": { "recipient": "Li Ming", "amount": 800,
            "recipientIdNumber": null } }] })
    );
    let d = f.ok(Some(&v01), list, json!({ "p": programme })).await;
    assert_eq!(d["unit"]["disbursements"]["totalCount"], 3, "{d}");
    assert_eq!(
        d["unit"]["disbursements"]["edges"][0]["node"]["recipientIdNumber"],
        "11010519491231002X"
    );
    // A quarter's, latest first, through the county node's sorted index: counted from its
    // keys for a caller who reads them all, row by row for one who reads the published
    // alone.
    let quarter = "{ unit(id: \"c01/k01\") { disbursements(subtree: true, period: \"2026Q2\",
        orderBy: \"paidOn\", descending: true) { totalCount edges { node { recipient } } } } }";
    let d = f.ok(None, quarter, json!({})).await;
    assert_eq!(
        d["unit"]["disbursements"],
        json!({ "totalCount": 1, "edges": [{ "node": { "recipient": "Li Ming" } }] })
    );
    let d = f.ok(Some(&county), quarter, json!({})).await;
    assert_eq!(d["unit"]["disbursements"]["totalCount"], 3, "{d}");
    // So are the listing's in stored order.
    let all = "{ unit(id: \"c01/k01\") { disbursements(subtree: true) { totalCount } } }";
    let d = f.ok(None, all, json!({})).await;
    assert_eq!(d["unit"]["disbursements"]["totalCount"], 1, "{d}");
    let d = f.ok(Some(&county), all, json!({})).await;
    assert_eq!(d["unit"]["disbursements"]["totalCount"], 3, "{d}");
    let d = f
        .ok(
            Some(&county),
            "{ nodeUnit { indicators(year: 2026) { fundsAllocated fundsDisbursed
                disbursementsInKind disbursements { status count } } } }",
            json!({}),
        )
        .await;
    let i = &d["nodeUnit"]["indicators"];
    assert_eq!(i["fundsAllocated"], 300000, "{i}");
    assert_eq!(i["fundsDisbursed"], 1600, "{i}");
    assert_eq!(i["disbursementsInKind"], 1, "{i}");
    assert_eq!(
        i["disbursements"],
        json!([{ "status": "PLANNED", "count": 0 }, { "status": "PAID", "count": 2 },
            { "status": "DELAYED", "count": 1 }, { "status": "RETURNED", "count": 0 }])
    );
    // One recipient paid 500 of the 800 promised: the programme shows the shortfall. (The
    // two paid above share an identity number: one person, paid 1,600 in two instalments,
    // which does not make up for the other's 300.)
    f.ok(
        Some(&v01),
        "mutation($p: ID!) { createDisbursement(input: { unit: \"c01/k01/t01/v01\",
            programme: $p, recipient: \"Sun Li\", amount: 500, method: BANK_TRANSFER,
            status: PAID, paidOn: \"2026-04-03\" }) { id } }",
        json!({ "p": programme }),
    )
    .await;
    let tracking = "{ nodeUnit { fundTracking { totalCount edges { node { programme { name }
        recipients paid expected shortPaid shortfall overTotal } } } } }";
    let d = f.ok(Some(&county), tracking, json!({})).await;
    assert_eq!(
        d["nodeUnit"]["fundTracking"],
        json!({ "totalCount": 1, "edges": [{ "node": { "programme": { "name": "Farmland subsidy" },
            "recipients": 2, "paid": 2100, "expected": 1600, "shortPaid": 1, "shortfall": 300,
            "overTotal": false } }] })
    );
    let r = f.gql(Some(&v01), tracking, json!({})).await;
    assert_eq!(
        code(&r),
        "FORBIDDEN",
        "a village on its county's programmes: {r}"
    );
    // The county paying a guessed identity number itself learns nothing of the village's
    // recipients: it counts as one more person, not as the village's one paid more.
    f.ok(
        Some(&supervisor),
        "mutation($p: ID!) { createDisbursement(input: { unit: \"c01/k01\",
            programme: $p, recipient: \"Guess\", recipientIdNumber: \"11010519491231002X\",
            amount: 1, method: CASH, status: PAID, paidOn: \"2026-04-04\" }) { id } }",
        json!({ "p": programme }),
    )
    .await;
    // In the village's name, it may not write an identity number it could not read back
    // (and so learn from the count whether someone was paid under it there).
    let r = f
        .gql(
            Some(&supervisor),
            "mutation($p: ID!) { createDisbursement(input: { unit: \"c01/k01/t01/v01\",
            programme: $p, recipient: \"Guess\", recipientIdNumber: \"11010519491231002X\",
            amount: 1, method: CASH, status: PAID, paidOn: \"2026-04-04\" }) { id } }",
            json!({ "p": programme }),
        )
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    // Not published: those marked so and those never marked (Sun Li's).
    let unpublished = "query($p: ID) { unit(id: \"c01/k01/t01/v01\") { disbursements(
        programme: $p, published: false) { edges { node { recipient } } } } }";
    let d = f
        .ok(Some(&v01), unpublished, json!({ "p": programme }))
        .await;
    let mut names: Vec<&str> = d["unit"]["disbursements"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["recipient"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["Sun Li", "Wang Hua", "Zhao Qiang"], "{d}");
    let d = f.ok(Some(&county), tracking, json!({})).await;
    let node = &d["nodeUnit"]["fundTracking"]["edges"][0]["node"];
    assert_eq!(
        (&node["recipients"], &node["shortPaid"]),
        (&json!(3), &json!(2)),
        "{d}"
    );
    assert_eq!(
        f.backend.store.verify_views().await.unwrap(),
        Vec::<String>::new()
    );
}

/// What the units above address to a unit comes a page at a time: the highest issuer's
/// first, each issuer's in id order, `first` of them after the one `after` names, so a
/// list that grows over the years is never read whole into one answer.
#[tokio::test]
async fn directives_received_come_a_page_at_a_time() {
    let f = fixture().await;
    // This node is the county's: what it issues and what its township issues.
    let county = f.token("c01/k01", Role::Supervisor).await;
    let township = f.token("c01/k01/t01", Role::Supervisor).await;
    let v01 = f.token(VILLAGES[0], Role::Clerk).await;
    let update_unit = "mutation($id: ID!, $i: UpdateUnitInput!) { updateUnit(id: $id, input: $i) {
        id } }";
    for (id, name) in [
        ("c01/k01/t01", "Qingshui Township"),
        (VILLAGES[0], "Liujia Village"),
    ] {
        f.ok(
            Some(&county),
            update_unit,
            json!({ "id": id, "i": { "name": name } }),
        )
        .await;
    }
    for (who, unit, title) in [
        (&township, "c01/k01/t01", "Township one"),
        (&county, "c01/k01", "County one"),
        (&township, "c01/k01/t01", "Township two"),
        (&county, "c01/k01", "County two"),
    ] {
        f.ok(
            Some(who),
            "mutation($u: ID!, $t: String!) { createDirective(input: { unit: $u, title: $t,
                body: \"...\", issuedOn: \"2026-02-01\", toLevel: VILLAGE }) { id } }",
            json!({ "u": unit, "t": title }),
        )
        .await;
    }
    let page = "query($u: ID!, $first: Int, $after: ID) { unit(id: $u) {
        directivesReceived(first: $first, after: $after) { id title } } }";
    let d = f.ok(Some(&v01), page, json!({ "u": VILLAGES[0] })).await;
    let whole = d["unit"]["directivesReceived"]
        .as_array()
        .unwrap_or_else(|| panic!("{d}"))
        .clone();
    let titles: Vec<&str> = whole.iter().map(|d| d["title"].as_str().unwrap()).collect();
    assert_eq!(titles.len(), 4);
    assert!(
        titles[..2].iter().all(|t| t.starts_with("County")),
        "{titles:?}"
    );
    // Two at a time, each page going on from the last one's id.
    let mut paged = Vec::new();
    let mut after = serde_json::Value::Null;
    // More rounds than pages: a page that did not go on would repeat itself.
    for _ in 0..4 {
        let d = f
            .ok(
                Some(&v01),
                page,
                json!({ "u": VILLAGES[0], "first": 2, "after": after }),
            )
            .await;
        let items = d["unit"]["directivesReceived"].as_array().unwrap().clone();
        assert!(items.len() <= 2, "{d}");
        let Some(last) = items.last() else { break };
        after = last["id"].clone();
        paged.extend(items);
    }
    assert_eq!(paged, whole);
    let r = f
        .gql(Some(&v01), page, json!({ "u": VILLAGES[0], "first": 101 }))
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
}

#[tokio::test]
async fn null_clears_an_optional_field_and_is_refused_for_a_required_one() {
    let f = fixture().await;
    let clerk = f.token("c01/k01", Role::Clerk).await;
    let supervisor = f.token("c01/k01", Role::Supervisor).await;

    // A record: its optional field cleared, the others left as they were.
    let d = f
        .ok(
            Some(&clerk),
            "mutation { createComplaint(input: { unit: \"c01/k01\", subject: \"Water\",
                body: \"No water\", filedOn: \"2026-02-01\", dueOn: \"2026-02-20\",
                complainant: \"Li Si\", complainantPhone: \"138 0000 2222\" }) { id } }",
            json!({}),
        )
        .await;
    let id = d["createComplaint"]["id"].as_str().unwrap().to_owned();
    let clear =
        "mutation($id: ID!, $i: UpdateComplaintInput!) { updateComplaint(id: $id, input: $i) {
        subject complainant complainantPhone response } }";
    let d = f
        .ok(
            Some(&clerk),
            clear,
            json!({ "id": id, "i": { "complainantPhone": null } }),
        )
        .await;
    let c = &d["updateComplaint"];
    assert_eq!(c["complainantPhone"], Value::Null, "{d}");
    assert_eq!(c["complainant"], "Li Si", "{d}");
    assert_eq!(c["subject"], "Water", "{d}");
    // Read back from the views, not only from the write's answer.
    let d = f
        .ok(
            Some(&clerk),
            "query($id: ID!) { record(id: $id) { ... on Complaint { complainantPhone complainant } } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(d["record"]["complainantPhone"], Value::Null, "{d}");
    assert_eq!(d["record"]["complainant"], "Li Si", "{d}");

    // A required field cannot be cleared; nothing of that write is applied.
    let r = f
        .gql(
            Some(&clerk),
            clear,
            json!({ "id": id, "i": { "subject": null, "complainant": "Wang Wu" } }),
        )
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("subject"),
        "{r}"
    );
    let d = f
        .ok(
            Some(&clerk),
            "query($id: ID!) { record(id: $id) { ... on Complaint { subject complainant } } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(d["record"]["subject"], "Water", "{d}");
    assert_eq!(d["record"]["complainant"], "Li Si", "{d}");
    // Clearing a supervisory field needs the same authority as setting it.
    f.ok(
        Some(&supervisor),
        clear,
        json!({ "id": id, "i": { "response": "On it" } }),
    )
    .await;
    let r = f
        .gql(
            Some(&clerk),
            clear,
            json!({ "id": id, "i": { "response": null } }),
        )
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let d = f
        .ok(
            Some(&supervisor),
            clear,
            json!({ "id": id, "i": { "response": null } }),
        )
        .await;
    assert_eq!(d["updateComplaint"]["response"], Value::Null, "{d}");
    assert_eq!(d["updateComplaint"]["complainant"], "Li Si", "{d}");

    // A member: the phone is optional, the name is not.
    let d = f
        .ok(
            Some(&clerk),
            "mutation { createMember(input: { unit: \"c01/k01\", name: \"Zhao Min\",
                birthYear: 1992, gender: FEMALE, education: COLLEGE, joinedOn: \"2021-06-01\",
                phone: \"139 0000 3333\" }) { id } }",
            json!({}),
        )
        .await;
    let member = d["createMember"]["id"].as_str().unwrap().to_owned();
    let update = "mutation($id: ID!, $i: UpdateMemberInput!) { updateMember(id: $id, input: $i) {
        name phone } }";
    let d = f
        .ok(
            Some(&clerk),
            update,
            json!({ "id": member, "i": { "phone": null } }),
        )
        .await;
    assert_eq!(d["updateMember"]["phone"], Value::Null, "{d}");
    assert_eq!(d["updateMember"]["name"], "Zhao Min", "{d}");
    let r = f
        .gql(
            Some(&clerk),
            update,
            json!({ "id": member, "i": { "name": null } }),
        )
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    let d = f
        .ok(
            Some(&clerk),
            "query($id: ID!) { member(id: $id) { name phone } }",
            json!({ "id": member }),
        )
        .await;
    assert_eq!(d["member"]["name"], "Zhao Min", "{d}");
    assert_eq!(d["member"]["phone"], Value::Null, "{d}");
}

/// A village may hand its complaint up, but not answer it in the name of the unit above:
/// not by hiding the handler behind a space, not in an update that hands it up, and a
/// complaint handed up while marked open is still no longer the village's to change. Once
/// escalated, its text and dates are changed from above the unit handling it.
#[tokio::test]
async fn a_complaint_is_not_answered_in_the_name_of_the_unit_above() {
    let f = fixture().await;
    let v01 = f.token(VILLAGES[0], Role::Clerk).await;
    let v01_supervisor = f.token(VILLAGES[0], Role::Supervisor).await;
    let township = f.token("c01/k01/t01", Role::Supervisor).await;
    let county = f.token("c01/k01", Role::Supervisor).await;
    let file = |extra: &str| {
        format!(
            "mutation {{ createComplaint(input: {{ unit: \"c01/k01/t01/v01\", subject: \"Road\",
                body: \"Potholes\", filedOn: \"2026-03-01\", dueOn: \"2026-03-15\" {extra} }})
                {{ id handler status }} }}"
        )
    };
    // Filed already answered at the township, the handler behind a space.
    let r = f
        .gql(
            Some(&v01_supervisor),
            &file(
                ", handler: \" c01/k01/t01\", status: CLOSED, response: \"Resolved\",
                respondedOn: \"2026-03-02\"",
            ),
            json!({}),
        )
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "filed answered from above: {r}");
    // Filed open, then handed up and answered in one update.
    let d = f.ok(Some(&v01_supervisor), &file(""), json!({})).await;
    let id = d["createComplaint"]["id"].as_str().unwrap().to_owned();
    let update = "mutation($id: ID!, $i: UpdateComplaintInput!) {
        updateComplaint(id: $id, input: $i) { handler status dueOn } }";
    let r = f
        .gql(
            Some(&v01_supervisor),
            update,
            json!({ "id": id, "i": { "handler": "c01/k01/t01", "status": "CLOSED",
                "response": "Resolved by the township", "respondedOn": "2026-03-02" } }),
        )
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "handed up and answered: {r}");
    // Handed up marked open: it waits escalated, and the village no longer edits it.
    let d = f
        .ok(
            Some(&v01_supervisor),
            update,
            json!({ "id": id, "i": { "handler": "c01/k01/t01", "status": "OPEN" } }),
        )
        .await;
    assert_eq!(d["updateComplaint"]["status"], "ESCALATED", "{d}");
    let later = json!({ "id": id, "i": { "dueOn": "2030-01-01" } });
    let r = f.gql(Some(&v01), update, later.clone()).await;
    assert_eq!(code(&r), "FORBIDDEN", "the village moves the due date: {r}");
    // Neither does the township handling it, but the county above it does.
    let r = f.gql(Some(&township), update, later.clone()).await;
    assert_eq!(
        code(&r),
        "FORBIDDEN",
        "the handler moves its own due date: {r}"
    );
    let d = f.ok(Some(&county), update, later).await;
    assert_eq!(d["updateComplaint"]["dueOn"], "2030-01-01", "{d}");
    // The township answers it.
    let d = f
        .ok(
            Some(&township),
            update,
            json!({ "id": id, "i": { "status": "HANDLED", "response": "Repaired",
                "respondedOn": "2026-03-05" } }),
        )
        .await;
    assert_eq!(d["updateComplaint"]["status"], "HANDLED", "{d}");
    // Opened again where it is handled, it waits there: escalated, not open at the village.
    let d = f
        .ok(
            Some(&township),
            update,
            json!({ "id": id, "i": { "status": "OPEN" } }),
        )
        .await;
    assert_eq!(d["updateComplaint"]["status"], "ESCALATED", "{d}");
}

/// The record feed lists what the caller may read, in the order the node stored it, each
/// record at its last change, deletions to those who may read the unit's records, and goes
/// on from a cursor.
#[tokio::test]
async fn the_record_feed_follows_visibility_and_goes_on_from_a_cursor() {
    let f = fixture().await;
    let county = f.token("c01/k01", Role::Supervisor).await;
    let update_unit =
        "mutation($id: ID!) { updateUnit(id: $id, input: { name: \"A unit\" }) { id } }";
    for id in ["c01/k01/t01", "c01/k01/t02", VILLAGES[0], VILLAGES[2]] {
        f.ok(Some(&county), update_unit, json!({ "id": id })).await;
    }
    let v01 = f.token(VILLAGES[0], Role::Clerk).await;
    let t02v01 = f.token(VILLAGES[2], Role::Clerk).await;
    let create = "mutation($u: ID!, $n: String!) { createMember(input: { unit: $u, name: $n,
        birthYear: 1980, gender: MALE, education: PRIMARY, joinedOn: \"2020-07-01\" }) { id } }";
    let m1 = f
        .ok(
            Some(&v01),
            create,
            json!({ "u": VILLAGES[0], "n": "Li Wei" }),
        )
        .await["createMember"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let m2 = f
        .ok(
            Some(&t02v01),
            create,
            json!({ "u": VILLAGES[2], "n": "Wang Fang" }),
        )
        .await["createMember"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let disclosure = f
        .ok(
            Some(&v01),
            "mutation { createDisclosure(input: { unit: \"c01/k01/t01/v01\", title: \"Roads\",
                category: FUNDS, publishedOn: \"2026-03-01\", body: \"...\" }) { id } }",
            json!({}),
        )
        .await["createDisclosure"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let feed = "query($u: ID, $a: String, $f: Int) { recordFeed(unit: $u, after: $a, first: $f) {
        cursor hasMore reset entries { id kind unit deleted
            member { name } record { ... on Disclosure { title } } } } }";
    let ids = |d: &Value| -> Vec<(String, bool)> {
        d["recordFeed"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["id"].as_str().unwrap().to_owned(), e["deleted"] == true))
            .collect()
    };
    let d = f.ok(Some(&county), feed, json!({})).await;
    assert_eq!(
        ids(&d),
        vec![
            (m1.clone(), false),
            (m2.clone(), false),
            (disclosure.clone(), false)
        ]
    );
    let entries = &d["recordFeed"]["entries"];
    assert_eq!(entries[0]["member"]["name"], "Li Wei");
    assert_eq!(entries[0]["kind"], "MEMBERS");
    assert!(entries[0]["record"].is_null());
    assert_eq!(entries[2]["record"]["title"], "Roads");
    assert_eq!(entries[2]["kind"], "DISCLOSURES");
    assert_eq!(d["recordFeed"]["hasMore"], false);
    assert_eq!(d["recordFeed"]["reset"], false);
    let cursor = d["recordFeed"]["cursor"].as_str().unwrap().to_owned();
    // One unit's subtree; a page of one, then on from its cursor.
    let d = f
        .ok(Some(&county), feed, json!({ "u": "c01/k01/t02" }))
        .await;
    assert_eq!(ids(&d), vec![(m2.clone(), false)]);
    let d = f.ok(Some(&county), feed, json!({ "f": 1 })).await;
    assert_eq!(ids(&d), vec![(m1.clone(), false)]);
    assert_eq!(d["recordFeed"]["hasMore"], true);
    let next = d["recordFeed"]["cursor"].as_str().unwrap().to_owned();
    let d = f
        .ok(Some(&county), feed, json!({ "a": next, "f": 1 }))
        .await;
    assert_eq!(ids(&d), vec![(m2.clone(), false)]);
    // A village's clerk sees its own records and the public ones, not another village's;
    // the public sees the published disclosure only.
    let d = f.ok(Some(&v01), feed, json!({})).await;
    assert_eq!(
        ids(&d),
        vec![(m1.clone(), false), (disclosure.clone(), false)]
    );
    let d = f.ok(None, feed, json!({})).await;
    assert_eq!(ids(&d), vec![(disclosure.clone(), false)]);
    // After a change and a deletion, the county's cursor lists both, once each; the
    // deletion is not shown to a caller who may not read the unit's members.
    f.ok(
        Some(&v01),
        "mutation($id: ID!) { updateMember(id: $id, input: { name: \"Li Wei Jr\" }) { id } }",
        json!({ "id": m1 }),
    )
    .await;
    f.ok(
        Some(&t02v01),
        "mutation($id: ID!) { deleteMember(id: $id) { id } }",
        json!({ "id": m2 }),
    )
    .await;
    let d = f.ok(Some(&county), feed, json!({ "a": cursor })).await;
    assert_eq!(ids(&d), vec![(m1.clone(), false), (m2.clone(), true)]);
    assert_eq!(d["recordFeed"]["entries"][0]["member"]["name"], "Li Wei Jr");
    assert!(d["recordFeed"]["entries"][1]["member"].is_null());
    let d = f.ok(Some(&v01), feed, json!({ "a": cursor })).await;
    assert_eq!(ids(&d), vec![(m1.clone(), false)]);
    // A record the caller may no longer read is listed as deleted, without its content: a
    // directive to the townships, moved to the villages, leaves the township's copy.
    let township = f.token("c01/k01/t01", Role::Viewer).await;
    let from_here = f.ok(Some(&township), feed, json!({})).await["recordFeed"]["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let directive = f
        .ok(
            Some(&county),
            "mutation { createDirective(input: { unit: \"c01/k01\", title: \"Roads\",
                body: \"...\", issuedOn: \"2026-02-01\", toLevel: TOWNSHIP }) { id } }",
            json!({}),
        )
        .await["createDirective"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = f.ok(Some(&township), feed, json!({ "a": from_here })).await;
    assert_eq!(ids(&d), vec![(directive.clone(), false)]);
    let from_here = d["recordFeed"]["cursor"].as_str().unwrap().to_owned();
    f.ok(
        Some(&county),
        "mutation($id: ID!) { updateDirective(id: $id, input: { toLevel: VILLAGE }) { id } }",
        json!({ "id": directive }),
    )
    .await;
    let d = f.ok(Some(&township), feed, json!({ "a": from_here })).await;
    assert_eq!(ids(&d), vec![(directive.clone(), true)]);
    assert!(d["recordFeed"]["entries"][0]["record"].is_null());
    // A cursor opens only at the node that gave it: another node's reads from the start.
    let other = fixture().await;
    let other_county = other.token("c01/k01", Role::Supervisor).await;
    let foreign = other.ok(Some(&other_county), feed, json!({})).await["recordFeed"]["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    other.shutdown().await;
    let d = f
        .ok(Some(&county), feed, json!({ "a": foreign, "f": 100 }))
        .await;
    assert_eq!(d["recordFeed"]["reset"], true);
    assert_eq!(
        ids(&d),
        vec![
            (disclosure.clone(), false),
            (m1.clone(), false),
            (m2.clone(), true),
            (directive.clone(), false)
        ]
    );
    // Bad input is refused with a clear error.
    let r = f
        .gql(Some(&county), feed, json!({ "a": "yesterday" }))
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    for first in [0, 1000] {
        let r = f.gql(Some(&county), feed, json!({ "f": first })).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "first {first}: {r}");
    }
    f.shutdown().await;
}

/// Listings ordered by a field: in order, paged by their own cursors, refused for an
/// unknown or sensitive field.
#[tokio::test]
async fn listings_order_by_a_field_and_page_in_that_order() {
    let f = fixture().await;
    let county = f.token("c01/k01", Role::Supervisor).await;
    for id in ["c01/k01/t01", VILLAGES[0], VILLAGES[1]] {
        f.ok(
            Some(&county),
            "mutation($id: ID!) { updateUnit(id: $id, input: { name: \"A unit\" }) { id } }",
            json!({ "id": id }),
        )
        .await;
    }
    let create = "mutation($u: ID!, $n: String!, $y: Int!) { createMember(input: { unit: $u,
        name: $n, birthYear: $y, gender: MALE, education: PRIMARY, joinedOn: \"2020-07-01\" }) { id } }";
    for (u, n, y) in [
        (VILLAGES[0], "Zhao Lei", 1990),
        (VILLAGES[1], "An Ping", 1970),
        (VILLAGES[0], "Li Na", 1980),
    ] {
        f.ok(Some(&county), create, json!({ "u": u, "n": n, "y": y }))
            .await;
    }
    let members = "query($o: MemberOrder, $d: Boolean, $a: String, $f: Int) {
        unit(id: \"c01/k01\") { members(subtree: true, orderBy: $o, descending: $d, after: $a,
            first: $f) { totalCount pageInfo { hasNextPage } edges { cursor node { name } } } } }";
    let names = |d: &Value| -> Vec<String> {
        d["unit"]["members"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let d = f.ok(Some(&county), members, json!({ "o": "NAME" })).await;
    assert_eq!(names(&d), ["An Ping", "Li Na", "Zhao Lei"]);
    assert_eq!(d["unit"]["members"]["totalCount"], 3);
    let d = f
        .ok(
            Some(&county),
            members,
            json!({ "o": "BIRTH_YEAR", "d": true }),
        )
        .await;
    assert_eq!(names(&d), ["Zhao Lei", "Li Na", "An Ping"]);
    // Page by page in that order, each from the last one's cursor.
    let (mut after, mut paged) = (Value::Null, Vec::new());
    // At most a page more than there are members: a listing that never ends fails here.
    for _ in 0..4 {
        let d = f
            .ok(
                Some(&county),
                members,
                json!({ "o": "BIRTH_YEAR", "a": after, "f": 1 }),
            )
            .await;
        paged.extend(names(&d));
        let edges = d["unit"]["members"]["edges"].as_array().unwrap().clone();
        assert!(!edges.is_empty(), "an empty page: {d}");
        after = edges[0]["cursor"].clone();
        if d["unit"]["members"]["pageInfo"]["hasNextPage"] == false {
            break;
        }
    }
    assert_eq!(paged, ["An Ping", "Li Na", "Zhao Lei"]);
    let r = f.gql(Some(&county), members, json!({ "d": true })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    // A cursor of the unordered listing is not one of the ordered listing's.
    let plain = f.ok(Some(&county), members, json!({ "f": 1 })).await["unit"]["members"]["edges"]
        [0]["cursor"]
        .clone();
    let r = f
        .gql(Some(&county), members, json!({ "o": "NAME", "a": plain }))
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    // Nor, the other way, nor a cursor of another ordering or direction: each would put the
    // page at a meaningless place.
    let by_name = f
        .ok(Some(&county), members, json!({ "o": "NAME", "f": 1 }))
        .await["unit"]["members"]["edges"][0]["cursor"]
        .clone();
    for vars in [
        json!({ "a": by_name }),
        json!({ "o": "BIRTH_YEAR", "a": by_name }),
        json!({ "o": "NAME", "d": true, "a": by_name }),
    ] {
        let r = f.gql(Some(&county), members, vars.clone()).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{vars}: {r}");
    }
    let d = f
        .ok(Some(&county), members, json!({ "o": "NAME", "a": by_name }))
        .await;
    assert_eq!(names(&d), ["Li Na", "Zhao Lei"]);

    // Records: by a field, latest first; a record without the field comes last.
    let meeting = "mutation($d: String!, $h: Int) { createMeeting(input: {
        unit: \"c01/k01/t01/v01\", kind: GROUP_MEETING, heldOn: $d, attendance: 9, hours: $h }) { id } }";
    for (d, h) in [
        ("2026-03-01", Some(2)),
        ("2026-05-01", None),
        ("2026-01-01", Some(3)),
    ] {
        f.ok(Some(&county), meeting, json!({ "d": d, "h": h }))
            .await;
    }
    let meetings = "query($o: String, $d: Boolean) { unit(id: \"c01/k01/t01/v01\") {
        meetings(orderBy: $o, descending: $d) { edges { node { heldOn } } } } }";
    let held = |d: &Value| -> Vec<String> {
        d["unit"]["meetings"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["heldOn"].as_str().unwrap().to_owned())
            .collect()
    };
    let d = f
        .ok(Some(&county), meetings, json!({ "o": "heldOn", "d": true }))
        .await;
    assert_eq!(held(&d), ["2026-05-01", "2026-03-01", "2026-01-01"]);
    let d = f.ok(Some(&county), meetings, json!({ "o": "hours" })).await;
    assert_eq!(held(&d), ["2026-03-01", "2026-01-01", "2026-05-01"]);
    let d = f
        .ok(Some(&county), meetings, json!({ "o": "hours", "d": true }))
        .await;
    assert_eq!(held(&d), ["2026-01-01", "2026-03-01", "2026-05-01"]);
    // An ordered record cursor (its key names the kind, `meetings|...`) is not one of the
    // stored-order listing's, where it would otherwise decode as a (key, record) pair.
    let paged = "query($o: String, $a: String) { unit(id: \"c01/k01/t01/v01\") {
        meetings(orderBy: $o, first: 1, after: $a) { edges { cursor } } } }";
    let ordered = f.ok(Some(&county), paged, json!({ "o": "hours" })).await["unit"]["meetings"]
        ["edges"][0]["cursor"]
        .clone();
    let r = f.gql(Some(&county), paged, json!({ "a": ordered })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    // A direction without an ordering is refused, not ignored.
    let r = f.gql(Some(&county), meetings, json!({ "d": true })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    // Not by an unknown field, a long text, or a period (whose forms do not sort as
    // periods).
    for field in ["colour", "summary"] {
        let r = f.gql(Some(&county), meetings, json!({ "o": field })).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{field}: {r}");
    }
    f.ok(Some(&county), meetings, json!({ "o": "theme" })).await;
    let r = f
        .gql(
            Some(&county),
            "{ unit(id: \"c01/k01/t01/v01\") { reports(orderBy: \"period\") { totalCount } } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    // Only what the caller may read is ordered and counted: a township sees the county's
    // directive to townships, not the one to villages.
    for level in ["TOWNSHIP", "VILLAGE"] {
        f.ok(
            Some(&county),
            &format!(
                "mutation {{ createDirective(input: {{ unit: \"c01/k01\", title: \"{level}\",
                    body: \"...\", issuedOn: \"2026-02-01\", toLevel: {level} }}) {{ id }} }}"
            ),
            json!({}),
        )
        .await;
    }
    let township = f.token("c01/k01/t01", Role::Viewer).await;
    let d = f
        .ok(
            Some(&township),
            "{ unit(id: \"c01/k01\") { directives(orderBy: \"title\") { totalCount
                edges { node { title } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        d["unit"]["directives"],
        json!({ "totalCount": 1, "edges": [{ "node": { "title": "TOWNSHIP" } }] })
    );
    // Not by a sensitive field: the order would tell what the caller may not read.
    let r = f
        .gql(
            Some(&county),
            "{ unit(id: \"c01/k01/t01/v01\") { complaints(orderBy: \"complainantPhone\") { totalCount } } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    f.shutdown().await;
}

/// A member row that does not decode (bit rot, a bug) is passed over by the record feed,
/// which goes on past it, instead of failing every page at that position for good.
#[tokio::test]
async fn the_record_feed_passes_over_a_row_that_does_not_decode() {
    use grassroots_gateway::Backend;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let county: grassroots_schema::UnitId = "c01/k01".parse().unwrap();
    let (store, reader, thread) = grassroots_node::store::open(&path, county.clone()).unwrap();
    let create = |n: &str| grassroots_schema::NewMember {
        name: n.into(),
        birth_year: 1980,
        gender: grassroots_schema::Gender::Male,
        education: grassroots_schema::Education::Primary,
        joined_on: "2020-07-01".into(),
        status: grassroots_schema::MemberStatus::Full,
        phone: None,
        id_number: None,
        categories: Vec::new(),
    };
    let broken = store
        .create_member(county.clone(), create("Broken"))
        .await
        .unwrap();
    let fine = store
        .create_member(county.clone(), create("Fine"))
        .await
        .unwrap();
    thread.shutdown().await;
    drop((store, reader));
    {
        // The first member's view row overwritten with bytes that are not a member.
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<'_, (&str, &str), &[u8]> =
                redb::TableDefinition::new("view-members-1");
            let mut rows = tx.open_table(table).unwrap();
            let rec = broken.id.record.to_string();
            rows.insert(
                (county.tree_key().as_str(), rec.as_str()),
                b"{not json".as_slice(),
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let (store, reader, thread) = grassroots_node::store::open(&path, county.clone()).unwrap();
    let f = Fixture::over(
        Backend {
            node_unit: county.clone(),
            store,
            reader,
            own_nodes: Vec::new(),
        },
        thread,
        dir,
    );
    let token = f.token("c01/k01", Role::Viewer).await;
    let d = f
        .ok(
            Some(&token),
            "{ recordFeed { hasMore entries { id member { name } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        d["recordFeed"],
        json!({ "hasMore": false, "entries": [
            { "id": fine.id.to_string(), "member": { "name": "Fine" } }] })
    );
    f.shutdown().await;
}
