//! Benchmarks, one JSON line per figure:
//! `{"scenario","metric","value","unit","baseline","ratio"}`.
//!
//! `cargo run --release -p grassroots-tests --bin bench -- <scenario|all>`
//!
//! - `idle-reconnect`: a county holding 10,000 village registers (and the 101 profiles that
//!   register their units) reconnects to the city with nothing changed: protocol bytes and
//!   round trips, against per-document automerge sync (what automerge-repo and samod do on a
//!   reconnect) computed in the same run; and both engines' CPU time for it (`cpu_ms`, the
//!   first reconnect after the city took the documents; `cpu_ms_again`, a second one).
//! - `catch-up`: a village that made 5,000 changes (1,000 household members, then 4,000
//!   edits, one after another: 5,000 automerge changes on both sides) while offline
//!   reconnects to its township over QUIC on loopback; time until the township has
//!   everything durably, against samod 0.16 doing the same in the same run (its township's
//!   storage flushed to disk, as ours commits); and UDP bytes through the link over the raw
//!   JSON of the records.
//! - `lossy-link`: the same catch-up through a relay with 30% random loss and 256 kbit/s;
//!   application goodput over what the link can carry (rate x (1 - loss)).
//! - `lossy-dial`: 30 dials of a village to its township through that same relay, each until the
//!   link's hello is answered: link-up time p50, p90 and max and the bytes per dial (what the
//!   whole lossy catch-up spends before its transfer starts, with enough samples to compare);
//!   `link_up_*` from a fresh endpoint each time (a restarted node), `redial_*` from one
//!   endpoint (a running node whose link came back, resuming its TLS session, its hello in
//!   its first flight: 0-RTT), `redial_without_0rtt_*` the same without early data; then, loss
//!   off, the bytes of a link held open 3 s with path MTU discovery on and off
//!   (`mtu_on_bytes_per_link`, `mtu_off_bytes_per_link`).
//! - `lossy-redial`: `lossy-dial`'s redials alone, with and without early data, 60 each,
//!   alternately in blocks of ten, with the share of links whose hello went early; then 20
//!   each with no loss and 100 ms of delay each way (not in `all`; `lossy-dial` has both).
//! - `idle-link`: what an idle, connected village link costs per hour (bytes with IPv4 and
//!   UDP headers, and datagrams), with the default link settings and the village example's.
//! - `ingest`: durable changes/s with 1, 8 and 64 concurrent writers (group commit), the
//!   disk's flush latency in the same run (`sync_data` on pages overwritten, as redb
//!   commits), and acknowledgement p99 over its p99.
//! - `propagation`: a write through a village's GraphQL until the city's GraphQL shows it,
//!   3 hops on loopback, beside the run's fsync latency.
//! - `cold-start`: a county node with 200 villages' data, start to first GraphQL answer.
//! - `memory`: resident memory of a store holding 5,000 villages' registers after every
//!   document has been loaded once through its budgeted cache; what each document adds
//!   (its index entry), and the cache apart.
//! - `rollup`: a city's indicator query over 5,000 villages' members through its GraphQL
//!   gateway at 32 concurrent connections: requests/s against `{ __typename }` on the same
//!   server in the same run, and p99 latency; every response body checked. Then, one
//!   connection each: a page of a county's 15,000 members ordered by name against the same
//!   page in stored order; the same for the city's 150,000, and by year of birth, greatest
//!   first, from the 5,000th row; a township's 1,500 by name; the city's 60,000 meetings,
//!   latest first and by attendance, against stored order; those of a quarter latest first,
//!   uncounted and counted, and a county's latest first, each against the same listing by
//!   attendance with every row decoded; all of them counted, and all of them by attendance
//!   (each row's attendance read alone), each against the villages' (every row decoded);
//!   the seed's targets over the city and over a county; the balance of two figures over
//!   the city's villages; and a page of 100 entries of the record feed.
//! - `full-sync`: a county and a city starting empty under ten township nodes that hold 50
//!   villages' registers each (500 villages, 15,000 members; `FULL_SYNC_TOWNSHIPS=100` for
//!   a city's 5,000 villages): time until the county's views, then the city's, hold every
//!   member, documents per second, and the frames the county took in over the records' raw
//!   JSON. No baseline runs beside it.

/// The node binary's allocator, so nodes run in this process as they run in production.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use automerge::sync;
use automerge::sync::SyncDoc;
use grassroots::federation::{Federation, FederationOptions, UnitSpec};
use grassroots_node::doc;
use grassroots_node::sync::Engine;
use grassroots_node::sync::wire::{self, Msg};
use grassroots_schema::{
    DocId, DocKind, DocMeta, Education, Gender, Member, MemberPatch, MemberStatus, NewMember,
    RecordId, UnitId,
};
use grassroots_tests::relay::Relay;
use grassroots_tests::{behind_relay, gql_with, link_up, relay_of, unit};
use serde_json::json;

/// One figure, its fields in the documented order (`baseline` and `ratio` only where a
/// baseline ran beside it; a ratio over a zero baseline is null).
#[derive(serde::Serialize)]
struct Figure<'a> {
    scenario: &'a str,
    metric: &'a str,
    value: f64,
    unit: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<Option<f64>>,
}

fn emit(scenario: &str, metric: &str, value: f64, unit: &str, baseline: Option<f64>) {
    let line = Figure {
        scenario,
        metric,
        value,
        unit,
        baseline,
        ratio: baseline.map(|b| (b != 0.0).then(|| value / b)),
    };
    match serde_json::to_string(&line) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("{scenario} {metric}: {e}"),
    }
}

// ---------------------------------------------------------------- idle-reconnect

fn engine(u: &str, nonce: u8) -> Engine {
    let id = unit(u);
    Engine::new(id.clone(), doc::actor_for(&id, [nonce; 8]))
}

fn household(i: usize) -> NewMember {
    NewMember {
        name: format!("Household head {i}"),
        birth_year: 1940 + (i % 60) as i64,
        gender: if i.is_multiple_of(3) {
            Gender::Female
        } else {
            Gender::Male
        },
        education: [
            Education::Primary,
            Education::JuniorSecondary,
            Education::SeniorSecondary,
        ][i % 3],
        joined_on: format!("{}-07-01", 1970 + i % 50),
        status: MemberStatus::Full,
        phone: None,
        id_number: None,
        categories: Vec::new(),
    }
}

/// Deliver messages in rounds (one round = one network round trip's worth of messages in
/// flight), counting rounds and encoded frame bytes.
fn pump(a: &mut Engine, b: &mut Engine, mut queue: Vec<(UnitId, UnitId, Msg)>) -> (usize, usize) {
    let (mut bytes, mut rounds) = (0, 0);
    while !queue.is_empty() {
        rounds += 1;
        let mut next = Vec::new();
        for (from, to, msg) in std::mem::take(&mut queue) {
            bytes += wire::encode(&msg).len() + 4;
            let target = if &to == a.me() { &mut *a } else { &mut *b };
            let step = target.receive(&from, msg);
            next.extend(step.send.into_iter().map(|(p, m)| (to.clone(), p, m)));
        }
        queue = next;
    }
    (bytes, rounds)
}

fn connect(
    a: &mut Engine,
    b: &mut Engine,
    sa: HashMap<DocId, Vec<u8>>,
    sb: HashMap<DocId, Vec<u8>>,
) -> Vec<(UnitId, UnitId, Msg)> {
    let (ua, ub) = (a.me().clone(), b.me().clone());
    let mut q: Vec<_> = a
        .connect(&ub, sa)
        .into_iter()
        .map(|m| (ua.clone(), ub.clone(), m))
        .collect();
    q.extend(
        b.connect(&ua, sb)
            .into_iter()
            .map(|m| (ub.clone(), ua.clone(), m)),
    );
    q
}

fn idle_reconnect() -> anyhow::Result<()> {
    const DOCS: usize = 10_000;
    let mut county = engine("c01/k01", 1);
    let mut city = engine("c01", 2);
    for i in 0..DOCS {
        // 100 townships x 100 villages, one register each.
        let owner = unit(&format!("c01/k01/t{:03}/v{:03}", i / 100, i % 100));
        let (d, _) = county
            .local_doc(DocMeta::new(DocId::new(DocKind::Members, owner)))
            .map_err(|r| anyhow::anyhow!(r.detail))?;
        doc::create_member(d, RecordId::from_u64(i as u64), &household(i))?;
    }
    // The registered tree (the city creates documents only for registered units).
    let mut tree: BTreeMap<UnitId, Vec<UnitId>> = BTreeMap::new();
    for i in 0..DOCS {
        let township = unit(&format!("c01/k01/t{:03}", i / 100));
        let village = unit(&format!("{township}/v{:03}", i % 100));
        tree.entry(unit("c01/k01"))
            .or_default()
            .push(township.clone());
        tree.entry(township).or_default().push(village);
    }
    for (parent, mut kids) in tree {
        kids.dedup();
        let (d, _) = county
            .local_doc(DocMeta::new(DocId::new(DocKind::Profile, parent.clone())))
            .map_err(|r| anyhow::anyhow!(r.detail))?;
        doc::set_profile(d, &format!("Unit {parent}"), &kids)?;
    }
    let q = connect(&mut county, &mut city, HashMap::new(), HashMap::new());
    pump(&mut county, &mut city, q);
    let (uk, uc) = (county.me().clone(), city.me().clone());
    let saved_k: HashMap<_, _> = county.disconnect(&uc).into_iter().collect();
    let saved_c: HashMap<_, _> = city.disconnect(&uk).into_iter().collect();

    // Ours: hello both ways (one round trip), then the digest exchange.
    let hello = |u: &UnitId| {
        wire::encode(&Msg::Hello(wire::Hello {
            versions: wire::VERSIONS,
            capabilities: wire::CAPABILITIES,
            unit: u.clone(),
            software: grassroots_node::net::SOFTWARE.into(),
        }))
        .len()
            + 4
    };
    // Both sides' work in memory (no I/O): what a reconnect costs the store threads. The
    // first reconnect after the initial sync digests what the city took in it; a second
    // one, with nothing changed since, finds every digest cached.
    let (ck, cc) = (saved_k.clone(), saved_c.clone());
    let began = Instant::now();
    let q = connect(&mut county, &mut city, ck, cc);
    let (bytes, rounds) = pump(&mut county, &mut city, q);
    let ours_ms = began.elapsed().as_secs_f64() * 1000.0;
    county.disconnect(&uc);
    city.disconnect(&uk);
    let (ck, cc) = (saved_k.clone(), saved_c.clone());
    let began = Instant::now();
    let q = connect(&mut county, &mut city, ck, cc);
    pump(&mut county, &mut city, q);
    let again_ms = began.elapsed().as_secs_f64() * 1000.0;
    let ours_bytes = (bytes + hello(&uk) + hello(&uc)) as f64;
    let ours_rounds = (rounds + 1) as f64;

    // Baseline: per-document automerge sync from the saved states, as automerge-repo does
    // on a reconnect: every document exchanges sync messages until both sides are quiet.
    let (mut base_bytes, mut base_rounds) = (0usize, 0usize);
    let mut base_time = Duration::ZERO;
    for e in county.docs() {
        let other = city.get(&e.meta.id).context("city lacks a document")?;
        let (mut a, mut b) = (
            e.doc().context("engine without a source evicted")?.clone(),
            other
                .doc()
                .context("engine without a source evicted")?
                .clone(),
        );
        let mut sa = saved_k
            .get(&e.meta.id)
            .and_then(|s| sync::State::decode(s).ok())
            .unwrap_or_default();
        let mut sb = saved_c
            .get(&e.meta.id)
            .and_then(|s| sync::State::decode(s).ok())
            .unwrap_or_default();
        let mut r = 0;
        let began = Instant::now();
        loop {
            let m1 = a.generate_sync_message(&mut sa);
            let m2 = b.generate_sync_message(&mut sb);
            if m1.is_none() && m2.is_none() {
                break;
            }
            r += 1;
            if let Some(m) = m1 {
                let enc = m.encode();
                base_bytes += enc.len() + e.meta.id.to_string().len();
                b.receive_sync_message(&mut sb, sync::Message::decode(&enc)?)?;
            }
            if let Some(m) = m2 {
                let enc = m.encode();
                base_bytes += enc.len() + e.meta.id.to_string().len();
                a.receive_sync_message(&mut sa, sync::Message::decode(&enc)?)?;
            }
        }
        base_time += began.elapsed();
        base_rounds = base_rounds.max(r);
    }
    let base_ms = base_time.as_secs_f64() * 1000.0;
    emit("idle-reconnect", "cpu_ms", ours_ms, "ms", Some(base_ms));
    emit(
        "idle-reconnect",
        "cpu_ms_again",
        again_ms,
        "ms",
        Some(base_ms),
    );
    emit(
        "idle-reconnect",
        "bytes",
        ours_bytes,
        "bytes",
        Some(base_bytes as f64),
    );
    emit(
        "idle-reconnect",
        "round_trips",
        ours_rounds,
        "round_trips",
        Some((base_rounds + 1) as f64),
    );
    emit(
        "idle-reconnect",
        "documents",
        county.docs().count() as f64,
        "documents",
        None,
    );
    Ok(())
}

// ---------------------------------------------------------------- catch-up (ours)

const HOUSEHOLDS: usize = 1_000;
const EDITS: usize = 4_000;

struct CatchUp {
    seconds: f64,
    /// From the link's hello to the end (the transfer alone).
    transfer_seconds: f64,
    udp_bytes: u64,
    app_bytes: u64,
    raw_json: usize,
}

/// One unit per level: city > county > township > village.
fn chain() -> Vec<UnitSpec> {
    ["c01", "c01/k01", "c01/k01/t01", "c01/k01/t01/v01"]
        .into_iter()
        .map(|u| UnitSpec {
            id: unit(u),
            name: format!("Unit {u}"),
        })
        .collect()
}

/// The chain city > county > township > village on loopback, stores in `dir`, every node's
/// links set as `link`.
async fn start_chain(
    dir: &std::path::Path,
    link: grassroots_node::LinkConfig,
    via: Option<grassroots::federation::Via>,
) -> anyhow::Result<Federation> {
    start_chain_as(dir, link, None, via).await
}

/// [`start_chain`] with the nodes above the village set as `upper`, when given.
async fn start_chain_as(
    dir: &std::path::Path,
    link: grassroots_node::LinkConfig,
    upper: Option<grassroots_node::LinkConfig>,
    via: Option<grassroots::federation::Via>,
) -> anyhow::Result<Federation> {
    let links = upper
        .map(|upper| {
            chain()
                .into_iter()
                .filter(|u| u.id.level() != grassroots_schema::Level::Village)
                .map(|u| (u.id, upper.clone()))
                .collect()
        })
        .unwrap_or_default();
    Federation::start(
        chain(),
        FederationOptions {
            dir: dir.to_owned(),
            deployment: "bench.grassroots".into(),
            link,
            links,
            via,
        },
    )
    .await
}

/// A chain city > county > township > village with the village behind a relay, its links set
/// as `link` (and those of the nodes above it as `upper`, when given). The village
/// node is stopped while its own store takes 5,000 changes (one after another: 5,000
/// automerge changes, as samod's); then, with `impair` applied to the relay, the clock starts, the village
/// node starts and dials, and the township is polled until it holds the final records.
async fn catch_up_ours(
    link: grassroots_node::LinkConfig,
    upper: Option<grassroots_node::LinkConfig>,
    impair: impl Fn(&Relay),
) -> anyhow::Result<CatchUp> {
    let dir = tempfile::tempdir()?;
    let village = unit("c01/k01/t01/v01");
    let (via, relay_slot) = behind_relay("c01/k01/t01/v01");
    // Production timing throughout, its first redial after 250 ms included.
    let copying = upper.as_ref().is_some_and(|u| u.handshake_copies > 1);
    let mut fed = start_chain_as(dir.path(), link, upper, Some(via)).await?;
    // The village's first link up before it stops and when its township copies, the token
    // that link gave it kept in its folder, which the restart below presents.
    let tokens = dir.path().join("c01_k01_t01_v01").join("quic-tokens");
    let vstore = fed.node(&village)?.node.store();
    let waited = Instant::now();
    while !(vstore.status().await?.links.iter().any(|l| l.connected)
        && (!copying || tokens.exists()))
    {
        if waited.elapsed() > Duration::from_secs(60) {
            bail!("the village's first link (and its token) not there in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fed.stop(&village).await?;

    // Offline: the village's own store takes the 5,000 changes.
    let (store, reader, thread) = grassroots_node::store::open(
        &dir.path().join("c01_k01_t01_v01").join("store.redb"),
        village.clone(),
    )?;
    // One write after another, as one clerk makes them: 5,000 automerge changes, as
    // samod's document below has (writes sent together would share a change each batch).
    let mut ids = Vec::with_capacity(HOUSEHOLDS);
    for i in 0..HOUSEHOLDS {
        ids.push(store.create_member(village.clone(), household(i)).await?.id);
    }
    let mut last: Option<Member> = None;
    for i in 0..EDITS {
        let patch = MemberPatch {
            name: Some(format!("Household head {} (rev {i})", i % HOUSEHOLDS)),
            ..Default::default()
        };
        last = Some(
            store
                .update_member(ids[i % HOUSEHOLDS].clone(), patch)
                .await?,
        );
    }
    let last = last.context("no edits")?;
    let records = reader.members(&village, false, None, HOUSEHOLDS + 1)?;
    let raw_json =
        serde_json::to_vec(&records.items.iter().map(|(_, m)| m).collect::<Vec<_>>())?.len();
    thread.shutdown().await;
    drop((store, reader));

    let township = fed.node(&unit("c01/k01/t01"))?.node.reader();
    let relay = relay_of(&relay_slot)?;
    impair(&relay);
    let before = relay.forwarded().1;
    let start = Instant::now();
    fed.restart(&village).await?;
    let started = start.elapsed().as_secs_f64();
    let vstore = fed.node(&village)?.node.store();
    let mut linked = None;
    loop {
        if linked.is_none() && vstore.status().await?.links.iter().any(|l| l.connected) {
            linked = Some(start.elapsed().as_secs_f64());
        }
        let done = township.members(&village, false, None, 0)?.total == HOUSEHOLDS
            && township
                .member(&last.id)?
                .is_some_and(|m| m.name == last.name);
        if done {
            break;
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("catch-up did not finish in 300 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let transfer_seconds = seconds - linked.unwrap_or(0.0);
    eprintln!(
        "phases: node started {started:.3}s, link up {:.3}s, done {seconds:.3}s",
        linked.unwrap_or(f64::NAN)
    );
    let udp_bytes = relay.forwarded().1 - before;
    let app_bytes = vstore
        .status()
        .await?
        .links
        .iter()
        .map(|l| l.bytes_out)
        .sum::<u64>();
    fed.shutdown().await;
    Ok(CatchUp {
        seconds,
        transfer_seconds,
        udp_bytes,
        app_bytes,
        raw_json,
    })
}

// ---------------------------------------------------------------- catch-up (samod)

struct CountingDialer {
    acceptor: samod::AcceptorHandle,
    bytes: Arc<AtomicU64>,
}

impl samod::Dialer for CountingDialer {
    type Error = std::convert::Infallible;
    fn url(&self) -> samod::Url {
        samod::Url::parse("channel://village-to-township").expect("url")
    }
    fn connect(
        &self,
    ) -> futures::future::BoxFuture<'static, Result<samod::Transport, samod::DialError<Self::Error>>>
    {
        use futures::StreamExt;
        let (acceptor, up, down) = (
            self.acceptor.clone(),
            self.bytes.clone(),
            self.bytes.clone(),
        );
        Box::pin(async move {
            let (a_tx, b_rx) = futures::channel::mpsc::unbounded::<Vec<u8>>();
            let (b_tx, a_rx) = futures::channel::mpsc::unbounded::<Vec<u8>>();
            let b_rx = b_rx.map(move |m| {
                up.fetch_add(m.len() as u64, Relaxed);
                Ok::<_, std::convert::Infallible>(m)
            });
            let a_rx = a_rx.map(move |m| {
                down.fetch_add(m.len() as u64, Relaxed);
                Ok::<_, std::convert::Infallible>(m)
            });
            acceptor
                .accept(samod::Transport::new(b_rx, b_tx))
                .map_err(samod::DialError::transient)?;
            Ok(samod::Transport::new(a_rx, a_tx))
        })
    }
}

/// What samod's township storage did, and when it was on disk.
enum Stored {
    Put(samod::storage::StorageKey, Vec<u8>),
    Delete(samod::storage::StorageKey),
}

/// samod's township storage made durable as ours is (samod's own filesystem storage writes
/// without a sync): each put written, flushed with its folder, and logged with the moment
/// it was durable, so the clock can stop when the disk, not memory, holds every change.
#[derive(Clone)]
struct DurableStorage {
    dir: std::path::PathBuf,
    log: Arc<std::sync::Mutex<Vec<(Instant, Stored)>>>,
}

impl DurableStorage {
    fn path(&self, key: &samod::storage::StorageKey) -> std::path::PathBuf {
        let mut p = self.dir.clone();
        for c in key {
            p.push(c);
        }
        p
    }

    fn note(&self, what: Stored) {
        if let Ok(mut log) = self.log.lock() {
            log.push((Instant::now(), what));
        }
    }

    /// When the stored chunks first held every change of `want` (heads), replaying the log.
    fn durable_at(&self, want: &[automerge::ChangeHash]) -> Option<Instant> {
        let log = self.log.lock().ok()?;
        let want: std::collections::BTreeSet<_> = want.iter().collect();
        let mut held: HashMap<samod::storage::StorageKey, Vec<u8>> = HashMap::new();
        for (at, what) in log.iter() {
            match what {
                Stored::Put(k, v) => {
                    held.insert(k.clone(), v.clone());
                }
                Stored::Delete(k) => {
                    held.remove(k);
                }
            }
            let chunks: Vec<u8> = held
                .iter()
                .filter(|(k, _)| {
                    k.into_iter()
                        .next()
                        .is_some_and(|c| c != "storage-adapter-id")
                })
                .flat_map(|(_, v)| v.iter().copied())
                .collect();
            if let Ok(d) = automerge::Automerge::load(&chunks)
                && d.get_heads()
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    == want
            {
                return Some(*at);
            }
        }
        None
    }
}

impl samod::storage::Storage for DurableStorage {
    fn load(
        &self,
        key: samod::storage::StorageKey,
    ) -> impl std::future::Future<Output = Option<Vec<u8>>> + Send {
        let path = self.path(&key);
        async move { tokio::fs::read(path).await.ok() }
    }

    fn load_range(
        &self,
        prefix: samod::storage::StorageKey,
    ) -> impl std::future::Future<Output = HashMap<samod::storage::StorageKey, Vec<u8>>> + Send
    {
        let root = self.path(&prefix);
        async move {
            let mut out = HashMap::new();
            let mut todo = vec![(root, prefix)];
            while let Some((dir, key)) = todo.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    let Ok(k) = key.with_component(name) else {
                        continue;
                    };
                    if e.path().is_dir() {
                        todo.push((e.path(), k));
                    } else if let Ok(v) = std::fs::read(e.path()) {
                        out.insert(k, v);
                    }
                }
            }
            out
        }
    }

    fn put(
        &self,
        key: samod::storage::StorageKey,
        data: Vec<u8>,
    ) -> impl std::future::Future<Output = ()> + Send {
        let (path, this) = (self.path(&key), self.clone());
        async move {
            let bytes = data.clone();
            let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                use std::io::Write as _;
                let dir = path.parent().unwrap_or(std::path::Path::new("."));
                std::fs::create_dir_all(dir)?;
                let mut f = std::fs::File::create(&path)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::File::open(dir)?.sync_all()
            })
            .await;
            if matches!(written, Ok(Ok(()))) {
                this.note(Stored::Put(key, data));
            }
        }
    }

    fn delete(
        &self,
        key: samod::storage::StorageKey,
    ) -> impl std::future::Future<Output = ()> + Send {
        let (path, this) = (self.path(&key), self.clone());
        async move {
            let _ = tokio::fs::remove_file(path).await;
            this.note(Stored::Delete(key));
        }
    }
}

/// samod 0.16 (automerge-repo in Rust) doing the same catch-up: the village's document with
/// the same 5,000 changes in filesystem storage; the village repo is stopped, and the clock
/// covers what ours does: the village starting from its storage, connecting (in-memory
/// transport, no TLS) and the township holding every change durably (its storage flushed,
/// as ours commits: [`DurableStorage`]).
async fn catch_up_samod() -> anyhow::Result<(f64, u64)> {
    use futures::StreamExt;
    let dir = tempfile::tempdir()?;
    let village_store = samod::storage::TokioFilesystemStorage::new(dir.path().join("village"));
    let township_store = DurableStorage {
        dir: dir.path().join("township"),
        log: Arc::default(),
    };
    let township_repo = samod::Repo::build_tokio()
        .with_storage(township_store.clone())
        .load()
        .await;
    // The same content: one change per record, one per edit. Records are made field by
    // field, as an automerge-repo application would, not with our store's batched
    // insertion (a baseline should not inherit our optimisations, nor their side effects).
    let mut d = doc::empty(&doc::actor_for(&unit("c01/k01/t01/v01"), [1; 8]));
    for i in 0..HOUSEHOLDS {
        use automerge::transaction::Transactable as _;
        let m = household(i);
        let mut tx = d.transaction();
        let obj = tx.put_object(
            automerge::ROOT,
            RecordId::from_u64(i as u64).to_string(),
            automerge::ObjType::Map,
        )?;
        tx.put(&obj, "name", m.name.as_str())?;
        tx.put(&obj, "birthYear", m.birth_year)?;
        tx.put(&obj, "gender", m.gender.as_str())?;
        tx.put(&obj, "education", m.education.as_str())?;
        tx.put(&obj, "joinedOn", m.joined_on.as_str())?;
        tx.put(&obj, "status", m.status.as_str())?;
        tx.commit();
    }
    for i in 0..EDITS {
        let patch = MemberPatch {
            name: Some(format!("Household head {} (rev {i})", i % HOUSEHOLDS)),
            ..Default::default()
        };
        doc::update_member(&mut d, RecordId::from_u64((i % HOUSEHOLDS) as u64), &patch)?;
    }
    let want = d.get_heads();
    let doc_id = {
        let offline = samod::Repo::build_tokio()
            .with_storage(village_store.clone())
            .load()
            .await;
        let handle = offline
            .create(d)
            .await
            .map_err(|_| anyhow::anyhow!("samod stopped"))?;
        let id = handle.document_id().clone();
        offline.stop().await;
        id
    };
    let bytes = Arc::new(AtomicU64::new(0));
    let acceptor = township_repo
        .make_acceptor(samod::Url::parse("channel://township")?)
        .map_err(|_| anyhow::anyhow!("samod stopped"))?;
    let start = Instant::now();
    let village_repo = samod::Repo::build_tokio()
        .with_storage(village_store)
        .load()
        .await;
    let _open = village_repo
        .find(doc_id.clone())
        .await
        .map_err(|_| anyhow::anyhow!("samod stopped"))?
        .context("village lost its document")?;
    let dialer = village_repo
        .dial(
            samod::BackoffConfig::default(),
            Arc::new(CountingDialer {
                acceptor,
                bytes: bytes.clone(),
            }),
        )
        .map_err(|_| anyhow::anyhow!("samod stopped"))?;
    dialer
        .established()
        .await
        .map_err(|e| anyhow::anyhow!("samod dial: {e:?}"))?;
    let found = township_repo
        .find(doc_id)
        .await
        .map_err(|_| anyhow::anyhow!("samod stopped"))?
        .context("township did not find the document")?;
    let mut changes = found.changes();
    while found.with_document(|d| d.get_heads()) != want {
        if tokio::time::timeout(Duration::from_secs(60), changes.next())
            .await
            .is_err()
        {
            bail!("samod catch-up stalled");
        }
    }
    let in_memory = Instant::now();
    // Then until its storage holds every change on disk: puts settle (none for 500 ms),
    // and the log says when the stored chunks first held them all.
    let mut seen = usize::MAX;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(500) {
        let n = township_store.log.lock().map_or(0, |l| l.len());
        if n != seen {
            (seen, quiet_since) = (n, Instant::now());
        }
        if in_memory.elapsed() > Duration::from_secs(60) {
            bail!("samod's storage never settled");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let durable = township_store
        .durable_at(&want)
        .context("samod's township storage never held every change")?;
    let seconds = durable.max(in_memory).duration_since(start).as_secs_f64();
    dialer.close();
    village_repo.stop().await;
    township_repo.stop().await;
    Ok((seconds, bytes.load(Relaxed)))
}

async fn catch_up() -> anyhow::Result<()> {
    let ours = catch_up_ours(grassroots_node::LinkConfig::default(), None, |_| {}).await?;
    let (samod_s, samod_bytes) = catch_up_samod().await?;
    emit("catch-up", "time", ours.seconds, "s", Some(samod_s));
    emit(
        "catch-up",
        "wire_over_raw_json",
        ours.udp_bytes as f64 / ours.raw_json as f64,
        "ratio",
        Some(samod_bytes as f64 / ours.raw_json as f64),
    );
    emit("catch-up", "raw_json", ours.raw_json as f64, "bytes", None);
    emit(
        "catch-up",
        "wire_bytes",
        ours.udp_bytes as f64,
        "bytes",
        Some(samod_bytes as f64),
    );
    Ok(())
}

async fn lossy_link() -> anyhow::Result<()> {
    const RATE: u64 = 256_000;
    const LOSS: f64 = 0.30;
    let impair = |r: &Relay| {
        r.set_rate(RATE);
        r.set_loss(LOSS);
        r.set_delay(Duration::from_millis(20));
    };
    let ideal = RATE as f64 / 8.0 * (1.0 - LOSS);
    let run = catch_up_ours(grassroots_node::LinkConfig::default(), None, impair).await?;
    let goodput = run.app_bytes as f64 / run.seconds;
    emit(
        "lossy-link",
        "goodput_over_ideal",
        goodput / ideal,
        "ratio",
        None,
    );
    // The same over the transfer alone (from the link's hello): separates the QUIC handshake,
    // whose lost packets cost exponentially backed-off timeouts, from the data transfer.
    let transfer = |r: &CatchUp| r.app_bytes as f64 / r.transfer_seconds / ideal;
    emit(
        "lossy-link",
        "transfer_goodput_over_ideal",
        transfer(&run),
        "ratio",
        None,
    );
    emit("lossy-link", "goodput", goodput, "bytes/s", Some(ideal));
    emit("lossy-link", "time", run.seconds, "s", None);
    emit(
        "lossy-link",
        "app_bytes",
        run.app_bytes as f64,
        "bytes",
        None,
    );
    // The same catch-up with every node set as the village example (`deploy/village`): the
    // settings a deployment on such a line uses; then as deployed: the village as its
    // example, the nodes above it as the township's, which copies its handshake answers to
    // the restarted village presenting its last link's token.
    for (suffix, village, upper) in [
        ("village_example", village_example(), None),
        ("examples", village_example(), Some(township_example())),
    ] {
        let other = catch_up_ours(village, upper, impair).await?;
        emit(
            "lossy-link",
            &format!("goodput_over_ideal_{suffix}"),
            other.app_bytes as f64 / other.seconds / ideal,
            "ratio",
            Some(goodput / ideal),
        );
        emit(
            "lossy-link",
            &format!("transfer_goodput_over_ideal_{suffix}"),
            transfer(&other),
            "ratio",
            Some(transfer(&run)),
        );
    }
    Ok(())
}

async fn lossy_dial() -> anyhow::Result<()> {
    let defaults = grassroots_node::LinkConfig::default();
    let baseline = lossy_dials("", &defaults, None, None).await?;
    // The same with both ends guessing a round trip near this line's (the relay's 40 ms of
    // delay plus a handshake datagram's 38 ms at 256 kbit/s each way) instead of quinn's
    // 333 ms: every handshake timer follows from the guess.
    let guess = grassroots_node::LinkConfig {
        initial_rtt: Duration::from_millis(150),
        ..Default::default()
    };
    lossy_dials("_initial_rtt_150ms", &guess, None, Some(&baseline)).await?;
    // And with the township sending its answers twice to a village whose address a token
    // from its last link proved (the redials; not a fresh endpoint's), as in the examples:
    // the village copies nothing of its own.
    let copies = grassroots_node::LinkConfig {
        handshake_copies: 2,
        ..guess.clone()
    };
    let suffix = "_initial_rtt_150ms_township_copies_2";
    lossy_dials(suffix, &copies, Some(&guess), Some(&baseline)).await?;
    Ok(())
}

/// A chain with `link`'s settings in `dir`, its village stopped so that the bench dials as
/// it, through a relay to the township at 30% loss, 256 kbit/s and 20 ms of delay each way:
/// the federation, the village's identity and the relay.
async fn village_to_dial_as(
    dir: &std::path::Path,
    link: grassroots_node::LinkConfig,
) -> anyhow::Result<(Federation, grassroots_node::Identity, Relay)> {
    let mut fed = start_chain(dir, link, None).await?;
    fed.stop(&unit("c01/k01/t01/v01")).await?;
    let identity = grassroots_node::Identity::load(&dir.join("c01_k01_t01_v01").join("pki"))?;
    let relay = Relay::start(fed.node(&unit("c01/k01/t01"))?.node.quic_addr())?;
    relay.set_rate(256_000);
    relay.set_loss(0.30);
    relay.set_delay(Duration::from_millis(20));
    Ok((fed, identity, relay))
}

/// A running node's redials at 30% loss and 256 kbit/s, with and without early data (0-RTT),
/// 60 of each, alternately in blocks of ten so that both meet the same stretch of the relay's
/// loss pattern: link-up p50, p90 and max, the bytes per dial (each link held 1 s, as in
/// `lossy-dial`) and the share of links whose hello went early; then 20 of each with no loss
/// and 100 ms of delay each way (`lossless_*`), where the round trip saved shows alone.
async fn lossy_redial() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let township = unit("c01/k01/t01");
    let (fed, identity, relay) =
        village_to_dial_as(dir.path(), grassroots_node::LinkConfig::default()).await?;
    for (prefix, blocks) in [("", 6u32), ("lossless_", 2)] {
        if !prefix.is_empty() {
            relay.set_loss(0.0);
            relay.set_delay(Duration::from_millis(100));
        }
        let mut got: BTreeMap<bool, (Vec<f64>, f64, usize)> = BTreeMap::new();
        for _ in 0..blocks {
            for zero_rtt in [true, false] {
                let cfg = grassroots_node::LinkConfig {
                    zero_rtt,
                    ..Default::default()
                };
                let how = Dials {
                    fresh: false,
                    count: 10,
                    hold: Duration::from_secs(1),
                    tokens: None,
                };
                let (times, _, bytes, early) =
                    dials(&identity, &township, &relay, &cfg, how).await?;
                let entry = got.entry(zero_rtt).or_default();
                entry.0.extend(times);
                entry.1 += bytes / f64::from(blocks);
                entry.2 += early;
            }
        }
        let mut base = HashMap::new();
        for (zero_rtt, (mut times, bytes, early)) in got {
            let share = early as f64 / times.len() as f64;
            times.sort_by(f64::total_cmp);
            let name = if zero_rtt {
                "redial"
            } else {
                "redial_without_0rtt"
            };
            for (what, v, unit) in [
                ("p50", percentile(&times, 0.5), "s"),
                ("p90", percentile(&times, 0.9), "s"),
                ("max", percentile(&times, 1.0), "s"),
                ("bytes_per_dial", bytes, "bytes"),
                ("early_share", share, "ratio"),
            ] {
                // Printed after the baseline (`false` sorts first), with it beside.
                let b = base.get(what).copied().filter(|_| what != "early_share");
                emit(
                    "lossy-redial",
                    &format!("{prefix}{name}_{what}"),
                    v,
                    unit,
                    b,
                );
                if !zero_rtt {
                    base.insert(what, v);
                }
            }
        }
    }
    fed.shutdown().await;
    Ok(())
}

/// Dial figures of one link configuration, named with `suffix`, at 30% loss and 256 kbit/s:
/// 30 dials from a fresh endpoint each (a new node: no TLS session to resume, no address
/// token), where the township copies its answers 30 more from a fresh endpoint with the token
/// its last link was given (a restarted node, which keeps its tokens), then 30 from one
/// endpoint (a running node whose link comes back: TLS 1.3 resumption, no certificates in the
/// handshake). With no `baseline`, also what path MTU discovery costs a
/// link that stays up. The village dials with `village`'s settings if given, `link`'s (every
/// other node's) if not. Returns each figure by name, the baseline of a later call.
async fn lossy_dials(
    suffix: &str,
    link: &grassroots_node::LinkConfig,
    village: Option<&grassroots_node::LinkConfig>,
    baseline: Option<&HashMap<String, f64>>,
) -> anyhow::Result<HashMap<String, f64>> {
    let dial = village.unwrap_or(link);
    let dir = tempfile::tempdir()?;
    let township = unit("c01/k01/t01");
    let (fed, identity, relay) = village_to_dial_as(dir.path(), link.clone()).await?;
    let mut figures = HashMap::new();
    let tokens = dir.path().join("village-quic-tokens");
    // A restarted node presents the token its last link was given (kept in its folder);
    // only a parent that copies its answers makes anything of it.
    let restart = (link.handshake_copies > 1).then_some(("restart", true, Some(tokens), true));
    // A running node's redial resumes its TLS session and sends its hello early (0-RTT);
    // beside it the same without early data, in the same run.
    for (what, fresh, tokens, zero_rtt) in [("link_up", true, None, true)]
        .into_iter()
        .chain(restart)
        .chain([
            ("redial", false, None, true),
            ("redial_without_0rtt", false, None, false),
        ])
    {
        // A redial's link held a moment, as a running node's is held for long: the parent's
        // session tickets for the next redial come after its handshake (not timed).
        let plain = Dials {
            fresh,
            count: 30,
            hold: if fresh {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            },
            tokens,
        };
        let cfg = grassroots_node::LinkConfig {
            zero_rtt,
            ..dial.clone()
        };
        let (times, failed, bytes, _) = dials(&identity, &township, &relay, &cfg, plain).await?;
        let metric = |name: &str| format!("{what}{suffix}_{name}");
        let base = |name: &str| baseline.and_then(|b| b.get(&format!("{what}_{name}")).copied());
        for (name, p) in [("p50", 0.5), ("p90", 0.9), ("max", 1.0)] {
            let v = percentile(&times, p);
            emit("lossy-dial", &metric(name), v, "s", base(name));
            figures.insert(metric(name), v);
        }
        emit(
            "lossy-dial",
            &metric("failed_attempts"),
            f64::from(failed),
            "count",
            None,
        );
        emit(
            "lossy-dial",
            &metric("bytes_per_dial"),
            bytes,
            "bytes",
            base("bytes_per_dial"),
        );
        figures.insert(metric("bytes_per_dial"), bytes);
    }
    // What a dial costs with nothing lost: five fresh dials, loss off (each handshake
    // datagram once, or as many times as the setting copies it).
    relay.set_loss(0.0);
    let lossless = Dials {
        fresh: true,
        count: 5,
        hold: Duration::ZERO,
        tokens: None,
    };
    let (_, _, bytes, _) = dials(&identity, &township, &relay, dial, lossless).await?;
    let metric = format!("lossless{suffix}_bytes_per_dial");
    let base = baseline.and_then(|b| b.get("lossless_bytes_per_dial").copied());
    emit("lossy-dial", &metric, bytes, "bytes", base);
    figures.insert(metric, bytes);
    if baseline.is_none() {
        // What path MTU discovery costs a link that stays up: loss off, five fresh dials
        // each held open 3 s (quinn's search runs right after the handshake), with discovery
        // on and off at the village (off, it also tells the township not to probe).
        for (metric, mtu_discovery) in [("mtu_on", true), ("mtu_off", false)] {
            let cfg = grassroots_node::LinkConfig {
                mtu_discovery,
                ..link.clone()
            };
            let held = Dials {
                fresh: true,
                count: 5,
                hold: Duration::from_secs(3),
                tokens: None,
            };
            let (_, _, bytes, _) = dials(&identity, &township, &relay, &cfg, held).await?;
            emit(
                "lossy-dial",
                &format!("{metric}_bytes_per_link"),
                bytes,
                "bytes",
                None,
            );
        }
    }
    fed.shutdown().await;
    Ok(figures)
}

/// How [`dials`] dials: from a fresh endpoint each time or from one that has linked once,
/// how many times, and how long each link is held open once up.
struct Dials {
    fresh: bool,
    count: usize,
    hold: Duration,
    /// The file a fresh endpoint keeps its address tokens in, as a node does in its data
    /// folder (a restarted node), or none (a node whose folder is new).
    tokens: Option<std::path::PathBuf>,
}

/// Dials of the village through `relay` with `cfg`, each until the township's hello answers (a
/// failed attempt is redialled at once and its time counted): the sorted times, the failed
/// attempts, the mean bytes per dial the relay passed on (both ways; what it dropped is not
/// counted), and how many links came up with an early hello (0-RTT).
async fn dials(
    identity: &grassroots_node::Identity,
    township: &grassroots_schema::UnitId,
    relay: &Relay,
    cfg: &grassroots_node::LinkConfig,
    how: Dials,
) -> anyhow::Result<(Vec<f64>, u32, f64, usize)> {
    let (mut times, mut failed, mut early) = (Vec::with_capacity(how.count), 0, 0);
    let any: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let endpoint = || grassroots_node::net::endpoint(identity, any, cfg, how.tokens.as_deref());
    let mut kept = None;
    if !how.fresh || how.tokens.is_some() {
        // One link first, so that the endpoint holds a session to resume, or the file the
        // token of a link; held as the timed links are (their sessions).
        let ep = endpoint()?;
        let (link, _) = dial_until_up(&ep, identity, township, relay, cfg).await?;
        tokio::time::sleep(how.hold).await;
        link.conn.close(0u32.into(), b"bench");
        if how.fresh {
            ep.close(0u32.into(), b"bench");
        } else {
            kept = Some(ep);
        }
    }
    let before = relay.forwarded();
    for _ in 0..how.count {
        let endpoint = match &kept {
            Some(ep) => ep.clone(),
            None => endpoint()?,
        };
        let start = Instant::now();
        let (link, failures) = dial_until_up(&endpoint, identity, township, relay, cfg).await?;
        failed += failures;
        times.push(start.elapsed().as_secs_f64());
        early += usize::from(link.early);
        tokio::time::sleep(how.hold).await;
        link.conn.close(0u32.into(), b"bench");
        if kept.is_none() {
            endpoint.close(0u32.into(), b"bench");
        }
    }
    let after = relay.forwarded();
    times.sort_by(f64::total_cmp);
    let bytes = (after.1 - before.1) as f64 / how.count as f64;
    Ok((times, failed, bytes, early))
}

/// Dial the township through `relay` until a link is up, at once again after a failed
/// attempt (the parent gives up a handshake after `handshake_timeout` too, which a run of
/// losses can outlast), for at most 120 s: the link and the failed attempts.
async fn dial_until_up(
    endpoint: &quinn::Endpoint,
    identity: &grassroots_node::Identity,
    township: &grassroots_schema::UnitId,
    relay: &Relay,
    cfg: &grassroots_node::LinkConfig,
) -> anyhow::Result<(grassroots_node::net::Link, u32)> {
    let (start, mut failed) = (Instant::now(), 0);
    loop {
        match grassroots_node::net::connect_parent(
            endpoint,
            identity,
            township,
            relay.addr(),
            cfg.handshake_timeout,
        )
        .await
        {
            Ok(link) => return Ok((link, failed)),
            Err(e) if start.elapsed() < Duration::from_secs(120) => {
                eprintln!("dial failed after {:?}: {e}", start.elapsed());
                failed += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The link settings of the village example (`deploy/village`, whose test checks the same):
/// a keep-alive of 25 s, an idle timeout of 60 s, no path MTU discovery, an initial round
/// trip of 150 ms.
fn village_example() -> grassroots_node::LinkConfig {
    grassroots_node::LinkConfig {
        keep_alive: Duration::from_secs(25),
        idle_timeout: Duration::from_secs(60),
        mtu_discovery: false,
        initial_rtt: Duration::from_millis(150),
        ..Default::default()
    }
}

/// The link settings of the township example (`deploy/township/node.toml`).
fn township_example() -> grassroots_node::LinkConfig {
    grassroots_node::LinkConfig {
        idle_timeout: Duration::from_secs(60),
        initial_rtt: Duration::from_millis(150),
        handshake_copies: 2,
        ..Default::default()
    }
}

/// An idle, connected link: what the village's link to its township costs with nothing to
/// sync (keep-alives and their acknowledgements), through the relay over six keep-alive
/// intervals, per hour, with IPv4 and UDP headers (28 bytes a datagram) added to what the
/// relay carries: with the default link settings and with the village example's
/// ([`village_example`]), side by side.
async fn idle_link() -> anyhow::Result<()> {
    let runs = [
        ("default", grassroots_node::LinkConfig::default()),
        ("village_example", village_example()),
    ]
    .map(|(name, link)| async move { (name, idle_link_run(link).await) });
    for (name, run) in futures::future::join_all(runs).await {
        let (bytes, datagrams) = run?;
        emit(
            "idle-link",
            &format!("bytes_per_hour_{name}"),
            bytes,
            "bytes",
            None,
        );
        emit(
            "idle-link",
            &format!("datagrams_per_hour_{name}"),
            datagrams,
            "datagrams",
            None,
        );
    }
    Ok(())
}

/// Bytes (with IPv4 and UDP headers) and datagrams per hour on an idle village link.
async fn idle_link_run(link: grassroots_node::LinkConfig) -> anyhow::Result<(f64, f64)> {
    // Six intervals: a window holds five or six pings (each comes a little after its
    // interval), so the figure is at most a sixth low.
    let idle = link.keep_alive * 6;
    let dir = tempfile::tempdir()?;
    let village = unit("c01/k01/t01/v01");
    let (via, relay_slot) = behind_relay("c01/k01/t01/v01");
    let fed = start_chain(dir.path(), link, Some(via)).await?;
    link_up(&fed, &village).await?;
    // Let the first exchange (profiles, digests) finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let relay = relay_of(&relay_slot)?;
    let before = relay.forwarded();
    tokio::time::sleep(idle).await;
    let after = relay.forwarded();
    fed.shutdown().await;
    let per_hour = 3600.0 / idle.as_secs_f64();
    let datagrams = (after.0 - before.0) as f64;
    let bytes = (after.1 - before.1) as f64 + 28.0 * datagrams;
    Ok((bytes * per_hour, datagrams * per_hour))
}

// ---------------------------------------------------------------- store (issue 4)

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// fsync latency of this disk now, in ms: p50 and p99 of 200 small durable writes.
fn fsync_latency(dir: &std::path::Path) -> anyhow::Result<(f64, f64)> {
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;
    // What a redb commit does: pages overwritten in a file already allocated, then
    // `sync_data` (fdatasync), not an append and a full `sync_all`, which costs more.
    const LEN: u64 = 16 << 20;
    let mut f = std::fs::File::create(dir.join("fsync-probe"))?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(LEN >> 20) {
        f.write_all(&zeros)?;
    }
    f.sync_all()?;
    let mut ms = Vec::new();
    for i in 0..200u64 {
        let at = (i * 7 * 4096) % LEN;
        f.write_all_at(&(i as u32).to_le_bytes().repeat(1024), at)?;
        let t = Instant::now();
        f.sync_data()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok((percentile(&ms, 0.5), percentile(&ms, 0.99)))
}

/// Durable changes per second with `writers` concurrent writers on one store, and their
/// acknowledgement latencies (ms, sorted).
async fn ingest_run(writers: usize, per_writer: usize) -> anyhow::Result<(f64, Vec<f64>)> {
    let dir = tempfile::tempdir()?;
    let unit = unit("c01/k01/t01/v01");
    let (store, _reader, thread) =
        grassroots_node::store::open(&dir.path().join("s.redb"), unit.clone())?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, unit) = (store.clone(), unit.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                let t = Instant::now();
                store
                    .create_member(unit.clone(), household(w * per_writer + i))
                    .await?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let rate = (writers * per_writer) as f64 / start.elapsed().as_secs_f64();
    thread.shutdown().await;
    lat.sort_by(f64::total_cmp);
    Ok((rate, lat))
}

async fn ingest() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (p50, p99) = fsync_latency(dir.path())?;
    let (r1, _) = ingest_run(1, 300).await?;
    let (r8, _) = ingest_run(8, 250).await?;
    let (r64, lat64) = ingest_run(64, 100).await?;
    emit("ingest", "fsync_p50_ms", p50, "ms", None);
    emit("ingest", "fsync_p99_ms", p99, "ms", None);
    emit("ingest", "changes_per_s_1", r1, "changes/s", None);
    emit("ingest", "changes_per_s_8", r8, "changes/s", Some(r1));
    emit("ingest", "changes_per_s_64", r64, "changes/s", Some(r1));
    emit(
        "ingest",
        "ack_p50_ms_64",
        percentile(&lat64, 0.5),
        "ms",
        None,
    );
    emit(
        "ingest",
        "ack_p99_ms_64",
        percentile(&lat64, 0.99),
        "ms",
        None,
    );
    emit(
        "ingest",
        "ack_max_ms_64",
        percentile(&lat64, 1.0),
        "ms",
        None,
    );
    emit(
        "ingest",
        "ack_p99_over_fsync_p99",
        percentile(&lat64, 0.99) / p99,
        "ratio",
        None,
    );
    Ok(())
}

/// A write at a village through its GraphQL, until the city's GraphQL shows it: 3 hops,
/// each storing durably before it forwards.
async fn propagation() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (fsync_p50, fsync_p99) = fsync_latency(dir.path())?;
    let fed = start_chain(dir.path(), grassroots_node::LinkConfig::default(), None).await?;
    let (village, city) = (unit("c01/k01/t01/v01"), unit("c01"));
    let client = reqwest::Client::new();
    let (vurl, vtok) = (
        fed.graphql_url(&village)?,
        fed.token(&village, grassroots_schema::Role::Clerk)?
            .to_owned(),
    );
    let (curl, ctok) = (
        fed.graphql_url(&city)?,
        fed.token(&city, grassroots_schema::Role::Viewer)?
            .to_owned(),
    );
    // Let the links come up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut ms = Vec::new();
    for i in 0..100 {
        let vars = json!({ "i": { "unit": village.as_str(), "name": format!("Probe {i}"), "birthYear": 1990, "gender": "MALE", "education": "BACHELOR", "joinedOn": "2020-01-01" } });
        let t = Instant::now();
        let r = gql_with(
            &client,
            &vurl,
            Some(&vtok),
            "mutation($i: CreateMemberInput!) { createMember(input: $i) { id } }",
            vars,
        )
        .await?;
        let id = r["data"]["createMember"]["id"]
            .as_str()
            .context("create")?
            .to_owned();
        loop {
            let r = gql_with(
                &client,
                &curl,
                Some(&ctok),
                "query($id: ID!) { member(id: $id) { id } }",
                json!({ "id": id }),
            )
            .await?;
            if !r["data"]["member"].is_null() {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("write {i} never reached the city");
            }
        }
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    fed.shutdown().await;
    emit("propagation", "p50_ms", percentile(&ms, 0.5), "ms", None);
    emit("propagation", "p99_ms", percentile(&ms, 0.99), "ms", None);
    emit("propagation", "fsync_p50_ms", fsync_p50, "ms", None);
    emit("propagation", "fsync_p99_ms", fsync_p99, "ms", None);
    Ok(())
}

/// Fill a store for `holder` with the demo generator's members for `villages` villages
/// (30 each), written by 64 concurrent writers.
async fn fill_store(
    path: &std::path::Path,
    holder: &UnitId,
    villages: &[UnitId],
) -> anyhow::Result<usize> {
    let (store, _reader, thread) = grassroots_node::store::open(path, holder.clone())?;
    let mut writes = Vec::new();
    for v in villages {
        for m in grassroots::demo::members_for(v, 30) {
            writes.push((v.clone(), m));
        }
    }
    let total = writes.len();
    in_groups(writes, |(v, m)| store.create_member(v, m)).await?;
    thread.shutdown().await;
    Ok(total)
}

/// `write` over every one of `items`, 64 at a time (so that group commit shares their
/// flushes, as concurrent writers would), stopping at the first refusal.
async fn in_groups<I, T, E, Fut>(items: Vec<I>, write: impl Fn(I) -> Fut) -> anyhow::Result<()>
where
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut it = items.into_iter();
    loop {
        let group: Vec<_> = it.by_ref().take(64).map(&write).collect();
        if group.is_empty() {
            return Ok(());
        }
        for r in futures::future::join_all(group).await {
            r?;
        }
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// A county node with 200 villages' data (6,000 members): time from starting the node to
/// its first GraphQL answer over the whole subtree.
async fn cold_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let county = unit("c01/k01");
    let root = grassroots_node::Identity::create_root(&unit("c01"), "bench.grassroots")?;
    root.issue_child(&county)?.save(&dir.path().join("pki"))?;
    let villages: Vec<UnitId> = (0..200)
        .map(|i| unit(&format!("c01/k01/t{:02}/v{:02}", i / 20, i % 20)))
        .collect();
    let total = fill_store(&dir.path().join("store.redb"), &county, &villages).await?;
    let token = grassroots_node::auth::new_token()?;
    {
        let (store, _r, t) =
            grassroots_node::store::open(&dir.path().join("store.redb"), county.clone())?;
        store
            .add_user(
                grassroots_node::auth::token_hash(&token),
                county.clone(),
                grassroots_schema::Role::Viewer,
            )
            .await?;
        t.shutdown().await;
    }
    let cfg = grassroots_node::NodeConfig {
        data_dir: dir.path().to_owned(),
        name: "Cold County".into(),
        quic_listen: "127.0.0.1:0".parse()?,
        // The parent is not running: the node must answer without it.
        parent_addr: Some("127.0.0.1:9".parse()?),
        children: Vec::new(),
        link: grassroots_node::LinkConfig::default(),
        store: grassroots_node::store::StoreOptions::default(),
        backups: grassroots_node::BackupPolicy::default(),
    };
    let client = reqwest::Client::new();
    let start = Instant::now();
    let node = grassroots::launch::RunningNode::start(cfg, "127.0.0.1:0".parse()?).await?;
    let r = gql_with(
        &client,
        &node.graphql_url(),
        Some(&token),
        "{ nodeUnit { members(subtree: true) { totalCount } } }",
        json!({}),
    )
    .await?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if r["data"]["nodeUnit"]["members"]["totalCount"].as_u64() != Some(total as u64) {
        bail!("cold start answered {r}");
    }
    node.shutdown().await;
    emit("cold-start", "first_answer_ms", ms, "ms", None);
    emit("cold-start", "members", total as f64, "members", None);
    Ok(())
}

/// A county and a city starting empty under ten townships that hold 50 villages' registers
/// each (500 villages, 15,000 members from the demo generator, written while no node ran):
/// a replaced county and city pulling the subtree, or a new deployment's first sync. Time
/// from the townships' start until the county's and then the city's views hold every member,
/// documents per second, and the frame bytes the county took in over the records' raw JSON.
async fn full_sync() -> anyhow::Result<()> {
    const VILLAGES: usize = 50;
    let townships_n: usize = std::env::var("FULL_SYNC_TOWNSHIPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir()?;
    let (city, county) = (unit("c01"), unit("c01/k01"));
    let root = grassroots_node::Identity::create_root(&city, "bench.grassroots")?;
    let county_id = root.issue_child(&county)?;
    let folder = |u: &UnitId| dir.path().join(u.to_string().replace('/', "_"));
    root.save(&folder(&city).join("pki"))?;
    county_id.save(&folder(&county).join("pki"))?;
    let townships: Vec<UnitId> = (0..townships_n)
        .map(|t| unit(&format!("c01/k01/t{t:02}")))
        .collect();
    let villages_of = |t: &UnitId| -> Vec<UnitId> {
        (0..VILLAGES)
            .map(|v| unit(&format!("{t}/v{v:02}")))
            .collect()
    };
    let mut total = 0;
    let mut raw_json = 0;
    for t in &townships {
        county_id.issue_child(t)?.save(&folder(t).join("pki"))?;
        let path = folder(t).join("store.redb");
        total += fill_store(&path, t, &villages_of(t)).await?;
        let (_s, reader, thread) = grassroots_node::store::open(&path, t.clone())?;
        let page = reader.members(t, true, None, VILLAGES * 31)?;
        raw_json +=
            serde_json::to_vec(&page.items.iter().map(|(_, m)| m).collect::<Vec<_>>())?.len();
        thread.shutdown().await;
    }
    let config = |u: &UnitId, parent: Option<std::net::SocketAddr>, children: Vec<UnitId>| {
        grassroots_node::NodeConfig {
            data_dir: folder(u),
            name: format!("Unit {u}"),
            quic_listen: "127.0.0.1:0".parse().expect("address"),
            parent_addr: parent.map(Into::into),
            children,
            link: grassroots_node::LinkConfig::default(),
            store: grassroots_node::store::StoreOptions::default(),
            backups: grassroots_node::BackupPolicy::default(),
        }
    };
    let http = "127.0.0.1:0".parse()?;
    let city_node =
        grassroots::launch::RunningNode::start(config(&city, None, vec![county.clone()]), http)
            .await?;
    let county_node = grassroots::launch::RunningNode::start(
        config(&county, Some(city_node.node.quic_addr()), townships.clone()),
        http,
    )
    .await?;
    let start = Instant::now();
    let mut running = Vec::new();
    for t in &townships {
        let cfg = config(t, Some(county_node.node.quic_addr()), villages_of(t));
        running.push(grassroots::launch::RunningNode::start(cfg, http).await?);
    }
    let reader = city_node.node.reader();
    let mut at_county = None;
    loop {
        if at_county.is_none()
            && county_node
                .node
                .reader()
                .members(&county, true, None, 0)?
                .total
                == total
        {
            at_county = Some(start.elapsed().as_secs_f64());
        }
        if reader.members(&city, true, None, 0)?.total == total {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("the city did not hold every member in 600 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let docs = city_node.node.store().status().await?.documents;
    let county_links = county_node.node.store().status().await?.links;
    let frames: u64 = county_links.iter().map(|l| l.bytes_in).sum();
    emit("full-sync", "time", seconds, "s", None);
    emit(
        "full-sync",
        "time_at_county",
        at_county.unwrap_or(f64::NAN),
        "s",
        None,
    );
    emit("full-sync", "documents", docs as f64, "documents", None);
    emit(
        "full-sync",
        "documents_per_s",
        docs as f64 / seconds,
        "documents/s",
        None,
    );
    emit("full-sync", "members", total as f64, "members", None);
    emit(
        "full-sync",
        "frames_in_over_raw_json",
        frames as f64 / raw_json as f64,
        "ratio",
        None,
    );
    for n in running {
        n.shutdown().await;
    }
    county_node.shutdown().await;
    city_node.shutdown().await;
    Ok(())
}

/// A city node holding 5,000 villages' registers (150,000 members from the demo generator):
/// the store is filled here, then opened by a fresh process of this binary that reports its
/// resident memory before and after opening, and after a few roll-up queries.
async fn memory() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let city = unit("c01");
    fill_store(&dir.path().join("store.redb"), &city, &city_villages()).await?;
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("memory-probe")
        .arg(dir.path().join("store.redb"))
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    let mut nums = text
        .split_whitespace()
        .filter_map(|n| n.parse::<f64>().ok());
    let mut next = || nums.next().context("probe");
    let (before, opened, docs, loaded, touched, queried) =
        (next()?, next()?, next()?, next()?, next()?, next()?);
    anyhow::ensure!(loaded == docs, "{loaded} of {docs} documents loaded");
    // After every document has been loaded once through the cache (as a catch-up over the
    // whole store would), evicted down to the default 64 MiB budget as it went.
    emit("memory", "rss_bytes_5000_villages", touched, "bytes", None);
    // What each hosted document adds: its entry in the index (the store open, none
    // loaded). Loaded documents are held to the memory budget whatever their number: a
    // fixed cost, reported apart (`loaded_cache_bytes`), and with it spread over this
    // store's documents (`rss_per_doc_every_doc_loaded`).
    emit(
        "memory",
        "bytes_per_doc",
        (opened - before) / docs,
        "bytes",
        None,
    );
    emit(
        "memory",
        "loaded_cache_bytes",
        touched - opened,
        "bytes",
        None,
    );
    emit(
        "memory",
        "rss_per_doc_every_doc_loaded",
        (touched - before) / docs,
        "bytes",
        None,
    );
    emit(
        "memory",
        "rss_bytes_after_rollup_queries",
        queried,
        "bytes",
        None,
    );
    emit("memory", "documents", docs, "documents", None);
    Ok(())
}

/// The child side of `memory`: print RSS before the store opens, once it is open, the
/// number of documents, how many were loaded once each through the cache, RSS after that,
/// and RSS after a city's view queries.
fn memory_probe(path: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let before = rss_bytes();
        let (store, r, t) = grassroots_node::store::open(path.as_ref(), unit("c01"))?;
        let opened = rss_bytes();
        let docs = store.status().await?.documents;
        let loaded = store.load_every_document().await?;
        let touched = rss_bytes();
        // Then what a city answers all day, from the views: its roll-up, each county's, and
        // a page of the subtree's members.
        let city = unit("c01");
        let mut total = r.rollup(&city)?.members;
        for k in 0..10 {
            total -= r.rollup(&unit(&format!("c01/k{k:02}")))?.members;
        }
        anyhow::ensure!(total == 0, "county roll-ups do not sum to the city's");
        anyhow::ensure!(r.members(&city, true, None, 100)?.items.len() == 100);
        let queried = rss_bytes();
        t.shutdown().await;
        println!("{before} {opened} {docs} {loaded} {touched} {queried}");
        anyhow::Ok(())
    })
}

/// The villages of the 5,000-village city used by `memory` and `rollup`: 10 counties of 10
/// townships of 50 villages.
fn city_villages() -> Vec<UnitId> {
    (0..5000)
        .map(|i| {
            unit(&format!(
                "c01/k{:02}/t{:02}/v{:02}",
                i / 500,
                (i / 50) % 10,
                i % 50
            ))
        })
        .collect()
}

/// Requests per second and latencies (ms, sorted) of `query` sent by `connections`
/// concurrent clients (one connection each) for `duration`; `check` validates every body.
async fn load(
    url: &str,
    token: &str,
    query: &str,
    connections: usize,
    duration: Duration,
    check: fn(&serde_json::Value) -> bool,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (url, token, query) = (url.to_owned(), token.to_owned(), query.to_owned());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?;
            let mut lat = Vec::new();
            // At least one request each, so a zero duration is a warm-up.
            loop {
                let t = Instant::now();
                let r = gql_with(&client, &url, Some(&token), &query, json!({})).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                anyhow::ensure!(check(&r), "unexpected answer: {r}");
                if start.elapsed() >= duration {
                    break;
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok((rate, lat))
}

const ROLLUP_QUERY: &str = "{ nodeUnit { indicators(year: 2026) { members \
    probationary women under35 under35Share aged60Plus aged60PlusShare higherEducation \
    higherEducationShare byEducation { education count } newYoungHigherEducation } } }";

/// A city node's gateway over 5,000 villages' data (150,000 members): the city's indicator
/// query against the trivial query, both at 32 concurrent connections on the same server.
async fn rollup() -> anyhow::Result<()> {
    const CONNECTIONS: usize = 32;
    const ROUNDS: usize = 6;
    const PHASE: Duration = Duration::from_millis(500);
    let dir = tempfile::tempdir()?;
    let city = unit("c01");
    let path = dir.path().join("store.redb");
    let total = fill_store(&path, &city, &city_villages()).await?;
    let (store, reader, thread) = grassroots_node::store::open(&path, city.clone())?;
    // A year of monthly meetings at every village: 60,000.
    let mut made = Vec::new();
    for (i, v) in city_villages().into_iter().enumerate() {
        for month in 1..=12 {
            use grassroots_schema::Value as V;
            let fields: grassroots_schema::Fields = [
                ("kind", V::Text("group_meeting".into())),
                (
                    "heldOn",
                    V::Text(format!("2026-{month:02}-{:02}", 1 + i % 28)),
                ),
                ("attendance", V::Int(((i * 7 + month) % 40) as i64)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            made.push((v.clone(), fields));
        }
    }
    in_groups(made, |(v, f)| {
        store.create_record(DocKind::Meetings, v, f, None, None)
    })
    .await?;
    let token = grassroots_node::auth::new_token()?;
    store
        .add_user(
            grassroots_node::auth::token_hash(&token),
            city.clone(),
            grassroots_schema::Role::Viewer,
        )
        .await?;
    // Every village registered at the city (a profile each), as the demo's are.
    in_groups(city_villages(), |v| {
        let details = grassroots_schema::UnitDetails {
            name: Some(format!("Village {v}")),
            ..Default::default()
        };
        store.set_unit_details(v, details)
    })
    .await?;
    // The units whose members are listed below, named (registered) at the city.
    for (id, name) in [
        ("c01", "City"),
        ("c01/k00", "County 0"),
        ("c01/k00/t00", "Township 0"),
    ] {
        store
            .set_unit_details(
                unit(id),
                grassroots_schema::UnitDetails {
                    name: Some(name.into()),
                    ..Default::default()
                },
            )
            .await?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/graphql", listener.local_addr()?);
    let backend = grassroots_gateway::graphql::Backend {
        node_unit: city.clone(),
        store: store.clone(),
        reader,
        own_nodes: Vec::new(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(grassroots_gateway::http::serve(listener, backend, async {
        let _ = stopped.await;
    }));
    // The city's figure must be the sum of every village's members: checked on each answer.
    static MEMBERS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    MEMBERS.get_or_init(|| total as u64);
    let trivial = |r: &serde_json::Value| r["data"]["__typename"] == "Query";
    let indicators = |r: &serde_json::Value| {
        let i = &r["data"]["nodeUnit"]["indicators"];
        i["members"].as_u64() == MEMBERS.get().copied()
            && i["byEducation"].as_array().is_some_and(|b| {
                b.iter().filter_map(|e| e["count"].as_u64()).sum::<u64>()
                    == i["members"].as_u64().unwrap_or(0)
            })
            && r.get("errors").is_none()
    };
    // Warm both paths once, then measure each in turn.
    load(&url, &token, "{ __typename }", 1, Duration::ZERO, trivial).await?;
    load(&url, &token, ROLLUP_QUERY, 1, Duration::ZERO, indicators).await?;
    // Alternating short phases, so a drift of the machine's speed during the run (this one
    // swings by a third within minutes) falls on both queries alike.
    let (mut base_n, mut base_s, mut n, mut secs, mut lat) = (0.0, 0.0, 0.0, 0.0, Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let (_, l) = load(&url, &token, "{ __typename }", CONNECTIONS, PHASE, trivial).await?;
        (base_n, base_s) = (base_n + l.len() as f64, base_s + t.elapsed().as_secs_f64());
        let t = Instant::now();
        let (_, l) = load(&url, &token, ROLLUP_QUERY, CONNECTIONS, PHASE, indicators).await?;
        (n, secs) = (n + l.len() as f64, secs + t.elapsed().as_secs_f64());
        lat.extend(l);
    }
    lat.sort_by(f64::total_cmp);
    let (base, rate) = (base_n / base_s, n / secs);
    // A county's 15,000 members ordered by name against the same listing in its stored
    // order; the city's 150,000 the same, and ordered by year of birth, greatest first, from
    // a cursor deep in the listing; a township's 1,500 by name (read whole: townships are
    // not indexed); and a page of 100 entries of the record feed from its start.
    let page_of = |r: &serde_json::Value| {
        r["data"]["unit"]["members"]["edges"]
            .as_array()
            .is_some_and(|e| e.len() == 20)
    };
    let (_, stored) = load(&url, &token, STORED_QUERY, 1, PHASE * 2, page_of).await?;
    let (_, ordered) = load(&url, &token, ORDERED_QUERY, 1, PHASE * 2, page_of).await?;
    let city_stored = members_page("c01", "", None);
    let (_, city_stored) = load(&url, &token, &city_stored, 1, PHASE * 2, page_of).await?;
    let city_ordered = members_page("c01", ", orderBy: NAME", None);
    let (_, city_ordered) = load(&url, &token, &city_ordered, 1, PHASE * 2, page_of).await?;
    // The cursor of the 5,000th row, walked to once.
    let by_year = ", orderBy: BIRTH_YEAR, descending: true";
    let (client, mut after) = (reqwest::Client::new(), None);
    for _ in 0..250 {
        let q = members_page("c01", by_year, after.as_deref());
        let r = gql_with(&client, &url, Some(&token), &q, json!({})).await?;
        after = r["data"]["unit"]["members"]["pageInfo"]["endCursor"]
            .as_str()
            .map(str::to_owned);
    }
    let deep = members_page("c01", by_year, after.as_deref());
    let (_, deep) = load(&url, &token, &deep, 1, PHASE * 2, page_of).await?;
    let township = members_page("c01/k00/t00", ", orderBy: NAME", None);
    let (_, township) = load(&url, &token, &township, 1, PHASE * 2, page_of).await?;
    // A search of the city's members by a name no member has, ordered by name (every entry
    // of the listing passed over), and in stored order (every row read).
    let no_match = |r: &serde_json::Value| {
        r["data"]["unit"]["members"]["edges"]
            .as_array()
            .is_some_and(Vec::is_empty)
    };
    let search = ", nameContains: \"Qqq\"";
    let by_name = members_page("c01", &format!("{search}, orderBy: NAME"), None);
    let (_, search_by_name) = load(&url, &token, &by_name, 1, PHASE * 2, no_match).await?;
    let in_stored_order = members_page("c01", search, None);
    let (_, search_stored) = load(&url, &token, &in_stored_order, 1, PHASE * 2, no_match).await?;
    // And a name many members have (a family name), in stored order: found within the
    // first rows.
    let common = members_page("c01", ", nameContains: \"chen\"", None);
    let (_, search_common) = load(&url, &token, &common, 1, PHASE * 2, page_of).await?;
    let meetings_of = |r: &serde_json::Value| {
        r["data"]["unit"]["meetings"]["edges"]
            .as_array()
            .is_some_and(|e| e.len() == 20)
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let meetings_of_unit = |unit: &str, args: &str, count: bool| {
        let count = if count { "totalCount " } else { "" };
        format!(
            "{{ unit(id: \"{unit}\") {{ meetings(subtree: true{args}) {{ {count}\
             edges {{ node {{ heldOn attendance }} }} }} }} }}"
        )
    };
    // The city's 60,000 meetings: the latest first (by their date, which the index holds)
    // and by attendance (each row's attendance read), against stored order.
    let meetings = |order: &str| meetings_of_unit("c01", order, false);
    let mut by_date = Vec::new();
    let mut by_attendance = Vec::new();
    let mut in_stored_order = Vec::new();
    for (order, out) in [
        (", orderBy: \"heldOn\", descending: true", &mut by_date),
        (
            ", orderBy: \"attendance\", descending: true",
            &mut by_attendance,
        ),
        ("", &mut in_stored_order),
    ] {
        *out = load(&url, &token, &meetings(order), 1, PHASE * 2, meetings_of)
            .await?
            .1;
    }
    // A quarter of them (15,000), the latest first: the index's keys of the quarter alone,
    // and counted (each of its rows read); a county's (a unit below the city: the walk
    // passes over the other counties' entries). Each against the same listing by attendance,
    // every row decoded (`level: VILLAGE` keeps all of them, but only a decoded row tells).
    // All of them counted, in stored order: from their keys, against the same count asked
    // for the villages'. And all of them by attendance: each row's attendance read alone,
    // against the villages' (every row decoded).
    let quarter = ", period: \"2026Q3\"";
    let latest = ", orderBy: \"heldOn\", descending: true";
    let most = ", orderBy: \"attendance\", descending: true";
    let mut below = Vec::new();
    for (unit, args, count) in [
        ("c01", format!("{quarter}{latest}"), false),
        ("c01", format!("{quarter}{most}"), false),
        ("c01", format!("{quarter}{latest}"), true),
        ("c01", format!("{quarter}{most}"), true),
        ("c01/k00", latest.to_owned(), false),
        ("c01/k00", format!("{most}, level: VILLAGE"), false),
        ("c01", String::new(), true),
        ("c01", ", level: VILLAGE".to_owned(), true),
        ("c01", most.to_owned(), false),
        ("c01", format!("{most}, level: VILLAGE"), false),
    ] {
        let query = meetings_of_unit(unit, &args, count);
        below.push(median(
            load(&url, &token, &query, 1, PHASE * 2, meetings_of)
                .await?
                .1,
        ));
    }
    let feed_page = |r: &serde_json::Value| {
        r["data"]["recordFeed"]["entries"]
            .as_array()
            .is_some_and(|e| e.len() == 100)
    };
    let (_, feed) = load(&url, &token, FEED_QUERY, 1, PHASE * 2, feed_page).await?;
    // The seed's targets over the city's 5,111 units, and over a county's 511: every
    // roll-up row of the subtree read and each unit's own counts taken from it. And how
    // evenly a figure spreads over the city's 5,000 villages: each village's roll-up row
    // read for the figure's parts.
    let targets = |unit: &str| {
        format!("{{ unit(id: \"{unit}\") {{ targets {{ target units met missingCount }} }} }}")
    };
    let balance = |figure: &str| {
        format!(
            "{{ unit(id: \"c01\") {{ balance(figure: {figure}, level: VILLAGE) {{ units mean }} }} }}"
        )
    };
    let counted: fn(&serde_json::Value) -> bool = |r| {
        r["data"]["unit"]["targets"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    };
    let compared: fn(&serde_json::Value) -> bool = |r| {
        r["data"]["unit"]["balance"]["units"]
            .as_i64()
            .is_some_and(|n| n >= 5_000)
    };
    let mut reports = Vec::new();
    for (metric, query, check) in [
        ("targets_city_p50_ms", targets("c01"), counted),
        ("targets_county_p50_ms", targets("c01/k00"), counted),
        (
            "balance_villages_members_p50_ms",
            balance("MEMBERS"),
            compared,
        ),
        (
            "balance_villages_meetings_p50_ms",
            balance("ROUTINE_MEETINGS"),
            compared,
        ),
    ] {
        let (_, lat) = load(&url, &token, &query, 1, PHASE * 2, check).await?;
        reports.push((metric, median(lat)));
    }
    let _ = stop.send(());
    server.await??;
    drop(store);
    thread.shutdown().await;
    emit("rollup", "req_per_s", rate, "req/s", Some(base));
    emit("rollup", "p50_ms", percentile(&lat, 0.5), "ms", None);
    emit("rollup", "p99_ms", percentile(&lat, 0.99), "ms", None);
    emit("rollup", "members", total as f64, "members", None);
    let stored = median(stored);
    emit(
        "rollup",
        "ordered_listing_p50_ms",
        median(ordered),
        "ms",
        Some(stored),
    );
    let city_stored = median(city_stored);
    emit(
        "rollup",
        "ordered_city_listing_p50_ms",
        median(city_ordered),
        "ms",
        Some(city_stored),
    );
    emit(
        "rollup",
        "ordered_city_listing_deep_p50_ms",
        median(deep),
        "ms",
        Some(city_stored),
    );
    emit(
        "rollup",
        "ordered_township_listing_p50_ms",
        median(township),
        "ms",
        None,
    );
    let in_stored_order = median(in_stored_order);
    emit(
        "rollup",
        "meetings_by_date_p50_ms",
        median(by_date),
        "ms",
        Some(in_stored_order),
    );
    emit(
        "rollup",
        "meetings_by_attendance_p50_ms",
        median(by_attendance),
        "ms",
        Some(in_stored_order),
    );
    for (i, metric) in [
        "meetings_quarter_by_date_p50_ms",
        "meetings_quarter_counted_p50_ms",
        "county_meetings_by_date_p50_ms",
        "meetings_counted_p50_ms",
        "meetings_by_attendance_keys_p50_ms",
    ]
    .into_iter()
    .enumerate()
    {
        emit("rollup", metric, below[2 * i], "ms", Some(below[2 * i + 1]));
    }
    for (metric, p50) in reports {
        emit("rollup", metric, p50, "ms", None);
    }
    emit(
        "rollup",
        "name_search_by_name_p50_ms",
        median(search_by_name),
        "ms",
        Some(median(search_stored)),
    );
    emit(
        "rollup",
        "name_search_common_p50_ms",
        median(search_common),
        "ms",
        None,
    );
    emit("rollup", "feed_page_100_p50_ms", median(feed), "ms", None);
    Ok(())
}

/// A page of 20 of `unit`'s subtree's members, with `order` (its arguments, each after a
/// comma), after `after`; with the page's end cursor.
fn members_page(unit: &str, order: &str, after: Option<&str>) -> String {
    let after = after.map_or(String::new(), |a| format!(", after: \"{a}\""));
    format!(
        "{{ unit(id: \"{unit}\") {{ members(subtree: true{order}{after}) {{ \
         edges {{ node {{ name }} }} pageInfo {{ endCursor }} }} }} }}"
    )
}

/// A page of a county's members (15,000 in its subtree) in stored order.
const STORED_QUERY: &str =
    "{ unit(id: \"c01/k00\") { members(subtree: true) { edges { node { name } } } } }";

/// The same page ordered by name.
const ORDERED_QUERY: &str = "{ unit(id: \"c01/k00\") { members(subtree: true, orderBy: NAME) { edges { node { name } } } } }";

/// The record feed's first 100 entries.
const FEED_QUERY: &str = "{ recordFeed(first: 100) { entries { id member { name } } } }";

fn main() -> anyhow::Result<()> {
    // As the node binary does, so nodes here run as in production.
    let _ = grassroots_node::runtime::no_transparent_huge_pages();
    let scenario = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    // The nodes' logs, on standard error, only when asked for (`RUST_LOG=grassroots_node=debug`).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if scenario == "memory-probe" {
        return memory_probe(&std::env::args().nth(2).context("memory-probe PATH")?);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    type Scenario<'a> = (&'static str, Box<dyn Fn() -> anyhow::Result<()> + 'a>);
    let scenarios: Vec<Scenario<'_>> = vec![
        ("idle-reconnect", Box::new(idle_reconnect)),
        ("catch-up", Box::new(|| rt.block_on(catch_up()))),
        ("lossy-link", Box::new(|| rt.block_on(lossy_link()))),
        ("lossy-dial", Box::new(|| rt.block_on(lossy_dial()))),
        ("lossy-redial", Box::new(|| rt.block_on(lossy_redial()))),
        ("idle-link", Box::new(|| rt.block_on(idle_link()))),
        ("ingest", Box::new(|| rt.block_on(ingest()))),
        ("propagation", Box::new(|| rt.block_on(propagation()))),
        ("cold-start", Box::new(|| rt.block_on(cold_start()))),
        ("memory", Box::new(|| rt.block_on(memory()))),
        ("rollup", Box::new(|| rt.block_on(rollup()))),
        ("full-sync", Box::new(|| rt.block_on(full_sync()))),
    ];
    let mut ran = false;
    for (name, run) in &scenarios {
        // `lossy-redial` repeats what `lossy-dial` measures, with more samples.
        if (scenario == "all" && *name != "lossy-redial") || scenario == *name {
            run()?;
            ran = true;
        }
    }
    if !ran {
        let names: Vec<&str> = scenarios.iter().map(|(n, _)| *n).collect();
        bail!(
            "unknown scenario {scenario:?}: one of {} or all",
            names.join(", ")
        );
    }
    Ok(())
}
