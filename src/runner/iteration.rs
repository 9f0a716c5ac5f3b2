//! One iteration: the guest's `.env`, the VM spec, boot and wait for `.tkn`, the
//! VM's end and its `.brk`, and the clean-up after it (VM, files, registration).
//! Stopping a running VM on request is `drain`'s.

use std::path::Path;
use std::time::{Duration, Instant};

use protocol::envfile::GuestConfig;
use protocol::{file_in, safefs, secret, Kind, MAX_SIGNAL_FILE};
use tracing::{debug, info, warn};

use super::drain::{Drain, Running};
use super::{Loop, RunnerError};
use crate::forge::Deletion;
use crate::types::invalid::ConfigError;
use crate::types::mount::Mount;
use crate::types::names::vm_name;
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
}

impl Loop {
    pub(super) async fn iteration(&mut self) -> Result<Iteration, RunnerError> {
        let (id, registration, runner_id) = self.mint().await?;
        let name = vm_name(&self.cfg.prefix, &id);
        let secret = match &self.cfg.secret {
            Some(s) => s.expose().to_string(),
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
        // -D: the guest gets a private copy of just the entrypoint, made fresh for
        // this VM, never the directory it came from (by default this executable's,
        // from which the orchestrator starts loops again with the PAT).
        let dev = match &self.cfg.dev {
            Some((host, _)) => Some(dev_copy(host, self.dir.as_deref())?),
            None => None,
        };
        let entrypoint = match (&self.cfg.dev, &dev) {
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
        let cleaned = self.cleanup(&name, runner_id).await;
        drop(dev);
        cleaned?;
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
        let mut ticks: u32 = 0;
        let gone_check = gone_check_interval();
        let mut last_gone_check = Instant::now();
        let mut gone_since: Option<Instant> = None;
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
            ticks += 1;
            if ticks % 10 == 0 {
                if let Some(over) = self.dir.as_deref().and_then(overfilled) {
                    warn!("VM {name} filled its loop directory ({over}): killing it");
                    let why = format!("VM {name} filled its loop directory ({over})");
                    return Ok(self.abandon(name, &mut child, why, ready).await);
                }
            }
            if ticks % 10 == 0
                && self
                    .backend
                    .console_bytes(name)
                    .is_some_and(|b| b > self.cfg.console_limit)
            {
                let why = format!(
                    "VM {name} printed more than --console-limit {} bytes on its console",
                    self.cfg.console_limit
                );
                warn!("{why}: killing it");
                return Ok(self.abandon(name, &mut child, why, ready).await);
            }
            if !drained && started.elapsed() >= self.cfg.vm_lifetime {
                let why = format!(
                    "VM {name} reached --vm-lifetime {}s",
                    self.cfg.vm_lifetime.as_secs()
                );
                warn!("{why}: killing it");
                return Ok(self.abandon(name, &mut child, why, ready).await);
            }
            // A runner gone from GitHub whose VM lives on: its job is over (or was
            // taken away) and nothing more can come; a guest keeping its VM past
            // that is ended.
            if ready && !drained && last_gone_check.elapsed() >= gone_check {
                last_gone_check = Instant::now();
                let found =
                    tokio::time::timeout(Duration::from_secs(10), self.forge.find_runner(name))
                        .await;
                match found {
                    Ok(Ok(None)) => {
                        let since = *gone_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= gone_check {
                            let why = format!(
                                "runner {name} is gone from GitHub but its VM still runs after {}s",
                                since.elapsed().as_secs()
                            );
                            warn!("{why}: killing it");
                            return Ok(self.abandon(name, &mut child, why, ready).await);
                        }
                    }
                    Ok(Ok(Some(_))) => gone_since = None,
                    _ => {}
                }
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
                == Some(i32::from(protocol::exit::RUNNER_DEPRECATED));
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
        self.abandon(name, child, why, false).await
    }

    /// Kill a VM: before its runner was up the iteration failed for `why`; after,
    /// the VM ended badly but its runner counted (`why` is already logged).
    async fn abandon(
        &mut self,
        name: &str,
        child: &mut tokio::process::Child,
        why: String,
        ready: bool,
    ) -> Iteration {
        self.backend.force_stop(name, child).await;
        let _ = child.wait().await;
        self.last_exit = Some(Instant::now());
        Iteration {
            ready,
            end: false,
            failure: (!ready).then_some(why),
            deprecated: false,
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
    /// and its registration if still there. A VM that cannot be confirmed gone
    /// ends the loop: the next VM's `.env` would be written where it can still read.
    async fn cleanup(&self, name: &str, runner_id: Option<u64>) -> Result<(), RunnerError> {
        let gone = self.backend.delete(name).await;
        if let (Some(dir), Ok(())) = (&self.dir, &gone) {
            if let Err(e) = safefs::empty_dir(dir) {
                warn!("cannot empty the loop directory {}: {e}", dir.display());
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
        gone.map_err(|e| RunnerError::VmNotGone {
            name: name.to_string(),
            source: e,
        })
    }
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

/// What a guest may keep in its loop directory while its VM runs: the protocol
/// needs four small files; a job that makes more is stopped before it fills the
/// host's `$TMPDIR` (often RAM) or slows every scan of it.
pub const LOOP_DIR_MAX_ENTRIES: u64 = 1000;
/// See [`LOOP_DIR_MAX_ENTRIES`]: bytes (allocated) in the loop directory.
pub const LOOP_DIR_MAX_BYTES: u64 = 16 << 20;

/// `Some(what)` when the loop directory holds more than its bounds.
fn overfilled(dir: &Path) -> Option<String> {
    let u = safefs::usage(dir, LOOP_DIR_MAX_ENTRIES, LOOP_DIR_MAX_BYTES).ok()?;
    u.exceeds(LOOP_DIR_MAX_ENTRIES, LOOP_DIR_MAX_BYTES)
        .then(|| {
            format!(
                "more than {LOOP_DIR_MAX_ENTRIES} entries or {} MiB",
                LOOP_DIR_MAX_BYTES >> 20
            )
        })
}

/// How often the loop asks GitHub whether a running VM's runner is still there,
/// and how long a VM may outlive its runner: 60 s (`GHRM_GONE_CHECK_SECONDS`
/// changes it, for tests and for hosts that must spend fewer API calls).
fn gone_check_interval() -> Duration {
    let secs = std::env::var("GHRM_GONE_CHECK_SECONDS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(60);
    Duration::from_secs(secs)
}
