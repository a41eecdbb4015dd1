//! A UDP relay on 127.0.0.1 between one client and one upstream, which a test can cut and
//! restore (a partition), with no root and no `tc netem`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A running relay. Dropping it stops the relay.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Relay datagrams between whoever sends to [`Relay::addr`] and `upstream`. Must be
    /// called inside a tokio runtime.
    pub fn start(upstream: SocketAddr) -> std::io::Result<Relay> {
        let std_socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        std_socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(std_socket)?;
        let addr = socket.local_addr()?;
        let open = Arc::new(AtomicBool::new(true));
        let dropped = Arc::new(AtomicU64::new(0));
        let (o, d) = (open.clone(), dropped.clone());
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if !o.load(Ordering::Relaxed) {
                    d.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let to = if from == upstream {
                    match client {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    upstream
                };
                let _ = socket.send_to(&buf[..n], to).await;
            }
        });
        Ok(Relay {
            addr,
            open,
            dropped,
            task,
        })
    }

    /// Where the client should send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drop everything both ways until [`Relay::restore`].
    pub fn cut(&self) {
        self.open.store(false, Ordering::Relaxed);
    }

    /// Forward again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::Relaxed);
    }

    /// Datagrams dropped while cut.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
