//! [`Engine`]: the state machine behind every link.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, Automerge, Change, ReadDoc};
use grassroots_schema::{ActorTag, DocId, DocMeta, UnitId, may_author, replicated_at};

use super::wire::{Msg, RejectReason};
use crate::doc;

/// A hosted document and its metadata.
#[derive(Debug)]
pub struct DocEntry {
    /// Owner, kind and audience.
    pub meta: DocMeta,
    /// The automerge document.
    pub doc: Automerge,
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
    fn new(reason: RejectReason, doc: Option<&DocId>, detail: impl Into<String>) -> Self {
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
    /// Documents created by this input (to persist their metadata).
    pub created: BTreeSet<DocId>,
}

#[derive(Debug, Default)]
struct PeerSync {
    states: HashMap<DocId, sync::State>,
}

/// The documents of one node and the sync state of each connected peer.
///
/// Lifecycle: owned by the store actor. [`Engine::connect`] when a link's hello is done,
/// [`Engine::receive`] for each message, [`Engine::disconnect`] when the link ends (its sync
/// states are returned for persisting and never reused in memory: a fresh state is decoded
/// at the next connection).
#[derive(Debug)]
pub struct Engine {
    me: UnitId,
    actor: ActorId,
    docs: BTreeMap<DocId, DocEntry>,
    peers: HashMap<UnitId, PeerSync>,
}

impl Engine {
    /// An engine for the node of `me`, authoring local changes as `actor`.
    pub fn new(me: UnitId, actor: ActorId) -> Self {
        Engine {
            me,
            actor,
            docs: BTreeMap::new(),
            peers: HashMap::new(),
        }
    }

    /// The node's unit.
    pub fn me(&self) -> &UnitId {
        &self.me
    }

    /// Host a document loaded from storage.
    pub fn insert(&mut self, meta: DocMeta, mut doc: Automerge) {
        doc.set_actor(self.actor.clone());
        self.docs.insert(meta.id.clone(), DocEntry { meta, doc });
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
        let created = !self.docs.contains_key(&meta.id);
        let actor = self.actor.clone();
        let entry = self
            .docs
            .entry(meta.id.clone())
            .or_insert_with(|| DocEntry {
                meta,
                doc: doc::empty(&actor),
            });
        Ok((&mut entry.doc, created))
    }

    /// Whether `meta` is in the scope of the link to `peer` (rule 1), which must be this
    /// node's parent or child.
    pub fn in_link_scope(&self, peer: &UnitId, meta: &DocMeta) -> bool {
        if peer.parent().as_ref() == Some(&self.me) {
            replicated_at(peer, meta)
        } else if self.me.parent().as_ref() == Some(peer) {
            replicated_at(&self.me, meta)
        } else {
            false
        }
    }

    /// A link to `peer` is up. `saved` holds the sync states persisted at the last
    /// connection. Returns the opening messages: the announce, then a sync message per
    /// document in scope.
    pub fn connect(&mut self, peer: &UnitId, saved: HashMap<DocId, Vec<u8>>) -> Vec<Msg> {
        let mut states = HashMap::new();
        for (id, bytes) in saved {
            match sync::State::decode(&bytes) {
                Ok(s) => {
                    states.insert(id, s);
                }
                Err(e) => tracing::warn!(%peer, doc = %id, "discarding unreadable sync state: {e}"),
            }
        }
        let in_scope: Vec<DocId> = self
            .docs
            .values()
            .filter(|e| self.in_link_scope(peer, &e.meta))
            .map(|e| e.meta.id.clone())
            .collect();
        let announce = Msg::Announce(
            in_scope
                .iter()
                .filter_map(|id| self.docs.get(id).map(|e| e.meta.clone()))
                .collect(),
        );
        self.peers.insert(peer.clone(), PeerSync { states });
        let mut out = vec![announce];
        for id in in_scope {
            if let Some(m) = self.generate(peer, &id) {
                out.push(m);
            }
        }
        out
    }

    /// The link to `peer` ended. Returns its encoded sync states to persist.
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

    fn generate(&mut self, peer: &UnitId, id: &DocId) -> Option<Msg> {
        let entry = self.docs.get(id)?;
        let state = self
            .peers
            .get_mut(peer)?
            .states
            .entry(id.clone())
            .or_insert_with(sync::State::new);
        let m = entry.doc.generate_sync_message(state)?;
        Some(Msg::Sync {
            doc: id.clone(),
            data: m.encode(),
        })
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
        targets
            .into_iter()
            .filter_map(|p| self.generate(&p, id).map(|m| (p, m)))
            .collect()
    }

    /// Handle one message from a connected `peer`. On `Err`, nothing was applied and the
    /// rejection should be sent back.
    pub fn receive(&mut self, peer: &UnitId, msg: Msg) -> Result<Step, Rejection> {
        if !self.peers.contains_key(peer) {
            return Err(Rejection::new(
                RejectReason::NotAdjacent,
                None,
                "not connected",
            ));
        }
        match msg {
            Msg::Announce(metas) => self.on_announce(peer, metas),
            Msg::Sync { doc, data } => self.on_sync(peer, doc, &data),
            Msg::Reject {
                reason,
                doc,
                detail,
            } => {
                tracing::warn!(%peer, ?reason, doc = ?doc.map(|d| d.to_string()), detail, "peer refused our message");
                Ok(Step::default())
            }
            Msg::Unknown(t) => {
                tracing::debug!(%peer, t, "ignoring unknown message type");
                Ok(Step::default())
            }
            Msg::Hello(_) => Err(Rejection::new(
                RejectReason::Malformed,
                None,
                "hello after the handshake",
            )),
        }
    }

    fn check_scope(&self, peer: &UnitId, meta: &DocMeta) -> Result<(), Rejection> {
        if !self.in_link_scope(peer, meta) {
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
        Ok(())
    }

    fn on_announce(&mut self, peer: &UnitId, metas: Vec<DocMeta>) -> Result<Step, Rejection> {
        // Validate the whole message before creating anything: rejected whole.
        for meta in &metas {
            self.check_scope(peer, meta)?;
        }
        let mut step = Step::default();
        for meta in metas {
            let id = meta.id.clone();
            if !self.docs.contains_key(&id) {
                let doc = doc::empty(&self.actor);
                self.docs.insert(id.clone(), DocEntry { meta, doc });
                step.created.insert(id.clone());
            }
            if let Some(m) = self.generate(peer, &id) {
                step.send.push((peer.clone(), m));
            }
        }
        Ok(step)
    }

    fn on_sync(&mut self, peer: &UnitId, id: DocId, data: &[u8]) -> Result<Step, Rejection> {
        let meta = match self.docs.get(&id) {
            Some(e) => e.meta.clone(),
            None => DocMeta::new(id.clone()),
        };
        self.check_scope(peer, &meta)?;
        let message = sync::Message::decode(data).map_err(|e| {
            Rejection::new(
                RejectReason::Malformed,
                Some(&id),
                format!("sync message: {e}"),
            )
        })?;
        let mut step = Step::default();
        if !self.docs.contains_key(&id) {
            let doc = doc::empty(&self.actor);
            self.docs.insert(
                id.clone(),
                DocEntry {
                    meta: meta.clone(),
                    doc,
                },
            );
            step.created.insert(id.clone());
        }
        let (Some(entry), Some(peer_sync)) = (self.docs.get_mut(&id), self.peers.get_mut(peer))
        else {
            return Err(Rejection::new(
                RejectReason::ApplyFailed,
                Some(&id),
                "document vanished",
            ));
        };
        let state = peer_sync
            .states
            .entry(id.clone())
            .or_insert_with(sync::State::new);
        let before = entry.doc.get_heads();

        // Peer bytes are hostile: apply to a copy inside catch_unwind (automerge 0.12 panics
        // on some malformed changes), check the author of every new change against rule 2,
        // and only then adopt the copy. A refused message leaves document and state as they were.
        let chunks: Vec<Vec<u8>> = message.changes.iter().map(<[u8]>::to_vec).collect();
        let mut candidate = entry.doc.clone();
        let mut candidate_state = state.clone();
        let applied = catch_unwind(AssertUnwindSafe(|| {
            candidate.receive_sync_message(&mut candidate_state, message)
        }));
        match applied {
            Err(_) => {
                return Err(Rejection::new(
                    RejectReason::ApplyFailed,
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
        let owner = meta.owner();
        for change in candidate.get_changes(&before) {
            let author = ActorTag::unit_of(change.actor_id().to_bytes()).map_err(|_| {
                Rejection::new(
                    RejectReason::Unauthorised,
                    Some(&id),
                    "a change's actor does not name a unit",
                )
            })?;
            if !may_author(&author, owner) {
                return Err(Rejection::new(
                    RejectReason::Unauthorised,
                    Some(&id),
                    format!("change by {author} to a document owned by {owner}"),
                ));
            }
        }
        let changed = candidate.get_heads() != before;
        // automerge queues changes whose dependencies are missing and silently drops chunks
        // it cannot parse. Over an ordered stream neither happens honestly, and a queued
        // change would be applied later without passing the authority check: refuse both.
        if !candidate.get_missing_deps(&[]).is_empty() {
            return Err(Rejection::new(
                RejectReason::Malformed,
                Some(&id),
                "changes with missing dependencies",
            ));
        }
        let dropped = chunks.into_iter().any(|c| {
            Change::from_bytes(c).is_ok_and(|c| candidate.get_change_by_hash(&c.hash()).is_none())
        });
        if dropped {
            return Err(Rejection::new(
                RejectReason::Malformed,
                Some(&id),
                "a change that automerge did not apply",
            ));
        }
        entry.doc = candidate;
        *state = candidate_state;
        if changed {
            step.changed.insert(id.clone());
        }
        if let Some(m) = self.generate(peer, &id) {
            step.send.push((peer.clone(), m));
        }
        if changed {
            step.send.extend(self.fan_out(&id, Some(peer)));
        }
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
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
        }
    }

    fn write(e: &mut Engine, owner: &str, rec: u64, name: &str) -> DocId {
        let meta = DocMeta::new(DocId::new(DocKind::Members, u(owner)));
        let id = meta.id.clone();
        let (d, _) = e.local_doc(meta).unwrap();
        doc::create_member(d, RecordId::from_u64(rec), &member(name)).unwrap();
        id
    }

    /// Deterministic two-peer harness: deliver every queued message in order until quiet.
    /// Returns rejections seen, by receiving side.
    fn pump(
        a: &mut Engine,
        b: &mut Engine,
        mut queue: Vec<(UnitId, UnitId, Msg)>,
    ) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        let mut rounds = 0;
        while let Some((from, to, msg)) = (!queue.is_empty()).then(|| queue.remove(0)) {
            rounds += 1;
            assert!(rounds < 10_000, "did not settle");
            let target = if &to == a.me() { &mut *a } else { &mut *b };
            match target.receive(&from, msg) {
                Ok(step) => queue.extend(step.send.into_iter().map(|(p, m)| (to.clone(), p, m))),
                Err(r) => {
                    queue.push((to.clone(), from.clone(), r.to_msg()));
                    rejected.push(r);
                }
            }
        }
        rejected
    }

    fn connect(a: &mut Engine, b: &mut Engine) -> Vec<(UnitId, UnitId, Msg)> {
        let (ua, ub) = (a.me().clone(), b.me().clone());
        let mut q: Vec<_> = a
            .connect(&ub, HashMap::new())
            .into_iter()
            .map(|m| (ua.clone(), ub.clone(), m))
            .collect();
        q.extend(
            b.connect(&ua, HashMap::new())
                .into_iter()
                .map(|m| (ub.clone(), ua.clone(), m)),
        );
        q
    }

    fn names(e: &Engine, owner: &str) -> Vec<String> {
        let id = DocId::new(DocKind::Members, u(owner));
        let mut v: Vec<String> = e
            .get(&id)
            .map(|d| doc::read_members(&d.doc, &u(owner)))
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
        let q = connect(&mut t, &mut v);
        assert!(pump(&mut t, &mut v, q).is_empty());
        assert_eq!(names(&t, "c01/k01/t01/v01"), names(&v, "c01/k01/t01/v01"));
        assert_eq!(names(&t, "c01/k01/t01/v01").len(), 2);
    }

    #[test]
    fn township_internal_documents_never_go_down() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        write(&mut t, "c01/k01/t01", 1, "Township Member");
        write(&mut t, "c01/k01/t01/v02", 2, "Sibling Village Member");
        let q = connect(&mut t, &mut v);
        assert!(pump(&mut t, &mut v, q).is_empty());
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
        let p = doc::read_profile(&v.get(&meta.id).unwrap().doc, &u("c01/k01/t01")).unwrap();
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
        let before = t.get(&id).map(|e| e.doc.get_heads()).unwrap_or_default();
        // The first message carries heads only; drive the exchange by hand.
        let mut fs = sync::State::new();
        let mut rejected = None;
        for _ in 0..6 {
            let Some(m) = forged.generate_sync_message(&mut fs) else {
                break;
            };
            match t.receive(
                &u("c01/k01/t01/v01"),
                Msg::Sync {
                    doc: id.clone(),
                    data: m.encode(),
                },
            ) {
                Ok(step) => {
                    for (_, reply) in step.send {
                        if let Msg::Sync { data, .. } = reply {
                            forged
                                .receive_sync_message(
                                    &mut fs,
                                    sync::Message::decode(&data).unwrap(),
                                )
                                .unwrap();
                        }
                    }
                }
                Err(r) => {
                    rejected = Some(r);
                    break;
                }
            }
        }
        let r = rejected.expect("forged change accepted");
        assert_eq!(r.reason, RejectReason::Unauthorised);
        assert_eq!(
            t.get(&id).map(|e| e.doc.get_heads()).unwrap_or_default(),
            before
        );
        assert!(names(&t, "c01/k01/t01/v01").is_empty());
    }

    #[test]
    fn out_of_scope_announce_is_rejected() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        let _ = connect(&mut t, &mut v);
        let foreign = DocMeta::new(DocId::new(DocKind::Members, u("c01/k01/t01/v02")));
        let r = t
            .receive(&u("c01/k01/t01/v01"), Msg::Announce(vec![foreign.clone()]))
            .unwrap_err();
        assert_eq!(r.reason, RejectReason::OutOfScope);
        assert!(t.get(&foreign.id).is_none(), "nothing created");
        // A child may not push its parent's internal document either.
        let up = DocMeta::new(DocId::new(DocKind::Members, u("c01/k01/t01")));
        assert_eq!(
            t.receive(&u("c01/k01/t01/v01"), Msg::Announce(vec![up]))
                .unwrap_err()
                .reason,
            RejectReason::OutOfScope
        );
    }

    #[test]
    fn malformed_sync_bytes_are_rejected() {
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        let _ = connect(&mut t, &mut v);
        let id = DocId::new(DocKind::Members, u("c01/k01/t01/v01"));
        for junk in [
            vec![],
            vec![0x42],
            vec![0x43, 0xff, 0xff, 0xff],
            b"hello world".to_vec(),
        ] {
            let r = t
                .receive(
                    &u("c01/k01/t01/v01"),
                    Msg::Sync {
                        doc: id.clone(),
                        data: junk,
                    },
                )
                .unwrap_err();
            assert_eq!(r.reason, RejectReason::Malformed);
        }
    }

    #[test]
    fn automerge_panic_input_is_contained() {
        // Regression: automerge 0.12 panics inside apply on this input (shared fixture).
        // Delivered as a sync message's change chunk, it must be refused, not crash the node.
        let base = include_bytes!("../../tests/fixtures/am_panic_base.automerge");
        let input = include_bytes!("../../tests/fixtures/am_panic_input.bin");
        let mut t = engine("c01/k01/t01", 1);
        let mut v = engine("c01/k01/t01/v01", 2);
        let q = connect(&mut t, &mut v);
        assert!(pump(&mut t, &mut v, q).is_empty());
        let id = DocId::new(DocKind::Members, u("c01/k01/t01/v01"));
        let loaded = Automerge::load(base).unwrap();
        t.insert(DocMeta::new(id.clone()), loaded);
        let heads = t.get(&id).unwrap().doc.get_heads();
        let msg = sync::Message {
            heads: vec![],
            need: vec![],
            have: vec![],
            changes: input.to_vec().into(),
            flags: None,
            version: sync::MessageVersion::V1,
        };
        let r = t.receive(
            &u("c01/k01/t01/v01"),
            Msg::Sync {
                doc: id.clone(),
                data: msg.encode(),
            },
        );
        assert!(r.is_err(), "hostile input accepted");
        assert_eq!(
            t.get(&id).unwrap().doc.get_heads(),
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
        let got =
            doc::read_profile(&t.get(&profile.id).unwrap().doc, &u("c01/k01/t01/v01")).unwrap();
        assert_eq!(got.name, "Clear Water Village");
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
}
