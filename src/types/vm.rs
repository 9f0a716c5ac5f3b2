//! What one VM is to be: the spec a loop hands to its backend. Plain data; how a
//! backend turns it into a process is the backend's business.

use std::path::PathBuf;

use super::mount::Mount;

/// What one VM needs.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// `<PREFIX>-<id>`: VM name and runner name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// vCPUs.
    pub cpus: u32,
    /// MiB.
    pub memory: u32,
    /// DNS server.
    pub dns: String,
    /// The loop directory, mounted at `/_environment`.
    pub env_dir: Option<PathBuf>,
    /// Other mounts (`-M`, and `-D`'s dev directory).
    pub mounts: Vec<Mount>,
    /// Guest path of the entrypoint.
    pub entrypoint: String,
    /// Its arguments.
    pub args: Vec<String>,
}
