//! Real nodes on loopback: visibility follows the tree, offline writes converge, forged
//! changes are refused.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use automerge::sync::{self, SyncDoc};
use grassroots::federation::Federation;
use grassroots_node::auth::{new_token, token_hash};
use grassroots_node::net::{self, read_frame, write_frame};
use grassroots_node::sync::wire::{
    EARLY_HELLO, Hello, Msg, RejectReason, Summary, VERSIONS, Versions,
};
use grassroots_node::{Identity, doc};
use grassroots_schema::{
    DocId, DocKind, DocMeta, Education, Gender, MemberStatus, NewMember, RecordId, Role, UnitId,
};
use grassroots_tests::relay::Relay;
use grassroots_tests::{
    behind_relay, error_code, eventually, fast_links, gql, link_up, relay_of, small_tree, start,
    unit,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

const CREATE: &str =
    "mutation($input: CreateMemberInput!) { createMember(input: $input) { id name unit { id } } }";
const UPDATE: &str = "mutation($id: ID!, $input: UpdateMemberInput!) { updateMember(id: $id, input: $input) { id name education } }";
const MEMBER: &str =
    "query($id: ID!) { member(id: $id) { id name education created { unit role } } }";

fn new_member(unit: &str, name: &str) -> Value {
    json!({ "input": { "unit": unit, "name": name, "birthYear": 1992, "gender": "FEMALE",
                       "education": "SENIOR_SECONDARY", "joinedOn": "2018-07-01" } })
}

/// Create a member named `name` of `unit` through `url` as `token`; its id.
async fn create_member(url: &str, token: &str, unit: &str, name: &str) -> anyhow::Result<String> {
    let r = gql(url, Some(token), CREATE, new_member(unit, name)).await?;
    r["data"]["createMember"]["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("creating {name} failed: {r}"))
}

async fn member_at(url: &str, token: Option<&str>, id: &str) -> anyhow::Result<Value> {
    let r = gql(url, token, MEMBER, json!({ "id": id })).await?;
    Ok(r["data"]["member"].clone())
}

/// Wait until, answered without error, the member `id` is shown at `url` (`want`) or not.
async fn until_member(
    what: &str,
    url: &str,
    token: &str,
    id: &str,
    want: bool,
) -> anyhow::Result<()> {
    eventually(WAIT, what, || async move {
        let r = gql(url, Some(token), MEMBER, json!({ "id": id })).await?;
        anyhow::ensure!(r["errors"].is_null(), "{r}");
        Ok((r["data"]["member"].is_null() != want).then_some(()))
    })
    .await
}

/// Assert that `at` has refused nothing from `from` since it started.
async fn no_rejections(fed: &Federation, at: &UnitId, from: &UnitId) -> anyhow::Result<()> {
    let status = fed.node(at)?.node.store().status().await?;
    let link = status
        .links
        .iter()
        .find(|l| l.peer == *from)
        .with_context(|| format!("no link from {from} at {at}"))?;
    anyhow::ensure!(link.rejected == 0, "{link:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn village_member_reaches_ancestors_and_no_one_else() -> anyhow::Result<()> {
    let (fed, _dir) = start(small_tree(), None).await?;
    let (v01, v02, t01, k01, c01) = (
        unit("c01/k01/t01/v01"),
        unit("c01/k01/t01/v02"),
        unit("c01/k01/t01"),
        unit("c01/k01"),
        unit("c01"),
    );
    let (k02, k02v) = (unit("c01/k02"), unit("c01/k02/t01/v01"));

    let id = create_member(
        &fed.graphql_url(&v01)?,
        fed.token(&v01, Role::Clerk)?,
        "c01/k01/t01/v01",
        "Chen Xiu",
    )
    .await?;

    // Up the tree within seconds: township, county, city.
    for u in [&t01, &k01, &c01] {
        let (url, token) = (fed.graphql_url(u)?, fed.token(u, Role::Viewer)?.to_owned());
        let m =
            eventually(WAIT, &format!("member at {u}"), || {
                let (url, token, id) = (url.clone(), token.clone(), id.clone());
                async move {
                    Ok(Some(member_at(&url, Some(&token), &id).await?).filter(|m| !m.is_null()))
                }
            })
            .await?;
        assert_eq!(m["name"], "Chen Xiu");
        // Who created it travels with the record.
        assert_eq!(
            m["created"],
            json!({ "unit": "c01/k01/t01/v01", "role": "CLERK" }),
            "at {u}"
        );
    }

    // The city's figures, and each county's read in one batch by `children`: the member
    // counts once in the city's, in k01's and in no other county's.
    let r = gql(
        &fed.graphql_url(&c01)?,
        Some(fed.token(&c01, Role::Viewer)?),
        "{ nodeUnit { indicators { members } children { id indicators { members } } } }",
        json!({}),
    )
    .await?;
    assert_eq!(r["data"]["nodeUnit"]["indicators"]["members"], 1, "{r}");
    // The city's record feed lists the member it received from below, as one made there
    // would be.
    let feed = gql(
        &fed.graphql_url(&c01)?,
        Some(fed.token(&c01, Role::Viewer)?),
        "{ recordFeed { hasMore entries { id kind deleted member { name } } } }",
        json!({}),
    )
    .await?;
    assert_eq!(
        feed["data"]["recordFeed"],
        json!({ "hasMore": false, "entries": [{ "id": id, "kind": "MEMBERS", "deleted": false,
            "member": { "name": "Chen Xiu" } }] }),
        "{feed}"
    );
    let counties = r["data"]["nodeUnit"]["children"]
        .as_array()
        .context("children")?;
    assert_eq!(counties.len(), 2, "{r}");
    for c in counties {
        let want = if c["id"] == "c01/k01" { 1 } else { 0 };
        assert_eq!(c["indicators"]["members"], want, "{r}");
    }

    // Never to a sibling village or another county: the data is not even there.
    for u in [&v02, &k02, &k02v] {
        let url = fed.graphql_url(u)?;
        assert!(
            member_at(&url, Some(fed.token(u, Role::Admin)?), &id)
                .await?
                .is_null(),
            "visible at {u}"
        );
        let r = gql(
            &url,
            Some(fed.token(u, Role::Admin)?),
            "query($id: ID!) { unit(id: $id) { id } }",
            json!({ "id": "c01/k01/t01/v01" }),
        )
        .await?;
        assert!(r["data"]["unit"].is_null(), "{u} knows the village: {r}");
        // Not held at all, whatever the rules would show: read from the node's store.
        let held = fed.node(u)?.node.reader().members(&v01, false, None, 1)?;
        assert_eq!(held.total, 0, "{u} holds the village's register");
    }
    // The township that relayed it does hold it (the read above can tell).
    let held = fed
        .node(&t01)?
        .node
        .reader()
        .members(&v01, false, None, 1)?;
    assert_eq!(held.total, 1, "the township's store");

    // At the city, which holds the data, the rules still decide: anonymous callers and a
    // sibling village's tokens see nothing and cannot write.
    let city = fed.graphql_url(&c01)?;
    assert!(member_at(&city, None, &id).await?.is_null());
    let r = gql(
        &city,
        None,
        "{ unit(id: \"c01/k01/t01/v01\") { name members { totalCount } } }",
        json!({}),
    )
    .await?;
    assert_eq!(error_code(&r), Some("UNAUTHENTICATED"), "{r}");
    let store = fed.node(&c01)?.node.store();
    let (sib_viewer, sib_clerk) = (new_token()?, new_token()?);
    store
        .add_user(token_hash(&sib_viewer), v02.clone(), Role::Viewer)
        .await?;
    store
        .add_user(token_hash(&sib_clerk), v02.clone(), Role::Clerk)
        .await?;
    assert!(member_at(&city, Some(&sib_viewer), &id).await?.is_null());
    let r = gql(
        &city,
        Some(&sib_viewer),
        "{ unit(id: \"c01/k01/t01/v01\") { members { totalCount } } }",
        json!({}),
    )
    .await?;
    assert_eq!(error_code(&r), Some("FORBIDDEN"), "{r}");
    let r = gql(
        &city,
        Some(&sib_clerk),
        CREATE,
        new_member("c01/k01/t01/v01", "Intruder"),
    )
    .await?;
    assert_eq!(error_code(&r), Some("FORBIDDEN"), "{r}");
    // And at the sibling's own node.
    let r = gql(
        &fed.graphql_url(&v02)?,
        Some(fed.token(&v02, Role::Clerk)?),
        CREATE,
        new_member("c01/k01/t01/v01", "Intruder"),
    )
    .await?;
    assert_eq!(error_code(&r), Some("FORBIDDEN"), "{r}");
    // A viewer cannot write its own unit either; a bad date is BAD_USER_INPUT.
    let r = gql(
        &fed.graphql_url(&v01)?,
        Some(fed.token(&v01, Role::Viewer)?),
        CREATE,
        new_member("c01/k01/t01/v01", "X"),
    )
    .await?;
    assert_eq!(error_code(&r), Some("FORBIDDEN"), "{r}");
    let mut bad = new_member("c01/k01/t01/v01", "X");
    bad["input"]["joinedOn"] = json!("2023-02-29");
    let r = gql(
        &fed.graphql_url(&v01)?,
        Some(fed.token(&v01, Role::Clerk)?),
        CREATE,
        bad,
    )
    .await?;
    assert_eq!(error_code(&r), Some("BAD_USER_INPUT"), "{r}");
    let r = gql(
        &fed.graphql_url(&v01)?,
        Some("grt_not_a_token"),
        "{ me { role } }",
        json!({}),
    )
    .await?;
    assert_eq!(error_code(&r), Some("UNAUTHENTICATED"), "{r}");
    fed.shutdown().await;
    Ok(())
}

/// Poll `query` at `url` until `pick` finds something in its data.
async fn until(
    url: &str,
    token: Option<&str>,
    query: &str,
    vars: Value,
    what: &str,
    pick: impl Fn(&Value) -> Option<Value>,
) -> anyhow::Result<Value> {
    eventually(WAIT, what, || {
        let (url, token, vars) = (url.to_owned(), token.map(str::to_owned), vars.clone());
        let r = async move { gql(&url, token.as_deref(), query, vars).await };
        let pick = &pick;
        async move { Ok(pick(&r.await?["data"])) }
    })
    .await
}

/// A unit without a node, named from above, is registered up to the naming node, so its
/// records travel up like any other's (a node creates documents from a link only for units
/// of the registered tree).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_named_from_above_travel_up_like_any_other() -> anyhow::Result<()> {
    let (fed, _dir) = start(small_tree(), None).await?;
    let (k02, c01) = (unit("c01/k02"), unit("c01"));
    let url = fed.graphql_url(&k02)?;
    let token = fed.token(&k02, Role::Supervisor)?;
    let name =
        "mutation($id: ID!, $n: String!) { updateUnit(id: $id, input: { name: $n }) { id } }";
    for (id, n) in [
        ("c01/k02/t09/v09", "Hilltop Village"),
        ("c01/k02/t09", "Riverbend Township"),
    ] {
        let r = gql(&url, Some(token), name, json!({ "id": id, "n": n })).await?;
        anyhow::ensure!(r["errors"].is_null(), "naming {id}: {r}");
    }
    let id = create_member(&url, token, "c01/k02/t09/v09", "Lin Hua").await?;
    let city = fed.graphql_url(&c01)?;
    let viewer = fed.token(&c01, Role::Viewer)?;
    until(
        &city,
        Some(viewer),
        MEMBER,
        json!({ "id": id }),
        "the member at the city",
        |d| d["member"]["name"].as_str().map(|_| d["member"].clone()),
    )
    .await?;
    until(
        &city,
        Some(viewer),
        "{ unit(id: \"c01/k02/t09\") { name children { id } } }",
        json!({}),
        "the township and its village at the city",
        |d| (d["unit"]["children"][0]["id"] == "c01/k02/t09/v09").then(|| d.clone()),
    )
    .await?;
    fed.shutdown().await;
    Ok(())
}

/// Records of the other kinds travel by the same rules as members: a complaint filed at a
/// village is handled at the county and the handling flows back down; a directive to the
/// villages reaches them through a township that cannot read it, and their report-backs
/// reach the county; a village's disclosure is public at the city. The views every node
/// built from its peers' changes equal a rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_every_kind_travel_by_the_rules() -> anyhow::Result<()> {
    let (fed, _dir) = start(small_tree(), None).await?;
    let (v01, t01, k01, c01) = (
        unit("c01/k01/t01/v01"),
        unit("c01/k01/t01"),
        unit("c01/k01"),
        unit("c01"),
    );
    let (v01_url, k01_url) = (fed.graphql_url(&v01)?, fed.graphql_url(&k01)?);
    let v01_clerk = fed.token(&v01, Role::Clerk)?.to_owned();
    let r = gql(
        &v01_url,
        Some(&v01_clerk),
        "mutation { createComplaint(input: { unit: \"c01/k01/t01/v01\", subject: \"Road\",
            body: \"Potholes\", filedOn: \"2026-01-02\", dueOn: \"2026-01-20\",
            complainant: \"Zhang San\" }) { id } }",
        json!({}),
    )
    .await?;
    let complaint = r["data"]["createComplaint"]["id"]
        .as_str()
        .with_context(|| format!("complaint: {r}"))?
        .to_owned();
    let read = "query($id: ID!) { record(id: $id) { ... on Complaint { status complainant
        response changed { unit } } } }";
    // At the county: readable, the complainant hidden from a county viewer.
    let k01_viewer = fed.token(&k01, Role::Viewer)?.to_owned();
    let seen = until(
        &k01_url,
        Some(&k01_viewer),
        read,
        json!({ "id": complaint }),
        "the complaint at the county",
        |d| Some(d["record"].clone()).filter(|r| !r.is_null()),
    )
    .await?;
    assert!(seen["complainant"].is_null(), "{seen}");
    let r = gql(
        &k01_url,
        Some(fed.token(&k01, Role::Supervisor)?),
        "mutation($id: ID!) { updateComplaint(id: $id, input: { status: HANDLED,
            response: \"Repaired\", respondedOn: \"2026-01-11\" }) { status } }",
        json!({ "id": complaint }),
    )
    .await?;
    assert_eq!(r["data"]["updateComplaint"]["status"], "HANDLED", "{r}");
    // The handling flows back down to the village.
    let back = until(
        &v01_url,
        Some(&v01_clerk),
        read,
        json!({ "id": complaint }),
        "the handling at the village",
        |d| Some(d["record"].clone()).filter(|r| r["status"] == "HANDLED"),
    )
    .await?;
    assert_eq!(back["response"], "Repaired");
    assert_eq!(
        back["complainant"], "Zhang San",
        "the filing clerk sees who complained"
    );
    assert_eq!(back["changed"]["unit"], "c01/k01");

    // A directive to the villages of the county.
    let r = gql(
        &k01_url,
        Some(fed.token(&k01, Role::Supervisor)?),
        "mutation { createDirective(input: { unit: \"c01/k01\", title: \"Spring planting\",
            body: \"...\", issuedOn: \"2026-02-01\", toLevel: VILLAGE, reportBack: true }) { id } }",
        json!({}),
    )
    .await?;
    let directive = r["data"]["createDirective"]["id"]
        .as_str()
        .with_context(|| format!("directive: {r}"))?
        .to_owned();
    let received = "{ nodeUnit { directivesReceived { id title } } }";
    until(
        &v01_url,
        Some(&v01_clerk),
        received,
        json!({}),
        "the directive at the village",
        |d| {
            d["nodeUnit"]["directivesReceived"]
                .as_array()
                .filter(|a| !a.is_empty())
                .map(|a| a[0].clone())
        },
    )
    .await?;
    // The township relays it (it holds the document) but does not read it.
    let t01_url = fed.graphql_url(&t01)?;
    let t01_admin = fed.token(&t01, Role::Admin)?.to_owned();
    let r = gql(&t01_url, Some(&t01_admin), received, json!({})).await?;
    assert_eq!(
        r["data"]["nodeUnit"]["directivesReceived"],
        json!([]),
        "{r}"
    );
    let r = gql(
        &t01_url,
        Some(&t01_admin),
        "query($id: ID!) { record(id: $id) { __typename } }",
        json!({ "id": directive }),
    )
    .await?;
    assert!(r["data"]["record"].is_null(), "{r}");
    let r = gql(
        &v01_url,
        Some(&v01_clerk),
        "mutation($d: ID!) { createReport(input: { unit: \"c01/k01/t01/v01\", kind: REPORT_BACK,
            period: \"2026Q1\", submittedOn: \"2026-03-01\", body: \"Done\", directive: $d }) { id } }",
        json!({ "d": directive.trim_start_matches("directives:") }),
    )
    .await?;
    assert!(r["errors"].is_null(), "{r}");
    let receipts = until(
        &k01_url,
        Some(&k01_viewer),
        "{ nodeUnit { directiveReceipts { edges { node { addressed received } } } } }",
        json!({}),
        "the report-back at the county",
        |d| {
            d["nodeUnit"]["directiveReceipts"]["edges"]
                .as_array()
                .and_then(|a| a.first().map(|e| e["node"].clone()))
                .filter(|r| r["received"] == 1)
        },
    )
    .await?;
    assert_eq!(
        receipts["addressed"], 2,
        "the county's two villages: {receipts}"
    );

    // A village disclosure is public at the city.
    let r = gql(
        &v01_url,
        Some(&v01_clerk),
        "mutation { createDisclosure(input: { unit: \"c01/k01/t01/v01\", title: \"Subsidies\",
            category: FUNDS, publishedOn: \"2026-03-01\", body: \"...\" }) { id } }",
        json!({}),
    )
    .await?;
    assert!(r["errors"].is_null(), "{r}");
    until(
        &fed.graphql_url(&c01)?,
        None,
        "{ nodeUnit { disclosures(subtree: true) { totalCount } } }",
        json!({}),
        "the disclosure at the city, anonymously",
        |d| Some(d.clone()).filter(|d| d["nodeUnit"]["disclosures"]["totalCount"] == 1),
    )
    .await?;

    for u in [&v01, &t01, &k01, &c01] {
        let diffs = fed.node(u)?.node.store().verify_views().await?;
        assert!(
            diffs.is_empty(),
            "views at {u} differ from a rebuild: {diffs:?}"
        );
    }
    // Links with nothing to reconcile stay silent: no probes.
    let probes =
        |s: grassroots_node::NodeStatus| -> u64 { s.links.iter().map(|l| l.probes_out).sum() };
    let store = fed.node(&t01)?.node.store();
    let before = probes(store.status().await?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(probes(store.status().await?), before, "an idle link probed");
    fed.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_village_and_township_edits_converge_when_the_link_returns() -> anyhow::Result<()> {
    let (via, slot) = behind_relay("c01/k01/t01/v01");
    let (fed, _dir) = start(small_tree(), Some(via)).await?;
    let relay = relay_of(&slot)?;
    let c01 = unit("c01");
    let Pair {
        village,
        township,
        clerk,
        supervisor,
    } = pair(&fed)?;

    let a = create_member(&village, &clerk, "c01/k01/t01/v01", "Zhao Ping").await?;
    eventually(WAIT, "A at the township", || {
        let (u, t, id) = (township.clone(), supervisor.clone(), a.clone());
        async move { Ok(Some(member_at(&u, Some(&t), &id).await?).filter(|m| !m.is_null())) }
    })
    .await?;

    let link_up = |up: bool| {
        let (u, t) = (township.clone(), supervisor.clone());
        async move {
            let r = gql(&u, Some(&t), "{ unit(id: \"c01/k01/t01/v01\") { sync { lastHeardFrom link { connected bytesIn } } } }", json!({})).await?;
            let sync = &r["data"]["unit"]["sync"];
            Ok(Some(sync.clone()).filter(|s| s["link"]["connected"] == up))
        }
    };
    let s = eventually(WAIT, "link reported up", || link_up(true)).await?;
    assert!(
        s["lastHeardFrom"].is_string() && s["link"]["bytesIn"].as_u64() > Some(0),
        "{s}"
    );
    relay.cut();
    // Both sides keep accepting writes while the link is down.
    let r = gql(
        &village,
        Some(&clerk),
        UPDATE,
        json!({ "id": a, "input": { "education": "COLLEGE" } }),
    )
    .await?;
    assert_eq!(r["data"]["updateMember"]["education"], "COLLEGE", "{r}");
    let b = create_member(&village, &clerk, "c01/k01/t01/v01", "Sun Hong").await?;
    let r = gql(
        &township,
        Some(&supervisor),
        UPDATE,
        json!({ "id": a, "input": { "name": "Zhao Ping (corrected)" } }),
    )
    .await?;
    assert_eq!(
        r["data"]["updateMember"]["name"], "Zhao Ping (corrected)",
        "{r}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        member_at(&township, Some(&supervisor), &b).await?.is_null(),
        "B crossed a cut link"
    );
    assert!(relay.dropped() > 0, "the relay saw no traffic while cut");

    // The township notices the dead link (idle timeout) and says so in its status.
    eventually(WAIT, "link reported down", || link_up(false)).await?;
    relay.restore();
    let merged = |url: String, token: String| {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let ma = member_at(&url, Some(&token), &a).await?;
            let mb = member_at(&url, Some(&token), &b).await?;
            Ok(Some((ma, mb)).filter(|(ma, mb)| {
                ma["name"] == "Zhao Ping (corrected)"
                    && ma["education"] == "COLLEGE"
                    && mb["name"] == "Sun Hong"
            }))
        }
    };
    eventually(WAIT, "convergence at the township", || {
        merged(township.clone(), supervisor.clone())
    })
    .await?;
    eventually(WAIT, "convergence at the village", || {
        merged(village.clone(), clerk.clone())
    })
    .await?;
    let city = (
        fed.graphql_url(&c01)?,
        fed.token(&c01, Role::Viewer)?.to_owned(),
    );
    eventually(WAIT, "convergence at the city", || {
        merged(city.0.clone(), city.1.clone())
    })
    .await?;
    fed.shutdown().await;
    Ok(())
}

/// The village c01/k01/t01/v01 and its township c01/k01/t01 of the small tree: their GraphQL
/// URLs, a village clerk's token and a township supervisor's.
struct Pair {
    village: String,
    township: String,
    clerk: String,
    supervisor: String,
}

fn pair(fed: &Federation) -> anyhow::Result<Pair> {
    let (v01, t01) = (unit("c01/k01/t01/v01"), unit("c01/k01/t01"));
    Ok(Pair {
        village: fed.graphql_url(&v01)?,
        township: fed.graphql_url(&t01)?,
        clerk: fed.token(&v01, Role::Clerk)?.to_owned(),
        supervisor: fed.token(&t01, Role::Supervisor)?.to_owned(),
    })
}

/// Play the village c01/k01/t01/v01 with its real certificate, its honest node stopped
/// first: a link to its township, and the endpoint it runs on (keep it alive).
async fn play_village(
    fed: &mut Federation,
    dir: &std::path::Path,
) -> anyhow::Result<(quinn::Endpoint, net::Link)> {
    let (v01, t01) = (unit("c01/k01/t01/v01"), unit("c01/k01/t01"));
    fed.stop(&v01).await?;
    let identity = Identity::load(&dir.join("c01_k01_t01_v01").join("pki"))?;
    let endpoint = net::endpoint(&identity, "127.0.0.1:0".parse()?, &fast_links(), None)?;
    let t_addr = fed.node(&t01)?.node.quic_addr();
    let link =
        net::connect_parent(&endpoint, &identity, &t01, t_addr, Duration::from_secs(5)).await?;
    Ok((endpoint, link))
}

/// Start the village c01/k01/t01/v01 again (after a test played it) and see a member it
/// writes, named `name`, reach its township.
async fn honest_village_syncs_again(fed: &mut Federation, name: &str) -> anyhow::Result<()> {
    let (v01, t01) = (unit("c01/k01/t01/v01"), unit("c01/k01/t01"));
    fed.restart(&v01).await?;
    let township = fed.graphql_url(&t01)?;
    let t_token = fed.token(&t01, Role::Viewer)?.to_owned();
    let later = create_member(
        &fed.graphql_url(&v01)?,
        fed.token(&v01, Role::Clerk)?,
        v01.as_str(),
        name,
    )
    .await?;
    eventually(WAIT, &format!("{name} at the township"), || {
        let (u, t, id) = (township.clone(), t_token.clone(), later.clone());
        async move { Ok(Some(member_at(&u, Some(&t), &id).await?).filter(|m| !m.is_null())) }
    })
    .await?;
    Ok(())
}

/// Wait for the peer to close `conn` with `code` (`what` names the connection).
async fn closed_by_peer(
    conn: &quinn::Connection,
    code: quinn::VarInt,
    what: &str,
) -> anyhow::Result<()> {
    match tokio::time::timeout(WAIT, conn.closed())
        .await
        .with_context(|| format!("{what}: not closed"))?
    {
        quinn::ConnectionError::ApplicationClosed(c) => {
            anyhow::ensure!(c.error_code == code, "{what}: closed with {}", c.error_code);
            Ok(())
        }
        other => anyhow::bail!("{what}: expected the peer to close it, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_out_of_scope_messages_from_a_child_are_refused() -> anyhow::Result<()> {
    let (mut fed, dir) = start(small_tree(), None).await?;
    let (v01, v02, t01) = (
        unit("c01/k01/t01/v01"),
        unit("c01/k01/t01/v02"),
        unit("c01/k01/t01"),
    );
    let honest_id = create_member(
        &fed.graphql_url(&v01)?,
        fed.token(&v01, Role::Clerk)?,
        "c01/k01/t01/v01",
        "Honest One",
    )
    .await?;
    let township = fed.graphql_url(&t01)?;
    let t_token = fed.token(&t01, Role::Viewer)?.to_owned();
    eventually(WAIT, "honest member at the township", || {
        let (u, t, id) = (township.clone(), t_token.clone(), honest_id.clone());
        async move { Ok(Some(member_at(&u, Some(&t), &id).await?).filter(|m| !m.is_null())) }
    })
    .await?;

    let (_endpoint, mut link) = play_village(&mut fed, dir.path()).await?;

    // 1. Out of scope: the sibling's register.
    let sibling_doc = DocMeta::new(DocId::new(DocKind::Members, v02.clone()));
    let summary = Summary {
        unit: v02.clone(),
        docs: vec![(sibling_doc, [0; 16])],
        children: vec![],
    };
    write_frame(&mut link.send, &Msg::Summary(summary)).await?;
    // 2. Garbage where a sync message should be (for another of its documents: a refused
    // document is not synced with the peer again in the session).
    let own = DocId::new(DocKind::Members, v01.clone());
    write_frame(
        &mut link.send,
        &Msg::Sync {
            doc: DocId::new(DocKind::Meetings, v01.clone()),
            data: b"not automerge".to_vec(),
        },
    )
    .await?;
    // 3. A change to its own register authored under the sibling's actor id.
    let mut forged = doc::empty(&doc::actor_for(&v02, [7; 8]));
    let m = NewMember {
        name: "Forged Member".into(),
        birth_year: 1980,
        gender: Gender::Male,
        education: Education::Primary,
        joined_on: "2000-01-01".into(),
        status: MemberStatus::Full,
        phone: None,
        id_number: None,
        categories: Vec::new(),
    };
    doc::create_member(&mut forged, RecordId::from_u64(0xbad), &m)?;
    let mut state = sync::State::new();
    if let Some(first) = forged.generate_sync_message(&mut state) {
        write_frame(
            &mut link.send,
            &Msg::Sync {
                doc: own.clone(),
                data: first.encode(),
            },
        )
        .await?;
    }
    // 4. A change to the township's own profile under the township's actor id: its unit
    // may author it, but no child relays a change authored above it (an actor id is not
    // signed), so it is the village acting as its township.
    let profile = DocId::new(DocKind::Profile, t01.clone());
    let mut as_township = doc::empty(&doc::actor_for(&t01, [7; 8]));
    doc::set_profile(&mut as_township, "Hijacked", &[])?;
    let change = as_township
        .get_changes(&[])
        .pop()
        .context("no forged profile change")?;
    let forged_profile =
        grassroots_node::sync::carrying(&profile, vec![change.hash()], change.raw_bytes().to_vec());
    write_frame(&mut link.send, &forged_profile).await?;
    let mut seen = Vec::new();
    let unauthorised = |seen: &[(RejectReason, Option<DocId>)], doc: &DocId| {
        seen.contains(&(RejectReason::Unauthorised, Some(doc.clone())))
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(unauthorised(&seen, &own) && unauthorised(&seen, &profile)) {
        let frame = tokio::time::timeout_at(deadline, read_frame(&mut link.recv))
            .await
            .with_context(|| format!("no rejection arrived for both forgeries: {seen:?}"))??;
        match frame.context("township closed the stream")?? {
            Msg::Reject { reason, doc, .. } => seen.push((reason, doc)),
            Msg::Sync { doc, data } if doc == own => {
                forged.receive_sync_message(&mut state, sync::Message::decode(&data)?)?;
                if let Some(reply) = forged.generate_sync_message(&mut state) {
                    write_frame(
                        &mut link.send,
                        &Msg::Sync {
                            doc: own.clone(),
                            data: reply.encode(),
                        },
                    )
                    .await?;
                }
            }
            _ => {}
        }
    }
    let reasons: Vec<RejectReason> = seen.iter().map(|(r, _)| *r).collect();
    assert!(reasons.contains(&RejectReason::OutOfScope), "{seen:?}");
    assert!(reasons.contains(&RejectReason::Malformed), "{seen:?}");

    // Meanwhile an honest sibling keeps syncing through the same township.
    let sibling_id = create_member(
        &fed.graphql_url(&v02)?,
        fed.token(&v02, Role::Clerk)?,
        "c01/k01/t01/v02",
        "Sibling During Attack",
    )
    .await?;
    eventually(
        WAIT,
        "the sibling's member at the township during the attack",
        || {
            let (u, t, id) = (township.clone(), t_token.clone(), sibling_id.clone());
            async move { Ok(Some(member_at(&u, Some(&t), &id).await?).filter(|m| !m.is_null())) }
        },
    )
    .await?;

    // 5. A frame over the size cap: the township closes the link with the typed close code.
    link.send.write_all(&(u32::MAX).to_be_bytes()).await?;
    closed_by_peer(&link.conn, net::close::TOO_LARGE, "the link over the cap").await?;

    // Nothing of it landed; the township still works and the honest village syncs again.
    let r = gql(
        &township,
        Some(&t_token),
        "{ unit(id: \"c01/k01/t01/v01\") { members { totalCount edges { node { name } } } } }",
        json!({}),
    )
    .await?;
    assert_eq!(r["data"]["unit"]["members"]["totalCount"], 1, "{r}");
    honest_village_syncs_again(&mut fed, "After Restart").await?;
    fed.shutdown().await;
    Ok(())
}

/// Read `n` refusals from `recv` (other frames skipped): the link answered each.
async fn refusals(recv: &mut quinn::RecvStream, n: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = 0;
    while seen < n {
        let frame = tokio::time::timeout_at(deadline, read_frame(recv))
            .await
            .with_context(|| format!("{seen} of {n} refusals arrived"))??
            .context("the stream ended")??;
        if matches!(frame, Msg::Reject { .. }) {
            seen += 1;
        }
    }
    Ok(())
}

/// A connection of a child that a newer one replaces is closed; a sync message whose Bloom
/// filter would make automerge 0.12 divide by zero (a panic on the store thread, which
/// stopped the node) is refused; and a child that goes on sending refused messages, or
/// frames that do not decode, is cut off, and cut off again within the hour (a frame over
/// the cap) kept off. The township keeps working throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_or_misbehaving_child_connection_is_closed() -> anyhow::Result<()> {
    let (mut fed, dir) = start(small_tree(), None).await?;
    let (v01, v02, t01) = (
        unit("c01/k01/t01/v01"),
        unit("c01/k01/t01/v02"),
        unit("c01/k01/t01"),
    );
    let (endpoint, first) = play_village(&mut fed, dir.path()).await?;
    let identity = Identity::load(&dir.path().join("c01_k01_t01_v01").join("pki"))?;
    let t_addr = fed.node(&t01)?.node.quic_addr();
    let mut second =
        net::connect_parent(&endpoint, &identity, &t01, t_addr, Duration::from_secs(5)).await?;
    closed_by_peer(&first.conn, net::close::BYE, "the replaced connection").await?;

    // One `have` whose filter claims an entry but no bits per entry.
    let own = DocId::new(DocKind::Members, v01.clone());
    write_frame(
        &mut second.send,
        &Msg::Sync {
            doc: own.clone(),
            data: vec![0x42, 0, 0, 1, 0, 3, 1, 0, 1, 0],
        },
    )
    .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame = tokio::time::timeout_at(deadline, read_frame(&mut second.recv))
            .await
            .context("no refusal arrived")??;
        if let Msg::Reject { reason, doc, .. } =
            frame.context("the township closed the stream")??
            && doc.as_ref() == Some(&own)
        {
            assert_eq!(reason, RejectReason::Malformed);
            break;
        }
    }

    // Refused messages that freeze nothing (summaries of the sibling), past the cap.
    let sibling = Msg::Summary(Summary {
        unit: v02.clone(),
        docs: vec![(
            DocMeta::new(DocId::new(DocKind::Members, v02.clone())),
            [0; 16],
        )],
        children: vec![],
    });
    // Up to the cap (1,024 with the filter's), each is answered with its refusal and the
    // link stays; one more closes it.
    for _ in 0..1023 {
        write_frame(&mut second.send, &sibling).await?;
    }
    refusals(&mut second.recv, 1023).await?;
    write_frame(&mut second.send, &sibling).await?;
    closed_by_peer(
        &second.conn,
        net::close::BYE,
        "a child sending refused messages",
    )
    .await?;

    // Likewise frames that do not decode (a sync message cut short), which the link answers
    // without the store; played as the other village (closed a second time within the hour,
    // the first would be kept off a while, and the honest one below could not link).
    fed.stop(&v02).await?;
    let identity = Identity::load(&dir.path().join("c01_k01_t01_v02").join("pki"))?;
    let endpoint = net::endpoint(&identity, "127.0.0.1:0".parse()?, &fast_links(), None)?;
    let mut third =
        net::connect_parent(&endpoint, &identity, &t01, t_addr, Duration::from_secs(5)).await?;
    // The first names a document of 65,535 control characters: its refusal quotes no more
    // than 256 characters of it (a refusal does not cost the township five times the
    // bytes it answers, nor its log).
    let mut long = vec![3, 0xff, 0xff];
    long.resize(3 + 0xffff, 1);
    third
        .send
        .write_all(&u32::try_from(long.len())?.to_be_bytes())
        .await?;
    third.send.write_all(&long).await?;
    let detail = loop {
        let frame = tokio::time::timeout(WAIT, read_frame(&mut third.recv))
            .await
            .context("no refusal of the long document id")??
            .context("the stream ended")??;
        if let Msg::Reject { reason, detail, .. } = frame {
            assert_eq!(reason, RejectReason::Malformed);
            break detail;
        }
    };
    assert!(detail.chars().count() <= 256, "{} characters", detail.len());
    for _ in 0..1023 {
        third.send.write_all(&[0, 0, 0, 1, 3]).await?;
    }
    refusals(&mut third.recv, 1023).await?;
    third.send.write_all(&[0, 0, 0, 1, 3]).await?;
    closed_by_peer(
        &third.conn,
        net::close::BYE,
        "a child sending undecodable frames",
    )
    .await?;
    // Closed for what it sent a second time within the hour (a frame over the cap), that
    // village is kept off: its next link is closed as it comes up, with the code that says
    // so (read from the close, which may drop the hello's answer).
    let mut fourth =
        net::connect_parent(&endpoint, &identity, &t01, t_addr, Duration::from_secs(5)).await?;
    let over = u32::try_from(grassroots_node::sync::wire::MAX_FRAME + 1)?;
    fourth.send.write_all(&over.to_be_bytes()).await?;
    closed_by_peer(
        &fourth.conn,
        net::close::TOO_LARGE,
        "a child sending a frame over the cap",
    )
    .await?;
    let fifth = endpoint
        .connect(t_addr, &t01.dns_name(&identity.deployment))?
        .await?;
    let (mut send, _recv) = fifth.open_bi().await?;
    let hello = Msg::Hello(Hello {
        versions: VERSIONS,
        capabilities: 0,
        unit: identity.unit.clone(),
        software: "grassroots 0.1.0".into(),
    });
    write_frame(&mut send, &hello).await?;
    closed_by_peer(&fifth, net::close::KEPT_OFF, "a child kept off").await?;

    // The township still works, and the honest village syncs through it again.
    honest_village_syncs_again(&mut fed, "After The Flood").await?;
    fed.shutdown().await;
    Ok(())
}

/// A city and its county, the county's link through a relay (returned).
async fn county_behind_relay() -> anyhow::Result<(Federation, tempfile::TempDir, Arc<Relay>)> {
    let (via, slot) = behind_relay("c01/k01");
    let tree = small_tree().into_iter().take(2).collect();
    let (fed, dir) = start(tree, Some(via)).await?;
    Ok((fed, dir, relay_of(&slot)?))
}

/// The county behind a relay, its node stopped so that a test dials as it: the federation,
/// its folder, the relay and the county's identity.
async fn county_to_dial_as() -> anyhow::Result<(Federation, tempfile::TempDir, Arc<Relay>, Identity)>
{
    let (mut fed, dir, relay) = county_behind_relay().await?;
    fed.stop(&unit("c01/k01")).await?;
    let identity = Identity::load(&dir.path().join("c01_k01").join("pki"))?;
    Ok((fed, dir, relay, identity))
}

/// `n` dials of `city` through `relay` from one endpoint set as `cfg` (keeping its tokens
/// in the file `tokens`, if given), each closed once up: how far `count` moved during each
/// (read 200 ms after the link came up, so that the handshake's last datagrams have
/// arrived).
async fn dials_counted(
    identity: &Identity,
    city: &UnitId,
    relay: &Relay,
    cfg: &grassroots_node::LinkConfig,
    n: usize,
    count: fn(&Relay) -> u64,
    tokens: Option<&std::path::Path>,
) -> anyhow::Result<Vec<u64>> {
    let endpoint = net::endpoint(identity, "127.0.0.1:0".parse()?, cfg, tokens)?;
    let mut moved = Vec::new();
    for _ in 0..n {
        let before = count(relay);
        let link = net::connect_parent(
            &endpoint,
            identity,
            city,
            relay.addr(),
            Duration::from_secs(10),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        moved.push(count(relay) - before);
        link.conn.close(0u32.into(), b"done");
    }
    endpoint.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(moved)
}

/// A node set to copy its handshake datagrams sends them as often as set to the parent it
/// dials (its endpoint runs on the copying socket): five dials each at one, two and three
/// copies through a loss-free relay, which tells how many times each distinct datagram
/// came. Every datagram comes once or as often as set (the last Handshake packets, sent once
/// the handshake is done, are not copied; how many there are depends on timing), and each
/// dial's Initial at least comes as often as set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_sends_its_handshake_datagrams_as_often_as_set() -> anyhow::Result<()> {
    let (fed, _dir, relay, identity) = county_to_dial_as().await?;
    let city = unit("c01");
    for copies in [1u8, 2, 3] {
        let cfg = grassroots_node::LinkConfig {
            handshake_copies: copies,
            ..fast_links()
        };
        relay.take_handshake_copies();
        let sent = dials_counted(
            &identity,
            &city,
            &relay,
            &cfg,
            5,
            Relay::handshakes_upstream,
            None,
        )
        .await?;
        let seen = relay.take_handshake_copies();
        assert!(sent.iter().all(|n| *n >= 1), "{copies}: {sent:?}");
        let times: Vec<u32> = seen.keys().copied().collect();
        let want: &[u32] = if copies == 1 {
            &[1]
        } else {
            &[1, u32::from(copies)]
        };
        assert!(
            times.iter().all(|t| want.contains(t)),
            "{copies} copies: {seen:?}"
        );
        let copied = seen.get(&u32::from(copies)).copied().unwrap_or(0);
        assert!(copied >= 5, "{copies} copies: {seen:?}");
    }
    fed.shutdown().await;
    Ok(())
}

/// A link of `identity` to `parent` at `addr` from `endpoint`, held long enough for the
/// parent's session tickets (sent after its handshake), then closed: whether its hello went
/// early.
async fn held_link(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    parent: &UnitId,
    addr: std::net::SocketAddr,
) -> anyhow::Result<bool> {
    let link = net::connect_parent(endpoint, identity, parent, addr, WAIT).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    link.conn.close(0u32.into(), b"done");
    Ok(link.early)
}

/// A child redialling a parent it linked with resumes the session and sends its hello in its
/// first flight (0-RTT), which the parent takes; after the parent restarted (it no longer
/// holds the session) the early hello is refused and sent again once the handshake is done,
/// and the link comes up all the same. A child set without 0-RTT never sends early.
///
/// A resumed handshake on loopback can be done before the dial opens the hello's stream
/// (its thread preempted between the two: about 1 dial in 100 here); that hello is then not
/// early, though the link comes up. So the redials are counted: all but one early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redial_sends_its_hello_in_its_first_flight() -> anyhow::Result<()> {
    let (mut fed, _dir, relay, identity) = county_to_dial_as().await?;
    let city = unit("c01");
    let addr = relay.addr();
    let dial = |endpoint: quinn::Endpoint| {
        let (identity, city) = (identity.clone(), city.clone());
        async move { held_link(&endpoint, &identity, &city, addr).await }
    };
    let endpoint = net::endpoint(&identity, "127.0.0.1:0".parse()?, &fast_links(), None)?;
    assert!(
        !dial(endpoint.clone()).await?,
        "a first link has no session to resume"
    );
    let mut early = Vec::new();
    for _ in 0..3 {
        early.push(dial(endpoint.clone()).await?);
    }
    assert!(
        early.iter().filter(|e| **e).count() >= 2,
        "redials' hellos went early, each with the session of the one before: {early:?}"
    );
    fed.stop(&city).await?;
    fed.restart(&city).await?;
    assert!(
        !dial(endpoint.clone()).await?,
        "a restarted parent refuses early data"
    );
    let mut early = Vec::new();
    for _ in 0..2 {
        early.push(dial(endpoint.clone()).await?);
    }
    assert!(
        early.iter().any(|e| *e),
        "and takes it from the sessions it gave since: {early:?}"
    );
    endpoint.close(0u32.into(), b"done");

    let off = grassroots_node::LinkConfig {
        zero_rtt: false,
        ..fast_links()
    };
    let endpoint = net::endpoint(&identity, "127.0.0.1:0".parse()?, &off, None)?;
    for _ in 0..2 {
        assert!(!dial(endpoint.clone()).await?, "0-RTT off");
    }
    endpoint.close(0u32.into(), b"done");
    fed.shutdown().await;
    Ok(())
}

/// A hello is a few hundred bytes: a child (or anything that finished a TLS handshake with
/// a child's certificate) may not make its parent read a frame of megabytes for each of
/// the handshakes it has in progress. One over the handshake cap is refused, unread; the
/// same child's ordinary hello then links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_over_the_handshake_cap_is_refused() -> anyhow::Result<()> {
    let (fed, _dir, relay, identity) = county_to_dial_as().await?;
    let city = unit("c01");
    let endpoint = net::endpoint(&identity, "127.0.0.1:0".parse()?, &fast_links(), None)?;
    let conn = endpoint
        .connect(relay.addr(), &city.dns_name(&identity.deployment))?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Msg::Hello(Hello {
        versions: VERSIONS,
        capabilities: 0,
        unit: identity.unit.clone(),
        software: "x".repeat(net::MAX_HANDSHAKE_FRAME),
    });
    write_frame(&mut send, &hello).await?;
    let answer = tokio::time::timeout(WAIT, read_frame(&mut recv)).await?;
    assert!(
        !matches!(answer, Ok(Some(Ok(Msg::Hello(_))))),
        "a hello over the cap was answered: {answer:?}"
    );
    let linked = net::connect_parent(&endpoint, &identity, &city, relay.addr(), WAIT).await?;
    assert_eq!(linked.peer, city);
    endpoint.close(0u32.into(), b"done");
    fed.shutdown().await;
    Ok(())
}

/// A handshake the child finished with an early hello and then dropped, as it drops the
/// handshakes it raced and did not keep, does not take the place of its live link: the
/// parent uses an early hello's link only once a probe after it says the child kept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_early_handshake_does_not_replace_the_live_link() -> anyhow::Result<()> {
    let (fed, _dir, relay, identity) = county_to_dial_as().await?;
    let city = unit("c01");
    let endpoint = net::endpoint(&identity, "127.0.0.1:0".parse()?, &fast_links(), None)?;
    let live = net::connect_parent(&endpoint, &identity, &city, relay.addr(), WAIT).await?;
    // The sessions for the next handshakes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (conn, accepted) = endpoint
        .connect(relay.addr(), &city.dns_name(&identity.deployment))?
        .into_0rtt()
        .map_err(|_| anyhow::anyhow!("no session to resume"))?;
    let (mut send, mut recv) = conn.open_bi().await?;
    // As a dialling node sends it on each handshake it races.
    let hello = Msg::Hello(Hello {
        versions: VERSIONS,
        capabilities: EARLY_HELLO,
        unit: identity.unit.clone(),
        software: "grassroots 0.1.0".into(),
    });
    write_frame(&mut send, &hello).await?;
    assert!(accepted.await, "the early hello was taken");
    let answer = read_frame(&mut recv).await?.context("no answer")??;
    assert!(matches!(answer, Msg::Hello(_)), "{answer:?}");
    // Dropped as a raced handshake that lost: closed without a word after the hello.
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.close(0u32.into(), b"");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        live.conn.close_reason().is_none(),
        "the live link was closed: {:?}",
        live.conn.close_reason()
    );
    live.conn.close(0u32.into(), b"done");
    endpoint.close(0u32.into(), b"done");
    fed.shutdown().await;
    Ok(())
}

/// A child whose certificate was revoked since its last link, redialling with that link's
/// session, is refused as for good (the close's code reaches it once the handshake is done),
/// not as a passing failure it would redial soon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_child_resuming_a_session_is_refused_for_good() -> anyhow::Result<()> {
    let (fed, _dir, relay, identity) = county_to_dial_as().await?;
    let city = unit("c01");
    let endpoint = net::endpoint(&identity, "127.0.0.1:0".parse()?, &fast_links(), None)?;
    held_link(&endpoint, &identity, &city, relay.addr()).await?;
    // Held, so that the dial below must resume too.
    assert!(
        held_link(&endpoint, &identity, &city, relay.addr()).await?,
        "the redial resumed with an early hello"
    );
    let r = gql(
        &fed.graphql_url(&city)?,
        Some(fed.token(&city, Role::Admin)?),
        "mutation($u: ID!, $f: String!) { revokeCertificate(input: { unit: $u, fingerprint: $f }) { fingerprint } }",
        json!({ "u": "c01/k01", "f": identity.fingerprint() }),
    )
    .await?;
    assert_eq!(
        r["data"]["revokeCertificate"]["fingerprint"],
        identity.fingerprint(),
        "{r}"
    );
    let err = net::connect_parent(&endpoint, &identity, &city, relay.addr(), WAIT)
        .await
        .err()
        .context("a revoked child got in")?;
    assert!(err.is_permanent(), "refused but not for good: {err:?}");
    endpoint.close(0u32.into(), b"done");
    fed.shutdown().await;
    Ok(())
}

/// The tests' links for a child whose parent's answers are counted: it copies nothing of its
/// own, since a copy of its Initial arriving after the parent answered draws one more
/// acknowledgement, and the count would vary with timing.
fn copying_nothing() -> grassroots_node::LinkConfig {
    grassroots_node::LinkConfig {
        handshake_copies: 1,
        ..fast_links()
    }
}

/// A parent set to copy its handshake datagrams copies its answers only to a child that
/// presents a token from an earlier link (QUIC then holds its address validated, and no
/// amplification limit applies), never to one dialling for the first time: three dials from
/// one endpoint, the city's answers counted at the relay, against the same with the city
/// copying nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_copies_its_answers_only_to_a_child_it_has_validated() -> anyhow::Result<()> {
    let (mut fed, _dir, relay, identity) = county_to_dial_as().await?;
    let city = unit("c01");
    let cfg = copying_nothing();
    let three_dials = || {
        dials_counted(
            &identity,
            &city,
            &relay,
            &cfg,
            3,
            Relay::handshakes_downstream,
            None,
        )
    };
    let copying = three_dials().await?;
    fed.stop(&city).await?;
    fed.set_link(
        &city,
        grassroots_node::LinkConfig {
            handshake_copies: 1,
            ..fast_links()
        },
    )?;
    fed.restart(&city).await?;
    let plain = three_dials().await?;
    // The first dial has no token: the answers go once either way.
    assert_eq!(copying[0], plain[0], "{copying:?} {plain:?}");
    // The later ones present the token the link before was given: twice.
    for i in 1..3 {
        assert_eq!(copying[i], 2 * plain[i], "{copying:?} {plain:?}");
    }
    fed.shutdown().await;
    Ok(())
}

/// A child restarted (a new endpoint) presents the token its last link gave it when it keeps
/// them in a file, as a node does in its data folder, so its parent copies its answers at
/// once; with the tokens in memory the restarted child dials as a stranger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_child_presents_the_token_of_its_last_link() -> anyhow::Result<()> {
    let (fed, dir, relay, identity) = county_to_dial_as().await?;
    let city = unit("c01");
    let answers = Relay::handshakes_downstream;
    let file = dir.path().join("k01-quic-tokens");
    let mut kept = Vec::new();
    let mut lost = Vec::new();
    // Two lives of the child each: the first dial has no token either way.
    let cfg = copying_nothing();
    for _ in 0..2 {
        kept.extend(dials_counted(&identity, &city, &relay, &cfg, 1, answers, Some(&file)).await?);
        lost.extend(dials_counted(&identity, &city, &relay, &cfg, 1, answers, None).await?);
    }
    assert_eq!(kept[0], lost[0], "{kept:?} {lost:?}");
    assert_eq!(lost[1], lost[0], "{kept:?} {lost:?}");
    assert_eq!(kept[1], 2 * lost[1], "{kept:?} {lost:?}");
    fed.shutdown().await;
    Ok(())
}

/// The link between `a` and `b`, at `a`'s end.
async fn link_end(
    fed: &Federation,
    a: &UnitId,
    b: &UnitId,
) -> anyhow::Result<grassroots_node::LinkStatus> {
    let s = fed.node(a)?.node.store().status().await?;
    s.links
        .into_iter()
        .find(|l| &l.peer == b)
        .context("no such link")
}

/// Waits until the link between `a` and `b` is up at both ends with nothing in flight or
/// queued and no frame either way for a second: the session's exchange is over (and each
/// side holds what it shared). Returns both ends, `a`'s first.
async fn link_settled(
    fed: &Federation,
    a: &UnitId,
    b: &UnitId,
) -> anyhow::Result<[grassroots_node::LinkStatus; 2]> {
    let bytes = |ends: &[grassroots_node::LinkStatus; 2]| -> u64 {
        ends.iter().map(|l| l.bytes_in + l.bytes_out).sum()
    };
    eventually(WAIT, "the link settled", || async {
        let ends = [link_end(fed, a, b).await?, link_end(fed, b, a).await?];
        if ends
            .iter()
            .any(|l| !l.connected || l.docs_in_flight + l.docs_queued > 0)
        {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let later = [link_end(fed, a, b).await?, link_end(fed, b, a).await?];
        Ok((bytes(&later) == bytes(&ends)).then_some(later))
    })
    .await
}

/// An idle reconnect over a slow line probes for no root: each side's root reaches the other
/// within about a round trip, and a link probes for the peer's root only after two (300 ms
/// each way through the relay; a probe after 100 ms of silence would go out twice or more
/// while the root is on its way). The child's probes while its hello is answered are not
/// counted (they go before the link's counters exist).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_reconnect_over_a_slow_line_probes_for_no_root() -> anyhow::Result<()> {
    let (mut fed, _dir, relay) = county_behind_relay().await?;
    let (k01, c01) = (unit("c01/k01"), unit("c01"));
    link_up(&fed, &k01).await?;
    link_settled(&fed, &k01, &c01).await?;
    fed.stop(&k01).await?;
    relay.set_delay(Duration::from_millis(300));
    fed.restart(&k01).await?;
    link_up(&fed, &k01).await?;
    let [county, city] = link_settled(&fed, &k01, &c01).await?;
    // Idle: each side sent its hello and its root, and nothing else.
    assert!(
        county.bytes_out < 200 && city.bytes_out < 200,
        "not an idle reconnect: {} and {} bytes",
        county.bytes_out,
        city.bytes_out
    );
    assert_eq!(
        (county.probes_out, city.probes_out),
        (0, 0),
        "probes sent by the county and the city"
    );
    fed.shutdown().await;
    Ok(())
}

/// An idle link's keep-alives follow the child's setting, not its parent's: the child pays
/// for them on a village's metered line. The city's setting here is 300 ms (its links up
/// would ping at that pace); its county, set to 1 s, keeps their link at about two datagrams
/// a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_link_costs_the_keep_alive_its_child_chose() -> anyhow::Result<()> {
    let (mut fed, _dir, relay) = county_behind_relay().await?;
    let k01 = unit("c01/k01");
    fed.stop(&k01).await?;
    fed.set_link(
        &k01,
        grassroots_node::LinkConfig {
            keep_alive: Duration::from_secs(1),
            // The default's plain socket (the tests' links copy handshake datagrams).
            handshake_copies: 1,
            ..fast_links()
        },
    )?;
    fed.restart(&k01).await?;
    link_up(&fed, &k01).await?;
    let store = fed.node(&k01)?.node.store();
    // Wait for the first exchange to end: nothing in flight or queued, and the link's frame
    // bytes flat for a second.
    let frames = || async {
        let s = store.status().await?;
        let l = s
            .links
            .iter()
            .find(|l| l.peer.as_str() == "c01")
            .context("no link to the city")?;
        anyhow::Ok((l.docs_in_flight + l.docs_queued, l.bytes_in + l.bytes_out))
    };
    eventually(WAIT, "the link idle", || async {
        let (busy, bytes) = frames().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, later) = frames().await?;
        Ok((busy == 0 && later == bytes).then_some(()))
    })
    .await?;
    let (before, bytes_before) = (relay.forwarded().0, frames().await?.1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let datagrams = relay.forwarded().0 - before;
    // Only the transport spoke: no frame of the protocol went either way.
    assert_eq!(frames().await?.1, bytes_before, "frames on an idle link");
    // About two per second (a ping and its acknowledgement) at the county's 1 s; the
    // city's 300 ms would make twenty or more.
    assert!(
        (2..=12).contains(&datagrams),
        "{datagrams} datagrams in 3 s on an idle link"
    );
    fed.shutdown().await;
    Ok(())
}

/// A village node that writes a stamp claiming a county admin made its record: the record
/// reaches the township and the county, its stamp is shown at neither (the village's node
/// serves no county user), while an honest stamp sent the same way is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stamp_a_child_forges_is_shown_nowhere_above() -> anyhow::Result<()> {
    let (mut fed, dir) = start(small_tree(), None).await?;
    let (v01, t01, k01) = (
        unit("c01/k01/t01/v01"),
        unit("c01/k01/t01"),
        unit("c01/k01"),
    );
    let (_endpoint, mut link) = play_village(&mut fed, dir.path()).await?;
    let stamp = |unit: &str, user: &str| grassroots_schema::Stamp {
        at_ms: 1_780_000_000_000,
        unit: unit.parse().expect("unit"),
        role: Role::Admin,
        user: Some(user.into()),
    };
    let (forged_stamp, honest_stamp) =
        (stamp("c01/k01", "Mallory"), stamp("c01/k01/t01/v01", "Li"));
    let member = |name: &str| NewMember {
        name: name.into(),
        birth_year: 1985,
        gender: Gender::Female,
        education: Education::Primary,
        joined_on: "2010-01-01".into(),
        status: MemberStatus::Full,
        phone: None,
        id_number: None,
        categories: Vec::new(),
    };
    let (forged_m, honest_m) = (member("Stamped By Nobody"), member("Stamped By Li"));
    let (forged_r, honest_r) = (RecordId::from_u64(0x5eed), RecordId::from_u64(0x600d));
    let mut register = doc::empty(&doc::actor_for(&v01, [7; 8]));
    doc::apply_member_writes(
        &mut register,
        &[
            doc::MemberWrite::Create(forged_r, &forged_m, Some(&forged_stamp)),
            doc::MemberWrite::Create(honest_r, &honest_m, Some(&honest_stamp)),
        ],
    )?;
    // Sync the register with the township in the background.
    let own = DocId::new(DocKind::Members, v01.clone());
    let pump: tokio::task::JoinHandle<anyhow::Result<()>> = tokio::spawn(async move {
        let mut state = sync::State::new();
        let mut incoming: Option<Vec<u8>> = None;
        loop {
            // Answer what arrived (nothing, the first time), then read on.
            if let Some(data) = incoming.take() {
                register.receive_sync_message(&mut state, sync::Message::decode(&data)?)?;
            }
            if let Some(m) = register.generate_sync_message(&mut state) {
                let (doc, data) = (own.clone(), m.encode());
                write_frame(&mut link.send, &Msg::Sync { doc, data }).await?;
            }
            match read_frame(&mut link.recv)
                .await?
                .context("stream closed")??
            {
                Msg::Sync { doc, data } if doc == own => incoming = Some(data),
                Msg::Reject { reason, detail, .. } => anyhow::bail!("refused: {reason:?} {detail}"),
                _ => {}
            }
        }
    });
    let id = |r: RecordId| {
        grassroots_schema::MemberId {
            unit: v01.clone(),
            record: r,
        }
        .to_string()
    };
    for level in [&t01, &k01] {
        let (url, token) = (
            fed.graphql_url(level)?,
            fed.token(level, Role::Viewer)?.to_owned(),
        );
        let forged = until(
            &url,
            Some(&token),
            MEMBER,
            json!({ "id": id(forged_r) }),
            "the forged-stamp member above",
            |d| Some(d["member"].clone()).filter(|m| !m.is_null()),
        )
        .await?;
        assert_eq!(forged["name"], "Stamped By Nobody", "{level}: {forged}");
        assert!(
            forged["created"].is_null(),
            "{level} shows a forged stamp: {forged}"
        );
        let honest = member_at(&url, Some(&token), &id(honest_r)).await?;
        assert_eq!(
            honest["created"],
            json!({ "unit": "c01/k01/t01/v01", "role": "ADMIN" }),
            "{level}: {honest}"
        );
    }
    assert!(!pump.is_finished(), "the link ended: {:?}", pump.await);
    pump.abort();
    fed.shutdown().await;
    Ok(())
}

/// A node with path MTU discovery off sends nothing over 1,200 bytes and tells its parent so,
/// which then probes no larger either; with it on (the default) the link carries larger
/// probes right after the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_mtu_discovery_keeps_its_links_to_1200_bytes() -> anyhow::Result<()> {
    let (mut fed, _dir, relay) = county_behind_relay().await?;
    let k01 = unit("c01/k01");
    link_up(&fed, &k01).await?;
    // Discovery runs right after the handshake; give it a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with = relay.take_largest();
    assert!(
        with > 1200,
        "no datagram over 1,200 bytes with discovery on ({with})"
    );

    fed.stop(&k01).await?;
    fed.set_link(
        &k01,
        grassroots_node::LinkConfig {
            mtu_discovery: false,
            ..fast_links()
        },
    )?;
    relay.take_largest();
    fed.restart(&k01).await?;
    link_up(&fed, &k01).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let without = relay.take_largest();
    assert!(
        (1..=1200).contains(&without),
        "a datagram of {without} bytes with discovery off at the county"
    );
    fed.shutdown().await;
    Ok(())
}

/// A village node whose disk was replaced (its store gone, its keys kept) gets its own records
/// back from its township, and its new writes, made under a new actor, travel up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_village_that_lost_its_store_gets_its_records_back() -> anyhow::Result<()> {
    let (v01, t01) = (unit("c01/k01/t01/v01"), unit("c01/k01/t01"));
    let (mut fed, dir) = start(small_tree(), None).await?;
    let Pair {
        village,
        township,
        clerk,
        supervisor,
    } = pair(&fed)?;
    let a = create_member(&village, &clerk, "c01/k01/t01/v01", "Zhao Ping").await?;
    let b = create_member(&village, &clerk, "c01/k01/t01/v01", "Sun Hong").await?;
    for id in [&a, &b] {
        until_member(
            "the records at the township",
            &township,
            &supervisor,
            id,
            true,
        )
        .await?;
    }

    fed.stop(&v01).await?;
    let store = dir.path().join("c01_k01_t01_v01").join("store.redb");
    std::fs::remove_file(&store).with_context(|| format!("removing {}", store.display()))?;
    fed.restart(&v01).await?;
    // Users are kept in the store, so the new one has none yet.
    let r = gql(&village, Some(&clerk), MEMBER, json!({ "id": a })).await?;
    assert_eq!(error_code(&r), Some("UNAUTHENTICATED"), "{r}");
    let clerk = new_token()?;
    fed.node(&v01)?
        .node
        .store()
        .add_user(token_hash(&clerk), v01.clone(), Role::Clerk)
        .await?;
    for id in [&a, &b] {
        until_member(
            "the records back at the village",
            &village,
            &clerk,
            id,
            true,
        )
        .await?;
    }

    let c = create_member(&village, &clerk, "c01/k01/t01/v01", "Li Na").await?;
    let r = gql(
        &village,
        Some(&clerk),
        UPDATE,
        json!({ "id": a, "input": { "education": "COLLEGE" } }),
    )
    .await?;
    assert_eq!(r["data"]["updateMember"]["education"], "COLLEGE", "{r}");
    eventually(WAIT, "the new writes at the township", || {
        let (url, token, a, c) = (township.clone(), supervisor.clone(), a.clone(), c.clone());
        async move {
            let (ma, mc) = (
                member_at(&url, Some(&token), &a).await?,
                member_at(&url, Some(&token), &c).await?,
            );
            Ok((ma["education"] == "COLLEGE" && mc["name"] == "Li Na").then_some(()))
        }
    })
    .await?;
    no_rejections(&fed, &t01, &v01).await?;
    fed.shutdown().await;
    Ok(())
}

/// A village restored from an older backup (taken through GraphQL while it ran) gets back
/// from its township what it wrote after the backup, though the sync states it restored
/// are older than what the township remembers of it, and writes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_village_restored_from_an_old_backup_gets_the_rest_back() -> anyhow::Result<()> {
    let (v01, t01) = (unit("c01/k01/t01/v01"), unit("c01/k01/t01"));
    let (mut fed, dir) = start(small_tree(), None).await?;
    let Pair {
        village,
        township,
        clerk,
        supervisor,
    } = pair(&fed)?;
    let admin = fed.token(&v01, Role::Admin)?.to_owned();
    let a = create_member(&village, &clerk, "c01/k01/t01/v01", "Zhao Ping").await?;
    until_member("A at the township", &township, &supervisor, &a, true).await?;
    let r = gql(
        &village,
        Some(&admin),
        "mutation { backupStore { file documents } }",
        json!({}),
    )
    .await?;
    let backup = r["data"]["backupStore"]["file"]
        .as_str()
        .with_context(|| format!("no backup: {r}"))?
        .to_owned();
    let b = create_member(&village, &clerk, "c01/k01/t01/v01", "Sun Hong").await?;
    until_member("B at the township", &township, &supervisor, &b, true).await?;
    // A user added after the backup keeps their token through the restore.
    let r = gql(
        &village,
        Some(&admin),
        "mutation { createUserToken(input: { unit: \"c01/k01/t01/v01\", role: CLERK, name: \"Wang Li\" }) { token } }",
        json!({}),
    )
    .await?;
    let late = r["data"]["createUserToken"]["token"]
        .as_str()
        .with_context(|| format!("no token: {r}"))?
        .to_owned();

    fed.stop(&v01).await?;
    let data = dir.path().join("c01_k01_t01_v01");
    let restored = grassroots_node::store::backup::restore(
        std::path::Path::new(&backup),
        &data.join("store.redb"),
        &v01,
        grassroots_node::status::now_ms(),
    )
    .await?;
    assert!(
        matches!(
            restored.users,
            grassroots_node::store::backup::UsersFrom::Replaced(n) if n > 0
        ),
        "{restored:?}"
    );
    assert!(restored.kept.context("no store was replaced")?.exists());
    fed.restart(&v01).await?;
    // The backup holds the users and A; B comes back from the township.
    assert!(!member_at(&village, Some(&clerk), &a).await?.is_null());
    until_member("B back at the village", &village, &clerk, &b, true).await?;
    let c = create_member(&village, &late, "c01/k01/t01/v01", "Li Na").await?;
    until_member("C at the township", &township, &supervisor, &c, true).await?;
    no_rejections(&fed, &t01, &v01).await?;
    fed.shutdown().await;
    Ok(())
}

/// A link that is down says so, since when and why: at the village, its parent link with
/// the failed dials and the last one's reason (then its parent is found again by host
/// name); at the township, a village that has not connected since the township started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_link_says_since_when_and_why() -> anyhow::Result<()> {
    let (v01, v02, t01) = (
        unit("c01/k01/t01/v01"),
        unit("c01/k01/t01/v02"),
        unit("c01/k01/t01"),
    );
    let (via, slot) = behind_relay("c01/k01/t01/v01");
    let (mut fed, _dir) = start(small_tree(), Some(via)).await?;
    let relay = relay_of(&slot)?;
    let village = fed.graphql_url(&v01)?;
    let viewer = fed.token(&v01, Role::Viewer)?.to_owned();
    const PARENT: &str = "{ unit(id: \"c01/k01/t01\") { sync { link { connected since downSince failedDials lastError } } } }";
    let parent_link = || {
        let (url, token) = (village.clone(), viewer.clone());
        async move {
            let r = gql(&url, Some(&token), PARENT, json!({})).await?;
            anyhow::Ok(r["data"]["unit"]["sync"]["link"].clone())
        }
    };
    let up = eventually(WAIT, "the parent link up", || async {
        Ok(Some(parent_link().await?).filter(|l| l["connected"] == true))
    })
    .await?;
    assert!(up["since"].is_string() && up["downSince"].is_null(), "{up}");
    assert_eq!(up["failedDials"], 0, "{up}");

    relay.cut();
    let down = eventually(WAIT, "failed dials at the village", || async {
        Ok(Some(parent_link().await?)
            .filter(|l| l["connected"] == false && l["failedDials"].as_u64() >= Some(2)))
    })
    .await?;
    assert!(down["downSince"].is_string(), "{down}");
    // Every dial through the cut relay gets no answer: why says so.
    let why = down["lastError"].as_str().unwrap_or_default();
    assert!(why.contains("timed out"), "{down}");
    // Its parent found by name from now on (looked up at every dial).
    fed.stop(&v01).await?;
    let port = fed.node(&t01)?.node.quic_addr().port();
    fed.set_parent_addr(
        &v01,
        format!("localhost:{port}")
            .parse()
            .map_err(anyhow::Error::msg)?,
    )?;
    fed.restart(&v01).await?;
    let back = eventually(WAIT, "the parent link back", || async {
        Ok(Some(parent_link().await?).filter(|l| l["connected"] == true))
    })
    .await?;
    assert_eq!(back["failedDials"], 0, "{back}");
    assert!(
        back["lastError"].is_null() && back["downSince"].is_null(),
        "{back}"
    );

    // A village not connected since the township started: down since the start.
    fed.stop(&v02).await?;
    fed.stop(&t01).await?;
    fed.restart(&t01).await?;
    let store = fed.node(&t01)?.node.store();
    let status = store.status().await?;
    let l = status
        .links
        .iter()
        .find(|l| l.peer == v02)
        .context("the stopped village is not listed")?;
    assert!(
        !l.connected && l.since_ms == 0 && l.down_since_ms > 0,
        "{l:?}"
    );
    fed.shutdown().await;
    Ok(())
}

/// A member removed at the village is removed at every level above, and one a township
/// supervisor removes from the village's register is removed at the village.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_travels_both_ways() -> anyhow::Result<()> {
    let c01 = unit("c01");
    let (fed, _dir) = start(small_tree(), None).await?;
    let Pair {
        village,
        township,
        clerk,
        supervisor,
    } = pair(&fed)?;
    let city = fed.graphql_url(&c01)?;
    let viewer = fed.token(&c01, Role::Viewer)?.to_owned();
    let a = create_member(&village, &clerk, "c01/k01/t01/v01", "Zhao Ping").await?;
    let b = create_member(&village, &clerk, "c01/k01/t01/v01", "Sun Hong").await?;
    for id in [&a, &b] {
        for (url, token) in [
            (&village, &clerk),
            (&township, &supervisor),
            (&city, &viewer),
        ] {
            until_member("the member everywhere", url, token, id, true).await?;
        }
    }
    const DELETE: &str = "mutation($id: ID!) { deleteMember(id: $id) { name } }";
    let r = gql(&village, Some(&clerk), DELETE, json!({ "id": a })).await?;
    assert_eq!(r["data"]["deleteMember"]["name"], "Zhao Ping", "{r}");
    until_member("A gone at the township", &township, &supervisor, &a, false).await?;
    until_member("A gone at the city", &city, &viewer, &a, false).await?;
    let r = gql(&township, Some(&supervisor), DELETE, json!({ "id": b })).await?;
    assert_eq!(r["data"]["deleteMember"]["name"], "Sun Hong", "{r}");
    until_member("B gone at the village", &village, &clerk, &b, false).await?;
    eventually(WAIT, "no member counted at the city", || {
        let (url, token) = (city.clone(), viewer.clone());
        async move {
            let r = gql(
                &url,
                Some(&token),
                "{ unit(id: \"c01/k01/t01/v01\") { indicators { members } } }",
                json!({}),
            )
            .await?;
            anyhow::ensure!(r["errors"].is_null(), "{r}");
            Ok((r["data"]["unit"]["indicators"]["members"] == 0).then_some(()))
        }
    })
    .await?;
    fed.shutdown().await;
    Ok(())
}

/// Open a link to the township c01/k01/t01 as `identity` and say a hello in `versions`:
/// the connection, the stream and the township's answer.
async fn hello_in(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    t_addr: std::net::SocketAddr,
    versions: Versions,
) -> anyhow::Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream, Msg)> {
    let t01 = unit("c01/k01/t01");
    let conn = endpoint
        .connect(t_addr, &t01.dns_name(&identity.deployment))?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Msg::Hello(Hello {
        versions,
        capabilities: 0,
        unit: identity.unit.clone(),
        software: "grassroots 9.9.9".into(),
    });
    write_frame(&mut send, &hello).await?;
    let answer = read_frame(&mut recv).await?.context("no answer")??;
    Ok((conn, send, recv, answer))
}

/// A child of a later release that still speaks this build's protocol is served at the newest
/// version both speak, and the township shows its release; one that speaks none of this
/// build's versions is told so, and the refusal shows at both ends, at a child as permanent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_apart_agree_on_a_version_or_say_which_to_upgrade() -> anyhow::Result<()> {
    let (mut fed, dir) = start(small_tree(), None).await?;
    let (v01, t01) = (unit("c01/k01/t01/v01"), unit("c01/k01/t01"));
    link_up(&fed, &v01).await?;
    fed.stop(&v01).await?;
    let identity = Identity::load(&dir.path().join("c01_k01_t01_v01").join("pki"))?;
    let endpoint = net::endpoint(&identity, "127.0.0.1:0".parse()?, &fast_links(), None)?;
    let t_addr = fed.node(&t01)?.node.quic_addr();
    let township = fed.graphql_url(&t01)?;
    let viewer = fed.token(&t01, Role::Viewer)?.to_owned();
    const CHILD: &str = "{ unit(id: \"c01/k01/t01/v01\") { sync { link { connected protocol software failedDials lastError } } } }";
    let child_link = || {
        let (url, token) = (township.clone(), viewer.clone());
        async move {
            let r = gql(&url, Some(&token), CHILD, json!({})).await?;
            anyhow::Ok(r["data"]["unit"]["sync"]["link"].clone())
        }
    };

    // A later release speaking this build's newest version and two more.
    let later = Versions {
        oldest: VERSIONS.newest,
        newest: VERSIONS.newest + 2,
    };
    let (conn, _send, mut recv, answer) = hello_in(&endpoint, &identity, t_addr, later).await?;
    match answer {
        Msg::Hello(h) => assert_eq!((h.versions, h.unit), (VERSIONS, t01.clone())),
        other => anyhow::bail!("expected the township's hello, got {other:?}"),
    }
    // The link runs: the township goes on with its digest.
    let next = read_frame(&mut recv).await?.context("closed")??;
    assert!(matches!(next, Msg::Root(_)), "{next:?}");
    let up = eventually(WAIT, "the child's link up at the township", || async {
        Ok(Some(child_link().await?).filter(|l| l["connected"] == true))
    })
    .await?;
    assert_eq!(up["protocol"], u64::from(VERSIONS.newest), "{up}");
    assert_eq!(up["software"], "grassroots 9.9.9", "{up}");
    conn.close(net::close::BYE, b"");

    // A release speaking only versions after this build's.
    let beyond = Versions {
        oldest: VERSIONS.newest + 1,
        newest: VERSIONS.newest + 2,
    };
    let (_conn, _send, _recv, answer) = hello_in(&endpoint, &identity, t_addr, beyond).await?;
    let Msg::Reject { reason, detail, .. } = answer else {
        anyhow::bail!("expected a refusal, got {answer:?}");
    };
    assert_eq!(reason, RejectReason::Version);
    assert!(detail.ends_with("upgrade the parent"), "{detail}");
    let refused = eventually(WAIT, "the refusal in the township's status", || async {
        Ok(Some(child_link().await?).filter(|l| l["failedDials"].as_u64() >= Some(1)))
    })
    .await?;
    assert_eq!(refused["connected"], false, "{refused}");
    let why = refused["lastError"].as_str().unwrap_or_default();
    assert!(
        why.contains(&beyond.to_string()) && why.contains(&VERSIONS.to_string()),
        "{refused}"
    );

    // The honest village facing a parent of a later release: its hello answered in versions
    // it does not speak (and whose hello it cannot read further).
    fed.stop(&t01).await?;
    let t_identity = Identity::load(&dir.path().join("c01_k01_t01").join("pki"))?;
    // The stopped node's endpoint driver may hold its socket for a moment.
    let fake = eventually(WAIT, "the township's port free", || async {
        Ok(net::endpoint(&t_identity, t_addr, &fast_links(), None).ok())
    })
    .await?;
    let answering = tokio::spawn({
        let (fake, unit) = (fake.clone(), t01.clone());
        async move {
            while let Some(incoming) = fake.accept().await {
                let unit = unit.clone();
                tokio::spawn(async move {
                    let conn = incoming.await?;
                    let (mut send, mut recv) = conn.accept_bi().await?;
                    read_frame(&mut recv).await?;
                    let hello = Msg::Hello(Hello {
                        versions: beyond,
                        capabilities: 0,
                        unit,
                        software: "grassroots 9.9.9".into(),
                    });
                    write_frame(&mut send, &hello).await?;
                    // Held until the village closes it.
                    conn.closed().await;
                    anyhow::Ok(())
                });
            }
        }
    });
    fed.restart(&v01).await?;
    let store = fed.node(&v01)?.node.store();
    let parent_link = || async {
        let status = store.status().await?;
        anyhow::Ok(status.links.into_iter().find(|l| l.peer == t01))
    };
    let refused = eventually(WAIT, "the refusal in the village's status", || async {
        Ok(parent_link().await?.filter(|l| l.failed_dials >= 1))
    })
    .await?;
    let why = refused.last_error.clone().unwrap_or_default();
    assert!(
        why.contains(&beyond.to_string()) && why.ends_with("upgrade the child"),
        "{refused:?}"
    );
    // Permanent: not redialled before 4 x the longest backoff (at least 3 s with jitter);
    // an ordinary failure would be redialled within 0.2 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later_status = parent_link().await?.context("the parent's link is gone")?;
    assert_eq!(later_status.failed_dials, 1, "{later_status:?}");
    assert!(!later_status.connected);
    answering.abort();
    fed.shutdown().await;
    Ok(())
}
