//! What a QEMU bundle holds for the guest to find: paths inside it, disk labels and
//! the kernel modules it needs. Names only: building is the host's, using the entrypoint's.

/// The directory of the project's files inside a bundle's initramfs.
pub const ETC_DIR: &str = "/etc/gh-runner-microvm";
/// Inside the initramfs: the module load order, one path per line.
pub const MODULE_LIST: &str = "/etc/gh-runner-microvm/modules";
/// Inside the stage-1 initramfs of a root-disk bundle: the image's environment
/// (`KEY=VALUE` lines from its OCI config), given to the image's entrypoint.
pub const IMAGE_ENV: &str = "/etc/gh-runner-microvm/image.env";

/// File system label of the converted image's root disk (`ghrm.root=`).
pub const ROOT_LABEL: &str = "ghrm-root";
/// File system label of the per-VM scratch disk.
pub const SCRATCH_LABEL: &str = "ghrm-scratch";
/// Where the scratch disk is mounted in the guest (the entrypoint binds the
/// runner's `_work` onto it).
pub const SCRATCH_MOUNT: &str = "/_work";

/// Modules every guest loads, by name (networking, 9p shares, the ACPI power
/// button); the bundle adds their dependencies from `modules.dep`.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_net",
    "9pnet_virtio",
    "9p",
    "evdev",
    "button",
    "virtio_console",
];
/// Of [`GUEST_MODULES`], those a kernel may lack: without `virtio_console` (the
/// snapshot templates' resume port) a bundle's VMs boot cold, nothing else is lost.
pub const OPTIONAL_MODULES: &[&str] = &["virtio_console"];
/// Modules a root-disk bundle adds, for its root and scratch disks.
pub const DISK_MODULES: &[&str] = &["virtio_blk", "crc32c_generic", "ext4"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_live_in_the_etc_dir() {
        for f in [MODULE_LIST, IMAGE_ENV] {
            assert!(f.starts_with(&format!("{ETC_DIR}/")), "{f}");
        }
        // Labels are ext4 labels (at most 16 bytes) and kernel command-line values.
        for l in [ROOT_LABEL, SCRATCH_LABEL] {
            assert!(l.len() <= 16 && crate::cmdline::safe_value(l), "{l}");
        }
    }
}
