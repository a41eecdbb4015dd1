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
use grassroots_node::{Identity, LinkConfig, NodeConfig};
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
    parent_addr: Option<SocketAddr>,
    #[serde(default)]
    children: Vec<String>,
    keep_alive_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    /// QUIC path MTU discovery (on unless set to false).
    mtu_discovery: Option<bool>,
    /// The round trip QUIC assumes on a new link before it has measured one (default 333;
    /// 10 to 1,000).
    initial_rtt_ms: Option<u64>,
    /// Memory for loaded automerge documents (MiB); the least recently used beyond it are
    /// evicted and read back from the store when needed.
    doc_memory_mb: Option<u64>,
    /// Answer GraphQL introspection (`__schema`, `__type`); GraphiQL needs it. Default true.
    introspection: Option<bool>,
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
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(cli))
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
        }
        PkiCommand::Fingerprint { dir, root } => {
            let identity = Identity::load(&dir.join("pki"))?;
            if root {
                println!("{}", identity.root_fingerprint());
            } else {
                println!("{}", identity.fingerprint());
            }
        }
    }
    Ok(())
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
    link.validate()
        .with_context(|| format!("{}: the link settings", path.display()))?;
    Ok((cfg, link))
}

async fn node_run(dir: &Path) -> anyhow::Result<()> {
    let (cfg, link) = read_node_toml(&dir.join("node.toml"))?;
    let children = cfg
        .children
        .iter()
        .map(|c| c.parse::<UnitId>())
        .collect::<Result<Vec<_>, _>>()?;
    let node_cfg = NodeConfig {
        data_dir: dir.to_owned(),
        name: cfg.name,
        quic_listen: cfg.quic_listen,
        parent_addr: cfg.parent_addr,
        children,
        link,
        store: match cfg.doc_memory_mb {
            Some(mb) => StoreOptions {
                doc_memory_budget: mb << 20,
                ..StoreOptions::default()
            },
            None => StoreOptions::default(),
        },
    };
    let gateway = grassroots_gateway::GatewayOptions {
        introspection: cfg.introspection.unwrap_or(true),
    };
    let running = RunningNode::start_with(node_cfg, cfg.graphql_listen, gateway).await?;
    println!(
        "{} running: QUIC {} GraphQL {}",
        running.node.unit(),
        running.node.quic_addr(),
        running.graphql_url()
    );
    shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}

async fn store_command(command: StoreCommand) -> anyhow::Result<()> {
    let (dir, rebuild) = match command {
        StoreCommand::Verify { dir } => (dir, false),
        StoreCommand::Rebuild { dir } => (dir, true),
    };
    let identity = Identity::load(&dir.join("pki"))?;
    let (store, _reader, thread) =
        grassroots_node::store::open(&dir.join("store.redb"), identity.unit.clone())?;
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
        bail!("{} view rows differ from the documents", diffs.len())
    }
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
    let (store, _reader, thread) =
        grassroots_node::store::open(&dir.join("store.redb"), identity.unit.clone())?;
    let token = new_token()?;
    store
        .add_named_user(token_hash(&token), unit.clone(), role, name)
        .await?;
    thread.shutdown().await;
    println!("{token}");
    eprintln!("token for {role} of {unit}; it is not stored in clear and cannot be shown again");
    Ok(())
}

async fn run_demo(dir: PathBuf) -> anyhow::Result<()> {
    if dir.exists() {
        if dir.join("demo.json").exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("clearing the previous demo in {}", dir.display()))?;
        } else if std::fs::read_dir(&dir)?.next().is_some() {
            bail!(
                "{} exists and is not an earlier demo folder; pick another --dir",
                dir.display()
            );
        }
    }
    let units = demo::tree()?;
    println!("starting {} nodes in {} ...", units.len(), dir.display());
    let fed = Federation::start(
        units,
        FederationOptions {
            dir: dir.clone(),
            deployment: "demo.grassroots".into(),
            link: LinkConfig::default(),
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

const STATUS_QUERY: &str = "fragment U on Unit { id name level sync { lastHeardFrom stale link { connected since lastFrameAt bytesIn bytesOut docsInFlight docsQueued docsUnregistered rejected } } } \
    query { nodeUnit { ...U parent { ...U } children { ...U children { ...U children { ...U } } } } }";

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn status_line(unit: &serde_json::Value) -> String {
    let mut line = format!(
        "{} {} ({})",
        unit["id"].as_str().unwrap_or("?"),
        unit["name"].as_str().unwrap_or("?"),
        unit["level"].as_str().unwrap_or("?").to_lowercase()
    );
    let sync = &unit["sync"];
    if let Some(link) = sync["link"].as_object() {
        let up = link["connected"].as_bool().unwrap_or(false);
        line += &format!(
            "  link {}  in {} out {}",
            if up { "UP" } else { "DOWN" },
            human_bytes(link["bytesIn"].as_u64().unwrap_or(0)),
            human_bytes(link["bytesOut"].as_u64().unwrap_or(0)),
        );
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

async fn status(url: &str, token: &str, watch: bool) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    loop {
        let resp: serde_json::Value = client
            .post(url)
            .bearer_auth(token)
            .json(&serde_json::json!({ "query": STATUS_QUERY }))
            .send()
            .await
            .with_context(|| format!("querying {url}"))?
            .json()
            .await
            .context("decoding the answer")?;
        if let Some(err) = resp["errors"].get(0) {
            bail!("{}", err["message"].as_str().unwrap_or("query failed"));
        }
        let node = &resp["data"]["nodeUnit"];
        let mut out = String::new();
        if !node["parent"].is_null() {
            out.push_str(&format!("parent: {}\n", status_line(&node["parent"])));
        }
        print_tree(node, "", true, true, &mut out);
        if watch {
            // Clear the screen and redraw.
            print!("\x1b[2J\x1b[H{out}");
        } else {
            print!("{out}");
            return Ok(());
        }
        tokio::select! {
            _ = shutdown_signal() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
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
