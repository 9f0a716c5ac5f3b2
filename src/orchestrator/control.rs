//! The control socket of a running orchestrator: a Unix socket in a private (0700)
//! directory `$TMPDIR/gh-runner-microvm-<uid>/<prefix>.control/`, answering `status`
//! and `drain` to its own user only, and the client side of both subcommands.
//! Never TCP, never anything a guest can reach. It reads the fleet; it does not
//! change loops (a drain only raises the stop that SIGTERM raises).

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::fleet::{Fleet, Status};
use super::{io, OrchestratorError};

/// The socket's name in the control directory.
const SOCKET: &str = "control.sock";
/// The longest request line.
const MAX_REQUEST: u64 = 64;
/// The longest answer a client reads.
const MAX_ANSWER: u64 = 4 << 20;
/// How long either side waits for the other's line.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The control directory of `prefix` in `dir`, this user's private temporary
/// directory (`types::paths::private_tmp`: users share no name in a shared one).
pub fn dir(private: &Path, prefix: &str) -> PathBuf {
    private.join(format!("{prefix}.control"))
}

/// The bound socket; the directory is removed when it is dropped.
pub(super) struct Control {
    dir: PathBuf,
    listener: Option<tokio::net::UnixListener>,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(SOCKET));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Control {
    /// Make (or take back, when it is ours and private) the control directory and
    /// bind its socket. Called under the prefix lock: a socket there is a dead
    /// orchestrator's.
    pub(super) fn bind(tmp: &Path, prefix: &str) -> Result<Control, OrchestratorError> {
        let dir = dir(tmp, prefix);
        protocol::safefs::ensure_private_dir(&dir)
            .map_err(io(format!("use the control directory {}", dir.display())))?;
        let path = dir.join(SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(io(format!("listen on {}", path.display())))?;
        Ok(Control {
            dir,
            listener: Some(listener),
        })
    }

    /// Answer requests for the life of the runtime: `status` from `fleet`,
    /// `drain` by setting `stop` (then the connection stays open until this
    /// process ends, so `drain` can wait for it).
    pub(super) fn serve(&mut self, fleet: Arc<Mutex<Fleet>>, stop: Arc<watch::Sender<bool>>) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, say: do not spin the loops' runtime.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                tokio::spawn(answer(stream, fleet.clone(), stop.clone()));
            }
        });
    }
}

async fn answer(
    mut stream: tokio::net::UnixStream,
    fleet: Arc<Mutex<Fleet>>,
    stop: Arc<watch::Sender<bool>>,
) {
    // The directory already keeps others out; the peer's uid is checked too.
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    match stream.peer_cred() {
        Ok(c) if c.uid() == me || c.uid() == 0 => {}
        _ => return,
    }
    let (read, mut write) = stream.split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    match tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    let reply = match line.trim() {
        "status" => {
            let st = match fleet.lock() {
                Ok(f) => f.status(),
                Err(_) => return,
            };
            serde_json::to_string(&st).unwrap_or_default()
        }
        "drain" => {
            tracing::info!("drain asked for on the control socket");
            let _ = stop.send(true);
            r#"{"draining":true}"#.to_string()
        }
        other => serde_json::json!({ "error": format!("unknown request {:?}", other.chars().take(32).collect::<String>()) }).to_string(),
    };
    let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
    if line.trim() == "drain" {
        // Held until this process ends: the client's EOF says the orchestrator is gone.
        std::future::pending::<()>().await;
    }
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens for the prefix.
    #[error("no orchestrator with prefix {prefix:?} is running on this host as this user (nothing answers at {}); start one, or give its -p (and the TMPDIR it runs with)", path.display())]
    NotRunning {
        /// The prefix.
        prefix: String,
        /// The socket looked for.
        path: PathBuf,
    },
    /// The exchange failed.
    #[error("cannot talk to the orchestrator at {}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not what was expected.
    #[error("the orchestrator at {} answered {answer:?}", path.display())]
    Answer {
        /// The socket.
        path: PathBuf,
        /// What came (cut).
        answer: String,
    },
}

fn connect(tmp: &Path, prefix: &str) -> Result<(UnixStream, PathBuf), ControlError> {
    let path = dir(tmp, prefix).join(SOCKET);
    match UnixStream::connect(&path) {
        Ok(s) => {
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            let _ = s.set_write_timeout(Some(IO_TIMEOUT));
            Ok((s, path))
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(ControlError::NotRunning {
                prefix: prefix.to_string(),
                path,
            })
        }
        Err(source) => Err(ControlError::Io { path, source }),
    }
}

fn request(stream: &mut UnixStream, path: &Path, what: &str) -> Result<String, ControlError> {
    let err = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    stream
        .write_all(format!("{what}\n").as_bytes())
        .map_err(err)?;
    let mut line = String::new();
    std::io::BufReader::new(Read::take(&mut *stream, MAX_ANSWER))
        .read_line(&mut line)
        .map_err(err)?;
    Ok(line)
}

/// Ask the orchestrator of `prefix` for its status.
pub fn status(tmp: &Path, prefix: &str) -> Result<Status, ControlError> {
    let (mut s, path) = connect(tmp, prefix)?;
    let line = request(&mut s, &path, "status")?;
    serde_json::from_str(&line).map_err(|_| ControlError::Answer {
        path,
        answer: line.chars().take(200).collect(),
    })
}

/// Ask the orchestrator of `prefix` to drain; with `wait`, return once it has
/// ended (its connection closes when the process exits).
pub fn drain(tmp: &Path, prefix: &str, wait: bool) -> Result<(), ControlError> {
    let (mut s, path) = connect(tmp, prefix)?;
    let line = request(&mut s, &path, "drain")?;
    if !line.contains(r#""draining":true"#) {
        return Err(ControlError::Answer {
            path,
            answer: line.chars().take(200).collect(),
        });
    }
    if wait {
        let _ = s.set_read_timeout(None);
        let mut sink = [0u8; 64];
        // EOF (or an error) once the orchestrator is gone; a well-behaved one sends nothing more.
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    }
    Ok(())
}
