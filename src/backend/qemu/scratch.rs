//! Per-VM scratch disks of root-disk bundles: where they live (disk-backed
//! `/var/tmp`) and how they are made (a sparse file and `mkfs.ext4`). Nothing else.

use std::path::PathBuf;

use super::{BackendError, Qemu};
use crate::hosttool;

impl Qemu {
    /// The VM's scratch disk: on disk-backed storage (`/var/tmp`), not in the
    /// state directory, which may be a tmpfs.
    pub(super) fn scratch_path(&self, name: &str) -> PathBuf {
        scratch_root().join(format!("{name}.ext4"))
    }

    /// Is there room for one more scratch disk? Sparse, but a job may fill it: a
    /// disk the file system could not hold is refused (before a runner is minted:
    /// [`super::Qemu`]'s `check_host`).
    pub(super) fn scratch_room(&self) -> Result<(), BackendError> {
        let root = scratch_root();
        if let Ok(st) = nix::sys::statvfs::statvfs(&root) {
            let free = st.blocks_available().saturating_mul(st.fragment_size());
            if free < self.cfg.scratch {
                return Err(BackendError::NoRoom(
                    root.clone(),
                    format!(
                        "only {} MiB free for a {} MiB scratch disk: free space there, lower --scratch-size, \
                         or set GHRM_SCRATCH_DIR to a larger file system",
                        free >> 20,
                        self.cfg.scratch >> 20
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A fresh, sparse ext4 scratch disk for the VM (mkfs takes ~10 ms: its inode
    /// tables are left for the guest, which mounts it with `noinit_itable`).
    pub(super) fn make_scratch(&self, name: &str) -> Result<(), BackendError> {
        let root = scratch_root();
        protocol::safefs::ensure_private_dir(&root)
            .map_err(|e| BackendError::Spawn(format!("mkdir {}", root.display()), e))?;
        let path = self.scratch_path(name);
        let _ = std::fs::remove_file(&path);
        self.scratch_room()?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|f| f.set_len(self.cfg.scratch).map(|_| f))
            .map_err(|e| BackendError::Spawn(format!("create {}", path.display()), e))?;
        drop(f);
        let mut mkfs = hosttool::command(mkfs_ext4());
        mkfs.args(["-q", "-F", "-L", protocol::bundle::SCRATCH_LABEL])
            .args(["-O", "^has_journal", "-m", "0", "-E", "lazy_itable_init=1"])
            .arg(&path);
        let out = hosttool::output(&mut mkfs);
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => {
                let _ = std::fs::remove_file(&path);
                Err(BackendError::Image(
                    path,
                    format!(
                        "mkfs.ext4 failed: {}",
                        hosttool::stderr_tail(&o.stderr, usize::MAX)
                    ),
                ))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(BackendError::Spawn(
                    "mkfs.ext4 (install e2fsprogs, or run with --scratch-size 0)".into(),
                    e,
                ))
            }
        }
    }
}

/// Where the VMs' scratch disks live: `/var/tmp` (disk-backed, unlike `/tmp` on
/// many hosts) unless `GHRM_SCRATCH_DIR` says otherwise.
pub fn scratch_root() -> PathBuf {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::var_os("GHRM_SCRATCH_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
        .join(format!("gh-runner-microvm-scratch.{uid}"))
}

/// `mkfs.ext4`: on `PATH`, or in the sbin directories a user's `PATH` often lacks.
pub fn mkfs_ext4() -> PathBuf {
    which::which("mkfs.ext4")
        .ok()
        .or_else(|| {
            ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("mkfs.ext4"))
}

#[cfg(test)]
mod tests {
    use super::super::{NetMode, Qemu, QemuConfig};
    use crate::backend::BackendError;

    #[test]
    fn a_scratch_disk_larger_than_the_free_space_is_refused() {
        let q = Qemu::new(QemuConfig {
            net: NetMode::Restricted,
            scratch: 1 << 60,
            ..Default::default()
        })
        .expect("qemu-system-x86_64 (scripts/install-deps.sh)");
        let name = format!("GH-test-scratch-{}", std::process::id());
        match q.make_scratch(&name) {
            Err(BackendError::NoRoom(_, why)) => assert!(why.contains("--scratch-size"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(!q.scratch_path(&name).exists());
    }
}
