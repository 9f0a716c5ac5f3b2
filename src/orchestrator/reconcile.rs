//! Host-scoped clean-up of GitHub registrations: stale runners of exactly this
//! prefix, judged against the VMs that exist. It never deletes a booting runner.

use tracing::{info, warn};

use crate::types::names::is_vm_of;

/// Host-scoped clean-up of GitHub registrations: only names of exactly this prefix
/// (`<prefix>-<loop>-<random>`), never another host's or tool's runners.
pub(super) struct Reconciler {
    pub(super) forge: crate::forge::Forge,
    pub(super) prefix: String,
    /// Offline runners seen without a live VM on the previous pass.
    pub(super) marked: std::collections::HashSet<u64>,
}

impl Reconciler {
    /// One pass. `live` are the VM names that exist now; with `at_start`, nothing of
    /// ours can be running, so stale registrations go at once; otherwise an offline
    /// runner with no VM is marked, and deleted only if still so on the next pass
    /// (a runner that is just booting is never deleted).
    pub(super) async fn pass(&mut self, live: &[String], at_start: bool) {
        self.sweep(live, at_start, false).await;
    }

    /// The pass after every loop has ended and our VMs are removed: a registration of
    /// ours that is not busy and has no VM in `live` belongs to a loop that was killed
    /// (SIGKILL leaves no time to deregister), whatever status GitHub still shows.
    /// One still busy with no VM lost its runner mid-job: GitHub fails that job and
    /// frees the runner once it stops hearing from it, so the pass is repeated every
    /// `every` until none is left (the caller bounds how long it waits).
    pub(super) async fn last_pass(&mut self, live: &[String], every: std::time::Duration) {
        let mut said = false;
        loop {
            let busy = self.sweep(live, true, true).await;
            if busy.is_empty() {
                return;
            }
            if !said {
                info!(
                    "waiting for GitHub to give up the job of {} (busy, its VM is gone) to remove it",
                    busy.join(", ")
                );
                said = true;
            }
            tokio::time::sleep(every).await;
        }
    }

    /// One pass; returns our registrations GitHub shows busy although no VM of that
    /// name is live.
    async fn sweep(&mut self, live: &[String], at_once: bool, online_too: bool) -> Vec<String> {
        let runners = match self.forge.list_runners().await {
            Ok(r) => r,
            Err(e) => {
                warn!("cannot list runners to clean up stale registrations: {e}");
                return vec![];
            }
        };
        let mut lost = vec![];
        let mut marked = std::collections::HashSet::new();
        for r in runners
            .into_iter()
            .filter(|r| is_vm_of(&r.name, &self.prefix))
        {
            if r.busy && !live.contains(&r.name) {
                lost.push(r.name.clone());
            }
            if r.busy || (r.status != "offline" && !online_too) || live.contains(&r.name) {
                continue;
            }
            if at_once || self.marked.contains(&r.id) {
                match self.forge.delete_runner(r.id).await {
                    Ok(crate::forge::Deletion::Deleted) => {
                        info!("deleted stale runner registration {}", r.name)
                    }
                    Ok(_) => {}
                    Err(e) => warn!("cannot delete stale runner {}: {e}", r.name),
                }
            } else {
                marked.insert(r.id);
            }
        }
        self.marked = marked;
        lost
    }
}
