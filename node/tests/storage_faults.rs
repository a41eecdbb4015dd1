//! Power loss below the store, for what `kill -9` cannot show: a redb storage backend that
//! keeps a durable image (as of the last `sync_data`) apart from the writes since, and after a
//! countdown of I/O operations "loses power": every later operation fails, and the disk that
//! comes back holds the durable image plus a random subset of the unsynced writes, some of
//! them torn (a disk may reorder and cut writes between flushes).
//!
//! Each round opens the store on the last image with a fresh countdown, runs concurrent
//! writers until the power cut, then reopens the surviving image with no fault: it must open,
//! hold every acknowledged write, and its views (rows and roll-ups) must equal a rebuild.

use std::sync::{Arc, Mutex};

use grassroots_node::store::{self, StoreOptions};
use grassroots_schema::{Education, Gender, MemberId, MemberStatus, NewMember, UnitId};
use redb::StorageBackend;

const ROUNDS: usize = 40;

fn io_err(what: &str) -> std::io::Error {
    std::io::Error::other(format!("injected fault: {what}"))
}

/// Deterministic randomness (a seed per round).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

#[derive(Debug, Clone)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Disk {
    /// What survives a power cut for sure.
    durable: Vec<u8>,
    /// What reads see now.
    current: Vec<u8>,
    /// Operations since the last sync, in order.
    pending: Vec<Pending>,
    /// I/O operations left before the power cut (`None`: never).
    countdown: Option<u64>,
    dead: bool,
    /// The disk's size: a write or a resize beyond it fails as a full disk would.
    capacity: Option<u64>,
}

fn apply(image: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::SetLen(len) => image.resize(*len as usize, 0),
        Pending::Write(offset, data) => {
            let end = *offset as usize + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[*offset as usize..end].copy_from_slice(data);
        }
    }
}

impl Disk {
    fn tick(&mut self) -> std::io::Result<()> {
        if self.dead {
            return Err(io_err("the power is off"));
        }
        if let Some(n) = &mut self.countdown {
            if *n == 0 {
                self.dead = true;
                return Err(io_err("power cut"));
            }
            *n -= 1;
        }
        Ok(())
    }

    /// Whether a file of `len` bytes fits on the disk.
    fn room(&self, len: u64) -> std::io::Result<()> {
        match self.capacity {
            Some(c) if len > c => Err(std::io::Error::from(std::io::ErrorKind::StorageFull)),
            _ => Ok(()),
        }
    }

    /// The image found after the power comes back.
    fn after_power_cut(&self, rng: &mut Rng) -> Vec<u8> {
        let mut image = self.durable.clone();
        for op in &self.pending {
            match (op, rng.below(4)) {
                // Lost.
                (_, 0) => {}
                // Torn: only a prefix of whole 512-byte sectors made it.
                (Pending::Write(offset, data), 1) if data.len() > 512 => {
                    let sectors = data.len() as u64 / 512;
                    let keep = rng.below(sectors) as usize * 512;
                    apply(&mut image, &Pending::Write(*offset, data[..keep].to_vec()));
                }
                (op, _) => apply(&mut image, op),
            }
        }
        image
    }
}

#[derive(Debug, Clone)]
struct Faulty(Arc<Mutex<Disk>>);

impl StorageBackend for Faulty {
    fn len(&self) -> std::io::Result<u64> {
        let d = self.0.lock().map_err(|_| io_err("poisoned"))?;
        if d.dead {
            return Err(io_err("the power is off"));
        }
        Ok(d.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let mut d = self.0.lock().map_err(|_| io_err("poisoned"))?;
        d.tick()?;
        let start = offset as usize;
        let src = d
            .current
            .get(start..start + out.len())
            .ok_or_else(|| io_err("read past the end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut d = self.0.lock().map_err(|_| io_err("poisoned"))?;
        d.tick()?;
        d.room(len)?;
        let op = Pending::SetLen(len);
        apply(&mut d.current, &op);
        d.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let mut d = self.0.lock().map_err(|_| io_err("poisoned"))?;
        d.tick()?;
        d.durable = d.current.clone();
        d.pending.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut d = self.0.lock().map_err(|_| io_err("poisoned"))?;
        d.tick()?;
        d.room(offset + data.len() as u64)?;
        let op = Pending::Write(offset, data.to_vec());
        apply(&mut d.current, &op);
        d.pending.push(op);
        Ok(())
    }
}

fn disk(image: Vec<u8>, countdown: Option<u64>) -> Arc<Mutex<Disk>> {
    Arc::new(Mutex::new(Disk {
        durable: image.clone(),
        current: image,
        countdown,
        ..Disk::default()
    }))
}

fn member(name: String, i: u64) -> NewMember {
    NewMember {
        name,
        birth_year: 1950 + (i % 60) as i64,
        gender: Gender::Male,
        education: Education::ALL[(i % 7) as usize],
        joined_on: "2020-01-15".into(),
        status: MemberStatus::Full,
        phone: None,
        id_number: None,
        categories: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_power_cuts_below_redb() {
    // A county's store: it keeps the sorted index of its member listings, which the views'
    // check after each cut covers with the rest.
    let me: UnitId = "c01/k01".parse().unwrap();
    let units: Vec<UnitId> = ["c01/k01/t01", "c01/k01/t01/v01", "c01/k01/t01/v02"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let mut image = Vec::new();
    let mut acked: Vec<(MemberId, String)> = Vec::new();
    let mut cuts = 0;
    let options = StoreOptions::default();
    for round in 0..ROUNDS {
        let mut rng = Rng(round as u64 * 7919 + 17);
        // The faulty run: writers until the power cut.
        let countdown = 20 + rng.below(400);
        let faulty = disk(image.clone(), Some(countdown));
        let opened = redb::Database::builder()
            .create_with_backend(Faulty(faulty.clone()))
            .map_err(|e| e.to_string())
            .and_then(|db| {
                store::open_database(db, me.clone(), options).map_err(|e| e.to_string())
            });
        match opened {
            Err(e) => assert!(
                faulty.lock().unwrap().dead,
                "round {round}: open failed without an injected fault: {e}"
            ),
            Ok((h, _r, t)) => {
                let writers = (0..4u64).map(|w| {
                    let (h, units) = (h.clone(), units.clone());
                    async move {
                        let mut done = Vec::new();
                        for i in 0..25u64 {
                            let name = format!("r{round} w{w} n{i}");
                            let unit = units[((w + i) % 3) as usize].clone();
                            match h.create_member(unit, member(name.clone(), i)).await {
                                Ok(m) => done.push((m.id, name)),
                                Err(_) => break,
                            }
                        }
                        done
                    }
                });
                for done in futures::future::join_all(writers).await {
                    acked.extend(done);
                }
                t.shutdown().await;
            }
        }
        {
            let d = faulty.lock().unwrap();
            if d.dead {
                cuts += 1;
                image = d.after_power_cut(&mut rng);
            } else {
                image = d.current.clone();
            }
        }

        // The power is back: the store opens, nothing acknowledged is missing, views hold.
        let clean = disk(image.clone(), None);
        let db = redb::Database::builder()
            .create_with_backend(Faulty(clean.clone()))
            .unwrap_or_else(|e| panic!("round {round}: redb did not open after a cut: {e}"));
        let (h, r, t) = store::open_database(db, me.clone(), options)
            .unwrap_or_else(|e| panic!("round {round}: the store did not open after a cut: {e}"));
        for (id, name) in &acked {
            let m = r.member(id).unwrap();
            assert_eq!(
                m.map(|m| m.name).as_deref(),
                Some(name.as_str()),
                "round {round}: acknowledged write lost"
            );
        }
        let diffs = h.verify_views().await.unwrap();
        assert!(diffs.is_empty(), "round {round}: {diffs:?}");
        assert!(r.rollup(&me).unwrap().members as usize >= acked.len());
        t.shutdown().await;
        drop((h, r));
        // Opening may have repaired the image: continue from what it left.
        image = clean.lock().unwrap().current.clone();
    }
    assert!(
        cuts >= ROUNDS / 2,
        "only {cuts} power cuts in {ROUNDS} rounds"
    );
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
}

/// A disk that fills up: the write that does not fit is refused with a clear reason, the
/// store says it can no longer write (the node then stops), and once there is room again
/// the store opens with every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_and_loses_none() {
    let me: UnitId = "c01/k01/t01/v01".parse().unwrap();
    let faulty = disk(Vec::new(), None);
    let db = redb::Database::builder()
        .create_with_backend(Faulty(faulty.clone()))
        .unwrap();
    let (h, r, t) = store::open_database(db, me.clone(), StoreOptions::default()).unwrap();
    h.set_profile("Liujia".into(), vec![]).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(
            h.create_member(me.clone(), member(format!("n{i}"), i))
                .await
                .unwrap()
                .id,
        );
    }
    assert_eq!(h.failure(), None);
    {
        // Room for redb to double the file once (it grows that way), so writes are taken
        // until it needs to grow again: whether one more fits in a fixed margin would
        // depend on the free pages left inside the file.
        let mut d = faulty.lock().unwrap();
        d.capacity = Some(d.current.len() as u64 * 2 + (64 << 10));
    }
    let mut refused = None;
    for i in 20..5_000u64 {
        match h
            .create_member(me.clone(), member(format!("n{i}"), i))
            .await
        {
            Ok(m) => acked.push(m.id),
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let refused = refused.expect("the disk never filled");
    assert!(
        refused.contains("not stored") && refused.contains("the disk is full"),
        "{refused}"
    );
    let reason = tokio::time::timeout(std::time::Duration::from_secs(5), h.failed())
        .await
        .expect("the store did not report its failure");
    assert!(reason.contains("the disk is full"), "{reason}");
    assert_eq!(h.failure().as_deref(), Some(reason.as_str()));
    // Later writes are refused too, not hung.
    let later = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        h.create_member(me.clone(), member("late".into(), 1)),
    )
    .await
    .expect("a write hung on the failed store");
    assert!(later.is_err());
    t.shutdown().await;
    drop((h, r));

    // Room again (the operator freed some): every acknowledged write is there.
    let image = faulty.lock().unwrap().current.clone();
    let db = redb::Database::builder()
        .create_with_backend(Faulty(disk(image, None)))
        .unwrap();
    let (h, r, t) = store::open_database(db, me.clone(), StoreOptions::default()).unwrap();
    for id in &acked {
        assert!(r.member(id).unwrap().is_some(), "acknowledged {id} lost");
    }
    assert!(h.verify_views().await.unwrap().is_empty());
    assert!(acked.len() > 20, "no write taken before the disk filled");
    t.shutdown().await;
}
