//! The orchestrator (design.md §3, §5): one private environment root, one
//! directory per loop, a lock per prefix, N `runner` children supervised with
//! back-off, and on SIGINT/SIGTERM an orderly shutdown that leaves nothing behind.

//!
//! This file owns the configuration, the error and the order of the steps; each
//! step has its room below. It must not parse a command line (`cli` does).

pub mod args;
pub mod image;
mod launch;
mod lock;
mod reconcile;
mod shutdown;
mod supervise;
mod sweep;

use std::path::PathBuf;

use tracing::warn;

use crate::backend::{Backend, BackendError};
use crate::runner::budget::Rate;
use crate::runner::config::RunnerConfig;
use crate::types::names::root_prefix;
use launch::Launcher;
use reconcile::Reconciler;

/// The orchestrator's validated configuration (built by `cli::config`).
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// `-n`: loops.
    pub runners: u32,
    /// `-p`: prefix of VM and runner names.
    pub prefix: String,
    /// Loops get a loop directory (not `-I`).
    pub isolation: bool,
    /// `-s`: seconds between loop starts without isolation.
    pub sleep: u64,
    /// `-l`: log file, passed on to the loops.
    pub log: Option<PathBuf>,
    /// Verbosity, passed on to the loops.
    pub verbose: u8,
    /// `--registrations`, passed on to the loops.
    pub registrations: Option<Rate>,
    /// `--reconcile`: seconds between registration clean-up passes.
    pub reconcile: u64,
    /// The arguments after `--`, as given (secrets still among them).
    pub runner_args: Vec<String>,
    /// What the loops will run with (the orchestrator's `-R` applied).
    pub runner: RunnerConfig,
}

/// An `orchestrator` subcommand, ready to run.
#[derive(Debug)]
pub enum Subcommand {
    /// `demo`.
    Demo(crate::demo::DemoConfig),
    /// `image bundle`.
    Bundle(image::BundleJob),
    /// `image prune [--all]`.
    Prune {
        /// Also every other image and working container.
        all: bool,
    },
    /// `doctor`.
    Doctor(Box<crate::doctor::DoctorConfig>),
}

/// Orchestrator failures.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// Invalid usage (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The backend is missing.
    #[error("the microVM backend is not usable")]
    Backend(#[from] BackendError),
    /// Another orchestrator holds the prefix.
    #[error("another orchestrator with prefix {prefix:?} is running on this host ({holder}); stop it or choose another -p")]
    Locked {
        /// The prefix.
        prefix: String,
        /// Who holds it.
        holder: String,
    },
    /// Host I/O.
    #[error("cannot {0}")]
    Io(String, #[source] std::io::Error),
    /// Loops were given up.
    #[error("{0}")]
    LoopsFailed(String),
    /// The demo failed.
    #[error("the demo failed")]
    Demo(#[source] crate::demo::DemoError),
    /// Building an image failed.
    #[error("cannot build the image")]
    Image(#[source] crate::image::ImageError),
    /// An input of `image bundle` is unusable (exit 2); its causes follow it.
    #[error(transparent)]
    ImageInput(crate::image::ImageError),
    /// `doctor` found a required check failing, or could not report.
    #[error(transparent)]
    Doctor(#[from] crate::doctor::DoctorError),
}

impl OrchestratorError {
    /// The documented exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            OrchestratorError::Usage(_) | OrchestratorError::ImageInput(_) => protocol::exit::USAGE,
            _ => protocol::exit::FAILED,
        }
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OrchestratorError {
    let what = what.into();
    move |e| OrchestratorError::Io(what, e)
}

/// Run a subcommand; `n` is the global `-n`.
pub fn subcommand(command: Subcommand, n: u32) -> Result<(), OrchestratorError> {
    match command {
        Subcommand::Demo(cfg) => crate::demo::run(cfg, n).map_err(OrchestratorError::Demo),
        Subcommand::Bundle(job) => image::bundle(job),
        Subcommand::Prune { all } => image::prune(all),
        Subcommand::Doctor(cfg) => Ok(crate::doctor::run(*cfg)?),
    }
}

/// Run the orchestrator.
pub fn main(cfg: OrchestratorConfig) -> Result<(), OrchestratorError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("start the async runtime"))?;
    rt.block_on(run(cfg))
}

async fn run(cfg: OrchestratorConfig) -> Result<(), OrchestratorError> {
    let prefix = cfg.prefix.clone();
    let isolation = cfg.isolation;
    let rcfg = &cfg.runner;
    let backend = Backend::detect(rcfg.runtime, &rcfg.qemu)?;
    let (args, pat, secret) = args::extract_secrets(&cfg.runner_args);

    let tmp = std::env::temp_dir();
    let _lock = lock::lock(&tmp, &prefix)?;
    sweep::sweep(&tmp, &prefix, &backend).await;
    let mut reconciler = match crate::forge::Forge::new(
        rcfg.endpoints.clone(),
        rcfg.scope,
        &rcfg.principal,
        &rcfg.auth,
    )
    .await
    {
        Ok(forge) => Some(Reconciler {
            forge,
            prefix: prefix.clone(),
            marked: Default::default(),
        }),
        Err(e) => {
            warn!("cannot reach GitHub to clean up stale registrations: {e}");
            None
        }
    };
    if let Some(r) = reconciler.as_mut() {
        r.pass(&[], true).await;
    }

    let root = match isolation {
        true => {
            let r = protocol::secret::random_alnum(8)
                .map_err(|e| OrchestratorError::Io("read random".into(), e.into()))?;
            let root = tmp.join(format!("{}{r}", root_prefix(&prefix)));
            protocol::safefs::create_private_dir(&root)
                .map_err(io(format!("create {}", root.display())))?;
            Some(root)
        }
        false => None,
    };
    let launcher = Launcher::new(&cfg, &backend, args, pat, secret)?;
    let result = supervise::supervise(&cfg, root.as_deref(), &backend, launcher, reconciler).await;
    // Whatever happened: no VM of ours and no environment directory may remain.
    sweep::leave_nothing(&backend, &prefix, root.as_deref()).await;
    result
}
