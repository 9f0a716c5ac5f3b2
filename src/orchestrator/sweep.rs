//! Leaving nothing behind: at start what a dead orchestrator of the prefix left
//! (environment roots, VMs), at the end our own leftovers, and a dead loop's files.
//! Only names of exactly this prefix; it never touches another prefix's things.

use std::path::Path;

use tracing::warn;

use crate::backend::Backend;
use crate::types::names::{is_root_of, is_vm_of};

/// Remove environment roots and VMs that a dead orchestrator of `prefix` left.
pub(super) async fn sweep(tmp: &Path, prefix: &str, backend: &Backend) {
    if let Ok(entries) = std::fs::read_dir(tmp) {
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_str().is_some_and(|n| is_root_of(n, prefix)) {
                warn!(
                    "removing {} left by a previous orchestrator",
                    e.path().display()
                );
                if let Err(err) = protocol::safefs::remove(&e.path()) {
                    warn!("cannot remove {}: {err}", e.path().display());
                }
            }
        }
    }
    match backend.list(prefix).await {
        Ok(vms) => {
            for vm in vms.into_iter().filter(|v| is_vm_of(v, prefix)) {
                warn!("removing VM {vm} left by a previous orchestrator");
                if let Err(e) = backend.delete(&vm).await {
                    warn!("cannot remove VM {vm}: {e}");
                }
            }
        }
        Err(e) => warn!("cannot list VMs to clean up: {e}"),
    }
}

/// At the end, whatever happened: no VM of ours and no environment directory.
pub(super) async fn leave_nothing(backend: &Backend, prefix: &str, root: Option<&Path>) {
    if let Ok(vms) = backend.list(prefix).await {
        for vm in vms.into_iter().filter(|v| is_vm_of(v, prefix)) {
            warn!("removing leftover VM {vm}");
            let _ = backend.delete(&vm).await;
        }
    }
    if let Some(root) = root {
        if let Err(e) = protocol::safefs::remove(root) {
            warn!("cannot remove {}: {e}", root.display());
        }
    }
}

/// Empty a loop directory (the files of a dead loop's last VM are stale).
pub(super) fn clear_dir(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = protocol::safefs::remove(&e.path());
        }
    }
}
