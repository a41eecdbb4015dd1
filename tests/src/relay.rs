//! A UDP relay on 127.0.0.1 between one client and one upstream: a fault injector needing no
//! root and no `tc netem`. It can cut and restore the link (a partition), drop datagrams at
//! random, delay them, and cap the rate (a bottleneck with a bounded queue, tail drop).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug, Default)]
struct Control {
    cut: AtomicBool,
    /// Drop probability in parts per million.
    loss_ppm: AtomicU32,
    delay_us: AtomicU64,
    /// Bottleneck rate in bits per second (0: unlimited).
    rate_bps: AtomicU64,
    dropped: AtomicU64,
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
}

/// A running relay. Dropping it stops the relay.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    ctl: Arc<Control>,
    task: JoinHandle<()>,
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
        let ctl = Arc::new(Control::default());
        let c = ctl.clone();
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 65_536];
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(addr.port());
            // Per direction (0: to upstream, 1: to client): when the bottleneck is free.
            let mut free_at = [Instant::now(), Instant::now()];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let (to, dir) = if from == upstream {
                    match client {
                        Some(cl) => (cl, 1),
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    (upstream, 0)
                };
                if c.cut.load(Ordering::Relaxed) {
                    c.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let now = Instant::now();
                let mut depart = now;
                if let Some(ns) =
                    (n as u64 * 8 * 1_000_000_000).checked_div(c.rate_bps.load(Ordering::Relaxed))
                {
                    let start = free_at[dir].max(now);
                    if start - now > MAX_QUEUE {
                        c.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    depart = start + Duration::from_nanos(ns);
                    free_at[dir] = depart;
                }
                // Random loss after the bottleneck: a datagram lost in transit has still used
                // its share of the link, as on a real lossy line.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if (rng % 1_000_000) < u64::from(c.loss_ppm.load(Ordering::Relaxed)) {
                    c.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let at = depart + Duration::from_micros(c.delay_us.load(Ordering::Relaxed));
                c.forwarded.fetch_add(1, Ordering::Relaxed);
                c.forwarded_bytes.fetch_add(n as u64, Ordering::Relaxed);
                let datagram = buf[..n].to_vec();
                if at <= now {
                    let _ = socket.send_to(&datagram, to).await;
                } else {
                    let s = socket.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at).await;
                        let _ = s.send_to(&datagram, to).await;
                    });
                }
            }
        });
        Ok(Relay { addr, ctl, task })
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

    /// Datagrams and bytes forwarded.
    pub fn forwarded(&self) -> (u64, u64) {
        (
            self.ctl.forwarded.load(Ordering::Relaxed),
            self.ctl.forwarded_bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
