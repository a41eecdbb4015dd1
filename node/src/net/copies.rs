//! A UDP socket that sends each QUIC handshake datagram more than once.
//!
//! On a line that loses datagrams at random, a handshake datagram lost waits out QUIC's probe
//! timeout (three round trips or more, doubling with each loss in a row) before it is sent
//! again. A handshake is a few datagrams each way, so at 30% loss most handshakes lose one.
//! Sent twice, back to back, a datagram is lost only when both copies are: 9% at 30% when
//! losses are independent, as on a noisy radio link, less of a gain where they come in
//! bursts. QUIC drops the later copy as a duplicate packet number, so the parent needs no
//! setting of its own.
//!
//! Only datagrams that open with a long header are copied: the handshake's (Initial and
//! Handshake packets, with whatever quinn coalesces behind them, which may include the first
//! application data), and only while the handshake is registered (below): once it is done,
//! nothing more is copied (the last Handshake packets quinn may still send go once), and a
//! link sends short headers only.
//!
//! Only towards a parent this node is dialling, or a child whose address QUIC has validated,
//! and only while that handshake runs: a server may send an address it has not validated at
//! most three times what it received from it (RFC 9000, 8.1), so that a forged source address
//! cannot turn a node into an amplifier. quinn keeps that limit for what it sends but does
//! not see the copies, and its own datagrams may use all of it, so a node answering a
//! child's handshake copies nothing unless the child presented a token from an earlier link
//! (NEW_TOKEN: its address is then validated, and no limit applies). The dial and the accept
//! register the address with [`copying`] for as long as the handshake runs; quinn's
//! `Endpoint` offers no way back to its socket, so the registry is keyed by the socket's
//! local address.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, TokenLog, TokenReuseError, UdpPoller};

/// The first bit of a QUIC packet: set in a long header (RFC 9000, 17.2).
const LONG_HEADER: u8 = 0x80;

/// Which side of a handshake this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Side {
    /// It dials its parent.
    Dial,
    /// It answers a child whose address is validated.
    Accept,
}

/// Handshakes whose datagrams are copied, by (local socket address, peer address, side): how
/// many are in progress.
type Handshakes = HashMap<(SocketAddr, SocketAddr, Side), usize>;

/// An address as one key, whether quinn reports it IPv4-mapped (a dual-stack socket) or not.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The handshakes in progress that every copying socket in the process copies. A mutex
/// because sockets send from many connection tasks, synchronously; it is never held across a
/// send.
static COPYING: Mutex<Option<Handshakes>> = Mutex::new(None);

fn handshakes() -> MutexGuard<'static, Option<Handshakes>> {
    // A count is whole whatever panicked while the lock was held: each update is one step.
    COPYING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A handshake in progress between the socket at `local` and `peer` (the parent it dials, or
/// a child whose address is validated): handshake datagrams the socket sends there are
/// copied until the returned guard is dropped.
pub(super) fn copying(local: SocketAddr, peer: SocketAddr, side: Side) -> Copying {
    let key = (canonical(local), canonical(peer), side);
    *handshakes()
        .get_or_insert_with(HashMap::new)
        .entry(key)
        .or_insert(0) += 1;
    Copying { key }
}

/// Ends a handshake's registration when dropped.
#[derive(Debug)]
pub(super) struct Copying {
    key: (SocketAddr, SocketAddr, Side),
}

impl Drop for Copying {
    fn drop(&mut self) {
        let mut handshakes = handshakes();
        let Some(map) = handshakes.as_mut() else {
            return;
        };
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

fn is_copied(local: SocketAddr, to: SocketAddr) -> bool {
    let (local, to) = (canonical(local), canonical(to));
    handshakes().as_ref().is_some_and(|m| {
        m.contains_key(&(local, to, Side::Dial)) || m.contains_key(&(local, to, Side::Accept))
    })
}

/// Whether the socket at `local` is dialling `peer` now: a handshake arriving from that
/// address is not a child's (a parent never dials its child), and answered it would be
/// copied.
pub(super) fn is_dialling(local: SocketAddr, peer: SocketAddr) -> bool {
    let key = (canonical(local), canonical(peer), Side::Dial);
    handshakes().as_ref().is_some_and(|m| m.contains_key(&key))
}

/// How long a child's token validates its address. A village that redials within a day (its
/// link came back) has its parent's answers copied; one away longer dials as a new one.
pub(super) const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Tokens kept as used: more, and further ones are refused (the handshake then goes on
/// unvalidated, its answers sent once) until the oldest expire.
const MAX_TOKENS: usize = 4096;

/// The tokens children have presented, so that none validates twice (RFC 9000, 8.1.4: a
/// replayed token would make the node an amplifier again). Kept until they expire.
#[derive(Debug, Default)]
pub(super) struct UsedTokens {
    used: Mutex<HashMap<u128, SystemTime>>,
}

impl TokenLog for UsedTokens {
    fn check_and_insert(
        &self,
        nonce: u128,
        issued: SystemTime,
        lifetime: Duration,
    ) -> Result<(), TokenReuseError> {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        if used.contains_key(&nonce) {
            return Err(TokenReuseError);
        }
        if used.len() >= MAX_TOKENS {
            let now = SystemTime::now();
            used.retain(|_, expires| *expires > now);
            if used.len() >= MAX_TOKENS {
                return Err(TokenReuseError);
            }
        }
        // An expiry past what SystemTime holds counts as past: dropped at the next prune.
        used.insert(nonce, issued.checked_add(lifetime).unwrap_or(issued));
        Ok(())
    }
}

/// A socket sending each datagram of a registered handshake `copies` times in all.
#[derive(Debug)]
pub(super) struct HandshakeCopies {
    inner: Arc<dyn AsyncUdpSocket>,
    copies: u8,
    /// The inner socket's address, the key of its handshakes.
    local: SocketAddr,
}

impl HandshakeCopies {
    pub(super) fn new(inner: Arc<dyn AsyncUdpSocket>, copies: u8) -> io::Result<Self> {
        let local = inner.local_addr()?;
        Ok(HandshakeCopies {
            inner,
            copies,
            local,
        })
    }
}

fn long_header(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & LONG_HEADER != 0)
}

impl AsyncUdpSocket for HandshakeCopies {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)?;
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        let mut handshake = transmit
            .contents
            .chunks(size)
            .filter(|d| long_header(d))
            .peekable();
        if handshake.peek().is_none() || !is_copied(self.local, transmit.destination) {
            return Ok(());
        }
        for datagram in handshake {
            let copy = Transmit {
                contents: datagram,
                segment_size: None,
                ..*transmit
            };
            // Best effort: the original went, and a full socket buffer is a reason to send
            // less, not to have quinn send the original again.
            for _ in 1..self.copies {
                if self.inner.try_send(&copy).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    /// A socket at `local` (each test its own: the dials' registry is the process's) that
    /// records what it is asked to send, each datagram of a batch apart, and fails the calls
    /// numbered in `blocked` with `WouldBlock`.
    #[derive(Debug, Default)]
    struct Fake {
        local: u16,
        sent: Mutex<Vec<(SocketAddr, Vec<u8>)>>,
        blocked: Vec<usize>,
        calls: AtomicUsize,
    }

    #[derive(Debug)]
    struct AlwaysWritable;

    impl UdpPoller for AlwaysWritable {
        fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncUdpSocket for Fake {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            Box::pin(AlwaysWritable)
        }

        fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
            let call = self.calls.fetch_add(1, Ordering::Relaxed);
            if self.blocked.contains(&call) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let size = t.segment_size.unwrap_or(t.contents.len());
            let mut sent = self.sent.lock().unwrap();
            for d in t.contents.chunks(size) {
                sent.push((t.destination, d.to_vec()));
            }
            Ok(())
        }

        fn poll_recv(
            &self,
            _cx: &mut Context<'_>,
            _bufs: &mut [IoSliceMut<'_>],
            _meta: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(SocketAddr::from(([127, 0, 0, 9], self.local)))
        }

        fn max_transmit_segments(&self) -> usize {
            64
        }

        fn max_receive_segments(&self) -> usize {
            7
        }

        fn may_fragment(&self) -> bool {
            false
        }
    }

    /// A copying socket over a fake at `local`, dialling `addr(1)` while the guard lives.
    fn copying_from(local: u16, copies: u8, fake: Fake) -> (Arc<Fake>, HandshakeCopies, Copying) {
        let fake = Arc::new(Fake { local, ..fake });
        let socket = HandshakeCopies::new(fake.clone(), copies).unwrap();
        let dial = copying(socket.local, addr(1), Side::Dial);
        (fake, socket, dial)
    }

    fn transmit(to: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> Transmit<'_> {
        Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        }
    }

    fn sent(fake: &Fake) -> Vec<Vec<u8>> {
        let sent = fake.sent.lock().unwrap();
        sent.iter().map(|(_, d)| d.clone()).collect()
    }

    const LONG: [u8; 6] = [0xc3, 0, 0, 0, 1, 7];
    const SHORT: [u8; 6] = [0x43, 9, 9, 9, 9, 9];

    #[test]
    fn handshake_datagrams_to_the_parent_dialled_go_twice_and_the_rest_once() {
        let (fake, socket, _dial) = copying_from(1, 2, Fake::default());
        socket.try_send(&transmit(addr(1), &LONG, None)).unwrap();
        socket.try_send(&transmit(addr(1), &SHORT, None)).unwrap();
        assert_eq!(
            sent(&fake),
            vec![LONG.to_vec(), LONG.to_vec(), SHORT.to_vec()]
        );
        // Set to one: no copy.
        let (fake, socket, _dial) = copying_from(2, 1, Fake::default());
        socket.try_send(&transmit(addr(1), &LONG, None)).unwrap();
        assert_eq!(sent(&fake), vec![LONG.to_vec()]);
    }

    /// Nothing is copied to an address not being dialled (a child whose handshake this node
    /// answers: QUIC's amplification limit), nor to the parent once its dial has ended.
    #[test]
    fn only_a_dial_in_progress_is_copied() {
        let (fake, socket, dial) = copying_from(3, 3, Fake::default());
        socket.try_send(&transmit(addr(2), &LONG, None)).unwrap();
        assert_eq!(sent(&fake).len(), 1);
        // Two dials of the same parent at once: copied until both end.
        let second = copying(socket.local, addr(1), Side::Dial);
        drop(dial);
        socket.try_send(&transmit(addr(1), &LONG, None)).unwrap();
        assert_eq!(sent(&fake).len(), 4);
        drop(second);
        socket.try_send(&transmit(addr(1), &LONG, None)).unwrap();
        assert_eq!(sent(&fake).len(), 5);
        // Another socket dialling the same parent does not make this one copy.
        let _other = copying(SocketAddr::from(([127, 0, 0, 9], 4)), addr(1), Side::Dial);
        socket.try_send(&transmit(addr(1), &LONG, None)).unwrap();
        assert_eq!(sent(&fake).len(), 6);
    }

    /// A child's token validates its address once (a replay would make the node an
    /// amplifier again); a full log refuses new ones until the oldest expire.
    #[test]
    fn a_token_validates_once() {
        let log = UsedTokens::default();
        let now = SystemTime::now();
        assert!(log.check_and_insert(1, now, TOKEN_LIFETIME).is_ok());
        assert!(log.check_and_insert(1, now, TOKEN_LIFETIME).is_err());
        assert!(log.check_and_insert(2, now, TOKEN_LIFETIME).is_ok());
        // Full of tokens still valid: refused.
        for n in 3..MAX_TOKENS as u128 + 1 {
            assert!(log.check_and_insert(n, now, TOKEN_LIFETIME).is_ok());
        }
        assert!(
            log.check_and_insert(u128::MAX, now, TOKEN_LIFETIME)
                .is_err()
        );
        // Full of expired ones: they make room.
        let log = UsedTokens::default();
        let long_ago = now - TOKEN_LIFETIME * 2;
        for n in 0..MAX_TOKENS as u128 {
            assert!(log.check_and_insert(n, long_ago, TOKEN_LIFETIME).is_ok());
        }
        assert!(log.check_and_insert(u128::MAX, now, TOKEN_LIFETIME).is_ok());
    }

    /// A dual-stack socket sees its parent IPv4-mapped: the same address. A child's
    /// handshake registered does not count as a dial of its address.
    #[test]
    fn addresses_are_one_key_and_sides_apart() {
        let local = SocketAddr::from(([127, 0, 0, 9], 10));
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:1".parse().unwrap();
        let dial = copying(local, mapped, Side::Dial);
        assert!(is_copied(local, addr(1)) && is_dialling(local, addr(1)));
        drop(dial);
        let child = copying(local, addr(1), Side::Accept);
        assert!(is_copied(local, addr(1)) && !is_dialling(local, addr(1)));
        drop(child);
        assert!(!is_copied(local, addr(1)));
    }

    #[test]
    fn a_batch_copies_its_handshake_datagrams_only() {
        let (fake, socket, _dial) = copying_from(5, 2, Fake::default());
        // Three datagrams of 4 bytes in one transmit: a handshake one, a short one, a
        // handshake one (the last may be shorter, as in a real batch).
        let batch = [0xc0u8, 1, 1, 1, 0x40, 2, 2, 2, 0xe0, 3];
        socket
            .try_send(&transmit(addr(1), &batch, Some(4)))
            .unwrap();
        let (a, b, c) = (&batch[0..4], &batch[4..8], &batch[8..]);
        assert_eq!(sent(&fake), vec![a, b, c, a, c]);
    }

    #[test]
    fn a_full_socket_sends_fewer_copies_never_the_original_twice() {
        // The original blocked: quinn is told so and sends it again later; no copy went.
        let blocked = Fake {
            blocked: vec![0],
            ..Fake::default()
        };
        let (fake, socket, _dial) = copying_from(6, 3, blocked);
        let e = socket
            .try_send(&transmit(addr(1), &LONG, None))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(sent(&fake).is_empty());
        // A copy blocked: the original counts as sent and the other copies are dropped.
        let blocked = Fake {
            blocked: vec![1],
            ..Fake::default()
        };
        let (fake, socket, _dial) = copying_from(7, 3, blocked);
        socket.try_send(&transmit(addr(1), &LONG, None)).unwrap();
        assert_eq!(sent(&fake), vec![LONG.to_vec()]);
    }

    #[test]
    fn the_sockets_abilities_are_passed_through() {
        // quinn reads these: batches, receive offload, and whether path MTU discovery may run.
        let (_, socket, _dial) = copying_from(8, 2, Fake::default());
        assert_eq!(socket.max_transmit_segments(), 64);
        assert_eq!(socket.max_receive_segments(), 7);
        assert!(!socket.may_fragment());
        assert_eq!(
            socket.local_addr().unwrap(),
            SocketAddr::from(([127, 0, 0, 9], 8))
        );
    }
}
