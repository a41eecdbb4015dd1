//! The `grassroots` binary: parse the command line, build components, run, map errors to
//! exit codes. Logic lives in the libraries.

/// mimalloc rather than the system allocator: a GraphQL request allocates hundreds of small
/// values, and with glibc's malloc a city's indicator query ran at 0.46x the trivial query's
/// rate; with mimalloc, 0.53-0.56x, and store ingest rose by a quarter. Resident memory of a
/// node holding 5,000 villages doubles (14 to 28 MB); see docs/benchmarks.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use grassroots::demo;
use grassroots::federation::{Federation, FederationOptions};
use grassroots::launch::RunningNode;
use grassroots_node::auth::{new_token, token_hash};
use grassroots_node::pki::{PendingIdentity, REQUEST_FILE as PKI_REQUEST_FILE, refuse_held_keys};
use grassroots_node::store::StoreOptions;
use grassroots_node::store::backup::{self, UsersFrom};
use grassroots_node::{BackupPolicy, Identity, LinkConfig, NodeConfig};
use grassroots_schema::{Role, UnitId};
use serde::Deserialize;

/// grassroots: every level of an administrative tree runs its own node, works offline, and
/// syncs with the levels above and below it over QUIC; each node serves GraphQL.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Certificates: create a deployment's root, issue a child's identity.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Run one node.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Manage the tokens of a (stopped) node.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Check or rebuild a (stopped) node's query views from its documents.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Show a running node's subtree: links, bytes, documents pending, last heard from.
    Status {
        /// The node's GraphQL URL, e.g. http://127.0.0.1:8400/graphql.
        #[arg(long)]
        url: String,
        /// A token of the node's unit (viewer or above).
        #[arg(long, env = "GRASSROOTS_TOKEN")]
        token: String,
        /// Redraw every second (progress while a catch-up runs) until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Start a whole demo federation on this machine (19 nodes on 127.0.0.1) and keep it
    /// running until Ctrl-C.
    Demo {
        /// Folder for the nodes' data and demo.json (replaced if it holds an earlier demo).
        #[arg(long, default_value = "grassroots-demo")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create the root CA of a new deployment and the root node's identity in DIR/pki.
    Init {
        /// The root node's data folder.
        #[arg(long)]
        dir: PathBuf,
        /// The root unit's id, e.g. `c01`.
        #[arg(long)]
        unit: UnitId,
        /// DNS suffix naming the deployment, e.g. `linhe.grassroots`.
        #[arg(long)]
        deployment: String,
    },
    /// Issue the identity of a child unit with this node's CA, keys included (writes
    /// CHILD_DIR/pki; hand that folder to the child's operator over a trusted channel).
    /// `pki request` / `sign` / `accept` do the same without the keys travelling.
    Issue {
        /// The issuing (parent) node's data folder.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The child unit's id, e.g. `c01/k03`.
        #[arg(long)]
        unit: UnitId,
        /// The child's data folder.
        #[arg(long)]
        dir: PathBuf,
    },
    /// At a new child: make its keys in DIR/pki and write the request its parent signs
    /// (DIR/pki/request.pem). The private keys never leave DIR.
    Request {
        /// The child's data folder.
        #[arg(long)]
        dir: PathBuf,
        /// The child's unit id, e.g. `c01/k03`.
        #[arg(long)]
        unit: UnitId,
        /// The deployment's DNS suffix, as the parent's operator gives it.
        #[arg(long)]
        deployment: String,
    },
    /// At the parent: sign a child's request with this node's CA (every field of the
    /// certificates is set here; only the public keys come from the request).
    Sign {
        /// The issuing (parent) node's data folder.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The child unit the request must name, e.g. `c01/k03`.
        #[arg(long)]
        unit: UnitId,
        /// The child's request.pem.
        #[arg(long)]
        request: PathBuf,
        /// Where to write the answer to hand back to the child.
        #[arg(long)]
        out: PathBuf,
    },
    /// At the child: check the parent's answer against DIR's keys and the root, and
    /// complete DIR/pki.
    Accept {
        /// The child's data folder (where `pki request` ran).
        #[arg(long)]
        dir: PathBuf,
        /// The answer written by `pki sign`.
        #[arg(long)]
        answer: PathBuf,
        /// The deployment's root fingerprint, as the parent's operator gives it over
        /// another channel than the answer (`pki sign` and `pki fingerprint --root` print
        /// it): an answer under any other root is refused.
        #[arg(long)]
        root_fingerprint: String,
    },
    /// Print the SHA-256 fingerprint of a node's certificate (what a revocation names).
    Fingerprint {
        /// The node's data folder.
        #[arg(long)]
        dir: PathBuf,
        /// The deployment's root certificate's instead (what `pki accept` checks).
        #[arg(long)]
        root: bool,
        /// The node's CA certificate's instead (revoked with the node's certificate when
        /// its machine is lost or stolen).
        #[arg(long, conflicts_with = "root")]
        ca: bool,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Run the node whose data folder is DIR (reads DIR/node.toml; see deploy/).
    Run {
        /// The node's data folder.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Check the node whose data folder is DIR without starting it: node.toml, the
    /// identity, its children and parent, and its store; print what it found, or why it
    /// would not start (under systemd a node that does not start is restarted every 10 s).
    Check {
        /// The node's data folder.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Compare the views with a rebuild from the documents; exit 1 on differences.
    Verify {
        /// The node's data folder.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Rebuild the views from the documents.
    Rebuild {
        /// The node's data folder.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Copy a stopped node's store into a backup file (a running node: its `backupStore`
    /// mutation, or `backup_every_hours` in node.toml).
    Backup {
        /// The node's data folder.
        #[arg(long)]
        dir: PathBuf,
        /// The backup file (default: store-<unit>-<UTC time>.redb in node.toml's backup_dir,
        /// or DIR/backups; the folder is then pruned to backups_kept).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Put a backup in place of a stopped node's store. The backup is checked first (a
    /// store of this node's unit whose views match its documents); the replaced store is
    /// kept as store.redb.before-restore-<time>. At its next sync the node gets back from
    /// its parent and children what they hold of what it wrote after the backup.
    Restore {
        /// The node's data folder.
        #[arg(long)]
        dir: PathBuf,
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// Keep the backup's users (tokens) besides those of the store replaced, which
        /// otherwise replace them: for a store made after the disk was lost (an admin's
        /// first token), not one that is only newer (a token revoked since would come back).
        #[arg(long)]
        keep_backup_users: bool,
    },
    /// Have a stopped node take back from its children, for DAYS days, the changes made in
    /// its unit's name or above it, which it otherwise refuses from a child as forgeries:
    /// after its disk was lost with no backup to restore (a restore does this by itself for
    /// 14 days), or when a child that held them came online later than that. While the
    /// window is open a child could pass off its own changes as this node's: keep it short.
    /// Run as the node's user or as root (a store it makes is given to the folder's owner).
    TakeBack {
        /// The node's data folder.
        #[arg(long)]
        dir: PathBuf,
        /// How many days from now (0 closes the window; at most 90).
        #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u64).range(0..=90))]
        days: u64,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a token bound to a unit and role and print it (shown once, stored hashed).
    Add {
        /// The node's data folder (the node must be stopped).
        #[arg(long)]
        dir: PathBuf,
        /// The unit the token acts for (this node's unit or one below it).
        #[arg(long)]
        unit: UnitId,
        /// viewer, clerk, supervisor or admin.
        #[arg(long)]
        role: Role,
        /// Who the token is for; named in the records they write (default: a label from
        /// the token).
        #[arg(long)]
        name: Option<String>,
    },
}

/// `node.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeToml {
    name: String,
    quic_listen: SocketAddr,
    graphql_listen: SocketAddr,
    /// The parent's address and port, or `host:port` (looked up again at every dial).
    parent_addr: Option<String>,
    #[serde(default)]
    children: Vec<String>,
    keep_alive_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    /// QUIC path MTU discovery (on unless set to false).
    mtu_discovery: Option<bool>,
    /// The round trip QUIC assumes on a new link before it has measured one (default 333;
    /// 10 to 1,000).
    initial_rtt_ms: Option<u64>,
    /// How many times each QUIC handshake datagram is sent (default 1; at most 3).
    handshake_copies: Option<u8>,
    /// Resume links with TLS 1.3 0-RTT (default true).
    zero_rtt: Option<bool>,
    /// Memory for loaded automerge documents (MiB); the least recently used beyond it are
    /// evicted and read back from the store when needed.
    doc_memory_mb: Option<u64>,
    /// Minutes east of UTC of the day the units keep (480 in China; default 0, UTC): what
    /// "today" is for overdue complaints, deadlines and the periods ended.
    utc_offset_minutes: Option<i32>,
    /// Answer GraphQL introspection (`__schema`, `__type`); GraphiQL needs it. Default true.
    introspection: Option<bool>,
    /// Hours between backups of the store into `backups/` (default 24; 0: none).
    backup_every_hours: Option<u64>,
    /// Backups kept (default 3; at least 1).
    backups_kept: Option<usize>,
    /// Where backups go (default `backups/` in the data folder; relative to it).
    backup_dir: Option<PathBuf>,
}

impl NodeToml {
    /// The registered children.
    fn children(&self) -> anyhow::Result<Vec<UnitId>> {
        self.children
            .iter()
            .map(|c| c.parse::<UnitId>())
            .collect::<Result<Vec<_>, _>>()
            .context("children")
    }

    /// `parent_addr`, checked (a host name is looked up at each dial, not here).
    fn parent(&self) -> anyhow::Result<Option<grassroots_node::net::ParentAddr>> {
        self.parent_addr
            .as_deref()
            .map(str::parse)
            .transpose()
            .context("parent_addr")
    }

    /// The store's memory settings, checked: 0 would evict every document after each
    /// commit, and a shift past 64 bits would wrap to a small budget.
    fn store_options(&self) -> anyhow::Result<StoreOptions> {
        match self.doc_memory_mb {
            None => Ok(StoreOptions::default()),
            Some(mb @ 8..=65_536) => Ok(StoreOptions {
                doc_memory_budget: mb << 20,
                ..StoreOptions::default()
            }),
            Some(mb) => bail!("doc_memory_mb = {mb}: between 8 and 65536"),
        }
    }

    /// The units' offset from UTC in minutes, checked (from -12 h to +14 h, as time zones
    /// are).
    fn utc_offset(&self) -> anyhow::Result<i32> {
        match self.utc_offset_minutes {
            None => Ok(0),
            Some(m @ -720..=840) => Ok(m),
            Some(m) => bail!("utc_offset_minutes = {m}: between -720 and 840"),
        }
    }

    /// The backup settings, checked.
    fn backups(&self) -> anyhow::Result<BackupPolicy> {
        let mut policy = BackupPolicy::default();
        match self.backup_every_hours {
            Some(0) => policy.every = None,
            Some(h) if h <= 24 * 366 => policy.every = Some(Duration::from_secs(h * 3600)),
            Some(h) => bail!("backup_every_hours = {h}: at most a year (8784)"),
            None => {}
        }
        match self.backups_kept {
            Some(0) => bail!("backups_kept = 0: keep at least one (or set backup_every_hours = 0)"),
            Some(k) => policy.keep = k,
            None => {}
        }
        policy.dir.clone_from(&self.backup_dir);
        Ok(policy)
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> anyhow::Result<()> {
    // A kernel without the switch leaves huge pages on: slower and larger, nothing worse.
    let _ = grassroots_node::runtime::no_transparent_huge_pages();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(run(cli));
    // A blocking task still running (a backup copying a large store to a slow disk) must
    // not hold the process once the node has stopped and its store is persisted: dropping
    // the runtime would wait for it, past systemd's stop timeout. Its partial file is
    // removed by the next backup.
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Pki { command } => {
            init_tracing("warn");
            pki(command)
        }
        Command::Node {
            command: NodeCommand::Run { dir },
        } => {
            init_tracing("info");
            node_run(&dir).await
        }
        Command::Node {
            command: NodeCommand::Check { dir },
        } => {
            init_tracing("warn");
            print!("{}", node_check(&dir)?);
            Ok(())
        }
        Command::User {
            command:
                UserCommand::Add {
                    dir,
                    unit,
                    role,
                    name,
                },
        } => {
            init_tracing("warn");
            user_add(&dir, unit, role, name).await
        }
        Command::Demo { dir } => {
            init_tracing("warn");
            run_demo(dir).await
        }
        Command::Store { command } => {
            init_tracing("warn");
            store_command(command).await
        }
        Command::Status { url, token, watch } => {
            init_tracing("warn");
            status(&url, &token, watch).await
        }
    }
}

fn pki(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init {
            dir,
            unit,
            deployment,
        } => {
            if unit.parent().is_some() {
                bail!("{unit} is not a root unit: `pki init` is for the top of the tree");
            }
            refuse_held_keys(&dir.join("pki"))?;
            let id = Identity::create_root(&unit, &deployment)?;
            id.save(&dir.join("pki"))?;
            println!(
                "root CA and identity of {unit} written to {}",
                dir.join("pki").display()
            );
            println!("root fingerprint: {}", id.root_fingerprint());
        }
        PkiCommand::Issue { ca_dir, unit, dir } => {
            refuse_held_keys(&dir.join("pki"))?;
            let parent = Identity::load(&ca_dir.join("pki"))?;
            let child = parent.issue_child(&unit)?;
            child.save(&dir.join("pki"))?;
            println!(
                "identity of {unit} issued by {} written to {}",
                parent.unit,
                dir.join("pki").display()
            );
            println!(
                "add \"{unit}\" to the children of {} in its node.toml",
                parent.unit
            );
            println!("certificate fingerprint: {}", child.fingerprint());
            print_ca_fingerprint(&child);
        }
        PkiCommand::Request {
            dir,
            unit,
            deployment,
        } => {
            let pki = dir.join("pki");
            PendingIdentity::create(&unit, &deployment)?.save(&pki)?;
            println!(
                "keys of {unit} made in {}; send {} to the parent's operator",
                pki.display(),
                pki.join(PKI_REQUEST_FILE).display()
            );
        }
        PkiCommand::Sign {
            ca_dir,
            unit,
            request,
            out,
        } => {
            let parent = Identity::load(&ca_dir.join("pki"))?;
            let text = std::fs::read_to_string(&request)
                .with_context(|| format!("reading {}", request.display()))?;
            let answer = parent.sign_request(&unit, &text)?;
            let (node_fp, ca_fp) = Identity::answer_fingerprints(&answer)?;
            std::fs::write(&out, answer).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "certificates of {unit} signed by {} written to {}; hand it back to the \
                 child's operator",
                parent.unit,
                out.display()
            );
            println!(
                "add \"{unit}\" to the children of {} in its node.toml",
                parent.unit
            );
            println!(
                "root fingerprint (give it to the child's operator by another channel than \
                 the answer, for `pki accept --root-fingerprint`): {}",
                parent.root_fingerprint()
            );
            println!("certificate fingerprint: {node_fp}");
            println!(
                "CA fingerprint: {ca_fp} (keep both: if the child's machine is ever lost or \
                 stolen, revoke both)"
            );
        }
        PkiCommand::Accept {
            dir,
            answer,
            root_fingerprint,
        } => {
            let pki = dir.join("pki");
            let pending = PendingIdentity::load(&pki)?;
            let text = std::fs::read_to_string(&answer)
                .with_context(|| format!("reading {}", answer.display()))?;
            let identity = pending.accept(&text, &root_fingerprint)?;
            identity.save(&pki)?;
            println!(
                "identity of {} complete in {}",
                identity.unit,
                pki.display()
            );
            println!("certificate fingerprint: {}", identity.fingerprint());
            print_ca_fingerprint(&identity);
        }
        PkiCommand::Fingerprint { dir, root, ca } => {
            let identity = Identity::load(&dir.join("pki"))?;
            if root {
                println!("{}", identity.root_fingerprint());
            } else if ca {
                let Some(fp) = identity.ca_fingerprint() else {
                    bail!("the root's CA is the root: `--root` prints its fingerprint");
                };
                println!("{fp}");
            } else {
                println!("{}", identity.fingerprint());
            }
        }
    }
    Ok(())
}

/// The CA fingerprint of a unit's new identity, with what it is for.
fn print_ca_fingerprint(identity: &Identity) {
    if let Some(fp) = identity.ca_fingerprint() {
        println!(
            "CA fingerprint: {fp} (if this machine is ever lost or stolen, the parent's admin \
             revokes this with the certificate's: the CA's key could make certificates for \
             the units below)"
        );
    }
}

/// `node.toml` read, and its link settings checked.
fn read_node_toml(path: &Path) -> anyhow::Result<(NodeToml, LinkConfig)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: NodeToml =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut link = LinkConfig::default();
    if let Some(s) = cfg.keep_alive_secs {
        link.keep_alive = Duration::from_secs(s);
    }
    if let Some(s) = cfg.idle_timeout_secs {
        link.idle_timeout = Duration::from_secs(s);
    }
    if let Some(m) = cfg.mtu_discovery {
        link.mtu_discovery = m;
    }
    if let Some(ms) = cfg.initial_rtt_ms {
        link.initial_rtt = Duration::from_millis(ms);
    }
    if let Some(n) = cfg.handshake_copies {
        link.handshake_copies = n;
    }
    if let Some(z) = cfg.zero_rtt {
        link.zero_rtt = z;
    }
    link.validate()
        .with_context(|| format!("{}: the link settings", path.display()))?;
    cfg.backups()
        .with_context(|| format!("{}: the backup settings", path.display()))?;
    cfg.store_options()
        .with_context(|| format!("{}: the memory settings", path.display()))?;
    cfg.utc_offset()
        .with_context(|| format!("{}: the units' day", path.display()))?;
    cfg.parent()
        .with_context(|| format!("{}: the parent", path.display()))?;
    Ok((cfg, link))
}

/// What `node check` finds of the node in `dir`: the checks `node run` makes before it
/// starts anything, and whether its store opens as this unit's.
fn node_check(dir: &Path) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let (cfg, _) = read_node_toml(&dir.join("node.toml"))?;
    let identity = Identity::load(&dir.join("pki"))
        .with_context(|| format!("{}: the identity", dir.join("pki").display()))?;
    let unit = &identity.unit;
    let mut out = String::new();
    writeln!(out, "grassroots {}", env!("CARGO_PKG_VERSION"))?;
    writeln!(
        out,
        "unit {unit} ({}), certificate {}",
        cfg.name,
        identity.fingerprint()
    )?;
    let children = cfg.children()?;
    let parent_addr = cfg.parent()?;
    grassroots_node::runtime::check_place(unit, &children, parent_addr.is_some())?;
    match (unit.parent(), parent_addr) {
        (Some(parent), Some(addr)) => writeln!(out, "parent {parent} at {addr}")?,
        _ => writeln!(out, "the root: no parent")?,
    }
    writeln!(out, "children: {}", cfg.children.join(", "))?;
    writeln!(
        out,
        "QUIC on {}, GraphQL on {}",
        cfg.quic_listen, cfg.graphql_listen
    )?;
    let path = dir.join("store.redb");
    backup::not_restoring(&path).context("the store")?;
    let store = if !path.exists() {
        "none yet (made at the first start)".to_owned()
    } else {
        match backup::open_existing(&path) {
            Ok(database) => {
                backup::check_owner(&database, &path, unit)?;
                "opens, this unit's".to_owned()
            }
            Err(grassroots_node::StoreError::Locked(_)) => "in use (the node runs)".to_owned(),
            Err(e) => return Err(e).context(format!("the store {}", path.display())),
        }
    };
    writeln!(out, "store: {store}")?;
    Ok(out)
}

async fn node_run(dir: &Path) -> anyhow::Result<()> {
    let (cfg, link) = read_node_toml(&dir.join("node.toml"))?;
    let children = cfg.children()?;
    let backups = cfg.backups()?;
    let store = cfg.store_options()?;
    grassroots_gateway::set_utc_offset_minutes(cfg.utc_offset()?);
    let parent_addr = cfg.parent()?;
    let node_cfg = NodeConfig {
        data_dir: dir.to_owned(),
        name: cfg.name,
        quic_listen: cfg.quic_listen,
        parent_addr,
        children,
        link,
        store,
        backups,
    };
    let gateway = grassroots_gateway::GatewayOptions {
        introspection: cfg.introspection.unwrap_or(true),
        ..grassroots_gateway::GatewayOptions::default()
    };
    let running = RunningNode::start_with(node_cfg, cfg.graphql_listen, gateway).await?;
    println!(
        "{} running (grassroots {}): QUIC {} GraphQL {}",
        running.node.unit(),
        env!("CARGO_PKG_VERSION"),
        running.node.quic_addr(),
        running.graphql_url()
    );
    let store = running.node.store();
    tokio::select! {
        _ = shutdown_signal() => {
            running.shutdown().await;
            Ok(())
        }
        // A store that cannot write acknowledges nothing more; stopping lets the service
        // manager start the node again, which recovers once the cause is fixed.
        reason = store.failed() => {
            tracing::error!("stopping: {reason}");
            running.shutdown().await;
            bail!("the node stopped: {reason}")
        }
    }
}

async fn store_command(command: StoreCommand) -> anyhow::Result<()> {
    let (dir, rebuild) = match command {
        StoreCommand::Verify { dir } => (dir, false),
        StoreCommand::Rebuild { dir } => (dir, true),
        StoreCommand::Backup { dir, out } => return store_backup(&dir, out).await,
        StoreCommand::TakeBack { dir, days } => {
            let identity = Identity::load(&dir.join("pki"))?;
            let window = std::time::Duration::from_secs(days.saturating_mul(86_400));
            let until =
                grassroots_node::store::window_end(grassroots_node::status::now_ms(), window);
            backup::take_back(&dir.join("store.redb"), &identity.unit, until)
                .with_context(|| format!("the store in {}", dir.display()))?;
            println!(
                "{} takes back from its children what was made in its name or above it, for \
                 the next {days} days",
                identity.unit
            );
            return Ok(());
        }
        StoreCommand::Restore {
            dir,
            from,
            keep_backup_users,
        } => {
            let identity = Identity::load(&dir.join("pki"))?;
            let keep = if keep_backup_users {
                backup::KeepUsers::Both
            } else {
                backup::KeepUsers::Newest
            };
            let restored = backup::restore_keeping(
                &from,
                &dir.join("store.redb"),
                &identity.unit,
                grassroots_node::status::now_ms(),
                keep,
            )
            .await
            .with_context(|| format!("restoring {}", from.display()))?;
            println!("restored {} into {}", from.display(), dir.display());
            if restored.views_made > 0 {
                println!(
                    "the backup's views differed from its documents in {} rows: made again",
                    restored.views_made
                );
            }
            match restored.revocations {
                Some(0) => {}
                Some(n) => println!("certificates revoked after the backup: {n}, revoked again"),
                None => println!(
                    "the replaced store's revocations did not read: revoke again (mutation \
                     revokeCertificate) any certificate revoked after the backup"
                ),
            }
            if let Some(kept) = restored.kept {
                println!("the replaced store is kept as {}", kept.display());
            }
            match restored.users {
                UsersFrom::Replaced(n) => {
                    println!(
                        "users (tokens): the {n} of the replaced store; the backup's {} are \
                         not kept (--keep-backup-users keeps them too)",
                        restored.backup_users
                    );
                }
                UsersFrom::Both(n) => println!(
                    "users (tokens): {n}, the backup's and the replaced store's; revoke again \
                     any revoked after the backup"
                ),
                UsersFrom::Backup(n) => println!(
                    "users (tokens): the {n} of the backup (the replaced store did not open or had none)"
                ),
            }
            return Ok(());
        }
    };
    let identity = Identity::load(&dir.join("pki"))?;
    let path = dir.join("store.redb");
    // Opening makes a store where there is none: an empty one would verify.
    if !path.exists() {
        bail!("no store at {}: nothing to verify", path.display());
    }
    let (store, _reader, thread) = grassroots_node::store::open(&path, identity.unit.clone())?;
    if rebuild {
        store.rebuild_views().await?;
    }
    let diffs = store.verify_views().await?;
    thread.shutdown().await;
    for d in &diffs {
        println!("{d}");
    }
    if diffs.is_empty() {
        println!("views match the documents");
        Ok(())
    } else {
        bail!(
            "{} differences between the views and the documents",
            diffs.len()
        )
    }
}

async fn store_backup(dir: &Path, out: Option<PathBuf>) -> anyhow::Result<()> {
    let identity = Identity::load(&dir.join("pki"))?;
    let path = dir.join("store.redb");
    // Opened as it is: no store made where none is, no migration run before the copy.
    let database = backup::open_existing(&path)?;
    backup::check_owner(&database, &path, &identity.unit)?;
    // Into the folder node.toml names (the backups' folder beside the store otherwise),
    // pruned to its backups_kept, unless a file is named.
    // Pruned only by the node's own settings: unread, nothing is deleted.
    let policy = match read_node_toml(&dir.join("node.toml")) {
        Ok((cfg, _)) => Some(cfg.backups()?),
        Err(e) => {
            eprintln!("node.toml not read ({e:#}): the backups folder is not pruned");
            None
        }
    };
    let folder = match policy.as_ref().and_then(|p| p.dir.as_ref()) {
        Some(d) => dir.join(d),
        None => backup::backup_dir(&path),
    };
    let named = out.is_some();
    let out = out.unwrap_or_else(|| {
        folder.join(backup::backup_name(
            identity.unit.as_str(),
            grassroots_node::status::now_ms(),
        ))
    });
    let info = backup::write_backup(&database, &out, Some(&path))?;
    println!(
        "{}: {} documents, {} bytes, {} ms",
        info.path.display(),
        info.documents,
        info.bytes,
        info.took_ms
    );
    if let (false, Some(policy)) = (named, policy) {
        let unit = identity.unit.as_str();
        if let Err(e) = backup::prune_backups(&folder, unit, policy.keep, Some(&info.path)) {
            eprintln!("older backups not pruned: {e}");
        }
    }
    Ok(())
}

async fn user_add(
    dir: &Path,
    unit: UnitId,
    role: Role,
    name: Option<String>,
) -> anyhow::Result<()> {
    let identity = Identity::load(&dir.join("pki"))?;
    if !unit.is_in_subtree_of(&identity.unit) {
        bail!("{unit} is not {} or below it", identity.unit);
    }
    // A child with a node of its own makes its units' users there (as createUserToken says).
    if let Ok((cfg, _)) = read_node_toml(&dir.join("node.toml")) {
        for child in cfg.children.iter().filter_map(|c| c.parse::<UnitId>().ok()) {
            if unit.is_in_subtree_of(&child) {
                bail!("{child} runs its own node: tokens for {unit} are made there");
            }
        }
    }
    let (store, reader, thread) =
        grassroots_node::store::open(&dir.join("store.redb"), identity.unit.clone())?;
    let token = new_token()?;
    let hash = token_hash(&token);
    store.add_named_user(hash, unit.clone(), role, name).await?;
    let user = reader.user(&hash);
    thread.shutdown().await;
    let name = user?.map(|u| u.name).unwrap_or_default();
    println!("{token}");
    eprintln!(
        "token for {role} of {unit}, user \"{name}\" (revokeUserTokens(name: \"{name}\") revokes it); it is not stored in clear and cannot be shown again"
    );
    Ok(())
}

async fn run_demo(dir: PathBuf) -> anyhow::Result<()> {
    if dir.exists() {
        if demo::is_demo_folder(&dir) {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("clearing the previous demo in {}", dir.display()))?;
        } else if std::fs::read_dir(&dir)?.next().is_some() {
            bail!(
                "{} exists and is not an earlier demo folder; pick another --dir",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(demo::MARKER),
        "a grassroots demo: `grassroots demo` clears it\n",
    )
    .with_context(|| format!("marking {}", dir.display()))?;
    let units = demo::tree()?;
    println!("starting {} nodes in {} ...", units.len(), dir.display());
    let fed = Federation::start(
        units,
        FederationOptions {
            dir: dir.clone(),
            deployment: "demo.grassroots".into(),
            link: LinkConfig::default(),
            links: Default::default(),
            via: None,
        },
    )
    .await?;
    demo::seed(&fed).await?;
    let manifest = dir.join("demo.json");
    demo::write_manifest(&fed, &manifest)?;
    println!();
    println!(
        "{:<18} {:<9} {:<20} GraphiQL (token in the URL)",
        "unit", "level", "name"
    );
    for spec in &fed.units {
        let node = fed.node(&spec.id)?;
        println!(
            "{:<18} {:<9} {:<20} http://{}/?token={}",
            spec.id.as_str(),
            spec.id.level().as_str(),
            spec.name,
            node.http_addr,
            fed.token(&spec.id, Role::Supervisor)?
        );
    }
    println!();
    println!("tokens for every role and unit: {}", manifest.display());
    println!("try, at the city: {{ nodeUnit {{ name members(subtree: true) {{ totalCount }} }} }}");
    println!("press Ctrl-C to stop");
    shutdown_signal().await;
    println!("stopping ...");
    fed.shutdown().await;
    Ok(())
}

const STATUS_QUERY: &str = "fragment U on Unit { id name level sync { lastHeardFrom stale link { connected protocol software since downSince failedDials lastError lastFrameAt bytesIn bytesOut docsInFlight docsQueued docsUnregistered rejected keptOffUntil } } } \
    query { nodeUnit { ...U parent { ...U } children { ...U children { ...U children { ...U } } } } }";

const BACKUPS_QUERY: &str =
    "{ backups { last { at file bytes } lastError { at message } takeBackUntil } }";

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn status_line(unit: &serde_json::Value) -> String {
    let id = unit["id"].as_str().unwrap_or("?");
    // A unit registered here whose profile has not arrived is named by its id.
    let name = match unit["name"].as_str() {
        Some(n) if n != id => n,
        Some(_) => "(no profile yet)",
        None => "?",
    };
    let mut line = format!(
        "{id} {name} ({})",
        unit["level"].as_str().unwrap_or("?").to_lowercase()
    );
    let sync = &unit["sync"];
    if let Some(link) = sync["link"].as_object() {
        let up = link["connected"].as_bool().unwrap_or(false);
        if up {
            line += "  link UP";
            // During a rollout, which neighbours run which release.
            if let (Some(s), Some(p)) = (link["software"].as_str(), link["protocol"].as_u64()) {
                line += &format!(" ({s}, protocol {p})");
            }
        } else {
            line += "  link DOWN";
            if let Some(t) = link["downSince"].as_str() {
                line += &format!(" since {t}");
            }
            if link["since"].is_null() {
                line += " (never up since start)";
            }
        }
        line += &format!(
            "  in {} out {}",
            human_bytes(link["bytesIn"].as_u64().unwrap_or(0)),
            human_bytes(link["bytesOut"].as_u64().unwrap_or(0)),
        );
        let failed = link["failedDials"].as_u64().unwrap_or(0);
        if !up && failed > 0 {
            line += &format!(
                "  {failed} dials failed, last: {}",
                link["lastError"].as_str().unwrap_or("?")
            );
        }
        let (f, q) = (
            link["docsInFlight"].as_u64().unwrap_or(0),
            link["docsQueued"].as_u64().unwrap_or(0),
        );
        if f + q > 0 {
            line += &format!("  syncing {f} docs, {q} queued");
        }
        let unregistered = link["docsUnregistered"].as_u64().unwrap_or(0);
        if unregistered > 0 {
            line += &format!("  {unregistered} docs of unregistered units");
        }
        let rejected = link["rejected"].as_u64().unwrap_or(0);
        if rejected > 0 {
            line += &format!("  REJECTED {rejected}");
        }
        if let Some(t) = link["keptOffUntil"].as_str() {
            line += &format!("  KEPT OFF until {t}");
        }
    }
    match sync["lastHeardFrom"].as_str() {
        Some(t) => line += &format!("  heard {t}"),
        None if sync.is_null() => {}
        None => line += "  never heard",
    }
    if sync["stale"].as_bool() == Some(true) {
        line += "  STALE";
    }
    line
}

fn print_tree(unit: &serde_json::Value, prefix: &str, last: bool, root: bool, out: &mut String) {
    let (branch, next) = match (root, last) {
        (true, _) => ("", String::new()),
        (false, true) => ("`-- ", format!("{prefix}    ")),
        (false, false) => ("|-- ", format!("{prefix}|   ")),
    };
    out.push_str(&format!("{prefix}{branch}{}\n", status_line(unit)));
    let kids = unit["children"].as_array().cloned().unwrap_or_default();
    for (i, k) in kids.iter().enumerate() {
        print_tree(k, &next, i + 1 == kids.len(), false, out);
    }
}

/// POST one GraphQL query; the whole answer (data and errors).
async fn post_query(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    query: &str,
) -> anyhow::Result<serde_json::Value> {
    client
        .post(url)
        .bearer_auth(token)
        .json(&serde_json::json!({ "query": query }))
        .send()
        .await
        .with_context(|| format!("querying {url}"))?
        .json()
        .await
        .context("decoding the answer")
}

async fn status(url: &str, token: &str, watch: bool) -> anyhow::Result<()> {
    // A node that does not answer (stalled, or a wrong address that swallows packets) must
    // not hang the command.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("making an HTTP client")?;
    if !watch {
        print!("{}", status_text(&client, url, token).await?);
        return Ok(());
    }
    // One signal listener for the whole watch: a Ctrl-C while a query runs ends it too (a
    // listener made anew each round would miss one that came before it).
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let out = tokio::select! {
            _ = &mut stop => return Ok(()),
            out = status_text(&client, url, token) => out?,
        };
        // Clear the screen and redraw.
        print!("\x1b[2J\x1b[H{out}");
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The status display of the node at `url`: its tree, then its backups.
async fn status_text(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<String> {
    {
        let resp = post_query(client, url, token, STATUS_QUERY).await?;
        if let Some(err) = resp["errors"].get(0) {
            bail!("{}", err["message"].as_str().unwrap_or("query failed"));
        }
        let node = &resp["data"]["nodeUnit"];
        let mut out = String::new();
        if !node["parent"].is_null() {
            out.push_str(&format!("parent: {}\n", status_line(&node["parent"])));
        }
        print_tree(node, "", true, true, &mut out);
        // Backups are shown to users of the node's unit only: left out for the others.
        let b = post_query(client, url, token, BACKUPS_QUERY).await?;
        let b = &b["data"]["backups"];
        if !b.is_null() {
            match b["last"]["at"].as_str() {
                Some(at) => out.push_str(&format!(
                    "backups: last {at} ({}, {})",
                    b["last"]["file"].as_str().unwrap_or("?"),
                    human_bytes(b["last"]["bytes"].as_u64().unwrap_or(0))
                )),
                None => out.push_str("backups: none yet"),
            }
            if let Some(m) = b["lastError"]["message"].as_str() {
                out.push_str(&format!(
                    "  FAILED {}: {m}",
                    b["lastError"]["at"].as_str().unwrap_or("?")
                ));
            }
            out.push('\n');
            if let Some(until) = b["takeBackUntil"].as_str() {
                out.push_str(&format!(
                    "takes back from its children what was made in its name or above it, \
                     until {until}\n"
                ));
            }
        }
        // What the node answered is shown to an operator's terminal: a unit's name from
        // below that holds an escape sequence (a node of an older build let one in) must
        // not run there.
        Ok(out
            .chars()
            .filter(|c| *c == '\n' || grassroots_schema::records::plain_char(*c, false))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki_cli(args: &[&str]) -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["grassroots", "pki"].iter().chain(args))?;
        match cli.command {
            Command::Pki { command } => pki(command),
            _ => bail!("not a pki command"),
        }
    }

    fn store_cli(args: &[&str]) -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["grassroots", "store"].iter().chain(args))?;
        match cli.command {
            Command::Store { command } => {
                tokio::runtime::Runtime::new()?.block_on(store_command(command))
            }
            _ => bail!("not a store command"),
        }
    }

    /// A status line names the unit, or says its profile has not arrived (GraphQL names
    /// such a unit by its id).
    #[test]
    fn a_unit_without_its_profile_is_said_so_in_the_status() {
        let unit = |name: &str| serde_json::json!({ "id": "c01/k01/t01/v03", "name": name, "level": "VILLAGE" });
        assert_eq!(
            status_line(&unit("Qingshui Village")),
            "c01/k01/t01/v03 Qingshui Village (village)"
        );
        assert_eq!(
            status_line(&unit("c01/k01/t01/v03")),
            "c01/k01/t01/v03 (no profile yet) (village)"
        );
    }

    /// `store backup` and `store restore` on a stopped node: the restore brings back what
    /// the backup held, keeps the store it replaced, and refuses a backup of another unit.
    #[test]
    fn a_stopped_node_is_backed_up_and_restored() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let (dir, other) = (tmp.path().join("c01"), tmp.path().join("c02"));
        let rt = tokio::runtime::Runtime::new()?;
        // The unit whose data folder `dir` is (named after it in this test).
        let unit_of = |dir: &Path| -> anyhow::Result<UnitId> {
            Ok(dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .parse()?)
        };
        let members = |dir: &Path, add: Option<&str>| -> anyhow::Result<usize> {
            rt.block_on(async {
                let unit = unit_of(dir)?;
                let (store, reader, thread) =
                    grassroots_node::store::open(&dir.join("store.redb"), unit.clone())?;
                store.set_profile(format!("City {unit}"), vec![]).await?;
                if let Some(name) = add {
                    let m = grassroots_schema::NewMember {
                        name: name.into(),
                        birth_year: 1980,
                        gender: grassroots_schema::Gender::Male,
                        education: grassroots_schema::Education::JuniorSecondary,
                        joined_on: "2001-07-01".into(),
                        status: grassroots_schema::MemberStatus::Full,
                        phone: None,
                        id_number: None,
                        categories: Vec::new(),
                    };
                    store.create_member(unit.clone(), m).await?;
                }
                let n = reader.members(&unit, false, None, 100)?.total;
                thread.shutdown().await;
                Ok(n)
            })
        };
        for (d, unit) in [(&dir, "c01"), (&other, "c02")] {
            init_root(d, unit)?;
            assert_eq!(members(d, Some("Before"))?, 1);
        }
        let d = dir.to_str().context("path")?;
        let backup = tmp.path().join("c01-backup.redb");
        store_cli(&[
            "backup",
            "--dir",
            d,
            "--out",
            backup.to_str().context("path")?,
        ])?;
        assert_eq!(members(&dir, Some("After"))?, 2);
        let theirs = tmp.path().join("c02-backup.redb");
        store_cli(&[
            "backup",
            "--dir",
            other.to_str().context("path")?,
            "--out",
            theirs.to_str().context("path")?,
        ])?;
        let err = store_cli(&[
            "restore",
            "--dir",
            d,
            "--from",
            theirs.to_str().context("path")?,
        ])
        .expect_err("another unit's backup was restored");
        assert!(format!("{err:#}").contains("not a store of c01"), "{err:#}");
        assert_eq!(members(&dir, None)?, 2);
        let restore = || {
            store_cli(&[
                "restore",
                "--dir",
                d,
                "--from",
                backup.to_str().context("path")?,
            ])
        };
        restore()?;
        assert_eq!(members(&dir, None)?, 1);
        let kept: Vec<_> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("store.redb.before-restore-")
            })
            .collect();
        assert_eq!(kept.len(), 1);
        // A restore cut short leaves its staged copy: the node does not start on what is
        // there, and the restore run again goes through.
        std::fs::copy(&backup, dir.join("store.restoring"))?;
        let err = members(&dir, None).expect_err("opened beside an interrupted restore");
        assert!(
            format!("{err:#}").contains("restore of this store was interrupted"),
            "{err:#}"
        );
        restore()?;
        assert!(!dir.join("store.restoring").exists());
        assert_eq!(members(&dir, None)?, 1);
        // Without --out, the backup goes to the node's backups folder.
        store_cli(&["backup", "--dir", d])?;
        assert_eq!(std::fs::read_dir(dir.join("backups"))?.count(), 1);
        // The restored node takes back from its children for 14 days; `take-back` sets
        // another window, also on a node whose store is new (its disk lost, no backup).
        let window = |dir: &Path| -> anyhow::Result<Option<u64>> {
            rt.block_on(async {
                let (store, _reader, thread) =
                    grassroots_node::store::open(&dir.join("store.redb"), unit_of(dir)?)?;
                let until = store.status().await?.take_back_until_ms;
                thread.shutdown().await;
                Ok(until)
            })
        };
        let now = grassroots_node::status::now_ms();
        let day = 86_400_000;
        let days = |until: Option<u64>| until.map(|u| u.saturating_sub(now) / day);
        assert_eq!(days(window(&dir)?), Some(13), "after a restore");
        store_cli(&["take-back", "--dir", d, "--days", "30"])?;
        assert_eq!(days(window(&dir)?), Some(30));
        let fresh = tmp.path().join("c03");
        init_root(&fresh, "c03")?;
        // Verifying a store that is not there is refused, and makes none.
        let err = store_cli(&["verify", "--dir", fresh.to_str().context("path")?])
            .expect_err("verified a store that is not there");
        assert!(format!("{err:#}").contains("no store at"), "{err:#}");
        assert!(!fresh.join("store.redb").exists());
        // A store a command run as root makes is the folder owner's, and private.
        #[cfg(unix)]
        let root = {
            use std::os::unix::fs::MetadataExt as _;
            let root = std::fs::metadata(tmp.path())?.uid() == 0;
            if root {
                std::os::unix::fs::chown(&fresh, Some(65534), Some(65534))?;
            }
            root
        };
        store_cli(&["take-back", "--dir", fresh.to_str().context("path")?])?;
        // So does a node's (or `user add`'s) first opening of its store.
        let first = tmp.path().join("c04");
        std::fs::create_dir(&first)?;
        #[cfg(unix)]
        if root {
            std::os::unix::fs::chown(&first, Some(65534), Some(65534))?;
        }
        assert_eq!(members(&first, None)?, 0);
        #[cfg(unix)]
        if root {
            use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
            for made in [fresh.join("store.redb"), first.join("store.redb")] {
                let m = std::fs::metadata(&made)?;
                assert_eq!((m.uid(), m.gid()), (65534, 65534), "{}", made.display());
                assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", made.display());
            }
        }
        assert_eq!(days(window(&fresh)?), Some(14), "a new store");
        assert_eq!(window(&other)?, None, "never told");
        Ok(())
    }

    /// `pki init` of the root unit `unit` into the data folder `dir`.
    fn init_root(dir: &Path, unit: &str) -> anyhow::Result<()> {
        pki_cli(&[
            "init",
            "--dir",
            dir.to_str().context("path")?,
            "--unit",
            unit,
            "--deployment",
            "t.grassroots",
        ])
    }

    /// The identity a command run as root writes into a node's data folder is the folder
    /// owner's (the node's user), its keys private: the node must read them.
    #[test]
    fn an_identity_made_by_root_is_the_nodes() -> anyhow::Result<()> {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let tmp = tempfile::tempdir()?;
        if std::fs::metadata(tmp.path())?.uid() != 0 {
            return Ok(()); // Only root can give files away; CI runs as root.
        }
        let dir = tmp.path().join("c01");
        std::fs::create_dir(&dir)?;
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534))?;
        init_root(&dir, "c01")?;
        for name in ["", "node.key", "ca.key", "root.pem", "node-chain.pem"] {
            let m = std::fs::metadata(dir.join("pki").join(name))?;
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{name}");
            if name.ends_with(".key") {
                assert_eq!(m.permissions().mode() & 0o777, 0o600, "{name}");
            }
        }
        Ok(())
    }

    /// `node check` says what a node would start with, and why it would not.
    #[test]
    fn a_node_is_checked_without_starting_it() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("c01");
        init_root(&dir, "c01")?;
        let toml = |children: &str| {
            std::fs::write(
                dir.join("node.toml"),
                format!(
                    "name = \"C\"\nquic_listen = \"127.0.0.1:1\"\n\
                     graphql_listen = \"127.0.0.1:2\"\nchildren = [{children}]\n"
                ),
            )
        };
        toml("\"c01/k01\"")?;
        let out = node_check(&dir)?;
        assert!(out.contains("unit c01 (C)"), "{out}");
        assert!(out.contains("the root"), "{out}");
        assert!(out.contains("children: c01/k01"), "{out}");
        assert!(out.contains("store: none yet"), "{out}");
        assert!(!dir.join("store.redb").exists(), "checking made a store");
        backup::take_back(&dir.join("store.redb"), &"c01".parse()?, 0)?;
        assert!(node_check(&dir)?.contains("store: opens, this unit's"));
        // Beside an interrupted restore the node would not start: said so.
        std::fs::write(dir.join("store.restoring"), b"")?;
        let err = node_check(&dir).expect_err("an interrupted restore");
        assert!(format!("{err:#}").contains("restore of this store was interrupted"));
        std::fs::remove_file(dir.join("store.restoring"))?;
        toml("\"c02/k01\"")?;
        let err = node_check(&dir).expect_err("a child of another unit");
        assert!(format!("{err:#}").contains("not a child of c01"), "{err:#}");
        toml("")?;
        std::fs::write(dir.join("node.toml"), "name = \"C\"\nquic_listen = 7\n")?;
        assert!(node_check(&dir).is_err(), "a malformed node.toml");
        Ok(())
    }

    /// `user add` makes no token for a unit under a child that runs its own node.
    #[test]
    fn no_token_is_added_for_a_child_with_its_own_node() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("c01");
        init_root(&dir, "c01")?;
        std::fs::write(
            dir.join("node.toml"),
            "name = \"C\"\nquic_listen = \"127.0.0.1:1\"\ngraphql_listen = \"127.0.0.1:2\"\n\
             children = [\"c01/k01\"]\n",
        )?;
        let rt = tokio::runtime::Runtime::new()?;
        let add = |unit: &str| rt.block_on(user_add(&dir, unit.parse()?, Role::Clerk, None));
        let err = add("c01/k01/t01").expect_err("a token for a unit under a child's node");
        assert!(format!("{err:#}").contains("runs its own node"), "{err:#}");
        assert!(!dir.join("store.redb").exists(), "nothing opened for it");
        add("c01/k02")?;
        add("c01")?;
        Ok(())
    }

    /// node.toml's backup and memory settings: 0 hours switches periodic backups off;
    /// keeping none, and a memory budget of none or past 64 GiB, are refused.
    #[test]
    fn backup_settings_are_read_and_checked() -> anyhow::Result<()> {
        let base =
            "name = \"C\"\nquic_listen = \"127.0.0.1:1\"\ngraphql_listen = \"127.0.0.1:2\"\n";
        let read = |extra: &str| -> anyhow::Result<BackupPolicy> {
            toml::from_str::<NodeToml>(&format!("{base}{extra}"))?.backups()
        };
        assert_eq!(read("")?, BackupPolicy::default());
        assert_eq!(read("backup_every_hours = 0")?.every, None);
        let p = read("backup_every_hours = 6\nbackups_kept = 28\nbackup_dir = \"/mnt/usb\"")?;
        assert_eq!((p.every, p.keep), (Some(Duration::from_secs(6 * 3600)), 28));
        assert_eq!(p.dir.as_deref(), Some(Path::new("/mnt/usb")));
        assert!(read("backups_kept = 0").is_err());
        // The documents' memory: bounded both ways.
        let memory = |extra: &str| -> anyhow::Result<u64> {
            Ok(toml::from_str::<NodeToml>(&format!("{base}{extra}"))?
                .store_options()?
                .doc_memory_budget)
        };
        assert_eq!(memory("")?, StoreOptions::default().doc_memory_budget);
        assert_eq!(memory("doc_memory_mb = 256")?, 256 << 20);
        assert!(memory("doc_memory_mb = 0").is_err());
        let offset = |extra: &str| -> anyhow::Result<i32> {
            toml::from_str::<NodeToml>(&format!("{base}{extra}"))?.utc_offset()
        };
        assert_eq!(offset("")?, 0);
        assert_eq!(offset("utc_offset_minutes = 480")?, 480);
        assert!(offset("utc_offset_minutes = 1000").is_err());
        assert!(memory("doc_memory_mb = 17592186044416").is_err());
        assert!(read("backup_every_hours = 100000").is_err());
        Ok(())
    }

    /// node.toml's handshake copies: read into the link settings, 1 to 3.
    #[test]
    fn handshake_copies_are_read_and_checked() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("node.toml");
        let base =
            "name = \"C\"\nquic_listen = \"127.0.0.1:1\"\ngraphql_listen = \"127.0.0.1:2\"\n";
        let read = |extra: &str| -> anyhow::Result<LinkConfig> {
            std::fs::write(&path, format!("{base}{extra}"))?;
            Ok(read_node_toml(&path)?.1)
        };
        assert_eq!(read("")?.handshake_copies, 1);
        assert_eq!(read("handshake_copies = 2")?.handshake_copies, 2);
        let e = read("handshake_copies = 4").unwrap_err();
        assert!(format!("{e:#}").contains("handshake copies"), "{e:#}");
        Ok(())
    }

    /// Every example in deploy/ is a node.toml this build runs with.
    #[test]
    fn the_deploy_examples_are_valid() -> anyhow::Result<()> {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let mut read = Vec::new();
        for entry in std::fs::read_dir(&deploy)? {
            let path = entry?.path().join("node.toml");
            if path.exists() {
                let (cfg, link) = read_node_toml(&path)?;
                read.push((cfg.name, link));
            }
        }
        assert!(read.len() >= 4, "{} examples", read.len());
        // The village and township examples tune their links for a lossy line.
        let link = |name: &str| read.iter().find(|(n, _)| n.contains(name)).map(|(_, l)| l);
        let village = link("Village").context("no village example")?;
        assert!(!village.mtu_discovery);
        assert_eq!(village.keep_alive, Duration::from_secs(25));
        let township = link("Township").context("no township example")?;
        for l in [village, township] {
            assert_eq!(l.initial_rtt, Duration::from_millis(150));
        }
        // The township copies its answers to villages whose address a token proved.
        assert_eq!(
            (village.handshake_copies, township.handshake_copies),
            (1, 2)
        );
        Ok(())
    }

    /// The request flow through the command line: the child's keys stay in its folder, the
    /// parent signs, the child accepts, and the node can load what it ends with.
    #[test]
    fn a_child_identity_by_request_sign_and_accept() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let path = |p: &str| tmp.path().join(p).display().to_string();
        let (city, county, request, answer) = (
            path("city"),
            path("k01"),
            path("k01/pki/request.pem"),
            path("answer.pem"),
        );
        pki_cli(&[
            "init",
            "--dir",
            &city,
            "--unit",
            "c01",
            "--deployment",
            "t.grassroots",
        ])?;
        pki_cli(&[
            "request",
            "--dir",
            &county,
            "--unit",
            "c01/k01",
            "--deployment",
            "t.grassroots",
        ])?;
        // Keys, no certificates: the node cannot start on the folder yet.
        let pending = || match Identity::load(&tmp.path().join("k01/pki")) {
            Err(grassroots_node::pki::PkiError::Pending(_)) => true,
            other => panic!("not pending: {other:?}"),
        };
        assert!(pending());
        // The parent signs only for the unit it names, and the request must name it too.
        let wrong = pki_cli(&[
            "sign",
            "--ca-dir",
            &city,
            "--unit",
            "c01/k02",
            "--request",
            &request,
            "--out",
            &answer,
        ]);
        assert!(wrong.is_err());
        pki_cli(&[
            "sign",
            "--ca-dir",
            &city,
            "--unit",
            "c01/k01",
            "--request",
            &request,
            "--out",
            &answer,
        ])?;
        assert!(!std::fs::read_to_string(&answer)?.contains("PRIVATE"));
        let pin = Identity::load(&tmp.path().join("city/pki"))?.root_fingerprint();
        // Another root's fingerprint: refused, and the folder stays pending.
        let other = "00".repeat(32);
        let accept = |pin: &str| {
            pki_cli(&[
                "accept",
                "--dir",
                &county,
                "--answer",
                &answer,
                "--root-fingerprint",
                pin,
            ])
        };
        assert!(accept(&other).is_err());
        assert!(pending());
        accept(&pin)?;
        // Accepted once; a second accept, or keys made over it, are refused.
        assert!(accept(&pin).is_err());
        assert!(
            pki_cli(&[
                "issue", "--ca-dir", &city, "--unit", "c01/k01", "--dir", &county
            ])
            .is_err()
        );
        assert!(
            pki_cli(&[
                "init",
                "--dir",
                &city,
                "--unit",
                "c01",
                "--deployment",
                "t.grassroots"
            ])
            .is_err()
        );
        let id = Identity::load(&tmp.path().join("k01/pki"))?;
        assert_eq!(id.unit, "c01/k01".parse()?);
        let root = Identity::load(&tmp.path().join("city/pki"))?;
        assert_eq!(id.root_fingerprint(), root.root_fingerprint());
        // A second request into the same folder would lose the keys: refused.
        assert!(
            pki_cli(&[
                "request",
                "--dir",
                &county,
                "--unit",
                "c01/k01",
                "--deployment",
                "t.grassroots"
            ])
            .is_err()
        );
        Ok(())
    }
}
