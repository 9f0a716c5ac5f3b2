//! What a runner loop tells its orchestrator about itself (one JSON object per
//! line on the loop's standard output when `RUNNER_EVENTS=1`): the vocabulary of
//! `orchestrator status` and `/metrics`. Values only; who sends and who folds them
//! into state are `runner::events` and `orchestrator::fleet`.

use serde::{Deserialize, Serialize};

/// The environment variable that makes a `runner` report its events on stdout.
pub const EVENTS_VAR: &str = "RUNNER_EVENTS";

/// The longest event line an orchestrator reads; longer ones are skipped.
pub const MAX_EVENT_LINE: usize = 16 * 1024;

/// How an iteration (one VM) ended: the `outcome` label of `ghrm_iterations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its runner came up and the VM ended by itself (the job ran, or the runner left).
    JobDone,
    /// No ready mark within `--boot-timeout`, or a silent boot hang.
    BootTimeout,
    /// The VM could not be created or started, or exited before its runner was up.
    VmFailed,
    /// Killed for breaking a bound (loop directory, console, lifetime, runner gone).
    Killed,
    /// Stopped on request (`-k`, a signal, `drain`).
    Drained,
    /// The credential could not be minted (GitHub refused or was unreachable).
    MintFailed,
}

impl Outcome {
    /// Every outcome, for metrics that must show zeros.
    pub const ALL: [Outcome; 6] = [
        Outcome::JobDone,
        Outcome::BootTimeout,
        Outcome::VmFailed,
        Outcome::Killed,
        Outcome::Drained,
        Outcome::MintFailed,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::JobDone => "job_done",
            Outcome::BootTimeout => "boot_timeout",
            Outcome::VmFailed => "vm_failed",
            Outcome::Killed => "killed",
            Outcome::Drained => "drained",
            Outcome::MintFailed => "mint_failed",
        }
    }
}

/// One thing a loop reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LoopEvent {
    /// Asking GitHub for a runner credential.
    Minting,
    /// A credential was minted (a runner registered, or a registration token issued).
    Registered,
    /// VM `vm` was started; `turnaround_ms` since the previous VM's exit, when it counts.
    Booting {
        /// VM (and runner) name.
        vm: String,
        /// Previous VM's exit → this start, host overhead only.
        turnaround_ms: Option<u64>,
    },
    /// Its runner is up (the guest wrote `.tkn`), waiting for a job.
    Up {
        /// VM name.
        vm: String,
        /// VM start → ready mark.
        boot_ms: u64,
    },
    /// A job is running (`.job`, a guest's hint).
    Busy {
        /// VM name.
        vm: String,
    },
    /// The VM is being stopped on request.
    Draining {
        /// VM name.
        vm: String,
    },
    /// The VM is gone (or, with no VM, its credential could not be minted).
    Ended {
        /// VM name.
        vm: Option<String>,
        /// How it ended.
        outcome: Outcome,
        /// VM start → exit.
        lifetime_ms: u64,
        /// Why it failed, when it did.
        error: Option<String>,
    },
    /// The loop waits before its next try.
    BackingOff {
        /// For how long.
        seconds: u64,
        /// After what.
        why: String,
    },
    /// The loop ends with this error (its last words before a non-zero exit).
    Failed {
        /// The error and its causes, on one line.
        error: String,
    },
    /// One answer from GitHub.
    Github {
        /// What was asked (`list runners`, `generate JIT config`, …).
        route: String,
        /// HTTP status (0: no answer).
        code: u16,
        /// `x-ratelimit-remaining`, when GitHub sent it.
        remaining: Option<u64>,
    },
}

impl LoopEvent {
    /// One line of JSON (no newline inside: serde_json escapes them).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parse a line; `None` for anything else.
    pub fn parse(line: &str) -> Option<LoopEvent> {
        serde_json::from_str(line.trim_end()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_on_one_line() {
        let events = [
            LoopEvent::Minting,
            LoopEvent::Booting {
                vm: "p-1-abc".into(),
                turnaround_ms: Some(12),
            },
            LoopEvent::Ended {
                vm: Some("p-1-abc".into()),
                outcome: Outcome::BootTimeout,
                lifetime_ms: 3,
                error: Some("line\nbreak \"quoted\"".into()),
            },
            LoopEvent::Github {
                route: "list runners".into(),
                code: 200,
                remaining: Some(4999),
            },
        ];
        for e in events {
            let line = e.to_line();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(LoopEvent::parse(&line), Some(e));
        }
        assert_eq!(
            LoopEvent::parse(
                r#"{"event":"ended","vm":"x","outcome":"job_done","lifetime_ms":1,"error":null}"#
            ),
            Some(LoopEvent::Ended {
                vm: Some("x".into()),
                outcome: Outcome::JobDone,
                lifetime_ms: 1,
                error: None
            })
        );
        assert_eq!(LoopEvent::parse("not json"), None);
        assert_eq!(LoopEvent::parse(r#"{"event":"unknown"}"#), None);
    }
}
