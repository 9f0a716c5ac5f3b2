//! The microVM runtimes by name (`-R`); which one runs is decided once per loop
//! by `backend::detect`. Knows nothing about how a runtime is driven.

/// Which microVM runtime runs the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// `buildah unshare krunvm …` (libkrun).
    Krunvm,
    /// `podman run --runtime krun …` (libkrun through crun).
    Podman,
    /// `qemu-system-x86_64 -M microvm` booting a bundle (`orchestrator image bundle`).
    Qemu,
}

impl Runtime {
    /// The name used on command lines and in labels.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Krunvm => "krunvm",
            Runtime::Podman => "podman",
            Runtime::Qemu => "qemu",
        }
    }
}
