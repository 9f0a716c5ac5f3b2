//! The orchestrator (design.md §3, §5): one private environment root, one
//! directory per loop, a lock per prefix, N `runner` children supervised with
//! back-off, and on SIGINT/SIGTERM an orderly shutdown that leaves nothing behind.

mod args;
pub mod image;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::backend::{Backend, BackendError};
use crate::runner::budget::Rate;
use crate::runner::config::RunnerConfig;
use crate::types::names::{is_root_of, is_vm_of, loop_dir, root_prefix};

/// A loop that ran this long before failing starts its failure count afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(600);
/// Longest wait before restarting a failed loop.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(300);
/// Failures in a row (no healthy run between them) before a loop is given up. With
/// the loop's own limit of 5 failed VMs, a broken image registers at most ~25
/// runners before everything stops, instead of one every few seconds forever.
const MAX_LOOP_FAILURES: u32 = 5;
/// Supervision tick.
const TICK: Duration = Duration::from_millis(200);

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
}

impl OrchestratorError {
    /// The documented exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            OrchestratorError::Usage(_) | OrchestratorError::ImageInput(_) => 2,
            _ => 1,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OrchestratorError {
    let what = what.into();
    move |e| OrchestratorError::Io(what, e)
}

#[derive(Debug)]
enum LoopState {
    /// Not started yet (staggering) or waiting for a restart.
    Waiting {
        not_before: Instant,
    },
    Running {
        child: Child,
        since: Instant,
    },
    Done,
    Failed(String),
}

struct LoopSlot {
    index: u32,
    dir: Option<PathBuf>,
    state: LoopState,
    failures: u32,
    started_once: bool,
}

/// Take the per-prefix lock (held for the life of the returned value).
fn lock(tmp: &Path, prefix: &str) -> Result<Flock<std::fs::File>, OrchestratorError> {
    let path = tmp.join(format!("gh-runner-microvm.{prefix}.lock"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io(format!("open the lock file {}", path.display())))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut f) => {
            use std::io::{Seek, Write};
            let _ = f.set_len(0);
            let _ = f.seek(std::io::SeekFrom::Start(0));
            let _ = writeln!(f, "{}", std::process::id());
            Ok(f)
        }
        Err((_, _)) => {
            let holder = std::fs::read_to_string(&path)
                .map(|p| format!("pid {}", p.trim()))
                .unwrap_or_else(|_| "unknown pid".into());
            Err(OrchestratorError::Locked {
                prefix: prefix.into(),
                holder,
            })
        }
    }
}

/// Remove environment roots and VMs that a dead orchestrator of `prefix` left.
async fn sweep(tmp: &Path, prefix: &str, backend: &Backend) {
    if let Ok(entries) = std::fs::read_dir(tmp) {
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_str().is_some_and(|n| is_root_of(n, prefix)) {
                warn!(
                    "removing {} left by a previous orchestrator",
                    e.path().display()
                );
                if let Err(err) = protocol::safefs::remove(&e.path()) {
                    warn!("cannot remove {}: {err}", e.path().display());
                }
            }
        }
    }
    match backend.list(prefix).await {
        Ok(vms) => {
            for vm in vms.into_iter().filter(|v| is_vm_of(v, prefix)) {
                warn!("removing VM {vm} left by a previous orchestrator");
                if let Err(e) = backend.delete(&vm).await {
                    warn!("cannot remove VM {vm}: {e}");
                }
            }
        }
        Err(e) => warn!("cannot list VMs to clean up: {e}"),
    }
}

/// Host-scoped clean-up of GitHub registrations: only names of exactly this prefix
/// (`<prefix>-<loop>-<random>`), never another host's or tool's runners.
struct Reconciler {
    forge: crate::forge::Forge,
    prefix: String,
    /// Offline runners seen without a live VM on the previous pass.
    marked: std::collections::HashSet<u64>,
}

impl Reconciler {
    /// One pass. `live` are the VM names that exist now; with `at_start`, nothing of
    /// ours can be running, so stale registrations go at once; otherwise an offline
    /// runner with no VM is marked, and deleted only if still so on the next pass
    /// (a runner that is just booting is never deleted).
    async fn pass(&mut self, live: &[String], at_start: bool) {
        let runners = match self.forge.list_runners().await {
            Ok(r) => r,
            Err(e) => {
                warn!("cannot list runners to clean up stale registrations: {e}");
                return;
            }
        };
        let mut marked = std::collections::HashSet::new();
        for r in runners
            .into_iter()
            .filter(|r| is_vm_of(&r.name, &self.prefix))
        {
            if r.busy || r.status != "offline" || live.contains(&r.name) {
                continue;
            }
            if at_start || self.marked.contains(&r.id) {
                match self.forge.delete_runner(r.id).await {
                    Ok(crate::forge::Deletion::Deleted) => {
                        info!("deleted stale runner registration {}", r.name)
                    }
                    Ok(_) => {}
                    Err(e) => warn!("cannot delete stale runner {}: {e}", r.name),
                }
            } else {
                marked.insert(r.id);
            }
        }
        self.marked = marked;
    }
}

/// Does loop directory `dir` hold a ready mark (`*.tkn`)?
fn has_tkn(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name().to_str().is_some_and(|n| n.ends_with(".tkn"))
                && e.file_type().is_ok_and(|t| t.is_file())
        })
    })
}

/// Everything the orchestrator needs to start a loop.
struct Launcher {
    runner: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Launcher {
    fn spawn(&self, slot: &LoopSlot) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.runner);
        cmd.args(&self.args).arg("--").arg(slot.index.to_string());
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.env(
            "RUNNER_ENVIRONMENT",
            slot.dir
                .as_deref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
        );
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        // SAFETY: setpgid/prctl are async-signal-safe. Own process group: a terminal's
        // ^C reaches only us, and we stop the loops in order. PDEATHSIG SIGTERM: if we
        // are killed, each loop still drains and cleans up after itself.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setpgid(0, 0) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
    }
}

/// Run a subcommand; `n` is the global `-n`.
pub fn subcommand(command: Subcommand, n: u32) -> Result<(), OrchestratorError> {
    match command {
        Subcommand::Demo(cfg) => crate::demo::run(cfg, n).map_err(OrchestratorError::Demo),
        Subcommand::Bundle(job) => image::bundle(job),
        Subcommand::Prune { all } => image::prune(all),
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
    let _lock = lock(&tmp, &prefix)?;
    sweep(&tmp, &prefix, &backend).await;
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
    let result = supervise(&cfg, root.as_deref(), &backend, launcher, reconciler).await;
    // Whatever happened: no VM of ours and no environment directory may remain.
    if let Ok(vms) = backend.list(&prefix).await {
        for vm in vms.into_iter().filter(|v| is_vm_of(v, &prefix)) {
            warn!("removing leftover VM {vm}");
            let _ = backend.delete(&vm).await;
        }
    }
    if let Some(root) = &root {
        if let Err(e) = protocol::safefs::remove(root) {
            warn!("cannot remove {}: {e}", root.display());
        }
    }
    result
}

impl Launcher {
    /// The `runner` beside us (or on PATH), its arguments, and its environment
    /// (design.md §3: the orchestrator's variables, and the secrets moved out of argv).
    fn new(
        cfg: &OrchestratorConfig,
        backend: &Backend,
        args: Vec<String>,
        pat: Option<String>,
        secret: Option<String>,
    ) -> Result<Launcher, OrchestratorError> {
        let runner = std::env::current_exe()
            .ok()
            .map(|e| e.with_file_name("runner"))
            .filter(|p| p.is_file())
            .or_else(|| which::which("runner").ok())
            .ok_or_else(|| {
                OrchestratorError::Usage(
                    "cannot find the runner executable beside the orchestrator or on PATH".into(),
                )
            })?;
        let mut env = vec![
            ("RUNNER_PREFIX".to_string(), cfg.prefix.clone()),
            (
                "RUNNER_RUNTIME".to_string(),
                backend.runtime().name().to_string(),
            ),
            ("RUNNER_VERBOSE".to_string(), cfg.verbose.to_string()),
        ];
        if let Some(l) = &cfg.log {
            env.push(("RUNNER_LOG".into(), l.display().to_string()));
        }
        if !cfg.isolation {
            env.push(("RUNNER_ISOLATION".into(), "0".into()));
        }
        if let Some(r) = cfg.registrations {
            env.push(("RUNNER_REGISTRATIONS".into(), r.to_string()));
        }
        if let Some(p) = pat {
            env.push(("RUNNER_PAT".into(), p));
        }
        if let Some(s) = secret {
            env.push(("RUNNER_SECRET".into(), s));
        }
        Ok(Launcher { runner, args, env })
    }
}

async fn supervise(
    cfg: &OrchestratorConfig,
    root: Option<&Path>,
    backend: &Backend,
    launcher: Launcher,
    mut reconciler: Option<Reconciler>,
) -> Result<(), OrchestratorError> {
    let (prefix, rcfg) = (cfg.prefix.as_str(), &cfg.runner);
    // The environment root exists exactly when loops are isolated.
    let isolation = root.is_some();
    let every = Duration::from_secs(cfg.reconcile);
    let mut next_reconcile = Instant::now() + every;

    let mut slots = Vec::new();
    for i in 1..=cfg.runners {
        let dir = match root {
            Some(r) => {
                let d = r.join(loop_dir(prefix, i));
                protocol::safefs::create_private_dir(&d)
                    .map_err(io(format!("create {}", d.display())))?;
                Some(d)
            }
            None => None,
        };
        slots.push(LoopSlot {
            index: i,
            dir,
            state: LoopState::Waiting {
                not_before: Instant::now(),
            },
            failures: 0,
            started_once: false,
        });
    }
    info!(
        loops = cfg.runners,
        runtime = backend.runtime().name(),
        "starting"
    );

    let mut stop = crate::runner::stop_on_signals().map_err(io("install signal handlers"))?;
    // Staggering: loop i+1 starts when loop i has its .tkn (bounded), or after -s without isolation.
    let stagger = if isolation {
        Duration::from_secs(rcfg.boot_timeout)
    } else {
        Duration::from_secs(cfg.sleep)
    };
    let mut next_start: usize = 0;
    let mut gate: Option<(usize, Instant)> = None;
    let mut config_error = false;
    loop {
        if *stop.borrow() {
            break;
        }
        // Start the next loop when the previous one is up, or its wait is over.
        if next_start < slots.len() {
            let open = match gate {
                None => true,
                Some((prev, since)) => {
                    let elapsed = since.elapsed();
                    let up = isolation && slots[prev].dir.as_deref().is_some_and(has_tkn);
                    let gone = !matches!(slots[prev].state, LoopState::Running { .. });
                    if elapsed >= stagger && isolation && !up && !gone {
                        warn!(
                            "loop {} has no ready runner after {}s; starting loop {} anyway",
                            slots[prev].index,
                            stagger.as_secs(),
                            slots[next_start].index
                        );
                    }
                    up || gone || elapsed >= stagger
                }
            };
            if open {
                let s = &mut slots[next_start];
                s.state = LoopState::Waiting {
                    not_before: Instant::now(),
                };
                start(&launcher, s)?;
                gate = Some((next_start, Instant::now()));
                next_start += 1;
            }
        }
        for s in slots.iter_mut().take(next_start) {
            match &mut s.state {
                LoopState::Waiting { not_before }
                    if s.started_once && Instant::now() >= *not_before =>
                {
                    start(&launcher, s)?
                }
                LoopState::Running { child, since } => {
                    let Ok(Some(st)) = child.try_wait() else {
                        continue;
                    };
                    let ran = since.elapsed();
                    match st.code() {
                        Some(0) => {
                            info!("loop {} ended", s.index);
                            s.state = LoopState::Done;
                        }
                        Some(2) => {
                            config_error = true;
                            s.state = LoopState::Failed(format!(
                                "loop {} refused its configuration (exit 2)",
                                s.index
                            ));
                        }
                        _ => {
                            s.failures = if ran >= HEALTHY_RUN {
                                1
                            } else {
                                s.failures + 1
                            };
                            if s.failures >= MAX_LOOP_FAILURES {
                                let why = format!(
                                    "loop {} failed {} times in a row ({st} after {}s, last); given up",
                                    s.index,
                                    s.failures,
                                    ran.as_secs()
                                );
                                warn!("{why}");
                                s.state = LoopState::Failed(why);
                            } else {
                                let backoff = Duration::from_secs(1 << s.failures.min(8))
                                    .min(MAX_RESTART_BACKOFF);
                                warn!(
                                    "loop {} died ({st}) after {}s; restarting in {}s",
                                    s.index,
                                    ran.as_secs(),
                                    backoff.as_secs()
                                );
                                if let Some(d) = &s.dir {
                                    // Files of the dead loop's last VM are stale now.
                                    clear_dir(d);
                                }
                                s.state = LoopState::Waiting {
                                    not_before: Instant::now() + backoff,
                                };
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if next_start == slots.len()
            && slots
                .iter()
                .all(|s| matches!(s.state, LoopState::Done | LoopState::Failed(_)))
        {
            break;
        }
        if Instant::now() >= next_reconcile {
            if let Some(r) = reconciler.as_mut() {
                // Never judge registrations against an unknown set of live VMs.
                match backend.list(prefix).await {
                    Ok(live) => r.pass(&live, false).await,
                    Err(e) => warn!("cannot list VMs; skipping the registration clean-up: {e}"),
                }
            }
            next_reconcile = Instant::now() + every;
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    if *stop.borrow() {
        info!("stopping: asking every loop to terminate");
        shutdown(&mut slots, rcfg).await;
        return Ok(());
    }
    let failed: Vec<String> = slots
        .iter()
        .filter_map(|s| match &s.state {
            LoopState::Failed(w) => Some(w.clone()),
            _ => None,
        })
        .collect();
    if failed.is_empty() {
        info!("all loops ended");
        Ok(())
    } else if config_error {
        Err(OrchestratorError::Usage(failed.join("; ")))
    } else {
        Err(OrchestratorError::LoopsFailed(failed.join("; ")))
    }
}

fn start(launcher: &Launcher, s: &mut LoopSlot) -> Result<(), OrchestratorError> {
    let child = launcher
        .spawn(s)
        .map_err(io(format!("start {}", launcher.runner.display())))?;
    info!("loop {} started (pid {})", s.index, child.id().unwrap_or(0));
    s.state = LoopState::Running {
        child,
        since: Instant::now(),
    };
    s.started_once = true;
    Ok(())
}

fn clear_dir(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = protocol::safefs::remove(&e.path());
        }
    }
}

/// SIGTERM every running loop, wait for them (bounded by what a busy job may take),
/// then kill what is left.
async fn shutdown(slots: &mut [LoopSlot], rcfg: &RunnerConfig) {
    for s in slots.iter() {
        if let LoopState::Running { child, .. } = &s.state {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
    let bound = Duration::from_secs(rcfg.grace) + Duration::from_secs(60);
    let deadline = Instant::now() + bound;
    for s in slots.iter_mut() {
        if let LoopState::Running { child, .. } = &mut s.state {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, child.wait()).await.is_err() {
                warn!(
                    "loop {} did not stop within {}s: killing it",
                    s.index,
                    bound.as_secs()
                );
                if let Some(pid) = child.id() {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.wait().await;
            }
            s.state = LoopState::Done;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let first = lock(d.path(), "P").unwrap();
        let err = lock(d.path(), "P").unwrap_err();
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
        assert!(lock(d.path(), "Q").is_ok());
        drop(first);
        assert!(lock(d.path(), "P").is_ok());
    }
}
