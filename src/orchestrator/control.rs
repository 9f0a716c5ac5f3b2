//! The control socket of a running orchestrator: a Unix socket in a private (0700)
//! directory `$TMPDIR/gh-runner-microvm-<uid>/<prefix>.control/`, answering `status`
//! and `drain` to its own user only, and the client side of both subcommands.
//! Never TCP, never anything a guest can reach. It reads the fleet; it does not
//! change loops (a drain only raises the stop that SIGTERM raises).

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// The orchestrator's exit status, once it is known (for waiting `drain`s).
    ended: Arc<watch::Sender<Option<u8>>>,
    /// `drain` connections still to be told the exit status.
    waiting: Arc<AtomicUsize>,
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
            ended: Arc::new(watch::channel(None).0),
            waiting: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Tell every waiting `drain` the orchestrator's exit status `code` (at most
    /// a second's wait for them to have it).
    pub(super) async fn finish(&self, code: u8) {
        let _ = self.ended.send(Some(code));
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.waiting.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Answer requests for the life of the runtime: `status` from `fleet`,
    /// `drain` by setting `stop` (then the connection stays open until
    /// [`Control::finish`] gives it the exit status, so `drain` can wait for it).
    pub(super) fn serve(&mut self, fleet: Arc<Mutex<Fleet>>, stop: Arc<watch::Sender<bool>>) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let (ended, waiting) = (self.ended.clone(), self.waiting.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, say: do not spin the loops' runtime.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let ended = Ended {
                    status: ended.subscribe(),
                    waiting: waiting.clone(),
                };
                tokio::spawn(answer(stream, fleet.clone(), stop.clone(), ended));
            }
        });
    }
}

/// What a `drain` connection waits for: the exit status, and the count of those
/// still waiting for it.
struct Ended {
    status: watch::Receiver<Option<u8>>,
    waiting: Arc<AtomicUsize>,
}

async fn answer(
    mut stream: tokio::net::UnixStream,
    fleet: Arc<Mutex<Fleet>>,
    stop: Arc<watch::Sender<bool>>,
    mut ended: Ended,
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
            ended.waiting.fetch_add(1, Ordering::SeqCst);
            let _ = stop.send(true);
            r#"{"draining":true}"#.to_string()
        }
        other => serde_json::json!({ "error": format!("unknown request {:?}", other.chars().take(32).collect::<String>()) }).to_string(),
    };
    let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
    if line.trim() == "drain" {
        // Held until the orchestrator has cleaned up: then its exit status.
        if let Ok(code) = ended.status.wait_for(Option::is_some).await.map(|c| *c) {
            let done = serde_json::json!({ "ended": true, "exit": code });
            let _ = write.write_all(format!("{done}\n").as_bytes()).await;
        }
        ended.waiting.fetch_sub(1, Ordering::SeqCst);
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
    /// The drained orchestrator ended badly, or without saying how.
    #[error("the orchestrator {prefix:?} ended {how}; its log says why")]
    EndedBadly {
        /// The prefix.
        prefix: String,
        /// With which exit status, or that it did not say.
        how: String,
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
/// ended, with its exit status (`None` when it ended without saying: killed).
pub fn drain(tmp: &Path, prefix: &str, wait: bool) -> Result<Option<u8>, ControlError> {
    let (mut s, path) = connect(tmp, prefix)?;
    let err = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    s.write_all(b"drain\n").map_err(err)?;
    let mut lines = std::io::BufReader::new(Read::take(s, MAX_ANSWER));
    let mut line = String::new();
    lines.read_line(&mut line).map_err(err)?;
    if !line.contains(r#""draining":true"#) {
        return Err(ControlError::Answer {
            path,
            answer: line.chars().take(200).collect(),
        });
    }
    if !wait {
        return Ok(Some(0));
    }
    let _ = lines.get_ref().get_ref().set_read_timeout(None);
    line.clear();
    // `{"ended":true,"exit":N}` once it has cleaned up; EOF alone if it was killed.
    let _ = lines.read_line(&mut line);
    Ok(serde_json::from_str::<serde_json::Value>(&line)
        .ok()
        .and_then(|v| v.get("exit")?.as_u64())
        .and_then(|c| u8::try_from(c).ok()))
}
