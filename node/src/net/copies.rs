//! A UDP socket that sends each QUIC handshake datagram more than once.
//!
//! On a line that loses datagrams at random, a handshake datagram lost waits out QUIC's probe
//! timeout (three round trips or more, doubling with each loss in a row) before it is sent
//! again. A handshake is a few datagrams each way, so at 30% loss most handshakes lose one.
//! Sent twice, a datagram is lost only when both copies are (9% at 30%), for a few KB more a
//! link. QUIC drops the second copy that arrives as a duplicate packet number, so the peer
//! needs no setting of its own; its flights are sent twice only if it sets this too.
//!
//! Only datagrams that open with a long header are copied: the handshake's (Initial and
//! Handshake packets, with whatever is coalesced behind them). Once the handshake is done a
//! link sends short headers only, so the copies never touch the transfer that follows.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The first bit of a QUIC packet: set in a long header (RFC 9000, 17.2).
const LONG_HEADER: u8 = 0x80;

/// A socket sending each handshake datagram `copies` times in all.
pub(super) struct HandshakeCopies {
    inner: Arc<dyn AsyncUdpSocket>,
    copies: u8,
}

impl HandshakeCopies {
    pub(super) fn new(inner: Arc<dyn AsyncUdpSocket>, copies: u8) -> Self {
        HandshakeCopies { inner, copies }
    }
}

impl fmt::Debug for HandshakeCopies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeCopies")
            .field("copies", &self.copies)
            .finish_non_exhaustive()
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
        // The copies are best effort: the original went, and a full socket buffer is a
        // reason to send less, not to have quinn send the original again.
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for datagram in transmit.contents.chunks(size).filter(|d| long_header(d)) {
            let copy = Transmit {
                contents: datagram,
                segment_size: None,
                ..*transmit
            };
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

    /// What a receiver gets from `transmits` sent through a socket copying twice.
    async fn sent_through(transmits: &[(&[u8], Option<usize>)]) -> Vec<Vec<u8>> {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let runtime = quinn::default_runtime().unwrap();
        let inner = runtime
            .wrap_udp_socket(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        let socket = Arc::new(HandshakeCopies::new(inner, 2));
        let mut poller = socket.clone().create_io_poller();
        for &(contents, segment_size) in transmits {
            let t = Transmit {
                destination: receiver.local_addr().unwrap(),
                ecn: None,
                contents,
                segment_size,
                src_ip: None,
            };
            // A fresh socket is not known to be writable until polled.
            while let Err(e) = socket.try_send(&t) {
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
                std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                    .await
                    .unwrap();
            }
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = receiver.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    }

    #[tokio::test]
    async fn handshake_datagrams_go_twice_and_the_rest_once() {
        let (long, short) = ([0xc3u8, 0, 0, 0, 1, 7], [0x43u8, 9, 9, 9, 9, 9]);
        let got = sent_through(&[(&long, None), (&short, None)]).await;
        assert_eq!(got, vec![long.to_vec(), long.to_vec(), short.to_vec()]);
    }

    #[tokio::test]
    async fn a_batch_copies_its_handshake_datagrams_only() {
        let inner = quinn::default_runtime()
            .unwrap()
            .wrap_udp_socket(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        if inner.max_transmit_segments() < 3 {
            // No segmentation offload here: quinn never hands this socket a batch.
            return;
        }
        // Three datagrams of 4 bytes in one transmit: a handshake one, a short one, a
        // handshake one (the last may be shorter, as in a real batch).
        let batch = [0xc0u8, 1, 1, 1, 0x40, 2, 2, 2, 0xe0, 3];
        let got = sent_through(&[(&batch, Some(4))]).await;
        let (a, b, c) = (&batch[0..4], &batch[4..8], &batch[8..]);
        assert_eq!(got, vec![a, b, c, a, c]);
    }
}
