//! A 23-node hierarchy (1 city, 2 counties, 4 townships, 16 villages) with every link
//! through a fault-injecting relay: loss, delay, partitions, and a township restarted while
//! cut off. After healing every node converges and no acknowledged write is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use grassroots_schema::{Role, UnitId};
use grassroots_tests::relay::Relay;
use grassroots_tests::{eventually, full_tree, gql, start, subtree_member_ids, unit};
use serde_json::json;

const CREATE: &str = "mutation($input: CreateMemberInput!) { createMember(input: $input) { id } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_lossy_hierarchy_converges_without_losing_acknowledged_writes()
-> anyhow::Result<()> {
    let relays: Arc<Mutex<BTreeMap<UnitId, Relay>>> = Arc::default();
    let keep = relays.clone();
    let via = Box::new(move |child: &UnitId, parent: std::net::SocketAddr| {
        let relay = Relay::start(parent).expect("relay");
        relay.set_loss(0.10);
        relay.set_delay(Duration::from_millis(15));
        let addr = relay.addr();
        keep.lock().expect("relays").insert(child.clone(), relay);
        addr
    });
    let (mut fed, _dir) = start(full_tree(2, 2, 4), Some(via)).await?;
    assert_eq!(fed.nodes.len(), 23);
    let relay = |u: &str, f: &dyn Fn(&Relay)| {
        f(relays
            .lock()
            .expect("relays")
            .get(&unit(u))
            .expect("relay of unit"))
    };

    // Acknowledged writes, by owning unit.
    let mut acked: BTreeMap<UnitId, BTreeSet<String>> = BTreeMap::new();
    async fn write(
        fed: &grassroots::federation::Federation,
        at: &UnitId,
        n: usize,
        acked: &mut BTreeMap<UnitId, BTreeSet<String>>,
    ) -> anyhow::Result<()> {
        for i in 0..n {
            let input = json!({ "input": { "unit": at.as_str(), "name": format!("{at} member {i}"), "birthYear": 1980, "gender": "MALE", "education": "COLLEGE", "joinedOn": "2010-07-01" } });
            let r = gql(
                &fed.graphql_url(at)?,
                Some(fed.token(at, Role::Clerk)?),
                CREATE,
                input,
            )
            .await?;
            let id = r["data"]["createMember"]["id"]
                .as_str()
                .with_context(|| format!("write at {at}: {r}"))?;
            acked.entry(at.clone()).or_default().insert(id.to_owned());
            // A record of another kind beside each member: the generic record path under
            // the same faults.
            let r = gql(
                &fed.graphql_url(at)?,
                Some(fed.token(at, Role::Clerk)?),
                "mutation($u: ID!) { createMeeting(input: { unit: $u, kind: GROUP_MEETING,
                    heldOn: \"2026-03-01\", attendance: 9 }) { id } }",
                json!({ "u": at.as_str() }),
            )
            .await?;
            let id = r["data"]["createMeeting"]["id"]
                .as_str()
                .with_context(|| format!("meeting at {at}: {r}"))?;
            acked.entry(at.clone()).or_default().insert(id.to_owned());
        }
        Ok(())
    }
    let units: Vec<UnitId> = fed.units.iter().map(|u| u.id.clone()).collect();
    for u in units
        .iter()
        .filter(|u| u.level() >= grassroots_schema::Level::Township)
    {
        write(&fed, u, 2, &mut acked).await?;
    }

    // Partitions: a whole township subtree off its county, two villages off their townships.
    for cut in ["c01/k02/t01", "c01/k01/t01/v01", "c01/k01/t02/v03"] {
        relay(cut, &|r| r.cut());
    }
    for u in [
        "c01/k02/t01",
        "c01/k02/t01/v02",
        "c01/k01/t01/v01",
        "c01/k01/t02/v03",
    ] {
        write(&fed, &unit(u), 2, &mut acked).await?;
    }
    // A township restarts while its village is cut off; it keeps its data and accepts writes.
    let restarted = unit("c01/k01/t02");
    fed.stop(&restarted).await?;
    fed.restart(&restarted).await?;
    write(&fed, &restarted, 2, &mut acked).await?;
    write(&fed, &unit("c01/k01/t02/v01"), 1, &mut acked).await?;

    // Heal.
    for r in relays.lock().expect("relays").values() {
        r.restore();
        r.set_loss(0.02);
    }
    let expected = |root: &UnitId| -> BTreeSet<String> {
        acked
            .iter()
            .filter(|(u, _)| u.is_in_subtree_of(root))
            .flat_map(|(_, ids)| ids.iter().cloned())
            .filter(|id| !id.starts_with("meetings:"))
            .collect()
    };
    let meetings = |root: &UnitId| -> usize {
        acked
            .iter()
            .filter(|(u, _)| u.is_in_subtree_of(root))
            .flat_map(|(_, ids)| ids.iter())
            .filter(|id| id.starts_with("meetings:"))
            .count()
    };
    // Every node above the writes ends with exactly the acknowledged writes of its subtree.
    for u in &units {
        let want = expected(u);
        let (url, token) = (fed.graphql_url(u)?, fed.token(u, Role::Viewer)?.to_owned());
        let have = eventually(
            Duration::from_secs(60),
            &format!("convergence at {u}"),
            || {
                let (url, token, want, u) =
                    (url.clone(), token.clone(), want.clone(), u.to_string());
                async move {
                    let have = subtree_member_ids(&url, &token, &u).await?;
                    Ok(Some(have).filter(|h| *h == want))
                }
            },
        )
        .await?;
        assert_eq!(have.len(), want.len());
        let want_meetings = meetings(u);
        eventually(Duration::from_secs(60), &format!("meetings at {u}"), || {
            let (url, token, u) = (url.clone(), token.clone(), u.to_string());
            async move {
                let r = gql(
                    &url,
                    Some(&token),
                    "query($u: ID!) { unit(id: $u) { meetings(subtree: true) { totalCount } } }",
                    json!({ "u": u }),
                )
                .await?;
                let n = r["data"]["unit"]["meetings"]["totalCount"].as_u64();
                Ok(n.filter(|n| *n as usize == want_meetings))
            }
        })
        .await?;
        // The roll-up row of the node's own unit counts the same members, and every view
        // (rows and roll-ups, maintained by deltas as changes arrived) equals a rebuild.
        let node = &fed.node(u)?.node;
        assert_eq!(node.reader().rollup(u)?.members as usize, want.len(), "{u}");
        let diffs = node.store().verify_views().await?;
        assert!(diffs.is_empty(), "{u}: {diffs:?}");
    }
    assert!(
        relays
            .lock()
            .expect("relays")
            .values()
            .map(Relay::dropped)
            .sum::<u64>()
            > 0,
        "no fault was injected"
    );
    fed.shutdown().await;
    Ok(())
}
