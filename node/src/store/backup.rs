//! Backups: a whole, consistent copy of a store taken while the node runs, and putting one
//! back.
//!
//! A copy is read in one redb read transaction (an MVCC snapshot), so the node keeps taking
//! writes while it is made and the copy holds exactly what was committed when it began. It
//! is written into a new redb file beside its final name, made durable, then linked to that
//! name (never over an existing file): a crash leaves no half backup under a backup's name.
//! One backup is written into a folder at a time per process. Restoring checks a copy of the
//! backup (a store of this node's unit whose views equal its documents) and then puts it in
//! the store's place in one rename; the store it replaces is kept beside it. What the node
//! wrote after the backup is not in it: the parent and children send back what they hold of
//! it at the next sync.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use grassroots_schema::{DocId, DocKind, UnitId};
use redb::{
    Database, Key, ReadTransaction, ReadableDatabase, ReadableTableMetadata, TableDefinition,
    Value, WriteTransaction,
};

use super::tables::{
    CHANGES, DOC_STATE, DOCS, FEED, FEED_AT, HEARD, META, OWNER, SECRETS, SNAPSHOTS, SYNC_STATES,
    TAKE_BACK_UNTIL, UNREAD, USERS, VIEW_MEMBERS, VIEW_ORDER, VIEW_RECORDS, VIEW_REFS,
    VIEW_ROLLUPS, VIEW_ROLLUPS_JSON, VIEW_UNITS,
};
use super::{StoreError, WriteError, db};

/// Where a node keeps its backups: `backups/` beside its store file.
pub fn backup_dir(store: &Path) -> PathBuf {
    store.with_file_name("backups")
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The backup file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Documents it holds.
    pub documents: u64,
    /// Time taken to write it (ms).
    pub took_ms: u64,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

/// Copy every row of one table.
fn copy<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    table: TableDefinition<'_, K, V>,
) -> Result<u64, StoreError> {
    let src = match from.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(db(e)),
    };
    let mut dst = to.open_table(table).map_err(db)?;
    let mut rows = 0;
    for row in redb::ReadableTable::iter(&src).map_err(db)? {
        let (k, v) = row.map_err(db)?;
        dst.insert(k.value(), v.value()).map_err(db)?;
        rows += 1;
    }
    Ok(rows)
}

/// The unit a store belongs to (its `owner-1` row), if it has one.
pub fn owner_of(database: &Database) -> Result<Option<String>, StoreError> {
    let tx = database.begin_read().map_err(db)?;
    match tx.open_table(OWNER) {
        Ok(t) => Ok(redb::ReadableTable::get(&t, "unit")
            .map_err(db)?
            .map(|v| v.value().to_owned())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db(e)),
    }
}

/// Room kept free on the backup's disk beyond the copy itself, so that a backup on the
/// store's own disk never takes the last of it from the store's commits.
pub const FREE_MARGIN: u64 = 256 << 20;

/// Bytes free to an unprivileged writer on the file system holding `dir`.
#[cfg(unix)]
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Bytes free to an unprivileged writer on the file system holding `dir`.
#[cfg(not(unix))]
pub fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

/// The folders a backup is being written into now, in this process: one at a time per
/// folder, as concurrent copies would each pass the free-space check and together fill
/// the disk.
static WRITING: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// A folder taken in [`WRITING`] until dropped.
struct Writing(PathBuf);

impl Writing {
    fn take(dir: &Path) -> Option<Writing> {
        let mut busy = WRITING.lock().unwrap_or_else(|p| p.into_inner());
        busy.insert(dir.to_owned()).then(|| Writing(dir.to_owned()))
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        WRITING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

/// Copy the whole store into a new file at `out` (which must not exist yet). `file` is the
/// store's file, if known: the backup is refused unless its folder's disk has the file's
/// size free and [`FREE_MARGIN`] more (a copy is never larger than the file it copies), and
/// the folder (when made here) and the backup are given to the file's owner.
pub fn write_backup(
    source: &Database,
    out: &Path,
    file: Option<&Path>,
) -> Result<BackupInfo, StoreError> {
    let started = Instant::now();
    let size = file
        .and_then(|f| std::fs::metadata(f).ok())
        .map(|m| m.len());
    let owner = file.and_then(owner_ids);
    let dir = crate::files::folder_of(out);
    if !dir.exists() {
        let made = folders_to_make(dir);
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        for d in made {
            give(d, owner)?;
        }
    }
    let dir = dir
        .canonicalize()
        .map_err(io(format!("reading {}", dir.display())))?;
    let Some(_writing) = Writing::take(&dir) else {
        return Err(StoreError::Io {
            what: format!("backing up into {}", dir.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                "another backup is being written there; try again when it is done",
            ),
        });
    };
    remove_partials(&dir, &owner_of(source)?.unwrap_or_default());
    if let (Some(size), Some(free)) = (size, free_bytes(&dir)) {
        let needed = size.saturating_add(FREE_MARGIN);
        if free < needed {
            return Err(StoreError::Io {
                what: format!(
                    "backing up into {}: {} MiB free, {} MiB needed (the store and a margin)",
                    dir.display(),
                    free >> 20,
                    needed >> 20
                ),
                source: std::io::Error::from(std::io::ErrorKind::StorageFull),
            });
        }
    }
    if out.exists() {
        return Err(StoreError::Io {
            what: format!("writing the backup {}", out.display()),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    let partial = out.with_extension("partial");
    // A backup's own leftovers went above; a file under an `--out` of one's own choosing may
    // be anyone's, so it is not removed, and the copy must not land on top of it.
    if partial.symlink_metadata().is_ok() {
        return Err(StoreError::Io {
            what: format!(
                "writing the backup {}: {} is in the way (a backup cut short? remove it)",
                out.display(),
                partial.display()
            ),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    let result = copy_store(source, out, &partial, started, owner);
    // The partial file is never a backup, whether the copy went well (it is linked under
    // the backup's name by then) or not (it takes room the store may need).
    let _ = std::fs::remove_file(&partial);
    result
}

/// The folders missing on the way to `dir`, deepest first: what a backup makes and gives to
/// the store's owner (a relative path's empty last ancestor is no folder).
fn folders_to_make(dir: &Path) -> Vec<&Path> {
    dir.ancestors()
        .take_while(|d| !d.exists())
        .filter(|d| !d.as_os_str().is_empty())
        .collect()
}

/// Remove what crashed backups of `unit`'s store left in `dir` (they take room and are
/// never backups). Other units' are theirs to clean: one may be being written now.
fn remove_partials(dir: &Path, unit: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if is_backup_name(&name, unit, ".partial")
            && let Err(err) = std::fs::remove_file(e.path())
        {
            tracing::warn!("cannot remove {}: {err}", e.path().display());
        }
    }
}

/// redb's page cache while a backup is written (see [`copy_store`]).
const BACKUP_CACHE: usize = 16 << 20;

fn copy_store(
    source: &Database,
    out: &Path,
    partial: &Path,
    started: Instant,
    owner: Option<(u32, u32)>,
) -> Result<BackupInfo, StoreError> {
    let documents = {
        // It holds personal data and token hashes: its owner's alone, from its creation.
        crate::files::new_private(partial)
            .map_err(io(format!("creating {}", partial.display())))?;
        give(partial, owner)?;
        // One write transaction copies the store: with redb's default cache (1 GiB) the
        // copy of a large store would hold as much again in memory as the store's size.
        let target = Database::builder()
            .set_cache_size(BACKUP_CACHE)
            .create(partial)
            .map_err(db)?;
        let from = source.begin_read().map_err(db)?;
        let to = target.begin_write().map_err(db)?;
        copy(&from, &to, META)?;
        copy(&from, &to, OWNER)?;
        let documents = copy(&from, &to, DOCS)?;
        copy(&from, &to, DOC_STATE)?;
        copy(&from, &to, SNAPSHOTS)?;
        copy(&from, &to, CHANGES)?;
        copy(&from, &to, SYNC_STATES)?;
        copy(&from, &to, USERS)?;
        copy(&from, &to, HEARD)?;
        copy(&from, &to, UNREAD)?;
        copy(&from, &to, VIEW_MEMBERS)?;
        copy(&from, &to, VIEW_ORDER)?;
        copy(&from, &to, VIEW_UNITS)?;
        copy(&from, &to, VIEW_ROLLUPS)?;
        // An older layout's roll-ups (`store backup` does not migrate the store it copies).
        copy(&from, &to, VIEW_ROLLUPS_JSON)?;
        copy(&from, &to, VIEW_RECORDS)?;
        copy(&from, &to, VIEW_REFS)?;
        copy(&from, &to, FEED)?;
        copy(&from, &to, FEED_AT)?;
        copy(&from, &to, SECRETS)?;
        // The commit's fsync makes the copy durable before it gets its name.
        to.commit().map_err(db)?;
        documents
    };
    // A link, not a rename: it fails rather than replace a file already under that name.
    std::fs::hard_link(partial, out).map_err(io(format!("naming {}", out.display())))?;
    sync_dir(out)?;
    let bytes = std::fs::metadata(out)
        .map_err(io(format!("reading {}", out.display())))?
        .len();
    Ok(BackupInfo {
        path: out.to_owned(),
        bytes,
        documents,
        took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Flush the folder holding `file`, so a rename into it survives a power loss.
fn sync_dir(file: &Path) -> Result<(), StoreError> {
    let dir = crate::files::folder_of(file);
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("flushing {}", dir.display())))
}

/// The start of every backup name of `unit`'s store: `store-c01_k01-`.
fn name_prefix(unit: &str) -> String {
    format!("store-{}-", unit.replace('/', "_"))
}

/// Whether `name` is a backup name of `unit`'s store with extension `ext` (`.redb`,
/// `.partial`): the prefix, then a stamp, and nothing else. The prefix alone also begins
/// the names of a unit whose label extends this one's (`c01/k01-north` after `c01/k01`),
/// whose backups a shared folder may hold.
fn is_backup_name(name: &str, unit: &str, ext: &str) -> bool {
    let Some(stamp) = name
        .strip_prefix(&name_prefix(unit))
        .and_then(|rest| rest.strip_suffix(ext))
    else {
        return false;
    };
    let b = stamp.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() == 20
        && digits(0..8)
        && b[8] == b'T'
        && digits(9..15)
        && b[15] == b'.'
        && digits(16..19)
        && b[19] == b'Z'
}

/// A backup's file name for `unit` at a moment: `store-c01_k01-20261127T053000.250Z.redb`
/// (UTC, to the millisecond), so that one unit's names sort by time and units sharing a
/// backup folder keep apart.
pub fn backup_name(unit: &str, epoch_ms: u64) -> String {
    format!("{}{}.redb", name_prefix(unit), utc_stamp(epoch_ms))
}

/// `20261127T053000.250Z` for a millisecond Unix time.
pub(super) fn utc_stamp(epoch_ms: u64) -> String {
    let (secs, ms) = (epoch_ms / 1000, epoch_ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = grassroots_schema::civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `unit`'s backups in `dir`, oldest first by name.
fn backups_of(dir: &Path, unit: &str) -> Result<Vec<PathBuf>, StoreError> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_backup_name(n, unit, ".redb"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
    };
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// `unit`'s newest backup in `dir` by name: when it was written (ms since the epoch, from
/// its file's modification time), where, and its size.
pub(super) fn newest_backup_file(dir: &Path, unit: &str) -> Option<(u64, PathBuf, u64)> {
    let path = backups_of(dir, unit).ok()?.pop()?;
    let meta = std::fs::metadata(&path).ok()?;
    let at = meta
        .modified()
        .ok()?
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?;
    Some((u64::try_from(at.as_millis()).ok()?, path, meta.len()))
}

/// Delete `unit`'s oldest backups in `dir` beyond the newest `keep`, never `latest` (the
/// one just written, even if a clock set back gave it an older name). Other files, other
/// units' backups included, are left. Returns how many were deleted.
pub fn prune_backups(
    dir: &Path,
    unit: &str,
    keep: usize,
    latest: Option<&Path>,
) -> Result<usize, StoreError> {
    let all: Vec<PathBuf> = backups_of(dir, unit)?
        .into_iter()
        .filter(|p| Some(p.as_path()) != latest)
        .collect();
    let keep_others = keep.saturating_sub(usize::from(latest.is_some()));
    let excess = all.len().saturating_sub(keep_others);
    for path in &all[..excess] {
        std::fs::remove_file(path).map_err(io(format!("removing {}", path.display())))?;
    }
    Ok(excess)
}

/// Check that the database at `path` is a store of `me`: its owner row names `me` (whether
/// this build reads its layout is checked when it is opened as a store).
pub fn check_owner(database: &Database, path: &Path, me: &UnitId) -> Result<(), StoreError> {
    match owner_of(database)? {
        Some(o) if o == me.as_str() => Ok(()),
        Some(o) => Err(StoreError::Corrupt(format!(
            "{} is not a store of {me}: it belongs to {o}",
            path.display()
        ))),
        None => Err(StoreError::Corrupt(format!(
            "{} is not a store of {me}: it names no owner (a store an earlier build wrote \
             records its owner when this build first opens it, at the node's start or \
             `grassroots store verify`)",
            path.display()
        ))),
    }
}

/// Open a database that must exist (never create one), mapping the lock to
/// [`StoreError::Locked`].
pub fn open_existing(path: &Path) -> Result<Database, StoreError> {
    if !path.exists() {
        return Err(StoreError::Io {
            what: format!("opening {}", path.display()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    match Database::open(path) {
        Ok(d) => Ok(d),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            Err(StoreError::Locked(path.display().to_string()))
        }
        Err(e) => Err(db(e)),
    }
}

/// Where the users of a restored store came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsersFrom {
    /// The store it replaced (users live only at this node; its list is the newest, so a
    /// token revoked after the backup stays revoked).
    Replaced(u64),
    /// The backup: the store it replaced did not open or held no user (a node started
    /// on an empty disk before the restore).
    Backup(u64),
    /// Both ([`KeepUsers::Both`]): how many in all.
    Both(u64),
}

/// Whose users a restored store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeepUsers {
    /// The replaced store's when it opens and holds any, else the backup's: the replaced
    /// store's list is the newest, so a token revoked after the backup stays revoked.
    #[default]
    Newest,
    /// The backup's and the replaced store's: for a store made after the disk was lost,
    /// whose few users (an admin's first token) are not all there were. A token revoked
    /// after the backup comes back: revoke it again.
    Both,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Where the replaced store is kept (none when there was no store).
    pub kept: Option<PathBuf>,
    /// Whose users the restored store has, and how many.
    pub users: UsersFrom,
    /// How many users the backup held.
    pub backup_users: u64,
    /// How many view rows differed from the backup's documents and were made again (0:
    /// its views were right).
    pub views_made: usize,
    /// How many certificates the replaced store's profile revoked and the backup's did not,
    /// revoked again in the restored store; none when the replaced store, or its profile,
    /// did not read (revoke again any revoked after the backup).
    pub revocations: Option<usize>,
}

/// What [`stage`] did to the copy: [`Restored`] but where the replaced store is kept.
struct Staged {
    users: UsersFrom,
    backup_users: u64,
    views_made: usize,
    revocations: Option<usize>,
}

/// Refused when an interrupted restore left its staged copy beside the store at `path`: a
/// node must not start on what it left (an empty file holding the place of a store it was
/// bringing back, or the store it was replacing).
pub fn not_restoring(path: &Path) -> Result<(), StoreError> {
    let staged = staged_for(path);
    if staged != path && staged.exists() {
        return Err(StoreError::RestoreInterrupted(staged.display().to_string()));
    }
    Ok(())
}

/// Where a restore copies and checks a backup before it takes the place of `store`.
pub fn staged_for(store: &Path) -> PathBuf {
    store.with_extension("restoring")
}

/// Put the backup at `from` in place of the store at `store` (the node must be stopped).
/// The backup is copied beside the store and the copy checked: a store of `me`, opened as
/// a store (a migration runs if it is older), its views equal to its documents. The store it
/// replaces is kept as `store.redb.before-restore-<time>` and the copy renamed over it in
/// one step, so there is a store at every moment. Users come from the replaced store when it
/// opens and holds any ([`UsersFrom`]).
pub async fn restore(
    from: &Path,
    store: &Path,
    me: &UnitId,
    now_ms: u64,
) -> Result<Restored, StoreError> {
    restore_keeping(from, store, me, now_ms, KeepUsers::Newest).await
}

/// [`restore`], keeping the users `keep` says.
pub async fn restore_keeping(
    from: &Path,
    store: &Path,
    me: &UnitId,
    now_ms: u64,
    keep: KeepUsers,
) -> Result<Restored, StoreError> {
    // Refuse while the node runs: redb holds a lock on an open store. The store stays open
    // (locked) until the copy is in its place, so a node started meanwhile cannot run on
    // the file being replaced; where there is none, an empty one holds the place.
    let had_store = store.exists();
    let current = if had_store {
        match Database::open(store) {
            Ok(d) => Some(d),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked(store.display().to_string()));
            }
            // A store too damaged to open is what a restore is for.
            Err(e) => {
                tracing::warn!("the store being replaced does not open: {e}");
                None
            }
        }
    } else {
        None
    };
    // The restored store goes to the owner of the store it replaces, or of a file too
    // damaged to open (what a restore is for); a store without its owner row (the empty
    // one an interrupted restore left) says nothing of who runs the node, nor does no
    // store: then the folder's owner.
    let owner = match &current {
        Some(c) if owner_of(c).ok().flatten().is_none() => {
            owner_ids(crate::files::folder_of(store))
        }
        _ if had_store => owner_ids(store),
        _ => owner_ids(crate::files::folder_of(store)),
    };
    // The staged copy's file first: while it is there no node starts on the store (a crash
    // from here on leaves it), so it must be there before an empty placeholder is. What an
    // earlier restore left is removed (a link there too, not what it points to), and the
    // file is made new: never one found there.
    let staged = staged_for(store);
    match std::fs::remove_file(&staged) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("removing {}", staged.display()))(e)),
    }
    let staged_file = crate::files::new_private_file(&staged)
        .map_err(io(format!("creating {}", staged.display())))?;
    let placeholder = if had_store {
        None
    } else {
        let made = crate::files::new_store_file(store)
            .map_err(io(format!("creating {}", store.display())))
            .and_then(|_| Database::create(store).map_err(db));
        match made {
            Ok(d) => Some(d),
            Err(e) => {
                let _ = std::fs::remove_file(store);
                let _ = std::fs::remove_file(&staged);
                return Err(e);
            }
        }
    };
    // On any failure from here: no empty placeholder where there was no store (a node
    // must not start on it), then no half copy left.
    let fail = |placeholder: Option<Database>, e: StoreError| {
        if let Some(p) = placeholder {
            drop(p);
            let _ = std::fs::remove_file(store);
        }
        let _ = std::fs::remove_file(&staged);
        Err(e)
    };
    let Staged {
        users,
        backup_users,
        views_made,
        mut revocations,
    } = match stage(
        from,
        &staged,
        staged_file,
        current.as_ref(),
        me,
        owner,
        now_ms,
        keep,
    )
    .await
    {
        Ok(staged) => staged,
        Err(e) => return fail(placeholder, e),
    };
    if had_store && current.is_none() {
        // A store that did not open: what it revoked is not known.
        revocations = None;
    }
    let kept = if had_store {
        let kept = store.with_extension(format!("redb.before-restore-{}", utc_stamp(now_ms)));
        // A second name for the old store, then the copy renamed over the first: no moment
        // without a store.
        if let Err(e) = std::fs::hard_link(store, &kept) {
            return fail(
                placeholder,
                io(format!("keeping {} as {}", store.display(), kept.display()))(e),
            );
        }
        // The second name durable before the first is given to the copy.
        if let Err(e) = sync_dir(store) {
            let _ = std::fs::remove_file(&kept);
            return fail(placeholder, e);
        }
        Some(kept)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(&staged, store) {
        return fail(placeholder, io(format!("renaming {}", staged.display()))(e));
    }
    drop((current, placeholder));
    // The restore has taken effect: a folder that does not flush now is said, not taken
    // for a failed restore (whose report would not name the kept store).
    if let Err(e) = sync_dir(store) {
        tracing::warn!("the restored store is in place, but {e}: a power cut now may undo it");
    }
    Ok(Restored {
        kept,
        users,
        backup_users,
        views_made,
        revocations,
    })
}

fn set_take_back(database: &Database, until_ms: u64) -> Result<(), StoreError> {
    let tx = database.begin_write().map_err(db)?;
    tx.open_table(META)
        .map_err(db)?
        .insert(TAKE_BACK_UNTIL, until_ms)
        .map_err(db)?;
    tx.commit().map_err(db)
}

/// Have the stopped node of `me` whose store is `store` take back from its children, until
/// `until_ms`, changes made in its name or above it: a node started on a new store after
/// its disk was lost (without a backup to restore) gets back what only its children hold.
/// Where there is no store yet, an empty one is made for `me`.
pub fn take_back(store: &Path, me: &UnitId, until_ms: u64) -> Result<(), StoreError> {
    // A store made here is the folder owner's and private from its creation: an operator's
    // command (run as root) makes it for a node that runs as its own user.
    let made =
        crate::files::new_store_file(store).map_err(io(format!("creating {}", store.display())))?;
    let database = if made {
        Database::create(store).map_err(db)?
    } else {
        open_existing(store)?
    };
    // As opening it for the node would: another unit's store or a newer layout is refused.
    super::load::init_tables(&database, me)?;
    set_take_back(&database, until_ms)?;
    Ok(())
}

use crate::files::owner_ids;

/// Give `path` to `owner` ([`crate::files::give`]), as a store error.
fn give(path: &Path, owner: Option<(u32, u32)>) -> Result<(), StoreError> {
    crate::files::give(path, owner).map_err(io(format!(
        "giving {} to {} (the store's owner)",
        path.display(),
        owner.map_or_else(String::new, |(u, g)| format!("user {u}, group {g}"))
    )))
}

/// Users (tokens) a store holds (none when it has no users table).
fn users_in(database: &Database) -> Result<u64, StoreError> {
    let tx = database.begin_read().map_err(db)?;
    match tx.open_table(USERS) {
        Ok(t) => t.len().map_err(db),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(db(e)),
    }
}

/// Copy the backup to `staged`, check the copy, give it `current`'s users when that has
/// any (in place of the backup's, or besides them: `keep`), open it as a store and check
/// its views, making them again when they differ, after revoking again what `current`'s
/// profile revokes and the backup's does not (so the check covers those writes too).
#[allow(clippy::too_many_arguments)]
async fn stage(
    from: &Path,
    staged: &Path,
    mut staged_file: std::fs::File,
    current: Option<&Database>,
    me: &UnitId,
    owner: Option<(u32, u32)>,
    now_ms: u64,
    keep: KeepUsers,
) -> Result<Staged, StoreError> {
    let copying = io(format!(
        "copying {} to {}",
        from.display(),
        staged.display()
    ));
    std::fs::File::open(from)
        .and_then(|mut source| std::io::copy(&mut source, &mut staged_file))
        .map_err(copying)?;
    crate::files::give_file(&staged_file, owner).map_err(io(format!(
        "giving {} to the store's owner",
        staged.display()
    )))?;
    drop(staged_file);
    let (users, backup_users) = {
        let target = open_existing(staged)?;
        check_owner(&target, from, me)?;
        // What this node wrote after the backup may be held only by its children now: the
        // store takes it back from them for a while (`RETURNING_WINDOW`).
        set_take_back(&target, super::window_end(now_ms, super::RETURNING_WINDOW))?;
        // The feed's positions run again from the backup's: readers must start over.
        let tx = target.begin_write().map_err(db)?;
        super::new_feed_epoch(&tx)?;
        tx.commit().map_err(db)?;
        let current_users = match current {
            Some(c) => users_in(c)?,
            None => 0,
        };
        let backup_users = users_in(&target)?;
        let users = match current {
            // Not another unit's store's (one naming no owner is an earlier build's, whose
            // first open by this build names it).
            Some(c) if current_users > 0 && owner_of(c)?.is_none_or(|o| o == me.as_str()) => {
                let read = c.begin_read().map_err(db)?;
                let to = target.begin_write().map_err(db)?;
                if keep == KeepUsers::Newest {
                    to.delete_table(USERS).map_err(db)?;
                }
                copy(&read, &to, USERS)?;
                to.commit().map_err(db)?;
                match keep {
                    KeepUsers::Newest => UsersFrom::Replaced(current_users),
                    KeepUsers::Both => UsersFrom::Both(users_in(&target)?),
                }
            }
            _ => UsersFrom::Backup(backup_users),
        };
        (users, backup_users)
    };
    // Certificates revoked after the backup: those the replaced store's profile lists and
    // the backup's does not (by the documents, not the views, which are checked below).
    let replaced = match current.map(|c| revocations_in(c, me)) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            tracing::warn!(
                "the replaced store's profile does not read ({e}): certificates it revoked \
                 after the backup are not revoked again"
            );
            None
        }
        None => Some(Vec::new()),
    };
    let held = revocations_in(&open_existing(staged)?, me).unwrap_or_default();
    let (handle, _reader, thread) = super::open(staged, me.clone())?;
    let checked = async {
        let carried = match replaced {
            Some(revoked) => Some(carry_revocations(&handle, &held, revoked).await?),
            None => None,
        };
        // Views are made from the documents: a backup whose views differ (an older
        // build's bug, say) is still the backup of its documents, so its views are made
        // again; what still differs after that is a document that does not read.
        let diffs = handle.verify_views().await?;
        if diffs.is_empty() {
            return Ok((0, carried));
        }
        tracing::warn!(
            "the backup's views differ from its documents in {} rows (first: {}): made again",
            diffs.len(),
            diffs[0]
        );
        handle.rebuild_views().await?;
        match handle.verify_views().await?.first() {
            None => Ok((diffs.len(), carried)),
            Some(first) => Err(StoreError::Corrupt(format!(
                "the backup's views differ from its documents even made again (first: {first})"
            ))),
        }
    }
    .await;
    drop(handle);
    thread.shutdown().await;
    let (views_made, revocations) = checked?;
    std::fs::File::open(staged)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("flushing {}", staged.display())))?;
    Ok(Staged {
        users,
        backup_users,
        views_made,
        revocations,
    })
}

/// The revocations in `me`'s profile as `database` holds it (none where it holds no
/// profile), as (fingerprint, the unit it names).
fn revocations_in(database: &Database, me: &UnitId) -> Result<Vec<(String, String)>, StoreError> {
    let id = DocId::new(DocKind::Profile, me.clone());
    let tx = database.begin_read().map_err(db)?;
    let held = match tx.open_table(DOCS) {
        Ok(t) => t.get(id.to_string().as_str()).map_err(db)?.is_some(),
        Err(redb::TableError::TableDoesNotExist(_)) => false,
        Err(e) => return Err(db(e)),
    };
    if !held {
        return Ok(Vec::new());
    }
    Ok(crate::doc::revocations(&super::load::load_doc(
        database, &id,
    )?))
}

/// Revoke again through `handle` (the restored store, whose profile revokes `held`) what
/// `revoked` (the replaced store's) lists and it does not: a certificate revoked after the
/// backup stays revoked, rather than links coming up with it until the profile comes back
/// from the parent. Returns how many. A storage failure fails the restore; an entry this
/// node could not have written itself (a unit that is not its child, a malformed one: an
/// ancestor's, which comes back from it with the profile) is left with a warning.
async fn carry_revocations(
    handle: &super::StoreHandle,
    held: &[(String, String)],
    revoked: Vec<(String, String)>,
) -> Result<usize, StoreError> {
    let held: BTreeSet<&str> = held.iter().map(|(f, _)| f.as_str()).collect();
    let mut carried = 0;
    for (fingerprint, child) in revoked {
        if held.contains(fingerprint.as_str()) {
            continue;
        }
        let unit = match child.parse::<UnitId>() {
            Ok(unit) => unit,
            Err(e) => {
                tracing::warn!(
                    %fingerprint,
                    "a revocation of the replaced store is not written again in the restored \
                     one: the unit it names, {child:?}, does not read ({e})"
                );
                continue;
            }
        };
        match handle.revoke(unit, fingerprint.clone()).await {
            Ok(()) => carried += 1,
            Err(WriteError::Store(e)) => return Err(e),
            Err(e) => tracing::warn!(
                %fingerprint,
                unit = %child,
                "a revocation of the replaced store is not written again in the restored one: {e}"
            ),
        }
    }
    Ok(carried)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{names, sample};
    use super::*;

    /// A backup into folders to make, given relative to the working folder, makes (and
    /// gives) those folders and nothing more.
    #[test]
    fn the_folders_made_for_a_backup_are_the_missing_ones() {
        let missing = Path::new("grassroots-no-such-folder/nightly");
        assert_eq!(
            folders_to_make(missing),
            vec![missing, Path::new("grassroots-no-such-folder")]
        );
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a").join("b");
        assert_eq!(
            folders_to_make(&deep),
            vec![deep.as_path(), dir.path().join("a").as_path()]
        );
    }

    /// A unit's backups are its names with a stamp, not a unit's whose label extends its
    /// own in a shared folder.
    #[test]
    fn backup_names_belong_to_their_unit_exactly() {
        let mine = backup_name("c01/k01", 1_795_000_000_250);
        assert!(is_backup_name(&mine, "c01/k01", ".redb"));
        let partial = mine.replace(".redb", ".partial");
        assert!(is_backup_name(&partial, "c01/k01", ".partial"));
        let sibling = backup_name("c01/k01-north", 1_795_000_000_250);
        assert!(!is_backup_name(&sibling, "c01/k01", ".redb"));
        assert!(is_backup_name(&sibling, "c01/k01-north", ".redb"));
        let child = backup_name("c01/k01/t01", 1_795_000_000_250);
        assert!(!is_backup_name(&child, "c01/k01", ".redb"));
        assert!(!is_backup_name(
            "store-c01_k01-notes.redb",
            "c01/k01",
            ".redb"
        ));
    }
    use grassroots_schema::Role;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn u(s: &str) -> UnitId {
        s.parse().unwrap()
    }

    /// A store of the city `c01` in `dir`, its profile written.
    async fn city(dir: &Path) -> super::super::Opened {
        let (h, r, t) = super::super::open(&dir.join("store.redb"), u("c01")).unwrap();
        h.set_profile("City".into(), vec![]).await.unwrap();
        (h, r, t)
    }

    fn tables(path: &Path) -> Vec<String> {
        let d = Database::open(path).unwrap();
        let tx = d.begin_read().unwrap();
        let mut t: Vec<String> = tx
            .list_tables()
            .unwrap()
            .map(|h| redb::TableHandle::name(&h).to_owned())
            .collect();
        t.sort();
        t
    }

    /// A backup taken while writes go on holds a prefix of them whole: it opens as a store,
    /// its views equal its documents, and it has every table of the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_taken_under_writes_opens_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let me = u("c01/k01/t01/v01");
        let (h, r, t) = super::super::open(&path, me.clone()).unwrap();
        h.set_profile("Liujia".into(), vec![]).await.unwrap();
        for i in 0..50 {
            h.create_member(me.clone(), sample(&format!("Before {i}")))
                .await
                .unwrap();
        }
        let done = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (h, me, done) = (h.clone(), me.clone(), done.clone());
            tokio::spawn(async move {
                for i in 0..300 {
                    h.create_member(me.clone(), sample(&format!("During {i:03}")))
                        .await
                        .unwrap();
                    done.store(i + 1, Ordering::SeqCst);
                }
            })
        };
        // Taken while the writer is under way: past its 20th write, before its last.
        while done.load(Ordering::SeqCst) < 20 {
            assert!(!writer.is_finished(), "the writer stopped early");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let reader = r.clone();
        let info = tokio::task::spawn_blocking(move || reader.backup(1_795_757_407_000))
            .await
            .unwrap()
            .unwrap();
        writer.await.unwrap();
        assert_eq!(
            info.path,
            dir.path()
                .join("backups")
                .join("store-c01_k01_t01_v01-20261127T053007.000Z.redb")
        );
        assert!(info.bytes > 0 && info.documents >= 2, "{info:?}");
        let all = names(&r, &me);
        t.shutdown().await;
        drop((h, r));
        assert_eq!(tables(&info.path), tables(&path));

        let (h, r, t) = super::super::open(&info.path, me.clone()).unwrap();
        assert!(h.verify_views().await.unwrap().is_empty());
        // The acknowledged writes are sequential: the copy holds exactly the first k.
        let copied = names(&r, &me);
        let during: Vec<&String> = copied.iter().filter(|n| n.starts_with("During")).collect();
        let k = during.len();
        assert!((20..=300).contains(&k), "{k} writes in the copy");
        let want: Vec<String> = (0..k).map(|i| format!("During {i:03}")).collect();
        assert_eq!(during, want.iter().collect::<Vec<_>>());
        assert_eq!(copied.len(), 50 + k);
        assert!(copied.iter().all(|n| all.contains(n)));
        t.shutdown().await;
        // A file is never overwritten: a backup in the same millisecond takes the next name.
        let (_h, r, t) = super::super::open(&path, me.clone()).unwrap();
        assert!(matches!(
            r.backup_to(&info.path),
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists
        ));
        let next = r.backup(1_795_757_407_000).unwrap();
        assert_eq!(
            next.path.file_name().and_then(|n| n.to_str()),
            Some("store-c01_k01_t01_v01-20261127T053007.001Z.redb")
        );
        t.shutdown().await;
    }

    /// A restore puts the backup's contents in place and keeps the store it replaced; it is
    /// refused while the store is open, for another unit's backup and for a file that is
    /// not a store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_puts_the_backup_back_and_keeps_the_store_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let me = u("c01/k01/t01/v01");
        let (h, r, t) = super::super::open(&path, me.clone()).unwrap();
        h.set_profile("Liujia".into(), vec![]).await.unwrap();
        h.create_member(me.clone(), sample("Kept")).await.unwrap();
        h.add_user([1; 32], me.clone(), Role::Clerk).await.unwrap();
        let backup = r.backup(1_000).unwrap().path;
        h.create_member(me.clone(), sample("Later")).await.unwrap();
        h.add_user([2; 32], me.clone(), Role::Admin).await.unwrap();
        // A feed reader up to date with the store before it is lost.
        let read = r
            .feed(None, None, 10, 10, |_, _| Ok(Some(())))
            .unwrap()
            .next;
        assert!(matches!(
            restore(&backup, &path, &me, 2_000).await,
            Err(StoreError::Locked(_))
        ));
        t.shutdown().await;
        drop((h, r));

        let other = u("c01/k01/t01/v02");
        let err = restore(&backup, &path, &other, 2_000).await.unwrap_err();
        assert!(
            err.to_string().contains("not a store of c01/k01/t01/v02"),
            "{err}"
        );
        let junk = dir.path().join("junk.redb");
        std::fs::write(&junk, b"not a database at all").unwrap();
        assert!(restore(&junk, &path, &me, 2_000).await.is_err());
        // A backup a newer build wrote is refused when the copy is opened as a store.
        let newer = dir.path().join("newer.redb");
        std::fs::copy(&backup, &newer).unwrap();
        {
            let d = Database::open(&newer).unwrap();
            let tx = d.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("layout", super::super::tables::LAYOUT + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        assert!(matches!(
            restore(&newer, &path, &me, 2_000).await,
            Err(StoreError::TooNew { .. })
        ));
        // Where there is no store, a failed restore leaves none (no empty one to start on).
        let bare = dir.path().join("bare").join("store.redb");
        std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
        assert!(restore(&junk, &bare, &me, 2_000).await.is_err());
        assert!(restore(&backup, &bare, &other, 2_000).await.is_err());
        assert_eq!(
            std::fs::read_dir(bare.parent().unwrap()).unwrap().count(),
            0
        );
        // ... and a restore that works makes one, keeping nothing beside it.
        let restored = restore(&backup, &bare, &me, 2_000).await.unwrap();
        assert_eq!(
            (restored.kept, restored.users),
            (None, UsersFrom::Backup(1))
        );
        assert_eq!(
            std::fs::read_dir(bare.parent().unwrap()).unwrap().count(),
            1
        );

        // A link at the staged copy's name (the node's user owns the folder) is removed, not
        // written through: what it points to is left as it was.
        #[cfg(unix)]
        let victim = {
            let victim = dir.path().join("victim");
            std::fs::write(&victim, b"not the store's").unwrap();
            std::os::unix::fs::symlink(&victim, path.with_extension("restoring")).unwrap();
            victim
        };
        // The store belongs to the node's own user; the restore is run as root (as an
        // operator's `sudo` would: where this test is not root, ownership is not checked).
        #[cfg(unix)]
        let node_user = std::os::unix::fs::chown(&path, Some(65534), Some(65534))
            .is_ok()
            .then_some((65534, 65534));
        let restored = restore(&backup, &path, &me, 2_000).await.unwrap();
        #[cfg(unix)]
        if let Some(ids) = node_user {
            assert_eq!(
                owner_ids(&path),
                Some(ids),
                "the restored store is not the node's"
            );
        }
        #[cfg(unix)]
        assert_eq!(std::fs::read(&victim).unwrap(), b"not the store's");
        assert_eq!(restored.users, UsersFrom::Replaced(2));
        let kept = restored.kept.unwrap();
        let (_h, r, t) = super::super::open(&path, me.clone()).unwrap();
        assert_eq!(names(&r, &me), vec!["Kept".to_owned()]);
        assert!(r.user(&[2; 32]).unwrap().is_some(), "a newer user lost");
        // The feed's positions ran again from the backup's: that reader starts over (its
        // position, past the backup's, would otherwise skip the next writes).
        let again = r
            .feed(Some(&read), None, 10, 10, |_, _| Ok(Some(())))
            .unwrap();
        assert!(again.reset);
        assert_eq!(again.entries.len(), 1);
        t.shutdown().await;
        let (_h, r, t) = super::super::open(&kept, me.clone()).unwrap();
        assert_eq!(names(&r, &me), vec!["Kept".to_owned(), "Later".to_owned()]);
        t.shutdown().await;
        assert!(!path.with_extension("restoring").exists());
    }

    /// Certificates revoked after the backup stay revoked in the restored store (its
    /// profile, which the handshake reads, lists them): a revoked child does not link again
    /// while the profile has yet to come back from the parent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_keeps_the_revocations_made_after_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let me = u("c01");
        let (h, r, t) = city(dir.path()).await;
        let fp = |b: char| b.to_string().repeat(64);
        h.revoke(u("c01/k01"), fp('a')).await.unwrap();
        let backup = r.backup(1_000).unwrap().path;
        h.revoke(u("c01/k01"), fp('b')).await.unwrap();
        h.revoke(u("c01/k02"), fp('c')).await.unwrap();
        t.shutdown().await;
        drop((h, r));

        let revoked = |path: &Path| {
            let database = Database::open(path).unwrap();
            let d =
                super::super::load::load_doc(&database, &DocId::new(DocKind::Profile, u("c01")))
                    .unwrap();
            crate::doc::revocations(&d)
        };
        let all = vec![
            (fp('a'), "c01/k01".to_owned()),
            (fp('b'), "c01/k01".to_owned()),
            (fp('c'), "c01/k02".to_owned()),
        ];
        let restored = restore(&backup, &path, &me, 2_000).await.unwrap();
        assert_eq!(restored.revocations, Some(2));
        assert_eq!(revoked(&path), all);
        let (h, r, t) = super::super::open(&path, me.clone()).unwrap();
        let mut listed = r.unit(&me).unwrap().unwrap().revoked;
        listed.sort();
        assert_eq!(listed, vec![fp('a'), fp('b'), fp('c')]);
        assert!(h.verify_views().await.unwrap().is_empty());
        t.shutdown().await;
        drop((h, r));
        // Restored again, over the store that holds all three: the same two come over.
        assert_eq!(
            restore(&backup, &path, &me, 3_000)
                .await
                .unwrap()
                .revocations,
            Some(2)
        );
        // Over a store that does not open, the backup's alone, and the restore says it could
        // not tell.
        std::fs::write(&path, b"not a database at all").unwrap();
        assert_eq!(
            restore(&backup, &path, &me, 4_000)
                .await
                .unwrap()
                .revocations,
            None
        );
        assert_eq!(revoked(&path), all[..1]);
    }

    /// A backup whose views differ from its documents (views are made from them) is
    /// restored with its views made again, not refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_with_wrong_views_is_restored_with_them_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let me = u("c01/k01/t01/v01");
        let path = dir.path().join("store.redb");
        let (h, r, t) = super::super::open(&path, me.clone()).unwrap();
        h.set_profile("Liujia".into(), vec![]).await.unwrap();
        h.create_member(me.clone(), sample("Kept")).await.unwrap();
        let backup = r.backup(1_000).unwrap().path;
        drop((h, r));
        t.shutdown().await;
        // A view row lost in the backup.
        {
            let d = Database::open(&backup).unwrap();
            let tx = d.begin_write().unwrap();
            let mut members = tx.open_table(VIEW_MEMBERS).unwrap();
            let (unit, member) = redb::ReadableTable::first(&members)
                .unwrap()
                .map(|(k, _)| (k.value().0.to_owned(), k.value().1.to_owned()))
                .unwrap();
            members.remove((unit.as_str(), member.as_str())).unwrap();
            drop(members);
            tx.commit().unwrap();
        }
        let restored = restore(&backup, &path, &me, 2_000).await.unwrap();
        assert!(restored.views_made > 0, "{restored:?}");
        let (h, r, t) = super::super::open(&path, me.clone()).unwrap();
        assert_eq!(names(&r, &me), vec!["Kept".to_owned()]);
        assert!(h.verify_views().await.unwrap().is_empty());
        t.shutdown().await;
    }

    /// A store made after the disk was lost holds an admin's first token: a restore over it
    /// keeps only that one, unless told to keep the backup's users too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_keeps_the_backups_users_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let me = u("c01/k01/t01/v01");
        let old = dir.path().join("old.redb");
        let (h, r, t) = super::super::open(&old, me.clone()).unwrap();
        h.set_profile("Liujia".into(), vec![]).await.unwrap();
        h.add_user([1; 32], me.clone(), Role::Clerk).await.unwrap();
        let backup = r.backup(1_000).unwrap().path;
        t.shutdown().await;
        for (keep, want, both) in [
            (KeepUsers::Newest, UsersFrom::Replaced(1), false),
            (KeepUsers::Both, UsersFrom::Both(2), true),
        ] {
            let path = dir.path().join(format!("{keep:?}.redb"));
            let (h, r, t) = super::super::open(&path, me.clone()).unwrap();
            h.add_user([2; 32], me.clone(), Role::Admin).await.unwrap();
            drop((h, r));
            t.shutdown().await;
            let restored = restore_keeping(&backup, &path, &me, 2_000, keep)
                .await
                .unwrap();
            assert_eq!((restored.users, restored.backup_users), (want, 1));
            let (_h, r, t) = super::super::open(&path, me.clone()).unwrap();
            assert!(r.user(&[2; 32]).unwrap().is_some(), "{keep:?}");
            assert_eq!(r.user(&[1; 32]).unwrap().is_some(), both, "{keep:?}");
            t.shutdown().await;
        }
        // Another unit's store in the node's place (a folder mixed up): its users would be
        // let into this node's store; the backup's stay.
        let mixed = dir.path().join("mixed.redb");
        let (h, r, t) = super::super::open(&mixed, u("c01/k01/t01/v02")).unwrap();
        h.add_user([3; 32], u("c01/k01/t01/v02"), Role::Admin)
            .await
            .unwrap();
        drop((h, r));
        t.shutdown().await;
        let restored = restore(&backup, &mixed, &me, 2_000).await.unwrap();
        assert_eq!(restored.users, UsersFrom::Backup(1));
        let (_h, r, t) = super::super::open(&mixed, me.clone()).unwrap();
        assert!(
            r.user(&[3; 32]).unwrap().is_none(),
            "another unit's user let in"
        );
        assert!(r.user(&[1; 32]).unwrap().is_some());
        t.shutdown().await;
        // A store naming no owner (an earlier build's, not opened by this one yet) is taken
        // for the node's own: its users, the newest, replace the backup's.
        let unnamed = dir.path().join("unnamed.redb");
        let (h, r, t) = super::super::open(&unnamed, me.clone()).unwrap();
        h.add_user([4; 32], me.clone(), Role::Admin).await.unwrap();
        drop((h, r));
        t.shutdown().await;
        {
            let d = Database::open(&unnamed).unwrap();
            let tx = d.begin_write().unwrap();
            tx.delete_table(OWNER).unwrap();
            tx.commit().unwrap();
        }
        let restored = restore(&backup, &unnamed, &me, 2_000).await.unwrap();
        assert_eq!(restored.users, UsersFrom::Replaced(1));
        let (_h, r, t) = super::super::open(&unnamed, me.clone()).unwrap();
        assert!(r.user(&[4; 32]).unwrap().is_some(), "the newest users lost");
        t.shutdown().await;
    }

    /// A backup that would not leave the margin free on its disk is refused before a byte
    /// is written.
    #[tokio::test]
    async fn a_backup_without_room_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_h, r, t) = city(dir.path()).await;
        let out = dir.path().join("backups").join(backup_name("c01", 5));
        let free = free_bytes(dir.path()).unwrap();
        // A store file as large as the free space (sparse: it takes none).
        let big = dir.path().join("big.redb");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(free.saturating_add(FREE_MARGIN))
            .unwrap();
        let err = write_backup(r.db_for_tests(), &out, Some(&big)).unwrap_err();
        assert!(
            matches!(&err, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("backups"))
                .unwrap()
                .count(),
            0
        );
        assert!(write_backup(r.db_for_tests(), &out, None).is_ok());
        t.shutdown().await;
    }

    #[test]
    fn backup_names_are_utc_times_that_sort() {
        let at = |ms| backup_name("c01/k01", ms);
        assert_eq!(at(0), "store-c01_k01-19700101T000000.000Z.redb");
        // 2026-11-27 05:30:07.250 UTC.
        assert_eq!(
            at(1_795_757_407_250),
            "store-c01_k01-20261127T053007.250Z.redb"
        );
        // 2024-02-29 23:59:59.009 UTC (a leap day).
        assert_eq!(
            at(1_709_251_199_009),
            "store-c01_k01-20240229T235959.009Z.redb"
        );
        assert!(at(1_709_251_199_009) < at(1_709_251_199_010));
        assert!(at(1_709_251_199_999) < at(1_795_757_407_000));
    }

    /// Pruning keeps a unit's newest backups and the one just written, and touches no
    /// other file, another unit's backups included.
    #[test]
    fn pruning_keeps_the_newest_and_the_latest_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let day = |n: u64| n * 86_400_000;
        for n in [3, 1, 2, 4] {
            std::fs::write(dir.path().join(backup_name("c01", day(n))), b"x").unwrap();
        }
        let theirs = backup_name("c01/k01", day(1));
        std::fs::write(dir.path().join(&theirs), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"keep me").unwrap();
        // Written last under an older name (a clock set back): kept all the same.
        let latest = dir.path().join(backup_name("c01", day(0)));
        std::fs::write(&latest, b"x").unwrap();
        assert_eq!(
            prune_backups(dir.path(), "c01", 2, Some(&latest)).unwrap(),
            3
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![
            "notes.txt".to_owned(),
            theirs,
            backup_name("c01", day(0)),
            backup_name("c01", day(4)),
        ];
        want.sort();
        assert_eq!(left, want);
        assert_eq!(
            prune_backups(&dir.path().join("none"), "c01", 2, None).unwrap(),
            0
        );
    }

    /// A second backup into a folder while one is written there is refused; what a
    /// crashed backup of this unit left is removed by the next one (another unit's is left);
    /// a partial file under an `--out` name is not built upon; backups are their owner's.
    #[tokio::test]
    async fn one_backup_at_a_time_and_no_partial_left() {
        let (dir, me) = (tempfile::tempdir().unwrap(), u("c01"));
        let (h, r, t) = city(dir.path()).await;
        let backups = dir.path().join("backups");
        std::fs::create_dir_all(&backups).unwrap();
        let stale = backups.join("store-c01-19700101T000000.000Z.partial");
        let theirs = backups.join("store-c01_k01-19700101T000000.000Z.partial");
        for f in [&stale, &theirs] {
            std::fs::write(f, vec![0; 4096]).unwrap();
        }
        {
            let _busy = Writing::take(&backups.canonicalize().unwrap()).unwrap();
            let err = r.backup(7).unwrap_err();
            assert!(
                matches!(&err, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::ResourceBusy),
                "{err}"
            );
        }
        let info = r.backup(8).unwrap();
        assert!(!stale.exists() && theirs.exists());
        assert_eq!(std::fs::read_dir(&backups).unwrap().count(), 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&info.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        // A file in the way of a name of one's own choosing may be anyone's: refused, kept.
        let out = dir.path().join("nightly.redb");
        std::fs::write(out.with_extension("partial"), b"left by a crash").unwrap();
        let err = r.backup_to(&out).unwrap_err().to_string();
        assert!(err.contains("nightly.partial is in the way"), "{err}");
        assert_eq!(
            std::fs::read(out.with_extension("partial")).unwrap(),
            b"left by a crash"
        );
        assert!(!out.exists());
        std::fs::remove_file(out.with_extension("partial")).unwrap();
        r.backup_to(&out).unwrap();
        assert!(!out.with_extension("partial").exists());
        t.shutdown().await;
        drop((h, r));
        let (_h, r, t) = super::super::open(&out, me.clone()).unwrap();
        assert_eq!(r.unit(&me).unwrap().unwrap().name, "City");
        t.shutdown().await;
    }

    /// Rotation: with two or more kept, a backup first prunes to one fewer, so the new copy
    /// has the room the oldest took; with one kept, the only copy stays until the new one is
    /// written. Another unit's files are never touched.
    #[tokio::test]
    async fn a_backup_rotates_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (_h, r, t) = city(dir.path()).await;
        let backups = dir.path().join("backups");
        std::fs::create_dir_all(&backups).unwrap();
        let day = |n: u64| n * 86_400_000;
        for n in [1, 2, 3] {
            std::fs::write(backups.join(backup_name("c01", day(n))), b"old").unwrap();
        }
        std::fs::write(backups.join(backup_name("c01/k01", day(1))), b"theirs").unwrap();
        // Before any backup of this process: the newest of its unit's files in the folder.
        let found = r.backup_log().last.map(|(_, p, _)| p);
        assert_eq!(found, Some(backups.join(backup_name("c01", day(3)))));
        let kept = |r: &super::super::StoreReader| {
            let mut n: Vec<String> = std::fs::read_dir(&backups)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            n.sort();
            let _ = r;
            n
        };
        let two = r.clone().with_backups_kept(2);
        let new = two.backup(day(10)).unwrap();
        let mut want = vec![
            backup_name("c01", day(3)),
            backup_name("c01/k01", day(1)),
            new.path.file_name().unwrap().to_str().unwrap().to_owned(),
        ];
        want.sort();
        assert_eq!(kept(&two), want);
        let one = r.clone().with_backups_kept(1);
        let newer = one.backup(day(11)).unwrap();
        let mut want = vec![
            backup_name("c01/k01", day(1)),
            newer.path.file_name().unwrap().to_str().unwrap().to_owned(),
        ];
        want.sort();
        assert_eq!(kept(&one), want);
        t.shutdown().await;
    }
}
