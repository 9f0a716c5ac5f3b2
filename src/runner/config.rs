//! One loop's validated configuration, as the command line (`cli::config`)
//! builds it; the loop takes it as it is and never looks at the command line.

use std::path::PathBuf;

use crate::forge::{Endpoints, ScopeKind};
use crate::types::mount::Mount;
use crate::types::runtime::Runtime;

/// Validated runner configuration.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Prefix of VM and runner names (`RUNNER_PREFIX`).
    pub prefix: String,
    /// Loop number.
    pub loop_id: u32,
    /// Loop directory given by the orchestrator (`RUNNER_ENVIRONMENT`), if any.
    pub environment: Option<PathBuf>,
    /// Runtime, if forced.
    pub runtime: Option<Runtime>,
    /// Where GitHub is.
    pub endpoints: Endpoints,
    /// Scope and principal.
    pub scope: ScopeKind,
    /// `owner/repo`, org or enterprise.
    pub principal: String,
    /// How the host authenticates (never logged, never sent to a guest).
    pub auth: crate::forge::Auth,
    /// Runner group name.
    pub group: String,
    /// Labels (never empty).
    pub labels: Vec<String>,
    /// JIT (default) or registration token.
    pub jit: bool,
    /// Image.
    pub image: String,
    /// vCPUs.
    pub cpus: u32,
    /// MiB.
    pub memory: u32,
    /// DNS.
    pub dns: String,
    /// Extra mounts.
    pub mounts: Vec<Mount>,
    /// Dev mode: (host dir, guest dir).
    pub dev: Option<(PathBuf, String)>,
    /// Guest user.
    pub user: String,
    /// Let the runner update itself.
    pub update: bool,
    /// Loop lifetime.
    pub terminate: Option<std::time::Duration>,
    /// Iterations, `None` = forever.
    pub repeat: Option<u64>,
    /// `--warm`: prepare the next VM while a job runs.
    pub warm: bool,
    /// Fixed secret (`-S`).
    pub secret: Option<crate::types::secret::Secret>,
    /// Grace for busy jobs.
    pub grace: u64,
    /// Boot deadline to `.tkn`.
    pub boot_timeout: u64,
    /// `--vm-lifetime`: the hard bound on one VM's life.
    pub vm_lifetime: std::time::Duration,
    /// `--console-limit`: bytes a VM's console may hold.
    pub console_limit: u64,
    /// `--keep-consoles`: consoles of this loop's last K VMs kept after they end.
    pub keep_consoles: u32,
    /// Verbosity.
    pub verbose: u8,
    /// QEMU settings.
    pub qemu: crate::backend::qemu::QemuConfig,
    /// Registration budget.
    pub registrations: crate::runner::budget::Rate,
    /// Failed VMs in a row before the loop gives up.
    pub max_failures: u32,
}
