//! A soak under chaos: a 19-node federation (1 city, 2 counties, 4 townships, 12 villages)
//! with every link through a fault-injecting relay, a writer at every node, and a chaos loop that cuts links, raises their loss and restarts nodes at random
//! for `SOAK_SECS` seconds (default 20; CI runs the default, longer runs are by hand).
//!
//! Writers behave as a careful client does: a write whose answer was lost (node stopped,
//! connection cut) is sent again, creates with the same `requestId`. A township's
//! supervisor moves its members between its own register and its villages' with
//! `transferMember`; one whose answer was lost is settled by searching the township's
//! subtree for the member's (unique) name, which must find it exactly once: a transfer may
//! neither copy nor lose a member. After healing, every node must hold exactly the
//! acknowledged state of its subtree, names and attendance included, its roll-up must count
//! the same members, and its views must equal a rebuild. `SOAK_SEED` replays a run's random
//! choices (not its timing).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use grassroots::federation::Federation;
use grassroots_schema::{Level, Role, UnitId};
use grassroots_tests::relay::Relay;
use grassroots_tests::{error_code, full_tree, start, unit};
use serde_json::{Value, json};

/// SplitMix64: reproducible choices from one seed, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len() as u64) as usize])
    }
}

/// What the writers were told was stored: record id to its register and fields.
#[derive(Default)]
struct Model {
    members: BTreeMap<String, (UnitId, Value)>,
    meetings: BTreeMap<String, (UnitId, Value)>,
}

#[derive(Default)]
struct Stats {
    writes: AtomicU64,
    resent: AtomicU64,
    transfers: AtomicU64,
    settled_by_search: AtomicU64,
    corrections: AtomicU64,
}

/// One writer's GraphQL client at one node.
struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
    stats: Arc<Stats>,
}

/// The codes a write may be answered with while its node stops or its disk is busy (the
/// outcome is unknown), or while an earlier attempt of this client's, whose answer it gave
/// up on, is still being stored beside it (`CONFLICT`: nothing was written): the client asks
/// again.
const TRANSIENT: &[&str] = &["INTERNAL", "NOT_STORED", "TIMEOUT", "CONFLICT"];

impl Client {
    /// Send until answered: `Ok(data)`, or `Err(code)` for a code in `accept`. Anything else
    /// fails the soak (the writers only send writes that are allowed).
    async fn until_answered(
        &self,
        query: &str,
        variables: Value,
        accept: &[&str],
    ) -> anyhow::Result<(Result<Value, String>, u32)> {
        let start = Instant::now();
        let mut attempts = 0;
        let mut last = String::new();
        loop {
            attempts += 1;
            let asked = Instant::now();
            let sent = self
                .http
                .post(&self.url)
                .bearer_auth(&self.token)
                .json(&json!({ "query": query, "variables": variables }))
                .send()
                .await;
            let answer = match sent {
                Ok(r) => match r.json::<Value>().await {
                    Ok(v) => Some(v),
                    Err(e) => {
                        last = format!("an unreadable answer: {e}");
                        None
                    }
                },
                Err(e) => {
                    // The whole chain: reqwest's own text does not say why.
                    let mut why = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        why = format!("{why}: {s}");
                        source = s.source();
                    }
                    last = format!("no answer: {why}");
                    None
                }
            };
            if asked.elapsed() > Duration::from_secs(5) {
                // When a node first falls behind, beside its store's slow-batch lines.
                eprintln!(
                    "soak: {} took {:.1} s (attempt {attempts}, answered: {})",
                    self.url,
                    asked.elapsed().as_secs_f64(),
                    answer.is_some()
                );
            }
            if let Some(a) = answer {
                match error_code(&a) {
                    None if !a["data"].is_null() => return Ok((Ok(a["data"].clone()), attempts)),
                    Some(code) if accept.contains(&code) => {
                        return Ok((Err(code.to_owned()), attempts));
                    }
                    Some(code) if TRANSIENT.contains(&code) => last = a.to_string(),
                    _ => bail!("{} answered {a} to {query} {variables}", self.url),
                }
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!(
                    "{} unanswered for 120 s (last: {last}): {query} {variables}",
                    self.url
                );
            }
            self.stats.resent.fetch_add(1, Relaxed);
            // Backing off as a client should, so that a node catching up is not buried in
            // repeats of requests it is still working on.
            let wait = 200u64.saturating_mul(1 << attempts.min(5)).min(5_000);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }

    async fn write(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        self.stats.writes.fetch_add(1, Relaxed);
        self.until_answered(query, variables, &[])
            .await?
            .0
            .map_err(|code| anyhow::anyhow!("unexpected {code}"))
    }
}

const CREATE_MEMBER: &str = "mutation($input: CreateMemberInput!, $r: String) {
    createMember(input: $input, requestId: $r) { id } }";
const UPDATE_MEMBER: &str =
    "mutation($id: ID!, $name: String!) { updateMember(id: $id, input: { name: $name }) { id } }";
const CORRECT_MEMBER: &str = "mutation($id: ID!, $y: Int!) {
    updateMember(id: $id, input: { birthYear: $y }) { id } }";
const DELETE_MEMBER: &str = "mutation($id: ID!) { deleteMember(id: $id) { id } }";
const TRANSFER: &str =
    "mutation($id: ID!, $to: ID!) { transferMember(id: $id, toUnit: $to) { id unit { id } } }";
const CREATE_MEETING: &str = "mutation($u: ID!, $a: Int!, $r: String) {
    createMeeting(input: { unit: $u, kind: GROUP_MEETING, heldOn: \"2026-03-01\",
    attendance: $a }, requestId: $r) { id } }";
const UPDATE_MEETING: &str =
    "mutation($id: ID!, $a: Int!) { updateMeeting(id: $id, input: { attendance: $a }) { id } }";

fn str_at<'a>(v: &'a Value, path: &[&str]) -> anyhow::Result<&'a str> {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .with_context(|| format!("no {path:?} in {v}"))
}

/// One writer: the clerk of `at` writing its own records, or (for a township) its supervisor,
/// who also moves its members between its register and its villages' and corrects the birth
/// year of its villages' members while their clerks rename them (fields merge; a correction
/// racing the village's removal of the member loses to it).
async fn writer(
    at: UnitId,
    villages: Vec<UnitId>,
    client: Client,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = Rng(seed);
    let mut members: Vec<String> = Vec::new();
    let mut meetings: Vec<String> = Vec::new();
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        n += 1;
        let roll = rng.below(100);
        let transfers = !villages.is_empty();
        if roll < 30 || members.is_empty() {
            // Fixed width, so that no name is part of another (the search by name is
            // a substring search).
            let (name, year) = (format!("{at} m{n:06}"), 1970 + (n % 30) as i64);
            let data = client
                .write(
                    CREATE_MEMBER,
                    json!({ "r": format!("{at}/{n}"), "input": { "unit": at.as_str(),
                        "name": name, "birthYear": year, "gender": "FEMALE",
                        "education": "COLLEGE", "joinedOn": "2015-07-01" } }),
                )
                .await?;
            let id = str_at(&data, &["createMember", "id"])?.to_owned();
            let fields = json!({ "id": id, "name": name, "birthYear": year });
            model
                .lock()
                .expect("model")
                .members
                .insert(id.clone(), (at.clone(), fields));
            members.push(id);
        } else if roll < 55 {
            let i = rng.below(members.len() as u64) as usize;
            let id = members[i].clone();
            let name = format!("{at} m{n:06} renamed");
            client
                .write(UPDATE_MEMBER, json!({ "id": id, "name": name }))
                .await?;
            let mut m = model.lock().expect("model");
            let entry = m.members.get_mut(&id).context("own member unknown")?;
            entry.1["name"] = json!(name);
        } else if roll < 65 {
            let id = members.swap_remove(rng.below(members.len() as u64) as usize);
            client.stats.writes.fetch_add(1, Relaxed);
            let (answer, attempts) = client
                .until_answered(DELETE_MEMBER, json!({ "id": id }), &["NOT_FOUND"])
                .await?;
            // Not found is the answer to a repeat whose first attempt removed it.
            if answer.is_err() && attempts == 1 {
                bail!("{at}: its own member {id} was not found");
            }
            model.lock().expect("model").members.remove(&id);
        } else if transfers && roll < 80 {
            let i = rng.below(members.len() as u64) as usize;
            let id = members[i].clone();
            let (from, mut fields) = model
                .lock()
                .expect("model")
                .members
                .get(&id)
                .cloned()
                .context("own member unknown")?;
            let name = fields["name"].as_str().context("no name")?.to_owned();
            let mut targets: Vec<&UnitId> = villages.iter().chain([&at]).collect();
            targets.retain(|u| **u != from);
            let to = (*rng.pick(&targets).context("no target")?).clone();
            client.stats.transfers.fetch_add(1, Relaxed);
            client.stats.writes.fetch_add(1, Relaxed);
            let (answer, attempts) = client
                .until_answered(
                    TRANSFER,
                    json!({ "id": id, "to": to.as_str() }),
                    &["NOT_FOUND"],
                )
                .await?;
            let (new_id, register) = match answer {
                Ok(data) if attempts == 1 => (
                    str_at(&data, &["transferMember", "id"])?.to_owned(),
                    unit(str_at(&data, &["transferMember", "unit", "id"])?),
                ),
                // A repeat: the first attempt may have moved it. Find it by its name.
                _ => {
                    client.stats.settled_by_search.fetch_add(1, Relaxed);
                    find_once(&client, &at, &name).await?
                }
            };
            fields["id"] = json!(new_id);
            let mut m = model.lock().expect("model");
            m.members.remove(&id);
            m.members.insert(new_id.clone(), (register, fields));
            members[i] = new_id;
        } else if transfers && roll < 85 {
            // A village's member, as this writer last heard of it; the township's node may
            // not hold it yet, or its village may have removed it since: not found.
            let theirs: Vec<String> = model
                .lock()
                .expect("model")
                .members
                .iter()
                .filter(|(_, (r, _))| villages.contains(r))
                .map(|(id, _)| id.clone())
                .collect();
            let Some(id) = rng.pick(&theirs).cloned() else {
                continue;
            };
            let year = 1940 + rng.below(60) as i64;
            client.stats.corrections.fetch_add(1, Relaxed);
            client.stats.writes.fetch_add(1, Relaxed);
            let (answer, _) = client
                .until_answered(
                    CORRECT_MEMBER,
                    json!({ "id": id, "y": year }),
                    &["NOT_FOUND"],
                )
                .await?;
            if answer.is_ok()
                && let Some(m) = model.lock().expect("model").members.get_mut(&id)
            {
                m.1["birthYear"] = json!(year);
            }
        } else if roll < 90 || meetings.is_empty() {
            let attendance = 3 + rng.below(40) as i64;
            let data = client
                .write(
                    CREATE_MEETING,
                    json!({ "u": at.as_str(), "a": attendance, "r": format!("{at}/meeting/{n}") }),
                )
                .await?;
            let id = str_at(&data, &["createMeeting", "id"])?.to_owned();
            let fields = json!({ "id": id, "attendance": attendance });
            model
                .lock()
                .expect("model")
                .meetings
                .insert(id.clone(), (at.clone(), fields));
            meetings.push(id);
        } else {
            let id = rng.pick(&meetings).context("no meeting")?.clone();
            let attendance = 3 + rng.below(40) as i64;
            client
                .write(UPDATE_MEETING, json!({ "id": id, "a": attendance }))
                .await?;
            if let Some(m) = model.lock().expect("model").meetings.get_mut(&id) {
                m.1["attendance"] = json!(attendance);
            }
        }
        tokio::time::sleep(rng.millis(20, 120)).await;
    }
    Ok(())
}

/// The one member named `name` in `at`'s subtree (its id and register): none or two is a
/// transfer that lost or copied a member.
async fn find_once(client: &Client, at: &UnitId, name: &str) -> anyhow::Result<(String, UnitId)> {
    let q = "query($u: ID!, $n: String!) { unit(id: $u) { members(subtree: true,
        nameContains: $n, first: 100) { edges { node { id name unit { id } } } } } }";
    let (answer, _) = client
        .until_answered(q, json!({ "u": at.as_str(), "n": name }), &[])
        .await?;
    let data = answer.map_err(|code| anyhow::anyhow!("search answered {code}"))?;
    let found: Vec<&Value> = data["unit"]["members"]["edges"]
        .as_array()
        .context("no edges")?
        .iter()
        .filter(|e| e["node"]["name"] == name)
        .collect();
    match found.as_slice() {
        [one] => Ok((
            str_at(one, &["node", "id"])?.to_owned(),
            unit(str_at(one, &["node", "unit", "id"])?),
        )),
        other => bail!(
            "a transfer left {} members named {name:?} under {at}",
            other.len()
        ),
    }
}

/// Every record of `kind` in `at`'s subtree through its GraphQL: id to its id and `fields`.
async fn subtree(
    fed: &Federation,
    at: &UnitId,
    kind: &str,
    fields: &str,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let q = format!(
        "query($u: ID!, $after: String) {{ unit(id: $u) {{ {kind}(first: 100, after: $after,
        subtree: true) {{ edges {{ node {{ id {fields} }} }} pageInfo {{ hasNextPage endCursor }} }} }} }}"
    );
    let (url, token) = (fed.graphql_url(at)?, fed.token(at, Role::Viewer)?);
    let mut out = BTreeMap::new();
    let mut after = Value::Null;
    loop {
        let r = grassroots_tests::gql(
            &url,
            Some(token),
            &q,
            json!({ "u": at.as_str(), "after": after }),
        )
        .await?;
        let conn = &r["data"]["unit"][kind];
        for e in conn["edges"].as_array().with_context(|| format!("{r}"))? {
            out.insert(str_at(e, &["node", "id"])?.to_owned(), e["node"].clone());
        }
        if conn["pageInfo"]["hasNextPage"] != true {
            return Ok(out);
        }
        after = conn["pageInfo"]["endCursor"].clone();
    }
}

enum Undo {
    Restore(UnitId),
    Loss(UnitId),
    Start(UnitId),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_under_chaos_keeps_every_acknowledged_write() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("soak: {secs} s, SOAK_SEED={seed}");
    // The nodes' logs (a slow store batch, a link dropped) when RUST_LOG asks for them.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let mut rng = Rng(seed);

    let relays: Arc<Mutex<BTreeMap<UnitId, Relay>>> = Arc::default();
    let keep = relays.clone();
    let via = Box::new(move |child: &UnitId, parent: std::net::SocketAddr| {
        let relay = Relay::start(parent).expect("relay");
        relay.set_loss(0.02);
        relay.set_delay(Duration::from_millis(5));
        let addr = relay.addr();
        keep.lock().expect("relays").insert(child.clone(), relay);
        addr
    });
    let (mut fed, _dir) = start(full_tree(2, 2, 3), Some(via)).await?;
    let units: Vec<UnitId> = fed.units.iter().map(|u| u.id.clone()).collect();
    let with_relay = |u: &UnitId, f: &dyn Fn(&Relay)| {
        if let Some(r) = relays.lock().expect("relays").get(u) {
            f(r);
        }
    };

    let model: Arc<Mutex<Model>> = Arc::default();
    let stats: Arc<Stats> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // The writers' connections leave from 127.0.0.2: from 127.0.0.1, the kernel could give
    // one the port of a stopped node's GraphQL listener as its own, and the node's restart
    // would find its port in use for as long as that connection lives (a 600 s soak's
    // restart failed after 5 s of retries).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()?;
    let mut writers = Vec::new();
    for u in &units {
        let township = u.level() == Level::Township;
        let role = if township {
            Role::Supervisor
        } else {
            Role::Clerk
        };
        let villages = if township {
            units
                .iter()
                .filter(|v| v.parent().as_ref() == Some(u))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let client = Client {
            http: http.clone(),
            url: fed.graphql_url(u)?,
            token: fed.token(u, role)?.to_owned(),
            stats: stats.clone(),
        };
        writers.push(tokio::spawn(writer(
            u.clone(),
            villages,
            client,
            model.clone(),
            stop.clone(),
            rng.next(),
        )));
    }

    // Chaos until the time is up; each fault is undone after a random while.
    let (mut cuts, mut spikes, mut restarts) = (0u32, 0u32, 0u32);
    let mut undo: Vec<(Instant, Undo)> = Vec::new();
    let mut stopped: Vec<UnitId> = Vec::new();
    let began = Instant::now();
    let end = began + Duration::from_secs(secs);
    let below_city: Vec<UnitId> = units
        .iter()
        .filter(|u| u.level() != Level::City)
        .cloned()
        .collect();
    // The city restarts once in every run, early: the root's restart is the one that takes
    // every link down at once, and chance alone could leave it out of a short run.
    let city = units
        .iter()
        .find(|u| u.level() == Level::City)
        .context("no city")?
        .clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fed.stop(&city).await?;
    restarts += 1;
    stopped.push(city.clone());
    undo.push((
        Instant::now() + Duration::from_millis(1500),
        Undo::Start(city),
    ));
    while Instant::now() < end {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = undo.drain(..).partition(|(at, _)| *at <= now);
        undo = later;
        for (_, u) in due {
            match u {
                Undo::Restore(u) => with_relay(&u, &|r| r.restore()),
                Undo::Loss(u) => with_relay(&u, &|r| r.set_loss(0.02)),
                Undo::Start(u) => {
                    let t = Instant::now();
                    fed.restart(&u).await?;
                    eprintln!(
                        "{:>7.1} s: started {u} in {:.1} s",
                        began.elapsed().as_secs_f64(),
                        t.elapsed().as_secs_f64()
                    );
                    stopped.retain(|s| *s != u);
                }
            }
        }
        let target = rng.pick(&below_city).context("no units")?.clone();
        match rng.below(10) {
            0..=3 => {
                cuts += 1;
                with_relay(&target, &|r| r.cut());
                undo.push((now + rng.millis(300, 5000), Undo::Restore(target)));
            }
            4..=6 => {
                spikes += 1;
                let loss = 0.1 + rng.below(30) as f64 / 100.0;
                with_relay(&target, &|r| r.set_loss(loss));
                undo.push((now + rng.millis(1000, 6000), Undo::Loss(target)));
            }
            7 | 8 if stopped.len() < 2 => {
                // Any node may restart, the city included.
                let node = rng.pick(&units).context("no units")?.clone();
                if !stopped.contains(&node) {
                    restarts += 1;
                    let t = Instant::now();
                    fed.stop(&node).await?;
                    eprintln!(
                        "{:>7.1} s: stopped {node} in {:.1} s",
                        began.elapsed().as_secs_f64(),
                        t.elapsed().as_secs_f64()
                    );
                    stopped.push(node.clone());
                    undo.push((now + rng.millis(200, 2500), Undo::Start(node)));
                }
            }
            _ => {}
        }
        tokio::time::sleep(rng.millis(200, 1000)).await;
    }

    // Heal: every fault undone, every node running, the writers' last writes answered.
    for (_, u) in undo.drain(..) {
        if let Undo::Start(u) = u {
            fed.restart(&u).await?;
        }
    }
    for r in relays.lock().expect("relays").values() {
        r.restore();
        r.set_loss(0.0);
    }
    stop.store(true, Relaxed);
    for w in writers {
        w.await??;
    }
    let healed = Instant::now();

    let (members, meetings) = {
        let m = model.lock().expect("model");
        (m.members.clone(), m.meetings.clone())
    };
    for u in &units {
        let want_members: BTreeMap<String, Value> = members
            .iter()
            .filter(|(_, (r, _))| r.is_in_subtree_of(u))
            .map(|(id, (_, fields))| (id.clone(), fields.clone()))
            .collect();
        let want_meetings: BTreeMap<String, Value> = meetings
            .iter()
            .filter(|(_, (r, _))| r.is_in_subtree_of(u))
            .map(|(id, (_, fields))| (id.clone(), fields.clone()))
            .collect();
        // Polled by hand rather than with `eventually`, to report the last difference.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let have = (
                subtree(&fed, u, "members", "name birthYear").await?,
                subtree(&fed, u, "meetings", "attendance").await?,
            );
            if have.0 == want_members && have.1 == want_meetings {
                break;
            }
            if Instant::now() > deadline {
                let diff = |have: &BTreeMap<String, Value>, want: &BTreeMap<String, Value>| {
                    let missing: Vec<_> = want
                        .iter()
                        .filter(|(k, v)| have.get(*k) != Some(v))
                        .collect();
                    let extra: Vec<_> = have
                        .iter()
                        .filter(|(k, v)| want.get(*k) != Some(v))
                        .collect();
                    format!("missing or different {missing:?}; extra or different {extra:?}")
                };
                bail!(
                    "{u} did not converge in 180 s (SOAK_SEED={seed}): members: {}; meetings: {}",
                    diff(&have.0, &want_members),
                    diff(&have.1, &want_meetings)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let node = &fed.node(u)?.node;
        assert_eq!(
            node.reader().rollup(u)?.members as usize,
            want_members.len(),
            "roll-up of {u} (SOAK_SEED={seed})"
        );
        let diffs = node.store().verify_views().await?;
        assert!(diffs.is_empty(), "{u} (SOAK_SEED={seed}): {diffs:?}");
        // Honest nodes refuse nothing of each other, whatever the faults (a refusal would
        // hold a document back until the next session, which convergence alone can miss).
        let refused: Vec<_> = node
            .store()
            .status()
            .await?
            .links
            .into_iter()
            .filter(|l| l.rejected > 0)
            .map(|l| (l.peer, l.rejected))
            .collect();
        assert!(
            refused.is_empty(),
            "{u} refused messages of {refused:?} (SOAK_SEED={seed})"
        );
    }
    let converged_in = healed.elapsed().as_secs_f64();
    eprintln!(
        "soak: {} writes ({} sent again, {} transfers, {} settled by a search, {} corrections \
         from above), {} members and {} meetings at the end; {cuts} cuts, {spikes} loss spikes, \
         {restarts} restarts; every node converged and verified {converged_in:.1} s after healing",
        stats.writes.load(Relaxed),
        stats.resent.load(Relaxed),
        stats.transfers.load(Relaxed),
        stats.settled_by_search.load(Relaxed),
        stats.corrections.load(Relaxed),
        members.len(),
        meetings.len(),
    );
    assert!(
        stats.transfers.load(Relaxed) > 0,
        "no member moved between villages (SOAK_SEED={seed})"
    );
    fed.shutdown().await;
    Ok(())
}
