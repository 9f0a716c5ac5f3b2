//! What a running VM may not do, checked on every tick of its loop's wait: fill
//! its loop directory, print without end, outlive `--vm-lifetime`, outlive its
//! runner at GitHub, or keep an idle runner offline there (a frozen guest). Owns
//! those bounds and their checks; it does not stop the VM (the iteration does,
//! with the reason it gets).

use std::path::Path;
use std::time::{Duration, Instant};

use protocol::safefs;

use super::Loop;
use crate::forge::RunnerInfo;

/// What a guest may keep in its loop directory while its VM runs: the protocol
/// needs four small files; a job that makes more is stopped before it fills the
/// host's `$TMPDIR` (often RAM) or slows every scan of it.
pub const LOOP_DIR_MAX_ENTRIES: u64 = 1000;
/// See [`LOOP_DIR_MAX_ENTRIES`]: bytes (allocated) in the loop directory.
pub const LOOP_DIR_MAX_BYTES: u64 = 16 << 20;

/// The loop directory and the console are measured every this many ticks (2 s).
const MEASURE_EVERY: u32 = 10;

/// The bounds of one running VM.
pub(super) struct Watch {
    started: Instant,
    ticks: u32,
    gone_check: Duration,
    last_gone_check: Instant,
    gone_since: Option<Instant>,
    /// GitHub showed the runner online at one of our checks.
    seen_online: bool,
    /// Since when GitHub shows it offline and idle (after it was seen online).
    offline_since: Option<Instant>,
}

impl Watch {
    /// For a VM started at `started`.
    pub(super) fn new(started: Instant) -> Watch {
        Watch {
            started,
            ticks: 0,
            gone_check: gone_check_interval(),
            last_gone_check: Instant::now(),
            gone_since: None,
            seen_online: false,
            offline_since: None,
        }
    }

    /// Called on every tick: why VM `name` must be killed now, if it must.
    pub(super) async fn breach(
        &mut self,
        lp: &Loop,
        name: &str,
        ready: bool,
        drained: bool,
    ) -> Option<String> {
        self.ticks += 1;
        if self.ticks % MEASURE_EVERY == 0 {
            if let Some(over) = lp.dir.as_deref().and_then(overfilled) {
                return Some(format!("VM {name} filled its loop directory ({over})"));
            }
            let limit = lp.cfg.console_limit;
            if lp.backend.console_bytes(name).is_some_and(|b| b > limit) {
                return Some(format!(
                    "VM {name} printed more than --console-limit {limit} bytes on its console"
                ));
            }
        }
        if !drained && self.started.elapsed() >= lp.cfg.vm_lifetime {
            return Some(format!(
                "VM {name} reached --vm-lifetime {}s",
                lp.cfg.vm_lifetime.as_secs()
            ));
        }
        // A runner gone from GitHub (or offline there, idle) whose VM lives on: its
        // job is over (or was taken away) and nothing more can come; a guest
        // keeping its VM past that is ended.
        if ready && !drained && self.last_gone_check.elapsed() >= self.gone_check {
            self.last_gone_check = Instant::now();
            let found =
                tokio::time::timeout(Duration::from_secs(10), lp.forge.find_runner(name)).await;
            // GitHub unreachable: no verdict.
            if let Ok(Ok(found)) = found {
                return self.judge(name, found.as_ref());
            }
        }
        None
    }
}

impl Watch {
    /// What GitHub's answer (`found`: the runner, or none of that name) says of a
    /// running VM: `Some(why)` when it must be ended.
    fn judge(&mut self, name: &str, found: Option<&RunnerInfo>) -> Option<String> {
        match found {
            None => {
                self.offline_since = None;
                let since = *self.gone_since.get_or_insert_with(Instant::now);
                (since.elapsed() >= self.gone_check).then(|| {
                    format!(
                        "runner {name} is gone from GitHub but its VM still runs after {}s",
                        since.elapsed().as_secs()
                    )
                })
            }
            // Seen online, now offline and idle at GitHub: its listener stopped
            // talking (a frozen or cut-off guest). No job can come to it; a job it
            // held was failed by GitHub. (Before it was ever seen online it may
            // still be starting: a runner is offline until it connects.)
            Some(r) if r.status == "offline" && !r.busy && self.seen_online => {
                self.gone_since = None;
                let since = *self.offline_since.get_or_insert_with(Instant::now);
                (since.elapsed() >= self.gone_check).then(|| {
                    format!(
                        "runner {name} is offline at GitHub but its VM still runs after {}s (a frozen or cut-off guest)",
                        since.elapsed().as_secs()
                    )
                })
            }
            Some(r) => {
                self.gone_since = None;
                self.offline_since = None;
                self.seen_online |= r.status == "online";
                None
            }
        }
    }
}

/// `Some(what)` when the loop directory holds more than its bounds.
fn overfilled(dir: &Path) -> Option<String> {
    let u = safefs::usage(dir, LOOP_DIR_MAX_ENTRIES, LOOP_DIR_MAX_BYTES).ok()?;
    u.exceeds(LOOP_DIR_MAX_ENTRIES, LOOP_DIR_MAX_BYTES)
        .then(|| {
            format!(
                "more than {LOOP_DIR_MAX_ENTRIES} entries or {} MiB",
                LOOP_DIR_MAX_BYTES >> 20
            )
        })
}

/// How often the loop asks GitHub whether a running VM's runner is still there,
/// and how long a VM may outlive its runner or keep it offline: 60 s (`GHRM_GONE_CHECK_SECONDS`
/// changes it, for tests and for hosts that must spend fewer API calls).
fn gone_check_interval() -> Duration {
    let secs = std::env::var("GHRM_GONE_CHECK_SECONDS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(60);
    Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(status: &str, busy: bool) -> RunnerInfo {
        RunnerInfo {
            id: 1,
            name: "r".into(),
            status: status.into(),
            busy,
        }
    }

    fn watch(check: Duration) -> Watch {
        let mut w = Watch::new(Instant::now());
        w.gone_check = check;
        w
    }

    /// Offline and idle after being seen online: ended once that lasted a check's
    /// interval; never while it has not been seen online (still starting), never
    /// while busy (GitHub has not given its job up yet), and online again clears it.
    #[test]
    fn an_idle_runner_offline_after_online_is_ended() {
        let check = Duration::from_millis(50);
        let mut w = watch(check);
        assert_eq!(w.judge("r", Some(&runner("offline", false))), None);
        std::thread::sleep(check * 2);
        assert_eq!(
            w.judge("r", Some(&runner("offline", false))),
            None,
            "ended before it was ever online"
        );
        assert_eq!(w.judge("r", Some(&runner("online", false))), None);
        assert_eq!(w.judge("r", Some(&runner("offline", true))), None);
        assert_eq!(w.judge("r", Some(&runner("offline", false))), None);
        std::thread::sleep(check * 2);
        assert_eq!(w.judge("r", Some(&runner("offline", true))), None, "busy");
        assert_eq!(w.judge("r", Some(&runner("offline", false))), None);
        std::thread::sleep(check * 2);
        let why = w.judge("r", Some(&runner("offline", false))).unwrap();
        assert!(why.contains("offline at GitHub"), "{why}");
        // Online in between: the wait starts again.
        let mut w = watch(check);
        w.judge("r", Some(&runner("online", false)));
        w.judge("r", Some(&runner("offline", false)));
        std::thread::sleep(check * 2);
        w.judge("r", Some(&runner("online", false)));
        assert_eq!(w.judge("r", Some(&runner("offline", false))), None);
    }

    /// Gone from GitHub: ended once that lasted a check's interval.
    #[test]
    fn a_runner_gone_from_github_is_ended() {
        let check = Duration::from_millis(50);
        let mut w = watch(check);
        assert_eq!(w.judge("r", None), None);
        std::thread::sleep(check * 2);
        assert!(w.judge("r", None).unwrap().contains("gone from GitHub"));
    }
}
