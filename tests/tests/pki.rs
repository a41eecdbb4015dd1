//! The PKI/link matrix against a running township: every wrong peer is refused, the parent
//! and a registered child are accepted, and a revoked certificate is dropped and refused.

use std::time::Duration;

use anyhow::Context as _;
use grassroots::federation::UnitSpec;
use grassroots_node::net::{self, NetError};
use grassroots_node::pki::PendingIdentity;
use grassroots_node::{Identity, LinkConfig};
use grassroots_schema::{Role, UnitId};
use grassroots_tests::relay::Relay;
use grassroots_tests::{eventually, fast_links, gql, start, unit};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn tree() -> Vec<UnitSpec> {
    [
        "c01",
        "c01/k01",
        "c01/k02",
        "c01/k01/t01",
        "c01/k01/t02",
        "c01/k02/t01",
        "c01/k01/t01/v01",
        "c01/k01/t01/v02",
        "c01/k01/t01/v03",
        "c01/k02/t01/v01",
    ]
    .into_iter()
    .map(|id| UnitSpec {
        id: unit(id),
        name: format!("Unit {id}"),
    })
    .collect()
}

async fn try_link(
    identity: &Identity,
    parent: &UnitId,
    addr: std::net::SocketAddr,
) -> Result<(), NetError> {
    let endpoint = net::endpoint(
        identity,
        "127.0.0.1:0".parse().expect("addr"),
        &LinkConfig { ..fast_links() },
        None,
    )?;
    let result =
        net::connect_parent(&endpoint, identity, parent, addr, Duration::from_secs(5)).await;
    if let Ok(link) = &result {
        link.conn.close(0u32.into(), b"probe done");
    }
    endpoint.close(0u32.into(), b"probe done");
    result.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_parent_and_registered_children_with_valid_chains_get_in() -> anyhow::Result<()> {
    let (mut fed, dir) = start(tree(), None).await?;
    let (t01, v02, v03) = (
        unit("c01/k01/t01"),
        unit("c01/k01/t01/v02"),
        unit("c01/k01/t01/v03"),
    );
    // v03 is registered at the township but not running: the probes below speak for it.
    fed.stop(&v03).await?;
    let load = |u: &str| Identity::load(&dir.path().join(u.replace('/', "_")).join("pki"));
    let township = fed.node(&t01)?.node.quic_addr();

    // Accepted: a registered child with its own certificate.
    try_link(&load("c01/k01/t01/v03")?, &t01, township)
        .await
        .context("registered child refused")?;
    // Accepted: the same child with keys it made itself, its request signed by the township
    // (`pki request`, `sign`, `accept`).
    let town = load("c01/k01/t01")?;
    let pending = PendingIdentity::create(&v03, &town.deployment)?;
    let own = pending.accept(
        &town.sign_request(&v03, &pending.request()?)?,
        &town.root_fingerprint(),
    )?;
    try_link(&own, &t01, township)
        .await
        .context("child with its own keys refused")?;
    // Accepted: the township's own link to its parent is up.
    let county_url = fed.graphql_url(&unit("c01/k01"))?;
    let county_token = fed.token(&unit("c01/k01"), Role::Viewer)?.to_owned();
    eventually(WAIT, "township link up at the county", || {
        let (u, t) = (county_url.clone(), county_token.clone());
        async move {
            let r = gql(
                &u,
                Some(&t),
                "{ unit(id: \"c01/k01/t01\") { sync { link { connected } } } }",
                json!({}),
            )
            .await?;
            Ok(Some(()).filter(|_| r["data"]["unit"]["sync"]["link"]["connected"] == true))
        }
    })
    .await?;

    let t02 = load("c01/k01/t02")?;
    let k01 = load("c01/k01")?;
    let v01 = load("c01/k01/t01/v01")?;
    let foreign_root = Identity::create_root(&unit("c01"), "test.grassroots")?;
    let foreign = foreign_root
        .issue_child(&unit("c01/k01"))?
        .issue_child(&t01)?
        .issue_child(&v03)?;
    let cases: Vec<(&str, Identity)> = vec![
        ("sibling township", t02.clone()),
        ("cousin village", load("c01/k02/t01/v01")?),
        ("parent claiming to be a child", k01.clone()),
        ("foreign root", foreign),
        (
            "village certificate used as a CA",
            v01.testing_issue_with_leaf_key(&v03)?,
        ),
        (
            "township issuing for another township's village",
            t02.testing_issue_any(&v03)?,
        ),
        (
            "valid chain, not issued by the parent",
            k01.testing_issue_any(&v03)?,
        ),
    ];
    for (case, identity) in cases {
        match try_link(&identity, &t01, township).await {
            Ok(()) => anyhow::bail!("{case}: accepted"),
            Err(e) => assert!(
                e.is_permanent(),
                "{case}: refused but not as permanent: {e:?}"
            ),
        }
    }

    // Revocation: the township's admin revokes v02's certificate. The live link drops, the
    // revocation is in the township's profile, and v02 is refused from then on.
    let town_url = fed.graphql_url(&t01)?;
    let admin = fed.token(&t01, Role::Admin)?.to_owned();
    let link_of_v02 = || {
        let (u, t) = (town_url.clone(), admin.clone());
        async move {
            let r = gql(&u, Some(&t), "{ unit(id: \"c01/k01/t01/v02\") { sync { link { connected certificateFingerprint } } } }", json!({})).await?;
            anyhow::Ok(r["data"]["unit"]["sync"]["link"].clone())
        }
    };
    let link = eventually(WAIT, "v02 linked", || async {
        Ok(Some(link_of_v02().await?).filter(|l| l["connected"] == true))
    })
    .await?;
    let fp = load("c01/k01/t01/v02")?.fingerprint();
    assert_eq!(link["certificateFingerprint"], fp);
    // Only an admin of the township may revoke; a clerk may not.
    let clerk = fed.token(&t01, Role::Clerk)?;
    let revoke = "mutation($u: ID!, $f: String!) { revokeCertificate(input: { unit: $u, fingerprint: $f }) { unit fingerprint } }";
    let r = gql(
        &town_url,
        Some(clerk),
        revoke,
        json!({ "u": v02.to_string(), "f": fp }),
    )
    .await?;
    assert_eq!(r["errors"][0]["extensions"]["code"], "FORBIDDEN", "{r}");
    let r = gql(
        &town_url,
        Some(&admin),
        revoke,
        json!({ "u": v02.to_string(), "f": fp }),
    )
    .await?;
    assert_eq!(r["data"]["revokeCertificate"]["fingerprint"], fp, "{r}");
    eventually(WAIT, "v02 link dropped", || async {
        Ok(Some(link_of_v02().await?).filter(|l| l["connected"] == false))
    })
    .await?;
    // The connection itself is closed, not only left out of the township's sync: the
    // village sees its link to the township go down, and its redials refused.
    let v02_url = fed.graphql_url(&v02)?;
    let v02_admin = fed.token(&v02, Role::Admin)?.to_owned();
    eventually(WAIT, "v02's own link down", || {
        let (u, t) = (v02_url.clone(), v02_admin.clone());
        async move {
            let r = gql(
                &u,
                Some(&t),
                "{ unit(id: \"c01/k01/t01\") { sync { link { connected lastError } } } }",
                json!({}),
            )
            .await?;
            let link = r["data"]["unit"]["sync"]["link"].clone();
            Ok(Some(link).filter(|l| l["connected"] == false && l["lastError"].is_string()))
        }
    })
    .await?;
    // Closed as a refusal, which the village does not redial, not as a goodbye.
    eventually(WAIT, "v02's refusal recorded", || {
        let (u, t) = (v02_url.clone(), v02_admin.clone());
        async move {
            let r = gql(
                &u,
                Some(&t),
                "{ unit(id: \"c01/k01/t01\") { sync { link { lastError } } } }",
                json!({}),
            )
            .await?;
            let link = r["data"]["unit"]["sync"]["link"].clone();
            Ok(Some(link).filter(|l| {
                l["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("revoked"))
            }))
        }
    })
    .await?;
    // It does not redial at once: such a dial would be refused at the handshake here, and
    // counted (its next try is four times the longest backoff away, 4 s in these tests).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = gql(
        &town_url,
        Some(&admin),
        "{ unit(id: \"c01/k01/t01/v02\") { sync { link { failedDials } } } }",
        json!({}),
    )
    .await?;
    assert_eq!(r["data"]["unit"]["sync"]["link"]["failedDials"], 0, "{r}");
    let err = try_link(&load("c01/k01/t01/v02")?, &t01, township)
        .await
        .err()
        .context("revoked certificate accepted")?;
    assert!(err.is_permanent(), "{err:?}");
    // The revocation is public in the township's profile, and it reached the county.
    let r = gql(
        &county_url,
        None,
        "{ unit(id: \"c01/k01/t01\") { revokedCertificates } }",
        json!({}),
    )
    .await?;
    let listed = eventually(WAIT, "revocation at the county", || {
        let u = county_url.clone();
        async move {
            let r = gql(
                &u,
                None,
                "{ unit(id: \"c01/k01/t01\") { revokedCertificates } }",
                json!({}),
            )
            .await?;
            Ok(Some(r["data"]["unit"]["revokedCertificates"].clone())
                .filter(|l| l.as_array().is_some_and(|a| !a.is_empty())))
        }
    })
    .await?;
    assert_eq!(listed, json!([fp]), "{r}");
    // Writes at the revoked village no longer reach the township.
    let r = gql(&v02_url, Some(fed.token(&v02, Role::Clerk)?), "mutation { createMember(input: { unit: \"c01/k01/t01/v02\", name: \"After Revocation\", birthYear: 1990, gender: MALE, education: PRIMARY, joinedOn: \"2020-01-01\" }) { id } }", json!({})).await?;
    let id = r["data"]["createMember"]["id"]
        .as_str()
        .context("write at the revoked village")?
        .to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = gql(
        &town_url,
        Some(&admin),
        "query($id: ID!) { member(id: $id) { id } }",
        json!({ "id": id }),
    )
    .await?;
    assert!(
        r["data"]["member"].is_null(),
        "a revoked village's write arrived: {r}"
    );
    fed.shutdown().await;
    Ok(())
}

/// A dial whose handshake is stuck behind a dead link starts fresh handshakes beside it, so
/// it connects soon after the link heals. A single handshake would retransmit its first
/// flight at about 1, 3 and 7 s (QUIC's probe timeout doubles after each loss): after a 4 s
/// outage it would connect at about 7 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_stuck_behind_a_dead_link_connects_soon_after_it_heals() -> anyhow::Result<()> {
    let units = tree().into_iter().take(2).collect::<Vec<_>>();
    let (mut fed, dir) = start(units, None).await?;
    let (city, county) = (unit("c01"), unit("c01/k01"));
    fed.stop(&county).await?;
    let identity = Identity::load(&dir.path().join("c01_k01").join("pki"))?;
    let relay = Relay::start(fed.node(&city)?.node.quic_addr())?;
    relay.cut();
    // Production's idle timeout: QUIC also gives up a handshake after it.
    let cfg = LinkConfig {
        handshake_timeout: Duration::from_secs(20),
        idle_timeout: Duration::from_secs(30),
        ..fast_links()
    };
    let endpoint = net::endpoint(&identity, "127.0.0.1:0".parse()?, &cfg, None)?;
    let started = std::time::Instant::now();
    let heal = async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        relay.restore();
    };
    let (link, ()) = tokio::join!(
        net::connect_parent(
            &endpoint,
            &identity,
            &city,
            relay.addr(),
            cfg.handshake_timeout
        ),
        heal
    );
    let took = started.elapsed();
    let link = link.context("dial after the outage")?;
    // Well before the 20 s a handshake stuck behind the outage would wait (a wide margin:
    // this is behaviour, not a latency figure).
    assert!(
        took < Duration::from_secs(12),
        "connected {took:?} after the dial began; the link healed at 4 s"
    );
    link.conn.close(0u32.into(), b"done");
    endpoint.close(0u32.into(), b"done");
    fed.shutdown().await;
    Ok(())
}

/// A dial loop whose parent is away races handshakes on its first two dials only, then dials
/// one handshake at a time: racing helps a lossy link, not a parent that is down, and a
/// village on a metered line should not pay four times the dial traffic for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_is_away_is_dialled_one_handshake_at_a_time() -> anyhow::Result<()> {
    use std::collections::HashMap;
    let dir = tempfile::tempdir()?;
    let county =
        Identity::create_root(&unit("c01"), "test.grassroots")?.issue_child(&unit("c01/k01"))?;
    let (store, reader, thread) =
        grassroots_node::store::open(&dir.path().join("s.redb"), unit("c01/k01"))?;
    // The parent's address: a socket that reads and never answers.
    let away = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let cfg = LinkConfig {
        handshake_timeout: Duration::from_secs(2),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(100),
        ..fast_links()
    };
    let endpoint = net::endpoint(&county, "127.0.0.1:0".parse()?, &cfg, None)?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let ctx = net::LinkContext {
        identity: std::sync::Arc::new(county),
        store,
        reader,
        cfg,
        cancel: cancel.clone(),
    };
    let dialing = tokio::spawn(net::dial_loop(
        endpoint,
        ctx,
        unit("c01"),
        away.local_addr()?.into(),
    ));
    // Each handshake's Initial packets carry its own destination connection id (long header:
    // flags, version, id length, id).
    let started = std::time::Instant::now();
    let mut first_seen: HashMap<Vec<u8>, Duration> = HashMap::new();
    let mut buf = [0u8; 2048];
    while started.elapsed() < Duration::from_secs(9) {
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), away.recv(&mut buf)).await
            && n > 6
            && buf[0] & 0x80 != 0
            && let Some(id) = buf.get(6..6 + usize::from(buf[5]))
        {
            first_seen.entry(id.to_vec()).or_insert(started.elapsed());
        }
    }
    cancel.cancel();
    dialing.await?;
    thread.shutdown().await;
    let mut times: Vec<Duration> = first_seen.into_values().collect();
    times.sort();
    // Dials of 2 s each: the first two (until about 4.2 s) race up to 4 handshakes; the
    // later ones (about 4.2, 6.3 and 8.4 s) start one each.
    let early = times
        .iter()
        .filter(|t| **t < Duration::from_secs(4))
        .count();
    let late = times
        .iter()
        .filter(|t| **t >= Duration::from_millis(4_500))
        .count();
    assert!(early >= 5, "the first dials raced: {times:?}");
    assert!(late <= 3, "later dials start one handshake each: {times:?}");
    Ok(())
}

/// A parent node's store and accept loop alone (no dialling, no gateway), for tests of how
/// it takes handshakes.
struct AcceptingParent {
    addr: std::net::SocketAddr,
    cancel: tokio_util::sync::CancellationToken,
    accepting: tokio::task::JoinHandle<()>,
    tasks: tokio_util::task::TaskTracker,
    thread: grassroots_node::store::StoreThread,
    _dir: tempfile::TempDir,
}

impl AcceptingParent {
    /// `root`'s node taking handshakes as `cfg` says, of `children`.
    async fn start(
        root: Identity,
        cfg: LinkConfig,
        children: Vec<UnitId>,
    ) -> anyhow::Result<AcceptingParent> {
        let dir = tempfile::tempdir()?;
        let (store, reader, thread) =
            grassroots_node::store::open(&dir.path().join("s.redb"), root.unit.clone())?;
        let endpoint = net::endpoint(&root, "127.0.0.1:0".parse()?, &cfg, None)?;
        let addr = endpoint.local_addr()?;
        let cancel = tokio_util::sync::CancellationToken::new();
        let ctx = net::LinkContext {
            identity: std::sync::Arc::new(root),
            store,
            reader,
            cfg,
            cancel: cancel.clone(),
        };
        let tasks = tokio_util::task::TaskTracker::new();
        let accepting = tokio::spawn(net::accept_loop(
            endpoint,
            ctx,
            std::sync::Arc::new(children),
            tasks.clone(),
        ));
        Ok(AcceptingParent {
            addr,
            cancel,
            accepting,
            tasks,
            thread,
            _dir: dir,
        })
    }

    /// Stop taking handshakes, wait for the links, close the store.
    async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.accepting.await?;
        self.tasks.close();
        self.tasks.wait().await;
        self.thread.shutdown().await;
        Ok(())
    }
}

/// Handshakes begun by `n` senders whose answers never reach them (a relay dropping what
/// the node sends back), as with forged source addresses, each once its Initial reached the
/// node at `addr`: the relay (their source towards the node), and each sender's endpoint and
/// handshake.
async fn forged_initials(
    identity: &Identity,
    addr: std::net::SocketAddr,
    name: &str,
    n: u64,
) -> anyhow::Result<(Relay, Vec<ForgedInitial>)> {
    let forged = Relay::start(addr)?;
    forged.cut_down();
    let mut spoofers = Vec::new();
    for i in 1..=n {
        let e = net::endpoint(identity, "127.0.0.1:0".parse()?, &fast_links(), None)?;
        let connecting = e.connect(forged.addr(), name)?;
        spoofers.push((e, tokio::spawn(connecting)));
        eventually(WAIT, "the forged Initial reached the node", || async {
            Ok((forged.handshakes_upstream() >= i).then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((forged, spoofers))
}

/// A sender of [`forged_initials`]: its endpoint and its handshake.
type ForgedInitial = (
    quinn::Endpoint,
    tokio::task::JoinHandle<Result<quinn::Connection, quinn::ConnectionError>>,
);

/// End the handshakes of [`forged_initials`].
fn end_forged(spoofers: Vec<ForgedInitial>) {
    for (e, connecting) in spoofers {
        connecting.abort();
        e.close(0u32.into(), b"done");
    }
}

/// A node works on at most `max_handshakes` incoming handshakes at once, and addresses
/// QUIC has not validated take at most half of them. Initials from forged sources (their
/// answers never arrive) hold at most that half; a child still gets in, through a Retry.
/// Once every handshake is taken, a new one is refused at once instead of held, and the
/// child gets in when a slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_past_the_most_in_progress_are_turned_away() -> anyhow::Result<()> {
    let city = unit("c01");
    let root = Identity::create_root(&city, "test.grassroots")?;
    let (k01, k02) = (unit("c01/k01"), unit("c01/k02"));
    let (stalling, honest) = (root.issue_child(&k01)?, root.issue_child(&k02)?);
    let cfg = LinkConfig {
        max_handshakes: 2,
        handshake_timeout: Duration::from_secs(3),
        ..fast_links()
    };
    let parent = AcceptingParent::start(root, cfg, vec![k01, k02]).await?;
    let (addr, name) = (parent.addr, city.dns_name(&stalling.deployment));
    // Two senders whose answers never reach them, as with forged source addresses: the
    // first takes a handshake (until the timeout), the second is only asked to retry.
    let (_forged, spoofers) = forged_initials(&stalling, addr, &name, 2).await?;
    // A child gets in all the same.
    let honest_end = net::endpoint(&honest, "127.0.0.1:0".parse()?, &fast_links(), None)?;
    let dial = || net::connect_parent(&honest_end, &honest, &city, addr, Duration::from_secs(2));
    // Within its 2 s handshake timeout: not held behind the forged ones.
    let link = dial()
        .await
        .context("a child dialling past forged Initials")?;
    link.conn.close(0u32.into(), b"done");
    // k01 comes back validated (the Retry), completes TLS and never says hello: with the
    // first forged handshake it holds both until the node's handshake timeout.
    let stalled_end = net::endpoint(&stalling, "127.0.0.1:0".parse()?, &fast_links(), None)?;
    let stalled = stalled_end.connect(addr, &name)?.await?;
    let slots_taken = std::time::Instant::now();
    let turned_away = dial().await;
    // Refused with its code, not timed out: turned away, not held.
    match &turned_away {
        Err(e @ NetError::Connection(quinn::ConnectionError::ConnectionClosed(c)))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            assert!(!e.is_permanent(), "an overloaded parent is dialled again");
        }
        other => panic!(
            "expected the dial refused while every handshake is taken, got {:?}",
            other.as_ref().map(|l| &l.peer)
        ),
    }
    // Once the stalled handshakes have timed out, k02 gets in.
    let link = eventually(
        Duration::from_secs(10),
        "k02 linked once a slot is free",
        || async { Ok(dial().await.ok()) },
    )
    .await?;
    assert!(
        slots_taken.elapsed() >= Duration::from_millis(1_500),
        "k02 got in while every handshake was still taken"
    );
    link.conn.close(0u32.into(), b"done");
    drop(stalled);
    end_forged(spoofers);
    parent.stop().await
}

/// A city's node taking at most 8 handshakes at once (held 5 s each), and the identities
/// of its three registered counties.
async fn eight_handshakes() -> anyhow::Result<(AcceptingParent, UnitId, [Identity; 3])> {
    let city = unit("c01");
    let root = Identity::create_root(&city, "test.grassroots")?;
    let counties = [unit("c01/k01"), unit("c01/k02"), unit("c01/k03")];
    let ids = [
        root.issue_child(&counties[0])?,
        root.issue_child(&counties[1])?,
        root.issue_child(&counties[2])?,
    ];
    let cfg = LinkConfig {
        max_handshakes: 8,
        handshake_timeout: Duration::from_secs(5),
        ..fast_links()
    };
    let parent = AcceptingParent::start(root, cfg, counties.to_vec()).await?;
    Ok((parent, city, ids))
}

/// Once half of a node's handshakes are taken, an address holding an eighth of them in
/// validated handshakes gets no more: a sender that answers the Retry from its own address
/// (validated like a child) and then stalls cannot take them all. Initials forged with an
/// address do not count against it: a child at that address still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_handshake() -> anyhow::Result<()> {
    let (parent, city, [stalling, honest, other]) = eight_handshakes().await?;
    let (addr, name) = (parent.addr, city.dns_name(&stalling.deployment));
    // Four Initials whose answers never arrive, from 127.0.0.2 (the relay's side towards
    // the node), as if forged with that address: they take the unvalidated half.
    let (_forged, spoofers) = forged_initials(&stalling, addr, &name, 4).await?;
    // A child at that address still gets in (through a Retry).
    let at_2 = || "127.0.0.2:0".parse::<std::net::SocketAddr>();
    let honest_end = net::endpoint(&honest, at_2()?, &fast_links(), None)?;
    let link = net::connect_parent(&honest_end, &honest, &city, addr, Duration::from_secs(2))
        .await
        .context("a child at the forged Initials' address")?;
    link.conn.close(0u32.into(), b"done");
    // k01's certificate from 127.0.0.2, one endpoint per handshake: each comes back
    // validated, completes TLS and never says hello. The first holds an eighth; the rest
    // are refused.
    let mut stalled = Vec::new();
    let mut refused = 0;
    for _ in 0..3 {
        let e = net::endpoint(&stalling, at_2()?, &fast_links(), None)?;
        match e.connect(addr, &name)?.await {
            Ok(conn) => stalled.push((e, conn)),
            Err(quinn::ConnectionError::ConnectionClosed(c))
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                refused += 1;
            }
            Err(e) => anyhow::bail!("a stalling handshake failed otherwise: {e}"),
        }
    }
    assert_eq!(
        (stalled.len(), refused),
        (1, 2),
        "127.0.0.2 held an eighth in validated handshakes, and was refused past it"
    );
    // Another address gets in while those hold theirs.
    let other_end = net::endpoint(&other, "127.0.0.1:0".parse()?, &fast_links(), None)?;
    let link = net::connect_parent(&other_end, &other, &city, addr, Duration::from_secs(2))
        .await
        .context("a child dialling beside one address's stalled handshakes")?;
    assert_eq!(link.peer, city);
    link.conn.close(0u32.into(), b"done");
    for (e, conn) in stalled {
        conn.close(0u32.into(), b"done");
        e.close(0u32.into(), b"done");
    }
    end_forged(spoofers);
    parent.stop().await
}

/// Validated addresses no child linked from lately take at most three quarters of a node's
/// handshakes: senders answering Retries from addresses of their own (a few IPv6 /64s are
/// cheap) and stalling cannot take the quarter a child comes back to from the address it
/// linked from before, while a new address is turned away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_leave_a_quarter_to_the_addresses_children_linked_from() -> anyhow::Result<()> {
    let (parent, city, [stalling, child, newcomer]) = eight_handshakes().await?;
    let (addr, name) = (parent.addr, city.dns_name(&stalling.deployment));
    let at = |n: u8| std::net::SocketAddr::from(([127, 0, 0, n], 0));
    // k02 links from 127.0.0.9 and drops the link: the node knows that address from then on.
    let child_end = net::endpoint(&child, at(9), &fast_links(), None)?;
    let dial_child =
        || net::connect_parent(&child_end, &child, &city, addr, Duration::from_secs(2));
    let first = dial_child().await.context("k02's first link")?;
    first.conn.close(0u32.into(), b"done");
    // k01's certificate from six other addresses, one each: each completes TLS and never
    // says hello. The first four take the half open to unvalidated addresses; the next two
    // come back validated through a Retry and take another quarter.
    let stalls_began = std::time::Instant::now();
    let mut stalled = Vec::new();
    for n in 2..8 {
        let e = net::endpoint(&stalling, at(n), &fast_links(), None)?;
        let conn = e
            .connect(addr, &name)?
            .await
            .with_context(|| format!("a stalling handshake from 127.0.0.{n}"))?;
        stalled.push((e, conn));
    }
    let refused = |r: &Result<_, quinn::ConnectionError>| {
        matches!(r, Err(quinn::ConnectionError::ConnectionClosed(c))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
    };
    // A seventh address, validated through its Retry, is refused: the last quarter is kept.
    let seventh = net::endpoint(&stalling, at(8), &fast_links(), None)?;
    let r = seventh.connect(addr, &name)?.await.map(|_| ());
    assert!(
        refused(&r),
        "a seventh stranger took the last quarter: {r:?}"
    );
    // So is k03, registered but dialling from an address no child linked from.
    let newcomer_end = net::endpoint(&newcomer, at(10), &fast_links(), None)?;
    let r = net::connect_parent(
        &newcomer_end,
        &newcomer,
        &city,
        addr,
        Duration::from_secs(2),
    )
    .await
    .map(|l| l.peer);
    assert!(
        matches!(&r, Err(NetError::Connection(c)) if refused(&Err(c.clone()))),
        "k03 from a new address got past the strangers' share: {r:?}"
    );
    // k02 gets in from the address it linked from, while the six still hold theirs.
    let link = dial_child()
        .await
        .context("k02 back from the address it linked from")?;
    assert_eq!(link.peer, city);
    // Not let in because the stalled handshakes had timed out.
    assert!(
        stalls_began.elapsed() < Duration::from_secs(5),
        "the stalled handshakes may have timed out before k02 came back"
    );
    link.conn.close(0u32.into(), b"done");
    for (e, conn) in stalled {
        conn.close(0u32.into(), b"done");
        e.close(0u32.into(), b"done");
    }
    parent.stop().await
}

/// A township issued again (its machine lost or stolen) has a new CA, and its children's
/// certificates still chain through the old one. Certificates the old CA's key makes since
/// (a thief's) get in until the county revokes that CA; from then on they are refused, and
/// the live links through it (the children it issued before) are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_ca_is_refused_once_its_issuer_revokes_it() -> anyhow::Result<()> {
    let (mut fed, dir) = start(tree(), None).await?;
    let (k01, t01, v01, v03) = (
        unit("c01/k01"),
        unit("c01/k01/t01"),
        unit("c01/k01/t01/v01"),
        unit("c01/k01/t01/v03"),
    );
    fed.stop(&v03).await?;
    let folder = |u: &UnitId| dir.path().join(u.as_str().replace('/', "_")).join("pki");
    // The thief's copy of the township's identity; then the township is issued again by
    // the county, on the same store.
    let stolen = Identity::load(&folder(&t01))?;
    let old_ca = stolen.ca_fingerprint().context("a township has a CA")?;
    fed.stop(&t01).await?;
    let reissued = Identity::load(&folder(&k01))?.issue_child(&t01)?;
    assert_ne!(reissued.ca_fingerprint(), Some(old_ca.clone()));
    reissued.save(&folder(&t01))?;
    fed.restart(&t01).await?;
    let township = fed.node(&t01)?.node.quic_addr();
    // The old CA's key makes v03 a certificate: its chain is valid, and it gets in.
    let forged = stolen.issue_child(&v03)?;
    eventually(WAIT, "the forged certificate linked", || async {
        Ok(try_link(&forged, &t01, township).await.ok())
    })
    .await?;
    // v01, issued by the old CA before, links as well.
    let town_url = fed.graphql_url(&t01)?;
    let town_admin = fed.token(&t01, Role::Admin)?.to_owned();
    let v01_connected = || {
        let (u, t) = (town_url.clone(), town_admin.clone());
        async move {
            let r = gql(
                &u,
                Some(&t),
                "{ unit(id: \"c01/k01/t01/v01\") { sync { link { connected } } } }",
                json!({}),
            )
            .await?;
            anyhow::Ok(r["data"]["unit"]["sync"]["link"]["connected"] == true)
        }
    };
    eventually(WAIT, "v01 linked to the township issued again", || async {
        Ok(v01_connected().await?.then_some(()))
    })
    .await?;
    // The county's admin revokes the old CA.
    let revoke = "mutation($u: ID!, $f: String!) { revokeCertificate(input: { unit: $u, fingerprint: $f }) { fingerprint } }";
    let r = gql(
        &fed.graphql_url(&k01)?,
        Some(fed.token(&k01, Role::Admin)?),
        revoke,
        json!({ "u": t01.to_string(), "f": old_ca }),
    )
    .await?;
    assert_eq!(r["data"]["revokeCertificate"]["fingerprint"], old_ca, "{r}");
    // Once the county's profile reaches the township: the forged certificate is refused
    // as revoked, and v01's live link through the old CA is dropped.
    eventually(WAIT, "the forged certificate refused", || async {
        Ok(match try_link(&forged, &t01, township).await {
            Err(NetError::Refused {
                reason: grassroots_node::sync::wire::RejectReason::Revoked,
                ..
            }) => Some(()),
            // Refused at the handshake: the alert names the revocation.
            Err(e) if e.is_permanent() && format!("{e:#}").to_lowercase().contains("revoked") => {
                Some(())
            }
            _ => None,
        })
    })
    .await?;
    eventually(WAIT, "v01's link through the old CA dropped", || async {
        Ok((!v01_connected().await?).then_some(()))
    })
    .await?;
    // A certificate from the township's new CA gets in.
    let fresh = reissued.issue_child(&v03)?;
    try_link(&fresh, &t01, township)
        .await
        .context("a certificate of the new CA")?;
    let _ = v01;
    fed.shutdown().await;
    Ok(())
}
