//! The network shell: QUIC endpoints, frames on a stream, the hello, and the link tasks.
//!
//! One QUIC connection per link, one bidirectional stream on it. The child dials its parent
//! and redials with exponential backoff and jitter; the parent accepts its registered
//! children only. A link is trusted only after the application hello is answered: a client
//! whose certificate the server rejected still sees `connect` succeed.

mod admission;
mod copies;
mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use grassroots_schema::UnitId;
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pki::{self, Identity, PkiError};
use crate::status::{LinkCounters, now_ms};
use crate::store::{StoreError, StoreHandle, StoreReader};
use crate::sync::wire::{
    self, CAPABILITIES, EARLY_HELLO, Hello, MAX_FRAME, Msg, RejectReason, VERSIONS, Versions,
    WireError,
};

/// Silence (both ways) after which a link waiting for its peer sends a probe.
const PROBE_AFTER: Duration = Duration::from_millis(100);
/// Probes sent without hearing from the peer before the link stops probing (until it hears
/// again): a peer that does not answer is not helped by more.
const MAX_UNANSWERED_PROBES: u32 = 50;
/// A dial starts another QUIC handshake beside the ones still running after this long.
const RACE_AFTER: Duration = Duration::from_millis(500);
/// Handshakes one dial runs at once.
const MAX_RACING: usize = 4;
/// How long a link waits for the peer to take any byte of a frame before it gives up on
/// the peer: a slow village link takes some every few seconds; one that takes none for this
/// long has stopped reading.
const WRITE_STALL: Duration = Duration::from_secs(120);
/// Frame bytes one link may have waiting in the store's inbox (at least one frame of
/// [`MAX_FRAME`]).
const LINK_INBOX_BYTES: usize = 2 * MAX_FRAME;
/// What a frame holds of that budget at least, so that a flood of tiny frames is bounded in
/// number too: one link holds at most 512 frames of the store's peers' inbox, which every
/// link shares (4,096), so that no one link fills it.
const MIN_FRAME_CHARGE: usize = LINK_INBOX_BYTES / 512;
/// Frames that do not decode, on one connection, before it is closed (as for messages the
/// store refuses, see the store's cap).
const MAX_MALFORMED_FRAMES: u32 = 1024;
/// The piece in which a frame's body is read (and its buffer grown).
const READ_PIECE: usize = 64 << 10;

/// QUIC application close codes.
pub mod close {
    use quinn::VarInt;
    /// Orderly shutdown.
    pub const BYE: VarInt = VarInt::from_u32(0);
    /// The peer is not a registered parent or child, or its certificate was issued by the
    /// wrong CA.
    pub const NOT_ADJACENT: VarInt = VarInt::from_u32(1);
    /// The hello was missing, late or incompatible.
    pub const HANDSHAKE: VarInt = VarInt::from_u32(2);
    /// A frame over the size cap.
    pub const TOO_LARGE: VarInt = VarInt::from_u32(3);
    /// The child was closed twice within the hour for what it sent (refused messages,
    /// frames that do not decode or over the cap) and is kept off for a while.
    pub const KEPT_OFF: VarInt = VarInt::from_u32(4);
}

/// Link timing and limits, set on purpose rather than left at quinn's defaults.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// QUIC keep-alive of the links this node dials (quinn's default is none), above zero and
    /// at most half the idle timeout; on the links it serves, a backup at half the idle
    /// timeout (the child sets the pace).
    pub keep_alive: Duration,
    /// Idle timeout after which a silent link is declared dead.
    pub idle_timeout: Duration,
    /// First redial delay.
    pub backoff_min: Duration,
    /// Longest redial delay.
    pub backoff_max: Duration,
    /// Time allowed for connect + hello.
    pub handshake_timeout: Duration,
    /// Probe for datagrams larger than 1,200 bytes (QUIC's path MTU discovery). Off, the node
    /// neither probes nor lets its peers probe towards it (it tells them 1,200 bytes is its
    /// largest): each link then carries about 13 KB less in its first seconds, which a
    /// village on a metered line may prefer to the larger datagrams' gain in a bulk transfer
    /// (by arithmetic: 1,200/1,452, a sixth, fewer packets, and so about 1% fewer header
    /// bytes).
    pub mtu_discovery: bool,
    /// The round trip QUIC assumes on a new link until it has measured one, at both ends of
    /// the links this node dials and serves. Every handshake timer follows from it: a
    /// datagram lost in the handshake is sent again after three times this (RFC 9002's probe
    /// timeout), so on a lossy village line a guess near the real round trip brings a link
    /// up sooner than quinn's default of 333 ms. Too low a guess costs a few datagrams
    /// sent twice, never the link. Between 10 ms and 1 s, so that the first two probe
    /// timeouts (after 3 and 9 times the guess) fit in the default 10 s handshake timeout.
    pub initial_rtt: Duration,
    /// How many times this node sends each datagram of a QUIC handshake (1 to 3; see
    /// `net/copies.rs`). A handshake datagram lost on a lossy line waits out a probe timeout
    /// of three round trips or more; sent twice it is lost only when both copies are. Costs a
    /// few KB a link, only while it comes up. Copied: the handshakes this node dials (to its
    /// parent), and its answers to a child presenting a token from a link in the last 24 h
    /// (which proves the child's address; any other child's are sent once, within QUIC's
    /// amplification limit).
    pub handshake_copies: u8,
    /// Incoming handshakes this node works on at once (TLS, certificate checks and the
    /// hello), at least 1. Addresses QUIC has not validated (by a token or a Retry) take at
    /// most half of them; past that such a handshake is answered with a Retry, which costs
    /// this node no state and a forged source cannot answer, and past the whole a validated
    /// one is refused (its child redials with backoff). Validated addresses no child linked
    /// from in the last week take at most three quarters with them (`net/admission.rs`).
    /// So a flood of Initials holds at most this many handshakes' memory and signatures,
    /// not one per datagram for the whole handshake timeout, Initials from forged sources
    /// cannot lock children out, and senders answering Retries from addresses of their own
    /// cannot take what children come back to from theirs.
    pub max_handshakes: usize,
    /// Resume links with TLS 1.3 0-RTT: a node redialling a parent that gave it a session
    /// ticket on an earlier link since it started (rustls keeps 8 per parent in memory, each
    /// good once and for 24 h; a parent keeps 256 sessions for all its children) sends its
    /// hello in its first flight, and the parent answers within that round trip (0.5-RTT)
    /// once the resumed session names a registered child, so the link is up a round trip
    /// sooner and with fewer flights to lose. The parent uses the link only once the
    /// handshake is done and the child's probe after its hello says it kept the link, and
    /// refuses one only once the handshake is done; a session is taken once (the parent's
    /// session store, no stateless tickets), so a replayed first flight never gets a link.
    /// Off, this node neither sends nor accepts early data.
    pub zero_rtt: bool,
}

/// quinn's (and RFC 9002's) initial round-trip estimate.
pub const DEFAULT_INITIAL_RTT: Duration = Duration::from_millis(333);

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            mtu_discovery: true,
            initial_rtt: DEFAULT_INITIAL_RTT,
            handshake_copies: 1,
            max_handshakes: 128,
            zero_rtt: true,
        }
    }
}

/// A network failure on one link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// TLS or certificate setup failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Binding or configuring the endpoint failed.
    #[error("endpoint: {0}")]
    Endpoint(String),
    /// Starting a connection failed.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to the stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from the stream failed.
    #[error("read: {0}")]
    Read(String),
    /// A frame over its cap ([`MAX_FRAME`], or [`MAX_HANDSHAKE_FRAME`] in a handshake).
    #[error("frame of {0} bytes exceeds the cap")]
    TooLarge(usize),
    /// The handshake broke a rule.
    #[error("handshake: {0}")]
    Handshake(String),
    /// A refusal: by the parent of this node's dial, or by this node of a child's (the
    /// detail says which and why).
    #[error("refused ({reason:?}): {detail}")]
    Refused {
        /// Why.
        reason: RejectReason,
        /// Detail.
        detail: String,
    },
    /// Timed out.
    #[error("timed out")]
    Timeout,
    /// The child dropped a connection after its early hello without the probe that says it
    /// kept it: a handshake it raced and did not keep.
    #[error("the child dropped the connection (a raced handshake it did not keep)")]
    Dropped,
    /// The peer took no bytes of a frame for this long (it stopped reading).
    #[error("the peer read nothing for {0:?}")]
    Stalled(Duration),
    /// The parent's host name did not resolve.
    #[error("cannot resolve {host}: {detail}")]
    Resolve {
        /// The name.
        host: String,
        /// Why.
        detail: String,
    },
}

/// Where a parent listens: an address, or a host name and port looked up again at every
/// dial (so a parent whose address changes, behind dynamic DNS, is found again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentAddr {
    /// An IP address and port.
    Socket(SocketAddr),
    /// `host:port`, resolved at each dial.
    Host(String),
}

impl From<SocketAddr> for ParentAddr {
    fn from(a: SocketAddr) -> Self {
        ParentAddr::Socket(a)
    }
}

impl std::fmt::Display for ParentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParentAddr::Socket(a) => a.fmt(f),
            ParentAddr::Host(h) => f.write_str(h),
        }
    }
}

/// Of the addresses a name has, the `attempt`-th in turn of those in the family of `local`
/// (an IPv4 socket cannot reach an IPv6 address; one on the IPv6 wildcard is dual-stack, as
/// Linux makes it by default, and reaches both), or of all if none is.
fn pick(found: &[SocketAddr], local: Option<SocketAddr>, attempt: usize) -> Option<SocketAddr> {
    let dual = local.is_some_and(|l| l.is_ipv6() && l.ip().is_unspecified());
    let family: Vec<SocketAddr> = found
        .iter()
        .copied()
        .filter(|a| !dual && Some(a.is_ipv4()) == local.map(|l| l.is_ipv4()))
        .collect();
    let pool = if family.is_empty() { found } else { &family };
    match pool.len() {
        0 => None,
        n => Some(pool[attempt % n]),
    }
}

/// A `parent_addr` that is neither an address and port nor `host:port`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an address and port or host:port")]
pub struct BadParentAddr(String);

impl std::str::FromStr for ParentAddr {
    type Err = BadParentAddr;

    /// An IP address and port, or `host:port` (checked for a port, not resolved).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(ParentAddr::Socket(a));
        }
        match s.rsplit_once(':') {
            // A colon in the host is an IPv6 address without its brackets: ambiguous.
            Some((host, port))
                if !host.is_empty()
                    && !host.contains(|c: char| c.is_whitespace() || c == ':')
                    && port.parse::<u16>().is_ok() =>
            {
                Ok(ParentAddr::Host(s.to_owned()))
            }
            _ => Err(BadParentAddr(s.to_owned())),
        }
    }
}

impl ParentAddr {
    /// The address to dial now. A host name is looked up (within `timeout`) and one of its
    /// addresses taken by [`pick`] for the endpoint at `local`, the `attempt`-th in turn, so
    /// successive dials try each.
    pub async fn resolve(
        &self,
        local: Option<SocketAddr>,
        attempt: usize,
        timeout: Duration,
    ) -> Result<SocketAddr, NetError> {
        match self {
            ParentAddr::Socket(a) => Ok(*a),
            ParentAddr::Host(h) => {
                let resolve = |detail: String| NetError::Resolve {
                    host: h.clone(),
                    detail,
                };
                let found: Vec<SocketAddr> =
                    tokio::time::timeout(timeout, tokio::net::lookup_host(h.as_str()))
                        .await
                        .map_err(|_| resolve(format!("no answer within {timeout:?}")))?
                        .map_err(|e| resolve(e.to_string()))?
                        .collect();
                pick(&found, local, attempt).ok_or_else(|| resolve("no address".into()))
            }
        }
    }
}

impl NetError {
    /// The parent closed the link because this node is kept off for what it sent (see
    /// [`close::KEPT_OFF`]): it waits as for a refusal before it dials again.
    pub fn is_kept_off(&self) -> bool {
        matches!(self, NetError::Connection(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code == close::KEPT_OFF)
    }

    /// Whether retrying soon cannot help: the certificate or adjacency was refused.
    pub fn is_permanent(&self) -> bool {
        match self {
            NetError::Refused { reason, .. } => matches!(
                reason,
                RejectReason::NotAdjacent | RejectReason::Version | RejectReason::Revoked
            ),
            NetError::Connection(quinn::ConnectionError::TransportError(e)) => {
                // TLS alerts (bad or unknown certificate) arrive as crypto errors.
                e.code.to_string().contains("crypto")
            }
            NetError::Connection(quinn::ConnectionError::ConnectionClosed(c)) => {
                c.error_code.to_string().contains("crypto")
            }
            NetError::Connection(quinn::ConnectionError::ApplicationClosed(c)) => {
                c.error_code == close::NOT_ADJACENT
            }
            _ => false,
        }
    }
}

impl LinkConfig {
    /// Refuse settings that would take links down or flood them: a keep-alive of zero, or
    /// one over half the idle timeout. With every node at most half, whichever end sets the
    /// pace of a link pings within half the idle timeout the two ends agree on (the shorter
    /// of theirs), so one lost ping does not end an idle link.
    pub fn validate(&self) -> Result<(), NetError> {
        if self.keep_alive.is_zero() || self.keep_alive > self.idle_timeout / 2 {
            return Err(NetError::Endpoint(format!(
                "the keep-alive ({:?}) must be above zero and at most half the idle timeout \
                 ({:?})",
                self.keep_alive, self.idle_timeout
            )));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(1)).contains(&self.initial_rtt) {
            return Err(NetError::Endpoint(format!(
                "the initial round trip ({:?}) must be between 10 ms and 1 s",
                self.initial_rtt
            )));
        }
        if !(1..=3).contains(&self.handshake_copies) {
            return Err(NetError::Endpoint(format!(
                "handshake copies ({}) must be between 1 and 3",
                self.handshake_copies
            )));
        }
        Ok(())
    }
}

/// Which end of a link a transport serves: a dialling child keeps its link alive; a parent
/// only backs it up.
#[derive(Debug, Clone, Copy)]
enum End {
    Child,
    Parent,
}

fn transport(cfg: &LinkConfig, end: End) -> Result<quinn::TransportConfig, NetError> {
    let mut t = quinn::TransportConfig::default();
    // The child keeps the link alive: it dials, sits behind any NAT, and pays for the bytes
    // on a village's metered line, so its own keep-alive sets what an idle link costs. quinn
    // restarts the keep-alive timer on every packet sent or received, so a parent's shorter
    // interval would otherwise set the pace of every link below it. The parent's keep-alive
    // (half its idle timeout) only fires if nothing passed either way for that long, as when
    // the child's interval is longer than that.
    t.keep_alive_interval(Some(match end {
        End::Child => cfg.keep_alive,
        End::Parent => cfg.idle_timeout / 2,
    }));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(cfg.idle_timeout)
            .map_err(|e| NetError::Endpoint(e.to_string()))?,
    ));
    // One stream per link; a few spare for future use.
    t.max_concurrent_bidi_streams(VarInt::from_u32(4));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    // Bounded buffers: quinn's per-connection receive window is unbounded by default.
    t.stream_receive_window(VarInt::from_u32(4 << 20));
    t.receive_window(VarInt::from_u32(8 << 20));
    t.send_window(8 << 20);
    // Random loss on village links is not congestion. quinn's BBR still caps its window in
    // loss recovery, but measured best of what was tried (docs/benchmarks.md).
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    if !cfg.mtu_discovery {
        t.mtu_discovery_config(None);
    }
    t.initial_rtt(cfg.initial_rtt);
    Ok(t)
}

/// A QUIC endpoint that serves children and dials the parent with this identity. The
/// address tokens its parent gives it are kept in the file `tokens` (a node's data folder,
/// so that a restarted node presents its last link's), or in memory when none.
pub fn endpoint(
    identity: &Identity,
    listen: SocketAddr,
    cfg: &LinkConfig,
    tokens: Option<&std::path::Path>,
) -> Result<Endpoint, NetError> {
    cfg.validate()?;
    let mut server_tls = identity.server_config()?;
    // QUIC allows 0 or all (RFC 9001): the amount is bounded by the transport's flow control.
    server_tls.max_early_data_size = if cfg.zero_rtt { u32::MAX } else { 0 };
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
        .map_err(|e| NetError::Endpoint(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(Arc::new(transport(cfg, End::Parent)?));
    if cfg.handshake_copies > 1 {
        // A token for each child's next handshake (QUIC's NEW_TOKEN): presented, it validates
        // the child's address at once, and only then are this node's answers copied.
        let mut tokens = quinn::ValidationTokenConfig::default();
        tokens
            .log(Arc::new(copies::UsedTokens::default()))
            .sent(1)
            .lifetime(copies::TOKEN_LIFETIME);
        server.validation_token_config(tokens);
    }
    let mut client_tls = identity.client_config()?;
    client_tls.enable_early_data = cfg.zero_rtt;
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
        .map_err(|e| NetError::Endpoint(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(Arc::new(transport(cfg, End::Child)?));
    if let Some(path) = tokens {
        client.token_store(Arc::new(tokens::DiskTokens::open(path)));
    }
    let mut endpoint_cfg = quinn::EndpointConfig::default();
    if !cfg.mtu_discovery {
        // The largest datagram this node takes, sent to every peer: theirs stop probing at it.
        endpoint_cfg
            .max_udp_payload_size(1200)
            .map_err(|e| NetError::Endpoint(e.to_string()))?;
    }
    let socket = std::net::UdpSocket::bind(listen)
        .map_err(|e| NetError::Endpoint(format!("bind {listen}: {e}")))?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| NetError::Endpoint("no async runtime for the endpoint".into()))?;
    let mut socket = runtime
        .wrap_udp_socket(socket)
        .map_err(|e| NetError::Endpoint(format!("socket on {listen}: {e}")))?;
    if cfg.handshake_copies > 1 {
        socket = Arc::new(
            copies::HandshakeCopies::new(socket, cfg.handshake_copies)
                .map_err(|e| NetError::Endpoint(format!("socket on {listen}: {e}")))?,
        );
    }
    let mut ep = Endpoint::new_with_abstract_socket(endpoint_cfg, Some(server), socket, runtime)
        .map_err(|e| NetError::Endpoint(format!("endpoint on {listen}: {e}")))?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// Write one frame; returns its size on the wire.
pub async fn write_frame(send: &mut SendStream, msg: &Msg) -> Result<usize, NetError> {
    write_frame_unless_stalled(send, msg, None).await
}

/// [`write_frame`], failing with [`NetError::Stalled`] when the peer takes no byte of it for
/// `stall`: a peer that stops reading must not hold the link (and what waits to be sent on
/// it) for ever, while a slow link that keeps taking bytes is left alone.
async fn write_frame_unless_stalled(
    send: &mut SendStream,
    msg: &Msg,
    stall: Option<Duration>,
) -> Result<usize, NetError> {
    let body = wire::encode(msg);
    if body.len() > MAX_FRAME {
        return Err(NetError::TooLarge(body.len()));
    }
    let lost = |e: quinn::WriteError| match e {
        quinn::WriteError::ConnectionLost(c) => NetError::Connection(c),
        other => NetError::Write(other),
    };
    let prefix = (body.len() as u32).to_be_bytes();
    for part in [&prefix[..], &body[..]] {
        let mut at = 0;
        while at < part.len() {
            let write = send.write(&part[at..]);
            at += match stall {
                Some(stall) => tokio::time::timeout(stall, write)
                    .await
                    .map_err(|_| NetError::Stalled(stall))?,
                None => write.await,
            }
            .map_err(lost)?;
        }
    }
    Ok(body.len() + 4)
}

/// Read one frame: `Ok(None)` when the peer finished the stream cleanly; an inner `Err` for
/// a frame that arrived whole but does not decode (the link can go on).
pub async fn read_frame(recv: &mut RecvStream) -> Result<Option<Result<Msg, WireError>>, NetError> {
    Ok(read_counted(recv).await?.map(|(m, _)| m))
}

/// Largest frame of a handshake (a hello, the probe after an early one, a parent's answer
/// or refusal): a few hundred bytes each. A peer that has not yet said who it is may not
/// make this node hold a whole [`MAX_FRAME`] for each of the handshakes it works on.
pub const MAX_HANDSHAKE_FRAME: usize = 64 << 10;

/// [`read_frame`] of a handshake's frame, at most [`MAX_HANDSHAKE_FRAME`] bytes.
async fn read_handshake_frame(
    recv: &mut RecvStream,
) -> Result<Option<Result<Msg, WireError>>, NetError> {
    Ok(read_capped(recv, MAX_HANDSHAKE_FRAME)
        .await?
        .map(|(m, _)| m))
}

/// [`read_frame`] that also returns the frame's size on the wire.
pub async fn read_counted(
    recv: &mut RecvStream,
) -> Result<Option<(Result<Msg, WireError>, usize)>, NetError> {
    read_capped(recv, MAX_FRAME).await
}

/// [`read_counted`] of a frame of at most `cap` bytes.
async fn read_capped(
    recv: &mut RecvStream,
    cap: usize,
) -> Result<Option<(Result<Msg, WireError>, usize)>, NetError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(read_error(e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > cap {
        return Err(NetError::TooLarge(len));
    }
    // Grown as the bytes arrive, not allocated whole from the length: a peer announcing a
    // large frame and sending it slowly holds only what it sent.
    let mut body = Vec::new();
    while body.len() < len {
        let at = body.len();
        body.resize(at + (len - at).min(READ_PIECE), 0);
        recv.read_exact(&mut body[at..]).await.map_err(read_error)?;
    }
    Ok(Some((wire::decode(&body), len + 4)))
}

/// Most characters of a peer's text (an error quoting its frame, a refusal's detail) kept
/// in logs, errors and status.
const MAX_DETAIL: usize = 256;

/// A handshake frame as named in an error: its type, or why it did not read.
fn frame_named(frame: &Option<Result<Msg, WireError>>) -> String {
    match frame {
        None => "the end of the stream".to_owned(),
        Some(Ok(m)) => format!("a {} frame", m.kind()),
        Some(Err(e)) => format!(
            "an unreadable frame ({})",
            wire::printable(&e.to_string(), MAX_DETAIL)
        ),
    }
}

/// Keep the connection error (and so the peer's close code) when a read fails.
fn read_error(e: quinn::ReadExactError) -> NetError {
    match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
            NetError::Connection(c)
        }
        other => NetError::Read(other.to_string()),
    }
}

/// This build's name and version, as hellos carry it.
pub const SOFTWARE: &str = concat!("grassroots ", env!("CARGO_PKG_VERSION"));

fn hello_of(identity: &Identity) -> Msg {
    Msg::Hello(Hello {
        versions: VERSIONS,
        capabilities: CAPABILITIES,
        unit: identity.unit.clone(),
        software: SOFTWARE.to_owned(),
    })
}

/// A peer's software name as its hello gives it, cut to 64 characters of printable text:
/// it is shown in status and logs.
fn shown(software: &str) -> String {
    wire::printable(software, 64)
}

/// Why a parent and a child that speak these versions (and run this software, where known)
/// cannot talk, and which of the two to upgrade: said the same way at both ends.
fn versions_apart(
    parent: Versions,
    parent_software: Option<&str>,
    child: Versions,
    child_software: Option<&str>,
) -> String {
    let named = |who: &str, software: Option<&str>| match software {
        Some(s) => format!("{who} ({s})"),
        None => who.to_owned(),
    };
    let older = if parent.newest < child.oldest {
        "parent"
    } else {
        "child"
    };
    format!(
        "{} speaks {parent} and {} {child}: upgrade the {older}",
        named("the parent", parent_software),
        named("the child", child_software)
    )
}

/// The peer's unit from its verified certificate, checked to have been issued by the CA of
/// the peer's parent, and the certificate's fingerprint.
fn verify_peer(conn: &Connection, identity: &Identity) -> Result<Verified, NetError> {
    let certs = conn
        .peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| NetError::Handshake("peer presented no certificate".into()))?;
    let (unit, issuer) = pki::peer_unit(&certs, &identity.deployment)?;
    if issuer != pki::expected_issuer(&unit, &identity.deployment) {
        return Err(NetError::Refused {
            reason: RejectReason::NotAdjacent,
            detail: format!("certificate of {unit} issued by {issuer:?}, not by its parent's CA"),
        });
    }
    let cas = identity
        .check_issued(&unit, &certs)
        .map_err(|e| NetError::Refused {
            reason: RejectReason::NotAdjacent,
            detail: e.to_string(),
        })?;
    let leaf = certs
        .first()
        .map(|c| pki::Revocable::of(unit.clone(), c))
        .ok_or_else(|| NetError::Handshake("peer presented no certificate".into()))?;
    let fp = leaf.key.clone();
    Ok((unit, fp, std::iter::once(leaf).chain(cas).collect()))
}

/// A peer's unit, its certificate's key fingerprint, and the certificates its link rests on:
/// its own, then the CAs it was checked through ([`Identity::check_issued`]).
type Verified = (UnitId, String, Vec<pki::Revocable>);

/// Why a peer's certificate is revoked, if it is: the certificate itself in its issuer's
/// profile, or a CA it was checked through in the profile of the unit that issued that CA
/// (a unit issued again after its machine was stolen: certificates its old CA's key makes
/// since are refused once that CA is revoked, wherever the old CA is still held). `certs`:
/// the peer's own first, as [`verify_peer`] lists them.
pub fn revoked_why(
    reader: &StoreReader,
    peer: &UnitId,
    certs: &[pki::Revocable],
) -> Option<String> {
    let (first, rest) = certs.split_first()?;
    if is_revoked(reader, first) {
        return Some(format!("certificate {} of {peer} is revoked", first.key));
    }
    rest.iter().find(|ca| is_revoked(reader, ca)).map(|ca| {
        format!(
            "the CA {} of {}, through which the certificate of {peer} was checked, is revoked",
            ca.key, ca.unit
        )
    })
}

/// Whether the issuer of `cert` (the parent of its unit, or the unit itself at the root)
/// lists it as revoked in its profile, as far as this node knows.
pub fn is_revoked(reader: &StoreReader, cert: &pki::Revocable) -> bool {
    let issuer = pki::issuer_of(&cert.unit);
    let peer = &cert.unit;
    match reader.unit(&issuer) {
        Ok(Some(p)) => p.revoked.iter().any(|r| cert.named_by(r)),
        Ok(None) => false,
        Err(e) => {
            // Fail closed: a store that cannot answer does not let the peer in.
            tracing::error!(%peer, "cannot read revocations: {e}");
            true
        }
    }
}

/// An established, hello-checked link.
pub struct Link {
    /// The connection.
    pub conn: Connection,
    /// Our half of the link's stream.
    pub send: SendStream,
    /// Their half.
    pub recv: RecvStream,
    /// The unit at the other end.
    pub peer: UnitId,
    /// Key fingerprint of the certificate the peer presented.
    pub fingerprint: String,
    /// The certificates the link rests on: the peer's, then the CAs it was checked through.
    pub certs: Vec<pki::Revocable>,
    /// The protocol version the link runs at: the newest both sides speak.
    pub version: u8,
    /// The peer's software, as its hello names it.
    pub software: String,
    /// The child's hello went in its first flight (0-RTT) and the parent took it (at the
    /// parent: the hello says so, and the child's probe after it said it kept the link).
    pub early: bool,
}

/// Dial `parent` at `addr` and complete the hello, racing handshakes (see
/// `race_handshakes`). Used by the dial loop and by tests that play a (possibly hostile)
/// child.
pub async fn connect_parent(
    endpoint: &Endpoint,
    identity: &Identity,
    parent: &UnitId,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Link, NetError> {
    dial(endpoint, identity, parent, addr, timeout, MAX_RACING).await
}

/// [`connect_parent`] with at most `racing` handshakes at once.
async fn dial(
    endpoint: &Endpoint,
    identity: &Identity,
    parent: &UnitId,
    addr: SocketAddr,
    timeout: Duration,
    racing: usize,
) -> Result<Link, NetError> {
    let fut = async {
        tracing::debug!(%parent, %addr, "dialing");
        let hello = hello_of(identity);
        let (conn, early_streams) = race_handshakes(
            endpoint,
            addr,
            &parent.dns_name(&identity.deployment),
            racing,
            &hello,
        )
        .await?;
        // A hello that went on a stream opened after the handshake was not early, though
        // it says so: the parent waits for a probe after it all the same.
        let early = early_streams
            .as_ref()
            .is_some_and(|(_, recv)| recv.is_0rtt());
        tracing::debug!(%parent, early, "handshake done");
        let (peer, fingerprint, certs) = verify_peer(&conn, identity)?;
        if &peer != parent {
            conn.close(close::NOT_ADJACENT, b"not my parent");
            return Err(NetError::Refused {
                reason: RejectReason::NotAdjacent,
                detail: format!("{peer} answered for {parent}"),
            });
        }
        // The hello went in the first flight (0-RTT) and the parent took it, or it goes now.
        let (mut send, mut recv) = match early_streams {
            Some(mut streams) => {
                // This side keeps this connection: a parent uses a link with an early hello
                // only once a frame after it says so (others raced may have been finished).
                write_frame(&mut streams.0, &Msg::Probe).await?;
                streams
            }
            None => {
                let (mut send, recv) = conn.open_bi().await?;
                write_frame(&mut send, &hello).await?;
                (send, recv)
            }
        };
        // Probe while the answer is awaited, as a waiting link does (see `run_link`): a lost
        // hello is then noticed from the probes' acknowledgements, not after QUIC's backed-off
        // probe timeout. The parent reads the hello first and ignores the probes after it.
        let answer = {
            let answer = read_handshake_frame(&mut recv);
            tokio::pin!(answer);
            let mut probing = true;
            loop {
                tokio::select! {
                    a = &mut answer => break a,
                    () = tokio::time::sleep(PROBE_AFTER), if probing => {
                        // A failed probe ends the probing, not the wait: the answer (a
                        // parent's Reject, say) or the connection's error is still read.
                        probing = write_frame(&mut send, &Msg::Probe).await.is_ok();
                    }
                }
            }
        };
        let hello = match answer? {
            Some(Ok(Msg::Hello(h))) if h.unit == peer => agreed(h),
            Some(Err(WireError::Version(theirs))) => Err(theirs),
            Some(Ok(Msg::Hello(h))) => {
                return Err(NetError::Handshake(format!(
                    "hello from {} answering for {peer}",
                    h.unit
                )));
            }
            Some(Ok(Msg::Reject { reason, detail, .. })) => {
                let detail = wire::printable(&detail, MAX_DETAIL);
                return Err(NetError::Refused { reason, detail });
            }
            None => return Err(NetError::Handshake("parent closed the stream".into())),
            other => {
                return Err(NetError::Handshake(format!(
                    "expected hello, got {}",
                    frame_named(&other)
                )));
            }
        };
        match hello {
            Ok((version, h)) => Ok(Link {
                conn,
                send,
                recv,
                peer,
                fingerprint,
                certs,
                version,
                software: shown(&h.software),
                early,
            }),
            // A parent of another release is refused like one that refused us: for good.
            Err(theirs) => {
                conn.close(close::HANDSHAKE, b"version");
                Err(NetError::Refused {
                    reason: RejectReason::Version,
                    detail: versions_apart(theirs, None, VERSIONS, Some(SOFTWARE)),
                })
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| NetError::Timeout)?
}

/// The version a link runs at with a peer of this hello, or the versions it speaks when it
/// shares none with this build (which decoding already refuses: [`WireError::Version`]).
fn agreed(h: Hello) -> Result<(u8, Hello), Versions> {
    match VERSIONS.agree(h.versions) {
        Some(v) => Ok((v, h)),
        None => Err(h.versions),
    }
}

/// The QUIC handshake with the parent, raced: while none has completed, another starts every
/// [`RACE_AFTER`], up to `racing` at once, and the first to complete wins (the others are
/// dropped, which closes them). A handshake flight lost on a lossy link waits out QUIC's probe
/// timeout, which doubles with each loss in a row, so one unlucky handshake can take 10 s; a
/// fresh one starts with a short timeout again. Costs a few KB only on a link that is already
/// slow to answer; on a healthy link the first handshake completes long before the second
/// would start.
async fn race_handshakes(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
    racing: usize,
    hello: &Msg,
) -> Result<(Connection, Option<(SendStream, RecvStream)>), NetError> {
    // Handshake datagrams to the parent are copied while this runs, if the node says so.
    let _dialling = endpoint
        .local_addr()
        .map(|local| copies::copying(local, addr, copies::Side::Dial));
    let mut running = tokio::task::JoinSet::new();
    running.spawn(handshake(
        early_start(endpoint.connect(addr, server_name)?),
        hello.clone(),
    ));
    loop {
        let room = running.len() < racing;
        tokio::select! {
            done = running.join_next() => match done {
                Some(Ok(Ok(conn))) => return Ok(conn),
                // A refused certificate is refused again: no point waiting for the others.
                Some(Ok(Err(e))) if running.is_empty() || e.is_permanent() => return Err(e),
                Some(Ok(Err(e))) => tracing::debug!(%addr, "one of the raced handshakes failed: {e}"),
                Some(Err(e)) => return Err(NetError::Handshake(format!("handshake task: {e}"))),
                None => return Err(NetError::Timeout),
            },
            () = tokio::time::sleep(RACE_AFTER), if room => {
                tracing::debug!(%addr, racing = running.len() + 1, "handshake slow; starting another");
                running.spawn(handshake(early_start(endpoint.connect(addr, server_name)?), hello.clone()));
            }
        }
    }
}

/// A handshake as it starts: whole, or early with its stream for the hello.
enum Start {
    /// No session to resume (or none that allows early data).
    Whole(quinn::Connecting),
    /// Resuming a session: the connection usable in 0-RTT, quinn's signal of the parent's
    /// answer, and the stream opened for the early hello (none when the connection had no
    /// stream to give at once).
    Early {
        conn: Connection,
        accepted: quinn::ZeroRttAccepted,
        stream: Option<(SendStream, RecvStream)>,
    },
}

/// Start a handshake: with a session that allows early data, open the hello's stream now,
/// where the dial called `connect`, and not in the task that runs the handshake. That task
/// may run only once the handshake is done (a busy runtime); a stream opened then is an
/// ordinary stream, which a rejection of the early data does not discard.
fn early_start(connecting: quinn::Connecting) -> Start {
    match connecting.into_0rtt() {
        Ok((conn, accepted)) => {
            // Polled once: a stream is there at once within the session's stream limit.
            let stream = {
                let open = std::pin::pin!(conn.open_bi());
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                match open.poll(&mut cx) {
                    std::task::Poll::Ready(Ok(s)) => Some(s),
                    _ => None,
                }
            };
            Start::Early {
                conn,
                accepted,
                stream,
            }
        }
        Err(connecting) => Start::Whole(connecting),
    }
}

/// One handshake of a dial, until it is done. With a session from an earlier link to this
/// parent that allows early data, `hello` goes in the first flight (0-RTT) on the link's
/// stream, which is returned when the parent took it. The parent's certificate is checked
/// after, as on any link: the hello tells nothing secret, and only the holder of the session
/// reads it. A parent that no longer holds the session (restarted) refuses the early data;
/// the caller then sends the hello again on the finished handshake.
async fn handshake(
    start: Start,
    hello: Msg,
) -> Result<(Connection, Option<(SendStream, RecvStream)>), NetError> {
    let (conn, accepted, stream) = match start {
        Start::Whole(connecting) => return Ok((connecting.await?, None)),
        Start::Early {
            conn,
            accepted,
            stream,
        } => (conn, accepted, stream),
    };
    let early = match hello {
        Msg::Hello(h) => Msg::Hello(Hello {
            capabilities: h.capabilities | EARLY_HELLO,
            ..h
        }),
        other => other,
    };
    let streams = match stream {
        Some((mut send, recv)) => write_frame(&mut send, &early).await.map(|_| (send, recv)),
        None => Err(NetError::Handshake("no stream for an early hello".into())),
    };
    let accepted = accepted.await;
    if let Some(e) = conn.close_reason() {
        return Err(e.into());
    }
    // A stream opened in 0-RTT is discarded with the early data when the parent refuses it
    // (dropping it then says nothing to the parent); one opened after the handshake carries
    // the hello all the same, and dropping it would stop the stream the parent answers on.
    Ok((
        conn,
        streams.ok().filter(|(_, recv)| accepted || !recv.is_0rtt()),
    ))
}

/// Close a child's connection with `code` once its handshake is done (a close sent before,
/// quinn sends as a plain transport error, which the child would take for a passing
/// failure and redial soon). A handshake that never completes (a replayed first flight)
/// is not refused: the caller's timeout ends it.
async fn refuse(
    conn: &Connection,
    done: &mut Option<quinn::ZeroRttAccepted>,
    code: VarInt,
    reason: &'static [u8],
) -> Result<(), NetError> {
    handshake_done(conn, done.take()).await?;
    conn.close(code, reason);
    Ok(())
}

/// Wait for a connection's handshake to be done (`done`: quinn's signal of an early
/// connection; none when it was awaited whole): an error if the connection ended.
async fn handshake_done(
    conn: &Connection,
    done: Option<quinn::ZeroRttAccepted>,
) -> Result<(), NetError> {
    // quinn's signal comes when the handshake is done or the connection ended (at a server
    // its value says whether early data was taken, not which).
    if let Some(done) = done {
        done.await;
    }
    match conn.close_reason() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Whether an incoming link ended because the child closed it without a reason, as it does
/// to a raced handshake that lost (mid-handshake, QUIC reports an application close as the
/// transport's APPLICATION_ERROR).
fn dropped_by_child(e: &NetError) -> bool {
    match e {
        NetError::Dropped => true,
        NetError::Connection(quinn::ConnectionError::ApplicationClosed(c)) => {
            c.error_code == close::BYE
        }
        NetError::Connection(quinn::ConnectionError::ConnectionClosed(c)) => {
            c.error_code == quinn::TransportErrorCode::APPLICATION_ERROR
        }
        _ => false,
    }
}

/// Accept a link from a child: its certificate, registration and hello checked. A registered
/// child refused after its certificate was checked (revoked, of another release, a bad hello)
/// is told `store`, so that the refusal shows in this node's status of the link (a timeout or
/// a dropped connection is not: a child's raced handshakes end so).
async fn accept_child(
    incoming: quinn::Incoming,
    mut copied: Option<copies::Copying>,
    identity: &Identity,
    children: &[UnitId],
    store: &StoreHandle,
    reader: &StoreReader,
    timeout: Duration,
) -> Result<Link, NetError> {
    let mut known = None;
    let fut = async {
        // Always possible for a server: the connection before its handshake is done.
        let (conn, mut done) = match incoming.accept()?.into_0rtt() {
            Ok((conn, done)) => (conn, Some(done)),
            Err(connecting) => {
                let conn = connecting.await?;
                (conn, None)
            }
        };
        // A child resuming a session of an earlier link is known from its first flight: the
        // session holds its certificates, checked then, and rustls takes a session once (its
        // session store; this node makes no stateless tickets), so a replayed flight resumes
        // nothing. Its hello, sent in that flight (0-RTT), is answered within that round trip
        // (0.5-RTT), which only that child can read. Any other child's handshake must be done
        // first. Either way a refusal waits for the handshake to be done, so that the child
        // reads its code (quinn sends an application's close mid-handshake as a plain
        // transport error), and the link is used only once the handshake is done.
        if conn.peer_identity().is_none() {
            handshake_done(&conn, done.take()).await?;
            // The handshake is done: nothing more of this child's is copied.
            copied = None;
        }
        let (peer, fingerprint, certs) = match verify_peer(&conn, identity) {
            Ok(p) => p,
            Err(e) => {
                refuse(
                    &conn,
                    &mut done,
                    close::NOT_ADJACENT,
                    b"certificate not issued by the peer's parent",
                )
                .await?;
                return Err(e);
            }
        };
        if children.contains(&peer) {
            known = Some(peer.clone());
        }
        if let Some(detail) = revoked_why(reader, &peer, &certs) {
            refuse(
                &conn,
                &mut done,
                close::NOT_ADJACENT,
                b"certificate revoked",
            )
            .await?;
            return Err(NetError::Refused {
                reason: RejectReason::Revoked,
                detail,
            });
        }
        if !children.contains(&peer) {
            refuse(
                &conn,
                &mut done,
                close::NOT_ADJACENT,
                b"not a registered child",
            )
            .await?;
            return Err(NetError::Refused {
                reason: RejectReason::NotAdjacent,
                detail: format!("{peer} is not a registered child of {}", identity.unit),
            });
        }
        let (mut send, mut recv) = conn.accept_bi().await?;
        let (hello, early) = match read_handshake_frame(&mut recv).await? {
            Some(Ok(Msg::Hello(h))) if h.unit == peer => {
                let early = h.capabilities & EARLY_HELLO != 0;
                (agreed(h), early)
            }
            Some(Err(WireError::Version(theirs))) => (Err(theirs), false),
            other => {
                refuse(&conn, &mut done, close::HANDSHAKE, b"expected hello").await?;
                return Err(NetError::Handshake(format!(
                    "expected a hello naming {peer}, got {}",
                    frame_named(&other)
                )));
            }
        };
        match hello {
            Ok((version, h)) => {
                write_frame(&mut send, &hello_of(identity)).await?;
                handshake_done(&conn, done.take()).await?;
                drop(copied);
                // A child racing handshakes sends its hello early on each that can resume,
                // and may finish one it then drops: an early hello's link is used only once
                // the child says it kept it, with a probe after the hello. Else a dropped
                // handshake could take the place of the child's live link.
                if early {
                    match read_handshake_frame(&mut recv).await? {
                        Some(Ok(Msg::Probe)) => {}
                        // Its stream ended before its connection: dropped all the same.
                        None => return Err(NetError::Dropped),
                        other => {
                            conn.close(close::HANDSHAKE, b"expected a probe");
                            return Err(NetError::Handshake(format!(
                                "expected a probe after an early hello, got {}",
                                frame_named(&other)
                            )));
                        }
                    }
                }
                Ok(Link {
                    conn,
                    send,
                    recv,
                    peer,
                    fingerprint,
                    certs,
                    version,
                    software: shown(&h.software),
                    early,
                })
            }
            Err(theirs) => {
                // Said to the child, which shows it and redials only at its slowest pace.
                let detail = versions_apart(VERSIONS, Some(SOFTWARE), theirs, None);
                let reject = Msg::Reject {
                    reason: RejectReason::Version,
                    doc: None,
                    detail: detail.clone(),
                };
                let _ = write_frame(&mut send, &reject).await;
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                // Refused whatever came of the close: the child drops the connection as soon
                // as it reads the refusal.
                let _ = refuse(&conn, &mut done, close::HANDSHAKE, b"version").await;
                Err(NetError::Refused {
                    reason: RejectReason::Version,
                    detail,
                })
            }
        }
    };
    let accepted = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| NetError::Timeout)
        .and_then(|r| r);
    // Only refusals: a raced handshake the child dropped, or one that timed out when its
    // close was lost, is no failure of the child's (its link may well be up meanwhile).
    if let (Err(e @ (NetError::Refused { .. } | NetError::Handshake(_))), Some(peer)) =
        (&accepted, known)
    {
        store.dial_failed(peer, e.to_string()).await;
    }
    accepted
}

/// Run a link until it ends or `cancel` fires: register with the store, pump frames both
/// ways, unregister. Reading and writing are two futures so neither is cancelled mid-frame.
/// Returns the peer's refusal when it ended the link as one (a parent that revoked this
/// node's certificate), which a dialer treats as a refused dial.
pub async fn run_link(
    link: Link,
    store: StoreHandle,
    cancel: CancellationToken,
) -> Option<NetError> {
    run_link_noting(link, store, cancel, |_| {}).await
}

/// [`run_link`], calling `up` once the store has taken the link.
async fn run_link_noting(
    link: Link,
    store: StoreHandle,
    cancel: CancellationToken,
    up: impl FnOnce(&Connection),
) -> Option<NetError> {
    let Link {
        conn,
        mut send,
        mut recv,
        peer,
        fingerprint,
        certs,
        version,
        software,
        early,
    } = link;
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let counters = Arc::new(LinkCounters {
        certs,
        ..LinkCounters::new(fingerprint, version, software)
    });
    // Frames handed to the store and not yet handled hold their size of this budget, so a
    // peer sending faster than the store handles waits on its own link (QUIC's flow control
    // then holds it back) instead of filling the store's inbox for every link.
    let budget = Arc::new(tokio::sync::Semaphore::new(LINK_INBOX_BYTES));
    match store
        .peer_up(peer.clone(), out_tx.clone(), counters.clone())
        .await
    {
        Ok(()) => {}
        Err(StoreError::Revoked(_)) => {
            conn.close(close::NOT_ADJACENT, b"certificate revoked");
            return None;
        }
        Err(e @ StoreError::KeptOff { .. }) => {
            // Only a child is kept off; it waits as for a refusal before it dials again.
            conn.close(close::KEPT_OFF, e.to_string().as_bytes());
            return None;
        }
        Err(_) => {
            conn.close(close::BYE, b"shutting down");
            return None;
        }
    }
    up(&conn);
    tracing::info!(%peer, remote = %conn.remote_address(), protocol = version, software = %counters.software, early, "link up");
    let reader = async {
        loop {
            match read_counted(&mut recv).await {
                // A probe only made the transport acknowledge; it is not data.
                Ok(Some((Ok(Msg::Probe), _))) => {}
                Ok(Some((Ok(msg), size))) => {
                    counters.received(size);
                    let want = size.clamp(MIN_FRAME_CHARGE, LINK_INBOX_BYTES) as u32;
                    let Ok(held) = budget.clone().acquire_many_owned(want).await else {
                        return "store closed".to_owned();
                    };
                    let session = counters.session;
                    if store
                        .from_peer(peer.clone(), session, msg, Some(held))
                        .await
                        .is_err()
                    {
                        return "store closed".to_owned();
                    }
                }
                Ok(Some((Err(e), size))) => {
                    counters.received(size);
                    // Answered here, without the store: counted and capped here too.
                    let malformed = counters.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                    if malformed > MAX_MALFORMED_FRAMES {
                        counters.misbehaved.store(true, Ordering::Relaxed);
                        return format!("{malformed} malformed frames; link closed");
                    }
                    // The error may quote the frame: cut, as a peer's bytes in any text.
                    let detail = wire::printable(&e.to_string(), MAX_DETAIL);
                    if malformed <= 32 {
                        tracing::warn!(%peer, "malformed frame: {detail}");
                    }
                    let reject = Msg::Reject {
                        reason: RejectReason::Malformed,
                        doc: None,
                        detail,
                    };
                    counters
                        .queued_out
                        .fetch_add(wire::weight(&reject), Ordering::Relaxed);
                    let _ = out_tx.send(reject);
                }
                Ok(None) => return "peer finished the stream".to_owned(),
                Err(NetError::TooLarge(n)) => {
                    counters.misbehaved.store(true, Ordering::Relaxed);
                    conn.close(close::TOO_LARGE, b"frame over the size cap");
                    return format!("peer sent a {n} byte frame; link closed");
                }
                Err(e) => return e.to_string(),
            }
        }
    };
    let writer = async {
        // While a reconciliation waits for the peer and the link has been silent both ways
        // for a probe interval, send a probe: its acknowledgement tells QUIC which earlier
        // datagrams were lost, where waiting for the retransmission timer (doubled after
        // each loss) would stall a lossy village link for seconds. Random loss is not
        // congestion. Probes are not counted as traffic.
        let mut tick = tokio::time::interval(PROBE_AFTER);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sent = Instant::now();
        // Probes since the peer was last heard from (by the time of that frame).
        let (mut unanswered, mut heard_at) = (0u32, 0u64);
        loop {
            tokio::select! {
                msg = out_rx.recv() => {
                    let Some(msg) = msg else { break };
                    match write_frame_unless_stalled(&mut send, &msg, Some(WRITE_STALL)).await {
                        Ok(size) => counters.sent(size),
                        Err(e) => return e.to_string(),
                    }
                    counters.queued_out.fetch_sub(wire::weight(&msg), Ordering::Relaxed);
                    last_sent = Instant::now();
                }
                _ = tick.tick() => {
                    let last_frame = counters.last_frame_ms.load(Ordering::Relaxed);
                    if last_frame != heard_at {
                        (unanswered, heard_at) = (0, last_frame);
                    }
                    let heard = now_ms().saturating_sub(last_frame);
                    // The peer's root is overdue only after two round trips of silence: its
                    // answer to this side's hello and root takes one.
                    let after = if counters.awaiting.load(Ordering::Relaxed) {
                        Some(PROBE_AFTER)
                    } else if counters.awaiting_root.load(Ordering::Relaxed) {
                        Some(PROBE_AFTER.max(2 * conn.rtt()))
                    } else {
                        None
                    };
                    if let Some(after) = after
                        && unanswered < MAX_UNANSWERED_PROBES
                        && last_sent.elapsed() >= after
                        && u128::from(heard) >= after.as_millis()
                    {
                        unanswered += 1;
                        if let Err(e) =
                            write_frame_unless_stalled(&mut send, &Msg::Probe, Some(WRITE_STALL))
                                .await
                        {
                            return e.to_string();
                        }
                        counters.probes_out.fetch_add(1, Ordering::Relaxed);
                        last_sent = Instant::now();
                    }
                }
            }
        }
        "outbox closed".to_owned()
    };
    let why = tokio::select! {
        biased;
        _ = cancel.cancelled() => "shutting down".to_owned(),
        _ = counters.close.cancelled() => {
            "closed by this node (revoked, replaced by a newer connection, too many refused \
             messages, or not reading what it is sent)"
                .to_owned()
        }
        r = reader => r,
        w = writer => w,
    };
    store.peer_down(peer.clone(), counters.session).await;
    if counters.revoked.load(Ordering::Relaxed) {
        // A refusal, at once (nothing more is owed to a revoked peer): its dialer sees the
        // code and does not redial, which would race the revocation's commit.
        conn.close(close::NOT_ADJACENT, b"certificate revoked");
        tracing::info!(%peer, "link down: {why}");
        return None;
    }
    // Orderly end: finish our stream and give the peer a moment to read it before closing,
    // since close() drops data in flight.
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
    // Read after that wait: a peer that refuses this node closes the connection right
    // after, or instead of, finishing its own stream.
    let refused = conn
        .close_reason()
        .map(NetError::Connection)
        .filter(|e| e.is_permanent() || e.is_kept_off());
    conn.close(close::BYE, b"bye");
    tracing::info!(%peer, "link down: {why}");
    refused
}

/// What every link task needs.
#[derive(Clone, Debug)]
pub struct LinkContext {
    /// This node's identity.
    pub identity: Arc<Identity>,
    /// The store to feed.
    pub store: StoreHandle,
    /// Views, for revocation checks.
    pub reader: StoreReader,
    /// Link timing.
    pub cfg: LinkConfig,
    /// Cancelled at shutdown.
    pub cancel: CancellationToken,
}

/// Whether TLS ended the handshake (an alert: a certificate refused, say).
fn tls_refused(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Connection(quinn::ConnectionError::TransportError(t))
            if u64::from(t.code) & !0xff == 0x100
    )
}

/// Warnings of one kind logged per minute; the rest go to debug level and are counted in
/// the first warning of a later minute.
const WARNINGS_PER_MINUTE: u32 = 10;

/// How many warnings of one kind were logged this minute, so that a peer sending garbage
/// cannot flood the log.
#[derive(Debug, Default)]
struct LogBudget {
    /// The minute's start, warnings logged in it, and those not logged since the last one.
    state: std::sync::Mutex<(Option<Instant>, u32, u32)>,
}

impl LogBudget {
    /// Whether one more may be logged as a warning at `now`, with how many were not since
    /// the last that was.
    fn take(&self, now: Instant) -> Option<u32> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (start, logged, skipped) = &mut *state;
        if start.is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(60)) {
            (*start, *logged) = (Some(now), 0);
        }
        if *logged >= WARNINGS_PER_MINUTE {
            *skipped += 1;
            return None;
        }
        *logged += 1;
        Some(std::mem::take(skipped))
    }

    /// Log `message` about `remote` as a warning while the budget allows (saying how many
    /// went to the debug level since the last), else at debug level.
    fn warn(&self, remote: SocketAddr, message: &str) {
        match self.take(Instant::now()) {
            Some(0) => tracing::warn!(%remote, "{message}"),
            Some(n) => tracing::warn!(
                %remote,
                "{message} ({n} more such since the last such warning, logged at debug level)"
            ),
            None => tracing::debug!(%remote, "{message}"),
        }
    }
}

/// Accept registered children until cancelled; each accepted link runs on `tasks`.
pub async fn accept_loop(
    endpoint: Endpoint,
    ctx: LinkContext,
    children: Arc<Vec<UnitId>>,
    tasks: TaskTracker,
) {
    // The socket's address, the key of the handshakes it copies: asked once, not per child.
    let local = endpoint.local_addr().ok();
    let failures = Arc::new(LogBudget::default());
    let refusals = Arc::new(LogBudget::default());
    let overload = LogBudget::default();
    let gate = Arc::new(admission::Admission::new(ctx.cfg.max_handshakes));
    loop {
        let incoming = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return,
            i = endpoint.accept() => match i { Some(i) => i, None => return },
        };
        let (ctx, children) = (ctx.clone(), children.clone());
        let (failures, refusals) = (failures.clone(), refusals.clone());
        let remote = incoming.remote_address();
        // A handshake from the address this node is dialling is not a child's (a parent never
        // dials its child): a forged source, whose answers would be copied with the dial's.
        if local.is_some_and(|l| copies::is_dialling(l, remote)) {
            tracing::debug!(%remote, "ignored a handshake from the parent's address");
            incoming.ignore();
            continue;
        }
        // Each kind of sender leaves a share to the ones QUIC knows more of (`admission`):
        // forged Initials cannot take what children come back to through a Retry, nor
        // senders answering Retries what children linked from lately get.
        let validated = incoming.remote_address_validated();
        let sender = gate.sender(remote, validated, Instant::now());
        let permit = match gate.admit(remote, sender) {
            Ok(permit) => permit,
            Err(turned) => {
                let answer = if !validated && incoming.may_retry() {
                    // Stateless: only a sender that receives the Retry comes back, validated.
                    let _ = incoming.retry();
                    "asked to retry"
                } else {
                    incoming.refuse();
                    "refused"
                };
                let why = match turned {
                    admission::Turned::Crowded { held } => format!(
                        "{held} handshakes in progress from {}, the most one source holds while the node is busy",
                        admission::source_label(remote)
                    ),
                    admission::Turned::Busy => {
                        let (share, whose) = match sender {
                            admission::Sender::Unvalidated => {
                                ("half of ", "addresses not validated")
                            }
                            admission::Sender::Validated => (
                                "three quarters of ",
                                "addresses no child linked from lately",
                            ),
                            admission::Sender::Known => ("", "any address"),
                        };
                        format!(
                            "{share}the {} handshakes this node takes at once are in progress, the most for {whose}",
                            gate.most()
                        )
                    }
                };
                overload.warn(remote, &format!("{why}: a new one was {answer}"));
                continue;
            }
        };
        let gate = gate.clone();
        // A child whose address QUIC validated (it presented a token from an earlier link)
        // has this node's handshake datagrams copied, if the node says so: no amplification
        // limit applies to a validated address.
        let copied = local
            .filter(|_| ctx.cfg.handshake_copies > 1 && incoming.remote_address_validated())
            .map(|l| copies::copying(l, remote, copies::Side::Accept));
        tasks.spawn(async move {
            let accepted = accept_child(
                incoming,
                copied,
                &ctx.identity,
                &children,
                &ctx.store,
                &ctx.reader,
                ctx.cfg.handshake_timeout,
            )
            .await;
            drop(permit);
            match accepted {
                Ok(link) => {
                    // Its address is known once the store takes the link, and again as it
                    // ends (QUIC follows a child that moves; a link may outlast a week).
                    let conn = link.conn.clone();
                    let mut was_up = false;
                    let noted = |c: &Connection| {
                        gate.linked(c.remote_address(), Instant::now());
                        was_up = true;
                    };
                    run_link_noting(link, ctx.store, ctx.cancel, noted).await;
                    if was_up {
                        gate.linked(conn.remote_address(), Instant::now());
                    }
                }
                // A child that raced handshakes drops the ones that lost: not a refusal.
                Err(e) if dropped_by_child(&e) => {
                    tracing::debug!(%remote, "an incoming handshake was dropped by the child")
                }
                // Refused for what a certificate that checked out, or the hello, said: worth
                // an operator's eye, but a certificate holder redialling in a loop (a revoked
                // child) must not flood the log either.
                Err(e @ (NetError::Refused { .. } | NetError::Handshake(_) | NetError::Pki(_))) => {
                    refusals.warn(remote, &format!("refused an incoming link: {e}"));
                }
                // Refused by TLS (a certificate of no unit's CA, expired, of another
                // deployment) or failed in transport (a timeout): anyone can cause those, so
                // they are logged a few a minute.
                Err(e) => {
                    let what = if tls_refused(&e) {
                        "refused an incoming link"
                    } else {
                        "an incoming handshake failed"
                    };
                    failures.warn(remote, &format!("{what}: {e}"));
                }
            }
        });
    }
}

/// Keep a link to the parent up until cancelled: dial, run, redial with backoff + jitter. A
/// refused or revoked certificate or adjacency is permanent: it is logged loudly and retried
/// only at the slowest pace, never in a hot loop.
pub async fn dial_loop(endpoint: Endpoint, ctx: LinkContext, parent: UnitId, at: ParentAddr) {
    let cfg = &ctx.cfg;
    let rng = SystemRandom::new();
    let mut backoff = cfg.backoff_min;
    let mut failed_in_a_row = 0u32;
    while !ctx.cancel.is_cancelled() {
        let mut delay = backoff;
        // Raced handshakes help a lossy link, not a parent that is down: after two failed
        // dials in a row, one handshake at a time, so a village whose parent is away does
        // not spend four times the dial traffic on a metered line.
        let racing = if failed_in_a_row >= 2 { 1 } else { MAX_RACING };
        let resolved = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            r = at.resolve(endpoint.local_addr().ok(), failed_in_a_row as usize, cfg.handshake_timeout) => r,
        };
        // A stop waits out a dial in progress (at most the handshake timeout): a dial
        // dropped mid-handshake leaves its connection to close implicitly, and the UDP port
        // stays held while it drains (three probe timeouts, seconds before a round trip is
        // measured), so a node restarted at once could not bind it.
        let attempt = match resolved {
            Ok(resolved) => {
                dial(
                    &endpoint,
                    &ctx.identity,
                    &parent,
                    resolved,
                    cfg.handshake_timeout,
                    racing,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let failed_before = failed_in_a_row;
        failed_in_a_row = if attempt.is_ok() {
            0
        } else {
            failed_in_a_row.saturating_add(1)
        };
        let attempt = attempt.and_then(|link| {
            let why = revoked_why(&ctx.reader, &link.peer, &link.certs);
            if let Some(why) = why {
                link.conn
                    .close(close::NOT_ADJACENT, b"your certificate is revoked");
                return Err(NetError::Refused {
                    reason: RejectReason::Revoked,
                    detail: format!("the parent's: {why}"),
                });
            }
            Ok(link)
        });
        match attempt {
            Ok(link) => {
                if failed_before > 0 {
                    tracing::info!(%parent, addr = %at, "reached the parent after {failed_before} failed dials");
                }
                // How long the link itself lasted (not the lookup and dial before it).
                let started = Instant::now();
                if let Some(e) = run_link(link, ctx.store.clone(), ctx.cancel.clone()).await {
                    tracing::error!(%parent, addr = %at, "the parent ended the link as a refusal ({e}); will not retry before {:?}", cfg.backoff_max * 4);
                    delay = cfg.backoff_max * 4;
                    ctx.store.dial_failed(parent.clone(), e.to_string()).await;
                } else if started.elapsed() > Duration::from_secs(10) {
                    backoff = cfg.backoff_min;
                    delay = backoff;
                }
            }
            Err(e) => {
                if e.is_permanent() {
                    tracing::error!(%parent, addr = %at, "link to the parent refused ({e}); will not retry before {:?}", cfg.backoff_max * 4);
                    delay = cfg.backoff_max * 4;
                } else if failed_in_a_row == 1 {
                    // The first failure in a row is worth an operator's eye (a village's
                    // line down, a wrong address); the rest of the row only now and then.
                    tracing::warn!(%parent, addr = %at, "cannot reach the parent: {e}; retrying, at most every {:?}", cfg.backoff_max);
                } else if failed_in_a_row.is_multiple_of(30) {
                    tracing::info!(%parent, addr = %at, "still cannot reach the parent after {failed_in_a_row} dials: {e}");
                } else {
                    tracing::debug!(%parent, addr = %at, "dial failed: {e}; retry in {delay:?}");
                }
                ctx.store.dial_failed(parent.clone(), e.to_string()).await;
            }
        }
        // Jitter in [0.75, 1.25) so a county's villages do not redial in lockstep.
        let mut b = [0u8; 2];
        let jitter = if rng.fill(&mut b).is_ok() {
            0.75 + f64::from(u16::from_be_bytes(b)) / 131_072.0
        } else {
            1.0
        };
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tokio::time::sleep(delay.mul_f64(jitter)) => {}
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS alert (a certificate refused) reads as a refusal; other transport failures and
    /// a timeout do not.
    #[test]
    fn tls_alerts_read_as_refusals() {
        let transport = |code: quinn::TransportErrorCode| {
            NetError::Connection(quinn::ConnectionError::TransportError(code.into()))
        };
        assert!(tls_refused(&transport(quinn::TransportErrorCode::crypto(
            42
        ))));
        assert!(!tls_refused(&transport(
            quinn::TransportErrorCode::PROTOCOL_VIOLATION
        )));
        assert!(!tls_refused(&NetError::Timeout));
    }

    /// Ten warnings a minute; the rest are counted, and the count goes with the first
    /// warning of the next minute.
    #[test]
    fn handshake_failures_are_warned_of_a_few_a_minute() {
        let budget = LogBudget::default();
        let t0 = Instant::now();
        for i in 0..WARNINGS_PER_MINUTE {
            assert_eq!(budget.take(t0 + Duration::from_secs(u64::from(i))), Some(0));
        }
        for _ in 0..25 {
            assert_eq!(budget.take(t0 + Duration::from_secs(30)), None);
        }
        let later = t0 + Duration::from_secs(61);
        assert_eq!(budget.take(later), Some(25));
        assert_eq!(budget.take(later), Some(0));
    }

    #[test]
    fn releases_apart_are_told_which_to_upgrade_in_text_safe_to_show() {
        let v = |oldest, newest| Versions { oldest, newest };
        assert_eq!(
            versions_apart(v(1, 1), Some("grassroots 0.1.0"), v(2, 3), None),
            "the parent (grassroots 0.1.0) speaks protocol version 1 and the child protocol \
             versions 2 to 3: upgrade the parent"
        );
        assert_eq!(
            versions_apart(v(4, 5), None, v(1, 3), Some("grassroots 0.1.0")),
            "the parent speaks protocol versions 4 to 5 and the child (grassroots 0.1.0) \
             protocol versions 1 to 3: upgrade the child"
        );
        assert_eq!(shown("grassroots\n9\u{7}.0"), "grassroots9.0");
        assert_eq!(shown(&"x".repeat(1000)).len(), 64);
    }

    #[tokio::test]
    async fn a_parent_address_is_an_address_or_a_host_name_resolved_in_the_endpoints_family() {
        let a: ParentAddr = "10.1.2.3:7400".parse().unwrap();
        assert_eq!(a, ParentAddr::Socket("10.1.2.3:7400".parse().unwrap()));
        let h: ParentAddr = "localhost:7400".parse().unwrap();
        assert_eq!(h, ParentAddr::Host("localhost:7400".into()));
        assert!(matches!("[::1]:7400".parse(), Ok(ParentAddr::Socket(_))));
        for bad in [
            "localhost",
            "localhost:",
            ":7400",
            "a b:7400",
            "host:99999",
            "",
        ] {
            assert!(bad.parse::<ParentAddr>().is_err(), "{bad}");
        }
        let wait = Duration::from_secs(5);
        for attempt in 0..3 {
            let v4 = h
                .resolve(Some("0.0.0.0:0".parse().unwrap()), attempt, wait)
                .await
                .unwrap();
            assert_eq!(v4, "127.0.0.1:7400".parse().unwrap());
        }
        // Which address, from a name with both families.
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let found = [
            a("[2001:db8::1]:7400"),
            a("192.0.2.1:7400"),
            a("192.0.2.2:7400"),
        ];
        let turns = |local: &str| -> Vec<SocketAddr> {
            (0..4)
                .filter_map(|i| pick(&found, Some(a(local)), i))
                .collect()
        };
        let (v6, v4a, v4b) = (found[0], found[1], found[2]);
        assert_eq!(turns("0.0.0.0:0"), vec![v4a, v4b, v4a, v4b]);
        assert_eq!(turns("[2001:db8::9]:0"), vec![v6, v6, v6, v6]);
        assert_eq!(turns("[::]:0"), vec![v6, v4a, v4b, v6]);
        // Only the other family: tried all the same.
        assert_eq!(pick(&found[..1], Some(a("0.0.0.0:0")), 0), Some(v6));
        assert_eq!(pick(&[], None, 0), None);
        let missing: ParentAddr = "no-such-host.invalid:7400".parse().unwrap();
        assert!(matches!(
            missing.resolve(None, 0, wait).await,
            Err(NetError::Resolve { .. })
        ));
    }

    /// A dial's resumed handshake can be done before the hello's stream opens (its thread
    /// preempted): the stream is then an ordinary one, which a parent refusing the early data
    /// does not discard. The hello on it is kept and answered; dropped, its stream would be
    /// stopped under the parent's answer, and the parent drop the link.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hello_stream_opened_after_a_refused_resumption_is_kept() {
        let u = |s: &str| -> UnitId { s.parse().unwrap() };
        let root = Identity::create_root(&u("c01"), "test.grassroots").unwrap();
        let child = root.issue_child(&u("c01/k01")).unwrap();
        let cfg = LinkConfig::default();
        let any = || "127.0.0.1:0".parse().unwrap();
        let name = u("c01").dns_name(&child.deployment);
        let client = endpoint(&child, any(), &cfg, None).unwrap();

        // A first parent gives the child a session (its tickets follow the handshake).
        let first = endpoint(&root, any(), &cfg, None).unwrap();
        let held = tokio::spawn({
            let first = first.clone();
            async move { first.accept().await.unwrap().await.unwrap() }
        });
        let conn = client
            .connect(first.local_addr().unwrap(), &name)
            .unwrap()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        conn.close(0u32.into(), b"done");
        drop(held.await.unwrap());

        // A parent without that session (as after a restart) refuses the early data.
        let second = endpoint(&root, any(), &cfg, None).unwrap();
        let parent = tokio::spawn({
            let second = second.clone();
            async move {
                let conn = second.accept().await.unwrap().await.unwrap();
                let (mut send, mut recv) = conn.accept_bi().await.unwrap();
                let hello = read_frame(&mut recv).await.unwrap();
                write_frame(&mut send, &Msg::Probe).await.unwrap();
                // Its answer is read before the connection goes.
                let after = read_frame(&mut recv).await;
                (hello, after)
            }
        });
        let connecting = client.connect(second.local_addr().unwrap(), &name).unwrap();
        let Ok((conn, accepted)) = connecting.into_0rtt() else {
            panic!("the child holds no session to resume");
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            while conn.peer_identity().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the handshake completes");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stream = conn.open_bi().await.unwrap();
        assert!(!stream.1.is_0rtt(), "opened once the handshake was done");
        let start = Start::Early {
            conn,
            accepted,
            stream: Some(stream),
        };
        let (conn, streams) = handshake(start, hello_of(&child)).await.unwrap();
        let (mut send, mut recv) = streams.expect("the hello's stream is kept");
        let answer = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut recv))
            .await
            .unwrap();
        assert!(matches!(answer, Ok(Some(Ok(Msg::Probe)))), "{answer:?}");
        write_frame(&mut send, &Msg::Probe).await.unwrap();
        let (hello, after) = parent.await.unwrap();
        assert!(matches!(hello, Some(Ok(Msg::Hello(_)))), "{hello:?}");
        assert!(matches!(after, Ok(Some(Ok(Msg::Probe)))), "{after:?}");
        conn.close(0u32.into(), b"done");
    }

    #[test]
    fn an_initial_round_trip_is_between_10_ms_and_1_s() {
        let at = |ms: u64| LinkConfig {
            initial_rtt: Duration::from_millis(ms),
            ..LinkConfig::default()
        };
        for ok in [10, 150, 333, 1_000] {
            assert!(at(ok).validate().is_ok(), "{ok}");
        }
        for bad in [0, 9, 1_001, 5_000] {
            let e = at(bad).validate().unwrap_err().to_string();
            assert!(e.contains("initial round trip"), "{e}");
        }
    }

    #[test]
    fn handshake_copies_are_one_to_three() {
        let at = |n: u8| LinkConfig {
            handshake_copies: n,
            ..LinkConfig::default()
        };
        for ok in [1, 2, 3] {
            assert!(at(ok).validate().is_ok(), "{ok}");
        }
        for bad in [0, 4, 255] {
            let e = at(bad).validate().unwrap_err().to_string();
            assert!(e.contains("handshake copies"), "{e}");
        }
    }

    #[test]
    fn a_keep_alive_is_above_zero_and_at_most_half_the_idle_timeout() {
        let at = |keep_alive: u64, idle_timeout: u64| LinkConfig {
            keep_alive: Duration::from_secs(keep_alive),
            idle_timeout: Duration::from_secs(idle_timeout),
            ..LinkConfig::default()
        };
        assert!(LinkConfig::default().validate().is_ok());
        assert!(at(25, 60).validate().is_ok());
        assert!(at(30, 60).validate().is_ok());
        for bad in [at(0, 60), at(31, 60), at(60, 60), at(90, 60)] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains("at most half the idle timeout"), "{e}");
        }
    }
}
