//! A whole federation on one machine: every unit a real node with its own store, QUIC port
//! and GraphQL port on 127.0.0.1, its own certificates, and a token per role. Used by the
//! demo and the integration tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use grassroots_node::auth::{new_token, token_hash};
use grassroots_node::{Identity, LinkConfig, NodeConfig};
use grassroots_schema::{Role, UnitId};

use crate::launch::RunningNode;

/// One unit of the tree to start.
#[derive(Debug, Clone)]
pub struct UnitSpec {
    /// Path id.
    pub id: UnitId,
    /// Display name.
    pub name: String,
}

/// Decides the address a child dials for its parent; tests put a relay in between.
pub type Via = Box<dyn FnMut(&UnitId, SocketAddr) -> SocketAddr + Send>;

/// How to start a federation.
pub struct FederationOptions {
    /// Folder for every node's data (`<dir>/<unit path>/`).
    pub dir: PathBuf,
    /// DNS suffix of the deployment.
    pub deployment: String,
    /// Link timing for every node not in `links`.
    pub link: LinkConfig,
    /// Link timing of particular nodes (a township set as its example, say).
    pub links: BTreeMap<UnitId, LinkConfig>,
    /// Parent address rewriting (relays).
    pub via: Option<Via>,
}

/// A running federation.
pub struct Federation {
    /// Running nodes by unit.
    pub nodes: BTreeMap<UnitId, RunningNode>,
    /// Tokens by unit and role, each created at that unit's own node.
    pub tokens: BTreeMap<UnitId, BTreeMap<Role, String>>,
    /// The tree.
    pub units: Vec<UnitSpec>,
    configs: BTreeMap<UnitId, (NodeConfig, SocketAddr)>,
}

fn unit_dir(root: &Path, unit: &UnitId) -> PathBuf {
    root.join(unit.as_str().replace('/', "_"))
}

fn children_of(units: &[UnitSpec], parent: &UnitId) -> Vec<UnitId> {
    units
        .iter()
        .filter(|u| u.id.parent().as_ref() == Some(parent))
        .map(|u| u.id.clone())
        .collect()
}

impl Federation {
    /// Issue every identity, start every node (parents first) and create the tokens.
    pub async fn start(
        units: Vec<UnitSpec>,
        mut opts: FederationOptions,
    ) -> anyhow::Result<Federation> {
        let mut sorted = units.clone();
        sorted.sort_by_key(|u| (u.id.level(), u.id.clone()));
        let Some(root) = sorted.first().map(|u| u.id.clone()) else {
            bail!("empty tree");
        };
        if root.parent().is_some() {
            bail!("the first unit must be a root, got {root}");
        }
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("creating {}", opts.dir.display()))?;
        let mut identities: BTreeMap<UnitId, Identity> = BTreeMap::new();
        identities.insert(
            root.clone(),
            Identity::create_root(&root, &opts.deployment)?,
        );
        let mut fed = Federation {
            nodes: BTreeMap::new(),
            tokens: BTreeMap::new(),
            units: sorted.clone(),
            configs: BTreeMap::new(),
        };
        let localhost = SocketAddr::from(([127, 0, 0, 1], 0));
        for spec in &sorted {
            let id = spec.id.clone();
            let identity = match identities.get(&id) {
                Some(i) => i.clone(),
                None => {
                    let parent = id.parent().context("non-root without parent")?;
                    let p = identities
                        .get(&parent)
                        .with_context(|| format!("{id} listed before its parent"))?;
                    let i = p.issue_child(&id)?;
                    identities.insert(id.clone(), i.clone());
                    i
                }
            };
            let dir = unit_dir(&opts.dir, &id);
            identity.save(&dir.join("pki"))?;
            let parent_addr = match id.parent() {
                Some(p) => {
                    let addr = fed
                        .nodes
                        .get(&p)
                        .with_context(|| format!("parent of {id} not running"))?
                        .node
                        .quic_addr();
                    Some(match opts.via.as_mut() {
                        Some(via) => via(&id, addr),
                        None => addr,
                    })
                }
                None => None,
            };
            let cfg = NodeConfig {
                data_dir: dir,
                name: spec.name.clone(),
                quic_listen: localhost,
                parent_addr: parent_addr.map(Into::into),
                children: children_of(&sorted, &id),
                link: opts.links.get(&id).unwrap_or(&opts.link).clone(),
                store: grassroots_node::store::StoreOptions::default(),
                backups: grassroots_node::BackupPolicy::default(),
            };
            let running = RunningNode::start(cfg.clone(), localhost)
                .await
                .with_context(|| format!("starting {id}"))?;
            let mut tokens = BTreeMap::new();
            for role in Role::ALL {
                let token = new_token()?;
                running
                    .node
                    .store()
                    .add_user(token_hash(&token), id.clone(), role)
                    .await?;
                tokens.insert(role, token);
            }
            // Restarts reuse the same ports so children and relays keep their addresses.
            let pinned = NodeConfig {
                quic_listen: running.node.quic_addr(),
                ..cfg
            };
            fed.configs.insert(id.clone(), (pinned, running.http_addr));
            fed.tokens.insert(id.clone(), tokens);
            fed.nodes.insert(id, running);
        }
        Ok(fed)
    }

    /// The running node of a unit.
    pub fn node(&self, unit: &UnitId) -> anyhow::Result<&RunningNode> {
        self.nodes
            .get(unit)
            .with_context(|| format!("{unit} is not running"))
    }

    /// The `/graphql` URL of a unit's node.
    pub fn graphql_url(&self, unit: &UnitId) -> anyhow::Result<String> {
        Ok(self.node(unit)?.graphql_url())
    }

    /// A token for (unit, role), created at that unit's node.
    pub fn token(&self, unit: &UnitId, role: Role) -> anyhow::Result<&str> {
        self.tokens
            .get(unit)
            .and_then(|t| t.get(&role))
            .map(String::as_str)
            .with_context(|| format!("no {role} token for {unit}"))
    }

    /// Stop one node (its data stays).
    pub async fn stop(&mut self, unit: &UnitId) -> anyhow::Result<()> {
        let n = self
            .nodes
            .remove(unit)
            .with_context(|| format!("{unit} is not running"))?;
        n.shutdown().await;
        Ok(())
    }

    /// The configuration a stopped node restarts with.
    fn stopped_config(&mut self, unit: &UnitId) -> anyhow::Result<&mut NodeConfig> {
        if self.nodes.contains_key(unit) {
            bail!("{unit} is running: stop it first");
        }
        let (cfg, _) = self
            .configs
            .get_mut(unit)
            .with_context(|| format!("unknown unit {unit}"))?;
        Ok(cfg)
    }

    /// Give a stopped node other link settings, for its next [`Federation::restart`].
    pub fn set_link(&mut self, unit: &UnitId, link: LinkConfig) -> anyhow::Result<()> {
        self.stopped_config(unit)?.link = link;
        Ok(())
    }

    /// Give a stopped node another parent address, for its next [`Federation::restart`].
    pub fn set_parent_addr(
        &mut self,
        unit: &UnitId,
        addr: grassroots_node::net::ParentAddr,
    ) -> anyhow::Result<()> {
        self.stopped_config(unit)?.parent_addr = Some(addr);
        Ok(())
    }

    /// Start a stopped node again on the same ports, from its stored data.
    pub async fn restart(&mut self, unit: &UnitId) -> anyhow::Result<()> {
        let (cfg, http) = self
            .configs
            .get(unit)
            .cloned()
            .with_context(|| format!("unknown unit {unit}"))?;
        // quinn's endpoint driver may still hold the old UDP socket after shutdown, until
        // its connections have drained (three probe timeouts, seconds on a lossy relay: a
        // CI run once saw more than 5 s); a restarted process gets its port back from the OS
        // at exit.
        let mut attempts = 0;
        let running = loop {
            match RunningNode::start(cfg.clone(), http).await {
                Ok(r) => break r,
                Err(e) if attempts < 300 && format!("{e:#}").contains("in use") => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.nodes.insert(unit.clone(), running);
        Ok(())
    }

    /// Stop every node, leaves first.
    pub async fn shutdown(mut self) {
        let mut ids: Vec<UnitId> = self.nodes.keys().cloned().collect();
        ids.sort_by_key(|u| std::cmp::Reverse(u.level()));
        for id in ids {
            if let Some(n) = self.nodes.remove(&id) {
                n.shutdown().await;
            }
        }
    }
}
