//! GitHub's checks: the credential authenticates and may manage runners at the
//! scope (`forge::access`), and this host's clock agrees with GitHub's `Date`.
//! It reads only; no credential reaches what it returns.

use chrono::{DateTime, Utc};

use super::{Check, DoctorConfig};
use crate::forge::access::{check_credential, CredentialCheck};
use crate::forge::Auth;

/// Skew said as a warning.
const SKEW_WARN: i64 = 30;
/// Skew past which an App's JWTs are refused (they live 10 minutes, issued 60 s back).
const SKEW_FAIL: i64 = 300;

/// The credential and the clock (skipped without a credential: nothing is sent).
pub(super) async fn checks(cfg: &DoctorConfig) -> Vec<Check> {
    let r = &cfg.runner;
    let Some(auth) = &cfg.github else {
        return vec![Check::warn(
            "github.auth",
            "no credential given: authentication, permissions and the clock were not checked",
            "give the loops' credential: RUNNER_PAT (or -T after --), or --app-id and --app-key, with -p",
        )];
    };
    let app = matches!(auth, Auth::App { .. });
    let CredentialCheck {
        server_date,
        outcome,
    } = check_credential(&r.endpoints, r.scope, &r.principal, auth).await;
    let auth_check = match outcome {
        Ok(detail) => Check::ok("github.auth", detail),
        Err(p) => Check::fail("github.auth", p.detail, p.fix),
    };
    vec![clock(server_date, Utc::now(), app), auth_check]
}

/// This host's clock against GitHub's: warn past 30 s; past 5 min fail when an
/// App's JWTs depend on it.
pub(super) fn clock(server: Option<DateTime<Utc>>, now: DateTime<Utc>, app: bool) -> Check {
    let fix = "synchronise this host's clock: timedatectl set-ntp true (systemd-timesyncd), or chrony/ntpd";
    let Some(server) = server else {
        return Check::warn(
            "github.clock",
            "GitHub's answer had no Date header: the clock was not checked",
            "",
        );
    };
    let skew = (now - server).num_seconds();
    let says = match skew {
        s if s > 0 => format!("this host's clock is {s} s ahead of GitHub's"),
        s if s < 0 => format!("this host's clock is {} s behind GitHub's", -s),
        _ => "this host's clock agrees with GitHub's".to_string(),
    };
    match skew.abs() {
        s if s > SKEW_FAIL && app => Check::fail(
            "github.clock",
            format!("{says}: GitHub refuses App tokens (JWTs) issued with that skew"),
            fix,
        ),
        s if s > SKEW_WARN => Check::warn(
            "github.clock",
            format!("{says} (more than {SKEW_WARN} s)"),
            fix,
        ),
        _ => Check::ok("github.clock", format!("{says} (within {SKEW_WARN} s)")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    #[test]
    fn skew_warns_then_fails_for_apps() {
        let now = Utc::now();
        let at = |s: i64| Some(now - chrono::Duration::seconds(s));
        assert_eq!(clock(at(3), now, true).status, Status::Ok);
        assert_eq!(clock(at(-45), now, false).status, Status::Warn);
        assert!(clock(at(-45), now, false).detail.contains("45 s behind"));
        assert_eq!(clock(at(600), now, false).status, Status::Warn);
        let c = clock(at(600), now, true);
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().contains("timedatectl"));
        assert_eq!(clock(None, now, true).status, Status::Warn);
    }
}
