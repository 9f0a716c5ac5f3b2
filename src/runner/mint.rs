//! Minting one runner credential (design.md §4) under the registration budget:
//! a JIT config under a fresh name, never a blind re-POST; or a registration token.

use std::time::Duration;

use protocol::envfile::Registration;
use tracing::{debug, warn};

use super::{Loop, RunnerError};
use crate::forge::ForgeError;
use crate::types::names::{iteration_id, vm_name};

/// Names tried for one JIT config when GitHub answers 409 or uncertainly.
const MINT_ATTEMPTS: u32 = 3;

impl Loop {
    /// Mint a credential under a fresh name; on 409 or an uncertain failure, remove
    /// whatever got that name and try again under another (never a blind re-POST).
    /// The first name tried is `preferred`'s when given (a warm VM's).
    pub(super) async fn mint(
        &self,
        preferred: Option<&str>,
    ) -> Result<(String, Registration, Option<u64>), RunnerError> {
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
            let id = match preferred {
                Some(p) if attempt == 1 => p.to_string(),
                _ => iteration_id(self.cfg.loop_id)
                    .map_err(|e| RunnerError::Io("read the system's random source".into(), e))?,
            };
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
}
