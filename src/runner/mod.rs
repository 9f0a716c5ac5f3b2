//! One runner loop (design.md §3): per iteration an id and a fresh secret, a
//! single-use credential minted here on the host, a `.env` for the guest, a VM,
//! and afterwards the VM, the `<id>.*` files and the GitHub registration removed.

pub mod budget;
pub mod config;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protocol::envfile::{GuestConfig, Registration};
use protocol::{file_in, safefs, secret, Kind, MAX_SIGNAL_FILE};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backend::{Backend, BackendError};
use crate::forge::{Deletion, Forge, ForgeError};
use crate::types::invalid::ConfigError;
use crate::types::mount::Mount;
use crate::types::names::{iteration_id, vm_name};
use crate::types::vm::VmSpec;
use config::RunnerConfig;

/// Names tried for one JIT config when GitHub answers 409 or uncertainly.
const MINT_ATTEMPTS: u32 = 3;
/// How long an idle guest gets to honour `.trm` before the VM is killed.
const IDLE_STOP_WAIT: Duration = Duration::from_secs(30);
/// How long a guest gets after the power button when `.trm` went unanswered.
const POWERDOWN_WAIT: Duration = Duration::from_secs(10);
/// How long a guest that is still booting gets to see `.trm` before it is killed.
const BOOTING_STOP_WAIT: Duration = Duration::from_secs(2);
/// Extra time over `--grace` for a busy guest to wind down.
const BUSY_STOP_MARGIN: Duration = Duration::from_secs(20);

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
    /// The documented exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunnerError::Config(_) | RunnerError::RunnerDeprecated { .. } => 2,
            _ => 1,
        }
    }
}

/// Why a running VM is being stopped by the host.
#[derive(Debug, Clone, Copy)]
enum Drain {
    Lifetime,
    Signal,
}

/// A VM being stopped by the host.
struct Running<'a> {
    spec: &'a VmSpec,
    id: &'a str,
    secret: &'a str,
    runner_id: Option<u64>,
    /// Its runner was up (`.tkn` seen).
    ready: bool,
}

/// What one iteration came to.
struct Iteration {
    /// The guest wrote `.tkn`.
    ready: bool,
    /// The loop must end (drained, or a valid `.brk`).
    end: bool,
    /// Why it failed, when it did not get ready.
    failure: Option<String>,
    /// The guest's runner was refused as deprecated (`Runner.Listener` exit 7).
    deprecated: bool,
}

/// The guest's status when GitHub refused its actions runner as deprecated
/// (`Runner.Listener` exit 7, passed on by the entrypoint).
const RUNNER_VERSION_DEPRECATED: i32 = 7;

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
}

impl Loop {
    /// Check the backend, reach GitHub (resolving the runner group), prepare the loop directory.
    pub async fn new(
        cfg: RunnerConfig,
        isolation: bool,
        stop: watch::Receiver<bool>,
    ) -> Result<Loop, RunnerError> {
        let backend = Backend::detect(cfg.runtime, &cfg.qemu)?;
        let forge = Forge::new(cfg.endpoints.clone(), cfg.scope, &cfg.principal, &cfg.auth).await?;
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
                (Some(d.clone()), None)
            }
            (None, true) => {
                let t = tempfile::Builder::new()
                    .prefix(&format!(
                        "gh-runner-microvm.{}-{:03}.",
                        cfg.prefix, cfg.loop_id
                    ))
                    .tempdir()
                    .map_err(|e| RunnerError::Io("create the loop directory".into(), e))?;
                (Some(t.path().to_path_buf()), Some(t))
            }
        };
        if let Some(d) = &dir {
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|e| RunnerError::Io(format!("restrict {}", d.display()), e))?;
        }
        backend.prepare(&cfg.image).await?;
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
        })
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Run iterations until `-r`, `-k`, a signal or a valid `.brk`.
    pub async fn run(mut self) -> Result<(), RunnerError> {
        let mut done = 0u64;
        let mut failures = 0u32;
        loop {
            if self.stopping() {
                info!("asked to stop: loop ends after {done} job(s)");
                return Ok(());
            }
            if self.expired() {
                info!("lifetime (-k) reached: loop ends after {done} job(s)");
                return Ok(());
            }
            if self.cfg.repeat.is_some_and(|r| done >= r) {
                info!("{done} iteration(s) done (-r): loop ends");
                return Ok(());
            }
            let it = match self.iteration().await {
                Err(RunnerError::Stopped) => {
                    info!("asked to stop: loop ends after {done} job(s)");
                    return Ok(());
                }
                r => r?,
            };
            if it.deprecated {
                return Err(RunnerError::RunnerDeprecated {
                    image: self.cfg.image.clone(),
                });
            }
            if it.ready {
                done += 1;
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
                info!("loop ends after {done} job(s)");
                return Ok(());
            }
        }
    }

    /// Mint a credential under a fresh name; on 409 or an uncertain failure, remove
    /// whatever got that name and try again under another (never a blind re-POST).
    async fn mint(&self) -> Result<(String, Registration, Option<u64>), RunnerError> {
        let mut last = None;
        for attempt in 1..=MINT_ATTEMPTS {
            self.budget
                .take(&mut self.stop.clone())
                .await
                .map_err(|e| {
                    RunnerError::Io(
                        format!("use the registration budget {}", self.budget.file.display()),
                        e,
                    )
                })?;
            if self.stopping() {
                return Err(RunnerError::Stopped);
            }
            let id = iteration_id(self.cfg.loop_id)
                .map_err(|e| RunnerError::Io("read the system's random source".into(), e))?;
            let name = vm_name(&self.cfg.prefix, &id);
            if !self.cfg.jit {
                let token = self.forge.registration_token().await?;
                let reg = Registration::Token {
                    url: self.forge.runner_url(),
                    token,
                    labels: self.cfg.labels.join(","),
                    group: self.cfg.group.clone(),
                };
                return Ok((id, reg, None));
            }
            match self.forge.jit(&name, self.group_id, &self.cfg.labels).await {
                Ok(jit) => {
                    debug!(runner = %name, runner_id = jit.runner_id, "JIT config minted");
                    return Ok((
                        id,
                        Registration::Jit {
                            config: jit.encoded,
                        },
                        Some(jit.runner_id),
                    ));
                }
                Err(e) if matches!(e, ForgeError::Conflict(_)) || e.is_transient() => {
                    // The POST may have created the runner although it failed: remove
                    // whatever has that name, then use a fresh one (never a blind re-POST).
                    warn!("minting a JIT config for {name} failed ({e}); cleaning up and retrying under a new name ({attempt}/{MINT_ATTEMPTS})");
                    if let Ok(Some(r)) = self.forge.find_runner(&name).await {
                        let _ = self.forge.delete_runner(r.id).await;
                    }
                    let wait = e
                        .retry_after()
                        .unwrap_or(Duration::from_secs(attempt as u64));
                    last = Some(e);
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last
            .map(RunnerError::from)
            .unwrap_or(RunnerError::GuestFailing {
                count: 0,
                last: "no attempt".into(),
            }))
    }

    async fn iteration(&mut self) -> Result<Iteration, RunnerError> {
        let (id, registration, runner_id) = self.mint().await?;
        let name = vm_name(&self.cfg.prefix, &id);
        let secret = match &self.cfg.secret {
            Some(s) => s.clone(),
            None => secret::generate()
                .map_err(|e| RunnerError::Io("read the system's random source".into(), e.into()))?,
        };
        let guest = GuestConfig {
            name: name.clone(),
            registration,
            secret: secret.clone(),
            user: self.cfg.user.clone(),
            update: self.cfg.update,
            grace: self.cfg.grace,
            verbose: self.cfg.verbose,
            dns: self.cfg.dns.clone(),
        };
        let dotenv = guest.to_dotenv().map_err(|e| ConfigError(e.to_string()))?;
        drop(guest);
        let args = match &self.dir {
            Some(dir) => {
                let env = file_in(dir, &id, Kind::Env);
                safefs::write_replace(&env, dotenv.as_bytes(), 0o600)
                    .map_err(|e| RunnerError::Io(format!("write {}", env.display()), e))?;
                let g = Path::new(protocol::GUEST_ENV_DIR);
                vec![
                    "-E".into(),
                    file_in(g, &id, Kind::Env).display().to_string(),
                    "-k".into(),
                    file_in(g, &id, Kind::Tkn).display().to_string(),
                ]
            }
            // Insecure mode: the configuration travels as guest options.
            None => dotenv
                .lines()
                .filter_map(|l| l.split_once('='))
                .flat_map(|(k, v)| ["-c".to_string(), format!("{k}={}", v.trim_matches('\''))])
                .collect(),
        };
        drop(dotenv);
        let mut mounts = self.cfg.mounts.clone();
        let entrypoint = match &self.cfg.dev {
            Some((host, guest)) => {
                mounts.push(Mount {
                    host: host.clone(),
                    guest: guest.clone(),
                    options: Some("ro".into()),
                });
                format!("{guest}/entrypoint")
            }
            None => protocol::IMAGE_ENTRYPOINT.to_string(),
        };
        let spec = VmSpec {
            name: name.clone(),
            image: self.cfg.image.clone(),
            cpus: self.cfg.cpus,
            memory: self.cfg.memory,
            dns: self.cfg.dns.clone(),
            env_dir: self.dir.clone(),
            mounts,
            entrypoint,
            args,
        };
        let outcome = self.boot_and_wait(&spec, &id, &secret, runner_id).await;
        self.cleanup(&name, &id, runner_id).await;
        outcome
    }

    async fn boot_and_wait(
        &mut self,
        spec: &VmSpec,
        id: &str,
        secret: &str,
        runner_id: Option<u64>,
    ) -> Result<Iteration, RunnerError> {
        let name = &spec.name;
        if let Err(e) = self.backend.create(spec).await {
            return Ok(Iteration {
                ready: false,
                end: false,
                failure: Some(format!("cannot create VM {name}: {e}")),
                deprecated: false,
            });
        }
        let mut child = match self.backend.start(spec) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Iteration {
                    ready: false,
                    end: false,
                    failure: Some(format!("cannot start VM {name}: {e}")),
                    deprecated: false,
                })
            }
        };
        let started = Instant::now();
        match self.last_exit.take() {
            Some(t) => info!(
                turnaround_ms = (started - t).as_millis() as u64,
                "VM {name} started"
            ),
            None => info!("VM {name} started"),
        }
        let tkn = self.dir.as_deref().map(|d| file_in(d, id, Kind::Tkn));
        // Without a loop directory there is no ready mark: a started VM counts as up.
        let mut ready = tkn.is_none();
        let boot_deadline = started + Duration::from_secs(self.cfg.boot_timeout);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut stop = self.stop.clone();
        let mut drained = false;
        let status = loop {
            tokio::select! {
                st = child.wait() => break st.ok(),
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s), if !drained => {}
            }
            if !ready && tkn.as_deref().is_some_and(safefs::is_regular) {
                ready = true;
                info!(
                    boot_ms = started.elapsed().as_millis() as u64,
                    "runner {name} is up"
                );
            }
            if !ready && self.backend.boot_stalled(name, started.elapsed()) {
                let tail = self
                    .backend
                    .console_tail(name)
                    .map(|t| format!("; its console ended with:\n{t}"))
                    .unwrap_or_default();
                warn!("VM {name} shows no sign of its init after {}s (a silent boot hang): killing it and retrying{tail}", started.elapsed().as_secs());
                return Ok(self
                    .abandon_boot(name, &mut child, format!("VM {name} hung at boot"))
                    .await);
            }
            if !ready && Instant::now() >= boot_deadline {
                warn!(
                    "VM {name} wrote no ready mark within --boot-timeout {}s: killing it",
                    self.cfg.boot_timeout
                );
                let tail = self
                    .backend
                    .console_tail(name)
                    .map(|t| format!("; its console ended with:\n{t}"))
                    .unwrap_or_default();
                let why = format!("boot timeout ({}s){tail}", self.cfg.boot_timeout);
                return Ok(self.abandon_boot(name, &mut child, why).await);
            }
            let why = if self.stopping() {
                Some(Drain::Signal)
            } else if self.expired() {
                Some(Drain::Lifetime)
            } else {
                None
            };
            if let (Some(why), false) = (why, drained) {
                drained = true;
                break self
                    .drain(
                        why,
                        Running {
                            spec,
                            id,
                            secret,
                            runner_id,
                            ready,
                        },
                        &mut child,
                    )
                    .await;
            }
        };
        self.last_exit = Some(Instant::now());
        // A fast guest can write .tkn, run its job and exit between two ticks.
        if !ready && tkn.as_deref().is_some_and(safefs::is_regular) {
            ready = true;
        }
        let mut end = drained;
        let exit = status.as_ref().map(|st| self.backend.describe_exit(st));
        match &exit {
            // A runner deleted under it by the host may exit with an error: expected.
            Some((ok, what)) if *ok || drained => info!("VM {name} exited ({what})"),
            Some((_, what)) => warn!("VM {name} exited ({what})"),
            None => warn!("VM {name}: exit status unknown"),
        }
        if let Some(dir) = &self.dir {
            let brk = file_in(dir, id, Kind::Brk);
            match safefs::read_bounded(&brk, MAX_SIGNAL_FILE) {
                Ok(None) => {}
                Ok(Some(c)) if secret::matches(secret, &c) => {
                    info!("the guest asked to end this loop ({})", brk.display());
                    end = true;
                }
                Ok(Some(_)) => warn!(
                    "ignoring {}: it does not carry this VM's secret",
                    brk.display()
                ),
                Err(e) => warn!("ignoring .brk: {e}"),
            }
        }
        let failure = (!ready && !drained).then(|| {
            let what = exit.map(|(_, w)| w).unwrap_or_else(|| "status unknown".into());
            match self.backend.console_tail(name) {
                Some(tail) => format!("VM {name} exited ({what}) before its runner was up; its console ended with:\n{tail}"),
                None => format!("VM {name} exited ({what}) before its runner was up"),
            }
        });
        let deprecated = !drained
            && status.as_ref().and_then(|st| self.backend.guest_status(st))
                == Some(RUNNER_VERSION_DEPRECATED);
        Ok(Iteration {
            ready,
            end,
            failure,
            deprecated,
        })
    }

    /// Kill a VM whose boot is given up; the iteration failed for `why`.
    async fn abandon_boot(
        &mut self,
        name: &str,
        child: &mut tokio::process::Child,
        why: String,
    ) -> Iteration {
        self.backend.force_stop(name, child).await;
        let _ = child.wait().await;
        self.last_exit = Some(Instant::now());
        Iteration {
            ready: false,
            end: false,
            failure: Some(why),
            deprecated: false,
        }
    }

    /// Ask the guest to stop: deregister at GitHub (so no new job comes), write
    /// `.trm`, give an idle runner a short wait and a busy one `--grace`, then kill.
    async fn drain(
        &self,
        why: Drain,
        vm: Running<'_>,
        child: &mut tokio::process::Child,
    ) -> Option<std::process::ExitStatus> {
        let Running {
            spec,
            id,
            secret,
            runner_id,
            ready,
        } = vm;
        let name = &spec.name;
        let busy = match self.lookup(name, runner_id).await {
            Some(rid) => match self.forge.delete_runner(rid).await {
                Ok(Deletion::Deleted) | Ok(Deletion::Gone) => false,
                Ok(Deletion::Busy) => true,
                Err(e) => {
                    warn!("cannot deregister {name} ({e}); assuming it is busy");
                    true
                }
            },
            None => false,
        };
        let wait = match (self.dir.as_ref(), busy, ready) {
            (None, _, _) => Duration::ZERO, // no .trm without a loop directory: force
            (Some(_), true, _) => Duration::from_secs(self.cfg.grace) + BUSY_STOP_MARGIN,
            (Some(_), false, true) => IDLE_STOP_WAIT,
            // Still booting: its runner is not up, so it has no job to lose.
            (Some(_), false, false) => BOOTING_STOP_WAIT,
        };
        info!(
            "stopping VM {name} ({}): {}",
            match why {
                Drain::Lifetime => "lifetime reached",
                Drain::Signal => "signal",
            },
            if busy {
                format!("a job is running, it gets up to {}s", self.cfg.grace)
            } else {
                "idle, stopping now".into()
            }
        );
        if let Some(dir) = &self.dir {
            let trm = file_in(dir, id, Kind::Trm);
            if let Err(e) = safefs::write_replace(&trm, secret.as_bytes(), 0o600) {
                warn!("cannot write {}: {e}", trm.display());
            }
        }
        match tokio::time::timeout(wait, child.wait()).await {
            Ok(st) => st.ok(),
            Err(_) => {
                // No .trm (insecure mode) or no answer to it: try the power button.
                let powerdown_wait = match (self.dir.is_some(), busy) {
                    (true, _) => POWERDOWN_WAIT,
                    (false, true) => Duration::from_secs(self.cfg.grace) + BUSY_STOP_MARGIN,
                    (false, false) => IDLE_STOP_WAIT,
                };
                if ready && self.backend.powerdown(name).await {
                    info!("asked VM {name} to power down (ACPI power button)");
                    if let Ok(st) = tokio::time::timeout(powerdown_wait, child.wait()).await {
                        return st.ok();
                    }
                }
                warn!(
                    "VM {name} did not stop within {}s: killing it",
                    wait.as_secs()
                );
                self.backend.force_stop(name, child).await;
                child.wait().await.ok()
            }
        }
    }

    async fn lookup(&self, name: &str, runner_id: Option<u64>) -> Option<u64> {
        match runner_id {
            Some(id) => Some(id),
            None => self
                .forge
                .find_runner(name)
                .await
                .ok()
                .flatten()
                .map(|r| r.id),
        }
    }

    /// After every VM: remove it, its files, and its registration if still there.
    async fn cleanup(&self, name: &str, id: &str, runner_id: Option<u64>) {
        if let Err(e) = self.backend.delete(name).await {
            warn!("cannot delete VM {name}: {e}");
        }
        if let Some(dir) = &self.dir {
            if let Err(e) = safefs::remove_id_files(dir, id) {
                warn!("cannot remove {id}.* in {}: {e}", dir.display());
            }
        }
        if let Some(rid) = self.lookup(name, runner_id).await {
            match self.forge.delete_runner(rid).await {
                Ok(Deletion::Deleted) => debug!("deregistered {name} at GitHub"),
                Ok(Deletion::Gone) => {}
                Ok(Deletion::Busy) => {
                    warn!("GitHub still sees {name} as busy although its VM is gone")
                }
                Err(e) => warn!("cannot deregister {name}: {e}"),
            }
        }
    }
}

/// A watch channel set to `true` on SIGTERM, SIGINT or SIGHUP.
pub fn stop_on_signals() -> std::io::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(false);
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
    Ok(rx)
}
