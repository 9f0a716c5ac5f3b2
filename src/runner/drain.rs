//! Stopping a running VM on the host's request (`-k` reached, a signal):
//! deregister at GitHub, `.trm`, a wait that fits idle or busy, the power
//! button, then kill. It does not decide when to stop (the loop does).

use std::time::Duration;

use protocol::{file_in, safefs, Kind};
use tracing::{info, warn};

use super::Loop;
use crate::forge::Deletion;
use crate::types::vm::VmSpec;

/// How long an idle guest gets to honour `.trm` before the VM is killed.
const IDLE_STOP_WAIT: Duration = Duration::from_secs(30);
/// How long a guest gets after the power button when `.trm` went unanswered.
const POWERDOWN_WAIT: Duration = Duration::from_secs(10);
/// How long a guest that is still booting gets to see `.trm` before it is killed.
const BOOTING_STOP_WAIT: Duration = Duration::from_secs(2);
/// Extra time over `--grace` for a busy guest to wind down.
const BUSY_STOP_MARGIN: Duration = Duration::from_secs(20);

/// Why a running VM is being stopped by the host.
#[derive(Debug, Clone, Copy)]
pub(super) enum Drain {
    Lifetime,
    Signal,
}

/// A VM being stopped by the host.
pub(super) struct Running<'a> {
    pub(super) spec: &'a VmSpec,
    pub(super) id: &'a str,
    pub(super) secret: &'a str,
    pub(super) runner_id: Option<u64>,
    /// Its runner was up (`.tkn` seen).
    pub(super) ready: bool,
}

impl Loop {
    /// Ask the guest to stop: deregister at GitHub (so no new job comes), write
    /// `.trm`, give an idle runner a short wait and a busy one `--grace`, then kill.
    pub(super) async fn drain(
        &self,
        why: Drain,
        vm: Running<'_>,
        child: &mut tokio::process::Child,
    ) -> Option<std::process::ExitStatus> {
        let Running {
            spec,
            id,
            secret,
            runner_id,
            ready,
        } = vm;
        let name = &spec.name;
        let busy = match self.lookup(name, runner_id).await {
            Some(rid) => match self.forge.delete_runner(rid).await {
                Ok(Deletion::Deleted) | Ok(Deletion::Gone) => false,
                Ok(Deletion::Busy) => true,
                Err(e) => {
                    warn!("cannot deregister {name} ({e}); assuming it is busy");
                    true
                }
            },
            None => false,
        };
        let wait = match (self.dir.as_ref(), busy, ready) {
            (None, _, _) => Duration::ZERO, // no .trm without a loop directory: force
            (Some(_), true, _) => Duration::from_secs(self.cfg.grace) + BUSY_STOP_MARGIN,
            (Some(_), false, true) => IDLE_STOP_WAIT,
            // Still booting: its runner is not up, so it has no job to lose.
            (Some(_), false, false) => BOOTING_STOP_WAIT,
        };
        info!(
            "stopping VM {name} ({}): {}",
            match why {
                Drain::Lifetime => "lifetime reached",
                Drain::Signal => "signal",
            },
            if busy {
                format!("a job is running, it gets up to {}s", self.cfg.grace)
            } else {
                "idle, stopping now".into()
            }
        );
        if let Some(dir) = &self.dir {
            let trm = file_in(dir, id, Kind::Trm);
            if let Err(e) = safefs::write_replace(&trm, secret.as_bytes(), 0o600) {
                warn!("cannot write {}: {e}", trm.display());
            }
        }
        match tokio::time::timeout(wait, child.wait()).await {
            Ok(st) => st.ok(),
            Err(_) => {
                // No .trm (insecure mode) or no answer to it: try the power button.
                let powerdown_wait = match (self.dir.is_some(), busy) {
                    (true, _) => POWERDOWN_WAIT,
                    (false, true) => Duration::from_secs(self.cfg.grace) + BUSY_STOP_MARGIN,
                    (false, false) => IDLE_STOP_WAIT,
                };
                if ready && self.backend.powerdown(name).await {
                    info!("asked VM {name} to power down (ACPI power button)");
                    if let Ok(st) = tokio::time::timeout(powerdown_wait, child.wait()).await {
                        return st.ok();
                    }
                }
                warn!(
                    "VM {name} did not stop within {}s: killing it",
                    wait.as_secs()
                );
                self.backend.force_stop(name, child).await;
                child.wait().await.ok()
            }
        }
    }
}
