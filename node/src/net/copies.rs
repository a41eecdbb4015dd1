//! A UDP socket that sends each QUIC handshake datagram more than once.
//!
//! On a line that loses datagrams at random, a handshake datagram lost waits out QUIC's probe
//! timeout (three round trips or more, doubling with each loss in a row) before it is sent
//! again. A handshake is a few datagrams each way, so at 30% loss most handshakes lose one.
//! Sent twice, back to back, a datagram is lost only when both copies are: 9% at 30% when
//! losses are independent, as on a noisy radio link, less of a gain where they come in
//! bursts. QUIC drops the later copy as a duplicate packet number, so the peer needs no
//! setting of its own; its flights are sent twice only if it sets this too.
//!
//! Only datagrams that open with a long header are copied: the handshake's (Initial and
//! Handshake packets, with whatever quinn coalesces behind them, which may include the first
//! application data). They stop once the handshake is confirmed (the client's last
//! Handshake packets may follow its link's first frames); after that a link sends short
//! headers only, which are never copied.
//!
//! A server may send an address it has not validated at most three times what it received
//! from it (RFC 9000, 8.1), so that a forged source address cannot turn a node into an
//! amplifier. quinn keeps that limit for what it sends but does not see the copies, so the
//! socket keeps it for them: it copies towards an address only within three times the
//! handshake bytes it received from it, counting originals and copies. An address it sends a
//! handshake to before it heard from it is one it dials (a server only answers), and those
//! are copied freely.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The first bit of a QUIC packet: set in a long header (RFC 9000, 17.2).
const LONG_HEADER: u8 = 0x80;

/// At most this many addresses are counted at once. When all are taken (and none is older
/// than [`FORGET_AFTER`]), handshakes with other addresses are sent once: a flood of forged
/// handshakes costs memory up to here and then only the copies.
const MAX_PEERS: usize = 1024;

/// An address last counted this long ago is forgotten: its handshake is long over.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// The amplification limit of RFC 9000, 8.1.
const AMPLIFICATION: u64 = 3;

/// A socket sending each handshake datagram `copies` times in all, within the amplification
/// limit towards addresses it answers.
#[derive(Debug)]
pub(super) struct HandshakeCopies {
    inner: Arc<dyn AsyncUdpSocket>,
    copies: u8,
    peers: Mutex<Peers>,
}

impl HandshakeCopies {
    pub(super) fn new(inner: Arc<dyn AsyncUdpSocket>, copies: u8) -> Self {
        HandshakeCopies {
            inner,
            copies,
            peers: Mutex::new(Peers::default()),
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, Peers> {
        // The counts stay whole whatever panicked while they were held: each update is one
        // addition.
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn long_header(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & LONG_HEADER != 0)
}

/// Handshake bytes each way, per address.
#[derive(Debug, Default)]
struct Peers {
    by_addr: HashMap<SocketAddr, Peer>,
}

#[derive(Debug)]
struct Peer {
    /// This socket sent to it before it heard from it: it dials that address.
    dialled: bool,
    received: u64,
    sent: u64,
    last: Instant,
}

impl Peers {
    /// The entry of `addr`, made fresh if it has none or an old one; none when every slot is
    /// taken by a recent one.
    fn entry(&mut self, addr: SocketAddr, dialled: bool, now: Instant) -> Option<&mut Peer> {
        let fresh = Peer {
            dialled,
            received: 0,
            sent: 0,
            last: now,
        };
        let old = |p: &Peer| now.saturating_duration_since(p.last) >= FORGET_AFTER;
        if !self.by_addr.contains_key(&addr) && self.by_addr.len() >= MAX_PEERS {
            self.by_addr.retain(|_, p| !old(p));
            if self.by_addr.len() >= MAX_PEERS {
                return None;
            }
        }
        let p = self.by_addr.entry(addr).or_insert(fresh);
        if old(p) {
            *p = Peer {
                dialled,
                received: 0,
                sent: 0,
                last: now,
            };
        }
        p.last = now;
        Some(p)
    }

    fn received(&mut self, from: SocketAddr, bytes: u64, now: Instant) {
        if let Some(p) = self.entry(from, false, now) {
            p.received += bytes;
        }
    }

    /// A handshake datagram of `bytes` is sent to `to`: how many more times to send it, at
    /// most `extra`.
    fn copies(&mut self, to: SocketAddr, bytes: u64, extra: u8, now: Instant) -> u8 {
        let Some(p) = self.entry(to, true, now) else {
            return 0;
        };
        p.sent += bytes;
        let mut n = 0;
        while n < extra && (p.dialled || p.sent + bytes <= AMPLIFICATION * p.received) {
            p.sent += bytes;
            n += 1;
        }
        n
    }
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
        let now = Instant::now();
        for datagram in transmit.contents.chunks(size).filter(|d| long_header(d)) {
            let n = self.peers().copies(
                transmit.destination,
                datagram.len() as u64,
                self.copies.saturating_sub(1),
                now,
            );
            let copy = Transmit {
                contents: datagram,
                segment_size: None,
                ..*transmit
            };
            // Best effort: the original went, and a full socket buffer is a reason to send
            // less, not to have quinn send the original again.
            for _ in 0..n {
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
        let ready = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &ready {
            let now = Instant::now();
            for (buf, m) in bufs.iter().zip(meta.iter()).take(*n) {
                // A buffer of several datagrams (receive offload) holds one sender's, of
                // `stride` bytes each; only handshake ones count.
                let stride = m.stride.max(1);
                let handshake = buf[..m.len.min(buf.len())]
                    .chunks(stride)
                    .filter(|d| long_header(d))
                    .map(|d| d.len() as u64)
                    .sum::<u64>();
                if handshake > 0 {
                    self.peers().received(m.addr, handshake, now);
                }
            }
        }
        ready
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

    #[test]
    fn an_address_answered_gets_copies_within_three_times_what_came_from_it() {
        let (mut peers, now, a) = (Peers::default(), Instant::now(), addr(1));
        peers.received(a, 1200, now);
        // The original and two copies: 3,600 of the 3,600 allowed.
        assert_eq!(peers.copies(a, 1200, 2, now), 2);
        // No room for a copy beside the next original (which is quinn's to limit).
        assert_eq!(peers.copies(a, 1200, 2, now), 0);
        // The client's next datagram (its copy, say) raises the limit to 7,200: 4,800 sent
        // with the next original, room for one copy of it.
        peers.received(a, 1200, now);
        assert_eq!(peers.copies(a, 1200, 2, now), 1);
        assert_eq!(peers.copies(a, 100, 2, now), 0);
    }

    #[test]
    fn an_address_dialled_gets_every_copy() {
        let (mut peers, now, a) = (Peers::default(), Instant::now(), addr(1));
        for _ in 0..10 {
            assert_eq!(peers.copies(a, 1200, 2, now), 2);
        }
        peers.received(a, 5000, now);
        assert_eq!(peers.copies(a, 1200, 1, now), 1);
    }

    #[test]
    fn a_full_table_sends_once_until_its_addresses_are_old() {
        let (mut peers, now) = (Peers::default(), Instant::now());
        for port in 0..MAX_PEERS as u16 {
            peers.received(addr(port + 1), 1200, now);
        }
        let other = addr(60_000);
        assert_eq!(peers.copies(other, 1200, 1, now), 0);
        // A counted address still gets its copies.
        assert_eq!(peers.copies(addr(1), 1200, 1, now), 1);
        let later = now + FORGET_AFTER;
        assert_eq!(peers.copies(other, 1200, 1, later), 1);
        assert!(peers.by_addr.len() <= MAX_PEERS);
    }

    #[test]
    fn a_count_is_forgotten_a_minute_after_its_last_handshake() {
        let (mut peers, now, a) = (Peers::default(), Instant::now(), addr(1));
        peers.received(a, 1200, now);
        for _ in 0..6 {
            assert_eq!(peers.copies(a, 1200, 0, now), 0);
        }
        // Within the minute, the next handshake datagram adds to the same count: 8,400 sent
        // with the next original, over the 7,200 allowed.
        let soon = now + FORGET_AFTER / 2;
        peers.received(a, 1200, soon);
        assert_eq!(peers.copies(a, 1200, 2, soon), 0);
        // A minute after that, a new handshake starts from nothing.
        let later = soon + FORGET_AFTER;
        peers.received(a, 1200, later);
        assert_eq!(peers.copies(a, 1200, 2, later), 2);
    }

    /// A socket that records what it is asked to send (each datagram of a batch apart), fails
    /// the calls numbered in `blocked` with `WouldBlock`, and has `incoming` to receive.
    #[derive(Debug, Default)]
    struct Fake {
        sent: Mutex<Vec<(SocketAddr, Vec<u8>)>>,
        blocked: Vec<usize>,
        calls: AtomicUsize,
        incoming: Mutex<Option<(SocketAddr, Vec<u8>)>>,
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
            bufs: &mut [IoSliceMut<'_>],
            meta: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            match self.incoming.lock().unwrap().take() {
                Some((from, d)) => {
                    bufs[0][..d.len()].copy_from_slice(&d);
                    meta[0] = RecvMeta {
                        addr: from,
                        len: d.len(),
                        stride: d.len(),
                        ..RecvMeta::default()
                    };
                    Poll::Ready(Ok(1))
                }
                None => Poll::Pending,
            }
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(addr(9))
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

    fn wrapped(copies: u8, fake: Fake) -> (Arc<Fake>, HandshakeCopies) {
        let fake = Arc::new(fake);
        let socket = HandshakeCopies::new(fake.clone(), copies);
        (fake, socket)
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
    fn handshake_datagrams_go_twice_and_the_rest_once() {
        let (fake, socket) = wrapped(2, Fake::default());
        socket.try_send(&transmit(addr(1), &LONG, None)).unwrap();
        socket.try_send(&transmit(addr(1), &SHORT, None)).unwrap();
        assert_eq!(
            sent(&fake),
            vec![LONG.to_vec(), LONG.to_vec(), SHORT.to_vec()]
        );
        // One copy only: no more.
        let (fake, socket) = wrapped(1, Fake::default());
        socket.try_send(&transmit(addr(1), &LONG, None)).unwrap();
        assert_eq!(sent(&fake), vec![LONG.to_vec()]);
    }

    #[test]
    fn a_batch_copies_its_handshake_datagrams_only() {
        let (fake, socket) = wrapped(2, Fake::default());
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
        let (fake, socket) = wrapped(3, blocked);
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
        let (fake, socket) = wrapped(3, blocked);
        socket.try_send(&transmit(addr(1), &LONG, None)).unwrap();
        assert_eq!(sent(&fake), vec![LONG.to_vec()]);
    }

    #[test]
    fn the_sockets_abilities_are_passed_through() {
        // quinn reads these: batches, receive offload, and whether path MTU discovery may run.
        let (_, socket) = wrapped(2, Fake::default());
        assert_eq!(socket.max_transmit_segments(), 64);
        assert_eq!(socket.max_receive_segments(), 7);
        assert!(!socket.may_fragment());
        assert_eq!(socket.local_addr().unwrap(), addr(9));
    }

    /// What came in is counted: an answer to an address heard from is copied within three
    /// times what came from it.
    #[tokio::test]
    async fn an_answer_is_copied_within_the_amplification_limit() {
        let client = addr(7);
        let mut hello = vec![0u8; 1200];
        hello[0] = 0xc0;
        let fake = Fake {
            incoming: Mutex::new(Some((client, hello))),
            ..Fake::default()
        };
        let (fake, socket) = wrapped(3, fake);
        let mut buf = vec![0u8; 2048];
        let mut meta = [RecvMeta::default()];
        let n = std::future::poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut buf)];
            socket.poll_recv(cx, &mut bufs, &mut meta)
        })
        .await
        .unwrap();
        assert_eq!((n, meta[0].len, meta[0].addr), (1, 1200, client));
        let answer = [0xe0u8; 1000];
        for _ in 0..3 {
            socket.try_send(&transmit(client, &answer, None)).unwrap();
        }
        // The first answer three times (3,000 of the 3,600 bytes allowed), the next two once
        // each (quinn keeps the limit for its originals).
        assert_eq!(sent(&fake).len(), 5);
    }
}
