//! `orchestrator doctor`: is this host fit to run the loops as configured? One
//! check per line (ok, warning, failure with its fix), or one JSON document.
//!
//! This file owns the configuration, the verdicts and their rendering; `host`
//! checks the machine (runtime, KVM, bundle, network, space, limits), `github` the
//! credential and the clock. It must not change anything: no VM is left, nothing is
//! registered at GitHub, no secret is printed.

mod github;
mod host;

use std::io::Write;

use serde::Serialize;

use crate::forge::Auth;
use crate::runner::config::RunnerConfig;

/// What `doctor` checks (built by `cli::config`).
#[derive(Debug, Clone)]
pub struct DoctorConfig {
    /// `--json`: one JSON document on standard output.
    pub json: bool,
    /// Boot the bundle's kernel (not `--no-boot`).
    pub boot: bool,
    /// `-n`: how many loops will run.
    pub loops: u32,
    /// The loops' configuration, as `orchestrator -- …` gives it. When no
    /// credential was given its `auth` and `principal` are stand-ins, never used.
    pub runner: RunnerConfig,
    /// The credential to check, when one was given.
    pub github: Option<Auth>,
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Passed.
    Ok,
    /// Works, but worse than it could (or not checked): said, does not fail.
    Warn,
    /// A required check failed: the loops would not run (exit 1).
    Fail,
}

/// One check: a stable name, the verdict, what was found, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable name (`kvm`, `bundle`, `github.auth`, …).
    pub name: String,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do (failures and warnings).
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()).filter(|f: &String| !f.is_empty()),
        }
    }

    fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// Fail when `required`, else warn.
    fn need(
        required: bool,
        name: &str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        if required {
            Check::fail(name, detail, fix)
        } else {
            Check::warn(name, detail, fix)
        }
    }
}

/// `doctor` failures that are not verdicts.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// Required checks failed (their lines say which and the fix).
    #[error("{0} required check(s) failed; the fix is on each ✖ line")]
    Failed(usize),
    /// The async runtime or standard output.
    #[error("cannot {0}")]
    Io(&'static str, #[source] std::io::Error),
}

/// The JSON document of `--json` (README "orchestrator doctor").
#[derive(Debug, Serialize)]
struct Report<'a> {
    /// Every required check passed.
    ok: bool,
    checks: &'a [Check],
}

/// Run every check, print them, and fail when a required one failed.
pub fn run(cfg: DoctorConfig) -> Result<(), DoctorError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DoctorError::Io("start the async runtime", e))?;
    let checks = rt.block_on(checks(&cfg));
    let mut out = std::io::stdout().lock();
    let text = if cfg.json {
        let ok = !checks.iter().any(|c| c.status == Status::Fail);
        serde_json::to_string_pretty(&Report {
            ok,
            checks: &checks,
        })
        .unwrap_or_default()
            + "\n"
    } else {
        render(&checks)
    };
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| DoctorError::Io("write the report", e))?;
    match checks.iter().filter(|c| c.status == Status::Fail).count() {
        0 => Ok(()),
        n => Err(DoctorError::Failed(n)),
    }
}

/// Every check, in order: the host, then GitHub.
async fn checks(cfg: &DoctorConfig) -> Vec<Check> {
    let mut all = host::checks(cfg).await;
    all.extend(github::checks(cfg).await);
    all
}

/// One line per check: `✔`, `!` (warning) or `✖`, its name, what was found, and the fix.
pub fn render(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let mark = match c.status {
            Status::Ok => "✔",
            Status::Warn => "!",
            Status::Fail => "✖",
        };
        s.push_str(&format!("{mark} {}: {}", c.name, c.detail));
        if let Some(f) = &c.fix {
            s.push_str(&format!(" — fix: {f}"));
        }
        s.push('\n');
    }
    let count = |st| checks.iter().filter(|c| c.status == st).count();
    s.push_str(&format!(
        "{} ok, {} warning(s), {} failed\n",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_check_with_its_fix() {
        let text = render(&[
            Check::ok("a", "fine"),
            Check::warn("b", "slow", "speed it up"),
            Check::fail("c", "broken", "mend it"),
            Check::need(false, "d", "absent", "install it"),
        ]);
        assert_eq!(
            text,
            "✔ a: fine\n! b: slow — fix: speed it up\n✖ c: broken — fix: mend it\n\
             ! d: absent — fix: install it\n1 ok, 2 warning(s), 1 failed\n"
        );
    }

    #[test]
    fn json_statuses_are_lowercase() {
        let v = serde_json::to_value(Check::warn("kvm", "x", "")).unwrap();
        assert_eq!(v["status"], "warn");
        assert!(v["fix"].is_null());
    }
}
