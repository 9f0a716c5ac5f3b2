//! Guest networking options: `--net` (user, restricted) and `--net-forward`
//! targets, and the `runner --net-connect` helper QEMU runs per forwarded
//! connection. It does not build QEMU's command line (`cmdline` does).

/// `--net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetMode {
    /// QEMU user networking: the guest reaches what the host reaches.
    User,
    /// User networking with `restrict=on`: only the `--net-forward` targets.
    Restricted,
}

/// `--net-forward GUEST_IP:PORT=HOST:PORT`: guest connections to GUEST_IP:PORT are
/// carried to HOST:PORT (one helper process per connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Guest-side address.
    pub guest: (std::net::Ipv4Addr, u16),
    /// Host-side `host:port`.
    pub host: String,
}

impl Forward {
    /// Parse one `--net-forward` value.
    pub fn parse(s: &str) -> Result<Forward, String> {
        let bad = || {
            format!("--net-forward {s:?}: expected GUEST_IP:PORT=HOST:PORT, e.g. 10.0.2.100:80=127.0.0.1:8080")
        };
        let (g, h) = s.split_once('=').ok_or_else(bad)?;
        let (gip, gport) = g.rsplit_once(':').ok_or_else(bad)?;
        let gip: std::net::Ipv4Addr = gip.parse().map_err(|_| bad())?;
        let gport: u16 = gport.parse().map_err(|_| bad())?;
        let (hhost, hport) = h.rsplit_once(':').ok_or_else(bad)?;
        if hhost.is_empty() || hport.parse::<u16>().is_err() || h.contains(',') {
            return Err(bad());
        }
        Ok(Forward {
            guest: (gip, gport),
            host: h.to_string(),
        })
    }
}

/// `runner --net-connect HOST:PORT`: the per-connection helper of a forward.
/// Copies standard input to the connection and the connection to standard output.
pub fn net_connect(target: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let stream = std::net::TcpStream::connect(target)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse() {
        let f = Forward::parse("10.0.2.100:80=127.0.0.1:8080").unwrap();
        assert_eq!(f.guest, ("10.0.2.100".parse().unwrap(), 80));
        assert_eq!(f.host, "127.0.0.1:8080");
        for bad in [
            "10.0.2.100:80",
            "x:80=127.0.0.1:1",
            "10.0.2.100:80=127.0.0.1",
            "10.0.2.100:80=a,b:1",
        ] {
            assert!(
                Forward::parse(bad).unwrap_err().contains("--net-forward"),
                "{bad}"
            );
        }
    }
}
