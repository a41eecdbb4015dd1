//! Support for the cross-crate integration tests: a UDP relay that can cut a link, a small
//! GraphQL client, and polling helpers.

pub mod relay;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use grassroots::federation::{Federation, FederationOptions, UnitSpec, Via};
use grassroots_node::LinkConfig;
use grassroots_schema::UnitId;
use serde_json::{Value, json};

/// Parse a unit id (test input is trusted).
pub fn unit(s: &str) -> UnitId {
    s.parse().unwrap_or_else(|e| panic!("bad unit id {s}: {e}"))
}

/// Short timeouts so a cut link is noticed and redialled quickly.
pub fn fast_links() -> LinkConfig {
    LinkConfig {
        keep_alive: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(3),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(3),
        // Every test's links come up through the socket that copies handshake datagrams,
        // as the village and township examples' do.
        handshake_copies: 2,
        ..LinkConfig::default()
    }
}

/// A small tree: one city, two counties, a township under each, two villages under the first
/// township and one under the other.
pub fn small_tree() -> Vec<UnitSpec> {
    [
        ("c01", "Linhe City"),
        ("c01/k01", "Dongping County"),
        ("c01/k02", "Xishan County"),
        ("c01/k01/t01", "Qingshui Township"),
        ("c01/k02/t01", "Shiqiao Township"),
        ("c01/k01/t01/v01", "Liujia Village"),
        ("c01/k01/t01/v02", "Zhangwan Village"),
        ("c01/k02/t01/v01", "Nanshan Village"),
    ]
    .into_iter()
    .map(|(id, name)| UnitSpec {
        id: unit(id),
        name: name.into(),
    })
    .collect()
}

/// A city `c01` with `counties` counties, each with `townships` townships of `villages`
/// villages, each unit named "Unit <id>".
pub fn full_tree(counties: usize, townships: usize, villages: usize) -> Vec<UnitSpec> {
    let mut units = vec!["c01".to_owned()];
    for k in 1..=counties {
        units.push(format!("c01/k{k:02}"));
        for t in 1..=townships {
            units.push(format!("c01/k{k:02}/t{t:02}"));
            for v in 1..=villages {
                units.push(format!("c01/k{k:02}/t{t:02}/v{v:02}"));
            }
        }
    }
    units
        .into_iter()
        .map(|id| UnitSpec {
            name: format!("Unit {id}"),
            id: unit(&id),
        })
        .collect()
}

/// Start a federation in a fresh temporary folder.
pub async fn start(
    units: Vec<UnitSpec>,
    via: Option<Via>,
) -> anyhow::Result<(Federation, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let fed = Federation::start(
        units,
        FederationOptions {
            dir: dir.path().to_owned(),
            deployment: "test.grassroots".into(),
            link: fast_links(),
            links: Default::default(),
            via,
        },
    )
    .await?;
    Ok((fed, dir))
}

/// A [`Via`] that puts `child`'s link to its parent through a [`Relay`], made when the
/// federation starts the child, and the slot that then holds it ([`relay_of`]).
pub fn behind_relay(child: &str) -> (Via, RelaySlot) {
    let slot = RelaySlot::default();
    let keep = slot.clone();
    let child = unit(child);
    let via = Box::new(move |c: &UnitId, parent: std::net::SocketAddr| {
        if *c != child {
            return parent;
        }
        let relay = Arc::new(relay::Relay::start(parent).expect("relay"));
        let addr = relay.addr();
        *keep.lock().expect("relay slot") = Some(relay);
        addr
    });
    (via, slot)
}

/// Where [`behind_relay`] keeps its relay.
pub type RelaySlot = Arc<Mutex<Option<Arc<relay::Relay>>>>;

/// The relay in `slot`, once the federation has started the child behind it.
pub fn relay_of(slot: &RelaySlot) -> anyhow::Result<Arc<relay::Relay>> {
    slot.lock()
        .expect("relay slot")
        .clone()
        .context("the child behind the relay has not started")
}

/// Wait until `unit`'s node has a link up.
pub async fn link_up(fed: &Federation, unit: &UnitId) -> anyhow::Result<()> {
    let store = fed.node(unit)?.node.store();
    eventually(Duration::from_secs(30), "the link up", || async {
        Ok(store
            .status()
            .await?
            .links
            .iter()
            .any(|l| l.connected)
            .then_some(()))
    })
    .await
}

/// POST a GraphQL query; returns the whole response (data and errors).
pub async fn gql(
    url: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> anyhow::Result<Value> {
    gql_with(&reqwest::Client::new(), url, token, query, variables).await
}

/// [`gql`] through a given client, whose connections are reused (benchmarks time queries;
/// a client is not shared between tests, since its pooled connections belong to the runtime
/// that opened them).
pub async fn gql_with(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> anyhow::Result<Value> {
    let mut req = client
        .post(url)
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.context("sending query")?;
    resp.json().await.context("decoding response")
}

/// The `extensions.code` of the first error, if any.
pub fn error_code(resp: &Value) -> Option<&str> {
    resp["errors"][0]["extensions"]["code"].as_str()
}

/// Poll `check` until it returns `Some`, or fail after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every member id of `unit`'s subtree as seen through `url`, paging 100 at a time.
pub async fn subtree_member_ids(
    url: &str,
    token: &str,
    unit: &str,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let q = "query($u: ID!, $after: String) { unit(id: $u) { members(first: 100, after: $after, subtree: true) { edges { node { id } } pageInfo { hasNextPage endCursor } } } }";
    let mut ids = std::collections::BTreeSet::new();
    let mut after = Value::Null;
    loop {
        let r = gql(url, Some(token), q, json!({ "u": unit, "after": after })).await?;
        let conn = &r["data"]["unit"]["members"];
        let edges = conn["edges"]
            .as_array()
            .with_context(|| format!("no members in {r}"))?;
        ids.extend(
            edges
                .iter()
                .filter_map(|e| e["node"]["id"].as_str().map(str::to_owned)),
        );
        if conn["pageInfo"]["hasNextPage"] != true {
            return Ok(ids);
        }
        after = conn["pageInfo"]["endCursor"].clone();
    }
}
