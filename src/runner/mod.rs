//! One runner loop (design.md §3): per iteration an id and a fresh secret, a
//! single-use credential minted here on the host, a `.env` for the guest, a VM,
//! and afterwards the VM, the `<id>.*` files and the GitHub registration removed.

//!
//! This file owns the loop (its set-up, its count of jobs and failures, its end);
//! minting, one iteration and draining a VM have their rooms. It must not parse
//! a command line (`cli::config` builds its configuration).

mod bounds;
pub mod budget;
pub mod config;
mod drain;
pub mod events;
mod iteration;
mod mint;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::backend::{Backend, BackendError};
use crate::forge::{Forge, ForgeError};
use crate::types::invalid::ConfigError;
use crate::types::runtime::Runtime;
use config::RunnerConfig;

/// Why a loop failed.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// Invalid configuration (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backend is missing or broken.
    #[error("microVM backend failure")]
    Backend(#[from] BackendError),
    /// GitHub refused or could not be reached.
    #[error("GitHub failure")]
    Forge(#[from] ForgeError),
    /// Host file system.
    #[error("cannot {0}")]
    Io(String, #[source] std::io::Error),
    /// Asked to stop while waiting to register (not a failure).
    #[error("stopped before a runner could be registered")]
    Stopped,
    /// GitHub refused the image's actions runner as deprecated (exit 2: retrying with
    /// the same image cannot help).
    #[error("the actions runner in the guest image ({image}) is deprecated: GitHub refused it (Runner.Listener exit 7); rebuild the image with a current runner (Containerfile: RUNNER_VERSION, kept current by the runner-pin workflow)")]
    RunnerDeprecated {
        /// The image (-i).
        image: String,
    },
    /// A VM could not be confirmed gone: its loop directory is not reused.
    #[error("cannot confirm that VM {name} is gone, so its loop directory is not handed to another VM; the loop ends")]
    VmNotGone {
        /// The VM.
        name: String,
        /// Why.
        #[source]
        source: BackendError,
    },
    /// Guests keep failing.
    #[error("giving up: {count} VMs in a row failed to get their runner up (last: {last})")]
    GuestFailing {
        /// How many.
        count: u32,
        /// The last reason.
        last: String,
    },
}

impl RunnerError {
    /// A host file system that is full (or over quota): the loop waits for space.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, RunnerError::Io(_, e) if is_full(e))
            || matches!(self, RunnerError::Backend(BackendError::NoRoom(..)))
    }

    /// The hypervisor's executable or the bundle gone from this host: the loop
    /// waits for it to come back.
    pub fn is_host_gone(&self) -> bool {
        matches!(self, RunnerError::Backend(BackendError::Gone { .. }))
    }

    /// The documented exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunnerError::Config(_) | RunnerError::RunnerDeprecated { .. } => protocol::exit::USAGE,
            _ => protocol::exit::FAILED,
        }
    }
}

/// What a backend cannot enforce is refused, not silently weakened (exit 2); what
/// it cannot isolate is said at every loop start.
fn check_isolation(
    cfg: &RunnerConfig,
    runtime: Runtime,
    isolation: bool,
) -> Result<(), RunnerError> {
    if !isolation && runtime == Runtime::Qemu {
        return Err(ConfigError(
            "-I with QEMU would put the guest's configuration (its JIT config and secret) on QEMU's command line, \
             readable in this host's process list and in the guest's /proc/cmdline; QEMU VMs always get a loop \
             directory: drop -I (ORCHESTRATOR_ISOLATION)"
                .into(),
        )
        .into());
    }
    if !isolation {
        warn!(
            "-I: the guest's configuration, its JIT config included, travels on the {} command line, readable \
             by every user of this host in the process list",
            runtime.name()
        );
    }
    if runtime == Runtime::Krunvm {
        let ro = cfg.mounts.iter().find(|m| {
            m.options
                .as_deref()
                .is_some_and(|o| o.split(',').any(|x| x == "ro"))
        });
        if let Some(m) = ro {
            return Err(ConfigError(format!(
                "-M {}:{}:ro: krunvm cannot share a directory read-only, the guest could write to {}; \
                 use -R podman or -R qemu, or drop :ro",
                m.host.display(),
                m.guest,
                m.host.display()
            ))
            .into());
        }
    }
    if !cfg.jit {
        warn!(
            "--no-jit: every guest holds a registration token valid for the whole scope ({}) for an hour; \
             a job can register runners of its own there. Use JIT wherever the forge has it",
            cfg.principal
        );
    }
    if matches!(runtime, Runtime::Krunvm | Runtime::Podman) {
        warn!(
            "{}: the guest uses this host's network through libkrun's socket impersonation: a job can reach \
             this host's services, its LAN and cloud metadata services; -R qemu keeps jobs off the host (--net)",
            runtime.name()
        );
    }
    Ok(())
}

/// A runner loop.
pub struct Loop {
    cfg: RunnerConfig,
    backend: Backend,
    forge: Forge,
    group_id: u64,
    dir: Option<PathBuf>,
    _own_dir: Option<tempfile::TempDir>,
    stop: watch::Receiver<bool>,
    deadline: Option<Instant>,
    last_exit: Option<Instant>,
    budget: budget::Budget,
    /// `--warm`: the next VM, started while a job runs, waiting for its configuration.
    warm: Option<iteration::Warm>,
    /// Iterations whose runner came up (`-r` counts them).
    done: u64,
    /// `--warm`: the previous VM's registration, removed once the next runner is up
    /// (its VM is gone and its directory emptied already).
    deferred: Option<(String, Option<u64>)>,
}

impl Loop {
    /// Check the backend, reach GitHub (resolving the runner group), prepare the loop directory.
    pub async fn new(
        cfg: RunnerConfig,
        isolation: bool,
        stop: watch::Receiver<bool>,
    ) -> Result<Loop, RunnerError> {
        let backend = Backend::detect(cfg.runtime, &cfg.qemu)?;
        check_isolation(&cfg, backend.runtime(), isolation)?;
        let forge = Forge::new(cfg.endpoints.clone(), cfg.scope, &cfg.principal, &cfg.auth).await?;
        // GitHub not answering at the very start is more likely a wrong -g than an
        // outage: the loop fails (and is restarted, then given up); once it has
        // spoken to GitHub, it waits out outages itself (`run`).
        let group_id = forge.resolve_group(&cfg.group).await?;
        let (dir, own) = match (&cfg.environment, isolation) {
            (_, false) => (None, None),
            (Some(d), true) => {
                let meta = std::fs::symlink_metadata(d).map_err(|e| {
                    RunnerError::Io(format!("use RUNNER_ENVIRONMENT {}", d.display()), e)
                })?;
                if !meta.is_dir() {
                    return Err(ConfigError(format!(
                        "RUNNER_ENVIRONMENT {} is not a directory",
                        d.display()
                    ))
                    .into());
                }
                // It is emptied between VMs: never a directory with anything in it.
                let empty = std::fs::read_dir(d)
                    .map_err(|e| {
                        RunnerError::Io(format!("read RUNNER_ENVIRONMENT {}", d.display()), e)
                    })?
                    .next()
                    .is_none();
                if !empty {
                    return Err(ConfigError(format!(
                        "RUNNER_ENVIRONMENT {} is not empty: the loop empties its directory between VMs, so it \
                         must be one of its own (the orchestrator makes them; leave it unset to get a private one)",
                        d.display()
                    ))
                    .into());
                }
                (Some(d.clone()), None)
            }
            (None, true) => {
                let tmp = std::env::temp_dir();
                let private = crate::types::paths::private_tmp(&tmp).map_err(|e| {
                    RunnerError::Io(format!("use this user's directory in {}", tmp.display()), e)
                })?;
                let t = tempfile::Builder::new()
                    .prefix(&format!("{}-{:03}.", cfg.prefix, cfg.loop_id))
                    .tempdir_in(private)
                    .map_err(|e| RunnerError::Io("create the loop directory".into(), e))?;
                (Some(t.path().to_path_buf()), Some(t))
            }
        };
        if let Some(d) = &dir {
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|e| RunnerError::Io(format!("restrict {}", d.display()), e))?;
        }
        backend.prepare(&cfg.image).await?;
        if cfg.warm && backend.runtime() != crate::types::runtime::Runtime::Qemu {
            return Err(ConfigError(format!(
                "--warm needs the qemu runtime (-R qemu), not {}",
                backend.runtime().name()
            ))
            .into());
        }
        if cfg.warm && dir.is_none() {
            return Err(ConfigError(
                "--warm needs isolation (a loop directory), which the orchestrator's -I/--no-isolation turns off".into(),
            )
            .into());
        }
        let deadline = cfg.terminate.map(|t| Instant::now() + t);
        let (prefix_for_budget, rate_for_budget) = (cfg.prefix.clone(), cfg.registrations);
        info!(runtime = backend.runtime().name(), group = group_id, dir = ?dir, "runner loop {} ready", cfg.loop_id);
        Ok(Loop {
            cfg,
            backend,
            forge,
            group_id,
            dir,
            _own_dir: own,
            stop,
            deadline,
            last_exit: None,
            budget: budget::Budget::for_prefix(&prefix_for_budget, rate_for_budget),
            warm: None,
            done: 0,
            deferred: None,
        })
    }

    pub(super) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    pub(super) fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Run iterations until `-r`, `-k`, a signal or a valid `.brk`; a warm VM
    /// left then is removed like any other.
    pub async fn run(mut self) -> Result<(), RunnerError> {
        let r = self.iterations().await;
        if let Some(w) = self.warm.take() {
            self.discard(w).await;
        }
        self.flush_deferred().await;
        r
    }

    /// Will another iteration follow this one (`-r`, `-k`, a stop)?
    pub(super) fn more_to_come(&self) -> bool {
        !self.stopping() && !self.expired() && self.cfg.repeat.is_none_or(|r| self.done + 1 < r)
    }

    async fn iterations(&mut self) -> Result<(), RunnerError> {
        let mut failures = 0u32;
        let mut down = Outage::default();
        let mut full = Full::new(Lack::Space);
        let mut gone = Full::new(Lack::HostFiles);
        loop {
            if self.stopping() {
                info!("asked to stop: loop ends after {} job(s)", self.done);
                return Ok(());
            }
            if self.expired() {
                info!(
                    "lifetime (-k) reached: loop ends after {} job(s)",
                    self.done
                );
                return Ok(());
            }
            if self.cfg.repeat.is_some_and(|r| self.done >= r) {
                info!("{} iteration(s) done (-r): loop ends", self.done);
                return Ok(());
            }
            let it = match self.iteration().await {
                Err(RunnerError::Stopped) => {
                    info!("asked to stop: loop ends after {} job(s)", self.done);
                    return Ok(());
                }
                // GitHub down or failing past the retries of one request: the loop
                // waits it out itself (a restart would not help, and would count
                // towards giving up). The registration budget still bounds mints.
                Err(RunnerError::Forge(e)) if e.is_transient() => {
                    self.last_exit = None;
                    down.wait(&e, &mut self.stop.clone()).await;
                    continue;
                }
                // A full disk: said once, then waited out here (a restart would not
                // free space, and would count towards giving up).
                Err(e) if e.is_disk_full() => {
                    self.last_exit = None;
                    full.wait(&e, &mut self.stop.clone()).await;
                    continue;
                }
                // QEMU or the bundle gone (uninstalled, pruned, being replaced):
                // said once, no runner minted meanwhile, waited out the same way.
                Err(e) if e.is_host_gone() => {
                    self.last_exit = None;
                    gone.wait(&e, &mut self.stop.clone()).await;
                    continue;
                }
                r => r?,
            };
            down = Outage::default();
            full.over();
            gone.over();
            if it.deprecated {
                return Err(RunnerError::RunnerDeprecated {
                    image: self.cfg.image.clone(),
                });
            }
            if it.ready {
                self.done += 1;
                failures = 0;
            } else if let Some(why) = it.failure {
                failures += 1;
                // The back-off below is not host overhead: do not count it as turnaround.
                self.last_exit = None;
                if failures >= self.cfg.max_failures {
                    return Err(RunnerError::GuestFailing {
                        count: failures,
                        last: why,
                    });
                }
                let backoff = Duration::from_secs(1 << failures.min(5));
                events::emit(&crate::types::status::LoopEvent::BackingOff {
                    seconds: backoff.as_secs(),
                    why: why.clone(),
                });
                warn!(
                    "iteration failed ({why}); retrying in {}s ({failures}/{})",
                    backoff.as_secs(),
                    self.cfg.max_failures
                );
                let mut stop = self.stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            }
            if it.end {
                info!("loop ends after {} job(s)", self.done);
                return Ok(());
            }
        }
    }
}

/// Waiting out GitHub being unreachable or failing: 5 s doubling to 5 min, or
/// what GitHub asked for.
#[derive(Default)]
struct Outage {
    tries: u32,
}

impl Outage {
    /// Wait before the next try after `e`; `false` when asked to stop meanwhile.
    async fn wait(&mut self, e: &ForgeError, stop: &mut watch::Receiver<bool>) -> bool {
        self.tries += 1;
        let wait = e.retry_after().unwrap_or_else(|| {
            Duration::from_secs(5u64 << self.tries.min(6).saturating_sub(1)).min(OUTAGE_MAX_WAIT)
        });
        warn!(
            "GitHub is unreachable or failing ({e}); trying again in {}s (attempt {})",
            wait.as_secs(),
            self.tries
        );
        events::emit(&crate::types::status::LoopEvent::BackingOff {
            seconds: wait.as_secs(),
            why: format!("GitHub: {e}"),
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = stop.wait_for(|s| *s) => false,
        }
    }
}

/// Is `e` a full file system (ENOSPC) or an exhausted quota (EDQUOT)?
pub(crate) fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(c) if c == libc::ENOSPC || c == libc::EDQUOT)
}

/// What the host lacks while a loop waits ([`Full`]).
#[derive(Clone, Copy)]
enum Lack {
    /// Space on a full file system.
    Space,
    /// The hypervisor's executable or the bundle ([`RunnerError::is_host_gone`]).
    HostFiles,
}

/// Waiting for what the host lacks (space on a full file system, or QEMU or the
/// bundle back): said once (with the path), tried again after 2 s doubling to
/// [`FULL_MAX_WAIT`]; its end is said too.
struct Full {
    lack: Lack,
    since: Option<Instant>,
    tries: u32,
}

impl Full {
    fn new(lack: Lack) -> Full {
        Full {
            lack,
            since: None,
            tries: 0,
        }
    }

    /// Wait before the next try after `e`; `false` when asked to stop.
    async fn wait(&mut self, e: &RunnerError, stop: &mut watch::Receiver<bool>) -> bool {
        self.tries += 1;
        let wait =
            Duration::from_secs(2u64 << self.tries.min(5).saturating_sub(1)).min(FULL_MAX_WAIT);
        let why = match e {
            RunnerError::Io(what, source) => format!("cannot {what}: {source}"),
            RunnerError::Backend(b) => b.to_string(),
            other => other.to_string(),
        };
        let waiting = match self.lack {
            Lack::Space => "the file system is full: waiting for space",
            Lack::HostFiles => "no runner is registered until it is back: waiting",
        };
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::error!(
                "{why}; {waiting} (trying again every {}s at most)",
                FULL_MAX_WAIT.as_secs()
            );
        } else {
            tracing::debug!("still waiting ({why}); trying again in {}s", wait.as_secs());
        }
        events::emit(&crate::types::status::LoopEvent::BackingOff {
            seconds: wait.as_secs(),
            why,
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = stop.wait_for(|s| *s) => false,
        }
    }

    /// An iteration went through: what was lacking, if anything, is back.
    fn over(&mut self) {
        if let Some(t) = self.since.take() {
            let what = match self.lack {
                Lack::Space => "space is back",
                Lack::HostFiles => "what was gone from the host is back",
            };
            info!("{what}: the loop goes on after {}s", t.elapsed().as_secs());
        }
        self.tries = 0;
    }
}

/// The longest wait between two tries while the disk is full.
const FULL_MAX_WAIT: Duration = Duration::from_secs(30);

/// The longest wait between two tries while GitHub is down.
const OUTAGE_MAX_WAIT: Duration = Duration::from_secs(300);

/// A watch channel set to `true` on SIGTERM, SIGINT or SIGHUP.
pub fn stop_on_signals() -> std::io::Result<watch::Receiver<bool>> {
    Ok(stop_channel()?.1)
}

/// [`stop_on_signals`], with a sender for other reasons to stop (`drain`).
pub fn stop_channel(
) -> std::io::Result<(std::sync::Arc<watch::Sender<bool>>, watch::Receiver<bool>)> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(false);
    let tx = std::sync::Arc::new(tx);
    let ours = tx.clone();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok((ours, rx))
}
