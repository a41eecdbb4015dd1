//! Link and freshness status: what `unit { sync }` and `grassroots status` show.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use grassroots_schema::UnitId;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Counters of one live link, bumped by the link task and read by the store for status.
/// Atomics, not a lock: the writer is the link task, readers only sample.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Unique per connection, so a late "link down" of an old connection cannot end a new one.
    pub session: u64,
    /// Key fingerprint of the peer's certificate (`pki::key_fingerprint`).
    pub fingerprint: String,
    /// The certificates the link rests on: the peer's, then the CAs it was checked through
    /// (`Identity::check_issued`): a revocation of any ends the link.
    pub certs: Vec<crate::pki::Revocable>,
    /// The protocol version the connection runs at.
    pub protocol: u8,
    /// The peer's software, as its hello names it.
    pub software: String,
    /// Frame bytes received (length prefixes included).
    pub bytes_in: AtomicU64,
    /// Frame bytes sent.
    pub bytes_out: AtomicU64,
    /// Frames received.
    pub frames_in: AtomicU64,
    /// Frames sent.
    pub frames_out: AtomicU64,
    /// When the last frame arrived (ms since the epoch).
    pub last_frame_ms: AtomicU64,
    /// Whether a reconciliation on this link waits for the peer (the answer to a summary,
    /// documents in flight or queued), set by the store after each committed batch: the
    /// link probes a silent peer only then, or while `awaiting_root`.
    pub awaiting: std::sync::atomic::AtomicBool,
    /// Whether the peer's root digest has not arrived yet: the link probes for it only once
    /// it is overdue (two round trips of silence), so that an idle reconnect sends none
    /// after its hello (the hello's own probes are not counted here).
    pub awaiting_root: std::sync::atomic::AtomicBool,
    /// Probes sent (not counted in the frames and bytes above).
    pub probes_out: AtomicU64,
    /// What waits to be written to the peer, by [`crate::sync::wire::weight`]: added by the
    /// store as it queues a message, taken off by the link once it is written.
    pub queued_out: AtomicU64,
    /// Cancelled by the store to end the link: its certificate was revoked, a newer
    /// connection of the same peer replaced it, or the peer sent too many refused messages
    /// or does not read what it is sent.
    pub close: tokio_util::sync::CancellationToken,
    /// Set by the store before [`LinkCounters::close`] when the certificate was revoked, so
    /// that the link closes as a refusal the peer does not redial, not as a goodbye.
    pub revoked: std::sync::atomic::AtomicBool,
    /// Set by the link before it ends for what the peer sent (too many frames that do not
    /// decode, a frame over the size cap): the store counts that closing as one for refused
    /// messages, which may keep the peer off.
    pub misbehaved: std::sync::atomic::AtomicBool,
    /// Frames from the peer that did not decode: on this connection, and on the ones before
    /// it if recent (the store carries the count over at its coming up).
    pub malformed: std::sync::atomic::AtomicU32,
}

impl LinkCounters {
    /// Counters for a new connection at `protocol` with a peer presenting `fingerprint` and
    /// running `software`.
    pub fn new(fingerprint: String, protocol: u8, software: String) -> Self {
        static SESSIONS: AtomicU64 = AtomicU64::new(1);
        LinkCounters {
            session: SESSIONS.fetch_add(1, Ordering::Relaxed),
            fingerprint,
            protocol,
            software,
            ..LinkCounters::default()
        }
    }

    /// Count one received frame of `bytes`.
    pub fn received(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
        self.frames_in.fetch_add(1, Ordering::Relaxed);
        self.last_frame_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Count one sent frame of `bytes`.
    pub fn sent(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        self.frames_out.fetch_add(1, Ordering::Relaxed);
    }
}

/// One link (to the parent or a child) as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    /// The unit at the other end.
    pub peer: UnitId,
    /// Whether the link is up now.
    pub connected: bool,
    /// Key fingerprint of the certificate the peer presented (`pki::key_fingerprint`).
    pub fingerprint: String,
    /// The protocol version the current (or last) connection ran at (0: never connected).
    pub protocol: u8,
    /// The peer's software on the current (or last) connection (empty: never connected).
    pub software: String,
    /// When it came up (or last came up), ms since the epoch (0: never since start).
    pub since_ms: u64,
    /// When it went down, ms since the epoch (0 while up); for a peer never connected since
    /// start, the start or the first failed dial.
    pub down_since_ms: u64,
    /// Dials to the peer that failed since the link was last up (or since start).
    pub failed_dials: u32,
    /// Why the last of them failed.
    pub last_error: Option<String>,
    /// When the last frame arrived, ms since the epoch (0: never).
    pub last_frame_ms: u64,
    /// Frame bytes received on the current (or last) connection.
    pub bytes_in: u64,
    /// Frame bytes sent on the current (or last) connection.
    pub bytes_out: u64,
    /// Probes sent on it (see the protocol's Probe message).
    pub probes_out: u64,
    /// Documents being reconciled now.
    pub docs_in_flight: usize,
    /// Documents waiting for reconciliation.
    pub docs_queued: usize,
    /// Documents the peer offered whose unit no profile here registers yet (not created).
    pub docs_unregistered: usize,
    /// Messages from this peer refused since the node started.
    pub rejected: u64,
    /// Until when links from the peer are refused, for what it sent (ms since the epoch; 0
    /// when they are not).
    pub kept_off_until_ms: u64,
}

impl LinkStatus {
    /// A link to `peer` not up since the node started: down since `down_since_ms`, with its
    /// failed dials.
    pub fn never_up(
        peer: UnitId,
        down_since_ms: u64,
        failed_dials: u32,
        last_error: Option<String>,
    ) -> LinkStatus {
        LinkStatus {
            peer,
            connected: false,
            fingerprint: String::new(),
            protocol: 0,
            software: String::new(),
            since_ms: 0,
            down_since_ms,
            failed_dials,
            last_error,
            last_frame_ms: 0,
            bytes_in: 0,
            bytes_out: 0,
            probes_out: 0,
            docs_in_flight: 0,
            docs_queued: 0,
            docs_unregistered: 0,
            rejected: 0,
            kept_off_until_ms: 0,
        }
    }
}

/// The status of a node: its links and when each unit was last heard from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// Links known since start (connected or not).
    pub links: Vec<LinkStatus>,
    /// Per unit: when a change it authored last arrived or was made here (ms since epoch).
    pub heard: Vec<(UnitId, u64)>,
    /// Documents this node hosts.
    pub documents: usize,
    /// Of those, loaded in memory now.
    pub documents_loaded: usize,
    /// Estimated memory of the loaded documents.
    pub loaded_bytes: u64,
    /// Until when (ms since epoch) the node takes back from its children changes made in its
    /// unit's name or above it (after a restore, or `grassroots store take-back`).
    pub take_back_until_ms: Option<u64>,
}
