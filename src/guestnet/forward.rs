//! `--net-forward`: the host side of a forward. QEMU hands each guest connection
//! to a small helper (`runner --net-connect SOCKET`, started by QEMU, inside the
//! VM's namespace when it has one), which reaches this proxy over a Unix socket in
//! the VM's private state directory; the proxy, outside any namespace, connects to
//! the target. Owns the proxy and the helper; must not build QEMU options.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Guest connections a forward carries at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 32;

/// `--net-forward GUEST_IP:PORT=HOST_IP:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// Guest-side address.
    pub guest: (std::net::Ipv4Addr, u16),
    /// The target, on the host's side.
    pub host: SocketAddr,
}

impl Forward {
    /// Parse one `--net-forward` value.
    pub fn parse(s: &str) -> Result<Forward, String> {
        let bad = || {
            format!("--net-forward {s:?}: expected GUEST_IP:PORT=HOST_IP:PORT, e.g. 10.0.2.100:80=127.0.0.1:8080")
        };
        let (g, h) = s.split_once('=').ok_or_else(bad)?;
        let (gip, gport) = g.rsplit_once(':').ok_or_else(bad)?;
        let gip: std::net::Ipv4Addr = gip.parse().map_err(|_| bad())?;
        let gport: u16 = gport.parse().map_err(|_| bad())?;
        let host: SocketAddr = h.parse().map_err(|_| bad())?;
        if gport == 0 || host.port() == 0 {
            return Err(bad());
        }
        Ok(Forward {
            guest: (gip, gport),
            host,
        })
    }
}

/// One forward's listening proxy; it stops, and its socket goes, when dropped.
#[derive(Debug)]
pub struct Proxy {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Proxy {
    /// Listen at `path` (in a private directory) and carry each connection to
    /// `target`. Needs a running Tokio runtime.
    pub fn listen(path: &Path, target: SocketAddr) -> std::io::Result<Proxy> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn(async move {
            // The connections go with the proxy: aborting this task drops the set.
            let mut conns = tokio::task::JoinSet::new();
            // Said once per VM: the guest decides how often it happens.
            let mut said = false;
            loop {
                while conns.try_join_next().is_some() {}
                let Ok((mut guest, _)) = listener.accept().await else {
                    // EMFILE and the like: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    if !std::mem::replace(&mut said, true) {
                        tracing::warn!(
                            %target,
                            "a forward already carries {MAX_CONNECTIONS} connections: more are refused"
                        );
                    }
                    continue;
                };
                conns.spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut guest, &mut up).await;
                    }
                    drop(permit);
                });
            }
        });
        Ok(Proxy {
            path: path.to_path_buf(),
            task,
        })
    }
}

/// `runner --net-connect SOCKET`: the per-connection helper QEMU starts. Copies
/// standard input to the proxy and the proxy's answer to standard output.
pub fn net_connect(socket: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    let mut up = stream.try_clone()?;
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = stream;
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 16384];
    loop {
        match down.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
        }
    }
    drop(t);
    Ok(())
}

/// The helper command QEMU runs (through `/bin/sh -c`) for a guestfwd, as a QEMU
/// option value: shell-quoted, commas doubled. Paths with a quote are refused.
pub fn helper_command(helper: &Path, socket: &Path) -> Result<String, String> {
    let quote = |p: &Path| {
        let s = p
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", p.display()))?;
        if s.contains('\'') || s.chars().any(char::is_control) {
            return Err(format!(
                "{s}: a path with a quote or a control character cannot be handed to QEMU's forward helper"
            ));
        }
        Ok(format!("'{s}'"))
    };
    Ok(format!("{} --net-connect {}", quote(helper)?, quote(socket)?).replace(',', ",,"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_parses_and_refuses() {
        let f = Forward::parse("10.0.2.100:80=127.0.0.1:8080").unwrap();
        assert_eq!(f.guest.1, 80);
        assert_eq!(f.host, "127.0.0.1:8080".parse().unwrap());
        let f = Forward::parse("10.0.2.100:80=[::1]:8080").unwrap();
        assert_eq!(f.host, "[::1]:8080".parse().unwrap());
        for bad in [
            "10.0.2.100:80",
            "x:80=127.0.0.1:1",
            "10.0.2.100:80=127.0.0.1",
            "10.0.2.100:80=host:1",
            "10.0.2.100:80=127.0.0.1:1;reboot",
            "10.0.2.100:80=$(id):1",
            "10.0.2.100:80=127.0.0.1:1,guestfwd=x",
            "10.0.2.100:0=127.0.0.1:1",
        ] {
            assert!(
                Forward::parse(bad).unwrap_err().contains("--net-forward"),
                "{bad}"
            );
        }
    }

    #[test]
    fn helper_command_is_quoted_and_comma_escaped() {
        let c =
            helper_command(Path::new("/opt/a,b/runner"), Path::new("/tmp/x/fwd-0.sock")).unwrap();
        assert_eq!(c, "'/opt/a,,b/runner' --net-connect '/tmp/x/fwd-0.sock'");
        assert!(helper_command(Path::new("/tmp/it's/runner"), Path::new("/s")).is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn proxy_carries_a_connection_and_its_socket_goes_with_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = target.local_addr().unwrap();
        let path = dir.path().join("fwd-0.sock");
        let proxy = Proxy::listen(&path, addr).unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = target.accept().await.unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
        });
        let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut b = [0u8; 5];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hello");
        echo.await.unwrap();
        drop(proxy);
        assert!(!path.exists());
    }
}
