//! The orchestrator (design.md §3, §5): one private environment root, one
//! directory per loop, a lock per prefix, N `runner` children supervised with
//! back-off, and on SIGINT/SIGTERM an orderly shutdown that leaves nothing behind.

//!
//! This file owns the configuration, the error and the order of the steps; each
//! step has its room below. It must not parse a command line (`cli` does).

pub mod args;
pub mod control;
pub mod fleet;
pub mod image;
mod launch;
mod lock;
pub mod logs;
pub mod metrics;
mod notify;
mod reconcile;
mod shutdown;
mod supervise;
mod sweep;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::backend::{Backend, BackendError};
use crate::runner::budget::Rate;
use crate::runner::config::RunnerConfig;
use crate::types::names::root_prefix;
use launch::Launcher;
use reconcile::Reconciler;

/// Longest a registration clean-up pass may hold up supervision while systemd's
/// watchdog (or start timeout) is kept quiet: the forge's retries honour rate
/// limits of up to 15 minutes (`forge::transport`), a few times.
const RECONCILE_LIMIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// How long the registration clean-up after the loops may take.
const LAST_PASS_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

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
    /// `--metrics`: where to serve Prometheus metrics.
    pub metrics: Option<SocketAddr>,
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
    /// `logs [LOOP | VM] [-f]`.
    Logs(logs::LogsRequest),
    /// `image prune [--all]`.
    Prune {
        /// Also every other image and working container.
        all: bool,
    },
    /// `status [--json]`.
    Status {
        /// The orchestrator's prefix.
        prefix: String,
        /// The JSON document instead of the table.
        json: bool,
    },
    /// `drain [--no-wait]`.
    Drain {
        /// The orchestrator's prefix.
        prefix: String,
        /// Wait until it has ended.
        wait: bool,
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
    /// `status` / `drain` could not reach the orchestrator.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// `logs` found nothing to show, or could not show it.
    #[error(transparent)]
    Logs(#[from] logs::LogsError),
    /// `doctor` found a required check failing, or could not report.
    #[error(transparent)]
    Doctor(#[from] crate::doctor::DoctorError),
}

impl OrchestratorError {
    /// The documented exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            OrchestratorError::Usage(_) | OrchestratorError::ImageInput(_) => protocol::exit::USAGE,
            OrchestratorError::Logs(e) => e.exit_code(),
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
        Subcommand::Status { prefix, json } => {
            let st = control::status(&private_tmp()?, &prefix)?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default()),
                false => print!("{}", fleet::table(&st)),
            }
            Ok(())
        }
        Subcommand::Drain { prefix, wait } => {
            match (wait, control::drain(&private_tmp()?, &prefix, wait)?) {
                (false, _) => eprintln!("orchestrator {prefix:?} is draining"),
                (true, Some(0)) => eprintln!("orchestrator {prefix:?} drained and ended (exit 0)"),
                (true, how) => {
                    return Err(control::ControlError::EndedBadly {
                        prefix,
                        how: how.map_or("without saying how (killed?)".into(), |c| {
                            format!("with exit status {c}")
                        }),
                    }
                    .into())
                }
            }
            Ok(())
        }
        Subcommand::Logs(req) => Ok(logs::run(&req)?),
        Subcommand::Doctor(cfg) => Ok(crate::doctor::run(*cfg)?),
    }
}

/// This user's private directory in `$TMPDIR`, which holds every name the
/// orchestrator makes there (lock, control socket, environment roots).
fn private_tmp() -> Result<std::path::PathBuf, OrchestratorError> {
    let tmp = std::env::temp_dir();
    crate::types::paths::private_tmp(&tmp).map_err(io(format!(
        "use this user's directory in {} (set TMPDIR to another directory, or remove what is there)",
        tmp.display()
    )))
}

/// Run the orchestrator.
pub fn main(cfg: OrchestratorConfig) -> Result<(), OrchestratorError> {
    // systemd (notify.rs): NOTIFY_SOCKET/WATCHDOG_* taken while no thread or child exists.
    notify::take_from_env();
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
    // A -T PAT reaches the loops as RUNNER_PAT; RUNNER_PAT and a systemd credential
    // ($CREDENTIALS_DIRECTORY) reach them as they reached us: a PAT read from a
    // credential file is never put in any environment.

    let tmp = private_tmp()?;
    let _lock = lock::lock(&tmp, &prefix)?;
    let (stop_tx, stop) = crate::runner::stop_channel().map_err(io("install signal handlers"))?;
    let metrics = metrics::Metrics::new();
    let fleet = Arc::new(Mutex::new(fleet::Fleet::new(
        &prefix,
        cfg.runners,
        metrics.clone(),
    )));
    let observer = metrics.clone();
    crate::forge::observe(move |route, code, left| observer.github(route, code, left));
    if let Some(addr) = cfg.metrics {
        let bound = metrics::serve(addr, metrics)
            .await
            .map_err(io(format!("serve metrics on {addr} (--metrics)")))?;
        info!("metrics on http://{bound}/metrics");
    }
    let mut control = control::Control::bind(&tmp, &prefix)?;
    control.serve(fleet.clone(), stop_tx);
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
        // systemd (notify.rs): a rate-limited pass extends the start timeout.
        notify::keep_alive(RECONCILE_LIMIT, r.pass(&[], true)).await;
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
    let shared = supervise::Shared { fleet, stop };
    let result = supervise::supervise(
        &cfg,
        root.as_deref(),
        &backend,
        launcher,
        reconciler.as_mut(),
        shared,
    )
    .await;
    // Whatever happened: no VM of ours and no environment directory may remain.
    sweep::leave_nothing(&backend, &prefix, root.as_deref()).await;
    // Nor a registration of a loop that was killed before it could deregister.
    if let Some(r) = reconciler.as_mut() {
        match backend.list(&prefix).await {
            // Bounded: a stop must not wait out GitHub's rate limits (the next start's pass
            // catches what is left, once GitHub shows it offline).
            Ok(live) => {
                let every = std::time::Duration::from_secs(cfg.reconcile.clamp(1, 2));
                if tokio::time::timeout(LAST_PASS_LIMIT, r.last_pass(&live, every))
                    .await
                    .is_err()
                {
                    warn!(
                        "the last registration clean-up took over {}s; left to the next start",
                        LAST_PASS_LIMIT.as_secs()
                    );
                }
            }
            Err(e) => warn!("cannot list VMs; skipping the last registration clean-up: {e}"),
        }
    }
    // A waiting `drain` learns how it ended.
    control
        .finish(result.as_ref().map_or_else(|e| e.exit_code(), |_| 0))
        .await;
    result
}
