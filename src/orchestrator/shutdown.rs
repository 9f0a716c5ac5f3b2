//! An orderly stop of every loop on SIGINT/SIGTERM: TERM, a bounded wait (what
//! a busy job may take), then KILL. It only ends loops; each loop drains its VM.

use std::time::{Duration, Instant};

use tracing::warn;

use super::supervise::{LoopSlot, LoopState};
use crate::runner::config::RunnerConfig;

/// SIGTERM every running loop, wait for them (bounded by what a busy job may take),
/// then kill what is left.
pub(super) async fn shutdown(slots: &mut [LoopSlot], rcfg: &RunnerConfig) {
    for s in slots.iter() {
        if let LoopState::Running { child, .. } = &s.state {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
    let bound = Duration::from_secs(rcfg.grace) + Duration::from_secs(60);
    let deadline = Instant::now() + bound;
    for s in slots.iter_mut() {
        if let LoopState::Running { child, .. } = &mut s.state {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, child.wait()).await.is_err() {
                warn!(
                    "loop {} did not stop within {}s: killing it",
                    s.index,
                    bound.as_secs()
                );
                if let Some(pid) = child.id() {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.wait().await;
            }
            s.state = LoopState::Done;
        }
    }
}
