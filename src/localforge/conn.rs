//! The local forge's connections: a listener whose connections a request handler
//! can reset (`SO_LINGER` 0, then close: the client reads ECONNRESET, as from a
//! proxy or load balancer dropping it). It must not decide which request is reset
//! (`routes` does, from the injected faults).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Accepts the forge's connections, each with its [`Resetter`].
pub(super) struct Listener(pub(super) TcpListener);

/// The handle a request holds on its own connection (axum's `ConnectInfo`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Resetter(Arc<AtomicBool>);

impl Resetter {
    /// Reset the connection at its next read or write (the handler's answer is
    /// never sent).
    pub(crate) fn reset(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One accepted connection.
pub(super) struct Conn {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Conn {
    /// `Some(error)` once the connection is to be reset: `SO_LINGER` 0 makes its
    /// close (when hyper drops it after this error) a RST instead of a FIN.
    fn resetting(&self) -> Option<io::Error> {
        if !self.reset.load(Ordering::SeqCst) {
            return None;
        }
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let _ =
            nix::sys::socket::setsockopt(&self.stream, nix::sys::socket::sockopt::Linger, &linger);
        Some(io::Error::from(io::ErrorKind::ConnectionReset))
    }
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = Resetter;

    async fn accept(&mut self) -> (Conn, Resetter) {
        loop {
            match self.0.accept().await {
                Ok((stream, _)) => {
                    let r = Resetter::default();
                    return (
                        Conn {
                            stream,
                            reset: r.0.clone(),
                        },
                        r,
                    );
                }
                // Out of descriptors, say: wait a little, as axum's own listener does.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Resetter> {
        Ok(Resetter::default())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>>
    for Resetter
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.resetting() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.resetting() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.resetting() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.resetting() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
