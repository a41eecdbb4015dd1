//! Compaction off the store thread, and automerge's loading of registers taken unread
//! ([`Check`]), which the same thread does ahead of a fold still waiting for quiet (not of
//! one that may wait no longer).
//!
//! Folding a document's change rows into a snapshot means loading and saving the whole
//! document: tens of milliseconds for a large register. Done on the store thread, every write
//! queued behind it waited that long (it was most of the ingest benchmark's ack p99). The
//! compactor thread reads only what is already committed (snapshot and rows below a sequence
//! number, in its own read transaction), so it needs neither the loaded documents nor the
//! store thread; the store thread then writes the snapshot and deletes exactly those rows in
//! one of its own transactions, so a crash at any point leaves either the old snapshot and all
//! rows or the new snapshot and the newer rows.
//!
//! A compaction waits for the store to be quiet for [`QUIET`] (at most [`MAX_DEFER`]): on a
//! two-core machine a load and save running beside a burst of writes made the commits of the
//! burst several times slower (a lower thread priority did not help). Under sustained load it
//! runs after [`MAX_DEFER`] anyway, and at once when the rows have piled up to four times the
//! thresholds, so change rows stay bounded.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::collections::{BTreeMap, VecDeque};

use automerge::{Automerge, ChangeHash, ReadDoc};
use grassroots_schema::{DocId, Member, RecordId};
use redb::Database;
use tokio::sync::mpsc;

use super::{Command, StoreError, load};

/// How long the store must have been without work before a compaction starts.
pub(super) const QUIET: Duration = Duration::from_millis(50);
/// How long a compaction waits for quiet at most.
pub(super) const MAX_DEFER: Duration = Duration::from_secs(2);
/// How long automerge's loading of a register taken unread waits for quiet at most: the
/// register goes on to the next level up only once loaded.
pub(super) const CHECK_DEFER: Duration = Duration::from_millis(200);

/// When the store last had work, shared by the store thread (which notes it) and the
/// compactor (which waits for it to be long enough ago).
#[derive(Debug)]
pub(super) struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    /// Set when the store stops: a job still waiting is dropped.
    closing: AtomicBool,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        }
    }

    /// Note that the store is working now.
    pub fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    /// Sleep until the store has been quiet for [`QUIET`], or for `at_most`, or until
    /// `interrupt` says to stop waiting (asked at least every [`QUIET`]).
    fn wait_for_quiet(&self, at_most: Duration, mut interrupt: impl FnMut() -> bool) -> Wait {
        let start = Instant::now();
        loop {
            if self.closing.load(Ordering::Relaxed) {
                return Wait::Closing;
            }
            let quiet = self.quiet_for();
            let waited = start.elapsed();
            if quiet >= QUIET || waited >= at_most {
                return Wait::Done;
            }
            if interrupt() {
                return Wait::Interrupted;
            }
            std::thread::sleep((QUIET - quiet).min(at_most - waited));
        }
    }
}

/// How a wait for quiet ended.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    /// Quiet, or waited long enough: start.
    Done,
    /// Other work should go first.
    Interrupted,
    /// The store is stopping: drop the work.
    Closing,
}

/// Fold the rows of `doc` with sequence numbers below `upto` (every row persisted when the
/// job was made) into a new snapshot. The counts are those rows' share of the document's
/// compaction bookkeeping, subtracted when the result is stored.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub doc: DocId,
    pub upto: u64,
    pub rows: u32,
    pub changes: usize,
    pub bytes: u64,
    /// The rows have piled up (a store that never goes quiet): start without waiting.
    pub urgent: bool,
}

/// A finished job and the snapshot it made of what it covered.
#[derive(Debug)]
pub(super) struct Done {
    pub job: Job,
    pub snapshot: Result<Vec<u8>, StoreError>,
}

/// A register taken unread (see [`crate::sync::Unread`]), for automerge to load here, off
/// the store thread, once the store is quiet: a 5,000-change register takes 13-26 ms to
/// load, which the parent's taking it no longer waits for.
#[derive(Debug)]
pub(super) struct Check {
    pub doc: DocId,
    pub bytes: Arc<[u8]>,
    pub heads: Vec<ChangeHash>,
    pub members: Arc<BTreeMap<RecordId, Option<Member>>>,
}

/// A register as automerge loaded it ([`crate::sync::load_unread`]).
#[derive(Debug)]
pub(super) struct CheckDone {
    pub doc: DocId,
    pub heads: Vec<ChangeHash>,
    pub loaded: crate::sync::Checked,
}

/// Work for the compactor thread.
#[derive(Debug)]
enum Work {
    Fold(Job),
    Check(Check),
}

impl Work {
    fn is_check(&self) -> bool {
        matches!(self, Work::Check(_))
    }
}

/// The compactor thread and the way to give it work.
#[derive(Debug)]
pub(super) struct Compactor {
    jobs: Option<std_mpsc::Sender<Work>>,
    thread: Option<JoinHandle<()>>,
    activity: Arc<Activity>,
}

impl Compactor {
    /// Start the thread. Results come back as [`Command::Compacted`] through a weak sender,
    /// so the compactor never keeps the store's inbox open on its own.
    pub fn spawn(
        database: Arc<Database>,
        inbox: mpsc::WeakSender<Command>,
        activity: Arc<Activity>,
        name: String,
    ) -> Result<Compactor, StoreError> {
        let (jobs, rx) = std_mpsc::channel::<Work>();
        let shared = activity.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let mut pending = VecDeque::new();
                // Since when the fold under way (the store submits one at a time) has been
                // here: seen at the top of each round, so registers taken ahead of it count
                // against its time too.
                let mut fold_since: Option<Instant> = None;
                loop {
                    if pending.is_empty() {
                        match rx.recv() {
                            Ok(work) => pending.push_back(work),
                            Err(_) => return,
                        }
                    }
                    pending.extend(rx.try_iter());
                    if fold_since.is_none() && pending.iter().any(|w| !w.is_check()) {
                        fold_since = Some(Instant::now());
                    }
                    // Registers to load go first (one goes up to the next level only once
                    // loaded, while a fold only makes the rows fewer), except before a fold
                    // that may not wait: urgent, or waiting its longest already.
                    let waited_out = fold_since.is_some_and(|t| t.elapsed() >= MAX_DEFER);
                    let next = pending
                        .iter()
                        .position(|w| matches!(w, Work::Fold(j) if j.urgent || waited_out))
                        .or_else(|| pending.iter().position(Work::is_check))
                        .unwrap_or(0);
                    let Some(work) = pending.remove(next) else {
                        continue;
                    };
                    let at_most = match &work {
                        Work::Fold(job) if job.urgent => Duration::ZERO,
                        Work::Fold(_) => MAX_DEFER
                            .saturating_sub(fold_since.map_or(Duration::ZERO, |t| t.elapsed())),
                        Work::Check(_) => CHECK_DEFER,
                    };
                    let is_fold = !work.is_check();
                    // A fold waiting for quiet gives way to a register that comes meanwhile,
                    // and then waits what is left of its time.
                    let wait = activity.wait_for_quiet(at_most, || {
                        pending.extend(rx.try_iter());
                        is_fold && pending.iter().any(Work::is_check)
                    });
                    match wait {
                        Wait::Closing => return,
                        Wait::Interrupted => {
                            pending.push_front(work);
                            continue;
                        }
                        Wait::Done => {}
                    }
                    if is_fold {
                        fold_since = None;
                    }
                    let done = match work {
                        Work::Fold(job) => {
                            let snapshot = fold(&database, &job);
                            Command::Compacted(Done { job, snapshot })
                        }
                        Work::Check(c) => {
                            let loaded = crate::sync::load_unread(
                                &c.bytes,
                                &c.heads,
                                &c.members,
                                &c.doc.owner,
                            );
                            Command::Checked(CheckDone {
                                doc: c.doc,
                                heads: c.heads,
                                loaded,
                            })
                        }
                    };
                    let Some(inbox) = inbox.upgrade() else { return };
                    if inbox.blocking_send(done).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start compactor thread: {e}")))?;
        Ok(Compactor {
            jobs: Some(jobs),
            thread: Some(thread),
            activity: shared,
        })
    }

    /// Hand a job over; false if the thread is gone (compaction then stops, nothing is lost:
    /// the rows stay and are read as before).
    pub fn submit(&self, job: Job) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|j| j.send(Work::Fold(job)).is_ok())
    }

    /// Hand a register over to be loaded; false if the thread is gone.
    pub fn check(&self, check: Check) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|j| j.send(Work::Check(check)).is_ok())
    }

    /// Stop taking jobs, drop those still waiting, and wait for the thread. The
    /// store's inbox must be closed first, so a result being sent fails instead of waiting for
    /// a reader that is gone.
    pub fn stop(&mut self) {
        self.activity.closing.store(true, Ordering::Relaxed);
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read the snapshot and the rows below `job.upto` as committed now, and save them as one.
pub(super) fn fold(database: &Database, job: &Job) -> Result<Vec<u8>, StoreError> {
    let key = job.doc.to_string();
    let bytes = load::committed_bytes(database, &job.doc, job.upto)?;
    // Our own committed bytes, but a panic in automerge must still not take the thread down
    // silently with the job half done: it becomes an error like any other.
    let saved = catch_unwind(AssertUnwindSafe(|| {
        Automerge::load(&bytes).map(|d: Automerge| {
            // automerge loads a change whose dependencies are missing without an error and
            // leaves it out of the save: the rows, deleted once the snapshot is stored, would
            // take it with them. Such a document is not folded; its rows stay.
            let missing = d.get_missing_deps(&[]);
            if missing.is_empty() {
                Ok(crate::doc::save(&d))
            } else {
                Err(missing.len())
            }
        })
    }));
    match saved {
        Ok(Ok(Ok(s))) => Ok(s),
        Ok(Ok(Err(missing))) => Err(StoreError::Corrupt(format!(
            "document {key}: its stored changes lack {missing} of the changes they depend on; \
             not compacted, its rows are kept"
        ))),
        Ok(Err(e)) => Err(StoreError::Corrupt(format!("document {key}: {e}"))),
        Err(_) => Err(StoreError::Corrupt(format!(
            "document {key}: automerge panicked while compacting"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tables::{CHANGES, SNAPSHOTS};
    use automerge::transaction::Transactable;

    /// A change row whose dependency is in no row (a row lost to a bug or bit rot) is not
    /// folded: automerge would load it into its queue and leave it out of the save, and the
    /// rows would then be deleted. With every dependency there, the fold keeps every change.
    #[test]
    fn rows_missing_a_dependency_are_not_folded() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::create(dir.path().join("s.redb")).unwrap();
        let id = DocId::new(grassroots_schema::DocKind::Members, "c01".parse().unwrap());
        let key = id.to_string();
        let mut d = Automerge::new();
        let edit = |d: &mut Automerge, n: i64| {
            let mut tx = d.transaction();
            tx.put(automerge::ROOT, "n", n).unwrap();
            tx.commit();
            d.get_last_local_change().unwrap().raw_bytes().to_vec()
        };
        edit(&mut d, 0);
        let snapshot = d.save();
        let (one, two) = (edit(&mut d, 1), edit(&mut d, 2));
        let write = |rows: &[&[u8]]| {
            let tx = database.begin_write().unwrap();
            {
                tx.open_table(SNAPSHOTS)
                    .unwrap()
                    .insert(key.as_str(), snapshot.as_slice())
                    .unwrap();
                let mut changes = tx.open_table(CHANGES).unwrap();
                changes.retain(|_, _| false).unwrap();
                for (seq, row) in rows.iter().enumerate() {
                    changes.insert((key.as_str(), seq as u64), *row).unwrap();
                }
            }
            tx.commit().unwrap();
        };
        let job = |upto| Job {
            doc: id.clone(),
            upto,
            rows: 1,
            changes: 1,
            bytes: 0,
            urgent: true,
        };
        // The second change alone: the first, which it depends on, is in no row.
        write(&[two.as_slice()]);
        match fold(&database, &job(1)) {
            Err(StoreError::Corrupt(why)) => assert!(why.contains("lack 1"), "{why}"),
            other => panic!("folded without a dependency: {:?}", other.map(|s| s.len())),
        }
        write(&[one.as_slice(), two.as_slice()]);
        let folded = Automerge::load(&fold(&database, &job(2)).unwrap()).unwrap();
        assert_eq!(folded.get_heads(), d.get_heads());
    }

    /// A compactor whose store never goes quiet, and where its results come back.
    fn never_quiet() -> (
        Compactor,
        mpsc::Sender<Command>,
        mpsc::Receiver<Command>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let database = Arc::new(Database::create(dir.path().join("s.redb")).unwrap());
        let (inbox, results) = mpsc::channel(64);
        let activity = Arc::new(Activity::new());
        // Work "now" for ever: `quiet_for` saturates to zero.
        activity.last_ms.store(u64::MAX, Ordering::Relaxed);
        let compactor =
            Compactor::spawn(database, inbox.downgrade(), activity, "c".into()).unwrap();
        (compactor, inbox, results, dir)
    }

    fn fold_job(urgent: bool) -> Job {
        Job {
            doc: DocId::new(grassroots_schema::DocKind::Members, "c01".parse().unwrap()),
            upto: 1,
            rows: 1,
            changes: 1,
            bytes: 0,
            urgent,
        }
    }

    fn check_job() -> Check {
        Check {
            doc: DocId::new(grassroots_schema::DocKind::Members, "c01".parse().unwrap()),
            bytes: Arc::from(Vec::new()),
            heads: Vec::new(),
            members: Arc::new(BTreeMap::new()),
        }
    }

    fn stopped(
        mut compactor: Compactor,
        inbox: mpsc::Sender<Command>,
        mut results: mpsc::Receiver<Command>,
    ) {
        drop(inbox);
        results.close();
        compactor.stop();
    }

    /// A register to load goes ahead of a fold waiting for the store to be quiet (under
    /// steady work, [`MAX_DEFER`]): the register goes up only once loaded.
    #[test]
    fn a_register_to_load_goes_ahead_of_a_waiting_fold() {
        let (compactor, inbox, mut results, _dir) = never_quiet();
        assert!(compactor.submit(fold_job(false)));
        // The fold is waiting by now.
        std::thread::sleep(Duration::from_millis(100));
        assert!(compactor.check(check_job()));
        let first = results.blocking_recv().unwrap();
        assert!(matches!(first, Command::Checked(_)), "{}", first.name());
        let second = results.blocking_recv().unwrap();
        assert!(matches!(second, Command::Compacted(_)), "{}", second.name());
        stopped(compactor, inbox, results);
    }

    /// However many registers come, a fold waits no more than [`MAX_DEFER`] in all, from
    /// when it came (the store submits no other fold meanwhile, so rows would pile up), and
    /// an urgent one goes ahead of registers that come after it.
    #[test]
    fn registers_to_load_do_not_hold_a_fold_back() {
        let (compactor, inbox, mut results, _dir) = never_quiet();
        // The fold comes while a register is loading, and registers come faster than they
        // are loaded (each after its 200 ms wait): one is always there before the fold.
        assert!(compactor.check(check_job()));
        assert!(compactor.submit(fold_job(false)));
        let started = std::time::Instant::now();
        let (mut sent, mut loaded) = (1, 0);
        let folded = loop {
            if sent < 30 {
                assert!(compactor.check(check_job()));
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(150));
            let mut folded = false;
            while let Ok(done) = results.try_recv() {
                folded |= matches!(done, Command::Compacted(_));
                loaded += usize::from(matches!(done, Command::Checked(_)));
            }
            if folded {
                break started.elapsed();
            }
            assert!(started.elapsed() < Duration::from_secs(10), "never folded");
        };
        assert!(
            sent < 30,
            "folded only once the registers stopped ({folded:?})"
        );
        while loaded < sent {
            let done = results.blocking_recv().unwrap();
            loaded += usize::from(matches!(done, Command::Checked(_)));
        }
        // An urgent fold behind a register already waiting, ahead of one that came after.
        assert!(compactor.check(check_job()));
        std::thread::sleep(Duration::from_millis(50));
        assert!(compactor.submit(fold_job(true)));
        assert!(compactor.check(check_job()));
        let order: Vec<&str> = (0..3)
            .map(|_| results.blocking_recv().unwrap().name())
            .collect();
        assert_eq!(order, ["Checked", "Compacted", "Checked"]);
        stopped(compactor, inbox, results);
    }
}
