//! systemd's service notifications (sd_notify, for `Type=notify` units): READY,
//! STATUS, STOPPING, watchdog pings and start-timeout extensions, sent as datagrams
//! to `$NOTIFY_SOCKET` (a path, or an abstract name when it starts with `@`).
//!
//! It only reports what it is told; it must not decide when the service is ready
//! or healthy (`supervise` does). Its variables never reach a child: `take_from_env`
//! removes them from our environment before any child is started, so no loop,
//! QEMU or podman can notify in our name.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::warn;

/// The variables systemd sets for the notification protocol.
const VARIABLES: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];
/// Without a watchdog, how often `keep_alive` extends the start timeout.
const EXTEND_EVERY: Duration = Duration::from_secs(10);

/// The service manager's socket and what was last said to it.
#[derive(Debug)]
pub(super) struct Service {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Half of `WATCHDOG_USEC`, when the watchdog is ours.
    ping_every: Option<Duration>,
    said: Mutex<Said>,
}

#[derive(Debug, Default)]
struct Said {
    ready: bool,
    status: String,
    last_ping: Option<Instant>,
    /// A send failed once (warned once, never fatal).
    failed: bool,
}

static SERVICE: OnceLock<Option<Service>> = OnceLock::new();

/// Read `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` once and remove them
/// from this process's environment, so that no child inherits them. Call it
/// first thing, while the process is still single-threaded (as libsystemd's
/// `sd_notify(unset_environment=1)` does).
pub fn take_from_env() {
    let value = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (socket, usec, pid) = (
        value("NOTIFY_SOCKET"),
        value("WATCHDOG_USEC"),
        value("WATCHDOG_PID"),
    );
    for k in VARIABLES {
        // Edition 2021: safe to call; sound here because no other thread runs yet.
        std::env::remove_var(k);
    }
    let service = socket.and_then(|s| {
        Service::new(&s, usec.as_deref(), pid.as_deref(), std::process::id())
            .map_err(|e| {
                warn!("NOTIFY_SOCKET={s:?} is not usable, systemd will not hear from us: {e}")
            })
            .ok()
    });
    let _ = SERVICE.set(service);
}

fn service() -> Option<&'static Service> {
    SERVICE.get().and_then(Option::as_ref)
}

/// READY=1 (once) with the status line: the service is up. systemd's start
/// timeout ends and its watchdog starts here.
pub fn ready(status: &str) {
    if let Some(s) = service() {
        s.ready(status);
    }
}

/// STATUS=: the one-line summary `systemctl status` shows, made by `line` only
/// under systemd; sent when it changes.
pub fn status(line: impl FnOnce() -> String) {
    if let Some(s) = service() {
        s.status(&line());
    }
}

/// WATCHDOG=1, when systemd watches us and half its interval has passed since the
/// last ping. Call it from the loop whose health it vouches for.
pub fn watchdog() {
    if let Some(s) = service() {
        s.watchdog(Instant::now());
    }
}

/// STOPPING=1: the orderly stop has begun (systemd stops the watchdog and runs
/// `TimeoutStopSec=` from here).
pub fn stopping() {
    if let Some(s) = service() {
        s.send("STOPPING=1");
    }
}

/// Run `work` (a bounded wait, such as a pass over GitHub that honours a rate
/// limit) without the watchdog or the start timeout firing meanwhile: before READY
/// the start timeout is extended, after it the watchdog is pinged — for at most
/// `limit`, after which the caller counts as wedged and systemd may act.
pub async fn keep_alive<F: std::future::Future>(limit: Duration, work: F) -> F::Output {
    let Some(s) = service() else {
        return work.await;
    };
    let every = s.ping_every.unwrap_or(EXTEND_EVERY);
    let end = Instant::now() + limit;
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tokio::time::sleep(every), if Instant::now() < end => s.alive(every),
        }
    }
}

impl Service {
    /// `socket` as systemd gives it; `usec` and `pid` the watchdog's variables;
    /// `me` our process id (the watchdog is ours when `WATCHDOG_PID` is unset or us).
    pub(super) fn new(
        socket: &str,
        usec: Option<&str>,
        pid: Option<&str>,
        me: u32,
    ) -> std::io::Result<Service> {
        let addr = if let Some(name) = socket.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        } else if socket.starts_with('/') {
            SocketAddr::from_pathname(socket)?
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "only a path or an @abstract name is supported",
            ));
        };
        let ours = pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(me));
        let ping_every = usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && ours)
            .map(|u| Duration::from_micros(u) / 2);
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Service {
            socket,
            addr,
            ping_every,
            said: Mutex::default(),
        })
    }

    fn said(&self) -> std::sync::MutexGuard<'_, Said> {
        self.said.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            let mut said = self.said();
            if !said.failed {
                said.failed = true;
                warn!("cannot notify systemd ({e}); the service state it shows may be stale");
            }
        }
    }

    fn ready(&self, status: &str) {
        let line = one_line(status);
        {
            let mut said = self.said();
            if said.ready {
                return;
            }
            said.ready = true;
            said.status = line.clone();
            said.last_ping = Some(Instant::now());
        }
        self.send(&format!("READY=1\nSTATUS={line}"));
    }

    fn status(&self, line: &str) {
        let line = one_line(line);
        {
            let mut said = self.said();
            if said.status == line {
                return;
            }
            said.status = line.clone();
        }
        self.send(&format!("STATUS={line}"));
    }

    fn watchdog(&self, now: Instant) {
        let Some(every) = self.ping_every else {
            return;
        };
        {
            let mut said = self.said();
            if said.last_ping.is_some_and(|t| now < t + every) {
                return;
            }
            said.last_ping = Some(now);
        }
        self.send("WATCHDOG=1");
    }

    /// `keep_alive`'s tick: extend the start timeout, or ping the watchdog.
    fn alive(&self, every: Duration) {
        if self.said().ready {
            self.watchdog(Instant::now());
        } else {
            let usec = (every * 3).as_micros();
            self.send(&format!("EXTEND_TIMEOUT_USEC={usec}"));
        }
    }
}

/// A status is one line: systemd ends the field at a newline.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r']).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> Vec<String> {
        let mut out = vec![];
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn speaks_to_a_path_socket_once_per_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        let s = Service::new(path.to_str().unwrap(), Some("2000000"), None, 7).unwrap();
        assert_eq!(s.ping_every, Some(Duration::from_secs(1)));
        s.ready("2 running\nsecond line");
        s.ready("again");
        s.status("2 running second line");
        s.status("1 running");
        let t0 = Instant::now();
        s.watchdog(t0); // within a second of READY: not yet
        s.watchdog(t0 + Duration::from_millis(1100));
        s.watchdog(t0 + Duration::from_millis(1500));
        s.watchdog(t0 + Duration::from_millis(2200));
        s.send("STOPPING=1");
        assert_eq!(
            recv(&sock),
            [
                "READY=1\nSTATUS=2 running second line",
                "STATUS=1 running",
                "WATCHDOG=1",
                "WATCHDOG=1",
                "STOPPING=1"
            ]
        );
    }

    #[test]
    fn speaks_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ghrm-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_nonblocking(true).unwrap();
        let s = Service::new(&format!("@{name}"), None, None, 7).unwrap();
        s.ready("up");
        assert_eq!(recv(&sock), ["READY=1\nSTATUS=up"]);
    }

    #[test]
    fn the_watchdog_of_another_process_is_not_ours() {
        let other = Service::new("/run/x", Some("1000000"), Some("8"), 7).unwrap();
        assert_eq!(other.ping_every, None);
        let ours = Service::new("/run/x", Some("1000000"), Some("7"), 7).unwrap();
        assert_eq!(ours.ping_every, Some(Duration::from_millis(500)));
        let off = Service::new("/run/x", Some("0"), None, 7).unwrap();
        assert_eq!(off.ping_every, None);
        assert!(Service::new("relative", None, None, 7).is_err());
        assert!(Service::new("vsock:2:1234", None, None, 7).is_err());
    }

    #[test]
    fn a_missing_listener_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let s = Service::new(dir.path().join("gone").to_str().unwrap(), None, None, 7).unwrap();
        s.ready("up");
        s.status("still up");
        assert!(s.said().failed);
    }
}
