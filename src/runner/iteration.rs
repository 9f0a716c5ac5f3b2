//! One iteration: the guest's `.env`, the VM spec, boot and wait for `.tkn`, the
//! VM's end and its `.brk`, and the clean-up after it (VM, files, registration).
//! Stopping a running VM on request is `drain`'s.

use std::path::Path;
use std::time::{Duration, Instant};

use protocol::envfile::GuestConfig;
use protocol::{file_in, safefs, secret, Kind, MAX_SIGNAL_FILE};
use tracing::{debug, info, warn};

use super::bounds::Watch;
use super::drain::{Drain, Running};
use super::events::emit;
use super::{Loop, RunnerError};
use crate::forge::Deletion;
use crate::logging::chain;
use crate::types::invalid::ConfigError;
use crate::types::mount::Mount;
use crate::types::names::vm_name;
use crate::types::status::{LoopEvent, Outcome};
use crate::types::vm::VmSpec;

/// What one iteration came to.
pub(super) struct Iteration {
    /// The guest wrote `.tkn`.
    pub(super) ready: bool,
    /// The loop must end (drained, or a valid `.brk`).
    pub(super) end: bool,
    /// Why it failed, when it did not get ready.
    pub(super) failure: Option<String>,
    /// The guest's runner was refused as deprecated (`Runner.Listener` exit 7).
    pub(super) deprecated: bool,
    /// How it ended, for status and metrics.
    pub(super) outcome: Outcome,
    /// VM start → exit (zero when it never started).
    pub(super) lifetime: Duration,
}

/// `--warm`: a VM started while the previous job ran, waiting for its
/// configuration; its runner's id (and so its name) was chosen then.
pub(super) struct Warm {
    id: String,
    spec: VmSpec,
    child: tokio::process::Child,
    /// `-D`: its private copy of the entrypoint.
    dev: Option<tempfile::TempDir>,
}

impl Iteration {
    /// A VM that failed before (or without) its runner being up.
    fn failed(outcome: Outcome, why: String, lifetime: Duration) -> Iteration {
        Iteration {
            ready: false,
            end: false,
            failure: Some(why),
            deprecated: false,
            outcome,
            lifetime,
        }
    }
}

impl Loop {
    pub(super) async fn iteration(&mut self) -> Result<Iteration, RunnerError> {
        // QEMU or the bundle gone under the loop: no runner is minted for a VM that
        // cannot start (the loop waits for it to come back).
        self.backend.check_host(&self.cfg.image)?;
        // The VM's start prepared before a runner is minted for it (QEMU: its
        // snapshot template made when missing), so that no runner waits for it and
        // one that cannot be prepared costs no registration.
        if self.warm.is_none() {
            let shape = self.shape();
            if let Err(e) = self.backend.prepare_start(&shape).await {
                let why = format!("cannot prepare the next VM: {}", chain(&e));
                return Ok(Iteration::failed(Outcome::VmFailed, why, Duration::ZERO));
            }
        }
        let warm = self.warm.take();
        emit(&LoopEvent::Minting);
        let minted = self.mint(warm.as_ref().map(|w| w.id.as_str())).await;
        // A warm VM is used only under the name it was started with.
        let warm = match (warm, &minted) {
            (Some(w), Ok((id, _, _))) if *id == w.id => Some(w),
            (Some(w), _) => {
                self.discard(w).await;
                None
            }
            (None, _) => None,
        };
        let (id, registration, runner_id) = match minted {
            Ok(m) => m,
            Err(RunnerError::Stopped) => return Err(RunnerError::Stopped),
            Err(e) => {
                emit(&LoopEvent::Ended {
                    vm: None,
                    outcome: Outcome::MintFailed,
                    lifetime_ms: 0,
                    error: Some(chain(&e)),
                });
                return Err(e);
            }
        };
        emit(&LoopEvent::Registered);
        let name = vm_name(&self.cfg.prefix, &id);
        let secret = match &self.cfg.secret {
            Some(s) => Ok(s.expose().to_string()),
            None => secret::generate()
                .map_err(|e| RunnerError::Io("read the system's random source".into(), e.into())),
        };
        let secret = match secret {
            Ok(s) => s,
            Err(e) => {
                if let Some(w) = warm {
                    self.discard(w).await;
                }
                return Err(e);
            }
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
        let dotenv = match guest.to_dotenv() {
            Ok(d) => d,
            Err(e) => {
                if let Some(w) = warm {
                    self.discard(w).await;
                }
                return Err(ConfigError(e.to_string()).into());
            }
        };
        drop(guest);
        let args = match &self.dir {
            Some(dir) => {
                let env = file_in(dir, &id, Kind::Env);
                if let Err(e) = safefs::write_replace(&env, dotenv.as_bytes(), 0o600) {
                    // (A full disk, say.) The runner minted for this VM is never used:
                    // remove its registration now rather than leave it to the reconciler.
                    if let Some(rid) = runner_id {
                        if let Err(e) = self.forge.delete_runner(rid).await {
                            warn!("cannot deregister unused runner {name}: {e}");
                        }
                    }
                    if let Some(w) = warm {
                        self.discard(w).await;
                    }
                    return Err(RunnerError::Io(format!("write {}", env.display()), e));
                }
                guest_args(&id)
            }
            // Insecure mode: the configuration travels as guest options.
            None => dotenv
                .lines()
                .filter_map(|l| l.split_once('='))
                .flat_map(|(k, v)| ["-c".to_string(), format!("{k}={}", v.trim_matches('\''))])
                .collect(),
        };
        drop(dotenv);
        let (spec, dev, warm) = match warm {
            Some(w) => (w.spec, w.dev, Some(w.child)),
            None => {
                let dev = self.dev_copy()?;
                (self.vm_spec(&name, args, dev.as_ref()), dev, None)
            }
        };
        let outcome = self
            .boot_and_wait(&spec, &id, &secret, runner_id, warm)
            .await;
        let cleaned = self.cleanup(&name, runner_id).await;
        drop(dev);
        if let Ok(it) = &outcome {
            emit(&LoopEvent::Ended {
                vm: Some(name.clone()),
                outcome: it.outcome,
                lifetime_ms: it.lifetime.as_millis() as u64,
                error: it.failure.clone(),
            });
        }
        cleaned?;
        outcome
    }

    async fn boot_and_wait(
        &mut self,
        spec: &VmSpec,
        id: &str,
        secret: &str,
        runner_id: Option<u64>,
        warm: Option<tokio::process::Child>,
    ) -> Result<Iteration, RunnerError> {
        let name = &spec.name;
        // From here the VM is starting: a snapshot restore's or a warm VM's
        // hand-over counts.
        let mut started = Instant::now();
        let warm = match warm {
            Some(c) => self.hand_over(spec, c).await,
            None => None,
        };
        let mut child = match warm {
            Some(c) => c,
            None => {
                if let Err(e) = self.backend.create(spec).await {
                    // Gone between the check before minting and now: the same wait.
                    self.backend.check_host(&spec.image)?;
                    let why = format!("cannot create VM {name}: {}", chain(&e));
                    return Ok(Iteration::failed(Outcome::VmFailed, why, Duration::ZERO));
                }
                started = Instant::now();
                match self.backend.start(spec).await {
                    Ok(c) => c,
                    Err(e) => {
                        self.backend.check_host(&spec.image)?;
                        let why = format!("cannot start VM {name}: {}", chain(&e));
                        return Ok(Iteration::failed(Outcome::VmFailed, why, Duration::ZERO));
                    }
                }
            }
        };
        let turnaround_ms = self
            .last_exit
            .take()
            .map(|t| (started - t).as_millis() as u64);
        match turnaround_ms {
            Some(ms) => info!(turnaround_ms = ms, vm = %name, "VM {name} started"),
            None => info!(vm = %name, "VM {name} started"),
        }
        emit(&LoopEvent::Booting {
            vm: name.clone(),
            turnaround_ms,
        });
        let job = self.dir.as_deref().map(|d| file_in(d, id, Kind::Job));
        let mut busy = false;
        let tkn = self.dir.as_deref().map(|d| file_in(d, id, Kind::Tkn));
        // Without a loop directory there is no ready mark: a started VM counts as up.
        let mut ready = tkn.is_none();
        let boot_deadline = started + Duration::from_secs(self.cfg.boot_timeout);
        // Until the runner is up the ready mark is looked for often (a restored VM's
        // runner is up in a few hundred ms; a coarse tick would add to that), then
        // every 200 ms.
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut stop = self.stop.clone();
        let mut drained = false;
        let mut watch = Watch::new(started);
        let mut warmed = false;
        let status = loop {
            tokio::select! {
                st = child.wait() => break st.ok(),
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s), if !drained => {}
            }
            if !ready && tkn.as_deref().is_some_and(safefs::is_regular) {
                ready = true;
                tick = tokio::time::interval(Duration::from_millis(200));
                let boot_ms = started.elapsed().as_millis() as u64;
                info!(boot_ms, vm = %name, runner = %name, "runner {name} is up");
                emit(&LoopEvent::Up {
                    vm: name.clone(),
                    boot_ms,
                });
                self.flush_deferred().await;
            }
            // --warm: the next VM starts while this one's runner waits or works.
            if ready
                && !warmed
                && !drained
                && self.cfg.warm
                && self.warm.is_none()
                && self.more_to_come()
            {
                warmed = true;
                self.prewarm().await;
            }
            // The guest's hint that a job runs: status only, never a decision.
            if ready && !busy && !drained && job.as_deref().is_some_and(safefs::is_regular) {
                busy = true;
                emit(&LoopEvent::Busy { vm: name.clone() });
            }
            if let Some(why) = watch.breach(self, name, ready, drained).await {
                warn!("{why}: killing it");
                return Ok(self
                    .abandon(name, &mut child, why, ready, Outcome::Killed, started)
                    .await);
            }
            if !ready && self.backend.boot_stalled(name, started.elapsed()) {
                let tail = self
                    .backend
                    .console_tail(name)
                    .map(|t| format!("; its console ended with:\n{t}"))
                    .unwrap_or_default();
                warn!("VM {name} shows no sign of its init after {}s (a silent boot hang): killing it and retrying{tail}", started.elapsed().as_secs());
                return Ok(self
                    .abandon_boot(name, &mut child, format!("VM {name} hung at boot"), started)
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
                return Ok(self.abandon_boot(name, &mut child, why, started).await);
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
                emit(&LoopEvent::Draining { vm: name.clone() });
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
        self.flush_deferred().await;
        // A fast guest can write .tkn, run its job and exit between two ticks.
        if !ready && tkn.as_deref().is_some_and(safefs::is_regular) {
            ready = true;
        }
        let mut end = drained;
        let exit = status.as_ref().map(|st| self.backend.describe_exit(st));
        match &exit {
            // A runner deleted under it by the host may exit with an error: expected.
            Some((ok, what)) if *ok || drained => info!(vm = %name, "VM {name} exited ({what})"),
            Some((_, what)) => warn!(vm = %name, "VM {name} exited ({what})"),
            None => warn!(vm = %name, "VM {name}: exit status unknown"),
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
                == Some(i32::from(protocol::exit::RUNNER_DEPRECATED));
        let outcome = match (drained, ready) {
            (true, _) => Outcome::Drained,
            (false, true) => Outcome::JobDone,
            (false, false) => Outcome::VmFailed,
        };
        Ok(Iteration {
            ready,
            end,
            failure,
            deprecated,
            outcome,
            lifetime: started.elapsed(),
        })
    }

    /// Kill a VM whose boot is given up; the iteration failed for `why`.
    async fn abandon_boot(
        &mut self,
        name: &str,
        child: &mut tokio::process::Child,
        why: String,
        started: Instant,
    ) -> Iteration {
        self.abandon(name, child, why, false, Outcome::BootTimeout, started)
            .await
    }

    /// Kill a VM: before its runner was up the iteration failed for `why`; after,
    /// the VM ended badly but its runner counted (`why` is already logged).
    async fn abandon(
        &mut self,
        name: &str,
        child: &mut tokio::process::Child,
        why: String,
        ready: bool,
        outcome: Outcome,
        started: Instant,
    ) -> Iteration {
        self.backend.force_stop(name, child).await;
        let _ = child.wait().await;
        self.last_exit = Some(Instant::now());
        Iteration {
            ready,
            end: false,
            failure: (!ready).then_some(why),
            deprecated: false,
            outcome,
            lifetime: started.elapsed(),
        }
    }

    /// `-D`: a private copy of just the entrypoint, made fresh for each VM, never
    /// the directory it came from (by default this executable's, from which the
    /// orchestrator starts loops again with the PAT).
    fn dev_copy(&self) -> Result<Option<tempfile::TempDir>, RunnerError> {
        match &self.cfg.dev {
            Some((host, _)) => Ok(Some(dev_copy(host, self.dir.as_deref())?)),
            None => Ok(None),
        }
    }

    /// The spec of VM `name`, given its entrypoint's arguments.
    fn vm_spec(&self, name: &str, args: Vec<String>, dev: Option<&tempfile::TempDir>) -> VmSpec {
        let mut mounts = self.cfg.mounts.clone();
        let entrypoint = match (&self.cfg.dev, dev) {
            (Some((_, guest)), Some(copy)) => {
                mounts.push(Mount {
                    host: copy.path().to_path_buf(),
                    guest: guest.clone(),
                    options: None,
                });
                format!("{guest}/entrypoint")
            }
            _ => protocol::IMAGE_ENTRYPOINT.to_string(),
        };
        VmSpec {
            name: name.to_string(),
            image: self.cfg.image.clone(),
            cpus: self.cfg.cpus,
            memory: self.cfg.memory,
            dns: self.cfg.dns.clone(),
            env_dir: self.dir.clone(),
            mounts,
            entrypoint,
            args,
        }
    }

    /// A spec of this loop's VMs' shape (its devices, shares and memory, as a
    /// template's key sees them), under a name no VM has.
    fn shape(&self) -> VmSpec {
        let id = format!("{}-shape", self.cfg.loop_id);
        let mut spec = self.vm_spec(&vm_name(&self.cfg.prefix, &id), guest_args(&id), None);
        if let (Some((_, guest)), Some(dir)) = (&self.cfg.dev, &self.dir) {
            spec.mounts.push(Mount {
                host: dir.clone(),
                guest: guest.clone(),
                options: None,
            });
        }
        spec
    }

    /// `--warm`: start the next VM under a name chosen now, up to where it waits
    /// for its configuration (registering nothing). A failure is said and costs
    /// only the warm start: the next iteration boots as without --warm.
    async fn prewarm(&mut self) {
        let t0 = Instant::now();
        let Ok(id) = crate::types::names::iteration_id(self.cfg.loop_id) else {
            return;
        };
        let name = vm_name(&self.cfg.prefix, &id);
        let dev = match self.dev_copy() {
            Ok(d) => d,
            Err(e) => {
                warn!("--warm: cannot prepare the next VM: {e}");
                return;
            }
        };
        let spec = self.vm_spec(&name, guest_args(&id), dev.as_ref());
        // prestart creates the VM too (without making a template inline: the wait
        // for this VM's job goes on meanwhile).
        match self.backend.prestart(&spec).await {
            Ok(Some(child)) => {
                info!(
                    vm = %name,
                    warm_ms = t0.elapsed().as_millis() as u64,
                    "VM {name} is warm: it waits for its configuration (prepared in {} ms)",
                    t0.elapsed().as_millis()
                );
                self.warm = Some(Warm {
                    id,
                    spec,
                    child,
                    dev,
                });
            }
            Ok(None) => {
                let _ = self.backend.delete(&name).await;
            }
            Err(e) => {
                warn!(vm = %name, "--warm: cannot prepare the next VM {name}: {}", chain(&e));
                let _ = self.backend.delete(&name).await;
            }
        }
    }

    /// `--warm`: hand the warm VM its configuration; on failure it is removed
    /// (said once) and the caller boots the VM as without --warm.
    async fn hand_over(
        &mut self,
        spec: &VmSpec,
        mut child: tokio::process::Child,
    ) -> Option<tokio::process::Child> {
        match self.backend.handoff(spec, &mut child).await {
            Ok(()) => Some(child),
            Err(e) => {
                let name = &spec.name;
                warn!(vm = %name, "VM {name} (warm): the hand-over failed ({}); starting it again", chain(&e));
                self.backend.force_stop(name, &mut child).await;
                let _ = child.wait().await;
                let _ = self.backend.delete(name).await;
                None
            }
        }
    }

    /// A warm VM that will not be used: stopped and removed like any other.
    pub(super) async fn discard(&self, mut w: Warm) {
        let name = &w.spec.name;
        debug!(vm = %name, "removing the warm VM {name}");
        self.backend.force_stop(name, &mut w.child).await;
        let _ = w.child.wait().await;
        if let Err(e) = self.backend.delete(name).await {
            warn!(vm = %name, "cannot remove the warm VM {name}: {e}");
        }
    }

    pub(super) async fn lookup(&self, name: &str, runner_id: Option<u64>) -> Option<u64> {
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

    /// After every VM: remove it, everything in the loop directory (what one job
    /// left there must not reach the next, which may be another repository's),
    /// and its registration if still there — with a warm VM waiting, only once the
    /// next runner is up ([`Loop::flush_deferred`]). A VM that cannot be confirmed
    /// gone ends the loop: the next VM's `.env` would be written where it can still read.
    async fn cleanup(&mut self, name: &str, runner_id: Option<u64>) -> Result<(), RunnerError> {
        let (prefix, keep) = (&self.cfg.prefix, self.cfg.keep_consoles);
        if let Err(e) = self.backend.keep_console(name, prefix, keep) {
            warn!(vm = %name, "cannot keep the console of VM {name} (--keep-consoles): {e}");
        }
        let gone = self.backend.delete(name).await;
        let mut emptied = Ok(());
        if let Some(dir) = &self.dir {
            emptied = match &gone {
                Ok(()) => empty(dir),
                // The VM may still have the directory mounted: move it away (the
                // mount follows the directory, not its name) so that no later VM's
                // .env is ever written where it can read.
                Err(_) => retire(dir, name),
            };
        }
        if self.warm.is_some() && gone.is_ok() {
            self.flush_deferred().await;
            self.deferred = Some((name.to_string(), runner_id));
        } else {
            self.deregister(name, runner_id).await;
        }
        gone.map_err(|e| RunnerError::VmNotGone {
            name: name.to_string(),
            source: e,
        })?;
        emptied.map_err(|e| RunnerError::Io(format!("empty the loop directory after VM {name}"), e))
    }

    /// `--warm`: remove the registration whose removal waited for the next runner.
    pub(super) async fn flush_deferred(&mut self) {
        if let Some((name, runner_id)) = self.deferred.take() {
            self.deregister(&name, runner_id).await;
        }
    }

    /// Remove VM `name`'s registration at GitHub if it is still there.
    async fn deregister(&self, name: &str, runner_id: Option<u64>) {
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

/// The entrypoint's arguments for iteration `id`: its `.env` and `.tkn` as the
/// guest sees them.
fn guest_args(id: &str) -> Vec<String> {
    let g = Path::new(protocol::GUEST_ENV_DIR);
    vec![
        "-E".into(),
        file_in(g, id, Kind::Env).display().to_string(),
        "-k".into(),
        file_in(g, id, Kind::Tkn).display().to_string(),
    ]
}

/// A fresh private directory holding a copy of `host/entrypoint`, for `-D`:
/// beside the loop directory (inside the orchestrator's private root, which a
/// restart sweeps), or in `$TMPDIR` without one.
fn dev_copy(host: &Path, loop_dir: Option<&Path>) -> Result<tempfile::TempDir, RunnerError> {
    let mut b = tempfile::Builder::new();
    let d = match loop_dir.and_then(|d| Some((d.parent()?, d.file_name()?))) {
        Some((root, name)) => b
            .prefix(&format!("{}.dev-", name.to_string_lossy()))
            .tempdir_in(root),
        None => b.prefix("gh-runner-microvm-dev.").tempdir(),
    }
    .map_err(|e| RunnerError::Io("create the -D directory".into(), e))?;
    let from = host.join("entrypoint");
    std::fs::copy(&from, d.path().join("entrypoint"))
        .map_err(|e| RunnerError::Io(format!("copy {} for -D", from.display()), e))?;
    Ok(d)
}

/// Empty the loop directory; what our own walk cannot remove (a tree deeper
/// than a path may be long) goes through `rm -rf`, which walks by descriptor.
fn empty(dir: &Path) -> std::io::Result<()> {
    if safefs::empty_dir(dir).is_ok() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)? {
        let mut rm = crate::hosttool::command("rm");
        rm.args(["-rf", "--one-file-system", "--"]).arg(e?.path());
        let out = crate::hosttool::output(&mut rm)?;
        if !out.status.success() {
            return Err(std::io::Error::other(crate::hosttool::stderr_tail(
                &out.stderr,
                400,
            )));
        }
    }
    match std::fs::read_dir(dir)?.next() {
        None => Ok(()),
        Some(_) => Err(std::io::Error::other("entries are left")),
    }
}

/// Move `dir` out of the way (a VM that may still run has it mounted) and put a
/// fresh empty private directory at its name.
fn retire(dir: &Path, vm: &str) -> std::io::Result<()> {
    let mut away = dir.as_os_str().to_owned();
    away.push(format!(".not-gone-{vm}"));
    std::fs::rename(dir, &away)?;
    safefs::create_private_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree deeper than a path may be long is emptied too (through `rm -rf`).
    #[test]
    fn empty_removes_a_tree_deeper_than_a_path() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("flat"), "x").unwrap();
        let name = "d".repeat(200);
        std::fs::create_dir(d.path().join("deep")).unwrap();
        let mut at = std::fs::File::open(d.path().join("deep")).unwrap();
        for _ in 0..25 {
            let mode = nix::sys::stat::Mode::S_IRWXU;
            nix::sys::stat::mkdirat(&at, name.as_str(), mode).unwrap();
            let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY;
            let next = nix::fcntl::openat(&at, name.as_str(), flags, mode).unwrap();
            at = std::fs::File::from(next);
        }
        drop(at);
        assert!(
            safefs::empty_dir(d.path()).is_err(),
            "the walk alone cannot"
        );
        empty(d.path()).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn retire_moves_the_directory_away_and_leaves_a_fresh_one() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("GH-runner-001");
        safefs::create_private_dir(&dir).unwrap();
        std::fs::write(dir.join("left"), "x").unwrap();
        let before = std::fs::metadata(&dir).unwrap();
        retire(&dir, "GH-runner-1-abc").unwrap();
        let after = std::fs::metadata(&dir).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(before.ino(), after.ino());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        assert!(root
            .path()
            .join("GH-runner-001.not-gone-GH-runner-1-abc/left")
            .is_file());
    }
}
