//! [`Node`]: one running node, wiring identity, store and network.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use grassroots_schema::UnitId;
use quinn::Endpoint;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::{self, LinkConfig, NetError, ParentAddr};
use crate::pki::{Identity, PkiError};
use crate::store::{
    self, StoreError, StoreHandle, StoreOptions, StoreReader, StoreThread, WriteError,
};

/// What a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Folder holding `pki/` (the identity) and `store.redb`.
    pub data_dir: PathBuf,
    /// Display name of the unit.
    pub name: String,
    /// UDP address for QUIC.
    pub quic_listen: SocketAddr,
    /// Where the parent listens (required unless this is the root).
    pub parent_addr: Option<ParentAddr>,
    /// Registered children: the only units accepted from below.
    pub children: Vec<UnitId>,
    /// Link timing.
    pub link: LinkConfig,
    /// Store memory settings.
    pub store: StoreOptions,
    /// Periodic backups of the store.
    pub backups: BackupPolicy,
}

/// Turn transparent huge pages off for this process and those it starts (Linux; elsewhere
/// nothing). Called first in `main`, before the allocator has touched much memory.
///
/// mimalloc asks the kernel for huge pages for its arenas, and the first touch of one then
/// zeroes 2 MiB. A node's allocations are small and short-lived (a document loaded, its
/// views read, then dropped), so most of each huge page is zeroed for nothing and stays
/// resident. With huge pages a node holding 5,000 villages took 115 MB against 94 MB
/// without, and a full sync of 500 villages reached the city in 1.00 s against 0.82 s
/// (docs/benchmarks.md, twenty-seventh session). mimalloc is also built not to ask for
/// them (its `no_thp` feature), which covers what it maps before `main` runs.
pub fn no_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}

/// When and where a running node copies its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPolicy {
    /// Time between backups (none: only on request); the first is due that long after the
    /// newest one in the folder, but not before a settling delay after start.
    pub every: Option<Duration>,
    /// Backups kept in the folder; older ones are deleted after each new one.
    pub keep: usize,
    /// The folder (default: `backups/` in the data folder, on the store's own disk).
    pub dir: Option<PathBuf>,
}

impl Default for BackupPolicy {
    /// Daily, three of them, beside the store.
    fn default() -> Self {
        BackupPolicy {
            every: Some(Duration::from_secs(24 * 3600)),
            keep: 3,
            dir: None,
        }
    }
}

/// When the first periodic backup after start is due: `every` after the newest one there
/// is, but not before a settling delay (at most 10 minutes) after start.
fn first_backup_in(every: Duration, since_newest: Option<Duration>) -> Duration {
    let settle = every.min(Duration::from_secs(600));
    match since_newest {
        Some(age) => every.saturating_sub(age).max(settle),
        None => settle,
    }
}

/// Take a backup every `policy.every` until cancelled, and prune to `policy.keep`. The
/// first is due `every` after the newest backup already in the folder (a node restarted
/// more often than `every` still backs up), and not before a settling delay after start. A
/// failure (a full disk) is logged and the node goes on; the next interval tries again.
async fn backup_loop(reader: StoreReader, policy: BackupPolicy, cancel: CancellationToken) {
    // A zero interval would make a busy loop (and tokio's interval refuses it).
    let Some(every) = policy.every.filter(|e| !e.is_zero()) else {
        return;
    };
    if reader.backup_dir().is_none() {
        return;
    }
    // At start the log's newest is the newest file in the folder.
    let since_newest = reader
        .backup_log()
        .last
        .map(|(at, _, _)| Duration::from_millis(crate::status::now_ms().saturating_sub(at)));
    let first = first_backup_in(every, since_newest);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + first, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let r = reader.clone();
        // The reader prunes to the backups kept (`with_backups_kept`).
        let done = tokio::task::spawn_blocking(move || r.backup(crate::status::now_ms())).await;
        match done {
            Ok(Ok(info)) => tracing::info!(
                file = %info.path.display(),
                bytes = info.bytes,
                documents = info.documents,
                took_ms = info.took_ms,
                "store backed up"
            ),
            Ok(Err(e)) => tracing::warn!("backup failed: {e}"),
            Err(e) => tracing::warn!("backup task failed: {e}"),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The identity folder is missing or bad.
    #[error("identity: {0}")]
    Pki(#[from] PkiError),
    /// The store failed to open.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Writing the profile failed.
    #[error("profile: {0}")]
    Profile(#[from] WriteError),
    /// The endpoint failed.
    #[error("network: {0}")]
    Net(#[from] NetError),
    /// A non-root node without a parent address.
    #[error("{0} has a parent but no parent address is configured")]
    NoParentAddress(UnitId),
    /// A configured child is not a child of this unit.
    #[error("{child} is not a child of {unit}")]
    NotAChild {
        /// This node.
        unit: UnitId,
        /// The configured child.
        child: UnitId,
    },
}

/// A running node.
///
/// Lifecycle: [`Node::start`] opens the store, binds QUIC, and spawns the accept loop and
/// (below the root) the dial loop onto its own task tracker. [`Node::shutdown`] cancels them,
/// waits for every link to end (each persists its sync states), closes the endpoint and
/// stops the store actor. Dropping a `Node` without shutdown cancels the tasks but does not
/// wait for them.
#[derive(Debug)]
pub struct Node {
    identity: Arc<Identity>,
    store: StoreHandle,
    reader: StoreReader,
    store_thread: Option<StoreThread>,
    endpoint: Endpoint,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// Check that `unit`'s configured `children` are its children and that it has a parent's
/// address when it has a parent (`has_parent_addr`): what a start refuses first, and what
/// `grassroots node check` reports.
pub fn check_place(
    unit: &UnitId,
    children: &[UnitId],
    has_parent_addr: bool,
) -> Result<(), NodeError> {
    if let Some(child) = children.iter().find(|c| c.parent().as_ref() != Some(unit)) {
        return Err(NodeError::NotAChild {
            unit: unit.clone(),
            child: child.clone(),
        });
    }
    if unit.parent().is_some() && !has_parent_addr {
        return Err(NodeError::NoParentAddress(unit.clone()));
    }
    Ok(())
}

impl Node {
    /// Start a node from its data folder.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let identity = Arc::new(Identity::load(&cfg.data_dir.join("pki"))?);
        let unit = identity.unit.clone();
        check_place(&unit, &cfg.children, cfg.parent_addr.is_some())?;
        let parent = unit.parent();
        let (store, reader, store_thread) =
            store::open_with(&cfg.data_dir.join("store.redb"), unit.clone(), cfg.store)?;
        let reader = match &cfg.backups.dir {
            Some(dir) => reader.with_backup_dir(cfg.data_dir.join(dir)),
            None => reader,
        }
        .with_backups_kept(cfg.backups.keep);
        store
            .set_profile(cfg.name.clone(), cfg.children.clone())
            .await?;
        store
            .expect_peers(parent.iter().chain(&cfg.children).cloned().collect())
            .await;
        let endpoint = net::endpoint(
            &identity,
            cfg.quic_listen,
            &cfg.link,
            Some(&cfg.data_dir.join("quic-tokens")),
        )?;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let ctx = net::LinkContext {
            identity: identity.clone(),
            store: store.clone(),
            reader: reader.clone(),
            cfg: cfg.link.clone(),
            cancel: cancel.clone(),
        };
        tasks.spawn(net::accept_loop(
            endpoint.clone(),
            ctx.clone(),
            Arc::new(cfg.children.clone()),
            tasks.clone(),
        ));
        tasks.spawn(backup_loop(
            reader.clone(),
            cfg.backups.clone(),
            cancel.clone(),
        ));
        if let (Some(parent), Some(addr)) = (parent, cfg.parent_addr) {
            tasks.spawn(net::dial_loop(endpoint.clone(), ctx, parent, addr));
        }
        tracing::info!(
            %unit,
            software = crate::net::SOFTWARE,
            quic = ?endpoint.local_addr().ok(),
            "node started"
        );
        Ok(Node {
            identity,
            store,
            reader,
            store_thread: Some(store_thread),
            endpoint,
            cancel,
            tasks,
        })
    }

    /// The node's unit.
    pub fn unit(&self) -> &UnitId {
        &self.identity.unit
    }

    /// The node's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A handle for writes.
    pub fn store(&self) -> StoreHandle {
        self.store.clone()
    }

    /// A reader of the views.
    pub fn reader(&self) -> StoreReader {
        self.reader.clone()
    }

    /// The bound QUIC address.
    pub fn quic_addr(&self) -> SocketAddr {
        // local_addr only fails for a closed socket; the endpoint lives as long as the node.
        self.endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Stop in order: links (each persists its sync states), endpoint, store.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        self.endpoint.close(net::close::BYE, b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        if let Some(t) = self.store_thread.take() {
            t.shutdown().await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_backup_follows_the_newest_one() {
        let (h, m) = (Duration::from_secs(3600), Duration::from_secs(60));
        let day = 24 * h;
        // None yet, or overdue (a node restarted more often than a day): after settling.
        assert_eq!(first_backup_in(day, None), 10 * m);
        assert_eq!(first_backup_in(day, Some(30 * h)), 10 * m);
        // The last one two hours ago: 22 hours on.
        assert_eq!(first_backup_in(day, Some(2 * h)), 22 * h);
        // A short interval settles for the interval itself.
        assert_eq!(first_backup_in(m, None), m);
    }

    /// The switch the binary flips first is on for the process afterwards (here, the test
    /// process: it only makes its later allocations use small pages).
    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_off_once_turned_off() {
        no_transparent_huge_pages().unwrap();
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
    }

    /// The periodic backups keep the newest `keep` copies, each a store that opens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn periodic_backups_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let me: UnitId = "c01".parse().unwrap();
        let (h, r, t) = store::open(&dir.path().join("store.redb"), me.clone()).unwrap();
        h.set_profile("City".into(), vec![]).await.unwrap();
        let cancel = CancellationToken::new();
        let policy = BackupPolicy {
            every: Some(Duration::from_millis(100)),
            keep: 2,
            dir: None,
        };
        let r = r.with_backups_kept(policy.keep);
        let backups = tokio::spawn(backup_loop(r.clone(), policy, cancel.clone()));
        // A second at 100 ms makes several backups, pruned to the newest two; a slow machine
        // gets up to 20 s to write two.
        let dir = dir.path().join("backups");
        let start = std::time::Instant::now();
        // Every backup seen while they are made (named by their time, so they sort by it).
        let mut seen = std::collections::BTreeSet::new();
        let names = |dir: &std::path::Path| -> Vec<String> {
            std::fs::read_dir(dir).map_or_else(
                |_| Vec::new(),
                |d| {
                    d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .filter(|n| n.ends_with(".redb"))
                        .collect()
                },
            )
        };
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            seen.extend(names(&dir));
            let waited = start.elapsed();
            if (seen.len() >= 3 && waited > Duration::from_secs(1))
                || waited > Duration::from_secs(20)
            {
                break;
            }
        }
        cancel.cancel();
        backups.await.unwrap();
        t.shutdown().await;
        drop((h, r));
        seen.extend(names(&dir));
        assert!(seen.len() >= 3, "fewer than three backups made: {seen:?}");
        // What is left is the newest two of all made.
        let mut left = names(&dir);
        left.sort();
        let newest: Vec<String> = seen.iter().rev().take(2).rev().cloned().collect();
        assert_eq!(left, newest, "made: {seen:?}");
        let files: Vec<PathBuf> = left.iter().map(|n| dir.join(n)).collect();
        for f in files {
            let (_h, r, t) = store::open(&f, me.clone()).unwrap();
            assert_eq!(r.unit(&me).unwrap().unwrap().name, "City");
            t.shutdown().await;
        }
    }
}
