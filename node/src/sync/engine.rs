//! [`Engine`]: the state machine behind every link.
//!
//! Reconciliation cost follows the changes, not the data: each side digests its link scope as
//! a tree (unit subtrees, then per-document heads) and the two sides descend only where the
//! digests differ; only differing documents run automerge's sync protocol, at most
//! [`MAX_IN_FLIGHT`] at a time per link.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, Automerge, Change, ChangeHash, ReadDoc};
use grassroots_schema::{
    ActorTag, DocId, DocKind, DocMeta, Member, RecordId, UnitId, may_author, replicated_at,
};
use ring::digest::{SHA256, digest};

use super::chunks::{
    CHUNK_CHANGE, CHUNK_COMPRESSED_CHANGE, CHUNK_DOCUMENT, document_actors, inflated_len,
    items_declared, leb128, makes_nested_objects, split_chunks,
};
use super::wire::{self, Digest, Msg, RejectReason, Summary};
use crate::doc;

/// A document and the digest of its heads.
type DocDigest = (DocMeta, Digest);
/// A unit and the digest of its subtree.
type UnitDigest = (UnitId, Digest);

/// Documents per link whose reconciliation this side has started and not yet finished.
pub const MAX_IN_FLIGHT: usize = 64;
/// Documents a link to the parent starts as new at once ([`Engine::open_link`]); any more
/// wait for the digest descent.
const MAX_ASSUMED_NEW: usize = 64;

/// Most registers held unread at once (each holds its chunk and its members as read, some
/// hundreds of KB for 1,000 households, until automerge has loaded it): past it, a register
/// sent whole is loaded as it comes.
const MAX_UNREAD: usize = 64;

/// The smallest register taken unread: automerge loads a smaller one in about the time its
/// columns take to read, and the later check would be work on top (a full sync of 500
/// registers of 30 households took 15% longer with all of them taken unread).
const MIN_UNREAD_BYTES: usize = 8 << 10;

/// Documents per link set aside because their owner is not registered yet (see
/// [`RejectReason::Unregistered`]); past this, more are ignored until the next session.
pub const MAX_DEFERRED: usize = 10_000;

/// Documents per link frozen for the session after a refusal (see `Engine::freeze`); past
/// this, a further refused document is not frozen.
const MAX_REFUSED: usize = 10_000;

/// Units per link whose summaries are exchanged in one session; past this a peer's summary
/// is refused (a tree of 5,000 villages has about 5,300 units; a peer inventing units must
/// not grow the session's memory without bound).
const MAX_SUMMARISED: usize = 100_000;

/// Registered children, revoked certificates and the concurrent maps they are read over,
/// past which a peer's change may not grow a profile: a county has tens of townships, a
/// township tens of villages.
pub const MAX_PROFILE_ENTRIES: usize = 10_000;

/// Items of one batch for one document; further ones are refused (this build's sender puts
/// one in a batch, and starts another batch for a second).
const MAX_ITEMS_PER_DOC: u32 = 4;

/// A peer's refusals logged as warnings per session; the rest at debug level.
const MAX_LOGGED_REFUSALS: u32 = 32;

/// Whether a refusal is for what the sender sent (so the document is not synced with it
/// again this session), not for a local failure such as a document that would not load.
pub(crate) fn is_peers_fault(reason: RejectReason) -> bool {
    match reason {
        RejectReason::ApplyFailed | RejectReason::Unregistered | RejectReason::Other(_) => false,
        RejectReason::Malformed
        | RejectReason::OutOfScope
        | RejectReason::Unauthorised
        | RejectReason::TooLarge
        | RejectReason::NotAdjacent
        | RejectReason::Version
        | RejectReason::Revoked
        | RejectReason::Panicked => true,
    }
}

/// Most bytes the changes of one incoming frame (a sync message, or every message of a
/// batch together) may inflate to (compressed changes and document columns are measured
/// before automerge decompresses them).
pub const MAX_INFLATED: u64 = 64 << 20;

/// Most values the columns of one incoming frame's changes may declare, summed over every
/// column (counted run by run before automerge sees them: a run-length encoded column
/// declares 2^62 values in ten bytes, which automerge would visit one at a time). An
/// honest change declares about a dozen per operation: a village register of 5,000
/// changes declares about 150,000 values, a compressed document about 5 a byte. A sender
/// splits a message past [`MAX_PART_ITEMS`], and packs at most 1 MiB of messages into a
/// batch frame, so an honest frame stays well under this.
pub const MAX_ITEMS: u64 = 1 << 25;
/// Most values one outgoing sync message's changes declare: a larger message goes in parts,
/// as for its bytes ([`MAX_PART`]); a single change past it goes alone.
#[cfg(not(test))]
const MAX_PART_ITEMS: u64 = 1 << 23;
// Smaller under test, so that a register of a thousand members goes in parts.
#[cfg(test)]
const MAX_PART_ITEMS: u64 = 1 << 15;

/// Most actors a document may hold (each node process that writes to it adds one: a
/// register written by a node restarted daily for twenty years holds about 7,300). Each
/// actor costs automerge memory in every cached clock of the document.
#[cfg(not(test))]
pub const MAX_DOC_ACTORS: u64 = 16_384;
/// Smaller under test, so that a test reaches it with a few actors.
#[cfg(test)]
pub const MAX_DOC_ACTORS: u64 = 8;

/// Most rewriting one message's new actors may cost: automerge rewrites every actor column
/// of a document for each actor a message adds, so a message adding actors may do so only
/// while (new actors) x (operations held and brought) stays under this. An honest backlog
/// of 365 process starts bringing 40,000 operations into a register of 50,000 costs
/// 3.3 x 10^7; a whole register of 100,000 operations and 1,000 actors sent to a peer
/// holding none of them, 10^8.
pub const MAX_ACTOR_REWRITES: u64 = 1 << 28;

/// Most bytes of a peer's changes a document may hold waiting for their dependencies
/// (automerge keeps them aside). Honest peers cause it: a Bloom filter's false positive
/// (about 1% of the changes a round sends, when the receiver has changes of its own since
/// the last sync) leaves a change out, and every later change of its writer waits for it
/// until the next round asks for it; so a round's whole backlog may wait, and a refusal
/// would come back at every session (the filter is the same). Past this the message is
/// refused: a peer could otherwise fill memory with changes that never apply. Twice what
/// one frame may inflate to; the waiting changes count towards the loaded documents'
/// memory budget, and evicting their document drops them (it is saved without them).
#[cfg(not(test))]
pub const MAX_WAITING_BYTES: u64 = 2 * MAX_INFLATED;
/// Most changes a document may hold waiting, as above: a backlog of a million changes.
#[cfg(not(test))]
pub const MAX_WAITING: usize = 1 << 20;
// Smaller under test, so that a test reaches them with a few changes.
#[cfg(test)]
pub const MAX_WAITING_BYTES: u64 = 1 << 20;
#[cfg(test)]
pub const MAX_WAITING: usize = 64;

/// Most bytes of changes one outgoing sync message carries, compressed and inflated: a
/// larger message (a big document sent whole, or a long backlog) goes as several, each with
/// the same heads, need and have and a run of the changes in causal order, so that no frame
/// passes [`wire::MAX_FRAME`] nor a receiver's [`MAX_INFLATED`]. A single change larger
/// than that goes alone, as long as it fits a frame.
#[cfg(not(test))]
const MAX_PART: usize = 4 << 20;
#[cfg(not(test))]
const MAX_PART_INFLATED: usize = 32 << 20;
// Smaller under test, so that the engine's tests split a document of a few hundred KB.
#[cfg(test)]
const MAX_PART: usize = 256 << 10;
#[cfg(test)]
const MAX_PART_INFLATED: usize = 2 << 20;

/// Most change hashes a sync message may list as heads (or a `have` as its last sync): an
/// honest one lists a document's heads, a handful.
const MAX_HEADS: usize = 1024;
/// Most change hashes a sync message may ask for (its `need`).
const MAX_NEED: usize = 16_384;
/// Most `have` entries in a sync message (automerge sends at most one).
const MAX_HAVES: usize = 4;
/// Most changes one sync message may list: automerge's decoding makes a vector of each
/// (an empty one takes a byte on the wire and some 24 of memory), so a frame of empty
/// entries would cost twenty times its size. An honest part carries at most 4 MiB of
/// changes of some 50 bytes or more each: about 84,000.
const MAX_CHANGES: u64 = 1 << 18;

/// How many heads, needed hashes, `have` entries and changes the sync message `data` lists,
/// read from its lengths alone, before automerge decodes it: a frame of tiny entries
/// (2-byte `have`s, 1-byte changes) would otherwise cost many times its size in memory
/// while it is decoded. Counting stops at the first list past its cap (the later counts
/// are then 0). `None` when the lengths do not read.
fn message_counts(data: &[u8]) -> Option<[u64; 4]> {
    let mut pos = 1usize;
    data.first()?;
    let hashes = |pos: &mut usize| -> Option<u64> {
        let n = leb128(data, pos)?;
        *pos = pos.checked_add(usize::try_from(n).ok()?.checked_mul(32)?)?;
        (*pos <= data.len()).then_some(n)
    };
    let heads = hashes(&mut pos)?;
    let need = hashes(&mut pos)?;
    let haves = leb128(data, &mut pos)?;
    if heads > MAX_HEADS as u64 || need > MAX_NEED as u64 || haves > MAX_HAVES as u64 {
        return Some([heads, need, haves, 0]);
    }
    for _ in 0..haves {
        hashes(&mut pos)?;
        let bloom = usize::try_from(leb128(data, &mut pos)?).ok()?;
        pos = pos.checked_add(bloom)?;
    }
    if pos > data.len() {
        return None;
    }
    let changes = leb128(data, &mut pos)?;
    Some([heads, need, haves, changes])
}

/// Times this side sends a peer a document's changes again in a session, its heads
/// unchanged (the whole document again, or changes after the peer had this side forget what
/// it sent: a reset, an empty `heads`, a refusal that starts the document over), before it
/// stops syncing the document with that peer until the next session. An honest peer does so
/// about once, when its first word crossed this side's; one saying again and again, in a few
/// bytes, that it holds nothing would cost this side the whole document each time. Changes
/// the peer asks for because its Bloom filter hid them are not sent before: not counted.
const MAX_RESENDS: u32 = 8;

/// Most probes per hash a `have`'s Bloom filter may ask for (automerge uses 7): automerge
/// allocates that many per change it tests, and trusts the number.
const MAX_PROBES: u64 = 32;

/// Where an evicted document is read back from: the store's durable copy.
pub type DocSource = Box<dyn FnMut(&DocId) -> Result<Automerge, String> + Send>;

/// A loaded document's compact form (`doc::save`) as of `heads`: what a peer lacking the
/// document is sent, and a document's first snapshot. Kept beside the document until it
/// changes, so that sending it whole to several peers (a register received from a village
/// goes on whole to a county that lacks it), or to a peer that asks again, saves it once.
#[derive(Debug)]
struct Saved {
    heads: Vec<ChangeHash>,
    bytes: std::sync::Arc<[u8]>,
}

/// Fixed memory a loaded automerge document costs, whatever its size (an estimate, measured
/// with the `memory` benchmark).
const DOC_BASE_BYTES: u64 = 16 << 10;
/// Memory per automerge operation of a loaded document (an estimate, as above).
const OP_BYTES: u64 = 64;

/// A hosted document and its metadata. The automerge document itself is loaded only while
/// in use ([`Engine::evict_to`] drops it again); its heads digest stays known either way.
#[derive(Debug)]
pub struct DocEntry {
    /// Owner, kind and audience.
    pub meta: DocMeta,
    /// Boxed: an `Automerge` is 3.5 KB inline, which every hosted entry would pay.
    doc: Option<Box<Automerge>>,
    /// Engine tick of the last use (least recently used documents are evicted first).
    used: u64,
    /// Peers' changes the loaded document holds waiting for their dependencies, with their
    /// sizes (at most [`MAX_WAITING`], [`MAX_WAITING_BYTES`] in all). They live only in
    /// memory: the store saves documents without them, so a reload starts empty.
    waiting: Vec<(ChangeHash, u64)>,
    /// The loaded document's compact form, when made since it last changed.
    saved: Option<Saved>,
    /// A register taken whole from a peer that automerge has not read yet (then `doc` is
    /// `None`).
    unread: Option<Box<Unread>>,
}

/// A register a peer sent whole, taken without automerge (a village's register made
/// offline, on its parent): the chunk as received, the heads it names and the member
/// records read from its columns ([`super::register`]), which the store commits and writes
/// the views from. automerge loads it on another thread once stored ([`load_unread`],
/// taken back by [`Engine::adopt_checked`]), or here when it is needed sooner, whichever
/// comes first: a reading that differs from the columns' has the views written again, and
/// a chunk that does not load is taken out again ([`UnreadOutcome`]).
#[derive(Debug)]
pub struct Unread {
    /// The document chunk as the peer sent it.
    pub bytes: std::sync::Arc<[u8]>,
    /// The heads it names (sorted).
    pub heads: Vec<ChangeHash>,
    /// Its member records, as the views take them.
    pub members: std::sync::Arc<BTreeMap<RecordId, Option<Member>>>,
    /// The peer it came from.
    pub from: UnitId,
}

/// automerge's loading of an [`Unread`] register: the document and whether it reads as its
/// columns did, or why it did not load.
pub type Checked = Result<(Box<Automerge>, bool), String>;

/// Load an [`Unread`] register's `bytes` with automerge (which checks the chunk whole, its
/// `heads` included) and compare its members with `members`, the columns' reading. Peer
/// bytes: a panic is a failure like any other. Needs no engine, so another thread can do
/// it.
pub fn load_unread(
    bytes: &[u8],
    heads: &[ChangeHash],
    members: &BTreeMap<RecordId, Option<Member>>,
    owner: &UnitId,
) -> Checked {
    catch_unwind(AssertUnwindSafe(|| {
        let d = Automerge::load(bytes).map_err(|e| e.to_string())?;
        let mut loaded = d.get_heads();
        loaded.sort();
        if loaded != heads {
            return Err("its heads are not the ones it names".to_owned());
        }
        let read: BTreeMap<RecordId, Option<Member>> = doc::read_members(&d, owner)
            .into_iter()
            .map(|m| (m.id.record, Some(m)))
            .collect();
        let same = read == *members;
        Ok((Box::new(d), same))
    }))
    .unwrap_or_else(|_| Err("automerge panicked loading it".to_owned()))
}

/// What automerge's loading of an [`Unread`] register found, for the store to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnreadOutcome {
    /// It loaded, and reads as its columns did.
    Loaded(DocId),
    /// automerge reads its members otherwise than its columns read: the views are written
    /// again from the loaded document.
    Differs(DocId),
    /// It does not load: the document is empty again here, and what the store holds of it
    /// goes. `from` sent it.
    Unloadable {
        doc: DocId,
        from: UnitId,
        detail: String,
    },
}

impl DocEntry {
    /// Estimated memory of the loaded document, its waiting changes and its compact form
    /// included.
    fn cost(&self) -> Option<u64> {
        let waiting = self.waiting.iter().map(|(_, n)| n).sum::<u64>();
        let saved = self.saved.as_ref().map_or(0, |s| s.bytes.len() as u64);
        self.doc.as_deref().map(|d| doc_cost(d) + waiting + saved)
    }

    /// The loaded document's compact form as it is now (see [`compact_form`]).
    fn saved(&mut self) -> Option<std::sync::Arc<[u8]>> {
        Some(compact_form(self.doc.as_deref()?, &mut self.saved))
    }
}

/// `d`'s compact form as it is now: the one `kept`, or made and kept there.
fn compact_form(d: &Automerge, kept: &mut Option<Saved>) -> std::sync::Arc<[u8]> {
    let heads = d.get_heads();
    if let Some(s) = kept
        && s.heads == heads
    {
        return s.bytes.clone();
    }
    let bytes: std::sync::Arc<[u8]> = doc::save(d).into();
    *kept = Some(Saved {
        heads,
        bytes: bytes.clone(),
    });
    bytes
}

impl DocEntry {
    /// The automerge document, when loaded.
    pub fn doc(&self) -> Option<&Automerge> {
        self.doc.as_deref()
    }
}

/// Estimated memory of a loaded document.
fn doc_cost(doc: &Automerge) -> u64 {
    DOC_BASE_BYTES + doc.stats().num_ops * OP_BYTES
}

/// What the engine holds in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Residency {
    /// Hosted documents.
    pub hosted: usize,
    /// Of those, loaded now.
    pub loaded: usize,
    /// Estimated memory of the loaded ones.
    pub loaded_bytes: u64,
}

/// Where an evicted document's compact form is read as stored, with the heads it holds,
/// when it is stored as exactly that (a snapshot and no later change): a peer taken to lack
/// the document is sent it without loading it.
pub type CompactSource = Box<dyn FnMut(&DocId) -> Option<StoredCompact> + Send>;

/// A document's heads as stored, and its compact form holding exactly them.
pub type StoredCompact = (Vec<ChangeHash>, Vec<u8>);

/// The optional [`DocSource`] and [`CompactSource`] (a named type so that the engine stays
/// `Debug`).
#[derive(Default)]
struct Source(Option<DocSource>, Option<CompactSource>);

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Source(set)"
        } else {
            "Source(none)"
        })
    }
}

/// A refused incoming message: sent back to the peer, counted and logged; nothing of the
/// message was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable reason code.
    pub reason: RejectReason,
    /// The document concerned, if any.
    pub doc: Option<DocId>,
    /// Detail for logs and the peer.
    pub detail: String,
}

impl Rejection {
    pub(super) fn new(
        reason: RejectReason,
        doc: Option<&DocId>,
        detail: impl Into<String>,
    ) -> Self {
        Rejection {
            reason,
            doc: doc.cloned(),
            detail: detail.into(),
        }
    }

    /// The message that tells the peer.
    pub fn to_msg(&self) -> Msg {
        Msg::Reject {
            reason: self.reason,
            doc: self.doc.clone(),
            detail: self.detail.clone(),
        }
    }
}

/// What one input produced.
#[derive(Debug, Default)]
pub struct Step {
    /// Messages to send, by peer, in order.
    pub send: Vec<(UnitId, Msg)>,
    /// Documents whose content changed (to persist and re-materialise).
    pub changed: BTreeSet<DocId>,
    /// Documents a peer changed, with that peer: once stored, push them to the other
    /// connected peers in scope ([`Engine::fan_out`]). The engine does not do it itself so
    /// that a node forwards only what it has made durable.
    pub forward: Vec<(DocId, UnitId)>,
    /// Documents created by this input (to persist their metadata).
    pub created: BTreeSet<DocId>,
    /// Parts of the input that were refused (already queued in `send` as `Reject`).
    pub rejected: Vec<Rejection>,
    /// Units whose changes were applied (freshness: "last heard from").
    pub authors: BTreeSet<UnitId>,
}

impl Step {
    fn reject(&mut self, peer: &UnitId, r: Rejection) {
        self.send.push((peer.clone(), r.to_msg()));
        self.rejected.push(r);
    }
}

/// The items of a batch frame not handled yet, with what the frame has used of its
/// budgets (see [`Engine::receive_until`]).
#[derive(Debug)]
pub struct BatchRest {
    items: VecDeque<(DocId, Vec<u8>)>,
    /// What the frame's changes have cost so far (one budget for the whole frame).
    spent: Spent,
    /// Items per document so far ([`MAX_ITEMS_PER_DOC`] for the whole frame).
    seen: HashMap<DocId, u32>,
}

impl BatchRest {
    fn new(items: Vec<(DocId, Vec<u8>)>) -> Self {
        BatchRest {
            items: items.into(),
            spent: Spent::default(),
            seen: HashMap::new(),
        }
    }

    /// Items left.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none is left.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Reconciliation progress of one link, for status displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkProgress {
    /// Documents being reconciled now.
    pub in_flight: usize,
    /// Documents waiting for a slot.
    pub queued: usize,
    /// Documents the peer offered whose unit is not registered here yet (not created; they
    /// wait for a profile that registers the unit).
    pub unregistered: usize,
    /// Whether the digest exchange waits for the peer: its summary of a unit this side
    /// summarised, or its next word after this side answered one of its summaries.
    pub descending: bool,
    /// Whether the peer's root digest has not arrived yet (this side sent its own).
    pub rootless: bool,
}

#[derive(Debug, Default)]
struct PeerSync {
    /// Persisted states not decoded yet (decoded on first use, never reused across links).
    saved: HashMap<DocId, Vec<u8>>,
    states: HashMap<DocId, sync::State>,
    /// Units whose summary this side sent during this session.
    summarised: HashSet<UnitId>,
    /// Whether this side sent its root digest and has not heard the peer's yet.
    root_awaited: bool,
    /// Units this side summarised whose summary the peer has not sent yet (its answer).
    summaries_awaited: HashSet<UnitId>,
    /// Whether this side answered a summary and has heard nothing from the peer since: an
    /// answer usually draws the peer's next word (its summaries or documents); lost, it
    /// would wait out QUIC's probe timeouts. Where nothing follows (that unit equal on both
    /// sides by then), the link's probes stop after 50.
    answered: bool,
    active: BTreeSet<DocId>,
    /// Documents holding a slot whose first message is not made yet (see
    /// [`Engine::open_link`]), in order, and the same as a set: one leaves the set once any
    /// message of it is made.
    unstarted: VecDeque<DocId>,
    unstarted_ids: HashSet<DocId>,
    queue: VecDeque<DocId>,
    queued: HashSet<DocId>,
    /// Documents the peer offered whose owner is not registered in this node's copy of the
    /// tree yet, by the unit whose profile must register the next unit down: created and
    /// started once a profile registers the owner.
    deferred: BTreeMap<UnitId, BTreeMap<DocId, DocMeta>>,
    /// Documents whose message from this peer was refused: not synced again this session.
    refused: HashSet<DocId>,
    /// Documents this side hosts that the peer's summary this session showed it lacks:
    /// their first message is the whole document (see [`assume_lacking`]).
    lacking: HashSet<DocId>,
    /// The peer's refusals of this side's messages heard this session.
    refusals_heard: u32,
    /// Per document, the heads of the last message that carried changes to the peer this
    /// session, and how many sent changes again at those heads ([`MAX_RESENDS`]). Kept when
    /// the document starts over, so a peer's refusals cannot reset it.
    resent: HashMap<DocId, (Vec<ChangeHash>, u32)>,
    /// The peer's asking again past [`MAX_RESENDS`], counted as refusals of its messages
    /// (as the store counts any) at the next step that carries them.
    asked_again: Vec<Rejection>,
}

impl PeerSync {
    /// This side cannot send `id` to the peer this session: its state dropped and the
    /// document refused until the next session. Returns the word that tells the peer, as
    /// this side's failure, so that it frees its slot and starts over next session; this
    /// side's slot is handed on (the word is the last one).
    fn give_up(&mut self, id: &DocId, detail: String) -> Msg {
        self.states.remove(id);
        if self.refused.len() < MAX_REFUSED {
            self.refused.insert(id.clone());
        }
        Msg::Reject {
            reason: RejectReason::ApplyFailed,
            doc: Some(id.clone()),
            detail,
        }
    }

    /// How many documents are set aside (see `deferred`).
    fn deferred_len(&self) -> usize {
        self.deferred.values().map(BTreeMap::len).sum()
    }

    /// The state of `id`, decoded from the saved bytes on first use or fresh.
    fn state(&mut self, id: &DocId) -> &mut sync::State {
        let saved = &mut self.saved;
        self.states.entry(id.clone()).or_insert_with(|| {
            saved
                .remove(id)
                .and_then(|b| sync::State::decode(&b).ok())
                .unwrap_or_default()
        })
    }
}

/// Until the peer has said this session what it has of a document, assume it still holds the
/// heads both sides shared when the last session ended (the saved state's): the first message
/// then carries this side's changes since, instead of only asking, and a catch-up takes one
/// round trip less (each costs on a lossy village line). A peer that no longer holds them (a
/// restore) answers with what it has, or a reset, and the exchange goes on from there; a
/// change it already held costs its bytes once. Nothing is assumed for a document never
/// synced with the peer, or whose shared heads this side does not hold.
fn assume_shared_heads_held(doc: &Automerge, state: &mut sync::State) {
    // Heads arrive with every message of the peer: none yet means it has said nothing this
    // session (a decoded state has an empty `their_have`, not none).
    if state.their_heads.is_some()
        || state.their_have.as_ref().is_some_and(|h| !h.is_empty())
        || state.shared_heads.is_empty()
        || !state
            .shared_heads
            .iter()
            .all(|h| doc.get_change_meta_by_hash(h).is_some())
    {
        return;
    }
    state.their_have = Some(vec![sync::Have {
        last_sync: state.shared_heads.clone(),
        bloom: sync::BloomFilter::default(),
    }]);
    state.their_need.get_or_insert_with(Vec::new);
    assume_v2(state);
}

/// The peer's summary this session listed no such document: until it has said anything of
/// it, take it to hold nothing, so the first message is the whole document (automerge's v2
/// form, its compressed `save()`) instead of a message that only asks what the peer has, a
/// round trip sooner for every document made since the last session. Every peer of this
/// protocol version reads v2 sync messages (docs/protocol.md). Were the summary stale, the
/// peer merges the document like any other message and the exchange goes on from its answer.
/// Returns whether it assumed so (the peer had said nothing of the document yet).
fn assume_lacking(state: &mut sync::State) -> bool {
    if state.their_heads.is_some() {
        return false;
    }
    state.their_heads = Some(Vec::new());
    state.their_need = Some(Vec::new());
    state.their_have = Some(vec![sync::Have {
        last_sync: Vec::new(),
        bloom: sync::BloomFilter::default(),
    }]);
    assume_v2(state);
    true
}

/// Whether a sync message's entry holds a whole document (automerge's compressed `save()`).
fn carries_document(entry: &[u8]) -> bool {
    split_chunks(entry)
        .is_some_and(|chunks| chunks.iter().any(|(kind, ..)| *kind == CHUNK_DOCUMENT))
}

/// Whether automerge's `generate_sync_message` would answer `state` with the whole document
/// (and this side makes that answer itself, [`whole_message`]): the peer holds nothing of it
/// (said so, or [`assume_lacking`]) and reads v2 messages, and nothing may make automerge
/// answer otherwise (read-only modes, a reset to send, a summary naming heads).
fn wants_whole(state: &sync::State) -> bool {
    state.their_heads.as_deref() == Some(&[])
        && state
            .their_capabilities
            .as_ref()
            .is_some_and(|c| c.contains(&sync::Capability::MessageV2))
        && state.their_need.is_some()
        // A summary naming heads (automerge checks this side holds them, or answers with a
        // reset) is left to automerge: a peer holding nothing names none, and looking up
        // hundreds a peer chose would cost this side more than automerge's own check.
        && state
            .their_have
            .as_ref()
            .is_some_and(|have| have.first().is_none_or(|h| h.last_sync.is_empty()))
        && !state.read_only
        && !state.peer_read_only
        && !state.needs_reset
}

/// What automerge's `generate_sync_message` makes, and does to `state`, where
/// [`wants_whole`]: the same message, with `compact()` (the document's `doc::save`, which the
/// caller keeps while the document does not change) where automerge would save the document
/// again each time. Unlike automerge's, it leaves out changes held waiting for their
/// dependencies (a peer's, never checked whole): `doc::save` does.
fn whole_message(
    doc: &Automerge,
    state: &mut sync::State,
    compact: impl FnOnce() -> Vec<u8>,
) -> Option<sync::Message> {
    let heads = doc.get_heads();
    let heads_unchanged = state.last_sent_heads == heads;
    if heads_unchanged && state.have_responded && state.in_flight {
        return None;
    }
    // Their heads are empty, so nothing is needed from them, and the summary goes.
    let hashes: Vec<ChangeHash> = doc.get_changes_meta(&[]).iter().map(|c| c.hash).collect();
    let since_shared: Vec<ChangeHash> = if state.shared_heads.is_empty() {
        hashes.clone()
    } else {
        doc.get_changes_meta(&state.shared_heads)
            .iter()
            .map(|c| c.hash)
            .collect()
    };
    let have = sync::Have {
        last_sync: state.shared_heads.clone(),
        bloom: sync::BloomFilter::from_hashes(since_shared.iter()),
    };
    // A document with no change goes as none (automerge's compact form of an empty
    // document is empty; one holding only changes waiting for others has no change to send).
    let (changes, hashes) = if hashes.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        (vec![compact()], hashes)
    };
    let heads_equal = state.their_heads.as_ref() == Some(&heads);
    if heads_unchanged && state.have_responded && heads_equal && changes.is_empty() {
        return None;
    }
    state.sent_hashes.extend(hashes);
    Some(sent_whole(state, heads, vec![have], changes))
}

/// The v2 message carrying `changes` (a whole document, or none) at `heads` with `have`, and
/// what sending it does to `state`, as automerge's `generate_sync_message` does: responded,
/// these heads sent, an answer awaited. (The hashes sent are the caller's to record.)
fn sent_whole(
    state: &mut sync::State,
    heads: Vec<ChangeHash>,
    have: Vec<sync::Have>,
    changes: Vec<Vec<u8>>,
) -> sync::Message {
    state.have_responded = true;
    state.last_sent_heads.clone_from(&heads);
    state.in_flight = true;
    let mut flags = sync::MessageFlags::new();
    flags.set(sync::MessageFlags::SUPPORTS_SYNC_RESET);
    sync::Message {
        heads,
        need: Vec::new(),
        have,
        changes: changes.into(),
        flags: Some(flags),
        version: sync::MessageVersion::V2,
    }
}

/// What automerge's receiving a message does to `state` before anything else: nothing is in
/// flight any more, and the message's flags say what the peer reads and whether it reads
/// only (a reset it asks for clears what was recorded as sent).
fn received_flags(state: &mut sync::State, flags: Option<sync::MessageFlags>) {
    state.in_flight = false;
    let Some(flags) = flags else {
        return;
    };
    let mut caps = vec![sync::Capability::MessageV2];
    if flags.contains(sync::MessageFlags::SUPPORTS_SYNC_RESET) {
        caps.push(sync::Capability::SyncReset);
    }
    state.their_capabilities = Some(caps);
    if flags.contains(sync::MessageFlags::SYNC_RESET) {
        state.sent_hashes.clear();
    }
    state.peer_read_only = flags.contains(sync::MessageFlags::READ_ONLY);
}

/// Peers of this protocol version read automerge's v2 sync messages; automerge learns it
/// only from the peer's first message, and without it sends a long backlog as a list of
/// changes rather than the compressed document.
fn assume_v2(state: &mut sync::State) {
    state
        .their_capabilities
        .get_or_insert_with(|| vec![sync::Capability::MessageV2]);
}

fn digest16(bytes: &[u8]) -> Digest {
    let d = digest(&SHA256, bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
}

fn heads_digest(doc: &Automerge) -> Digest {
    digest_of_heads(doc.get_heads())
}

fn digest_of_heads(mut heads: Vec<ChangeHash>) -> Digest {
    heads.sort();
    let mut buf = Vec::with_capacity(heads.len() * 32);
    for h in &heads {
        buf.extend_from_slice(h.as_ref());
    }
    digest16(&buf)
}

/// Refuse what automerge would trust in a peer's sync message: a Bloom filter whose shape
/// makes it divide by zero or allocate without bound when tested (automerge 0.12 panics on
/// a filter with no bits), and hash lists no honest peer sends (the message's own lists
/// were counted before it was decoded, [`message_counts`]).
fn check_message(m: &sync::Message) -> Result<(), String> {
    for have in &m.have {
        if have.last_sync.len() > MAX_HEADS {
            return Err(format!("a have lists {} hashes", have.last_sync.len()));
        }
        // Empty: no entries, never probed. Otherwise entries, bits per entry and probes, then
        // the bits, which must be there (automerge takes entries x bits / 8 bytes).
        let bloom = have.bloom.to_bytes();
        if bloom.is_empty() {
            continue;
        }
        let mut pos = 0;
        let (Some(_entries), Some(bits_per_entry), Some(probes)) = (
            leb128(&bloom, &mut pos),
            leb128(&bloom, &mut pos),
            leb128(&bloom, &mut pos),
        ) else {
            return Err("an unreadable Bloom filter".into());
        };
        if bits_per_entry == 0 || !(1..=MAX_PROBES).contains(&probes) || pos >= bloom.len() {
            return Err(format!(
                "a Bloom filter of {bits_per_entry} bits per entry, {probes} probes and {} \
                 bytes",
                bloom.len() - pos.min(bloom.len())
            ));
        }
    }
    Ok(())
}

/// `m` (made from `doc`) as several encoded messages of at most [`MAX_PART`] bytes of
/// changes each: the same heads, need, have and flags, and the changes it carries in
/// `doc`'s causal order, compressed, so that each part applies in full once the ones before
/// it have. A message carrying the document whole carries in parts only what is not behind
/// `shared` (heads both sides hold): the hashes it leaves out are returned, to be taken out
/// of the sync state's sent hashes, so that automerge sends any of them the peer turns out
/// to need.
fn split_message(
    doc: &Automerge,
    m: &sync::Message,
    shared: &[ChangeHash],
) -> Result<(Vec<Vec<u8>>, Vec<ChangeHash>), String> {
    let mut whole = false;
    let mut carried = HashSet::new();
    for entry in m.changes.iter() {
        for (kind, bytes, _) in split_chunks(entry).ok_or("an unreadable chunk")? {
            if kind == CHUNK_DOCUMENT {
                whole = true;
            } else {
                let c = Change::from_bytes(bytes.to_vec()).map_err(|e| format!("a change: {e}"))?;
                carried.insert(c.hash());
            }
        }
    }
    let mut left_out = Vec::new();
    if whole {
        let after: HashSet<ChangeHash> = doc.get_changes(shared).iter().map(Change::hash).collect();
        for c in doc.get_changes(&[]) {
            if after.contains(&c.hash()) {
                carried.insert(c.hash());
            } else {
                left_out.push(c.hash());
            }
        }
    }
    let frame = |changes: Vec<Vec<u8>>| {
        sync::Message {
            heads: m.heads.clone(),
            need: m.need.clone(),
            have: m.have.clone(),
            changes: changes.into(),
            flags: m.flags,
            version: m.version.clone(),
        }
        .encode()
    };
    // What each part repeats (heads, need, a have's Bloom filter) and the frame's own
    // header leave this much for one change.
    let frame_room = wire::MAX_FRAME.saturating_sub(frame(Vec::new()).len() + 1024);
    let mut parts: Vec<Vec<Vec<u8>>> = Vec::new();
    let (mut part, mut size, mut inflated, mut values) = (Vec::new(), 0, 0, 0);
    for mut c in doc.get_changes(&[]) {
        if !carried.contains(&c.hash()) {
            continue;
        }
        let raw = c.raw_bytes().len();
        if raw > MAX_PART_INFLATED {
            return Err(format!("one change of {raw} bytes"));
        }
        // A change past a part's values goes alone, as long as it stays well under a
        // receiver's cap for the frame.
        let declared = values_of(std::iter::once(c.raw_bytes()), MAX_ITEMS / 2);
        if declared > MAX_ITEMS / 2 {
            return Err(format!("one change of more than {} values", MAX_ITEMS / 2));
        }
        let bytes = c.bytes().into_owned();
        if bytes.len() > frame_room {
            return Err(format!("one change of {} bytes compressed", bytes.len()));
        }
        if !part.is_empty()
            && (size + bytes.len() > MAX_PART
                || inflated + raw > MAX_PART_INFLATED
                || values + declared > MAX_PART_ITEMS)
        {
            parts.push(std::mem::take(&mut part));
            (size, inflated, values) = (0, 0, 0);
        }
        size += bytes.len();
        inflated += raw;
        values += declared;
        part.push(bytes);
    }
    if !part.is_empty() {
        parts.push(part);
    }
    // Nothing past what both hold (a whole document sent to a peer that has it all):
    // one part with no changes still says the heads.
    if parts.is_empty() {
        parts.push(Vec::new());
    }
    Ok((parts.into_iter().map(frame).collect(), left_out))
}

/// The values the chunks of `changes` declare ([`items_declared`]), counting stopped a
/// little past `cap`; a chunk that does not read counts as past it.
fn values_of<'a>(changes: impl Iterator<Item = &'a [u8]>, cap: u64) -> u64 {
    let mut total = 0u64;
    for entry in changes {
        let Some(chunks) = split_chunks(entry) else {
            return u64::MAX;
        };
        for (kind, _, body) in chunks {
            let left = cap.saturating_sub(total);
            match items_declared(kind, body, left, MAX_INFLATED) {
                Some(d) => total = total.saturating_add(d.values),
                None => return u64::MAX,
            }
            if total > cap {
                return total;
            }
        }
    }
    total
}

/// Whether the changes `candidate` gained beyond `before` are all authored by units `below`
/// accepts, and every change of `queued` (a child's, authored outside its subtree) was
/// applied: one left waiting for its dependencies would be applied later, by a message
/// this check no longer sees. Only messages carrying such changes pay for it.
fn only_held_relayed(
    candidate: &Automerge,
    before: &[ChangeHash],
    queued: &[ChangeHash],
    below: impl Fn(&UnitId) -> bool,
) -> bool {
    let gained = candidate.get_changes_meta(before);
    gained
        .iter()
        .all(|c| ActorTag::unit_of(c.actor.to_bytes()).is_ok_and(|a| below(&a)))
        && queued
            .iter()
            .all(|h| candidate.get_change_meta_by_hash(h).is_some())
}

/// What one incoming frame's changes have cost so far, across every message of a batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct Spent {
    /// Bytes they inflated to ([`MAX_INFLATED`]).
    inflated: u64,
    /// Values their columns declare ([`MAX_ITEMS`]).
    items: u64,
}

/// What one sync message's changes carry, read before any is applied.
#[derive(Debug, Default)]
struct Carried {
    /// The author of each change, with its hash where the chunk is a single change (a
    /// document chunk's actors are read from its header, without hashes).
    authors: Vec<(UnitId, Option<ChangeHash>)>,
    /// Each single change's hash and inflated size.
    changes: Vec<(ChangeHash, u64)>,
    /// Changes opening an actor (sequence number 1), by hash: those the document does not
    /// hold yet are the actors the message adds.
    opening: Vec<ChangeHash>,
    /// Actors listed by document chunks (those a document holding anything already does
    /// not hold are new to it).
    listed: Vec<ActorId>,
    /// About the operations the message brings (its chunks' widest columns).
    ops: u64,
}

impl Carried {
    /// Refuse what would add too many actors to `doc` at once, or in all
    /// ([`MAX_ACTOR_REWRITES`], [`MAX_DOC_ACTORS`]): automerge rewrites every actor column
    /// of the document for each new one. A document chunk loaded into an empty document
    /// adds its actors at once, not one by one.
    fn actors_fit(&self, doc: &Automerge, id: &DocId) -> Result<(), Rejection> {
        let stats = doc.stats();
        let empty = stats.num_changes == 0;
        let opening = self
            .opening
            .iter()
            .filter(|h| doc.get_change_meta_by_hash(h).is_none())
            .count() as u64;
        // Only a whole document sent to a peer holding part of it (rare) pays for reading
        // the actors held.
        let listed = if self.listed.is_empty() {
            0
        } else if empty {
            // All of them new: counted against the document's cap, which a chunk listing
            // millions would otherwise pass.
            self.listed.iter().collect::<HashSet<_>>().len() as u64
        } else {
            let held: HashSet<ActorId> = doc
                .get_changes_meta(&[])
                .into_iter()
                .map(|c| c.actor.into_owned())
                .collect();
            self.listed.iter().filter(|a| !held.contains(*a)).count() as u64
        };
        let new = opening + listed;
        if new == 0 {
            return Ok(());
        }
        let too_large = |detail: String| Rejection::new(RejectReason::TooLarge, Some(id), detail);
        if stats.num_actors.saturating_add(new) > MAX_DOC_ACTORS {
            return Err(too_large(format!(
                "{new} actors more for a document of {} (at most {MAX_DOC_ACTORS})",
                stats.num_actors
            )));
        }
        if !empty && new.saturating_mul(stats.num_ops.saturating_add(self.ops)) > MAX_ACTOR_REWRITES
        {
            return Err(too_large(format!(
                "{new} new actors for a document of {} operations in one message",
                stats.num_ops
            )));
        }
        Ok(())
    }

    /// The changes `candidate` (the document with this message applied) holds waiting for
    /// their dependencies, of those `before` listed and this message's; refused past
    /// [`MAX_WAITING`] or [`MAX_WAITING_BYTES`].
    fn waiting_in(
        &self,
        candidate: &Automerge,
        before: &[(ChangeHash, u64)],
        id: &DocId,
    ) -> Result<Vec<(ChangeHash, u64)>, Rejection> {
        let mut seen = HashSet::new();
        let waiting: Vec<(ChangeHash, u64)> = before
            .iter()
            .chain(&self.changes)
            .filter(|(h, _)| seen.insert(*h) && candidate.get_change_meta_by_hash(h).is_none())
            .copied()
            .collect();
        let bytes = waiting.iter().map(|(_, n)| n).sum::<u64>();
        if waiting.len() > MAX_WAITING || bytes > MAX_WAITING_BYTES {
            return Err(Rejection::new(
                RejectReason::TooLarge,
                Some(id),
                format!(
                    "{} changes ({bytes} bytes) waiting for changes never sent (at most \
                     {MAX_WAITING}, {MAX_WAITING_BYTES} bytes)",
                    waiting.len()
                ),
            ));
        }
        Ok(waiting)
    }
}

/// Read one sync-message chunk (a change, several changes, or a whole document) into
/// `carried`, without touching any hosted document: its authors, and what it costs. What
/// it inflates to and the values its columns declare are added to the frame's `spent`,
/// and the chunk refused once either passes its cap ([`MAX_INFLATED`], [`MAX_ITEMS`]),
/// before automerge decodes it.
fn authors_of(
    chunk: &[u8],
    id: &DocId,
    spent: &mut Spent,
    carried: &mut Carried,
) -> Result<(), Rejection> {
    let malformed = |what: &str| Rejection::new(RejectReason::Malformed, Some(id), what.to_owned());
    let too_large = |what: String| Rejection::new(RejectReason::TooLarge, Some(id), what);
    let unit = |c: &Change| {
        ActorTag::unit_of(c.actor_id().to_bytes()).map_err(|_| {
            Rejection::new(
                RejectReason::Unauthorised,
                Some(id),
                "a change's actor does not name a unit",
            )
        })
    };
    for (kind, bytes, body) in
        split_chunks(chunk).ok_or_else(|| malformed("unreadable change chunk"))?
    {
        let left = MAX_INFLATED.saturating_sub(spent.inflated);
        let size = inflated_len(kind, body, left)
            .ok_or_else(|| malformed("unreadable or corrupt compressed chunk"))?;
        spent.inflated = spent.inflated.saturating_add(size);
        if spent.inflated > MAX_INFLATED {
            return Err(too_large(format!(
                "the frame's changes inflate past {MAX_INFLATED} bytes"
            )));
        }
        let left = MAX_ITEMS.saturating_sub(spent.items);
        let declared = items_declared(kind, body, left, size)
            .ok_or_else(|| malformed("unreadable change columns"))?;
        spent.items = spent.items.saturating_add(declared.values);
        carried.ops = carried.ops.saturating_add(declared.widest);
        if spent.items > MAX_ITEMS {
            return Err(too_large(format!(
                "the frame's changes declare more than {MAX_ITEMS} values"
            )));
        }
        // Every object of a document is a map directly under the root (a record, or a
        // profile's set) holding scalars. automerge reads objects recursively (`hydrate`, a
        // diff's paths), so a chain of maps nested thousands deep in a few hundred KB would
        // overflow the stack of whatever reads the record: an abort no `catch_unwind` stops.
        match makes_nested_objects(kind, body, size) {
            Some(false) => {}
            Some(true) => {
                return Err(malformed(
                    "an object other than a map under the root (objects are records' maps)",
                ));
            }
            None => return Err(malformed("unreadable op columns")),
        }
        match kind {
            CHUNK_CHANGE | CHUNK_COMPRESSED_CHANGE => {
                // Peer bytes: a panic decoding them is a refusal like any other.
                let c = catch_unwind(|| Change::from_bytes(bytes.to_vec()))
                    .map_err(|_| malformed("automerge panicked decoding a change"))?
                    .map_err(|e| malformed(&format!("change: {e}")))?;
                carried.authors.push((unit(&c)?, Some(c.hash())));
                carried.changes.push((c.hash(), size));
                if c.seq() == 1 {
                    carried.opening.push(c.hash());
                }
            }
            CHUNK_DOCUMENT => {
                // A whole document (sent to a peer that has nothing). Its body opens with the
                // list of every actor its changes use (a change naming an actor outside the
                // list does not load), so checking that list checks every author without
                // decoding the document twice.
                for actor in document_actors(body) {
                    let actor = actor.ok_or_else(|| malformed("unreadable document chunk"))?;
                    // Held before any count: a chunk may list millions (see `actors_fit`).
                    if carried.listed.len() as u64 >= MAX_DOC_ACTORS {
                        return Err(too_large(format!(
                            "a document chunk listing more than {MAX_DOC_ACTORS} actors"
                        )));
                    }
                    let author = ActorTag::unit_of(actor).map_err(|_| {
                        Rejection::new(
                            RejectReason::Unauthorised,
                            Some(id),
                            "a document actor does not name a unit",
                        )
                    })?;
                    carried.authors.push((author, None));
                    carried.listed.push(ActorId::from(actor));
                }
            }
            _ => return Err(malformed("unknown chunk type")),
        }
    }
    Ok(())
}

/// The documents of one node and the sync state of each connected peer.
///
/// Lifecycle: owned by the store actor. [`Engine::connect`] when a link's hello is done,
/// [`Engine::receive`] for each message, [`Engine::disconnect`] when the link ends (its sync
/// states are returned for persisting and never reused in memory: the saved bytes are
/// decoded afresh at the next connection).
#[derive(Debug)]
pub struct Engine {
    me: UnitId,
    actor: ActorId,
    docs: BTreeMap<DocId, DocEntry>,
    peers: HashMap<UnitId, PeerSync>,
    /// Index: owner unit -> its documents.
    by_owner: BTreeMap<UnitId, BTreeSet<DocId>>,
    /// Index: unit -> child units with documents somewhere below them.
    kids: BTreeMap<UnitId, BTreeSet<UnitId>>,
    /// Heads digests, dropped when a document may have changed.
    doc_digests: HashMap<DocId, Digest>,
    /// Digests of whole subtrees over every hosted document owned in them, dropped up the
    /// chain of ancestors when a document below may have changed. Within the subtree of a
    /// link's child every hosted document is in the link's scope, so these serve every link.
    subtree_digests: HashMap<UnitId, Digest>,
    /// Reads evicted documents back; without one nothing is evicted.
    source: Source,
    /// Use counter for least-recently-used eviction.
    tick: u64,
    /// Documents loaded now (eviction looks at these only, not at every hosted one).
    resident: HashSet<DocId>,
    /// Per unit, the children its hosted profile registers (read on first use, dropped
    /// when that profile may have changed).
    registered: HashMap<UnitId, BTreeSet<UnitId>>,
    /// Documents held as [`Unread`].
    unread: BTreeSet<DocId>,
    /// What loading [`Unread`] documents found, until the store takes it.
    unread_outcomes: Vec<UnreadOutcome>,
    /// Until when changes authored at or above this node are taken from its children (set
    /// after a restore from a backup, or by `store take-back` after a lost disk: what this
    /// node wrote may then be held only below).
    /// (Unix milliseconds.)
    returning_until: Option<u64>,
}

impl Engine {
    /// An engine for the node of `me`, authoring local changes as `actor`.
    pub fn new(me: UnitId, actor: ActorId) -> Self {
        Engine {
            me,
            actor,
            docs: BTreeMap::new(),
            peers: HashMap::new(),
            by_owner: BTreeMap::new(),
            kids: BTreeMap::new(),
            doc_digests: HashMap::new(),
            subtree_digests: HashMap::new(),
            source: Source::default(),
            tick: 0,
            resident: HashSet::new(),
            registered: HashMap::new(),
            returning_until: None,
            unread: BTreeSet::new(),
            unread_outcomes: Vec::new(),
        }
    }

    /// Take changes authored by this node's unit or above it from its children until
    /// `until`. A child relays only changes authored in its own subtree: anything else it
    /// sends is a forgery (an actor id is not signed) unless this node lost it, as a restore
    /// from an older backup, or a store lost with its disk, does.
    /// `until_ms` is in Unix milliseconds.
    pub fn take_returning_changes_until(&mut self, until_ms: Option<u64>) {
        self.returning_until = until_ms;
    }

    /// Until when (Unix milliseconds) changes made at or above this node are taken from its
    /// children, while that lasts.
    pub fn returning_until(&self) -> Option<u64> {
        self.returning_until
            .filter(|until| *until > crate::status::now_ms())
    }

    /// A child's change authored outside its subtree that this node did not hold. Without
    /// this refusal a child could act with its parent's authority: rewrite the parent's
    /// profile or what the units above address to it, or review its own report, by naming
    /// the parent's unit in its changes' actor id.
    fn relayed_rejection(&self, peer: &UnitId, id: &DocId) -> Rejection {
        Rejection::new(
            RejectReason::Unauthorised,
            Some(id),
            format!(
                "a change authored above {peer}, sent by {peer}, that {} did not hold: a child \
                 relays only changes authored in its own subtree",
                self.me
            ),
        )
    }

    /// Let the engine evict documents, reading them back from `source` when next needed.
    pub fn set_source(&mut self, source: DocSource) {
        self.source.0 = Some(source);
    }

    /// Let the engine send a peer that lacks an evicted document its compact form as
    /// stored, without loading it.
    pub fn set_compact_source(&mut self, source: CompactSource) {
        self.source.1 = Some(source);
    }

    /// Make `id` loaded (reading it from the source if evicted) and mark it used.
    fn ensure(&mut self, id: &DocId) -> Result<&mut Automerge, Rejection> {
        self.tick += 1;
        let entry = self.docs.get_mut(id).ok_or_else(|| {
            Rejection::new(RejectReason::ApplyFailed, Some(id), "no such document")
        })?;
        entry.used = self.tick;
        if entry.doc.is_none() && entry.unread.is_some() {
            self.read_unread(id)?;
        }
        let Some(entry) = self.docs.get_mut(id) else {
            return Err(Rejection::new(
                RejectReason::ApplyFailed,
                Some(id),
                "no such document",
            ));
        };
        if entry.doc.is_none() {
            let source = self.source.0.as_mut().ok_or_else(|| {
                Rejection::new(RejectReason::ApplyFailed, Some(id), "evicted, no source")
            })?;
            let mut d = source(id).map_err(|e| {
                Rejection::new(
                    RejectReason::ApplyFailed,
                    Some(id),
                    format!("cannot load the document: {e}"),
                )
            })?;
            d.set_actor(self.actor.clone());
            // The digest kept while evicted must describe what was loaded.
            let stale = self.doc_digests.get(id) != Some(&heads_digest(&d));
            // (No compact form to clear: one is kept only while loaded, and eviction drops it.)
            entry.doc = Some(Box::new(d));
            entry.waiting.clear();
            self.resident.insert(id.clone());
            if stale {
                tracing::warn!(doc = %id, "a reloaded document differs from its digest");
                self.invalidate(id);
            }
        }
        self.docs
            .get_mut(id)
            .and_then(|e| e.doc.as_deref_mut())
            .ok_or_else(|| {
                Rejection::new(RejectReason::ApplyFailed, Some(id), "document not loaded")
            })
    }

    /// The document `id`, loaded if it was evicted (for the store's reads and commits).
    pub fn load(&mut self, id: &DocId) -> Result<&Automerge, Rejection> {
        self.ensure(id).map(|d| &*d)
    }

    /// The compact form (`doc::save`) of `id` as it is now, when loaded: kept from the last
    /// time it was made, or made and kept (see [`Saved`]).
    pub fn saved(&mut self, id: &DocId) -> Option<std::sync::Arc<[u8]>> {
        self.docs.get_mut(id)?.saved()
    }

    /// The register `id` as taken whole from a peer, while automerge has not read it.
    pub fn unread(&self, id: &DocId) -> Option<&Unread> {
        self.docs.get(id)?.unread.as_deref()
    }

    /// Have automerge load the unread register `id` (see [`Unread`]) here and now; what it
    /// found is in [`Engine::take_unread_outcomes`].
    pub fn check_unread(&mut self, id: &DocId) {
        if self.unread(id).is_some() {
            let _ = self.ensure(id);
        }
    }

    /// What loading unread registers found since last asked.
    pub fn take_unread_outcomes(&mut self) -> Vec<UnreadOutcome> {
        std::mem::take(&mut self.unread_outcomes)
    }

    /// Take what automerge's loading of the unread register `id` at `heads` gave elsewhere
    /// ([`load_unread`], on another thread): the loaded document, or why it did not load.
    /// Nothing when `id` is no longer unread at those heads (loaded here since).
    pub fn adopt_checked(&mut self, id: &DocId, heads: &[ChangeHash], loaded: Checked) {
        if self.unread(id).is_some_and(|u| u.heads == heads) {
            let _ = self.settle_unread(id, loaded);
        }
    }

    /// Load the unread register `id` from the bytes its peer sent, here.
    fn read_unread(&mut self, id: &DocId) -> Result<(), Rejection> {
        let Some(unread) = self.unread(id) else {
            return Ok(());
        };
        let loaded = load_unread(&unread.bytes, &unread.heads, &unread.members, &id.owner);
        self.settle_unread(id, loaded)
    }

    /// Hold the unread register `id` as automerge loaded it, noting when its reading
    /// differs from the columns'; when it did not load, the document is empty here again
    /// (its peer refused for it this session, every peer's state of it dropped).
    fn settle_unread(&mut self, id: &DocId, loaded: Checked) -> Result<(), Rejection> {
        let Some(entry) = self.docs.get_mut(id) else {
            return Ok(());
        };
        let Some(unread) = entry.unread.take() else {
            return Ok(());
        };
        self.unread.remove(id);
        match loaded {
            Ok((mut d, same)) => {
                d.set_actor(self.actor.clone());
                entry.doc = Some(d);
                self.resident.insert(id.clone());
                if same {
                    self.unread_outcomes.push(UnreadOutcome::Loaded(id.clone()));
                } else {
                    tracing::error!(doc = %id, "a register read from its columns differs from automerge's reading; its views are written again");
                    self.unread_outcomes
                        .push(UnreadOutcome::Differs(id.clone()));
                }
                Ok(())
            }
            Err(detail) => {
                self.empty_again(id);
                if let Some(p) = self.peers.get_mut(&unread.from)
                    && p.refused.len() < MAX_REFUSED
                {
                    p.refused.insert(id.clone());
                }
                let detail = format!("the register it sent whole does not load: {detail}");
                self.unread_outcomes.push(UnreadOutcome::Unloadable {
                    doc: id.clone(),
                    from: unread.from.clone(),
                    detail: detail.clone(),
                });
                // Not this message's fault (it may be another's): the peer is counted by
                // the store, from the outcome.
                Err(Rejection::new(RejectReason::ApplyFailed, Some(id), detail))
            }
        }
    }

    /// Hold `id` empty (what was held of it does not load): every peer's state of it
    /// dropped, its digest made again.
    pub fn empty_again(&mut self, id: &DocId) {
        let Some(entry) = self.docs.get_mut(id) else {
            return;
        };
        entry.doc = Some(Box::new(doc::empty(&self.actor)));
        entry.waiting.clear();
        entry.unread = None;
        self.unread.remove(id);
        self.resident.insert(id.clone());
        self.invalidate(id);
        for p in self.peers.values_mut() {
            p.states.remove(id);
        }
    }

    /// Whether `id` is held with nothing in it: new here, or made empty when the peer's
    /// summary named it (this side then asked for it).
    fn empty_here(&self, id: &DocId) -> bool {
        self.docs.get(id).is_none_or(|e| {
            e.unread.is_none()
                && e.waiting.is_empty()
                && e.doc.as_deref().is_some_and(|d| d.get_heads().is_empty())
        })
    }

    /// The register `message` carries whole, read from its columns, when it can be taken
    /// unread (see [`Unread`]): a members document held empty here, sent as one document
    /// chunk by a peer with which nothing of it is shared, nothing asked of this side, heads
    /// named as the chunk names them.
    fn unread_register(
        &mut self,
        peer: &UnitId,
        id: &DocId,
        meta: &DocMeta,
        message: &sync::Message,
    ) -> Option<super::register::Register> {
        if id.kind != DocKind::Members
            || self.unread.len() >= MAX_UNREAD
            || !super::fields::unguarded(meta)
            || !message.need.is_empty()
            || message
                .flags
                .is_some_and(|f| f.contains(sync::MessageFlags::READ_ONLY))
        {
            return None;
        }
        let [chunk] = message.changes.iter().collect::<Vec<_>>()[..] else {
            return None;
        };
        if chunk.len() < MIN_UNREAD_BYTES {
            return None;
        }
        let [(CHUNK_DOCUMENT, _, body)] = split_chunks(chunk)?[..] else {
            return None;
        };
        // Nothing shared or sent yet (what this side said of it, holding nothing, does
        // not count: the message's heads, summary and needs replace the peer's).
        let state = self.peers.get_mut(peer)?.state(id);
        if !state.sent_hashes.is_empty()
            || !state.shared_heads.is_empty()
            || state.read_only
            || state.needs_reset
        {
            return None;
        }
        // Our reader, on a peer's bytes: isolated as automerge is (a panic leaves the
        // register to automerge's load).
        let register = catch_unwind(AssertUnwindSafe(|| {
            super::register::read(body, &id.owner, MAX_INFLATED)
        }))
        .ok()??;
        let mut named = message.heads.clone();
        named.sort();
        (!named.is_empty() && named == register.heads).then_some(register)
    }

    /// Hold `id` as the [`Unread`] `register` sent in `message` by `peer`, leaving the peer's
    /// state as automerge's receiving the message would.
    fn take_unread(
        &mut self,
        peer: &UnitId,
        id: &DocId,
        register: super::register::Register,
        message: sync::Message,
    ) {
        let Some(entry) = self.docs.get_mut(id) else {
            return;
        };
        let heads = register.heads;
        entry.doc = None;
        entry.waiting.clear();
        entry.unread = Some(Box::new(Unread {
            bytes: message
                .changes
                .iter()
                .next()
                .map(Into::into)
                .unwrap_or_default(),
            heads: heads.clone(),
            members: std::sync::Arc::new(
                register
                    .members
                    .into_iter()
                    .map(|(r, m)| (r, Some(m)))
                    .collect(),
            ),
            from: peer.clone(),
        }));
        self.unread.insert(id.clone());
        self.resident.remove(id);
        self.invalidate(id);
        self.doc_digests
            .insert(id.clone(), digest_of_heads(heads.clone()));
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let state = p.state(id);
        received_flags(state, message.flags);
        state.shared_heads = message.heads.clone();
        state.their_have = Some(message.have);
        state.their_heads = Some(message.heads);
        state.their_need = Some(message.need);
    }

    /// Take `message` for the unread register `id` as automerge's `receive_sync_message`
    /// would, without loading it, where that needs nothing the heads do not tell: the
    /// message carries no change, names only heads this side holds, and nothing is recorded
    /// as sent to the peer. False (nothing done) otherwise.
    fn receive_unread(&mut self, peer: &UnitId, id: &DocId, message: &sync::Message) -> bool {
        let Some(ours) = self.unread(id).map(|u| u.heads.clone()) else {
            return false;
        };
        let Some(p) = self.peers.get_mut(peer) else {
            return false;
        };
        let state = p.state(id);
        if !message.changes.is_empty()
            || !state.sent_hashes.is_empty()
            || message.heads.is_empty()
            || !message.heads.iter().all(|h| ours.binary_search(h).is_ok())
        {
            return false;
        }
        received_flags(state, message.flags);
        if message.heads == ours {
            state.last_sent_heads.clone_from(&message.heads);
        }
        state.shared_heads.clone_from(&message.heads);
        state.their_have = Some(message.have.clone());
        state.their_heads = Some(message.heads.clone());
        state.their_need = Some(message.need.clone());
        true
    }

    /// What automerge's `generate_sync_message` would make for an unread register whose
    /// peer holds exactly its heads and asks nothing (the answer to the peer that sent it):
    /// `Some(None)` nothing to say, `Some(Some(_))` the message, `None` when the state is any
    /// other (the register is then loaded, and automerge answers).
    fn unread_answer(&mut self, peer: &UnitId, id: &DocId) -> Option<Option<sync::Message>> {
        let heads = self.docs.get(id)?.unread.as_ref()?.heads.clone();
        let state = self.peers.get_mut(peer)?.state(id);
        let sorted = |h: &[ChangeHash]| {
            let mut h = h.to_vec();
            h.sort();
            h
        };
        if state.their_heads.as_deref().map(sorted) != Some(heads.clone())
            || sorted(&state.shared_heads) != heads
            || state.their_need.as_ref().is_none_or(|n| !n.is_empty())
            // A peer at exactly these heads is sent nothing whatever its summary says
            // (its Bloom filter holds every change since its last sync, all of them this
            // side's), once automerge finds the summary's last syncs here: heads of these
            // are, any other needs the document to tell.
            || state.their_have.as_ref().is_none_or(|have| {
                have.iter()
                    .flat_map(|h| &h.last_sync)
                    .any(|h| heads.binary_search(h).is_err())
            })
            || state.read_only
            || state.peer_read_only
            || state.needs_reset
        {
            return None;
        }
        if state.last_sent_heads == heads && state.have_responded {
            return Some(None);
        }
        // Nothing since the shared heads: an empty summary of them.
        let have = sync::Have {
            last_sync: state.shared_heads.clone(),
            bloom: sync::BloomFilter::from_hashes(std::iter::empty::<&ChangeHash>()),
        };
        Some(Some(sent_whole(state, heads, vec![have], Vec::new())))
    }

    /// Evict least recently used documents until the loaded ones are estimated under
    /// `budget` bytes. Skips documents in flight on a link and those `keep` names (given the
    /// id and current heads: the store keeps what it has not yet persisted). Nothing is
    /// evicted without a source. Returns how many were evicted.
    pub fn evict_to(&mut self, budget: u64, keep: impl Fn(&DocId, &[ChangeHash]) -> bool) -> usize {
        if self.source.0.is_none() {
            return 0;
        }
        let docs = &self.docs;
        let mut loaded: Vec<(u64, DocId, u64)> = self
            .resident
            .iter()
            .filter_map(|id| {
                let e = docs.get(id)?;
                e.cost().map(|c| (e.used, id.clone(), c))
            })
            .collect();
        let mut total: u64 = loaded.iter().map(|(_, _, c)| c).sum();
        if total <= budget {
            return 0;
        }
        let active: HashSet<DocId> = self
            .peers
            .values()
            .flat_map(|p| p.active.iter().cloned())
            .collect();
        loaded.sort();
        let mut evicted = 0;
        for (_, id, cost) in loaded {
            if total <= budget {
                break;
            }
            if active.contains(&id) {
                continue;
            }
            let Some(heads) = self
                .docs
                .get(&id)
                .and_then(|e| e.doc.as_ref())
                .map(|d| d.get_heads())
            else {
                continue;
            };
            if keep(&id, &heads) {
                continue;
            }
            // The digest must outlive the document.
            self.doc_digest(&id);
            if let Some(e) = self.docs.get_mut(&id) {
                e.doc = None;
                e.saved = None;
                e.waiting.clear();
                self.resident.remove(&id);
                total = total.saturating_sub(cost);
                evicted += 1;
            }
        }
        evicted
    }

    /// How many documents are hosted and loaded, and their estimated memory.
    pub fn residency(&self) -> Residency {
        let mut r = Residency {
            hosted: self.docs.len(),
            ..Residency::default()
        };
        for cost in self
            .resident
            .iter()
            .filter_map(|id| self.docs.get(id)?.cost())
        {
            r.loaded += 1;
            r.loaded_bytes += cost;
        }
        r
    }

    /// Host a document, keeping the indexes and caches right.
    fn add_doc(&mut self, meta: DocMeta, doc: Option<Automerge>) {
        let id = meta.id.clone();
        let owner = meta.owner().clone();
        let loaded = doc.is_some();
        self.tick += 1;
        let used = self.tick;
        let doc = doc.map(Box::new);
        self.docs.insert(
            id.clone(),
            DocEntry {
                meta,
                doc,
                used,
                waiting: Vec::new(),
                saved: None,
                unread: None,
            },
        );
        self.by_owner
            .entry(owner.clone())
            .or_default()
            .insert(id.clone());
        let mut unit = owner;
        while let Some(parent) = unit.parent() {
            self.kids.entry(parent.clone()).or_default().insert(unit);
            unit = parent;
        }
        if loaded {
            self.resident.insert(id.clone());
            self.invalidate(&id);
        } else {
            // Unloaded: its digest came with it.
            self.resident.remove(&id);
            self.invalidate_line(&id.owner);
            if id.kind == DocKind::Profile {
                self.registered.remove(&id.owner);
            }
        }
    }

    /// `id` may have changed: drop its cached digest and those of its owner's line (and
    /// the registrations read from it, for a profile).
    fn invalidate(&mut self, id: &DocId) {
        self.doc_digests.remove(id);
        if let Some(e) = self.docs.get_mut(id) {
            e.saved = None;
        }
        self.invalidate_line(&id.owner);
        if id.kind == DocKind::Profile {
            self.registered.remove(&id.owner);
        }
    }

    /// Drop the subtree digests of `unit` and every ancestor.
    fn invalidate_line(&mut self, unit: &UnitId) {
        for u in unit.line() {
            self.subtree_digests.remove(&u);
        }
    }

    fn doc_digest(&mut self, id: &DocId) -> Digest {
        if let Some(d) = self.doc_digests.get(id) {
            return *d;
        }
        let d = self
            .docs
            .get(id)
            .and_then(|e| e.doc.as_deref())
            .map(heads_digest)
            .unwrap_or_default();
        self.doc_digests.insert(id.clone(), d);
        d
    }

    fn hash_unit(unit: &UnitId, docs: &[(DocMeta, Digest)], kids: &[(UnitId, Digest)]) -> Digest {
        let mut buf = Vec::new();
        buf.extend_from_slice(unit.as_str().as_bytes());
        buf.push(0);
        for (meta, d) in docs {
            buf.extend_from_slice(meta.id.to_string().as_bytes());
            buf.push(0);
            buf.extend_from_slice(&wire::encode_audience(&meta.audience));
            buf.extend_from_slice(d);
        }
        buf.push(0xff);
        for (k, d) in kids {
            buf.extend_from_slice(k.as_str().as_bytes());
            buf.push(0);
            buf.extend_from_slice(d);
        }
        digest16(&buf)
    }

    /// Digest of everything hosted and owned in `unit`'s subtree (cached).
    fn subtree_digest(&mut self, unit: &UnitId) -> Digest {
        if let Some(d) = self.subtree_digests.get(unit) {
            return *d;
        }
        let docs = self.unit_docs(unit, None);
        let kid_ids: Vec<UnitId> = self.kids.get(unit).into_iter().flatten().cloned().collect();
        let kids: Vec<(UnitId, Digest)> = kid_ids
            .into_iter()
            .map(|k| {
                let d = self.subtree_digest(&k);
                (k, d)
            })
            .collect();
        let d = Self::hash_unit(unit, &docs, &kids);
        self.subtree_digests.insert(unit.clone(), d);
        d
    }

    /// Documents owned by `unit` (only those in the link's scope when `link` names the
    /// link's child), sorted by id, with their heads digests.
    fn unit_docs(&mut self, unit: &UnitId, link: Option<&UnitId>) -> Vec<(DocMeta, Digest)> {
        let ids: Vec<DocId> = self
            .by_owner
            .get(unit)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(meta) = self.docs.get(&id).map(|e| e.meta.clone()) else {
                continue;
            };
            if link.is_some_and(|child| !replicated_at(child, &meta)) {
                continue;
            }
            let d = self.doc_digest(&id);
            out.push((meta, d));
        }
        out
    }

    /// The scope tree of the link whose child end is `child`, seen at `unit`: its documents
    /// and its children with their digests. Below (and at) the child every hosted document
    /// is in scope, so the cached subtree digests serve; above it only the path to the
    /// child and what ancestors address to the child's subtree count.
    fn link_node(&mut self, child: &UnitId, unit: &UnitId) -> (Vec<DocDigest>, Vec<UnitDigest>) {
        if unit.is_in_subtree_of(child) {
            let docs = self.unit_docs(unit, None);
            let kid_ids: Vec<UnitId> = self.kids.get(unit).into_iter().flatten().cloned().collect();
            let kids = kid_ids
                .into_iter()
                .map(|k| {
                    let d = self.subtree_digest(&k);
                    (k, d)
                })
                .collect();
            (docs, kids)
        } else if unit.is_ancestor_of(child) {
            let docs = self.unit_docs(unit, Some(child));
            let next = child
                .labels()
                .take(unit.labels().count() + 1)
                .collect::<Vec<_>>()
                .join("/")
                .parse::<UnitId>();
            let kids = match next {
                Ok(next) => {
                    let d = self.link_digest(child, &next);
                    vec![(next, d)]
                }
                Err(_) => Vec::new(),
            };
            (docs, kids)
        } else {
            (Vec::new(), Vec::new())
        }
    }

    /// Digest of `unit` in the scope tree of the link whose child end is `child`.
    fn link_digest(&mut self, child: &UnitId, unit: &UnitId) -> Digest {
        if unit.is_in_subtree_of(child) {
            return self.subtree_digest(unit);
        }
        let (docs, kids) = self.link_node(child, unit);
        Self::hash_unit(unit, &docs, &kids)
    }

    fn summary(&mut self, child: &UnitId, unit: &UnitId) -> Summary {
        let (docs, children) = self.link_node(child, unit);
        Summary {
            unit: unit.clone(),
            docs,
            children,
        }
    }

    /// The node's unit.
    pub fn me(&self) -> &UnitId {
        &self.me
    }

    /// Host a document loaded from storage.
    pub fn insert(&mut self, meta: DocMeta, mut doc: Automerge) {
        doc.set_actor(self.actor.clone());
        self.add_doc(meta, Some(doc));
    }

    /// Host a document known by its heads only: it is read from the source when first
    /// needed (start-up of a store with many documents).
    pub fn insert_unloaded(&mut self, meta: DocMeta, heads: Vec<ChangeHash>) {
        self.doc_digests
            .insert(meta.id.clone(), digest_of_heads(heads));
        self.add_doc(meta, None);
    }

    /// A hosted document.
    pub fn get(&self, id: &DocId) -> Option<&DocEntry> {
        self.docs.get(id)
    }

    /// Every hosted document.
    pub fn docs(&self) -> impl Iterator<Item = &DocEntry> {
        self.docs.values()
    }

    /// The document to write locally, created empty when absent. Refuses documents this
    /// node may not hold or author (rules 1 and 2 for local writes). Returns whether it
    /// was created.
    pub fn local_doc(&mut self, meta: DocMeta) -> Result<(&mut Automerge, bool), Rejection> {
        if !replicated_at(&self.me, &meta) {
            return Err(Rejection::new(
                RejectReason::OutOfScope,
                Some(&meta.id),
                format!("{} does not hold {}", self.me, meta.id),
            ));
        }
        if !may_author(&self.me, meta.owner()) {
            return Err(Rejection::new(
                RejectReason::Unauthorised,
                Some(&meta.id),
                format!("{} may not write {}", self.me, meta.id),
            ));
        }
        let id = meta.id.clone();
        let created = !self.docs.contains_key(&id);
        if created {
            let doc = doc::empty(&self.actor);
            self.add_doc(meta, Some(doc));
        } else {
            self.ensure(&id)?;
            // The caller is about to change it.
            self.invalidate(&id);
        }
        Ok((self.ensure(&id)?, created))
    }

    /// Whether `unit`'s parent registers it in the profile this node holds (a root has no
    /// parent to register it).
    fn is_registered(&mut self, unit: &UnitId) -> bool {
        let Some(parent) = unit.parent() else {
            return true;
        };
        if let Some(kids) = self.registered.get(&parent) {
            return kids.contains(unit);
        }
        let id = DocId::new(DocKind::Profile, parent.clone());
        let kids: BTreeSet<UnitId> = if self.docs.contains_key(&id) {
            match self.ensure(&id) {
                Ok(d) => doc::profile_children(d, &parent).into_iter().collect(),
                Err(r) => {
                    tracing::error!(doc = %id, "cannot read registrations: {}", r.detail);
                    BTreeSet::new()
                }
            }
        } else {
            BTreeSet::new()
        };
        let yes = kids.contains(unit);
        self.registered.insert(parent, kids);
        yes
    }

    /// The first unit, walking down from the link's child `child` to `owner`, that its
    /// parent's profile does not register; `None` when a document of `owner` may be created
    /// from the link. So whatever a child's subtree sends belongs to a unit the tree shows.
    /// The child itself was checked at the handshake, and units at or above it are not the
    /// child's to add. Walking down stops at the first unknown unit, so made-up ids below
    /// it cost no lookups (and fill no cache).
    fn unregistered_below(&mut self, child: &UnitId, owner: &UnitId) -> Option<UnitId> {
        if !child.is_ancestor_of(owner) {
            return None;
        }
        let mut line: Vec<UnitId> = owner.line().take_while(|u| u != child).collect();
        line.reverse();
        line.into_iter().find(|u| !self.is_registered(u))
    }

    /// A document `peer` offers that this node does not host: created empty when its owner
    /// is in the registered tree, else set aside ([`Engine::defer`]). Whether it is hosted
    /// now.
    fn take_new(&mut self, peer: &UnitId, meta: &DocMeta, step: &mut Step) -> bool {
        if let Some(child) = self.link_child(peer).cloned()
            && let Some(missing) = self.unregistered_below(&child, meta.owner())
        {
            self.defer(peer, meta, &missing);
            return false;
        }
        self.add_doc(meta.clone(), Some(doc::empty(&self.actor)));
        step.created.insert(meta.id.clone());
        // New here, so new to this node's other linked neighbours too (their only way to it
        // is through this node): its first message to each is the whole document (see
        // [`assume_lacking`]), a round trip sooner at each hop. One that holds it after all
        // (a node restored from an older backup) merges it as any message, at the cost of
        // its bytes once.
        let others: Vec<UnitId> = self
            .peers
            .keys()
            .filter(|p| *p != peer && self.in_link_scope(p, meta))
            .cloned()
            .collect();
        for other in others {
            if let Some(p) = self.peers.get_mut(&other) {
                p.lacking.insert(meta.id.clone());
            }
        }
        true
    }

    /// Set aside a document `peer` offered whose owner is not registered yet (`missing` is
    /// the first unregistered unit on the way down to it).
    fn defer(&mut self, peer: &UnitId, meta: &DocMeta, missing: &UnitId) {
        let (Some(p), Some(waits_on)) = (self.peers.get_mut(peer), missing.parent()) else {
            return;
        };
        // Counted once: a document waits in one place (deferred from a summary and again
        // from a sync message, it may have been filed under another unit already).
        if p.deferred_len() >= MAX_DEFERRED
            || p.deferred.values().any(|docs| docs.contains_key(&meta.id))
        {
            return;
        }
        let waiting = p.deferred.entry(waits_on.clone()).or_default();
        if waiting.is_empty() {
            // Once per unit and session: an operator's sign that a unit's data is not
            // coming up because no profile here registers it (it may also just be early).
            tracing::info!(%peer, %missing, "documents of a unit not registered in the profile of {waits_on} wait for its registration");
        }
        waiting.insert(meta.id.clone(), meta.clone());
        tracing::debug!(%peer, doc = %meta.id, %missing, "owner not registered yet: document deferred");
    }

    /// After `unit`'s profile changed: create and start the documents deferred until it
    /// registered a unit, or defer them again until the next unit down is registered.
    fn undefer(&mut self, unit: &UnitId, step: &mut Step) {
        let peers: Vec<UnitId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.deferred.contains_key(unit))
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in peers {
            let Some(waiting) = self
                .peers
                .get_mut(&peer)
                .and_then(|p| p.deferred.remove(unit))
            else {
                continue;
            };
            for (id, meta) in waiting {
                // Set aside again when a unit further down is not registered yet.
                if self.docs.contains_key(&id) || self.take_new(&peer, &meta, step) {
                    self.start(&peer, &id, step);
                }
            }
        }
    }

    /// This node wrote `unit`'s profile itself (a level above naming a unit registers it):
    /// documents set aside until it registered one start now, as when a profile arrives
    /// from a peer. The returned step holds what to send and what was created.
    pub fn registrations_changed(&mut self, unit: &UnitId) -> Step {
        self.registered.remove(unit);
        let mut step = Step::default();
        self.undefer(unit, &mut step);
        step
    }

    /// The peer set `id` aside (its owner is not registered there yet) or could not take it
    /// now: free the slot and forget what was sent, so that the next exchange (the peer's
    /// own request, or the next session) gets every change.
    fn start_over(&mut self, peer: &UnitId, id: &DocId, step: &mut Step) {
        tracing::debug!(%peer, doc = %id, "the peer did not take a document now; starting over");
        if let Some(p) = self.peers.get_mut(peer) {
            p.states.remove(id);
            p.saved.remove(id);
        }
        self.finish(peer, id, step);
    }

    /// The unit whose subtree bounds the link to `peer`: the child end of the link.
    fn link_child<'a>(&'a self, peer: &'a UnitId) -> Option<&'a UnitId> {
        if peer.parent().as_ref() == Some(&self.me) {
            Some(peer)
        } else if self.me.parent().as_ref() == Some(peer) {
            Some(&self.me)
        } else {
            None
        }
    }

    /// Whether `meta` is in the scope of the link to `peer` (rule 1), which must be this
    /// node's parent or child.
    pub fn in_link_scope(&self, peer: &UnitId, meta: &DocMeta) -> bool {
        self.link_child(peer)
            .is_some_and(|child| replicated_at(child, meta))
    }

    /// A link to `peer` is up. `saved` holds the sync states persisted at the last
    /// connection (decoded lazily). Returns the opening message, the root digest, and the
    /// first messages of the documents changed since the last session with `peer`.
    pub fn connect(&mut self, peer: &UnitId, saved: HashMap<DocId, Vec<u8>>) -> Vec<Msg> {
        let mut out = self.open_link(peer, saved);
        let mut step = Step::default();
        while self.start_one(peer, &mut step) {}
        out.extend(step.send.into_iter().map(|(_, m)| m));
        out
    }

    /// [`Engine::connect`] without the changed documents' first messages: they take their
    /// slots now and are made by [`Engine::start_unstarted`], so that a node whose link
    /// comes up with many changed documents to load answers other work in between.
    pub fn open_link(&mut self, peer: &UnitId, saved: HashMap<DocId, Vec<u8>>) -> Vec<Msg> {
        // Documents whose heads moved since the last session with this peer (they differ
        // from the heads both sides shared then) start at once, beside the root digest,
        // instead of after the digest descent: on a lossy link every round costs. An
        // unchanged document sends nothing, so an idle reconnect costs what it did.
        let mut changed = Vec::new();
        for (id, bytes) in &saved {
            let Some(shared) = sync::State::decode(bytes).ok().map(|s| s.shared_heads) else {
                continue;
            };
            if self.docs.contains_key(id) && self.doc_digest(id) != digest_of_heads(shared) {
                changed.push(id.clone());
            }
        }
        // Documents of this node's subtree never synced with its parent, when earlier
        // sessions were (their states are saved): most likely made since the last one (a
        // village's new register, written offline). The parent is taken to lack them, so the
        // whole document goes at once instead of after the digest descent has found it
        // missing, a round trip or more later on a lossy line. Were the parent to hold one
        // already (this node's last session ended in a crash, before its states were
        // saved), it merges it as any message and costs the document's bytes once; the cap
        // bounds that.
        let mut new = Vec::new();
        if !saved.is_empty() && self.me.parent().as_ref() == Some(peer) {
            new = self
                .docs
                .values()
                .filter(|e| {
                    e.meta.owner().is_in_subtree_of(&self.me) && !saved.contains_key(&e.meta.id)
                })
                .map(|e| e.meta.id.clone())
                .collect();
            new.sort();
            new.truncate(MAX_ASSUMED_NEW);
        }
        self.peers.insert(
            peer.clone(),
            PeerSync {
                saved,
                ..PeerSync::default()
            },
        );
        let Some(child) = self.link_child(peer).cloned() else {
            return Vec::new();
        };
        let root = self.me.root();
        let out = vec![Msg::Root(self.link_digest(&child, &root))];
        if let Some(p) = self.peers.get_mut(peer) {
            p.root_awaited = true;
            p.lacking.extend(new.iter().cloned());
        }
        changed.extend(new);
        changed.sort();
        for id in changed {
            let in_scope = self
                .docs
                .get(&id)
                .is_some_and(|e| self.in_link_scope(peer, &e.meta));
            let Some(p) = self.peers.get_mut(peer) else {
                break;
            };
            if !in_scope || p.active.contains(&id) || p.queued.contains(&id) {
                continue;
            }
            if p.active.len() >= MAX_IN_FLIGHT {
                p.queued.insert(id.clone());
                p.queue.push_back(id);
            } else {
                p.active.insert(id.clone());
                p.unstarted_ids.insert(id.clone());
                p.unstarted.push_back(id);
            }
        }
        out
    }

    /// Whether a link opened with [`Engine::open_link`] still has documents to start.
    pub fn has_unstarted(&self) -> bool {
        self.peers.values().any(|p| !p.unstarted_ids.is_empty())
    }

    /// Make the first messages of documents [`Engine::open_link`] gave slots to, a document
    /// of each such link in turn, until `deadline` has passed (at least one).
    pub fn start_unstarted(&mut self, deadline: std::time::Instant) -> Vec<(UnitId, Msg)> {
        let mut step = Step::default();
        let mut peers: Vec<UnitId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.unstarted_ids.is_empty())
            .map(|(u, _)| u.clone())
            .collect();
        while !peers.is_empty() {
            peers.retain(|peer| self.start_one(peer, &mut step));
            if std::time::Instant::now() >= deadline {
                break;
            }
        }
        step.send
    }

    /// Start the next unstarted document of `peer`; false once there was none.
    fn start_one(&mut self, peer: &UnitId, step: &mut Step) -> bool {
        let Some(p) = self.peers.get_mut(peer) else {
            return false;
        };
        // One started meanwhile (the peer's message for it, a live push) is under way.
        while let Some(id) = p.unstarted.pop_front() {
            if p.unstarted_ids.remove(&id) {
                self.kick(peer, id, step);
                return true;
            }
        }
        false
    }

    /// The link to `peer` ended. Returns the sync states used during it, to persist.
    pub fn disconnect(&mut self, peer: &UnitId) -> Vec<(DocId, Vec<u8>)> {
        self.peers
            .remove(peer)
            .map(|p| p.states.into_iter().map(|(d, s)| (d, s.encode())).collect())
            .unwrap_or_default()
    }

    /// Connected peers.
    pub fn peers(&self) -> impl Iterator<Item = &UnitId> {
        self.peers.keys()
    }

    /// Reconciliation progress of the link to `peer`.
    pub fn progress(&self, peer: &UnitId) -> Option<LinkProgress> {
        self.peers.get(peer).map(|p| LinkProgress {
            in_flight: p.active.len(),
            queued: p.queue.len(),
            unregistered: p.deferred_len(),
            descending: !p.summaries_awaited.is_empty() || p.answered,
            rootless: p.root_awaited,
        })
    }

    /// The next sync message for `id` to `peer`, if any, and whether it is only the last
    /// word of a finished reconciliation: it carries no changes and asks for none, and the
    /// peer's heads are already this side's.
    fn generate(&mut self, peer: &UnitId, id: &DocId) -> Option<(Vec<Msg>, bool)> {
        let p = self.peers.get_mut(peer)?;
        p.unstarted_ids.remove(id);
        if p.refused.contains(id) {
            return None;
        }
        match self.unread_answer(peer, id) {
            Some(Some(m)) => {
                let m = Msg::Sync {
                    doc: id.clone(),
                    data: m.encode(),
                };
                return Some((vec![m], true));
            }
            Some(None) => return None,
            None => {}
        }
        if let Some(m) = self.whole_unloaded(peer, id) {
            return Some((vec![m], false));
        }
        if let Err(r) = self.ensure(id) {
            tracing::error!(doc = %id, "cannot sync a document: {}", r.detail);
            return None;
        }
        let DocEntry { doc, saved, .. } = self.docs.get_mut(id)?;
        let p = self.peers.get_mut(peer)?;
        let assumed_empty = p.lacking.remove(id) && assume_lacking(p.state(id));
        let doc = doc.as_deref()?;
        if !assumed_empty {
            assume_shared_heads_held(doc, p.state(id));
        }
        let whole = wants_whole(p.state(id));
        // Nothing recorded as sent: the peer reset what it was sent, or made this side start
        // over (see `MAX_RESENDS`).
        let nothing_sent = p.state(id).sent_hashes.is_empty();
        // The state holds what the peer said it has; automerge trusts it. A panic here must
        // not take the store down: the document stops syncing with this peer this session.
        let generated = catch_unwind(AssertUnwindSafe(|| {
            if whole {
                // The compact form kept since the document last changed, where automerge
                // would save it again for every peer lacking it.
                let state = p.state(id);
                whole_message(doc, state, || compact_form(doc, saved).to_vec())
            } else {
                doc.generate_sync_message(p.state(id))
            }
        }));
        let Ok(m) = generated else {
            tracing::error!(%peer, doc = %id, "automerge panicked generating a sync message; the document waits for the next session with this peer");
            let reject = p.give_up(id, "could not make a sync message for it".into());
            return Some((vec![reject], true));
        };
        let m = m?;
        if !m.changes.is_empty() {
            // Changes again at the same heads, and either the whole document or what the
            // peer had this side forget it sent: the peer asked again for what it was sent.
            // (Changes it needs, which its Bloom filter hid, are new to it: not counted.)
            let again = nothing_sent || m.changes.iter().any(carries_document);
            let (at, times) = p.resent.entry(id.clone()).or_default();
            if *at != m.heads {
                (*at, *times) = (m.heads.clone(), 0);
            } else if again {
                *times += 1;
            }
            if *times > MAX_RESENDS {
                let detail = format!(
                    "asked for the same changes more than {MAX_RESENDS} times again this session"
                );
                p.asked_again.push(Rejection::new(
                    RejectReason::TooLarge,
                    Some(id),
                    detail.clone(),
                ));
                let reject = p.give_up(id, detail);
                return Some((vec![reject], true));
            }
        }
        let state = p.state(id);
        if assumed_empty {
            // Empty heads would make every message until the peer answers the whole
            // document again (a write pushed meanwhile); without them automerge sends what is
            // not in `sent_hashes`: only what is new since this one.
            state.their_heads = None;
        }
        let settled = m.changes.iter().next().is_none()
            && m.need.is_empty()
            && state.their_heads.as_ref().is_some_and(|theirs| {
                let mut theirs = theirs.clone();
                theirs.sort();
                theirs == m.heads
            });
        let carried: usize = m.changes.iter().map(<[u8]>::len).sum();
        if carried <= MAX_PART && values_of(m.changes.iter(), MAX_PART_ITEMS) <= MAX_PART_ITEMS {
            return Some((
                vec![Msg::Sync {
                    doc: id.clone(),
                    data: m.encode(),
                }],
                settled,
            ));
        }
        let shared = p.state(id).shared_heads.clone();
        let split = catch_unwind(AssertUnwindSafe(|| split_message(doc, &m, &shared)));
        match split {
            Ok(Ok((parts, left_out))) => {
                let state = p.state(id);
                for h in &left_out {
                    state.sent_hashes.remove(h);
                }
                tracing::debug!(%peer, doc = %id, bytes = carried, parts = parts.len(), "a large sync message sent in parts");
                let msgs = parts
                    .into_iter()
                    .map(|data| Msg::Sync {
                        doc: id.clone(),
                        data,
                    })
                    .collect();
                Some((msgs, settled))
            }
            failed => {
                let why = match failed {
                    Ok(Err(why)) => why,
                    _ => "automerge panicked reading its changes".to_owned(),
                };
                tracing::error!(%peer, doc = %id, bytes = carried, "a sync message too large to send ({why}); the document waits for the next session with this peer");
                let reject = p.give_up(
                    id,
                    format!("a sync message of {carried} bytes that cannot be split: {why}"),
                );
                Some((vec![reject], true))
            }
        }
    }

    /// The first message of an evicted document to a peer taken to lack it (see
    /// [`assume_lacking`]), made from its compact form as stored, without loading it: a
    /// village's register made offline goes up as soon as its link is up, where loading it
    /// took longer than the parent's taking it in. The message says this side's heads and
    /// carries the document; it summarises nothing this side has, so the peer sends back only
    /// what this side then asks for (it lacks the document, so nothing is missed; were it to
    /// hold part of it, its answer says so and the exchange goes on from there, the document
    /// loaded). A write pushed before the answer comes carries only the new heads (nothing
    /// of the peer is assumed, and what was sent is not recorded, being unknown unloaded);
    /// its changes go once the answer is in, a round trip later. Such a document has no
    /// saved state with the peer, so nothing older is assumed either. None where the
    /// document is loaded, not stored as one compact form, or too large for one message: it
    /// is made as any other.
    fn whole_unloaded(&mut self, peer: &UnitId, id: &DocId) -> Option<Msg> {
        let p = self.peers.get(peer)?;
        let entry = self.docs.get(id)?;
        // A register taken unread is not passed on as it came: the store forwards it once
        // automerge has loaded it, and a peer asking sooner has it loaded first.
        if !p.lacking.contains(id)
            || p.states.get(id).is_some_and(|s| s.their_heads.is_some())
            || entry.doc.is_some()
            || entry.unread.is_some()
        {
            return None;
        }
        let (heads, bytes) = self.source.1.as_mut()?(id)?;
        // What was read must be the document as this side knows it (its digest kept while
        // evicted), with something in it, and fit one message.
        if heads.is_empty()
            || self.doc_digests.get(id) != Some(&digest_of_heads(heads.clone()))
            || bytes.len() > MAX_PART
            || values_of(std::iter::once(&bytes[..]), MAX_PART_ITEMS) > MAX_PART_ITEMS
        {
            return None;
        }
        let p = self.peers.get_mut(peer)?;
        p.lacking.remove(id);
        p.resent.insert(id.clone(), (heads.clone(), 0));
        let state = p.state(id);
        assume_v2(state);
        // The hashes sent stay unrecorded (unknown unloaded): only automerge's own later
        // messages consult them, to send no change twice.
        let m = sent_whole(state, heads, Vec::new(), vec![bytes]);
        Some(Msg::Sync {
            doc: id.clone(),
            data: m.encode(),
        })
    }

    /// Begin reconciling `id` with `peer`, or queue it when the link has enough in flight.
    fn start(&mut self, peer: &UnitId, id: &DocId, step: &mut Step) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if p.active.contains(id) || p.queued.contains(id) {
            return;
        }
        if p.active.len() >= MAX_IN_FLIGHT {
            p.queued.insert(id.clone());
            p.queue.push_back(id.clone());
            return;
        }
        p.active.insert(id.clone());
        self.kick(peer, id.clone(), step);
    }

    /// Send the next message of `id`, which holds a slot. A slot is held until this side has
    /// nothing more to say: when its last message only tells the peer that the heads now
    /// agree, the peer answers nothing, so the slot is freed as that message goes. A freed
    /// slot goes to the next queued document: a loop, not recursion, so a long queue of
    /// documents with nothing to say does not grow the stack.
    fn kick(&mut self, peer: &UnitId, mut id: DocId, step: &mut Step) {
        loop {
            let generated = self.generate(peer, &id);
            if let Some(p) = self.peers.get_mut(peer) {
                step.rejected.append(&mut p.asked_again);
            }
            match generated {
                Some((msgs, false)) => {
                    step.send
                        .extend(msgs.into_iter().map(|m| (peer.clone(), m)));
                    return;
                }
                Some((msgs, true)) => step
                    .send
                    .extend(msgs.into_iter().map(|m| (peer.clone(), m))),
                None => {}
            }
            match self.hand_slot_on(peer, &id) {
                Some(next) => id = next,
                None => return,
            }
        }
    }

    /// Free the slot of `id` (when it holds one) and give it to the next queued document,
    /// which is returned, now in flight.
    fn hand_slot_on(&mut self, peer: &UnitId, id: &DocId) -> Option<DocId> {
        let p = self.peers.get_mut(peer)?;
        if !p.active.remove(id) {
            return None;
        }
        let next = p.queue.pop_front()?;
        p.queued.remove(&next);
        p.active.insert(next.clone());
        Some(next)
    }

    /// This side has nothing more to send for `id`: free its slot for the next one.
    fn finish(&mut self, peer: &UnitId, id: &DocId, step: &mut Step) {
        if let Some(next) = self.hand_slot_on(peer, id) {
            self.kick(peer, next, step);
        }
    }

    /// Messages for every connected peer whose link scope holds `id`, after `id` changed
    /// (live push). `except` is skipped: it gets its answer from [`Engine::receive`].
    pub fn fan_out(&mut self, id: &DocId, except: Option<&UnitId>) -> Vec<(UnitId, Msg)> {
        let Some(meta) = self.docs.get(id).map(|e| e.meta.clone()) else {
            return Vec::new();
        };
        let targets: Vec<UnitId> = self
            .peers
            .keys()
            .filter(|p| Some(*p) != except && self.in_link_scope(p, &meta))
            .cloned()
            .collect();
        let mut step = Step::default();
        for p in targets {
            let Some((msgs, settled)) = self.generate(&p, id) else {
                continue;
            };
            step.send.extend(msgs.into_iter().map(|m| (p.clone(), m)));
            // A last word (or a refusal: `give_up`) says all this side will: a slot it holds
            // goes on to the next queued document, as from `kick`; held, nothing would free
            // it, since the peer answers neither. A later answer is still taken, slotless.
            if settled {
                self.finish(&p, id, &mut step);
                // What that drained stays to be counted where the peer's input is.
                if let Some(peer) = self.peers.get_mut(&p) {
                    peer.asked_again.append(&mut step.rejected);
                }
            }
        }
        step.send
    }

    /// Handle one message from a connected `peer`. Refused parts are listed in
    /// [`Step::rejected`] and answered in [`Step::send`]; nothing of them was applied.
    pub fn receive(&mut self, peer: &UnitId, msg: Msg) -> Step {
        // Never told to stop, nothing of a batch is left.
        self.receive_until(peer, msg, &mut || true).0
    }

    /// [`Engine::receive`], leaving the items of a batch frame not handled once `more`
    /// says no (asked after each item; at least one is handled): every item can cost a
    /// document loaded and sent whole, and a frame holds thousands. The rest, with what the
    /// frame has used of its budgets, goes on with [`Engine::resume`].
    pub fn receive_until(
        &mut self,
        peer: &UnitId,
        msg: Msg,
        more: &mut dyn FnMut() -> bool,
    ) -> (Step, Option<BatchRest>) {
        let mut step = Step::default();
        let mut rest = None;
        let Some(p) = self.peers.get_mut(peer) else {
            step.reject(
                peer,
                Rejection::new(RejectReason::NotAdjacent, None, "not connected"),
            );
            return (step, rest);
        };
        // Any word of the peer's ends the wait after an answer (a probe is not a word).
        if !matches!(msg, Msg::Probe) {
            p.answered = false;
        }
        if matches!(msg, Msg::Root(_)) {
            p.root_awaited = false;
        }
        match msg {
            Msg::Root(d) => self.on_root(peer, d, &mut step),
            Msg::Summary(sm) => {
                if let Err(r) = self.on_summary(peer, sm, &mut step) {
                    step.reject(peer, r);
                }
            }
            Msg::Sync { doc, data } => {
                self.sync_or_refuse(peer, doc, &data, &mut Spent::default(), &mut step)
            }
            Msg::SyncBatch(items) => {
                rest = self.batch_items(peer, BatchRest::new(items), &mut step, more);
            }
            Msg::Reject {
                reason: RejectReason::Unregistered,
                doc: Some(doc),
                ..
            } => self.start_over(peer, &doc, &mut step),
            Msg::Reject {
                reason,
                doc,
                detail,
            } => self.on_reject(peer, reason, doc, &detail, &mut step),
            Msg::Unknown(t) => tracing::debug!(%peer, t, "ignoring unknown message type"),
            Msg::Probe => {}
            Msg::Hello(_) => step.reject(
                peer,
                Rejection::new(RejectReason::Malformed, None, "hello after the handshake"),
            ),
        }
        (step, rest)
    }

    /// Go on with a batch frame [`Engine::receive_until`] left.
    pub fn resume(
        &mut self,
        peer: &UnitId,
        rest: BatchRest,
        more: &mut dyn FnMut() -> bool,
    ) -> (Step, Option<BatchRest>) {
        let mut step = Step::default();
        if !self.peers.contains_key(peer) {
            return (step, None);
        }
        let rest = self.batch_items(peer, rest, &mut step, more);
        (step, rest)
    }

    /// Handle items of a batch until `more` says no (at least one); the rest, if any.
    fn batch_items(
        &mut self,
        peer: &UnitId,
        mut rest: BatchRest,
        step: &mut Step,
        more: &mut dyn FnMut() -> bool,
    ) -> Option<BatchRest> {
        // One inflation budget for the whole frame: items of a batch may each name another
        // (even invented) document, so a budget per item would not bound it. Each item is
        // answered, and an answer can be a whole document: an item repeated for one
        // document must not multiply that work.
        while let Some((doc, data)) = rest.items.pop_front() {
            let n = rest.seen.entry(doc.clone()).or_default();
            *n += 1;
            if *n > MAX_ITEMS_PER_DOC {
                // The peer, refused, stops the document as any refused one (`on_reject`):
                // so does this side, or a slot it holds would wait for an answer that never
                // comes.
                self.freeze(peer, &doc, step);
                step.reject(
                    peer,
                    Rejection::new(
                        RejectReason::Malformed,
                        Some(&doc),
                        format!("more than {MAX_ITEMS_PER_DOC} items for it in one batch"),
                    ),
                );
            } else {
                self.sync_or_refuse(peer, doc, &data, &mut rest.spent, step);
            }
            if !rest.items.is_empty() && !more() {
                return Some(rest);
            }
        }
        None
    }

    /// The peer refused a message of this side's.
    fn on_reject(
        &mut self,
        peer: &UnitId,
        reason: RejectReason,
        doc: Option<DocId>,
        detail: &str,
        step: &mut Step,
    ) {
        // The peer's words, shortened; and only the first few of a session at warning level,
        // since a peer decides how many it sends.
        let loud = self.peers.get_mut(peer).is_some_and(|p| {
            p.refusals_heard = p.refusals_heard.saturating_add(1);
            p.refusals_heard <= MAX_LOGGED_REFUSALS
        });
        let detail = wire::printable(detail, 256);
        let shown = doc.as_ref().map(ToString::to_string);
        if loud {
            tracing::warn!(%peer, ?reason, doc = ?shown, %detail, "peer refused our message");
        } else {
            tracing::debug!(%peer, ?reason, doc = ?shown, %detail, "peer refused our message");
        }
        // A refused summary is not answered: stop waiting for it. A refusal naming a
        // document this side has no sync traffic for is of a summary listing it (its
        // owner's); one naming none may be of any.
        if let Some(p) = self.peers.get_mut(peer) {
            match &doc {
                Some(d)
                    if !p.states.contains_key(d)
                        && !p.active.contains(d)
                        && !p.queued.contains(d) =>
                {
                    p.summaries_awaited.remove(&d.owner);
                }
                Some(_) => {}
                None => p.summaries_awaited.clear(),
            }
        }
        match doc {
            // Refused for what this side sent: the peer will not sync that document with this
            // side again this session, so neither does this side (nor keep a slot); it waits
            // for the next session.
            Some(doc) if is_peers_fault(reason) => self.freeze(peer, &doc, step),
            // Refused for a failure on the peer's side, or for a reason this build does not
            // know: nothing to freeze, but start over (slot freed, state dropped) so that
            // neither side waits for the other.
            Some(doc) => self.start_over(peer, &doc, step),
            None => {}
        }
    }

    fn on_root(&mut self, peer: &UnitId, theirs: Digest, step: &mut Step) {
        let Some(child) = self.link_child(peer).cloned() else {
            return;
        };
        let root = self.me.root();
        if self.link_digest(&child, &root) == theirs {
            return;
        }
        // Both sides know the path from the root down to the link's child, and the
        // difference is somewhere on or below it: send all of it at once rather than one
        // level per round trip (a village link is four levels deep).
        let depth = child.labels().count();
        for level in 1..=depth {
            let Ok(unit) = child
                .labels()
                .take(level)
                .collect::<Vec<_>>()
                .join("/")
                .parse::<UnitId>()
            else {
                continue;
            };
            self.summarise_once(peer, &child, &unit, step);
        }
    }

    /// Send this side's summary of `unit` to `peer`, unless already sent this session.
    fn summarise_once(&mut self, peer: &UnitId, child: &UnitId, unit: &UnitId, step: &mut Step) {
        if self.peers.get_mut(peer).is_some_and(|p| {
            // A unit whose summary the peer sent is in `summarised` already (answered then):
            // one newly summarised here waits for the peer's.
            let send = p.summarised.len() < MAX_SUMMARISED && p.summarised.insert(unit.clone());
            if send {
                p.summaries_awaited.insert(unit.clone());
            }
            send
        }) {
            let sm = self.summary(child, unit);
            step.send.push((peer.clone(), Msg::Summary(sm)));
        }
    }

    fn check_summary(&self, peer: &UnitId, sm: &Summary) -> Result<(), Rejection> {
        let child = self
            .link_child(peer)
            .ok_or_else(|| Rejection::new(RejectReason::NotAdjacent, None, "not adjacent"))?;
        if !(sm.unit.is_in_subtree_of(child) || sm.unit.is_ancestor_of(child)) {
            return Err(Rejection::new(
                RejectReason::OutOfScope,
                None,
                format!("summary of {} outside the link's scope", sm.unit),
            ));
        }
        for (meta, _) in &sm.docs {
            if meta.owner() != &sm.unit || !self.in_link_scope(peer, meta) {
                return Err(Rejection::new(
                    RejectReason::OutOfScope,
                    Some(&meta.id),
                    format!(
                        "{} is outside the scope of the link {} <-> {}",
                        meta.id, self.me, peer
                    ),
                ));
            }
            if let Some(have) = self.docs.get(&meta.id)
                && have.meta.audience != meta.audience
            {
                return Err(Rejection::new(
                    RejectReason::Malformed,
                    Some(&meta.id),
                    "audience differs from the one fixed at creation",
                ));
            }
            // Every kind has one audience (profiles, directives and fund programmes: all
            // descendants; the rest: none). A peer claiming another would widen who reads
            // a unit's records.
            if meta.audience != DocMeta::new(meta.id.clone()).audience {
                return Err(Rejection::new(
                    RejectReason::Malformed,
                    Some(&meta.id),
                    format!(
                        "{} documents do not have that audience",
                        meta.id.kind.as_str()
                    ),
                ));
            }
        }
        if let Some((x, _)) = sm
            .children
            .iter()
            .find(|(x, _)| x.parent().as_ref() != Some(&sm.unit))
        {
            return Err(Rejection::new(
                RejectReason::Malformed,
                None,
                format!("{x} listed as a child of {}", sm.unit),
            ));
        }
        Ok(())
    }

    fn on_summary(&mut self, peer: &UnitId, sm: Summary, step: &mut Step) -> Result<(), Rejection> {
        // Heard, taken or refused: not waited for any more.
        if let Some(p) = self.peers.get_mut(peer) {
            p.summaries_awaited.remove(&sm.unit);
        }
        if let Err(r) = self.check_summary(peer, &sm) {
            // Refused, it answers nothing this side could take: nor summarised later (the
            // peer counts it as answered and would not answer again).
            if let Some(p) = self.peers.get_mut(peer)
                && p.summarised.len() < MAX_SUMMARISED
            {
                p.summarised.insert(sm.unit.clone());
            }
            return Err(r);
        }
        if self.peers.get(peer).is_some_and(|p| {
            p.summarised.len() >= MAX_SUMMARISED && !p.summarised.contains(&sm.unit)
        }) {
            return Err(Rejection::new(
                RejectReason::TooLarge,
                None,
                format!("more than {MAX_SUMMARISED} units summarised in one session"),
            ));
        }
        let Some(child) = self.link_child(peer).cloned() else {
            return Ok(());
        };
        let (my_docs, my_kids) = self.link_node(&child, &sm.unit);
        if self.peers.get_mut(peer).is_some_and(|p| {
            let answer = p.summarised.insert(sm.unit.clone());
            p.answered |= answer;
            answer
        }) {
            step.send.push((
                peer.clone(),
                Msg::Summary(Summary {
                    unit: sm.unit.clone(),
                    docs: my_docs.clone(),
                    children: my_kids.clone(),
                }),
            ));
        }
        // Documents of this unit: start those whose heads differ or that the peer lacks;
        // create those only the peer has (the peer starts them).
        let mine: BTreeMap<DocId, Digest> = my_docs.into_iter().map(|(m, d)| (m.id, d)).collect();
        let theirs: BTreeMap<DocId, (DocMeta, Digest)> = sm
            .docs
            .into_iter()
            .map(|(m, d)| (m.id.clone(), (m, d)))
            .collect();
        for (id, (meta, d)) in &theirs {
            match mine.get(id) {
                Some(md) if md == d => {}
                Some(_) => self.start(peer, id, step),
                None if self.docs.contains_key(id) => {}
                // Not an offence when set aside: the profile registering the owner may
                // still be on its way.
                None => {
                    self.take_new(peer, meta, step);
                }
            }
        }
        for id in mine.keys().filter(|id| !theirs.contains_key(*id)) {
            if let Some(p) = self.peers.get_mut(peer) {
                p.lacking.insert(id.clone());
            }
            self.start(peer, id, step);
        }
        // Child subtrees: descend where the digests differ.
        let theirs_kids: BTreeMap<UnitId, Digest> = sm.children.into_iter().collect();
        let my_kids: BTreeMap<UnitId, Digest> = my_kids.into_iter().collect();
        let mut kids: BTreeSet<UnitId> = theirs_kids.keys().cloned().collect();
        kids.extend(my_kids.keys().cloned());
        for x in kids {
            if my_kids.get(&x) == theirs_kids.get(&x) {
                continue;
            }
            self.summarise_once(peer, &child, &x, step);
        }
        Ok(())
    }

    /// Handle one document's sync message. A document whose message was refused is not
    /// synced with that peer again this session: automerge would keep asking for (and the
    /// peer keep sending) the refused change, a loop with no end.
    fn sync_or_refuse(
        &mut self,
        peer: &UnitId,
        doc: DocId,
        data: &[u8],
        spent: &mut Spent,
        step: &mut Step,
    ) {
        if self
            .peers
            .get(peer)
            .is_some_and(|p| p.refused.contains(&doc))
        {
            tracing::debug!(%peer, %doc, "ignoring a document refused earlier this session");
            return;
        }
        let id = doc.clone();
        if let Err(r) = self.on_sync(peer, doc, data, spent, step) {
            // A local failure (the document could not be read back) is not the peer's
            // doing: the document stays in sync with it.
            if is_peers_fault(r.reason) {
                self.freeze(peer, &id, step);
            } else {
                self.finish(peer, &id, step);
            }
            step.reject(peer, r);
        }
    }

    /// Stop syncing `id` with `peer` for the rest of the session, freeing its slot (a refused
    /// document, by either side). Only documents this side hosts or has set aside are
    /// frozen, at most [`MAX_REFUSED`]: the loop it prevents needs a document this side
    /// syncs, and ids a peer invents must not fill the bound. A set-aside document leaves
    /// the waiting list, so its registration does not start it (the peer would not answer,
    /// and the slot would stay taken).
    fn freeze(&mut self, peer: &UnitId, id: &DocId, step: &mut Step) {
        let hosted = self.docs.contains_key(id);
        if let Some(p) = self.peers.get_mut(peer) {
            let deferred = p
                .deferred
                .values_mut()
                .any(|docs| docs.remove(id).is_some());
            if (hosted || deferred) && p.refused.len() < MAX_REFUSED {
                p.refused.insert(id.clone());
            }
        }
        self.finish(peer, id, step);
    }

    fn on_sync(
        &mut self,
        peer: &UnitId,
        id: DocId,
        data: &[u8],
        spent: &mut Spent,
        step: &mut Step,
    ) -> Result<(), Rejection> {
        let meta = match self.docs.get(&id) {
            Some(e) => e.meta.clone(),
            None => DocMeta::new(id.clone()),
        };
        if !self.in_link_scope(peer, &meta) {
            return Err(Rejection::new(
                RejectReason::OutOfScope,
                Some(&id),
                format!(
                    "{id} is outside the scope of the link {} <-> {peer}",
                    self.me
                ),
            ));
        }
        if let Some([heads, need, haves, changes]) = message_counts(data)
            && (heads > MAX_HEADS as u64
                || need > MAX_NEED as u64
                || haves > MAX_HAVES as u64
                || changes > MAX_CHANGES)
        {
            return Err(Rejection::new(
                RejectReason::Malformed,
                Some(&id),
                format!(
                    "sync message of {heads} heads, {need} needed, {haves} haves and \
                     {changes} changes (at most {MAX_HEADS}, {MAX_NEED}, {MAX_HAVES}, \
                     {MAX_CHANGES})"
                ),
            ));
        }
        let message = catch_unwind(|| sync::Message::decode(data))
            .map_err(|_| "automerge panicked decoding it".to_owned())
            .and_then(|m| m.map_err(|e| e.to_string()))
            .and_then(|m| check_message(&m).map(|()| m))
            .map_err(|e| {
                Rejection::new(
                    RejectReason::Malformed,
                    Some(&id),
                    format!("sync message: {e}"),
                )
            })?;
        // Peer bytes are hostile. First every change the message carries is decoded and its
        // author checked against rule 2, before anything is applied: automerge may queue a
        // change whose dependencies are missing (bloom-filter false positives make honest
        // peers do that) and apply it later, so checking only what applied now is not enough.
        let owner = meta.owner();
        let mut authors = BTreeSet::new();
        // Changes from a child authored outside its subtree, by hash where known: each must
        // be one this node holds already (an honest child may send back what it got from
        // here), which is checked once the message is applied.
        let (mut relayed, mut relayed_hashes) = (false, Vec::new());
        let from_child =
            peer.parent().as_ref() == Some(&self.me) && self.returning_until().is_none();
        let mut carried = Carried::default();
        for chunk in message.changes.iter() {
            authors_of(chunk, &id, spent, &mut carried)?;
            for (author, hash) in carried.authors.drain(..) {
                if !may_author(&author, owner) {
                    return Err(Rejection::new(
                        RejectReason::Unauthorised,
                        Some(&id),
                        format!("change by {author} to a document owned by {owner}"),
                    ));
                }
                if from_child && !author.is_in_subtree_of(peer) {
                    relayed = true;
                    relayed_hashes.extend(hash);
                }
                authors.insert(author);
            }
        }
        // A document of a unit this node does not know to be registered waits for the
        // profile that registers it (often in flight on the same link): not an offence, so
        // it is answered but not counted as a rejection.
        let new_here = !self.docs.contains_key(&id);
        if new_here && !self.take_new(peer, &meta, step) {
            step.send.push((
                peer.clone(),
                Msg::Reject {
                    reason: RejectReason::Unregistered,
                    doc: Some(id.clone()),
                    detail: format!("{owner} is not registered here yet"),
                },
            ));
            return Ok(());
        }
        // A village's register made offline, sent whole: taken from its columns, automerge's
        // load of it left for later (see [`Unread`]).
        if !relayed
            && message.changes.len() == 1
            && self.empty_here(&id)
            && let Some(register) = self.unread_register(peer, &id, &meta, &message)
        {
            carried.actors_fit(&Automerge::new(), &id)?;
            self.take_unread(peer, &id, register, message);
            step.authors.extend(authors);
            step.changed.insert(id.clone());
            self.kick(peer, id.clone(), step);
            step.forward.push((id, peer.clone()));
            return Ok(());
        }
        // A peer's word on a register held unread that carries nothing (the next hop's
        // answer to it, as taken whole): taken without loading it either.
        if self.receive_unread(peer, &id, &message) {
            self.kick(peer, id, step);
            return Ok(());
        }
        self.ensure(&id)?;
        let (
            Some(DocEntry {
                doc: Some(doc),
                waiting,
                ..
            }),
            Some(peer_sync),
        ) = (self.docs.get_mut(&id), self.peers.get_mut(peer))
        else {
            return Err(Rejection::new(
                RejectReason::ApplyFailed,
                Some(&id),
                "document vanished",
            ));
        };
        carried.actors_fit(doc, &id)?;
        let state = peer_sync.state(&id);
        let before = doc.get_heads();

        // Then apply to a copy inside catch_unwind (automerge 0.12 panics on some malformed
        // changes) and adopt the copy only if that went well. A message without changes only
        // reads the document, so it needs no copy: a peer sending many small messages for a
        // large document must not cost a copy of it each.
        let mut candidate = (!message.changes.is_empty()).then(|| doc.clone());
        let mut candidate_state = state.clone();
        let applied = catch_unwind(AssertUnwindSafe(|| match candidate.as_mut() {
            Some(copy) => copy.receive_sync_message(&mut candidate_state, message),
            None => doc.receive_sync_message(&mut candidate_state, message),
        }));
        match applied {
            Err(_) => {
                return Err(Rejection::new(
                    RejectReason::Panicked,
                    Some(&id),
                    "automerge panicked on the message",
                ));
            }
            Ok(Err(e)) => {
                return Err(Rejection::new(
                    RejectReason::Malformed,
                    Some(&id),
                    format!("automerge refused the message: {e}"),
                ));
            }
            Ok(Ok(())) => {}
        }
        let (mut changed, mut new_digest) = (false, None);
        if let Some(candidate) = candidate {
            // Rule 3's field-level authority, on the copy: which record a change touched,
            // and who handled it then, are only known against the document. And a profile,
            // read whole at every change of it by every node up the line, may not grow past
            // its cap (one already past it may still change otherwise).
            let held = &*doc;
            if relayed
                && !only_held_relayed(&candidate, &before, &relayed_hashes, |a| {
                    a.is_in_subtree_of(peer)
                })
            {
                return Err(self.relayed_rejection(peer, &id));
            }
            match catch_unwind(AssertUnwindSafe(|| {
                super::fields::check(&candidate, &before, &meta)?;
                // The profile as held is counted only when the new one is past the cap.
                if id.kind == DocKind::Profile {
                    let n = doc::profile_entries(&candidate);
                    if n > MAX_PROFILE_ENTRIES && n > doc::profile_entries(held) {
                        return Err(Rejection::new(
                            RejectReason::TooLarge,
                            Some(&id),
                            format!(
                                "a profile of {n} registered units, revocations and their \
                                 maps (at most {MAX_PROFILE_ENTRIES})"
                            ),
                        ));
                    }
                }
                Ok(())
            })) {
                Ok(Ok(())) => {}
                Ok(Err(r)) => return Err(r),
                Err(_) => {
                    return Err(Rejection::new(
                        RejectReason::Panicked,
                        Some(&id),
                        "automerge panicked on checking the message",
                    ));
                }
            }
            *waiting = carried.waiting_in(&candidate, waiting, &id)?;
            let after = candidate.get_heads();
            changed = after != before;
            *doc = candidate;
            // Kept, not dropped: the heads are at hand, and a node that took many
            // documents from a peer would otherwise hash them all at its next reconnect.
            if changed {
                new_digest = Some(digest_of_heads(after));
            }
        }
        *state = candidate_state;
        step.authors.extend(authors);
        if changed {
            self.invalidate(&id);
            if let Some(d) = new_digest {
                self.doc_digests.insert(id.clone(), d);
            }
            step.changed.insert(id.clone());
        }
        self.kick(peer, id.clone(), step);
        if changed {
            step.forward.push((id.clone(), peer.clone()));
            if id.kind == DocKind::Profile {
                self.undefer(&id.owner, step);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::carrying;
    use super::super::wire::Summary;
    use super::*;
    use grassroots_schema::{DocKind, Education, Gender, MemberStatus, NewMember, RecordId};

    fn u(s: &str) -> UnitId {
        s.parse().unwrap()
    }

    fn engine(unit: &str, nonce: u8) -> Engine {
        let unit = u(unit);
        let actor = doc::actor_for(&unit, [nonce; 8]);
        Engine::new(unit, actor)
    }

    fn member(name: &str) -> NewMember {
        NewMember {
            name: name.into(),
            birth_year: 1970,
            gender: Gender::Male,
            education: Education::JuniorSecondary,
            joined_on: "1999-07-01".into(),
            status: MemberStatus::Full,
            phone: None,
            id_number: None,
            categories: Vec::new(),
        }
    }

    fn write(e: &mut Engine, owner: &str, rec: u64, name: &str) -> DocId {
        let meta = DocMeta::new(DocId::new(DocKind::Members, u(owner)));
        let id = meta.id.clone();
        let (d, _) = e.local_doc(meta).unwrap();
        doc::create_member(d, RecordId::from_u64(rec), &member(name)).unwrap();
        id
    }

    /// Write `unit`'s profile registering `children`.
    fn register(e: &mut Engine, unit: &str, children: &[&str]) -> DocId {
        let meta = DocMeta::new(DocId::new(DocKind::Profile, u(unit)));
        let id = meta.id.clone();
        let (d, _) = e.local_doc(meta).unwrap();
        let kids: Vec<UnitId> = children.iter().map(|c| u(c)).collect();
        doc::set_profile(d, &format!("Unit {unit}"), &kids).unwrap();
        id
    }

    /// Deterministic two-peer harness: deliver every queued message in order until quiet.
    /// Returns rejections seen, by receiving side.
    fn pump(a: &mut Engine, b: &mut Engine, queue: Vec<(UnitId, UnitId, Msg)>) -> Vec<Rejection> {
        pump_among(&mut [a, b], queue)
    }

    /// Connect two engines and run their first session until quiet: something is refused
    /// for `reason`.
    fn assert_refused(a: &mut Engine, b: &mut Engine, reason: RejectReason) {
        let q = connect(a, b);
        let r = pump(a, b, q);
        assert!(r.iter().any(|r| r.reason == reason), "{r:?}");
    }

    /// Connect two engines and run their first session until quiet, with nothing refused.
    fn link(a: &mut Engine, b: &mut Engine) {
        let q = connect(a, b);
        assert!(pump(a, b, q).is_empty());
    }

    /// `msgs` as queued from `from` to `to` (for [`pump`]).
    fn addressed(from: &UnitId, to: &UnitId, msgs: Vec<Msg>) -> Vec<(UnitId, UnitId, Msg)> {
        msgs.into_iter()
            .map(|m| (from.clone(), to.clone(), m))
            .collect()
    }

    fn connect(a: &mut Engine, b: &mut Engine) -> Vec<(UnitId, UnitId, Msg)> {
        let (ua, ub) = (a.me().clone(), b.me().clone());
        let mut q = addressed(&ua, &ub, a.connect(&ub, HashMap::new()));
        q.extend(addressed(&ub, &ua, b.connect(&ua, HashMap::new())));
        q
    }

    /// The names `e` reads in `owner`'s register (from its columns, when taken unread).
    fn names(e: &Engine, owner: &str) -> Vec<String> {
        let id = DocId::new(DocKind::Members, u(owner));
        let unread = e
            .unread(&id)
            .map(|r| r.members.values().flatten().cloned().collect());
        let mut v: Vec<String> = unread
            .or_else(|| {
                e.get(&id)
                    .map(|d| doc::read_members(d.doc().unwrap(), &u(owner)))
            })
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.name)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn child_and_parent_converge_both_ways() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        write(&mut v, "c01/k01/t01/v01", 1, "Village Writer");
        write(&mut t, "c01/k01/t01/v01", 2, "Township Correction");
        link(&mut t, &mut v);
        assert_eq!(names(&t, "c01/k01/t01/v01"), names(&v, "c01/k01/t01/v01"));
        assert_eq!(names(&t, "c01/k01/t01/v01").len(), 2);
    }

    #[test]
    fn township_internal_documents_never_go_down() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        write(&mut t, "c01/k01/t01", 1, "Township Member");
        write(&mut t, "c01/k01/t01/v02", 2, "Sibling Village Member");
        // What the village's own register holds at the township does go down, in the same
        // session: the link carries what is in scope, and only that.
        write(&mut t, "c01/k01/t01/v01", 3, "Own Member");
        link(&mut t, &mut v);
        assert!(
            v.get(&DocId::new(DocKind::Members, u("c01/k01/t01/v01")))
                .is_some(),
            "the village's own register"
        );
        assert!(
            v.get(&DocId::new(DocKind::Members, u("c01/k01/t01")))
                .is_none()
        );
        assert!(
            v.get(&DocId::new(DocKind::Members, u("c01/k01/t01/v02")))
                .is_none()
        );
    }

    #[test]
    fn profiles_flow_down_to_descendants() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        let meta = DocMeta::new(DocId::new(DocKind::Profile, u("c01/k01/t01")));
        let (d, _) = t.local_doc(meta.clone()).unwrap();
        doc::set_profile(d, "Riverside Township", &[u("c01/k01/t01/v01")]).unwrap();
        let q = connect(&mut t, &mut v);
        let r = pump(&mut t, &mut v, q);
        assert!(r.is_empty(), "{r:?}");
        let p =
            doc::read_profile(v.get(&meta.id).unwrap().doc().unwrap(), &u("c01/k01/t01")).unwrap();
        assert_eq!(p.name, "Riverside Township");
    }

    #[test]
    fn forged_author_is_rejected_whole() {
        // A village holding a sibling's actor writes into its own document: the change names
        // a unit without authority over the document, so the township refuses it.
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        let mut q = connect(&mut t, &mut v);
        assert!(pump(&mut t, &mut v, std::mem::take(&mut q)).is_empty());
        let id = DocId::new(DocKind::Members, u("c01/k01/t01/v01"));
        let mut forged = doc::empty(&doc::actor_for(&u("c01/k01/t01/v02"), [9; 8]));
        doc::create_member(&mut forged, RecordId::from_u64(66), &member("Forged")).unwrap();
        let before = t
            .get(&id)
            .map(|e| e.doc().unwrap().get_heads())
            .unwrap_or_default();
        // The first message carries heads only; drive the exchange by hand.
        let mut fs = sync::State::new();
        let mut rejected = None;
        for _ in 0..6 {
            let Some(m) = forged.generate_sync_message(&mut fs) else {
                break;
            };
            let step = t.receive(
                &u("c01/k01/t01/v01"),
                Msg::Sync {
                    doc: id.clone(),
                    data: m.encode(),
                },
            );
            if let Some(r) = step.rejected.into_iter().next() {
                rejected = Some(r);
                break;
            }
            for (_, reply) in step.send {
                if let Msg::Sync { data, .. } = reply {
                    forged
                        .receive_sync_message(&mut fs, sync::Message::decode(&data).unwrap())
                        .unwrap();
                }
            }
        }
        let r = rejected.expect("forged change accepted");
        assert_eq!(r.reason, RejectReason::Unauthorised);
        assert_eq!(
            t.get(&id)
                .map(|e| e.doc().unwrap().get_heads())
                .unwrap_or_default(),
            before
        );
        assert!(names(&t, "c01/k01/t01/v01").is_empty());
    }

    /// A township and its registered village, linked; the village's register.
    fn township_and_village() -> (Engine, Engine, DocId) {
        let (tu, vu) = ("c01/k01/t01", "c01/k01/t01/v01");
        let mut t = engine(tu, 1);
        let mut v = engine(vu, 2);
        register(&mut t, tu, &[vu]);
        link(&mut t, &mut v);
        (t, v, DocId::new(DocKind::Members, u(vu)))
    }

    /// A sync message's lists are counted from their lengths before automerge decodes it:
    /// one of more changes (or `have`s) than a message may hold is refused unread, whatever
    /// they are; an honest one is counted as it is.
    #[test]
    fn a_message_listing_too_many_entries_is_refused_undecoded() {
        let vu = "c01/k01/t01/v01";
        let (mut t, _v, id) = township_and_village();
        // Empty changes: a byte each on the wire.
        let mut data = vec![0x42, 0, 0, 0];
        data.extend(leb(MAX_CHANGES as i64 + 1, false));
        data.extend(std::iter::repeat_n(0u8, MAX_CHANGES as usize + 1));
        let step = t.receive(
            &u(vu),
            Msg::Sync {
                doc: id.clone(),
                data,
            },
        );
        let r = step.rejected.first().expect("refused");
        assert_eq!(r.reason, RejectReason::Malformed, "{r:?}");
        assert!(r.detail.contains("changes (at most"), "{r:?}");
        // Empty haves: two bytes each.
        let mut data = vec![0x42, 0, 0];
        data.extend(leb(1 << 20, false));
        data.extend(std::iter::repeat_n(0u8, 2 << 20));
        data.push(0);
        let step = t.receive(
            &u(vu),
            Msg::Sync {
                doc: DocId::new(DocKind::Meetings, u(vu)),
                data,
            },
        );
        let r = step.rejected.first().expect("refused");
        assert!(r.detail.contains("1048576 haves"), "{r:?}");
        // An honest message reads as it is.
        let mut d = doc::empty(&doc::actor_for(&u(vu), [5; 8]));
        doc::create_member(&mut d, RecordId::from_u64(1), &member("A")).unwrap();
        let mut s = sync::State::new();
        let m = d.generate_sync_message(&mut s).unwrap();
        let (heads, haves) = (m.heads.len() as u64, m.have.len() as u64);
        assert_eq!(message_counts(&m.encode()), Some([heads, 0, haves, 0]));
        let bytes = changes_message(vec![d.get_changes(&[])[0].raw_bytes().to_vec()]);
        assert_eq!(message_counts(&bytes), Some([0, 0, 0, 1]));
        assert_eq!(message_counts(&bytes[..2]), None);
    }

    /// A message of `changes` (whole chunks) for a document, as a peer would send it.
    fn changes_message(changes: Vec<Vec<u8>>) -> Vec<u8> {
        sync::Message {
            heads: vec![],
            need: vec![],
            have: vec![],
            changes: changes.into(),
            flags: None,
            version: sync::MessageVersion::V1,
        }
        .encode()
    }

    /// LEB128 of `v`, signed when `signed`.
    fn leb(v: i64, signed: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut v = v;
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            let done = if signed {
                (v == 0 && b & 0x40 == 0) || (v == -1 && b & 0x40 != 0)
            } else {
                v == 0
            };
            if done {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    /// A change chunk of `unit`'s whose action column is one run of `run` values (2^62 in
    /// ten bytes), which automerge's check of a change visits one at a time.
    fn run_bomb(unit: &str, run: i64) -> Vec<u8> {
        let actor = doc::actor_for(&u(unit), [7; 8]).to_bytes().to_vec();
        let mut data = leb(run, true);
        data.extend(leb(1, false));
        let mut body = leb(0, false); // no dependencies
        body.extend(leb(actor.len() as i64, false));
        body.extend(&actor);
        body.extend(leb(1, false)); // sequence number
        body.extend(leb(1, false)); // first op
        body.extend(leb(0, true)); // time
        body.extend(leb(0, false)); // message
        body.extend(leb(0, false)); // other actors
        body.extend(leb(1, false)); // one column: the action, integers
        body.extend(leb((4 << 4) | 2, false));
        body.extend(leb(data.len() as i64, false));
        body.extend(data);
        let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, CHUNK_CHANGE];
        chunk.extend(leb(body.len() as i64, false));
        chunk.extend(body);
        chunk
    }

    /// A change of ten bytes of columns declaring more operations than a frame may is
    /// refused before automerge sees it (its check visits them one by one: with 2^62, a loop
    /// nothing ends), and the link goes on: the village's next write syncs.
    #[test]
    fn a_change_declaring_more_values_than_a_frame_may_is_refused_unread() {
        let vu = "c01/k01/t01/v01";
        let (mut t, mut v, id) = township_and_village();
        let step = t.receive(
            &u(vu),
            Msg::Sync {
                doc: id.clone(),
                data: changes_message(vec![run_bomb(vu, 2 * MAX_ITEMS as i64)]),
            },
        );
        let r = step.rejected.first().expect("refused");
        assert_eq!(r.reason, RejectReason::TooLarge, "{r:?}");
        assert!(r.detail.contains("values"), "{r:?}");
        // Within the cap, the same chunk is read on (and refused by automerge, as it is
        // no change): the count is what refused it above.
        let step = t.receive(
            &u(vu),
            Msg::Sync {
                doc: DocId::new(DocKind::Meetings, u(vu)),
                data: changes_message(vec![run_bomb(vu, 3)]),
            },
        );
        let r = step.rejected.first().expect("refused");
        assert_eq!(r.reason, RejectReason::Malformed, "{r:?}");
        // The link still works.
        write(&mut v, vu, 1, "After the bomb");
        let _ = t.disconnect(v.me());
        let _ = v.disconnect(t.me());
        link(&mut t, &mut v);
        assert_eq!(names(&t, vu), ["After the bomb"]);
    }

    /// A peer's changes whose dependencies it never sends wait in the document, up to a
    /// bound: within it they apply once the missing change comes (as after an honest
    /// peer's Bloom filter false positive), past it the message is refused.
    #[test]
    fn changes_waiting_for_dependencies_are_bounded() {
        let (tu, vu) = ("c01/k01/t01", "c01/k01/t01/v01");
        let (mut t, mut v, id) = township_and_village();
        let mut d = doc::empty(&doc::actor_for(&u(vu), [5; 8]));
        for i in 0..(MAX_WAITING as u64 + 12) {
            doc::create_member(&mut d, RecordId::from_u64(i), &member(&format!("M{i}"))).unwrap();
        }
        let changes: Vec<Vec<u8>> = d
            .get_changes(&[])
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        let send = |t: &mut Engine, some: &[Vec<u8>]| {
            t.receive(
                &u(vu),
                Msg::Sync {
                    doc: id.clone(),
                    data: changes_message(some.to_vec()),
                },
            )
        };
        // Ten changes after a missing first one: they wait.
        let step = send(&mut t, &changes[1..11]);
        assert!(step.rejected.is_empty(), "{:?}", step.rejected);
        assert_eq!(t.get(&id).unwrap().waiting.len(), 10);
        assert!(names(&t, vu).is_empty());
        // The rest but the first: more than may wait, refused; nothing more waits.
        let step = send(&mut t, &changes[11..]);
        let r = step.rejected.first().expect("refused");
        assert_eq!(r.reason, RejectReason::TooLarge, "{r:?}");
        assert!(r.detail.contains("waiting"), "{r:?}");
        assert_eq!(t.get(&id).unwrap().waiting.len(), 10);
        // The missing change comes (a new session: the document was refused for this one):
        // the ten apply with it, and nothing waits.
        let _ = t.disconnect(v.me());
        let _ = v.disconnect(t.me());
        link(&mut t, &mut v);
        let step = send(&mut t, &changes[..1]);
        assert!(step.rejected.is_empty(), "{:?}", step.rejected);
        assert!(t.get(&id).unwrap().waiting.is_empty());
        assert_eq!(names(&t, vu).len(), 11);
        // Saved, a document keeps no change waiting (it would come back at every load).
        let mut w = doc::empty(&doc::actor_for(&u(tu), [6; 8]));
        w.apply_changes(
            changes[1..3]
                .iter()
                .map(|c| Change::from_bytes(c.clone()).unwrap()),
        )
        .unwrap();
        assert!(!w.get_missing_deps(&[]).is_empty());
        let loaded = Automerge::load(&doc::save(&w)).unwrap();
        assert!(loaded.get_missing_deps(&[]).is_empty());
        assert!(
            !Automerge::load(&w.save())
                .unwrap()
                .get_missing_deps(&[])
                .is_empty()
        );
    }

    /// A message whose changes declare more values than a part may goes in parts, each
    /// under the bound (so that no honest frame nears a receiver's cap), and the peer
    /// takes them all.
    #[test]
    fn a_message_of_many_values_goes_in_parts() {
        let (tu, vu) = ("c01/k01/t01", "c01/k01/t01/v01");
        let mut t = engine(tu, 1);
        let mut v = engine(vu, 2);
        register(&mut t, tu, &[vu]);
        for i in 0..1_000 {
            write(&mut v, vu, i, &format!("Member {i:04}"));
        }
        let id = DocId::new(DocKind::Members, u(vu));
        let mut queue: VecDeque<(UnitId, UnitId, Msg)> = connect(&mut t, &mut v).into();
        let mut parts = Vec::new();
        while let Some((from, to, msg)) = queue.pop_front() {
            if let Msg::Sync { doc, data } = &msg
                && doc == &id
                && from == *v.me()
            {
                let m = sync::Message::decode(data).unwrap();
                parts.push(values_of(m.changes.iter(), u64::MAX));
            }
            let target = if to == *t.me() { &mut t } else { &mut v };
            let step = target.receive(&from, msg);
            assert!(step.rejected.is_empty(), "{:?}", step.rejected);
            queue.extend(step.send.into_iter().map(|(p, m)| (to.clone(), p, m)));
        }
        let carrying: Vec<u64> = parts.into_iter().filter(|n| *n > 0).collect();
        assert!(carrying.len() >= 2, "{carrying:?}");
        assert!(
            carrying.iter().all(|n| *n <= MAX_PART_ITEMS),
            "{carrying:?}"
        );
        assert!(carrying.iter().sum::<u64>() > MAX_PART_ITEMS);
        assert_eq!(names(&t, vu).len(), 1_000);
    }

    /// `vu`'s register with a member written by each of `n` actors of its own.
    fn written_by_actors(vu: &str, n: u8) -> Automerge {
        let mut d = doc::empty(&doc::actor_for(&u(vu), [0; 8]));
        for n in 1..=n {
            let mut w = d.fork().with_actor(doc::actor_for(&u(vu), [n; 8]));
            doc::create_member(&mut w, RecordId::from_u64(u64::from(n)), &member("A")).unwrap();
            d.merge(&mut w).unwrap();
        }
        d
    }

    /// A whole document sent to a peer that holds part of it adds only the actors the peer
    /// lacks: those it holds are not counted as new.
    #[test]
    fn a_whole_document_adds_only_the_actors_not_held() {
        let vu = "c01/k01/t01/v01";
        let (mut t, _v, id) = township_and_village();
        let mut d = written_by_actors(vu, MAX_DOC_ACTORS as u8 - 1);
        let mut held = Vec::new();
        for c in d.get_changes(&[]) {
            held.push(c.raw_bytes().to_vec());
        }
        let step = t.receive(
            &u(vu),
            Msg::Sync {
                doc: id.clone(),
                data: changes_message(held),
            },
        );
        assert!(step.rejected.is_empty(), "{:?}", step.rejected);
        // One actor more, sent with the whole document: one new actor, not all of them.
        let mut w = d.fork().with_actor(doc::actor_for(&u(vu), [99; 8]));
        doc::create_member(&mut w, RecordId::from_u64(99), &member("B")).unwrap();
        d.merge(&mut w).unwrap();
        let step = t.receive(
            &u(vu),
            Msg::Sync {
                doc: id.clone(),
                data: changes_message(vec![d.save()]),
            },
        );
        assert!(step.rejected.is_empty(), "{:?}", step.rejected);
        assert_eq!(names(&t, vu).len(), MAX_DOC_ACTORS as usize);
    }

    /// A message may not bring a document more actors than it may hold.
    #[test]
    fn a_document_holds_a_bounded_number_of_actors() {
        let vu = "c01/k01/t01/v01";
        let (mut t, _v, id) = township_and_village();
        let by = |n: u8| {
            let mut d = doc::empty(&doc::actor_for(&u(vu), [n; 8]));
            doc::create_member(&mut d, RecordId::from_u64(u64::from(n)), &member("A")).unwrap();
            d.get_changes(&[])[0].raw_bytes().to_vec()
        };
        let send = |t: &mut Engine, changes: Vec<Vec<u8>>| {
            t.receive(
                &u(vu),
                Msg::Sync {
                    doc: id.clone(),
                    data: changes_message(changes),
                },
            )
        };
        let step = send(&mut t, (10..10 + MAX_DOC_ACTORS as u8).map(by).collect());
        assert!(step.rejected.is_empty(), "{:?}", step.rejected);
        // The same again (as after a reset): no actor is new, none refused.
        let step = send(&mut t, (10..10 + MAX_DOC_ACTORS as u8).map(by).collect());
        assert!(step.rejected.is_empty(), "{:?}", step.rejected);
        let step = send(&mut t, vec![by(100)]);
        let r = step.rejected.first().expect("refused");
        assert_eq!(r.reason, RejectReason::TooLarge, "{r:?}");
        assert!(r.detail.contains("actors"), "{r:?}");
        assert_eq!(names(&t, vu).len(), MAX_DOC_ACTORS as usize);
    }

    /// A whole document to a peer holding none of it brings all its actors at once: they
    /// count against the cap as well.
    #[test]
    fn a_whole_new_document_holds_a_bounded_number_of_actors() {
        let vu = "c01/k01/t01/v01";
        let (mut t, _v, id) = township_and_village();
        let d = written_by_actors(vu, MAX_DOC_ACTORS as u8 + 1);
        let step = t.receive(
            &u(vu),
            Msg::Sync {
                doc: id.clone(),
                data: changes_message(vec![d.save()]),
            },
        );
        let r = step.rejected.first().expect("refused");
        assert_eq!(r.reason, RejectReason::TooLarge, "{r:?}");
        assert!(r.detail.contains("actors"), "{r:?}");
        assert!(names(&t, vu).is_empty());
    }

    /// An object inside a record's map (a chain of them thousands deep would overflow the
    /// stack of whatever reads the record: automerge reads objects recursively), or other
    /// than a map, is refused from the chunk's columns before automerge reads it, in a
    /// change as in a document sent whole.
    #[test]
    fn objects_below_the_root_maps_are_refused() {
        use automerge::transaction::Transactable;
        use automerge::{AutomergeError, ObjType, ROOT};
        let vu = "c01/k01/t01/v01";
        let nest = |d: &mut Automerge, ty: ObjType| {
            d.transact::<_, _, AutomergeError>(|tx| {
                let rec = tx.put_object(ROOT, RecordId::from_u64(9).to_string(), ObjType::Map)?;
                let mut obj = tx.put_object(&rec, "name", ty)?;
                if ty == ObjType::Map {
                    for _ in 0..3 {
                        obj = tx.put_object(&obj, "deeper", ObjType::Map)?;
                    }
                }
                Ok(())
            })
            .unwrap();
        };
        // (A refused document is stopped for the session: a new link each.)
        for ty in [ObjType::Map, ObjType::Text] {
            let (mut t, mut v, id) = township_and_village();
            write(&mut v, vu, 1, "First");
            assert!(push_among(&mut [&mut t, &mut v], 1, &id).is_empty());
            let held = t.get(&id).unwrap().doc().unwrap().get_heads();
            let mut d = v.get(&id).unwrap().doc().unwrap().fork();
            d.set_actor(doc::actor_for(&u(vu), [7; 8]));
            nest(&mut d, ty);
            let change = d.get_last_local_change().unwrap().raw_bytes().to_vec();
            let step = t.receive(
                &u(vu),
                Msg::Sync {
                    doc: id.clone(),
                    data: changes_message(vec![change]),
                },
            );
            assert!(
                step.rejected
                    .iter()
                    .any(|r| r.reason == RejectReason::Malformed
                        && r.detail.contains("other than a map under the root")),
                "{ty:?}: {:?}",
                step.rejected
            );
            assert_eq!(t.get(&id).unwrap().doc().unwrap().get_heads(), held);
        }
        // The same in a document sent whole, to a township that holds none of it.
        let (mut t, _v, id) = township_and_village();
        let mut d = doc::empty(&doc::actor_for(&u(vu), [7; 8]));
        nest(&mut d, ObjType::Map);
        let step = t.receive(&u(vu), carrying(&id, d.get_heads(), d.save()));
        assert!(
            step.rejected
                .iter()
                .any(|r| r.reason == RejectReason::Malformed
                    && r.detail.contains("other than a map under the root")),
            "{:?}",
            step.rejected
        );
        assert!(
            t.get(&id)
                .is_none_or(|e| e.doc().is_none_or(|d| d.get_heads().is_empty()))
        );
        // An honest document sent whole is taken (on a new link: refused, the document is
        // stopped for the session).
        let (mut t, _v, id) = township_and_village();
        let mut d = doc::empty(&doc::actor_for(&u(vu), [7; 8]));
        doc::create_member(&mut d, RecordId::from_u64(1), &member("Whole")).unwrap();
        let step = t.receive(&u(vu), carrying(&id, d.get_heads(), d.save()));
        assert!(step.rejected.is_empty(), "{:?}", step.rejected);
        assert_eq!(names(&t, vu), ["Whole"]);
    }

    /// A township linked to its village, which holds its own register and the township's
    /// profile; the township then wrote a member into the village's register (as a
    /// transfer in does), synced down. Returns the documents as the township held them
    /// before that write (a backup), and the register's id.
    fn township_wrote_below() -> (Engine, Engine, Vec<(DocMeta, Automerge)>, DocId) {
        let (tu, vu) = ("c01/k01/t01", "c01/k01/t01/v01");
        let mut t = engine(tu, 1);
        let mut v = engine(vu, 2);
        register(&mut t, tu, &[vu]);
        write(&mut v, vu, 1, "Village Own");
        link(&mut t, &mut v);
        let backup = t
            .docs()
            .map(|e| (e.meta.clone(), e.doc().unwrap().clone()))
            .collect();
        let reg = write(&mut t, vu, 2, "Moved In");
        assert!(push(&mut t, &mut v, &reg).is_empty());
        assert_eq!(names(&v, vu), ["Moved In", "Village Own"]);
        (t, v, backup, reg)
    }

    #[test]
    fn a_child_naming_its_parent_in_a_change_is_refused() {
        let (tu, vu) = ("c01/k01/t01", "c01/k01/t01/v01");
        let (mut t, mut v, _, reg) = township_wrote_below();
        let profile = DocId::new(DocKind::Profile, u(tu));
        // The village writes under the township's actor id: into its own register (what the
        // township may, as its supervisor) and into the township's profile (which only the
        // township writes, and every unit below it reads).
        let forge = |v: &mut Engine, id: &DocId, edit: &dyn Fn(&mut Automerge)| {
            let e = v.get(id).unwrap();
            let meta = e.meta.clone();
            let mut d = e.doc().unwrap().fork();
            d.set_actor(doc::actor_for(&u(tu), [1; 8]));
            edit(&mut d);
            v.insert(meta, d);
        };
        forge(&mut v, &reg, &|d| {
            doc::create_member(d, RecordId::from_u64(3), &member("Forged")).unwrap();
        });
        forge(&mut v, &profile, &|d| {
            doc::set_profile(d, "Hijacked", &[]).unwrap();
        });
        for id in [&reg, &profile] {
            let before = t.get(id).unwrap().doc().unwrap().get_heads();
            let r = push(&mut v, &mut t, id);
            assert!(
                r.iter().any(|r| r.reason == RejectReason::Unauthorised
                    && r.detail
                        .contains("relays only changes authored in its own subtree")),
                "{id}: {r:?}"
            );
            assert_eq!(
                t.get(id).unwrap().doc().unwrap().get_heads(),
                before,
                "{id}"
            );
        }
        assert_eq!(names(&t, vu), ["Moved In", "Village Own"]);
        let p = doc::read_profile(t.get(&profile).unwrap().doc().unwrap(), &u(tu));
        assert_eq!(p.map(|p| p.name).as_deref(), Some("Unit c01/k01/t01"));
    }

    #[test]
    fn a_child_sending_back_what_its_parent_wrote_is_taken_unless_new_to_it() {
        let (tu, vu) = ("c01/k01/t01", "c01/k01/t01/v01");
        let (mut t, mut v, _, reg) = township_wrote_below();
        // The village's whole register, the township's change in it, and a new one of the
        // village's own: what the township holds is not new, so the message is taken.
        write(&mut v, vu, 4, "Village Later");
        let d = v.get(&reg).unwrap().doc().unwrap();
        let step = t.receive(&u(vu), carrying(&reg, d.get_heads(), d.save()));
        assert!(step.rejected.is_empty(), "{:?}", step.rejected);
        assert_eq!(names(&t, vu), ["Moved In", "Village Later", "Village Own"]);
        // A change under the township's actor id on top of a village change the township
        // has not seen: automerge would hold it until that change arrives and then apply
        // it, past this message's check, so it is refused now.
        let mut d = v.get(&reg).unwrap().doc().unwrap().fork();
        doc::create_member(&mut d, RecordId::from_u64(5), &member("Unseen")).unwrap();
        d.set_actor(doc::actor_for(&u(tu), [1; 8]));
        doc::create_member(&mut d, RecordId::from_u64(6), &member("Forged")).unwrap();
        let forged = d.get_last_local_change().unwrap();
        let before = t.get(&reg).unwrap().doc().unwrap().get_heads();
        let step = t.receive(
            &u(vu),
            carrying(&reg, d.get_heads(), forged.raw_bytes().to_vec()),
        );
        assert_eq!(
            step.rejected.first().map(|r| r.reason),
            Some(RejectReason::Unauthorised)
        );
        let after = t.get(&reg).unwrap().doc().unwrap();
        assert_eq!(after.get_heads(), before);
        assert!(
            after.get_missing_deps(&[]).is_empty(),
            "a forged change was left waiting"
        );
    }

    #[test]
    fn a_restored_node_takes_back_from_a_child_what_it_wrote_only_for_a_while() {
        let (tu, vu) = ("c01/k01/t01", "c01/k01/t01/v01");
        let (_, mut v, backup, _) = township_wrote_below();
        let restored = |until: Option<u64>| {
            let mut t = engine(tu, 3);
            for (meta, d) in backup.clone() {
                t.insert(meta, d);
            }
            t.take_returning_changes_until(until);
            t
        };
        let now = crate::status::now_ms();
        let hour = 3_600_000;
        // Without the window, or past it, the village's copy of what the township wrote
        // after the backup is refused: it could be forged.
        for until in [None, Some(now - hour)] {
            let mut t = restored(until);
            let _ = v.disconnect(&u(tu));
            assert_refused(&mut t, &mut v, RejectReason::Unauthorised);
            assert_eq!(names(&t, vu), ["Village Own"], "{until:?}");
        }
        // Nor from a document the node does not hold at all (a backup older than the
        // register): all of it is new here.
        let mut t = engine(tu, 4);
        let profile = DocId::new(DocKind::Profile, u(tu));
        for (meta, d) in backup.iter().filter(|(m, _)| m.id == profile) {
            t.insert(meta.clone(), d.clone());
        }
        let _ = v.disconnect(&u(tu));
        assert_refused(&mut t, &mut v, RejectReason::Unauthorised);
        assert!(names(&t, vu).is_empty());
        // Within it, it comes back.
        let mut t = restored(Some(now + hour));
        let _ = v.disconnect(&u(tu));
        link(&mut t, &mut v);
        assert_eq!(names(&t, vu), ["Moved In", "Village Own"]);
    }

    #[test]
    fn out_of_scope_summaries_are_rejected() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        let _ = connect(&mut t, &mut v);
        let summary = |unit: &str, owner: &str| {
            Msg::Summary(Summary {
                unit: u(unit),
                docs: vec![(
                    DocMeta::new(DocId::new(DocKind::Members, u(owner))),
                    [0; 16],
                )],
                children: vec![],
            })
        };
        // The sibling's register.
        let step = t.receive(
            &u("c01/k01/t01/v01"),
            summary("c01/k01/t01/v02", "c01/k01/t01/v02"),
        );
        assert_eq!(step.rejected[0].reason, RejectReason::OutOfScope);
        assert!(
            t.get(&DocId::new(DocKind::Members, u("c01/k01/t01/v02")))
                .is_none(),
            "nothing created"
        );
        // A child may not push its parent's internal document either.
        let step = t.receive(&u("c01/k01/t01/v01"), summary("c01/k01/t01", "c01/k01/t01"));
        assert_eq!(step.rejected[0].reason, RejectReason::OutOfScope);
        // Nor may a summary list a document under another unit.
        let step = t.receive(
            &u("c01/k01/t01/v01"),
            summary("c01/k01/t01/v01", "c01/k01/t01/v02"),
        );
        assert_eq!(step.rejected[0].reason, RejectReason::OutOfScope);
        // Nor give a register an audience its kind does not have (a township's members
        // addressed to its villages would be read there).
        let widened = DocMeta {
            id: DocId::new(DocKind::Members, u("c01/k01/t01/v01")),
            audience: grassroots_schema::Audience::Descendants,
        };
        let step = t.receive(
            &u("c01/k01/t01/v01"),
            Msg::Summary(Summary {
                unit: u("c01/k01/t01/v01"),
                docs: vec![(widened.clone(), [0; 16])],
                children: vec![],
            }),
        );
        assert_eq!(step.rejected[0].reason, RejectReason::Malformed);
        assert!(t.get(&widened.id).is_none(), "nothing created");
    }

    #[test]
    fn malformed_sync_bytes_are_rejected() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        let _ = connect(&mut t, &mut v);
        // Hosted here (only a hosted document is frozen after a refusal).
        let id = write(&mut t, "c01/k01/t01/v01", 1, "Hosted");
        let send = |t: &mut Engine, junk: &[u8]| {
            t.receive(
                &u("c01/k01/t01/v01"),
                Msg::Sync {
                    doc: id.clone(),
                    data: junk.to_vec(),
                },
            )
        };
        for junk in [
            vec![],
            vec![0x42],
            vec![0x43, 0xff, 0xff, 0xff],
            b"hello world".to_vec(),
        ] {
            // A session per message: after a refusal the document is not synced with that
            // peer again in the session.
            let _ = t.disconnect(v.me());
            let _ = t.connect(v.me(), HashMap::new());
            let step = send(&mut t, &junk);
            assert_eq!(step.rejected[0].reason, RejectReason::Malformed);
            let again = send(&mut t, &junk);
            assert!(again.rejected.is_empty() && again.send.is_empty());
        }
    }

    /// automerge 0.12 trusts a `have`'s Bloom filter: one with no bits divides by zero when
    /// this side next tests its changes against it, and one asking for 2^32 probes allocates
    /// 16 GiB per change. Both must be refused at decoding, and the engine go on.
    #[test]
    fn a_bloom_filter_automerge_would_choke_on_is_refused() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        let _ = connect(&mut t, &mut v);
        let id = write(&mut t, "c01/k01/t01/v01", 1, "Hosted");
        // Type 0x42, no heads, no need, one have (no last sync; the filter's bytes), no
        // changes.
        let message = |bloom: &[u8]| {
            let mut m = vec![0x42, 0, 0, 1, 0, bloom.len() as u8];
            m.extend_from_slice(bloom);
            m.push(0);
            m
        };
        let no_bits = message(&[1, 0, 1]);
        let many_probes = message(&[1, 10, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0]);
        for bad in [no_bits, many_probes] {
            let _ = t.disconnect(v.me());
            let _ = t.connect(v.me(), HashMap::new());
            let step = t.receive(
                &u("c01/k01/t01/v01"),
                Msg::Sync {
                    doc: id.clone(),
                    data: bad,
                },
            );
            assert_eq!(step.rejected.len(), 1, "{:?}", step.rejected);
            assert_eq!(step.rejected[0].reason, RejectReason::Malformed);
            assert!(
                step.rejected[0].detail.contains("Bloom"),
                "{:?}",
                step.rejected
            );
        }
        // An honest filter still passes, and the document syncs.
        let _ = t.disconnect(v.me());
        let _ = v.disconnect(t.me());
        link(&mut t, &mut v);
        assert_eq!(
            v.get(&id).unwrap().doc().unwrap().get_heads(),
            t.get(&id).unwrap().doc().unwrap().get_heads()
        );
    }

    /// The inflation cap holds for a whole batch: items naming different documents, each
    /// under the cap alone, may not together make this side inflate more than it.
    #[test]
    fn a_batch_shares_one_inflation_budget() {
        use std::io::Write as _;
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        let _ = connect(&mut t, &mut v);
        // A compressed-change chunk inflating to 30 MiB of zeros (not a change once inflated:
        // refused as malformed, after its inflation has been counted).
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&vec![0u8; 30 << 20]).unwrap();
        let body = z.finish().unwrap();
        let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, CHUNK_COMPRESSED_CHANGE];
        let mut n = body.len();
        while n >= 0x80 {
            chunk.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        chunk.push(n as u8);
        chunk.extend_from_slice(&body);
        let message = sync::Message {
            heads: vec![],
            need: vec![],
            have: vec![],
            changes: chunk.into(),
            flags: None,
            version: sync::MessageVersion::V1,
        }
        .encode();
        let items = [DocKind::Members, DocKind::Meetings, DocKind::Complaints]
            .into_iter()
            .map(|k| (DocId::new(k, u("c01/k01/t01/v01")), message.clone()))
            .collect();
        let step = t.receive(&u("c01/k01/t01/v01"), Msg::SyncBatch(items));
        let reasons: Vec<_> = step.rejected.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            [
                RejectReason::Malformed,
                RejectReason::Malformed,
                RejectReason::TooLarge
            ],
            "{:?}",
            step.rejected
        );
        assert!(
            step.rejected[2].detail.contains("frame"),
            "{:?}",
            step.rejected
        );
        // Taken in parts (an item at a time), the frame still has one budget: the third is
        // refused as the frame's, not counted afresh.
        let items: Vec<_> = [DocKind::Activists, DocKind::Appraisals, DocKind::Reports]
            .into_iter()
            .map(|k| (DocId::new(k, u("c01/k01/t01/v01")), message.clone()))
            .collect();
        let v01 = u("c01/k01/t01/v01");
        let (first, rest) = t.receive_until(&v01, Msg::SyncBatch(items), &mut || false);
        let mut reasons: Vec<_> = first.rejected.iter().map(|r| r.reason).collect();
        let mut rest = rest.expect("two items left");
        assert_eq!(rest.len(), 2);
        loop {
            let (step, left) = t.resume(&v01, rest, &mut || false);
            reasons.extend(step.rejected.iter().map(|r| r.reason));
            match left {
                Some(l) => rest = l,
                None => break,
            }
        }
        assert_eq!(
            reasons,
            [
                RejectReason::Malformed,
                RejectReason::Malformed,
                RejectReason::TooLarge
            ]
        );
        // One such message alone is under the cap.
        let step = t.receive(
            &u("c01/k01/t01/v01"),
            Msg::Sync {
                doc: DocId::new(DocKind::Activists, u("c01/k01/t01/v01")),
                data: message,
            },
        );
        assert_eq!(step.rejected[0].reason, RejectReason::Malformed);
    }

    /// Every item of a batch is answered, and an answer can be a whole document: more than
    /// a few items for one document in one batch are refused.
    #[test]
    fn a_batch_repeating_one_document_is_answered_a_few_times_only() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        let _ = connect(&mut t, &mut v);
        let id = write(&mut t, "c01/k01/t01/v01", 1, "Hosted");
        // Each item claims to hold nothing of the document.
        let nothing = sync::Message {
            heads: vec![],
            need: vec![],
            have: vec![],
            changes: Vec::<Vec<u8>>::new().into(),
            flags: None,
            version: sync::MessageVersion::V1,
        }
        .encode();
        let items = vec![(id.clone(), nothing.clone()); MAX_ITEMS_PER_DOC as usize + 3];
        let step = t.receive(&u("c01/k01/t01/v01"), Msg::SyncBatch(items));
        assert_eq!(step.rejected.len(), 3, "{:?}", step.rejected);
        assert!(
            step.rejected
                .iter()
                .all(|r| r.reason == RejectReason::Malformed && r.detail.contains("one batch"))
        );
        // The same taken in parts: the count is the frame's, not each part's.
        let nothing_again = nothing.clone();
        let items = vec![(id.clone(), nothing); MAX_ITEMS_PER_DOC as usize + 3];
        let v01 = u("c01/k01/t01/v01");
        let (first, mut rest) = t.receive_until(&v01, Msg::SyncBatch(items), &mut || false);
        let mut rejected = first.rejected.len();
        let mut parts = 1;
        while let Some(r) = rest {
            let (step, left) = t.resume(&v01, r, &mut || false);
            rejected += step.rejected.len();
            parts += 1;
            rest = left;
        }
        assert_eq!((parts, rejected), (MAX_ITEMS_PER_DOC as usize + 3, 3));
        // The document is stopped for the session, as the peer stops it once refused:
        // further messages of it are not answered (nor would a slot of it wait).
        let step = t.receive(
            &v01,
            Msg::Sync {
                doc: id.clone(),
                data: nothing_again,
            },
        );
        assert!(step.send.is_empty(), "{:?}", step.send);
    }

    /// A peer's change may not grow a profile's registered units past the cap (each node
    /// up the line reads them whole at every change of the profile).
    #[test]
    fn a_profile_may_not_grow_past_its_cap() {
        use automerge::transaction::Transactable as _;
        let mut k = engine("c01/k01", 1);
        let mut t = engine("c01/k01/t01", 2);
        link(&mut k, &mut t);
        let profile = DocId::new(DocKind::Profile, u("c01/k01/t01"));
        let (d, _) = t.local_doc(DocMeta::new(profile.clone())).unwrap();
        let mut tx = d.transaction();
        let children = tx
            .put_object(automerge::ROOT, "children", automerge::ObjType::Map)
            .unwrap();
        for i in 0..=MAX_PROFILE_ENTRIES {
            tx.put(&children, format!("c01/k01/t01/v{i}"), true)
                .unwrap();
        }
        tx.commit();
        let r = push_among(&mut [&mut t, &mut k], 0, &profile);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].reason, RejectReason::TooLarge, "{r:?}");
        assert!(
            k.get(&profile)
                .and_then(|e| e.doc())
                .is_none_or(|d| doc::profile_entries(d) < MAX_PROFILE_ENTRIES),
            "nothing of it adopted"
        );
    }

    #[test]
    fn a_local_failure_frees_both_slots_and_freezes_nothing() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        let id = write(&mut t, "c01/k01/t01/v01", 1, "At The Township");
        link(&mut t, &mut v);
        let (ut, uv) = (t.me().clone(), v.me().clone());
        let st: HashMap<_, _> = t.disconnect(&uv).into_iter().collect();
        let sv: HashMap<_, _> = v.disconnect(&ut).into_iter().collect();
        // The township's copy is evicted and can no longer be read back.
        t.set_source(Box::new(|_| Err("disk gone".into())));
        let loaded = t.residency().loaded;
        assert_eq!(t.evict_to(0, |_, _| false), loaded);
        // The village wrote while apart: its register starts at connect, taking a slot.
        write(&mut v, "c01/k01/t01/v01", 2, "From The Village");
        let mut q = addressed(&uv, &ut, v.connect(&ut, sv));
        assert_eq!(v.progress(&ut).unwrap().in_flight, 1);
        q.extend(addressed(&ut, &uv, t.connect(&uv, st)));
        let r = pump(&mut t, &mut v, q);
        assert!(
            !r.is_empty() && r.iter().all(|r| r.reason == RejectReason::ApplyFailed),
            "{r:?}"
        );
        // Neither side waits for the other, and the township looks at the document again
        // (nothing was frozen).
        assert_eq!(v.progress(&ut).unwrap().in_flight, 0);
        assert_eq!(t.progress(&uv).unwrap().in_flight, 0);
        let again = t.receive(
            &uv,
            Msg::Sync {
                doc: id.clone(),
                data: vec![0x42],
            },
        );
        assert_eq!(
            again.rejected.len(),
            1,
            "a later message is still looked at"
        );
    }

    /// A county linked to its township, which holds the members of `village` (not
    /// registered in any profile) with one named `name`: the county has set the register
    /// aside, and holds nothing of it.
    fn county_with_unregistered(village: &str, name: &str) -> (Engine, Engine, DocId) {
        let mut k = engine("c01/k01", 1);
        let mut t = engine("c01/k01/t01", 2);
        write(&mut t, village, 1, name);
        link(&mut t, &mut k);
        let id = DocId::new(DocKind::Members, u(village));
        assert!(k.get(&id).is_none());
        assert_eq!(k.progress(t.me()).unwrap().unregistered, 1);
        (k, t, id)
    }

    #[test]
    fn a_set_aside_document_refused_for_its_content_is_not_started_later() {
        let (mut k, t, v02) = county_with_unregistered("c01/k01/t01/v02", "Not Yet Registered");
        let ut = t.me().clone();
        // A change to it authored by another township: refused before anything is created.
        let mut forged = doc::empty(&doc::actor_for(&u("c01/k01/t02"), [5; 8]));
        doc::create_member(&mut forged, RecordId::from_u64(9), &member("Forged")).unwrap();
        let change = forged.get_changes(&[]).pop().unwrap();
        let msg = carrying(&v02, vec![change.hash()], change.raw_bytes().to_vec());
        let step = k.receive(&ut, msg);
        assert_eq!(step.rejected[0].reason, RejectReason::Unauthorised);
        assert_eq!(k.progress(&ut).unwrap().unregistered, 0);
        // Registering the village later does not start it (the township would not answer).
        register(&mut k, "c01/k01/t01", &["c01/k01/t01/v02"]);
        let step = k.registrations_changed(&ut);
        assert!(step.send.is_empty() && step.created.is_empty(), "{step:?}");
        assert_eq!(k.progress(&ut).unwrap().in_flight, 0);
    }

    #[test]
    fn automerge_panic_input_is_contained() {
        // Regression: automerge 0.12 panics inside apply on this input (shared fixture).
        // Delivered as a sync message's change chunk, it must be refused, not crash the node.
        let base = include_bytes!("../../tests/fixtures/am_panic_base.automerge");
        let input = include_bytes!("../../tests/fixtures/am_panic_input.bin");
        let id = DocId::new(DocKind::Members, u("c01/k01/t01/v01"));
        // A township holding the base, linked to its village (a refused document is not
        // synced again in the session, so each case gets a fresh pair).
        let pair = || {
            let mut t = engine("c01/k01/t01", 1);
            let mut v = engine("c01/k01/t01/v01", 2);
            link(&mut t, &mut v);
            t.insert(DocMeta::new(id.clone()), Automerge::load(base).unwrap());
            (t, v)
        };
        let (mut t, _) = pair();
        let heads = t.get(&id).unwrap().doc().unwrap().get_heads();
        let send = |t: &mut Engine, change: &[u8]| {
            let msg = sync::Message {
                heads: vec![],
                need: vec![],
                have: vec![],
                changes: change.to_vec().into(),
                flags: None,
                version: sync::MessageVersion::V1,
            };
            t.receive(
                &u("c01/k01/t01/v01"),
                Msg::Sync {
                    doc: id.clone(),
                    data: msg.encode(),
                },
            )
            .rejected
        };
        // As given, its actor names no unit: refused before automerge sees it.
        let r = send(&mut t, input);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].reason, RejectReason::Unauthorised, "{r:?}");
        // The same change from the village's own actor passes every check before automerge,
        // and automerge panics on it: caught, the copy discarded, and refused as the
        // sender's doing (a reason of its own, not a local failure's).
        let mut change = Change::from_bytes(input.to_vec()).unwrap().decode();
        change.actor_id = doc::actor_for(&u("c01/k01/t01/v01"), [9; 8]);
        let change = Change::from(change);
        let (mut t, mut v) = pair();
        let r = send(&mut t, change.raw_bytes());
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].reason, RejectReason::Panicked, "{r:?}");
        assert_eq!(
            t.get(&id).unwrap().doc().unwrap().get_heads(),
            heads,
            "document untouched"
        );
        // The engine still works afterwards: the village's profile arrives.
        let profile = DocMeta::new(DocId::new(DocKind::Profile, u("c01/k01/t01/v01")));
        let (d, _) = v.local_doc(profile.clone()).unwrap();
        doc::set_profile(d, "Clear Water Village", &[]).unwrap();
        let q: Vec<_> = v
            .fan_out(&profile.id, None)
            .into_iter()
            .map(|(p, m)| (u("c01/k01/t01/v01"), p, m))
            .collect();
        let r = pump(&mut t, &mut v, q);
        assert!(r.is_empty(), "{r:?}");
        let got = doc::read_profile(
            t.get(&profile.id).unwrap().doc().unwrap(),
            &u("c01/k01/t01/v01"),
        )
        .unwrap();
        assert_eq!(got.name, "Clear Water Village");
    }

    /// A township linked to its village, which holds a register of `n` members made
    /// offline; the register's id and the message carrying it whole as a village sends it
    /// unloaded (heads, the document chunk, nothing asked, no summary), with `chunk` made
    /// from the saved register.
    fn offline_register(
        n: u64,
        chunk: impl FnOnce(Vec<u8>) -> (Vec<ChangeHash>, Vec<u8>),
    ) -> (Engine, Engine, DocId, Msg) {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        register(&mut t, "c01/k01/t01", &["c01/k01/t01/v01"]);
        link(&mut t, &mut v);
        let mut id = None;
        for i in 0..n {
            id = Some(write(
                &mut v,
                "c01/k01/t01/v01",
                i + 1,
                &format!("Head {i}"),
            ));
        }
        let id = id.unwrap();
        let (heads, bytes) = chunk(doc::save(v.get(&id).unwrap().doc().unwrap()));
        // As the village's `whole_unloaded` makes it, its state following.
        let state = v.peers.get_mut(t.me()).unwrap().state(&id);
        assume_v2(state);
        let m = sent_whole(state, heads, Vec::new(), vec![bytes]);
        let msg = Msg::Sync {
            doc: id.clone(),
            data: m.encode(),
        };
        (t, v, id, msg)
    }

    /// A register sent whole to a parent that lacks it is taken from its columns, not
    /// loaded: the parent answers that it holds the heads (as automerge would), the village
    /// settles, and automerge's later load of it reads what the columns read. (A small one
    /// is loaded as it comes.)
    #[test]
    fn a_register_sent_whole_is_taken_unread_and_loaded_later() {
        let whole = |saved: Vec<u8>| (Automerge::load(&saved).unwrap().get_heads(), saved);
        let (mut t, _, id, msg) = offline_register(20, whole);
        assert!(t.receive(&u("c01/k01/t01/v01"), msg).rejected.is_empty());
        assert!(t.unread(&id).is_none() && t.get(&id).unwrap().doc().is_some());
        let (mut t, mut v, id, msg) = offline_register(1_500, |saved| {
            let d = Automerge::load(&saved).unwrap();
            (d.get_heads(), saved)
        });
        let (ut, uv) = (t.me().clone(), v.me().clone());
        let step = t.receive(&uv, msg);
        assert!(step.rejected.is_empty(), "{:?}", step.rejected);
        assert!(step.changed.contains(&id));
        assert_eq!(step.forward, vec![(id.clone(), uv.clone())]);
        let unread = t.unread(&id).expect("taken unread");
        assert_eq!(unread.members.len(), 1_500);
        assert!(t.get(&id).unwrap().doc().is_none(), "not loaded");
        // The answer: this side's heads, the village's own.
        let [(to, Msg::Sync { data, .. })] = &step.send[..] else {
            panic!("one answer: {:?}", step.send);
        };
        assert_eq!(to, &uv);
        let answer = sync::Message::decode(data).unwrap();
        let mut heads = v.get(&id).unwrap().doc().unwrap().get_heads();
        heads.sort();
        assert_eq!(answer.heads, heads);
        assert!(answer.changes.is_empty() && answer.need.is_empty());
        let q = addressed(&ut, &uv, vec![step.send[0].1.clone()]);
        assert!(pump(&mut t, &mut v, q).is_empty());
        assert!(
            t.get(&id).unwrap().doc().is_none(),
            "still unread once settled"
        );
        // A word that carries nothing new (as the next hop up answers it) is taken
        // unloaded too, and needs no answer.
        let word = sync::Message {
            heads: heads.clone(),
            need: Vec::new(),
            have: vec![sync::Have {
                last_sync: heads.clone(),
                bloom: sync::BloomFilter::from_hashes(std::iter::empty::<&ChangeHash>()),
            }],
            changes: Vec::<Vec<u8>>::new().into(),
            flags: None,
            version: sync::MessageVersion::V2,
        };
        let data = word.encode();
        let step = t.receive(
            &uv,
            Msg::Sync {
                doc: id.clone(),
                data,
            },
        );
        assert!(step.rejected.is_empty() && step.send.is_empty(), "{step:?}");
        assert!(t.get(&id).unwrap().doc().is_none(), "still unread");
        // The village has nothing more to say for it.
        let p = v.progress(&ut).unwrap();
        assert_eq!(p.in_flight + p.queued, 0, "{p:?}");
        t.check_unread(&id);
        assert!(t.unread(&id).is_none());
        assert_eq!(
            t.take_unread_outcomes(),
            vec![UnreadOutcome::Loaded(id.clone())]
        );
        assert_eq!(names(&t, "c01/k01/t01/v01"), names(&v, "c01/k01/t01/v01"));
        // Later changes go the usual way.
        write(&mut v, "c01/k01/t01/v01", 999, "Later");
        let q = v
            .fan_out(&id, None)
            .into_iter()
            .map(|(to, m)| (uv.clone(), to, m))
            .collect();
        assert!(pump(&mut t, &mut v, q).is_empty());
        assert_eq!(names(&t, "c01/k01/t01/v01"), names(&v, "c01/k01/t01/v01"));
    }

    /// A register whose columns read otherwise than automerge reads it is noted as such
    /// when loaded (its views are then written again from automerge's reading).
    #[test]
    fn a_register_read_otherwise_by_automerge_is_noted() {
        let whole = |saved: Vec<u8>| (Automerge::load(&saved).unwrap().get_heads(), saved);
        let (mut t, _v, id, msg) = offline_register(1_500, whole);
        assert!(t.receive(&u("c01/k01/t01/v01"), msg).rejected.is_empty());
        let unread = t.docs.get_mut(&id).unwrap().unread.as_mut().unwrap();
        let mut members = (*unread.members).clone();
        members.pop_first();
        unread.members = std::sync::Arc::new(members);
        t.check_unread(&id);
        assert_eq!(
            t.take_unread_outcomes(),
            vec![UnreadOutcome::Differs(id.clone())]
        );
        assert_eq!(names(&t, "c01/k01/t01/v01").len(), 1_500);
    }

    /// A register whose chunk reads but does not load (a head that is not its own) is taken
    /// out again when automerge loads it: the document is empty here, and refused from the
    /// village for the session.
    #[test]
    fn a_register_taken_unread_that_does_not_load_is_taken_out() {
        let (mut t, _v, id, msg) = offline_register(1_500, |saved| {
            let (head, chunk) = super::super::register::head_flipped(&saved);
            (vec![head], chunk)
        });
        let uv = u("c01/k01/t01/v01");
        let step = t.receive(&uv, msg);
        assert!(step.rejected.is_empty(), "{:?}", step.rejected);
        assert!(t.unread(&id).is_some(), "its columns read");
        t.check_unread(&id);
        let outcomes = t.take_unread_outcomes();
        assert!(
            matches!(&outcomes[..], [UnreadOutcome::Unloadable { doc, from, .. }] if *doc == id && *from == uv),
            "{outcomes:?}"
        );
        let d = t.get(&id).unwrap().doc().unwrap();
        assert!(d.get_heads().is_empty(), "empty again");
        assert!(t.peers[&uv].refused.contains(&id));
    }

    #[test]
    fn live_push_reaches_connected_peers_in_scope() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        let q = connect(&mut t, &mut v);
        pump(&mut t, &mut v, q);
        let id = write(&mut v, "c01/k01/t01/v01", 3, "Live");
        let out = v.fan_out(&id, None);
        assert_eq!(out.len(), 1);
        let q = out
            .into_iter()
            .map(|(p, m)| (u("c01/k01/t01/v01"), p, m))
            .collect();
        pump(&mut t, &mut v, q);
        assert_eq!(names(&t, "c01/k01/t01/v01"), vec!["Live".to_string()]);
    }

    /// Deliver like [`pump`] but count messages and encoded bytes; also check that no link
    /// ever has more than `MAX_IN_FLIGHT` documents in flight.
    fn pump_counted(
        a: &mut Engine,
        b: &mut Engine,
        mut queue: Vec<(UnitId, UnitId, Msg)>,
    ) -> (usize, usize, usize) {
        let (mut msgs, mut bytes, mut rounds) = (0, 0, 0);
        while !queue.is_empty() {
            rounds += 1;
            assert!(rounds < 1000, "did not settle");
            let mut next = Vec::new();
            for (from, to, msg) in std::mem::take(&mut queue) {
                msgs += 1;
                bytes += super::super::wire::encode(&msg).len() + 4;
                let target = if &to == a.me() { &mut *a } else { &mut *b };
                let step = target.receive(&from, msg);
                assert!(step.rejected.is_empty(), "{:?}", step.rejected);
                let p = target.progress(&from).unwrap();
                assert!(p.in_flight <= MAX_IN_FLIGHT);
                next.extend(step.send.into_iter().map(|(p, m)| (to.clone(), p, m)));
            }
            queue = next;
        }
        (msgs, bytes, rounds)
    }

    /// A county with `n` village registers under 10 townships, every unit registered,
    /// synced to the city.
    fn big_pair(n: usize) -> (Engine, Engine) {
        let mut k = engine("c01/k01", 1);
        let mut c = engine("c01", 2);
        let mut tree: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for i in 0..n {
            let township = format!("c01/k01/t{:02}", i % 10);
            let owner = format!("{township}/v{:03}", i);
            write(&mut k, &owner, i as u64, "Seed");
            tree.entry(township).or_default().push(owner);
        }
        let townships: Vec<&str> = tree.keys().map(String::as_str).collect();
        register(&mut k, "c01/k01", &townships);
        for (township, villages) in &tree {
            let villages: Vec<&str> = villages.iter().map(String::as_str).collect();
            register(&mut k, township, &villages);
        }
        let q = connect(&mut k, &mut c);
        pump_counted(&mut k, &mut c, q);
        (k, c)
    }

    fn reconnect(k: &mut Engine, c: &mut Engine) -> Vec<(UnitId, UnitId, Msg)> {
        let (uk, uc) = (k.me().clone(), c.me().clone());
        let sk: HashMap<_, _> = k.disconnect(&uc).into_iter().collect();
        let sc: HashMap<_, _> = c.disconnect(&uk).into_iter().collect();
        let mut q = addressed(&uk, &uc, k.connect(&uc, sk));
        q.extend(addressed(&uc, &uk, c.connect(&uk, sc)));
        q
    }

    #[test]
    fn idle_reconnect_costs_one_digest_each_way() {
        let (mut k, mut c) = big_pair(500);
        assert_eq!(names(&c, "c01/k01/t03/v003"), vec!["Seed".to_string()]);
        let q = reconnect(&mut k, &mut c);
        let (msgs, bytes, _) = pump_counted(&mut k, &mut c, q);
        assert_eq!(msgs, 2, "only the two root digests");
        assert!(bytes < 100, "{bytes} bytes");
    }

    /// A side waits for its peer while the digest exchange is unanswered (the root digest,
    /// then each summary it sent), so that its link probes a silent peer then too; once every
    /// summary is answered, or refused, it waits for nothing.
    #[test]
    fn the_digest_exchange_waits_for_the_peer_until_answered() {
        let (mut k, mut c) = big_pair(50);
        let (uk, uc) = (k.me().clone(), c.me().clone());
        let waits = |e: &Engine, peer: &UnitId| {
            let p = e.progress(peer).unwrap();
            (p.rootless, p.descending)
        };
        // Unchanged: waiting for the root only, until it arrives.
        let q = reconnect(&mut k, &mut c);
        assert_eq!(
            (waits(&k, &uc), waits(&c, &uk)),
            ((true, false), (true, false))
        );
        assert!(pump(&mut k, &mut c, q).is_empty());
        assert_eq!(
            (waits(&k, &uc), waits(&c, &uk)),
            ((false, false), (false, false))
        );
        // Changed: the county hears the city's root, which differs, and sends its summaries
        // of the units from the root to itself: it waits for their answers.
        let changed = |k: &mut Engine, c: &mut Engine, rec| {
            let sk: HashMap<_, _> = k.disconnect(&uc).into_iter().collect();
            let sc: HashMap<_, _> = c.disconnect(&uk).into_iter().collect();
            write(k, "c01/k01/t05/v005", rec, "New");
            let mine = addressed(&uk, &uc, k.connect(&uc, sk));
            let mut theirs = c.connect(&uk, sc);
            let root = theirs
                .iter()
                .position(|m| matches!(m, Msg::Root(_)))
                .expect("a root");
            let step = k.receive(&uc, theirs.remove(root));
            let summaries: Vec<Msg> = step.send.into_iter().map(|(_, m)| m).collect();
            assert!(summaries.iter().any(|m| matches!(m, Msg::Summary(_))));
            assert_eq!(waits(k, &uc), (false, true), "summaries unanswered");
            (mine, theirs, summaries)
        };
        let (mine, theirs, mut summaries) = changed(&mut k, &mut c, 9999);
        let mut q = mine;
        q.extend(addressed(&uc, &uk, theirs));
        // The city answers the first summary: it waits for the county's next word (its
        // answer could be lost), which any frame of the county's ends.
        let first = summaries.remove(0);
        assert!(matches!(first, Msg::Summary(_)), "{first:?}");
        let step = c.receive(&uk, first);
        assert!(step.send.iter().any(|(_, m)| matches!(m, Msg::Summary(_))));
        assert!(c.peers[&uk].answered, "an answer not followed up");
        // Probes never reach the engine (the link drops them); one that did would say
        // nothing of the answer. The county's next frame does.
        let _ = c.receive(&uk, Msg::Probe);
        assert!(c.peers[&uk].answered);
        q.extend(addressed(
            &uc,
            &uk,
            step.send.into_iter().map(|(_, m)| m).collect(),
        ));
        q.extend(addressed(&uk, &uc, summaries));
        assert!(pump(&mut k, &mut c, q).is_empty());
        assert_eq!(
            (waits(&k, &uc), waits(&c, &uk)),
            ((false, false), (false, false))
        );
        assert!(!c.peers[&uk].answered);
        assert!(names(&c, "c01/k01/t05/v005").contains(&"New".to_string()));
        // Refused instead of answered (whatever the peer's reason): not waited for. A
        // refusal of a document's sync message is not one of a summary.
        let (_, _, _) = changed(&mut k, &mut c, 9998);
        let refusal = |doc| Msg::Reject {
            reason: RejectReason::OutOfScope,
            doc,
            detail: "no".into(),
        };
        let synced = DocId::new(DocKind::Members, u("c01/k01"));
        let p = k.peers.get_mut(&uc).unwrap();
        p.active.insert(synced.clone());
        p.summaries_awaited.insert(u("c01/k01"));
        let _ = k.receive(&uc, refusal(Some(synced)));
        assert_eq!(waits(&k, &uc), (false, true));
        let _ = k.receive(&uc, refusal(None));
        assert_eq!(waits(&k, &uc), (false, false));
    }

    #[test]
    fn one_changed_document_descends_only_its_branch() {
        let (mut k, mut c) = big_pair(500);
        let (uk, uc) = (k.me().clone(), c.me().clone());
        let _ = k.disconnect(&uc);
        let _ = c.disconnect(&uk);
        write(&mut k, "c01/k01/t04/v004", 9999, "Changed Offline");
        let q = connect(&mut k, &mut c);
        let (msgs, bytes, rounds) = pump_counted(&mut k, &mut c, q);
        assert!(names(&c, "c01/k01/t04/v004").contains(&"Changed Offline".to_string()));
        // Root, summaries for c01, c01/k01, its township and the village, then a few sync
        // messages: independent of the 500 documents.
        assert!(msgs <= 20, "{msgs} messages");
        assert!(rounds <= 10, "{rounds} rounds");
        assert!(bytes < 8_000, "{bytes} bytes");
    }

    #[test]
    fn a_document_changed_since_the_last_session_starts_with_the_root_digest() {
        let (mut k, mut c) = big_pair(300);
        let (uk, uc) = (k.me().clone(), c.me().clone());
        let sk: HashMap<_, _> = k.disconnect(&uc).into_iter().collect();
        let sc: HashMap<_, _> = c.disconnect(&uk).into_iter().collect();
        let changed = write(&mut k, "c01/k01/t04/v004", 9999, "Changed Offline");
        // The changed side sends its document's sync message in its first flight; the
        // other side, with nothing changed, only its root digest.
        let first = k.connect(&uc, sk);
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(matches!(first[0], Msg::Root(_)));
        assert!(matches!(&first[1], Msg::Sync { doc, .. } if *doc == changed));
        let theirs = c.connect(&uk, sc);
        assert_eq!(theirs.len(), 1, "{theirs:?}");
        let mut q = addressed(&uk, &uc, first);
        q.extend(addressed(&uc, &uk, theirs));
        let (_, _, rounds) = pump_counted(&mut k, &mut c, q);
        assert!(names(&c, "c01/k01/t04/v004").contains(&"Changed Offline".to_string()));
        assert!(rounds <= 6, "{rounds} rounds");
    }

    /// A document changed since the last session carries its changes in its first message:
    /// the peer holds them before it has answered anything (a round trip sooner than asking
    /// first what it has).
    #[test]
    fn a_changed_document_carries_its_changes_in_its_first_message() {
        let (mut k, mut c) = big_pair(50);
        let (uk, uc) = (k.me().clone(), c.me().clone());
        let sk: HashMap<_, _> = k.disconnect(&uc).into_iter().collect();
        let sc: HashMap<_, _> = c.disconnect(&uk).into_iter().collect();
        write(&mut k, "c01/k01/t04/v004", 9999, "Changed Offline");
        let first = k.connect(&uc, sk);
        let _ = c.connect(&uk, sc);
        for m in first {
            assert!(c.receive(&uk, m).rejected.is_empty());
        }
        assert!(names(&c, "c01/k01/t04/v004").contains(&"Changed Offline".to_string()));
    }

    /// A document of this node's subtree made since the last session with its parent (no
    /// saved state names it) goes whole in the link's first flight, beside the root digest:
    /// the parent holds it before it has answered anything. On a link never up before (no
    /// saved states), and from the parent towards its child, the first flight is the root
    /// digest alone: the digest descent finds what differs.
    #[test]
    fn a_document_made_since_the_last_session_goes_up_in_the_first_flight() {
        let (mut k, mut c) = big_pair(20);
        let (uk, uc) = (k.me().clone(), c.me().clone());
        let sk: HashMap<_, _> = k.disconnect(&uc).into_iter().collect();
        let sc: HashMap<_, _> = c.disconnect(&uk).into_iter().collect();
        register(
            &mut k,
            "c01/k01/t00",
            &["c01/k01/t00/v000", "c01/k01/t00/v900"],
        );
        let fresh = DocId::new(DocKind::Members, u("c01/k01/t00/v900"));
        let made: Vec<String> = (0..50).map(|i| format!("Made Offline {i:03}")).collect();
        for (i, name) in made.iter().enumerate() {
            write(&mut k, "c01/k01/t00/v900", i as u64, name);
        }
        let first = k.connect(&uc, sk);
        assert!(matches!(first[0], Msg::Root(_)), "{first:?}");
        assert!(
            first
                .iter()
                .any(|m| matches!(m, Msg::Sync { doc, .. } if *doc == fresh)),
            "{first:?}"
        );
        let theirs = c.connect(&uk, sc);
        assert_eq!(theirs.len(), 1, "{theirs:?}");
        for m in first {
            let step = c.receive(&uk, m);
            assert!(step.rejected.is_empty(), "{:?}", step.rejected);
        }
        assert_eq!(names(&c, "c01/k01/t00/v900"), made);

        // A first link: nothing saved, nothing assumed.
        let mut k2 = engine("c01/k01", 3);
        let c2 = engine("c01", 4);
        write(&mut k2, "c01/k01/t00/v001", 1, "Seed");
        let first = k2.connect(c2.me(), HashMap::new());
        assert_eq!(first.len(), 1, "{first:?}");
    }

    /// A document made since the last session, which the peer's summary shows it lacks, goes
    /// whole in its first message: the peer holds it after that one message, without first
    /// answering what it has. A write pushed before the peer answers goes alone, not with the
    /// whole document again.
    #[test]
    fn a_document_the_peer_lacks_goes_whole_in_its_first_message() {
        let (mut k, mut c) = big_pair(20);
        let (uk, uc) = (k.me().clone(), c.me().clone());
        let sk: HashMap<_, _> = k.disconnect(&uc).into_iter().collect();
        let sc: HashMap<_, _> = c.disconnect(&uk).into_iter().collect();
        let villages: Vec<String> = (0..20)
            .filter(|i| i % 10 == 0)
            .map(|i| format!("c01/k01/t00/v{i:03}"))
            .chain(["c01/k01/t00/v900".to_string()])
            .collect();
        register(
            &mut k,
            "c01/k01/t00",
            &villages.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let made: Vec<String> = (0..200).map(|i| format!("Made Offline {i:03}")).collect();
        let fresh = DocId::new(DocKind::Members, u("c01/k01/t00/v900"));
        for (i, name) in made.iter().enumerate() {
            write(&mut k, "c01/k01/t00/v900", i as u64, name);
        }
        let mut queue: VecDeque<(UnitId, UnitId, Msg)> = addressed(&uk, &uc, k.connect(&uc, sk))
            .into_iter()
            .chain(addressed(&uc, &uk, c.connect(&uk, sc)))
            .collect();
        let whole = loop {
            let (from, to, msg) = queue.pop_front().expect("the document was never sent");
            let first_of_fresh = match &msg {
                Msg::Sync { doc, data } if doc == &fresh => Some(data.len()),
                _ => None,
            };
            let target = if to == uk { &mut k } else { &mut c };
            let step = target.receive(&from, msg);
            assert!(step.rejected.is_empty(), "{:?}", step.rejected);
            queue.extend(step.send.into_iter().map(|(p, m)| (to.clone(), p, m)));
            if let (Some(len), true) = (first_of_fresh, to == uc) {
                break len;
            }
        };
        assert_eq!(names(&c, "c01/k01/t00/v900"), made);
        // Written before the city's answer arrives: pushed alone.
        write(&mut k, "c01/k01/t00/v900", 9999, "Written Meanwhile");
        let pushed = k.fan_out(&fresh, None);
        let [(_, Msg::Sync { data, .. })] = pushed.as_slice() else {
            panic!("{pushed:?}");
        };
        assert!(
            data.len() * 3 < whole,
            "{} bytes pushed, {whole} whole",
            data.len()
        );
        queue.extend(addressed(
            &uk,
            &uc,
            pushed.into_iter().map(|(_, m)| m).collect(),
        ));
        assert!(pump(&mut k, &mut c, queue.into()).is_empty());
        assert_eq!(names(&c, "c01/k01/t00/v900").len(), made.len() + 1);
        assert!(names(&c, "c01/k01/t00/v900").contains(&"Written Meanwhile".to_string()));
    }

    /// Where automerge would answer with the whole document, the engine makes the same
    /// message and leaves the same state, with the compact form it keeps instead of a new
    /// save: for a peer assumed lacking the document, one that said it holds nothing, a
    /// summary naming shared heads, and a message still unanswered.
    #[test]
    fn a_whole_document_is_answered_as_automerge_would() {
        use automerge::transaction::Transactable as _;
        let mut d = doc::empty(&doc::actor_for(&u("c01/k01/t01/v01"), [1; 8]));
        let mut early = Vec::new();
        for i in 0..40 {
            let mut tx = d.transaction();
            tx.put(automerge::ROOT, format!("k{}", i % 7), i as i64)
                .unwrap();
            tx.commit();
            if i == 9 {
                early = d.get_heads();
            }
        }
        let mut other = d
            .fork()
            .with_actor(doc::actor_for(&u("c01/k01/t01"), [2; 8]));
        other
            .transaction()
            .put(automerge::ROOT, "above", "x")
            .unwrap();
        d.merge(&mut other).unwrap();

        let mut assumed = sync::State::new();
        assert!(assume_lacking(&mut assumed));
        // A peer's first word for a document it holds nothing of.
        let mut told = sync::State::new();
        let nothing = Automerge::new()
            .generate_sync_message(&mut sync::State::new())
            .unwrap();
        d.clone().receive_sync_message(&mut told, nothing).unwrap();
        let mut shared = told.clone();
        shared.shared_heads = early.clone();
        shared.have_responded = true;
        shared.last_sent_heads = d.get_heads();
        // Answered already, and not heard from since.
        let mut unanswered = told.clone();
        d.generate_sync_message(&mut unanswered).unwrap();

        let empty = Automerge::new();
        for (what, doc, state) in [
            ("assumed lacking", &d, assumed.clone()),
            ("told", &d, told),
            ("shared heads", &d, shared),
            ("unanswered", &d, unanswered),
        ] {
            assert!(wants_whole(&state), "{what}");
            let (mut ours, mut theirs) = (state.clone(), state.clone());
            let mine = whole_message(doc, &mut ours, || doc::save(doc));
            let automerge = doc.generate_sync_message(&mut theirs);
            assert_eq!(
                mine.map(sync::Message::encode),
                automerge.map(sync::Message::encode),
                "{what}"
            );
            assert_eq!(ours, theirs, "{what}");
        }
        // A document with no change goes as none, where automerge sends the compact form of
        // nothing (which a peer equally empty answers in kind, back and forth).
        let mut state = assumed.clone();
        assert!(wants_whole(&state));
        let m = whole_message(&empty, &mut state, || panic!("nothing to save")).unwrap();
        assert!(m.changes.is_empty() && m.heads.is_empty());
        // Not for a peer that holds some of it.
        let mut holds = assumed;
        holds.their_heads = Some(early);
        assert!(!wants_whole(&holds));
    }

    /// The compact form kept beside a document is the document as it is now: made once
    /// while it does not change, made again once it has.
    #[test]
    fn the_compact_form_kept_follows_its_document() {
        let mut v = engine("c01/k01/t01/v01", 2);
        let id = write(&mut v, "c01/k01/t01/v01", 1, "First");
        let a = v.saved(&id).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &v.saved(&id).unwrap()));
        write(&mut v, "c01/k01/t01/v01", 2, "Second");
        let b = v.saved(&id).unwrap();
        let heads = v.get(&id).unwrap().doc().unwrap().get_heads();
        assert_eq!(Automerge::load(&b).unwrap().get_heads(), heads);
        assert_ne!(Automerge::load(&a).unwrap().get_heads(), heads);
        // A change from a peer too.
        let mut t = engine("c01/k01/t01", 1);
        link(&mut t, &mut v);
        let kept = t.saved(&id).unwrap();
        write(&mut v, "c01/k01/t01/v01", 3, "Third");
        let out = v.fan_out(&id, None).into_iter().map(|(_, m)| m).collect();
        let pushed = addressed(v.me(), t.me(), out);
        assert!(pump(&mut t, &mut v, pushed).is_empty());
        let now = t.saved(&id).unwrap();
        assert!(!std::sync::Arc::ptr_eq(&kept, &now));
        assert_eq!(
            Automerge::load(&now).unwrap().get_heads(),
            v.get(&id).unwrap().doc().unwrap().get_heads()
        );
    }

    /// A township and its village linked, the village's register of `n` members (one change
    /// each) held by both.
    fn linked_with_members(n: u64) -> (Engine, Engine, DocId) {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        for i in 0..n {
            write(&mut v, "c01/k01/t01/v01", i, &format!("Member {i:02}"));
        }
        link(&mut t, &mut v);
        (t, v, DocId::new(DocKind::Members, u("c01/k01/t01/v01")))
    }

    /// A peer saying again and again that it holds nothing of a document, a few bytes each
    /// time (refusing it in between or not), is sent it whole a few times, then refused it
    /// for the session, which counts as a refusal of its message; the copies it got were one
    /// compact form, made once.
    #[test]
    fn a_peer_asking_again_and_again_for_a_document_is_refused_it_for_the_session() {
        let (mut t, mut v, id) = linked_with_members(50);
        let v01 = v.me().clone();
        let nothing = Automerge::new()
            .generate_sync_message(&mut sync::State::new())
            .unwrap()
            .encode();
        let (mut copies, mut counted) = (Vec::new(), Vec::new());
        let mut refused = None;
        for i in 0..MAX_RESENDS + 5 {
            // Every other time the peer first refuses what it was sent, which makes this side
            // start the document over: that forgets what was sent, not the count.
            if i % 2 == 1 {
                let step = t.receive(
                    &v01,
                    Msg::Reject {
                        reason: RejectReason::ApplyFailed,
                        doc: Some(id.clone()),
                        detail: "again".into(),
                    },
                );
                assert!(step.send.is_empty(), "{:?}", step.send);
            }
            let step = t.receive(
                &v01,
                Msg::Sync {
                    doc: id.clone(),
                    data: nothing.clone(),
                },
            );
            counted.extend(step.rejected);
            for (_, m) in step.send {
                match m {
                    Msg::Sync { data, .. } => {
                        let m = sync::Message::decode(&data).unwrap();
                        copies.extend(m.changes.iter().map(<[u8]>::to_vec));
                    }
                    Msg::Reject { reason, detail, .. } => {
                        assert!(refused.is_none(), "refused twice");
                        refused = Some((reason, detail));
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        // The first answer, then MAX_RESENDS more; the next is refused, then silence.
        assert_eq!(copies.len(), MAX_RESENDS as usize + 1);
        assert!(copies.iter().all(|c| c == &copies[0]));
        assert_eq!(&copies[0][..], &*t.saved(&id).unwrap());
        let (reason, detail) = refused.expect("never refused");
        assert_eq!(reason, RejectReason::ApplyFailed);
        assert!(detail.contains("same changes"), "{detail}");
        // Counted as the peer's refused message, as the store counts any.
        let [r] = counted.as_slice() else {
            panic!("{counted:?}")
        };
        assert_eq!(
            (r.reason, r.doc.as_ref()),
            (RejectReason::TooLarge, Some(&id))
        );
        // The next session starts afresh.
        let q = reconnect(&mut t, &mut v);
        assert!(pump(&mut t, &mut v, q).is_empty());
        assert_eq!(names(&t, "c01/k01/t01/v01").len(), 50);
    }

    /// A peer resetting what it was sent, again and again, while claiming most of the
    /// document, is sent the rest (changes, not the whole) a few times, then refused the
    /// document for the session.
    #[test]
    fn a_peer_resetting_again_and_again_is_refused_the_document_for_the_session() {
        let (mut t, _v, id) = linked_with_members(30);
        let v01 = u("c01/k01/t01/v01");
        let held = t.get(&id).unwrap().doc().unwrap().get_changes_meta(&[]);
        let hashes: Vec<ChangeHash> = held.iter().map(|c| c.hash).collect();
        let mut flags = sync::MessageFlags::new();
        flags.set(sync::MessageFlags::SYNC_RESET);
        flags.set(sync::MessageFlags::SUPPORTS_SYNC_RESET);
        let claim = sync::Message {
            heads: vec![hashes[24]],
            need: Vec::new(),
            have: vec![sync::Have {
                last_sync: Vec::new(),
                bloom: sync::BloomFilter::from_hashes(hashes[..25].iter()),
            }],
            changes: Vec::<Vec<u8>>::new().into(),
            flags: Some(flags),
            version: sync::MessageVersion::V2,
        }
        .encode();
        let (mut answers, mut refused, mut counted) = (0, 0, 0);
        for _ in 0..MAX_RESENDS + 5 {
            let step = t.receive(
                &v01,
                Msg::Sync {
                    doc: id.clone(),
                    data: claim.clone(),
                },
            );
            counted += step.rejected.len();
            for (_, m) in step.send {
                match m {
                    Msg::Sync { data, .. } => {
                        let m = sync::Message::decode(&data).unwrap();
                        if !m.changes.is_empty() {
                            assert!(!m.changes.iter().any(carries_document));
                            answers += 1;
                        }
                    }
                    Msg::Reject { .. } => refused += 1,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!((answers, refused, counted), (MAX_RESENDS + 1, 1, 1));
    }

    /// A document new to a node, taken from one neighbour, goes on to its other neighbours
    /// whole in its first message: the county holds a village's new register after the
    /// township's one message, without first being asked what it has.
    #[test]
    fn a_document_new_here_goes_on_whole_in_its_first_message() {
        let vu = "c01/k01/t01/v01";
        let (mut t, mut v, id) = township_and_village();
        let mut k = engine("c01/k01", 3);
        register(&mut k, "c01/k01", &["c01/k01/t01"]);
        link(&mut k, &mut t);
        write(&mut v, vu, 1, "First Member");
        let (uv, ut) = (v.me().clone(), t.me().clone());
        let out = v.fan_out(&id, None).into_iter().map(|(_, m)| m).collect();
        assert!(pump(&mut t, &mut v, addressed(&uv, &ut, out)).is_empty());
        assert_eq!(names(&t, vu), ["First Member"]);
        let up = t.fan_out(&id, Some(&uv));
        let [(to, Msg::Sync { data, .. })] = up.as_slice() else {
            panic!("{up:?}");
        };
        assert_eq!(to, k.me());
        let m = sync::Message::decode(data).unwrap();
        assert!(m.changes.iter().any(carries_document), "{m:?}");
        let step = k.receive(&ut, up[0].1.clone());
        assert!(step.rejected.is_empty(), "{:?}", step.rejected);
        assert_eq!(names(&k, vu), ["First Member"]);
    }

    /// A register made offline, which the parent is taken to lack, goes up whole from its
    /// compact form as stored, without being loaded: the parent holds it after that one
    /// message, and the child loads it only when the parent's answer comes.
    #[test]
    fn a_document_the_parent_lacks_goes_up_without_being_loaded() {
        let (mut t, mut v, id) = township_and_village();
        let (ut, uv) = (t.me().clone(), v.me().clone());
        let st: HashMap<_, _> = t.disconnect(&uv).into_iter().collect();
        let sv: HashMap<_, _> = v.disconnect(&ut).into_iter().collect();
        let made: Vec<String> = (0..30).map(|i| format!("Made Offline {i:02}")).collect();
        for (i, name) in made.iter().enumerate() {
            write(&mut v, "c01/k01/t01/v01", i as u64, name);
        }
        // Stored as the store's first commit stores it, then evicted.
        let d = v.get(&id).unwrap().doc().unwrap();
        let stored = (d.get_heads(), doc::save(d));
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (bytes, counted) = (stored.1.clone(), reads.clone());
        v.set_source(Box::new(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Automerge::load(&bytes).unwrap())
        }));
        let wanted = id.clone();
        v.set_compact_source(Box::new(move |asked| {
            (*asked == wanted).then(|| stored.clone())
        }));
        assert!(v.evict_to(0, |_, _| false) > 0);
        let first = v.connect(&ut, sv);
        assert!(
            first
                .iter()
                .any(|m| matches!(m, Msg::Sync { doc, .. } if *doc == id)),
            "{first:?}"
        );
        assert!(v.get(&id).unwrap().doc().is_none(), "loaded to be sent");
        let mut queue = addressed(&ut, &uv, t.connect(&uv, st));
        for m in first {
            let step = t.receive(&uv, m);
            assert!(step.rejected.is_empty(), "{:?}", step.rejected);
            queue.extend(step.send.into_iter().map(|(p, m)| (ut.clone(), p, m)));
        }
        assert_eq!(names(&t, "c01/k01/t01/v01"), made);
        assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert!(pump(&mut t, &mut v, queue).is_empty());
        // Both sides agree, and a write made after goes up as any other.
        write(&mut v, "c01/k01/t01/v01", 99, "Written After");
        let out = v.fan_out(&id, None).into_iter().map(|(_, m)| m).collect();
        assert!(pump(&mut t, &mut v, addressed(&uv, &ut, out)).is_empty());
        assert_eq!(names(&t, "c01/k01/t01/v01").len(), made.len() + 1);
        assert_eq!(
            t.get(&id).unwrap().doc().unwrap().get_heads(),
            v.get(&id).unwrap().doc().unwrap().get_heads()
        );
    }

    /// A document whose sync message would pass a frame goes in parts of at most
    /// `MAX_PART` bytes of changes, in causal order, and the peer ends with all of it,
    /// nothing refused: sent whole (the peer lacks it), then as a backlog of changes.
    #[test]
    fn a_document_too_large_for_one_message_goes_in_parts() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        link(&mut t, &mut v);
        let (ut, uv) = (t.me().clone(), v.me().clone());
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        // Text that deflate barely shrinks, 64 KiB a change.
        let mut noise = move || -> String {
            (0..64 << 10)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    char::from(b'!' + (seed % 90) as u8)
                })
                .collect()
        };
        let id = write(&mut v, "c01/k01/t01/v01", 0, "First");
        let note = |v: &mut Engine, key: String, text: String| {
            let (d, _) = v.local_doc(DocMeta::new(id.clone())).unwrap();
            d.transact::<_, _, automerge::AutomergeError>(|tx| {
                automerge::transaction::Transactable::put(tx, automerge::ROOT, key, text)?;
                Ok(())
            })
            .unwrap();
        };
        for i in 0..8 {
            note(&mut v, format!("note {i}"), noise());
        }
        // The village's push of the document, delivered until quiet; the sizes of the
        // document's messages from the village.
        let push = |t: &mut Engine, v: &mut Engine| {
            let pushed = v.fan_out(&id, None).into_iter().map(|(_, m)| m).collect();
            let mut queue: VecDeque<_> = addressed(&uv, &ut, pushed).into();
            let mut sizes = Vec::new();
            while let Some((from, to, msg)) = queue.pop_front() {
                if let (true, Msg::Sync { doc, data }) = (from == uv, &msg)
                    && *doc == id
                {
                    sizes.push(data.len());
                }
                let target = if to == ut { &mut *t } else { &mut *v };
                let step = target.receive(&from, msg);
                assert!(step.rejected.is_empty(), "{:?}", step.rejected);
                queue.extend(step.send.into_iter().map(|(p, m)| (to.clone(), p, m)));
            }
            sizes
        };
        let heads = |e: &Engine| e.get(&id).and_then(|d| d.doc().map(Automerge::get_heads));
        // At least two large parts, none past the part's size.
        let in_parts = |sizes: &[usize], what: &str| {
            let big = sizes.iter().filter(|n| **n > MAX_PART / 4).count();
            assert!(big >= 2, "{what} in parts: {sizes:?}");
            assert!(sizes.iter().all(|n| *n <= MAX_PART + 1024), "{sizes:?}");
        };
        let sizes = push(&mut t, &mut v);
        in_parts(&sizes, "the whole document");
        assert_eq!(heads(&t), heads(&v));
        // More than a third of the document's changes: automerge sends it whole, and in
        // parts only what the peer lacks goes, not the notes both hold.
        for i in 1..30 {
            write(&mut v, "c01/k01/t01/v01", i, &format!("Member {i}"));
        }
        let sizes = push(&mut t, &mut v);
        assert!(
            sizes.iter().sum::<usize>() < MAX_PART / 4,
            "only the new members: {sizes:?}"
        );
        assert_eq!(heads(&t), heads(&v));
        // A backlog under a third of the document's changes goes as changes, in parts too.
        for i in 8..14 {
            note(&mut v, format!("note {i}"), noise());
        }
        let sizes = push(&mut t, &mut v);
        in_parts(&sizes, "the backlog");
        assert_eq!(heads(&t), heads(&v));
        assert_eq!(names(&t, "c01/k01/t01/v01").len(), 30);
    }

    /// A single change too large for any message is not sent: the document waits for the
    /// next session (the peer told of a failure on this side, which frees its slot), and
    /// the link's other documents sync.
    #[test]
    fn a_change_too_large_for_a_frame_stops_its_document_not_the_link() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        link(&mut t, &mut v);
        let (ut, uv) = (t.me().clone(), v.me().clone());
        let id = write(&mut v, "c01/k01/t01/v01", 0, "First");
        assert!(push_among(&mut [&mut t, &mut v], 1, &id).is_empty());
        let (d, _) = v.local_doc(DocMeta::new(id.clone())).unwrap();
        // Text deflate barely shrinks, so that neither the change nor the document whole
        // fits a message.
        put_too_large(d);
        let pushed = v.fan_out(&id, None);
        let [(to, Msg::Reject { reason, doc, .. })] = pushed.as_slice() else {
            let sizes: Vec<u64> = pushed.iter().map(|(_, m)| wire::weight(m)).collect();
            panic!("expected one refusal, got messages of {sizes:?} bytes");
        };
        assert_eq!(
            (to, *reason, doc.as_ref()),
            (&ut, RejectReason::ApplyFailed, Some(&id))
        );
        let q = addressed(&uv, &ut, pushed.into_iter().map(|(_, m)| m).collect());
        assert!(pump(&mut t, &mut v, q).is_empty());
        // Frozen for the session: a later write of it is not pushed...
        write(&mut v, "c01/k01/t01/v01", 1, "Second");
        assert!(v.fan_out(&id, None).is_empty());
        assert_eq!(names(&t, "c01/k01/t01/v01"), vec!["First".to_string()]);
        // ...while another document of the link still syncs.
        let profile = register(&mut v, "c01/k01/t01/v01", &[]);
        assert!(push_among(&mut [&mut t, &mut v], 1, &profile).is_empty());
        assert!(t.get(&profile).is_some_and(|d| d.doc().is_some()));
    }

    /// Put in `d` a text no sync message can carry: printable characters from a xorshift,
    /// which DEFLATE barely shrinks, past what a message part holds inflated.
    fn put_too_large(d: &mut Automerge) {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let huge: String = (0..MAX_PART_INFLATED + 1)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b'!' + (seed % 90) as u8)
            })
            .collect();
        d.transact::<_, _, automerge::AutomergeError>(|tx| {
            automerge::transaction::Transactable::put(tx, automerge::ROOT, "huge", huge)?;
            Ok(())
        })
        .unwrap();
    }

    /// A live push that gives a document up while it holds a slot (its answer still owed)
    /// frees the slot: the peer, refused, answers nothing more, and the slot held would keep
    /// the link's progress in flight (probes) and one fewer document reconciling at once.
    #[test]
    fn a_push_that_gives_a_document_up_frees_its_slot() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        link(&mut t, &mut v);
        let ut = t.me().clone();
        let id = write(&mut v, "c01/k01/t01/v01", 0, "First");
        assert!(push_among(&mut [&mut t, &mut v], 1, &id).is_empty());
        let saved: HashMap<_, _> = v.disconnect(&ut).into_iter().collect();
        // Written since the last session: the link starts it at once, and its first message
        // is not answered yet.
        write(&mut v, "c01/k01/t01/v01", 1, "Second");
        let first = v.connect(&ut, saved);
        assert!(
            first
                .iter()
                .any(|m| matches!(m, Msg::Sync { doc, .. } if *doc == id))
        );
        assert_eq!(v.progress(&ut).unwrap().in_flight, 1);
        // Then a change no message can carry: the push refuses the document.
        let (d, _) = v.local_doc(DocMeta::new(id.clone())).unwrap();
        put_too_large(d);
        let pushed = v.fan_out(&id, None);
        assert!(
            matches!(pushed.as_slice(), [(_, Msg::Reject { .. })]),
            "{} messages",
            pushed.len()
        );
        assert_eq!(
            v.progress(&ut).unwrap().in_flight,
            0,
            "the slot is still held"
        );
    }

    /// A peer that no longer holds what both sides shared last session (restored from an
    /// older backup) still gets everything: the changes sent on that assumption wait for
    /// what they depend on, which the exchange then sends.
    #[test]
    fn a_peer_behind_the_last_session_still_catches_up() {
        let (mut k, mut c) = big_pair(20);
        let (uk, uc) = (k.me().clone(), c.me().clone());
        let _ = k.disconnect(&uc);
        let _ = c.disconnect(&uk);
        // The city as a backup holds it: synced up to here.
        let mut old = engine("c01", 7);
        link(&mut k, &mut old);
        let so: HashMap<_, _> = old.disconnect(&uk).into_iter().collect();
        let _ = k.disconnect(&uc);
        // A later session with the live city, whose shared heads the village side saves.
        write(&mut k, "c01/k01/t04/v004", 9998, "Second");
        link(&mut k, &mut c);
        let sk: HashMap<_, _> = k.disconnect(&uc).into_iter().collect();
        let _ = c.disconnect(&uk);
        write(&mut k, "c01/k01/t04/v004", 9997, "Third");
        // The restored city comes back in the live one's place.
        let mut q = addressed(&uk, &uc, k.connect(&uc, sk));
        q.extend(addressed(&uc, &uk, old.connect(&uk, so)));
        assert!(pump(&mut k, &mut old, q).is_empty());
        let got = names(&old, "c01/k01/t04/v004");
        for want in ["Seed", "Second", "Third"] {
            assert!(got.contains(&want.to_string()), "{got:?}");
        }
    }

    /// A link opened with many changed documents starts them in pieces, each document's
    /// first message made once, however the peer's messages interleave; all converge.
    #[test]
    fn changed_documents_of_an_opened_link_start_in_pieces() {
        let (mut k, mut c) = big_pair(300);
        let (uk, uc) = (k.me().clone(), c.me().clone());
        let sk: HashMap<_, _> = k.disconnect(&uc).into_iter().collect();
        let sc: HashMap<_, _> = c.disconnect(&uk).into_iter().collect();
        let changed: Vec<DocId> = (0..100)
            .map(|i| {
                write(
                    &mut k,
                    &format!("c01/k01/t{:02}/v{i:03}", i % 10),
                    9000,
                    "Moved",
                )
            })
            .collect();
        let first = k.open_link(&uc, sk);
        assert!(matches!(first.as_slice(), [Msg::Root(_)]), "{first:?}");
        assert!(k.has_unstarted());
        let p = k.progress(&uc).unwrap();
        assert_eq!(
            (p.in_flight, p.queued),
            (MAX_IN_FLIGHT, 100 - MAX_IN_FLIGHT)
        );
        // A deadline already passed still starts one document.
        let one = k.start_unstarted(std::time::Instant::now());
        assert_eq!(one.len(), 1, "{one:?}");
        let docs_of = |msgs: &[(UnitId, Msg)]| -> Vec<DocId> {
            msgs.iter()
                .filter_map(|(_, m)| match m {
                    Msg::Sync { doc, .. } => Some(doc.clone()),
                    _ => None,
                })
                .collect()
        };
        let mut started = docs_of(&one);
        // A document started otherwise meanwhile (here a live push of it) is not started
        // again.
        let next = k.peers[&uc].unstarted[0].clone();
        assert!(changed.contains(&next));
        let pushed = k.fan_out(&next, None);
        assert_eq!(docs_of(&pushed), vec![next]);
        started.extend(docs_of(&pushed));
        let mut q = addressed(&uk, &uc, first);
        q.extend(addressed(&uc, &uk, c.connect(&uk, sc)));
        let rest =
            k.start_unstarted(std::time::Instant::now() + std::time::Duration::from_secs(60));
        assert!(!k.has_unstarted());
        started.extend(docs_of(&rest));
        assert_eq!(started.len(), MAX_IN_FLIGHT, "each in flight started once");
        let unique: HashSet<&DocId> = started.iter().collect();
        assert_eq!(unique.len(), MAX_IN_FLIGHT);
        q.extend(
            one.into_iter()
                .chain(pushed)
                .chain(rest)
                .map(|(to, m)| (uk.clone(), to, m)),
        );
        pump_counted(&mut k, &mut c, q);
        for i in 0..100 {
            let owner = format!("c01/k01/t{:02}/v{i:03}", i % 10);
            assert!(names(&c, &owner).contains(&"Moved".to_string()), "{owner}");
        }
    }

    #[test]
    fn a_child_adds_only_units_its_tree_registers() {
        let mut k = engine("c01/k01", 1);
        let mut t = engine("c01/k01/t01", 2);
        register(&mut t, "c01/k01/t01", &["c01/k01/t01/v01"]);
        write(&mut t, "c01/k01/t01/v01", 1, "Registered Village");
        write(&mut t, "c01/k01/t01/v02", 2, "Unregistered Village");
        let q = connect(&mut t, &mut k);
        // Not an offence: nothing is counted as rejected on either side.
        assert!(pump(&mut t, &mut k, q).is_empty());
        assert_eq!(names(&k, "c01/k01/t01/v01"), vec!["Registered Village"]);
        let v02 = DocId::new(DocKind::Members, u("c01/k01/t01/v02"));
        assert!(
            k.get(&v02).is_none(),
            "an unregistered unit's document was created"
        );

        // Live push of a further write is set aside too, and the pushing side's slot freed.
        write(&mut t, "c01/k01/t01/v02", 3, "Still Unregistered");
        let q: Vec<_> = t
            .fan_out(&v02, None)
            .into_iter()
            .map(|(to, m)| (u("c01/k01/t01"), to, m))
            .collect();
        assert_eq!(q.len(), 1);
        assert!(pump(&mut t, &mut k, q).is_empty());
        assert!(k.get(&v02).is_none());
        assert_eq!(t.progress(k.me()).unwrap().in_flight, 0);
        assert_eq!(k.progress(t.me()).unwrap().unregistered, 1);

        // Once the township registers v02, the county asks for its documents in the same
        // session and gets every change, including those it set aside.
        let profile = register(
            &mut t,
            "c01/k01/t01",
            &["c01/k01/t01/v01", "c01/k01/t01/v02"],
        );
        let q: Vec<_> = t
            .fan_out(&profile, None)
            .into_iter()
            .map(|(to, m)| (u("c01/k01/t01"), to, m))
            .collect();
        assert!(pump(&mut t, &mut k, q).is_empty());
        assert_eq!(
            names(&k, "c01/k01/t01/v02"),
            vec!["Still Unregistered", "Unregistered Village"]
        );
        assert_eq!(k.progress(t.me()).unwrap().in_flight, 0);
        assert_eq!(t.progress(k.me()).unwrap().in_flight, 0);
        assert_eq!(k.progress(t.me()).unwrap().unregistered, 0);
    }

    /// Write `fields` (text values) to record `rec` of `owner`'s document of `kind` at `e`:
    /// created when `create`, else updated. Returns the document.
    fn write_fields(
        e: &mut Engine,
        kind: DocKind,
        owner: &str,
        rec: u64,
        create: bool,
        fields: &[(&str, &str)],
    ) -> DocId {
        let fields: grassroots_schema::Fields = fields
            .iter()
            .map(|(k, v)| (k.to_string(), grassroots_schema::Value::Text(v.to_string())))
            .collect();
        write_record(e, kind, owner, rec, create, &fields)
    }

    /// [`write_fields`] with any values.
    fn write_record(
        e: &mut Engine,
        kind: DocKind,
        owner: &str,
        rec: u64,
        create: bool,
        fields: &grassroots_schema::Fields,
    ) -> DocId {
        let meta = DocMeta::new(DocId::new(kind, u(owner)));
        let id = meta.id.clone();
        let (d, _) = e.local_doc(meta).unwrap();
        let rec = RecordId::from_u64(rec);
        let w = if create {
            doc::RecordWrite::Create(rec, fields, None)
        } else {
            doc::RecordWrite::Update(rec, fields, None)
        };
        let spec = grassroots_schema::entity(kind).unwrap();
        let results = doc::apply_record_writes(d, spec, &[w]).unwrap();
        assert!(results.iter().all(Result::is_ok));
        id
    }

    /// Record 1 of `unit`'s complaints, filed and handled by `unit` (written at `e`).
    fn file_complaint(e: &mut Engine, unit: &str) -> DocId {
        write_fields(
            e,
            DocKind::Complaints,
            unit,
            1,
            true,
            &[
                ("subject", "Road"),
                ("body", "Potholes"),
                ("filedOn", "2026-01-02"),
                ("dueOn", "2026-01-20"),
                ("status", "open"),
            ],
        )
    }

    /// Set `fields` of record 1 of `unit`'s complaints at `e`.
    fn update_complaint(e: &mut Engine, unit: &str, fields: &[(&str, &str)]) {
        write_fields(e, DocKind::Complaints, unit, 1, false, fields);
    }

    /// The value of `field` of record `rec` in `id` at `e`.
    fn field_of(e: &Engine, id: &DocId, rec: u64, field: &str) -> Option<String> {
        let d = e.get(id)?.doc()?;
        let (_, obj) = d
            .get(automerge::ROOT, RecordId::from_u64(rec).to_string())
            .ok()??;
        match d.get(&obj, field).ok()?? {
            (automerge::Value::Scalar(s), _) => s.as_str().map(str::to_owned),
            _ => None,
        }
    }

    /// Deliver `id`'s live push from `from` to `to` (its only peer) and the exchange it
    /// starts, until quiet.
    fn push(from: &mut Engine, to: &mut Engine, id: &DocId) -> Vec<Rejection> {
        push_among(&mut [from, to], 0, id)
    }

    /// [`pump`] among several engines, by the unit each message is addressed to.
    fn pump_among(
        engines: &mut [&mut Engine],
        mut queue: Vec<(UnitId, UnitId, Msg)>,
    ) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        let mut rounds = 0;
        while let Some((from, to, msg)) = (!queue.is_empty()).then(|| queue.remove(0)) {
            rounds += 1;
            assert!(rounds < 10_000, "did not settle");
            let target = engines
                .iter_mut()
                .find(|e| *e.me() == to)
                .unwrap_or_else(|| panic!("no engine for {to}"));
            let step = target.receive(&from, msg);
            queue.extend(step.send.into_iter().map(|(p, m)| (to.clone(), p, m)));
            rejected.extend(step.rejected);
        }
        rejected
    }

    /// `id`'s live push from `engines[from]` to its peers among `engines`, until quiet.
    fn push_among(engines: &mut [&mut Engine], from: usize, id: &DocId) -> Vec<Rejection> {
        let me = engines[from].me().clone();
        let q = engines[from]
            .fan_out(id, None)
            .into_iter()
            .map(|(p, m)| (me.clone(), p, m))
            .collect();
        pump_among(engines, q)
    }

    /// A township and its village, linked, and a complaint the village filed and answered
    /// itself (its own supervisory fields), synced to the township.
    fn complaint_answered_below() -> (Engine, Engine, &'static str, DocId) {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        let vu = "c01/k01/t01/v01";
        link(&mut t, &mut v);
        let complaints = file_complaint(&mut v, vu);
        update_complaint(&mut v, vu, &[("response", "Looking")]);
        assert!(push(&mut v, &mut t, &complaints).is_empty());
        (t, v, vu, complaints)
    }

    #[test]
    fn supervisory_and_review_fields_are_checked_at_every_hop() {
        let (mut t, mut v, vu, complaints) = complaint_answered_below();
        assert_eq!(
            field_of(&t, &complaints, 1, "response").as_deref(),
            Some("Looking")
        );

        // The township takes it over; from then on the village may not close it.
        update_complaint(&mut t, vu, &[("handler", "c01/k01/t01")]);
        assert!(push(&mut t, &mut v, &complaints).is_empty());
        update_complaint(&mut v, vu, &[("status", "CLOSED")]);
        let r = push(&mut v, &mut t, &complaints);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].reason, RejectReason::Unauthorised);
        assert_eq!(
            field_of(&t, &complaints, 1, "status").as_deref(),
            Some("open")
        );
        // Plain fields of the same record still come from the village.
        let mut v2 = engine(vu, 3);
        link(&mut t, &mut v2);
        update_complaint(&mut v2, vu, &[("subject", "Road repair")]);
        assert!(push(&mut v2, &mut t, &complaints).is_empty());
        assert_eq!(
            field_of(&t, &complaints, 1, "subject").as_deref(),
            Some("Road repair")
        );

        // A report's review comes only from above.
        let reports = write_fields(
            &mut v2,
            DocKind::Reports,
            vu,
            2,
            true,
            &[("body", "Done"), ("review", "ACCEPTED")],
        );
        let r = push(&mut v2, &mut t, &reports);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].reason, RejectReason::Unauthorised);
        assert!(
            t.get(&reports)
                .is_none_or(|e| e.doc().unwrap().get_heads().is_empty())
        );
        let mut v3 = engine(vu, 4);
        link(&mut t, &mut v3);
        write_fields(&mut v3, DocKind::Reports, vu, 3, true, &[("body", "Done")]);
        assert!(push(&mut v3, &mut t, &reports).is_empty());
        write_fields(
            &mut t,
            DocKind::Reports,
            vu,
            3,
            false,
            &[("review", "ACCEPTED")],
        );
        assert!(push(&mut t, &mut v3, &reports).is_empty());
        assert_eq!(
            field_of(&v3, &reports, 3, "review").as_deref(),
            Some("ACCEPTED")
        );
    }

    #[test]
    fn a_clearing_and_a_handover_above_outrank_concurrent_writes_below() {
        let (mut t, mut v, vu, complaints) = complaint_answered_below();
        let spec = grassroots_schema::entity(DocKind::Complaints).unwrap();
        let read = |e: &Engine| {
            doc::read_record(
                e.get(&complaints).unwrap().doc().unwrap(),
                spec,
                &u(vu),
                RecordId::from_u64(1),
            )
            .unwrap()
        };
        let text = |e: &Engine, f: &str| read(e).text(f).map(str::to_owned);

        // The village (handling it) answers while the township, above it, clears the
        // answer: the clearing is a value of its own, and the township's ranks higher.
        update_complaint(&mut v, vu, &[("response", "Fixed")]);
        let null = [("response".to_owned(), grassroots_schema::Value::Null)].into();
        write_record(&mut t, DocKind::Complaints, vu, 1, false, &null);
        let r = push(&mut v, &mut t, &complaints);
        assert!(r.is_empty(), "{r:?}");
        let r = push(&mut t, &mut v, &complaints);
        assert!(r.is_empty(), "{r:?}");
        for e in [&t, &v] {
            assert_eq!(text(e, "response"), None, "at {}", e.me());
        }

        // The village closes it while the township takes it over (the store writes the
        // status with the handler): the handover's status stands at both ends.
        update_complaint(&mut v, vu, &[("status", "closed")]);
        update_complaint(
            &mut t,
            vu,
            &[("handler", "c01/k01/t01"), ("status", "escalated")],
        );
        assert!(push(&mut v, &mut t, &complaints).is_empty());
        assert!(push(&mut t, &mut v, &complaints).is_empty());
        for e in [&t, &v] {
            assert_eq!(
                text(e, "status").as_deref(),
                Some("escalated"),
                "at {}",
                e.me()
            );
            assert_eq!(read(e).handler(), u("c01/k01/t01"));
        }

        // Handing it back to its owner is a null handler, which every hop takes (the store
        // adds the status that goes with it).
        let back = spec.with_update_defaults(
            &u(vu),
            &u("c01/k01/t01"),
            [("handler".to_owned(), grassroots_schema::Value::Null)].into(),
        );
        write_record(&mut t, DocKind::Complaints, vu, 1, false, &back);
        assert!(push(&mut t, &mut v, &complaints).is_empty());
        assert_eq!(read(&v).handler(), u(vu));
        assert_eq!(text(&v, "status").as_deref(), Some("open"));
    }

    #[test]
    fn a_fresh_parent_catches_up_with_bounded_concurrency() {
        // big_pair already synced 300 documents to an empty city through the queue; check
        // it is all there, and that both sides agree on every document's heads.
        let (k, c) = big_pair(300);
        for e in k.docs() {
            assert_eq!(
                c.get(&e.meta.id).map(|d| d.doc().unwrap().get_heads()),
                Some(e.doc().unwrap().get_heads()),
                "{}",
                e.meta.id
            );
        }
        // Every slot was freed when its reconciliation ended, on both sides (a starter
        // whose last message only confirmed equal heads used to keep its slot).
        for (e, peer) in [(&k, c.me()), (&c, k.me())] {
            let p = e.progress(peer).unwrap();
            assert_eq!((p.in_flight, p.queued), (0, 0), "at {}", e.me());
        }
    }

    #[test]
    fn writes_from_old_heads_do_not_outrank_the_line_above() {
        use automerge::transaction::Transactable as _;
        let mut t = engine("c01/k01/t01", 2);
        let mut v = engine("c01/k01/t01/v01", 3);
        let vu = "c01/k01/t01/v01";
        register(&mut t, "c01/k01/t01", &[vu]);
        link(&mut t, &mut v);
        let complaints = file_complaint(&mut v, vu);
        assert!(push(&mut v, &mut t, &complaints).is_empty());
        let filed = v.get(&complaints).unwrap().doc().unwrap().clone();
        update_complaint(&mut t, vu, &[("handler", "c01/k01/t01")]);
        assert!(push(&mut t, &mut v, &complaints).is_empty());
        let spec = grassroots_schema::entity(DocKind::Complaints).unwrap();
        let rec = RecordId::from_u64(1);
        let handler = |e: &Engine| {
            doc::read_record(
                e.get(&complaints).unwrap().doc().unwrap(),
                spec,
                &u(vu),
                rec,
            )
            .unwrap()
            .handler()
        };

        // A village writing from the heads before the escalation, with many ops so that
        // automerge's op order would pick its value: its change is concurrent, so it is
        // taken, but the handler the township set stays, by authority.
        let mut stale = engine(vu, 9);
        let mut d = filed.fork().with_actor(doc::actor_for(&u(vu), [9; 8]));
        let (_, obj) = d.get(automerge::ROOT, rec.to_string()).unwrap().unwrap();
        {
            let mut tx = d.transaction();
            for i in 0..200 {
                tx.put(&obj, "subject", format!("Road {i}")).unwrap();
            }
            tx.put(&obj, "handler", vu).unwrap();
            tx.commit();
        }
        stale.insert(DocMeta::new(complaints.clone()), d);
        link(&mut t, &mut stale);
        assert_eq!(
            field_of(&t, &complaints, 1, "handler").as_deref(),
            Some(vu),
            "automerge's own pick is the village's"
        );
        assert_eq!(handler(&t), u("c01/k01/t01"));
        assert_eq!(handler(&stale), u("c01/k01/t01"));

        // Deleting the record from the heads before the escalation is refused: it is judged
        // against the record as the township holds it too.
        let mut eraser = engine(vu, 11);
        let mut d = filed.fork().with_actor(doc::actor_for(&u(vu), [11; 8]));
        {
            let mut tx = d.transaction();
            tx.delete(automerge::ROOT, rec.to_string()).unwrap();
            tx.commit();
        }
        eraser.insert(DocMeta::new(complaints.clone()), d);
        assert_refused(&mut t, &mut eraser, RejectReason::Unauthorised);
        assert_eq!(handler(&t), u("c01/k01/t01"));

        // A second record under the same id, made from before the first existed, is refused.
        let mut forger = engine(vu, 10);
        let (d, _) = forger.local_doc(DocMeta::new(complaints.clone())).unwrap();
        {
            let mut tx = d.transaction();
            let obj = tx
                .put_object(automerge::ROOT, rec.to_string(), automerge::ObjType::Map)
                .unwrap();
            for i in 0..200 {
                tx.put(&obj, "subject", format!("Forged {i}")).unwrap();
            }
            tx.put(&obj, "status", "CLOSED").unwrap();
            tx.commit();
        }
        assert_refused(&mut t, &mut forger, RejectReason::Unauthorised);
        assert_eq!(handler(&t), u("c01/k01/t01"));
        assert_eq!(
            field_of(&t, &complaints, 1, "status").as_deref(),
            Some("open")
        );
        // Neither side keeps the refused document in flight, and neither side resends it.
        assert_eq!(forger.progress(t.me()).unwrap().in_flight, 0);
        assert_eq!(t.progress(forger.me()).unwrap().in_flight, 0);

        // Two records under one id in a single message (to a township that has neither).
        let mut fresh = engine("c01/k01/t01", 12);
        register(&mut fresh, "c01/k01/t01", &[vu]);
        let mut twice = engine(vu, 13);
        let mut a = doc::empty(&doc::actor_for(&u(vu), [13; 8]));
        let mut b = doc::empty(&doc::actor_for(&u(vu), [14; 8]));
        for d in [&mut a, &mut b] {
            let mut tx = d.transaction();
            let obj = tx
                .put_object(automerge::ROOT, rec.to_string(), automerge::ObjType::Map)
                .unwrap();
            tx.put(&obj, "status", "open").unwrap();
            tx.commit();
        }
        a.merge(&mut b).unwrap();
        twice.insert(DocMeta::new(complaints.clone()), a);
        assert_refused(&mut fresh, &mut twice, RejectReason::Unauthorised);
        assert!(
            fresh
                .get(&complaints)
                .is_none_or(|e| e.doc().unwrap().get_heads().is_empty())
        );
    }

    #[test]
    fn a_registration_written_here_starts_what_waited_for_it() {
        let (mut k, mut t, v05) = county_with_unregistered("c01/k01/t01/v05", "Named From Above");
        // The county registers the village in the township's profile itself.
        register(&mut k, "c01/k01/t01", &["c01/k01/t01/v05"]);
        let step = k.registrations_changed(&u("c01/k01/t01"));
        assert!(step.created.contains(&v05));
        let q = step
            .send
            .into_iter()
            .map(|(p, m)| (u("c01/k01"), p, m))
            .collect();
        assert!(pump(&mut k, &mut t, q).is_empty());
        assert_eq!(names(&k, "c01/k01/t01/v05"), vec!["Named From Above"]);
        assert_eq!(k.progress(t.me()).unwrap().unregistered, 0);
    }

    #[test]
    fn records_are_not_erased_or_handed_off_the_line_from_below() {
        use automerge::transaction::Transactable as _;
        let mut k = engine("c01/k01", 1);
        let mut t = engine("c01/k01/t01", 2);
        let mut v = engine("c01/k01/t01/v01", 3);
        let vu = "c01/k01/t01/v01";
        register(&mut k, "c01/k01", &["c01/k01/t01"]);
        register(&mut t, "c01/k01/t01", &[vu]);
        link(&mut k, &mut t);
        link(&mut t, &mut v);
        let complaints = file_complaint(&mut v, vu);
        assert!(push_among(&mut [&mut v, &mut t, &mut k], 0, &complaints).is_empty());
        update_complaint(&mut t, vu, &[("handler", "c01/k01/t01")]);
        // The township's escalation goes down to the village and up to the county, which
        // accepts what the township accepted.
        assert!(push_among(&mut [&mut t, &mut v, &mut k], 0, &complaints).is_empty());
        assert_eq!(
            field_of(&k, &complaints, 1, "handler").as_deref(),
            Some("c01/k01/t01")
        );

        let rec = RecordId::from_u64(1).to_string();
        type Edit<'a> = Box<dyn Fn(&mut Automerge) + 'a>;
        let attempts: [(&str, Edit<'_>); 3] = [
            (
                "deleting it",
                Box::new(|d: &mut Automerge| {
                    let mut tx = d.transaction();
                    tx.delete(automerge::ROOT, rec.as_str()).unwrap();
                    tx.commit();
                }),
            ),
            (
                "replacing it with a closed one",
                Box::new(|d: &mut Automerge| {
                    let mut tx = d.transaction();
                    let obj = tx
                        .put_object(automerge::ROOT, rec.as_str(), automerge::ObjType::Map)
                        .unwrap();
                    tx.put(&obj, "status", "CLOSED").unwrap();
                    tx.commit();
                }),
            ),
            (
                "handing it off the line",
                Box::new(|d: &mut Automerge| {
                    let (_, obj) = d.get(automerge::ROOT, rec.as_str()).unwrap().unwrap();
                    let mut tx = d.transaction();
                    tx.put(&obj, "handler", "c01/k02").unwrap();
                    tx.commit();
                }),
            ),
        ];
        for (what, edit) in attempts {
            // A fresh copy of the village for each attempt (a refused change stays in the
            // history of the node that made it).
            let mut hostile = engine(vu, 9);
            let q = connect(&mut t, &mut hostile);
            assert!(pump_among(&mut [&mut t, &mut hostile, &mut k], q).is_empty());
            let (d, _) = hostile.local_doc(DocMeta::new(complaints.clone())).unwrap();
            edit(d);
            let r = push_among(&mut [&mut hostile, &mut t, &mut k], 0, &complaints);
            assert_eq!(r.len(), 1, "{what}: {r:?}");
            assert_eq!(
                field_of(&t, &complaints, 1, "subject").as_deref(),
                Some("Road"),
                "{what}"
            );
            assert_eq!(
                field_of(&t, &complaints, 1, "handler").as_deref(),
                Some("c01/k01/t01"),
                "{what}"
            );
            assert_eq!(
                field_of(&k, &complaints, 1, "handler").as_deref(),
                Some("c01/k01/t01"),
                "{what} reached the county"
            );
        }
    }

    #[test]
    fn document_chunks_reveal_every_actor_from_their_header() {
        let (a, b) = (u("c01/k01"), u("c01/k02"));
        let mut d = doc::empty(&doc::actor_for(&a, [1; 8]));
        doc::create_member(&mut d, RecordId::from_u64(1), &member("One")).unwrap();
        let mut other = d.fork().with_actor(doc::actor_for(&b, [2; 8]));
        doc::create_member(&mut other, RecordId::from_u64(2), &member("Two")).unwrap();
        d.merge(&mut other).unwrap();
        let saved = d.save();
        let chunks = split_chunks(&saved).unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].0, CHUNK_DOCUMENT);
        let mut units: Vec<UnitId> = document_actors(chunks[0].2)
            .map(|a| ActorTag::unit_of(a.unwrap()).unwrap())
            .collect();
        units.sort();
        assert_eq!(units, vec![a.clone(), b]);
        let id = DocId::new(DocKind::Members, a);
        let (mut spent, mut carried) = (Spent::default(), Carried::default());
        authors_of(&saved, &id, &mut spent, &mut carried).unwrap();
        assert_eq!(carried.authors.len(), 2);
        assert_eq!(carried.listed.len(), 2);
        assert!(spent.inflated > 0 && spent.items > 0);
        assert!(carried.ops > 0 && carried.ops <= spent.items);
        // Truncated or junk chunks are refused, not misread.
        let refused = |bytes: &[u8], spent: &mut Spent| {
            authors_of(bytes, &id, spent, &mut Carried::default()).unwrap_err()
        };
        refused(&saved[..saved.len() - 1], &mut Spent::default());
        refused(b"junk", &mut Spent::default());
        // A message whose changes would inflate past the cap is refused as too large.
        let mut full = Spent {
            inflated: MAX_INFLATED - 1,
            items: 0,
        };
        assert_eq!(refused(&saved, &mut full).reason, RejectReason::TooLarge);
        // As is one whose columns declare more values than the frame may.
        let mut full = Spent {
            inflated: 0,
            items: MAX_ITEMS - 1,
        };
        let r = refused(&saved, &mut full);
        assert!(r.detail.contains("values"), "{r:?}");
        assert_eq!(r.reason, RejectReason::TooLarge);
    }
}
