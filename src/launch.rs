//! Start one node together with its GraphQL gateway.

use std::net::SocketAddr;

use anyhow::Context as _;
use grassroots_gateway::{Backend, GatewayOptions, serve_with};
use grassroots_node::{Node, NodeConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A node and the HTTP server of its gateway.
///
/// Lifecycle: [`RunningNode::start`]; [`RunningNode::shutdown`] stops the HTTP server
/// (gracefully), then the node.
#[derive(Debug)]
pub struct RunningNode {
    /// The node.
    pub node: Node,
    /// Where `/graphql` listens.
    pub http_addr: SocketAddr,
    http_cancel: CancellationToken,
    http_task: JoinHandle<()>,
}

impl RunningNode {
    /// Start the node from `cfg` and serve its gateway on `http_listen` (default options).
    pub async fn start(cfg: NodeConfig, http_listen: SocketAddr) -> anyhow::Result<RunningNode> {
        Self::start_with(cfg, http_listen, GatewayOptions::default()).await
    }

    /// Start the node from `cfg` and serve its gateway on `http_listen` with `options`.
    pub async fn start_with(
        cfg: NodeConfig,
        http_listen: SocketAddr,
        options: GatewayOptions,
    ) -> anyhow::Result<RunningNode> {
        let own_nodes = cfg.children.clone();
        let node = Node::start(cfg).await.context("starting node")?;
        let backend = Backend {
            node_unit: node.unit().clone(),
            store: node.store(),
            reader: node.reader(),
            own_nodes,
        };
        let listener = tokio::net::TcpListener::bind(http_listen)
            .await
            .with_context(|| format!("binding GraphQL on {http_listen}"))?;
        let http_addr = listener.local_addr()?;
        let http_cancel = CancellationToken::new();
        let stop = http_cancel.clone();
        let http_task = tokio::spawn(async move {
            let shutdown = async move { stop.cancelled().await };
            let served = serve_with(listener, backend, options, shutdown).await;
            if let Err(e) = served {
                tracing::error!("gateway server failed: {e}");
            }
        });
        Ok(RunningNode {
            node,
            http_addr,
            http_cancel,
            http_task,
        })
    }

    /// The `/graphql` URL.
    pub fn graphql_url(&self) -> String {
        format!("http://{}/graphql", self.http_addr)
    }

    /// Stop serving, then stop the node.
    pub async fn shutdown(self) {
        self.http_cancel.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.http_task).await;
        self.node.shutdown().await;
    }
}
