//! The store: one actor owns redb and the hosted automerge documents.
//!
//! Everything that changes state goes through [`StoreHandle`] to the actor thread, which
//! drains its inbox in batches, applies each command to the sync [`Engine`], then commits the
//! whole batch in one redb write transaction (group commit: many writers share one fsync) and
//! only then answers callers and sends sync messages to peers. So an acknowledged write is
//! durable, and a node forwards only what it has stored. Reads of the query views go through
//! [`StoreReader`] and never touch the actor.

pub mod backup;
mod compact;
mod load;
mod order;
mod reader;
mod rollup;
pub mod tables;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use automerge::{Automerge, ChangeHash};
use grassroots_schema::{
    DocId, DocKind, DocMeta, Fields, Member, MemberId, MemberPatch, NewMember, Record, RecordError,
    RecordId, RecordRef, Role, Stamp, UnitDetails, UnitId, UnitProfile, entity,
};
use redb::{Database, ReadableDatabase, ReadableTable};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use order::MemberOrder;
pub use reader::{
    BackupLog, FeedCursor, FeedEntry, FeedPage, FeedRows, MemberCursor, MemberFilter, MemberPage,
    Order, OrderedCursor, OrderedPage, RecordFilter, RecordPage, RecordQuery, SortKey, StoreReader,
    TokenUser,
};
use tables::*;

use crate::doc::{self, DocError};
use crate::status::{LinkCounters, LinkStatus, NodeStatus, now_ms};
use crate::sync::wire::{self, Msg};
use crate::sync::{Engine, Rejection};

/// Incremental change rows per document before they are folded into a snapshot.
const SNAPSHOT_EVERY: u32 = 64;
/// Changes since the snapshot before they are folded into a new one: automerge loads a
/// compacted document many times faster than the same history as raw changes.
const SNAPSHOT_CHANGES: usize = 1_000;
/// Bytes of change rows since the snapshot before they are folded into a new one: batched
/// writes make few, large changes, which the change count alone would let pile up.
const SNAPSHOT_BYTES: u64 = 256 << 10;
/// How long a stopping store spends folding due documents at most.
const STOP_COMPACTION: std::time::Duration = std::time::Duration::from_millis(500);
/// Change rows since the snapshot from which a stopping store folds a document even below
/// the thresholds: the next start reads every row of a document it loads.
const STOP_FOLD_ROWS: u32 = 8;
/// Random low bits of a record id (the rest is the creation time in seconds).
const RECORD_RANDOM_BITS: u32 = 32;
/// How long the store waits for the rest of a group of concurrent writers, and how often.
const LINGER: std::time::Duration = std::time::Duration::from_micros(20);

const LINGER_ROUNDS: u32 = 2;
/// Change notifications buffered per subscriber.
pub const CHANGE_FEED: usize = 1024;
/// Most commands applied in one commit.
const MAX_BATCH: usize = 512;
/// Inbox capacity: callers wait (backpressure) when the actor is this far behind.
const INBOX: usize = 4096;
/// Messages refused from one peer on one connection before the connection is closed: an
/// honest peer's refusals are a few documents a session (each refused document is frozen),
/// a hostile one's could otherwise flood the log and the replies.
const MAX_REJECTED_PER_LINK: u32 = 1024;
/// How long a peer cut off for [`MAX_REJECTED_PER_LINK`] refusals a second time is refused
/// links; doubled at each cut-off after, up to [`MAX_KEPT_OFF_MS`]. Otherwise it could
/// redial at once and have another thousand messages checked. The first cut-off keeps no
/// peer off (one bad session of an honest child), nor does one an hour after the last.
#[cfg(not(test))]
const KEPT_OFF_MS: u64 = 30_000;
#[cfg(test)]
const KEPT_OFF_MS: u64 = 2_000;
/// The longest a peer is kept off, and how long after its last cut-off (or time off) a
/// peer's count of them starts again.
const MAX_KEPT_OFF_MS: u64 = 3_600_000;
/// A peer's refused messages (and undecodable frames) carry over to its next connection,
/// less one for each this long since the last (since the last connection's end, for the
/// frames): redialling does not start the count again, and an honest child refused a few
/// documents each session on a link that keeps dropping (relayed data judged on profiles
/// not here yet) does not add up to a closing.
const REFUSAL_FORGIVEN_MS: u64 = 1_000;

/// `count` refusals (or undecodable frames), the last at `at`, as carried to a connection
/// coming up at `now`: less one for each [`REFUSAL_FORGIVEN_MS`] since.
fn carried(count: u32, at: u64, now: u64) -> u32 {
    let forgiven = now.saturating_sub(at) / REFUSAL_FORGIVEN_MS;
    count.saturating_sub(u32::try_from(forgiven).unwrap_or(u32::MAX))
}

/// A child closed for what it sent, for the `count`th time in a row (0: the first), the
/// last at `last_ms` and kept off until `until_ms`, closed again at `now`: its count from
/// now, and how long it is kept off (ms). The count starts again once a closing comes
/// [`MAX_KEPT_OFF_MS`] after the last one and its time off.
fn keep_off(count: u32, last_ms: u64, until_ms: u64, now: u64) -> (u32, u64) {
    let count = if now.saturating_sub(last_ms.max(until_ms)) > MAX_KEPT_OFF_MS {
        0
    } else {
        count
    };
    let off = match count {
        0 => 0,
        n => KEPT_OFF_MS
            .saturating_mul(1u64 << (n - 1).min(20))
            .min(MAX_KEPT_OFF_MS),
    };
    (count.saturating_add(1), off)
}

/// The log's words for a peer kept off for `off` ms (none for 0).
fn kept_off_for(off: u64) -> String {
    if off > 0 {
        format!(", and refusing its links for {} s", off.div_ceil(1000))
    } else {
        String::new()
    }
}
/// Bytes waiting to be sent to one peer before its connection is closed: an honest peer
/// reads what it asked for; one that keeps asking without reading would hold this node's
/// memory.
const MAX_OUTBOX_BYTES: u64 = 256 << 20;
/// Sync data packed into one `SyncBatch` frame at most (well under the frame cap).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// A batch taking this long is logged with where its time went.
const SLOW_BATCH: std::time::Duration = std::time::Duration::from_secs(1);
/// Peers' frames worked through in one batch at most, after its local commands.
const MAX_PEER_FRAMES: usize = 256;
/// Work on peers' frames after which a batch takes no more of them (at least one is taken):
/// a debug build or a slow board spends 40-50 ms on a frame for a register of 2,000
/// members, and a batch of 500 such frames held a local write 29 s.
const PEER_WORK: std::time::Duration = std::time::Duration::from_millis(500);
/// Capacity of the peers' inbox (frames, and links gone down): readers wait when the store
/// is this far behind, beside their links' own budgets.
const PEER_INBOX: usize = 4096;
/// How long after a restore from a backup (or `grassroots store take-back`, by default) the
/// node takes changes authored at or above its unit from its children. A child never sends
/// those otherwise (it got them from here), so outside this window they are refused as
/// forgeries; inside it they are what the node wrote after the backup and reached a child
/// only. Long enough for a village that comes online once a week.
pub const RETURNING_WINDOW: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);

/// `window` after `from_ms` (Unix milliseconds).
pub fn window_end(from_ms: u64, window: std::time::Duration) -> u64 {
    from_ms.saturating_add(u64::try_from(window.as_millis()).unwrap_or(u64::MAX))
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb failed.
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    /// Another process (a running node) holds the database.
    #[error("the store at {0} is in use by another process (is the node running?)")]
    Locked(String),
    /// Stored bytes do not decode.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The actor has stopped.
    #[error("the store has shut down")]
    Closed,
    /// The store's random source failed.
    #[error("no randomness available")]
    Random,
    /// What was asked to be stored is invalid (a user's name).
    #[error(transparent)]
    Invalid(#[from] RecordError),
    /// The store belongs to another unit's node.
    #[error("this store belongs to the node of {owner}, not {me}")]
    NotOwner {
        /// The unit the store was made for.
        owner: String,
        /// The unit it was opened for.
        me: UnitId,
    },
    /// A newer build wrote the store.
    #[error(
        "the store has layout {layout}, written by a newer build (this one reads up to {}): run that build, or restore a backup taken before the upgrade",
        tables::LAYOUT
    )]
    TooNew {
        /// The store's layout.
        layout: u64,
    },
    /// A commit failed: the write is not stored.
    #[error("not stored: {0}")]
    NotStored(String),
    /// A link came up with a certificate revoked in its issuer's profile as this node
    /// holds it now (the check at the handshake reads what is committed).
    #[error("certificate {0} is revoked")]
    Revoked(String),
    /// A link came up from a peer cut off for too many refused messages, before its time
    /// off ended.
    #[error(
        "{peer} was closed twice for what it sent (refused messages, frames that do not decode or over the cap): links from it are refused for {secs} s more"
    )]
    KeptOff {
        /// The peer.
        peer: UnitId,
        /// Seconds left.
        secs: u64,
    },
    /// A restore of this store was interrupted: its staged copy is still there.
    #[error(
        "a restore of this store was interrupted ({0} is left): run `grassroots store restore` \
         again, or remove {0} to go on with the store as it is (an empty one where the restore \
         was bringing one back to a folder without a store)"
    )]
    RestoreInterrupted(String),
    /// A file operation outside redb failed (a backup, a restore).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Why a write was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Field validation failed.
    #[error(transparent)]
    Invalid(#[from] RecordError),
    /// The record does not exist here.
    #[error("no member {0}")]
    NotFound(MemberId),
    /// The record does not exist here.
    #[error("no record {0}")]
    NoRecord(RecordRef),
    /// Another write of this member is being stored in the same commit as a transfer of it:
    /// one of the two is refused, to be asked again.
    #[error("member {0} has a write being stored with its transfer; ask again")]
    InFlight(MemberId),
    /// A transfer made the member in its new register but could not remove it from the old
    /// one (automerge refused that document's writes): it is in both now.
    #[error("made as {made} but not removed from its old register: {detail}")]
    NotRemoved {
        /// The member as made in its new register.
        made: MemberId,
        /// Why it was not removed.
        detail: String,
    },
    /// Records of this kind are not removed (complaints, reports, appraisals).
    #[error("{0:?} records are not removed: the levels above hold their unit to account by them")]
    NotRemovable(DocKind),
    /// The kind has no records of its own (members and profiles have their own writes).
    #[error("{0:?} documents do not hold records of this kind")]
    NotARecordKind(DocKind),
    /// The unit's profile has not reached this node (and no name was given to register it).
    #[error("unit {0} is not known here (give its name to register it)")]
    NoUnit(UnitId),
    /// Only a unit's parent may revoke its certificate.
    #[error("{0} is not a child of this node")]
    NotAChild(UnitId),
    /// A certificate fingerprint is not 64 lower-case hex digits.
    #[error("fingerprint must be 64 lower-case hex digits (SHA-256)")]
    BadFingerprint,
    /// The node may not hold or author this document (rules 1 and 2).
    #[error("{}", .0.detail)]
    Refused(Rejection),
    /// automerge failed.
    #[error(transparent)]
    Doc(#[from] DocError),
    /// Storage failed; nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

type Reply = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

enum Command {
    CreateMember {
        unit: UnitId,
        member: NewMember,
        by: Option<Writer>,
        request: Option<String>,
        reply: oneshot::Sender<Result<Member, WriteError>>,
    },
    UpdateMember {
        id: MemberId,
        patch: MemberPatch,
        by: Option<Writer>,
        reply: oneshot::Sender<Result<Member, WriteError>>,
    },
    CreateRecord {
        kind: DocKind,
        unit: UnitId,
        fields: Fields,
        by: Option<Writer>,
        request: Option<String>,
        reply: oneshot::Sender<Result<Record, WriteError>>,
    },
    UpdateRecord {
        id: RecordRef,
        fields: Fields,
        by: Option<Writer>,
        reply: oneshot::Sender<Result<Record, WriteError>>,
    },
    DeleteMember {
        id: MemberId,
        reply: oneshot::Sender<Result<Member, WriteError>>,
    },
    TransferMember {
        id: MemberId,
        to: UnitId,
        by: Option<Writer>,
        /// Whether the member's identity and phone numbers move with it.
        sensitive: bool,
        reply: oneshot::Sender<Result<Member, WriteError>>,
        /// The removal's answer (dropped unanswered if the transfer is refused first).
        removed: oneshot::Sender<Result<Member, WriteError>>,
    },
    DeleteRecord {
        id: RecordRef,
        reply: oneshot::Sender<Result<Record, WriteError>>,
    },
    SetUnitDetails {
        unit: UnitId,
        details: UnitDetails,
        reply: oneshot::Sender<Result<UnitProfile, WriteError>>,
    },
    SetProfile {
        name: String,
        children: Vec<UnitId>,
        reply: oneshot::Sender<Result<(), WriteError>>,
    },
    AddUser {
        token_hash: [u8; 32],
        unit: UnitId,
        role: Role,
        name: Option<String>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    RemoveUsers {
        name: String,
        within: UnitId,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    PeerUp {
        peer: UnitId,
        outbox: mpsc::UnboundedSender<Msg>,
        counters: Arc<LinkCounters>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
    VerifyViews {
        reply: oneshot::Sender<Result<Vec<String>, StoreError>>,
    },
    LoadAll {
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    RebuildViews {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    PeerDown {
        peer: UnitId,
        session: u64,
    },
    /// The peers this node expects links with (its parent and registered children).
    Expect {
        peers: Vec<UnitId>,
    },
    /// A dial to `peer` failed.
    DialFailed {
        peer: UnitId,
        error: String,
    },
    /// Tests: block the actor inside a batch (saying so on `entered`) until `until` yields,
    /// so that commands sent meanwhile join that batch.
    #[cfg(test)]
    Hold {
        entered: std::sync::mpsc::Sender<()>,
        until: std::sync::mpsc::Receiver<()>,
    },
    /// Set the peers' share of a batch.
    #[cfg(test)]
    PeerWork(std::time::Duration),
    Revoke {
        child: UnitId,
        fingerprint: String,
        reply: oneshot::Sender<Result<(), WriteError>>,
    },
    FromPeer {
        peer: UnitId,
        /// The connection it came on ([`LinkCounters::session`]): frames an older connection
        /// read after a newer one replaced it are dropped.
        session: u64,
        msg: Msg,
        /// The link's share of the inbox this frame holds, given back once it is handled.
        held: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// A snapshot from the compactor thread, to be stored with the next commit.
    Compacted(compact::Done),
    /// A register taken unread as automerge loaded it on the compactor thread.
    Checked(compact::CheckDone),
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

impl Command {
    /// The command's name, for the slow-batch log.
    fn name(&self) -> &'static str {
        match self {
            Command::CreateMember { .. } => "CreateMember",
            Command::UpdateMember { .. } => "UpdateMember",
            Command::CreateRecord { .. } => "CreateRecord",
            Command::UpdateRecord { .. } => "UpdateRecord",
            Command::DeleteMember { .. } => "DeleteMember",
            Command::TransferMember { .. } => "TransferMember",
            Command::DeleteRecord { .. } => "DeleteRecord",
            Command::SetUnitDetails { .. } => "SetUnitDetails",
            Command::SetProfile { .. } => "SetProfile",
            Command::AddUser { .. } => "AddUser",
            Command::RemoveUsers { .. } => "RemoveUsers",
            Command::PeerUp { .. } => "PeerUp",
            Command::Status { .. } => "Status",
            Command::VerifyViews { .. } => "VerifyViews",
            Command::LoadAll { .. } => "LoadAll",
            Command::RebuildViews { .. } => "RebuildViews",
            Command::PeerDown { .. } => "PeerDown",
            Command::Expect { .. } => "Expect",
            Command::DialFailed { .. } => "DialFailed",
            #[cfg(test)]
            Command::Hold { .. } => "Hold",
            #[cfg(test)]
            Command::PeerWork(_) => "PeerWork",
            Command::Revoke { .. } => "Revoke",
            Command::FromPeer { .. } => "FromPeer",
            Command::Compacted(_) => "Compacted",
            Command::Checked(_) => "Checked",
            Command::Shutdown { .. } => "Shutdown",
        }
    }
}

/// A cloneable handle to the store actor.
///
/// Lifecycle: [`open`] spawns the actor thread and returns the first handle and a
/// [`StoreThread`]. The actor runs until [`StoreThread::shutdown`] (which flushes sync
/// states and joins the thread) or until every handle is dropped.
#[derive(Clone, Debug)]
pub struct StoreHandle {
    tx: mpsc::Sender<Command>,
    /// The peers' inbox: their frames, and their links going down, in the order the links
    /// read them. Kept apart so that local commands never queue behind them.
    peer_tx: mpsc::Sender<Command>,
    changes: broadcast::Sender<DocChange>,
    failure: watch::Receiver<Option<String>>,
}

/// A document whose change was just stored (made here or received from a peer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocChange {
    /// The document.
    pub doc: DocId,
    /// When it was stored, ms since the epoch.
    pub at_ms: u64,
}

/// Owner of the actor thread.
#[derive(Debug)]
pub struct StoreThread {
    handle: StoreHandle,
    thread: Option<JoinHandle<()>>,
}

impl StoreThread {
    /// Ask the actor to persist what it holds and stop, then wait for it.
    pub async fn shutdown(mut self) {
        // The stop is a local command, taken ahead of peers' frames: those still queued are
        // not worked through (on a busy node, that took a minute and more) and the peers
        // offer them again next session. Local writes queued before it are stored.
        let (reply, rx) = oneshot::channel();
        if self
            .handle
            .tx
            .send(Command::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// How a store uses memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Estimated bytes of loaded automerge documents kept after each commit; the least
    /// recently used beyond it are evicted (and read back from the store when next needed).
    pub doc_memory_budget: u64,
    /// redb's page cache (its default is 1 GiB, which a city answering queries over a large
    /// subtree would fill).
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            doc_memory_budget: 64 << 20,
            cache_bytes: 128 << 20,
        }
    }
}

/// The three parts of an open store.
pub type Opened = (StoreHandle, StoreReader, StoreThread);

/// Open (or create) the store at `path` for the node of `me` with default options.
pub fn open(path: &Path, me: UnitId) -> Result<Opened, StoreError> {
    open_with(path, me, StoreOptions::default())
}

/// Open (or create) the store at `path` for the node of `me`.
pub fn open_with(path: &Path, me: UnitId, options: StoreOptions) -> Result<Opened, StoreError> {
    backup::not_restoring(path)?;
    // A new store is private from its creation, and the folder owner's (a command run as
    // root, `user add` before the node's first start, makes it for the node's user).
    crate::files::new_store_file(path).map_err(|source| StoreError::Io {
        what: format!("creating {}", path.display()),
        source,
    })?;
    let database = match Database::builder()
        .set_cache_size(options.cache_bytes)
        .create(path)
    {
        Ok(d) => d,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(StoreError::Locked(path.display().to_string()));
        }
        Err(e) => return Err(db(e)),
    };
    owner_only(path)?;
    let (handle, reader, thread) = open_database(database, me, options)?;
    Ok((handle, reader.with_file(path.to_owned()), thread))
}

/// Make the store file readable and writable by its owner only: it holds personal details
/// and token hashes (its backups are made so too). redb creates it with the process's umask,
/// and a store of an earlier build may be open to every local user.
fn owner_only(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| StoreError::Io { what, source }
        };
        let mode = std::fs::metadata(path)
            .map_err(io("reading the permissions of"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(io("making owner-only"))?;
        }
    }
    Ok(())
}

/// Open a store on an already opened redb database (any storage backend): check the layout
/// and migrate, index the documents (none is loaded until needed), and start the actor.
pub fn open_database(
    database: Database,
    me: UnitId,
    options: StoreOptions,
) -> Result<Opened, StoreError> {
    let database = Arc::new(database);
    load::init_tables(&database, &me)?;
    let mut engine = Engine::new(me.clone(), doc::actor_for(&me, random_bytes()?));
    if let Some(until) = load::take_back_until(&database)?
        && until > now_ms()
    {
        tracing::info!(
            "until {}, changes authored by {me} or above it are taken from its children \
             (what it lost may be held only there: after a restore, or as told)",
            backup::utc_stamp(until)
        );
        engine.take_returning_changes_until(Some(until));
    }
    let mut persisted = HashMap::new();
    load::load_index(&database, &mut engine, &mut persisted)?;
    let source_db = database.clone();
    engine.set_source(Box::new(move |id| {
        load::load_doc(&source_db, id).map_err(|e| e.to_string())
    }));
    let compact_db = database.clone();
    engine.set_compact_source(Box::new(move |id| {
        load::stored_compact(&compact_db, id)
            .inspect_err(|e| tracing::warn!(doc = %id, "cannot read the stored document: {e}"))
            .ok()
            .flatten()
    }));
    let heard = load_heard(&database)?;
    let (tx, rx) = mpsc::channel(INBOX);
    let (peer_tx, peer_rx) = mpsc::channel(PEER_INBOX);
    let activity = Arc::new(compact::Activity::new());
    let (changes, _) = broadcast::channel(CHANGE_FEED);
    let (failure, failed) = watch::channel(None);
    let rollups = Arc::new(reader::RollupCache::default());
    let compactor = compact::Compactor::spawn(
        database.clone(),
        tx.downgrade(),
        activity.clone(),
        format!("compact {me}"),
    )?;
    let due = persisted
        .iter()
        .filter(|(_, p)| p.due())
        .map(|(id, _)| id.clone())
        .collect();
    let actor = Actor {
        db: database.clone(),
        engine,
        outboxes: HashMap::new(),
        persisted,
        links: HashMap::new(),
        dials: HashMap::new(),
        heard,
        retry: BTreeSet::new(),
        unread_fixes: Default::default(),
        forward_when_loaded: HashMap::new(),
        options,
        compactor,
        activity,
        rollups: rollups.clone(),
        changes: changes.clone(),
        due,
        compacting: None,
        last_record: 0,
        last_batch_writes: 0,
        failure,
        peer_work: PEER_WORK,
        peer_until: std::time::Instant::now(),
        peer_rests: std::collections::VecDeque::new(),
        stashed: HashMap::new(),
        unstashed: std::collections::VecDeque::new(),
        rests_first: false,
    };
    // Only to wait on both inboxes at once; it runs nothing else.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| StoreError::Corrupt(format!("cannot start the store's waiter: {e}")))?;
    let thread = std::thread::Builder::new()
        .name(format!("store {me}"))
        .spawn(move || actor.run(rt, rx, peer_rx))
        .map_err(|e| StoreError::Corrupt(format!("cannot start store thread: {e}")))?;
    let handle = StoreHandle {
        tx,
        peer_tx,
        changes,
        failure: failed,
    };
    Ok((
        handle.clone(),
        StoreReader::new(database, rollups),
        StoreThread {
            handle,
            thread: Some(thread),
        },
    ))
}

fn load_heard(database: &Database) -> Result<HashMap<UnitId, u64>, StoreError> {
    let tx = database.begin_read().map_err(db)?;
    let t = tx.open_table(HEARD).map_err(db)?;
    let mut out = HashMap::new();
    for row in t.iter().map_err(db)? {
        let (k, v) = row.map_err(db)?;
        if let Ok(u) = k.value().parse() {
            out.insert(u, v.value());
        }
    }
    Ok(out)
}

/// Per-document persistence bookkeeping, updated only after a commit succeeded.
#[derive(Debug, Clone, Default)]
struct Persisted {
    heads: Vec<ChangeHash>,
    next_seq: u64,
    rows_since_snapshot: u32,
    changes_since_snapshot: usize,
    bytes_since_snapshot: u64,
}

impl Persisted {
    /// Whether the change rows since the snapshot should be folded into a new one.
    fn due(&self) -> bool {
        self.beyond(1)
    }

    /// Whether the rows have piled up to four times the thresholds: compaction then starts
    /// without waiting for the store to be quiet.
    fn backlogged(&self) -> bool {
        self.beyond(4)
    }

    /// Whether the change rows since the snapshot reach `factor` times any threshold.
    fn beyond(&self, factor: u32) -> bool {
        self.rows_since_snapshot >= factor * SNAPSHOT_EVERY
            || self.changes_since_snapshot >= factor as usize * SNAPSHOT_CHANGES
            || self.bytes_since_snapshot >= u64::from(factor) * SNAPSHOT_BYTES
    }

    /// A compaction of every row persisted so far.
    fn job(&self, doc: &DocId) -> compact::Job {
        compact::Job {
            doc: doc.clone(),
            upto: self.next_seq,
            rows: self.rows_since_snapshot,
            changes: self.changes_since_snapshot,
            bytes: self.bytes_since_snapshot,
            urgent: self.backlogged(),
        }
    }
}

impl StoreHandle {
    /// Why the store can no longer write, once a commit has failed in redb or below it (a
    /// full disk, an I/O error). The node should then stop: only a reopen recovers.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Wait until the store can no longer write: a failed commit ([`StoreHandle::failure`])
    /// or its actor gone. Never returns while it can write.
    pub async fn failed(&self) -> String {
        let mut rx = self.failure.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The actor is gone (stopped, or its thread died): it writes nothing more.
            Err(_) => "the store has stopped".into(),
        }
    }

    /// Notifications of stored changes, from now on. A receiver that falls more than
    /// [`CHANGE_FEED`] notifications behind is told how many it missed (`Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<DocChange> {
        self.changes.subscribe()
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    /// [`Self::call`] for commands that answer a `Result`: a stopped actor is
    /// [`StoreError::Closed`].
    async fn ask<T, E: From<StoreError>>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, E>>) -> Command,
    ) -> Result<T, E> {
        self.call(make)
            .await
            .unwrap_or_else(|| Err(StoreError::Closed.into()))
    }

    /// Add a member to `unit`'s register; returns once it is durable.
    pub async fn create_member(
        &self,
        unit: UnitId,
        member: NewMember,
    ) -> Result<Member, WriteError> {
        self.create_member_by(unit, member, None, None).await
    }

    /// [`create_member`](Self::create_member), stamped with who made the write and the time
    /// the store takes it. With a `request` key, a repeat of the create by the same writer
    /// (a retry whose first answer was lost) makes nothing and answers the record the first
    /// made, as it is now (see [`request_record`]).
    pub async fn create_member_by(
        &self,
        unit: UnitId,
        member: NewMember,
        by: Option<Writer>,
        request: Option<&str>,
    ) -> Result<Member, WriteError> {
        let request = request.map(str::to_owned);
        self.ask(|reply| Command::CreateMember {
            unit,
            member,
            by,
            request,
            reply,
        })
        .await
    }

    /// Change fields of a member; returns the merged record once durable.
    pub async fn update_member(
        &self,
        id: MemberId,
        patch: MemberPatch,
    ) -> Result<Member, WriteError> {
        self.update_member_by(id, patch, None).await
    }

    /// [`update_member`](Self::update_member), stamped with who made the write.
    pub async fn update_member_by(
        &self,
        id: MemberId,
        patch: MemberPatch,
        by: Option<Writer>,
    ) -> Result<Member, WriteError> {
        self.ask(|reply| Command::UpdateMember {
            id,
            patch,
            by,
            reply,
        })
        .await
    }

    /// Add a record of one of the [`grassroots_schema::ENTITIES`] to `unit`'s document of
    /// that kind, stamped with its writer; returns once it is durable. The fields are
    /// validated against the kind's description (text trimmed). A `request` key makes a
    /// repeat harmless, as in [`create_member_by`](Self::create_member_by).
    pub async fn create_record(
        &self,
        kind: DocKind,
        unit: UnitId,
        fields: Fields,
        by: Option<Writer>,
        request: Option<&str>,
    ) -> Result<Record, WriteError> {
        let request = request.map(str::to_owned);
        self.ask(|reply| Command::CreateRecord {
            kind,
            unit,
            fields,
            by,
            request,
            reply,
        })
        .await
    }

    /// Set the named fields of a record; returns the merged record once durable.
    pub async fn update_record(
        &self,
        id: RecordRef,
        fields: Fields,
        by: Option<Writer>,
    ) -> Result<Record, WriteError> {
        self.ask(|reply| Command::UpdateRecord {
            id,
            fields,
            by,
            reply,
        })
        .await
    }

    /// Remove a member from its unit's register; returns the record as it was, once the
    /// removal is durable. It travels like any change; who may remove is the gateway's
    /// check (as for an update).
    pub async fn delete_member(&self, id: MemberId) -> Result<Member, WriteError> {
        self.ask(|reply| Command::DeleteMember { id, reply }).await
    }

    /// Move a member to `to`'s register (a member who moved between two branches this node
    /// holds): the record is made there, with its fields and a new id, and removed from
    /// its unit's register, in one commit. Returns the member as made.
    pub async fn transfer_member(
        &self,
        id: MemberId,
        to: UnitId,
        by: Option<Writer>,
    ) -> Result<Member, WriteError> {
        self.transfer(id, to, by, true).await
    }

    /// [`Self::transfer_member`], the member made without its identity and phone numbers
    /// (for a mover who does not read them where the member is, and would where it goes).
    pub async fn transfer_member_without_sensitive(
        &self,
        id: MemberId,
        to: UnitId,
        by: Option<Writer>,
    ) -> Result<Member, WriteError> {
        self.transfer(id, to, by, false).await
    }

    async fn transfer(
        &self,
        id: MemberId,
        to: UnitId,
        by: Option<Writer>,
        sensitive: bool,
    ) -> Result<Member, WriteError> {
        let (removed, was_removed) = oneshot::channel();
        let made = self
            .ask(|reply| Command::TransferMember {
                id,
                to,
                by,
                sensitive,
                reply,
                removed,
            })
            .await?;
        match was_removed.await {
            Ok(Ok(_)) => Ok(made),
            Ok(Err(e)) => Err(WriteError::NotRemoved {
                made: made.id,
                detail: e.to_string(),
            }),
            Err(_) => Err(StoreError::Closed.into()),
        }
    }

    /// Remove a record of one of the [`grassroots_schema::ENTITIES`]; returns it as it was,
    /// once the removal is durable. Records with fields decided from above (complaints,
    /// reports) are never removed ([`WriteError::NotRemovable`]).
    pub async fn delete_record(&self, id: RecordRef) -> Result<Record, WriteError> {
        self.ask(|reply| Command::DeleteRecord { id, reply }).await
    }

    /// Change a unit's name, organisations and activity place (in its profile), creating
    /// the profile of a unit below that has none when a name is given; returns the profile
    /// once durable.
    pub async fn set_unit_details(
        &self,
        unit: UnitId,
        details: UnitDetails,
    ) -> Result<UnitProfile, WriteError> {
        self.ask(|reply| Command::SetUnitDetails {
            unit,
            details,
            reply,
        })
        .await
    }

    /// Write this node's own profile (name and registered children) when it differs.
    pub async fn set_profile(&self, name: String, children: Vec<UnitId>) -> Result<(), WriteError> {
        self.ask(|reply| Command::SetProfile {
            name,
            children,
            reply,
        })
        .await
    }

    /// Bind a token (by its hash) to a unit and role; its user is labelled from the hash.
    pub async fn add_user(
        &self,
        token_hash: [u8; 32],
        unit: UnitId,
        role: Role,
    ) -> Result<(), StoreError> {
        self.add_named_user(token_hash, unit, role, None).await
    }

    /// Bind a token to a unit and role for a named user (named in the records they write).
    pub async fn add_named_user(
        &self,
        token_hash: [u8; 32],
        unit: UnitId,
        role: Role,
        name: Option<String>,
    ) -> Result<(), StoreError> {
        self.ask(|reply| Command::AddUser {
            token_hash,
            unit,
            role,
            name,
            reply,
        })
        .await
    }

    /// Remove every token of the user `name` (or of the label an unnamed token shows) bound
    /// to `within` or a unit below it; how many were removed, once durable.
    pub async fn remove_users(&self, name: String, within: UnitId) -> Result<usize, StoreError> {
        self.ask(|reply| Command::RemoveUsers {
            name,
            within,
            reply,
        })
        .await
    }

    /// A link to `peer` passed its hello: start syncing, sending through `outbox`.
    /// [`StoreError::Revoked`] when its certificate was revoked meanwhile.
    pub async fn peer_up(
        &self,
        peer: UnitId,
        outbox: mpsc::UnboundedSender<Msg>,
        counters: Arc<LinkCounters>,
    ) -> Result<(), StoreError> {
        // Through the peers' inbox, behind what an earlier connection of the peer read and
        // its going down: a quick redial would otherwise replace that connection first and
        // have the frames it read dropped, to be sent again.
        let (reply, rx) = oneshot::channel();
        self.peer_tx
            .send(Command::PeerUp {
                peer,
                outbox,
                counters,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Compare the query views with a rebuild from the documents; returns the differences
    /// (empty when the views are exact).
    pub async fn verify_views(&self) -> Result<Vec<String>, StoreError> {
        self.ask(|reply| Command::VerifyViews { reply }).await
    }

    /// Load every document once through the cache, as a catch-up over the whole store
    /// would, evicting down to the memory budget as it goes; returns how many were loaded.
    /// What the memory benchmark measures a node after (a node answering from its views
    /// alone loads none).
    pub async fn load_every_document(&self) -> Result<u64, StoreError> {
        self.ask(|reply| Command::LoadAll { reply }).await
    }

    /// Rebuild every view row from the documents, in one transaction.
    pub async fn rebuild_views(&self) -> Result<(), StoreError> {
        self.ask(|reply| Command::RebuildViews { reply }).await
    }

    /// Links and freshness.
    pub async fn status(&self) -> Result<NodeStatus, StoreError> {
        self.call(|reply| Command::Status { reply })
            .await
            .ok_or(StoreError::Closed)
    }

    /// The link to `peer` (the connection `session`) ended; its sync states are persisted.
    pub async fn peer_down(&self, peer: UnitId, session: u64) {
        // Through the peers' inbox, behind the frames the link read before it went down:
        // they are applied, not dropped.
        let _ = self.peer_tx.send(Command::PeerDown { peer, session }).await;
    }

    /// The peers this node expects links with: each is shown in the status, down, until it
    /// connects.
    pub async fn expect_peers(&self, peers: Vec<UnitId>) {
        let _ = self.tx.send(Command::Expect { peers }).await;
    }

    /// A dial to `peer` failed with `error` (shown in the status until the link comes up).
    pub async fn dial_failed(&self, peer: UnitId, error: String) {
        let _ = self.tx.send(Command::DialFailed { peer, error }).await;
    }

    /// Revoke a child's certificate: recorded in this node's profile (which travels to
    /// every descendant), and the child's live link is dropped. Durable before it returns.
    pub async fn revoke(&self, child: UnitId, fingerprint: String) -> Result<(), WriteError> {
        self.ask(|reply| Command::Revoke {
            child,
            fingerprint,
            reply,
        })
        .await
    }

    /// A message arrived from `peer`. Waits when the actor's inbox is full (backpressure on
    /// the link).
    pub async fn from_peer(
        &self,
        peer: UnitId,
        session: u64,
        msg: Msg,
        held: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(), StoreError> {
        self.peer_tx
            .send(Command::FromPeer {
                peer,
                session,
                msg,
                held,
            })
            .await
            .map_err(|_| StoreError::Closed)
    }
}

/// Where one batch's time went, logged when the batch was slow: a node whose callers time
/// out says whether it was peers' frames, local writes or the commit that held them.
#[derive(Default)]
struct BatchTiming {
    peer_frames: usize,
    local: usize,
    /// First messages made for documents links had yet to start.
    started: usize,
    /// Times since the batch started: local commands taken in, peers' frames worked
    /// through, writes applied, committed.
    gathered: std::time::Duration,
    received: std::time::Duration,
    written: std::time::Duration,
    committed: std::time::Duration,
    /// The local command that took longest to take in, and how long.
    slowest: (&'static str, std::time::Duration),
}

impl BatchTiming {
    fn report(&self, me: &UnitId, total: std::time::Duration, docs: usize, queued: usize) {
        if total < SLOW_BATCH {
            return;
        }
        let ms = |d: std::time::Duration| d.as_millis();
        tracing::warn!(
            unit = %me,
            total_ms = ms(total),
            peer_frames = self.peer_frames,
            local_commands = self.local,
            link_starts = self.started,
            documents = docs,
            local_ms = ms(self.gathered),
            peer_ms = ms(self.received.saturating_sub(self.gathered)),
            slowest_local = self.slowest.0,
            slowest_local_ms = ms(self.slowest.1),
            writes_ms = ms(self.written.saturating_sub(self.received)),
            commit_ms = ms(self.committed.saturating_sub(self.written)),
            after_ms = ms(total.saturating_sub(self.committed)),
            still_queued = queued,
            "a slow store batch"
        );
    }
}

/// A member write waiting for the batch's single transaction on its document.
struct PendingWrite {
    op: PendingOp,
    reply: oneshot::Sender<Result<Member, WriteError>>,
}

enum PendingOp {
    Create(MemberId, NewMember, Option<Stamp>),
    Update(MemberId, MemberPatch, Option<Stamp>),
    /// A removal, with the record as it was (read when the write is settled).
    Delete(MemberId, Option<Member>),
}

impl PendingOp {
    fn id(&self) -> &MemberId {
        match self {
            PendingOp::Create(id, ..) | PendingOp::Update(id, ..) | PendingOp::Delete(id, _) => id,
        }
    }
}

/// A write of a record of the other kinds, waiting like a [`PendingWrite`].
struct PendingRecord {
    op: RecordOp,
    /// The description of the record's kind (the write was validated against it).
    spec: &'static grassroots_schema::EntitySpec,
    reply: oneshot::Sender<Result<Record, WriteError>>,
}

enum RecordOp {
    Create(RecordRef, Fields, Option<Stamp>),
    Update(RecordRef, Fields, Option<Stamp>),
    /// A removal, with the record as it was (read when the write is settled).
    Delete(RecordRef, Option<Record>),
}

impl RecordOp {
    fn id(&self) -> &RecordRef {
        match self {
            RecordOp::Create(id, ..) | RecordOp::Update(id, ..) | RecordOp::Delete(id, _) => id,
        }
    }
}

/// A caller's reply channel and what it is to be answered.
type Answer<T> = (
    oneshot::Sender<Result<T, WriteError>>,
    Result<T, WriteError>,
);

/// A write waiting for its document's transaction in a batch: a member write or a record
/// write of another kind. What differs between them; [`Actor::apply_waiting`] does the rest.
trait Waiting: Sized {
    /// The view row a write produces.
    type Row: Clone + Send + 'static;
    /// The document written.
    fn doc(&self) -> DocId;
    /// Whether it changes (or removes) an existing record.
    fn is_update(&self) -> bool;
    /// Whether it removes its record (its row goes from the views).
    fn deletes(&self) -> bool;
    /// The error for a record that does not exist.
    fn missing(&self) -> WriteError;
    /// The caller's reply channel.
    fn into_reply(self) -> oneshot::Sender<Result<Self::Row, WriteError>>;
    /// The record the write names, as `doc` holds it (`None`: not there, or not readable).
    fn read(&self, doc: &Automerge) -> Option<Self::Row>;
    /// Answer the caller with an error now.
    fn fail(self, e: WriteError) {
        let _ = self.into_reply().send(Err(e));
    }
    /// Apply a group of writes to their document in one transaction.
    fn apply(doc: &mut Automerge, writes: &[Self]) -> Result<Vec<Result<(), DocError>>, DocError>;
    /// What the caller is answered after the commit, and its reply channel.
    fn outcome(self, doc: &Automerge, result: Result<(), DocError>) -> Answer<Self::Row>;
    /// The record id of a row.
    fn record(row: &Self::Row) -> RecordId;
    /// Where the batch keeps the rows its writes produced.
    fn rows(batch: &mut Batch) -> &mut BTreeMap<DocId, BTreeMap<RecordId, Option<Self::Row>>>;
    /// The record a write makes or changes and the fields it sets, with their values (for the
    /// field-level authority a parent will check of this node's change); `None` when a parent
    /// checks nothing more.
    fn field_writes(&self) -> Option<(RecordId, &Fields)> {
        None
    }
    /// The unit of the user who made the write, when one did (a token's): what its fields
    /// are judged as, besides the parent judging them as this node's.
    fn writer(&self) -> Option<&UnitId> {
        None
    }
    /// Complete the write against the document it is built on and what the writes before
    /// it in the batch leave (before it is checked).
    fn settle(&mut self, _doc: &Automerge, _earlier: &Handling) {}
    /// Note what this write leaves for the writes after it in the batch (once allowed).
    fn leave(&self, _earlier: &mut Handling) {}
    /// Whether the write cannot be made, as settled: a removal of a record that is not
    /// there, or not readable (written incomplete by a peer: no view shows it, and the
    /// caller is answered that it does not exist).
    fn doomed(&self) -> bool {
        false
    }
    /// The record a create makes (`None` for other writes).
    fn creates(&self) -> Option<RecordId>;
    /// For a create whose record is in `doc` already (a repeat of a create with a request
    /// key): the caller's answer, the record as it is; nothing is to be written. Otherwise
    /// the write back.
    fn existing(self, doc: &Automerge) -> Result<Answer<Self::Row>, Self> {
        match self.creates().and_then(|_| self.read(doc)) {
            Some(row) => Ok((self.into_reply(), Ok(row))),
            None => Err(self),
        }
    }
}

/// A complaint's handler as the writes of a batch leave it, by record.
type Handling = HashMap<RecordId, UnitId>;

impl Waiting for PendingWrite {
    type Row = Member;
    fn doc(&self) -> DocId {
        DocId::new(DocKind::Members, self.op.id().unit.clone())
    }
    fn is_update(&self) -> bool {
        !matches!(self.op, PendingOp::Create(..))
    }
    fn deletes(&self) -> bool {
        matches!(self.op, PendingOp::Delete(..))
    }
    fn missing(&self) -> WriteError {
        WriteError::NotFound(self.op.id().clone())
    }
    fn into_reply(self) -> oneshot::Sender<Result<Member, WriteError>> {
        self.reply
    }
    fn read(&self, doc: &Automerge) -> Option<Member> {
        let id = self.op.id();
        doc::read_member(doc, &id.unit, id.record)
    }
    fn apply(doc: &mut Automerge, writes: &[Self]) -> Result<Vec<Result<(), DocError>>, DocError> {
        let ops: Vec<doc::MemberWrite<'_>> = writes
            .iter()
            .map(|w| match &w.op {
                PendingOp::Create(id, m, by) => doc::MemberWrite::Create(id.record, m, by.as_ref()),
                PendingOp::Update(id, p, by) => doc::MemberWrite::Update(id.record, p, by.as_ref()),
                PendingOp::Delete(id, _) => doc::MemberWrite::Delete(id.record),
            })
            .collect();
        doc::apply_member_writes(doc, &ops)
    }
    fn outcome(self, doc: &Automerge, result: Result<(), DocError>) -> Answer<Member> {
        let outcome = match (self.op, result) {
            (PendingOp::Create(id, m, by), Ok(())) => Ok(Member {
                id,
                name: m.name.trim().to_owned(),
                birth_year: m.birth_year,
                gender: m.gender,
                education: m.education,
                joined_on: m.joined_on,
                status: m.status,
                phone: m.phone,
                id_number: m.id_number,
                categories: grassroots_schema::category_set(m.categories),
                created: by,
                changed: None,
            }),
            (PendingOp::Update(id, ..), Ok(())) => {
                doc::read_member(doc, &id.unit, id.record).ok_or(WriteError::NotFound(id))
            }
            (PendingOp::Delete(id, before), Ok(())) => before.ok_or(WriteError::NotFound(id)),
            (
                PendingOp::Update(id, ..) | PendingOp::Delete(id, _),
                Err(DocError::NoSuchRecord(_)),
            ) => Err(WriteError::NotFound(id)),
            (_, Err(e)) => Err(WriteError::Doc(e)),
        };
        (self.reply, outcome)
    }
    fn record(row: &Member) -> RecordId {
        row.id.record
    }
    fn settle(&mut self, doc: &Automerge, _earlier: &Handling) {
        if self.deletes() {
            let row = self.read(doc);
            if let PendingOp::Delete(_, before) = &mut self.op {
                *before = row;
            }
        }
    }
    fn doomed(&self) -> bool {
        matches!(self.op, PendingOp::Delete(_, None))
    }
    fn creates(&self) -> Option<RecordId> {
        match &self.op {
            PendingOp::Create(id, ..) => Some(id.record),
            _ => None,
        }
    }
    fn rows(batch: &mut Batch) -> &mut BTreeMap<DocId, BTreeMap<RecordId, Option<Member>>> {
        &mut batch.records
    }
}

impl Waiting for PendingRecord {
    type Row = Record;
    fn doc(&self) -> DocId {
        self.op.id().doc()
    }
    fn is_update(&self) -> bool {
        !matches!(self.op, RecordOp::Create(..))
    }
    fn deletes(&self) -> bool {
        matches!(self.op, RecordOp::Delete(..))
    }
    fn missing(&self) -> WriteError {
        WriteError::NoRecord(self.op.id().clone())
    }
    fn into_reply(self) -> oneshot::Sender<Result<Record, WriteError>> {
        self.reply
    }
    fn read(&self, doc: &Automerge) -> Option<Record> {
        let id = self.op.id();
        doc::read_record(doc, self.spec, &id.unit, id.record)
    }
    fn apply(doc: &mut Automerge, writes: &[Self]) -> Result<Vec<Result<(), DocError>>, DocError> {
        let ops: Vec<doc::RecordWrite<'_>> = writes
            .iter()
            .map(|w| match &w.op {
                RecordOp::Create(id, f, by) => doc::RecordWrite::Create(id.record, f, by.as_ref()),
                RecordOp::Update(id, f, by) => doc::RecordWrite::Update(id.record, f, by.as_ref()),
                RecordOp::Delete(id, _) => doc::RecordWrite::Delete(id.record),
            })
            .collect();
        // One document, so one kind.
        match writes.first() {
            Some(w) => doc::apply_record_writes(doc, w.spec, &ops),
            None => Ok(Vec::new()),
        }
    }
    fn outcome(self, doc: &Automerge, result: Result<(), DocError>) -> Answer<Record> {
        let outcome = match (self.op, result) {
            (RecordOp::Create(id, fields, by), Ok(())) => Ok(Record {
                id,
                fields,
                created: by,
                changed: None,
            }),
            (RecordOp::Update(id, ..), Ok(())) => entity(id.kind)
                .and_then(|spec| doc::read_record(doc, spec, &id.unit, id.record))
                .ok_or(WriteError::NoRecord(id)),
            (RecordOp::Delete(id, before), Ok(())) => before.ok_or(WriteError::NoRecord(id)),
            (
                RecordOp::Update(id, ..) | RecordOp::Delete(id, _),
                Err(DocError::NoSuchRecord(_)),
            ) => Err(WriteError::NoRecord(id)),
            (_, Err(e)) => Err(WriteError::Doc(e)),
        };
        (self.reply, outcome)
    }
    fn record(row: &Record) -> RecordId {
        row.id.record
    }
    fn rows(batch: &mut Batch) -> &mut BTreeMap<DocId, BTreeMap<RecordId, Option<Record>>> {
        &mut batch.entity_rows
    }
    fn writer(&self) -> Option<&UnitId> {
        match &self.op {
            RecordOp::Create(_, _, stamp) | RecordOp::Update(_, _, stamp) => {
                stamp.as_ref().map(|s| &s.unit)
            }
            RecordOp::Delete(..) => None,
        }
    }
    fn field_writes(&self) -> Option<(RecordId, &Fields)> {
        match &self.op {
            RecordOp::Create(id, fields, _) | RecordOp::Update(id, fields, _) => {
                Some((id.record, fields))
            }
            // Kinds with fields decided from above (reviews, complaints' handling,
            // appraisals' ratings) are refused before they get here
            // (`WriteError::NotRemovable`).
            RecordOp::Delete(..) => None,
        }
    }
    /// A complaint's handler or status named is judged against the handler it has
    /// (`EntitySpec::with_update_defaults`): a handler left out when unchanged, else it
    /// brings its waiting status along, and a waiting status named is the one that goes
    /// with the handler.
    fn settle(&mut self, doc: &Automerge, earlier: &Handling) {
        if self.deletes() {
            let row = self.read(doc);
            if let RecordOp::Delete(_, before) = &mut self.op {
                *before = row;
            }
        }
        if let RecordOp::Update(id, fields, _) = &mut self.op
            && self.spec.kind == DocKind::Complaints
            && (fields.contains_key("handler") || fields.contains_key("status"))
        {
            let now = handler_now(doc, self.spec, id, earlier);
            *fields = self
                .spec
                .with_update_defaults(&id.unit, &now, std::mem::take(fields));
        }
    }
    fn doomed(&self) -> bool {
        matches!(self.op, RecordOp::Delete(_, None))
    }
    fn creates(&self) -> Option<RecordId> {
        match &self.op {
            RecordOp::Create(id, ..) => Some(id.record),
            _ => None,
        }
    }
    fn leave(&self, earlier: &mut Handling) {
        if let RecordOp::Update(id, fields, _) = &self.op
            && let Some(handler) = grassroots_schema::entities::handler_in(&id.unit, fields)
        {
            earlier.insert(id.record, handler);
        }
    }
}

/// A complaint's handler as the batch's earlier writes left it, or as the document has it.
fn handler_now(
    doc: &Automerge,
    spec: &grassroots_schema::EntitySpec,
    id: &RecordRef,
    earlier: &Handling,
) -> UnitId {
    match earlier.get(&id.record) {
        Some(h) => h.clone(),
        None => doc::read_record(doc, spec, &id.unit, id.record)
            .map_or_else(|| id.unit.clone(), |r| r.handler()),
    }
}

/// Who makes a write through the gateway: the token's unit, role and user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    /// The unit the token is bound to.
    pub unit: UnitId,
    /// Its role there.
    pub role: Role,
    /// Who the token was issued to.
    pub user: String,
}

/// The record a create with the caller's `key` makes in `unit`: the first 64 bits of a
/// SHA-256 over the unit, the writer (its unit and user) and the key, so a repeat by the same
/// writer names the same record, and the same key from another writer another. (A record
/// removed since is made again by a repeat.)
pub fn request_record(unit: &UnitId, by: Option<&Writer>, key: &str) -> RecordId {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        "grassroots create request",
        unit.as_str(),
        by.map_or("", |w| w.unit.as_str()),
        by.map_or("", |w| w.user.as_str()),
        key,
    ] {
        // Length-prefixed, so no two splits of the same bytes hash alike.
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let d = h.finish();
    let mut bits = [0u8; 8];
    bits.copy_from_slice(&d.as_ref()[..8]);
    RecordId::from_u64(u64::from_be_bytes(bits))
}

/// A writer's stamp, at the time the store takes the write.
fn stamped(by: Option<Writer>) -> Option<Stamp> {
    by.map(|w| Stamp {
        at_ms: i64::try_from(now_ms()).unwrap_or(i64::MAX),
        unit: w.unit,
        role: w.role,
        user: Some(w.user),
    })
}

impl Batch {
    /// Writes of records (members and the other kinds) waiting in this batch.
    fn waiting(&self) -> usize {
        self.writes.len() + self.record_writes.len()
    }
}

#[derive(Default)]
struct Batch {
    /// Member writes of this batch, applied per document in one transaction each.
    writes: Vec<PendingWrite>,
    /// Removals of transfers: each applied after the member writes, only if the member was
    /// made in its new register (by id there).
    moves: Vec<(MemberId, PendingWrite)>,
    /// Members transfers make without their identity and phone numbers, by id made.
    without_sensitive: HashSet<MemberId>,
    /// Writes of the other record kinds, likewise.
    record_writes: Vec<PendingRecord>,
    /// Records of the other kinds written locally, with their rows (like `records`).
    entity_rows: BTreeMap<DocId, BTreeMap<RecordId, Option<Record>>>,
    dirty: BTreeSet<DocId>,
    /// Documents changed by peers: their views are rebuilt whole.
    resync: BTreeSet<DocId>,
    /// Records written locally: only their view rows are rewritten.
    /// Each with its row as of the end of the batch's transaction (a create's own fields, or
    /// an update's read-back), so the view is written without reading the document again.
    records: BTreeMap<DocId, BTreeMap<RecordId, Option<Member>>>,
    /// Documents peers changed, to forward to the other peers once stored.
    forward: Vec<(DocId, UnitId)>,
    created: BTreeSet<DocId>,
    sends: Vec<(UnitId, Msg)>,
    replies: Vec<Reply>,
    states: Vec<(UnitId, DocId, Vec<u8>)>,
    users: Vec<([u8; 32], String)>,
    /// Tokens to delete (by hash).
    users_removed: Vec<[u8; 32]>,
    heard: BTreeMap<UnitId, u64>,
    /// Snapshots from the compactor, stored in this batch's transaction.
    compacted: Vec<compact::Done>,
    /// What loading registers taken unread found, stored with this commit.
    unread: UnreadFixes,
    /// Views checked or rebuilt once this batch's commit is in: before it, the loaded
    /// documents may hold what is not committed (a profile set earlier in the batch).
    views: Vec<ViewsCommand>,
    shutdown: Option<oneshot::Sender<()>>,
}

/// What automerge's loading of registers taken unread found (see [`crate::sync::Unread`]),
/// for a commit to store: each loses its [`UNREAD`] row.
#[derive(Debug, Default)]
struct UnreadFixes {
    /// Loaded, reading as their columns did.
    loaded: BTreeSet<DocId>,
    /// Loaded, reading otherwise: their views are written again from the loaded document.
    reread: BTreeSet<DocId>,
    /// Not loaded: empty again, what is stored of them goes.
    emptied: BTreeSet<DocId>,
}

impl UnreadFixes {
    fn is_empty(&self) -> bool {
        self.loaded.is_empty() && self.reread.is_empty() && self.emptied.is_empty()
    }

    fn append(&mut self, other: &mut UnreadFixes) {
        self.loaded.append(&mut other.loaded);
        self.reread.append(&mut other.reread);
        self.emptied.append(&mut other.emptied);
    }

    fn all(&self) -> impl Iterator<Item = &DocId> {
        self.loaded.iter().chain(&self.reread).chain(&self.emptied)
    }
}

/// A command on the views as a whole, taken after its batch's commit.
enum ViewsCommand {
    Verify(oneshot::Sender<Result<Vec<String>, StoreError>>),
    Rebuild(oneshot::Sender<Result<(), StoreError>>),
}

impl Batch {
    /// Whether a transfer in this batch moves the member `id`.
    fn moving(&self, id: &MemberId) -> bool {
        self.moves.iter().any(|(_, w)| w.op.id() == id)
    }

    /// The fields a transfer makes `made` with, from the member as held.
    fn moved(&self, made: &MemberId, member: Member) -> NewMember {
        let mut new = member.into_new();
        if self.without_sensitive.contains(made) {
            new.phone = None;
            new.id_number = None;
        }
        new
    }
}

#[derive(Debug)]
struct LinkEntry {
    counters: Arc<LinkCounters>,
    since_ms: u64,
    /// When it went down (0 while up).
    down_since_ms: u64,
    connected: bool,
    rejected: u64,
    /// Messages refused from the peer during this connection, and those carried over from
    /// the ones before it (see [`carried`]).
    rejected_now: u32,
    /// When a message of the peer's was last refused (ms since the epoch).
    rejected_at_ms: u64,
    /// Times the peer was cut off for too many refused messages, each within
    /// [`MAX_KEPT_OFF_MS`] of the one before.
    cut_off: u32,
    /// When it was last cut off (ms since the epoch).
    cut_off_at_ms: u64,
    /// Until when its links are refused (ms since the epoch; 0: not kept off).
    kept_off_until_ms: u64,
}

impl LinkEntry {
    /// The entry of a connection of a peer coming up at `now` with `counters`, after the
    /// peer's entry `before` (if any): what goes on from one connection to the next (the
    /// refusals less those forgiven since, the undecodable frames likewise, handed to the
    /// link's counters; the closings and the time off, ended or not) carried over.
    fn next(before: Option<&LinkEntry>, counters: Arc<LinkCounters>, now: u64) -> LinkEntry {
        let mut entry = LinkEntry {
            counters,
            since_ms: now,
            down_since_ms: 0,
            connected: true,
            rejected: 0,
            rejected_now: 0,
            rejected_at_ms: 0,
            cut_off: 0,
            cut_off_at_ms: 0,
            kept_off_until_ms: 0,
        };
        if let Some(l) = before {
            let malformed = l
                .counters
                .malformed
                .load(std::sync::atomic::Ordering::Relaxed);
            entry.counters.malformed.store(
                carried(malformed, l.down_since_ms, now),
                std::sync::atomic::Ordering::Relaxed,
            );
            entry.rejected = l.rejected;
            entry.rejected_now = carried(l.rejected_now, l.rejected_at_ms, now);
            entry.rejected_at_ms = l.rejected_at_ms;
            entry.cut_off = l.cut_off;
            entry.cut_off_at_ms = l.cut_off_at_ms;
            entry.kept_off_until_ms = l.kept_off_until_ms;
        }
        entry
    }
}

/// A peer this node has had no link with since it last went down, or ever: expected at
/// start (parent and children), or dialled without success.
#[derive(Debug, Default)]
struct DialFailures {
    /// Since when (the first failure, or the start).
    since_ms: u64,
    /// Dials that failed since then.
    count: u32,
    /// The last failure's reason.
    last_error: Option<String>,
}

struct Actor {
    db: Arc<Database>,
    engine: Engine,
    outboxes: HashMap<UnitId, mpsc::UnboundedSender<Msg>>,
    persisted: HashMap<DocId, Persisted>,
    links: HashMap<UnitId, LinkEntry>,
    /// Expected peers without a link now, and failed dials ([`DialFailures`]).
    dials: HashMap<UnitId, DialFailures>,
    heard: HashMap<UnitId, u64>,
    /// Documents whose changes a failed commit did not persist.
    retry: BTreeSet<DocId>,
    /// What loading registers taken unread found that a failed commit did not store.
    unread_fixes: UnreadFixes,
    /// Registers taken unread, with the peer they came from, to forward once loaded.
    forward_when_loaded: HashMap<DocId, UnitId>,
    options: StoreOptions,
    compactor: compact::Compactor,
    /// When the store last had work (compactions wait for quiet).
    activity: Arc<compact::Activity>,
    /// Change notifications to subscribers.
    changes: broadcast::Sender<DocChange>,
    /// Readers' decoded roll-ups, told of every commit.
    rollups: Arc<reader::RollupCache>,
    /// Documents whose change rows are due to be folded into a snapshot.
    due: BTreeSet<DocId>,
    /// Record writes (members and the other kinds) in the last batch: how many writers
    /// there are to wait for.
    last_batch_writes: usize,
    /// The last record id this node made (ids only grow).
    last_record: u64,
    /// The document the compactor is working on (one at a time: a job holds a whole
    /// document in memory).
    compacting: Option<DocId>,
    /// Set once a commit fails in redb or below it ([`StoreHandle::failed`]).
    failure: watch::Sender<Option<String>>,
    /// The peers' share of a batch ([`PEER_WORK`]; tests shorten it).
    peer_work: std::time::Duration,
    /// When this batch's share of peer work ends (set as it begins).
    peer_until: std::time::Instant,
    /// Peers' batch frames handled in part, one at most per peer: each goes on in the next
    /// batch's share, so that one frame of thousands of items, each of which can cost a
    /// document sent whole, holds the node's own users for a share, not seconds; and the
    /// other links' frames are taken in the same shares, so that it does not hold them
    /// either.
    peer_rests: std::collections::VecDeque<PeerRest>,
    /// Frames of a peer whose batch frame is under way (and its link's coming up again or
    /// going down), in order, taken once it is done.
    stashed: HashMap<UnitId, std::collections::VecDeque<Command>>,
    /// Frames taken out of `stashed` (their peer's batch frame done), before the inbox.
    unstashed: std::collections::VecDeque<Command>,
    /// Whether this batch's share goes on with the batch frames under way before the
    /// other links' frames (it alternates).
    rests_first: bool,
}

/// The items of a peer's batch frame not handled yet.
struct PeerRest {
    peer: UnitId,
    session: u64,
    rest: crate::sync::BatchRest,
    /// The link's share of the inbox, held until the whole frame is handled.
    held: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A peer's frame, or the rest of one.
enum PeerInput {
    Frame(Msg),
    Rest(crate::sync::BatchRest),
}

impl Actor {
    fn run(
        mut self,
        rt: tokio::runtime::Runtime,
        mut rx: mpsc::Receiver<Command>,
        mut peers: mpsc::Receiver<Command>,
    ) {
        let _span = tracing::info_span!("store", unit = %self.engine.me()).entered();
        if let Err(e) = self.recheck_stored_unread() {
            tracing::error!("cannot check the registers taken whole before the last stop: {e}");
            self.failure.send_replace(Some(failure_reason(&e)));
        }
        self.next_compaction();
        let done = self.serve(&rt, &mut rx, &mut peers);
        // No result can be delivered any more: close the inbox so a compactor sending one
        // fails at once, then wait for it, so the database is closed when the caller is told.
        rx.close();
        peers.close();
        self.compactor.stop();
        self.compact_before_stop();
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Serve commands until shutdown (its reply is returned) or until every handle is gone.
    ///
    /// Local commands go first: each batch takes every local command waiting (up to
    /// [`MAX_BATCH`]) and then what the peers' inbox holds, oldest first, up to
    /// [`MAX_PEER_FRAMES`] and [`PEER_WORK`] of work. A node that cannot keep up with its
    /// peers (a slow board, a flood of a catch-up) still answers its own callers within a
    /// batch or two; the frames it has not reached wait in the peers' inbox, each holding its
    /// link's inbox budget, so a fast peer is slowed on its own link.
    fn serve(
        &mut self,
        rt: &tokio::runtime::Runtime,
        rx: &mut mpsc::Receiver<Command>,
        peers: &mut mpsc::Receiver<Command>,
    ) -> Option<oneshot::Sender<()>> {
        loop {
            // Documents a link has yet to start, or the rest of a peer's frame, are work too:
            // with some, nothing is waited for. The rest goes before that peer's later
            // frames, so none is taken first.
            let first = if !self.peer_rests.is_empty() || !self.unstashed.is_empty() {
                rx.try_recv().ok().map(|cmd| (cmd, false))
            } else if self.engine.has_unstarted() {
                match rx.try_recv() {
                    Ok(cmd) => Some((cmd, false)),
                    Err(_) => peers.try_recv().ok().map(|cmd| (cmd, true)),
                }
            } else {
                let first = rt.block_on(async {
                    tokio::select! {
                        biased;
                        Some(cmd) = rx.recv() => Some((cmd, false)),
                        Some(cmd) = peers.recv() => Some((cmd, true)),
                        else => None,
                    }
                });
                Some(first?)
            };
            let started = std::time::Instant::now();
            let mut batch = Batch::default();
            let mut timing = BatchTiming::default();
            let mut peer_first = None;
            match first {
                Some((first, true)) => peer_first = Some(first),
                Some((first, false)) => self.take(first, &mut batch, &mut timing),
                None => {}
            }
            let mut lingered = 0;
            while batch.shutdown.is_none() && timing.local < MAX_BATCH {
                match rx.try_recv() {
                    Ok(cmd) => self.take(cmd, &mut batch, &mut timing),
                    // Group commit: writers that were in the last batch are still sending
                    // their next write. Waiting a moment for them makes one commit of what
                    // would be two; a lone writer (last batch of one) never waits.
                    Err(_)
                        if lingered < LINGER_ROUNDS
                            && batch.waiting() > 0
                            && batch.waiting() < self.last_batch_writes =>
                    {
                        lingered += 1;
                        std::thread::sleep(LINGER);
                    }
                    Err(_) => break,
                }
            }
            timing.gathered = started.elapsed();
            // At shutdown what peers sent is left unread: they offer it again next session.
            if batch.shutdown.is_none() {
                // The peers' share: at least one frame, then as many as fit in the time.
                let until = std::time::Instant::now() + self.peer_work;
                self.peer_until = until;
                let time_left = |frames: usize| frames == 0 || std::time::Instant::now() < until;
                // The other links' frames (a peer's later frames wait for its batch frame
                // under way), and each batch frame under way since an earlier share going on
                // by at least one item; which of the two goes first alternates from share to
                // share, so that neither holds the other: no link's work holds another's.
                let under_way = self.peer_rests.len();
                self.rests_first = !self.rests_first;
                if self.rests_first {
                    self.resume_rests(under_way, &mut batch, &mut timing);
                }
                while timing.peer_frames < MAX_PEER_FRAMES
                    && time_left(timing.peer_frames)
                    && let Some(cmd) = self
                        .unstashed
                        .pop_front()
                        .or_else(|| peer_first.take())
                        .or_else(|| peers.try_recv().ok())
                {
                    // A link's coming and going waits too: the frames it read before are
                    // applied, not dropped with it.
                    if let Command::FromPeer { peer, .. }
                    | Command::PeerUp { peer, .. }
                    | Command::PeerDown { peer, .. } = &cmd
                        && self.peer_rests.iter().any(|r| r.peer == *peer)
                    {
                        let peer = peer.clone();
                        self.stashed.entry(peer).or_default().push_back(cmd);
                        continue;
                    }
                    timing.peer_frames += 1;
                    self.on_command(cmd, &mut batch);
                }
                if !self.rests_first {
                    self.resume_rests(under_way, &mut batch, &mut timing);
                }
                // Then links' documents to start, in what is left of it (at least one when
                // no frame came, so that they advance).
                if self.engine.has_unstarted() && time_left(timing.peer_frames) {
                    let sends = self.engine.start_unstarted(until);
                    timing.started = sends.len();
                    batch.sends.extend(sends);
                }
                if timing.peer_frames > 0 || timing.started > 0 {
                    self.activity.touch();
                }
            }
            self.last_batch_writes = batch.waiting();
            if batch.shutdown.is_some() {
                let peers: Vec<UnitId> = self.engine.peers().cloned().collect();
                for p in peers {
                    self.on_peer_down(p, &mut batch);
                }
            }
            timing.received = started.elapsed();
            self.apply_writes(&mut batch);
            timing.written = started.elapsed();
            // Documents a failed commit left unpersisted go into this one, their views read
            // again from what changed since they were committed.
            let retry = std::mem::take(&mut self.retry);
            batch.resync.extend(retry.iter().cloned());
            batch.dirty.extend(retry);
            self.take_unread_outcomes(&mut batch);
            let result = self.commit(&batch);
            timing.committed = started.elapsed();
            // Quiet is counted from the end of the work, the commit included: a long
            // commit is no time for the compactor to start.
            if timing.local + timing.peer_frames + timing.started > 0 {
                self.activity.touch();
            }
            if !batch.compacted.is_empty() {
                self.compacting = None;
            }
            if let Err(e) = &result {
                tracing::error!("commit failed, nothing in this batch is acknowledged: {e}");
                if self.failure.borrow().is_none() {
                    // redb refuses every later operation after an I/O failure, and a failed
                    // fsync leaves what the disk holds unknown: only a reopen recovers. Any
                    // other failure (a stored view row that no longer decodes) would fail
                    // every later commit the same way, since the retried documents are
                    // read again: the node stops rather than refuse writes while healthy.
                    let reason = failure_reason(e);
                    tracing::error!("{reason}");
                    self.failure.send_replace(Some(reason));
                }
                self.retry.extend(batch.dirty.iter().cloned());
                self.unread_fixes.append(&mut batch.unread);
                // A snapshot not stored is made again from what is committed by then.
                self.due
                    .extend(batch.compacted.iter().map(|d| d.job.doc.clone()));
            } else if let Ok(changed) = &result {
                self.notify(changed);
                self.submit_unread_checks(changed);
                self.heard
                    .extend(batch.heard.iter().map(|(u, t)| (u.clone(), *t)));
                let mut sends = std::mem::take(&mut batch.sends);
                // Emptied first: one taken unread again in this batch waits anew below.
                for id in &batch.unread.emptied {
                    self.forward_when_loaded.remove(id);
                }
                for (doc, from) in std::mem::take(&mut batch.forward) {
                    // A register taken unread goes on once automerge has loaded it: a node
                    // passes on nothing it has not read itself.
                    if self.engine.unread(&doc).is_some() {
                        self.forward_when_loaded.insert(doc, from);
                        continue;
                    }
                    sends.extend(self.engine.fan_out(&doc, Some(&from)));
                }
                for id in batch.unread.loaded.iter().chain(&batch.unread.reread) {
                    if self.engine.unread(id).is_none()
                        && let Some(from) = self.forward_when_loaded.remove(id)
                    {
                        sends.extend(self.engine.fan_out(id, Some(&from)));
                    }
                }
                self.deliver(sends);
                for (peer, link) in &self.links {
                    let progress = self.engine.progress(peer).unwrap_or_default();
                    let waiting = progress.in_flight + progress.queued > 0 || progress.descending;
                    let relaxed = std::sync::atomic::Ordering::Relaxed;
                    link.counters.awaiting.store(waiting, relaxed);
                    link.counters
                        .awaiting_root
                        .store(progress.rootless, relaxed);
                }
                self.evict();
            }
            for reply in batch.replies {
                reply(result.as_ref().map(|_| ()));
            }
            // After a failed commit the loaded documents hold what is not stored: the views
            // are neither compared with them nor written from them.
            let not_stored = |e: &StoreError| StoreError::NotStored(failure_reason(e));
            for command in batch.views {
                match (command, &result) {
                    (ViewsCommand::Verify(reply), Ok(_)) => {
                        let _ = reply.send(self.verify_views());
                    }
                    (ViewsCommand::Rebuild(reply), Ok(_)) => {
                        let _ = reply.send(self.rebuild_views());
                    }
                    (ViewsCommand::Verify(reply), Err(e)) => {
                        let _ = reply.send(Err(not_stored(e)));
                    }
                    (ViewsCommand::Rebuild(reply), Err(e)) => {
                        let _ = reply.send(Err(not_stored(e)));
                    }
                }
            }
            timing.report(
                self.engine.me(),
                started.elapsed(),
                batch.dirty.len(),
                rx.len() + peers.len(),
            );
            if batch.shutdown.is_some() {
                return batch.shutdown;
            }
            self.next_compaction();
        }
    }

    /// Take one local command into `batch`.
    fn take(&mut self, cmd: Command, batch: &mut Batch, timing: &mut BatchTiming) {
        match cmd {
            Command::Compacted(_) | Command::Checked(_) => self.on_command(cmd, batch),
            _ => {
                self.activity.touch();
                timing.local += 1;
                let name = cmd.name();
                let started = std::time::Instant::now();
                self.on_command(cmd, batch);
                let took = started.elapsed();
                if took > timing.slowest.1 {
                    timing.slowest = (name, took);
                }
            }
        }
    }

    /// Load each register a peer sent whole that was stored before automerge loaded it (the
    /// node stopped first): one that does not load is emptied, the others' views are written
    /// again from automerge's reading. Then the [`UNREAD`] rows go, in a commit of its own.
    fn recheck_stored_unread(&mut self) -> Result<(), StoreError> {
        let stored: Vec<(DocId, String)> = {
            let tx = self.db.begin_read().map_err(db)?;
            let t = tx.open_table(UNREAD).map_err(db)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(db)? {
                let (k, v) = row.map_err(db)?;
                if let Ok(id) = k.value().parse() {
                    out.push((id, v.value().to_owned()));
                }
            }
            out
        };
        if stored.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        for (id, from) in stored {
            let Some(meta) = self.engine.get(&id).map(|e| e.meta.clone()) else {
                // Not hosted: only its row goes.
                batch.unread.loaded.insert(id);
                continue;
            };
            // Checked as when it came (its heads those it named), not as the store's own
            // documents are loaded.
            let mut heads = self
                .persisted
                .get(&id)
                .map(|p| p.heads.clone())
                .unwrap_or_default();
            heads.sort();
            // A store that cannot be read here fails the open's check whole (the store then
            // stops): left unchecked, the register would be served and sent on as stored.
            let bytes = load::committed_bytes(&self.db, &id, u64::MAX)?;
            match crate::sync::load_unread(&bytes, &heads, &BTreeMap::new(), &id.owner) {
                Ok((d, _)) => {
                    self.engine.insert(meta, *d);
                    batch.unread.reread.insert(id);
                }
                Err(detail) => {
                    tracing::warn!(doc = %id, peer = %from, "a register taken whole does not load ({detail}); what was stored of it is taken out");
                    self.engine.empty_again(&id);
                    batch.unread.emptied.insert(id);
                }
            }
        }
        self.commit(&batch).map(|_| ())
    }

    /// Hand the registers `changed` that were stored unread to the compactor thread, for
    /// automerge to load them there once the store is quiet (or here, without it).
    fn submit_unread_checks(&mut self, changed: &[DocId]) {
        for id in changed {
            let Some(u) = self.engine.unread(id) else {
                continue;
            };
            let check = compact::Check {
                doc: id.clone(),
                bytes: u.bytes.clone(),
                heads: u.heads.clone(),
                members: u.members.clone(),
            };
            if !self.compactor.check(check) {
                self.engine.check_unread(id);
            }
        }
    }

    /// Put into `batch` what loading registers taken unread found (and what a failed commit
    /// left of it): a register that did not load counts against the peer that sent it.
    fn take_unread_outcomes(&mut self, batch: &mut Batch) {
        batch.unread.append(&mut self.unread_fixes);
        for outcome in self.engine.take_unread_outcomes() {
            match outcome {
                crate::sync::UnreadOutcome::Loaded(id) => {
                    batch.unread.loaded.insert(id);
                }
                crate::sync::UnreadOutcome::Differs(id) => {
                    batch.unread.reread.insert(id);
                }
                crate::sync::UnreadOutcome::Unloadable { doc, from, detail } => {
                    tracing::warn!(peer = %from, %doc, "{detail}; what was stored of it is taken out");
                    if let Some(l) = self.links.get_mut(&from) {
                        l.rejected += 1;
                        l.rejected_now = l.rejected_now.saturating_add(1);
                        l.rejected_at_ms = now_ms();
                    }
                    batch.unread.emptied.insert(doc);
                }
            }
        }
    }

    /// Fold what is due, then documents with [`STOP_FOLD_ROWS`] or more rows, before the store
    /// closes (within [`STOP_COMPACTION`]), so the next start does not read a document's
    /// backlog of change rows: a village that wrote offline and was stopped would otherwise
    /// load its register from many rows when it next syncs. Whatever is left stays as rows,
    /// which lose nothing.
    fn compact_before_stop(&mut self) {
        let start = std::time::Instant::now();
        if let Some(id) = self.compacting.take() {
            self.due.insert(id);
        }
        let mut batch = Batch::default();
        // Due documents first; then those with a few rows below the thresholds too: what is
        // not folded now is read row by row at the next start (a village's register written
        // offline, just under 256 KiB of rows, loaded in 20 ms instead of 5).
        let below = |p: &Persisted| p.rows_since_snapshot >= STOP_FOLD_ROWS;
        for worth in [&Persisted::due as &dyn Fn(&Persisted) -> bool, &below] {
            let folded: BTreeSet<&DocId> = batch.compacted.iter().map(|d| &d.job.doc).collect();
            let more: Vec<DocId> = self
                .persisted
                .iter()
                .filter(|(id, p)| worth(p) && !folded.contains(id))
                .map(|(id, _)| id.clone())
                .collect();
            self.due.extend(more);
            while start.elapsed() < STOP_COMPACTION
                && let Some(job) = self.next_job(worth)
            {
                let snapshot = compact::fold(&self.db, &job);
                batch.compacted.push(compact::Done { job, snapshot });
            }
        }
        if let Err(e) = self.commit(&batch) {
            tracing::warn!("compaction at stop failed (changes stay as rows): {e}");
        }
    }

    /// Tell subscribers which documents a commit changed (nobody listening is fine).
    fn notify(&self, changed: &[DocId]) {
        if changed.is_empty() || self.changes.receiver_count() == 0 {
            return;
        }
        let at_ms = now_ms();
        for doc in changed {
            let _ = self.changes.send(DocChange {
                doc: doc.clone(),
                at_ms,
            });
        }
    }

    /// Give the compactor the next due document, unless it is busy.
    fn next_compaction(&mut self) {
        if self.compacting.is_some() {
            return;
        }
        if let Some(job) = self.next_due_job() {
            let id = job.doc.clone();
            if self.compactor.submit(job) {
                self.compacting = Some(id);
            } else {
                tracing::warn!("the compactor thread is gone: change rows are no longer folded");
            }
        }
    }

    /// The next document still due for compaction, as a job over all its rows.
    fn next_due_job(&mut self) -> Option<compact::Job> {
        self.next_job(Persisted::due)
    }

    /// The next queued document whose rows `worth` says to fold.
    fn next_job(&mut self, worth: impl Fn(&Persisted) -> bool) -> Option<compact::Job> {
        while let Some(id) = self.due.pop_first() {
            if let Some(p) = self.persisted.get(&id).filter(|p| worth(p)) {
                return Some(p.job(&id));
            }
        }
        None
    }

    fn on_command(&mut self, cmd: Command, batch: &mut Batch) {
        match cmd {
            Command::CreateMember {
                unit,
                member,
                by,
                request,
                reply,
            } => {
                if let Err(e) = member.validate() {
                    let _ = reply.send(Err(e.into()));
                    return;
                }
                match self.record_for(&unit, by.as_ref(), request.as_deref()) {
                    Ok(record) => batch.writes.push(PendingWrite {
                        op: PendingOp::Create(MemberId { unit, record }, member, stamped(by)),
                        reply,
                    }),
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::UpdateMember {
                id,
                patch,
                by,
                reply,
            } => {
                if let Err(e) = patch.validate() {
                    let _ = reply.send(Err(e.into()));
                    return;
                }
                if batch.moving(&id) {
                    let _ = reply.send(Err(WriteError::InFlight(id)));
                    return;
                }
                batch.writes.push(PendingWrite {
                    op: PendingOp::Update(id, patch, stamped(by)),
                    reply,
                });
            }
            Command::CreateRecord {
                kind,
                unit,
                fields,
                by,
                request,
                reply,
            } => {
                let checked = match entity(kind) {
                    None => Err(WriteError::NotARecordKind(kind)),
                    Some(spec) => {
                        let fields = grassroots_schema::records::trimmed(fields);
                        match spec
                            .validate(&unit, &fields, true)
                            .and_then(|()| spec.check_text(&fields))
                        {
                            Ok(()) => self
                                .record_for(&unit, by.as_ref(), request.as_deref())
                                .map(|r| (r, spec, spec.with_defaults(&unit, fields)))
                                .map_err(Into::into),
                            Err(e) => Err(e.into()),
                        }
                    }
                };
                match checked {
                    Ok((record, spec, fields)) => batch.record_writes.push(PendingRecord {
                        op: RecordOp::Create(RecordRef { kind, unit, record }, fields, stamped(by)),
                        spec,
                        reply,
                    }),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::UpdateRecord {
                id,
                fields,
                by,
                reply,
            } => {
                let checked = match entity(id.kind) {
                    None => Err(WriteError::NotARecordKind(id.kind)),
                    Some(spec) => {
                        let fields = grassroots_schema::records::trimmed(fields);
                        spec.validate(&id.unit, &fields, false)
                            .and_then(|()| spec.check_text(&fields))
                            .map(|()| (spec, fields))
                            .map_err(Into::into)
                    }
                };
                match checked {
                    Ok((spec, fields)) => batch.record_writes.push(PendingRecord {
                        op: RecordOp::Update(id, fields, stamped(by)),
                        spec,
                        reply,
                    }),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::DeleteMember { id, reply } if batch.moving(&id) => {
                let _ = reply.send(Err(WriteError::InFlight(id)));
            }
            Command::DeleteMember { id, reply } => batch.writes.push(PendingWrite {
                op: PendingOp::Delete(id, None),
                reply,
            }),
            Command::TransferMember {
                id,
                to,
                by,
                sensitive,
                reply,
                removed,
            } => {
                // Judged on the member as committed: another write of it in this batch
                // (applied later) would be lost or copied.
                if batch.writes.iter().any(|w| w.op.id() == &id) || batch.moving(&id) {
                    let _ = reply.send(Err(WriteError::InFlight(id)));
                    return;
                }
                if to == id.unit {
                    let _ = reply.send(Err(WriteError::Invalid(RecordError::BadField {
                        field: "to".into(),
                        why: "is the member's own unit".into(),
                    })));
                    return;
                }
                let member = match self.held_member(&id) {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        let _ = reply.send(Err(WriteError::NotFound(id)));
                        return;
                    }
                    Err(r) => {
                        let _ = reply.send(Err(WriteError::Refused(r)));
                        return;
                    }
                };
                // A unit this node knows (a registered one), and its register, made if need
                // be: refused here, before the removal is queued, if this node may not write
                // it.
                if self
                    .engine
                    .get(&DocId::new(DocKind::Profile, to.clone()))
                    .is_none()
                {
                    let _ = reply.send(Err(WriteError::NoUnit(to)));
                    return;
                }
                if let Err(e) = self.local_doc(
                    DocMeta::new(DocId::new(DocKind::Members, to.clone())),
                    batch,
                ) {
                    let _ = reply.send(Err(e));
                    return;
                }
                let record = match self.new_record() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                        return;
                    }
                };
                // Both in this batch, so in one commit.
                let made = MemberId { unit: to, record };
                if !sensitive {
                    batch.without_sensitive.insert(made.clone());
                }
                batch.writes.push(PendingWrite {
                    op: PendingOp::Create(made.clone(), batch.moved(&made, member), stamped(by)),
                    reply,
                });
                batch.moves.push((
                    made,
                    PendingWrite {
                        op: PendingOp::Delete(id, None),
                        reply: removed,
                    },
                ));
            }
            Command::DeleteRecord { id, reply } => match entity(id.kind) {
                None => {
                    let _ = reply.send(Err(WriteError::NotARecordKind(id.kind)));
                }
                // Fields decided from above (a complaint's handling, a report's review, an
                // appraisal's rating) make a record one the levels above hold its unit to
                // account by; a removal concurrent with such a decision would be refused at
                // the hop holding it.
                Some(spec) if spec.record_guard().is_some() => {
                    let _ = reply.send(Err(WriteError::NotRemovable(id.kind)));
                }
                Some(spec) => batch.record_writes.push(PendingRecord {
                    op: RecordOp::Delete(id, None),
                    spec,
                    reply,
                }),
            },
            Command::SetUnitDetails {
                unit,
                details,
                reply,
            } => {
                let r = self.set_unit_details(&unit, &details, batch);
                reply_after_commit(batch, reply, r);
            }
            Command::SetProfile {
                name,
                children,
                reply,
            } => {
                let r = self.set_profile(&name, &children, batch);
                reply_after_commit(batch, reply, r);
            }
            Command::AddUser {
                token_hash,
                unit,
                role,
                name,
                reply,
            } => {
                let row = match name.as_deref().map(str::trim) {
                    Some(n) => {
                        if let Err(e) = grassroots_schema::records::validate_user_name(n) {
                            let _ = reply.send(Err(e.into()));
                            return;
                        }
                        format!("{unit} {role} {n}")
                    }
                    None => format!("{unit} {role}"),
                };
                batch.users.push((token_hash, row));
                batch.replies.push(Box::new(move |c| {
                    let _ = reply.send(c.map_err(|e| StoreError::NotStored(failure_reason(e))));
                }));
            }
            Command::RemoveUsers {
                name,
                within,
                reply,
            } => {
                let found = reader::users_named(&self.db, &name, &within);
                match found {
                    Ok(hashes) => {
                        let n = hashes.len();
                        batch.users_removed.extend(hashes);
                        reply_after_commit(batch, reply, Ok(n));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::VerifyViews { reply } => batch.views.push(ViewsCommand::Verify(reply)),
            Command::LoadAll { reply } => {
                let _ = reply.send(Ok(self.load_all()));
            }
            Command::RebuildViews { reply } => batch.views.push(ViewsCommand::Rebuild(reply)),
            Command::PeerUp {
                peer,
                outbox,
                counters,
                reply,
            } => {
                // The handshake read the revocations committed then: one made since (or
                // in a batch not yet committed) must not let the link in.
                if self.link_revoked(&counters) {
                    tracing::warn!(%peer, "a link came up with a certificate revoked meanwhile: refused");
                    let _ = reply.send(Err(StoreError::Revoked(counters.fingerprint.clone())));
                    return;
                }
                let now = now_ms();
                // A live connection this one replaces, closed by its link for what the peer
                // sent, whose going down has not come yet: counted now (and only once).
                if self.links.get(&peer).is_some_and(|l| l.connected) {
                    self.count_closing_by_link(&peer, now);
                }
                // (A time off further ahead than the longest is a clock set back: not kept.)
                if let Some(until) = self
                    .links
                    .get(&peer)
                    .map(|l| l.kept_off_until_ms)
                    .filter(|until| *until > now && *until - now <= MAX_KEPT_OFF_MS)
                {
                    tracing::debug!(%peer, "a link came up while the peer is kept off: refused");
                    let secs = (until - now).div_ceil(1000);
                    let _ = reply.send(Err(StoreError::KeptOff { peer, secs }));
                    return;
                }
                // A newer connection of the same peer replaces a live one (a child whose
                // address changed redials before its old connection times out here); two
                // at once would feed one session from two streams.
                let replaced = self.outboxes.contains_key(&peer);
                if replaced {
                    tracing::info!(%peer, "a new connection replaces the live one");
                    self.on_peer_down(peer.clone(), batch);
                }
                let mut saved = match self.saved_states(&peer) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(%peer, "cannot read saved sync states, starting fresh: {e}");
                        HashMap::new()
                    }
                };
                // The replaced session's states are not committed yet: newer than the saved.
                if replaced {
                    saved.extend(
                        batch
                            .states
                            .iter()
                            .filter(|(p, _, _)| *p == peer)
                            .map(|(_, d, s)| (d.clone(), s.clone())),
                    );
                }
                // The documents changed since the last session are loaded and started in
                // this batch's peer work and, when it runs out, the next batches' (a county
                // back after a long partition may have hundreds).
                for msg in self.engine.open_link(&peer, saved) {
                    batch.sends.push((peer.clone(), msg));
                }
                self.outboxes.insert(peer.clone(), outbox);
                // A peer does not start its counts again by redialling, and the count of
                // its closings starts again only an hour after its time off.
                let entry = LinkEntry::next(self.links.get(&peer), counters, now);
                self.dials.remove(&peer);
                self.links.insert(peer, entry);
                batch.replies.push(Box::new(move |_| {
                    let _ = reply.send(Ok(()));
                }));
            }
            Command::PeerDown { peer, session } => {
                // A late notice from an older connection must not end a newer one.
                if self
                    .links
                    .get(&peer)
                    .is_some_and(|l| l.counters.session == session)
                {
                    self.count_closing_by_link(&peer, now_ms());
                    self.on_peer_down(peer, batch);
                }
            }
            Command::Expect { peers } => {
                for p in peers {
                    self.dials_of(p);
                }
            }
            #[cfg(test)]
            Command::Hold { entered, until } => {
                let _ = entered.send(());
                let _ = until.recv();
            }
            #[cfg(test)]
            Command::PeerWork(d) => self.peer_work = d,
            Command::DialFailed { peer, error } => {
                let d = self.dials_of(peer);
                d.count = d.count.saturating_add(1);
                d.last_error = Some(error);
            }
            Command::Revoke {
                child,
                fingerprint,
                reply,
            } => {
                let r = self.revoke(&child, &fingerprint, batch);
                // Only the live link of that certificate: revoking an old one after a
                // re-enrolment leaves the child's link with its new one alone.
                let live = self.links.get(&child).filter(|l| {
                    l.connected
                        && l.counters
                            .certs
                            .first()
                            .is_some_and(|c| c.named_by(&fingerprint))
                });
                if r.is_ok()
                    && let Some(l) = live
                    && self.outboxes.contains_key(&child)
                {
                    tracing::warn!(%child, "certificate revoked: dropping the live link");
                    l.counters
                        .revoked
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    self.on_peer_down(child, batch);
                }
                reply_after_commit(batch, reply, r);
            }
            // The frame's hold on the link's budget ends with this arm.
            Command::FromPeer {
                peer,
                session,
                msg,
                held,
            } => self.on_peer_input(peer, session, PeerInput::Frame(msg), held, batch),
            Command::Compacted(done) => batch.compacted.push(done),
            Command::Checked(done) => {
                self.engine
                    .adopt_checked(&done.doc, &done.heads, done.loaded)
            }
            Command::Shutdown { reply } => batch.shutdown = Some(reply),
        }
    }

    /// The first `n` batch frames under way go on, each by at least one item and then while
    /// the share lasts; a peer whose frame is done has the frames that waited behind it
    /// taken next, in order.
    fn resume_rests(&mut self, n: usize, batch: &mut Batch, timing: &mut BatchTiming) {
        for _ in 0..n {
            let Some(r) = self.peer_rests.pop_front() else {
                break;
            };
            timing.peer_frames += 1;
            let peer = r.peer.clone();
            self.on_peer_input(r.peer, r.session, PeerInput::Rest(r.rest), r.held, batch);
            if !self.peer_rests.iter().any(|r| r.peer == peer)
                && let Some(waited) = self.stashed.remove(&peer)
            {
                self.unstashed.extend(waited);
            }
        }
    }

    /// A peer's frame, or the rest of one, taken in until this batch's share of peer work
    /// ends (at least one item of a batch frame).
    fn on_peer_input(
        &mut self,
        peer: UnitId,
        session: u64,
        input: PeerInput,
        held: Option<tokio::sync::OwnedSemaphorePermit>,
        batch: &mut Batch,
    ) {
        let Some(link) = self.links.get(&peer) else {
            return;
        };
        // Frames wait behind local commands (`serve`): their link may have been
        // closed here since (a revocation, too many refusals) or replaced by a newer
        // connection. Dropped, not refused: the peer sends again on its next one.
        if !link.connected || link.counters.session != session {
            tracing::debug!(%peer, "dropping a frame of a closed or replaced connection");
            return;
        }
        // A peer that asks for more than it reads: what waits to be sent to it is
        // this node's memory.
        let queued = link
            .counters
            .queued_out
            .load(std::sync::atomic::Ordering::Relaxed);
        if queued > MAX_OUTBOX_BYTES && self.outboxes.contains_key(&peer) {
            tracing::warn!(
                %peer,
                queued,
                "the peer does not read what this node sends: closing the connection"
            );
            self.on_peer_down(peer, batch);
            return;
        }
        let until = self.peer_until;
        let mut more = || std::time::Instant::now() < until;
        let (step, rest) = match input {
            PeerInput::Frame(msg) => self.engine.receive_until(&peer, msg, &mut more),
            PeerInput::Rest(rest) => self.engine.resume(&peer, rest, &mut more),
        };
        if let Some(rest) = rest {
            self.peer_rests.push_back(PeerRest {
                peer: peer.clone(),
                session,
                rest,
                held,
            });
        }
        let now = now_ms();
        for author in step.authors {
            batch.heard.insert(author, now);
        }
        let mut over = false;
        for rejection in &step.rejected {
            // A local failure (a document that would not load) is not the peer's.
            let theirs = crate::sync::is_peers_fault(rejection.reason);
            let (total, recent) = self.links.get_mut(&peer).map_or((0, 0), |l| {
                l.rejected += 1;
                if theirs {
                    l.rejected_now = l.rejected_now.saturating_add(1);
                    l.rejected_at_ms = now;
                }
                (l.rejected, l.rejected_now)
            });
            // Logged one by one up to a point; a peer past it is cut off.
            if recent <= MAX_REJECTED_PER_LINK {
                tracing::warn!(
                    %peer,
                    reason = ?rejection.reason,
                    doc = ?rejection.doc.as_ref().map(ToString::to_string),
                    detail = %rejection.detail,
                    rejected_from_peer = total,
                    "rejected a message from a peer"
                );
            }
            over |= recent > MAX_REJECTED_PER_LINK;
        }
        if over && self.outboxes.contains_key(&peer) {
            let off = self.cut_off(&peer, now);
            tracing::warn!(
                %peer,
                "more than {MAX_REJECTED_PER_LINK} messages refused on this connection: closing it{}",
                kept_off_for(off)
            );
            self.on_peer_down(peer.clone(), batch);
        }
        // Every revocation a link's check reads is in this node's profile or an ancestor's.
        let me = self.engine.me();
        let profiles_changed = step
            .changed
            .iter()
            .any(|d| d.kind == DocKind::Profile && (d.owner == *me || d.owner.is_ancestor_of(me)));
        batch.resync.extend(step.changed.iter().cloned());
        batch.forward.extend(step.forward);
        batch.dirty.extend(step.changed);
        batch.created.extend(step.created);
        batch.sends.extend(step.send);
        if profiles_changed {
            self.drop_revoked_links(batch);
        }
    }

    /// Count a closing of `peer`'s link for what it sent, at `now`: how long its links are
    /// refused from now on (ms; see [`keep_off`]). Only a child is kept off: a node sets
    /// its own pace of dialling its parent, which is also its certificate's issuer. The
    /// connection's refusals and its link's closing are used up by this count.
    fn cut_off(&mut self, peer: &UnitId, now: u64) -> u64 {
        let child = peer.parent().as_ref() == Some(self.engine.me());
        self.links.get_mut(peer).map_or(0, |l| {
            let (count, off) = keep_off(l.cut_off, l.cut_off_at_ms, l.kept_off_until_ms, now);
            let off = if child { off } else { 0 };
            l.cut_off = count;
            l.cut_off_at_ms = now;
            l.kept_off_until_ms = now.saturating_add(off);
            l.rejected_now = 0;
            l.counters
                .misbehaved
                .store(false, std::sync::atomic::Ordering::Relaxed);
            l.counters
                .malformed
                .store(0, std::sync::atomic::Ordering::Relaxed);
            off
        })
    }

    /// If `peer`'s link closed itself for what the peer sent (frames that do not decode, one
    /// over the cap), count that as a closing for refused messages ([`Actor::cut_off`],
    /// which uses the link's mark up, so it counts once).
    fn count_closing_by_link(&mut self, peer: &UnitId, now: u64) {
        let misbehaved = self.links.get(peer).is_some_and(|l| {
            l.counters
                .misbehaved
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        if misbehaved {
            let off = self.cut_off(peer, now);
            if off > 0 {
                tracing::warn!(%peer, "closed for what it sent{}", kept_off_for(off));
            }
        }
    }

    /// The link to `peer` ends: its sync states are saved, and its connection is closed if
    /// it still runs (a revocation, a replacement or a misbehaving peer end it from here).
    fn on_peer_down(&mut self, peer: UnitId, batch: &mut Batch) {
        // The rest of its last frame is dropped with the link, as its queued frames are; a
        // newer connection's coming up (and what came on it) waited behind it, and goes on.
        self.peer_rests.retain(|r| r.peer != peer);
        if let Some(waited) = self.stashed.remove(&peer) {
            let old = self.links.get(&peer).map(|l| l.counters.session);
            self.unstashed.extend(waited.into_iter().filter(
                |c| !matches!(c, Command::FromPeer { session, .. } if Some(*session) == old),
            ));
        }
        for (doc, state) in self.engine.disconnect(&peer) {
            batch.states.push((peer.clone(), doc, state));
        }
        self.outboxes.remove(&peer);
        if let Some(l) = self.links.get_mut(&peer) {
            l.connected = false;
            l.down_since_ms = now_ms();
            l.counters.close.cancel();
        }
    }

    /// Drop every view row and write them again from the documents. A document that does
    /// not parse is left out and named in the log, as the migrations do: the rebuild is what
    /// an operator is sent to, and one bad document must not keep the others' views stale.
    fn rebuild_views(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        rebuild_views_in(
            &tx,
            Some(self.engine.me().clone()),
            self.engine
                .docs()
                .filter_map(|entry| match self.doc_or_load(entry) {
                    Ok(d) => Some(Ok((entry.meta.clone(), d))),
                    Err(StoreError::Corrupt(e)) => {
                        tracing::error!(doc = %entry.meta.id, "views left out of a document that does not parse ({e})");
                        None
                    }
                    Err(e) => Some(Err(e)),
                }),
        )?;
        tx.commit().map_err(db)?;
        self.rollups.committed();
        Ok(())
    }

    /// A hosted document: the loaded one, or read from the store for this use only.
    fn doc_or_load<'a>(
        &self,
        entry: &'a crate::sync::DocEntry,
    ) -> Result<Cow<'a, Automerge>, StoreError> {
        Ok(match entry.doc() {
            Some(d) => Cow::Borrowed(d),
            None => Cow::Owned(load::load_doc(&self.db, &entry.meta.id)?),
        })
    }

    /// The view rows the documents imply, against the rows stored.
    fn verify_views(&self) -> Result<Vec<String>, StoreError> {
        let mut want_members = BTreeMap::new();
        let mut want_units = BTreeMap::new();
        let mut want_records = BTreeMap::new();
        let mut want_refs = BTreeMap::new();
        let mut all_members = Vec::new();
        let mut all_records = Vec::new();
        let mut tallies = Vec::new();
        let mut unreadable = Vec::new();
        for entry in self.engine.docs() {
            let owner = entry.meta.owner();
            let d = match self.doc_or_load(entry) {
                Ok(d) => d,
                // Named as a difference (its views cannot be checked), not an error that
                // hides what the other documents' views hold.
                Err(StoreError::Corrupt(e)) => {
                    unreadable.push(format!("document {} does not parse: {e}", entry.meta.id));
                    continue;
                }
                Err(e) => return Err(e),
            };
            match entry.meta.id.kind {
                DocKind::Members => {
                    for m in doc::read_members(&d, owner) {
                        want_members
                            .insert(format!("{}{}", owner.tree_key(), m.id.record), to_json(&m)?);
                        all_members.push(m);
                    }
                }
                DocKind::Profile => {
                    if let Some(p) = doc::read_profile(&d, owner) {
                        want_units.insert(owner.tree_key(), to_json(&p)?);
                        tallies.push((owner.clone(), p.tallies()));
                    }
                }
                kind => {
                    let Some(spec) = entity(kind) else { continue };
                    let prefix = records_key(kind, owner);
                    for r in doc::read_records(&d, spec, owner) {
                        if let Some(target) = r.refers_to() {
                            want_refs.insert(format!("{target}{}", ref_source(&r)), Vec::new());
                        }
                        want_records.insert(format!("{prefix}{}", r.id.record), to_json(&r)?);
                        tallies.push((owner.clone(), spec.tallies(&r)));
                        all_records.push(r);
                    }
                }
            }
        }
        let want_rollups = rollup::compute(all_members.iter(), tallies.into_iter())?;
        let tx = self.db.begin_read().map_err(db)?;
        let pairs = |table: redb::TableDefinition<'_, (&str, &str), &[u8]>| -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
            let mut out = BTreeMap::new();
            for row in tx.open_table(table).map_err(db)?.iter().map_err(db)? {
                let (k, v) = row.map_err(db)?;
                let (a, b) = k.value();
                out.insert(format!("{a}{b}"), v.value().to_vec());
            }
            Ok(out)
        };
        let rows = |table: redb::TableDefinition<'_, &str, &[u8]>| -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
            let mut out = BTreeMap::new();
            for row in tx.open_table(table).map_err(db)?.iter().map_err(db)? {
                let (k, v) = row.map_err(db)?;
                out.insert(k.value().to_owned(), v.value().to_vec());
            }
            Ok(out)
        };
        let mut diffs = unreadable;
        compare_rows("member", &want_members, &pairs(VIEW_MEMBERS)?, &mut diffs);
        let me = order::store_unit(&tx.open_table(OWNER).map_err(db)?)?;
        let want_order: BTreeMap<String, Vec<u8>> = all_members
            .iter()
            .flat_map(|m| order::texts(me.as_ref(), m))
            .chain(
                all_records
                    .iter()
                    .flat_map(|r| order::texts(me.as_ref(), r)),
            )
            .map(|k| (k, Vec::new()))
            .collect();
        let mut have_order = BTreeMap::new();
        for row in tx.open_table(VIEW_ORDER).map_err(db)?.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            let (l, key, unit, record) = k.value();
            have_order.insert(order::entry_text(l, key, unit, record), v.value().to_vec());
        }
        compare_rows("sorted index entry", &want_order, &have_order, &mut diffs);
        compare_rows("record", &want_records, &pairs(VIEW_RECORDS)?, &mut diffs);
        compare_rows("receipt", &want_refs, &pairs(VIEW_REFS)?, &mut diffs);
        compare_rows("unit", &want_units, &rows(VIEW_UNITS)?, &mut diffs);
        compare_rows("roll-up", &want_rollups, &rows(VIEW_ROLLUPS)?, &mut diffs);
        Ok(diffs)
    }

    fn status(&self) -> NodeStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let mut links: Vec<LinkStatus> = self
            .links
            .iter()
            .map(|(peer, l)| {
                let progress = self.engine.progress(peer).unwrap_or_default();
                let dials = self.dials.get(peer);
                LinkStatus {
                    peer: peer.clone(),
                    connected: l.connected,
                    fingerprint: l.counters.fingerprint.clone(),
                    protocol: l.counters.protocol,
                    software: l.counters.software.clone(),
                    since_ms: l.since_ms,
                    down_since_ms: l.down_since_ms,
                    failed_dials: dials.map_or(0, |d| d.count),
                    last_error: dials.and_then(|d| d.last_error.clone()),
                    last_frame_ms: l.counters.last_frame_ms.load(Relaxed),
                    bytes_in: l.counters.bytes_in.load(Relaxed),
                    bytes_out: l.counters.bytes_out.load(Relaxed),
                    probes_out: l.counters.probes_out.load(Relaxed),
                    docs_in_flight: progress.in_flight,
                    docs_queued: progress.queued,
                    docs_unregistered: progress.unregistered,
                    rejected: l.rejected,
                    kept_off_until_ms: l.kept_off_until_ms,
                }
            })
            .collect();
        // Peers never connected since start: down since then, with their dial failures.
        links.extend(
            self.dials
                .iter()
                .filter(|(peer, _)| !self.links.contains_key(*peer))
                .map(|(peer, d)| {
                    LinkStatus::never_up(peer.clone(), d.since_ms, d.count, d.last_error.clone())
                }),
        );
        links.sort_by(|a, b| a.peer.cmp(&b.peer));
        let mut heard: Vec<(UnitId, u64)> =
            self.heard.iter().map(|(u, t)| (u.clone(), *t)).collect();
        heard.sort();
        let residency = self.engine.residency();
        NodeStatus {
            links,
            heard,
            documents: residency.hosted,
            documents_loaded: residency.loaded,
            loaded_bytes: residency.loaded_bytes,
            take_back_until_ms: self.engine.returning_until(),
        }
    }

    /// [`StoreHandle::load_every_document`]: each document loaded, the cache evicted to the
    /// budget after every 64 (a document that does not parse is skipped).
    fn load_all(&mut self) -> u64 {
        let ids: Vec<DocId> = self.engine.docs().map(|e| e.meta.id.clone()).collect();
        let mut loaded = 0u64;
        for (i, id) in ids.iter().enumerate() {
            if self.engine.load(id).is_ok() {
                loaded += 1;
            }
            if i % 64 == 63 {
                self.evict();
            }
        }
        self.evict();
        loaded
    }

    /// Drop loaded documents beyond the memory budget, never one with changes not yet
    /// persisted (it would be read back without them).
    fn evict(&mut self) {
        let persisted = &self.persisted;
        let retry = &self.retry;
        let evicted = self
            .engine
            .evict_to(self.options.doc_memory_budget, |id, heads| {
                retry.contains(id)
                    || persisted
                        .get(id)
                        .map_or(!heads.is_empty(), |p| p.heads != heads)
            });
        if evicted > 0 {
            tracing::debug!(evicted, "documents evicted to the memory budget");
        }
    }

    /// Hand `msg` to a link's writer, counting it as waiting until written.
    fn enqueue(&self, peer: &UnitId, out: &mpsc::UnboundedSender<Msg>, msg: Msg) {
        if let Some(l) = self.links.get(peer) {
            l.counters
                .queued_out
                .fetch_add(wire::weight(&msg), std::sync::atomic::Ordering::Relaxed);
        }
        let _ = out.send(msg);
    }

    /// Send messages to their peers in order, packing runs of sync messages to the same peer
    /// into one `SyncBatch` frame (up to `MAX_BATCH_BYTES`, one message per document).
    fn deliver(&self, sends: Vec<(UnitId, Msg)>) {
        // Per peer: the sync items waiting to go out, their total size and their documents.
        type Pending = (Vec<(DocId, Vec<u8>)>, usize, HashSet<DocId>);
        let mut pending: HashMap<UnitId, Pending> = HashMap::new();
        let flush = |peer: &UnitId, items: Vec<(DocId, Vec<u8>)>| {
            let Some(out) = self.outboxes.get(peer) else {
                return;
            };
            let msg = match <[_; 1]>::try_from(items) {
                Ok([(doc, data)]) => Msg::Sync { doc, data },
                Err(items) if items.is_empty() => return,
                Err(items) => Msg::SyncBatch(items),
            };
            self.enqueue(peer, out, msg);
        };
        for (peer, msg) in sends {
            match msg {
                Msg::Sync { doc, data } => {
                    let entry = pending.entry(peer.clone()).or_default();
                    // One item per document in a batch: a receiver refuses a batch that
                    // repeats one document more than a few times (each item is answered).
                    if (entry.1 + data.len() > MAX_BATCH_BYTES
                        || entry.0.len() >= wire::MAX_BATCH_ITEMS
                        || entry.2.contains(&doc))
                        && !entry.0.is_empty()
                    {
                        flush(&peer, std::mem::take(&mut entry.0));
                        entry.1 = 0;
                        entry.2.clear();
                    }
                    entry.1 += data.len();
                    entry.2.insert(doc.clone());
                    entry.0.push((doc, data));
                }
                other => {
                    if let Some((items, _, _)) = pending.remove(&peer) {
                        flush(&peer, items);
                    }
                    if let Some(out) = self.outboxes.get(&peer) {
                        self.enqueue(&peer, out, other);
                    }
                }
            }
        }
        for (peer, (items, _, _)) in pending {
            flush(&peer, items);
        }
    }

    fn saved_states(&self, peer: &UnitId) -> Result<HashMap<DocId, Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(SYNC_STATES).map_err(db)?;
        let mut out = HashMap::new();
        let p = peer.as_str();
        for row in t.range(rows_of(p)).map_err(db)? {
            let (k, v) = row.map_err(db)?;
            if let Ok(id) = k.value().1.parse::<DocId>() {
                out.insert(id, v.value().to_vec());
            }
        }
        Ok(out)
    }

    /// A new record id: seconds since the epoch in the high 32 bits, 32 random bits, and
    /// never below the last id this node made. Ids of one second sort after every older
    /// one, so a batch of creates lands on the last pages of the members view instead of one
    /// page per record (the commit was a third of the ingest time with random ids). Two
    /// nodes collide only by creating in the same register in the same second with the same
    /// 32 random bits.
    fn new_record(&mut self) -> Result<RecordId, StoreError> {
        let random = u64::from_be_bytes(random_bytes()?) & ((1 << RECORD_RANDOM_BITS) - 1);
        let secs = now_ms() / 1000;
        let id = (secs << RECORD_RANDOM_BITS | random).max(self.last_record.wrapping_add(1));
        self.last_record = id;
        Ok(RecordId::from_u64(id))
    }

    /// The id of a record a create makes: the one its request key names, or a new one.
    fn record_for(
        &mut self,
        unit: &UnitId,
        by: Option<&Writer>,
        request: Option<&str>,
    ) -> Result<RecordId, StoreError> {
        match request {
            Some(key) => Ok(request_record(unit, by, key)),
            None => self.new_record(),
        }
    }

    /// A member as this node holds it (its register loaded if need be): `None` when there
    /// is no such record or it is not readable.
    fn held_member(&mut self, id: &MemberId) -> Result<Option<Member>, Rejection> {
        let doc = DocId::new(DocKind::Members, id.unit.clone());
        if self.engine.get(&doc).is_none() {
            return Ok(None);
        }
        let d = self.engine.load(&doc)?;
        Ok(doc::read_member(d, &id.unit, id.record))
    }

    /// The failed dials of `peer`, counted from now if none were yet.
    fn dials_of(&mut self, peer: UnitId) -> &mut DialFailures {
        let now = now_ms();
        self.dials.entry(peer).or_insert_with(|| DialFailures {
            since_ms: now,
            ..DialFailures::default()
        })
    }

    fn local_doc(
        &mut self,
        meta: DocMeta,
        batch: &mut Batch,
    ) -> Result<&mut Automerge, WriteError> {
        let id = meta.id.clone();
        let (doc, created) = self.engine.local_doc(meta).map_err(WriteError::Refused)?;
        if created {
            batch.created.insert(id);
        }
        Ok(doc)
    }

    fn after_local_write(&mut self, id: DocId, batch: &mut Batch) {
        batch.heard.insert(self.engine.me().clone(), now_ms());
        batch.sends.extend(self.engine.fan_out(&id, None));
        if id.kind == DocKind::Profile {
            // It may register a unit whose documents a link set aside.
            let step = self.engine.registrations_changed(&id.owner);
            batch.created.extend(step.created);
            batch.sends.extend(step.send);
        }
        batch.dirty.insert(id);
    }

    /// Apply the batch's writes: per document, in arrival order, in one automerge
    /// transaction (one change), so concurrent writers share the change as they share the
    /// fsync. Replies wait for the commit like every other write.
    fn apply_writes(&mut self, batch: &mut Batch) {
        self.reread_moved(batch);
        let members = std::mem::take(&mut batch.writes);
        self.apply_waiting(members, batch);
        // A transfer's removal only once its member is made, so that a failure leaves the
        // member where it was rather than nowhere.
        let mut removals = Vec::new();
        for (made, removal) in std::mem::take(&mut batch.moves) {
            if matches!(self.held_member(&made), Ok(Some(_))) {
                removals.push(removal);
            } else {
                removal.fail(WriteError::NotFound(made));
            }
        }
        self.apply_waiting(removals, batch);
        let records = std::mem::take(&mut batch.record_writes);
        self.apply_waiting(records, batch);
    }

    /// A transfer copies its member as held now, not as read when the command was taken:
    /// peers' frames are handled after the local commands of a batch, so a peer's edit of
    /// the member taken into this batch is carried over, and a member a peer removed is not
    /// made again (its copy fails, and with it the removal).
    fn reread_moved(&mut self, batch: &mut Batch) {
        for i in 0..batch.moves.len() {
            let (made, source) = {
                let (made, removal) = &batch.moves[i];
                (made.clone(), removal.op.id().clone())
            };
            let Some(at) = batch
                .writes
                .iter()
                .position(|w| matches!(&w.op, PendingOp::Create(id, ..) if *id == made))
            else {
                continue;
            };
            match self.held_member(&source) {
                Ok(Some(now)) => {
                    let fields = batch.moved(&made, now);
                    if let PendingOp::Create(_, new, _) = &mut batch.writes[at].op {
                        *new = fields;
                    }
                }
                Ok(None) => batch.writes.remove(at).fail(WriteError::NotFound(source)),
                Err(r) => batch.writes.remove(at).fail(WriteError::Refused(r)),
            }
        }
    }

    /// [`Self::apply_writes`] for one kind of waiting write.
    fn apply_waiting<W: Waiting>(&mut self, writes: Vec<W>, batch: &mut Batch) {
        let mut by_doc: BTreeMap<DocId, Vec<W>> = BTreeMap::new();
        for w in writes {
            by_doc.entry(w.doc()).or_default().push(w);
        }
        for (doc_id, writes) in by_doc {
            let exists = self.engine.get(&doc_id).is_some();
            if !exists && writes.iter().all(W::is_update) {
                for w in writes {
                    let missing = w.missing();
                    w.fail(missing);
                }
                continue;
            }
            let meta = DocMeta::new(doc_id.clone());
            let me = self.engine.me().clone();
            let doc = match self.local_doc(meta.clone(), batch) {
                Ok(doc) => doc,
                Err(e) => {
                    for w in writes {
                        w.fail(match &e {
                            WriteError::Refused(r) => WriteError::Refused(r.clone()),
                            other => StoreError::Corrupt(other.to_string()).into(),
                        });
                    }
                    continue;
                }
            };
            // What the parent will check of this node's change, checked against the document
            // the change is built on: refused now rather than accepted here and refused
            // there, which would hold back every later change of the document.
            let mut allowed = Vec::with_capacity(writes.len());
            let mut earlier = Handling::new();
            // Creates of this batch by record, and repeats of them in it (answered after the
            // writes are applied, with what the first made).
            let (mut made, mut repeats) = (HashSet::new(), Vec::new());
            // What the allowed writes so far set per record: the parent judges their one
            // change as a whole, so each write is checked after them.
            let mut set_before: HashMap<RecordId, Fields> = HashMap::new();
            for mut w in writes {
                if let Some(record) = w.creates() {
                    if made.contains(&record) {
                        repeats.push(w);
                        continue;
                    }
                    w = match w.existing(doc) {
                        Ok((reply, outcome)) => {
                            reply_after_commit(batch, reply, outcome);
                            continue;
                        }
                        Err(w) => w,
                    };
                    made.insert(record);
                }
                w.settle(doc, &earlier);
                if w.doomed() {
                    let missing = w.missing();
                    w.fail(missing);
                    continue;
                }
                // Judged as the writer's unit (at or below this node's), against the record as
                // the batch leaves it: the gateway judged the user against the record as the
                // views held it when the request came, and a unit this node serves below it
                // (a village without a node of its own) could otherwise have two racing
                // requests both pass there, the second landing in this node's name.
                let judge = w
                    .writer()
                    .filter(|u| u.is_in_subtree_of(&me))
                    .unwrap_or(&me);
                let verdict = match w.field_writes() {
                    Some((record, fields)) => {
                        let before = set_before.get(&record);
                        crate::sync::check_local(doc, &meta, judge, record, fields, before)
                            .map(|()| Some((record, fields.clone())))
                    }
                    None => Ok(None),
                };
                match verdict {
                    Ok(set) => {
                        if let Some((record, fields)) = set {
                            set_before.entry(record).or_default().extend(fields);
                        }
                        w.leave(&mut earlier);
                        allowed.push(w);
                    }
                    Err(detail) => w.fail(WriteError::Refused(Rejection {
                        reason: wire::RejectReason::Unauthorised,
                        doc: Some(doc_id.clone()),
                        detail,
                    })),
                }
            }
            let writes = allowed;
            if writes.is_empty() {
                continue;
            }
            // Why each create of the batch that failed did, for its repeats.
            let mut failed: HashMap<RecordId, String> = HashMap::new();
            let (writes, results) = match W::apply(doc, &writes) {
                Ok(r) => (writes, r),
                Err(e) => {
                    tracing::error!(doc = %doc_id, "automerge refused a batch of writes: {e}");
                    for w in writes {
                        if let Some(record) = w.creates() {
                            failed.insert(record, format!("automerge: {e}"));
                        }
                        w.fail(StoreError::Corrupt(format!("automerge: {e}")).into());
                    }
                    (Vec::new(), Vec::new())
                }
            };
            // The document changed if any write went in, even one whose read-back failed.
            let applied = results.iter().any(Result::is_ok);
            for (w, result) in writes.into_iter().zip(results) {
                let deletes = w.deletes();
                let created = w.creates();
                let (reply, outcome) = w.outcome(doc, result);
                match (&outcome, created) {
                    (Ok(row), _) => {
                        W::rows(batch)
                            .entry(doc_id.clone())
                            .or_default()
                            .insert(W::record(row), (!deletes).then(|| row.clone()));
                    }
                    (Err(e), Some(record)) => {
                        failed.insert(record, e.to_string());
                    }
                    (Err(_), None) => {}
                }
                reply_after_commit(batch, reply, outcome);
            }
            // Repeats get what their first got: the record it made, or its failure.
            for w in repeats {
                match w.creates().and_then(|r| failed.get(&r).cloned()) {
                    Some(why) => w.fail(StoreError::Corrupt(why).into()),
                    None => match w.existing(doc) {
                        Ok((reply, outcome)) => reply_after_commit(batch, reply, outcome),
                        Err(w) => {
                            let missing = w.missing();
                            w.fail(missing);
                        }
                    },
                }
            }
            if applied {
                self.after_local_write(doc_id, batch);
            }
        }
    }

    fn set_unit_details(
        &mut self,
        unit: &UnitId,
        details: &UnitDetails,
        batch: &mut Batch,
    ) -> Result<UnitProfile, WriteError> {
        let meta = DocMeta::new(DocId::new(DocKind::Profile, unit.clone()));
        let id = meta.id.clone();
        details.validate()?;
        // A level above may register a unit without a node of its own by naming it.
        if self.engine.get(&id).is_none() && details.name.is_none() {
            return Err(WriteError::NoUnit(unit.clone()));
        }
        // Named from above, the unit joins the registered tree: each unit from it up to this
        // node listed in its parent's profile, so that its documents travel up (a node
        // creates documents from a link only for registered units).
        let me = self.engine.me().clone();
        let line: Vec<(UnitId, UnitId)> = unit
            .line()
            .take_while(|u| *u != me)
            .filter_map(|u| u.parent().map(|p| (u, p)))
            .collect();
        // The profiles the registration touches are read in first: one that will not load
        // refuses the whole write before any part of it is made, rather than leave the
        // details changed and the registration missing. (The unit's own profile fails, if
        // it does, before anything is changed; nothing is evicted before the commit.)
        for (child, p) in &line {
            let id = DocId::new(DocKind::Profile, p.clone());
            if self.engine.get(&id).is_some() {
                self.engine.load(&id).map_err(WriteError::Refused)?;
                // The parent refuses a profile past its cap: one grown past it here would
                // never travel up again.
                if let Some(d) = self.engine.get(&id).and_then(|e| e.doc()) {
                    full_profile(d, &id, !doc::is_registered(d, child))?;
                }
            }
        }
        let doc = self.local_doc(meta, batch)?;
        let changed = doc::set_unit_details(doc, details)?;
        let profile = doc::read_profile(doc, unit);
        if changed {
            self.after_local_write(id, batch);
        }
        for (child, parent) in line {
            let meta = DocMeta::new(DocId::new(DocKind::Profile, parent));
            let id = meta.id.clone();
            if doc::register_child(self.local_doc(meta, batch)?, &child)? {
                self.after_local_write(id, batch);
            }
        }
        profile.ok_or_else(|| WriteError::NoUnit(unit.clone()))
    }

    /// Whether a link with `counters` runs on a revoked certificate, or one
    /// checked through a revoked CA.
    fn link_revoked(&mut self, counters: &LinkCounters) -> bool {
        counters.certs.iter().any(|c| self.revoked(c))
    }

    /// End the live links whose certificate, or the CA it was checked through, a profile
    /// that changed now revokes (a revocation made above this node and synced here: a CA
    /// stolen with a machine whose unit was issued again).
    fn drop_revoked_links(&mut self, batch: &mut Batch) {
        let live: Vec<(UnitId, Arc<LinkCounters>)> = self
            .links
            .iter()
            .filter(|(p, l)| l.connected && self.outboxes.contains_key(*p))
            .map(|(p, l)| (p.clone(), l.counters.clone()))
            .collect();
        for (peer, counters) in live {
            if self.link_revoked(&counters) {
                tracing::warn!(%peer, "a certificate of a live link is revoked now: dropping it");
                counters
                    .revoked
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.on_peer_down(peer, batch);
            }
        }
    }

    /// Whether `cert` is revoked in the profile of its issuer (its unit's parent, or the
    /// unit itself at the root) as this node holds it now.
    fn revoked(&mut self, cert: &crate::pki::Revocable) -> bool {
        let peer = &cert.unit;
        let issuer = crate::pki::issuer_of(peer);
        let id = DocId::new(DocKind::Profile, issuer.clone());
        if self.engine.get(&id).is_none() {
            return false;
        }
        match self.engine.load(&id) {
            Ok(d) => doc::is_revoked(d, &[&cert.key, &cert.whole]),
            Err(r) => {
                // Fail closed, as the handshake's check does.
                tracing::error!(%peer, "cannot read revocations: {}", r.detail);
                true
            }
        }
    }

    fn revoke(
        &mut self,
        child: &UnitId,
        fingerprint: &str,
        batch: &mut Batch,
    ) -> Result<(), WriteError> {
        let me = self.engine.me().clone();
        if child.parent().as_ref() != Some(&me) {
            return Err(WriteError::NotAChild(child.clone()));
        }
        if fingerprint.len() != 64
            || !fingerprint
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(WriteError::BadFingerprint);
        }
        let meta = DocMeta::new(DocId::new(DocKind::Profile, me));
        let id = meta.id.clone();
        let doc = self.local_doc(meta, batch)?;
        full_profile(doc, &id, !doc::is_revoked(doc, &[fingerprint]))?;
        doc::revoke(doc, fingerprint, child)?;
        self.after_local_write(id, batch);
        Ok(())
    }

    fn set_profile(
        &mut self,
        name: &str,
        children: &[UnitId],
        batch: &mut Batch,
    ) -> Result<(), WriteError> {
        let me = self.engine.me().clone();
        let meta = DocMeta::new(DocId::new(DocKind::Profile, me));
        let id = meta.id.clone();
        if doc::set_profile(self.local_doc(meta, batch)?, name, children)? {
            self.after_local_write(id, batch);
        }
        Ok(())
    }

    /// Persist the batch in one write transaction: new documents, appended change rows,
    /// snapshots the compactor made, re-materialised views and roll-ups, sync states, users.
    /// Returns the documents whose content the commit stored (for change notifications).
    fn commit(&mut self, batch: &Batch) -> Result<Vec<DocId>, StoreError> {
        if batch.dirty.is_empty()
            && batch.created.is_empty()
            && batch.states.is_empty()
            && batch.users.is_empty()
            && batch.users_removed.is_empty()
            && batch.compacted.is_empty()
            && batch.unread.is_empty()
        {
            return Ok(Vec::new());
        }
        // Dirty documents are loaded (never evicted while unpersisted); a retried one might
        // not be if its load failed before. A register taken unread is stored as it came.
        for id in batch.dirty.iter().chain(&batch.unread.reread) {
            if self.engine.unread(id).is_some() {
                continue;
            }
            if let Err(r) = self.engine.load(id) {
                tracing::error!(doc = %id, "cannot load a changed document: {}", r.detail);
            }
        }
        let tx = self.db.begin_write().map_err(db)?;
        let mut updated: BTreeMap<DocId, Persisted> = BTreeMap::new();
        let mut changed = Vec::new();
        let rollups_changed;
        {
            let mut docs = tx.open_table(DOCS).map_err(db)?;
            let mut state_t = tx.open_table(DOC_STATE).map_err(db)?;
            let mut rollups = tx.open_table(VIEW_ROLLUPS).map_err(db)?;
            let mut snaps = tx.open_table(SNAPSHOTS).map_err(db)?;
            let mut changes = tx.open_table(CHANGES).map_err(db)?;
            // The store opened only for its owner's unit: the engine's.
            let mut views = Views::open(&tx, Some(self.engine.me().clone()))?;
            // A document's audience is fixed at creation: its row is written once, when the
            // document is first committed (a created one whose commit failed is still dirty).
            let unwritten = batch
                .dirty
                .iter()
                .filter(|id| !self.persisted.contains_key(*id));
            for id in batch.created.iter().chain(unwritten) {
                let Some(entry) = self.engine.get(id) else {
                    continue;
                };
                let key = id.to_string();
                docs.insert(
                    key.as_str(),
                    wire::encode_audience(&entry.meta.audience).as_slice(),
                )
                .map_err(db)?;
            }
            // What a view row is read from when the rows are given.
            let none = Automerge::new();
            let mut unread_t = tx.open_table(UNREAD).map_err(db)?;
            // What loading registers taken unread found goes first: a register emptied here
            // may have been given something else since (a write here, or taken again), which
            // the dirty documents below then store as a first commit.
            for id in batch.unread.all() {
                unread_t.remove(id.to_string().as_str()).map_err(db)?;
            }
            for id in &batch.unread.emptied {
                let Some(entry) = self.engine.get(id) else {
                    continue;
                };
                let key = id.to_string();
                views.materialise(&entry.meta, &none, &Only::All)?;
                snaps.remove(key.as_str()).map_err(db)?;
                changes
                    .retain_in((key.as_str(), 0)..=(key.as_str(), u64::MAX), |_, _| false)
                    .map_err(db)?;
                state_t.remove(key.as_str()).map_err(db)?;
            }
            for id in &batch.dirty {
                let mut p = if batch.unread.emptied.contains(id) {
                    Persisted::default()
                } else {
                    self.persisted.get(id).cloned().unwrap_or_default()
                };
                // A document's first commit (nothing of it stored yet) is its snapshot, made
                // here and kept beside the document: a register received whole from a peer
                // often goes on whole to the next level up, which lacks it too.
                let first = p.heads.is_empty() && p.next_seq == 0;
                let snapshot = if first { self.engine.saved(id) } else { None };
                let Some(entry) = self.engine.get(id) else {
                    continue;
                };
                // A register taken unread: its chunk as received is its snapshot, its views
                // the records read from the chunk's columns.
                if let Some(u) = self.engine.unread(id) {
                    if !first {
                        return Err(StoreError::NotStored(format!(
                            "document {id} was taken whole but something of it is stored"
                        )));
                    }
                    let key = id.to_string();
                    snaps.insert(key.as_str(), &*u.bytes).map_err(db)?;
                    unread_t.insert(key.as_str(), u.from.as_str()).map_err(db)?;
                    p.heads = u.heads.clone();
                    state_t
                        .insert(key.as_str(), load::encode_state(&p).as_slice())
                        .map_err(db)?;
                    let only = Only::Members(Cow::Borrowed(&*u.members));
                    views.materialise(&entry.meta, &none, &only)?;
                    updated.insert(id.clone(), p);
                    changed.push(id.clone());
                    continue;
                }
                // A changed document that is not loaded (a retried one whose load failed)
                // fails the commit: its writers must not be told their writes are stored.
                let Some(d) = entry.doc() else {
                    return Err(StoreError::NotStored(format!(
                        "document {id} has changes but could not be loaded"
                    )));
                };
                let meta = &entry.meta;
                let key = id.to_string();
                // What the views reflect now: they were committed with these heads.
                let viewed = p.heads.clone();
                let heads = d.get_heads();
                if heads == p.heads {
                    continue;
                }
                // The changes since the views' heads, when this commit stores them as a row.
                let new = if first {
                    // A register received whole from a peer is stored as automerge's compact
                    // form, a ninth of its raw changes (29 KB against 268 KB for 1,000
                    // households), and saving it costs less than re-encoding those changes
                    // (automerge keeps no raw bytes for a document received whole).
                    let bytes = snapshot.unwrap_or_else(|| crate::doc::save(d).into());
                    snaps.insert(key.as_str(), &*bytes).map_err(db)?;
                    None
                } else {
                    let changes_new = d.get_changes(&p.heads);
                    let mut bytes = Vec::new();
                    for c in &changes_new {
                        bytes.extend_from_slice(c.raw_bytes());
                    }
                    changes
                        .insert((key.as_str(), p.next_seq), bytes.as_slice())
                        .map_err(db)?;
                    p.next_seq += 1;
                    p.rows_since_snapshot += 1;
                    p.changes_since_snapshot += changes_new.len();
                    p.bytes_since_snapshot += bytes.len() as u64;
                    Some(changes_new)
                };
                p.heads = heads;
                state_t
                    .insert(key.as_str(), load::encode_state(&p).as_slice())
                    .map_err(db)?;
                // Peer changes: the records the new changes name, or else that automerge's
                // diff names since the views' heads (a new document is read whole).
                let local = !batch.resync.contains(id);
                let touched = || {
                    new.as_deref()
                        .and_then(|n| doc::records_touched_by(d, n))
                        .unwrap_or_else(|| {
                            tracing::debug!(doc = %id, "records touched: from the diff");
                            doc::touched_records(d, &viewed, &p.heads)
                        })
                        .into_iter()
                };
                let only = match (batch.records.get(id), batch.entity_rows.get(id)) {
                    (Some(rows), _) if local => Only::Members(Cow::Borrowed(rows)),
                    (_, Some(rows)) if local => Only::Records(Cow::Borrowed(rows)),
                    _ if viewed.is_empty() => Only::All,
                    _ if id.kind == DocKind::Members => Only::Members(Cow::Owned(
                        touched()
                            .map(|r| (r, doc::read_member(d, &id.owner, r)))
                            .collect(),
                    )),
                    _ => match entity(id.kind) {
                        // Some fields are read by authority, and automerge's diff says
                        // nothing when a field already in conflict gets another value that
                        // loses the op order (it may win by authority); and a report's
                        // acceptance depends on its other fields: such a document's rows are
                        // all read again (one unit's complaints, reports or appraisals).
                        Some(spec) if spec.by_authority().next().is_some() => Only::All,
                        Some(spec) => Only::Records(Cow::Owned(
                            touched()
                                .map(|r| (r, doc::read_record(d, spec, &id.owner, r)))
                                .collect(),
                        )),
                        None => Only::All,
                    },
                };
                views.materialise(meta, d, &only)?;
                updated.insert(id.clone(), p);
                changed.push(id.clone());
            }
            for id in &batch.unread.reread {
                let Some(entry) = self.engine.get(id) else {
                    continue;
                };
                // Loaded before the transaction; one that no longer loads keeps its row, and
                // the next open reads it again.
                let Some(d) = entry.doc() else {
                    unread_t.insert(id.to_string().as_str(), "").map_err(db)?;
                    continue;
                };
                views.materialise(&entry.meta, d, &Only::All)?;
                if !changed.contains(id) {
                    changed.push(id.clone());
                }
            }
            // Snapshots from the compactor replace exactly the rows they were made from; rows
            // appended since stay, and so does their share of the bookkeeping.
            for done in batch
                .compacted
                .iter()
                .filter(|d| !batch.unread.emptied.contains(&d.job.doc))
            {
                let job = &done.job;
                let snapshot = match &done.snapshot {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(doc = %job.doc, "compaction failed (changes stay as rows): {e}");
                        continue;
                    }
                };
                let Some(mut p) = updated
                    .get(&job.doc)
                    .or_else(|| self.persisted.get(&job.doc))
                    .cloned()
                else {
                    continue;
                };
                let key = job.doc.to_string();
                snaps
                    .insert(key.as_str(), snapshot.as_slice())
                    .map_err(db)?;
                changes
                    .retain_in((key.as_str(), 0)..(key.as_str(), job.upto), |_, _| false)
                    .map_err(db)?;
                p.rows_since_snapshot = p.rows_since_snapshot.saturating_sub(job.rows);
                p.changes_since_snapshot = p.changes_since_snapshot.saturating_sub(job.changes);
                p.bytes_since_snapshot = p.bytes_since_snapshot.saturating_sub(job.bytes);
                state_t
                    .insert(key.as_str(), load::encode_state(&p).as_slice())
                    .map_err(db)?;
                updated.insert(job.doc.clone(), p);
            }
            views.save_feed(&tx)?;
            rollups_changed = views.deltas.apply(&mut rollups)?;
            let mut states = tx.open_table(SYNC_STATES).map_err(db)?;
            if !batch.unread.emptied.is_empty() {
                let emptied: HashSet<String> = batch
                    .unread
                    .emptied
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                states
                    .retain(|(_, doc), _| !emptied.contains(doc))
                    .map_err(db)?;
            }
            // A state saved in this batch of a register since emptied speaks of heads no
            // longer held.
            for (peer, doc, state) in batch
                .states
                .iter()
                .filter(|(_, doc, _)| !batch.unread.emptied.contains(doc))
            {
                let d = doc.to_string();
                states
                    .insert((peer.as_str(), d.as_str()), state.as_slice())
                    .map_err(db)?;
            }
            let mut users = tx.open_table(USERS).map_err(db)?;
            for (hash, value) in &batch.users {
                users.insert(hash.as_slice(), value.as_str()).map_err(db)?;
            }
            for hash in &batch.users_removed {
                users.remove(hash.as_slice()).map_err(db)?;
            }
            let mut heard = tx.open_table(HEARD).map_err(db)?;
            for (unit, at) in &batch.heard {
                heard.insert(unit.as_str(), *at).map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        // Readers' decoded roll-ups stay valid through commits that did not touch them.
        if rollups_changed {
            self.rollups.committed();
        }
        self.due.extend(
            updated
                .iter()
                .filter(|(_, p)| p.due())
                .map(|(id, _)| id.clone()),
        );
        for id in &batch.unread.emptied {
            self.persisted.remove(id);
            self.due.remove(id);
            // Its rows went: subscribers hear of it (once, if stored again too).
            if !changed.contains(id) {
                changed.push(id.clone());
            }
        }
        self.persisted.extend(updated);
        Ok(changed)
    }
}

/// Name every row `want` (from the documents) and `have` (stored) disagree on.
fn compare_rows(
    what: &str,
    want: &BTreeMap<String, Vec<u8>>,
    have: &BTreeMap<String, Vec<u8>>,
    diffs: &mut Vec<String>,
) {
    for (k, v) in want {
        if have.get(k) != Some(v) {
            diffs.push(format!("{what} {k} missing or stale in the view"));
        }
    }
    for k in have.keys().filter(|k| !want.contains_key(*k)) {
        diffs.push(format!("{what} {k} in the view but not in the documents"));
    }
}

/// Refuse a write that would add an entry to the profile `doc` (`adds`) when it holds the
/// most registered units and revocations a peer takes ([`crate::sync::MAX_PROFILE_ENTRIES`]).
fn full_profile(doc: &Automerge, id: &DocId, adds: bool) -> Result<(), WriteError> {
    let max = crate::sync::MAX_PROFILE_ENTRIES;
    if adds && doc::profile_entries(doc) >= max {
        return Err(WriteError::Refused(Rejection {
            reason: wire::RejectReason::TooLarge,
            doc: Some(id.clone()),
            detail: format!(
                "{} holds {max} registered units and revocations, the most a profile may",
                id.owner
            ),
        }));
    }
    Ok(())
}

/// What an operator is told when the store stops being able to write.
fn failure_reason(cause: &StoreError) -> String {
    let full = match cause {
        StoreError::Db(redb::Error::Io(e)) => e.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    };
    if full {
        format!(
            "the disk is full: the store cannot write ({cause}); free some space, then start the node again (every acknowledged write is kept)"
        )
    } else if let StoreError::Corrupt(_) = cause {
        format!(
            "the store cannot commit ({cause}); with the node stopped, `grassroots store verify` shows which views differ from the documents and `grassroots store rebuild` makes them again (every acknowledged write is kept)"
        )
    } else {
        format!(
            "the store cannot write ({cause}); start the node again once the cause is fixed (every acknowledged write is kept)"
        )
    }
}

/// A view row's bytes: the JSON of a view model.
fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn reply_after_commit<T: Send + 'static, E: From<StoreError> + Send + 'static>(
    batch: &mut Batch,
    reply: oneshot::Sender<Result<T, E>>,
    result: Result<T, E>,
) {
    match result {
        Err(e) => {
            let _ = reply.send(Err(e));
        }
        Ok(v) => batch.replies.push(Box::new(move |commit| {
            let _ = reply.send(match commit {
                Ok(()) => Ok(v),
                Err(e) => Err(E::from(StoreError::NotStored(failure_reason(e)))),
            });
        })),
    }
}

/// The view tables a commit writes, and the roll-up deltas of the rows it replaces.
struct Views<'t> {
    members: redb::Table<'t, (&'static str, &'static str), &'static [u8]>,
    order: order::OrderTable<'t>,
    /// The store's unit: which sorted listings it indexes.
    me: Option<UnitId>,
    units: redb::Table<'t, &'static str, &'static [u8]>,
    records: redb::Table<'t, (&'static str, &'static str), &'static [u8]>,
    refs: redb::Table<'t, (&'static str, &'static str), &'static [u8]>,
    deltas: rollup::Deltas,
    feed: redb::Table<'t, u64, &'static str>,
    feed_at: redb::Table<'t, &'static str, u64>,
    /// The feed's next position, saved in [`META`] by [`Views::save_feed`].
    feed_next: u64,
    /// The same as read when the views were opened.
    feed_opened: u64,
}

/// Drop every view row (roll-ups included) and write them again from `docs`, every hosted
/// document, in `tx`. Documents are taken one at a time, so a store's documents need not
/// fit in memory together.
fn rebuild_views_in<'d>(
    tx: &redb::WriteTransaction,
    me: Option<UnitId>,
    docs: impl Iterator<Item = Result<(DocMeta, Cow<'d, Automerge>), StoreError>>,
) -> Result<(), StoreError> {
    let mut views = Views::open(tx, me)?;
    let mut rollups = tx.open_table(VIEW_ROLLUPS).map_err(db)?;
    views.members.retain(|_, _| false).map_err(db)?;
    views.order.retain(|_, _| false).map_err(db)?;
    views.units.retain(|_, _| false).map_err(db)?;
    views.records.retain(|_, _| false).map_err(db)?;
    views.refs.retain(|_, _| false).map_err(db)?;
    rollups.retain(|_, _| false).map_err(db)?;
    // Roll-up rows of a layout before 14, which migration 14 would otherwise write over
    // these.
    tx.delete_table(VIEW_ROLLUPS_JSON).map_err(db)?;
    // The feed starts again in a new epoch, every record in it once: rows written from
    // empty tables cannot tell what was removed since, so a reader's old position could
    // miss a deletion.
    views.feed.retain(|_, _| false).map_err(db)?;
    views.feed_at.retain(|_, _| false).map_err(db)?;
    // From empty tables every row is a +1: the deltas are the roll-ups.
    for doc in docs {
        let (meta, d) = doc?;
        views.materialise(&meta, &d, &Only::All)?;
    }
    views.save_feed(tx)?;
    views.deltas.apply(&mut rollups)?;
    new_feed_epoch(tx)
}

/// Start a new epoch of the record feed: positions a reader holds from before mean nothing
/// after a rebuild or a restore (a restored store's positions run again from the backup's).
pub(super) fn new_feed_epoch(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    // Random, not a clock reading: a restore must not come back to an epoch a reader holds
    // (a clock set back, or two stores made in one millisecond).
    tx.open_table(META)
        .map_err(db)?
        .insert(FEED_EPOCH, u64::from_le_bytes(random_bytes()?))
        .map_err(db)?;
    Ok(())
}

/// `N` bytes from the system's random source.
pub(super) fn random_bytes<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| StoreError::Random)?;
    Ok(b)
}

/// Which rows of a document a commit rewrites.
enum Only<'a> {
    /// Every row, compared with the stored ones.
    All,
    /// These members (`None`: the record is gone).
    Members(Cow<'a, BTreeMap<RecordId, Option<Member>>>),
    /// These records of the other kinds.
    Records(Cow<'a, BTreeMap<RecordId, Option<Record>>>),
}

/// The second key of a receipt row: the reporting unit's tree key and the record.
fn ref_source(r: &Record) -> String {
    format!("{}|{}", r.id.unit.tree_key(), r.id.record)
}

impl<'t> Views<'t> {
    /// The view tables of `tx`, with no delta yet, for the node of `me` (the store's unit,
    /// which decides what the sorted index holds).
    fn open(tx: &'t redb::WriteTransaction, me: Option<UnitId>) -> Result<Views<'t>, StoreError> {
        let feed_next = {
            let meta = tx.open_table(META).map_err(db)?;
            meta.get(FEED_NEXT).map_err(db)?.map_or(1, |v| v.value())
        };
        Ok(Views {
            members: tx.open_table(VIEW_MEMBERS).map_err(db)?,
            order: tx.open_table(VIEW_ORDER).map_err(db)?,
            me,
            units: tx.open_table(VIEW_UNITS).map_err(db)?,
            records: tx.open_table(VIEW_RECORDS).map_err(db)?,
            refs: tx.open_table(VIEW_REFS).map_err(db)?,
            deltas: rollup::Deltas::default(),
            feed: tx.open_table(FEED).map_err(db)?,
            feed_at: tx.open_table(FEED_AT).map_err(db)?,
            feed_next,
            feed_opened: feed_next,
        })
    }

    /// Put `record` at the feed's next position (marked deleted when its row went), taking it
    /// from where it was.
    fn note_feed(&mut self, record: &RecordRef, deleted: bool) -> Result<(), StoreError> {
        let at = self.feed_next;
        self.feed_next += 1;
        let key = record.to_string();
        if let Some(old) = self.feed_at.insert(key.as_str(), at).map_err(db)? {
            let old = old.value();
            self.feed.remove(old).map_err(db)?;
        }
        let entry = if deleted { format!("-{key}") } else { key };
        self.feed.insert(at, entry.as_str()).map_err(db)?;
        Ok(())
    }

    /// Save the feed's next position in `tx`'s [`META`], if it moved.
    fn save_feed(&self, tx: &redb::WriteTransaction) -> Result<(), StoreError> {
        if self.feed_next == self.feed_opened {
            return Ok(());
        }
        tx.open_table(META)
            .map_err(db)?
            .insert(FEED_NEXT, self.feed_next)
            .map_err(db)?;
        Ok(())
    }

    /// Rewrite the view rows of one document from its current content: all of them, or
    /// only the records named (with their current rows). Rows replaced or removed count
    /// `-1` in the roll-up deltas, rows written `+1`.
    fn materialise(
        &mut self,
        meta: &DocMeta,
        document: &Automerge,
        only: &Only<'_>,
    ) -> Result<(), StoreError> {
        let owner = meta.owner();
        match (meta.id.kind, only) {
            (DocKind::Members, Only::Members(rows)) => {
                for (record, row) in rows.iter() {
                    self.put_member(owner, *record, row.as_ref())?;
                }
            }
            (DocKind::Members, _) => {
                let old = stored(&self.members, &owner.tree_key())?;
                let now = doc::read_members(document, owner)
                    .into_iter()
                    .map(|m| (m.id.record, m));
                self.rewrite(old, now, |v, r, m| v.put_member(owner, r, m))?;
            }
            (DocKind::Profile, _) => {
                // A profile that no longer reads as one (a change removed its name) has no
                // row, as a rebuild would make it.
                let key = owner.tree_key();
                let now = doc::read_profile(document, owner);
                let old = match &now {
                    Some(p) => {
                        let json = to_json(p)?;
                        self.units
                            .insert(key.as_str(), json.as_slice())
                            .map_err(db)?
                    }
                    None => self.units.remove(key.as_str()).map_err(db)?,
                };
                if let Some(old) = old {
                    let old: UnitProfile = serde_json::from_slice(old.value())
                        .map_err(|e| StoreError::Corrupt(format!("unit row {key}: {e}")))?;
                    self.deltas.note_tallies(owner, &old.tallies(), -1);
                }
                if let Some(p) = now {
                    self.deltas.note_tallies(owner, &p.tallies(), 1);
                }
            }
            (kind, Only::Records(rows)) => {
                for (record, row) in rows.iter() {
                    self.put_record(kind, owner, *record, row.as_ref())?;
                }
            }
            (kind, _) => {
                let Some(spec) = entity(kind) else {
                    return Ok(());
                };
                let old = stored(&self.records, &records_key(kind, owner))?;
                let now = doc::read_records(document, spec, owner)
                    .into_iter()
                    .map(|r| (r.id.record, r));
                self.rewrite(old, now, |v, id, r| v.put_record(kind, owner, id, r))?;
            }
        }
        Ok(())
    }

    /// Bring one document's rows from `old` (stored, by record id) to `now` (read from the
    /// document): `put` rows that differ or are new, remove (`put` with `None`) those gone.
    fn rewrite<T: serde::Serialize>(
        &mut self,
        mut old: BTreeMap<String, Vec<u8>>,
        now: impl Iterator<Item = (RecordId, T)>,
        mut put: impl FnMut(&mut Self, RecordId, Option<&T>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for (record, row) in now {
            // A row not stored yet is written without being encoded twice (`put` encodes it).
            let differs = match old.remove(&record.to_string()) {
                None => true,
                Some(was) => was != to_json(&row)?,
            };
            if differs {
                put(self, record, Some(&row))?;
            }
        }
        for rec in old.keys() {
            let record = rec
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("view row {rec}: {e}")))?;
            put(self, record, None)?;
        }
        Ok(())
    }

    /// Write (or with `None` remove) one member row, noting the roll-up deltas.
    fn put_member(
        &mut self,
        owner: &UnitId,
        record: RecordId,
        row: Option<&Member>,
    ) -> Result<(), StoreError> {
        let key = owner.tree_key();
        let rec = record.to_string();
        let k = (key.as_str(), rec.as_str());
        let old: Option<Member> = {
            let guard = match row {
                Some(m) => {
                    self.deltas.note(m, 1);
                    self.members.insert(k, to_json(m)?.as_slice()).map_err(db)?
                }
                None => self.members.remove(k).map_err(db)?,
            };
            guard
                .map(|v| serde_json::from_slice(v.value()))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("member row {key}{rec}: {e}")))?
        };
        let had = old.is_some();
        order::update(
            &mut self.order,
            self.me.as_ref(),
            owner,
            &rec,
            old.as_ref(),
            row,
        )?;
        if let Some(old) = old {
            self.deltas.note(&old, -1);
        }
        // A row removed that was never there (a record that never read as one) is no news.
        if row.is_some() || had {
            let r = RecordRef {
                kind: DocKind::Members,
                unit: owner.clone(),
                record,
            };
            self.note_feed(&r, row.is_none())?;
        }
        Ok(())
    }

    /// Write (or remove) one record row and its receipt row, noting the roll-up deltas.
    fn put_record(
        &mut self,
        kind: DocKind,
        owner: &UnitId,
        record: RecordId,
        row: Option<&Record>,
    ) -> Result<(), StoreError> {
        let Some(spec) = entity(kind) else {
            return Ok(());
        };
        let key = records_key(kind, owner);
        let rec = record.to_string();
        let k = (key.as_str(), rec.as_str());
        let old: Option<Record> = {
            let guard = match row {
                Some(r) => self.records.insert(k, to_json(r)?.as_slice()).map_err(db)?,
                None => self.records.remove(k).map_err(db)?,
            };
            guard
                .map(|v| serde_json::from_slice(v.value()))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("record row {key}{rec}: {e}")))?
        };
        order::update(
            &mut self.order,
            self.me.as_ref(),
            owner,
            &rec,
            old.as_ref(),
            row,
        )?;
        for (r, sign) in old.iter().map(|r| (r, -1)).chain(row.map(|r| (r, 1))) {
            self.deltas.note_tallies(owner, &spec.tallies(r), sign);
            if let Some(target) = r.refers_to() {
                let (target, source) = (target.as_str(), ref_source(r));
                if sign > 0 {
                    self.refs
                        .insert((target, source.as_str()), [].as_slice())
                        .map_err(db)?;
                } else {
                    self.refs.remove((target, source.as_str())).map_err(db)?;
                }
            }
        }
        if row.is_some() || old.is_some() {
            let r = RecordRef {
                kind,
                unit: owner.clone(),
                record,
            };
            self.note_feed(&r, row.is_none())?;
        }
        Ok(())
    }
}

/// The stored rows under one first key, by second key.
fn stored(
    table: &redb::Table<'_, (&'static str, &'static str), &'static [u8]>,
    key: &str,
) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
    let mut out = BTreeMap::new();
    for row in table.range(rows_of(key)).map_err(db)? {
        let (k, v) = row.map_err(db)?;
        out.insert(k.value().1.to_owned(), v.value().to_vec());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use grassroots_schema::entities::Organisation;
    use grassroots_schema::{Education, Gender, MemberStatus, Rollup, Selection};

    fn u(s: &str) -> UnitId {
        s.parse().unwrap()
    }

    /// Unit details giving only a name.
    fn name(n: &str) -> UnitDetails {
        UnitDetails {
            name: Some(n.into()),
            ..UnitDetails::default()
        }
    }

    pub(super) fn sample(name: &str) -> NewMember {
        NewMember {
            name: name.into(),
            birth_year: 1985,
            gender: Gender::Female,
            education: Education::Bachelor,
            joined_on: "2010-07-01".into(),
            status: MemberStatus::Full,
            phone: None,
            id_number: None,
            categories: Vec::new(),
        }
    }

    #[tokio::test]
    async fn acknowledged_writes_survive_reopen_and_views_follow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let me = u("c01/k01/t01");
        let (h, r, t) = open(&path, me.clone()).unwrap();
        h.set_profile("Riverside".into(), vec![u("c01/k01/t01/v01")])
            .await
            .unwrap();
        let mut ids = Vec::new();
        // More than SNAPSHOT_EVERY writes so a compaction happens in between.
        for i in 0..(SNAPSHOT_EVERY as usize + 10) {
            ids.push(
                h.create_member(me.clone(), sample(&format!("Member {i}")))
                    .await
                    .unwrap()
                    .id,
            );
        }
        let upd = h
            .update_member(
                ids[0].clone(),
                MemberPatch {
                    name: Some("Renamed".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(upd.name, "Renamed");
        assert_eq!(r.members(&me, false, None, 1000).unwrap().total, ids.len());
        t.shutdown().await;
        // The writes never left the store quiet long enough for the compactor; stopping
        // folded the rows, so the next start reads one snapshot.
        let doc = DocId::new(DocKind::Members, me.clone());
        assert_eq!(rows_and_snapshot(&r, &doc), (0, true));
        drop(h);
        drop(r);
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let page = r.members(&me, false, None, 1000).unwrap();
        assert_eq!(page.total, ids.len());
        assert_eq!(r.member(&ids[0]).unwrap().unwrap().name, "Renamed");
        assert_eq!(r.unit(&me).unwrap().unwrap().name, "Riverside");
        // Writing after reopen continues the same document.
        h.create_member(me.clone(), sample("After Reopen"))
            .await
            .unwrap();
        assert_eq!(
            r.members(&me, false, None, 1000).unwrap().total,
            ids.len() + 1
        );
        t.shutdown().await;
    }

    /// The record feed: each record once, at its last change, in the order this node stored
    /// them; deletions as such; pages bounded by `first` and by the positions looked at;
    /// cursors sealed to this store; a rebuild starts a new epoch from which an old cursor
    /// reads everything again.
    #[tokio::test]
    async fn the_record_feed_lists_each_record_at_its_last_change() {
        use grassroots_schema::Value as V;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let me = u("c01/k01/t01");
        let (v1, v2) = (u("c01/k01/t01/v01"), u("c01/k01/t01/v02"));
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let all = |from: Option<&FeedCursor>, root: Option<&UnitId>| {
            r.feed(from, root, 1000, 1000, |e, _| Ok(Some(e.clone())))
                .unwrap()
        };
        let names = |p: &FeedPage<FeedEntry>| -> Vec<(String, bool)> {
            p.entries
                .iter()
                .map(|(e, _)| (e.record.to_string(), e.deleted))
                .collect()
        };
        let start = all(None, None);
        assert!(start.entries.is_empty() && !start.more && !start.reset);
        let a = h.create_member(v1.clone(), sample("A")).await.unwrap();
        let b = h.create_member(v2.clone(), sample("B")).await.unwrap();
        let meeting = h
            .create_record(
                DocKind::Meetings,
                v1.clone(),
                [
                    ("kind", V::Text("group_meeting".into())),
                    ("heldOn", V::Text("2026-03-02".into())),
                    ("attendance", V::Int(12)),
                    ("hours", V::Int(2)),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
                None,
                None,
            )
            .await
            .unwrap();
        let member_ref = |m: &Member| RecordRef {
            kind: DocKind::Members,
            unit: m.id.unit.clone(),
            record: m.id.record,
        };
        let first = all(None, None);
        assert_eq!(
            names(&first),
            vec![
                (member_ref(&a).to_string(), false),
                (member_ref(&b).to_string(), false),
                (meeting.id.to_string(), false),
            ]
        );
        let seen = first.next.clone();
        // Nothing new: nothing listed, the position kept (sealed again: a cursor differs
        // each time, the position in it does not).
        let again = all(Some(&seen), None);
        assert!(again.entries.is_empty() && !again.more && !again.reset);
        assert_eq!(r.feed_position(&again.next), r.feed_position(&first.next));
        assert!(r.feed_position(&first.next).is_some());
        assert_ne!(again.next, seen);
        // A change moves the record to the end (listed once); a deletion is listed as such.
        h.update_member(
            a.id.clone(),
            MemberPatch {
                name: Some("A2".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        h.delete_member(b.id.clone()).await.unwrap();
        let later = all(Some(&seen), None);
        assert_eq!(
            names(&later),
            vec![
                (member_ref(&a).to_string(), false),
                (member_ref(&b).to_string(), true),
            ]
        );
        assert_eq!(
            names(&all(None, None)),
            vec![
                (meeting.id.to_string(), false),
                (member_ref(&a).to_string(), false),
                (member_ref(&b).to_string(), true),
            ]
        );
        // A subtree: only its records.
        assert_eq!(
            names(&all(None, Some(&v2))),
            vec![(member_ref(&b).to_string(), true)]
        );
        // Pages: `first` entries, or fewer (none) when `scan` positions were looked at
        // first; each goes on from the last position looked at, and the pages add up to
        // the whole.
        let members_only = |from: Option<&FeedCursor>, first: usize, scan: usize| {
            r.feed(from, None, first, scan, |e, rows| {
                if e.record.kind != DocKind::Members {
                    return Ok(None);
                }
                // The row comes from the page's own read of the views: there unless the
                // entry is the record's removal.
                let id = MemberId {
                    unit: e.record.unit.clone(),
                    record: e.record.record,
                };
                assert_eq!(rows.member(&id)?.is_some(), !e.deleted, "{id}");
                Ok(Some(e.clone()))
            })
            .unwrap()
        };
        let empty = members_only(None, 5, 1);
        assert!(
            empty.entries.is_empty() && empty.more,
            "the meeting alone looked at"
        );
        let mut from = Some(empty.next);
        let mut paged = Vec::new();
        loop {
            let p = members_only(from.as_ref(), 1, 2);
            assert!(p.entries.len() <= 1);
            paged.extend(names(&p));
            from = Some(p.next);
            if !p.more {
                break;
            }
        }
        assert_eq!(
            paged,
            vec![
                (member_ref(&a).to_string(), false),
                (member_ref(&b).to_string(), true),
            ]
        );
        // A reader who takes only the meeting: the members after it (which it may not
        // see) do not make it told there is more, and its position goes past them.
        let meetings_only = |from: Option<&FeedCursor>| {
            r.feed(from, None, 1, 1000, |e, _| {
                Ok((e.record.kind != DocKind::Members).then(|| e.clone()))
            })
            .unwrap()
        };
        let page = meetings_only(None);
        assert_eq!(names(&page), vec![(meeting.id.to_string(), false)]);
        assert!(!page.more, "entries it does not take follow: not said");
        let again = meetings_only(Some(&page.next));
        assert!(again.entries.is_empty() && !again.more);
        // Cursors open only here: another store's (its key differs) and one tampered with
        // read from the start, said so.
        let other = tempfile::tempdir().unwrap();
        let (oh, or, ot) = open(&other.path().join("s.redb"), me.clone()).unwrap();
        oh.create_member(v1.clone(), sample("Elsewhere"))
            .await
            .unwrap();
        let foreign = or
            .feed(None, None, 10, 10, |_, _| Ok(Some(())))
            .unwrap()
            .next;
        ot.shutdown().await;
        let read = all(Some(&foreign), None);
        assert!(read.reset);
        assert_eq!(read.entries.len(), 3);
        let mut bytes = seen.to_string().into_bytes();
        bytes[30] = if bytes[30] == b'0' { b'1' } else { b'0' };
        let tampered: FeedCursor = String::from_utf8(bytes).unwrap().parse().unwrap();
        assert!(all(Some(&tampered), None).reset);
        assert!("12.x".parse::<FeedCursor>().is_err());
        assert!("ab".parse::<FeedCursor>().is_err());
        // A rebuild starts a new epoch: an old cursor reads the feed again from its start,
        // said so, and the deleted record is no longer there to list.
        h.rebuild_views().await.unwrap();
        let rebuilt = all(Some(&seen), None);
        assert!(rebuilt.reset);
        let epoch = |c: &FeedCursor| r.feed_position(c).map(|p| p.epoch);
        assert_ne!(epoch(&rebuilt.next), epoch(&first.next));
        assert!(epoch(&rebuilt.next).is_some());
        let mut listed = names(&rebuilt);
        listed.sort();
        let mut want = vec![
            (member_ref(&a).to_string(), false),
            (meeting.id.to_string(), false),
        ];
        want.sort();
        assert_eq!(listed, want);
        // Cursors and positions survive a restart.
        let before = all(None, None);
        t.shutdown().await;
        drop((h, r));
        let (h, r, t) = open(&path, me.clone()).unwrap();
        h.create_member(v1.clone(), sample("C")).await.unwrap();
        let after = r
            .feed(Some(&before.next), None, 10, 10, |e, _| Ok(Some(e.clone())))
            .unwrap();
        assert!(!after.reset);
        assert_eq!(after.entries.len(), 1);
        let before_at = r.feed_position(&before.next).map(|p| p.at);
        assert!(before_at.is_some_and(|at| after.entries[0].0.at > at));
        t.shutdown().await;
    }

    /// A county node's store in `dir`: its unit, three villages below it in two townships
    /// (the listings the sorted index's tests walk), and the store.
    fn county_store(dir: &Path) -> (UnitId, [UnitId; 3], Opened) {
        let me = u("c01/k01");
        let opened = open(&dir.join("store.redb"), me.clone()).unwrap();
        let villages = ["c01/k01/t01/v01", "c01/k01/t01/v02", "c01/k01/t02/v01"].map(u);
        (me, villages, opened)
    }

    /// An ordered listing's pages, each holding only what it shows, add up to the whole
    /// listing sorted, ties broken by unit and record (all reversed when descending), the
    /// count over every row the filter keeps: through the sorted index (a county's subtree
    /// at its own node, a unit's below it walking the county's) and by reading every row,
    /// after renames, new years and deletions; and the index equals a rebuild's.
    #[tokio::test]
    async fn ordered_pages_add_up_to_the_listing_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let (me, villages, (h, r, t)) = county_store(dir.path());
        // Names and years with many ties.
        let mut all = Vec::new();
        for i in 0..60u64 {
            let mut m = sample(&format!("Name {}", (i * 7) % 9));
            m.birth_year = 1950 + ((i * 13) % 17) as i64;
            m.joined_on = format!("20{:02}-01-01", (i * 5) % 11);
            all.push(
                h.create_member(villages[(i % 3) as usize].clone(), m)
                    .await
                    .unwrap(),
            );
        }
        // Renames and new years move rows in the index; deletions take them out.
        for i in (0..60).step_by(5) {
            let patch = MemberPatch {
                name: Some(format!("Renamed {}", i % 4)),
                birth_year: Some(1940 + (i % 3) as i64),
                ..MemberPatch::default()
            };
            all[i] = h.update_member(all[i].id.clone(), patch).await.unwrap();
        }
        for i in [3, 17, 44] {
            h.delete_member(all[i].id.clone()).await.unwrap();
        }
        let all: Vec<Member> = all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| ![3, 17, 44].contains(i))
            .map(|(_, m)| m)
            .collect();
        assert_eq!(h.verify_views().await.unwrap(), Vec::<String>::new());
        let cursor = |by: MemberOrder, m: &Member| OrderedCursor {
            key: by.key(m),
            at: MemberCursor {
                tree_key: m.id.unit.tree_key(),
                record: m.id.record.to_string(),
            },
        };
        // (unit, page size, whether through the index): 57 members held, 39 in t01, 19 in
        // t01/v01; a walk passes over 57 / kept entries per row shown, at most 4 per row of
        // the listing.
        for (unit, size, indexed) in [
            (me.clone(), 7, true),
            (u("c01/k01/t01"), 7, true),
            (u("c01/k01/t01/v01"), 7, true),
            (u("c01/k01/t01/v01"), 50, false),
        ] {
            let tx = r.db_for_tests().begin_read().unwrap();
            let owner = order::store_unit(&tx.open_table(OWNER).unwrap()).unwrap();
            let through =
                reader::through_index(&tx, owner.as_ref(), &unit, &MemberFilter::default(), size);
            assert_eq!(through.unwrap(), indexed, "{unit}, {size} a page");
            let held: Vec<&Member> = all
                .iter()
                .filter(|m| m.id.unit.is_in_subtree_of(&unit))
                .collect();
            for by in MemberOrder::ALL {
                for descending in [false, true] {
                    let mut want = held.clone();
                    want.sort_by(|a, b| {
                        OrderedCursor::cmp_in(&cursor(by, a), &cursor(by, b), descending)
                    });
                    let mut from: Option<OrderedCursor> = None;
                    let mut got = Vec::new();
                    for _ in 0..=held.len() {
                        let p = r
                            .members_ordered(
                                &unit,
                                true,
                                MemberFilter::default(),
                                by,
                                descending,
                                from.as_ref(),
                                size,
                                true,
                            )
                            .unwrap();
                        assert_eq!(p.total, held.len());
                        assert!(p.items.len() <= size);
                        got.extend(p.items.iter().map(|(_, m)| m.id.clone()));
                        from = p.items.last().map(|(c, _)| c.clone());
                        if !p.has_next {
                            break;
                        }
                    }
                    let want: Vec<MemberId> = want.iter().map(|m| m.id.clone()).collect();
                    assert_eq!(got, want, "{unit} by {by:?}, descending {descending}");
                }
            }
            // Nothing sorts after a row without a value (a cursor only a client could make,
            // members all having one), whichever way the listing is read.
            let forged = OrderedCursor {
                key: SortKey(None),
                at: MemberCursor {
                    tree_key: unit.tree_key(),
                    record: String::new(),
                },
            };
            for descending in [false, true] {
                let p = r
                    .members_ordered(
                        &unit,
                        true,
                        MemberFilter::default(),
                        MemberOrder::Name,
                        descending,
                        Some(&forged),
                        size,
                        true,
                    )
                    .unwrap();
                assert!(p.items.is_empty() && !p.has_next, "{unit}, {size} a page");
                assert_eq!(p.total, held.len());
            }
            // The count is of what the filter keeps, and so is the page.
            let filter = MemberFilter {
                name: Some("name 3".into()),
                ..MemberFilter::default()
            };
            let p = r
                .members_ordered(
                    &unit,
                    true,
                    filter,
                    MemberOrder::Name,
                    false,
                    None,
                    100,
                    true,
                )
                .unwrap();
            let named = held.iter().filter(|m| m.name == "Name 3").count();
            assert_eq!((p.total, p.items.len()), (named, named));
            // A range of years, by year (the index walk passes over the rest by their keys).
            let filter = MemberFilter {
                born_from: Some(1955),
                born_to: Some(1960),
                ..MemberFilter::default()
            };
            let p = r
                .members_ordered(
                    &unit,
                    true,
                    filter,
                    MemberOrder::BirthYear,
                    true,
                    None,
                    100,
                    true,
                )
                .unwrap();
            let mut born: Vec<&Member> = held
                .iter()
                .copied()
                .filter(|m| (1955..=1960).contains(&m.birth_year))
                .collect();
            born.sort_by(|a, b| {
                let key = |m: &Member| cursor(MemberOrder::BirthYear, m);
                OrderedCursor::cmp_in(&key(a), &key(b), true)
            });
            let got: Vec<&MemberId> = p.items.iter().map(|(_, m)| &m.id).collect();
            let want: Vec<&MemberId> = born.iter().map(|m| &m.id).collect();
            assert!(!want.is_empty());
            assert_eq!((p.total, got), (want.len(), want));
        }
        t.shutdown().await;
    }

    /// A name search of a county's own listing in stored order finds the names in the
    /// sorted index and reads only the rows found, when reading the first rows (8 in tests)
    /// does not fill the page: the pages add up to what reading every row gives, with the
    /// name alone and with a status besides, counted or not, a page of 2 (found within the
    /// first rows, mostly) and of 20 (not).
    #[tokio::test]
    async fn a_name_search_through_the_index_pages_as_the_rows_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (me, villages, (h, r, t)) = county_store(dir.path());
        let mut all = Vec::new();
        for i in 0..45u64 {
            // Names that hold the text searched for differ, so the index's order (by name)
            // is not the listing's.
            let family = ["Wang", "Li", "Zhao", "Chen"][(i % 4) as usize];
            let mut m = sample(&format!("Name {} {family}", (i * 7) % 9));
            if i % 4 == 0 {
                m.status = MemberStatus::Probationary;
            }
            all.push(
                h.create_member(villages[(i % 3) as usize].clone(), m)
                    .await
                    .unwrap(),
            );
        }
        all.sort_by_key(|m| (m.id.unit.tree_key(), m.id.record.to_string()));
        for status in [None, Some(MemberStatus::Probationary)] {
            for (count, size) in [(true, 2), (false, 2), (false, 20)] {
                let filter = MemberFilter {
                    name: Some("name 3".into()),
                    status,
                    ..MemberFilter::default()
                };
                let want: Vec<&MemberId> = all
                    .iter()
                    .filter(|m| {
                        m.name.starts_with("Name 3 ") && status.is_none_or(|s| m.status == s)
                    })
                    .map(|m| &m.id)
                    .collect();
                assert!(!want.is_empty());
                let mut from: Option<MemberCursor> = None;
                let mut got = Vec::new();
                for _ in 0..=want.len() {
                    let p = r
                        .members_with(&me, true, filter.clone(), from.as_ref(), size, count)
                        .unwrap();
                    assert_eq!(p.total, if count { want.len() } else { 0 });
                    got.extend(p.items.iter().map(|(_, m)| m.id.clone()));
                    from = p.items.last().map(|(c, _)| c.clone());
                    if !p.has_next {
                        break;
                    }
                }
                let got: Vec<&MemberId> = got.iter().collect();
                assert_eq!(got, want, "status {status:?}, count {count}, {size} a page");
            }
        }
        t.shutdown().await;
    }

    /// An integer's sort key reads back as the integer, and keys sort as the integers do.
    #[test]
    fn integer_sort_keys_read_back_and_sort_as_their_integers() {
        let values = [i64::MIN, -1_000_000, -1, 0, 1, 1960, 2026, i64::MAX];
        for w in values.windows(2) {
            let (a, b) = (SortKey::int(w[0]).0.unwrap(), SortKey::int(w[1]).0.unwrap());
            assert!(a < b, "{a} {b}");
        }
        for v in values {
            assert_eq!(SortKey::int_of(&SortKey::int(v).0.unwrap()), Some(v));
        }
        assert_eq!(SortKey::int_of("Li Wei"), None);
        assert_eq!(SortKey::int_of("99999999999999999999999"), None);
    }

    /// A record listing ordered by its kind's period field at a county node reads the sorted
    /// index (its own subtree) and gives what reading every row gives (a township's, or
    /// ordered by another field): ties by unit and record, records without a value last in
    /// both directions, after updates that set, change and clear the value and deletions;
    /// and the index equals a rebuild's.
    #[tokio::test]
    async fn ordered_record_pages_through_the_index_add_up_to_the_listing_sorted() {
        use grassroots_schema::Value as V;
        let dir = tempfile::tempdir().unwrap();
        let (me, villages, (h, r, t)) = county_store(dir.path());
        let fund = h
            .create_record(
                DocKind::Funds,
                me.clone(),
                fields(&[
                    ("name", V::Text("Farmland subsidy".into())),
                    ("year", V::Int(2026)),
                    ("total", V::Int(100_000)),
                ]),
                None,
                None,
            )
            .await
            .unwrap();
        let programme = format!("{}#{}", fund.id.unit, fund.id.record);
        let mut all = Vec::new();
        for i in 0..40u64 {
            let mut f = vec![
                ("programme", V::Text(programme.clone())),
                ("recipient", V::Text(format!("Recipient {}", i % 7))),
                ("amount", V::Int(100 + (i % 5) as i64)),
                ("method", V::Text("bank_transfer".into())),
                ("status", V::Text("paid".into())),
            ];
            // Few dates, many ties; every fifth record without one.
            if i % 5 != 0 {
                f.push(("paidOn", V::Text(format!("2026-0{}-01", 1 + i % 4))));
            }
            let unit = villages[(i % 3) as usize].clone();
            all.push(
                h.create_record(DocKind::Disbursements, unit, fields(&f), None, None)
                    .await
                    .unwrap(),
            );
        }
        // A date set, one changed, one cleared; two records removed.
        for (i, paid) in [
            (0, V::Text("2026-09-09".into())),
            (1, V::Text("2025-01-01".into())),
            (2, V::Null),
        ] {
            all[i] = h
                .update_record(all[i].id.clone(), fields(&[("paidOn", paid)]), None)
                .await
                .unwrap();
        }
        for i in [7, 20] {
            h.delete_record(all[i].id.clone()).await.unwrap();
        }
        let all: Vec<Record> = all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| ![7, 20].contains(i))
            .map(|(_, r)| r)
            .collect();
        assert_eq!(h.verify_views().await.unwrap(), Vec::<String>::new());
        let tx = r.db_for_tests().begin_read().unwrap();
        let index_entries = tx.open_table(VIEW_ORDER).unwrap().iter().unwrap().count();
        assert_eq!(
            index_entries,
            all.len() + 1,
            "one entry per record, the fund's too"
        );
        // Every page of a listing, and its count (when asked; 0 otherwise).
        let pages = |unit: &UnitId,
                     kind: DocKind,
                     (field, descending): (&str, bool),
                     filter: RecordFilter,
                     wanted: &dyn Fn(&Record) -> bool,
                     count: bool| {
            let mut from: Option<OrderedCursor> = None;
            let mut got = Vec::new();
            let mut totals = BTreeSet::new();
            for _ in 0..=60 {
                let q = RecordQuery {
                    kind,
                    unit,
                    subtree: true,
                    after: None,
                    first: 4,
                    count,
                };
                let p = r
                    .records_ordered(&q, (field, descending), from.as_ref(), filter, wanted)
                    .unwrap();
                totals.insert(p.total);
                got.extend(p.items.iter().map(|(_, r)| r.id.clone()));
                from = p.items.last().map(|(c, _)| c.clone());
                if !p.has_next {
                    break;
                }
            }
            (got, totals)
        };
        // The listing sorted, and its size.
        let sorted = |of: &[Record],
                      unit: &UnitId,
                      field: &str,
                      descending: bool,
                      wanted: &dyn Fn(&Record) -> bool| {
            let spec = entity(of[0].id.kind).unwrap();
            let cursor = |r: &Record| OrderedCursor {
                key: SortKey::of_field(spec, field, r),
                at: MemberCursor {
                    tree_key: r.id.unit.tree_key(),
                    record: r.id.record.to_string(),
                },
            };
            let mut want: Vec<&Record> = of
                .iter()
                .filter(|r| r.id.unit.is_in_subtree_of(unit) && wanted(r))
                .collect();
            want.sort_by(|a, b| OrderedCursor::cmp_in(&cursor(a), &cursor(b), descending));
            want.into_iter()
                .map(|r| r.id.clone())
                .collect::<Vec<RecordRef>>()
        };
        let quarter = grassroots_schema::entities::period_months("2026Q1").unwrap();
        let in_quarter = |r: &Record| {
            r.fields
                .get("paidOn")
                .is_some_and(|v| grassroots_schema::entities::in_period(quarter, v))
        };
        let smallest = |r: &Record| r.fields.get("amount") == Some(&V::Int(100));
        let both = |r: &Record| in_quarter(r) && smallest(r);
        let every = |_: &Record| true;
        let within = |all_within| RecordFilter {
            period: Some(quarter),
            all_within,
        };
        type Filter<'a> = (&'a str, RecordFilter, &'a dyn Fn(&Record) -> bool);
        let whole = RecordFilter {
            period: None,
            all_within: true,
        };
        let filters: [Filter<'_>; 6] = [
            ("every", whole, &every),
            ("every, each row read", RecordFilter::default(), &every),
            ("2026Q1", within(true), &in_quarter),
            ("2026Q1, each row read", within(false), &in_quarter),
            ("2026Q1, the smallest", within(false), &both),
            ("the smallest", RecordFilter::default(), &smallest),
        ];
        for (unit, field) in [
            (me.clone(), "paidOn"),
            (u("c01/k01/t01"), "paidOn"),
            (u("c01/k01/t02"), "paidOn"),
            (me.clone(), "recipient"),
        ] {
            for ((name, filter, wanted), descending, count) in filters
                .iter()
                .flat_map(|f| [(f, false), (f, true)])
                .flat_map(|(f, d)| [(f, d, true), (f, d, false)])
            {
                let want = sorted(&all, &unit, field, descending, *wanted);
                let kind = DocKind::Disbursements;
                let (got, totals) =
                    pages(&unit, kind, (field, descending), *filter, *wanted, count);
                let case =
                    format!("{unit} by {field}, descending {descending}, {name}, count {count}");
                assert_eq!(got, want, "{case}");
                // Uncounted, a page read whole still counts.
                assert!(
                    totals == BTreeSet::from([want.len()])
                        || !count && totals.iter().all(|n| [0, want.len()].contains(n)),
                    "{case}: {totals:?}"
                );
                // In stored order, counted likewise.
                let q = RecordQuery {
                    kind,
                    unit: &unit,
                    subtree: true,
                    after: None,
                    first: 100,
                    count: true,
                };
                let stored = r.records(&q, *filter, *wanted).unwrap();
                assert_eq!(stored.total, want.len(), "{case}, in stored order");
                let ids = |of: &mut dyn Iterator<Item = &RecordRef>| -> BTreeSet<String> {
                    of.map(ToString::to_string).collect()
                };
                assert_eq!(
                    ids(&mut stored.items.iter().map(|(_, r)| &r.id)),
                    ids(&mut want.iter()),
                    "{case}, in stored order"
                );
                if *name == "every" && field == "paidOn" {
                    let last = all.iter().find(|r| Some(&r.id) == got.last()).unwrap();
                    assert!(
                        last.fields.get("paidOn").is_none_or(|v| *v == V::Null),
                        "no date comes last: {case}"
                    );
                }
            }
        }
        // A page of the quarter after any row's cursor (in the quarter, before it or after
        // it: another listing's) holds the quarter's rows that sort after that row.
        let spec = entity(DocKind::Disbursements).unwrap();
        let cursor = |r: &Record| OrderedCursor {
            key: SortKey::of_field(spec, "paidOn", r),
            at: MemberCursor {
                tree_key: format!("disbursements|{}", r.id.unit.tree_key()),
                record: r.id.record.to_string(),
            },
        };
        for descending in [false, true] {
            let want = sorted(&all, &me, "paidOn", descending, &in_quarter);
            for row in &all {
                let q = RecordQuery {
                    kind: DocKind::Disbursements,
                    unit: &me,
                    subtree: true,
                    after: None,
                    first: 3,
                    count: false,
                };
                let at = cursor(row);
                let p = r
                    .records_ordered(
                        &q,
                        ("paidOn", descending),
                        Some(&at),
                        within(true),
                        &in_quarter,
                    )
                    .unwrap();
                let got: Vec<RecordRef> = p.items.iter().map(|(_, r)| r.id.clone()).collect();
                let after: Vec<RecordRef> = want
                    .iter()
                    .filter(|id| {
                        let r = all.iter().find(|r| &r.id == *id).unwrap();
                        OrderedCursor::cmp_in(&cursor(r), &at, descending).is_gt()
                    })
                    .take(3)
                    .cloned()
                    .collect();
                assert_eq!(got, after, "after {}, descending {descending}", row.id);
            }
        }
        // Funds, filed under a year (an integer): a year's listing reads its keys alone.
        let mut funds = vec![fund];
        // Two of 2026, fewer than a walk passes over before it gives up: a half year (which
        // holds no year, though its keys span 2026) is counted from the keys.
        for (i, year) in [2025, 2027, 2026, 2024, 2023, 2028].into_iter().enumerate() {
            funds.push(
                h.create_record(
                    DocKind::Funds,
                    villages[i % 3].clone(),
                    fields(&[
                        ("name", V::Text(format!("Fund {i}"))),
                        ("year", V::Int(year)),
                        ("total", V::Int(1_000)),
                    ]),
                    None,
                    None,
                )
                .await
                .unwrap(),
            );
        }
        for year in ["2024", "2026", "2026H2", "2028"] {
            let months = grassroots_schema::entities::period_months(year).unwrap();
            let wanted = |r: &Record| {
                r.fields
                    .get("year")
                    .is_some_and(|v| grassroots_schema::entities::in_period(months, v))
            };
            for descending in [false, true] {
                let want = sorted(&funds, &me, "year", descending, &wanted);
                let (got, totals) = pages(
                    &me,
                    DocKind::Funds,
                    ("year", descending),
                    RecordFilter {
                        period: Some(months),
                        all_within: true,
                    },
                    &wanted,
                    true,
                );
                assert_eq!(got, want, "funds of {year}");
                assert_eq!(totals, BTreeSet::from([want.len()]), "funds of {year}");
            }
        }
        // Either reading's cursors serve the other: a page read whole (here: a township's
        // listing counted) goes on through the index from its last row, and back.
        let township = u("c01/k01/t01");
        let q = |first, count| RecordQuery {
            kind: DocKind::Disbursements,
            unit: &township,
            subtree: true,
            after: None,
            first,
            count,
        };
        let whole = r
            .records_ordered(
                &q(40, true),
                ("paidOn", false),
                None,
                Default::default(),
                &|_| true,
            )
            .unwrap();
        let order: Vec<RecordRef> = whole.items.iter().map(|(_, r)| r.id.clone()).collect();
        assert!(order.len() > 18);
        for (counted, then) in [(true, false), (false, true)] {
            let first = r
                .records_ordered(
                    &q(9, counted),
                    ("paidOn", false),
                    None,
                    Default::default(),
                    &|_| true,
                )
                .unwrap();
            let from = first.items.last().map(|(c, _)| c.clone());
            let next = r
                .records_ordered(
                    &q(9, then),
                    ("paidOn", false),
                    from.as_ref(),
                    Default::default(),
                    &|_| true,
                )
                .unwrap();
            let got: Vec<RecordRef> = first
                .items
                .iter()
                .chain(&next.items)
                .map(|(_, r)| r.id.clone())
                .collect();
            assert_eq!(got, order[..18], "read whole first: {counted}");
        }
        t.shutdown().await;
    }

    /// Each unit's own counts are its roll-up less its children's, at every level of a
    /// subtree whose units all hold records (members in villages, meetings everywhere).
    #[tokio::test]
    async fn a_units_own_counts_are_its_rollup_less_its_childrens() {
        use grassroots_schema::Value as V;
        let dir = tempfile::tempdir().unwrap();
        let me = u("c01");
        let (h, r, t) = open(&dir.path().join("store.redb"), me.clone()).unwrap();
        let units = [
            "c01",
            "c01/k01",
            "c01/k01/t01",
            "c01/k01/t01/v01",
            "c01/k01/t01/v02",
            "c01/k01/t02/v01",
            "c01/k02/t01",
            "c01/k02/t01/v01",
        ]
        .map(u);
        for (i, unit) in units.iter().enumerate() {
            for n in 0..=i {
                let month = 1 + (n % 12);
                h.create_record(
                    DocKind::Meetings,
                    unit.clone(),
                    fields(&[
                        ("kind", V::Text("group_meeting".into())),
                        ("heldOn", V::Text(format!("2026-{month:02}-01"))),
                        ("attendance", V::Int(i as i64 + n as i64)),
                    ]),
                    None,
                    None,
                )
                .await
                .unwrap();
            }
            if unit.level() == grassroots_schema::Level::Village {
                for n in 0..i {
                    h.create_member(unit.clone(), sample(&format!("M {n}")))
                        .await
                        .unwrap();
                }
            }
        }
        let everything = Selection {
            members: true,
            by_status: true,
            by_gender: true,
            by_education: true,
            by_birth_year: true,
            by_joined_year: true,
            higher_joined: (1900..2100).collect(),
            tallies: vec![String::new()],
        };
        let quarter = Selection {
            tallies: vec!["meetings/2026Q1/".into()],
            ..Selection::default()
        };
        let roots = [u("c01"), u("c01/k01"), u("c01/k01/t01")];
        for (root, wanted) in roots
            .iter()
            .flat_map(|r| [(r.clone(), &everything), (r.clone(), &quarter)])
        {
            let own = r.units_own(&root, wanted).unwrap();
            let ids: Vec<UnitId> = own.iter().map(|(u, _)| u.clone()).collect();
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(ids, sorted, "in id order");
            let held: Vec<&UnitId> = units.iter().filter(|u| u.is_in_subtree_of(&root)).collect();
            for unit in &held {
                assert!(ids.contains(unit), "{unit} under {root}");
            }
            for (unit, counts) in &own {
                let mut want = (*r.rollup(unit).unwrap()).clone();
                for (child, _) in own
                    .iter()
                    .filter(|(c, _)| c.parent().as_ref() == Some(unit))
                {
                    want.merge(&r.rollup(child).unwrap(), -1);
                }
                assert_eq!(counts, &want.selected(wanted), "{unit} under {root}");
            }
            // The same units' whole roll-ups, read for the same parts.
            for (unit, read) in r.rollups_selected(&ids, wanted).unwrap() {
                assert_eq!(read, r.rollup(&unit).unwrap().selected(wanted), "{unit}");
            }
            let members: i64 = own.iter().map(|(_, c)| c.members).sum();
            let meetings: i64 = own
                .iter()
                .map(|(_, c)| c.tallies.values().sum::<i64>())
                .sum();
            let whole = r.rollup(&root).unwrap().selected(wanted);
            assert_eq!(members, whole.members, "{root}");
            assert_eq!(meetings, whole.tallies.values().sum::<i64>(), "{root}");
            assert!(
                whole.tallies.values().sum::<i64>() > 0,
                "{root}: counts were kept"
            );
        }
        t.shutdown().await;
    }

    /// Change rows and whether a snapshot exists for `doc`, as committed.
    fn rows_and_snapshot(r: &StoreReader, doc: &DocId) -> (usize, bool) {
        let tx = r.db_for_tests().begin_read().unwrap();
        let key = doc.to_string();
        let rows = tx
            .open_table(CHANGES)
            .unwrap()
            .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
            .unwrap()
            .count();
        let snap = tx
            .open_table(SNAPSHOTS)
            .unwrap()
            .get(key.as_str())
            .unwrap()
            .is_some();
        (rows, snap)
    }

    #[tokio::test]
    async fn a_first_commit_is_a_snapshot_and_a_stop_folds_a_few_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let me = u("c01/k01/t01/v01");
        let doc = DocId::new(DocKind::Members, me.clone());
        let (h, r, t) = open(&path, me.clone()).unwrap();
        h.create_member(me.clone(), sample("First")).await.unwrap();
        assert_eq!(rows_and_snapshot(&r, &doc), (0, true));
        let rows = STOP_FOLD_ROWS as usize;
        for i in 0..rows {
            h.create_member(me.clone(), sample(&format!("M {i}")))
                .await
                .unwrap();
        }
        // Far below the thresholds: nothing is folded while the store runs...
        assert_eq!(rows_and_snapshot(&r, &doc), (rows, true));
        t.shutdown().await;
        drop((h, r));
        // ...but a stop folds them, so the next start reads one snapshot.
        let (h, r, t) = open(&path, me.clone()).unwrap();
        assert_eq!(rows_and_snapshot(&r, &doc), (0, true));
        assert_eq!(r.members(&me, false, None, 100).unwrap().total, rows + 1);
        assert_eq!(h.verify_views().await.unwrap(), Vec::<String>::new());
        t.shutdown().await;
    }

    #[tokio::test]
    async fn compaction_runs_beside_writes_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let me = u("c01/k01/t01/v01");
        let doc = DocId::new(DocKind::Members, me.clone());
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let mut ids = Vec::new();
        for i in 0..SNAPSHOT_EVERY as usize {
            let m = h.create_member(me.clone(), sample(&format!("M {i}"))).await;
            ids.push(m.unwrap().id);
        }
        // Writes keep going while the compactor folds the first rows: the rows they add
        // must survive the snapshot that replaces the older ones.
        let mut waited = 0;
        loop {
            let m = h
                .create_member(me.clone(), sample(&format!("M {}", ids.len())))
                .await;
            ids.push(m.unwrap().id);
            // The first create is the document's first snapshot; each later one is one
            // commit and one row until a new snapshot replaces some.
            let (rows, snap) = rows_and_snapshot(&r, &doc);
            assert!(snap);
            if rows + 1 < ids.len() {
                break;
            }
            waited += 1;
            assert!(
                waited < 5_000,
                "no compaction after {waited} more writes ({rows} rows)"
            );
        }
        for id in ids.iter().step_by(7) {
            let patch = MemberPatch {
                status: Some(MemberStatus::Probationary),
                ..Default::default()
            };
            h.update_member(id.clone(), patch).await.unwrap();
        }
        assert_eq!(h.verify_views().await.unwrap(), Vec::<String>::new());
        t.shutdown().await;
        drop((h, r));
        let (h, r, t) = open(&path, me.clone()).unwrap();
        // Each record read back from the document (snapshot and remaining rows) as written.
        assert_eq!(h.verify_views().await.unwrap(), Vec::<String>::new());
        let page = r.members(&me, false, None, 1000).unwrap();
        assert_eq!(page.total, ids.len());
        for (i, id) in ids.iter().enumerate() {
            let m = r.member(id).unwrap().unwrap();
            let want = if i % 7 == 0 {
                MemberStatus::Probationary
            } else {
                sample("").status
            };
            assert_eq!(m.status, want, "member {i}");
        }
        t.shutdown().await;
    }

    /// Random histories of records of every kind (creates, updates that move their
    /// tallies and receipts, units registered and changed, evictions, a reopen): the
    /// incrementally kept views always equal a rebuild from the documents.
    #[tokio::test]
    async fn record_views_equal_a_rebuild_after_random_histories() {
        use grassroots_schema::Value as V;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01");
        let units = [
            u("c01/k01"),
            u("c01/k01/t01"),
            u("c01/k01/t01/v01"),
            u("c01/k01/t02/v01"),
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let text = |s: &str| V::Text(s.to_owned());
        let mut made: Vec<RecordRef> = Vec::new();
        for round in 0..3 {
            let options = StoreOptions {
                doc_memory_budget: 1,
                ..StoreOptions::default()
            };
            let (h, _r, t) = open_with(&path, me.clone(), options).unwrap();
            for v in &units {
                let details = UnitDetails {
                    name: Some(format!("Unit {v}")),
                    ..UnitDetails::default()
                };
                h.set_unit_details(v.clone(), details).await.unwrap();
            }
            let directive = h
                .create_record(
                    DocKind::Directives,
                    me.clone(),
                    [
                        ("title", text("Plan")),
                        ("body", text("...")),
                        ("issuedOn", text("2026-01-05")),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
                    None,
                    None,
                )
                .await
                .unwrap();
            let target = format!("{}#{}", directive.id.unit, directive.id.record);
            for _ in 0..120 {
                let unit = units[next(units.len())].clone();
                let month = 1 + next(12);
                let date = format!("2026-{month:02}-1{}", next(10));
                let f = |pairs: Vec<(&str, V)>| -> Fields {
                    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                };
                match next(6) {
                    0 => {
                        let kinds = ["party_lecture", "group_meeting", "training"];
                        let fields = f(vec![
                            ("kind", text(kinds[next(3)])),
                            ("heldOn", text(&date)),
                            ("attendance", V::Int(next(40) as i64)),
                            ("hours", V::Int(next(8) as i64)),
                        ]);
                        made.push(
                            h.create_record(DocKind::Meetings, unit, fields, None, None)
                                .await
                                .unwrap()
                                .id,
                        );
                    }
                    1 => {
                        let fields = f(vec![
                            ("subject", text("Road")),
                            ("body", text("...")),
                            ("filedOn", text("2026-01-02")),
                            ("dueOn", text(&date)),
                        ]);
                        made.push(
                            h.create_record(DocKind::Complaints, unit, fields, None, None)
                                .await
                                .unwrap()
                                .id,
                        );
                    }
                    2 if unit != me => {
                        let fields = f(vec![
                            ("kind", text("report_back")),
                            ("period", text("2026Q1")),
                            ("submittedOn", text(&date)),
                            ("body", text("Done")),
                            ("directive", text(&target)),
                        ]);
                        made.push(
                            h.create_record(DocKind::Reports, unit, fields, None, None)
                                .await
                                .unwrap()
                                .id,
                        );
                    }
                    3 => {
                        let orgs = [Organisation::PartyBranch, Organisation::VillagersCommittee];
                        let details = UnitDetails {
                            organisations: Some(orgs[..next(3)].to_vec()),
                            activity_place: Some(next(2) == 0),
                            ..UnitDetails::default()
                        };
                        h.set_unit_details(unit, details).await.unwrap();
                    }
                    _ if !made.is_empty() => {
                        let id = made[next(made.len())].clone();
                        let fields = match id.kind {
                            DocKind::Meetings => f(vec![
                                ("heldOn", text(&date)),
                                ("kind", text("party_lecture")),
                            ]),
                            DocKind::Complaints => {
                                let status = ["open", "handled", "escalated"][next(3)];
                                let responded = [text(&date), V::Null][next(2)].clone();
                                f(vec![("status", text(status)), ("respondedOn", responded)])
                            }
                            _ => f(vec![
                                ("review", [text("accepted"), V::Null][next(2)].clone()),
                                ("period", text("2026Q2")),
                            ]),
                        };
                        h.update_record(id, fields, None).await.unwrap();
                    }
                    _ => {}
                }
            }
            let diffs = h.verify_views().await.unwrap();
            assert!(diffs.is_empty(), "round {round}: {diffs:?}");
            t.shutdown().await;
        }
    }

    #[tokio::test]
    async fn a_complaint_handed_over_carries_its_status_and_a_handler_named_as_it_is_writes_nothing()
     {
        use grassroots_schema::Value as V;
        let dir = tempfile::tempdir().unwrap();
        let (me, village) = (u("c01/k01/t01"), u("c01/k01/t01/v01"));
        let (h, r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        let f = |pairs: &[(&str, V)]| -> Fields {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };
        let text = |s: &str| V::Text(s.into());
        let filed = |extra: &[(&str, V)]| {
            let mut fields = f(&[
                ("subject", text("Road")),
                ("body", text("Potholes")),
                ("filedOn", text("2026-01-02")),
                ("dueOn", text("2026-01-20")),
            ]);
            fields.extend(f(extra));
            h.create_record(DocKind::Complaints, village.clone(), fields, None, None)
        };
        let status = |rec: &Record| rec.fields.get("status").cloned();
        let c = filed(&[]).await.unwrap();
        assert_eq!(status(&c), Some(text("open")));
        let update = |pairs: &[(&str, V)]| h.update_record(c.id.clone(), f(pairs), None);
        let up = update(&[("handler", text("c01/k01/t01"))]).await.unwrap();
        assert_eq!(status(&up), Some(text("escalated")));
        update(&[("status", text("handled"))]).await.unwrap();
        // Naming the handler it has, with an answer: nothing but the answer is written.
        let again = update(&[
            ("handler", text("c01/k01/t01")),
            ("response", text("Fixed")),
        ])
        .await
        .unwrap();
        assert_eq!(status(&again), Some(text("handled")));
        // Handed back to the village: open again, and its handler is the village.
        let back = update(&[("handler", V::Null)]).await.unwrap();
        assert_eq!(status(&back), Some(text("open")));
        assert_eq!(back.handler(), village);
        assert_eq!(r.record(&c.id).unwrap().unwrap(), back);
        // Filed straight to the township: escalated from the start.
        let direct = filed(&[("handler", text("c01/k01/t01"))]).await.unwrap();
        assert_eq!(status(&direct), Some(text("escalated")));
        // Two writes in one batch, the second judged by what the first leaves: handed to
        // the county, then straight back to the township (a change, not a restatement).
        let write = |pairs: &[(&str, V)]| h.update_record(direct.id.clone(), f(pairs), None);
        // The actor is held inside a batch while both are sent, so they join it.
        let releaser = hold_for(&h, 2).await;
        let (up, down) = tokio::join!(
            write(&[("handler", text("c01/k01"))]),
            write(&[("handler", text("c01/k01/t01"))]),
        );
        releaser.join().unwrap();
        assert_eq!(status(&up.unwrap()), Some(text("escalated")));
        let down = down.unwrap();
        assert_eq!(down.handler(), me);
        assert_eq!(status(&down), Some(text("escalated")));
        t.shutdown().await;
    }

    /// A write is judged as the unit of the user who made it, against the record as the
    /// batch leaves it: at a township serving a village, two requests of the village's
    /// supervisor the gateway passed against the same record (a handover up, and an answer)
    /// do not both land, the answer in the township's name. The township answers it.
    #[tokio::test]
    async fn a_served_units_writes_are_judged_as_that_unit() {
        use grassroots_schema::Value as V;
        let dir = tempfile::tempdir().unwrap();
        let (me, village) = (u("c01/k01/t01"), u("c01/k01/t01/v01"));
        let (h, _r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        let text = |s: &str| V::Text(s.into());
        let f = |pairs: &[(&str, V)]| -> Fields {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };
        let supervisor = |unit: &UnitId| Writer {
            unit: unit.clone(),
            role: Role::Supervisor,
            user: "Wang Fang".into(),
        };
        let filed = f(&[
            ("subject", text("Road")),
            ("body", text("Potholes")),
            ("filedOn", text("2026-01-02")),
            ("dueOn", text("2026-01-20")),
        ]);
        let c = h
            .create_record(
                DocKind::Complaints,
                village.clone(),
                filed,
                Some(supervisor(&village)),
                None,
            )
            .await
            .unwrap();
        let write = |pairs: &[(&str, V)], by: &UnitId| {
            h.update_record(c.id.clone(), f(pairs), Some(supervisor(by)))
        };
        // Both in one batch, as two racing requests would be.
        let releaser = hold_for(&h, 2).await;
        let (up, answer) = tokio::join!(
            write(&[("handler", text("c01/k01/t01"))], &village),
            write(
                &[("status", text("handled")), ("response", text("Fixed"))],
                &village
            ),
        );
        releaser.join().unwrap();
        assert_eq!(up.unwrap().handler(), me);
        assert!(
            matches!(&answer, Err(WriteError::Refused(r)) if r.detail.contains("may not set")),
            "{answer:?}"
        );
        // The township's supervisor answers it.
        let answered = write(
            &[("status", text("handled")), ("response", text("Fixed"))],
            &me,
        )
        .await
        .unwrap();
        assert_eq!(answered.fields.get("status"), Some(&text("handled")));
        t.shutdown().await;
    }

    /// A create and an update of its record taken in one batch make one change, which the
    /// parent judges whole: the update is checked after the create (a debriefing made by the
    /// village and then given its result by the village is refused, not sent up to be
    /// refused there, which would hold back every later change of the document).
    #[tokio::test]
    async fn writes_in_one_batch_are_checked_after_each_other() {
        use grassroots_schema::Value as V;
        let dir = tempfile::tempdir().unwrap();
        let me = u("c01/k01/t01/v01");
        let (h, r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        let appraisal = RecordRef {
            kind: DocKind::Appraisals,
            unit: me.clone(),
            record: request_record(&me, None, "debriefing-2026"),
        };
        let made: Fields = [
            ("kind", V::Text("debriefing".into())),
            ("year", V::Int(2026)),
            ("subject", V::Text("Secretary Wu".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let rated = Fields::from([("result".to_owned(), V::Text("excellent".into()))]);
        let releaser = hold_for(&h, 2).await;
        let (create, rate) = tokio::join!(
            h.create_record(
                DocKind::Appraisals,
                me.clone(),
                made,
                None,
                Some("debriefing-2026")
            ),
            h.update_record(appraisal.clone(), rated, None),
        );
        releaser.join().unwrap();
        assert_eq!(create.unwrap().id, appraisal);
        let e = rate.unwrap_err();
        assert!(
            matches!(&e, WriteError::Refused(r) if r.detail.contains("rated from above")),
            "{e}"
        );
        assert!(
            r.record(&appraisal)
                .unwrap()
                .unwrap()
                .text("result")
                .is_none()
        );
        t.shutdown().await;
    }

    #[tokio::test]
    async fn a_write_the_parent_would_refuse_is_refused_at_once() {
        use grassroots_schema::Value as V;
        let dir = tempfile::tempdir().unwrap();
        let me = u("c01/k01/t01/v01");
        let (h, r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        let f = |pairs: &[(&str, &str)]| -> Fields {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), V::Text(v.to_string())))
                .collect()
        };
        let c = h
            .create_record(
                DocKind::Complaints,
                me.clone(),
                f(&[
                    ("subject", "Road"),
                    ("body", "Potholes"),
                    ("filedOn", "2026-01-02"),
                    ("dueOn", "2026-01-20"),
                ]),
                None,
                None,
            )
            .await
            .unwrap();
        // The village hands it up (escalated, since no status was given); from then on its
        // node may not close it, whoever writes.
        let up = h
            .update_record(c.id.clone(), f(&[("handler", "c01/k01/t01")]), None)
            .await
            .unwrap();
        assert_eq!(up.fields.get("status"), Some(&V::Text("escalated".into())));
        let e = h
            .update_record(c.id.clone(), f(&[("status", "handled")]), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, WriteError::Refused(r) if r.detail.contains("handled by c01/k01/t01")),
            "{e}"
        );
        // Nor change what it handed up (the dates the overdue figures are read from).
        let e = h
            .update_record(c.id.clone(), f(&[("dueOn", "2027-01-20")]), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, WriteError::Refused(r) if r.detail.contains("changed only from above")),
            "{e}"
        );
        let now = r.record(&c.id).unwrap().unwrap();
        assert_eq!(now, up);
        t.shutdown().await;
    }

    #[tokio::test]
    async fn naming_a_unit_below_registers_it_up_to_this_node() {
        let dir = tempfile::tempdir().unwrap();
        let me = u("c01/k01");
        let (h, r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        h.set_unit_details(me.clone(), name("County"))
            .await
            .unwrap();
        // A village under a township that has no name (nor node) yet: both registered.
        h.set_unit_details(u("c01/k01/t02/v05"), name("Village"))
            .await
            .unwrap();
        h.set_unit_details(u("c01/k01/t02"), name("Township"))
            .await
            .unwrap();
        let units = r.units(&[me.clone(), u("c01/k01/t02")]).unwrap();
        assert_eq!(units[&me].children, vec![u("c01/k01/t02")]);
        assert_eq!(
            units[&u("c01/k01/t02")].children,
            vec![u("c01/k01/t02/v05")]
        );
        t.shutdown().await;
    }

    #[tokio::test]
    async fn a_registration_that_cannot_be_written_leaves_the_details_unwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01/t01");
        let (h, _, t) = open(&path, me.clone()).unwrap();
        h.set_unit_details(me.clone(), name("Township"))
            .await
            .unwrap();
        t.shutdown().await;
        // This node's own profile, which a new village is registered in, no longer loads
        // (documents are read lazily, so the store still opens).
        break_snapshot(&path, DocId::new(DocKind::Profile, me.clone()), None);
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let v = u("c01/k01/t01/v09");
        let e = h
            .set_unit_details(v.clone(), name("New Village"))
            .await
            .unwrap_err();
        assert!(matches!(e, WriteError::Refused(_)), "{e:?}");
        // Nothing of the write was made: no profile for the village either, not even once a
        // later write has committed again.
        h.create_member(me.clone(), sample("After")).await.unwrap();
        assert!(r.units(std::slice::from_ref(&v)).unwrap().is_empty());
        t.shutdown().await;
    }

    #[tokio::test]
    async fn refused_and_invalid_writes_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let me = u("c01/k01/t01");
        let (h, r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        // A sibling's register is outside this node's scope.
        let e = h
            .create_member(u("c01/k01/t02"), sample("Nope"))
            .await
            .unwrap_err();
        assert!(matches!(e, WriteError::Refused(_)), "{e:?}");
        let mut bad = sample("x");
        bad.joined_on = "2024-02-30".into();
        assert!(matches!(
            h.create_member(me.clone(), bad).await,
            Err(WriteError::Invalid(_))
        ));
        let missing = MemberId {
            unit: me.clone(),
            record: RecordId::from_u64(1),
        };
        assert!(matches!(
            h.update_member(missing, MemberPatch::default()).await,
            Err(WriteError::NotFound(_))
        ));
        assert_eq!(r.members(&me, true, None, 10).unwrap().total, 0);
        t.shutdown().await;
    }

    #[tokio::test]
    async fn subtree_listing_and_pagination() {
        let dir = tempfile::tempdir().unwrap();
        let me = u("c01/k01");
        let (h, r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        for unit in ["c01/k01", "c01/k01/t01", "c01/k01/t01/v01", "c01/k01/t02"] {
            for i in 0..3 {
                h.create_member(u(unit), sample(&format!("{unit} {i}")))
                    .await
                    .unwrap();
            }
        }
        assert_eq!(r.members(&me, true, None, 100).unwrap().total, 12);
        assert_eq!(
            r.members(&u("c01/k01/t01"), true, None, 100).unwrap().total,
            6
        );
        assert_eq!(
            r.members(&u("c01/k01/t01"), false, None, 100)
                .unwrap()
                .total,
            3
        );
        // Walk pages of 5.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = r.members(&me, true, after.as_ref(), 5).unwrap();
            seen.extend(page.items.iter().map(|(_, m)| m.id.clone()));
            after = page.items.last().map(|(c, _)| c.clone());
            if !page.has_next {
                break;
            }
        }
        assert_eq!(seen.len(), 12);
        let mut dedup = seen.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), 12);
        // A cursor from outside the listing never opens another unit's rows.
        let t01 = u("c01/k01/t01");
        let outside = |tree_key: &str| MemberCursor {
            tree_key: tree_key.into(),
            record: "0".into(),
        };
        for (cursor, want) in [
            ("c01/", 6),
            ("c01/k01/", 6),
            ("c01/k01/t02/", 0),
            ("c01/k01/t01/v01/", 3),
        ] {
            let page = r.members(&t01, true, Some(&outside(cursor)), 100).unwrap();
            assert_eq!(page.total, 6);
            assert_eq!(page.items.len(), want, "{cursor}");
            assert!(
                page.items
                    .iter()
                    .all(|(_, m)| m.id.unit.is_in_subtree_of(&t01))
            );
        }
        assert!(r.members(&t01, true, None, 0).unwrap().has_next);
        t.shutdown().await;
    }

    /// Hold the actor inside a batch until `n` more commands wait in its inbox, so that
    /// they join one batch; join the returned thread once they are sent.
    async fn hold_for(h: &StoreHandle, n: usize) -> std::thread::JoinHandle<()> {
        hold_for_with_peers(h, n, 0).await
    }

    /// [`hold_for`] until `n` local commands and `p` peers' commands wait.
    async fn hold_for_with_peers(
        h: &StoreHandle,
        n: usize,
        p: usize,
    ) -> std::thread::JoinHandle<()> {
        let (release, until) = std::sync::mpsc::channel();
        let (entered, held) = std::sync::mpsc::channel();
        h.tx.send(Command::Hold { entered, until }).await.unwrap();
        let (inbox, peers) = (h.tx.clone(), h.peer_tx.clone());
        std::thread::spawn(move || {
            // Once the actor holds (the hold taken from the inbox), released when the
            // commands wait in the inboxes.
            held.recv().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let waiting = || (INBOX - inbox.capacity(), PEER_INBOX - peers.capacity());
            while waiting() != (n, p) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert_eq!(waiting(), (n, p), "the commands never waited together");
            release.send(()).unwrap();
        })
    }

    /// No share of time for peer work: one item of a batch frame a batch.
    async fn one_item_a_batch(h: &StoreHandle) {
        h.tx.send(Command::PeerWork(std::time::Duration::ZERO))
            .await
            .unwrap();
    }

    /// Wait for a hold ([`hold_for_with_peers`]) to be released.
    async fn released(hold: std::thread::JoinHandle<()>) {
        tokio::task::spawn_blocking(move || hold.join().unwrap())
            .await
            .unwrap();
    }

    /// A member written at `me` while the actor is held, the hold released, the write's
    /// answer awaited.
    async fn write_while_held(h: &StoreHandle, me: &UnitId, hold: std::thread::JoinHandle<()>) {
        let write = {
            let (h, me) = (h.clone(), me.clone());
            tokio::spawn(async move { h.create_member(me, sample("Li Wei")).await })
        };
        released(hold).await;
        write.await.unwrap().unwrap();
    }

    /// The store of `me` with its link to its parent up and what the link sent on coming
    /// up drained: the handle, the thread, the link's outbox and its session.
    async fn linked_to_parent(
        dir: &Path,
        me: &UnitId,
    ) -> (StoreHandle, StoreThread, mpsc::UnboundedReceiver<Msg>, u64) {
        let (h, _r, t) = open(&dir.join("s.redb"), me.clone()).unwrap();
        let (out, mut sent) = mpsc::unbounded_channel();
        let counters = link_counters("fp");
        let session = counters.session;
        let parent = me.parent().expect("a unit below the root");
        h.peer_up(parent, out, counters).await.unwrap();
        while sent.try_recv().is_ok() {}
        (h, t, sent, session)
    }

    /// Sync items (not even messages) about the registers of 200 units named `prefix` and
    /// a number from 002: a batch frame of them.
    fn registers_of(prefix: &str) -> Vec<(DocId, Vec<u8>)> {
        (2..202)
            .map(|i| {
                let unit = u(&format!("{prefix}{i:03}"));
                (DocId::new(DocKind::Members, unit), vec![0x42])
            })
            .collect()
    }

    /// The time a child is kept off: none at its first closing, 30 s at the second, doubled
    /// after, at most an hour; the count starts again once a closing comes an hour after the
    /// last one and its time off (not an hour after the closing alone, which a time off of
    /// an hour always passes).
    #[test]
    fn a_child_is_kept_off_longer_each_time_up_to_an_hour() {
        let mut at = 1_000_000_000;
        let (mut count, mut until) = (0, 0);
        let mut offs = Vec::new();
        for _ in 0..12 {
            let (c, off) = keep_off(count, at, until, at + 1_000);
            at += 1_000;
            (count, until) = (c, at + off);
            offs.push(off / KEPT_OFF_MS);
        }
        let cap = MAX_KEPT_OFF_MS / KEPT_OFF_MS;
        let want: Vec<u64> = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
            .iter()
            .map(|n| (*n).min(cap))
            .collect();
        assert_eq!(offs, want);
        // Closed again right as an hour's time off ends: still counted.
        let (_, off) = keep_off(count, at, until, until + 1);
        assert_eq!(off, MAX_KEPT_OFF_MS);
        // An hour after the time off: a first closing again.
        assert_eq!(
            keep_off(count, at, until, until + MAX_KEPT_OFF_MS + 1),
            (1, 0)
        );
        assert_eq!(keep_off(u32::MAX, 0, 0, 1), (u32::MAX, MAX_KEPT_OFF_MS));
    }

    /// Refusals carried to a new connection lose one a second since the last; a clock set
    /// back forgives none.
    #[test]
    fn refusals_are_forgiven_one_a_second() {
        assert_eq!(carried(1_000, 0, 0), 1_000);
        assert_eq!(carried(1_000, 10_000, 15_500), 995);
        assert_eq!(carried(10, 0, 60_000), 0);
        assert_eq!(carried(5, 100, 50), 5);
        assert_eq!(carried(u32::MAX, 0, u64::MAX), 0);
    }

    /// A link of `peer` to the node of `h`, with its counters and what it is sent.
    async fn link_of(
        h: &StoreHandle,
        peer: &UnitId,
    ) -> Result<(Arc<LinkCounters>, mpsc::UnboundedReceiver<Msg>), StoreError> {
        let (out, sent) = mpsc::unbounded_channel();
        let counters = link_counters("fp");
        h.peer_up(peer.clone(), out, counters.clone())
            .await
            .map(|()| (counters, sent))
    }

    /// `n` batch frames from `peer` of 200 items each about its siblings' registers, out of
    /// its scope: 200 refusals each.
    async fn refused_batches(h: &StoreHandle, peer: &UnitId, session: u64, n: usize) {
        for _ in 0..n {
            h.from_peer(
                peer.clone(),
                session,
                Msg::SyncBatch(registers_of("c01/k01/t01/v")),
                None,
            )
            .await
            .unwrap();
        }
    }

    /// A child closed for too many refused messages links again at once the first time;
    /// closed again, its links are refused for a while, then taken again. Its count of
    /// refusals goes on from one connection to the next: redialling does not start it
    /// again. A parent is never kept off.
    #[tokio::test]
    async fn a_child_closed_again_is_kept_off_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let (me, child) = (u("c01/k01/t01"), u("c01/k01/t01/v01"));
        let (h, _r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        let wait = std::time::Duration::from_secs(30);
        // 1,000 refusals, a new connection, 200 more: closed (the first time).
        let (counters, _sent) = link_of(&h, &child).await.unwrap();
        refused_batches(&h, &child, counters.session, 5).await;
        h.peer_down(child.clone(), counters.session).await;
        let (counters, _sent) = link_of(&h, &child).await.unwrap();
        assert!(!counters.close.is_cancelled(), "under the cap");
        refused_batches(&h, &child, counters.session, 1).await;
        tokio::time::timeout(wait, counters.close.cancelled())
            .await
            .expect("closed past the cap over two connections");
        // Linked again at once; closed again: kept off.
        let (counters, _sent) = link_of(&h, &child)
            .await
            .expect("a first closing keeps no one off");
        refused_batches(&h, &child, counters.session, 6).await;
        tokio::time::timeout(wait, counters.close.cancelled())
            .await
            .expect("closed again");
        match link_of(&h, &child).await {
            Err(StoreError::KeptOff { peer, .. }) => assert_eq!(peer, child),
            other => panic!("expected the link refused, got {:?}", other.map(|_| ())),
        }
        let kept = h.status().await.unwrap();
        let l = kept.links.iter().find(|l| l.peer == child).unwrap();
        assert!(l.kept_off_until_ms > now_ms(), "the status says until when");
        tokio::time::sleep(std::time::Duration::from_millis(KEPT_OFF_MS + 300)).await;
        assert!(
            link_of(&h, &child).await.is_ok(),
            "taken again once the time off ended"
        );
        // Its time off is kept, ended: the count of closings starts again only an hour after.
        let status = h.status().await.unwrap();
        let l = status.links.iter().find(|l| l.peer == child).unwrap();
        assert!(
            l.kept_off_until_ms > 0 && l.kept_off_until_ms <= now_ms(),
            "{}",
            l.kept_off_until_ms
        );
        t.shutdown().await;

        // At the village: its parent, closed twice, is not kept off.
        let dir = tempfile::tempdir().unwrap();
        let (me, parent) = (u("c01/k01/t01/v01"), u("c01/k01/t01"));
        let (h, _r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        for _ in 0..2 {
            let (counters, _sent) = link_of(&h, &parent).await.unwrap();
            refused_batches(&h, &parent, counters.session, 6).await;
            tokio::time::timeout(wait, counters.close.cancelled())
                .await
                .expect("closed");
        }
        assert!(
            link_of(&h, &parent).await.is_ok(),
            "a parent is not kept off"
        );
        t.shutdown().await;
    }

    /// A link the network side closed for what the peer sent (frames that do not decode, a
    /// frame over the cap) counts as a closing for refused messages: twice within the hour,
    /// and the child is kept off. Its going down counts once, though it came after a newer
    /// connection replaced it.
    #[tokio::test]
    async fn a_link_closed_for_undecodable_frames_counts_towards_keeping_off() {
        let dir = tempfile::tempdir().unwrap();
        let (me, child) = (u("c01/k01/t01"), u("c01/k01/t01/v01"));
        let (h, _r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        let misbehave = |c: &LinkCounters| {
            c.misbehaved
                .store(true, std::sync::atomic::Ordering::Relaxed)
        };
        // An orderly closing counts for nothing; its undecodable frames go on to the next
        // connection, which the link counts on from.
        let (counters, _sent) = link_of(&h, &child).await.unwrap();
        counters
            .malformed
            .store(1_000, std::sync::atomic::Ordering::Relaxed);
        h.peer_down(child.clone(), counters.session).await;
        let (counters, _sent) = link_of(&h, &child).await.unwrap();
        let n = counters
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            (990..=1_000).contains(&n),
            "carried over, less a few forgiven: {n}"
        );
        h.peer_down(child.clone(), counters.session).await;
        // Closed by its link; replaced before its going down arrives: counted once.
        let (first, _sent) = link_of(&h, &child).await.unwrap();
        misbehave(&first);
        let (second, _sent) = link_of(&h, &child)
            .await
            .expect("a first closing keeps no one off");
        h.peer_down(child.clone(), first.session).await;
        assert!(
            link_of(&h, &child).await.is_ok(),
            "the late going down was not counted again"
        );
        // Closed by its link again: kept off.
        let (third, _sent) = link_of(&h, &child).await.unwrap();
        drop(second);
        misbehave(&third);
        h.peer_down(child.clone(), third.session).await;
        assert!(
            matches!(link_of(&h, &child).await, Err(StoreError::KeptOff { .. })),
            "kept off after two closings"
        );
        t.shutdown().await;
    }

    /// A link that goes down while its batch frame is under way has the whole frame applied
    /// first (its going down waits behind it, as its frames do), not dropped with it.
    #[tokio::test]
    async fn a_link_going_down_waits_for_its_batch_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (me, parent) = (u("c01/k01/t01/v01"), u("c01/k01/t01"));
        let (h, t, mut sent, session) = linked_to_parent(dir.path(), &me).await;
        one_item_a_batch(&h).await;
        let items = registers_of("c01/k01/t01/v");
        let n = items.len();
        let hold = hold_for_with_peers(&h, 0, 2).await;
        h.from_peer(parent.clone(), session, Msg::SyncBatch(items), None)
            .await
            .unwrap();
        h.peer_down(parent.clone(), session).await;
        released(hold).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while h.status().await.unwrap().links.iter().any(|l| l.connected) {
            assert!(
                std::time::Instant::now() < deadline,
                "the link never went down"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let mut refused = 0;
        while let Ok(m) = sent.try_recv() {
            refused += usize::from(matches!(m, Msg::Reject { .. }));
        }
        assert_eq!(refused, n, "items dropped with the link");
        t.shutdown().await;
    }

    /// One link's batch frame of many items does not hold another link's frames: they are
    /// taken beside its parts, not after the whole of it.
    #[tokio::test]
    async fn one_links_large_batch_frame_does_not_hold_another_links_frames() {
        let dir = tempfile::tempdir().unwrap();
        let (me, parent, child) = (u("c01/k01/t01"), u("c01/k01"), u("c01/k01/t01/v01"));
        // Both links send into one channel, so that the order of their answers shows.
        let (h, _r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        let (out, mut sent) = mpsc::unbounded_channel();
        let (up, down) = (link_counters("fp"), link_counters("fp-child"));
        let (session, child_session) = (up.session, down.session);
        h.peer_up(parent.clone(), out.clone(), up).await.unwrap();
        h.peer_up(child.clone(), out, down).await.unwrap();
        while sent.try_recv().is_ok() {}
        one_item_a_batch(&h).await;
        // The parent's frame: items about other townships' registers, outside the link's
        // scope, each answered with a refusal (one a batch).
        let items = registers_of("c01/k01/t");
        let n = items.len();
        let hold = hold_for_with_peers(&h, 0, 2).await;
        h.from_peer(parent.clone(), session, Msg::SyncBatch(items), None)
            .await
            .unwrap();
        // Then the child's: about a sibling's register, refused too.
        let sibling = DocId::new(DocKind::Members, u("c01/k01/t01/v02"));
        h.from_peer(
            child.clone(),
            child_session,
            Msg::Sync {
                doc: sibling,
                data: vec![0x42],
            },
            None,
        )
        .await
        .unwrap();
        released(hold).await;
        let mut refused_before = 0;
        loop {
            let msg = tokio::time::timeout(std::time::Duration::from_secs(30), sent.recv())
                .await
                .expect("the child's frame answered")
                .expect("links open");
            match msg {
                Msg::Reject { doc: Some(d), .. } if d.owner == u("c01/k01/t01/v02") => break,
                Msg::Reject { .. } => refused_before += 1,
                _ => {}
            }
        }
        assert!(
            refused_before <= 2,
            "the child's frame waited for {refused_before} of the parent's {n} items"
        );
        t.shutdown().await;
    }

    /// One batch frame of many items is taken in parts, a share of peer work per batch: a
    /// local write queued with it is answered after the first part, not the whole frame,
    /// and every item is still answered, in order.
    #[tokio::test]
    async fn a_local_write_is_not_held_behind_one_large_batch_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (me, parent) = (u("c01/k01/t01/v01"), u("c01/k01/t01"));
        let (h, t, mut sent, session) = linked_to_parent(dir.path(), &me).await;
        one_item_a_batch(&h).await;
        // Items about siblings' registers, outside the link's scope: each answered with a
        // refusal, in the order handled (fewer than close the link).
        let items = registers_of("c01/k01/t01/v");
        let n = items.len();
        assert!(n < MAX_REJECTED_PER_LINK as usize);
        let hold = hold_for_with_peers(&h, 1, 1).await;
        h.from_peer(parent.clone(), session, Msg::SyncBatch(items), None)
            .await
            .unwrap();
        write_while_held(&h, &me, hold).await;
        let mut refused = Vec::new();
        let mut pushed_after = None;
        while refused.len() < n || pushed_after.is_none() {
            let msg = tokio::time::timeout(std::time::Duration::from_secs(30), sent.recv())
                .await
                .expect("every item answered and the write pushed")
                .expect("link open");
            match msg {
                Msg::Reject {
                    reason: wire::RejectReason::OutOfScope,
                    doc: Some(doc),
                    ..
                } => refused.push(doc),
                Msg::Sync { .. } | Msg::SyncBatch(_) if pushed_after.is_none() => {
                    pushed_after = Some(refused.len());
                }
                _ => {}
            }
        }
        assert_eq!(
            pushed_after,
            Some(1),
            "the write waited for the frame's items"
        );
        let owners: Vec<String> = refused.iter().map(|d| d.owner.to_string()).collect();
        let mut sorted = owners.clone();
        sorted.sort();
        assert_eq!(owners, sorted, "answered in order");
        assert_eq!(owners.len(), n);
        t.shutdown().await;
    }

    /// A local write queued behind more peers' frames than a batch takes is answered in the
    /// first batch, ahead of them. A link's going down waits behind the frames it read,
    /// which are handled first; frames of that link after it are dropped, not refused.
    #[tokio::test]
    async fn a_local_write_is_not_held_behind_a_flood_of_peer_frames() {
        let dir = tempfile::tempdir().unwrap();
        let (me, parent) = (u("c01/k01/t01/v01"), u("c01/k01/t01"));
        let (h, t, mut sent, session) = linked_to_parent(dir.path(), &me).await;
        // Each answered with a refusal (a hello after the handshake), in the order handled.
        let hello = Msg::Hello(wire::Hello {
            versions: wire::VERSIONS,
            capabilities: 0,
            unit: parent.clone(),
            software: "test".into(),
        });
        let frames = MAX_BATCH + 100;
        let hold = hold_for_with_peers(&h, 1, frames).await;
        for _ in 0..frames {
            h.from_peer(parent.clone(), session, hello.clone(), None)
                .await
                .unwrap();
        }
        write_while_held(&h, &me, hold).await;
        // The write's push of the register to the parent comes after the refusals of the
        // first batch only.
        let mut refusals = 0;
        let mut pushed_after = None;
        while refusals < frames || pushed_after.is_none() {
            let msg = tokio::time::timeout(std::time::Duration::from_secs(30), sent.recv())
                .await
                .expect("every frame answered and the write pushed")
                .expect("link open");
            match msg {
                Msg::Reject { .. } => refusals += 1,
                Msg::Sync { .. } | Msg::SyncBatch(_) if pushed_after.is_none() => {
                    pushed_after = Some(refusals);
                }
                _ => {}
            }
        }
        let pushed_after = pushed_after.expect("the loop ends once the write is pushed");
        assert!(
            pushed_after <= MAX_PEER_FRAMES,
            "the write waited for {pushed_after} peer frames"
        );
        let refused = |st: NodeStatus| {
            st.links
                .iter()
                .find(|l| l.peer == parent)
                .map(|l| l.rejected)
        };
        let before = refused(h.status().await.unwrap());
        assert_eq!(before, Some(frames as u64));
        // A link's going down takes its place behind the frames it read: they are handled
        // first (here each refused), and frames after it are dropped, not refused. More
        // than a batch takes, and fewer than close the link for refusals.
        let more = MAX_PEER_FRAMES + 50;
        assert!(frames + more < MAX_REJECTED_PER_LINK as usize);
        let hold = hold_for_with_peers(&h, 1, more + 3).await;
        for _ in 0..more {
            h.from_peer(parent.clone(), session, hello.clone(), None)
                .await
                .unwrap();
        }
        h.peer_down(parent.clone(), session).await;
        for _ in 0..2 {
            h.from_peer(parent.clone(), session, hello.clone(), None)
                .await
                .unwrap();
        }
        let status = {
            let h = h.clone();
            tokio::spawn(async move { h.status().await })
        };
        released(hold).await;
        // The status went ahead of the frames, and the link was still up then.
        let during = status.await.unwrap().unwrap();
        assert!(during.links.iter().any(|l| l.peer == parent && l.connected));
        assert_eq!(refused(during), before);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let after = loop {
            let st = h.status().await.unwrap();
            // Once the peers' inbox is empty, a status comes after everything in it.
            if h.peer_tx.capacity() == PEER_INBOX && st.links.iter().any(|l| !l.connected) {
                let st = h.status().await.unwrap();
                break refused(st);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the frames were not handled"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        assert_eq!(after, Some((frames + more) as u64));
        t.shutdown().await;
    }

    /// A create repeated with its request key by the same writer (a retry whose answer was
    /// lost) makes nothing more and answers the record as it is, also within one batch and
    /// after a restart; another writer's key or another key makes another record.
    #[tokio::test]
    async fn a_create_repeated_with_its_request_key_makes_nothing_more() {
        use grassroots_schema::Value as V;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01/t01/v01");
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let clerk = |user: &str| {
            Some(Writer {
                unit: me.clone(),
                role: Role::Clerk,
                user: user.into(),
            })
        };
        let create = |name: &str, user: &str, key: &'static str| {
            h.create_member_by(me.clone(), sample(name), clerk(user), Some(key))
        };
        let total = || r.members(&me, false, None, 0).unwrap().total;
        let first = create("Li Wei", "amy", "form-17").await.unwrap();
        // The form sent again, even changed: the record the first made, nothing written.
        let again = create("Li Wei (typo fixed)", "amy", "form-17")
            .await
            .unwrap();
        assert_eq!(again, first);
        assert_eq!(total(), 1);
        // As it is now.
        let renamed = h
            .update_member(
                first.id.clone(),
                MemberPatch {
                    name: Some("Li Wei Jr".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(create("Li Wei", "amy", "form-17").await.unwrap(), renamed);
        // Another writer's key, or another key: another record.
        let bo = create("Li Wei", "bo", "form-17").await.unwrap();
        let next = create("Li Wei", "amy", "form-18").await.unwrap();
        assert!(bo.id != first.id && next.id != first.id && bo.id != next.id);
        assert_eq!(total(), 3);
        // Repeats in one batch: one record, made by the first, both answered with it.
        let releaser = hold_for(&h, 2).await;
        let (a, b) = tokio::join!(
            create("Zhao Min", "amy", "form-19"),
            create("Zhao Min 2", "amy", "form-19")
        );
        releaser.join().unwrap();
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!((a.name.as_str(), &a), ("Zhao Min", &b));
        assert_eq!(total(), 4);
        // Records of the other kinds alike.
        let meeting = || {
            fields(&[
                ("kind", V::Text("group_meeting".into())),
                ("heldOn", V::Text("2026-03-02".into())),
                ("attendance", V::Int(12)),
                ("hours", V::Int(2)),
            ])
        };
        let m1 = h
            .create_record(
                DocKind::Meetings,
                me.clone(),
                meeting(),
                clerk("amy"),
                Some("m-1"),
            )
            .await
            .unwrap();
        let m2 = h
            .create_record(
                DocKind::Meetings,
                me.clone(),
                meeting(),
                clerk("amy"),
                Some("m-1"),
            )
            .await
            .unwrap();
        assert_eq!(m1, m2);
        let meetings = RecordQuery {
            kind: DocKind::Meetings,
            unit: &me,
            subtree: false,
            after: None,
            first: 10,
            count: true,
        };
        let all = RecordFilter::default();
        assert_eq!(r.records(&meetings, all, &|_| true).unwrap().items.len(), 1);
        // A record removed since is made again by a repeat.
        h.delete_member(next.id.clone()).await.unwrap();
        let remade = create("Li Wei", "amy", "form-18").await.unwrap();
        assert_eq!(remade.id, next.id);
        t.shutdown().await;
        drop((h, r));
        // After a restart, a repeat still finds its record.
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let after = h
            .create_member_by(me.clone(), sample("Li Wei"), clerk("amy"), Some("form-17"))
            .await
            .unwrap();
        assert_eq!(after, renamed);
        assert_eq!(r.members(&me, false, None, 0).unwrap().total, 4);
        assert!(h.verify_views().await.unwrap().is_empty());
        t.shutdown().await;
    }

    /// An engine on the other end of a link with the store `h` of `store`: its child or its
    /// parent.
    struct PeerEngine {
        engine: Engine,
        store: UnitId,
        sent: mpsc::UnboundedReceiver<Msg>,
        session: u64,
    }

    impl PeerEngine {
        /// A fresh engine of `unit`, linked and synced (see [`PeerEngine::link`]).
        async fn synced(h: &StoreHandle, store: &UnitId, unit: &UnitId) -> Self {
            let engine = Engine::new(unit.clone(), doc::actor_for(unit, [7; 8]));
            Self::link(h, store, engine, HashMap::new()).await
        }

        /// `engine` linked to the store, with the sync states `saved` at its end, and
        /// synced until neither side has anything more to say.
        async fn link(
            h: &StoreHandle,
            store: &UnitId,
            engine: Engine,
            saved: HashMap<DocId, Vec<u8>>,
        ) -> Self {
            let (mut link, hello) = Self::open(h, store, engine, saved).await;
            link.exchange(h, hello).await;
            link
        }

        /// The link up at both ends; the engine's opening messages are returned, not sent.
        async fn open(
            h: &StoreHandle,
            store: &UnitId,
            mut engine: Engine,
            saved: HashMap<DocId, Vec<u8>>,
        ) -> (Self, Vec<Msg>) {
            let (out, sent) = mpsc::unbounded_channel();
            let counters = link_counters("peer");
            let session = counters.session;
            h.peer_up(engine.me().clone(), out, counters).await.unwrap();
            let hello = engine.connect(store, saved);
            let link = PeerEngine {
                engine,
                store: store.clone(),
                sent,
                session,
            };
            (link, hello)
        }

        /// The link goes down at both ends; the engine and its sync states are returned.
        async fn down(mut self, h: &StoreHandle) -> (Engine, HashMap<DocId, Vec<u8>>) {
            h.peer_down(self.engine.me().clone(), self.session).await;
            let saved = self.engine.disconnect(&self.store).into_iter().collect();
            (self.engine, saved)
        }

        /// Send `msgs` to the store, then answer it until it has been quiet for 500 ms.
        async fn exchange(&mut self, h: &StoreHandle, mut msgs: Vec<Msg>) {
            let me = self.engine.me().clone();
            loop {
                for msg in msgs.drain(..) {
                    h.from_peer(me.clone(), self.session, msg, None)
                        .await
                        .unwrap();
                }
                let wait = std::time::Duration::from_millis(500);
                let Ok(Some(msg)) = tokio::time::timeout(wait, self.sent.recv()).await else {
                    return;
                };
                let step = self.engine.receive(&self.store, msg);
                assert!(step.rejected.is_empty(), "{:?}", step.rejected);
                msgs.extend(step.send.into_iter().map(|(_, m)| m));
            }
        }
    }

    /// A link that comes up with more changed documents than it has slots starts them in
    /// the batches after the link's own (the store waits for no command while some are
    /// left), and every change reaches the peer.
    #[tokio::test]
    async fn a_link_with_many_changed_documents_starts_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let me = u("c01/k01/t01");
        let county = u("c01/k01");
        let (h, r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        let villages: Vec<UnitId> = (0..80)
            .map(|i| u(&format!("c01/k01/t01/v{i:02}")))
            .collect();
        let mut members = Vec::new();
        for v in &villages {
            h.set_unit_details(v.clone(), name(&format!("Village {v}")))
                .await
                .unwrap();
            members.push(h.create_member(v.clone(), sample("Before")).await.unwrap());
        }
        // The county holds a profile registering the township, so it takes its documents.
        let mut engine = Engine::new(county.clone(), doc::actor_for(&county, [7; 8]));
        let (d, _) = engine
            .local_doc(DocMeta::new(DocId::new(DocKind::Profile, county.clone())))
            .unwrap();
        doc::set_profile(d, "County", std::slice::from_ref(&me)).unwrap();
        let link = PeerEngine::link(&h, &me, engine, HashMap::new()).await;
        let (engine, saved) = link.down(&h).await;
        let register = |v: &UnitId| DocId::new(DocKind::Members, v.clone());
        let read = |e: &Engine, m: &Member| {
            e.get(&register(&m.id.unit))
                .and_then(|d| d.doc())
                .and_then(|d| doc::read_member(d, &m.id.unit, m.id.record))
                .map(|m| m.name)
        };
        assert!(
            members
                .iter()
                .all(|m| read(&engine, m).as_deref() == Some("Before"))
        );
        let patch = MemberPatch {
            name: Some("After".into()),
            ..MemberPatch::default()
        };
        for m in &members {
            h.update_member(m.id.clone(), patch.clone()).await.unwrap();
        }
        // Before the county says anything, the store starts a slot's worth of them. With
        // no time for peers' work, the batch that brings the link up starts none: they are
        // started one a batch after it, batches the store runs without any command coming.
        one_item_a_batch(&h).await;
        let slots = crate::sync::MAX_IN_FLIGHT;
        assert!(villages.len() > slots);
        let (mut link, hello) = PeerEngine::open(&h, &me, engine, saved).await;
        let mut first = Vec::new();
        let mut started = HashSet::new();
        while started.len() < slots {
            let wait = std::time::Duration::from_secs(10);
            let msg = tokio::time::timeout(wait, link.sent.recv())
                .await
                .unwrap_or_else(|_| panic!("{} documents started", started.len()))
                .unwrap();
            match &msg {
                Msg::Sync { doc, .. } => {
                    started.insert(doc.clone());
                }
                Msg::SyncBatch(items) => started.extend(items.iter().map(|(d, _)| d.clone())),
                _ => {}
            }
            first.push(msg);
        }
        let mut answers = hello;
        for msg in first {
            let step = link.engine.receive(&me, msg);
            answers.extend(step.send.into_iter().map(|(_, m)| m));
        }
        link.exchange(&h, answers).await;
        for m in &members {
            assert_eq!(read(&link.engine, m).as_deref(), Some("After"), "{}", m.id);
        }
        assert_eq!(r.rollup(&me).unwrap().members, 80);
        drop(h);
        t.shutdown().await;
    }

    /// A profile a peer's change leaves without a name no longer reads as one: its unit's
    /// row goes, as a rebuild would have it, and its tallies leave the roll-ups.
    #[tokio::test]
    async fn a_profile_that_stops_reading_loses_its_row() {
        use automerge::transaction::Transactable as _;
        let dir = tempfile::tempdir().unwrap();
        let (h, r, t, me, v01, _) = two_village_township(dir.path()).await;
        assert!(r.unit(&v01).unwrap().is_some());
        let mut village = PeerEngine::synced(&h, &me, &v01).await;
        let profile = DocId::new(DocKind::Profile, v01.clone());
        let (d, _) = village
            .engine
            .local_doc(DocMeta::new(profile.clone()))
            .unwrap();
        let mut tx = d.transaction();
        tx.delete(automerge::ROOT, "name").unwrap();
        tx.commit();
        let msgs = village
            .engine
            .fan_out(&profile, None)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        village.exchange(&h, msgs).await;
        assert!(r.unit(&v01).unwrap().is_none(), "the row stayed");
        assert_eq!(h.verify_views().await.unwrap(), Vec::<String>::new());
        drop(h);
        t.shutdown().await;
    }

    /// A commit that fails on a stored row that no longer decodes stops the node, with a
    /// reason naming the commands that mend it; they do, and nothing acknowledged is lost.
    #[tokio::test]
    async fn a_commit_failing_on_a_bad_view_row_stops_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01/t01/v01");
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let m = h.create_member(me.clone(), sample("Li Wei")).await.unwrap();
        drop((h, r));
        t.shutdown().await;
        {
            let db = Database::open(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut rows = tx.open_table(VIEW_MEMBERS).unwrap();
                let rec = m.id.record.to_string();
                let key = (me.tree_key(), rec);
                rows.insert((key.0.as_str(), key.1.as_str()), b"not json".as_slice())
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let (h, r, t) = open(&path, me.clone()).unwrap();
        assert!(h.failure().is_none());
        let patch = MemberPatch {
            name: Some("Li Wei Renamed".into()),
            ..MemberPatch::default()
        };
        let refused = h.update_member(m.id.clone(), patch.clone()).await;
        assert!(
            matches!(&refused, Err(WriteError::Store(StoreError::NotStored(why))) if why.contains("store rebuild")),
            "{refused:?}"
        );
        let reason = tokio::time::timeout(std::time::Duration::from_secs(5), h.failed())
            .await
            .expect("the failure is reported");
        assert!(reason.contains("store verify"), "{reason}");
        drop((h, r));
        t.shutdown().await;
        // What the commands do, on the stopped store.
        let (h, r, t) = open(&path, me.clone()).unwrap();
        assert_eq!(h.verify_views().await.unwrap().len(), 1);
        h.rebuild_views().await.unwrap();
        assert_eq!(h.verify_views().await.unwrap(), Vec::<String>::new());
        assert_eq!(r.member(&m.id).unwrap().unwrap().name, "Li Wei");
        let renamed = h.update_member(m.id.clone(), patch).await.unwrap();
        assert_eq!(renamed.name, "Li Wei Renamed");
        drop(h);
        t.shutdown().await;
    }

    /// A link coming up with a certificate revoked since its handshake is refused; another
    /// certificate of the same child is not.
    #[tokio::test]
    async fn a_link_with_a_certificate_revoked_meanwhile_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (h, _r, t, _, v01, _) = two_village_township(dir.path()).await;
        let (old, new) = ("ab".repeat(32), "cd".repeat(32));
        h.revoke(v01.clone(), old.clone()).await.unwrap();
        // A certificate named by its key's fingerprint and by its bytes' (what revocations
        // made by earlier builds list).
        let up_named = |key: &str, whole: &str| {
            let (out, _sent) = mpsc::unbounded_channel();
            let counters = Arc::new(LinkCounters {
                certs: vec![crate::pki::Revocable {
                    unit: v01.clone(),
                    key: key.into(),
                    whole: whole.into(),
                }],
                ..LinkCounters::new(key.into(), 1, "test".into())
            });
            h.peer_up(v01.clone(), out, counters)
        };
        let up = |fp: &str| up_named(fp, "00");
        assert!(matches!(up(&old).await, Err(StoreError::Revoked(fp)) if fp == old));
        let listed_whole = "12".repeat(32);
        h.revoke(v01.clone(), listed_whole.clone()).await.unwrap();
        assert!(matches!(
            up_named(&"34".repeat(32), &listed_whole).await,
            Err(StoreError::Revoked(_))
        ));
        up(&new).await.unwrap();
        let connected = |st: NodeStatus| st.links.iter().any(|l| l.peer == v01 && l.connected);
        assert!(connected(h.status().await.unwrap()));
        // Revoking another certificate of the child (an old one, after it re-enrolled)
        // leaves the live link alone; revoking its own ends it.
        h.revoke(v01.clone(), "ef".repeat(32)).await.unwrap();
        assert!(connected(h.status().await.unwrap()));
        h.revoke(v01.clone(), new.clone()).await.unwrap();
        assert!(!connected(h.status().await.unwrap()));
        drop(h);
        t.shutdown().await;
    }

    /// A peer that redials while frames of its old connection still wait for the store has
    /// them handled, not dropped: the new connection comes up behind them.
    #[tokio::test]
    async fn frames_of_a_connection_read_before_a_redial_are_handled() {
        let dir = tempfile::tempdir().unwrap();
        let me = u("c01/k01/t01/v01");
        let parent = u("c01/k01/t01");
        let (h, _r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        let up = |session_name: &str| {
            let (out, sent) = mpsc::unbounded_channel();
            let counters = link_counters(session_name);
            (out, sent, counters)
        };
        let (out, _sent_a, a) = up("a");
        h.peer_up(parent.clone(), out, a.clone()).await.unwrap();
        // Each answered with a refusal (a hello after the handshake), so counted.
        let hello = Msg::Hello(wire::Hello {
            versions: wire::VERSIONS,
            capabilities: 0,
            unit: parent.clone(),
            software: "test".into(),
        });
        let frames = 20;
        let hold = hold_for_with_peers(&h, 0, frames + 2).await;
        for _ in 0..frames {
            h.from_peer(parent.clone(), a.session, hello.clone(), None)
                .await
                .unwrap();
        }
        h.peer_down(parent.clone(), a.session).await;
        let (out, _sent_b, b) = up("b");
        let redial = {
            let (h, parent) = (h.clone(), parent.clone());
            tokio::spawn(async move { h.peer_up(parent, out, b).await })
        };
        released(hold).await;
        redial.await.unwrap().unwrap();
        let st = h.status().await.unwrap();
        let link = st.links.iter().find(|l| l.peer == parent).unwrap();
        assert!(link.connected);
        assert_eq!(
            link.rejected, frames as u64,
            "the old connection's frames were dropped"
        );
        drop(h);
        t.shutdown().await;
    }

    /// The names of `unit`'s members as `r` reads them, sorted.
    pub(super) fn names(r: &StoreReader, unit: &UnitId) -> Vec<String> {
        let mut n: Vec<String> = r
            .members(unit, false, None, 10_000)
            .unwrap()
            .items
            .into_iter()
            .map(|(_, m)| m.name)
            .collect();
        n.sort();
        n
    }

    /// Counters of a link whose peer presents `fingerprint`.
    fn link_counters(fingerprint: &str) -> Arc<LinkCounters> {
        Arc::new(LinkCounters::new(fingerprint.into(), 1, "test".into()))
    }

    /// A township's store in `dir` with two named villages: the store, its reader and
    /// thread, the township, and the villages.
    async fn two_village_township(
        dir: &Path,
    ) -> (
        StoreHandle,
        StoreReader,
        StoreThread,
        UnitId,
        UnitId,
        UnitId,
    ) {
        let me = u("c01/k01/t01");
        let (v01, v02) = (u("c01/k01/t01/v01"), u("c01/k01/t01/v02"));
        let (h, r, t) = open(&dir.join("s.redb"), me.clone()).unwrap();
        for (v, n) in [(&v01, "Liujia"), (&v02, "Zhangwan")] {
            h.set_unit_details(v.clone(), name(n)).await.unwrap();
        }
        (h, r, t, me, v01, v02)
    }

    /// A township restored from a backup takes back from its village a member it wrote into
    /// the village's register after the backup (held there only), for [`RETURNING_WINDOW`]
    /// after the restore; a store restored longer ago than that refuses it.
    #[tokio::test]
    async fn a_restored_store_takes_back_what_it_wrote_below_for_a_while() {
        for (restored_at, comes_back) in [(now_ms(), true), (1_000, false)] {
            let dir = tempfile::tempdir().unwrap();
            let (h, r, t, me, v01, _) = two_village_township(dir.path()).await;
            let path = dir.path().join("s.redb");
            h.create_member(v01.clone(), sample("Before The Backup"))
                .await
                .unwrap();
            let backup = r.backup(now_ms()).unwrap().path;
            h.create_member(v01.clone(), sample("After The Backup"))
                .await
                .unwrap();
            let village = PeerEngine::synced(&h, &me, &v01).await;
            let (engine, saved) = village.down(&h).await;
            let held = |e: &Engine| {
                let d = e.get(&DocId::new(DocKind::Members, v01.clone()));
                let mut n: Vec<String> = doc::read_members(d.unwrap().doc().unwrap(), &v01)
                    .into_iter()
                    .map(|m| m.name)
                    .collect();
                n.sort();
                n
            };
            assert_eq!(held(&engine), ["After The Backup", "Before The Backup"]);
            t.shutdown().await;
            drop((h, r));

            backup::restore(&backup, &path, &me, restored_at)
                .await
                .unwrap();
            let (h, r, t) = open(&path, me.clone()).unwrap();
            let link = PeerEngine::link(&h, &me, engine, saved).await;
            let want: &[&str] = if comes_back {
                &["After The Backup", "Before The Backup"]
            } else {
                &["Before The Backup"]
            };
            assert_eq!(names(&r, &v01), want, "restored at {restored_at}");
            let _ = link.down(&h).await;
            t.shutdown().await;
        }
    }

    /// A village's edit of a member, handled in the batch that takes a transfer of that
    /// member (peers' frames come after a batch's local commands), moves with the member.
    #[tokio::test]
    async fn a_transfer_carries_a_peers_edit_taken_in_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (h, r, t, me, v01, v02) = two_village_township(dir.path()).await;
        let m = h
            .create_member(v01.clone(), sample("Moving Zhao"))
            .await
            .unwrap();
        let mut village = PeerEngine::synced(&h, &me, &v01).await;
        let session = village.session;
        let register = DocId::new(DocKind::Members, v01.clone());
        let (d, _) = village
            .engine
            .local_doc(DocMeta::new(register.clone()))
            .unwrap();
        assert!(
            doc::read_member(d, &v01, m.id.record).is_some(),
            "not synced"
        );
        let patch = MemberPatch {
            name: Some("Zhao Renamed".into()),
            ..MemberPatch::default()
        };
        doc::update_member(d, m.id.record, &patch).unwrap();
        // The edit itself, not the engine's next message: that one carries the change only
        // if the sync before settled within the harness's quiet time, which a loaded
        // machine can miss.
        let change = d.get_last_local_change().unwrap().raw_bytes().to_vec();
        let edit = vec![crate::sync::carrying(&register, d.get_heads(), change)];
        // The transfer and the village's edit wait together, so one batch takes both.
        let hold = hold_for_with_peers(&h, 1, edit.len()).await;
        let moving = {
            let (h, id, to) = (h.clone(), m.id.clone(), v02.clone());
            tokio::spawn(async move { h.transfer_member(id, to, None).await })
        };
        for msg in edit {
            h.from_peer(v01.clone(), session, msg, None).await.unwrap();
        }
        released(hold).await;
        let moved = moving.await.unwrap().unwrap();
        assert_eq!(moved.name, "Zhao Renamed");
        assert_eq!(r.member(&moved.id).unwrap().unwrap().name, "Zhao Renamed");
        assert!(r.member(&m.id).unwrap().is_none());
        drop(h);
        t.shutdown().await;
    }

    /// The refusals the store has counted on all its links.
    async fn refused_by(h: &StoreHandle) -> u64 {
        let links = h.status().await.unwrap().links;
        links.iter().map(|l| l.rejected).sum()
    }

    /// `village`'s register of `n` members (named by `name`) sent whole to the store, as a
    /// village sends it unloaded, or, unless `loads`, with a head that is not its own (its
    /// columns read, automerge refuses it); returned once the store has answered it, which
    /// shows it was taken unread (see [`answered_not_refused`]).
    async fn register_sent_whole(
        h: &StoreHandle,
        village: &mut PeerEngine,
        n: u64,
        name: impl Fn(u64) -> String,
        loads: bool,
    ) -> DocId {
        let unit = village.engine.me().clone();
        let register = DocId::new(DocKind::Members, unit);
        let (d, _) = village
            .engine
            .local_doc(DocMeta::new(register.clone()))
            .unwrap();
        for i in 0..n {
            let m = sample(&format!("Head {}", name(i)));
            doc::create_member(d, RecordId::from_u64(i + 1), &m).unwrap();
        }
        let saved = doc::save(d);
        let (heads, chunk) = if loads {
            (d.get_heads(), saved)
        } else {
            let (head, chunk) = crate::sync::register::head_flipped(&saved);
            (vec![head], chunk)
        };
        let msg = crate::sync::carrying(&register, heads, chunk);
        let v = village.engine.me().clone();
        h.from_peer(v, village.session, msg, None).await.unwrap();
        // Answered even when it does not load: automerge has not read it yet.
        assert!(answered_not_refused(village, &register).await);
        register
    }

    /// Whether the store's first word to `peer` on `doc` answers it (a `Sync`, as after a
    /// register taken unread) rather than refusing it (a `Reject`, as automerge's refusal of
    /// a chunk on arrival is answered).
    async fn answered_not_refused(peer: &mut PeerEngine, doc: &DocId) -> bool {
        loop {
            let wait = std::time::Duration::from_secs(10);
            let msg = tokio::time::timeout(wait, peer.sent.recv())
                .await
                .expect("a word on the document")
                .expect("the link open");
            match msg {
                Msg::Sync { doc: d, .. } if d == *doc => return true,
                Msg::SyncBatch(items) if items.iter().any(|(d, _)| d == doc) => return true,
                Msg::Reject { doc: Some(d), .. } if d == *doc => return false,
                _ => {}
            }
        }
    }

    /// A village's register sent whole is stored as it came, its views read from its
    /// columns; one whose chunk reads but does not load is taken out again once automerge
    /// loads it (counted against the village), the views following. Either way the views
    /// equal a rebuild, and the store opens again as it was left.
    #[tokio::test]
    async fn a_register_sent_whole_is_stored_unread_or_taken_out() {
        for loads in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (h, r, t, me, v01, _) = two_village_township(dir.path()).await;
            let mut village = PeerEngine::synced(&h, &me, &v01).await;
            let mut feed = h.subscribe();
            // Large enough to be taken unread.
            let name = |i: u64| i.to_string();
            let register = register_sent_whole(&h, &mut village, 1_500, name, loads).await;
            let want = if loads { 1_500 } else { 0 };
            // Subscribers hear of it stored, and of it taken out again.
            let heard = if loads { 1 } else { 2 };
            for _ in 0..heard {
                let wait = std::time::Duration::from_secs(10);
                loop {
                    let c = tokio::time::timeout(wait, feed.recv()).await;
                    if c.expect("a change notified").unwrap().doc == register {
                        break;
                    }
                }
            }
            let waited = std::time::Instant::now();
            loop {
                let rejected = refused_by(&h).await;
                let total = r.members(&v01, false, None, 0).unwrap().total;
                if total == want && (loads || rejected == 1) {
                    break;
                }
                assert!(
                    waited.elapsed() < std::time::Duration::from_secs(10),
                    "{total} members, {rejected} refused"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(h.verify_views().await.unwrap(), Vec::<String>::new());
            drop((h, r));
            t.shutdown().await;
            let stored = {
                let db = redb::Database::open(dir.path().join("s.redb")).unwrap();
                let tx = db.begin_read().unwrap();
                let snaps = tx.open_table(SNAPSHOTS).unwrap();
                snaps.get(register.to_string().as_str()).unwrap().is_some()
            };
            assert_eq!(stored, loads, "the snapshot stored");
            let (h, r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
            assert_eq!(r.members(&v01, false, None, 0).unwrap().total, want);
            assert_eq!(h.verify_views().await.unwrap(), Vec::<String>::new());
            drop((h, r));
            t.shutdown().await;
            if !loads {
                continue;
            }
            // A node stopped after storing a register unread and before automerge loaded
            // it: at the next open it is loaded then and its views written again from
            // automerge's reading (here one of its rows is made to differ)...
            let path = dir.path().join("s.redb");
            {
                let db = redb::Database::open(&path).unwrap();
                let tx = db.begin_write().unwrap();
                let key = register.to_string();
                tx.open_table(UNREAD)
                    .unwrap()
                    .insert(key.as_str(), v01.as_str())
                    .unwrap();
                let mut rows = tx.open_table(VIEW_MEMBERS).unwrap();
                let (first, row) = {
                    let (k, v) = rows
                        .range(rows_of(&v01.tree_key()))
                        .unwrap()
                        .next()
                        .unwrap()
                        .unwrap();
                    (k.value().1.to_owned(), v.value().to_vec())
                };
                let mut m: Member = serde_json::from_slice(&row).unwrap();
                m.name = "Not Read So".into();
                let k = (v01.tree_key(), first);
                let row = serde_json::to_vec(&m).unwrap();
                rows.insert((k.0.as_str(), k.1.as_str()), row.as_slice())
                    .unwrap();
                drop(rows);
                tx.commit().unwrap();
            }
            let (h, r, t) = open(&path, me.clone()).unwrap();
            assert_eq!(h.verify_views().await.unwrap(), Vec::<String>::new());
            assert_eq!(r.members(&v01, false, None, 0).unwrap().total, want);
            drop((h, r));
            t.shutdown().await;
            // ... and one that does not load is taken out (here the register stored is made
            // one that does not).
            {
                let db = redb::Database::open(&path).unwrap();
                let tx = db.begin_write().unwrap();
                let key = register.to_string();
                let (head, chunk) = {
                    let t = tx.open_table(SNAPSHOTS).unwrap();
                    let saved = t.get(key.as_str()).unwrap().unwrap().value().to_vec();
                    crate::sync::register::head_flipped(&saved)
                };
                let p = Persisted {
                    heads: vec![head],
                    ..Persisted::default()
                };
                tx.open_table(SNAPSHOTS)
                    .unwrap()
                    .insert(key.as_str(), chunk.as_slice())
                    .unwrap();
                tx.open_table(DOC_STATE)
                    .unwrap()
                    .insert(key.as_str(), load::encode_state(&p).as_slice())
                    .unwrap();
                tx.open_table(UNREAD)
                    .unwrap()
                    .insert(key.as_str(), v01.as_str())
                    .unwrap();
                tx.commit().unwrap();
            }
            let (h, r, t) = open(&path, me.clone()).unwrap();
            // The check is done before the store takes its first command.
            assert_eq!(h.verify_views().await.unwrap(), Vec::<String>::new());
            assert_eq!(r.members(&v01, false, None, 0).unwrap().total, 0);
            drop((h, r));
            t.shutdown().await;
            let db = redb::Database::open(&path).unwrap();
            let tx = db.begin_read().unwrap();
            let key = register.to_string();
            assert_eq!(tx.open_table(UNREAD).unwrap().iter().unwrap().count(), 0);
            let snaps = tx.open_table(SNAPSHOTS).unwrap();
            assert!(snaps.get(key.as_str()).unwrap().is_none());
        }
    }

    /// A register taken out again (it did not load) in the same commit as a write to it
    /// made here: the write is stored as the register's first commit, and the views and
    /// the store after a reopen hold it alone.
    #[tokio::test]
    async fn a_write_in_the_commit_that_takes_a_register_out_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (h, r, t, me, v01, _) = two_village_township(dir.path()).await;
        let mut village = PeerEngine::synced(&h, &me, &v01).await;
        let name = |i: u64| i.to_string();
        let register = register_sent_whole(&h, &mut village, 1_500, name, false).await;
        // Held until automerge's finding (from the compactor, once the store is quiet) and
        // the write wait together: one batch takes both.
        let hold = hold_for(&h, 2).await;
        let write = {
            let (h, v01) = (h.clone(), v01.clone());
            tokio::spawn(async move { h.create_member(v01, sample("Written Here")).await })
        };
        released(hold).await;
        let written = write.await.unwrap().unwrap();
        assert_eq!(refused_by(&h).await, 1, "the village's register refused");
        let names = |r: &StoreReader| {
            let page = r.members(&v01, false, None, 10).unwrap();
            page.items
                .into_iter()
                .map(|(_, m)| m.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&r), vec!["Written Here".to_string()]);
        assert_eq!(h.verify_views().await.unwrap(), Vec::<String>::new());
        drop((h, r));
        t.shutdown().await;
        let (h, r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        assert_eq!(names(&r), vec!["Written Here".to_string()]);
        assert!(r.member(&written.id).unwrap().is_some());
        assert_eq!(h.verify_views().await.unwrap(), Vec::<String>::new());
        drop((h, r));
        t.shutdown().await;
        let db = redb::Database::open(dir.path().join("s.redb")).unwrap();
        let d = load::load_doc(&db, &register).unwrap();
        assert_eq!(
            doc::read_members(&d, &v01).len(),
            1,
            "the register as stored"
        );
    }

    /// A register taken unread goes on to the next level up once automerge has loaded it,
    /// and one that does not load never leaves the node (the county here would refuse it).
    #[tokio::test]
    async fn a_register_taken_unread_goes_up_only_once_loaded() {
        for loads in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (h, _r, t, me, v01, v02) = two_village_township(dir.path()).await;
            // Registered in the township's profile, which the county takes its tree from.
            h.set_profile("Township".into(), vec![v01.clone(), v02])
                .await
                .unwrap();
            let mut up = PeerEngine::synced(&h, &me, &u("c01/k01")).await;
            let mut village = PeerEngine::synced(&h, &me, &v01).await;
            // Names that compress badly: a register large enough to be taken unread, small
            // enough to go up whole in one message (the tests' smaller part limits).
            let name = |i: u64| {
                (0..6)
                    .map(|k| {
                        format!(
                            "{:08x}",
                            (i * 6 + k).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
                        )
                    })
                    .collect::<String>()
            };
            let register = register_sent_whole(&h, &mut village, 300, name, loads).await;
            let waited = std::time::Instant::now();
            loop {
                // The county answers whatever it is sent (refusing nothing, or the
                // exchange fails).
                up.exchange(&h, Vec::new()).await;
                // Taken unread there too, or loaded.
                let held = up.engine.unread(&register).map_or_else(
                    || {
                        up.engine
                            .get(&register)
                            .and_then(|e| e.doc())
                            .map_or(0, |d| doc::read_members(d, &v01).len())
                    },
                    |u| u.members.len(),
                );
                let rejected = refused_by(&h).await;
                if loads && held == 300 {
                    break;
                }
                if !loads && rejected == 1 {
                    up.exchange(&h, Vec::new()).await;
                    // Nothing of it reached the county, loaded or taken unread.
                    assert!(up.engine.unread(&register).is_none());
                    let held = up.engine.get(&register).and_then(|e| e.doc());
                    assert!(held.is_none_or(|d| d.get_heads().is_empty()));
                    break;
                }
                assert!(
                    waited.elapsed() < std::time::Duration::from_secs(20),
                    "the county holds {held} members, {rejected} refused"
                );
            }
            drop(h);
            t.shutdown().await;
        }
    }

    /// A member moved between two villages of the node: made in one register, removed
    /// from the other, in one commit, counts following; refused whole when it cannot be
    /// made.
    #[tokio::test]
    async fn a_member_moves_between_registers_in_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (h, r, t, me, v01, v02) = two_village_township(dir.path()).await;
        let mut who = sample("Moving Zhao");
        who.phone = Some("13800000000".into());
        let m = h.create_member(v01.clone(), who).await.unwrap();
        h.create_member(v02.clone(), sample("Staying"))
            .await
            .unwrap();
        let moved = h
            .transfer_member(m.id.clone(), v02.clone(), None)
            .await
            .unwrap();
        assert_eq!(moved.id.unit, v02);
        assert_eq!(
            (
                moved.name.as_str(),
                moved.phone.as_deref(),
                moved.joined_on.as_str()
            ),
            ("Moving Zhao", Some("13800000000"), m.joined_on.as_str())
        );
        assert!(r.member(&m.id).unwrap().is_none());
        assert_eq!(r.member(&moved.id).unwrap().unwrap(), moved);
        assert_eq!(r.rollup(&v01).unwrap().members, 0);
        assert_eq!(r.rollup(&v02).unwrap().members, 2);
        assert_eq!(r.rollup(&me).unwrap().members, 2);
        // Refused, and nothing changed: to its own unit, from nowhere, to a unit outside.
        assert!(matches!(
            h.transfer_member(moved.id.clone(), v02.clone(), None).await,
            Err(WriteError::Invalid(_))
        ));
        assert!(matches!(
            h.transfer_member(m.id.clone(), v02.clone(), None).await,
            Err(WriteError::NotFound(_))
        ));
        assert!(matches!(
            h.transfer_member(moved.id.clone(), u("c01/k01/t02/v01"), None)
                .await,
            Err(WriteError::NoUnit(_))
        ));
        assert!(matches!(
            h.transfer_member(moved.id.clone(), u("c01/k01/t01/v09"), None)
                .await,
            Err(WriteError::NoUnit(_))
        ));
        assert_eq!(r.member(&moved.id).unwrap().unwrap(), moved);
        assert_eq!(r.rollup(&me).unwrap().members, 2);

        // Another write of the member in the same commit as its transfer: whichever comes
        // second is refused, and the first stands whole.
        let rename = |id: &MemberId, to: &str| {
            h.update_member(
                id.clone(),
                MemberPatch {
                    name: Some(to.into()),
                    ..Default::default()
                },
            )
        };
        let releaser = hold_for(&h, 2).await;
        let (renamed, tr) = tokio::join!(
            rename(&moved.id, "Renamed First"),
            h.transfer_member(moved.id.clone(), v01.clone(), None)
        );
        releaser.join().unwrap();
        assert_eq!(renamed.unwrap().name, "Renamed First");
        assert!(matches!(tr, Err(WriteError::InFlight(_))), "{tr:?}");
        let releaser = hold_for(&h, 2).await;
        let (tr, renamed) = tokio::join!(
            h.transfer_member(moved.id.clone(), v01.clone(), None),
            rename(&moved.id, "Renamed Late")
        );
        releaser.join().unwrap();
        assert!(
            matches!(renamed, Err(WriteError::InFlight(_))),
            "{renamed:?}"
        );
        let back = tr.unwrap();
        assert_eq!((back.name.as_str(), &back.id.unit), ("Renamed First", &v01));
        let releaser = hold_for(&h, 2).await;
        let (once, twice) = tokio::join!(
            h.transfer_member(back.id.clone(), v02.clone(), None),
            h.transfer_member(back.id.clone(), v02.clone(), None)
        );
        releaser.join().unwrap();
        assert!(matches!(twice, Err(WriteError::InFlight(_))), "{twice:?}");
        let last = once.unwrap();
        assert_eq!(r.members(&v02, false, None, 0).unwrap().total, 2);
        assert_eq!(r.members(&v01, false, None, 0).unwrap().total, 0);
        assert_eq!(r.member(&last.id).unwrap().unwrap().name, "Renamed First");
        assert!(h.verify_views().await.unwrap().is_empty());
        t.shutdown().await;
    }

    /// Record fields from (name, value) pairs.
    fn fields(pairs: &[(&str, grassroots_schema::Value)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    /// A removal takes the record's row and its counts out of the views, answers the record
    /// as it was, and is refused for a record that is not there; complaints (and reports)
    /// are not removed.
    #[tokio::test]
    async fn a_removed_record_leaves_the_views_and_the_counts() {
        use grassroots_schema::Value as V;
        let dir = tempfile::tempdir().unwrap();
        let (me, county) = (u("c01/k01/t01/v01"), u("c01/k01"));
        let (h, r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        let a = h.create_member(me.clone(), sample("Stays")).await.unwrap();
        let b = h.create_member(me.clone(), sample("Leaves")).await.unwrap();
        assert_eq!(r.rollup(&me).unwrap().members, 2);
        let gone = h.delete_member(b.id.clone()).await.unwrap();
        assert_eq!(gone.name, "Leaves");
        assert!(r.member(&b.id).unwrap().is_none());
        assert!(r.member(&a.id).unwrap().is_some());
        assert_eq!(r.rollup(&me).unwrap().members, 1);
        assert!(matches!(
            h.delete_member(b.id.clone()).await,
            Err(WriteError::NotFound(_))
        ));
        let text = |s: &str| V::Text(s.into());
        let meeting = fields(&[
            ("kind", text("branch_general_meeting")),
            ("heldOn", text("2026-03-02")),
            ("attendance", V::Int(12)),
        ]);
        let meeting = h
            .create_record(DocKind::Meetings, me.clone(), meeting, None, None)
            .await
            .unwrap();
        h.delete_record(meeting.id.clone()).await.unwrap();
        assert!(r.record(&meeting.id).unwrap().is_none());
        let complaint = |handler: Option<&UnitId>| {
            let mut filed = fields(&[
                ("subject", text("Road")),
                ("body", text("Potholes")),
                ("filedOn", text("2026-01-02")),
                ("dueOn", text("2026-01-20")),
            ]);
            if let Some(hd) = handler {
                filed.insert("handler".into(), text(hd.as_str()));
            }
            h.create_record(DocKind::Complaints, me.clone(), filed, None, None)
        };
        for handler in [None, Some(&county)] {
            let c = complaint(handler).await.unwrap();
            assert!(matches!(
                h.delete_record(c.id.clone()).await,
                Err(WriteError::NotRemovable(DocKind::Complaints))
            ));
            assert!(r.record(&c.id).unwrap().is_some());
        }
        // Nor is an appraisal, rated from above or not (a removal racing a change of its
        // kind from above would be refused there).
        let appraisal: Fields = [
            ("kind", text("democratic_appraisal")),
            ("year", V::Int(2026)),
            ("subject", text("Members of the branch")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let a = h
            .create_record(DocKind::Appraisals, me.clone(), appraisal, None, None)
            .await
            .unwrap();
        assert!(matches!(
            h.delete_record(a.id.clone()).await,
            Err(WriteError::NotRemovable(DocKind::Appraisals))
        ));
        assert!(h.verify_views().await.unwrap().is_empty());
        t.shutdown().await;
    }

    #[tokio::test]
    async fn concurrent_writes_share_a_transaction_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let me = u("c01/k01/t01/v01");
        let (h, r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        let first = h.create_member(me.clone(), sample("First")).await.unwrap();
        // Creates, an edit of an existing record and an edit of a missing one, all at once:
        // they land in the same batch, and only the bad one fails.
        let creates = (0..40).map(|i| h.create_member(me.clone(), sample(&format!("Batch {i}"))));
        let edit = h.update_member(
            first.id.clone(),
            MemberPatch {
                name: Some("First, edited".into()),
                ..Default::default()
            },
        );
        let missing = MemberId {
            unit: me.clone(),
            record: RecordId::from_u64(7),
        };
        let bad = h.update_member(
            missing,
            MemberPatch {
                name: Some("Nobody".into()),
                ..Default::default()
            },
        );
        let (created, edited, bad) = tokio::join!(futures::future::join_all(creates), edit, bad);
        assert!(created.iter().all(Result::is_ok));
        assert_eq!(edited.unwrap().name, "First, edited");
        assert!(matches!(bad, Err(WriteError::NotFound(_))));
        assert_eq!(r.members(&me, false, None, 100).unwrap().total, 41);
        assert!(h.verify_views().await.unwrap().is_empty());
        // A rebuild from the documents gives the same rows.
        h.rebuild_views().await.unwrap();
        assert!(h.verify_views().await.unwrap().is_empty());
        assert_eq!(r.members(&me, false, None, 100).unwrap().total, 41);
        t.shutdown().await;
    }

    #[tokio::test]
    async fn documents_are_evicted_to_the_budget_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01");
        let units = ["c01/k01", "c01/k01/t01", "c01/k01/t01/v01", "c01/k01/t02"];
        let tiny = StoreOptions {
            doc_memory_budget: 0,
            ..StoreOptions::default()
        };
        let (h, r, t) = open_with(&path, me.clone(), tiny).unwrap();
        let mut ids = Vec::new();
        for round in 0..3 {
            for unit in units {
                let m = h
                    .create_member(u(unit), sample(&format!("{unit} {round}")))
                    .await
                    .unwrap();
                ids.push(m.id);
                // Every commit leaves nothing loaded: each document was persisted first.
                let st = h.status().await.unwrap();
                assert_eq!(st.documents_loaded, 0, "{st:?}");
            }
        }
        // Edits of evicted documents read them back, and nothing is lost.
        for id in &ids {
            let patch = MemberPatch {
                education: Some(Education::Primary),
                ..Default::default()
            };
            assert_eq!(
                h.update_member(id.clone(), patch).await.unwrap().education,
                Education::Primary
            );
        }
        assert_eq!(r.members(&me, true, None, 100).unwrap().total, 12);
        assert!(h.verify_views().await.unwrap().is_empty());
        let rollup = r.rollup(&me).unwrap();
        assert_eq!(rollup.members, 12);
        assert_eq!(rollup.by_education.get("primary"), Some(&12));
        assert_eq!(rollup.higher_education(), 0);
        assert_eq!(r.rollup(&u("c01/k01/t01")).unwrap().members, 6);
        assert_eq!(r.rollup(&u("c01/k01/t03")).unwrap().members, 0);
        t.shutdown().await;
        drop((h, r));

        // Reopened, nothing is loaded until needed, and the digests still match.
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let st = h.status().await.unwrap();
        assert_eq!((st.documents, st.documents_loaded), (4, 0));
        h.create_member(u("c01/k01/t02"), sample("After"))
            .await
            .unwrap();
        assert_eq!(h.status().await.unwrap().documents_loaded, 1);
        assert_eq!(r.rollup(&me).unwrap().members, 13);
        assert!(h.verify_views().await.unwrap().is_empty());
        // Every document loaded once through the cache: all of them within the default
        // budget; none past a budget of a byte (the memory benchmark's pass).
        assert_eq!(h.load_every_document().await.unwrap(), 4);
        assert_eq!(h.status().await.unwrap().documents_loaded, 4);
        t.shutdown().await;
        drop((h, r));
        let tiny = StoreOptions {
            doc_memory_budget: 1,
            ..StoreOptions::default()
        };
        let (h, _r, t) = open_with(&path, me.clone(), tiny).unwrap();
        assert_eq!(h.load_every_document().await.unwrap(), 4);
        assert_eq!(h.status().await.unwrap().documents_loaded, 0);
        t.shutdown().await;
    }

    #[tokio::test]
    async fn a_layout_4_store_has_its_views_written_again_from_the_documents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01/t01");
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let m = h.create_member(me.clone(), sample("Kept")).await.unwrap();
        t.shutdown().await;
        drop((h, r));
        // A layout-4 store whose view row says what its document does not (as a row written
        // by an earlier build, before stamps were checked on reading, could).
        let mut stale = m.clone();
        stale.name = "Stale".into();
        as_written_before(&path, &stale, 4, |_| {});
        let (h, r, t) = open(&path, me.clone()).unwrap();
        assert_eq!(r.member(&m.id).unwrap().unwrap().name, "Kept");
        assert!(h.verify_views().await.unwrap().is_empty());
        assert_eq!(r.rollup(&me).unwrap().members, 1);
        t.shutdown().await;
    }

    /// Make the stopped store at `path` look written by an earlier build: `row` as its member
    /// row, `more` done in the same transaction, and its layout `layout`.
    fn as_written_before(
        path: &Path,
        row: &Member,
        layout: u64,
        more: impl FnOnce(&redb::WriteTransaction),
    ) {
        let d = Database::create(path).unwrap();
        let tx = d.begin_write().unwrap();
        {
            let mut members = tx.open_table(VIEW_MEMBERS).unwrap();
            let key = (row.id.unit.tree_key(), row.id.record.to_string());
            let bytes = serde_json::to_vec(row).unwrap();
            members
                .insert((key.0.as_str(), key.1.as_str()), bytes.as_slice())
                .unwrap();
        }
        more(&tx);
        tx.open_table(META)
            .unwrap()
            .insert("layout", layout)
            .unwrap();
        tx.commit().unwrap();
    }

    /// Every roll-up row as a layout before 14 kept it (JSON, in the old table), changed by
    /// `change` first; the rows of layout 14 gone.
    fn as_json_rollups(tx: &redb::WriteTransaction, change: impl Fn(&mut Rollup)) {
        let rows: Vec<(String, Rollup)> = {
            let t = tx.open_table(VIEW_ROLLUPS).unwrap();
            t.iter()
                .unwrap()
                .map(|row| {
                    let (k, v) = row.unwrap();
                    let r = rollup::read(k.value(), v.value(), None).unwrap();
                    (k.value().to_owned(), r)
                })
                .collect()
        };
        tx.delete_table(VIEW_ROLLUPS).unwrap();
        let mut old = tx.open_table(VIEW_ROLLUPS_JSON).unwrap();
        for (k, mut r) in rows {
            change(&mut r);
            let json = serde_json::to_vec(&r).unwrap();
            old.insert(k.as_str(), json.as_slice()).unwrap();
        }
    }

    /// A layout 13 store keeps its roll-ups as JSON: layout 14 writes the same counts in the
    /// row format, views and all still equal to a rebuild, and the old table is gone.
    #[tokio::test]
    async fn a_layout_13_store_keeps_its_rollups_in_the_new_format() {
        use grassroots_schema::Value as V;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01");
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let village = u("c01/k01/t01/v01");
        let m = h
            .create_member(village.clone(), sample("Kept"))
            .await
            .unwrap();
        h.create_record(
            DocKind::Meetings,
            village.clone(),
            fields(&[
                ("kind", V::Text("group_meeting".into())),
                ("heldOn", V::Text("2026-03-01".into())),
                ("attendance", V::Int(12)),
            ]),
            None,
            None,
        )
        .await
        .unwrap();
        let before: Vec<Rollup> = village
            .line()
            .map(|u| (*r.rollup(&u).unwrap()).clone())
            .collect();
        assert!(
            before
                .iter()
                .all(|b| b.members == 1 && !b.tallies.is_empty())
        );
        t.shutdown().await;
        drop((h, r));
        as_written_before(&path, &m, 13, |tx| as_json_rollups(tx, |_| {}));
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let after: Vec<Rollup> = village
            .line()
            .map(|u| (*r.rollup(&u).unwrap()).clone())
            .collect();
        assert_eq!(after, before);
        assert!(h.verify_views().await.unwrap().is_empty());
        {
            let tx = r.db_for_tests().begin_read().unwrap();
            assert!(matches!(
                tx.open_table(VIEW_ROLLUPS_JSON),
                Err(redb::TableError::TableDoesNotExist(_))
            ));
        }
        t.shutdown().await;
    }

    /// The names of `me`'s subtree's members, listed by name (through the sorted index at a
    /// county or a city).
    fn by_name(r: &StoreReader, me: &UnitId) -> Vec<String> {
        r.members_ordered(
            me,
            true,
            MemberFilter::default(),
            MemberOrder::Name,
            false,
            None,
            10,
            true,
        )
        .unwrap()
        .items
        .into_iter()
        .map(|(_, m)| m.name)
        .collect()
    }

    /// A layout 13 store whose JSON roll-up row of one unit does not decode: layout 14 does
    /// not leave that unit without a row (its later changes would count from zero) but writes
    /// every view again from the documents.
    #[tokio::test]
    async fn a_spoilt_rollup_row_has_migration_14_write_the_views_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01");
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let village = u("c01/k01/t01/v01");
        let m = h
            .create_member(village.clone(), sample("Kept"))
            .await
            .unwrap();
        t.shutdown().await;
        drop((h, r));
        as_written_before(&path, &m, 13, |tx| {
            as_json_rollups(tx, |_| {});
            tx.open_table(VIEW_ROLLUPS_JSON)
                .unwrap()
                .insert(
                    village.tree_key().as_str(),
                    b"{\"members\": \"x\"".as_slice(),
                )
                .unwrap();
        });
        let (h, r, t) = open(&path, me.clone()).unwrap();
        for unit in village.line() {
            assert_eq!(r.rollup(&unit).unwrap().members, 1, "{unit}");
        }
        assert!(h.verify_views().await.unwrap().is_empty());
        // And the next change counts from the right row.
        h.create_member(village.clone(), sample("Next"))
            .await
            .unwrap();
        assert_eq!(r.rollup(&village).unwrap().members, 2);
        assert!(h.verify_views().await.unwrap().is_empty());
        t.shutdown().await;
    }

    /// A layout 11 store whose member row does not decode: layout 12 does not leave it out
    /// of the sorted index (and the row spoilt) but writes every view again from the
    /// documents, so the listing through the index holds every member.
    #[tokio::test]
    async fn a_spoilt_member_row_has_migration_12_write_the_views_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01");
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let mut made = Vec::new();
        for (i, v) in ["c01/k01/t01/v01", "c01/k01/t02/v01"]
            .into_iter()
            .enumerate()
        {
            made.push(
                h.create_member(u(v), sample(&format!("Member {}", 2 - i)))
                    .await
                    .unwrap(),
            );
        }
        t.shutdown().await;
        drop((h, r));
        {
            let d = Database::create(&path).unwrap();
            let tx = d.begin_write().unwrap();
            tx.delete_table(VIEW_ORDER).unwrap();
            let key = (made[0].id.unit.tree_key(), made[0].id.record.to_string());
            tx.open_table(VIEW_MEMBERS)
                .unwrap()
                .insert((key.0.as_str(), key.1.as_str()), b"not json".as_slice())
                .unwrap();
            tx.open_table(META).unwrap().insert("layout", 11).unwrap();
            tx.commit().unwrap();
        }
        let (h, r, t) = open(&path, me.clone()).unwrap();
        assert!(h.verify_views().await.unwrap().is_empty());
        assert_eq!(r.member(&made[0].id).unwrap().unwrap().name, "Member 2");
        let got = by_name(&r, &me);
        assert_eq!(got, ["Member 1", "Member 2"]);
        t.shutdown().await;
    }

    /// A layout 11 store has no sorted index: layouts 12 and 13 write it from the members
    /// and records views, without touching the feed (no document read, no new epoch), and a
    /// county's ordered listing reads through it.
    #[tokio::test]
    async fn a_layout_11_store_gets_its_sorted_index_from_the_views() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01");
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let mut made = Vec::new();
        for (i, v) in ["c01/k01/t01/v01", "c01/k01/t02/v01", "c01/k01/t01/v02"]
            .into_iter()
            .enumerate()
        {
            made.push(
                h.create_member(u(v), sample(&format!("Member {}", 3 - i)))
                    .await
                    .unwrap(),
            );
        }
        let meeting = fields(&[
            (
                "kind",
                grassroots_schema::Value::Text("group_meeting".into()),
            ),
            (
                "heldOn",
                grassroots_schema::Value::Text("2026-03-01".into()),
            ),
            ("attendance", grassroots_schema::Value::Int(12)),
        ]);
        h.create_record(DocKind::Meetings, u("c01/k01/t01/v01"), meeting, None, None)
            .await
            .unwrap();
        let epoch = |r: &StoreReader| {
            let tx = r.db_for_tests().begin_read().unwrap();
            let meta = tx.open_table(META).unwrap();
            meta.get(FEED_EPOCH).unwrap().unwrap().value()
        };
        let before = epoch(&r);
        t.shutdown().await;
        drop((h, r));
        {
            let d = Database::create(&path).unwrap();
            let tx = d.begin_write().unwrap();
            tx.delete_table(VIEW_ORDER).unwrap();
            tx.open_table(META).unwrap().insert("layout", 11).unwrap();
            tx.commit().unwrap();
        }
        let (h, r, t) = open(&path, me.clone()).unwrap();
        assert!(h.verify_views().await.unwrap().is_empty());
        assert_eq!(epoch(&r), before);
        let got = by_name(&r, &me);
        assert_eq!(got, ["Member 1", "Member 2", "Member 3"]);
        let tx = r.db_for_tests().begin_read().unwrap();
        let entries = tx.open_table(VIEW_ORDER).unwrap().iter().unwrap().count();
        assert_eq!(entries, 3 * 3 + 1, "three per member, one for the meeting");
        t.shutdown().await;
    }

    /// A node of an earlier build took a member's categories in without counting them: its
    /// row and roll-up have none. Layout 6 writes the views again, so they are counted.
    #[tokio::test]
    async fn a_layout_5_store_counts_the_categories_it_took_in() {
        use grassroots_schema::MemberCategory as C;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01/t01");
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let mut member = sample("Away");
        member.categories = vec![C::Floating];
        let m = h.create_member(me.clone(), member).await.unwrap();
        assert_eq!(r.rollup(&me).unwrap().in_category(C::Floating, None), 1);
        t.shutdown().await;
        drop((h, r));
        let mut old = m.clone();
        old.categories.clear();
        as_written_before(&path, &old, 5, |tx| {
            as_json_rollups(tx, |roll| {
                roll.tallies
                    .retain(|k, _| !k.starts_with("member-category/"))
            })
        });
        let (h, r, t) = open(&path, me.clone()).unwrap();
        assert_eq!(
            r.member(&m.id).unwrap().unwrap().categories,
            vec![C::Floating]
        );
        assert_eq!(r.rollup(&me).unwrap().in_category(C::Floating, None), 1);
        assert!(h.verify_views().await.unwrap().is_empty());
        t.shutdown().await;
    }

    /// A store of an earlier layout lacks what later layouts count (secretaries since 7,
    /// members by join year since 8): layout 9 writes the views again, so they are counted
    /// (from layout 7, and from 5 or 6 in the same one pass).
    #[tokio::test]
    async fn a_store_of_an_earlier_layout_counts_what_later_ones_added() {
        use grassroots_schema::Value as V;
        for layout in [5, 6, 7, 8] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.redb");
            let (me, village) = (u("c01/k01/t01"), u("c01/k01/t01/v01"));
            let (h, r, t) = open(&path, me.clone()).unwrap();
            let m = h.create_member(me.clone(), sample("Kept")).await.unwrap();
            let post = fields(&[
                ("post", V::Text("secretary".into())),
                ("holder", V::Text("Wang Fang".into())),
                ("selection", V::Text("direct_election".into())),
                ("termStart", V::Text("2021-01-01".into())),
                ("birthYear", V::Int(1961)),
            ]);
            h.create_record(DocKind::Posts, village.clone(), post, None, None)
                .await
                .unwrap();
            let secretaries = |r: &StoreReader| {
                r.rollup(&me)
                    .unwrap()
                    .tallies_under("secretary/")
                    .map(|(k, n)| (k.to_owned(), n))
                    .collect::<Vec<_>>()
            };
            let want = vec![("2021-01-01/open/1961/-/0".to_owned(), 1)];
            assert_eq!(secretaries(&r), want);
            let joined = r.rollup(&me).unwrap().by_joined_year.clone();
            assert_eq!(joined.len(), 1, "{joined:?}");
            t.shutdown().await;
            drop((h, r));
            as_written_before(&path, &m, layout, |tx| {
                as_json_rollups(tx, |roll| {
                    roll.tallies.retain(|k, _| !k.starts_with("secretary/"));
                    roll.by_joined_year.clear();
                })
            });
            let (h, r, t) = open(&path, me.clone()).unwrap();
            assert_eq!(secretaries(&r), want, "from layout {layout}");
            assert_eq!(
                r.rollup(&me).unwrap().by_joined_year,
                joined,
                "from layout {layout}"
            );
            assert!(h.verify_views().await.unwrap().is_empty());
            t.shutdown().await;
        }
    }

    /// Replace the stored snapshot of `doc` (a stopped store's) with bytes that do not
    /// parse, and set the store's layout to `layout` if given.
    fn break_snapshot(path: &Path, doc: DocId, layout: Option<u64>) {
        let d = Database::create(path).unwrap();
        let tx = d.begin_write().unwrap();
        {
            let key = doc.to_string();
            let mut snaps = tx.open_table(SNAPSHOTS).unwrap();
            assert!(snaps.get(key.as_str()).unwrap().is_some());
            snaps
                .insert(key.as_str(), b"not automerge".as_slice())
                .unwrap();
        }
        if let Some(l) = layout {
            tx.open_table(META).unwrap().insert("layout", l).unwrap();
        }
        tx.commit().unwrap();
    }

    #[tokio::test]
    async fn a_document_that_does_not_parse_is_left_out_of_the_layout_5_views() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (me, village) = (u("c01/k01/t01"), u("c01/k01/t01/v01"));
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let kept = h.create_member(me.clone(), sample("Kept")).await.unwrap();
        let lost = h
            .create_member(village.clone(), sample("Lost"))
            .await
            .unwrap();
        t.shutdown().await;
        drop((h, r));
        break_snapshot(
            &path,
            DocId::new(DocKind::Members, village.clone()),
            Some(4),
        );
        // The store opens; the other documents' views are written, the broken one's left out.
        let (_h, r, t) = open(&path, me.clone()).unwrap();
        assert_eq!(r.member(&kept.id).unwrap().unwrap().name, "Kept");
        assert!(r.member(&lost.id).unwrap().is_none());
        t.shutdown().await;
    }

    #[tokio::test]
    async fn a_layout_1_store_with_a_document_that_does_not_parse_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (me, village) = (u("c01/k01/t01"), u("c01/k01/t01/v01"));
        let (h, r, t) = open(&path, me.clone()).unwrap();
        let kept = h.create_member(me.clone(), sample("Kept")).await.unwrap();
        // The village's register: a snapshot (its first commit), then two change rows.
        for name in ["Lost", "Lost too", "Lost three"] {
            h.create_member(village.clone(), sample(name))
                .await
                .unwrap();
        }
        t.shutdown().await;
        drop((h, r));
        let broken = DocId::new(DocKind::Members, village.clone());
        break_snapshot(&path, broken.clone(), Some(1));
        {
            let d = Database::create(&path).unwrap();
            let tx = d.begin_write().unwrap();
            tx.delete_table(DOC_STATE).unwrap();
            tx.delete_table(VIEW_ROLLUPS).unwrap();
            tx.commit().unwrap();
        }
        // Migration 2 keeps it without heads instead of refusing to open the store.
        let (h, r, t) = open(&path, me.clone()).unwrap();
        assert_eq!(r.member(&kept.id).unwrap().unwrap().name, "Kept");
        {
            let tx = r.db_for_tests().begin_read().unwrap();
            let key = broken.to_string();
            let row = tx.open_table(DOC_STATE).unwrap();
            let state =
                load::decode_state_for_tests(&key, row.get(key.as_str()).unwrap().unwrap().value());
            assert!(state.heads.is_empty());
            // Its change rows stay numbered: a later row is not written over them.
            let last = tx
                .open_table(CHANGES)
                .unwrap()
                .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
                .unwrap()
                .next_back()
                .unwrap()
                .unwrap()
                .0
                .value()
                .1;
            assert_eq!(state.next_seq, last + 1);
        }
        // Verify names it instead of failing; a rebuild leaves it out and writes the rest.
        let diffs = h.verify_views().await.unwrap();
        assert!(
            diffs
                .iter()
                .any(|d| d.contains(&format!("document {broken} does not parse"))),
            "{diffs:?}"
        );
        h.rebuild_views().await.unwrap();
        let diffs = h.verify_views().await.unwrap();
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert_eq!(r.rollup(&me).unwrap().members, 1);
        // The other documents take writes as before.
        h.create_member(me.clone(), sample("After")).await.unwrap();
        assert_eq!(r.rollup(&me).unwrap().members, 2);
        t.shutdown().await;
    }

    /// A document state row that does not read, or is missing beside stored rows, is
    /// counted again from the stored rows: the store opens, and a write after it continues
    /// the numbering of the change rows instead of writing over them.
    #[tokio::test]
    async fn a_state_row_that_does_not_read_is_counted_again() {
        for missing in [false, true] {
            a_state_row_damaged(missing).await;
        }
    }

    async fn a_state_row_damaged(missing: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01/t01");
        let (h, r, t) = open(&path, me.clone()).unwrap();
        for name in ["One", "Two", "Three"] {
            h.create_member(me.clone(), sample(name)).await.unwrap();
        }
        t.shutdown().await;
        drop((h, r));
        let id = DocId::new(DocKind::Members, me.clone());
        let key = id.to_string();
        let rows = |d: &Database| -> Vec<u64> {
            let tx = d.begin_read().unwrap();
            let changes = tx.open_table(CHANGES).unwrap();
            changes
                .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
                .unwrap()
                .map(|row| row.unwrap().0.value().1)
                .collect()
        };
        let before = {
            let d = Database::create(&path).unwrap();
            let before = rows(&d);
            assert!(!before.is_empty(), "change rows after the first commit");
            let tx = d.begin_write().unwrap();
            let mut state = tx.open_table(DOC_STATE).unwrap();
            if missing {
                state.remove(key.as_str()).unwrap();
            } else {
                state.insert(key.as_str(), [1u8, 2, 3].as_slice()).unwrap();
            }
            drop(state);
            tx.commit().unwrap();
            before
        };
        let (h, r, t) = open(&path, me.clone()).unwrap();
        h.create_member(me.clone(), sample("Four")).await.unwrap();
        let names = |r: &StoreReader| {
            let mut n: Vec<String> = r
                .members(&me, false, None, 100)
                .unwrap()
                .items
                .into_iter()
                .map(|(_, m)| m.name)
                .collect();
            n.sort();
            n
        };
        assert_eq!(
            names(&r),
            ["Four", "One", "Three", "Two"],
            "missing: {missing}"
        );
        t.shutdown().await;
        drop((h, r));
        let after = rows(&Database::create(&path).unwrap());
        assert!(
            after.len() > before.len() && after.starts_with(&before),
            "rows {before:?} then {after:?}"
        );
        // Read back from the store alone: nothing was written over.
        let (_h, r, t) = open(&path, me.clone()).unwrap();
        assert_eq!(names(&r), ["Four", "One", "Three", "Two"]);
        t.shutdown().await;
    }

    /// The store file is its owner's alone, made so and, for a store of an earlier build,
    /// made so at open: it holds personal details.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_store_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let (h, r, t) = open(&path, u("c01")).unwrap();
        assert_eq!(mode(&path), 0o600);
        t.shutdown().await;
        drop((h, r));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_h, _r, t) = open(&path, u("c01")).unwrap();
        assert_eq!(mode(&path), 0o600);
        t.shutdown().await;
    }

    /// A document stored as one snapshot and nothing after it reads back as that compact
    /// form with its heads (what a parent lacking it is sent without loading it); with a
    /// change row after the snapshot it does not. What is read loads to the heads stored.
    #[tokio::test]
    async fn a_document_stored_as_one_snapshot_reads_back_as_its_compact_form() {
        use automerge::Automerge;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01/t01/v01");
        let id = DocId::new(DocKind::Members, me.clone());
        for (i, name) in ["First", "Second"].into_iter().enumerate() {
            let (h, r, t) = open(&path, me.clone()).unwrap();
            h.create_member(me.clone(), sample(name)).await.unwrap();
            t.shutdown().await;
            drop((h, r));
            let d = Database::create(&path).unwrap();
            let held = load::load_doc(&d, &id).unwrap().get_heads();
            let compact = load::stored_compact(&d, &id).unwrap();
            if i == 0 {
                // The register's first commit: its snapshot.
                let (heads, bytes) = compact.expect("stored as one snapshot");
                assert_eq!(heads, held);
                assert_eq!(Automerge::load(&bytes).unwrap().get_heads(), held);
            } else {
                // The second write is a change row after it.
                assert!(compact.is_none());
            }
        }
    }

    /// A profile holding the most entries a peer takes refuses a local write that would add
    /// one (registering a unit, revoking a certificate): grown past it, it would never
    /// travel up again. A write that adds none still goes.
    #[tokio::test]
    async fn a_full_profile_refuses_another_registration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01/t01");
        let named = |n: &str| UnitDetails {
            name: Some(n.into()),
            ..UnitDetails::default()
        };
        let (h, r, t) = open(&path, me.clone()).unwrap();
        h.set_unit_details(u("c01/k01/t01/v0"), named("First"))
            .await
            .unwrap();
        t.shutdown().await;
        drop((h, r));
        // Filled to the cap behind the store's back, as a long history would.
        {
            let d = Database::create(&path).unwrap();
            let id = DocId::new(DocKind::Profile, me.clone());
            let mut doc = load::load_doc(&d, &id).unwrap();
            {
                use automerge::ReadDoc as _;
                use automerge::transaction::Transactable as _;
                let (_, children) = doc.get(automerge::ROOT, "children").unwrap().unwrap();
                let have = doc::profile_entries(&doc);
                let mut tx = doc.transaction();
                for i in have..crate::sync::MAX_PROFILE_ENTRIES {
                    tx.put(&children, format!("c01/k01/t01/x{i}"), true)
                        .unwrap();
                }
                tx.commit();
            }
            assert_eq!(
                doc::profile_entries(&doc),
                crate::sync::MAX_PROFILE_ENTRIES,
                "filled to the cap"
            );
            let key = id.to_string();
            let tx = d.begin_write().unwrap();
            {
                tx.open_table(SNAPSHOTS)
                    .unwrap()
                    .insert(key.as_str(), doc.save().as_slice())
                    .unwrap();
                tx.open_table(CHANGES)
                    .unwrap()
                    .retain(|(k, _), _| k != key.as_str())
                    .unwrap();
                let p = Persisted {
                    heads: doc.get_heads(),
                    ..Persisted::default()
                };
                tx.open_table(DOC_STATE)
                    .unwrap()
                    .insert(key.as_str(), load::encode_state(&p).as_slice())
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let (h, _r, t) = open(&path, me.clone()).unwrap();
        match h
            .set_unit_details(u("c01/k01/t01/v9"), named("One Too Many"))
            .await
        {
            Err(WriteError::Refused(r)) => assert_eq!(r.reason, wire::RejectReason::TooLarge),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let fingerprint = "ab".repeat(32);
        assert!(matches!(
            h.revoke(u("c01/k01/t01/v0"), fingerprint).await,
            Err(WriteError::Refused(_))
        ));
        // Already registered: nothing added, so it goes.
        h.set_unit_details(u("c01/k01/t01/v0"), named("Renamed"))
            .await
            .unwrap();
        t.shutdown().await;
    }

    /// A verify queued behind a write in one batch compares the views with what that
    /// batch commits, not with a document changed and not yet committed.
    #[tokio::test]
    async fn views_are_verified_after_the_batch_they_share_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let me = u("c01/k01/t01");
        let (h, _r, t) = open(&dir.path().join("s.redb"), me.clone()).unwrap();
        h.set_unit_details(
            me.clone(),
            UnitDetails {
                name: Some("Before".into()),
                ..UnitDetails::default()
            },
        )
        .await
        .unwrap();
        let held = hold_for(&h, 2).await;
        let h2 = h.clone();
        let me2 = me.clone();
        let write = tokio::spawn(async move {
            let details = UnitDetails {
                name: Some("After".into()),
                ..UnitDetails::default()
            };
            h2.set_unit_details(me2, details).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let h3 = h.clone();
        let verify = tokio::spawn(async move { h3.verify_views().await });
        tokio::task::spawn_blocking(move || held.join().unwrap())
            .await
            .unwrap();
        write.await.unwrap().unwrap();
        assert_eq!(verify.await.unwrap().unwrap(), Vec::<String>::new());
        // A rebuild after the commit leaves them equal too.
        h.rebuild_views().await.unwrap();
        assert!(h.verify_views().await.unwrap().is_empty());
        t.shutdown().await;
    }

    #[tokio::test]
    async fn a_layout_1_store_is_migrated_in_numbered_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = u("c01/k01/t01");
        let (h, r, t) = open(&path, me.clone()).unwrap();
        for unit in ["c01/k01/t01", "c01/k01/t01/v01"] {
            for i in 0..5 {
                h.create_member(u(unit), sample(&format!("{unit} {i}")))
                    .await
                    .unwrap();
            }
        }
        t.shutdown().await;
        drop((h, r));
        // Make it a layout-1 store: no heads, no roll-ups.
        {
            let d = Database::create(&path).unwrap();
            let tx = d.begin_write().unwrap();
            tx.delete_table(DOC_STATE).unwrap();
            tx.delete_table(VIEW_ROLLUPS).unwrap();
            tx.open_table(META).unwrap().insert("layout", 1).unwrap();
            tx.commit().unwrap();
        }
        let (h, r, t) = open(&path, me.clone()).unwrap();
        {
            let tx = r.db_for_tests().begin_read().unwrap();
            let layout = tx.open_table(META).unwrap().get("layout").unwrap().unwrap();
            assert_eq!(layout.value(), LAYOUT);
        }
        assert_eq!(r.rollup(&me).unwrap().members, 10);
        assert_eq!(r.rollup(&u("c01/k01/t01/v01")).unwrap().members, 5);
        assert!(h.verify_views().await.unwrap().is_empty());
        // The migrated heads serve the digests: a write continues the same history.
        h.create_member(me.clone(), sample("After")).await.unwrap();
        assert_eq!(r.rollup(&me).unwrap().members, 11);
        t.shutdown().await;
        drop((h, r));
        // A store newer than this build is refused, not misread.
        {
            let d = Database::create(&path).unwrap();
            let tx = d.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("layout", LAYOUT + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        let newer = LAYOUT + 1;
        assert!(matches!(
            open(&path, me.clone()),
            Err(StoreError::TooNew { layout }) if layout == newer
        ));
        // A store is opened only for the unit it was made for.
        {
            let d = Database::create(&path).unwrap();
            let tx = d.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("layout", LAYOUT)
                .unwrap();
            tx.commit().unwrap();
        }
        let other = u("c01/k02");
        let err = open(&path, other).unwrap_err();
        assert!(
            matches!(&err, StoreError::NotOwner { owner, .. } if owner == me.as_str()),
            "{err}"
        );
        let (_h, _r, t) = open(&path, me.clone()).unwrap();
        t.shutdown().await;
    }
}
