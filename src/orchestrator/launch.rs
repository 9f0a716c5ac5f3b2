//! Starting one `runner` loop as a child: its executable, argv and environment
//! (design.md §3: the orchestrator's variables, secrets moved out of argv).
//! It starts processes; it does not decide when (`supervise` does).

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Child;

use super::supervise::LoopSlot;
use super::{OrchestratorConfig, OrchestratorError};
use crate::backend::Backend;
use crate::hosttool;

/// Everything the orchestrator needs to start a loop.
pub(super) struct Launcher {
    pub(super) runner: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Launcher {
    pub(super) fn spawn(&self, slot: &LoopSlot) -> std::io::Result<Child> {
        let mut cmd = std::process::Command::new(&self.runner);
        cmd.args(&self.args).arg("--").arg(slot.index.to_string());
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.env(
            "RUNNER_ENVIRONMENT",
            slot.dir
                .as_deref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
        );
        cmd.stdin(Stdio::null());
        // Its events (runner::events) come back on its standard output.
        cmd.stdout(Stdio::piped());
        cmd.env(crate::types::status::EVENTS_VAR, "1");
        // Our own child: it keeps the credentials. Own process group: a terminal's
        // ^C reaches only us, and we stop the loops in order. SIGTERM on our death:
        // each loop still drains and cleans up after itself.
        hosttool::tie(
            &mut cmd,
            hosttool::Tie {
                own_group: true,
                death: libc::SIGTERM,
            },
        );
        hosttool::spawn_async(cmd)
    }
}

impl Launcher {
    /// The `runner` beside us (or on PATH), its arguments, and its environment
    /// (design.md §3: the orchestrator's variables, and the secrets moved out of argv).
    pub(super) fn new(
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
            (
                "RUNNER_LOG_FORMAT".to_string(),
                crate::logging::format().name().to_string(),
            ),
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
