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
