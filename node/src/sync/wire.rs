//! The sync protocol's messages and their byte encoding (`docs/protocol.md` is the spec).
//!
//! A frame is a big-endian `u32` body length followed by the body; the body is a type byte
//! and the payload. Strings are `u16` length + UTF-8, byte blobs `u32` length + bytes.
//! Decoding is bounded: every length is checked against what is left, and a frame over
//! [`MAX_FRAME`] is refused before it is read.

use grassroots_schema::{Audience, DocId, DocMeta, Level, UnitId};

/// ALPN of the sync protocol. The version is not part of it: versions are agreed in the
/// hellos, so that a peer of another release is told why it is refused.
pub const ALPN: &[u8] = b"grassroots/sync";
/// The protocol versions this build speaks.
pub const VERSIONS: Versions = Versions {
    oldest: 1,
    newest: 1,
};
/// Largest frame body either side sends or accepts.
pub const MAX_FRAME: usize = 16 << 20;
/// Capability flags this build sends; no capability is defined yet, the other bits are
/// reserved.
pub const CAPABILITIES: u64 = 0;
/// Hello flag (bit 0): this hello went in the child's first flight (TLS 0-RTT), and a
/// [`Msg::Probe`] follows it on the connection the child keeps. A parent uses such a link
/// only after that probe: a child racing handshakes sends an early hello on each, and one it
/// finished and dropped must not take the place of the one it kept.
pub const EARLY_HELLO: u64 = 1;

/// One message of the exchange on a link's stream.
///
/// 1. The child opens one bidirectional stream and sends [`Msg::Hello`]; the parent answers
///    with its own hello, or a [`Msg::Reject`] and closes.
/// 2. Each side sends [`Msg::Root`]: the digest of everything in the link's scope. Equal
///    digests end the exchange (an idle reconnect costs these two messages).
/// 3. Otherwise each side sends a [`Msg::Summary`] of the root unit; a side receiving a
///    summary answers with its own for that unit (once per unit and session), starts syncing
///    the unit's documents whose heads differ, and sends summaries of the child units whose
///    digests differ. The descent follows only the branches that changed.
/// 4. Documents are reconciled with automerge's sync protocol in [`Msg::Sync`] (several in
///    one frame as [`Msg::SyncBatch`]) until automerge has nothing to send; a local change
///    later produces new sync messages to every connected peer in scope (live push).
/// 5. A message that breaks a rule is answered with [`Msg::Reject`] and otherwise ignored.
///    Unknown message types (from a newer peer) decode to [`Msg::Unknown`] and are ignored.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// Opening message both ways.
    Hello(Hello),
    /// Digest of the sender's whole link scope.
    Root(Digest),
    /// The sender's view of one unit of the scope tree.
    Summary(Summary),
    /// An automerge sync message for one document.
    Sync {
        /// The document.
        doc: DocId,
        /// `automerge::sync::Message::encode()` bytes.
        data: Vec<u8>,
    },
    /// Several sync messages in one frame (small documents batched).
    SyncBatch(Vec<(DocId, Vec<u8>)>),
    /// The previous message (about `doc`, if any) was refused.
    Reject {
        /// Why.
        reason: RejectReason,
        /// The document concerned.
        doc: Option<DocId>,
        /// Human-readable detail for logs.
        detail: String,
    },
    /// Nothing: sent into a silent link while the sender waits for the peer, so that lost
    /// datagrams are noticed sooner than the transport's backed-off timers would. Ignored.
    Probe,
    /// A message type this version does not know.
    Unknown(u8),
}

impl Msg {
    /// The message's type, for logs and errors (a peer's frame is never printed whole).
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Hello(_) => "hello",
            Msg::Root(_) => "root",
            Msg::Summary(_) => "summary",
            Msg::Sync { .. } => "sync",
            Msg::SyncBatch(_) => "sync batch",
            Msg::Reject { .. } => "reject",
            Msg::Probe => "probe",
            Msg::Unknown(_) => "unknown",
        }
    }
}

/// A 128-bit digest (truncated SHA-256).
pub type Digest = [u8; 16];

/// One node of the scope tree as the sender sees it: the documents the unit owns (in the
/// link's scope) with a digest of their heads, and the digests of its child subtrees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The unit.
    pub unit: UnitId,
    /// Documents owned by the unit: metadata and a digest of the document's heads.
    pub docs: Vec<(DocMeta, Digest)>,
    /// Child units with something in scope below them, and their subtree digests.
    pub children: Vec<(UnitId, Digest)>,
}

/// A range of protocol versions a node speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    /// The oldest.
    pub oldest: u8,
    /// The newest.
    pub newest: u8,
}

impl Versions {
    /// The version a link between speakers of `self` and `other` runs at: the newest both
    /// speak, or none.
    pub fn agree(self, other: Versions) -> Option<u8> {
        let v = self.newest.min(other.newest);
        (v >= self.oldest.max(other.oldest)).then_some(v)
    }
}

impl std::fmt::Display for Versions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.oldest == self.newest {
            write!(f, "protocol version {}", self.newest)
        } else {
            write!(f, "protocol versions {} to {}", self.oldest, self.newest)
        }
    }
}

/// The opening message. Its type byte and the two version bytes that open its payload are
/// the same in every version, so any two releases can tell whether they can talk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The versions the sender speaks ([`VERSIONS`] for this build).
    pub versions: Versions,
    /// Capability bits of the sender.
    pub capabilities: u64,
    /// The sender's unit; must match its certificate.
    pub unit: UnitId,
    /// The sender's software version, for logs.
    pub software: String,
}

/// Why a message was refused. Stable codes: they are on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// Bytes that do not decode.
    Malformed,
    /// A document outside the link's scope (rule 1).
    OutOfScope,
    /// A change authored by a unit without authority over the document (rule 2).
    Unauthorised,
    /// A frame or message over a size cap.
    TooLarge,
    /// The receiver could not apply the message for a reason of its own (a document that
    /// would not load): not the sender's fault.
    ApplyFailed,
    /// The peer is not this node's registered parent or child.
    NotAdjacent,
    /// The peer speaks an incompatible protocol version.
    Version,
    /// The peer's certificate was revoked by its issuer.
    Revoked,
    /// Not now: the document's owner is not (yet) registered in the receiver's copy of the
    /// tree. The sender frees the document's slot and forgets what it sent; the receiver asks
    /// for the document itself once a profile registers the owner.
    Unregistered,
    /// automerge panicked on the message, or on checking it: the sender's bytes are at fault
    /// (the panic was caught and the copy it was applied to discarded).
    Panicked,
    /// A code from a newer peer.
    Other(u8),
}

impl RejectReason {
    fn code(self) -> u8 {
        match self {
            RejectReason::Malformed => 1,
            RejectReason::OutOfScope => 2,
            RejectReason::Unauthorised => 3,
            RejectReason::TooLarge => 4,
            RejectReason::ApplyFailed => 5,
            RejectReason::NotAdjacent => 6,
            RejectReason::Version => 7,
            RejectReason::Revoked => 8,
            RejectReason::Unregistered => 9,
            RejectReason::Panicked => 10,
            RejectReason::Other(c) => c,
        }
    }

    fn from_code(c: u8) -> Self {
        match c {
            1 => RejectReason::Malformed,
            2 => RejectReason::OutOfScope,
            3 => RejectReason::Unauthorised,
            4 => RejectReason::TooLarge,
            5 => RejectReason::ApplyFailed,
            6 => RejectReason::NotAdjacent,
            7 => RejectReason::Version,
            8 => RejectReason::Revoked,
            9 => RejectReason::Unregistered,
            10 => RejectReason::Panicked,
            c => RejectReason::Other(c),
        }
    }
}

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The body ended inside a field.
    #[error("message truncated")]
    Truncated,
    /// A string is not UTF-8 or not a valid id.
    #[error("bad field: {0}")]
    BadField(String),
    /// Bytes left over after the message.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// The frame is larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME} byte cap")]
    TooLarge(usize),
    /// An empty body.
    #[error("empty frame")]
    Empty,
    /// A hello in versions this build does not speak; the rest of it is not read, since
    /// another version may lay it out otherwise.
    #[error("a hello in {0}, which this build does not speak")]
    Version(Versions),
    /// A list longer than any honest peer sends (decoding it would cost memory out of
    /// proportion to the frame).
    #[error("{n} {what} in one message (at most {max})")]
    TooMany {
        /// What the list holds.
        what: &'static str,
        /// How many the message says it holds.
        n: u64,
        /// The most this build reads.
        max: u64,
    },
}

/// Most items of one `SyncBatch`; a sender splits longer runs into several batches.
pub const MAX_BATCH_ITEMS: usize = 4096;
/// Most documents one `Summary` lists: a unit holds one per kind.
pub const MAX_SUMMARY_DOCS: usize = 1024;
/// Most children one `Summary` lists.
pub const MAX_SUMMARY_CHILDREN: usize = 16_384;
/// Most units an audience names.
const MAX_AUDIENCE_UNITS: usize = 64;

/// About how many bytes `msg` takes (its sync data, plus a little per message and item):
/// what the store counts as waiting to be written to a peer.
pub fn weight(msg: &Msg) -> u64 {
    const OVERHEAD: u64 = 64;
    match msg {
        Msg::Sync { data, .. } => data.len() as u64 + OVERHEAD,
        Msg::SyncBatch(items) => items
            .iter()
            .map(|(_, data)| data.len() as u64 + OVERHEAD)
            .sum(),
        Msg::Summary(s) => (s.docs.len() + s.children.len() + 1) as u64 * OVERHEAD,
        Msg::Reject { detail, .. } => detail.len() as u64 + OVERHEAD,
        _ => OVERHEAD,
    }
}

/// A peer's text as this node shows it (logs, status): printable characters only, at most
/// `max` of them.
pub fn printable(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// `n` if it is at most `max`.
fn at_most(n: impl Into<u64>, max: usize, what: &'static str) -> Result<u64, WireError> {
    let (n, max) = (n.into(), max as u64);
    if n > max {
        return Err(WireError::TooMany { what, n, max });
    }
    Ok(n)
}

const T_HELLO: u8 = 1;
// 2 was an early "announce every document" message; never reuse it.
const T_SYNC: u8 = 3;
const T_REJECT: u8 = 4;
const T_ROOT: u8 = 5;
const T_SUMMARY: u8 = 6;
const T_SYNC_BATCH: u8 = 7;
const T_PROBE: u8 = 8;

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn str(&mut self, s: &str) {
        // Every string we send is an id, a version or a short detail: cut at the u16 cap on
        // a character boundary rather than fail.
        let mut end = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16);
        self.0.extend_from_slice(&s.as_bytes()[..end]);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn digest(&mut self, d: &Digest) {
        self.0.extend_from_slice(d);
    }
    fn audience(&mut self, a: &Audience) {
        match a {
            Audience::None => self.u8(0),
            Audience::Descendants => self.u8(1),
            Audience::Level(l) => {
                self.u8(2);
                self.u8(l.depth() as u8);
            }
            Audience::Units(list) => {
                self.u8(3);
                self.u16(list.len().min(u16::MAX as usize) as u16);
                for u in list.iter().take(u16::MAX as usize) {
                    self.str(u.as_str());
                }
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn str(&mut self) -> Result<&'a str, WireError> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| WireError::BadField("not utf-8".into()))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, WireError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn digest(&mut self) -> Result<Digest, WireError> {
        let mut d = [0u8; 16];
        d.copy_from_slice(self.take(16)?);
        Ok(d)
    }
    fn unit(&mut self) -> Result<UnitId, WireError> {
        self.str()?
            .parse()
            .map_err(|e: grassroots_schema::IdError| WireError::BadField(e.to_string()))
    }
    fn doc(&mut self) -> Result<DocId, WireError> {
        self.str()?
            .parse()
            .map_err(|e: grassroots_schema::IdError| WireError::BadField(e.to_string()))
    }
    fn audience(&mut self) -> Result<Audience, WireError> {
        Ok(match self.u8()? {
            0 => Audience::None,
            1 => Audience::Descendants,
            2 => Audience::Level(
                Level::from_depth(self.u8()? as usize)
                    .ok_or_else(|| WireError::BadField("level".into()))?,
            ),
            3 => {
                let n = at_most(self.u16()?, MAX_AUDIENCE_UNITS, "audience units")?;
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.unit()?);
                }
                Audience::Units(v)
            }
            t => return Err(WireError::BadField(format!("audience tag {t}"))),
        })
    }
}

/// The body of a frame for `msg` (type byte and payload, no length prefix).
pub fn encode(msg: &Msg) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    match msg {
        Msg::Hello(h) => {
            w.u8(T_HELLO);
            w.u8(h.versions.newest);
            w.u8(h.versions.oldest);
            w.u64(h.capabilities);
            w.str(h.unit.as_str());
            w.str(&h.software);
        }
        Msg::Root(d) => {
            w.u8(T_ROOT);
            w.digest(d);
        }
        Msg::Summary(sm) => {
            w.u8(T_SUMMARY);
            w.str(sm.unit.as_str());
            w.u32(sm.docs.len() as u32);
            for (meta, d) in &sm.docs {
                w.str(&meta.id.to_string());
                w.audience(&meta.audience);
                w.digest(d);
            }
            w.u32(sm.children.len() as u32);
            for (u, d) in &sm.children {
                w.str(u.as_str());
                w.digest(d);
            }
        }
        Msg::SyncBatch(items) => {
            w.u8(T_SYNC_BATCH);
            w.u32(items.len() as u32);
            for (doc, data) in items {
                w.str(&doc.to_string());
                w.bytes(data);
            }
        }
        Msg::Sync { doc, data } => {
            w.u8(T_SYNC);
            w.str(&doc.to_string());
            w.bytes(data);
        }
        Msg::Reject {
            reason,
            doc,
            detail,
        } => {
            w.u8(T_REJECT);
            w.u8(reason.code());
            w.str(&doc.as_ref().map(ToString::to_string).unwrap_or_default());
            w.str(detail);
        }
        Msg::Probe => w.u8(T_PROBE),
        Msg::Unknown(t) => w.u8(*t),
    }
    w.0
}

/// Decode a frame body. Unknown types decode to [`Msg::Unknown`] whatever their payload.
pub fn decode(body: &[u8]) -> Result<Msg, WireError> {
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    let mut r = Reader(body);
    let t = r.u8().map_err(|_| WireError::Empty)?;
    let msg = match t {
        T_HELLO => Msg::Hello(Hello {
            versions: {
                let newest = r.u8()?;
                let v = Versions {
                    oldest: r.u8()?,
                    newest,
                };
                if v.oldest > v.newest {
                    return Err(WireError::BadField(format!(
                        "versions from {} to {}",
                        v.oldest, v.newest
                    )));
                }
                if VERSIONS.agree(v).is_none() {
                    return Err(WireError::Version(v));
                }
                v
            },
            capabilities: r.u64()?,
            unit: r.unit()?,
            software: r.str()?.to_owned(),
        }),
        T_ROOT => Msg::Root(r.digest()?),
        T_SUMMARY => {
            let unit = r.unit()?;
            let n = at_most(r.u32()?, MAX_SUMMARY_DOCS, "documents")?;
            let mut docs = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let id = r.doc()?;
                let audience = r.audience()?;
                docs.push((DocMeta { id, audience }, r.digest()?));
            }
            let n = at_most(r.u32()?, MAX_SUMMARY_CHILDREN, "children")?;
            let mut children = Vec::with_capacity(n.min(4096) as usize);
            for _ in 0..n {
                let u = r.unit()?;
                children.push((u, r.digest()?));
            }
            Msg::Summary(Summary {
                unit,
                docs,
                children,
            })
        }
        T_SYNC_BATCH => {
            let n = at_most(r.u32()?, MAX_BATCH_ITEMS, "batch items")?;
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let doc = r.doc()?;
                items.push((doc, r.bytes()?));
            }
            Msg::SyncBatch(items)
        }
        T_SYNC => Msg::Sync {
            doc: r.doc()?,
            data: r.bytes()?,
        },
        T_REJECT => {
            let reason = RejectReason::from_code(r.u8()?);
            let doc =
                match r.str()? {
                    "" => None,
                    s => Some(s.parse().map_err(|e: grassroots_schema::IdError| {
                        WireError::BadField(e.to_string())
                    })?),
                };
            Msg::Reject {
                reason,
                doc,
                detail: r.str()?.to_owned(),
            }
        }
        T_PROBE => Msg::Probe,
        other => return Ok(Msg::Unknown(other)),
    };
    if !r.0.is_empty() {
        return Err(WireError::Trailing(r.0.len()));
    }
    Ok(msg)
}

/// Meta of stored documents uses the same encoding as the announce entries.
pub fn encode_audience(a: &Audience) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.audience(a);
    w.0
}

/// Inverse of [`encode_audience`].
pub fn decode_audience(b: &[u8]) -> Result<Audience, WireError> {
    let mut r = Reader(b);
    let a = r.audience()?;
    if !r.0.is_empty() {
        return Err(WireError::Trailing(r.0.len()));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use grassroots_schema::DocKind;

    fn u(s: &str) -> UnitId {
        s.parse().unwrap()
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = vec![
            Msg::Hello(Hello {
                versions: Versions {
                    oldest: 1,
                    newest: 3,
                },
                capabilities: 0b101,
                unit: u("c01/k01"),
                software: "grassroots 0.1.0".into(),
            }),
            Msg::Root([7; 16]),
            Msg::Probe,
            Msg::Summary(Summary {
                unit: u("c01/k01"),
                docs: vec![
                    (
                        DocMeta::new(DocId::new(DocKind::Members, u("c01/k01"))),
                        [1; 16],
                    ),
                    (
                        DocMeta {
                            id: DocId::new(DocKind::Members, u("c01/k01")),
                            audience: Audience::Units(vec![u("c01/k01/t01")]),
                        },
                        [2; 16],
                    ),
                    (
                        DocMeta {
                            id: DocId::new(DocKind::Members, u("c01/k01")),
                            audience: Audience::Level(Level::Village),
                        },
                        [3; 16],
                    ),
                ],
                children: vec![(u("c01/k01/t01"), [4; 16])],
            }),
            Msg::SyncBatch(vec![
                (DocId::new(DocKind::Members, u("c01")), vec![1, 2, 3]),
                (DocId::new(DocKind::Profile, u("c01")), vec![]),
            ]),
            Msg::Sync {
                doc: DocId::new(DocKind::Profile, u("c01")),
                data: vec![0x42, 1, 2, 3],
            },
            Msg::Reject {
                reason: RejectReason::Unauthorised,
                doc: Some(DocId::new(DocKind::Members, u("c01/k02"))),
                detail: "change by c01/k03".into(),
            },
            Msg::Reject {
                reason: RejectReason::Other(99),
                doc: None,
                detail: String::new(),
            },
        ];
        for m in msgs {
            assert_eq!(decode(&encode(&m)).unwrap(), m);
        }
    }

    #[test]
    fn every_reason_keeps_its_code() {
        let known = [
            RejectReason::Malformed,
            RejectReason::OutOfScope,
            RejectReason::Unauthorised,
            RejectReason::TooLarge,
            RejectReason::ApplyFailed,
            RejectReason::NotAdjacent,
            RejectReason::Version,
            RejectReason::Revoked,
            RejectReason::Unregistered,
            RejectReason::Panicked,
        ];
        for (i, r) in known.into_iter().enumerate() {
            // Codes are fixed on the wire: 1 to 10 in this order.
            assert_eq!(usize::from(r.code()), i + 1, "{r:?}");
            assert_eq!(RejectReason::from_code(r.code()), r);
        }
        // A code from a newer peer is kept as it came.
        assert_eq!(RejectReason::from_code(11), RejectReason::Other(11));
        assert_eq!(RejectReason::Other(11).code(), 11);
    }

    #[test]
    fn a_link_runs_at_the_newest_version_both_speak() {
        let v = |oldest, newest| Versions { oldest, newest };
        assert_eq!(v(1, 3).agree(v(2, 5)), Some(3));
        assert_eq!(v(2, 5).agree(v(1, 3)), Some(3));
        assert_eq!(v(1, 1).agree(v(1, 1)), Some(1));
        assert_eq!(v(1, 2).agree(v(3, 4)), None);
        assert_eq!(v(3, 4).agree(v(1, 2)), None);
        assert_eq!(v(1, 1).to_string(), "protocol version 1");
        assert_eq!(v(1, 3).to_string(), "protocol versions 1 to 3");
    }

    #[test]
    fn a_hello_this_build_cannot_speak_is_read_only_to_its_versions() {
        let beyond = VERSIONS.newest + 1;
        // Another release may lay out the rest of its hello otherwise: only the versions
        // are read.
        assert_eq!(
            decode(&[T_HELLO, beyond + 1, beyond, 0xff]),
            Err(WireError::Version(Versions {
                oldest: beyond,
                newest: beyond + 1
            }))
        );
        // A newer peer that still speaks ours says the rest as this build does.
        let newer = Msg::Hello(Hello {
            versions: Versions {
                oldest: VERSIONS.newest,
                newest: beyond,
            },
            capabilities: 1 << 63,
            unit: u("c01/k01"),
            software: "grassroots 9.0.0".into(),
        });
        assert_eq!(decode(&encode(&newer)).unwrap(), newer);
        // Oldest above newest is no range.
        assert!(matches!(
            decode(&[T_HELLO, 1, 2, 0xff]),
            Err(WireError::BadField(_))
        ));
    }

    /// Lists longer than an honest peer sends are refused before they are read, whatever
    /// the frame's size allows.
    #[test]
    fn lists_past_their_caps_are_refused() {
        let doc = DocId::new(DocKind::Members, u("c01/k01"));
        let batch = |n: usize| Msg::SyncBatch(vec![(doc.clone(), vec![0x42]); n]);
        assert!(matches!(
            decode(&encode(&batch(MAX_BATCH_ITEMS))),
            Ok(Msg::SyncBatch(items)) if items.len() == MAX_BATCH_ITEMS
        ));
        assert!(matches!(
            decode(&encode(&batch(MAX_BATCH_ITEMS + 1))),
            Err(WireError::TooMany {
                what: "batch items",
                ..
            })
        ));
        let summary = |docs: usize, children: usize| {
            Msg::Summary(Summary {
                unit: u("c01/k01"),
                docs: vec![(DocMeta::new(doc.clone()), [0; 16]); docs],
                children: vec![(u("c01/k01/t01"), [0; 16]); children],
            })
        };
        assert!(decode(&encode(&summary(MAX_SUMMARY_DOCS, MAX_SUMMARY_CHILDREN))).is_ok());
        for (docs, children, what) in [
            (MAX_SUMMARY_DOCS + 1, 0, "documents"),
            (0, MAX_SUMMARY_CHILDREN + 1, "children"),
        ] {
            let e = decode(&encode(&summary(docs, children))).unwrap_err();
            assert!(
                matches!(e, WireError::TooMany { what: w, .. } if w == what),
                "{e}"
            );
        }
        let units = DocMeta {
            id: doc.clone(),
            audience: Audience::Units(vec![u("c01/k01/t01"); MAX_AUDIENCE_UNITS + 1]),
        };
        let e = decode(&encode(&Msg::Summary(Summary {
            unit: u("c01/k01"),
            docs: vec![(units, [0; 16])],
            children: vec![],
        })))
        .unwrap_err();
        assert!(
            matches!(
                e,
                WireError::TooMany {
                    what: "audience units",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn unknown_types_are_not_errors() {
        assert_eq!(decode(&[200, 1, 2, 3]).unwrap(), Msg::Unknown(200));
    }

    #[test]
    fn truncated_and_trailing_bytes_are_errors() {
        let body = encode(&Msg::Sync {
            doc: DocId::new(DocKind::Members, u("c01")),
            data: vec![1; 10],
        });
        for cut in 0..body.len() {
            assert!(decode(&body[..cut]).is_err(), "cut at {cut} decoded");
        }
        let mut long = body.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(WireError::Trailing(1)));
        // A length field claiming more than is there must not allocate or panic.
        let mut lying = vec![T_SYNC];
        lying.extend_from_slice(&3u16.to_be_bytes());
        lying.extend_from_slice(b"bad");
        assert!(decode(&lying).is_err());
    }
}
