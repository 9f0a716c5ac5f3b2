//! The runner child from its start to its exit status: signals, the power button and
//! `.trm` become a stop (TERM when idle or after the grace, KILL later). Never set-up.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use protocol::exit;

use crate::watcher::Watcher;
use crate::Failure;

/// After TERM, how long the runner gets before KILL.
const KILL_AFTER: Duration = Duration::from_secs(10);
/// Fallback poll of `.trm`: inotify does not see host-side writes on 9p/virtio-fs.
const TICK: Duration = Duration::from_millis(1000);

/// Block the signals we handle synchronously and read them from a descriptor. Call
/// it before anything is spawned.
pub fn block_signals() -> Result<SignalFd, Failure> {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(|e| Failure::Setup(format!("sigprocmask: {e}")))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Failure::Setup(format!("signalfd: {e}")))
}

/// Why the runner is being stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StopReason {
    Signal(Signal),
    Trm,
    PowerButton,
}

/// The running runner and the state of its stop.
pub struct Supervisor {
    child: Pid,
    /// Exists while a job runs (the job hooks' marker).
    busy: PathBuf,
    /// `<id>.job` in the loop directory: the host's view of `busy` (status only).
    job_mark: Option<PathBuf>,
    /// Whether `job_mark` says a job runs.
    marked_busy: bool,
    /// How long a running job may go on once a stop is asked for.
    grace: Duration,
    stop: Option<(StopReason, Instant)>,
    termed_at: Option<Instant>,
    killed: bool,
}

impl Supervisor {
    /// Supervise `child`, whose job hooks mark a running job with `busy`; the host
    /// sees it as `job_mark` (`<id>.job` beside `.tkn`) when there is a loop directory.
    pub fn new(
        child: Pid,
        busy: PathBuf,
        job_mark: Option<PathBuf>,
        grace_secs: u64,
    ) -> Supervisor {
        Supervisor {
            child,
            busy,
            job_mark,
            marked_busy: false,
            grace: Duration::from_secs(grace_secs),
            stop: None,
            termed_at: None,
            killed: false,
        }
    }

    /// Was a stop asked for (then the host is told with `.brk`)?
    pub fn stopped(&self) -> bool {
        self.stop.is_some()
    }

    fn request_stop(&mut self, why: StopReason) {
        if self.stop.is_none() {
            log!(
                "stop requested ({why:?}); {}",
                if self.busy.exists() {
                    format!(
                        "a job is running: it may finish within {}s",
                        self.grace.as_secs()
                    )
                } else {
                    "the runner is idle: stopping it now".into()
                }
            );
            self.stop = Some((why, Instant::now()));
        }
    }

    fn check_trm(&mut self, watcher: &mut Watcher) {
        if watcher.trm_asks_stop() {
            self.request_stop(StopReason::Trm);
        }
    }

    /// Advance the stop state machine: TERM when idle (or after the grace), KILL later.
    fn advance(&mut self) {
        let Some((_, since)) = self.stop else { return };
        let now = Instant::now();
        match self.termed_at {
            None => {
                let busy = self.busy.exists();
                let grace_over = now >= since + self.grace;
                if !busy || grace_over {
                    if busy {
                        log!(
                            "grace of {}s is over: terminating the job",
                            self.grace.as_secs()
                        );
                    }
                    let _ = kill(self.child, Signal::SIGTERM);
                    self.termed_at = Some(now);
                }
            }
            Some(t) if !self.killed && now >= t + KILL_AFTER => {
                log!(
                    "runner still alive {}s after SIGTERM: killing it",
                    KILL_AFTER.as_secs()
                );
                let _ = killpg(self.child, Signal::SIGKILL);
                self.killed = true;
            }
            Some(_) => {}
        }
    }

    /// Mirror the job hooks' marker into `<id>.job` for the host's status (within a
    /// tick). Best effort: a failure only makes the host's status less precise.
    fn mark_job(&mut self, busy: bool) {
        let Some(mark) = &self.job_mark else { return };
        if busy == self.marked_busy {
            return;
        }
        let done = if busy {
            protocol::safefs::write_replace(mark, b"", 0o644)
        } else {
            protocol::safefs::remove(mark)
        };
        match done {
            Ok(()) => self.marked_busy = busy,
            Err(e) => log!("cannot update {}: {e}", mark.display()),
        }
    }

    /// Wait for the runner's exit, reaping every other child (we may be a subreaper
    /// or PID 1), and stopping it when asked; then kill what is left of its job.
    /// The runner's status is the result (128+N when killed by signal N).
    pub fn wait(
        &mut self,
        signals: &SignalFd,
        buttons: &[OwnedFd],
        watcher: &mut Watcher,
    ) -> Result<u8, Failure> {
        self.check_trm(watcher);
        let status = loop {
            let timeout = PollTimeout::try_from(TICK).unwrap_or(PollTimeout::MAX);
            let mut fds = vec![
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(watcher.fd(), PollFlags::POLLIN),
            ];
            fds.extend(
                buttons
                    .iter()
                    .map(|b| PollFd::new(b.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Failure::Setup(format!("poll: {e}"))),
            }
            let pressed = fds[2..]
                .iter()
                .any(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)));
            if pressed {
                // The ACPI power button (QMP system_powerdown): drain the events, then stop.
                let mut buf = [0u8; 256];
                for b in buttons {
                    while nix::unistd::read(b, &mut buf).is_ok_and(|n| n > 0) {}
                }
                self.request_stop(StopReason::PowerButton);
            }
            while let Ok(Some(info)) = signals.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {}
                    Ok(s) => self.request_stop(StopReason::Signal(s)),
                    Err(_) => {}
                }
            }
            watcher.drain();
            // Reap everything; remember our child.
            let mut main_status = None;
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(ws) if ws.pid() == Some(self.child) => main_status = status_code(ws),
                    Ok(_) => {}
                }
            }
            if let Some(code) = main_status {
                break code;
            }
            self.check_trm(watcher);
            self.advance();
            self.mark_job(self.busy.exists());
        };
        self.mark_job(false);
        // Nothing of the job may outlive the runner.
        let _ = killpg(self.child, Signal::SIGKILL);
        log!("runner exited with status {status}");
        Ok(status)
    }
}

fn status_code(ws: WaitStatus) -> Option<u8> {
    match ws {
        WaitStatus::Exited(_, c) => Some(c as u8),
        WaitStatus::Signaled(_, s, _) => Some(exit::killed_by(s as i32)),
        _ => None,
    }
}
