//! Backups: a whole, consistent copy of a store taken while the node runs, and putting one
//! back.
//!
//! A copy is read in one redb read transaction (an MVCC snapshot), so the node keeps taking
//! writes while it is made and the copy holds exactly what was committed when it began. It
//! is written into a new redb file beside its final name, made durable, then renamed: a
//! crash leaves no half backup under a backup's name. Restoring puts the copy in the store's
//! place after opening it as a store (migrating it if it is older) and checking its views;
//! the store it replaces is kept beside it. What the node wrote after the copy is not in it:
//! the parent and children send back what they hold of it at the next sync.

use std::path::{Path, PathBuf};
use std::time::Instant;

use grassroots_schema::{DocId, DocKind, UnitId};
use redb::{
    Database, Key, ReadTransaction, ReadableDatabase, TableDefinition, Value, WriteTransaction,
};

use super::StoreError;
use super::tables::{
    CHANGES, DOC_STATE, DOCS, HEARD, META, SNAPSHOTS, SYNC_STATES, USERS, VIEW_MEMBERS,
    VIEW_RECORDS, VIEW_REFS, VIEW_ROLLUPS, VIEW_UNITS,
};

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

fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
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

/// Copy the whole store into a new file at `out` (which must not exist yet). `size` is the
/// store file's size, if known: the backup is refused unless its folder's disk has that
/// much free and [`FREE_MARGIN`] more (a copy is never larger than the file it copies).
pub fn write_backup(
    source: &Database,
    out: &Path,
    size: Option<u64>,
) -> Result<BackupInfo, StoreError> {
    let started = Instant::now();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        if let (Some(size), Some(free)) = (size, free_bytes(dir)) {
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
    }
    let partial = out.with_extension("partial");
    let result = copy_store(source, out, &partial, started);
    if result.is_err() {
        // A half copy is no backup and takes room the store may need.
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn copy_store(
    source: &Database,
    out: &Path,
    partial: &Path,
    started: Instant,
) -> Result<BackupInfo, StoreError> {
    if out.exists() {
        return Err(StoreError::Io {
            what: format!("writing the backup {}", out.display()),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    // A partial file is left only by a crash during an earlier attempt: it is never a backup.
    match std::fs::remove_file(partial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("removing {}", partial.display()))(e)),
    }
    let documents = {
        let target = Database::create(partial).map_err(db)?;
        let from = source.begin_read().map_err(db)?;
        let to = target.begin_write().map_err(db)?;
        copy(&from, &to, META)?;
        let documents = copy(&from, &to, DOCS)?;
        copy(&from, &to, DOC_STATE)?;
        copy(&from, &to, SNAPSHOTS)?;
        copy(&from, &to, CHANGES)?;
        copy(&from, &to, SYNC_STATES)?;
        copy(&from, &to, USERS)?;
        copy(&from, &to, HEARD)?;
        copy(&from, &to, VIEW_MEMBERS)?;
        copy(&from, &to, VIEW_UNITS)?;
        copy(&from, &to, VIEW_ROLLUPS)?;
        copy(&from, &to, VIEW_RECORDS)?;
        copy(&from, &to, VIEW_REFS)?;
        // The commit's fsync makes the copy durable before it gets its name.
        to.commit().map_err(db)?;
        documents
    };
    std::fs::rename(partial, out).map_err(io(format!("renaming {}", partial.display())))?;
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
    let dir = match file.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("flushing {}", dir.display())))
}

/// A backup's file name for a moment: `store-20261127T053000.250Z.redb` (UTC, to the
/// millisecond), so that names sort by time.
pub fn backup_name(epoch_ms: u64) -> String {
    let (secs, ms) = (epoch_ms / 1000, epoch_ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "store-{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{ms:03}Z.redb",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// (year, month, day) of a count of days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Delete the oldest backups in `dir` beyond the newest `keep` (only files named as
/// [`backup_name`] makes them). Returns how many were deleted.
pub fn prune_backups(dir: &Path, keep: usize) -> Result<usize, StoreError> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("store-") && n.ends_with(".redb"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
    };
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for name in &names[..excess] {
        let path = dir.join(name);
        std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
    }
    Ok(excess)
}

/// Check that the backup at `from` is a store of `me` that opens: its layout is one this
/// build reads and it hosts `me`'s profile (every node writes its own at start).
pub fn check_backup(from: &Path, me: &UnitId) -> Result<u64, StoreError> {
    let database = match Database::open(from) {
        Ok(d) => d,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(StoreError::Locked(from.display().to_string()));
        }
        Err(e) => return Err(db(e)),
    };
    let tx = database.begin_read().map_err(db)?;
    let layout = match tx.open_table(META) {
        Ok(t) => redb::ReadableTable::get(&t, "layout")
            .map_err(db)?
            .map(|v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(db(e)),
    };
    match layout {
        Some(l) if l <= super::tables::LAYOUT => {}
        Some(l) => {
            return Err(StoreError::Corrupt(format!(
                "{} has layout {l}, newer than this build's {}",
                from.display(),
                super::tables::LAYOUT
            )));
        }
        None => {
            return Err(StoreError::Corrupt(format!(
                "{} is not a grassroots store (no layout)",
                from.display()
            )));
        }
    }
    let docs = tx.open_table(DOCS).map_err(db)?;
    let profile = DocId::new(DocKind::Profile, me.clone()).to_string();
    if redb::ReadableTable::get(&docs, profile.as_str())
        .map_err(db)?
        .is_none()
    {
        return Err(StoreError::Corrupt(format!(
            "{} is not a store of {me}: it does not hold {me}'s profile",
            from.display()
        )));
    }
    redb::ReadableTableMetadata::len(&docs).map_err(db)
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Where the replaced store is kept (none when there was no store).
    pub kept: Option<PathBuf>,
    /// Whether the users (tokens) are the replaced store's rather than the backup's.
    pub users_kept: bool,
}

/// Put the backup at `from` in place of the store at `store` (the node must be stopped):
/// the backup is copied beside the store, opened as a store of `me` (a migration runs if it
/// is older) and its views checked, then renamed into place. The store it replaces is kept
/// as `store.redb.before-restore-<time>`. Users live only at this node and the newest list
/// is the one to keep (a token revoked after the backup must stay revoked), so they are
/// taken from the replaced store when it opens.
pub async fn restore(
    from: &Path,
    store: &Path,
    me: &UnitId,
    now_ms: u64,
) -> Result<Restored, StoreError> {
    // Refuse while the node runs: redb holds a lock on an open store.
    let current = if store.exists() {
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
    check_backup(from, me)?;
    let staged = store.with_extension("restoring");
    let result = stage(from, &staged, current.as_ref(), me).await;
    drop(current);
    let users_kept = match result {
        Ok(kept) => kept,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
    };
    let kept = if store.exists() {
        let name = backup_name(now_ms);
        let stamp = name.trim_start_matches("store-").trim_end_matches(".redb");
        let kept = store.with_extension(format!("redb.before-restore-{stamp}"));
        std::fs::rename(store, &kept).map_err(io(format!("renaming {}", store.display())))?;
        Some(kept)
    } else {
        None
    };
    std::fs::rename(&staged, store).map_err(io(format!("renaming {}", staged.display())))?;
    sync_dir(store)?;
    Ok(Restored { kept, users_kept })
}

/// Copy the backup to `staged`, give it `current`'s users, open it as a store and check
/// its views. Returns whether the users were replaced.
async fn stage(
    from: &Path,
    staged: &Path,
    current: Option<&Database>,
    me: &UnitId,
) -> Result<bool, StoreError> {
    std::fs::copy(from, staged).map_err(io(format!(
        "copying {} to {}",
        from.display(),
        staged.display()
    )))?;
    let users_kept = match current {
        Some(current) => {
            let target = Database::open(staged).map_err(db)?;
            let from = current.begin_read().map_err(db)?;
            let to = target.begin_write().map_err(db)?;
            to.delete_table(USERS).map_err(db)?;
            copy(&from, &to, USERS)?;
            to.commit().map_err(db)?;
            true
        }
        None => false,
    };
    let (handle, _reader, thread) = super::open(staged, me.clone())?;
    let diffs = handle.verify_views().await;
    thread.shutdown().await;
    let diffs = diffs?;
    if let Some(first) = diffs.first() {
        return Err(StoreError::Corrupt(format!(
            "the backup's views differ from its documents in {} rows (first: {first})",
            diffs.len()
        )));
    }
    std::fs::File::open(staged)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("flushing {}", staged.display())))?;
    Ok(users_kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use grassroots_schema::{Education, Gender, MemberStatus, NewMember};

    fn u(s: &str) -> UnitId {
        s.parse().unwrap()
    }

    fn sample(name: &str) -> NewMember {
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

    fn names(r: &super::super::StoreReader, me: &UnitId) -> Vec<String> {
        let mut n: Vec<String> = r
            .members(me, false, None, 10_000)
            .unwrap()
            .items
            .into_iter()
            .map(|(_, m)| m.name)
            .collect();
        n.sort();
        n
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
        let writer = {
            let (h, me) = (h.clone(), me.clone());
            tokio::spawn(async move {
                for i in 0..300 {
                    h.create_member(me.clone(), sample(&format!("During {i}")))
                        .await
                        .unwrap();
                }
            })
        };
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
                .join("store-20261127T053007.000Z.redb")
        );
        assert!(info.bytes > 0 && info.documents >= 2, "{info:?}");
        let all = names(&r, &me);
        t.shutdown().await;
        drop((h, r));
        assert_eq!(tables(&info.path), tables(&path));

        let (h, r, t) = super::super::open(&info.path, me.clone()).unwrap();
        assert!(h.verify_views().await.unwrap().is_empty());
        let copied = names(&r, &me);
        assert!(copied.len() >= 50 && copied.iter().all(|n| all.contains(n)));
        t.shutdown().await;
        // The same name twice is refused, not overwritten.
        let (_h, r, t) = super::super::open(&path, me.clone()).unwrap();
        assert!(matches!(
            r.backup(1_795_757_407_000),
            Err(StoreError::Io { .. })
        ));
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
        let backup = r.backup(1_000).unwrap().path;
        h.create_member(me.clone(), sample("Later")).await.unwrap();
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

        let restored = restore(&backup, &path, &me, 2_000).await.unwrap();
        assert!(restored.users_kept);
        let kept = restored.kept.unwrap();
        let (_h, r, t) = super::super::open(&path, me.clone()).unwrap();
        assert_eq!(names(&r, &me), vec!["Kept".to_owned()]);
        t.shutdown().await;
        let (_h, r, t) = super::super::open(&kept, me.clone()).unwrap();
        assert_eq!(names(&r, &me), vec!["Kept".to_owned(), "Later".to_owned()]);
        t.shutdown().await;
        assert!(!path.with_extension("restoring").exists());
    }

    /// A backup that would not leave the margin free on its disk is refused before a byte
    /// is written.
    #[tokio::test]
    async fn a_backup_without_room_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let me = u("c01");
        let (h, r, t) = super::super::open(&dir.path().join("store.redb"), me.clone()).unwrap();
        h.set_profile("City".into(), vec![]).await.unwrap();
        let out = dir.path().join("backups").join(backup_name(5));
        let free = free_bytes(dir.path()).unwrap();
        let err = write_backup(r.db_for_tests(), &out, Some(free)).unwrap_err();
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
        assert!(write_backup(r.db_for_tests(), &out, Some(1)).is_ok());
        t.shutdown().await;
    }

    #[test]
    fn backup_names_are_utc_times_that_sort() {
        assert_eq!(backup_name(0), "store-19700101T000000.000Z.redb");
        // 2026-11-27 05:30:07.250 UTC.
        assert_eq!(
            backup_name(1_795_757_407_250),
            "store-20261127T053007.250Z.redb"
        );
        // 2024-02-29 23:59:59.009 UTC (a leap day).
        assert_eq!(
            backup_name(1_709_251_199_009),
            "store-20240229T235959.009Z.redb"
        );
        assert!(backup_name(1_709_251_199_009) < backup_name(1_709_251_199_010));
        assert!(backup_name(1_709_251_199_999) < backup_name(1_795_757_407_000));
    }

    #[test]
    fn pruning_keeps_the_newest_backups_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        for ms in [3_000u64, 1_000, 2_000, 4_000] {
            std::fs::write(dir.path().join(backup_name(ms * 86_400)), b"x").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"keep me").unwrap();
        assert_eq!(prune_backups(dir.path(), 2).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "notes.txt".to_owned(),
                backup_name(3_000 * 86_400),
                backup_name(4_000 * 86_400)
            ]
        );
        assert_eq!(prune_backups(&dir.path().join("none"), 2).unwrap(), 0);
    }
}
