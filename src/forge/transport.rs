//! One request to GitHub: the scope's URL prefix, sending with octocrab's raw
//! methods, retries (idempotent requests only, honouring `retry-after` and rate
//! limits) and paged lists. It does not know what the routes mean (`runners`).

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use serde::Deserialize;

use super::{Forge, ForgeError, ScopeKind};

/// Attempts of an idempotent request before its error is returned.
const MAX_ATTEMPTS: u32 = 5;
/// The longest wait between two attempts, whatever GitHub asks.
const MAX_WAIT: Duration = Duration::from_secs(900);

/// Who hears of every answer (route, status, rate limit left): a loop's events
/// or the orchestrator's metrics. Set once per process; unset, nobody.
type Observer = Box<dyn Fn(&'static str, u16, Option<u64>) + Send + Sync>;
static OBSERVER: std::sync::OnceLock<Observer> = std::sync::OnceLock::new();

/// Have `f` hear of every answer from GitHub in this process: what was asked,
/// the HTTP status (0 when none came) and `x-ratelimit-remaining`. Only the first
/// call takes effect.
pub fn observe(f: impl Fn(&'static str, u16, Option<u64>) + Send + Sync + 'static) {
    let _ = OBSERVER.set(Box::new(f));
}

fn observed(what: &'static str, code: u16, remaining: Option<u64>) {
    if let Some(f) = OBSERVER.get() {
        f(what, code, remaining);
    }
}

/// Exponential back-off from 1 s, ×(0.5–1.5) jitter, at most 60 s.
fn backoff(attempt: u32) -> Duration {
    let base = (1u64 << attempt.min(6)).min(60) as f64;
    Duration::from_secs_f64(base * rand::random_range(0.5..1.5))
}

impl Forge {
    /// `/repos/O/R`, `/orgs/O` or `/enterprises/E`.
    pub(super) fn prefix(&self) -> String {
        match self.scope {
            ScopeKind::Repo => format!("/repos/{}", self.principal),
            ScopeKind::Org => format!("/orgs/{}", self.principal),
            ScopeKind::Enterprise => format!("/enterprises/{}", self.principal),
        }
    }

    pub(super) fn permission_hint(&self) -> &'static str {
        match self.scope {
            ScopeKind::Repo => "a classic PAT needs the `repo` scope; a fine-grained one `Administration: write` on the repository",
            ScopeKind::Org => "a classic PAT needs `admin:org`; a fine-grained one `Self-hosted runners: write` on the organisation",
            ScopeKind::Enterprise => "a classic PAT needs `manage_runners:enterprise`",
        }
    }

    /// Send a body-less request and decode its JSON answer.
    pub(super) async fn fetch<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        method: http::Method,
        route: String,
    ) -> Result<T, ForgeError> {
        let (_, body) = self.send(what, method, route, None).await?;
        serde_json::from_slice(&body).map_err(|e| ForgeError::Decode(what, e.to_string()))
    }

    /// Send a request; idempotent ones (all but the JIT POST, whose retries belong to
    /// the caller) are retried on transient failures: after `retry-after` or the rate
    /// limit reset when GitHub gives one, else with jittered exponential back-off.
    pub(super) async fn send(
        &self,
        what: &'static str,
        method: http::Method,
        route: String,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Vec<u8>), ForgeError> {
        let idempotent = !(method == http::Method::POST && route.ends_with("/generate-jitconfig"));
        let mut attempt = 0u32;
        loop {
            let result = self
                .send_once(what, method.clone(), route.clone(), body.clone())
                .await;
            match &result {
                Err(e) if idempotent && e.is_transient() && attempt + 1 < MAX_ATTEMPTS => {
                    let wait = e
                        .retry_after()
                        .unwrap_or_else(|| backoff(attempt))
                        .min(MAX_WAIT);
                    tracing::warn!(
                        "{e}; trying again in {:.1}s ({}/{MAX_ATTEMPTS})",
                        wait.as_secs_f64(),
                        attempt + 1
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return result,
            }
        }
    }

    pub(super) async fn send_once(
        &self,
        what: &'static str,
        method: http::Method,
        route: String,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Vec<u8>), ForgeError> {
        let resp = match method {
            http::Method::POST => self.crab._post(route, body.as_ref()).await,
            http::Method::DELETE => self.crab._delete(route, None::<&()>).await,
            _ => self.crab._get(route).await,
        }
        .map_err(|e| {
            observed(what, 0, None);
            ForgeError::Transport(what, e)
        })?;
        let status = resp.status();
        let header = |k: &str| {
            resp.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        observed(
            what,
            status.as_u16(),
            header("x-ratelimit-remaining").and_then(|r| r.trim().parse().ok()),
        );
        let accepted = header("x-accepted-github-permissions");
        let retry_after = header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .or_else(|| {
                (header("x-ratelimit-remaining").as_deref() == Some("0"))
                    .then(|| header("x-ratelimit-reset").and_then(|r| r.parse::<i64>().ok()))
                    .flatten()
                    .map(|reset| {
                        Duration::from_secs((reset - chrono::Utc::now().timestamp()).max(1) as u64)
                    })
            });
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ForgeError::Transport(what, e))?
            .to_bytes()
            .to_vec();
        if status.is_success()
            || status == StatusCode::CONFLICT
            || status == StatusCode::UNPROCESSABLE_ENTITY && method == http::Method::DELETE
        {
            return Ok((status, bytes));
        }
        if status == StatusCode::NOT_FOUND && method == http::Method::DELETE {
            return Ok((status, bytes));
        }
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        let hint = match (status.as_u16(), accepted) {
            (_, Some(p)) => format!(" (the credential lacks the permission GitHub asks for: {p})"),
            (401, _) => " (the credential is invalid or expired: check -T/RUNNER_PAT, or --app-id/--app-key)".to_string(),
            (403 | 404, _) => format!(
                " (check -s/-p: {} {:?} must exist and be visible to the PAT; {})",
                match self.scope {
                    ScopeKind::Repo => "repository",
                    ScopeKind::Org => "organisation",
                    ScopeKind::Enterprise => "enterprise",
                },
                self.principal,
                self.permission_hint()
            ),
            _ => String::new(),
        };
        Err(ForgeError::Refused {
            what,
            status: status.as_u16(),
            message,
            hint,
            retry_after,
        })
    }

    /// Every item of a paged list (`{total_count, <key>: [...]}`) under the scope,
    /// with explicit page numbers: octocrab drops authentication on absolute `Link`
    /// URLs for some hosts.
    pub(super) async fn fetch_all<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        key: &str,
    ) -> Result<Vec<T>, ForgeError> {
        #[derive(Deserialize)]
        struct Page {
            total_count: u64,
            #[serde(flatten)]
            rest: serde_json::Map<String, serde_json::Value>,
        }
        let mut all = vec![];
        for page in 1..=100u32 {
            let route = format!("{}/{path}?per_page=100&page={page}", self.prefix());
            let mut p: Page = self.fetch(what, http::Method::GET, route).await?;
            let items = p.rest.remove(key).unwrap_or_default();
            let items: Vec<T> = serde_json::from_value(items)
                .map_err(|e| ForgeError::Decode(what, e.to_string()))?;
            let n = items.len();
            all.extend(items);
            if n < 100 || all.len() as u64 >= p.total_count {
                break;
            }
        }
        Ok(all)
    }
}
