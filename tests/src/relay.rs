//! A UDP relay on 127.0.0.1 between clients and one upstream: a fault injector needing no
//! root and no `tc netem`. It can cut and restore the link (a partition), drop datagrams at
//! random, delay them, and cap the rate (a bottleneck with a bounded queue, tail drop).
//!
//! Each client address gets its own socket towards the upstream, as behind a NAT, so the
//! upstream's answers go back to the client that asked. (With one shared socket, a closed
//! endpoint's last datagrams made the relay send a new endpoint's handshake answers to the
//! old one, which added half a second to every dial after the first.) The impairments are
//! one link: every client shares the bottleneck of each direction.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::Instant;

#[derive(Debug)]
struct Control {
    cut: AtomicBool,
    /// Drop what the upstream sends to clients only (as for a sender with a forged source
    /// address, which never sees the answers).
    cut_down: AtomicBool,
    /// Drop probability in parts per million.
    loss_ppm: AtomicU32,
    delay_us: AtomicU64,
    /// Bottleneck rate in bits per second (0: unlimited).
    rate_bps: AtomicU64,
    dropped: AtomicU64,
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
    /// Datagrams from clients that open with a QUIC long header (a handshake's), forwarded
    /// or not.
    handshake_up: AtomicU64,
    /// The same from the upstream to clients.
    handshake_down: AtomicU64,
    /// How many times each distinct upstream handshake datagram came (by a hash of its
    /// bytes), since last asked: QUIC never sends the same bytes twice of itself (a packet
    /// sent again gets a new number), so more than once is a node's copies.
    handshake_up_seen: Mutex<HashMap<u64, u32>>,
    /// The largest datagram forwarded since last asked.
    largest: AtomicU64,
    /// Per direction (0: to upstream, 1: to clients): when the bottleneck is free.
    free_at: Mutex<[Instant; 2]>,
    rng: Mutex<u64>,
}

impl Control {
    fn new(seed: u64) -> Control {
        Control {
            cut: AtomicBool::new(false),
            cut_down: AtomicBool::new(false),
            loss_ppm: AtomicU32::new(0),
            delay_us: AtomicU64::new(0),
            rate_bps: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            forwarded_bytes: AtomicU64::new(0),
            handshake_up: AtomicU64::new(0),
            handshake_down: AtomicU64::new(0),
            handshake_up_seen: Mutex::new(HashMap::new()),
            largest: AtomicU64::new(0),
            free_at: Mutex::new([Instant::now(); 2]),
            rng: Mutex::new(seed),
        }
    }

    /// When a datagram of `n` bytes going `dir` arrives at the far end, or `None` if it is
    /// dropped (cut, a full queue, or random loss).
    fn admit(&self, n: usize, dir: usize) -> Option<Instant> {
        if self.cut.load(Ordering::Relaxed) || (dir == 1 && self.cut_down.load(Ordering::Relaxed)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let now = Instant::now();
        let mut depart = now;
        if let Some(ns) =
            (n as u64 * 8 * 1_000_000_000).checked_div(self.rate_bps.load(Ordering::Relaxed))
        {
            let mut free_at = self.free_at.lock().expect("relay clock");
            let start = free_at[dir].max(now);
            if start - now > MAX_QUEUE {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            depart = start + Duration::from_nanos(ns);
            free_at[dir] = depart;
        }
        // Random loss after the bottleneck: a datagram lost in transit has still used its
        // share of the link, as on a real lossy line.
        let r = {
            let mut rng = self.rng.lock().expect("relay rng");
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        };
        if (r % 1_000_000) < u64::from(self.loss_ppm.load(Ordering::Relaxed)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        self.forwarded_bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.largest.fetch_max(n as u64, Ordering::Relaxed);
        Some(depart + Duration::from_micros(self.delay_us.load(Ordering::Relaxed)))
    }
}

/// Send `datagram` from `socket` to `to` at `at` (at once if that has passed).
async fn send_at(socket: &Arc<UdpSocket>, datagram: &[u8], to: SocketAddr, at: Instant) {
    if at <= Instant::now() {
        let _ = socket.send_to(datagram, to).await;
    } else {
        let (s, d) = (socket.clone(), datagram.to_vec());
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let _ = s.send_to(&d, to).await;
        });
    }
}

/// A running relay. Dropping it stops it taking datagrams; those already delayed in flight
/// are still delivered.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    ctl: Arc<Control>,
    /// Held for its drop, which aborts the relay's task.
    _task: JoinSet<()>,
}

/// Longest queue the bottleneck holds before it drops (like a router buffer).
const MAX_QUEUE: Duration = Duration::from_millis(400);

impl Relay {
    /// Relay datagrams between whoever sends to [`Relay::addr`] and `upstream`. Must be
    /// called inside a tokio runtime.
    pub fn start(upstream: SocketAddr) -> std::io::Result<Relay> {
        let std_socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        std_socket.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(std_socket)?);
        let addr = socket.local_addr()?;
        let ctl = Arc::new(Control::new(
            0x9e37_79b9_7f4a_7c15u64 ^ u64::from(addr.port()),
        ));
        let mut tasks = JoinSet::new();
        let c = ctl.clone();
        tasks.spawn(async move {
            // The answers' tasks live as long as this one: their set, dropped with it, aborts
            // them.
            let mut answers = JoinSet::new();
            let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let out = match clients.get(&from) {
                    Some(s) => s.clone(),
                    None => {
                        // On another loopback address where it can: a port the kernel
                        // picks on 127.0.0.1 may be one a stopped node is about to bind
                        // again, and this socket lives as long as the relay (a soak's
                        // restart once failed on it).
                        let bound = match UdpSocket::bind("127.0.0.2:0").await {
                            Ok(s) => Ok(s),
                            Err(_) => UdpSocket::bind("127.0.0.1:0").await,
                        };
                        let Ok(s) = bound else {
                            continue;
                        };
                        let s = Arc::new(s);
                        clients.insert(from, s.clone());
                        let (back, listen, c) = (s.clone(), socket.clone(), c.clone());
                        answers.spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok((n, src)) = back.recv_from(&mut buf).await {
                                if src != upstream {
                                    continue;
                                }
                                if buf[..n].first().is_some_and(|b| b & 0x80 != 0) {
                                    c.handshake_down.fetch_add(1, Ordering::Relaxed);
                                }
                                if let Some(at) = c.admit(n, 1) {
                                    send_at(&listen, &buf[..n], from, at).await;
                                }
                            }
                        });
                        s
                    }
                };
                if buf[..n].first().is_some_and(|b| b & 0x80 != 0) {
                    c.handshake_up.fetch_add(1, Ordering::Relaxed);
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    std::hash::Hash::hash(&buf[..n], &mut h);
                    let mut seen = c
                        .handshake_up_seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    *seen.entry(std::hash::Hasher::finish(&h)).or_default() += 1;
                }
                if let Some(at) = c.admit(n, 0) {
                    send_at(&out, &buf[..n], upstream, at).await;
                }
            }
        });
        Ok(Relay {
            addr,
            ctl,
            _task: tasks,
        })
    }

    /// Where the client should send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drop everything both ways until [`Relay::restore`].
    pub fn cut(&self) {
        self.ctl.cut.store(true, Ordering::Relaxed);
    }

    /// Forward again.
    pub fn restore(&self) {
        self.ctl.cut.store(false, Ordering::Relaxed);
        self.ctl.cut_down.store(false, Ordering::Relaxed);
    }

    /// Drop what the upstream sends to clients, and only that, until [`Relay::restore`]:
    /// the clients' datagrams arrive as from a sender whose source address is forged.
    pub fn cut_down(&self) {
        self.ctl.cut_down.store(true, Ordering::Relaxed);
    }

    /// Drop each datagram with probability `p` (0.0-1.0).
    pub fn set_loss(&self, p: f64) {
        self.ctl
            .loss_ppm
            .store((p.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
    }

    /// Delay every datagram by `d` (one way).
    pub fn set_delay(&self, d: Duration) {
        self.ctl
            .delay_us
            .store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cap each direction at `bits_per_second` (0: unlimited).
    pub fn set_rate(&self, bits_per_second: u64) {
        self.ctl.rate_bps.store(bits_per_second, Ordering::Relaxed);
    }

    /// Datagrams dropped (cut, random loss or a full queue).
    pub fn dropped(&self) -> u64 {
        self.ctl.dropped.load(Ordering::Relaxed)
    }

    /// The largest datagram forwarded (either way) since the last call.
    pub fn take_largest(&self) -> u64 {
        self.ctl.largest.swap(0, Ordering::Relaxed)
    }

    /// Datagrams from clients that opened with a QUIC long header (a handshake's).
    pub fn handshakes_upstream(&self) -> u64 {
        self.ctl.handshake_up.load(Ordering::Relaxed)
    }

    /// The upstream handshake datagrams since the last call, as (times a datagram came ->
    /// how many distinct datagrams came that many times).
    pub fn take_handshake_copies(&self) -> std::collections::BTreeMap<u32, u64> {
        let seen = std::mem::take(
            &mut *self
                .ctl
                .handshake_up_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let mut out = std::collections::BTreeMap::new();
        for times in seen.into_values() {
            *out.entry(times).or_default() += 1;
        }
        out
    }

    /// Datagrams from the upstream to clients that opened with a QUIC long header.
    pub fn handshakes_downstream(&self) -> u64 {
        self.ctl.handshake_down.load(Ordering::Relaxed)
    }

    /// Datagrams and bytes forwarded.
    pub fn forwarded(&self) -> (u64, u64) {
        (
            self.ctl.forwarded.load(Ordering::Relaxed),
            self.ctl.forwarded_bytes.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_client_gets_its_own_answers() {
        // An echo server upstream.
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], from).await;
            }
        });
        let relay = Relay::start(upstream).unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Interleaved: `b` speaks last, yet `a`'s answer still reaches `a`.
        a.send_to(b"from a", relay.addr()).await.unwrap();
        b.send_to(b"from b", relay.addr()).await.unwrap();
        let mut buf = [0u8; 64];
        for (socket, want) in [(&a, b"from a"), (&b, b"from b")] {
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf[..n], want);
        }
        assert_eq!(relay.forwarded().0, 4);
    }
}
