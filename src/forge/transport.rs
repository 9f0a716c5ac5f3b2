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
        let message = error_message(&bytes);
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
        let mut all = vec![];
        for page in 1..=100u32 {
            let route = format!("{}/{path}?per_page=100&page={page}", self.prefix());
            let (_, body) = self.send(what, http::Method::GET, route, None).await?;
            let (total, items) = decode_page::<T>(what, &body, key)?;
            let n = items.len();
            all.extend(items);
            if n < 100 || all.len() as u64 >= total {
                break;
            }
        }
        Ok(all)
    }
}

/// GitHub's message in an error answer (its JSON `message`, else the body): remote
/// bytes on their way to a log line, so on one line, printable and at most 200
/// characters.
pub(crate) fn error_message(body: &[u8]) -> String {
    let raw = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    crate::types::text::printable(&raw.replace(['\n', '\t'], " "))
        .chars()
        .take(200)
        .collect()
}

/// One page of a paged list, `{total_count, <key>: [...]}`: the total and the
/// items (none when `key` is absent). Anything else is [`ForgeError::Decode`].
pub(crate) fn decode_page<T: serde::de::DeserializeOwned>(
    what: &'static str,
    body: &[u8],
    key: &str,
) -> Result<(u64, Vec<T>), ForgeError> {
    #[derive(Deserialize)]
    struct Page {
        total_count: u64,
        #[serde(flatten)]
        rest: serde_json::Map<String, serde_json::Value>,
    }
    let decode = |e: serde_json::Error| ForgeError::Decode(what, e.to_string());
    let mut p: Page = serde_json::from_slice(body).map_err(decode)?;
    let items = p
        .rest
        .remove(key)
        .unwrap_or_else(|| serde_json::Value::Array(vec![]));
    Ok((
        p.total_count,
        serde_json::from_value(items).map_err(decode)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever an error answer holds: one printable line of at most 200
        /// characters (no escape sequence, carriage return or line break reaches
        /// the log), GitHub's plain message kept as it is.
        #[test]
        fn error_messages_are_one_printable_bounded_line(
            body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..400),
                any::<String>().prop_map(|m| serde_json::json!({"message": m}).to_string().into_bytes()),
                "[ -~]{0,300}".prop_map(|m| serde_json::json!({"message": m, "documentation_url": "x"}).to_string().into_bytes()),
            ]
        ) {
            let m = error_message(&body);
            prop_assert!(m.chars().count() <= 200, "{m:?}");
            prop_assert!(!m.chars().any(|c| c.is_control()), "{m:?}");
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                if let Some(plain) = v["message"].as_str().filter(|s| s.bytes().all(|b| (b' '..=b'~').contains(&b))) {
                    prop_assert_eq!(m, plain.chars().take(200).collect::<String>());
                }
            }
        }

        /// Pages: a whole one decodes to what it holds; a cut, a wrong type or any
        /// bytes are a Decode error, never a panic.
        #[test]
        fn pages_decode_or_fail_typed(
            items in proptest::collection::vec((any::<u64>(), "\\PC{0,12}"), 0..4),
            total in any::<u64>(),
            cut in any::<prop::sample::Index>(),
            wrong in prop_oneof![
                Just(serde_json::json!("12")), Just(serde_json::json!(-1)), Just(serde_json::json!(1.5)),
                Just(serde_json::json!(null)), Just(serde_json::json!([1])), Just(serde_json::json!({})),
            ],
            noise in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            #[derive(Debug, PartialEq, Deserialize)]
            struct G { id: u64, name: String }
            let list: Vec<_> = items.iter().map(|(id, name)| serde_json::json!({"id": id, "name": name})).collect();
            let body = serde_json::json!({"total_count": total, "runner_groups": list}).to_string();
            let (t, got) = decode_page::<G>("list", body.as_bytes(), "runner_groups").unwrap();
            prop_assert_eq!(t, total);
            prop_assert_eq!(got, items.iter().map(|(id, name)| G { id: *id, name: name.clone() }).collect::<Vec<_>>());
            let absent = decode_page::<G>("list", body.as_bytes(), "runners").unwrap();
            prop_assert!(absent.1.is_empty());
            let cut = cut.index(body.len());
            prop_assert!(matches!(decode_page::<G>("list", &body.as_bytes()[..cut], "runner_groups"), Err(ForgeError::Decode("list", _))));
            for (bad, fine) in [
                (serde_json::json!({"total_count": wrong.clone(), "runner_groups": list}), false),
                (serde_json::json!({"total_count": total, "runner_groups": wrong.clone()}), false),
                (serde_json::json!({"total_count": total, "runner_groups": [{"id": wrong.clone(), "name": "x"}]}), false),
                // A string is a name's type.
                (serde_json::json!({"total_count": total, "runner_groups": [{"id": 1, "name": wrong.clone()}]}), wrong.is_string()),
            ] {
                let r = decode_page::<G>("list", bad.to_string().as_bytes(), "runner_groups");
                prop_assert_eq!(r.is_ok(), fine, "{}: {:?}", bad, r);
                prop_assert!(fine || matches!(r, Err(ForgeError::Decode("list", _))));
            }
            let _ = decode_page::<G>("list", &noise, "runner_groups");
        }
    }
}
