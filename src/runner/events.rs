//! The loop's reports to its orchestrator: with `RUNNER_EVENTS=1` (the
//! orchestrator sets it) each [`LoopEvent`] is one JSON line on the standard
//! output the loop was started with. It only sends; the orchestrator folds them
//! into `status` and `/metrics`.
//!
//! That pipe is moved to a close-on-exec descriptor and standard output becomes
//! standard error, so nothing the loop starts (QEMU, krunvm printing a guest's
//! console) can write to it: a guest cannot forge a loop's events.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::Mutex;

use crate::types::status::{LoopEvent, EVENTS_VAR};

static PIPE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Turn reporting on when the orchestrator asked for it, and report every answer
/// from GitHub. Call once, at the loop's start, before any thread or child exists.
pub fn init() {
    if std::env::var(EVENTS_VAR).as_deref() != Ok("1") {
        return;
    }
    // SAFETY: plain descriptor calls on 0–2 and a fresh descriptor; no memory is shared.
    let fd = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
    // SAFETY: as above; stdout becomes a copy of stderr.
    if fd < 0 || unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } < 0 {
        return;
    }
    // SAFETY: `fd` was just made by fcntl and is owned by nothing else.
    let pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    // An orchestrator that stops reading (stopped, wedged) must not stop the loop
    // with it: a full pipe drops events instead of blocking.
    // SAFETY: plain descriptor calls on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
    if let Ok(mut p) = PIPE.lock() {
        *p = Some(pipe);
    }
    crate::forge::observe(|route, code, remaining| {
        emit(&LoopEvent::Github {
            route: route.to_string(),
            code,
            remaining,
        })
    });
}

/// Report `e` (nothing when reporting is off). A failed write is ignored: the
/// orchestrator may be gone or not reading, and the loop goes on without it (a
/// line cut by a full pipe is skipped by the reader as not an event).
pub fn emit(e: &LoopEvent) {
    let Ok(mut pipe) = PIPE.lock() else { return };
    let Some(out) = pipe.as_mut() else { return };
    let mut line = e.to_line();
    line.push('\n');
    let _ = out.write_all(line.as_bytes());
}
