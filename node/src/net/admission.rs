//! Which incoming handshakes a node works on while many arrive at once.
//!
//! A handshake holds memory and costs signatures until it completes or times out, so a node
//! works on at most `max_handshakes` at once, shared out by what QUIC knows of the sender:
//! - an address QUIC has not validated (it may be forged) takes at most half;
//! - an address validated (a Retry answered, or a token from an earlier link) that no child
//!   linked from lately takes at most three quarters with the unvalidated ones (a quarter
//!   kept rounds down: with fewer than 4 none is);
//! - an address a child of this node completed a link from in the last week, validated,
//!   takes what is free.
//!
//! So Initials from forged sources cannot take what children come back to through a Retry,
//! and senders answering Retries from their own addresses (a handful of IPv6 /64s are
//! cheap) cannot take the quarter kept for the addresses children linked from. Once half
//! are taken, a source holding an eighth in validated handshakes gets no more, known or
//! not: one address cannot take a class's share alone. Below half no source is held back,
//! so children behind one carrier's address redialling at once (a parent restarted) all get
//! in.
//!
//! A child's address is remembered once the store takes its link (its certificate checked,
//! its hello answered, neither revoked nor kept off) and again as that link ends (from the
//! address QUIC then has, and a week from then), in memory: a restarted node knows none
//! until its children link again.
//! A sender at an address a child linked from (the same carrier's NAT, say) is known too;
//! the per-source bound still holds it to an eighth.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long an address a child linked from stays known.
pub(super) const KNOWN_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// Addresses kept as known: past this, the oldest is forgotten.
const MAX_KNOWN: usize = 4096;

/// What QUIC knows of a handshake's sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sender {
    /// Its address is not validated: it may be forged.
    Unvalidated,
    /// Its address is validated, and no child linked from it lately.
    Validated,
    /// Its address is validated, and a child linked from it lately.
    Known,
}

/// Why a handshake was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Turned {
    /// The share its kind of sender may take is taken.
    Busy,
    /// Its source holds an eighth while half are taken.
    Crowded { held: usize },
}

/// Whether a handshake from `sender`, whose source holds `held` validated handshakes, is
/// worked on when `free` of `most` are free.
pub(super) fn admits(most: usize, free: usize, held: usize, sender: Sender) -> Result<(), Turned> {
    // Keep these free for the senders above.
    let floor = match sender {
        Sender::Unvalidated => most / 2,
        Sender::Validated => most / 4,
        Sender::Known => 0,
    };
    let per_source = (most / 8).max(1);
    if sender != Sender::Unvalidated && free <= most / 2 && held >= per_source {
        Err(Turned::Crowded { held })
    } else if free > floor {
        Ok(())
    } else {
        Err(Turned::Busy)
    }
}

/// Where a handshake comes from, as the per-source bound counts it: the address, or for
/// IPv6 its /64 (one host may hold a whole /64, and picks any address in it).
pub(super) fn source_of(remote: SocketAddr) -> IpAddr {
    match remote.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// A source as a log line names it: an address, or an IPv6 /64.
pub(super) fn source_label(remote: SocketAddr) -> String {
    match source_of(remote) {
        IpAddr::V6(net) => format!("{net}/64"),
        v4 => v4.to_string(),
    }
}

/// The incoming handshakes a node works on, and the sources they come from.
#[derive(Debug)]
pub(super) struct Admission {
    most: usize,
    handshakes: Arc<Semaphore>,
    sources: Arc<SourceHandshakes>,
    known: Mutex<HashMap<IpAddr, Instant>>,
}

/// A handshake being worked on: its slot, and its source's count when validated.
#[derive(Debug)]
pub(super) struct Admitted {
    _permit: OwnedSemaphorePermit,
    _hold: Option<SourceHold>,
}

impl Admission {
    /// At most `most` handshakes at once (at least 1).
    pub(super) fn new(most: usize) -> Self {
        let most = most.max(1);
        Admission {
            most,
            handshakes: Arc::new(Semaphore::new(most)),
            sources: Arc::default(),
            known: Mutex::default(),
        }
    }

    /// The most handshakes worked on at once.
    pub(super) fn most(&self) -> usize {
        self.most
    }

    /// What is known of a handshake from `remote`, validated by QUIC or not.
    pub(super) fn sender(&self, remote: SocketAddr, validated: bool, now: Instant) -> Sender {
        if !validated {
            return Sender::Unvalidated;
        }
        let known = self
            .known()
            .get(&source_of(remote))
            .is_some_and(|at| now.saturating_duration_since(*at) < KNOWN_FOR);
        if known {
            Sender::Known
        } else {
            Sender::Validated
        }
    }

    /// A slot for a handshake from `remote`, or why there is none.
    pub(super) fn admit(&self, remote: SocketAddr, sender: Sender) -> Result<Admitted, Turned> {
        let source = source_of(remote);
        let free = self.handshakes.available_permits();
        admits(self.most, free, self.sources.held(source), sender)?;
        let permit = self
            .handshakes
            .clone()
            .try_acquire_owned()
            .map_err(|_| Turned::Busy)?;
        // Only validated handshakes count against a source: Initials forged with a child's
        // address (bounded by the unvalidated half) must not lock that child out.
        let hold = (sender != Sender::Unvalidated).then(|| self.sources.hold(source));
        Ok(Admitted {
            _permit: permit,
            _hold: hold,
        })
    }

    /// A child's link from `remote` is up, or was until now: its source is known for
    /// [`KNOWN_FOR`] from now.
    pub(super) fn linked(&self, remote: SocketAddr, now: Instant) {
        let mut known = self.known();
        if known.len() >= MAX_KNOWN && !known.contains_key(&source_of(remote)) {
            known.retain(|_, at| now.saturating_duration_since(*at) < KNOWN_FOR);
            if known.len() >= MAX_KNOWN
                && let Some(oldest) = known.iter().min_by_key(|(_, at)| **at).map(|(s, _)| *s)
            {
                known.remove(&oldest);
            }
        }
        known.insert(source_of(remote), now);
    }

    fn known(&self) -> MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Incoming handshakes in progress per source ([`source_of`]).
#[derive(Debug, Default)]
struct SourceHandshakes {
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceHandshakes {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many `source` holds.
    fn held(&self, source: IpAddr) -> usize {
        self.lock().get(&source).copied().unwrap_or(0)
    }

    /// One more for `source`, until the returned hold is dropped.
    fn hold(self: &Arc<Self>, source: IpAddr) -> SourceHold {
        *self.lock().entry(source).or_default() += 1;
        SourceHold {
            sources: self.clone(),
            source,
        }
    }
}

/// One handshake of a source in progress (see [`SourceHandshakes::hold`]).
#[derive(Debug)]
struct SourceHold {
    sources: Arc<SourceHandshakes>,
    source: IpAddr,
}

impl Drop for SourceHold {
    fn drop(&mut self) {
        let mut held = self.sources.lock();
        if let Some(n) = held.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-source bound counts an IPv4 address (mapped into IPv6 or not) as itself and
    /// an IPv6 address by its /64; a hold is counted until dropped.
    #[test]
    fn handshakes_are_counted_per_address_and_per_ipv6_slash_64() {
        let at = |s: &str| source_of(s.parse().unwrap());
        assert_eq!(at("192.0.2.7:4000"), at("192.0.2.7:5000"));
        assert_ne!(at("192.0.2.7:4000"), at("192.0.2.8:4000"));
        assert_eq!(at("[::ffff:192.0.2.7]:4000"), at("192.0.2.7:4000"));
        assert_eq!(
            at("[2001:db8:1:2::1]:4000"),
            at("[2001:db8:1:2:ffff::9]:4000")
        );
        assert_ne!(at("[2001:db8:1:2::1]:4000"), at("[2001:db8:1:3::1]:4000"));
        let label = |s: &str| source_label(s.parse().unwrap());
        assert_eq!(label("[2001:db8:1:2:ffff::9]:4000"), "2001:db8:1:2::/64");
        assert_eq!(label("[::ffff:192.0.2.7]:4000"), "192.0.2.7");
        let sources = Arc::new(SourceHandshakes::default());
        let a = at("192.0.2.7:1");
        let (one, two) = (sources.hold(a), sources.hold(a));
        assert_eq!(sources.held(a), 2);
        drop(one);
        assert_eq!(sources.held(a), 1);
        drop(two);
        assert_eq!(sources.held(a), 0);
        assert!(sources.lock().is_empty());
    }

    /// Of 128 handshakes: unvalidated senders stop at half taken, validated strangers at
    /// three quarters, known ones at none free; a source holding an eighth (16) stops at
    /// half, whatever it is.
    #[test]
    fn each_kind_of_sender_leaves_its_share_to_the_ones_above() {
        use Sender::*;
        let take = |sender| {
            (0..=128)
                .rev()
                .find(|&free| admits(128, free, 0, sender).is_err())
        };
        assert_eq!(take(Unvalidated), Some(64));
        assert_eq!(take(Validated), Some(32));
        assert_eq!(take(Known), Some(0));
        for sender in [Validated, Known] {
            assert_eq!(admits(128, 65, 16, sender), Ok(()));
            assert_eq!(
                admits(128, 64, 16, sender),
                Err(Turned::Crowded { held: 16 })
            );
            assert_eq!(admits(128, 64, 15, sender), Ok(()));
        }
        // Forged Initials do not count against the address they name.
        assert_eq!(admits(128, 65, 100, Unvalidated), Ok(()));
        // One handshake at most: whoever comes first.
        for sender in [Unvalidated, Validated, Known] {
            assert_eq!(admits(1, 1, 0, sender), Ok(()));
            assert_eq!(admits(1, 0, 0, sender), Err(Turned::Busy));
        }
    }

    /// A child's address is known once its link is up, by its source, for a week; past
    /// [`MAX_KNOWN`] the oldest is forgotten. Unvalidated, it is no one.
    #[test]
    fn a_childs_address_is_known_for_a_week_once_it_linked() {
        let admission = Admission::new(8);
        let (child, neighbour) = ("[2001:db8:1:2::1]:4000", "[2001:db8:1:2::9]:5000");
        let (child, neighbour) = (child.parse().unwrap(), neighbour.parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(admission.sender(child, true, t0), Sender::Validated);
        admission.linked(child, t0);
        assert_eq!(admission.sender(child, true, t0), Sender::Known);
        assert_eq!(admission.sender(neighbour, true, t0), Sender::Known);
        assert_eq!(admission.sender(child, false, t0), Sender::Unvalidated);
        assert_eq!(
            admission.sender(child, true, t0 + KNOWN_FOR),
            Sender::Validated
        );
        for n in 0..MAX_KNOWN as u32 {
            let at = SocketAddr::from((std::net::Ipv4Addr::from_bits(n), 1));
            admission.linked(at, t0 + Duration::from_secs(1 + u64::from(n)));
        }
        assert_eq!(admission.known().len(), MAX_KNOWN);
        assert_eq!(admission.sender(child, true, t0), Sender::Validated);
        let newest = SocketAddr::from((std::net::Ipv4Addr::from_bits(MAX_KNOWN as u32 - 1), 1));
        assert_eq!(admission.sender(newest, true, t0), Sender::Known);
    }

    /// A slot is held until the admitted handshake is dropped, and only a validated one
    /// counts against its source.
    #[test]
    fn an_admitted_handshake_holds_its_slot_until_dropped() {
        let admission = Admission::new(2);
        let at: SocketAddr = "192.0.2.7:1".parse().unwrap();
        let forged = admission.admit(at, Sender::Unvalidated).unwrap();
        assert_eq!(admission.sources.held(source_of(at)), 0);
        // Half taken: no more unvalidated.
        assert_eq!(
            admission.admit(at, Sender::Unvalidated).unwrap_err(),
            Turned::Busy
        );
        let known = admission.admit(at, Sender::Known).unwrap();
        assert_eq!(admission.sources.held(source_of(at)), 1);
        assert_eq!(
            admission.admit(at, Sender::Known).unwrap_err(),
            Turned::Crowded { held: 1 }
        );
        drop((forged, known));
        assert_eq!(admission.handshakes.available_permits(), 2);
        assert_eq!(admission.sources.held(source_of(at)), 0);
    }
}
