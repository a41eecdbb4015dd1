//! [`Node`]: one running node, wiring identity, store and network.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use grassroots_schema::UnitId;
use quinn::Endpoint;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::{self, LinkConfig, NetError};
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
    pub parent_addr: Option<SocketAddr>,
    /// Registered children: the only units accepted from below.
    pub children: Vec<UnitId>,
    /// Link timing.
    pub link: LinkConfig,
    /// Store memory settings.
    pub store: StoreOptions,
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

impl Node {
    /// Start a node from its data folder.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let identity = Arc::new(Identity::load(&cfg.data_dir.join("pki"))?);
        let unit = identity.unit.clone();
        if let Some(child) = cfg
            .children
            .iter()
            .find(|c| c.parent().as_ref() != Some(&unit))
        {
            return Err(NodeError::NotAChild {
                unit,
                child: child.clone(),
            });
        }
        let parent = unit.parent();
        if parent.is_some() && cfg.parent_addr.is_none() {
            return Err(NodeError::NoParentAddress(unit));
        }
        let (store, reader, store_thread) =
            store::open_with(&cfg.data_dir.join("store.redb"), unit.clone(), cfg.store)?;
        store
            .set_profile(cfg.name.clone(), cfg.children.clone())
            .await?;
        let endpoint = net::endpoint(&identity, cfg.quic_listen, &cfg.link)?;
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
        if let (Some(parent), Some(addr)) = (parent, cfg.parent_addr) {
            tasks.spawn(net::dial_loop(endpoint.clone(), ctx, parent, addr));
        }
        tracing::info!(%unit, quic = ?endpoint.local_addr().ok(), "node started");
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
