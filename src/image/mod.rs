//! Guest images for QEMU: `orchestrator image bundle` (design.md §7) builds a
//! bootable bundle — a kernel and an initramfs whose `/init` is the static
//! entrypoint, with busybox, the kernel modules the guest needs (and their
//! dependencies, from `modules.dep`), a `runner` user and an actions runner.

//!
//! This file owns the bundle description, the error and the shared constants;
//! building is in `parts` (initramfs userland) and `oci` (root disks).

pub mod cpio;
mod elf;
mod initrd;
mod modules;
pub mod oci;
mod parts;
mod registry;
pub mod vmlinux;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use modules::resolve_modules;
pub use parts::{bundle, fake_runner_tarball, runner_version, BundleInputs};

/// uid/gid of the `runner` user (as on GitHub's runners).
pub const RUNNER_UID: u32 = 1001;

/// Bundle build failures; each names the bad input.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An input is unusable.
    #[error("{flag} {path}: {why}")]
    BadInput {
        /// The option.
        flag: &'static str,
        /// Its value.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A module the guest needs is neither a module nor built in.
    #[error("--modules {dir}: the kernel has no module {module} (needed for {why}) and it is not built in")]
    MissingModule {
        /// The modules directory.
        dir: PathBuf,
        /// The module.
        module: String,
        /// What needs it.
        why: &'static str,
    },
    /// An input cannot be read; the system's reason follows.
    #[error("{flag} {path}: cannot read it")]
    Unreadable {
        /// The option.
        flag: &'static str,
        /// Its value (or the file in it that failed).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A directory is not a bundle (`-i`, `--bundle`).
    #[error("{dir} is not a bundle; make one with `orchestrator image bundle`")]
    NotABundle {
        /// The directory.
        dir: PathBuf,
        /// Why its `bundle.json` cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// A bundle's `bundle.json` does not parse.
    #[error("{path}: not a bundle description")]
    BadBundle {
        /// The file.
        path: PathBuf,
        /// The parser's reason.
        #[source]
        source: serde_json::Error,
    },
    /// Writing the bundle failed.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

fn unreadable(flag: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Unreadable { flag, path, source }
}

fn bad(flag: &'static str, path: &Path, why: impl Into<String>) -> ImageError {
    ImageError::BadInput {
        flag,
        path: path.into(),
        why: why.into(),
    }
}

/// `bundle.json`: what a bundle holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleInfo {
    /// Format version.
    pub format: u32,
    /// Kernel release of the modules.
    pub kernel_release: String,
    /// Actions runner version.
    pub runner_version: String,
    /// Modules in load order.
    pub modules: Vec<String>,
    /// Kernel file name in the bundle.
    pub kernel: String,
    /// Initramfs file name in the bundle.
    pub initrd: String,
    /// The uncompressed kernel (`vmlinux`, booted through its PVH entry), when it
    /// could be taken out of `kernel`; bundles without it boot `kernel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmlinux: Option<String>,
    /// A root-disk bundle (`image bundle --oci`): the initramfs is stage 1 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<oci::RootDisk>,
}

/// The files a bundle directory holds (what `image prune` removes from it).
pub const BUNDLE_FILES: &[&str] = &["bundle.json", "vmlinuz", "vmlinux", "initrd.img"];
/// The name of the uncompressed kernel in a bundle.
pub const VMLINUX: &str = "vmlinux";

impl BundleInfo {
    /// Read `DIR/bundle.json`.
    pub fn load(dir: &Path) -> Result<BundleInfo, ImageError> {
        let path = dir.join("bundle.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ImageError::NotABundle {
            dir: dir.into(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ImageError::BadBundle { path, source })
    }

    /// Write `DIR/bundle.json`.
    pub fn save(&self, dir: &Path) -> Result<(), ImageError> {
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(dir.join("bundle.json"), json)
            .map_err(|e| ImageError::Write(dir.join("bundle.json"), e))
    }
}
