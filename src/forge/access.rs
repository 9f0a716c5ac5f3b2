//! What a credential may do at the scope, for `doctor`: one list of the runners,
//! read with its answer's headers (`Date`, `X-OAuth-Scopes`,
//! `X-Accepted-GitHub-Permissions`), and GitHub's clock. It changes nothing at
//! GitHub, retries nothing, and never puts a credential in what it returns.

use std::time::Duration;

use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use octocrab::Octocrab;

use super::{Auth, Endpoints, Forge, ForgeError, ScopeKind};

/// What [`check_credential`] found.
#[derive(Debug, Clone)]
pub struct CredentialCheck {
    /// GitHub's clock, from the `Date` of an answer (any answer, even a refusal).
    pub server_date: Option<DateTime<Utc>>,
    /// What the credential is and may do, or why it may not manage runners here.
    pub outcome: Result<String, AccessProblem>,
}

/// Why a credential may not manage runners at the scope, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessProblem {
    /// What went wrong.
    pub detail: String,
    /// What to do about it.
    pub fix: String,
}

/// The classic-PAT scopes any one of which may manage runners at `scope`.
pub fn classic_scopes(scope: ScopeKind) -> &'static [&'static str] {
    match scope {
        ScopeKind::Repo => &["repo"],
        ScopeKind::Org => &["admin:org"],
        ScopeKind::Enterprise => &["manage_runners:enterprise", "admin:enterprise"],
    }
}

/// What a fine-grained PAT or an App needs at `scope`, in GitHub's settings' words.
fn permission_words(scope: ScopeKind) -> &'static str {
    match scope {
        ScopeKind::Repo => "Repository permissions → Administration: Read and write",
        ScopeKind::Org => "Organization permissions → Self-hosted runners: Read and write",
        ScopeKind::Enterprise => {
            "a classic PAT with manage_runners:enterprise (fine-grained PATs and Apps cannot manage enterprise runners)"
        }
    }
}

fn scope_words(scope: ScopeKind, principal: &str) -> String {
    let kind = match scope {
        ScopeKind::Repo => "repository",
        ScopeKind::Org => "organisation",
        ScopeKind::Enterprise => "enterprise",
    };
    format!("{kind} {principal}")
}

/// Parse an HTTP-date (`Wed, 02 Dec 2026 13:30:26 GMT`).
pub fn parse_http_date(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(s.trim())
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// GitHub's clock from an unauthenticated request (`GET /rate_limit`, which
/// costs no quota; any answer carries `Date`).
pub async fn server_date(endpoints: &Endpoints) -> Option<DateTime<Utc>> {
    let crab = Octocrab::builder()
        .base_uri(endpoints.api.as_str())
        .ok()?
        .set_connect_timeout(Some(Duration::from_secs(10)))
        .set_read_timeout(Some(Duration::from_secs(10)))
        .build()
        .ok()?;
    let resp = crab._get("/rate_limit").await.ok()?;
    let date = resp.headers().get(http::header::DATE)?.to_str().ok()?;
    parse_http_date(date)
}

/// Does `auth` authenticate, and may it manage runners at `scope`/`principal`?
/// Classic PAT: its `X-OAuth-Scopes` must hold the scope's; fine-grained PAT and
/// App: the list of runners must answer (a 403 names the missing permission from
/// `X-Accepted-GitHub-Permissions`); 401: a bad credential.
pub async fn check_credential(
    endpoints: &Endpoints,
    scope: ScopeKind,
    principal: &str,
    auth: &Auth,
) -> CredentialCheck {
    let app = matches!(auth, Auth::App { .. });
    let forge = match Forge::new(endpoints.clone(), scope, principal, auth).await {
        Ok(f) => f,
        Err(e) => {
            return CredentialCheck {
                server_date: server_date(endpoints).await,
                outcome: Err(setup_problem(&e, scope, principal, app)),
            }
        }
    };
    let route = format!("{}/actions/runners?per_page=1", forge.prefix());
    let resp = match forge.crab._get(route).await {
        Ok(r) => r,
        Err(e) => {
            let e = ForgeError::Transport("list the runners", e);
            return CredentialCheck {
                server_date: server_date(endpoints).await,
                outcome: Err(setup_problem(&e, scope, principal, app)),
            };
        }
    };
    let header = |k: &str| {
        resp.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let date = header("date").and_then(|d| parse_http_date(&d));
    let answer = Answer {
        status: resp.status().as_u16(),
        oauth_scopes: header("x-oauth-scopes"),
        accepted_permissions: header("x-accepted-github-permissions"),
        accepted_scopes: header("x-accepted-oauth-scopes"),
        message: String::new(),
        runners: None,
    };
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let json = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let answer = Answer {
        message: json
            .as_ref()
            .and_then(|v| v.get("message"))
            .and_then(|m| m.as_str())
            .map(|m| m.chars().take(200).collect())
            .unwrap_or_default(),
        runners: json
            .as_ref()
            .and_then(|v| v.get("total_count"))
            .and_then(|n| n.as_u64()),
        ..answer
    };
    CredentialCheck {
        server_date: date,
        outcome: judge(&answer, scope, principal, app),
    }
}

/// The parts of GitHub's answer to the runner list that tell what a credential may do.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `X-OAuth-Scopes` (classic PATs only).
    pub oauth_scopes: Option<String>,
    /// `X-Accepted-GitHub-Permissions` (fine-grained PATs and Apps, on 403).
    pub accepted_permissions: Option<String>,
    /// `X-Accepted-OAuth-Scopes`.
    pub accepted_scopes: Option<String>,
    /// GitHub's message.
    pub message: String,
    /// `total_count` of a successful list.
    pub runners: Option<u64>,
}

/// What an answer to the runner list says about the credential.
pub fn judge(
    a: &Answer,
    scope: ScopeKind,
    principal: &str,
    app: bool,
) -> Result<String, AccessProblem> {
    let at = scope_words(scope, principal);
    let needed = classic_scopes(scope);
    let classic = a.oauth_scopes.as_deref().map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    });
    let kind = match (&classic, app) {
        (_, true) => "GitHub App installation".to_string(),
        (Some(s), _) if s.is_empty() => "classic PAT (no scopes)".to_string(),
        (Some(s), _) => format!("classic PAT (scopes: {})", s.join(", ")),
        (None, _) => "fine-grained PAT".to_string(),
    };
    let lacks_scope = classic
        .as_ref()
        .filter(|s| !needed.iter().any(|n| s.iter().any(|x| x == n)));
    let fix_scope = || {
        AccessProblem {
        detail: format!(
            "the {kind} lacks the `{}` scope, which managing runners at {at} needs (GitHub: {} {})",
            needed[0], a.status, a.message
        ),
        fix: format!(
            "add the `{}` scope to the PAT (github.com/settings/tokens), or use a fine-grained PAT with {}",
            needed[0],
            permission_words(scope)
        ),
    }
    };
    match a.status {
        200..=299 => match lacks_scope {
            Some(_) => Err(fix_scope()),
            // A classic PAT's scope covers writing; for the others a list only
            // proves reading (a write check would mint a live credential).
            None if classic.is_some() => Ok(format!(
                "{kind} may manage runners at {at} ({} registered)",
                a.runners.unwrap_or(0)
            )),
            None => Ok(format!(
                "{kind} may list runners at {at} ({} registered); write access ({}) is proven at \
                 the first registration",
                a.runners.unwrap_or(0),
                permission_words(scope)
            )),
        },
        401 => Err(AccessProblem {
            detail: format!("the credential was refused: 401 {}", a.message),
            fix: if app {
                "check --app-id and --app-key (the App's current private key), and this host's clock".into()
            } else {
                "the PAT is wrong, expired or revoked: make a new one and give it as RUNNER_PAT".into()
            },
        }),
        403 | 404 if a.accepted_permissions.is_some() => {
            let p = a.accepted_permissions.clone().unwrap_or_default();
            Err(AccessProblem {
                detail: format!(
                    "the {kind} lacks the permission GitHub asks for at {at}: {p} ({} {})",
                    a.status, a.message
                ),
                fix: format!(
                    "grant it {p}{}: {}",
                    if p.ends_with("=read") { " (write to register runners)" } else { "" },
                    permission_words(scope)
                ),
            })
        }
        403 | 404 if lacks_scope.is_some() => Err(fix_scope()),
        403 | 404 => Err(AccessProblem {
            detail: format!(
                "the {kind} may not list the runners of {at}: {} {}",
                a.status, a.message
            ),
            fix: format!(
                "check -s/-p ({at} must exist and the credential's owner must be an admin there); a classic PAT needs `{}`, a fine-grained one {}",
                needed[0],
                permission_words(scope)
            ),
        }),
        s => Err(AccessProblem {
            detail: format!("GitHub answered the runner list with {s} {}", a.message),
            fix: "try again later (githubstatus.com); check -g".into(),
        }),
    }
}

/// A failure before the runner list: no answer, or an App that could not get its
/// installation token.
fn setup_problem(e: &ForgeError, scope: ScopeKind, principal: &str, app: bool) -> AccessProblem {
    let at = scope_words(scope, principal);
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        detail.push_str(&format!(": {s}"));
        src = s.source();
    }
    let fix = match e {
        ForgeError::Refused { status: 401, .. } if app => {
            "GitHub refused the App's token (JWT): check --app-id and --app-key, and this host's clock".to_string()
        }
        ForgeError::Refused { status: 404, .. } if app => {
            format!("install the App on {at} (the App's settings → Install App), or give --installation-id")
        }
        ForgeError::Refused { status: 401, .. } => {
            "the PAT is wrong, expired or revoked: make a new one and give it as RUNNER_PAT".to_string()
        }
        ForgeError::Transport(..) | ForgeError::Setup(..) => {
            "check -g and this host's connection to GitHub (proxy, DNS, firewall)".to_string()
        }
        _ => format!("check -s/-p and the credential's rights on {at}"),
    };
    AccessProblem { detail, fix }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, scopes: Option<&str>, perms: Option<&str>) -> Answer {
        Answer {
            status,
            oauth_scopes: scopes.map(str::to_string),
            accepted_permissions: perms.map(str::to_string),
            message: "m".into(),
            runners: Some(2),
            ..Answer::default()
        }
    }

    #[test]
    fn classic_scopes_are_read_from_the_header() {
        let ok = judge(
            &answer(200, Some("repo, workflow"), None),
            ScopeKind::Repo,
            "o/r",
            false,
        );
        assert!(ok.unwrap().contains("classic PAT (scopes: repo, workflow)"));
        let e = judge(&answer(200, Some("repo"), None), ScopeKind::Org, "o", false).unwrap_err();
        assert!(
            e.detail.contains("`admin:org`") && e.fix.contains("`admin:org`"),
            "{e:?}"
        );
        let e = judge(
            &answer(403, Some("read:org"), None),
            ScopeKind::Org,
            "o",
            false,
        )
        .unwrap_err();
        assert!(e.fix.contains("admin:org"), "{e:?}");
        assert!(judge(
            &answer(200, Some("admin:enterprise"), None),
            ScopeKind::Enterprise,
            "e",
            false
        )
        .is_ok());
    }

    #[test]
    fn a_missing_permission_is_named() {
        let e = judge(
            &answer(403, None, Some("administration=read")),
            ScopeKind::Repo,
            "o/r",
            false,
        )
        .unwrap_err();
        assert!(
            e.detail.contains("fine-grained PAT") && e.detail.contains("administration=read"),
            "{e:?}"
        );
        assert!(e.fix.contains("Administration: Read and write"), "{e:?}");
        let e = judge(&answer(401, None, None), ScopeKind::Repo, "o/r", true).unwrap_err();
        assert!(e.fix.contains("--app-key"), "{e:?}");
    }

    #[test]
    fn http_dates_parse() {
        let d = parse_http_date("Wed, 02 Dec 2026 13:30:26 GMT").unwrap();
        assert_eq!(d.to_rfc3339(), "2026-12-02T13:30:26+00:00");
        assert!(parse_http_date("yesterday").is_none());
    }
}
